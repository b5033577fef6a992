//! SEV-SNP launch digest: the SHA-384 PAGE_INFO chain of `SNP_LAUNCH_UPDATE`
//! (SEV-SNP Firmware ABI spec §8.17, "SNP_LAUNCH_UPDATE"; `../shared/spec/igvm-snp.md` §2.1).
//!
//! LD starts as 48 zero bytes at `SNP_LAUNCH_START`. For every 4 KiB page the firmware sets
//! `LD = SHA-384(PAGE_INFO)` with PAGE_INFO (0x70 bytes):
//!
//! | offset | field |
//! |---|---|
//! | 0x00 | DIGEST_CUR\[48\]: the previous LD |
//! | 0x30 | CONTENTS\[48\]: SHA-384 of the page for NORMAL and VMSA, zero otherwise |
//! | 0x60 | LENGTH u16 = 0x70 |
//! | 0x62 | PAGE_TYPE u8 |
//! | 0x63 | IMI_PAGE u8 (0: KVM has no IMI pages) |
//! | 0x64..0x68 | VMPL3/2/1 permissions and a reserved byte: all 0 on upstream KVM (its uapi has no permission fields) |
//! | 0x68 | GPA u64 |
//!
//! Everything here works without `alloc` and on any thread; page contents can be hashed in
//! parallel ([`contents_digest`]) and folded later ([`SnpDigest::update`]).

use sha2::{Digest, Sha384};

use crate::launch::PageKind;

/// Page type NORMAL (`KVM_SEV_SNP_PAGE_TYPE_NORMAL`).
pub const PAGE_TYPE_NORMAL: u8 = 1;
/// Page type VMSA (only KVM issues it, inside `SNP_LAUNCH_FINISH`).
pub const PAGE_TYPE_VMSA: u8 = 2;
/// Page type ZERO.
pub const PAGE_TYPE_ZERO: u8 = 3;
/// Page type UNMEASURED.
pub const PAGE_TYPE_UNMEASURED: u8 = 4;
/// Page type SECRETS.
pub const PAGE_TYPE_SECRETS: u8 = 5;
/// Page type CPUID.
pub const PAGE_TYPE_CPUID: u8 = 6;

/// Size of PAGE_INFO.
pub const PAGE_INFO_LEN: usize = 0x70;

/// A 4 KiB page.
pub const PAGE_SIZE: usize = 4096;

/// The SNP page type a [`PageKind`] is given to the firmware as; `None` for
/// [`PageKind::Shared`], which never reaches `SNP_LAUNCH_UPDATE` (shared memory is not
/// private, so not in the RMP as guest-owned, so not measured).
pub const fn page_type(kind: PageKind) -> Option<u8> {
    match kind {
        PageKind::Normal => Some(PAGE_TYPE_NORMAL),
        PageKind::Zero => Some(PAGE_TYPE_ZERO),
        PageKind::Unmeasured => Some(PAGE_TYPE_UNMEASURED),
        PageKind::Secrets => Some(PAGE_TYPE_SECRETS),
        PageKind::Cpuid => Some(PAGE_TYPE_CPUID),
        PageKind::Shared => None,
    }
}

/// Whether the firmware hashes the page contents for this page type (NORMAL, VMSA).
pub const fn type_has_contents(page_type: u8) -> bool {
    matches!(page_type, PAGE_TYPE_NORMAL | PAGE_TYPE_VMSA)
}

/// SHA-384 of one 4 KiB page whose first bytes are `data`: shorter data is zero-extended,
/// bytes past 4096 are ignored (a page never holds more).
pub fn contents_digest(data: &[u8]) -> [u8; 48] {
    let data = data.get(..PAGE_SIZE).unwrap_or(data);
    let mut h = Sha384::new();
    h.update(data);
    const ZEROS: [u8; PAGE_SIZE] = [0; PAGE_SIZE];
    if let Some(pad) = ZEROS.get(data.len()..) {
        h.update(pad);
    }
    h.finalize().into()
}

/// The PAGE_INFO structure for one update.
pub fn page_info(prev: &[u8; 48], contents: &[u8; 48], gpa: u64, page_type: u8) -> [u8; 0x70] {
    let mut p = [0u8; PAGE_INFO_LEN];
    p[..0x30].copy_from_slice(prev);
    p[0x30..0x60].copy_from_slice(contents);
    p[0x60..0x62].copy_from_slice(&(PAGE_INFO_LEN as u16).to_le_bytes());
    p[0x62] = page_type;
    p[0x68..0x70].copy_from_slice(&gpa.to_le_bytes());
    p
}

/// The next LD: SHA-384 of PAGE_INFO(prev, contents, gpa, page_type). `contents` must be
/// zero for page types without contents ([`type_has_contents`]); [`SnpDigest`] enforces it.
pub fn page_info_digest(prev: &[u8; 48], contents: &[u8; 48], gpa: u64, page_type: u8) -> [u8; 48] {
    Sha384::digest(page_info(prev, contents, gpa, page_type)).into()
}

/// The running SNP launch digest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnpDigest {
    ld: [u8; 48],
}

impl Default for SnpDigest {
    fn default() -> Self {
        Self::new()
    }
}

impl SnpDigest {
    /// LD = 0 (`SNP_LAUNCH_START`).
    pub const fn new() -> Self {
        SnpDigest { ld: [0; 48] }
    }

    /// One update with a precomputed contents digest. For types without contents the
    /// digest is ignored and 48 zero bytes are used, as the firmware does.
    pub fn update(&mut self, contents: &[u8; 48], gpa: u64, page_type: u8) {
        let zero = [0u8; 48];
        let c = if type_has_contents(page_type) {
            contents
        } else {
            &zero
        };
        self.ld = page_info_digest(&self.ld, c, gpa, page_type);
    }

    /// One update of a page with contents (NORMAL or VMSA), hashing `data` (zero-extended).
    pub fn update_page(&mut self, data: &[u8], gpa: u64, page_type: u8) {
        let c = if type_has_contents(page_type) {
            contents_digest(data)
        } else {
            [0; 48]
        };
        self.update(&c, gpa, page_type);
    }

    /// The current LD.
    pub const fn ld(&self) -> [u8; 48] {
        self.ld
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::vmsa::{kvm_measured_vmsa, reset_regs, BSP_RESET_ADDR, KVM_VMSA_GPA};
    use crate::launch::Platform;

    fn unhex<const N: usize>(s: &str) -> [u8; N] {
        let mut out = [0u8; N];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
        }
        out
    }

    // Single-update vectors, ../shared/spec/igvm-snp.md §5 "Single-update vectors".
    #[test]
    fn normal_zero_page_at_0() {
        let mut d = SnpDigest::new();
        d.update_page(&[], 0, PAGE_TYPE_NORMAL);
        assert_eq!(d.ld(), unhex::<48>("9d13634b6014bb21cf059b2dc694e7bff01a8a7137041100cd2b695f3d10fb687267b97808b27f8f471d943bc6f53a20"));
    }

    #[test]
    fn zero_type_page_at_0() {
        let mut d = SnpDigest::new();
        d.update(&[0xAA; 48], 0, PAGE_TYPE_ZERO); // contents ignored for ZERO
        assert_eq!(d.ld(), unhex::<48>("70c0ecaab9608f14ebf8ac6f0f07bcd8728f4e2ab30382b539b4de4de904ca9f8ebdf4b2cd3cd84dd996bd55dd794676"));
    }

    #[test]
    fn bsp_vmsa_only() {
        let vmsa = kvm_measured_vmsa(
            &reset_regs(0x0080_0F12, BSP_RESET_ADDR),
            0,
            Platform::Snp,
            true,
        );
        let mut d = SnpDigest::new();
        d.update_page(&vmsa, KVM_VMSA_GPA, PAGE_TYPE_VMSA);
        assert_eq!(d.ld(), unhex::<48>("108432463da76821f35c5daf2f7aecc0ce9ce88652de5f70f638c7a0345c11f2f80025654b80e7be10a9fe0ee1b75f33"));
    }

    #[test]
    fn zero_page_contents() {
        // A NORMAL all-zero page has CONTENTS c0e59a3e…aa8d774 (spec §2.1).
        let c = contents_digest(&[0u8; 10]);
        assert_eq!(c[..4], [0xc0, 0xe5, 0x9a, 0x3e]);
        assert_eq!(c, contents_digest(&[0u8; PAGE_SIZE]));
        assert_eq!(c, contents_digest(&[0u8; PAGE_SIZE + 5]));
    }

    #[test]
    fn page_info_layout() {
        let p = page_info(&[1; 48], &[2; 48], 0x1122_3344_5566_7788, 6);
        assert_eq!(&p[0x60..0x68], &[0x70, 0, 6, 0, 0, 0, 0, 0]);
        assert_eq!(&p[0x68..], &0x1122_3344_5566_7788u64.to_le_bytes());
    }
}
