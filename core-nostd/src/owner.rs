//! The guest owner's side of the SEV / SEV-ES launch attestation: checking what
//! `LAUNCH_MEASURE` returned, and wrapping a secret for `LAUNCH_SECRET` (and unwrapping it
//! again, as the firmware does, for the kernel model).
//!
//! The flow (SEV API spec §6.2–§6.7; `Documentation/virt/kvm/x86/amd-memory-encryption.rst`
//! KVM_SEV_LAUNCH_MEASURE / KVM_SEV_LAUNCH_SECRET; `../shared/spec/kvm-coco-abi.md` §1.4):
//! `LAUNCH_START` with the owner's session (it carries the transport keys TEK and TIK
//! wrapped for the firmware; without one the firmware's keys are all zeros: amd/AMD-ASPFW
//! `sev_mcmd_launch_start` zeroes the new guest and opens a channel only when a DH
//! certificate is given) → `LAUNCH_UPDATE_DATA`… → (SEV-ES `LAUNCH_UPDATE_VMSA`) →
//! `LAUNCH_MEASURE` returns MEASURE ‖ MNONCE ([`LaunchMeasure`]) → the owner checks MEASURE
//! against the digest it expects ([`verify_launch_measure`]) and wraps secrets
//! ([`wrap_secret`]) → `LAUNCH_SECRET` any number of times → `LAUNCH_FINISH`.
//!
//! What the firmware computes, read from AMD's published SEV firmware (amd/AMD-ASPFW,
//! `fw/psp_bl_uapps/sev_uapp/src/`): `sev_guest.c` `sev_guest_measure` (MEASURE),
//! `sev_channel.c` `sev_channel_hmac` / `sev_channel_extract` (the packet MAC, then
//! AES-128-CTR with the TEK), `sev_mcmd.c` `sev_mcmd_launch_secret` (the checks around them).
//! The same byte lists are in virtee/sev `src/launch/sev/session/mod.rs` (`verify`, `secret`)
//! and AMDESE/sev-tool `create_launch_secret_header`:
//!
//! ```text
//! MEASURE = HMAC-SHA256(TIK, 0x04 ‖ API_MAJOR ‖ API_MINOR ‖ BUILD ‖ POLICY u32le ‖ LD[32] ‖ MNONCE[16])
//! header  = FLAGS u32le ‖ IV[16] ‖ MAC[32]                                   (52 bytes)
//! packet  = AES-128-CTR(TEK, IV, secret)                                     (128-bit big-endian counter)
//! MAC     = HMAC-SHA256(TIK, 0x01 ‖ FLAGS u32le ‖ IV ‖ GUEST_LENGTH u32le ‖ TRANS_LENGTH u32le
//!                            ‖ packet ‖ MEASURE[32])
//! ```
//!
//! DATA in the MAC is the packet as sent (the ciphertext), MEASURE the 32-byte MAC
//! `LAUNCH_MEASURE` returned (not the launch digest). Firmware with API older than 0.17 used
//! other layouts (sev-tool: "API <= 0.16 … does LaunchSecret differently"); they are refused
//! here ([`OwnerError::OldApi`]).
//!
//! Everything works in caller-provided buffers: no allocation.

use aes::Aes128;
use ctr::cipher::{KeyIvInit, StreamCipher};
use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Bytes of a `LAUNCH_SECRET` packet header: FLAGS u32, IV[16], MAC[32] (amd/AMD-ASPFW
/// `sev_channel.h` `sev_packet_header_t`; sev-tool `sevapi.h` `SEV_HDR_BUF`, packed).
pub const HEADER_LEN: usize = 52;
/// Bytes of the `LAUNCH_MEASURE` result: MEASURE[32] then MNONCE[16] (`sev_measurement_t`).
pub const MEASURE_BLOB_LEN: usize = 48;
/// Header FLAGS bit 0: the packet is compressed (`PACKET_HEADER_COMPRESSED_FLAG`). The
/// firmware checks the MAC first, then refuses a compressed packet (`SEV_STATUS_UNSUPPORTED`).
pub const FLAG_COMPRESSED: u32 = 1 << 0;
/// Largest packet KVM passes to the firmware: `SEV_FW_BLOB_MAX_SIZE` (16 KiB;
/// `drivers/crypto/ccp` `psp_copy_user_blob`, used by `sev_launch_secret` in
/// `arch/x86/kvm/svm/sev.c`).
pub const MAX_PACKET: usize = 0x4000;
/// The firmware wants the guest range and its length 16-byte aligned
/// (`sev_mcmd_launch_secret`: `IS_ALIGNED_TO_16_BYTES(guest_paddr / guest_len)`), and the
/// packet as long as the guest range (uncompressed).
pub const SECRET_ALIGN: usize = 16;

/// AES-128 in counter mode with a 128-bit big-endian counter over the whole IV (the CCP's
/// AES-CTR; OpenSSL's `aes-128-ctr`, which virtee/sev and sev-tool use).
type Aes128Ctr = ctr::Ctr128BE<Aes128>;

/// The firmware identity `LAUNCH_MEASURE` MACs (`PLATFORM_STATUS`: API_MAJOR, API_MINOR,
/// BUILD).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FirmwareVersion {
    /// API major version.
    pub api_major: u8,
    /// API minor version.
    pub api_minor: u8,
    /// Build id.
    pub build: u8,
}

/// The two transport keys the owner's session hands the firmware at `LAUNCH_START`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TransportKeys {
    /// Transport encryption key (AES-128).
    pub tek: [u8; 16],
    /// Transport integrity key (HMAC-SHA256).
    pub tik: [u8; 16],
}

/// Never prints the keys.
impl core::fmt::Debug for TransportKeys {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("TransportKeys { .. }")
    }
}

/// What `LAUNCH_MEASURE` returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchMeasure {
    /// The HMAC over the launch (MEASURE).
    pub measure: [u8; 32],
    /// The firmware's fresh nonce (MNONCE).
    pub mnonce: [u8; 16],
}

impl LaunchMeasure {
    /// Splits the 48-byte blob.
    pub fn from_bytes(blob: &[u8; MEASURE_BLOB_LEN]) -> LaunchMeasure {
        let mut measure = [0u8; 32];
        let mut mnonce = [0u8; 16];
        let (m, n) = blob.split_at(32);
        measure.copy_from_slice(m);
        mnonce.copy_from_slice(n);
        LaunchMeasure { measure, mnonce }
    }

    /// The 48-byte blob.
    pub fn to_bytes(&self) -> [u8; MEASURE_BLOB_LEN] {
        let mut b = [0u8; MEASURE_BLOB_LEN];
        let (m, n) = b.split_at_mut(32);
        m.copy_from_slice(&self.measure);
        n.copy_from_slice(&self.mnonce);
        b
    }
}

/// A `LAUNCH_SECRET` packet header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketHeader {
    /// FLAGS ([`FLAG_COMPRESSED`]; the other bits are not checked by the firmware).
    pub flags: u32,
    /// The AES-CTR IV (a fresh random value per packet: the owner's job).
    pub iv: [u8; 16],
    /// The packet MAC ([`packet_mac`]).
    pub mac: [u8; 32],
}

impl PacketHeader {
    /// The 52 wire bytes (FLAGS little-endian).
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        let (f, rest) = b.split_at_mut(4);
        let (iv, mac) = rest.split_at_mut(16);
        f.copy_from_slice(&self.flags.to_le_bytes());
        iv.copy_from_slice(&self.iv);
        mac.copy_from_slice(&self.mac);
        b
    }

    /// Parses the wire bytes.
    ///
    /// # Errors
    /// [`OwnerError::HeaderLength`] unless `bytes` is exactly [`HEADER_LEN`] long.
    pub fn parse(bytes: &[u8]) -> Result<PacketHeader, OwnerError> {
        let b: &[u8; HEADER_LEN] = bytes
            .try_into()
            .map_err(|_| OwnerError::HeaderLength(bytes.len()))?;
        let (f, rest) = b.split_at(4);
        let (iv_b, mac_b) = rest.split_at(16);
        let mut flags = [0u8; 4];
        let mut iv = [0u8; 16];
        let mut mac = [0u8; 32];
        flags.copy_from_slice(f);
        iv.copy_from_slice(iv_b);
        mac.copy_from_slice(mac_b);
        Ok(PacketHeader {
            flags: u32::from_le_bytes(flags),
            iv,
            mac,
        })
    }
}

/// Why the owner's side refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum OwnerError {
    /// MEASURE is not the HMAC of the expected launch (wrong digest, policy, firmware
    /// version or TIK — or a launch that is not the one the owner expects).
    MeasureMismatch,
    /// The packet MAC does not verify (the firmware answers `SEV_STATUS_BAD_MEASUREMENT`).
    BadMac,
    /// FLAGS.COMPRESSED is set: no firmware decompresses (`SEV_STATUS_UNSUPPORTED`).
    Compressed,
    /// A packet header that is not [`HEADER_LEN`] bytes.
    HeaderLength(usize),
    /// A secret that is empty, not a multiple of [`SECRET_ALIGN`], or longer than
    /// [`MAX_PACKET`].
    PacketLength(usize),
    /// A firmware API older than 0.17, whose MAC layouts this module does not implement.
    OldApi {
        /// API major.
        major: u8,
        /// API minor.
        minor: u8,
    },
}

impl core::fmt::Display for OwnerError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            OwnerError::MeasureMismatch => f.write_str(
                "the LAUNCH_MEASURE MAC does not match the expected launch (digest, policy, \
                 firmware version and TIK)",
            ),
            OwnerError::BadMac => f.write_str("the secret packet's MAC does not verify"),
            OwnerError::Compressed => {
                f.write_str("the secret packet is flagged COMPRESSED, which no firmware supports")
            }
            OwnerError::HeaderLength(n) => write!(
                f,
                "a LAUNCH_SECRET packet header is {HEADER_LEN} bytes, not {n}"
            ),
            OwnerError::PacketLength(n) => write!(
                f,
                "a launch secret is 16 to {MAX_PACKET} bytes and a multiple of 16, not {n}"
            ),
            OwnerError::OldApi { major, minor } => write!(
                f,
                "SEV firmware API {major}.{minor} predates 0.17; its launch MACs are not supported"
            ),
        }
    }
}

/// HMAC-SHA256 keyed with a 16-byte transport integrity key.
fn tik_hmac(tik: &[u8; 16]) -> Hmac<Sha256> {
    // HMAC zero-pads keys shorter than the block (RFC 2104 §2): the TIK zero-extended to the
    // 64-byte block is the same key, and `new` on a full block cannot fail.
    let mut key = [0u8; 64];
    key[..16].copy_from_slice(tik);
    <Hmac<Sha256> as KeyInit>::new(&key.into())
}

/// The MEASURE HMAC, not finalized (`sev_guest_measure`; the same message as
/// [`crate::measure::sev::launch_measure`], kept as a MAC for a constant-time check).
fn measure_mac(
    tik: &[u8; 16],
    fw: FirmwareVersion,
    policy: u32,
    digest: &[u8; 32],
    mnonce: &[u8; 16],
) -> Hmac<Sha256> {
    let mut mac = tik_hmac(tik);
    // SEV_CHANNEL_CTX_MEASURE = 0x04 (amd/AMD-ASPFW `sev_channel.h`).
    mac.update(&[0x04, fw.api_major, fw.api_minor, fw.build]);
    mac.update(&policy.to_le_bytes());
    mac.update(digest);
    mac.update(mnonce);
    mac
}

/// The MEASURE value the firmware returns for a launch with launch digest `digest`
/// (`crate::measure::sev::SevDigest`), `policy` and `mnonce`.
pub fn launch_measure(
    tik: &[u8; 16],
    fw: FirmwareVersion,
    policy: u32,
    digest: &[u8; 32],
    mnonce: &[u8; 16],
) -> [u8; 32] {
    crate::measure::sev::launch_measure(
        tik,
        fw.api_major,
        fw.api_minor,
        fw.build,
        policy,
        digest,
        mnonce,
    )
}

/// Checks that `got` (what `LAUNCH_MEASURE` returned) is the launch the owner expects: the
/// launch digest `digest` under `policy`, measured by firmware `fw` holding the owner's
/// `tik`. The comparison is constant-time.
///
/// # Errors
/// [`OwnerError::MeasureMismatch`], or [`OwnerError::OldApi`] for firmware API < 0.17.
pub fn verify_launch_measure(
    tik: &[u8; 16],
    fw: FirmwareVersion,
    policy: u32,
    digest: &[u8; 32],
    got: &LaunchMeasure,
) -> Result<(), OwnerError> {
    if (fw.api_major, fw.api_minor) < (0, 17) {
        return Err(OwnerError::OldApi {
            major: fw.api_major,
            minor: fw.api_minor,
        });
    }
    measure_mac(tik, fw, policy, digest, &got.mnonce)
        .verify_slice(&got.measure)
        .map_err(|_| OwnerError::MeasureMismatch)
}

/// The packet MAC, not finalized (`sev_channel_hmac` with `SEV_CHANNEL_CTX_SECRET`).
fn packet_hmac(
    tik: &[u8; 16],
    flags: u32,
    iv: &[u8; 16],
    guest_len: u32,
    packet: &[u8],
    measure: &[u8; 32],
) -> Result<Hmac<Sha256>, OwnerError> {
    let trans_len =
        u32::try_from(packet.len()).map_err(|_| OwnerError::PacketLength(packet.len()))?;
    let mut mac = tik_hmac(tik);
    // SEV_CHANNEL_CTX_SECRET = 0x01; the lengths are the firmware's 32-bit size_t.
    mac.update(&[0x01]);
    mac.update(&flags.to_le_bytes());
    mac.update(iv);
    mac.update(&guest_len.to_le_bytes());
    mac.update(&trans_len.to_le_bytes());
    mac.update(packet);
    mac.update(measure);
    Ok(mac)
}

/// The MAC of a packet header: over FLAGS, IV, the guest range's length, the packet's
/// length, the packet (ciphertext) and `measure`, keyed with the TIK (module doc).
///
/// # Errors
/// [`OwnerError::PacketLength`] for a packet over 4 GiB.
pub fn packet_mac(
    tik: &[u8; 16],
    flags: u32,
    iv: &[u8; 16],
    guest_len: u32,
    packet: &[u8],
    measure: &[u8; 32],
) -> Result<[u8; 32], OwnerError> {
    Ok(packet_hmac(tik, flags, iv, guest_len, packet, measure)?
        .finalize()
        .into_bytes()
        .into())
}

/// Wraps `secret` in place for `LAUNCH_SECRET` after a launch measured `measure`: encrypts
/// it with the TEK under `iv` (it becomes the packet, `trans`) and returns the header whose
/// MAC the firmware checks. `iv` must be fresh for every packet under one TEK (CTR mode).
///
/// # Errors
/// [`OwnerError::PacketLength`] unless the secret is 16 to [`MAX_PACKET`] bytes and a
/// multiple of 16 (what KVM and the firmware accept for an uncompressed packet, module doc).
pub fn wrap_secret(
    keys: &TransportKeys,
    iv: &[u8; 16],
    flags: u32,
    measure: &[u8; 32],
    secret: &mut [u8],
) -> Result<PacketHeader, OwnerError> {
    let n = secret.len();
    if n == 0 || n > MAX_PACKET || !n.is_multiple_of(SECRET_ALIGN) {
        return Err(OwnerError::PacketLength(n));
    }
    Aes128Ctr::new(&keys.tek.into(), &(*iv).into()).apply_keystream(secret);
    let guest_len = u32::try_from(n).map_err(|_| OwnerError::PacketLength(n))?;
    let mac = packet_mac(&keys.tik, flags, iv, guest_len, secret, measure)?;
    Ok(PacketHeader {
        flags,
        iv: *iv,
        mac,
    })
}

/// What the firmware does with a packet (`sev_channel_extract`, then the COMPRESSED check of
/// `sev_mcmd_launch_secret`): verifies the MAC (constant-time) for a guest range of
/// `guest_len` bytes after a launch measured `measure`, then decrypts `packet` in place.
/// The length and state checks that come before are the caller's (the firmware's command
/// handler).
///
/// # Errors
/// [`OwnerError::BadMac`] (packet untouched), [`OwnerError::Compressed`] (MAC good, packet
/// untouched), [`OwnerError::PacketLength`] for a packet over 4 GiB.
pub fn unwrap_secret(
    keys: &TransportKeys,
    measure: &[u8; 32],
    header: &PacketHeader,
    guest_len: u32,
    packet: &mut [u8],
) -> Result<(), OwnerError> {
    packet_hmac(
        &keys.tik,
        header.flags,
        &header.iv,
        guest_len,
        packet,
        measure,
    )?
    .verify_slice(&header.mac)
    .map_err(|_| OwnerError::BadMac)?;
    if header.flags & FLAG_COMPRESSED != 0 {
        return Err(OwnerError::Compressed);
    }
    Aes128Ctr::new(&keys.tek.into(), &header.iv.into()).apply_keystream(packet);
    Ok(())
}

#[cfg(test)]
mod tests {
    //! Known answers from `scripts/sev_secret_vectors.py` (Python `hmac` + the
    //! `cryptography` package's AES-128-CTR, written from the byte lists in the module doc,
    //! not from this code); vector 1's packet and MAC were also reproduced with the openssl
    //! CLI (`openssl enc -aes-128-ctr`, `openssl dgst -sha256 -mac HMAC`).
    use super::*;

    fn unhex<const N: usize>(s: &str) -> [u8; N] {
        let mut out = [0u8; N];
        assert_eq!(s.len(), 2 * N, "{s}");
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
        }
        out
    }

    fn seq<const N: usize>(start: u8) -> [u8; N] {
        core::array::from_fn(|i| start.wrapping_add(i as u8))
    }

    fn keys() -> TransportKeys {
        TransportKeys {
            tek: seq(0x10),
            tik: seq(0x20),
        }
    }

    const V1_HEADER: &str = "00000000303132333435363738393a3b3c3d3e3ff0502c7e9993d9432133430b6dd5490c940ab17410a9aab82688fff095a5f4f6";
    const V1_PACKET: &str = "9a402aae30567b73052a50516427916197828c46b67709573627355cd3498163";

    fn v1_plaintext() -> [u8; 32] {
        let mut p = [b'\n'; 32];
        p[..31].copy_from_slice(b"relaunch: the launch secret #1\n");
        p
    }

    #[test]
    fn wrap_matches_vector_1() {
        let mut buf = v1_plaintext();
        let h = wrap_secret(&keys(), &seq(0x30), 0, &seq(0x40), &mut buf).unwrap();
        assert_eq!(buf, unhex::<32>(V1_PACKET));
        assert_eq!(h.to_bytes(), unhex::<52>(V1_HEADER));
        assert_eq!(PacketHeader::parse(&h.to_bytes()), Ok(h));
    }

    #[test]
    fn unwrap_inverts_vector_1_and_checks_every_mac_input() {
        let header = PacketHeader::parse(&unhex::<52>(V1_HEADER)).unwrap();
        let measure: [u8; 32] = seq(0x40);
        let mut p = unhex::<32>(V1_PACKET);
        unwrap_secret(&keys(), &measure, &header, 32, &mut p).unwrap();
        assert_eq!(p, v1_plaintext());
        // Every input of the MAC matters: flip each, the packet stays untouched.
        let packet = unhex::<32>(V1_PACKET);
        let mut other_measure = measure;
        other_measure[31] ^= 1;
        let mut other_tik = keys();
        other_tik.tik[0] ^= 1;
        let mut flipped_iv = header;
        flipped_iv.iv[0] ^= 1;
        let mut flipped_flags = header;
        flipped_flags.flags = 2;
        let cases: [(TransportKeys, [u8; 32], PacketHeader, u32, usize); 6] = [
            (keys(), other_measure, header, 32, 32),
            (other_tik, measure, header, 32, 32),
            (keys(), measure, flipped_iv, 32, 32),
            (keys(), measure, flipped_flags, 32, 32),
            (keys(), measure, header, 16, 32),
            (keys(), measure, header, 32, 16),
        ];
        for (k, m, h, guest_len, trans) in cases {
            let mut p = packet;
            assert_eq!(
                unwrap_secret(&k, &m, &h, guest_len, &mut p[..trans]),
                Err(OwnerError::BadMac)
            );
            assert_eq!(p, packet);
        }
        let mut p = packet;
        p[5] ^= 0x80;
        assert_eq!(
            unwrap_secret(&keys(), &measure, &header, 32, &mut p),
            Err(OwnerError::BadMac)
        );
    }

    #[test]
    fn whole_owner_turn_matches_vector_2() {
        // The firmware's MEASURE for the vector's launch, checked by the owner, then a
        // 64-byte secret wrapped under it.
        let fw = FirmwareVersion {
            api_major: 1,
            api_minor: 55,
            build: 0,
        };
        let digest =
            unhex::<32>("8166470a6833d390ca63c4171241090ea15de8a28fd47551b01af9602d136934");
        let mnonce: [u8; 16] = seq(0xF0);
        let m = launch_measure(&keys().tik, fw, 1, &digest, &mnonce);
        assert_eq!(
            m,
            unhex::<32>("0726555f02336d45c66182bf3ebf1946fad8eca50c2d2a446db78756cc33d8fd")
        );
        let got = LaunchMeasure::from_bytes(&LaunchMeasure { measure: m, mnonce }.to_bytes());
        assert_eq!(got.mnonce, mnonce);
        verify_launch_measure(&keys().tik, fw, 1, &digest, &got).unwrap();
        for (policy, fw2, tik) in [
            (3, fw, keys().tik),
            (1, FirmwareVersion { build: 1, ..fw }, keys().tik),
            (1, fw, keys().tek),
        ] {
            assert_eq!(
                verify_launch_measure(&tik, fw2, policy, &digest, &got),
                Err(OwnerError::MeasureMismatch)
            );
        }
        let mut secret: [u8; 64] = seq(0);
        let h = wrap_secret(&keys(), &seq(0xA0), 0, &m, &mut secret).unwrap();
        assert_eq!(h.to_bytes(), unhex::<52>("00000000a0a1a2a3a4a5a6a7a8a9aaabacadaeaf0a28d7a0fce010e2edb24e4bcb3dbeca439f2593c92179ad70e965f0d2a6113e"));
        assert_eq!(secret, unhex::<64>("c910a111e8719aa8c3fb9f85e8581c245b3cb20f53740670c8b22078d3479c1e3af85c0ed81dc43e367f1bb5fe394ea7c02fbe6afc4579f7d0d6465f4d1fc966"));
    }

    #[test]
    fn virtee_measure_verifies() {
        // virtee/sev src/launch/sev/session/mod.rs `initialized::verify`: firmware 0.18
        // build 15, policy 0, digest SHA-256(""), accepted by its Session::verify.
        let got = LaunchMeasure {
            measure: unhex::<32>(
                "6faab2daae389bcd3405a05d6cafe33c0414f7bedd0bae19ba5f38b7fd1664ea",
            ),
            mnonce: unhex::<16>("4fbe0bedbad6c86ae8f68971d103e554"),
        };
        let fw = FirmwareVersion {
            api_major: 0,
            api_minor: 0x12,
            build: 0x0f,
        };
        let digest =
            unhex::<32>("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        let tik = unhex::<16>("66320db73158a35a255d051758e95ed4");
        verify_launch_measure(&tik, fw, 0, &digest, &got).unwrap();
        let old = FirmwareVersion {
            api_minor: 16,
            ..fw
        };
        assert_eq!(
            verify_launch_measure(&tik, old, 0, &digest, &got),
            Err(OwnerError::OldApi {
                major: 0,
                minor: 16
            })
        );
    }

    #[test]
    fn compressed_is_refused_after_the_mac() {
        // Vector 3: vector 1 with FLAGS = COMPRESSED, a valid MAC.
        let h3 = unhex::<52>("01000000303132333435363738393a3b3c3d3e3fefd369bca0ce540b9820eb16b17e336e99feadf053e859ec0d1734bda6721475");
        let mut buf = v1_plaintext();
        let h = wrap_secret(&keys(), &seq(0x30), FLAG_COMPRESSED, &seq(0x40), &mut buf).unwrap();
        assert_eq!(h.to_bytes(), h3);
        let mut p = buf;
        assert_eq!(
            unwrap_secret(&keys(), &seq(0x40), &h, 32, &mut p),
            Err(OwnerError::Compressed)
        );
        assert_eq!(p, buf, "nothing decrypted");
    }

    #[test]
    fn lengths_are_checked() {
        for n in [0usize, 8, 33] {
            let mut b = [0u8; 64];
            assert_eq!(
                wrap_secret(&keys(), &[0; 16], 0, &[0; 32], &mut b[..n]),
                Err(OwnerError::PacketLength(n))
            );
        }
        let mut big = [0u8; MAX_PACKET + 16];
        assert_eq!(
            wrap_secret(&keys(), &[0; 16], 0, &[0; 32], &mut big),
            Err(OwnerError::PacketLength(MAX_PACKET + 16))
        );
        assert!(wrap_secret(&keys(), &[0; 16], 0, &[0; 32], &mut big[..MAX_PACKET]).is_ok());
        assert_eq!(
            PacketHeader::parse(&[0; 51]),
            Err(OwnerError::HeaderLength(51))
        );
        assert_eq!(
            PacketHeader::parse(&[0; 53]),
            Err(OwnerError::HeaderLength(53))
        );
    }
}
