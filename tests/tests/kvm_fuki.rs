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
//!
//! Two vCPUs (modes 7 and 8, 2 vCPUs): racing writes are processed one at a time, each
//! whole (every audit record and every snapshot the guest reads back is one write's,
//! never a mix); a write made while the other vCPU resets either takes effect at that
//! reset or never, and nothing the resetting vCPU writes after asking for the reset is
//! processed.

mod kvm_common;

use std::sync::Arc;

use kvm_common::*;
use relaunch::launch::Launch;
use relaunch::session::{run_session, EXIT_POWER_OFF};
use relaunch::vstate::Host;
use relaunch_core::plan::Platform;
use serde_json::Value;

const MEM: u64 = 64 << 20;

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
    run_stage1_on(host, platform, emulated, (mode, 0), 1, stage1, stage2)
}

/// As [`run_stage1`], with `vcpus` vCPUs and mode 8's delay (`opt/relaunch/fuki-delay`).
fn run_stage1_on(
    host: &Arc<Host>,
    platform: Platform,
    emulated: bool,
    (mode, delay): (u64, u64),
    vcpus: u32,
    stage1: &[u8],
    stage2: &[u8],
) -> (u8, u64, String, Vec<Value>) {
    let cfg_l = launch_config(platform, vcpus, MEM, host.vcpu_signature());
    let launch = Arc::new(Launch::new(stage1.to_vec(), &cfg_l).unwrap());
    let b = backend_for(platform, emulated, host);
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
        (
            "opt/relaunch/fuki-delay".into(),
            delay.to_le_bytes().to_vec(),
        ),
    ];
    let r = run_session(&*b, launch, &cfg);
    let records = take_audit_records(&audit);
    (r.exit_code, r.launches, output(&cfg), records)
}

/// /dev/kvm, stage 1 (`fuki`) and stage 2 (`hello`), or the reported skip.
fn inputs() -> Option<(Arc<Host>, Vec<u8>, Vec<u8>)> {
    let host = host(false)?;
    let (_, stage1) = image("fuki")?;
    let (_, stage2) = image("hello")?;
    Some((host, stage1, stage2))
}

const PLATFORMS: [(Platform, bool); 3] = [
    (Platform::Native, false),
    (Platform::Snp, true),
    (Platform::Tdx, true),
];

#[test]
fn fuki_stage1_hands_over_stage2() {
    let Some((host, stage1, stage2)) = inputs() else {
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
        check_launches(
            &records,
            &[&stage1, &stage2],
            platform,
            (host.vcpu_signature(), 1),
            &what,
        );
        let swaps: Vec<&Value> = records_of(&records, "swap");
        assert_eq!(swaps.len(), 1, "{what}: {records:?}");
        assert_eq!(swaps[0]["by"], "guest", "{}", swaps[0]);
        assert_eq!(swaps[0]["new_bundle_sha256"], sha(&stage2), "{}", swaps[0]);
        assert_eq!(swaps[0]["old_bundle_sha256"], sha(&stage1), "{}", swaps[0]);
    }
}

#[test]
fn fuki_hostile_stage1_keeps_the_old_bundle() {
    let Some((host, stage1, stage2)) = inputs() else {
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

/// The window's addresses in the `fuki` guest (`boot-images/guests/src/bin/fuki.rs`:
/// `IMAGE`, `GARBAGE`, `GARBAGE_SIZE`; `layout::FUKI_WINDOW` = 0x40_0000).
const GUEST_IMAGE: u64 = 0x40_1000;
const GUEST_GARBAGE: u64 = 0x40_0800;
const GUEST_GARBAGE_SIZE: u64 = 0x800;
/// `RACE_WRITES` per vCPU in mode 7.
const RACE_WRITES: usize = 8;

/// Checks the launch records against the bundles that ran (sha and, off native, the
/// measurement `relaunch measure` computes), and returns them.
fn check_launches<'a>(
    records: &'a [Value],
    bundles: &[&[u8]],
    platform: Platform,
    (sig, vcpus): (u32, u32),
    what: &str,
) -> Vec<&'a Value> {
    let launch: Vec<&Value> = records_of(records, "launch");
    assert_eq!(launch.len(), bundles.len(), "{what}: {records:?}");
    let cfg_l = launch_config(platform, vcpus, MEM, sig);
    for (rec, bundle) in launch.iter().zip(bundles) {
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
    launch
}

/// Mode 7: the BSP (stage 2) and the AP (a garbage image elsewhere, another size) write
/// the structure 8 times each at once. Every write is processed whole: 16 swap records, 8
/// accepting stage 2 at its address and size, 8 refusing the garbage at its own address
/// and size (a torn structure would pair one's address with the other's size); stage 2
/// planned once; no snapshot the guest read back is torn; stage 2 runs next.
#[test]
fn fuki_two_vcpus_racing_writes() {
    let Some((host, stage1, stage2)) = inputs() else {
        return;
    };
    for (platform, emulated) in PLATFORMS {
        let (code, launches, out, records) =
            run_stage1_on(&host, platform, emulated, (7, 0), 2, &stage1, &stage2);
        let what = format!("{platform} emulated={emulated} mode 7");
        assert_eq!(code, EXIT_POWER_OFF, "{what}\n{out}");
        assert_eq!(launches, 2, "{what}\n{out}");
        assert!(out.contains("fuki: mode 7, AP up"), "{what}\n{out}");
        assert!(
            out.contains("fuki: race: dma errors 0, torn 0"),
            "{what}\n{out}"
        );
        assert!(
            out.contains("hello from relaunch guest\ngeneration 2"),
            "{what}\n{out}"
        );
        let swaps: Vec<&Value> = records_of(&records, "swap");
        assert_eq!(swaps.len(), 2 * RACE_WRITES, "{what}: {records:?}");
        let mut order = String::new();
        for rec in &swaps {
            assert_eq!(rec["generation"], 1, "{what}: {rec}");
            assert_eq!(rec["by"], "guest", "{what}: {rec}");
            assert_eq!(rec["request"], "bundle", "{what}: {rec}");
            assert_eq!(rec["old_bundle_sha256"], sha(&stage1), "{what}: {rec}");
            if rec["status"] == 0 {
                order.push('B');
                assert_eq!(rec["image_gpa"], GUEST_IMAGE, "{what}: {rec}");
                assert_eq!(rec["image_size"], stage2.len() as u64, "{what}: {rec}");
                assert_eq!(rec["new_bundle_sha256"], sha(&stage2), "{what}: {rec}");
            } else {
                order.push('A');
                assert_eq!(rec["status"], 1, "{what}: {rec}");
                assert_eq!(rec["image_gpa"], GUEST_GARBAGE, "{what}: {rec}");
                assert_eq!(rec["image_size"], GUEST_GARBAGE_SIZE, "{what}: {rec}");
                let result = rec["result"].as_str().unwrap_or_default();
                assert!(result.contains("not an IGVM file"), "{what}: {rec}");
            }
        }
        assert_eq!(order.matches('B').count(), RACE_WRITES, "{what}: {order}");
        let planned = swaps
            .iter()
            .filter(|v| v["status"] == 0 && v["plan_cached"] == false)
            .count();
        assert_eq!(planned, 1, "{what}: stage 2 planned once");
        // Which vCPU's write was processed when (B: BSP, A: AP); not asserted, the
        // interleaving is the scheduler's.
        println!("{what}: order of processing {order}");
        let launch = check_launches(
            &records,
            &[&stage1, &stage2],
            platform,
            (host.vcpu_signature(), 2),
            &what,
        );
        assert_eq!(launch[1]["switch"]["to"], "handed-over", "{what}");
        let exits: Vec<&Value> = records_of(&records, "exit");
        assert_eq!(
            exits[0]["vmlaunchupdate"]["requests"],
            2 * RACE_WRITES as u64,
            "{what}: {}",
            exits[0]
        );
        assert_eq!(exits[0]["vmlaunchupdate"]["over_limit"], 0, "{what}");
    }
}

/// Mode 8's delays: spins between "the AP is about to write" and the BSP's reset, last
/// `u64::MAX` (the BSP waits for the AP's write to finish, so it must take effect).
const DELAYS: [u64; 6] = [0, 1_000, 10_000, 100_000, 1_000_000, u64::MAX];

/// Mode 8: the AP writes the structure (stage 2) while the BSP resets, then the BSP's
/// "back to stage 1" write after its reset request. The AP's write either was processed
/// before the session acted on the reset — one accepted swap record, stage 2 runs next — or
/// not at all — no record, stage 1 runs again; never anything else. The BSP's write after
/// the reset is never processed. Swept over [`DELAYS`]; which outcome each run had is
/// printed; the last must take effect.
#[test]
fn fuki_write_during_reset() {
    let Some((host, stage1, stage2)) = inputs() else {
        return;
    };
    for (platform, emulated) in PLATFORMS {
        let mut outcomes = Vec::new();
        for delay in DELAYS {
            let (code, launches, out, records) =
                run_stage1_on(&host, platform, emulated, (8, delay), 2, &stage1, &stage2);
            let what = format!("{platform} emulated={emulated} mode 8 delay {delay}");
            assert_eq!(code, EXIT_POWER_OFF, "{what}\n{out}");
            assert_eq!(launches, 2, "{what}\n{out}");
            assert!(out.contains("fuki: mode 8, AP up"), "{what}\n{out}");
            assert!(!out.contains("the reset returned"), "{what}\n{out}");
            let swaps: Vec<&Value> = records_of(&records, "swap");
            assert!(swaps.len() <= 1, "{what}: {swaps:?}");
            let taken = match swaps.first() {
                Some(rec) => {
                    assert_eq!(rec["generation"], 1, "{what}: {rec}");
                    assert_eq!(rec["request"], "bundle", "{what}: {rec}");
                    assert_eq!(rec["status"], 0, "{what}: {rec}");
                    assert_eq!(rec["new_bundle_sha256"], sha(&stage2), "{what}: {rec}");
                    true
                }
                None => false,
            };
            let exits: Vec<&Value> = records_of(&records, "exit");
            assert_eq!(
                exits[0]["vmlaunchupdate"]["requests"],
                u64::from(taken),
                "{what}: {}",
                exits[0]
            );
            let sig = host.vcpu_signature();
            if taken {
                let launch =
                    check_launches(&records, &[&stage1, &stage2], platform, (sig, 2), &what);
                assert_eq!(launch[1]["switch"]["to"], "handed-over", "{what}");
                assert!(
                    out.contains("hello from relaunch guest\ngeneration 2"),
                    "{what}\n{out}"
                );
                assert!(!out.contains("fuki: stage 1 again"), "{what}\n{out}");
            } else {
                let launch =
                    check_launches(&records, &[&stage1, &stage1], platform, (sig, 2), &what);
                assert_eq!(launch[1]["switch"], Value::Null, "{what}");
                assert!(out.contains("fuki: stage 1 again"), "{what}\n{out}");
                assert!(!out.contains("hello from relaunch guest"), "{what}\n{out}");
            }
            if delay == u64::MAX {
                assert!(taken, "{what}: a finished write takes effect at the reset");
            }
            outcomes.push((
                delay,
                if taken {
                    "at this reset"
                } else {
                    "not processed"
                },
            ));
        }
        println!("{platform} emulated={emulated}: the AP's write {outcomes:?}");
    }
}
