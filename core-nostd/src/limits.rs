//! The limits of a launch, one source for every command (`measure`, `inspect`, `run`) and
//! every layer (planner, measurement, firmware model, backends).

/// 4 KiB: the page size of every launch operation.
pub const PAGE_SIZE: u64 = 4096;

/// The most vCPUs a launch has. relaunch offers no x2APIC with interrupt remapping, so APIC
/// IDs are 8 bits and 0xFF is the broadcast ID: vCPUs 0..=254 (QEMU refuses more than 255
/// CPUs on `pc`/`q35` without `intremap`, `hw/i386/x86.c` `x86_cpus_init`). Below KVM's own
/// `KVM_MAX_VCPUS` (4096 with `CONFIG_MAXSMP`, `arch/x86/include/asm/kvm_host.h`).
pub const MAX_VCPUS: u32 = 255;

/// The most guest RAM a launch has: 1 TiB (`--mem`). Far below the 2^47-byte guest-physical
/// space of SEV/TDX guests, and above what an appliance VM needs.
pub const MAX_MEM_BYTES: u64 = 1 << 40;

/// The least guest RAM a launch has: one page.
pub const MIN_MEM_BYTES: u64 = PAGE_SIZE;

/// Why a vCPU count or RAM size is refused: one message for every command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitError {
    /// A vCPU count outside `1..=MAX_VCPUS`.
    Vcpus(u64),
    /// A RAM size that is not a 4 KiB multiple in `MIN_MEM_BYTES..=MAX_MEM_BYTES`.
    Mem(u64),
}

impl core::fmt::Display for LimitError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            LimitError::Vcpus(n) => write!(f, "{n} vCPUs: a launch has 1 to {MAX_VCPUS} vCPUs"),
            LimitError::Mem(m) => write!(
                f,
                "{m} bytes of guest RAM: a launch has a multiple of 4 KiB from 4 KiB to 1 TiB"
            ),
        }
    }
}

/// Checks a vCPU count against [`MAX_VCPUS`].
///
/// # Errors
/// [`LimitError::Vcpus`].
pub fn check_vcpus(n: u64) -> Result<u32, LimitError> {
    match u32::try_from(n) {
        Ok(v) if (1..=MAX_VCPUS).contains(&v) => Ok(v),
        _ => Err(LimitError::Vcpus(n)),
    }
}

/// Checks a guest RAM size: a 4 KiB multiple in `MIN_MEM_BYTES..=MAX_MEM_BYTES`.
///
/// # Errors
/// [`LimitError::Mem`].
pub fn check_mem(bytes: u64) -> Result<u64, LimitError> {
    if (MIN_MEM_BYTES..=MAX_MEM_BYTES).contains(&bytes) && bytes.is_multiple_of(PAGE_SIZE) {
        Ok(bytes)
    } else {
        Err(LimitError::Mem(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits() {
        assert_eq!(check_vcpus(1), Ok(1));
        assert_eq!(check_vcpus(255), Ok(255));
        assert!(check_vcpus(0).is_err() && check_vcpus(256).is_err());
        assert!(check_vcpus(u64::from(u32::MAX) + 2).is_err());
        assert_eq!(check_mem(4096), Ok(4096));
        assert_eq!(check_mem(1 << 40), Ok(1 << 40));
        assert!(check_mem(0).is_err() && check_mem(4097).is_err());
        assert!(check_mem((1 << 40) + 4096).is_err());
    }
}
