//! The launch flags `measure`, `run` and `trace` share, with one meaning: what `measure`
//! predicts for a set of flags is what `run` launches with the same flags (issue 7).
//!
//! Each command lists [`FLAGS`]'s entries in its own flag table (so `--help` shows them) and
//! hands every flag it does not know itself to [`LaunchFlags::take`].

use std::path::PathBuf;

use relaunch_core::arch::cpu::vcpu_sig_by_name;
use relaunch_core::plan::{KernelHashes, LaunchConfig, Platform};

use crate::args::{parse_hex_bytes, parse_hex_u64, ArgError, Cursor, Flag};

/// `--vcpu-type`.
pub const VCPU_TYPE: Flag = Flag {
    long: "vcpu-type",
    short: None,
    value: Some("NAME"),
    help: "QEMU -cpu model whose CPUID(1).EAX goes into the reset state's RDX (EPYC, \
           EPYC-v4, EPYC-Rome, EPYC-Milan, EPYC-Genoa, ...). Default: none (measure), this \
           host's signature (run); needed when a vCPU starts from the reset state on sev-es \
           or snp.",
};
/// `--vcpu-sig`.
pub const VCPU_SIG: Flag = Flag {
    long: "vcpu-sig",
    short: None,
    value: Some("HEX"),
    help: "The vCPU signature (CPUID(1).EAX) as hex, instead of --vcpu-type. Default: none.",
};
/// `--guest-features`.
pub const GUEST_FEATURES: Flag = Flag {
    long: "guest-features",
    short: None,
    value: Some("HEX"),
    help: "SEV_FEATURES, as hex, of the VMSAs of a launch without a VMSA in the bundle \
           (SNP and SEV-ES; an IGVM VMSA carries its own). Default: 0.",
};
/// `--policy`.
pub const POLICY: Flag = Flag {
    long: "policy",
    short: None,
    value: Some("HEX"),
    help: "Guest policy (SNP policy, SEV policy or TDX attributes), as hex. Default: the \
           bundle's policy, else the platform's default.",
};
/// `--host-data`.
pub const HOST_DATA: Flag = Flag {
    long: "host-data",
    short: None,
    value: Some("HEX"),
    help: "SNP HOST_DATA: 64 hex digits (32 bytes). Default: all zeros.",
};
/// `--kernel`.
pub const KERNEL: Flag = Flag {
    long: "kernel",
    short: None,
    value: Some("FILE"),
    help: "Kernel whose SHA-256 goes into an OVMF image's SEV kernel-hashes table (QEMU \
           -kernel). Default: none.",
};
/// `--initrd`.
pub const INITRD: Flag = Flag {
    long: "initrd",
    short: None,
    value: Some("FILE"),
    help: "Initrd for the kernel-hashes table (needs --kernel). Default: none (the hash of \
           nothing).",
};
/// `--append`.
pub const APPEND: Flag = Flag {
    long: "append",
    short: None,
    value: Some("STR"),
    help: "Kernel command line for the kernel-hashes table (needs --kernel). Default: empty.",
};

/// Every shared launch flag, in help order.
pub const FLAGS: [Flag; 8] = [
    VCPU_TYPE,
    VCPU_SIG,
    GUEST_FEATURES,
    POLICY,
    HOST_DATA,
    KERNEL,
    INITRD,
    APPEND,
];

/// The shared launch flags of one command line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LaunchFlags {
    /// `--vcpu-type`, if given.
    pub vcpu_type: Option<String>,
    /// The vCPU signature from `--vcpu-type` or `--vcpu-sig`.
    pub vcpu_sig: Option<u32>,
    sig_flag: bool,
    /// `--guest-features`.
    pub guest_features: u64,
    /// `--policy`.
    pub policy: Option<u64>,
    /// `--host-data`.
    pub host_data: [u8; 32],
    /// `--kernel`, `--initrd`, `--append`.
    pub kernel: Option<PathBuf>,
    /// `--initrd`.
    pub initrd: Option<PathBuf>,
    /// `--append`.
    pub append: Option<String>,
}

impl LaunchFlags {
    /// Takes `f`'s value from `it` if `f` is a launch flag; `Ok(false)` otherwise.
    ///
    /// # Errors
    /// [`ArgError`] for a malformed value.
    pub fn take(&mut self, f: &Flag, it: &mut Cursor) -> Result<bool, ArgError> {
        match f.long {
            "vcpu-type" => {
                let v = it.string(f)?;
                let sig = vcpu_sig_by_name(&v).ok_or_else(|| ArgError::BadValue {
                    flag: f.name(),
                    value: v.clone(),
                    expected: "a QEMU -cpu model (EPYC, EPYC-v4, EPYC-Rome, EPYC-Milan, \
                               EPYC-Genoa, ...)",
                })?;
                self.vcpu_type = Some(v);
                self.vcpu_sig = Some(sig);
            }
            "vcpu-sig" => {
                self.sig_flag = true;
                self.vcpu_sig = Some(it.parsed(f, "a 32-bit hex CPUID(1).EAX", |v| {
                    parse_hex_u64(v).and_then(|n| u32::try_from(n).ok())
                })?);
            }
            "guest-features" => {
                self.guest_features = it.parsed(f, "a hex SEV_FEATURES value", parse_hex_u64)?;
            }
            "policy" => self.policy = Some(it.parsed(f, "a hex policy", parse_hex_u64)?),
            "host-data" => {
                self.host_data = it.parsed(f, "64 hex digits", parse_hex_bytes::<32>)?;
            }
            "kernel" => self.kernel = Some(it.path(f)?),
            "initrd" => self.initrd = Some(it.path(f)?),
            "append" => self.append = Some(it.string(f)?),
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Checks the combinations once every flag is in.
    ///
    /// # Errors
    /// [`ArgError::Other`] naming the conflict.
    pub fn check(&self) -> Result<(), ArgError> {
        if self.vcpu_type.is_some() && self.sig_flag {
            return Err(ArgError::Other(
                "give --vcpu-type or --vcpu-sig, not both".into(),
            ));
        }
        if self.kernel.is_none() && (self.initrd.is_some() || self.append.is_some()) {
            return Err(ArgError::Other(
                "--initrd and --append need --kernel".into(),
            ));
        }
        Ok(())
    }

    /// The launch config for `platform`, `vcpus` and `mem` bytes; `default_sig` is the vCPU
    /// signature when no flag gave one. Kernel hashes are not filled in (they need the
    /// files: [`LaunchFlags::kernel_hashes`]).
    pub fn config(
        &self,
        platform: Platform,
        vcpus: u32,
        mem: u64,
        default_sig: u32,
    ) -> LaunchConfig {
        LaunchConfig {
            platform,
            vcpus,
            mem_bytes: mem,
            vcpu_sig: self.vcpu_sig.unwrap_or(default_sig),
            guest_features: self.guest_features,
            policy: self.policy,
            host_data: self.host_data,
            kernel_hashes: None,
        }
    }

    /// The kernel-hashes table entries for `bundle`: `None` without `--kernel`; an error
    /// for an IGVM bundle (it carries its own kernel) or an unreadable file — one line.
    ///
    /// # Errors
    /// The sentence to print.
    pub fn kernel_hashes_for(&self, bundle: &[u8]) -> Result<Option<KernelHashes>, String> {
        if self.kernel.is_some()
            && relaunch_core::ovmf::detect(bundle) == relaunch_core::ovmf::InputKind::Igvm
        {
            return Err(
                "--kernel/--initrd/--append fill the SEV kernel-hashes table of an OVMF image; \
                 an IGVM bundle carries its own kernel"
                    .into(),
            );
        }
        self.kernel_hashes()
            .map_err(|e| super::measure::one_line(&e.to_string()))
    }

    /// The SEV kernel-hashes table entries of `--kernel/--initrd/--append`, if `--kernel`
    /// was given.
    ///
    /// # Errors
    /// A file that cannot be read.
    pub fn kernel_hashes(&self) -> Result<Option<KernelHashes>, super::measure::MeasureCmdError> {
        match &self.kernel {
            None => Ok(None),
            Some(k) => {
                super::measure::kernel_hashes(k, self.initrd.as_deref(), self.append.as_deref())
                    .map(Some)
            }
        }
    }
}
