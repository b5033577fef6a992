//! `relaunch run --platform tdx` on a host without TDX: exit 2 before creating anything,
//! one sentence naming what is missing, no audit record.

mod cli_common;

use cli_common::relaunch;

#[test]
fn run_tdx_without_tdx_exits_2_before_creating_anything() {
    // A host with TDX enabled in KVM (`kvm_intel.tdx=Y`) would launch instead.
    let tdx = std::fs::read_to_string("/sys/module/kvm_intel/parameters/tdx").unwrap_or_default();
    if tdx.trim() == "Y" {
        eprintln!("SKIPPED: this host has TDX");
        return;
    }
    let image = concat!(env!("CARGO_MANIFEST_DIR"), "/../boot-images/out/hello.igvm");
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cli-tests");
    std::fs::create_dir_all(&dir).unwrap();
    let audit = dir.join("tdx-audit.jsonl");
    let _ = std::fs::remove_file(&audit);
    let r = relaunch(&[
        "run",
        image,
        "--platform",
        "tdx",
        "--audit-log",
        audit.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert_eq!(r.stdout, "");
    // No audit record: the log is not even created.
    assert!(!audit.exists());
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{}", r.stderr);
    assert!(
        lines[0].contains("platform tdx is not available here"),
        "{}",
        r.stderr
    );
}
