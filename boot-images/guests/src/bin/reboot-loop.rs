//! `reboot-loop`: prints the launch generation and resets until generation == LIMIT,
//! then powers off.
//!
//! LIMIT is the u64 LE fw_cfg file `opt/relaunch/reboot-until` if present, else 5. The
//! reset path rotates with the generation so every path is exercised: generation % 3 ==
//! 1 → i8042 (0xFE to port 0x64), 2 → port 0xCF9 (0x06), 0 → triple fault.
//!
//! Serial output per launch: `generation N`, then either `reset via <path>` or
//! `reboot-loop: done after N launches`. A reset that does not happen prints
//! `reset via <path> failed` and panics (pvpanic).
#![no_std]
#![no_main]

use relaunch_guests::power::Reset;
use relaunch_guests::{fw_cfg, println, serial};

const DEFAULT_LIMIT: u64 = 5;

#[no_mangle]
extern "C" fn guest_main() {
    serial::init();
    let Some(generation) = fw_cfg::present().then(fw_cfg::generation).flatten() else {
        println!("reboot-loop: no launch generation in fw_cfg");
        return;
    };
    println!("generation {generation}");
    let limit = fw_cfg::read_u64_file(fw_cfg::FILE_REBOOT_UNTIL).unwrap_or(DEFAULT_LIMIT);
    if generation >= limit {
        println!("reboot-loop: done after {generation} launches");
        return;
    }
    let reset = match generation % 3 {
        1 => Reset::I8042,
        2 => Reset::Cf9,
        _ => Reset::TripleFault,
    };
    println!("reset via {}", reset.name());
    reset.trigger();
    panic!("reset via {} failed", reset.name());
}
