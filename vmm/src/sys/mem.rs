//! Guest RAM mappings: an owning type that unmaps on `Drop`.
//!
//! A [`GuestMapping`] is a `mmap`ed range of host memory that backs one KVM memslot: either
//! anonymous private memory, or the `mmap` of a guest_memfd (which must be the slot's
//! `userspace_addr` on this host: `../shared/spec/kvm-coco-abi.md` §0/§2). The guest writes it
//! concurrently, so the VMM only ever copies bytes in and out of it (never hands out Rust
//! references into it).

use std::os::fd::{AsRawFd, OwnedFd};
use std::ptr::NonNull;

use super::Errno;

/// An access outside a mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("guest memory access [{offset:#x}, +{len:#x}) outside a mapping of {size:#x} bytes")]
pub struct OutOfRange {
    /// Offset into the mapping.
    pub offset: u64,
    /// Length of the access.
    pub len: u64,
    /// Size of the mapping.
    pub size: u64,
}

/// An owned host mapping that backs guest RAM. Unmapped (and its guest_memfd closed) on drop.
#[derive(Debug)]
pub struct GuestMapping {
    ptr: NonNull<u8>,
    len: usize,
    /// The guest_memfd this mapping maps, if any (closed after the unmap).
    gmem: Option<OwnedFd>,
}

// SAFETY: `GuestMapping` owns a raw mapping; all accesses go through `read`/`write`, which copy
// bytes with raw pointers after a bounds check, so sharing it between threads creates no Rust
// references into memory that another thread (or the guest) mutates.
unsafe impl Send for GuestMapping {}
// SAFETY: see `Send`: no method hands out references into the mapping.
unsafe impl Sync for GuestMapping {}

impl GuestMapping {
    /// Maps `len` bytes of zeroed anonymous private memory (`MAP_NORESERVE`: pages are only
    /// allocated when touched).
    ///
    /// # Errors
    /// `EINVAL` for `len == 0`; the `mmap` errno otherwise.
    pub fn anonymous(len: usize) -> Result<GuestMapping, Errno> {
        if len == 0 {
            return Err(Errno::new(libc::EINVAL));
        }
        // SAFETY: mmap(2) with a NULL hint and MAP_ANONYMOUS|MAP_PRIVATE creates a new mapping
        // that aliases no existing Rust object; fd -1 and offset 0 are what MAP_ANONYMOUS
        // requires. The result is checked against MAP_FAILED before use.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        Self::from_mmap_result(p, len, None)
    }

    /// Maps `len` bytes of a guest_memfd created with `GUEST_MEMFD_FLAG_MMAP |
    /// GUEST_MEMFD_FLAG_INIT_SHARED` (`MAP_SHARED`, offset 0) and takes ownership of the fd.
    ///
    /// # Errors
    /// `EINVAL` for `len == 0` or `len` beyond the file's size (`fstat`; a guest_memfd's size
    /// is the one it was created with, and touching a mapping past the end of a file raises
    /// `SIGBUS`); the `fstat` or `mmap` errno otherwise (e.g. `ENODEV` when the guest_memfd
    /// was created without `GUEST_MEMFD_FLAG_MMAP`).
    pub fn from_guest_memfd(fd: OwnedFd, len: usize) -> Result<GuestMapping, Errno> {
        if len == 0 {
            return Err(Errno::new(libc::EINVAL));
        }
        let file_size = file_size(&fd)?;
        if u64::try_from(len).map_or(true, |l| l > file_size) {
            return Err(Errno::new(libc::EINVAL));
        }
        Self::map_shared_fd(fd, len)
    }

    /// [`GuestMapping::from_guest_memfd`] without the `fstat`, for a guest_memfd this module
    /// just created with a size of at least `len` bytes (`sys::kvm::Vm::map_new_guest_memfd`).
    /// The caller guarantees that size: a mapping past the end of the file would raise
    /// `SIGBUS` when touched.
    ///
    /// # Errors
    /// `EINVAL` for `len == 0`; the `mmap` errno otherwise.
    pub(super) fn from_new_guest_memfd(fd: OwnedFd, len: usize) -> Result<GuestMapping, Errno> {
        if len == 0 {
            return Err(Errno::new(libc::EINVAL));
        }
        Self::map_shared_fd(fd, len)
    }

    /// `mmap(MAP_SHARED)` of `[0, len)` of `fd`, which both callers have checked lies inside
    /// the file and is non-empty.
    fn map_shared_fd(fd: OwnedFd, len: usize) -> Result<GuestMapping, Errno> {
        // SAFETY: mmap(2) with a NULL hint creates a new mapping aliasing no Rust object; `fd`
        // is an open file owned by us for the whole call; `[0, len)` lies inside the file
        // (checked against `fstat` by `from_guest_memfd`, or the size the guest_memfd was just
        // created with for `from_new_guest_memfd`; a guest_memfd cannot shrink: KVM refuses to
        // truncate it), and KVM rejects the mmap (checked below) if the file does not support
        // it.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        Self::from_mmap_result(p, len, Some(fd))
    }

    fn from_mmap_result(
        p: *mut libc::c_void,
        len: usize,
        gmem: Option<OwnedFd>,
    ) -> Result<GuestMapping, Errno> {
        if p == libc::MAP_FAILED {
            return Err(Errno::last());
        }
        let ptr = NonNull::new(p.cast::<u8>()).ok_or(Errno::new(libc::ENOMEM))?;
        Ok(GuestMapping { ptr, len, gmem })
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping is empty (never: constructors refuse 0).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The host virtual address (for `userspace_addr` of a memslot).
    pub fn host_addr(&self) -> u64 {
        self.ptr.as_ptr() as u64
    }

    /// The guest_memfd backing this mapping, if any.
    pub fn guest_memfd(&self) -> Option<&OwnedFd> {
        self.gmem.as_ref()
    }

    /// Bytes of this mapping resident in memory: the pages allocated in its guest_memfd, or
    /// for anonymous memory the pages `mincore(2)` reports resident (untouched
    /// `MAP_NORESERVE` pages cost nothing). Takes one system call; `mincore` needs a byte per
    /// page of scratch memory (64 KiB for 256 MiB of guest RAM).
    ///
    /// # Errors
    /// The `fstat` or `mincore` errno.
    pub fn resident_bytes(&self) -> Result<u64, Errno> {
        if let Some(fd) = &self.gmem {
            return file_allocated_bytes(fd);
        }
        let pages = self.len.div_ceil(4096);
        let mut vec = vec![0u8; pages];
        // SAFETY: mincore(2) needs a page-aligned address range of this process and a
        // writable vector of one byte per page: `ptr`/`len` are our live mmap (page-aligned,
        // mapped until drop), and `vec` has `len.div_ceil(4096)` bytes (x86-64 pages are 4
        // KiB). It only writes `vec`.
        let rc = unsafe { libc::mincore(self.ptr.as_ptr().cast(), self.len, vec.as_mut_ptr()) };
        if rc != 0 {
            return Err(Errno::last());
        }
        let resident = vec.iter().filter(|&&b| b & 1 != 0).count() as u64;
        Ok(resident.saturating_mul(4096))
    }

    fn check(&self, offset: u64, len: usize) -> Result<usize, OutOfRange> {
        let err = OutOfRange {
            offset,
            len: len as u64,
            size: self.len as u64,
        };
        let start = usize::try_from(offset).map_err(|_| err)?;
        let end = start.checked_add(len).ok_or(err)?;
        if end > self.len {
            return Err(err);
        }
        Ok(start)
    }

    /// Copies `data` into the mapping at `offset`.
    ///
    /// # Errors
    /// [`OutOfRange`] if `[offset, offset + data.len())` is not inside the mapping.
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<(), OutOfRange> {
        let start = self.check(offset, data.len())?;
        // SAFETY: copy_nonoverlapping needs a readable source and a writable destination of
        // `data.len()` bytes that do not overlap: `data` is a Rust slice; the destination `[start,
        // start + len)` was bounds-checked against our live PROT_WRITE mapping (kept mapped by
        // `self` until drop); a Rust slice never points into a guest mapping (no method creates
        // references into it), so they cannot overlap. The guest (vCPUs in KVM, outside the Rust
        // abstract machine, like a peer process sharing memory) may write these bytes while we
        // copy: they may then end up a mix of ours and the guest's, which is sound because the
        // bytes are plain `u8` (every value valid), they are only reached through this raw pointer
        // for the duration of the copy (no Rust reference into the mapping exists, so no aliasing
        // or immutability guarantee is broken), and callers treat the result as untrusted input.
        unsafe {
            std::ptr::copy_nonoverlapping(
                data.as_ptr(),
                self.ptr.as_ptr().wrapping_add(start),
                data.len(),
            )
        };
        Ok(())
    }

    /// Fills `[offset, offset + len)` with zeros.
    ///
    /// # Errors
    /// [`OutOfRange`] if the range is not inside the mapping.
    pub fn fill_zero(&self, offset: u64, len: usize) -> Result<(), OutOfRange> {
        let start = self.check(offset, len)?;
        // SAFETY: write_bytes needs `len` writable bytes at the destination: bounds-checked
        // against our live PROT_WRITE mapping above. The guest (vCPUs in KVM, outside the Rust
        // abstract machine, like a peer process sharing memory) may write these bytes while we
        // zero them: they may then end up a mix of zeros and the guest's, which is sound because
        // the bytes are plain `u8` (every value valid), they are only reached through this raw
        // pointer for the duration of the copy (no Rust reference into the mapping exists, so no
        // aliasing or immutability guarantee is broken), and callers treat the result as untrusted
        // input.
        unsafe { std::ptr::write_bytes(self.ptr.as_ptr().wrapping_add(start), 0, len) };
        Ok(())
    }

    /// Copies `buf.len()` bytes at `offset` out of the mapping.
    ///
    /// # Errors
    /// [`OutOfRange`] if the range is not inside the mapping.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), OutOfRange> {
        let start = self.check(offset, buf.len())?;
        // SAFETY: copy_nonoverlapping needs a readable source and writable destination of
        // `buf.len()` bytes that do not overlap: the source was bounds-checked against our live
        // PROT_READ mapping; `buf` is a Rust slice, which never points into a guest mapping. The
        // guest (vCPUs in KVM, outside the Rust abstract machine, like a peer process sharing
        // memory) may write these bytes while we copy: the copy may then see a mix of old and new
        // bytes, which is sound because the bytes are plain `u8` (every value valid), they are
        // only reached through this raw pointer for the duration of the copy (no Rust reference
        // into the mapping exists, so no aliasing or immutability guarantee is broken), and
        // callers treat the result as untrusted input.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.ptr.as_ptr().wrapping_add(start),
                buf.as_mut_ptr(),
                buf.len(),
            )
        };
        Ok(())
    }
}

/// Bytes of memory `fd` holds: `st_blocks` × 512 of `fstat(2)` (for a guest_memfd or memfd:
/// the pages allocated in it).
///
/// # Errors
/// The `fstat` errno.
pub fn file_allocated_bytes(fd: &OwnedFd) -> Result<u64, Errno> {
    let st = fstat(fd)?;
    Ok(u64::try_from(st.st_blocks).unwrap_or(0).saturating_mul(512))
}

/// `st_size` of `fd` (`fstat(2)`).
pub(super) fn file_size(fd: &OwnedFd) -> Result<u64, Errno> {
    u64::try_from(fstat(fd)?.st_size).map_err(|_| Errno::new(libc::EINVAL))
}

fn fstat(fd: &OwnedFd) -> Result<libc::stat, Errno> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat(2) needs an open fd and a writable `struct stat` buffer: `fd` is borrowed
    // open for the call, and `st` is a properly sized and aligned `libc::stat`.
    let rc = unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(Errno::last());
    }
    // SAFETY: fstat returned 0, so it filled the whole buffer.
    Ok(unsafe { st.assume_init() })
}

impl Drop for GuestMapping {
    fn drop(&mut self) {
        // SAFETY: munmap(2) needs an address range this process mapped and no live references
        // into it: `ptr`/`len` are exactly what mmap returned, we never hand out references,
        // and every memslot that points at it belongs to a VM whose fds (VM and vCPUs) hold an
        // `Arc` of this mapping (`sys::kvm::Vm`, `sys::kvm::Vcpu`), so no guest can run on it
        // any more once this drop runs.
        let rc = unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
        debug_assert_eq!(rc, 0, "munmap of a mapping we own cannot fail");
        // `gmem` (if any) closes after the unmap, when the fields drop.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anonymous_is_zeroed_and_bounds_checked() {
        let m = GuestMapping::anonymous(8192).unwrap();
        let mut b = [1u8; 16];
        m.read(4096, &mut b).unwrap();
        assert_eq!(b, [0u8; 16]);
        m.write(8190, &[7, 8]).unwrap();
        m.read(8190, &mut b[..2]).unwrap();
        assert_eq!(&b[..2], &[7, 8]);
        assert!(m.write(8191, &[1, 2]).is_err());
        assert!(m.read(u64::MAX, &mut b[..1]).is_err());
        assert!(m.fill_zero(8000, 193).is_err());
        m.fill_zero(8190, 2).unwrap();
        m.read(8190, &mut b[..2]).unwrap();
        assert_eq!(&b[..2], &[0, 0]);
        assert!(GuestMapping::anonymous(0).is_err());
        // Only page 1 was written (bytes 8190..8192); page 0 was read (the shared zero
        // page, not resident memory of ours).
        assert_eq!(m.resident_bytes().unwrap(), 4096);
        let big = GuestMapping::anonymous(64 << 20).unwrap();
        assert_eq!(big.resident_bytes().unwrap(), 0);
        big.write(1 << 20, &[1]).unwrap();
        assert_eq!(big.resident_bytes().unwrap(), 4096);
    }

    #[test]
    fn file_mapping_must_lie_inside_the_file() {
        let path = std::env::temp_dir().join(format!("relaunch-mem-{}", std::process::id()));
        let file = || {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)
                .unwrap();
            f.set_len(8192).unwrap();
            OwnedFd::from(f)
        };
        assert_eq!(
            GuestMapping::from_guest_memfd(file(), 8192 + 4096).unwrap_err(),
            Errno::new(libc::EINVAL)
        );
        assert_eq!(
            GuestMapping::from_guest_memfd(file(), 0).unwrap_err(),
            Errno::new(libc::EINVAL)
        );
        let m = GuestMapping::from_guest_memfd(file(), 8192).unwrap();
        m.write(8190, &[5, 6]).unwrap();
        let mut b = [0u8; 2];
        m.read(8190, &mut b).unwrap();
        assert_eq!(b, [5, 6]);
        drop(m);
        let _ = std::fs::remove_file(&path);
    }
}
