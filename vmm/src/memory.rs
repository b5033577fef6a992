//! The guest memory of one launch: regions (one memslot each) with their backings, and the
//! per-page private/shared map.
//!
//! A region is backed by host-mapped memory (*shared*: anonymous memory, or a guest_memfd
//! created `MMAP | INIT_SHARED` on this host's native VMs), by a guest_memfd the host never
//! maps (*private*: a confidential guest's encrypted pages), or by both (a confidential
//! guest's RAM: the guest_memfd holds the private pages, the mapping the shared ones, and
//! `KVM_SET_MEMORY_ATTRIBUTES` says which is which, page by page;
//! `Documentation/virt/kvm/api.rst` 4.141 and `../shared/spec/kvm-coco-abi.md` §2).
//!
//! Two ways in, on purpose:
//! - [`GuestMemory::read`] / [`GuestMemory::write`] / [`GuestMemory::fill_zero`] are what
//!   devices and DMA use: they touch only pages that are shared right now, and refuse a range
//!   with a private page ([`MemError::Private`]);
//! - [`GuestMemory::stage`] is the backend's, while it builds a launch: it writes the shared
//!   mapping whatever the page state (on confidential platforms, the bytes the firmware then
//!   copies into private memory: `SNP_LAUNCH_UPDATE` reads them from `uaddr`).

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use relaunch_core::limits::PAGE_SIZE;

use crate::sys::mem::{GuestMapping, OutOfRange};

/// A guest-physical access that devices or the launch may not make.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MemError {
    /// The range is not inside one region.
    #[error("guest-physical range [{gpa:#x}, +{len:#x}) is not inside one guest memory region")]
    Outside {
        /// Start.
        gpa: u64,
        /// Length.
        len: u64,
    },
    /// The range holds a private page (or a region without host-mapped memory).
    #[error(
        "guest-physical range [{gpa:#x}, +{len:#x}) holds private memory the host cannot touch"
    )]
    Private {
        /// Start.
        gpa: u64,
        /// Length.
        len: u64,
    },
}

impl From<(u64, u64, OutOfRange)> for MemError {
    fn from((gpa, len, _): (u64, u64, OutOfRange)) -> MemError {
        MemError::Outside { gpa, len }
    }
}

/// Per-page private bits of one region (1 = private), safe to read and flip from any thread
/// (a vCPU converting pages while a device reads others).
#[derive(Debug)]
pub struct PageStates {
    bits: Vec<AtomicU64>,
    pages: u64,
}

impl PageStates {
    /// `pages` pages, all private (`private`) or all shared.
    pub fn new(pages: u64, private: bool) -> PageStates {
        let words = pages.div_ceil(64);
        let fill = if private { u64::MAX } else { 0 };
        PageStates {
            bits: (0..words).map(|_| AtomicU64::new(fill)).collect(),
            pages,
        }
    }

    /// Whether page `page` is private (out of range: false).
    pub fn is_private(&self, page: u64) -> bool {
        let Some(w) = usize::try_from(page / 64)
            .ok()
            .and_then(|i| self.bits.get(i))
            .filter(|_| page < self.pages)
        else {
            return false;
        };
        w.load(Ordering::Acquire) & (1 << (page % 64)) != 0
    }

    /// Whether any page of `[first, first + n)` is private.
    pub fn any_private(&self, first: u64, n: u64) -> bool {
        (first..first.saturating_add(n).min(self.pages)).any(|p| self.is_private(p))
    }

    /// Marks `[first, first + n)` (clipped to the region) private or shared.
    pub fn set(&self, first: u64, n: u64, private: bool) {
        for p in first..first.saturating_add(n).min(self.pages) {
            let Some(w) = usize::try_from(p / 64).ok().and_then(|i| self.bits.get(i)) else {
                continue;
            };
            let bit = 1u64 << (p % 64);
            if private {
                w.fetch_or(bit, Ordering::AcqRel);
            } else {
                w.fetch_and(!bit, Ordering::AcqRel);
            }
        }
    }

    /// Private pages in all.
    pub fn private_pages(&self) -> u64 {
        (0..self.pages).filter(|&p| self.is_private(p)).count() as u64
    }
}

/// One contiguous guest-physical range, one memslot.
#[derive(Debug)]
pub struct Region {
    /// First guest-physical byte.
    pub gpa: u64,
    /// Size in bytes.
    pub size: u64,
    /// Host-mapped memory (the slot's `userspace_addr`): the shared pages.
    pub shared: Option<Arc<GuestMapping>>,
    /// The guest_memfd holding the private pages (never mapped by the host).
    pub private: Option<Arc<OwnedFd>>,
    /// Which pages are private now; `None` = every page is shared (no private backing).
    pub states: Option<PageStates>,
}

impl Region {
    /// A region of host-mapped memory only (every page shared).
    pub fn shared(gpa: u64, mapping: Arc<GuestMapping>) -> Region {
        Region {
            gpa,
            size: mapping.len() as u64,
            shared: Some(mapping),
            private: None,
            states: None,
        }
    }

    /// A region of a private guest_memfd and, if given, a shared mapping of the same size;
    /// every page starts private.
    pub fn private(
        gpa: u64,
        size: u64,
        gmem: Arc<OwnedFd>,
        shared: Option<Arc<GuestMapping>>,
    ) -> Region {
        Region {
            gpa,
            size,
            shared,
            private: Some(gmem),
            states: Some(PageStates::new(size / PAGE_SIZE, true)),
        }
    }

    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.gpa.saturating_add(self.size)
    }

    fn any_private(&self, off: u64, len: u64) -> bool {
        let Some(states) = &self.states else {
            return false;
        };
        let first = off / PAGE_SIZE;
        let last = off.saturating_add(len.max(1)).div_ceil(PAGE_SIZE);
        states.any_private(first, last - first)
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
        self.regions.iter().map(|r| r.size).sum()
    }

    /// Bytes of host memory the regions hold now (resident shared pages, allocated private
    /// pages); a region that cannot be measured counts its whole size.
    pub fn resident_bytes(&self) -> u64 {
        self.regions
            .iter()
            .map(|r| {
                let shared = r.shared.as_ref().map_or(Ok(0), |m| m.resident_bytes());
                let private = r
                    .private
                    .as_ref()
                    .map_or(Ok(0), |fd| crate::sys::mem::file_allocated_bytes(fd));
                match (shared, private) {
                    (Ok(a), Ok(b)) => a.saturating_add(b),
                    _ => r.size,
                }
            })
            .fold(0, u64::saturating_add)
    }

    /// The parts of `[gpa, gpa + size)` that no region covers.
    pub fn uncovered(&self, gpa: u64, size: u64) -> Vec<(u64, u64)> {
        uncovered_by(self.regions.iter().map(|r| (r.gpa, r.end())), gpa, size)
    }

    /// The region holding all of `[gpa, gpa + len)` and the offset of `gpa` in it.
    ///
    /// # Errors
    /// [`MemError::Outside`] when no single region holds the range.
    pub fn locate(&self, gpa: u64, len: u64) -> Result<(&Region, u64), MemError> {
        let bad = MemError::Outside { gpa, len };
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

    /// The shared mapping holding `[gpa, gpa + len)` and the offset in it, for a device or
    /// DMA access: every page of the range must be shared now.
    ///
    /// # Errors
    /// [`MemError::Outside`]; [`MemError::Private`] for a private page or a region the host
    /// has no mapping of.
    pub fn shared_range(&self, gpa: u64, len: u64) -> Result<(&GuestMapping, u64), MemError> {
        let (r, off) = self.locate(gpa, len)?;
        let private = MemError::Private { gpa, len };
        let m = r.shared.as_deref().ok_or(private)?;
        if r.any_private(off, len) {
            return Err(private);
        }
        Ok((m, off))
    }

    /// Copies `data` to guest-physical `gpa` (devices, DMA: shared pages only).
    ///
    /// # Errors
    /// [`MemError`].
    pub fn write(&self, gpa: u64, data: &[u8]) -> Result<(), MemError> {
        let len = data.len() as u64;
        let (m, off) = self.shared_range(gpa, len)?;
        m.write(off, data).map_err(|e| (gpa, len, e).into())
    }

    /// Reads guest-physical `gpa` into `buf` (devices, DMA: shared pages only).
    ///
    /// # Errors
    /// [`MemError`].
    pub fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemError> {
        let len = buf.len() as u64;
        let (m, off) = self.shared_range(gpa, len)?;
        m.read(off, buf).map_err(|e| (gpa, len, e).into())
    }

    /// Zeroes `[gpa, gpa + len)` (devices, DMA: shared pages only).
    ///
    /// # Errors
    /// [`MemError`].
    pub fn fill_zero(&self, gpa: u64, len: u64) -> Result<(), MemError> {
        let (m, off) = self.shared_range(gpa, len)?;
        let n = usize::try_from(len).map_err(|_| MemError::Outside { gpa, len })?;
        m.fill_zero(off, n).map_err(|e| (gpa, len, e).into())
    }

    /// Writes launch bytes to the host mapping at `gpa`, whatever the page's state: the
    /// backend's staging path while it builds a launch (see the module doc).
    ///
    /// # Errors
    /// [`MemError::Outside`]; [`MemError::Private`] for a region with no host mapping.
    pub fn stage(&self, gpa: u64, data: &[u8]) -> Result<(), MemError> {
        let len = data.len() as u64;
        let (r, off) = self.locate(gpa, len)?;
        let m = r.shared.as_deref().ok_or(MemError::Private { gpa, len })?;
        m.write(off, data).map_err(|e| (gpa, len, e).into())
    }

    /// Records that `[gpa, gpa + len)` is now private or shared (after the backend told KVM
    /// with `KVM_SET_MEMORY_ATTRIBUTES`). Pages must be whole and inside one region that has
    /// a private backing (a region without one cannot hold private pages).
    ///
    /// # Errors
    /// [`MemError::Outside`] for a misaligned or uncovered range, or a region with no private
    /// backing.
    pub fn convert(&self, gpa: u64, len: u64, private: bool) -> Result<(), MemError> {
        let bad = MemError::Outside { gpa, len };
        if !gpa.is_multiple_of(PAGE_SIZE) || !len.is_multiple_of(PAGE_SIZE) {
            return Err(bad);
        }
        let (r, off) = self.locate(gpa, len)?;
        let states = r.states.as_ref().ok_or(bad)?;
        states.set(off / PAGE_SIZE, len / PAGE_SIZE, private);
        Ok(())
    }

    /// Whether the page holding `gpa` is private (false outside guest memory).
    pub fn is_private(&self, gpa: u64) -> bool {
        self.locate(gpa, 1)
            .is_ok_and(|(r, off)| r.any_private(off, 1))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn mem_with(ranges: &[(u64, u64)]) -> GuestMemory {
        let mut m = GuestMemory::default();
        for &(gpa, size) in ranges {
            m.push(Region::shared(
                gpa,
                Arc::new(GuestMapping::anonymous(size as usize).unwrap()),
            ));
        }
        m
    }

    /// A private+shared region of `pages` pages at `gpa` (a memfd stands in for the
    /// guest_memfd: the map is what is under test).
    fn confidential(gpa: u64, pages: u64) -> GuestMemory {
        let size = pages * PAGE_SIZE;
        let f = tempfile_fd(size);
        let mut m = GuestMemory::default();
        m.push(Region::private(
            gpa,
            size,
            Arc::new(f),
            Some(Arc::new(GuestMapping::anonymous(size as usize).unwrap())),
        ));
        m
    }

    fn tempfile_fd(size: u64) -> OwnedFd {
        OwnedFd::from(crate::sys::record::memfd(size).unwrap())
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
        // Shared-only memory: nothing is private, nothing converts.
        assert!(!m.is_private(0x10000));
        assert!(m.convert(0x10000, 0x1000, true).is_err());
    }

    #[test]
    fn private_pages_refuse_devices_and_dma() {
        let m = confidential(0x10_0000, 8);
        let base = 0x10_0000;
        // Every page starts private: devices and DMA are refused, the launch may stage.
        assert!(m.is_private(base));
        let mut b = [0u8; 4];
        assert_eq!(
            m.read(base, &mut b),
            Err(MemError::Private { gpa: base, len: 4 })
        );
        assert!(m.write(base + 0x1000, &[1]).is_err());
        assert!(m.fill_zero(base, 16).is_err());
        m.stage(base, &[7, 7, 7, 7]).unwrap();
        // Page 2 becomes shared: only it is reachable, a range spilling into page 3 is not.
        m.convert(base + 0x2000, 0x1000, false).unwrap();
        assert!(!m.is_private(base + 0x2000) && m.is_private(base + 0x3000));
        m.write(base + 0x2FFC, &[1, 2, 3, 4]).unwrap();
        m.read(base + 0x2FFC, &mut b).unwrap();
        assert_eq!(b, [1, 2, 3, 4]);
        assert!(m.write(base + 0x2FFE, &[1, 2, 3, 4]).is_err());
        assert!(m.read(base + 0x1FFF, &mut b[..2]).is_err());
        // Back to private: refused again.
        m.convert(base + 0x2000, 0x1000, true).unwrap();
        assert!(m.read(base + 0x2000, &mut b).is_err());
        // Whole range shared, then a middle page private again.
        m.convert(base, 8 * 0x1000, false).unwrap();
        m.convert(base + 0x5000, 0x1000, true).unwrap();
        let states = m.regions()[0].states.as_ref().unwrap();
        assert_eq!(states.private_pages(), 1);
        m.fill_zero(base, 0x5000).unwrap();
        assert!(m.fill_zero(base, 0x5001).is_err());
        // Misaligned or out-of-region conversions are refused and change nothing.
        assert!(m.convert(base + 1, 0x1000, true).is_err());
        assert!(m.convert(base + 0x7000, 0x2000, true).is_err());
        assert!(m.convert(0, 0x1000, true).is_err());
        assert_eq!(states.private_pages(), 1);
    }

    #[test]
    fn private_only_region_is_never_touched_by_the_host() {
        let mut m = GuestMemory::default();
        m.push(Region::private(
            0,
            0x4000,
            Arc::new(tempfile_fd(0x4000)),
            None,
        ));
        m.convert(0, 0x4000, false).unwrap();
        // Shared by attribute, but the host has no mapping of it.
        assert!(matches!(m.write(0, &[1]), Err(MemError::Private { .. })));
        assert!(matches!(m.stage(0, &[1]), Err(MemError::Private { .. })));
    }

    #[test]
    fn page_states_word_edges() {
        let s = PageStates::new(130, false);
        s.set(63, 3, true);
        assert!(!s.is_private(62) && s.is_private(63) && s.is_private(65) && !s.is_private(66));
        assert!(s.any_private(60, 4) && !s.any_private(66, 64));
        s.set(120, 100, true);
        assert_eq!(s.private_pages(), 3 + 10);
        assert!(!s.is_private(130) && !s.is_private(u64::MAX));
    }
}
