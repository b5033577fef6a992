//! Packs relaunch's own test guests into IGVM bundles.
//!
//! The guests (`boot-images/guests`, built for `x86_64-unknown-none` by
//! `cargo xtask build-images`) are ELF executables linked at fixed guest-physical
//! addresses. [`pack`] turns one into an IGVM v1 file with [`relaunch_core::writer`]:
//!
//! - platforms NATIVE (mask [`MASK_NATIVE`]), SEV-SNP (mask [`MASK_SNP`], guest policy
//!   [`SNP_POLICY`]), SEV (mask [`MASK_SEV`], policy [`SEV_POLICY`]), SEV-ES (mask
//!   [`MASK_SEV_ES`], policy [`SEV_ES_POLICY`]) and, when the ELF has a TDX reset page, TDX
//!   (mask [`MASK_TDX`]);
//! - PAGE_DATA shared by all views, in ascending GPA order: the GDT, the page tables
//!   (identity map of 0..4 GiB with 2 MiB pages), the ELF's PT_LOAD segments
//!   (page-granular; `.bss` and the BSP stack as zero pages); the SEV launch-secret page
//!   ([`layout::SEV_SECRET_GPA`], a zero page) under the SEV and SEV-ES masks only; the TDX
//!   reset page (the ELF segment at [`layout::TDX_RESET_PAGE`]) under the TDX mask only;
//! - REQUIRED_MEMORY for the scratch RAM the guests use uninitialised;
//! - a VP context for NATIVE, SNP, SEV and SEV-ES, all starting the BSP directly in 64-bit
//!   long mode at the ELF entry with the same registers: an `IgvmNativeVpContextX64` for
//!   NATIVE and SEV, a VMSA at 0xFFFFFFFFF000 for SNP (SEV_FEATURES [`SEV_FEATURES`]) and
//!   SEV-ES ([`SEV_ES_FEATURES`]). TDX has no VP context: TD vCPUs start at 0xFFFFFFF0 in
//!   the TDX reset page.
//!
//! The layout is [`layout`] (the same file the guests compile) and docs/boot-images.md.
//! The packer is deterministic: the same ELF always gives the same bytes.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::collections::BTreeMap;
use std::fmt;

use igvm_defs::{IgvmNativeVpContextX64, IgvmPageDataFlags, IgvmPageDataType, IgvmPlatformType};
use relaunch_core::writer::{IgvmBuilder, WriteError};

#[path = "../guests/src/layout.rs"]
pub mod layout;

/// The guests' own SHA-256 (sevinfo's), tested here on the host.
#[cfg(test)]
#[path = "../guests/src/sha256.rs"]
mod guest_sha256;

const PAGE: u64 = 4096;

/// Compatibility mask of the NATIVE view.
pub const MASK_NATIVE: u32 = 1;
/// Compatibility mask of the SEV-SNP view.
pub const MASK_SNP: u32 = 2;
/// Compatibility mask of the SEV view.
pub const MASK_SEV: u32 = 4;
/// Compatibility mask of the SEV-ES view.
pub const MASK_SEV_ES: u32 = 8;
/// Compatibility mask of the TDX view (present when the ELF has a TDX reset page).
pub const MASK_TDX: u32 = 16;
/// The TDX view's shared-GPA boundary: the shared bit of a TD with GPAW 48 (bit 47).
pub const TDX_SHARED_GPA_BOUNDARY: u64 = 1 << 47;
/// SNP guest policy: SMT allowed (bit 16), bit 17 must be one; no debug, no migration
/// agent (`../shared/spec/igvm-snp.md` §4.1).
pub const SNP_POLICY: u64 = 0x3_0000;
/// Where KVM measures (and an IGVM file must place) the SNP VMSA.
pub const SNP_VMSA_GPA: u64 = 0xFFFF_FFFF_F000;
/// SEV guest policy: NODBG (0x1) (SEV policy bits: `../shared/spec/igvm-snp.md` §3.1);
/// QEMU's `sev-guest` default and the planner's (`core-nostd/src/plan/igvm.rs`
/// `DEFAULT_SEV_POLICY`).
pub const SEV_POLICY: u64 = 0x1;
/// SEV-ES guest policy: NODBG (0x1) | ES (0x4) (spec notes §3.1; an SEV-ES launch needs ES:
/// `core-nostd/src/plan/igvm.rs` `DEFAULT_SEV_ES_POLICY`).
pub const SEV_ES_POLICY: u64 = 0x5;
/// Where the SEV-ES VMSA must sit: the same GPA as the SNP one (QEMU
/// `check_vmsa_supported` requires 0xFFFFFFFFF000 for SEV-ES too; `../shared/spec/
/// kvm-vmsa-synthesis.md` §4(b)).
pub const SEV_ES_VMSA_GPA: u64 = SNP_VMSA_GPA;

/// Initial CR0: PG | NE | ET | PE.
pub const CR0: u64 = 0x8000_0031;
/// Initial CR4: PAE | MCE.
pub const CR4: u64 = 0x60;
/// Initial EFER: LMA | LME (the SNP VMSA adds SVME, 0x1000, which KVM forces).
pub const EFER: u64 = 0x500;
/// EFER.SVME.
pub const EFER_SVME: u64 = 0x1000;
/// The architectural reset value of IA32_PAT.
pub const PAT: u64 = 0x0007_0406_0007_0406;
/// SEV features of the SNP VMSA: SNP active (bit 0) only.
pub const SEV_FEATURES: u64 = 1;
/// SEV features of the SEV-ES VMSA: none. Bit 0 (SNP active) must be clear on SEV-ES
/// (QEMU `check_vmsa_supported`), and VP 0's features become the VM's INIT2
/// `vmsa_features`, which KVM accepts only within `KVM_X86_SEV_VMSA_FEATURES`: zero fits
/// every host (`../shared/spec/kvm-vmsa-synthesis.md` §3, §4(b)).
pub const SEV_ES_FEATURES: u64 = 0;

/// Why an ELF could not be packed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PackError {
    /// Not a little-endian x86-64 ELF64 executable (at file offset `at`).
    NotElf {
        /// File offset of the offending field.
        at: usize,
    },
    /// Program header `index` points outside the file or has memsz < filesz.
    BadSegment {
        /// Program header index.
        index: usize,
    },
    /// Program header `index` loads outside the image window and the AP page, or its
    /// virtual and physical addresses differ.
    SegmentOutsideLayout {
        /// Program header index.
        index: usize,
        /// Its physical address.
        gpa: u64,
    },
    /// The entry point is outside the image window.
    EntryOutsideImage {
        /// The ELF entry point.
        entry: u64,
    },
    /// The IGVM writer refused.
    Write(WriteError),
}

impl fmt::Display for PackError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            PackError::NotElf { at } => {
                write!(
                    f,
                    "not an x86-64 ELF64 executable (field at offset {at:#x})"
                )
            }
            PackError::BadSegment { index } => write!(
                f,
                "program header {index}: data outside the file or memsz < filesz"
            ),
            PackError::SegmentOutsideLayout { index, gpa } => write!(
                f,
                "program header {index}: loads at {gpa:#x}, outside {:#x}..{:#x}, the AP page \
                 {:#x} and the TDX reset page {:#x} (or vaddr != paddr)",
                layout::IMAGE_BASE,
                layout::IMAGE_END,
                layout::AP_TRAMPOLINE,
                layout::TDX_RESET_PAGE
            ),
            PackError::EntryOutsideImage { entry } => {
                write!(f, "entry point {entry:#x} outside the image window")
            }
            PackError::Write(e) => write!(f, "IGVM writer: {e}"),
        }
    }
}

impl std::error::Error for PackError {}

impl From<WriteError> for PackError {
    fn from(e: WriteError) -> Self {
        PackError::Write(e)
    }
}

/// One PT_LOAD segment of an ELF file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment<'a> {
    /// Guest-physical load address (p_paddr).
    pub gpa: u64,
    /// The bytes from the file (p_filesz of them).
    pub data: &'a [u8],
    /// Size in memory (p_memsz ≥ data.len(); the rest is zero).
    pub mem_size: u64,
}

/// The parts of an ELF executable the packer needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Elf<'a> {
    /// e_entry.
    pub entry: u64,
    /// Non-empty PT_LOAD segments, in program-header order.
    pub segments: Vec<Segment<'a>>,
}

fn field<const N: usize>(b: &[u8], at: usize) -> Result<[u8; N], PackError> {
    at.checked_add(N)
        .and_then(|end| b.get(at..end))
        .and_then(|s| s.try_into().ok())
        .ok_or(PackError::NotElf { at })
}

fn u16_at(b: &[u8], at: usize) -> Result<u16, PackError> {
    field(b, at).map(u16::from_le_bytes)
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, PackError> {
    field(b, at).map(u32::from_le_bytes)
}

fn u64_at(b: &[u8], at: usize) -> Result<u64, PackError> {
    field(b, at).map(u64::from_le_bytes)
}

/// Parses the ELF64 header and PT_LOAD program headers (System V gABI, "ELF Header" and
/// "Program Header"); every offset is checked against the file.
pub fn parse_elf(b: &[u8]) -> Result<Elf<'_>, PackError> {
    const PT_LOAD: u32 = 1;
    if field::<4>(b, 0)? != *b"\x7fELF" {
        return Err(PackError::NotElf { at: 0 });
    }
    // EI_CLASS = ELFCLASS64, EI_DATA = ELFDATA2LSB, e_type = ET_EXEC, e_machine = EM_X86_64.
    if field::<1>(b, 4)? != [2] {
        return Err(PackError::NotElf { at: 4 });
    }
    if field::<1>(b, 5)? != [1] {
        return Err(PackError::NotElf { at: 5 });
    }
    if u16_at(b, 0x10)? != 2 {
        return Err(PackError::NotElf { at: 0x10 });
    }
    if u16_at(b, 0x12)? != 0x3E {
        return Err(PackError::NotElf { at: 0x12 });
    }
    let entry = u64_at(b, 0x18)?;
    let phoff = usize::try_from(u64_at(b, 0x20)?).map_err(|_| PackError::NotElf { at: 0x20 })?;
    let phentsize = usize::from(u16_at(b, 0x36)?);
    let phnum = usize::from(u16_at(b, 0x38)?);
    if phentsize < 56 {
        return Err(PackError::NotElf { at: 0x36 });
    }
    let mut segments = Vec::new();
    for index in 0..phnum {
        let ph = index
            .checked_mul(phentsize)
            .and_then(|o| o.checked_add(phoff))
            .ok_or(PackError::BadSegment { index })?;
        let bad = |_| PackError::BadSegment { index };
        if u32_at(b, ph).map_err(bad)? != PT_LOAD {
            continue;
        }
        let offset = u64_at(b, ph + 8).map_err(bad)?;
        let vaddr = u64_at(b, ph + 0x10).map_err(bad)?;
        let gpa = u64_at(b, ph + 0x18).map_err(bad)?;
        let filesz = u64_at(b, ph + 0x20).map_err(bad)?;
        let mem_size = u64_at(b, ph + 0x28).map_err(bad)?;
        if filesz > mem_size {
            return Err(PackError::BadSegment { index });
        }
        let data = usize::try_from(offset)
            .ok()
            .zip(usize::try_from(filesz).ok())
            .and_then(|(o, n)| b.get(o..o.checked_add(n)?))
            .ok_or(PackError::BadSegment { index })?;
        if vaddr != gpa {
            return Err(PackError::SegmentOutsideLayout { index, gpa });
        }
        if mem_size > 0 {
            segments.push(Segment {
                gpa,
                data,
                mem_size,
            });
        }
    }
    Ok(Elf { entry, segments })
}

/// Whether `gpa..gpa+size` lies in the image window or in the AP start-up page.
fn in_layout(gpa: u64, size: u64) -> bool {
    let Some(end) = gpa.checked_add(size) else {
        return false;
    };
    let image = gpa >= layout::IMAGE_BASE && end <= layout::IMAGE_END;
    let ap = gpa >= layout::AP_TRAMPOLINE && end <= layout::AP_TRAMPOLINE + PAGE;
    image || ap
}

/// The GDT page: null, 64-bit code (0x08), flat data (0x10), flat 32-bit code (0x18).
pub fn gdt_page() -> Vec<u8> {
    let descriptors: [u64; 4] = [
        0,
        0x00AF_9B00_0000_FFFF, // L=1, P, DPL0, code exec/read, accessed
        0x00CF_9300_0000_FFFF, // G, D/B, P, DPL0, data read/write, accessed
        0x00CF_9B00_0000_FFFF, // G, D/B, P, DPL0, code exec/read, accessed
    ];
    let mut page = vec![0u8; PAGE as usize];
    for (slot, d) in page.chunks_exact_mut(8).zip(descriptors) {
        slot.copy_from_slice(&d.to_le_bytes());
    }
    page
}

/// The page tables, as (GPA, page) in ascending GPA order: PML4, PDPT, four PDs mapping
/// 0..4 GiB identity with 2 MiB pages (present, writable, supervisor, write-back).
pub fn page_tables() -> Vec<(u64, Vec<u8>)> {
    const P_RW: u64 = 0x3;
    const PS: u64 = 0x80;
    let mut out = Vec::new();
    let mut pml4 = vec![0u8; PAGE as usize];
    pml4[..8].copy_from_slice(&(layout::PDPT | P_RW).to_le_bytes());
    out.push((layout::PML4, pml4));
    let mut pdpt = vec![0u8; PAGE as usize];
    for i in 0..layout::PD_COUNT {
        let at = (i * 8) as usize;
        pdpt[at..at + 8].copy_from_slice(&((layout::PD + i * PAGE) | P_RW).to_le_bytes());
    }
    out.push((layout::PDPT, pdpt));
    for i in 0..layout::PD_COUNT {
        let mut pd = vec![0u8; PAGE as usize];
        for (j, e) in pd.chunks_exact_mut(8).enumerate() {
            let base = ((i << 30) | ((j as u64) << 21)) | P_RW | PS;
            e.copy_from_slice(&base.to_le_bytes());
        }
        out.push((layout::PD + i * PAGE, pd));
    }
    out
}

/// The NATIVE view's BSP context: 64-bit mode at `entry`, RSP = [`layout::STACK_TOP`].
/// Segment attributes are in the IGVM / descriptor-flags form (descriptor byte 5 in bits
/// 7:0, the flags nibble G/D/L/AVL in bits 15:12), as QEMU's `FLAGS_TO_SEGCACHE` reads them.
pub fn native_context(entry: u64) -> IgvmNativeVpContextX64 {
    IgvmNativeVpContextX64 {
        rsp: layout::STACK_TOP,
        rip: entry,
        rflags: 2,
        gdtr_limit: layout::GDT_LIMIT,
        gdtr_base: layout::GDT,
        code_selector: layout::SEL_CODE64,
        code_attributes: 0xA09B,
        code_limit: 0xFFFF_FFFF,
        data_selector: layout::SEL_DATA,
        data_attributes: 0xC093,
        data_limit: 0xFFFF_FFFF,
        cr0: CR0,
        cr3: layout::PML4,
        cr4: CR4,
        efer: EFER,
        ..zerocopy::FromZeros::new_zeroed()
    }
}

fn put(page: &mut [u8], at: usize, bytes: &[u8]) {
    page[at..at + bytes.len()].copy_from_slice(bytes);
}

fn put_segment(page: &mut [u8], at: usize, selector: u16, attrib: u16, limit: u32, base: u64) {
    put(page, at, &selector.to_le_bytes());
    put(page, at + 2, &attrib.to_le_bytes());
    put(page, at + 4, &limit.to_le_bytes());
    put(page, at + 8, &base.to_le_bytes());
}

/// The SNP view's BSP VMSA (AMD APM Vol. 2 Table B-4; offsets from
/// `../shared/spec/igvm-snp.md` §4.2): the same registers as [`native_context`], in the
/// VMSA's 12-bit attribute form, plus what KVM requires of a VMSA it can load: EFER.SVME,
/// the reset PAT, XCR0 = 1, x87/SSE reset values, sev_features = SNP. Only fields QEMU's
/// `check_vmsa_supported` accepts are non-zero.
pub fn snp_vmsa(entry: u64) -> Vec<u8> {
    vmsa(entry, SEV_FEATURES)
}

/// The SEV-ES view's BSP VMSA: [`snp_vmsa`] with SEV_FEATURES [`SEV_ES_FEATURES`] (the
/// registers are the same; SEV-ES differs only in not being SNP).
pub fn sev_es_vmsa(entry: u64) -> Vec<u8> {
    vmsa(entry, SEV_ES_FEATURES)
}

fn vmsa(entry: u64, sev_features: u64) -> Vec<u8> {
    let mut v = vec![0u8; PAGE as usize];
    for at in [0x00, 0x20, 0x30, 0x40, 0x50] {
        // es, ss, ds, fs, gs
        put_segment(&mut v, at, layout::SEL_DATA, 0xC93, 0xFFFF_FFFF, 0);
    }
    put_segment(&mut v, 0x10, layout::SEL_CODE64, 0xA9B, 0xFFFF_FFFF, 0); // cs
    put_segment(
        &mut v,
        0x60,
        0,
        0,
        u32::from(layout::GDT_LIMIT),
        layout::GDT,
    ); // gdtr
    put_segment(&mut v, 0x70, 0, 0x82, 0xFFFF, 0); // ldtr
    put_segment(&mut v, 0x80, 0, 0, 0, 0); // idtr
    put_segment(&mut v, 0x90, 0, 0x8B, 0xFFFF, 0); // tr
    for (at, value) in [
        (0xD0, EFER | EFER_SVME),
        (0x148, CR4),
        (0x150, layout::PML4),
        (0x158, CR0),
        (0x160, 0x400),       // dr7
        (0x168, 0xFFFF_0FF0), // dr6
        (0x170, 2),           // rflags
        (0x178, entry),       // rip
        (0x1D8, layout::STACK_TOP),
        (0x268, PAT),
        (0x3B0, sev_features),
        (0x3E8, 1), // xcr0
    ] {
        put(&mut v, at, &u64::to_le_bytes(value));
    }
    put(&mut v, 0x408, &0x1F80u32.to_le_bytes()); // mxcsr
    put(&mut v, 0x410, &0x037Fu16.to_le_bytes()); // x87_fcw
    v
}

/// Whether `gpa..gpa+size` lies in the TDX reset page.
fn in_tdx_reset_page(gpa: u64, size: u64) -> bool {
    gpa >= layout::TDX_RESET_PAGE
        && gpa
            .checked_add(size)
            .is_some_and(|end| end <= layout::TDX_RESET_PAGE + PAGE)
}

/// What a guest needs from its bundle beyond the common layout.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PackOptions {
    /// A window `(gpa, size)` of RAM the host may read in every view: declared with
    /// REQUIRED_MEMORY, and imported as shared zero pages in the TDX view (a TD's memory is
    /// private unless the launch says otherwise; `fuki` hands its next bundle over there).
    pub host_window: Option<(u64, u64)>,
}

/// The options a guest of this crate is packed with: `fuki` gets its hand-over window.
pub fn options_for(name: &str) -> PackOptions {
    PackOptions {
        host_window: (name == "fuki").then_some((layout::FUKI_WINDOW, layout::FUKI_WINDOW_SIZE)),
    }
}

/// Packs a guest ELF into an IGVM bundle (see the crate documentation).
pub fn pack(elf_bytes: &[u8]) -> Result<Vec<u8>, PackError> {
    pack_with(elf_bytes, PackOptions::default())
}

/// [`pack`] with `opts`.
pub fn pack_with(elf_bytes: &[u8], opts: PackOptions) -> Result<Vec<u8>, PackError> {
    let elf = parse_elf(elf_bytes)?;
    if !(layout::IMAGE_BASE..layout::IMAGE_END).contains(&elf.entry) {
        return Err(PackError::EntryOutsideImage { entry: elf.entry });
    }
    let has_tdx = elf
        .segments
        .iter()
        .any(|s| in_tdx_reset_page(s.gpa, s.mem_size));
    let shared =
        MASK_NATIVE | MASK_SNP | MASK_SEV | MASK_SEV_ES | if has_tdx { MASK_TDX } else { 0 };

    // Page-granular image: GPA → (compatibility mask, contents; None = a page of zeros).
    let mut pages: BTreeMap<u64, (u32, Option<Vec<u8>>)> = BTreeMap::new();
    for (index, s) in elf.segments.iter().enumerate() {
        let mask = if in_tdx_reset_page(s.gpa, s.mem_size) {
            MASK_TDX
        } else if in_layout(s.gpa, s.mem_size) {
            shared
        } else {
            return Err(PackError::SegmentOutsideLayout { index, gpa: s.gpa });
        };
        // In the layout, so gpa + mem_size <= 2^32 and nothing below overflows.
        let first = s.gpa & !(PAGE - 1);
        let end = s.gpa + s.mem_size;
        let mut page = first;
        while page < end {
            pages.entry(page).or_insert((mask, None));
            page += PAGE;
        }
        for (i, &byte) in s.data.iter().enumerate() {
            if byte == 0 {
                continue;
            }
            let gpa = s.gpa + i as u64;
            let slot = pages.entry(gpa & !(PAGE - 1)).or_insert((mask, None));
            slot.1.get_or_insert_with(|| vec![0u8; PAGE as usize])[(gpa % PAGE) as usize] = byte;
        }
    }
    pages.insert(layout::GDT, (shared, Some(gdt_page())));
    for (gpa, table) in page_tables() {
        pages.insert(gpa, (shared, Some(table)));
    }
    let mut gpa = layout::STACK_BOTTOM;
    while gpa < layout::STACK_TOP {
        pages.insert(gpa, (shared, None));
        gpa += PAGE;
    }
    // The launch-secret page: a measured zero page where LAUNCH_SECRET exists (SEV,
    // SEV-ES), so a launch without a secret leaves "no secret" (length 0) there. Outside
    // the image window and the AP page, so no ELF segment can claim it.
    pages.insert(layout::SEV_SECRET_GPA, (MASK_SEV | MASK_SEV_ES, None));

    let mut b = IgvmBuilder::new();
    let native = b.platform(IgvmPlatformType::NATIVE, 0)?;
    let snp = b.platform(IgvmPlatformType::SEV_SNP, 0)?;
    let sev = b.platform(IgvmPlatformType::SEV, 0)?;
    let sev_es = b.platform(IgvmPlatformType::SEV_ES, 0)?;
    debug_assert_eq!(
        (native, snp, sev, sev_es),
        (MASK_NATIVE, MASK_SNP, MASK_SEV, MASK_SEV_ES)
    );
    if has_tdx {
        let tdx = b.platform(IgvmPlatformType::TDX, TDX_SHARED_GPA_BOUNDARY)?;
        debug_assert_eq!(tdx, MASK_TDX);
    }
    b.guest_policy(SNP_POLICY, snp);
    b.guest_policy(SEV_POLICY, sev);
    b.guest_policy(SEV_ES_POLICY, sev_es);
    for (gpa, (mask, data)) in &pages {
        let data = data.as_deref().unwrap_or(&[]);
        b.page_data(
            *gpa,
            *mask,
            IgvmPageDataFlags::new(),
            IgvmPageDataType::NORMAL,
            data,
        )?;
    }
    b.required_memory(layout::SCRATCH, shared, layout::SCRATCH_SIZE as u32, 0);
    if let Some((gpa, size)) = opts.host_window {
        b.required_memory(gpa, shared, size as u32, 0);
        if has_tdx {
            let mut page = gpa;
            while page < gpa + size {
                b.page_data(
                    page,
                    MASK_TDX,
                    IgvmPageDataFlags::new().with_shared(true),
                    IgvmPageDataType::NORMAL,
                    &[],
                )?;
                page += PAGE;
            }
        }
    }
    // One VP context per view: the igvm crate maps a VP_CONTEXT's mask to exactly one
    // platform (igvm 0.5 `InvalidVpContextPlatformType`). The SEV context is the native one
    // (the writer stores the identical bytes once).
    b.native_vp_context(native, 0, &native_context(elf.entry))?;
    b.vp_context(SNP_VMSA_GPA, snp, 0, &snp_vmsa(elf.entry))?;
    b.native_vp_context(sev, 0, &native_context(elf.entry))?;
    b.vp_context(SEV_ES_VMSA_GPA, sev_es, 0, &sev_es_vmsa(elf.entry))?;
    Ok(b.finish()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use igvm::{
        IgvmDirectiveHeader, IgvmFile, IgvmInitializationHeader, IgvmPlatformHeader, IsolationType,
    };

    /// A minimal ELF64 executable: a header, `phdrs` program headers right after it, then
    /// the segment bytes. Each segment is (vaddr, bytes, memsz).
    fn make_elf(entry: u64, segs: &[(u64, &[u8], u64)]) -> Vec<u8> {
        let phoff = 64usize;
        let mut data_off = phoff + 56 * segs.len();
        let mut f = vec![0u8; data_off];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 2; // ELFCLASS64
        f[5] = 1; // little-endian
        f[6] = 1; // EV_CURRENT
        f[0x10..0x12].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        f[0x12..0x14].copy_from_slice(&0x3Eu16.to_le_bytes()); // EM_X86_64
        f[0x18..0x20].copy_from_slice(&entry.to_le_bytes());
        f[0x20..0x28].copy_from_slice(&(phoff as u64).to_le_bytes());
        f[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        f[0x38..0x3A].copy_from_slice(&(segs.len() as u16).to_le_bytes());
        for (i, (vaddr, bytes, memsz)) in segs.iter().enumerate() {
            let ph = phoff + 56 * i;
            f[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
            f[ph + 8..ph + 16].copy_from_slice(&(data_off as u64).to_le_bytes());
            f[ph + 0x10..ph + 0x18].copy_from_slice(&vaddr.to_le_bytes());
            f[ph + 0x18..ph + 0x20].copy_from_slice(&vaddr.to_le_bytes());
            f[ph + 0x20..ph + 0x28].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
            f[ph + 0x28..ph + 0x30].copy_from_slice(&memsz.to_le_bytes());
            data_off += bytes.len();
        }
        for (_, bytes, _) in segs {
            f.extend_from_slice(bytes);
        }
        f
    }

    fn sample_elf() -> Vec<u8> {
        let text = [0xB0u8, 0x01, 0xE6, 0x80, 0xF4]; // mov al,1; out 0x80,al; hlt
        let data = [7u8; 0x1234];
        make_elf(
            0x10_0000,
            &[
                (0x8000, &[0xFA, 0xF4], 2),
                (0x10_0000, &text, 5),
                (0x10_2000, &data, 0x3000), // data, then zero pages of .bss
            ],
        )
    }

    /// [`sample_elf`] plus a TDX reset page whose last 16 bytes hold a `jmp`.
    fn sample_elf_tdx() -> Vec<u8> {
        let text = [0xB0u8, 0x01, 0xE6, 0x80, 0xF4];
        let mut reset = vec![0xF4u8; 4096];
        reset[0xFF0] = 0xE9; // jmp rel32 to the page start
        reset[0xFF1..0xFF5].copy_from_slice(&(-0xFF5i32).to_le_bytes());
        make_elf(
            0x10_0000,
            &[
                (0x10_0000, &text, 5),
                (layout::TDX_RESET_PAGE, &reset, 4096),
            ],
        )
    }

    fn page_data(file: &IgvmFile) -> Vec<(u64, u32, Vec<u8>)> {
        file.directives()
            .iter()
            .filter_map(|d| match d {
                IgvmDirectiveHeader::PageData {
                    gpa,
                    compatibility_mask,
                    data,
                    ..
                } => Some((*gpa, *compatibility_mask, data.clone())),
                _ => None,
            })
            .collect()
    }

    /// Every view of the sample ELF (no TDX reset page).
    const SAMPLE_VIEWS: u32 = MASK_NATIVE | MASK_SNP | MASK_SEV | MASK_SEV_ES;

    #[test]
    fn packed_sample_parses_with_the_igvm_crate() {
        let bytes = pack(&sample_elf()).unwrap();
        let file = IgvmFile::new_from_binary(&bytes, None).expect("igvm crate rejects it");
        let platforms: Vec<_> = file
            .platforms()
            .iter()
            .map(|p| match p {
                IgvmPlatformHeader::SupportedPlatform(s) => {
                    (s.compatibility_mask, s.platform_type, s.shared_gpa_boundary)
                }
            })
            .collect();
        assert_eq!(
            platforms,
            vec![
                (MASK_NATIVE, IgvmPlatformType::NATIVE, 0),
                (MASK_SNP, IgvmPlatformType::SEV_SNP, 0),
                (MASK_SEV, IgvmPlatformType::SEV, 0),
                (MASK_SEV_ES, IgvmPlatformType::SEV_ES, 0),
            ]
        );
        let policies: Vec<_> = file
            .initializations()
            .iter()
            .map(|h| match h {
                IgvmInitializationHeader::GuestPolicy {
                    policy,
                    compatibility_mask,
                } => (*compatibility_mask, *policy),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        // SNP: SMT | MBO; SEV: NODBG; SEV-ES: NODBG | ES (spec notes §3.1, §4.1).
        assert_eq!(
            policies,
            vec![(MASK_SNP, 0x3_0000), (MASK_SEV, 0x1), (MASK_SEV_ES, 0x5)]
        );
        let pages = page_data(&file);
        let gpas: Vec<u64> = pages.iter().map(|p| p.0).collect();
        let mut want = vec![layout::GDT, layout::PML4, layout::PDPT];
        want.extend((0..4).map(|i| layout::PD + i * PAGE));
        want.push(layout::AP_TRAMPOLINE);
        want.push(layout::SEV_SECRET_GPA);
        want.extend((0..16).map(|i| layout::STACK_BOTTOM + i * PAGE));
        want.extend([0x10_0000, 0x10_2000, 0x10_3000, 0x10_4000]);
        assert_eq!(gpas, want);
        // Every page is in every view, except the secret page: SEV and SEV-ES only, zeros.
        for (gpa, mask, data) in &pages {
            if *gpa == layout::SEV_SECRET_GPA {
                assert_eq!(*mask, MASK_SEV | MASK_SEV_ES);
                assert!(data.is_empty());
            } else {
                assert_eq!(*mask, SAMPLE_VIEWS, "{gpa:#x}");
            }
        }
        // .text bytes, .data bytes, then .bss pages without data.
        let text = &pages.iter().find(|p| p.0 == 0x10_0000).unwrap().2;
        assert_eq!(&text[..5], &[0xB0, 0x01, 0xE6, 0x80, 0xF4]);
        let data2 = &pages.iter().find(|p| p.0 == 0x10_3000).unwrap().2;
        assert_eq!(data2[0x233], 7);
        assert_eq!(data2[0x234], 0);
        assert!(pages
            .iter()
            .find(|p| p.0 == 0x10_4000)
            .unwrap()
            .2
            .is_empty());
        assert!(pages
            .iter()
            .find(|p| p.0 == layout::STACK_BOTTOM)
            .unwrap()
            .2
            .is_empty());

        let mut native = Vec::new();
        let mut vmsas = Vec::new();
        let mut required = None;
        for d in file.directives() {
            match d {
                IgvmDirectiveHeader::X64NativeVpContext {
                    compatibility_mask,
                    vp_index,
                    context,
                } => native.push((*compatibility_mask, *vp_index, **context)),
                IgvmDirectiveHeader::SnpVpContext {
                    gpa,
                    compatibility_mask,
                    vp_index,
                    vmsa: v,
                } => vmsas.push((
                    *gpa,
                    *compatibility_mask,
                    *vp_index,
                    v.rip,
                    v.cr3,
                    v.sev_features.into_bits(),
                )),
                IgvmDirectiveHeader::RequiredMemory {
                    gpa,
                    compatibility_mask,
                    number_of_bytes,
                    ..
                } => required = Some((*gpa, *compatibility_mask, *number_of_bytes)),
                _ => {}
            }
        }
        let ctx = native_context(0x10_0000);
        assert_eq!(native, vec![(MASK_NATIVE, 0, ctx), (MASK_SEV, 0, ctx)]);
        // Both VMSAs at 0xFFFFFFFFF000; SEV_FEATURES: SNP active on SNP, none on SEV-ES.
        assert_eq!(
            vmsas,
            vec![
                (0xFFFF_FFFF_F000, MASK_SNP, 0, 0x10_0000, layout::PML4, 1),
                (0xFFFF_FFFF_F000, MASK_SEV_ES, 0, 0x10_0000, layout::PML4, 0),
            ]
        );
        assert_eq!(
            required,
            Some((layout::SCRATCH, SAMPLE_VIEWS, layout::SCRATCH_SIZE as u32))
        );
        // Each single view parses too (the crate's isolation filter) and has exactly its
        // own VP context.
        for (isolation, vmsa_features) in [
            (IsolationType::Snp, Some(1)),
            (IsolationType::SevEs, Some(0)),
            (IsolationType::Sev, None),
        ] {
            let name = format!("{isolation:?}");
            let one = IgvmFile::new_from_binary(&bytes, Some(isolation)).unwrap();
            let mut contexts = 0;
            for d in one.directives() {
                match d {
                    IgvmDirectiveHeader::SnpVpContext { vmsa, .. } => {
                        assert_eq!(Some(vmsa.sev_features.into_bits()), vmsa_features);
                        contexts += 1;
                    }
                    IgvmDirectiveHeader::X64NativeVpContext { context, .. } => {
                        assert_eq!(vmsa_features, None, "{name}");
                        assert_eq!(**context, ctx);
                        contexts += 1;
                    }
                    _ => {}
                }
            }
            assert_eq!(contexts, 1, "{name}");
        }
    }

    #[test]
    fn tdx_view_gets_the_reset_page_only_there() {
        let bytes = pack(&sample_elf_tdx()).unwrap();
        let file = IgvmFile::new_from_binary(&bytes, None).expect("igvm crate rejects it");
        let tdx: Vec<_> = file
            .platforms()
            .iter()
            .map(|p| match p {
                IgvmPlatformHeader::SupportedPlatform(s) => {
                    (s.compatibility_mask, s.platform_type, s.shared_gpa_boundary)
                }
            })
            .collect();
        assert_eq!(
            tdx[4],
            (MASK_TDX, IgvmPlatformType::TDX, TDX_SHARED_GPA_BOUNDARY)
        );
        let pages = page_data(&file);
        let all = SAMPLE_VIEWS | MASK_TDX;
        let (last, rest) = pages.split_last().unwrap();
        assert_eq!((last.0, last.1), (layout::TDX_RESET_PAGE, MASK_TDX));
        assert_eq!(last.2[0xFF0], 0xE9);
        assert!(rest
            .iter()
            .all(|p| p.1 == all || (p.0 == layout::SEV_SECRET_GPA && p.1 & MASK_TDX == 0)));
        // Without a reset page, no TDX view.
        let plain = IgvmFile::new_from_binary(&pack(&sample_elf()).unwrap(), None).unwrap();
        assert_eq!(plain.platforms().len(), 4);
        check_with_core(&bytes, 0x10_0000);
    }

    #[test]
    fn packing_is_deterministic() {
        assert_eq!(pack(&sample_elf()).unwrap(), pack(&sample_elf()).unwrap());
    }

    #[test]
    fn vmsa_matches_native_context() {
        let entry = 0x10_0123;
        let c = native_context(entry);
        let v = snp_vmsa(entry);
        let u16_at = |at: usize| u16::from_le_bytes(v[at..at + 2].try_into().unwrap());
        let u64_at = |at: usize| u64::from_le_bytes(v[at..at + 8].try_into().unwrap());
        // Descriptor-flags form → VMSA 12-bit form (spec notes §4.2).
        let packed = |a: u16| (a & 0xFF) | ((a >> 4) & 0xF00);
        assert_eq!(u16_at(0x10), c.code_selector);
        assert_eq!(u16_at(0x12), packed(c.code_attributes));
        for seg in [0x00, 0x20, 0x30, 0x40, 0x50] {
            assert_eq!(u16_at(seg), c.data_selector);
            assert_eq!(u16_at(seg + 2), packed(c.data_attributes));
        }
        assert_eq!(u64_at(0x68), c.gdtr_base);
        assert_eq!(u64_at(0x178), c.rip);
        assert_eq!(u64_at(0x1D8), c.rsp);
        assert_eq!(u64_at(0x150), c.cr3);
        assert_eq!(u64_at(0x158), c.cr0);
        assert_eq!(u64_at(0x148), c.cr4);
        assert_eq!(u64_at(0xD0), c.efer | EFER_SVME);
        assert_eq!(u64_at(0x3B0), 1);
        // The SEV-ES VMSA: the same page but SEV_FEATURES 0 (not SNP).
        let es = sev_es_vmsa(entry);
        for (at, (a, b)) in v.iter().zip(&es).enumerate() {
            if !(0x3B0..0x3B8).contains(&at) {
                assert_eq!(a, b, "byte {at:#x}");
            }
        }
        assert_eq!(&es[0x3B0..0x3B8], &[0; 8]);
        // The 64-bit code descriptor in the GDT agrees with the context's attributes.
        let gdt = gdt_page();
        let code = u64::from_le_bytes(gdt[8..16].try_into().unwrap());
        assert_eq!(((code >> 40) & 0xF0FF) as u16, c.code_attributes);
        let data = u64::from_le_bytes(gdt[16..24].try_into().unwrap());
        assert_eq!(((data >> 40) & 0xF0FF) as u16, c.data_attributes);
    }

    /// Walks the packer's page tables like the MMU (4-level, 2 MiB leaves).
    fn translate(va: u64) -> Option<u64> {
        let tables: BTreeMap<u64, Vec<u8>> = page_tables().into_iter().collect();
        let entry = |table: u64, index: u64| {
            let t = &tables[&table];
            let at = (index * 8) as usize;
            u64::from_le_bytes(t[at..at + 8].try_into().unwrap())
        };
        let e4 = entry(layout::PML4, (va >> 39) & 511);
        if e4 & 1 == 0 {
            return None;
        }
        let e3 = entry(e4 & 0x000F_FFFF_FFFF_F000, (va >> 30) & 511);
        if e3 & 1 == 0 {
            return None;
        }
        let e2 = entry(e3 & 0x000F_FFFF_FFFF_F000, (va >> 21) & 511);
        assert_eq!(e2 & 0x83, 0x83, "present, writable 2 MiB page");
        Some((e2 & 0x000F_FFFF_FFE0_0000) | (va & 0x1F_FFFF))
    }

    #[test]
    fn page_tables_identity_map_the_first_4_gib() {
        for va in [
            0,
            0x8000,
            0x10_0123,
            0x20_0000,
            0x4000_0000,
            0xFEE0_0300,
            0xFFFF_FFFF,
        ] {
            assert_eq!(translate(va), Some(va), "{va:#x}");
        }
        assert_eq!(translate(0x1_0000_0000), None);
    }

    #[test]
    fn rejects_bad_elves() {
        let good = sample_elf();
        assert_eq!(parse_elf(&good[..3]), Err(PackError::NotElf { at: 0 }));
        assert_eq!(parse_elf(&good[..10]), Err(PackError::NotElf { at: 0x10 }));
        let mut e = good.clone();
        e[4] = 1;
        assert_eq!(parse_elf(&e), Err(PackError::NotElf { at: 4 }));
        let mut e = good.clone();
        e[0x12] = 0x28;
        assert_eq!(parse_elf(&e), Err(PackError::NotElf { at: 0x12 }));
        // Segment data past the end of the file.
        let e = &good[..good.len() - 1];
        assert_eq!(parse_elf(e), Err(PackError::BadSegment { index: 2 }));
        // Program headers past the end of the file.
        let mut e = good.clone();
        e[0x38] = 200;
        assert!(matches!(parse_elf(&e), Err(PackError::BadSegment { index }) if index > 3));
        // Offsets that overflow.
        let mut e = good.clone();
        e[0x20..0x28].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(parse_elf(&e).is_err());
        let mut e = good.clone();
        e[64 + 8..64 + 16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(parse_elf(&e), Err(PackError::BadSegment { index: 0 }));
        // memsz < filesz.
        let mut e = good.clone();
        e[64 + 0x28..64 + 0x30].copy_from_slice(&1u64.to_le_bytes());
        assert_eq!(parse_elf(&e), Err(PackError::BadSegment { index: 0 }));

        let outside = make_elf(0x10_0000, &[(0x1000, &[1], 1)]);
        assert_eq!(
            pack(&outside),
            Err(PackError::SegmentOutsideLayout {
                index: 0,
                gpa: 0x1000
            })
        );
        let too_big = make_elf(0x10_0000, &[(0x1F_F000, &[1], 0x2000)]);
        assert_eq!(
            pack(&too_big),
            Err(PackError::SegmentOutsideLayout {
                index: 0,
                gpa: 0x1F_F000
            })
        );
        let wrap = make_elf(0x10_0000, &[(u64::MAX - 1, &[1], 4)]);
        assert!(matches!(
            pack(&wrap),
            Err(PackError::SegmentOutsideLayout { .. })
        ));
        let entry = make_elf(0x5000, &[(0x10_0000, &[1], 1)]);
        assert_eq!(
            pack(&entry),
            Err(PackError::EntryOutsideImage { entry: 0x5000 })
        );
        assert!(!PackError::NotElf { at: 0 }.to_string().is_empty());
    }

    fn config(platform: relaunch_core::plan::Platform) -> relaunch_core::plan::LaunchConfig {
        relaunch_core::plan::LaunchConfig {
            platform,
            vcpus: 1,
            mem_bytes: 64 << 20,
            vcpu_sig: 0x80_0F12,
            guest_features: SEV_FEATURES,
            policy: None,
            host_data: [0; 32],
            kernel_hashes: None,
        }
    }

    /// The core's own parser and planner accept every view, and the registers the planner
    /// derives from each VP context are the ones the packer meant: the same 64-bit start
    /// state in NATIVE, SNP, SEV and SEV-ES.
    fn check_with_core(bytes: &[u8], entry: u64) {
        use relaunch_core::plan::{LaunchOp, Platform};
        let file = relaunch_core::igvm::IgvmFile::parse(bytes).expect("core parser");
        assert_eq!(file.mask_for(IgvmPlatformType::NATIVE), Some(MASK_NATIVE));
        assert_eq!(file.mask_for(IgvmPlatformType::SEV_SNP), Some(MASK_SNP));
        assert_eq!(file.mask_for(IgvmPlatformType::SEV), Some(MASK_SEV));
        assert_eq!(file.mask_for(IgvmPlatformType::SEV_ES), Some(MASK_SEV_ES));
        let tdx = file.mask_for(IgvmPlatformType::TDX);
        assert!(tdx.is_none() || tdx == Some(MASK_TDX));
        let mut platforms = vec![
            Platform::Native,
            Platform::Snp,
            Platform::Sev,
            Platform::SevEs,
        ];
        if tdx.is_some() {
            platforms.push(Platform::Tdx);
        }
        let mut start_regs = Vec::new();
        for platform in platforms {
            let plan = relaunch_core::plan::plan(bytes, &config(platform))
                .unwrap_or_else(|e| panic!("{platform}: {e}"));
            let mut ctx = None;
            let mut imports = 0;
            let mut reset_page = false;
            let mut secret_page = false;
            for op in plan.ops() {
                match *op {
                    LaunchOp::SetVpContext { vp: 0, ctx: c, .. } => ctx = Some(c),
                    LaunchOp::ImportPage { gpa, .. } => {
                        imports += 1;
                        reset_page |= gpa == layout::TDX_RESET_PAGE;
                        secret_page |= gpa == layout::SEV_SECRET_GPA;
                    }
                    LaunchOp::CreateVm {
                        policy,
                        vmsa_features,
                        ..
                    } => {
                        let want = match platform {
                            Platform::Snp => SNP_POLICY,
                            Platform::Sev => SEV_POLICY,
                            Platform::SevEs => SEV_ES_POLICY,
                            _ => policy,
                        };
                        assert_eq!(policy, want, "{platform}");
                        // KVM's INIT2 vmsa_features: VP 0's SEV_FEATURES without SNP_ACTIVE.
                        assert_eq!(vmsa_features, 0, "{platform}");
                    }
                    _ => {}
                }
            }
            assert!(imports > 7 + 16, "{platform}: {imports} pages");
            assert_eq!(reset_page, platform == Platform::Tdx, "{platform}");
            assert_eq!(
                secret_page,
                matches!(platform, Platform::Sev | Platform::SevEs),
                "{platform}"
            );
            let regs = plan.vp_contexts()[ctx.expect("VP 0 context") as usize];
            if platform == Platform::Tdx {
                // The TDX module's initial state: the reset page takes it from there.
                assert_eq!(regs.rip, 0xFFFF_FFF0);
                assert!(matches!(
                    relaunch_core::measure::expected(plan.stream()),
                    Ok(relaunch_core::measure::Measurement::Tdx(_))
                ));
                continue;
            }
            assert_eq!(regs.rip, entry, "{platform}");
            assert_eq!(regs.gprs.rsp, layout::STACK_TOP, "{platform}");
            assert_eq!(regs.cs.selector, layout::SEL_CODE64, "{platform}");
            assert_eq!(regs.cs.attrib, 0xA9B, "{platform}");
            assert_eq!(regs.ss.attrib, 0xC93, "{platform}");
            assert_eq!(regs.gdtr.base, layout::GDT, "{platform}");
            assert_eq!(regs.cr3, layout::PML4, "{platform}");
            assert_eq!(regs.cr0, CR0, "{platform}");
            assert_eq!(regs.efer & EFER, EFER, "{platform}");
            // Apart from EFER.SVME (which KVM forces on a VMSA), one start state for all.
            let mut same = regs;
            same.efer &= !EFER_SVME;
            start_regs.push(same);
            let m = relaunch_core::measure::expected(plan.stream()).expect("measure");
            use relaunch_core::measure::Measurement as M;
            match platform {
                Platform::Snp => assert!(matches!(m, M::Snp(_))),
                Platform::Sev => assert!(matches!(m, M::Sev(_))),
                Platform::SevEs => assert!(matches!(m, M::SevEs(_))),
                _ => assert_eq!(m, M::None),
            }
        }
        assert_eq!(start_regs.len(), 4);
        assert!(start_regs.iter().all(|r| *r == start_regs[0]));
    }

    #[test]
    fn packed_sample_parses_and_plans_with_the_core() {
        check_with_core(&pack(&sample_elf()).unwrap(), 0x10_0000);
    }

    /// The guests' SHA-256 against the FIPS 180-2 examples (Appendix B.1, B.2, B.3) and
    /// the sha2 crate at every length around the padding boundaries.
    #[test]
    fn guest_sha256_matches_fips_vectors() {
        let hex = |d: [u8; 32]| d.iter().map(|b| format!("{b:02x}")).collect::<String>();
        assert_eq!(
            hex(guest_sha256::digest(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            hex(guest_sha256::digest(
                b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"
            )),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
        );
        assert_eq!(
            hex(guest_sha256::digest(&vec![b'a'; 1_000_000])),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"
        );
        assert_eq!(
            hex(guest_sha256::digest(b"")),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        use sha2::Digest;
        let data: Vec<u8> = (0..4200u32).map(|i| (i * 7 + 3) as u8).collect();
        for len in (0..=200).chain([4091, 4092, 4096, 4200]) {
            let want: [u8; 32] = sha2::Sha256::digest(&data[..len]).into();
            assert_eq!(guest_sha256::digest(&data[..len]), want, "length {len}");
        }
    }

    /// The SEV secret page and sevinfo's scratch pages fit the layout: RAM below
    /// RAM_NEEDED, clear of every page the packer imports and of the fw_cfg DMA area.
    #[test]
    fn secret_page_and_sevinfo_scratch_fit_the_layout() {
        let secret = layout::SEV_SECRET_GPA;
        assert_eq!(secret % PAGE, 0);
        assert_eq!(u64::from(layout::SEV_SECRET_MAX), PAGE - 4);
        let imported = pack(&sample_elf_tdx()).unwrap();
        let file = IgvmFile::new_from_binary(&imported, None).unwrap();
        let others: Vec<u64> = page_data(&file)
            .into_iter()
            .filter(|p| p.1 & (MASK_NATIVE | MASK_SNP | MASK_TDX) != 0)
            .map(|p| p.0)
            .collect();
        assert!(!others.contains(&secret));
        assert!(secret + PAGE <= layout::RAM_NEEDED);
        assert!(
            !in_layout(secret, PAGE),
            "an ELF segment could claim the secret page"
        );
        assert!(secret + PAGE <= layout::STACK_BOTTOM);
        let scratch = layout::SCRATCH..layout::SCRATCH + layout::SCRATCH_SIZE;
        let pages = [
            layout::SEVINFO_IDT,
            layout::SEVINFO_PML4,
            layout::SEVINFO_PDPT,
            layout::SEVINFO_PD,
        ];
        for (i, &p) in pages.iter().enumerate() {
            assert_eq!(p % PAGE, 0);
            assert!(scratch.contains(&p) && scratch.contains(&(p + PAGE - 1)));
            // fw_cfg's DMA descriptor (0x200000) and buffer page (0x201000).
            assert!(p >= layout::SCRATCH + 2 * PAGE);
            assert!(pages[i + 1..].iter().all(|&q| q != p));
        }
        // sevinfo's C-bit map covers 0 .. 1 GiB: everything it touches.
        const { assert!(layout::RAM_NEEDED <= 1 << 30) };
    }

    /// The views that existed before SEV and SEV-ES were added measure as they did (the
    /// digests `relaunch measure boot-images/prebuilt/hello.igvm --vcpu-sig 0x800f12` gave
    /// for the previous prebuilt image), and the new views' digests are the ones
    /// `boot-images/tools/sev_measure.py` computes independently (sev-snp-measure's SEV-ES
    /// rules over our own IGVM reader).
    #[test]
    fn prebuilt_hello_measurements() {
        use relaunch_core::plan::Platform;
        let measure = |platform, vcpus| {
            let mut cfg = config(platform);
            cfg.vcpus = vcpus;
            cfg.vcpu_sig = 0x80_0F12;
            cfg.guest_features = 0;
            let plan = relaunch_core::plan::plan(PREBUILT_IGVM, &cfg).unwrap();
            relaunch_core::measure::expected(plan.stream())
                .unwrap()
                .to_string()
        };
        for (platform, vcpus, want) in [
            (
                Platform::Snp,
                1,
                "d08b79ffae5644f252c9304d485de78e395bc90cbf2e5adb6ed53b8562281b49\
                 91640c806ba00bd59edfe268acd1d333",
            ),
            (
                Platform::Snp,
                4,
                "b2902d601cddf91c2dbc4f65e814efed54f107da7b2bca8ef1b8775a02801793\
                 fd3897b495e304b8e212c3e8508c2978",
            ),
            (
                Platform::Tdx,
                1,
                "49ba07cd6ae25f7c91ab5db949a18c404c5625f6a7cfea80e3f47867dc018e10\
                 cb65b8e58ab3a93fc92ba564d4bbc116",
            ),
            (
                Platform::Sev,
                1,
                "5a64380bf85675b271158ad30db65114816b7b30026e990c8dc49199e164fb87",
            ),
            (
                Platform::SevEs,
                1,
                "d9fd7f10e10589b5c4876f4ee72491e0d121ad1d2e82de81504f0c76252ecff0",
            ),
            (
                Platform::SevEs,
                4,
                "2fb09a8d33a14834fc6c87a9994a4b51b98673f15e45c0d059bc49c10cf4b794",
            ),
        ] {
            assert_eq!(measure(platform, vcpus), want, "{platform} {vcpus}");
        }
    }

    const PREBUILT_IGVM: &[u8] = include_bytes!("../prebuilt/hello.igvm");
    const PREBUILT_ELF: &[u8] = include_bytes!("../prebuilt/hello.elf");

    /// The committed hello.igvm is exactly what this packer makes of the committed ELF
    /// (`cargo xtask build-images --update-prebuilt` refreshes both).
    #[test]
    fn prebuilt_hello_is_the_packed_elf() {
        assert_eq!(pack(PREBUILT_ELF).unwrap(), PREBUILT_IGVM);
        let elf = parse_elf(PREBUILT_ELF).unwrap();
        assert_eq!(elf.entry, layout::IMAGE_BASE);
        IgvmFile::new_from_binary(PREBUILT_IGVM, None).expect("igvm crate rejects it");
        check_with_core(PREBUILT_IGVM, layout::IMAGE_BASE);
    }
}
