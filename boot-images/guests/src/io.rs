//! Port I/O and MMIO accessors: the only inline assembly besides the entry stubs.

use core::arch::asm;

// `out` has no `nomem`: a port write may make the device read or write guest memory (the
// fw_cfg DMA register 0x518 starts a transfer into RAM that the caller then reads), so the
// compiler must treat it as a memory access: not keep memory values in registers across it,
// nor move loads and stores over it. `in` keeps `nomem`: no device here touches guest
// memory on a port read.

/// `out port, al`.
#[inline(always)]
pub fn outb(port: u16, value: u8) {
    // SAFETY: `out` needs ring 0 (or IOPL) and a port whose device effects are fine for this
    // guest: the guests run at CPL0 under a VMM that handles every port (unknown ones are
    // ignored); memory effects are declared (no `nomem`), no stack or flags are touched.
    unsafe { asm!("out dx, al", in("dx") port, in("al") value, options(nostack, preserves_flags)) }
}

/// `out port, ax`.
#[inline(always)]
pub fn outw(port: u16, value: u16) {
    // SAFETY: as `outb`.
    unsafe { asm!("out dx, ax", in("dx") port, in("ax") value, options(nostack, preserves_flags)) }
}

/// `out port, eax`.
#[inline(always)]
pub fn outl(port: u16, value: u32) {
    // SAFETY: as `outb`.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") value, options(nostack, preserves_flags))
    }
}

/// `in al, port`.
#[inline(always)]
pub fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: `in` needs ring 0 (or IOPL): the guests run at CPL0; the VMM answers every
    // port (all-ones for unknown ones) and no port read here touches guest memory (`nomem`).
    unsafe {
        asm!("in al, dx", out("al") v, in("dx") port, options(nomem, nostack, preserves_flags))
    }
    v
}

/// `in ax, port`.
#[inline(always)]
pub fn inw(port: u16) -> u16 {
    let v: u16;
    // SAFETY: as `inb`.
    unsafe {
        asm!("in ax, dx", out("ax") v, in("dx") port, options(nomem, nostack, preserves_flags))
    }
    v
}

/// `in eax, port`.
#[inline(always)]
pub fn inl(port: u16) -> u32 {
    let v: u32;
    // SAFETY: as `inb`.
    unsafe {
        asm!("in eax, dx", out("eax") v, in("dx") port, options(nomem, nostack, preserves_flags))
    }
    v
}

/// A volatile 32-bit MMIO write to an identity-mapped guest-physical address.
///
/// # Safety
/// `addr` must be 4-byte aligned and mapped (page tables cover 0..4 GiB), and must not be
/// RAM this guest relies on.
#[inline(always)]
pub unsafe fn mmio_write32(addr: u64, value: u32) {
    // SAFETY: the caller's contract.
    unsafe { core::ptr::write_volatile(addr as *mut u32, value) }
}

/// A volatile 32-bit MMIO read.
///
/// # Safety
/// As [`mmio_write32`].
#[inline(always)]
pub unsafe fn mmio_read32(addr: u64) -> u32 {
    // SAFETY: the caller's contract.
    unsafe { core::ptr::read_volatile(addr as *const u32) }
}

/// Stops this CPU for good (interrupts off, `hlt` in a loop).
pub fn halt_forever() -> ! {
    loop {
        // SAFETY: cli/hlt only stop this CPU.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) }
    }
}
