//! The SEV-ES / SEV-SNP VMSA (AMD APM Vol. 2, Table B-4 "VMSA Layout, State Save Area for
//! SEV-ES"; Linux `struct sev_es_save_area`), and the vCPU register models around it:
//!
//! - [`regs_from_vmsa`]: a VMSA carried by an IGVM bundle → the registers QEMU sets through
//!   KVM (QEMU `target/i386/sev.c` `check_vmsa_supported` + `sev_apply_cpu_context`).
//! - [`kvm_measured_vmsa`]: registers → the VMSA page KVM builds and measures
//!   (`arch/x86/kvm/svm/sev.c` `sev_es_sync_vmsa`, with every setter normalisation).
//! - [`check_kvm_loadable`]: would KVM accept these registers at all.
//! - [`reset_regs`], [`regs_from_native_context`], [`tdx_initial_regs`]: the other sources of
//!   initial vCPU state.
//!
//! Field-by-field truth: `../shared/spec/kvm-vmsa-synthesis.md` (cited as \[syn\] below).

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::launch::regs::{DescriptorTable, Gprs, Segment, VpRegs};
use crate::launch::Platform;

/// Size of a VMSA page.
pub const VMSA_SIZE: usize = 4096;

/// The GPA at which KVM measures every VMSA (`INITIAL_VMSA_GPA`, `arch/x86/kvm/svm/sev.c`),
/// and the only VP-context GPA QEMU accepts.
pub const KVM_VMSA_GPA: u64 = 0xFFFF_FFFF_F000;

/// SEV_FEATURES bit 0: SNP active.
pub const SEV_FEAT_SNP_ACTIVE: u64 = 1;

/// The IA32_PAT reset value (AMD APM Vol. 2 §A.3; KVM `MSR_IA32_CR_PAT_DEFAULT`).
pub const PAT_DEFAULT: u64 = 0x0007_0406_0007_0406;

/// KVM's initial x87 control word (`fpu_alloc_guest_fpstate` → `fpstate_init_user`).
pub const FCW_INIT: u16 = 0x37F;
/// KVM's initial MXCSR (`MXCSR_DEFAULT`).
pub const MXCSR_INIT: u32 = 0x1F80;

/// The reset address of the bootstrap processor.
pub const BSP_RESET_ADDR: u32 = 0xFFFF_FFF0;

/// Size of `IgvmNativeVpContextX64` (igvm_defs 0.5.0).
pub const NATIVE_CONTEXT_SIZE: usize = 232;

const CR0_ET: u64 = 1 << 4;
const CR0_PE: u64 = 1 << 0;
const CR0_NW: u64 = 1 << 29;
const CR0_CD: u64 = 1 << 30;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const CR4_MCE: u64 = 1 << 6;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const EFER_SVME: u64 = 1 << 12;
const RFLAGS_FIXED: u64 = 1 << 1;
const RFLAGS_VM: u64 = 1 << 17;
const SEG_P: u16 = 1 << 7;
const SEG_L: u16 = 1 << 9;

/// A segment register in the VMSA (`struct vmcb_seg`, 16 bytes).
#[repr(C)]
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
pub struct VmsaSegment {
    /// Selector.
    pub selector: U16,
    /// Attributes (12-bit VMSA encoding, see [`Segment`]).
    pub attrib: U16,
    /// Limit.
    pub limit: U32,
    /// Base.
    pub base: U64,
}

/// The 4 KiB VMSA page. Reserved ranges are named by offset; all fields little-endian and
/// unaligned so that any byte slice can be viewed as a VMSA.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
#[allow(missing_docs)] // field names are the APM / Linux names
pub struct Vmsa {
    pub es: VmsaSegment,
    pub cs: VmsaSegment,
    pub ss: VmsaSegment,
    pub ds: VmsaSegment,
    pub fs: VmsaSegment,
    pub gs: VmsaSegment,
    pub gdtr: VmsaSegment,
    pub ldtr: VmsaSegment,
    pub idtr: VmsaSegment,
    pub tr: VmsaSegment,
    pub pl0_ssp: U64,
    pub pl1_ssp: U64,
    pub pl2_ssp: U64,
    pub pl3_ssp: U64,
    pub u_cet: U64,
    pub reserved_0c8: [u8; 2],
    pub vmpl: u8,
    pub cpl: u8,
    pub reserved_0cc: [u8; 4],
    pub efer: U64,
    pub reserved_0d8: [u8; 104],
    pub xss: U64,
    pub cr4: U64,
    pub cr3: U64,
    pub cr0: U64,
    pub dr7: U64,
    pub dr6: U64,
    pub rflags: U64,
    pub rip: U64,
    pub dr0: U64,
    pub dr1: U64,
    pub dr2: U64,
    pub dr3: U64,
    pub dr0_addr_mask: U64,
    pub dr1_addr_mask: U64,
    pub dr2_addr_mask: U64,
    pub dr3_addr_mask: U64,
    pub reserved_1c0: [u8; 24],
    pub rsp: U64,
    pub s_cet: U64,
    pub ssp: U64,
    pub isst_addr: U64,
    pub rax: U64,
    pub star: U64,
    pub lstar: U64,
    pub cstar: U64,
    pub sfmask: U64,
    pub kernel_gs_base: U64,
    pub sysenter_cs: U64,
    pub sysenter_esp: U64,
    pub sysenter_eip: U64,
    pub cr2: U64,
    pub reserved_248: [u8; 32],
    pub g_pat: U64,
    pub dbgctl: U64,
    pub br_from: U64,
    pub br_to: U64,
    pub last_excp_from: U64,
    pub last_excp_to: U64,
    pub reserved_298: [u8; 72],
    pub spec_ctrl: U64,
    pub pkru: U32,
    pub tsc_aux: U32,
    pub tsc_scale: U64,
    pub tsc_offset: U64,
    pub reserved_300: [u8; 8],
    pub rcx: U64,
    pub rdx: U64,
    pub rbx: U64,
    pub reserved_320: U64,
    pub rbp: U64,
    pub rsi: U64,
    pub rdi: U64,
    pub r8: U64,
    pub r9: U64,
    pub r10: U64,
    pub r11: U64,
    pub r12: U64,
    pub r13: U64,
    pub r14: U64,
    pub r15: U64,
    pub reserved_380: [u8; 16],
    pub guest_exit_info_1: U64,
    pub guest_exit_info_2: U64,
    pub guest_exit_int_info: U64,
    pub guest_nrip: U64,
    pub sev_features: U64,
    pub vintr_ctrl: U64,
    pub guest_exit_code: U64,
    pub virtual_tom: U64,
    pub tlb_id: U64,
    pub pcpu_id: U64,
    pub event_inj: U64,
    pub xcr0: U64,
    pub reserved_3f0: [u8; 16],
    pub x87_dp: U64,
    pub mxcsr: U32,
    pub x87_ftw: U16,
    pub x87_fsw: U16,
    pub x87_fcw: U16,
    pub x87_fop: U16,
    pub x87_ds: U16,
    pub x87_cs: U16,
    pub x87_rip: U64,
    pub fpreg_x87: [u8; 80],
    pub fpreg_xmm: [u8; 256],
    pub fpreg_ymm: [u8; 256],
    pub reserved_670: [u8; 0x990],
}

// Layout checks against ../shared/spec/igvm-snp.md §4.2 and [syn] §2.
const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(size_of::<VmsaSegment>() == 16);
    assert!(size_of::<Vmsa>() == VMSA_SIZE);
    assert!(offset_of!(Vmsa, tr) == 0x90);
    assert!(offset_of!(Vmsa, vmpl) == 0xCA);
    assert!(offset_of!(Vmsa, cpl) == 0xCB);
    assert!(offset_of!(Vmsa, efer) == 0xD0);
    assert!(offset_of!(Vmsa, xss) == 0x140);
    assert!(offset_of!(Vmsa, cr4) == 0x148);
    assert!(offset_of!(Vmsa, cr0) == 0x158);
    assert!(offset_of!(Vmsa, rflags) == 0x170);
    assert!(offset_of!(Vmsa, rip) == 0x178);
    assert!(offset_of!(Vmsa, rsp) == 0x1D8);
    assert!(offset_of!(Vmsa, rax) == 0x1F8);
    assert!(offset_of!(Vmsa, cr2) == 0x240);
    assert!(offset_of!(Vmsa, g_pat) == 0x268);
    assert!(offset_of!(Vmsa, spec_ctrl) == 0x2E0);
    assert!(offset_of!(Vmsa, pkru) == 0x2E8);
    assert!(offset_of!(Vmsa, rcx) == 0x308);
    assert!(offset_of!(Vmsa, rbp) == 0x328);
    assert!(offset_of!(Vmsa, r15) == 0x378);
    assert!(offset_of!(Vmsa, sev_features) == 0x3B0);
    assert!(offset_of!(Vmsa, virtual_tom) == 0x3C8);
    assert!(offset_of!(Vmsa, xcr0) == 0x3E8);
    assert!(offset_of!(Vmsa, x87_dp) == 0x400);
    assert!(offset_of!(Vmsa, mxcsr) == 0x408);
    assert!(offset_of!(Vmsa, x87_fcw) == 0x410);
    assert!(offset_of!(Vmsa, x87_ds) == 0x414);
    assert!(offset_of!(Vmsa, fpreg_x87) == 0x420);
    assert!(offset_of!(Vmsa, fpreg_xmm) == 0x470);
    assert!(offset_of!(Vmsa, fpreg_ymm) == 0x570);
    assert!(offset_of!(Vmsa, reserved_670) == 0x670);
};

/// Names of the VMSA byte ranges, for error messages: (name, offset, length), ascending.
const FIELDS: &[(&str, u16, u16)] = &[
    ("es", 0x00, 16),
    ("cs", 0x10, 16),
    ("ss", 0x20, 16),
    ("ds", 0x30, 16),
    ("fs", 0x40, 16),
    ("gs", 0x50, 16),
    ("gdtr", 0x60, 16),
    ("ldtr", 0x70, 16),
    ("idtr", 0x80, 16),
    ("tr", 0x90, 16),
    ("pl0_ssp..u_cet", 0xA0, 0x28),
    ("reserved_0c8", 0xC8, 2),
    ("vmpl", 0xCA, 1),
    ("cpl", 0xCB, 1),
    ("reserved_0cc", 0xCC, 4),
    ("efer", 0xD0, 8),
    ("reserved_0d8", 0xD8, 104),
    ("xss", 0x140, 8),
    ("cr4", 0x148, 8),
    ("cr3", 0x150, 8),
    ("cr0", 0x158, 8),
    ("dr7", 0x160, 8),
    ("dr6", 0x168, 8),
    ("rflags", 0x170, 8),
    ("rip", 0x178, 8),
    ("dr0..dr3", 0x180, 32),
    ("dr0..dr3 addr masks", 0x1A0, 32),
    ("reserved_1c0", 0x1C0, 24),
    ("rsp", 0x1D8, 8),
    ("s_cet/ssp/isst_addr", 0x1E0, 24),
    ("rax", 0x1F8, 8),
    ("star/lstar/cstar/sfmask", 0x200, 32),
    ("kernel_gs_base", 0x220, 8),
    ("sysenter_cs/esp/eip", 0x228, 24),
    ("cr2", 0x240, 8),
    ("reserved_248", 0x248, 32),
    ("g_pat", 0x268, 8),
    ("dbgctl", 0x270, 8),
    ("br_from/br_to/last_excp", 0x278, 32),
    ("reserved_298", 0x298, 72),
    ("spec_ctrl", 0x2E0, 8),
    ("pkru", 0x2E8, 4),
    ("tsc_aux", 0x2EC, 4),
    ("tsc_scale/tsc_offset", 0x2F0, 16),
    ("reserved_300", 0x300, 8),
    ("rcx", 0x308, 8),
    ("rdx", 0x310, 8),
    ("rbx", 0x318, 8),
    ("reserved_320", 0x320, 8),
    ("rbp..r15", 0x328, 0x58),
    ("reserved_380", 0x380, 16),
    ("guest_exit_info/nrip", 0x390, 32),
    ("sev_features", 0x3B0, 8),
    ("vintr_ctrl", 0x3B8, 8),
    ("guest_exit_code", 0x3C0, 8),
    ("virtual_tom", 0x3C8, 8),
    ("tlb_id/pcpu_id", 0x3D0, 16),
    ("event_inj", 0x3E0, 8),
    ("xcr0", 0x3E8, 8),
    ("reserved_3f0", 0x3F0, 16),
    ("x87_dp", 0x400, 8),
    ("mxcsr", 0x408, 4),
    ("x87_ftw", 0x40C, 2),
    ("x87_fsw", 0x40E, 2),
    ("x87_fcw", 0x410, 2),
    ("x87_fop", 0x412, 2),
    ("x87_ds/x87_cs", 0x414, 4),
    ("x87_rip", 0x418, 8),
    ("fpreg_x87", 0x420, 80),
    ("fpreg_xmm", 0x470, 256),
    ("fpreg_ymm", 0x570, 256),
    ("reserved_670", 0x670, 0x990),
];

/// The name of the VMSA field containing byte `offset` (`"beyond the VMSA"` past 4 KiB).
pub fn field_name(offset: usize) -> &'static str {
    FIELDS
        .iter()
        .find(|&&(_, off, len)| {
            let (off, len) = (usize::from(off), usize::from(len));
            offset >= off && offset - off < len
        })
        .map(|&(name, _, _)| name)
        .unwrap_or("beyond the VMSA")
}

/// Why a VMSA, a native VP context or a register set is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum VmsaError {
    /// The VP context data is longer than one page.
    TooLong {
        /// Its length.
        len: usize,
    },
    /// A VMSA VP context on a platform without VMSAs (QEMU: only SEV-ES and SNP).
    UnsupportedPlatform {
        /// The platform.
        platform: Platform,
    },
    /// A VMSA field KVM does not take from the VMM is non-zero (QEMU `check_vmsa_supported`:
    /// the guest would run with, or be measured with, something else).
    UnsupportedField {
        /// Field name.
        field: &'static str,
        /// Offset of the first non-zero byte in the VMSA.
        offset: u16,
    },
    /// SEV_FEATURES bit 0 (SNP active) does not match the platform.
    SevFeatures {
        /// The VMSA's SEV_FEATURES.
        value: u64,
        /// The platform.
        platform: Platform,
    },
    /// TR base differs from LDTR base: QEMU loads the VMSA's `ldtr.base` into TR
    /// (`sev_apply_cpu_context`), so QEMU and a correct loader would disagree; refused.
    TrBase {
        /// VMSA tr.base.
        tr_base: u64,
        /// VMSA ldtr.base.
        ldtr_base: u64,
    },
    /// A field does not fit the KVM ABI (e.g. a GDTR/IDTR limit above 0xFFFF: `kvm_dtable`
    /// has a 16-bit limit).
    FieldRange {
        /// Field name.
        field: &'static str,
        /// Offset in the VMSA / context.
        offset: u16,
        /// The value.
        value: u64,
    },
    /// A reserved byte of an `IgvmNativeVpContextX64` (or of the page after it) is non-zero.
    NativeReserved {
        /// Offset of the first non-zero reserved byte.
        offset: u16,
    },
    /// A native-context segment attribute has bits 11:8 set (igvm_defs: "must be zero").
    NativeAttributes {
        /// `code_attributes` or `data_attributes`.
        field: &'static str,
        /// The value.
        value: u16,
    },
    /// KVM would refuse to load these registers (`KVM_SET_SREGS`/`SET_DEBUGREGS`/
    /// `SET_XCRS`/`SET_MSRS` EINVAL, or `sev_es_sync_vmsa` failing).
    NotLoadable {
        /// Register.
        field: &'static str,
        /// Its value.
        value: u64,
        /// The rule it breaks.
        reason: &'static str,
    },
}

impl core::fmt::Display for VmsaError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            VmsaError::TooLong { len } => {
                write!(f, "VP context is {len} bytes, more than one 4096-byte page")
            }
            VmsaError::UnsupportedPlatform { platform } => write!(
                f,
                "a VMSA VP context is only valid for sev-es and snp, not {platform}"
            ),
            VmsaError::UnsupportedField { field, offset } => write!(
                f,
                "VMSA field {field} (byte {offset:#x}) is non-zero, but KVM does not take it \
                 from the VMM: the guest would be launched and measured without it"
            ),
            VmsaError::SevFeatures { value, platform } => write!(
                f,
                "VMSA sev_features {value:#x}: bit 0 (SNP active) must be set exactly for snp \
                 (platform {platform})"
            ),
            VmsaError::TrBase { tr_base, ldtr_base } => write!(
                f,
                "VMSA tr.base {tr_base:#x} differs from ldtr.base {ldtr_base:#x}: QEMU would \
                 load ldtr.base into TR; refused so that QEMU and relaunch agree"
            ),
            VmsaError::FieldRange {
                field,
                offset,
                value,
            } => write!(
                f,
                "field {field} (byte {offset:#x}) = {value:#x} does not fit the KVM ABI"
            ),
            VmsaError::NativeReserved { offset } => write!(
                f,
                "native VP context: reserved byte {offset:#x} is non-zero"
            ),
            VmsaError::NativeAttributes { field, value } => write!(
                f,
                "native VP context: {field} = {value:#x} has bits 11:8 set (must be zero)"
            ),
            VmsaError::NotLoadable {
                field,
                value,
                reason,
            } => write!(f, "KVM would refuse {field} = {value:#x}: {reason}"),
        }
    }
}

fn vmsa_seg(s: &VmsaSegment) -> Segment {
    Segment {
        selector: s.selector.get(),
        // QEMU FLAGS_VMSA_TO_SEGCACHE moves bits 15:8 to 27:20 of the segment cache and
        // `set_seg` only reads AVL/L/DB/G (bits 23:20): bits 15:12 are lost [syn] §4(b).
        attrib: s.attrib.get() & 0x0FFF,
        limit: s.limit.get(),
        base: s.base.get(),
    }
}

fn dtable(s: &VmsaSegment, field: &'static str, offset: u16) -> Result<DescriptorTable, VmsaError> {
    let limit = s.limit.get();
    let limit = u16::try_from(limit).map_err(|_| VmsaError::FieldRange {
        field,
        offset,
        value: u64::from(limit),
    })?;
    Ok(DescriptorTable {
        limit,
        base: s.base.get(),
    })
}

/// Copies up to one page into a zero-filled VMSA-sized buffer.
fn page_buf(bytes: &[u8]) -> Result<[u8; VMSA_SIZE], VmsaError> {
    let mut buf = [0u8; VMSA_SIZE];
    let dst = buf
        .get_mut(..bytes.len())
        .ok_or(VmsaError::TooLong { len: bytes.len() })?;
    dst.copy_from_slice(bytes);
    Ok(buf)
}

/// Views a page as a VMSA (zero-extended if shorter than 4096 bytes).
///
/// # Errors
/// [`VmsaError::TooLong`] for more than 4096 bytes.
pub fn parse_vmsa(page: &[u8]) -> Result<Vmsa, VmsaError> {
    let buf = page_buf(page)?;
    Vmsa::read_from_bytes(&buf[..]).map_err(|_| VmsaError::TooLong { len: page.len() })
}

/// QEMU's `check_vmsa_supported` (target/i386/sev.c): every byte outside the fields KVM
/// takes from the VMM must be zero; SEV_FEATURES bit 0 must be set exactly on SNP.
///
/// Allowed fields: es, cs, ss, ds, fs, gs, gdtr, ldtr, idtr, tr (whole 16 bytes each),
/// efer, cr0, cr3, cr4, xcr0, dr6, dr7, the 16 GPRs, rip, rflags, g_pat, x87_fcw, mxcsr,
/// sev_features. Whether sev_features ⊆ the host KVM's `KVM_X86_SEV_VMSA_FEATURES` is a
/// property of the host, checked by the backend, not here.
///
/// # Errors
/// [`VmsaError::UnsupportedPlatform`], [`VmsaError::UnsupportedField`] (first offending
/// byte), [`VmsaError::SevFeatures`].
pub fn check_vmsa_supported(vmsa: &Vmsa, platform: Platform) -> Result<(), VmsaError> {
    let snp = match platform {
        Platform::Snp => true,
        Platform::SevEs => false,
        Platform::Native | Platform::Sev | Platform::Tdx => {
            return Err(VmsaError::UnsupportedPlatform { platform })
        }
    };
    let mut c = *vmsa;
    let zseg = VmsaSegment::new_zeroed();
    for s in [
        &mut c.es,
        &mut c.cs,
        &mut c.ss,
        &mut c.ds,
        &mut c.fs,
        &mut c.gs,
        &mut c.gdtr,
        &mut c.ldtr,
        &mut c.idtr,
        &mut c.tr,
    ] {
        *s = zseg;
    }
    let z = U64::ZERO;
    for r in [
        &mut c.efer,
        &mut c.cr0,
        &mut c.cr3,
        &mut c.cr4,
        &mut c.xcr0,
        &mut c.dr6,
        &mut c.dr7,
        &mut c.rax,
        &mut c.rcx,
        &mut c.rdx,
        &mut c.rbx,
        &mut c.rsp,
        &mut c.rbp,
        &mut c.rsi,
        &mut c.rdi,
        &mut c.r8,
        &mut c.r9,
        &mut c.r10,
        &mut c.r11,
        &mut c.r12,
        &mut c.r13,
        &mut c.r14,
        &mut c.r15,
        &mut c.rip,
        &mut c.rflags,
        &mut c.g_pat,
        &mut c.sev_features,
    ] {
        *r = z;
    }
    c.x87_fcw = U16::ZERO;
    c.mxcsr = U32::ZERO;
    if let Some(off) = c.as_bytes().iter().position(|&b| b != 0) {
        return Err(VmsaError::UnsupportedField {
            field: field_name(off),
            offset: u16::try_from(off).unwrap_or(u16::MAX),
        });
    }
    let features = vmsa.sev_features.get();
    if (features & SEV_FEAT_SNP_ACTIVE != 0) != snp {
        return Err(VmsaError::SevFeatures {
            value: features,
            platform,
        });
    }
    Ok(())
}

/// A bundle's VMSA → (the registers QEMU gives KVM for it, the VMSA's SEV_FEATURES).
///
/// Implements QEMU's path for an IGVM VP_CONTEXT on SEV-ES/SNP (\[syn\] §4(b)):
/// [`check_vmsa_supported`], then `sev_apply_cpu_context`:
/// - segment attributes lose bits 15:12 (VMSA → SegmentCache → `kvm_segment`);
/// - CR0 gets ET (bit 4) ORed in (`cpu_x86_update_cr0`);
/// - gdtr/idtr keep only limit and base (selector and attributes are dropped);
/// - x87_fcw and mxcsr are copied into QEMU's CPU state but never reach KVM (QEMU sends
///   XSTATE_BV = 0), so the returned registers carry KVM's initial values 0x37F / 0x1F80;
/// - **TR base quirk:** QEMU loads `ldtr.base` into TR. We refuse a VMSA whose tr.base and
///   ldtr.base differ ([`VmsaError::TrBase`]); for every accepted VMSA both readings agree.
///
/// CR4 bits the QEMU `-cpu` model lacks (QEMU's `cpu_x86_update_cr4` may drop SMAP/PKE/...;
/// UNCONFIRMED list) are not modelled: they are kept.
///
/// # Errors
/// Those of [`parse_vmsa`] and [`check_vmsa_supported`], [`VmsaError::TrBase`], and
/// [`VmsaError::FieldRange`] for a GDTR/IDTR limit above 0xFFFF.
pub fn regs_from_vmsa(page: &[u8], platform: Platform) -> Result<(VpRegs, u64), VmsaError> {
    let v = parse_vmsa(page)?;
    check_vmsa_supported(&v, platform)?;
    if v.tr.base != v.ldtr.base {
        return Err(VmsaError::TrBase {
            tr_base: v.tr.base.get(),
            ldtr_base: v.ldtr.base.get(),
        });
    }
    let regs = VpRegs {
        gprs: Gprs {
            rax: v.rax.get(),
            rcx: v.rcx.get(),
            rdx: v.rdx.get(),
            rbx: v.rbx.get(),
            rsp: v.rsp.get(),
            rbp: v.rbp.get(),
            rsi: v.rsi.get(),
            rdi: v.rdi.get(),
            r8: v.r8.get(),
            r9: v.r9.get(),
            r10: v.r10.get(),
            r11: v.r11.get(),
            r12: v.r12.get(),
            r13: v.r13.get(),
            r14: v.r14.get(),
            r15: v.r15.get(),
        },
        rip: v.rip.get(),
        rflags: v.rflags.get(),
        cs: vmsa_seg(&v.cs),
        ds: vmsa_seg(&v.ds),
        es: vmsa_seg(&v.es),
        fs: vmsa_seg(&v.fs),
        gs: vmsa_seg(&v.gs),
        ss: vmsa_seg(&v.ss),
        tr: vmsa_seg(&v.tr),
        ldtr: vmsa_seg(&v.ldtr),
        gdtr: dtable(&v.gdtr, "gdtr.limit", 0x64)?,
        idtr: dtable(&v.idtr, "idtr.limit", 0x84)?,
        cr0: v.cr0.get() | CR0_ET,
        cr3: v.cr3.get(),
        cr4: v.cr4.get(),
        efer: v.efer.get(),
        xcr0: v.xcr0.get(),
        dr6: v.dr6.get(),
        dr7: v.dr7.get(),
        pat: v.g_pat.get(),
        fcw: FCW_INIT,
        mxcsr: MXCSR_INIT,
    };
    Ok((regs, v.sev_features.get()))
}

/// The segment as KVM stores it in the VMCB (`svm_set_segment`), from the `kvm_segment`
/// QEMU builds (`set_seg`, or `set_v8086_seg` when RFLAGS.VM is set).
fn kvm_seg(s: &Segment, vm86: bool) -> VmsaSegment {
    // set_v8086_seg: type 3, S, DPL 3, P; no DB/L/G/AVL.
    let attrib = if vm86 { 0xF3 } else { s.attrib & 0x0FFF };
    VmsaSegment {
        selector: U16::new(s.selector),
        attrib: U16::new(attrib),
        limit: U32::new(s.limit),
        base: U64::new(s.base),
    }
}

fn kvm_dtable(d: &DescriptorTable) -> VmsaSegment {
    // Only limit and base reach vmcb->save.gdtr/idtr [syn] §2.
    VmsaSegment {
        selector: U16::ZERO,
        attrib: U16::ZERO,
        limit: U32::new(u32::from(d.limit)),
        base: U64::new(d.base),
    }
}

/// The VMSA KVM builds from `regs` and measures (`sev_es_sync_vmsa`, \[syn\] §1–§3), for a VMM
/// that sets REGS, SREGS, XCRS, DEBUGREGS and the PAT MSR from `regs` and **sends no FPU
/// state** (XSTATE_BV = 0, as QEMU does; `regs.fcw`/`regs.mxcsr` are not used).
///
/// Normalisations: RFLAGS |= 2; EFER |= SVME; CR4 |= MCE (0x40, the host's CR4.MCE on every
/// ordinary host); CR0 &= ~(CD|NW) (`KVM_X86_QUIRK_CD_NW_CLEARED`, the SVM default);
/// gdtr/idtr selector and attributes 0; segment attribute bits 15:12 dropped (P already
/// clear for unusable segments); RFLAGS.VM gives the six data/code segments attrib 0xF3;
/// CPL = SS.DPL; cr2, xss, pkru, dr0-3, MSRs other than PAT: 0.
///
/// SEV_FEATURES: `vmsa_features | SNP_ACTIVE` on SNP (always INIT2); on SEV-ES
/// `vmsa_features & !SNP_ACTIVE` for INIT2 (`init2 = true`, VM type 3) and 0 for legacy
/// `KVM_SEV_ES_INIT` (`init2 = false`). FPU block (x87_fcw 0x37F, mxcsr 0x1F80, rest 0,
/// x87_ds/cs 0): INIT2 and SNP only; legacy VMSAs measure it as zeros.
/// Other platforms have no VMSA; for them this builds the legacy SEV-ES page.
pub fn kvm_measured_vmsa(
    regs: &VpRegs,
    vmsa_features: u64,
    platform: Platform,
    init2: bool,
) -> [u8; VMSA_SIZE] {
    let mut v = Vmsa::new_zeroed();
    let vm86 = regs.rflags & RFLAGS_VM != 0;
    v.es = kvm_seg(&regs.es, vm86);
    v.cs = kvm_seg(&regs.cs, vm86);
    v.ss = kvm_seg(&regs.ss, vm86);
    v.ds = kvm_seg(&regs.ds, vm86);
    v.fs = kvm_seg(&regs.fs, vm86);
    v.gs = kvm_seg(&regs.gs, vm86);
    v.ldtr = kvm_seg(&regs.ldtr, false);
    v.tr = kvm_seg(&regs.tr, false);
    v.gdtr = kvm_dtable(&regs.gdtr);
    v.idtr = kvm_dtable(&regs.idtr);
    // svm_set_segment(SS): vmcb->save.cpl = dpl.
    v.cpl = ((v.ss.attrib.get() >> 5) & 3) as u8;
    v.efer = U64::new(regs.efer | EFER_SVME);
    v.cr4 = U64::new(regs.cr4 | CR4_MCE);
    v.cr3 = U64::new(regs.cr3);
    v.cr0 = U64::new(regs.cr0 & !(CR0_CD | CR0_NW));
    v.dr7 = U64::new(regs.dr7);
    v.dr6 = U64::new(regs.dr6);
    v.rflags = U64::new(regs.rflags | RFLAGS_FIXED);
    v.rip = U64::new(regs.rip);
    let g = &regs.gprs;
    v.rsp = U64::new(g.rsp);
    v.rax = U64::new(g.rax);
    v.rcx = U64::new(g.rcx);
    v.rdx = U64::new(g.rdx);
    v.rbx = U64::new(g.rbx);
    v.rbp = U64::new(g.rbp);
    v.rsi = U64::new(g.rsi);
    v.rdi = U64::new(g.rdi);
    v.r8 = U64::new(g.r8);
    v.r9 = U64::new(g.r9);
    v.r10 = U64::new(g.r10);
    v.r11 = U64::new(g.r11);
    v.r12 = U64::new(g.r12);
    v.r13 = U64::new(g.r13);
    v.r14 = U64::new(g.r14);
    v.r15 = U64::new(g.r15);
    v.g_pat = U64::new(regs.pat);
    v.xcr0 = U64::new(regs.xcr0);
    let (features, fpu) = match platform {
        Platform::Snp => (vmsa_features | SEV_FEAT_SNP_ACTIVE, true),
        _ if init2 => (vmsa_features & !SEV_FEAT_SNP_ACTIVE, true),
        _ => (0, false),
    };
    v.sev_features = U64::new(features);
    if fpu {
        v.x87_fcw = U16::new(FCW_INIT);
        v.mxcsr = U32::new(MXCSR_INIT);
    }
    let mut out = [0u8; VMSA_SIZE];
    out.copy_from_slice(v.as_bytes());
    out
}

fn not_loadable(field: &'static str, value: u64, reason: &'static str) -> VmsaError {
    VmsaError::NotLoadable {
        field,
        value,
        reason,
    }
}

/// Whether KVM would accept these registers on an SEV-ES/SNP (or plain) vCPU, with the rules
/// that do not depend on the host's CPUID:
/// - DR7 must be 0 or 0x400 (`sev_es_sync_vmsa`); DR6/DR7 bits 63:32 zero (`kvm_dr6_valid`,
///   `kvm_dr7_valid`);
/// - CR0 bits 63:32 zero, NW only with CD, PG only with PE (`kvm_is_valid_cr0`);
/// - `kvm_is_valid_sregs`: EFER.LME with CR0.PG needs CR4.PAE, EFER.LMA and a CR3 below
///   2^52; otherwise neither EFER.LMA nor CS.L;
/// - CR4: no architecturally reserved bit (15, 25, 26, 29–31, 33–63; bit 27 LASS, 28 LAM_SUP
///   and 32 FRED are defined and left to KVM's CPUID check);
/// - EFER: only SCE, LME, LMA, NXE, SVME, LMSLE, FFXSR, TCE, AUTOIBRS (`kvm_valid_efer`);
/// - XCR0 (`__kvm_set_xcr`): FP set; YMM needs SSE; BNDREGS = BNDCSR; AVX-512 all three or
///   none and then YMM; XTILECFG = XTILEDATA; bit 63 clear;
/// - PAT: every byte 0, 1, 4, 5, 6 or 7 (`kvm_pat_valid`).
///
/// Host-dependent rules (CR4/XCR0 bits the guest CPUID lacks, MAXPHYADDR below 52) are the
/// backend's to find out: KVM reports them as EINVAL.
///
/// # Errors
/// [`VmsaError::NotLoadable`] naming the first register that breaks a rule.
pub fn check_kvm_loadable(regs: &VpRegs) -> Result<(), VmsaError> {
    if regs.dr7 != 0 && regs.dr7 != 0x400 {
        return Err(not_loadable(
            "dr7",
            regs.dr7,
            "SEV-ES/SNP launch needs DR7 0 or 0x400 (sev_es_sync_vmsa)",
        ));
    }
    if regs.dr6 >> 32 != 0 {
        return Err(not_loadable("dr6", regs.dr6, "bits 63:32 must be zero"));
    }
    let cr0 = regs.cr0;
    if cr0 >> 32 != 0 {
        return Err(not_loadable("cr0", cr0, "bits 63:32 must be zero"));
    }
    if cr0 & CR0_NW != 0 && cr0 & CR0_CD == 0 {
        return Err(not_loadable("cr0", cr0, "NW set without CD"));
    }
    if cr0 & CR0_PG != 0 && cr0 & CR0_PE == 0 {
        return Err(not_loadable("cr0", cr0, "PG set without PE"));
    }
    const CR4_RESERVED: u64 = !((1u64 << 32) | (1 << 28) | (1 << 27) | 0x01FF_7FFF);
    if regs.cr4 & CR4_RESERVED != 0 {
        return Err(not_loadable("cr4", regs.cr4, "reserved bit set"));
    }
    const EFER_VALID: u64 = 1
        | (1 << 8)
        | (1 << 10)
        | (1 << 11)
        | (1 << 12)
        | (1 << 13)
        | (1 << 14)
        | (1 << 15)
        | (1 << 21);
    if regs.efer & !EFER_VALID != 0 {
        return Err(not_loadable("efer", regs.efer, "reserved bit set"));
    }
    if regs.efer & EFER_LME != 0 && cr0 & CR0_PG != 0 {
        if regs.cr4 & CR4_PAE == 0 {
            return Err(not_loadable(
                "cr4",
                regs.cr4,
                "long mode (EFER.LME, CR0.PG) needs PAE",
            ));
        }
        if regs.efer & EFER_LMA == 0 {
            return Err(not_loadable(
                "efer",
                regs.efer,
                "EFER.LME and CR0.PG need EFER.LMA",
            ));
        }
        if regs.cr3 >> 52 != 0 {
            return Err(not_loadable(
                "cr3",
                regs.cr3,
                "beyond 52 physical address bits",
            ));
        }
    } else {
        if regs.efer & EFER_LMA != 0 {
            return Err(not_loadable(
                "efer",
                regs.efer,
                "EFER.LMA outside long mode",
            ));
        }
        if regs.cs.attrib & SEG_L != 0 {
            return Err(not_loadable(
                "cs.attrib",
                u64::from(regs.cs.attrib),
                "CS.L outside long mode",
            ));
        }
    }
    let x = regs.xcr0;
    const FP: u64 = 1;
    const SSE: u64 = 2;
    const YMM: u64 = 4;
    const BNDREGS: u64 = 1 << 3;
    const BNDCSR: u64 = 1 << 4;
    const AVX512: u64 = 0x7 << 5;
    const TILE: u64 = 0x3 << 17;
    if x & FP == 0 {
        return Err(not_loadable("xcr0", x, "x87 (bit 0) must be set"));
    }
    if x & YMM != 0 && x & SSE == 0 {
        return Err(not_loadable("xcr0", x, "AVX state needs SSE state"));
    }
    if (x & BNDREGS == 0) != (x & BNDCSR == 0) {
        return Err(not_loadable("xcr0", x, "BNDREGS and BNDCSR go together"));
    }
    if x & AVX512 != 0 && (x & AVX512 != AVX512 || x & YMM == 0) {
        return Err(not_loadable(
            "xcr0",
            x,
            "AVX-512 state needs all three components and AVX",
        ));
    }
    if (x & TILE != 0) && (x & TILE != TILE) {
        return Err(not_loadable(
            "xcr0",
            x,
            "XTILECFG and XTILEDATA go together",
        ));
    }
    if x >> 63 != 0 {
        return Err(not_loadable("xcr0", x, "bit 63 is reserved"));
    }
    let pat = regs.pat;
    if pat & 0xF8F8_F8F8_F8F8_F8F8 != 0 || (pat | ((pat & 0x0202_0202_0202_0202) << 1)) != pat {
        return Err(not_loadable(
            "pat",
            pat,
            "memory types 2, 3 and >7 are invalid",
        ));
    }
    Ok(())
}

fn seg(selector: u16, attrib: u16, limit: u32, base: u64) -> Segment {
    Segment {
        selector,
        attrib,
        limit,
        base,
    }
}

/// QEMU's x86 reset state for a vCPU, as QEMU sends it to KVM (\[syn\] §4(a);
/// `x86_cpu_reset_hold` + `kvm_put_sregs2`): CS sel 0xF000 base `reset_addr & 0xFFFF0000`
/// limit 0xFFFF attrib 0x9B, RIP `reset_addr & 0xFFFF`; ES/SS/DS/FS/GS attrib 0x93 limit
/// 0xFFFF; LDTR 0x82, TR 0x8B (limit 0xFFFF); GDTR/IDTR limit 0xFFFF; RDX = `vcpu_sig`
/// (CPUID(1).EAX of `-cpu`, [`crate::arch::cpu`]); RFLAGS 2; CR0 0x60000010; CR4 0;
/// EFER 0; DR6 0xFFFF0FF0; DR7 0x400; PAT default; XCR0 1; FCW 0x37F; MXCSR 0x1F80.
///
/// The BSP uses [`BSP_RESET_ADDR`]; SEV-ES/SNP APs use the address from OVMF's SEV-ES
/// reset block (GUID 00f771de-1a7e-4fcb-890e-68c77e2fb44e). The measured VMSA of this state
/// equals sev-snp-measure's QEMU model (`vmsa.py`).
pub fn reset_regs(vcpu_sig: u32, reset_addr: u32) -> VpRegs {
    let data = seg(0, 0x93, 0xFFFF, 0);
    VpRegs {
        gprs: Gprs {
            rdx: u64::from(vcpu_sig),
            ..Gprs::default()
        },
        rip: u64::from(reset_addr & 0xFFFF),
        rflags: RFLAGS_FIXED,
        cs: seg(0xF000, 0x9B, 0xFFFF, u64::from(reset_addr & 0xFFFF_0000)),
        ds: data,
        es: data,
        fs: data,
        gs: data,
        ss: data,
        tr: seg(0, 0x8B, 0xFFFF, 0),
        ldtr: seg(0, 0x82, 0xFFFF, 0),
        gdtr: DescriptorTable {
            limit: 0xFFFF,
            base: 0,
        },
        idtr: DescriptorTable {
            limit: 0xFFFF,
            base: 0,
        },
        cr0: 0x6000_0010,
        cr3: 0,
        cr4: 0,
        efer: 0,
        xcr0: 1,
        dr6: 0xFFFF_0FF0,
        dr7: 0x400,
        pat: PAT_DEFAULT,
        fcw: FCW_INIT,
        mxcsr: MXCSR_INIT,
    }
}

/// Converts a 16-bit descriptor-flags attribute (bits 7:0 = descriptor byte 5, bits 15:12 =
/// AVL/L/DB/G, as in `IgvmNativeVpContextX64` and QEMU's `FLAGS_TO_SEGCACHE(a) = a << 8`)
/// to the 12-bit VMSA encoding.
pub const fn attrib_from_flags16(a: u16) -> u16 {
    (a & 0xFF) | ((a >> 4) & 0xF00)
}

fn rd_u16(b: &[u8; VMSA_SIZE], off: usize) -> u16 {
    let mut x = [0u8; 2];
    if let Some(s) = b.get(off..off.saturating_add(2)) {
        x.copy_from_slice(s);
    }
    u16::from_le_bytes(x)
}

fn rd_u32(b: &[u8; VMSA_SIZE], off: usize) -> u32 {
    let mut x = [0u8; 4];
    if let Some(s) = b.get(off..off.saturating_add(4)) {
        x.copy_from_slice(s);
    }
    u32::from_le_bytes(x)
}

fn rd_u64(b: &[u8; VMSA_SIZE], off: usize) -> u64 {
    let mut x = [0u8; 8];
    if let Some(s) = b.get(off..off.saturating_add(8)) {
        x.copy_from_slice(s);
    }
    u64::from_le_bytes(x)
}

/// An IGVM native VP context (`igvm_defs::IgvmNativeVpContextX64`, 232 bytes; the rest of
/// the page must be zero) → registers. Used for NATIVE and SEV bundles.
///
/// Layout (igvm_defs 0.5.0): rax..r15 @0x00, rip @0x80, rflags @0x88, idtr_base @0x90,
/// idtr_limit u16 @0x98, reserved [u16; 2] @0x9A, gdtr_limit u16 @0x9E, gdtr_base @0xA0,
/// code {selector u16 @0xA8, attributes u16 @0xAA, base u32 @0xAC, limit u32 @0xB0},
/// data {selector @0xB4, attributes @0xB6, base @0xB8, limit @0xBC}, gs_base @0xC0,
/// cr0 @0xC8, cr3 @0xD0, cr4 @0xD8, efer @0xE0.
///
/// Attributes use the 16-bit descriptor-flags encoding (QEMU `target/i386/igvm.c`
/// `FLAGS_TO_SEGCACHE(a) = a << 8`; svsm writes 0xC09B), converted with
/// [`attrib_from_flags16`]. The data segment applies to DS, ES, FS, GS and SS; GS takes
/// `gs_base` (the igvm_defs field; QEMU's native loader currently ignores it and uses
/// `data_base`). Registers the context does not name take the [`reset_regs`] values
/// (LDTR, TR, DR6, DR7, PAT, XCR0, FCW, MXCSR), per igvm_defs: "Registers not specified
/// here are initialized to their architectural reset values".
///
/// # Errors
/// [`VmsaError::TooLong`], [`VmsaError::NativeReserved`] (reserved words or any byte after
/// the struct non-zero), [`VmsaError::NativeAttributes`] (bits 11:8 set).
pub fn regs_from_native_context(bytes: &[u8]) -> Result<VpRegs, VmsaError> {
    let b = page_buf(bytes)?;
    let reserved = (0x9Ausize..0x9E).chain(NATIVE_CONTEXT_SIZE..VMSA_SIZE);
    for off in reserved {
        if b.get(off).copied().unwrap_or(0) != 0 {
            return Err(VmsaError::NativeReserved {
                offset: u16::try_from(off).unwrap_or(u16::MAX),
            });
        }
    }
    let code_attr = rd_u16(&b, 0xAA);
    let data_attr = rd_u16(&b, 0xB6);
    for (field, value) in [
        ("code_attributes", code_attr),
        ("data_attributes", data_attr),
    ] {
        if value & 0x0F00 != 0 {
            return Err(VmsaError::NativeAttributes { field, value });
        }
    }
    let q = |i: usize| rd_u64(&b, i * 8);
    let code = seg(
        rd_u16(&b, 0xA8),
        attrib_from_flags16(code_attr),
        rd_u32(&b, 0xB0),
        u64::from(rd_u32(&b, 0xAC)),
    );
    let data = seg(
        rd_u16(&b, 0xB4),
        attrib_from_flags16(data_attr),
        rd_u32(&b, 0xBC),
        u64::from(rd_u32(&b, 0xB8)),
    );
    let reset = reset_regs(0, BSP_RESET_ADDR);
    Ok(VpRegs {
        gprs: Gprs {
            rax: q(0),
            rcx: q(1),
            rdx: q(2),
            rbx: q(3),
            rsp: q(4),
            rbp: q(5),
            rsi: q(6),
            rdi: q(7),
            r8: q(8),
            r9: q(9),
            r10: q(10),
            r11: q(11),
            r12: q(12),
            r13: q(13),
            r14: q(14),
            r15: q(15),
        },
        rip: rd_u64(&b, 0x80),
        rflags: rd_u64(&b, 0x88),
        idtr: DescriptorTable {
            base: rd_u64(&b, 0x90),
            limit: rd_u16(&b, 0x98),
        },
        gdtr: DescriptorTable {
            limit: rd_u16(&b, 0x9E),
            base: rd_u64(&b, 0xA0),
        },
        cs: code,
        ds: data,
        es: data,
        fs: data,
        ss: data,
        gs: Segment {
            base: rd_u64(&b, 0xC0),
            ..data
        },
        cr0: rd_u64(&b, 0xC8),
        cr3: rd_u64(&b, 0xD0),
        cr4: rd_u64(&b, 0xD8),
        efer: rd_u64(&b, 0xE0),
        ..reset
    })
}

/// GPAW-dependent RBX of a TD vCPU: the guest physical address width (TDX module
/// `MAX_PA_FOR_GPA_NOT_WIDE` = 48, `MAX_PA_FOR_GPAW` = 52).
pub const TDX_RBX_GPAW48: u64 = 48;
/// RBX for a TD with GPAW = 52.
pub const TDX_RBX_GPAW52: u64 = 52;

/// The fixed part of a TD vCPU's initial state, as the TDX module sets it at `TDH.VP.INIT`
/// (intel/tdx-module `src/common/data_structures/td_vmcs_init.c`
/// `td_vmcs_migrated_state_init_map` / `td_vmcs_non_migrated_state_init_map`, and
/// `src/vmm_dispatcher/api_calls/tdh_vp_init.c` `init_vcpu_gprs_and_registers`):
/// 32-bit flat protected mode, paging off — CS limit 0xFFFFFFFF AR 0xC09B; DS/ES/FS/GS/SS
/// limit 0xFFFFFFFF AR 0xC093; all selectors and bases 0; LDTR limit 0xFFFF AR 0x10082
/// (VMX "unusable", encoded here as P clear: 0x02); TR limit 0xFFFF AR 0x8B; GDTR limit
/// 0xFFFF; IDTR 0; RIP 0xFFFFFFF0; RFLAGS 2; CR0 0x21 (PE|NE); CR4 0x40 (MCE; the VMCS
/// also holds VMXE, which the guest never sees); EFER 0x901 (SCE|LME|NXE, not yet active);
/// DR7 0x400; DR6 0xFFFF0FF0; XCR0 1; PAT default; FPU in its init state.
///
/// GPRs that depend on the TD are set by [`tdx_vcpu_regs`]; here RBX = 48 (GPAW 48) and
/// the others 0.
pub fn tdx_initial_regs() -> VpRegs {
    let flat_data = seg(0, attrib_from_flags16(0xC093), 0xFFFF_FFFF, 0);
    VpRegs {
        gprs: Gprs {
            rbx: TDX_RBX_GPAW48,
            ..Gprs::default()
        },
        rip: u64::from(BSP_RESET_ADDR),
        rflags: RFLAGS_FIXED,
        cs: seg(0, attrib_from_flags16(0xC09B), 0xFFFF_FFFF, 0),
        ds: flat_data,
        es: flat_data,
        fs: flat_data,
        gs: flat_data,
        ss: flat_data,
        ldtr: seg(0, 0x82 & !SEG_P, 0xFFFF, 0),
        tr: seg(0, 0x8B, 0xFFFF, 0),
        gdtr: DescriptorTable {
            limit: 0xFFFF,
            base: 0,
        },
        idtr: DescriptorTable::default(),
        cr0: 0x21,
        cr3: 0,
        cr4: CR4_MCE,
        efer: 0x901,
        xcr0: 1,
        dr6: 0xFFFF_0FF0,
        dr7: 0x400,
        pat: PAT_DEFAULT,
        fcw: FCW_INIT,
        mxcsr: MXCSR_INIT,
    }
}

/// A TD vCPU's initial state with its per-vCPU GPRs (`tdh_vp_init.c`): RBX = GPAW (48 or
/// 52), RCX = R8 = the `KVM_TDX_INIT_VCPU` parameter, RDX = CPUID(1).EAX, RSI = the vCPU
/// index (order of `TDH.VP.INIT`).
pub fn tdx_vcpu_regs(vcpu_index: u32, init_rcx: u64, gpaw52: bool, cpuid1_eax: u32) -> VpRegs {
    let mut r = tdx_initial_regs();
    r.gprs.rbx = if gpaw52 {
        TDX_RBX_GPAW52
    } else {
        TDX_RBX_GPAW48
    };
    r.gprs.rcx = init_rcx;
    r.gprs.r8 = init_rcx;
    r.gprs.rdx = u64::from(cpuid1_eax);
    r.gprs.rsi = u64::from(vcpu_index);
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha384};

    fn hex(b: &[u8]) -> heapless::String<256> {
        let mut s = heapless::String::new();
        for x in b {
            let _ = core::fmt::write(&mut s, format_args!("{x:02x}"));
        }
        s
    }

    fn sha384_hex(b: &[u8]) -> heapless::String<256> {
        hex(&Sha384::digest(b))
    }

    /// sev-snp-measure's QEMU BSP VMSA (features 0x1, EPYC-v4): SHA-384 from
    /// ../shared/spec/igvm-snp.md §5 ("77920c4c…1c553a"), full value computed with
    /// sev-snp-measure 0.0.13 `VMSA(SEV_SNP, …, 0x800F12, 0x1)`.
    const BSP_VMSA_SHA384: &str = "77920c4c629ff47e90c0e174fc1ad0eb6fa664f88cd4739488058a8c6cb1a77b3856f55378e9518d0da99452d51c553a";

    #[test]
    fn reset_state_matches_sev_snp_measure_bsp() {
        let regs = reset_regs(0x0080_0F12, BSP_RESET_ADDR);
        check_kvm_loadable(&regs).unwrap();
        let page = kvm_measured_vmsa(&regs, 0, Platform::Snp, true);
        assert_eq!(sha384_hex(&page).as_str(), BSP_VMSA_SHA384);
    }

    #[test]
    fn reset_state_matches_sev_snp_measure_ap() {
        // sev-snp-measure 0.0.13, AP eip 0xFFFF1234, sig 0x800F12, features 0x1.
        let regs = reset_regs(0x0080_0F12, 0xFFFF_1234);
        let page = kvm_measured_vmsa(&regs, 0, Platform::Snp, true);
        assert_eq!(
            sha384_hex(&page).as_str(),
            "64da67638e2815ba44cf70265a1f215ff4c5e97afce78fe64137475126480fd32ed263e91d1838087aee854102319afa"
        );
    }

    #[test]
    fn sev_es_init2_matches_sev_snp_measure_legacy_does_not() {
        // sev-snp-measure 0.0.13 SEV-ES BSP VMSA (sev_features 0, fcw 0x37F, mxcsr 0x1F80),
        // EPYC-Rome: equals KVM INIT2 with vmsa_features 0.
        let regs = reset_regs(0x0083_0F10, BSP_RESET_ADDR);
        let want = "321fb1580a1501bf94c61ef97488caff4395bca44e8d0f7165bb702f67ec14b3d8ddce6ae6b3df081a52611648c09c8c";
        let init2 = kvm_measured_vmsa(&regs, 0, Platform::SevEs, true);
        assert_eq!(sha384_hex(&init2).as_str(), want);
        let legacy = kvm_measured_vmsa(&regs, 0x20, Platform::SevEs, false);
        assert_ne!(sha384_hex(&legacy).as_str(), want);
        let v = parse_vmsa(&legacy).unwrap();
        assert_eq!(
            (v.x87_fcw.get(), v.mxcsr.get(), v.sev_features.get()),
            (0, 0, 0)
        );
    }

    /// igvm-wrap's real-mode VMSA, ../shared/spec/kvm-vmsa-synthesis.md §5.
    fn igvm_wrap_vmsa() -> [u8; VMSA_SIZE] {
        let mut v = Vmsa::new_zeroed();
        let s = |sel: u16, a: u16, lim: u32, base: u64| VmsaSegment {
            selector: U16::new(sel),
            attrib: U16::new(a),
            limit: U32::new(lim),
            base: U64::new(base),
        };
        v.cs = s(0xF000, 0x9B, 0xFFFF, 0xFFFF_0000);
        for d in [&mut v.es, &mut v.ss, &mut v.ds, &mut v.fs, &mut v.gs] {
            *d = s(0, 0x93, 0xFFFF, 0);
        }
        v.gdtr = s(0, 0, 0xFFFF, 0);
        v.idtr = s(0, 0, 0xFFFF, 0);
        v.tr = s(0, 0x83, 0xFFFF, 0);
        v.efer = U64::new(0x1000);
        v.cr0 = U64::new(0x10);
        v.dr6 = U64::new(0xFFFF_0FF0);
        v.dr7 = U64::new(0x400);
        v.rip = U64::new(0xFFF0);
        v.g_pat = U64::new(PAT_DEFAULT);
        v.xcr0 = U64::new(1);
        v.x87_fcw = U16::new(0x37F);
        v.mxcsr = U32::new(0x1F80);
        v.sev_features = U64::new(1);
        let mut out = [0u8; VMSA_SIZE];
        out.copy_from_slice(v.as_bytes());
        out
    }

    #[test]
    fn igvm_wrap_vmsa_as_kvm_measures_it() {
        let page = igvm_wrap_vmsa();
        let file_digest = sha384_hex(&page);
        assert!(file_digest.starts_with("119b5050e632"));
        assert!(file_digest.ends_with("bb814a"));
        let (regs, features) = regs_from_vmsa(&page, Platform::Snp).unwrap();
        assert_eq!(features, 1);
        check_kvm_loadable(&regs).unwrap();
        // QEMU's INIT2 pre-pass passes VP 0's sev_features & ~SNP_ACTIVE.
        let measured =
            kvm_measured_vmsa(&regs, features & !SEV_FEAT_SNP_ACTIVE, Platform::Snp, true);
        assert_eq!(
            sha384_hex(&measured).as_str(),
            "eaba95eadf7dc4d8201ee45ccf64f0d14399f266998380f97d56643a0b63f7a694a76239c66d3693506b6499284c5450"
        );
        // Exactly two bytes change: cr4 (0x148) and rflags (0x170).
        let diff: heapless::Vec<usize, 8> =
            (0..VMSA_SIZE).filter(|&i| page[i] != measured[i]).collect();
        assert_eq!(diff.as_slice(), &[0x148, 0x170]);
    }

    #[test]
    fn roundtrip_of_measured_reset_vmsa() {
        // A VMSA KVM produced is itself an acceptable VP context that measures the same.
        let regs = reset_regs(0x00A0_0F11, BSP_RESET_ADDR);
        let page = kvm_measured_vmsa(&regs, 0x20, Platform::Snp, true);
        let mut ctx = page;
        ctx[0xCB] = 0; // cpl is not an allowed field; it is 0 here anyway
        let (back, f) = regs_from_vmsa(&ctx, Platform::Snp).unwrap();
        assert_eq!(f, 0x21);
        assert_eq!(kvm_measured_vmsa(&back, f, Platform::Snp, true), page);
    }

    #[test]
    fn check_vmsa_supported_names_the_field() {
        let mut page = igvm_wrap_vmsa();
        page[0x240] = 1; // cr2
        assert_eq!(
            regs_from_vmsa(&page, Platform::Snp),
            Err(VmsaError::UnsupportedField {
                field: "cr2",
                offset: 0x240
            })
        );
        let mut page = igvm_wrap_vmsa();
        page[0x472] = 9; // xmm0
        assert_eq!(
            regs_from_vmsa(&page, Platform::Snp),
            Err(VmsaError::UnsupportedField {
                field: "fpreg_xmm",
                offset: 0x472
            })
        );
        let page = igvm_wrap_vmsa();
        assert!(matches!(
            regs_from_vmsa(&page, Platform::SevEs),
            Err(VmsaError::SevFeatures { value: 1, .. })
        ));
        assert!(matches!(
            regs_from_vmsa(&page, Platform::Sev),
            Err(VmsaError::UnsupportedPlatform { .. })
        ));
        assert_eq!(
            regs_from_vmsa(&[0u8; 4097], Platform::Snp),
            Err(VmsaError::TooLong { len: 4097 })
        );
        let mut page = igvm_wrap_vmsa();
        page[0x98] = 0x10; // tr.base
        assert!(matches!(
            regs_from_vmsa(&page, Platform::Snp),
            Err(VmsaError::TrBase { tr_base: 0x10, .. })
        ));
        let mut page = igvm_wrap_vmsa();
        page[0x66] = 1; // gdtr.limit = 0x1FFFF
        assert!(matches!(
            regs_from_vmsa(&page, Platform::Snp),
            Err(VmsaError::FieldRange {
                field: "gdtr.limit",
                ..
            })
        ));
    }

    #[test]
    fn qemu_conversion_quirks() {
        let mut page = igvm_wrap_vmsa();
        page[0x12..0x14].copy_from_slice(&0xF09Bu16.to_le_bytes()); // cs attrib bits 15:12
        page[0x158] = 0; // cr0 without ET
        page[0x60..0x64].copy_from_slice(&[0x34, 0x12, 0x56, 0x04]); // gdtr sel/attrib
        let (regs, _) = regs_from_vmsa(&page, Platform::Snp).unwrap();
        assert_eq!(regs.cs.attrib, 0x09B);
        assert_eq!(regs.cr0, 0x10);
        let m = parse_vmsa(&kvm_measured_vmsa(&regs, 0, Platform::Snp, true)).unwrap();
        assert_eq!((m.gdtr.selector.get(), m.gdtr.attrib.get()), (0, 0));
    }

    #[test]
    fn kvm_normalisations() {
        let mut r = reset_regs(0, BSP_RESET_ADDR);
        r.rflags = 0x20000; // VM86
        r.ss.attrib = 0x93;
        r.cr0 = 0x6000_0011;
        let m = parse_vmsa(&kvm_measured_vmsa(&r, 0, Platform::SevEs, false)).unwrap();
        assert_eq!(m.cs.attrib.get(), 0xF3);
        assert_eq!(m.ss.attrib.get(), 0xF3);
        assert_eq!(m.ldtr.attrib.get(), 0x82);
        assert_eq!(m.cpl, 3);
        assert_eq!(m.rflags.get(), 0x20002);
        assert_eq!(m.cr0.get(), 0x11);
        assert_eq!(m.efer.get(), 0x1000);
        assert_eq!(m.cr4.get(), 0x40);
        assert_eq!(m.x87_ds.get(), 0);
    }

    #[test]
    fn loadability_rules() {
        let ok = reset_regs(0, BSP_RESET_ADDR);
        let bad = |f: fn(&mut VpRegs), field: &str| {
            let mut r = ok;
            f(&mut r);
            match check_kvm_loadable(&r) {
                Err(VmsaError::NotLoadable { field: got, .. }) => assert_eq!(got, field),
                other => panic!("{field}: {other:?}"),
            }
        };
        bad(|r| r.dr7 = 0x401, "dr7");
        bad(|r| r.dr6 = 1 << 40, "dr6");
        bad(|r| r.cr0 = 1 << 32, "cr0");
        bad(|r| r.cr0 = 0x2000_0011, "cr0");
        bad(|r| r.cr0 = 0x8000_0010, "cr0");
        bad(|r| r.cr4 = 1 << 15, "cr4");
        bad(|r| r.efer = 1 << 2, "efer");
        bad(
            |r| {
                r.efer = 0x500;
                r.cr0 = 0x8000_0011;
            },
            "cr4",
        );
        bad(
            |r| {
                r.efer = 0x100;
                r.cr0 = 0x8000_0011;
                r.cr4 = 0x20;
            },
            "efer",
        );
        bad(|r| r.efer = 0x400, "efer");
        bad(|r| r.cs.attrib = 0xA9B, "cs.attrib");
        bad(|r| r.xcr0 = 0, "xcr0");
        bad(|r| r.xcr0 = 5, "xcr0");
        bad(|r| r.xcr0 = 0x27, "xcr0");
        bad(|r| r.pat = 0x0007_0406_0007_0402, "pat");
        let mut long = ok;
        long.efer = 0x500;
        long.cr0 = 0x8000_0011;
        long.cr4 = 0x20;
        long.cs.attrib = 0xA9B;
        long.xcr0 = 0xE7;
        check_kvm_loadable(&long).unwrap();
    }

    #[test]
    fn native_context() {
        let mut b = [0u8; NATIVE_CONTEXT_SIZE];
        b[0x10..0x18].copy_from_slice(&7u64.to_le_bytes()); // rdx
        b[0x80..0x88].copy_from_slice(&0x1000u64.to_le_bytes()); // rip
        b[0x9E..0xA0].copy_from_slice(&0x27u16.to_le_bytes()); // gdtr limit
        b[0xA8..0xAA].copy_from_slice(&8u16.to_le_bytes());
        b[0xAA..0xAC].copy_from_slice(&0xC09Bu16.to_le_bytes());
        b[0xB0..0xB4].copy_from_slice(&u32::MAX.to_le_bytes());
        b[0xB4..0xB6].copy_from_slice(&0x10u16.to_le_bytes());
        b[0xB6..0xB8].copy_from_slice(&0xC093u16.to_le_bytes());
        b[0xBC..0xC0].copy_from_slice(&u32::MAX.to_le_bytes());
        b[0xC0..0xC8].copy_from_slice(&0x5000u64.to_le_bytes()); // gs_base
        b[0xC8..0xD0].copy_from_slice(&0x11u64.to_le_bytes()); // cr0
        let r = regs_from_native_context(&b).unwrap();
        assert_eq!(r.gprs.rdx, 7);
        assert_eq!(r.rip, 0x1000);
        assert_eq!(r.gdtr.limit, 0x27);
        assert_eq!(r.cs, seg(8, 0xC9B, u32::MAX, 0));
        assert_eq!(r.ss, seg(0x10, 0xC93, u32::MAX, 0));
        assert_eq!(r.gs.base, 0x5000);
        assert_eq!(r.cr0, 0x11);
        assert_eq!(
            (r.ldtr.attrib, r.tr.attrib, r.dr7, r.xcr0),
            (0x82, 0x8B, 0x400, 1)
        );
        check_kvm_loadable(&r).unwrap();
        let mut page = [0u8; VMSA_SIZE];
        page[..NATIVE_CONTEXT_SIZE].copy_from_slice(&b);
        assert_eq!(regs_from_native_context(&page), Ok(r));
        page[0x9B] = 1;
        assert_eq!(
            regs_from_native_context(&page),
            Err(VmsaError::NativeReserved { offset: 0x9B })
        );
        page[0x9B] = 0;
        page[4000] = 1;
        assert_eq!(
            regs_from_native_context(&page),
            Err(VmsaError::NativeReserved { offset: 4000 })
        );
        b[0xAB] = 0xC1;
        assert!(matches!(
            regs_from_native_context(&b),
            Err(VmsaError::NativeAttributes {
                field: "code_attributes",
                ..
            })
        ));
    }

    #[test]
    fn tdx_state() {
        let r = tdx_vcpu_regs(3, 0x1234, true, 0x806F8);
        assert_eq!(r.rip, 0xFFFF_FFF0);
        assert_eq!(r.cs.attrib, 0xC9B);
        assert_eq!(r.ds.attrib, 0xC93);
        assert_eq!(
            (r.gprs.rbx, r.gprs.rcx, r.gprs.r8, r.gprs.rsi, r.gprs.rdx),
            (52, 0x1234, 0x1234, 3, 0x806F8)
        );
        assert_eq!((r.cr0, r.cr4, r.efer), (0x21, 0x40, 0x901));
        check_kvm_loadable(&r).unwrap();
        assert_eq!(tdx_initial_regs().gprs.rbx, 48);
    }

    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    /// Random values in every field a VP context may carry: the QEMU→KVM conversion never
    /// panics, and measuring the measured page again is a fixed point.
    #[test]
    fn random_contexts_reach_a_fixed_point() {
        let mut rng = XorShift(0x1234_5678_9ABC_DEF1);
        let allowed: &[(usize, usize)] = &[
            (0x00, 0xA0),
            (0xD0, 8),
            (0x148, 0x38),
            (0x178, 8),
            (0x1D8, 8),
            (0x1F8, 8),
            (0x268, 8),
            (0x308, 0x18),
            (0x328, 0x58),
            (0x3E8, 8),
            (0x408, 4),
            (0x410, 2),
        ];
        let mut accepted = 0;
        for i in 0..2000 {
            let mut page = [0u8; VMSA_SIZE];
            for &(off, len) in allowed {
                for b in &mut page[off..off + len] {
                    *b = rng.next() as u8;
                }
            }
            if i % 2 == 0 {
                // Keep GDTR/IDTR limits and the TR/LDTR bases acceptable half of the time.
                page[0x66..0x68].fill(0);
                page[0x86..0x88].fill(0);
                let ldtr_base: [u8; 8] = page[0x78..0x80].try_into().unwrap();
                page[0x98..0xA0].copy_from_slice(&ldtr_base);
            }
            page[0x3B0] = (rng.next() as u8) | 1;
            let Ok((regs, f)) = regs_from_vmsa(&page, Platform::Snp) else {
                continue;
            };
            accepted += 1;
            let _ = check_kvm_loadable(&regs);
            let mut m1 = kvm_measured_vmsa(&regs, f, Platform::Snp, true);
            m1[0xCB] = 0;
            let (regs2, f2) = regs_from_vmsa(&m1, Platform::Snp).unwrap();
            assert_eq!(f2, f);
            let mut m2 = kvm_measured_vmsa(&regs2, f2, Platform::Snp, true);
            m2[0xCB] = 0;
            assert_eq!(m1, m2);
        }
        assert!(accepted > 900, "{accepted}");
        // Arbitrary bytes as a native context never panic either.
        for _ in 0..2000 {
            let len = (rng.next() % 4200) as usize;
            let bytes: heapless::Vec<u8, 4200> = (0..len).map(|_| rng.next() as u8).collect();
            let _ = regs_from_native_context(&bytes);
            let _ = parse_vmsa(&bytes);
        }
    }

    #[test]
    fn field_names() {
        assert_eq!(field_name(0x3B0), "sev_features");
        assert_eq!(field_name(0x3B7), "sev_features");
        assert_eq!(field_name(0xFFF), "reserved_670");
        assert_eq!(field_name(0x1000), "beyond the VMSA");
        let mut next = 0u16;
        for &(_, off, len) in FIELDS {
            assert_eq!(off, next);
            next = off + len;
        }
        assert_eq!(usize::from(next), VMSA_SIZE);
    }
}
