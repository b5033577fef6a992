//! The launch flags `measure`, `run` and `trace` share, with one meaning: what `measure`
//! predicts for a set of flags is what `run` launches with the same flags (issue 7).
//!
//! Each command lists [`FLAGS`]'s entries in its own flag table (so `--help` shows them) and
//! hands every flag it does not know itself to [`LaunchFlags::take`]. `--id-block` and
//! `--id-auth` ([`ID_FLAGS`]) are `run`'s and `trace`'s only: the ID block does not change
//! the measurement `measure` predicts.

use std::path::PathBuf;

use relaunch_core::arch::cpu::vcpu_sig_by_name;
use relaunch_core::plan::{KernelHashes, LaunchConfig, Platform, SnpIdBlock};

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

/// `--id-block`.
pub const ID_BLOCK: Flag = Flag {
    long: "id-block",
    short: None,
    value: Some("FILE"),
    help: "SNP ID block given at SNP_LAUNCH_FINISH: a raw 96-byte ID_BLOCK (SEV-SNP firmware \
           ABI), passed as is. The firmware refuses the launch unless its LD is the launch \
           digest (relaunch measure) and its POLICY the launch policy. Needs --id-auth. Takes \
           precedence over an ID block the bundle carries (that one is then not given). \
           Default: the bundle's ID block, if any.",
};
/// `--id-auth`.
pub const ID_AUTH: Flag = Flag {
    long: "id-auth",
    short: None,
    value: Some("FILE"),
    help: "The raw 4096-byte ID_AUTH_INFO for --id-block (ID key and its signature of the ID \
           block; author key and its signature of the ID key, if any: AUTH_KEY_EN is set \
           when the AUTHOR_KEY field at 0x880 is not all zeros). Needs --id-block. Default: \
           the bundle's, with its ID block.",
};

/// `--id-block` and `--id-auth`, for the commands that launch (`run`, `trace`).
pub const ID_FLAGS: [Flag; 2] = [ID_BLOCK, ID_AUTH];

/// `KVM_SEV_SNP_ID_BLOCK_SIZE` (`arch/x86/include/uapi/asm/kvm.h`; SEV-SNP firmware ABI
/// ID_BLOCK).
pub const ID_BLOCK_SIZE: usize = 96;
/// `KVM_SEV_SNP_ID_AUTH_SIZE` (same header; ID_AUTH_INFO).
pub const ID_AUTH_SIZE: usize = 4096;
/// ID_AUTH_INFO's AUTHOR_KEY field: offset and size (SEV-SNP firmware ABI, ID_AUTH_INFO;
/// `../shared/spec/igvm-snp.md` §3.2).
const AUTHOR_KEY: std::ops::Range<usize> = 0x880..0x880 + 0x404;

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
    /// `--id-block`.
    pub id_block: Option<PathBuf>,
    /// `--id-auth`.
    pub id_auth: Option<PathBuf>,
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
            "id-block" => self.id_block = Some(it.path(f)?),
            "id-auth" => self.id_auth = Some(it.path(f)?),
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
        if self.id_block.is_some() != self.id_auth.is_some() {
            return Err(ArgError::Other(
                "--id-block and --id-auth go together (SNP_LAUNCH_FINISH takes both)".into(),
            ));
        }
        Ok(())
    }

    /// [`LaunchFlags::id_block_files`] for a launch on `platform`: ID blocks are SNP's only.
    ///
    /// # Errors
    /// One line: the platform is not SNP, or a file is wrong.
    pub fn id_block_for(&self, platform: Platform) -> Result<Option<SnpIdBlock>, String> {
        if self.id_block.is_some() && platform != Platform::Snp {
            return Err(format!(
                "--id-block/--id-auth are given at SNP_LAUNCH_FINISH; {platform} has no ID block"
            ));
        }
        self.id_block_files()
    }

    /// The ID block of `--id-block`/`--id-auth`, if given: the files read (bounded) and
    /// their sizes checked; `auth_key_en` when the ID_AUTH_INFO's AUTHOR_KEY field is not
    /// all zeros (the firmware verifies the ID key's signature with it exactly then).
    ///
    /// # Errors
    /// One line naming the file and what is wrong with it.
    pub fn id_block_files(&self) -> Result<Option<SnpIdBlock>, String> {
        let (Some(block), Some(auth)) = (&self.id_block, &self.id_auth) else {
            return Ok(None);
        };
        let id_block: [u8; ID_BLOCK_SIZE] =
            read_exact_file(block, "--id-block", "an SNP ID block (ID_BLOCK)")?;
        let id_auth: [u8; ID_AUTH_SIZE] = read_exact_file(
            auth,
            "--id-auth",
            "an SNP ID authentication structure (ID_AUTH_INFO)",
        )?;
        let author_key_enabled = id_auth
            .get(AUTHOR_KEY)
            .is_some_and(|k| k.iter().any(|&b| b != 0));
        Ok(Some(SnpIdBlock {
            id_block,
            id_auth,
            author_key_enabled,
        }))
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

/// Reads `path` (flag `flag`), which must hold exactly `N` bytes (`what` names the
/// structure); reads at most `N + 1` bytes, whatever the file's size.
fn read_exact_file<const N: usize>(
    path: &std::path::Path,
    flag: &str,
    what: &str,
) -> Result<[u8; N], String> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| format!("{flag} {}: {e}", path.display()))?;
    let mut buf = Vec::with_capacity(N + 1);
    f.take(N as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|e| format!("{flag} {}: {e}", path.display()))?;
    <[u8; N]>::try_from(buf.as_slice()).map_err(|_| {
        let size = if buf.len() > N {
            format!("more than {N} bytes")
        } else {
            format!("{} bytes", buf.len())
        };
        format!(
            "{flag} {}: {size}; {what} is exactly {N} bytes (SEV-SNP firmware ABI)",
            path.display()
        )
    })
}
