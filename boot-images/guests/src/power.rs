//! Power-off, the three reset paths, and the crash report port.

use core::arch::asm;

use crate::io::{halt_forever, outb, outw};

/// PM1a_CNT of QEMU's q35 ICH9 PM block; a 16-bit write with SLP_EN (bit 13) and
/// SLP_TYP = 0 is the soft power-off.
pub const PM1A_CNT: u16 = 0x604;
/// SLP_EN.
pub const SLP_EN: u16 = 1 << 13;
/// i8042 command port; command 0xFE pulses the reset line.
pub const I8042_CMD: u16 = 0x64;
/// PCI reset control register; 0x06 = hard reset (SYS_RST | RST_CPU).
pub const RESET_CONTROL: u16 = 0xCF9;
/// QEMU ISA pvpanic; bit 0 = PANICKED.
pub const PVPANIC: u16 = 0x505;

/// Powers the VM off. Does not return; if the VMM ignores the write, halts.
pub extern "C" fn power_off() -> ! {
    outw(PM1A_CNT, SLP_EN);
    halt_forever()
}

/// What every guest does when its `guest_main` returns: reset (i8042) while the fw_cfg file
/// `opt/relaunch/reboot-until` (u64 LE) is above the launch generation — so the host can
/// take any image through N launches — and power off otherwise (or without fw_cfg).
pub extern "C" fn finish() -> ! {
    use crate::fw_cfg;
    if fw_cfg::present() {
        let until = fw_cfg::read_u64_file(fw_cfg::FILE_REBOOT_UNTIL);
        if let (Some(g), Some(until)) = (fw_cfg::generation(), until) {
            if g < until {
                crate::println!("relaunching: generation {g} of {until}");
                Reset::I8042.trigger();
            }
        }
    }
    power_off()
}

/// Tells the VMM the guest crashed (pvpanic PANICKED), then halts.
pub fn report_panic() -> ! {
    outb(PVPANIC, 1);
    halt_forever()
}

/// A way to reset the machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reset {
    /// 0xFE to port 0x64.
    I8042,
    /// 0x06 to port 0xCF9.
    Cf9,
    /// An exception with an empty IDT: #UD → #GP → #DF → shutdown. (`ud2`, not `int3`:
    /// this project's nested KVM host sends `int3` with a zero-limit IDT to its
    /// instruction emulator, which gives up with KVM_INTERNAL_ERROR_EMULATION instead of
    /// a shutdown; a hardware fault like #UD reaches KVM_EXIT_SHUTDOWN everywhere.)
    TripleFault,
}

impl Reset {
    /// The name the guests print.
    pub fn name(self) -> &'static str {
        match self {
            Reset::I8042 => "i8042",
            Reset::Cf9 => "0xcf9",
            Reset::TripleFault => "triple fault",
        }
    }

    /// Resets the machine this way. Returns only if the VMM ignored the request.
    pub fn trigger(self) {
        match self {
            Reset::I8042 => outb(I8042_CMD, 0xFE),
            Reset::Cf9 => outb(RESET_CONTROL, 0x06),
            Reset::TripleFault => {
                let idtr = [0u16; 5]; // limit 0, base 0
                                      // SAFETY: deliberately faults; with a zero-limit IDT no handler runs and
                                      // the CPU shuts down (triple fault), which the VMM sees as a reset.
                unsafe { asm!("lidt [{}]", "ud2", in(reg) idtr.as_ptr(), options(nostack)) }
            }
        }
    }
}
