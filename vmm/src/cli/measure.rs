//! `relaunch measure`: the launch measurement of a bundle, computed offline.
//!
//! ```text
//! relaunch measure FILE --platform <snp|sev|sev-es|tdx> [--vcpus N]
//!     [--vcpu-type NAME | --vcpu-sig HEX] [--guest-features HEX] [--policy HEX]
//!     [--mem SIZE] [--host-data HEX32] [--kernel F [--initrd F] [--append S]]
//!     [--tik HEX|FILE --mnonce HEX --api MAJOR.MINOR --build N] [--threads N] [--json]
//! ```
//!
//! Prints the digest as lowercase hex on one line (SNP: the report's MEASUREMENT; SEV and
//! SEV-ES: the SHA-256 launch digest; TDX: MRTD). `--json` prints one JSON object with the
//! inputs and the intermediate facts. Bad flags or a bad bundle: one line on stderr, exit 2.
//!
//! The measurement is `relaunch_core::measure::expected_with` over the plan of
//! `relaunch_core::plan::plan`; this module only adds I/O, flag parsing and the multi-
//! threaded page hashing ([`page_digests_parallel`]).

use std::fmt;
use std::path::PathBuf;

use relaunch_core::arch::cpu::vcpu_sig_by_name;
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
use sha2::{Digest, Sha256, Sha384};

use crate::args::{parse_hex_bytes, parse_hex_u64, parse_size, parse_u64, Arg, ArgError, Args};
use crate::json;

const HELP: &str = "\
usage: relaunch measure FILE --platform <snp|sev|sev-es|tdx> [--vcpus N]
         [--vcpu-type NAME | --vcpu-sig HEX] [--guest-features HEX] [--policy HEX]
         [--mem SIZE] [--host-data HEX] [--kernel FILE [--initrd FILE] [--append STR]]
         [--tik HEX|FILE --mnonce HEX --api MAJOR.MINOR --build N] [--threads N] [--json]
Prints the launch digest of FILE (IGVM or OVMF/TDVF image) as lowercase hex.";

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
pub fn main(args: &[String]) -> u8 {
    if args.iter().any(|a| a == "-h" || a == "--help") {
        return crate::log::print_output("measure", format!("{HELP}\n").as_bytes());
    }
    match run(args) {
        Ok(out) => crate::log::print_output("measure", format!("{out}\n").as_bytes()),
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

fn run(args: &[String]) -> Result<String, MeasureCmdError> {
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

fn parse_args(args: &[String]) -> Result<MeasureArgs, MeasureCmdError> {
    let mut it = Args::new(args);
    let mut file = None;
    let mut platform = None;
    let mut vcpus: u32 = 1;
    let mut vcpu_type = None;
    let mut vcpu_sig = None;
    let mut sig_flag = false;
    let mut guest_features = 0;
    let mut policy = None;
    let mut mem = DEFAULT_MEM;
    let mut host_data = [0u8; 32];
    let mut kernel = None;
    let mut initrd = None;
    let mut append = None;
    let mut tik = None;
    let mut mnonce = None;
    let mut api = None;
    let mut build = None;
    let mut threads = 0usize;
    let mut json = false;
    while let Some(arg) = it.next()? {
        match arg {
            Arg::Positional(p) => {
                if file.replace(PathBuf::from(p)).is_some() {
                    return Err(ArgError::Other(format!("unexpected argument {p:?}")).into());
                }
            }
            Arg::Flag { name, .. } => match name {
                "--platform" => {
                    platform = Some(it.parsed(name, "snp, sev, sev-es or tdx", |v| {
                        match Platform::from_name(v) {
                            Some(Platform::Native) | None => None,
                            p => p,
                        }
                    })?)
                }
                "--vcpus" => {
                    vcpus = it.parsed(name, "a vCPU count (1-4096)", |v| {
                        parse_u64(v)
                            .and_then(|n| u32::try_from(n).ok())
                            .filter(|&n| (1..=4096).contains(&n))
                    })?
                }
                "--vcpu-type" => {
                    let v = it.value(name)?;
                    let sig = vcpu_sig_by_name(v).ok_or_else(|| ArgError::BadValue {
                        flag: name.into(),
                        value: v.into(),
                        expected: "a QEMU -cpu model (EPYC, EPYC-v4, EPYC-Rome, EPYC-Milan, \
                                   EPYC-Genoa, ...)",
                    })?;
                    vcpu_type = Some(v.to_string());
                    vcpu_sig = Some(sig);
                }
                "--vcpu-sig" => {
                    sig_flag = true;
                    vcpu_sig = Some(it.parsed(name, "a 32-bit hex CPUID(1).EAX", |v| {
                        parse_hex_u64(v).and_then(|n| u32::try_from(n).ok())
                    })?)
                }
                "--guest-features" => {
                    guest_features = it.parsed(name, "a hex SEV_FEATURES value", parse_hex_u64)?
                }
                "--policy" => policy = Some(it.parsed(name, "a hex policy", parse_hex_u64)?),
                "--mem" => {
                    mem = it.parsed(name, "a size such as 512M or 2G", |v| {
                        parse_size(v).filter(|&n| n > 0 && n.is_multiple_of(4096))
                    })?
                }
                "--host-data" => {
                    host_data = it.parsed(name, "64 hex digits", parse_hex_bytes::<32>)?
                }
                "--kernel" => kernel = Some(PathBuf::from(it.value(name)?)),
                "--initrd" => initrd = Some(PathBuf::from(it.value(name)?)),
                "--append" => append = Some(it.value(name)?.to_string()),
                "--tik" => {
                    let v = it.value(name)?;
                    tik = Some(match parse_hex_bytes::<16>(v) {
                        Some(b) => b,
                        None => read_key(v)?,
                    });
                }
                "--mnonce" => mnonce = Some(it.parsed(name, "32 hex digits", parse_hex_bytes)?),
                "--api" => {
                    api = Some(it.parsed(name, "MAJOR.MINOR, e.g. 1.55", |v| {
                        let (a, b) = v.split_once('.')?;
                        Some((a.parse::<u8>().ok()?, b.parse::<u8>().ok()?))
                    })?)
                }
                "--build" => {
                    build = Some(it.parsed(name, "a firmware build number (0-255)", |v| {
                        parse_u64(v).and_then(|n| u8::try_from(n).ok())
                    })?)
                }
                "--threads" => {
                    threads = it.parsed(name, "a thread count", |v| {
                        parse_u64(v).and_then(|n| usize::try_from(n).ok())
                    })?
                }
                "--json" => json = true,
                other => return Err(ArgError::UnknownFlag(other.to_string()).into()),
            },
        }
    }
    let file = file.ok_or_else(|| ArgError::Other("no bundle FILE given".into()))?;
    let platform = platform
        .ok_or_else(|| ArgError::Other("--platform <snp|sev|sev-es|tdx> is required".into()))?;
    if vcpu_type.is_some() && sig_flag {
        return Err(ArgError::Other("give --vcpu-type or --vcpu-sig, not both".into()).into());
    }
    if kernel.is_none() && (initrd.is_some() || append.is_some()) {
        return Err(ArgError::Other("--initrd and --append need --kernel".into()).into());
    }
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
        config: LaunchConfig {
            platform,
            vcpus,
            mem_bytes: mem,
            vcpu_sig: vcpu_sig.unwrap_or(0),
            guest_features,
            policy,
            host_data,
            kernel_hashes: None,
        },
        vcpu_type,
        sig_given: vcpu_sig.is_some(),
        kernel: kernel.map(|k| (k, initrd, append)),
        launch_measure,
        threads,
        json,
    })
}

/// A 16-byte key from a file (sev-tool writes the TIK as 16 raw bytes).
fn read_key(path: &str) -> Result<[u8; 16], MeasureCmdError> {
    let bytes = std::fs::read(path).map_err(|e| {
        ArgError::Other(format!(
            "--tik {path:?}: neither 32 hex digits nor a readable 16-byte file ({e})"
        ))
    })?;
    <[u8; 16]>::try_from(bytes.as_slice()).map_err(|_| {
        ArgError::BadValue {
            flag: "--tik".into(),
            value: path.into(),
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
    let kernel = sha256_file(kernel)?;
    let initrd = match initrd {
        Some(p) => sha256_file(p)?,
        None => Sha256::digest([]).into(),
    };
    let mut cmdline = append.unwrap_or("").as_bytes().to_vec();
    cmdline.push(0);
    Ok(KernelHashes {
        kernel,
        initrd,
        cmdline: Sha256::digest(&cmdline).into(),
    })
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
    json::object(|o| {
        o.str("file", &a.file.to_string_lossy())
            .str("input", input)
            .u64("file_size", bundle.len() as u64)
            .hex("file_sha256", &Sha256::digest(bundle))
            .str("platform", cfg.platform.name())
            .object("inputs", |o| {
                o.u64("vcpus", cfg.vcpus.into())
                    .opt_str("vcpu_type", a.vcpu_type.as_deref());
                if a.sig_given {
                    o.hex_u64("vcpu_sig", cfg.vcpu_sig.into());
                } else {
                    o.null("vcpu_sig");
                }
                o.hex_u64("guest_features", cfg.guest_features);
                match cfg.policy {
                    Some(p) => o.hex_u64("policy", p),
                    None => o.null("policy"),
                };
                o.u64("mem", cfg.mem_bytes).hex("host_data", &cfg.host_data);
                match &cfg.kernel_hashes {
                    Some(k) => o.object("kernel_hashes", |o| {
                        o.hex("kernel_sha256", &k.kernel)
                            .hex("initrd_sha256", &k.initrd)
                            .hex("cmdline_sha256", &k.cmdline);
                    }),
                    None => o.null("kernel_hashes"),
                };
            })
            .hex_u64("policy", r.policy)
            .hex_u64("vmsa_features", r.vmsa_features)
            .object("pages", |o| {
                for (k, n) in KINDS.iter().zip(counts) {
                    o.u64(kind_name(*k), n);
                }
                o.u64("total", counts.iter().sum())
                    .u64("distinct_hashed", r.digests.len() as u64)
                    .u64("generated", plan.generated().len() as u64);
            })
            .array("vcpus", |arr| {
                for (vp, source, ctx) in final_vp_contexts(plan) {
                    arr.object(|o| {
                        o.u64("vp", vp.into()).str("source", source_name(source));
                        let regs = plan.vp_contexts().get(ctx as usize);
                        match (cfg.platform, regs) {
                            (Platform::Snp | Platform::SevEs, Some(regs)) => {
                                let page = kvm_measured_vmsa(
                                    regs,
                                    r.vmsa_features,
                                    cfg.platform,
                                    MeasureOptions::default().sev_es_init2,
                                );
                                if cfg.platform == Platform::Snp {
                                    o.hex("vmsa_sha384", &Sha384::digest(page));
                                } else {
                                    o.hex("vmsa_sha256", &Sha256::digest(page));
                                }
                                o.hex_u64("rip", regs.rip).hex_u64("rdx", regs.gprs.rdx);
                            }
                            (_, Some(regs)) => {
                                o.hex_u64("rip", regs.rip);
                            }
                            _ => {}
                        }
                    });
                }
            });
        match plan.id_block() {
            Some(id) => o.object("id_block", |o| {
                o.hex("ld", &id.ld())
                    .bool(
                        "matches",
                        measure::id_block_matches(&id.ld(), &r.measurement),
                    )
                    .hex_u64("policy", id.policy())
                    .bool("author_key", id.author_key_enabled);
            }),
            None => o.null("id_block"),
        };
        match lm {
            Some((i, m)) => o.object("launch_measure", |o| {
                o.u64("api_major", i.api_major.into())
                    .u64("api_minor", i.api_minor.into())
                    .u64("build", i.build.into())
                    .hex_u64("policy", r.policy)
                    .hex("mnonce", &i.mnonce)
                    .hex("measure", &m);
            }),
            None => o.null("launch_measure"),
        };
        o.str(
            "algorithm",
            match r.measurement {
                Measurement::Sev(_) | Measurement::SevEs(_) => "sha256",
                Measurement::Snp(_) | Measurement::Tdx(_) => "sha384",
                Measurement::None => "none",
            },
        )
        .str("digest", &r.measurement.to_string());
    })
}
