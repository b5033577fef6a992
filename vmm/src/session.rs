//! The relaunch loop: build a VM for the current [`Launch`] with the session's backend, run it,
//! and on every guest reset hand the old VM to a reaper thread (closing its fds off the
//! critical path) and build again on a new VM fd — from the same launch, or from the one the
//! session was handed for its next relaunch ([`LaunchSlot`]). With `prestage`, the next VM is
//! built while the guest runs, so a reset only swaps VMs.
//!
//! Recipe per launch: ask the [`LaunchSlot`] what runs (the same launch, one handed over, or
//! the host's again: `docs/fuki.md`) → build (or take the prestaged VM) → carry the guest's
//! vmlaunchupdate opaque region into the new memory → audit `launch` record (written before
//! the guest runs) → devices, AP threads, vCPU 0 on the session thread itself → outcome →
//! stop APs → copy the opaque region out → event line + audit `exit` record → decide
//! (relaunch / exit code; the reset rate limit).
//!
//! Dead VMs wait for their teardown in a bounded backlog ([`Backlog`]): at most
//! [`BacklogLimit::vms`] VMs and [`BacklogLimit::bytes`] bytes of their guest memory, counted
//! from the moment the session hands one over until a dropper has closed it; a relaunch that
//! would exceed either waits for a teardown to finish.
//!
//! The critical path of a relaunch is the session thread alone: vCPU 0's `KVM_RUN` returns
//! the reset on this thread, which builds (or takes) the next VM and enters its `KVM_RUN`
//! with no thread hand-over in between. Everything else waits until the new launch has seen
//! its first exit (or [`DEFER_MAX`]): the reaper then tears the old VM down and, with
//! `prestage`, builds the next one — one after the other on the one reaper thread, so on a
//! 2-CPU host neither competes with the new guest's vCPU nor with each other.

use std::collections::VecDeque;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::audit::{unix_ms, AuditLog, EventSink};
use crate::backend::{Backend, BuiltVm, ExecError, ExecTimings};
use crate::devices::console::Console;
use crate::devices::fw_cfg::FwCfg;
use crate::devices::launch_update::{LaunchUpdate, Opaque, OpaqueReport, RequestCounts};
use crate::devices::{Devices, LaunchClock, UnknownLog};
use crate::launch::{Change, Launch, LaunchSlot};
use crate::sys::kvm::Vcpu;
use crate::vcpu::{run_vcpu, stop_all, Outcome, RunControl};

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

/// Jobs queued for the reaper at most besides dead VMs (event lines, prestage builds; a
/// dead VM is bounded by the [`Backlog`] instead).
pub const REAP_QUEUE: usize = 64;

/// How many dead VMs may wait for their teardown, and how much guest memory they may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BacklogLimit {
    /// Dead VMs at most (queued, being reaped or being closed), at least 1.
    pub vms: usize,
    /// Bytes of guest memory of dead VMs at most (each counts its whole guest memory: an
    /// upper bound of what it holds); one VM is always allowed, whatever its size.
    pub bytes: u64,
}

impl Default for BacklogLimit {
    /// 32 VMs and 2 GiB (`docs/reboot-contract.md`).
    fn default() -> BacklogLimit {
        BacklogLimit {
            vms: 32,
            bytes: 2 << 30,
        }
    }
}

/// A reset rate limit: more than `resets` guest resets within `interval` end the session
/// (like a service manager's start limit) with exit code 4.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResetLimit {
    /// Resets allowed within `interval`.
    pub resets: u32,
    /// The sliding window.
    pub interval: Duration,
}

impl ResetLimit {
    /// `N/DURATION`, e.g. `20/10s`, `100/1m`, `5/500ms` (`s` when no unit is given).
    pub fn parse(text: &str) -> Option<ResetLimit> {
        let (n, d) = text.split_once('/')?;
        let resets: u32 = n.trim().parse().ok().filter(|&n| n > 0)?;
        let d = d.trim();
        let (num, mult_ms) = if let Some(v) = d.strip_suffix("ms") {
            (v, 1)
        } else if let Some(v) = d.strip_suffix('s') {
            (v, 1000)
        } else if let Some(v) = d.strip_suffix('m') {
            (v, 60_000)
        } else if let Some(v) = d.strip_suffix('h') {
            (v, 3_600_000)
        } else {
            (d, 1000)
        };
        let ms = num.trim().parse::<u64>().ok()?.checked_mul(mult_ms)?;
        (ms > 0 && ms <= 86_400_000).then(|| ResetLimit {
            resets,
            interval: Duration::from_millis(ms),
        })
    }
}

impl std::fmt::Display for ResetLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}ms", self.resets, self.interval.as_millis())
    }
}

/// Everything a session needs besides the backend and its first launch.
#[derive(Debug)]
pub struct SessionConfig {
    /// Relaunches allowed (`None` = unlimited).
    pub max_reboots: Option<u64>,
    /// Guest resets allowed per interval (`None` = unlimited).
    pub reset_limit: Option<ResetLimit>,
    /// The dead-VM backlog bound.
    pub backlog: BacklogLimit,
    /// What runs at each relaunch: hand-overs go here (the session starts it with its first
    /// launch). A [`crate::handover::Handover`] must hand over into this same slot.
    pub next: Arc<LaunchSlot>,
    /// The vm-launch-update device (`etc/vmlaunchupdate`), session-wide (`run
    /// --vm-launch-update`); its hand-overs go to `next`.
    pub launch_update: Option<Arc<LaunchUpdate>>,
    /// Give the guest the vm-launch-update device even though `launch_update` is `None`:
    /// the session makes one, its hand-overs planned for the first launch's config and
    /// audited in `audit`, no bundle store (`run` builds its own, with `--bundle-store`).
    /// Off by default: the file shifts the selectors of `opt/` files by one.
    pub vm_launch_update: bool,
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
    /// The control socket's view of the session (`--control`).
    pub control: Option<Arc<crate::control::Control>>,
}

impl SessionConfig {
    /// Defaults: no reboot or reset limit, no prestage, the default backlog, no audit log or
    /// events, no extra fw_cfg files, guest output to `console`.
    pub fn new(console: Arc<Console>) -> SessionConfig {
        SessionConfig {
            max_reboots: None,
            reset_limit: None,
            backlog: BacklogLimit::default(),
            next: Arc::new(LaunchSlot::new()),
            launch_update: None,
            vm_launch_update: false,
            prestage: false,
            console,
            audit: None,
            events: None,
            fw_cfg_files: Vec::new(),
            control: None,
        }
    }
}

/// How a session ended.
#[derive(Debug)]
pub struct SessionReport {
    /// Launches started.
    pub launches: u64,
    /// The generation of the last launch attempted: the one that ended the session, or whose
    /// build failed.
    pub generation: u64,
    /// Why the session stopped when it was not the guest's own outcome (the reset rate
    /// limit).
    pub stopped_by: Option<String>,
    /// The most dead VMs that waited for their teardown at once.
    pub peak_backlog: usize,
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
        // Bad input, like a bad flag: the launch never ran.
        Outcome::LaunchRefused(_) => EXIT_USAGE,
    }
}

/// The dead-VM backlog: permits for VMs awaiting teardown (module doc).
#[derive(Debug)]
pub struct Backlog {
    limit: BacklogLimit,
    state: Mutex<(usize, u64, usize)>,
    cv: Condvar,
}

impl Backlog {
    /// An empty backlog with `limit`.
    pub fn new(limit: BacklogLimit) -> Backlog {
        Backlog {
            limit,
            state: Mutex::new((0, 0, 0)),
            cv: Condvar::new(),
        }
    }

    /// Waits until a dead VM holding `bytes` fits, then counts it.
    pub fn acquire(&self, bytes: u64) {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        while s.0 > 0
            && (s.0 >= self.limit.vms.max(1) || s.1.saturating_add(bytes) > self.limit.bytes)
        {
            s = self.cv.wait(s).unwrap_or_else(PoisonError::into_inner);
        }
        s.0 += 1;
        s.1 = s.1.saturating_add(bytes);
        s.2 = s.2.max(s.0);
    }

    /// A dead VM counted with `from` bytes holds `to` (its measured footprint).
    pub fn adjust(&self, from: u64, to: u64) {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        s.1 = s.1.saturating_sub(from).saturating_add(to);
        self.cv.notify_all();
    }

    /// A dead VM holding `bytes` is gone.
    pub fn release(&self, bytes: u64) {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        s.0 = s.0.saturating_sub(1);
        s.1 = s.1.saturating_sub(bytes);
        self.cv.notify_all();
    }

    /// Dead VMs now, bytes now, and the most dead VMs at once so far.
    pub fn counts(&self) -> (usize, u64, usize) {
        *self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A dead VM and its backlog permit (released when it is dropped, after the VM).
struct DeadVm {
    vm: Box<BuiltVm>,
    bytes: u64,
    backlog: Arc<Backlog>,
}

impl DeadVm {
    /// Counts `vm` in the backlog (waiting for room) with its whole guest memory: the upper
    /// bound of what it holds, known without a system call on the relaunch path. The reaper
    /// replaces it with the measured footprint ([`DeadVm::measure`]).
    fn new(vm: BuiltVm, backlog: &Arc<Backlog>) -> DeadVm {
        let bytes = vm.memory.total_bytes();
        backlog.acquire(bytes);
        DeadVm {
            vm: Box::new(vm),
            bytes,
            backlog: Arc::clone(backlog),
        }
    }

    /// Counts what the VM's memory really holds (resident and allocated pages: a guest that
    /// touched little of its RAM holds little) instead of the upper bound — only once the
    /// upper bounds exceed the byte bound, i.e. when a relaunch would otherwise wait:
    /// `mincore` walks the page tables under the process's `mmap_lock`, which the next
    /// build's `mmap`s and memslots also take (measured: measuring every dead VM made the
    /// relaunch ≈ 10% slower here).
    fn measure(&mut self) {
        if self.backlog.counts().1 <= self.backlog.limit.bytes {
            return;
        }
        let resident = self.vm.memory.resident_bytes().min(self.bytes);
        self.backlog.adjust(self.bytes, resident);
        self.bytes = resident;
    }

    /// Closes the VM, then gives the permit back.
    fn close(self) {
        let DeadVm { vm, bytes, backlog } = self;
        drop(vm);
        backlog.release(bytes);
    }
}

/// Work for the reaper thread, done in order.
enum Job {
    /// Once `after` saw its first exit (or [`DEFER_MAX`] passed): `fdatasync` the audit log,
    /// then drop `vm` (on a dropper thread).
    Reap {
        vm: DeadVm,
        after: Option<Arc<LaunchClock>>,
        audit: Option<Arc<AuditLog>>,
        /// The ended launch's event line, still to be formatted and written (without an
        /// audit log nothing orders it against the next launch, so it waits until the next
        /// launch runs).
        event: Option<DeferredEvent>,
    },
    /// Write an event line (after every deferred line queued before it).
    Emit { line: String, sink: Arc<EventSink> },
    /// Prestage: build the VM of launch `generation` of `launch` once `after` saw its first
    /// exit.
    Build {
        generation: u64,
        launch: Arc<Launch>,
        after: Arc<LaunchClock>,
    },
}

type BuildResult = Result<BuiltVm, ExecError>;

enum Slot {
    Idle,
    Wanted(u64),
    Building,
    /// Boxed: a built VM is large next to the other states.
    Ready(Box<BuildResult>),
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
        *self.lock() = Slot::Ready(Box::new(r));
        self.cv.notify_all();
    }

    /// The prestaged VM: ready, or waited for while the builder is on it. `None` (and a
    /// wanted build not started yet is cancelled) otherwise: the caller builds it itself,
    /// which is faster than waiting for the reaper to get to it.
    fn take(&self) -> Option<BuildResult> {
        let mut s = self.lock();
        loop {
            match std::mem::replace(&mut *s, Slot::Idle) {
                Slot::Ready(r) => return Some(*r),
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
                source: crate::backend::BackendError::Kvm {
                    what: "prestage build panicked",
                    errno: crate::sys::Errno::new(libc::EIO),
                },
            }));
        }
    }
}

/// A dead VM for a dropper thread, and the audit log to `fdatasync` before closing it.
type DropJob = (DeadVm, Option<Arc<AuditLog>>);

/// The reaper: waits for each launch's first exit, writes deferred event lines (in order),
/// hands dead VMs to the dropper threads and runs the prestage builds. It never closes a VM
/// itself: a teardown sleeps for milliseconds here (SRCU grace periods; docs/benchmarks.md)
/// and would hold up the next prestage build.
fn reaper(
    rx: mpsc::Receiver<Job>,
    droppers: mpsc::Sender<DropJob>,
    backend: &dyn Backend,
    stage: &Stage,
) {
    // Woken at every launch start and first exit: it must not push the vCPU thread off its
    // CPU at that moment (best effort; measured ≈ 0.03 ms better prestage p50 here).
    let _ = crate::sys::cpu::set_current_thread_batch();
    for job in rx {
        match job {
            Job::Reap {
                mut vm,
                after,
                audit,
                event,
            } => {
                if let Some(c) = after {
                    c.wait_first_exit(DEFER_MAX);
                }
                vm.measure();
                if let Some((line, sink)) = event {
                    sink.emit(&line.finish());
                }
                if let Err(mpsc::SendError((vm, audit))) = droppers.send((vm, audit)) {
                    // No dropper left (cannot happen while the session runs): do it here.
                    if let Some(a) = audit {
                        let _ = a.sync();
                    }
                    vm.close();
                }
            }
            Job::Emit { line, sink } => sink.emit(&line),
            Job::Build {
                generation,
                launch,
                after,
            } => {
                after.wait_first_exit(DEFER_MAX);
                if stage.begin(generation) {
                    let mut guard = BuildGuard(stage, false);
                    let r = backend.build(&launch);
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
fn dropper(rx: &Mutex<mpsc::Receiver<DropJob>>) {
    let _ = crate::sys::cpu::set_current_thread_batch();
    loop {
        let next = rx.lock().unwrap_or_else(PoisonError::into_inner).recv();
        let Ok((vm, audit)) = next else { return };
        if let Some(a) = audit {
            let _ = a.sync();
        }
        vm.close();
    }
}

/// Dropper threads per session.
pub const DROPPERS: usize = 2;

fn empty_report(outcome: Outcome) -> SessionReport {
    SessionReport {
        launches: 0,
        generation: 0,
        stopped_by: None,
        peak_backlog: 0,
        outcome,
        exit_code: EXIT_VMM_ERROR,
        relaunch_latency: Vec::new(),
        reset_to_start: Vec::new(),
        unknown_suppressed: 0,
    }
}

/// Runs launches until power-off, a fatal event, an error, the reboot limit or the reset
/// rate limit: `launch` first, then whatever `cfg.next` is given at a relaunch. vCPU 0 of
/// every launch runs on the calling thread.
pub fn run_session(
    backend: &dyn Backend,
    launch: Arc<Launch>,
    cfg: &SessionConfig,
) -> SessionReport {
    let stage = Stage::new();
    let unknown_log = Arc::new(UnknownLog::new());
    let backlog = Arc::new(Backlog::new(cfg.backlog));
    // Unbounded channels: every dead VM in them holds a backlog permit, which is the bound.
    let (drop_tx, drop_rx) = mpsc::channel::<DropJob>();
    let drop_rx = Mutex::new(drop_rx);
    let mut report = std::thread::scope(|s| {
        let (tx, rx) = mpsc::sync_channel::<Job>(REAP_QUEUE.saturating_add(cfg.backlog.vms));
        let (stage, drop_rx) = (&stage, &drop_rx);
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
            .spawn_scoped(s, move || reaper(rx, drop_tx, backend, stage));
        if let Err(e) = reaper {
            return empty_report(Outcome::VmmError(format!(
                "spawning the reaper thread: {e}"
            )));
        }
        let mut report = empty_report(Outcome::VmmError("no launch".into()));
        let mut current = launch;
        let mut generation: u64 = 1;
        cfg.next.start(&current, generation);
        let launch_update = cfg.launch_update.clone().or_else(|| {
            cfg.vm_launch_update.then(|| {
                let h = crate::handover::Handover::new(
                    Arc::clone(&cfg.next),
                    *current.config(),
                    None,
                    cfg.audit.clone(),
                );
                Arc::new(LaunchUpdate::new(Arc::new(h)))
            })
        });
        // What changed at this relaunch, and the opaque region the last launch left.
        let mut change = Change::Same;
        let mut carry: Option<Result<Opaque, String>> = None;
        let mut reboots: u64 = 0;
        let mut reset_at: Option<Instant> = None;
        let mut resets: VecDeque<Instant> = VecDeque::new();
        // The previous launch's VM, reaped once this launch has started.
        let mut old: Option<(BuiltVm, Option<DeferredEvent>)> = None;
        let reap = |vm: BuiltVm| DeadVm::new(vm, &backlog);
        // An event line of a launch that never ran: at once when audited (the previous
        // launch's `exit` line is on record already), else behind the previous launch's
        // deferred line, in the reaper.
        let emit_in_order = |old: &mut Option<(BuiltVm, Option<DeferredEvent>)>, line: String| {
            let Some(sink) = &cfg.events else { return };
            if cfg.audit.is_some() {
                sink.emit(&line);
                return;
            }
            if let Some((vm, event)) = old.take() {
                let _ = tx.send(Job::Reap {
                    vm: reap(vm),
                    after: None,
                    audit: None,
                    event,
                });
            }
            let _ = tx.send(Job::Emit {
                line,
                sink: Arc::clone(sink),
            });
        };
        loop {
            report.generation = generation;
            if generation > 1 {
                if let Some(r) = cfg.next.relaunch(generation) {
                    current = r.launch;
                    change = r.change;
                }
                if let Some(lu) = &launch_update {
                    lu.relaunched(change);
                }
            }
            let t_build = Instant::now();
            // A VM prestaged for another launch (the session was handed a new one) is dead.
            let staged = if cfg.prestage {
                match stage.take() {
                    Some(Ok(vm)) if vm.launch_id != current.id() => {
                        let _ = tx.send(Job::Reap {
                            vm: reap(vm),
                            after: None,
                            audit: None,
                            event: None,
                        });
                        None
                    }
                    other => other,
                }
            } else {
                None
            };
            let prestaged = staged.is_some();
            let built = staged.unwrap_or_else(|| backend.build(&current));
            let swap = t_build.elapsed();
            let built = match built {
                Ok(b) => b,
                Err(e) if matches!(change, Change::HandedOver { .. }) && cfg.next.revert() => {
                    // A handed-over bundle that plans but cannot be launched never replaces
                    // the working one (docs/fuki.md): on record, then the launch before it.
                    let reason = format!("the handed-over launch cannot be built: {e}");
                    crate::elog!("relaunch: {reason}; the previous launch runs again");
                    let line = handover_failed_line(generation, &current, change, &reason);
                    if let Some(a) = &cfg.audit {
                        if let Err(err) = a.append(&line) {
                            report.outcome =
                                Outcome::VmmError(format!("writing the audit log: {err}"));
                            report.exit_code = EXIT_VMM_ERROR;
                            break;
                        }
                    }
                    emit_in_order(&mut old, line);
                    continue;
                }
                Err(e) => {
                    report.outcome = if e.refused_by_platform() {
                        Outcome::LaunchRefused(format!("the platform refused the launch: {e}"))
                    } else {
                        Outcome::VmmError(format!("executing the launch plan: {e}"))
                    };
                    report.exit_code = exit_code(&report.outcome);
                    let line = failure_line(generation, &report.outcome);
                    if let Some(a) = &cfg.audit {
                        let _ = a.append(&line);
                    }
                    emit_in_order(&mut old, line);
                    break;
                }
            };
            report.launches = generation;
            // The guest's opaque region, into the new memory before anything of it runs.
            let opaque = carry.take().map(|c| match c {
                Ok(o) => OpaqueRecord::from(o.restore(&built.memory, &current)),
                Err(why) => OpaqueRecord::failed(why),
            });
            if let Some(a) = &cfg.audit {
                let record = launch_record(
                    cfg,
                    backend,
                    &current,
                    generation,
                    &built,
                    swap,
                    prestaged,
                    (change, opaque.as_ref()),
                );
                if let Err(e) = a.append(&record) {
                    // Never run a guest whose launch is not on record.
                    report.outcome = Outcome::VmmError(format!("writing the audit log: {e}"));
                    report.exit_code = EXIT_VMM_ERROR;
                    let _ = tx.send(Job::Reap {
                        vm: reap(built),
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
                launch_id,
                launch_measurement,
            } = built;
            let clock = Arc::new(LaunchClock::start());
            let nb_cpus = u16::try_from(vcpu_fds.len()).unwrap_or(u16::MAX);
            let devices = Arc::new(Mutex::new(Devices::new(
                Arc::clone(&cfg.console),
                Arc::clone(&memory),
                Arc::clone(&clock),
                FwCfg::with_launch_update(
                    generation,
                    nb_cpus,
                    &cfg.fw_cfg_files,
                    launch_update.clone(),
                ),
                Arc::clone(&unknown_log),
            )));
            let exits = backend.exit_handler(Arc::clone(&devices), &vm, &memory);
            // Input arriving while the guest waits raises the UART's interrupt (where the
            // backend connected one); a weak reference, so an ended launch is not kept.
            let weak = Arc::downgrade(&devices);
            cfg.console.set_input_waker(Some(Box::new(move || {
                if let Some(d) = weak.upgrade() {
                    d.lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .update_serial_irq();
                }
            })));
            let ctl = Arc::new(RunControl::with_main_thread());
            if let Some(c) = &cfg.control {
                c.launching(
                    generation,
                    &current,
                    (backend.platform().name(), backend.emulated()),
                    launch_measurement.as_deref(),
                    &ctl,
                );
                // `--wait-for-secret`: nothing of the guest runs before `continue` (or a
                // `power-off` / `reset` asked meanwhile, which ends this launch unrun).
                if let Some(o) = c.wait_continue() {
                    ctl.post(o);
                }
            }
            let mut fds = vcpu_fds.into_iter();
            let bsp = fds.next();
            let mut aps = Vec::with_capacity(fds.len());
            for (i, vcpu) in fds.enumerate() {
                let (ctl2, exits2, clock2) =
                    (Arc::clone(&ctl), Arc::clone(&exits), Arc::clone(&clock));
                let id = u32::try_from(i).unwrap_or(u32::MAX).saturating_add(1);
                match std::thread::Builder::new()
                    .name(format!("vcpu{id}"))
                    .spawn(move || run_vcpu(vcpu, id, ctl2, exits2, clock2))
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
                    vm: reap(vm),
                    after: Some(Arc::clone(&clock)),
                    audit: cfg.audit.clone(),
                    event,
                });
            }
            if cfg.prestage && may_relaunch {
                stage.want(next);
                let _ = tx.send(Job::Build {
                    generation: next,
                    launch: Arc::clone(&current),
                    after: Arc::clone(&clock),
                });
            }
            // vCPU 0 on this thread, until an outcome is posted (an AP's post kicks us).
            let bsp = bsp.map(|v| {
                run_vcpu(
                    v,
                    0,
                    Arc::clone(&ctl),
                    Arc::clone(&exits),
                    Arc::clone(&clock),
                )
            });
            let (outcome, at) = ctl.wait();
            if let Some(c) = &cfg.control {
                c.ended();
            }
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
            // The reset rate limit: the resets of the last `interval`, this one included.
            let mut limited = None;
            if let (true, Some(limit)) = (is_reset && may_relaunch, cfg.reset_limit) {
                resets.push_back(at);
                while resets
                    .front()
                    .is_some_and(|&t| at.duration_since(t) > limit.interval)
                {
                    resets.pop_front();
                }
                if resets.len() > limit.resets as usize {
                    limited = Some(format!(
                        "reset rate limit: {} resets within {} ms (limit {})",
                        resets.len(),
                        limit.interval.as_millis(),
                        limit
                    ));
                }
            }
            let final_code = if is_reset && may_relaunch && limited.is_none() {
                None
            } else {
                Some(exit_code(&outcome))
            };
            // Every vCPU is stopped (a vmlaunchupdate write in flight finished first): the
            // opaque region is what the guest left.
            if final_code.is_none() {
                carry = launch_update
                    .as_ref()
                    .and_then(|lu| lu.save_opaque(&memory).transpose());
            }
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
                stopped_by: limited.clone(),
                exit_code: final_code,
                times,
                unknown,
                fw_errors,
                launch_update: launch_update.as_ref().map(|lu| lu.counts()),
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
            drop(exits);
            old = Some((
                BuiltVm {
                    vcpus: vcpu_fds,
                    vm,
                    memory,
                    timings,
                    launch_id,
                    launch_measurement,
                },
                deferred,
            ));
            report.outcome = outcome;
            report.stopped_by = limited;
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
                vm: reap(vm),
                after: None,
                audit: cfg.audit.clone(),
                event,
            });
        }
        // A prestaged VM nobody will run (power-off, reboot limit, error).
        if let Some(Ok(vm)) = stage.take() {
            let _ = tx.send(Job::Reap {
                vm: reap(vm),
                after: None,
                audit: None,
                event: None,
            });
        }
        drop(tx);
        if let Some(c) = &cfg.control {
            c.stopped();
        }
        report.unknown_suppressed = unknown_log.suppressed();
        report
    });
    report.peak_backlog = backlog.counts().2;
    report
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
    stopped_by: Option<String>,
    exit_code: Option<u8>,
    times: LaunchTimes,
    unknown: u64,
    fw_errors: u64,
    launch_update: Option<RequestCounts>,
    footprint: Option<(Option<u64>, Option<u64>)>,
}

impl ExitLine {
    fn finish(&self) -> String {
        crate::json::to_line(&ExitRecord {
            event: "exit",
            time_ms: self.time_ms,
            generation: self.generation,
            outcome: self.kind,
            reason: &self.reason,
            stopped_by: self.stopped_by.as_deref(),
            exit_code: self.exit_code,
            timings: self.times.record(),
            unknown_io: self.unknown,
            fw_cfg_dma_errors: self.fw_errors,
            vmlaunchupdate: self.launch_update,
            vmm_rss_kib: self.footprint.map(|f| f.0),
            open_fds: self.footprint.map(|f| f.1),
        })
    }
}

/// The `exit` event line and audit record (`docs/reboot-contract.md`).
#[derive(serde::Serialize)]
struct ExitRecord<'a> {
    event: &'static str,
    time_ms: u64,
    generation: u64,
    outcome: &'static str,
    reason: &'a str,
    /// Why the session stopped when it was not the guest's own outcome (the reset rate
    /// limit); `null` otherwise.
    stopped_by: Option<&'a str>,
    exit_code: Option<u8>,
    timings: TimingsRecord,
    unknown_io: u64,
    fw_cfg_dma_errors: u64,
    /// The vm-launch-update requests of this launch (with `--vm-launch-update` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    vmlaunchupdate: Option<RequestCounts>,
    /// Only on the launch that ends the process (`null` inside when unknown).
    #[serde(skip_serializing_if = "Option::is_none")]
    vmm_rss_kib: Option<Option<u64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    open_fds: Option<Option<u64>>,
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
    fn record(&self) -> TimingsRecord {
        let b = &self.build;
        TimingsRecord {
            reset_to_start_us: self.reset_to_start.map(us),
            reset_to_start_ns: self.reset_to_start.map(ns),
            first_exit_us: self.first_exit.map(us),
            first_exit_ns: self.first_exit.map(ns),
            boot_marker_us: self.boot_marker.map(us),
            boot_marker_ns: self.boot_marker.map(ns),
            relaunch_latency_us: self.relaunch_latency.map(us),
            relaunch_latency_ns: self.relaunch_latency.map(ns),
            run_us: us(self.run),
            run_ns: ns(self.run),
            stop_us: us(self.stop),
            stop_ns: ns(self.stop),
            execute_us: us(b.total),
            execute_ns: ns(b.total),
            swap_us: us(self.swap),
            swap_ns: ns(self.swap),
            kvm_create_vm_ns: ns(b.create_vm),
            memslots_ns: ns(b.memslots),
            irqchip_ns: ns(b.irqchip),
            vcpus_ns: ns(b.vcpus),
            map_ram_ns: ns(b.map_ram),
            import_ns: ns(b.import),
            vp_context_ns: ns(b.vp_context),
        }
    }
}

/// `timings` of the `exit` record.
#[derive(serde::Serialize)]
struct TimingsRecord {
    reset_to_start_us: Option<u64>,
    reset_to_start_ns: Option<u64>,
    first_exit_us: Option<u64>,
    first_exit_ns: Option<u64>,
    boot_marker_us: Option<u64>,
    boot_marker_ns: Option<u64>,
    relaunch_latency_us: Option<u64>,
    relaunch_latency_ns: Option<u64>,
    run_us: u64,
    run_ns: u64,
    stop_us: u64,
    stop_ns: u64,
    execute_us: u64,
    execute_ns: u64,
    swap_us: u64,
    swap_ns: u64,
    kvm_create_vm_ns: u64,
    memslots_ns: u64,
    irqchip_ns: u64,
    vcpus_ns: u64,
    map_ram_ns: u64,
    import_ns: u64,
    vp_context_ns: u64,
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

#[allow(clippy::too_many_arguments)]
fn launch_record(
    cfg: &SessionConfig,
    backend: &dyn Backend,
    launch: &Launch,
    generation: u64,
    built: &BuiltVm,
    swap: Duration,
    prestaged: bool,
    (change, opaque): (Change, Option<&OpaqueRecord>),
) -> String {
    let t = &built.timings;
    crate::json::to_line(&LaunchRecord {
        event: "launch",
        time_ms: unix_ms(),
        generation,
        bundle_sha256: launch.bundle_sha256(),
        platform: backend.platform().name(),
        emulated: backend.emulated(),
        version: crate::cli::VERSION,
        params: LaunchParams {
            mem: launch.mem_bytes(),
            vcpus: launch.vcpus(),
            memory_backing: backend.memory_backing(),
            prestage: cfg.prestage,
            max_reboots: cfg.max_reboots,
        },
        predicted_measurement: launch.predicted_measurement(),
        launch_measurement: built.launch_measurement.as_deref(),
        switch: SwitchRecord::of(change),
        opaque,
        timings: LaunchTimings {
            plan_us: us(launch.plan_time()),
            plan_cached: generation > 1,
            execute_us: us(t.total),
            create_vm_us: us(t.create_vm + t.memslots + t.irqchip + t.vcpus),
            import_us: us(t.import),
            vp_context_us: us(t.vp_context),
            prestaged,
            swap_us: us(swap),
        },
    })
}

/// The audit `launch` record (`docs/reboot-contract.md`).
#[derive(serde::Serialize)]
struct LaunchRecord<'a> {
    event: &'static str,
    time_ms: u64,
    generation: u64,
    bundle_sha256: &'a str,
    platform: &'static str,
    emulated: bool,
    /// The relaunch version ([`crate::cli::VERSION`]).
    version: &'static str,
    params: LaunchParams,
    predicted_measurement: Option<&'a str>,
    /// What the platform reported at finish ([`BuiltVm::launch_measurement`]; `null` where
    /// it reports nothing at launch).
    launch_measurement: Option<&'a str>,
    /// Why this launch runs another bundle than the one before (`null`: the same one).
    switch: Option<SwitchRecord>,
    /// The vmlaunchupdate opaque region carried into this launch (`null`: none).
    opaque: Option<&'a OpaqueRecord>,
    timings: LaunchTimings,
}

/// `switch` of the `launch` record (`docs/fuki.md`).
#[derive(serde::Serialize)]
struct SwitchRecord {
    /// `handed-over` or `original` (the host's bundle again).
    to: &'static str,
    /// Who asked (`null`: a one-shot launch ran its one launch).
    by: Option<&'static str>,
    one_shot: bool,
}

impl SwitchRecord {
    fn of(change: Change) -> Option<SwitchRecord> {
        match change {
            Change::Same => None,
            Change::HandedOver { by, one_shot } => Some(SwitchRecord {
                to: "handed-over",
                by: Some(by.name()),
                one_shot,
            }),
            Change::Original(by) => Some(SwitchRecord {
                to: "original",
                by: by.map(crate::launch::By::name),
                one_shot: false,
            }),
        }
    }
}

/// `opaque` of the `launch` record: what was carried, or why nothing was.
#[derive(Debug, serde::Serialize)]
struct OpaqueRecord {
    #[serde(flatten)]
    report: Option<OpaqueReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

impl From<OpaqueReport> for OpaqueRecord {
    fn from(report: OpaqueReport) -> OpaqueRecord {
        OpaqueRecord {
            report: Some(report),
            error: None,
        }
    }
}

impl OpaqueRecord {
    fn failed(why: String) -> OpaqueRecord {
        OpaqueRecord {
            report: None,
            error: Some(why),
        }
    }
}

/// `params` of the `launch` record.
#[derive(serde::Serialize)]
struct LaunchParams {
    mem: u64,
    vcpus: u32,
    memory_backing: &'static str,
    prestage: bool,
    max_reboots: Option<u64>,
}

/// `timings` of the `launch` record.
#[derive(serde::Serialize)]
struct LaunchTimings {
    plan_us: u64,
    plan_cached: bool,
    execute_us: u64,
    create_vm_us: u64,
    import_us: u64,
    vp_context_us: u64,
    prestaged: bool,
    swap_us: u64,
}

/// The record of a handed-over launch that could not be built (the previous launch runs
/// instead): `{"event":"handover-failed", generation, bundle_sha256, by, one_shot, reason}`.
fn handover_failed_line(generation: u64, failed: &Launch, change: Change, reason: &str) -> String {
    #[derive(serde::Serialize)]
    struct Record<'a> {
        event: &'static str,
        time_ms: u64,
        generation: u64,
        bundle_sha256: &'a str,
        by: Option<&'static str>,
        one_shot: bool,
        reason: &'a str,
        result: &'static str,
    }
    let (by, one_shot) = match change {
        Change::HandedOver { by, one_shot } => (Some(by.name()), one_shot),
        _ => (None, false),
    };
    crate::json::to_line(&Record {
        event: "handover-failed",
        time_ms: unix_ms(),
        generation,
        bundle_sha256: failed.bundle_sha256(),
        by,
        one_shot,
        reason,
        result: "previous launch runs",
    })
}

/// The `exit` line of a launch whose plan could not be executed.
fn failure_line(generation: u64, outcome: &Outcome) -> String {
    #[derive(serde::Serialize)]
    struct FailureRecord<'a> {
        event: &'static str,
        time_ms: u64,
        generation: u64,
        outcome: &'static str,
        reason: &'a str,
        exit_code: u8,
    }
    crate::json::to_line(&FailureRecord {
        event: "exit",
        time_ms: unix_ms(),
        generation,
        outcome: outcome.kind(),
        reason: &outcome.reason(),
        exit_code: exit_code(outcome),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_limit_parses() {
        let l = |n, ms| {
            Some(ResetLimit {
                resets: n,
                interval: Duration::from_millis(ms),
            })
        };
        assert_eq!(ResetLimit::parse("20/10s"), l(20, 10_000));
        assert_eq!(ResetLimit::parse("20/10"), l(20, 10_000));
        assert_eq!(ResetLimit::parse("5/500ms"), l(5, 500));
        assert_eq!(ResetLimit::parse("100/1m"), l(100, 60_000));
        assert_eq!(ResetLimit::parse(" 3 / 1h "), l(3, 3_600_000));
        for bad in [
            "", "5", "0/10s", "5/0s", "-1/5s", "5/2d", "5/25h", "x/1s", "5/1x",
        ] {
            assert_eq!(ResetLimit::parse(bad), None, "{bad:?}");
        }
    }

    /// The backlog waits while either bound would be exceeded, always admits one VM, and a
    /// measured footprint makes room.
    #[test]
    fn backlog_bounds_count_and_bytes() {
        let b = Arc::new(Backlog::new(BacklogLimit { vms: 2, bytes: 100 }));
        b.acquire(1000); // Alone: admitted whatever its size.
        assert_eq!(b.counts(), (1, 1000, 1));
        let b2 = Arc::clone(&b);
        let waiter = std::thread::spawn(move || b2.acquire(50));
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(b.counts().0, 1, "the second VM must wait: 1050 > 100 bytes");
        b.adjust(1000, 40); // Measured: 40 + 50 fits.
        waiter.join().unwrap();
        assert_eq!(b.counts(), (2, 90, 2));
        let b3 = Arc::clone(&b);
        let waiter = std::thread::spawn(move || b3.acquire(0));
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(b.counts().0, 2, "a third VM must wait: count bound 2");
        b.release(40);
        waiter.join().unwrap();
        assert_eq!(b.counts(), (2, 50, 2));
    }
}
