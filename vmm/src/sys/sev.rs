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
    match vm.encrypt_op_sev(&mut cmd) {
        Ok(()) => Ok(()),
        Err(errno) => Err(CocoError {
            errno,
            // `kvm_sev_cmd.error`: the firmware's `SEV_RET_*` (0 when the firmware was not
            // reached, `Documentation/virt/kvm/x86/amd-memory-encryption.rst`).
            fw_error: (cmd.error != 0).then_some(FwStatus::Sev(cmd.error)),
        }),
    }
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
            let mut cmd = kvm_sev_cmd {
                id: KVM_SEV_LAUNCH_UPDATE_VMSA,
                sev_fd: sev_fd as u32,
                ..Default::default()
            };
            vm.encrypt_op_sev(&mut cmd).map_err(|errno| CocoError {
                errno,
                fw_error: (cmd.error != 0).then_some(FwStatus::Sev(cmd.error)),
            })
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
        SevCmd::LaunchFinish => {
            let mut cmd = kvm_sev_cmd {
                id: KVM_SEV_LAUNCH_FINISH,
                sev_fd: sev_fd as u32,
                ..Default::default()
            };
            vm.encrypt_op_sev(&mut cmd).map_err(|errno| CocoError {
                errno,
                fw_error: (cmd.error != 0).then_some(FwStatus::Sev(cmd.error)),
            })
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
}
