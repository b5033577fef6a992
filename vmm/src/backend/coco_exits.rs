//! The run-time exits of SEV-ES and SNP guests, over the native ones
//! (`../shared/spec/kvm-coco-abi.md` §1.5; `Documentation/virt/kvm/api.rst`):
//!
//! - `KVM_EXIT_HYPERCALL` with `KVM_HC_MAP_GPA_RANGE` (12): the guest converts pages between
//!   private and shared; we set `KVM_SET_MEMORY_ATTRIBUTES`, record it in the page map, and
//!   always write the hypercall's return value (0, or a negative errno).
//! - `KVM_EXIT_MEMORY_FAULT`: an access whose private/shared state disagrees with the
//!   attributes (an implicit conversion): we convert and re-enter.
//! - `KVM_SYSTEM_EVENT_SEV_TERM` (6): the guest asked to terminate through the GHCB MSR
//!   protocol: a guest-fatal outcome naming the reason.
//!
//! Everything else goes to [`NativeExits`].

use std::sync::Arc;

use kvm_ioctls::{HypercallExit, VcpuExit};
use relaunch_core::limits::PAGE_SIZE;

use crate::memory::GuestMemory;
use crate::sys::kvm::{MemAttrs, PortIo};
use crate::vcpu::{ExitAction, ExitHandler, NativeExits, Outcome};

/// `KVM_HC_MAP_GPA_RANGE` (`include/uapi/linux/kvm_para.h`).
const KVM_HC_MAP_GPA_RANGE: u64 = 12;
/// `KVM_MAP_GPA_RANGE_ENCRYPTED` = `KVM_MAP_GPA_RANGE_ENC_STAT(1)` = bit 4
/// (`include/uapi/linux/kvm_para.h`).
const KVM_MAP_GPA_RANGE_ENCRYPTED: u64 = 1 << 4;
/// `KVM_MAP_GPA_RANGE_PAGE_SZ_4K/2M/1G` = 0/1/2 in bits 1:0 (same header).
const KVM_MAP_GPA_RANGE_PAGE_SZ_MASK: u64 = 3;
/// `KVM_MEMORY_EXIT_FLAG_PRIVATE` (`include/uapi/linux/kvm.h`): the faulting access was
/// private.
const KVM_MEMORY_EXIT_FLAG_PRIVATE: u64 = 1 << 3;
/// `KVM_SYSTEM_EVENT_SEV_TERM` (`include/uapi/linux/kvm.h`).
pub const KVM_SYSTEM_EVENT_SEV_TERM: u32 = 6;

/// Converts `[gpa, gpa + len)` of `memory` to private or shared: checked against guest
/// memory first (whole pages in one region with a private backing), then KVM
/// (`KVM_SET_MEMORY_ATTRIBUTES` through `attrs`), then the page map. Returns an errno.
pub(crate) fn convert_pages(
    attrs: &MemAttrs,
    memory: &GuestMemory,
    gpa: u64,
    len: u64,
    private: bool,
) -> Result<(), i32> {
    let ok = len > 0
        && gpa.is_multiple_of(PAGE_SIZE)
        && len.is_multiple_of(PAGE_SIZE)
        && memory
            .locate(gpa, len)
            .is_ok_and(|(r, _)| r.states.is_some());
    if !ok {
        return Err(libc::EINVAL);
    }
    attrs.set(gpa, len, private).map_err(|e| e.errno())?;
    memory.convert(gpa, len, private).map_err(|_| libc::EINVAL)
}

/// The exits of SEV-ES / SNP guests (module doc).
pub struct CocoExits {
    native: NativeExits,
    attrs: MemAttrs,
    memory: Arc<GuestMemory>,
}

impl CocoExits {
    /// Over the native exits, the VM's attribute handle and its memory.
    pub fn new(native: NativeExits, attrs: MemAttrs, memory: Arc<GuestMemory>) -> CocoExits {
        CocoExits {
            native,
            attrs,
            memory,
        }
    }

    /// Converts `[gpa, gpa + len)` ([`convert_pages`]).
    fn convert(&self, gpa: u64, len: u64, private: bool) -> Result<(), i32> {
        convert_pages(&self.attrs, &self.memory, gpa, len, private)
    }

    fn map_gpa_range(&self, exit: HypercallExit<'_>) -> ExitAction {
        let [gpa, npages, attrs, ..] = exit.args;
        // Page size 4 KiB << 9·n for n = 0, 1, 2; 3 is not defined.
        let shift = match attrs & KVM_MAP_GPA_RANGE_PAGE_SZ_MASK {
            0 => 12,
            1 => 21,
            2 => 30,
            _ => 0,
        };
        let result = if shift == 0 {
            Err(libc::EINVAL)
        } else {
            match npages.checked_mul(1 << shift) {
                Some(len) => self.convert(gpa, len, attrs & KVM_MAP_GPA_RANGE_ENCRYPTED != 0),
                None => Err(libc::EINVAL),
            }
        };
        // The guest reads this value: always written (0 or -errno).
        *exit.ret = match result {
            Ok(()) => 0,
            Err(errno) => (-i64::from(errno)) as u64,
        };
        ExitAction::Continue
    }
}

/// The GHCB MSR protocol termination request (GHCB spec §2.3.6, GHCBInfo 0x100): reason
/// code set in bits 15:12, reason code in bits 23:16.
pub fn sev_term_reason(ghcb_msr: u64) -> String {
    if ghcb_msr & 0xFFF != 0x100 {
        return format!("GHCB MSR {ghcb_msr:#x}");
    }
    format!(
        "reason set {} code {:#x} (GHCB MSR {ghcb_msr:#x})",
        (ghcb_msr >> 12) & 0xF,
        (ghcb_msr >> 16) & 0xFF
    )
}

impl ExitHandler for CocoExits {
    fn port_io(&self, id: u32, io: PortIo<'_>) -> ExitAction {
        self.native.port_io(id, io)
    }

    fn handle(&self, id: u32, exit: VcpuExit<'_>) -> ExitAction {
        match exit {
            VcpuExit::Hypercall(h) if h.nr == KVM_HC_MAP_GPA_RANGE => self.map_gpa_range(h),
            VcpuExit::Hypercall(h) => {
                // Only KVM_HC_MAP_GPA_RANGE is enabled; answer anything else -ENOSYS.
                *h.ret = (-i64::from(libc::ENOSYS)) as u64;
                ExitAction::Continue
            }
            VcpuExit::MemoryFault { flags, gpa, size } => {
                let private = flags & KVM_MEMORY_EXIT_FLAG_PRIVATE != 0;
                match self.convert(gpa, size, private) {
                    Ok(()) => ExitAction::Continue,
                    Err(errno) => ExitAction::End(Outcome::GuestFatal(format!(
                        "memory fault on vCPU {id} at {gpa:#x}+{size:#x} ({}): {}",
                        if private { "private" } else { "shared" },
                        crate::sys::Errno::new(errno)
                    ))),
                }
            }
            VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_SEV_TERM, data) => {
                ExitAction::End(Outcome::GuestFatal(format!(
                    "SEV termination request: {}",
                    data.first()
                        .map_or("no data".into(), |&m| sev_term_reason(m))
                )))
            }
            other => self.native.handle(id, other),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::backend::sev::SevBackend;
    use crate::backend::Backend;
    use crate::devices::console::Console;
    use crate::devices::fw_cfg::FwCfg;
    use crate::devices::{Devices, LaunchClock, UnknownLog};
    use crate::launch::Launch;
    use crate::sys::kvm::{Kvm, KVM_CAP_VM_TYPES};
    use crate::sys::record::Recorder;
    use crate::vstate::Host;
    use relaunch_core::plan::Platform;

    /// An SNP VM built on the recorder (64 MiB, every page private) and its exit handler.
    fn snp_vm() -> (Recorder, crate::backend::BuiltVm, Arc<dyn ExitHandler>) {
        let rec = Recorder::new(8, &[(KVM_CAP_VM_TYPES, 0b10001)]);
        let host = Arc::new(Host::with_kvm(Kvm::with(Arc::new(rec.clone())), true).unwrap());
        let plan = crate::testing::plan(crate::testing::HELLO, &[], 1, 64 << 20, 0);
        // The native test plan, re-targeted: same ops, platform SNP.
        let mut parts = plan.into_parts();
        parts.config.platform = Platform::Snp;
        parts.config.policy = Some(0x3_0000);
        if let Some(relaunch_core::plan::LaunchOp::CreateVm {
            platform, policy, ..
        }) = parts.ops.first_mut()
        {
            *platform = Platform::Snp;
            *policy = 0x3_0000;
        }
        let plan = relaunch_core::plan::LaunchPlan::from_parts(parts).unwrap();
        let backend = SevBackend::new(Platform::Snp, host);
        let built = backend.build(&Launch::from_plan(plan)).unwrap();
        let devices = Arc::new(Mutex::new(Devices::new(
            Arc::new(Console::capture(64)),
            Arc::clone(&built.memory),
            Arc::new(LaunchClock::start()),
            FwCfg::new(1, 1, &[]),
            Arc::new(UnknownLog::new()),
        )));
        let exits = backend.exit_handler(devices, &built.vm, &built.memory);
        rec.clear();
        (rec, built, exits)
    }

    fn hypercall(exits: &dyn ExitHandler, args: [u64; 6]) -> (ExitAction, u64) {
        let mut ret = 0xDEAD_u64;
        let a = exits.handle(
            0,
            VcpuExit::Hypercall(HypercallExit {
                nr: KVM_HC_MAP_GPA_RANGE,
                args,
                ret: &mut ret,
                longmode: 1,
            }),
        );
        (a, ret)
    }

    /// `KVM_HC_MAP_GPA_RANGE` (`Documentation/virt/kvm/x86/hypercalls.rst`: a0 = gpa,
    /// a1 = npages, a2 = attributes, bit 4 = encrypted): 2 pages at 0x10000 to shared sets
    /// the attributes to 0 over 0x2000 bytes, updates the page map, and writes ret = 0; back
    /// to private likewise; a range outside RAM is refused with ret = -EINVAL and no ioctl.
    #[test]
    fn map_gpa_range_converts_and_always_writes_ret() {
        let (rec, built, exits) = snp_vm();
        let (a, ret) = hypercall(&*exits, [0x10000, 2, 0, 0, 0, 0]);
        assert!(matches!(a, ExitAction::Continue));
        assert_eq!(ret, 0);
        assert_eq!(
            rec.lines(),
            ["vm0 KVM_SET_MEMORY_ATTRIBUTES address=0x10000 size=0x2000 attributes=0x0 flags=0"]
        );
        assert!(!built.memory.is_private(0x10000) && !built.memory.is_private(0x11000));
        assert!(built.memory.is_private(0x12000));
        rec.clear();
        let (_, ret) = hypercall(&*exits, [0x10000, 2, KVM_MAP_GPA_RANGE_ENCRYPTED, 0, 0, 0]);
        assert_eq!(ret, 0);
        assert_eq!(
            rec.lines(),
            ["vm0 KVM_SET_MEMORY_ATTRIBUTES address=0x10000 size=0x2000 attributes=0x8 flags=0"]
        );
        assert!(built.memory.is_private(0x10000));
        rec.clear();
        let (_, ret) = hypercall(&*exits, [1 << 40, 1, 0, 0, 0, 0]);
        assert_eq!(ret, (-i64::from(libc::EINVAL)) as u64);
        let (_, ret) = hypercall(&*exits, [0, u64::MAX, 0, 0, 0, 0]);
        assert_eq!(ret, (-i64::from(libc::EINVAL)) as u64);
        assert!(rec.lines().is_empty());
        // A refused ioctl reaches the guest as -errno too.
        rec.fail("KVM_SET_MEMORY_ATTRIBUTES", libc::EFAULT, 1);
        let (_, ret) = hypercall(&*exits, [0x10000, 1, 0, 0, 0, 0]);
        assert_eq!(ret, (-i64::from(libc::EFAULT)) as u64);
        assert!(built.memory.is_private(0x10000));
    }

    /// `KVM_EXIT_MEMORY_FAULT` (`api.rst`: flags bit 3 = the access was private): convert
    /// the range to what the access wanted and re-enter.
    #[test]
    fn memory_fault_converts_implicitly() {
        let (rec, built, exits) = snp_vm();
        let a = exits.handle(
            0,
            VcpuExit::MemoryFault {
                flags: 0,
                gpa: 0x20000,
                size: 0x1000,
            },
        );
        assert!(matches!(a, ExitAction::Continue));
        assert_eq!(
            rec.lines(),
            ["vm0 KVM_SET_MEMORY_ATTRIBUTES address=0x20000 size=0x1000 attributes=0x0 flags=0"]
        );
        assert!(!built.memory.is_private(0x20000));
        let a = exits.handle(
            0,
            VcpuExit::MemoryFault {
                flags: 0,
                gpa: 1 << 40,
                size: 0x1000,
            },
        );
        assert!(matches!(a, ExitAction::End(Outcome::GuestFatal(_))));
    }

    /// `KVM_SYSTEM_EVENT_SEV_TERM` with the GHCB MSR termination request (GHCBInfo 0x100,
    /// set 1, code 3): guest-fatal, naming the reason.
    #[test]
    fn sev_term_is_guest_fatal_with_the_reason() {
        let (_rec, _built, exits) = snp_vm();
        let data = [0x0003_1100_u64];
        match exits.handle(0, VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_SEV_TERM, &data)) {
            ExitAction::End(Outcome::GuestFatal(why)) => {
                assert!(why.contains("reason set 1 code 0x3"), "{why}");
            }
            _ => panic!("not fatal"),
        }
    }
}
