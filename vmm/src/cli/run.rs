//! `relaunch run BUNDLE [options]`: plan the bundle once, then launch it on KVM and relaunch
//! it on a fresh VM fd on every guest reset (`docs/reboot-contract.md`).
//!
//! Order (nothing is half-started on bad input): parse flags → read and hash the bundle →
//! plan → open `/dev/kvm` → open the audit log and event file → run the session. The files
//! come last, and one this run created is removed again if a later one cannot be opened, so
//! a failed start leaves no empty audit log behind.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;

use relaunch_core::plan::{LaunchConfig, LaunchPlan, Platform};

use super::launch_flags::{self, LaunchFlags};
use super::measure::one_line;
use crate::args::{
    one_positional, parse_hex_bytes, parse_u64, wants_help, ArgError, CommandHelp, Cursor, Flag,
    Item, HELP_FLAG,
};
use crate::audit::{AuditLog, BundleStore, EventSink};
use crate::backend::snp_certs::SnpCerts;
use crate::control::{Control, ControlServer};
use crate::devices::console::Console;
use crate::devices::fw_cfg::{validate_file, MAX_USER_FILES};
use crate::devices::launch_update::LaunchUpdate;
use crate::handover::Handover;
use crate::launch::Launch;
use crate::model::ModelConfig;
use crate::session::{
    run_session, ResetLimit, SessionConfig, SessionReport, EXIT_USAGE, EXIT_VMM_ERROR,
};
use crate::vcpu::Outcome;
use crate::vstate::Host;

/// `relaunch run`'s flags: the parser and `--help` are both built from this table.
pub const FLAGS: &[Flag] = &[
    Flag {
        long: "platform",
        short: None,
        value: Some("P"),
        help: "Platform to launch on: native, sev, sev-es, snp or tdx, or emulated:sev, \
               emulated:sev-es, emulated:snp or emulated:tdx. The confidential ones need their \
               hardware: on a host without it run stops before creating anything, with one \
               sentence naming what is missing (relaunch trace shows what they would do). The \
               emulated ones run the same launch on any KVM host, the confidential calls \
               answered by relaunch's model of KVM and the firmware, the guest on an ordinary \
               VM with that platform's registers, memory contents and SEV/TDX view: a \
               development tool that protects nothing (every audit record says \
               \"emulated\":true). Default: native.",
    },
    Flag {
        long: "mem",
        short: None,
        value: Some("SIZE"),
        help: "Guest RAM: a byte count or a size with K, M, G or T (binary), a 4 KiB \
               multiple from 4 KiB to 1 TiB. Default: 256M.",
    },
    Flag {
        long: "vcpus",
        short: None,
        value: Some("N"),
        help: "Number of vCPUs, 1 to 255. Default: 1.",
    },
    Flag {
        long: "max-reboots",
        short: None,
        value: Some("N"),
        help: "Relaunch at most N times; the guest's next reset then ends the run with exit \
               code 4 (0 allows no relaunch). Default: unlimited.",
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
        long: "snp-certs",
        short: None,
        value: Some("FILE"),
        help: "SNP only: answer the guest's extended report requests with the certificates \
               in FILE, a certificate table as the guest receives it (GHCB spec \
               \"SNP Extended Guest Request\": 24-byte entries GUID, offset, length, little \
               endian; an all-zero entry; then the certificates; at most 16 KiB). Checked at \
               start; read again under a shared fcntl lock for every request, so a tool \
               updating it under an exclusive lock makes the guest retry. Needs Linux 7.0+ \
               (KVM_X86_SEV_SNP_REQ_CERTS). With emulated:snp the file is checked, but no \
               request ever reaches relaunch. Default: none (KVM gives the guest an empty \
               table).",
    },
    Flag {
        long: "reset-limit",
        short: None,
        value: Some("N/INTERVAL"),
        help: "Stop with exit code 4 when the guest asks for more than N resets within \
               INTERVAL (a sliding window: 10s, 1m, 500ms, 1h; seconds without a unit), \
               like a service manager's start limit; the last exit record says why. \
               Default: unlimited.",
    },
    Flag {
        long: "control",
        short: None,
        value: Some("PATH"),
        help: "Serve the control socket at PATH: a new Unix socket (mode 0600; refused if \
               PATH exists; removed at exit) taking JSON lines like {\"cmd\":\"status\"} — \
               status, measurement, reset, power-off, continue, inject-secret — each \
               answered by one line with \"ok\". Default: none.",
    },
    Flag {
        long: "wait-for-secret",
        short: None,
        value: None,
        help: "Needs --control. SEV and SEV-ES: every launch (each relaunch too) waits after \
               LAUNCH_MEASURE, in state awaiting-secret, while a client reads \
               launch_measurement and mnonce from status, sends inject-secret requests and \
               then {\"cmd\":\"continue\"}. Other platforms: the first launch waits before \
               its first instruction until continue. Power-off or reset meanwhile end the \
               launch unrun. Default: off.",
    },
    Flag {
        long: "tik",
        short: None,
        value: Some("FILE"),
        help: "Emulated SEV / SEV-ES only: the transport integrity key (a file of 16 raw \
               bytes) the emulated firmware MACs LAUNCH_MEASURE and checks LAUNCH_SECRET \
               packets with. Real firmware takes the owner's keys from the LAUNCH_START \
               session instead. Default: 16 zero bytes (firmware without a session).",
    },
    Flag {
        long: "tek",
        short: None,
        value: Some("FILE"),
        help: "Emulated SEV / SEV-ES only: the transport encryption key (a file of 16 raw \
               bytes) the emulated firmware decrypts LAUNCH_SECRET packets with. Default: 16 \
               zero bytes.",
    },
    Flag {
        long: "mnonce",
        short: None,
        value: Some("HEX"),
        help: "Emulated SEV / SEV-ES only: the MNONCE LAUNCH_MEASURE returns (32 hex \
               digits), for reproducible measurements. Default: fresh random bytes per \
               launch, as the firmware does.",
    },
    Flag {
        long: "audit-log",
        short: None,
        value: Some("PATH"),
        help: "Append a JSON `launch` record before each launch runs and an `exit` record \
               when it ends (created mode 0600; docs/reboot-contract.md). Default: none.",
    },
    Flag {
        long: "events",
        short: None,
        value: Some("PATH|-"),
        help: "Append one JSON line per launch (outcome, reason, timings) to PATH, or to \
               stderr with -. Default: none.",
    },
    Flag {
        long: "quiet",
        short: Some('q'),
        value: None,
        help: "Discard the guest's console (serial) output instead of copying it to stdout. \
               Nothing relaunch itself writes to stderr is hidden: errors, the start line, \
               notes on unknown guest accesses, --events - lines and the final outcome line \
               still appear. Default: off.",
    },
    Flag {
        long: "prestage",
        short: None,
        value: None,
        help: "Build the next launch's VM while the guest runs, so a reset only swaps VMs \
               (faster relaunch, one idle VM's memory more). Default: off.",
    },
    Flag {
        long: "fw-cfg",
        short: None,
        value: Some("NAME=u64:N|NAME=str:TEXT"),
        help: "Add a fw_cfg file under opt/ for the guest: an 8-byte little-endian number \
               or a text; repeatable, at most 16 (docs/devices.md). Default: none.",
    },
    Flag {
        long: "vm-launch-update",
        short: None,
        value: None,
        help: "Give the guest QEMU's vm-launch-update device: the fw_cfg file \
               etc/vmlaunchupdate, through which it hands over an IGVM bundle (in its shared \
               memory, at most 64 MiB) that runs from its next reset on, or for one reset \
               (docs/fuki.md). The bundle is planned for this run's platform and flags when \
               the guest writes it; one that does not plan is refused with status 1 and \
               never runs. Default: off (no such file).",
    },
    Flag {
        long: "next",
        short: None,
        value: Some("BUNDLE"),
        help: "Run BUNDLE at the first relaunch only, then BUNDLE of the command line again \
               (a host hand-over, one-shot; planned and checked before anything starts: a \
               bad one is a usage error). The control socket's switch-bundle hands over \
               permanently at run time. Default: none.",
    },
    Flag {
        long: "bundle-store",
        short: None,
        value: Some("DIR"),
        help: "Keep every bundle this run launches — the command line's, --next's, and each \
               one handed over by the guest or switch-bundle — as DIR/<sha256> (mode 0600, \
               written atomically; DIR created mode 0700 if missing), so relaunch inspect \
               and measure can be run on exactly what the audit log names. A hand-over that \
               cannot be stored is refused. At most 64 bundles / 4 GiB per run. Default: \
               none (the audit log has the hashes only).",
    },
    Flag {
        long: "no-guest-memfd",
        short: None,
        value: None,
        help: "Back guest RAM with anonymous memory even where KVM offers guest_memfd. \
               Default: guest_memfd where KVM supports it, anonymous memory elsewhere.",
    },
    HELP_FLAG,
];

/// `relaunch run --help`.
pub const HELP: CommandHelp = CommandHelp {
    usage: "relaunch run BUNDLE [options]",
    about: "\
Launches BUNDLE (an IGVM file) on a fresh KVM VM and relaunches it on a new VM on every
guest reset, until the guest powers off, crashes, or asks for more than --max-reboots
resets. The guest's console goes to stdout (unless --quiet) and its keyboard input comes
from stdin. At the start one line on stderr names the guest RAM, its backing and the vCPUs;
at the end one line on stderr names the outcome and the exit code, e.g.
  relaunch: guest powered off after 3 launches (exit 0)",
    flags: FLAGS,
    notes: "\
Exit codes: 0 the guest powered off; 1 VMM error; 2 bad flags or bad input (nothing was
started); 3 the guest crashed (pvpanic, KVM crash event or internal error, failed VM
entry); 4 the guest asked for a reset after --max-reboots relaunches
(docs/reboot-contract.md).",
    examples: &[
        "relaunch run boot-images/prebuilt/hello.igvm",
        "relaunch run guest.igvm --mem 1G --vcpus 4 --max-reboots 5 --audit-log audit.jsonl",
        "relaunch run guest.igvm --quiet --events - --fw-cfg opt/relaunch/reboot-until=u64:3",
    ],
};

/// Largest bundle read (bytes).
pub const MAX_BUNDLE: u64 = 1 << 30;
/// Default guest RAM.
pub const DEFAULT_MEM: u64 = 256 << 20;
/// Parsed `relaunch run` options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOptions {
    /// The bundle path.
    pub bundle: PathBuf,
    /// `--platform` (`None` = native).
    pub platform: Option<Platform>,
    /// `--platform emulated:<p>`: `platform` emulated (`backend::emulated`).
    pub emulated: bool,
    /// `--mem`.
    pub mem: u64,
    /// `--vcpus`.
    pub vcpus: u32,
    /// `--max-reboots`.
    pub max_reboots: Option<u64>,
    /// `--reset-limit`.
    pub reset_limit: Option<ResetLimit>,
    /// `--control`.
    pub control: Option<PathBuf>,
    /// `--wait-for-secret`.
    pub wait_for_secret: bool,
    /// `--tik`, `--tek`, `--mnonce` (emulated SEV / SEV-ES).
    pub sev_model_keys: SevModelKeys,
    /// The launch flags shared with `measure` (same meaning).
    pub launch: LaunchFlags,
    /// `--audit-log`.
    pub audit_log: Option<PathBuf>,
    /// `--events` (`-` = stderr).
    pub events: Option<PathBuf>,
    /// `--quiet`.
    pub quiet: bool,
    /// `--prestage`.
    pub prestage: bool,
    /// `--fw-cfg` files.
    pub fw_cfg: Vec<(String, Vec<u8>)>,
    /// `--no-guest-memfd`: force anonymous RAM.
    pub no_guest_memfd: bool,
    /// `--snp-certs`: the certificate file, checked.
    pub snp_certs: Option<SnpCerts>,
    /// `--vm-launch-update`.
    pub vm_launch_update: bool,
    /// `--next`.
    pub next: Option<PathBuf>,
    /// `--bundle-store`.
    pub bundle_store: Option<PathBuf>,
}

fn bad(flag: &str, value: &str, expected: &'static str) -> ArgError {
    ArgError::BadValue {
        flag: flag.to_string(),
        value: value.to_string(),
        expected,
    }
}

/// Parses a `--fw-cfg NAME=u64:N` or `NAME=str:TEXT` value.
fn parse_fw_cfg(v: &str) -> Result<(String, Vec<u8>), ArgError> {
    let expected = "NAME=u64:N or NAME=str:TEXT with NAME under opt/";
    let (name, value) = v
        .split_once('=')
        .ok_or_else(|| bad("--fw-cfg", v, expected))?;
    let data = if let Some(n) = value.strip_prefix("u64:") {
        parse_u64(n)
            .ok_or_else(|| bad("--fw-cfg", v, expected))?
            .to_le_bytes()
            .to_vec()
    } else if let Some(t) = value.strip_prefix("str:") {
        t.as_bytes().to_vec()
    } else {
        return Err(bad("--fw-cfg", v, expected));
    };
    validate_file(name, &data).map_err(ArgError::Other)?;
    Ok((name.to_string(), data))
}

/// Parses the `run` command line.
///
/// # Errors
/// [`ArgError`] for anything malformed ([`ArgError::Help`] for `--help`).
pub fn parse<I>(args: I) -> Result<RunOptions, ArgError>
where
    I: IntoIterator,
    I::Item: Into<OsString>,
{
    let mut a = Cursor::new(args, FLAGS);
    let mut o = RunOptions {
        bundle: PathBuf::new(),
        platform: None,
        emulated: false,
        mem: DEFAULT_MEM,
        vcpus: 1,
        max_reboots: None,
        reset_limit: None,
        control: None,
        wait_for_secret: false,
        sev_model_keys: SevModelKeys::default(),
        launch: LaunchFlags::default(),
        audit_log: None,
        events: None,
        quiet: false,
        prestage: false,
        fw_cfg: Vec::new(),
        no_guest_memfd: false,
        snp_certs: None,
        vm_launch_update: false,
        next: None,
        bundle_store: None,
    };
    let mut bundle = None;
    while let Some(arg) = a.next()? {
        let f = match arg {
            Item::Positional(p) => {
                one_positional(&mut bundle, p)?;
                continue;
            }
            Item::Flag(f) => f,
        };
        match f.long {
            "platform" => {
                let (p, emulated) = a.parsed(
                    f,
                    "native, sev, sev-es, snp, tdx or emulated:<sev|sev-es|snp|tdx>",
                    |s| match s.strip_prefix("emulated:") {
                        Some(p) => Platform::from_name(p)
                            .filter(|p| p.is_confidential())
                            .map(|p| (p, true)),
                        None => Platform::from_name(s).map(|p| (p, false)),
                    },
                )?;
                o.platform = Some(p);
                o.emulated = emulated;
            }
            "mem" => o.mem = a.mem(f)?,
            "vcpus" => o.vcpus = a.vcpus(f)?,
            "max-reboots" => o.max_reboots = Some(a.parsed(f, "a number", parse_u64)?),
            "reset-limit" => {
                o.reset_limit = Some(a.parsed(
                    f,
                    "N/INTERVAL with N >= 1 and INTERVAL up to 24h, e.g. 20/10s",
                    ResetLimit::parse,
                )?);
            }
            "audit-log" => o.audit_log = Some(a.path(f)?),
            "events" => o.events = Some(a.path(f)?),
            "fw-cfg" => {
                let v = a.string(f)?;
                let (n, d) = parse_fw_cfg(&v)?;
                if o.fw_cfg.iter().any(|(m, _)| *m == n) {
                    return Err(ArgError::Other(format!("--fw-cfg {n:?} given twice")));
                }
                if o.fw_cfg.len() >= MAX_USER_FILES {
                    return Err(ArgError::Other(format!(
                        "at most {MAX_USER_FILES} --fw-cfg files"
                    )));
                }
                o.fw_cfg.push((n, d));
            }
            "quiet" => o.quiet = true,
            "prestage" => o.prestage = true,
            "no-guest-memfd" => o.no_guest_memfd = true,
            "vm-launch-update" => o.vm_launch_update = true,
            "next" => o.next = Some(a.path(f)?),
            "bundle-store" => o.bundle_store = Some(a.path(f)?),
            "control" => o.control = Some(a.path(f)?),
            "wait-for-secret" => o.wait_for_secret = true,
            "tik" => o.sev_model_keys.tik = Some(read_key_file(f, &a.path(f)?)?),
            "tek" => o.sev_model_keys.tek = Some(read_key_file(f, &a.path(f)?)?),
            "snp-certs" => {
                let path = a.path(f)?;
                o.snp_certs = Some(
                    SnpCerts::open(&path)
                        .map_err(|e| ArgError::Other(format!("--snp-certs {e}")))?,
                );
            }
            "mnonce" => {
                o.sev_model_keys.mnonce =
                    Some(a.parsed(f, "32 hex digits (16 bytes)", parse_hex_bytes)?);
            }
            _ if o.launch.take(f, &mut a)? => {}
            other => return Err(ArgError::Unhandled(other)),
        }
    }
    o.launch.check()?;
    if o.wait_for_secret && o.control.is_none() {
        return Err(ArgError::Other(
            "--wait-for-secret needs --control (something must send continue)".into(),
        ));
    }
    let emulated_sev = o.emulated && matches!(o.platform, Some(Platform::Sev | Platform::SevEs));
    if !o.sev_model_keys.is_empty() && !emulated_sev {
        return Err(ArgError::Other(
            "--tik, --tek and --mnonce configure an emulated SEV or SEV-ES firmware; they \
             need --platform emulated:sev or emulated:sev-es (on real hardware the keys come \
             from the LAUNCH_START session)"
                .into(),
        ));
    }
    if o.snp_certs.is_some() && o.platform != Some(Platform::Snp) {
        return Err(ArgError::Other(
            "--snp-certs serves SNP guests' certificate requests; it needs --platform snp \
             (or emulated:snp, which checks the file only)"
                .into(),
        ));
    }
    if o.wait_for_secret && o.prestage {
        return Err(ArgError::Other(
            "--prestage cannot be combined with --wait-for-secret: a prestaged launch would \
             wait for its owner while the previous one runs"
                .into(),
        ));
    }
    o.bundle = bundle.ok_or_else(|| ArgError::Other("no BUNDLE given".into()))?;
    Ok(o)
}

/// The SEV transport keys and MNONCE an emulated SEV / SEV-ES firmware (the kernel model)
/// uses, from `--tik`, `--tek` and `--mnonce`: what real firmware unwraps from the owner's
/// `LAUNCH_START` session or draws from its TRNG (`relaunch_core::owner`). Unset ones keep
/// the model's defaults ([`ModelConfig`]).
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct SevModelKeys {
    /// `--tik`: the transport integrity key.
    pub tik: Option<[u8; 16]>,
    /// `--tek`: the transport encryption key.
    pub tek: Option<[u8; 16]>,
    /// `--mnonce`: a fixed MNONCE for every `LAUNCH_MEASURE`.
    pub mnonce: Option<[u8; 16]>,
}

impl SevModelKeys {
    /// No flag was given.
    pub fn is_empty(&self) -> bool {
        *self == SevModelKeys::default()
    }

    /// Sets the given keys and nonce in `cfg`.
    pub fn apply(&self, cfg: &mut ModelConfig) {
        if let Some(k) = self.tik {
            cfg.tik = k;
        }
        if let Some(k) = self.tek {
            cfg.tek = k;
        }
        if self.mnonce.is_some() {
            cfg.mnonce = self.mnonce;
        }
    }
}

/// Which flags are set, never the keys.
impl std::fmt::Debug for SevModelKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SevModelKeys")
            .field("tik", &self.tik.map(|_| ".."))
            .field("tek", &self.tek.map(|_| ".."))
            .field("mnonce", &self.mnonce)
            .finish()
    }
}

/// A 16-byte key from `path` (exactly 16 raw bytes; larger files are not read whole).
fn read_key_file(flag: &Flag, path: &std::path::Path) -> Result<[u8; 16], ArgError> {
    use std::io::Read;
    let name = flag.name();
    let mut buf = Vec::with_capacity(17);
    std::fs::File::open(path)
        .and_then(|f| f.take(17).read_to_end(&mut buf))
        .map_err(|e| ArgError::Other(format!("{name} {}: {e}", path.display())))?;
    <[u8; 16]>::try_from(buf.as_slice()).map_err(|_| {
        ArgError::Other(format!(
            "{name} {}: a key file holds exactly 16 raw bytes, this one {}",
            path.display(),
            if buf.len() > 16 {
                "more".to_string()
            } else {
                format!("{}", buf.len())
            }
        ))
    })
}

/// Plans `bundle` for `cfg` with the core's planner.
///
/// # Errors
/// The planner's message.
pub fn make_plan(bundle: &[u8], cfg: &LaunchConfig) -> Result<LaunchPlan, String> {
    relaunch_core::plan::plan(std::sync::Arc::<[u8]>::from(bundle), cfg).map_err(|e| e.to_string())
}

/// CPUID(1).EAX of the host (the vCPU signature KVM passes through).
fn host_signature() -> u32 {
    crate::sys::cpu::cpuid(1).0
}

fn usage_error(msg: impl std::fmt::Display) -> u8 {
    crate::elog!("relaunch run: {msg}");
    EXIT_USAGE
}

/// Runs `relaunch run` with `args`; returns the exit code.
pub fn main(args: &[OsString]) -> u8 {
    if wants_help(args) {
        return crate::log::print_output("run", HELP.render().as_bytes());
    }
    let opts = match parse(args) {
        Ok(o) => o,
        Err(ArgError::Help) => return crate::log::print_output("run", HELP.render().as_bytes()),
        Err(e) => return usage_error(e),
    };
    let platform = opts.platform.unwrap_or(Platform::Native);
    let bundle = match read_bundle(&opts.bundle) {
        Ok(b) => b,
        Err(e) => return usage_error(e),
    };
    // The same launch config `measure` computes for the same flags, except that the vCPU
    // signature defaults to this host's (what KVM passes through).
    let mut cfg = opts
        .launch
        .config(platform, opts.vcpus, opts.mem, host_signature());
    cfg.kernel_hashes = match opts.launch.kernel_hashes_for(&bundle) {
        Ok(k) => k,
        Err(e) => return usage_error(e),
    };
    let id_block = match opts.launch.id_block_for(platform) {
        Ok(b) => b,
        Err(e) => return usage_error(e),
    };
    let launch = match Launch::with_id_block(bundle, &cfg, id_block) {
        Ok(l) => Arc::new(l),
        Err(e) => return usage_error(format_args!("{}: {e}", opts.bundle.display())),
    };
    // A bundle from `pack --kernel` lists its vCPUs in its ACPI MADT: a different --vcpus
    // is allowed (the guest sees the MADT's count; extra vCPUs wait for an INIT/SIPI that
    // never comes, missing ones fail to start), but said (docs/linux-guests.md).
    if let Some(n) = crate::pack::acpi::planned_vcpus(launch.plan()) {
        if n != opts.vcpus {
            crate::elog!(
                "relaunch: warning: the bundle's ACPI MADT lists {n} vCPU{} (pack --vcpus); \
                 this run has {}: the guest sees the MADT's",
                if n == 1 { "" } else { "s" },
                opts.vcpus
            );
        }
    }
    // Every hand-over goes into the session's slot, planned for this run's launch config.
    let slot = Arc::new(crate::launch::LaunchSlot::new());
    let handover_cfg = Handover::new(Arc::clone(&slot), cfg, None, None);
    // `--next`: checked now, like BUNDLE (a bad one starts nothing).
    let next = match &opts.next {
        Some(p) => match handover_cfg.prepare_file(p) {
            Ok(r) => Some(r.launch),
            Err(e) => return usage_error(format_args!("--next {e}")),
        },
        None => None,
    };
    let host = match Host::open(!opts.no_guest_memfd) {
        Ok(h) => Arc::new(h),
        Err(e) => {
            crate::elog!("relaunch run: {e}");
            return EXIT_VMM_ERROR;
        }
    };
    // Before anything is created: a platform this host cannot run is a usage error.
    let selected = if opts.emulated {
        let mut model = crate::model::ModelConfig {
            vcpu_sig: host_signature(),
            ..crate::model::ModelConfig::default()
        };
        opts.sev_model_keys.apply(&mut model);
        crate::backend::emulated::EmulatedBackend::new(platform, &host.kvm, model)
            .map(|b| Box::new(b) as Box<dyn crate::backend::Backend>)
    } else {
        crate::backend::select(platform, &host)
    };
    let backend = match selected {
        Ok(b) => b,
        Err(e) => return usage_error(e),
    };
    let mut created = Vec::new();
    let store = match &opts.bundle_store {
        Some(d) => match BundleStore::open(d) {
            Ok(s) => Some(s),
            Err(e) => return usage_error(format_args!("--bundle-store: {e}")),
        },
        None => None,
    };
    let audit = match &opts.audit_log {
        Some(p) => match open_output(p, &mut created) {
            Ok(a) => Some(Arc::new(a)),
            Err(e) => return usage_error(format_args!("--audit-log {}: {e}", p.display())),
        },
        None => None,
    };
    let events = match opts.events.as_deref() {
        None => None,
        Some(p) if p.as_os_str() == "-" => Some(Arc::new(EventSink::Stderr)),
        Some(p) => match open_output(p, &mut created) {
            Ok(f) => Some(Arc::new(EventSink::File(f))),
            Err(e) => {
                // Nothing was started: take back the files this run created.
                for c in &created {
                    let _ = std::fs::remove_file(c);
                }
                return usage_error(format_args!("--events {}: {e}", p.display()));
            }
        },
    };
    let handover = Arc::new(Handover::new(Arc::clone(&slot), cfg, store, audit.clone()));
    // The command line's bundle and `--next` go into the store too (and `--next` on record
    // as a host hand-over before the first launch).
    let early = handover
        .adopt(&launch)
        .map_err(|e| e.to_string())
        .and_then(|_| match &next {
            Some(n) => {
                let ready = handover.adopt(n).map_err(|e| e.to_string())?;
                handover
                    .commit_host(&ready, true)
                    .map_err(|e| format!("writing the audit log: {e}"))
            }
            None => Ok(()),
        });
    if let Err(e) = early {
        for c in &created {
            let _ = std::fs::remove_file(c);
        }
        return usage_error(e);
    }
    // The control socket last: a failure removes what this run created, nothing started.
    let control = opts
        .control
        .as_ref()
        .map(|_| Arc::new(Control::new(opts.wait_for_secret)));
    let _server = match (&opts.control, &control) {
        (Some(p), Some(c)) => match ControlServer::start(p, Arc::clone(c)) {
            Ok(s) => Some(s),
            Err(e) => {
                for c in &created {
                    let _ = std::fs::remove_file(c);
                }
                return usage_error(format_args!("--control {}: {e}", p.display()));
            }
        },
        _ => None,
    };
    // SEV / SEV-ES launches give the owner their turn through the control socket (between
    // LAUNCH_MEASURE and LAUNCH_FINISH; it waits only with --wait-for-secret).
    if let Some(c) = &control {
        backend.set_owner_gate(Some(Arc::clone(c) as Arc<dyn crate::backend::OwnerGate>));
        c.set_handover(Arc::clone(&handover));
    }
    if let Some(certs) = &opts.snp_certs {
        if backend.set_snp_certs(Some(Arc::new(certs.clone()))) {
            crate::elog!(
                "relaunch: SNP certificate requests answered from {} ({})",
                certs.path().display(),
                certs.table()
            );
        } else {
            // emulated:snp: the guest runs on an ordinary KVM VM, whose kernel never sees an
            // SNP guest request, so KVM_EXIT_SNP_REQ_CERTS never comes.
            crate::elog!(
                "relaunch: --snp-certs {} checked ({}), but emulated:snp never receives \
                 certificate requests: the guest gets none",
                certs.path().display(),
                certs.table()
            );
        }
    }
    crate::elog!(
        "relaunch: guest RAM {} MiB via {} ({} vCPU{})",
        opts.mem >> 20,
        backend.memory_backing(),
        opts.vcpus,
        if opts.vcpus == 1 { "" } else { "s" }
    );
    let console = Arc::new(if opts.quiet {
        Console::discard()
    } else {
        Console::stdout()
    });
    console.spawn_stdin_reader();
    let launch_update = opts
        .vm_launch_update
        .then(|| Arc::new(LaunchUpdate::new(Arc::clone(&handover))));
    let session = SessionConfig {
        next: slot,
        launch_update,
        max_reboots: opts.max_reboots,
        reset_limit: opts.reset_limit,
        prestage: opts.prestage,
        audit,
        events,
        fw_cfg_files: opts.fw_cfg,
        control,
        ..SessionConfig::new(console)
    };
    let report = run_session(&*backend, launch, &session);
    // Write out buffered guest output; a stdout nobody drains must not hold the exit up long.
    if report.unknown_suppressed > 0 {
        crate::elog!(
            "relaunch: {} more unknown guest accesses were not logged",
            report.unknown_suppressed
        );
    }
    let dropped = session.console.finish(std::time::Duration::from_secs(2));
    if dropped > 0 {
        crate::elog!("relaunch: {dropped} bytes of guest output dropped (stdout did not keep up)");
    }
    // Last, and never hidden by --quiet: what happened and the exit code.
    crate::elog!("{}", outcome_line(&report, opts.max_reboots));
    report.exit_code
}

/// The one line `run` ends with on stderr: the outcome of the session, the launch it ended
/// in, and the exit code (`docs/reboot-contract.md`).
pub fn outcome_line(report: &SessionReport, max_reboots: Option<u64>) -> String {
    let n = report.launches;
    let g = report.generation;
    let code = report.exit_code;
    let what = match &report.outcome {
        Outcome::Reset(_) if report.stopped_by.is_some() => format!(
            "{}: the guest asked for reset #{n}",
            report.stopped_by.as_deref().unwrap_or_default()
        ),
        Outcome::PowerOff(_) => format!(
            "guest powered off after {n} launch{}",
            if n == 1 { "" } else { "es" }
        ),
        Outcome::Reset(_) => match max_reboots {
            Some(m) => format!(
                "reboot limit reached: the guest asked for reset #{n} after --max-reboots {m}"
            ),
            None => format!("the guest asked for reset #{n}"),
        },
        Outcome::GuestFatal(e) => format!("guest fatal in launch {g}: {}", one_line(e)),
        Outcome::VmmError(e) if g == 0 => format!("VMM error before launch 1: {}", one_line(e)),
        // The build of launch `g` failed: it never ran.
        Outcome::VmmError(e) if n < g => {
            format!("VMM error building launch {g}: {}", one_line(e))
        }
        Outcome::VmmError(e) => format!("VMM error in launch {g}: {}", one_line(e)),
        Outcome::LaunchRefused(e) => format!("launch {g} not run: {}", one_line(e)),
    };
    format!("relaunch: {what} (exit {code})")
}

/// Opens `path` for appending ([`AuditLog::open`]); records it in `created` when this call
/// created it.
fn open_output(path: &std::path::Path, created: &mut Vec<PathBuf>) -> std::io::Result<AuditLog> {
    let existed = std::fs::symlink_metadata(path).is_ok();
    let log = AuditLog::open(path)?;
    if !existed {
        created.push(path.to_path_buf());
    }
    Ok(log)
}

pub(crate) fn read_bundle(path: &std::path::Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut buf = Vec::new();
    f.take(MAX_BUNDLE + 1)
        .read_to_end(&mut buf)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if buf.len() as u64 > MAX_BUNDLE {
        return Err(format!("{}: larger than 1 GiB", path.display()));
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<RunOptions, ArgError> {
        parse(args.iter().copied())
    }

    #[test]
    fn parses_flags() {
        let o = p(&[
            "b.igvm",
            "--mem",
            "1G",
            "--vcpus=4",
            "--max-reboots",
            "3",
            "--events",
            "-",
            "--quiet",
            "--prestage",
            "--fw-cfg",
            "opt/relaunch/reboot-until=u64:5",
            "--fw-cfg=opt/x=str:hi",
        ])
        .unwrap();
        assert_eq!(o.bundle, PathBuf::from("b.igvm"));
        assert_eq!((o.mem, o.vcpus, o.max_reboots), (1 << 30, 4, Some(3)));
        assert!(o.quiet && o.prestage);
        assert_eq!(o.events, Some(PathBuf::from("-")));
        assert_eq!(o.fw_cfg[0].1, 5u64.to_le_bytes());
        assert_eq!(o.fw_cfg[1], ("opt/x".to_string(), b"hi".to_vec()));
        assert_eq!(p(&["x"]).unwrap().mem, DEFAULT_MEM);
    }

    #[test]
    fn hand_over_flags() {
        let o = p(&[
            "b.igvm",
            "--vm-launch-update",
            "--next",
            "stage2.igvm",
            "--bundle-store=/var/lib/x",
        ])
        .unwrap();
        assert!(o.vm_launch_update);
        assert_eq!(o.next, Some(PathBuf::from("stage2.igvm")));
        assert_eq!(o.bundle_store, Some(PathBuf::from("/var/lib/x")));
        let o = p(&["b.igvm"]).unwrap();
        assert!(!o.vm_launch_update && o.next.is_none() && o.bundle_store.is_none());
        for bad in [
            &["b", "--next"][..],
            &["b", "--bundle-store"],
            &["b", "--vm-launch-update=1"],
        ] {
            assert!(p(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn final_outcome_line() {
        use crate::devices::ResetSource;
        let r = |launches, outcome, exit_code| SessionReport {
            launches,
            generation: launches,
            stopped_by: None,
            peak_backlog: 0,
            outcome,
            exit_code,
            relaunch_latency: Vec::new(),
            reset_to_start: Vec::new(),
            unknown_suppressed: 0,
        };
        assert_eq!(
            outcome_line(&r(3, Outcome::PowerOff("acpi-pm1-slp-en"), 0), None),
            "relaunch: guest powered off after 3 launches (exit 0)"
        );
        assert_eq!(
            outcome_line(&r(1, Outcome::PowerOff("acpi-pm1-slp-en"), 0), None),
            "relaunch: guest powered off after 1 launch (exit 0)"
        );
        assert_eq!(
            outcome_line(&r(6, Outcome::Reset(ResetSource::I8042), 4), Some(5)),
            "relaunch: reboot limit reached: the guest asked for reset #6 after \
             --max-reboots 5 (exit 4)"
        );
        assert_eq!(
            outcome_line(&r(2, Outcome::GuestFatal("pvpanic".into()), 3), None),
            "relaunch: guest fatal in launch 2: pvpanic (exit 3)"
        );
        assert_eq!(
            outcome_line(&r(1, Outcome::VmmError("KVM_RUN:\n EIO".into()), 1), None),
            "relaunch: VMM error in launch 1: KVM_RUN: EIO (exit 1)"
        );
        // A failed build names the launch being built, not the one before it.
        let mut failed = r(
            2,
            Outcome::VmmError("launch op #0 (CreateVm): ENOMEM".into()),
            1,
        );
        failed.generation = 3;
        assert_eq!(
            outcome_line(&failed, None),
            "relaunch: VMM error building launch 3: launch op #0 (CreateVm): ENOMEM (exit 1)"
        );
        let mut limited = r(4, Outcome::Reset(ResetSource::Cf9), 4);
        limited.stopped_by =
            Some("reset rate limit: 4 resets within 60000 ms (limit 3/60000ms)".into());
        assert_eq!(
            outcome_line(&limited, None),
            "relaunch: reset rate limit: 4 resets within 60000 ms (limit 3/60000ms): the guest \
             asked for reset #4 (exit 4)"
        );
    }

    /// `run` and `measure` read the shared launch flags into the same launch config (issue 7:
    /// what `measure` predicts is what `run` launches).
    #[test]
    fn launch_flags_mean_what_they_mean_for_measure() {
        let hd = "ab".repeat(32);
        let shared = [
            "--vcpu-type",
            "EPYC-v4",
            "--guest-features",
            "0x21",
            "--policy",
            "0x30000",
            "--host-data",
            hd.as_str(),
        ];
        let mut run_args = vec!["b.igvm", "--platform", "snp", "--vcpus", "4", "--mem", "1G"];
        run_args.extend(shared);
        let r = p(&run_args).unwrap();
        let mut m_args: Vec<OsString> =
            ["b.igvm", "--platform", "snp", "--vcpus", "4", "--mem", "1G"]
                .iter()
                .map(OsString::from)
                .collect();
        m_args.extend(shared.iter().map(OsString::from));
        let m = super::super::measure::parse_args(&m_args).unwrap();
        let rc = r.launch.config(Platform::Snp, r.vcpus, r.mem, 0x1234);
        assert_eq!(rc, m.config);
        assert_eq!(rc.vcpu_sig, 0x0080_0F12, "EPYC-v4, not the host default");
        // Without a vCPU model, run uses the host's signature where measure has none.
        let bare = p(&["b.igvm"]).unwrap();
        assert_eq!(
            bare.launch
                .config(Platform::Native, 1, DEFAULT_MEM, 0x1234)
                .vcpu_sig,
            0x1234
        );
        for bad in [
            &["b", "--vcpu-type", "EPYC", "--vcpu-sig", "0x800f12"][..],
            &["b", "--initrd", "x"],
            &["b", "--host-data", "abcd"],
            &["b", "--vcpu-type", "Pentium"],
        ] {
            assert!(p(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn rejects_bad_flags() {
        for bad in [
            &[][..],
            &["a", "b"],
            &["a", "--mem", "12"],
            &["a", "--mem", "0"],
            &["a", "--vcpus", "0"],
            &["a", "--vcpus", "999"],
            &["a", "--platform", "vmware"],
            &["a", "--max-reboots"],
            &["a", "--reset-limit", "0/10s"],
            &["a", "--reset-limit", "10"],
            &["a", "--wait-for-secret"],
            &["a", "--frobnicate"],
            &["a", "--quiet=1"],
            &["a", "--fw-cfg", "etc/x=u64:1"],
            &["a", "--fw-cfg", "opt/x=7"],
            &["a", "--fw-cfg", "opt/x=u64:1", "--fw-cfg", "opt/x=u64:2"],
        ] {
            assert!(p(bad).is_err(), "{bad:?}");
        }
    }

    /// `--platform emulated:<p>` names a confidential platform to emulate; `emulated:native`
    /// and unknown names are usage errors, as is prestaging a launch that waits for its owner.
    #[test]
    fn emulated_platform_flag() {
        for (name, platform) in [
            ("emulated:snp", Platform::Snp),
            ("emulated:sev-es", Platform::SevEs),
            ("emulated:sev", Platform::Sev),
            ("emulated:tdx", Platform::Tdx),
        ] {
            let o = p(&["b", "--platform", name]).unwrap();
            assert_eq!((o.platform, o.emulated), (Some(platform), true), "{name}");
        }
        let o = p(&["b", "--platform", "snp"]).unwrap();
        assert_eq!((o.platform, o.emulated), (Some(Platform::Snp), false));
        for bad in [
            "emulated:native",
            "emulated:",
            "emulated:sev-snp",
            "emulated",
        ] {
            assert!(p(&["b", "--platform", bad]).is_err(), "{bad}");
        }
        let e = p(&[
            "b",
            "--control",
            "/tmp/x.sock",
            "--wait-for-secret",
            "--prestage",
        ])
        .unwrap_err()
        .to_string();
        assert!(e.contains("--prestage cannot be combined"), "{e}");
    }

    /// `--tik FILE` / `--tek FILE` are 16 raw bytes, `--mnonce` 32 hex digits; they go into
    /// the model's config only where given, and need an emulated SEV / SEV-ES platform. Every bad value
    /// is a usage error (exit 2) with a sentence naming the flag.
    #[test]
    fn sev_model_key_flags() {
        let dir = std::env::temp_dir().join(format!("relaunch-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = |name: &str, bytes: &[u8]| {
            let path = dir.join(name);
            std::fs::write(&path, bytes).unwrap();
            path.to_string_lossy().into_owned()
        };
        let (tik, tek) = (file("tik", &[1; 16]), file("tek", &[2; 16]));
        let (short, long) = (file("short", &[3; 15]), file("long", &[4; 40]));
        let nonce = "0f".repeat(16);
        let o = p(&[
            "b",
            "--platform",
            "emulated:sev-es",
            "--tik",
            &tik,
            "--tek",
            &tek,
            "--mnonce",
            &nonce,
        ])
        .unwrap();
        let k = o.sev_model_keys;
        assert_eq!(
            (k.tik, k.tek, k.mnonce),
            (Some([1; 16]), Some([2; 16]), Some([0xF; 16]))
        );
        assert!(
            !format!("{k:?}").contains("[1,"),
            "keys stay out of Debug: {k:?}"
        );
        let mut cfg = ModelConfig::default();
        k.apply(&mut cfg);
        assert_eq!(
            (cfg.tik, cfg.tek, cfg.mnonce),
            ([1; 16], [2; 16], Some([0xF; 16]))
        );
        // Only what is given changes.
        let only_tek = p(&["b", "--platform", "emulated:sev", "--tek", &tek])
            .unwrap()
            .sev_model_keys;
        let mut cfg = ModelConfig::default();
        only_tek.apply(&mut cfg);
        assert_eq!((cfg.tik, cfg.tek, cfg.mnonce), ([0; 16], [2; 16], None));
        assert!(p(&["b"]).unwrap().sev_model_keys.is_empty());
        let missing = dir.join("missing").to_string_lossy().into_owned();
        for (args, want) in [
            (
                vec!["b", "--platform", "emulated:sev", "--tik", &short],
                "exactly 16 raw bytes, this one 15",
            ),
            (
                vec!["b", "--platform", "emulated:sev", "--tek", &long],
                "this one more",
            ),
            (
                vec!["b", "--platform", "emulated:sev", "--tik", &missing],
                "--tik",
            ),
            (
                vec!["b", "--platform", "emulated:sev", "--mnonce", "abcd"],
                "--mnonce",
            ),
            (
                vec![
                    "b",
                    "--platform",
                    "emulated:sev",
                    "--mnonce",
                    &"zz".repeat(16),
                ],
                "--mnonce",
            ),
            (
                vec!["b", "--tik", &tik],
                "need --platform emulated:sev or emulated:sev-es",
            ),
            (
                vec!["b", "--platform", "emulated:snp", "--mnonce", &nonce],
                "need --platform emulated:sev",
            ),
            // Real hardware takes its keys from the LAUNCH_START session, never a flag.
            (
                vec!["b", "--platform", "sev", "--tik", &tik],
                "need --platform emulated:sev",
            ),
        ] {
            let e = p(&args).unwrap_err().to_string();
            assert!(e.contains(want), "{args:?}: {e}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// `--snp-certs FILE`: a GHCB certificate table (GHCB spec §4.1.8.1: 24-byte entries
    /// GUID, offset, length; an all-zero entry; the certificates), checked while parsing, for
    /// `--platform snp` or `emulated:snp` only. A missing, malformed or oversized file, or
    /// another platform, is a usage error: exit 2 before anything is opened.
    #[test]
    fn snp_certs_flag() {
        use crate::backend::snp_certs::tests::table;
        let dir = std::env::temp_dir().join(format!("relaunch-snp-certs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = |name: &str, bytes: &[u8]| {
            let path = dir.join(name);
            std::fs::write(&path, bytes).unwrap();
            path.to_string_lossy().into_owned()
        };
        let vcek = crate::backend::snp_certs::VCEK_GUID;
        let good = file("good", &table(&[(vcek, &[1; 1000])]));
        for platform in ["snp", "emulated:snp"] {
            let o = p(&["b", "--platform", platform, "--snp-certs", &good]).unwrap();
            let certs = o.snp_certs.unwrap();
            assert_eq!(certs.path(), std::path::Path::new(&good));
            assert_eq!(
                certs.table().to_string(),
                "1 certificate: VCEK (1000 bytes)"
            );
        }
        assert!(p(&["b"]).unwrap().snp_certs.is_none());
        let mut cut = table(&[(vcek, &[1; 8])]);
        cut.truncate(40);
        let mut past_end = table(&[(vcek, &[1; 8])]);
        past_end.truncate(50);
        let mut big = table(&[(vcek, &[1; 8])]);
        big.resize(16 * 1024 + 1, 0);
        let (cut, past_end, big, empty) = (
            file("cut", &cut),
            file("past-end", &past_end),
            file("big", &big),
            file("empty", b""),
        );
        let missing = dir.join("missing").to_string_lossy().into_owned();
        for (args, want) in [
            (
                vec!["b", "--platform", "snp", "--snp-certs", &missing],
                "missing",
            ),
            (
                vec!["b", "--platform", "snp", "--snp-certs", &empty],
                "no terminating entry",
            ),
            (
                vec!["b", "--platform", "snp", "--snp-certs", &cut],
                "no terminating entry",
            ),
            (
                vec!["b", "--platform", "snp", "--snp-certs", &past_end],
                "entry 0 (VCEK",
            ),
            (
                vec!["b", "--platform", "snp", "--snp-certs", &big],
                "larger than 16384",
            ),
            (vec!["b", "--snp-certs", &good], "needs --platform snp"),
            (
                vec!["b", "--platform", "sev-es", "--snp-certs", &good],
                "needs --platform snp",
            ),
            (
                vec!["b", "--platform", "emulated:tdx", "--snp-certs", &good],
                "needs --platform snp",
            ),
        ] {
            let e = p(&args).unwrap_err().to_string();
            assert!(
                e.contains(want) && e.contains("--snp-certs"),
                "{args:?}: {e}"
            );
            let os: Vec<OsString> = args.iter().map(OsString::from).collect();
            assert_eq!(main(&os), EXIT_USAGE, "{args:?}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
