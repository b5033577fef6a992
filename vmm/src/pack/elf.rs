//! `relaunch pack --elf`: a bare-metal ELF into an IGVM bundle.
//!
//! The ELF must be linked against relaunch's guest layout (`boot-images/guests/src/
//! layout.rs`: entry and segments in the image window, GDT, page tables, stack and scratch
//! where the layout puts them); the packer is the one the boot images are built with
//! ([`relaunch_boot_images::pack_with`], docs/boot-images.md), so `relaunch pack --elf
//! boot-images/prebuilt/hello.elf` is byte for byte `boot-images/prebuilt/hello.igvm`. It
//! stays in that crate, next to the layout it encodes; relaunch depends on it.

pub use relaunch_boot_images::{PackError, PackOptions};

/// Packs `elf` with `opts` into IGVM bytes (views NATIVE, SNP, SEV, SEV-ES and, when the
/// ELF has a TDX reset page, TDX).
///
/// # Errors
/// [`PackError`]: not an x86-64 executable, or segments outside the layout.
pub fn pack(elf: &[u8], opts: PackOptions) -> Result<Vec<u8>, PackError> {
    relaunch_boot_images::pack_with(elf, opts)
}

/// The RAM window `fuki`-style guests hand bundles over in (`--host-window`): the layout's
/// `FUKI_WINDOW`.
pub const HOST_WINDOW: (u64, u64) = (
    relaunch_boot_images::layout::FUKI_WINDOW,
    relaunch_boot_images::layout::FUKI_WINDOW_SIZE,
);
