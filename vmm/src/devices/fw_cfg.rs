//! QEMU-compatible fw_cfg (QEMU `docs/specs/fw_cfg.rst`): selector port 0x510 (16-bit),
//! data port 0x511, DMA address ports 0x514 (high half, big-endian) / 0x518 (low half,
//! big-endian; writing it starts the transfer).
//!
//! Items: `SIGNATURE` (0x0000, "QEMU"), `ID` (0x0001, 3 = traditional + DMA), `NB_CPUS`
//! (0x0005, u16 LE), `FILE_DIR` (0x0019, big-endian directory) and files from 0x0020 on,
//! sorted by name (as QEMU does): `etc/relaunch/generation` (u64 LE launch generation) plus
//! the session's `--fw-cfg` files. No file is guest-writable yet. A DMA request is checked
//! against guest memory before anything is copied; any failure sets the ERROR bit in the
//! request's control word — nothing the guest sends can make the VMM allocate or panic.

use crate::memory::GuestMemory;

/// Selector port.
pub const PORT_SELECTOR: u16 = 0x510;
/// Data port.
pub const PORT_DATA: u16 = 0x511;
/// DMA address, high 32 bits (big-endian).
pub const PORT_DMA_HIGH: u16 = 0x514;
/// DMA address, low 32 bits (big-endian); a write starts the transfer.
pub const PORT_DMA_LOW: u16 = 0x518;

/// `FW_CFG_SIGNATURE`.
pub const KEY_SIGNATURE: u16 = 0x0000;
/// `FW_CFG_ID`.
pub const KEY_ID: u16 = 0x0001;
/// `FW_CFG_NB_CPUS`.
pub const KEY_NB_CPUS: u16 = 0x0005;
/// `FW_CFG_FILE_DIR`.
pub const KEY_FILE_DIR: u16 = 0x0019;
/// `FW_CFG_FILE_FIRST`.
pub const KEY_FILE_FIRST: u16 = 0x0020;
/// `FW_CFG_ENTRY_MASK`: the selector bits naming the item (bit 14 was the legacy write
/// channel, bit 15 the arch-local flag; we have no arch-local items).
const KEY_MASK: u16 = 0x3FFF;
const KEY_ARCH_LOCAL: u16 = 0x8000;

/// `FW_CFG_ID` feature bits: traditional interface (bit 0) and DMA (bit 1).
pub const ID_FEATURES: u32 = 0b11;
/// The DMA signature read back from the DMA port ("QEMU CFG", big-endian).
pub const DMA_SIGNATURE: u64 = 0x5145_4D55_2043_4647;

/// DMA control bits (`FW_CFG_DMA_CTL_*`).
pub const DMA_ERROR: u32 = 1;
/// Read.
pub const DMA_READ: u32 = 2;
/// Skip.
pub const DMA_SKIP: u32 = 4;
/// Select (item in bits 31:16).
pub const DMA_SELECT: u32 = 8;
/// Write.
pub const DMA_WRITE: u32 = 16;

/// Name of the launch-generation file.
pub const FILE_GENERATION: &str = "etc/relaunch/generation";
/// Maximum file name length (FWCfgFile.name is 56 bytes, NUL-terminated).
pub const MAX_NAME: usize = 55;
/// Maximum number of user files (`--fw-cfg`).
pub const MAX_USER_FILES: usize = 16;
/// Maximum size of one user file.
pub const MAX_USER_FILE: usize = 4096;

/// The fw_cfg device of one launch.
#[derive(Debug)]
pub struct FwCfg {
    /// Items by key, sorted: fixed items then files.
    items: Vec<(u16, Vec<u8>)>,
    selected: Option<usize>,
    offset: usize,
    dma_high: u32,
    /// DMA requests that failed (for the launch event).
    pub dma_errors: u64,
}

impl FwCfg {
    /// The device for launch `generation` with `nb_cpus` vCPUs and extra `files` (name,
    /// contents; names already validated by [`validate_file`]).
    pub fn new(generation: u64, nb_cpus: u16, files: &[(String, Vec<u8>)]) -> FwCfg {
        let mut all: Vec<(&str, Vec<u8>)> =
            files.iter().map(|(n, d)| (n.as_str(), d.clone())).collect();
        all.push((FILE_GENERATION, generation.to_le_bytes().to_vec()));
        all.sort_by(|a, b| a.0.cmp(b.0));
        all.dedup_by(|a, b| a.0 == b.0);
        let mut dir = Vec::with_capacity(4 + 64 * all.len());
        dir.extend_from_slice(&(all.len() as u32).to_be_bytes());
        let mut items = vec![
            (KEY_SIGNATURE, b"QEMU".to_vec()),
            (KEY_ID, ID_FEATURES.to_le_bytes().to_vec()),
            (KEY_NB_CPUS, nb_cpus.to_le_bytes().to_vec()),
        ];
        let mut file_items = Vec::with_capacity(all.len());
        for (i, (name, data)) in all.into_iter().enumerate() {
            let key = KEY_FILE_FIRST.saturating_add(i as u16);
            // struct FWCfgFile { u32 size BE; u16 select BE; u16 reserved; char name[56]; }
            dir.extend_from_slice(&(data.len() as u32).to_be_bytes());
            dir.extend_from_slice(&key.to_be_bytes());
            dir.extend_from_slice(&[0, 0]);
            let mut n = [0u8; 56];
            let nb = name.as_bytes();
            let len = nb.len().min(MAX_NAME);
            if let (Some(dst), Some(src)) = (n.get_mut(..len), nb.get(..len)) {
                dst.copy_from_slice(src);
            }
            dir.extend_from_slice(&n);
            file_items.push((key, data));
        }
        items.push((KEY_FILE_DIR, dir));
        items.extend(file_items);
        items.sort_by_key(|(k, _)| *k);
        FwCfg {
            items,
            selected: None,
            offset: 0,
            dma_high: 0,
            dma_errors: 0,
        }
    }

    fn select(&mut self, key: u16) {
        self.offset = 0;
        self.selected = if key & KEY_ARCH_LOCAL != 0 {
            None
        } else {
            self.items
                .binary_search_by_key(&(key & KEY_MASK), |(k, _)| *k)
                .ok()
        };
    }

    fn current(&self) -> &[u8] {
        self.selected
            .and_then(|i| self.items.get(i))
            .map_or(&[], |(_, d)| d.as_slice())
    }

    fn next_byte(&mut self) -> u8 {
        match self.current().get(self.offset).copied() {
            Some(b) => {
                self.offset = self.offset.saturating_add(1);
                b
            }
            None => 0,
        }
    }

    /// Guest `in` at `port` (one of the fw_cfg ports).
    pub fn io_in(&mut self, port: u16, data: &mut [u8]) {
        match port {
            PORT_DATA => {
                for b in data.iter_mut() {
                    *b = self.next_byte();
                }
            }
            PORT_DMA_HIGH..=0x51B => {
                let sig = DMA_SIGNATURE.to_be_bytes();
                let start = usize::from(port - PORT_DMA_HIGH);
                for (i, b) in data.iter_mut().enumerate() {
                    *b = sig.get(start.saturating_add(i)).copied().unwrap_or(0);
                }
            }
            _ => data.fill(0),
        }
    }

    /// Guest `out` at `port`.
    pub fn io_out(&mut self, port: u16, data: &[u8], mem: &GuestMemory) {
        match (port, data.len()) {
            (PORT_SELECTOR, 1) => self.select(u16::from(data[0])),
            (PORT_SELECTOR, 2) => self.select(u16::from_le_bytes([data[0], data[1]])),
            (PORT_DMA_HIGH, 4) => {
                self.dma_high = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
            }
            (PORT_DMA_LOW, 4) => {
                let low = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
                let addr = (u64::from(self.dma_high) << 32) | u64::from(low);
                self.dma_high = 0;
                self.dma(addr, mem);
            }
            // Data-port writes are ignored (deprecated since QEMU 2.4); odd sizes too.
            _ => {}
        }
    }

    /// Runs the DMA request at guest-physical `addr` (`FWCfgDmaAccess`: control u32 BE,
    /// length u32 BE, address u64 BE) and writes the control word back: 0, or `DMA_ERROR`.
    fn dma(&mut self, addr: u64, mem: &GuestMemory) {
        let mut req = [0u8; 16];
        if mem.read(addr, &mut req).is_err() {
            // Nowhere to report the error: the request itself is not in guest memory.
            self.dma_errors = self.dma_errors.saturating_add(1);
            return;
        }
        let control = u32::from_be_bytes([req[0], req[1], req[2], req[3]]);
        let length = u32::from_be_bytes([req[4], req[5], req[6], req[7]]);
        let target = u64::from_be_bytes([
            req[8], req[9], req[10], req[11], req[12], req[13], req[14], req[15],
        ]);
        let ok = self.dma_transfer(control, length, target, mem);
        if !ok {
            self.dma_errors = self.dma_errors.saturating_add(1);
        }
        let status: u32 = if ok { 0 } else { DMA_ERROR };
        // The control word is at `addr` (checked readable above, so writable too).
        let _ = mem.write(addr, &status.to_be_bytes());
    }

    fn dma_transfer(&mut self, control: u32, length: u32, target: u64, mem: &GuestMemory) -> bool {
        if control & DMA_SELECT != 0 {
            self.select((control >> 16) as u16);
        }
        let len = u64::from(length);
        if control & DMA_READ != 0 {
            // Check the whole destination before copying anything: inside guest memory and
            // shared (DMA never touches a private page).
            if mem.shared_range(target, len).is_err() {
                return false;
            }
            let data = self.current();
            let avail = data.len().saturating_sub(self.offset);
            let n = avail.min(length as usize);
            let src = data
                .get(self.offset..self.offset.saturating_add(n))
                .unwrap_or(&[]);
            if mem.write(target, src).is_err() {
                return false;
            }
            // Past the end of the item: zeros (QEMU `fw_cfg_dma_transfer`).
            let rest = len.saturating_sub(n as u64);
            if rest > 0
                && mem
                    .fill_zero(target.saturating_add(n as u64), rest)
                    .is_err()
            {
                return false;
            }
            self.offset = self.offset.saturating_add(n);
            true
        } else if control & DMA_WRITE != 0 {
            // No guest-writable item exists.
            false
        } else if control & DMA_SKIP != 0 {
            let avail = self.current().len().saturating_sub(self.offset);
            self.offset = self.offset.saturating_add(avail.min(length as usize));
            true
        } else {
            true
        }
    }
}

/// Checks a `--fw-cfg` file name and contents: a name of 1..=55 printable ASCII bytes
/// starting with `opt/` (QEMU's namespace for user files), contents at most 4 KiB.
///
/// # Errors
/// A message naming the problem.
pub fn validate_file(name: &str, data: &[u8]) -> Result<(), String> {
    if !name.starts_with("opt/") {
        return Err(format!(
            "fw_cfg file name {name:?} must start with \"opt/\""
        ));
    }
    if name.len() > MAX_NAME || !name.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "fw_cfg file name {name:?} must be at most {MAX_NAME} printable ASCII characters"
        ));
    }
    if data.len() > MAX_USER_FILE {
        return Err(format!(
            "fw_cfg file {name:?} is {} bytes (at most {MAX_USER_FILE})",
            data.len()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::Region;
    use crate::sys::mem::GuestMapping;
    use std::sync::Arc;

    fn mem() -> GuestMemory {
        let mut m = GuestMemory::default();
        m.push(Region::shared(
            0,
            Arc::new(GuestMapping::anonymous(0x10000).unwrap()),
        ));
        m
    }

    fn read_item(f: &mut FwCfg, key: u16, n: usize, m: &GuestMemory) -> Vec<u8> {
        f.io_out(PORT_SELECTOR, &key.to_le_bytes(), m);
        let mut v = vec![0u8; n];
        f.io_in(PORT_DATA, &mut v);
        v
    }

    fn files() -> Vec<(String, Vec<u8>)> {
        vec![(
            "opt/relaunch/reboot-until".into(),
            5u64.to_le_bytes().to_vec(),
        )]
    }

    #[test]
    fn traditional_interface() {
        let m = mem();
        let mut f = FwCfg::new(7, 2, &files());
        assert_eq!(read_item(&mut f, KEY_SIGNATURE, 4, &m), b"QEMU");
        assert_eq!(read_item(&mut f, KEY_ID, 4, &m), 3u32.to_le_bytes());
        assert_eq!(read_item(&mut f, KEY_NB_CPUS, 2, &m), 2u16.to_le_bytes());
        let dir = read_item(&mut f, KEY_FILE_DIR, 4 + 2 * 64, &m);
        assert_eq!(&dir[..4], &2u32.to_be_bytes());
        // Sorted: etc/... before opt/...
        assert_eq!(&dir[4..8], &8u32.to_be_bytes());
        assert_eq!(&dir[8..10], &0x20u16.to_be_bytes());
        assert!(dir[12..].starts_with(b"etc/relaunch/generation\0"));
        assert_eq!(&dir[68 + 4..68 + 6], &0x21u16.to_be_bytes());
        assert!(dir[68 + 8..].starts_with(b"opt/relaunch/reboot-until\0"));
        assert_eq!(read_item(&mut f, 0x20, 8, &m), 7u64.to_le_bytes());
        assert_eq!(read_item(&mut f, 0x21, 10, &m)[..8], 5u64.to_le_bytes());
        // Past the end and unknown keys read zeros.
        assert_eq!(read_item(&mut f, 0x21, 10, &m)[8..], [0, 0]);
        assert_eq!(read_item(&mut f, 0x1234, 4, &m), [0; 4]);
        assert_eq!(read_item(&mut f, 0x8000, 4, &m), [0; 4]);
        let mut sig = [0u8; 4];
        f.io_in(PORT_DMA_HIGH, &mut sig);
        assert_eq!(&sig, b"QEMU");
        f.io_in(PORT_DMA_LOW, &mut sig);
        assert_eq!(&sig, b" CFG");
    }

    fn dma_req(m: &GuestMemory, at: u64, control: u32, len: u32, addr: u64) {
        let mut r = Vec::new();
        r.extend_from_slice(&control.to_be_bytes());
        r.extend_from_slice(&len.to_be_bytes());
        r.extend_from_slice(&addr.to_be_bytes());
        m.write(at, &r).unwrap();
    }

    fn kick(f: &mut FwCfg, m: &GuestMemory, at: u64) -> u32 {
        f.io_out(PORT_DMA_HIGH, &((at >> 32) as u32).to_be_bytes(), m);
        f.io_out(PORT_DMA_LOW, &(at as u32).to_be_bytes(), m);
        let mut c = [0u8; 4];
        m.read(at, &mut c).unwrap();
        u32::from_be_bytes(c)
    }

    #[test]
    fn dma_read_select_skip_and_errors() {
        let m = mem();
        let mut f = FwCfg::new(42, 1, &[]);
        m.write(0x2000, &[0xAA; 16]).unwrap();
        // SELECT generation + READ 12 bytes: 8 data bytes then 4 zeros.
        dma_req(&m, 0x1000, (0x20 << 16) | DMA_SELECT | DMA_READ, 12, 0x2000);
        assert_eq!(kick(&mut f, &m, 0x1000), 0);
        let mut b = [0u8; 16];
        m.read(0x2000, &mut b).unwrap();
        assert_eq!(&b[..8], &42u64.to_le_bytes());
        assert_eq!(&b[8..12], &[0; 4]);
        assert_eq!(&b[12..], &[0xAA; 4]);
        // SKIP 2 then READ 2 of the signature.
        dma_req(&m, 0x1000, DMA_SELECT | DMA_SKIP, 2, 0);
        assert_eq!(kick(&mut f, &m, 0x1000), 0);
        dma_req(&m, 0x1000, DMA_READ, 2, 0x3000);
        assert_eq!(kick(&mut f, &m, 0x1000), 0);
        let mut s = [0u8; 2];
        m.read(0x3000, &mut s).unwrap();
        assert_eq!(&s, b"MU");
        // Destination outside RAM, wrapping, huge: ERROR, nothing written.
        dma_req(&m, 0x1000, DMA_SELECT | DMA_READ, 8, 0xFFFF_FFFF_FFFF_FFF8);
        assert_eq!(kick(&mut f, &m, 0x1000), DMA_ERROR);
        dma_req(&m, 0x1000, DMA_SELECT | DMA_READ, u32::MAX, 0x8000);
        assert_eq!(kick(&mut f, &m, 0x1000), DMA_ERROR);
        // Writes are refused.
        dma_req(&m, 0x1000, (0x20 << 16) | DMA_SELECT | DMA_WRITE, 8, 0x2000);
        assert_eq!(kick(&mut f, &m, 0x1000), DMA_ERROR);
        // A request outside RAM is ignored (counted).
        let before = f.dma_errors;
        f.io_out(PORT_DMA_HIGH, &1u32.to_be_bytes(), &m);
        f.io_out(PORT_DMA_LOW, &0u32.to_be_bytes(), &m);
        assert_eq!(f.dma_errors, before + 1);
        // Odd-sized writes are ignored.
        f.io_out(PORT_DMA_LOW, &[1], &m);
        f.io_out(PORT_SELECTOR, &[1, 2, 3], &m);
    }

    #[test]
    fn file_validation() {
        assert!(validate_file("opt/x", b"1").is_ok());
        assert!(validate_file("etc/x", b"1").is_err());
        assert!(validate_file("opt/a b", b"1").is_err());
        assert!(validate_file(&format!("opt/{}", "x".repeat(60)), b"1").is_err());
        assert!(validate_file("opt/x", &[0; 5000]).is_err());
    }
}
