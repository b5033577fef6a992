//! `relaunch pack`: makes an IGVM bundle from what users have, and prints the launch
//! measurement each platform view of it predicts.
//!
//! ```text
//! relaunch pack -o OUT.igvm (--elf FILE | --kernel BZIMAGE [--initrd FILE] [--append TEXT]
//!                                         [--c-bit N]
//!                             | --firmware OVMF.fd [--kernel K [--initrd F] [--append T]])
//!                            [--platform LIST]
//! ```
//!
//! The flags are in [`FLAGS`] (also what `--help` prints). The packers are
//! [`crate::pack::elf`], [`crate::pack::linux`] and [`crate::pack::firmware`]; the predictions are
//! [`crate::pack::predict`], `relaunch measure`'s code, so `relaunch measure OUT.igvm
//! --platform P` with the same `--vcpus`/`--vcpu-type` prints the same digest.

use std::ffi::OsString;
use std::path::PathBuf;

use relaunch_core::measure::Measurement;
use relaunch_core::plan::{LaunchConfig, Platform};
use serde::Serialize;

use super::launch_flags::{self, LaunchFlags};
use super::measure::{one_line, DEFAULT_MEM};
use crate::args::{wants_help, ArgError, CommandHelp, Cursor, Flag, Item, HELP_FLAG};
use crate::json;
use crate::pack::firmware::{self, FirmwareOptions};
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
        long: "firmware",
        short: None,
        value: Some("OVMF"),
        help: "Pack an OVMF/TDVF flash image (the job of igvm-wrap): views snp (when it has \
               SEV metadata), tdx (TDVF metadata) and native; with --kernel/--initrd/--append, \
               the SNP view carries their SEV kernel-hashes table (docs/measurement.md, \
               \"OVMF packed as IGVM\"). Default: none.",
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
               (docs/linux-guests.md): views native and snp (direct boot without firmware: \
               CC blob, CPUID and secrets pages, C-bit page tables, all RAM pre-validated). \
               Default: none; give --elf or --kernel.",
    },
    Flag {
        long: "platform",
        short: None,
        value: Some("LIST"),
        help: "With --kernel or --firmware: the views to write, comma-separated (--kernel: \
               native, snp; --firmware: snp, tdx, native). Default: every view the input \
               supports.",
    },
    Flag {
        long: "c-bit",
        short: None,
        value: Some("N"),
        help: "With --kernel: the C-bit position of the SNP view's page tables and CR3, as \
               CPUID Fn8000_001F EBX[5:0] of the host that runs it reports. Default: 51 \
               (EPYC Milan and Genoa).",
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
        help: "vCPUs the predicted measurements are for, 1 to 255; with --kernel also the \
               vCPUs its ACPI MADT lists (run it with the same --vcpus). Default: 1, as run.",
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
            [--append TEXT] | --firmware OVMF [--kernel ...]) [--platform LIST] [options]",
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
        "relaunch pack -o linux-snp.igvm --kernel vmlinuz --platform snp --c-bit 51",
        "relaunch pack -o ovmf.igvm --firmware OVMF.fd --vcpus 4 --vcpu-type EPYC-v4",
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
    /// `--firmware OVMF [--kernel K [--initrd F] [--append T]]`.
    Firmware {
        /// The flash image.
        path: PathBuf,
        /// `--kernel`, `--initrd`, `--append`: the kernel-hashes table.
        kernel: Option<(PathBuf, Option<PathBuf>, Option<String>)>,
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
    /// `--platform`: the views to write (empty = every view the input supports).
    pub views: Vec<Platform>,
    /// `--c-bit` (`--kernel`'s SNP view).
    pub c_bit: u8,
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
    let mut firmware = None;
    let (mut host_window, mut json, mut mem, mut vcpus) = (false, false, DEFAULT_MEM, 1);
    let mut launch = LaunchFlags::default();
    let (mut views, mut c_bit) = (Vec::new(), None);
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
            "firmware" => firmware = Some(it.path(f)?),
            "host-window" => host_window = true,
            "kernel" => kernel = Some(it.path(f)?),
            "initrd" => initrd = Some(it.path(f)?),
            "append" => append = Some(it.string(f)?),
            "mem" => mem = it.mem(f)?,
            "vcpus" => vcpus = it.vcpus(f)?,
            "json" => json = true,
            "platform" => {
                views = it.parsed(f, "a comma-separated list such as native,snp", |v| {
                    v.split(',').map(Platform::from_name).collect()
                })?
            }
            "c-bit" => {
                c_bit = Some(it.parsed(f, "a bit position from 32 to 51", |v| {
                    v.parse::<u8>().ok().filter(|b| (32..=51).contains(b))
                })?)
            }
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
    if c_bit.is_some() && (kernel.is_none() || firmware.is_some()) {
        return Err(ArgError::Other(
            "--c-bit goes with --kernel (its SNP view)".into(),
        ));
    }
    if !views.is_empty() && elf.is_some() {
        return Err(ArgError::Other(
            "--platform goes with --kernel or --firmware (--elf writes its fixed views)".into(),
        ));
    }
    let c_bit = c_bit.unwrap_or(linux::DEFAULT_C_BIT);
    if let Some(path) = firmware {
        if elf.is_some() || host_window {
            return Err(ArgError::Other(
                "give one of --elf and --firmware, not both".into(),
            ));
        }
        if kernel.is_none() && (initrd.is_some() || append.is_some()) {
            return Err(ArgError::Other(
                "--initrd and --append need --kernel".into(),
            ));
        }
        return Ok(PackArgs {
            output,
            input: Input::Firmware {
                path,
                kernel: kernel.map(|k| (k, initrd, append)),
            },
            mem,
            vcpus,
            launch,
            json,
            views,
            c_bit,
        });
    }
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
                "nothing to pack: give --elf FILE, --kernel BZIMAGE or --firmware OVMF".into(),
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
        views,
        c_bit,
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

/// What a pack wrote: the IGVM bytes, and for `--firmware` each view's classic digest with
/// the number of ZERO pages that became NORMAL zeros.
pub struct Packed {
    /// The IGVM file.
    pub bytes: Vec<u8>,
    /// `--firmware`: (view, classic measurement, ZERO pages written as NORMAL).
    pub classic: Vec<(relaunch_core::plan::Platform, Measurement, u64)>,
}

/// The vCPU signature `pack` uses when `--vcpu-type`/`--vcpu-sig` gives none: for
/// `--firmware`, whose SNP VMSAs carry it, EPYC-v4 as sev-snp-measure
/// ([`firmware::DEFAULT_VCPU_SIG`]); 0 for the other inputs (their VP contexts are in the
/// file).
pub fn default_vcpu_sig(a: &PackArgs) -> u32 {
    match a.input {
        Input::Firmware { .. } => firmware::DEFAULT_VCPU_SIG,
        _ => 0,
    }
}

/// The IGVM bytes for `a.input`, packed with `a.mem` bytes of RAM in mind.
///
/// # Errors
/// One line: an unreadable input or what the packer refused.
pub fn pack_input(a: &PackArgs) -> Result<Packed, String> {
    let read = |p: &std::path::Path, what: &str| read(p, what).map_err(|e| e.1);
    let plain = |bytes| Packed {
        bytes,
        classic: Vec::new(),
    };
    let mem = a.mem;
    match &a.input {
        Input::Firmware { path, kernel } => {
            let image = read(path, "--firmware")?;
            let kernel_hashes = kernel
                .as_ref()
                .map(|(k, initrd, append)| {
                    crate::cli::measure::kernel_hashes(k, initrd.as_deref(), append.as_deref())
                        .map_err(|e| e.to_string())
                })
                .transpose()?;
            let opts = FirmwareOptions {
                vcpus: a.vcpus,
                mem_bytes: mem,
                vcpu_sig: a.launch.vcpu_sig.unwrap_or(default_vcpu_sig(a)),
                kernel_hashes,
                views: a.views.clone(),
                ..FirmwareOptions::default()
            };
            let packed = firmware::pack_firmware(&image, &opts)
                .map_err(|e| format!("{}: {e}", path.to_string_lossy()))?;
            Ok(Packed {
                bytes: packed.igvm,
                classic: packed
                    .views
                    .iter()
                    .map(|v| (v.platform, v.classic, v.zero_pages))
                    .collect(),
            })
        }
        Input::Elf { path, host_window } => {
            let bytes = read(path, "--elf")?;
            let opts = elf::PackOptions {
                host_window: host_window.then_some(elf::HOST_WINDOW),
            };
            elf::pack(&bytes, opts)
                .map(plain)
                .map_err(|e| format!("{}: {e}", path.to_string_lossy()))
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
                vcpus: a.vcpus,
            };
            let opts = linux::LinuxOptions {
                views: a.views.clone(),
                c_bit: a.c_bit,
            };
            linux::pack_with(&inputs, &opts)
                .map(|b| plain(b.bytes))
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
    /// `--firmware`: what the classic launch of the image measures.
    #[serde(skip_serializing_if = "Option::is_none")]
    classic_digest: Option<String>,
    /// `--firmware`: classic SNP ZERO pages written as NORMAL pages of zeros.
    #[serde(skip_serializing_if = "Option::is_none")]
    zero_pages_as_normal: Option<u64>,
}

#[derive(Serialize)]
struct Report {
    file: String,
    size: u64,
    #[serde(serialize_with = "json::hex_bytes")]
    sha256: [u8; 32],
    vcpus: u32,
    mem: u64,
    /// `--kernel` with an SNP view: the C-bit position of its page tables and CR3.
    #[serde(skip_serializing_if = "Option::is_none")]
    c_bit: Option<u8>,
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
    let packed = pack_input(&a).map_err(|e| (super::EXIT_USAGE, e))?;
    let base: LaunchConfig = a.launch.config(
        relaunch_core::plan::Platform::Native,
        a.vcpus,
        a.mem,
        default_vcpu_sig(&a),
    );
    let views =
        pack::predict(&packed.bytes, &base, 0).map_err(|e| (1, format!("packed file: {e}")))?;
    std::fs::write(&a.output, &packed.bytes)
        .map_err(|e| (1, format!("{}: {e}", a.output.to_string_lossy())))?;
    Ok(if a.json {
        report_json(&a, &packed, &views)
    } else {
        report_text(&a, &packed, &views)
    })
}

/// `--firmware`: the classic digest and ZERO-page count of `platform`'s view, when it is
/// measured.
fn classic_of(
    packed: &Packed,
    platform: relaunch_core::plan::Platform,
) -> Option<(Measurement, u64)> {
    packed
        .classic
        .iter()
        .find(|c| c.0 == platform && !matches!(c.1, Measurement::None))
        .map(|c| (c.1, c.2))
}

fn report_text(a: &PackArgs, packed: &Packed, views: &[ViewMeasurement]) -> String {
    let bytes = &packed.bytes;
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
        if let Some((classic, zeros)) = classic_of(packed, v.platform) {
            let _ = writeln!(
                s,
                "{:<7} classic launch of the image: {classic} ({zeros} ZERO pages packed as \
                 NORMAL zeros)",
                ""
            );
        }
    }
    s
}

fn report_json(a: &PackArgs, packed: &Packed, views: &[ViewMeasurement]) -> String {
    let bytes = &packed.bytes;
    use sha2::{Digest, Sha256};
    let views: Vec<ViewJson> = views
        .iter()
        .map(|v| {
            let (digest, error, alg) = match &v.measurement {
                Ok(Measurement::None) => (None, None, None),
                Ok(m) => (Some(m.to_string()), None, algorithm(m)),
                Err(e) => (None, Some(e.clone()), None),
            };
            let classic = classic_of(packed, v.platform);
            ViewJson {
                platform: v.platform.name(),
                measured: digest.is_some(),
                algorithm: alg,
                digest,
                error,
                classic_digest: classic.map(|c| c.0.to_string()),
                zero_pages_as_normal: classic.map(|c| c.1),
            }
        })
        .collect();
    let mut line = json::to_line(&Report {
        file: a.output.to_string_lossy().into_owned(),
        size: bytes.len() as u64,
        sha256: Sha256::digest(bytes.as_slice()).into(),
        vcpus: a.vcpus,
        mem: a.mem,
        c_bit: (matches!(a.input, Input::Kernel { .. })
            && views.iter().any(|v| v.platform == "snp"))
        .then_some(a.c_bit),
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
        assert_eq!((a.views.clone(), a.c_bit), (vec![], linux::DEFAULT_C_BIT));
        let a = p(&[
            "-o",
            "x",
            "--kernel",
            "k",
            "--platform",
            "snp,native",
            "--c-bit",
            "47",
        ])
        .unwrap();
        assert_eq!(
            (a.views, a.c_bit),
            (vec![Platform::Snp, Platform::Native], 47)
        );
        let a = p(&[
            "-o",
            "x",
            "--firmware",
            "f",
            "--kernel",
            "k",
            "--append",
            "c",
        ])
        .unwrap();
        assert_eq!(
            a.input,
            Input::Firmware {
                path: "f".into(),
                kernel: Some(("k".into(), None, Some("c".into())))
            }
        );
        assert_eq!(
            default_vcpu_sig(&a),
            0x0080_0F12,
            "EPYC-v4 by default for firmware VMSAs"
        );
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
                &["-o", "x", "--firmware", "f", "--append", "a"][..],
                "need --kernel",
            ),
            (
                &["-o", "x", "--firmware", "f", "--elf", "e"][..],
                "not both",
            ),
            (
                &["-o", "x", "--elf", "e", "extra"][..],
                "unexpected argument",
            ),
            (
                &["-o", "x", "--elf", "e", "--mem", "12"][..],
                "multiple of 4 KiB",
            ),
            (
                &["-o", "x", "--elf", "e", "--platform", "snp"][..],
                "--platform goes with --kernel or --firmware",
            ),
            (
                &["-o", "x", "--kernel", "k", "--platform", "snp,bogus"][..],
                "comma-separated list",
            ),
            (
                &["-o", "x", "--elf", "e", "--c-bit", "47"][..],
                "--c-bit goes with --kernel",
            ),
            (
                &[
                    "-o",
                    "x",
                    "--firmware",
                    "f",
                    "--kernel",
                    "k",
                    "--c-bit",
                    "47",
                ][..],
                "--c-bit goes with --kernel",
            ),
            (
                &["-o", "x", "--kernel", "k", "--c-bit", "52"][..],
                "from 32 to 51",
            ),
        ] {
            let e = p(line).unwrap_err().to_string();
            assert!(e.contains(want), "{line:?}: {e}");
        }
    }
}
