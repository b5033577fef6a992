//! `pack --firmware OVMF.fd`: an OVMF/TDVF flash image turned into an IGVM bundle, the job
//! of `igvm-wrap` (crate `virtfw-igvm-tools`).
//!
//! Nothing is parsed twice: the core's firmware planner ([`plan_firmware`], which reads the
//! GUID table, the SEV metadata and the TDVF metadata) makes the op stream QEMU's classic
//! firmware launch issues for each platform, and each op becomes one IGVM directive of that
//! platform's view, in the same order:
//!
//! | classic op (`plan::ovmf`) | IGVM directive |
//! |---|---|
//! | `ImportPage` Normal (image page, SNP kernel-hashes page, TDVF BFV/CFV) | PAGE_DATA NORMAL with the page's bytes (file_offset 0 when they are all zero) |
//! | `ImportPage` Unmeasured (TD HOB, TempMem, TDVF sections without MR_EXTEND) | PAGE_DATA NORMAL, flag `unmeasured` |
//! | `ImportPage` Secrets / Cpuid (SEV metadata) | PAGE_DATA SECRETS / CPUID_DATA, no data |
//! | `ImportPage` **Zero** (SNP_SEC_MEM, SVSM_CAA, KERNEL_HASHES without a kernel) | PAGE_DATA NORMAL, no data: **IGVM has no SNP ZERO page type** |
//! | `SetVpContext` (SNP) | VP_CONTEXT at 0xFFFFFFFFF000: the VMSA KVM builds from those registers ([`kvm_measured_vmsa`]) |
//! | `SetVpContext` (TDX, native) | nothing: the TDX module's initial state / the reset state |
//! | `CreateVm` policy (SNP) | GUEST_POLICY |
//!
//! So the packed SNP view measures what the classic launch measures, except that every
//! classic ZERO page is measured as a NORMAL page of zeros (page type 1 and the SHA-384 of a
//! zero page, instead of page type 3 and zero contents): `docs/measurement.md` ("OVMF packed
//! as IGVM") shows both digests. The VMSAs are written last and in vCPU order, as KVM measures
//! them at `SNP_LAUNCH_FINISH`, so the igvm crate's measurement (which measures VMSAs where
//! they stand) agrees. The TDX view adds and extends the same pages in the same order as the
//! classic launch, so its MRTD equals the classic one.
//!
//! What a packed file fixes at pack time that a classic launch decides at launch time:
//! - the number of SNP VMSAs ([`FirmwareOptions::vcpus`]): the view names VPs
//!   `0..vcpus` (the APs at the SEV-ES reset block's address, as QEMU sets them for OVMF);
//!   a launch with more vCPUs gives the extra ones the reset state at 0xFFFFFFF0, one with
//!   fewer is refused (a VP_CONTEXT for a vCPU that does not exist);
//! - the TD HOB ([`FirmwareOptions::mem_bytes`]): QEMU writes it from the launch's RAM
//!   layout; in the IGVM file it is unmeasured page data for that RAM size. The TD vCPUs get
//!   RCX = R8 = 0 instead of the HOB's address (IGVM has no way to pass it), which TDVF needs:
//!   the TDX view measures right but does not boot TDVF as it is (not measured either way);
//! - the kernel-hashes table ([`FirmwareOptions::kernel_hashes`], SNP view only).

use relaunch_core::arch::vmsa::{kvm_measured_vmsa, KVM_VMSA_GPA};
use relaunch_core::launch::regs::VpRegs;
use relaunch_core::measure::{expected, MeasureError, Measurement};
use relaunch_core::ovmf::Firmware;
use relaunch_core::plan::ovmf::{plan_firmware, FirmwarePlanError};
use relaunch_core::plan::{
    InvalidPlan, KernelHashes, LaunchConfig, LaunchOp, LaunchPlan, PageData, PageKind, PlanParts,
    Platform,
};
use relaunch_core::writer::{IgvmBuilder, WriteError};

use igvm_defs::{IgvmPageDataFlags, IgvmPageDataType};

/// What to pack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FirmwareOptions {
    /// The platform views to write, each at most once: [`Platform::Snp`], [`Platform::Tdx`],
    /// [`Platform::Native`]. Empty = every view the image supports ([`supported_views`]).
    pub views: Vec<Platform>,
    /// Number of vCPUs the SNP view writes VMSAs for, and the launch the predicted
    /// measurements are for.
    pub vcpus: u32,
    /// Guest RAM of the launch the predicted measurements are for (and of the TD HOB).
    pub mem_bytes: u64,
    /// CPUID(1).EAX of the vCPU model: RDX of the reset-state VMSAs.
    pub vcpu_sig: u32,
    /// SNP VMSA SEV_FEATURES besides SNP_ACTIVE (`KVM_SEV_INIT2` `vmsa_features`).
    pub guest_features: u64,
    /// SNP guest policy (default QEMU's 0x30000).
    pub snp_policy: Option<u64>,
    /// The SEV kernel-hashes table for `--kernel/--initrd/--append` (SNP view; the image
    /// needs OVMF's SEV hash table and an SNP_KERNEL_HASHES section).
    pub kernel_hashes: Option<KernelHashes>,
}

/// The vCPU signature SNP VMSAs are packed with unless one is given: EPYC-v4 (family 23,
/// model 1, stepping 2), sev-snp-measure's default (checked against the core's CPU table in
/// the tests).
pub const DEFAULT_VCPU_SIG: u32 = 0x0080_0F12;

impl Default for FirmwareOptions {
    fn default() -> Self {
        FirmwareOptions {
            views: Vec::new(),
            vcpus: 1,
            mem_bytes: 256 << 20,
            vcpu_sig: DEFAULT_VCPU_SIG,
            guest_features: 0,
            snp_policy: None,
            kernel_hashes: None,
        }
    }
}

/// One platform view of the packed file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackedView {
    /// The platform.
    pub platform: Platform,
    /// The view's compatibility-mask bit.
    pub mask: u32,
    /// What a launch of the packed file measures (for [`FirmwareOptions::vcpus`] and
    /// [`FirmwareOptions::mem_bytes`]); [`Measurement::None`] for native.
    pub measurement: Measurement,
    /// What the classic launch of the image (`relaunch measure OVMF.fd`) measures for the
    /// same launch.
    pub classic: Measurement,
    /// Classic ZERO pages written as NORMAL pages of zeros (SNP; 0 elsewhere). The two
    /// measurements differ exactly when this is non-zero.
    pub zero_pages: u64,
}

/// A packed firmware image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackedFirmware {
    /// The IGVM file.
    pub igvm: Vec<u8>,
    /// Its views, in file order.
    pub views: Vec<PackedView>,
}

/// Why an image cannot be packed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PackError {
    /// The image is not a firmware image (its own parse error).
    #[error("not an OVMF/TDVF image: {0}")]
    Parse(relaunch_core::ovmf::OvmfError),
    /// A view IGVM packing does not support.
    #[error(
        "--firmware packs snp, tdx and native views; {0} is not one (use `relaunch run` on the \
         .fd for classic sev / sev-es launches)"
    )]
    UnsupportedView(Platform),
    /// A view asked for twice.
    #[error("the {0} view is asked for twice")]
    DuplicateView(Platform),
    /// The image cannot be launched on a platform (missing metadata, bad config, ...).
    #[error("{platform} view: {why}")]
    Plan {
        /// The view.
        platform: Platform,
        /// Why.
        why: FirmwarePlanError,
    },
    /// A classic op that has no IGVM form (a planner change this packer does not know).
    #[error("{platform} view: op {op} ({what}) has no IGVM form")]
    NoIgvmForm {
        /// The view.
        platform: Platform,
        /// Op index in the classic plan.
        op: usize,
        /// What it is.
        what: &'static str,
    },
    /// The predicted plan breaks the plan invariants (a packer bug).
    #[error("{platform} view: internal error, please report: {why}")]
    Invalid {
        /// The view.
        platform: Platform,
        /// Why.
        why: InvalidPlan,
    },
    /// The prediction failed.
    #[error("{platform} view: measurement: {why}")]
    Measure {
        /// The view.
        platform: Platform,
        /// Why.
        why: MeasureError,
    },
    /// The writer refused a directive.
    #[error("writing the IGVM file: {0}")]
    Write(WriteError),
}

/// The views an image supports: native always, SNP with SEV metadata and an SEV-ES reset
/// block, TDX with TDX metadata (in that order: SNP, TDX, native).
///
/// # Errors
/// [`PackError::Parse`] when the image does not parse.
pub fn supported_views(ovmf: &[u8]) -> Result<Vec<Platform>, PackError> {
    let fw = Firmware::parse(ovmf).map_err(PackError::Parse)?;
    let mut v = Vec::new();
    if matches!(fw.sev_metadata(), Ok(Some(_))) && matches!(fw.sev_es_reset_addr(), Ok(Some(_))) {
        v.push(Platform::Snp);
    }
    if matches!(fw.tdx_metadata(), Ok(Some(_))) {
        v.push(Platform::Tdx);
    }
    v.push(Platform::Native);
    Ok(v)
}

/// One directive of a view, before the header order (platforms, policies, directives) is
/// known.
enum Directive {
    Page {
        gpa: u64,
        flags: IgvmPageDataFlags,
        data_type: IgvmPageDataType,
        data: Vec<u8>,
    },
    Vmsa {
        vp: u16,
        page: Box<[u8; 4096]>,
    },
}

struct View {
    platform: Platform,
    policy: Option<u64>,
    directives: Vec<Directive>,
    measurement: Measurement,
    classic: Measurement,
    zero_pages: u64,
}

/// Packs `ovmf` into an IGVM file with the views `opts` asks for (see the module docs for
/// what each classic op becomes) and predicts each view's measurement.
///
/// # Errors
/// [`PackError`]: the image does not parse, lacks what a view needs, or the options do not
/// fit the image.
pub fn pack_firmware(ovmf: &[u8], opts: &FirmwareOptions) -> Result<PackedFirmware, PackError> {
    let views = if opts.views.is_empty() {
        supported_views(ovmf)?
    } else {
        opts.views.clone()
    };
    let mut seen = Vec::new();
    for &p in &views {
        if !matches!(p, Platform::Snp | Platform::Tdx | Platform::Native) {
            return Err(PackError::UnsupportedView(p));
        }
        if seen.contains(&p) {
            return Err(PackError::DuplicateView(p));
        }
        seen.push(p);
    }
    let built = views
        .iter()
        .map(|&p| build_view(ovmf, p, opts))
        .collect::<Result<Vec<_>, _>>()?;

    let mut b = IgvmBuilder::new();
    let mut masks = Vec::with_capacity(built.len());
    for v in &built {
        let boundary = 0;
        masks.push(
            b.platform(
                relaunch_core::plan::igvm::igvm_platform_type(v.platform),
                boundary,
            )
            .map_err(PackError::Write)?,
        );
    }
    for (v, &mask) in built.iter().zip(&masks) {
        if let Some(policy) = v.policy {
            b.guest_policy(policy, mask);
        }
    }
    for (v, &mask) in built.iter().zip(&masks) {
        for d in &v.directives {
            match d {
                Directive::Page {
                    gpa,
                    flags,
                    data_type,
                    data,
                } => b.page_data(*gpa, mask, *flags, *data_type, data),
                Directive::Vmsa { vp, page } => b.vp_context(KVM_VMSA_GPA, mask, *vp, &page[..]),
            }
            .map_err(PackError::Write)?;
        }
    }
    let igvm = b.finish().map_err(PackError::Write)?;
    let views = built
        .into_iter()
        .zip(masks)
        .map(|(v, mask)| PackedView {
            platform: v.platform,
            mask,
            measurement: v.measurement,
            classic: v.classic,
            zero_pages: v.zero_pages,
        })
        .collect();
    Ok(PackedFirmware { igvm, views })
}

/// The SEV kernel-hashes table entries QEMU fills for `-kernel/-initrd/-append`
/// (`target/i386/sev.c` `sev_add_kernel_loader_hashes`), from the bytes: SHA-256 of the
/// kernel, of the initrd (of nothing without one), of the command line with its NUL (of
/// `"\0"` without one). Same as `relaunch measure --kernel` (`cli::measure::kernel_hashes`).
pub fn kernel_hashes(kernel: &[u8], initrd: Option<&[u8]>, append: Option<&str>) -> KernelHashes {
    use sha2::{Digest, Sha256};
    let sha = |b: &[u8]| -> [u8; 32] { Sha256::digest(b).into() };
    crate::cli::measure::kernel_hashes_from(sha(kernel), initrd.map(sha), append)
}

/// The launch config of a view: the options, kernel hashes on SNP only.
pub fn view_config(platform: Platform, opts: &FirmwareOptions) -> LaunchConfig {
    LaunchConfig {
        platform,
        vcpus: opts.vcpus,
        mem_bytes: opts.mem_bytes,
        vcpu_sig: opts.vcpu_sig,
        guest_features: opts.guest_features,
        policy: if platform == Platform::Snp {
            opts.snp_policy
        } else {
            None
        },
        host_data: [0; 32],
        kernel_hashes: if platform == Platform::Snp {
            opts.kernel_hashes
        } else {
            None
        },
    }
}

fn build_view(ovmf: &[u8], platform: Platform, opts: &FirmwareOptions) -> Result<View, PackError> {
    let cfg = view_config(platform, opts);
    let plan = plan_firmware(ovmf, &cfg).map_err(|why| PackError::Plan { platform, why })?;
    let classic = expected(plan.stream()).map_err(|why| PackError::Measure { platform, why })?;
    let no_form = |op: usize, what: &'static str| PackError::NoIgvmForm { platform, op, what };

    let mut directives = Vec::new();
    let mut policy = None;
    let mut vmsa_features = 0;
    let mut zero_pages = 0u64;
    // The classic plan with every ZERO page turned into a NORMAL page of zeros: what a
    // launch of the packed file does, measured by the same fold as everything else.
    let mut packed_ops = Vec::with_capacity(plan.ops().len());
    for (i, op) in plan.ops().iter().enumerate() {
        let mut packed_op = *op;
        match *op {
            LaunchOp::CreateVm {
                policy: p,
                vmsa_features: f,
                ..
            } => {
                if platform == Platform::Snp {
                    policy = Some(p);
                }
                vmsa_features = f;
            }
            LaunchOp::MapRam { .. } | LaunchOp::Finalize { .. } => {}
            LaunchOp::ImportPage { gpa, kind, data } => {
                let bytes = plan.page_bytes(&data);
                let zero = bytes.iter().all(|&b| b == 0);
                let flags = IgvmPageDataFlags::new();
                let (flags, data_type, with_data) = match kind {
                    PageKind::Normal => (flags, IgvmPageDataType::NORMAL, true),
                    PageKind::Zero => {
                        if !zero || !matches!(data, PageData::Zeros) {
                            return Err(no_form(i, "a ZERO page with contents"));
                        }
                        zero_pages += 1;
                        packed_op = LaunchOp::ImportPage {
                            gpa,
                            kind: PageKind::Normal,
                            data: PageData::Zeros,
                        };
                        (flags, IgvmPageDataType::NORMAL, false)
                    }
                    PageKind::Unmeasured => {
                        (flags.with_unmeasured(true), IgvmPageDataType::NORMAL, true)
                    }
                    // The firmware fills the secrets page; QEMU fills the CPUID page from
                    // vCPU 0's CPUID and discards what the file holds (neither is measured
                    // with contents).
                    PageKind::Secrets => (flags, IgvmPageDataType::SECRETS, false),
                    PageKind::Cpuid => (flags, IgvmPageDataType::CPUID_DATA, false),
                    PageKind::Shared => return Err(no_form(i, "a shared page")),
                };
                if matches!(data, PageData::GeneratedPart { .. }) {
                    return Err(no_form(i, "a partial page"));
                }
                let data = if with_data && !zero {
                    bytes.to_vec()
                } else {
                    Vec::new()
                };
                directives.push(Directive::Page {
                    gpa,
                    flags,
                    data_type,
                    data,
                });
            }
            LaunchOp::SetVpContext { vp, ctx, .. } => {
                if platform == Platform::Snp {
                    let regs: &VpRegs = plan
                        .vp_context(ctx)
                        .ok_or_else(|| no_form(i, "a VP context the plan lacks"))?;
                    let vp = u16::try_from(vp).map_err(|_| no_form(i, "a vCPU index > 65535"))?;
                    let page = kvm_measured_vmsa(regs, vmsa_features, Platform::Snp, true);
                    directives.push(Directive::Vmsa {
                        vp,
                        page: Box::new(page),
                    });
                }
            }
        }
        packed_ops.push(packed_op);
    }
    let measurement = if zero_pages == 0 {
        classic
    } else {
        let mut parts: PlanParts<&[u8]> = plan.into_parts();
        parts.ops = packed_ops;
        let predicted =
            LaunchPlan::from_parts(parts).map_err(|why| PackError::Invalid { platform, why })?;
        expected(predicted.stream()).map_err(|why| PackError::Measure { platform, why })?
    };
    Ok(View {
        platform,
        policy,
        directives,
        measurement,
        classic,
        zero_pages,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_vcpu_sig_is_epyc_v4() {
        assert_eq!(
            relaunch_core::arch::cpu::vcpu_sig_by_name("EPYC-v4"),
            Some(DEFAULT_VCPU_SIG)
        );
    }
    use relaunch_core::plan::plan;

    fn image() -> Vec<u8> {
        relaunch_core::testutil::ovmf_like_image(relaunch_core::testutil::OvmfFlavor::AmdSev)
            .to_vec()
    }

    fn measure(file: &[u8], platform: Platform, opts: &FirmwareOptions) -> Measurement {
        let p = plan(file, &view_config(platform, opts)).unwrap();
        expected(p.stream()).unwrap()
    }

    #[test]
    fn packed_views_measure_what_pack_predicts() {
        let img = image();
        for vcpus in [1, 3] {
            let opts = FirmwareOptions {
                vcpus,
                ..FirmwareOptions::default()
            };
            let packed = pack_firmware(&img, &opts).unwrap();
            assert_eq!(
                relaunch_core::ovmf::detect(&packed.igvm),
                relaunch_core::ovmf::InputKind::Igvm
            );
            for v in &packed.views {
                assert_eq!(
                    measure(&packed.igvm, v.platform, &opts),
                    v.measurement,
                    "{v:?}"
                );
                if v.platform == Platform::Snp {
                    assert!(v.zero_pages > 0);
                    assert_ne!(v.measurement, v.classic);
                } else {
                    assert_eq!(v.measurement, v.classic);
                }
            }
        }
    }

    #[test]
    fn mutated_images_give_errors_not_panics() {
        // Every byte of the GUID table region and the metadata it points to, flipped in turn:
        // each result is a packed file or an error.
        let img = image();
        let mut packed = 0;
        for at in img.len().saturating_sub(256)..img.len() {
            for bit in [0x01u8, 0x80] {
                let mut m = img.clone();
                m[at] ^= bit;
                if let Ok(p) = pack_firmware(&m, &FirmwareOptions::default()) {
                    assert!(!p.igvm.is_empty());
                    packed += 1;
                }
            }
        }
        assert!(packed > 0);
    }

    #[test]
    fn refuses_what_it_cannot_pack() {
        let img = image();
        let with = |views: Vec<Platform>| FirmwareOptions {
            views,
            ..FirmwareOptions::default()
        };
        assert!(matches!(
            pack_firmware(&img, &with(vec![Platform::SevEs])),
            Err(PackError::UnsupportedView(Platform::SevEs))
        ));
        assert!(matches!(
            pack_firmware(&img, &with(vec![Platform::Snp, Platform::Snp])),
            Err(PackError::DuplicateView(Platform::Snp))
        ));
        assert!(matches!(
            pack_firmware(&[0u8; 4096], &FirmwareOptions::default()),
            Err(PackError::Parse(_))
        ));
        let zero_vcpus = FirmwareOptions {
            vcpus: 0,
            ..with(vec![Platform::Snp])
        };
        assert!(matches!(
            pack_firmware(&img, &zero_vcpus),
            Err(PackError::Plan { .. })
        ));
    }
}
