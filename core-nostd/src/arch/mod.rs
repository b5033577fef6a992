//! x86 architectural state: the SEV-ES/SNP VMSA, CPU models; vCPU registers are launch
//! vocabulary ([`crate::launch::regs`], re-exported here).

pub mod cpu;
pub mod vmsa;

pub use crate::launch::regs;
