//! `smp`: the BSP starts every AP with INIT-SIPI-SIPI; each AP prints `cpu K up` and
//! counts itself; the BSP prints `smp: N cpus` and powers off.
//!
//! The vCPU count comes from fw_cfg key 0x0005 (FW_CFG_NB_CPUS, u16 LE, as QEMU); AP K is
//! addressed by APIC ID K. APs are started one at a time (so their lines never
//! interleave) through the xAPIC ICR at 0xFEE00300; each starts in real mode at the SIPI
//! vector 0x08 (GPA 0x8000), where the trampoline below switches to protected mode, then
//! long mode on the packer's GDT and page tables, and calls `ap_main` on its own stack.
//! An AP that does not come up within a bounded wait is reported as
//! `smp: cpu K did not start`; no further AP is started then.
#![no_std]
#![no_main]

use core::arch::global_asm;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use relaunch_guests::io::{halt_forever, mmio_read32, mmio_write32};
use relaunch_guests::{fw_cfg, layout, println, serial};

/// At most this many CPUs (BSP included) are started.
const MAX_CPUS: usize = 32;
const AP_STACK_SIZE: usize = 4096;

const LAPIC: u64 = 0xFEE0_0000;
const LAPIC_SVR: u64 = LAPIC + 0xF0;
const LAPIC_ICR_LOW: u64 = LAPIC + 0x300;
const LAPIC_ICR_HIGH: u64 = LAPIC + 0x310;
const ICR_INIT: u32 = 0x0000_4500; // INIT, level assert
const ICR_STARTUP: u32 = 0x0000_4600; // Start-up, vector in bits 7:0
const ICR_PENDING: u32 = 1 << 12;
const SIPI_VECTOR: u32 = (layout::AP_TRAMPOLINE >> 12) as u32;

#[repr(C, align(4096))]
struct ApStacks([[u8; AP_STACK_SIZE]; MAX_CPUS]);
static mut AP_STACKS: ApStacks = ApStacks([[0; AP_STACK_SIZE]; MAX_CPUS]);

/// The stack top and index of the AP being started (read by the trampoline).
#[no_mangle]
static AP_STACK_TOP: AtomicU64 = AtomicU64::new(0);
#[no_mangle]
static AP_INDEX: AtomicU64 = AtomicU64::new(0);
/// CPUs running, BSP included.
static CPUS_UP: AtomicU32 = AtomicU32::new(1);

// The AP start-up page, linked at layout::AP_TRAMPOLINE (link.ld `.ap_trampoline`).
global_asm!(
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
    code32 = const layout::SEL_CODE32,
    code64 = const layout::SEL_CODE64,
    data = const layout::SEL_DATA,
    pml4 = const layout::PML4,
    gdt_limit = const layout::GDT_LIMIT,
    gdt = const layout::GDT,
    ap_main = sym ap_main,
    options(att_syntax),
);

extern "C" fn ap_main(index: u64) -> ! {
    println!("cpu {index} up");
    CPUS_UP.fetch_add(1, Ordering::SeqCst);
    halt_forever()
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

fn wait_for(count: u32) -> bool {
    for _ in 0..200_000_000u32 {
        if CPUS_UP.load(Ordering::SeqCst) >= count {
            return true;
        }
        core::hint::spin_loop();
    }
    false
}

#[no_mangle]
extern "C" fn guest_main() {
    serial::init();
    let cpus = if fw_cfg::present() {
        let mut n = [0u8; 2];
        fw_cfg::select(fw_cfg::KEY_NB_CPUS);
        fw_cfg::read(&mut n);
        usize::from(u16::from_le_bytes(n)).max(1)
    } else {
        1
    };
    if cpus > MAX_CPUS {
        println!("smp: {cpus} vCPUs, starting the first {MAX_CPUS}");
    }
    // Software-enable the local APIC (spurious vector 0xFF).
    // SAFETY: the xAPIC page is mapped and is not RAM.
    unsafe { mmio_write32(LAPIC_SVR, 0x1FF) };
    let stacks = (&raw const AP_STACKS) as u64;
    for k in 1..cpus.min(MAX_CPUS) {
        let top = stacks + ((k + 1) * AP_STACK_SIZE) as u64;
        AP_STACK_TOP.store(top, Ordering::SeqCst);
        AP_INDEX.store(k as u64, Ordering::SeqCst);
        let want = CPUS_UP.load(Ordering::SeqCst) + 1;
        send_ipi(k as u32, ICR_INIT);
        send_ipi(k as u32, ICR_STARTUP | SIPI_VECTOR);
        send_ipi(k as u32, ICR_STARTUP | SIPI_VECTOR);
        if !wait_for(want) {
            println!("smp: cpu {k} did not start");
            break; // a late AP would take the next one's stack
        }
    }
    println!("smp: {} cpus", CPUS_UP.load(Ordering::SeqCst));
}
