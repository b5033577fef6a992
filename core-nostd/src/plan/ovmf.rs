//! The launch planner for OVMF/TDVF firmware images: the op stream QEMU's classic
//! firmware launch (`-bios`/pflash at the reset vector) issues for each platform.
//!
//! | platform | ops, in order |
//! |---|---|
//! | SNP | CreateVm; MapRam (RAM, flash); the whole image as NORMAL pages, ascending GPA; the SEV metadata sections in metadata order (SNP_SEC_MEM → Zero, SECRETS → Secrets, CPUID → Cpuid, SVSM_CAA and unknown types → Zero, KERNEL_HASHES → Normal hashes page or Zero); SetVpContext for every vCPU; Finalize |
//! | SEV-ES | CreateVm; MapRam; the image as Normal pages; the kernel-hashes table (Normal, the 176 table bytes only); SetVpContext for every vCPU; Finalize |
//! | SEV | as SEV-ES, but only the BSP's context (not measured) |
//! | TDX | CreateVm; MapRam; SetVpContext for every vCPU (`KVM_TDX_INIT_VCPU` comes first: `KVM_TDX_INIT_MEM_REGION` needs it); the TDVF sections in metadata order, page by page (BFV/CFV: Normal = PAGE.ADD + MR.EXTEND when the section has MR_EXTEND, else Unmeasured = PAGE.ADD only; TD_HOB: Unmeasured, the generated HOB; TempMem: Unmeasured zeros; PAGE_AUG sections: no op); Finalize |
//! | native | CreateVm; MapRam; the image as Normal pages; the BSP's reset state; Finalize |
//!
//! Sources: QEMU `target/i386/sev.c` (`sev_encrypt_flash`, `snp_populate_metadata_pages`,
//! `snp_launch_update_kernel_hashes`, `sev_add_kernel_loader_hashes`,
//! `sev_es_save_reset_vector`), `hw/i386/pc_sysfw.c`, `target/i386/kvm/tdx.c`
//! (`tdx_finalize_vm`, `tdx_post_init_vcpus`), `hw/i386/tdvf.c`, `hw/i386/tdvf-hob.c`;
//! sev-snp-measure 0.0.13 `guest.py`. Every choice is written down in `docs/measurement.md`
//! ("OVMF / TDVF images").

use alloc::vec::Vec;
use core::fmt;

use crate::arch::vmsa::{reset_regs, tdx_vcpu_regs, BSP_RESET_ADDR};
use crate::launch::regs::VpRegs;
use crate::launch::{
    in_ram, ram_ranges, KernelHashes, LaunchConfig, LaunchOp, PageData, PageKind, Platform,
    VpSource, LOW_RAM_END,
};
use crate::limits::LimitError;
use crate::ovmf::{
    Firmware, Guid, HashTableArea, OvmfError, SevSection, SevSectionKind, TdvfSection,
    TdvfSectionKind, FOUR_GIB, PAGE_SIZE,
};
use crate::plan::{InvalidPlan, LaunchPlan, PlanParts};

/// Default SNP guest policy: SMT allowed, bit 17 (reserved, must be 1) set (QEMU
/// `sev-snp-guest` default `DEFAULT_SEV_SNP_POLICY` 0x30000).
pub const DEFAULT_SNP_POLICY: u64 = 0x3_0000;
/// Default SEV policy: NODBG (QEMU `sev-guest` `DEFAULT_GUEST_POLICY`).
pub const DEFAULT_SEV_POLICY: u64 = 0x1;
/// Default SEV-ES policy: NODBG | ES (QEMU decides SEV-ES from the ES policy bit).
pub const DEFAULT_SEV_ES_POLICY: u64 = 0x5;
/// SEV policy bit ES (`../shared/spec/igvm-snp.md` §3.1).
pub const SEV_POLICY_ES: u64 = 0x4;
/// Default TDX attributes: SEPT_VE_DISABLE (bit 28), QEMU `tdx-guest` `sept-ve-disable=on`.
pub const DEFAULT_TDX_ATTRIBUTES: u64 = 1 << 28;

/// Size of QEMU's `PaddedSevHashTable`: the 168-byte `SevHashTable` padded to 16 bytes.
pub const PADDED_HASH_TABLE_LEN: usize = 176;
/// Size of `SevHashTable`: header GUID + u16 length + three 50-byte entries.
const HASH_TABLE_LEN: u16 = 168;
/// Size of one `SevHashTableEntry`: GUID + u16 length + SHA-256.
const HASH_ENTRY_LEN: u16 = 50;

/// `SEV_HASH_TABLE_HEADER_GUID` 9438d606-4f22-4cc9-b479-a793d411fd21 (QEMU `sev.c`).
pub const HASH_TABLE_HEADER_GUID: Guid = Guid::from_fields(
    0x9438_d606,
    0x4f22,
    0x4cc9,
    [0xb4, 0x79, 0xa7, 0x93, 0xd4, 0x11, 0xfd, 0x21],
);
/// `SEV_CMDLINE_ENTRY_GUID` 97d02dd8-bd20-4c94-aa78-e7714d36ab2a.
pub const HASH_CMDLINE_GUID: Guid = Guid::from_fields(
    0x97d0_2dd8,
    0xbd20,
    0x4c94,
    [0xaa, 0x78, 0xe7, 0x71, 0x4d, 0x36, 0xab, 0x2a],
);
/// `SEV_INITRD_ENTRY_GUID` 44baf731-3a2f-4bd7-9af1-41e29169781d.
pub const HASH_INITRD_GUID: Guid = Guid::from_fields(
    0x44ba_f731,
    0x3a2f,
    0x4bd7,
    [0x9a, 0xf1, 0x41, 0xe2, 0x91, 0x69, 0x78, 0x1d],
);
/// `SEV_KERNEL_ENTRY_GUID` 4de79437-abd2-427f-b835-d5b172d2045b.
pub const HASH_KERNEL_GUID: Guid = Guid::from_fields(
    0x4de7_9437,
    0xabd2,
    0x427f,
    [0xb8, 0x35, 0xd5, 0xb1, 0x72, 0xd2, 0x04, 0x5b],
);

/// Why a firmware image cannot be planned for a platform.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FirmwarePlanError {
    /// The image does not parse.
    Parse(OvmfError),
    /// The vCPU count or RAM size is outside [`crate::limits`].
    Limit(LimitError),
    /// The planner made a plan that breaks the plan's invariants (a planner bug, reported
    /// instead of executed).
    Invalid(InvalidPlan),
    /// The image is larger than the hole between [`LOW_RAM_END`] and 4 GiB.
    ImageTooLarge {
        /// Image length.
        len: u64,
    },
    /// SNP needs the SEV metadata (QEMU: "Failed to locate SEV metadata header").
    NoSevMetadata,
    /// SEV-ES/SNP need the SEV-ES reset block for the APs' reset address (QEMU
    /// `sev_es_save_reset_vector`).
    NoResetBlock,
    /// TDX needs the TDX metadata.
    NoTdxMetadata,
    /// TDX needs exactly one TD_HOB section (QEMU `tdx_get_hob_entry`).
    NoTdHob,
    /// Kernel hashes were asked for, but the image has no (non-zero) SEV hash table entry.
    NoHashTable,
    /// Kernel hashes were asked for on SNP, but the SEV metadata has no SNP_KERNEL_HASHES
    /// section (QEMU would silently drop the hashes).
    NoKernelHashesSection,
    /// The hash table area is smaller than QEMU's padded table, or the table would cross a
    /// page / the section.
    BadHashTableArea {
        /// The area.
        area: HashTableArea,
    },
    /// Kernel hashes on a platform that has no kernel-hashes table (native, TDX).
    KernelHashesUnsupported {
        /// The platform.
        platform: Platform,
    },
    /// A metadata section lies outside guest RAM (and, for TDX, outside the flash).
    SectionOutsideMemory {
        /// Section index in its metadata.
        section: u32,
        /// GPA.
        gpa: u64,
        /// Size.
        size: u64,
    },
    /// The TD HOB QEMU would write does not fit the TD_HOB section.
    TdHobTooSmall {
        /// Bytes the HOB needs.
        need: u64,
        /// Section size.
        size: u64,
    },
    /// Two metadata sections overlap.
    SectionsOverlap {
        /// The earlier section.
        first: u32,
        /// The later section.
        second: u32,
    },
    /// The policy does not fit the platform (SEV: u32 with the ES bit exactly for SEV-ES;
    /// SNP: bit 17 set).
    BadPolicy {
        /// The platform.
        platform: Platform,
        /// The policy.
        policy: u64,
    },
}

impl From<OvmfError> for FirmwarePlanError {
    fn from(e: OvmfError) -> Self {
        FirmwarePlanError::Parse(e)
    }
}

impl fmt::Display for FirmwarePlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            FirmwarePlanError::Parse(e) => write!(f, "{e}"),
            FirmwarePlanError::Limit(e) => write!(f, "{e}"),
            FirmwarePlanError::Invalid(e) => {
                write!(f, "internal planner error, please report: {e}")
            }
            FirmwarePlanError::ImageTooLarge { len } => write!(
                f,
                "firmware image of {len:#x} bytes does not fit below 4 GiB above guest RAM \
                 (at most {:#x})",
                FOUR_GIB - LOW_RAM_END
            ),
            FirmwarePlanError::NoSevMetadata => f.write_str(
                "SNP needs the firmware's SEV metadata (GUID dc886566-…); this image has none \
                 (use an OVMF built with SEV-SNP support)",
            ),
            FirmwarePlanError::NoResetBlock => f.write_str(
                "SEV-ES/SNP need the firmware's SEV-ES reset block (GUID 00f771de-…); this \
                 image has none",
            ),
            FirmwarePlanError::NoTdxMetadata => f.write_str(
                "TDX needs the firmware's TDX metadata (GUID e47a6535-…); this image has none \
                 (use a TDVF / OVMF built with TDX support)",
            ),
            FirmwarePlanError::NoTdHob => {
                f.write_str("the TDX metadata must have exactly one TD_HOB section")
            }
            FirmwarePlanError::NoHashTable => f.write_str(
                "kernel hashes need the firmware's SEV hash table (GUID 7255371f-…) with a \
                 non-zero base; this image has none (use OVMF's AmdSev build)",
            ),
            FirmwarePlanError::NoKernelHashesSection => f.write_str(
                "kernel hashes on SNP need an SNP_KERNEL_HASHES section in the SEV metadata; \
                 this image has none",
            ),
            FirmwarePlanError::BadHashTableArea { area } => write!(
                f,
                "the SEV hash table area {:#x}+{:#x} cannot hold QEMU's {}-byte table in one \
                 page of its section",
                area.base, area.size, PADDED_HASH_TABLE_LEN
            ),
            FirmwarePlanError::KernelHashesUnsupported { platform } => {
                write!(f, "kernel hashes are not supported on {platform}")
            }
            FirmwarePlanError::SectionOutsideMemory { section, gpa, size } => write!(
                f,
                "metadata section {section} ({gpa:#x}+{size:#x}) is outside guest memory"
            ),
            FirmwarePlanError::TdHobTooSmall { need, size } => write!(
                f,
                "the TD HOB needs {need:#x} bytes; the TD_HOB section has {size:#x}"
            ),
            FirmwarePlanError::SectionsOverlap { first, second } => {
                write!(f, "metadata sections {first} and {second} overlap")
            }
            FirmwarePlanError::BadPolicy { platform, policy } => {
                write!(f, "policy {policy:#x} is not valid for {platform}")
            }
        }
    }
}

type Result<T> = core::result::Result<T, FirmwarePlanError>;

/// QEMU's `PaddedSevHashTable` for these digests: header GUID, length 168, then the
/// cmdline, initrd and kernel entries (GUID, length 50, SHA-256), 8 zero bytes of padding.
pub fn hash_table_bytes(h: &KernelHashes) -> [u8; PADDED_HASH_TABLE_LEN] {
    let mut t = [0u8; PADDED_HASH_TABLE_LEN];
    t[..16].copy_from_slice(&HASH_TABLE_HEADER_GUID.0);
    t[16..18].copy_from_slice(&HASH_TABLE_LEN.to_le_bytes());
    let entries = [
        (HASH_CMDLINE_GUID, &h.cmdline),
        (HASH_INITRD_GUID, &h.initrd),
        (HASH_KERNEL_GUID, &h.kernel),
    ];
    for (i, (guid, digest)) in entries.iter().enumerate() {
        let at = 18 + i * usize::from(HASH_ENTRY_LEN);
        t[at..at + 16].copy_from_slice(&guid.0);
        t[at + 16..at + 18].copy_from_slice(&HASH_ENTRY_LEN.to_le_bytes());
        t[at + 18..at + 50].copy_from_slice(&digest[..]);
    }
    t
}

/// Plans the launch of a firmware image for `cfg.platform`.
///
/// # Errors
/// [`FirmwarePlanError`]: the image does not parse, lacks the metadata the platform needs,
/// or does not fit the launch config.
pub fn plan_firmware<B: AsRef<[u8]>>(image: B, cfg: &LaunchConfig) -> Result<LaunchPlan<B>> {
    let parts = plan_parts(image.as_ref(), cfg)?;
    LaunchPlan::from_parts(parts.with_bundle(image)).map_err(FirmwarePlanError::Invalid)
}

fn plan_parts(image: &[u8], cfg: &LaunchConfig) -> Result<PlanParts<()>> {
    let fw = Firmware::parse(image)?;
    super::check_limits(cfg).map_err(FirmwarePlanError::Limit)?;
    if fw.len() > FOUR_GIB - LOW_RAM_END {
        return Err(FirmwarePlanError::ImageTooLarge { len: fw.len() });
    }
    if cfg.kernel_hashes.is_some() && matches!(cfg.platform, Platform::Native | Platform::Tdx) {
        return Err(FirmwarePlanError::KernelHashesUnsupported {
            platform: cfg.platform,
        });
    }
    let policy = policy_for(cfg)?;
    let vmsa_features = match cfg.platform {
        Platform::Snp | Platform::SevEs => cfg.guest_features & !1,
        _ => 0,
    };

    let mut plan = PlanParts::new((), *cfg);
    plan.ops.push(LaunchOp::CreateVm {
        platform: cfg.platform,
        policy,
        vmsa_features,
        vcpus: cfg.vcpus,
    });
    push_map_ram(&mut plan, &fw);

    match cfg.platform {
        Platform::Snp => plan_snp(&mut plan, &fw)?,
        Platform::Sev | Platform::SevEs => plan_sev(&mut plan, &fw)?,
        Platform::Tdx => plan_tdx(&mut plan, &fw)?,
        Platform::Native => {
            push_image(&mut plan, &fw);
            push_bsp_only(&mut plan);
        }
    }
    plan.ops.push(LaunchOp::Finalize {
        id_block: false,
        host_data: cfg.host_data,
    });
    Ok(plan)
}

fn policy_for(cfg: &LaunchConfig) -> Result<u64> {
    let policy = cfg.policy.unwrap_or(match cfg.platform {
        Platform::Snp => DEFAULT_SNP_POLICY,
        Platform::Sev => DEFAULT_SEV_POLICY,
        Platform::SevEs => DEFAULT_SEV_ES_POLICY,
        Platform::Tdx => DEFAULT_TDX_ATTRIBUTES,
        Platform::Native => 0,
    });
    let ok = match cfg.platform {
        // SNP ABI: bit 17 is reserved and must be 1 (KVM rejects it clear).
        Platform::Snp => policy & (1 << 17) != 0,
        // QEMU picks SEV-ES from the ES bit of the 32-bit policy.
        Platform::Sev => policy <= u64::from(u32::MAX) && policy & SEV_POLICY_ES == 0,
        Platform::SevEs => policy <= u64::from(u32::MAX) && policy & SEV_POLICY_ES != 0,
        Platform::Tdx | Platform::Native => true,
    };
    if ok {
        Ok(policy)
    } else {
        Err(FirmwarePlanError::BadPolicy {
            platform: cfg.platform,
            policy,
        })
    }
}

/// Guest RAM (our fixed layout, [`ram_ranges`]) and the flash region `[4 GiB - len, 4 GiB)`.
fn push_map_ram(plan: &mut PlanParts<()>, fw: &Firmware<'_>) {
    for (gpa, size) in ram_ranges(plan.config.mem_bytes).into_iter().flatten() {
        if size != 0 {
            plan.ops.push(LaunchOp::MapRam { gpa, size });
        }
    }
    plan.ops.push(LaunchOp::MapRam {
        gpa: fw.base_gpa(),
        size: fw.len(),
    });
}

/// The whole image as Normal pages in ascending GPA order (QEMU `sev_encrypt_flash` over the
/// flash, one `LAUNCH_UPDATE_DATA` / `SNP_LAUNCH_UPDATE` that walks it page by page).
fn push_image(plan: &mut PlanParts<()>, fw: &Firmware<'_>) {
    let base = fw.base_gpa();
    let pages = fw.len() / PAGE_SIZE;
    for i in 0..pages {
        plan.ops.push(LaunchOp::ImportPage {
            gpa: base + i * PAGE_SIZE,
            kind: PageKind::Normal,
            data: PageData::File {
                offset: (i * PAGE_SIZE) as u32,
                len: PAGE_SIZE as u32,
            },
        });
    }
}

fn push_ctx(plan: &mut PlanParts<()>, regs: VpRegs) -> u32 {
    plan.vp_contexts.push(regs);
    (plan.vp_contexts.len() - 1) as u32
}

/// The BSP's reset state only: the other vCPUs wait for INIT/SIPI (native, SEV).
fn push_bsp_only(plan: &mut PlanParts<()>) {
    let ctx = push_ctx(plan, reset_regs(plan.config.vcpu_sig, BSP_RESET_ADDR));
    plan.ops.push(LaunchOp::SetVpContext {
        vp: 0,
        source: VpSource::Reset,
        ctx,
    });
}

/// Every vCPU's reset state: the BSP at the reset vector, the APs at the SEV-ES reset
/// block's address (QEMU `sev_es_set_reset_vector` for `cpu_index != 0`).
fn push_all_reset(plan: &mut PlanParts<()>, ap_reset: u32) {
    let sig = plan.config.vcpu_sig;
    let bsp = push_ctx(plan, reset_regs(sig, BSP_RESET_ADDR));
    plan.ops.push(LaunchOp::SetVpContext {
        vp: 0,
        source: VpSource::Reset,
        ctx: bsp,
    });
    if plan.config.vcpus > 1 {
        let ap = push_ctx(plan, reset_regs(sig, ap_reset));
        for vp in 1..plan.config.vcpus {
            plan.ops.push(LaunchOp::SetVpContext {
                vp,
                source: VpSource::Reset,
                ctx: ap,
            });
        }
    }
}

fn section_end(gpa: u64, size: u64) -> u64 {
    gpa.saturating_add(size)
}

fn check_no_overlap(ranges: &[(u32, u64, u64)]) -> Result<()> {
    for (i, &(a, ag, asz)) in ranges.iter().enumerate() {
        for &(b, bg, bsz) in ranges.iter().skip(i + 1) {
            if ag < section_end(bg, bsz) && bg < section_end(ag, asz) {
                return Err(FirmwarePlanError::SectionsOverlap {
                    first: a,
                    second: b,
                });
            }
        }
    }
    Ok(())
}

fn push_pages(plan: &mut PlanParts<()>, gpa: u64, size: u64, kind: PageKind, data: PageData) {
    let mut at = gpa;
    while at < gpa + size {
        plan.ops.push(LaunchOp::ImportPage {
            gpa: at,
            kind,
            data,
        });
        at += PAGE_SIZE;
    }
}

fn plan_snp(plan: &mut PlanParts<()>, fw: &Firmware<'_>) -> Result<()> {
    let meta = fw.sev_metadata()?.ok_or(FirmwarePlanError::NoSevMetadata)?;
    let ap_reset = fw
        .sev_es_reset_addr()?
        .ok_or(FirmwarePlanError::NoResetBlock)?;
    let mem = plan.config.mem_bytes;
    let mut ranges: Vec<(u32, u64, u64)> = Vec::with_capacity(meta.len());
    for (i, s) in meta.sections().enumerate() {
        let (gpa, size) = (u64::from(s.gpa), u64::from(s.size));
        if !in_ram(mem, gpa, size) {
            return Err(FirmwarePlanError::SectionOutsideMemory {
                section: i as u32,
                gpa,
                size,
            });
        }
        ranges.push((i as u32, gpa, size));
    }
    check_no_overlap(&ranges)?;

    // The kernel-hashes page, built before any op so that errors come first.
    let hashes_page = match plan.config.kernel_hashes {
        None => None,
        Some(h) => {
            let area = fw.sev_hash_table()?.ok_or(FirmwarePlanError::NoHashTable)?;
            let section = meta
                .sections()
                .find(|s| s.kind == SevSectionKind::SnpKernelHashes)
                .ok_or(FirmwarePlanError::NoKernelHashesSection)?;
            Some(snp_hashes_page(&h, area, &section)?)
        }
    };

    push_image(plan, fw);
    for s in meta.sections() {
        let (gpa, size) = (u64::from(s.gpa), u64::from(s.size));
        match s.kind {
            SevSectionKind::SnpSecrets => {
                push_pages(plan, gpa, size, PageKind::Secrets, PageData::Zeros)
            }
            // The CPUID page's contents are the backend's: QEMU fills it from vCPU 0's
            // KVM_GET_CPUID2 (`snp_launch_update_cpuid`); the launch digest does not
            // depend on it (CPUID pages are measured with empty contents).
            SevSectionKind::Cpuid => push_pages(plan, gpa, size, PageKind::Cpuid, PageData::Zeros),
            SevSectionKind::SnpKernelHashes => match hashes_page {
                Some(page) => {
                    plan.generated.push(page);
                    let index = (plan.generated.len() - 1) as u32;
                    plan.ops.push(LaunchOp::ImportPage {
                        gpa,
                        kind: PageKind::Normal,
                        data: PageData::Generated { index },
                    });
                    // QEMU zero-fills the rest of the section and measures it as NORMAL.
                    push_pages(
                        plan,
                        gpa + PAGE_SIZE,
                        size - PAGE_SIZE,
                        PageKind::Normal,
                        PageData::Zeros,
                    );
                }
                None => push_pages(plan, gpa, size, PageKind::Zero, PageData::Zeros),
            },
            // SNP_SEC_MEM, SVSM_CAA and unknown types: firmware ZERO pages
            // (`snp_metadata_desc_to_page_type` default).
            SevSectionKind::SnpSecMem | SevSectionKind::SvsmCaa | SevSectionKind::Other(_) => {
                push_pages(plan, gpa, size, PageKind::Zero, PageData::Zeros)
            }
        }
    }
    push_all_reset(plan, ap_reset);
    Ok(())
}

/// QEMU `snp_launch_update_kernel_hashes`: the section's first page, zeroed, with the padded
/// table at `area.base & 0xfff`.
fn snp_hashes_page(
    h: &KernelHashes,
    area: HashTableArea,
    section: &SevSection,
) -> Result<[u8; 4096]> {
    let offset = (area.base & 0xFFF) as usize;
    let end = offset + PADDED_HASH_TABLE_LEN;
    if (area.size as usize) < PADDED_HASH_TABLE_LEN
        || end > PAGE_SIZE as usize
        || end > section.size as usize
    {
        return Err(FirmwarePlanError::BadHashTableArea { area });
    }
    let mut page = [0u8; 4096];
    page[offset..end].copy_from_slice(&hash_table_bytes(h));
    Ok(page)
}

fn plan_sev(plan: &mut PlanParts<()>, fw: &Firmware<'_>) -> Result<()> {
    let es = plan.config.platform == Platform::SevEs;
    let ap_reset = if es {
        Some(
            fw.sev_es_reset_addr()?
                .ok_or(FirmwarePlanError::NoResetBlock)?,
        )
    } else {
        None
    };
    // QEMU `sev_add_kernel_loader_hashes`: LAUNCH_UPDATE_DATA over the 176-byte padded
    // table written in place at the area's GPA, after the flash.
    let table = match plan.config.kernel_hashes {
        None => None,
        Some(h) => {
            let area = fw.sev_hash_table()?.ok_or(FirmwarePlanError::NoHashTable)?;
            let start = u64::from(area.base) & (PAGE_SIZE - 1);
            let page_gpa = u64::from(area.base) - start;
            if (area.size as usize) < PADDED_HASH_TABLE_LEN
                || start as usize + PADDED_HASH_TABLE_LEN > PAGE_SIZE as usize
            {
                return Err(FirmwarePlanError::BadHashTableArea { area });
            }
            if !in_ram(plan.config.mem_bytes, page_gpa, PAGE_SIZE) {
                return Err(FirmwarePlanError::SectionOutsideMemory {
                    section: 0,
                    gpa: u64::from(area.base),
                    size: u64::from(area.size),
                });
            }
            let mut page = [0u8; 4096];
            page[start as usize..start as usize + PADDED_HASH_TABLE_LEN]
                .copy_from_slice(&hash_table_bytes(&h));
            Some((page_gpa, start as u16, page))
        }
    };
    push_image(plan, fw);
    if let Some((gpa, start, page)) = table {
        plan.generated.push(page);
        let index = (plan.generated.len() - 1) as u32;
        plan.ops.push(LaunchOp::ImportPage {
            gpa,
            kind: PageKind::Normal,
            data: PageData::GeneratedPart {
                index,
                start,
                len: PADDED_HASH_TABLE_LEN as u16,
            },
        });
    }
    match ap_reset {
        Some(ap) => push_all_reset(plan, ap),
        None => push_bsp_only(plan),
    }
    Ok(())
}

fn plan_tdx(plan: &mut PlanParts<()>, fw: &Firmware<'_>) -> Result<()> {
    let meta = fw.tdx_metadata()?.ok_or(FirmwarePlanError::NoTdxMetadata)?;
    let mem = plan.config.mem_bytes;
    let flash = (fw.base_gpa(), fw.len());
    let mut ranges: Vec<(u32, u64, u64)> = Vec::with_capacity(meta.len());
    let mut hob: Option<TdvfSection> = None;
    for (i, s) in meta.sections().enumerate() {
        let in_flash = s.gpa >= flash.0 && section_end(s.gpa, s.size) <= FOUR_GIB;
        let where_ok = match s.kind {
            // Firmware volumes live in the flash mapping (or, for odd layouts, in RAM).
            TdvfSectionKind::Bfv | TdvfSectionKind::Cfv => in_flash || in_ram(mem, s.gpa, s.size),
            _ => in_ram(mem, s.gpa, s.size),
        };
        if !where_ok {
            return Err(FirmwarePlanError::SectionOutsideMemory {
                section: i as u32,
                gpa: s.gpa,
                size: s.size,
            });
        }
        if s.kind == TdvfSectionKind::TdHob {
            if hob.is_some() {
                return Err(FirmwarePlanError::NoTdHob);
            }
            hob = Some(s);
        }
        ranges.push((i as u32, s.gpa, s.size));
    }
    check_no_overlap(&ranges)?;
    let hob = hob.ok_or(FirmwarePlanError::NoTdHob)?;

    // KVM_TDX_INIT_VCPU for every vCPU before any KVM_TDX_INIT_MEM_REGION; RCX = R8 = the
    // HOB's GPA (QEMU `tdx_post_init_vcpus`), RDX = CPUID(1).EAX.
    for vp in 0..plan.config.vcpus {
        let ctx = push_ctx(
            plan,
            tdx_vcpu_regs(vp, hob.gpa, false, plan.config.vcpu_sig),
        );
        plan.ops.push(LaunchOp::SetVpContext {
            vp,
            source: VpSource::TdxInit,
            ctx,
        });
    }

    let hob_pages = td_hob::build(&meta.sections().collect::<Vec<_>>(), &hob, mem)?;
    for s in meta.sections() {
        if s.page_aug() {
            // Accepted by the guest at run time (TDH.MEM.PAGE.AUG): only RAM, no op.
            continue;
        }
        match s.kind {
            TdvfSectionKind::Bfv | TdvfSectionKind::Cfv => {
                let kind = if s.extend() {
                    PageKind::Normal
                } else {
                    PageKind::Unmeasured
                };
                let mut off = 0u64;
                while off < s.size {
                    let data = if off < u64::from(s.raw_size) {
                        PageData::File {
                            offset: s.data_offset + off as u32,
                            len: (u64::from(s.raw_size) - off).min(PAGE_SIZE) as u32,
                        }
                    } else {
                        PageData::Zeros
                    };
                    plan.ops.push(LaunchOp::ImportPage {
                        gpa: s.gpa + off,
                        kind,
                        data,
                    });
                    off += PAGE_SIZE;
                }
            }
            TdvfSectionKind::TdHob => {
                let kind = if s.extend() {
                    PageKind::Normal
                } else {
                    PageKind::Unmeasured
                };
                let mut off = 0u64;
                for page in &hob_pages {
                    plan.generated.push(*page);
                    let index = (plan.generated.len() - 1) as u32;
                    plan.ops.push(LaunchOp::ImportPage {
                        gpa: s.gpa + off,
                        kind,
                        data: PageData::Generated { index },
                    });
                    off += PAGE_SIZE;
                }
                push_pages(plan, s.gpa + off, s.size - off, kind, PageData::Zeros);
            }
            TdvfSectionKind::TempMem => {
                let kind = if s.extend() {
                    PageKind::Normal
                } else {
                    PageKind::Unmeasured
                };
                push_pages(plan, s.gpa, s.size, kind, PageData::Zeros)
            }
            // Rejected by the parser unless PAGE_AUG (handled above).
            TdvfSectionKind::PermMem | TdvfSectionKind::Payload | TdvfSectionKind::PayloadParam => {
            }
        }
    }
    Ok(())
}

/// The TD HOB QEMU writes into the TD_HOB section (`hw/i386/tdvf-hob.c`): a PHIT header,
/// one resource descriptor per RAM range, and an end marker (UEFI PI spec vol. 3 §5).
mod td_hob {
    use super::*;

    const HOB_TYPE_HANDOFF: u16 = 0x0001;
    const HOB_TYPE_RESOURCE_DESCRIPTOR: u16 = 0x0003;
    const HOB_TYPE_END_OF_HOB_LIST: u16 = 0xFFFF;
    const PHIT_LEN: usize = 56;
    const RESOURCE_LEN: usize = 48;
    const END_LEN: usize = 8;
    /// `EFI_RESOURCE_SYSTEM_MEMORY`.
    const RESOURCE_SYSTEM_MEMORY: u32 = 0;
    /// `EFI_RESOURCE_MEMORY_UNACCEPTED` (PI 1.8).
    const RESOURCE_MEMORY_UNACCEPTED: u32 = 7;
    /// PRESENT | INITIALIZED | TESTED (QEMU `EFI_RESOURCE_ATTRIBUTE_TDVF_PRIVATE`).
    const RESOURCE_ATTR_PRIVATE: u32 = 0x1 | 0x2 | 0x4;
    /// `EFI_HOB_HANDOFF_TABLE_VERSION`.
    const PHIT_VERSION: u32 = 9;

    fn header(buf: &mut Vec<u8>, ty: u16, len: usize) {
        buf.extend_from_slice(&ty.to_le_bytes());
        buf.extend_from_slice(&(len as u16).to_le_bytes());
        buf.extend_from_slice(&0u32.to_le_bytes());
    }

    fn resource(buf: &mut Vec<u8>, ty: u32, start: u64, len: u64) {
        header(buf, HOB_TYPE_RESOURCE_DESCRIPTOR, RESOURCE_LEN);
        buf.extend_from_slice(&[0u8; 16]); // owner GUID
        buf.extend_from_slice(&ty.to_le_bytes());
        buf.extend_from_slice(&RESOURCE_ATTR_PRIVATE.to_le_bytes());
        buf.extend_from_slice(&start.to_le_bytes());
        buf.extend_from_slice(&len.to_le_bytes());
    }

    /// RAM as QEMU's `tdx_init_ram_entries` + `tdx_accept_ram_range` leave it: every RAM
    /// range unaccepted, except the TD_HOB and TempMem sections (added by the VMM, so
    /// accepted), in ascending order.
    pub(super) fn build(
        sections: &[TdvfSection],
        hob: &TdvfSection,
        mem: u64,
    ) -> Result<Vec<[u8; 4096]>> {
        let mut accepted: Vec<(u64, u64)> = sections
            .iter()
            .filter(|s| {
                matches!(s.kind, TdvfSectionKind::TdHob | TdvfSectionKind::TempMem) && !s.page_aug()
            })
            .map(|s| (s.gpa, s.size))
            .collect();
        accepted.sort_unstable();
        let mut entries: Vec<(u32, u64, u64)> = Vec::new();
        for (base, len) in ram_ranges(mem).into_iter().flatten() {
            let end = base + len;
            let mut at = base;
            for &(a, alen) in &accepted {
                let aend = a + alen;
                if aend <= at || a >= end {
                    continue;
                }
                if a > at {
                    entries.push((RESOURCE_MEMORY_UNACCEPTED, at, a - at));
                }
                let aend = aend.min(end);
                entries.push((RESOURCE_SYSTEM_MEMORY, a.max(at), aend - a.max(at)));
                at = aend;
            }
            if at < end {
                entries.push((RESOURCE_MEMORY_UNACCEPTED, at, end - at));
            }
        }
        // Efi{Free}Memory{Top,Bottom} stay 0 (QEMU leaves them zeroed: TDVF ignores them);
        // EfiEndOfHobList is the GPA just past the end marker.
        let mut buf: Vec<u8> = Vec::new();
        header(&mut buf, HOB_TYPE_HANDOFF, PHIT_LEN);
        buf.extend_from_slice(&PHIT_VERSION.to_le_bytes());
        buf.extend_from_slice(&0u32.to_le_bytes()); // BootMode: full configuration
        buf.extend_from_slice(&[0u8; 40]); // memory fields, EfiEndOfHobList (set below)
        for (ty, start, len) in entries {
            if len != 0 {
                resource(&mut buf, ty, start, len);
            }
        }
        header(&mut buf, HOB_TYPE_END_OF_HOB_LIST, END_LEN);
        let end_of_list = hob.gpa + buf.len() as u64;
        buf[48..56].copy_from_slice(&end_of_list.to_le_bytes());
        if buf.len() as u64 > hob.size {
            return Err(FirmwarePlanError::TdHobTooSmall {
                need: buf.len() as u64,
                size: hob.size,
            });
        }
        Ok(buf
            .chunks(PAGE_SIZE as usize)
            .map(|c| {
                let mut p = [0u8; 4096];
                p[..c.len()].copy_from_slice(c);
                p
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ovmf::test_image::{amdsev_like, asev, Builder};
    use crate::ovmf::{SEV_ES_RESET_BLOCK_GUID, SEV_METADATA_GUID};
    extern crate std;
    use std::vec::Vec;

    fn cfg(platform: Platform, vcpus: u32) -> LaunchConfig {
        LaunchConfig {
            platform,
            vcpus,
            mem_bytes: 256 << 20,
            vcpu_sig: 0x80_0F12,
            guest_features: 0x21,
            policy: None,
            host_data: [7; 32],
            kernel_hashes: None,
        }
    }

    fn hashes() -> KernelHashes {
        KernelHashes {
            kernel: [1; 32],
            initrd: [2; 32],
            cmdline: [3; 32],
        }
    }

    fn imports<B: AsRef<[u8]>>(plan: &LaunchPlan<B>) -> Vec<(u64, PageKind, PageData)> {
        plan.ops
            .iter()
            .filter_map(|op| match *op {
                LaunchOp::ImportPage { gpa, kind, data } => Some((gpa, kind, data)),
                _ => None,
            })
            .collect()
    }

    fn contexts<B: AsRef<[u8]>>(plan: &LaunchPlan<B>) -> Vec<(u32, VpSource, VpRegs)> {
        plan.ops
            .iter()
            .filter_map(|op| match *op {
                LaunchOp::SetVpContext { vp, source, ctx } => {
                    Some((vp, source, plan.vp_contexts[ctx as usize]))
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn hash_table_layout() {
        let t = hash_table_bytes(&hashes());
        assert_eq!(&t[..16], &HASH_TABLE_HEADER_GUID.0);
        assert_eq!(&t[16..18], &168u16.to_le_bytes());
        assert_eq!(&t[18..34], &HASH_CMDLINE_GUID.0);
        assert_eq!(&t[34..36], &50u16.to_le_bytes());
        assert_eq!(&t[36..68], &[3u8; 32]);
        assert_eq!(&t[68..84], &HASH_INITRD_GUID.0);
        assert_eq!(&t[86..118], &[2u8; 32]);
        assert_eq!(&t[118..134], &HASH_KERNEL_GUID.0);
        assert_eq!(&t[136..168], &[1u8; 32]);
        assert_eq!(&t[168..], &[0u8; 8]);
    }

    #[test]
    fn snp_op_stream() {
        let img = amdsev_like();
        let plan = plan_firmware(&img, &cfg(Platform::Snp, 4)).unwrap();
        assert_eq!(
            plan.ops[0],
            LaunchOp::CreateVm {
                platform: Platform::Snp,
                policy: 0x30000,
                vmsa_features: 0x20,
                vcpus: 4
            }
        );
        assert_eq!(
            &plan.ops[1..4],
            &[
                LaunchOp::MapRam {
                    gpa: 0,
                    size: 256 << 20
                },
                LaunchOp::MapRam {
                    gpa: 0xffff_0000,
                    size: 0x10000
                },
                LaunchOp::ImportPage {
                    gpa: 0xffff_0000,
                    kind: PageKind::Normal,
                    data: PageData::File {
                        offset: 0,
                        len: 4096
                    }
                }
            ]
        );
        let im = imports(&plan);
        // 16 image pages, ascending, then the metadata in table order
        for (i, &(gpa, kind, data)) in im[..16].iter().enumerate() {
            assert_eq!(gpa, 0xffff_0000 + i as u64 * 4096);
            assert_eq!(kind, PageKind::Normal);
            assert_eq!(
                data,
                PageData::File {
                    offset: i as u32 * 4096,
                    len: 4096
                }
            );
        }
        let meta: Vec<(u64, PageKind)> = im[16..].iter().map(|&(g, k, _)| (g, k)).collect();
        let mut want = Vec::new();
        want.extend((0..9).map(|i| (0x80_0000 + i * 4096, PageKind::Zero)));
        want.extend((0..3).map(|i| (0x80_a000 + i * 4096, PageKind::Zero)));
        want.push((0x80_d000, PageKind::Secrets));
        want.push((0x80_e000, PageKind::Cpuid));
        want.push((0x81_0000, PageKind::Zero)); // kernel hashes, none given
        want.extend((0..15).map(|i| (0x81_1000 + i * 4096, PageKind::Zero)));
        assert_eq!(meta, want);
        // every vCPU: the BSP at the reset vector, the APs at the reset block's address
        let ctx = contexts(&plan);
        assert_eq!(ctx.len(), 4);
        assert_eq!(ctx[0].2, reset_regs(0x80_0F12, 0xFFFF_FFF0));
        assert_eq!(ctx[0].2.rip, 0xfff0);
        for (vp, c) in ctx.iter().enumerate().skip(1) {
            assert_eq!(c.0, vp as u32);
            assert_eq!(c.1, VpSource::Reset);
            assert_eq!(c.2, reset_regs(0x80_0F12, 0x80_b004));
            assert_eq!(c.2.cs.base, 0x80_0000);
            assert_eq!(c.2.rip, 0xb004);
        }
        assert_eq!(
            plan.ops.last(),
            Some(&LaunchOp::Finalize {
                id_block: false,
                host_data: [7; 32]
            })
        );
        // VP contexts after every page
        let first_ctx = plan
            .ops
            .iter()
            .position(|o| matches!(o, LaunchOp::SetVpContext { .. }))
            .unwrap();
        assert!(plan.ops[first_ctx..]
            .iter()
            .all(|o| !matches!(o, LaunchOp::ImportPage { .. })));
    }

    #[test]
    fn snp_kernel_hashes_page() {
        let img = amdsev_like();
        let mut c = cfg(Platform::Snp, 1);
        c.kernel_hashes = Some(hashes());
        let plan = plan_firmware(&img, &c).unwrap();
        let im = imports(&plan);
        let (gpa, kind, data) = im
            .iter()
            .copied()
            .find(|&(g, _, _)| g == 0x81_0000)
            .unwrap();
        assert_eq!((gpa, kind), (0x81_0000, PageKind::Normal));
        let page = plan.page_bytes(&data);
        assert_eq!(page.len(), 4096);
        assert_eq!(&page[0xc00..0xc00 + 176], &hash_table_bytes(&hashes()));
        assert!(page[..0xc00].iter().all(|&b| b == 0));
        assert!(page[0xc00 + 176..].iter().all(|&b| b == 0));
    }

    #[test]
    fn sev_and_sev_es_streams() {
        let img = amdsev_like();
        let mut c = cfg(Platform::SevEs, 2);
        c.kernel_hashes = Some(hashes());
        let plan = plan_firmware(&img, &c).unwrap();
        assert!(matches!(
            plan.ops[0],
            LaunchOp::CreateVm {
                platform: Platform::SevEs,
                policy: 0x5,
                ..
            }
        ));
        let im = imports(&plan);
        assert_eq!(im.len(), 17);
        let (gpa, kind, data) = im[16];
        assert_eq!((gpa, kind), (0x81_0000, PageKind::Normal));
        assert_eq!(
            data,
            PageData::GeneratedPart {
                index: 0,
                start: 0xc00,
                len: 176
            }
        );
        assert_eq!(plan.page_bytes(&data), &hash_table_bytes(&hashes()));
        assert_eq!(contexts(&plan).len(), 2);

        let plan = plan_firmware(&img, &cfg(Platform::Sev, 2)).unwrap();
        assert_eq!(imports(&plan).len(), 16);
        // SEV: the BSP only; its state is not measured
        assert_eq!(contexts(&plan).len(), 1);
        assert!(matches!(
            plan.ops[0],
            LaunchOp::CreateVm {
                policy: 1,
                vmsa_features: 0,
                ..
            }
        ));
    }

    #[test]
    fn tdx_stream() {
        let img = amdsev_like();
        let plan = plan_firmware(&img, &cfg(Platform::Tdx, 2)).unwrap();
        let ctx = contexts(&plan);
        assert_eq!(ctx.len(), 2);
        assert_eq!(ctx[1].1, VpSource::TdxInit);
        assert_eq!(ctx[1].2, tdx_vcpu_regs(1, 0x80_9000, false, 0x80_0F12));
        // contexts before pages
        let first_page = plan
            .ops
            .iter()
            .position(|o| matches!(o, LaunchOp::ImportPage { .. }))
            .unwrap();
        assert!(plan.ops[first_page..]
            .iter()
            .all(|o| !matches!(o, LaunchOp::SetVpContext { .. })));
        let im = imports(&plan);
        // BFV: 15 measured pages from the image at 0x1000..
        for (i, &(gpa, kind, data)) in im[..15].iter().enumerate() {
            assert_eq!(gpa, 0xffff_1000 + i as u64 * 4096);
            assert_eq!(kind, PageKind::Normal);
            assert_eq!(
                data,
                PageData::File {
                    offset: 0x1000 + i as u32 * 4096,
                    len: 4096
                }
            );
        }
        // CFV: one page, added without MR.EXTEND
        assert_eq!(
            im[15],
            (
                0xffff_0000,
                PageKind::Unmeasured,
                PageData::File {
                    offset: 0,
                    len: 4096
                }
            )
        );
        // TD HOB (2 pages), TempMem (6 pages), unmeasured
        assert_eq!(im[16].0, 0x80_9000);
        assert!(matches!(im[16].2, PageData::Generated { .. }));
        assert_eq!(im[17], (0x80_a000, PageKind::Unmeasured, PageData::Zeros));
        assert_eq!(im.len(), 16 + 2 + 6);
        assert!(im[18..]
            .iter()
            .all(|&(_, k, d)| k == PageKind::Unmeasured && d == PageData::Zeros));
        // The HOB: PHIT, resources (unaccepted / accepted split around the sections), end.
        let hob = plan.page_bytes(&im[16].2);
        assert_eq!(&hob[0..2], &1u16.to_le_bytes());
        assert_eq!(&hob[2..4], &56u16.to_le_bytes());
        let mut at = 56;
        let mut res = Vec::new();
        loop {
            let ty = u16::from_le_bytes([hob[at], hob[at + 1]]);
            let len = usize::from(u16::from_le_bytes([hob[at + 2], hob[at + 3]]));
            if ty == 0xFFFF {
                at += len;
                break;
            }
            assert_eq!(ty, 3);
            let rt = u32::from_le_bytes(hob[at + 24..at + 28].try_into().unwrap());
            let start = u64::from_le_bytes(hob[at + 32..at + 40].try_into().unwrap());
            let size = u64::from_le_bytes(hob[at + 40..at + 48].try_into().unwrap());
            res.push((rt, start, size));
            at += len;
        }
        assert_eq!(
            res,
            [
                (7, 0, 0x80_0000),
                (0, 0x80_0000, 0x6000),
                (7, 0x80_6000, 0x3000),
                (0, 0x80_9000, 0x2000),
                (7, 0x80_b000, (256 << 20) - 0x80_b000),
            ]
        );
        let end = u64::from_le_bytes(hob[48..56].try_into().unwrap());
        assert_eq!(end, 0x80_9000 + at as u64);
        assert_eq!(
            plan_firmware(&img, &{
                let mut c = cfg(Platform::Tdx, 1);
                c.kernel_hashes = Some(hashes());
                c
            })
            .unwrap_err(),
            FirmwarePlanError::KernelHashesUnsupported {
                platform: Platform::Tdx
            }
        );
    }

    #[test]
    fn native_stream() {
        let img = amdsev_like();
        let plan = plan_firmware(&img, &cfg(Platform::Native, 4)).unwrap();
        assert_eq!(imports(&plan).len(), 16);
        let ctx = contexts(&plan);
        assert_eq!(ctx.len(), 1);
        assert_eq!(ctx[0].2.cs.base, 0xffff_0000);
        assert!(matches!(
            plan.ops[0],
            LaunchOp::CreateVm {
                platform: Platform::Native,
                policy: 0,
                ..
            }
        ));
    }

    #[test]
    fn errors() {
        let bare = Builder::new(0x4000).build();
        assert_eq!(
            plan_firmware(&bare, &cfg(Platform::Snp, 1)).unwrap_err(),
            FirmwarePlanError::NoSevMetadata
        );
        assert_eq!(
            plan_firmware(&bare, &cfg(Platform::SevEs, 1)).unwrap_err(),
            FirmwarePlanError::NoResetBlock
        );
        assert_eq!(
            plan_firmware(&bare, &cfg(Platform::Tdx, 1)).unwrap_err(),
            FirmwarePlanError::NoTdxMetadata
        );
        let mut c = cfg(Platform::Sev, 1);
        c.kernel_hashes = Some(hashes());
        assert_eq!(
            plan_firmware(&bare, &c).unwrap_err(),
            FirmwarePlanError::NoHashTable
        );
        assert!(plan_firmware(&bare, &cfg(Platform::Sev, 1)).is_ok());
        assert!(matches!(
            plan_firmware(&[0u8; 4096], &cfg(Platform::Sev, 1)).unwrap_err(),
            FirmwarePlanError::Parse(_)
        ));
        let img = amdsev_like();
        for vcpus in [0, 256, u32::MAX] {
            assert_eq!(
                plan_firmware(&img, &cfg(Platform::Snp, vcpus)).unwrap_err(),
                FirmwarePlanError::Limit(LimitError::Vcpus(vcpus.into()))
            );
        }
        assert!(plan_firmware(&img, &cfg(Platform::Tdx, 255)).is_ok());
        let mut small = cfg(Platform::Snp, 1);
        small.mem_bytes = 0x80_0000;
        assert_eq!(
            plan_firmware(&img, &small).unwrap_err(),
            FirmwarePlanError::SectionOutsideMemory {
                section: 0,
                gpa: 0x80_0000,
                size: 0x9000
            }
        );
        for (p, pol) in [
            (Platform::Snp, 0x10000),
            (Platform::Sev, 0x5),
            (Platform::SevEs, 0x1),
            (Platform::Sev, 1 << 32),
        ] {
            let mut c = cfg(p, 1);
            c.policy = Some(pol);
            assert_eq!(
                plan_firmware(&img, &c).unwrap_err(),
                FirmwarePlanError::BadPolicy {
                    platform: p,
                    policy: pol
                }
            );
        }
        // SNP kernel hashes without a KERNEL_HASHES section
        let mut b = Builder::new(0x4000);
        let off = b.blob_at_end(0x1000, &asev(&[(0x80_0000, 0x1000, 1)]));
        let mut ht = Vec::new();
        ht.extend_from_slice(&0x81_0c00u32.to_le_bytes());
        ht.extend_from_slice(&0x400u32.to_le_bytes());
        let img2 = b
            .entry(SEV_ES_RESET_BLOCK_GUID, &0x80_b004u32.to_le_bytes())
            .entry(crate::ovmf::SEV_HASH_TABLE_GUID, &ht)
            .entry(SEV_METADATA_GUID, &off.to_le_bytes())
            .build();
        let mut c = cfg(Platform::Snp, 1);
        c.kernel_hashes = Some(hashes());
        assert_eq!(
            plan_firmware(&img2, &c).unwrap_err(),
            FirmwarePlanError::NoKernelHashesSection
        );
        // overlapping sections
        let mut b = Builder::new(0x4000);
        let off = b.blob_at_end(
            0x1000,
            &asev(&[(0x80_0000, 0x2000, 1), (0x80_1000, 0x1000, 2)]),
        );
        let img3 = b
            .entry(SEV_ES_RESET_BLOCK_GUID, &0x80_b004u32.to_le_bytes())
            .entry(SEV_METADATA_GUID, &off.to_le_bytes())
            .build();
        assert_eq!(
            plan_firmware(&img3, &cfg(Platform::Snp, 1)).unwrap_err(),
            FirmwarePlanError::SectionsOverlap {
                first: 0,
                second: 1
            }
        );
    }

    /// Mutated images plan or fail cleanly on every platform.
    #[test]
    fn mutations_never_panic() {
        let img = amdsev_like();
        let tail = img.len() - 0x2100;
        for i in (tail..img.len()).step_by(3) {
            for v in [0u8, 0x10, 0xff] {
                let mut m = img.clone();
                m[i] = v;
                for p in Platform::ALL {
                    let mut c = cfg(p, 2);
                    if matches!(p, Platform::Sev | Platform::SevEs | Platform::Snp) {
                        c.kernel_hashes = Some(hashes());
                    }
                    let _ = plan_firmware(&m, &c);
                }
            }
        }
    }
}
