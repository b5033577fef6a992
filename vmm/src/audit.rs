//! The audit log, the per-launch event stream (`docs/reboot-contract.md`) and the bundle
//! store (`--bundle-store`, [`BundleStore`]).
//!
//! Both are JSON lines (records are `serde` structs, `crate::json::to_line`). The audit log gets a `launch` record before the guest runs and an
//! `exit` record when the launch ends (and a `swap` record per hand-over, `docs/fuki.md`);
//! each record is built in memory and written with one
//! `write(2)` on an `O_APPEND` file, so a crash or `kill -9` never loses (or tears) a record
//! whose write started. `fdatasync` follows off the critical path (see [`AuditLog::sync`]).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// An append-only JSON-lines file.
#[derive(Debug)]
pub struct AuditLog {
    file: File,
    /// Extra time every `sync` takes, in ns (fault injection: a slow disk).
    sync_delay_ns: std::sync::atomic::AtomicU64,
}

impl AuditLog {
    /// Opens (creating, mode 0600) `path` for appending.
    ///
    /// # Errors
    /// The open error.
    pub fn open(path: &Path) -> std::io::Result<AuditLog> {
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)?;
        Ok(AuditLog {
            file,
            sync_delay_ns: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Appends one record with a single `write(2)`.
    ///
    /// # Errors
    /// The write error.
    pub fn append(&self, record: &str) -> std::io::Result<()> {
        let mut line = Vec::with_capacity(record.len() + 1);
        line.extend_from_slice(record.as_bytes());
        line.push(b'\n');
        (&self.file).write_all(&line)
    }

    /// `fdatasync`: makes appended records durable across power loss (kill -9 safety needs
    /// only the write).
    ///
    /// # Errors
    /// The sync error.
    pub fn sync(&self) -> std::io::Result<()> {
        let delay = self
            .sync_delay_ns
            .load(std::sync::atomic::Ordering::Relaxed);
        if delay > 0 {
            std::thread::sleep(std::time::Duration::from_nanos(delay));
        }
        self.file.sync_data()
    }

    /// Makes every later [`AuditLog::sync`] take `delay` longer: fault injection for tests of
    /// what a slow disk does to the session (the dead-VM backlog bound).
    pub fn set_sync_delay(&self, delay: std::time::Duration) {
        let ns = u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX);
        self.sync_delay_ns
            .store(ns, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Where per-launch event lines go.
#[derive(Debug)]
pub enum EventSink {
    /// Standard error.
    Stderr,
    /// An append-only file.
    File(AuditLog),
    /// In memory (tests).
    Memory(Mutex<Vec<String>>),
}

impl EventSink {
    /// Emits one event line (errors are ignored: events are advisory, the audit log is not).
    pub fn emit(&self, line: &str) {
        match self {
            EventSink::Stderr => {
                crate::elog!("{line}");
            }
            EventSink::File(f) => {
                let _ = f.append(line);
            }
            EventSink::Memory(v) => v
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(line.to_string()),
        }
    }

    /// Lines emitted so far (only for `Memory`).
    pub fn lines(&self) -> Vec<String> {
        match self {
            EventSink::Memory(v) => v
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
            _ => Vec::new(),
        }
    }
}

/// Bundles a [`BundleStore`] writes at most per process (content already stored is free).
pub const STORE_MAX_FILES: u64 = 64;
/// Bytes a [`BundleStore`] writes at most per process.
pub const STORE_MAX_BYTES: u64 = 4 << 30;

/// `--bundle-store DIR`: every bundle the session launches, kept under `DIR/<sha256>` (the
/// lowercase hex SHA-256 of its bytes, as in the audit records), so `relaunch inspect` and
/// `relaunch measure` can be run on exactly what was launched.
///
/// A file is written once: to a temporary file in `DIR` (`O_EXCL`, mode 0600), `fdatasync`ed,
/// then renamed to its name and the directory synced — a reader never sees a partial file.
/// A name that already exists with the right size is taken as stored (the name is the
/// content's hash). The store is bounded per process ([`STORE_MAX_FILES`] new files,
/// [`STORE_MAX_BYTES`] written): past either bound, storing fails, and a hand-over that
/// cannot be stored is refused (`docs/fuki.md`).
#[derive(Debug)]
pub struct BundleStore {
    dir: PathBuf,
    /// New files and bytes written so far.
    used: Mutex<(u64, u64)>,
}

/// Why a bundle could not be stored.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file system said no.
    #[error("bundle store {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The per-process bound was reached.
    #[error(
        "bundle store {dir}: full for this run ({STORE_MAX_FILES} bundles or \
         {STORE_MAX_BYTES} bytes written)"
    )]
    Full {
        /// The store.
        dir: PathBuf,
    },
    /// A file of that name exists with other contents.
    #[error(
        "bundle store {path}: exists with {found} bytes, not {want} (not written by relaunch?)"
    )]
    Mismatch {
        /// The file.
        path: PathBuf,
        /// Its size.
        found: u64,
        /// The bundle's size.
        want: u64,
    },
}

impl BundleStore {
    /// The store in `dir`, created (mode 0700, with any missing parents) if missing.
    ///
    /// # Errors
    /// `dir` cannot be created or is not a directory.
    pub fn open(dir: &Path) -> Result<BundleStore, StoreError> {
        let io = |source| StoreError::Io {
            path: dir.to_path_buf(),
            source,
        };
        if std::fs::symlink_metadata(dir).is_err() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io)?;
        }
        let meta = std::fs::metadata(dir).map_err(io)?;
        if !meta.is_dir() {
            return Err(io(std::io::Error::new(
                std::io::ErrorKind::NotADirectory,
                "not a directory",
            )));
        }
        Ok(BundleStore {
            dir: dir.to_path_buf(),
            used: Mutex::new((0, 0)),
        })
    }

    /// Where the bundle with SHA-256 `sha256` (hex) is kept.
    pub fn path_of(&self, sha256: &str) -> PathBuf {
        self.dir.join(sha256)
    }

    /// Keeps `bundle`, whose SHA-256 is `sha256` (hex, computed by the caller); returns its
    /// path.
    ///
    /// # Errors
    /// [`StoreError`]; nothing is left behind but possibly an unlinked temporary file's
    /// name (removed on error).
    pub fn store(&self, sha256: &str, bundle: &[u8]) -> Result<PathBuf, StoreError> {
        let path = self.path_of(sha256);
        let want = bundle.len() as u64;
        if let Ok(m) = std::fs::symlink_metadata(&path) {
            if m.is_file() && m.len() == want {
                return Ok(path);
            }
            return Err(StoreError::Mismatch {
                path,
                found: m.len(),
                want,
            });
        }
        {
            let mut used = self
                .used
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if used.0 >= STORE_MAX_FILES || used.1.saturating_add(want) > STORE_MAX_BYTES {
                return Err(StoreError::Full {
                    dir: self.dir.clone(),
                });
            }
            used.0 += 1;
            used.1 = used.1.saturating_add(want);
        }
        static TMP: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = TMP.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = self
            .dir
            .join(format!(".tmp-{sha256}-{}-{n}", std::process::id()));
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |source| StoreError::Io { path: p, source }
        };
        let written = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_CLOEXEC)
                .open(&tmp)
                .map_err(io(&tmp))?;
            f.write_all(bundle).map_err(io(&tmp))?;
            f.sync_data().map_err(io(&tmp))?;
            std::fs::rename(&tmp, &path).map_err(io(&path))?;
            // The rename is durable once the directory is.
            File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(io(&self.dir))
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written.map(|()| path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_appends_whole_lines() {
        let dir = std::env::temp_dir().join(format!("relaunch-audit-{}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let a = AuditLog::open(&dir).unwrap();
        a.append("{\"x\":1}").unwrap();
        let b = AuditLog::open(&dir).unwrap();
        b.append("{\"x\":2}").unwrap();
        a.sync().unwrap();
        assert_eq!(
            std::fs::read_to_string(&dir).unwrap(),
            "{\"x\":1}\n{\"x\":2}\n"
        );
        let _ = std::fs::remove_file(&dir);
    }

    #[test]
    fn bundle_store_keeps_content_by_hash() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("relaunch-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = BundleStore::open(&dir.join("bundles")).unwrap();
        let bytes = b"not really a bundle".to_vec();
        let sha = crate::json::hex(&<sha2::Sha256 as sha2::Digest>::digest(&bytes));
        let p = store.store(&sha, &bytes).unwrap();
        assert_eq!(p, dir.join("bundles").join(&sha));
        assert_eq!(std::fs::read(&p).unwrap(), bytes);
        let mode = std::fs::metadata(&p).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        let dmode = std::fs::metadata(dir.join("bundles"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dmode & 0o777, 0o700, "{dmode:o}");
        // Again: already there, nothing written, no temporary file left.
        assert_eq!(store.store(&sha, &bytes).unwrap(), p);
        assert_eq!(*store.used.lock().unwrap(), (1, bytes.len() as u64));
        let names: Vec<_> = std::fs::read_dir(dir.join("bundles"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(&sha)]);
        // A same-named file with other contents is not overwritten.
        std::fs::write(store.path_of("abcd"), b"xyz").unwrap();
        assert!(matches!(
            store.store("abcd", b"four"),
            Err(StoreError::Mismatch {
                found: 3,
                want: 4,
                ..
            })
        ));
        // The per-process bound.
        *store.used.lock().unwrap() = (STORE_MAX_FILES, 0);
        assert!(matches!(
            store.store("ef01", b"x"),
            Err(StoreError::Full { .. })
        ));
        // Not a directory.
        assert!(BundleStore::open(&p).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
