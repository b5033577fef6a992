//! Writes to stderr and stdout that never panic.
//!
//! Rust ignores `SIGPIPE`, so writing to a closed pipe fails with `EPIPE`; `eprintln!` and
//! `println!` turn that into a panic, and with `panic = "abort"` into exit 134. A guest can
//! make the VMM log (unknown port accesses), and `relaunch inspect | head -1` closes stdout
//! early: neither may kill the process. So every diagnostic goes through [`elog!`], which
//! ignores write errors, and command output goes through [`stdout_all`], which reports a
//! closed pipe as "the reader is done".
//!
//! Output produced while a lock every vCPU needs is held (guest console output, the
//! guest-triggered "unknown access" lines) goes through a [`Spool`] instead: a bounded
//! buffer and a writer thread, so a stdout or stderr nobody drains never stalls a vCPU.
//!
//! [`elog!`]: crate::elog

use std::fmt;
use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Writes one line (`format!` arguments) to stderr; errors are ignored.
#[macro_export]
macro_rules! elog {
    ($($arg:tt)*) => {
        $crate::log::stderr_line(format_args!($($arg)*))
    };
}

/// Writes `args` and a newline to stderr as one write where possible; errors are ignored.
pub fn stderr_line(args: fmt::Arguments<'_>) {
    let mut line = args.to_string();
    line.push('\n');
    let _ = io::stderr().lock().write_all(line.as_bytes());
}

/// Writes all of `data` to stdout and flushes it. A closed pipe (`EPIPE`) counts as success:
/// the reader has seen all it wanted.
///
/// # Errors
/// Any other write error (e.g. `ENOSPC`).
pub fn stdout_all(data: &[u8]) -> io::Result<()> {
    let mut o = io::stdout().lock();
    match o.write_all(data).and_then(|()| o.flush()) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        r => r,
    }
}

/// [`stdout_all`] for a command's output: returns the exit code (0, or 1 with a one-line
/// message on stderr for a write error other than a closed pipe).
pub fn print_output(cmd: &str, data: &[u8]) -> u8 {
    match stdout_all(data) {
        Ok(()) => 0,
        Err(e) => {
            stderr_line(format_args!("relaunch {cmd}: writing stdout: {e}"));
            1
        }
    }
}

/// A bounded buffer drained into a sink by its own thread, for output that a thread holding
/// a lock every vCPU needs must not wait for (guest console output, guest-triggered log
/// lines): [`Spool::push`] never blocks on the sink. What does not fit is dropped and
/// counted; a sink that fails (closed pipe) is abandoned and later pushes are discarded.
#[derive(Debug)]
pub struct Spool {
    state: Mutex<Pending>,
    /// Signalled when output arrives for an idle writer, or the spool closes.
    wake: Condvar,
    /// Signalled when the writer has written everything.
    drained: Condvar,
    cap: usize,
}

/// Output waiting for the writer thread.
#[derive(Debug, Default)]
struct Pending {
    buf: Vec<u8>,
    /// Pushes (whole or partial) in `buf`.
    queued: u64,
    /// The writer thread holds a chunk it is writing, of this many pushes.
    writing: Option<u64>,
    /// The writer thread sleeps on `wake`.
    idle: bool,
    /// The sink failed: output is discarded from now on, the writer thread has ended.
    broken: bool,
    /// No more pushes: the writer thread ends once `buf` is written.
    closed: bool,
    /// Bytes dropped because `buf` was full.
    dropped_bytes: u64,
    /// Pushes that lost bytes: the buffer was full, the sink failed or the spool closed.
    dropped_pushes: u64,
}

/// What a spool could not write ([`Spool::finish`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpoolLoss {
    /// Bytes dropped because the buffer was full (not counting a failed sink).
    pub dropped_bytes: u64,
    /// Pushes that lost bytes: buffer full, sink failed, or pushed after [`Spool::close`].
    pub dropped_pushes: u64,
    /// Pushes still buffered or being written when `finish` gave up waiting.
    pub unwritten_pushes: u64,
}

fn lock(m: &Mutex<Pending>) -> MutexGuard<'_, Pending> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Spool {
    /// Starts the writer thread `name` over `sink`, buffering at most `cap` bytes. The thread
    /// sleeps while there is nothing to write and ends after [`Spool::close`] (or when the
    /// sink fails).
    ///
    /// # Errors
    /// The thread could not be started.
    pub fn spawn(
        name: &str,
        mut sink: Box<dyn Write + Send>,
        cap: usize,
    ) -> io::Result<Arc<Spool>> {
        let spool = Arc::new(Spool {
            state: Mutex::new(Pending::default()),
            wake: Condvar::new(),
            drained: Condvar::new(),
            cap,
        });
        let me = Arc::clone(&spool);
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let mut chunk = Vec::new();
                loop {
                    {
                        let mut p = lock(&me.state);
                        p.writing = None;
                        while p.buf.is_empty() {
                            me.drained.notify_all();
                            if p.closed {
                                return;
                            }
                            p.idle = true;
                            p = me.wake.wait(p).unwrap_or_else(PoisonError::into_inner);
                        }
                        p.idle = false;
                        p.writing = Some(p.queued);
                        p.queued = 0;
                        chunk.clear();
                        std::mem::swap(&mut p.buf, &mut chunk);
                    }
                    if sink.write_all(&chunk).and_then(|()| sink.flush()).is_err() {
                        let mut p = lock(&me.state);
                        let lost = p.writing.take().unwrap_or(0).saturating_add(p.queued);
                        p.dropped_pushes = p.dropped_pushes.saturating_add(lost);
                        p.queued = 0;
                        p.buf = Vec::new();
                        p.broken = true;
                        me.drained.notify_all();
                        return;
                    }
                }
            })?;
        Ok(spool)
    }

    /// Queues `data` for the writer thread (waking it if idle) without blocking on the sink.
    /// With `whole`, `data` is queued entirely or not at all (a log line); otherwise as much
    /// as fits. Returns whether all of `data` was queued.
    pub fn push(&self, data: &[u8], whole: bool) -> bool {
        let mut p = lock(&self.state);
        if p.broken || p.closed {
            p.dropped_pushes = p.dropped_pushes.saturating_add(1);
            return false;
        }
        let room = self.cap.saturating_sub(p.buf.len());
        let n = match (whole, data.len() <= room) {
            (_, true) => data.len(),
            (true, false) => 0,
            (false, false) => room,
        };
        p.buf.extend_from_slice(data.get(..n).unwrap_or(&[]));
        let lost = data.len() - n;
        if lost > 0 {
            p.dropped_bytes = p.dropped_bytes.saturating_add(lost as u64);
            p.dropped_pushes = p.dropped_pushes.saturating_add(1);
        }
        if n > 0 {
            p.queued = p.queued.saturating_add(1);
            if p.idle {
                p.idle = false;
                self.wake.notify_one();
            }
        }
        lost == 0
    }

    /// Waits up to `timeout` for everything queued to be written; returns what was lost so
    /// far and what is still unwritten.
    pub fn finish(&self, timeout: Duration) -> SpoolLoss {
        let deadline = Instant::now() + timeout;
        let mut p = lock(&self.state);
        while !p.broken && (!p.buf.is_empty() || p.writing.is_some()) {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                break;
            };
            p = self
                .drained
                .wait_timeout(p, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        SpoolLoss {
            dropped_bytes: p.dropped_bytes,
            dropped_pushes: p.dropped_pushes,
            unwritten_pushes: p.queued.saturating_add(p.writing.unwrap_or(0)),
        }
    }

    /// No more pushes: the writer thread writes what is queued, then ends.
    pub fn close(&self) {
        lock(&self.state).closed = true;
        self.wake.notify_all();
    }

    /// Whether the writer thread is inside a write (tests).
    #[cfg(test)]
    pub(crate) fn writing(&self) -> bool {
        lock(&self.state).writing.is_some()
    }
}
