//! `cargo xtask bench linux` end to end (the xtask binary `cargo xtask` runs), with a
//! 10-second probe: on a host whose KVM cannot run Linux (this project's machines, nested
//! PVM) it must exit 0 within that bound plus set-up, with one `SKIPPED:` line that says
//! what was seen; on a host that runs Linux, print both phases with a ratio to QEMU.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const PROBE_SECS: u64 = 10;

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

#[test]
fn bench_linux_skips_saying_what_it_saw_or_prints_ratios() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["bench", "linux", "--runs", "1", "--probe-secs"])
        .arg(PROBE_SECS.to_string())
        .output()
        .expect("running the xtask binary");
    let elapsed = start.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}\n{stdout}\n{stderr}", out.status);
    assert!(stdout.starts_with("host: "), "{stdout}");

    let kernel = root.join(".oracles/linux/vmlinuz").is_file();
    let qemu = Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let kvm = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    let skipped: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("SKIPPED: "))
        .collect();
    match skipped[..] {
        [reason] if !kernel => {
            assert!(!ci(), "CI=true but no kernel: {reason}");
            assert!(
                reason.starts_with("no kernel at .oracles/linux/vmlinuz"),
                "{reason}"
            );
        }
        [reason] if !qemu => {
            assert!(!ci(), "CI=true but no QEMU: {reason}");
            assert!(
                reason.starts_with("no working qemu-system-x86_64"),
                "{reason}"
            );
        }
        [reason] if !kvm => {
            assert!(!ci(), "CI=true but no /dev/kvm: {reason}");
            assert!(
                reason.starts_with("/dev/kvm is not usable here"),
                "{reason}"
            );
        }
        // (A later reason may quote the kernel banner, which names gcc: match the start.)
        [reason] if reason.starts_with("no gcc") || reason.starts_with("gcc -static failed") => {
            assert!(!ci(), "CI=true but no static gcc: {reason}");
            assert!(reason.contains("libc6-dev"), "{reason}");
        }
        [reason] => {
            // The probe ran, under the limit given, and did not reach the init: the reason
            // says how far the kernel got, how QEMU ended and its last console line.
            let head = format!("QEMU -accel kvm did not reach init within {PROBE_SECS} s: ");
            assert!(reason.starts_with(&head), "{reason}");
            assert!(
                reason.contains("no kernel banner (\"Linux version\")")
                    || reason.contains("the kernel banner after "),
                "{reason}"
            );
            assert!(
                reason.contains("still running, stopped at the limit")
                    || reason.contains("QEMU -accel kvm exited ("),
                "{reason}"
            );
            assert!(
                reason.contains("last console line \"") || reason.contains("no console output"),
                "{reason}"
            );
            let probe = format!("probe ({PROBE_SECS} s at most): qemu-system-x86_64 ");
            assert!(stdout.contains(&probe), "{stdout}");
            // Bounded: the probe's limit, plus building the init and starting QEMU.
            assert!(
                elapsed < Duration::from_secs(PROBE_SECS + 30),
                "took {elapsed:?}"
            );
            // Nothing was built or measured after the skip.
            assert!(!stdout.contains("| boot to init |"), "{stdout}");
            println!("SKIPPED as expected here after {elapsed:.1?}: {reason}");
        }
        [] => {
            // Linux runs under KVM here: one run of each, and a ratio per phase.
            assert!(stdout.contains("probe: QEMU -accel kvm reached init after"));
            for phase in ["boot to init", "reboot to init"] {
                let row = stdout
                    .lines()
                    .find(|l| l.starts_with(&format!("| {phase} |")))
                    .unwrap_or_else(|| panic!("no {phase} row:\n{stdout}"));
                let cells: Vec<&str> = row.split('|').map(str::trim).collect();
                // "", phase, QEMU ms, relaunch ms, ratio, runs, "".
                let r: f64 = cells[4]
                    .strip_suffix('x')
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("{row}"));
                assert!(r > 0.0 && r.is_finite(), "{row}");
                assert_eq!(cells[5], "1", "{row}");
            }
        }
        _ => panic!("more than one SKIPPED line:\n{stdout}"),
    }
}
