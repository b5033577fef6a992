//! `relaunch measure`.

/// Runs `relaunch measure` with `args`; returns the exit code.
pub fn main(_args: &[String]) -> u8 {
    eprintln!("relaunch measure: not built yet");
    super::EXIT_USAGE
}
