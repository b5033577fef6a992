//! relaunch's test guests: the shared bare-metal runtime.
//!
//! Each guest (`src/bin/*.rs`) defines `guest_main`; the entry stub here writes the boot
//! marker to port 0x80 first thing, then calls it on the stack the VP context set up.
//! Device conventions (ports, fw_cfg files) are listed in docs/boot-images.md; every one
//! of them is a constant in this crate.
#![no_std]

pub mod fw_cfg;
pub mod io;
pub mod layout;
pub mod power;
pub mod serial;

use core::arch::global_asm;

// Entry: the VP context starts the BSP here in 64-bit mode with paging on, RSP =
// layout::STACK_TOP, interrupts off. Port 0x80 first (the VMM timestamps the first write
// of each launch), then the guest's `guest_main`, then power-off if it ever returns.
global_asm!(
    ".section .text.entry, \"ax\"",
    ".global _start",
    "_start:",
    "    mov al, {marker}",
    "    out 0x80, al",
    "    cld",
    "    call guest_main",
    "    call {poweroff}",
    "2:  cli",
    "    hlt",
    "    jmp 2b",
    marker = const layout::BOOT_MARKER,
    poweroff = sym power::power_off,
);

/// `print!` to COM1.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => {{
        let _ = core::fmt::Write::write_fmt(&mut $crate::serial::Com1, format_args!($($arg)*));
    }};
}

/// `println!` to COM1 (lines end with "\n").
#[macro_export]
macro_rules! println {
    () => { $crate::print!("\n") };
    ($($arg:tt)*) => {{
        $crate::print!($($arg)*);
        $crate::print!("\n");
    }};
}

/// Reports a crash: the message on COM1, then the pvpanic port, then halts.
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    println!("guest panic: {}", info.message());
    power::report_panic();
}
