//! A 16550A UART at COM1 (0x3F8–0x3FF) with its interrupt output on ISA IRQ 4.
//!
//! Registers per the National Semiconductor PC16550D data sheet: RBR/THR/DLL (+0), IER/DLM
//! (+1), IIR/FCR (+2), LCR (+3), MCR (+4), LSR (+5), MSR (+6), SCR (+7). Output goes to the
//! session console; input comes from the session's bounded input queue.
//!
//! Interrupts (data sheet, "Interrupt Identification Register" and Table IV "Interrupt
//! Control Functions"): two sources exist here, received data available (IER bit 0; set
//! while input is queued, cleared by reading RBR until the queue is empty) and transmitter
//! holding register empty (IER bit 1; set by a THR write — the byte leaves at once, so THR
//! is empty again — and when ETBEI goes from 0 to 1 with THR empty, as QEMU's
//! `hw/char/serial.c` does; cleared by reading IIR when THRE is its source, by writing THR
//! or by clearing ETBEI). Receiver line status (no errors occur) and modem status (the lines
//! never change) never interrupt. The INTR output is high while an enabled source is
//! pending: [`Serial::interrupt`]. The devices drive IRQ 4 from it on level changes only
//! (`super::Devices`); OUT2 does not gate it (as QEMU's UART).

use super::console::Console;

/// COM1 base port.
pub const COM1: u16 = 0x3F8;
/// COM1's ISA IRQ (the PC convention; Linux's `SERIAL_PORT_DFNS`).
pub const COM1_IRQ: u32 = 4;

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

    /// Guest `out` at register `off` (0..=7): `data` holds one or more accesses of `size`
    /// bytes (several for `rep outs`). An access covers consecutive ports: byte `i` of it
    /// goes to register `off + i` (a 16-bit `out` to THR writes THR, then IER); bytes past
    /// SCR are ignored.
    pub fn write(&mut self, off: u16, size: usize, data: &[u8], console: &Console) {
        if off == 0 && size == 1 && self.lcr & LCR_DLAB == 0 {
            // `rep outsb` to THR: every byte is a THR write, handed to the console at once.
            if !data.is_empty() {
                console.output(data);
                self.thre_pending = true;
            }
            return;
        }
        for access in data.chunks(size.max(1)) {
            for (reg, &v) in (off..=7).zip(access) {
                self.write_reg(reg, v, console);
            }
        }
    }

    /// One guest write of `v` to register `off`.
    fn write_reg(&mut self, off: u16, v: u8, console: &Console) {
        let dlab = self.lcr & LCR_DLAB != 0;
        match off {
            0 if dlab => self.dll = v,
            0 => {
                console.output(&[v]);
                self.thre_pending = true;
            }
            1 if dlab => self.dlm = v,
            1 => {
                let was = self.ier;
                self.ier = v & 0x0F;
                if (was ^ self.ier) & IER_THRE != 0 {
                    // ETBEI rising with THR empty (always): THRE pending; falling: none.
                    self.thre_pending = self.ier & IER_THRE != 0;
                }
            }
            2 => self.fifo = v & 1 != 0,
            3 => self.lcr = v,
            4 => self.mcr = v & 0x1F,
            7 => self.scr = v,
            _ => {} // LSR/MSR writes are ignored (factory test only).
        }
    }

    /// Whether the INTR output is asserted: an enabled interrupt source is pending (module
    /// doc).
    pub fn interrupt(&self, console: &Console) -> bool {
        (self.ier & IER_RDA != 0 && console.input_ready())
            || (self.ier & IER_THRE != 0 && self.thre_pending)
    }

    /// Guest `in` at register `off` (0..=7) into `data`: one or more accesses of `size` bytes.
    /// KVM hands a `rep insb` over as one exit with `count` bytes: each is one register read
    /// (so each takes the next input byte from RBR). Byte `i` of a wider access reads
    /// register `off + i` (a 16-bit `in` from RBR reads RBR, then IER); bytes past SCR read
    /// all-ones.
    pub fn read(&mut self, off: u16, size: usize, data: &mut [u8], console: &Console) {
        for access in data.chunks_mut(size.max(1)) {
            access.fill(0xFF);
            for (reg, b) in (off..=7).zip(access.iter_mut()) {
                *b = self.read_one(reg, console);
            }
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
        s.write(0, 1, b"h", &c);
        s.write(0, 1, b"i!", &c); // rep outsb
        assert_eq!(c.captured(), b"hi!");
        let mut b = [0u8; 1];
        s.read(5, 1, &mut b, &c);
        assert_eq!(b[0] & (LSR_THRE | LSR_TEMT), LSR_THRE | LSR_TEMT);
        assert_eq!(b[0] & LSR_DR, 0);
        s.write(3, 1, &[0x83], &c);
        s.write(0, 1, &[0x01], &c);
        s.write(1, 1, &[0x00], &c);
        s.read(0, 1, &mut b, &c);
        assert_eq!(b[0], 1);
        s.write(3, 1, &[0x03], &c);
        s.write(7, 1, &[0x5A], &c);
        s.read(7, 1, &mut b, &c);
        assert_eq!(b[0], 0x5A);
        s.read(2, 1, &mut b, &c);
        assert_eq!(b[0], IIR_NONE);
        s.write(1, 1, &[IER_THRE], &c);
        s.read(2, 1, &mut b, &c);
        assert_eq!(b[0], IIR_THRE);
        s.read(2, 1, &mut b, &c);
        assert_eq!(b[0], IIR_NONE);
        // Empty accesses are ignored.
        s.write(0, 1, &[], &c);
        s.read(0, 1, &mut [], &c);
        assert_eq!(c.captured(), b"hi!");
    }

    /// INTR for every IER / IIR transition (PC16550D Table IV; module doc).
    #[test]
    fn interrupt_output_follows_ier_and_iir() {
        let c = Console::capture(64);
        let mut s = Serial::new();
        let iir = |s: &mut Serial| {
            let mut b = [0u8];
            s.read(2, 1, &mut b, &c);
            b[0]
        };
        // Reset: nothing enabled, nothing pending.
        assert!(!s.interrupt(&c));
        // A byte sent with ETBEI off: no interrupt.
        s.write(0, 1, b"a", &c);
        assert!(!s.interrupt(&c));
        assert_eq!(iir(&mut s), IIR_NONE);
        // ETBEI 0 -> 1 with THR empty: THRE pending, INTR high.
        s.write(1, 1, &[IER_THRE], &c);
        assert!(s.interrupt(&c));
        // Rewriting IER with ETBEI still set does not re-arm once cleared.
        assert_eq!(iir(&mut s), IIR_THRE);
        assert!(!s.interrupt(&c));
        s.write(1, 1, &[IER_THRE], &c);
        assert!(!s.interrupt(&c));
        assert_eq!(iir(&mut s), IIR_NONE);
        // A THR write: THR empty again at once, INTR high; the IIR read clears it.
        s.write(0, 1, b"b", &c);
        assert!(s.interrupt(&c));
        assert_eq!(iir(&mut s), IIR_THRE);
        assert!(!s.interrupt(&c));
        // ETBEI 1 -> 0 clears a pending THRE without an IIR read; 0 -> 1 raises it again.
        s.write(0, 1, b"c", &c);
        assert!(s.interrupt(&c));
        s.write(1, 1, &[0], &c);
        assert!(!s.interrupt(&c));
        s.write(1, 1, &[IER_THRE], &c);
        assert!(s.interrupt(&c));
        s.write(1, 1, &[0], &c);
        // Received data: INTR only with ERBFI, until RBR has handed out the last byte.
        c.push_input(b"xy");
        assert!(!s.interrupt(&c));
        s.write(1, 1, &[IER_RDA], &c);
        assert!(s.interrupt(&c));
        assert_eq!(iir(&mut s), IIR_RDA);
        assert!(s.interrupt(&c), "reading IIR does not clear RDA");
        let mut b = [0u8];
        s.read(0, 1, &mut b, &c);
        assert!(s.interrupt(&c), "one byte left");
        s.read(0, 1, &mut b, &c);
        assert!(!s.interrupt(&c));
        assert_eq!(iir(&mut s), IIR_NONE);
        // Both enabled: RDA has priority in IIR; THRE stays pending behind it.
        s.write(1, 1, &[IER_RDA | IER_THRE], &c);
        c.push_input(b"z");
        assert_eq!(iir(&mut s), IIR_RDA);
        s.read(0, 1, &mut b, &c);
        assert!(s.interrupt(&c), "THRE still pending");
        assert_eq!(iir(&mut s), IIR_THRE);
        assert!(!s.interrupt(&c));
        // Modem-status and line-status enables alone never interrupt.
        s.write(1, 1, &[0x0C], &c);
        s.write(0, 1, b"d", &c);
        assert!(!s.interrupt(&c));
        // DLAB set: offset 1 is DLM, not IER.
        s.write(3, 1, &[LCR_DLAB], &c);
        s.write(1, 1, &[IER_THRE], &c);
        s.write(3, 1, &[0x03], &c);
        assert!(!s.interrupt(&c));
    }

    #[test]
    fn input_bytes_are_read_through_rbr() {
        let c = Console::capture(64);
        c.push_input(b"ok");
        let mut s = Serial::new();
        let mut b = [0u8; 1];
        s.read(5, 1, &mut b, &c);
        assert_eq!(b[0] & LSR_DR, LSR_DR);
        s.read(0, 1, &mut b, &c);
        assert_eq!(b[0], b'o');
        s.read(0, 1, &mut b, &c);
        assert_eq!(b[0], b'k');
        s.read(5, 1, &mut b, &c);
        assert_eq!(b[0] & LSR_DR, 0);
    }

    #[test]
    fn rep_insb_reads_one_byte_per_element() {
        let c = Console::capture(64);
        c.push_input(b"abc");
        let mut s = Serial::new();
        let mut b = [0xEEu8; 5];
        s.read(0, 1, &mut b, &c);
        assert_eq!(&b, b"abc\0\0");
        assert!(!c.input_ready());
        // Every byte of a multi-byte LSR read is the LSR.
        let mut l = [0u8; 3];
        s.read(5, 1, &mut l, &c);
        assert_eq!(l, [LSR_THRE | LSR_TEMT; 3]);
    }

    #[test]
    fn wide_accesses_cover_consecutive_registers() {
        let c = Console::capture(64);
        c.push_input(b"xy");
        let mut s = Serial::new();
        // outw to THR: the low byte to THR, the high byte to IER.
        s.write(0, 2, &[b'A', IER_THRE], &c);
        assert_eq!(c.captured(), b"A");
        let mut b = [0u8];
        s.read(1, 1, &mut b, &c);
        assert_eq!(b[0], IER_THRE);
        // inw from RBR: RBR (the next input byte), then IER.
        let mut w = [0u8; 2];
        s.read(0, 2, &mut w, &c);
        assert_eq!(w, [b'x', IER_THRE]);
        // rep outsw to THR: two accesses, each THR + IER.
        s.write(0, 2, &[b'B', 0, b'C', IER_RDA], &c);
        assert_eq!(c.captured(), b"ABC");
        s.read(1, 1, &mut b, &c);
        assert_eq!(b[0], IER_RDA);
        // rep insw from RBR: RBR + IER per access; the queue then reads 0.
        let mut ww = [0u8; 4];
        s.read(0, 2, &mut ww, &c);
        assert_eq!(ww, [b'y', IER_RDA, 0, IER_RDA]);
        // outw with DLAB set programs DLL and DLM; outl at LCR sets LCR, MCR, LSR (ignored)
        // and MSR (ignored).
        s.write(3, 1, &[LCR_DLAB | 0x03], &c);
        s.write(0, 2, &[0x34, 0x12], &c);
        s.read(0, 2, &mut w, &c);
        assert_eq!(w, [0x34, 0x12]);
        s.write(3, 4, &[0x03, 0x0B, 0xFF, 0xFF], &c);
        let mut l = [0u8; 4];
        s.read(3, 4, &mut l, &c);
        assert_eq!(l, [0x03, 0x0B, LSR_THRE | LSR_TEMT, MSR_CONNECTED]);
        // An access running past SCR: the extra bytes are ignored / read all-ones.
        s.write(7, 2, &[0x5A, 0x77], &c);
        s.read(7, 2, &mut w, &c);
        assert_eq!(w, [0x5A, 0xFF]);
        assert_eq!(c.captured(), b"ABC");
    }
}
