//! The shared vocabulary of a launch: what every layer of the core (`arch`, `plan`,
//! `measure`, `fwmodel`) and every backend of the vmm speak.
//!
//! - [`Platform`], [`LaunchConfig`], [`KernelHashes`]: the inputs of a launch besides the
//!   bundle;
//! - [`LaunchOp`] with [`PageKind`], [`PageData`], [`VpSource`]: the typed operations a plan
//!   is made of, and [`regs::VpRegs`], the vCPU state a `SetVpContext` names;
//! - [`SnpIdBlock`]: what an SNP launch gives at `LAUNCH_FINISH`;
//! - the guest RAM layout ([`ram_ranges`], [`ram_slots`]).
//!
//! This module is a leaf: it depends on nothing in the crate but [`crate::limits`]. `arch`
//! builds on it, `plan` and `measure` build on both (and never on each other), `fwmodel` on
//! top.

pub mod regs;

/// The platform a launch targets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Platform {
    /// An ordinary VM (IGVM NATIVE view, or a firmware image started at its reset vector).
    Native,
    /// AMD SEV.
    Sev,
    /// AMD SEV-ES.
    SevEs,
    /// AMD SEV-SNP.
    Snp,
    /// Intel TDX.
    Tdx,
}

impl Platform {
    /// Every platform, in CLI order.
    pub const ALL: [Platform; 5] = [
        Platform::Native,
        Platform::Sev,
        Platform::SevEs,
        Platform::Snp,
        Platform::Tdx,
    ];

    /// The CLI / audit-log name (`native`, `sev`, `sev-es`, `snp`, `tdx`).
    pub const fn name(self) -> &'static str {
        match self {
            Platform::Native => "native",
            Platform::Sev => "sev",
            Platform::SevEs => "sev-es",
            Platform::Snp => "snp",
            Platform::Tdx => "tdx",
        }
    }

    /// Parses a CLI name.
    pub fn from_name(name: &str) -> Option<Platform> {
        Platform::ALL.into_iter().find(|p| p.name() == name)
    }

    /// Whether guest memory and vCPU state are protected (everything but `Native`).
    pub const fn is_confidential(self) -> bool {
        !matches!(self, Platform::Native)
    }
}

impl core::fmt::Display for Platform {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

/// SHA-256 digests of the kernel, initrd and command line for the SEV kernel-hashes table
/// (QEMU `-kernel/-initrd/-append` with an OVMF that has the SEV_HASH_TABLE metadata).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelHashes {
    /// SHA-256 of the kernel image.
    pub kernel: [u8; 32],
    /// SHA-256 of the initrd (of the empty string when none is given).
    pub initrd: [u8; 32],
    /// SHA-256 of the NUL-terminated command line (`b"\0"` when none is given).
    pub cmdline: [u8; 32],
}

/// Inputs of a launch besides the bundle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchConfig {
    /// Target platform.
    pub platform: Platform,
    /// Number of vCPUs (every one gets a VMSA on SEV-ES/SNP).
    pub vcpus: u32,
    /// Guest RAM size in bytes (memory map parameter areas, range checks).
    pub mem_bytes: u64,
    /// CPUID(1).EAX of the vCPU model: RDX at reset for reset-vector launches.
    pub vcpu_sig: u32,
    /// SEV-ES/SNP `vmsa_features` (VMSA SEV_FEATURES) for launches without a VMSA in the
    /// bundle; for IGVM bundles the VP 0 VMSA decides.
    pub guest_features: u64,
    /// Guest policy override (SNP policy, SEV policy, TDX attributes); `None` = the bundle's
    /// GUEST_POLICY or the platform default.
    pub policy: Option<u64>,
    /// SNP HOST_DATA given at LAUNCH_FINISH.
    pub host_data: [u8; 32],
    /// Kernel hashes table contents for firmware images that declare one.
    pub kernel_hashes: Option<KernelHashes>,
}

/// How a page is given to the platform (SNP page types, `kvm_sev_snp_launch_update.type`;
/// the other platforms map them as documented in `docs/measurement.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PageKind {
    /// Private, measured contents.
    Normal,
    /// Private, zeroed by the firmware (SNP page type ZERO: measured with empty contents).
    Zero,
    /// Private, contents loaded but not measured.
    Unmeasured,
    /// The SNP secrets page (firmware fills it).
    Secrets,
    /// The SNP CPUID page (firmware checks it).
    Cpuid,
    /// Host-visible (shared) memory: loaded, never measured, survives a relaunch where the
    /// reboot contract says so.
    Shared,
}

/// Where the bytes of an imported page come from. A page is 4096 bytes; shorter data is
/// zero-extended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageData {
    /// `len` (≤ 4096) bytes of the bundle at `offset` (already range-checked by the planner).
    File {
        /// Absolute offset into the bundle.
        offset: u32,
        /// Number of bytes (≤ 4096).
        len: u32,
    },
    /// A page of zeros.
    Zeros,
    /// Page `index` of the plan's generated pages (parameter areas, kernel-hashes table,
    /// CPUID page): `LaunchPlan::generated`.
    Generated {
        /// Index into the generated-page arena.
        index: u32,
    },
    /// Bytes `[start, start + len)` of generated page `index`, loaded at the same offset of
    /// the target page; the rest of the target page is left as it is. Only these bytes are
    /// given to the platform: SEV/SEV-ES `LAUNCH_UPDATE_DATA` (and so the SHA-256 launch
    /// digest) covers exactly them. Used for QEMU's 176-byte padded kernel-hashes table,
    /// which QEMU encrypts in place at an unaligned GPA (`target/i386/sev.c`
    /// `sev_add_kernel_loader_hashes`). Never used on SNP (whole pages only).
    GeneratedPart {
        /// Index into the generated-page arena.
        index: u32,
        /// First byte within the page.
        start: u16,
        /// Number of bytes (`start + len <= 4096`).
        len: u16,
    },
}

/// Where the launch's initial vCPU state comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VpSource {
    /// A VP_CONTEXT directive of the bundle (VMSA or native context), converted.
    Bundle,
    /// The architectural reset state (reset-vector launches, vCPUs the bundle does not name).
    Reset,
    /// The TDX module's fixed initial state.
    TdxInit,
}

/// One typed launch operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LaunchOp {
    /// Create the VM: `KVM_CREATE_VM` with the platform's type, then SEV `INIT2` +
    /// `LAUNCH_START` / `SNP_LAUNCH_START`, or TDX `INIT_VM`.
    CreateVm {
        /// Platform.
        platform: Platform,
        /// SNP policy (u64), SEV policy (u32 in the low bits), TDX attributes, 0 for native.
        policy: u64,
        /// SEV-ES/SNP `vmsa_features` given to `KVM_SEV_INIT2` (SNP_ACTIVE excluded: KVM ORs
        /// it in itself).
        vmsa_features: u64,
        /// Number of vCPUs created.
        vcpus: u32,
    },
    /// Back `[gpa, gpa + size)` with guest RAM (private for confidential platforms).
    MapRam {
        /// First byte (4 KiB aligned).
        gpa: u64,
        /// Size in bytes (4 KiB multiple).
        size: u64,
    },
    /// Import one 4 KiB page.
    ImportPage {
        /// Guest-physical address (4 KiB aligned).
        gpa: u64,
        /// Page type.
        kind: PageKind,
        /// Contents.
        data: PageData,
    },
    /// Set the initial state of vCPU `vp`. On SEV-ES/SNP, KVM measures the VMSA it builds
    /// from these registers at `Finalize` (SNP) or `LAUNCH_UPDATE_VMSA` (SEV-ES).
    SetVpContext {
        /// vCPU index (creation order).
        vp: u32,
        /// Where the state comes from.
        source: VpSource,
        /// Index of the registers in `LaunchPlan::vp_contexts` (kept out of line so that
        /// the per-page ops stay small).
        ctx: u32,
    },
    /// Finish the launch: SNP `LAUNCH_FINISH` (VMSAs first), SEV `LAUNCH_MEASURE` +
    /// `LAUNCH_FINISH`, TDX `FINALIZE_VM`, nothing for native.
    Finalize {
        /// Whether the bundle carries an SNP ID block (`LaunchPlan::id_block`).
        id_block: bool,
        /// SNP HOST_DATA.
        host_data: [u8; 32],
    },
}

/// End of the RAM below 4 GiB: guest RAM fills `[0, min(mem, LOW_RAM_END))`, the rest goes
/// to `[HIGH_RAM_BASE, ..)`; `[LOW_RAM_END, HIGH_RAM_BASE)` is the 32-bit hole for MMIO and
/// firmware (the layout QEMU's q35 uses for guests of up to 2.75 GiB below 4 GiB is similar;
/// ours is fixed so a plan does not depend on the machine type).
pub const LOW_RAM_END: u64 = 3 << 30;

/// Start of the RAM above 4 GiB.
pub const HIGH_RAM_BASE: u64 = 4 << 30;

/// The guest RAM ranges `(gpa, size)` for `mem_bytes` of RAM, in ascending order: the part
/// below [`LOW_RAM_END`], then the rest at [`HIGH_RAM_BASE`]. A range of size 0 is absent.
/// `None` if the RAM would end past 2^64.
pub fn ram_ranges(mem_bytes: u64) -> Option<[(u64, u64); 2]> {
    let low = mem_bytes.min(LOW_RAM_END);
    let high = mem_bytes - low;
    HIGH_RAM_BASE.checked_add(high)?;
    Some([(0, low), (HIGH_RAM_BASE, high)])
}

/// The guest RAM ranges `(gpa, size)` a VMM backs with memory slots for `mem_bytes` of RAM:
/// the non-empty [`ram_ranges`], in ascending order (none if the RAM would end past 2^64).
pub fn ram_slots(mem_bytes: u64) -> impl Iterator<Item = (u64, u64)> {
    ram_ranges(mem_bytes)
        .into_iter()
        .flatten()
        .filter(|&(_, size)| size != 0)
}

/// Whether `[gpa, gpa + size)` lies entirely inside the guest RAM of `mem_bytes`.
pub fn in_ram(mem_bytes: u64, gpa: u64, size: u64) -> bool {
    let Some(end) = gpa.checked_add(size) else {
        return false;
    };
    ram_ranges(mem_bytes).is_some_and(|ranges| {
        ranges
            .iter()
            .any(|&(base, len)| len != 0 && gpa >= base && end <= base.saturating_add(len))
    })
}

/// The SNP ID block and ID authentication structure given at `SNP_LAUNCH_FINISH`
/// (`../shared/spec/igvm-snp.md` §3.2), as QEMU builds them from an IGVM SNP_ID_BLOCK
/// directive (`backends/igvm.c` `qigvm_directive_snp_id_block`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnpIdBlock {
    /// The 96-byte ID block: ld\[48\], family_id\[16\], image_id\[16\], version u32 (= 1),
    /// guest_svn u32, policy u64 (= the launch policy).
    pub id_block: [u8; 96],
    /// The 4096-byte ID authentication information structure.
    pub id_auth: [u8; 4096],
    /// Whether an author key is present (`auth_key_en`).
    pub author_key_enabled: bool,
}

impl SnpIdBlock {
    /// The expected launch digest the ID block carries (bytes 0..48).
    pub fn ld(&self) -> [u8; 48] {
        let mut ld = [0u8; 48];
        ld.copy_from_slice(&self.id_block[..48]);
        ld
    }

    /// The guest policy in the ID block (bytes 0x58..0x60).
    pub fn policy(&self) -> u64 {
        let mut p = [0u8; 8];
        p.copy_from_slice(&self.id_block[0x58..0x60]);
        u64::from_le_bytes(p)
    }
}

/// Where the bytes of a [`PageData`] live: the owner of a launch's storage (the bundle and
/// the generated pages) resolves them. The measurement and the backends read page contents
/// only through this.
pub trait PageSource {
    /// The bytes of `data`: at most 4096; the rest of the page is zero.
    fn page_bytes(&self, data: &PageData) -> &[u8];
}

/// A checked op stream and everything its ops refer to out of line: what the measurement
/// folds and the firmware model executes.
///
/// Only a launch plan hands one out (`plan::LaunchPlan::stream`), after the planner checked
/// its invariants once: the first op is the only `CreateVm`, with 1 to
/// [`crate::limits::MAX_VCPUS`] vCPUs; the last op is the only `Finalize`, which names an ID
/// block exactly when [`OpStream::id_block`] has one; every `SetVpContext` names a vCPU that
/// is created and a register set of [`OpStream::vp_contexts`]; every import's data resolves
/// in [`OpStream::pages`] to at most 4096 bytes; every GPA and RAM size is 4 KiB aligned.
#[derive(Clone, Copy)]
pub struct OpStream<'a> {
    ops: &'a [LaunchOp],
    vp_contexts: &'a [regs::VpRegs],
    pages: &'a dyn PageSource,
    id_block: Option<&'a SnpIdBlock>,
}

impl<'a> OpStream<'a> {
    /// A stream over parts the caller has checked (the planner's validation).
    #[cfg(feature = "alloc")]
    pub(crate) fn checked(
        ops: &'a [LaunchOp],
        vp_contexts: &'a [regs::VpRegs],
        pages: &'a dyn PageSource,
        id_block: Option<&'a SnpIdBlock>,
    ) -> Self {
        OpStream {
            ops,
            vp_contexts,
            pages,
            id_block,
        }
    }

    /// The operations, in execution (= measurement) order.
    pub fn ops(&self) -> &'a [LaunchOp] {
        self.ops
    }

    /// The vCPU register sets `SetVpContext::ctx` indexes.
    pub fn vp_contexts(&self) -> &'a [regs::VpRegs] {
        self.vp_contexts
    }

    /// The register set `ctx` of a `SetVpContext` of this stream.
    pub fn vp_context(&self, ctx: u32) -> Option<&'a regs::VpRegs> {
        self.vp_contexts.get(usize::try_from(ctx).ok()?)
    }

    /// Where the page bytes come from.
    pub fn pages(&self) -> &'a dyn PageSource {
        self.pages
    }

    /// The bytes of an import's data (at most 4096).
    pub fn page_bytes(&self, data: &PageData) -> &'a [u8] {
        self.pages.page_bytes(data)
    }

    /// The SNP ID block `Finalize` gives, when it names one.
    pub fn id_block(&self) -> Option<&'a SnpIdBlock> {
        self.id_block
    }

    /// The `CreateVm` every checked stream starts with: (platform, vmsa_features, vcpus).
    fn create_vm(&self) -> (Platform, u64, u32) {
        match self.ops.first() {
            Some(&LaunchOp::CreateVm {
                platform,
                vmsa_features,
                vcpus,
                ..
            }) => (platform, vmsa_features, vcpus),
            // Unreachable for a checked stream.
            _ => (Platform::Native, 0, 0),
        }
    }

    /// The platform `CreateVm` names.
    pub fn platform(&self) -> Platform {
        self.create_vm().0
    }

    /// The SEV-ES/SNP `vmsa_features` `CreateVm` gives.
    pub fn vmsa_features(&self) -> u64 {
        self.create_vm().1
    }

    /// The number of vCPUs `CreateVm` creates.
    pub fn vcpus(&self) -> u32 {
        self.create_vm().2
    }
}

impl core::fmt::Debug for OpStream<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("OpStream")
            .field("ops", &self.ops.len())
            .field("vp_contexts", &self.vp_contexts.len())
            .field("id_block", &self.id_block.is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_layout_splits_around_the_hole() {
        let slots = |m| {
            let mut v: heapless::Vec<(u64, u64), 2> = heapless::Vec::new();
            for r in ram_slots(m) {
                v.push(r).unwrap();
            }
            v
        };
        assert_eq!(slots(256 << 20), [(0, 256 << 20)]);
        assert_eq!(slots(3 << 30), [(0, 3 << 30)]);
        assert_eq!(slots(5 << 30), [(0, 3 << 30), (4 << 30, 2 << 30)]);
        assert!(slots(0).is_empty());
        assert!(slots(u64::MAX).is_empty());
        assert!(in_ram(5 << 30, 4 << 30, 4096) && !in_ram(5 << 30, 3 << 30, 4096));
    }
}
