//! A model of KVM plus the AMD Secure Processor and the TDX module behind the kernel door
//! (`sys::kvm`): the same backend code runs against it as against `/dev/kvm`, and it answers
//! like the kernel would for VM types 0, 2, 3, 4 and 5 (`KVM_X86_DEFAULT_VM`, `SEV_VM`,
//! `SEV_ES_VM`, `SNP_VM`, `TDX_VM`; `../shared/spec/kvm-coco-abi.md` §1.1).
//!
//! It keeps what the kernel keeps — VMs, memslots, guest_memfds, memory attributes, vCPUs and
//! their registers, the launch state machine, which private pages the firmware already
//! assigned — refuses what the kernel refuses (errno, and for SEV the firmware status in
//! `kvm_sev_cmd.error`), makes partial progress on `SNP_LAUNCH_UPDATE` and
//! `TDX_INIT_MEM_REGION` as configured ([`ModelConfig`]), and computes the launch
//! measurement from what it was given: page bytes read from each command's source, page
//! types, GPAs, and the VMSA KVM builds from the registers the vCPU holds
//! ([`relaunch_core::arch::vmsa::kvm_measured_vmsa`], KVM's `sev_es_sync_vmsa`). Never from a
//! plan: the model does not know one.
//!
//! Every call and every page the firmware adds to the digest is logged ([`Event`]) for
//! `relaunch trace`, and [`Model::set_hook`] reports measured pages as they happen.
//!
//! The SNP CPUID page is checked as the AMD Secure Processor checks it, against the model
//! host's CPUID (`cpuid`): a page it refuses is corrected in place and the update fails
//! with `INVALID_PARAM`.
//!
//! Not modelled (reported as such, never faked): the ID authentication signature (ECDSA
//! P-384), the TDX module's CPUID rules for `INIT_VM`, and the TDX module's own status codes
//! (refusals carry only the errno).

#![deny(unsafe_code)]

mod cpuid;
mod state;
#[cfg(test)]
mod tests;

use std::sync::{Arc, Mutex, PoisonError};

use kvm_bindings::{kvm_cpuid_entry2, CpuId};
use relaunch_core::measure::Measurement;

use crate::sys::emu::{Firmware, PrivateSink};
use crate::sys::kvm::{
    KvmIoctls, VmIoctls, KVM_X86_GRP_SEV, KVM_X86_SEV_SNP_REQ_CERTS, KVM_X86_SEV_VMSA_FEATURES,
    KVM_X86_SNP_POLICY_BITS,
};
use crate::sys::safe::SafeVm;
use crate::sys::Errno;

pub use state::{errno_name, MODEL_FW};

/// `KVM_X86_SEV_VM` (`arch/x86/include/uapi/asm/kvm.h`).
pub const KVM_X86_SEV_VM: u64 = 2;
/// `KVM_X86_SEV_ES_VM`.
pub const KVM_X86_SEV_ES_VM: u64 = 3;
/// `KVM_X86_SNP_VM`.
pub const KVM_X86_SNP_VM: u64 = 4;
/// `KVM_X86_TDX_VM`.
pub const KVM_X86_TDX_VM: u64 = 5;

/// How the model behaves where the kernel may vary.
#[derive(Clone, Debug)]
pub struct ModelConfig {
    /// Most pages one `SNP_LAUNCH_UPDATE` / `INIT_MEM_REGION` call does before returning
    /// with progress (`None`: all of them). The kernel may stop early at any page
    /// (`kvm_gmem_populate` checks for signals per page; TDX likewise:
    /// `../shared/spec/kvm-coco-abi.md` §1.3, §3.1).
    pub max_pages_per_call: Option<u64>,
    /// Every k-th `SNP_LAUNCH_UPDATE` / `INIT_MEM_REGION` call returns `EINTR` before doing
    /// anything (a pending signal).
    pub eintr_every: Option<u32>,
    /// The SNP policy bits KVM accepts (`KVM_X86_SNP_POLICY_BITS`; default bits 0–20, the
    /// 6.18 `SNP_POLICY_MASK_VALID`).
    pub snp_policy_bits: u64,
    /// Whether the kernel has the `KVM_X86_SNP_POLICY_BITS` attribute (Linux 6.19+): if not,
    /// `KVM_GET_DEVICE_ATTR` answers `ENXIO` for it, as older kernels do
    /// (`sev_dev_get_attr`), and only `snp_launch_start` knows `snp_policy_bits`.
    pub snp_policy_bits_attr: bool,
    /// Whether the kernel has SNP certificate requests (Linux 7.0+):
    /// `KVM_X86_SEV_SNP_REQ_CERTS` reads 1 and `KVM_SEV_SNP_ENABLE_REQ_CERTS` is a command;
    /// if not, the attribute is `ENXIO` and the command id unknown (`EINVAL`,
    /// `sev_mem_enc_ioctl`'s default).
    pub snp_req_certs: bool,
    /// The `vmsa_features` bits KVM accepts (`KVM_X86_SEV_VMSA_FEATURES`).
    pub vmsa_features: u64,
    /// `KVM_CAP_MAX_VCPUS`.
    pub max_vcpus: usize,
    /// CPUID(1).EAX the model's host reports (the vCPU signature).
    pub vcpu_sig: u32,
    /// The host CPUID the model's Secure Processor checks SNP CPUID pages against (the
    /// part's own values; `None`: what the model's `KVM_GET_SUPPORTED_CPUID` reports).
    pub firmware_cpuid: Option<Vec<kvm_cpuid_entry2>>,
    /// The SEV transport integrity key: `LAUNCH_MEASURE` HMACs with it and `LAUNCH_SECRET`
    /// checks packet MACs with it. The real firmware unwraps TIK and TEK from the owner's
    /// `LAUNCH_START` session; without a session both are all zeros (amd/AMD-ASPFW
    /// `sev_mcmd_launch_start` zeroes the guest context and opens a channel only for a DH
    /// certificate), which is this default.
    pub tik: [u8; 16],
    /// The SEV transport encryption key `LAUNCH_SECRET` decrypts packets with (see `tik`).
    pub tek: [u8; 16],
    /// The MNONCE `LAUNCH_MEASURE` returns: `None` draws a fresh one from /dev/urandom for
    /// every call, as the firmware does from its TRNG (`sev_guest_measure`); a fixed value
    /// makes the blob reproducible.
    pub mnonce: Option<[u8; 16]>,
    /// Whether every call and measured page is kept for [`Model::events`] (`relaunch
    /// trace`, tests). An emulated platform that relaunches for hours turns it off: the log
    /// would grow with every launch. The hook and the measurement work either way.
    pub record_events: bool,
    /// Further `KVM_CHECK_EXTENSION` answers, `(cap, value)`, on both fds.
    pub extra_caps: Vec<(u32, i32)>,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            max_pages_per_call: None,
            eintr_every: None,
            snp_policy_bits: (1 << 21) - 1,
            snp_policy_bits_attr: true,
            snp_req_certs: true,
            vmsa_features: 0x3FF,
            max_vcpus: 64,
            vcpu_sig: 0x00A0_0F11,
            firmware_cpuid: None,
            tik: [0; 16],
            tek: [0; 16],
            mnonce: None,
            extra_caps: Vec::new(),
            record_events: true,
        }
    }
}

/// One page (or SEV byte range) the firmware adds to the launch digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Measured {
    /// SNP: one PAGE_INFO (SEV-SNP ABI spec, `PAGE_INFO`; `../shared/spec/igvm-snp.md`).
    Snp {
        /// Guest-physical address.
        gpa: u64,
        /// PAGE_INFO page type (1 normal, 2 VMSA, 3 zero, 4 unmeasured, 5 secrets, 6 CPUID).
        page_type: u8,
        /// SHA-384 of the contents where the firmware hashes them (normal, VMSA).
        sha384: Option<[u8; 48]>,
    },
    /// SEV / SEV-ES: bytes the SHA-256 launch digest takes, in order (`LAUNCH_UPDATE_DATA`
    /// data, `LAUNCH_UPDATE_VMSA` VMSAs).
    Sev {
        /// Guest-physical address of the first byte (VMSAs: KVM's VMSA GPA).
        gpa: u64,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// TDX: one `TDH.MEM.PAGE.ADD`, with its 16 `TDH.MR.EXTEND`s when measured.
    Tdx {
        /// Guest-physical address.
        gpa: u64,
        /// Whether the contents were extended into MRTD.
        extended: bool,
    },
}

/// One door call as the model saw it.
#[derive(Clone, Debug)]
pub struct CallRecord {
    /// `kvm`, `vm`, `vcpuN`.
    pub fd: String,
    /// The uapi name (`close` when a VM fd is dropped).
    pub ioctl: &'static str,
    /// The arguments, by uapi field name, as the call came in.
    pub args: Vec<(&'static str, Arg)>,
    /// The model's answer: `None` = success.
    pub error: Option<crate::sys::coco::CocoError>,
}

/// One argument value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Arg {
    /// A number.
    Num(u64),
    /// Text (hex strings, names).
    Text(String),
}

/// What the model logs, in order.
#[derive(Clone, Debug)]
pub enum Event {
    /// A door call.
    Call(CallRecord),
    /// A page added to the launch digest.
    Measured(Measured),
}

/// Called for every measured page, as the firmware adds it.
pub type Hook = Box<dyn Fn(&Measured) + Send + Sync>;

pub(crate) struct Shared {
    pub(crate) cfg: ModelConfig,
    log: Mutex<Vec<Event>>,
    hook: Mutex<Option<Hook>>,
    measurement: Mutex<Option<Measurement>>,
    /// Calls of the partial-progress commands so far (for `eintr_every`).
    pub(crate) populate_calls: Mutex<u32>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("cfg", &self.cfg).finish()
    }
}

impl Shared {
    pub(crate) fn call(&self, rec: CallRecord) {
        if !self.cfg.record_events {
            return;
        }
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Event::Call(rec));
    }

    pub(crate) fn measured(&self, m: Measured) {
        if let Some(h) = self
            .hook
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            h(&m);
        }
        if !self.cfg.record_events {
            return;
        }
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Event::Measured(m));
    }

    pub(crate) fn finished(&self, m: Measurement) {
        *self
            .measurement
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(m);
    }

    /// The CPUID the Secure Processor checks CPUID pages against.
    pub(crate) fn firmware_cpuid(&self) -> Vec<kvm_cpuid_entry2> {
        match &self.cfg.firmware_cpuid {
            Some(c) => c.clone(),
            None => model_entries(self.cfg.vcpu_sig).to_vec(),
        }
    }

    pub(crate) fn cap(&self, cap: u32) -> Option<i32> {
        self.cfg
            .extra_caps
            .iter()
            .find(|(c, _)| *c == cap)
            .map(|&(_, v)| v)
    }
}

/// The kernel model: hand it to `sys::kvm::Kvm::with`. Clones share one model.
#[derive(Clone, Debug)]
pub struct Model {
    shared: Arc<Shared>,
}

impl Model {
    /// A model configured by `cfg`.
    pub fn new(cfg: ModelConfig) -> Model {
        Model {
            shared: Arc::new(Shared {
                cfg,
                log: Mutex::new(Vec::new()),
                hook: Mutex::new(None),
                measurement: Mutex::new(None),
                populate_calls: Mutex::new(0),
            }),
        }
    }

    /// Reports every measured page to `hook` from now on.
    pub fn set_hook(&self, hook: Hook) {
        *self
            .shared
            .hook
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(hook);
    }

    /// The measurement of the last launch that finished (`SNP_LAUNCH_FINISH`, SEV
    /// `LAUNCH_MEASURE`, TDX `FINALIZE_VM`): SNP launch digest, SEV/SEV-ES SHA-256 launch
    /// digest, MRTD.
    pub fn measurement(&self) -> Option<Measurement> {
        *self
            .shared
            .measurement
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Everything logged so far, in order.
    pub fn events(&self) -> Vec<Event> {
        self.shared
            .log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Every page measured so far, in the firmware's order.
    pub fn measured(&self) -> Vec<Measured> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                Event::Measured(m) => Some(m),
                Event::Call(_) => None,
            })
            .collect()
    }
}

/// The host CPUID the model reports (`KVM_GET_SUPPORTED_CPUID`): enough for a backend to
/// find the vCPU signature, the APIC ID field, the physical address width (48 bits,
/// CPUID 0x80000008.EAX[7:0]) and the SEV leaf (C-bit 51, CPUID 0x8000001F.EBX[5:0]), plus
/// the leaves an SNP CPUID page's check looks into: feature bits of an EPYC part in leaves
/// 1 and 7.0 (AMD CPUID specification #25481), and XSAVE leaf 0xD subleaves 0 and 1 for
/// x87 + SSE + AVX (sizes 0x340; significant index, as KVM reports subleaf leaves).
pub(crate) fn model_entries(sig: u32) -> [kvm_cpuid_entry2; 9] {
    let e = |function, index, eax, ebx, ecx, edx| kvm_cpuid_entry2 {
        function,
        index,
        flags: if function == 7 || function == 0xD {
            kvm_bindings::KVM_CPUID_FLAG_SIGNIFCANT_INDEX
        } else {
            0
        },
        eax,
        ebx,
        ecx,
        edx,
        ..Default::default()
    };
    [
        // Max leaf 0xD; "AuthenticAMD" in EBX, EDX, ECX.
        e(0, 0, 0xD, 0x6874_7541, 0x444D_4163, 0x6974_6E65),
        // CLFLUSH 8 × 8 bytes; ECX SSE3, SSSE3, SSE4.1, SSE4.2, XSAVE, AVX; EDX FPU … SSE2,
        // HTT.
        e(1, 0, sig, 0x0000_0800, 0x1418_0201, 0x178B_FBFF),
        // FSGSBASE, BMI1, AVX2, SMEP, BMI2.
        e(7, 0, 0, 0x0000_01A9, 0, 0),
        e(0xB, 0, 0, 0, 0, 0),
        // XCR0 bits x87, SSE, AVX; 0x340 bytes with AVX.
        e(0xD, 0, 0x7, 0x340, 0x340, 0),
        // XSAVEOPT.
        e(0xD, 1, 0x1, 0x340, 0, 0),
        e(0x8000_0000, 0, 0x8000_001F, 0, 0, 0),
        e(0x8000_0008, 0, 0x3030, 0, 0, 0),
        e(0x8000_001F, 0, 0x1B, 51, 0, 0),
    ]
}

fn model_cpuid(sig: u32) -> Result<CpuId, Errno> {
    CpuId::from_entries(&model_entries(sig)).map_err(|_| Errno::new(libc::ENOMEM))
}

impl KvmIoctls for Model {
    fn check_extension(&self, cap: u32) -> i32 {
        let v = state::system_cap(&self.shared, cap);
        self.shared.call(CallRecord {
            fd: "kvm".into(),
            ioctl: "KVM_CHECK_EXTENSION",
            args: vec![("cap", Arg::Num(cap.into()))],
            error: None,
        });
        v
    }

    fn max_vcpus(&self) -> usize {
        self.shared.cfg.max_vcpus
    }

    fn supported_cpuid(&self, max_entries: usize) -> Result<CpuId, Errno> {
        let r = model_cpuid(self.shared.cfg.vcpu_sig).and_then(|c| {
            if c.as_slice().len() > max_entries {
                Err(Errno::new(libc::E2BIG))
            } else {
                Ok(c)
            }
        });
        self.shared.call(CallRecord {
            fd: "kvm".into(),
            ioctl: "KVM_GET_SUPPORTED_CPUID",
            args: vec![("nent", Arg::Num(max_entries as u64))],
            error: r.as_ref().err().map(|&e| e.into()),
        });
        r
    }

    fn device_attr(&self, group: u32, attr: u64) -> Result<u64, Errno> {
        let cfg = &self.shared.cfg;
        // `kvm_x86_dev_get_attr` → `sev_dev_get_attr` (`arch/x86/kvm/svm/sev.c`): group
        // `KVM_X86_GRP_SEV` only; an attribute the kernel does not have is ENXIO.
        let r = match (group, attr) {
            (KVM_X86_GRP_SEV, KVM_X86_SEV_VMSA_FEATURES) => Ok(cfg.vmsa_features),
            (KVM_X86_GRP_SEV, KVM_X86_SNP_POLICY_BITS) if cfg.snp_policy_bits_attr => {
                Ok(cfg.snp_policy_bits)
            }
            // `sev_snp_enabled ? 1 : 0`: the model's SNP is always on.
            (KVM_X86_GRP_SEV, KVM_X86_SEV_SNP_REQ_CERTS) if cfg.snp_req_certs => Ok(1),
            _ => Err(Errno::new(libc::ENXIO)),
        };
        self.shared.call(CallRecord {
            fd: "kvm".into(),
            ioctl: "KVM_GET_DEVICE_ATTR",
            args: vec![("group", Arg::Num(group.into())), ("attr", Arg::Num(attr))],
            error: r.as_ref().err().map(|&e| e.into()),
        });
        r
    }

    fn create_vm(&self, vm_type: u64) -> Result<Box<dyn VmIoctls>, Errno> {
        self.new_vm(vm_type, None)
    }
}

impl Firmware for Model {
    fn create_vm_with_sink(
        &self,
        vm_type: u64,
        sink: Arc<dyn PrivateSink>,
    ) -> Result<Box<dyn VmIoctls>, Errno> {
        self.new_vm(vm_type, Some(sink))
    }
}

impl Model {
    fn new_vm(
        &self,
        vm_type: u64,
        sink: Option<Arc<dyn PrivateSink>>,
    ) -> Result<Box<dyn VmIoctls>, Errno> {
        let r = state::ModelVm::new(Arc::clone(&self.shared), vm_type, sink);
        self.shared.call(CallRecord {
            fd: "kvm".into(),
            ioctl: "KVM_CREATE_VM",
            args: vec![("type", Arg::Num(vm_type))],
            error: r.as_ref().err().map(|&e| e.into()),
        });
        Ok(Box::new(SafeVm(r?)))
    }
}
