//! `relaunch trace`: the exact kernel calls the real backend issues to launch a bundle, run
//! against the kernel model (`crate::model`) instead of `/dev/kvm`, one JSON line per call,
//! then the model's measurement.
//!
//! ```text
//! relaunch trace FILE --platform <snp|sev|sev-es|tdx> [--vcpus N] [--mem SIZE]
//!                [run's launch flags] [--relaunch] [--next FILE2]
//! ```
//!
//! `--next FILE2` then launches FILE2 on a new VM as a hand-over does (`docs/fuki.md`:
//! planned for the same platform and launch config), after FILE's VM is dropped: the calls
//! the real backend makes to run a handed-over bundle; the measurement is then FILE2's.
//!
//! Lines, in order:
//! - one per door call: `{"fd":"kvm|vm|vcpuN","ioctl":"<uapi name>","args":{<uapi field
//!   names>},"result":"ok"|"<errno>[ firmware status]"}`; a VM fd being closed (relaunch
//!   teardown) is `"ioctl":"close"`; an `SNP_LAUNCH_UPDATE` of a CPUID page also shows the
//!   table it gives the firmware (`cpuid_count`, `cpuid_functions`: `leaf:subleaf` in hex);
//! - SNP, for every page the firmware adds to the launch digest, in its order:
//!   `{"measured":{"gpa":N,"page_type":T,"sha384":"<hex>"|null}}` (PAGE_INFO type; SHA-384
//!   where the firmware hashes the contents);
//! - SEV / SEV-ES, for every byte range the SHA-256 launch digest takes:
//!   `{"measured":{"gpa":N,"len":L,"bytes":"<hex>"}}`;
//! - TDX: `{"measured":{"gpa":N,"extended":bool}}` per page added;
//! - last: `{"measurement":"<hex>"}` of the last launch, which equals `relaunch measure`
//!   for the same bundle and flags (checked: exit 1 otherwise).

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;

use relaunch_core::plan::LaunchConfig;
use serde_json::{json, Map, Value};

use super::launch_flags::{self, LaunchFlags};
use crate::args::{
    one_positional, parse_u64, wants_help, ArgError, CommandHelp, Cursor, Flag, Item, HELP_FLAG,
};
use crate::launch::Launch;
use crate::model::{errno_name, Arg, Event, Measured, Model, ModelConfig};
use crate::sys::coco::FwStatus;
use crate::sys::kvm::Kvm;
use crate::vstate::Host;

/// `relaunch trace`'s flags.
pub const FLAGS: &[Flag] = &[
    Flag {
        long: "platform",
        short: None,
        value: Some("P"),
        help: "Platform to launch: snp, sev, sev-es or tdx. Required.",
    },
    Flag {
        long: "vcpus",
        short: None,
        value: Some("N"),
        help: "Number of vCPUs, 1 to 255. Default: 1.",
    },
    Flag {
        long: "mem",
        short: None,
        value: Some("SIZE"),
        help: "Guest RAM: a byte count or a size with K, M, G or T. Default: 256M.",
    },
    launch_flags::VCPU_TYPE,
    launch_flags::VCPU_SIG,
    launch_flags::GUEST_FEATURES,
    launch_flags::POLICY,
    launch_flags::HOST_DATA,
    launch_flags::KERNEL,
    launch_flags::INITRD,
    launch_flags::APPEND,
    launch_flags::ID_BLOCK,
    launch_flags::ID_AUTH,
    Flag {
        long: "model-max-pages",
        short: None,
        value: Some("N"),
        help: "The model does at most N pages per SNP_LAUNCH_UPDATE / TDX INIT_MEM_REGION \
               call (partial progress the backend must resume). Default: all.",
    },
    Flag {
        long: "model-eintr-every",
        short: None,
        value: Some("K"),
        help: "Every K-th SNP_LAUNCH_UPDATE / INIT_MEM_REGION call fails with EINTR before \
               doing anything. Default: never.",
    },
    Flag {
        long: "relaunch",
        short: None,
        value: None,
        help: "After the first launch, drop the VM (teardown) and launch again on a new VM.",
    },
    Flag {
        long: "next",
        short: None,
        value: Some("FILE2"),
        help: "Then drop the VM and launch FILE2 on a new one, as a hand-over (vm-launch-update, \
               switch-bundle, run --next) runs it; the last line is FILE2's measurement.",
    },
    HELP_FLAG,
];

/// `relaunch trace --help`.
pub const HELP: CommandHelp = CommandHelp {
    usage: "relaunch trace FILE --platform <snp|sev|sev-es|tdx> [options]",
    about: "\
Prints, one JSON line each, the kernel calls the real backend of the platform makes to launch
FILE (fd, uapi ioctl name, arguments by uapi field name, result), answered by a model of KVM
and the AMD Secure Processor / TDX module; for SNP a line per page the firmware measures
(gpa, PAGE_INFO type, SHA-384 of measured contents), for SEV/SEV-ES the measured bytes; last
the model's measurement, computed from what the calls gave it. No VM is created.",
    flags: FLAGS,
    notes: "Exit codes: 0 printed; 1 the launch failed against the model, or the model's \
measurement differs from relaunch measure's; 2 bad flags or an invalid bundle, or no backend \
for the platform in this build.",
    examples: &[
        "relaunch trace guest.igvm --platform snp --vcpus 4",
        "relaunch trace OVMF.fd --platform sev-es --vcpu-type EPYC --relaunch",
    ],
};

#[derive(Debug)]
struct TraceArgs {
    file: PathBuf,
    config: LaunchConfig,
    launch: LaunchFlags,
    relaunch: bool,
    next: Option<PathBuf>,
    max_pages: Option<u64>,
    eintr_every: Option<u32>,
}

fn parse(args: &[OsString]) -> Result<TraceArgs, ArgError> {
    let mut it = Cursor::new(args, FLAGS);
    let mut file = None;
    let mut platform = None;
    let mut vcpus = 1;
    let mut mem = super::run::DEFAULT_MEM;
    let mut launch = LaunchFlags::default();
    let mut relaunch = false;
    let mut next = None;
    let mut max_pages = None;
    let mut eintr_every = None;
    while let Some(arg) = it.next()? {
        let f = match arg {
            Item::Positional(p) => {
                one_positional(&mut file, p)?;
                continue;
            }
            Item::Flag(f) => f,
        };
        if launch.take(f, &mut it)? {
            continue;
        }
        match f.long {
            "platform" => platform = Some(it.confidential_platform(f)?),
            "vcpus" => vcpus = it.vcpus(f)?,
            "mem" => mem = it.mem(f)?,
            "relaunch" => relaunch = true,
            "next" => next = Some(it.path(f)?),
            "model-max-pages" => {
                max_pages = Some(it.parsed(f, "a page count of at least 1", |v| {
                    parse_u64(v).filter(|&n| n > 0)
                })?)
            }
            "model-eintr-every" => {
                eintr_every = Some(it.parsed(f, "a call count of at least 2", |v| {
                    parse_u64(v)
                        .and_then(|n| u32::try_from(n).ok())
                        .filter(|&n| n >= 2)
                })?)
            }
            "help" => return Err(ArgError::Help),
            _ => return Err(ArgError::Other(format!("unexpected flag {}", f.name()))),
        }
    }
    launch.check()?;
    let platform = platform.ok_or_else(|| ArgError::Other("--platform is required".into()))?;
    let file = file.ok_or_else(|| ArgError::Other("a bundle FILE is required".into()))?;
    // Without a vCPU model the signature is 0, as for `relaunch measure` (the model's host
    // then reports 0 too).
    let config = launch.config(platform, vcpus, mem, 0);
    Ok(TraceArgs {
        file,
        config,
        launch,
        relaunch,
        next,
        max_pages,
        eintr_every,
    })
}

fn arg_value(a: &Arg) -> Value {
    match a {
        Arg::Num(n) => json!(n),
        Arg::Text(t) => json!(t),
    }
}

/// One event as its JSON line.
pub fn event_line(e: &Event) -> String {
    let v = match e {
        Event::Call(c) => {
            let args: Map<String, Value> = c
                .args
                .iter()
                .map(|(k, v)| ((*k).to_string(), arg_value(v)))
                .collect();
            let result = match c.error {
                None => "ok".to_string(),
                Some(err) => {
                    let mut s = errno_name(err.errno.errno());
                    match err.fw_error {
                        Some(FwStatus::Sev(code)) => {
                            s.push_str(&format!(" {}", crate::sys::coco::sev_ret_name(code)))
                        }
                        Some(FwStatus::Tdx(code)) => s.push_str(&format!(" tdx:{code:#x}")),
                        None => {}
                    }
                    s
                }
            };
            json!({"fd": c.fd, "ioctl": c.ioctl, "args": args, "result": result})
        }
        Event::Measured(Measured::Snp {
            gpa,
            page_type,
            sha384,
        }) => json!({"measured": {
            "gpa": gpa,
            "page_type": page_type,
            "sha384": sha384.map(|h| crate::json::hex(&h)),
        }}),
        Event::Measured(Measured::Sev { gpa, bytes }) => json!({"measured": {
            "gpa": gpa, "len": bytes.len(), "bytes": crate::json::hex(bytes),
        }}),
        Event::Measured(Measured::Tdx { gpa, extended }) => {
            json!({"measured": {"gpa": gpa, "extended": extended}})
        }
    };
    v.to_string()
}

/// Why `relaunch trace` produced no complete trace.
#[derive(Debug)]
pub struct TraceError {
    /// The exit code (1 or 2, see [`HELP`]).
    pub code: u8,
    /// One line.
    pub message: String,
    /// The lines traced before the failure (printed too: they show where it failed).
    pub partial: String,
}

fn fail(code: u8, message: String) -> TraceError {
    TraceError {
        code,
        message,
        partial: String::new(),
    }
}

/// `relaunch trace` without the printing: the JSON lines (each ending in a newline), the
/// measurement line last. The CLI and the integration tests both call this.
///
/// # Errors
/// [`TraceError`]: bad flags or bundle (2), no backend (2), a launch the model refused or a
/// measurement that differs from `relaunch measure` (1).
pub fn run(args: &[OsString]) -> Result<String, TraceError> {
    let a = parse(args).map_err(|e| match e {
        ArgError::Help => TraceError {
            code: 0,
            message: String::new(),
            partial: HELP.render(),
        },
        e => fail(super::EXIT_USAGE, e.to_string()),
    })?;
    let bundle = super::run::read_bundle(&a.file).map_err(|e| fail(super::EXIT_USAGE, e))?;
    let mut cfg = a.config;
    cfg.kernel_hashes = a
        .launch
        .kernel_hashes_for(&bundle)
        .map_err(|e| fail(super::EXIT_USAGE, e))?;
    let id_block = a
        .launch
        .id_block_for(cfg.platform)
        .map_err(|e| fail(super::EXIT_USAGE, e))?;
    let first = Launch::with_id_block(bundle, &cfg, id_block)
        .map_err(|e| fail(super::EXIT_USAGE, format!("{}: {e}", a.file.display())))?;
    let next = match &a.next {
        Some(p) => {
            let h = crate::handover::Handover::new(
                Arc::new(crate::launch::LaunchSlot::new()),
                cfg,
                None,
                None,
            );
            Some(
                h.prepare_file(p)
                    .map_err(|e| fail(super::EXIT_USAGE, format!("--next {e}")))?
                    .launch,
            )
        }
        None => None,
    };
    let model = Model::new(ModelConfig {
        vcpu_sig: a.config.vcpu_sig,
        max_pages_per_call: a.max_pages,
        eintr_every: a.eintr_every,
        ..ModelConfig::default()
    });
    let host = Host::with_kvm(Kvm::with(Arc::new(model.clone())), true)
        .map(Arc::new)
        .map_err(|e| fail(1, e.to_string()))?;
    let backend = crate::backend::select(a.config.platform, &host)
        .map_err(|e| fail(super::EXIT_USAGE, e.to_string()))?;
    let mut failed = None;
    let mut order: Vec<&Launch> = vec![&first];
    if a.relaunch {
        order.push(&first);
    }
    if let Some(n) = &next {
        order.push(n);
    }
    // The measurement checked is the last launch's.
    let launch = order.last().copied().unwrap_or(&first);
    for l in order.iter().copied() {
        match backend.build(l) {
            // Dropping the built VM closes its fds (the relaunch teardown).
            Ok(built) => drop(built),
            Err(e) => {
                failed = Some(e.to_string());
                break;
            }
        }
    }
    let mut out = String::new();
    for e in model.events() {
        out.push_str(&event_line(&e));
        out.push('\n');
    }
    if let Some(e) = failed {
        return Err(TraceError {
            code: 1,
            message: format!("the launch failed against the model: {e}"),
            partial: out,
        });
    }
    let got = model
        .measurement()
        .map(|m| crate::json::hex(m.as_bytes()))
        .unwrap_or_default();
    out.push_str(&json!({ "measurement": got }).to_string());
    out.push('\n');
    if launch.predicted_measurement() != Some(got.as_str()) {
        return Err(TraceError {
            code: 1,
            message: format!(
                "the model measured {got}, relaunch measure predicts {}",
                launch.predicted_measurement().unwrap_or("nothing")
            ),
            partial: out,
        });
    }
    Ok(out)
}

/// Runs `relaunch trace` with `args`; returns the exit code.
pub fn main(args: &[OsString]) -> u8 {
    if wants_help(args) {
        return crate::log::print_output("trace", HELP.render().as_bytes());
    }
    match run(args) {
        Ok(out) => crate::log::print_output("trace", out.as_bytes()),
        Err(e) => {
            let code = crate::log::print_output("trace", e.partial.as_bytes());
            if e.code == 0 {
                return code;
            }
            crate::elog!("relaunch trace: {}", e.message);
            e.code
        }
    }
}
