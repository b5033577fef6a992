//! `irq`: the UART's interrupt delivered end to end through KVM's in-kernel 8259 PIC.
//!
//! Serial output (native, one launch):
//! ```text
//! irq: start
//! irq: sent from the IRQ 4 handler
//! irq: 34 interrupts, 33 bytes from the handler
//! ```
//! The guest remaps the PIC pair to vectors 0x20..0x2F (8259A data sheet: ICW1..ICW4),
//! masks every line but IRQ 4, installs an IDT (exceptions report and crash; 0x20..0x27 go
//! to the IRQ handler), enables the UART's THR-empty interrupt (IER bit 1) and waits with
//! `sti; hlt`. Every interrupt's handler reads IIR (THRE, which lowers the line) and writes
//! the next byte of the second line to THR (THR empty again: the line rises, a new edge), then
//! sends the PIC an EOI; after the last byte it clears IER and the wait ends. The wait opens
//! an interrupt window (`sti; pause; cli`) at most [`WINDOWS`] times rather than `sti; hlt`,
//! so that a lost interrupt ends the test with `irq: only N interrupts` instead of a guest
//! halted for good (no other interrupt source is unmasked). The UART is never polled after
//! IER is set. The line goes through KVM's LINT0 (the BSP's LVT0 is ExtINT after reset,
//! KVM's `KVM_X86_QUIRK_LINT0_REENABLED`).
#![no_std]
#![no_main]

use core::arch::{asm, global_asm};
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use relaunch_guests::io::{inb, outb};
use relaunch_guests::{layout, power, println, serial};

/// The bytes the handler sends, one per THRE interrupt.
const MSG: &[u8] = b"irq: sent from the IRQ 4 handler\n";
/// COM1.
const COM1: u16 = 0x3F8;
/// Master / slave 8259A command and data ports.
const PIC1_CMD: u16 = 0x20;
const PIC1_DATA: u16 = 0x21;
const PIC2_CMD: u16 = 0xA0;
const PIC2_DATA: u16 = 0xA1;
/// The master's vector base (IRQ n = vector 0x20 + n).
const PIC1_BASE: u8 = 0x20;
/// The IDT: the scratch page `sevinfo` uses for its own (`layout::SEVINFO_IDT`).
const IDT: u64 = layout::SEVINFO_IDT;
/// Gates: 32 exceptions and the master PIC's 8 lines.
const GATES: u64 = 40;
/// Interrupt windows the wait opens at most (a few seconds here: PAUSE may exit to KVM).
const WINDOWS: u64 = 1_000_000;

static TAKEN: AtomicU32 = AtomicU32::new(0);
static SENT: AtomicU32 = AtomicU32::new(0);
static DONE: AtomicBool = AtomicBool::new(false);

// 40 stubs 16 bytes apart from `irq_vectors`, each pushing its vector. Exceptions (0..31)
// go to `irq_fault` (never returns). IRQs (32..39) go to `irq_entry`: the caller-saved
// registers are saved, the stack aligned to 16 for the call (the CPU's 40-byte frame, the
// vector and 9 registers leave RSP 8 off), `irq_handler(vector)` called, then everything
// restored and IRETQ. The target has no red zone and no SSE, so nothing else needs saving.
global_asm!(
    ".section .text.irq_stubs, \"ax\"",
    ".balign 16",
    ".global irq_vectors",
    "irq_vectors:",
    ".irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31",
    ".balign 16",
    "    push \\v",
    "    jmp irq_fault",
    ".endr",
    ".irp v, 32,33,34,35,36,37,38,39",
    ".balign 16",
    "    push \\v",
    "    jmp irq_entry",
    ".endr",
    "irq_fault:",
    "    mov rdi, [rsp]",
    "    and rsp, -16",
    "    call {fault}",
    "    ud2",
    "irq_entry:",
    "    push rax",
    "    push rcx",
    "    push rdx",
    "    push rsi",
    "    push rdi",
    "    push r8",
    "    push r9",
    "    push r10",
    "    push r11",
    "    mov rdi, [rsp + 72]",
    "    sub rsp, 8",
    "    call {handler}",
    "    add rsp, 8",
    "    pop r11",
    "    pop r10",
    "    pop r9",
    "    pop r8",
    "    pop rdi",
    "    pop rsi",
    "    pop rdx",
    "    pop rcx",
    "    pop rax",
    "    add rsp, 8",
    "    iretq",
    ".text",
    fault = sym irq_fault_report,
    handler = sym irq_handler,
);

/// An exception: reported, then the crash (pvpanic).
extern "C" fn irq_fault_report(vector: u64) -> ! {
    println!("irq: exception {vector}");
    power::report_panic()
}

/// The IRQ handler (interrupts are off: interrupt gates).
extern "C" fn irq_handler(vector: u64) {
    if vector == u64::from(PIC1_BASE) + 4 {
        TAKEN.fetch_add(1, Ordering::SeqCst);
        // IIR bits 3:0 = 0b0010: THR empty is the source (reading it clears it).
        if inb(COM1 + 2) & 0x0F == 0x02 {
            let i = SENT.load(Ordering::SeqCst) as usize;
            match MSG.get(i) {
                Some(&b) => {
                    outb(COM1, b);
                    SENT.store(i as u32 + 1, Ordering::SeqCst);
                }
                None => {
                    outb(COM1 + 1, 0);
                    DONE.store(true, Ordering::SeqCst);
                }
            }
        }
    }
    // Non-specific EOI (OCW2 0x20) to the master.
    outb(PIC1_CMD, 0x20);
}

/// The IDT at [`IDT`]: [`GATES`] 64-bit interrupt gates to the stubs.
fn install_idt() {
    let vectors: u64;
    // SAFETY: a RIP-relative address computation; no memory access.
    unsafe {
        asm!("lea {}, [rip + irq_vectors]", out(reg) vectors,
             options(nomem, nostack, preserves_flags))
    };
    for v in 0..GATES {
        let handler = vectors + 16 * v;
        // 64-bit interrupt gate (AMD APM Vol. 2 §4.8.4): offset 15:0, selector, IST 0, type
        // 0xE, DPL 0, P; offset 31:16; offset 63:32; reserved.
        let low = (handler & 0xFFFF)
            | (u64::from(layout::SEL_CODE64) << 16)
            | (0x8E00 << 32)
            | (((handler >> 16) & 0xFFFF) << 48);
        let gate = (IDT + 16 * v) as *mut u64;
        let gate_high = (IDT + 16 * v + 8) as *mut u64;
        // SAFETY: IDT is a scratch page (layout.rs) no other part of this guest uses,
        // identity-mapped, 16-byte aligned, GATES * 16 bytes long.
        unsafe { gate.write_volatile(low) };
        // SAFETY: as above.
        unsafe { gate_high.write_volatile(handler >> 32) };
    }
    let mut idtr = [0u8; 10];
    idtr[..2].copy_from_slice(&((GATES * 16 - 1) as u16).to_le_bytes());
    idtr[2..].copy_from_slice(&IDT.to_le_bytes());
    // SAFETY: the descriptor names the table just written, whose gates point at the stubs
    // above with this guest's 64-bit code selector.
    unsafe {
        asm!("lidt [{}]", in(reg) idtr.as_ptr(), options(readonly, nostack, preserves_flags))
    };
}

/// Remaps the PIC pair (master 0x20, slave 0x28) and unmasks IRQ 4 only (Intel 8259A data
/// sheet: ICW1 0x11 edge-triggered, cascade, ICW4 needed; ICW2 vector base; ICW3 slave on
/// IRQ 2 / slave ID 2; ICW4 0x01 8086 mode; OCW1 the mask).
fn init_pic() {
    outb(PIC1_CMD, 0x11);
    outb(PIC2_CMD, 0x11);
    outb(PIC1_DATA, PIC1_BASE);
    outb(PIC2_DATA, PIC1_BASE + 8);
    outb(PIC1_DATA, 0x04);
    outb(PIC2_DATA, 0x02);
    outb(PIC1_DATA, 0x01);
    outb(PIC2_DATA, 0x01);
    outb(PIC1_DATA, !(1u8 << 4));
    outb(PIC2_DATA, 0xFF);
}

#[no_mangle]
extern "C" fn guest_main() {
    serial::init();
    println!("irq: start");
    install_idt();
    init_pic();
    // IER: THR empty (ETBEI 0 -> 1 with THR empty raises the interrupt at once).
    outb(COM1 + 1, 0x02);
    let mut windows = 0;
    while !DONE.load(Ordering::SeqCst) && windows < WINDOWS {
        // SAFETY: enables interrupts for one instruction boundary (after PAUSE, which STI's
        // shadow covers), then disables them; the IDT and PIC are set up above.
        unsafe { asm!("sti", "pause", "cli", options(nomem, nostack)) };
        windows += 1;
    }
    if !DONE.load(Ordering::SeqCst) {
        outb(COM1 + 1, 0);
        println!("irq: only {} interrupts", TAKEN.load(Ordering::SeqCst));
        return;
    }
    println!(
        "irq: {} interrupts, {} bytes from the handler",
        TAKEN.load(Ordering::SeqCst),
        SENT.load(Ordering::SeqCst)
    );
}
