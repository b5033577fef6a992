//! `relaunch` command-line entry point: dispatches to the subcommands in `relaunch::cli`.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    ExitCode::from(relaunch::cli::main(&args))
}
