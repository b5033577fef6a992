//! The session console: where guest serial output goes and where guest input comes from.
//! It outlives launches (a relaunched guest keeps printing to the same terminal).
//!
//! Bounded everywhere: input is a queue of at most `INPUT_CAP` bytes (the stdin reader waits
//! while it is full), captured output keeps at most its capacity.

use std::collections::VecDeque;
use std::io::{IsTerminal, Read, Write};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// Bytes of guest input buffered at most.
pub const INPUT_CAP: usize = 4096;

#[derive(Debug)]
enum Out {
    Stdout,
    Discard,
    Capture { buf: Mutex<Vec<u8>>, cap: usize },
}

/// Session console.
#[derive(Debug)]
pub struct Console {
    out: Out,
    input: Mutex<VecDeque<u8>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Console {
    fn with(out: Out) -> Console {
        Console {
            out,
            input: Mutex::new(VecDeque::new()),
        }
    }

    /// Guest output to the process's stdout.
    pub fn stdout() -> Console {
        Console::with(Out::Stdout)
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
            Out::Stdout => {
                // Written through at once: a prompt without a newline must show while the
                // guest waits for input, and `stdout` is line-buffered. One `write(2)` per
                // UART exit (several bytes for `rep outsb`) costs less than the exit itself.
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

    /// Flushes buffered output (guest output is written through already; this flushes
    /// anything else the process printed to stdout).
    pub fn flush(&self) {
        if let Out::Stdout = self.out {
            let _ = std::io::stdout().lock().flush();
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
    pub fn push_input(&self, data: &[u8]) -> usize {
        let mut q = lock(&self.input);
        let n = INPUT_CAP.saturating_sub(q.len()).min(data.len());
        q.extend(data.iter().take(n));
        n
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
