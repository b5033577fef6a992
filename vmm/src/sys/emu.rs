//! The door of the emulated confidential platforms (`relaunch run --platform emulated:<p>`):
//! the real backend of platform `<p>` runs unchanged, its confidential calls answered by a
//! firmware model ([`Firmware`], the kernel model of `crate::model`) and everything else —
//! memory, vCPUs, registers, `KVM_RUN` — by an ordinary KVM VM (type 0) on `/dev/kvm`.
//!
//! Which call goes where:
//!
//! | call | model | real KVM |
//! |---|---|---|
//! | `KVM_CREATE_VM` | the platform's type | type 0 (+ the guest view's MSR filter) |
//! | `KVM_SET_USER_MEMORY_REGION2` | as issued (guest_memfd included) | the shared `userspace_addr` only (+ the C-bit alias) |
//! | `KVM_CREATE_GUEST_MEMFD`, `KVM_SET_MEMORY_ATTRIBUTES`, `KVM_MEMORY_ENCRYPT_*` | yes | — |
//! | irqchip, `KVM_ENABLE_CAP`, vCPU creation and registers | yes (KVM builds VMSAs from them) | yes |
//! | `KVM_RUN` and its exits | — | yes |
//!
//! One memory: an ordinary VM has no private memory, so the guest's private pages *are* its
//! shared mapping here. What the firmware puts into private pages at launch (page contents,
//! zero pages, the SNP secrets page, TDX pages) the model writes through a [`PrivateSink`]
//! into that mapping — the one place the model touches guest memory other than a command's
//! own source.
//!
//! The SEV guest view ([`GuestView::Sev`]): CPUID leaf 0x8000001F with the platform's
//! feature bits and C-bit [`C_BIT`]; the `SEV_STATUS` (0xC0010131) and GHCB (0xC0010130) MSRs
//! sent to user space by an MSR filter (answered by the emulated platform's exit handler);
//! and guest RAM aliased at GPA `1 << C_BIT`, so page tables with the C-bit set reach the
//! same memory (measured on this host: `../shared/DESIGN.md`, "This host").
//!
//! Nothing here claims security: the "private" memory is ordinary host memory.

use std::fmt;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, PoisonError};

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_debugregs, kvm_fpu, kvm_memory_attributes, kvm_mp_state, kvm_regs,
    kvm_run, kvm_sregs, kvm_userspace_memory_region2, kvm_xcrs, CpuId, Msrs,
};
use kvm_ioctls::VcpuExit;

use super::coco::{CocoError, SevCmd, TdxVcpuCmd, TdxVmCmd};
use super::kvm::{
    KvmIoctls, PortIo, VcpuIoctls, VmIoctls, KVM_CAP_NR_MEMSLOTS, KVM_MEM_GUEST_MEMFD,
    KVM_X86_DEFAULT_VM,
};
use super::Errno;

/// The C-bit position the emulated SEV platforms report (CPUID 0x8000001F.EBX[5:0]): the top
/// bit of this host's 48-bit guest-physical space, so that the alias of RAM at `1 << 47` is
/// still a GPA KVM accepts (real EPYC parts report 51 or 47).
pub const C_BIT: u32 = 47;
/// Physical-address bits the emulated SEV platforms' C-bit takes away
/// (CPUID 0x8000001F.EBX[11:6]).
pub const PHYS_ADDR_REDUCTION: u32 = 1;
/// `MSR_AMD64_SEV_ES_GHCB` (AMD APM vol. 2 §15.35.5, the GHCB MSR).
pub const MSR_GHCB: u32 = 0xC001_0130;
/// `MSR_AMD64_SEV` = `SEV_STATUS` (AMD APM vol. 2 §15.34.10): bit 0 SEV, bit 1 SEV-ES,
/// bit 2 SNP active.
pub const MSR_SEV_STATUS: u32 = 0xC001_0131;

/// Where the firmware model writes what it puts into a guest's private pages.
pub trait PrivateSink: Send + Sync + fmt::Debug {
    /// Writes `data` at guest-physical `gpa`.
    ///
    /// # Errors
    /// `EFAULT` when `[gpa, gpa + len)` is not inside one memslot.
    fn write(&self, gpa: u64, data: &[u8]) -> Result<(), Errno>;
    /// Zeroes `len` bytes at `gpa`.
    ///
    /// # Errors
    /// As [`PrivateSink::write`].
    fn zero(&self, gpa: u64, len: u64) -> Result<(), Errno>;
}

/// A firmware model that can stand behind the emulated door: the system-fd calls of the
/// kernel model, and VMs whose private-page writes go to a [`PrivateSink`].
pub trait Firmware: KvmIoctls {
    /// `KVM_CREATE_VM` of `vm_type` whose firmware writes private pages to `sink`.
    ///
    /// # Errors
    /// The errno the model answers.
    fn create_vm_with_sink(
        &self,
        vm_type: u64,
        sink: Arc<dyn PrivateSink>,
    ) -> Result<Box<dyn VmIoctls>, Errno>;
}

/// What the guest sees of its platform beyond what the launch gives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestView {
    /// SEV, SEV-ES or SNP: CPUID 0x8000001F, `SEV_STATUS`, the C-bit alias.
    Sev {
        /// CPUID 0x8000001F.EAX (bit 1 SEV, bit 3 SEV-ES, bit 4 SNP).
        features: u32,
    },
    /// TDX: CPUID leaf 0x21 says "IntelTDX    " (the TDX module's vendor leaf; TD guests
    /// detect TDX with it). TDCALL itself cannot run on this AMD host.
    Tdx,
}

impl GuestView {
    /// The GPA bit under which guest RAM is aliased, if any.
    pub fn alias(self) -> Option<u64> {
        match self {
            GuestView::Sev { .. } => Some(1 << C_BIT),
            GuestView::Tdx => None,
        }
    }

    /// `host`'s supported CPUID with this view's leaves added or replaced.
    ///
    /// # Errors
    /// `ENOMEM` when the table is full.
    pub fn cpuid(self, host: &CpuId) -> Result<CpuId, Errno> {
        let mut entries: Vec<kvm_cpuid_entry2> = host.as_slice().to_vec();
        let mut put = |e: kvm_cpuid_entry2| {
            entries.retain(|x| !(x.function == e.function && x.index == e.index));
            entries.push(e);
        };
        let leaf = |function, eax, ebx, ecx, edx| kvm_cpuid_entry2 {
            function,
            eax,
            ebx,
            ecx,
            edx,
            ..Default::default()
        };
        match self {
            GuestView::Sev { features } => {
                // CPUID 0x8000001F (AMD APM vol. 3, "Function 8000_001Fh"): EAX features,
                // EBX[5:0] C-bit position, EBX[11:6] physical-address reduction, ECX
                // encrypted guests supported, EDX minimum ASID of a non-ES guest.
                put(leaf(
                    0x8000_001F,
                    features,
                    C_BIT | (PHYS_ADDR_REDUCTION << 6),
                    1,
                    1,
                ));
                let max_ext = host
                    .as_slice()
                    .iter()
                    .find(|e| e.function == 0x8000_0000)
                    .copied();
                if let Some(mut e) = max_ext {
                    e.eax = e.eax.max(0x8000_001F);
                    put(e);
                }
            }
            GuestView::Tdx => {
                // CPUID 0x21 subleaf 0: EBX, EDX, ECX = "Inte", "lTDX", "    " (Intel TDX
                // Module spec, "CPUID Virtualization"; Linux `TDX_IDENT`).
                put(leaf(0x21, 0, 0x6574_6E49, 0x2020_2020, 0x5844_546C));
                let max = host.as_slice().iter().find(|e| e.function == 0).copied();
                if let Some(mut e) = max {
                    e.eax = e.eax.max(0x21);
                    put(e);
                }
            }
        }
        CpuId::from_entries(&entries).map_err(|_| Errno::new(libc::ENOMEM))
    }
}

/// The emulated door's system fd: real KVM for the VM the guest runs in, `fw` for the
/// confidential calls (module doc).
#[derive(Debug)]
pub struct EmuKvm {
    real: Arc<dyn KvmIoctls>,
    fw: Arc<dyn Firmware>,
    view: GuestView,
}

impl EmuKvm {
    /// A door whose guests run on `real` with `view`, their launches answered by `fw`.
    pub fn new(real: Arc<dyn KvmIoctls>, fw: Arc<dyn Firmware>, view: GuestView) -> EmuKvm {
        EmuKvm { real, fw, view }
    }
}

/// Memslots per VM the emulated door offers: half of the real ones (each slot may need an
/// alias), and no more than the model's.
fn memslots(real: i32, fw: i32) -> i32 {
    (real / 2).min(fw)
}

impl KvmIoctls for EmuKvm {
    fn check_extension(&self, cap: u32) -> i32 {
        match cap {
            KVM_CAP_NR_MEMSLOTS => {
                memslots(self.real.check_extension(cap), self.fw.check_extension(cap))
            }
            // The platform's capabilities (VM types, guest_memfd, attributes) are the model's.
            _ => self.fw.check_extension(cap),
        }
    }

    fn max_vcpus(&self) -> usize {
        self.real.max_vcpus().min(self.fw.max_vcpus())
    }

    fn device_attr(&self, group: u32, attr: u64) -> Result<u64, Errno> {
        // The platform's attributes (accepted SNP policy bits, VMSA features) are the model's.
        self.fw.device_attr(group, attr)
    }

    fn supported_cpuid(&self, max_entries: usize) -> Result<CpuId, Errno> {
        // The guest runs on this host's CPU: its CPUID, plus the platform's view.
        self.view.cpuid(&self.real.supported_cpuid(max_entries)?)
    }

    fn create_vm(&self, vm_type: u64) -> Result<Box<dyn VmIoctls>, Errno> {
        let real = self.real.create_vm(KVM_X86_DEFAULT_VM)?;
        if matches!(self.view, GuestView::Sev { .. }) {
            // RDMSR/WRMSR of the SEV MSRs exit to user space (`api.rst`,
            // KVM_CAP_X86_USER_SPACE_MSR with KVM_MSR_EXIT_REASON_FILTER, and
            // KVM_X86_SET_MSR_FILTER): the emulated platform answers them.
            real.enable_cap(
                kvm_bindings::KVM_CAP_X86_USER_SPACE_MSR,
                [u64::from(kvm_bindings::KVM_MSR_EXIT_REASON_FILTER), 0, 0, 0],
            )?;
            real.deny_msrs(MSR_GHCB, 2)?;
        }
        let slots = Arc::new(SlotTable::default());
        let fw = self
            .fw
            .create_vm_with_sink(vm_type, Arc::clone(&slots) as _)?;
        let alias_base = u32::try_from(self.real.check_extension(KVM_CAP_NR_MEMSLOTS) / 2)
            .map_err(|_| Errno::new(libc::EINVAL))?;
        Ok(Box::new(EmuVm {
            fw,
            real,
            slots,
            alias: self.view.alias(),
            alias_base,
        }))
    }
}

/// Host ranges registered as memslots: the [`PrivateSink`] of one emulated VM.
#[derive(Debug, Default)]
struct SlotTable {
    /// `(slot, gpa, size, host address)`.
    slots: Mutex<Vec<(u32, u64, u64, u64)>>,
}

impl SlotTable {
    /// Host address of `[gpa, gpa + len)`, inside one slot.
    fn host(&self, gpa: u64, len: u64) -> Result<u64, Errno> {
        let slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        slots
            .iter()
            .find(|&&(_, base, size, _)| {
                gpa >= base && gpa.checked_add(len).is_some_and(|end| end <= base + size)
            })
            .map(|&(_, base, _, host)| host + (gpa - base))
            .ok_or(Errno::new(libc::EFAULT))
    }
}

impl PrivateSink for SlotTable {
    fn write(&self, gpa: u64, data: &[u8]) -> Result<(), Errno> {
        let host = self.host(gpa, data.len() as u64)?;
        // SAFETY: copy (memmove) needs `data` readable and the destination writable for
        // `data.len()` bytes. The destination lies inside one memslot's host range (checked
        // by `host`), which the caller of `set_user_memory_region2` keeps mapped for as long
        // as the slot exists (that method's contract); the slot exists while this table does
        // (the table belongs to the VM door, dropped with it, and a deleted slot leaves the
        // table). `copy` tolerates overlap: the firmware may write back a page it read from
        // the same place (a staged page is its own source here). The guest may access the
        // page concurrently only after launch, when the model no longer writes.
        unsafe { std::ptr::copy(data.as_ptr(), host as usize as *mut u8, data.len()) };
        Ok(())
    }

    fn zero(&self, gpa: u64, len: u64) -> Result<(), Errno> {
        let host = self.host(gpa, len)?;
        let n = usize::try_from(len).map_err(|_| Errno::new(libc::EFAULT))?;
        // SAFETY: write_bytes needs the destination writable for `n` bytes: as in `write`,
        // the range is inside one live memslot's host mapping.
        unsafe { std::ptr::write_bytes(host as usize as *mut u8, 0, n) };
        Ok(())
    }
}

/// A VM of the emulated door (module doc).
#[derive(Debug)]
struct EmuVm {
    fw: Box<dyn VmIoctls>,
    real: Box<dyn VmIoctls>,
    slots: Arc<SlotTable>,
    /// The GPA bit of the RAM alias (the C-bit), if the view has one.
    alias: Option<u64>,
    /// Slot numbers from here on are aliases.
    alias_base: u32,
}

impl VmIoctls for EmuVm {
    fn check_extension(&self, cap: u32) -> i32 {
        match cap {
            KVM_CAP_NR_MEMSLOTS => {
                memslots(self.real.check_extension(cap), self.fw.check_extension(cap))
            }
            _ => self.fw.check_extension(cap),
        }
    }

    unsafe fn set_user_memory_region2(
        &self,
        region: kvm_userspace_memory_region2,
    ) -> Result<(), Errno> {
        if region.slot >= self.alias_base {
            return Err(Errno::new(libc::EINVAL));
        }
        // SAFETY: the model never dereferences `userspace_addr` (it records numbers), and our
        // caller upholds the contract for the region as given.
        unsafe { self.fw.set_user_memory_region2(region) }?;
        if region.memory_size != 0 && region.userspace_addr == 0 {
            // A private-only slot has no memory an ordinary VM could run on.
            return Err(Errno::new(libc::EINVAL));
        }
        // Real KVM gets the shared mapping only: an ordinary VM has no private memory.
        let mut shared = region;
        shared.flags &= !KVM_MEM_GUEST_MEMFD;
        shared.guest_memfd = 0;
        shared.guest_memfd_offset = 0;
        // SAFETY: the same userspace range as the caller's region, under the same contract
        // (it stays mapped while the slot exists); no guest_memfd.
        unsafe { self.real.set_user_memory_region2(shared) }?;
        if let Some(bit) = self.alias {
            let mut alias = shared;
            alias.slot = self.alias_base + region.slot;
            alias.guest_phys_addr |= bit;
            // SAFETY: as above: the same mapping, a second guest-physical window onto it.
            unsafe { self.real.set_user_memory_region2(alias) }?;
        }
        let mut slots = self
            .slots
            .slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        slots.retain(|s| s.0 != region.slot);
        if region.memory_size != 0 {
            slots.push((
                region.slot,
                region.guest_phys_addr,
                region.memory_size,
                region.userspace_addr,
            ));
        }
        Ok(())
    }

    fn create_guest_memfd(&self, size: u64, flags: u64) -> Result<OwnedFd, Errno> {
        self.fw.create_guest_memfd(size, flags)
    }

    fn set_memory_attributes(&self, attrs: kvm_memory_attributes) -> Result<(), Errno> {
        self.fw.set_memory_attributes(attrs)
    }

    fn create_irqchip(&self) -> Result<(), Errno> {
        self.fw.create_irqchip()?;
        self.real.create_irqchip()
    }

    fn irq_line(&self, irq: u32, level: bool) -> Result<(), Errno> {
        // The model checks it (an irqchip must exist); the real VM delivers it.
        self.fw.irq_line(irq, level)?;
        self.real.irq_line(irq, level)
    }

    fn create_vcpu(&self, id: u64) -> Result<Box<dyn VcpuIoctls>, Errno> {
        let fw = self.fw.create_vcpu(id)?;
        let real = self.real.create_vcpu(id)?;
        Ok(Box::new(EmuVcpu { fw, real }))
    }

    fn enable_cap(&self, cap: u32, args: [u64; 4]) -> Result<(), Errno> {
        self.fw.enable_cap(cap, args)?;
        self.real.enable_cap(cap, args)
    }

    fn register_enc_region(&self, addr: u64, size: u64) -> Result<(), Errno> {
        self.fw.register_enc_region(addr, size)
    }

    fn sev_cmd(&self, cmd: &mut SevCmd<'_>, sev_fd: i32) -> Result<(), CocoError> {
        self.fw.sev_cmd(cmd, sev_fd)
    }

    fn tdx_vm_cmd(&self, cmd: &mut TdxVmCmd<'_>) -> Result<(), CocoError> {
        self.fw.tdx_vm_cmd(cmd)
    }

    fn deny_msrs(&self, base: u32, count: u32) -> Result<(), Errno> {
        self.real.deny_msrs(base, count)
    }
}

/// A vCPU of the emulated door: state to both (the model builds VMSAs from it), runs on real
/// KVM.
#[derive(Debug)]
struct EmuVcpu {
    fw: Box<dyn VcpuIoctls>,
    real: Box<dyn VcpuIoctls>,
}

impl VcpuIoctls for EmuVcpu {
    fn set_cpuid2(&self, cpuid: &CpuId) -> Result<(), Errno> {
        self.fw.set_cpuid2(cpuid)?;
        self.real.set_cpuid2(cpuid)
    }
    // Reads come from the model: the backend sets only what differs from the state it
    // reads (`backend::native::set_vp_regs`), and the model's VMSAs must be built from the
    // same registers as on a real confidential VM.
    fn get_regs(&self) -> Result<kvm_regs, Errno> {
        self.fw.get_regs()
    }
    fn set_regs(&self, regs: &kvm_regs) -> Result<(), Errno> {
        self.fw.set_regs(regs)?;
        self.real.set_regs(regs)
    }
    fn get_sregs(&self) -> Result<kvm_sregs, Errno> {
        self.fw.get_sregs()
    }
    fn set_sregs(&self, sregs: &kvm_sregs) -> Result<(), Errno> {
        self.fw.set_sregs(sregs)?;
        // The architectural registers as given; what only KVM keeps (APIC base, pending
        // interrupts, CR8) stays the real vCPU's own, since `sregs` started as the model's
        // reading.
        let mut real = self.real.get_sregs()?;
        real.cs = sregs.cs;
        real.ds = sregs.ds;
        real.es = sregs.es;
        real.fs = sregs.fs;
        real.gs = sregs.gs;
        real.ss = sregs.ss;
        real.tr = sregs.tr;
        real.ldt = sregs.ldt;
        real.gdt = sregs.gdt;
        real.idt = sregs.idt;
        real.cr0 = sregs.cr0;
        real.cr2 = sregs.cr2;
        real.cr3 = sregs.cr3;
        real.cr4 = sregs.cr4;
        // EFER.SVME is what KVM forces into an SEV-ES/SNP VMSA (`sev_es_sync_vmsa`); an
        // ordinary guest without the SVM CPUID bit may not set it (`kvm_valid_efer`).
        real.efer = sregs.efer & !EFER_SVME;
        self.real.set_sregs(&real)
    }
    fn set_xcrs(&self, xcrs: &kvm_xcrs) -> Result<(), Errno> {
        self.fw.set_xcrs(xcrs)?;
        self.real.set_xcrs(xcrs)
    }
    fn set_msrs(&self, msrs: &Msrs) -> Result<usize, Errno> {
        self.fw.set_msrs(msrs)?;
        self.real.set_msrs(msrs)
    }
    fn set_debugregs(&self, dr: &kvm_debugregs) -> Result<(), Errno> {
        self.fw.set_debugregs(dr)?;
        self.real.set_debugregs(dr)
    }
    fn set_fpu(&self, fpu: &kvm_fpu) -> Result<(), Errno> {
        self.fw.set_fpu(fpu)?;
        self.real.set_fpu(fpu)
    }
    fn set_mp_state(&self, state: kvm_mp_state) -> Result<(), Errno> {
        self.fw.set_mp_state(state)?;
        self.real.set_mp_state(state)
    }
    fn run(&mut self) -> Result<VcpuExit<'_>, Errno> {
        self.real.run()
    }
    fn kvm_run(&mut self) -> Option<&mut kvm_run> {
        self.real.kvm_run()
    }
    fn tdx_vcpu_cmd(&self, cmd: &mut TdxVcpuCmd<'_>) -> Result<(), CocoError> {
        self.fw.tdx_vcpu_cmd(cmd)
    }
    fn tdx_exit(&mut self) -> Option<super::tdx::TdxExit<'_>> {
        self.real.tdx_exit()
    }
    fn port_io(&mut self) -> Option<PortIo<'_>> {
        self.real.port_io()
    }
}

/// EFER.SVME (AMD APM vol. 2 §3.1.7).
const EFER_SVME: u64 = 1 << 12;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Model, ModelConfig};
    use crate::sys::kvm::{Kvm, KVM_CAP_GUEST_MEMFD_FLAGS};
    use crate::sys::mem::GuestMapping;
    use crate::sys::record::Recorder;

    /// The real kernel is the recorder (it sees exactly what an ordinary VM would get), the
    /// firmware the model.
    fn door(view: GuestView) -> (Recorder, Model, Kvm) {
        let rec = Recorder::new(8, &[(KVM_CAP_NR_MEMSLOTS, 32)]);
        let model = Model::new(ModelConfig::default());
        let emu = EmuKvm::new(Arc::new(rec.clone()), Arc::new(model.clone()), view);
        (rec, model, Kvm::with(Arc::new(emu)))
    }

    const SNP: GuestView = GuestView::Sev {
        features: (1 << 1) | (1 << 3) | (1 << 4),
    };

    /// Real KVM gets a type-0 VM, the SEV MSRs filtered to user space, the shared mapping
    /// only (no guest_memfd) and its alias at the C-bit (`api.rst`: KVM_X86_SET_MSR_FILTER,
    /// KVM_SET_USER_MEMORY_REGION2); guest_memfd, attributes and launch commands never reach
    /// it.
    #[test]
    fn an_ordinary_vm_gets_shared_memory_and_the_sev_view() {
        let (rec, model, kvm) = door(SNP);
        // The memslot budget halves (one alias per slot) and the platform's caps are the
        // model's (the real kernel here has no guest_memfd).
        assert_eq!(kvm.check_extension(KVM_CAP_NR_MEMSLOTS), 16);
        assert_eq!(
            kvm.check_extension(KVM_CAP_GUEST_MEMFD_FLAGS),
            model.check_extension(KVM_CAP_GUEST_MEMFD_FLAGS)
        );
        let mut vm = kvm.create_vm(4).unwrap();
        let shared = Arc::new(GuestMapping::anonymous(0x10000).unwrap());
        let gmem = Arc::new(vm.create_guest_memfd(0x10000, 0).unwrap());
        vm.add_memslot(0, 0x10000, Some(&shared), Some(&gmem))
            .unwrap();
        vm.set_memory_attributes(0, 0x10000, true).unwrap();
        let real: Vec<String> = rec.lines();
        assert_eq!(
            real,
            [
                // The budget asked above (KVM_CAP_NR_MEMSLOTS = 10, `include/uapi/linux/kvm.h`).
                "kvm KVM_CHECK_EXTENSION cap=10",
                "kvm KVM_CREATE_VM type=0",
                "vm0 KVM_ENABLE_CAP cap=188 args0=0x4 args1=0x0 args2=0x0 args3=0x0",
                "vm0 KVM_X86_SET_MSR_FILTER flags=allow base=0xc0010130 nmsrs=2 bitmap=deny",
                // Where the alias slots start.
                "kvm KVM_CHECK_EXTENSION cap=10",
                "vm0 KVM_SET_USER_MEMORY_REGION2 slot=0 flags=0x0 guest_phys_addr=0x0 memory_size=0x10000 userspace_addr=mapped guest_memfd_offset=0 guest_memfd=none",
                "vm0 KVM_SET_USER_MEMORY_REGION2 slot=16 flags=0x0 guest_phys_addr=0x800000000000 memory_size=0x10000 userspace_addr=mapped guest_memfd_offset=0 guest_memfd=none",
            ]
        );
    }

    /// What the firmware puts into private pages lands in the memory the guest runs on; a
    /// write outside every slot is refused.
    #[test]
    fn the_sink_writes_into_the_slot_mapping() {
        let t = SlotTable::default();
        let m = GuestMapping::anonymous(0x2000).unwrap();
        t.slots
            .lock()
            .unwrap()
            .push((0, 0x10_0000, 0x2000, m.host_addr()));
        t.write(0x10_1000, &[7; 16]).unwrap();
        let mut b = [0u8; 16];
        m.read(0x1000, &mut b).unwrap();
        assert_eq!(b, [7; 16]);
        t.zero(0x10_1000, 8).unwrap();
        m.read(0x1000, &mut b).unwrap();
        assert_eq!(b[..8], [0; 8]);
        assert_eq!(b[8..], [7; 8]);
        for (gpa, len) in [(0x10_1ff8, 16), (0xF_F000, 8), (u64::MAX - 4, 8)] {
            assert_eq!(
                t.write(gpa, &vec![1; len]).unwrap_err().errno(),
                libc::EFAULT,
                "{gpa:#x}"
            );
        }
    }

    /// The SEV view's CPUID: leaf 0x8000001F (C-bit 47, reduction 1) and a max extended leaf
    /// that reaches it; the TDX view's leaf 0x21 "IntelTDX    " (AMD APM vol. 3 Fn8000_001F;
    /// Intel TDX module spec, CPUID virtualization).
    #[test]
    fn views_add_their_cpuid_leaves() {
        let e = |function, eax| kvm_cpuid_entry2 {
            function,
            eax,
            ..Default::default()
        };
        let host = CpuId::from_entries(&[e(0, 0xD), e(0x8000_0000, 0x8000_0008)]).unwrap();
        let sev = SNP.cpuid(&host).unwrap();
        let leaf = |c: &CpuId, f| c.as_slice().iter().find(|x| x.function == f).copied();
        let l = leaf(&sev, 0x8000_001F).unwrap();
        assert_eq!((l.eax, l.ebx), (0x1A, 47 | (1 << 6)));
        assert_eq!(leaf(&sev, 0x8000_0000).unwrap().eax, 0x8000_001F);
        let tdx = GuestView::Tdx.cpuid(&host).unwrap();
        let l = leaf(&tdx, 0x21).unwrap();
        let name: Vec<u8> = [l.ebx, l.edx, l.ecx]
            .iter()
            .flat_map(|r| r.to_le_bytes())
            .collect();
        assert_eq!(&name, b"IntelTDX    ");
        assert_eq!(leaf(&tdx, 0).unwrap().eax, 0x21);
        assert!(leaf(&tdx, 0x8000_001F).is_none());
    }
}
