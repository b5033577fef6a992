//! Host discovery (once per process) and the guest memory of one launch.

use std::sync::Arc;

use kvm_bindings::CpuId;
use kvm_ioctls::Kvm;

use crate::sys::kvm::{
    Vm, GUEST_MEMFD_FLAG_INIT_SHARED, GUEST_MEMFD_FLAG_MMAP, KVM_CAP_GUEST_MEMFD_FLAGS,
};
use crate::sys::mem::{GuestMapping, OutOfRange};
use crate::sys::Errno;

/// 4 KiB.
pub const PAGE_SIZE: u64 = 4096;
/// Start of the 32-bit PCI/MMIO hole: RAM above 3 GiB is moved to 4 GiB.
pub const MMIO_HOLE_START: u64 = 3 << 30;
/// End of the 32-bit hole (4 GiB).
pub const MMIO_HOLE_END: u64 = 4 << 30;
/// Maximum entries asked of `KVM_GET_SUPPORTED_CPUID`.
const MAX_CPUID_ENTRIES: usize = 256;

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
    /// `/dev/kvm`.
    pub kvm: Kvm,
    /// `KVM_GET_SUPPORTED_CPUID`.
    pub cpuid: CpuId,
    /// `KVM_CAP_GUEST_MEMFD_FLAGS` (0 when absent).
    pub gmem_flags: u64,
    /// The RAM backing launches use.
    pub backing: MemoryBacking,
}

impl Host {
    /// Opens `/dev/kvm` and discovers capabilities. `prefer_gmem = false` forces anonymous
    /// memory.
    ///
    /// # Errors
    /// [`HostError`].
    pub fn open(prefer_gmem: bool) -> Result<Host, HostError> {
        let kvm = Kvm::new().map_err(HostError::Open)?;
        let cpuid = kvm
            .get_supported_cpuid(MAX_CPUID_ENTRIES)
            .map_err(HostError::Cpuid)?;
        let flags = kvm.check_extension_raw(KVM_CAP_GUEST_MEMFD_FLAGS);
        let gmem_flags = u64::try_from(flags).unwrap_or(0);
        let want = GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED;
        let backing = if prefer_gmem && gmem_flags & want == want {
            MemoryBacking::GuestMemfd
        } else {
            MemoryBacking::Anonymous
        };
        crate::sys::signal::install_kick_handler().map_err(HostError::Signal)?;
        Ok(Host {
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

/// One contiguous guest-physical range backed by one mapping (one memslot).
#[derive(Debug, Clone)]
pub struct Region {
    /// First guest-physical byte.
    pub gpa: u64,
    /// The host mapping (its length is the region size).
    pub mapping: Arc<GuestMapping>,
}

impl Region {
    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.gpa.saturating_add(self.mapping.len() as u64)
    }
}

/// A guest-physical access outside guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("guest-physical range [{gpa:#x}, +{len:#x}) is not inside one guest memory region")]
pub struct BadGpa {
    /// Start.
    pub gpa: u64,
    /// Length.
    pub len: u64,
}

impl From<(u64, u64, OutOfRange)> for BadGpa {
    fn from((gpa, len, _): (u64, u64, OutOfRange)) -> BadGpa {
        BadGpa { gpa, len }
    }
}

/// The guest memory of one launch: its regions, sorted by address, non-overlapping.
#[derive(Debug, Default)]
pub struct GuestMemory {
    regions: Vec<Region>,
}

impl GuestMemory {
    /// Adds a region (kept sorted). The caller guarantees no overlap (memslot creation would
    /// have failed otherwise).
    pub fn push(&mut self, region: Region) {
        let at = self.regions.partition_point(|r| r.gpa < region.gpa);
        self.regions.insert(at, region);
    }

    /// The regions, by address.
    pub fn regions(&self) -> &[Region] {
        &self.regions
    }

    /// Total bytes.
    pub fn total_bytes(&self) -> u64 {
        self.regions.iter().map(|r| r.mapping.len() as u64).sum()
    }

    /// The parts of `[gpa, gpa + size)` that no region covers.
    pub fn uncovered(&self, gpa: u64, size: u64) -> Vec<(u64, u64)> {
        uncovered_by(self.regions.iter().map(|r| (r.gpa, r.end())), gpa, size)
    }

    /// The region holding all of `[gpa, gpa + len)` and the offset of `gpa` in it.
    ///
    /// # Errors
    /// [`BadGpa`] when no single region holds the range.
    pub fn locate(&self, gpa: u64, len: u64) -> Result<(&Region, u64), BadGpa> {
        let bad = BadGpa { gpa, len };
        let end = gpa.checked_add(len).ok_or(bad)?;
        let idx = self.regions.partition_point(|r| r.gpa <= gpa);
        let r = idx
            .checked_sub(1)
            .and_then(|i| self.regions.get(i))
            .ok_or(bad)?;
        if end > r.end() {
            return Err(bad);
        }
        Ok((r, gpa - r.gpa))
    }

    /// Copies `data` to guest-physical `gpa`.
    ///
    /// # Errors
    /// [`BadGpa`] when the range is not inside one region.
    pub fn write(&self, gpa: u64, data: &[u8]) -> Result<(), BadGpa> {
        let len = data.len() as u64;
        let (r, off) = self.locate(gpa, len)?;
        r.mapping.write(off, data).map_err(|e| (gpa, len, e).into())
    }

    /// Reads guest-physical `gpa` into `buf`.
    ///
    /// # Errors
    /// [`BadGpa`] when the range is not inside one region.
    pub fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), BadGpa> {
        let len = buf.len() as u64;
        let (r, off) = self.locate(gpa, len)?;
        r.mapping.read(off, buf).map_err(|e| (gpa, len, e).into())
    }

    /// Zeroes `[gpa, gpa + len)`.
    ///
    /// # Errors
    /// [`BadGpa`] when the range is not inside one region.
    pub fn fill_zero(&self, gpa: u64, len: u64) -> Result<(), BadGpa> {
        let (r, off) = self.locate(gpa, len)?;
        let n = usize::try_from(len).map_err(|_| BadGpa { gpa, len })?;
        r.mapping
            .fill_zero(off, n)
            .map_err(|e| (gpa, len, e).into())
    }
}

/// The parts of `[gpa, gpa + size)` (saturating at `u64::MAX`) outside every `[start, end)`
/// range of `covered`, which must be sorted by start and non-overlapping.
pub fn uncovered_by(
    covered: impl IntoIterator<Item = (u64, u64)>,
    gpa: u64,
    size: u64,
) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let end = gpa.saturating_add(size);
    let mut cur = gpa;
    for (start, stop) in covered {
        if stop <= cur {
            continue;
        }
        if start >= end {
            break;
        }
        if start > cur {
            out.push((cur, start - cur));
        }
        cur = cur.max(stop);
        if cur >= end {
            break;
        }
    }
    if cur < end {
        out.push((cur, end - cur));
    }
    out
}

/// Guest RAM layout for `mem` bytes: the core's one layout
/// ([`relaunch_core::launch::ram_slots`]), `(gpa, size)` ranges.
pub fn ram_layout(mem: u64) -> Vec<(u64, u64)> {
    relaunch_core::launch::ram_slots(mem).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem_with(ranges: &[(u64, u64)]) -> GuestMemory {
        let mut m = GuestMemory::default();
        for &(gpa, size) in ranges {
            m.push(Region {
                gpa,
                mapping: Arc::new(GuestMapping::anonymous(size as usize).unwrap()),
            });
        }
        m
    }

    #[test]
    fn layout_splits_around_hole() {
        assert_eq!(ram_layout(256 << 20), vec![(0, 256 << 20)]);
        assert_eq!(ram_layout(3 << 30), vec![(0, 3 << 30)]);
        assert_eq!(ram_layout(5 << 30), vec![(0, 3 << 30), (4 << 30, 2 << 30)]);
        assert!(ram_layout(0).is_empty());
    }

    #[test]
    fn uncovered_and_locate() {
        let m = mem_with(&[(0x10000, 0x2000), (0x0, 0x1000)]);
        assert_eq!(m.uncovered(0, 0x1000), vec![]);
        assert_eq!(
            m.uncovered(0, 0x20000),
            vec![(0x1000, 0xF000), (0x12000, 0xE000)]
        );
        assert_eq!(m.uncovered(0x11000, 0x2000), vec![(0x12000, 0x1000)]);
        assert!(m.locate(0x10000, 0x2000).is_ok());
        assert!(m.locate(0x10000, 0x2001).is_err());
        assert!(m.locate(0x0FFF, 2).is_err());
        assert!(m.locate(u64::MAX, 2).is_err());
        m.write(0x11FFE, &[1, 2]).unwrap();
        let mut b = [0; 2];
        m.read(0x11FFE, &mut b).unwrap();
        assert_eq!(b, [1, 2]);
        assert!(m.write(0x11FFF, &[1, 2]).is_err());
    }
}
