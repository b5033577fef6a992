//! `relaunch` command-line entry point: dispatches to the subcommands in `relaunch::cli`.
//! Arguments go in as `OsString`s: a path need not be UTF-8 (the parser refuses non-UTF-8
//! only where a value is text).

use std::process::ExitCode;

fn main() -> ExitCode {
    ExitCode::from(relaunch::cli::main(std::env::args_os().skip(1)))
}
