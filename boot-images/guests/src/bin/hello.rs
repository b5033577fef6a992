//! `hello`: prints a greeting and the launch generation, then powers off.
//!
//! Serial output (one launch):
//! ```text
//! hello from relaunch guest
//! generation N
//! ```
//! N is read from fw_cfg `etc/relaunch/generation` through the data port; when the fw_cfg
//! ID advertises DMA it is read again by DMA and a disagreement is reported as a panic —
//! except on a confidential platform, where a device cannot write the guest's private or
//! encrypted memory (`platform::detect`): there the data port is the only way.
//! Without fw_cfg or the file, the second line is `generation unknown`.
#![no_std]
#![no_main]

use relaunch_guests::{fw_cfg, platform, println, serial};

#[no_mangle]
extern "C" fn guest_main() {
    serial::init();
    println!("hello from relaunch guest");
    if !fw_cfg::present() {
        println!("generation unknown");
        return;
    }
    match fw_cfg::generation() {
        Some(g) => {
            if fw_cfg::id() & fw_cfg::ID_DMA != 0 && !platform::detect().memory_protected() {
                let d = fw_cfg::dma_read_u64_file(fw_cfg::FILE_GENERATION);
                assert_eq!(d, Some(g), "fw_cfg DMA read disagrees with the data port");
            }
            println!("generation {g}");
        }
        None => println!("generation unknown"),
    }
}
