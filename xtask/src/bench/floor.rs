//! The raw KVM floor: the least any VMM must do to get a fresh VM to its first guest
//! instruction on this host, with no relaunch code: `KVM_CREATE_VM`, one mapping of guest
//! RAM (the tiny guest page copied to its top), one `KVM_SET_USER_MEMORY_REGION2` ending at
//! 4 GiB (so the reset vector is inside it), `KVM_CREATE_VCPU` (+ its `kvm_run` mmap, as
//! kvm-ioctls does it), and `KVM_RUN` until the first exit, which must be the guest's
//! boot-marker `out 0x80`. Each step is timed; tearing the VM down (closing the vCPU and VM
//! fds, unmapping memory) is timed separately: it is off relaunch's critical path.
//!
//! This is the only code in xtask with `unsafe`: the memslot call is an `unsafe fn` in
//! kvm-ioctls (the kernel gets a raw pointer), the mappings are raw `mmap`s, and a
//! guest_memfd number is wrapped in an `OwnedFd`.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use kvm_bindings::{kvm_create_guest_memfd, kvm_userspace_memory_region2, KVM_MEM_GUEST_MEMFD};
use kvm_ioctls::{Kvm, VcpuExit};

use super::guest::{self, PAGE_SIZE};

/// `GUEST_MEMFD_FLAG_MMAP` (Linux 6.18 `include/uapi/linux/kvm.h`; not in kvm-bindings 0.14).
const GUEST_MEMFD_FLAG_MMAP: u64 = 1 << 0;
/// `GUEST_MEMFD_FLAG_INIT_SHARED` (Linux 6.18 `include/uapi/linux/kvm.h`).
const GUEST_MEMFD_FLAG_INIT_SHARED: u64 = 1 << 1;

/// How the floor backs guest RAM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backing {
    /// Anonymous private memory (`MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE`), a plain
    /// `KVM_SET_USER_MEMORY_REGION2` slot: the true minimum.
    Anonymous,
    /// A guest_memfd created with `MMAP | INIT_SHARED`, mapped `MAP_SHARED` and given as the
    /// slot's `userspace_addr` with `KVM_MEM_GUEST_MEMFD` (what relaunch does on this host,
    /// see DESIGN.md "This host"): one more ioctl on the critical path.
    GuestMemfd,
}

impl Backing {
    /// Name for the report.
    pub fn name(self) -> &'static str {
        match self {
            Backing::Anonymous => "anonymous memory",
            Backing::GuestMemfd => "guest_memfd (MMAP|INIT_SHARED)",
        }
    }
}

/// Timings of one floor cycle.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cycle {
    /// `KVM_CREATE_VM`.
    pub create_vm: Duration,
    /// [`KVM_CREATE_GUEST_MEMFD` +] `mmap` of guest RAM + copying the guest page into it.
    pub memory: Duration,
    /// `KVM_SET_USER_MEMORY_REGION2`.
    pub memslot: Duration,
    /// `KVM_CREATE_VCPU` + `kvm_run` mmap.
    pub vcpu: Duration,
    /// `KVM_RUN` until the boot-marker exit.
    pub first_run: Duration,
    /// Dropping the vCPU, the VM and the mapping (off the critical path).
    pub teardown: Duration,
}

impl Cycle {
    /// Everything a relaunch must wait for: all steps but teardown.
    pub fn critical_path(&self) -> Duration {
        self.create_vm + self.memory + self.memslot + self.vcpu + self.first_run
    }
}

/// A guest-RAM mapping (anonymous, or of a guest_memfd it owns), unmapped on drop.
struct Mapping {
    addr: *mut libc::c_void,
    len: usize,
    /// The guest_memfd this maps (closed after the unmap, in `drop`).
    gmem: Option<OwnedFd>,
}

impl Mapping {
    fn anonymous(len: usize) -> anyhow::Result<Mapping> {
        // SAFETY: mmap(2) with a null hint, MAP_PRIVATE|MAP_ANONYMOUS and fd -1 creates a
        // new mapping and touches no existing memory; the result is checked for MAP_FAILED
        // before use.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error()).context("mmap guest RAM");
        }
        Ok(Mapping {
            addr,
            len,
            gmem: None,
        })
    }

    fn guest_memfd(fd: OwnedFd, len: usize) -> anyhow::Result<Mapping> {
        // SAFETY: mmap(2) with a null hint creates a new mapping aliasing no Rust object;
        // `fd` is an open guest_memfd of exactly `len` bytes that we own for the whole call
        // (offset 0 + len lies inside it); the result is checked for MAP_FAILED before use.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error()).context("mmap guest_memfd");
        }
        Ok(Mapping {
            addr,
            len,
            gmem: Some(fd),
        })
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `addr` is a live, readable and writable mapping of `len` bytes owned by
        // `self` (created in `new`, unmapped only in `drop`), and the `&mut self` borrow
        // makes this the only reference to it for the slice's lifetime.
        unsafe { std::slice::from_raw_parts_mut(self.addr.cast::<u8>(), self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `addr`/`len` describe exactly the mapping created in `new`, which nothing
        // else unmaps; no slice into it outlives `self`.
        unsafe {
            libc::munmap(self.addr, self.len);
        }
    }
}

/// Runs one floor cycle with `mem_bytes` of guest RAM (a multiple of 4 KiB, ≤ 4 GiB).
pub fn cycle(
    kvm: &Kvm,
    mem_bytes: u64,
    backing: Backing,
    page: &[u8; PAGE_SIZE],
) -> anyhow::Result<Cycle> {
    let len = usize::try_from(mem_bytes).context("memory size")?;
    if mem_bytes < PAGE_SIZE as u64
        || mem_bytes > (1 << 32)
        || !mem_bytes.is_multiple_of(PAGE_SIZE as u64)
    {
        bail!("floor memory size {mem_bytes} must be a 4 KiB multiple in [4 KiB, 4 GiB]");
    }
    let gpa = (1u64 << 32) - mem_bytes;
    let mut c = Cycle::default();

    let t = Instant::now();
    let vm = kvm.create_vm().context("KVM_CREATE_VM")?;
    c.create_vm = t.elapsed();

    let t = Instant::now();
    let mut mem = match backing {
        Backing::Anonymous => Mapping::anonymous(len)?,
        Backing::GuestMemfd => {
            let raw = vm
                .create_guest_memfd(kvm_create_guest_memfd {
                    size: mem_bytes,
                    flags: GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED,
                    ..Default::default()
                })
                .context("KVM_CREATE_GUEST_MEMFD")?;
            // SAFETY: from_raw_fd needs an open fd owned by nobody else: the ioctl just
            // returned it (errors were returned above) and kvm-ioctls leaves it to the caller.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            Mapping::guest_memfd(fd, len)?
        }
    };
    let top = len - PAGE_SIZE;
    mem.as_mut_slice()[top..].copy_from_slice(page);
    c.memory = t.elapsed();

    let (flags, guest_memfd) = match &mem.gmem {
        Some(fd) => (
            KVM_MEM_GUEST_MEMFD,
            u32::try_from(fd.as_raw_fd()).context("guest_memfd number")?,
        ),
        None => (0, 0),
    };
    let region = kvm_userspace_memory_region2 {
        slot: 0,
        flags,
        guest_phys_addr: gpa,
        memory_size: mem_bytes,
        userspace_addr: mem.addr as u64,
        guest_memfd_offset: 0,
        guest_memfd,
        ..Default::default()
    };
    let t = Instant::now();
    // SAFETY: kvm-ioctls `set_user_memory_region2` requires that `userspace_addr` points to
    // valid memory of `memory_size` bytes for as long as the kernel uses it, that the region
    // overlaps no other slot, and that a flagged `guest_memfd` is this VM's and covers
    // `[offset, offset + size)`. `mem` is a live mapping of exactly that size, dropped only
    // after `vm` (teardown below: `vcpu`, then `vm`, then `mem`); this VM has no other slot;
    // the guest_memfd was created on this VM with `mem_bytes` and is what `mem` maps.
    unsafe { vm.set_user_memory_region2(region) }.context("KVM_SET_USER_MEMORY_REGION2")?;
    c.memslot = t.elapsed();

    let t = Instant::now();
    let mut vcpu = vm.create_vcpu(0).context("KVM_CREATE_VCPU")?;
    c.vcpu = t.elapsed();

    let t = Instant::now();
    let exit = vcpu.run().context("KVM_RUN")?;
    c.first_run = t.elapsed();
    match exit {
        VcpuExit::IoOut(port, _) if port == guest::MARKER_PORT => {}
        VcpuExit::IoOut(port, _) => bail!("floor: first exit is an out to port {port:#x}"),
        other => bail!("floor: first exit is {other:?}, not the boot marker"),
    }

    let t = Instant::now();
    drop(vcpu);
    drop(vm);
    drop(mem);
    c.teardown = t.elapsed();
    Ok(c)
}

/// Diagnostic: time of `KVM_CREATE_IRQCHIP` + one anonymous `mem_bytes` memslot at GPA 0
/// on a fresh VM, with the irqchip created `before` or after the memslot (VM creation and
/// teardown not included). On this host the order matters: see docs/benchmarks.md.
pub fn irqchip_and_memslot(kvm: &Kvm, mem_bytes: u64, before: bool) -> anyhow::Result<Duration> {
    let len = usize::try_from(mem_bytes).context("memory size")?;
    let vm = kvm.create_vm().context("KVM_CREATE_VM")?;
    let mem = Mapping::anonymous(len)?;
    let region = kvm_userspace_memory_region2 {
        slot: 0,
        guest_phys_addr: 0,
        memory_size: mem_bytes,
        userspace_addr: mem.addr as u64,
        ..Default::default()
    };
    let t = Instant::now();
    if before {
        vm.create_irq_chip().context("KVM_CREATE_IRQCHIP")?;
    }
    // SAFETY: as in `cycle`: `mem` is a live mapping of exactly `memory_size` bytes that
    // outlives `vm` (dropped after it, below), and this VM has no other slot.
    unsafe { vm.set_user_memory_region2(region) }.context("KVM_SET_USER_MEMORY_REGION2")?;
    if !before {
        vm.create_irq_chip().context("KVM_CREATE_IRQCHIP")?;
    }
    let d = t.elapsed();
    drop(vm);
    drop(mem);
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn critical_path_excludes_teardown() {
        let ms = Duration::from_millis;
        let c = Cycle {
            create_vm: ms(1),
            memory: ms(2),
            memslot: ms(3),
            vcpu: ms(4),
            first_run: ms(5),
            teardown: ms(100),
        };
        assert_eq!(c.critical_path(), ms(15));
    }

    /// On a host with /dev/kvm, one real cycle must reach the boot marker.
    #[test]
    fn one_cycle_on_kvm() {
        let Ok(kvm) = Kvm::new() else {
            eprintln!("SKIPPED: no /dev/kvm");
            return;
        };
        let page = guest::page(guest::Ending::ResetCf9);
        for b in [Backing::Anonymous, Backing::GuestMemfd] {
            let c = cycle(&kvm, 2 << 20, b, &page).unwrap();
            assert!(c.critical_path() > Duration::ZERO);
            assert!(cycle(&kvm, 4095, b, &page).is_err());
        }
        for before in [true, false] {
            assert!(irqchip_and_memslot(&kvm, 2 << 20, before).unwrap() > Duration::ZERO);
        }
    }
}
