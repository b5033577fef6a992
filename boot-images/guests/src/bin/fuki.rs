//! `fuki`: stage 1 of an F-UKI boot. It hands the VMM the next bundle through QEMU's
//! vm-launch-update interface (fw_cfg `etc/vmlaunchupdate`, QEMU
//! `docs/specs/vmlaunchupdate.rst`; relaunch's side: `docs/fuki.md`) and resets, so that the
//! next launch is a fresh measured launch of that bundle.
//!
//! Where the bundle comes from: the fw_cfg file `opt/relaunch/next-bundle` (the host's stand-in
//! for the disk an F-UKI firmware reads its UKI from). What stage 1 does, in order:
//! 1. prints `fuki: generation N`; from generation 2 on it only prints `fuki: stage 1 again`
//!    and powers off (the hand-over did not take: the VMM relaunched this bundle);
//! 2. makes its window ([`layout::FUKI_WINDOW`]) readable by the host: on SNP, one GHCB MSR
//!    page-state change per page (shared); on TDX the TDX view imports it shared;
//! 3. reads the bundle into the window by fw_cfg DMA, writes the `VMLaunchUpdate` structure
//!    (version 1, control = FORMAT_IGVM, image address and size) by DMA, reads `status`
//!    back through the data port and prints `fuki: hand-over status S`;
//! 4. resets (i8042).
//!
//! `opt/relaunch/fuki-mode` (u64, optional) makes stage 1 hostile instead, to test the VMM:
//! 1 an image size of 1 TiB, 2 a garbage image, 3 an image address far outside RAM, 4 an
//! address range that wraps around, 5 an image in the guest's own (private on SNP/TDX)
//! memory, 6 FORMAT_IGVM missing from `control`. The status is printed and the guest resets
//! all the same: the VMM must relaunch stage 1.
//!
//! Two modes race two vCPUs (they need `--vcpus 2`; the BSP starts the AP with
//! INIT-SIPI-SIPI, [`relaunch_guests::ap`]):
//! - 7: the BSP and the AP each DMA-write the structure [`RACE_WRITES`] times at once, the BSP
//!   naming stage 2, the AP a garbage image at another address with another size; after
//!   each write each reads the whole structure back by DMA and counts snapshots that are
//!   neither "accepted" (status 0, address and size cleared) nor "refused" (status 1, the
//!   AP's address and size) as torn. The BSP prints `fuki: race: dma errors E, torn T` and
//!   resets once both are done: stage 2 must run next.
//! - 8: the AP DMA-writes the structure naming stage 2 while the BSP resets: the BSP waits
//!   until the AP is about to write, spins `opt/relaunch/fuki-delay` (u64, default 0)
//!   times — `u64::MAX`: waits for the AP's write to finish instead — then resets; if the
//!   reset returns, the BSP writes `CTL_HOST_IGVM` (back to stage 1), which must never be
//!   processed. Either the AP's write was processed before the reset was acted on (stage 2
//!   runs next) or not at all (stage 1 runs again).
#![no_std]
#![no_main]

use core::arch::asm;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use relaunch_guests::io::halt_forever;
use relaunch_guests::platform::{self, Platform};
use relaunch_guests::power::Reset;
use relaunch_guests::{ap, fw_cfg, layout, println, serial};

/// `VM_LAUNCHUPDATE_FORMAT_IGVM` (QEMU `include/standard-headers/misc/vmlaunchupdate.h`).
const FORMAT_IGVM: u64 = 1 << 32;
/// `sizeof(VMLaunchUpdate)` (packed).
const STRUCT_SIZE: usize = 56;
/// The fw_cfg file of the interface.
const FILE_LAUNCH_UPDATE: &str = "etc/vmlaunchupdate";
/// Where stage 2 comes from.
const FILE_NEXT_BUNDLE: &str = "opt/relaunch/next-bundle";
/// The hostile modes (module doc).
const FILE_MODE: &str = "opt/relaunch/fuki-mode";
/// Mode 8's delay (module doc).
const FILE_DELAY: &str = "opt/relaunch/fuki-delay";

/// The DMA descriptor, the structure and the image in the window.
const DESC: u64 = layout::FUKI_WINDOW;
const STRUCT: u64 = layout::FUKI_WINDOW + 0x100;
const IMAGE: u64 = layout::FUKI_WINDOW + 0x1000;
const IMAGE_MAX: u64 = layout::FUKI_WINDOW_SIZE - 0x1000;

/// `VM_LAUNCHUPDATE_CTL_HOST_IGVM`.
const CTL_HOST_IGVM: u64 = 1 << 1;

/// Modes 7 and 8: the AP's DMA descriptor, the structure each vCPU writes, where each reads
/// the structure back, the AP's garbage image (all in the window, below [`IMAGE`]).
const DESC_AP: u64 = layout::FUKI_WINDOW + 0x40;
const STRUCT_AP: u64 = layout::FUKI_WINDOW + 0x180;
const BACK_BSP: u64 = layout::FUKI_WINDOW + 0x200;
const BACK_AP: u64 = layout::FUKI_WINDOW + 0x280;
const GARBAGE: u64 = layout::FUKI_WINDOW + 0x800;
const GARBAGE_SIZE: u64 = 0x800;
/// Writes per vCPU in mode 7: both together stay within the VMM's 16 requests per launch,
/// so every one is processed and audited.
const RACE_WRITES: u32 = 8;

/// The mode, for the AP.
static MODE: AtomicU64 = AtomicU64::new(0);
/// The AP is up; both may start; the AP is about to write (mode 8); the AP is done.
static AP_UP: AtomicU32 = AtomicU32::new(0);
static GO: AtomicU32 = AtomicU32::new(0);
static AP_WRITING: AtomicU32 = AtomicU32::new(0);
static AP_DONE: AtomicU32 = AtomicU32::new(0);
/// Torn snapshots and DMA errors seen by both vCPUs (mode 7).
static TORN: AtomicU32 = AtomicU32::new(0);
static DMA_ERRORS: AtomicU32 = AtomicU32::new(0);
/// The launch-update file's selector, for the AP.
static LU_SELECT: AtomicU32 = AtomicU32::new(0);

#[repr(C, align(4096))]
struct ApStack([u8; 4096]);
static mut AP_STACK: ApStack = ApStack([0; 4096]);

relaunch_guests::ap_trampoline!(ap_main);

/// `MSR_AMD64_SEV_ES_GHCB`, the GHCB MSR protocol's register.
const MSR_GHCB: u32 = 0xC001_0130;

#[no_mangle]
extern "C" fn guest_main() {
    serial::init();
    let Some(generation) = fw_cfg::present().then(fw_cfg::generation).flatten() else {
        println!("fuki: no fw_cfg");
        return;
    };
    println!("fuki: generation {generation}");
    if generation >= 2 {
        println!("fuki: stage 1 again");
        return;
    }
    let (Some(next), Some(lu)) = (
        fw_cfg::find(FILE_NEXT_BUNDLE),
        fw_cfg::find(FILE_LAUNCH_UPDATE),
    ) else {
        println!("fuki: no {FILE_NEXT_BUNDLE} or no {FILE_LAUNCH_UPDATE}");
        return;
    };
    let mode = fw_cfg::read_u64_file(FILE_MODE).unwrap_or(0);
    let size = u64::from(next.size);
    if size > IMAGE_MAX || usize::try_from(lu.size).ok() != Some(STRUCT_SIZE) {
        println!(
            "fuki: bundle of {size} bytes or interface of {} bytes unusable",
            lu.size
        );
        return;
    }
    let plat = platform::detect();
    if let Platform::Sev(status) = plat {
        if status & (1 << 2) != 0 && !make_shared(layout::FUKI_WINDOW, layout::FUKI_WINDOW_SIZE) {
            println!("fuki: the window could not be made shared");
            return;
        }
    }
    let read = (u32::from(next.select) << 16) | fw_cfg::DMA_SELECT | fw_cfg::DMA_READ;
    if fw_cfg::dma_transfer(DESC, read, next.size, IMAGE) != Some(0) {
        println!("fuki: reading the next bundle failed");
        return;
    }
    if mode == 7 || mode == 8 {
        race(mode, lu.select, size);
        return;
    }
    let (mut control, mut addr, mut len) = (FORMAT_IGVM, IMAGE, size);
    match mode {
        0 => {}
        1 => len = 1 << 40,
        2 => fill(IMAGE, size, 0xA5),
        3 => addr = 1 << 46,
        4 => (addr, len) = (u64::MAX - 0xFFF, 0x2000),
        5 => addr = layout::IMAGE_BASE,
        6 => control = 0,
        _ => {}
    }
    put_struct(STRUCT, control, addr, len);
    let done = write_struct(DESC, lu.select, STRUCT);
    let mut back = [0u8; STRUCT_SIZE];
    fw_cfg::select(lu.select);
    fw_cfg::read(&mut back);
    let status = u16::from_le_bytes([back[2], back[3]]);
    println!("fuki: mode {mode}, dma {done:?}, hand-over status {status}");
    println!("fuki: resetting");
    Reset::I8042.trigger();
}

/// Puts a `VMLaunchUpdate` (version 1, `control`, image address and size, no opaque
/// region) at `at` in the window.
fn put_struct(at: u64, control: u64, addr: u64, len: u64) {
    let mut regs = [0u8; STRUCT_SIZE];
    regs[0..2].copy_from_slice(&1u16.to_le_bytes());
    regs[16..24].copy_from_slice(&control.to_le_bytes());
    regs[24..32].copy_from_slice(&addr.to_le_bytes());
    regs[32..40].copy_from_slice(&len.to_le_bytes());
    for (i, b) in regs.iter().enumerate() {
        // SAFETY: callers pass a structure address in the window, identity-mapped RAM this
        // guest owns (56 bytes fit before the next one).
        unsafe { core::ptr::write_volatile((at as *mut u8).wrapping_add(i), *b) }
    }
}

/// DMA-writes the structure at `at` to the file (select + write in one request, so no other
/// vCPU's select comes between) with the descriptor at `desc`; the final control word.
fn write_struct(desc: u64, select: u16, at: u64) -> Option<u32> {
    let write = (u32::from(select) << 16) | fw_cfg::DMA_SELECT | fw_cfg::DMA_WRITE;
    fw_cfg::dma_transfer(desc, write, STRUCT_SIZE as u32, at)
}

/// DMA-reads the whole file into `back` (one request: a snapshot); returns (status, image
/// address, image size), or `None` if the transfer failed.
fn read_struct(desc: u64, select: u16, back: u64) -> Option<(u16, u64, u64)> {
    let read = (u32::from(select) << 16) | fw_cfg::DMA_SELECT | fw_cfg::DMA_READ;
    if fw_cfg::dma_transfer(desc, read, STRUCT_SIZE as u32, back) != Some(0) {
        return None;
    }
    let mut b = [0u8; STRUCT_SIZE];
    for (i, v) in b.iter_mut().enumerate() {
        // SAFETY: `back` + 56 lies in the window (callers pass BACK_BSP / BACK_AP).
        *v = unsafe { core::ptr::read_volatile((back as *const u8).wrapping_add(i)) };
    }
    let u64_at = |at: usize| {
        let mut v = [0u8; 8];
        v.copy_from_slice(&b[at..at + 8]);
        u64::from_le_bytes(v)
    };
    Some((u16::from_le_bytes([b[2], b[3]]), u64_at(24), u64_at(32)))
}

/// Mode 7's write-and-check loop for one vCPU.
fn race_loop(desc: u64, select: u16, at: u64, back: u64) {
    for _ in 0..RACE_WRITES {
        if write_struct(desc, select, at) != Some(0) {
            DMA_ERRORS.fetch_add(1, Ordering::SeqCst);
        }
        match read_struct(desc, select, back) {
            None => {
                DMA_ERRORS.fetch_add(1, Ordering::SeqCst);
            }
            Some((0, 0, 0)) => {}
            Some((1, GARBAGE, GARBAGE_SIZE)) => {}
            Some(_) => {
                TORN.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
}

/// Waits (bounded) until `flag` is non-zero; whether it was.
fn wait(flag: &AtomicU32) -> bool {
    for _ in 0..400_000_000u32 {
        if flag.load(Ordering::SeqCst) != 0 {
            return true;
        }
        core::hint::spin_loop();
    }
    false
}

extern "C" fn ap_main(_index: u64) -> ! {
    AP_UP.store(1, Ordering::SeqCst);
    let select = LU_SELECT.load(Ordering::SeqCst) as u16;
    if wait(&GO) {
        match MODE.load(Ordering::SeqCst) {
            7 => race_loop(DESC_AP, select, STRUCT_AP, BACK_AP),
            8 => {
                AP_WRITING.store(1, Ordering::SeqCst);
                let _ = write_struct(DESC_AP, select, STRUCT_AP);
            }
            _ => {}
        }
    }
    AP_DONE.store(1, Ordering::SeqCst);
    halt_forever()
}

/// Modes 7 and 8 (module doc), with stage 2 already in the window at [`IMAGE`].
fn race(mode: u64, select: u16, size: u64) {
    let mut n = [0u8; 2];
    fw_cfg::select(fw_cfg::KEY_NB_CPUS);
    fw_cfg::read(&mut n);
    if u16::from_le_bytes(n) < 2 {
        println!("fuki: mode {mode} needs 2 vCPUs");
        return;
    }
    // Read before the AP runs: fw_cfg's selector is one for all vCPUs.
    let delay = fw_cfg::read_u64_file(FILE_DELAY).unwrap_or(0);
    MODE.store(mode, Ordering::SeqCst);
    LU_SELECT.store(u32::from(select), Ordering::SeqCst);
    put_struct(STRUCT, FORMAT_IGVM, IMAGE, size);
    if mode == 7 {
        fill(GARBAGE, GARBAGE_SIZE, 0xA5);
        put_struct(STRUCT_AP, FORMAT_IGVM, GARBAGE, GARBAGE_SIZE);
    } else {
        put_struct(STRUCT_AP, FORMAT_IGVM, IMAGE, size);
    }
    ap::enable_lapic();
    let top = (&raw const AP_STACK) as u64 + 4096;
    if !ap::start(1, top, (&AP_STACK_TOP, &AP_INDEX), &AP_UP, 1) {
        println!("fuki: the AP did not start");
        return;
    }
    println!("fuki: mode {mode}, AP up");
    if mode == 7 {
        GO.store(1, Ordering::SeqCst);
        race_loop(DESC, select, STRUCT, BACK_BSP);
        if !wait(&AP_DONE) {
            println!("fuki: the AP did not finish");
            return;
        }
        println!(
            "fuki: race: dma errors {}, torn {}",
            DMA_ERRORS.load(Ordering::SeqCst),
            TORN.load(Ordering::SeqCst)
        );
        println!("fuki: resetting");
        Reset::I8042.trigger();
        return;
    }
    GO.store(1, Ordering::SeqCst);
    if !wait(&AP_WRITING) {
        println!("fuki: the AP did not write");
        return;
    }
    if delay == u64::MAX {
        if !wait(&AP_DONE) {
            println!("fuki: the AP did not finish");
            return;
        }
    } else {
        for _ in 0..delay {
            core::hint::spin_loop();
        }
    }
    Reset::I8042.trigger();
    // Only if the VMM ignored the reset: ask for stage 1 back. Never processed when the reset
    // is (the test checks the audit log has no such request).
    put_struct(STRUCT, FORMAT_IGVM | CTL_HOST_IGVM, 0, 0);
    let _ = write_struct(DESC, select, STRUCT);
    println!("fuki: the reset returned");
}

/// Fills `[at, at + len)` of the window with `byte`.
fn fill(at: u64, len: u64, byte: u8) {
    for i in 0..len {
        // SAFETY: callers pass a range inside the window (identity-mapped RAM).
        unsafe { core::ptr::write_volatile((at + i) as *mut u8, byte) }
    }
}

/// SNP: asks for every page of `[base, base + size)` to become shared with the GHCB MSR
/// protocol's page-state change (GHCB spec v2 §2.3.1: request 0x014 with the operation in
/// bits 55:52 (2 = shared) and the GFN in 51:12; response 0x015 with the error code in
/// 63:32), then VMGEXIT. A real SNP guest first rescinds the pages' validation with
/// `PVALIDATE`; relaunch's emulated SNP has no RMP (and `PVALIDATE` is #UD on an ordinary
/// VM), so this test guest does not.
///
/// VMGEXIT only when needed: real SNP answers at VMGEXIT, so until then the MSR reads back
/// the request; relaunch's emulated SNP answers at the WRMSR already (its MSR filter sees the
/// write), and on an ordinary KVM VM `rep vmmcall` is a KVM hypercall — which, on the nested
/// hosts these tests run on, did not return within 60 s (measured with this guest). So the
/// guest reads the MSR first and exits only if the answer is not there yet.
fn make_shared(base: u64, size: u64) -> bool {
    let mut gpa = base;
    while gpa < base + size {
        let req = (2u64 << 52) | (gpa & 0x000F_FFFF_FFFF_F000) | 0x014;
        // SAFETY: SNP guests have the GHCB MSR (the caller checked SEV_STATUS bit 2).
        unsafe { wrmsr(MSR_GHCB, req) };
        // SAFETY: as above.
        let mut resp = unsafe { platform::rdmsr(MSR_GHCB) };
        if resp == req {
            vmgexit();
            // SAFETY: as above.
            resp = unsafe { platform::rdmsr(MSR_GHCB) };
        }
        if resp & 0xFFF != 0x015 || resp >> 32 != 0 {
            println!("fuki: page-state change of {gpa:#x}: response {resp:#x}");
            return false;
        }
        gpa += 0x1000;
    }
    true
}

/// `wrmsr`.
///
/// # Safety
/// `msr` must exist on this platform and accept `value`.
unsafe fn wrmsr(msr: u32, value: u64) {
    // SAFETY: WRMSR needs CPL0 (the guests run there) and an existing MSR (the caller's
    // contract); it touches no memory.
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32,
             options(nomem, nostack, preserves_flags))
    }
}

/// VMGEXIT (`rep vmmcall`): hands the GHCB MSR request to the hypervisor. On an ordinary KVM
/// guest it runs as a KVM hypercall, which clobbers RAX (declared).
fn vmgexit() {
    // SAFETY: VMGEXIT touches no memory of ours; RAX may be overwritten (declared).
    unsafe { asm!("rep vmmcall", out("rax") _, options(nostack)) }
}
