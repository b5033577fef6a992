//! A recording kernel behind the door (`sys::kvm`): every call the VMM makes is appended to a
//! shared log (the fd it went to, its uapi name, its decoded arguments), and answered like a
//! kernel that accepts everything — or with an errno the test asked for. No VM ever runs.
//!
//! Tests use it to check the exact call sequence of a backend's phases without `/dev/kvm`;
//! the kernel model of the confidential backends sits in the same place.

use std::fmt;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_debugregs, kvm_fpu, kvm_memory_attributes, kvm_mp_state, kvm_regs,
    kvm_run, kvm_sregs, kvm_userspace_memory_region2, kvm_xcrs, CpuId, Msrs,
};
use kvm_ioctls::VcpuExit;

use super::coco::{CocoError, SevCmd, TdxVcpuCmd, TdxVmCmd};
use super::kvm::{KvmIoctls, VcpuIoctls, VmIoctls};
use super::Errno;

/// One recorded call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    /// The fd it went to: `kvm`, `vm<N>`, `vcpu<N>` (VM-local id).
    pub fd: String,
    /// The ioctl's uapi name.
    pub ioctl: &'static str,
    /// Its decoded arguments, `name=value` separated by spaces (empty when none).
    pub args: String,
}

impl Call {
    /// The arguments as `(name, value)` pairs: a value that reads as a decimal or `0x` hex
    /// number is a number, anything else text.
    pub fn fields(&self) -> Vec<(&str, Field<'_>)> {
        self.args
            .split(' ')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| {
                let n = match v.strip_prefix("0x") {
                    Some(h) => u64::from_str_radix(h, 16).ok(),
                    None => v.parse::<u64>().ok(),
                };
                (k, n.map_or(Field::Text(v), Field::Num))
            })
            .collect()
    }
}

/// One decoded argument value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field<'a> {
    /// A number.
    Num(u64),
    /// Anything else.
    Text(&'a str),
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.args.is_empty() {
            write!(f, "{} {}", self.fd, self.ioctl)
        } else {
            write!(f, "{} {} {}", self.fd, self.ioctl, self.args)
        }
    }
}

/// An errno to return from the next calls of one ioctl.
#[derive(Clone, Debug)]
struct Fault {
    ioctl: &'static str,
    errno: i32,
    /// How many calls fail (then it succeeds again).
    times: u32,
}

#[derive(Debug, Default)]
struct Shared {
    calls: Mutex<Vec<Call>>,
    faults: Mutex<Vec<Fault>>,
    vms: AtomicU32,
    /// Pages one `SNP_LAUNCH_UPDATE` does at most (0: all): partial progress.
    snp_update_pages: AtomicU64,
    /// Exits the next `KVM_RUN`s report, in order: `(exit_reason, first words of the exit
    /// union)`.
    exits: Mutex<std::collections::VecDeque<(u32, Vec<u64>)>>,
}

impl Shared {
    fn record(&self, fd: &str, ioctl: &'static str, args: String) -> Result<(), Errno> {
        self.calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Call {
                fd: fd.to_string(),
                ioctl,
                args,
            });
        let mut faults = self.faults.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(f) = faults.iter_mut().find(|f| f.ioctl == ioctl && f.times > 0) {
            f.times -= 1;
            return Err(Errno::new(f.errno));
        }
        Ok(())
    }
}

/// The recording kernel: hand it to `sys::kvm::Kvm::with`.
#[derive(Debug, Clone)]
pub struct Recorder {
    shared: Arc<Shared>,
    max_vcpus: usize,
    /// Answers to `KVM_CHECK_EXTENSION`, `(cap, value)`; others answer 0.
    caps: Arc<Vec<(u32, i32)>>,
    /// Answers to `KVM_GET_DEVICE_ATTR`, `(group, attr, value)`; others answer `ENXIO`.
    attrs: Arc<Vec<(u32, u64, u64)>>,
}

impl Recorder {
    /// A recorder whose host offers `max_vcpus` vCPUs and the `(cap, value)` extensions.
    pub fn new(max_vcpus: usize, caps: &[(u32, i32)]) -> Recorder {
        Recorder {
            shared: Arc::default(),
            max_vcpus,
            caps: Arc::new(caps.to_vec()),
            attrs: Arc::new(Vec::new()),
        }
    }

    /// The same recorder whose system fd answers `KVM_GET_DEVICE_ATTR` with the `(group,
    /// attr, value)` triples (any other attribute: `ENXIO`, as a kernel without it).
    pub fn with_device_attrs(mut self, attrs: &[(u32, u64, u64)]) -> Recorder {
        self.attrs = Arc::new(attrs.to_vec());
        self
    }

    /// Makes the next `times` calls of `ioctl` fail with `errno` (after being recorded).
    pub fn fail(&self, ioctl: &'static str, errno: i32, times: u32) {
        self.shared
            .faults
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Fault {
                ioctl,
                errno,
                times,
            });
    }

    /// Makes every `SNP_LAUNCH_UPDATE` do at most `pages` pages (0: all), advancing
    /// `gfn_start`, the source and `len` by what it did, as the kernel does on partial
    /// progress (`../shared/spec/kvm-coco-abi.md` §1.3).
    pub fn partial_snp_update(&self, pages: u64) {
        self.shared.snp_update_pages.store(pages, Ordering::Relaxed);
    }

    /// Makes the next `KVM_RUN` (of any vCPU) without `immediate_exit` return the exit
    /// `reason` as kvm-ioctls reports exits it does not decode (`VcpuExit::Unsupported`),
    /// with `words` as the first u64s of `kvm_run`'s exit union (at byte 32,
    /// `include/uapi/linux/kvm.h`). At most 32 words (the union is 256 bytes).
    pub fn queue_exit(&self, reason: u32, words: &[u64]) {
        self.shared
            .exits
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push_back((reason, words.iter().copied().take(32).collect()));
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.shared
            .calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Every call so far as `fd IOCTL args` lines.
    pub fn lines(&self) -> Vec<String> {
        self.calls().iter().map(ToString::to_string).collect()
    }

    /// Forgets the calls recorded so far.
    pub fn clear(&self) {
        self.shared
            .calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    fn cap(&self, cap: u32) -> i32 {
        self.caps
            .iter()
            .find(|(c, _)| *c == cap)
            .map_or(0, |&(_, v)| v)
    }
}

impl KvmIoctls for Recorder {
    fn check_extension(&self, cap: u32) -> i32 {
        let _ = self
            .shared
            .record("kvm", "KVM_CHECK_EXTENSION", format!("cap={cap}"));
        self.cap(cap)
    }

    fn max_vcpus(&self) -> usize {
        self.max_vcpus
    }

    fn supported_cpuid(&self, max_entries: usize) -> Result<CpuId, Errno> {
        self.shared.record(
            "kvm",
            "KVM_GET_SUPPORTED_CPUID",
            format!("nent={max_entries}"),
        )?;
        // A tiny table: leaf 1 (with an APIC ID field to patch) and leaf 0xB.
        let entries = [
            kvm_cpuid_entry2 {
                function: 1,
                eax: 0x00A0_0F11,
                ebx: 0x0000_0800,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0xB,
                ..Default::default()
            },
        ];
        CpuId::from_entries(&entries).map_err(|_| Errno::new(libc::ENOMEM))
    }

    fn device_attr(&self, group: u32, attr: u64) -> Result<u64, Errno> {
        self.shared.record(
            "kvm",
            "KVM_GET_DEVICE_ATTR",
            format!("group={group} attr={attr}"),
        )?;
        self.attrs
            .iter()
            .find(|&&(g, a, _)| g == group && a == attr)
            .map(|&(_, _, v)| v)
            .ok_or(Errno::new(libc::ENXIO))
    }

    fn create_vm(&self, vm_type: u64) -> Result<Box<dyn VmIoctls>, Errno> {
        self.shared
            .record("kvm", "KVM_CREATE_VM", format!("type={vm_type}"))?;
        let n = self.shared.vms.fetch_add(1, Ordering::Relaxed);
        Ok(Box::new(RecVm {
            name: format!("vm{n}"),
            rec: self.clone(),
            vcpus: AtomicU32::new(0),
        }))
    }
}

#[derive(Debug)]
struct RecVm {
    name: String,
    rec: Recorder,
    vcpus: AtomicU32,
}

impl RecVm {
    fn record(&self, ioctl: &'static str, args: String) -> Result<(), Errno> {
        self.rec.shared.record(&self.name, ioctl, args)
    }
}

impl VmIoctls for RecVm {
    fn check_extension(&self, cap: u32) -> i32 {
        let _ = self.record("KVM_CHECK_EXTENSION", format!("cap={cap}"));
        self.rec.cap(cap)
    }

    unsafe fn set_user_memory_region2(&self, r: kvm_userspace_memory_region2) -> Result<(), Errno> {
        self.record(
            "KVM_SET_USER_MEMORY_REGION2",
            format!(
                "slot={} flags={:#x} guest_phys_addr={:#x} memory_size={:#x} userspace_addr={} guest_memfd_offset={} guest_memfd={}",
                r.slot,
                r.flags,
                r.guest_phys_addr,
                r.memory_size,
                if r.userspace_addr == 0 { "0" } else { "mapped" },
                r.guest_memfd_offset,
                if r.flags & super::kvm::KVM_MEM_GUEST_MEMFD != 0 { "fd" } else { "none" },
            ),
        )
    }

    fn create_guest_memfd(&self, size: u64, flags: u64) -> Result<OwnedFd, Errno> {
        self.record(
            "KVM_CREATE_GUEST_MEMFD",
            format!("size={size:#x} flags={flags:#x}"),
        )?;
        // A memfd stands in for the guest_memfd: it has the size and can be mapped.
        let f = memfd(size)?;
        Ok(OwnedFd::from(f))
    }

    fn set_memory_attributes(&self, a: kvm_memory_attributes) -> Result<(), Errno> {
        self.record(
            "KVM_SET_MEMORY_ATTRIBUTES",
            format!(
                "address={:#x} size={:#x} attributes={:#x} flags={}",
                a.address, a.size, a.attributes, a.flags
            ),
        )
    }

    fn create_irqchip(&self) -> Result<(), Errno> {
        self.record("KVM_CREATE_IRQCHIP", String::new())
    }

    fn irq_line(&self, irq: u32, level: bool) -> Result<(), Errno> {
        self.record(
            "KVM_IRQ_LINE",
            format!("irq={irq} level={}", u8::from(level)),
        )
    }

    fn enable_cap(&self, cap: u32, args: [u64; 4]) -> Result<(), Errno> {
        self.record(
            "KVM_ENABLE_CAP",
            format!(
                "cap={cap} args0={:#x} args1={:#x} args2={:#x} args3={:#x}",
                args[0], args[1], args[2], args[3]
            ),
        )
    }

    fn register_enc_region(&self, _addr: u64, size: u64) -> Result<(), Errno> {
        // The host address differs per run: only the size is recorded.
        self.record("KVM_MEMORY_ENCRYPT_REG_REGION", format!("size={size:#x}"))
    }

    fn deny_msrs(&self, base: u32, count: u32) -> Result<(), Errno> {
        self.record(
            "KVM_X86_SET_MSR_FILTER",
            format!("flags=allow base={base:#x} nmsrs={count} bitmap=deny"),
        )
    }

    fn sev_cmd(&self, cmd: &mut SevCmd<'_>, sev_fd: i32) -> Result<(), CocoError> {
        let name = cmd.name();
        let sev = if sev_fd >= 0 { "sev" } else { "none" };
        let args = match cmd {
            SevCmd::Init2 {
                vmsa_features,
                ghcb_version,
            } => format!("vmsa_features={vmsa_features:#x} flags=0 ghcb_version={ghcb_version}"),
            SevCmd::LaunchStart { policy, .. } => format!("handle=0 policy={policy:#x}"),
            SevCmd::LaunchUpdateData { source, len } => {
                format!("uaddr_offset={:#x} len={len:#x}", source.offset)
            }
            SevCmd::LaunchUpdateVmsa | SevCmd::LaunchFinish | SevCmd::SnpEnableReqCerts => {
                String::new()
            }
            SevCmd::LaunchMeasure { .. } => "len=48".into(),
            SevCmd::LaunchSecret {
                header,
                guest,
                guest_len,
                trans,
            } => format!(
                "hdr_len={} guest_uaddr_offset={:#x} guest_len={guest_len:#x} trans_len={}",
                header.len(),
                guest.offset,
                trans.len()
            ),
            SevCmd::SnpLaunchStart { policy } => format!("policy={policy:#x} flags=0"),
            SevCmd::SnpLaunchUpdate(u) => format!(
                "gfn_start={:#x} uaddr_offset={} len={:#x} type={}",
                u.gfn_start,
                u.source
                    .map_or("none".to_string(), |s| format!("{:#x}", s.offset)),
                u.len,
                u.page_type
            ),
            SevCmd::SnpLaunchFinish {
                id_block,
                auth_key_en,
                host_data,
                ..
            } => format!(
                "id_block_en={} auth_key_en={} host_data={}",
                u8::from(id_block.is_some()),
                u8::from(*auth_key_en),
                host_data
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
            ),
        };
        let args = if args.is_empty() {
            format!("sev_fd={sev}")
        } else {
            format!("{args} sev_fd={sev}")
        };
        self.record(name, args)?;
        // What a kernel that accepts everything answers: a handle, the whole update done.
        match cmd {
            SevCmd::LaunchStart { handle, .. } => *handle = 1,
            SevCmd::SnpLaunchUpdate(u) => {
                let limit = self.rec.shared.snp_update_pages.load(Ordering::Relaxed);
                let mut pages = u.len / 4096;
                if limit > 0 {
                    pages = pages.min(limit);
                }
                let done = pages * 4096;
                u.gfn_start += pages;
                if let Some(s) = &mut u.source {
                    s.offset += done;
                }
                u.len -= done;
            }
            _ => {}
        }
        Ok(())
    }

    fn tdx_vm_cmd(&self, cmd: &mut TdxVmCmd<'_>) -> Result<(), CocoError> {
        let args = match cmd {
            TdxVmCmd::InitVm {
                attributes,
                xfam,
                cpuid,
                ..
            } => format!(
                "attributes={attributes:#x} xfam={xfam:#x} cpuid_nent={}",
                cpuid.as_slice().len()
            ),
            TdxVmCmd::Capabilities(_) => "cpuid_nent=256".into(),
            TdxVmCmd::FinalizeVm => String::new(),
        };
        self.record(cmd.name(), args)?;
        if let TdxVmCmd::Capabilities(caps) = cmd {
            **caps = tdx_capabilities();
        }
        Ok(())
    }

    fn create_vcpu(&self, id: u64) -> Result<Box<dyn VcpuIoctls>, Errno> {
        self.record("KVM_CREATE_VCPU", format!("id={id}"))?;
        let n = self.vcpus.fetch_add(1, Ordering::Relaxed);
        Ok(Box::new(RecVcpu {
            name: format!("{}.vcpu{n}", self.name),
            rec: self.rec.clone(),
            run: Box::default(),
        }))
    }
}

/// What the recorder's TDX module reports to `KVM_TDX_CAPABILITIES`: attributes DEBUG (bit 0)
/// and SEPT_VE_DISABLE (bit 28), XFAM x87|SSE|AVX (bits 0–2), GetQuote forwarded (R11 bit
/// 0), and two configurable CPUID leaves: 1 (ECX/EDX masks) and 7.0 (EBX mask).
pub fn tdx_capabilities() -> super::coco::TdxCapabilities {
    super::coco::TdxCapabilities {
        supported_attrs: (1 << 28) | 1,
        supported_xfam: 0x7,
        user_tdvmcallinfo_1_r11: 1,
        user_tdvmcallinfo_1_r12: 0,
        cpuid: vec![
            kvm_cpuid_entry2 {
                function: 1,
                ecx: 0x0000_FFFF,
                edx: 0xFFFF_0000,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 7,
                flags: kvm_bindings::KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
                ebx: 0xFF,
                ..Default::default()
            },
        ],
    }
}

/// An anonymous memory file of `size` bytes (`memfd_create`): what the recorder hands out as
/// a guest_memfd, and a stand-in for one in tests.
///
/// # Errors
/// The `memfd_create` or `ftruncate` errno.
pub fn memfd(size: u64) -> Result<File, Errno> {
    // SAFETY: memfd_create(2) needs a NUL-terminated name: a C string literal; it returns a
    // new fd (checked below) that nothing else owns.
    let fd = unsafe { libc::memfd_create(c"relaunch-recorded-gmem".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: from_raw_fd needs an open fd nothing else owns: memfd_create just returned it.
    let f = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    f.set_len(size)
        .map_err(|e| Errno::new(e.raw_os_error().unwrap_or(libc::EIO)))?;
    Ok(f)
}

#[derive(Debug)]
struct RecVcpu {
    name: String,
    rec: Recorder,
    /// A `kvm_run` page of its own: `immediate_exit` and queued exits go through it.
    run: Box<kvm_run>,
}

impl RecVcpu {
    fn record(&self, ioctl: &'static str, args: String) -> Result<(), Errno> {
        self.rec.shared.record(&self.name, ioctl, args)
    }
}

fn seg(s: &kvm_bindings::kvm_segment) -> String {
    format!("{:#x}/{:#x}/{:#x}", s.selector, s.base, s.limit)
}

impl VcpuIoctls for RecVcpu {
    fn set_cpuid2(&self, cpuid: &CpuId) -> Result<(), Errno> {
        let apic = cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == 1)
            .map_or(0, |e| e.ebx >> 24);
        self.record(
            "KVM_SET_CPUID2",
            format!("nent={} apic_id={apic}", cpuid.as_slice().len()),
        )
    }
    fn get_regs(&self) -> Result<kvm_regs, Errno> {
        self.record("KVM_GET_REGS", String::new())?;
        // KVM's reset state: RIP 0xFFF0, RFLAGS bit 1.
        Ok(kvm_regs {
            rip: 0xFFF0,
            rflags: 2,
            ..Default::default()
        })
    }
    fn set_regs(&self, r: &kvm_regs) -> Result<(), Errno> {
        self.record(
            "KVM_SET_REGS",
            format!("rip={:#x} rsp={:#x} rflags={:#x}", r.rip, r.rsp, r.rflags),
        )
    }
    fn get_sregs(&self) -> Result<kvm_sregs, Errno> {
        self.record("KVM_GET_SREGS", String::new())?;
        Ok(kvm_sregs::default())
    }
    fn set_sregs(&self, s: &kvm_sregs) -> Result<(), Errno> {
        self.record(
            "KVM_SET_SREGS",
            format!(
                "cs={} cr0={:#x} cr3={:#x} cr4={:#x} efer={:#x}",
                seg(&s.cs),
                s.cr0,
                s.cr3,
                s.cr4,
                s.efer
            ),
        )
    }
    fn set_xcrs(&self, x: &kvm_xcrs) -> Result<(), Errno> {
        self.record(
            "KVM_SET_XCRS",
            format!("nr_xcrs={} xcr0={:#x}", x.nr_xcrs, x.xcrs[0].value),
        )
    }
    fn set_msrs(&self, msrs: &Msrs) -> Result<usize, Errno> {
        let list: Vec<String> = msrs
            .as_slice()
            .iter()
            .map(|e| format!("{:#x}:{:#x}", e.index, e.data))
            .collect();
        self.record("KVM_SET_MSRS", format!("entries={}", list.join(",")))?;
        Ok(msrs.as_slice().len())
    }
    fn set_debugregs(&self, d: &kvm_debugregs) -> Result<(), Errno> {
        self.record(
            "KVM_SET_DEBUGREGS",
            format!("dr6={:#x} dr7={:#x}", d.dr6, d.dr7),
        )
    }
    fn set_fpu(&self, f: &kvm_fpu) -> Result<(), Errno> {
        self.record(
            "KVM_SET_FPU",
            format!("fcw={:#x} mxcsr={:#x}", f.fcw, f.mxcsr),
        )
    }
    fn set_mp_state(&self, s: kvm_mp_state) -> Result<(), Errno> {
        self.record("KVM_SET_MP_STATE", format!("mp_state={}", s.mp_state))
    }
    fn run(&mut self) -> Result<VcpuExit<'_>, Errno> {
        // What the VMM left for the kernel: `immediate_exit`, and the answer to a
        // certificate request (`ret`, and `npages` for ENOSPC) that KVM reads now.
        let mut args = Vec::new();
        if self.run.immediate_exit != 0 {
            args.push(format!("immediate_exit={}", self.run.immediate_exit));
        }
        if let Some(e) = super::sev::decode_snp_req_certs(&mut self.run) {
            args.push(format!("snp_req_certs.ret={} npages={}", e.ret, e.npages));
        }
        self.record("KVM_RUN", args.join(" "))?;
        // KVM completes the pending exit, then `immediate_exit` returns EINTR before the
        // guest is entered (x86 `kvm_arch_vcpu_ioctl_run`).
        self.run.exit_reason = kvm_bindings::KVM_EXIT_UNKNOWN;
        if self.run.immediate_exit != 0 {
            return Err(Errno::new(libc::EINTR));
        }
        let next = self
            .rec
            .shared
            .exits
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop_front();
        match next {
            Some((reason, words)) => {
                self.run.exit_reason = reason;
                // The union as its 256-byte `padding` member (a whole-field write: safe).
                let mut pad = [0 as libc::c_char; 256];
                let bytes = words.iter().flat_map(|w| w.to_ne_bytes());
                for (p, b) in pad.iter_mut().zip(bytes) {
                    *p = b as libc::c_char;
                }
                self.run.__bindgen_anon_1.padding = pad;
                Ok(VcpuExit::Unsupported(reason))
            }
            // Nothing runs behind a recorder.
            None => Err(Errno::new(libc::ENOSYS)),
        }
    }
    fn kvm_run(&mut self) -> Option<&mut kvm_run> {
        Some(&mut self.run)
    }

    fn tdx_vcpu_cmd(&self, cmd: &mut TdxVcpuCmd<'_>) -> Result<(), CocoError> {
        let args = match cmd {
            TdxVcpuCmd::InitVcpu { rcx } => format!("data={rcx:#x}"),
            TdxVcpuCmd::InitMemRegion(r) => format!(
                "source_offset={:#x} gpa={:#x} nr_pages={} flags={}",
                r.source.offset,
                r.gpa,
                r.nr_pages,
                u8::from(r.measure)
            ),
            TdxVcpuCmd::GetCpuid(c) => format!("nent={}", c.nent),
        };
        let res = self.record(cmd.name(), args);
        if let TdxVcpuCmd::GetCpuid(c) = cmd {
            res?;
            // The TD's CPUID as this recorder's TDX module reports it: leaves 1 and 7.0 with
            // the configurable bits of `tdx_capabilities` set; `E2BIG` with the count needed
            // when `nent` is too small (`intel-tdx.rst`, KVM_TDX_GET_CPUID).
            let entries = tdx_capabilities().cpuid;
            let need = entries.len() as u32;
            let room = c.nent;
            c.nent = need;
            if room < need {
                return Err(CocoError::errno(libc::E2BIG));
            }
            c.entries = entries;
            return Ok(());
        }
        if let TdxVcpuCmd::InitMemRegion(r) = cmd {
            // The whole region on success; on an injected fault (`Recorder::fail`), one page
            // when more than one is left, then the errno: the kernel copies its progress
            // back even on error (`../shared/spec/kvm-coco-abi.md` §3.1).
            let done = match res {
                Ok(()) => r.nr_pages,
                Err(_) => u64::from(r.nr_pages > 1),
            };
            r.gpa += done * 4096;
            r.source.offset += done * 4096;
            r.nr_pages -= done;
        }
        Ok(res?)
    }
}
