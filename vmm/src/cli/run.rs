//! `relaunch run`.

/// Runs `relaunch run` with `args`; returns the exit code.
pub fn main(_args: &[String]) -> u8 {
    eprintln!("relaunch run: not built yet");
    super::EXIT_USAGE
}
