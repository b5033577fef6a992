//! The native KVM backend: an ordinary KVM VM (type 0) running the bundle's native view.
//!
//! Recipe (Firecracker-style, top to bottom): `CreateVm` → VM fd, every memslot (guest RAM
//! per `vstate::ram_layout` and every range the plan's `MapRam` ops ask for), then the
//! in-kernel irqchip, then the vCPUs with CPUID; `MapRam` → only checks (its memslot exists
//! already); `ImportPage` → copy bytes into the (fresh, zeroed) mapping; `SetVpContext` →
//! register ioctls; `Finalize` → started APs made runnable. vCPUs without a VP context keep
//! KVM's reset state: vCPU 0 (the BSP) starts at the reset vector, the others wait for
//! INIT/SIPI in `KVM_MP_STATE_UNINITIALIZED`; so do APs whose context is the planner's
//! `VpSource::Reset` state.
//!
//! Why every memslot comes before `KVM_CREATE_IRQCHIP`: on the nested `kvm_pvm` host this
//! was measured on, each memslot registered after the irqchip costs ≈ 7–9 ms (vs ≈ 0.05 ms
//! before it; `docs/benchmarks.md`, "Findings"). Everything that does not depend on the VM
//! fd (the memslot layout, the per-vCPU CPUID tables, the `KVM_GET_SREGS` template of a fresh
//! vCPU) is computed once per session in [`Prepared`] and reused by every relaunch.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use kvm_bindings::{
    kvm_debugregs, kvm_dtable, kvm_fpu, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_segment,
    kvm_sregs, kvm_xcrs, CpuId, Msrs, KVM_MP_STATE_RUNNABLE,
};
use relaunch_core::arch::regs::{DescriptorTable, Segment, VpRegs};
use relaunch_core::plan::{LaunchOp, LaunchPlan, PageKind, Platform, VpSource};

use super::{kvm_err, BackendError, LaunchBackend};
use crate::sys::kvm::{Vcpu, Vm};
use crate::vstate::{ram_layout, uncovered_by, GuestMemory, Host, Region, PAGE_SIZE};

/// `IA32_PAT` (Intel SDM Vol. 4, Table 2-2).
const MSR_IA32_PAT: u32 = 0x277;

/// Time spent per step while building one VM.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExecTimings {
    /// `KVM_CREATE_VM` alone.
    pub create_vm: Duration,
    /// Guest RAM mappings (guest_memfd + mmap) and every memslot.
    pub memslots: Duration,
    /// `KVM_CREATE_IRQCHIP`.
    pub irqchip: Duration,
    /// `KVM_CREATE_VCPU` (+ `kvm_run` mmap) and `KVM_SET_CPUID2`, all vCPUs.
    pub vcpus: Duration,
    /// `MapRam` ops (checks; a memslot only for a range [`Prepared`] did not foresee).
    pub map_ram: Duration,
    /// Page copies.
    pub import: Duration,
    /// Register setup.
    pub vp_context: Duration,
    /// Total, start of the first op to the end of `Finalize`.
    pub total: Duration,
}

/// A VM ready to run: built by executing a plan, not started yet.
#[derive(Debug)]
pub struct BuiltVm {
    /// vCPUs, index = vCPU id (dropped first: field order).
    pub vcpus: Vec<Vcpu>,
    /// The VM fd (keeps the memslot mappings alive with the vCPUs).
    pub vm: Vm,
    /// Guest memory, shared with devices (fw_cfg DMA).
    pub memory: Arc<GuestMemory>,
    /// Build timings.
    pub timings: ExecTimings,
}

/// What building a VM for one plan on one host needs that does not depend on the VM fd:
/// computed once per session ([`Prepared::new`]) and shared by every build (also by the
/// prestage builder thread).
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
    /// Prepares `plan` for `mem_bytes` of guest RAM on `host`.
    pub fn new(host: &Host, mem_bytes: u64, plan: &LaunchPlan) -> Prepared {
        let slots = slot_ranges(mem_bytes, plan.ops());
        let vcpus = plan
            .ops()
            .iter()
            .filter_map(|op| match *op {
                LaunchOp::CreateVm { vcpus, .. } => Some(vcpus),
                _ => None,
            })
            .next_back()
            .unwrap_or(0);
        // CreateVm rejects counts above KVM's limit before any table is used.
        let n = (vcpus as usize).min(host.kvm.get_max_vcpus());
        let cpuid = (0..n)
            .map(|id| {
                let id = id as u32;
                let mut c = host.cpuid.clone();
                for e in c.as_mut_slice() {
                    match e.function {
                        // CPUID.1:EBX[31:24] initial APIC ID (Intel SDM Vol. 2A, CPUID).
                        1 => e.ebx = (e.ebx & 0x00FF_FFFF) | (id << 24),
                        // CPUID.0Bh/1Fh:EDX x2APIC ID.
                        0xB | 0x1F => e.edx = id,
                        _ => {}
                    }
                }
                c
            })
            .collect();
        Prepared {
            mem_bytes,
            slots,
            cpuid,
            fresh: Mutex::new(vec![None; n]),
        }
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
            sregs: vcpu.fd().get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?,
            regs: vcpu.fd().get_regs().map_err(kvm_err("KVM_GET_REGS"))?,
        };
        if let Some(slot) = lock().get_mut(vp as usize) {
            *slot = Some(f);
        }
        Ok(f)
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

struct Building {
    vm: Vm,
    vcpus: Vec<Vcpu>,
    memory: GuestMemory,
    started: Vec<bool>,
}

/// The native backend: executes a plan on `host`, producing a [`BuiltVm`].
pub struct NativeBackend<'h> {
    host: &'h Host,
    prep: &'h Prepared,
    state: Option<Building>,
    finalized: bool,
    timings: ExecTimings,
    t0: Option<Instant>,
}

impl<'h> NativeBackend<'h> {
    /// A backend that builds the VM `prep` describes (guest RAM at `[0, mem)`, split around
    /// the 32-bit hole, plus the plan's `MapRam` ranges) on `host`.
    pub fn new(host: &'h Host, prep: &'h Prepared) -> NativeBackend<'h> {
        NativeBackend {
            host,
            prep,
            state: None,
            finalized: false,
            timings: ExecTimings::default(),
            t0: None,
        }
    }

    /// The built VM, once `Finalize` ran.
    ///
    /// # Errors
    /// `BackendError::Order` when the plan did not create and finalize a VM.
    pub fn finish(self) -> Result<BuiltVm, BackendError> {
        let st = self
            .state
            .ok_or(BackendError::Order("plan has no CreateVm"))?;
        if !self.finalized {
            return Err(BackendError::Order("plan has no Finalize"));
        }
        Ok(BuiltVm {
            vcpus: st.vcpus,
            vm: st.vm,
            memory: Arc::new(st.memory),
            timings: self.timings,
        })
    }

    fn building(&mut self) -> Result<&mut Building, BackendError> {
        if self.finalized {
            return Err(BackendError::Order("op after Finalize"));
        }
        self.state
            .as_mut()
            .ok_or(BackendError::Order("op before CreateVm"))
    }

    fn create_vm(&mut self, platform: Platform, vcpus: u32) -> Result<(), BackendError> {
        if self.state.is_some() {
            return Err(BackendError::Order("second CreateVm"));
        }
        if platform != Platform::Native {
            return Err(BackendError::Platform(platform));
        }
        let max = self.host.kvm.get_max_vcpus();
        if vcpus == 0 || vcpus as usize > max {
            return Err(BackendError::VcpuCount(vcpus, max));
        }
        let (host, prep) = (self.host, self.prep);
        let t = Instant::now();
        let vm = host.kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
        let mut vm = Vm::new(vm);
        self.timings.create_vm = t.elapsed();
        // Every memslot before the irqchip (module doc).
        let t = Instant::now();
        let mut memory = GuestMemory::default();
        for &(gpa, size) in &prep.slots {
            add_region(host, &mut vm, &mut memory, gpa, size)?;
        }
        self.timings.memslots = t.elapsed();
        // In-kernel PIC/IOAPIC/LAPIC: needed for INIT/SIPI AP start-up and HLT in the kernel.
        // No PIT: its kernel timer thread would cost every relaunch; our guests use none.
        let t = Instant::now();
        vm.fd()
            .create_irq_chip()
            .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
        self.timings.irqchip = t.elapsed();
        let t = Instant::now();
        let mut list = Vec::with_capacity(vcpus as usize);
        for id in 0..vcpus {
            let vcpu = vm
                .create_vcpu(u64::from(id))
                .map_err(kvm_err("KVM_CREATE_VCPU"))?;
            let cpuid = prep.cpuid.get(id as usize).ok_or(BackendError::Order(
                "CreateVm vCPU count differs from the plan's",
            ))?;
            vcpu.fd()
                .set_cpuid2(cpuid)
                .map_err(kvm_err("KVM_SET_CPUID2"))?;
            list.push(vcpu);
        }
        self.timings.vcpus = t.elapsed();
        self.state = Some(Building {
            vm,
            started: vec![false; list.len()],
            vcpus: list,
            memory,
        });
        Ok(())
    }
}

fn add_region(
    host: &Host,
    vm: &mut Vm,
    memory: &mut GuestMemory,
    gpa: u64,
    size: u64,
) -> Result<(), BackendError> {
    let mapping = Arc::new(
        host.map_ram(vm, size)
            .map_err(kvm_err("mapping guest RAM"))?,
    );
    vm.add_memslot(gpa, Arc::clone(&mapping))
        .map_err(kvm_err("KVM_SET_USER_MEMORY_REGION2"))?;
    memory.push(Region { gpa, mapping });
    Ok(())
}

impl LaunchBackend for NativeBackend<'_> {
    fn apply(&mut self, op: &LaunchOp, plan: &LaunchPlan) -> Result<(), BackendError> {
        let t = Instant::now();
        let t0 = *self.t0.get_or_insert(t);
        match *op {
            LaunchOp::CreateVm {
                platform, vcpus, ..
            } => {
                self.create_vm(platform, vcpus)?;
            }
            LaunchOp::MapRam { gpa, size } => {
                let host = self.host;
                let b = self.building()?;
                if !map_ram_ok(gpa, size) {
                    return Err(BackendError::Range { gpa, size });
                }
                // `Prepared` registered this range before the irqchip; a range it did not
                // foresee (another plan) still gets its memslot here, the slow way.
                for (g, s) in b.memory.uncovered(gpa, size) {
                    add_region(host, &mut b.vm, &mut b.memory, g, s)?;
                }
                self.timings.map_ram += t.elapsed();
            }
            LaunchOp::ImportPage { gpa, kind, data } => {
                let b = self.building()?;
                // Fresh mappings are zero: only non-zero contents need copying (this keeps
                // untouched guest pages unallocated, and relaunch fast).
                let bytes = plan.page_bytes(&data);
                let bytes = bytes
                    .get(..bytes.len().min(PAGE_SIZE as usize))
                    .unwrap_or(&[]);
                // Check the whole page is backed even when nothing is copied.
                b.memory.locate(gpa, PAGE_SIZE)?;
                if kind != PageKind::Zero && !bytes.is_empty() {
                    b.memory.write(gpa, bytes)?;
                }
                self.timings.import += t.elapsed();
            }
            LaunchOp::SetVpContext { vp, ctx, source } => {
                let prep = self.prep;
                let b = self.building()?;
                let vcpus = b.vcpus.len() as u32;
                let err = BackendError::Vp {
                    vp,
                    ctx,
                    vcpus,
                    contexts: plan.vp_contexts().len(),
                };
                let regs = plan.vp_contexts().get(ctx as usize).ok_or(err)?;
                let vcpu = b.vcpus.get(vp as usize).ok_or(BackendError::Vp {
                    vp,
                    ctx,
                    vcpus,
                    contexts: plan.vp_contexts().len(),
                })?;
                let fresh = prep.fresh_regs(vp, vcpu)?;
                set_vp_regs(vcpu, &fresh, regs)?;
                // Only a context the bundle gives starts an AP; an AP in the architectural
                // reset state waits for INIT/SIPI like on real hardware (its registers are
                // reset again by INIT anyway).
                if source == VpSource::Bundle {
                    if let Some(s) = b.started.get_mut(vp as usize) {
                        *s = true;
                    }
                }
                self.timings.vp_context += t.elapsed();
            }
            LaunchOp::Finalize { .. } => {
                let b = self.building()?;
                // An AP with its own context starts running at once instead of waiting for
                // INIT/SIPI (vCPU 0 is runnable already: it is KVM's BSP).
                for (id, (vcpu, started)) in b.vcpus.iter().zip(&b.started).enumerate() {
                    if id != 0 && *started {
                        vcpu.fd()
                            .set_mp_state(kvm_mp_state {
                                mp_state: KVM_MP_STATE_RUNNABLE,
                            })
                            .map_err(kvm_err("KVM_SET_MP_STATE"))?;
                    }
                }
                self.finalized = true;
                self.timings.total = t0.elapsed();
            }
        }
        Ok(())
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
    let fd = vcpu.fd();
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
        fd.set_debug_regs(&dr)
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

/// Executes `plan` on a fresh native VM.
///
/// # Errors
/// [`super::ExecError`] for the first failing op, or a missing `CreateVm`/`Finalize`
/// (reported at index `plan.ops().len()`).
pub fn build_vm(
    host: &Host,
    prep: &Prepared,
    plan: &LaunchPlan,
) -> Result<BuiltVm, super::ExecError> {
    let mut backend = NativeBackend::new(host, prep);
    super::execute(&mut backend, plan)?;
    backend.finish().map_err(|source| super::ExecError {
        index: plan.ops().len(),
        op: super::OpKind::Finalize,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
