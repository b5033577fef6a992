//! `--platform emulated:<snp|sev-es|sev|tdx>`: the real backend of the platform, unchanged,
//! over the emulated door (`sys::emu`): the kernel model answers the confidential calls, an
//! ordinary KVM VM runs the guest with the platform's register state and memory contents.
//!
//! A development and CI tool: it never claims security (audit records say `"emulated":true`),
//! and the measurement it reports (`launch_measurement`) is the model's, computed from what
//! the backend actually gave it.
//!
//! What the guest sees (`sys::emu::GuestView`, and [`SevViewExits`] here):
//! - SEV family: CPUID 0x8000001F (C-bit 47, the platform's feature bits), `SEV_STATUS`
//!   (0xC0010131) read through a user-space MSR filter, RAM aliased at the C-bit, and the
//!   GHCB MSR protocol (0xC0010130) answered for what travels in the MSR alone: SEV
//!   information, CPUID, hypervisor features, page-state change and termination requests
//!   (GHCB spec "GHCB MSR Protocol"). VMGEXIT itself is `rep vmmcall`, which an ordinary KVM
//!   guest executes as a KVM hypercall (RAX gets `-KVM_ENOSYS`): the response is already in
//!   the MSR when the guest reads it back, but a guest must treat RAX as clobbered. A full
//!   GHCB page exchange is not emulated (KVM never sees the page).
//! - TDX: CPUID leaf 0x21 "IntelTDX    " and the TD's initial registers; TDCALL cannot run
//!   on an AMD host (it is #UD), so a TD guest here must use port I/O directly.

use std::sync::{Arc, Mutex, PoisonError};

use kvm_bindings::kvm_cpuid_entry2;
use kvm_ioctls::VcpuExit;
use relaunch_core::plan::Platform;

use super::{Backend, BackendError, BuiltVm, ExecError};
use crate::devices::Devices;
use crate::launch::Launch;
use crate::memory::GuestMemory;
use crate::model::{Model, ModelConfig};
use crate::sys::emu::{EmuKvm, GuestView, C_BIT, MSR_GHCB, MSR_SEV_STATUS};
use crate::sys::kvm::{Kvm, PortIo, Vm};
use crate::vcpu::{ExitAction, ExitHandler, Outcome};
use crate::vstate::Host;

/// CPUID 0x8000001F.EAX bits (AMD APM vol. 3): SEV (1), SEV-ES (3), SEV-SNP (4).
const CPUID_SEV: u32 = 1 << 1;
const CPUID_SEV_ES: u32 = 1 << 3;
const CPUID_SNP: u32 = 1 << 4;

/// The guest view and `SEV_STATUS` value of `platform` (AMD APM vol. 2 §15.34.10: bit 0
/// SEV enabled, bit 1 SEV-ES enabled, bit 2 SNP active).
fn view_of(platform: Platform) -> Option<(GuestView, u64)> {
    match platform {
        Platform::Sev => Some((
            GuestView::Sev {
                features: CPUID_SEV,
            },
            0b001,
        )),
        Platform::SevEs => Some((
            GuestView::Sev {
                features: CPUID_SEV | CPUID_SEV_ES,
            },
            0b011,
        )),
        Platform::Snp => Some((
            GuestView::Sev {
                features: CPUID_SEV | CPUID_SEV_ES | CPUID_SNP,
            },
            0b111,
        )),
        Platform::Tdx => Some((GuestView::Tdx, 0)),
        Platform::Native => None,
    }
}

/// An emulated confidential platform (module doc).
#[derive(Debug)]
pub struct EmulatedBackend {
    inner: Box<dyn Backend>,
    model: Model,
    /// `SEV_STATUS` for SEV views (`None` for TDX).
    sev_status: Option<u64>,
    /// The CPUID table the emulated host gives vCPUs.
    cpuid: Arc<[kvm_cpuid_entry2]>,
    /// Serialises builds so that the model's measurement read after a build is that build's.
    building: Mutex<()>,
}

impl EmulatedBackend {
    /// The emulated `platform` on the real KVM `real`, its firmware a kernel model configured
    /// by `cfg`.
    ///
    /// # Errors
    /// [`BackendError::Unavailable`] for native (nothing to emulate) or when the emulated
    /// host cannot be set up.
    pub fn new(
        platform: Platform,
        real: &Kvm,
        cfg: ModelConfig,
    ) -> Result<EmulatedBackend, BackendError> {
        let Some((view, status)) = view_of(platform) else {
            return Err(BackendError::Unavailable {
                platform,
                missing: "native is not a confidential platform: there is nothing to emulate"
                    .into(),
            });
        };
        let mut cfg = cfg;
        // A long relaunch loop must not grow the model's trace log.
        cfg.record_events = false;
        // The Secure Processor checks the SNP CPUID page against the CPU the guest runs on.
        if cfg.firmware_cpuid.is_none() {
            let host = real
                .supported_cpuid(crate::vstate::MAX_CPUID_ENTRIES)
                .map_err(|e| BackendError::Unavailable {
                    platform,
                    missing: format!("KVM_GET_SUPPORTED_CPUID: {e}"),
                })?;
            cfg.firmware_cpuid = Some(host.as_slice().to_vec());
        }
        let model = Model::new(cfg);
        let door = EmuKvm::new(real.door(), Arc::new(model.clone()), view);
        let host = Host::with_kvm(Kvm::with(Arc::new(door)), false).map_err(|e| {
            BackendError::Unavailable {
                platform,
                missing: format!("the emulated host cannot be set up: {e}"),
            }
        })?;
        let cpuid: Arc<[kvm_cpuid_entry2]> = host.cpuid.as_slice().into();
        let host = Arc::new(host);
        let inner: Box<dyn Backend> = if platform == Platform::Tdx {
            Box::new(super::tdx::TdxBackend::emulated(host))
        } else {
            Box::new(super::sev::SevBackend::new(platform, host))
        };
        Ok(EmulatedBackend {
            inner,
            model,
            sev_status: matches!(view, GuestView::Sev { .. }).then_some(status),
            cpuid,
            building: Mutex::new(()),
        })
    }

    /// The kernel model behind the door (its log, its last measurement).
    pub fn model(&self) -> &Model {
        &self.model
    }
}

impl Backend for EmulatedBackend {
    fn platform(&self) -> Platform {
        self.inner.platform()
    }

    fn emulated(&self) -> bool {
        true
    }

    fn memory_backing(&self) -> &'static str {
        // Private pages are the shared mapping (sys::emu module doc).
        "anonymous (emulated private memory)"
    }

    fn build(&self, launch: &Launch) -> Result<BuiltVm, ExecError> {
        let _one = self.building.lock().unwrap_or_else(PoisonError::into_inner);
        let mut built = self.inner.build(launch)?;
        // What the emulated platform computed at finish, from what it was given.
        built.launch_measurement = self.model.measurement().map(|m| m.to_string());
        Ok(built)
    }

    fn set_owner_gate(&self, gate: Option<Arc<dyn super::OwnerGate>>) -> bool {
        self.inner.set_owner_gate(gate)
    }

    fn exit_handler(
        &self,
        devices: Arc<Mutex<Devices>>,
        vm: &Vm,
        memory: &Arc<GuestMemory>,
    ) -> Arc<dyn ExitHandler> {
        let inner = self.inner.exit_handler(devices, vm, memory);
        match self.sev_status {
            Some(status) => Arc::new(SevViewExits::new(inner, status, Arc::clone(&self.cpuid))),
            None => inner,
        }
    }
}

/// GHCB MSR protocol codes, GHCBInfo = bits 11:0 (GHCB spec v2, §2.3.1 "GHCB MSR Protocol").
mod ghcb {
    /// SEV Information Response / Request.
    pub const SEV_INFO_RESP: u64 = 0x001;
    pub const SEV_INFO_REQ: u64 = 0x002;
    /// CPUID Request / Response.
    pub const CPUID_REQ: u64 = 0x004;
    pub const CPUID_RESP: u64 = 0x005;
    /// Hypervisor Feature Support Request / Response (version 2).
    pub const HV_FEATURES_REQ: u64 = 0x080;
    pub const HV_FEATURES_RESP: u64 = 0x081;
    /// SNP Page State Change Request / Response.
    pub const PSC_REQ: u64 = 0x014;
    pub const PSC_RESP: u64 = 0x015;
    /// Termination Request.
    pub const TERM_REQ: u64 = 0x100;
    /// GHCB protocol versions this platform speaks (min, max).
    pub const PROTOCOL_MIN: u64 = 1;
    pub const PROTOCOL_MAX: u64 = 2;
}

/// The SEV guest view's MSRs (module doc), over the platform's own exit handler.
pub struct SevViewExits {
    inner: Arc<dyn ExitHandler>,
    status: u64,
    /// The GHCB MSR's value per vCPU (what the guest wrote, or our response).
    ghcb: Mutex<Vec<u64>>,
    /// The CPUID table the vCPUs run with, for GHCB CPUID requests.
    cpuid: Arc<[kvm_cpuid_entry2]>,
}

impl SevViewExits {
    /// `SEV_STATUS` = `status` and CPUID `cpuid`, over `inner`.
    pub fn new(
        inner: Arc<dyn ExitHandler>,
        status: u64,
        cpuid: Arc<[kvm_cpuid_entry2]>,
    ) -> SevViewExits {
        SevViewExits {
            inner,
            status,
            ghcb: Mutex::new(Vec::new()),
            cpuid,
        }
    }

    fn ghcb_get(&self, id: u32) -> u64 {
        let g = self.ghcb.lock().unwrap_or_else(PoisonError::into_inner);
        g.get(id as usize).copied().unwrap_or(0)
    }

    fn ghcb_set(&self, id: u32, v: u64) {
        let mut g = self.ghcb.lock().unwrap_or_else(PoisonError::into_inner);
        let i = id as usize;
        if g.len() <= i {
            g.resize(i + 1, 0);
        }
        g[i] = v;
    }

    /// Answers a GHCB MSR protocol request written to the GHCB MSR: the response the guest
    /// reads back, or the end of the launch for a termination request.
    fn ghcb_request(&self, id: u32, req: u64) -> Result<u64, Outcome> {
        let info = req & 0xFFF;
        Ok(match info {
            ghcb::SEV_INFO_REQ => {
                (ghcb::PROTOCOL_MAX << 48)
                    | (ghcb::PROTOCOL_MIN << 32)
                    | (u64::from(C_BIT) << 24)
                    | ghcb::SEV_INFO_RESP
            }
            ghcb::CPUID_REQ => {
                // [63:32] function, [31:30] register (EAX, EBX, ECX, EDX).
                let function = (req >> 32) as u32;
                let reg = ((req >> 30) & 3) as usize;
                let regs = self.cpuid_of(function);
                (u64::from(regs[reg]) << 32) | (req & (3 << 30)) | ghcb::CPUID_RESP
            }
            // No optional hypervisor features (bit 0 "SEV-SNP" would promise AP creation
            // and the GHCB page protocol, which this emulation does not give).
            ghcb::HV_FEATURES_REQ => ghcb::HV_FEATURES_RESP,
            // Page-state changes: private and shared are the same memory here; success
            // ([63:32] error code 0).
            ghcb::PSC_REQ => ghcb::PSC_RESP,
            ghcb::TERM_REQ => {
                // [15:12] reason code set, [23:16] reason code.
                let set = (req >> 12) & 0xF;
                let code = (req >> 16) & 0xFF;
                return Err(Outcome::GuestFatal(format!(
                    "vCPU {id} asked to terminate (GHCB MSR protocol, reason set {set}, code {code:#x})"
                )));
            }
            // Unknown requests get GHCBInfo 0 back, which no request uses: the guest sees it
            // was not understood.
            _ => 0,
        })
    }

    /// The vCPUs' CPUID leaf `function`, subleaf 0 (the MSR protocol's request has no
    /// subleaf); zeros for a leaf the table lacks, as KVM answers.
    fn cpuid_of(&self, function: u32) -> [u32; 4] {
        self.cpuid
            .iter()
            .find(|e| e.function == function && e.index == 0)
            .map_or([0; 4], |e| [e.eax, e.ebx, e.ecx, e.edx])
    }
}

impl ExitHandler for SevViewExits {
    fn handle(&self, id: u32, exit: VcpuExit<'_>) -> ExitAction {
        match exit {
            VcpuExit::X86Rdmsr(e) if e.index == MSR_SEV_STATUS => {
                *e.data = self.status;
                *e.error = 0;
                ExitAction::Continue
            }
            VcpuExit::X86Rdmsr(e) if e.index == MSR_GHCB => {
                *e.data = self.ghcb_get(id);
                *e.error = 0;
                ExitAction::Continue
            }
            VcpuExit::X86Wrmsr(e) if e.index == MSR_GHCB => {
                *e.error = 0;
                match self.ghcb_request(id, e.data) {
                    Ok(resp) => {
                        self.ghcb_set(id, resp);
                        ExitAction::Continue
                    }
                    Err(o) => ExitAction::End(o),
                }
            }
            // SEV_STATUS is read-only: a write faults (#GP), as on hardware.
            VcpuExit::X86Wrmsr(e) => {
                *e.error = 1;
                ExitAction::Continue
            }
            other => self.inner.handle(id, other),
        }
    }

    fn port_io(&self, id: u32, io: PortIo<'_>) -> ExitAction {
        self.inner.port_io(id, io)
    }

    fn tdx_exit(&self, id: u32, exit: crate::sys::tdx::TdxExit<'_>) -> ExitAction {
        self.inner.tdx_exit(id, exit)
    }
}
