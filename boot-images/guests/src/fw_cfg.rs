//! QEMU-compatible fw_cfg over I/O ports (QEMU `docs/specs/fw_cfg.rst`): selector port
//! 0x510 (16-bit write), data port 0x511 (8-bit reads), DMA address register 0x514
//! (64-bit big-endian: high half written at 0x514, the write of the low half at 0x518
//! starts the transfer).

use crate::io::{inb, outl, outw};
use crate::layout;

/// Selector port.
pub const SELECTOR: u16 = 0x510;
/// Data port.
pub const DATA: u16 = 0x511;
/// DMA address register, high 32 bits (big-endian).
pub const DMA_HIGH: u16 = 0x514;
/// DMA address register, low 32 bits (big-endian); writing it starts the transfer.
pub const DMA_LOW: u16 = 0x518;

/// Key 0x0000: the signature "QEMU".
pub const KEY_SIGNATURE: u16 = 0x0000;
/// Key 0x0001: the interface ID (bit 0 traditional interface, bit 1 DMA).
pub const KEY_ID: u16 = 0x0001;
/// Key 0x0005: FW_CFG_NB_CPUS, the vCPU count (u16 little-endian).
pub const KEY_NB_CPUS: u16 = 0x0005;
/// Key 0x0019: the file directory.
pub const KEY_FILE_DIR: u16 = 0x0019;
/// ID bit: DMA interface present.
pub const ID_DMA: u32 = 1 << 1;

/// DMA control bits (big-endian on the wire).
pub const DMA_ERROR: u32 = 0x01;
/// DMA read (device → guest).
pub const DMA_READ: u32 = 0x02;
/// DMA skip.
pub const DMA_SKIP: u32 = 0x04;
/// DMA select (key in bits 31:16).
pub const DMA_SELECT: u32 = 0x08;
/// DMA write (guest → device).
pub const DMA_WRITE: u32 = 0x10;

/// The launch generation: u64 little-endian, 1 for a process's first launch, +1 per
/// relaunch.
pub const FILE_GENERATION: &str = "etc/relaunch/generation";
/// reboot-loop's stop generation (u64 little-endian), optional.
pub const FILE_REBOOT_UNTIL: &str = "opt/relaunch/reboot-until";

/// Where the DMA descriptor lives (scratch RAM, 16-byte aligned).
pub const DMA_DESC: u64 = layout::SCRATCH;
/// Where DMA reads land.
pub const DMA_BUF: u64 = layout::SCRATCH + 0x1000;

/// Selects `key`.
pub fn select(key: u16) {
    outw(SELECTOR, key);
}

/// Reads `buf.len()` bytes of the selected item through the data port.
pub fn read(buf: &mut [u8]) {
    for b in buf {
        *b = inb(DATA);
    }
}

/// Whether the signature reads "QEMU".
pub fn present() -> bool {
    let mut sig = [0u8; 4];
    select(KEY_SIGNATURE);
    read(&mut sig);
    &sig == b"QEMU"
}

/// The interface ID bits.
pub fn id() -> u32 {
    let mut v = [0u8; 4];
    select(KEY_ID);
    read(&mut v);
    u32::from_le_bytes(v)
}

/// A file directory entry.
#[derive(Clone, Copy, Debug)]
pub struct File {
    /// Size in bytes.
    pub size: u32,
    /// Its selector key.
    pub select: u16,
}

/// Looks `name` up in the file directory (at most 4096 entries are scanned).
pub fn find(name: &str) -> Option<File> {
    let mut count = [0u8; 4];
    select(KEY_FILE_DIR);
    read(&mut count);
    let count = u32::from_be_bytes(count).min(4096);
    for _ in 0..count {
        let mut e = [0u8; 64];
        read(&mut e);
        let n = e[8..].iter().position(|&b| b == 0).unwrap_or(56);
        if &e[8..8 + n] == name.as_bytes() {
            return Some(File {
                size: u32::from_be_bytes([e[0], e[1], e[2], e[3]]),
                select: u16::from_be_bytes([e[4], e[5]]),
            });
        }
    }
    None
}

/// Reads a u64 little-endian file through the data port.
pub fn read_u64_file(name: &str) -> Option<u64> {
    let f = find(name)?;
    if f.size < 8 {
        return None;
    }
    let mut v = [0u8; 8];
    select(f.select);
    read(&mut v);
    Some(u64::from_le_bytes(v))
}

/// Starts a DMA transfer with the descriptor at `desc` (the address register, high half
/// first: the low-half write starts it) and returns at once.
pub fn dma_start(desc: u64) {
    outl(DMA_HIGH, ((desc >> 32) as u32).to_be());
    outl(DMA_LOW, (desc as u32).to_be());
}

/// Starts a DMA transfer with the descriptor at `desc` and waits (bounded) for the
/// device to clear the control word. Returns the final control word (host order), or
/// `None` if the descriptor is not in scratch RAM or `fuki`'s window (then nothing is
/// polled).
pub fn dma_at(desc: u64) -> Option<u32> {
    dma_start(desc);
    if !desc_ok(desc) {
        return None;
    }
    let ctl = desc as *const u32;
    let mut n = 0u32;
    loop {
        // SAFETY: `desc` is inside identity-mapped RAM this guest owns (checked above).
        let c = u32::from_be(unsafe { core::ptr::read_volatile(ctl) });
        if c & !DMA_ERROR == 0 || n >= 1_000_000 {
            return Some(c);
        }
        n += 1;
        core::hint::spin_loop();
    }
}

/// Writes a DMA descriptor {control, length, address} (big-endian) at `desc`, which must
/// lie in the scratch area (16 bytes).
pub fn write_desc(desc: u64, control: u32, length: u32, address: u64) {
    assert!((layout::SCRATCH..=layout::SCRATCH + layout::SCRATCH_SIZE - 16).contains(&desc));
    put_desc(desc, control, length, address);
}

/// Whether 16 bytes at `desc` lie in RAM this guest owns and the host may read: scratch
/// RAM, or `fuki`'s window.
fn desc_ok(desc: u64) -> bool {
    let in_area = |base: u64, size: u64| (base..=base + size - 16).contains(&desc);
    in_area(layout::SCRATCH, layout::SCRATCH_SIZE)
        || in_area(layout::FUKI_WINDOW, layout::FUKI_WINDOW_SIZE)
}

/// Writes the descriptor bytes; `desc` must satisfy [`desc_ok`].
fn put_desc(desc: u64, control: u32, length: u32, address: u64) {
    let p = desc as *mut u8;
    let mut bytes = [0u8; 16];
    bytes[0..4].copy_from_slice(&control.to_be_bytes());
    bytes[4..8].copy_from_slice(&length.to_be_bytes());
    bytes[8..16].copy_from_slice(&address.to_be_bytes());
    for (i, b) in bytes.into_iter().enumerate() {
        // SAFETY: inside identity-mapped RAM this guest owns (the caller checked desc_ok);
        // byte writes need no alignment.
        unsafe { core::ptr::write_volatile(p.wrapping_add(i), b) }
    }
}

/// One DMA transfer with its descriptor at `desc` (scratch RAM or `fuki`'s window): writes
/// the descriptor, starts it and waits (bounded) for the device to clear the control word.
/// Returns the final control word, or `None` for a descriptor outside those areas.
pub fn dma_transfer(desc: u64, control: u32, length: u32, address: u64) -> Option<u32> {
    if !desc_ok(desc) {
        return None;
    }
    put_desc(desc, control, length, address);
    dma_at(desc)
}

/// Reads the u64 little-endian file `name` by DMA (select + read in one descriptor).
/// `None` if the file is missing, too short, or the device reports an error.
pub fn dma_read_u64_file(name: &str) -> Option<u64> {
    let f = find(name)?;
    if f.size < 8 {
        return None;
    }
    // Poison the buffer so a transfer that did nothing is noticed.
    // SAFETY: DMA_BUF is scratch RAM.
    unsafe { core::ptr::write_volatile(DMA_BUF as *mut u64, u64::MAX) };
    let control = (u32::from(f.select) << 16) | DMA_SELECT | DMA_READ;
    write_desc(DMA_DESC, control, 8, DMA_BUF);
    let done = dma_at(DMA_DESC)?;
    if done != 0 {
        return None;
    }
    // SAFETY: as above.
    Some(u64::from_le(unsafe {
        core::ptr::read_volatile(DMA_BUF as *const u64)
    }))
}

/// The launch generation, through the data port.
pub fn generation() -> Option<u64> {
    read_u64_file(FILE_GENERATION)
}
