//! vCPU threads: one per vCPU, running `KVM_RUN` and dispatching exits to the devices until
//! the launch ends. The first vCPU to see a launch-ending event posts the [`Outcome`]; the
//! session then stops every vCPU with the kick signal (`sys::signal`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::VcpuExit;

use crate::devices::{Action, Devices, LaunchClock, ResetSource, PORT_BOOT_MARKER};
use crate::sys::kvm::Vcpu;
use crate::sys::signal;

/// How a launch ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The guest powered off (port 0x604 SLP_EN or `SYSTEM_EVENT` SHUTDOWN).
    PowerOff(&'static str),
    /// The guest asked for a reset: relaunch.
    Reset(ResetSource),
    /// The guest crashed or KVM cannot run it (pvpanic, `SYSTEM_EVENT` CRASH, internal
    /// error, failed entry).
    GuestFatal(String),
    /// The VMM failed (an ioctl that must not fail did).
    VmmError(String),
}

impl Outcome {
    /// `outcome` value in events and audit records.
    pub fn kind(&self) -> &'static str {
        match self {
            Outcome::PowerOff(_) => "power-off",
            Outcome::Reset(_) => "reset",
            Outcome::GuestFatal(_) => "guest-fatal",
            Outcome::VmmError(_) => "vmm-error",
        }
    }

    /// `reason` value in events and audit records.
    pub fn reason(&self) -> String {
        match self {
            Outcome::PowerOff(r) => (*r).to_string(),
            Outcome::Reset(s) => s.name().to_string(),
            Outcome::GuestFatal(r) | Outcome::VmmError(r) => r.clone(),
        }
    }
}

/// Shared stop state of one launch.
#[derive(Debug, Default)]
pub struct RunControl {
    stop: AtomicBool,
    outcome: Mutex<Option<(Outcome, Instant)>>,
    cv: Condvar,
    /// The thread running vCPU 0 in the session (kicked when another thread posts).
    main: Option<signal::ThreadHandle>,
}

impl RunControl {
    /// Fresh control.
    pub fn new() -> RunControl {
        RunControl::default()
    }

    /// Fresh control for a launch whose vCPU 0 runs on the calling thread: an outcome posted
    /// by any other thread kicks this one out of `KVM_RUN`. The calling thread must outlive
    /// every thread that can post (it joins them: `stop_all`).
    pub fn with_main_thread() -> RunControl {
        RunControl {
            main: Some(signal::ThreadHandle::current()),
            ..RunControl::default()
        }
    }

    /// Whether vCPUs must stop.
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Records `outcome` (the first one wins), timestamped now, and wakes the session.
    pub fn post(&self, outcome: Outcome) {
        let at = Instant::now();
        let mut o = self.outcome.lock().unwrap_or_else(PoisonError::into_inner);
        if o.is_none() {
            *o = Some((outcome, at));
        }
        self.stop.store(true, Ordering::SeqCst);
        self.cv.notify_all();
        drop(o);
        if let Some(m) = &self.main {
            if !m.is_current() {
                let _ = m.kick();
            }
        }
    }

    /// Waits for an outcome.
    pub fn wait(&self) -> (Outcome, Instant) {
        let mut o = self.outcome.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(v) = o.as_ref() {
                return v.clone();
            }
            o = self.cv.wait(o).unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// Runs one vCPU until the launch stops; returns the vCPU (so its fds are closed by whoever
/// drops the VM, off the critical path).
pub fn run_vcpu(
    mut vcpu: Vcpu,
    id: u32,
    ctl: Arc<RunControl>,
    devices: Arc<Mutex<Devices>>,
    clock: Arc<LaunchClock>,
) -> Vcpu {
    signal::with_kick_target(&mut vcpu, |vcpu| {
        vcpu_loop(vcpu, id, &ctl, &devices, &clock)
    });
    vcpu
}

fn lock(d: &Mutex<Devices>) -> std::sync::MutexGuard<'_, Devices> {
    d.lock().unwrap_or_else(PoisonError::into_inner)
}

fn vcpu_loop(
    vcpu: &mut Vcpu,
    id: u32,
    ctl: &RunControl,
    devices: &Mutex<Devices>,
    clock: &LaunchClock,
) {
    loop {
        // Clear before checking: a kick after this point sets it again (see sys::signal).
        vcpu.set_immediate_exit(0);
        if ctl.stopping() {
            return;
        }
        let exit = vcpu.run();
        let t_exit = Instant::now();
        // The boot marker is timed at the exit itself (as the raw floor times it), before
        // anything else the VMM does for that exit.
        if let Ok(VcpuExit::IoOut(PORT_BOOT_MARKER, _)) = &exit {
            let _ = clock.boot_marker.set(t_exit);
        }
        clock.note_exit_at(t_exit);
        let action = match exit {
            Ok(VcpuExit::IoOut(port, data)) => lock(devices).io_out(port, data),
            Ok(VcpuExit::IoIn(port, data)) => lock(devices).io_in(port, data),
            Ok(VcpuExit::MmioRead(addr, data)) => {
                lock(devices).mmio_read(addr, data);
                Action::None
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                lock(devices).mmio_write(addr, data);
                Action::None
            }
            Ok(VcpuExit::Shutdown) => Action::Reset(ResetSource::TripleFault),
            Ok(VcpuExit::SystemEvent(kind, data)) => match kind {
                KVM_SYSTEM_EVENT_RESET => Action::Reset(ResetSource::SystemEvent),
                KVM_SYSTEM_EVENT_SHUTDOWN => {
                    ctl.post(Outcome::PowerOff("system-event-shutdown"));
                    return;
                }
                KVM_SYSTEM_EVENT_CRASH => {
                    ctl.post(Outcome::GuestFatal("system-event-crash".into()));
                    return;
                }
                other => {
                    ctl.post(Outcome::GuestFatal(format!(
                        "system event {other} ({} data words)",
                        data.len()
                    )));
                    return;
                }
            },
            Ok(VcpuExit::InternalError) => {
                let (suberror, data) = vcpu.internal_error();
                let rip = vcpu.fd().get_regs().map(|r| r.rip).unwrap_or(u64::MAX);
                ctl.post(Outcome::GuestFatal(format!(
                    "KVM internal error on vCPU {id}: suberror {suberror}, data {data:x?}, rip {rip:#x}"
                )));
                return;
            }
            Ok(VcpuExit::FailEntry(reason, cpu)) => {
                ctl.post(Outcome::GuestFatal(format!(
                    "VM entry failed on vCPU {id}: reason {reason:#x} (host cpu {cpu})"
                )));
                return;
            }
            // Interrupted by a signal / no in-kernel handling needed.
            Ok(VcpuExit::Intr | VcpuExit::IrqWindowOpen | VcpuExit::Hlt) => Action::None,
            Ok(other) => {
                ctl.post(Outcome::GuestFatal(format!(
                    "unexpected exit on vCPU {id}: {other:?}"
                )));
                return;
            }
            // Kicked (EINTR); a waiting AP that received INIT (EAGAIN): re-enter.
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Action::None,
            Err(e) => {
                ctl.post(Outcome::VmmError(format!("KVM_RUN on vCPU {id}: {e}")));
                return;
            }
        };
        match action {
            Action::None => {}
            Action::Reset(src) => {
                ctl.post(Outcome::Reset(src));
                return;
            }
            Action::PowerOff => {
                ctl.post(Outcome::PowerOff("acpi-pm1-slp-en"));
                return;
            }
            Action::Panic => {
                ctl.post(Outcome::GuestFatal("pvpanic".into()));
                return;
            }
        }
    }
}

/// Stops every vCPU thread (kick until it ends) and returns the vCPUs, in thread order.
/// Threads that panicked are dropped (their vCPU fds closed during unwinding).
pub fn stop_all(threads: Vec<JoinHandle<Vcpu>>) -> Vec<Vcpu> {
    let mut out = Vec::with_capacity(threads.len());
    for t in threads {
        let mut spins = 0u32;
        while !t.is_finished() {
            // Kick, then re-kick now and then: covers a thread that had not yet bound its
            // kick target when the first signal arrived.
            if spins.is_multiple_of(256) {
                let _ = signal::kick(&t);
            }
            spins = spins.wrapping_add(1);
            if spins < 4096 {
                std::thread::yield_now();
            } else {
                std::thread::sleep(Duration::from_micros(100));
            }
        }
        if let Ok(v) = t.join() {
            out.push(v);
        }
    }
    out
}
