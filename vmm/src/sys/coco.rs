//! The confidential-computing commands as the kernel door carries them: typed, with guest
//! memory passed as a mapping and an offset (never a raw address), so that every
//! implementation of the door — the real kernel, the recorder, the kernel model — sees the
//! same arguments, and only the real one turns them into pointers.
//!
//! `KVM_MEMORY_ENCRYPT_OP` carries both families (`../shared/spec/kvm-coco-abi.md` §1.2, §3.1):
//! SEV, SEV-ES and SNP commands in `struct kvm_sev_cmd` on the VM fd ([`SevCmd`]), TDX
//! commands in `struct kvm_tdx_cmd` on the VM fd ([`TdxVmCmd`]) or a vCPU fd ([`TdxVcpuCmd`]).

use std::fmt;

use kvm_bindings::CpuId;

use super::mem::GuestMapping;
use super::Errno;

/// Bytes of guest memory as a command's source: `len` bytes of `mapping` from `offset`
/// (the real door passes `mapping.host_addr() + offset` as the command's `uaddr`).
#[derive(Clone, Copy, Debug)]
pub struct Source<'a> {
    /// The host mapping (the guest's shared memory: the staging copy).
    pub mapping: &'a GuestMapping,
    /// Offset of the first byte in it.
    pub offset: u64,
}

/// `SNP_LAUNCH_UPDATE`'s arguments, in and out: the kernel advances `gfn_start`, the source
/// offset and `len` by the pages it did (partial progress, `../shared/spec/kvm-coco-abi.md`
/// §1.3), so the caller loops until `len` is 0.
#[derive(Debug)]
pub struct SnpUpdate<'a> {
    /// First guest frame.
    pub gfn_start: u64,
    /// Where the bytes come from (`None` for page types whose contents the firmware
    /// ignores: ZERO).
    pub source: Option<Source<'a>>,
    /// Bytes left (a 4 KiB multiple).
    pub len: u64,
    /// `KVM_SEV_SNP_PAGE_TYPE_*` (1 normal, 3 zero, 4 unmeasured, 5 secrets, 6 CPUID).
    pub page_type: u8,
}

/// One SEV-family command (`enum sev_cmd_id`, `arch/x86/include/uapi/asm/kvm.h`).
#[derive(Debug)]
pub enum SevCmd<'a> {
    /// `KVM_SEV_INIT2` (22): `struct kvm_sev_init`.
    Init2 {
        /// `vmsa_features` (0 for SEV).
        vmsa_features: u64,
        /// `ghcb_version` (0 for SEV; 0 means 2 for SEV-ES/SNP).
        ghcb_version: u16,
    },
    /// `KVM_SEV_LAUNCH_START` (2): `struct kvm_sev_launch_start` without a session (no DH
    /// certificate: the firmware makes its own keys).
    LaunchStart {
        /// Guest policy.
        policy: u32,
        /// The guest handle the firmware returns.
        handle: u32,
    },
    /// `KVM_SEV_LAUNCH_UPDATE_DATA` (3): encrypts `len` bytes of guest memory in place.
    LaunchUpdateData {
        /// The bytes (in the guest's own memory).
        source: Source<'a>,
        /// Length in bytes (16-byte multiple).
        len: u32,
    },
    /// `KVM_SEV_LAUNCH_UPDATE_VMSA` (4): every vCPU's VMSA from its registers.
    LaunchUpdateVmsa,
    /// `KVM_SEV_LAUNCH_MEASURE` (6): the launch measurement blob (HMAC + mnonce, 48 bytes).
    LaunchMeasure {
        /// Filled by the firmware.
        blob: [u8; 48],
    },
    /// `KVM_SEV_LAUNCH_SECRET` (5): a wrapped secret into guest memory.
    LaunchSecret {
        /// The 52-byte packet header.
        header: &'a [u8],
        /// Where in guest memory it lands.
        guest: Source<'a>,
        /// Length of the target range.
        guest_len: u32,
        /// The encrypted packet.
        trans: &'a [u8],
    },
    /// `KVM_SEV_LAUNCH_FINISH` (7).
    LaunchFinish,
    /// `KVM_SEV_SNP_LAUNCH_START` (100): `struct kvm_sev_snp_launch_start`.
    SnpLaunchStart {
        /// The SNP guest policy.
        policy: u64,
    },
    /// `KVM_SEV_SNP_LAUNCH_UPDATE` (101).
    SnpLaunchUpdate(SnpUpdate<'a>),
    /// `KVM_SEV_SNP_ENABLE_REQ_CERTS` (103, Linux 7.0): no data; from now on an Extended
    /// Guest Request for a report exits with `KVM_EXIT_SNP_REQ_CERTS` for the VMM to supply
    /// the certificates. Before any vCPU exists (`EINVAL` after;
    /// `../shared/spec/kvm-coco-abi.md` §1.6).
    SnpEnableReqCerts,
    /// `KVM_SEV_SNP_LAUNCH_FINISH` (102): VMSAs first (KVM), then the firmware's finish.
    SnpLaunchFinish {
        /// The 96-byte ID block, if any.
        id_block: Option<&'a [u8; 96]>,
        /// The 4096-byte ID authentication structure (with `id_block`).
        id_auth: Option<&'a [u8; 4096]>,
        /// Whether `id_auth` carries an author key.
        auth_key_en: bool,
        /// HOST_DATA.
        host_data: [u8; 32],
    },
}

impl SevCmd<'_> {
    /// The uapi name (`KVM_SEV_*`).
    pub fn name(&self) -> &'static str {
        match self {
            SevCmd::Init2 { .. } => "KVM_SEV_INIT2",
            SevCmd::LaunchStart { .. } => "KVM_SEV_LAUNCH_START",
            SevCmd::LaunchUpdateData { .. } => "KVM_SEV_LAUNCH_UPDATE_DATA",
            SevCmd::LaunchUpdateVmsa => "KVM_SEV_LAUNCH_UPDATE_VMSA",
            SevCmd::LaunchMeasure { .. } => "KVM_SEV_LAUNCH_MEASURE",
            SevCmd::LaunchSecret { .. } => "KVM_SEV_LAUNCH_SECRET",
            SevCmd::LaunchFinish => "KVM_SEV_LAUNCH_FINISH",
            SevCmd::SnpLaunchStart { .. } => "KVM_SEV_SNP_LAUNCH_START",
            SevCmd::SnpLaunchUpdate(_) => "KVM_SEV_SNP_LAUNCH_UPDATE",
            SevCmd::SnpEnableReqCerts => "KVM_SEV_SNP_ENABLE_REQ_CERTS",
            SevCmd::SnpLaunchFinish { .. } => "KVM_SEV_SNP_LAUNCH_FINISH",
        }
    }
}

/// `KVM_TDX_INIT_MEM_REGION`'s arguments, in and out (the kernel copies the struct back with
/// its progress, even on `EINTR`: `../shared/spec/kvm-coco-abi.md` §3.1).
#[derive(Debug)]
pub struct TdxMemRegion<'a> {
    /// Where the pages come from.
    pub source: Source<'a>,
    /// First guest-physical address (private, page-aligned).
    pub gpa: u64,
    /// Pages left.
    pub nr_pages: u64,
    /// `KVM_TDX_MEASURE_MEMORY_REGION`: extend MRTD with the contents.
    pub measure: bool,
}

/// What `KVM_TDX_CAPABILITIES` reports (`struct kvm_tdx_capabilities`,
/// `arch/x86/include/uapi/asm/kvm.h`).
#[derive(Clone, Debug, Default)]
pub struct TdxCapabilities {
    /// TD attributes the VMM may set.
    pub supported_attrs: u64,
    /// XFAM bits the VMM may set.
    pub supported_xfam: u64,
    /// TDVMCALLs KVM forwards to userspace, GetTdVmCallInfo leaf 1 R11 (bit 0 GetQuote).
    pub user_tdvmcallinfo_1_r11: u64,
    /// The same for R12 (bit 1 SetupEventNotifyInterrupt).
    pub user_tdvmcallinfo_1_r12: u64,
    /// The CPUID bits the VMM may configure: each entry's registers are masks of the bits
    /// `KVM_TDX_INIT_VM` may set in that leaf/subleaf (`Documentation/virt/kvm/x86/
    /// intel-tdx.rst`, KVM_TDX_CAPABILITIES).
    pub cpuid: Vec<kvm_bindings::kvm_cpuid_entry2>,
}

/// One TDX command on the VM fd.
#[derive(Debug)]
pub enum TdxVmCmd<'a> {
    /// `KVM_TDX_CAPABILITIES` (0): filled by the kernel.
    Capabilities(&'a mut TdxCapabilities),
    /// `KVM_TDX_INIT_VM` (1): `struct kvm_tdx_init_vm`.
    InitVm {
        /// TD attributes.
        attributes: u64,
        /// XFAM.
        xfam: u64,
        /// MRCONFIGID (SHA-384).
        mrconfigid: [u8; 48],
        /// MROWNER.
        mrowner: [u8; 48],
        /// MROWNERCONFIG.
        mrownerconfig: [u8; 48],
        /// The TD's CPUID configuration.
        cpuid: &'a CpuId,
    },
    /// `KVM_TDX_FINALIZE_VM` (4).
    FinalizeVm,
}

impl TdxVmCmd<'_> {
    /// The uapi name.
    pub fn name(&self) -> &'static str {
        match self {
            TdxVmCmd::Capabilities(_) => "KVM_TDX_CAPABILITIES",
            TdxVmCmd::InitVm { .. } => "KVM_TDX_INIT_VM",
            TdxVmCmd::FinalizeVm => "KVM_TDX_FINALIZE_VM",
        }
    }
}

/// One TDX command on a vCPU fd.
#[derive(Debug)]
pub enum TdxVcpuCmd<'a> {
    /// `KVM_TDX_INIT_VCPU` (2): `data` = the initial RCX.
    InitVcpu {
        /// Initial RCX.
        rcx: u64,
    },
    /// `KVM_TDX_INIT_MEM_REGION` (3).
    InitMemRegion(TdxMemRegion<'a>),
    /// `KVM_TDX_GET_CPUID` (5): the CPUID the TDX module virtualizes for the TD
    /// (`Documentation/virt/kvm/x86/intel-tdx.rst`, KVM_TDX_GET_CPUID).
    GetCpuid(TdxCpuid),
}

/// `KVM_TDX_GET_CPUID`'s `struct kvm_cpuid2`, in and out: `nent` is the room given (the
/// kernel answers `E2BIG` with `nent` set to the entries it needs, and no entries: "the user
/// space should allocate a larger buffer and retry"); on success `entries` holds `nent`
/// entries.
#[derive(Clone, Debug, Default)]
pub struct TdxCpuid {
    /// In: room for entries; out: entries written, or needed on `E2BIG`.
    pub nent: u32,
    /// Out: the TD's CPUID.
    pub entries: Vec<kvm_bindings::kvm_cpuid_entry2>,
}

impl TdxVcpuCmd<'_> {
    /// The uapi name.
    pub fn name(&self) -> &'static str {
        match self {
            TdxVcpuCmd::InitVcpu { .. } => "KVM_TDX_INIT_VCPU",
            TdxVcpuCmd::InitMemRegion(_) => "KVM_TDX_INIT_MEM_REGION",
            TdxVcpuCmd::GetCpuid(_) => "KVM_TDX_GET_CPUID",
        }
    }
}

/// A confidential command failed: the ioctl's errno and, where the firmware said why, its
/// status (`kvm_sev_cmd.error`: `SEV_RET_*` of `include/uapi/linux/psp-sev.h`;
/// `kvm_tdx_cmd.hw_error`: the TDX module's status).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CocoError {
    /// The ioctl's errno.
    pub errno: Errno,
    /// The firmware's status, when it reported one (non-zero).
    pub fw_error: Option<FwStatus>,
}

/// A firmware status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FwStatus {
    /// The AMD Secure Processor's (`kvm_sev_cmd.error`).
    Sev(u32),
    /// The TDX module's (`kvm_tdx_cmd.hw_error`).
    Tdx(u64),
}

impl CocoError {
    /// An error without a firmware status.
    pub fn errno(errno: i32) -> CocoError {
        CocoError {
            errno: Errno::new(errno),
            fw_error: None,
        }
    }
}

impl From<Errno> for CocoError {
    fn from(errno: Errno) -> CocoError {
        CocoError {
            errno,
            fw_error: None,
        }
    }
}

/// The name of a SEV firmware status (`include/uapi/linux/psp-sev.h`, `enum sev_ret_code`).
pub fn sev_ret_name(code: u32) -> &'static str {
    match code {
        0x00 => "SEV_RET_SUCCESS",
        0x01 => "SEV_RET_INVALID_PLATFORM_STATE",
        0x02 => "SEV_RET_INVALID_GUEST_STATE",
        0x03 => "SEV_RET_INAVLID_CONFIG",
        0x04 => "SEV_RET_INVALID_LEN",
        0x05 => "SEV_RET_ALREADY_OWNED",
        0x06 => "SEV_RET_INVALID_CERTIFICATE",
        0x07 => "SEV_RET_POLICY_FAILURE",
        0x08 => "SEV_RET_INACTIVE",
        0x09 => "SEV_RET_INVALID_ADDRESS",
        0x0A => "SEV_RET_BAD_SIGNATURE",
        0x0B => "SEV_RET_BAD_MEASUREMENT",
        0x0C => "SEV_RET_ASID_OWNED",
        0x0D => "SEV_RET_INVALID_ASID",
        0x0E => "SEV_RET_WBINVD_REQUIRED",
        0x0F => "SEV_RET_DFFLUSH_REQUIRED",
        0x10 => "SEV_RET_INVALID_GUEST",
        0x11 => "SEV_RET_INVALID_COMMAND",
        0x12 => "SEV_RET_ACTIVE",
        0x13 => "SEV_RET_HWSEV_RET_PLATFORM",
        0x14 => "SEV_RET_HWSEV_RET_UNSAFE",
        0x15 => "SEV_RET_UNSUPPORTED",
        0x16 => "SEV_RET_INVALID_PARAM",
        0x17 => "SEV_RET_RESOURCE_LIMIT",
        0x18 => "SEV_RET_SECURE_DATA_INVALID",
        0x19 => "SEV_RET_INVALID_PAGE_SIZE",
        0x1A => "SEV_RET_INVALID_PAGE_STATE",
        0x1B => "SEV_RET_INVALID_MDATA_ENTRY",
        0x1C => "SEV_RET_INVALID_PAGE_OWNER",
        0x1D => "SEV_RET_AEAD_OFLOW",
        0x1F => "SEV_RET_EXIT_RING_BUFFER",
        0x20 => "SEV_RET_RMP_INIT_REQUIRED",
        0x21 => "SEV_RET_BAD_SVN",
        0x22 => "SEV_RET_BAD_VERSION",
        0x23 => "SEV_RET_SHUTDOWN_REQUIRED",
        0x24 => "SEV_RET_UPDATE_FAILED",
        0x25 => "SEV_RET_RESTORE_REQUIRED",
        0x26 => "SEV_RET_RMP_INITIALIZATION_FAILED",
        0x27 => "SEV_RET_INVALID_KEY",
        _ => "an unknown SEV firmware status",
    }
}

impl fmt::Display for CocoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.fw_error {
            Some(FwStatus::Sev(code)) => write!(
                f,
                "{} (firmware status {code:#x}: {})",
                self.errno,
                sev_ret_name(code)
            ),
            Some(FwStatus::Tdx(code)) => {
                write!(f, "{} (TDX module status {code:#018x})", self.errno)
            }
            None => write!(f, "{}", self.errno),
        }
    }
}

impl std::error::Error for CocoError {}
