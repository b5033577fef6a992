//! A 16550A UART at COM1 (0x3F8–0x3FF), polled (no interrupt line is raised).
//!
//! Registers per the National Semiconductor PC16550D data sheet: RBR/THR/DLL (+0), IER/DLM
//! (+1), IIR/FCR (+2), LCR (+3), MCR (+4), LSR (+5), MSR (+6), SCR (+7). Output goes to the
//! session console; input comes from the session's bounded input queue.

use super::console::Console;

/// COM1 base port.
pub const COM1: u16 = 0x3F8;

const LSR_DR: u8 = 1 << 0;
const LSR_THRE: u8 = 1 << 5;
const LSR_TEMT: u8 = 1 << 6;
const LCR_DLAB: u8 = 1 << 7;
const IER_RDA: u8 = 1 << 0;
const IER_THRE: u8 = 1 << 1;
const IIR_NONE: u8 = 0x01;
const IIR_THRE: u8 = 0x02;
const IIR_RDA: u8 = 0x04;
const IIR_FIFO: u8 = 0xC0;
/// MSR with DCD, DSR and CTS asserted (a connected terminal).
const MSR_CONNECTED: u8 = 0xB0;

/// UART register state of one launch (a relaunch resets the UART).
#[derive(Debug, Default)]
pub struct Serial {
    ier: u8,
    lcr: u8,
    mcr: u8,
    scr: u8,
    dll: u8,
    dlm: u8,
    fifo: bool,
    thre_pending: bool,
}

impl Serial {
    /// A UART in its reset state.
    pub fn new() -> Serial {
        Serial {
            dll: 0x0C, // 9600 baud, as after BIOS init.
            ..Serial::default()
        }
    }

    /// Guest `out` of `data` at register `off` (0..=7).
    pub fn write(&mut self, off: u16, data: &[u8], console: &Console) {
        let Some(&v) = data.first() else { return };
        let dlab = self.lcr & LCR_DLAB != 0;
        match off {
            0 if dlab => self.dll = v,
            0 => {
                // `rep outsb` delivers several bytes at once: every one is a THR write.
                console.output(data);
                self.thre_pending = true;
            }
            1 if dlab => self.dlm = v,
            1 => {
                self.ier = v & 0x0F;
                self.thre_pending = self.ier & IER_THRE != 0;
            }
            2 => self.fifo = v & 1 != 0,
            3 => self.lcr = v,
            4 => self.mcr = v & 0x1F,
            7 => self.scr = v,
            _ => {} // LSR/MSR writes are ignored (factory test only).
        }
    }

    /// Guest `in` at register `off` (0..=7) into `data`. KVM hands a `rep insb` over as one
    /// exit with `count` bytes: like `rep outsb` on THR, every byte is one register read (so
    /// each takes the next input byte from RBR).
    pub fn read(&mut self, off: u16, data: &mut [u8], console: &Console) {
        for b in data.iter_mut() {
            *b = self.read_one(off, console);
        }
    }

    /// One guest read of register `off`.
    fn read_one(&mut self, off: u16, console: &Console) -> u8 {
        let dlab = self.lcr & LCR_DLAB != 0;
        match off {
            0 if dlab => self.dll,
            0 => console.input_byte().unwrap_or(0),
            1 if dlab => self.dlm,
            1 => self.ier,
            2 => {
                let fifo = if self.fifo { IIR_FIFO } else { 0 };
                let id = if self.ier & IER_RDA != 0 && console.input_ready() {
                    IIR_RDA
                } else if self.ier & IER_THRE != 0 && self.thre_pending {
                    // Reading IIR with THRE as the source clears it.
                    self.thre_pending = false;
                    IIR_THRE
                } else {
                    IIR_NONE
                };
                fifo | id
            }
            3 => self.lcr,
            4 => self.mcr,
            5 => {
                let dr = if console.input_ready() { LSR_DR } else { 0 };
                LSR_THRE | LSR_TEMT | dr
            }
            6 => MSR_CONNECTED,
            7 => self.scr,
            _ => 0xFF,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thr_lsr_dlab_scr() {
        let c = Console::capture(64);
        let mut s = Serial::new();
        s.write(0, b"h", &c);
        s.write(0, b"i!", &c);
        assert_eq!(c.captured(), b"hi!");
        let mut b = [0u8; 1];
        s.read(5, &mut b, &c);
        assert_eq!(b[0] & (LSR_THRE | LSR_TEMT), LSR_THRE | LSR_TEMT);
        assert_eq!(b[0] & LSR_DR, 0);
        s.write(3, &[0x83], &c);
        s.write(0, &[0x01], &c);
        s.write(1, &[0x00], &c);
        s.read(0, &mut b, &c);
        assert_eq!(b[0], 1);
        s.write(3, &[0x03], &c);
        s.write(7, &[0x5A], &c);
        s.read(7, &mut b, &c);
        assert_eq!(b[0], 0x5A);
        s.read(2, &mut b, &c);
        assert_eq!(b[0], IIR_NONE);
        s.write(1, &[IER_THRE], &c);
        s.read(2, &mut b, &c);
        assert_eq!(b[0], IIR_THRE);
        s.read(2, &mut b, &c);
        assert_eq!(b[0], IIR_NONE);
        // Empty accesses are ignored.
        s.write(0, &[], &c);
        s.read(0, &mut [], &c);
        assert_eq!(c.captured(), b"hi!");
    }

    #[test]
    fn input_bytes_are_read_through_rbr() {
        let c = Console::capture(64);
        c.push_input(b"ok");
        let mut s = Serial::new();
        let mut b = [0u8; 1];
        s.read(5, &mut b, &c);
        assert_eq!(b[0] & LSR_DR, LSR_DR);
        s.read(0, &mut b, &c);
        assert_eq!(b[0], b'o');
        s.read(0, &mut b, &c);
        assert_eq!(b[0], b'k');
        s.read(5, &mut b, &c);
        assert_eq!(b[0] & LSR_DR, 0);
    }

    #[test]
    fn rep_insb_reads_one_byte_per_element() {
        let c = Console::capture(64);
        c.push_input(b"abc");
        let mut s = Serial::new();
        let mut b = [0xEEu8; 5];
        s.read(0, &mut b, &c);
        assert_eq!(&b, b"abc\0\0");
        assert!(!c.input_ready());
        // Every byte of a multi-byte LSR read is the LSR.
        let mut l = [0u8; 3];
        s.read(5, &mut l, &c);
        assert_eq!(l, [LSR_THRE | LSR_TEMT; 3]);
    }
}
