//! The audit log and the per-launch event stream (`docs/reboot-contract.md`).
//!
//! Both are JSON lines (records are `serde` structs, `crate::json::to_line`). The audit log gets a `launch` record before the guest runs and an
//! `exit` record when the launch ends; each record is built in memory and written with one
//! `write(2)` on an `O_APPEND` file, so a crash or `kill -9` never loses (or tears) a record
//! whose write started. `fdatasync` follows off the critical path (see [`AuditLog::sync`]).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
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
}
