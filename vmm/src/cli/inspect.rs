//! `relaunch inspect`.

/// Runs `relaunch inspect` with `args`; returns the exit code.
pub fn main(_args: &[String]) -> u8 {
    eprintln!("relaunch inspect: not built yet");
    super::EXIT_USAGE
}
