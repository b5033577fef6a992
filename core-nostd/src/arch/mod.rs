//! x86 architectural state: vCPU registers, the SEV-ES/SNP VMSA, CPU models.

pub mod cpu;
pub mod regs;
pub mod vmsa;
