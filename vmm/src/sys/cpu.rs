//! The CPUID instruction.

/// Executes CPUID with `leaf` (subleaf 0) and returns (EAX, EBX, ECX, EDX).
pub fn cpuid(leaf: u32) -> (u32, u32, u32, u32) {
    #[allow(unused_unsafe)]
    // SAFETY: `__cpuid_count` has no preconditions on x86_64 (every x86_64 CPU implements
    // CPUID); it only reads processor identification.
    let r = unsafe { std::arch::x86_64::__cpuid_count(leaf, 0) };
    (r.eax, r.ebx, r.ecx, r.edx)
}
