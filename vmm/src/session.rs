//! The relaunch loop: execute the cached plan on a fresh VM, run it, and on every guest reset
//! hand the old VM to a reaper thread (closing its fds off the critical path) and execute the
//! plan again on a new VM fd. With `prestage`, the next VM is built while the guest runs, so a
//! reset only swaps VMs.
//!
//! Recipe per launch: build (or take the prestaged VM) → audit `launch` record (written before
//! the guest runs) → devices + vCPU threads → wait for the outcome → stop vCPUs → event line +
//! audit `exit` record → reaper ← old VM → decide (relaunch / exit code).

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::ScopedJoinHandle;
use std::time::{Duration, Instant};

use relaunch_core::plan::{LaunchOp, LaunchPlan, Platform};

use crate::audit::{unix_ms, AuditLog, EventSink, JsonObj};
use crate::backend::native::{build_vm, BuiltVm};
use crate::backend::ExecError;
use crate::devices::console::Console;
use crate::devices::fw_cfg::FwCfg;
use crate::devices::{Devices, LaunchClock};
use crate::vcpu::{run_vcpu, stop_all, Outcome, RunControl};
use crate::vstate::Host;

/// Exit code: the guest powered off.
pub const EXIT_POWER_OFF: u8 = 0;
/// Exit code: the VMM failed.
pub const EXIT_VMM_ERROR: u8 = 1;
/// Exit code: bad flags or bad input; nothing was started.
pub const EXIT_USAGE: u8 = 2;
/// Exit code: the guest crashed (pvpanic, crash event, KVM internal error, failed entry).
pub const EXIT_GUEST_FATAL: u8 = 3;
/// Exit code: the guest asked for a reset after `--max-reboots` relaunches.
pub const EXIT_REBOOT_LIMIT: u8 = 4;

/// Latency samples kept at most (the report stays bounded however long the guest loops).
pub const MAX_SAMPLES: usize = 65536;

/// Everything a session needs besides the host and the plan.
#[derive(Debug)]
pub struct SessionConfig {
    /// Guest RAM bytes.
    pub mem_bytes: u64,
    /// Relaunches allowed (`None` = unlimited).
    pub max_reboots: Option<u64>,
    /// Build the next VM while the guest runs.
    pub prestage: bool,
    /// Guest console.
    pub console: Arc<Console>,
    /// Audit log.
    pub audit: Option<Arc<AuditLog>>,
    /// Event lines.
    pub events: Option<Arc<EventSink>>,
    /// Extra fw_cfg files (validated).
    pub fw_cfg_files: Vec<(String, Vec<u8>)>,
    /// SHA-256 of the bundle, hex.
    pub bundle_sha256: String,
    /// Platform (for the records).
    pub platform: Platform,
    /// Predicted launch measurement, hex (`None` for native).
    pub predicted_measurement: Option<String>,
    /// Time the planner took (once per bundle).
    pub plan_time: Duration,
}

/// How a session ended.
#[derive(Debug)]
pub struct SessionReport {
    /// Launches started.
    pub launches: u64,
    /// Outcome of the last launch (or the error that stopped the session).
    pub outcome: Outcome,
    /// Process exit code per the reboot contract.
    pub exit_code: u8,
    /// Per relaunch: reset request → first port-0x80 write of the next launch.
    pub relaunch_latency: Vec<Duration>,
    /// Per relaunch: reset request → vCPU threads of the next launch started.
    pub reset_to_start: Vec<Duration>,
}

fn us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// The exit code of an outcome that ends the session.
pub fn exit_code(outcome: &Outcome) -> u8 {
    match outcome {
        Outcome::PowerOff(_) => EXIT_POWER_OFF,
        Outcome::Reset(_) => EXIT_REBOOT_LIMIT,
        Outcome::GuestFatal(_) => EXIT_GUEST_FATAL,
        Outcome::VmmError(_) => EXIT_VMM_ERROR,
    }
}

fn plan_vcpus(plan: &LaunchPlan) -> u32 {
    plan.ops
        .iter()
        .find_map(|op| match op {
            LaunchOp::CreateVm { vcpus, .. } => Some(*vcpus),
            _ => None,
        })
        .unwrap_or(plan.config.vcpus)
}

struct Reap {
    vm: Option<BuiltVm>,
    audit: Option<Arc<AuditLog>>,
}

/// Runs launches of `plan` until power-off, a fatal event, an error or the reboot limit.
pub fn run_session(host: &Host, plan: &LaunchPlan, cfg: &SessionConfig) -> SessionReport {
    let vcpus = plan_vcpus(plan);
    let nb_cpus = u16::try_from(vcpus).unwrap_or(u16::MAX);
    std::thread::scope(|s| {
        let (tx, rx) = mpsc::channel::<Reap>();
        let reaper = std::thread::Builder::new()
            .name("reaper".into())
            .spawn_scoped(s, move || {
                for item in rx {
                    drop(item.vm);
                    if let Some(a) = item.audit {
                        let _ = a.sync();
                    }
                }
            });
        if let Err(e) = reaper {
            return SessionReport {
                launches: 0,
                outcome: Outcome::VmmError(format!("spawning the reaper thread: {e}")),
                exit_code: EXIT_VMM_ERROR,
                relaunch_latency: Vec::new(),
                reset_to_start: Vec::new(),
            };
        }
        let mut report = SessionReport {
            launches: 0,
            outcome: Outcome::VmmError("no launch".into()),
            exit_code: EXIT_VMM_ERROR,
            relaunch_latency: Vec::new(),
            reset_to_start: Vec::new(),
        };
        let mut generation: u64 = 1;
        let mut reboots: u64 = 0;
        let mut reset_at: Option<Instant> = None;
        let mut staged: Option<ScopedJoinHandle<'_, Result<BuiltVm, ExecError>>> = None;
        loop {
            let t_build = Instant::now();
            let prestaged = staged.is_some();
            let built = match staged.take() {
                Some(h) => h.join().unwrap_or_else(|_| {
                    Err(ExecError {
                        index: 0,
                        op: crate::backend::OpKind::CreateVm,
                        source: crate::backend::BackendError::Order("prestage thread panicked"),
                    })
                }),
                None => build_vm(host, cfg.mem_bytes, plan),
            };
            let swap = t_build.elapsed();
            let built = match built {
                Ok(b) => b,
                Err(e) => {
                    report.outcome = Outcome::VmmError(format!("executing the launch plan: {e}"));
                    report.exit_code = EXIT_VMM_ERROR;
                    emit_failure(cfg, generation, &report.outcome);
                    break;
                }
            };
            report.launches = generation;
            let record = launch_record(cfg, generation, &built, swap, prestaged, vcpus, host);
            if let Some(a) = &cfg.audit {
                if let Err(e) = a.append(&record) {
                    // Never run a guest whose launch is not on record.
                    report.outcome = Outcome::VmmError(format!("writing the audit log: {e}"));
                    report.exit_code = EXIT_VMM_ERROR;
                    let _ = tx.send(Reap {
                        vm: Some(built),
                        audit: None,
                    });
                    break;
                }
            }
            let BuiltVm {
                vcpus: vcpu_fds,
                vm,
                memory,
                timings,
            } = built;
            let clock = Arc::new(LaunchClock::start());
            let devices = Arc::new(Mutex::new(Devices::new(
                Arc::clone(&cfg.console),
                Arc::clone(&memory),
                Arc::clone(&clock),
                FwCfg::new(generation, nb_cpus, &cfg.fw_cfg_files),
            )));
            let ctl = Arc::new(RunControl::new());
            let mut threads = Vec::with_capacity(vcpu_fds.len());
            for (id, vcpu) in vcpu_fds.into_iter().enumerate() {
                let (ctl2, dev2, clock2) =
                    (Arc::clone(&ctl), Arc::clone(&devices), Arc::clone(&clock));
                let id = id as u32;
                match std::thread::Builder::new()
                    .name(format!("vcpu{id}"))
                    .spawn(move || run_vcpu(vcpu, id, ctl2, dev2, clock2))
                {
                    Ok(t) => threads.push(t),
                    Err(e) => {
                        ctl.post(Outcome::VmmError(format!("spawning vCPU thread {id}: {e}")));
                        break;
                    }
                }
            }
            if let Some(r) = reset_at {
                if report.reset_to_start.len() < MAX_SAMPLES {
                    report.reset_to_start.push(clock.started.duration_since(r));
                }
            }
            let may_relaunch = cfg.max_reboots.is_none_or(|m| reboots < m);
            if cfg.prestage && may_relaunch {
                staged = Some(s.spawn(|| build_vm(host, cfg.mem_bytes, plan)));
            }
            let (outcome, at) = ctl.wait();
            let t_stop = Instant::now();
            let vcpu_fds = stop_all(threads);
            let stop = t_stop.elapsed();
            cfg.console.flush();
            let latency =
                reset_at.and_then(|r| clock.boot_marker.get().map(|b| b.duration_since(r)));
            if let Some(l) = latency {
                if report.relaunch_latency.len() < MAX_SAMPLES {
                    report.relaunch_latency.push(l);
                }
            }
            let (unknown, fw_errors) = {
                let d = devices
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                (d.unknown, d.fw_cfg_errors())
            };
            let is_reset = matches!(outcome, Outcome::Reset(_));
            let final_code = if is_reset && may_relaunch {
                None
            } else {
                Some(exit_code(&outcome))
            };
            let tj = JsonObj::new()
                .opt_u64(
                    "reset_to_start_us",
                    reset_at.map(|r| us(clock.started.duration_since(r))),
                )
                .opt_u64(
                    "first_exit_us",
                    clock
                        .first_exit
                        .get()
                        .map(|t| us(t.duration_since(clock.started))),
                )
                .opt_u64(
                    "boot_marker_us",
                    clock
                        .boot_marker
                        .get()
                        .map(|t| us(t.duration_since(clock.started))),
                )
                .opt_u64("relaunch_latency_us", latency.map(us))
                .u64("run_us", us(at.duration_since(clock.started)))
                .u64("stop_us", us(stop))
                .u64("execute_us", us(timings.total))
                .u64("swap_us", us(swap));
            let mut exit = JsonObj::new()
                .str("event", "exit")
                .u64("time_ms", unix_ms())
                .u64("generation", generation)
                .str("outcome", outcome.kind())
                .str("reason", &outcome.reason())
                .opt_u64("exit_code", final_code.map(u64::from))
                .obj("timings", tj)
                .u64("unknown_io", unknown)
                .u64("fw_cfg_dma_errors", fw_errors);
            if final_code.is_some() {
                // Off the relaunch path: only the last launch reports the VMM's footprint.
                let (rss, fds) = own_footprint();
                exit = exit.opt_u64("vmm_rss_kib", rss).opt_u64("open_fds", fds);
            }
            let exit = exit.finish();
            if let Some(ev) = &cfg.events {
                ev.emit(&exit);
            }
            let audit_ok = cfg.audit.as_ref().is_none_or(|a| a.append(&exit).is_ok());
            drop(devices);
            let _ = tx.send(Reap {
                vm: Some(BuiltVm {
                    vcpus: vcpu_fds,
                    vm,
                    memory,
                    timings,
                }),
                audit: cfg.audit.clone(),
            });
            report.outcome = outcome;
            if !audit_ok {
                report.outcome = Outcome::VmmError("writing the audit log".into());
                report.exit_code = EXIT_VMM_ERROR;
                break;
            }
            if let Some(code) = final_code {
                report.exit_code = code;
                break;
            }
            reboots = reboots.saturating_add(1);
            generation = generation.saturating_add(1);
            reset_at = Some(at);
        }
        if let Some(h) = staged.take() {
            if let Ok(Ok(vm)) = h.join() {
                let _ = tx.send(Reap {
                    vm: Some(vm),
                    audit: None,
                });
            }
        }
        drop(tx);
        report
    })
}

/// The VMM's own resident memory (`RssAnon + RssFile` of `/proc/self/status`, KiB: guest
/// RAM backed by guest_memfd is `RssShmem` and excluded; anonymous guest RAM the VMM touched
/// is included) and its open fd count.
pub fn own_footprint() -> (Option<u64>, Option<u64>) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    };
    let rss = field("RssAnon:")
        .zip(field("RssFile:"))
        .map(|(a, f)| a.saturating_add(f));
    let fds = std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|d| d.count() as u64);
    (rss, fds)
}

fn launch_record(
    cfg: &SessionConfig,
    generation: u64,
    built: &BuiltVm,
    swap: Duration,
    prestaged: bool,
    vcpus: u32,
    host: &Host,
) -> String {
    let t = &built.timings;
    JsonObj::new()
        .str("event", "launch")
        .u64("time_ms", unix_ms())
        .u64("generation", generation)
        .str("bundle_sha256", &cfg.bundle_sha256)
        .str("platform", cfg.platform.name())
        .bool("emulated", false)
        .obj(
            "params",
            JsonObj::new()
                .u64("mem", cfg.mem_bytes)
                .u64("vcpus", u64::from(vcpus))
                .str("memory_backing", host.backing.name())
                .bool("prestage", cfg.prestage)
                .opt_u64("max_reboots", cfg.max_reboots),
        )
        .opt_str(
            "predicted_measurement",
            cfg.predicted_measurement.as_deref(),
        )
        .obj(
            "timings",
            JsonObj::new()
                .u64("plan_us", us(cfg.plan_time))
                .bool("plan_cached", generation > 1)
                .u64("execute_us", us(t.total))
                .u64("create_vm_us", us(t.create_vm))
                .u64("import_us", us(t.import))
                .u64("vp_context_us", us(t.vp_context))
                .bool("prestaged", prestaged)
                .u64("swap_us", us(swap)),
        )
        .finish()
}

fn emit_failure(cfg: &SessionConfig, generation: u64, outcome: &Outcome) {
    let line = JsonObj::new()
        .str("event", "exit")
        .u64("time_ms", unix_ms())
        .u64("generation", generation)
        .str("outcome", outcome.kind())
        .str("reason", &outcome.reason())
        .u64("exit_code", u64::from(exit_code(outcome)))
        .finish();
    if let Some(ev) = &cfg.events {
        ev.emit(&line);
    }
    if let Some(a) = &cfg.audit {
        let _ = a.append(&line);
    }
}
