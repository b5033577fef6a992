//! F-UKI on real KVM: the boot-image pair `fuki` (stage 1) and `hello` (stage 2). Stage 1
//! reads stage 2 from fw_cfg `opt/relaunch/next-bundle`, hands it over through QEMU's
//! vm-launch-update interface (`etc/vmlaunchupdate`) and resets; the next launch is a fresh
//! measured launch of stage 2, which prints its generation and powers off — on `native`,
//! `emulated:snp` (stage 1 makes its window shared with the GHCB MSR page-state change) and
//! `emulated:tdx` (the TDX view imports the window shared). The audit log has both bundles'
//! hashes, and each launch's measurement equals `relaunch measure` of its bundle.
//!
//! A hostile stage 1 (`opt/relaunch/fuki-mode`: a 1 TiB size, a garbage image, an address
//! far outside RAM, a wrapping range, its own private memory, FORMAT_IGVM missing) gets
//! status 1 (`VM_LAUNCHUPDATE_LOAD_FAIL`) and the VMM relaunches stage 1.

mod kvm_common;

use std::sync::Arc;

use kvm_common::*;
use relaunch::backend::emulated::EmulatedBackend;
use relaunch::backend::native::NativeBackend;
use relaunch::backend::Backend;
use relaunch::launch::Launch;
use relaunch::model::ModelConfig;
use relaunch::session::{run_session, EXIT_POWER_OFF};
use relaunch::vstate::Host;
use relaunch_core::plan::Platform;
use serde_json::Value;
use sha2::{Digest, Sha256};

const MEM: u64 = 64 << 20;

fn backend(platform: Platform, emulated: bool, host: &Arc<Host>) -> Box<dyn Backend> {
    if emulated {
        Box::new(
            EmulatedBackend::new(
                platform,
                &host.kvm,
                ModelConfig {
                    vcpu_sig: host.vcpu_signature(),
                    ..ModelConfig::default()
                },
            )
            .unwrap(),
        )
    } else {
        Box::new(NativeBackend::new(Arc::clone(host)))
    }
}

fn sha(b: &[u8]) -> String {
    relaunch::json::hex(&Sha256::digest(b))
}

/// Runs stage 1 with `mode` on `platform`; returns (exit code, launches, output, audit
/// records).
fn run_stage1(
    host: &Arc<Host>,
    platform: Platform,
    emulated: bool,
    mode: u64,
    stage1: &[u8],
    stage2: &[u8],
) -> (u8, u64, String, Vec<Value>) {
    let cfg_l = launch_config(platform, 1, MEM, host.vcpu_signature());
    let launch = Arc::new(Launch::new(stage1.to_vec(), &cfg_l).unwrap());
    let b = backend(platform, emulated, host);
    let audit = std::env::temp_dir().join(format!(
        "relaunch-fuki-{platform}-{mode}-{}.jsonl",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&audit);
    let mut cfg = with_audit(config(MEM, Some(3), false), &audit);
    cfg.vm_launch_update = true;
    cfg.fw_cfg_files = vec![
        ("opt/relaunch/next-bundle".into(), stage2.to_vec()),
        ("opt/relaunch/fuki-mode".into(), mode.to_le_bytes().to_vec()),
    ];
    let r = run_session(&*b, launch, &cfg);
    let text = std::fs::read_to_string(&audit).unwrap_or_default();
    let _ = std::fs::remove_file(&audit);
    let records = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .collect();
    (r.exit_code, r.launches, output(&cfg), records)
}

const PLATFORMS: [(Platform, bool); 3] = [
    (Platform::Native, false),
    (Platform::Snp, true),
    (Platform::Tdx, true),
];

#[test]
fn fuki_stage1_hands_over_stage2() {
    let Some(host) = host(false) else { return };
    let (Some(stage1), Some(stage2)) = (
        image("fuki").map(|(_, b)| b),
        image("hello").map(|(_, b)| b),
    ) else {
        return;
    };
    for (platform, emulated) in PLATFORMS {
        let (code, launches, out, records) =
            run_stage1(&host, platform, emulated, 0, &stage1, &stage2);
        let what = format!("{platform} emulated={emulated}");
        assert_eq!(code, EXIT_POWER_OFF, "{what}\n{out}");
        assert_eq!(launches, 2, "{what}\n{out}");
        assert!(out.contains("fuki: generation 1"), "{what}\n{out}");
        assert!(out.contains("hand-over status 0"), "{what}\n{out}");
        assert!(
            out.contains("hello from relaunch guest\ngeneration 2"),
            "{what}\n{out}"
        );
        let launch: Vec<&Value> = records.iter().filter(|v| v["event"] == "launch").collect();
        assert_eq!(launch.len(), 2, "{what}: {records:?}");
        let cfg_l = launch_config(platform, 1, MEM, host.vcpu_signature());
        for (rec, bundle) in launch.iter().zip([&stage1, &stage2]) {
            assert_eq!(rec["bundle_sha256"], sha(bundle), "{what}: {rec}");
            if platform != Platform::Native {
                let m = relaunch::cli::measure::measure_bundle(bundle, &cfg_l, 1)
                    .unwrap()
                    .measurement
                    .to_string();
                assert_eq!(rec["predicted_measurement"], m.as_str(), "{what}: {rec}");
                assert_eq!(rec["launch_measurement"], m.as_str(), "{what}: {rec}");
            }
        }
        let swaps: Vec<&Value> = records.iter().filter(|v| v["event"] == "swap").collect();
        assert_eq!(swaps.len(), 1, "{what}: {records:?}");
        assert_eq!(swaps[0]["by"], "guest", "{}", swaps[0]);
        assert_eq!(swaps[0]["new_bundle_sha256"], sha(&stage2), "{}", swaps[0]);
        assert_eq!(swaps[0]["old_bundle_sha256"], sha(&stage1), "{}", swaps[0]);
    }
}

#[test]
fn fuki_hostile_stage1_keeps_the_old_bundle() {
    let Some(host) = host(false) else { return };
    let (Some(stage1), Some(stage2)) = (
        image("fuki").map(|(_, b)| b),
        image("hello").map(|(_, b)| b),
    ) else {
        return;
    };
    for (platform, emulated) in PLATFORMS {
        for mode in 1..=6u64 {
            let (code, launches, out, records) =
                run_stage1(&host, platform, emulated, mode, &stage1, &stage2);
            let what = format!("{platform} emulated={emulated} mode {mode}");
            assert_eq!(code, EXIT_POWER_OFF, "{what}\n{out}");
            assert_eq!(launches, 2, "{what}\n{out}");
            assert!(
                out.contains(&format!(
                    "fuki: mode {mode}, dma Some(0), hand-over status 1"
                )),
                "{what}\n{out}"
            );
            assert!(out.contains("fuki: stage 1 again"), "{what}\n{out}");
            assert!(!out.contains("hello from relaunch guest"), "{what}\n{out}");
            for rec in records.iter().filter(|v| v["event"] == "launch") {
                assert_eq!(rec["bundle_sha256"], sha(&stage1), "{what}: {rec}");
            }
        }
    }
}
