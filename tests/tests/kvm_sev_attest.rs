//! The SEV attestation round trip on `emulated:sev` and `emulated:sev-es`, end to end on real KVM: this test plays
//! the guest owner over the control socket. For each of two launches (a relaunch gets its
//! own turn and a fresh MNONCE) it waits for the owner's turn, checks `LAUNCH_MEASURE`'s MAC
//! with its TIK against the digest it computes itself (`measure_bundle`, the CLI's own
//! function), wraps a secret with its TEK for that MAC, injects it at the GPA the guest's
//! firmware declares (`SEV_SECRET_GPA`, `docs/boot-images.md`), and continues; the guest
//! (`sevinfo`) prints the SHA-256 of the secret it finds there. A secret wrapped for the
//! first launch's MAC is refused in the second.

mod kvm_common;

use std::sync::Arc;

use kvm_common::*;
use relaunch::backend::emulated::EmulatedBackend;
use relaunch::backend::{Backend, OwnerGate};
use relaunch::control::{Control, ControlServer};
use relaunch::launch::Launch;
use relaunch::model::{ModelConfig, MODEL_FW};
use relaunch::session::{run_session, EXIT_POWER_OFF};
use relaunch_core::measure::Measurement;
use relaunch_core::owner::{self, LaunchMeasure, TransportKeys};
use relaunch_core::plan::Platform;
use serde_json::Value;
use sha2::{Digest, Sha256};

const MEM: u64 = 64 << 20;
/// `layout::SEV_SECRET_GPA` of the boot images (`boot-images/guests/src/layout.rs`).
const SEV_SECRET_GPA: u64 = 0x9000;
const TIK: [u8; 16] = *b"owner-tik-000001";
const TEK: [u8; 16] = *b"owner-tek-000001";

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// The guest's secret format: u32 LE length, the bytes, padded to the 16-byte multiple
/// `LAUNCH_SECRET` needs.
fn secret_blob(secret: &[u8]) -> Vec<u8> {
    let mut b = (secret.len() as u32).to_le_bytes().to_vec();
    b.extend_from_slice(secret);
    b.resize(b.len().div_ceil(16) * 16, 0);
    b
}

/// The `inject-secret` request for `secret` wrapped for `mac`.
fn inject_line(mac: &[u8; 32], secret: &[u8], iv: [u8; 16]) -> String {
    let mut packet = secret_blob(secret);
    let keys = TransportKeys { tek: TEK, tik: TIK };
    let header = owner::wrap_secret(&keys, &iv, 0, mac, &mut packet).unwrap();
    format!(
        r#"{{"cmd":"inject-secret","header":"{}","packet":"{}","gpa":{SEV_SECRET_GPA}}}"#,
        relaunch::json::hex(&header.to_bytes()),
        relaunch::json::hex(&packet)
    )
}

#[test]
fn emulated_sev_attestation_round_trip() {
    round_trip(Platform::Sev, 0x1);
}

#[test]
fn emulated_sev_es_attestation_round_trip() {
    round_trip(Platform::SevEs, 0x3);
}

/// The round trip (module doc) on `platform`, whose guest reports `sev_status`.
fn round_trip(platform: Platform, sev_status: u64) {
    let Some(host) = host(false) else { return };
    let Some((_, bundle)) = image("sevinfo") else {
        return;
    };
    let cfg_l = launch_config(platform, 1, MEM, host.vcpu_signature());
    // The owner's own expectation: the digest and policy `relaunch measure` computes.
    let m = relaunch::cli::measure::measure_bundle(&bundle, &cfg_l, 1).unwrap();
    let digest = match m.measurement {
        Measurement::Sev(d) | Measurement::SevEs(d) => d,
        other => panic!("not a SEV digest: {other:?}"),
    };
    let policy = u32::try_from(m.policy).unwrap();
    let launch = Arc::new(Launch::new(bundle, &cfg_l).unwrap());
    let backend = EmulatedBackend::new(
        platform,
        &host.kvm,
        ModelConfig {
            vcpu_sig: host.vcpu_signature(),
            tik: TIK,
            tek: TEK,
            mnonce: None,
            ..ModelConfig::default()
        },
    )
    .unwrap();
    let dir = std::env::temp_dir().join(format!(
        "relaunch-sev-attest-{platform}-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("ctl.sock");
    let _ = std::fs::remove_file(&sock);
    let control = Arc::new(Control::new(true));
    assert!(backend.set_owner_gate(Some(Arc::clone(&control) as Arc<dyn OwnerGate>)));
    let server = ControlServer::start(&sock, Arc::clone(&control)).unwrap();
    let mut cfg = config(MEM, None, false);
    cfg.control = Some(control);
    cfg.fw_cfg_files = vec![(
        "opt/relaunch/reboot-until".into(),
        2u64.to_le_bytes().to_vec(),
    )];
    let session = std::thread::spawn(move || {
        let r = run_session(&backend, launch, &cfg);
        (r, output(&cfg))
    });
    let mut c = Client::connect(&sock);
    let secrets: [&[u8]; 2] = [b"the first launch's secret", b"a second, different secret!"];
    let mut last_mac: Option<[u8; 32]> = None;
    let mut nonces = Vec::new();
    for (i, secret) in secrets.iter().enumerate() {
        let s = c.wait_status(&["\"state\":\"awaiting-secret\"", "\"launch_measure_mac\":\""]);
        let st: Value = serde_json::from_str(&s).unwrap();
        let mac: [u8; 32] = unhex(st["launch_measure_mac"].as_str().unwrap())
            .try_into()
            .unwrap();
        let mnonce: [u8; 16] = unhex(st["mnonce"].as_str().unwrap()).try_into().unwrap();
        // The MAC proves the launch the owner expects, keyed with its TIK.
        owner::verify_launch_measure(
            &TIK,
            MODEL_FW,
            policy,
            &digest,
            &LaunchMeasure {
                measure: mac,
                mnonce,
            },
        )
        .unwrap_or_else(|e| panic!("launch {}: MEASURE does not verify: {e:?}", i + 1));
        nonces.push(mnonce);
        if let Some(old) = last_mac {
            // A secret wrapped for the previous launch does not verify in this one.
            let r = c.ask(&inject_line(&old, b"replayed", [9; 16]));
            assert!(r.contains("\"ok\":false"), "{r}");
            assert!(r.contains("BAD_MEASUREMENT"), "{r}");
        }
        let r = c.ask(&inject_line(&mac, secret, [i as u8 + 1; 16]));
        assert_eq!(r.trim(), "{\"ok\":true}", "launch {}", i + 1);
        assert_eq!(c.ask(r#"{"cmd":"continue"}"#).trim(), "{\"ok\":true}");
        last_mac = Some(mac);
    }
    let (r, out) = session.join().unwrap();
    assert_eq!(r.exit_code, EXIT_POWER_OFF, "{:?}\n{out}", r.outcome);
    assert_eq!(r.launches, 2, "{out}");
    assert_ne!(nonces[0], nonces[1], "a relaunch has a fresh MNONCE");
    for secret in secrets {
        let want = format!(
            "sevinfo: secret sha256={}",
            relaunch::json::hex(&Sha256::digest(secret))
        );
        assert_eq!(out.matches(&want).count(), 1, "{want} in\n{out}");
    }
    let status = format!("sevinfo: sev_status={sev_status:#x}");
    assert_eq!(out.matches(&status).count(), 2, "{out}");
    drop(c);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
