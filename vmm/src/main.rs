//! `relaunch` command-line entry point: dispatches to the subcommands in `relaunch::cli`.

use std::process::ExitCode;

fn main() -> ExitCode {
    // `env::args()` panics on an argument that is not UTF-8; take the raw arguments and
    // refuse such an argument with a one-line usage error instead.
    let mut args = Vec::new();
    for (i, a) in std::env::args_os().enumerate().skip(1) {
        match a.into_string() {
            Ok(s) => args.push(s),
            Err(raw) => {
                relaunch::elog!(
                    "relaunch: argument {i} ({:?}) is not valid UTF-8",
                    raw.to_string_lossy()
                );
                return ExitCode::from(relaunch::cli::EXIT_USAGE);
            }
        }
    }
    ExitCode::from(relaunch::cli::main(&args))
}
