//! Writes to stderr and stdout that never panic.
//!
//! Rust ignores `SIGPIPE`, so writing to a closed pipe fails with `EPIPE`; `eprintln!` and
//! `println!` turn that into a panic, and with `panic = "abort"` into exit 134. A guest can
//! make the VMM log (unknown port accesses), and `relaunch inspect | head -1` closes stdout
//! early: neither may kill the process. So every diagnostic goes through [`elog!`], which
//! ignores write errors, and command output goes through [`stdout_all`], which reports a
//! closed pipe as "the reader is done".
//!
//! [`elog!`]: crate::elog

use std::fmt;
use std::io::{self, Write};

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
