//! The raw KVM floor: what a VMM must do to get a fresh VM to its first guest instruction on
//! this host, with no relaunch code, in two flavours ([`Work`]):
//!
//! - [`Work::Minimal`], the least any VMM can do: `KVM_CREATE_VM`, one mapping of guest RAM
//!   (the tiny guest page copied to its top), one `KVM_SET_USER_MEMORY_REGION2` ending at
//!   4 GiB (so the reset vector is inside it), `KVM_CREATE_VCPU` (+ its `kvm_run` mmap, as
//!   kvm-ioctls does it), and `KVM_RUN` until the first exit, which must be the guest's
//!   boot-marker `out 0x80`.
//! - [`Work::SameAsRelaunch`], the same KVM work a relaunch of the tiny guest does, in
//!   relaunch's order: `KVM_CREATE_VM`; guest RAM `[0, mem)` and the guest page's own 4 KiB
//!   range at `0xFFFFF000` (the bundle's `MapRam`), each its own mapping and memslot with the
//!   same backing; `KVM_CREATE_IRQCHIP` after the memslots; `KVM_CREATE_VCPU` +
//!   `KVM_SET_CPUID2` (the host's supported CPUID); `KVM_RUN` to the marker. Only the plan's
//!   register loads are left out: the tiny guest's VP context is the reset state a fresh
//!   vCPU already has, but for RDX (KVM: 0x600, the plan: 0), so relaunch does one
//!   `KVM_SET_REGS` more (it skips register files equal to the reset state).
//!
//! Each step is timed; tearing the VM down (closing the vCPU and VM fds, unmapping memory)
//! is timed separately, or handed to another thread ([`cycle_live`]) the way relaunch's
//! reaper does it: it is off relaunch's critical path.
//!
//! It goes through relaunch's thin safe wrappers of those very syscalls in
//! `vmm/src/sys/` ([`GuestMapping`], [`Vm`], [`Vcpu`]: the project's `unsafe` lives only
//! there), never through relaunch's backend, session or plan code; the wrappers add no
//! system call (only an `Arc` push that keeps each mapping alive as long as its memslot).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use kvm_bindings::CpuId;
use kvm_ioctls::VcpuExit;
use relaunch::sys::kvm::{
    Kvm, Vcpu, Vm, GUEST_MEMFD_FLAG_INIT_SHARED, GUEST_MEMFD_FLAG_MMAP, KVM_CAP_GUEST_MEMFD_FLAGS,
    KVM_X86_DEFAULT_VM,
};
use relaunch::sys::mem::GuestMapping;

use super::guest::{self, PAGE_SIZE};

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

/// How much work a floor cycle does (module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Work {
    /// One memslot, no irqchip, no CPUID.
    Minimal,
    /// relaunch's memslots (RAM at 0 + the page's range), irqchip, CPUID.
    SameAsRelaunch,
}

/// The backing relaunch picks on this host (`vmm/src/vstate.rs` `Host::open`): a guest_memfd
/// when KVM offers both `MMAP` and `INIT_SHARED`, anonymous memory otherwise.
pub fn relaunch_backing(kvm: &Kvm) -> Backing {
    let want = GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED;
    let flags = u64::try_from(kvm.check_extension(KVM_CAP_GUEST_MEMFD_FLAGS)).unwrap_or(0);
    if flags & want == want {
        Backing::GuestMemfd
    } else {
        Backing::Anonymous
    }
}

/// Timings of one floor cycle.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cycle {
    /// `KVM_CREATE_VM`.
    pub create_vm: Duration,
    /// [`KVM_CREATE_GUEST_MEMFD` +] `mmap` of guest RAM + copying the guest page into it.
    pub memory: Duration,
    /// `KVM_SET_USER_MEMORY_REGION2` (every slot).
    pub memslot: Duration,
    /// `KVM_CREATE_IRQCHIP` ([`Work::SameAsRelaunch`] only).
    pub irqchip: Duration,
    /// `KVM_CREATE_VCPU` + `kvm_run` mmap [+ `KVM_SET_CPUID2`].
    pub vcpu: Duration,
    /// `KVM_RUN` until the boot-marker exit.
    pub first_run: Duration,
    /// Dropping the vCPU, the VM and the mappings (off the critical path; zero when the
    /// teardown was handed to another thread).
    pub teardown: Duration,
}

/// A VM left running by [`cycle_live`]; dropping it tears it down (the vCPU, then the VM;
/// the mappings go with the last of the two, which hold them: `sys::kvm`).
pub struct Live {
    _vcpu: Vcpu,
    _vm: Vm,
}

impl Cycle {
    /// Everything a relaunch must wait for: all steps but teardown.
    pub fn critical_path(&self) -> Duration {
        self.create_vm + self.memory + self.memslot + self.irqchip + self.vcpu + self.first_run
    }
}

/// Runs one floor cycle with `mem_bytes` of guest RAM (a multiple of 4 KiB, ≤ 3 GiB) and
/// tears the VM down, timed.
pub fn cycle(
    kvm: &Kvm,
    mem_bytes: u64,
    backing: Backing,
    work: Work,
    cpuid: &CpuId,
    page: &[u8; PAGE_SIZE],
) -> anyhow::Result<Cycle> {
    let (mut c, live) = cycle_live(kvm, mem_bytes, backing, work, cpuid, page)?;
    let t = Instant::now();
    drop(live);
    c.teardown = t.elapsed();
    Ok(c)
}

/// A guest-RAM mapping of `len` bytes with `backing` (a guest_memfd is created on `vm`).
fn map(vm: &Vm, len: usize, backing: Backing) -> anyhow::Result<GuestMapping> {
    match backing {
        Backing::Anonymous => GuestMapping::anonymous(len).context("mmap guest RAM"),
        Backing::GuestMemfd => vm
            .map_new_guest_memfd(len, GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED)
            .context("KVM_CREATE_GUEST_MEMFD + mmap"),
    }
}

/// One floor cycle up to the boot marker; the VM is returned alive (its teardown is the
/// caller's: inline in [`cycle`], or on another thread).
pub fn cycle_live(
    kvm: &Kvm,
    mem_bytes: u64,
    backing: Backing,
    work: Work,
    cpuid: &CpuId,
    page: &[u8; PAGE_SIZE],
) -> anyhow::Result<(Cycle, Live)> {
    let len = usize::try_from(mem_bytes).context("memory size")?;
    if mem_bytes < PAGE_SIZE as u64
        || mem_bytes > (3 << 30)
        || !mem_bytes.is_multiple_of(PAGE_SIZE as u64)
    {
        bail!("floor memory size {mem_bytes} must be a 4 KiB multiple in [4 KiB, 3 GiB]");
    }
    let mut c = Cycle::default();

    let t = Instant::now();
    let mut vm = kvm.create_vm(KVM_X86_DEFAULT_VM).context("KVM_CREATE_VM")?;
    c.create_vm = t.elapsed();

    // (gpa, mapping) per memslot; the page goes to the top of the last one.
    let t = Instant::now();
    let mems: Vec<(u64, GuestMapping)> = match work {
        Work::Minimal => vec![((1u64 << 32) - mem_bytes, map(&vm, len, backing)?)],
        Work::SameAsRelaunch => vec![
            (0, map(&vm, len, backing)?),
            (guest::PAGE_GPA, map(&vm, PAGE_SIZE, backing)?),
        ],
    };
    if let Some((_, last)) = mems.last() {
        let top = (last.len() - PAGE_SIZE) as u64;
        last.write(top, page).context("guest page")?;
    }
    let mems: Vec<(u64, Arc<GuestMapping>)> = mems
        .into_iter()
        .map(|(gpa, m)| (gpa, Arc::new(m)))
        .collect();
    c.memory = t.elapsed();

    // Slots 0, 1, ... in order (`Vm::add_memslot`); each mapping's range is a disjoint GPA
    // range (RAM ≤ 3 GiB, the page at 4 GiB - 4 KiB).
    let t = Instant::now();
    for (gpa, mem) in mems {
        vm.add_memslot(gpa, mem.len() as u64, Some(&mem), None)
            .context("KVM_SET_USER_MEMORY_REGION2")?;
    }
    c.memslot = t.elapsed();

    if work == Work::SameAsRelaunch {
        let t = Instant::now();
        vm.create_irqchip().context("KVM_CREATE_IRQCHIP")?;
        c.irqchip = t.elapsed();
    }

    let t = Instant::now();
    let mut vcpu = vm.create_vcpu(0).context("KVM_CREATE_VCPU")?;
    if work == Work::SameAsRelaunch {
        vcpu.set_cpuid2(cpuid).context("KVM_SET_CPUID2")?;
    }
    c.vcpu = t.elapsed();

    let t = Instant::now();
    let exit = vcpu.run().context("KVM_RUN")?;
    c.first_run = t.elapsed();
    match exit {
        VcpuExit::IoOut(port, _) if port == guest::MARKER_PORT => {}
        VcpuExit::IoOut(port, _) => bail!("floor: first exit is an out to port {port:#x}"),
        other => bail!("floor: first exit is {other:?}, not the boot marker"),
    }
    Ok((
        c,
        Live {
            _vcpu: vcpu,
            _vm: vm,
        },
    ))
}

/// Diagnostic: time of `KVM_CREATE_IRQCHIP` + one anonymous `mem_bytes` memslot at GPA 0
/// on a fresh VM, with the irqchip created `before` or after the memslot (VM creation and
/// teardown not included). On this host the order matters: see docs/benchmarks.md.
pub fn irqchip_and_memslot(kvm: &Kvm, mem_bytes: u64, before: bool) -> anyhow::Result<Duration> {
    let len = usize::try_from(mem_bytes).context("memory size")?;
    let mut vm = kvm.create_vm(KVM_X86_DEFAULT_VM).context("KVM_CREATE_VM")?;
    let mem = Arc::new(GuestMapping::anonymous(len).context("mmap guest RAM")?);
    let t = Instant::now();
    if before {
        vm.create_irqchip().context("KVM_CREATE_IRQCHIP")?;
    }
    vm.add_memslot(0, mem.len() as u64, Some(&mem), None)
        .context("KVM_SET_USER_MEMORY_REGION2")?;
    if !before {
        vm.create_irqchip().context("KVM_CREATE_IRQCHIP")?;
    }
    let d = t.elapsed();
    drop(vm);
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
            irqchip: ms(0),
            vcpu: ms(4),
            first_run: ms(5),
            teardown: ms(100),
        };
        assert_eq!(c.critical_path(), ms(15));
    }

    /// On a host with /dev/kvm, one real cycle must reach the boot marker.
    #[test]
    fn one_cycle_on_kvm() {
        let Ok(kvm) = Kvm::open() else {
            eprintln!("SKIPPED: no /dev/kvm");
            return;
        };
        let page = guest::page(guest::Ending::ResetCf9);
        // guest_memfd only where this host's KVM offers MMAP|INIT_SHARED (machines here
        // differ); anonymous memory always.
        let mut backings = vec![Backing::Anonymous];
        if relaunch_backing(&kvm) == Backing::GuestMemfd {
            backings.push(Backing::GuestMemfd);
        } else {
            eprintln!(
                "SKIPPED (guest_memfd part): KVM offers no guest_memfd with MMAP|INIT_SHARED"
            );
            assert!(cycle(
                &kvm,
                2 << 20,
                Backing::GuestMemfd,
                Work::Minimal,
                &kvm.supported_cpuid(256).unwrap(),
                &page
            )
            .is_err());
        }
        for b in backings {
            let cpuid = kvm.supported_cpuid(256).unwrap();
            for w in [Work::Minimal, Work::SameAsRelaunch] {
                let c = cycle(&kvm, 2 << 20, b, w, &cpuid, &page).unwrap();
                assert!(c.critical_path() > Duration::ZERO);
                assert_eq!(c.irqchip.is_zero(), w == Work::Minimal);
                assert!(cycle(&kvm, 4095, b, w, &cpuid, &page).is_err());
            }
        }
        for before in [true, false] {
            assert!(irqchip_and_memslot(&kvm, 2 << 20, before).unwrap() > Duration::ZERO);
        }
    }
}
