//! SNP certificate requests: the certificate file `run --snp-certs FILE` serves, and the
//! answer to `KVM_EXIT_SNP_REQ_CERTS` (Linux 7.0; `Documentation/virt/kvm/api.rst`
//! "KVM_EXIT_SNP_REQ_CERTS", `../shared/spec/kvm-coco-abi.md` §1.6).
//!
//! An SNP guest asks the firmware for an attestation report with an Extended Guest Request
//! (GHCB spec, AMD 56421, §4.1.8.1 "SNP Extended Guest Request"): besides the request it
//! gives `npages` guest pages at `gpa` (RAX, RBX) where the hypervisor writes the
//! certificates that endorse the report's signing key (VCEK or VLEK, and their chain).
//! Without `KVM_SEV_SNP_ENABLE_REQ_CERTS` KVM answers itself with an empty table; with it,
//! KVM exits and the VMM writes the table, then says how it went in `ret`.
//!
//! The file holds the table exactly as the guest gets it (the GHCB layout):
//! - entries of 24 bytes: a GUID (16 bytes, as stored: the guest compares raw bytes), the
//!   offset of the certificate (u32, little-endian, from the start of the file = the start
//!   of the guest's buffer), its length in bytes (u32, little-endian);
//! - an entry of 24 zero bytes ends the table;
//! - the certificates follow, each inside the file and after the table.
//!
//! It is checked at start-up ([`SnpCerts::open`]) and read again, checked, under a shared
//! open-file-description lock, for every request ([`SnpCerts::fetch`]): tools that update
//! the endorsement key and the file take an exclusive lock meanwhile, and the lock is held
//! until KVM has sent the request to the firmware (`amd-memory-encryption.rst`,
//! KVM_SEV_SNP_ENABLE_REQ_CERTS; the vCPU loop does the last part,
//! `crate::vcpu`). A file locked for an update answers the guest `EAGAIN` ("the host is
//! busy and the guest should retry").

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use relaunch_core::limits::PAGE_SIZE;

use crate::memory::GuestMemory;
use crate::sys::sev::{ofd_lock, OfdLock};

/// Largest certificate file served: 16 KiB, the most a Linux guest takes
/// (`drivers/virt/coco/sev-guest/sev-guest.c` `get_ext_report` refuses a `certs_len` over
/// `SEV_FW_BLOB_MAX_SIZE`, 16 KiB in `include/linux/psp-sev.h`; the earlier in-kernel
/// certificate API had the same bound). A VCEK, ASK, ARK and CRL take about 6 KiB.
pub const MAX_CERT_FILE: usize = 16 << 10;

/// Bytes per table entry: GUID (16), offset (4), length (4) (GHCB spec §4.1.8.1).
pub const ENTRY_LEN: usize = 24;

/// `KVM_EXIT_SNP_REQ_CERTS.ret` values the VMM may write (`api.rst`, positive errno values;
/// any other makes the next `KVM_RUN` fail with `EINVAL`).
pub mod ret {
    /// The table is in the guest's buffer; KVM sends the request to the firmware.
    pub const OK: u64 = 0;
    /// The guest's buffer is too small; `npages` says how many pages the table needs.
    pub const ENOSPC: u64 = libc::ENOSPC as u64;
    /// The host is busy (the file is being updated): the guest should retry.
    pub const EAGAIN: u64 = libc::EAGAIN as u64;
    /// Any other failure.
    pub const EIO: u64 = libc::EIO as u64;
}

/// The certificate GUIDs the GHCB spec defines (§4.1.8.1), as 16 stored bytes (RFC 4122
/// byte order, as `uuid_parse` gives them: the UUID's hex digits in order).
pub const VCEK_GUID: [u8; 16] = 0x63da758d_e664_4564_adc5_f4b93be8accd_u128.to_be_bytes();
/// VLEK (GHCB spec §4.1.8.1).
pub const VLEK_GUID: [u8; 16] = 0xa8074bc2_a25a_483e_aae6_39c045a0b8a1_u128.to_be_bytes();
/// ASK (GHCB spec §4.1.8.1).
pub const ASK_GUID: [u8; 16] = 0x4ab7b379_bbac_4fe4_a02f_05aef327c782_u128.to_be_bytes();
/// ARK (GHCB spec §4.1.8.1).
pub const ARK_GUID: [u8; 16] = 0xc0b406a4_a803_4952_9743_3fb6014cd0ae_u128.to_be_bytes();
/// CRL (GHCB spec §4.1.8.1).
pub const CRL_GUID: [u8; 16] = 0x92f81bc3_5811_4d3d_97ff_d19f88dc67ea_u128.to_be_bytes();

/// Names of the GUIDs above.
const KNOWN_GUIDS: &[([u8; 16], &str)] = &[
    (VCEK_GUID, "VCEK"),
    (VLEK_GUID, "VLEK"),
    (ASK_GUID, "ASK"),
    (ARK_GUID, "ARK"),
    (CRL_GUID, "CRL"),
];

/// One table entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CertEntry {
    /// The GUID, as stored.
    pub guid: [u8; 16],
    /// Offset of the certificate from the start of the file.
    pub offset: u32,
    /// Its length in bytes.
    pub length: u32,
}

impl CertEntry {
    /// The spec's name of the GUID, if it has one (VCEK, VLEK, ASK, ARK, CRL).
    pub fn name(&self) -> Option<&'static str> {
        KNOWN_GUIDS
            .iter()
            .find(|(k, _)| *k == self.guid)
            .map(|&(_, name)| name)
    }

    /// The GUID in its text form (`63da758d-e664-4564-adc5-f4b93be8accd`).
    pub fn guid_text(&self) -> String {
        let hex = |r: std::ops::Range<usize>| {
            self.guid
                .get(r)
                .unwrap_or(&[])
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        };
        format!(
            "{}-{}-{}-{}-{}",
            hex(0..4),
            hex(4..6),
            hex(6..8),
            hex(8..10),
            hex(10..16)
        )
    }

    /// The name and the GUID ("VCEK 63da758d-…"), or the GUID alone.
    pub fn describe(&self) -> String {
        match self.name() {
            Some(name) => format!("{name} {}", self.guid_text()),
            None => self.guid_text(),
        }
    }
}

/// Why a certificate file is not a well-formed table.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CertTableError {
    /// Larger than [`MAX_CERT_FILE`].
    #[error("it is larger than {MAX_CERT_FILE} bytes, the most a Linux SNP guest takes")]
    TooLarge,
    /// The file ends before the all-zero entry that ends the table.
    #[error(
        "the table has no terminating entry (24 zero bytes) before the end of the file \
         ({len} bytes)"
    )]
    NoTerminator {
        /// File length.
        len: usize,
    },
    /// An entry with an all-zero GUID that is not the terminator.
    #[error("entry {index} has an all-zero GUID but is not the terminating entry")]
    ZeroGuid {
        /// Entry index.
        index: usize,
    },
    /// A certificate of length 0.
    #[error("entry {index} ({what}) has length 0")]
    Empty {
        /// Entry index.
        index: usize,
        /// Its GUID.
        what: String,
    },
    /// A certificate that does not lie inside the file, after the table.
    #[error(
        "entry {index} ({what}): bytes {offset}..{end} are not inside the file after the table \
         (the table ends at byte {table_end}, the file at {len})"
    )]
    OutOfPlace {
        /// Entry index.
        index: usize,
        /// Its GUID.
        what: String,
        /// Its offset.
        offset: u32,
        /// Offset + length (as u64: it may overflow u32).
        end: u64,
        /// First byte after the terminating entry.
        table_end: usize,
        /// File length.
        len: usize,
    },
    /// Two entries with one GUID (a guest would take either).
    #[error("entries {first} and {index} have the same GUID ({what})")]
    Duplicate {
        /// The earlier entry.
        first: usize,
        /// The later one.
        index: usize,
        /// The GUID.
        what: String,
    },
}

/// A checked certificate table: its entries (the terminator not included).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertTable {
    entries: Vec<CertEntry>,
}

impl CertTable {
    /// Checks `file` as a GHCB certificate table (module doc): at most [`MAX_CERT_FILE`]
    /// bytes, entries up to an all-zero one, each naming a non-empty certificate inside the
    /// file after the table, no GUID twice. Bytes after the last certificate are allowed.
    ///
    /// # Errors
    /// [`CertTableError`], naming the entry.
    pub fn parse(file: &[u8]) -> Result<CertTable, CertTableError> {
        if file.len() > MAX_CERT_FILE {
            return Err(CertTableError::TooLarge);
        }
        let mut entries: Vec<CertEntry> = Vec::new();
        let mut chunks = file.chunks_exact(ENTRY_LEN);
        loop {
            let Some(raw) = chunks.next() else {
                return Err(CertTableError::NoTerminator { len: file.len() });
            };
            if raw.iter().all(|&b| b == 0) {
                break;
            }
            let (guid, rest) = raw.split_at(16);
            let (offset, length) = rest.split_at(4);
            let entry = CertEntry {
                guid: guid.try_into().unwrap_or([0; 16]),
                offset: u32::from_le_bytes(offset.try_into().unwrap_or([0; 4])),
                length: u32::from_le_bytes(length.try_into().unwrap_or([0; 4])),
            };
            let index = entries.len();
            if entry.guid == [0; 16] {
                return Err(CertTableError::ZeroGuid { index });
            }
            if let Some(first) = entries.iter().position(|e| e.guid == entry.guid) {
                return Err(CertTableError::Duplicate {
                    first,
                    index,
                    what: entry.describe(),
                });
            }
            entries.push(entry);
        }
        // The terminator's end: entries + 1 of 24 bytes (≤ 16 KiB, no overflow).
        let table_end = (entries.len() + 1) * ENTRY_LEN;
        for (index, e) in entries.iter().enumerate() {
            if e.length == 0 {
                return Err(CertTableError::Empty {
                    index,
                    what: e.describe(),
                });
            }
            let end = u64::from(e.offset) + u64::from(e.length);
            if (e.offset as usize) < table_end || end > file.len() as u64 {
                return Err(CertTableError::OutOfPlace {
                    index,
                    what: e.describe(),
                    offset: e.offset,
                    end,
                    table_end,
                    len: file.len(),
                });
            }
        }
        Ok(CertTable { entries })
    }

    /// The entries, in file order.
    pub fn entries(&self) -> &[CertEntry] {
        &self.entries
    }
}

/// "3 certificates: VCEK (1360 bytes), ASK (1600 bytes), ARK (1600 bytes)".
impl fmt::Display for CertTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.entries.len();
        write!(f, "{n} certificate{}", if n == 1 { "" } else { "s" })?;
        for (i, e) in self.entries.iter().enumerate() {
            let label = e.name().map_or_else(|| e.guid_text(), str::to_string);
            write!(
                f,
                "{}{label} ({} bytes)",
                if i == 0 { ": " } else { ", " },
                e.length
            )?;
        }
        Ok(())
    }
}

/// Why a request could not be served from the file.
#[derive(Debug, PartialEq, Eq)]
pub enum FetchError {
    /// Another holder has the file locked exclusively (an update): the guest retries.
    Busy,
    /// The file cannot be opened or read, or is no longer a well-formed table.
    Failed(String),
}

/// The certificate file of a run (`run --snp-certs FILE`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnpCerts {
    path: PathBuf,
    /// The table as checked at start-up (for the start-up line).
    table: CertTable,
}

impl SnpCerts {
    /// Reads and checks `path` once (under a shared lock, as every request does).
    ///
    /// # Errors
    /// A sentence naming the file and what is wrong with it.
    pub fn open(path: &Path) -> Result<SnpCerts, String> {
        let (bytes, _lock) = read_locked(path).map_err(|e| match e {
            FetchError::Busy => format!(
                "{}: locked by another process (an update in progress?); try again",
                path.display()
            ),
            FetchError::Failed(why) => why,
        })?;
        let table = CertTable::parse(&bytes).map_err(|e| {
            format!(
                "{}: not an SNP certificate table (GHCB layout): {e}",
                path.display()
            )
        })?;
        Ok(SnpCerts {
            path: path.to_path_buf(),
            table,
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The table as checked at start-up.
    pub fn table(&self) -> &CertTable {
        &self.table
    }

    /// The file's bytes for one request, read and checked under a shared lock, and the lock:
    /// hold it until the request has reached the firmware (module doc).
    ///
    /// # Errors
    /// [`FetchError::Busy`] while an exclusive lock is held; [`FetchError::Failed`] when the
    /// file cannot be read or is no longer well formed.
    pub fn fetch(&self) -> Result<(Vec<u8>, OfdLock), FetchError> {
        let (bytes, lock) = read_locked(&self.path)?;
        CertTable::parse(&bytes).map_err(|e| {
            FetchError::Failed(format!(
                "{}: no longer an SNP certificate table: {e}",
                self.path.display()
            ))
        })?;
        Ok((bytes, lock))
    }
}

/// Opens `path` (a new open file description each time: OFD locks of one description never
/// conflict with each other, and closing one would drop the others' lock), takes a shared
/// lock, and reads at most [`MAX_CERT_FILE`] + 1 bytes.
fn read_locked(path: &Path) -> Result<(Vec<u8>, OfdLock), FetchError> {
    let failed = |e: &dyn fmt::Display| FetchError::Failed(format!("{}: {e}", path.display()));
    let file = std::fs::File::open(path).map_err(|e| failed(&e))?;
    let mut lock = ofd_lock(file, false).map_err(|e| match e.errno() {
        libc::EAGAIN | libc::EACCES => FetchError::Busy,
        _ => failed(&e),
    })?;
    let mut bytes = Vec::new();
    lock.file()
        .take(MAX_CERT_FILE as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| failed(&e))?;
    Ok((bytes, lock))
}

/// Writes `table` (a checked certificate file) for a request of `*npages` guest pages at
/// `gpa`, and returns the `ret` for KVM: [`ret::OK`] when it is in guest memory;
/// [`ret::ENOSPC`] with `*npages` set to the pages it needs when the buffer is smaller
/// (GHCB spec §4.1.8.1: the hypervisor returns the required page count in RBX, which KVM
/// takes from `npages`); [`ret::EIO`] when `[gpa, gpa + len)` is not shared guest RAM
/// (outside every region, across two, or holding a private page: the host cannot write
/// there, and the guest must give shared pages).
pub fn answer(memory: &GuestMemory, gpa: u64, npages: &mut u64, table: &[u8]) -> u64 {
    let len = table.len() as u64;
    let room = npages.checked_mul(PAGE_SIZE).unwrap_or(u64::MAX);
    if room < len {
        *npages = len.div_ceil(PAGE_SIZE);
        return ret::ENOSPC;
    }
    match memory.write(gpa, table) {
        Ok(()) => ret::OK,
        Err(_) => ret::EIO,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::memory::Region;
    use crate::sys::mem::GuestMapping;

    const VCEK: [u8; 16] = VCEK_GUID;
    const ASK: [u8; 16] = ASK_GUID;

    /// A GHCB table built by hand from the spec's layout: `certs` as (GUID, bytes), each
    /// certificate right after the table, in order.
    pub(crate) fn table(certs: &[([u8; 16], &[u8])]) -> Vec<u8> {
        let table_len = (certs.len() + 1) * 24;
        let mut head = Vec::new();
        let mut body = Vec::new();
        for (guid, bytes) in certs {
            head.extend_from_slice(guid);
            head.extend_from_slice(&((table_len + body.len()) as u32).to_le_bytes());
            head.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            body.extend_from_slice(bytes);
        }
        head.extend_from_slice(&[0; 24]);
        head.extend_from_slice(&body);
        head
    }

    fn entry(guid: [u8; 16], offset: u32, length: u32) -> Vec<u8> {
        let mut v = guid.to_vec();
        v.extend_from_slice(&offset.to_le_bytes());
        v.extend_from_slice(&length.to_le_bytes());
        v
    }

    #[test]
    fn a_well_formed_table_parses_with_its_entries() {
        let t = table(&[(VCEK, &[1; 100]), (ASK, &[2; 50])]);
        let parsed = CertTable::parse(&t).unwrap();
        assert_eq!(
            parsed.entries(),
            [
                CertEntry {
                    guid: VCEK,
                    offset: 72,
                    length: 100
                },
                CertEntry {
                    guid: ASK,
                    offset: 172,
                    length: 50
                }
            ]
        );
        assert_eq!(
            parsed.to_string(),
            "2 certificates: VCEK (100 bytes), ASK (50 bytes)"
        );
        assert_eq!(
            parsed.entries()[0].describe(),
            "VCEK 63da758d-e664-4564-adc5-f4b93be8accd"
        );
        // An empty table (the terminator alone) is what KVM itself gives: allowed.
        assert_eq!(CertTable::parse(&[0; 24]).unwrap().entries(), []);
        // Padding after the certificates is allowed.
        let mut padded = t.clone();
        padded.extend_from_slice(&[0; 4000]);
        assert!(CertTable::parse(&padded).is_ok());
    }

    #[test]
    fn malformed_tables_are_refused_naming_the_entry() {
        let e = |b: &[u8]| CertTable::parse(b).unwrap_err();
        // No terminator: empty file, a lone entry, a cut-off terminator.
        assert_eq!(e(&[]), CertTableError::NoTerminator { len: 0 });
        let lone = entry(VCEK, 24, 1);
        assert!(matches!(e(&lone), CertTableError::NoTerminator { .. }));
        let mut cut = table(&[(VCEK, &[1; 8])]);
        cut.truncate(24 + 20);
        assert!(matches!(e(&cut), CertTableError::NoTerminator { .. }));
        // A certificate past the end, inside the table, overflowing u32, empty.
        let mut t = entry(VCEK, 48, 100);
        t.extend_from_slice(&[0; 24 + 99]);
        assert!(matches!(e(&t), CertTableError::OutOfPlace { index: 0, .. }));
        let mut t = entry(VCEK, 0, 24);
        t.extend_from_slice(&[0; 24]);
        assert!(matches!(e(&t), CertTableError::OutOfPlace { .. }));
        let mut t = entry(VCEK, u32::MAX, u32::MAX);
        t.extend_from_slice(&[0; 24]);
        assert!(
            matches!(e(&t), CertTableError::OutOfPlace { end, .. } if end == 2 * u64::from(u32::MAX))
        );
        let mut t = entry(VCEK, 48, 0);
        t.extend_from_slice(&[0; 24]);
        assert!(matches!(e(&t), CertTableError::Empty { index: 0, .. }));
        // A zero GUID that is not the terminator; a GUID twice.
        let mut t = entry([0; 16], 48, 1);
        t.extend_from_slice(&[0; 25]);
        assert_eq!(e(&t), CertTableError::ZeroGuid { index: 0 });
        let mut t = entry(ASK, 72, 1);
        t.extend(entry(ASK, 72, 1));
        t.extend_from_slice(&[0; 25]);
        assert!(matches!(
            e(&t),
            CertTableError::Duplicate {
                first: 0,
                index: 1,
                ..
            }
        ));
        // Too large, whatever it holds.
        let mut big = table(&[(VCEK, &[1; 8])]);
        big.resize(MAX_CERT_FILE + 1, 0);
        assert_eq!(e(&big), CertTableError::TooLarge);
        big.truncate(MAX_CERT_FILE);
        assert!(CertTable::parse(&big).is_ok());
    }

    /// Guest memory: 64 KiB shared at 0 and 64 KiB at 1 MiB whose pages start private
    /// (an SNP region: guest_memfd + shared mapping).
    fn memory() -> GuestMemory {
        let mut m = GuestMemory::default();
        m.push(Region::shared(
            0,
            Arc::new(GuestMapping::anonymous(64 << 10).unwrap()),
        ));
        let gmem = Arc::new(std::os::fd::OwnedFd::from(
            crate::sys::record::memfd(64 << 10).unwrap(),
        ));
        m.push(Region::private(
            1 << 20,
            64 << 10,
            gmem,
            Some(Arc::new(GuestMapping::anonymous(64 << 10).unwrap())),
        ));
        m
    }

    /// `api.rst` KVM_EXIT_SNP_REQ_CERTS and GHCB §4.1.8.1: a table that fits the guest's
    /// pages is written at `gpa` (the bytes as in the file) with ret 0.
    #[test]
    fn a_table_that_fits_is_written_with_ret_0() {
        let mem = memory();
        let t = table(&[(VCEK, &[7; 5000])]);
        let mut npages = 2;
        assert_eq!(answer(&mem, 0x4000, &mut npages, &t), 0);
        assert_eq!(npages, 2);
        let mut back = vec![0; t.len()];
        mem.read(0x4000, &mut back).unwrap();
        assert_eq!(back, t);
        // A page converted to shared inside an SNP region takes it too.
        mem.convert(0x10_0000 + 0x3000, 0x1000, false).unwrap();
        let small = table(&[(ASK, &[1; 100])]);
        let mut one = 1;
        assert_eq!(answer(&mem, 0x10_3000, &mut one, &small), 0);
    }

    /// Too small: ret `ENOSPC` (28) and `npages` = the pages the table needs (KVM puts it in
    /// the guest's RBX); nothing is written. A guest giving no pages learns the size too.
    #[test]
    fn a_buffer_too_small_gets_enospc_and_the_pages_needed() {
        let mem = memory();
        let t = table(&[(VCEK, &[7; 5000])]);
        assert_eq!(t.len(), 5048);
        for given in [0, 1] {
            let mut npages = given;
            assert_eq!(answer(&mem, 0x4000, &mut npages, &t), 28);
            assert_eq!(npages, 2, "given {given}");
        }
        let mut back = [0xFFu8; 24];
        mem.read(0x4000, &mut back).unwrap();
        assert_eq!(back, [0; 24], "nothing written");
        // A page count whose byte size overflows u64 is plenty of room.
        let mut huge = u64::MAX;
        assert_eq!(answer(&mem, 0x4000, &mut huge, &t), 0);
    }

    /// The host cannot write outside RAM, across regions, or into private pages: ret `EIO`
    /// (5), nothing written.
    #[test]
    fn outside_ram_or_private_pages_get_eio() {
        let mem = memory();
        let t = table(&[(VCEK, &[7; 100])]);
        for gpa in [
            // Past the end of RAM; in the hole between the regions.
            2 << 20,
            0x8_0000,
            // Straddling the end of the shared region.
            0x1_0000 - 0x40,
            // Private pages of the SNP region.
            1 << 20,
        ] {
            let mut npages = 1;
            assert_eq!(answer(&mem, gpa, &mut npages, &t), 5, "{gpa:#x}");
            assert_eq!(npages, 1);
        }
        // A range that starts shared and runs into a private page.
        mem.convert(0x10_0000, 0x1000, false).unwrap();
        let long = table(&[(VCEK, &[7; 4096])]);
        let mut npages = 2;
        assert_eq!(answer(&mem, 1 << 20, &mut npages, &long), 5);
    }

    fn temp(name: &str, bytes: &[u8]) -> PathBuf {
        let p = std::env::temp_dir().join(format!("relaunch-certs-{}-{name}", std::process::id()));
        std::fs::write(&p, bytes).unwrap();
        p
    }

    /// `open` reads and checks the file; `fetch` reads it again for each request (an update
    /// in between is served), refuses it once it is malformed, and answers `Busy` while
    /// another description holds an exclusive OFD lock (`amd-memory-encryption.rst`: tools
    /// updating the blob hold one).
    #[test]
    fn open_checks_and_fetch_rereads_under_a_shared_lock() {
        let good = table(&[(VCEK, &[1; 10])]);
        let p = temp("fetch", &good);
        let certs = SnpCerts::open(&p).unwrap();
        assert_eq!(certs.table().entries().len(), 1);
        let (bytes, lock) = certs.fetch().unwrap();
        assert_eq!(bytes, good);
        // Shared locks of two requests at once do not conflict.
        let (_, second) = certs.fetch().unwrap();
        drop((lock, second));
        let newer = table(&[(VCEK, &[2; 20]), (ASK, &[3; 5])]);
        std::fs::write(&p, &newer).unwrap();
        assert_eq!(certs.fetch().unwrap().0, newer);
        // An updater's exclusive lock: busy until it lets go.
        let rw = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&p)
            .unwrap();
        let updater = ofd_lock(rw, true).unwrap();
        assert_eq!(certs.fetch().unwrap_err(), FetchError::Busy);
        assert!(SnpCerts::open(&p).unwrap_err().contains("locked"));
        drop(updater);
        std::fs::write(&p, b"garbage").unwrap();
        assert!(
            matches!(certs.fetch(), Err(FetchError::Failed(w)) if w.contains("no terminating"))
        );
        std::fs::remove_file(&p).unwrap();
        assert!(matches!(certs.fetch(), Err(FetchError::Failed(_))));
    }
}
