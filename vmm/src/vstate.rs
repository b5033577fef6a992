//! Host discovery, once per process: what this host's KVM offers, reused by every launch.

use kvm_bindings::CpuId;

use crate::sys::kvm::{
    Kvm, Vm, GUEST_MEMFD_FLAG_INIT_SHARED, GUEST_MEMFD_FLAG_MMAP, KVM_CAP_GUEST_MEMFD_FLAGS,
    KVM_CAP_NR_MEMSLOTS, KVM_CAP_VM_TYPES, KVM_X86_GRP_SEV, KVM_X86_SEV_SNP_REQ_CERTS,
    KVM_X86_SEV_VMSA_FEATURES, KVM_X86_SNP_POLICY_BITS,
};
use crate::sys::mem::GuestMapping;
use crate::sys::Errno;

/// 4 KiB.
pub const PAGE_SIZE: u64 = 4096;
/// Maximum entries asked of `KVM_GET_SUPPORTED_CPUID`.
pub const MAX_CPUID_ENTRIES: usize = 256;

/// How guest RAM is backed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryBacking {
    /// A guest_memfd per region, created `MMAP | INIT_SHARED` and mapped as the slot's
    /// `userspace_addr` (`../shared/spec/kvm-coco-abi.md` §0, §2).
    GuestMemfd,
    /// Anonymous private memory.
    Anonymous,
}

impl MemoryBacking {
    /// Name for logs and audit records.
    pub fn name(self) -> &'static str {
        match self {
            MemoryBacking::GuestMemfd => "guest_memfd",
            MemoryBacking::Anonymous => "anonymous",
        }
    }
}

/// What this host's KVM accepts from SEV-family launches, read once per process with
/// `KVM_GET_DEVICE_ATTR` on `/dev/kvm`, group `KVM_X86_GRP_SEV`
/// (`Documentation/virt/kvm/x86/amd-memory-encryption.rst`, "Device attribute API").
/// `None`: the kernel does not have the attribute (`ENXIO`; `EINVAL` before Linux 5.17),
/// or offers no SEV-family VM type (not asked).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SevAttrs {
    /// `KVM_X86_SEV_VMSA_FEATURES`: the `vmsa_features` bits `KVM_SEV_INIT2` accepts (Linux
    /// 6.10+, the same kernels that have INIT2 and VM types 2–4).
    pub vmsa_features: Option<u64>,
    /// `KVM_X86_SNP_POLICY_BITS`: the SNP policy bits `KVM_SEV_SNP_LAUNCH_START` accepts
    /// (Linux 6.19+).
    pub snp_policy_bits: Option<u64>,
    /// `KVM_X86_SEV_SNP_REQ_CERTS`: 1 when `KVM_SEV_SNP_ENABLE_REQ_CERTS` and
    /// `KVM_EXIT_SNP_REQ_CERTS` are there (Linux 7.0+), 0 when the kernel has them but SNP is
    /// off ([`SevAttrs::snp_req_certs`]).
    pub snp_req_certs_attr: Option<u64>,
}

impl SevAttrs {
    /// Reads the attributes from `kvm`; an attribute the kernel does not answer is `None`
    /// (whatever the errno: a launch then falls back to the checks that need no attribute).
    pub fn probe(kvm: &Kvm) -> SevAttrs {
        SevAttrs {
            vmsa_features: kvm
                .device_attr(KVM_X86_GRP_SEV, KVM_X86_SEV_VMSA_FEATURES)
                .ok(),
            snp_policy_bits: kvm
                .device_attr(KVM_X86_GRP_SEV, KVM_X86_SNP_POLICY_BITS)
                .ok(),
            snp_req_certs_attr: kvm
                .device_attr(KVM_X86_GRP_SEV, KVM_X86_SEV_SNP_REQ_CERTS)
                .ok(),
        }
    }

    /// Whether the kernel lets the VMM answer SNP guests' certificate requests: the attribute
    /// reads 1 ("return a value of 1 if the kernel supports the `KVM_EXIT_SNP_REQ_CERTS`
    /// exit", `amd-memory-encryption.rst`, "Device attribute API").
    pub fn snp_req_certs(&self) -> bool {
        self.snp_req_certs_attr == Some(1)
    }
}

/// Opening `/dev/kvm` and discovering what it offers failed.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// `/dev/kvm` cannot be opened.
    #[error("cannot open /dev/kvm: {0}")]
    Open(#[source] Errno),
    /// `KVM_GET_SUPPORTED_CPUID` failed.
    #[error("KVM_GET_SUPPORTED_CPUID: {0}")]
    Cpuid(#[source] Errno),
    /// Installing the vCPU kick signal handler failed.
    #[error("installing the vCPU kick signal handler: {0}")]
    Signal(#[source] Errno),
}

/// What this host's KVM offers, discovered once per process and reused by every launch
/// (`../shared/spec/kvm-coco-abi.md` §5: QEMU caches the same facts across VM fds).
#[derive(Debug)]
pub struct Host {
    /// `/dev/kvm` (or the door implementation standing in for it).
    pub kvm: Kvm,
    /// The most vCPUs a VM can have (`KVM_CAP_MAX_VCPUS`).
    pub max_vcpus: usize,
    /// Memslots per VM (`KVM_CAP_NR_MEMSLOTS`).
    pub nr_memslots: usize,
    /// VM types `KVM_CREATE_VM` accepts, bit N = type N (`KVM_CAP_VM_TYPES`; bit 0 when the
    /// capability is absent: only the default VM).
    pub vm_types: u64,
    /// `KVM_GET_SUPPORTED_CPUID`.
    pub cpuid: CpuId,
    /// `KVM_CAP_GUEST_MEMFD_FLAGS` (0 when absent).
    pub gmem_flags: u64,
    /// The RAM backing launches use.
    pub backing: MemoryBacking,
    /// The SEV device (`/dev/sev`), opened once per process and carried by every SEV command
    /// (`../shared/spec/kvm-coco-abi.md` §1.2); `None` when it cannot be opened (no SEV).
    pub sev: Option<std::os::fd::OwnedFd>,
    /// The SEV attributes of `/dev/kvm` (probed when KVM offers a SEV-family VM type).
    pub sev_attrs: SevAttrs,
}

impl Host {
    /// Opens `/dev/kvm` and discovers capabilities. `prefer_gmem = false` forces anonymous
    /// memory.
    ///
    /// # Errors
    /// [`HostError`].
    pub fn open(prefer_gmem: bool) -> Result<Host, HostError> {
        Host::with_kvm(Kvm::open().map_err(HostError::Open)?, prefer_gmem)
    }

    /// Discovers what `kvm` offers (the real `/dev/kvm` or a door implementation standing in
    /// for it: `sys::record`).
    ///
    /// # Errors
    /// [`HostError`].
    pub fn with_kvm(kvm: Kvm, prefer_gmem: bool) -> Result<Host, HostError> {
        let cpuid = kvm
            .supported_cpuid(MAX_CPUID_ENTRIES)
            .map_err(HostError::Cpuid)?;
        let flags = kvm.check_extension(KVM_CAP_GUEST_MEMFD_FLAGS);
        let gmem_flags = u64::try_from(flags).unwrap_or(0);
        let want = GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED;
        let backing = if prefer_gmem && gmem_flags & want == want {
            MemoryBacking::GuestMemfd
        } else {
            MemoryBacking::Anonymous
        };
        crate::sys::signal::install_kick_handler().map_err(HostError::Signal)?;
        // KVM_CAP_NR_MEMSLOTS is at least 32 wherever KVM runs (`Documentation/virt/kvm/
        // api.rst`, KVM_CAP_NR_MEMSLOTS); a door that answers 0 gets that floor.
        let nr_memslots = usize::try_from(kvm.check_extension(KVM_CAP_NR_MEMSLOTS))
            .unwrap_or(0)
            .max(32);
        let vm_types = match u64::try_from(kvm.check_extension(KVM_CAP_VM_TYPES)) {
            Ok(0) | Err(_) => 1,
            Ok(t) => t,
        };
        // Only worth opening and asking when KVM offers a SEV-family VM type (2, 3 or 4).
        let (sev, sev_attrs) = if vm_types & (0b111 << 2) != 0 {
            (kvm.open_sev().ok(), SevAttrs::probe(&kvm))
        } else {
            (None, SevAttrs::default())
        };
        Ok(Host {
            sev,
            sev_attrs,
            max_vcpus: kvm.max_vcpus(),
            nr_memslots,
            vm_types,
            kvm,
            cpuid,
            gmem_flags,
            backing,
        })
    }

    /// CPUID(1).EAX of the host model KVM exposes (the vCPU signature).
    pub fn vcpu_signature(&self) -> u32 {
        self.cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == 1)
            .map_or(0, |e| e.eax)
    }

    /// Maps `size` bytes of guest RAM for `vm` with this host's backing.
    ///
    /// # Errors
    /// The failing call's errno.
    pub fn map_ram(&self, vm: &Vm, size: u64) -> Result<GuestMapping, Errno> {
        let len = usize::try_from(size).map_err(|_| Errno::new(libc::ENOMEM))?;
        match self.backing {
            MemoryBacking::GuestMemfd => {
                let fd = vm.create_guest_memfd(
                    size,
                    GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED,
                )?;
                GuestMapping::from_guest_memfd(fd, len)
            }
            MemoryBacking::Anonymous => GuestMapping::anonymous(len),
        }
    }
}

/// Guest RAM layout for `mem` bytes: the core's one layout
/// ([`relaunch_core::launch::ram_slots`]), `(gpa, size)` ranges.
pub fn ram_layout(mem: u64) -> Vec<(u64, u64)> {
    relaunch_core::launch::ram_slots(mem).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_splits_around_hole() {
        assert_eq!(ram_layout(256 << 20), vec![(0, 256 << 20)]);
        assert_eq!(ram_layout(3 << 30), vec![(0, 3 << 30)]);
        assert_eq!(ram_layout(5 << 30), vec![(0, 3 << 30), (4 << 30, 2 << 30)]);
        assert!(ram_layout(0).is_empty());
    }
}
