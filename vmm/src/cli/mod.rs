//! The `relaunch` command line. Each subcommand lives in its own module and returns the
//! process exit code; malformed flags or inputs are a one-line error and exit code 2.

pub mod inspect;
pub mod measure;
pub mod run;

/// Exit code for bad flags or bad input (nothing was started).
pub const EXIT_USAGE: u8 = 2;

const USAGE: &str = "usage: relaunch <inspect|measure|run> ...  (relaunch <command> --help)";

/// Runs the command line `args` (without the program name) and returns the exit code.
pub fn main(args: &[String]) -> u8 {
    let Some((cmd, rest)) = args.split_first() else {
        crate::elog!("{USAGE}");
        return EXIT_USAGE;
    };
    match cmd.as_str() {
        "inspect" => inspect::main(rest),
        "measure" => measure::main(rest),
        "run" => run::main(rest),
        "-h" | "--help" | "help" => {
            crate::log::print_output("help", format!("{USAGE}\n").as_bytes())
        }
        other => {
            crate::elog!("relaunch: unknown command {other:?}; {USAGE}");
            EXIT_USAGE
        }
    }
}
