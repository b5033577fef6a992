//! vCPU threads: one per vCPU, running `KVM_RUN` and handing each exit to the backend's
//! [`ExitHandler`] until the launch ends. The loop itself handles only what every platform
//! shares (kicks, `EAGAIN`, internal errors, failed entries); everything else is the
//! handler's: the native one ([`NativeExits`]) is the devices and the reset/power paths, a
//! confidential backend adds its own exits (memory faults, hypercalls, user-space MSRs) in
//! front of it. The first vCPU to see a launch-ending event posts the [`Outcome`]; the
//! session then stops every vCPU with the kick signal (`sys::signal`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::VcpuExit;

use crate::devices::{Action, Devices, LaunchClock, ResetSource, PORT_BOOT_MARKER};
use crate::sys::kvm::{PortIo, Vcpu};
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
    /// The platform (kernel, firmware, or the model standing in for them) refused to
    /// launch the bundle as given: a bad policy, ID block, page list… Never run.
    LaunchRefused(String),
}

impl Outcome {
    /// `outcome` value in events and audit records.
    pub fn kind(&self) -> &'static str {
        match self {
            Outcome::PowerOff(_) => "power-off",
            Outcome::Reset(_) => "reset",
            Outcome::GuestFatal(_) => "guest-fatal",
            Outcome::VmmError(_) => "vmm-error",
            Outcome::LaunchRefused(_) => "launch-refused",
        }
    }

    /// `reason` value in events and audit records.
    pub fn reason(&self) -> String {
        match self {
            Outcome::PowerOff(r) => (*r).to_string(),
            Outcome::Reset(s) => s.name().to_string(),
            Outcome::GuestFatal(r) | Outcome::VmmError(r) | Outcome::LaunchRefused(r) => r.clone(),
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

/// What a launch does after one exit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitAction {
    /// Re-enter the guest.
    Continue,
    /// The launch ends with this outcome.
    End(Outcome),
}

/// The handler of a launch's vCPU exits (one per launch, shared by its vCPU threads).
pub trait ExitHandler: Send + Sync {
    /// Handles one exit of vCPU `id`.
    fn handle(&self, id: u32, exit: VcpuExit<'_>) -> ExitAction;

    /// Handles a port access of vCPU `id` with its access width (`Vcpu::port_io`); by
    /// default as the `IoIn`/`IoOut` exit it came from.
    fn port_io(&self, id: u32, io: PortIo<'_>) -> ExitAction {
        let exit = if io.input {
            VcpuExit::IoIn(io.port, io.data)
        } else {
            VcpuExit::IoOut(io.port, io.data)
        };
        self.handle(id, exit)
    }

    /// Handles a `KVM_EXIT_TDX` of vCPU `id` (the guest's TDVMCALL that KVM forwards; the
    /// handler writes `exit.ret`). By default the launch ends: only a TD can exit so.
    fn tdx_exit(&self, id: u32, exit: crate::sys::tdx::TdxExit<'_>) -> ExitAction {
        ExitAction::End(Outcome::GuestFatal(format!(
            "vCPU {id}: KVM_EXIT_TDX (TDVMCALL {:#x}) outside a TD",
            exit.nr
        )))
    }

    /// Handles a `KVM_EXIT_SNP_REQ_CERTS` of vCPU `id` (an SNP guest's report request whose
    /// certificates the VMM supplies; the handler writes `exit.ret`). Returns the action and,
    /// when it supplied certificates, the lock on their file: held until KVM has sent the
    /// request to the firmware, which the vCPU loop makes happen before the lock goes
    /// ([`snp_req_certs`]). By default the launch ends: only an SNP VM with certificate
    /// requests enabled exits so.
    fn snp_req_certs(
        &self,
        id: u32,
        exit: crate::sys::sev::SnpReqCerts<'_>,
    ) -> (ExitAction, Option<crate::sys::sev::OfdLock>) {
        let _ = exit;
        (
            ExitAction::End(Outcome::GuestFatal(format!(
                "vCPU {id}: KVM_EXIT_SNP_REQ_CERTS without certificate requests enabled"
            ))),
            None,
        )
    }
}

/// The native exits: port and MMIO accesses go to the devices; triple fault and the
/// `SYSTEM_EVENT`s are resets, power-off and crashes.
pub struct NativeExits {
    devices: Arc<Mutex<Devices>>,
}

impl NativeExits {
    /// Over one launch's devices.
    pub fn new(devices: Arc<Mutex<Devices>>) -> NativeExits {
        NativeExits { devices }
    }

    fn devices(&self) -> std::sync::MutexGuard<'_, Devices> {
        self.devices.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `out` of `data` to `port` in accesses of `size` bytes; device work left for after the
    /// lock (a vmlaunchupdate write: copying and planning a bundle) runs here, without it,
    /// so it stalls no other vCPU.
    fn port_out(&self, port: u16, size: usize, data: &[u8]) -> Action {
        let (action, deferred) = {
            let mut d = self.devices();
            let action = d.io_out(port, size, data);
            (action, d.take_deferred())
        };
        if !deferred.is_empty() {
            deferred.run();
        }
        action
    }
}

impl ExitHandler for NativeExits {
    fn port_io(&self, _id: u32, io: PortIo<'_>) -> ExitAction {
        let action = if io.input {
            self.devices().io_in(io.port, io.size, io.data)
        } else {
            self.port_out(io.port, io.size, io.data)
        };
        native_action(action)
    }

    fn handle(&self, id: u32, exit: VcpuExit<'_>) -> ExitAction {
        let action = match exit {
            // Without its width (not from `port_io`): taken as one access of every byte.
            VcpuExit::IoOut(port, data) => self.port_out(port, data.len(), data),
            VcpuExit::IoIn(port, data) => self.devices().io_in(port, data.len(), data),
            VcpuExit::MmioRead(addr, data) => {
                self.devices().mmio_read(addr, data);
                Action::None
            }
            VcpuExit::MmioWrite(addr, data) => {
                self.devices().mmio_write(addr, data);
                Action::None
            }
            VcpuExit::Shutdown => Action::Reset(ResetSource::TripleFault),
            VcpuExit::SystemEvent(kind, data) => {
                return ExitAction::End(match kind {
                    KVM_SYSTEM_EVENT_RESET => Outcome::Reset(ResetSource::SystemEvent),
                    KVM_SYSTEM_EVENT_SHUTDOWN => Outcome::PowerOff("system-event-shutdown"),
                    KVM_SYSTEM_EVENT_CRASH => Outcome::GuestFatal("system-event-crash".into()),
                    other => Outcome::GuestFatal(format!(
                        "system event {other} ({} data words)",
                        data.len()
                    )),
                })
            }
            // No in-kernel handling needed.
            VcpuExit::IrqWindowOpen | VcpuExit::Hlt => Action::None,
            other => {
                return ExitAction::End(Outcome::GuestFatal(format!(
                    "unexpected exit on vCPU {id}: {other:?}"
                )))
            }
        };
        native_action(action)
    }
}

/// What a device action means for the launch.
fn native_action(action: Action) -> ExitAction {
    match action {
        Action::None => ExitAction::Continue,
        Action::Reset(src) => ExitAction::End(Outcome::Reset(src)),
        Action::PowerOff => ExitAction::End(Outcome::PowerOff("acpi-pm1-slp-en")),
        Action::Panic => ExitAction::End(Outcome::GuestFatal("pvpanic".into())),
    }
}

/// Runs one vCPU until the launch stops; returns the vCPU (so its fds are closed by whoever
/// drops the VM, off the critical path).
pub fn run_vcpu(
    mut vcpu: Vcpu,
    id: u32,
    ctl: Arc<RunControl>,
    exits: Arc<dyn ExitHandler>,
    clock: Arc<LaunchClock>,
) -> Vcpu {
    signal::with_kick_target(&mut vcpu, |vcpu| vcpu_loop(vcpu, id, &ctl, &*exits, &clock));
    vcpu
}

fn vcpu_loop(
    vcpu: &mut Vcpu,
    id: u32,
    ctl: &RunControl,
    exits: &dyn ExitHandler,
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
            // Interrupted by a signal (a kick): re-check the stop flag.
            Ok(VcpuExit::Intr) => ExitAction::Continue,
            Ok(VcpuExit::InternalError) => {
                let (suberror, data) = vcpu.internal_error();
                let rip = vcpu.get_regs().map(|r| r.rip).unwrap_or(u64::MAX);
                ExitAction::End(Outcome::GuestFatal(format!(
                    "KVM internal error on vCPU {id}: suberror {suberror}, data {data:x?}, rip {rip:#x}"
                )))
            }
            Ok(VcpuExit::FailEntry(reason, cpu)) => ExitAction::End(Outcome::GuestFatal(format!(
                "VM entry failed on vCPU {id}: reason {reason:#x} (host cpu {cpu})"
            ))),
            // Port I/O again with its access width, which `VcpuExit` drops.
            Ok(VcpuExit::IoIn(..) | VcpuExit::IoOut(..)) => match vcpu.port_io() {
                Some(io) => exits.port_io(id, io),
                None => ExitAction::End(Outcome::VmmError(format!(
                    "vCPU {id}: port I/O exit without its kvm_run data"
                ))),
            },
            // A TD's forwarded TDVMCALL: its fields and `ret` live in kvm_run (exit 40, which
            // kvm-ioctls reports as Unsupported).
            Ok(VcpuExit::Unsupported(crate::sys::tdx::KVM_EXIT_TDX)) => match vcpu.tdx_exit() {
                Some(e) => exits.tdx_exit(id, e),
                None => ExitAction::End(Outcome::VmmError(format!(
                    "vCPU {id}: KVM_EXIT_TDX without its kvm_run data"
                ))),
            },
            // An SNP guest's certificate request (exit 42, Linux 7.0: Unsupported in
            // kvm-ioctls).
            Ok(VcpuExit::Unsupported(crate::sys::sev::KVM_EXIT_SNP_REQ_CERTS)) => {
                snp_req_certs(vcpu, id, exits)
            }
            Ok(exit) => exits.handle(id, exit),
            // Kicked (EINTR); a waiting AP that received INIT (EAGAIN): re-enter.
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => ExitAction::Continue,
            Err(e) => ExitAction::End(Outcome::VmmError(format!("KVM_RUN on vCPU {id}: {e}"))),
        };
        if let ExitAction::End(outcome) = action {
            ctl.post(outcome);
            return;
        }
    }
}

/// Answers a `KVM_EXIT_SNP_REQ_CERTS` through `exits`. When the handler supplied
/// certificates it returns the shared lock on their file, which must be held "until the
/// attestation request is actually sent to firmware": the next `KVM_RUN` runs with
/// `immediate_exit` set, so KVM completes the request (the firmware call) and returns
/// `EINTR` without entering the guest, and only then is the lock dropped
/// (`Documentation/virt/kvm/x86/amd-memory-encryption.rst`, KVM_SEV_SNP_ENABLE_REQ_CERTS;
/// x86 `kvm_arch_vcpu_ioctl_run` runs `complete_userspace_io` before it checks
/// `immediate_exit`).
fn snp_req_certs(vcpu: &mut Vcpu, id: u32, exits: &dyn ExitHandler) -> ExitAction {
    let Some(exit) = vcpu.snp_req_certs() else {
        return ExitAction::End(Outcome::VmmError(format!(
            "vCPU {id}: KVM_EXIT_SNP_REQ_CERTS without its kvm_run data"
        )));
    };
    let (action, lock) = exits.snp_req_certs(id, exit);
    let Some(lock) = lock else {
        return action;
    };
    vcpu.set_immediate_exit(1);
    let completed = vcpu.run().map(|exit| format!("{exit:?}"));
    drop(lock);
    match completed {
        // The request reached the firmware; the guest has its answer.
        Err(e) if e.errno() == libc::EINTR => action,
        Ok(exit) => ExitAction::End(Outcome::VmmError(format!(
            "vCPU {id}: KVM_RUN with immediate_exit after a certificate request exited with \
             {exit} instead of EINTR"
        ))),
        Err(e) => ExitAction::End(Outcome::VmmError(format!(
            "vCPU {id}: KVM_RUN completing a certificate request: {e}"
        ))),
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
