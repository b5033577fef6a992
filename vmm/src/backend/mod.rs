//! Launch backends: one per platform, chosen at run time ([`select`]), each owning its
//! platform's launch protocol.
//!
//! A backend builds a VM for a [`Launch`] by running its [`Phases`] over the plan's ops
//! ([`run_phases`]): `CreateVm` opens the VM and runs the platform's pre-memory steps
//! (`create_vm`), then guest memory (`memory`) and the vCPUs (`vcpus`); every later op but the
//! last is one `op` (page import, VP context) in plan order (= measurement order); `Finalize`
//! seals the launch (`finish`) and hands over a [`BuiltVm`]: the VM, its vCPUs and its memory.
//! Every phase reaches the kernel through `sys::kvm` only, so the same backend code runs
//! against `/dev/kvm`, the recording kernel (`sys::record`) or a kernel model.
//!
//! What each platform puts in each phase (the checklist for a new one is in
//! `docs/design.md`):
//!
//! | phase | native | SEV / SEV-ES / SNP (issue 7) | TDX (issue 7) |
//! |---|---|---|---|
//! | `create_vm` | `KVM_CREATE_VM` type 0 | VM type 2/3/4, `KVM_SEV_INIT2`, `LAUNCH_START` | type 5, `CAPABILITIES` (once per process), `INIT_VM`, split irqchip, `EXIT_HYPERCALL` |
//! | `memory` | memslots (shared RAM) | guest_memfd + shared memslots, `SET_MEMORY_ATTRIBUTES(PRIVATE)` | same |
//! | `vcpus` | irqchip, vCPUs, CPUID | irqchip, vCPUs, CPUID | vCPUs, CPUID, `INIT_VCPU` |
//! | `op` | copy pages, set registers | stage + `LAUNCH_UPDATE`, registers | stage + `INIT_MEM_REGION` (runs of one kind) |
//! | `finish` | APs runnable | `LAUNCH_UPDATE_VMSA`/`SNP_LAUNCH_FINISH` | `FINALIZE_VM` |
//!
//! The VM's exits go to the backend's [`ExitHandler`](crate::vcpu::ExitHandler)
//! ([`Backend::exit_handler`]): for native, the devices.

pub mod coco_exits;
pub mod emulated;
pub mod native;
pub mod sev;
pub mod snp_certs;
pub mod snp_cpuid;
pub mod tdx;

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use relaunch_core::plan::{LaunchOp, LaunchPlan, Platform};

use crate::devices::Devices;
use crate::launch::Launch;
use crate::memory::{GuestMemory, MemError};
use crate::sys::kvm::{Vcpu, Vm};
use crate::sys::Errno;
use crate::vcpu::ExitHandler;
use crate::vstate::Host;

/// The kind of a launch op (for error messages and timings).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    /// `LaunchOp::CreateVm`.
    CreateVm,
    /// `LaunchOp::MapRam`.
    MapRam,
    /// `LaunchOp::ImportPage`.
    ImportPage,
    /// `LaunchOp::SetVpContext`.
    SetVpContext,
    /// `LaunchOp::Finalize`.
    Finalize,
}

impl OpKind {
    /// The kind of `op`.
    pub fn of(op: &LaunchOp) -> OpKind {
        match op {
            LaunchOp::CreateVm { .. } => OpKind::CreateVm,
            LaunchOp::MapRam { .. } => OpKind::MapRam,
            LaunchOp::ImportPage { .. } => OpKind::ImportPage,
            LaunchOp::SetVpContext { .. } => OpKind::SetVpContext,
            LaunchOp::Finalize { .. } => OpKind::Finalize,
        }
    }
}

impl fmt::Display for OpKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OpKind::CreateVm => "CreateVm",
            OpKind::MapRam => "MapRam",
            OpKind::ImportPage => "ImportPage",
            OpKind::SetVpContext => "SetVpContext",
            OpKind::Finalize => "Finalize",
        })
    }
}

/// Why a backend refused or failed one op.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// This host cannot run the platform; the sentence names what is missing.
    #[error("platform {platform} is not available here: {missing}")]
    Unavailable {
        /// The platform asked for.
        platform: Platform,
        /// What is missing, as a sentence.
        missing: String,
    },
    /// The plan is for another platform than the backend's.
    #[error("the plan is for platform {plan}, this backend runs {backend}")]
    WrongPlatform {
        /// The plan's.
        plan: Platform,
        /// The backend's.
        backend: Platform,
    },
    /// A KVM ioctl or mapping failed.
    #[error("{what}: {errno}")]
    Kvm {
        /// Which call.
        what: &'static str,
        /// Its errno.
        #[source]
        errno: Errno,
    },
    /// A confidential command failed (its uapi name, the errno and the firmware's status).
    #[error("{what}: {error}")]
    Coco {
        /// The command (`KVM_SEV_*`).
        what: &'static str,
        /// What the kernel and firmware said.
        #[source]
        error: crate::sys::coco::CocoError,
    },
    /// The plan asks for something this platform cannot do (a sentence).
    #[error("{0}")]
    Unsupported(String),
    /// The Secure Processor refused the SNP CPUID page (`SNP_LAUNCH_UPDATE` page type CPUID:
    /// `INVALID_PARAM`, the corrected table copied back to the page).
    #[error(
        "KVM_SEV_SNP_LAUNCH_UPDATE: the firmware refused the SNP CPUID page at {gpa:#x} \
         ({error}): {mismatches}"
    )]
    SnpCpuid {
        /// The page's guest-physical address.
        gpa: u64,
        /// The errno and firmware status.
        error: crate::sys::coco::CocoError,
        /// What it corrected, leaf by leaf (or why nothing came back).
        mismatches: String,
    },
    /// A TDX command failed (the errno and the TDX module's status).
    #[error("{what}: {error}")]
    Tdx {
        /// Which command.
        what: &'static str,
        /// Its errno and `hw_error`.
        #[source]
        error: crate::sys::coco::CocoError,
    },
    /// A page or range lies outside guest memory (or in memory the host cannot write).
    #[error(transparent)]
    Mem(#[from] MemError),
    /// A vCPU index out of range.
    #[error("vCPU {vp} out of range ({vcpus} vCPUs)")]
    Vp {
        /// vCPU index.
        vp: u32,
        /// vCPUs created.
        vcpus: u32,
    },
    /// The vCPU count is above what this host's KVM supports.
    #[error("{0} vCPUs: this host's KVM supports at most {1}")]
    VcpuCount(u32, usize),
    /// The launch needs more memslots than this host's KVM offers.
    #[error(
        "the launch needs {need} memory slots, this host's KVM offers {have} (KVM_CAP_NR_MEMSLOTS)"
    )]
    Memslots {
        /// Slots the launch needs.
        need: usize,
        /// `KVM_CAP_NR_MEMSLOTS`.
        have: usize,
    },
}

impl BackendError {
    /// `CreateVm` or `Finalize` anywhere but first / last (a validated plan has none).
    pub fn misplaced() -> BackendError {
        BackendError::Kvm {
            what: "CreateVm or Finalize in the middle of a plan",
            errno: Errno::new(libc::EINVAL),
        }
    }
}

/// Shorthand to attach a call name to an errno.
pub(crate) fn kvm_err(what: &'static str) -> impl FnOnce(Errno) -> BackendError {
    move |errno| BackendError::Kvm { what, errno }
}

/// Executing op `index` failed.
#[derive(Debug, thiserror::Error)]
#[error("launch op #{index} ({op}): {source}")]
pub struct ExecError {
    /// Index of the op in the plan.
    pub index: usize,
    /// Its kind.
    pub op: OpKind,
    /// What went wrong.
    #[source]
    pub source: BackendError,
}

impl ExecError {
    /// Whether the platform refused the launch as given (a confidential command failed, or
    /// the plan asks for what the platform cannot do), rather than the VMM failing: the
    /// bundle or its flags are at fault, like a usage error.
    pub fn refused_by_platform(&self) -> bool {
        matches!(
            self.source,
            BackendError::Coco { .. }
                | BackendError::Tdx { .. }
                | BackendError::Unsupported(_)
                | BackendError::WrongPlatform { .. }
        )
    }
}

/// Time spent per phase while building one VM.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExecTimings {
    /// `create_vm`: `KVM_CREATE_VM` and the platform's pre-memory steps.
    pub create_vm: Duration,
    /// `memory`: guest memory backings and every memslot.
    pub memslots: Duration,
    /// The irqchip (part of `vcpus`).
    pub irqchip: Duration,
    /// `vcpus`: `KVM_CREATE_VCPU` (+ `kvm_run` mmap) and CPUID, all vCPUs.
    pub vcpus: Duration,
    /// `MapRam` ops (checks: their memslots exist already).
    pub map_ram: Duration,
    /// Page imports.
    pub import: Duration,
    /// Register setup.
    pub vp_context: Duration,
    /// Total, `CreateVm` to the end of `Finalize`.
    pub total: Duration,
}

/// A VM ready to run: built by executing a plan, not started yet.
#[derive(Debug)]
pub struct BuiltVm {
    /// vCPUs, index = vCPU id (dropped first: field order).
    pub vcpus: Vec<Vcpu>,
    /// The VM (keeps the memslot mappings alive with the vCPUs).
    pub vm: Vm,
    /// Guest memory, shared with devices (fw_cfg DMA).
    pub memory: Arc<GuestMemory>,
    /// Build timings.
    pub timings: ExecTimings,
    /// The launch it was built for ([`Launch::id`]).
    pub launch_id: u64,
    /// What the platform reported about the launch's measurement at finish, hex: the model's
    /// measurement on an emulated platform, the `LAUNCH_MEASURE` MAC on real SEV / SEV-ES;
    /// `None` where the platform returns nothing at launch (native, SNP, TDX).
    pub launch_measurement: Option<String>,
}

/// A platform's launch protocol, phase by phase (module doc). One value builds one VM.
pub trait Phases {
    /// Opens the VM and runs what the platform needs before guest memory.
    ///
    /// # Errors
    /// [`BackendError`].
    fn create_vm(&mut self) -> Result<(), BackendError>;
    /// Guest memory: backings, memslots, page attributes.
    ///
    /// # Errors
    /// [`BackendError`].
    fn memory(&mut self) -> Result<(), BackendError>;
    /// The vCPUs (and the interrupt controller they need).
    ///
    /// # Errors
    /// [`BackendError`].
    fn vcpus(&mut self) -> Result<(), BackendError>;
    /// One op between `CreateVm` and `Finalize`, in plan order: `MapRam`, `ImportPage` or
    /// `SetVpContext` ([`run_phases`] never passes `CreateVm` or `Finalize`; a backend
    /// answers them with [`BackendError::misplaced`]).
    ///
    /// # Errors
    /// [`BackendError`].
    fn op(&mut self, op: &LaunchOp) -> Result<(), BackendError>;
    /// Seals the launch and hands over the runnable VM.
    ///
    /// # Errors
    /// [`BackendError`].
    fn finish(self) -> Result<BuiltVm, BackendError>;
}

/// Runs `phases` over `plan`: the one recipe every backend's build follows (module doc). The
/// plan is validated by the core's planner (one `CreateVm` first, one `Finalize` last), so
/// the recipe does not check the order again.
///
/// # Errors
/// [`ExecError`] naming the op whose phase failed.
pub fn run_phases<P: Phases>(mut phases: P, plan: &LaunchPlan) -> Result<BuiltVm, ExecError> {
    let at = |index: usize, op: &LaunchOp| {
        let kind = OpKind::of(op);
        move |source| ExecError {
            index,
            op: kind,
            source,
        }
    };
    let last = plan.ops().len().saturating_sub(1);
    for (index, op) in plan.ops().iter().enumerate() {
        match op {
            LaunchOp::CreateVm { .. } if index == 0 => {
                phases.create_vm().map_err(at(index, op))?;
                phases.memory().map_err(at(index, op))?;
                phases.vcpus().map_err(at(index, op))?;
            }
            LaunchOp::Finalize { .. } if index == last => {
                return phases.finish().map_err(at(index, op));
            }
            // Anywhere else (a validated plan has none): refused here, once for every backend.
            LaunchOp::CreateVm { .. } | LaunchOp::Finalize { .. } => {
                return Err(at(index, op)(BackendError::misplaced()));
            }
            _ => phases.op(op).map_err(at(index, op))?,
        }
    }
    Err(ExecError {
        index: plan.ops().len(),
        op: OpKind::Finalize,
        source: BackendError::Kvm {
            what: "the plan has no Finalize",
            errno: Errno::new(libc::EINVAL),
        },
    })
}

/// One `LAUNCH_SECRET` the guest owner asks for (the packet layout:
/// `relaunch_core::owner`).
#[derive(Clone, PartialEq, Eq)]
pub struct LaunchSecret {
    /// The 52-byte packet header (FLAGS, IV, MAC).
    pub header: Vec<u8>,
    /// The encrypted packet; it decrypts to as many bytes at `gpa`.
    pub packet: Vec<u8>,
    /// Guest-physical address of the first byte (16-byte aligned for the firmware).
    pub gpa: u64,
}

/// Sizes and address only: the header and packet are the owner's business.
impl fmt::Debug for LaunchSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LaunchSecret")
            .field("header_len", &self.header.len())
            .field("packet_len", &self.packet.len())
            .field("gpa", &format_args!("{:#x}", self.gpa))
            .finish()
    }
}

/// The guest owner's turn in a SEV / SEV-ES launch, between `LAUNCH_MEASURE` and
/// `LAUNCH_FINISH` (SEV API: the guest is in LSECRET, where only `LAUNCH_SECRET` and
/// `LAUNCH_FINISH` are allowed; amd/AMD-ASPFW `sev_guest.h`). SNP and TDX have no such turn:
/// their secrets reach the guest after launch, through guest-driven attestation.
pub trait OwnerGate: Send + Sync + fmt::Debug {
    /// Launch `launch_id` measured `blob` (the `LAUNCH_MEASURE` result: the 32-byte MAC then
    /// the 16-byte mnonce). Blocks until the owner continues (or stops the launch); each
    /// secret injected meanwhile goes to `inject`, whose answer goes back to the owner.
    /// `inject` runs on the caller's thread (the one building the VM), so the gate calls it
    /// from within `measured`, never from another thread.
    fn measured(
        &self,
        launch_id: u64,
        blob: &[u8; 48],
        inject: &mut dyn FnMut(&LaunchSecret) -> Result<(), String>,
    );
}

/// A launch backend (module doc).
pub trait Backend: Send + Sync + fmt::Debug {
    /// The platform it launches.
    fn platform(&self) -> Platform;
    /// Whether the confidential part is emulated (never claims security).
    fn emulated(&self) -> bool {
        false
    }
    /// How guest RAM is backed (audit records).
    fn memory_backing(&self) -> &'static str;
    /// Builds a VM ready to run `launch`.
    ///
    /// # Errors
    /// [`ExecError`] for the op that failed.
    fn build(&self, launch: &Launch) -> Result<BuiltVm, ExecError>;
    /// Hands every later build the guest owner's turn (`None` takes it away). Returns
    /// whether this platform has one (SEV and SEV-ES); the others ignore the gate.
    fn set_owner_gate(&self, gate: Option<Arc<dyn OwnerGate>>) -> bool {
        let _ = gate;
        false
    }
    /// Serves SNP guests' certificate requests from `certs` in every later build (`None`:
    /// the kernel answers them, with no certificates). Returns whether this backend can
    /// (real SNP); the others ignore it.
    fn set_snp_certs(&self, certs: Option<Arc<snp_certs::SnpCerts>>) -> bool {
        let _ = certs;
        false
    }
    /// The handler of a built VM's vCPU exits, over the launch's devices; `vm` and `memory`
    /// are the built VM's (a confidential handler converts pages at run time).
    fn exit_handler(
        &self,
        devices: Arc<Mutex<Devices>>,
        vm: &Vm,
        memory: &Arc<GuestMemory>,
    ) -> Arc<dyn ExitHandler>;
}

/// The backend for `platform` on `host`, or why this host cannot run it — decided before
/// anything is created.
///
/// # Errors
/// [`BackendError::Unavailable`] with a sentence naming what is missing.
pub fn select(platform: Platform, host: &Arc<Host>) -> Result<Box<dyn Backend>, BackendError> {
    match platform {
        Platform::Native => Ok(Box::new(native::NativeBackend::new(Arc::clone(host)))),
        Platform::Sev | Platform::SevEs | Platform::Snp
            if sev::vm_type(platform).is_some_and(|t| host.vm_types & (1 << t) != 0)
                && host.sev.is_some() =>
        {
            Ok(Box::new(sev::SevBackend::new(platform, Arc::clone(host))))
        }
        // `KVM_X86_TDX_VM` = 5 (`arch/x86/include/uapi/asm/kvm.h`).
        Platform::Tdx if host.vm_types & (1 << crate::sys::tdx::KVM_X86_TDX_VM) != 0 => {
            Ok(Box::new(tdx::TdxBackend::new(Arc::clone(host))))
        }
        Platform::Sev | Platform::SevEs | Platform::Snp | Platform::Tdx => {
            Err(BackendError::Unavailable {
                platform,
                missing: confidential_missing(platform, host),
            })
        }
    }
}

/// What this host lacks for a confidential platform, as a sentence.
fn confidential_missing(platform: Platform, host: &Host) -> String {
    // `KVM_X86_SEV_VM` 2, `SEV_ES` 3, `SNP` 4, `TDX` 5 (`arch/x86/include/uapi/asm/kvm.h`).
    let (vm_type, name) = match platform {
        Platform::Sev => (2, "KVM_X86_SEV_VM"),
        Platform::SevEs => (3, "KVM_X86_SEV_ES_VM"),
        Platform::Snp => (4, "KVM_X86_SNP_VM"),
        _ => (5, "KVM_X86_TDX_VM"),
    };
    let types = host.vm_types;
    if types & (1 << vm_type) == 0 {
        return format!(
            "this host's KVM does not offer VM type {name} (KVM_CAP_VM_TYPES = {types:#x}; it needs {} hardware and a kernel with it enabled)",
            if platform == Platform::Tdx { "Intel TDX" } else { "AMD SEV" }
        );
    }
    if platform != Platform::Tdx && host.sev.is_none() {
        return "/dev/sev cannot be opened (the AMD Secure Processor driver is not loaded)".into();
    }
    format!("the {platform} backend is not built yet (the host offers {name})")
}
