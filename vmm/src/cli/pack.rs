//! `relaunch pack`: makes an IGVM bundle from what users have, and prints the launch
//! measurement each platform view of it predicts.
//!
//! ```text
//! relaunch pack -o OUT.igvm (--elf FILE | --kernel BZIMAGE [--initrd FILE] [--append TEXT])
//! ```
//!
//! The flags are in [`FLAGS`] (also what `--help` prints). The packers are
//! [`crate::pack::elf`] and [`crate::pack::linux`]; the predictions are
//! [`crate::pack::predict`], `relaunch measure`'s code, so `relaunch measure OUT.igvm
//! --platform P` with the same `--vcpus`/`--vcpu-type` prints the same digest.

use std::ffi::OsString;
use std::path::PathBuf;

use relaunch_core::measure::Measurement;
use relaunch_core::plan::LaunchConfig;
use serde::Serialize;

use super::launch_flags::{self, LaunchFlags};
use super::measure::{one_line, DEFAULT_MEM};
use crate::args::{wants_help, ArgError, CommandHelp, Cursor, Flag, Item, HELP_FLAG};
use crate::json;
use crate::pack::{self, elf, linux, ViewMeasurement};

/// `relaunch pack`'s flags.
pub const FLAGS: &[Flag] = &[
    Flag {
        long: "output",
        short: Some('o'),
        value: Some("OUT"),
        help: "Where to write the IGVM file (replaced if it exists). Required.",
    },
    Flag {
        long: "elf",
        short: None,
        value: Some("FILE"),
        help: "Pack a bare-metal x86-64 ELF linked against relaunch's guest layout \
               (docs/boot-images.md): views native, snp, sev, sev-es, and tdx when it has a \
               TDX reset page. Default: none; give --elf or --kernel.",
    },
    Flag {
        long: "host-window",
        short: None,
        value: None,
        help: "With --elf: declare the layout's host hand-over window (as the fuki image \
               has). Default: off.",
    },
    Flag {
        long: "kernel",
        short: None,
        value: Some("BZIMAGE"),
        help: "Pack a Linux bzImage for direct boot with the 64-bit boot protocol \
               (docs/linux-guests.md): view native. Default: none; give --elf or --kernel.",
    },
    Flag {
        long: "initrd",
        short: None,
        value: Some("FILE"),
        help: "Initrd for --kernel, placed above the kernel's init_size window below its \
               initrd_addr_max. Default: none.",
    },
    Flag {
        long: "append",
        short: None,
        value: Some("TEXT"),
        help: "Kernel command line for --kernel. Default: console=ttyS0.",
    },
    Flag {
        long: "mem",
        short: None,
        value: Some("SIZE"),
        help: "Guest RAM the kernel's E820 table describes (--kernel; run with at least as \
               much) and the views are planned for. Default: 256M.",
    },
    Flag {
        long: "vcpus",
        short: None,
        value: Some("N"),
        help: "vCPUs the predicted measurements are for, 1 to 255. Default: 1.",
    },
    launch_flags::VCPU_TYPE,
    launch_flags::VCPU_SIG,
    Flag {
        long: "json",
        short: None,
        value: None,
        help: "Print one JSON object (file, size, SHA-256, views with their digests) instead \
               of text. Default: off.",
    },
    HELP_FLAG,
];

/// `relaunch pack --help`.
pub const HELP: CommandHelp = CommandHelp {
    usage: "relaunch pack -o OUT.igvm (--elf FILE | --kernel BZIMAGE [--initrd FILE] \
            [--append TEXT]) [options]",
    about: "\
Makes an IGVM bundle and prints, for every platform view it wrote, the launch measurement
that view predicts (what relaunch measure prints for OUT with the same --vcpus and vCPU
type; native views have none). The bundle runs with relaunch run; relaunch inspect shows
its views.",
    flags: FLAGS,
    notes: "Exit codes: 0 written; 2 bad flags or an input that cannot be packed (nothing \
is written); 1 the output cannot be written.",
    examples: &[
        "relaunch pack -o hello.igvm --elf boot-images/prebuilt/hello.elf",
        "relaunch pack -o linux.igvm --kernel vmlinuz --initrd initrd.img --append \"console=ttyS0\"",
        "relaunch pack -o linux.igvm --kernel vmlinuz --mem 512M --json",
    ],
};

/// What to pack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// `--elf FILE [--host-window]`.
    Elf {
        /// The ELF.
        path: PathBuf,
        /// `--host-window`.
        host_window: bool,
    },
    /// `--kernel`.
    Kernel {
        /// The bzImage.
        path: PathBuf,
        /// `--initrd`.
        initrd: Option<PathBuf>,
        /// `--append`.
        append: String,
    },
}

/// A parsed `relaunch pack` command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackArgs {
    /// `-o`.
    pub output: PathBuf,
    /// What to pack.
    pub input: Input,
    /// `--mem`.
    pub mem: u64,
    /// `--vcpus`.
    pub vcpus: u32,
    /// `--vcpu-type` / `--vcpu-sig`.
    pub launch: LaunchFlags,
    /// `--json`.
    pub json: bool,
}

/// The default `--append`.
pub const DEFAULT_APPEND: &str = "console=ttyS0";

/// Parses a `relaunch pack` command line.
///
/// # Errors
/// [`ArgError`].
pub fn parse(args: &[OsString]) -> Result<PackArgs, ArgError> {
    let mut it = Cursor::new(args, FLAGS);
    let (mut output, mut elf, mut kernel, mut initrd, mut append) = (None, None, None, None, None);
    let (mut host_window, mut json, mut mem, mut vcpus) = (false, false, DEFAULT_MEM, 1);
    let mut launch = LaunchFlags::default();
    let mut stray = None;
    while let Some(item) = it.next()? {
        let f = match item {
            Item::Positional(p) => {
                // Reported after the flags, so a bad flag value is the error a user sees.
                stray.get_or_insert(p);
                continue;
            }
            Item::Flag(f) => f,
        };
        match f.long {
            "output" => output = Some(it.path(f)?),
            "elf" => elf = Some(it.path(f)?),
            "host-window" => host_window = true,
            "kernel" => kernel = Some(it.path(f)?),
            "initrd" => initrd = Some(it.path(f)?),
            "append" => append = Some(it.string(f)?),
            "mem" => mem = it.mem(f)?,
            "vcpus" => vcpus = it.vcpus(f)?,
            "json" => json = true,
            "vcpu-type" | "vcpu-sig" if launch.take(f, &mut it)? => {}
            other => return Err(ArgError::Unhandled(other)),
        }
    }
    if let Some(p) = stray {
        return Err(ArgError::Other(format!(
            "unexpected argument {:?} (pack takes -o OUT and --elf or --kernel)",
            p.to_string_lossy()
        )));
    }
    launch.check()?;
    let output = output.ok_or_else(|| ArgError::Other("-o OUT is required".into()))?;
    let input = match (elf, kernel) {
        (Some(path), None) => {
            if initrd.is_some() || append.is_some() {
                return Err(ArgError::Other(
                    "--initrd and --append go with --kernel, not --elf".into(),
                ));
            }
            Input::Elf { path, host_window }
        }
        (None, Some(path)) => {
            if host_window {
                return Err(ArgError::Other("--host-window goes with --elf".into()));
            }
            Input::Kernel {
                path,
                initrd,
                append: append.unwrap_or_else(|| DEFAULT_APPEND.to_string()),
            }
        }
        (Some(_), Some(_)) => {
            return Err(ArgError::Other(
                "give one of --elf and --kernel, not both".into(),
            ))
        }
        (None, None) => {
            if initrd.is_some() || append.is_some() {
                return Err(ArgError::Other(
                    "--initrd and --append need --kernel".into(),
                ));
            }
            return Err(ArgError::Other(
                "nothing to pack: give --elf FILE or --kernel BZIMAGE".into(),
            ));
        }
    };
    Ok(PackArgs {
        output,
        input,
        mem,
        vcpus,
        launch,
        json,
    })
}

/// Runs `relaunch pack` and returns the exit code.
pub fn main(args: &[OsString]) -> u8 {
    if wants_help(args) {
        return crate::log::print_output("pack", HELP.render().as_bytes());
    }
    match run(args) {
        Ok(out) => crate::log::print_output("pack", out.as_bytes()),
        Err((code, msg)) => {
            crate::elog!("relaunch pack: {}", one_line(&msg));
            code
        }
    }
}

fn read(path: &std::path::Path, what: &str) -> Result<Vec<u8>, (u8, String)> {
    std::fs::read(path).map_err(|e| {
        (
            super::EXIT_USAGE,
            format!("{what} {}: {e}", path.to_string_lossy()),
        )
    })
}

/// The IGVM bytes for `input`, packed with `mem` bytes of RAM in mind.
///
/// # Errors
/// One line: an unreadable input or what the packer refused.
pub fn pack_input(input: &Input, mem: u64) -> Result<Vec<u8>, String> {
    let read = |p: &std::path::Path, what: &str| read(p, what).map_err(|e| e.1);
    match input {
        Input::Elf { path, host_window } => {
            let bytes = read(path, "--elf")?;
            let opts = elf::PackOptions {
                host_window: host_window.then_some(elf::HOST_WINDOW),
            };
            elf::pack(&bytes, opts).map_err(|e| format!("{}: {e}", path.to_string_lossy()))
        }
        Input::Kernel {
            path,
            initrd,
            append,
        } => {
            let kernel = read(path, "--kernel")?;
            let initrd = match initrd {
                Some(p) => Some(read(p, "--initrd")?),
                None => None,
            };
            let inputs = linux::LinuxInputs {
                kernel: &kernel,
                initrd: initrd.as_deref(),
                cmdline: append,
                mem,
            };
            linux::pack(&inputs)
                .map(|b| b.bytes)
                .map_err(|e| format!("{}: {e}", path.to_string_lossy()))
        }
    }
}

#[derive(Serialize)]
struct ViewJson {
    platform: &'static str,
    measured: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    algorithm: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    digest: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(Serialize)]
struct Report {
    file: String,
    size: u64,
    #[serde(serialize_with = "json::hex_bytes")]
    sha256: [u8; 32],
    vcpus: u32,
    mem: u64,
    views: Vec<ViewJson>,
}

fn algorithm(m: &Measurement) -> Option<&'static str> {
    match m {
        Measurement::Sev(_) | Measurement::SevEs(_) => Some("sha256"),
        Measurement::Snp(_) | Measurement::Tdx(_) => Some("sha384"),
        Measurement::None => None,
    }
}

fn run(args: &[OsString]) -> Result<String, (u8, String)> {
    let a = parse(args).map_err(|e| (super::EXIT_USAGE, e.to_string()))?;
    let bytes = pack_input(&a.input, a.mem).map_err(|e| (super::EXIT_USAGE, e))?;
    let base: LaunchConfig =
        a.launch
            .config(relaunch_core::plan::Platform::Native, a.vcpus, a.mem, 0);
    let views = pack::predict(&bytes, &base, 0).map_err(|e| (1, format!("packed file: {e}")))?;
    std::fs::write(&a.output, &bytes)
        .map_err(|e| (1, format!("{}: {e}", a.output.to_string_lossy())))?;
    Ok(if a.json {
        report_json(&a, &bytes, &views)
    } else {
        report_text(&a, &bytes, &views)
    })
}

fn report_text(a: &PackArgs, bytes: &[u8], views: &[ViewMeasurement]) -> String {
    use std::fmt::Write as _;
    let names: Vec<&str> = views.iter().map(|v| v.platform.name()).collect();
    let mut s = format!(
        "wrote {} ({} bytes), views: {}\n",
        a.output.to_string_lossy(),
        bytes.len(),
        names.join(", ")
    );
    for v in views {
        let what = match &v.measurement {
            Ok(Measurement::None) => "(no launch measurement)".to_string(),
            Ok(m) => m.to_string(),
            Err(e) => format!("(not measured: {e})"),
        };
        let _ = writeln!(s, "{:<7} {what}", v.platform.name());
    }
    s
}

fn report_json(a: &PackArgs, bytes: &[u8], views: &[ViewMeasurement]) -> String {
    use sha2::{Digest, Sha256};
    let views = views
        .iter()
        .map(|v| {
            let (digest, error, alg) = match &v.measurement {
                Ok(Measurement::None) => (None, None, None),
                Ok(m) => (Some(m.to_string()), None, algorithm(m)),
                Err(e) => (None, Some(e.clone()), None),
            };
            ViewJson {
                platform: v.platform.name(),
                measured: digest.is_some(),
                algorithm: alg,
                digest,
                error,
            }
        })
        .collect();
    let mut line = json::to_line(&Report {
        file: a.output.to_string_lossy().into_owned(),
        size: bytes.len() as u64,
        sha256: Sha256::digest(bytes).into(),
        vcpus: a.vcpus,
        mem: a.mem,
        views,
    });
    line.push('\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(a: &[&str]) -> Result<PackArgs, ArgError> {
        let v: Vec<OsString> = a.iter().map(OsString::from).collect();
        parse(&v)
    }

    #[test]
    fn parses_both_inputs_and_refuses_mixtures() {
        let a = p(&["-o", "x.igvm", "--elf", "h.elf"]).unwrap();
        assert_eq!(
            a.input,
            Input::Elf {
                path: "h.elf".into(),
                host_window: false
            }
        );
        assert_eq!((a.mem, a.vcpus, a.json), (DEFAULT_MEM, 1, false));
        let a = p(&["--kernel", "k", "--initrd", "i", "-o", "x", "--mem", "1G"]).unwrap();
        assert_eq!(
            a.input,
            Input::Kernel {
                path: "k".into(),
                initrd: Some("i".into()),
                append: DEFAULT_APPEND.into()
            }
        );
        assert_eq!(a.mem, 1 << 30);
        for (line, want) in [
            (&["--elf", "e"][..], "-o OUT is required"),
            (&["-o", "x"][..], "nothing to pack"),
            (&["-o", "x", "--elf", "e", "--kernel", "k"][..], "not both"),
            (
                &["-o", "x", "--elf", "e", "--append", "a"][..],
                "go with --kernel",
            ),
            (
                &["-o", "x", "--kernel", "k", "--host-window"][..],
                "goes with --elf",
            ),
            (&["-o", "x", "--initrd", "i"][..], "need --kernel"),
            (
                &["-o", "x", "--elf", "e", "extra"][..],
                "unexpected argument",
            ),
            (
                &["-o", "x", "--elf", "e", "--mem", "12"][..],
                "multiple of 4 KiB",
            ),
        ] {
            let e = p(line).unwrap_err().to_string();
            assert!(e.contains(want), "{line:?}: {e}");
        }
    }
}
