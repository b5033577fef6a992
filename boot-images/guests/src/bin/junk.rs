//! `junk`: pokes every device with junk, then prints `junk: survived` and powers off.
//!
//! Deterministic (a fixed-seed xorshift), so a failure reproduces. In order:
//! 1. 8192 random port accesses (1/2/4 bytes, in and out) across 0..=0xFFFF, except the
//!    ports that would end the test or scribble over guest RAM: 0x64 (i8042 reset),
//!    0x92 (port A fast reset on PCs), 0x505 (pvpanic), 0x510..=0x51B (fw_cfg: step 2
//!    aims it), 0x600..=0x60F (PM block: power-off), 0xCF8..=0xCFF (0xCF9 reset).
//! 2. fw_cfg: 512 random selectors with reads (data port, 16/32-bit too) and writes to
//!    the data port; DMA descriptors with garbage control words, absurd lengths,
//!    addresses outside RAM (and descriptors outside RAM, unaligned, or overlapping
//!    the DMA address register's own half-written state).
//! 3. 16550 register junk (IER/FCR/LCR/MCR/LSR/MSR/SCR, DLAB on and off), then the
//!    UART is programmed again so the last line is readable.
//! 4. MMIO reads and writes of 1/2/4/8 bytes at unmapped addresses in 0xC0000000..
//!    0xFEC00000 (the guest assumes less than 3 GiB of RAM).
#![no_std]
#![no_main]

use relaunch_guests::io::{inb, inl, inw, outb, outl, outw};
use relaunch_guests::{fw_cfg, layout, platform, println, serial};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

/// Port ranges junk must not touch (inclusive).
const RESERVED: [(u16, u16); 6] = [
    (0x64, 0x64),
    (0x92, 0x92),
    (0x505, 0x505),
    (0x510, 0x51B),
    (0x600, 0x60F),
    (0xCF8, 0xCFF),
];

fn allowed(port: u16, size: u16) -> bool {
    let last = u32::from(port) + u32::from(size) - 1;
    last <= 0xFFFF
        && RESERVED
            .iter()
            .all(|&(lo, hi)| last < u32::from(lo) || u32::from(port) > u32::from(hi))
}

fn port_junk(rng: &mut Rng) -> u32 {
    let mut done = 0;
    for _ in 0..8192 {
        let r = rng.next();
        let port = r as u16;
        let size = [1u16, 2, 4, 1][(r >> 16) as usize & 3];
        if !allowed(port, size) {
            continue;
        }
        let value = (r >> 32) as u32;
        match (size, (r >> 20) & 1) {
            (1, 0) => {
                let _ = inb(port);
            }
            (1, _) => outb(port, value as u8),
            (2, 0) => {
                let _ = inw(port);
            }
            (2, _) => outw(port, value as u16),
            (_, 0) => {
                let _ = inl(port);
            }
            (_, _) => outl(port, value),
        }
        done += 1;
    }
    done
}

fn fw_cfg_junk(rng: &mut Rng) {
    for _ in 0..512 {
        let r = rng.next();
        fw_cfg::select(r as u16);
        for _ in 0..(r >> 16) & 7 {
            let _ = inb(fw_cfg::DATA);
        }
        outb(fw_cfg::DATA, (r >> 24) as u8);
        let _ = inw(fw_cfg::DATA);
        let _ = inl(fw_cfg::DATA);
    }
    let desc = fw_cfg::DMA_DESC;
    let ram_end_guess = 1u64 << 40; // beyond any RAM this guest is given
    let cases: [(u32, u32, u64); 10] = [
        (fw_cfg::DMA_READ, 0xFFFF_FFFF, ram_end_guess),
        (fw_cfg::DMA_READ, 64, 0xFFFF_FFFF_FFFF_F000),
        (fw_cfg::DMA_WRITE, 0xFFFF_FFFF, fw_cfg::DMA_BUF),
        (fw_cfg::DMA_SKIP, 0xFFFF_FFFF, 0),
        (0xFFFF_FFFF, 0xFFFF_FFFF, u64::MAX),
        (0xFFE0, 16, fw_cfg::DMA_BUF),
        (
            0x0019_0000 | fw_cfg::DMA_SELECT | fw_cfg::DMA_READ,
            0xFFFF_FFF0,
            fw_cfg::DMA_BUF,
        ),
        (
            0x0019_0000 | fw_cfg::DMA_SELECT | fw_cfg::DMA_READ,
            4096,
            u64::MAX - 100,
        ),
        (
            0x4000_0000 | fw_cfg::DMA_SELECT | fw_cfg::DMA_WRITE,
            4096,
            fw_cfg::DMA_BUF,
        ),
        (0, 0, 0),
    ];
    // Where the guest's memory is protected the device cannot write a descriptor back (as on
    // real hardware): start each transfer without waiting for a completion that cannot come.
    let kick = if platform::detect().memory_protected() {
        fw_cfg::dma_start
    } else {
        |d| {
            fw_cfg::dma_at(d);
        }
    };
    for (control, length, address) in cases {
        fw_cfg::write_desc(desc, control, length, address);
        kick(desc);
        // The same descriptor 3 bytes off (unaligned).
        fw_cfg::write_desc(desc + 0x103, control, length, address);
        kick(desc + 0x103);
    }
    // Descriptors outside RAM, in MMIO holes, at the top of the address space.
    for addr in [ram_end_guess, 0xFEE0_0000, 0xFFFF_FFFF_FFFF_FFF8, u64::MAX] {
        kick(addr);
    }
    // A half-written address register: only the high half, then junk low halves.
    outl(fw_cfg::DMA_HIGH, 0xDEAD_BEEF);
    for _ in 0..16 {
        outl(fw_cfg::DMA_LOW, rng.next() as u32);
    }
    // Random descriptor contents.
    for _ in 0..64 {
        let r = rng.next();
        let a = rng.next();
        fw_cfg::write_desc(desc, r as u32, (r >> 32) as u32, a);
        kick(desc);
    }
    // Byte- and word-sized writes to the DMA register.
    outb(fw_cfg::DMA_HIGH, 0xAA);
    outw(fw_cfg::DMA_LOW + 2, 0x5555);
    let _ = inl(fw_cfg::DMA_HIGH);
    let _ = inl(fw_cfg::DMA_LOW);
}

fn uart_junk(rng: &mut Rng) {
    for _ in 0..512 {
        let r = rng.next();
        let reg = serial::COM1 + 1 + (r % 7) as u16;
        outb(reg, (r >> 8) as u8);
        let _ = inb(reg);
    }
    serial::init();
}

fn mmio_junk(rng: &mut Rng) {
    const LO: u64 = 0xC000_0000;
    const HI: u64 = 0xFEC0_0000;
    for _ in 0..1024 {
        let r = rng.next();
        let addr = (LO + (r % (HI - LO))) & !7;
        let v = rng.next();
        // Every access below: read_volatile/write_volatile need a pointer valid for the
        // access and aligned to it: `addr` is 8-byte aligned and identity-mapped (0..4 GiB),
        // and not RAM (this guest's RAM ends far below 3 GiB), so the accesses become MMIO
        // exits the VMM must survive and touch nothing this guest relies on.
        match (r >> 40) & 7 {
            // SAFETY: see above.
            0 => unsafe { core::ptr::write_volatile(addr as *mut u8, v as u8) },
            // SAFETY: see above.
            1 => unsafe { core::ptr::write_volatile(addr as *mut u16, v as u16) },
            // SAFETY: see above.
            2 => unsafe { core::ptr::write_volatile(addr as *mut u32, v as u32) },
            // SAFETY: see above.
            3 => unsafe { core::ptr::write_volatile(addr as *mut u64, v) },
            4 => {
                // SAFETY: see above.
                let _ = unsafe { core::ptr::read_volatile(addr as *const u8) };
            }
            5 => {
                // SAFETY: see above.
                let _ = unsafe { core::ptr::read_volatile(addr as *const u16) };
            }
            6 => {
                // SAFETY: see above.
                let _ = unsafe { core::ptr::read_volatile(addr as *const u32) };
            }
            _ => {
                // SAFETY: see above.
                let _ = unsafe { core::ptr::read_volatile(addr as *const u64) };
            }
        }
    }
}

#[no_mangle]
extern "C" fn guest_main() {
    serial::init();
    println!("junk: start");
    let mut rng = Rng(0x5EED_F00D_4E1A_0C4D);
    let ports = port_junk(&mut rng);
    serial::init();
    println!("junk: {ports} port accesses");
    fw_cfg_junk(&mut rng);
    println!("junk: fw_cfg done");
    uart_junk(&mut rng);
    println!("junk: uart done");
    mmio_junk(&mut rng);
    let _ = layout::RAM_NEEDED;
    println!("junk: survived");
}
