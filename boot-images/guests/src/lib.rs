//! relaunch's test guests: the shared bare-metal runtime.
//!
//! Each guest (`src/bin/*.rs`) defines `guest_main`; the entry stub here writes the boot
//! marker to port 0x80 first thing, then calls it on the stack the VP context set up.
//! Device conventions (ports, fw_cfg files) are listed in docs/boot-images.md; every one
//! of them is a constant in this crate.
#![no_std]

pub mod ap;
pub mod fw_cfg;
pub mod io;
pub mod layout;
pub mod platform;
pub mod power;
pub mod serial;
pub mod sha256;

use core::arch::global_asm;

// Entry: the VP context starts the BSP here in 64-bit mode with paging on, RSP =
// layout::STACK_TOP, interrupts off. Port 0x80 first (the VMM timestamps the first write
// of each launch), then the guest's `guest_main`, then `power::finish` if it ever returns
// (power-off, or a relaunch the host asked for).
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
    poweroff = sym power::finish,
);

// The TDX reset page (layout::TDX_RESET_PAGE, imported by the TDX view only). A TD vCPU
// starts at 0xFFFFFFF0 in flat 32-bit protected mode, paging off, EFER.LME possibly
// already set by the TDX module, RSI = its vCPU index. APs park (`cli; hlt`; the smp guest
// restarts them with INIT-SIPI where the platform allows it); the BSP enables PAE, loads
// CR3 and the GDT, sets EFER.LME if needed, turns paging on and jumps to `_start` in
// 64-bit mode with the same RSP as the other views.
global_asm!(
    ".section .tdx_reset, \"ax\"",
    ".code32",
    "tdx_start:",
    "    testl %esi, %esi",
    "    jnz 3f",
    "    movl %cr4, %eax",
    "    orl $0x20, %eax", // PAE
    "    movl %eax, %cr4",
    "    movl ${pml4}, %eax",
    "    movl %eax, %cr3",
    "    movl $0xC0000080, %ecx", // EFER
    "    rdmsr",
    "    testl $0x100, %eax", // LME already set (the TDX module's initial EFER)?
    "    jnz 1f",
    "    orl $0x100, %eax",
    "    wrmsr",
    "1:  lgdtl tdx_gdtr",
    "    movl %cr0, %eax",
    "    orl $0x80000000, %eax", // PG
    "    movl %eax, %cr0",
    "    ljmpl ${code64}, $tdx_long64",
    "3:  cli",
    "    hlt",
    "    jmp 3b",
    ".code64",
    "tdx_long64:",
    "    movw ${data}, %ax",
    "    movw %ax, %ds",
    "    movw %ax, %es",
    "    movw %ax, %ss",
    "    movw %ax, %fs",
    "    movw %ax, %gs",
    "    movl ${stack_top}, %esp",
    "    movl $_start, %eax",
    "    jmp *%rax",
    ".balign 8",
    "tdx_gdtr:",
    "    .word {gdt_limit}",
    "    .long {gdt}",
    ".code32",
    ".org 0xFF0", // the reset vector, 0xFFFFFFF0
    "    jmp tdx_start",
    ".org 0x1000, 0xF4",
    ".text",
    pml4 = const layout::PML4,
    code64 = const layout::SEL_CODE64,
    data = const layout::SEL_DATA,
    stack_top = const layout::STACK_TOP,
    gdt_limit = const layout::GDT_LIMIT,
    gdt = const layout::GDT,
    options(att_syntax),
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
