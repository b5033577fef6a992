//! `relaunch pack --kernel`: a Linux bzImage, an optional initrd and a command line packed
//! for direct boot with the x86 64-bit boot protocol (Linux `Documentation/arch/x86/
//! boot.rst`, "64-bit Boot Protocol"; the zero page is `struct boot_params`,
//! `arch/x86/include/uapi/asm/bootparam.h`, described in `Documentation/arch/x86/
//! zero-page.rst`).
//!
//! The bundle's NATIVE view holds, all as measured PAGE_DATA:
//!
//! - a GDT at [`GDT`] with `__BOOT_CS` (0x10, 64-bit code) and `__BOOT_DS` (0x18, flat data):
//!   boot.rst requires those two selectors, 4 GiB flat;
//! - page tables at [`PML4`] identity-mapping 0..4 GiB with 2 MiB pages (boot.rst: the
//!   kernel's `init_size` range from its load address, the zero page and the command line
//!   must be identity mapped; everything the bundle places is below 4 GiB);
//! - the zero page at [`ZERO_PAGE`]: zeros, the bzImage's setup header copied at 0x1f1 (its
//!   end is 0x202 + the byte at 0x201), `type_of_loader` = 0xff (an undefined loader),
//!   `cmd_line_ptr`, `ramdisk_image`/`ramdisk_size`, and the E820 table: the launch's RAM
//!   (`relaunch_core::launch::ram_ranges` of `--mem`, the same ranges the planner writes
//!   into an IGVM MEMORY_MAP) as E820_TYPE_RAM entries, the ISA hole reserved ([`e820_for`]);
//! - the command line at [`CMDLINE`], NUL-terminated, at most the header's `cmdline_size`;
//! - the ACPI tables ([`super::acpi`]: RSDP, XSDT, FADT, FACS, DSDT, MADT for `vcpus`) in
//!   one page at [`super::acpi::BASE`] inside the reserved ISA hole, `acpi_rsdp_addr`
//!   pointing at the RSDP;
//! - the protected-mode kernel (the file after its `(setup_sects + 1) * 512` bytes of real-
//!   mode setup) at its `pref_address`;
//! - the initrd, page aligned, right above the kernel's `init_size` window (the decompressor
//!   and KASLR stay out of it: the initrd is in `mem_avoid`), below `initrd_addr_max`;
//! - REQUIRED_MEMORY for the RAM the E820 table declares, so a launch with less `--mem`
//!   still backs every byte the kernel was told about;
//! - the BSP's native VP context: 64-bit mode, CS = 0x10, DS/ES/SS = 0x18, interrupts off,
//!   RIP = load address + 0x200 (`startup_64`), RSI = the zero page, RSP in a zeroed stack.
//!
//! Everything the loader writes is below 1 MiB, which Linux never hands to its allocator
//! (since 5.13 `x86/setup: always reserve the first 1M of RAM`); the kernel copies the zero
//! page and the command line early (`copy_bootdata`).
//!
//! ## The SEV-SNP view
//!
//! Direct boot without firmware: the BSP starts in `startup_64` of the compressed kernel,
//! which loads its stage-1 IDT (so the #VC handler exists before the first CPUID) and calls
//! `sev_enable` (Linux `arch/x86/boot/compressed/head_64.S`, `sev.c`). `sev_enable` zeroes
//! `boot_params.cc_blob_address` and `snp_init` looks for the confidential-computing blob in
//! the EFI configuration table, then in the `setup_data` list (`find_cc_blob`,
//! `find_cc_blob_setup_data`); it needs magic "AMDE", a CPUID page of at least 4 KiB
//! (`setup_cpuid_table`) and, for the secrets page, `secrets_len` = 4096. The view holds, in
//! ascending GPA, each page once:
//!
//! - the NATIVE view's GDT, zero page, command line, kernel and initrd, unchanged, except
//!   that the zero page's `hdr.setup_data` points to a `SETUP_CC_BLOB` entry and
//!   `cc_blob_address` names the blob (the kernel proper reads it when it is booted without
//!   the decompressor);
//! - the same page tables with the C-bit ([`LinuxOptions::c_bit`], default
//!   [`DEFAULT_C_BIT`]) in every present entry ([`cbit_page_tables`]);
//! - [`CC_BLOB`]: `struct cc_blob_sev_info` and the `setup_data` entry ([`cc_blob_page`]);
//! - [`SNP_SECRETS`] (PAGE_DATA type SECRETS) and [`SNP_CPUID`] (CPUID_DATA), no file data;
//! - every other page of E820 RAM as a measured NORMAL page without file data (zeros): a
//!   kernel booted without EFI has no unaccepted-memory table and takes all E820 RAM as
//!   validated, and nothing else would validate it (`SnpPage::Zero`);
//! - guest policy 0x30000 (the boot images' [`relaunch_boot_images::SNP_POLICY`]) and the
//!   BSP's VMSA at 0xFFFFFFFFF000 ([`snp_vmsa`]).

use std::fmt;

use igvm_defs::{IgvmNativeVpContextX64, IgvmPageDataFlags, IgvmPageDataType, IgvmPlatformType};
use relaunch_core::plan::Platform;
use relaunch_core::writer::{IgvmBuilder, WriteError};

const PAGE: u64 = 4096;

/// The GDT page.
pub const GDT: u64 = 0x1000;
/// `__BOOT_CS` (boot.rst, 64-bit boot protocol): 64-bit code.
pub const BOOT_CS: u16 = 0x10;
/// `__BOOT_DS`: flat read/write data.
pub const BOOT_DS: u16 = 0x18;
/// The PML4; the PDPT follows at +0x1000 and four PDs at +0x2000.
pub const PML4: u64 = relaunch_boot_images::layout::PML4;
/// Bottom of the boot stack (zero pages up to [`STACK_TOP`]).
pub const STACK_BOTTOM: u64 = 0x8000;
/// Initial RSP.
pub const STACK_TOP: u64 = 0x10000;
/// The zero page (`struct boot_params`).
pub const ZERO_PAGE: u64 = 0x10000;
/// The command line.
pub const CMDLINE: u64 = 0x20000;
/// Largest command line (with its NUL) the layout has room for: up to [`MAX_LOW`].
pub const CMDLINE_ROOM: u64 = MAX_LOW - CMDLINE;
/// Everything but the kernel and initrd lies below this (the legacy VGA window; Linux
/// reserves the first 1 MiB).
pub const MAX_LOW: u64 = 0xA0000;
/// Where the protected-mode kernel goes when the header does not say (`pref_address` 0):
/// boot.rst's traditional 0x100000.
pub const DEFAULT_LOAD: u64 = 0x10_0000;
/// Offset of `startup_64` from the load address (boot.rst, 64-bit boot protocol).
pub const STARTUP_64: u64 = 0x200;

/// Initial CR0: PG | NE | ET | PE.
const CR0: u64 = 0x8000_0031;
/// Initial CR4: PAE.
const CR4: u64 = 0x20;
/// Initial EFER: LMA | LME.
const EFER: u64 = 0x500;

/// Setup-header offsets in the bzImage and the zero page (boot.rst, "The Real-Mode Kernel
/// Header"; `struct setup_header` in bootparam.h).
pub mod hdr {
    /// Start of the setup header.
    pub const START: usize = 0x1F1;
    /// `setup_sects` (u8): real-mode setup size in 512-byte sectors (0 means 4).
    pub const SETUP_SECTS: usize = 0x1F1;
    /// `boot_flag` (u16): 0xAA55.
    pub const BOOT_FLAG: usize = 0x1FE;
    /// The byte whose value + 0x202 is the end of the header.
    pub const JUMP_LEN: usize = 0x201;
    /// `header` (u32): "HdrS".
    pub const MAGIC: usize = 0x202;
    /// `version` (u16).
    pub const VERSION: usize = 0x206;
    /// `type_of_loader` (u8).
    pub const TYPE_OF_LOADER: usize = 0x210;
    /// `loadflags` (u8).
    pub const LOADFLAGS: usize = 0x211;
    /// `code32_start` (u32).
    pub const CODE32_START: usize = 0x214;
    /// `ramdisk_image` (u32).
    pub const RAMDISK_IMAGE: usize = 0x218;
    /// `ramdisk_size` (u32).
    pub const RAMDISK_SIZE: usize = 0x21C;
    /// `heap_end_ptr` (u16).
    pub const HEAP_END_PTR: usize = 0x224;
    /// `cmd_line_ptr` (u32).
    pub const CMD_LINE_PTR: usize = 0x228;
    /// `initrd_addr_max` (u32).
    pub const INITRD_ADDR_MAX: usize = 0x22C;
    /// `kernel_alignment` (u32).
    pub const KERNEL_ALIGNMENT: usize = 0x230;
    /// `relocatable_kernel` (u8).
    pub const RELOCATABLE: usize = 0x234;
    /// `xloadflags` (u16).
    pub const XLOADFLAGS: usize = 0x236;
    /// `cmdline_size` (u32).
    pub const CMDLINE_SIZE: usize = 0x238;
    /// `setup_data` (u64): the first `struct setup_data` of the loader's list (protocol
    /// 2.09+).
    pub const SETUP_DATA: usize = 0x250;
    /// `pref_address` (u64).
    pub const PREF_ADDRESS: usize = 0x258;
    /// `init_size` (u32).
    pub const INIT_SIZE: usize = 0x260;
}

/// Zero-page offsets outside the setup header (zero-page.rst).
pub mod zp {
    /// `acpi_rsdp_addr` (u64, boot protocol 2.14): the RSDP's address.
    pub const ACPI_RSDP_ADDR: usize = 0x070;
    /// `ext_ramdisk_image` (u32): bits 63:32 of the initrd address.
    pub const EXT_RAMDISK_IMAGE: usize = 0x0C0;
    /// `ext_ramdisk_size` (u32).
    pub const EXT_RAMDISK_SIZE: usize = 0x0C4;
    /// `ext_cmd_line_ptr` (u32).
    pub const EXT_CMD_LINE_PTR: usize = 0x0C8;
    /// `cc_blob_address` (u32): the SNP confidential-computing blob.
    pub const CC_BLOB_ADDRESS: usize = 0x13C;
    /// `e820_entries` (u8).
    pub const E820_ENTRIES: usize = 0x1E8;
    /// `e820_table`: up to 128 entries of {addr u64, size u64, type u32}.
    pub const E820_TABLE: usize = 0x2D0;
    /// Size of one E820 entry.
    pub const E820_ENTRY: usize = 20;
    /// Entries `e820_table` holds (`E820_MAX_ENTRIES_ZEROPAGE`).
    pub const E820_MAX: usize = 128;
}

/// `E820_TYPE_RAM`.
pub const E820_RAM: u32 = 1;
/// `E820_TYPE_RESERVED`.
pub const E820_RESERVED: u32 = 2;
/// `xloadflags` bit 0, `XLF_KERNEL_64`: the kernel has the 64-bit entry at +0x200.
pub const XLF_KERNEL_64: u16 = 1;
/// The first boot protocol with `xloadflags` (2.12).
pub const MIN_VERSION: u16 = 0x020C;
/// `type_of_loader` 0xff: "undefined" (boot.rst: a loader without an assigned ID).
pub const LOADER_UNDEFINED: u8 = 0xFF;

/// Why a kernel could not be packed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LinuxError {
    /// Not a bzImage with a boot-protocol header (what is wrong).
    NotBzImage(&'static str),
    /// The boot protocol is older than 2.12 or the kernel has no 64-bit entry.
    No64BitEntry {
        /// The header's protocol version.
        version: u16,
        /// Its `xloadflags`.
        xloadflags: u16,
    },
    /// The command line (with its NUL) is longer than the kernel or the layout allows.
    CmdlineTooLong {
        /// Its length with the NUL.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// The command line contains a NUL byte.
    CmdlineNul,
    /// The kernel or initrd do not fit the memory (`what` names the range).
    DoesNotFit {
        /// What did not fit.
        what: &'static str,
        /// Its first byte.
        start: u64,
        /// Its end.
        end: u64,
        /// The limit it must stay below.
        limit: u64,
    },
    /// A view `--kernel` does not pack.
    UnsupportedView(Platform),
    /// A view asked for twice.
    DuplicateView(Platform),
    /// The C-bit position does not fit the SNP view's memory.
    BadCBit {
        /// The position asked for.
        c_bit: u8,
        /// The end of the highest RAM range (the C-bit must lie above it).
        ram_end: u64,
    },
    /// The SNP view would pre-validate more pages than a plan may import.
    SnpTooMuchMemory {
        /// Pages the view imports.
        pages: u64,
        /// The planner's limit (`relaunch_core::plan::igvm::MAX_PAGES`).
        max: u64,
    },
    /// The BSP's registers do not convert to a VMSA (a packer bug).
    Vmsa(relaunch_core::arch::vmsa::VmsaError),
    /// The IGVM writer refused.
    Write(WriteError),
    /// The ACPI tables cannot be made ([`super::acpi`]).
    Acpi(super::acpi::AcpiError),
}

impl fmt::Display for LinuxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinuxError::NotBzImage(why) => write!(f, "not a Linux bzImage: {why}"),
            LinuxError::No64BitEntry {
                version,
                xloadflags,
            } => write!(
                f,
                "the kernel has no 64-bit entry (boot protocol {}.{:02}, xloadflags {xloadflags:#x}; \
                 need 2.12+ with XLF_KERNEL_64)",
                version >> 8,
                version & 0xFF
            ),
            LinuxError::CmdlineTooLong { len, max } => write!(
                f,
                "the command line is {len} bytes with its NUL; the kernel takes at most {max}"
            ),
            LinuxError::CmdlineNul => f.write_str("the command line contains a NUL byte"),
            LinuxError::DoesNotFit {
                what,
                start,
                end,
                limit,
            } => write!(
                f,
                "{what} at {start:#x}..{end:#x} does not fit below {limit:#x} (more --mem?)"
            ),
            LinuxError::UnsupportedView(p) => write!(
                f,
                "--kernel packs native and snp views; {p} is not one (docs/linux-guests.md)"
            ),
            LinuxError::DuplicateView(p) => write!(f, "the {p} view is asked for twice"),
            LinuxError::BadCBit { c_bit, ram_end } => write!(
                f,
                "C-bit {c_bit} does not fit: it must be at most 51 and above every address the \
                 page tables map (4 GiB) and every RAM address (RAM ends at {ram_end:#x})"
            ),
            LinuxError::SnpTooMuchMemory { pages, max } => write!(
                f,
                "the snp view pre-validates every RAM page: {pages} pages, more than the {max} \
                 a launch imports (less --mem, or --platform native)"
            ),
            LinuxError::Vmsa(e) => write!(f, "internal error, please report: the SNP VMSA: {e}"),
            LinuxError::Write(e) => write!(f, "IGVM writer: {e}"),
            LinuxError::Acpi(e) => write!(f, "ACPI tables: {e}"),
        }
    }
}

impl std::error::Error for LinuxError {}

impl From<WriteError> for LinuxError {
    fn from(e: WriteError) -> Self {
        LinuxError::Write(e)
    }
}

fn rd<const N: usize>(b: &[u8], at: usize) -> Option<[u8; N]> {
    b.get(at..at.checked_add(N)?)?.try_into().ok()
}
fn rd_u8(b: &[u8], at: usize) -> u8 {
    rd::<1>(b, at).map_or(0, |v| v[0])
}
fn rd_u16(b: &[u8], at: usize) -> u16 {
    rd(b, at).map_or(0, u16::from_le_bytes)
}
fn rd_u32(b: &[u8], at: usize) -> u32 {
    rd(b, at).map_or(0, u32::from_le_bytes)
}
fn rd_u64(b: &[u8], at: usize) -> u64 {
    rd(b, at).map_or(0, u64::from_le_bytes)
}
fn wr(b: &mut [u8], at: usize, v: &[u8]) {
    b[at..at + v.len()].copy_from_slice(v);
}

/// What the packer reads from a bzImage's setup header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BzImage<'a> {
    /// The setup header bytes, from 0x1f1 to its end.
    pub header: &'a [u8],
    /// Boot protocol version.
    pub version: u16,
    /// `xloadflags`.
    pub xloadflags: u16,
    /// `initrd_addr_max`: highest address the initrd's last byte may have.
    pub initrd_addr_max: u32,
    /// `kernel_alignment`.
    pub kernel_alignment: u32,
    /// `relocatable_kernel`.
    pub relocatable: bool,
    /// `cmdline_size`: longest command line without its NUL.
    pub cmdline_size: u32,
    /// `pref_address`.
    pub pref_address: u64,
    /// `init_size`: bytes the kernel needs from its load address.
    pub init_size: u32,
    /// The protected-mode kernel (the file after the real-mode setup).
    pub payload: &'a [u8],
}

/// Parses and checks a bzImage's setup header (boot.rst, "The Real-Mode Kernel Header").
///
/// # Errors
/// [`LinuxError::NotBzImage`], [`LinuxError::No64BitEntry`].
pub fn parse_bzimage(b: &[u8]) -> Result<BzImage<'_>, LinuxError> {
    if rd_u16(b, hdr::BOOT_FLAG) != 0xAA55 {
        return Err(LinuxError::NotBzImage("no 0xAA55 boot flag at 0x1fe"));
    }
    if rd::<4>(b, hdr::MAGIC) != Some(*b"HdrS") {
        return Err(LinuxError::NotBzImage("no \"HdrS\" header magic at 0x202"));
    }
    let end = 0x202 + usize::from(rd_u8(b, hdr::JUMP_LEN));
    let header = b.get(hdr::START..end).ok_or(LinuxError::NotBzImage(
        "the setup header runs past the file",
    ))?;
    let version = rd_u16(b, hdr::VERSION);
    let xloadflags = rd_u16(b, hdr::XLOADFLAGS);
    if version < MIN_VERSION || xloadflags & XLF_KERNEL_64 == 0 || end < hdr::INIT_SIZE + 4 {
        return Err(LinuxError::No64BitEntry {
            version,
            xloadflags,
        });
    }
    let sects = match rd_u8(b, hdr::SETUP_SECTS) {
        0 => 4,
        n => usize::from(n),
    };
    let payload =
        b.get((sects + 1) * 512..)
            .filter(|p| !p.is_empty())
            .ok_or(LinuxError::NotBzImage(
                "no protected-mode kernel after the setup sectors",
            ))?;
    Ok(BzImage {
        header,
        version,
        xloadflags,
        initrd_addr_max: rd_u32(b, hdr::INITRD_ADDR_MAX),
        kernel_alignment: rd_u32(b, hdr::KERNEL_ALIGNMENT),
        relocatable: rd_u8(b, hdr::RELOCATABLE) != 0,
        cmdline_size: rd_u32(b, hdr::CMDLINE_SIZE),
        pref_address: rd_u64(b, hdr::PREF_ADDRESS),
        init_size: rd_u32(b, hdr::INIT_SIZE),
        payload,
    })
}

/// What to pack.
#[derive(Debug, Clone, Copy)]
pub struct LinuxInputs<'a> {
    /// The bzImage.
    pub kernel: &'a [u8],
    /// The initrd, if any.
    pub initrd: Option<&'a [u8]>,
    /// The command line (without NUL).
    pub cmdline: &'a str,
    /// Guest RAM the E820 table describes (`--mem`).
    pub mem: u64,
    /// vCPUs the ACPI MADT describes (`--vcpus`; [`super::acpi`]).
    pub vcpus: u32,
}

/// Where the packer put things.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinuxLayout {
    /// The protected-mode kernel's load address.
    pub load: u64,
    /// `startup_64`: load + 0x200.
    pub entry: u64,
    /// The initrd `(gpa, size)`, if any.
    pub initrd: Option<(u64, u64)>,
    /// The zero page's bytes.
    pub zero_page: Vec<u8>,
    /// The E820 table `(addr, size, type)`.
    pub e820: Vec<(u64, u64, u32)>,
    /// The ACPI tables' page, at [`super::acpi::BASE`] (in the reserved ISA hole).
    pub acpi: Vec<u8>,
}

/// A packed Linux bundle.
#[derive(Debug, Clone)]
pub struct LinuxBundle {
    /// The IGVM file.
    pub bytes: Vec<u8>,
    /// Where everything went.
    pub layout: LinuxLayout,
    /// The SNP view's BSP VMSA, when the file has that view.
    pub snp_vmsa: Option<Box<[u8; 4096]>>,
}

/// Start of the ISA hole (the legacy VGA window and BIOS area, 640 KiB .. 1 MiB).
pub const ISA_HOLE: u64 = 0xA_0000;
/// End of the ISA hole.
pub const ISA_HOLE_END: u64 = 0x10_0000;

/// The E820 table for `mem` bytes of RAM: the launch's memory map
/// (`relaunch_core::launch::ram_ranges`) as RAM, with the PC's ISA hole (640 KiB .. 1 MiB)
/// marked reserved. That hole is RAM under relaunch, but Linux takes it out of use
/// anyway, and a table of a single entry is ignored: Linux's `__append_e820_table` drops
/// tables of fewer than two entries ("the BIOS probably screwed up") and falls back to
/// 640 KiB + `alt_mem_k`, which a 64-bit loader does not fill.
pub fn e820_for(mem: u64) -> Vec<(u64, u64, u32)> {
    let mut out = Vec::new();
    for (gpa, size) in relaunch_core::launch::ram_ranges(mem).into_iter().flatten() {
        let end = gpa.saturating_add(size);
        if size == 0 {
            continue;
        }
        if gpa < ISA_HOLE && end > ISA_HOLE_END {
            out.push((gpa, ISA_HOLE - gpa, E820_RAM));
            out.push((ISA_HOLE, ISA_HOLE_END - ISA_HOLE, E820_RESERVED));
            out.push((ISA_HOLE_END, end - ISA_HOLE_END, E820_RAM));
        } else {
            out.push((gpa, size, E820_RAM));
        }
    }
    out
}

fn align_up(v: u64, a: u64) -> Option<u64> {
    Some(v.checked_add(a - 1)? & !(a - 1))
}

/// The load address: `pref_address` (boot.rst: where a relocatable kernel prefers to run,
/// and where a non-relocatable one must), else 1 MiB.
fn load_address(k: &BzImage<'_>) -> u64 {
    match k.pref_address {
        0 => DEFAULT_LOAD,
        a => a,
    }
}

/// The zero page for `k`: the setup header copied, then the loader's fields.
pub fn zero_page(
    k: &BzImage<'_>,
    cmdline_gpa: u64,
    initrd: Option<(u64, u64)>,
    e820: &[(u64, u64, u32)],
) -> Vec<u8> {
    let mut p = vec![0u8; PAGE as usize];
    wr(&mut p, hdr::START, k.header);
    p[hdr::TYPE_OF_LOADER] = LOADER_UNDEFINED;
    wr(
        &mut p,
        hdr::CMD_LINE_PTR,
        &(cmdline_gpa as u32).to_le_bytes(),
    );
    wr(
        &mut p,
        zp::EXT_CMD_LINE_PTR,
        &((cmdline_gpa >> 32) as u32).to_le_bytes(),
    );
    if let Some((gpa, size)) = initrd {
        wr(&mut p, hdr::RAMDISK_IMAGE, &(gpa as u32).to_le_bytes());
        wr(&mut p, hdr::RAMDISK_SIZE, &(size as u32).to_le_bytes());
        wr(
            &mut p,
            zp::EXT_RAMDISK_IMAGE,
            &((gpa >> 32) as u32).to_le_bytes(),
        );
        wr(
            &mut p,
            zp::EXT_RAMDISK_SIZE,
            &((size >> 32) as u32).to_le_bytes(),
        );
    }
    let n = e820.len().min(zp::E820_MAX);
    p[zp::E820_ENTRIES] = n as u8;
    for (i, &(addr, size, typ)) in e820.iter().take(n).enumerate() {
        let at = zp::E820_TABLE + i * zp::E820_ENTRY;
        wr(&mut p, at, &addr.to_le_bytes());
        wr(&mut p, at + 8, &size.to_le_bytes());
        wr(&mut p, at + 16, &typ.to_le_bytes());
    }
    p
}

/// The GDT page: null, null, `__BOOT_CS` (64-bit code), `__BOOT_DS` (flat data).
fn gdt_page() -> Vec<u8> {
    let mut page = vec![0u8; PAGE as usize];
    // G, L, P, DPL0, code exec/read, accessed; G, D/B, P, DPL0, data read/write, accessed.
    wr(&mut page, 0x10, &0x00AF_9B00_0000_FFFFu64.to_le_bytes());
    wr(&mut page, 0x18, &0x00CF_9300_0000_FFFFu64.to_le_bytes());
    page
}

/// The BSP's start state (boot.rst, 64-bit boot protocol): long mode, `__BOOT_CS`,
/// `__BOOT_DS`, interrupts off (RFLAGS = 2), RSI = the zero page.
pub fn native_context(entry: u64) -> IgvmNativeVpContextX64 {
    IgvmNativeVpContextX64 {
        rsp: STACK_TOP,
        rsi: ZERO_PAGE,
        rip: entry,
        rflags: 2,
        gdtr_limit: 0x1F,
        gdtr_base: GDT,
        code_selector: BOOT_CS,
        code_attributes: 0xA09B,
        code_limit: 0xFFFF_FFFF,
        data_selector: BOOT_DS,
        data_attributes: 0xC093,
        data_limit: 0xFFFF_FFFF,
        cr0: CR0,
        cr3: PML4,
        cr4: CR4,
        efer: EFER,
        ..zerocopy::FromZeros::new_zeroed()
    }
}

/// Adds `data` at `gpa` page by page (all-zero pages without file data).
fn add_bytes(b: &mut IgvmBuilder, gpa: u64, mask: u32, data: &[u8]) -> Result<(), WriteError> {
    for (i, chunk) in data.chunks(PAGE as usize).enumerate() {
        let body: &[u8] = if chunk.iter().all(|&x| x == 0) {
            &[]
        } else {
            chunk
        };
        b.page_data(
            gpa + i as u64 * PAGE,
            mask,
            IgvmPageDataFlags::new(),
            IgvmPageDataType::NORMAL,
            body,
        )?;
    }
    Ok(())
}

/// Lays the kernel, initrd and command line out and builds the zero page.
///
/// # Errors
/// [`LinuxError`] for a bad kernel, command line, or what does not fit `mem`.
pub fn layout<'a>(inputs: &LinuxInputs<'a>) -> Result<(BzImage<'a>, LinuxLayout), LinuxError> {
    let k = parse_bzimage(inputs.kernel)?;
    if inputs.cmdline.contains('\0') {
        return Err(LinuxError::CmdlineNul);
    }
    let len = inputs.cmdline.len() as u64 + 1;
    let max = (u64::from(k.cmdline_size) + 1).min(CMDLINE_ROOM);
    if len > max {
        return Err(LinuxError::CmdlineTooLong { len, max });
    }
    let e820 = e820_for(inputs.mem);
    // The end of the RAM below 4 GiB (the kernel and initrd go there).
    let low_end = e820
        .iter()
        .filter(|e| e.2 == E820_RAM && e.0 < 1 << 32)
        .map(|&(gpa, size, _)| gpa.saturating_add(size))
        .max()
        .unwrap_or(0);
    let load = load_address(&k);
    let window = u64::from(k.init_size).max(k.payload.len() as u64);
    let kernel_end = load.saturating_add(window);
    if load < DEFAULT_LOAD || kernel_end > low_end {
        return Err(LinuxError::DoesNotFit {
            what: "the kernel's init_size window",
            start: load,
            end: kernel_end,
            limit: low_end,
        });
    }
    let initrd = match inputs.initrd {
        None => None,
        Some(data) => {
            let start = align_up(kernel_end, PAGE).unwrap_or(u64::MAX);
            let end = start.saturating_add(data.len() as u64);
            let limit = low_end.min(u64::from(k.initrd_addr_max).saturating_add(1));
            if end > limit {
                return Err(LinuxError::DoesNotFit {
                    what: "the initrd",
                    start,
                    end,
                    limit,
                });
            }
            Some((start, data.len() as u64))
        }
    };
    let mut zero_page = zero_page(&k, CMDLINE, initrd, &e820);
    let acpi = super::acpi::tables(inputs.vcpus).map_err(LinuxError::Acpi)?;
    wr(
        &mut zero_page,
        zp::ACPI_RSDP_ADDR,
        &super::acpi::RSDP.to_le_bytes(),
    );
    Ok((
        k,
        LinuxLayout {
            load,
            entry: load + STARTUP_64,
            initrd,
            zero_page,
            e820,
            acpi: acpi.page(),
        },
    ))
}

/// What `pack` writes besides the kernel itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinuxOptions {
    /// The views, each at most once: [`Platform::Native`], [`Platform::Snp`]. Empty = both
    /// ([`SUPPORTED_VIEWS`]). The file declares them in that order whatever the order here.
    pub views: Vec<Platform>,
    /// The SNP view's C-bit position (CPUID Fn8000_001F EBX\[5:0\] of the host that will
    /// run it): [`DEFAULT_C_BIT`] unless given.
    pub c_bit: u8,
}

impl Default for LinuxOptions {
    fn default() -> Self {
        LinuxOptions {
            views: Vec::new(),
            c_bit: DEFAULT_C_BIT,
        }
    }
}

/// The views `--kernel` packs, in file order.
pub const SUPPORTED_VIEWS: [Platform; 2] = [Platform::Native, Platform::Snp];

/// Packs a kernel for direct boot with the default options: NATIVE and SNP views (see the
/// module documentation).
///
/// # Errors
/// [`LinuxError`].
pub fn pack(inputs: &LinuxInputs<'_>) -> Result<LinuxBundle, LinuxError> {
    pack_with(inputs, &LinuxOptions::default())
}

/// Packs a kernel for direct boot with the views `opts` asks for.
///
/// # Errors
/// [`LinuxError`]: a bad kernel or command line, what does not fit `mem`, an unsupported or
/// repeated view, a C-bit that does not fit.
pub fn pack_with(inputs: &LinuxInputs<'_>, opts: &LinuxOptions) -> Result<LinuxBundle, LinuxError> {
    let mut want = Vec::new();
    for &p in &opts.views {
        if !SUPPORTED_VIEWS.contains(&p) {
            return Err(LinuxError::UnsupportedView(p));
        }
        if want.contains(&p) {
            return Err(LinuxError::DuplicateView(p));
        }
        want.push(p);
    }
    let (native, snp) = if want.is_empty() {
        (true, true)
    } else {
        (
            want.contains(&Platform::Native),
            want.contains(&Platform::Snp),
        )
    };
    let (k, layout) = layout(inputs)?;
    let snp_pages = if snp {
        Some(snp_pages(inputs, &k, &layout, opts.c_bit)?)
    } else {
        None
    };
    let mut b = IgvmBuilder::new();
    let native_mask = if native {
        Some(b.platform(IgvmPlatformType::NATIVE, 0)?)
    } else {
        None
    };
    let snp_mask = if snp {
        Some(b.platform(IgvmPlatformType::SEV_SNP, 0)?)
    } else {
        None
    };
    if let Some(mask) = snp_mask {
        b.guest_policy(relaunch_boot_images::SNP_POLICY, mask);
    }
    if let Some(mask) = native_mask {
        native_view(&mut b, mask, inputs, &k, &layout)?;
    }
    let mut vmsa = None;
    if let (Some(mask), Some(pages)) = (snp_mask, &snp_pages) {
        for (&gpa, page) in pages {
            let (data_type, data): (IgvmPageDataType, &[u8]) = match page {
                SnpPage::Data(d) => (IgvmPageDataType::NORMAL, d),
                SnpPage::Zero => (IgvmPageDataType::NORMAL, &[]),
                SnpPage::Secrets => (IgvmPageDataType::SECRETS, &[]),
                SnpPage::Cpuid => (IgvmPageDataType::CPUID_DATA, &[]),
            };
            b.page_data(gpa, mask, IgvmPageDataFlags::new(), data_type, data)?;
        }
        let page = snp_vmsa(layout.entry, opts.c_bit)?;
        b.vp_context(relaunch_boot_images::SNP_VMSA_GPA, mask, 0, &page)?;
        vmsa = Some(Box::new(page));
    }
    if let Some(mask) = native_mask {
        b.native_vp_context(mask, 0, &native_context(layout.entry))?;
    }
    Ok(LinuxBundle {
        bytes: b.finish()?,
        layout,
        snp_vmsa: vmsa,
    })
}

/// The NATIVE view's pages and REQUIRED_MEMORY, in ascending GPA (its VP context is
/// written after every view's pages).
fn native_view(
    b: &mut IgvmBuilder,
    native: u32,
    inputs: &LinuxInputs<'_>,
    k: &BzImage<'_>,
    layout: &LinuxLayout,
) -> Result<(), LinuxError> {
    // Ascending GPA: GDT, page tables, stack, zero page, command line, ACPI, kernel, initrd.
    b.page_data(
        GDT,
        native,
        IgvmPageDataFlags::new(),
        IgvmPageDataType::NORMAL,
        &gdt_page(),
    )?;
    // PML4, PDPT and four PDs identity-mapping 0..4 GiB with 2 MiB pages: the boot images'.
    for (gpa, t) in relaunch_boot_images::page_tables() {
        b.page_data(
            gpa,
            native,
            IgvmPageDataFlags::new(),
            IgvmPageDataType::NORMAL,
            &t,
        )?;
    }
    let mut gpa = STACK_BOTTOM;
    while gpa < STACK_TOP {
        b.page_data(
            gpa,
            native,
            IgvmPageDataFlags::new(),
            IgvmPageDataType::NORMAL,
            &[],
        )?;
        gpa += PAGE;
    }
    add_bytes(b, ZERO_PAGE, native, &layout.zero_page)?;
    add_bytes(b, CMDLINE, native, &cmdline_bytes(inputs.cmdline))?;
    add_bytes(b, super::acpi::BASE, native, &layout.acpi)?;
    add_bytes(b, layout.load, native, k.payload)?;
    if let (Some(data), Some((gpa, _))) = (inputs.initrd, layout.initrd) {
        add_bytes(b, gpa, native, data)?;
    }
    // REQUIRED_MEMORY for the RAM the E820 table declares, in chunks a u32 can count.
    for &(gpa, size, _) in layout.e820.iter().filter(|e| e.2 == E820_RAM) {
        let mut at = gpa;
        while at < gpa + size {
            let n = (gpa + size - at).min(1 << 31);
            b.required_memory(at, native, n as u32, 0);
            at += n;
        }
    }
    Ok(())
}

fn cmdline_bytes(cmdline: &str) -> Vec<u8> {
    let mut v = cmdline.as_bytes().to_vec();
    v.push(0);
    v
}

/// One 4 KiB page of the SNP view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnpPage {
    /// A measured NORMAL page with these contents (at most 4 KiB, zero-padded).
    Data(Vec<u8>),
    /// A measured NORMAL page of zeros (PAGE_DATA without file data): pre-validated RAM.
    Zero,
    /// The SNP secrets page (PAGE_DATA type SECRETS, no data: the Secure Processor fills it).
    Secrets,
    /// The SNP CPUID page (PAGE_DATA type CPUID_DATA, no data: the VMM fills it from the
    /// vCPU model and the Secure Processor checks it).
    Cpuid,
}

/// The C-bit position the SNP view's page tables and CR3 use unless `--c-bit` says
/// otherwise: 51, what CPUID Fn8000_001F EBX\[5:0\] reports on AMD EPYC 7003 (Milan) and
/// 9004 (Genoa), the first SNP parts, and the value QEMU's SEV-SNP example uses
/// (`docs/system/i386/amd-memory-encryption.rst`: `sev-snp-guest,cbitpos=51`). Naples and
/// Rome (47) have no SNP.
pub const DEFAULT_C_BIT: u8 = 51;

/// The SNP view's `struct cc_blob_sev_info` and its `setup_data` entry.
pub const CC_BLOB: u64 = 0x11000;
/// Offset of the `SETUP_CC_BLOB` `setup_data` entry in the [`CC_BLOB`] page.
pub const CC_SETUP_DATA_OFFSET: u64 = 0x100;
/// The SNP secrets page.
pub const SNP_SECRETS: u64 = 0x12000;
/// The SNP CPUID page.
pub const SNP_CPUID: u64 = 0x13000;
/// `CC_BLOB_SEV_HDR_MAGIC` ("AMDE", Linux `arch/x86/include/asm/sev.h`).
pub const CC_BLOB_SEV_HDR_MAGIC: u32 = 0x4544_4D41;
/// The blob's version: 1, as OVMF writes it (edk2 `OvmfPkg/AmdSevDxe/AmdSevDxe.c`; Linux
/// does not check it).
pub const CC_BLOB_VERSION: u16 = 1;
/// `SETUP_CC_BLOB` (Linux `arch/x86/include/uapi/asm/bootparam.h`).
pub const SETUP_CC_BLOB: u32 = 7;

/// `struct cc_blob_sev_info` (Linux `arch/x86/include/asm/sev.h`, packed): magic u32,
/// version u16, reserved u16, secrets_phys u64, secrets_len u32, rsvd1 u32, cpuid_phys u64,
/// cpuid_len u32, rsvd2 u32 (40 bytes); then, at [`CC_SETUP_DATA_OFFSET`], the
/// `struct cc_setup_data` the decompressor finds through `hdr.setup_data`
/// (`find_cc_blob_setup_data`): `struct setup_data` {next u64 = 0, type u32 =
/// `SETUP_CC_BLOB`, len u32 = 4} followed by cc_blob_address u32.
pub fn cc_blob_page() -> Vec<u8> {
    let mut p = vec![0u8; PAGE as usize];
    wr(&mut p, 0, &CC_BLOB_SEV_HDR_MAGIC.to_le_bytes());
    wr(&mut p, 4, &CC_BLOB_VERSION.to_le_bytes());
    wr(&mut p, 8, &SNP_SECRETS.to_le_bytes());
    wr(&mut p, 16, &(PAGE as u32).to_le_bytes());
    wr(&mut p, 24, &SNP_CPUID.to_le_bytes());
    wr(&mut p, 32, &(PAGE as u32).to_le_bytes());
    let sd = CC_SETUP_DATA_OFFSET as usize;
    wr(&mut p, sd + 8, &SETUP_CC_BLOB.to_le_bytes());
    wr(&mut p, sd + 12, &4u32.to_le_bytes());
    wr(&mut p, sd + 16, &(CC_BLOB as u32).to_le_bytes());
    p
}

/// The boot images' identity map of 0..4 GiB ([`relaunch_boot_images::page_tables`]) with
/// the C-bit set in every present entry: the tables themselves and every page they map are
/// private (encrypted) memory. CR3 carries the C-bit too ([`snp_vmsa`]).
pub fn cbit_page_tables(c_bit: u8) -> Vec<(u64, Vec<u8>)> {
    // A position past bit 63 sets nothing ([`snp_pages`] refuses anything above 51).
    let c = 1u64.checked_shl(u32::from(c_bit)).unwrap_or(0);
    relaunch_boot_images::page_tables()
        .into_iter()
        .map(|(gpa, mut t)| {
            for e in t.chunks_exact_mut(8) {
                let v = u64::from_le_bytes(e.try_into().unwrap_or([0; 8]));
                if v & 1 != 0 {
                    e.copy_from_slice(&(v | c).to_le_bytes());
                }
            }
            (gpa, t)
        })
        .collect()
}

/// The SNP view's BSP VMSA: the registers of [`native_context`] with CR3 = the PML4 | the
/// C-bit, in the form KVM builds and measures them (`kvm_measured_vmsa`: EFER.SVME and
/// CR4.MCE added, the INIT2 FPU state, SEV_FEATURES = SNP_ACTIVE only, as the boot images'
/// SNP VMSA).
///
/// # Errors
/// [`LinuxError::Vmsa`] if the native context does not convert (a packer bug).
pub fn snp_vmsa(entry: u64, c_bit: u8) -> Result<[u8; 4096], LinuxError> {
    use relaunch_core::arch::vmsa::{kvm_measured_vmsa, regs_from_native_context};
    use zerocopy::IntoBytes;
    let ctx = native_context(entry);
    let mut regs = regs_from_native_context(ctx.as_bytes()).map_err(LinuxError::Vmsa)?;
    regs.cr3 = PML4 | 1u64.checked_shl(u32::from(c_bit)).unwrap_or(0);
    Ok(kvm_measured_vmsa(&regs, 0, Platform::Snp, true))
}

/// The SNP view's pages by GPA (see the module documentation): the native view's pages
/// (its page tables with the C-bit, its zero page with the CC blob), the CC blob, secrets
/// and CPUID pages, and every other page of E820 RAM as a measured zero page.
///
/// # Errors
/// [`LinuxError::BadCBit`], [`LinuxError::SnpTooMuchMemory`].
pub fn snp_pages(
    inputs: &LinuxInputs<'_>,
    k: &BzImage<'_>,
    layout: &LinuxLayout,
    c_bit: u8,
) -> Result<std::collections::BTreeMap<u64, SnpPage>, LinuxError> {
    let ram_end = layout
        .e820
        .iter()
        .filter(|e| e.2 == E820_RAM)
        .map(|e| e.0.saturating_add(e.1))
        .max()
        .unwrap_or(0);
    if c_bit > 51 || (1u64 << c_bit) < ram_end.max(1 << 32) {
        return Err(LinuxError::BadCBit { c_bit, ram_end });
    }
    let pages: u64 = layout
        .e820
        .iter()
        .filter(|e| e.2 == E820_RAM)
        .map(|e| e.1.div_ceil(PAGE))
        .sum();
    let max = relaunch_core::plan::igvm::MAX_PAGES;
    // RAM, the ACPI page(s) in the ISA hole, the VMSA.
    let total = pages + (layout.acpi.len() as u64).div_ceil(PAGE) + 1;
    if total > max {
        return Err(LinuxError::SnpTooMuchMemory { pages: total, max });
    }
    let mut m = std::collections::BTreeMap::new();
    let put_bytes = |m: &mut std::collections::BTreeMap<u64, SnpPage>, gpa: u64, d: &[u8]| {
        for (i, chunk) in d.chunks(PAGE as usize).enumerate() {
            let page = if chunk.iter().all(|&x| x == 0) {
                SnpPage::Zero
            } else {
                SnpPage::Data(chunk.to_vec())
            };
            m.insert(gpa + i as u64 * PAGE, page);
        }
    };
    put_bytes(&mut m, GDT, &gdt_page());
    for (gpa, t) in cbit_page_tables(c_bit) {
        put_bytes(&mut m, gpa, &t);
    }
    let mut zp = layout.zero_page.clone();
    wr(
        &mut zp,
        zp::CC_BLOB_ADDRESS,
        &(CC_BLOB as u32).to_le_bytes(),
    );
    wr(
        &mut zp,
        hdr::SETUP_DATA,
        &(CC_BLOB + CC_SETUP_DATA_OFFSET).to_le_bytes(),
    );
    put_bytes(&mut m, ZERO_PAGE, &zp);
    put_bytes(&mut m, CC_BLOB, &cc_blob_page());
    m.insert(SNP_SECRETS, SnpPage::Secrets);
    m.insert(SNP_CPUID, SnpPage::Cpuid);
    put_bytes(&mut m, CMDLINE, &cmdline_bytes(inputs.cmdline));
    // The ACPI tables: in the ISA hole (E820 reserved), measured like every loaded page.
    put_bytes(&mut m, super::acpi::BASE, &layout.acpi);
    put_bytes(&mut m, layout.load, k.payload);
    if let (Some(data), Some((gpa, _))) = (inputs.initrd, layout.initrd) {
        put_bytes(&mut m, gpa, data);
    }
    // Every other page of E820 RAM: pre-validated zeros (the stack among them).
    for &(gpa, size, _) in layout.e820.iter().filter(|e| e.2 == E820_RAM) {
        let mut at = gpa;
        while at < gpa + size {
            m.entry(at).or_insert(SnpPage::Zero);
            at += PAGE;
        }
    }
    Ok(m)
}

/// The zero-page fields a loader sets or reads, parsed back (for tests and comparisons).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootParams {
    /// `hdr.version`.
    pub version: u16,
    /// `hdr.type_of_loader`.
    pub type_of_loader: u8,
    /// `hdr.loadflags`.
    pub loadflags: u8,
    /// `hdr.code32_start`.
    pub code32_start: u32,
    /// `hdr.heap_end_ptr`.
    pub heap_end_ptr: u16,
    /// The command line's address (`ext_cmd_line_ptr` << 32 | `cmd_line_ptr`).
    pub cmd_line_ptr: u64,
    /// The initrd's address (`ext_ramdisk_image` << 32 | `ramdisk_image`).
    pub ramdisk_image: u64,
    /// The initrd's size.
    pub ramdisk_size: u64,
    /// `hdr.initrd_addr_max`.
    pub initrd_addr_max: u32,
    /// `hdr.cmdline_size`.
    pub cmdline_size: u32,
    /// `hdr.init_size`.
    pub init_size: u32,
    /// `cc_blob_address`.
    pub cc_blob_address: u32,
    /// `acpi_rsdp_addr`.
    pub acpi_rsdp_addr: u64,
    /// The E820 table.
    pub e820: Vec<(u64, u64, u32)>,
}

/// Parses the fields of [`BootParams`] out of a zero page (at least 4 KiB, else the
/// missing bytes read as zero).
pub fn read_boot_params(p: &[u8]) -> BootParams {
    let n = usize::from(rd_u8(p, zp::E820_ENTRIES)).min(zp::E820_MAX);
    let e820 = (0..n)
        .map(|i| {
            let at = zp::E820_TABLE + i * zp::E820_ENTRY;
            (rd_u64(p, at), rd_u64(p, at + 8), rd_u32(p, at + 16))
        })
        .collect();
    let hi = |at| u64::from(rd_u32(p, at)) << 32;
    BootParams {
        version: rd_u16(p, hdr::VERSION),
        type_of_loader: rd_u8(p, hdr::TYPE_OF_LOADER),
        loadflags: rd_u8(p, hdr::LOADFLAGS),
        code32_start: rd_u32(p, hdr::CODE32_START),
        heap_end_ptr: rd_u16(p, hdr::HEAP_END_PTR),
        cmd_line_ptr: hi(zp::EXT_CMD_LINE_PTR) | u64::from(rd_u32(p, hdr::CMD_LINE_PTR)),
        ramdisk_image: hi(zp::EXT_RAMDISK_IMAGE) | u64::from(rd_u32(p, hdr::RAMDISK_IMAGE)),
        ramdisk_size: hi(zp::EXT_RAMDISK_SIZE) | u64::from(rd_u32(p, hdr::RAMDISK_SIZE)),
        initrd_addr_max: rd_u32(p, hdr::INITRD_ADDR_MAX),
        cmdline_size: rd_u32(p, hdr::CMDLINE_SIZE),
        init_size: rd_u32(p, hdr::INIT_SIZE),
        cc_blob_address: rd_u32(p, zp::CC_BLOB_ADDRESS),
        acpi_rsdp_addr: rd_u64(p, zp::ACPI_RSDP_ADDR),
        e820,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A synthetic bzImage: 4 setup sectors (+ the boot sector), a 2.15 header with
    /// XLF_KERNEL_64, and `payload` as the protected-mode kernel.
    pub(crate) fn fake_bzimage(payload: &[u8], init_size: u32, pref: u64) -> Vec<u8> {
        let mut b = vec![0u8; 5 * 512];
        b[hdr::SETUP_SECTS] = 4;
        wr(&mut b, hdr::BOOT_FLAG, &0xAA55u16.to_le_bytes());
        b[hdr::JUMP_LEN] = 0x6A; // header ends at 0x26c (kernel_info_offset)
        wr(&mut b, hdr::MAGIC, b"HdrS");
        wr(&mut b, hdr::VERSION, &0x020Fu16.to_le_bytes());
        b[hdr::LOADFLAGS] = 1; // LOADED_HIGH
        wr(&mut b, hdr::CODE32_START, &0x10_0000u32.to_le_bytes());
        wr(&mut b, hdr::INITRD_ADDR_MAX, &0x7FFF_FFFFu32.to_le_bytes());
        wr(&mut b, hdr::KERNEL_ALIGNMENT, &0x20_0000u32.to_le_bytes());
        b[hdr::RELOCATABLE] = 1;
        wr(&mut b, hdr::XLOADFLAGS, &0x7Fu16.to_le_bytes());
        wr(&mut b, hdr::CMDLINE_SIZE, &2047u32.to_le_bytes());
        wr(&mut b, hdr::PREF_ADDRESS, &pref.to_le_bytes());
        wr(&mut b, hdr::INIT_SIZE, &init_size.to_le_bytes());
        b.extend_from_slice(payload);
        b
    }

    fn inputs<'a>(kernel: &'a [u8], initrd: Option<&'a [u8]>, cmdline: &'a str) -> LinuxInputs<'a> {
        LinuxInputs {
            kernel,
            initrd,
            cmdline,
            mem: 256 << 20,
            vcpus: 1,
        }
    }

    #[test]
    fn zero_page_parses_back() {
        let payload: Vec<u8> = (0..9000u32).map(|i| (i % 251) as u8 + 1).collect();
        let k = fake_bzimage(&payload, 0x80_0000, 0x100_0000);
        let initrd = vec![0x5Au8; 5000];
        let (img, l) = layout(&inputs(&k, Some(&initrd), "console=ttyS0 quiet")).unwrap();
        assert_eq!(img.payload, &payload[..]);
        assert_eq!(l.load, 0x100_0000);
        assert_eq!(l.entry, 0x100_0200);
        // Right above the init_size window, page aligned.
        assert_eq!(l.initrd, Some((0x180_0000, 5000)));
        let bp = read_boot_params(&l.zero_page);
        assert_eq!(
            bp,
            BootParams {
                version: 0x020F,
                type_of_loader: 0xFF,
                loadflags: 1,
                code32_start: 0x10_0000,
                heap_end_ptr: 0,
                cmd_line_ptr: CMDLINE,
                ramdisk_image: 0x180_0000,
                ramdisk_size: 5000,
                initrd_addr_max: 0x7FFF_FFFF,
                cmdline_size: 2047,
                init_size: 0x80_0000,
                cc_blob_address: 0,
                acpi_rsdp_addr: super::super::acpi::RSDP,
                e820: vec![
                    (0, 0xA_0000, E820_RAM),
                    (0xA_0000, 0x6_0000, E820_RESERVED),
                    (0x10_0000, (256 << 20) - 0x10_0000, E820_RAM)
                ],
            }
        );
        // The whole header is the image's, apart from what the loader writes.
        let mut want = k[hdr::START..0x26C].to_vec();
        want[hdr::TYPE_OF_LOADER - hdr::START] = 0xFF;
        wr(
            &mut want,
            hdr::RAMDISK_IMAGE - hdr::START,
            &0x180_0000u32.to_le_bytes(),
        );
        wr(
            &mut want,
            hdr::RAMDISK_SIZE - hdr::START,
            &5000u32.to_le_bytes(),
        );
        wr(
            &mut want,
            hdr::CMD_LINE_PTR - hdr::START,
            &(CMDLINE as u32).to_le_bytes(),
        );
        assert_eq!(&l.zero_page[hdr::START..0x26C], &want[..]);
        assert!(l.zero_page[0x26C..].iter().enumerate().all(|(i, &b)| {
            let at = 0x26C + i;
            b == 0 || (zp::E820_TABLE..zp::E820_TABLE + 3 * zp::E820_ENTRY).contains(&at)
        }));
    }

    #[test]
    fn e820_is_the_launch_memory_map() {
        let hole = [(0, 0xA_0000, 1), (0xA_0000, 0x6_0000, 2)];
        assert_eq!(
            e820_for(64 << 20),
            [&hole[..], &[(0x10_0000, (64 << 20) - 0x10_0000, 1)]].concat()
        );
        assert_eq!(
            e820_for(4 << 30),
            [
                &hole[..],
                &[(0x10_0000, (3 << 30) - 0x10_0000, 1), (4 << 30, 1 << 30, 1)]
            ]
            .concat()
        );
        // Linux ignores a table of one entry: there are always at least two.
        assert!(e820_for(4 << 20).len() >= 2);
        let k = fake_bzimage(&[1; 100], 0x10_0000, 0);
        let mut i = inputs(&k, None, "");
        i.mem = 5 << 30;
        let (_, l) = layout(&i).unwrap();
        // pref_address 0: the traditional 1 MiB.
        assert_eq!(l.load, 0x10_0000);
        let bp = read_boot_params(&l.zero_page);
        assert_eq!(bp.e820[3..], [(4 << 30, 2 << 30, 1)]);
        assert_eq!(bp.e820[2], (0x10_0000, (3 << 30) - 0x10_0000, 1));
        assert_eq!((bp.ramdisk_image, bp.ramdisk_size), (0, 0));
    }

    #[test]
    fn bad_kernels_and_limits_are_errors() {
        let k = fake_bzimage(&[1; 100], 0x10_0000, 0x100_0000);
        let mut bad = k.clone();
        bad[hdr::BOOT_FLAG] = 0;
        assert!(matches!(
            parse_bzimage(&bad),
            Err(LinuxError::NotBzImage(_))
        ));
        let mut bad = k.clone();
        bad[hdr::MAGIC] = b'X';
        assert!(matches!(
            parse_bzimage(&bad),
            Err(LinuxError::NotBzImage(_))
        ));
        let mut bad = k.clone();
        wr(&mut bad, hdr::VERSION, &0x020Au16.to_le_bytes());
        assert!(matches!(
            parse_bzimage(&bad),
            Err(LinuxError::No64BitEntry {
                version: 0x020A,
                ..
            })
        ));
        let mut bad = k.clone();
        wr(&mut bad, hdr::XLOADFLAGS, &0u16.to_le_bytes());
        assert!(matches!(
            parse_bzimage(&bad),
            Err(LinuxError::No64BitEntry { .. })
        ));
        assert!(parse_bzimage(&k[..5 * 512]).is_err());
        assert!(parse_bzimage(&k[..0x100]).is_err());
        assert!(parse_bzimage(&[]).is_err());
        let long = "x".repeat(2048);
        assert_eq!(
            layout(&inputs(&k, None, &long)).unwrap_err(),
            LinuxError::CmdlineTooLong {
                len: 2049,
                max: 2048
            }
        );
        assert_eq!(
            layout(&inputs(&k, None, "a\0b")).unwrap_err(),
            LinuxError::CmdlineNul
        );
        let mut small = inputs(&k, None, "");
        small.mem = 16 << 20;
        assert!(matches!(
            layout(&small).unwrap_err(),
            LinuxError::DoesNotFit {
                what: "the kernel's init_size window",
                ..
            }
        ));
        let big = vec![1u8; 300 << 20];
        let e = layout(&inputs(&k, Some(&big), "")).unwrap_err();
        assert!(matches!(
            e,
            LinuxError::DoesNotFit {
                what: "the initrd",
                ..
            }
        ));
        assert!(e.to_string().contains("--mem"));
        // initrd_addr_max bounds the initrd too.
        let mut low = k.clone();
        wr(&mut low, hdr::INITRD_ADDR_MAX, &0x110_0FFFu32.to_le_bytes());
        assert!(layout(&inputs(&low, Some(&[1; 4096]), "")).is_ok());
        assert!(layout(&inputs(&low, Some(&[1; 4097]), "")).is_err());
    }

    #[test]
    fn bundle_plans_with_the_core_and_starts_at_startup_64() {
        use relaunch_core::plan::{plan, LaunchConfig, LaunchOp, Platform};
        let payload: Vec<u8> = (0..20_000u32).map(|i| (i % 7) as u8).collect();
        let k = fake_bzimage(&payload, 0x40_0000, 0x100_0000);
        let initrd = [9u8; 10];
        let out = pack(&inputs(&k, Some(&initrd), "console=ttyS0")).unwrap();
        let cfg = LaunchConfig {
            platform: Platform::Native,
            vcpus: 1,
            mem_bytes: 256 << 20,
            vcpu_sig: 0,
            guest_features: 0,
            policy: None,
            host_data: [0; 32],
            kernel_hashes: None,
        };
        let p = plan(&out.bytes, &cfg).unwrap();
        let mut pages = std::collections::BTreeMap::new();
        let mut ctx = None;
        for op in p.ops() {
            match *op {
                LaunchOp::ImportPage { gpa, .. } => {
                    pages.insert(gpa, ());
                }
                LaunchOp::SetVpContext { vp: 0, ctx: c, .. } => ctx = Some(c),
                _ => {}
            }
        }
        for gpa in [
            GDT, PML4, ZERO_PAGE, CMDLINE, 0x100_0000, 0x100_4000, 0x140_0000,
        ] {
            assert!(pages.contains_key(&gpa), "{gpa:#x} not imported");
        }
        // The ACPI page is imported, and `run` reads the MADT's vCPU count back from it.
        assert_eq!(super::super::acpi::planned_vcpus(&p), Some(1));
        let mut three = inputs(&k, None, "");
        three.vcpus = 3;
        let bytes3 = pack(&three).unwrap().bytes;
        let p3 = plan(&bytes3, &cfg).unwrap();
        assert_eq!(super::super::acpi::planned_vcpus(&p3), Some(3));
        let regs = p.vp_contexts()[ctx.unwrap() as usize];
        assert_eq!(regs.rip, 0x100_0200);
        assert_eq!(regs.gprs.rsi, ZERO_PAGE);
        assert_eq!(regs.cs.selector, BOOT_CS);
        assert_eq!(regs.ss.selector, BOOT_DS);
        assert_eq!(regs.ds.selector, BOOT_DS);
        assert_eq!(regs.cr3, PML4);
        assert_eq!(regs.rflags & 0x200, 0, "interrupts off");
        // The GDT's descriptors are what the selectors say.
        let gdt = gdt_page();
        let cs = u64::from_le_bytes(gdt[0x10..0x18].try_into().unwrap());
        assert_eq!((cs >> 53) & 1, 1, "L bit");
        assert!(out.layout.zero_page.len() == 4096);
    }

    fn snp_cfg(mem: u64) -> relaunch_core::plan::LaunchConfig {
        relaunch_core::plan::LaunchConfig {
            platform: Platform::Snp,
            vcpus: 1,
            mem_bytes: mem,
            vcpu_sig: 0,
            guest_features: 0,
            policy: None,
            host_data: [0; 32],
            kernel_hashes: None,
        }
    }

    /// Walks the 4-level tables in `pages` for `va` (4 KiB or 2 MiB leaves), asserting the
    /// C-bit in every entry on the way; returns the physical address without the C-bit.
    fn walk_with_cbit(
        pages: &std::collections::BTreeMap<u64, Vec<u8>>,
        cr3: u64,
        c: u64,
        va: u64,
    ) -> u64 {
        assert_eq!(cr3 & c, c, "CR3 without the C-bit");
        let mask = !(c | 0xFFF) & ((1 << 52) - 1);
        let entry = |table: u64, i: u64| {
            let t = &pages[&(table & mask)];
            let at = (i * 8) as usize;
            u64::from_le_bytes(t[at..at + 8].try_into().unwrap())
        };
        let pml4e = entry(cr3, (va >> 39) & 511);
        let pdpte = entry(pml4e, (va >> 30) & 511);
        let pde = entry(pdpte, (va >> 21) & 511);
        for e in [pml4e, pdpte, pde] {
            assert_eq!(e & 1, 1, "{va:#x}: not present");
            assert_eq!(e & c, c, "{va:#x}: entry {e:#x} without the C-bit");
        }
        assert_eq!(pde & 0x80, 0x80, "2 MiB leaf");
        (pde & mask & !0x1F_FFFF) | (va & 0x1F_FFFF)
    }

    #[test]
    fn snp_view_layout() {
        use relaunch_core::arch::vmsa::parse_vmsa;
        use relaunch_core::plan::{plan, LaunchOp, PageKind};
        let payload: Vec<u8> = (0..20_000u32).map(|i| (i % 13) as u8 + 1).collect();
        let k = fake_bzimage(&payload, 0x40_0000, 0x100_0000);
        let initrd = vec![3u8; 9000];
        let mem = 64 << 20;
        let mut i = inputs(&k, Some(&initrd), "console=ttyS0");
        i.mem = mem;
        for c_bit in [DEFAULT_C_BIT, 47] {
            let out = pack_with(
                &i,
                &LinuxOptions {
                    views: vec![Platform::Snp],
                    c_bit,
                },
            )
            .unwrap();
            let c = 1u64 << c_bit;
            let p = plan(&out.bytes, &snp_cfg(mem)).unwrap();
            // GPA -> (kind, contents), each page imported once.
            let mut pages = std::collections::BTreeMap::new();
            for op in p.ops() {
                if let LaunchOp::ImportPage { gpa, kind, data } = *op {
                    let mut page = p.page_bytes(&data).to_vec();
                    page.resize(4096, 0);
                    assert!(pages.insert(gpa, (kind, page)).is_none(), "{gpa:#x} twice");
                }
            }
            let bytes: std::collections::BTreeMap<u64, Vec<u8>> =
                pages.iter().map(|(&g, (_, b))| (g, b.clone())).collect();
            // Every E820 RAM page is pre-validated (imported), and outside RAM only the
            // ACPI tables' page in the ISA hole (the VMSA is a VP context, not a page import).
            let e820 = e820_for(mem);
            let mut ram = 0;
            for &(gpa, size, _) in e820.iter().filter(|e| e.2 == E820_RAM) {
                for page in (gpa..gpa + size).step_by(4096) {
                    assert!(
                        pages.contains_key(&page),
                        "RAM page {page:#x} not validated"
                    );
                    ram += 1;
                }
            }
            assert!(!pages[&crate::pack::acpi::BASE].1.iter().all(|&b| b == 0));
            assert_eq!(pages.len(), ram + 1, "RAM pages and the ACPI page only");
            assert_eq!(pages[&SNP_SECRETS].0, PageKind::Secrets);
            assert_eq!(pages[&SNP_CPUID].0, PageKind::Cpuid);
            // The CC blob and its setup_data entry, found as find_cc_blob_setup_data does.
            let zp = &pages[&ZERO_PAGE].1;
            let bp = read_boot_params(zp);
            assert_eq!(u64::from(bp.cc_blob_address), CC_BLOB);
            let mut sd = rd_u64(zp, hdr::SETUP_DATA);
            let mut found = None;
            while sd != 0 {
                let page = &bytes[&(sd & !0xFFF)];
                let at = (sd & 0xFFF) as usize;
                if rd_u32(page, at + 8) == SETUP_CC_BLOB {
                    assert_eq!(rd_u32(page, at + 12), 4, "len");
                    found = Some(u64::from(rd_u32(page, at + 16)));
                    break;
                }
                sd = rd_u64(page, at);
            }
            assert_eq!(found, Some(CC_BLOB));
            let blob = &pages[&CC_BLOB];
            assert_eq!(blob.0, PageKind::Normal, "the blob is measured");
            let blob = &blob.1;
            assert_eq!(rd_u32(blob, 0), 0x4544_4D41);
            assert_eq!(&blob[0..4], b"AMDE");
            assert_eq!(rd_u16(blob, 4), 1);
            assert_eq!(rd_u64(blob, 8), SNP_SECRETS);
            assert_eq!(rd_u32(blob, 16), 4096);
            assert_eq!(rd_u64(blob, 24), SNP_CPUID);
            assert_eq!(rd_u32(blob, 32), 4096);
            // Apart from the CC blob fields, the zero page is the native one.
            let mut native_zp = out.layout.zero_page.clone();
            wr(
                &mut native_zp,
                zp::CC_BLOB_ADDRESS,
                &(CC_BLOB as u32).to_le_bytes(),
            );
            wr(
                &mut native_zp,
                hdr::SETUP_DATA,
                &(CC_BLOB + CC_SETUP_DATA_OFFSET).to_le_bytes(),
            );
            assert_eq!(zp, &native_zp);
            // Kernel, initrd and command line where the native view has them.
            assert_eq!(&bytes[&0x100_0000][..], &payload[..4096]);
            let (rd_gpa, _) = out.layout.initrd.unwrap();
            assert_eq!(&bytes[&rd_gpa][..], &initrd[..4096]);
            assert_eq!(&bytes[&CMDLINE][..14], b"console=ttyS0\0");
            // The VMSA: 64-bit startup_64, RSI = zero page, CR3 = PML4 | C, EFER.SVME.
            let v = parse_vmsa(&out.snp_vmsa.as_ref().unwrap()[..]).unwrap();
            assert_eq!(v.rip.get(), 0x100_0200);
            assert_eq!(v.rsi.get(), ZERO_PAGE);
            assert_eq!(v.cr3.get(), PML4 | c);
            assert_eq!(v.efer.get(), 0x1500, "LME | LMA | SVME");
            assert_eq!(v.sev_features.get(), relaunch_boot_images::SEV_FEATURES);
            assert_eq!(v.cs.selector.get(), BOOT_CS);
            assert_eq!(v.cs.attrib.get() & 0x200, 0x200, "L");
            assert_eq!(v.ss.selector.get(), BOOT_DS);
            // The planner's reading of that VMSA is what KVM gets.
            let regs = p.vp_contexts()[0];
            assert_eq!(
                (regs.rip, regs.gprs.rsi, regs.cr3),
                (0x100_0200, ZERO_PAGE, PML4 | c)
            );
            // The page tables map every RAM page (and the cc blob, CPUID page...) through
            // entries with the C-bit, identity.
            for va in [
                0,
                CC_BLOB,
                SNP_CPUID,
                ZERO_PAGE,
                0x100_0200,
                rd_gpa,
                mem - 1,
                (4 << 30) - 1,
            ] {
                assert_eq!(walk_with_cbit(&bytes, v.cr3.get(), c, va), va);
            }
        }
    }

    #[test]
    fn snp_view_refusals() {
        let k = fake_bzimage(&[1; 100], 0x10_0000, 0x100_0000);
        let i = inputs(&k, None, "");
        let with = |views: Vec<Platform>, c_bit| LinuxOptions { views, c_bit };
        assert_eq!(
            pack_with(&i, &with(vec![Platform::Tdx], 51)).unwrap_err(),
            LinuxError::UnsupportedView(Platform::Tdx)
        );
        assert_eq!(
            pack_with(&i, &with(vec![Platform::Snp, Platform::Snp], 51)).unwrap_err(),
            LinuxError::DuplicateView(Platform::Snp)
        );
        for bad in [31, 52, 60] {
            assert!(matches!(
                pack_with(&i, &with(vec![], bad)).unwrap_err(),
                LinuxError::BadCBit { .. }
            ));
        }
        // The C-bit is only the SNP view's business.
        assert!(pack_with(&i, &with(vec![Platform::Native], 60)).is_ok());
        let mut big = inputs(&k, None, "");
        big.mem = 17 << 30;
        assert!(matches!(
            pack_with(&big, &with(vec![Platform::Snp], 51)).unwrap_err(),
            LinuxError::SnpTooMuchMemory { .. }
        ));
        let mut huge = inputs(&k, None, "");
        huge.mem = 1 << 40;
        assert!(matches!(
            pack_with(&huge, &with(vec![Platform::Snp], 40)).unwrap_err(),
            LinuxError::BadCBit { .. }
        ));
    }

    #[test]
    fn both_views_by_default_and_the_native_one_unchanged() {
        let k = fake_bzimage(&[5; 3000], 0x10_0000, 0x100_0000);
        let i = inputs(&k, None, "quiet");
        let both = pack(&i).unwrap();
        let native = pack_with(
            &i,
            &LinuxOptions {
                views: vec![Platform::Native],
                ..LinuxOptions::default()
            },
        )
        .unwrap();
        assert_eq!(
            crate::pack::views(&both.bytes).unwrap(),
            [Platform::Native, Platform::Snp]
        );
        assert_eq!(
            crate::pack::views(&native.bytes).unwrap(),
            [Platform::Native]
        );
        assert!(native.snp_vmsa.is_none());
        let cfg = |p| relaunch_core::plan::LaunchConfig {
            platform: p,
            ..snp_cfg(256 << 20)
        };
        // The same imports with the same bytes, and the same VP context.
        let imports = |bytes: &[u8]| {
            let p = relaunch_core::plan::plan(bytes, &cfg(Platform::Native)).unwrap();
            let pages: Vec<_> = p
                .ops()
                .iter()
                .filter_map(|op| match *op {
                    relaunch_core::plan::LaunchOp::ImportPage { gpa, kind, data } => {
                        Some((gpa, kind, p.page_bytes(&data).to_vec()))
                    }
                    _ => None,
                })
                .collect();
            (pages, p.vp_contexts().to_vec())
        };
        let (a, b) = (imports(&both.bytes), imports(&native.bytes));
        assert!(!a.0.is_empty());
        assert_eq!(a, b);
    }
}
