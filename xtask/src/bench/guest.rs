//! The bench's tiny guest: one 4 KiB page of 16-bit real-mode code at the top of the 4 GiB
//! space (GPA 0xFFFFF000), entered at the x86 reset vector (CS base 0xFFFF0000, IP 0xFFF0 =
//! GPA 0xFFFFFFF0; Intel SDM Vol. 3A §9.1.4 "First Instruction Executed").
//!
//! Every VMM runs the same page:
//! - relaunch: packed as an IGVM file (NATIVE platform, one PAGE_DATA at 0xFFFFF000, one
//!   native VP context in the architectural reset state) by the core's `IgvmBuilder`;
//! - QEMU: as `-bios` (QEMU maps the image so that it ends at 4 GiB and requires a multiple
//!   of 64 KiB: hw/i386/x86-common.c `x86_bios_rom_init`), the page is the image's last 4 KiB;
//! - the raw KVM floor: copied to the top of its one memslot, which ends at 4 GiB.
//!
//! What the code does, first thing: `out 0x80, al` (the boot marker both relaunch and the
//! floor time), then one byte to COM1 (0x3F8, the byte QEMU's in-place loop and the cold
//! start runs count), then either resets through the reset control register (`out 0xCF9`
//! with 0x06 = hard reset + reset CPU; Intel ICH9 datasheet §13.7.5 "RST_CNT") or spins.

use anyhow::Context;
use igvm_defs::{IgvmNativeVpContextX64, IgvmPageDataFlags, IgvmPageDataType, IgvmPlatformType};
use relaunch_core::writer::IgvmBuilder;

/// Guest-physical address of the page.
pub const PAGE_GPA: u64 = 0xFFFF_F000;
/// Size of the page.
pub const PAGE_SIZE: usize = 4096;
/// Boot-marker port (the guest's first write).
pub const MARKER_PORT: u16 = 0x80;
/// The byte the guest writes to COM1 on every boot.
pub const SERIAL_BYTE: u8 = b'R';
/// Size of the QEMU `-bios` image (QEMU wants a multiple of 64 KiB).
pub const BIOS_SIZE: usize = 64 * 1024;

/// What the guest does after its boot marker and serial byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// Reset through port 0xCF9 (value 0x06), then `hlt` in a loop should the reset not
    /// take (it always exits to the VMM first).
    ResetCf9,
    /// Spin `n` iterations of `loop` (32-bit counter) first, then reset like `ResetCf9`:
    /// the guest "runs" for a while, so a VM prestaged meanwhile is ready when it resets.
    /// (Real-mode code is slow on the nested KVM here: ≈ 0.44 µs per iteration.)
    SpinThenReset(u32),
    /// Idle in `cli; hlt` forever (for RSS measurements).
    Halt,
}

#[rustfmt::skip]
const PROLOGUE: [u8; 10] = [
    0xB0, 0x01,             // mov al, 1
    0xE6, 0x80,             // out 0x80, al      ; boot marker
    0xBA, 0xF8, 0x03,       // mov dx, 0x3f8
    0xB0, SERIAL_BYTE,      // mov al, 'R'
    0xEE,                   // out dx, al        ; one serial byte
];

#[rustfmt::skip]
const RESET: [u8; 9] = [
    0xBA, 0xF9, 0x0C,       // mov dx, 0xcf9
    0xB0, 0x06,             // mov al, 6
    0xEE,                   // out dx, al        ; reset
    0xF4,                   // hlt
    0xEB, 0xFD,             // jmp short -3      ; back to the hlt
];

#[rustfmt::skip]
const HALT: [u8; 4] = [
    0xFA,                   // cli
    0xF4,                   // hlt
    0xEB, 0xFD,             // jmp short -3      ; back to the hlt
];

/// The 4 KiB page: code at offset 0 (IP 0xF000 in the reset code segment), a near jump to
/// it at offset 0xFF0 (the reset vector).
pub fn page(ending: Ending) -> [u8; PAGE_SIZE] {
    let mut code = PROLOGUE.to_vec();
    if let Ending::SpinThenReset(n) = ending {
        code.extend_from_slice(&[0x66, 0xB9]); // mov ecx, imm32
        code.extend_from_slice(&n.max(1).to_le_bytes());
        code.extend_from_slice(&[0x67, 0xE2, 0xFD]); // addr32 loop $ (rel8 -3: the prefix)
    }
    match ending {
        Ending::ResetCf9 | Ending::SpinThenReset(_) => code.extend_from_slice(&RESET),
        Ending::Halt => code.extend_from_slice(&HALT),
    }
    let mut page = [0u8; PAGE_SIZE];
    page[..code.len()].copy_from_slice(&code);
    // jmp near rel16 at IP 0xFFF0: target 0xF000 = 0xFFF3 + rel16 (mod 2^16), rel16 = 0xF00D.
    page[0xFF0..0xFF3].copy_from_slice(&[0xE9, 0x0D, 0xF0]);
    page
}

/// The QEMU `-bios` image: 60 KiB of zeros, then the page.
pub fn bios_image(page: &[u8; PAGE_SIZE]) -> Vec<u8> {
    let mut img = vec![0u8; BIOS_SIZE - PAGE_SIZE];
    img.extend_from_slice(page);
    img
}

/// The architectural reset state as an IGVM native VP context (Intel SDM Vol. 3A §9.1.1
/// Table 9-1; segment attributes in the IGVM/Hyper-V layout: type in bits 3:0, S bit 4,
/// DPL 6:5, P bit 7, AVL 12, L 13, D/B 14, G 15).
pub fn reset_vp_context() -> IgvmNativeVpContextX64 {
    IgvmNativeVpContextX64 {
        rip: 0xFFF0,
        rflags: 0x2,
        idtr_limit: 0xFFFF,
        gdtr_limit: 0xFFFF,
        code_selector: 0xF000,
        code_attributes: 0x9B, // present, S, execute/read, accessed
        code_base: 0xFFFF_0000,
        code_limit: 0xFFFF,
        data_attributes: 0x93, // present, S, read/write, accessed
        data_limit: 0xFFFF,
        cr0: 0x6000_0010, // CD, NW, ET
        ..zerocopy::FromZeros::new_zeroed()
    }
}

/// The page packed as an IGVM file for relaunch (NATIVE view only).
pub fn igvm(page: &[u8; PAGE_SIZE]) -> anyhow::Result<Vec<u8>> {
    let mut b = IgvmBuilder::new();
    let native = b
        .platform(IgvmPlatformType::NATIVE, 0)
        .map_err(|e| anyhow::anyhow!("IGVM writer: {e}"))?;
    b.page_data(
        PAGE_GPA,
        native,
        IgvmPageDataFlags::new(),
        IgvmPageDataType::NORMAL,
        page,
    )
    .map_err(|e| anyhow::anyhow!("IGVM writer: {e}"))?;
    b.native_vp_context(native, 0, &reset_vp_context())
        .map_err(|e| anyhow::anyhow!("IGVM writer: {e}"))?;
    b.finish()
        .map_err(|e| anyhow::anyhow!("IGVM writer: {e}"))
        .context("packing the bench guest")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_vector_jumps_to_page_start() {
        let p = page(Ending::ResetCf9);
        assert_eq!(&p[0xFF0..0xFF3], &[0xE9, 0x0D, 0xF0]);
        // IP after the jump = 0xFFF3 + 0xF00D mod 2^16 = 0xF000 = page offset 0.
        assert_eq!(0xFFF3u16.wrapping_add(0xF00D), 0xF000);
        // First instruction pair is the boot marker.
        assert_eq!(&p[..4], &[0xB0, 0x01, 0xE6, 0x80]);
    }

    #[test]
    fn endings_differ_and_loop_back() {
        let r = page(Ending::ResetCf9);
        let h = page(Ending::Halt);
        let d = page(Ending::SpinThenReset(1000));
        assert_ne!(r, h);
        assert_ne!(r, d);
        // The delay loop: mov ecx, 1000; addr32 loop to itself.
        assert_eq!(
            &d[10..19],
            &[0x66, 0xB9, 0xE8, 0x03, 0, 0, 0x67, 0xE2, 0xFD]
        );
        // All end in `hlt; jmp -3`, which jumps back to the hlt.
        for p in [r, h, d] {
            let end = p[..0xFF0].iter().rposition(|&b| b != 0).unwrap();
            assert_eq!(&p[end - 2..=end], &[0xF4, 0xEB, 0xFD]);
        }
    }

    #[test]
    fn bios_image_ends_with_page() {
        let p = page(Ending::ResetCf9);
        let img = bios_image(&p);
        assert_eq!(img.len(), BIOS_SIZE);
        assert_eq!(img.len() % 65536, 0);
        assert_eq!(&img[BIOS_SIZE - PAGE_SIZE..], &p[..]);
    }

    #[test]
    fn igvm_has_magic_and_page() {
        let p = page(Ending::ResetCf9);
        let file = igvm(&p).unwrap();
        assert_eq!(&file[..4], &0x4D56_4749u32.to_le_bytes()); // "IGVM"
        assert!(file.windows(PAGE_SIZE).any(|w| w == &p[..]));
    }
}
