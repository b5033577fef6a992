//! The raw KVM floor: the least any VMM must do to get a fresh VM to its first guest
//! instruction on this host, with no relaunch code: `KVM_CREATE_VM`, one anonymous mapping
//! (the tiny guest page copied to its top), one `KVM_SET_USER_MEMORY_REGION` ending at
//! 4 GiB (so the reset vector is inside it), `KVM_CREATE_VCPU` (+ its `kvm_run` mmap, as
//! kvm-ioctls does it), and `KVM_RUN` until the first exit, which must be the guest's
//! boot-marker `out 0x80`. Each step is timed; tearing the VM down (closing the vCPU and VM
//! fds, unmapping memory) is timed separately: it is off relaunch's critical path.
//!
//! This is the only code in xtask with `unsafe`: the memslot call is an `unsafe fn` in
//! kvm-ioctls (the kernel gets a raw pointer), and the anonymous mapping is a raw `mmap`.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VcpuExit};

use super::guest::{self, PAGE_SIZE};

/// Timings of one floor cycle.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cycle {
    /// `KVM_CREATE_VM`.
    pub create_vm: Duration,
    /// Anonymous `mmap` of guest RAM + copying the guest page into it.
    pub memory: Duration,
    /// `KVM_SET_USER_MEMORY_REGION`.
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

/// An anonymous private mapping, unmapped on drop.
struct Anon {
    addr: *mut libc::c_void,
    len: usize,
}

impl Anon {
    fn new(len: usize) -> anyhow::Result<Anon> {
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
        Ok(Anon { addr, len })
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `addr` is a live, readable and writable mapping of `len` bytes owned by
        // `self` (created in `new`, unmapped only in `drop`), and the `&mut self` borrow
        // makes this the only reference to it for the slice's lifetime.
        unsafe { std::slice::from_raw_parts_mut(self.addr.cast::<u8>(), self.len) }
    }
}

impl Drop for Anon {
    fn drop(&mut self) {
        // SAFETY: `addr`/`len` describe exactly the mapping created in `new`, which nothing
        // else unmaps; no slice into it outlives `self`.
        unsafe {
            libc::munmap(self.addr, self.len);
        }
    }
}

/// Runs one floor cycle with `mem_bytes` of guest RAM (a multiple of 4 KiB, ≤ 4 GiB).
pub fn cycle(kvm: &Kvm, mem_bytes: u64, page: &[u8; PAGE_SIZE]) -> anyhow::Result<Cycle> {
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
    let mut mem = Anon::new(len)?;
    let top = len - PAGE_SIZE;
    mem.as_mut_slice()[top..].copy_from_slice(page);
    c.memory = t.elapsed();

    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: gpa,
        memory_size: mem_bytes,
        userspace_addr: mem.addr as u64,
    };
    let t = Instant::now();
    // SAFETY: kvm-ioctls `set_user_memory_region` requires that `userspace_addr` points to
    // valid memory of `memory_size` bytes for as long as the kernel uses it, and that the
    // region overlaps no other slot. `mem` is a live mapping of exactly that size and is
    // dropped only after `vm` (see the teardown below, where `vcpu` and `vm` go first); this
    // VM has no other slot.
    unsafe { vm.set_user_memory_region(region) }.context("KVM_SET_USER_MEMORY_REGION")?;
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
        let c = cycle(&kvm, 2 << 20, &page).unwrap();
        assert!(c.critical_path() > Duration::ZERO);
        assert!(cycle(&kvm, 4095, &page).is_err());
    }
}
