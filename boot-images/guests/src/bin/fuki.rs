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
#![no_std]
#![no_main]

use core::arch::asm;

use relaunch_guests::platform::{self, Platform};
use relaunch_guests::power::Reset;
use relaunch_guests::{fw_cfg, layout, println, serial};

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

/// The DMA descriptor, the structure and the image in the window.
const DESC: u64 = layout::FUKI_WINDOW;
const STRUCT: u64 = layout::FUKI_WINDOW + 0x100;
const IMAGE: u64 = layout::FUKI_WINDOW + 0x1000;
const IMAGE_MAX: u64 = layout::FUKI_WINDOW_SIZE - 0x1000;

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
    let mut regs = [0u8; STRUCT_SIZE];
    regs[0..2].copy_from_slice(&1u16.to_le_bytes());
    regs[16..24].copy_from_slice(&control.to_le_bytes());
    regs[24..32].copy_from_slice(&addr.to_le_bytes());
    regs[32..40].copy_from_slice(&len.to_le_bytes());
    for (i, b) in regs.iter().enumerate() {
        // SAFETY: STRUCT + 56 lies in the window, identity-mapped RAM this guest owns.
        unsafe { core::ptr::write_volatile((STRUCT as *mut u8).wrapping_add(i), *b) }
    }
    let write = (u32::from(lu.select) << 16) | fw_cfg::DMA_SELECT | fw_cfg::DMA_WRITE;
    let done = fw_cfg::dma_transfer(DESC, write, STRUCT_SIZE as u32, STRUCT);
    let mut back = [0u8; STRUCT_SIZE];
    fw_cfg::select(lu.select);
    fw_cfg::read(&mut back);
    let status = u16::from_le_bytes([back[2], back[3]]);
    println!("fuki: mode {mode}, dma {done:?}, hand-over status {status}");
    println!("fuki: resetting");
    Reset::I8042.trigger();
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
