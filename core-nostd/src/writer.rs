//! A small IGVM writer, for our boot images and test generators.
//!
//! [`IgvmBuilder`] writes IGVM format version 1 files (`../shared/spec/igvm-snp.md` §1):
//! the 0x18-byte fixed header, the variable headers as 8-byte-aligned TLVs, then the file
//! data. Headers are written **in call order**: the caller is responsible for the section
//! order platform → init → directive (§1.2). That is deliberate, so tests can craft files
//! that break the rules; [`IgvmBuilder::raw_header`] writes any TLV at all.
//!
//! File data follows the igvm crate's serializer (igvm 0.5.0 `FileDataSerializer`): page
//! data and VP contexts are padded to 4 KB, parameter-area initial data to the area size,
//! and identical blobs are stored once, so several headers may share one `file_offset`.
//! Empty page data is written as `file_offset = 0` (a page of zeros, §1.2 PAGE_DATA).
//!
//! The whole module needs the `alloc` feature: it builds a `Vec<u8>`.

#[cfg(feature = "alloc")]
pub use imp::*;

#[cfg(feature = "alloc")]
mod imp {
    use alloc::collections::BTreeMap;
    use alloc::vec::Vec;
    use core::fmt;

    use igvm_defs::{
        IgvmNativeVpContextX64, IgvmPageDataFlags, IgvmPageDataType, IgvmPlatformType,
        IgvmVariableHeaderType, IGVM_FIXED_HEADER, IGVM_FORMAT_VERSION_1, IGVM_MAGIC_VALUE,
        IGVM_VHS_GUEST_POLICY, IGVM_VHS_PAGE_DATA, IGVM_VHS_PARAMETER, IGVM_VHS_PARAMETER_AREA,
        IGVM_VHS_PARAMETER_INSERT, IGVM_VHS_REQUIRED_MEMORY, IGVM_VHS_SNP_ID_BLOCK,
        IGVM_VHS_SUPPORTED_PLATFORM, IGVM_VHS_VARIABLE_HEADER, IGVM_VHS_VP_CONTEXT, PAGE_SIZE_4K,
    };
    use zerocopy::IntoBytes;

    const PAGE: usize = PAGE_SIZE_4K as usize;
    const FIXED_HEADER_SIZE: usize = core::mem::size_of::<IGVM_FIXED_HEADER>();
    const TLV_SIZE: usize = core::mem::size_of::<IGVM_VHS_VARIABLE_HEADER>();

    /// Why a file could not be written. `header` is the index of the header (in call order)
    /// the error is about.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    #[non_exhaustive]
    pub enum WriteError {
        /// Page data or a VP context is larger than one 4 KB page.
        DataTooLarge {
            /// Header index.
            header: usize,
            /// Length of the data given.
            len: usize,
        },
        /// A parameter area's size is zero or not a multiple of 4 KB, or its initial data
        /// is larger than the area.
        BadParameterArea {
            /// Header index.
            header: usize,
        },
        /// All 32 compatibility-mask bits are taken by platform headers.
        TooManyPlatforms,
        /// The file would not fit the format's 32-bit sizes and offsets.
        FileTooLarge,
    }

    impl fmt::Display for WriteError {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match *self {
                WriteError::DataTooLarge { header, len } => {
                    write!(
                        f,
                        "header {header}: {len} bytes of data, at most 4096 allowed"
                    )
                }
                WriteError::BadParameterArea { header } => write!(
                    f,
                    "header {header}: parameter area size must be a non-zero multiple of 4096 \
                     holding its initial data"
                ),
                WriteError::TooManyPlatforms => f.write_str("more than 32 platform headers"),
                WriteError::FileTooLarge => f.write_str("file larger than 4 GiB"),
            }
        }
    }

    /// One variable header: its type, its body, and where a file-data offset must be
    /// patched into the body once the data section's start is known.
    #[derive(Clone, Debug)]
    struct Header {
        typ: u32,
        body: Vec<u8>,
        /// (byte offset of a u32 `file_offset` field in `body`, offset into the data section)
        data_ref: Option<(usize, u32)>,
    }

    /// Builds an IGVM v1 file. See the module documentation.
    #[derive(Clone, Debug, Default)]
    pub struct IgvmBuilder {
        headers: Vec<Header>,
        /// The file data section (offsets relative to its start).
        data: Vec<u8>,
        /// Blob → offset into `data`, for deduplication.
        blobs: BTreeMap<Vec<u8>, u32>,
        /// Compatibility-mask bits handed out so far.
        platforms: u32,
    }

    impl IgvmBuilder {
        /// An empty file.
        pub fn new() -> Self {
            Self::default()
        }

        /// Appends a SUPPORTED_PLATFORM header for `platform_type` (highest VTL 0, platform
        /// version 1) and returns the compatibility-mask bit it owns: 1, 2, 4, ... in call
        /// order. `shared_gpa_boundary` must be 0 for NATIVE.
        pub fn platform(
            &mut self,
            platform_type: IgvmPlatformType,
            shared_gpa_boundary: u64,
        ) -> Result<u32, WriteError> {
            let mask = 1u32
                .checked_shl(self.platforms)
                .ok_or(WriteError::TooManyPlatforms)?;
            self.platforms = self.platforms.saturating_add(1);
            let hdr = IGVM_VHS_SUPPORTED_PLATFORM {
                compatibility_mask: mask,
                highest_vtl: 0,
                platform_type,
                platform_version: 1,
                shared_gpa_boundary,
            };
            self.push(
                IgvmVariableHeaderType::IGVM_VHT_SUPPORTED_PLATFORM,
                hdr.as_bytes(),
            );
            Ok(mask)
        }

        /// Appends a GUEST_POLICY header.
        pub fn guest_policy(&mut self, policy: u64, mask: u32) {
            let hdr = IGVM_VHS_GUEST_POLICY {
                policy,
                compatibility_mask: mask,
                reserved: 0,
            };
            self.push(
                IgvmVariableHeaderType::IGVM_VHT_GUEST_POLICY,
                hdr.as_bytes(),
            );
        }

        /// Appends a PAGE_DATA header. `data` (at most 4 KB) is zero-padded to 4 KB;
        /// empty `data` writes `file_offset = 0`, a page of zeros.
        pub fn page_data(
            &mut self,
            gpa: u64,
            mask: u32,
            flags: IgvmPageDataFlags,
            data_type: IgvmPageDataType,
            data: &[u8],
        ) -> Result<(), WriteError> {
            let hdr = IGVM_VHS_PAGE_DATA {
                gpa,
                compatibility_mask: mask,
                file_offset: 0,
                flags,
                data_type,
                reserved: 0,
            };
            let data_ref = if data.is_empty() {
                None
            } else {
                Some((
                    core::mem::offset_of!(IGVM_VHS_PAGE_DATA, file_offset),
                    self.padded_blob(data, PAGE)?,
                ))
            };
            self.push_with(
                IgvmVariableHeaderType::IGVM_VHT_PAGE_DATA,
                hdr.as_bytes(),
                data_ref,
            );
            Ok(())
        }

        /// Appends a PARAMETER_AREA header of `number_of_bytes` (a non-zero multiple of
        /// 4 KB). Non-empty `initial_data` is zero-padded to the area size and stored in
        /// the file; empty `initial_data` writes `file_offset = 0`.
        pub fn parameter_area(
            &mut self,
            index: u32,
            number_of_bytes: u64,
            initial_data: &[u8],
        ) -> Result<(), WriteError> {
            let bad = WriteError::BadParameterArea {
                header: self.headers.len(),
            };
            if number_of_bytes == 0 || !number_of_bytes.is_multiple_of(PAGE_SIZE_4K) {
                return Err(bad);
            }
            let hdr = IGVM_VHS_PARAMETER_AREA {
                number_of_bytes,
                parameter_area_index: index,
                file_offset: 0,
            };
            let data_ref = if initial_data.is_empty() {
                None
            } else {
                let size = usize::try_from(number_of_bytes).map_err(|_| bad)?;
                if initial_data.len() > size {
                    return Err(bad);
                }
                Some((
                    core::mem::offset_of!(IGVM_VHS_PARAMETER_AREA, file_offset),
                    self.padded_blob(initial_data, size)?,
                ))
            };
            self.push_with(
                IgvmVariableHeaderType::IGVM_VHT_PARAMETER_AREA,
                hdr.as_bytes(),
                data_ref,
            );
            Ok(())
        }

        fn parameter(&mut self, typ: IgvmVariableHeaderType, index: u32, byte_offset: u32) {
            let hdr = IGVM_VHS_PARAMETER {
                parameter_area_index: index,
                byte_offset,
            };
            self.push(typ, hdr.as_bytes());
        }

        /// Appends a VP_COUNT parameter usage (a u32 vCPU count at `byte_offset`).
        pub fn vp_count(&mut self, index: u32, byte_offset: u32) {
            self.parameter(
                IgvmVariableHeaderType::IGVM_VHT_VP_COUNT_PARAMETER,
                index,
                byte_offset,
            );
        }

        /// Appends a MEMORY_MAP parameter usage (an array of MEMORY_MAP_ENTRY).
        pub fn memory_map(&mut self, index: u32, byte_offset: u32) {
            self.parameter(
                IgvmVariableHeaderType::IGVM_VHT_MEMORY_MAP,
                index,
                byte_offset,
            );
        }

        /// Appends an ENVIRONMENT_INFO parameter usage (a u32, bit 0 = memory_is_shared).
        pub fn environment_info(&mut self, index: u32, byte_offset: u32) {
            self.parameter(
                IgvmVariableHeaderType::IGVM_VHT_ENVIRONMENT_INFO_PARAMETER,
                index,
                byte_offset,
            );
        }

        /// Appends an MMIO_RANGES parameter usage (two {start page, page count} ranges).
        pub fn mmio_ranges(&mut self, index: u32, byte_offset: u32) {
            self.parameter(
                IgvmVariableHeaderType::IGVM_VHT_MMIO_RANGES,
                index,
                byte_offset,
            );
        }

        /// Appends a PARAMETER_INSERT header: area `index` is imported at `gpa`.
        pub fn parameter_insert(&mut self, gpa: u64, mask: u32, index: u32) {
            let hdr = IGVM_VHS_PARAMETER_INSERT {
                gpa,
                compatibility_mask: mask,
                parameter_area_index: index,
            };
            self.push(
                IgvmVariableHeaderType::IGVM_VHT_PARAMETER_INSERT,
                hdr.as_bytes(),
            );
        }

        /// Appends a VP_CONTEXT header with a native x64 context (NATIVE and SEV views;
        /// GPA 0, data padded to 4 KB).
        pub fn native_vp_context(
            &mut self,
            mask: u32,
            vp_index: u16,
            context: &IgvmNativeVpContextX64,
        ) -> Result<(), WriteError> {
            self.vp_context(0, mask, vp_index, context.as_bytes())
        }

        /// Appends a VP_CONTEXT header whose file data is `data` (at most 4 KB, padded):
        /// a VMSA page for SNP / SEV-ES (`gpa` is where it is imported, 0xFFFFFFFFF000 for
        /// KVM), or any other context bytes.
        pub fn vp_context(
            &mut self,
            gpa: u64,
            mask: u32,
            vp_index: u16,
            data: &[u8],
        ) -> Result<(), WriteError> {
            let hdr = IGVM_VHS_VP_CONTEXT {
                gpa: gpa.into(),
                compatibility_mask: mask,
                file_offset: 0,
                vp_index,
                reserved: 0,
            };
            let data_ref = Some((
                core::mem::offset_of!(IGVM_VHS_VP_CONTEXT, file_offset),
                self.padded_blob(data, PAGE)?,
            ));
            self.push_with(
                IgvmVariableHeaderType::IGVM_VHT_VP_CONTEXT,
                hdr.as_bytes(),
                data_ref,
            );
            Ok(())
        }

        /// Appends a REQUIRED_MEMORY header (`flags` bit 0 = VTL2-protectable).
        pub fn required_memory(&mut self, gpa: u64, mask: u32, number_of_bytes: u32, flags: u32) {
            let hdr = IGVM_VHS_REQUIRED_MEMORY {
                gpa,
                compatibility_mask: mask,
                number_of_bytes,
                flags: flags.into(),
                reserved: 0,
            };
            self.push(
                IgvmVariableHeaderType::IGVM_VHT_REQUIRED_MEMORY,
                hdr.as_bytes(),
            );
        }

        /// Appends an SNP_ID_BLOCK header.
        pub fn snp_id_block(&mut self, id_block: &IGVM_VHS_SNP_ID_BLOCK) {
            self.push(
                IgvmVariableHeaderType::IGVM_VHT_SNP_ID_BLOCK,
                id_block.as_bytes(),
            );
        }

        /// Appends a TLV of any type with any body, verbatim (the length field is the
        /// body's length). For crafting malformed files.
        pub fn raw_header(&mut self, typ: u32, body: &[u8]) {
            self.headers.push(Header {
                typ,
                body: body.to_vec(),
                data_ref: None,
            });
        }

        /// Like [`raw_header`](Self::raw_header), and also stores `data` (unpadded, not
        /// deduplicated) in the file data section and writes its absolute file offset as a
        /// little-endian u32 at byte `field_offset` of the body (ignored if the body is too
        /// short to hold it).
        pub fn raw_header_with_data(
            &mut self,
            typ: u32,
            body: &[u8],
            field_offset: usize,
            data: &[u8],
        ) -> Result<(), WriteError> {
            let off = u32::try_from(self.data.len()).map_err(|_| WriteError::FileTooLarge)?;
            self.data.extend_from_slice(data);
            self.headers.push(Header {
                typ,
                body: body.to_vec(),
                data_ref: Some((field_offset, off)),
            });
            Ok(())
        }

        /// Writes the file: fixed header (checksum = CRC-32 over the fixed header with a
        /// zero checksum, then the variable headers; §1.1), variable headers, file data.
        /// The same calls always give the same bytes.
        pub fn finish(&self) -> Result<Vec<u8>, WriteError> {
            let mut vh = Vec::new();
            for h in &self.headers {
                let len = u32::try_from(h.body.len()).map_err(|_| WriteError::FileTooLarge)?;
                vh.extend_from_slice(&h.typ.to_le_bytes());
                vh.extend_from_slice(&len.to_le_bytes());
                vh.extend_from_slice(&h.body);
                let pad = h.body.len().wrapping_neg() % 8;
                vh.resize(vh.len().saturating_add(pad), 0);
            }
            let data_start = FIXED_HEADER_SIZE
                .checked_add(vh.len())
                .ok_or(WriteError::FileTooLarge)?;
            // Patch file offsets now that the data section's start is known.
            let mut pos = 0usize;
            for h in &self.headers {
                let body_at = pos.saturating_add(TLV_SIZE);
                if let Some((field, rel)) = h.data_ref {
                    let abs = u32::try_from(data_start)
                        .ok()
                        .and_then(|s| s.checked_add(rel))
                        .ok_or(WriteError::FileTooLarge)?;
                    let at = body_at.saturating_add(field);
                    if field.saturating_add(4) <= h.body.len() {
                        if let Some(slot) = vh.get_mut(at..at.saturating_add(4)) {
                            slot.copy_from_slice(&abs.to_le_bytes());
                        }
                    }
                }
                pos = body_at
                    .saturating_add(h.body.len())
                    .saturating_add(h.body.len().wrapping_neg() % 8);
            }
            let total = data_start
                .checked_add(self.data.len())
                .ok_or(WriteError::FileTooLarge)?;
            let to_u32 = |v: usize| u32::try_from(v).map_err(|_| WriteError::FileTooLarge);
            let mut fixed = IGVM_FIXED_HEADER {
                magic: IGVM_MAGIC_VALUE,
                format_version: IGVM_FORMAT_VERSION_1,
                variable_header_offset: to_u32(FIXED_HEADER_SIZE)?,
                variable_header_size: to_u32(vh.len())?,
                total_file_size: to_u32(total)?,
                checksum: 0,
            };
            let mut crc = crate::crc32::Crc32::new();
            crc.update(fixed.as_bytes());
            crc.update(&vh);
            fixed.checksum = crc.finish();

            let mut out = Vec::with_capacity(total);
            out.extend_from_slice(fixed.as_bytes());
            out.extend_from_slice(&vh);
            out.extend_from_slice(&self.data);
            Ok(out)
        }

        fn push(&mut self, typ: IgvmVariableHeaderType, body: &[u8]) {
            self.push_with(typ, body, None);
        }

        fn push_with(
            &mut self,
            typ: IgvmVariableHeaderType,
            body: &[u8],
            data_ref: Option<(usize, u32)>,
        ) {
            self.headers.push(Header {
                typ: typ.0,
                body: body.to_vec(),
                data_ref,
            });
        }

        /// Stores `data` zero-padded to `size` bytes (once per distinct blob) and returns
        /// its offset in the data section.
        fn padded_blob(&mut self, data: &[u8], size: usize) -> Result<u32, WriteError> {
            if data.len() > size {
                return Err(WriteError::DataTooLarge {
                    header: self.headers.len(),
                    len: data.len(),
                });
            }
            let mut blob = data.to_vec();
            blob.resize(size, 0);
            if let Some(&off) = self.blobs.get(&blob) {
                return Ok(off);
            }
            let off = u32::try_from(self.data.len()).map_err(|_| WriteError::FileTooLarge)?;
            self.data.extend_from_slice(&blob);
            self.blobs.insert(blob, off);
            Ok(off)
        }
    }
}

#[cfg(all(test, feature = "alloc"))]
mod tests {
    use super::*;
    use alloc::vec;
    use alloc::vec::Vec;
    use igvm_defs::{IgvmPageDataFlags, IgvmPageDataType, IgvmPlatformType};
    use sha2::{Digest, Sha384};

    /// sev-snp-measure's reset-state BSP VMSA for VMM type QEMU (`sevsnpmeasure/vmsa.py`
    /// `VMSA.build_save_area`, with its mxcsr/fcw defaults), `eip = 0xFFFFFFF0`, features
    /// 0x1, vCPU signature 0x800F12. Offsets: `../shared/spec/igvm-snp.md` §4.2.
    fn ssm_qemu_bsp_vmsa() -> Vec<u8> {
        let mut v = vec![0u8; 4096];
        let mut seg = |off: usize, sel: u16, attr: u16, limit: u32, base: u64| {
            v[off..off + 2].copy_from_slice(&sel.to_le_bytes());
            v[off + 2..off + 4].copy_from_slice(&attr.to_le_bytes());
            v[off + 4..off + 8].copy_from_slice(&limit.to_le_bytes());
            v[off + 8..off + 16].copy_from_slice(&base.to_le_bytes());
        };
        for off in [0x00, 0x20, 0x30, 0x40, 0x50] {
            seg(off, 0, 0x93, 0xFFFF, 0); // es, ss, ds, fs, gs
        }
        seg(0x10, 0xF000, 0x9B, 0xFFFF, 0xFFFF_0000); // cs
        seg(0x60, 0, 0, 0xFFFF, 0); // gdtr
        seg(0x70, 0, 0x82, 0xFFFF, 0); // ldtr
        seg(0x80, 0, 0, 0xFFFF, 0); // idtr
        seg(0x90, 0, 0x8B, 0xFFFF, 0); // tr
        for (off, val) in [
            (0xD0, 0x1000u64),              // efer
            (0x148, 0x40),                  // cr4
            (0x158, 0x10),                  // cr0
            (0x160, 0x400),                 // dr7
            (0x168, 0xFFFF_0FF0),           // dr6
            (0x170, 2),                     // rflags
            (0x178, 0xFFF0),                // rip
            (0x268, 0x0007_0406_0007_0406), // g_pat
            (0x310, 0x80_0F12),             // rdx
            (0x3B0, 1),                     // sev_features
            (0x3E8, 1),                     // xcr0
        ] {
            v[off..off + 8].copy_from_slice(&u64::to_le_bytes(val));
        }
        v[0x408..0x40C].copy_from_slice(&0x1F80u32.to_le_bytes()); // mxcsr
        v[0x410..0x412].copy_from_slice(&0x037Fu16.to_le_bytes()); // x87_fcw
        v
    }

    fn flags(bits: u32) -> IgvmPageDataFlags {
        IgvmPageDataFlags::from(bits)
    }

    /// The file of `../shared/spec/igvm-snp.md` §5 ("Computed by me"), N = 1. The notes
    /// do not say which pages carry data; the fixed header's size and CRC pin it down:
    /// only the CPUID page carries (4 KB of) data besides the pattern page and the VMSA.
    /// Its contents are not covered by the CRC; zeros are our choice.
    fn spec_vector_file() -> Vec<u8> {
        let mut b = IgvmBuilder::new();
        let snp = b.platform(IgvmPlatformType::SEV_SNP, 0).unwrap();
        assert_eq!(snp, 1);
        b.guest_policy(0x30000, snp);
        b.parameter_area(0, 4096, &[]).unwrap();
        b.vp_count(0, 0);
        b.parameter_insert(0x10000, snp, 0);
        let pattern: Vec<u8> = (0..4096u32).map(|i| (i & 0xFF) as u8).collect();
        let zeros = [0u8; 4096];
        let normal = IgvmPageDataType::NORMAL;
        b.page_data(0, snp, flags(0), normal, &pattern).unwrap();
        b.page_data(0x1000, snp, flags(0), normal, &[]).unwrap();
        b.page_data(0x2000, snp, flags(2), normal, &[]).unwrap();
        b.page_data(0x3000, snp, flags(0), IgvmPageDataType::SECRETS, &[])
            .unwrap();
        b.page_data(0x4000, snp, flags(0), IgvmPageDataType::CPUID_DATA, &zeros)
            .unwrap();
        b.vp_context(0xFFFF_FFFF_F000, snp, 0, &ssm_qemu_bsp_vmsa())
            .unwrap();
        b.finish().unwrap()
    }

    #[test]
    fn vmsa_fixture_matches_spec_digest() {
        let d = Sha384::digest(ssm_qemu_bsp_vmsa());
        assert_eq!(&d[..4], &[0x77, 0x92, 0x0c, 0x4c]);
        assert_eq!(&d[45..], &[0x1c, 0x55, 0x3a]);
    }

    #[test]
    fn spec_vector_fixed_header() {
        let f = spec_vector_file();
        assert_eq!(f.len(), 12616);
        let want: [u8; 24] = [
            0x49, 0x47, 0x56, 0x4d, 0x01, 0x00, 0x00, 0x00, 0x18, 0x00, 0x00, 0x00, 0x30, 0x01,
            0x00, 0x00, 0x48, 0x31, 0x00, 0x00, 0xef, 0xb3, 0x49, 0x59,
        ];
        assert_eq!(&f[..24], &want);
    }

    fn u32_at(f: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(f[off..off + 4].try_into().unwrap())
    }

    #[test]
    fn spec_vector_layout() {
        let f = spec_vector_file();
        // Data starts at 0x18 + 0x130: pattern page, CPUID page, VMSA, each 4 KB.
        assert_eq!(&f[0x148..0x14C], &[0, 1, 2, 3]);
        assert_eq!(f[0x148 + 0xFFF], 0xFF);
        assert_eq!(&f[0x2148..], &ssm_qemu_bsp_vmsa()[..]);
        // The VP_CONTEXT header is last: {typ, len=0x14, gpa, mask, file_offset, vp, rsvd}.
        let vp = 0x18 + 0x130 - 0x20;
        assert_eq!(u32_at(&f, vp), 0x304);
        assert_eq!(u32_at(&f, vp + 4), 0x14);
        assert_eq!(u32_at(&f, vp + 8 + 12), 0x2148);
        assert_eq!(spec_vector_file(), f, "same calls, same bytes");
    }

    #[test]
    fn dedupes_padded_blobs_and_patches_absolute_offsets() {
        let mut b = IgvmBuilder::new();
        let m = b.platform(IgvmPlatformType::NATIVE, 0).unwrap();
        let n = IgvmPageDataType::NORMAL;
        b.page_data(0, m, flags(0), n, b"ab").unwrap();
        b.page_data(0x1000, m, flags(0), n, b"ab\0\0").unwrap(); // same once padded
        b.page_data(0x2000, m, flags(0), n, b"x").unwrap();
        b.page_data(0x3000, m, flags(0), n, &[]).unwrap();
        let f = b.finish().unwrap();
        let data_start = 0x18 + 24 + 4 * 32;
        assert_eq!(u32_at(&f, 8), 0x18);
        assert_eq!(u32_at(&f, 12) as usize, 24 + 4 * 32);
        assert_eq!(f.len(), data_start + 2 * 4096);
        let off = |k: usize| u32_at(&f, 0x18 + 24 + k * 32 + 8 + 12) as usize;
        assert_eq!(off(0), data_start);
        assert_eq!(off(1), data_start);
        assert_eq!(off(2), data_start + 4096);
        assert_eq!(off(3), 0);
        assert_eq!(&f[data_start + 4096..data_start + 4097], b"x");
        assert_eq!(
            crate::crc32::crc32(&[&f[..20], &[0; 4], &f[24..data_start]].concat()),
            u32_at(&f, 20)
        );
    }

    #[test]
    fn raw_headers_are_verbatim() {
        let mut b = IgvmBuilder::new();
        b.raw_header(0x8000_0999, &[1, 2, 3]);
        b.raw_header_with_data(0x302, &[0u8; 24], 12, b"zz")
            .unwrap();
        let f = b.finish().unwrap();
        assert_eq!(u32_at(&f, 0x18), 0x8000_0999);
        assert_eq!(u32_at(&f, 0x1C), 3);
        assert_eq!(&f[0x20..0x28], &[1, 2, 3, 0, 0, 0, 0, 0]);
        assert_eq!(u32_at(&f, 0x28), 0x302);
        let data_start = 0x18 + 16 + 32;
        assert_eq!(u32_at(&f, 0x30 + 12) as usize, data_start);
        assert_eq!(&f[data_start..], b"zz");
    }

    #[test]
    fn rejects_what_it_cannot_write() {
        let mut b = IgvmBuilder::new();
        let n = IgvmPageDataType::NORMAL;
        assert_eq!(
            b.page_data(0, 1, flags(0), n, &[0; 4097]),
            Err(WriteError::DataTooLarge {
                header: 0,
                len: 4097
            })
        );
        assert_eq!(
            b.vp_context(0, 1, 0, &[0; 4097]),
            Err(WriteError::DataTooLarge {
                header: 0,
                len: 4097
            })
        );
        assert_eq!(
            b.parameter_area(0, 100, &[]),
            Err(WriteError::BadParameterArea { header: 0 })
        );
        assert_eq!(
            b.parameter_area(0, 4096, &[0; 4097]),
            Err(WriteError::BadParameterArea { header: 0 })
        );
        for k in 0..32 {
            assert_eq!(b.platform(IgvmPlatformType::NATIVE, 0), Ok(1 << k));
        }
        assert_eq!(
            b.platform(IgvmPlatformType::NATIVE, 0),
            Err(WriteError::TooManyPlatforms)
        );
        assert!(!alloc::format!("{}", WriteError::FileTooLarge).is_empty());
    }
}
