//! The session console: where guest serial output goes and where guest input comes from.
//! It outlives launches (a relaunched guest keeps printing to the same terminal).
//!
//! Bounded everywhere: input is a queue of at most `INPUT_CAP` bytes (the stdin reader waits
//! while it is full), captured output keeps at most its capacity.
//!
//! Guest output never blocks a vCPU: it is called with the devices mutex held, so a `write(2)`
//! to an undrained pipe would stall every vCPU and with them reset and power-off. Output goes
//! into a buffer of at most [`OUTPUT_CAP`] bytes that a writer thread drains to stdout; bytes
//! that do not fit are dropped and counted ([`Console::finish`] reports them).

use std::collections::VecDeque;
use std::io::{IsTerminal, Read, Write};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::log::Spool;

/// Bytes of guest input buffered at most.
pub const INPUT_CAP: usize = 4096;
/// Bytes of guest output buffered at most while the writer thread is blocked.
pub const OUTPUT_CAP: usize = 64 << 10;

#[derive(Debug)]
enum Out {
    /// Through the writer thread.
    Stream(Arc<Spool>),
    /// Written directly (only if the writer thread could not be started).
    Stdout,
    Discard,
    Capture {
        buf: Mutex<Vec<u8>>,
        cap: usize,
    },
}

/// Called after input was queued (outside every console lock).
pub type InputWaker = Box<dyn Fn() + Send + Sync>;

/// Session console.
pub struct Console {
    out: Out,
    input: Mutex<VecDeque<u8>>,
    /// The running launch's UART interrupt update ([`Console::set_input_waker`]).
    waker: Mutex<Option<InputWaker>>,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console")
            .field("out", &self.out)
            .field("input", &self.input)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Console {
    fn with(out: Out) -> Console {
        Console {
            out,
            input: Mutex::new(VecDeque::new()),
            waker: Mutex::new(None),
        }
    }

    /// Guest output to the process's stdout, through a writer thread (module doc).
    pub fn stdout() -> Console {
        match Spool::spawn("console-out", Box::new(std::io::stdout()), OUTPUT_CAP) {
            Ok(w) => Console::with(Out::Stream(w)),
            Err(e) => {
                crate::elog!("relaunch: no console writer thread ({e}); writing output directly");
                Console::with(Out::Stdout)
            }
        }
    }

    /// Guest output to `sink` through a writer thread, at most `cap` bytes buffered (tests).
    ///
    /// # Errors
    /// The thread could not be started.
    pub fn to_writer(sink: Box<dyn Write + Send>, cap: usize) -> std::io::Result<Console> {
        Ok(Console::with(Out::Stream(Spool::spawn(
            "console-out",
            sink,
            cap,
        )?)))
    }

    /// Guest output dropped (`--quiet`).
    pub fn discard() -> Console {
        Console::with(Out::Discard)
    }

    /// Guest output kept in memory, at most `cap` bytes (tests).
    pub fn capture(cap: usize) -> Console {
        Console::with(Out::Capture {
            buf: Mutex::new(Vec::new()),
            cap,
        })
    }

    /// Guest wrote `data` to the UART.
    pub fn output(&self, data: &[u8]) {
        match &self.out {
            // Handed to the writer thread at once (woken if idle): a prompt without a newline
            // must show while the guest waits for input. Never blocks (module doc).
            Out::Stream(w) => {
                let _ = w.push(data, false);
            }
            Out::Stdout => {
                // Errors (closed stdout) are ignored: the guest must not be able to stop the
                // VMM by printing.
                let mut o = std::io::stdout().lock();
                let _ = o.write_all(data);
                let _ = o.flush();
            }
            Out::Discard => {}
            Out::Capture { buf, cap } => {
                let mut b = lock(buf);
                let room = cap.saturating_sub(b.len());
                b.extend_from_slice(data.get(..room.min(data.len())).unwrap_or(&[]));
            }
        }
    }

    /// Waits up to `timeout` for buffered output to be written (call before the process
    /// exits); returns how many bytes of guest output were dropped because the buffer was
    /// full.
    pub fn finish(&self, timeout: Duration) -> u64 {
        match &self.out {
            Out::Stream(w) => w.finish(timeout).dropped_bytes,
            Out::Stdout => {
                let _ = std::io::stdout().lock().flush();
                0
            }
            Out::Discard | Out::Capture { .. } => 0,
        }
    }

    /// Captured output so far (empty unless built with [`Console::capture`]).
    pub fn captured(&self) -> Vec<u8> {
        match &self.out {
            Out::Capture { buf, .. } => lock(buf).clone(),
            _ => Vec::new(),
        }
    }

    /// Whether a byte of input is waiting.
    pub fn input_ready(&self) -> bool {
        !lock(&self.input).is_empty()
    }

    /// Takes one byte of input.
    pub fn input_byte(&self) -> Option<u8> {
        lock(&self.input).pop_front()
    }

    /// Queues input; returns how many bytes fitted (at most [`INPUT_CAP`] are buffered).
    /// Then calls the input waker, if any, with no console lock held but the waker's own.
    pub fn push_input(&self, data: &[u8]) -> usize {
        let mut q = lock(&self.input);
        let n = INPUT_CAP.saturating_sub(q.len()).min(data.len());
        q.extend(data.iter().take(n));
        drop(q);
        if n > 0 {
            if let Some(w) = lock(&self.waker).as_ref() {
                w();
            }
        }
        n
    }

    /// Sets what [`Console::push_input`] calls after queuing input: the running launch's UART
    /// interrupt update (it takes the devices lock; the devices never take the waker's lock,
    /// so the order is waker → devices → input queue). `None` removes it.
    pub fn set_input_waker(&self, waker: Option<InputWaker>) {
        *lock(&self.waker) = waker;
    }

    /// Starts a thread feeding stdin into the guest, when stdin is a terminal or a pipe
    /// (never a regular file or `/dev/null`: those are not interactive). Returns whether it
    /// started. The thread ends at end of input; it is detached.
    pub fn spawn_stdin_reader(self: &Arc<Self>) -> bool {
        let stdin = std::io::stdin();
        let interactive = stdin.is_terminal() || stdin_is_fifo();
        if !interactive {
            return false;
        }
        let me = Arc::clone(self);
        std::thread::Builder::new()
            .name("stdin".into())
            .spawn(move || {
                let mut buf = [0u8; 256];
                let mut lock = std::io::stdin().lock();
                loop {
                    let n = match lock.read(&mut buf) {
                        Ok(0) => return,
                        Ok(n) => n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(_) => return,
                    };
                    let mut rest = buf.get(..n).unwrap_or(&[]);
                    while !rest.is_empty() {
                        let took = me.push_input(rest);
                        rest = rest.get(took..).unwrap_or(&[]);
                        if !rest.is_empty() {
                            std::thread::sleep(Duration::from_millis(10));
                        }
                    }
                }
            })
            .is_ok()
    }
}

fn stdin_is_fifo() -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata("/proc/self/fd/0")
        .map(|m| m.file_type().is_fifo())
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Condvar;
    use std::time::Instant;

    /// A sink that blocks every write until `gate` opens, recording what it got.
    struct Gated {
        gate: Arc<(Mutex<bool>, Condvar)>,
        got: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Gated {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            let (m, cv) = &*self.gate;
            let mut open = lock(m);
            while !*open {
                open = cv.wait(open).unwrap_or_else(PoisonError::into_inner);
            }
            lock(&self.got).extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn blocked_stdout_never_blocks_output() {
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let got = Arc::new(Mutex::new(Vec::new()));
        let sink = Gated {
            gate: Arc::clone(&gate),
            got: Arc::clone(&got),
        };
        let c = Console::to_writer(Box::new(sink), 16).unwrap();
        // The writer takes the first chunk and blocks in write; the buffer then fills and
        // the rest is dropped. None of this may block the caller.
        let t = Instant::now();
        c.output(b"first");
        let Out::Stream(w) = &c.out else {
            unreachable!()
        };
        while !w.writing() {
            std::thread::yield_now();
        }
        for _ in 0..1000 {
            c.output(b"0123456789");
        }
        assert!(t.elapsed() < Duration::from_secs(5));
        // Still blocked: finish times out and reports the drops.
        assert_eq!(c.finish(Duration::from_millis(20)), 1000 * 10 - 16);
        let (m, cv) = &*gate;
        *lock(m) = true;
        cv.notify_all();
        assert_eq!(c.finish(Duration::from_secs(10)), 1000 * 10 - 16);
        assert_eq!(*lock(&got), b"first0123456789012345");
        // Prompt: later output is written without a flush call.
        c.output(b"$ ");
        let t = Instant::now();
        while lock(&got).len() < 23 && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(lock(&got).ends_with(b"$ "));
    }

    #[test]
    fn capture_and_input_are_bounded() {
        let c = Console::capture(4);
        c.output(b"abc");
        c.output(b"def");
        assert_eq!(c.captured(), b"abcd");
        let big = vec![7u8; INPUT_CAP + 10];
        assert_eq!(c.push_input(&big), INPUT_CAP);
        assert_eq!(c.push_input(b"x"), 0);
        assert_eq!(c.input_byte(), Some(7));
        assert_eq!(c.push_input(b"xy"), 1);
    }
}
