//! The real door's SEV-family commands: each [`SevCmd`] turned into its kernel struct
//! (`arch/x86/include/uapi/asm/kvm.h`), wrapped in `struct kvm_sev_cmd` and issued with
//! `KVM_MEMORY_ENCRYPT_OP` on the VM fd; what the kernel writes back (handle, partial
//! progress, measurement blob) is copied into the command.
//!
//! Guest memory reaches this module only as a [`Source`] (a mapping and an offset); the one
//! place it becomes an address is [`uaddr`], which checks the range against the mapping first.

use kvm_bindings::{
    kvm_sev_cmd, kvm_sev_init, kvm_sev_launch_measure, kvm_sev_launch_secret, kvm_sev_launch_start,
    kvm_sev_launch_update_data, kvm_sev_snp_launch_finish, kvm_sev_snp_launch_start,
    kvm_sev_snp_launch_update,
};
use kvm_ioctls::VmFd;

use super::coco::{CocoError, FwStatus, SevCmd, Source};

// Layouts, `arch/x86/include/uapi/asm/kvm.h` (offsets: `../shared/spec/kvm-coco-abi.md` §1.2,
// §1.3). kvm-bindings generates these structs; the assertions pin the ABI we rely on.
const _: () = {
    use std::mem::{offset_of, size_of};
    // `struct kvm_sev_cmd { __u32 id; __u32 pad0; __u64 data; __u32 error; __u32 sev_fd; }`.
    assert!(size_of::<kvm_sev_cmd>() == 24);
    assert!(offset_of!(kvm_sev_cmd, id) == 0);
    assert!(offset_of!(kvm_sev_cmd, data) == 8);
    assert!(offset_of!(kvm_sev_cmd, error) == 16);
    assert!(offset_of!(kvm_sev_cmd, sev_fd) == 20);
    // `struct kvm_sev_init` (48).
    assert!(size_of::<kvm_sev_init>() == 48);
    assert!(offset_of!(kvm_sev_init, vmsa_features) == 0);
    assert!(offset_of!(kvm_sev_init, flags) == 8);
    assert!(offset_of!(kvm_sev_init, ghcb_version) == 12);
    assert!(offset_of!(kvm_sev_init, pad2) == 16);
    // `struct kvm_sev_launch_start` (40).
    assert!(size_of::<kvm_sev_launch_start>() == 40);
    assert!(offset_of!(kvm_sev_launch_start, handle) == 0);
    assert!(offset_of!(kvm_sev_launch_start, policy) == 4);
    assert!(offset_of!(kvm_sev_launch_start, dh_uaddr) == 8);
    assert!(offset_of!(kvm_sev_launch_start, dh_len) == 16);
    assert!(offset_of!(kvm_sev_launch_start, session_uaddr) == 24);
    assert!(offset_of!(kvm_sev_launch_start, session_len) == 32);
    // `struct kvm_sev_launch_update_data` (16).
    assert!(size_of::<kvm_sev_launch_update_data>() == 16);
    assert!(offset_of!(kvm_sev_launch_update_data, uaddr) == 0);
    assert!(offset_of!(kvm_sev_launch_update_data, len) == 8);
    // `struct kvm_sev_launch_measure` (16).
    assert!(size_of::<kvm_sev_launch_measure>() == 16);
    assert!(offset_of!(kvm_sev_launch_measure, uaddr) == 0);
    assert!(offset_of!(kvm_sev_launch_measure, len) == 8);
    // `struct kvm_sev_launch_secret` (48).
    assert!(size_of::<kvm_sev_launch_secret>() == 48);
    assert!(offset_of!(kvm_sev_launch_secret, hdr_uaddr) == 0);
    assert!(offset_of!(kvm_sev_launch_secret, hdr_len) == 8);
    assert!(offset_of!(kvm_sev_launch_secret, guest_uaddr) == 16);
    assert!(offset_of!(kvm_sev_launch_secret, guest_len) == 24);
    assert!(offset_of!(kvm_sev_launch_secret, trans_uaddr) == 32);
    assert!(offset_of!(kvm_sev_launch_secret, trans_len) == 40);
    // `struct kvm_sev_snp_launch_start` (64).
    assert!(size_of::<kvm_sev_snp_launch_start>() == 64);
    assert!(offset_of!(kvm_sev_snp_launch_start, policy) == 0);
    assert!(offset_of!(kvm_sev_snp_launch_start, gosvw) == 8);
    assert!(offset_of!(kvm_sev_snp_launch_start, flags) == 24);
    assert!(offset_of!(kvm_sev_snp_launch_start, pad1) == 32);
    // `struct kvm_sev_snp_launch_update` (64).
    assert!(size_of::<kvm_sev_snp_launch_update>() == 64);
    assert!(offset_of!(kvm_sev_snp_launch_update, gfn_start) == 0);
    assert!(offset_of!(kvm_sev_snp_launch_update, uaddr) == 8);
    assert!(offset_of!(kvm_sev_snp_launch_update, len) == 16);
    assert!(offset_of!(kvm_sev_snp_launch_update, type_) == 24);
    assert!(offset_of!(kvm_sev_snp_launch_update, flags) == 26);
    assert!(offset_of!(kvm_sev_snp_launch_update, pad2) == 32);
    // `struct kvm_sev_snp_launch_finish` (88).
    assert!(size_of::<kvm_sev_snp_launch_finish>() == 88);
    assert!(offset_of!(kvm_sev_snp_launch_finish, id_block_uaddr) == 0);
    assert!(offset_of!(kvm_sev_snp_launch_finish, id_auth_uaddr) == 8);
    assert!(offset_of!(kvm_sev_snp_launch_finish, id_block_en) == 16);
    assert!(offset_of!(kvm_sev_snp_launch_finish, auth_key_en) == 17);
    assert!(offset_of!(kvm_sev_snp_launch_finish, vcek_disabled) == 18);
    assert!(offset_of!(kvm_sev_snp_launch_finish, host_data) == 19);
    assert!(offset_of!(kvm_sev_snp_launch_finish, flags) == 54);
    assert!(offset_of!(kvm_sev_snp_launch_finish, pad1) == 56);
};

/// `enum sev_cmd_id` (`arch/x86/include/uapi/asm/kvm.h`).
pub const KVM_SEV_LAUNCH_START: u32 = 2;
/// `KVM_SEV_LAUNCH_UPDATE_DATA`.
pub const KVM_SEV_LAUNCH_UPDATE_DATA: u32 = 3;
/// `KVM_SEV_LAUNCH_UPDATE_VMSA`.
pub const KVM_SEV_LAUNCH_UPDATE_VMSA: u32 = 4;
/// `KVM_SEV_LAUNCH_SECRET`.
pub const KVM_SEV_LAUNCH_SECRET: u32 = 5;
/// `KVM_SEV_LAUNCH_MEASURE`.
pub const KVM_SEV_LAUNCH_MEASURE: u32 = 6;
/// `KVM_SEV_LAUNCH_FINISH`.
pub const KVM_SEV_LAUNCH_FINISH: u32 = 7;
/// `KVM_SEV_INIT2`.
pub const KVM_SEV_INIT2: u32 = 22;
/// `KVM_SEV_SNP_LAUNCH_START`.
pub const KVM_SEV_SNP_LAUNCH_START: u32 = 100;
/// `KVM_SEV_SNP_LAUNCH_UPDATE`.
pub const KVM_SEV_SNP_LAUNCH_UPDATE: u32 = 101;
/// `KVM_SEV_SNP_LAUNCH_FINISH`.
pub const KVM_SEV_SNP_LAUNCH_FINISH: u32 = 102;
/// `KVM_SEV_SNP_ENABLE_REQ_CERTS`: the enum entry after `KVM_SEV_SNP_LAUNCH_FINISH` (Linux 7.0,
/// kvm-x86 commit 20c3c4108d58 "KVM: SEV: Add KVM_SEV_SNP_ENABLE_REQ_CERTS command"; not in
/// kvm-bindings 0.14). No data; `snp_enable_certs` in `arch/x86/kvm/svm/sev.c` answers
/// `EINVAL` once a vCPU exists or on a VM that is not SNP.
pub const KVM_SEV_SNP_ENABLE_REQ_CERTS: u32 = KVM_SEV_SNP_LAUNCH_FINISH + 1;

// The ids must agree with kvm-bindings' generated enum (same header).
const _: () = {
    assert!(KVM_SEV_LAUNCH_START == kvm_bindings::sev_cmd_id_KVM_SEV_LAUNCH_START);
    assert!(KVM_SEV_LAUNCH_UPDATE_DATA == kvm_bindings::sev_cmd_id_KVM_SEV_LAUNCH_UPDATE_DATA);
    assert!(KVM_SEV_LAUNCH_UPDATE_VMSA == kvm_bindings::sev_cmd_id_KVM_SEV_LAUNCH_UPDATE_VMSA);
    assert!(KVM_SEV_LAUNCH_SECRET == kvm_bindings::sev_cmd_id_KVM_SEV_LAUNCH_SECRET);
    assert!(KVM_SEV_LAUNCH_MEASURE == kvm_bindings::sev_cmd_id_KVM_SEV_LAUNCH_MEASURE);
    assert!(KVM_SEV_LAUNCH_FINISH == kvm_bindings::sev_cmd_id_KVM_SEV_LAUNCH_FINISH);
    assert!(KVM_SEV_INIT2 == kvm_bindings::sev_cmd_id_KVM_SEV_INIT2);
    assert!(KVM_SEV_SNP_LAUNCH_START == kvm_bindings::sev_cmd_id_KVM_SEV_SNP_LAUNCH_START);
    assert!(KVM_SEV_SNP_LAUNCH_UPDATE == kvm_bindings::sev_cmd_id_KVM_SEV_SNP_LAUNCH_UPDATE);
    assert!(KVM_SEV_SNP_LAUNCH_FINISH == kvm_bindings::sev_cmd_id_KVM_SEV_SNP_LAUNCH_FINISH);
};

/// The host address of `len` bytes of `source`, or `EFAULT` when the range does not lie in
/// the mapping (the kernel would fault on it, or worse, read another mapping).
pub fn uaddr(source: &Source<'_>, len: u64) -> Result<u64, CocoError> {
    let map_len = source.mapping.len() as u64;
    match source.offset.checked_add(len) {
        Some(end) if end <= map_len => Ok(source.mapping.host_addr() + source.offset),
        _ => Err(CocoError::errno(libc::EFAULT)),
    }
}

/// The address of a host buffer for a command's `*_uaddr` field.
fn buf_addr(buf: &[u8]) -> u64 {
    buf.as_ptr() as u64
}

/// A length that must fit the uapi's `__u32`.
fn len32(len: usize) -> Result<u32, CocoError> {
    u32::try_from(len).map_err(|_| CocoError::errno(libc::EINVAL))
}

/// Issues `KVM_MEMORY_ENCRYPT_OP` with `id` and a pointer to `data`.
fn issue<T>(vm: &VmFd, id: u32, data: &mut T, sev_fd: i32) -> Result<(), CocoError> {
    let mut cmd = kvm_sev_cmd {
        id,
        data: std::ptr::from_mut(data) as u64,
        // `__u32 sev_fd`: the fd's bits as the kernel reads them (`fdget(argp->sev_fd)`).
        sev_fd: sev_fd as u32,
        ..Default::default()
    };
    // kvm-ioctls' `encrypt_op_sev` is a safe wrapper over the ioctl with `&mut cmd`; what the
    // kernel dereferences beyond it is `cmd.data` (points at `data`, a live exclusive borrow for
    // the whole call) and the `*_uaddr` fields the caller filled from `uaddr`/`buf_addr` (live
    // borrows of the command, checked against their mapping).
    encrypt_op(vm, &mut cmd)
}

/// Issues command `id`, which has no data (`data` 0).
fn issue_bare(vm: &VmFd, id: u32, sev_fd: i32) -> Result<(), CocoError> {
    let mut cmd = kvm_sev_cmd {
        id,
        sev_fd: sev_fd as u32,
        ..Default::default()
    };
    encrypt_op(vm, &mut cmd)
}

/// `KVM_MEMORY_ENCRYPT_OP` with `cmd`, its failure decoded.
fn encrypt_op(vm: &VmFd, cmd: &mut kvm_sev_cmd) -> Result<(), CocoError> {
    vm.encrypt_op_sev(cmd).map_err(|errno| CocoError {
        errno,
        // `kvm_sev_cmd.error`: the firmware's `SEV_RET_*` (0 when the firmware was not
        // reached, `Documentation/virt/kvm/x86/amd-memory-encryption.rst`).
        fw_error: (cmd.error != 0).then_some(FwStatus::Sev(cmd.error)),
    })
}

/// Turns `cmd` into its kernel struct, issues it on `vm` with `sev_fd`, and copies the
/// kernel's answer back into `cmd`.
///
/// # Errors
/// [`CocoError`]: `EFAULT` for a source outside its mapping, `EINVAL` for a length the uapi
/// cannot carry, else the ioctl's errno and the firmware status.
pub fn sev_cmd(vm: &VmFd, cmd: &mut SevCmd<'_>, sev_fd: i32) -> Result<(), CocoError> {
    match cmd {
        SevCmd::Init2 {
            vmsa_features,
            ghcb_version,
        } => {
            let mut data = kvm_sev_init {
                vmsa_features: *vmsa_features,
                ghcb_version: *ghcb_version,
                ..Default::default()
            };
            issue(vm, KVM_SEV_INIT2, &mut data, sev_fd)
        }
        SevCmd::LaunchStart { policy, handle } => {
            // No DH certificate / session (dh_uaddr = session_uaddr = 0).
            let mut data = kvm_sev_launch_start {
                handle: *handle,
                policy: *policy,
                ..Default::default()
            };
            issue(vm, KVM_SEV_LAUNCH_START, &mut data, sev_fd)?;
            *handle = data.handle;
            Ok(())
        }
        SevCmd::LaunchUpdateData { source, len } => {
            let mut data = kvm_sev_launch_update_data {
                uaddr: uaddr(source, u64::from(*len))?,
                len: *len,
                ..Default::default()
            };
            issue(vm, KVM_SEV_LAUNCH_UPDATE_DATA, &mut data, sev_fd)
        }
        SevCmd::LaunchUpdateVmsa => {
            // No data: the command walks every vCPU (`amd-memory-encryption.rst`).
            issue_bare(vm, KVM_SEV_LAUNCH_UPDATE_VMSA, sev_fd)
        }
        SevCmd::LaunchMeasure { blob } => {
            let mut data = kvm_sev_launch_measure {
                uaddr: buf_addr(blob),
                len: len32(blob.len())?,
                ..Default::default()
            };
            // The kernel writes the blob through `uaddr`, which points into `*blob` (an
            // exclusive borrow held across the call).
            issue(vm, KVM_SEV_LAUNCH_MEASURE, &mut data, sev_fd)
        }
        SevCmd::LaunchSecret {
            header,
            guest,
            guest_len,
            trans,
        } => {
            let mut data = kvm_sev_launch_secret {
                hdr_uaddr: buf_addr(header),
                hdr_len: len32(header.len())?,
                guest_uaddr: uaddr(guest, u64::from(*guest_len))?,
                guest_len: *guest_len,
                trans_uaddr: buf_addr(trans),
                trans_len: len32(trans.len())?,
                ..Default::default()
            };
            issue(vm, KVM_SEV_LAUNCH_SECRET, &mut data, sev_fd)
        }
        SevCmd::LaunchFinish => issue_bare(vm, KVM_SEV_LAUNCH_FINISH, sev_fd),
        SevCmd::SnpEnableReqCerts => {
            // No data (`amd-memory-encryption.rst` 21, KVM_SEV_SNP_ENABLE_REQ_CERTS).
            issue_bare(vm, KVM_SEV_SNP_ENABLE_REQ_CERTS, sev_fd)
        }
        SevCmd::SnpLaunchStart { policy } => {
            let mut data = kvm_sev_snp_launch_start {
                policy: *policy,
                ..Default::default()
            };
            issue(vm, KVM_SEV_SNP_LAUNCH_START, &mut data, sev_fd)
        }
        SevCmd::SnpLaunchUpdate(update) => {
            // ZERO pages carry no source: `uaddr` is ignored by KVM (spec §1.3).
            let (base, addr) = match &update.source {
                Some(s) => (s.mapping.host_addr(), uaddr(s, update.len)?),
                None => (0, 0),
            };
            let mut data = kvm_sev_snp_launch_update {
                gfn_start: update.gfn_start,
                uaddr: addr,
                len: update.len,
                type_: update.page_type,
                ..Default::default()
            };
            let result = issue(vm, KVM_SEV_SNP_LAUNCH_UPDATE, &mut data, sev_fd);
            // The kernel writes its progress back (gfn_start, uaddr, len) whether or not it
            // finished the range (spec §1.3: partial progress; loop until len == 0).
            update.gfn_start = data.gfn_start;
            update.len = data.len;
            if let Some(s) = &mut update.source {
                if let Some(off) = data.uaddr.checked_sub(base) {
                    s.offset = off;
                }
            }
            result
        }
        SevCmd::SnpLaunchFinish {
            id_block,
            id_auth,
            auth_key_en,
            host_data,
        } => {
            // `auth_key_en` is honoured only with `id_block_en` (spec §1.3).
            let (id_block_uaddr, id_auth_uaddr, en) = match (id_block, id_auth) {
                (Some(b), Some(a)) => (buf_addr(&b[..]), buf_addr(&a[..]), 1),
                (None, None) => (0, 0, 0),
                _ => return Err(CocoError::errno(libc::EINVAL)),
            };
            let mut data = kvm_sev_snp_launch_finish {
                id_block_uaddr,
                id_auth_uaddr,
                id_block_en: en,
                auth_key_en: u8::from(*auth_key_en && en == 1),
                host_data: *host_data,
                ..Default::default()
            };
            issue(vm, KVM_SEV_SNP_LAUNCH_FINISH, &mut data, sev_fd)
        }
    }
}

/// `KVM_EXIT_SNP_REQ_CERTS` (`include/uapi/linux/kvm.h`, Linux 7.0: `#define
/// KVM_EXIT_SNP_REQ_CERTS 42`; kvm-x86 commit fa9893fadbc2 "KVM: Introduce
/// KVM_EXIT_SNP_REQ_CERTS for SNP certificate-fetching"). kvm-ioctls reports it as
/// `VcpuExit::Unsupported(42)`.
pub const KVM_EXIT_SNP_REQ_CERTS: u32 = 42;

/// `struct kvm_exit_snp_req_certs { __u64 gpa; __u64 npages; __u64 ret; }`
/// (`include/uapi/linux/kvm.h`, Linux 7.0), the `snp_req_certs` member of `kvm_run`'s exit
/// union (not in kvm-bindings 0.14).
#[repr(C)]
#[derive(Debug, Default)]
struct KvmExitSnpReqCerts {
    gpa: u64,
    npages: u64,
    ret: u64,
}

/// Byte offset of `kvm_run`'s exit union (`include/uapi/linux/kvm.h`).
const KVM_RUN_EXIT_UNION: usize = 32;

const _: () = {
    use std::mem::{align_of, offset_of, size_of};
    assert!(size_of::<KvmExitSnpReqCerts>() == 24);
    assert!(offset_of!(KvmExitSnpReqCerts, gpa) == 0);
    assert!(offset_of!(KvmExitSnpReqCerts, npages) == 8);
    assert!(offset_of!(KvmExitSnpReqCerts, ret) == 16);
    // The member sits at the start of the 256-byte, 8-byte aligned union at byte 32:
    // gpa@32, npages@40, ret@48 of `struct kvm_run`.
    assert!(offset_of!(kvm_bindings::kvm_run, __bindgen_anon_1) == KVM_RUN_EXIT_UNION);
    assert!(size_of::<kvm_bindings::kvm_run__bindgen_ty_1>() == 256);
    assert!(align_of::<kvm_bindings::kvm_run__bindgen_ty_1>() >= align_of::<KvmExitSnpReqCerts>());
};

/// A `KVM_EXIT_SNP_REQ_CERTS` exit (`Documentation/virt/kvm/api.rst`, "KVM_EXIT_SNP_REQ_CERTS";
/// `../shared/spec/kvm-coco-abi.md` §1.6): an SNP guest with certificate fetching enabled
/// sent an Extended Guest Request of type MSG_REPORT_REQ. `gpa` and `npages` are the guest's
/// RAX and RBX, forwarded verbatim (KVM checked only that `gpa` is 4 KiB aligned).
#[derive(Debug)]
pub struct SnpReqCerts<'a> {
    /// Where the guest wants the certificate table (guest-physical).
    pub gpa: u64,
    /// In: the pages the guest gave; out, with `ret = ENOSPC`: the pages the table needs
    /// (KVM copies it to the guest's RBX).
    pub npages: &'a mut u64,
    /// The VMM's answer, read by KVM on the next `KVM_RUN`: 0, `ENOSPC`, `EAGAIN` or `EIO`
    /// (positive errno values); anything else makes that `KVM_RUN` fail with `EINVAL`.
    pub ret: &'a mut u64,
}

/// The `KVM_EXIT_SNP_REQ_CERTS` view of `run`, or `None` for another exit.
pub fn decode_snp_req_certs(run: &mut kvm_bindings::kvm_run) -> Option<SnpReqCerts<'_>> {
    if run.exit_reason != KVM_EXIT_SNP_REQ_CERTS {
        return None;
    }
    let base = std::ptr::addr_of_mut!(run.__bindgen_anon_1).cast::<KvmExitSnpReqCerts>();
    // SAFETY: dereferencing `base` needs it in bounds, aligned, and not aliased for the
    // returned lifetime: it points at the start of `run`'s exit union, which `&mut` borrows
    // exclusively for that lifetime; the union is 256 bytes and at least 8-byte aligned, the
    // struct 24 bytes of u64s (both asserted above); every bit pattern is a valid u64; the
    // kernel wrote `snp_req_certs` for exit_reason KVM_EXIT_SNP_REQ_CERTS, checked above.
    let exit = unsafe { &mut *base };
    Some(SnpReqCerts {
        gpa: exit.gpa,
        npages: &mut exit.npages,
        ret: &mut exit.ret,
    })
}

/// An open file holding an open file description (OFD) lock: dropping it closes the file,
/// which releases the lock (`fcntl(2)`, "Open file description locks": released when the last
/// fd of the description is closed). One description per holder: OFD locks taken through
/// the same description never conflict with each other, and one unlock would drop all.
#[derive(Debug)]
pub struct OfdLock(std::fs::File);

impl OfdLock {
    /// The locked file.
    pub fn file(&mut self) -> &mut std::fs::File {
        &mut self.0
    }
}

/// Takes an OFD lock on the whole of `file`, shared (`F_RDLCK`) or exclusive (`F_WRLCK`),
/// without waiting (`F_OFD_SETLK`): what `Documentation/virt/kvm/x86/
/// amd-memory-encryption.rst` (KVM_SEV_SNP_ENABLE_REQ_CERTS) recommends around the SNP
/// certificate blob, so that tools updating it and the endorsement keys (with an exclusive
/// lock) and VMMs serving it (with a shared one) never see each other's halves.
///
/// # Errors
/// `EAGAIN` or `EACCES` while a conflicting lock is held (`fcntl(2)`), else the errno.
pub fn ofd_lock(file: std::fs::File, exclusive: bool) -> Result<OfdLock, crate::sys::Errno> {
    use std::os::fd::AsRawFd;
    let lock_type = if exclusive {
        libc::F_WRLCK
    } else {
        libc::F_RDLCK
    };
    let fl = libc::flock {
        // F_RDLCK / F_WRLCK fit the `short` field (0 and 1, `<asm-generic/fcntl.h>`).
        l_type: lock_type as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        // Start 0, length 0: the whole file, however it grows.
        l_start: 0,
        l_len: 0,
        // Must be 0 for OFD locks (`fcntl(2)`: EINVAL otherwise).
        l_pid: 0,
    };
    // SAFETY: fcntl(F_OFD_SETLK) needs an open fd and a pointer to a readable `struct flock`
    // that lives across the call: `file` is open (owned here) and `fl` is a local borrowed
    // for the call; the kernel only reads it for F_OFD_SETLK.
    let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &raw const fl) };
    if r < 0 {
        return Err(crate::sys::Errno::last());
    }
    Ok(OfdLock(file))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::mem::GuestMapping;

    #[test]
    fn uaddr_is_bounds_checked_against_the_mapping() {
        let m = GuestMapping::anonymous(2 * 4096).expect("mmap");
        let s = Source {
            mapping: &m,
            offset: 4096,
        };
        assert_eq!(uaddr(&s, 4096), Ok(m.host_addr() + 4096));
        assert_eq!(uaddr(&s, 4097).unwrap_err().errno.errno(), libc::EFAULT);
        let far = Source {
            mapping: &m,
            offset: u64::MAX,
        };
        assert_eq!(uaddr(&far, 1).unwrap_err().errno.errno(), libc::EFAULT);
    }

    /// `enum sev_cmd_id` in Linux 7.0 `arch/x86/include/uapi/asm/kvm.h`:
    /// `KVM_SEV_SNP_LAUNCH_START = 100, ..._UPDATE, ..._FINISH, KVM_SEV_SNP_ENABLE_REQ_CERTS`.
    #[test]
    fn enable_req_certs_is_command_103() {
        assert_eq!(KVM_SEV_SNP_ENABLE_REQ_CERTS, 103);
    }

    /// `struct kvm_run` (`include/uapi/linux/kvm.h`, Linux 7.0): `exit_reason` 42 and, in the
    /// exit union at byte 32, `snp_req_certs { gpa@32, npages@40, ret@48 }`; the VMM's
    /// `npages` and `ret` land back at bytes 40 and 48.
    #[test]
    fn snp_req_certs_fields_are_where_the_uapi_puts_them() {
        let mut run = kvm_bindings::kvm_run {
            exit_reason: 42,
            ..Default::default()
        };
        let at = |run: &mut kvm_bindings::kvm_run, off: usize| {
            std::ptr::from_mut(run)
                .cast::<u8>()
                .wrapping_add(off)
                .cast::<u64>()
        };
        // SAFETY: test-only unaligned writes of 8 bytes inside `*run` (off + 8 ≤ 32 + 256).
        unsafe { at(&mut run, 32).write_unaligned(0x7000) };
        // SAFETY: as above.
        unsafe { at(&mut run, 40).write_unaligned(2) };
        // SAFETY: as above.
        unsafe { at(&mut run, 48).write_unaligned(0) };
        let e = decode_snp_req_certs(&mut run).unwrap();
        assert_eq!((e.gpa, *e.npages, *e.ret), (0x7000, 2, 0));
        *e.npages = 5;
        *e.ret = libc::ENOSPC as u64;
        // SAFETY: test-only unaligned read of 8 bytes inside `*run`.
        let npages = unsafe { at(&mut run, 40).read_unaligned() };
        // SAFETY: as above.
        let ret = unsafe { at(&mut run, 48).read_unaligned() };
        assert_eq!((npages, ret), (5, 28));
        // Another exit (KVM_EXIT_TDX 40): not this view.
        run.exit_reason = 40;
        assert!(decode_snp_req_certs(&mut run).is_none());
    }

    /// OFD locks (`fcntl(2)`): two descriptions of one file may both hold shared locks; an
    /// exclusive lock conflicts with a shared one held through another description (also in
    /// the same process: that is what OFD locks add over POSIX record locks), and closing
    /// the holder releases it.
    #[test]
    fn ofd_locks_conflict_across_descriptions_and_close_releases() {
        let path = std::env::temp_dir().join(format!("relaunch-ofd-{}", std::process::id()));
        std::fs::write(&path, b"blob").unwrap();
        let open = || std::fs::File::open(&path).unwrap();
        let writer = || {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .unwrap()
        };
        let a = ofd_lock(open(), false).unwrap();
        let b = ofd_lock(open(), false).unwrap();
        let busy = ofd_lock(writer(), true).unwrap_err().errno();
        assert!(matches!(busy, libc::EAGAIN | libc::EACCES), "{busy}");
        drop((a, b));
        let mut w = ofd_lock(writer(), true).unwrap();
        let busy = ofd_lock(open(), false).unwrap_err().errno();
        assert!(matches!(busy, libc::EAGAIN | libc::EACCES), "{busy}");
        let mut s = String::new();
        std::io::Read::read_to_string(w.file(), &mut s).unwrap();
        assert_eq!(s, "blob");
        drop(w);
        assert!(ofd_lock(open(), false).is_ok());
        let _ = std::fs::remove_file(&path);
    }
}
