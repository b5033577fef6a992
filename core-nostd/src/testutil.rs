//! Test support: generated firmware images (only with `cfg(test)` or the `test-utils`
//! feature; never part of a production build).
//!
//! [`ovmf_like_image`] builds a 4 KiB image laid out like the last page of an OVMF build
//! with SEV support: the reset-vector GUID table (footer 0x20 bytes before the end, see
//! `crate::ovmf` and `../shared/spec/igvm-snp.md` §5) with an SEV-ES AP reset block
//! (0x80B004), an SEV hash-table entry and the SEV metadata (`ASEV`) pointer, and the
//! metadata section list of edk2-stable202405's `OvmfPkgX64.dsc` or `AmdSev/AmdSevX64.dsc`
//! (`OvmfPkg/ResetVector/X64/OvmfSevMetadata.asm`). Every other byte is our own filler.
//! The image is the same one `tests/tests/golden_ssm.rs` hands to sev-snp-measure; its
//! digests are recorded in `tests/vectors/ssm-generated/`.

/// Which OVMF build the generated image imitates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OvmfFlavor {
    /// `OvmfPkg/AmdSev/AmdSevX64.dsc`: a KERNEL_HASHES section at 0x810000 and a hash
    /// table at 0x810C00 (0x400 bytes).
    AmdSev,
    /// `OvmfPkg/OvmfPkgX64.dsc`: no KERNEL_HASHES section, an empty hash-table entry.
    OvmfX64,
}

/// Size of the generated image; it is loaded at 4 GiB - 4 KiB.
pub const IMAGE_SIZE: usize = 4096;

/// AP reset address carried by the image's SEV-ES reset block.
pub const AP_RESET: u32 = 0x0080_B004;

/// Distance of the `ASEV` metadata header from the end of the image.
const ASEV_FROM_END: usize = 0x600;

/// The GUID table footer sits this far before the end of the image (QEMU
/// `pc_system_parse_ovmf_flash`).
const FOOTER_FROM_END: usize = 0x20;

/// GUID entry header/trailer: `u16` size + 16-byte GUID.
const ENTRY: usize = 18;

/// A GUID in its in-memory (mixed-endian, EFI_GUID) byte order.
const fn guid(d1: u32, d2: u16, d3: u16, d4: [u8; 8]) -> [u8; 16] {
    let a = d1.to_le_bytes();
    let b = d2.to_le_bytes();
    let c = d3.to_le_bytes();
    [
        a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d4[0], d4[1], d4[2], d4[3], d4[4], d4[5],
        d4[6], d4[7],
    ]
}

const FOOTER_GUID: [u8; 16] = guid(
    0x96b5_82de,
    0x1fb2,
    0x45f7,
    [0xba, 0xea, 0xa3, 0x66, 0xc5, 0x5a, 0x08, 0x2d],
);
const SEV_ES_RESET_GUID: [u8; 16] = guid(
    0x00f7_71de,
    0x1a7e,
    0x4fcb,
    [0x89, 0x0e, 0x68, 0xc7, 0x7e, 0x2f, 0xb4, 0x4e],
);
const SEV_HASH_TABLE_GUID: [u8; 16] = guid(
    0x7255_371f,
    0x3a3b,
    0x4b04,
    [0x92, 0x7b, 0x1d, 0xa6, 0xef, 0xa8, 0xd4, 0x54],
);
const SEV_METADATA_GUID: [u8; 16] = guid(
    0xdc88_6566,
    0x984a,
    0x4798,
    [0xa7, 0x5e, 0x55, 0x85, 0xa7, 0xbf, 0x67, 0xcc],
);

/// Section types of the SEV metadata (`OvmfSevMetadata.asm`).
const SNP_SEC_MEM: u32 = 1;
const SNP_SECRETS: u32 = 2;
const CPUID: u32 = 3;
const SVSM_CAA: u32 = 4;
const SNP_KERNEL_HASHES: u32 = 0x10;

/// `(gpa, size, type)` of each metadata section.
const AMDSEV_SECTIONS: [(u32, u32, u32); 7] = [
    (0x80_0000, 0x9000, SNP_SEC_MEM),
    (0x80_A000, 0x3000, SNP_SEC_MEM),
    (0x80_D000, 0x1000, SNP_SECRETS),
    (0x80_E000, 0x1000, CPUID),
    (0x80_F000, 0x1000, SVSM_CAA),
    (0x81_0000, 0x1000, SNP_KERNEL_HASHES),
    (0x81_1000, 0xF000, SNP_SEC_MEM),
];
const OVMFX64_SECTIONS: [(u32, u32, u32); 6] = [
    (0x80_0000, 0x9000, SNP_SEC_MEM),
    (0x80_A000, 0x3000, SNP_SEC_MEM),
    (0x80_D000, 0x1000, SNP_SECRETS),
    (0x80_E000, 0x1000, CPUID),
    (0x80_F000, 0x1000, SVSM_CAA),
    (0x81_0000, 0x1_0000, SNP_SEC_MEM),
];

/// Copies `bytes` into `img` at `at` (const-evaluable; the callers' offsets are constants
/// that fit, so a bad one is a compile-time error).
const fn put(img: &mut [u8; IMAGE_SIZE], at: usize, bytes: &[u8]) {
    let mut i = 0;
    while i < bytes.len() {
        img[at + i] = bytes[i];
        i += 1;
    }
}

const fn put_u16(img: &mut [u8; IMAGE_SIZE], at: usize, v: u16) {
    put(img, at, &v.to_le_bytes());
}

const fn put_u32(img: &mut [u8; IMAGE_SIZE], at: usize, v: u32) {
    put(img, at, &v.to_le_bytes());
}

/// Writes one GUID entry (data, then `u16 size`, then GUID) that ends at `end`; returns
/// where it starts.
const fn entry(img: &mut [u8; IMAGE_SIZE], end: usize, g: &[u8; 16], data: &[u8]) -> usize {
    let size = data.len() + ENTRY;
    let trailer = end - ENTRY;
    put_u16(img, trailer, size as u16);
    put(img, trailer + 2, g);
    put(img, trailer - data.len(), data);
    end - size
}

/// The generated 4 KiB image for `flavor` (see the module docs). Const, so tests can keep
/// it in a `const`/`static`.
pub const fn ovmf_like_image(flavor: OvmfFlavor) -> [u8; IMAGE_SIZE] {
    let mut img = [0u8; IMAGE_SIZE];
    let mut i = 0;
    while i < IMAGE_SIZE {
        img[i] = ((i as u32).wrapping_mul(0x9e37_79b9) >> 24) as u8;
        i += 1;
    }

    // SEV metadata: "ASEV", u32 length, u32 version 1, u32 count, then the sections.
    let sections: &[(u32, u32, u32)] = match flavor {
        OvmfFlavor::AmdSev => &AMDSEV_SECTIONS,
        OvmfFlavor::OvmfX64 => &OVMFX64_SECTIONS,
    };
    let at = IMAGE_SIZE - ASEV_FROM_END;
    put(&mut img, at, b"ASEV");
    put_u32(&mut img, at + 4, (16 + 12 * sections.len()) as u32);
    put_u32(&mut img, at + 8, 1);
    put_u32(&mut img, at + 12, sections.len() as u32);
    let mut s = 0;
    while s < sections.len() {
        let (gpa, size, kind) = sections[s];
        let o = at + 16 + 12 * s;
        put_u32(&mut img, o, gpa);
        put_u32(&mut img, o + 4, size);
        put_u32(&mut img, o + 8, kind);
        s += 1;
    }

    // GUID table, walked backwards from the footer.
    let hash_table: [u8; 8] = match flavor {
        OvmfFlavor::AmdSev => {
            let b = 0x81_0C00u32.to_le_bytes();
            let l = 0x400u32.to_le_bytes();
            [b[0], b[1], b[2], b[3], l[0], l[1], l[2], l[3]]
        }
        OvmfFlavor::OvmfX64 => [0; 8],
    };
    let footer = IMAGE_SIZE - FOOTER_FROM_END - ENTRY;
    let mut pos = footer;
    pos = entry(&mut img, pos, &SEV_ES_RESET_GUID, &AP_RESET.to_le_bytes());
    pos = entry(&mut img, pos, &SEV_HASH_TABLE_GUID, &hash_table);
    pos = entry(
        &mut img,
        pos,
        &SEV_METADATA_GUID,
        &(ASEV_FROM_END as u32).to_le_bytes(),
    );
    put_u16(&mut img, footer, (footer + ENTRY - pos) as u16);
    put(&mut img, footer + 2, &FOOTER_GUID);
    img
}

/// [`ovmf_like_image`]`(AmdSev)`, evaluated once.
pub static OVMF_AMDSEV_LIKE: [u8; IMAGE_SIZE] = ovmf_like_image(OvmfFlavor::AmdSev);

/// [`ovmf_like_image`]`(OvmfX64)`, evaluated once.
pub static OVMF_X64_LIKE: [u8; IMAGE_SIZE] = ovmf_like_image(OvmfFlavor::OvmfX64);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ovmf::Firmware;

    #[test]
    fn images_parse_with_the_expected_metadata() {
        use crate::ovmf::{HashTableArea, SevSectionKind};
        // The parser, not the generator, reads these back.
        for (img, sections, table) in [
            (
                &OVMF_AMDSEV_LIKE,
                &AMDSEV_SECTIONS[..],
                Some(HashTableArea {
                    base: 0x81_0C00,
                    size: 0x400,
                }),
            ),
            (&OVMF_X64_LIKE, &OVMFX64_SECTIONS[..], None),
        ] {
            let fw = Firmware::parse(img).unwrap();
            assert_eq!(fw.sev_es_reset_addr(), Ok(Some(AP_RESET)));
            let got = fw.sev_metadata().unwrap().unwrap();
            assert!(got.sections().map(|s| (s.gpa, s.size, s.kind)).eq(sections
                .iter()
                .map(|&(g, s, t)| (g, s, SevSectionKind::from_raw(t)))));
            assert_eq!(fw.sev_hash_table(), Ok(table));
        }
        assert_ne!(OVMF_AMDSEV_LIKE, OVMF_X64_LIKE);
    }
}
