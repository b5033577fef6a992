//! The TDX backend: a TD on KVM (`KVM_X86_TDX_VM`), launched in the order
//! `Documentation/virt/kvm/x86/intel-tdx.rst` ("KVM TDX creation flow") prescribes:
//! `KVM_CREATE_VM` → `KVM_TDX_CAPABILITIES` → `KVM_TDX_INIT_VM` (before any vCPU) →
//! `KVM_CREATE_VCPU` + `KVM_TDX_INIT_VCPU` → guest memory (guest_memfd memslots,
//! `KVM_SET_MEMORY_ATTRIBUTES(PRIVATE)`) → `KVM_TDX_INIT_MEM_REGION` → `KVM_TDX_FINALIZE_VM`
//! (`../shared/spec/kvm-coco-abi.md` §3.1).
//!
//! Phases (`super::Phases`):
//! - `create_vm`: VM type 5; the TDX module's capabilities (asked once per process, on the
//!   first VM: they are a property of the host, cached in [`TdxBackend`]); `INIT_VM` with
//!   the plan's attributes (`CreateVm.policy`), XFAM and CPUID (rules at [`td_cpuid`] and
//!   [`td_xfam`]); the split irqchip (KVM answers `ENOTTY` to `KVM_CREATE_IRQCHIP` for a VM
//!   with protected EOI, `arch/x86/kvm/x86.c`; spec §3.1), 24 IOAPIC pins as QEMU; and
//!   `KVM_CAP_EXIT_HYPERCALL` bit 12 (`KVM_HC_MAP_GPA_RANGE`): without it the guest's MapGPA
//!   gets SUBFUNC_UNSUPPORTED (spec §3.2).
//! - `memory`: per RAM range a guest_memfd (flags 0: `INIT_SHARED` is refused on VMs with
//!   private memory, spec §2) for the private pages and a shared anonymous mapping for the
//!   shared view (and the staging copy of the launch bytes), one memslot, and the whole range
//!   made private (`KVM_SET_MEMORY_ATTRIBUTES`): `INIT_MEM_REGION` requires a private range
//!   (spec §3.1).
//! - `vcpus`: per vCPU `KVM_CREATE_VCPU`, `KVM_SET_CPUID2` (QEMU's order, spec §3.1),
//!   `KVM_TDX_INIT_VCPU` with the initial RCX of the plan's `VpSource::TdxInit` context (the
//!   TD HOB's GPA, `docs/measurement.md` §3.6), then `KVM_TDX_GET_CPUID`: the CPUID the TDX
//!   module gives the vCPU, compared with what `INIT_VM` configured ([`TdCpuidReport`]).
//!   No `KVM_SET_REGS`: the TDX module fixes the initial register state (`TDH.VP.INIT`);
//!   RCX is the one value the VMM chooses.
//! - `op`: `ImportPage` stages the bytes in the shared mapping and adds the page with
//!   `KVM_TDX_INIT_MEM_REGION`, `KVM_TDX_MEASURE_MEMORY_REGION` for `Normal` pages only
//!   (`docs/measurement.md` §6); consecutive pages of one kind in one region become one call,
//!   looped on the progress the kernel copies back (partial progress, `EINTR`). `Shared`
//!   pages are staged and the page made shared again (never added). `SetVpContext` with
//!   `VpSource::TdxInit` sets nothing (`vcpus` did `INIT_VCPU`: see above).
//! - `finish`: the last pending pages, then `KVM_TDX_FINALIZE_VM` (`TDH.MR.FINALIZE`).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};
use relaunch_core::limits::PAGE_SIZE;
use relaunch_core::plan::{LaunchOp, LaunchPlan, PageKind, Platform, VpSource};

use super::native::{Prepared, PreparedCache};
use super::{kvm_err, Backend, BackendError, BuiltVm, ExecError, ExecTimings, Phases};
use crate::devices::Devices;
use crate::launch::Launch;
use crate::memory::{GuestMemory, MemError, Region};
use crate::sys::coco::{
    CocoError, Source, TdxCapabilities, TdxCpuid, TdxMemRegion, TdxVcpuCmd, TdxVmCmd,
};
use crate::sys::kvm::{Vcpu, Vm};
use crate::sys::mem::GuestMapping;
use crate::sys::tdx::{
    TdxExit, GET_CPUID_MAX_ENTRIES, KVM_SYSTEM_EVENT_TDX_FATAL, KVM_X86_TDX_VM, TDVMCALL_GET_QUOTE,
    TDVMCALL_GET_TD_VM_CALL_INFO, TDVMCALL_SETUP_EVENT_NOTIFY_INTERRUPT,
    TDVMCALL_STATUS_SUBFUNC_UNSUPPORTED, TDVMCALL_STATUS_SUCCESS,
};
use crate::sys::Errno;
use crate::vcpu::{ExitAction, ExitHandler, NativeExits, Outcome};
use crate::vstate::Host;

/// `KVM_CAP_SPLIT_IRQCHIP` (`include/uapi/linux/kvm.h`: 121).
pub const KVM_CAP_SPLIT_IRQCHIP: u32 = kvm_bindings::KVM_CAP_SPLIT_IRQCHIP;
/// `KVM_CAP_EXIT_HYPERCALL` (`include/uapi/linux/kvm.h`: 201).
pub const KVM_CAP_EXIT_HYPERCALL: u32 = kvm_bindings::KVM_CAP_EXIT_HYPERCALL;
/// `KVM_HC_MAP_GPA_RANGE` (`include/uapi/linux/kvm_para.h`: 12): bit 12 of the
/// `KVM_CAP_EXIT_HYPERCALL` mask.
pub const KVM_HC_MAP_GPA_RANGE: u64 = 12;
/// IOAPIC pins routed by the split irqchip (QEMU's `KVM_ENABLE_CAP(SPLIT_IRQCHIP, 24)`,
/// `IOAPIC_NUM_PINS`).
const IOAPIC_PINS: u64 = 24;
/// XFAM bits 0 (x87) and 1 (SSE), which the TDX module requires set (Intel TDX module ABI
/// spec, XFAM fixed-1 bits; QEMU sets them through the CPU model's XCR0).
const XFAM_FIXED1: u64 = 0x3;
/// `EINTR`s without progress tolerated per `INIT_MEM_REGION` run before giving up.
const MAX_STALLS: u32 = 64;

/// Room `KVM_TDX_GET_CPUID` is first given: `KVM_MAX_CPUID_ENTRIES` (256,
/// `arch/x86/include/asm/kvm_host.h`), the size of the kernel's own answer buffer.
pub const GET_CPUID_ENTRIES: u32 = 256;

/// The TDX backend on one host.
#[derive(Debug)]
pub struct TdxBackend {
    host: Arc<Host>,
    /// `KVM_TDX_CAPABILITIES`, once per process (spec §6: per-host discovery is cached).
    caps: Mutex<Option<Arc<TdxCapabilities>>>,
    prepared: PreparedCache,
    /// Running on the emulated door (`backend::emulated`).
    emulated: bool,
    /// What `KVM_TDX_GET_CPUID` said in the last build, and the launch it was reported for.
    cpuid_report: Mutex<Option<(u64, Arc<TdCpuidReport>)>>,
}

impl TdxBackend {
    /// A TDX backend on `host` (which offers VM type 5: `super::select` checks).
    pub fn new(host: Arc<Host>) -> TdxBackend {
        TdxBackend {
            prepared: PreparedCache::new(Arc::clone(&host)),
            host,
            caps: Mutex::new(None),
            emulated: false,
            cpuid_report: Mutex::new(None),
        }
    }

    /// A TDX backend on the emulated door's `host` (`backend::emulated`): the same launch,
    /// plus the TD's initial registers loaded into the ordinary VM that runs it.
    pub fn emulated(host: Arc<Host>) -> TdxBackend {
        TdxBackend {
            emulated: true,
            ..TdxBackend::new(host)
        }
    }

    /// The TD CPUID report of the last build (`None` before one reached its vCPUs).
    pub fn cpuid_report(&self) -> Option<Arc<TdCpuidReport>> {
        self.cpuid_report
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|(_, r)| Arc::clone(r))
    }
}

/// What the TDX module gives each vCPU (`KVM_TDX_GET_CPUID`), against what `INIT_VM`
/// configured. QEMU does the same check per vCPU (`target/i386/kvm/tdx.c`
/// `tdx_check_features`): bits it asked for that the TD lacks ("TDX doesn't support
/// requested feature") and configurable bits the module sets though not asked ("TDX
/// forcibly sets the feature") are warnings, fatal only with `enforce`; here they are
/// reported once per launch on stderr and kept in the report.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TdCpuidReport {
    /// Per vCPU, the TD's CPUID.
    pub vcpus: Vec<Vec<kvm_cpuid_entry2>>,
    /// `leaf L subleaf S REG: BITS` configured by `INIT_VM` but absent from the TD's CPUID
    /// (vCPU 0; the TD's CPUID is TD-scoped).
    pub unavailable: Vec<String>,
    /// `leaf L subleaf S REG: BITS` that `KVM_TDX_CAPABILITIES` calls configurable, that
    /// `INIT_VM` did not set, and that the TD's CPUID has (vCPU 0).
    pub forced_on: Vec<String>,
}

/// `KVM_TDX_GET_CPUID` on `vcpu` with room for `room` entries, retried once with the room
/// the kernel asks for on `E2BIG` (`intel-tdx.rst`: "When it returns -E2BIG, the user space
/// should allocate a larger buffer and retry. The minimum buffer size is updated in the nent
/// field"); at most [`GET_CPUID_MAX_ENTRIES`].
///
/// # Errors
/// [`BackendError::Tdx`] naming the command.
pub fn get_td_cpuid(vcpu: &Vcpu, room: u32) -> Result<Vec<kvm_cpuid_entry2>, BackendError> {
    let mut room = room;
    let mut last = CocoError::errno(libc::E2BIG);
    for _ in 0..2 {
        let mut cmd = TdxVcpuCmd::GetCpuid(TdxCpuid {
            nent: room,
            entries: Vec::new(),
        });
        let res = vcpu.tdx_vcpu_cmd(&mut cmd);
        let (nent, entries) = match cmd {
            TdxVcpuCmd::GetCpuid(out) => (out.nent, out.entries),
            _ => (0, Vec::new()),
        };
        match res {
            Ok(()) => return Ok(entries),
            Err(e)
                if e.errno.errno() == libc::E2BIG
                    && nent > room
                    && nent <= GET_CPUID_MAX_ENTRIES =>
            {
                room = nent;
                last = e;
            }
            Err(e) => {
                last = e;
                break;
            }
        }
    }
    Err(BackendError::Tdx {
        what: "KVM_TDX_GET_CPUID",
        error: last,
    })
}

/// The bits `config` (the `INIT_VM` CPUID) sets that `td` lacks, and the configurable bits
/// (`caps`) `td` sets that `config` does not, as `leaf L subleaf S REG: BITS` phrases.
pub fn compare_td_cpuid(
    config: &[kvm_cpuid_entry2],
    td: &[kvm_cpuid_entry2],
    caps: &TdxCapabilities,
) -> (Vec<String>, Vec<String>) {
    let key = |e: &kvm_cpuid_entry2| {
        let indexed = e.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX != 0;
        (e.function, if indexed { e.index } else { 0 })
    };
    let regs = |e: Option<&kvm_cpuid_entry2>| e.map_or([0; 4], |e| [e.eax, e.ebx, e.ecx, e.edx]);
    let phrase = |e: &kvm_cpuid_entry2, bits: [u32; 4]| {
        ["eax", "ebx", "ecx", "edx"]
            .iter()
            .zip(bits)
            .filter(|(_, b)| *b != 0)
            .map(|(r, b)| {
                format!(
                    "leaf {:#x} subleaf {:#x} {r}: {b:#010x}",
                    e.function,
                    key(e).1
                )
            })
            .collect::<Vec<_>>()
    };
    let mut unavailable = Vec::new();
    let mut forced_on = Vec::new();
    for m in &caps.cpuid {
        let c = regs(config.iter().find(|e| key(e) == key(m)));
        let t = regs(td.iter().find(|e| key(e) == key(m)));
        let mask = regs(Some(m));
        let missing: [u32; 4] = std::array::from_fn(|i| c[i] & !t[i]);
        let forced: [u32; 4] = std::array::from_fn(|i| t[i] & mask[i] & !c[i]);
        unavailable.extend(phrase(m, missing));
        forced_on.extend(phrase(m, forced));
    }
    (unavailable, forced_on)
}

impl Backend for TdxBackend {
    fn platform(&self) -> Platform {
        Platform::Tdx
    }

    fn memory_backing(&self) -> &'static str {
        "guest_memfd"
    }

    fn build(&self, launch: &Launch) -> Result<BuiltVm, ExecError> {
        let plan = launch.plan();
        let prep = self.prepared.get(launch)?;
        let phases = TdxBuild {
            backend: self,
            td_config: Vec::new(),
            prep: &prep,
            plan,
            launch_id: launch.id(),
            vm: None,
            vcpus: Vec::new(),
            memory: GuestMemory::default(),
            pending: None,
            timings: ExecTimings::default(),
            t0: Instant::now(),
        };
        super::run_phases(phases, plan)
    }

    fn exit_handler(
        &self,
        devices: Arc<Mutex<Devices>>,
        vm: &crate::sys::kvm::Vm,
        memory: &Arc<GuestMemory>,
    ) -> Arc<dyn ExitHandler> {
        // MapGPA reaches us as KVM_HC_MAP_GPA_RANGE like SNP's page-state changes (spec
        // §3.2): the shared confidential handler converts; TDX's own exits come first.
        Arc::new(TdxExits {
            coco: super::coco_exits::CocoExits::new(
                NativeExits::new(devices),
                vm.mem_attrs(),
                Arc::clone(memory),
            ),
        })
    }
}

/// The TD's `KVM_TDX_INIT_VM` CPUID: for every leaf/subleaf the TDX module lets the VMM
/// configure (`KVM_TDX_CAPABILITIES.cpuid`, whose register values are masks of the
/// configurable bits), the host's supported value (`KVM_GET_SUPPORTED_CPUID`) ANDed with that
/// mask; leaves the host does not report are left out. Source: intel-tdx.rst
/// (`KVM_TDX_CAPABILITIES`: "cpuid: the CPUID bits that are configurable"; `KVM_TDX_INIT_VM`:
/// an entry with a bit that is not configurable fails with `EINVAL`; spec §3.1). QEMU builds
/// its TD CPUID the same way from its CPU model (`target/i386/kvm/tdx.c`); ours is the host's.
pub fn td_cpuid(host: &CpuId, caps: &TdxCapabilities) -> Vec<kvm_cpuid_entry2> {
    caps.cpuid
        .iter()
        .filter_map(|c| {
            let indexed = c.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX != 0;
            let h = host
                .as_slice()
                .iter()
                .find(|h| h.function == c.function && (!indexed || h.index == c.index))?;
            Some(kvm_cpuid_entry2 {
                function: c.function,
                index: if indexed { c.index } else { 0 },
                flags: c.flags,
                eax: h.eax & c.eax,
                ebx: h.ebx & c.ebx,
                ecx: h.ecx & c.ecx,
                edx: h.edx & c.edx,
                padding: [0; 3],
            })
        })
        .collect()
}

/// The TD's XFAM: the XSAVE features the host supports (CPUID.(EAX=0DH,ECX=0):EDX:EAX for
/// XCR0 and CPUID.(EAX=0DH,ECX=1):EDX:ECX for IA32_XSS, Intel SDM Vol. 1 §13.2) plus x87|SSE,
/// limited to what the TDX module allows (`supported_xfam`).
pub fn td_xfam(host: &CpuId, caps: &TdxCapabilities) -> u64 {
    let leaf = |index| {
        host.as_slice()
            .iter()
            .find(|e| e.function == 0xD && e.index == index)
    };
    let xcr0 = leaf(0).map_or(0, |e| u64::from(e.eax) | (u64::from(e.edx) << 32));
    let xss = leaf(1).map_or(0, |e| u64::from(e.ecx) | (u64::from(e.edx) << 32));
    (xcr0 | xss | XFAM_FIXED1) & caps.supported_xfam
}

/// Consecutive pages waiting for one `INIT_MEM_REGION`.
#[derive(Clone, Copy, Debug)]
struct Run {
    gpa: u64,
    pages: u64,
    measure: bool,
}

/// One TDX build in progress.
struct TdxBuild<'b> {
    backend: &'b TdxBackend,
    /// The CPUID `INIT_VM` was given (for the `KVM_TDX_GET_CPUID` comparison).
    td_config: Vec<kvm_cpuid_entry2>,
    prep: &'b Prepared,
    plan: &'b LaunchPlan,
    launch_id: u64,
    vm: Option<Vm>,
    vcpus: Vec<Vcpu>,
    memory: GuestMemory,
    pending: Option<Run>,
    timings: ExecTimings,
    t0: Instant,
}

fn no_vm() -> BackendError {
    BackendError::Kvm {
        what: "no VM (create_vm did not run)",
        errno: Errno::new(libc::EINVAL),
    }
}

fn tdx_err(what: &'static str) -> impl FnOnce(CocoError) -> BackendError {
    move |error| BackendError::Tdx { what, error }
}

impl TdxBuild<'_> {
    /// Keeps what `KVM_TDX_GET_CPUID` said (vCPU 0 against the `INIT_VM` CPUID) on the
    /// backend, and says it on stderr the first time per launch when the TD's CPUID differs
    /// from what was configured.
    fn report_cpuid(&self, vcpus: Vec<Vec<kvm_cpuid_entry2>>) {
        let caps = self
            .backend
            .caps
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .unwrap_or_default();
        let (unavailable, forced_on) = vcpus
            .first()
            .map(|td| compare_td_cpuid(&self.td_config, td, &caps))
            .unwrap_or_default();
        let report = Arc::new(TdCpuidReport {
            vcpus,
            unavailable,
            forced_on,
        });
        let mut last = self
            .backend
            .cpuid_report
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let first = last.as_ref().is_none_or(|(id, _)| *id != self.launch_id);
        if first && !report.unavailable.is_empty() {
            crate::elog!(
                "relaunch: TDX: the TD's CPUID lacks bits KVM_TDX_INIT_VM configured: {}",
                report.unavailable.join("; ")
            );
        }
        if first && !report.forced_on.is_empty() {
            crate::elog!(
                "relaunch: TDX: the TDX module sets configurable CPUID bits KVM_TDX_INIT_VM \
                 did not: {}",
                report.forced_on.join("; ")
            );
        }
        *last = Some((self.launch_id, report));
    }

    fn caps(&self, vm: &Vm) -> Result<Arc<TdxCapabilities>, BackendError> {
        let mut cache = self
            .backend
            .caps
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = cache.as_ref() {
            return Ok(Arc::clone(c));
        }
        let mut caps = TdxCapabilities::default();
        vm.tdx_vm_cmd(&mut TdxVmCmd::Capabilities(&mut caps))
            .map_err(tdx_err("KVM_TDX_CAPABILITIES"))?;
        let caps = Arc::new(caps);
        *cache = Some(Arc::clone(&caps));
        Ok(caps)
    }

    /// One private region: guest_memfd + shared anonymous mapping, memslot, attributes.
    fn add_region(&mut self, gpa: u64, size: u64) -> Result<(), BackendError> {
        let vm = self.vm.as_mut().ok_or_else(no_vm)?;
        let len = usize::try_from(size).map_err(|_| MemError::Outside { gpa, len: size })?;
        let gmem = Arc::new(
            vm.create_guest_memfd(size, 0)
                .map_err(kvm_err("KVM_CREATE_GUEST_MEMFD"))?,
        );
        let shared = Arc::new(GuestMapping::anonymous(len).map_err(kvm_err("mapping shared RAM"))?);
        vm.add_memslot(gpa, size, Some(&shared), Some(&gmem))
            .map_err(kvm_err("KVM_SET_USER_MEMORY_REGION2"))?;
        vm.set_memory_attributes(gpa, size, true)
            .map_err(kvm_err("KVM_SET_MEMORY_ATTRIBUTES"))?;
        // Region::private starts every page private, as the attributes just set.
        self.memory
            .push(Region::private(gpa, size, gmem, Some(shared)));
        Ok(())
    }

    /// Adds the pending pages: one `INIT_MEM_REGION`, resumed from the progress the kernel
    /// copies back until no page is left.
    fn flush(&mut self) -> Result<(), BackendError> {
        let Some(run) = self.pending.take() else {
            return Ok(());
        };
        let len = run.pages * PAGE_SIZE;
        let (region, offset) = self.memory.locate(run.gpa, len)?;
        let mapping = region
            .shared
            .as_deref()
            .ok_or(MemError::Private { gpa: run.gpa, len })?;
        // KVM takes INIT_MEM_REGION on any vCPU of the TD; QEMU uses the first.
        let vcpu = self
            .vcpus
            .first()
            .ok_or(BackendError::Vp { vp: 0, vcpus: 0 })?;
        let mut left = TdxMemRegion {
            source: Source { mapping, offset },
            gpa: run.gpa,
            nr_pages: run.pages,
            measure: run.measure,
        };
        let mut stalls = 0;
        while left.nr_pages > 0 {
            let before = left.nr_pages;
            let mut cmd = TdxVcpuCmd::InitMemRegion(left);
            let res = vcpu.tdx_vcpu_cmd(&mut cmd);
            let TdxVcpuCmd::InitMemRegion(back) = cmd else {
                return Err(no_vm());
            };
            left = back;
            match res {
                Ok(()) => {}
                Err(e) if e.errno.errno() == libc::EINTR || e.errno.errno() == libc::EAGAIN => {}
                Err(e) => {
                    return Err(BackendError::Tdx {
                        what: "KVM_TDX_INIT_MEM_REGION",
                        error: e,
                    })
                }
            }
            if left.nr_pages >= before {
                stalls += 1;
                if stalls > MAX_STALLS {
                    return Err(BackendError::Tdx {
                        what: "KVM_TDX_INIT_MEM_REGION (no progress)",
                        error: CocoError::errno(libc::EINTR),
                    });
                }
            } else {
                stalls = 0;
            }
        }
        Ok(())
    }

    fn import(&mut self, gpa: u64, kind: PageKind, bytes: &[u8]) -> Result<(), BackendError> {
        let measure = match kind {
            PageKind::Normal => true,
            PageKind::Zero | PageKind::Unmeasured => false,
            PageKind::Shared => {
                self.flush()?;
                self.memory.locate(gpa, PAGE_SIZE)?;
                if !bytes.is_empty() {
                    self.memory.stage(gpa, bytes)?;
                }
                let vm = self.vm.as_ref().ok_or_else(no_vm)?;
                vm.set_memory_attributes(gpa, PAGE_SIZE, false)
                    .map_err(kvm_err("KVM_SET_MEMORY_ATTRIBUTES"))?;
                self.memory.convert(gpa, PAGE_SIZE, false)?;
                return Ok(());
            }
            // The planner refuses these for TDX (`docs/measurement.md` §6); checked again.
            PageKind::Secrets | PageKind::Cpuid => {
                return Err(BackendError::Kvm {
                    what: "an SNP secrets or CPUID page in a TDX launch",
                    errno: Errno::new(libc::EINVAL),
                })
            }
        };
        self.memory.locate(gpa, PAGE_SIZE)?;
        // The fresh shared mapping is zero: only non-zero contents need staging.
        if kind != PageKind::Zero && !bytes.is_empty() {
            self.memory.stage(gpa, bytes)?;
        }
        if let Some(run) = &mut self.pending {
            let next = run.gpa.checked_add(run.pages * PAGE_SIZE);
            let same_region = self
                .memory
                .locate(run.gpa, (run.pages + 1) * PAGE_SIZE)
                .is_ok();
            if run.measure == measure && next == Some(gpa) && same_region {
                run.pages += 1;
                return Ok(());
            }
        }
        self.flush()?;
        self.pending = Some(Run {
            gpa,
            pages: 1,
            measure,
        });
        Ok(())
    }

    /// The initial RCX of vCPU `vp`: from the plan's `TdxInit` context, else 0.
    fn initial_rcx(&self, vp: u32) -> u64 {
        self.plan
            .ops()
            .iter()
            .find_map(|op| match *op {
                LaunchOp::SetVpContext {
                    vp: v,
                    source: VpSource::TdxInit,
                    ctx,
                } if v == vp => self.plan.vp_contexts().get(ctx as usize),
                _ => None,
            })
            .map_or(0, |r| r.gprs.rcx)
    }
}

impl Phases for TdxBuild<'_> {
    fn create_vm(&mut self) -> Result<(), BackendError> {
        let platform = self.plan.config().platform;
        if platform != Platform::Tdx {
            return Err(BackendError::WrongPlatform {
                plan: platform,
                backend: Platform::Tdx,
            });
        }
        let attributes = self
            .plan
            .ops()
            .iter()
            .find_map(|op| match *op {
                LaunchOp::CreateVm { policy, .. } => Some(policy),
                _ => None,
            })
            .unwrap_or(0);
        let t = Instant::now();
        self.t0 = t;
        let vm = self
            .backend
            .host
            .kvm
            .create_vm(KVM_X86_TDX_VM)
            .map_err(kvm_err("KVM_CREATE_VM"))?;
        let caps = self.caps(&vm)?;
        // INIT_VM refuses attributes outside `supported_attrs` (spec §3.1): say so first.
        if attributes & !caps.supported_attrs != 0 {
            return Err(BackendError::Unavailable {
                platform: Platform::Tdx,
                missing: format!(
                    "this TDX module does not support the TD attributes {:#x} (supported: {:#x})",
                    attributes & !caps.supported_attrs,
                    caps.supported_attrs
                ),
            });
        }
        let host_cpuid = &self.backend.host.cpuid;
        self.td_config = td_cpuid(host_cpuid, &caps);
        let cpuid = CpuId::from_entries(&self.td_config).map_err(|_| BackendError::Kvm {
            what: "building the TD CPUID",
            errno: Errno::new(libc::E2BIG),
        })?;
        vm.tdx_vm_cmd(&mut TdxVmCmd::InitVm {
            attributes,
            xfam: td_xfam(host_cpuid, &caps),
            // No MRCONFIGID/MROWNER/MROWNERCONFIG flags yet: zero, as QEMU without
            // `mrconfigid=`/`mrowner=`/`mrownerconfig=`.
            mrconfigid: [0; 48],
            mrowner: [0; 48],
            mrownerconfig: [0; 48],
            cpuid: &cpuid,
        })
        .map_err(tdx_err("KVM_TDX_INIT_VM"))?;
        vm.enable_cap(KVM_CAP_SPLIT_IRQCHIP, [IOAPIC_PINS, 0, 0, 0])
            .map_err(kvm_err("KVM_ENABLE_CAP(KVM_CAP_SPLIT_IRQCHIP)"))?;
        vm.enable_cap(KVM_CAP_EXIT_HYPERCALL, [1 << KVM_HC_MAP_GPA_RANGE, 0, 0, 0])
            .map_err(kvm_err("KVM_ENABLE_CAP(KVM_CAP_EXIT_HYPERCALL)"))?;
        self.vm = Some(vm);
        self.timings.create_vm = t.elapsed();
        Ok(())
    }

    fn memory(&mut self) -> Result<(), BackendError> {
        let t = Instant::now();
        for &(gpa, size) in self.prep.slots() {
            self.add_region(gpa, size)?;
        }
        self.timings.memslots = t.elapsed();
        Ok(())
    }

    fn vcpus(&mut self) -> Result<(), BackendError> {
        let t = Instant::now();
        let vm = self.vm.as_ref().ok_or_else(no_vm)?;
        // Per vCPU: create, CPUID, then INIT_VCPU (`intel-tdx.rst`, "TD setup"), then the
        // CPUID the TDX module virtualizes for it (KVM_TDX_GET_CPUID: any time between
        // INIT_VM and FINALIZE_VM, `tdx_vcpu_ioctl`; QEMU asks before its KVM_SET_CPUID2,
        // `kvm_arch_init_vcpu` → `tdx_check_features`).
        let mut td = Vec::new();
        let list = self.prep.create_vcpus(vm, |id, vcpu| {
            let rcx = self.initial_rcx(id);
            vcpu.tdx_vcpu_cmd(&mut TdxVcpuCmd::InitVcpu { rcx })
                .map_err(tdx_err("KVM_TDX_INIT_VCPU"))?;
            td.push(get_td_cpuid(vcpu, GET_CPUID_ENTRIES)?);
            if self.backend.emulated {
                // What the TDX module does at TDH.VP.INIT, done for the ordinary VM the
                // emulated TD runs in: the TD's initial registers, every vCPU runnable at the
                // reset vector (a TD has no INIT/SIPI; its firmware parks the APs).
                let sig = self.backend.host.vcpu_signature();
                let regs = relaunch_core::arch::vmsa::tdx_vcpu_regs(id, rcx, false, sig);
                self.prep.load_regs(vcpu, id, &regs)?;
                if id != 0 {
                    vcpu.set_mp_state(kvm_bindings::KVM_MP_STATE_RUNNABLE)
                        .map_err(kvm_err("KVM_SET_MP_STATE"))?;
                }
            }
            Ok(())
        })?;
        self.report_cpuid(td);
        self.vcpus = list;
        self.timings.vcpus = t.elapsed();
        Ok(())
    }

    fn op(&mut self, op: &LaunchOp) -> Result<(), BackendError> {
        let t = Instant::now();
        match *op {
            LaunchOp::MapRam { gpa, size } => {
                // Registered in `memory` (same plan); a range it did not foresee is added now.
                self.flush()?;
                let missing = self.memory.uncovered(gpa, size);
                for (g, s) in missing {
                    self.add_region(g, s)?;
                }
                self.timings.map_ram += t.elapsed();
            }
            LaunchOp::ImportPage { gpa, kind, data } => {
                let plan = self.plan;
                let bytes = plan.page_bytes(&data);
                let bytes = bytes
                    .get(..bytes.len().min(PAGE_SIZE as usize))
                    .unwrap_or(&[]);
                self.import(gpa, kind, bytes)?;
                self.timings.import += t.elapsed();
            }
            // Nothing to set: `vcpus` gave INIT_VCPU this context's RCX, and the TDX module
            // fixes every other initial register (module doc).
            LaunchOp::SetVpContext {
                vp,
                source: VpSource::TdxInit,
                ..
            } => {
                let vcpus = self.vcpus.len() as u32;
                if vp >= vcpus {
                    return Err(BackendError::Vp { vp, vcpus });
                }
            }
            LaunchOp::SetVpContext { .. } => {
                return Err(BackendError::Kvm {
                    what: "a TD's vCPU state comes from the TDX module (VpSource::TdxInit only)",
                    errno: Errno::new(libc::EINVAL),
                })
            }
            LaunchOp::CreateVm { .. } | LaunchOp::Finalize { .. } => {
                return Err(BackendError::misplaced())
            }
        }
        Ok(())
    }

    fn finish(mut self) -> Result<BuiltVm, BackendError> {
        let t = Instant::now();
        self.flush()?;
        self.timings.import += t.elapsed();
        let vm = self.vm.take().ok_or_else(no_vm)?;
        vm.tdx_vm_cmd(&mut TdxVmCmd::FinalizeVm)
            .map_err(tdx_err("KVM_TDX_FINALIZE_VM"))?;
        self.timings.total = self.t0.elapsed();
        Ok(BuiltVm {
            vcpus: self.vcpus,
            vm,
            memory: Arc::new(self.memory),
            timings: self.timings,
            launch_id: self.launch_id,
            launch_measurement: None,
        })
    }
}

/// A TD's exits: `KVM_SYSTEM_EVENT_TDX_FATAL` (TDG.VP.VMCALL ReportFatalError) ends the
/// launch as a guest fatal error with its code; everything else as native (port and MMIO
/// TDVMCALLs arrive as ordinary `KVM_EXIT_IO`/`MMIO`, spec §3.2).
struct TdxExits {
    coco: super::coco_exits::CocoExits,
}

/// The outcome of a `KVM_SYSTEM_EVENT_TDX_FATAL` with `data` (the guest's GPRs in RAX..R15
/// order: the error code is R12, an optional info GPA R13; spec §3.2).
pub fn tdx_fatal(data: &[u64]) -> Outcome {
    let code = data.get(12).copied().unwrap_or(0);
    let info = data.get(13).copied().unwrap_or(0);
    Outcome::GuestFatal(format!(
        "tdx-fatal: error code {code:#x} (info gpa {info:#x})"
    ))
}

/// Answers a TDVMCALL KVM forwarded (`KVM_EXIT_TDX`, spec §3.2): we offer no quote service,
/// so GetQuote is answered SUBFUNC_UNSUPPORTED (the guest sees "no quoting" rather than a
/// hang); GetTdVmCallInfo leaf 1 gets SUCCESS with R11..R14 = 0 (no TDVMCALL beyond what
/// KVM handles itself); anything else SUBFUNC_UNSUPPORTED. `ret` is always written: KVM
/// hands it back to the guest on the next `KVM_RUN`.
pub fn answer_tdvmcall(exit: TdxExit<'_>) {
    *exit.ret = match exit.nr {
        TDVMCALL_GET_TD_VM_CALL_INFO if exit.data[0] == 1 => {
            exit.data[1..].fill(0);
            TDVMCALL_STATUS_SUCCESS
        }
        TDVMCALL_GET_QUOTE | TDVMCALL_SETUP_EVENT_NOTIFY_INTERRUPT => {
            TDVMCALL_STATUS_SUBFUNC_UNSUPPORTED
        }
        _ => TDVMCALL_STATUS_SUBFUNC_UNSUPPORTED,
    };
}

impl ExitHandler for TdxExits {
    fn port_io(&self, id: u32, io: crate::sys::kvm::PortIo<'_>) -> ExitAction {
        self.coco.port_io(id, io)
    }

    fn tdx_exit(&self, _id: u32, exit: TdxExit<'_>) -> ExitAction {
        answer_tdvmcall(exit);
        ExitAction::Continue
    }

    fn handle(&self, id: u32, exit: kvm_ioctls::VcpuExit<'_>) -> ExitAction {
        match exit {
            kvm_ioctls::VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_TDX_FATAL, data) => {
                ExitAction::End(tdx_fatal(data))
            }
            other => self.coco.handle(id, other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::kvm::{Kvm, KVM_CAP_NR_MEMSLOTS, KVM_CAP_VM_TYPES};
    use crate::sys::record::Recorder;
    use relaunch_core::arch::regs::VpRegs;
    use relaunch_core::plan::{LaunchConfig, PageData, PlanParts};

    const MEM: u64 = 64 << 20;
    /// The TD HOB GPA our hand-made plan gives INIT_VCPU (RCX).
    const HOB: u64 = 0x80_0000;

    /// A host whose kernel is the recorder and offers VM types 0 and 5 (`KVM_CAP_VM_TYPES`).
    fn recorded() -> (Recorder, Arc<Host>) {
        let rec = Recorder::new(8, &[(KVM_CAP_NR_MEMSLOTS, 509), (KVM_CAP_VM_TYPES, 0x21)]);
        let host = Host::with_kvm(Kvm::with(Arc::new(rec.clone())), true).unwrap();
        rec.clear();
        (rec, Arc::new(host))
    }

    fn tdx_config(vcpus: u32) -> LaunchConfig {
        LaunchConfig {
            platform: Platform::Tdx,
            vcpus,
            mem_bytes: MEM,
            vcpu_sig: 0,
            guest_features: 0,
            policy: None,
            host_data: [0; 32],
            kernel_hashes: None,
        }
    }

    /// Two vCPUs in the TDX module's state (RCX = HOB), then pages: 0x1000, 0x2000 Normal,
    /// 0x3000 Unmeasured, 0x4000 Zero, 0x6000 Normal.
    fn hand_plan() -> Launch {
        let mut p = PlanParts::new(Arc::from(&[][..]), tdx_config(2));
        p.ops.push(LaunchOp::CreateVm {
            platform: Platform::Tdx,
            policy: 0x1000_0000,
            vmsa_features: 0,
            vcpus: 2,
        });
        let mut regs = VpRegs::default();
        regs.gprs.rcx = HOB;
        p.vp_contexts.push(regs);
        p.vp_contexts.push(regs);
        for vp in 0..2 {
            p.ops.push(LaunchOp::SetVpContext {
                vp,
                source: VpSource::TdxInit,
                ctx: vp,
            });
        }
        p.generated.push([0xAB; 4096]);
        for (gpa, kind) in [
            (0x1000, PageKind::Normal),
            (0x2000, PageKind::Normal),
            (0x3000, PageKind::Unmeasured),
            (0x4000, PageKind::Zero),
            (0x6000, PageKind::Normal),
        ] {
            let data = if kind == PageKind::Zero {
                PageData::Zeros
            } else {
                PageData::Generated { index: 0 }
            };
            p.ops.push(LaunchOp::ImportPage { gpa, kind, data });
        }
        p.ops.push(LaunchOp::Finalize {
            id_block: false,
            host_data: [0; 32],
        });
        Launch::from_plan(LaunchPlan::from_parts(p).unwrap())
    }

    /// The sequence written from `Documentation/virt/kvm/x86/intel-tdx.rst` ("KVM TDX
    /// creation flow") and `../shared/spec/kvm-coco-abi.md` §2–§3, not from this code:
    /// `KVM_CREATE_VM` with `KVM_X86_TDX_VM` (5); `KVM_TDX_CAPABILITIES` (VM-scoped); then
    /// `KVM_TDX_INIT_VM` before any vCPU, with the plan's attributes (SEPT_VE_DISABLE, bit
    /// 28), XFAM = x87|SSE (the recorder's host reports no leaf 0xD; the module's
    /// supported_xfam is 0x7) and only the CPUID leaves both the host reports and the module
    /// lets us configure (the recorder's: leaf 1 of {1, 0xB} ∩ {1, 7}); split irqchip with 24
    /// pins (cap 121), `KVM_CAP_EXIT_HYPERCALL` (201) = 1 << `KVM_HC_MAP_GPA_RANGE` (12);
    /// guest memory: a guest_memfd (flags 0), a `KVM_MEM_GUEST_MEMFD` (0x4) slot with a shared
    /// mapping, the range `KVM_MEMORY_ATTRIBUTE_PRIVATE` (0x8); per vCPU `KVM_CREATE_VCPU`,
    /// `KVM_SET_CPUID2`, `KVM_TDX_INIT_VCPU` (data = RCX), `KVM_TDX_GET_CPUID` (a vCPU
    /// ioctl, `struct kvm_cpuid2` with room for 256 entries: `KVM_MAX_CPUID_ENTRIES`);
    /// `KVM_TDX_INIT_MEM_REGION` on a
    /// vCPU fd after INIT_VCPU, flags 1 (`KVM_TDX_MEASURE_MEMORY_REGION`) for measured pages,
    /// consecutive pages of one kind in one call, source = the staged page at the same offset;
    /// `KVM_TDX_FINALIZE_VM` last. No `KVM_SET_REGS`, no `KVM_CREATE_IRQCHIP`.
    #[test]
    fn first_launch_and_relaunch_issue_the_documented_sequence() {
        let (rec, host) = recorded();
        let backend = TdxBackend::new(host);
        let l = hand_plan();
        let built = backend.build(&l).unwrap();
        let expected: Vec<String> = [
            "kvm KVM_CREATE_VM type=5",
            "vm0 KVM_TDX_CAPABILITIES cpuid_nent=256",
            "vm0 KVM_TDX_INIT_VM attributes=0x10000000 xfam=0x3 cpuid_nent=1",
            "vm0 KVM_ENABLE_CAP cap=121 args0=0x18 args1=0x0 args2=0x0 args3=0x0",
            "vm0 KVM_ENABLE_CAP cap=201 args0=0x1000 args1=0x0 args2=0x0 args3=0x0",
            "vm0 KVM_CREATE_GUEST_MEMFD size=0x4000000 flags=0x0",
            "vm0 KVM_SET_USER_MEMORY_REGION2 slot=0 flags=0x4 guest_phys_addr=0x0 memory_size=0x4000000 userspace_addr=mapped guest_memfd_offset=0 guest_memfd=fd",
            "vm0 KVM_SET_MEMORY_ATTRIBUTES address=0x0 size=0x4000000 attributes=0x8 flags=0",
            "vm0 KVM_CREATE_VCPU id=0",
            "vm0.vcpu0 KVM_SET_CPUID2 nent=2 apic_id=0",
            "vm0.vcpu0 KVM_TDX_INIT_VCPU data=0x800000",
            "vm0.vcpu0 KVM_TDX_GET_CPUID nent=256",
            "vm0 KVM_CREATE_VCPU id=1",
            "vm0.vcpu1 KVM_SET_CPUID2 nent=2 apic_id=1",
            "vm0.vcpu1 KVM_TDX_INIT_VCPU data=0x800000",
            "vm0.vcpu1 KVM_TDX_GET_CPUID nent=256",
            "vm0.vcpu0 KVM_TDX_INIT_MEM_REGION source_offset=0x1000 gpa=0x1000 nr_pages=2 flags=1",
            "vm0.vcpu0 KVM_TDX_INIT_MEM_REGION source_offset=0x3000 gpa=0x3000 nr_pages=2 flags=0",
            "vm0.vcpu0 KVM_TDX_INIT_MEM_REGION source_offset=0x6000 gpa=0x6000 nr_pages=1 flags=1",
            "vm0 KVM_TDX_FINALIZE_VM",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(rec.lines(), expected);
        // The staged source bytes are where INIT_MEM_REGION reads them; RAM is private.
        let (region, off) = built.memory.locate(0x2000, 4096).unwrap();
        let mut b = [0u8; 4];
        region.shared.as_ref().unwrap().read(off, &mut b).unwrap();
        assert_eq!(b, [0xAB; 4]);
        assert!(built.memory.is_private(0x2000));
        assert!(built.memory.read(0x2000, &mut b).is_err());
        // A relaunch: the same calls on a new VM, without asking the capabilities again
        // (host discovery is once per process: spec §6).
        drop(built);
        rec.clear();
        drop(backend.build(&l).unwrap());
        let again: Vec<String> = expected
            .iter()
            .filter(|l| !l.contains("KVM_TDX_CAPABILITIES"))
            .map(|l| l.replacen("vm0", "vm1", 1))
            .collect();
        assert_eq!(rec.lines(), again);
    }

    /// `KVM_TDX_INIT_MEM_REGION` copies its progress back even on `EINTR` (spec §3.1): the
    /// recorder does one page, then fails; the backend resumes from the copied-back
    /// `gpa`/source/`nr_pages`, and retries a call that made no progress.
    #[test]
    fn init_mem_region_resumes_from_partial_progress() {
        let (rec, host) = recorded();
        let backend = TdxBackend::new(host);
        rec.fail("KVM_TDX_INIT_MEM_REGION", libc::EINTR, 2);
        backend.build(&hand_plan()).unwrap();
        let regions: Vec<String> = rec
            .calls()
            .iter()
            .filter(|c| c.ioctl == "KVM_TDX_INIT_MEM_REGION")
            .map(|c| c.args.clone())
            .collect();
        assert_eq!(
            regions,
            [
                // One page done, EINTR.
                "source_offset=0x1000 gpa=0x1000 nr_pages=2 flags=1",
                // Resumed at the second page; EINTR again without progress (1 page left).
                "source_offset=0x2000 gpa=0x2000 nr_pages=1 flags=1",
                "source_offset=0x2000 gpa=0x2000 nr_pages=1 flags=1",
                "source_offset=0x3000 gpa=0x3000 nr_pages=2 flags=0",
                "source_offset=0x6000 gpa=0x6000 nr_pages=1 flags=1",
            ]
        );
        // Another errno ends the build, naming the command; nothing is finalized.
        rec.clear();
        rec.fail("KVM_TDX_INIT_MEM_REGION", libc::EIO, 1);
        let e = backend.build(&hand_plan()).unwrap_err();
        assert!(e.to_string().contains("KVM_TDX_INIT_MEM_REGION"), "{e}");
        assert!(!rec.lines().iter().any(|l| l.contains("FINALIZE")));
    }

    /// The real boot image's TDX view, planned by the core: the same protocol, every page
    /// the plan imports added exactly once with the flag its kind asks for
    /// (`docs/measurement.md` §6), INIT_VCPU for every vCPU before the first page.
    #[test]
    fn hello_igvm_tdx_view() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../boot-images/out/hello.igvm");
        let bytes = std::fs::read(path).unwrap();
        let l = Launch::new(bytes, &tdx_config(2)).unwrap();
        let (rec, host) = recorded();
        let backend = TdxBackend::new(host);
        backend.build(&l).unwrap();
        let calls = rec.calls();
        let names: Vec<&str> = calls.iter().map(|c| c.ioctl).collect();
        assert_eq!(
            names[..3],
            ["KVM_CREATE_VM", "KVM_TDX_CAPABILITIES", "KVM_TDX_INIT_VM"]
        );
        assert_eq!(calls[0].args, "type=5");
        assert_eq!(names.last(), Some(&"KVM_TDX_FINALIZE_VM"));
        assert!(!names.contains(&"KVM_CREATE_IRQCHIP") && !names.contains(&"KVM_SET_REGS"));
        let first_add = names
            .iter()
            .position(|n| *n == "KVM_TDX_INIT_MEM_REGION")
            .unwrap();
        let inits = names[..first_add]
            .iter()
            .filter(|n| **n == "KVM_TDX_INIT_VCPU")
            .count();
        assert_eq!(inits, 2);
        // Pages added, per flag, from the calls; expected from the plan's ops.
        let mut added: Vec<(u64, bool)> = Vec::new();
        for c in calls
            .iter()
            .filter(|c| c.ioctl == "KVM_TDX_INIT_MEM_REGION")
        {
            let f = c.fields();
            let num = |k| {
                f.iter()
                    .find_map(|(n, v)| match v {
                        crate::sys::record::Field::Num(x) if *n == k => Some(*x),
                        _ => None,
                    })
                    .unwrap()
            };
            // The source is the staged page: in guest RAM (one region from GPA 0) at the
            // page's own offset; in a `MapRam` region of its own (the reset vector page at
            // 0xFFFFF000) at its offset from that region's start.
            if num("gpa") < MEM {
                assert_eq!(num("source_offset"), num("gpa"));
            } else {
                assert_eq!(num("source_offset") % 4096, 0);
            }
            for i in 0..num("nr_pages") {
                added.push((num("gpa") + i * 4096, num("flags") == 1));
            }
        }
        let want: Vec<(u64, bool)> = l
            .plan()
            .ops()
            .iter()
            .filter_map(|op| match *op {
                LaunchOp::ImportPage { gpa, kind, .. } if kind != PageKind::Shared => {
                    Some((gpa, kind == PageKind::Normal))
                }
                _ => None,
            })
            .collect();
        assert!(!want.is_empty());
        assert_eq!(added, want);
    }

    /// A `Shared` page is never added (`docs/measurement.md` §6): it is staged and made
    /// shared again (`KVM_SET_MEMORY_ATTRIBUTES` with attributes 0, api.rst 4.141), after the
    /// pages before it were added (op order = measurement order).
    #[test]
    fn shared_pages_are_staged_and_made_shared_not_added() {
        let (rec, host) = recorded();
        let backend = TdxBackend::new(host);
        let mut parts = hand_plan().plan().clone().into_parts();
        let at = parts
            .ops
            .iter()
            .position(|op| matches!(op, LaunchOp::ImportPage { gpa: 0x3000, .. }))
            .unwrap();
        parts.ops.insert(
            at,
            LaunchOp::ImportPage {
                gpa: 0x9000,
                kind: PageKind::Shared,
                data: PageData::Generated { index: 0 },
            },
        );
        let l = Launch::from_plan(LaunchPlan::from_parts(parts).unwrap());
        let built = backend.build(&l).unwrap();
        let tail: Vec<String> = rec
            .lines()
            .into_iter()
            .skip_while(|l| !l.contains("KVM_TDX_INIT_MEM_REGION"))
            .collect();
        assert_eq!(
            tail,
            [
                "vm0.vcpu0 KVM_TDX_INIT_MEM_REGION source_offset=0x1000 gpa=0x1000 nr_pages=2 flags=1",
                "vm0 KVM_SET_MEMORY_ATTRIBUTES address=0x9000 size=0x1000 attributes=0x0 flags=0",
                "vm0.vcpu0 KVM_TDX_INIT_MEM_REGION source_offset=0x3000 gpa=0x3000 nr_pages=2 flags=0",
                "vm0.vcpu0 KVM_TDX_INIT_MEM_REGION source_offset=0x6000 gpa=0x6000 nr_pages=1 flags=1",
                "vm0 KVM_TDX_FINALIZE_VM",
            ]
        );
        // The guest's shared view holds the bytes; the page is shared for devices too.
        let mut b = [0u8; 2];
        built.memory.read(0x9000, &mut b).unwrap();
        assert_eq!(b, [0xAB; 2]);
    }

    #[test]
    fn attributes_the_module_does_not_support_are_refused_before_init_vm() {
        let (rec, host) = recorded();
        let backend = TdxBackend::new(host);
        let mut parts = hand_plan().plan().clone().into_parts();
        if let Some(LaunchOp::CreateVm { policy, .. }) = parts.ops.first_mut() {
            *policy = 1 << 30; // PKS: not in the recorder's supported_attrs.
        }
        let l = Launch::from_plan(LaunchPlan::from_parts(parts).unwrap());
        let e = backend.build(&l).unwrap_err();
        assert!(e.to_string().contains("0x40000000"), "{e}");
        assert!(!rec.lines().iter().any(|l| l.contains("KVM_TDX_INIT_VM")));
    }

    #[test]
    fn cpuid_is_the_host_masked_by_the_configurable_bits() {
        let host = CpuId::from_entries(&[
            kvm_cpuid_entry2 {
                function: 1,
                ecx: 0xFFFF_FFFF,
                edx: 0x1234_5678,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 7,
                index: 1,
                flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
                ebx: 0xFF,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0xD,
                eax: 0x2E7,
                ..Default::default()
            },
        ])
        .unwrap();
        let caps = crate::sys::record::tdx_capabilities();
        let c = td_cpuid(&host, &caps);
        // Leaf 1 masked; leaf 7 subleaf 0 is configurable but the host has only subleaf 1.
        assert_eq!(c.len(), 1);
        assert_eq!(
            (c[0].function, c[0].ecx, c[0].edx),
            (1, 0xFFFF, 0x1234_0000)
        );
        assert_eq!(td_xfam(&host, &caps), 0x7);
    }

    #[test]
    fn fatal_event_reports_r12() {
        let mut gprs = [0u64; 16];
        gprs[12] = 0xDEAD;
        let o = tdx_fatal(&gprs);
        assert!(
            matches!(&o, Outcome::GuestFatal(m) if m.contains("0xdead")),
            "{o:?}"
        );
        // A short data array (a hostile or buggy report) does not panic.
        assert!(matches!(tdx_fatal(&[]), Outcome::GuestFatal(_)));
    }

    #[test]
    fn tdvmcalls_are_answered_and_ret_always_written() {
        let mut data = [0x7000, 0x1000, 0, 0, 0];
        // KVM presets ret for GetQuote; write a sentinel to see ours.
        let mut ret = 0xFFFF;
        answer_tdvmcall(TdxExit {
            nr: TDVMCALL_GET_QUOTE,
            data: &mut data,
            ret: &mut ret,
        });
        assert_eq!(ret, TDVMCALL_STATUS_SUBFUNC_UNSUPPORTED);
        let mut data = [1, 9, 9, 9, 9];
        answer_tdvmcall(TdxExit {
            nr: TDVMCALL_GET_TD_VM_CALL_INFO,
            data: &mut data,
            ret: &mut ret,
        });
        assert_eq!((ret, data), (TDVMCALL_STATUS_SUCCESS, [1, 0, 0, 0, 0]));
        let mut data = [2, 9, 9, 9, 9];
        answer_tdvmcall(TdxExit {
            nr: TDVMCALL_GET_TD_VM_CALL_INFO,
            data: &mut data,
            ret: &mut ret,
        });
        assert_eq!((ret, data[1]), (TDVMCALL_STATUS_SUBFUNC_UNSUPPORTED, 9));
        answer_tdvmcall(TdxExit {
            nr: 0x4242,
            data: &mut data,
            ret: &mut ret,
        });
        assert_eq!(ret, TDVMCALL_STATUS_SUBFUNC_UNSUPPORTED);
    }

    #[test]
    fn select_needs_vm_type_5() {
        let (_, host) = recorded();
        let b = super::super::select(Platform::Tdx, &host).unwrap();
        assert_eq!(b.platform(), Platform::Tdx);
        let rec = Recorder::new(8, &[]);
        let plain = Arc::new(Host::with_kvm(Kvm::with(Arc::new(rec)), true).unwrap());
        let e = super::super::select(Platform::Tdx, &plain).unwrap_err();
        assert!(e.to_string().contains("KVM_X86_TDX_VM"), "{e}");
    }

    /// `KVM_TDX_GET_CPUID` (`intel-tdx.rst`): an `E2BIG` answer carries the room needed in
    /// `nent`, and the call is repeated once with that room; the recorder's TD has two
    /// leaves. A second `E2BIG` (or any other error) ends the build naming the command.
    #[test]
    fn get_cpuid_retries_e2big_with_the_room_asked() {
        let (rec, host) = recorded();
        let vm = host.kvm.create_vm(KVM_X86_TDX_VM).unwrap();
        let vcpu = vm.create_vcpu(0).unwrap();
        rec.clear();
        let td = get_td_cpuid(&vcpu, 1).unwrap();
        assert_eq!(
            rec.lines(),
            [
                "vm0.vcpu0 KVM_TDX_GET_CPUID nent=1",
                "vm0.vcpu0 KVM_TDX_GET_CPUID nent=2"
            ]
        );
        assert_eq!(td.iter().map(|e| e.function).collect::<Vec<_>>(), [1, 7]);
        rec.fail("KVM_TDX_GET_CPUID", libc::EINVAL, 1);
        let e = get_td_cpuid(&vcpu, 256).unwrap_err().to_string();
        assert!(e.starts_with("KVM_TDX_GET_CPUID: "), "{e}");
    }

    /// The comparison QEMU makes (`tdx_check_features`), on the configurable leaves of the
    /// capabilities: bits `INIT_VM` set that the TD lacks, and configurable bits the TD has
    /// that `INIT_VM` did not set.
    #[test]
    fn td_cpuid_comparison_names_missing_and_forced_bits() {
        let caps = crate::sys::record::tdx_capabilities();
        let e = |function, flags, ebx, ecx| kvm_cpuid_entry2 {
            function,
            flags,
            ebx,
            ecx,
            ..Default::default()
        };
        let sig = KVM_CPUID_FLAG_SIGNIFCANT_INDEX;
        let config = [e(1, 0, 0, 0x0000_0003), e(7, sig, 0x11, 0)];
        let td = [e(1, 0, 0, 0x0000_0005), e(7, sig, 0x11, 0)];
        let (missing, forced) = compare_td_cpuid(&config, &td, &caps);
        assert_eq!(missing, ["leaf 0x1 subleaf 0x0 ecx: 0x00000002"]);
        assert_eq!(forced, ["leaf 0x1 subleaf 0x0 ecx: 0x00000004"]);
        assert_eq!(compare_td_cpuid(&config, &config, &caps), (vec![], vec![]));
    }

    /// Against the kernel model, whose TDX module gives the TD the configured bits of its
    /// configurable leaves: every vCPU's `KVM_TDX_GET_CPUID` answer is kept, and nothing is
    /// missing or forced.
    #[test]
    fn model_td_cpuid_matches_the_configuration() {
        use crate::model::{Model, ModelConfig};
        let model = Model::new(ModelConfig::default());
        let host = Arc::new(Host::with_kvm(Kvm::with(Arc::new(model)), true).unwrap());
        let backend = TdxBackend::new(host);
        drop(backend.build(&hand_plan()).unwrap());
        let r = backend.cpuid_report().unwrap();
        assert_eq!(r.vcpus.len(), 2);
        assert!(r.vcpus[0].iter().any(|e| e.function == 7));
        assert!(r.unavailable.is_empty(), "{:?}", r.unavailable);
        assert!(r.forced_on.is_empty(), "{:?}", r.forced_on);
    }
}
