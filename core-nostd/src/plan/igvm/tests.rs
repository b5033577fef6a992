//! Planner unit tests over files written with our `IgvmBuilder`.
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::arithmetic_side_effects
)]

use alloc::vec::Vec;

use igvm_defs::{IgvmPageDataFlags, IgvmPageDataType, IgvmPlatformType, IGVM_VHS_SNP_ID_BLOCK};
use zerocopy::FromZeros;

use super::*;
use crate::arch::vmsa::kvm_measured_vmsa;
use crate::plan::{in_ram, KernelHashes, HIGH_RAM_BASE, LOW_RAM_END};
use crate::writer::IgvmBuilder;

const SIG: u32 = 0x800F12;

fn cfg(platform: Platform, vcpus: u32) -> LaunchConfig {
    LaunchConfig {
        platform,
        vcpus,
        mem_bytes: 64 << 20,
        vcpu_sig: SIG,
        guest_features: 0,
        policy: None,
        host_data: [7; 32],
        kernel_hashes: None::<KernelHashes>,
    }
}

fn flags(unmeasured: bool, shared: bool, big: bool) -> IgvmPageDataFlags {
    IgvmPageDataFlags::new()
        .with_unmeasured(unmeasured)
        .with_shared(shared)
        .with_is_2mb_page(big)
}

fn bsp_vmsa(features: u64) -> [u8; 4096] {
    kvm_measured_vmsa(
        &reset_regs(SIG, BSP_RESET_ADDR),
        features & !1,
        Platform::Snp,
        true,
    )
}

/// The spec §5 vector file (`../shared/spec/igvm-snp.md`), with an `n`-page parameter area.
fn spec_file(n: u64) -> Vec<u8> {
    let mut b = IgvmBuilder::new();
    let m = b.platform(IgvmPlatformType::SEV_SNP, 0).unwrap();
    b.guest_policy(0x30000, m);
    b.parameter_area(0, n * 4096, &[]).unwrap();
    b.vp_count(0, 0);
    b.parameter_insert(0x10000, m, 0);
    let data: Vec<u8> = (0..4096u32).map(|i| (i & 0xFF) as u8).collect();
    let f0 = flags(false, false, false);
    b.page_data(0, m, f0, IgvmPageDataType::NORMAL, &data)
        .unwrap();
    b.page_data(0x1000, m, f0, IgvmPageDataType::NORMAL, &[])
        .unwrap();
    b.page_data(
        0x2000,
        m,
        flags(true, false, false),
        IgvmPageDataType::NORMAL,
        &[],
    )
    .unwrap();
    b.page_data(0x3000, m, f0, IgvmPageDataType::SECRETS, &[])
        .unwrap();
    b.page_data(0x4000, m, f0, IgvmPageDataType::CPUID_DATA, &[])
        .unwrap();
    b.vp_context(KVM_VMSA_GPA, m, 0, &bsp_vmsa(1)).unwrap();
    b.finish().unwrap()
}

fn imports<B: AsRef<[u8]>>(plan: &LaunchPlan<B>) -> Vec<(u64, PageKind, PageData)> {
    plan.ops
        .iter()
        .filter_map(|op| match *op {
            LaunchOp::ImportPage { gpa, kind, data } => Some((gpa, kind, data)),
            _ => None,
        })
        .collect()
}

#[test]
fn ram_layout() {
    assert_eq!(
        ram_ranges(1 << 30),
        Some([(0, 1 << 30), (HIGH_RAM_BASE, 0)])
    );
    assert_eq!(
        ram_ranges(4 << 30),
        Some([(0, LOW_RAM_END), (HIGH_RAM_BASE, 1 << 30)])
    );
    assert_eq!(ram_ranges(u64::MAX), None);
    assert!(in_ram(1 << 30, 0, 4096));
    assert!(!in_ram(1 << 30, (1 << 30) - 4096, 8192));
    assert!(in_ram(4 << 30, HIGH_RAM_BASE, 4096));
    assert!(!in_ram(4 << 30, LOW_RAM_END, 4096));
    assert!(!in_ram(4 << 30, u64::MAX - 10, 4096));
}

#[test]
fn spec_vector_file_plan() {
    let file = spec_file(2);
    let plan = plan_igvm(&file, &cfg(Platform::Snp, 1)).unwrap();
    assert_eq!(
        plan.ops[0],
        LaunchOp::CreateVm {
            platform: Platform::Snp,
            policy: 0x30000,
            vmsa_features: 0,
            vcpus: 1
        }
    );
    assert_eq!(
        plan.ops[1],
        LaunchOp::MapRam {
            gpa: 0,
            size: 64 << 20
        }
    );
    let im = imports(&plan);
    let kinds: Vec<(u64, PageKind)> = im.iter().map(|&(g, k, _)| (g, k)).collect();
    assert_eq!(
        kinds,
        [
            (0x10000, PageKind::Unmeasured),
            (0x11000, PageKind::Unmeasured),
            (0, PageKind::Normal),
            (0x1000, PageKind::Normal),
            (0x2000, PageKind::Unmeasured),
            (0x3000, PageKind::Secrets),
            (0x4000, PageKind::Cpuid),
        ]
    );
    // The zero page is NORMAL over zeros (QEMU), page data comes from the file.
    assert_eq!(im[3].2, PageData::Zeros);
    match im[2].2 {
        PageData::File { offset, len } => {
            assert_eq!(len, 4096);
            let bytes = plan.page_bytes(&im[2].2);
            assert_eq!(bytes.len(), 4096);
            assert_eq!(bytes[255], 255);
            assert!(offset > 0);
        }
        other => panic!("{other:?}"),
    }
    // VP_COUNT = 1 at offset 0 of the generated area.
    match im[0].2 {
        PageData::Generated { index } => {
            assert_eq!(&plan.generated[index as usize][..4], &1u32.to_le_bytes())
        }
        other => panic!("{other:?}"),
    }
    let vps: Vec<&LaunchOp> = plan
        .ops
        .iter()
        .filter(|op| matches!(op, LaunchOp::SetVpContext { .. }))
        .collect();
    assert_eq!(vps.len(), 1);
    match *vps[0] {
        LaunchOp::SetVpContext { vp, source, ctx } => {
            assert_eq!((vp, source), (0, VpSource::Bundle));
            assert_eq!(plan.vp_contexts[ctx as usize], {
                let mut r = reset_regs(SIG, BSP_RESET_ADDR);
                // KVM stored CR0 0x10 and CR4 0x40 in the file's VMSA; QEMU hands them back.
                r.cr0 = 0x10;
                r.cr4 = 0x40;
                r.efer = 0x1000;
                r
            });
        }
        _ => unreachable!(),
    }
    assert_eq!(
        *plan.ops.last().unwrap(),
        LaunchOp::Finalize {
            id_block: false,
            host_data: [7; 32]
        }
    );
    assert!(plan.id_block.is_none());
}

#[test]
fn every_vcpu_gets_one_context() {
    let file = spec_file(1);
    let plan = plan_igvm(&file, &cfg(Platform::Snp, 4)).unwrap();
    let vps: Vec<(u32, VpSource)> = plan
        .ops
        .iter()
        .filter_map(|op| match *op {
            LaunchOp::SetVpContext { vp, source, .. } => Some((vp, source)),
            _ => None,
        })
        .collect();
    assert_eq!(
        vps,
        [
            (0, VpSource::Bundle),
            (1, VpSource::Reset),
            (2, VpSource::Reset),
            (3, VpSource::Reset)
        ]
    );
    // The AP reset state is QEMU's (RDX = signature).
    let ap_ctx = plan
        .ops
        .iter()
        .find_map(|op| match *op {
            LaunchOp::SetVpContext { vp: 1, ctx, .. } => Some(ctx),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        plan.vp_contexts[ap_ctx as usize],
        reset_regs(SIG, BSP_RESET_ADDR)
    );
}

#[test]
fn deterministic() {
    let file = spec_file(3);
    let a = plan_igvm(&file, &cfg(Platform::Snp, 2)).unwrap();
    let b = plan_igvm(&file, &cfg(Platform::Snp, 2)).unwrap();
    assert_eq!(a.ops, b.ops);
    assert_eq!(a.generated, b.generated);
    assert_eq!(a.vp_contexts, b.vp_contexts);
}

#[test]
fn no_view_for_platform() {
    let file = spec_file(1);
    let e = plan_igvm(&file, &cfg(Platform::Tdx, 1)).unwrap_err();
    assert!(matches!(
        e.kind,
        E::NoPlatformView {
            platform: Platform::Tdx,
            declared: 0b1000
        }
    ));
    let msg = alloc::format!("{e}");
    assert!(msg.contains("no tdx view") && msg.contains("snp"), "{msg}");
}

#[test]
fn vmsa_gpa_must_be_kvm_one() {
    let mut b = IgvmBuilder::new();
    let m = b.platform(IgvmPlatformType::SEV_SNP, 0).unwrap();
    b.page_data(
        0,
        m,
        flags(false, false, false),
        IgvmPageDataType::NORMAL,
        &[1],
    )
    .unwrap();
    b.vp_context(0x5000, m, 0, &bsp_vmsa(1)).unwrap();
    let file = b.finish().unwrap();
    let e = plan_igvm(&file, &cfg(Platform::Snp, 1)).unwrap_err();
    assert_eq!(e.kind, E::VmsaGpa { gpa: 0x5000 });
    let msg = alloc::format!("{e}");
    assert!(
        msg.starts_with("header 2 (VP_CONTEXT) at 0x") && msg.contains("0xfffffffff000"),
        "{msg}"
    );
}

#[test]
fn vp_index_beyond_vcpus_and_features_mismatch() {
    let mut b = IgvmBuilder::new();
    let m = b.platform(IgvmPlatformType::SEV_SNP, 0).unwrap();
    b.vp_context(KVM_VMSA_GPA, m, 0, &bsp_vmsa(1)).unwrap();
    b.vp_context(KVM_VMSA_GPA, m, 1, &bsp_vmsa(0x21)).unwrap();
    let file = b.finish().unwrap();
    let e = plan_igvm(&file, &cfg(Platform::Snp, 1)).unwrap_err();
    assert!(matches!(e.kind, E::VmsaFeaturesDiffer { .. }), "{e}");

    let mut b = IgvmBuilder::new();
    let m = b.platform(IgvmPlatformType::SEV_SNP, 0).unwrap();
    b.vp_context(KVM_VMSA_GPA, m, 3, &bsp_vmsa(1)).unwrap();
    let file = b.finish().unwrap();
    let e = plan_igvm(&file, &cfg(Platform::Snp, 2)).unwrap_err();
    assert_eq!(e.kind, E::VpIndexOutOfRange { vp: 3, vcpus: 2 });
    assert!(alloc::format!("{e}").contains("--vcpus 4"));
    assert!(plan_igvm(&file, &cfg(Platform::Snp, 4)).is_ok());
}

#[test]
fn vp0_features_become_vmsa_features() {
    let mut b = IgvmBuilder::new();
    let m = b.platform(IgvmPlatformType::SEV_SNP, 0).unwrap();
    b.vp_context(KVM_VMSA_GPA, m, 0, &bsp_vmsa(0x21)).unwrap();
    let file = b.finish().unwrap();
    let plan = plan_igvm(&file, &cfg(Platform::Snp, 2)).unwrap();
    assert!(matches!(
        plan.ops[0],
        LaunchOp::CreateVm {
            vmsa_features: 0x20,
            ..
        }
    ));
}

#[test]
fn two_mb_pages_and_regions_outside_ram() {
    let mut b = IgvmBuilder::new();
    let m = b.platform(IgvmPlatformType::NATIVE, 0).unwrap();
    // A 2 MiB page with 4 KiB of data at 4 GiB - 4 MiB (in the hole, outside RAM).
    b.page_data(
        0xFFC0_0000,
        m,
        flags(false, false, true),
        IgvmPageDataType::NORMAL,
        &[0xAA; 4096],
    )
    .unwrap();
    b.page_data(
        0xFFFF_F000,
        m,
        flags(false, false, false),
        IgvmPageDataType::NORMAL,
        &[1],
    )
    .unwrap();
    let file = b.finish().unwrap();
    let plan = plan_igvm(&file, &cfg(Platform::Native, 1)).unwrap();
    let maps: Vec<(u64, u64)> = plan
        .ops
        .iter()
        .filter_map(|op| match *op {
            LaunchOp::MapRam { gpa, size } => Some((gpa, size)),
            _ => None,
        })
        .collect();
    assert_eq!(
        maps,
        [(0, 64 << 20), (0xFFC0_0000, 2 << 20), (0xFFFF_F000, 0x1000)]
    );
    let im = imports(&plan);
    assert_eq!(im.len(), 513);
    assert_eq!(im[0].0, 0xFFC0_0000);
    assert!(matches!(im[0].2, PageData::File { len: 4096, .. }));
    assert_eq!(im[1], (0xFFC0_1000, PageKind::Normal, PageData::Zeros));
    assert_eq!(im[511].0, 0xFFDF_F000);
    // Native: no bundle VP context → the reset state.
    assert!(plan.ops.iter().any(|op| matches!(
        op,
        LaunchOp::SetVpContext {
            vp: 0,
            source: VpSource::Reset,
            ..
        }
    )));
}

#[test]
fn page_above_limit_and_shared_boundary() {
    let mut b = IgvmBuilder::new();
    let m = b.platform(IgvmPlatformType::SEV_SNP, 1 << 40).unwrap();
    b.page_data(
        1 << 40,
        m,
        flags(false, false, false),
        IgvmPageDataType::NORMAL,
        &[1],
    )
    .unwrap();
    let file = b.finish().unwrap();
    let e = plan_igvm(&file, &cfg(Platform::Snp, 1)).unwrap_err();
    assert!(
        matches!(
            e.kind,
            E::GpaTooHigh {
                shared_boundary: true,
                ..
            }
        ),
        "{e}"
    );

    let mut b = IgvmBuilder::new();
    let m = b.platform(IgvmPlatformType::SEV_SNP, 0).unwrap();
    b.page_data(
        1 << 47,
        m,
        flags(false, false, false),
        IgvmPageDataType::NORMAL,
        &[1],
    )
    .unwrap();
    let file = b.finish().unwrap();
    let e = plan_igvm(&file, &cfg(Platform::Snp, 1)).unwrap_err();
    assert!(
        matches!(e.kind, E::GpaTooHigh { limit, .. } if limit == 1 << 47),
        "{e}"
    );
}

#[test]
fn shared_flag_ignored_except_tdx() {
    for (platform, ty, want) in [
        (Platform::Snp, IgvmPlatformType::SEV_SNP, PageKind::Normal),
        (Platform::Tdx, IgvmPlatformType::TDX, PageKind::Shared),
    ] {
        let mut b = IgvmBuilder::new();
        let m = b.platform(ty, 0).unwrap();
        b.page_data(
            0,
            m,
            flags(false, true, false),
            IgvmPageDataType::NORMAL,
            &[1],
        )
        .unwrap();
        let file = b.finish().unwrap();
        let plan = plan_igvm(&file, &cfg(platform, 1)).unwrap();
        assert_eq!(imports(&plan)[0].1, want, "{platform}");
    }
}

#[test]
fn tdx_vcpus_get_tdx_init() {
    let mut b = IgvmBuilder::new();
    let m = b.platform(IgvmPlatformType::TDX, 0).unwrap();
    b.guest_policy(0b11, m);
    b.page_data(
        0xFFFF_F000,
        m,
        flags(false, false, false),
        IgvmPageDataType::NORMAL,
        &[1],
    )
    .unwrap();
    let file = b.finish().unwrap();
    let plan = plan_igvm(&file, &cfg(Platform::Tdx, 2)).unwrap();
    assert!(matches!(
        plan.ops[0],
        LaunchOp::CreateVm { policy, .. } if policy == TDX_ATTR_DEBUG | TDX_ATTR_SEPT_VE_DISABLE
    ));
    let vps: Vec<(u32, VpSource)> = plan
        .ops
        .iter()
        .filter_map(|op| match *op {
            LaunchOp::SetVpContext { vp, source, .. } => Some((vp, source)),
            _ => None,
        })
        .collect();
    assert_eq!(vps, [(0, VpSource::TdxInit), (1, VpSource::TdxInit)]);
    assert_eq!(plan.vp_contexts[1].gprs.rsi, 1);
}

#[test]
fn sev_views_follow_qemu() {
    for (platform, ty) in [
        (Platform::Sev, IgvmPlatformType::SEV),
        (Platform::SevEs, IgvmPlatformType::SEV_ES),
    ] {
        let mut b = IgvmBuilder::new();
        let m = b.platform(ty, 0).unwrap();
        b.page_data(
            0,
            m,
            flags(false, false, false),
            IgvmPageDataType::SECRETS,
            &[],
        )
        .unwrap();
        let file = b.finish().unwrap();
        let e = plan_igvm(&file, &cfg(platform, 1)).unwrap_err();
        assert!(
            matches!(
                e.kind,
                E::SnpOnlyPage {
                    page: "SECRETS",
                    ..
                }
            ),
            "{e}"
        );
    }
    // Default policies.
    let mut b = IgvmBuilder::new();
    let m = b.platform(IgvmPlatformType::SEV_ES, 0).unwrap();
    b.page_data(
        0,
        m,
        flags(false, false, false),
        IgvmPageDataType::NORMAL,
        &[1],
    )
    .unwrap();
    let file = b.finish().unwrap();
    let plan = plan_igvm(&file, &cfg(Platform::SevEs, 1)).unwrap();
    assert!(matches!(
        plan.ops[0],
        LaunchOp::CreateVm { policy: 0x5, .. }
    ));
    let mut c = cfg(Platform::SevEs, 1);
    c.policy = Some(0x1);
    let e = plan_igvm(&file, &c).unwrap_err();
    assert_eq!(e.at, Location::Config);
    assert!(alloc::format!("{e}").contains("ES bit"), "{e}");
}

#[test]
fn snp_policy_needs_mbo_bit() {
    let file = spec_file(1);
    let mut c = cfg(Platform::Snp, 1);
    c.policy = Some(0x10000);
    let e = plan_igvm(&file, &c).unwrap_err();
    assert!(matches!(e.kind, E::BadPolicy { .. }), "{e}");
    c.policy = Some(0x20000);
    let e = plan_igvm(&file, &c).unwrap_err();
    assert!(alloc::format!("{e}").contains("bit 16"), "{e}");
    c.policy = Some(0x30000 | (1 << 26));
    assert!(plan_igvm(&file, &c).is_err());
    c.policy = Some(0x30000 | (1 << 19));
    let plan = plan_igvm(&file, &c).unwrap();
    assert!(matches!(plan.ops[0], LaunchOp::CreateVm { policy, .. } if policy == 0xB0000));
}

#[test]
fn memory_map_and_environment_info() {
    let mut b = IgvmBuilder::new();
    let m = b.platform(IgvmPlatformType::SEV_SNP, 0).unwrap();
    b.parameter_area(1, 4096, &[]).unwrap();
    b.memory_map(1, 0);
    b.parameter_area(2, 4096, &[0xF0]).unwrap();
    b.environment_info(2, 0);
    b.vp_count(2, 8);
    b.parameter_insert(0x20000, m, 1);
    b.parameter_insert(0x21000, m, 2);
    let file = b.finish().unwrap();
    let mut c = cfg(Platform::Snp, 3);
    c.mem_bytes = 4 << 30;
    let plan = plan_igvm(&file, &c).unwrap();
    let im = imports(&plan);
    assert_eq!(im.len(), 2);
    let PageData::Generated { index } = im[0].2 else {
        panic!()
    };
    let map = &plan.generated[index as usize];
    let rd = |o: usize| u64::from_le_bytes(map[o..o + 8].try_into().unwrap());
    assert_eq!((rd(0), rd(8)), (0, LOW_RAM_END / 4096));
    assert_eq!((rd(24), rd(32)), (HIGH_RAM_BASE / 4096, (1 << 30) / 4096));
    assert_eq!(&map[16..24], &[0; 8]);
    assert_eq!(rd(56), 0, "terminator entry");
    let PageData::Generated { index } = im[1].2 else {
        panic!()
    };
    let env = &plan.generated[index as usize];
    // Initial data 0xF0 kept, bit 0 (memory_is_shared) ORed in; VP count at 8.
    assert_eq!(env[0], 0xF1);
    assert_eq!(&env[8..12], &3u32.to_le_bytes());
}

#[test]
fn unsupported_directive_is_refused() {
    let mut b = IgvmBuilder::new();
    let m = b.platform(IgvmPlatformType::SEV_SNP, 0).unwrap();
    b.parameter_area(0, 4096, &[]).unwrap();
    b.mmio_ranges(0, 0);
    b.parameter_insert(0x20000, m, 0);
    let file = b.finish().unwrap();
    let e = plan_igvm(&file, &cfg(Platform::Snp, 1)).unwrap_err();
    assert_eq!(e.kind, E::UnsupportedDirective);
    assert!(alloc::format!("{e}").contains("MMIO_RANGES"), "{e}");
}

#[test]
fn id_block_is_converted_like_qemu() {
    let mut raw = IGVM_VHS_SNP_ID_BLOCK::new_zeroed();
    let mut b = IgvmBuilder::new();
    let m = b.platform(IgvmPlatformType::SEV_SNP, 0).unwrap();
    raw.compatibility_mask = m;
    raw.ld = [0x11; 48];
    raw.family_id = [0x22; 16];
    raw.image_id = [0x33; 16];
    raw.version = 7;
    raw.guest_svn = 9;
    raw.id_key_algorithm = 1;
    raw.id_key_signature.r_comp = [0x44; 72];
    raw.id_key_signature.s_comp = [0x55; 72];
    raw.id_public_key.curve = 2;
    raw.id_public_key.qx = [0x66; 72];
    raw.id_public_key.qy = [0x77; 72];
    b.guest_policy(0x30000, m);
    b.snp_id_block(&raw);
    b.page_data(
        0,
        m,
        flags(false, false, false),
        IgvmPageDataType::NORMAL,
        &[1],
    )
    .unwrap();
    let file = b.finish().unwrap();
    let plan = plan_igvm(&file, &cfg(Platform::Snp, 1)).unwrap();
    let id = plan.id_block.unwrap();
    assert!(matches!(
        plan.ops.last(),
        Some(LaunchOp::Finalize { id_block: true, .. })
    ));
    assert_eq!(id.ld(), [0x11; 48]);
    assert_eq!(id.policy(), 0x30000);
    assert_eq!(&id.id_block[0x30..0x40], &[0x22; 16]);
    assert_eq!(&id.id_block[0x40..0x50], &[0x33; 16]);
    assert_eq!(&id.id_block[0x50..0x58], &[1, 0, 0, 0, 9, 0, 0, 0]);
    assert_eq!(&id.id_auth[0..8], &[1, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(&id.id_auth[0x40..0x88], &[0x44; 72]);
    assert_eq!(&id.id_auth[0x88..0xD0], &[0x55; 72]);
    assert_eq!(&id.id_auth[0x240..0x244], &[2, 0, 0, 0]);
    assert_eq!(&id.id_auth[0x244..0x28C], &[0x66; 72]);
    assert_eq!(&id.id_auth[0x28C..0x2D4], &[0x77; 72]);
    assert!(id.id_auth[0x2D4..].iter().all(|&x| x == 0));
    assert!(!id.author_key_enabled);
}

#[test]
fn bad_config() {
    let file = spec_file(1);
    let mut c = cfg(Platform::Snp, 0);
    assert_eq!(plan_igvm(&file, &c).unwrap_err().at, Location::Config);
    c.vcpus = 1;
    c.mem_bytes = 4097;
    assert_eq!(plan_igvm(&file, &c).unwrap_err().at, Location::Config);
}

#[test]
fn garbage_never_panics() {
    // Every prefix and a sprinkling of bit flips of a valid file: errors, never panics.
    let file = spec_file(2);
    for len in (0..file.len()).step_by(7) {
        let _ = plan_igvm(&file[..len], &cfg(Platform::Snp, 2));
    }
    let mut x: u32 = 0x1234_5678;
    for _ in 0..2000 {
        let mut f = file.clone();
        for _ in 0..4 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let i = (x as usize) % f.len();
            f[i] ^= 1 << (x % 8);
        }
        for p in Platform::ALL {
            let _ = plan_igvm(&f, &cfg(p, 3));
        }
    }
}

#[test]
fn dispatcher_detects_input_kind() {
    let file = spec_file(1);
    let a = crate::plan::plan(&file, &cfg(Platform::Snp, 1)).unwrap();
    let b = plan_igvm(&file, &cfg(Platform::Snp, 1)).unwrap();
    assert_eq!(a.ops, b.ops);
    let e = crate::plan::plan(&[0u8; 100], &cfg(Platform::Snp, 1)).unwrap_err();
    assert_eq!(e.kind, E::UnknownInput);
    assert!(alloc::format!("{e}").starts_with("not an IGVM file"));
    let e = crate::plan::plan(b"IGVM", &cfg(Platform::Snp, 1)).unwrap_err();
    assert!(matches!(e.kind, E::Igvm(_)), "{e}");
}

#[test]
fn madt_lists_every_vcpu() {
    let mut b = IgvmBuilder::new();
    let m = b.platform(IgvmPlatformType::SEV_SNP, 0).unwrap();
    b.parameter_area(0, 4096, &[]).unwrap();
    // MADT (0x309): IGVM_VHS_PARAMETER { area 0, byte_offset 0x10 }.
    b.raw_header(0x309, &[0, 0, 0, 0, 0x10, 0, 0, 0]);
    b.parameter_insert(0x20000, m, 0);
    let file = b.finish().unwrap();
    let plan = plan_igvm(&file, &cfg(Platform::Snp, 3)).unwrap();
    let PageData::Generated { index } = imports(&plan)[0].2 else {
        panic!()
    };
    let page = &plan.generated[index as usize];
    let t = &page[0x10..];
    assert_eq!(&t[..4], b"APIC");
    let len = u32::from_le_bytes(t[4..8].try_into().unwrap()) as usize;
    // 44 bytes of header, 3 × 8 LAPIC, 12 IOAPIC, 5 × 10 overrides, 6 NMI.
    assert_eq!(len, 44 + 24 + 12 + 50 + 6);
    assert_eq!(
        t[..len].iter().fold(0u8, |a, &b| a.wrapping_add(b)),
        0,
        "checksum"
    );
    assert_eq!(&t[44..52], &[0, 8, 0, 0, 1, 0, 0, 0]);
    assert_eq!(&t[60..68], &[0, 8, 2, 2, 1, 0, 0, 0]);
    // 300 vCPUs: x2APIC entries from ID 255 (the table builder; a launch has at most
    // `limits::MAX_VCPUS` = 255 vCPUs, so plans never get there).
    let big = build_madt(300);
    assert_eq!(big.iter().fold(0u8, |a, &b| a.wrapping_add(b)), 0);
    assert_eq!(big.len(), 44 + 255 * 8 + 45 * 16 + 12 + 50 + 12);
    let e = plan_igvm(&file, &cfg(Platform::Snp, 600)).unwrap_err();
    assert!(matches!(e.kind, E::Limit(_)), "{e}");
    // 255 vCPUs (44 + 255 × 8 + 68 bytes) at byte_offset 0xF00 do not fit a one-page area.
    let mut b = IgvmBuilder::new();
    let m = b.platform(IgvmPlatformType::SEV_SNP, 0).unwrap();
    b.parameter_area(0, 4096, &[]).unwrap();
    b.raw_header(0x309, &[0, 0, 0, 0, 0, 0xF, 0, 0]);
    b.parameter_insert(0x20000, m, 0);
    let file = b.finish().unwrap();
    let e = plan_igvm(&file, &cfg(Platform::Snp, 255)).unwrap_err();
    assert!(matches!(e.kind, E::ParameterDoesNotFit { .. }), "{e}");
}

/// A bundle shaped like COCONUT-SVSM igvmbuilder's output for QEMU
/// (`tools/igvmbuilder/src/igvm_builder.rs`): SNP and NATIVE views; three parameter areas
/// (memory map, MADT, general: VP_COUNT at 0, ENVIRONMENT_INFO at 4) inserted for every
/// view before any page data; the SNP VMSA at the KVM GPA *before* the pages; a native
/// context; CPUID and secrets pages for SNP only.
#[test]
fn svsm_like_bundle_plans_on_both_views() {
    use igvm_defs::IgvmNativeVpContextX64;
    let mut b = IgvmBuilder::new();
    let snp = b.platform(IgvmPlatformType::SEV_SNP, 0).unwrap();
    let nat = b.platform(IgvmPlatformType::NATIVE, 0).unwrap();
    let all = snp | nat;
    b.guest_policy(0x30000, snp);
    b.parameter_area(0, 4096, &[]).unwrap();
    b.parameter_area(1, 4096, &[]).unwrap();
    b.parameter_area(2, 4096, &[]).unwrap();
    b.vp_count(2, 0);
    b.environment_info(2, 4);
    b.raw_header(0x309, &[1, 0, 0, 0, 0, 0, 0, 0]); // MADT in area 1
    b.memory_map(0, 0);
    b.parameter_insert(0x80_0000, all, 0);
    b.parameter_insert(0x80_1000, all, 1);
    b.parameter_insert(0x80_2000, all, 2);
    b.vp_context(KVM_VMSA_GPA, snp, 0, &bsp_vmsa(0x21)).unwrap();
    let mut ctx = IgvmNativeVpContextX64::new_zeroed();
    ctx.rip = 0x80_8000;
    ctx.code_selector = 0x8;
    ctx.code_attributes = 0xA09B;
    ctx.code_limit = 0xFFFF_FFFF;
    ctx.data_selector = 0x10;
    ctx.data_attributes = 0xC093;
    ctx.data_limit = 0xFFFF_FFFF;
    ctx.cr0 = 0x8000_0031;
    ctx.cr3 = 0x80_4000;
    ctx.cr4 = 0x20;
    ctx.efer = 0x500;
    b.native_vp_context(nat, 0, &ctx).unwrap();
    let f = flags(false, false, false);
    for i in 0..8u64 {
        b.page_data(
            0x80_8000 + i * 4096,
            all,
            f,
            IgvmPageDataType::NORMAL,
            &[i as u8 + 1],
        )
        .unwrap();
    }
    b.page_data(0x80_3000, snp, f, IgvmPageDataType::CPUID_DATA, &[0; 16])
        .unwrap();
    b.page_data(0x80_5000, snp, f, IgvmPageDataType::SECRETS, &[])
        .unwrap();
    let file = b.finish().unwrap();

    let plan = plan_igvm(&file, &cfg(Platform::Snp, 4)).unwrap();
    assert!(matches!(
        plan.ops[0],
        LaunchOp::CreateVm {
            vmsa_features: 0x20,
            vcpus: 4,
            ..
        }
    ));
    let im = imports(&plan);
    assert_eq!(im.len(), 3 + 8 + 2);
    let PageData::Generated { index } = im[2].2 else {
        panic!()
    };
    let general = &plan.generated[index as usize];
    assert_eq!(&general[..8], &[4, 0, 0, 0, 1, 0, 0, 0]);
    let PageData::Generated { index } = im[1].2 else {
        panic!()
    };
    assert_eq!(&plan.generated[index as usize][..4], b"APIC");

    let plan = plan_igvm(&file, &cfg(Platform::Native, 2)).unwrap();
    let im = imports(&plan);
    assert_eq!(im.len(), 3 + 8);
    let vp0 = plan
        .ops
        .iter()
        .find_map(|op| match *op {
            LaunchOp::SetVpContext {
                vp: 0,
                source: VpSource::Bundle,
                ctx,
            } => Some(ctx),
            _ => None,
        })
        .unwrap();
    let r = plan.vp_contexts[vp0 as usize];
    assert_eq!((r.rip, r.cr3, r.cs.selector), (0x80_8000, 0x80_4000, 0x8));
    assert!(plan.ops.iter().any(|op| matches!(
        op,
        LaunchOp::SetVpContext {
            vp: 1,
            source: VpSource::Reset,
            ..
        }
    )));
}

/// Scattered pages outside RAM: each merged range is a memory slot, so their number is capped
/// (touching pages merge and count once).
#[test]
fn scattered_pages_outside_ram_are_capped() {
    let bundle = |n: u64, stride: u64| {
        let mut b = IgvmBuilder::new();
        let m = b.platform(IgvmPlatformType::NATIVE, 0).unwrap();
        for i in 0..n {
            b.page_data(
                0xC000_0000 + i * stride,
                m,
                flags(false, false, false),
                IgvmPageDataType::NORMAL,
                &[],
            )
            .unwrap();
        }
        b.finish().unwrap()
    };
    let c = cfg(Platform::Native, 1);
    let n = MAX_EXTRA_REGIONS as u64;
    plan_igvm(&bundle(n, 0x2000), &c).unwrap();
    // Contiguous pages are one range, however many.
    plan_igvm(&bundle(4 * n, 0x1000), &c).unwrap();
    let e = plan_igvm(&bundle(n + 1, 0x2000), &c).unwrap_err();
    assert_eq!(
        e.kind,
        E::TooManyExtraRegions {
            regions: n + 1,
            limit: n
        }
    );
    let msg = alloc::format!("{e}");
    assert!(msg.contains("--mem"), "{msg}");
}
