//! The native KVM backend: an ordinary KVM VM (type 0) running the bundle's native view.
//!
//! Phases (`super::Phases`, Firecracker-style, top to bottom): `create_vm` → VM fd;
//! `memory` → every memslot (guest RAM per the core's RAM layout and every range the plan's
//! `MapRam` ops ask for), all shared (host-mapped: anonymous memory, or a guest_memfd created
//! `MMAP | INIT_SHARED` where KVM offers it); `vcpus` → the in-kernel irqchip, then the vCPUs
//! with CPUID; `op` → `MapRam` only checks (its memslot exists already), `ImportPage` copies
//! bytes into the (fresh, zeroed) mapping, `SetVpContext` sets registers; `finish` → APs with
//! a context made runnable. vCPUs without a VP context keep KVM's reset state: vCPU 0 (the
//! BSP) starts at the reset vector, the others wait for INIT/SIPI in
//! `KVM_MP_STATE_UNINITIALIZED`; so do APs whose context is the planner's `VpSource::Reset`.
//!
//! Why every memslot comes before `KVM_CREATE_IRQCHIP`: on the nested `kvm_pvm` host this
//! was measured on, each memslot registered after the irqchip costs ≈ 7–9 ms (vs ≈ 0.05 ms
//! before it; `docs/benchmarks.md`, "Findings"). Everything that does not depend on the VM
//! fd (the memslot layout, the per-vCPU CPUID tables, the `KVM_GET_SREGS` template of a fresh
//! vCPU) is computed once per launch in [`Prepared`] and reused by every relaunch of it.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use kvm_bindings::{
    kvm_debugregs, kvm_dtable, kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, kvm_xcrs,
    CpuId, Msrs, KVM_MP_STATE_RUNNABLE,
};
use relaunch_core::arch::regs::{DescriptorTable, Segment, VpRegs};
use relaunch_core::limits::PAGE_SIZE;
use relaunch_core::plan::{LaunchOp, LaunchPlan, PageKind, Platform, VpSource};

use super::{kvm_err, Backend, BackendError, BuiltVm, ExecError, ExecTimings, Phases};
use crate::devices::Devices;
use crate::launch::Launch;
use crate::memory::{uncovered_by, GuestMemory, Region};
use crate::sys::kvm::{Vcpu, Vm, KVM_X86_DEFAULT_VM};
use crate::vcpu::{ExitHandler, NativeExits};
use crate::vstate::{ram_layout, Host};

/// `IA32_PAT` (Intel SDM Vol. 4, Table 2-2).
const MSR_IA32_PAT: u32 = 0x277;

/// How many launches' [`Prepared`] a backend keeps: a session runs one launch at a time,
/// but a one-shot hand-over alternates two (stage 1, stage 2, stage 1, …; `docs/fuki.md`),
/// and neither should pay for its preparation again.
pub const PREPARED_LAUNCHES: usize = 4;

/// The [`Prepared`] of the last [`PREPARED_LAUNCHES`] launches a backend built, shared by
/// every backend: computed once per launch, reused by its relaunches and the prestage
/// builder.
#[derive(Debug)]
pub struct PreparedCache {
    host: Arc<Host>,
    /// Most recently used last.
    last: Mutex<std::collections::VecDeque<(u64, Arc<Prepared>)>>,
}

impl PreparedCache {
    /// An empty cache for launches on `host`.
    pub fn new(host: Arc<Host>) -> PreparedCache {
        PreparedCache {
            host,
            last: Mutex::new(std::collections::VecDeque::new()),
        }
    }

    /// The host the launches are prepared for.
    pub fn host(&self) -> &Arc<Host> {
        &self.host
    }

    /// The [`Prepared`] of `launch`: cached, or computed.
    ///
    /// # Errors
    /// [`ExecError`] at the plan's `CreateVm` when this host cannot hold the launch (vCPUs,
    /// memslots): nothing was created.
    pub fn get(&self, launch: &Launch) -> Result<Arc<Prepared>, ExecError> {
        let mut cache = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(i) = cache.iter().position(|(id, _)| *id == launch.id()) {
            if let Some(hit) = cache.remove(i) {
                let p = Arc::clone(&hit.1);
                cache.push_back(hit);
                return Ok(p);
            }
        }
        let p = Prepared::new(&self.host, launch.plan()).map_err(|source| ExecError {
            index: 0,
            op: super::OpKind::CreateVm,
            source,
        })?;
        let p = Arc::new(p);
        cache.push_back((launch.id(), Arc::clone(&p)));
        while cache.len() > PREPARED_LAUNCHES {
            cache.pop_front();
        }
        Ok(p)
    }
}

/// The native backend: builds VMs for launches on one host.
#[derive(Debug)]
pub struct NativeBackend {
    prepared: PreparedCache,
}

impl NativeBackend {
    /// A native backend on `host`.
    pub fn new(host: Arc<Host>) -> NativeBackend {
        NativeBackend {
            prepared: PreparedCache::new(host),
        }
    }
}

impl Backend for NativeBackend {
    fn platform(&self) -> Platform {
        Platform::Native
    }

    fn memory_backing(&self) -> &'static str {
        self.prepared.host().backing.name()
    }

    fn build(&self, launch: &Launch) -> Result<BuiltVm, ExecError> {
        let plan = launch.plan();
        let prep = self.prepared.get(launch)?;
        let phases = NativeBuild {
            host: self.prepared.host(),
            prep: &prep,
            plan,
            launch_id: launch.id(),
            vm: None,
            vcpus: Vec::new(),
            memory: GuestMemory::default(),
            started: Vec::new(),
            timings: ExecTimings::default(),
            t0: Instant::now(),
        };
        super::run_phases(phases, plan)
    }

    fn exit_handler(
        &self,
        devices: Arc<Mutex<Devices>>,
        vm: &Vm,
        _memory: &Arc<GuestMemory>,
    ) -> Arc<dyn ExitHandler> {
        // The in-kernel irqchip (`vcpus`) takes the UART's IRQ 4.
        devices
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .connect_irq(Arc::new(vm.irq_line()));
        Arc::new(NativeExits::new(devices))
    }
}

/// What building a VM for one launch on one host needs that does not depend on the VM fd:
/// computed once per launch and shared by every build of it (also by the prestage builder).
#[derive(Debug)]
pub struct Prepared {
    mem_bytes: u64,
    /// Memslot ranges `(gpa, size)`, sorted: the RAM ranges, then the parts of every
    /// well-formed `MapRam` range not covered yet (in plan order).
    slots: Vec<(u64, u64)>,
    /// The `KVM_SET_CPUID2` table of each vCPU (APIC IDs patched in).
    cpuid: Vec<CpuId>,
    /// `KVM_GET_SREGS` and `KVM_GET_REGS` of a fresh vCPU, per vCPU index, learnt on the
    /// first build that needs them: the SREGS fields a VP context does not set (CR2, CR8,
    /// APIC base, pending IRQs), and what KVM's reset state already holds (a register file
    /// equal to it needs no ioctl).
    fresh: Mutex<Vec<Option<FreshRegs>>>,
}

impl Prepared {
    /// Prepares `plan` on `host`.
    ///
    /// # Errors
    /// [`BackendError::Memslots`] when the plan needs more memslots than the host's KVM
    /// offers; [`BackendError::VcpuCount`] for more vCPUs than it supports.
    pub fn new(host: &Host, plan: &LaunchPlan) -> Result<Prepared, BackendError> {
        let mem_bytes = plan.config().mem_bytes;
        let slots = slot_ranges(mem_bytes, plan.ops());
        if slots.len() > host.nr_memslots {
            return Err(BackendError::Memslots {
                need: slots.len(),
                have: host.nr_memslots,
            });
        }
        let vcpus = plan.config().vcpus;
        if vcpus as usize > host.max_vcpus {
            return Err(BackendError::VcpuCount(vcpus, host.max_vcpus));
        }
        let cpuid = (0..vcpus)
            .map(|id| {
                let mut c = host.cpuid.clone();
                for e in c.as_mut_slice() {
                    match e.function {
                        // CPUID.1:EBX[31:24] initial APIC ID (Intel SDM Vol. 2A, CPUID).
                        1 => e.ebx = (e.ebx & 0x00FF_FFFF) | (id << 24),
                        // CPUID.0Bh/1Fh:EDX x2APIC ID.
                        0xB | 0x1F => e.edx = id,
                        // A guest that is not a SEV guest must not be told the CPU has SEV:
                        // it would read SEV_STATUS, which KVM gives only SEV guests (KVM
                        // reports SEV, SEV-ES, SNP in 0x8000001F.EAX bits 1, 3, 4 on a SEV
                        // host; QEMU clears them unless the VM is SEV).
                        0x8000_001F if !plan.platform().is_confidential() => {
                            e.eax &= !((1 << 1) | (1 << 3) | (1 << 4));
                        }
                        _ => {}
                    }
                }
                if plan.platform() == Platform::Snp {
                    // What QEMU hides from every SNP guest (and so from its CPUID page).
                    super::snp_cpuid::mask_snp_features(c.as_mut_slice());
                }
                c
            })
            .collect();
        Ok(Prepared {
            mem_bytes,
            slots,
            cpuid,
            fresh: Mutex::new(vec![None; vcpus as usize]),
        })
    }

    /// The `KVM_SET_CPUID2` table of vCPU `vp` (`None` past the last vCPU).
    pub fn cpuid(&self, vp: u32) -> Option<&CpuId> {
        self.cpuid.get(vp as usize)
    }

    /// Guest RAM bytes.
    pub fn mem_bytes(&self) -> u64 {
        self.mem_bytes
    }

    /// The memslot ranges every build registers, `(gpa, size)`, by address.
    pub fn slots(&self) -> &[(u64, u64)] {
        &self.slots
    }

    /// The fresh-vCPU registers of vCPU `vp`: cached, or read from `vcpu` (which must be
    /// fresh: no register set yet) and cached.
    fn fresh_regs(&self, vp: u32, vcpu: &Vcpu) -> Result<FreshRegs, BackendError> {
        let lock = || self.fresh.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(f) = lock().get(vp as usize).copied().flatten() {
            return Ok(f);
        }
        let f = FreshRegs {
            sregs: vcpu.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?,
            regs: vcpu.get_regs().map_err(kvm_err("KVM_GET_REGS"))?,
        };
        if let Some(slot) = lock().get_mut(vp as usize) {
            *slot = Some(f);
        }
        Ok(f)
    }
}

impl Prepared {
    /// Creates every vCPU of the launch on `vm` with its CPUID (`KVM_CREATE_VCPU` +
    /// `KVM_SET_CPUID2`, `api.rst` 4.7, 4.89), then runs `then` on it (a platform's per-vCPU
    /// step, e.g. TDX's `INIT_VCPU`) before the next vCPU is created.
    ///
    /// # Errors
    /// The failing ioctl, or `then`'s error.
    pub fn create_vcpus(
        &self,
        vm: &Vm,
        mut then: impl FnMut(u32, &Vcpu) -> Result<(), BackendError>,
    ) -> Result<Vec<Vcpu>, BackendError> {
        let mut list = Vec::with_capacity(self.cpuid.len());
        for (id, cpuid) in (0u32..).zip(&self.cpuid) {
            let vcpu = vm
                .create_vcpu(u64::from(id))
                .map_err(kvm_err("KVM_CREATE_VCPU"))?;
            vcpu.set_cpuid2(cpuid).map_err(kvm_err("KVM_SET_CPUID2"))?;
            then(id, &vcpu)?;
            list.push(vcpu);
        }
        Ok(list)
    }

    /// Loads register set `ctx` of `plan` into vCPU `vp` of `vcpus` (fresh: no register set
    /// yet), setting only what differs from KVM's reset state ([`set_vp_regs`]).
    ///
    /// # Errors
    /// [`BackendError::Vp`] for an index out of range (a validated plan has none); the
    /// failing ioctl.
    pub fn load_context(
        &self,
        plan: &LaunchPlan,
        vcpus: &[Vcpu],
        vp: u32,
        ctx: u32,
    ) -> Result<(), BackendError> {
        let err = BackendError::Vp {
            vp,
            vcpus: vcpus.len() as u32,
        };
        let regs = plan.vp_context(ctx).ok_or(err)?;
        let vcpu = vcpus.get(vp as usize).ok_or(BackendError::Vp {
            vp,
            vcpus: vcpus.len() as u32,
        })?;
        self.load_regs(vcpu, vp, regs)
    }

    /// Loads `regs` into the fresh vCPU `vcpu` (index `vp`), as [`Prepared::load_context`].
    ///
    /// # Errors
    /// The failing ioctl.
    pub fn load_regs(&self, vcpu: &Vcpu, vp: u32, regs: &VpRegs) -> Result<(), BackendError> {
        let fresh = self.fresh_regs(vp, vcpu)?;
        set_vp_regs(vcpu, &fresh, regs)
    }
}

/// The registers of a vCPU right after `KVM_CREATE_VCPU` (KVM's reset state).
#[derive(Clone, Copy, Debug)]
pub struct FreshRegs {
    /// `KVM_GET_SREGS`.
    pub sregs: kvm_sregs,
    /// `KVM_GET_REGS`.
    pub regs: kvm_regs,
}

/// The memslot ranges `(gpa, size)` of a plan, sorted and disjoint: the RAM ranges of
/// `mem_bytes`, then the union of every well-formed `MapRam` range minus RAM. Sorts and merges
/// once (O(n log n)): a plan may map many ranges, and inserting each into a sorted list
/// after a scan would be quadratic.
fn slot_ranges(mem_bytes: u64, ops: &[LaunchOp]) -> Vec<(u64, u64)> {
    let ram = ram_layout(mem_bytes);
    let mut maps: Vec<(u64, u64)> = ops
        .iter()
        .filter_map(|op| match *op {
            LaunchOp::MapRam { gpa, size } if map_ram_ok(gpa, size) && size > 0 => {
                Some((gpa, gpa.saturating_add(size)))
            }
            _ => None,
        })
        .collect();
    maps.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(maps.len());
    for (start, end) in maps {
        match merged.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => merged.push((start, end)),
        }
    }
    let mut slots = ram.clone();
    for (start, end) in merged {
        slots.extend(uncovered_by(
            ram.iter().map(|&(g, s)| (g, g.saturating_add(s))),
            start,
            end.saturating_sub(start),
        ));
    }
    slots.sort_unstable();
    slots
}

/// Whether a `MapRam` range is well-formed: 4 KiB aligned, a 4 KiB multiple, not wrapping.
fn map_ram_ok(gpa: u64, size: u64) -> bool {
    gpa.is_multiple_of(PAGE_SIZE)
        && size.is_multiple_of(PAGE_SIZE)
        && gpa.checked_add(size).is_some()
}

/// One native build in progress (the phases of `super::Phases`).
struct NativeBuild<'b> {
    host: &'b Host,
    prep: &'b Prepared,
    plan: &'b LaunchPlan,
    launch_id: u64,
    vm: Option<Vm>,
    vcpus: Vec<Vcpu>,
    memory: GuestMemory,
    /// Per vCPU: a context from the bundle starts it without INIT/SIPI.
    started: Vec<bool>,
    timings: ExecTimings,
    t0: Instant,
}

/// A phase ran before `create_vm` (cannot happen through `super::run_phases`).
fn no_vm() -> BackendError {
    BackendError::Kvm {
        what: "no VM (create_vm did not run)",
        errno: crate::sys::Errno::new(libc::EINVAL),
    }
}

impl NativeBuild<'_> {
    /// One shared memslot of `size` bytes at `gpa`, with this host's RAM backing.
    fn add_region(&mut self, gpa: u64, size: u64) -> Result<(), BackendError> {
        let host = self.host;
        let vm = self.vm.as_mut().ok_or_else(no_vm)?;
        let mapping = Arc::new(
            host.map_ram(vm, size)
                .map_err(kvm_err("mapping guest RAM"))?,
        );
        vm.add_memslot(gpa, size, Some(&mapping), None)
            .map_err(kvm_err("KVM_SET_USER_MEMORY_REGION2"))?;
        self.memory.push(Region::shared(gpa, mapping));
        Ok(())
    }
}

impl Phases for NativeBuild<'_> {
    fn create_vm(&mut self) -> Result<(), BackendError> {
        if self.plan.config().platform != Platform::Native {
            return Err(BackendError::WrongPlatform {
                plan: self.plan.config().platform,
                backend: Platform::Native,
            });
        }
        let t = Instant::now();
        self.t0 = t;
        let vm = self
            .host
            .kvm
            .create_vm(KVM_X86_DEFAULT_VM)
            .map_err(kvm_err("KVM_CREATE_VM"))?;
        self.vm = Some(vm);
        self.timings.create_vm = t.elapsed();
        Ok(())
    }

    fn memory(&mut self) -> Result<(), BackendError> {
        // Every memslot before the irqchip (module doc).
        let t = Instant::now();
        for &(gpa, size) in self.prep.slots() {
            self.add_region(gpa, size)?;
        }
        self.timings.memslots = t.elapsed();
        Ok(())
    }

    fn vcpus(&mut self) -> Result<(), BackendError> {
        // In-kernel PIC/IOAPIC/LAPIC: needed for INIT/SIPI AP start-up and HLT in the kernel.
        // No PIT: its kernel timer thread would cost every relaunch; our guests use none.
        let t = Instant::now();
        let prep = self.prep;
        let vm = self.vm.as_ref().ok_or_else(no_vm)?;
        vm.create_irqchip().map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
        self.timings.irqchip = t.elapsed();
        let t = Instant::now();
        let list = prep.create_vcpus(vm, |_, _| Ok(()))?;
        self.started = vec![false; list.len()];
        self.vcpus = list;
        self.timings.vcpus = t.elapsed();
        Ok(())
    }

    fn op(&mut self, op: &LaunchOp) -> Result<(), BackendError> {
        let t = Instant::now();
        match *op {
            LaunchOp::MapRam { gpa, size } => {
                // `Prepared` registered this range before the irqchip; a range it did not
                // foresee cannot exist (same plan), but is registered the slow way if so.
                for (g, s) in self.memory.uncovered(gpa, size) {
                    self.add_region(g, s)?;
                }
                self.timings.map_ram += t.elapsed();
            }
            LaunchOp::ImportPage { gpa, kind, data } => {
                // Fresh mappings are zero: only non-zero contents need copying (this keeps
                // untouched guest pages unallocated, and relaunch fast).
                let bytes = self.plan.page_bytes(&data);
                let bytes = bytes
                    .get(..bytes.len().min(PAGE_SIZE as usize))
                    .unwrap_or(&[]);
                // Check the whole page is backed even when nothing is copied.
                self.memory.locate(gpa, PAGE_SIZE)?;
                if kind != PageKind::Zero && !bytes.is_empty() {
                    self.memory.stage(gpa, bytes)?;
                }
                self.timings.import += t.elapsed();
            }
            LaunchOp::SetVpContext { vp, ctx, source } => {
                self.prep.load_context(self.plan, &self.vcpus, vp, ctx)?;
                // Only a context the bundle gives starts an AP; an AP in the architectural
                // reset state waits for INIT/SIPI like on real hardware (its registers are
                // reset again by INIT anyway).
                if source == VpSource::Bundle {
                    if let Some(s) = self.started.get_mut(vp as usize) {
                        *s = true;
                    }
                }
                self.timings.vp_context += t.elapsed();
            }
            LaunchOp::CreateVm { .. } | LaunchOp::Finalize { .. } => {
                return Err(BackendError::misplaced())
            }
        }
        Ok(())
    }

    fn finish(mut self) -> Result<BuiltVm, BackendError> {
        // An AP with its own context starts running at once instead of waiting for
        // INIT/SIPI (vCPU 0 is runnable already: it is KVM's BSP).
        for (id, (vcpu, started)) in self.vcpus.iter().zip(&self.started).enumerate() {
            if id != 0 && *started {
                vcpu.set_mp_state(KVM_MP_STATE_RUNNABLE)
                    .map_err(kvm_err("KVM_SET_MP_STATE"))?;
            }
        }
        self.timings.total = self.t0.elapsed();
        let vm = self.vm.take().ok_or_else(no_vm)?;
        Ok(BuiltVm {
            vcpus: self.vcpus,
            vm,
            memory: Arc::new(self.memory),
            timings: self.timings,
            launch_id: self.launch_id,
            launch_measurement: None,
        })
    }
}

/// Converts a segment in the VMSA attribute encoding (AMD APM Vol. 2, Table B-4: bits 7:0 =
/// type, S, DPL, P; bits 11:8 = AVL, L, D/B, G) to KVM's unpacked `kvm_segment`.
pub fn kvm_segment_from(s: &Segment) -> kvm_segment {
    let a = s.attrib;
    let present = ((a >> 7) & 1) as u8;
    kvm_segment {
        base: s.base,
        limit: s.limit,
        selector: s.selector,
        type_: (a & 0xF) as u8,
        s: ((a >> 4) & 1) as u8,
        dpl: ((a >> 5) & 3) as u8,
        present,
        avl: ((a >> 8) & 1) as u8,
        l: ((a >> 9) & 1) as u8,
        db: ((a >> 10) & 1) as u8,
        g: ((a >> 11) & 1) as u8,
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

fn dtable(t: &DescriptorTable) -> kvm_dtable {
    kvm_dtable {
        base: t.base,
        limit: t.limit,
        padding: [0; 3],
    }
}

/// Loads `r` into the fresh vCPU `vcpu` whose reset state is `fresh`: SREGS (the fields a VP
/// context does not set come from `fresh`) and REGS, each only when it differs from the
/// reset state (setting a register file to the value it holds changes nothing); then XCR0,
/// PAT, DR6/DR7 and FCW/MXCSR when set.
///
/// # Errors
/// The failing ioctl.
pub fn set_vp_regs(vcpu: &Vcpu, fresh: &FreshRegs, r: &VpRegs) -> Result<(), BackendError> {
    let fd = vcpu;
    let mut sregs = fresh.sregs;
    sregs.cs = kvm_segment_from(&r.cs);
    sregs.ds = kvm_segment_from(&r.ds);
    sregs.es = kvm_segment_from(&r.es);
    sregs.fs = kvm_segment_from(&r.fs);
    sregs.gs = kvm_segment_from(&r.gs);
    sregs.ss = kvm_segment_from(&r.ss);
    sregs.tr = kvm_segment_from(&r.tr);
    sregs.ldt = kvm_segment_from(&r.ldtr);
    sregs.gdt = dtable(&r.gdtr);
    sregs.idt = dtable(&r.idtr);
    sregs.cr0 = r.cr0;
    sregs.cr3 = r.cr3;
    sregs.cr4 = r.cr4;
    sregs.efer = r.efer;
    if sregs != fresh.sregs {
        fd.set_sregs(&sregs).map_err(kvm_err("KVM_SET_SREGS"))?;
    }
    let g = &r.gprs;
    let regs = kvm_regs {
        rax: g.rax,
        rbx: g.rbx,
        rcx: g.rcx,
        rdx: g.rdx,
        rsi: g.rsi,
        rdi: g.rdi,
        rsp: g.rsp,
        rbp: g.rbp,
        r8: g.r8,
        r9: g.r9,
        r10: g.r10,
        r11: g.r11,
        r12: g.r12,
        r13: g.r13,
        r14: g.r14,
        r15: g.r15,
        rip: r.rip,
        // Bit 1 of RFLAGS is reserved-one (KVM sets it anyway).
        rflags: r.rflags | 2,
    };
    if regs != fresh.regs {
        fd.set_regs(&regs).map_err(kvm_err("KVM_SET_REGS"))?;
    }
    if r.xcr0 != 0 {
        let mut xcrs = kvm_xcrs {
            nr_xcrs: 1,
            ..Default::default()
        };
        xcrs.xcrs[0].xcr = 0;
        xcrs.xcrs[0].value = r.xcr0;
        fd.set_xcrs(&xcrs).map_err(kvm_err("KVM_SET_XCRS"))?;
    }
    if r.pat != 0 {
        let msrs = Msrs::from_entries(&[kvm_msr_entry {
            index: MSR_IA32_PAT,
            data: r.pat,
            ..Default::default()
        }])
        .map_err(|_| BackendError::Kvm {
            what: "building KVM_SET_MSRS",
            errno: crate::sys::Errno::new(libc::ENOMEM),
        })?;
        let n = fd.set_msrs(&msrs).map_err(kvm_err("KVM_SET_MSRS"))?;
        if n != 1 {
            return Err(BackendError::Kvm {
                what: "KVM_SET_MSRS (IA32_PAT refused)",
                errno: crate::sys::Errno::new(libc::EINVAL),
            });
        }
    }
    if r.dr6 != 0 || r.dr7 != 0 {
        let dr = kvm_debugregs {
            dr6: r.dr6,
            dr7: r.dr7,
            ..Default::default()
        };
        fd.set_debugregs(&dr)
            .map_err(kvm_err("KVM_SET_DEBUGREGS"))?;
    }
    if r.fcw != 0 || r.mxcsr != 0 {
        let fpu = kvm_fpu {
            fcw: r.fcw,
            mxcsr: r.mxcsr,
            ..Default::default()
        };
        fd.set_fpu(&fpu).map_err(kvm_err("KVM_SET_FPU"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::kvm::{Kvm, GUEST_MEMFD_FLAG_INIT_SHARED, GUEST_MEMFD_FLAG_MMAP};
    use crate::sys::kvm::{KVM_CAP_GUEST_MEMFD_FLAGS, KVM_CAP_NR_MEMSLOTS};
    use crate::sys::record::Recorder;
    use crate::testing;

    const MEM: u64 = 64 << 20;

    /// A host whose kernel is the recorder, with `caps`.
    fn recorded(max_vcpus: usize, caps: &[(u32, i32)]) -> (Recorder, Host) {
        let rec = Recorder::new(max_vcpus, caps);
        let host = Host::with_kvm(Kvm::with(Arc::new(rec.clone())), true).unwrap();
        rec.clear();
        (rec, host)
    }

    fn launch(vcpus: u32, mem: u64) -> Launch {
        Launch::from_plan(testing::plan(testing::HELLO, &[], vcpus, mem, 0))
    }

    /// The sequence written from `Documentation/virt/kvm/api.rst`, not from this code:
    /// `KVM_CREATE_VM` (4.2) first; memory slots (4.35 / 4.143 `KVM_SET_USER_MEMORY_REGION2`)
    /// any time after; `KVM_CREATE_IRQCHIP` (4.24) before any vCPU exists (KVM refuses it
    /// with EINVAL once `created_vcpus` is non-zero, `arch/x86/kvm/x86.c`);
    /// `KVM_CREATE_VCPU` (4.7) per vCPU with its `KVM_SET_CPUID2` (4.89) before it first
    /// runs; registers last (4.11/4.13). Our choices on top: all memslots before the irqchip
    /// (module doc), the fresh register template read once per launch.
    #[test]
    fn native_phases_issue_the_documented_sequence() {
        let (rec, host) = recorded(8, &[(KVM_CAP_NR_MEMSLOTS, 509)]);
        assert_eq!(host.backing, crate::vstate::MemoryBacking::Anonymous);
        let backend = NativeBackend::new(Arc::new(host));
        let l = launch(2, MEM);
        let vm = backend.build(&l).unwrap();
        let expected_first = [
            "kvm KVM_CREATE_VM type=0".to_string(),
            format!("vm0 KVM_SET_USER_MEMORY_REGION2 slot=0 flags=0x0 guest_phys_addr=0x0 memory_size={MEM:#x} userspace_addr=mapped guest_memfd_offset=0 guest_memfd=none"),
            "vm0 KVM_CREATE_IRQCHIP".into(),
            "vm0 KVM_CREATE_VCPU id=0".into(),
            "vm0.vcpu0 KVM_SET_CPUID2 nent=2 apic_id=0".into(),
            "vm0 KVM_CREATE_VCPU id=1".into(),
            "vm0.vcpu1 KVM_SET_CPUID2 nent=2 apic_id=1".into(),
            "vm0.vcpu0 KVM_GET_SREGS".into(),
            "vm0.vcpu0 KVM_GET_REGS".into(),
            "vm0.vcpu0 KVM_SET_SREGS cs=0x0/0x0/0xffff cr0=0x60000010 cr3=0x0 cr4=0x0 efer=0x0".into(),
            "vm0.vcpu0 KVM_SET_REGS rip=0x1000 rsp=0x0 rflags=0x2".into(),
        ];
        assert_eq!(rec.lines(), expected_first);
        // vCPU 1 has no context: it waits for INIT/SIPI (no KVM_SET_MP_STATE).
        assert_eq!(vm.vcpus.len(), 2);
        assert_eq!(vm.launch_id, l.id());
        // The code page is in guest memory; the rest is zero.
        let mut b = [0u8; 4];
        vm.memory.read(testing::CODE_GPA, &mut b).unwrap();
        assert_eq!(b, testing::HELLO[..4]);
        vm.memory.read(0x5000, &mut b).unwrap();
        assert_eq!(b, [0; 4]);
        // A relaunch of the same launch: the same calls on a new VM, minus the fresh-register
        // reads (cached per launch).
        rec.clear();
        drop(backend.build(&l).unwrap());
        let again: Vec<String> = expected_first
            .iter()
            .filter(|l| !l.contains("KVM_GET_"))
            .map(|l| l.replacen("vm0", "vm1", 1))
            .collect();
        assert_eq!(rec.lines(), again);
    }

    /// The UART's interrupt output reaches the in-kernel irqchip as `KVM_IRQ_LINE` on IRQ 4
    /// (`api.rst` 4.25; after `KVM_CREATE_IRQCHIP`), one call per level change.
    #[test]
    fn uart_interrupts_are_kvm_irq_line_calls() {
        let (rec, host) = recorded(8, &[(KVM_CAP_NR_MEMSLOTS, 509)]);
        let backend = NativeBackend::new(Arc::new(host));
        let built = backend.build(&launch(1, MEM)).unwrap();
        let devices = Devices::for_test(&built.memory);
        rec.clear();
        let exits = backend.exit_handler(Arc::clone(&devices), &built.vm, &built.memory);
        let mut d = devices.lock().unwrap();
        d.io_out(0x3F9, 1, &[0x02]); // IER: ETBEI
        let mut iir = [0u8];
        d.io_in(0x3FA, 1, &mut iir); // IIR: THRE, cleared
        assert_eq!(iir[0], 0x02);
        d.io_out(0x3F8, 1, b"hi"); // THR
        d.io_out(0x3F9, 1, &[0x00]); // IER off
        drop(d);
        assert_eq!(
            rec.lines(),
            [
                "vm0 KVM_IRQ_LINE irq=4 level=1",
                "vm0 KVM_IRQ_LINE irq=4 level=0",
                "vm0 KVM_IRQ_LINE irq=4 level=1",
                "vm0 KVM_IRQ_LINE irq=4 level=0",
            ]
        );
        drop(exits);
    }

    /// Two launches alternating (a one-shot hand-over's stage 1 and stage 2) each keep
    /// their preparation: the fresh-register reads happen on each one's first build only,
    /// until more than `PREPARED_LAUNCHES` launches push the oldest out.
    #[test]
    fn prepared_launches_survive_alternation() {
        let (rec, host) = recorded(8, &[(KVM_CAP_NR_MEMSLOTS, 509)]);
        let backend = NativeBackend::new(Arc::new(host));
        let reads = |rec: &Recorder| {
            rec.lines()
                .iter()
                .filter(|l| l.contains("KVM_GET_SREGS"))
                .count()
        };
        let (a, b) = (launch(1, MEM), launch(1, MEM));
        for l in [&a, &b, &a, &b, &a] {
            drop(backend.build(l).unwrap());
        }
        assert_eq!(reads(&rec), 2, "one per launch");
        let others: Vec<Launch> = (0..PREPARED_LAUNCHES).map(|_| launch(1, MEM)).collect();
        for l in &others {
            drop(backend.build(l).unwrap());
        }
        rec.clear();
        drop(backend.build(&a).unwrap());
        assert_eq!(reads(&rec), 1, "evicted: prepared again");
    }

    #[test]
    fn guest_memfd_backing_where_offered() {
        let flags = (GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED) as i32;
        let (rec, host) = recorded(8, &[(KVM_CAP_GUEST_MEMFD_FLAGS, flags)]);
        assert_eq!(host.backing, crate::vstate::MemoryBacking::GuestMemfd);
        let backend = NativeBackend::new(Arc::new(host));
        let vm = backend.build(&launch(1, MEM)).unwrap();
        let lines = rec.lines();
        assert_eq!(
            lines[1],
            format!("vm0 KVM_CREATE_GUEST_MEMFD size={MEM:#x} flags=0x3")
        );
        assert_eq!(lines[2], format!("vm0 KVM_SET_USER_MEMORY_REGION2 slot=0 flags=0x4 guest_phys_addr=0x0 memory_size={MEM:#x} userspace_addr=mapped guest_memfd_offset=0 guest_memfd=fd"));
        assert_eq!(backend.memory_backing(), "guest_memfd");
        // Native memory is shared: devices reach every page.
        assert!(!vm.memory.is_private(testing::CODE_GPA));
    }

    #[test]
    fn create_vm_is_retried_on_eintr_and_other_errors_name_the_call() {
        let (rec, host) = recorded(8, &[]);
        let backend = NativeBackend::new(Arc::new(host));
        rec.fail("KVM_CREATE_VM", libc::EINTR, 2);
        backend.build(&launch(1, MEM)).unwrap();
        let creates = rec
            .calls()
            .iter()
            .filter(|c| c.ioctl == "KVM_CREATE_VM")
            .count();
        assert_eq!(creates, 3);
        rec.fail("KVM_CREATE_IRQCHIP", libc::ENOMEM, 1);
        let e = backend.build(&launch(1, MEM)).unwrap_err();
        assert_eq!(e.index, 0);
        assert!(e.to_string().contains("KVM_CREATE_IRQCHIP"), "{e}");
    }

    #[test]
    fn host_limits_are_checked_before_any_vm_exists() {
        let (rec, mut host) = recorded(1, &[]);
        host.nr_memslots = 1;
        let backend = NativeBackend::new(Arc::new(host));
        // Two vCPUs on a host of one.
        let e = backend.build(&launch(2, MEM)).unwrap_err();
        assert!(matches!(e.source, BackendError::VcpuCount(2, 1)), "{e}");
        // RAM above the 32-bit hole needs two slots; the host offers one.
        let e = backend.build(&launch(1, 5 << 30)).unwrap_err();
        assert!(
            matches!(e.source, BackendError::Memslots { need: 2, have: 1 }),
            "{e}"
        );
        assert!(rec.calls().is_empty(), "{:?}", rec.lines());
    }

    #[test]
    fn slot_ranges_are_ram_plus_the_union_of_maps() {
        let map = |gpa, size| LaunchOp::MapRam { gpa, size };
        let mem = 64 << 20;
        let ops = [
            map(0, mem),
            map(0xFFFF_F000, 0x1000),
            map(0xFFC0_0000, 0x20_0000),
            // Overlaps RAM's end and the next map; touching ranges become one slot.
            map(mem - 0x1000, 0x3000),
            map(mem + 0x1000, 0x1000),
            map(mem + 0x2000, 0x1000),
            // Malformed: ignored.
            map(0x1234, 0x1000),
            map(u64::MAX - 0xFFF, 0x2000),
        ];
        assert_eq!(
            slot_ranges(mem, &ops),
            [
                (0, mem),
                (mem, 0x3000),
                (0xFFC0_0000, 0x20_0000),
                (0xFFFF_F000, 0x1000)
            ]
        );
        // Many scattered maps: linear-ish, and every one is a slot.
        let many: Vec<LaunchOp> = (0..20_000u64)
            .rev()
            .map(|i| map(0x1_0000_0000 + i * 0x2000, 0x1000))
            .collect();
        let s = slot_ranges(mem, &many);
        assert_eq!(s.len(), 20_001);
        assert!(s.windows(2).all(|w| w[0].0 + w[0].1 <= w[1].0));
    }

    #[test]
    fn segment_attrib_unpacks() {
        // 64-bit code: P=1 DPL=0 S=1 type=0xB, L=1, G=1 → 0xA9B.
        let k = kvm_segment_from(&Segment {
            selector: 8,
            attrib: 0xA9B,
            limit: 0xFFFF_FFFF,
            base: 0,
        });
        assert_eq!(
            (k.type_, k.s, k.dpl, k.present, k.avl, k.l, k.db, k.g, k.unusable),
            (0xB, 1, 0, 1, 0, 1, 0, 1, 0)
        );
        // 32-bit data, DPL 3, AVL: 0xDF3 = G D/B AVL | P DPL3 S type3.
        let k = kvm_segment_from(&Segment {
            selector: 0x10,
            attrib: 0xDF3,
            limit: 0xFFFF_FFFF,
            base: 0x1000,
        });
        assert_eq!(
            (k.type_, k.s, k.dpl, k.present, k.avl, k.l, k.db, k.g, k.unusable),
            (3, 1, 3, 1, 1, 0, 1, 1, 0)
        );
        assert_eq!(k.base, 0x1000);
        // Not present → unusable.
        assert_eq!(kvm_segment_from(&Segment::default()).unusable, 1);
    }
}
