//! The ACPI PM1a register blocks the FADT of `relaunch pack --kernel` describes
//! (`crate::pack::acpi`), as ACPI fixed hardware (ACPI 6.5 §4.8.3):
//!
//! - event block at 0x600: PM1_STS (+0, 16 bits, write 1 to clear: §4.8.3.1.1) and PM1_EN
//!   (+2, 16 bits, read/write: §4.8.3.1.2). No event source exists (no PM timer, power or
//!   sleep button, RTC, wake), so no status bit is ever set and the SCI is never raised;
//!   PM1_EN keeps what the guest enables, defined bits only.
//! - control block at 0x604: PM1_CNT (§4.8.3.2.1). SCI_EN (bit 0) always reads 1: the FADT's
//!   SMI_CMD is 0, so the platform is always in ACPI mode. SLP_TYP (bits 12:10) and BM_RLD
//!   (bit 1) read back what was written; GBL_RLS (bit 2) and SLP_EN (bit 13) are write-only
//!   and read 0. Writing SLP_EN powers off, whatever SLP_TYP (the DSDT's `\_S5` says 0).
//!
//! Each block takes accesses of any width at any of its ports, byte by byte (byte `i` of an
//! access at port P goes to P + i); bytes past the block are ignored and read all-ones. The
//! two blocks are separate: an access starting in the event block never reaches PM1_CNT.

/// PM1a event block: PM1_STS.
pub const PORT_PM1A_EVT: u16 = crate::pack::acpi::PM1A_EVT_BLK;
/// Last port of the event block.
pub const PORT_PM1A_EVT_END: u16 = PORT_PM1A_EVT + crate::pack::acpi::PM1_EVT_LEN as u16 - 1;
/// PM1a control block: PM1_CNT.
pub const PORT_PM1A_CNT: u16 = crate::pack::acpi::PM1A_CNT_BLK;
/// Last port of the control block.
pub const PORT_PM1A_CNT_END: u16 = PORT_PM1A_CNT + crate::pack::acpi::PM1_CNT_LEN as u16 - 1;

/// PM1_CNT.SCI_EN (ACPI 6.5 §4.8.3.2.1).
pub const SCI_EN: u16 = 1 << 0;
/// PM1_CNT.BM_RLD.
pub const BM_RLD: u16 = 1 << 1;
/// PM1_CNT.SLP_TYP (bits 12:10).
pub const SLP_TYP: u16 = 0b111 << 10;
/// PM1_CNT.SLP_EN.
pub const SLP_EN: u16 = 1 << 13;
/// PM1_EN bits defined by ACPI 6.5 §4.8.3.1.2 (TMR_EN 0, GBL_EN 5, PWRBTN_EN 8,
/// SLPBTN_EN 9, RTC_EN 10, PCIEXP_WAKE_DIS 14).
pub const PM1_EN_DEFINED: u16 = (1 << 0) | (1 << 5) | (1 << 8) | (1 << 9) | (1 << 10) | (1 << 14);

/// PM1a register state of one launch.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pm1 {
    /// PM1_STS: never set by anything (module doc), cleared by writing ones.
    sts: u16,
    en: u16,
    /// PM1_CNT bits that read back (BM_RLD, SLP_TYP).
    cnt: u16,
}

impl Pm1 {
    /// Reset state: no status, nothing enabled, SLP_TYP 0.
    pub fn new() -> Pm1 {
        Pm1::default()
    }

    fn read_byte(&self, port: u16) -> u8 {
        let cnt = self.cnt | SCI_EN;
        match port.wrapping_sub(PORT_PM1A_EVT) {
            0 => self.sts.to_le_bytes()[0],
            1 => self.sts.to_le_bytes()[1],
            2 => self.en.to_le_bytes()[0],
            3 => self.en.to_le_bytes()[1],
            4 => cnt.to_le_bytes()[0],
            5 => cnt.to_le_bytes()[1],
            _ => 0xFF,
        }
    }

    /// Writes `v` to the byte at `port`; true when it sets SLP_EN.
    fn write_byte(&mut self, port: u16, v: u8) -> bool {
        let (lo, hi) = (u16::from(v), u16::from(v) << 8);
        match port.wrapping_sub(PORT_PM1A_EVT) {
            // Write 1 to clear.
            0 => self.sts &= !lo,
            1 => self.sts &= !hi,
            2 => self.en = (self.en & 0xFF00) | (lo & PM1_EN_DEFINED),
            3 => self.en = (self.en & 0x00FF) | (hi & PM1_EN_DEFINED),
            4 => self.cnt = (self.cnt & 0xFF00) | (lo & BM_RLD),
            5 => {
                self.cnt = (self.cnt & 0x00FF) | (hi & SLP_TYP);
                return hi & SLP_EN != 0;
            }
            _ => {}
        }
        false
    }

    /// The last port of the block `port` is in.
    fn block_end(port: u16) -> u16 {
        if port <= PORT_PM1A_EVT_END {
            PORT_PM1A_EVT_END
        } else {
            PORT_PM1A_CNT_END
        }
    }

    /// One guest `in` access at `port` (0x600..=0x605) into `data`.
    pub fn read(&self, port: u16, data: &mut [u8]) {
        let end = Pm1::block_end(port);
        for (i, b) in data.iter_mut().enumerate() {
            *b = match port.checked_add(i as u16) {
                Some(p) if p <= end && i < 0x10 => self.read_byte(p),
                _ => 0xFF,
            };
        }
    }

    /// One guest `out` access of `data` at `port` (0x600..=0x605); true when it powers off
    /// (SLP_EN written).
    pub fn write(&mut self, port: u16, data: &[u8]) -> bool {
        let end = Pm1::block_end(port);
        let mut off = false;
        for (i, &v) in data.iter().enumerate() {
            match port.checked_add(i as u16) {
                Some(p) if p <= end && i < 0x10 => off |= self.write_byte(p, v),
                _ => break,
            }
        }
        off
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rd(p: &Pm1, port: u16, n: usize) -> Vec<u8> {
        let mut b = vec![0u8; n];
        p.read(port, &mut b);
        b
    }

    #[test]
    fn sci_en_always_set_and_slp_typ_reads_back() {
        let mut p = Pm1::new();
        assert_eq!(rd(&p, 0x604, 2), [0x01, 0x00]);
        // ACPICA's read-modify-write: SLP_TYP 5 without SLP_EN, then with it.
        assert!(!p.write(0x604, &(5u16 << 10).to_le_bytes()));
        assert_eq!(
            u16::from_le_bytes(rd(&p, 0x604, 2).try_into().unwrap()),
            (5 << 10) | SCI_EN
        );
        assert!(p.write(0x604, &((5u16 << 10) | SLP_EN).to_le_bytes()));
        // Write-only bits read 0; BM_RLD reads back; SCI_EN cannot be cleared.
        assert!(!p.write(0x604, &[0xFE, 0x00]));
        assert_eq!(rd(&p, 0x604, 2), [0x03, 0x00]);
        // Byte accesses: SLP_EN is bit 5 of 0x605.
        assert!(p.write(0x605, &[0x20]));
        assert!(!p.write(0x604, &[0x20]));
        assert_eq!(rd(&p, 0x605, 1), [0x00]);
        // Past the control block: ignored, all-ones.
        assert_eq!(rd(&p, 0x604, 4), [0x01, 0x00, 0xFF, 0xFF]);
    }

    #[test]
    fn event_block_status_is_write_one_to_clear_and_enable_is_stored() {
        let mut p = Pm1 {
            sts: 0x8001,
            ..Pm1::new()
        };
        assert_eq!(rd(&p, 0x600, 2), [0x01, 0x80]);
        // Writing zeros clears nothing; ones clear.
        p.write(0x600, &[0x00, 0x00]);
        assert_eq!(rd(&p, 0x600, 2), [0x01, 0x80]);
        p.write(0x600, &[0x00, 0x80]);
        assert_eq!(rd(&p, 0x600, 2), [0x01, 0x00]);
        p.write(0x600, &[0xFF, 0xFF]);
        assert_eq!(rd(&p, 0x600, 2), [0, 0]);
        // PM1_EN: defined bits only (PWRBTN_EN | TMR_EN | GBL_EN; bit 1 is reserved).
        p.write(0x602, &[0x23, 0x01]);
        assert_eq!(rd(&p, 0x602, 2), [0x21, 0x01]);
        // A 32-bit access covers STS and EN; it never reaches PM1_CNT.
        assert_eq!(rd(&p, 0x600, 4), [0, 0, 0x21, 0x01]);
        assert!(!p.write(0x602, &[0, 0, 0xFF, 0xFF]));
        assert_eq!(rd(&p, 0x602, 4), [0, 0, 0xFF, 0xFF]);
        assert_eq!(rd(&p, 0x604, 2), [0x01, 0x00]);
    }
}
