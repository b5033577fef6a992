//! COM1, a 16550 UART at I/O port 0x3F8 (THR 0x3F8, LSR 0x3FD bit 5 = THR empty).

use crate::io::{inb, outb};

/// COM1 base port.
pub const COM1: u16 = 0x3F8;
const THR: u16 = COM1;
const IER: u16 = COM1 + 1;
const FCR: u16 = COM1 + 2;
const LCR: u16 = COM1 + 3;
const MCR: u16 = COM1 + 4;
const LSR: u16 = COM1 + 5;
const LSR_THR_EMPTY: u8 = 1 << 5;
/// How often to poll LSR before writing anyway (a VMM may not model LSR at all).
const SPIN: u32 = 100_000;

/// Programs 115200 8N1, FIFOs on, interrupts off. Also undoes anything written to the
/// UART's registers before (the junk guest calls it again after its register junk).
pub fn init() {
    outb(IER, 0);
    outb(LCR, 0x80); // DLAB: divisor latch
    outb(COM1, 1); // divisor 1 = 115200 baud
    outb(COM1 + 1, 0);
    outb(LCR, 0x03); // 8N1, DLAB off
    outb(FCR, 0xC7);
    outb(MCR, 0x03); // DTR, RTS
}

/// Writes one byte once THR is empty (or after a bounded wait).
pub fn write_byte(b: u8) {
    let mut n = 0;
    while inb(LSR) & LSR_THR_EMPTY == 0 && n < SPIN {
        n += 1;
        core::hint::spin_loop();
    }
    outb(THR, b);
}

/// COM1 as a `core::fmt::Write` sink (for `print!`).
pub struct Com1;

impl core::fmt::Write for Com1 {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        s.bytes().for_each(write_byte);
        Ok(())
    }
}
