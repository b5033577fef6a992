//! Architectural vCPU state as a VMM can set it through KVM (`KVM_SET_REGS`, `KVM_SET_SREGS`,
//! `KVM_SET_XCRS`, `KVM_SET_MSRS`, `KVM_SET_DEBUGREGS`, `KVM_SET_FPU`).
//!
//! Every VP context a bundle can carry (an SNP/SEV-ES VMSA, an IGVM native context, the x86
//! reset state of a reset-vector launch, the TDX initial state) is converted into [`VpRegs`].
//! The native backend loads it into KVM; the SEV-ES/SNP measurement rebuilds the VMSA KVM
//! would measure from it (`arch::vmsa`), applying KVM's normalisations.

/// A segment register in the VMSA encoding (AMD APM Vol. 2, Table B-4): `attrib` is the
/// 12-bit packed form, bits 7:0 = descriptor byte 5 (type, S, DPL, P), bits 11:8 = AVL, L,
/// D/B, G.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Segment {
    /// Selector.
    pub selector: u16,
    /// Packed attributes (VMSA encoding, 12 bits).
    pub attrib: u16,
    /// Byte-granular limit.
    pub limit: u32,
    /// Base address.
    pub base: u64,
}

/// A descriptor-table register (GDTR/IDTR).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DescriptorTable {
    /// Limit.
    pub limit: u16,
    /// Base address.
    pub base: u64,
}

/// General-purpose registers in the architectural order RAX, RCX, RDX, RBX, RSP, RBP, RSI,
/// RDI, R8..R15 (the order of `KVM_SYSTEM_EVENT_TDX_FATAL` data and of ModRM encoding).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Gprs {
    /// RAX.
    pub rax: u64,
    /// RCX.
    pub rcx: u64,
    /// RDX.
    pub rdx: u64,
    /// RBX.
    pub rbx: u64,
    /// RSP.
    pub rsp: u64,
    /// RBP.
    pub rbp: u64,
    /// RSI.
    pub rsi: u64,
    /// RDI.
    pub rdi: u64,
    /// R8.
    pub r8: u64,
    /// R9.
    pub r9: u64,
    /// R10.
    pub r10: u64,
    /// R11.
    pub r11: u64,
    /// R12.
    pub r12: u64,
    /// R13.
    pub r13: u64,
    /// R14.
    pub r14: u64,
    /// R15.
    pub r15: u64,
}

/// The vCPU state a launch sets before the guest's first instruction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VpRegs {
    /// General-purpose registers.
    pub gprs: Gprs,
    /// RIP.
    pub rip: u64,
    /// RFLAGS as given (KVM ORs in bit 1 on `KVM_SET_REGS`).
    pub rflags: u64,
    /// CS.
    pub cs: Segment,
    /// DS.
    pub ds: Segment,
    /// ES.
    pub es: Segment,
    /// FS.
    pub fs: Segment,
    /// GS.
    pub gs: Segment,
    /// SS.
    pub ss: Segment,
    /// TR.
    pub tr: Segment,
    /// LDTR.
    pub ldtr: Segment,
    /// GDTR.
    pub gdtr: DescriptorTable,
    /// IDTR.
    pub idtr: DescriptorTable,
    /// CR0.
    pub cr0: u64,
    /// CR3.
    pub cr3: u64,
    /// CR4.
    pub cr4: u64,
    /// EFER.
    pub efer: u64,
    /// XCR0.
    pub xcr0: u64,
    /// DR6.
    pub dr6: u64,
    /// DR7.
    pub dr7: u64,
    /// IA32_PAT.
    pub pat: u64,
    /// x87 control word.
    pub fcw: u16,
    /// MXCSR.
    pub mxcsr: u32,
}
