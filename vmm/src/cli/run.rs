//! `relaunch run BUNDLE [options]`: plan the bundle once, then launch it on KVM and relaunch
//! it on a fresh VM fd on every guest reset (`docs/reboot-contract.md`).
//!
//! Order (nothing is half-started on bad input): parse flags → read and hash the bundle →
//! plan → open `/dev/kvm` → open the audit log and event file → run the session. The files
//! come last, and one this run created is removed again if a later one cannot be opened, so
//! a failed start leaves no empty audit log behind.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use relaunch_core::plan::{LaunchConfig, LaunchPlan, Platform};
use sha2::{Digest, Sha256};

use crate::args::{parse_size, parse_u64, Arg, ArgError, Args};
use crate::audit::{AuditLog, EventSink};
use crate::devices::console::Console;
use crate::devices::fw_cfg::{validate_file, MAX_USER_FILES};
use crate::session::{run_session, SessionConfig, EXIT_USAGE, EXIT_VMM_ERROR};
use crate::vstate::Host;

const USAGE: &str = "usage: relaunch run BUNDLE [--platform native] [--mem SIZE] [--vcpus N] \
[--max-reboots N] [--audit-log PATH] [--events PATH|-] [--quiet] [--prestage] \
[--fw-cfg NAME=u64:N|NAME=str:TEXT]...";

/// Largest bundle read (bytes).
pub const MAX_BUNDLE: u64 = 1 << 30;
/// Default guest RAM.
pub const DEFAULT_MEM: u64 = 256 << 20;
/// Largest guest RAM accepted.
pub const MAX_MEM: u64 = 1 << 40;
/// Most vCPUs accepted (KVM may allow fewer).
pub const MAX_VCPUS: u32 = 255;

/// Parsed `relaunch run` options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOptions {
    /// The bundle path.
    pub bundle: PathBuf,
    /// `--platform` (`None` = native).
    pub platform: Option<Platform>,
    /// `--mem`.
    pub mem: u64,
    /// `--vcpus`.
    pub vcpus: u32,
    /// `--max-reboots`.
    pub max_reboots: Option<u64>,
    /// `--audit-log`.
    pub audit_log: Option<PathBuf>,
    /// `--events` (`-` = stderr).
    pub events: Option<String>,
    /// `--quiet`.
    pub quiet: bool,
    /// `--prestage`.
    pub prestage: bool,
    /// `--fw-cfg` files.
    pub fw_cfg: Vec<(String, Vec<u8>)>,
    /// `--no-guest-memfd` (hidden): force anonymous RAM.
    pub no_guest_memfd: bool,
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
/// [`ArgError`] for anything malformed.
pub fn parse(args: &[String]) -> Result<RunOptions, ArgError> {
    let mut a = Args::new(args);
    let mut o = RunOptions {
        bundle: PathBuf::new(),
        platform: None,
        mem: DEFAULT_MEM,
        vcpus: 1,
        max_reboots: None,
        audit_log: None,
        events: None,
        quiet: false,
        prestage: false,
        fw_cfg: Vec::new(),
        no_guest_memfd: false,
    };
    let mut bundle = None;
    while let Some(arg) = a.next()? {
        match arg {
            Arg::Positional(p) => {
                if bundle.replace(PathBuf::from(p)).is_some() {
                    return Err(ArgError::Other(format!("unexpected argument {p:?}")));
                }
            }
            Arg::Flag { name, .. } => match name {
                "--platform" => {
                    o.platform = Some(a.parsed(name, "native, sev, sev-es, snp or tdx", |s| {
                        Platform::from_name(s)
                    })?);
                }
                "--mem" => {
                    o.mem = a.parsed(
                        name,
                        "a size like 256M or 1G (4 KiB multiple, <= 1T)",
                        |s| parse_size(s).filter(|&m| m >= 4096 && m % 4096 == 0 && m <= MAX_MEM),
                    )?;
                }
                "--vcpus" => {
                    o.vcpus = a.parsed(name, "a vCPU count 1..=255", |s| {
                        parse_u64(s)
                            .and_then(|n| u32::try_from(n).ok())
                            .filter(|&n| (1..=MAX_VCPUS).contains(&n))
                    })?;
                }
                "--max-reboots" => {
                    o.max_reboots = Some(a.parsed(name, "a number", parse_u64)?);
                }
                "--audit-log" => o.audit_log = Some(PathBuf::from(a.value(name)?)),
                "--events" => o.events = Some(a.value(name)?.to_string()),
                "--fw-cfg" => {
                    let v = a.value(name)?;
                    let (n, d) = parse_fw_cfg(v)?;
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
                "--quiet" | "-q" => o.quiet = true,
                "--prestage" => o.prestage = true,
                "--no-guest-memfd" => o.no_guest_memfd = true,
                other => return Err(ArgError::UnknownFlag(other.to_string())),
            },
        }
    }
    o.bundle = bundle.ok_or_else(|| ArgError::Other("missing BUNDLE".into()))?;
    Ok(o)
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
pub fn main(args: &[String]) -> u8 {
    if args.iter().any(|a| a == "-h" || a == "--help") {
        return crate::log::print_output("run", format!("{USAGE}\n").as_bytes());
    }
    let opts = match parse(args) {
        Ok(o) => o,
        Err(e) => return usage_error(format_args!("{e}; {USAGE}")),
    };
    let platform = opts.platform.unwrap_or(Platform::Native);
    if platform != Platform::Native {
        return usage_error(format_args!(
            "platform {platform} needs hardware/backend not built yet"
        ));
    }
    let bundle = match read_bundle(&opts.bundle) {
        Ok(b) => b,
        Err(e) => return usage_error(e),
    };
    let bundle_sha256 = crate::json::hex(&Sha256::digest(&bundle));
    let cfg = LaunchConfig {
        platform,
        vcpus: opts.vcpus,
        mem_bytes: opts.mem,
        vcpu_sig: host_signature(),
        guest_features: 0,
        policy: None,
        host_data: [0; 32],
        kernel_hashes: None,
    };
    let t_plan = Instant::now();
    let plan = match make_plan(&bundle, &cfg) {
        Ok(p) => p,
        Err(e) => return usage_error(format_args!("{}: {e}", opts.bundle.display())),
    };
    let plan_time = t_plan.elapsed();
    let host = match Host::open(!opts.no_guest_memfd) {
        Ok(h) => h,
        Err(e) => {
            crate::elog!("relaunch run: {e}");
            return EXIT_VMM_ERROR;
        }
    };
    let mut created = Vec::new();
    let audit = match &opts.audit_log {
        Some(p) => match open_output(p, &mut created) {
            Ok(a) => Some(Arc::new(a)),
            Err(e) => return usage_error(format_args!("--audit-log {}: {e}", p.display())),
        },
        None => None,
    };
    let events = match opts.events.as_deref() {
        None => None,
        Some("-") => Some(Arc::new(EventSink::Stderr)),
        Some(p) => match open_output(p.as_ref(), &mut created) {
            Ok(f) => Some(Arc::new(EventSink::File(f))),
            Err(e) => {
                // Nothing was started: take back the files this run created.
                for c in &created {
                    let _ = std::fs::remove_file(c);
                }
                return usage_error(format_args!("--events {p}: {e}"));
            }
        },
    };
    crate::elog!(
        "relaunch: guest RAM {} MiB via {} ({} vCPU{})",
        opts.mem >> 20,
        host.backing.name(),
        opts.vcpus,
        if opts.vcpus == 1 { "" } else { "s" }
    );
    let console = Arc::new(if opts.quiet {
        Console::discard()
    } else {
        Console::stdout()
    });
    console.spawn_stdin_reader();
    let session = SessionConfig {
        mem_bytes: opts.mem,
        max_reboots: opts.max_reboots,
        prestage: opts.prestage,
        console,
        audit,
        events,
        fw_cfg_files: opts.fw_cfg,
        bundle_sha256,
        platform,
        predicted_measurement: None,
        plan_time,
    };
    let report = run_session(&host, &plan, &session);
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
    if let crate::vcpu::Outcome::VmmError(e) | crate::vcpu::Outcome::GuestFatal(e) = &report.outcome
    {
        crate::elog!("relaunch: launch {}: {e}", report.launches);
    }
    report.exit_code
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

fn read_bundle(path: &std::path::Path) -> Result<Vec<u8>, String> {
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
        parse(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
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
        assert_eq!(o.events.as_deref(), Some("-"));
        assert_eq!(o.fw_cfg[0].1, 5u64.to_le_bytes());
        assert_eq!(o.fw_cfg[1], ("opt/x".to_string(), b"hi".to_vec()));
        assert_eq!(p(&["x"]).unwrap().mem, DEFAULT_MEM);
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
            &["a", "--frobnicate"],
            &["a", "--quiet=1"],
            &["a", "--fw-cfg", "etc/x=u64:1"],
            &["a", "--fw-cfg", "opt/x=7"],
            &["a", "--fw-cfg", "opt/x=u64:1", "--fw-cfg", "opt/x=u64:2"],
        ] {
            assert!(p(bad).is_err(), "{bad:?}");
        }
    }
}
