//! The model's per-VM and per-vCPU state and its answers to each door call.

use std::collections::HashSet;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use kvm_bindings::{
    kvm_debugregs, kvm_dtable, kvm_fpu, kvm_memory_attributes, kvm_mp_state, kvm_regs, kvm_run,
    kvm_segment, kvm_sregs, kvm_userspace_memory_region2, kvm_xcrs, CpuId, Msrs,
};
use kvm_ioctls::VcpuExit;
use relaunch_core::arch::regs::{DescriptorTable, Gprs, Segment, VpRegs};
use relaunch_core::arch::vmsa::{kvm_measured_vmsa, reset_regs, BSP_RESET_ADDR, KVM_VMSA_GPA};
use relaunch_core::launch::Platform;
use relaunch_core::measure::sev::{launch_measure, SevDigest};
use relaunch_core::measure::snp::{self, SnpDigest};
use relaunch_core::measure::tdx::MrtdDigest;
use relaunch_core::measure::{id_block_matches, Measurement};
use relaunch_core::owner;
use sha2::{Digest, Sha384};

use super::{Arg, CallRecord, Measured, Shared};
use crate::backend::native::kvm_segment_from;
use crate::sys::coco::{CocoError, FwStatus, SevCmd, Source, TdxVcpuCmd, TdxVmCmd};
use crate::sys::emu::PrivateSink;
use crate::sys::kvm::{
    VcpuIoctls, GUEST_MEMFD_FLAG_INIT_SHARED, GUEST_MEMFD_FLAG_MMAP, KVM_CAP_GUEST_MEMFD_FLAGS,
    KVM_CAP_MEMORY_ATTRIBUTES, KVM_CAP_NR_MEMSLOTS, KVM_CAP_VM_TYPES, KVM_MEMORY_ATTRIBUTE_PRIVATE,
    KVM_MEM_GUEST_MEMFD,
};
use crate::sys::safe::SafeVmIoctls;
use crate::sys::Errno;

const PAGE: u64 = 4096;

// SEV firmware status codes (`include/uapi/linux/psp-sev.h`, `enum sev_ret_code`).
const SEV_RET_INVALID_GUEST_STATE: u32 = 0x02;
const SEV_RET_INVALID_LEN: u32 = 0x04;
const SEV_RET_POLICY_FAILURE: u32 = 0x07;
const SEV_RET_INVALID_ADDRESS: u32 = 0x09;
const SEV_RET_BAD_MEASUREMENT: u32 = 0x0B;
const SEV_RET_INVALID_PARAM: u32 = 0x16;
const SEV_RET_UNSUPPORTED: u32 = 0x15;

/// `SEV_FW_BLOB_MAX_SIZE` (`include/linux/psp-sev.h`, 16 KiB): the most `psp_copy_user_blob`
/// copies for the firmware (`sev_launch_secret` copies header and packet with it: `EINVAL`
/// for an empty or longer blob).
const SEV_FW_BLOB_MAX_SIZE: usize = 0x4000;
/// The firmware's scratch buffer, the longest secret `LAUNCH_SECRET` takes (amd/AMD-ASPFW
/// `sev_globals.h` `SEV_SCRATCH_BUF_LEN`); KVM's 16 KiB blob limit is met first.
const SEV_SCRATCH_BUF_LEN: u32 = 0x5000;

// SNP guest policy bits KVM insists on (`../shared/spec/kvm-coco-abi.md` §1.3;
// `arch/x86/kvm/svm/sev.c` `snp_launch_start`: SNP_POLICY_MASK_SMT, SNP_POLICY_MASK_RSVD_MBO).
const SNP_POLICY_SMT: u64 = 1 << 16;
const SNP_POLICY_RSVD_MBO: u64 = 1 << 17;

/// `MSR_IA32_CR_PAT` (Intel SDM Vol. 4, table 2-2).
const MSR_IA32_PAT: u32 = 0x277;

/// A readable name for the errnos the model answers.
pub fn errno_name(e: i32) -> String {
    let n = match e {
        libc::EINVAL => "EINVAL",
        libc::EEXIST => "EEXIST",
        libc::EIO => "EIO",
        libc::EINTR => "EINTR",
        libc::ENOTTY => "ENOTTY",
        libc::EFAULT => "EFAULT",
        libc::EBADF => "EBADF",
        libc::ENOSPC => "ENOSPC",
        libc::ENOSYS => "ENOSYS",
        libc::E2BIG => "E2BIG",
        libc::ENOMEM => "ENOMEM",
        libc::ENODEV => "ENODEV",
        _ => return format!("errno {e}"),
    };
    n.to_string()
}

fn err(e: i32) -> CocoError {
    CocoError::errno(e)
}

fn fw(code: u32) -> CocoError {
    // A firmware failure reaches the ioctl as EIO with the status in `kvm_sev_cmd.error`
    // (`../shared/spec/kvm-coco-abi.md` §1.3, "On firmware failure returns -EIO").
    CocoError {
        errno: Errno::new(libc::EIO),
        fw_error: Some(FwStatus::Sev(code)),
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(super) fn system_cap(shared: &Shared, cap: u32) -> i32 {
    if let Some(v) = shared.cap(cap) {
        return v;
    }
    match cap {
        // Bit N = VM type N: 0, 2, 3, 4, 5 (`../shared/spec/kvm-coco-abi.md` §1.1).
        KVM_CAP_VM_TYPES => 0b11_1101,
        KVM_CAP_GUEST_MEMFD_FLAGS => (GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED) as i32,
        kvm_bindings::KVM_CAP_GUEST_MEMFD => 1,
        KVM_CAP_NR_MEMSLOTS => 32764,
        kvm_bindings::KVM_CAP_MAX_VCPUS => i32::try_from(shared.cfg.max_vcpus).unwrap_or(0),
        _ => 0,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Launch {
    /// Before `KVM_SEV_INIT2` / `KVM_TDX_INIT_VM`.
    None,
    /// INIT2 / INIT_VM done.
    Init,
    /// `LAUNCH_START` / `SNP_LAUNCH_START` done: updates accepted.
    Started,
    /// SEV-ES `LAUNCH_UPDATE_VMSA` done (no more data, vCPU state sealed).
    VmsaSealed,
    /// SEV `LAUNCH_MEASURE` done: the firmware's LSECRET state (amd/AMD-ASPFW
    /// `sev_guest.h`: `LAUNCH_SECRET` and `LAUNCH_FINISH` allowed).
    Measured,
    /// `LAUNCH_FINISH` / `SNP_LAUNCH_FINISH` / `FINALIZE_VM` done.
    Finished,
}

#[derive(Debug)]
enum Acc {
    None,
    Sev(SevDigest),
    Snp(SnpDigest),
    Tdx(MrtdDigest),
}

#[derive(Clone, Copy, Debug)]
struct Slot {
    gpa: u64,
    size: u64,
    uaddr: u64,
    gmem: bool,
}

#[derive(Debug)]
struct VcpuState {
    regs: kvm_regs,
    sregs: kvm_sregs,
    xcr0: u64,
    pat: u64,
    dr6: u64,
    dr7: u64,
    fpu: Option<kvm_fpu>,
    /// The VMSA was sealed (`guest_state_protected`): register calls fail.
    protected: bool,
    /// TDX `INIT_VCPU` done.
    tdx_init: bool,
}

#[derive(Debug)]
pub(super) struct VmState {
    vm_type: u64,
    launch: Launch,
    vmsa_features: u64,
    policy: u64,
    slots: Vec<(u32, Slot)>,
    /// `KVM_SET_MEMORY_ATTRIBUTES` calls in order: `(start, end, private)`, last wins.
    attrs: Vec<(u64, u64, bool)>,
    /// Guest frames the firmware already took (RMP-assigned / TDX-added).
    assigned: HashSet<u64>,
    vcpus: Vec<Arc<Mutex<VcpuState>>>,
    acc: Acc,
    irqchip: bool,
    /// Where the firmware's private-page contents go when the guest really runs
    /// (`--platform emulated:<p>`, `sys::emu`); `None`: measure only.
    sink: Option<Arc<dyn PrivateSink>>,
    /// TDX: the CPUID configuration `INIT_VM` took.
    td_cpuid: Vec<kvm_bindings::kvm_cpuid_entry2>,
    /// The MEASURE `LAUNCH_MEASURE` returned: `LAUNCH_SECRET` packet MACs cover it
    /// (`sev_trusted_channel_t.measurement`).
    measure: Option<[u8; 32]>,
}

impl VmState {
    fn platform(&self) -> Platform {
        match self.vm_type {
            super::KVM_X86_SEV_VM => Platform::Sev,
            super::KVM_X86_SEV_ES_VM => Platform::SevEs,
            super::KVM_X86_SNP_VM => Platform::Snp,
            super::KVM_X86_TDX_VM => Platform::Tdx,
            _ => Platform::Native,
        }
    }

    /// Whether the VM type has private (guest_memfd) memory: SNP and TDX
    /// (`kvm_arch_has_private_mem`; SEV and SEV-ES encrypt in place).
    fn has_private_mem(&self) -> bool {
        matches!(self.platform(), Platform::Snp | Platform::Tdx)
    }

    fn slot_of(&self, gfn: u64) -> Option<Slot> {
        let gpa = gfn.checked_mul(PAGE)?;
        self.slots
            .iter()
            .map(|(_, s)| *s)
            .find(|s| gpa >= s.gpa && gpa - s.gpa < s.size)
    }

    fn is_private(&self, gfn: u64) -> bool {
        let Some(gpa) = gfn.checked_mul(PAGE) else {
            return false;
        };
        self.attrs
            .iter()
            .rev()
            .find(|(s, e, _)| gpa >= *s && gpa < *e)
            .is_some_and(|&(_, _, p)| p)
    }

    /// The GPA a host address of a memslot's shared mapping stands for.
    fn gpa_of_uaddr(&self, uaddr: u64) -> Option<u64> {
        self.slots
            .iter()
            .map(|(_, s)| *s)
            .find(|s| s.uaddr != 0 && uaddr >= s.uaddr && uaddr - s.uaddr < s.size)
            .map(|s| s.gpa + (uaddr - s.uaddr))
    }
}

fn read(src: &Source<'_>, extra: u64, len: usize) -> Result<Vec<u8>, CocoError> {
    let mut buf = vec![0u8; len];
    let off = src.offset.checked_add(extra).ok_or(err(libc::EFAULT))?;
    src.mapping
        .read(off, &mut buf)
        .map_err(|_| err(libc::EFAULT))?;
    Ok(buf)
}

/// An SNP secrets page as the firmware fills it at `SNP_LAUNCH_UPDATE` with PAGE_TYPE_SECRETS
/// (SEV-SNP Firmware ABI, "PAGE_TYPE_SECRETS" — layout as in edk2
/// `MdePkg/Include/Register/Amd/SnpSecretsPage.h`): VERSION 2 @0x0, IMIEN clear @0x4, FMS
/// (family/model/stepping, CPUID(1).EAX) @0x8, GOSVW zero @0x10, VMPCK0–3 @0x20/0x40/0x60/0x80
/// (fresh random keys on every launch), the OS area @0xA0 and the rest zero.
pub(super) fn snp_secrets_page(fms: u32) -> Result<Vec<u8>, Errno> {
    let mut page = vec![0u8; PAGE as usize];
    page[0..4].copy_from_slice(&2u32.to_le_bytes());
    page[8..12].copy_from_slice(&fms.to_le_bytes());
    random_bytes(&mut page[0x20..0xA0])?;
    Ok(page)
}

/// Fills `buf` from the kernel's random source.
///
/// # Errors
/// The `open`/`read` errno of `/dev/urandom`.
pub(crate) fn random_bytes(buf: &mut [u8]) -> Result<(), Errno> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .map_err(|e| Errno::new(e.raw_os_error().unwrap_or(libc::EIO)))
}

/// The firmware identity the model's `LAUNCH_MEASURE` MACs: API 1.55 build 0 (any fixed
/// value: a model has no firmware version of its own; a guest owner verifying the model's
/// blob uses this one).
pub const MODEL_FW: owner::FirmwareVersion = owner::FirmwareVersion {
    api_major: 1,
    api_minor: 55,
    build: 0,
};

/// 16 fresh random bytes from /dev/urandom.
fn fresh_nonce() -> std::io::Result<[u8; 16]> {
    let mut n = [0u8; 16];
    random_bytes(&mut n).map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?;
    Ok(n)
}

fn sha384(bytes: &[u8]) -> [u8; 48] {
    Sha384::digest(bytes).into()
}

fn hex(b: &[u8]) -> String {
    crate::json::hex(b)
}

/// How many pages this partial-progress call may do, counting it for `eintr_every`
/// (`EINTR` with nothing done: a signal before the first page).
fn partial_budget(shared: &Shared, pages: u64) -> Result<u64, CocoError> {
    let mut calls = lock(&shared.populate_calls);
    *calls = calls.wrapping_add(1);
    if let Some(k) = shared.cfg.eintr_every {
        if k > 0 && (*calls).is_multiple_of(k) {
            return Err(err(libc::EINTR));
        }
    }
    Ok(shared
        .cfg
        .max_pages_per_call
        .map_or(pages, |m| pages.min(m.max(1))))
}

/// A VM fd of the model.
#[derive(Debug)]
pub(super) struct ModelVm {
    shared: Arc<Shared>,
    st: Arc<Mutex<VmState>>,
}

impl ModelVm {
    pub(super) fn new(
        shared: Arc<Shared>,
        vm_type: u64,
        sink: Option<Arc<dyn PrivateSink>>,
    ) -> Result<ModelVm, Errno> {
        // `KVM_CREATE_VM` refuses types the host does not offer (`kvm_arch_init_vm`: EINVAL).
        if !matches!(vm_type, 0 | 2..=5) {
            return Err(Errno::new(libc::EINVAL));
        }
        let st = VmState {
            vm_type,
            launch: Launch::None,
            vmsa_features: 0,
            policy: 0,
            slots: Vec::new(),
            attrs: Vec::new(),
            assigned: HashSet::new(),
            vcpus: Vec::new(),
            acc: Acc::None,
            irqchip: false,
            sink,
            td_cpuid: Vec::new(),
            measure: None,
        };
        Ok(ModelVm {
            shared,
            st: Arc::new(Mutex::new(st)),
        })
    }

    fn log(&self, ioctl: &'static str, args: Vec<(&'static str, Arg)>, error: Option<CocoError>) {
        self.shared.call(CallRecord {
            fd: "vm".into(),
            ioctl,
            args,
            error,
        });
    }

    fn sev_inner(&self, st: &mut VmState, cmd: &mut SevCmd<'_>) -> Result<(), CocoError> {
        let platform = st.platform();
        let sev_family = matches!(platform, Platform::Sev | Platform::SevEs | Platform::Snp);
        if !sev_family {
            // KVM_MEMORY_ENCRYPT_OP on a VM without SEV (`../shared/spec/kvm-coco-abi.md` §1.2).
            return Err(err(libc::ENOTTY));
        }
        let is_init = matches!(cmd, SevCmd::Init2 { .. });
        // `sev_mem_enc_ioctl`: every command but the INITs needs an initialised SEV VM.
        if !is_init && st.launch == Launch::None {
            return Err(err(libc::ENOTTY));
        }
        let snp_cmd = matches!(
            cmd,
            SevCmd::SnpLaunchStart { .. }
                | SevCmd::SnpLaunchUpdate(_)
                | SevCmd::SnpLaunchFinish { .. }
        );
        // SNP commands on a non-SNP VM are refused (`snp_launch_*`: `!sev_snp_guest` →
        // ENOTTY). The model answers the legacy launch commands on an SNP VM the same way
        // (a simplification: not checked against sev.c per command). The certificate
        // switch answers for itself (below).
        let enable_certs = matches!(cmd, SevCmd::SnpEnableReqCerts);
        if snp_cmd != (platform == Platform::Snp) && !is_init && !enable_certs {
            return Err(err(libc::ENOTTY));
        }
        match cmd {
            SevCmd::Init2 {
                vmsa_features,
                ghcb_version,
            } => {
                // `sev_guest_init2` (§1.3): once, before any vCPU; vmsa_features 0 for SEV
                // and within the host's set; ghcb_version 0 for SEV, at most 2.
                let bad = st.launch != Launch::None
                    || !st.vcpus.is_empty()
                    || (platform == Platform::Sev && (*vmsa_features != 0 || *ghcb_version != 0))
                    || *vmsa_features & !self.shared.cfg.vmsa_features != 0
                    || *ghcb_version > 2;
                if bad {
                    return Err(err(libc::EINVAL));
                }
                st.vmsa_features = *vmsa_features;
                st.launch = Launch::Init;
                Ok(())
            }
            SevCmd::LaunchStart { policy, handle } => {
                if st.launch != Launch::Init {
                    return Err(fw(SEV_RET_INVALID_GUEST_STATE));
                }
                // SEV API §6.2 LAUNCH_START: POLICY.ES (bit 2) must match the guest's kind.
                let es = *policy & (1 << 2) != 0;
                if es != (platform == Platform::SevEs) {
                    return Err(fw(SEV_RET_POLICY_FAILURE));
                }
                st.policy = u64::from(*policy);
                st.acc = Acc::Sev(SevDigest::new());
                st.launch = Launch::Started;
                *handle = 1;
                Ok(())
            }
            SevCmd::LaunchUpdateData { source, len } => {
                if st.launch != Launch::Started {
                    return Err(fw(SEV_RET_INVALID_GUEST_STATE));
                }
                // The firmware works on 16-byte units (SEV API §6.3 LAUNCH_UPDATE_DATA).
                if *len == 0 || *len % 16 != 0 || source.offset % 16 != 0 {
                    return Err(fw(SEV_RET_INVALID_LEN));
                }
                let bytes = read(source, 0, *len as usize)?;
                let gpa = st
                    .gpa_of_uaddr(source.mapping.host_addr().wrapping_add(source.offset))
                    .ok_or(err(libc::EFAULT))?;
                if let Acc::Sev(d) = &mut st.acc {
                    d.update(&bytes);
                }
                self.shared.measured(Measured::Sev { gpa, bytes });
                Ok(())
            }
            SevCmd::LaunchUpdateVmsa => {
                if platform != Platform::SevEs {
                    return Err(err(libc::EINVAL));
                }
                if st.launch != Launch::Started {
                    return Err(fw(SEV_RET_INVALID_GUEST_STATE));
                }
                let pages = self.seal_vmsas(st, Platform::SevEs)?;
                for page in pages {
                    if let Acc::Sev(d) = &mut st.acc {
                        d.update(&page);
                    }
                    self.shared.measured(Measured::Sev {
                        gpa: KVM_VMSA_GPA,
                        bytes: page.to_vec(),
                    });
                }
                st.launch = Launch::VmsaSealed;
                Ok(())
            }
            SevCmd::LaunchMeasure { blob } => {
                let ready = match platform {
                    Platform::SevEs => st.launch == Launch::VmsaSealed,
                    _ => st.launch == Launch::Started,
                };
                if !ready {
                    return Err(fw(SEV_RET_INVALID_GUEST_STATE));
                }
                let Acc::Sev(d) = std::mem::replace(&mut st.acc, Acc::None) else {
                    return Err(fw(SEV_RET_INVALID_GUEST_STATE));
                };
                let digest = d.finish();
                let m = if platform == Platform::SevEs {
                    Measurement::SevEs(digest)
                } else {
                    Measurement::Sev(digest)
                };
                let cfg = &self.shared.cfg;
                let mnonce = match cfg.mnonce {
                    Some(n) => n,
                    // The firmware draws MNONCE from its TRNG (`sev_guest_measure`).
                    None => fresh_nonce().map_err(|_| err(libc::EIO))?,
                };
                let mac = launch_measure(
                    &cfg.tik,
                    MODEL_FW.api_major,
                    MODEL_FW.api_minor,
                    MODEL_FW.build,
                    st.policy as u32,
                    &digest,
                    &mnonce,
                );
                blob[..32].copy_from_slice(&mac);
                blob[32..].copy_from_slice(&mnonce);
                self.shared.finished(m);
                st.measure = Some(mac);
                st.launch = Launch::Measured;
                Ok(())
            }
            SevCmd::LaunchSecret {
                header,
                guest,
                guest_len,
                trans,
            } => self.launch_secret(st, header, guest, *guest_len, trans),
            SevCmd::LaunchFinish => {
                if st.launch != Launch::Measured {
                    return Err(fw(SEV_RET_INVALID_GUEST_STATE));
                }
                st.launch = Launch::Finished;
                Ok(())
            }
            SevCmd::SnpEnableReqCerts => {
                // `snp_enable_certs` (Linux 7.0 `arch/x86/kvm/svm/sev.c`, kvm-x86
                // 20c3c4108d58): `kvm->created_vcpus || !sev_snp_guest(kvm)` → EINVAL;
                // nothing else is checked and nothing reaches the firmware. The model never
                // runs a guest, so it has no extended guest request to exit for. Before 7.0
                // the id is unknown: EINVAL.
                if !self.shared.cfg.snp_req_certs
                    || platform != Platform::Snp
                    || !st.vcpus.is_empty()
                {
                    return Err(err(libc::EINVAL));
                }
                Ok(())
            }
            SevCmd::SnpLaunchStart { policy } => {
                if st.launch != Launch::Init {
                    // A second SNP context is refused (`snp_launch_start`).
                    return Err(err(libc::EINVAL));
                }
                // §1.3: bits outside the supported set, or SMT / reserved-MBO clear: EINVAL.
                if *policy & !self.shared.cfg.snp_policy_bits != 0
                    || *policy & SNP_POLICY_RSVD_MBO == 0
                    || *policy & SNP_POLICY_SMT == 0
                {
                    return Err(err(libc::EINVAL));
                }
                st.policy = *policy;
                st.acc = Acc::Snp(SnpDigest::new());
                st.launch = Launch::Started;
                Ok(())
            }
            SevCmd::SnpLaunchUpdate(u) => {
                if st.launch == Launch::Finished {
                    // The firmware's guest is no longer in the LAUNCH state (SNP ABI
                    // SNP_LAUNCH_UPDATE: INVALID_GUEST_STATE).
                    return Err(fw(SEV_RET_INVALID_GUEST_STATE));
                }
                if st.launch != Launch::Started {
                    return Err(err(libc::EINVAL));
                }
                // `snp_launch_update` (§1.3): len a non-zero 4 KiB multiple, known type
                // (VMSA is KVM's own), page-aligned source except for ZERO.
                let known = matches!(u.page_type, 1 | 3 | 4 | 5 | 6);
                let src_ok = u.page_type == snp::PAGE_TYPE_ZERO
                    || u.source.is_some_and(|s| {
                        (s.mapping.host_addr().wrapping_add(s.offset)) % PAGE == 0
                    });
                if u.len == 0 || u.len % PAGE != 0 || !known || !src_ok {
                    return Err(err(libc::EINVAL));
                }
                self.populate_snp(st, u)
            }
            SevCmd::SnpLaunchFinish {
                id_block,
                auth_key_en,
                host_data: _,
                id_auth: _,
            } => {
                if st.launch != Launch::Started {
                    return Err(fw(SEV_RET_INVALID_GUEST_STATE));
                }
                let _ = auth_key_en;
                // KVM's VMSA step first: every vCPU in creation order, measured as a VMSA
                // page at 0xFFFFFFFFF000 (§1.4).
                let pages = self.seal_vmsas(st, Platform::Snp)?;
                for page in pages {
                    let h = sha384(&page);
                    if let Acc::Snp(d) = &mut st.acc {
                        d.update(&h, KVM_VMSA_GPA, snp::PAGE_TYPE_VMSA);
                    }
                    self.shared.measured(Measured::Snp {
                        gpa: KVM_VMSA_GPA,
                        page_type: snp::PAGE_TYPE_VMSA,
                        sha384: Some(h),
                    });
                }
                let ld = match &st.acc {
                    Acc::Snp(d) => d.ld(),
                    _ => return Err(fw(SEV_RET_INVALID_GUEST_STATE)),
                };
                let m = Measurement::Snp(ld);
                if let Some(block) = id_block {
                    // ID block (SNP ABI, Table "ID_BLOCK"): LD[48] @0, ..., POLICY u64 @88.
                    let mut block_ld = [0u8; 48];
                    block_ld.copy_from_slice(&block[..48]);
                    if !id_block_matches(&block_ld, &m) {
                        return Err(fw(SEV_RET_BAD_MEASUREMENT));
                    }
                    let mut p = [0u8; 8];
                    p.copy_from_slice(&block[88..96]);
                    if u64::from_le_bytes(p) != st.policy {
                        return Err(fw(SEV_RET_POLICY_FAILURE));
                    }
                }
                self.shared.finished(m);
                st.launch = Launch::Finished;
                Ok(())
            }
        }
    }

    /// `KVM_SEV_LAUNCH_SECRET`: KVM's checks (`arch/x86/kvm/svm/sev.c` `sev_launch_secret`:
    /// the guest range pinned, header and packet copied with `psp_copy_user_blob`), then the
    /// firmware's, in its order (amd/AMD-ASPFW `sev_mcmd.c` `sev_mcmd_launch_secret`):
    /// 16-byte aligned guest address (INVALID_ADDRESS); a 52-byte header and a guest length
    /// that is a non-zero 16-byte multiple within the scratch buffer and equal to the packet
    /// length (INVALID_LENGTH); the LSECRET state, after `LAUNCH_MEASURE` and before
    /// `LAUNCH_FINISH` (INVALID_GUEST_STATE); the packet MAC with the TIK over the MEASURE
    /// (BAD_MEASUREMENT); FLAGS.COMPRESSED (UNSUPPORTED, after the MAC). Then the decrypted
    /// secret goes into the guest range. The model's guest sees that memory unencrypted, so
    /// the plaintext is what it gets (the firmware writes it encrypted with the guest's key,
    /// which the guest reads as the same plaintext).
    fn launch_secret(
        &self,
        st: &VmState,
        header: &[u8],
        guest: &Source<'_>,
        guest_len: u32,
        trans: &[u8],
    ) -> Result<(), CocoError> {
        // `sev_pin_memory`: an empty or wrapping range is EINVAL, memory that is not there
        // EFAULT (the model's door hands a mapping: the range must lie in it).
        let start = guest.offset;
        let in_mapping = start
            .checked_add(u64::from(guest_len))
            .is_some_and(|end| end <= guest.mapping.len() as u64);
        if guest_len == 0 {
            return Err(err(libc::EINVAL));
        }
        if !in_mapping {
            return Err(err(libc::EFAULT));
        }
        // `psp_copy_user_blob`: an empty blob or one over SEV_FW_BLOB_MAX_SIZE is EINVAL.
        for blob in [trans, header] {
            if blob.is_empty() || blob.len() > SEV_FW_BLOB_MAX_SIZE {
                return Err(err(libc::EINVAL));
            }
        }
        // The firmware sees the host-physical address of the pinned page plus the offset:
        // its low bits are the host address's.
        if !guest
            .mapping
            .host_addr()
            .wrapping_add(start)
            .is_multiple_of(16)
        {
            return Err(fw(SEV_RET_INVALID_ADDRESS));
        }
        if header.len() != owner::HEADER_LEN
            || !guest_len.is_multiple_of(16)
            || guest_len > SEV_SCRATCH_BUF_LEN
            || guest_len as usize != trans.len()
        {
            return Err(fw(SEV_RET_INVALID_LEN));
        }
        let (Launch::Measured, Some(measure)) = (st.launch, st.measure) else {
            return Err(fw(SEV_RET_INVALID_GUEST_STATE));
        };
        let hdr = owner::PacketHeader::parse(header).map_err(|_| fw(SEV_RET_INVALID_LEN))?;
        let keys = owner::TransportKeys {
            tek: self.shared.cfg.tek,
            tik: self.shared.cfg.tik,
        };
        let mut data = trans.to_vec();
        match owner::unwrap_secret(&keys, &measure, &hdr, guest_len, &mut data) {
            Ok(()) => {}
            Err(owner::OwnerError::Compressed) => return Err(fw(SEV_RET_UNSUPPORTED)),
            Err(_) => return Err(fw(SEV_RET_BAD_MEASUREMENT)),
        }
        guest
            .mapping
            .write(start, &data)
            .map_err(|_| err(libc::EFAULT))
    }

    /// KVM's VMSA step over every vCPU: refuses a non-default DR7 (`sev_es_sync_vmsa`,
    /// §1.4), builds each VMSA from the vCPU's registers and seals its state.
    fn seal_vmsas(&self, st: &VmState, platform: Platform) -> Result<Vec<[u8; 4096]>, CocoError> {
        let mut pages = Vec::with_capacity(st.vcpus.len());
        for v in &st.vcpus {
            let v = lock(v);
            if v.dr7 != 0x400 || v.protected {
                return Err(err(libc::EINVAL));
            }
            pages.push(kvm_measured_vmsa(
                &vp_regs(&v),
                st.vmsa_features,
                platform,
                true,
            ));
        }
        for v in &st.vcpus {
            lock(v).protected = true;
        }
        Ok(pages)
    }

    /// `kvm_gmem_populate` + `sev_gmem_post_populate`: per page, in a guest_memfd slot,
    /// private, not yet assigned; progress written back.
    fn populate_snp(
        &self,
        st: &mut VmState,
        u: &mut crate::sys::coco::SnpUpdate<'_>,
    ) -> Result<(), CocoError> {
        let first = st.slot_of(u.gfn_start).ok_or(err(libc::EINVAL))?;
        if !first.gmem {
            return Err(err(libc::EINVAL));
        }
        let budget = partial_budget(&self.shared, u.len / PAGE)?;
        // Never past the first page's memslot (`kvm_gmem_populate` clamps to it).
        let slot_left = (first.gpa + first.size - u.gfn_start * PAGE) / PAGE;
        let n = budget.min(slot_left);
        let mut done = 0;
        let mut result = Ok(());
        while done < n {
            let gfn = u.gfn_start + done;
            if !st.is_private(gfn) {
                result = Err(err(libc::EINVAL));
                break;
            }
            if st.assigned.contains(&gfn) {
                result = Err(err(libc::EEXIST));
                break;
            }
            let gpa = gfn * PAGE;
            if u.page_type == snp::PAGE_TYPE_CPUID {
                // The Secure Processor checks the table (`super::cpuid`); a refused page is
                // not assigned, and a corrected one is copied back to the source, as KVM
                // does (`../shared/spec/kvm-coco-abi.md` §1.3).
                let src = u.source.as_ref().ok_or(err(libc::EFAULT))?;
                let mut page = [0u8; PAGE as usize];
                page.copy_from_slice(&read(src, done * PAGE, PAGE as usize)?);
                match super::cpuid::check_page(&page, &self.shared.firmware_cpuid()) {
                    super::cpuid::Verdict::Ok => {}
                    super::cpuid::Verdict::Refused => {
                        result = Err(fw(SEV_RET_INVALID_PARAM));
                        break;
                    }
                    super::cpuid::Verdict::Corrected(fixed) => {
                        let at = src
                            .offset
                            .checked_add(done * PAGE)
                            .ok_or(err(libc::EFAULT))?;
                        src.mapping
                            .write(at, &fixed[..])
                            .map_err(|_| err(libc::EFAULT))?;
                        result = Err(fw(SEV_RET_INVALID_PARAM));
                        break;
                    }
                }
            }
            // Every type but ZERO is copied in from the source (UNMEASURED / SECRETS / CPUID
            // too): the source must be readable.
            let bytes = match (u.source.as_ref(), u.page_type == snp::PAGE_TYPE_ZERO) {
                (Some(src), false) => Some(read(src, done * PAGE, PAGE as usize)?),
                _ => None,
            };
            let sha = if snp::type_has_contents(u.page_type) {
                Some(sha384(bytes.as_deref().ok_or(err(libc::EFAULT))?))
            } else {
                None
            };
            if let Some(sink) = &st.sink {
                // What the private page holds now: the firmware zeroes ZERO pages and fills
                // the secrets page; the others keep the bytes copied in.
                match (u.page_type, bytes.as_deref()) {
                    (snp::PAGE_TYPE_SECRETS, _) => {
                        sink.write(gpa, &snp_secrets_page(self.shared.cfg.vcpu_sig)?)
                    }
                    (_, Some(b)) => sink.write(gpa, b),
                    (_, None) => sink.zero(gpa, PAGE),
                }
                .map_err(CocoError::from)?;
            }
            if let Acc::Snp(d) = &mut st.acc {
                d.update(&sha.unwrap_or([0; 48]), gpa, u.page_type);
            }
            self.shared.measured(Measured::Snp {
                gpa,
                page_type: u.page_type,
                sha384: sha,
            });
            st.assigned.insert(gfn);
            done += 1;
        }
        // Progress is written back only on success; a failure after some pages reports
        // the pages done (`kvm_gmem_populate` returns the count when it is non-zero).
        if done == 0 {
            result?;
        }
        u.gfn_start += done;
        u.len -= done * PAGE;
        if u.page_type != snp::PAGE_TYPE_ZERO {
            if let Some(s) = &mut u.source {
                s.offset += done * PAGE;
            }
        }
        Ok(())
    }
}

impl Drop for ModelVm {
    fn drop(&mut self) {
        self.log("close", Vec::new(), None);
    }
}

fn sev_args(cmd: &SevCmd<'_>, sev_fd: i32) -> Vec<(&'static str, Arg)> {
    let n = Arg::Num;
    let mut a = match cmd {
        SevCmd::Init2 {
            vmsa_features,
            ghcb_version,
        } => vec![
            ("vmsa_features", n(*vmsa_features)),
            ("flags", n(0)),
            ("ghcb_version", n((*ghcb_version).into())),
        ],
        SevCmd::LaunchStart { policy, handle } => {
            vec![
                ("handle", n((*handle).into())),
                ("policy", n((*policy).into())),
            ]
        }
        SevCmd::LaunchUpdateData { source, len } => {
            vec![
                ("uaddr_offset", n(source.offset)),
                ("len", n((*len).into())),
            ]
        }
        SevCmd::LaunchUpdateVmsa | SevCmd::LaunchFinish | SevCmd::SnpEnableReqCerts => Vec::new(),
        SevCmd::LaunchMeasure { .. } => vec![("len", n(48))],
        SevCmd::LaunchSecret {
            header,
            guest,
            guest_len,
            trans,
        } => vec![
            ("hdr_len", n(header.len() as u64)),
            ("guest_uaddr_offset", n(guest.offset)),
            ("guest_len", n((*guest_len).into())),
            ("trans_len", n(trans.len() as u64)),
        ],
        SevCmd::SnpLaunchStart { policy } => vec![("policy", n(*policy)), ("flags", n(0))],
        SevCmd::SnpLaunchUpdate(u) => {
            let mut v = vec![("gfn_start", n(u.gfn_start))];
            if let Some(s) = &u.source {
                v.push(("uaddr_offset", n(s.offset)));
            }
            v.push(("len", n(u.len)));
            v.push(("type", n(u.page_type.into())));
            if u.page_type == snp::PAGE_TYPE_CPUID {
                // What the CPUID page gives the firmware: its count and functions
                // (`leaf:subleaf`, hex), read from the source as it came in.
                if let Some(src) = &u.source {
                    if let Ok(bytes) = read(src, 0, PAGE as usize) {
                        let t = crate::backend::snp_cpuid::CpuidTable::from_page(&bytes);
                        let list: Vec<String> = t
                            .functions
                            .iter()
                            .map(|f| format!("{:x}:{:x}", f.eax_in, f.ecx_in))
                            .collect();
                        v.push(("cpuid_count", n(t.count.into())));
                        v.push(("cpuid_functions", Arg::Text(list.join(" "))));
                    }
                }
            }
            v
        }
        SevCmd::SnpLaunchFinish {
            id_block,
            auth_key_en,
            host_data,
            ..
        } => {
            let mut v = vec![
                ("id_block_en", n(id_block.is_some().into())),
                ("auth_key_en", n((*auth_key_en).into())),
                ("host_data", Arg::Text(hex(host_data))),
            ];
            if let Some(b) = id_block {
                v.push(("id_block", Arg::Text(hex(&b[..]))));
            }
            v
        }
    };
    a.push((
        "sev_fd",
        Arg::Text(if sev_fd >= 0 { "sev" } else { "none" }.into()),
    ));
    a
}

impl SafeVmIoctls for ModelVm {
    fn check_extension(&self, cap: u32) -> i32 {
        let st = lock(&self.st);
        let v = match self.shared.cap(cap) {
            Some(v) => v,
            None if cap == KVM_CAP_MEMORY_ATTRIBUTES => {
                // Private memory only on VM types that have it (§2: 0 for default VMs).
                if st.has_private_mem() {
                    KVM_MEMORY_ATTRIBUTE_PRIVATE as i32
                } else {
                    0
                }
            }
            None => system_cap(&self.shared, cap),
        };
        drop(st);
        self.log(
            "KVM_CHECK_EXTENSION",
            vec![("cap", Arg::Num(cap.into()))],
            None,
        );
        v
    }

    fn set_user_memory_region2(&self, r: kvm_userspace_memory_region2) -> Result<(), Errno> {
        let mut st = lock(&self.st);
        let gmem = r.flags & KVM_MEM_GUEST_MEMFD != 0;
        // `__kvm_set_memory_region`: page-aligned address and size, no wrap, no overlap
        // with another slot (EEXIST); KVM_MEM_GUEST_MEMFD only where the VM type allows.
        let res =
            (|| {
                if !r.guest_phys_addr.is_multiple_of(PAGE)
                    || !r.memory_size.is_multiple_of(PAGE)
                    || r.guest_phys_addr.checked_add(r.memory_size).is_none()
                    || r.flags & !KVM_MEM_GUEST_MEMFD != 0
                {
                    return Err(Errno::new(libc::EINVAL));
                }
                let end = r.guest_phys_addr + r.memory_size;
                if st.slots.iter().any(|(id, s)| {
                    *id != r.slot && r.guest_phys_addr < s.gpa + s.size && s.gpa < end
                }) {
                    return Err(Errno::new(libc::EEXIST));
                }
                st.slots.retain(|(id, _)| *id != r.slot);
                if r.memory_size != 0 {
                    st.slots.push((
                        r.slot,
                        Slot {
                            gpa: r.guest_phys_addr,
                            size: r.memory_size,
                            uaddr: r.userspace_addr,
                            gmem,
                        },
                    ));
                }
                Ok(())
            })();
        drop(st);
        self.log(
            "KVM_SET_USER_MEMORY_REGION2",
            vec![
                ("slot", Arg::Num(r.slot.into())),
                ("flags", Arg::Num(r.flags.into())),
                ("guest_phys_addr", Arg::Num(r.guest_phys_addr)),
                ("memory_size", Arg::Num(r.memory_size)),
                (
                    "userspace_addr",
                    Arg::Text(if r.userspace_addr == 0 { "0" } else { "mapped" }.into()),
                ),
                ("guest_memfd_offset", Arg::Num(r.guest_memfd_offset)),
                (
                    "guest_memfd",
                    Arg::Text(if gmem { "gmem" } else { "none" }.into()),
                ),
            ],
            res.err().map(Into::into),
        );
        res
    }

    fn create_guest_memfd(&self, size: u64, flags: u64) -> Result<OwnedFd, Errno> {
        let private = lock(&self.st).has_private_mem();
        let res = if size == 0
            || !size.is_multiple_of(PAGE)
            || flags & !(GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED) != 0
            // INIT_SHARED is refused on VMs with private memory (§2).
            || (private && flags & GUEST_MEMFD_FLAG_INIT_SHARED != 0)
        {
            Err(Errno::new(libc::EINVAL))
        } else {
            crate::sys::record::memfd(size).map(OwnedFd::from)
        };
        self.log(
            "KVM_CREATE_GUEST_MEMFD",
            vec![("size", Arg::Num(size)), ("flags", Arg::Num(flags))],
            res.as_ref().err().map(|&e| e.into()),
        );
        res
    }

    fn set_memory_attributes(&self, a: kvm_memory_attributes) -> Result<(), Errno> {
        let mut st = lock(&self.st);
        // `kvm_vm_ioctl_set_mem_attributes`: supported attributes only, page-aligned
        // non-empty range without wrap, flags 0.
        let supported = if st.has_private_mem() {
            KVM_MEMORY_ATTRIBUTE_PRIVATE
        } else {
            0
        };
        let res = if a.attributes & !supported != 0
            || a.flags != 0
            || a.size == 0
            || !a.address.is_multiple_of(PAGE)
            || !a.size.is_multiple_of(PAGE)
            || a.address.checked_add(a.size).is_none()
        {
            Err(Errno::new(libc::EINVAL))
        } else {
            st.attrs.push((
                a.address,
                a.address + a.size,
                a.attributes & KVM_MEMORY_ATTRIBUTE_PRIVATE != 0,
            ));
            Ok(())
        };
        drop(st);
        self.log(
            "KVM_SET_MEMORY_ATTRIBUTES",
            vec![
                ("address", Arg::Num(a.address)),
                ("size", Arg::Num(a.size)),
                ("attributes", Arg::Num(a.attributes)),
                ("flags", Arg::Num(a.flags)),
            ],
            res.err().map(Into::into),
        );
        res
    }

    fn create_irqchip(&self) -> Result<(), Errno> {
        let mut st = lock(&self.st);
        // TDX: ENOTTY (protected EOI, §3.1); twice or after a vCPU: EEXIST / EINVAL.
        let res = if st.platform() == Platform::Tdx {
            Err(Errno::new(libc::ENOTTY))
        } else if st.irqchip {
            Err(Errno::new(libc::EEXIST))
        } else if !st.vcpus.is_empty() {
            Err(Errno::new(libc::EINVAL))
        } else {
            st.irqchip = true;
            Ok(())
        };
        drop(st);
        self.log("KVM_CREATE_IRQCHIP", Vec::new(), res.err().map(Into::into));
        res
    }

    fn irq_line(&self, irq: u32, level: bool) -> Result<(), Errno> {
        // `kvm_vm_ioctl_irq_line` (`virt/kvm/kvm_main.c`, `arch/x86/kvm/x86.c`): ENXIO
        // without an in-kernel irqchip (TDX's split irqchip has no PIC/IOAPIC pins either:
        // relaunch never asks there).
        let st = lock(&self.st);
        let res = if st.irqchip {
            Ok(())
        } else {
            Err(Errno::new(libc::ENXIO))
        };
        drop(st);
        self.log(
            "KVM_IRQ_LINE",
            vec![
                ("irq", Arg::Num(u64::from(irq))),
                ("level", Arg::Num(u64::from(level))),
            ],
            res.err().map(Into::into),
        );
        res
    }

    fn create_vcpu(&self, id: u64) -> Result<Box<dyn VcpuIoctls>, Errno> {
        let mut st = lock(&self.st);
        let res = if st.vcpus.len() >= self.shared.cfg.max_vcpus {
            Err(Errno::new(libc::EINVAL))
        } else if st.platform() == Platform::Tdx && st.launch == Launch::None {
            // `tdx_vcpu_create`: the TD must be initialised first (EIO).
            Err(Errno::new(libc::EIO))
        } else {
            let index = st.vcpus.len();
            let v = Arc::new(Mutex::new(fresh_vcpu(self.shared.cfg.vcpu_sig)));
            st.vcpus.push(Arc::clone(&v));
            Ok(Box::new(ModelVcpu {
                shared: Arc::clone(&self.shared),
                vm: Arc::clone(&self.st),
                v,
                name: format!("vcpu{index}"),
            }) as Box<dyn VcpuIoctls>)
        };
        drop(st);
        self.log(
            "KVM_CREATE_VCPU",
            vec![("id", Arg::Num(id))],
            res.as_ref().err().map(|&e| e.into()),
        );
        res
    }

    fn enable_cap(&self, cap: u32, args: [u64; 4]) -> Result<(), Errno> {
        self.log(
            "KVM_ENABLE_CAP",
            vec![
                ("cap", Arg::Num(cap.into())),
                ("args0", Arg::Num(args[0])),
                ("args1", Arg::Num(args[1])),
                ("args2", Arg::Num(args[2])),
                ("args3", Arg::Num(args[3])),
            ],
            None,
        );
        Ok(())
    }

    fn register_enc_region(&self, addr: u64, size: u64) -> Result<(), Errno> {
        let st = lock(&self.st);
        // `sev_mem_enc_register_region`: a SEV-family VM after INIT (ENOTTY otherwise), a
        // non-empty range without wrap (EINVAL; the kernel pins the pages).
        let res = if !matches!(
            st.platform(),
            Platform::Sev | Platform::SevEs | Platform::Snp
        ) || st.launch == Launch::None
        {
            Err(Errno::new(libc::ENOTTY))
        } else if size == 0 || addr.checked_add(size).is_none() {
            Err(Errno::new(libc::EINVAL))
        } else {
            Ok(())
        };
        drop(st);
        self.log(
            "KVM_MEMORY_ENCRYPT_REG_REGION",
            vec![("size", Arg::Num(size))],
            res.err().map(Into::into),
        );
        res
    }

    fn sev_cmd(&self, cmd: &mut SevCmd<'_>, sev_fd: i32) -> Result<(), CocoError> {
        let mut args = sev_args(cmd, sev_fd);
        let name = cmd.name();
        let res = if sev_fd < 0 {
            // The PSP driver refuses anything but a /dev/sev fd (§1.2).
            Err(err(libc::EBADF))
        } else {
            let mut st = lock(&self.st);
            if let SevCmd::LaunchSecret { guest, .. } = cmd {
                // The guest address the secret lands at, where a memslot maps it.
                let host = guest.mapping.host_addr().wrapping_add(guest.offset);
                if let Some(gpa) = st.gpa_of_uaddr(host) {
                    args.insert(2, ("gpa", Arg::Num(gpa)));
                }
            }
            // Log the call before the pages it measures.
            self.log(name, args.clone(), None);
            let r = self.sev_inner(&mut st, cmd);
            drop(st);
            if let Err(e) = r {
                set_last_error(&self.shared, "vm", e);
            }
            return r;
        };
        self.log(name, args, res.err());
        res
    }

    fn tdx_vm_cmd(&self, cmd: &mut TdxVmCmd<'_>) -> Result<(), CocoError> {
        let mut st = lock(&self.st);
        let args = match cmd {
            TdxVmCmd::InitVm {
                attributes,
                xfam,
                cpuid,
                mrconfigid,
                mrowner,
                mrownerconfig,
            } => vec![
                ("attributes", Arg::Num(*attributes)),
                ("xfam", Arg::Num(*xfam)),
                ("mrconfigid", Arg::Text(hex(mrconfigid))),
                ("mrowner", Arg::Text(hex(mrowner))),
                ("mrownerconfig", Arg::Text(hex(mrownerconfig))),
                ("cpuid_nent", Arg::Num(cpuid.as_slice().len() as u64)),
            ],
            TdxVmCmd::FinalizeVm => Vec::new(),
            TdxVmCmd::Capabilities(_) => Vec::new(),
        };
        let res = if st.platform() != Platform::Tdx {
            Err(err(libc::ENOTTY))
        } else {
            match cmd {
                TdxVmCmd::Capabilities(caps) => {
                    **caps = tdx_capabilities();
                    Ok(())
                }
                TdxVmCmd::InitVm {
                    attributes,
                    xfam,
                    cpuid,
                    ..
                } => {
                    let caps = tdx_capabilities();
                    // §3.1: once, before any vCPU; attributes and XFAM within the
                    // capabilities; every CPUID entry a configurable leaf with only
                    // configurable bits (intel-tdx.rst, KVM_TDX_INIT_VM: EINVAL).
                    let cpuid_ok = cpuid.as_slice().iter().all(|e| {
                        caps.cpuid.iter().any(|c| {
                            c.function == e.function
                                && c.index == e.index
                                && e.eax & !c.eax == 0
                                && e.ebx & !c.ebx == 0
                                && e.ecx & !c.ecx == 0
                                && e.edx & !c.edx == 0
                        })
                    });
                    if st.launch != Launch::None
                        || !st.vcpus.is_empty()
                        || *attributes & !caps.supported_attrs != 0
                        || *xfam & !caps.supported_xfam != 0
                        || !cpuid_ok
                    {
                        Err(err(libc::EINVAL))
                    } else {
                        st.launch = Launch::Started;
                        st.acc = Acc::Tdx(MrtdDigest::new());
                        st.td_cpuid = cpuid.as_slice().to_vec();
                        Ok(())
                    }
                }
                TdxVmCmd::FinalizeVm => {
                    if st.launch != Launch::Started {
                        Err(err(libc::EINVAL))
                    } else if let Acc::Tdx(d) = std::mem::replace(&mut st.acc, Acc::None) {
                        self.shared.finished(Measurement::Tdx(d.finish()));
                        st.launch = Launch::Finished;
                        Ok(())
                    } else {
                        Err(err(libc::EINVAL))
                    }
                }
            }
        };
        drop(st);
        self.log(cmd.name(), args, res.err());
        res
    }
}

fn set_last_error(shared: &Shared, fd: &str, e: CocoError) {
    let mut log = lock(&shared.log);
    if let Some(super::Event::Call(c)) = log
        .iter_mut()
        .rev()
        .find(|ev| matches!(ev, super::Event::Call(c) if c.fd == fd))
    {
        c.error = Some(e);
    }
}

/// What the model's TDX module reports to `KVM_TDX_CAPABILITIES` (§3.1): attributes DEBUG
/// (bit 0) and SEPT_VE_DISABLE (bit 28); XFAM x87, SSE, AVX (bits 0–2); GetQuote forwarded
/// (R11 bit 0); configurable CPUID leaves 1 (ECX, EDX), 7.0 (EBX) and 0x80000008 (EAX: the
/// GPAW field, bits 23:16, and the physical address width, bits 7:0).
fn tdx_capabilities() -> crate::sys::coco::TdxCapabilities {
    let e = |function, index, flags, eax, ebx, ecx, edx| kvm_bindings::kvm_cpuid_entry2 {
        function,
        index,
        flags,
        eax,
        ebx,
        ecx,
        edx,
        ..Default::default()
    };
    crate::sys::coco::TdxCapabilities {
        supported_attrs: (1 << 28) | 1,
        supported_xfam: 0x7,
        user_tdvmcallinfo_1_r11: 1,
        user_tdvmcallinfo_1_r12: 0,
        cpuid: vec![
            e(1, 0, 0, 0, 0, 0xFFFF_FFFF, 0xFFFF_FFFF),
            e(
                7,
                0,
                kvm_bindings::KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
                0,
                0xFFFF_FFFF,
                0,
                0,
            ),
            e(0x8000_0008, 0, 0, 0x00FF_00FF, 0, 0, 0),
        ],
    }
}

/// The CPUID the model's TDX module virtualizes for a TD (`KVM_TDX_GET_CPUID`): every leaf
/// of the model host's CPUID, whose configurable bits (the masks `KVM_TDX_CAPABILITIES`
/// reports) are those `INIT_VM` configured for that leaf (0 where it configured none) and
/// whose other bits are the host's. A simplification: the real module also forces bits on
/// or off by its own rules (fixed-1 / fixed-0 bits, XFAM- and attribute-dependent bits;
/// Intel TDX module ABI, "CPUID virtualization"), which the model does not know.
fn td_cpuid_of(
    shared: &Shared,
    config: &[kvm_bindings::kvm_cpuid_entry2],
) -> Vec<kvm_bindings::kvm_cpuid_entry2> {
    let caps = tdx_capabilities();
    let same = |a: &kvm_bindings::kvm_cpuid_entry2, b: &kvm_bindings::kvm_cpuid_entry2| {
        a.function == b.function && a.index == b.index
    };
    super::model_entries(shared.cfg.vcpu_sig)
        .iter()
        .map(|h| {
            let mut e = *h;
            if let Some(m) = caps.cpuid.iter().find(|m| same(m, h)) {
                let c = config
                    .iter()
                    .find(|c| same(c, h))
                    .copied()
                    .unwrap_or_default();
                e.eax = (h.eax & !m.eax) | (c.eax & m.eax);
                e.ebx = (h.ebx & !m.ebx) | (c.ebx & m.ebx);
                e.ecx = (h.ecx & !m.ecx) | (c.ecx & m.ecx);
                e.edx = (h.edx & !m.edx) | (c.edx & m.edx);
            }
            e
        })
        .collect()
}

/// KVM's reset state of a new vCPU (`init_vmcb`, `kvm_vcpu_reset`): QEMU's reset state
/// ([`reset_regs`]) except TR, which KVM starts as a busy 16-bit TSS (type 3, attrib 0x83:
/// `init_sys_seg(&save->tr, SEG_TYPE_BUSY_TSS16)`).
fn fresh_vcpu(sig: u32) -> VcpuState {
    let mut r = reset_regs(sig, BSP_RESET_ADDR);
    r.tr.attrib = 0x83;
    let seg = |s: &Segment| kvm_segment_from(s);
    let dt = |d: &DescriptorTable| kvm_dtable {
        base: d.base,
        limit: d.limit,
        padding: [0; 3],
    };
    let sregs = kvm_sregs {
        cs: seg(&r.cs),
        ds: seg(&r.ds),
        es: seg(&r.es),
        fs: seg(&r.fs),
        gs: seg(&r.gs),
        ss: seg(&r.ss),
        tr: seg(&r.tr),
        ldt: seg(&r.ldtr),
        gdt: dt(&r.gdtr),
        idt: dt(&r.idtr),
        cr0: r.cr0,
        cr3: r.cr3,
        cr4: r.cr4,
        efer: r.efer,
        ..Default::default()
    };
    let regs = kvm_regs {
        rdx: r.gprs.rdx,
        rip: r.rip,
        rflags: r.rflags,
        ..Default::default()
    };
    VcpuState {
        regs,
        sregs,
        xcr0: r.xcr0,
        pat: r.pat,
        dr6: r.dr6,
        dr7: r.dr7,
        fpu: None,
        protected: false,
        tdx_init: false,
    }
}

/// `svm_set_segment`: the VMCB attribute from `kvm_segment` (type, S, DPL, P unless
/// unusable, AVL, L, DB, G; AMD APM Vol. 2 §15.5.1 VMCB segment attributes).
fn vmcb_segment(s: &kvm_segment) -> Segment {
    let p = u16::from(s.present & 1 != 0 && s.unusable == 0);
    let attrib = u16::from(s.type_ & 0xF)
        | (u16::from(s.s & 1) << 4)
        | (u16::from(s.dpl & 3) << 5)
        | (p << 7)
        | (u16::from(s.avl & 1) << 8)
        | (u16::from(s.l & 1) << 9)
        | (u16::from(s.db & 1) << 10)
        | (u16::from(s.g & 1) << 11);
    Segment {
        selector: s.selector,
        attrib,
        limit: s.limit,
        base: s.base,
    }
}

fn vp_regs(v: &VcpuState) -> VpRegs {
    let (r, s) = (&v.regs, &v.sregs);
    let dt = |d: &kvm_dtable| DescriptorTable {
        limit: d.limit,
        base: d.base,
    };
    VpRegs {
        gprs: Gprs {
            rax: r.rax,
            rcx: r.rcx,
            rdx: r.rdx,
            rbx: r.rbx,
            rsp: r.rsp,
            rbp: r.rbp,
            rsi: r.rsi,
            rdi: r.rdi,
            r8: r.r8,
            r9: r.r9,
            r10: r.r10,
            r11: r.r11,
            r12: r.r12,
            r13: r.r13,
            r14: r.r14,
            r15: r.r15,
        },
        rip: r.rip,
        rflags: r.rflags,
        cs: vmcb_segment(&s.cs),
        ds: vmcb_segment(&s.ds),
        es: vmcb_segment(&s.es),
        fs: vmcb_segment(&s.fs),
        gs: vmcb_segment(&s.gs),
        ss: vmcb_segment(&s.ss),
        tr: vmcb_segment(&s.tr),
        ldtr: vmcb_segment(&s.ldt),
        gdtr: dt(&s.gdt),
        idtr: dt(&s.idt),
        cr0: s.cr0,
        cr3: s.cr3,
        cr4: s.cr4,
        efer: s.efer,
        xcr0: v.xcr0,
        dr6: v.dr6,
        dr7: v.dr7,
        pat: v.pat,
        fcw: v.fpu.map_or(0x37F, |f| f.fcw),
        mxcsr: v.fpu.map_or(0x1F80, |f| f.mxcsr),
    }
}

/// A vCPU fd of the model.
#[derive(Debug)]
struct ModelVcpu {
    shared: Arc<Shared>,
    vm: Arc<Mutex<VmState>>,
    v: Arc<Mutex<VcpuState>>,
    name: String,
}

impl ModelVcpu {
    fn log(&self, ioctl: &'static str, args: Vec<(&'static str, Arg)>, error: Option<CocoError>) {
        self.shared.call(CallRecord {
            fd: self.name.clone(),
            ioctl,
            args,
            error,
        });
    }

    /// Runs `f` on the register state unless it is sealed (`guest_state_protected`: the
    /// register ioctls fail with EINVAL, §1.4), and logs the call.
    fn regs<T>(
        &self,
        ioctl: &'static str,
        args: Vec<(&'static str, Arg)>,
        f: impl FnOnce(&mut VcpuState) -> T,
    ) -> Result<T, Errno> {
        let mut v = lock(&self.v);
        let res = if v.protected {
            Err(Errno::new(libc::EINVAL))
        } else {
            Ok(f(&mut v))
        };
        drop(v);
        self.log(ioctl, args, res.as_ref().err().map(|&e| e.into()));
        res
    }

    fn init_mem_region(&self, r: &mut crate::sys::coco::TdxMemRegion<'_>) -> Result<(), CocoError> {
        let mut st = lock(&self.vm);
        if st.platform() != Platform::Tdx {
            return Err(err(libc::ENOTTY));
        }
        // §3.1: vCPU initialised, TD not finalized.
        if !lock(&self.v).tdx_init || st.launch != Launch::Started {
            return Err(err(libc::EINVAL));
        }
        let src_addr = r.source.mapping.host_addr().wrapping_add(r.source.offset);
        // §3.1: page-aligned source and gpa, nr_pages > 0, no wrap, private GPA (below the
        // shared bit: GPAW 48 here, bit 47).
        let end = r
            .nr_pages
            .checked_mul(PAGE)
            .and_then(|l| r.gpa.checked_add(l));
        let shared_bit = 1u64 << 47;
        let ok = src_addr.is_multiple_of(PAGE)
            && r.gpa.is_multiple_of(PAGE)
            && r.nr_pages > 0
            && end.is_some_and(|e| e <= shared_bit);
        if !ok {
            return Err(err(libc::EINVAL));
        }
        let budget = partial_budget(&self.shared, r.nr_pages)?;
        let mut done = 0;
        while done < budget {
            let gfn = r.gpa / PAGE;
            let slot = st.slot_of(gfn);
            if !slot.is_some_and(|s| s.gmem) || !st.is_private(gfn) {
                return Err(err(libc::EINVAL));
            }
            if st.assigned.contains(&gfn) {
                return Err(err(libc::EEXIST));
            }
            let bytes = read(&r.source, 0, PAGE as usize)?;
            if let Some(sink) = &st.sink {
                // TDH.MEM.PAGE.ADD copies the source page into the private page.
                sink.write(r.gpa, &bytes).map_err(CocoError::from)?;
            }
            if let Acc::Tdx(d) = &mut st.acc {
                if r.measure {
                    d.add_measured_page(r.gpa, &bytes);
                } else {
                    d.page_add(r.gpa);
                }
            }
            self.shared.measured(Measured::Tdx {
                gpa: r.gpa,
                extended: r.measure,
            });
            st.assigned.insert(gfn);
            // The struct is copied back with progress after every page (§3.1).
            r.gpa += PAGE;
            r.source.offset += PAGE;
            r.nr_pages -= 1;
            done += 1;
        }
        Ok(())
    }
}

impl VcpuIoctls for ModelVcpu {
    fn set_cpuid2(&self, cpuid: &CpuId) -> Result<(), Errno> {
        self.log(
            "KVM_SET_CPUID2",
            vec![("nent", Arg::Num(cpuid.as_slice().len() as u64))],
            None,
        );
        Ok(())
    }
    fn get_regs(&self) -> Result<kvm_regs, Errno> {
        self.regs("KVM_GET_REGS", Vec::new(), |v| v.regs)
    }
    fn set_regs(&self, r: &kvm_regs) -> Result<(), Errno> {
        let args = vec![
            ("rip", Arg::Num(r.rip)),
            ("rsp", Arg::Num(r.rsp)),
            ("rflags", Arg::Num(r.rflags)),
        ];
        // KVM keeps RFLAGS bit 1 set (`__set_regs` → `kvm_set_rflags` | X86_EFLAGS_FIXED).
        self.regs("KVM_SET_REGS", args, |v| {
            v.regs = *r;
            v.regs.rflags |= 2;
        })
    }
    fn get_sregs(&self) -> Result<kvm_sregs, Errno> {
        self.regs("KVM_GET_SREGS", Vec::new(), |v| v.sregs)
    }
    fn set_sregs(&self, s: &kvm_sregs) -> Result<(), Errno> {
        let args = vec![
            ("cr0", Arg::Num(s.cr0)),
            ("cr3", Arg::Num(s.cr3)),
            ("cr4", Arg::Num(s.cr4)),
            ("efer", Arg::Num(s.efer)),
            ("cs_selector", Arg::Num(s.cs.selector.into())),
            ("cs_base", Arg::Num(s.cs.base)),
        ];
        self.regs("KVM_SET_SREGS", args, |v| v.sregs = *s)
    }
    fn set_xcrs(&self, x: &kvm_xcrs) -> Result<(), Errno> {
        let xcr0 = x
            .xcrs
            .iter()
            .take(x.nr_xcrs as usize)
            .find(|e| e.xcr == 0)
            .map(|e| e.value);
        self.regs(
            "KVM_SET_XCRS",
            vec![
                ("nr_xcrs", Arg::Num(x.nr_xcrs.into())),
                ("xcr0", Arg::Num(xcr0.unwrap_or(0))),
            ],
            |v| {
                if let Some(x0) = xcr0 {
                    v.xcr0 = x0;
                }
            },
        )
    }
    fn set_msrs(&self, msrs: &Msrs) -> Result<usize, Errno> {
        let list: Vec<String> = msrs
            .as_slice()
            .iter()
            .map(|e| format!("{:#x}:{:#x}", e.index, e.data))
            .collect();
        self.regs(
            "KVM_SET_MSRS",
            vec![("entries", Arg::Text(list.join(",")))],
            |v| {
                for e in msrs.as_slice() {
                    if e.index == MSR_IA32_PAT {
                        v.pat = e.data;
                    }
                }
                msrs.as_slice().len()
            },
        )
    }
    fn set_debugregs(&self, d: &kvm_debugregs) -> Result<(), Errno> {
        self.regs(
            "KVM_SET_DEBUGREGS",
            vec![("dr6", Arg::Num(d.dr6)), ("dr7", Arg::Num(d.dr7))],
            |v| {
                v.dr6 = d.dr6;
                v.dr7 = d.dr7;
            },
        )
    }
    fn set_fpu(&self, f: &kvm_fpu) -> Result<(), Errno> {
        self.regs(
            "KVM_SET_FPU",
            vec![
                ("fcw", Arg::Num(f.fcw.into())),
                ("mxcsr", Arg::Num(f.mxcsr.into())),
            ],
            |v| v.fpu = Some(*f),
        )
    }
    fn set_mp_state(&self, s: kvm_mp_state) -> Result<(), Errno> {
        self.log(
            "KVM_SET_MP_STATE",
            vec![("mp_state", Arg::Num(s.mp_state.into()))],
            None,
        );
        Ok(())
    }
    fn run(&mut self) -> Result<VcpuExit<'_>, Errno> {
        // The model runs no guest.
        self.log("KVM_RUN", Vec::new(), Some(err(libc::ENOSYS)));
        Err(Errno::new(libc::ENOSYS))
    }
    fn kvm_run(&mut self) -> Option<&mut kvm_run> {
        None
    }
    fn tdx_vcpu_cmd(&self, cmd: &mut TdxVcpuCmd<'_>) -> Result<(), CocoError> {
        let name = cmd.name();
        let args = match cmd {
            TdxVcpuCmd::InitVcpu { rcx } => vec![("data", Arg::Num(*rcx))],
            TdxVcpuCmd::InitMemRegion(r) => vec![
                ("source_offset", Arg::Num(r.source.offset)),
                ("gpa", Arg::Num(r.gpa)),
                ("nr_pages", Arg::Num(r.nr_pages)),
                ("flags", Arg::Num(r.measure.into())),
            ],
            TdxVcpuCmd::GetCpuid(c) => vec![("nent", Arg::Num(c.nent.into()))],
        };
        self.log(name, args, None);
        let res = match cmd {
            TdxVcpuCmd::InitVcpu { rcx } => {
                let st = lock(&self.vm);
                let mut v = lock(&self.v);
                if st.platform() != Platform::Tdx {
                    Err(err(libc::ENOTTY))
                } else if st.launch != Launch::Started || v.tdx_init {
                    Err(err(libc::EINVAL))
                } else {
                    v.tdx_init = true;
                    v.regs.rcx = *rcx;
                    Ok(())
                }
            }
            TdxVcpuCmd::InitMemRegion(r) => self.init_mem_region(r),
            TdxVcpuCmd::GetCpuid(c) => {
                let st = lock(&self.vm);
                if st.platform() != Platform::Tdx {
                    Err(err(libc::ENOTTY))
                } else if st.launch != Launch::Started {
                    // `tdx_vcpu_ioctl`: the TD initialised (HKID assigned) and not finalized.
                    Err(err(libc::EINVAL))
                } else {
                    let td = td_cpuid_of(&self.shared, &st.td_cpuid);
                    let need = td.len() as u32;
                    if c.nent < need {
                        // `tdx_vcpu_get_cpuid`: E2BIG with the count it needs, no entries.
                        c.nent = need;
                        Err(err(libc::E2BIG))
                    } else {
                        c.nent = need;
                        c.entries = td;
                        Ok(())
                    }
                }
            }
        };
        if let Err(e) = res {
            set_last_error(&self.shared, &self.name, e);
        }
        res
    }
}
