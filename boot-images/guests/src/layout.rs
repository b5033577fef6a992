//! Guest-physical memory layout of relaunch's test guests.
//!
//! Shared, as this one file, by the guests (`boot-images/guests`) and the IGVM packer
//! (`boot-images/src/lib.rs` includes it with `#[path]`), so the two cannot disagree.
//! Everything is identity-mapped; docs/boot-images.md "Memory layout" draws it.

/// The GDT (one page, from the packer): null, 64-bit code, flat data, 32-bit code.
pub const GDT: u64 = 0x1000;
/// GDTR limit: four 8-byte descriptors.
pub const GDT_LIMIT: u16 = 4 * 8 - 1;
/// 64-bit code selector.
pub const SEL_CODE64: u16 = 0x08;
/// Flat 4 GiB data selector.
pub const SEL_DATA: u16 = 0x10;
/// Flat 4 GiB 32-bit code selector (the AP trampoline's protected-mode step).
pub const SEL_CODE32: u16 = 0x18;

/// PML4 (CR3). One entry, pointing at [`PDPT`].
pub const PML4: u64 = 0x2000;
/// PDPT: four entries, pointing at the four page directories at [`PD`].
pub const PDPT: u64 = 0x3000;
/// Four page directories (0x4000..0x8000) of 2 MiB pages: identity map of 0..4 GiB.
pub const PD: u64 = 0x4000;
/// Number of page directories (each maps 1 GiB).
pub const PD_COUNT: u64 = 4;

/// The real-mode AP start-up page: SIPI vector `AP_TRAMPOLINE >> 12` = 0x08.
pub const AP_TRAMPOLINE: u64 = 0x8000;

/// The TDX view's reset page: every TD vCPU starts at 0xFFFFFFF0 in 32-bit protected mode
/// with paging off; the code here (the guests' `.tdx_reset` section) parks the APs and
/// takes the BSP to [`IMAGE_BASE`] in long mode. Only the TDX view imports this page.
pub const TDX_RESET_PAGE: u64 = 0xFFFF_F000;

/// The BSP stack: 64 KiB of zero pages, RSP starts at [`STACK_TOP`].
pub const STACK_BOTTOM: u64 = 0x7_0000;
/// Initial RSP of the BSP.
pub const STACK_TOP: u64 = 0x8_0000;

/// The guest program (ELF PT_LOAD segments) lives in `IMAGE_BASE..IMAGE_END`.
pub const IMAGE_BASE: u64 = 0x10_0000;
/// End of the image window.
pub const IMAGE_END: u64 = 0x20_0000;

/// Scratch RAM the guests use without initial contents (fw_cfg DMA descriptors and
/// buffers): declared with REQUIRED_MEMORY, not imported.
pub const SCRATCH: u64 = 0x20_0000;
/// Size of [`SCRATCH`].
pub const SCRATCH_SIZE: u64 = 0x10_0000;

/// The lowest RAM size the guests run with (everything above ends below this).
pub const RAM_NEEDED: u64 = SCRATCH + SCRATCH_SIZE;

/// The SEV launch-secret page: where a VMM's `LAUNCH_SECRET` puts the secret (one 4 KiB
/// page, RAM in every view). Contents: a u32 LE length, then that many secret bytes; a
/// length of 0 or above [`SEV_SECRET_MAX`] means "no secret". The SEV and SEV-ES views
/// import it as a zero page (so "no secret" is what a launch without one leaves there);
/// in the other views it is plain RAM, zero at start.
pub const SEV_SECRET_GPA: u64 = 0x9000;
/// Most secret bytes the page holds (4096 minus the length field).
pub const SEV_SECRET_MAX: u32 = 4096 - 4;

/// `sevinfo`'s exception table (IDT, 32 gates), built at run time in [`SCRATCH`].
pub const SEVINFO_IDT: u64 = SCRATCH + SCRATCH_SIZE - 4 * 0x1000;
/// `sevinfo`'s C-bit page tables, built at run time in [`SCRATCH`]: PML4, PDPT and one
/// page directory of 2 MiB pages (identity map of 0 .. 1 GiB with the C-bit set).
pub const SEVINFO_PML4: u64 = SCRATCH + SCRATCH_SIZE - 3 * 0x1000;
/// PDPT of [`SEVINFO_PML4`].
pub const SEVINFO_PDPT: u64 = SCRATCH + SCRATCH_SIZE - 2 * 0x1000;
/// The page directory of [`SEVINFO_PML4`].
pub const SEVINFO_PD: u64 = SCRATCH + SCRATCH_SIZE - 0x1000;

/// `fuki`'s hand-over window: where stage 1 puts the next bundle (and the DMA descriptor and
/// the `etc/vmlaunchupdate` structure it writes) — memory the host may read. SNP: stage 1
/// makes it shared at run time (GHCB MSR page-state change); TDX: the TDX view imports it as
/// shared pages; native, SEV, SEV-ES: ordinary RAM. Page 0 holds the descriptor and the
/// structure, the bundle starts at page 1.
pub const FUKI_WINDOW: u64 = 0x40_0000;
/// Size of [`FUKI_WINDOW`] (the largest bundle stage 1 hands over is this minus one page).
pub const FUKI_WINDOW_SIZE: u64 = 0x40_0000;

/// The byte every guest writes to port 0x80 first thing at entry.
pub const BOOT_MARKER: u8 = 0x01;
