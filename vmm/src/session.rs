//! The relaunch loop: execute the cached plan on a fresh VM, run it, and on every guest reset
//! hand the old VM to a reaper thread (closing its fds off the critical path) and execute the
//! plan again on a new VM fd. With `prestage`, the next VM is built while the guest runs, so a
//! reset only swaps VMs.
//!
//! Recipe per launch: build (or take the prestaged VM) → audit `launch` record (written before
//! the guest runs) → devices, AP threads, vCPU 0 on the session thread itself → outcome →
//! stop APs → event line + audit `exit` record → decide (relaunch / exit code).
//!
//! The critical path of a relaunch is the session thread alone: vCPU 0's `KVM_RUN` returns
//! the reset on this thread, which builds (or takes) the next VM and enters its `KVM_RUN`
//! with no thread hand-over in between. Everything else waits until the new launch has seen
//! its first exit (or [`DEFER_MAX`]): the reaper then tears the old VM down and, with
//! `prestage`, builds the next one — one after the other on the one reaper thread, so on a
//! 2-CPU host neither competes with the new guest's vCPU nor with each other.

use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use relaunch_core::plan::{LaunchOp, LaunchPlan, Platform};

use crate::audit::{unix_ms, AuditLog, EventSink, JsonObj};
use crate::backend::native::{build_vm, BuiltVm, ExecTimings, Prepared};
use crate::backend::ExecError;
use crate::devices::console::Console;
use crate::devices::fw_cfg::FwCfg;
use crate::devices::{Devices, LaunchClock, UnknownLog};
use crate::sys::kvm::Vcpu;
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

/// The longest the reaper waits for a new launch's first exit before it tears the previous
/// VM down (or builds the prestaged one) anyway: a guest that never exits still gets the old
/// VM's memory back.
pub const DEFER_MAX: Duration = Duration::from_millis(20);

/// Jobs queued for the reaper at most (each holds at most one VM); a full queue makes the
/// session wait.
pub const REAP_QUEUE: usize = 32;

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
    /// Per relaunch: reset request → vCPUs of the next launch started.
    pub reset_to_start: Vec<Duration>,
    /// Unknown guest port/MMIO accesses of the whole session that were not logged
    /// (the log budget is session-wide: [`crate::devices::UnknownLog`]).
    pub unknown_suppressed: u64,
}

fn us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
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
    plan.ops()
        .iter()
        .find_map(|op| match op {
            LaunchOp::CreateVm { vcpus, .. } => Some(*vcpus),
            _ => None,
        })
        .unwrap_or(plan.config().vcpus)
}

/// Work for the reaper thread, done in order.
enum Job {
    /// Once `after` saw its first exit (or [`DEFER_MAX`] passed): `fdatasync` the audit log,
    /// then drop `vm` (on a dropper thread).
    Reap {
        vm: Box<BuiltVm>,
        after: Option<Arc<LaunchClock>>,
        audit: Option<Arc<AuditLog>>,
        /// The ended launch's event line, still to be formatted and written (without an
        /// audit log nothing orders it against the next launch, so it waits until the next
        /// launch runs).
        event: Option<DeferredEvent>,
    },
    /// Write an event line (after every deferred line queued before it).
    Emit { line: String, sink: Arc<EventSink> },
    /// Prestage: build the VM of launch `generation` once `after` saw its first exit.
    Build {
        generation: u64,
        after: Arc<LaunchClock>,
    },
}

type BuildResult = Result<BuiltVm, ExecError>;

enum Slot {
    Idle,
    Wanted(u64),
    Building,
    Ready(BuildResult),
}

/// The prestaged VM, between the reaper (builder) and the session (taker).
struct Stage {
    slot: Mutex<Slot>,
    cv: Condvar,
}

impl Stage {
    fn new() -> Stage {
        Stage {
            slot: Mutex::new(Slot::Idle),
            cv: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The session wants launch `generation` prestaged.
    fn want(&self, generation: u64) {
        *self.lock() = Slot::Wanted(generation);
    }

    /// The builder claims the build of `generation`; false when the session no longer
    /// wants it (it built that VM itself, or the session ended).
    fn begin(&self, generation: u64) -> bool {
        let mut s = self.lock();
        if matches!(*s, Slot::Wanted(g) if g == generation) {
            *s = Slot::Building;
            true
        } else {
            false
        }
    }

    fn finish(&self, r: BuildResult) {
        *self.lock() = Slot::Ready(r);
        self.cv.notify_all();
    }

    /// The prestaged VM: ready, or waited for while the builder is on it. `None` (and a
    /// wanted build not started yet is cancelled) otherwise: the caller builds it itself,
    /// which is faster than waiting for the reaper to get to it.
    fn take(&self) -> Option<BuildResult> {
        let mut s = self.lock();
        loop {
            match std::mem::replace(&mut *s, Slot::Idle) {
                Slot::Ready(r) => return Some(r),
                Slot::Building => {
                    *s = Slot::Building;
                    s = self.cv.wait(s).unwrap_or_else(PoisonError::into_inner);
                }
                Slot::Wanted(_) | Slot::Idle => return None,
            }
        }
    }
}

/// Marks the stage ready with an error if a build unwinds (never leaves the session waiting).
struct BuildGuard<'a>(&'a Stage, bool);

impl Drop for BuildGuard<'_> {
    fn drop(&mut self) {
        if !self.1 {
            self.0.finish(Err(ExecError {
                index: 0,
                op: crate::backend::OpKind::CreateVm,
                source: crate::backend::BackendError::Order("prestage build panicked"),
            }));
        }
    }
}

/// A dead VM for a dropper thread, and the audit log to `fdatasync` before closing it.
type DeadVm = (Box<BuiltVm>, Option<Arc<AuditLog>>);

/// The reaper: waits for each launch's first exit, writes deferred event lines (in order),
/// hands dead VMs to the dropper threads and runs the prestage builds. It never closes a VM
/// itself: a teardown sleeps for milliseconds here (SRCU grace periods; docs/benchmarks.md)
/// and would hold up the next prestage build.
fn reaper(
    rx: mpsc::Receiver<Job>,
    droppers: mpsc::SyncSender<DeadVm>,
    host: &Host,
    prep: &Prepared,
    plan: &LaunchPlan,
    stage: &Stage,
) {
    // Woken at every launch start and first exit: it must not push the vCPU thread off its
    // CPU at that moment (best effort; measured ≈ 0.03 ms better prestage p50 here).
    let _ = crate::sys::cpu::set_current_thread_batch();
    for job in rx {
        match job {
            Job::Reap {
                vm,
                after,
                audit,
                event,
            } => {
                if let Some(c) = after {
                    c.wait_first_exit(DEFER_MAX);
                }
                if let Some((line, sink)) = event {
                    sink.emit(&line.finish());
                }
                if let Err(mpsc::SendError((vm, audit))) = droppers.send((vm, audit)) {
                    // No dropper left (cannot happen while the session runs): do it here.
                    if let Some(a) = audit {
                        let _ = a.sync();
                    }
                    drop(vm);
                }
            }
            Job::Emit { line, sink } => sink.emit(&line),
            Job::Build { generation, after } => {
                after.wait_first_exit(DEFER_MAX);
                if stage.begin(generation) {
                    let mut guard = BuildGuard(stage, false);
                    let r = build_vm(host, prep, plan);
                    guard.1 = true;
                    stage.finish(r);
                }
            }
        }
    }
}

/// A dropper thread: `fdatasync`s the audit log (the records up to the running launch's
/// `launch` record), then closes the dead VM (several droppers overlap their sleeping
/// teardowns). Syncing first makes the records durable as soon as the new launch is under
/// way instead of after a teardown of milliseconds (docs/reboot-contract.md).
fn dropper(rx: &Mutex<mpsc::Receiver<DeadVm>>) {
    let _ = crate::sys::cpu::set_current_thread_batch();
    loop {
        let next = rx.lock().unwrap_or_else(PoisonError::into_inner).recv();
        let Ok((vm, audit)) = next else { return };
        if let Some(a) = audit {
            let _ = a.sync();
        }
        drop(vm);
    }
}

/// Dropper threads per session.
pub const DROPPERS: usize = 2;

fn empty_report(outcome: Outcome) -> SessionReport {
    SessionReport {
        launches: 0,
        outcome,
        exit_code: EXIT_VMM_ERROR,
        relaunch_latency: Vec::new(),
        reset_to_start: Vec::new(),
        unknown_suppressed: 0,
    }
}

/// Runs launches of `plan` until power-off, a fatal event, an error or the reboot limit.
/// vCPU 0 of every launch runs on the calling thread.
pub fn run_session(host: &Host, plan: &LaunchPlan, cfg: &SessionConfig) -> SessionReport {
    let vcpus = plan_vcpus(plan);
    let nb_cpus = u16::try_from(vcpus).unwrap_or(u16::MAX);
    let prep = Prepared::new(host, cfg.mem_bytes, plan);
    let stage = Stage::new();
    let unknown_log = Arc::new(UnknownLog::new());
    let (drop_tx, drop_rx) = mpsc::sync_channel::<DeadVm>(REAP_QUEUE);
    let drop_rx = Mutex::new(drop_rx);
    std::thread::scope(|s| {
        // Bounded: a guest that resets faster than VMs can be torn down makes the relaunch
        // wait for the reaper instead of piling up dead VMs (and their memory) without limit.
        let (tx, rx) = mpsc::sync_channel::<Job>(REAP_QUEUE);
        let (prep, stage, drop_rx) = (&prep, &stage, &drop_rx);
        for i in 0..DROPPERS {
            if let Err(e) = std::thread::Builder::new()
                .name(format!("dropper{i}"))
                .spawn_scoped(s, move || dropper(drop_rx))
            {
                return empty_report(Outcome::VmmError(format!("spawning a dropper thread: {e}")));
            }
        }
        let reaper = std::thread::Builder::new()
            .name("reaper".into())
            .spawn_scoped(s, move || reaper(rx, drop_tx, host, prep, plan, stage));
        if let Err(e) = reaper {
            return empty_report(Outcome::VmmError(format!(
                "spawning the reaper thread: {e}"
            )));
        }
        let mut report = empty_report(Outcome::VmmError("no launch".into()));
        let mut generation: u64 = 1;
        let mut reboots: u64 = 0;
        let mut reset_at: Option<Instant> = None;
        // The previous launch's VM, reaped once this launch has started.
        let mut old: Option<(BuiltVm, Option<DeferredEvent>)> = None;
        loop {
            let t_build = Instant::now();
            let staged = if cfg.prestage { stage.take() } else { None };
            let prestaged = staged.is_some();
            let built = staged.unwrap_or_else(|| build_vm(host, prep, plan));
            let swap = t_build.elapsed();
            let built = match built {
                Ok(b) => b,
                Err(e) => {
                    report.outcome = Outcome::VmmError(format!("executing the launch plan: {e}"));
                    report.exit_code = EXIT_VMM_ERROR;
                    let line = failure_line(generation, &report.outcome);
                    if let Some(a) = &cfg.audit {
                        let _ = a.append(&line);
                    }
                    if let Some(sink) = &cfg.events {
                        if cfg.audit.is_some() {
                            sink.emit(&line);
                        } else {
                            // Behind the previous launch's deferred line, in the reaper.
                            if let Some((vm, event)) = old.take() {
                                let _ = tx.send(Job::Reap {
                                    vm: Box::new(vm),
                                    after: None,
                                    audit: None,
                                    event,
                                });
                            }
                            let _ = tx.send(Job::Emit {
                                line,
                                sink: Arc::clone(sink),
                            });
                        }
                    }
                    break;
                }
            };
            report.launches = generation;
            if let Some(a) = &cfg.audit {
                let record = launch_record(cfg, generation, &built, swap, prestaged, vcpus, host);
                if let Err(e) = a.append(&record) {
                    // Never run a guest whose launch is not on record.
                    report.outcome = Outcome::VmmError(format!("writing the audit log: {e}"));
                    report.exit_code = EXIT_VMM_ERROR;
                    let _ = tx.send(Job::Reap {
                        vm: Box::new(built),
                        after: None,
                        audit: None,
                        event: None,
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
                Arc::clone(&unknown_log),
            )));
            let ctl = Arc::new(RunControl::with_main_thread());
            let mut fds = vcpu_fds.into_iter();
            let bsp = fds.next();
            let mut aps = Vec::with_capacity(fds.len());
            for (i, vcpu) in fds.enumerate() {
                let (ctl2, dev2, clock2) =
                    (Arc::clone(&ctl), Arc::clone(&devices), Arc::clone(&clock));
                let id = u32::try_from(i).unwrap_or(u32::MAX).saturating_add(1);
                match std::thread::Builder::new()
                    .name(format!("vcpu{id}"))
                    .spawn(move || run_vcpu(vcpu, id, ctl2, dev2, clock2))
                {
                    Ok(t) => aps.push(t),
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
            // Off the critical path: the reaper gets to these after this launch's first exit,
            // teardown first, then the prestage build (one thread: they never overlap; the
            // other order measured slower here, docs/benchmarks.md).
            let may_relaunch = cfg.max_reboots.is_none_or(|m| reboots < m);
            let next = generation.saturating_add(1);
            if let Some((vm, event)) = old.take() {
                let _ = tx.send(Job::Reap {
                    vm: Box::new(vm),
                    after: Some(Arc::clone(&clock)),
                    audit: cfg.audit.clone(),
                    event,
                });
            }
            if cfg.prestage && may_relaunch {
                stage.want(next);
                let _ = tx.send(Job::Build {
                    generation: next,
                    after: Arc::clone(&clock),
                });
            }
            // vCPU 0 on this thread, until an outcome is posted (an AP's post kicks us).
            let bsp = bsp.map(|v| {
                run_vcpu(
                    v,
                    0,
                    Arc::clone(&ctl),
                    Arc::clone(&devices),
                    Arc::clone(&clock),
                )
            });
            let (outcome, at) = ctl.wait();
            let t_stop = Instant::now();
            let mut vcpu_fds: Vec<Vcpu> = bsp.into_iter().collect();
            vcpu_fds.extend(stop_all(aps));
            let stop = t_stop.elapsed();
            let latency =
                reset_at.and_then(|r| clock.boot_marker.get().map(|b| b.duration_since(r)));
            if let Some(l) = latency {
                if report.relaunch_latency.len() < MAX_SAMPLES {
                    report.relaunch_latency.push(l);
                }
            }
            let (unknown, fw_errors) = {
                let d = devices.lock().unwrap_or_else(PoisonError::into_inner);
                (d.unknown, d.fw_cfg_errors())
            };
            let is_reset = matches!(outcome, Outcome::Reset(_));
            let final_code = if is_reset && may_relaunch {
                None
            } else {
                Some(exit_code(&outcome))
            };
            let times = LaunchTimes {
                reset_to_start: reset_at.map(|r| clock.started.duration_since(r)),
                first_exit: clock
                    .first_exit
                    .get()
                    .map(|t| t.duration_since(clock.started)),
                boot_marker: clock
                    .boot_marker
                    .get()
                    .map(|t| t.duration_since(clock.started)),
                relaunch_latency: latency,
                run: at.duration_since(clock.started),
                stop,
                swap,
                build: timings,
            };
            let line = ExitLine {
                time_ms: unix_ms(),
                generation,
                kind: outcome.kind(),
                reason: outcome.reason(),
                exit_code: final_code,
                times,
                unknown,
                fw_errors,
                // Off the relaunch path: only the last launch reports the VMM's footprint.
                footprint: final_code.map(|_| own_footprint()),
            };
            let mut audit_ok = true;
            let mut deferred = None;
            if let Some(a) = &cfg.audit {
                // The audit `exit` record must precede the next `launch` record: now.
                let text = line.finish();
                if let Some(ev) = &cfg.events {
                    ev.emit(&text);
                }
                audit_ok = a.append(&text).is_ok();
            } else if let Some(ev) = &cfg.events {
                deferred = Some((Box::new(line), Arc::clone(ev)));
            }
            drop(devices);
            old = Some((
                BuiltVm {
                    vcpus: vcpu_fds,
                    vm,
                    memory,
                    timings,
                },
                deferred,
            ));
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
            generation = next;
            reset_at = Some(at);
        }
        if let Some((vm, event)) = old.take() {
            let _ = tx.send(Job::Reap {
                vm: Box::new(vm),
                after: None,
                audit: cfg.audit.clone(),
                event,
            });
        }
        // A prestaged VM nobody will run (power-off, reboot limit, error).
        if let Some(Ok(vm)) = stage.take() {
            let _ = tx.send(Job::Reap {
                vm: Box::new(vm),
                after: None,
                audit: None,
                event: None,
            });
        }
        drop(tx);
        report.unknown_suppressed = unknown_log.suppressed();
        report
    })
}

/// An event line to write later, and where.
type DeferredEvent = (Box<ExitLine>, Arc<EventSink>);

/// The `exit` event line of one launch, formatted on demand (off the relaunch path when no
/// audit log needs it at once).
struct ExitLine {
    time_ms: u64,
    generation: u64,
    kind: &'static str,
    reason: String,
    exit_code: Option<u8>,
    times: LaunchTimes,
    unknown: u64,
    fw_errors: u64,
    footprint: Option<(Option<u64>, Option<u64>)>,
}

impl ExitLine {
    fn finish(&self) -> String {
        let mut exit = JsonObj::new()
            .str("event", "exit")
            .u64("time_ms", self.time_ms)
            .u64("generation", self.generation)
            .str("outcome", self.kind)
            .str("reason", &self.reason)
            .opt_u64("exit_code", self.exit_code.map(u64::from))
            .obj("timings", self.times.json())
            .u64("unknown_io", self.unknown)
            .u64("fw_cfg_dma_errors", self.fw_errors);
        if let Some((rss, fds)) = self.footprint {
            exit = exit.opt_u64("vmm_rss_kib", rss).opt_u64("open_fds", fds);
        }
        exit.finish()
    }
}

/// Per-launch timings of the `exit` event line.
struct LaunchTimes {
    reset_to_start: Option<Duration>,
    first_exit: Option<Duration>,
    boot_marker: Option<Duration>,
    relaunch_latency: Option<Duration>,
    run: Duration,
    stop: Duration,
    swap: Duration,
    build: ExecTimings,
}

impl LaunchTimes {
    /// Every timing in µs (`*_us`, the original fields) and ns (`*_ns`), plus the build
    /// steps in ns.
    fn json(&self) -> JsonObj {
        let b = &self.build;
        let both = |o: JsonObj, name: &str, d: Option<Duration>| {
            o.opt_u64(&format!("{name}_us"), d.map(us))
                .opt_u64(&format!("{name}_ns"), d.map(ns))
        };
        let mut o = JsonObj::new();
        o = both(o, "reset_to_start", self.reset_to_start);
        o = both(o, "first_exit", self.first_exit);
        o = both(o, "boot_marker", self.boot_marker);
        o = both(o, "relaunch_latency", self.relaunch_latency);
        o = both(o, "run", Some(self.run));
        o = both(o, "stop", Some(self.stop));
        o = both(o, "execute", Some(b.total));
        o = both(o, "swap", Some(self.swap));
        o.u64("kvm_create_vm_ns", ns(b.create_vm))
            .u64("memslots_ns", ns(b.memslots))
            .u64("irqchip_ns", ns(b.irqchip))
            .u64("vcpus_ns", ns(b.vcpus))
            .u64("map_ram_ns", ns(b.map_ram))
            .u64("import_ns", ns(b.import))
            .u64("vp_context_ns", ns(b.vp_context))
    }
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
                .u64(
                    "create_vm_us",
                    us(t.create_vm + t.memslots + t.irqchip + t.vcpus),
                )
                .u64("import_us", us(t.import))
                .u64("vp_context_us", us(t.vp_context))
                .bool("prestaged", prestaged)
                .u64("swap_us", us(swap)),
        )
        .finish()
}

/// The `exit` line of a launch whose plan could not be executed.
fn failure_line(generation: u64, outcome: &Outcome) -> String {
    JsonObj::new()
        .str("event", "exit")
        .u64("time_ms", unix_ms())
        .u64("generation", generation)
        .str("outcome", outcome.kind())
        .str("reason", &outcome.reason())
        .u64("exit_code", u64::from(exit_code(outcome)))
        .finish()
}
