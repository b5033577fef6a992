//! The launch plan: one pure function from (bundle, platform, launch config) to a stream of
//! typed launch operations.
//!
//! The same op stream is executed by every backend (vmm), folded by the measurement
//! (`measure`) and checked by the firmware models. **Op order is measurement order**: the
//! planner keeps the bundle's directive order, except where KVM imposes its own (SEV-ES/SNP
//! VMSAs are built by KVM from the registers of every vCPU and measured last, in vCPU
//! creation order; `../shared/spec/kvm-coco-abi.md` §1.4).

#[cfg(feature = "alloc")]
use crate::launch::regs::VpRegs;
use crate::limits::{check_mem, check_vcpus, LimitError};

#[cfg(feature = "alloc")]
pub mod error;
#[cfg(feature = "alloc")]
pub mod igvm;

/// Plans a launch: detects the kind of `bundle` (IGVM file or OVMF/TDVF image,
/// [`crate::ovmf::detect`]) and runs the matching planner ([`igvm::plan_igvm`],
/// [`ovmf::plan_firmware`]). Pure and deterministic; never panics on any input.
///
/// # Errors
/// [`error::PlanError`]: where (IGVM header index and file offset, image offset, or the
/// launch config) and what; the `Display` form is one line with a fix-it where KVM imposes
/// the rule.
#[cfg(feature = "alloc")]
pub fn plan<'a>(bundle: &'a [u8], cfg: &LaunchConfig) -> Result<LaunchPlan<'a>, error::PlanError> {
    match crate::ovmf::detect(bundle) {
        crate::ovmf::InputKind::Igvm => igvm::plan_igvm(bundle, cfg),
        crate::ovmf::InputKind::Firmware => {
            ovmf::plan_firmware(bundle, cfg).map_err(error::PlanError::from)
        }
        crate::ovmf::InputKind::Unknown => Err(error::PlanError::new(
            error::Location::Bundle,
            error::PlanErrorKind::UnknownInput,
        )),
    }
}

#[cfg(feature = "alloc")]
pub mod ovmf;

/// Checks the vCPU count and RAM size of `cfg` against [`crate::limits`] (every planner
/// starts with it).
///
/// # Errors
/// [`LimitError`].
pub fn check_limits(cfg: &LaunchConfig) -> Result<(), LimitError> {
    check_vcpus(cfg.vcpus.into())?;
    check_mem(cfg.mem_bytes)?;
    Ok(())
}

pub use crate::launch::{
    in_ram, ram_ranges, KernelHashes, LaunchConfig, LaunchOp, PageData, PageKind, Platform,
    SnpIdBlock, VpSource, HIGH_RAM_BASE, LOW_RAM_END,
};

/// A launch plan: the op stream a backend executes, with everything it borrows or owns.
///
/// Built once per bundle and launch config; a relaunch re-executes it without re-parsing or
/// re-hashing anything.
#[cfg(feature = "alloc")]
#[derive(Clone, Debug)]
pub struct LaunchPlan<'a> {
    /// The bundle bytes `PageData::File` points into.
    pub bundle: &'a [u8],
    /// The launch config the plan was made for.
    pub config: LaunchConfig,
    /// The operations, in execution (= measurement) order.
    pub ops: alloc::vec::Vec<LaunchOp>,
    /// Pages the planner generated (parameter areas, tables), indexed by
    /// `PageData::Generated::index`.
    pub generated: alloc::vec::Vec<[u8; 4096]>,
    /// vCPU register sets, indexed by `LaunchOp::SetVpContext::ctx`.
    pub vp_contexts: alloc::vec::Vec<VpRegs>,
    /// The SNP ID block given at `Finalize` when `LaunchOp::Finalize::id_block` is set.
    pub id_block: Option<SnpIdBlock>,
}

#[cfg(feature = "alloc")]
impl<'a> LaunchPlan<'a> {
    /// An empty plan for `bundle` and `config` (no ops yet).
    pub fn new(bundle: &'a [u8], config: LaunchConfig) -> Self {
        LaunchPlan {
            bundle,
            config,
            ops: alloc::vec::Vec::new(),
            generated: alloc::vec::Vec::new(),
            vp_contexts: alloc::vec::Vec::new(),
            id_block: None,
        }
    }

    /// The bytes of a page's data: at most 4096; the rest of the page is zero.
    ///
    /// # Panics
    /// Never for data the planner produced (offsets are checked when the plan is built); a
    /// hand-made `PageData` out of range yields an empty slice.
    pub fn page_bytes(&self, data: &PageData) -> &[u8] {
        match *data {
            PageData::Zeros => &[],
            PageData::File { offset, len } => {
                let start = offset as usize;
                start
                    .checked_add(len as usize)
                    .and_then(|end| self.bundle.get(start..end))
                    .unwrap_or(&[])
            }
            PageData::Generated { index } => self
                .generated
                .get(index as usize)
                .map(|p| &p[..])
                .unwrap_or(&[]),
            PageData::GeneratedPart { index, start, len } => {
                let start = usize::from(start);
                self.generated
                    .get(index as usize)
                    .and_then(|p| p.get(start..start.checked_add(usize::from(len))?))
                    .unwrap_or(&[])
            }
        }
    }
}
