//! Firmware launch state machines: what the AMD SP (SEV, SEV-ES, SEV-SNP) or the TDX module,
//! driven through KVM, would accept and measure for a stream of [`LaunchOp`]s.
//!
//! The emulated backends (`emulated:<platform>`) execute a plan against [`FwModel`]: it
//! refuses what the real firmware/KVM refuses (ops out of order, pages imported twice or
//! outside memory, misaligned GPAs, invalid policies, an ID block whose digest does not
//! match) and produces the measurement the platform would report. It shares the measurement
//! code with [`crate::measure::expected`], and the tests check that both agree on every
//! plan and that misordered streams are rejected.
//!
//! | platform | stream | sources |
//! |---|---|---|
//! | SNP | `CreateVm` = `KVM_SEV_INIT2` + `SNP_LAUNCH_START` (policy: bit 17 must be 1, bit 16 SMT must be 1, no bit above 25); `MapRam` = guest_memfd memslots set private; `ImportPage` = `SNP_LAUNCH_UPDATE` of a 4 KiB-aligned page inside private memory that is not yet private-assigned (`rmp_make_private` fails on an assigned page); `Finalize` = the VMSA of every vCPU, then `SNP_LAUNCH_FINISH` (ID block: its `ld` must equal the digest, BAD_MEASUREMENT otherwise, and its policy the launch policy) | `kvm-coco-abi.md` §1.4, `igvm-snp.md` §2.2, §3.2; KVM `sev.c` `snp_launch_start`, `snp_launch_update` |
//! | SEV-ES | `CreateVm` = `LAUNCH_START` (policy u32 with ES = 0x4 set); `ImportPage` = `LAUNCH_UPDATE_DATA`; `Finalize` = `LAUNCH_UPDATE_VMSA` (every vCPU) + `LAUNCH_MEASURE` + `LAUNCH_FINISH` | SEV API §6; `kvm-coco-abi.md` §1.4 |
//! | SEV | as SEV-ES without VMSAs; policy ES clear | idem |
//! | TDX | `CreateVm` = `KVM_TDX_INIT_VM`; `SetVpContext` = `KVM_TDX_INIT_VCPU` (required before the first `KVM_TDX_INIT_MEM_REGION`, which is a vCPU ioctl on an initialised vCPU); `ImportPage` = `TDH.MEM.PAGE.ADD` (+ `TDH.MR.EXTEND`) of a page not yet added; `Finalize` = `TDH.MR.FINALIZE` | `kvm-coco-abi.md` §3.1 |
//! | native | loads memory; only the op order is checked | — |
//!
//! After `Finalize` every op is refused (`KVM_SEV_SNP_LAUNCH_*` after FINISH even hits a
//! host RMP fault on real kernels, `kvm-coco-abi.md` §1.4): a relaunch needs a new model, as
//! it needs a new VM fd.

use alloc::collections::BTreeSet;
use alloc::vec::Vec;

use crate::launch::regs::VpRegs;
use crate::launch::{LaunchOp, OpStream, PageData, PageKind, Platform, SnpIdBlock};
use crate::measure::{Acc, MeasureError, MeasureOptions, Measurement};

const PAGE: u64 = 4096;

/// SNP policy bit 16: SMT allowed (KVM requires it: `SNP_POLICY_MASK_SMT`).
pub const SNP_POLICY_SMT: u64 = 1 << 16;
/// SNP policy bit 17: must be one (`SNP_POLICY_MASK_RSVD_MBO`).
pub const SNP_POLICY_MBO: u64 = 1 << 17;
/// SNP policy bits defined up to firmware 1.58 (`igvm-snp.md` §4.1: bits 0–25).
pub const SNP_POLICY_DEFINED: u64 = (1 << 26) - 1;
/// SEV policy bit 2: ES (the guest is SEV-ES).
pub const SEV_POLICY_ES: u64 = 0x4;

/// Where a firmware launch is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FwState {
    /// Nothing yet: only `CreateVm` is accepted.
    Uninit,
    /// Launch started: memory, pages and vCPU state may be given.
    Launching,
    /// Finished: the measurement is final; nothing more is accepted.
    Finished,
}

/// What the firmware / KVM refuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FwErrorKind {
    /// An op before `CreateVm` (no `LAUNCH_START` yet).
    NotStarted,
    /// A second `CreateVm`.
    AlreadyStarted,
    /// An op after `Finalize`.
    AfterFinish,
    /// A second `Finalize`.
    DoubleFinish,
    /// The stream ends without `Finalize`.
    NotFinished,
    /// The guest policy is refused at `LAUNCH_START`.
    Policy {
        /// The policy.
        policy: u64,
        /// The rule it breaks.
        reason: &'static str,
    },
    /// `CreateVm` with no vCPU, or more than [`crate::limits::MAX_VCPUS`].
    NoVcpus,
    /// A GPA or size that is not 4 KiB aligned.
    Misaligned {
        /// The GPA (or size).
        gpa: u64,
    },
    /// A RAM range that is empty, wraps, or overlaps one already mapped.
    BadRange {
        /// Start.
        gpa: u64,
        /// Size.
        size: u64,
    },
    /// An import outside mapped memory.
    NotMapped {
        /// GPA.
        gpa: u64,
    },
    /// The page is already private / encrypted / added (RMP-assigned on SNP, present in the
    /// Secure EPT on TDX, encrypted once already on SEV).
    AlreadyPrivate {
        /// GPA.
        gpa: u64,
    },
    /// A shared import over a page that is already private.
    SharedOverPrivate {
        /// GPA.
        gpa: u64,
    },
    /// TDX: `KVM_TDX_INIT_MEM_REGION` before any `KVM_TDX_INIT_VCPU`.
    VcpuNotInitialized,
    /// `SetVpContext` for a vCPU that is not created.
    VpOutOfRange {
        /// vCPU.
        vp: u32,
        /// vCPUs created.
        vcpus: u32,
    },
    /// `SetVpContext` without registers.
    MissingRegs {
        /// vCPU.
        vp: u32,
    },
    /// `Finalize` while a vCPU has no state (SEV-ES/SNP measure every vCPU).
    MissingVpContext {
        /// vCPU.
        vp: u32,
    },
    /// `Finalize` asks for an ID block but none is given.
    IdBlockMissing,
    /// An ID block on a platform without one (only SNP has ID blocks).
    IdBlockOnPlatform,
    /// The ID block's digest differs from the launch digest (firmware BAD_MEASUREMENT).
    BadMeasurement,
    /// The ID block's policy differs from the launch policy.
    IdBlockPolicy {
        /// Policy in the ID block.
        id_block: u64,
        /// Launch policy.
        launch: u64,
    },
    /// The page data or kind cannot be measured on this platform.
    Measure(MeasureError),
}

/// A refused op: which one (index in the stream) and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FwError {
    /// Index of the op in the stream.
    pub op: usize,
    /// Why.
    pub kind: FwErrorKind,
}

impl core::fmt::Display for FwError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let op = self.op;
        write!(f, "op {op}: ")?;
        match self.kind {
            FwErrorKind::NotStarted => f.write_str("before CreateVm (no LAUNCH_START)"),
            FwErrorKind::AlreadyStarted => f.write_str("CreateVm twice"),
            FwErrorKind::AfterFinish => f.write_str("the launch is already finished"),
            FwErrorKind::DoubleFinish => f.write_str("Finalize twice"),
            FwErrorKind::NotFinished => f.write_str("the stream ends without Finalize"),
            FwErrorKind::Policy { policy, reason } => {
                write!(f, "guest policy {policy:#x} refused: {reason}")
            }
            FwErrorKind::NoVcpus => {
                write!(f, "a VM needs 1 to {} vCPUs", crate::limits::MAX_VCPUS)
            }
            FwErrorKind::Misaligned { gpa } => write!(f, "{gpa:#x} is not 4 KiB aligned"),
            FwErrorKind::BadRange { gpa, size } => write!(
                f,
                "RAM range {gpa:#x}+{size:#x} is empty, wraps, or overlaps mapped RAM"
            ),
            FwErrorKind::NotMapped { gpa } => write!(f, "page {gpa:#x} is outside guest memory"),
            FwErrorKind::AlreadyPrivate { gpa } => {
                write!(f, "page {gpa:#x} was already given to the firmware")
            }
            FwErrorKind::SharedOverPrivate { gpa } => {
                write!(f, "shared page {gpa:#x} is already private")
            }
            FwErrorKind::VcpuNotInitialized => {
                f.write_str("TDX memory is added before any vCPU is initialised")
            }
            FwErrorKind::VpOutOfRange { vp, vcpus } => {
                write!(f, "vCPU {vp} does not exist ({vcpus} created)")
            }
            FwErrorKind::MissingRegs { vp } => write!(f, "no registers for vCPU {vp}"),
            FwErrorKind::MissingVpContext { vp } => {
                write!(f, "vCPU {vp} has no state at Finalize")
            }
            FwErrorKind::IdBlockMissing => f.write_str("Finalize names an ID block, none given"),
            FwErrorKind::IdBlockOnPlatform => f.write_str("ID blocks exist only on SNP"),
            FwErrorKind::BadMeasurement => f.write_str(
                "the ID block's digest differs from the launch digest (BAD_MEASUREMENT)",
            ),
            FwErrorKind::IdBlockPolicy { id_block, launch } => write!(
                f,
                "ID block policy {id_block:#x} differs from the launch policy {launch:#x}"
            ),
            FwErrorKind::Measure(e) => write!(f, "{e}"),
        }
    }
}

/// What an op needs besides itself: the bytes of an import, the registers of a
/// `SetVpContext`, the ID block of a `Finalize`.
#[derive(Clone, Copy, Debug, Default)]
pub struct OpInput<'a> {
    /// Import data (≤ 4096 bytes; for `PageData::GeneratedPart` exactly the part).
    pub page: &'a [u8],
    /// Registers for `SetVpContext`.
    pub regs: Option<&'a VpRegs>,
    /// ID block for `Finalize { id_block: true, .. }`.
    pub id_block: Option<&'a SnpIdBlock>,
}

/// What `op` of a checked stream needs.
fn stream_input<'a>(stream: OpStream<'a>, op: &LaunchOp) -> OpInput<'a> {
    let mut input = OpInput::default();
    match *op {
        LaunchOp::ImportPage { data, .. } => input.page = stream.page_bytes(&data),
        LaunchOp::SetVpContext { ctx, .. } => input.regs = stream.vp_context(ctx),
        LaunchOp::Finalize { id_block: true, .. } => input.id_block = stream.id_block(),
        _ => {}
    }
    input
}

/// One launch on one (emulated) VM: feed it ops with [`FwModel::step`] or
/// [`FwModel::apply`], read [`FwModel::measurement`] when [`FwState::Finished`].
#[derive(Clone, Debug)]
pub struct FwModel {
    opts: MeasureOptions,
    state: FwState,
    acc: Option<Acc>,
    policy: u64,
    vmsa_features: u64,
    vps: Vec<Option<VpRegs>>,
    ram: Vec<(u64, u64)>,
    private: BTreeSet<u64>,
    vcpu_initialized: bool,
    measurement: Option<Measurement>,
    next_op: usize,
}

impl FwModel {
    /// A fresh model (no VM yet).
    pub fn new(opts: MeasureOptions) -> Self {
        FwModel {
            opts,
            state: FwState::Uninit,
            acc: None,
            policy: 0,
            vmsa_features: 0,
            vps: Vec::new(),
            ram: Vec::new(),
            private: BTreeSet::new(),
            vcpu_initialized: false,
            measurement: None,
            next_op: 0,
        }
    }

    /// Runs a whole plan (its checked op stream, `plan::LaunchPlan::stream`) and returns its
    /// measurement.
    ///
    /// # Errors
    /// The first op the firmware refuses.
    pub fn run(stream: OpStream<'_>, opts: MeasureOptions) -> Result<Measurement, FwError> {
        FwModel::run_ops(stream.ops(), |op| stream_input(stream, op), opts)
    }

    /// Runs any op sequence (e.g. a hand-made, misordered one), `input` resolving what each
    /// op needs, and returns its measurement.
    ///
    /// # Errors
    /// The first op the firmware refuses, or [`FwErrorKind::NotStarted`] /
    /// [`FwErrorKind::NotFinished`] at `op = ops.len()` if the sequence ends unfinished.
    pub fn run_ops<'a>(
        ops: &[LaunchOp],
        input: impl Fn(&LaunchOp) -> OpInput<'a>,
        opts: MeasureOptions,
    ) -> Result<Measurement, FwError> {
        let mut m = FwModel::new(opts);
        for op in ops {
            m.step(op, input(op))?;
        }
        let end = ops.len();
        match (m.state, m.measurement) {
            (FwState::Finished, Some(meas)) => Ok(meas),
            (FwState::Uninit, _) => Err(FwError {
                op: end,
                kind: FwErrorKind::NotStarted,
            }),
            _ => Err(FwError {
                op: end,
                kind: FwErrorKind::NotFinished,
            }),
        }
    }

    /// Applies op `index` of a plan's stream, resolving its data, registers and ID block
    /// from the stream.
    ///
    /// # Errors
    /// See [`FwModel::step`]; an op index past the stream is [`FwErrorKind::NotStarted`].
    pub fn apply(&mut self, stream: OpStream<'_>, index: usize) -> Result<(), FwError> {
        let Some(op) = stream.ops().get(index) else {
            return Err(FwError {
                op: index,
                kind: FwErrorKind::NotStarted,
            });
        };
        self.next_op = index;
        self.step(op, stream_input(stream, op))
    }

    /// Applies the next op of a stream. Ops are numbered in the order they are applied (a
    /// refused op keeps its number for the next attempt).
    ///
    /// # Errors
    /// [`FwError`] with the op's index and the rule it breaks; a refused op changes nothing.
    pub fn step(&mut self, op: &LaunchOp, input: OpInput<'_>) -> Result<(), FwError> {
        let index = self.next_op;
        self.step_inner(op, input)
            .map_err(|kind| FwError { op: index, kind })?;
        self.next_op = index.saturating_add(1);
        Ok(())
    }

    fn step_inner(&mut self, op: &LaunchOp, input: OpInput<'_>) -> Result<(), FwErrorKind> {
        match self.state {
            FwState::Finished => {
                return Err(match op {
                    LaunchOp::Finalize { .. } => FwErrorKind::DoubleFinish,
                    _ => FwErrorKind::AfterFinish,
                })
            }
            FwState::Uninit if !matches!(op, LaunchOp::CreateVm { .. }) => {
                return Err(FwErrorKind::NotStarted)
            }
            _ => {}
        }
        match *op {
            LaunchOp::CreateVm {
                platform,
                policy,
                vmsa_features,
                vcpus,
            } => self.create(platform, policy, vmsa_features, vcpus),
            LaunchOp::MapRam { gpa, size } => self.map_ram(gpa, size),
            LaunchOp::ImportPage { gpa, kind, data } => self.import(gpa, kind, &data, input.page),
            LaunchOp::SetVpContext { vp, .. } => self.set_vp(vp, input.regs),
            LaunchOp::Finalize { id_block, .. } => self.finalize(id_block, input.id_block),
        }
    }

    fn platform(&self) -> Platform {
        self.acc.as_ref().map_or(Platform::Native, Acc::platform)
    }

    fn create(
        &mut self,
        platform: Platform,
        policy: u64,
        vmsa_features: u64,
        vcpus: u32,
    ) -> Result<(), FwErrorKind> {
        if self.state != FwState::Uninit {
            return Err(FwErrorKind::AlreadyStarted);
        }
        if crate::limits::check_vcpus(vcpus.into()).is_err() {
            return Err(FwErrorKind::NoVcpus);
        }
        let bad = |reason| Err(FwErrorKind::Policy { policy, reason });
        match platform {
            Platform::Snp => {
                if policy & SNP_POLICY_MBO == 0 {
                    return bad("bit 17 must be one");
                }
                if policy & SNP_POLICY_SMT == 0 {
                    return bad("KVM requires bit 16 (SMT allowed)");
                }
                if policy & !SNP_POLICY_DEFINED != 0 {
                    return bad("undefined bits set");
                }
            }
            Platform::Sev | Platform::SevEs => {
                if policy >> 32 != 0 {
                    return bad("the SEV policy is 32 bits");
                }
                let es = policy & SEV_POLICY_ES != 0;
                if es != (platform == Platform::SevEs) {
                    return bad("policy bit 2 (ES) must be set exactly for SEV-ES");
                }
            }
            Platform::Tdx | Platform::Native => {}
        }
        self.acc = Some(Acc::new(platform));
        self.policy = policy;
        self.vmsa_features = vmsa_features;
        self.vps = alloc::vec![None; vcpus as usize];
        self.state = FwState::Launching;
        Ok(())
    }

    fn map_ram(&mut self, gpa: u64, size: u64) -> Result<(), FwErrorKind> {
        if !gpa.is_multiple_of(PAGE) {
            return Err(FwErrorKind::Misaligned { gpa });
        }
        if !size.is_multiple_of(PAGE) {
            return Err(FwErrorKind::Misaligned { gpa: size });
        }
        let end = gpa
            .checked_add(size)
            .filter(|_| size != 0)
            .ok_or(FwErrorKind::BadRange { gpa, size })?;
        if self
            .ram
            .iter()
            .any(|&(b, s)| gpa < b.saturating_add(s) && b < end)
        {
            return Err(FwErrorKind::BadRange { gpa, size });
        }
        self.ram.push((gpa, size));
        Ok(())
    }

    fn mapped(&self, gpa: u64) -> bool {
        self.ram
            .iter()
            .any(|&(b, s)| gpa >= b && gpa - b < s && s - (gpa - b) >= PAGE)
    }

    fn import(
        &mut self,
        gpa: u64,
        kind: PageKind,
        data: &PageData,
        bytes: &[u8],
    ) -> Result<(), FwErrorKind> {
        if !gpa.is_multiple_of(PAGE) {
            return Err(FwErrorKind::Misaligned { gpa });
        }
        if !self.mapped(gpa) {
            return Err(FwErrorKind::NotMapped { gpa });
        }
        let platform = self.platform();
        let confidential = platform.is_confidential();
        if confidential {
            if kind == PageKind::Shared {
                if self.private.contains(&gpa) {
                    return Err(FwErrorKind::SharedOverPrivate { gpa });
                }
            } else {
                if platform == Platform::Tdx && !self.vcpu_initialized {
                    return Err(FwErrorKind::VcpuNotInitialized);
                }
                if self.private.contains(&gpa) {
                    return Err(FwErrorKind::AlreadyPrivate { gpa });
                }
            }
        }
        let partial = matches!(data, PageData::GeneratedPart { .. });
        let op = self.next_op;
        let acc = self.acc.as_mut().ok_or(FwErrorKind::NotStarted)?;
        acc.import(op, gpa, kind, bytes, partial, None)
            .map_err(FwErrorKind::Measure)?;
        if confidential && kind != PageKind::Shared {
            self.private.insert(gpa);
        }
        Ok(())
    }

    fn set_vp(&mut self, vp: u32, regs: Option<&VpRegs>) -> Result<(), FwErrorKind> {
        let vcpus = u32::try_from(self.vps.len()).unwrap_or(u32::MAX);
        let regs = regs.ok_or(FwErrorKind::MissingRegs { vp })?;
        let slot = self
            .vps
            .get_mut(vp as usize)
            .ok_or(FwErrorKind::VpOutOfRange { vp, vcpus })?;
        *slot = Some(*regs);
        self.vcpu_initialized = true;
        Ok(())
    }

    fn finalize(&mut self, want_id: bool, id: Option<&SnpIdBlock>) -> Result<(), FwErrorKind> {
        let platform = self.platform();
        if want_id && platform != Platform::Snp {
            return Err(FwErrorKind::IdBlockOnPlatform);
        }
        let id = match (want_id, id) {
            (true, None) => return Err(FwErrorKind::IdBlockMissing),
            (true, Some(b)) => Some(b),
            (false, _) => None,
        };
        let mut acc = self.acc.clone().ok_or(FwErrorKind::NotStarted)?;
        let mut regs = Vec::with_capacity(self.vps.len());
        if acc.measures_vcpus() {
            for (vp, r) in self.vps.iter().enumerate() {
                let r = r.as_ref().ok_or(FwErrorKind::MissingVpContext {
                    vp: u32::try_from(vp).unwrap_or(u32::MAX),
                })?;
                regs.push(r);
            }
        }
        acc.vmsas(regs.into_iter(), self.vmsa_features, self.opts);
        let m = acc.finish();
        if let Some(b) = id {
            if b.policy() != self.policy {
                return Err(FwErrorKind::IdBlockPolicy {
                    id_block: b.policy(),
                    launch: self.policy,
                });
            }
            if !crate::measure::id_block_matches(&b.ld(), &m) {
                return Err(FwErrorKind::BadMeasurement);
            }
        }
        self.measurement = Some(m);
        self.state = FwState::Finished;
        Ok(())
    }

    /// Where the launch is.
    pub fn state(&self) -> FwState {
        self.state
    }

    /// The final measurement (after `Finalize`).
    pub fn measurement(&self) -> Option<Measurement> {
        self.measurement
    }

    /// The registers vCPU `vp` starts with (its last `SetVpContext`).
    pub fn vp_regs(&self, vp: u32) -> Option<&VpRegs> {
        self.vps.get(vp as usize)?.as_ref()
    }

    /// Whether the page at `gpa` was given to the firmware as private memory.
    pub fn is_private(&self, gpa: u64) -> bool {
        self.private.contains(&(gpa & !(PAGE - 1)))
    }
}

#[cfg(test)]
mod tests;
