//! FwModel tests: agreement with `measure::expected` on real plans, and refusal of
//! misordered or invalid streams.

use alloc::string::ToString;
use alloc::vec::Vec;

use igvm_defs::{IgvmPageDataFlags, IgvmPageDataType, IgvmPlatformType};

use super::*;
use crate::arch::vmsa::{
    kvm_measured_vmsa, reset_regs, tdx_vcpu_regs, BSP_RESET_ADDR, KVM_VMSA_GPA,
};
use crate::launch::{LaunchConfig, VpSource};
use crate::measure::expected_with;
use crate::plan::{LaunchPlan, PlanParts};
use crate::writer::IgvmBuilder;

// Generated OVMF-like images (crate::testutil).
const OVMF_X64: &[u8] = &crate::testutil::OVMF_X64_LIKE;
const OVMF_AMDSEV: &[u8] = &crate::testutil::OVMF_AMDSEV_LIKE;
const SIG: u32 = 0x0080_0F12;

fn cfg(platform: Platform, vcpus: u32) -> LaunchConfig {
    LaunchConfig {
        platform,
        vcpus,
        mem_bytes: 64 << 20,
        vcpu_sig: SIG,
        guest_features: 0,
        policy: None,
        host_data: [0; 32],
        kernel_hashes: None,
    }
}

fn opts() -> MeasureOptions {
    MeasureOptions::default()
}

/// Both paths agree, and the model ends finished with that measurement.
fn agree(stream: OpStream<'_>) -> Measurement {
    let want = crate::measure::expected(stream).unwrap();
    let mut m = FwModel::new(opts());
    for i in 0..stream.ops().len() {
        m.apply(stream, i).unwrap();
    }
    assert_eq!(m.state(), FwState::Finished);
    assert_eq!(m.measurement(), Some(want));
    assert_eq!(FwModel::run(stream, opts()), Ok(want));
    for init2 in [false, true] {
        let o = MeasureOptions {
            sev_es_init2: init2,
        };
        assert_eq!(
            FwModel::run(stream, o).ok(),
            expected_with(stream, None, o).ok()
        );
    }
    want
}

/// A hand-made op sequence (checked only when it is made a plan).
type Raw = PlanParts<&'static [u8]>;

fn build(p: &Raw) -> LaunchPlan<&'static [u8]> {
    LaunchPlan::from_parts(p.clone()).unwrap()
}

/// [`agree`] on a hand-made plan.
fn agree_raw(p: &Raw) -> Measurement {
    agree(build(p).stream())
}

fn igvm_file() -> Vec<u8> {
    let mut b = IgvmBuilder::new();
    let snp = b.platform(IgvmPlatformType::SEV_SNP, 0).unwrap();
    let native = b.platform(IgvmPlatformType::NATIVE, 0).unwrap();
    b.guest_policy(0x30000, snp);
    let f = IgvmPageDataFlags::new();
    let code: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
    for (i, m) in [snp | native, snp, native].into_iter().enumerate() {
        b.page_data(
            0x10_0000 + i as u64 * 4096,
            m,
            f,
            IgvmPageDataType::NORMAL,
            &code,
        )
        .unwrap();
    }
    b.page_data(0x20_0000, snp, f, IgvmPageDataType::NORMAL, &[])
        .unwrap();
    b.page_data(
        0x20_1000,
        snp,
        f.with_unmeasured(true),
        IgvmPageDataType::NORMAL,
        &[],
    )
    .unwrap();
    b.page_data(0x20_2000, snp, f, IgvmPageDataType::SECRETS, &[])
        .unwrap();
    b.page_data(0x20_3000, snp, f, IgvmPageDataType::CPUID_DATA, &[])
        .unwrap();
    let vmsa = kvm_measured_vmsa(&reset_regs(SIG, 0xFFFF_FFF0), 0, Platform::Snp, true);
    let mut ctx = vmsa;
    ctx[0xCB] = 0; // cpl: not a field a VP context may carry (0 here anyway)
    b.vp_context(KVM_VMSA_GPA, snp, 0, &ctx).unwrap();
    let native_ctx = igvm_defs::IgvmNativeVpContextX64 {
        rsp: 0x8000,
        rip: 0x10_0000,
        rflags: 2,
        code_selector: 8,
        code_attributes: 0xC09B,
        code_limit: u32::MAX,
        data_selector: 0x10,
        data_attributes: 0xC093,
        data_limit: u32::MAX,
        cr0: 0x11,
        ..zerocopy::FromZeros::new_zeroed()
    };
    b.native_vp_context(native, 0, &native_ctx).unwrap();
    b.finish().unwrap()
}

#[test]
fn agrees_with_expected_on_firmware_plans() {
    for (img, platform, vcpus) in [
        (OVMF_X64, Platform::Snp, 1),
        (OVMF_AMDSEV, Platform::Snp, 4),
        (OVMF_X64, Platform::SevEs, 2),
        (OVMF_AMDSEV, Platform::Sev, 1),
        (OVMF_X64, Platform::Native, 1),
    ] {
        let plan = crate::plan::plan(img, &cfg(platform, vcpus)).unwrap();
        agree(plan.stream());
    }
    // And a sev-snp-measure 0.0.13 vector through the real planner: `--mode snp --vcpus 1
    // --vcpu-type EPYC-v4 --guest-features 0x1 --ovmf` on the OvmfX64-like image
    // (tests/vectors/README.md; the published da0296de… on sev-snp-measure's own fixture is
    // checked by tests/tests/golden_ssm.rs `published_vectors`).
    let plan = crate::plan::plan(
        OVMF_X64,
        &LaunchConfig {
            guest_features: 0x1,
            ..cfg(Platform::Snp, 1)
        },
    )
    .unwrap();
    assert_eq!(
        agree(plan.stream()).to_string(),
        "d67e050d81fff91b7fb5d47d1c01a8ad1ecf911892ca4ac39254b9122e778f6e066d4bcaada19a46c5c62b51f5f3d093"
    );
}

#[test]
fn agrees_with_expected_on_igvm_plans() {
    let file = igvm_file();
    for (platform, vcpus) in [
        (Platform::Snp, 1),
        (Platform::Snp, 3),
        (Platform::Native, 1),
    ] {
        let plan = crate::plan::plan(&file, &cfg(platform, vcpus)).unwrap();
        let m = agree(plan.stream());
        let mut fw = FwModel::new(opts());
        for i in 0..plan.ops().len() {
            fw.apply(plan.stream(), i).unwrap();
        }
        if platform == Platform::Snp {
            assert!(matches!(m, Measurement::Snp(_)));
            assert!(fw.is_private(0x20_2000));
            assert!(fw.vp_regs(0).is_some());
        }
    }
}

/// A hand-made SNP plan: one normal page, one vCPU.
fn small(platform: Platform) -> Raw {
    let mut p = PlanParts::new(&[][..], cfg(platform, 1));
    let policy = match platform {
        Platform::Snp => 0x30000,
        Platform::SevEs => 0x5,
        Platform::Sev => 0x1,
        _ => 0,
    };
    p.ops.push(LaunchOp::CreateVm {
        platform,
        policy,
        vmsa_features: 0,
        vcpus: 1,
    });
    p.ops.push(LaunchOp::MapRam {
        gpa: 0,
        size: 1 << 20,
    });
    let regs = if platform == Platform::Tdx {
        tdx_vcpu_regs(0, 0, false, SIG)
    } else {
        reset_regs(SIG, BSP_RESET_ADDR)
    };
    p.vp_contexts.push(regs);
    p.ops.push(LaunchOp::SetVpContext {
        vp: 0,
        source: VpSource::Reset,
        ctx: 0,
    });
    p.ops.push(LaunchOp::ImportPage {
        gpa: 0x1000,
        kind: PageKind::Normal,
        data: PageData::Zeros,
    });
    p.ops.push(LaunchOp::Finalize {
        id_block: false,
        host_data: [0; 32],
    });
    p
}

/// What the model refuses in a hand-made op sequence.
fn err(p: &Raw) -> FwError {
    let input = |op: &LaunchOp| {
        let mut i = OpInput::default();
        match *op {
            LaunchOp::SetVpContext { ctx, .. } => i.regs = p.vp_contexts.get(ctx as usize),
            LaunchOp::Finalize { id_block: true, .. } => i.id_block = p.id_block.as_ref(),
            _ => {}
        }
        i
    };
    FwModel::run_ops(&p.ops, input, opts()).unwrap_err()
}

#[test]
fn every_platform_small_plan() {
    for p in Platform::ALL {
        agree_raw(&small(p));
    }
}

#[test]
fn rejects_misordered_streams() {
    let good = small(Platform::Snp);
    // Update before start.
    let mut p = good.clone();
    p.ops.swap(0, 3);
    assert_eq!(
        err(&p),
        FwError {
            op: 0,
            kind: FwErrorKind::NotStarted
        }
    );
    // Op after finish.
    let mut p = good.clone();
    p.ops.push(LaunchOp::ImportPage {
        gpa: 0x2000,
        kind: PageKind::Normal,
        data: PageData::Zeros,
    });
    assert_eq!(
        err(&p),
        FwError {
            op: 5,
            kind: FwErrorKind::AfterFinish
        }
    );
    // Double finish.
    let mut p = good.clone();
    p.ops.push(p.ops[4]);
    assert_eq!(
        err(&p),
        FwError {
            op: 5,
            kind: FwErrorKind::DoubleFinish
        }
    );
    // Double start.
    let mut p = good.clone();
    p.ops.insert(1, p.ops[0]);
    assert_eq!(
        err(&p),
        FwError {
            op: 1,
            kind: FwErrorKind::AlreadyStarted
        }
    );
    // Never finished.
    let mut p = good.clone();
    p.ops.pop();
    assert_eq!(
        err(&p),
        FwError {
            op: 4,
            kind: FwErrorKind::NotFinished
        }
    );
    // Empty stream.
    let p = PlanParts::new(&[][..], cfg(Platform::Snp, 1));
    assert_eq!(
        err(&p),
        FwError {
            op: 0,
            kind: FwErrorKind::NotStarted
        }
    );
    // Import outside RAM.
    let mut p = good.clone();
    p.ops[1] = LaunchOp::MapRam {
        gpa: 0x10_0000,
        size: 4096,
    };
    assert_eq!(
        err(&p),
        FwError {
            op: 3,
            kind: FwErrorKind::NotMapped { gpa: 0x1000 }
        }
    );
}

#[test]
fn rejects_bad_pages_and_ram() {
    let good = small(Platform::Snp);
    let page = |gpa, kind| LaunchOp::ImportPage {
        gpa,
        kind,
        data: PageData::Zeros,
    };
    // The same page twice (already private in the RMP).
    let mut p = good.clone();
    p.ops.insert(4, page(0x1000, PageKind::Zero));
    assert_eq!(
        err(&p),
        FwError {
            op: 4,
            kind: FwErrorKind::AlreadyPrivate { gpa: 0x1000 }
        }
    );
    // Shared over private.
    let mut p = good.clone();
    p.ops.insert(4, page(0x1000, PageKind::Shared));
    assert_eq!(err(&p).kind, FwErrorKind::SharedOverPrivate { gpa: 0x1000 });
    // Misaligned.
    let mut p = good.clone();
    p.ops[3] = page(0x1800, PageKind::Normal);
    assert_eq!(err(&p).kind, FwErrorKind::Misaligned { gpa: 0x1800 });
    // RAM: misaligned, empty, wrapping, overlapping.
    for (gpa, size, kind) in [
        (0x10, 4096, FwErrorKind::Misaligned { gpa: 0x10 }),
        (0, 10, FwErrorKind::Misaligned { gpa: 10 }),
        (
            0x20_0000,
            0,
            FwErrorKind::BadRange {
                gpa: 0x20_0000,
                size: 0,
            },
        ),
        (
            u64::MAX - 4095,
            8192,
            FwErrorKind::BadRange {
                gpa: u64::MAX - 4095,
                size: 8192,
            },
        ),
        (
            0x8_0000,
            1 << 20,
            FwErrorKind::BadRange {
                gpa: 0x8_0000,
                size: 1 << 20,
            },
        ),
    ] {
        let mut p = good.clone();
        p.ops.insert(2, LaunchOp::MapRam { gpa, size });
        assert_eq!(err(&p), FwError { op: 2, kind }, "{gpa:#x}+{size:#x}");
    }
    // Secrets page on SEV-ES.
    let mut p = small(Platform::SevEs);
    p.ops.insert(4, page(0x2000, PageKind::Secrets));
    assert!(matches!(
        err(&p).kind,
        FwErrorKind::Measure(MeasureError::KindNotOnPlatform { .. })
    ));
    // Native pages may be loaded twice (plain memory).
    let mut p = small(Platform::Native);
    p.ops.insert(4, page(0x1000, PageKind::Normal));
    agree_raw(&p);
}

#[test]
fn rejects_bad_policies_and_vcpus() {
    for (platform, policy) in [
        (Platform::Snp, 0x10000u64), // no MBO
        (Platform::Snp, 0x20000),    // no SMT
        (Platform::Snp, 0x30000 | 1 << 40),
        (Platform::SevEs, 0x1), // ES missing
        (Platform::Sev, 0x5),   // ES on plain SEV
        (Platform::Sev, 1 << 33),
    ] {
        let mut p = small(platform);
        if let LaunchOp::CreateVm { policy: pol, .. } = &mut p.ops[0] {
            *pol = policy;
        }
        assert!(
            matches!(
                err(&p),
                FwError {
                    op: 0,
                    kind: FwErrorKind::Policy { .. }
                }
            ),
            "{platform} {policy:#x}"
        );
    }
    let mut p = small(Platform::Snp);
    if let LaunchOp::CreateVm { vcpus, .. } = &mut p.ops[0] {
        *vcpus = 0;
    }
    assert_eq!(err(&p).kind, FwErrorKind::NoVcpus);
    if let LaunchOp::CreateVm { vcpus, .. } = &mut p.ops[0] {
        *vcpus = u32::MAX;
    }
    assert_eq!(err(&p).kind, FwErrorKind::NoVcpus);
    // A second vCPU without state.
    let mut p = small(Platform::SevEs);
    if let LaunchOp::CreateVm { vcpus, .. } = &mut p.ops[0] {
        *vcpus = 2;
    }
    assert_eq!(
        err(&p),
        FwError {
            op: 4,
            kind: FwErrorKind::MissingVpContext { vp: 1 }
        }
    );
    // A vCPU that does not exist.
    let mut p = small(Platform::Snp);
    p.ops[2] = LaunchOp::SetVpContext {
        vp: 1,
        source: VpSource::Reset,
        ctx: 0,
    };
    assert_eq!(err(&p).kind, FwErrorKind::VpOutOfRange { vp: 1, vcpus: 1 });
    // Registers that do not exist.
    let mut p = small(Platform::Snp);
    p.ops[2] = LaunchOp::SetVpContext {
        vp: 0,
        source: VpSource::Reset,
        ctx: 5,
    };
    assert_eq!(err(&p).kind, FwErrorKind::MissingRegs { vp: 0 });
}

#[test]
fn tdx_needs_an_initialised_vcpu_before_memory() {
    let mut p = small(Platform::Tdx);
    p.ops.swap(2, 3);
    assert_eq!(
        err(&p),
        FwError {
            op: 2,
            kind: FwErrorKind::VcpuNotInitialized
        }
    );
    // Shared pages never reach the TDX module, so they do not need it.
    let mut p = small(Platform::Tdx);
    p.ops.insert(
        2,
        LaunchOp::ImportPage {
            gpa: 0x5000,
            kind: PageKind::Shared,
            data: PageData::Zeros,
        },
    );
    agree_raw(&p);
    // A page added twice.
    let mut p = small(Platform::Tdx);
    p.ops.insert(4, p.ops[3]);
    assert_eq!(err(&p).kind, FwErrorKind::AlreadyPrivate { gpa: 0x1000 });
}

#[test]
fn snp_id_block_is_checked() {
    let base = small(Platform::Snp);
    let Measurement::Snp(ld) = crate::measure::expected(build(&base).stream()).unwrap() else {
        panic!("not SNP");
    };
    let mut block = SnpIdBlock {
        id_block: [0; 96],
        id_auth: [0; 4096],
        author_key_enabled: false,
    };
    block.id_block[..48].copy_from_slice(&ld);
    block.id_block[0x50] = 1;
    block.id_block[0x58..0x60].copy_from_slice(&0x30000u64.to_le_bytes());
    let mut p = base.clone();
    p.ops[4] = LaunchOp::Finalize {
        id_block: true,
        host_data: [0; 32],
    };
    // Finalize names an ID block the plan does not carry.
    assert_eq!(err(&p).kind, FwErrorKind::IdBlockMissing);
    p.id_block = Some(block);
    agree_raw(&p);
    // Wrong digest.
    let mut q = p.clone();
    if let Some(b) = q.id_block.as_mut() {
        b.id_block[0] ^= 1;
    }
    assert_eq!(
        err(&q),
        FwError {
            op: 4,
            kind: FwErrorKind::BadMeasurement
        }
    );
    // Wrong policy.
    let mut q = p.clone();
    if let Some(b) = q.id_block.as_mut() {
        b.id_block[0x58] = 1;
    }
    assert_eq!(
        err(&q).kind,
        FwErrorKind::IdBlockPolicy {
            id_block: 0x30001,
            launch: 0x30000
        }
    );
    // Only SNP has ID blocks.
    let mut q = small(Platform::SevEs);
    q.ops[4] = LaunchOp::Finalize {
        id_block: true,
        host_data: [0; 32],
    };
    q.id_block = Some(block);
    assert_eq!(err(&q).kind, FwErrorKind::IdBlockOnPlatform);
}

#[test]
fn refused_ops_change_nothing() {
    let plan = small(Platform::Snp);
    let mut m = FwModel::new(opts());
    let input = |regs| OpInput {
        page: &[],
        regs,
        id_block: None,
    };
    m.step(&plan.ops[0], input(None)).unwrap();
    m.step(&plan.ops[1], input(None)).unwrap();
    // Registers missing: refused, same index next time.
    assert_eq!(m.step(&plan.ops[2], input(None)).unwrap_err().op, 2);
    m.step(&plan.ops[2], input(plan.vp_contexts.first()))
        .unwrap();
    m.step(&plan.ops[3], input(None)).unwrap();
    let bad = LaunchOp::ImportPage {
        gpa: 0x1000,
        kind: PageKind::Zero,
        data: PageData::Zeros,
    };
    assert_eq!(m.step(&bad, input(None)).unwrap_err().op, 4);
    assert_eq!(m.state(), FwState::Launching);
    m.step(&plan.ops[4], input(None)).unwrap();
    assert_eq!(
        m.measurement(),
        crate::measure::expected(build(&plan).stream()).ok()
    );
    let e = m.step(&plan.ops[4], input(None)).unwrap_err();
    assert_eq!(e.kind, FwErrorKind::DoubleFinish);
    assert!(!e.to_string().is_empty());
}
