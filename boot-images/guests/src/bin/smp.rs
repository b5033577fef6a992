//! `smp`: the BSP starts every AP with INIT-SIPI-SIPI; each AP prints `cpu K up` and
//! counts itself; the BSP prints `smp: N cpus` and powers off.
//!
//! The vCPU count comes from fw_cfg key 0x0005 (FW_CFG_NB_CPUS, u16 LE, as QEMU); AP K is
//! addressed by APIC ID K. APs are started one at a time (so their lines never
//! interleave) by the runtime's [`relaunch_guests::ap`] (start-up page at GPA 0x8000, SIPI
//! vector 0x08). An AP that does not come up within a bounded wait is reported as
//! `smp: cpu K did not start`; no further AP is started then.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU32, Ordering};

use relaunch_guests::io::halt_forever;
use relaunch_guests::{ap, fw_cfg, println, serial};

/// At most this many CPUs (BSP included) are started.
const MAX_CPUS: usize = 32;
const AP_STACK_SIZE: usize = 4096;

#[repr(C, align(4096))]
struct ApStacks([[u8; AP_STACK_SIZE]; MAX_CPUS]);
static mut AP_STACKS: ApStacks = ApStacks([[0; AP_STACK_SIZE]; MAX_CPUS]);

/// CPUs running, BSP included.
static CPUS_UP: AtomicU32 = AtomicU32::new(1);

relaunch_guests::ap_trampoline!(ap_main);

extern "C" fn ap_main(index: u64) -> ! {
    println!("cpu {index} up");
    CPUS_UP.fetch_add(1, Ordering::SeqCst);
    halt_forever()
}

#[no_mangle]
extern "C" fn guest_main() {
    serial::init();
    let cpus = if fw_cfg::present() {
        let mut n = [0u8; 2];
        fw_cfg::select(fw_cfg::KEY_NB_CPUS);
        fw_cfg::read(&mut n);
        usize::from(u16::from_le_bytes(n)).max(1)
    } else {
        1
    };
    if cpus > MAX_CPUS {
        println!("smp: {cpus} vCPUs, starting the first {MAX_CPUS}");
    }
    ap::enable_lapic();
    let stacks = (&raw const AP_STACKS) as u64;
    for k in 1..cpus.min(MAX_CPUS) {
        let top = stacks + ((k + 1) * AP_STACK_SIZE) as u64;
        let want = CPUS_UP.load(Ordering::SeqCst) + 1;
        if !ap::start(k as u32, top, (&AP_STACK_TOP, &AP_INDEX), &CPUS_UP, want) {
            println!("smp: cpu {k} did not start");
            break; // a late AP would take the next one's stack
        }
    }
    println!("smp: {} cpus", CPUS_UP.load(Ordering::SeqCst));
}
