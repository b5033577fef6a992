//! Starting application processors: the real-mode start-up page ([`ap_trampoline!`]) and
//! INIT-SIPI-SIPI through the xAPIC ([`start`]). Used by the `smp` and `fuki` guests; a guest
//! that does not invoke the macro has no AP page (and `hello` stays byte-identical).
//!
//! AP K is addressed by APIC ID K (as the VMM numbers vCPUs). It starts in real mode at the
//! SIPI vector 0x08 (GPA [`layout::AP_TRAMPOLINE`]), where the trampoline switches to
//! protected mode, then long mode on the packer's GDT and page tables, and calls the
//! guest's `extern "C" fn(index: u64) -> !` on the stack [`start`] gave it. APs are started
//! one at a time: the stack top and index are handed over in two statics.

use core::sync::atomic::{AtomicU32, Ordering};

use crate::io::{mmio_read32, mmio_write32};
use crate::layout;

const LAPIC: u64 = 0xFEE0_0000;
const LAPIC_SVR: u64 = LAPIC + 0xF0;
const LAPIC_ICR_LOW: u64 = LAPIC + 0x300;
const LAPIC_ICR_HIGH: u64 = LAPIC + 0x310;
const ICR_INIT: u32 = 0x0000_4500; // INIT, level assert
const ICR_STARTUP: u32 = 0x0000_4600; // Start-up, vector in bits 7:0
const ICR_PENDING: u32 = 1 << 12;
/// The SIPI vector: the page number of the start-up page.
pub const SIPI_VECTOR: u32 = (layout::AP_TRAMPOLINE >> 12) as u32;

/// Defines the AP start-up page (section `.ap_trampoline`, linked at
/// [`layout::AP_TRAMPOLINE`]) and the two statics it reads, `AP_STACK_TOP` and `AP_INDEX`;
/// the APs call `$entry(index)` (an `extern "C" fn(u64) -> !`).
#[macro_export]
macro_rules! ap_trampoline {
    ($entry:path) => {
        /// The stack top of the AP being started (read by the trampoline).
        #[no_mangle]
        static AP_STACK_TOP: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
        /// The index of the AP being started (read by the trampoline).
        #[no_mangle]
        static AP_INDEX: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

        core::arch::global_asm!(
            ".section .ap_trampoline, \"ax\"",
            ".code16",
            "ap_start:",
            "    cli",
            "    xorw %ax, %ax",
            "    movw %ax, %ds",
            "    lgdtl ap_gdtr",
            "    movl %cr0, %eax",
            "    orl $1, %eax",
            "    movl %eax, %cr0",
            "    ljmpl ${code32}, $ap_prot32",
            ".code32",
            "ap_prot32:",
            "    movw ${data}, %ax",
            "    movw %ax, %ds",
            "    movw %ax, %es",
            "    movw %ax, %ss",
            "    movw %ax, %fs",
            "    movw %ax, %gs",
            "    movl %cr4, %eax",
            "    orl $0x20, %eax", // PAE
            "    movl %eax, %cr4",
            "    movl ${pml4}, %eax",
            "    movl %eax, %cr3",
            "    movl $0xC0000080, %ecx", // EFER
            "    rdmsr",
            "    orl $0x100, %eax", // LME
            "    wrmsr",
            "    movl %cr0, %eax",
            "    orl $0x80000000, %eax", // PG
            "    movl %eax, %cr0",
            "    ljmpl ${code64}, $ap_long64",
            ".code64",
            "ap_long64:",
            "    movq AP_STACK_TOP(%rip), %rsp",
            "    movq AP_INDEX(%rip), %rdi",
            "    call {ap_main}",
            "1:  cli",
            "    hlt",
            "    jmp 1b",
            ".balign 8",
            "ap_gdtr:",
            "    .word {gdt_limit}",
            "    .long {gdt}",
            ".text",
            code32 = const $crate::layout::SEL_CODE32,
            code64 = const $crate::layout::SEL_CODE64,
            data = const $crate::layout::SEL_DATA,
            pml4 = const $crate::layout::PML4,
            gdt_limit = const $crate::layout::GDT_LIMIT,
            gdt = const $crate::layout::GDT,
            ap_main = sym $entry,
            options(att_syntax),
        );
    };
}

fn send_ipi(apic_id: u32, icr: u32) {
    // SAFETY: mmio_write32 needs a 4-byte aligned, mapped address that is not RAM this
    // guest relies on: ICR_HIGH is a register of the xAPIC page at 0xFEE0_0000, mapped by the
    // 0..4 GiB identity map and not RAM.
    unsafe { mmio_write32(LAPIC_ICR_HIGH, apic_id << 24) };
    // SAFETY: as above (ICR_LOW, same page); this write sends the IPI.
    unsafe { mmio_write32(LAPIC_ICR_LOW, icr) };
    for _ in 0..100_000 {
        // SAFETY: as above.
        if unsafe { mmio_read32(LAPIC_ICR_LOW) } & ICR_PENDING == 0 {
            break;
        }
        core::hint::spin_loop();
    }
}

/// Software-enables this CPU's local APIC (spurious vector 0xFF); once, before [`start`].
pub fn enable_lapic() {
    // SAFETY: the xAPIC page is mapped and is not RAM.
    unsafe { mmio_write32(LAPIC_SVR, 0x1FF) };
}

/// Starts AP `k` (APIC ID `k`) with INIT-SIPI-SIPI: `stack_top` and `index` are stored
/// where the trampoline reads them (`AP_STACK_TOP`/`AP_INDEX` of [`ap_trampoline!`], passed
/// in), then waits (bounded) until `up` reaches `want` (the AP counts itself). Returns
/// whether it did; a late AP would take the next one's stack, so stop starting APs then.
pub fn start(
    k: u32,
    stack_top: u64,
    slots: (
        &core::sync::atomic::AtomicU64,
        &core::sync::atomic::AtomicU64,
    ),
    up: &AtomicU32,
    want: u32,
) -> bool {
    slots.0.store(stack_top, Ordering::SeqCst);
    slots.1.store(u64::from(k), Ordering::SeqCst);
    send_ipi(k, ICR_INIT);
    send_ipi(k, ICR_STARTUP | SIPI_VECTOR);
    send_ipi(k, ICR_STARTUP | SIPI_VECTOR);
    for _ in 0..200_000_000u32 {
        if up.load(Ordering::SeqCst) >= want {
            return true;
        }
        core::hint::spin_loop();
    }
    false
}
