//! x86 architectural state: vCPU registers, the SEV-ES/SNP VMSA, CPU models.

pub mod regs;
