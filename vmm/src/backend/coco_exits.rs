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
//! - `KVM_EXIT_SNP_REQ_CERTS` (42, Linux 7.0, only with `run --snp-certs`): the guest's
//!   report request wants certificates: the file's table goes into the guest's buffer
//!   ([`super::snp_certs`]).
//!
//! Everything else goes to [`NativeExits`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use kvm_ioctls::{HypercallExit, VcpuExit};
use relaunch_core::limits::PAGE_SIZE;

use super::snp_certs::{self, FetchError, SnpCerts};
use crate::memory::GuestMemory;
use crate::sys::kvm::{MemAttrs, PortIo};
use crate::sys::sev::{OfdLock, SnpReqCerts};
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
    /// The certificate file SNP report requests get (`KVM_SEV_SNP_ENABLE_REQ_CERTS` was
    /// issued for this VM).
    certs: Option<Arc<SnpCerts>>,
    /// A certificate request failed with `EIO` (logged once per launch).
    certs_failed: AtomicBool,
}

impl CocoExits {
    /// Over the native exits, the VM's attribute handle and its memory.
    pub fn new(native: NativeExits, attrs: MemAttrs, memory: Arc<GuestMemory>) -> CocoExits {
        CocoExits {
            native,
            attrs,
            memory,
            certs: None,
            certs_failed: AtomicBool::new(false),
        }
    }

    /// The same, answering SNP certificate requests from `certs`.
    pub fn with_certs(mut self, certs: Arc<SnpCerts>) -> CocoExits {
        self.certs = Some(certs);
        self
    }

    /// `ret` for a certificate request, and the file's lock when the table was written
    /// (module doc of [`snp_certs`]).
    fn certs_answer(&self, id: u32, exit: &mut SnpReqCerts<'_>) -> (u64, Option<OfdLock>) {
        // Without a file this VM never enabled the exit: a kernel that exits anyway gets
        // the generic error, and the guest goes on without certificates.
        let Some(certs) = &self.certs else {
            return (snp_certs::ret::EIO, None);
        };
        let failed = |why: &str| {
            if !self.certs_failed.swap(true, Ordering::Relaxed) {
                crate::elog!(
                    "relaunch: vCPU {id}: SNP certificate request answered EIO: {why} \
                     (further failures of this launch not logged)"
                );
            }
        };
        match certs.fetch() {
            Err(FetchError::Busy) => (snp_certs::ret::EAGAIN, None),
            Err(FetchError::Failed(why)) => {
                failed(&why);
                (snp_certs::ret::EIO, None)
            }
            Ok((table, lock)) => {
                match snp_certs::answer(&self.memory, exit.gpa, exit.npages, &table) {
                    snp_certs::ret::OK => (snp_certs::ret::OK, Some(lock)),
                    snp_certs::ret::EIO => {
                        failed(&format!(
                            "the guest's buffer {:#x} (+{} bytes) is not shared guest RAM",
                            exit.gpa,
                            table.len()
                        ));
                        (snp_certs::ret::EIO, None)
                    }
                    other => (other, None),
                }
            }
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

    fn snp_req_certs(&self, id: u32, mut exit: SnpReqCerts<'_>) -> (ExitAction, Option<OfdLock>) {
        let (ret, lock) = self.certs_answer(id, &mut exit);
        // Always written: KVM reads it on the next KVM_RUN.
        *exit.ret = ret;
        (ExitAction::Continue, lock)
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
    use super::*;
    use crate::backend::sev::SevBackend;
    use crate::backend::snp_certs::SnpCerts;
    use crate::backend::Backend;
    use crate::devices::{Devices, LaunchClock};
    use crate::launch::Launch;
    use crate::sys::kvm::{Kvm, KVM_CAP_VM_TYPES};
    use crate::sys::record::Recorder;
    use crate::vstate::Host;
    use relaunch_core::plan::Platform;

    /// An SNP VM built on the recorder (64 MiB, every page private) and its exit handler.
    fn snp_vm() -> (Recorder, crate::backend::BuiltVm, Arc<dyn ExitHandler>) {
        snp_vm_on(Recorder::new(8, &[(KVM_CAP_VM_TYPES, 0b10001)]), None)
    }

    /// The same on `rec`, serving certificate requests from `certs` if given.
    fn snp_vm_on(
        rec: Recorder,
        certs: Option<Arc<SnpCerts>>,
    ) -> (Recorder, crate::backend::BuiltVm, Arc<dyn ExitHandler>) {
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
        assert!(backend.set_snp_certs(certs));
        let built = backend.build(&Launch::from_plan(plan)).unwrap();
        let devices = Devices::for_test(&built.memory);
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

    /// A host that offers certificate requests (`KVM_X86_SEV_SNP_REQ_CERTS`, group 1
    /// attribute 2, reads 1) and an SNP VM on it serving a table of one 5000-byte VCEK
    /// (5048 bytes: two pages) from a file; its path.
    fn snp_vm_with_certs(
        name: &str,
    ) -> (
        Recorder,
        crate::backend::BuiltVm,
        Arc<dyn ExitHandler>,
        std::path::PathBuf,
        Vec<u8>,
    ) {
        let vcek = crate::backend::snp_certs::VCEK_GUID;
        let blob = crate::backend::snp_certs::tests::table(&[(vcek, &[0x5A; 5000])]);
        let path =
            std::env::temp_dir().join(format!("relaunch-coco-certs-{}-{name}", std::process::id()));
        std::fs::write(&path, &blob).unwrap();
        let certs = Arc::new(SnpCerts::open(&path).unwrap());
        let rec = Recorder::new(8, &[(KVM_CAP_VM_TYPES, 0b10001)]).with_device_attrs(&[(1, 2, 1)]);
        let (rec, built, exits) = snp_vm_on(rec, Some(certs));
        (rec, built, exits, path, blob)
    }

    /// Asks `exits` for certificates as KVM does (`api.rst` KVM_EXIT_SNP_REQ_CERTS: `ret` is
    /// 0 on exit): the action, `ret`, `npages` and the lock it hands back.
    fn request(
        exits: &dyn ExitHandler,
        gpa: u64,
        npages: u64,
    ) -> (ExitAction, u64, u64, Option<OfdLock>) {
        let (mut n, mut ret) = (npages, 0);
        let (a, lock) = exits.snp_req_certs(
            0,
            SnpReqCerts {
                gpa,
                npages: &mut n,
                ret: &mut ret,
            },
        );
        (a, ret, n, lock)
    }

    fn exclusive(path: &std::path::Path) -> Result<OfdLock, crate::sys::Errno> {
        let rw = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        crate::sys::sev::ofd_lock(rw, true)
    }

    /// GHCB spec §4.1.8.1 and `api.rst`: the table goes into the guest's (shared) buffer as
    /// the file holds it, `ret` 0, and the handler hands back the file's shared lock, which
    /// keeps an updater's exclusive lock out until it is dropped
    /// (`amd-memory-encryption.rst`, KVM_SEV_SNP_ENABLE_REQ_CERTS).
    #[test]
    fn certificate_request_writes_the_table_and_holds_the_lock() {
        let (_rec, built, exits, path, blob) = snp_vm_with_certs("fits");
        // The guest made its buffer shared (two pages at 0x10000).
        built.memory.convert(0x10000, 0x2000, false).unwrap();
        let (a, ret, npages, lock) = request(&*exits, 0x10000, 2);
        assert!(matches!(a, ExitAction::Continue));
        assert_eq!((ret, npages), (0, 2));
        let mut back = vec![0; blob.len()];
        built.memory.read(0x10000, &mut back).unwrap();
        assert_eq!(back, blob);
        let lock = lock.expect("the lock is handed back with ret 0");
        let busy = exclusive(&path).unwrap_err().errno();
        assert!(matches!(busy, libc::EAGAIN | libc::EACCES), "{busy}");
        drop(lock);
        assert!(exclusive(&path).is_ok());
        let _ = std::fs::remove_file(&path);
    }

    /// `api.rst` KVM_EXIT_SNP_REQ_CERTS `ret` values: `ENOSPC` (28) with `npages` = the pages
    /// needed (GHCB: returned in RBX) for a buffer too small; `EIO` (5) for a buffer in
    /// private memory or outside RAM; `EAGAIN` (11, "the host is busy and the guest should
    /// retry") while an updater holds the file exclusively. No lock is held for any of them.
    /// A handler without a file answers `EIO`; a non-SNP handler ends the launch.
    #[test]
    fn certificate_request_refusals() {
        let (_rec, built, exits, path, _blob) = snp_vm_with_certs("refusals");
        built.memory.convert(0x10000, 0x2000, false).unwrap();
        for given in [0, 1] {
            let (a, ret, npages, lock) = request(&*exits, 0x10000, given);
            assert!(matches!(a, ExitAction::Continue));
            assert_eq!((ret, npages), (28, 2), "given {given}");
            assert!(lock.is_none());
        }
        // 0x20000 is still private; 1 TiB is outside the 64 MiB of RAM.
        for gpa in [0x20000, 1 << 40] {
            let (_, ret, npages, lock) = request(&*exits, gpa, 2);
            assert_eq!((ret, npages), (5, 2), "{gpa:#x}");
            assert!(lock.is_none());
        }
        let updater = exclusive(&path).unwrap();
        let (_, ret, _, lock) = request(&*exits, 0x10000, 2);
        assert_eq!(ret, 11);
        assert!(lock.is_none());
        drop(updater);
        assert_eq!(request(&*exits, 0x10000, 2).1, 0);
        let _ = std::fs::remove_file(&path);

        let (_rec, _built, plain) = snp_vm();
        let (a, ret, _, lock) = request(&*plain, 0x10000, 2);
        assert!(matches!(a, ExitAction::Continue));
        assert_eq!(ret, 5);
        assert!(lock.is_none());
        let native = NativeExits::new(Devices::for_test(&built.memory));
        let (a, _, _, _) = request(&native, 0x10000, 2);
        assert!(matches!(a, ExitAction::End(Outcome::GuestFatal(_))));
    }

    /// The vCPU loop, against the recorder's kernel: after the handler wrote the table, the
    /// next `KVM_RUN` carries `ret` 0 and `immediate_exit` (KVM sends the request to the
    /// firmware, then returns EINTR without entering the guest:
    /// `amd-memory-encryption.rst`), and the loop goes on without it; an `ENOSPC` answer
    /// re-enters the guest directly, with the pages needed in `npages`.
    #[test]
    fn vcpu_loop_completes_the_request_before_dropping_the_lock() {
        use crate::vcpu::{run_vcpu, RunControl};
        let (rec, mut built, exits, path, blob) = snp_vm_with_certs("loop");
        built.memory.convert(0x10000, 0x2000, false).unwrap();
        // KVM_EXIT_SNP_REQ_CERTS (42): gpa 0x10000, npages 2, ret 0; then ENOSPC's turn.
        rec.queue_exit(42, &[0x10000, 2, 0]);
        rec.queue_exit(42, &[0x10000, 1, 0]);
        rec.clear();
        let vcpu = built.vcpus.remove(0);
        let ctl = Arc::new(RunControl::new());
        let _vcpu = run_vcpu(
            vcpu,
            0,
            Arc::clone(&ctl),
            Arc::clone(&exits),
            Arc::new(LaunchClock::start()),
        );
        assert_eq!(
            rec.lines(),
            [
                "vm0.vcpu0 KVM_RUN",
                "vm0.vcpu0 KVM_RUN immediate_exit=1 snp_req_certs.ret=0 npages=2",
                "vm0.vcpu0 KVM_RUN",
                "vm0.vcpu0 KVM_RUN snp_req_certs.ret=28 npages=2",
            ]
        );
        // The recorder's kernel has nothing more to run: ENOSYS ends the launch.
        let (outcome, _) = ctl.wait();
        assert!(
            matches!(outcome, Outcome::VmmError(ref e) if e.contains("KVM_RUN")),
            "{outcome:?}"
        );
        let mut back = vec![0; blob.len()];
        built.memory.read(0x10000, &mut back).unwrap();
        assert_eq!(back, blob);
        // The lock went with the completed request.
        assert!(exclusive(&path).is_ok());
        let _ = std::fs::remove_file(&path);
    }
}
