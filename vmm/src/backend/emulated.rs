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
//!   (GHCB spec "GHCB MSR Protocol"). The response is in the MSR as soon as the WRMSR
//!   returns. VMGEXIT itself is `rep vmmcall`, which an ordinary KVM guest executes as a KVM
//!   hypercall (RAX gets `-KVM_ENOSYS`, so a guest must treat RAX as clobbered) — and which,
//!   on the nested hosts our tests run on, did not return within 60 s (measured with the
//!   `fuki` guest's page-state changes). A guest that must also run here reads the MSR back
//!   first and issues VMGEXIT only when the answer is not there yet (real SNP answers at
//!   VMGEXIT), as `boot-images/guests/src/bin/fuki.rs` does. A full GHCB page exchange is not
//!   emulated (KVM never sees the page).
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
use crate::sys::kvm::{Kvm, MemAttrs, PortIo, Vm};
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
        // The Secure Processor checks the SNP CPUID page against the CPU the guest runs on:
        // this host's CPU as the emulated part shows it (the view's 0x8000001F: the SEV bits
        // the page declares are the part's, not this host's, which has none).
        if cfg.firmware_cpuid.is_none() {
            let unavailable = |e: crate::sys::Errno| BackendError::Unavailable {
                platform,
                missing: format!("KVM_GET_SUPPORTED_CPUID: {e}"),
            };
            let host = real
                .supported_cpuid(crate::vstate::MAX_CPUID_ENTRIES)
                .map_err(unavailable)?;
            let part = view.cpuid(&host).map_err(unavailable)?;
            cfg.firmware_cpuid = Some(part.as_slice().to_vec());
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
            Some(status) => {
                let view = SevViewExits::new(inner, status, Arc::clone(&self.cpuid));
                Arc::new(if self.inner.platform() == Platform::Snp {
                    view.with_page_states(vm.mem_attrs(), Arc::clone(memory))
                } else {
                    view
                })
            }
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
    /// Page State Change Request fields: [51:12] the GPA's page, [55:52] the operation.
    pub const PSC_GPA_MASK: u64 = 0x000F_FFFF_FFFF_F000;
    pub const PSC_OP_SHIFT: u32 = 52;
    /// The operations: page assignment private / shared.
    pub const PSC_OP_PRIVATE: u64 = 1;
    pub const PSC_OP_SHARED: u64 = 2;
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
    /// SNP: the VM's attribute handle and memory, for page-state change requests.
    psc: Option<(MemAttrs, Arc<GuestMemory>)>,
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
            psc: None,
        }
    }

    /// Page-state change requests convert pages of `memory` (SNP: a guest's shared pages are
    /// what devices may use).
    pub fn with_page_states(mut self, attrs: MemAttrs, memory: Arc<GuestMemory>) -> SevViewExits {
        self.psc = Some((attrs, memory));
        self
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
            // Page-state change ([55:52] operation: 1 private, 2 shared; [51:12] GFN): the
            // page map follows, as for KVM_HC_MAP_GPA_RANGE on real SNP (the memory itself is
            // one here). Response [63:32] error code, 0 = success.
            ghcb::PSC_REQ => {
                use ghcb::{PSC_OP_PRIVATE, PSC_OP_SHARED};
                let gpa = req & ghcb::PSC_GPA_MASK;
                let op = (req >> ghcb::PSC_OP_SHIFT) & 0xF;
                let result = match (op, &self.psc) {
                    (PSC_OP_PRIVATE | PSC_OP_SHARED, Some((attrs, memory))) => {
                        let page = crate::vstate::PAGE_SIZE;
                        let private = op == PSC_OP_PRIVATE;
                        super::coco_exits::convert_pages(attrs, memory, gpa, page, private)
                    }
                    (PSC_OP_PRIVATE | PSC_OP_SHARED, None) => Err(libc::ENOTTY),
                    _ => Err(libc::EINVAL),
                };
                let code = u64::from(result.is_err());
                (code << 32) | ghcb::PSC_RESP
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_ioctls::{MsrExitReason, ReadMsrExit, WriteMsrExit};

    /// Counts what reaches the platform's own handler.
    #[derive(Default)]
    struct Inner(Mutex<u32>);

    impl ExitHandler for Inner {
        fn handle(&self, _id: u32, _exit: VcpuExit<'_>) -> ExitAction {
            *self.0.lock().unwrap() += 1;
            ExitAction::Continue
        }
    }

    fn view() -> (Arc<Inner>, SevViewExits) {
        let inner = Arc::new(Inner::default());
        let cpuid: Arc<[kvm_cpuid_entry2]> = vec![kvm_cpuid_entry2 {
            function: 0x8000_001F,
            eax: 0x1A,
            ebx: 0x6F,
            ..Default::default()
        }]
        .into();
        let v = SevViewExits::new(Arc::clone(&inner) as _, 0b111, cpuid);
        (inner, v)
    }

    fn rdmsr(v: &SevViewExits, id: u32, index: u32) -> (u64, u8) {
        let (mut data, mut error) = (0xdead, 0xff);
        let exit = VcpuExit::X86Rdmsr(ReadMsrExit {
            error: &mut error,
            reason: MsrExitReason::Filter,
            index,
            data: &mut data,
        });
        assert!(matches!(v.handle(id, exit), ExitAction::Continue));
        (data, error)
    }

    fn wrmsr(v: &SevViewExits, id: u32, index: u32, data: u64) -> (ExitAction, u8) {
        let mut error = 0xff;
        let exit = VcpuExit::X86Wrmsr(WriteMsrExit {
            error: &mut error,
            reason: MsrExitReason::Filter,
            index,
            data,
        });
        let a = v.handle(id, exit);
        (a, error)
    }

    /// SEV_STATUS reads the platform's bits; writing it faults (#GP: `error` = 1, `api.rst`
    /// KVM_EXIT_X86_WRMSR).
    #[test]
    fn sev_status_is_read_only() {
        let (inner, v) = view();
        assert_eq!(rdmsr(&v, 0, MSR_SEV_STATUS), (0b111, 0));
        let (a, err) = wrmsr(&v, 0, MSR_SEV_STATUS, 0);
        assert!(matches!(a, ExitAction::Continue));
        assert_eq!(err, 1);
        assert_eq!(*inner.0.lock().unwrap(), 0);
    }

    /// The GHCB MSR protocol (GHCB spec v2 §2.3.1): the response to the request the guest
    /// wrote is what it reads back, per vCPU.
    #[test]
    fn ghcb_msr_protocol_requests_are_answered() {
        let (_, v) = view();
        let ask = |id, req| {
            let (a, err) = wrmsr(&v, id, MSR_GHCB, req);
            assert!(matches!(a, ExitAction::Continue));
            assert_eq!(err, 0);
            rdmsr(&v, id, MSR_GHCB)
        };
        // SEV information: [63:48] max, [47:32] min protocol, [31:24] C-bit, 0x001.
        assert_eq!(
            ask(0, 0x002),
            ((2 << 48) | (1 << 32) | (47 << 24) | 0x001, 0)
        );
        // CPUID 0x8000001F, EBX (register 1 in bits 31:30): value in 63:32, 0x005.
        assert_eq!(
            ask(1, (0x8000_001F << 32) | (1 << 30) | 0x004),
            ((0x6F << 32) | (1 << 30) | 0x005, 0)
        );
        // A leaf the table lacks reads as zero.
        assert_eq!(ask(1, (0x4000_0000 << 32) | 0x004), (0x005, 0));
        // vCPU 0's response is its own.
        assert_eq!(rdmsr(&v, 0, MSR_GHCB).0 & 0xFFF, 0x001);
        // Page-state change without SNP page states (SEV-ES): error code 1; hypervisor
        // features: none; unknown: GHCBInfo 0.
        assert_eq!(
            ask(0, (1 << 52) | (0x123 << 12) | 0x014),
            ((1 << 32) | 0x015, 0)
        );
        assert_eq!(ask(0, 0x080), (0x081, 0));
        assert_eq!(ask(0, 0xFFE), (0, 0));
    }

    /// A termination request (0x100, reason set in 15:12, code in 23:16) ends the launch
    /// guest-fatal with the reason; other exits go to the platform's handler.
    #[test]
    fn termination_request_ends_the_launch() {
        let (inner, v) = view();
        let (a, _) = wrmsr(&v, 2, MSR_GHCB, (0x03 << 16) | (1 << 12) | 0x100);
        match a {
            ExitAction::End(Outcome::GuestFatal(m)) => {
                assert!(
                    m.contains("vCPU 2") && m.contains("reason set 1, code 0x3"),
                    "{m}"
                )
            }
            _ => panic!("not ended"),
        }
        assert!(matches!(v.handle(0, VcpuExit::Hlt), ExitAction::Continue));
        assert_eq!(*inner.0.lock().unwrap(), 1);
    }

    /// SNP page-state change through the GHCB MSR (op 2 = shared, GFN in 51:12) converts the
    /// page as `KVM_HC_MAP_GPA_RANGE` does on real SNP: `KVM_SET_MEMORY_ATTRIBUTES` and the
    /// page map; a page outside RAM answers a non-zero error code and changes nothing.
    #[test]
    fn snp_page_state_change_converts_the_page() {
        use crate::memory::Region;
        use crate::sys::mem::GuestMapping;
        use crate::sys::record::Recorder;
        let rec = Recorder::new(4, &[]);
        let vm = Kvm::with(Arc::new(rec.clone())).create_vm(4).unwrap();
        let gmem = Arc::new(vm.create_guest_memfd(0x10000, 0).unwrap());
        let shared = Arc::new(GuestMapping::anonymous(0x10000).unwrap());
        let mut memory = GuestMemory::default();
        memory.push(Region::private(0, 0x10000, gmem, Some(shared)));
        memory.convert(0, 0x10000, true).unwrap();
        let memory = Arc::new(memory);
        let (_, v) = view();
        let v = v.with_page_states(vm.mem_attrs(), Arc::clone(&memory));
        let ask = |req| {
            let (a, _) = wrmsr(&v, 0, MSR_GHCB, req);
            assert!(matches!(a, ExitAction::Continue));
            rdmsr(&v, 0, MSR_GHCB).0
        };
        assert_eq!(ask((2 << 52) | (3 << 12) | 0x014), 0x015);
        assert!(!memory.is_private(0x3000));
        assert!(memory.is_private(0x2000) && memory.is_private(0x4000));
        assert!(rec
            .lines()
            .iter()
            .any(|l| l
                .contains("KVM_SET_MEMORY_ATTRIBUTES address=0x3000 size=0x1000 attributes=0x0")));
        // Outside RAM, and an operation that is neither private nor shared.
        assert_eq!(ask((2 << 52) | (0x100 << 12) | 0x014), (1 << 32) | 0x015);
        assert_eq!(ask((7 << 52) | (3 << 12) | 0x014), (1 << 32) | 0x015);
        // Back to private.
        assert_eq!(ask((1 << 52) | (3 << 12) | 0x014), 0x015);
        assert!(memory.is_private(0x3000));
    }
}
