//! The `relaunch` command line. Each subcommand lives in its own module and returns the
//! process exit code; malformed flags or inputs are a one-line error and exit code 2.
//!
//! Every subcommand declares its flags once, in a [`crate::args::Flag`] table: the parser
//! accepts exactly those flags and `relaunch <cmd> --help` lists them.

use std::ffi::OsString;

pub mod inspect;
pub mod launch_flags;
pub mod measure;
pub mod pack;
pub mod run;
pub mod trace;

/// Exit code for bad flags or bad input (nothing was started).
pub const EXIT_USAGE: u8 = 2;

/// The relaunch version (`relaunch --version`, the audit `launch` record).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

const HELP: &str = "\
usage: relaunch <command> [options]
       relaunch help [<command>] | relaunch --help | relaunch --version

relaunch launches a bundle (an IGVM file) on Linux KVM and relaunches it on a fresh VM on
every guest reset, and computes and explains confidential-launch measurements offline.

Commands:
  run       Launch a bundle on KVM; relaunch it on every guest reset (exit code = outcome).
  measure   Print the launch measurement (SNP/SEV/SEV-ES digest, TDX MRTD) of a bundle.
  inspect   Describe a bundle and the launch plan of each platform it supports.
  pack      Make a bundle from a bare-metal ELF, a Linux kernel or OVMF; print its digests.
  trace     Print the kernel calls a confidential launch makes, against a kernel model.
  help      Print this help, or a command's help (relaunch help run).

Options:
  -h, --help     Print this help and exit 0.
  -V, --version  Print \"relaunch <version>\" and exit 0.

Exit codes: 0 powered off / success, 1 VMM error, 2 bad flags or bad input (nothing was
started), 3 guest fatal (run), 4 reboot limit reached (run); docs/reboot-contract.md.

Examples:
  relaunch run boot-images/prebuilt/hello.igvm
  relaunch measure guest.igvm --platform snp --vcpu-type EPYC-v4
  relaunch inspect guest.igvm --platform snp --json
  relaunch pack -o linux.igvm --kernel vmlinuz --initrd initrd.img --append console=ttyS0
";

fn usage_line() -> &'static str {
    "usage: relaunch <inspect|measure|pack|run|trace> ...  (relaunch --help)"
}

/// The help text of a command, if `name` is one.
pub fn command_help(name: &str) -> Option<String> {
    match name {
        "run" => Some(run::HELP.render()),
        "measure" => Some(measure::HELP.render()),
        "inspect" => Some(inspect::HELP.render()),
        "trace" => Some(trace::HELP.render()),
        "pack" => Some(pack::HELP.render()),
        _ => None,
    }
}

/// Runs the command line `args` (without the program name) and returns the exit code.
/// Arguments are taken as `OsString`s: paths need not be UTF-8.
pub fn main<I>(args: I) -> u8
where
    I: IntoIterator,
    I::Item: Into<OsString>,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let Some((cmd, rest)) = args.split_first() else {
        crate::elog!("{}", usage_line());
        return EXIT_USAGE;
    };
    let Some(name) = cmd.to_str() else {
        crate::elog!(
            "relaunch: unknown command {:?} (not valid UTF-8); {}",
            cmd.to_string_lossy(),
            usage_line()
        );
        return EXIT_USAGE;
    };
    match name {
        "inspect" => inspect::main(rest),
        "trace" => trace::main(rest),
        "measure" => measure::main(rest),
        "pack" => pack::main(rest),
        "run" => run::main(rest),
        "-V" | "--version" => {
            crate::log::print_output("version", format!("relaunch {VERSION}\n").as_bytes())
        }
        "-h" | "--help" => crate::log::print_output("help", HELP.as_bytes()),
        "help" => match rest {
            [] => crate::log::print_output("help", HELP.as_bytes()),
            [topic] => match topic.to_str().and_then(command_help) {
                Some(h) => crate::log::print_output("help", h.as_bytes()),
                None => {
                    crate::elog!(
                        "relaunch help: unknown command {:?}; {}",
                        topic.to_string_lossy(),
                        usage_line()
                    );
                    EXIT_USAGE
                }
            },
            _ => {
                crate::elog!("relaunch help: give at most one command; {}", usage_line());
                EXIT_USAGE
            }
        },
        other => {
            crate::elog!("relaunch: unknown command {other:?}; {}", usage_line());
            EXIT_USAGE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::{ArgError, Flag};

    /// A command's parser: the error, if any, of one command line.
    type Parse = fn(&[OsString]) -> Option<ArgError>;

    /// Each command's flag table with its parser.
    fn commands() -> Vec<(&'static str, &'static [Flag], Parse)> {
        vec![
            ("run", run::FLAGS, |a| run::parse(a).err()),
            ("measure", measure::FLAGS, |a| {
                match measure::parse_args(a) {
                    Err(measure::MeasureCmdError::Args(e)) => Some(e),
                    _ => None,
                }
            }),
            ("inspect", inspect::FLAGS, |a| inspect::parse_args(a).err()),
            ("pack", pack::FLAGS, |a| pack::parse(a).err()),
        ]
    }

    #[test]
    fn every_flag_is_parsed_and_documented() {
        for (cmd, flags, parse) in commands() {
            let help = command_help(cmd).unwrap();
            for f in flags {
                // Documented: named in the help, with a sentence that gives its default.
                assert!(help.contains(&f.name()), "{cmd} --help lacks {}", f.name());
                assert!(
                    f.help.contains("Default") || f.help.contains("Required") || f.long == "help",
                    "{cmd} {}: no default in {:?}",
                    f.name(),
                    f.help
                );
                // Parsed: the parser knows it (a bad value may be refused, never the flag).
                let line = [OsString::from("b"), f.name().into(), OsString::from("1")];
                match parse(&line) {
                    Some(ArgError::UnknownFlag(_) | ArgError::Unhandled(_)) => {
                        panic!("{cmd} does not parse {}", f.name())
                    }
                    Some(ArgError::Help) => assert_eq!(f.long, "help"),
                    _ => {}
                }
            }
        }
    }

    #[test]
    fn limits_have_one_message() {
        for (cmd, _, parse) in commands() {
            for (flag, value, want) in [
                (
                    "--vcpus",
                    "0",
                    "--vcpus: 0 vCPUs: a launch has 1 to 255 vCPUs",
                ),
                (
                    "--vcpus",
                    "256",
                    "--vcpus: 256 vCPUs: a launch has 1 to 255 vCPUs",
                ),
                (
                    "--mem",
                    "12",
                    "--mem: 12 bytes of guest RAM: a launch has a multiple of 4 KiB from 4 KiB \
                     to 1 TiB",
                ),
                (
                    "--mem",
                    "2T",
                    "--mem: 2199023255552 bytes of guest RAM: a launch has a multiple of 4 KiB \
                     from 4 KiB to 1 TiB",
                ),
            ] {
                let line = [OsString::from("b"), flag.into(), value.into()];
                let e = parse(&line).unwrap_or_else(|| panic!("{cmd} {flag} {value}"));
                assert_eq!(e.to_string(), want, "{cmd}");
            }
        }
    }

    #[test]
    fn version_and_help() {
        assert!(!VERSION.is_empty());
        assert_eq!(main(["--version"]), 0);
        assert_eq!(main(["-V"]), 0);
        assert_eq!(main(["help", "run"]), 0);
        assert_eq!(main(["help", "frob"]), EXIT_USAGE);
        assert_eq!(main(Vec::<OsString>::new()), EXIT_USAGE);
    }
}
