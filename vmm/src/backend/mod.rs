//! Executing a launch plan: the [`LaunchBackend`] trait and the op loop.
//!
//! A backend applies the plan's ops one by one, in plan order (= measurement order). The
//! native KVM backend ([`native`]) is the one implementation today; the confidential
//! backends slot in behind the same trait.

pub mod native;

use relaunch_core::plan::{LaunchOp, LaunchPlan};

use crate::sys::Errno;
use crate::vstate::BadGpa;

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

impl std::fmt::Display for OpKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
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
    /// The backend cannot run this platform.
    #[error("platform {0} needs hardware/backend not built yet")]
    Platform(relaunch_core::plan::Platform),
    /// An op other than `CreateVm` came before `CreateVm`, or `CreateVm` came twice.
    #[error("op out of order: {0}")]
    Order(&'static str),
    /// A KVM ioctl or mapping failed.
    #[error("{what}: {errno}")]
    Kvm {
        /// Which call.
        what: &'static str,
        /// Its errno.
        #[source]
        errno: Errno,
    },
    /// A page or range lies outside guest memory.
    #[error(transparent)]
    Gpa(#[from] BadGpa),
    /// A MapRam range is misaligned or wraps.
    #[error("bad range [{gpa:#x}, +{size:#x})")]
    Range {
        /// Start.
        gpa: u64,
        /// Size.
        size: u64,
    },
    /// A vCPU index or VP context index out of range.
    #[error("vCPU {vp} / context {ctx} out of range ({vcpus} vCPUs, {contexts} contexts)")]
    Vp {
        /// vCPU index.
        vp: u32,
        /// Context index.
        ctx: u32,
        /// vCPUs created.
        vcpus: u32,
        /// Contexts in the plan.
        contexts: usize,
    },
    /// The vCPU count is 0 or above what KVM supports.
    #[error("{0} vCPUs not supported (1..={1})")]
    VcpuCount(u32, usize),
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

/// A launch backend: applies launch ops to a VM under construction.
pub trait LaunchBackend {
    /// Applies one op. `plan` provides page bytes and VP contexts.
    ///
    /// # Errors
    /// [`BackendError`] when the op cannot be applied.
    fn apply(&mut self, op: &LaunchOp, plan: &LaunchPlan) -> Result<(), BackendError>;
}

/// Executes every op of `plan` on `backend`, in order.
///
/// # Errors
/// [`ExecError`] naming the first op that failed.
pub fn execute<B: LaunchBackend + ?Sized>(
    backend: &mut B,
    plan: &LaunchPlan,
) -> Result<(), ExecError> {
    for (index, op) in plan.ops().iter().enumerate() {
        backend.apply(op, plan).map_err(|source| ExecError {
            index,
            op: OpKind::of(op),
            source,
        })?;
    }
    Ok(())
}
