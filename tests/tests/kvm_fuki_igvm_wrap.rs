//! Interop with `igvm-wrap` (crate `virtfw-igvm-tools`, installed by `scripts/setup.sh`):
//! a bundle it makes from Debian's OVMF (`.oracles/ovmf/usr/share/ovmf/OVMF.fd`, fetched by
//! `scripts/oracles.sh`; `igvm-wrap --snp` gives it a NATIVE and an SEV_SNP view) is handed
//! over by the `fuki` stage 1 guest through `etc/vmlaunchupdate`:
//! - native and `emulated:snp`: accepted (status 0); the swap record's prediction and the
//!   handed-over launch's `launch_measurement` (emulated SNP) equal what `relaunch measure`
//!   computes for the igvm-wrap file (igvm-wrap itself prints no measurement);
//! - `emulated:tdx`: refused with status 1 (igvm-wrap writes no TDX view), stage 1 again.
//!
//! OVMF is not expected to boot usefully under the nested hypervisor: once the control
//! socket's `status` shows generation 2 running, the test powers it off (a reset loop ends
//! at `max_reboots` instead).

mod kvm_common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvm_common::*;
use relaunch::control::Control;
use relaunch::launch::Launch;
use relaunch::session::{run_session, EXIT_POWER_OFF};
use relaunch::vstate::Host;
use relaunch_core::plan::Platform;
use serde_json::Value;

const MEM: u64 = 64 << 20;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// `igvm-wrap` on PATH or in cargo's bin directory (where `cargo install` puts it:
/// `$CARGO_HOME/bin`, else `~/.cargo/bin`), or a reported skip (an assertion under
/// `CI=true`: the set-up script installs it).
fn igvm_wrap() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(c) = std::env::var_os("CARGO_HOME") {
        dirs.push(PathBuf::from(c).join("bin"));
    }
    if let Some(h) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(h).join(".cargo/bin"));
    }
    let found = dirs
        .into_iter()
        .map(|d| d.join("igvm-wrap"))
        .find(|f| f.is_file());
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but igvm-wrap is not on PATH (scripts/setup.sh installs it)"
        );
        println!("SKIPPED: igvm-wrap is not on PATH (cargo install --locked virtfw-igvm-tools)");
    }
    found
}

/// Debian's OVMF.fd, or a reported skip (an assertion under `CI=true`).
fn ovmf() -> Option<PathBuf> {
    let path = repo_root().join(".oracles/ovmf/usr/share/ovmf/OVMF.fd");
    if path.is_file() {
        return Some(path);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true but {} is missing (scripts/oracles.sh)",
        path.display()
    );
    println!(
        "SKIPPED: {} is missing (run scripts/oracles.sh)",
        path.display()
    );
    None
}

/// Runs `fuki` handing over `stage2`; powers the session off through the control once
/// generation 2 runs. Returns (exit code, launches, output, audit records).
fn run_handover(
    host: &Arc<Host>,
    platform: Platform,
    emulated: bool,
    stage1: &[u8],
    stage2: &[u8],
) -> (u8, u64, String, Vec<Value>) {
    let cfg_l = launch_config(platform, 1, MEM, host.vcpu_signature());
    let launch = Arc::new(Launch::new(stage1.to_vec(), &cfg_l).unwrap());
    let audit = std::env::temp_dir().join(format!(
        "relaunch-fuki-igvm-wrap-{platform}-{}.jsonl",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&audit);
    let mut cfg = with_audit(config(MEM, Some(3), false), &audit);
    cfg.vm_launch_update = true;
    cfg.fw_cfg_files = vec![("opt/relaunch/next-bundle".into(), stage2.to_vec())];
    let control = Arc::new(Control::new(false));
    cfg.control = Some(Arc::clone(&control));
    let host = Arc::clone(host);
    let session = std::thread::spawn(move || {
        let b = backend_for(platform, emulated, &host);
        let r = run_session(&*b, launch, &cfg);
        (r, output(&cfg))
    });
    // Generation 2 running: OVMF got its launch; stop it (bounded wait).
    let deadline = Instant::now() + Duration::from_secs(120);
    while !session.is_finished() && Instant::now() < deadline {
        let s: Value = serde_json::from_str(&control.handle(r#"{"cmd":"status"}"#)).unwrap();
        if s["generation"] == 2 && s["state"] == "running" {
            std::thread::sleep(Duration::from_millis(200));
            let _ = control.handle(r#"{"cmd":"power-off"}"#);
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if !session.is_finished() {
        // A launch that never got to "running" within the deadline: end it all the same.
        let _ = control.handle(r#"{"cmd":"power-off"}"#);
    }
    let (r, out) = session.join().unwrap();
    let records = take_audit_records(&audit);
    (r.exit_code, r.launches, out, records)
}

#[test]
fn igvm_wrap_ovmf_is_handed_over_and_measures_the_same() {
    let Some(host) = host(false) else { return };
    let (Some(wrap), Some(ovmf)) = (igvm_wrap(), ovmf()) else {
        return;
    };
    let Some(stage1) = image("fuki").map(|(_, b)| b) else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("relaunch-igvm-wrap-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let bundle_path = dir.join("ovmf.igvm");
    let st = std::process::Command::new(&wrap)
        .arg("-i")
        .arg(&ovmf)
        .arg("-o")
        .arg(&bundle_path)
        .arg("--snp")
        .output()
        .unwrap();
    assert!(st.status.success(), "igvm-wrap: {st:?}");
    let bundle = std::fs::read(&bundle_path).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    println!("igvm-wrap made a bundle of {} bytes", bundle.len());
    let sig = host.vcpu_signature();
    let cfg_snp = launch_config(Platform::Snp, 1, MEM, sig);
    let measured = relaunch::cli::measure::measure_bundle(&bundle, &cfg_snp, 1)
        .unwrap()
        .measurement
        .to_string();
    for (platform, emulated) in [
        (Platform::Native, false),
        (Platform::Snp, true),
        (Platform::Tdx, true),
    ] {
        let what = format!("{platform} emulated={emulated}");
        let (code, launches, out, records) =
            run_handover(&host, platform, emulated, &stage1, &bundle);
        let swaps: Vec<&Value> = records_of(&records, "swap");
        assert_eq!(swaps.len(), 1, "{what}: {records:?}\n{out}");
        let swap = swaps[0];
        let launch: Vec<&Value> = records_of(&records, "launch");
        assert_eq!(
            launch.first().map(|l| &l["bundle_sha256"]),
            Some(&Value::from(sha(&stage1)))
        );
        if platform == Platform::Tdx {
            // No TDX view in igvm-wrap's bundle: refused at the write, stage 1 again.
            assert!(out.contains("hand-over status 1"), "{what}\n{out}");
            assert_eq!(swap["status"], 1, "{what}: {swap}");
            assert!(out.contains("fuki: stage 1 again"), "{what}\n{out}");
            assert_eq!(code, EXIT_POWER_OFF, "{what}\n{out}");
            assert_eq!(launches, 2, "{what}");
            println!("{what}: refused: {}", swap["result"]);
            continue;
        }
        assert!(out.contains("hand-over status 0"), "{what}\n{out}");
        assert_eq!(swap["status"], 0, "{what}: {swap}");
        assert_eq!(swap["new_bundle_sha256"], sha(&bundle), "{what}: {swap}");
        assert!(launches >= 2, "{what}: {launches} {records:?}\n{out}");
        let second = launch.get(1).expect("a second launch");
        assert_eq!(second["bundle_sha256"], sha(&bundle), "{what}: {second}");
        assert_eq!(second["switch"]["to"], "handed-over", "{what}: {second}");
        if platform == Platform::Snp {
            assert_eq!(swap["predicted_measurement"], measured.as_str(), "{what}");
            assert_eq!(second["predicted_measurement"], measured.as_str(), "{what}");
            assert_eq!(second["launch_measurement"], measured.as_str(), "{what}");
        }
        let last_exit = records.iter().rev().find(|v| v["event"] == "exit");
        println!(
            "{what}: handed over, {launches} launches, exit code {code} ({}), \
             launch_measurement {}",
            last_exit.map_or(Value::Null, |e| e["reason"].clone()),
            second["launch_measurement"]
        );
    }
}
