//! An adapter for door implementations written in safe Rust (the kernel model): they never
//! turn `userspace_addr` into a pointer, so their memslot call is safe, and the `unsafe`
//! trait method the door requires lives here, in `sys/`, where all unsafe code lives.

use std::fmt;
use std::os::fd::OwnedFd;

use kvm_bindings::{kvm_memory_attributes, kvm_userspace_memory_region2};

use super::coco::{CocoError, SevCmd, TdxVmCmd};
use super::kvm::{VcpuIoctls, VmIoctls};
use super::Errno;

/// [`VmIoctls`] for an implementation that only records `userspace_addr` as a number.
pub trait SafeVmIoctls: Send + Sync + fmt::Debug {
    /// `KVM_CHECK_EXTENSION` on the VM fd.
    fn check_extension(&self, cap: u32) -> i32;
    /// `KVM_SET_USER_MEMORY_REGION2`, never dereferencing `userspace_addr`.
    ///
    /// # Errors
    /// The errno the implementation answers.
    fn set_user_memory_region2(&self, region: kvm_userspace_memory_region2) -> Result<(), Errno>;
    /// `KVM_CREATE_GUEST_MEMFD`.
    ///
    /// # Errors
    /// The errno the implementation answers.
    fn create_guest_memfd(&self, size: u64, flags: u64) -> Result<OwnedFd, Errno>;
    /// `KVM_SET_MEMORY_ATTRIBUTES`.
    ///
    /// # Errors
    /// The errno the implementation answers.
    fn set_memory_attributes(&self, attrs: kvm_memory_attributes) -> Result<(), Errno>;
    /// `KVM_CREATE_IRQCHIP`.
    ///
    /// # Errors
    /// The errno the implementation answers.
    fn create_irqchip(&self) -> Result<(), Errno>;
    /// `KVM_IRQ_LINE`.
    ///
    /// # Errors
    /// The errno the implementation answers.
    fn irq_line(&self, irq: u32, level: bool) -> Result<(), Errno>;
    /// `KVM_CREATE_VCPU`.
    ///
    /// # Errors
    /// The errno the implementation answers.
    fn create_vcpu(&self, id: u64) -> Result<Box<dyn VcpuIoctls>, Errno>;
    /// `KVM_ENABLE_CAP`.
    ///
    /// # Errors
    /// The errno the implementation answers.
    fn enable_cap(&self, cap: u32, args: [u64; 4]) -> Result<(), Errno>;
    /// `KVM_MEMORY_ENCRYPT_REG_REGION` (host address recorded, never dereferenced).
    ///
    /// # Errors
    /// The errno the implementation answers.
    fn register_enc_region(&self, addr: u64, size: u64) -> Result<(), Errno>;
    /// `KVM_MEMORY_ENCRYPT_OP`, SEV family.
    ///
    /// # Errors
    /// The implementation's [`CocoError`].
    fn sev_cmd(&self, cmd: &mut SevCmd<'_>, sev_fd: i32) -> Result<(), CocoError>;
    /// `KVM_MEMORY_ENCRYPT_OP`, TDX VM scope.
    ///
    /// # Errors
    /// The implementation's [`CocoError`].
    fn tdx_vm_cmd(&self, cmd: &mut TdxVmCmd<'_>) -> Result<(), CocoError>;
}

/// A [`SafeVmIoctls`] as a [`VmIoctls`].
#[derive(Debug)]
pub struct SafeVm<T>(pub T);

impl<T: SafeVmIoctls> VmIoctls for SafeVm<T> {
    fn check_extension(&self, cap: u32) -> i32 {
        self.0.check_extension(cap)
    }
    unsafe fn set_user_memory_region2(
        &self,
        region: kvm_userspace_memory_region2,
    ) -> Result<(), Errno> {
        // Nothing to uphold here: `T` never dereferences the address (its trait says so).
        self.0.set_user_memory_region2(region)
    }
    fn create_guest_memfd(&self, size: u64, flags: u64) -> Result<OwnedFd, Errno> {
        self.0.create_guest_memfd(size, flags)
    }
    fn set_memory_attributes(&self, attrs: kvm_memory_attributes) -> Result<(), Errno> {
        self.0.set_memory_attributes(attrs)
    }
    fn create_irqchip(&self) -> Result<(), Errno> {
        self.0.create_irqchip()
    }
    fn irq_line(&self, irq: u32, level: bool) -> Result<(), Errno> {
        self.0.irq_line(irq, level)
    }
    fn create_vcpu(&self, id: u64) -> Result<Box<dyn VcpuIoctls>, Errno> {
        self.0.create_vcpu(id)
    }
    fn enable_cap(&self, cap: u32, args: [u64; 4]) -> Result<(), Errno> {
        self.0.enable_cap(cap, args)
    }
    fn register_enc_region(&self, addr: u64, size: u64) -> Result<(), Errno> {
        self.0.register_enc_region(addr, size)
    }
    fn sev_cmd(&self, cmd: &mut SevCmd<'_>, sev_fd: i32) -> Result<(), CocoError> {
        self.0.sev_cmd(cmd, sev_fd)
    }
    fn tdx_vm_cmd(&self, cmd: &mut TdxVmCmd<'_>) -> Result<(), CocoError> {
        self.0.tdx_vm_cmd(cmd)
    }
}
