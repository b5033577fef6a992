//! QEMU-compatible fw_cfg (QEMU `docs/specs/fw_cfg.rst`): selector port 0x510 (16-bit),
//! data port 0x511, DMA address ports 0x514 (high half, big-endian) / 0x518 (low half,
//! big-endian; writing it starts the transfer).
//!
//! Items: `SIGNATURE` (0x0000, "QEMU"), `ID` (0x0001, 3 = traditional + DMA), `NB_CPUS`
//! (0x0005, u16 LE), `FILE_DIR` (0x0019, big-endian directory) and files from 0x0020 on,
//! sorted by name (as QEMU does): `etc/relaunch/generation` (u64 LE launch generation),
//! `etc/vmlaunchupdate` when the session has the vm-launch-update device
//! ([`super::launch_update`]), plus the session's `--fw-cfg` files. A DMA request is checked
//! against guest memory before anything is copied; any failure sets the ERROR bit in the
//! request's control word — nothing the guest sends can make the VMM allocate or panic.
//!
//! DMA writes (QEMU `fw_cfg_dma_transfer`): only `etc/vmlaunchupdate` is writable; a write
//! must fit in the file from the current offset (else ERROR, nothing written), its source
//! must be shared guest memory. The bytes are read under the devices lock, but the file's
//! write callback runs after it is released ([`PendingWrite`]): the vCPU thread that made
//! the request runs it before it re-enters the guest, then writes the control word.
//! `rep outs` to the DMA port that starts several requests processes the writes after the
//! instruction's other accesses.

use std::sync::Arc;

use super::launch_update::{self, LaunchUpdate};
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

/// An item's contents.
#[derive(Debug)]
enum Item {
    /// Fixed bytes (read-only).
    Bytes(Vec<u8>),
    /// `etc/vmlaunchupdate`: the session's device (readable and writable).
    LaunchUpdate,
}

/// The bytes of the selected item.
enum Data<'a> {
    Slice(&'a [u8]),
    File([u8; launch_update::SIZE]),
}

impl Data<'_> {
    fn bytes(&self) -> &[u8] {
        match self {
            Data::Slice(s) => s,
            Data::File(f) => f,
        }
    }
}

/// A DMA write to `etc/vmlaunchupdate`, read from the guest and bounds-checked, whose
/// processing waits until the devices lock is released (module doc).
#[derive(Debug)]
pub struct PendingWrite {
    device: Arc<LaunchUpdate>,
    at: usize,
    bytes: [u8; launch_update::SIZE],
    len: usize,
    /// Where the request's control word is.
    control_gpa: u64,
}

impl PendingWrite {
    /// Runs the file's write callback, then completes the DMA request (control word 0).
    /// Returns the status the device set.
    pub fn complete(self, mem: &GuestMemory) -> u16 {
        let bytes = self.bytes.get(..self.len).unwrap_or(&[]);
        let status = self.device.write(self.at, bytes, mem);
        // The request was in guest memory when it was read; if the guest made it private
        // meanwhile the completion is lost, which only the guest itself can notice.
        let _ = mem.write(self.control_gpa, &0u32.to_be_bytes());
        status
    }
}

/// The outcome of one DMA transfer.
enum Transfer {
    Done(bool),
    Write(PendingWrite),
}

/// The fw_cfg device of one launch.
#[derive(Debug)]
pub struct FwCfg {
    /// Items by key, sorted: fixed items then files.
    items: Vec<(u16, Item)>,
    selected: Option<usize>,
    offset: usize,
    dma_high: u32,
    launch_update: Option<Arc<LaunchUpdate>>,
    /// DMA requests that failed (for the launch event).
    pub dma_errors: u64,
}

impl FwCfg {
    /// The device for launch `generation` with `nb_cpus` vCPUs and extra `files` (name,
    /// contents; names already validated by [`validate_file`]).
    pub fn new(generation: u64, nb_cpus: u16, files: &[(String, Vec<u8>)]) -> FwCfg {
        FwCfg::with_launch_update(generation, nb_cpus, files, None)
    }

    /// [`FwCfg::new`], with the session's vm-launch-update device as `etc/vmlaunchupdate`
    /// when there is one.
    pub fn with_launch_update(
        generation: u64,
        nb_cpus: u16,
        files: &[(String, Vec<u8>)],
        launch_update: Option<Arc<LaunchUpdate>>,
    ) -> FwCfg {
        let mut all: Vec<(&str, Item)> = files
            .iter()
            .map(|(n, d)| (n.as_str(), Item::Bytes(d.clone())))
            .collect();
        all.push((
            FILE_GENERATION,
            Item::Bytes(generation.to_le_bytes().to_vec()),
        ));
        if launch_update.is_some() {
            all.push((launch_update::FILE_NAME, Item::LaunchUpdate));
        }
        all.sort_by(|a, b| a.0.cmp(b.0));
        all.dedup_by(|a, b| a.0 == b.0);
        let mut dir = Vec::with_capacity(4 + 64 * all.len());
        dir.extend_from_slice(&(all.len() as u32).to_be_bytes());
        let mut items = vec![
            (KEY_SIGNATURE, Item::Bytes(b"QEMU".to_vec())),
            (KEY_ID, Item::Bytes(ID_FEATURES.to_le_bytes().to_vec())),
            (KEY_NB_CPUS, Item::Bytes(nb_cpus.to_le_bytes().to_vec())),
        ];
        let mut file_items = Vec::with_capacity(all.len());
        for (i, (name, data)) in all.into_iter().enumerate() {
            let key = KEY_FILE_FIRST.saturating_add(i as u16);
            let size = match &data {
                Item::Bytes(b) => b.len(),
                Item::LaunchUpdate => launch_update::SIZE,
            };
            // struct FWCfgFile { u32 size BE; u16 select BE; u16 reserved; char name[56]; }
            dir.extend_from_slice(&(size as u32).to_be_bytes());
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
        items.push((KEY_FILE_DIR, Item::Bytes(dir)));
        items.extend(file_items);
        items.sort_by_key(|(k, _)| *k);
        FwCfg {
            items,
            selected: None,
            offset: 0,
            dma_high: 0,
            launch_update,
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
        // QEMU `fw_cfg_select` runs the item's select callback.
        if let (Some(Item::LaunchUpdate), Some(d)) = (self.selected_item(), &self.launch_update) {
            d.select();
        }
    }

    fn selected_item(&self) -> Option<&Item> {
        self.selected
            .and_then(|i| self.items.get(i))
            .map(|(_, d)| d)
    }

    fn current(&self) -> Data<'_> {
        match (self.selected_item(), &self.launch_update) {
            (Some(Item::Bytes(b)), _) => Data::Slice(b),
            (Some(Item::LaunchUpdate), Some(d)) => Data::File(d.read()),
            _ => Data::Slice(&[]),
        }
    }

    fn next_byte(&mut self) -> u8 {
        match self.current().bytes().get(self.offset).copied() {
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

    /// Guest `out` at `port`. A DMA write to `etc/vmlaunchupdate` comes back as a
    /// [`PendingWrite`] for the caller to complete once it has released the devices lock
    /// (the request's control word is written then).
    #[must_use = "a pending write must be completed"]
    pub fn io_out(&mut self, port: u16, data: &[u8], mem: &GuestMemory) -> Option<PendingWrite> {
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
                return self.dma(addr, mem);
            }
            // Data-port writes are ignored (deprecated since QEMU 2.4); odd sizes too.
            _ => {}
        }
        None
    }

    /// Runs the DMA request at guest-physical `addr` (`FWCfgDmaAccess`: control u32 BE,
    /// length u32 BE, address u64 BE) and writes the control word back: 0, or `DMA_ERROR` —
    /// or leaves it to the [`PendingWrite`] it returns.
    fn dma(&mut self, addr: u64, mem: &GuestMemory) -> Option<PendingWrite> {
        let mut req = [0u8; 16];
        if mem.read(addr, &mut req).is_err() {
            // Nowhere to report the error: the request itself is not in guest memory.
            self.dma_errors = self.dma_errors.saturating_add(1);
            return None;
        }
        let control = u32::from_be_bytes([req[0], req[1], req[2], req[3]]);
        let length = u32::from_be_bytes([req[4], req[5], req[6], req[7]]);
        let target = u64::from_be_bytes([
            req[8], req[9], req[10], req[11], req[12], req[13], req[14], req[15],
        ]);
        let ok = match self.dma_transfer(control, length, target, mem) {
            Transfer::Done(ok) => ok,
            Transfer::Write(mut w) => {
                w.control_gpa = addr;
                return Some(w);
            }
        };
        if !ok {
            self.dma_errors = self.dma_errors.saturating_add(1);
        }
        let status: u32 = if ok { 0 } else { DMA_ERROR };
        // The control word is at `addr` (checked readable above, so writable too).
        let _ = mem.write(addr, &status.to_be_bytes());
        None
    }

    fn dma_transfer(
        &mut self,
        control: u32,
        length: u32,
        target: u64,
        mem: &GuestMemory,
    ) -> Transfer {
        if control & DMA_SELECT != 0 {
            self.select((control >> 16) as u16);
        }
        let len = u64::from(length);
        if control & DMA_READ != 0 {
            // Check the whole destination before copying anything: inside guest memory and
            // shared (DMA never touches a private page).
            if mem.shared_range(target, len).is_err() {
                return Transfer::Done(false);
            }
            let data = self.current();
            let data = data.bytes();
            let avail = data.len().saturating_sub(self.offset);
            let n = avail.min(length as usize);
            let src = data
                .get(self.offset..self.offset.saturating_add(n))
                .unwrap_or(&[]);
            if mem.write(target, src).is_err() {
                return Transfer::Done(false);
            }
            // Past the end of the item: zeros (QEMU `fw_cfg_dma_transfer`).
            let rest = len.saturating_sub(n as u64);
            if rest > 0
                && mem
                    .fill_zero(target.saturating_add(n as u64), rest)
                    .is_err()
            {
                return Transfer::Done(false);
            }
            self.offset = self.offset.saturating_add(n);
            Transfer::Done(true)
        } else if control & DMA_WRITE != 0 {
            self.dma_write(length, target, mem)
        } else if control & DMA_SKIP != 0 {
            let avail = self.current().bytes().len().saturating_sub(self.offset);
            self.offset = self.offset.saturating_add(avail.min(length as usize));
            Transfer::Done(true)
        } else {
            Transfer::Done(true)
        }
    }

    /// A DMA write of `length` bytes from guest-physical `source` at the current offset
    /// (QEMU `fw_cfg_dma_transfer`): nothing to write succeeds; a read-only or unknown item,
    /// an offset at or past the end, a write that does not fit in the rest of the file
    /// (the offset still advances over that rest, as QEMU's) or a source outside shared
    /// guest memory is an ERROR and writes nothing.
    fn dma_write(&mut self, length: u32, source: u64, mem: &GuestMemory) -> Transfer {
        if length == 0 {
            return Transfer::Done(true);
        }
        let device = match (self.selected_item(), &self.launch_update) {
            (Some(Item::LaunchUpdate), Some(d)) => Arc::clone(d),
            _ => return Transfer::Done(false),
        };
        let avail = launch_update::SIZE.saturating_sub(self.offset);
        let len = length as usize;
        if avail == 0 {
            return Transfer::Done(false);
        }
        if len > avail {
            self.offset = self.offset.saturating_add(avail);
            return Transfer::Done(false);
        }
        let mut bytes = [0u8; launch_update::SIZE];
        let Some(buf) = bytes.get_mut(..len) else {
            return Transfer::Done(false);
        };
        if mem.read(source, buf).is_err() {
            return Transfer::Done(false);
        }
        let at = self.offset;
        self.offset = self.offset.saturating_add(len);
        Transfer::Write(PendingWrite {
            device,
            at,
            bytes,
            len,
            control_gpa: 0,
        })
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
        assert!(f.io_out(PORT_SELECTOR, &key.to_le_bytes(), m).is_none());
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
        assert!(f
            .io_out(PORT_DMA_HIGH, &((at >> 32) as u32).to_be_bytes(), m)
            .is_none());
        assert!(f
            .io_out(PORT_DMA_LOW, &(at as u32).to_be_bytes(), m)
            .is_none());
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
        assert!(f.io_out(PORT_DMA_HIGH, &1u32.to_be_bytes(), &m).is_none());
        assert!(f.io_out(PORT_DMA_LOW, &0u32.to_be_bytes(), &m).is_none());
        assert_eq!(f.dma_errors, before + 1);
        // Odd-sized writes are ignored.
        assert!(f.io_out(PORT_DMA_LOW, &[1], &m).is_none());
        assert!(f.io_out(PORT_SELECTOR, &[1, 2, 3], &m).is_none());
    }

    /// A session's vm-launch-update device over a native IGVM first launch.
    fn device() -> Arc<LaunchUpdate> {
        use crate::handover::tests::{igvm, native_config};
        let slot = Arc::new(crate::launch::LaunchSlot::new());
        let first = Arc::new(
            crate::launch::Launch::new(igvm(crate::testing::RESET, &[]), &native_config(0x10000))
                .unwrap(),
        );
        slot.start(&first, 1);
        let h = crate::handover::Handover::new(slot, native_config(0x10000), None, None);
        Arc::new(LaunchUpdate::new(Arc::new(h)))
    }

    /// `kick` for a request that may be deferred: completes it (as the vCPU thread does
    /// after releasing the devices lock) and returns the control word seen before and after.
    fn kick_write(f: &mut FwCfg, m: &GuestMemory, at: u64) -> (u32, u32) {
        assert!(f
            .io_out(PORT_DMA_HIGH, &((at >> 32) as u32).to_be_bytes(), m)
            .is_none());
        let pending = f.io_out(PORT_DMA_LOW, &(at as u32).to_be_bytes(), m);
        let word = |m: &GuestMemory| {
            let mut c = [0u8; 4];
            m.read(at, &mut c).unwrap();
            u32::from_be_bytes(c)
        };
        let before = word(m);
        if let Some(p) = pending {
            p.complete(m);
        }
        (before, word(m))
    }

    #[test]
    fn launch_update_file_is_listed_readable_and_writable() {
        let m = mem();
        let dev = device();
        let mut f = FwCfg::with_launch_update(3, 1, &files(), Some(Arc::clone(&dev)));
        // Directory: generation 0x20, etc/vmlaunchupdate 0x21 (56 bytes), opt/ 0x22.
        let dir = read_item(&mut f, KEY_FILE_DIR, 4 + 3 * 64, &m);
        assert_eq!(&dir[..4], &3u32.to_be_bytes());
        assert_eq!(&dir[68..72], &56u32.to_be_bytes());
        assert_eq!(&dir[72..74], &0x21u16.to_be_bytes());
        assert!(dir[76..].starts_with(b"etc/vmlaunchupdate\0"));
        assert!(dir[132 + 8..].starts_with(b"opt/relaunch/reboot-until\0"));
        // Read over the data port: version 1, status 0, capabilities FORMAT_IGVM.
        let b = read_item(&mut f, 0x21, 56, &m);
        assert_eq!(&b[..2], &1u16.to_le_bytes());
        assert_eq!(&b[8..16], &launch_update::FORMAT_IGVM.to_le_bytes());
        // DMA write of the whole structure with SELECT (control word left to the pending
        // write: 0 only once it is processed), then DMA read back.
        let regs = launch_update::Regs {
            opaque_addr: 0x9000,
            opaque_size: 0x100,
            ..launch_update::Regs::default()
        };
        m.write(0x2000, &regs.to_bytes()).unwrap();
        dma_req(
            &m,
            0x1000,
            (0x21 << 16) | DMA_SELECT | DMA_WRITE,
            56,
            0x2000,
        );
        let (before, after) = kick_write(&mut f, &m, 0x1000);
        assert_eq!(
            before,
            (0x21 << 16) | DMA_SELECT | DMA_WRITE,
            "not completed yet"
        );
        assert_eq!(after, 0);
        assert_eq!(dev.regs().opaque_addr, 0x9000);
        dma_req(&m, 0x1000, (0x21 << 16) | DMA_SELECT | DMA_READ, 56, 0x3000);
        assert_eq!(kick(&mut f, &m, 0x1000), 0);
        let mut back = [0u8; 56];
        m.read(0x3000, &mut back).unwrap();
        assert_eq!(launch_update::Regs::from_bytes(&back), dev.regs());
        // Partial write at an offset: SELECT, SKIP 40, WRITE 8 (opaque_addr).
        dma_req(&m, 0x1000, (0x21 << 16) | DMA_SELECT | DMA_SKIP, 40, 0);
        assert_eq!(kick(&mut f, &m, 0x1000), 0);
        m.write(0x2000, &0xA000u64.to_le_bytes()).unwrap();
        dma_req(&m, 0x1000, DMA_WRITE, 8, 0x2000);
        assert_eq!(kick_write(&mut f, &m, 0x1000).1, 0);
        assert_eq!(dev.regs().opaque_addr, 0xA000);
        assert_eq!(dev.regs().opaque_size, 0x100);
        assert_eq!(f.dma_errors, 0);
    }

    /// DMA write bounds (QEMU `fw_cfg_dma_transfer`): past the end, longer than the rest,
    /// a read-only item, a source outside RAM or private: ERROR, nothing written; an empty
    /// write succeeds.
    #[test]
    fn dma_write_bounds() {
        let m = mem();
        let dev = device();
        let mut f = FwCfg::with_launch_update(3, 1, &[], Some(Arc::clone(&dev)));
        let before = dev.read();
        m.write(0x2000, &[0xEE; 64]).unwrap();
        for (what, control, len, src) in [
            (
                "longer than the file",
                (0x21 << 16) | DMA_SELECT | DMA_WRITE,
                57,
                0x2000,
            ),
            (
                "source outside RAM",
                (0x21 << 16) | DMA_SELECT | DMA_WRITE,
                56,
                0xFFF0,
            ),
            (
                "wrapping source",
                (0x21 << 16) | DMA_SELECT | DMA_WRITE,
                56,
                u64::MAX - 8,
            ),
            (
                "read-only item",
                (0x20 << 16) | DMA_SELECT | DMA_WRITE,
                8,
                0x2000,
            ),
            (
                "unknown item",
                (0x30 << 16) | DMA_SELECT | DMA_WRITE,
                8,
                0x2000,
            ),
            (
                "huge",
                (0x21 << 16) | DMA_SELECT | DMA_WRITE,
                u32::MAX,
                0x2000,
            ),
        ] {
            dma_req(&m, 0x1000, control, len, src);
            assert_eq!(
                kick_write(&mut f, &m, 0x1000),
                (DMA_ERROR, DMA_ERROR),
                "{what}"
            );
            assert_eq!(dev.read(), before, "{what}");
        }
        // The rest after a SKIP of 50: 6 bytes fit, 8 do not (and the offset moves to the
        // end, as QEMU's), then anything at the end fails.
        dma_req(&m, 0x1000, (0x21 << 16) | DMA_SELECT | DMA_SKIP, 50, 0);
        assert_eq!(kick(&mut f, &m, 0x1000), 0);
        dma_req(&m, 0x1000, DMA_WRITE, 8, 0x2000);
        assert_eq!(kick_write(&mut f, &m, 0x1000).1, DMA_ERROR);
        dma_req(&m, 0x1000, DMA_WRITE, 1, 0x2000);
        assert_eq!(kick_write(&mut f, &m, 0x1000).1, DMA_ERROR);
        assert_eq!(dev.read(), before);
        // Empty write: done, nothing processed.
        dma_req(&m, 0x1000, (0x21 << 16) | DMA_SELECT | DMA_WRITE, 0, 0x2000);
        assert_eq!(kick_write(&mut f, &m, 0x1000), (0, 0));
        // Without the device, the same file does not exist.
        let mut plain = FwCfg::new(3, 1, &[]);
        dma_req(&m, 0x1000, (0x21 << 16) | DMA_SELECT | DMA_WRITE, 8, 0x2000);
        assert_eq!(kick_write(&mut plain, &m, 0x1000).1, DMA_ERROR);
        // A select through the selector port runs the select callback.
        let junk = launch_update::Regs {
            version: 7,
            control: 0,
            ..launch_update::Regs::default()
        };
        m.write(0x2000, &junk.to_bytes()).unwrap();
        dma_req(
            &m,
            0x1000,
            (0x21 << 16) | DMA_SELECT | DMA_WRITE,
            56,
            0x2000,
        );
        assert_eq!(kick_write(&mut f, &m, 0x1000).1, 0);
        assert_eq!(dev.regs().version, 7);
        assert!(f
            .io_out(PORT_SELECTOR, &0x21u16.to_le_bytes(), &m)
            .is_none());
        assert_eq!(dev.regs().version, 1);
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
