//! TDX MRTD: what `KVM_TDX_INIT_MEM_REGION` makes the TDX module measure
//! (`../shared/spec/kvm-coco-abi.md` §3.3; Intel TDX Module Base Architecture spec,
//! TDH.MEM.PAGE.ADD / TDH.MR.EXTEND).
//!
//! MRTD is one SHA-384 over, in call order:
//! - per page added (`TDH.MEM.PAGE.ADD`): a 128-byte record `"MEM.PAGE.ADD"` (zero-padded to
//!   16 bytes) ‖ GPA u64 LE ‖ 104 zero bytes;
//! - per 256-byte chunk extended (`TDH.MR.EXTEND`): a 128-byte record `"MR.EXTEND"`
//!   (zero-padded to 16) ‖ chunk GPA u64 LE ‖ 104 zero bytes, then the 256 chunk bytes.
//!
//! KVM issues, per page, the ADD and then (with `KVM_TDX_MEASURE_MEMORY_REGION`) its 16
//! EXTENDs before the next page ("single pass"; some older stacks added all pages of a
//! section first).

use sha2::{Digest, Sha384};

use super::snp::PAGE_SIZE;

/// Bytes per `TDH.MR.EXTEND`.
pub const EXTEND_CHUNK: usize = 256;

fn record(tag: &[u8], gpa: u64) -> [u8; 128] {
    let mut r = [0u8; 128];
    if let Some(dst) = r.get_mut(..tag.len()) {
        dst.copy_from_slice(tag);
    }
    r[16..24].copy_from_slice(&gpa.to_le_bytes());
    r
}

/// The running MRTD.
#[derive(Clone, Debug, Default)]
pub struct MrtdDigest {
    h: Sha384,
}

impl MrtdDigest {
    /// An empty MRTD (`TDH.MNG.INIT`).
    pub fn new() -> Self {
        MrtdDigest { h: Sha384::new() }
    }

    /// `TDH.MEM.PAGE.ADD` of the page at `gpa`.
    pub fn page_add(&mut self, gpa: u64) {
        self.h.update(record(b"MEM.PAGE.ADD", gpa));
    }

    /// `TDH.MR.EXTEND` of the 256-byte chunk at `gpa`.
    pub fn mr_extend(&mut self, gpa: u64, chunk: &[u8; EXTEND_CHUNK]) {
        self.h.update(record(b"MR.EXTEND", gpa));
        self.h.update(chunk);
    }

    /// A page added and extended, as KVM does for a measured page: ADD, then 16 EXTENDs of
    /// the page whose first bytes are `data` (zero-extended; bytes past 4096 ignored).
    pub fn add_measured_page(&mut self, gpa: u64, data: &[u8]) {
        self.page_add(gpa);
        let data = data.get(..PAGE_SIZE).unwrap_or(data);
        let mut off = 0usize;
        while off < PAGE_SIZE {
            let mut chunk = [0u8; EXTEND_CHUNK];
            let avail = data.get(off..).unwrap_or(&[]);
            let n = avail.len().min(EXTEND_CHUNK);
            if let (Some(dst), Some(src)) = (chunk.get_mut(..n), avail.get(..n)) {
                dst.copy_from_slice(src);
            }
            self.mr_extend(gpa.wrapping_add(off as u64), &chunk);
            off += EXTEND_CHUNK;
        }
    }

    /// The MRTD.
    pub fn finish(self) -> [u8; 48] {
        self.h.finalize().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex<const N: usize>(s: &str) -> [u8; N] {
        let mut out = [0u8; N];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
        }
        out
    }

    // ../shared/spec/kvm-coco-abi.md §3.3 vectors.
    #[test]
    fn empty() {
        // "38b060a7…f2f14898b95b" = SHA-384 of the empty input (FIPS 180-4 example value).
        assert_eq!(MrtdDigest::new().finish(), unhex::<48>("38b060a751ac96384cd9327eb1b1e36a21fdb71114be07434c0cc7bf63f6e1da274edebfe76f65fbd51ad2f14898b95b"));
    }

    #[test]
    fn add_only() {
        let mut d = MrtdDigest::new();
        d.page_add(0xFFFF_F000);
        assert_eq!(d.finish(), unhex::<48>("8d411e4377a0da03b249acbe9a7939b44b4483b5a6c81341f00d60c1f417257f9a5c1c03f2f223c59f010f4933f238b8"));
    }

    #[test]
    fn add_extend_zero_page() {
        let mut d = MrtdDigest::new();
        d.add_measured_page(0, &[]);
        assert_eq!(d.finish(), unhex::<48>("236f0efa607ff8843f1855d7ef80dc3dda8fb455787a186b8787212951eab0096e3193bb26f817c2b63c21f5e10f9938"));
    }

    #[test]
    fn chunk_gpas_and_data() {
        let page: [u8; 4096] = core::array::from_fn(|i| (i / 256) as u8 + 1);
        let mut a = MrtdDigest::new();
        a.add_measured_page(0x1000, &page);
        let mut b = MrtdDigest::new();
        b.page_add(0x1000);
        for i in 0..16u64 {
            b.mr_extend(0x1000 + i * 256, &[i as u8 + 1; 256]);
        }
        assert_eq!(a.finish(), b.finish());
    }
}
