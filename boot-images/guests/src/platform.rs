//! Which platform the guest runs on, as a guest can tell: CPUID and, on AMD SEV platforms,
//! the `SEV_STATUS` MSR. The guests need it to stay off device DMA where their memory is
//! private to them (SEV-SNP, TDX) or encrypted (SEV, SEV-ES): a device writing there is not
//! seen by the guest, as on real hardware.

use core::arch::asm;
use core::arch::x86_64::__cpuid_count;

/// `SEV_STATUS` (MSR 0xC0010131, AMD APM vol. 2 §15.34.10).
pub const MSR_SEV_STATUS: u32 = 0xC001_0131;

/// What the guest runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Platform {
    /// An ordinary VM.
    Native,
    /// AMD SEV, SEV-ES or SEV-SNP: the `SEV_STATUS` value (bit 0 SEV, 1 SEV-ES, 2 SNP).
    Sev(u64),
    /// Intel TDX (CPUID leaf 0x21 reads "IntelTDX    ").
    Tdx,
}

impl Platform {
    /// Whether devices cannot write the guest's memory as the guest sees it.
    pub fn memory_protected(self) -> bool {
        self != Platform::Native
    }
}

/// CPUID leaf `leaf`, subleaf `sub`: `[eax, ebx, ecx, edx]`.
pub fn cpuid(leaf: u32, sub: u32) -> [u32; 4] {
    #[allow(unused_unsafe)]
    // SAFETY: CPUID exists on every x86-64 CPU and has no side effects.
    let r = unsafe { __cpuid_count(leaf, sub) };
    [r.eax, r.ebx, r.ecx, r.edx]
}

/// `rdmsr`.
///
/// # Safety
/// `msr` must exist on this platform (an absent MSR raises #GP, which these guests do not
/// handle).
pub unsafe fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: RDMSR needs CPL0 (the guests run there) and an existing MSR (the caller's
    // contract); it touches no memory.
    unsafe {
        asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Detects the platform: TDX by CPUID leaf 0x21's vendor string; SEV when CPUID 0x8000001F
/// EAX bit 1 says the CPU has SEV and `SEV_STATUS` bit 0 says this guest uses it.
pub fn detect() -> Platform {
    let [max, ..] = cpuid(0, 0);
    if max >= 0x21 {
        let [_, b, c, d] = cpuid(0x21, 0);
        // "Inte" "lTDX" "    " in EBX, EDX, ECX (Intel TDX module spec, CPUID leaf 0x21).
        if (b, d, c) == (0x6574_6E49, 0x5844_546C, 0x2020_2020) {
            return Platform::Tdx;
        }
    }
    let [max_ext, ..] = cpuid(0x8000_0000, 0);
    if max_ext >= 0x8000_001F && cpuid(0x8000_001F, 0)[0] & (1 << 1) != 0 {
        // SAFETY: CPUID 0x8000001F.EAX[1] (SEV) says SEV_STATUS exists (AMD APM vol. 2
        // §15.34.10); the VMM gives native guests no SEV bit.
        let status = unsafe { rdmsr(MSR_SEV_STATUS) };
        if status & 1 != 0 {
            return Platform::Sev(status);
        }
    }
    Platform::Native
}
