//! KVM VM and vCPU handles that keep guest memory mapped for as long as any guest can use it,
//! plus the ioctls and constants kvm-ioctls 0.25 lacks.
//!
//! The invariant the memslot ioctl needs (the `userspace_addr` range stays mapped for the life
//! of the slot) is enforced by ownership: a [`Vm`] and every [`Vcpu`] created from it hold an
//! `Arc` of each [`GuestMapping`] registered as a memslot, and their KVM fd field is dropped
//! before that `Arc`. A guest only runs through a vCPU fd, so once the VM fd and every vCPU fd
//! are closed the mapping can be unmapped safely (a guest_memfd may keep the kernel VM object
//! alive a little longer, but nothing can execute in it).

use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex, PoisonError};

use kvm_bindings::{kvm_create_guest_memfd, kvm_run, kvm_userspace_memory_region2};
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};

use super::mem::GuestMapping;
use super::Errno;

/// `KVM_CAP_GUEST_MEMFD_FLAGS` (Linux 6.18 `include/uapi/linux/kvm.h`): returns the supported
/// `kvm_create_guest_memfd.flags` (not in kvm-bindings 0.14).
pub const KVM_CAP_GUEST_MEMFD_FLAGS: u64 = 244;
/// `GUEST_MEMFD_FLAG_MMAP` (`include/uapi/linux/kvm.h`, 6.18): the guest_memfd can be mmap'ed.
pub const GUEST_MEMFD_FLAG_MMAP: u64 = 1 << 0;
/// `GUEST_MEMFD_FLAG_INIT_SHARED` (`include/uapi/linux/kvm.h`, 6.18): pages start shared
/// (host-accessible).
pub const GUEST_MEMFD_FLAG_INIT_SHARED: u64 = 1 << 1;
/// `KVM_MEM_GUEST_MEMFD` (`include/uapi/linux/kvm.h`).
pub const KVM_MEM_GUEST_MEMFD: u32 = kvm_bindings::KVM_MEM_GUEST_MEMFD;

// Layout of the structs passed by pointer below (`include/uapi/linux/kvm.h`;
// `../shared/spec/kvm-coco-abi.md` §2).
const _: () = {
    use std::mem::{offset_of, size_of};
    assert!(size_of::<kvm_userspace_memory_region2>() == 160);
    assert!(offset_of!(kvm_userspace_memory_region2, slot) == 0);
    assert!(offset_of!(kvm_userspace_memory_region2, flags) == 4);
    assert!(offset_of!(kvm_userspace_memory_region2, guest_phys_addr) == 8);
    assert!(offset_of!(kvm_userspace_memory_region2, memory_size) == 16);
    assert!(offset_of!(kvm_userspace_memory_region2, userspace_addr) == 24);
    assert!(offset_of!(kvm_userspace_memory_region2, guest_memfd_offset) == 32);
    assert!(offset_of!(kvm_userspace_memory_region2, guest_memfd) == 40);
    assert!(size_of::<kvm_create_guest_memfd>() == 64);
    assert!(offset_of!(kvm_create_guest_memfd, size) == 0);
    assert!(offset_of!(kvm_create_guest_memfd, flags) == 8);
    // `immediate_exit` is byte 1 of `struct kvm_run` (`include/uapi/linux/kvm.h`).
    assert!(offset_of!(kvm_run, immediate_exit) == 1);
};

type KeepAlive = Arc<Mutex<Vec<Arc<GuestMapping>>>>;

/// A KVM VM fd that owns (an `Arc` of) every mapping registered as one of its memslots.
#[derive(Debug)]
pub struct Vm {
    // Field order is drop order: the VM fd closes before the mappings can go.
    fd: VmFd,
    keep: KeepAlive,
    next_slot: u32,
}

impl Vm {
    /// Wraps a freshly created VM fd (no memslots yet).
    pub fn new(fd: VmFd) -> Vm {
        Vm {
            fd,
            keep: Arc::new(Mutex::new(Vec::new())),
            next_slot: 0,
        }
    }

    /// The VM fd, for the safe kvm-ioctls calls (irqchip, capabilities, vCPU creation is
    /// [`Vm::create_vcpu`]).
    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// Creates a guest_memfd of `size` bytes with `flags` (`KVM_CREATE_GUEST_MEMFD`).
    ///
    /// # Errors
    /// The ioctl's errno.
    pub fn create_guest_memfd(&self, size: u64, flags: u64) -> Result<OwnedFd, Errno> {
        let raw = self.fd.create_guest_memfd(kvm_create_guest_memfd {
            size,
            flags,
            ..Default::default()
        })?;
        // SAFETY: from_raw_fd needs an open fd that nothing else owns: KVM_CREATE_GUEST_MEMFD
        // just returned it (checked for error by kvm-ioctls) and kvm-ioctls documents that the
        // caller owns and must close it.
        Ok(unsafe { OwnedFd::from_raw_fd(raw) })
    }

    /// Creates a guest_memfd of `len` bytes with `flags` (which must include
    /// [`GUEST_MEMFD_FLAG_MMAP`]) and maps all of it: [`Vm::create_guest_memfd`] +
    /// [`GuestMapping::from_guest_memfd`] without the latter's `fstat`, since the size is the
    /// one just created.
    ///
    /// # Errors
    /// `EINVAL` for `len == 0`; the ioctl's or `mmap`'s errno (`ENODEV` without
    /// `GUEST_MEMFD_FLAG_MMAP`).
    pub fn map_new_guest_memfd(&self, len: usize, flags: u64) -> Result<GuestMapping, Errno> {
        if len == 0 {
            return Err(Errno::new(libc::EINVAL));
        }
        let size = u64::try_from(len).map_err(|_| Errno::new(libc::EINVAL))?;
        let fd = self.create_guest_memfd(size, flags)?;
        GuestMapping::from_new_guest_memfd(fd, len)
    }

    /// Registers `mapping` as a new memslot at `gpa` (`KVM_SET_USER_MEMORY_REGION2`); when the
    /// mapping is a guest_memfd's, the slot is a `KVM_MEM_GUEST_MEMFD` slot on that fd at
    /// offset 0 with the mapping itself as `userspace_addr`. Returns the slot number.
    ///
    /// # Errors
    /// The ioctl's errno (e.g. `EEXIST` for overlapping slots, `EINVAL` for misalignment).
    pub fn add_memslot(&mut self, gpa: u64, mapping: Arc<GuestMapping>) -> Result<u32, Errno> {
        let slot = self.next_slot;
        let (flags, guest_memfd) = match mapping.guest_memfd() {
            Some(fd) => (
                KVM_MEM_GUEST_MEMFD,
                u32::try_from(std::os::fd::AsRawFd::as_raw_fd(fd))
                    .map_err(|_| Errno::new(libc::EBADF))?,
            ),
            None => (0, 0),
        };
        let region = kvm_userspace_memory_region2 {
            slot,
            flags,
            guest_phys_addr: gpa,
            memory_size: mapping.len() as u64,
            userspace_addr: mapping.host_addr(),
            guest_memfd_offset: 0,
            guest_memfd,
            ..Default::default()
        };
        // Keep the mapping alive before KVM can see it.
        self.keep
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(mapping);
        // SAFETY: set_user_memory_region2 requires that `userspace_addr..+memory_size` stays a
        // valid mapping for as long as the memslot exists, and that `guest_memfd` (if flagged)
        // is a guest_memfd of this VM covering `[offset, offset + size)`. The mapping is a live
        // mmap of exactly `memory_size` bytes whose `Arc` was just pushed into `keep`, which
        // this VM and all its vCPUs hold and drop only after their fds (see module doc); the
        // guest_memfd is the one the mapping maps, created by `create_guest_memfd` on this VM
        // with the mapping's length.
        unsafe { self.fd.set_user_memory_region2(region) }?;
        self.next_slot = slot.checked_add(1).ok_or(Errno::new(libc::ENOSPC))?;
        Ok(slot)
    }

    /// Creates vCPU `id`; the vCPU keeps every memslot mapping of this VM alive.
    ///
    /// # Errors
    /// The ioctl's errno.
    pub fn create_vcpu(&self, id: u64) -> Result<Vcpu, Errno> {
        Ok(Vcpu {
            fd: self.fd.create_vcpu(id)?,
            keep: Arc::clone(&self.keep),
        })
    }
}

/// A vCPU fd (with its `kvm_run` mapping) that keeps its VM's memslot mappings alive.
#[derive(Debug)]
pub struct Vcpu {
    // Field order is drop order: the vCPU fd and kvm_run mapping go first.
    fd: VcpuFd,
    keep: KeepAlive,
}

impl Vcpu {
    /// The vCPU fd, for the register/CPUID/MSR ioctls.
    pub fn fd(&self) -> &VcpuFd {
        &self.fd
    }

    /// `KVM_RUN` (see `kvm_ioctls::VcpuFd::run`).
    ///
    /// # Errors
    /// The ioctl's errno (`EINTR` when kicked, `EAGAIN` for a waiting AP on INIT).
    pub fn run(&mut self) -> Result<VcpuExit<'_>, Errno> {
        self.fd.run()
    }

    /// Sets `kvm_run.immediate_exit`.
    pub fn set_immediate_exit(&mut self, val: u8) {
        self.fd.set_kvm_immediate_exit(val);
    }

    /// The `kvm_run` mapping (for the kick signal handler, see `sys::signal`).
    pub(super) fn kvm_run_ptr(&mut self) -> *mut kvm_run {
        self.fd.get_kvm_run()
    }

    /// `kvm_run.internal` after a `KVM_EXIT_INTERNAL_ERROR`: the suberror and up to 16 data
    /// words (`include/uapi/linux/kvm.h`, `struct kvm_run` union member `internal`).
    pub fn internal_error(&mut self) -> (u32, Vec<u64>) {
        let run = self.fd.get_kvm_run();
        if run.exit_reason != kvm_bindings::KVM_EXIT_INTERNAL_ERROR {
            return (0, Vec::new());
        }
        // SAFETY: reading a union field needs the field to be the active one: the kernel
        // writes `internal` for exit_reason KVM_EXIT_INTERNAL_ERROR, checked just above; every
        // bit pattern is a valid value of its plain integer fields.
        let internal = unsafe { run.__bindgen_anon_1.internal };
        let n = (internal.ndata as usize).min(internal.data.len());
        (
            internal.suberror,
            internal.data.get(..n).unwrap_or(&[]).to_vec(),
        )
    }

    /// How many mappings this vCPU keeps alive (for tests).
    pub fn kept_mappings(&self) -> usize {
        self.keep
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}
