//! `relaunch measure`: the launch measurement of a bundle, computed offline.
//!
//! ```text
//! relaunch measure FILE --platform <snp|sev|sev-es|tdx> [options]
//! ```
//!
//! The flags are in [`FLAGS`] (also what `--help` prints).
//!
//! Prints the digest as lowercase hex on one line (SNP: the report's MEASUREMENT; SEV and
//! SEV-ES: the SHA-256 launch digest; TDX: MRTD). `--json` prints one JSON object with the
//! inputs and the intermediate facts. Bad flags or a bad bundle: one line on stderr, exit 2.
//!
//! The measurement is `relaunch_core::measure::expected_with` over the plan of
//! `relaunch_core::plan::plan`; this module only adds I/O, flag parsing and the multi-
//! threaded page hashing ([`page_digests_parallel`]).

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;

use relaunch_core::arch::vmsa::kvm_measured_vmsa;
use relaunch_core::measure::{
    self, expected_with, hash_pages, page_digest_jobs, MeasureError, MeasureOptions, Measurement,
    PageDigests,
};
use relaunch_core::ovmf::{detect, InputKind};
use relaunch_core::plan::error::PlanError;
use relaunch_core::plan::{
    plan, KernelHashes, LaunchConfig, LaunchOp, LaunchPlan, PageKind, Platform, VpSource,
};
use serde::Serialize;
use sha2::{Digest, Sha256, Sha384};

use super::launch_flags::{self, LaunchFlags};
use crate::args::{
    one_positional, parse_hex_bytes, parse_u64, wants_help, ArgError, CommandHelp, Cursor, Flag,
    Item, HELP_FLAG,
};
use crate::json;

/// `relaunch measure`'s flags: the parser and `--help` are both built from this table.
pub const FLAGS: &[Flag] = &[
    Flag {
        long: "platform",
        short: None,
        value: Some("P"),
        help: "Platform whose measurement to compute: snp, sev, sev-es or tdx. Required.",
    },
    Flag {
        long: "vcpus",
        short: None,
        value: Some("N"),
        help: "Number of vCPUs, 1 to 255 (SEV-ES and SNP measure one VMSA per vCPU). \
               Default: 1.",
    },
    launch_flags::VCPU_TYPE,
    launch_flags::VCPU_SIG,
    launch_flags::GUEST_FEATURES,
    launch_flags::POLICY,
    Flag {
        long: "mem",
        short: None,
        value: Some("SIZE"),
        help: "Guest RAM for the memory map: a byte count or a size with K, M, G or T, a 4 KiB \
               multiple from 4 KiB to 1 TiB (it does not change a digest). Default: 256M.",
    },
    launch_flags::HOST_DATA,
    launch_flags::KERNEL,
    launch_flags::INITRD,
    launch_flags::APPEND,
    Flag {
        long: "tik",
        short: None,
        value: Some("HEX|FILE"),
        help: "SEV transport integrity key (32 hex digits, or a file of 16 bytes) to compute \
               LAUNCH_MEASURE; needs --mnonce, --api and --build. Default: none.",
    },
    Flag {
        long: "mnonce",
        short: None,
        value: Some("HEX"),
        help: "The MNONCE that LAUNCH_MEASURE returned, 32 hex digits. Default: none.",
    },
    Flag {
        long: "api",
        short: None,
        value: Some("MAJOR.MINOR"),
        help: "SEV firmware API version for LAUNCH_MEASURE, e.g. 1.55. Default: none.",
    },
    Flag {
        long: "build",
        short: None,
        value: Some("N"),
        help: "SEV firmware build number (0-255) for LAUNCH_MEASURE. Default: none.",
    },
    Flag {
        long: "threads",
        short: None,
        value: Some("N"),
        help: "Threads hashing pages (0 = one per available CPU). Default: 0.",
    },
    Flag {
        long: "json",
        short: None,
        value: None,
        help: "Print one JSON object with the inputs, page counts, per-vCPU facts, the ID \
               block check and the digest instead of the digest alone. Default: off.",
    },
    HELP_FLAG,
];

/// `relaunch measure --help`.
pub const HELP: CommandHelp = CommandHelp {
    usage: "relaunch measure FILE --platform <snp|sev|sev-es|tdx> [options]",
    about: "\
Prints the launch measurement of FILE (an IGVM file or an OVMF/TDVF image) as lowercase hex
on one line: SNP the attestation report's MEASUREMENT, SEV and SEV-ES the SHA-256 launch
digest, TDX the MRTD. Nothing is launched. When the bundle carries an SNP ID block, whether
its digest matches is said on stderr.",
    flags: FLAGS,
    notes: "Exit codes: 0 printed; 2 bad flags, an unreadable or invalid file, or a \
missing input.",
    examples: &[
        "relaunch measure guest.igvm --platform snp --vcpu-type EPYC-v4",
        "relaunch measure OVMF.fd --platform sev-es --vcpus 2 --vcpu-type EPYC --kernel vmlinuz --append console=ttyS0",
        "relaunch measure guest.igvm --platform tdx --json",
    ],
};

/// Default guest RAM for planning: the same as `relaunch run`'s, so `measure` predicts what a
/// default `run` launches (it decides the memory map and which imports need their own region;
/// it does not change a digest).
pub const DEFAULT_MEM: u64 = super::run::DEFAULT_MEM;

/// Why `relaunch measure` failed.
#[derive(Debug, thiserror::Error)]
pub enum MeasureCmdError {
    /// Bad command line.
    #[error("{0}")]
    Args(#[from] ArgError),
    /// A file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The bundle cannot be planned.
    #[error("{path}: {source}")]
    Plan {
        /// The bundle path.
        path: PathBuf,
        /// The planning error.
        #[source]
        source: PlanErrorBox,
    },
    /// The plan cannot be measured.
    #[error("{path}: {source}")]
    Measure {
        /// The bundle path.
        path: PathBuf,
        /// The measurement error.
        #[source]
        source: MeasureErrorBox,
    },
    /// The launch needs an input that was not given.
    #[error("{0}")]
    Missing(String),
}

/// [`PlanError`] as a `std::error::Error` (core errors only implement `Display`).
#[derive(Debug)]
pub struct PlanErrorBox(pub PlanError);
impl fmt::Display for PlanErrorBox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}
impl std::error::Error for PlanErrorBox {}

/// [`MeasureError`] as a `std::error::Error`.
#[derive(Debug)]
pub struct MeasureErrorBox(pub MeasureError);
impl fmt::Display for MeasureErrorBox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}
impl std::error::Error for MeasureErrorBox {}

/// SEV `LAUNCH_MEASURE` inputs (`--tik`, `--mnonce`, `--api`, `--build`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchMeasureInputs {
    /// Transport integrity key.
    pub tik: [u8; 16],
    /// The nonce LAUNCH_MEASURE returned.
    pub mnonce: [u8; 16],
    /// SEV API major version.
    pub api_major: u8,
    /// SEV API minor version.
    pub api_minor: u8,
    /// Firmware build.
    pub build: u8,
}

/// The parsed command line.
#[derive(Clone, Debug)]
pub struct MeasureArgs {
    /// The bundle.
    pub file: PathBuf,
    /// The launch config (vcpu_sig 0 when neither `--vcpu-type` nor `--vcpu-sig` is given).
    pub config: LaunchConfig,
    /// `--vcpu-type`, if given.
    pub vcpu_type: Option<String>,
    /// Whether a vCPU signature was given.
    pub sig_given: bool,
    /// Kernel, initrd paths and command line, if `--kernel` was given.
    pub kernel: Option<(PathBuf, Option<PathBuf>, Option<String>)>,
    /// SEV LAUNCH_MEASURE inputs.
    pub launch_measure: Option<LaunchMeasureInputs>,
    /// Threads for page hashing (0 = available parallelism).
    pub threads: usize,
    /// `--json`.
    pub json: bool,
}

/// Runs `relaunch measure` with `args`; returns the exit code.
pub fn main(args: &[OsString]) -> u8 {
    if wants_help(args) {
        return crate::log::print_output("measure", HELP.render().as_bytes());
    }
    match run(args) {
        Ok(out) => crate::log::print_output("measure", format!("{out}\n").as_bytes()),
        Err(MeasureCmdError::Args(ArgError::Help)) => {
            crate::log::print_output("measure", HELP.render().as_bytes())
        }
        Err(e) => {
            crate::elog!("relaunch measure: {}", one_line(&e.to_string()));
            super::EXIT_USAGE
        }
    }
}

/// Collapses an error text to one line.
pub(crate) fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn run(args: &[OsString]) -> Result<String, MeasureCmdError> {
    let a = parse_args(args)?;
    let bundle = std::fs::read(&a.file).map_err(|source| MeasureCmdError::Read {
        path: a.file.clone(),
        source,
    })?;
    let mut cfg = a.config;
    if a.kernel.is_some() && detect(&bundle) == InputKind::Igvm {
        return Err(MeasureCmdError::Missing(
            "--kernel/--initrd/--append fill the SEV kernel-hashes table of an OVMF image; an \
             IGVM bundle carries its own kernel"
                .into(),
        ));
    }
    if let Some((kernel, initrd, append)) = &a.kernel {
        cfg.kernel_hashes = Some(kernel_hashes(kernel, initrd.as_deref(), append.as_deref())?);
    }
    let r = measure_bundle(&bundle, &cfg, a.threads).map_err(|e| match e {
        Failure::Plan(source) => MeasureCmdError::Plan {
            path: a.file.clone(),
            source: PlanErrorBox(source),
        },
        Failure::Measure(source) => MeasureCmdError::Measure {
            path: a.file.clone(),
            source: MeasureErrorBox(source),
        },
    })?;
    if !a.sig_given && matches!(cfg.platform, Platform::Snp | Platform::SevEs) {
        if let Some(vp) = first_reset_vcpu(&r.plan) {
            return Err(MeasureCmdError::Missing(format!(
                "vCPU {vp} starts from the reset state, whose RDX (and so the measured VMSA) is \
                 the CPU signature: give --vcpu-type NAME (e.g. EPYC-v4) or --vcpu-sig HEX"
            )));
        }
    }
    let lm = match (a.launch_measure, r.measurement) {
        (Some(i), Measurement::Sev(d) | Measurement::SevEs(d)) => {
            let policy = u32::try_from(r.policy).unwrap_or(u32::MAX);
            Some((
                i,
                measure::sev::launch_measure(
                    &i.tik,
                    i.api_major,
                    i.api_minor,
                    i.build,
                    policy,
                    &d,
                    &i.mnonce,
                ),
            ))
        }
        (Some(_), _) => {
            return Err(MeasureCmdError::Missing(
                "--tik/--mnonce: LAUNCH_MEASURE exists only on sev and sev-es".into(),
            ))
        }
        (None, _) => None,
    };
    if let Some(id) = r.plan.id_block() {
        // stdout stays one line; the ID block check goes to stderr (and into --json).
        if !a.json {
            let verdict = if measure::id_block_matches(&id.ld(), &r.measurement) {
                "matches"
            } else {
                "does NOT match (SNP_LAUNCH_FINISH would fail with BAD_MEASUREMENT)"
            };
            crate::elog!("relaunch measure: the bundle's SNP ID block ld {verdict} this digest");
        }
    }
    if a.json {
        Ok(report_json(&a, &bundle, &cfg, &r, lm))
    } else {
        Ok(r.measurement.to_string())
    }
}

pub(crate) fn parse_args(args: &[OsString]) -> Result<MeasureArgs, MeasureCmdError> {
    let mut it = Cursor::new(args, FLAGS);
    let mut file = None;
    let mut platform = None;
    let mut vcpus: u32 = 1;
    let mut launch = LaunchFlags::default();
    let mut mem = DEFAULT_MEM;
    let mut tik = None;
    let mut mnonce = None;
    let mut api = None;
    let mut build = None;
    let mut threads = 0usize;
    let mut json = false;
    while let Some(arg) = it.next()? {
        let f = match arg {
            Item::Positional(p) => {
                one_positional(&mut file, p)?;
                continue;
            }
            Item::Flag(f) => f,
        };
        match f.long {
            "platform" => platform = Some(it.confidential_platform(f)?),
            "vcpus" => vcpus = it.vcpus(f)?,
            "mem" => mem = it.mem(f)?,
            "tik" => {
                let v = it.value(f)?;
                tik = Some(match v.to_str().and_then(parse_hex_bytes::<16>) {
                    Some(b) => b,
                    None => read_key(std::path::Path::new(&v))?,
                });
            }
            "mnonce" => mnonce = Some(it.parsed(f, "32 hex digits", parse_hex_bytes)?),
            "api" => {
                api = Some(it.parsed(f, "MAJOR.MINOR, e.g. 1.55", |v| {
                    let (a, b) = v.split_once('.')?;
                    Some((a.parse::<u8>().ok()?, b.parse::<u8>().ok()?))
                })?)
            }
            "build" => {
                build = Some(it.parsed(f, "a firmware build number (0-255)", |v| {
                    parse_u64(v).and_then(|n| u8::try_from(n).ok())
                })?)
            }
            "threads" => {
                threads = it.parsed(f, "a thread count", |v| {
                    parse_u64(v).and_then(|n| usize::try_from(n).ok())
                })?
            }
            "json" => json = true,
            _ if launch.take(f, &mut it)? => {}
            other => return Err(ArgError::Unhandled(other).into()),
        }
    }
    let file = file.ok_or_else(|| ArgError::Other("no bundle FILE given".into()))?;
    let platform = platform
        .ok_or_else(|| ArgError::Other("--platform <snp|sev|sev-es|tdx> is required".into()))?;
    launch.check()?;
    let launch_measure = match (tik, mnonce, api, build) {
        (None, None, None, None) => None,
        (Some(tik), Some(mnonce), Some((api_major, api_minor)), Some(build)) => {
            Some(LaunchMeasureInputs {
                tik,
                mnonce,
                api_major,
                api_minor,
                build,
            })
        }
        _ => {
            return Err(ArgError::Other(
                "LAUNCH_MEASURE needs all of --tik, --mnonce, --api and --build".into(),
            )
            .into())
        }
    };
    Ok(MeasureArgs {
        file,
        config: launch.config(platform, vcpus, mem, 0),
        sig_given: launch.vcpu_sig.is_some(),
        kernel: launch
            .kernel
            .clone()
            .map(|k| (k, launch.initrd.clone(), launch.append.clone())),
        vcpu_type: launch.vcpu_type,
        launch_measure,
        threads,
        json,
    })
}

/// A 16-byte key from a file (sev-tool writes the TIK as 16 raw bytes).
fn read_key(path: &std::path::Path) -> Result<[u8; 16], MeasureCmdError> {
    let bytes = std::fs::read(path).map_err(|e| {
        ArgError::Other(format!(
            "--tik {:?}: neither 32 hex digits nor a readable 16-byte file ({e})",
            path.to_string_lossy()
        ))
    })?;
    <[u8; 16]>::try_from(bytes.as_slice()).map_err(|_| {
        ArgError::BadValue {
            flag: "--tik".into(),
            value: path.to_string_lossy().into_owned(),
            expected: "32 hex digits or a file of exactly 16 bytes",
        }
        .into()
    })
}

fn sha256_file(path: &std::path::Path) -> Result<[u8; 32], MeasureCmdError> {
    let bytes = std::fs::read(path).map_err(|source| MeasureCmdError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(Sha256::digest(&bytes).into())
}

/// The SEV kernel-hashes table entries QEMU fills for `-kernel/-initrd/-append`
/// (`target/i386/sev.c` `sev_add_kernel_loader_hashes`): SHA-256 of the kernel, of the
/// initrd (of nothing when none is given), and of the command line with its NUL (of `"\0"`
/// when none is given).
pub fn kernel_hashes(
    kernel: &std::path::Path,
    initrd: Option<&std::path::Path>,
    append: Option<&str>,
) -> Result<KernelHashes, MeasureCmdError> {
    let initrd = initrd.map(sha256_file).transpose()?;
    Ok(kernel_hashes_from(sha256_file(kernel)?, initrd, append))
}

/// [`kernel_hashes`] from the kernel's and the initrd's SHA-256 (`None`: no initrd).
pub fn kernel_hashes_from(
    kernel: [u8; 32],
    initrd: Option<[u8; 32]>,
    append: Option<&str>,
) -> KernelHashes {
    let mut cmdline = append.unwrap_or("").as_bytes().to_vec();
    cmdline.push(0);
    KernelHashes {
        kernel,
        initrd: initrd.unwrap_or_else(|| Sha256::digest([]).into()),
        cmdline: Sha256::digest(&cmdline).into(),
    }
}

/// Why [`measure_bundle`] failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Planning failed.
    Plan(PlanError),
    /// Measuring failed.
    Measure(MeasureError),
}

/// A bundle's plan, its page digests and its measurement.
#[derive(Debug)]
pub struct Measured<'a> {
    /// The plan.
    pub plan: LaunchPlan<&'a [u8]>,
    /// SHA-384 of every distinct SNP Normal page (empty for other platforms).
    pub digests: PageDigests,
    /// The measurement.
    pub measurement: Measurement,
    /// The launch policy (`CreateVm::policy`).
    pub policy: u64,
    /// `CreateVm::vmsa_features`.
    pub vmsa_features: u64,
}

/// Plans `bundle` for `cfg`, hashes its pages on `threads` threads (0 = available
/// parallelism) and measures it.
///
/// # Errors
/// [`Failure::Plan`] / [`Failure::Measure`].
pub fn measure_bundle<'a>(
    bundle: &'a [u8],
    cfg: &LaunchConfig,
    threads: usize,
) -> Result<Measured<'a>, Failure> {
    let plan = plan(bundle, cfg).map_err(Failure::Plan)?;
    let digests = page_digests_parallel(&plan, threads).map_err(Failure::Measure)?;
    let measurement = expected_with(plan.stream(), Some(&digests), MeasureOptions::default())
        .map_err(Failure::Measure)?;
    let (policy, vmsa_features) = plan
        .ops()
        .iter()
        .find_map(|op| match *op {
            LaunchOp::CreateVm {
                policy,
                vmsa_features,
                ..
            } => Some((policy, vmsa_features)),
            _ => None,
        })
        .unwrap_or((0, 0));
    Ok(Measured {
        plan,
        digests,
        measurement,
        policy,
        vmsa_features,
    })
}

/// The plan's page digests ([`relaunch_core::measure::DigestJobs`]), hashed on `threads`
/// threads (0 = `std::thread::available_parallelism`). Kept with a cached plan, they make
/// a relaunch re-hash nothing.
///
/// # Errors
/// Only if the digest jobs and results disagree (a bug).
pub fn page_digests_parallel(
    plan: &LaunchPlan<&[u8]>,
    threads: usize,
) -> Result<PageDigests, MeasureError> {
    let jobs = page_digest_jobs(plan.stream());
    let threads = match threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let mut out = vec![[0u8; 48]; jobs.len()];
    // Below a few hundred pages, threads cost more than they save.
    if threads <= 1 || jobs.len() < 256 {
        hash_pages(plan, &jobs.pages, &mut out);
    } else {
        let chunk = jobs.len().div_ceil(threads);
        std::thread::scope(|s| {
            for (pages, out) in jobs.pages.chunks(chunk).zip(out.chunks_mut(chunk)) {
                s.spawn(move || hash_pages(plan, pages, out));
            }
        });
    }
    jobs.finish(out)
}

/// The first vCPU whose context is the reset state, if any.
fn first_reset_vcpu(plan: &LaunchPlan<&[u8]>) -> Option<u32> {
    plan.ops().iter().find_map(|op| match *op {
        LaunchOp::SetVpContext {
            vp,
            source: VpSource::Reset,
            ..
        } => Some(vp),
        _ => None,
    })
}

/// Name of a page kind in reports.
pub fn kind_name(kind: PageKind) -> &'static str {
    match kind {
        PageKind::Normal => "normal",
        PageKind::Zero => "zero",
        PageKind::Unmeasured => "unmeasured",
        PageKind::Secrets => "secrets",
        PageKind::Cpuid => "cpuid",
        PageKind::Shared => "shared",
    }
}

/// Name of a VP context source in reports.
pub fn source_name(source: VpSource) -> &'static str {
    match source {
        VpSource::Bundle => "bundle",
        VpSource::Reset => "reset",
        VpSource::TdxInit => "tdx-init",
    }
}

/// Each vCPU's last `SetVpContext`: (vp, source, ctx index), in vCPU order.
pub fn final_vp_contexts(plan: &LaunchPlan<&[u8]>) -> Vec<(u32, VpSource, u32)> {
    let mut v: Vec<(u32, VpSource, u32)> = Vec::new();
    for op in plan.ops() {
        if let LaunchOp::SetVpContext { vp, source, ctx } = *op {
            match v.iter_mut().find(|e| e.0 == vp) {
                Some(e) => *e = (vp, source, ctx),
                None => v.push((vp, source, ctx)),
            }
        }
    }
    v.sort_by_key(|e| e.0);
    v
}

const KINDS: [PageKind; 6] = [
    PageKind::Normal,
    PageKind::Zero,
    PageKind::Unmeasured,
    PageKind::Secrets,
    PageKind::Cpuid,
    PageKind::Shared,
];

/// `measure --json`: one object with the inputs and the intermediate facts.
#[derive(Serialize)]
struct Report<'a> {
    file: String,
    input: &'static str,
    file_size: u64,
    #[serde(serialize_with = "json::hex_bytes")]
    file_sha256: [u8; 32],
    platform: &'static str,
    inputs: Inputs<'a>,
    #[serde(serialize_with = "json::hex_num")]
    policy: u64,
    #[serde(serialize_with = "json::hex_num")]
    vmsa_features: u64,
    pages: Pages,
    vcpus: Vec<VcpuFacts>,
    id_block: Option<IdBlockFacts>,
    launch_measure: Option<LaunchMeasureFacts>,
    algorithm: &'static str,
    digest: String,
}

/// The inputs of a `measure --json` report.
#[derive(Serialize)]
struct Inputs<'a> {
    vcpus: u32,
    vcpu_type: Option<&'a str>,
    #[serde(serialize_with = "json::opt_hex_num")]
    vcpu_sig: Option<u32>,
    #[serde(serialize_with = "json::hex_num")]
    guest_features: u64,
    #[serde(serialize_with = "json::opt_hex_num")]
    policy: Option<u64>,
    mem: u64,
    #[serde(serialize_with = "json::hex_bytes")]
    host_data: [u8; 32],
    kernel_hashes: Option<KernelHashFacts>,
}

#[derive(Serialize)]
struct KernelHashFacts {
    #[serde(serialize_with = "json::hex_bytes")]
    kernel_sha256: [u8; 32],
    #[serde(serialize_with = "json::hex_bytes")]
    initrd_sha256: [u8; 32],
    #[serde(serialize_with = "json::hex_bytes")]
    cmdline_sha256: [u8; 32],
}

/// Imported pages by kind.
#[derive(Serialize)]
struct Pages {
    normal: u64,
    zero: u64,
    unmeasured: u64,
    secrets: u64,
    cpuid: u64,
    shared: u64,
    total: u64,
    distinct_hashed: u64,
    generated: u64,
}

#[derive(Serialize)]
struct VcpuFacts {
    vp: u32,
    source: &'static str,
    #[serde(
        serialize_with = "json::opt_hex_bytes",
        skip_serializing_if = "Option::is_none"
    )]
    vmsa_sha384: Option<[u8; 48]>,
    #[serde(
        serialize_with = "json::opt_hex_bytes",
        skip_serializing_if = "Option::is_none"
    )]
    vmsa_sha256: Option<[u8; 32]>,
    #[serde(
        serialize_with = "json::opt_hex_num",
        skip_serializing_if = "Option::is_none"
    )]
    rip: Option<u64>,
    #[serde(
        serialize_with = "json::opt_hex_num",
        skip_serializing_if = "Option::is_none"
    )]
    rdx: Option<u64>,
}

#[derive(Serialize)]
struct IdBlockFacts {
    #[serde(serialize_with = "json::hex_bytes")]
    ld: [u8; 48],
    matches: bool,
    #[serde(serialize_with = "json::hex_num")]
    policy: u64,
    author_key: bool,
}

#[derive(Serialize)]
struct LaunchMeasureFacts {
    api_major: u8,
    api_minor: u8,
    build: u8,
    #[serde(serialize_with = "json::hex_num")]
    policy: u64,
    #[serde(serialize_with = "json::hex_bytes")]
    mnonce: [u8; 16],
    #[serde(serialize_with = "json::hex_bytes")]
    measure: [u8; 32],
}

fn report_json(
    a: &MeasureArgs,
    bundle: &[u8],
    cfg: &LaunchConfig,
    r: &Measured<'_>,
    lm: Option<(LaunchMeasureInputs, [u8; 32])>,
) -> String {
    let plan = &r.plan;
    let mut counts = [0u64; 6];
    for op in plan.ops() {
        if let LaunchOp::ImportPage { kind, .. } = *op {
            if let Some(i) = KINDS.iter().position(|&k| k == kind) {
                counts[i] += 1;
            }
        }
    }
    let input = match detect(bundle) {
        InputKind::Igvm => "igvm",
        InputKind::Firmware => "firmware",
        InputKind::Unknown => "unknown",
    };
    let [normal, zero, unmeasured, secrets, cpuid, shared] = counts;
    let vcpus = final_vp_contexts(plan)
        .into_iter()
        .map(|(vp, source, ctx)| {
            let mut v = VcpuFacts {
                vp,
                source: source_name(source),
                vmsa_sha384: None,
                vmsa_sha256: None,
                rip: None,
                rdx: None,
            };
            if let Some(regs) = plan.vp_contexts().get(ctx as usize) {
                v.rip = Some(regs.rip);
                if matches!(cfg.platform, Platform::Snp | Platform::SevEs) {
                    let page = kvm_measured_vmsa(
                        regs,
                        r.vmsa_features,
                        cfg.platform,
                        MeasureOptions::default().sev_es_init2,
                    );
                    if cfg.platform == Platform::Snp {
                        v.vmsa_sha384 = Some(Sha384::digest(page).into());
                    } else {
                        v.vmsa_sha256 = Some(Sha256::digest(page).into());
                    }
                    v.rdx = Some(regs.gprs.rdx);
                }
            }
            v
        })
        .collect();
    json::to_line(&Report {
        file: a.file.to_string_lossy().into_owned(),
        input,
        file_size: bundle.len() as u64,
        file_sha256: Sha256::digest(bundle).into(),
        platform: cfg.platform.name(),
        inputs: Inputs {
            vcpus: cfg.vcpus,
            vcpu_type: a.vcpu_type.as_deref(),
            vcpu_sig: a.sig_given.then_some(cfg.vcpu_sig),
            guest_features: cfg.guest_features,
            policy: cfg.policy,
            mem: cfg.mem_bytes,
            host_data: cfg.host_data,
            kernel_hashes: cfg.kernel_hashes.as_ref().map(|k| KernelHashFacts {
                kernel_sha256: k.kernel,
                initrd_sha256: k.initrd,
                cmdline_sha256: k.cmdline,
            }),
        },
        policy: r.policy,
        vmsa_features: r.vmsa_features,
        pages: Pages {
            normal,
            zero,
            unmeasured,
            secrets,
            cpuid,
            shared,
            total: counts.iter().sum(),
            distinct_hashed: r.digests.len() as u64,
            generated: plan.generated().len() as u64,
        },
        vcpus,
        id_block: plan.id_block().as_ref().map(|id| IdBlockFacts {
            ld: id.ld(),
            matches: measure::id_block_matches(&id.ld(), &r.measurement),
            policy: id.policy(),
            author_key: id.author_key_enabled,
        }),
        launch_measure: lm.map(|(i, m)| LaunchMeasureFacts {
            api_major: i.api_major,
            api_minor: i.api_minor,
            build: i.build,
            policy: r.policy,
            mnonce: i.mnonce,
            measure: m,
        }),
        algorithm: match r.measurement {
            Measurement::Sev(_) | Measurement::SevEs(_) => "sha256",
            Measurement::Snp(_) | Measurement::Tdx(_) => "sha384",
            Measurement::None => "none",
        },
        digest: r.measurement.to_string(),
    })
}
