//! SEV and SEV-ES launch digest and `LAUNCH_MEASURE` (SEV API spec §6.4–§6.6;
//! `../shared/spec/igvm-snp.md` §3.1).
//!
//! `LAUNCH_UPDATE_DATA` encrypts a region in place and extends one SHA-256 over its raw
//! bytes, in call order: no GPA, no page type. On SEV-ES `LAUNCH_UPDATE_VMSA` then extends
//! the same hash with every vCPU's 4096-byte VMSA (creation order). `LAUNCH_MEASURE`
//! returns `HMAC-SHA256(TIK, 0x04 ‖ API_MAJOR ‖ API_MINOR ‖ BUILD ‖ POLICY u32le ‖ LD ‖
//! MNONCE)`. Because the digest is a hash of a concatenation, how the VMM batches regions
//! into calls does not matter.

use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use super::snp::PAGE_SIZE;

/// The running SEV / SEV-ES launch digest.
#[derive(Clone, Debug, Default)]
pub struct SevDigest {
    h: Sha256,
}

impl SevDigest {
    /// An empty digest (`LAUNCH_START`).
    pub fn new() -> Self {
        SevDigest { h: Sha256::new() }
    }

    /// Extends with raw bytes (one `LAUNCH_UPDATE_DATA` region, or part of one).
    pub fn update(&mut self, bytes: &[u8]) {
        self.h.update(bytes);
    }

    /// Extends with one 4 KiB page whose first bytes are `data` (zero-extended; bytes past
    /// 4096 ignored).
    pub fn update_page(&mut self, data: &[u8]) {
        let data = data.get(..PAGE_SIZE).unwrap_or(data);
        self.h.update(data);
        const ZEROS: [u8; PAGE_SIZE] = [0; PAGE_SIZE];
        if let Some(pad) = ZEROS.get(data.len()..) {
            self.h.update(pad);
        }
    }

    /// The launch digest.
    pub fn finish(self) -> [u8; 32] {
        self.h.finalize().into()
    }
}

/// The `LAUNCH_MEASURE` value: HMAC-SHA256 keyed with the TIK over the 56-byte message
/// `0x04 ‖ api_major ‖ api_minor ‖ build ‖ policy (u32 LE) ‖ digest[32] ‖ mnonce[16]`
/// (SEV API spec §6.5; virtee/sev `launch/sev.rs` `Session::verify`).
pub fn launch_measure(
    tik: &[u8; 16],
    api_major: u8,
    api_minor: u8,
    build: u8,
    policy: u32,
    digest: &[u8; 32],
    mnonce: &[u8; 16],
) -> [u8; 32] {
    // HMAC pads keys shorter than the block with zeros (RFC 2104 §2), so the 16-byte TIK
    // zero-extended to the 64-byte block is the same key; `new` on a full block cannot fail.
    let mut key = [0u8; 64];
    key[..16].copy_from_slice(tik);
    let mut mac = <Hmac<Sha256> as KeyInit>::new(&key.into());
    mac.update(&[0x04, api_major, api_minor, build]);
    mac.update(&policy.to_le_bytes());
    mac.update(digest);
    mac.update(mnonce);
    mac.finalize().into_bytes().into()
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

    #[test]
    fn hmac_vector_virtee_sev() {
        // virtee/sev src/launch/sev/session/mod.rs `initialized::verify` (a LAUNCH_MEASURE
        // result accepted by its Session::verify): digest = SHA-256(""), policy 0,
        // firmware 0.18 build 15.
        let tik = unhex::<16>("66320db73158a35a255d051758e95ed4");
        let digest =
            unhex::<32>("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        let mnonce = unhex::<16>("4fbe0bedbad6c86ae8f68971d103e554");
        let m = launch_measure(&tik, 0x00, 0x12, 0x0f, 0, &digest, &mnonce);
        assert_eq!(
            m,
            unhex::<32>("6faab2daae389bcd3405a05d6cafe33c0414f7bedd0bae19ba5f38b7fd1664ea")
        );
    }

    #[test]
    fn hmac_message_layout() {
        // TIK 00..0f, API 1.55, build 21, policy 5, LD = the SEV OvmfX64 vector, mnonce 0:
        // Python `hmac.new(tik, 04 01 37 15 ‖ 05000000 ‖ ld ‖ 0*16, sha256)`. (The value
        // ../shared/spec/igvm-snp.md §5 gives for these inputs, 93030ed9…, could not be
        // reproduced with any reading of the message layout; see docs/measurement.md.)
        let mut tik = [0u8; 16];
        for (i, b) in tik.iter_mut().enumerate() {
            *b = i as u8;
        }
        let ld = unhex::<32>("b4c021e085fb83ceffe6571a3d357b4a98773c83c474e47f76c876708fe316da");
        let m = launch_measure(&tik, 1, 55, 21, 5, &ld, &[0; 16]);
        assert_eq!(
            m,
            unhex::<32>("b346cce43dced1ad6700d58244347e842946989907edced0e06890b9110c5024")
        );
    }

    #[test]
    fn batching_does_not_matter() {
        let page: [u8; 4096] = core::array::from_fn(|i| i as u8);
        let mut a = SevDigest::new();
        a.update_page(&page);
        a.update_page(&page[..100]);
        let mut b = SevDigest::new();
        b.update(&page[..7]);
        b.update(&page[7..]);
        b.update(&page[..100]);
        b.update(&[0u8; 3996]);
        assert_eq!(a.finish(), b.finish());
    }
}
