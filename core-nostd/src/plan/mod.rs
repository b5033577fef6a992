//! The launch plan: one pure function from (bundle, platform, launch config) to a stream of
//! typed launch operations.
//!
//! The same op stream is executed by every backend (vmm), folded by the measurement
//! (`measure`) and checked by the firmware models. **Op order is measurement order**: the
//! planner keeps the bundle's directive order, except where KVM imposes its own (SEV-ES/SNP
//! VMSAs are built by KVM from the registers of every vCPU and measured last, in vCPU
//! creation order; `../shared/spec/kvm-coco-abi.md` §1.4).

#[cfg(feature = "alloc")]
use alloc::{sync::Arc, vec::Vec};

#[cfg(feature = "alloc")]
use crate::launch::regs::VpRegs;
#[cfg(feature = "alloc")]
use crate::launch::{OpStream, PageSource};
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
pub fn plan<B: AsRef<[u8]>>(
    bundle: B,
    cfg: &LaunchConfig,
) -> Result<LaunchPlan<B>, error::PlanError> {
    match crate::ovmf::detect(bundle.as_ref()) {
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
    in_ram, ram_ranges, ram_slots, KernelHashes, LaunchConfig, LaunchOp, PageData, PageKind,
    Platform, SnpIdBlock, VpSource, HIGH_RAM_BASE, LOW_RAM_END,
};

/// The parts of a launch plan: what a planner fills in, and what a hand-made plan (tests,
/// tools) is built from. [`LaunchPlan::from_parts`] checks them.
#[cfg(feature = "alloc")]
#[derive(Clone, Debug)]
pub struct PlanParts<B> {
    /// The bundle bytes `PageData::File` points into.
    pub bundle: B,
    /// The launch config the plan is made for.
    pub config: LaunchConfig,
    /// The operations, in execution (= measurement) order.
    pub ops: Vec<LaunchOp>,
    /// Generated pages (parameter areas, tables), indexed by `PageData::Generated::index`.
    pub generated: Vec<[u8; 4096]>,
    /// vCPU register sets, indexed by `LaunchOp::SetVpContext::ctx`.
    pub vp_contexts: Vec<VpRegs>,
    /// The SNP ID block given at `Finalize` when `LaunchOp::Finalize::id_block` is set.
    pub id_block: Option<SnpIdBlock>,
}

#[cfg(feature = "alloc")]
impl<B> PlanParts<B> {
    /// No ops yet.
    pub fn new(bundle: B, config: LaunchConfig) -> Self {
        PlanParts {
            bundle,
            config,
            ops: Vec::new(),
            generated: Vec::new(),
            vp_contexts: Vec::new(),
            id_block: None,
        }
    }

    /// The same parts over another bundle storage.
    pub fn with_bundle<C>(self, bundle: C) -> PlanParts<C> {
        PlanParts {
            bundle,
            config: self.config,
            ops: self.ops,
            generated: self.generated,
            vp_contexts: self.vp_contexts,
            id_block: self.id_block,
        }
    }
}

/// Why parts do not make a launch plan (`op` is the index into the ops).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum InvalidPlan {
    /// The first op is not `CreateVm` (`op` = 0; also for a plan without ops).
    MissingCreateVm,
    /// A second `CreateVm`.
    DuplicateCreateVm {
        /// Op index.
        op: usize,
    },
    /// `CreateVm` for another platform or vCPU count than the launch config.
    ConfigMismatch,
    /// `CreateVm` with a vCPU count outside [`crate::limits`].
    Vcpus(LimitError),
    /// The last op is not `Finalize`.
    MissingFinalize,
    /// A `Finalize` before the last op.
    OpAfterFinalize {
        /// Index of the op after `Finalize`.
        op: usize,
    },
    /// `SetVpContext` for a vCPU that is not created.
    VpOutOfRange {
        /// Op index.
        op: usize,
        /// vCPU index.
        vp: u32,
    },
    /// `SetVpContext` naming a register set the plan does not have.
    ContextOutOfRange {
        /// Op index.
        op: usize,
        /// Index into the register sets.
        ctx: u32,
    },
    /// An import's data lies outside the bundle or the generated pages, or is longer than
    /// a page.
    PageDataOutOfRange {
        /// Op index.
        op: usize,
    },
    /// A GPA or RAM size that is not 4 KiB aligned, or an empty or wrapping RAM range.
    Misaligned {
        /// Op index.
        op: usize,
    },
    /// `Finalize` names an ID block the plan does not have, or the plan has one that
    /// `Finalize` does not name.
    IdBlock,
}

impl core::fmt::Display for InvalidPlan {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            InvalidPlan::MissingCreateVm => f.write_str("the plan does not start with CreateVm"),
            InvalidPlan::DuplicateCreateVm { op } => write!(f, "op {op}: a second CreateVm"),
            InvalidPlan::ConfigMismatch => {
                f.write_str("CreateVm names another platform or vCPU count than the launch config")
            }
            InvalidPlan::Vcpus(e) => write!(f, "CreateVm: {e}"),
            InvalidPlan::MissingFinalize => f.write_str("the plan does not end with Finalize"),
            InvalidPlan::OpAfterFinalize { op } => write!(f, "op {op}: after Finalize"),
            InvalidPlan::VpOutOfRange { op, vp } => {
                write!(
                    f,
                    "op {op}: SetVpContext for vCPU {vp}, which is not created"
                )
            }
            InvalidPlan::ContextOutOfRange { op, ctx } => write!(
                f,
                "op {op}: SetVpContext names register set {ctx}, which does not exist"
            ),
            InvalidPlan::PageDataOutOfRange { op } => {
                write!(
                    f,
                    "op {op}: page data outside the bundle or the generated pages"
                )
            }
            InvalidPlan::Misaligned { op } => {
                write!(
                    f,
                    "op {op}: a GPA or size that is not 4 KiB aligned, or an empty range"
                )
            }
            InvalidPlan::IdBlock => {
                f.write_str("Finalize and the plan disagree on whether there is an SNP ID block")
            }
        }
    }
}

/// A launch plan: the checked op stream a backend executes, with the bundle bytes and the
/// generated pages and registers its ops refer to.
///
/// Built once per bundle and launch config by the planner ([`plan`], [`igvm::plan_igvm`],
/// [`ovmf::plan_firmware`]), or from hand-made parts by [`LaunchPlan::from_parts`]; both
/// check the invariants of [`crate::launch::OpStream`] once, so every accessor is
/// infallible. A relaunch re-executes it without re-parsing or re-hashing anything.
///
/// `B` holds the bundle: `&[u8]` for a borrowed bundle, or an owned `Arc<[u8]>` (the default)
/// / `Vec<u8>` for a plan that is `Send + Sync + 'static` and shared across threads and
/// relaunches. `B::as_ref` must return the same bytes every time (every std container does).
#[cfg(feature = "alloc")]
#[derive(Clone, Debug)]
pub struct LaunchPlan<B = Arc<[u8]>> {
    bundle: B,
    config: LaunchConfig,
    ops: Vec<LaunchOp>,
    generated: Vec<[u8; 4096]>,
    vp_contexts: Vec<VpRegs>,
    id_block: Option<SnpIdBlock>,
}

#[cfg(feature = "alloc")]
impl<B: AsRef<[u8]>> LaunchPlan<B> {
    /// Checks hand-made (or planned) parts and makes them a plan.
    ///
    /// # Errors
    /// [`InvalidPlan`]: the first invariant the parts break.
    pub fn from_parts(parts: PlanParts<B>) -> Result<Self, InvalidPlan> {
        check_parts(&parts)?;
        Ok(LaunchPlan {
            bundle: parts.bundle,
            config: parts.config,
            ops: parts.ops,
            generated: parts.generated,
            vp_contexts: parts.vp_contexts,
            id_block: parts.id_block,
        })
    }

    /// The parts back, e.g. to change a planned plan by hand and check it again.
    pub fn into_parts(self) -> PlanParts<B> {
        PlanParts {
            bundle: self.bundle,
            config: self.config,
            ops: self.ops,
            generated: self.generated,
            vp_contexts: self.vp_contexts,
            id_block: self.id_block,
        }
    }

    /// The bundle bytes.
    pub fn bundle(&self) -> &[u8] {
        self.bundle.as_ref()
    }

    /// The bundle storage.
    pub fn bundle_storage(&self) -> &B {
        &self.bundle
    }

    /// The launch config the plan was made for.
    pub fn config(&self) -> &LaunchConfig {
        &self.config
    }

    /// The platform (`config().platform`, the `CreateVm` platform).
    pub fn platform(&self) -> Platform {
        self.config.platform
    }

    /// The number of vCPUs `CreateVm` creates (`config().vcpus`).
    pub fn vcpus(&self) -> u32 {
        self.config.vcpus
    }

    /// The operations, in execution (= measurement) order: `CreateVm` first, `Finalize` last.
    pub fn ops(&self) -> &[LaunchOp] {
        &self.ops
    }

    /// Generated pages (parameter areas, tables), indexed by `PageData::Generated::index`.
    pub fn generated(&self) -> &[[u8; 4096]] {
        &self.generated
    }

    /// vCPU register sets, indexed by `LaunchOp::SetVpContext::ctx`.
    pub fn vp_contexts(&self) -> &[VpRegs] {
        &self.vp_contexts
    }

    /// The register set a `SetVpContext` of this plan names (`None` only for a `ctx` that
    /// is not from this plan).
    pub fn vp_context(&self, ctx: u32) -> Option<&VpRegs> {
        self.vp_contexts.get(usize::try_from(ctx).ok()?)
    }

    /// The SNP ID block `Finalize` gives, if any.
    pub fn id_block(&self) -> Option<&SnpIdBlock> {
        self.id_block.as_ref()
    }

    /// The bytes of a page's data: at most 4096; the rest of the page is zero. Every
    /// `PageData` of this plan's ops resolves (checked when the plan was made); data that is
    /// not from this plan and does not resolve yields no bytes.
    pub fn page_bytes(&self, data: &PageData) -> &[u8] {
        resolve(self.bundle.as_ref(), &self.generated, data).unwrap_or(&[])
    }

    /// The checked op stream the measurement folds and the firmware model executes.
    pub fn stream(&self) -> OpStream<'_> {
        OpStream::checked(&self.ops, &self.vp_contexts, self, self.id_block.as_ref())
    }
}

#[cfg(feature = "alloc")]
impl<B: AsRef<[u8]>> PageSource for LaunchPlan<B> {
    fn page_bytes(&self, data: &PageData) -> &[u8] {
        LaunchPlan::page_bytes(self, data)
    }
}

/// The bytes of `data`, if they lie inside `bundle` / `generated` and fit a page.
#[cfg(feature = "alloc")]
fn resolve<'p>(bundle: &'p [u8], generated: &'p [[u8; 4096]], data: &PageData) -> Option<&'p [u8]> {
    match *data {
        PageData::Zeros => Some(&[]),
        PageData::File { offset, len } => {
            let start = usize::try_from(offset).ok()?;
            let len = usize::try_from(len).ok().filter(|&l| l <= 4096)?;
            bundle.get(start..start.checked_add(len)?)
        }
        PageData::Generated { index } => {
            generated.get(usize::try_from(index).ok()?).map(|p| &p[..])
        }
        PageData::GeneratedPart { index, start, len } => {
            let start = usize::from(start);
            generated
                .get(usize::try_from(index).ok()?)?
                .get(start..start.checked_add(usize::from(len))?)
        }
    }
}

/// The invariants of a plan ([`crate::launch::OpStream`]), checked once.
#[cfg(feature = "alloc")]
fn check_parts<B: AsRef<[u8]>>(p: &PlanParts<B>) -> Result<(), InvalidPlan> {
    let page = crate::limits::PAGE_SIZE;
    let Some(&LaunchOp::CreateVm {
        platform, vcpus, ..
    }) = p.ops.first()
    else {
        return Err(InvalidPlan::MissingCreateVm);
    };
    check_vcpus(vcpus.into()).map_err(InvalidPlan::Vcpus)?;
    if platform != p.config.platform || vcpus != p.config.vcpus {
        return Err(InvalidPlan::ConfigMismatch);
    }
    let last = p.ops.len().saturating_sub(1);
    let Some(&LaunchOp::Finalize { id_block, .. }) = p.ops.last() else {
        return Err(InvalidPlan::MissingFinalize);
    };
    if id_block != p.id_block.is_some() {
        return Err(InvalidPlan::IdBlock);
    }
    for (op, o) in p.ops.iter().enumerate().skip(1) {
        match *o {
            LaunchOp::CreateVm { .. } => return Err(InvalidPlan::DuplicateCreateVm { op }),
            LaunchOp::Finalize { .. } if op != last => {
                return Err(InvalidPlan::OpAfterFinalize {
                    op: op.saturating_add(1),
                })
            }
            LaunchOp::Finalize { .. } => {}
            LaunchOp::MapRam { gpa, size } => {
                let ok = gpa.is_multiple_of(page)
                    && size.is_multiple_of(page)
                    && size != 0
                    && gpa.checked_add(size).is_some();
                if !ok {
                    return Err(InvalidPlan::Misaligned { op });
                }
            }
            LaunchOp::ImportPage { gpa, data, .. } => {
                if !gpa.is_multiple_of(page) {
                    return Err(InvalidPlan::Misaligned { op });
                }
                if resolve(p.bundle.as_ref(), &p.generated, &data).is_none() {
                    return Err(InvalidPlan::PageDataOutOfRange { op });
                }
            }
            LaunchOp::SetVpContext { vp, ctx, .. } => {
                if vp >= vcpus {
                    return Err(InvalidPlan::VpOutOfRange { op, vp });
                }
                if usize::try_from(ctx).map_or(true, |c| c >= p.vp_contexts.len()) {
                    return Err(InvalidPlan::ContextOutOfRange { op, ctx });
                }
            }
        }
    }
    Ok(())
}

#[cfg(all(test, feature = "alloc"))]
mod tests {
    extern crate std;

    use super::*;
    use crate::testutil::OVMF_X64_LIKE;

    fn cfg() -> LaunchConfig {
        LaunchConfig {
            platform: Platform::Snp,
            vcpus: 2,
            mem_bytes: 64 << 20,
            vcpu_sig: 0x0080_0F12,
            guest_features: 0x1,
            policy: None,
            host_data: [0; 32],
            kernel_hashes: None,
        }
    }

    fn owned<T: Send + Sync + 'static>(t: T) -> T {
        t
    }

    #[test]
    fn owned_plans_are_shared_and_equal_borrowed_ones() {
        let bytes: &[u8] = &OVMF_X64_LIKE;
        let borrowed = plan(bytes, &cfg()).unwrap();
        let arc: LaunchPlan = owned(plan(Arc::<[u8]>::from(bytes), &cfg()).unwrap());
        let vec = owned(plan(bytes.to_vec(), &cfg()).unwrap());
        let arc = Arc::new(arc);
        let m = crate::measure::expected(borrowed.stream()).unwrap();
        let shared = Arc::clone(&arc);
        let other = std::thread::spawn(move || crate::measure::expected(shared.stream()));
        assert_eq!(other.join().unwrap(), Ok(m));
        assert_eq!(crate::measure::expected(vec.stream()), Ok(m));
        assert_eq!(arc.ops(), borrowed.ops());
        assert_eq!(arc.bundle(), bytes);
        assert_eq!((arc.platform(), arc.vcpus()), (Platform::Snp, 2));
        // Every import resolves; a page of the bundle is its bytes.
        for op in arc.ops() {
            if let LaunchOp::ImportPage { data, .. } = op {
                let b = arc.page_bytes(data);
                assert!(b.len() <= 4096);
                if let PageData::File { offset, len } = *data {
                    assert_eq!(b, &bytes[offset as usize..(offset + len) as usize]);
                }
            }
        }
        // Data that is not from the plan resolves to nothing, and is refused in parts.
        assert!(arc
            .page_bytes(&PageData::Generated { index: 1 << 20 })
            .is_empty());
        let mut parts = vec.into_parts();
        parts.ops.insert(
            1,
            LaunchOp::ImportPage {
                gpa: 0,
                kind: PageKind::Normal,
                data: PageData::Generated { index: 1 << 20 },
            },
        );
        assert_eq!(
            LaunchPlan::from_parts(parts).unwrap_err(),
            InvalidPlan::PageDataOutOfRange { op: 1 }
        );
    }
}
