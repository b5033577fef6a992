//! The one door to KVM: typed handles ([`Kvm`], [`Vm`], [`Vcpu`]) whose methods are the only
//! way the rest of the VMM reaches the kernel, each dispatching to an implementation of the
//! door traits ([`KvmIoctls`], [`VmIoctls`], [`VcpuIoctls`]).
//!
//! Today there are two implementations: the real kernel ([`RealKvm`], over kvm-ioctls) and
//! the recording test double in `crate::testing::kernel`. A kernel model or an ioctl
//! recorder for the confidential backends plugs in the same way, below the backends: backend
//! code only ever sees the typed handles, so what it issues is the same whoever answers.
//!
//! The invariant the memslot ioctl needs (the `userspace_addr` range stays mapped for the life
//! of the slot) is enforced by ownership: a [`Vm`] and every [`Vcpu`] created from it hold an
//! `Arc` of each [`GuestMapping`] registered as a memslot, and their door field is dropped
//! before that `Arc`. A guest only runs through a vCPU fd, so once the VM fd and every vCPU fd
//! are closed the mapping can be unmapped safely (a guest_memfd may keep the kernel VM object
//! alive a little longer, but nothing can execute in it).

use std::fmt;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::{Arc, Mutex, PoisonError};

use kvm_bindings::{
    kvm_create_guest_memfd, kvm_debugregs, kvm_device_attr, kvm_fpu, kvm_irq_level,
    kvm_memory_attributes, kvm_mp_state, kvm_regs, kvm_run, kvm_sregs,
    kvm_userspace_memory_region2, kvm_xcrs, CpuId, Msrs,
};
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};

use super::coco::{CocoError, SevCmd, TdxVcpuCmd, TdxVmCmd};
use super::mem::GuestMapping;
use super::Errno;

/// `KVM_CAP_GUEST_MEMFD_FLAGS` (Linux 6.18 `include/uapi/linux/kvm.h`): returns the supported
/// `kvm_create_guest_memfd.flags` (not in kvm-bindings 0.14).
pub const KVM_CAP_GUEST_MEMFD_FLAGS: u32 = 244;
/// `KVM_CAP_NR_MEMSLOTS` (`include/uapi/linux/kvm.h`): memslots per address space.
pub const KVM_CAP_NR_MEMSLOTS: u32 = kvm_bindings::KVM_CAP_NR_MEMSLOTS;
/// `KVM_CAP_MEMORY_ATTRIBUTES` (`include/uapi/linux/kvm.h`): the attributes
/// `KVM_SET_MEMORY_ATTRIBUTES` accepts.
pub const KVM_CAP_MEMORY_ATTRIBUTES: u32 = kvm_bindings::KVM_CAP_MEMORY_ATTRIBUTES;
/// `KVM_CAP_VM_TYPES` (`include/uapi/linux/kvm.h`): bitmask of the VM types `KVM_CREATE_VM`
/// accepts (bit N = type N; `KVM_X86_SEV_VM` = 2, `SEV_ES` = 3, `SNP` = 4, `TDX` = 5).
pub const KVM_CAP_VM_TYPES: u32 = kvm_bindings::KVM_CAP_VM_TYPES;
/// `GUEST_MEMFD_FLAG_MMAP` (`include/uapi/linux/kvm.h`, 6.18): the guest_memfd can be mmap'ed.
pub const GUEST_MEMFD_FLAG_MMAP: u64 = 1 << 0;
/// `GUEST_MEMFD_FLAG_INIT_SHARED` (`include/uapi/linux/kvm.h`, 6.18): pages start shared
/// (host-accessible).
pub const GUEST_MEMFD_FLAG_INIT_SHARED: u64 = 1 << 1;
/// `KVM_MEM_GUEST_MEMFD` (`include/uapi/linux/kvm.h`).
pub const KVM_MEM_GUEST_MEMFD: u32 = kvm_bindings::KVM_MEM_GUEST_MEMFD;
/// `KVM_MEMORY_ATTRIBUTE_PRIVATE` (`include/uapi/linux/kvm.h`).
pub const KVM_MEMORY_ATTRIBUTE_PRIVATE: u64 = kvm_bindings::KVM_MEMORY_ATTRIBUTE_PRIVATE as u64;
/// `KVM_X86_DEFAULT_VM` (`arch/x86/include/uapi/asm/kvm.h`): an ordinary VM.
pub const KVM_X86_DEFAULT_VM: u64 = 0;
/// `KVM_X86_GRP_SEV` (`arch/x86/include/uapi/asm/kvm.h`, "vendor-specific groups and
/// attributes for system fd"): the SEV attributes `KVM_GET_DEVICE_ATTR` reads on `/dev/kvm`
/// (`Documentation/virt/kvm/x86/amd-memory-encryption.rst`, "Device attribute API").
pub const KVM_X86_GRP_SEV: u32 = 1;
/// `KVM_X86_SEV_VMSA_FEATURES` (same header): the `vmsa_features` bits `KVM_SEV_INIT2`
/// accepts. Linux 6.10, with INIT2 (commit ac5c48027bac "KVM: SEV: publish supported VMSA
/// features").
pub const KVM_X86_SEV_VMSA_FEATURES: u64 = 0;
/// `KVM_X86_SNP_POLICY_BITS` (same header): the SNP guest-policy bits
/// `KVM_SEV_SNP_LAUNCH_START` accepts. Linux 6.19 (tag `kvm-x86-svm-6.19`, "KVM: SEV:
/// Publish supported SEV-SNP policy bits"); older kernels answer `ENXIO`.
pub const KVM_X86_SNP_POLICY_BITS: u64 = 1;
/// `KVM_X86_SEV_SNP_REQ_CERTS` (same header, Linux 7.0, kvm-x86 commit 20c3c4108d58): 1 when
/// the kernel has `KVM_SEV_SNP_ENABLE_REQ_CERTS` and `KVM_EXIT_SNP_REQ_CERTS` (and SNP is
/// enabled: `sev_dev_get_attr` answers `sev_snp_enabled ? 1 : 0`); older kernels answer
/// `ENXIO` (`amd-memory-encryption.rst`, "Device attribute API").
pub const KVM_X86_SEV_SNP_REQ_CERTS: u64 = 2;

// The attribute numbers must agree with kvm-bindings' (generated from the same header; it
// has no `KVM_X86_SNP_POLICY_BITS` yet).
const _: () = {
    assert!(KVM_X86_GRP_SEV == kvm_bindings::KVM_X86_GRP_SEV);
    assert!(KVM_X86_SEV_VMSA_FEATURES == kvm_bindings::KVM_X86_SEV_VMSA_FEATURES as u64);
};

// `KVM_GET_DEVICE_ATTR = _IOW(KVMIO, 0xe2, struct kvm_device_attr)` (`include/uapi/linux/
// kvm.h`): on the system fd since Linux 5.17 (`kvm_arch_dev_ioctl`; before, `EINVAL`).
mod nr {
    #![allow(missing_docs)]
    vmm_sys_util::ioctl_iow_nr!(
        KVM_GET_DEVICE_ATTR,
        kvm_bindings::KVMIO,
        0xe2,
        kvm_bindings::kvm_device_attr
    );
}

// Layout of the structs passed by pointer through the door (`include/uapi/linux/kvm.h`;
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
    // `struct kvm_memory_attributes` { address, size, attributes, flags }.
    assert!(size_of::<kvm_memory_attributes>() == 32);
    assert!(offset_of!(kvm_memory_attributes, address) == 0);
    assert!(offset_of!(kvm_memory_attributes, size) == 8);
    assert!(offset_of!(kvm_memory_attributes, attributes) == 16);
    assert!(offset_of!(kvm_memory_attributes, flags) == 24);
    // `immediate_exit` is byte 1 of `struct kvm_run` (`include/uapi/linux/kvm.h`).
    assert!(offset_of!(kvm_run, immediate_exit) == 1);
    // `struct kvm_device_attr { __u32 flags; __u32 group; __u64 attr; __u64 addr; }`
    // (`include/uapi/linux/kvm.h`; `addr` points at the u64 the kernel writes).
    assert!(size_of::<kvm_device_attr>() == 24);
    assert!(offset_of!(kvm_device_attr, flags) == 0);
    assert!(offset_of!(kvm_device_attr, group) == 4);
    assert!(offset_of!(kvm_device_attr, attr) == 8);
    assert!(offset_of!(kvm_device_attr, addr) == 16);
    // `struct kvm_irq_level { union { __u32 irq; __s32 status; }; __u32 level; }`
    // (`include/uapi/linux/kvm.h`), what `KVM_IRQ_LINE` reads (kvm-ioctls'
    // `VmFd::set_irq_line` builds it).
    assert!(size_of::<kvm_irq_level>() == 8);
    assert!(offset_of!(kvm_irq_level, __bindgen_anon_1) == 0);
    assert!(offset_of!(kvm_irq_level, level) == 4);
};

/// The system fd's calls (`/dev/kvm`), as the door sees them.
pub trait KvmIoctls: Send + Sync + fmt::Debug {
    /// `KVM_CHECK_EXTENSION` on the system fd (0 when absent).
    fn check_extension(&self, cap: u32) -> i32;
    /// `KVM_CAP_MAX_VCPUS` (falling back to `KVM_CAP_NR_VCPUS`, then 4, as the API says).
    fn max_vcpus(&self) -> usize;
    /// `KVM_GET_SUPPORTED_CPUID` with room for `max_entries`.
    ///
    /// # Errors
    /// The ioctl's errno.
    fn supported_cpuid(&self, max_entries: usize) -> Result<CpuId, Errno>;
    /// `KVM_CREATE_VM` of `vm_type` (one try: [`Kvm::create_vm`] retries `EINTR`).
    ///
    /// # Errors
    /// The ioctl's errno.
    fn create_vm(&self, vm_type: u64) -> Result<Box<dyn VmIoctls>, Errno>;
    /// Opens the SEV device (`/dev/sev`, whose fd every SEV command carries:
    /// `../shared/spec/kvm-coco-abi.md` §1.2). By default a memfd stands in for it, so that
    /// doors without a kernel (the recorder, a model) can run the SEV backends' code.
    ///
    /// # Errors
    /// The `open` errno.
    fn open_sev(&self) -> Result<OwnedFd, Errno> {
        Ok(OwnedFd::from(super::record::memfd(0)?))
    }
    /// `KVM_GET_DEVICE_ATTR` on the system fd: the u64 attribute `attr` of `group` (e.g.
    /// [`KVM_X86_GRP_SEV`] / [`KVM_X86_SNP_POLICY_BITS`]).
    ///
    /// # Errors
    /// The ioctl's errno: `ENXIO` for a group or attribute this kernel does not have (and by
    /// default: a door that models none), `EINVAL` before Linux 5.17.
    fn device_attr(&self, group: u32, attr: u64) -> Result<u64, Errno> {
        let _ = (group, attr);
        Err(Errno::new(libc::ENXIO))
    }
}

/// A VM fd's calls.
pub trait VmIoctls: Send + Sync + fmt::Debug {
    /// `KVM_CHECK_EXTENSION` on the VM fd.
    fn check_extension(&self, cap: u32) -> i32;
    /// `KVM_SET_USER_MEMORY_REGION2`.
    ///
    /// # Safety
    /// `[userspace_addr, userspace_addr + memory_size)` must stay a valid mapping for as long
    /// as the slot exists, and a `KVM_MEM_GUEST_MEMFD` slot's `guest_memfd` must be a
    /// guest_memfd of this VM covering `[guest_memfd_offset, guest_memfd_offset + size)`.
    ///
    /// # Errors
    /// The ioctl's errno.
    unsafe fn set_user_memory_region2(
        &self,
        region: kvm_userspace_memory_region2,
    ) -> Result<(), Errno>;
    /// `KVM_CREATE_GUEST_MEMFD`; the caller owns the returned fd.
    ///
    /// # Errors
    /// The ioctl's errno.
    fn create_guest_memfd(&self, size: u64, flags: u64) -> Result<OwnedFd, Errno>;
    /// `KVM_SET_MEMORY_ATTRIBUTES`.
    ///
    /// # Errors
    /// The ioctl's errno.
    fn set_memory_attributes(&self, attrs: kvm_memory_attributes) -> Result<(), Errno>;
    /// `KVM_CREATE_IRQCHIP`.
    ///
    /// # Errors
    /// The ioctl's errno.
    fn create_irqchip(&self) -> Result<(), Errno>;
    /// `KVM_IRQ_LINE`: sets input `irq` of the in-kernel irqchip (GSI `irq`: PIC and IOAPIC
    /// pin under KVM's default routing) to `level` (`Documentation/virt/kvm/api.rst`,
    /// 4.25 KVM_IRQ_LINE).
    ///
    /// # Errors
    /// The ioctl's errno (`ENXIO` without an in-kernel irqchip).
    fn irq_line(&self, irq: u32, level: bool) -> Result<(), Errno>;
    /// `KVM_CREATE_VCPU` (and the `kvm_run` mapping).
    ///
    /// # Errors
    /// The ioctl's errno.
    fn create_vcpu(&self, id: u64) -> Result<Box<dyn VcpuIoctls>, Errno>;
    /// `KVM_ENABLE_CAP` on the VM fd.
    ///
    /// # Errors
    /// The ioctl's errno (`ENOTTY` by default: a door that does not model it).
    fn enable_cap(&self, cap: u32, args: [u64; 4]) -> Result<(), Errno> {
        let _ = (cap, args);
        Err(Errno::new(libc::ENOTTY))
    }
    /// `KVM_MEMORY_ENCRYPT_REG_REGION` over `size` bytes at host address `addr` (long-term
    /// pins ordinary RAM of a SEV/SEV-ES guest: `../shared/spec/kvm-coco-abi.md` §1.3).
    ///
    /// # Errors
    /// The ioctl's errno (`ENOTTY` by default).
    fn register_enc_region(&self, addr: u64, size: u64) -> Result<(), Errno> {
        let _ = (addr, size);
        Err(Errno::new(libc::ENOTTY))
    }
    /// `KVM_MEMORY_ENCRYPT_OP` with a SEV-family command; `sev_fd` is the `/dev/sev` handle
    /// the command carries.
    ///
    /// # Errors
    /// [`CocoError`] (`ENOTTY` by default, as the kernel answers on a VM without SEV).
    fn sev_cmd(&self, cmd: &mut SevCmd<'_>, sev_fd: i32) -> Result<(), CocoError> {
        let _ = (cmd, sev_fd);
        Err(CocoError::errno(libc::ENOTTY))
    }
    /// `KVM_MEMORY_ENCRYPT_OP` with a TDX VM-scoped command.
    ///
    /// # Errors
    /// [`CocoError`] (`ENOTTY` by default).
    fn tdx_vm_cmd(&self, cmd: &mut TdxVmCmd<'_>) -> Result<(), CocoError> {
        let _ = cmd;
        Err(CocoError::errno(libc::ENOTTY))
    }
    /// `KVM_X86_SET_MSR_FILTER` denying reads and writes of the `count` MSRs from `base`
    /// (every other MSR allowed), so that with `KVM_CAP_X86_USER_SPACE_MSR`'s
    /// `KVM_MSR_EXIT_REASON_FILTER` they exit to user space (`api.rst`).
    ///
    /// # Errors
    /// The ioctl's errno (`ENOTTY` by default).
    fn deny_msrs(&self, base: u32, count: u32) -> Result<(), Errno> {
        let _ = (base, count);
        Err(Errno::new(libc::ENOTTY))
    }
}

/// A vCPU fd's calls.
pub trait VcpuIoctls: Send + fmt::Debug {
    /// `KVM_SET_CPUID2`.
    ///
    /// # Errors
    /// The ioctl's errno.
    fn set_cpuid2(&self, cpuid: &CpuId) -> Result<(), Errno>;
    /// `KVM_GET_REGS`.
    ///
    /// # Errors
    /// The ioctl's errno.
    fn get_regs(&self) -> Result<kvm_regs, Errno>;
    /// `KVM_SET_REGS`.
    ///
    /// # Errors
    /// The ioctl's errno.
    fn set_regs(&self, regs: &kvm_regs) -> Result<(), Errno>;
    /// `KVM_GET_SREGS`.
    ///
    /// # Errors
    /// The ioctl's errno.
    fn get_sregs(&self) -> Result<kvm_sregs, Errno>;
    /// `KVM_SET_SREGS`.
    ///
    /// # Errors
    /// The ioctl's errno.
    fn set_sregs(&self, sregs: &kvm_sregs) -> Result<(), Errno>;
    /// `KVM_SET_XCRS`.
    ///
    /// # Errors
    /// The ioctl's errno.
    fn set_xcrs(&self, xcrs: &kvm_xcrs) -> Result<(), Errno>;
    /// `KVM_SET_MSRS`; returns how many entries KVM took.
    ///
    /// # Errors
    /// The ioctl's errno.
    fn set_msrs(&self, msrs: &Msrs) -> Result<usize, Errno>;
    /// `KVM_SET_DEBUGREGS`.
    ///
    /// # Errors
    /// The ioctl's errno.
    fn set_debugregs(&self, dr: &kvm_debugregs) -> Result<(), Errno>;
    /// `KVM_SET_FPU`.
    ///
    /// # Errors
    /// The ioctl's errno.
    fn set_fpu(&self, fpu: &kvm_fpu) -> Result<(), Errno>;
    /// `KVM_SET_MP_STATE`.
    ///
    /// # Errors
    /// The ioctl's errno.
    fn set_mp_state(&self, state: kvm_mp_state) -> Result<(), Errno>;
    /// `KVM_RUN`, decoded.
    ///
    /// # Errors
    /// The ioctl's errno.
    fn run(&mut self) -> Result<VcpuExit<'_>, Errno>;
    /// The shared `kvm_run` page, if this vCPU has one (a test double may not).
    fn kvm_run(&mut self) -> Option<&mut kvm_run>;
    /// `KVM_MEMORY_ENCRYPT_OP` with a TDX vCPU-scoped command.
    ///
    /// # Errors
    /// [`CocoError`] (`ENOTTY` by default).
    fn tdx_vcpu_cmd(&self, cmd: &mut TdxVcpuCmd<'_>) -> Result<(), CocoError> {
        let _ = cmd;
        Err(CocoError::errno(libc::ENOTTY))
    }
    /// The `KVM_EXIT_TDX` of the last `KVM_RUN`, with its writable `ret` (`None` for another
    /// exit, or a double without a `kvm_run` page).
    fn tdx_exit(&mut self) -> Option<super::tdx::TdxExit<'_>> {
        self.kvm_run().and_then(super::tdx::decode_tdx_exit)
    }
    /// The `KVM_EXIT_SNP_REQ_CERTS` of the last `KVM_RUN`, with its writable `npages` and
    /// `ret` (`None` for another exit, or a double without a `kvm_run` page).
    fn snp_req_certs(&mut self) -> Option<super::sev::SnpReqCerts<'_>> {
        self.kvm_run().and_then(super::sev::decode_snp_req_certs)
    }
    /// The port access of the last `KVM_RUN` if it exited with `KVM_EXIT_IO`, with the
    /// access width that `VcpuExit::IoIn`/`IoOut` drop. `None` by default (a double that
    /// runs nothing).
    fn port_io(&mut self) -> Option<PortIo<'_>> {
        None
    }
}

/// A port-I/O exit as the kernel reports it (`kvm_run.io`, `include/uapi/linux/kvm.h`):
/// `count` accesses of `size` bytes each (more than one for `rep ins/outs`), back to back.
/// kvm-ioctls' `VcpuExit::IoIn`/`IoOut` give only the `size × count` bytes, so a 16-bit
/// `out` and a two-byte `rep outsb` look the same there.
#[derive(Debug)]
pub struct PortIo<'a> {
    /// The port of every access.
    pub port: u16,
    /// Bytes per access: 1, 2 or 4.
    pub size: usize,
    /// `in` (the VMM fills `data`) rather than `out`.
    pub input: bool,
    /// `size × count` bytes.
    pub data: &'a mut [u8],
}

/// Decodes `kvm_run.io` after a `KVM_EXIT_IO`; `None` for another exit, or for a data range
/// outside the PIO page (the kernel never reports one; checked, not trusted).
///
/// # Safety
/// `run` must be the start of a vCPU's `kvm_run` mapping of at least two pages (the kernel's
/// `KVM_GET_VCPU_MMAP_SIZE` on x86 is at least the struct page plus the PIO page,
/// `kvm_dev_ioctl_get_vcpu_mmap_size`), and nothing else may access the PIO page while the
/// returned slice lives.
unsafe fn decode_port_io(run: &mut kvm_run) -> Option<PortIo<'_>> {
    if run.exit_reason != kvm_bindings::KVM_EXIT_IO {
        return None;
    }
    // SAFETY: reading a union field needs the field to be the active one: the kernel writes
    // `io` for exit_reason KVM_EXIT_IO, checked just above; every bit pattern is a valid
    // value of its plain integer fields.
    let io = unsafe { run.__bindgen_anon_1.io };
    let size = usize::from(io.size);
    let len = size.checked_mul(usize::try_from(io.count).ok()?)?;
    let offset = usize::try_from(io.data_offset).ok()?;
    // The kernel puts the data in the PIO page (KVM_PIO_PAGE_OFFSET = 1,
    // `arch/x86/include/uapi/asm/kvm.h`), after the struct.
    let end = offset.checked_add(len)?;
    if offset < std::mem::size_of::<kvm_run>() || end > 2 * 4096 {
        return None;
    }
    let data = std::ptr::from_mut(run).cast::<u8>().wrapping_add(offset);
    // SAFETY: from_raw_parts_mut needs `len` initialised bytes valid for reads and writes,
    // aligned, and accessed through nothing else while the slice lives: [offset, end) lies
    // past the struct and inside the first two pages of the vCPU mapping, which the caller
    // guarantees are mapped (and the slice's lifetime is tied to the `&mut kvm_run` borrow
    // of that mapping); u8 needs no alignment; mapped kernel pages are initialised; the
    // caller guarantees exclusive access to the PIO page (the kick handler writes only
    // `immediate_exit`, inside the struct). The pointer is derived from `&mut kvm_run` but
    // reaches past the struct into the same mapping, as kvm-ioctls' own `IoIn`/`IoOut`
    // slices do.
    let data = unsafe { std::slice::from_raw_parts_mut(data, len) };
    Some(PortIo {
        port: io.port,
        size,
        input: u32::from(io.direction) == kvm_bindings::KVM_EXIT_IO_IN,
        data,
    })
}

/// The system handle: `/dev/kvm`, or whatever implements the door behind it.
#[derive(Debug, Clone)]
pub struct Kvm {
    door: Arc<dyn KvmIoctls>,
}

impl Kvm {
    /// The door implementation behind this handle (for a door layered over it:
    /// `sys::emu`).
    pub fn door(&self) -> Arc<dyn KvmIoctls> {
        Arc::clone(&self.door)
    }

    /// Opens `/dev/kvm`.
    ///
    /// # Errors
    /// The `open` errno.
    pub fn open() -> Result<Kvm, Errno> {
        Ok(Kvm::with(Arc::new(RealKvm(kvm_ioctls::Kvm::new()?))))
    }

    /// A handle over another implementation of the door (a recorder or a model).
    pub fn with(door: Arc<dyn KvmIoctls>) -> Kvm {
        Kvm { door }
    }

    /// `KVM_CHECK_EXTENSION(cap)` on the system fd.
    pub fn check_extension(&self, cap: u32) -> i32 {
        self.door.check_extension(cap)
    }

    /// The most vCPUs a VM can have on this host.
    pub fn max_vcpus(&self) -> usize {
        self.door.max_vcpus()
    }

    /// `KVM_GET_SUPPORTED_CPUID`.
    ///
    /// # Errors
    /// The ioctl's errno.
    pub fn supported_cpuid(&self, max_entries: usize) -> Result<CpuId, Errno> {
        self.door.supported_cpuid(max_entries)
    }

    /// `KVM_GET_DEVICE_ATTR(group, attr)` on the system fd ([`KvmIoctls::device_attr`]).
    ///
    /// # Errors
    /// The ioctl's errno (`ENXIO`: no such attribute on this kernel).
    pub fn device_attr(&self, group: u32, attr: u64) -> Result<u64, Errno> {
        self.door.device_attr(group, attr)
    }

    /// Opens the SEV device that SEV commands carry ([`KvmIoctls::open_sev`]).
    ///
    /// # Errors
    /// The `open` errno (`ENOENT` on a host without SEV).
    pub fn open_sev(&self) -> Result<OwnedFd, Errno> {
        self.door.open_sev()
    }

    /// `KVM_CREATE_VM` of `vm_type`, retried while it returns `EINTR` (a signal during the
    /// call; it runs on every relaunch, so a stray signal must not end the session).
    ///
    /// # Errors
    /// The ioctl's errno other than `EINTR`.
    pub fn create_vm(&self, vm_type: u64) -> Result<Vm, Errno> {
        loop {
            match self.door.create_vm(vm_type) {
                Err(e) if e.errno() == libc::EINTR => continue,
                r => {
                    return r.map(|door| Vm {
                        door: Arc::from(door),
                        keep: Arc::new(Mutex::new(Vec::new())),
                        next_slot: 0,
                    })
                }
            }
        }
    }
}

type KeepAlive = Arc<Mutex<Vec<Arc<GuestMapping>>>>;

/// A VM that owns (an `Arc` of) every mapping registered as one of its memslots.
#[derive(Debug)]
pub struct Vm {
    // Field order is drop order: the VM fd closes before the mappings can go.
    door: Arc<dyn VmIoctls>,
    keep: KeepAlive,
    next_slot: u32,
}

/// A handle for raising and lowering one VM's in-kernel irqchip inputs (`KVM_IRQ_LINE`
/// only), for device models on vCPU threads. Like [`MemAttrs`] it keeps the VM's memslot
/// mappings alive and closes its share of the VM fd first (field order).
#[derive(Debug, Clone)]
pub struct IrqLine {
    door: Arc<dyn VmIoctls>,
    _keep: KeepAlive,
}

impl IrqLine {
    /// `KVM_IRQ_LINE`: input `irq` to `level`.
    ///
    /// # Errors
    /// The ioctl's errno.
    pub fn set(&self, irq: u32, level: bool) -> Result<(), Errno> {
        self.door.irq_line(irq, level)
    }
}

/// A handle for run-time page-state changes of one VM (`KVM_SET_MEMORY_ATTRIBUTES` only),
/// for exit handlers on vCPU threads. Like a [`Vcpu`] it keeps the VM's memslot mappings
/// alive and closes its share of the VM fd first (field order).
#[derive(Debug, Clone)]
pub struct MemAttrs {
    door: Arc<dyn VmIoctls>,
    _keep: KeepAlive,
}

impl MemAttrs {
    /// `KVM_SET_MEMORY_ATTRIBUTES` on `[gpa, gpa + size)` (private or shared).
    ///
    /// # Errors
    /// The ioctl's errno.
    pub fn set(&self, gpa: u64, size: u64, private: bool) -> Result<(), Errno> {
        self.door.set_memory_attributes(kvm_memory_attributes {
            address: gpa,
            size,
            attributes: if private {
                KVM_MEMORY_ATTRIBUTE_PRIVATE
            } else {
                0
            },
            flags: 0,
        })
    }
}

impl Vm {
    /// `KVM_CHECK_EXTENSION(cap)` on the VM fd.
    pub fn check_extension(&self, cap: u32) -> i32 {
        self.door.check_extension(cap)
    }

    /// Creates a guest_memfd of `size` bytes with `flags` (`KVM_CREATE_GUEST_MEMFD`).
    ///
    /// # Errors
    /// The ioctl's errno.
    pub fn create_guest_memfd(&self, size: u64, flags: u64) -> Result<OwnedFd, Errno> {
        self.door.create_guest_memfd(size, flags)
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

    /// Registers a new memslot of `size` bytes at `gpa` (`KVM_SET_USER_MEMORY_REGION2`) and
    /// returns its number. `shared` is the host mapping the slot's `userspace_addr` points at
    /// (the guest's shared pages; `None` = none: `userspace_addr` 0, the host never touches
    /// the slot); `private` is the guest_memfd holding its private pages (a
    /// `KVM_MEM_GUEST_MEMFD` slot at offset 0). A shared mapping that is itself a
    /// guest_memfd's (this host's native RAM, `../shared/spec/kvm-coco-abi.md` §0) makes a
    /// guest_memfd slot on that fd.
    ///
    /// # Errors
    /// `EINVAL` when neither backing is given, a backing is shorter than `size`, or the
    /// mapping is not `size` long; otherwise the ioctl's errno (e.g. `EEXIST` for
    /// overlapping slots, `EINVAL` for misalignment).
    pub fn add_memslot(
        &mut self,
        gpa: u64,
        size: u64,
        shared: Option<&Arc<GuestMapping>>,
        private: Option<&Arc<OwnedFd>>,
    ) -> Result<u32, Errno> {
        let einval = Errno::new(libc::EINVAL);
        let slot = self.next_slot;
        if shared.is_some_and(|m| m.len() as u64 != size) || (shared.is_none() && private.is_none())
        {
            return Err(einval);
        }
        let gmem = match private {
            Some(fd) => {
                if super::mem::file_size(fd)? < size {
                    return Err(einval);
                }
                Some(fd.as_raw_fd())
            }
            None => shared.and_then(|m| m.guest_memfd()).map(AsRawFd::as_raw_fd),
        };
        let (flags, guest_memfd) = match gmem {
            Some(fd) => (
                KVM_MEM_GUEST_MEMFD,
                u32::try_from(fd).map_err(|_| Errno::new(libc::EBADF))?,
            ),
            None => (0, 0),
        };
        let region = kvm_userspace_memory_region2 {
            slot,
            flags,
            guest_phys_addr: gpa,
            memory_size: size,
            userspace_addr: shared.map_or(0, |m| m.host_addr()),
            guest_memfd_offset: 0,
            guest_memfd,
            ..Default::default()
        };
        // Keep the mapping alive before KVM can see it.
        if let Some(m) = shared {
            self.keep
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(Arc::clone(m));
        }
        // SAFETY: set_user_memory_region2 requires that `userspace_addr..+memory_size` stays a
        // valid mapping for as long as the memslot exists, and that `guest_memfd` (if flagged)
        // is a guest_memfd of this VM covering `[offset, offset + size)`. A shared mapping is a
        // live mmap of exactly `memory_size` bytes (checked above) whose `Arc` was just pushed
        // into `keep`, which this VM and all its vCPUs hold and drop only after their door
        // fields (see module doc); without one, `userspace_addr` is 0 and KVM never maps it
        // for the host. The guest_memfd is either the one the mapping maps (created on this VM
        // with the mapping's length by `map_new_guest_memfd`) or `private`, checked above to
        // be at least `memory_size` long, which the caller created on this VM
        // (`create_guest_memfd`); KVM holds its own reference to the file for the slot.
        unsafe { self.door.set_user_memory_region2(region) }?;
        self.next_slot = slot.checked_add(1).ok_or(Errno::new(libc::ENOSPC))?;
        Ok(slot)
    }

    /// A handle for run-time `KVM_SET_MEMORY_ATTRIBUTES` from exit handlers.
    pub fn mem_attrs(&self) -> MemAttrs {
        MemAttrs {
            door: Arc::clone(&self.door),
            _keep: Arc::clone(&self.keep),
        }
    }

    /// A handle for run-time `KVM_IRQ_LINE` from device models (only meaningful after
    /// [`Vm::create_irqchip`]).
    pub fn irq_line(&self) -> IrqLine {
        IrqLine {
            door: Arc::clone(&self.door),
            _keep: Arc::clone(&self.keep),
        }
    }

    /// Memslots registered so far.
    pub fn memslots(&self) -> u32 {
        self.next_slot
    }

    /// `KVM_SET_MEMORY_ATTRIBUTES` on `[gpa, gpa + size)`: `private` sets
    /// `KVM_MEMORY_ATTRIBUTE_PRIVATE`, otherwise the range becomes shared.
    ///
    /// # Errors
    /// The ioctl's errno.
    pub fn set_memory_attributes(&self, gpa: u64, size: u64, private: bool) -> Result<(), Errno> {
        self.door.set_memory_attributes(kvm_memory_attributes {
            address: gpa,
            size,
            attributes: if private {
                KVM_MEMORY_ATTRIBUTE_PRIVATE
            } else {
                0
            },
            flags: 0,
        })
    }

    /// `KVM_CREATE_IRQCHIP`: the in-kernel PIC, IOAPIC and LAPICs.
    ///
    /// # Errors
    /// The ioctl's errno.
    pub fn create_irqchip(&self) -> Result<(), Errno> {
        self.door.create_irqchip()
    }

    /// `KVM_ENABLE_CAP(cap, args)` on the VM fd (e.g. `KVM_CAP_EXIT_HYPERCALL`,
    /// `KVM_CAP_SPLIT_IRQCHIP`).
    ///
    /// # Errors
    /// The ioctl's errno.
    pub fn enable_cap(&self, cap: u32, args: [u64; 4]) -> Result<(), Errno> {
        self.door.enable_cap(cap, args)
    }

    /// `KVM_MEMORY_ENCRYPT_REG_REGION` over the whole of `mapping` (one of this VM's
    /// memslot mappings: the kernel pins it for the VM's life).
    ///
    /// # Errors
    /// The ioctl's errno.
    pub fn register_enc_region(&self, mapping: &GuestMapping) -> Result<(), Errno> {
        self.door
            .register_enc_region(mapping.host_addr(), mapping.len() as u64)
    }

    /// `KVM_MEMORY_ENCRYPT_OP` with a SEV-family command, carrying the `/dev/sev` handle
    /// `sev_fd` (`../shared/spec/kvm-coco-abi.md` §1.2: KVM reads it on every command).
    ///
    /// # Errors
    /// [`CocoError`]: the errno and the firmware's status.
    pub fn sev_cmd(&self, cmd: &mut SevCmd<'_>, sev_fd: i32) -> Result<(), CocoError> {
        self.door.sev_cmd(cmd, sev_fd)
    }

    /// `KVM_MEMORY_ENCRYPT_OP` with a TDX VM-scoped command.
    ///
    /// # Errors
    /// [`CocoError`].
    pub fn tdx_vm_cmd(&self, cmd: &mut TdxVmCmd<'_>) -> Result<(), CocoError> {
        self.door.tdx_vm_cmd(cmd)
    }

    /// Creates vCPU `id`; the vCPU keeps every memslot mapping of this VM alive.
    ///
    /// # Errors
    /// The ioctl's errno.
    pub fn create_vcpu(&self, id: u64) -> Result<Vcpu, Errno> {
        Ok(Vcpu {
            door: self.door.create_vcpu(id)?,
            keep: Arc::clone(&self.keep),
        })
    }
}

/// A vCPU (with its `kvm_run` page) that keeps its VM's memslot mappings alive.
#[derive(Debug)]
pub struct Vcpu {
    // Field order is drop order: the vCPU fd and kvm_run mapping go first.
    door: Box<dyn VcpuIoctls>,
    keep: KeepAlive,
}

impl Vcpu {
    /// `KVM_SET_CPUID2`.
    ///
    /// # Errors
    /// The ioctl's errno.
    pub fn set_cpuid2(&self, cpuid: &CpuId) -> Result<(), Errno> {
        self.door.set_cpuid2(cpuid)
    }

    /// `KVM_GET_REGS`.
    ///
    /// # Errors
    /// The ioctl's errno.
    pub fn get_regs(&self) -> Result<kvm_regs, Errno> {
        self.door.get_regs()
    }

    /// `KVM_SET_REGS`.
    ///
    /// # Errors
    /// The ioctl's errno.
    pub fn set_regs(&self, regs: &kvm_regs) -> Result<(), Errno> {
        self.door.set_regs(regs)
    }

    /// `KVM_GET_SREGS`.
    ///
    /// # Errors
    /// The ioctl's errno.
    pub fn get_sregs(&self) -> Result<kvm_sregs, Errno> {
        self.door.get_sregs()
    }

    /// `KVM_SET_SREGS`.
    ///
    /// # Errors
    /// The ioctl's errno.
    pub fn set_sregs(&self, sregs: &kvm_sregs) -> Result<(), Errno> {
        self.door.set_sregs(sregs)
    }

    /// `KVM_SET_XCRS`.
    ///
    /// # Errors
    /// The ioctl's errno.
    pub fn set_xcrs(&self, xcrs: &kvm_xcrs) -> Result<(), Errno> {
        self.door.set_xcrs(xcrs)
    }

    /// `KVM_SET_MSRS`; returns how many entries KVM took.
    ///
    /// # Errors
    /// The ioctl's errno.
    pub fn set_msrs(&self, msrs: &Msrs) -> Result<usize, Errno> {
        self.door.set_msrs(msrs)
    }

    /// `KVM_SET_DEBUGREGS`.
    ///
    /// # Errors
    /// The ioctl's errno.
    pub fn set_debugregs(&self, dr: &kvm_debugregs) -> Result<(), Errno> {
        self.door.set_debugregs(dr)
    }

    /// `KVM_SET_FPU`.
    ///
    /// # Errors
    /// The ioctl's errno.
    pub fn set_fpu(&self, fpu: &kvm_fpu) -> Result<(), Errno> {
        self.door.set_fpu(fpu)
    }

    /// `KVM_SET_MP_STATE`.
    ///
    /// # Errors
    /// The ioctl's errno.
    pub fn set_mp_state(&self, mp_state: u32) -> Result<(), Errno> {
        self.door.set_mp_state(kvm_mp_state { mp_state })
    }

    /// `KVM_MEMORY_ENCRYPT_OP` with a TDX vCPU-scoped command.
    ///
    /// # Errors
    /// [`CocoError`].
    pub fn tdx_vcpu_cmd(&self, cmd: &mut TdxVcpuCmd<'_>) -> Result<(), CocoError> {
        self.door.tdx_vcpu_cmd(cmd)
    }

    /// `KVM_RUN`.
    ///
    /// # Errors
    /// The ioctl's errno (`EINTR` when kicked, `EAGAIN` for a waiting AP on INIT).
    pub fn run(&mut self) -> Result<VcpuExit<'_>, Errno> {
        self.door.run()
    }

    /// Sets `kvm_run.immediate_exit` (a vCPU without a `kvm_run` page ignores it).
    pub fn set_immediate_exit(&mut self, val: u8) {
        if let Some(run) = self.door.kvm_run() {
            run.immediate_exit = val;
        }
    }

    /// The `kvm_run` mapping (for the kick signal handler, see `sys::signal`), or null.
    pub(super) fn kvm_run_ptr(&mut self) -> *mut kvm_run {
        self.door
            .kvm_run()
            .map_or(std::ptr::null_mut(), std::ptr::from_mut)
    }

    /// The port access of the last `KVM_RUN`, with its access width ([`PortIo`]); `None`
    /// unless it exited with `KVM_EXIT_IO`.
    pub fn port_io(&mut self) -> Option<PortIo<'_>> {
        self.door.port_io()
    }

    /// The `KVM_EXIT_TDX` of the last `KVM_RUN` (`None` unless it exited with it).
    pub fn tdx_exit(&mut self) -> Option<super::tdx::TdxExit<'_>> {
        self.door.tdx_exit()
    }

    /// The `KVM_EXIT_SNP_REQ_CERTS` of the last `KVM_RUN` (`None` unless it exited with it).
    pub fn snp_req_certs(&mut self) -> Option<super::sev::SnpReqCerts<'_>> {
        self.door.snp_req_certs()
    }

    /// `kvm_run.internal` after a `KVM_EXIT_INTERNAL_ERROR`: the suberror and up to 16 data
    /// words (`include/uapi/linux/kvm.h`, `struct kvm_run` union member `internal`).
    pub fn internal_error(&mut self) -> (u32, Vec<u64>) {
        let Some(run) = self.door.kvm_run() else {
            return (0, Vec::new());
        };
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

/// The real kernel behind the door: kvm-ioctls on `/dev/kvm`.
#[derive(Debug)]
pub struct RealKvm(kvm_ioctls::Kvm);

impl KvmIoctls for RealKvm {
    fn check_extension(&self, cap: u32) -> i32 {
        self.0.check_extension_raw(libc::c_ulong::from(cap))
    }

    fn max_vcpus(&self) -> usize {
        self.0.get_max_vcpus()
    }

    fn supported_cpuid(&self, max_entries: usize) -> Result<CpuId, Errno> {
        self.0.get_supported_cpuid(max_entries)
    }

    fn create_vm(&self, vm_type: u64) -> Result<Box<dyn VmIoctls>, Errno> {
        Ok(Box::new(RealVm(self.0.create_vm_with_type(vm_type)?)))
    }

    fn open_sev(&self) -> Result<OwnedFd, Errno> {
        // `/dev/sev` read-write, as QEMU opens it (`target/i386/sev.c`, `sev_common_kvm_init`).
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open("/dev/sev")
            .map_err(|e| Errno::new(e.raw_os_error().unwrap_or(libc::EIO)))?;
        Ok(OwnedFd::from(file))
    }

    fn device_attr(&self, group: u32, attr: u64) -> Result<u64, Errno> {
        let mut val: u64 = 0;
        let req = kvm_device_attr {
            flags: 0,
            group,
            attr,
            addr: std::ptr::from_mut(&mut val) as u64,
        };
        // SAFETY: ioctl_with_ref needs an fd whose ioctl `KVM_GET_DEVICE_ATTR()` reads one
        // `struct kvm_device_attr` through the pointer: `self.0` is the open /dev/kvm fd, and
        // `req` has the uapi layout (asserted above) and lives across the call. The kernel
        // writes the attribute, one u64 (`put_user(val, u64 __user *)`, `arch/x86/kvm/x86.c`
        // `kvm_x86_dev_get_attr`), to `req.addr`, which points at `val`: a live, exclusively
        // borrowed, aligned u64 that nothing else touches during the call.
        let ret = unsafe {
            vmm_sys_util::ioctl::ioctl_with_ref(&self.0, nr::KVM_GET_DEVICE_ATTR(), &req)
        };
        if ret < 0 {
            return Err(Errno::last());
        }
        Ok(val)
    }
}

#[derive(Debug)]
struct RealVm(VmFd);

impl VmIoctls for RealVm {
    fn check_extension(&self, cap: u32) -> i32 {
        self.0.check_extension_raw(libc::c_ulong::from(cap))
    }

    unsafe fn set_user_memory_region2(
        &self,
        region: kvm_userspace_memory_region2,
    ) -> Result<(), Errno> {
        // SAFETY: kvm-ioctls' set_user_memory_region2 has exactly this function's contract
        // (the mapping outlives the slot, the guest_memfd covers the range), which our caller
        // upholds by this trait method's `# Safety` section.
        unsafe { self.0.set_user_memory_region2(region) }
    }

    fn create_guest_memfd(&self, size: u64, flags: u64) -> Result<OwnedFd, Errno> {
        let raw = self.0.create_guest_memfd(kvm_create_guest_memfd {
            size,
            flags,
            ..Default::default()
        })?;
        // SAFETY: from_raw_fd needs an open fd that nothing else owns: KVM_CREATE_GUEST_MEMFD
        // just returned it (checked for error by kvm-ioctls) and kvm-ioctls documents that the
        // caller owns and must close it.
        Ok(unsafe { OwnedFd::from_raw_fd(raw) })
    }

    fn set_memory_attributes(&self, attrs: kvm_memory_attributes) -> Result<(), Errno> {
        self.0.set_memory_attributes(attrs)
    }

    fn create_irqchip(&self) -> Result<(), Errno> {
        self.0.create_irq_chip()
    }

    fn irq_line(&self, irq: u32, level: bool) -> Result<(), Errno> {
        // A safe kvm-ioctls call: it passes a `kvm_irq_level` (layout asserted above) by
        // reference; the kernel only reads it.
        self.0.set_irq_line(irq, level)
    }

    fn enable_cap(&self, cap: u32, args: [u64; 4]) -> Result<(), Errno> {
        self.0.enable_cap(&kvm_bindings::kvm_enable_cap {
            cap,
            args,
            ..Default::default()
        })
    }

    fn register_enc_region(&self, addr: u64, size: u64) -> Result<(), Errno> {
        // A safe kvm-ioctls call: the kernel only pins (get_user_pages) the range; a range
        // that is not mapped fails with an errno.
        self.0
            .register_enc_memory_region(&kvm_bindings::kvm_enc_region { addr, size })
    }

    fn sev_cmd(&self, cmd: &mut SevCmd<'_>, sev_fd: i32) -> Result<(), CocoError> {
        super::sev::sev_cmd(&self.0, cmd, sev_fd)
    }

    fn create_vcpu(&self, id: u64) -> Result<Box<dyn VcpuIoctls>, Errno> {
        Ok(Box::new(RealVcpu(self.0.create_vcpu(id)?)))
    }

    fn tdx_vm_cmd(&self, cmd: &mut TdxVmCmd<'_>) -> Result<(), CocoError> {
        // SAFETY: vm_cmd needs a KVM VM fd: the VmFd's own, open for as long as `self`.
        unsafe { super::tdx::vm_cmd(self.0.as_raw_fd(), cmd) }
    }

    fn deny_msrs(&self, base: u32, count: u32) -> Result<(), Errno> {
        use kvm_ioctls::{MsrFilterDefaultAction, MsrFilterRange, MsrFilterRangeFlags};
        // A clear bitmap bit denies the MSR (`api.rst`, KVM_X86_SET_MSR_FILTER).
        let bitmap = vec![0u8; count.div_ceil(8) as usize];
        self.0.set_msr_filter(
            MsrFilterDefaultAction::ALLOW,
            &[MsrFilterRange {
                flags: MsrFilterRangeFlags::READ | MsrFilterRangeFlags::WRITE,
                base,
                msr_count: count,
                bitmap: &bitmap,
            }],
        )
    }
}

#[derive(Debug)]
struct RealVcpu(VcpuFd);

impl VcpuIoctls for RealVcpu {
    fn set_cpuid2(&self, cpuid: &CpuId) -> Result<(), Errno> {
        self.0.set_cpuid2(cpuid)
    }
    fn get_regs(&self) -> Result<kvm_regs, Errno> {
        self.0.get_regs()
    }
    fn set_regs(&self, regs: &kvm_regs) -> Result<(), Errno> {
        self.0.set_regs(regs)
    }
    fn get_sregs(&self) -> Result<kvm_sregs, Errno> {
        self.0.get_sregs()
    }
    fn set_sregs(&self, sregs: &kvm_sregs) -> Result<(), Errno> {
        self.0.set_sregs(sregs)
    }
    fn set_xcrs(&self, xcrs: &kvm_xcrs) -> Result<(), Errno> {
        self.0.set_xcrs(xcrs)
    }
    fn set_msrs(&self, msrs: &Msrs) -> Result<usize, Errno> {
        self.0.set_msrs(msrs)
    }
    fn set_debugregs(&self, dr: &kvm_debugregs) -> Result<(), Errno> {
        self.0.set_debug_regs(dr)
    }
    fn set_fpu(&self, fpu: &kvm_fpu) -> Result<(), Errno> {
        self.0.set_fpu(fpu)
    }
    fn set_mp_state(&self, state: kvm_mp_state) -> Result<(), Errno> {
        self.0.set_mp_state(state)
    }
    fn run(&mut self) -> Result<VcpuExit<'_>, Errno> {
        self.0.run()
    }
    fn kvm_run(&mut self) -> Option<&mut kvm_run> {
        Some(self.0.get_kvm_run())
    }
    fn port_io(&mut self) -> Option<PortIo<'_>> {
        // SAFETY: decode_port_io needs the start of a vCPU mapping of at least two pages and
        // exclusive access to its PIO page: `get_kvm_run` is the start of the mapping
        // kvm-ioctls made with the kernel's `KVM_GET_VCPU_MMAP_SIZE` (≥ two pages on x86),
        // and `&mut self` keeps every other use of this vCPU's mapping out while the
        // returned slice lives.
        unsafe { decode_port_io(self.0.get_kvm_run()) }
    }
    fn tdx_vcpu_cmd(&self, cmd: &mut TdxVcpuCmd<'_>) -> Result<(), CocoError> {
        // SAFETY: vcpu_cmd needs a KVM vCPU fd: the VcpuFd's own, open for as long as `self`.
        unsafe { super::tdx::vcpu_cmd(self.0.as_raw_fd(), cmd) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The real `KVM_GET_DEVICE_ATTR` on `/dev/kvm` reaches the kernel's attribute code: the
    /// SEV group answers a value (a SEV host), `ENXIO` (no such group or attribute:
    /// `kvm_x86_dev_get_attr`) or `EINVAL` (kernels before 5.17, no system attributes),
    /// never `ENOTTY` (a wrong ioctl number) or `EFAULT` (a wrong struct layout); group 0
    /// attribute 0 (`KVM_X86_XCOMP_GUEST_SUPP`, Linux 5.17+) holds at least x87 | SSE.
    #[test]
    fn real_device_attr_reaches_the_kernel() {
        let kvm = match Kvm::open() {
            Ok(k) => k,
            Err(e) => {
                eprintln!("SKIPPED: no /dev/kvm ({e})");
                return;
            }
        };
        for attr in [
            KVM_X86_SEV_VMSA_FEATURES,
            KVM_X86_SNP_POLICY_BITS,
            KVM_X86_SEV_SNP_REQ_CERTS,
        ] {
            match kvm.device_attr(KVM_X86_GRP_SEV, attr) {
                Ok(_) => {}
                Err(e) => assert!(
                    matches!(e.errno(), libc::ENXIO | libc::EINVAL),
                    "attr {attr}: {e}"
                ),
            }
        }
        match kvm.device_attr(0, 0) {
            Ok(xcr0) => assert_eq!(xcr0 & 0b11, 0b11, "{xcr0:#x}"),
            Err(e) => assert_eq!(e.errno(), libc::EINVAL, "{e}"),
        }
    }
}
