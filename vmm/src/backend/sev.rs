//! The AMD SEV family on KVM: SEV (VM type 2), SEV-ES (3) and SEV-SNP (4), in the order KVM
//! requires (`Documentation/virt/kvm/x86/amd-memory-encryption.rst`;
//! `../shared/spec/kvm-coco-abi.md` §1.4):
//!
//! | phase | SNP | SEV-ES / SEV |
//! |---|---|---|
//! | `create_vm` | `KVM_CREATE_VM(4)`, `INIT2`, `SNP_LAUNCH_START` | `KVM_CREATE_VM(3/2)`, `INIT2`, `LAUNCH_START` |
//! | `memory` | guest_memfd + shared mapping per slot, `SET_MEMORY_ATTRIBUTES(PRIVATE)` | anonymous memory per slot, `MEMORY_ENCRYPT_REG_REGION` |
//! | `vcpus` | irqchip, vCPUs, CPUID, `ENABLE_CAP(EXIT_HYPERCALL)` | irqchip, vCPUs, CPUID |
//! | `op` | stage + `SNP_LAUNCH_UPDATE` per run of same-type pages; registers | stage + `LAUNCH_UPDATE_DATA` per run; registers |
//! | `finish` | `SNP_LAUNCH_FINISH` (ID block, host data) | (`LAUNCH_UPDATE_VMSA`), `LAUNCH_MEASURE`, the owner's turn, `LAUNCH_FINISH` |
//!
//! The owner's turn (SEV, SEV-ES, with an [`OwnerGate`]): the gate gets the
//! `LAUNCH_MEASURE` blob and, until it returns, each `LAUNCH_SECRET` the guest owner asks
//! for is issued through the door ([`inject_secret`]); then `LAUNCH_FINISH`. Every build
//! (a relaunch too) has its own turn: a new launch has a new MEASURE, and a secret wrapped
//! for the last one no longer verifies.
//!
//! Every build runs on a new VM fd with fresh memory: calling SNP launch commands again after
//! FINISH on the old VM is a host RMP fault (spec §1.4), and private memory is re-measured.
//!
//! Before anything is created, the launch is checked against what this host's KVM accepts
//! ([`check_host`]: `KVM_X86_SNP_POLICY_BITS` and `KVM_X86_SEV_VMSA_FEATURES`, read once per
//! process into [`Host::sev_attrs`]).
//!
//! SNP certificate requests ([`Backend::set_snp_certs`], `run --snp-certs`): right after
//! `SNP_LAUNCH_START`, before any vCPU, `KVM_SEV_SNP_ENABLE_REQ_CERTS`, and the exit handler
//! answers `KVM_EXIT_SNP_REQ_CERTS` from the file ([`super::snp_certs`]). Only with a file:
//! without one KVM answers report requests itself with an empty certificate table
//! (`snp_handle_ext_guest_req`; `amd-memory-encryption.rst` presents the command as the way
//! "to allow userspace to provide a certificate"), which is what enabling the exit and
//! answering an empty table would do, one exit per request later. A kernel without
//! `KVM_X86_SEV_SNP_REQ_CERTS` (before Linux 7.0) cannot serve a file: refused before
//! `KVM_CREATE_VM`.
//!
//! The SNP CPUID page is built as QEMU builds it ([`super::snp_cpuid`]: vCPU 0's CPUID, the
//! one `KVM_SET_CPUID2` gave it), whatever the bundle's page holds; one page per
//! `SNP_LAUNCH_UPDATE`, and a page the firmware refuses ends the build with the leaves it
//! corrected.
//!
//! Not done here (say so rather than guess): APs are left to the guest (no
//! `KVM_SET_MP_STATE`: their state is sealed in the VMSA on SEV-ES/SNP).

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use relaunch_core::limits::PAGE_SIZE;
use relaunch_core::plan::{LaunchOp, LaunchPlan, PageData, PageKind, Platform};

use super::native::{Prepared, PreparedCache};
use super::snp_certs::SnpCerts;
use super::snp_cpuid::CpuidTable;
use super::{
    kvm_err, Backend, BackendError, BuiltVm, ExecError, ExecTimings, LaunchSecret, OwnerGate,
    Phases,
};
use crate::devices::Devices;
use crate::launch::Launch;
use crate::memory::{GuestMemory, Region};
use crate::sys::coco::{CocoError, FwStatus, SevCmd, SnpUpdate, Source};
use crate::sys::kvm::{Vcpu, Vm};
use crate::sys::mem::GuestMapping;
use crate::vcpu::{ExitHandler, NativeExits};
use crate::vstate::{Host, SevAttrs};

/// `KVM_X86_SEV_VM`, `KVM_X86_SEV_ES_VM`, `KVM_X86_SNP_VM` (`arch/x86/include/uapi/asm/kvm.h`).
pub fn vm_type(platform: Platform) -> Option<u64> {
    match platform {
        Platform::Sev => Some(2),
        Platform::SevEs => Some(3),
        Platform::Snp => Some(4),
        _ => None,
    }
}

/// `KVM_CAP_EXIT_HYPERCALL` (`include/uapi/linux/kvm.h`).
pub const KVM_CAP_EXIT_HYPERCALL: u32 = 201;
/// `KVM_HC_MAP_GPA_RANGE` (`include/uapi/linux/kvm_para.h`): bit 12 of the cap's mask.
pub const KVM_HC_MAP_GPA_RANGE: u64 = 12;

/// SNP guest policy bit 17: reserved, must be one (SEV-SNP firmware ABI, GUEST_POLICY;
/// KVM refuses a policy without it: spec §1.3).
const SNP_POLICY_RESERVED_ONE: u64 = 1 << 17;

/// `KVM_SEV_SNP_PAGE_TYPE_CPUID` (`arch/x86/include/uapi/asm/kvm.h`).
const SNP_PAGE_TYPE_CPUID: u8 = 6;

/// `SEV_RET_INVALID_PARAM` (`include/uapi/linux/psp-sev.h`): what the firmware answers to a
/// CPUID page it corrected.
const SEV_RET_INVALID_PARAM: u32 = 0x16;

/// The name of SNP guest-policy bit `bit` (SEV-SNP firmware ABI, GUEST_POLICY;
/// `../shared/spec/igvm-snp.md` §4.1).
fn snp_policy_bit(bit: u32) -> &'static str {
    match bit {
        0..=7 => "ABI_MINOR",
        8..=15 => "ABI_MAJOR",
        16 => "SMT",
        17 => "reserved, must be one",
        18 => "MIGRATE_MA",
        19 => "DEBUG",
        20 => "SINGLE_SOCKET",
        21 => "CXL_ALLOW",
        22 => "MEM_AES_256_XTS",
        23 => "RAPL_DIS",
        24 => "CIPHERTEXT_HIDING_DRAM",
        25 => "PAGE_SWAP_DISABLE",
        _ => "reserved",
    }
}

/// The name of SEV_FEATURES bit `bit` (AMD APM Vol. 2, VMSA SEV_FEATURES;
/// `../shared/spec/igvm-snp.md` §4.2).
fn vmsa_feature_bit(bit: u32) -> &'static str {
    match bit {
        0 => "SNPActive",
        1 => "vTOM",
        2 => "ReflectVC",
        3 => "RestrictedInjection",
        4 => "AlternateInjection",
        5 => "DebugSwap",
        6 => "PreventHostIBS",
        7 => "BTBIsolation",
        8 => "VmplSSS",
        9 => "SecureTSC",
        14 => "VmsaRegProt",
        15 => "SmtProtection",
        _ => "no name known here",
    }
}

/// `bits` as "bit 19 (DEBUG) and bit 20 (SINGLE_SOCKET)".
fn bit_names(bits: u64, name: fn(u32) -> &'static str) -> String {
    let list: Vec<String> = (0..64)
        .filter(|b| bits & (1 << b) != 0)
        .map(|b| format!("bit {b} ({})", name(b)))
        .collect();
    match list.as_slice() {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// Refuses, with one sentence, a launch this host's KVM would refuse at `INIT2` or
/// `SNP_LAUNCH_START` — checked before `KVM_CREATE_VM`, so nothing is created:
/// - SNP: the must-be-one policy bit 17 (always: KVM `snp_launch_start`), and, where the
///   kernel reports `KVM_X86_SNP_POLICY_BITS` (Linux 6.19+), no policy bit outside it.
///   Older kernels answer `ENXIO`: only bit 17 is checked here and `SNP_LAUNCH_START`
///   refuses the rest itself (`EINVAL`);
/// - SEV-ES and SNP: no `vmsa_features` bit outside `KVM_X86_SEV_VMSA_FEATURES` (INIT2's own
///   check, `amd-memory-encryption.rst` KVM_SEV_INIT2). The attribute came with INIT2
///   (6.10), so a kernel without it has no SEV-family VM types either; not asked, not
///   checked. SEV's `vmsa_features` is always 0.
///
/// # Errors
/// The sentence naming the offending bits.
pub fn check_host(
    platform: Platform,
    policy: u64,
    vmsa_features: u64,
    attrs: &SevAttrs,
) -> Result<(), String> {
    if platform == Platform::Snp {
        if policy & SNP_POLICY_RESERVED_ONE == 0 {
            return Err(format!(
                "SNP policy {policy:#x} lacks bit 17 (reserved, must be one)"
            ));
        }
        if let Some(ok) = attrs.snp_policy_bits {
            let extra = policy & !ok;
            if extra != 0 {
                return Err(format!(
                    "SNP policy {policy:#x} sets {}, which this host's KVM does not accept \
                     (KVM_X86_SNP_POLICY_BITS = {ok:#x})",
                    bit_names(extra, snp_policy_bit)
                ));
            }
        }
    }
    if matches!(platform, Platform::Snp | Platform::SevEs) {
        if let Some(ok) = attrs.vmsa_features {
            let extra = vmsa_features & !ok;
            if extra != 0 {
                return Err(format!(
                    "SEV_FEATURES {vmsa_features:#x} sets {}, which this host's KVM does not \
                     accept in KVM_SEV_INIT2 (KVM_X86_SEV_VMSA_FEATURES = {ok:#x})",
                    bit_names(extra, vmsa_feature_bit)
                ));
            }
        }
    }
    Ok(())
}

/// `KVM_SEV_SNP_PAGE_TYPE_*` of a page kind (`arch/x86/include/uapi/asm/kvm.h`): NORMAL 1,
/// ZERO 3, UNMEASURED 4, SECRETS 5, CPUID 6; `None` for shared pages (not given to the
/// firmware).
pub fn snp_page_type(kind: PageKind) -> Option<u8> {
    match kind {
        PageKind::Normal => Some(1),
        PageKind::Zero => Some(3),
        PageKind::Unmeasured => Some(4),
        PageKind::Secrets => Some(5),
        PageKind::Cpuid => Some(6),
        PageKind::Shared => None,
    }
}

/// The SEV-family backend for one platform (SEV, SEV-ES or SNP).
#[derive(Debug)]
pub struct SevBackend {
    platform: Platform,
    host: Arc<Host>,
    /// The per-launch preparation (slots, CPUID tables) every backend shares.
    prepared: PreparedCache,
    /// The last SEV/SEV-ES `LAUNCH_MEASURE` blob (48 bytes: measurement + mnonce).
    measure: Mutex<Option<[u8; 48]>>,
    /// The guest owner's turn between `LAUNCH_MEASURE` and `LAUNCH_FINISH` (SEV, SEV-ES).
    gate: Mutex<Option<Arc<dyn OwnerGate>>>,
    /// The certificate file SNP report requests get (module doc).
    certs: Mutex<Option<Arc<SnpCerts>>>,
}

impl SevBackend {
    /// A backend for `platform` (SEV, SEV-ES or SNP) on `host`.
    pub fn new(platform: Platform, host: Arc<Host>) -> SevBackend {
        SevBackend {
            platform,
            prepared: PreparedCache::new(Arc::clone(&host)),
            host,
            measure: Mutex::new(None),
            gate: Mutex::new(None),
            certs: Mutex::new(None),
        }
    }

    fn certs(&self) -> Option<Arc<SnpCerts>> {
        self.certs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The same with the guest owner's turn in every SEV / SEV-ES build
    /// ([`Backend::set_owner_gate`]).
    pub fn with_gate(platform: Platform, host: Arc<Host>, gate: Arc<dyn OwnerGate>) -> SevBackend {
        let b = SevBackend::new(platform, host);
        b.set_owner_gate(Some(gate));
        b
    }

    /// The blob `LAUNCH_MEASURE` returned for the last SEV/SEV-ES build (for the audit).
    pub fn launch_measure(&self) -> Option<[u8; 48]> {
        *self.measure.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Backend for SevBackend {
    fn platform(&self) -> Platform {
        self.platform
    }

    fn memory_backing(&self) -> &'static str {
        if self.platform == Platform::Snp {
            "guest_memfd"
        } else {
            "anonymous"
        }
    }

    fn set_owner_gate(&self, gate: Option<Arc<dyn OwnerGate>>) -> bool {
        *self.gate.lock().unwrap_or_else(PoisonError::into_inner) = gate;
        matches!(self.platform, Platform::Sev | Platform::SevEs)
    }

    fn set_snp_certs(&self, certs: Option<Arc<SnpCerts>>) -> bool {
        let snp = self.platform == Platform::Snp;
        *self.certs.lock().unwrap_or_else(PoisonError::into_inner) = certs.filter(|_| snp);
        snp
    }

    fn build(&self, launch: &Launch) -> Result<BuiltVm, ExecError> {
        let plan = launch.plan();
        let prep = self.prepared.get(launch)?;
        // One gate for the whole build, even if it is swapped meanwhile.
        let gate = self
            .gate
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let phases = SevBuild {
            platform: self.platform,
            host: &self.host,
            prep: &prep,
            plan,
            launch_id: launch.id(),
            vm: None,
            vcpus: Vec::new(),
            memory: GuestMemory::default(),
            run: None,
            measure: &self.measure,
            cpuid: None,
            gate,
            req_certs: self.certs().is_some(),
            timings: ExecTimings::default(),
            t0: Instant::now(),
        };
        super::run_phases(phases, plan)
    }

    fn exit_handler(
        &self,
        devices: Arc<Mutex<Devices>>,
        vm: &Vm,
        memory: &Arc<GuestMemory>,
    ) -> Arc<dyn ExitHandler> {
        // The in-kernel irqchip (`vcpus`) takes the UART's IRQ 4.
        devices
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .connect_irq(Arc::new(vm.irq_line()));
        let native = NativeExits::new(devices);
        if self.platform == Platform::Sev {
            // Plain SEV guests have no GHCB protocol and no private/shared memslots.
            Arc::new(native)
        } else {
            let exits =
                super::coco_exits::CocoExits::new(native, vm.mem_attrs(), Arc::clone(memory));
            Arc::new(match self.certs() {
                Some(certs) => exits.with_certs(certs),
                None => exits,
            })
        }
    }
}

/// A run of consecutive pages waiting for one launch-update call.
#[derive(Clone, Copy, Debug)]
struct Run {
    gpa: u64,
    len: u64,
    /// SNP page type (0 on SEV/SEV-ES).
    page_type: u8,
}

struct SevBuild<'b> {
    platform: Platform,
    host: &'b Host,
    prep: &'b Prepared,
    plan: &'b LaunchPlan,
    launch_id: u64,
    vm: Option<Vm>,
    vcpus: Vec<Vcpu>,
    memory: GuestMemory,
    run: Option<Run>,
    measure: &'b Mutex<Option<[u8; 48]>>,
    /// The SNP CPUID table staged for this build's CPUID pages (built on the first).
    cpuid: Option<CpuidTable>,
    gate: Option<Arc<dyn OwnerGate>>,
    /// `KVM_SEV_SNP_ENABLE_REQ_CERTS` for this build (SNP with a certificate file).
    req_certs: bool,
    timings: ExecTimings,
    t0: Instant,
}

fn no_vm() -> BackendError {
    BackendError::Kvm {
        what: "no VM (create_vm did not run)",
        errno: crate::sys::Errno::new(libc::EINVAL),
    }
}

fn coco(what: &'static str) -> impl FnOnce(crate::sys::coco::CocoError) -> BackendError {
    move |error| BackendError::Coco { what, error }
}

impl SevBuild<'_> {
    fn sev_fd(&self) -> i32 {
        self.host.sev.as_ref().map_or(-1, AsRawFd::as_raw_fd)
    }

    fn vm(&self) -> Result<&Vm, BackendError> {
        self.vm.as_ref().ok_or_else(no_vm)
    }

    /// The `CreateVm` op's policy and vmsa_features.
    fn create_args(&self) -> (u64, u64) {
        self.plan
            .ops()
            .iter()
            .find_map(|op| match *op {
                LaunchOp::CreateVm {
                    policy,
                    vmsa_features,
                    ..
                } => Some((policy, vmsa_features)),
                _ => None,
            })
            .unwrap_or((0, 0))
    }

    /// The SNP CPUID table of this build: vCPU 0's CPUID as QEMU turns it into a CPUID page
    /// (`snp_launch_update_cpuid` reads vCPU 0's `KVM_GET_CPUID2`; ours is the table
    /// `KVM_SET_CPUID2` gave it, which KVM returns as set but for bits it updates at run
    /// time — OSXSAVE, the APIC bit, 0xD EBX — that the firmware leaves unchecked or that
    /// the page overrides: `kvm_update_cpuid_runtime`).
    fn cpuid_table(&mut self) -> Result<&CpuidTable, BackendError> {
        if self.cpuid.is_none() {
            let cpuid = self
                .prep
                .cpuid(0)
                .ok_or(BackendError::Vp { vp: 0, vcpus: 0 })?;
            let table = CpuidTable::from_kvm(cpuid)
                .map_err(|e| BackendError::Unsupported(e.to_string()))?;
            self.cpuid = Some(table);
        }
        self.cpuid
            .as_ref()
            .ok_or(BackendError::Vp { vp: 0, vcpus: 0 })
    }

    /// Adds `[gpa, gpa + len)` of SNP type `page_type` to the pending run, issuing the run
    /// first when the page does not extend it.
    fn queue(&mut self, gpa: u64, len: u64, page_type: u8) -> Result<(), BackendError> {
        if let Some(run) = &mut self.run {
            let same_region = self
                .memory
                .locate(run.gpa, run.len + len)
                .is_ok_and(|(r, _)| r.end() >= gpa + len);
            // A CPUID page is a run of its own: the firmware's verdict on it comes back
            // for that call alone (a refused page inside a longer run would end the call
            // with the pages before it done, and the next call would resubmit the page as
            // the firmware corrected it: `sev_gmem_post_populate`).
            let cpuid = page_type == SNP_PAGE_TYPE_CPUID;
            if run.page_type == page_type && !cpuid && run.gpa + run.len == gpa && same_region {
                run.len += len;
                return Ok(());
            }
        }
        self.flush()?;
        self.run = Some(Run {
            gpa,
            len,
            page_type,
        });
        Ok(())
    }

    /// Issues the pending run: `SNP_LAUNCH_UPDATE` looped on partial progress, or one
    /// `LAUNCH_UPDATE_DATA`.
    fn flush(&mut self) -> Result<(), BackendError> {
        let Some(run) = self.run.take() else {
            return Ok(());
        };
        let sev_fd = self.sev_fd();
        let vm = self.vm()?;
        let (region, offset) = self.memory.locate(run.gpa, run.len)?;
        let mapping: &GuestMapping =
            region
                .shared
                .as_deref()
                .ok_or(crate::memory::MemError::Private {
                    gpa: run.gpa,
                    len: run.len,
                })?;
        if self.platform == Platform::Snp {
            // ZERO pages carry no source (KVM ignores uaddr for them: spec §1.3).
            let source = (run.page_type != 3).then_some(Source { mapping, offset });
            let mut cmd = SevCmd::SnpLaunchUpdate(SnpUpdate {
                gfn_start: run.gpa / PAGE_SIZE,
                source,
                len: run.len,
                page_type: run.page_type,
            });
            // The kernel advances gfn_start/uaddr/len by what it did: loop until len is 0,
            // refusing a call that made no progress (it would loop forever).
            let left = |c: &SevCmd<'_>| match c {
                SevCmd::SnpLaunchUpdate(u) => u.len,
                _ => 0,
            };
            // A signal before any page was done is -EINTR (or -EAGAIN) with the arguments as
            // they were: retry, a bounded number of times in a row.
            let mut stalled = 0u32;
            while left(&cmd) > 0 {
                let before = left(&cmd);
                match vm.sev_cmd(&mut cmd, sev_fd) {
                    Err(e)
                        if matches!(e.errno.errno(), libc::EINTR | libc::EAGAIN)
                            && stalled < MAX_STALLED_CALLS =>
                    {
                        stalled += 1;
                        continue;
                    }
                    Err(e) if run.page_type == SNP_PAGE_TYPE_CPUID => {
                        return Err(cpuid_refused(
                            self.cpuid.as_ref(),
                            run.gpa,
                            mapping,
                            offset,
                            e,
                        ));
                    }
                    r => r.map_err(coco("KVM_SEV_SNP_LAUNCH_UPDATE"))?,
                }
                stalled = 0;
                if left(&cmd) >= before {
                    return Err(BackendError::Coco {
                        what: "KVM_SEV_SNP_LAUNCH_UPDATE made no progress",
                        error: crate::sys::coco::CocoError::errno(libc::EIO),
                    });
                }
            }
        } else {
            let len = u32::try_from(run.len)
                .map_err(|_| BackendError::Unsupported("a launch update over 4 GiB".into()))?;
            vm.sev_cmd(
                &mut SevCmd::LaunchUpdateData {
                    source: Source { mapping, offset },
                    len,
                },
                sev_fd,
            )
            .map_err(coco("KVM_SEV_LAUNCH_UPDATE_DATA"))?;
        }
        Ok(())
    }
}

/// One `KVM_SEV_LAUNCH_SECRET` for the guest owner: the packet decrypts into
/// `[gpa, gpa + packet.len())`, which must be shared-mapped guest RAM inside one region (the
/// kernel pins that host range and, on real hardware, also wants it physically contiguous:
/// `sev_launch_secret` answers EINVAL otherwise, which a range within one 4 KiB page always
/// is). Lengths and alignment are the firmware's to check (`relaunch_core::owner`); the
/// answer is a sentence with the firmware status.
fn inject_secret(
    vm: &Vm,
    memory: &GuestMemory,
    sev_fd: i32,
    s: &LaunchSecret,
) -> Result<(), String> {
    let len = s.packet.len() as u64;
    if len == 0 {
        return Err("an empty secret packet".into());
    }
    let guest_len = u32::try_from(len).map_err(|_| format!("a {len}-byte packet"))?;
    let (mapping, offset) = memory.shared_range(s.gpa, len).map_err(|e| {
        format!(
            "the secret's range {:#x}+{len:#x} is not guest RAM inside one region: {e}",
            s.gpa
        )
    })?;
    vm.sev_cmd(
        &mut SevCmd::LaunchSecret {
            header: &s.header,
            guest: Source { mapping, offset },
            guest_len,
            trans: &s.packet,
        },
        sev_fd,
    )
    .map_err(|e| format!("KVM_SEV_LAUNCH_SECRET: {e}"))
}

/// `SNP_LAUNCH_UPDATE` calls in a row interrupted before doing a page before the build
/// gives up (a signal storm must not hang the launch).
const MAX_STALLED_CALLS: u32 = 64;

/// The error of a refused CPUID page at `gpa` (staged at `offset` of `mapping`): with
/// `INVALID_PARAM` the firmware wrote the corrected table back and KVM copied it to the
/// source (`amd-memory-encryption.rst`, SNP_LAUNCH_UPDATE; spec §1.3), so the leaves it
/// changed are named, as QEMU reports them (`sev_snp_cpuid_report_mismatches`).
fn cpuid_refused(
    given: Option<&CpuidTable>,
    gpa: u64,
    mapping: &GuestMapping,
    offset: u64,
    error: CocoError,
) -> BackendError {
    if error.fw_error != Some(FwStatus::Sev(SEV_RET_INVALID_PARAM)) {
        return BackendError::Coco {
            what: "KVM_SEV_SNP_LAUNCH_UPDATE",
            error,
        };
    }
    let mut page = [0u8; PAGE_SIZE as usize];
    let back = mapping.read(offset, &mut page).ok().and(given);
    let mismatches = match back {
        None => "the corrected page could not be read back".to_string(),
        Some(given) => {
            let m = given.mismatches(&CpuidTable::from_page(&page));
            if m.is_empty() {
                "the page came back unchanged (the firmware refuses a CPUID page with reserved \
                 header fields set or more than 64 functions without correcting it)"
                    .to_string()
            } else {
                m.join("; ")
            }
        }
    };
    BackendError::SnpCpuid {
        gpa,
        error,
        mismatches,
    }
}

impl Phases for SevBuild<'_> {
    fn create_vm(&mut self) -> Result<(), BackendError> {
        if self.plan.platform() != self.platform {
            return Err(BackendError::WrongPlatform {
                plan: self.plan.platform(),
                backend: self.platform,
            });
        }
        let vm_type = vm_type(self.platform)
            .ok_or_else(|| BackendError::Unsupported(format!("{} is not SEV", self.platform)))?;
        let (policy, vmsa_features) = self.create_args();
        // Checked before anything is created.
        check_host(self.platform, policy, vmsa_features, &self.host.sev_attrs)
            .map_err(BackendError::Unsupported)?;
        if self.req_certs && !self.host.sev_attrs.snp_req_certs() {
            return Err(BackendError::Unsupported(format!(
                "--snp-certs needs KVM_X86_SEV_SNP_REQ_CERTS (Linux 7.0+), which this host's \
                 KVM does not offer ({}): it answers guests' report requests itself, with no \
                 certificates",
                self.host
                    .sev_attrs
                    .snp_req_certs_attr
                    .map_or("ENXIO".to_string(), |v| format!("it reads {v}"))
            )));
        }
        let sev_policy = if self.platform == Platform::Snp {
            0
        } else {
            // `kvm_sev_launch_start.policy` is a u32 (spec §1.3).
            u32::try_from(policy).map_err(|_| {
                BackendError::Unsupported(format!("SEV policy {policy:#x} does not fit 32 bits"))
            })?
        };
        let t = Instant::now();
        self.t0 = t;
        let vm = self
            .host
            .kvm
            .create_vm(vm_type)
            .map_err(kvm_err("KVM_CREATE_VM"))?;
        let sev_fd = self.sev_fd();
        // INIT2: vmsa_features must be 0 for SEV; ghcb_version 0 (= 2 for SEV-ES/SNP, must be
        // 0 for SEV) (`amd-memory-encryption.rst`, KVM_SEV_INIT2; spec §1.3).
        let vmsa_features = if self.platform == Platform::Sev {
            0
        } else {
            vmsa_features
        };
        vm.sev_cmd(
            &mut SevCmd::Init2 {
                vmsa_features,
                ghcb_version: 0,
            },
            sev_fd,
        )
        .map_err(coco("KVM_SEV_INIT2"))?;
        if self.platform == Platform::Snp {
            vm.sev_cmd(&mut SevCmd::SnpLaunchStart { policy }, sev_fd)
                .map_err(coco("KVM_SEV_SNP_LAUNCH_START"))?;
            if self.req_certs {
                // Before any vCPU (`snp_enable_certs`: EINVAL once one exists; spec §1.6).
                vm.sev_cmd(&mut SevCmd::SnpEnableReqCerts, sev_fd)
                    .map_err(coco("KVM_SEV_SNP_ENABLE_REQ_CERTS"))?;
            }
        } else {
            vm.sev_cmd(
                &mut SevCmd::LaunchStart {
                    policy: sev_policy,
                    handle: 0,
                },
                sev_fd,
            )
            .map_err(coco("KVM_SEV_LAUNCH_START"))?;
        }
        self.vm = Some(vm);
        self.timings.create_vm = t.elapsed();
        Ok(())
    }

    fn memory(&mut self) -> Result<(), BackendError> {
        let t = Instant::now();
        let snp = self.platform == Platform::Snp;
        let vm = self.vm.as_mut().ok_or_else(no_vm)?;
        for &(gpa, size) in self.prep.slots() {
            let len =
                usize::try_from(size).map_err(|_| BackendError::Memslots { need: 0, have: 0 })?;
            let shared =
                Arc::new(GuestMapping::anonymous(len).map_err(kvm_err("mapping guest RAM"))?);
            if snp {
                // Private pages in a guest_memfd, the shared mapping as userspace_addr
                // (`api.rst`, KVM_SET_USER_MEMORY_REGION2; spec §2).
                let gmem: Arc<OwnedFd> = Arc::new(
                    vm.create_guest_memfd(size, 0)
                        .map_err(kvm_err("KVM_CREATE_GUEST_MEMFD"))?,
                );
                vm.add_memslot(gpa, size, Some(&shared), Some(&gmem))
                    .map_err(kvm_err("KVM_SET_USER_MEMORY_REGION2"))?;
                // SNP_LAUNCH_UPDATE needs the range private already (spec §1.3).
                vm.set_memory_attributes(gpa, size, true)
                    .map_err(kvm_err("KVM_SET_MEMORY_ATTRIBUTES"))?;
                self.memory
                    .push(Region::private(gpa, size, gmem, Some(shared)));
            } else {
                vm.add_memslot(gpa, size, Some(&shared), None)
                    .map_err(kvm_err("KVM_SET_USER_MEMORY_REGION2"))?;
                // SEV/SEV-ES RAM is ordinary memory encrypted in place: pinned for the VM's
                // life (spec §1.3, §1.4; QEMU's RAM block notifier does the same).
                vm.register_enc_region(&shared)
                    .map_err(kvm_err("KVM_MEMORY_ENCRYPT_REG_REGION"))?;
                self.memory.push(Region::shared(gpa, shared));
            }
        }
        self.timings.memslots = t.elapsed();
        Ok(())
    }

    fn vcpus(&mut self) -> Result<(), BackendError> {
        let t = Instant::now();
        let vm = self.vm.as_ref().ok_or_else(no_vm)?;
        vm.create_irqchip().map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
        self.timings.irqchip = t.elapsed();
        let t = Instant::now();
        let list = self.prep.create_vcpus(vm, |_, _| Ok(()))?;
        if self.platform == Platform::Snp {
            // Page-state changes reach the VMM as KVM_HC_MAP_GPA_RANGE exits (`api.rst`,
            // KVM_CAP_EXIT_HYPERCALL; spec §1.5).
            vm.enable_cap(KVM_CAP_EXIT_HYPERCALL, [1 << KVM_HC_MAP_GPA_RANGE, 0, 0, 0])
                .map_err(kvm_err("KVM_ENABLE_CAP(KVM_CAP_EXIT_HYPERCALL)"))?;
        }
        self.vcpus = list;
        self.timings.vcpus = t.elapsed();
        Ok(())
    }

    fn op(&mut self, op: &LaunchOp) -> Result<(), BackendError> {
        let t = Instant::now();
        match *op {
            LaunchOp::MapRam { gpa, size } => {
                if !self.memory.uncovered(gpa, size).is_empty() {
                    return Err(BackendError::Unsupported(format!(
                        "MapRam {gpa:#x}+{size:#x} outside the memory registered at CreateVm"
                    )));
                }
                self.timings.map_ram += t.elapsed();
            }
            LaunchOp::ImportPage { gpa, kind, data } => {
                let bytes = self.plan.page_bytes(&data);
                let bytes = bytes
                    .get(..bytes.len().min(PAGE_SIZE as usize))
                    .unwrap_or(&[]);
                self.memory.locate(gpa, PAGE_SIZE)?;
                if self.platform == Platform::Snp {
                    match snp_page_type(kind) {
                        Some(page_type) if kind == PageKind::Cpuid => {
                            // The page QEMU builds (`snp_launch_update_cpuid`), not the
                            // bundle's: vCPU 0's CPUID as the firmware table.
                            let page = self.cpuid_table()?.to_page();
                            self.memory.stage(gpa, &page)?;
                            self.queue(gpa, PAGE_SIZE, page_type)?;
                        }
                        Some(page_type) => {
                            if kind != PageKind::Zero && !bytes.is_empty() {
                                self.memory.stage(gpa, bytes)?;
                            }
                            self.queue(gpa, PAGE_SIZE, page_type)?;
                        }
                        None => {
                            // A shared page: host-visible, never given to the firmware.
                            self.flush()?;
                            self.vm()?
                                .set_memory_attributes(gpa, PAGE_SIZE, false)
                                .map_err(kvm_err("KVM_SET_MEMORY_ATTRIBUTES"))?;
                            self.memory.convert(gpa, PAGE_SIZE, false)?;
                            self.memory.stage(gpa, bytes)?;
                        }
                    }
                } else {
                    // `docs/measurement.md` §4: Normal and Zero pages are encrypted (Zero as
                    // 4096 zero bytes); Unmeasured and Shared are only loaded; Secrets and
                    // CPUID pages do not exist on SEV/SEV-ES.
                    if !bytes.is_empty() && kind != PageKind::Zero {
                        self.memory.stage(gpa, bytes)?;
                    }
                    match (kind, data) {
                        (PageKind::Normal, PageData::GeneratedPart { start, len, .. }) => {
                            self.flush()?;
                            self.run = Some(Run {
                                gpa: gpa + u64::from(start),
                                len: u64::from(len),
                                page_type: 0,
                            });
                            self.flush()?;
                        }
                        (PageKind::Normal | PageKind::Zero, _) => {
                            self.queue(gpa, PAGE_SIZE, 0)?;
                        }
                        (PageKind::Unmeasured | PageKind::Shared, _) => {}
                        (PageKind::Secrets | PageKind::Cpuid, _) => {
                            return Err(BackendError::Unsupported(format!(
                                "a {kind:?} page at {gpa:#x}: {} has none",
                                self.platform
                            )));
                        }
                    }
                }
                self.timings.import += t.elapsed();
            }
            LaunchOp::SetVpContext { vp, ctx, .. } => {
                // Pages first, in plan order (the call log then reads in plan order).
                self.flush()?;
                self.prep.load_context(self.plan, &self.vcpus, vp, ctx)?;
                self.timings.vp_context += t.elapsed();
            }
            LaunchOp::CreateVm { .. } | LaunchOp::Finalize { .. } => {
                return Err(BackendError::misplaced())
            }
        }
        Ok(())
    }

    fn finish(mut self) -> Result<BuiltVm, BackendError> {
        self.flush()?;
        let sev_fd = self.sev_fd();
        let vm = self.vm()?;
        // The `LAUNCH_MEASURE` MAC (SEV / SEV-ES; SNP reports nothing at launch).
        let mut reported = None;
        match self.platform {
            Platform::Snp => {
                let host_data = match self.plan.ops().last() {
                    Some(LaunchOp::Finalize { host_data, .. }) => *host_data,
                    _ => [0; 32],
                };
                let id = self.plan.id_block();
                // KVM builds and measures every vCPU's VMSA here, then the firmware's
                // SNP_LAUNCH_FINISH (spec §1.4).
                vm.sev_cmd(
                    &mut SevCmd::SnpLaunchFinish {
                        id_block: id.map(|b| &b.id_block),
                        id_auth: id.map(|b| &b.id_auth),
                        auth_key_en: id.is_some_and(|b| b.author_key_enabled),
                        host_data,
                    },
                    sev_fd,
                )
                .map_err(coco("KVM_SEV_SNP_LAUNCH_FINISH"))?;
            }
            _ => {
                if self.platform == Platform::SevEs {
                    // Every vCPU's registers are set: seal them into VMSAs (spec §1.4).
                    vm.sev_cmd(&mut SevCmd::LaunchUpdateVmsa, sev_fd)
                        .map_err(coco("KVM_SEV_LAUNCH_UPDATE_VMSA"))?;
                }
                let mut measure = SevCmd::LaunchMeasure { blob: [0; 48] };
                vm.sev_cmd(&mut measure, sev_fd)
                    .map_err(coco("KVM_SEV_LAUNCH_MEASURE"))?;
                if let SevCmd::LaunchMeasure { blob } = measure {
                    *self.measure.lock().unwrap_or_else(PoisonError::into_inner) = Some(blob);
                    reported = Some(crate::json::hex(&blob[..32]));
                    // The owner's turn: the guest is in LSECRET until LAUNCH_FINISH (spec
                    // §1.4: "LAUNCH_MEASURE → optional LAUNCH_SECRET → LAUNCH_FINISH").
                    if let Some(gate) = &self.gate {
                        let memory = &self.memory;
                        let mut inject = |s: &LaunchSecret| inject_secret(vm, memory, sev_fd, s);
                        gate.measured(self.launch_id, &blob, &mut inject);
                    }
                }
                vm.sev_cmd(&mut SevCmd::LaunchFinish, sev_fd)
                    .map_err(coco("KVM_SEV_LAUNCH_FINISH"))?;
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
            launch_measurement: reported,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use relaunch_core::plan::{LaunchConfig, PlanParts, VpSource};

    use super::*;
    use crate::sys::kvm::{Kvm, KVM_CAP_NR_MEMSLOTS, KVM_CAP_VM_TYPES};
    use crate::sys::record::Recorder;
    use crate::testing;

    const MEM: u64 = 64 << 20;

    /// A host whose kernel is the recorder, offering VM types 0, 2, 3 and 4.
    fn recorded() -> (Recorder, Arc<Host>) {
        let rec = Recorder::new(
            8,
            &[(KVM_CAP_NR_MEMSLOTS, 509), (KVM_CAP_VM_TYPES, 0b11101)],
        );
        let host = Host::with_kvm(Kvm::with(Arc::new(rec.clone())), true).unwrap();
        rec.clear();
        (rec, Arc::new(host))
    }

    /// A hand-made plan for `platform`: `pages` as `(gpa, kind)`, each page's first byte its
    /// page number, vCPU 0 in real mode at [`testing::CODE_GPA`].
    fn coco_plan(
        platform: Platform,
        policy: u64,
        vmsa_features: u64,
        pages: &[(u64, PageKind)],
    ) -> LaunchPlan {
        let regs = testing::real_mode_regs(testing::CODE_GPA, 0);
        coco_plan_vcpus(platform, policy, vmsa_features, pages, 2, regs)
    }

    /// [`coco_plan`] with `vcpus` vCPUs, vCPU 0 (only) at `regs`.
    fn coco_plan_vcpus(
        platform: Platform,
        policy: u64,
        vmsa_features: u64,
        pages: &[(u64, PageKind)],
        vcpus: u32,
        regs: relaunch_core::arch::regs::VpRegs,
    ) -> LaunchPlan {
        let config = LaunchConfig {
            platform,
            vcpus,
            mem_bytes: MEM,
            vcpu_sig: 0,
            guest_features: vmsa_features,
            policy: Some(policy),
            host_data: [0xAB; 32],
            kernel_hashes: None,
        };
        let mut p = PlanParts::new(Arc::from(&[][..]), config);
        p.ops.push(LaunchOp::CreateVm {
            platform,
            policy,
            vmsa_features,
            vcpus,
        });
        for &(gpa, kind) in pages {
            let data = if kind == PageKind::Zero {
                PageData::Zeros
            } else {
                let mut page = [0u8; 4096];
                page[0] = (gpa / PAGE_SIZE) as u8;
                p.generated.push(page);
                PageData::Generated {
                    index: (p.generated.len() - 1) as u32,
                }
            };
            p.ops.push(LaunchOp::ImportPage { gpa, kind, data });
        }
        p.vp_contexts.push(regs);
        p.ops.push(LaunchOp::SetVpContext {
            vp: 0,
            source: VpSource::Bundle,
            ctx: 0,
        });
        p.ops.push(LaunchOp::Finalize {
            id_block: false,
            host_data: [0xAB; 32],
        });
        LaunchPlan::from_parts(p).unwrap_or_else(|e| panic!("hand-made plan: {e}"))
    }

    const PAGES: &[(u64, PageKind)] = &[
        (0x1000, PageKind::Normal),
        (0x2000, PageKind::Normal),
        (0x3000, PageKind::Zero),
        (0x4000, PageKind::Cpuid),
        (0x5000, PageKind::Secrets),
        (0x7000, PageKind::Normal),
    ];

    /// The irqchip and vCPU lines every build issues (as native: `api.rst` 4.24, 4.7, 4.89).
    fn vcpu_lines() -> Vec<String> {
        vec![
            "vm0 KVM_CREATE_IRQCHIP".into(),
            "vm0 KVM_CREATE_VCPU id=0".into(),
            "vm0.vcpu0 KVM_SET_CPUID2 nent=2 apic_id=0".into(),
            "vm0 KVM_CREATE_VCPU id=1".into(),
            "vm0.vcpu1 KVM_SET_CPUID2 nent=2 apic_id=1".into(),
        ]
    }

    /// The register lines (`api.rst` 4.11/4.13); `fresh` = the first build of a launch reads
    /// the reset registers once.
    fn regs_lines(fresh: bool) -> Vec<String> {
        let mut v = Vec::new();
        if fresh {
            v.push("vm0.vcpu0 KVM_GET_SREGS".to_string());
            v.push("vm0.vcpu0 KVM_GET_REGS".to_string());
        }
        v.push(
            "vm0.vcpu0 KVM_SET_SREGS cs=0x0/0x0/0xffff cr0=0x60000010 cr3=0x0 cr4=0x0 efer=0x0"
                .into(),
        );
        v.push("vm0.vcpu0 KVM_SET_REGS rip=0x1000 rsp=0x0 rflags=0x2".into());
        v
    }

    /// SNP, from `Documentation/virt/kvm/x86/amd-memory-encryption.rst` and spec §1.3–§1.4:
    /// VM type 4 (`KVM_X86_SNP_VM`); `KVM_SEV_INIT2` before any vCPU (ghcb_version 0 = 2);
    /// `KVM_SEV_SNP_LAUNCH_START` with the policy; guest_memfd-backed memslots
    /// (`KVM_MEM_GUEST_MEMFD` = 4) whose range is `KVM_MEMORY_ATTRIBUTE_PRIVATE` (8) before
    /// any `SNP_LAUNCH_UPDATE`; `KVM_CAP_EXIT_HYPERCALL` (201) with bit 12
    /// (`KVM_HC_MAP_GPA_RANGE`); `SNP_LAUNCH_UPDATE` per run of consecutive pages of one
    /// type (NORMAL 1, ZERO 3 without uaddr, CPUID 6, SECRETS 5), `gfn_start` = gpa >> 12;
    /// `SNP_LAUNCH_FINISH` last, with host_data. A relaunch is the same on a new VM.
    #[test]
    fn snp_first_launch_and_relaunch_issue_the_documented_sequence() {
        let (rec, host) = recorded();
        let plan = coco_plan(Platform::Snp, 0x3_0000, 0, PAGES);
        let backend = SevBackend::new(Platform::Snp, host);
        let l = Launch::from_plan(plan);
        let expect = |fresh: bool| {
            let mut v: Vec<String> = vec![
                "kvm KVM_CREATE_VM type=4".into(),
                "vm0 KVM_SEV_INIT2 vmsa_features=0x0 flags=0 ghcb_version=0 sev_fd=sev".into(),
                "vm0 KVM_SEV_SNP_LAUNCH_START policy=0x30000 flags=0 sev_fd=sev".into(),
                format!("vm0 KVM_CREATE_GUEST_MEMFD size={MEM:#x} flags=0x0"),
                format!("vm0 KVM_SET_USER_MEMORY_REGION2 slot=0 flags=0x4 guest_phys_addr=0x0 memory_size={MEM:#x} userspace_addr=mapped guest_memfd_offset=0 guest_memfd=fd"),
                format!("vm0 KVM_SET_MEMORY_ATTRIBUTES address=0x0 size={MEM:#x} attributes=0x8 flags=0"),
            ];
            v.extend(vcpu_lines());
            v.push("vm0 KVM_ENABLE_CAP cap=201 args0=0x1000 args1=0x0 args2=0x0 args3=0x0".into());
            v.extend([
                // Two consecutive NORMAL pages: one call.
                "vm0 KVM_SEV_SNP_LAUNCH_UPDATE gfn_start=0x1 uaddr_offset=0x1000 len=0x2000 type=1 sev_fd=sev".to_string(),
                "vm0 KVM_SEV_SNP_LAUNCH_UPDATE gfn_start=0x3 uaddr_offset=none len=0x1000 type=3 sev_fd=sev".into(),
                "vm0 KVM_SEV_SNP_LAUNCH_UPDATE gfn_start=0x4 uaddr_offset=0x4000 len=0x1000 type=6 sev_fd=sev".into(),
                "vm0 KVM_SEV_SNP_LAUNCH_UPDATE gfn_start=0x5 uaddr_offset=0x5000 len=0x1000 type=5 sev_fd=sev".into(),
                // Not consecutive with 0x5000: its own call.
                "vm0 KVM_SEV_SNP_LAUNCH_UPDATE gfn_start=0x7 uaddr_offset=0x7000 len=0x1000 type=1 sev_fd=sev".into(),
            ]);
            v.extend(regs_lines(fresh));
            v.push(format!(
                "vm0 KVM_SEV_SNP_LAUNCH_FINISH id_block_en=0 auth_key_en=0 host_data={} sev_fd=sev",
                "ab".repeat(32)
            ));
            v
        };
        let vm = backend.build(&l).unwrap();
        assert_eq!(rec.lines(), expect(true));
        // The staged bytes are in the shared mapping; every RAM page is private.
        assert!(vm.memory.is_private(0x7000));
        drop(vm);
        rec.clear();
        let vm = backend.build(&l).unwrap();
        let again: Vec<String> = expect(false)
            .iter()
            .map(|l| l.replace("vm0", "vm1"))
            .collect();
        assert_eq!(rec.lines(), again);
        drop(vm);
    }

    /// SEV-ES (type 3) and SEV (type 2), from `amd-memory-encryption.rst` and spec §1.4:
    /// `INIT2` (SEV: vmsa_features 0), `LAUNCH_START` with the policy and the /dev/sev fd,
    /// ordinary memory pinned with `KVM_MEMORY_ENCRYPT_REG_REGION`, `LAUNCH_UPDATE_DATA`
    /// over the measured pages (NORMAL and ZERO; `docs/measurement.md` §4: UNMEASURED is
    /// not given), registers, SEV-ES `LAUNCH_UPDATE_VMSA` after every register,
    /// `LAUNCH_MEASURE` (48 bytes), `LAUNCH_FINISH`.
    #[test]
    fn sev_es_and_sev_issue_the_documented_sequence() {
        for (platform, vm_type) in [(Platform::SevEs, 3), (Platform::Sev, 2)] {
            let (rec, host) = recorded();
            let pages = [
                (0x1000, PageKind::Normal),
                (0x2000, PageKind::Zero),
                (0x3000, PageKind::Unmeasured),
                (0x4000, PageKind::Normal),
            ];
            let plan = coco_plan(platform, 0x5, 0, &pages);
            let backend = SevBackend::new(platform, host);
            let l = Launch::from_plan(plan);
            let expect = |fresh: bool, vm: &str| {
                let mut v: Vec<String> = vec![
                    format!("kvm KVM_CREATE_VM type={vm_type}"),
                    "vm0 KVM_SEV_INIT2 vmsa_features=0x0 flags=0 ghcb_version=0 sev_fd=sev".into(),
                    "vm0 KVM_SEV_LAUNCH_START handle=0 policy=0x5 sev_fd=sev".into(),
                    format!("vm0 KVM_SET_USER_MEMORY_REGION2 slot=0 flags=0x0 guest_phys_addr=0x0 memory_size={MEM:#x} userspace_addr=mapped guest_memfd_offset=0 guest_memfd=none"),
                    format!("vm0 KVM_MEMORY_ENCRYPT_REG_REGION size={MEM:#x}"),
                ];
                v.extend(vcpu_lines());
                v.extend([
                    // NORMAL + ZERO consecutive: one call over 0x1000..0x3000.
                    "vm0 KVM_SEV_LAUNCH_UPDATE_DATA uaddr_offset=0x1000 len=0x2000 sev_fd=sev"
                        .to_string(),
                    "vm0 KVM_SEV_LAUNCH_UPDATE_DATA uaddr_offset=0x4000 len=0x1000 sev_fd=sev"
                        .into(),
                ]);
                v.extend(regs_lines(fresh));
                if platform == Platform::SevEs {
                    v.push("vm0 KVM_SEV_LAUNCH_UPDATE_VMSA sev_fd=sev".into());
                }
                v.push("vm0 KVM_SEV_LAUNCH_MEASURE len=48 sev_fd=sev".into());
                v.push("vm0 KVM_SEV_LAUNCH_FINISH sev_fd=sev".into());
                v.iter().map(|l| l.replace("vm0", vm)).collect::<Vec<_>>()
            };
            drop(backend.build(&l).unwrap());
            assert_eq!(rec.lines(), expect(true, "vm0"), "{platform}");
            assert_eq!(backend.launch_measure(), Some([0; 48]));
            rec.clear();
            drop(backend.build(&l).unwrap());
            assert_eq!(rec.lines(), expect(false, "vm1"), "{platform} relaunch");
        }
    }

    /// A refused command comes back naming the command and the errno.
    #[test]
    fn a_refused_command_names_itself() {
        let (rec, host) = recorded();
        rec.fail("KVM_SEV_SNP_LAUNCH_START", libc::EINVAL, 1);
        let backend = SevBackend::new(Platform::Snp, host);
        let l = Launch::from_plan(coco_plan(Platform::Snp, 0x3_0000, 0, PAGES));
        let err = backend.build(&l).unwrap_err().to_string();
        assert!(err.contains("KVM_SEV_SNP_LAUNCH_START"), "{err}");
        assert!(
            err.contains("Invalid argument") || err.contains("22"),
            "{err}"
        );
    }

    /// A policy without the must-be-one bit 17 is refused before anything is created.
    #[test]
    fn snp_policy_without_bit_17_is_refused_before_create() {
        let (rec, host) = recorded();
        let backend = SevBackend::new(Platform::Snp, host);
        let l = Launch::from_plan(coco_plan(Platform::Snp, 0x1_0000, 0, PAGES));
        let err = backend.build(&l).unwrap_err().to_string();
        assert!(err.contains("bit 17"), "{err}");
        assert!(rec.lines().is_empty());
    }

    /// `select` hands out the SEV backends only where the VM type is offered.
    #[test]
    fn select_needs_the_vm_type() {
        let (_rec, host) = recorded();
        for p in [Platform::Sev, Platform::SevEs, Platform::Snp] {
            assert_eq!(super::super::select(p, &host).unwrap().platform(), p);
        }
        let rec = Recorder::new(8, &[]);
        let bare = Arc::new(Host::with_kvm(Kvm::with(Arc::new(rec)), true).unwrap());
        assert!(bare.sev.is_none());
        let err = super::super::select(Platform::Snp, &bare)
            .unwrap_err()
            .to_string();
        assert!(err.contains("KVM_X86_SNP_VM"), "{err}");
    }

    /// A real boot image's SNP view (`boot-images/out/hello.igvm`): every private page the
    /// plan imports reaches the firmware exactly once, in plan order, with its page type
    /// (`amd-memory-encryption.rst`: `SNP_LAUNCH_UPDATE` covers `len` bytes from
    /// `gfn_start`), between `SNP_LAUNCH_START` and `SNP_LAUNCH_FINISH`; a relaunch gives
    /// the same pages again.
    #[test]
    fn hello_igvm_snp_view_gives_every_page_once_in_plan_order() {
        let (rec, host) = recorded();
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../boot-images/out/hello.igvm");
        let bytes =
            std::fs::read(path).expect("boot-images/out/hello.igvm (cargo xtask build-images)");
        let cfg = LaunchConfig {
            platform: Platform::Snp,
            vcpus: 1,
            mem_bytes: MEM,
            vcpu_sig: 0,
            guest_features: 0,
            policy: None,
            host_data: [0; 32],
            kernel_hashes: None,
        };
        let l = Launch::new(bytes, &cfg).expect("plan the snp view");
        let want: Vec<(u64, u64)> = l
            .plan()
            .ops()
            .iter()
            .filter_map(|op| match *op {
                LaunchOp::ImportPage { gpa, kind, .. } => {
                    snp_page_type(kind).map(|t| (gpa / PAGE_SIZE, u64::from(t)))
                }
                _ => None,
            })
            .collect();
        assert!(!want.is_empty());
        let backend = SevBackend::new(Platform::Snp, host);
        for _ in 0..2 {
            rec.clear();
            drop(backend.build(&l).unwrap());
            let calls = rec.calls();
            let num = |c: &crate::sys::record::Call, k: &str| {
                c.fields().into_iter().find_map(|(n, v)| match v {
                    crate::sys::record::Field::Num(x) if n == k => Some(x),
                    _ => None,
                })
            };
            let mut got = Vec::new();
            for c in calls
                .iter()
                .filter(|c| c.ioctl == "KVM_SEV_SNP_LAUNCH_UPDATE")
            {
                let (g, len, t) = (num(c, "gfn_start"), num(c, "len"), num(c, "type"));
                let (Some(g), Some(len), Some(t)) = (g, len, t) else {
                    panic!("undecodable {c}")
                };
                got.extend((0..len / PAGE_SIZE).map(|i| (g + i, t)));
            }
            assert_eq!(got, want);
            let names: Vec<&str> = calls.iter().map(|c| c.ioctl).collect();
            assert_eq!(names.first(), Some(&"KVM_CREATE_VM"));
            assert_eq!(names.last(), Some(&"KVM_SEV_SNP_LAUNCH_FINISH"));
        }
    }

    /// Partial progress (`amd-memory-encryption.rst`, SNP_LAUNCH_UPDATE: the kernel advances
    /// `gfn_start`, `uaddr` and `len` by the pages it did; userspace repeats the call until
    /// `len` is 0): a kernel that does one page per call gets one call per page, each
    /// continuing where the last stopped.
    #[test]
    fn snp_launch_update_loops_on_partial_progress() {
        let (rec, host) = recorded();
        rec.partial_snp_update(1);
        let plan = coco_plan(
            Platform::Snp,
            0x3_0000,
            0,
            &[
                (0x1000, PageKind::Normal),
                (0x2000, PageKind::Normal),
                (0x3000, PageKind::Normal),
            ],
        );
        let backend = SevBackend::new(Platform::Snp, host);
        drop(backend.build(&Launch::from_plan(plan)).unwrap());
        let updates: Vec<String> = rec
            .lines()
            .into_iter()
            .filter(|l| l.contains("SNP_LAUNCH_UPDATE"))
            .collect();
        assert_eq!(
            updates,
            [
                "vm0 KVM_SEV_SNP_LAUNCH_UPDATE gfn_start=0x1 uaddr_offset=0x1000 len=0x3000 type=1 sev_fd=sev",
                "vm0 KVM_SEV_SNP_LAUNCH_UPDATE gfn_start=0x2 uaddr_offset=0x2000 len=0x2000 type=1 sev_fd=sev",
                "vm0 KVM_SEV_SNP_LAUNCH_UPDATE gfn_start=0x3 uaddr_offset=0x3000 len=0x1000 type=1 sev_fd=sev",
            ]
        );
    }

    /// `-EINTR` before any page was done (a signal; the arguments unchanged) is retried; a
    /// storm of them ends the build with the errno instead of hanging it.
    #[test]
    fn snp_launch_update_retries_eintr() {
        let (rec, host) = recorded();
        let plan = coco_plan(Platform::Snp, 0x3_0000, 0, &[(0x1000, PageKind::Normal)]);
        let backend = SevBackend::new(Platform::Snp, host);
        rec.fail("KVM_SEV_SNP_LAUNCH_UPDATE", libc::EINTR, 3);
        drop(backend.build(&Launch::from_plan(plan.clone())).unwrap());
        let n = rec
            .lines()
            .iter()
            .filter(|l| l.contains("SNP_LAUNCH_UPDATE"))
            .count();
        assert_eq!(
            n, 4,
            "three interrupted calls, then the one that did the page"
        );
        rec.fail("KVM_SEV_SNP_LAUNCH_UPDATE", libc::EINTR, 1000);
        let e = backend.build(&Launch::from_plan(plan)).unwrap_err();
        assert!(e.to_string().contains("KVM_SEV_SNP_LAUNCH_UPDATE"), "{e}");
    }

    /// A shared page in an SNP plan is host memory, never given to the firmware: its range
    /// loses `KVM_MEMORY_ATTRIBUTE_PRIVATE` (spec §2: private pages come from the
    /// guest_memfd, shared ones from `userspace_addr`), its bytes are readable through the
    /// shared mapping, and the private pages around it are separate updates.
    #[test]
    fn snp_shared_page_is_not_given_to_the_firmware() {
        let (rec, host) = recorded();
        let plan = coco_plan(
            Platform::Snp,
            0x3_0000,
            0,
            &[
                (0x1000, PageKind::Normal),
                (0x2000, PageKind::Shared),
                (0x3000, PageKind::Normal),
            ],
        );
        let backend = SevBackend::new(Platform::Snp, host);
        let vm = backend.build(&Launch::from_plan(plan)).unwrap();
        let lines: Vec<String> = rec
            .lines()
            .into_iter()
            .filter(|l| l.contains("SNP_LAUNCH_UPDATE") || l.contains("size=0x1000 attributes"))
            .collect();
        assert_eq!(
            lines,
            [
                "vm0 KVM_SEV_SNP_LAUNCH_UPDATE gfn_start=0x1 uaddr_offset=0x1000 len=0x1000 type=1 sev_fd=sev",
                "vm0 KVM_SET_MEMORY_ATTRIBUTES address=0x2000 size=0x1000 attributes=0x0 flags=0",
                "vm0 KVM_SEV_SNP_LAUNCH_UPDATE gfn_start=0x3 uaddr_offset=0x3000 len=0x1000 type=1 sev_fd=sev",
            ]
        );
        let mut b = [0u8; 1];
        vm.memory.read(0x2000, &mut b).unwrap();
        assert_eq!(b, [2]);
        assert!(
            vm.memory.read(0x1000, &mut b).is_err(),
            "private pages are not readable"
        );
    }

    /// The sentence names each offending bit with its ABI name and the host's set
    /// (`../shared/spec/igvm-snp.md` §4.1, §4.2 for the names).
    #[test]
    fn check_host_names_the_offending_bits() {
        let attrs = SevAttrs {
            vmsa_features: Some(0x20),
            snp_policy_bits: Some(0x3_0000 | 0xFFFF),
            snp_req_certs_attr: None,
        };
        assert_eq!(check_host(Platform::Snp, 0x3_0000, 0x20, &attrs), Ok(()));
        let e = check_host(Platform::Snp, 0x3_0000 | 1 << 19 | 1 << 20, 0, &attrs).unwrap_err();
        assert_eq!(
            e,
            "SNP policy 0x1b0000 sets bit 19 (DEBUG) and bit 20 (SINGLE_SOCKET), which this \
             host's KVM does not accept (KVM_X86_SNP_POLICY_BITS = 0x3ffff)"
        );
        let e = check_host(Platform::SevEs, 0x5, 0x20 | 1 << 2 | 1 << 9, &attrs).unwrap_err();
        assert_eq!(
            e,
            "SEV_FEATURES 0x224 sets bit 2 (ReflectVC) and bit 9 (SecureTSC), which this \
             host's KVM does not accept in KVM_SEV_INIT2 (KVM_X86_SEV_VMSA_FEATURES = 0x20)"
        );
        // Bit 17 is required whatever the host reports.
        let e = check_host(Platform::Snp, 0x1_0000, 0, &attrs).unwrap_err();
        assert!(e.contains("lacks bit 17"), "{e}");
        // Without the attributes (older kernels: ENXIO), only bit 17 is checked here.
        let none = SevAttrs::default();
        assert_eq!(
            check_host(Platform::Snp, 0x3_0000 | 1 << 30, 1 << 12, &none),
            Ok(())
        );
        // SEV has no SNP policy and no vmsa_features to check.
        assert_eq!(check_host(Platform::Sev, 1 << 30, 0, &attrs), Ok(()));
    }

    /// A host (recorder) whose `/dev/kvm` reports the SEV attributes (group 1, attribute 0
    /// `KVM_X86_SEV_VMSA_FEATURES`, attribute 1 `KVM_X86_SNP_POLICY_BITS`;
    /// `amd-memory-encryption.rst` "Device attribute API").
    fn recorded_with_attrs(vmsa_features: u64, policy_bits: Option<u64>) -> (Recorder, Arc<Host>) {
        let mut attrs = vec![(1, 0, vmsa_features)];
        attrs.extend(policy_bits.map(|b| (1, 1, b)));
        let rec = Recorder::new(
            8,
            &[(KVM_CAP_NR_MEMSLOTS, 509), (KVM_CAP_VM_TYPES, 0b11101)],
        )
        .with_device_attrs(&attrs);
        let host = Host::with_kvm(Kvm::with(Arc::new(rec.clone())), true).unwrap();
        (rec, Arc::new(host))
    }

    /// `Host` asks `KVM_GET_DEVICE_ATTR` for each attribute once (0
    /// `KVM_X86_SEV_VMSA_FEATURES`, 1 `KVM_X86_SNP_POLICY_BITS`, 2 `KVM_X86_SEV_SNP_REQ_CERTS`),
    /// on the system fd, when KVM offers a SEV-family VM type; an attribute the kernel lacks
    /// (`ENXIO`) is `None`.
    #[test]
    fn host_probes_the_sev_attributes_once() {
        let (rec, host) = recorded_with_attrs(0x20, None);
        assert_eq!(
            host.sev_attrs,
            SevAttrs {
                vmsa_features: Some(0x20),
                snp_policy_bits: None,
                snp_req_certs_attr: None,
            }
        );
        assert!(rec.lines().iter().any(|l| l.contains("DEVICE_ATTR")));
        let rec = Recorder::new(8, &[(KVM_CAP_VM_TYPES, 0b11101)]);
        let _h = Host::with_kvm(Kvm::with(Arc::new(rec.clone())), true).unwrap();
        let attr: Vec<String> = rec
            .lines()
            .into_iter()
            .filter(|l| l.contains("DEVICE_ATTR"))
            .collect();
        assert_eq!(
            attr,
            [
                "kvm KVM_GET_DEVICE_ATTR group=1 attr=0",
                "kvm KVM_GET_DEVICE_ATTR group=1 attr=1",
                "kvm KVM_GET_DEVICE_ATTR group=1 attr=2"
            ]
        );
        // No SEV-family VM type: not asked.
        let rec = Recorder::new(8, &[(KVM_CAP_VM_TYPES, 0b1)]);
        let h = Host::with_kvm(Kvm::with(Arc::new(rec.clone())), true).unwrap();
        assert!(!rec.lines().iter().any(|l| l.contains("DEVICE_ATTR")));
        assert_eq!(h.sev_attrs, SevAttrs::default());
    }

    /// A host (recorder) whose `/dev/kvm` reads `KVM_X86_SEV_SNP_REQ_CERTS` (group 1,
    /// attribute 2) as `value` (`None`: ENXIO, a kernel before 7.0), and a certificate file.
    fn recorded_with_certs(value: Option<u64>, name: &str) -> (Recorder, Arc<Host>, Arc<SnpCerts>) {
        let attrs: Vec<(u32, u64, u64)> = value.map(|v| (1, 2, v)).into_iter().collect();
        let rec = Recorder::new(
            8,
            &[(KVM_CAP_NR_MEMSLOTS, 509), (KVM_CAP_VM_TYPES, 0b11101)],
        )
        .with_device_attrs(&attrs);
        let host = Host::with_kvm(Kvm::with(Arc::new(rec.clone())), true).unwrap();
        rec.clear();
        let vcek = crate::backend::snp_certs::VCEK_GUID;
        let path =
            std::env::temp_dir().join(format!("relaunch-sev-certs-{}-{name}", std::process::id()));
        std::fs::write(
            &path,
            super::super::snp_certs::tests::table(&[(vcek, &[1; 64])]),
        )
        .unwrap();
        let certs = Arc::new(SnpCerts::open(&path).unwrap());
        let _ = std::fs::remove_file(&path);
        (rec, Arc::new(host), certs)
    }

    /// `amd-memory-encryption.rst` 21 (KVM_SEV_SNP_ENABLE_REQ_CERTS: no data) and
    /// `snp_enable_certs` (EINVAL once a vCPU exists): with a certificate file, on a host
    /// whose `KVM_X86_SEV_SNP_REQ_CERTS` reads 1, the command comes right after
    /// `SNP_LAUNCH_START` and before the first `KVM_CREATE_VCPU`, once per build (a
    /// relaunch's new VM too). Without a file it never comes (KVM then answers report
    /// requests itself with an empty table).
    #[test]
    fn snp_enables_certificate_requests_with_a_file_before_any_vcpu() {
        let (rec, host, certs) = recorded_with_certs(Some(1), "enable");
        let backend = SevBackend::new(Platform::Snp, host);
        assert!(backend.set_snp_certs(Some(certs)));
        let l = Launch::from_plan(coco_plan(Platform::Snp, 0x3_0000, 0, PAGES));
        for vm in ["vm0", "vm1"] {
            rec.clear();
            drop(backend.build(&l).unwrap());
            let lines = rec.lines();
            assert_eq!(
                lines.get(..4).unwrap_or(&[]),
                [
                    "kvm KVM_CREATE_VM type=4".to_string(),
                    format!(
                        "{vm} KVM_SEV_INIT2 vmsa_features=0x0 flags=0 ghcb_version=0 sev_fd=sev"
                    ),
                    format!("{vm} KVM_SEV_SNP_LAUNCH_START policy=0x30000 flags=0 sev_fd=sev"),
                    format!("{vm} KVM_SEV_SNP_ENABLE_REQ_CERTS sev_fd=sev"),
                ]
            );
            assert_eq!(
                lines
                    .iter()
                    .filter(|l| l.contains("ENABLE_REQ_CERTS"))
                    .count(),
                1
            );
            assert!(lines.iter().any(|l| l.contains("KVM_CREATE_VCPU")));
        }
        // The file taken away: no command.
        assert!(backend.set_snp_certs(None));
        rec.clear();
        drop(backend.build(&l).unwrap());
        assert!(!rec.lines().iter().any(|l| l.contains("ENABLE_REQ_CERTS")));
    }

    /// A certificate file on a kernel that cannot serve it (`KVM_X86_SEV_SNP_REQ_CERTS`
    /// ENXIO: before Linux 7.0; or 0: SNP off, `sev_dev_get_attr`) is refused before
    /// `KVM_CREATE_VM`, naming the attribute; SEV and SEV-ES backends take no file and issue
    /// no command.
    #[test]
    fn certificate_files_need_the_attribute_and_snp() {
        for (value, reads) in [(None, "ENXIO"), (Some(0), "it reads 0")] {
            let (rec, host, certs) = recorded_with_certs(value, "refused");
            let backend = SevBackend::new(Platform::Snp, host);
            assert!(backend.set_snp_certs(Some(certs)));
            let err = backend
                .build(&Launch::from_plan(coco_plan(
                    Platform::Snp,
                    0x3_0000,
                    0,
                    PAGES,
                )))
                .unwrap_err();
            assert!(err.refused_by_platform());
            let err = err.to_string();
            assert!(
                err.contains("KVM_X86_SEV_SNP_REQ_CERTS")
                    && err.contains("Linux 7.0")
                    && err.contains(reads),
                "{err}"
            );
            assert!(rec.lines().is_empty(), "{:?}", rec.lines());
        }
        for platform in [Platform::SevEs, Platform::Sev] {
            let (rec, host, certs) = recorded_with_certs(Some(1), "sev");
            let backend = SevBackend::new(platform, host);
            assert!(!backend.set_snp_certs(Some(certs)));
            drop(
                backend
                    .build(&Launch::from_plan(coco_plan(platform, 0x5, 0, &[])))
                    .unwrap(),
            );
            assert!(!rec.lines().iter().any(|l| l.contains("ENABLE_REQ_CERTS")));
        }
    }

    /// A policy or SEV_FEATURES the host's KVM does not accept is refused before
    /// `KVM_CREATE_VM`: the recorder sees no call; where the kernel has no
    /// `KVM_X86_SNP_POLICY_BITS`, the same policy reaches `SNP_LAUNCH_START`.
    #[test]
    fn host_refusals_come_before_create_vm() {
        let debug = 0x3_0000 | 1 << 19;
        let (rec, host) = recorded_with_attrs(0, Some(0x3_FFFF));
        rec.clear();
        let backend = SevBackend::new(Platform::Snp, host);
        let err = backend
            .build(&Launch::from_plan(coco_plan(
                Platform::Snp,
                debug,
                0,
                PAGES,
            )))
            .unwrap_err()
            .to_string();
        assert!(err.contains("bit 19 (DEBUG)"), "{err}");
        assert!(rec.lines().is_empty(), "{:?}", rec.lines());

        let (rec, host) = recorded_with_attrs(0x20, Some(0x3_FFFF));
        rec.clear();
        let backend = SevBackend::new(Platform::SevEs, host);
        let err = backend
            .build(&Launch::from_plan(coco_plan(
                Platform::SevEs,
                0x5,
                0x21,
                &[],
            )))
            .unwrap_err()
            .to_string();
        assert!(err.contains("bit 0 (SNPActive)"), "{err}");
        assert!(rec.lines().is_empty());

        let (rec, host) = recorded_with_attrs(0, None);
        rec.clear();
        let backend = SevBackend::new(Platform::Snp, host);
        drop(
            backend
                .build(&Launch::from_plan(coco_plan(
                    Platform::Snp,
                    debug,
                    0,
                    PAGES,
                )))
                .unwrap(),
        );
        assert!(rec.lines().contains(
            &"vm0 KVM_SEV_SNP_LAUNCH_START policy=0xb0000 flags=0 sev_fd=sev".to_string()
        ));
    }

    /// The CPUID page holds vCPU 0's CPUID as QEMU lays it out (`sev_snp_cpuid_info_fill`),
    /// not the bundle's bytes: the recorder's host reports leaf 1 (signature 0xA00F11, EBX
    /// 0x800) and leaf 0xB, so the page has count 2, leaf 1 with APIC ID 0, leaf 0xB.
    #[test]
    fn snp_cpuid_page_is_vcpu0s_cpuid() {
        let (_rec, host) = recorded();
        let backend = SevBackend::new(Platform::Snp, host);
        let vm = backend
            .build(&Launch::from_plan(coco_plan(
                Platform::Snp,
                0x3_0000,
                0,
                PAGES,
            )))
            .unwrap();
        let shared = vm.memory.regions()[0].shared.as_ref().unwrap();
        let mut page = [0u8; 4096];
        shared.read(0x4000, &mut page).unwrap();
        let mut want = [0u8; 4096];
        want[0] = 2; // count
                     // Function 0 @16: eax_in 1, ecx_in 0, xcr0_in 0, xss_in 0, eax @+24, ebx @+28.
        want[16] = 1;
        want[16 + 24..16 + 28].copy_from_slice(&0x00A0_0F11u32.to_le_bytes());
        want[16 + 28..16 + 32].copy_from_slice(&0x800u32.to_le_bytes());
        // Function 1 @64: eax_in 0xB, the rest 0.
        want[64] = 0xB;
        assert_eq!(page, want);
    }

    /// A CPUID page the Secure Processor refuses (the kernel model checks it against a host
    /// CPUID without leaf 1 EDX bit 28) ends the build with the leaves the firmware corrected,
    /// as QEMU reports them; nothing after it is issued.
    #[test]
    fn snp_cpuid_refusal_names_the_corrected_leaves() {
        use crate::model::{Model, ModelConfig};
        let probe = Model::new(ModelConfig::default());
        let mut fw = Kvm::with(Arc::new(probe))
            .supported_cpuid(256)
            .unwrap()
            .as_slice()
            .to_vec();
        for e in &mut fw {
            if e.function == 1 {
                e.edx &= !(1 << 28);
            }
        }
        let model = Model::new(ModelConfig {
            firmware_cpuid: Some(fw),
            ..ModelConfig::default()
        });
        let host = Arc::new(Host::with_kvm(Kvm::with(Arc::new(model.clone())), true).unwrap());
        let backend = SevBackend::new(Platform::Snp, host);
        let err = backend
            .build(&Launch::from_plan(coco_plan(
                Platform::Snp,
                0x3_0000,
                0,
                PAGES,
            )))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("the firmware refused the SNP CPUID page at 0x4000"),
            "{err}"
        );
        assert!(err.contains("SEV_RET_INVALID_PARAM"), "{err}");
        assert!(
            err.contains("leaf 0x1 subleaf 0x0: edx 0x178bfbff expected 0x078bfbff"),
            "{err}"
        );
        // The next page (SECRETS at 0x5000) was never given.
        let secrets = model.events().iter().any(|e| {
            matches!(e, crate::model::Event::Call(c)
                if c.args.iter().any(|(k, v)| *k == "type" && *v == crate::model::Arg::Num(5)))
        });
        assert!(!secrets);
    }

    /// QEMU's SNP CPUID masks (`sev_snp_mask_cpuid_features`) apply to every vCPU of an SNP
    /// launch only: TSC_DEADLINE (leaf 1 ECX bit 24) is gone from the SNP vCPUs' CPUID and
    /// kept for SEV-ES.
    #[test]
    fn snp_vcpus_lose_qemus_masked_bits() {
        let rec = Recorder::new(
            8,
            &[(KVM_CAP_NR_MEMSLOTS, 509), (KVM_CAP_VM_TYPES, 0b11101)],
        );
        let mut host = Host::with_kvm(Kvm::with(Arc::new(rec)), true).unwrap();
        let mut entries = host.cpuid.as_slice().to_vec();
        entries[0].ecx |= 1 << 24;
        host.cpuid = kvm_bindings::CpuId::from_entries(&entries).unwrap();
        let ecx = |p: Platform, policy| {
            let prep = Prepared::new(&host, &coco_plan(p, policy, 0, &[])).unwrap();
            let c = prep.cpuid(1).unwrap().as_slice()[0];
            (c.function, c.ecx & (1 << 24))
        };
        assert_eq!(ecx(Platform::Snp, 0x3_0000), (1, 0));
        assert_eq!(ecx(Platform::SevEs, 0x5), (1, 1 << 24));
    }

    /// A guest owner for the owner's-turn tests: checks MEASURE against the digest it
    /// predicts itself (`relaunch_core::measure::expected` over the plan), wraps its secret
    /// for that MEASURE, and records what each injection answered.
    #[derive(Debug)]
    struct Owner {
        keys: relaunch_core::owner::TransportKeys,
        policy: u32,
        digest: [u8; 32],
        secret: [u8; 32],
        gpa: u64,
        turns: Mutex<Vec<Turn>>,
    }

    /// One owner's turn as the test owner saw it: launch id, MNONCE, the injections'
    /// answers.
    type Turn = (u64, [u8; 16], Vec<Result<(), String>>);

    impl OwnerGate for Owner {
        fn measured(
            &self,
            launch_id: u64,
            blob: &[u8; 48],
            inject: &mut dyn FnMut(&LaunchSecret) -> Result<(), String>,
        ) {
            use relaunch_core::owner::{verify_launch_measure, wrap_secret, LaunchMeasure};
            let got = LaunchMeasure::from_bytes(blob);
            let mut answers = Vec::new();
            let fw = crate::model::MODEL_FW;
            if verify_launch_measure(&self.keys.tik, fw, self.policy, &self.digest, &got).is_ok() {
                let mut packet = self.secret;
                let h = wrap_secret(&self.keys, &got.mnonce, 0, &got.measure, &mut packet)
                    .expect("wrap");
                let secret = |packet: &[u8], gpa| LaunchSecret {
                    header: h.to_bytes().to_vec(),
                    packet: packet.to_vec(),
                    gpa,
                };
                let mut tampered = packet;
                tampered[3] ^= 0x40;
                answers.push(inject(&secret(&tampered, self.gpa)));
                answers.push(inject(&secret(&packet, MEM + 0x1000)));
                answers.push(inject(&secret(&packet, self.gpa)));
            }
            let mut t = self.turns.lock().unwrap_or_else(PoisonError::into_inner);
            t.push((launch_id, got.mnonce, answers));
        }
    }

    /// The owner's turn over the kernel model (SEV API flow, `amd-memory-encryption.rst`:
    /// LAUNCH_MEASURE, then LAUNCH_SECRET "after the measurement has been validated by the
    /// guest owner", then LAUNCH_FINISH), SEV and SEV-ES: the gate gets the blob between
    /// MEASURE and FINISH; its MEASURE verifies with the owner's TIK over the digest the
    /// owner predicts; a tampered packet comes back with the firmware's BAD_MEASUREMENT and
    /// one outside guest RAM with a sentence (never issued); the good one leaves the
    /// plaintext at its GPA. A relaunch has its own turn, with a fresh MNONCE. SNP has none.
    #[test]
    fn sev_owner_turn_injects_between_measure_and_finish() {
        use crate::model::{Event, Model, ModelConfig};
        const GPA: u64 = 0x9000;
        let keys = relaunch_core::owner::TransportKeys {
            tek: [0x3C; 16],
            tik: [0xC3; 16],
        };
        for (platform, policy) in [(Platform::Sev, 0x1u32), (Platform::SevEs, 0x5)] {
            let model = Model::new(ModelConfig {
                tik: keys.tik,
                tek: keys.tek,
                ..ModelConfig::default()
            });
            let host = Arc::new(Host::with_kvm(Kvm::with(Arc::new(model.clone())), true).unwrap());
            let pages = [(0x1000, PageKind::Normal), (0x2000, PageKind::Zero)];
            // One vCPU with a context whose every VMSA field is set (KVM's reset XCR0, PAT,
            // DR6, DR7 — `relaunch_core::arch::vmsa::reset_regs`), so the core predicts the
            // digest from the plan alone.
            let reset = relaunch_core::arch::vmsa::reset_regs(0, 0);
            let regs = relaunch_core::arch::regs::VpRegs {
                xcr0: reset.xcr0,
                pat: reset.pat,
                dr6: reset.dr6,
                dr7: reset.dr7,
                ..testing::real_mode_regs(testing::CODE_GPA, 0)
            };
            let plan = coco_plan_vcpus(platform, policy.into(), 0, &pages, 1, regs);
            let digest = match relaunch_core::measure::expected(plan.stream()).unwrap() {
                relaunch_core::measure::Measurement::Sev(d)
                | relaunch_core::measure::Measurement::SevEs(d) => d,
                m => panic!("{m:?}"),
            };
            let owner = Arc::new(Owner {
                keys,
                policy,
                digest,
                secret: *b"-----relaunch owner secret-----\n",
                gpa: GPA,
                turns: Mutex::new(Vec::new()),
            });
            let backend = SevBackend::with_gate(platform, host, owner.clone());
            let l = Launch::from_plan(plan);
            for round in 0..2 {
                let vm = backend.build(&l).unwrap();
                let mut got = [0u8; 32];
                vm.memory.read(GPA, &mut got).unwrap();
                assert_eq!(
                    &got, b"-----relaunch owner secret-----\n",
                    "{platform} {round}"
                );
                let turns = owner.turns.lock().unwrap().clone();
                assert_eq!(turns.len(), round + 1, "{platform}: one turn per build");
                let (id, _, answers) = &turns[round];
                assert_eq!(*id, l.id());
                assert_eq!(
                    answers.len(),
                    3,
                    "{platform}: MEASURE verified: {answers:?}"
                );
                let bad = answers[0].as_ref().unwrap_err();
                assert!(bad.contains("SEV_RET_BAD_MEASUREMENT"), "{bad}");
                let outside = answers[1].as_ref().unwrap_err();
                assert!(outside.contains("not guest RAM"), "{outside}");
                assert_eq!(answers[2], Ok(()));
                drop(vm);
            }
            let turns = owner.turns.lock().unwrap().clone();
            assert_ne!(
                turns[0].1, turns[1].1,
                "a relaunch measures with a fresh MNONCE"
            );
            // Per build: MEASURE, the two secrets that reached the kernel, FINISH.
            let calls: Vec<&'static str> = model
                .events()
                .into_iter()
                .filter_map(|e| match e {
                    Event::Call(c) if c.ioctl.starts_with("KVM_SEV_LAUNCH_") => Some(c.ioctl),
                    _ => None,
                })
                .filter(|n| *n != "KVM_SEV_LAUNCH_UPDATE_DATA" && *n != "KVM_SEV_LAUNCH_START")
                .collect();
            let mut one: Vec<&str> = Vec::new();
            if platform == Platform::SevEs {
                one.push("KVM_SEV_LAUNCH_UPDATE_VMSA");
            }
            one.extend([
                "KVM_SEV_LAUNCH_MEASURE",
                "KVM_SEV_LAUNCH_SECRET",
                "KVM_SEV_LAUNCH_SECRET",
                "KVM_SEV_LAUNCH_FINISH",
            ]);
            assert_eq!(calls, [one.clone(), one].concat(), "{platform}");
        }
        // SNP has no owner's turn: the gate is refused and never called.
        let (_rec, host) = recorded();
        let owner = Arc::new(Owner {
            keys,
            policy: 0,
            digest: [0; 32],
            secret: [0; 32],
            gpa: GPA,
            turns: Mutex::new(Vec::new()),
        });
        let snp = SevBackend::new(Platform::Snp, host);
        assert!(!snp.set_owner_gate(Some(owner.clone())));
        drop(
            snp.build(&Launch::from_plan(coco_plan(
                Platform::Snp,
                0x3_0000,
                0,
                PAGES,
            )))
            .unwrap(),
        );
        assert!(owner.turns.lock().unwrap().is_empty());
    }
}
