//! The audit log and the per-launch event stream (`docs/reboot-contract.md`).
//!
//! Both are JSON lines. The audit log gets a `launch` record before the guest runs and an
//! `exit` record when the launch ends; each record is built in memory and written with one
//! `write(2)` on an `O_APPEND` file, so a crash or `kill -9` never loses (or tears) a record
//! whose write started. `fdatasync` follows off the critical path (see [`AuditLog::sync`]).

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Mutex;

/// A JSON object being built on one line (a by-value builder over `crate::json`'s escaping,
/// convenient for records assembled across several steps).
#[derive(Debug, Default)]
pub struct JsonObj {
    buf: String,
}

/// Appends `s` as a JSON string literal (the shared writer's escaping, `crate::json`).
pub fn push_json_str(out: &mut String, s: &str) {
    crate::json::write_str(out, s);
}

impl JsonObj {
    /// An empty object.
    pub fn new() -> JsonObj {
        JsonObj::default()
    }

    fn key(&mut self, k: &str) {
        self.buf.push(if self.buf.is_empty() { '{' } else { ',' });
        push_json_str(&mut self.buf, k);
        self.buf.push(':');
    }

    /// `"k":"v"`.
    pub fn str(mut self, k: &str, v: &str) -> JsonObj {
        self.key(k);
        push_json_str(&mut self.buf, v);
        self
    }

    /// `"k":n`.
    pub fn u64(mut self, k: &str, v: u64) -> JsonObj {
        self.key(k);
        let _ = write!(self.buf, "{v}");
        self
    }

    /// `"k":n` or `"k":null`.
    pub fn opt_u64(mut self, k: &str, v: Option<u64>) -> JsonObj {
        self.key(k);
        match v {
            Some(v) => {
                let _ = write!(self.buf, "{v}");
            }
            None => self.buf.push_str("null"),
        }
        self
    }

    /// `"k":"v"` or `"k":null`.
    pub fn opt_str(mut self, k: &str, v: Option<&str>) -> JsonObj {
        self.key(k);
        match v {
            Some(v) => push_json_str(&mut self.buf, v),
            None => self.buf.push_str("null"),
        }
        self
    }

    /// `"k":true|false`.
    pub fn bool(mut self, k: &str, v: bool) -> JsonObj {
        self.key(k);
        self.buf.push_str(if v { "true" } else { "false" });
        self
    }

    /// `"k":{...}`.
    pub fn obj(mut self, k: &str, v: JsonObj) -> JsonObj {
        self.key(k);
        self.buf.push_str(&v.finish());
        self
    }

    /// The object text (no newline).
    pub fn finish(mut self) -> String {
        if self.buf.is_empty() {
            self.buf.push('{');
        }
        self.buf.push('}');
        self.buf
    }
}

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
    fn json_escaping_and_shape() {
        let o = JsonObj::new()
            .str("a", "q\"\\\n\u{1}é")
            .u64("n", 5)
            .opt_u64("z", None)
            .bool("b", true)
            .obj("t", JsonObj::new().u64("x", 1))
            .finish();
        assert_eq!(
            o,
            r#"{"a":"q\"\\\n\u0001é","n":5,"z":null,"b":true,"t":{"x":1}}"#
        );
        assert_eq!(JsonObj::new().finish(), "{}");
    }

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
