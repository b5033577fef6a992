//! The emulated confidential platforms on real KVM (`--platform emulated:<p>`): every boot
//! image under every emulated platform, taken through 3 relaunches (4 launches: the guests
//! reset while fw_cfg `opt/relaunch/reboot-until` is above their generation). Each launch
//! record says `"emulated":true` and carries the model's `launch_measurement`, which must
//! equal the predicted measurement and `relaunch measure`'s (`measure_bundle`, the CLI's own
//! function); the guest's own output shows it ran every launch.
//!
//! A missing image prints `SKIPPED: ...` (under `CI=true` it fails instead).

mod kvm_common;

use std::sync::Arc;

use kvm_common::*;
use relaunch::backend::emulated::EmulatedBackend;
use relaunch::backend::Backend;
use relaunch::launch::Launch;
use relaunch::model::ModelConfig;
use relaunch::session::{run_session, EXIT_POWER_OFF, EXIT_USAGE};
use relaunch::vcpu::Outcome;
use relaunch_core::launch::SnpIdBlock;
use relaunch_core::plan::Platform;
use serde_json::Value;

const MEM: u64 = 64 << 20;
const LAUNCHES: u64 = 4;

/// Runs `name` on emulated `platform` through `LAUNCHES` launches and checks the output and
/// the audit records.
fn run_emulated(name: &str, platform: Platform, vcpus: u32, want: &[(&str, u64)]) {
    let Some(host) = host(false) else { return };
    let Some(bundle) = image(name).map(|(_, b)| b) else {
        return;
    };
    let sig = host.vcpu_signature();
    let cfg_l = launch_config(platform, vcpus, MEM, sig);
    let measured = relaunch::cli::measure::measure_bundle(&bundle, &cfg_l, 1)
        .unwrap_or_else(|e| panic!("{name} {platform}: measure: {e:?}"))
        .measurement
        .to_string();
    let launch = Arc::new(Launch::new(bundle.clone(), &cfg_l).expect("plan"));
    let backend = EmulatedBackend::new(
        platform,
        &host.kvm,
        ModelConfig {
            vcpu_sig: sig,
            ..ModelConfig::default()
        },
    )
    .expect("emulated backend");
    assert!(backend.emulated());
    let audit = std::env::temp_dir().join(format!(
        "relaunch-emu-{name}-{platform}-{}.jsonl",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&audit);
    let mut cfg = with_audit(config(MEM, None, false), &audit);
    cfg.fw_cfg_files = vec![(
        "opt/relaunch/reboot-until".into(),
        LAUNCHES.to_le_bytes().to_vec(),
    )];
    let r = run_session(&backend, launch, &cfg);
    let out = output(&cfg);
    assert_eq!(
        r.exit_code, EXIT_POWER_OFF,
        "{name} {platform}: {:?}\n{out}",
        r.outcome
    );
    assert_eq!(r.launches, LAUNCHES, "{name} {platform}\n{out}");
    for &(w, n) in want {
        assert_eq!(
            out.matches(w).count() as u64,
            n,
            "{name} {platform}: {w:?} {n} times in\n{out}"
        );
    }
    let text = std::fs::read_to_string(&audit).unwrap();
    let launches: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["event"] == "launch")
        .collect();
    assert_eq!(launches.len() as u64, LAUNCHES, "{text}");
    for (i, rec) in launches.iter().enumerate() {
        assert_eq!(rec["generation"], i as u64 + 1);
        assert_eq!(rec["emulated"], true, "{rec}");
        assert_eq!(rec["platform"], platform.name(), "{rec}");
        assert_eq!(rec["predicted_measurement"], measured.as_str(), "{rec}");
        assert_eq!(rec["launch_measurement"], measured.as_str(), "{rec}");
    }
    let _ = std::fs::remove_file(&audit);
    // A relaunch loop keeps no per-launch log in the model (it would grow for ever).
    assert!(backend.model().events().is_empty());
}

const PLATFORMS: [Platform; 4] = [Platform::Snp, Platform::SevEs, Platform::Sev, Platform::Tdx];

#[test]
fn emulated_hello_on_every_platform() {
    for p in PLATFORMS {
        run_emulated("hello", p, 1, &[("hello from relaunch guest", LAUNCHES)]);
    }
}

#[test]
fn emulated_reboot_loop_on_every_platform() {
    for p in PLATFORMS {
        run_emulated(
            "reboot-loop",
            p,
            1,
            &[
                ("generation ", LAUNCHES),
                ("reboot-loop: done after 4 launches", 1),
            ],
        );
    }
}

#[test]
fn emulated_smp_on_every_platform() {
    for p in PLATFORMS {
        run_emulated("smp", p, 2, &[("smp: 2 cpus", LAUNCHES)]);
    }
}

#[test]
fn emulated_junk_on_every_platform() {
    for p in PLATFORMS {
        run_emulated("junk", p, 1, &[("junk: survived", LAUNCHES)]);
    }
}

/// The SEV guest view: CPUID 0x8000001F.EAX has SEV (bit 1), SEV-ES (bit 3), SNP (bit 4) as
/// the platform has them, EBX the C-bit 47 and a physical-address reduction of 1 (bits 11:6),
/// and `SEV_STATUS` (MSR 0xC0010131) bit 0 SEV, bit 1 SEV-ES, bit 2 SNP (AMD APM vol. 2
/// §15.34.10, vol. 3 CPUID Fn8000_001F); page tables with the C-bit set reach RAM. A TD
/// sees no SEV leaf.
#[test]
fn emulated_sevinfo_sees_its_platform() {
    for (p, lines) in [
        (
            Platform::Sev,
            &[
                "sevinfo: cpuid 8000001f eax=0x00000002 ebx=0x0000006f",
                "sevinfo: sev_status=0x1",
                "sevinfo: c-bit paging ok (c-bit 47,",
            ][..],
        ),
        (
            Platform::SevEs,
            &[
                "sevinfo: cpuid 8000001f eax=0x0000000a ebx=0x0000006f",
                "sevinfo: sev_status=0x3",
                "sevinfo: c-bit paging ok (c-bit 47,",
            ][..],
        ),
        (
            Platform::Snp,
            &[
                "sevinfo: cpuid 8000001f eax=0x0000001a ebx=0x0000006f",
                "sevinfo: sev_status=0x7",
                "sevinfo: c-bit paging ok (c-bit 47,",
            ][..],
        ),
        (
            Platform::Tdx,
            &[
                "sevinfo: cpuid 8000001f eax=0x00000000",
                "sevinfo: sev_status not read",
            ][..],
        ),
    ] {
        let want: Vec<(&str, u64)> = lines
            .iter()
            .map(|l| (*l, LAUNCHES))
            .chain([
                ("sevinfo: done", LAUNCHES),
                ("sevinfo: secret none", LAUNCHES),
            ])
            .collect();
        run_emulated("sevinfo", p, 1, &want);
    }
}

/// A launch the platform refuses is never run and ends with exit 2, with the reason: an SNP
/// policy the core plans (bit 24 is not one the core rejects) but the emulated host's KVM does
/// not accept (the model's `KVM_X86_SNP_POLICY_BITS`: bits 0–20, refused before the VM is
/// created, as the real backend does), and an ID block whose launch digest is not the
/// launch's (the firmware's BAD_MEASUREMENT at `SNP_LAUNCH_FINISH`, SEV-SNP ABI).
#[test]
fn emulated_refused_launch_never_runs() {
    let Some(host) = host(false) else { return };
    let Some((_, bundle)) = image("hello") else {
        return;
    };
    let sig = host.vcpu_signature();
    let mut bad_policy = launch_config(Platform::Snp, 1, MEM, sig);
    bad_policy.policy = Some(0x3_0000 | (1 << 24));
    let policy = Launch::new(bundle.clone(), &bad_policy).expect("the core plans this policy");
    let good = launch_config(Platform::Snp, 1, MEM, sig);
    let mut block = [0u8; 96];
    block[..48].copy_from_slice(&[0xAB; 48]); // not this launch's digest
    block[80..84].copy_from_slice(&1u32.to_le_bytes());
    block[88..96].copy_from_slice(&0x3_0000u64.to_le_bytes());
    let id = SnpIdBlock {
        id_block: block,
        id_auth: [0; 4096],
        author_key_enabled: false,
    };
    let id_block = Launch::with_id_block(bundle, &good, Some(id)).expect("plan with an ID block");
    for (launch, why) in [
        (policy, "KVM_X86_SNP_POLICY_BITS"),
        (id_block, "BAD_MEASUREMENT"),
    ] {
        let backend = EmulatedBackend::new(Platform::Snp, &host.kvm, ModelConfig::default())
            .expect("backend");
        let cfg = config(MEM, None, false);
        let r = run_session(&backend, Arc::new(launch), &cfg);
        assert_eq!(r.exit_code, EXIT_USAGE, "{:?}", r.outcome);
        assert!(
            matches!(&r.outcome, Outcome::LaunchRefused(m) if m.contains(why)),
            "{why}: {:?}",
            r.outcome
        );
        assert_eq!(r.launches, 0, "{:?}", r.outcome);
        assert!(output(&cfg).is_empty(), "the guest ran: {}", output(&cfg));
    }
}

/// A handed-over launch the platform refuses when its VM is built (here: an SNP policy the
/// emulated host's KVM does not accept, which the core plans) never replaces the working
/// one: the session records `handover-failed` and runs the launch before it again, with the
/// next generation (`docs/fuki.md`, "A hand-over that cannot be launched").
#[test]
fn emulated_refused_hand_over_falls_back_to_the_running_launch() {
    use relaunch::launch::{By, HandOver};
    let Some(host) = host(false) else { return };
    let Some((_, bundle)) = image("hello") else {
        return;
    };
    let sig = host.vcpu_signature();
    let good = launch_config(Platform::Snp, 1, MEM, sig);
    let mut bad_policy = good;
    bad_policy.policy = Some(0x3_0000 | (1 << 24));
    let first = Arc::new(Launch::new(bundle.clone(), &good).expect("plan"));
    let refused = Arc::new(Launch::new(bundle, &bad_policy).expect("the core plans this policy"));
    for (by, one_shot) in [(By::Host, false), (By::Guest, true)] {
        let backend = EmulatedBackend::new(Platform::Snp, &host.kvm, ModelConfig::default())
            .expect("backend");
        let audit = std::env::temp_dir().join(format!(
            "relaunch-emu-refused-handover-{}-{}.jsonl",
            by.name(),
            std::process::id()
        ));
        let _ = std::fs::remove_file(&audit);
        let mut cfg = with_audit(config(MEM, None, false), &audit);
        // hello resets at generation 1 and powers off at generation 2.
        cfg.fw_cfg_files = vec![(
            "opt/relaunch/reboot-until".into(),
            2u64.to_le_bytes().to_vec(),
        )];
        cfg.next.hand_over(HandOver {
            launch: Arc::clone(&refused),
            by,
            one_shot,
        });
        let r = run_session(&backend, Arc::clone(&first), &cfg);
        let out = output(&cfg);
        assert_eq!(r.exit_code, EXIT_POWER_OFF, "{:?}\n{out}", r.outcome);
        assert_eq!(r.launches, 2, "{out}");
        assert_eq!(out.matches("hello from relaunch guest").count(), 2, "{out}");
        let records = take_audit_records(&audit);
        let events: Vec<&str> = records.iter().filter_map(|v| v["event"].as_str()).collect();
        let failed: Vec<&Value> = records
            .iter()
            .filter(|v| v["event"] == "handover-failed")
            .collect();
        assert_eq!(failed.len(), 1, "{events:?}");
        assert_eq!(failed[0]["generation"], 2, "{}", failed[0]);
        assert_eq!(failed[0]["by"], by.name(), "{}", failed[0]);
        assert_eq!(failed[0]["one_shot"], one_shot, "{}", failed[0]);
        assert!(
            failed[0]["reason"]
                .as_str()
                .unwrap()
                .contains("KVM_X86_SNP_POLICY_BITS"),
            "{}",
            failed[0]
        );
        let launches: Vec<&Value> = records.iter().filter(|v| v["event"] == "launch").collect();
        assert_eq!(launches.len(), 2, "{events:?}");
        for (l, g) in launches.iter().zip([1, 2]) {
            assert_eq!(l["generation"], g, "{l}");
            assert_eq!(l["bundle_sha256"], first.bundle_sha256(), "{l}");
            assert_eq!(l["launch_measurement"], l["predicted_measurement"], "{l}");
        }
        // The host's launch is the first one again.
        assert_eq!(cfg.next.base().unwrap().id(), first.id());
    }
}
