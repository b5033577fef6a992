//! `relaunch trace` end to end: the real backends against the kernel model. For every
//! platform and bundle: the call sequence has the order the kernel documentation requires
//! (`Documentation/virt/kvm/x86/amd-memory-encryption.rst` launch flows,
//! `Documentation/virt/kvm/x86/intel-tdx.rst` "TD setup"; summarised in
//! `../shared/spec/kvm-coco-abi.md` §1.4, §3.1), the last line equals `relaunch measure`
//! (computed here from the core, not read from the trace), and `scripts/trace_digest.py`
//! recomputes the same digest from the `measured` lines alone.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use relaunch_core::measure::expected;
use relaunch_core::plan::{plan, LaunchConfig, Platform};
use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn bundle(rel: &str) -> Option<PathBuf> {
    let p = root().join(rel);
    if p.exists() {
        Some(p)
    } else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but {} is missing",
            p.display()
        );
        eprintln!(
            "SKIPPED: {} absent (cargo xtask build-images / scripts/oracles.sh)",
            p.display()
        );
        None
    }
}

/// EPYC-v4's CPUID(1).EAX (QEMU `target/i386/cpu.c`), given as --vcpu-sig.
const SIG: u32 = 0x0080_0F12;

fn trace(file: &Path, platform: &str, vcpus: u32, extra: &[&str]) -> Vec<Value> {
    let mut args: Vec<OsString> = vec![
        file.into(),
        "--platform".into(),
        platform.into(),
        "--vcpus".into(),
        vcpus.to_string().into(),
        "--vcpu-sig".into(),
        format!("{SIG:x}").into(),
    ];
    args.extend(extra.iter().map(OsString::from));
    let out = match relaunch::cli::trace::run(&args) {
        Ok(o) => o,
        Err(e) => panic!(
            "trace {} {platform} {vcpus}: {}\n{}",
            file.display(),
            e.message,
            e.partial
        ),
    };
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn predicted(file: &Path, platform: Platform, vcpus: u32) -> String {
    let cfg = LaunchConfig {
        platform,
        vcpus,
        mem_bytes: relaunch::cli::run::DEFAULT_MEM,
        vcpu_sig: SIG,
        guest_features: 0,
        policy: None,
        host_data: [0; 32],
        kernel_hashes: None,
    };
    let p = plan(std::fs::read(file).unwrap(), &cfg).unwrap();
    expected(p.stream()).unwrap().to_string()
}

fn script(lines: &[Value]) -> String {
    let text: String = lines.iter().map(|v| format!("{v}\n")).collect();
    let f = std::env::temp_dir().join(format!(
        "relaunch-trace-cli-{}-{}.jsonl",
        std::process::id(),
        lines.len()
    ));
    std::fs::write(&f, text).unwrap();
    let out = std::process::Command::new("python3")
        .arg(root().join("scripts/trace_digest.py"))
        .arg(&f)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&f);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn ioctls(lines: &[Value]) -> Vec<(String, &Value)> {
    lines
        .iter()
        .filter_map(|l| Some((l.get("ioctl")?.as_str()?.to_string(), l)))
        .collect()
}

/// `want` appear in this order (other calls may sit between them).
fn assert_order(lines: &[Value], want: &[&str]) {
    let names: Vec<String> = ioctls(lines).into_iter().map(|(n, _)| n).collect();
    let mut at = 0;
    for w in want {
        match names[at..].iter().position(|n| n == w) {
            Some(i) => at += i + 1,
            None => panic!("{w} missing or out of order in {names:?}"),
        }
    }
}

fn measurement(lines: &[Value]) -> String {
    lines.last().unwrap()["measurement"]
        .as_str()
        .unwrap()
        .to_string()
}

fn check(file: &Path, name: &str, platform: Platform, vcpus: u32) {
    let lines = trace(file, name, vcpus, &[]);
    let want = predicted(file, platform, vcpus);
    assert_eq!(
        measurement(&lines),
        want,
        "{} {name} {vcpus}",
        file.display()
    );
    let calls = ioctls(&lines);
    let ty = |t: u64| {
        calls
            .iter()
            .any(|(n, l)| n == "KVM_CREATE_VM" && l["args"]["type"] == t)
    };
    let coco_ok = calls
        .iter()
        .filter(|(n, _)| n.starts_with("KVM_SEV") || n.starts_with("KVM_TDX"))
        .all(|(_, l)| l["result"] == "ok" || l["result"] == "EINTR");
    assert!(coco_ok, "a confidential command failed");
    let vcpu_count = calls.iter().filter(|(n, _)| n == "KVM_CREATE_VCPU").count();
    assert_eq!(vcpu_count, vcpus as usize);
    match platform {
        Platform::Snp => {
            assert!(ty(4));
            assert_order(
                &lines,
                &[
                    "KVM_CREATE_VM",
                    "KVM_SEV_INIT2",
                    "KVM_SEV_SNP_LAUNCH_START",
                    "KVM_CREATE_GUEST_MEMFD",
                    "KVM_SET_USER_MEMORY_REGION2",
                    "KVM_SET_MEMORY_ATTRIBUTES",
                    "KVM_CREATE_VCPU",
                    "KVM_SEV_SNP_LAUNCH_UPDATE",
                    "KVM_SEV_SNP_LAUNCH_FINISH",
                ],
            );
            // KVM measures one VMSA per vCPU, last, at 0xFFFFFFFFF000 (§1.4).
            let m: Vec<&Value> = lines.iter().filter_map(|l| l.get("measured")).collect();
            let vmsas = m.iter().rev().take_while(|x| x["page_type"] == 2).count();
            assert_eq!(vmsas, vcpus as usize);
            assert!(m
                .iter()
                .rev()
                .take(vmsas)
                .all(|x| x["gpa"] == 0xFFFF_FFFF_F000u64));
            assert_eq!(script(&lines), want);
        }
        Platform::SevEs | Platform::Sev => {
            let es = platform == Platform::SevEs;
            assert!(ty(if es { 3 } else { 2 }));
            let mut seq = vec![
                "KVM_CREATE_VM",
                "KVM_SEV_INIT2",
                "KVM_SEV_LAUNCH_START",
                "KVM_CREATE_VCPU",
                "KVM_SEV_LAUNCH_UPDATE_DATA",
            ];
            if es {
                seq.push("KVM_SEV_LAUNCH_UPDATE_VMSA");
            }
            seq.extend(["KVM_SEV_LAUNCH_MEASURE", "KVM_SEV_LAUNCH_FINISH"]);
            assert_order(&lines, &seq);
            assert_eq!(
                calls.iter().any(|(n, _)| n == "KVM_SEV_LAUNCH_UPDATE_VMSA"),
                es
            );
            assert_eq!(script(&lines), want);
        }
        Platform::Tdx => {
            assert!(ty(5));
            assert_order(
                &lines,
                &[
                    "KVM_CREATE_VM",
                    "KVM_TDX_INIT_VM",
                    "KVM_CREATE_GUEST_MEMFD",
                    "KVM_SET_MEMORY_ATTRIBUTES",
                    "KVM_CREATE_VCPU",
                    "KVM_TDX_INIT_VCPU",
                    "KVM_TDX_INIT_MEM_REGION",
                    "KVM_TDX_FINALIZE_VM",
                ],
            );
            // TDX has no in-kernel PIC/IOAPIC (§3.1).
            assert!(!calls.iter().any(|(n, _)| n == "KVM_CREATE_IRQCHIP"));
        }
        Platform::Native => unreachable!(),
    }
}

#[test]
fn trace_hello_igvm_snp_and_tdx() {
    let Some(f) = bundle("boot-images/out/hello.igvm") else {
        return;
    };
    for vcpus in [1, 4] {
        check(&f, "snp", Platform::Snp, vcpus);
        check(&f, "tdx", Platform::Tdx, vcpus);
    }
}

/// The boot images' SEV and SEV-ES views (`boot-images/src/lib.rs`) through the SEV
/// backend and the model: LAUNCH_UPDATE_DATA of every page, LAUNCH_UPDATE_VMSA for SEV-ES,
/// and the digest `relaunch measure` predicts.
#[test]
fn trace_hello_igvm_sev_and_sev_es() {
    let Some(f) = bundle("boot-images/out/hello.igvm") else {
        return;
    };
    for vcpus in [1, 4] {
        check(&f, "sev-es", Platform::SevEs, vcpus);
        check(&f, "sev", Platform::Sev, vcpus);
    }
}

#[test]
fn trace_ovmf_snp_sev_es_sev() {
    let Some(f) = bundle(".oracles/ovmf/usr/share/ovmf/OVMF.fd") else {
        return;
    };
    for vcpus in [1, 4] {
        check(&f, "snp", Platform::Snp, vcpus);
        check(&f, "sev-es", Platform::SevEs, vcpus);
        check(&f, "sev", Platform::Sev, vcpus);
    }
}

fn measured(ls: &[Value]) -> Vec<Value> {
    ls.iter()
        .filter_map(|l| l.get("measured").cloned())
        .collect()
}

/// Two launches in one trace: the first VM closed before the second is created, the same
/// measured pages in both, and the same as `plain` (a trace without model options).
fn check_relaunch(lines: &[Value], plain: &[Value]) {
    let names: Vec<String> = ioctls(lines).into_iter().map(|(n, _)| n).collect();
    let creates: Vec<usize> = names
        .iter()
        .enumerate()
        .filter(|(_, n)| *n == "KVM_CREATE_VM")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(creates.len(), 2);
    assert!(names[creates[0]..creates[1]].iter().any(|n| n == "close"));
    let all = measured(lines);
    let one = measured(plain);
    assert_eq!(all.len(), 2 * one.len());
    assert_eq!(&all[..one.len()], &one[..]);
    assert_eq!(&all[one.len()..], &one[..]);
    assert_eq!(measurement(lines), measurement(plain));
}

#[test]
fn trace_snp_partial_progress_and_relaunch() {
    let Some(f) = bundle("boot-images/out/hello.igvm") else {
        return;
    };
    let plain = trace(&f, "snp", 2, &[]);
    let lines = trace(
        &f,
        "snp",
        2,
        &[
            "--model-max-pages",
            "1",
            "--model-eintr-every",
            "3",
            "--relaunch",
        ],
    );
    // The backend retried -EINTR (no page done, arguments unchanged: spec §1.3).
    assert!(lines
        .iter()
        .any(|l| l["ioctl"] == "KVM_SEV_SNP_LAUNCH_UPDATE" && l["result"] == "EINTR"));
    // One page per call: more update calls than in the plain trace, same pages measured.
    let updates = |ls: &[Value]| {
        ls.iter()
            .filter(|l| l["ioctl"] == "KVM_SEV_SNP_LAUNCH_UPDATE")
            .count()
    };
    assert!(updates(&lines) > 2 * updates(&plain));
    check_relaunch(&lines, &plain);
    assert_eq!(script(&lines), measurement(&plain));
}

#[test]
fn trace_tdx_eintr_partial_progress_and_relaunch() {
    let Some(f) = bundle("boot-images/out/hello.igvm") else {
        return;
    };
    let plain = trace(&f, "tdx", 2, &[]);
    let lines = trace(
        &f,
        "tdx",
        2,
        &[
            "--model-max-pages",
            "2",
            "--model-eintr-every",
            "3",
            "--relaunch",
        ],
    );
    // The backend resumed after EINTR (the struct carries the progress, §3.1).
    assert!(lines
        .iter()
        .any(|l| l["ioctl"] == "KVM_TDX_INIT_MEM_REGION" && l["result"] == "EINTR"));
    check_relaunch(&lines, &plain);
}
