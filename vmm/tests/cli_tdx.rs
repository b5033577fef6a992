//! `relaunch run --platform tdx` on a host without TDX: exit 2 before creating anything,
//! one sentence naming what is missing, no audit record.

mod cli_common;

use cli_common::relaunch;

#[test]
fn run_tdx_without_tdx_exits_2_before_creating_anything() {
    // Probe what this host's KVM offers: a host with VM type 5 (`KVM_X86_TDX_VM` in
    // `KVM_CAP_VM_TYPES`) would launch instead; without /dev/kvm run fails earlier (exit 1).
    let Ok(kvm) = relaunch::sys::kvm::Kvm::open() else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but /dev/kvm is missing"
        );
        eprintln!("SKIPPED: no /dev/kvm");
        return;
    };
    let types = kvm.check_extension(relaunch::sys::kvm::KVM_CAP_VM_TYPES);
    if types & (1 << 5) != 0 {
        eprintln!("SKIPPED: this host's KVM offers TDX VMs (KVM_CAP_VM_TYPES {types:#x})");
        return;
    }
    let image = concat!(env!("CARGO_MANIFEST_DIR"), "/../boot-images/out/hello.igvm");
    if !std::path::Path::new(image).exists() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but {image} is missing"
        );
        eprintln!("SKIPPED: {image} missing (run cargo xtask build-images)");
        return;
    }
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
