//! `relaunch trace` end to end: the real backends against the kernel model. For every
//! platform and bundle: the call sequence has the order the kernel documentation requires
//! (`Documentation/virt/kvm/x86/amd-memory-encryption.rst` launch flows,
//! `Documentation/virt/kvm/x86/intel-tdx.rst` "TD setup"; summarised in
//! `../shared/spec/kvm-coco-abi.md` §1.4, §3.1), the last line equals `relaunch measure`
//! (computed here from the core, not read from the trace), and `scripts/trace_digest.py`
//! recomputes the same digest from the `measured` lines alone.

mod igvm_gen;

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
    // Before the first VM, the host probe reads the SEV attributes of /dev/kvm once
    // (`KVM_GET_DEVICE_ATTR`, group `KVM_X86_GRP_SEV` 1: attribute 0 VMSA features,
    // attribute 1 SNP policy bits, attribute 2 SNP certificate requests (Linux 7.0);
    // `amd-memory-encryption.rst` "Device attribute API"):
    // the model offers SEV-family VM types whatever the platform traced.
    let attrs: Vec<(u64, u64)> = calls
        .iter()
        .take_while(|(n, _)| n != "KVM_CREATE_VM")
        .filter(|(n, _)| n == "KVM_GET_DEVICE_ATTR")
        .map(|(_, l)| {
            assert_eq!(l["fd"], "kvm");
            assert_eq!(l["result"], "ok");
            (
                l["args"]["group"].as_u64().unwrap(),
                l["args"]["attr"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(attrs, [(1, 0), (1, 1), (1, 2)]);
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
            // A CPUID page (OVMF's SEV metadata CPUID section) holds vCPU 0's CPUID, one
            // function per KVM_SET_CPUID2 entry (QEMU `snp_launch_update_cpuid`), one page per
            // call, accepted by the firmware model.
            let nent = calls
                .iter()
                .find(|(n, l)| n == "KVM_SET_CPUID2" && l["fd"] == "vcpu0")
                .map(|(_, l)| l["args"]["nent"].as_u64().unwrap())
                .unwrap();
            for (_, l) in calls
                .iter()
                .filter(|(n, l)| n == "KVM_SEV_SNP_LAUNCH_UPDATE" && l["args"]["type"] == 6)
            {
                assert_eq!(l["result"], "ok", "{l}");
                assert_eq!(l["args"]["len"], 4096);
                assert_eq!(l["args"]["cpuid_count"].as_u64(), Some(nent), "{l}");
                let funcs = l["args"]["cpuid_functions"].as_str().unwrap();
                assert!(funcs.starts_with("0:0 1:0 "), "{funcs}");
            }
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
                    "KVM_TDX_GET_CPUID",
                    "KVM_TDX_INIT_MEM_REGION",
                    "KVM_TDX_FINALIZE_VM",
                ],
            );
            // TDX has no in-kernel PIC/IOAPIC (§3.1).
            assert!(!calls.iter().any(|(n, _)| n == "KVM_CREATE_IRQCHIP"));
            // KVM_TDX_GET_CPUID once per vCPU, on its own fd (a vCPU ioctl, intel-tdx.rst),
            // with room for KVM_MAX_CPUID_ENTRIES (256), answered.
            let gets: Vec<&Value> = calls
                .iter()
                .filter(|(n, _)| n == "KVM_TDX_GET_CPUID")
                .map(|(_, l)| *l)
                .collect();
            assert_eq!(gets.len(), vcpus as usize);
            for (i, l) in gets.iter().enumerate() {
                assert_eq!(l["fd"], format!("vcpu{i}"));
                assert_eq!(l["args"]["nent"], 256);
                assert_eq!(l["result"], "ok");
            }
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

/// `trace` of an OVMF image's SNP view shows its CPUID page (the SEV metadata CPUID
/// section), built from vCPU 0's CPUID whatever the image holds there.
#[test]
fn trace_ovmf_snp_has_a_cpuid_page() {
    let Some(f) = bundle(".oracles/ovmf/usr/share/ovmf/OVMF.fd") else {
        return;
    };
    let lines = trace(&f, "snp", 1, &[]);
    let n = ioctls(&lines)
        .iter()
        .filter(|(n, l)| n == "KVM_SEV_SNP_LAUNCH_UPDATE" && l["args"]["type"] == 6)
        .count();
    assert_eq!(n, 1, "one CPUID page, one call");
}

fn temp(name: &str, bytes: &[u8]) -> PathBuf {
    let p = std::env::temp_dir().join(format!("relaunch-trace-{}-{name}", std::process::id()));
    std::fs::write(&p, bytes).unwrap();
    p
}

/// An ID block for `ld` and `policy` (SEV-SNP firmware ABI ID_BLOCK: LD[48] @0, FAMILY_ID
/// @0x30, IMAGE_ID @0x40, VERSION u32 @0x50 = 1, GUEST_SVN u32 @0x54, POLICY u64 @0x58).
fn id_block(ld: &[u8], policy: u64) -> [u8; 96] {
    let mut b = [0u8; 96];
    b[..48].copy_from_slice(ld);
    b[0x30] = 0xFA;
    b[0x50..0x54].copy_from_slice(&1u32.to_le_bytes());
    b[0x58..0x60].copy_from_slice(&policy.to_le_bytes());
    b
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn finish_line(lines: &[Value]) -> Value {
    lines
        .iter()
        .find(|l| l["ioctl"] == "KVM_SEV_SNP_LAUNCH_FINISH")
        .cloned()
        .unwrap()
}

/// `--id-block`/`--id-auth` (SEV-SNP firmware ABI, SNP_LAUNCH_FINISH; KVM
/// `kvm_sev_snp_launch_finish.id_block_en`/`auth_key_en`): the files' bytes reach
/// SNP_LAUNCH_FINISH as given and the trace shows them; an ID block whose LD is the launch
/// digest (what `relaunch measure` predicts) and whose POLICY is the launch policy
/// (0x30000, QEMU's default) is accepted; AUTH_KEY_EN follows the ID_AUTH_INFO's AUTHOR_KEY
/// field (@0x880); a wrong LD is refused by the firmware model with BAD_MEASUREMENT
/// (exit 1, no measurement line).
#[test]
fn trace_snp_id_block_from_files() {
    let Some(f) = bundle("boot-images/out/hello.igvm") else {
        return;
    };
    let ld = unhex(&predicted(&f, Platform::Snp, 1));
    let good = temp("good.idblock", &id_block(&ld, 0x3_0000));
    let auth = temp("zero.idauth", &[0u8; 4096]);
    let mut keyed = [0u8; 4096];
    keyed[0x880] = 2; // AUTHOR_KEY.CURVE = P-384
    let keyed = temp("keyed.idauth", &keyed);
    let id_args = |b: &Path, a: &Path| -> Vec<String> {
        vec![
            "--id-block".into(),
            b.display().to_string(),
            "--id-auth".into(),
            a.display().to_string(),
        ]
    };
    let args = id_args(&good, &auth);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let lines = trace(&f, "snp", 1, &argv);
    let fin = finish_line(&lines);
    assert_eq!(fin["result"], "ok");
    assert_eq!(fin["args"]["id_block_en"], 1);
    assert_eq!(fin["args"]["auth_key_en"], 0);
    assert_eq!(fin["args"]["id_block"], hex(&id_block(&ld, 0x3_0000)));
    assert_eq!(measurement(&lines), hex(&ld));

    let args = id_args(&good, &keyed);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let fin = finish_line(&trace(&f, "snp", 1, &argv));
    assert_eq!(fin["args"]["auth_key_en"], 1);

    let mut wrong = ld.clone();
    wrong[0] ^= 1;
    let bad = temp("bad.idblock", &id_block(&wrong, 0x3_0000));
    let mut a: Vec<OsString> = vec![f.clone().into(), "--platform".into(), "snp".into()];
    a.extend(id_args(&bad, &auth).into_iter().map(OsString::from));
    let e = relaunch::cli::trace::run(&a).unwrap_err();
    assert_eq!(e.code, 1, "{}", e.message);
    assert!(
        e.message.contains("SEV_RET_BAD_MEASUREMENT"),
        "{}",
        e.message
    );
    let partial: Vec<Value> = e
        .partial
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        finish_line(&partial)["result"],
        "EIO SEV_RET_BAD_MEASUREMENT"
    );
    assert!(!e.partial.contains("\"measurement\""));
    for p in [good, auth, keyed, bad] {
        let _ = std::fs::remove_file(p);
    }
}

/// Bad ID block files and flag combinations are usage errors (exit 2) with one sentence,
/// for `trace` and `run` alike, before anything is created: a size other than 96 / 4096
/// bytes (`KVM_SEV_SNP_ID_BLOCK_SIZE` / `KVM_SEV_SNP_ID_AUTH_SIZE`), one flag without the
/// other, a platform other than SNP, a missing file.
#[test]
fn id_block_files_are_checked() {
    let Some(f) = bundle("boot-images/out/hello.igvm") else {
        return;
    };
    let b95 = temp("95.idblock", &[0u8; 95]);
    let b97 = temp("97.idblock", &[0u8; 97]);
    let b96 = temp("96.idblock", &[0u8; 96]);
    let a4095 = temp("4095.idauth", &[0u8; 4095]);
    let a4096 = temp("4096.idauth", &[0u8; 4096]);
    let s = |p: &PathBuf| p.display().to_string();
    let cases: Vec<(Vec<String>, String)> = vec![
        (
            vec![
                "snp".into(),
                "--id-block".into(),
                s(&b95),
                "--id-auth".into(),
                s(&a4096),
            ],
            format!(
                "--id-block {}: 95 bytes; an SNP ID block (ID_BLOCK) is exactly 96 bytes \
                 (SEV-SNP firmware ABI)",
                b95.display()
            ),
        ),
        (
            vec![
                "snp".into(),
                "--id-block".into(),
                s(&b97),
                "--id-auth".into(),
                s(&a4096),
            ],
            format!(
                "--id-block {}: more than 96 bytes; an SNP ID block (ID_BLOCK) is exactly 96 \
                 bytes (SEV-SNP firmware ABI)",
                b97.display()
            ),
        ),
        (
            vec![
                "snp".into(),
                "--id-block".into(),
                s(&b96),
                "--id-auth".into(),
                s(&a4095),
            ],
            format!(
                "--id-auth {}: 4095 bytes; an SNP ID authentication structure (ID_AUTH_INFO) \
                 is exactly 4096 bytes (SEV-SNP firmware ABI)",
                a4095.display()
            ),
        ),
        (
            vec!["snp".into(), "--id-block".into(), s(&b96)],
            "--id-block and --id-auth go together (SNP_LAUNCH_FINISH takes both)".into(),
        ),
        (
            vec![
                "tdx".into(),
                "--id-block".into(),
                s(&b96),
                "--id-auth".into(),
                s(&a4096),
            ],
            "--id-block/--id-auth are given at SNP_LAUNCH_FINISH; tdx has no ID block".into(),
        ),
        (
            vec![
                "snp".into(),
                "--id-block".into(),
                "/nonexistent/id.block".into(),
                "--id-auth".into(),
                s(&a4096),
            ],
            "--id-block /nonexistent/id.block: No such file or directory (os error 2)".into(),
        ),
    ];
    for (args, want) in cases {
        let mut a: Vec<OsString> = vec![f.clone().into(), "--platform".into()];
        a.extend(args.iter().map(OsString::from));
        let e = relaunch::cli::trace::run(&a).unwrap_err();
        assert_eq!((e.code, e.message.as_str()), (2, want.as_str()), "{args:?}");
        // `run` stops at the same point, before opening /dev/kvm: exit 2.
        let mut r: Vec<OsString> = vec!["run".into(), f.clone().into(), "--platform".into()];
        r.extend(args.iter().map(OsString::from));
        assert_eq!(relaunch::cli::main(r), 2, "run {args:?}");
    }
    for p in [b95, b97, b96, a4095, a4096] {
        let _ = std::fs::remove_file(p);
    }
}

/// `--next FILE2`: the hand-over's launch on a new VM after the first VM is closed —
/// FILE's measured pages, then FILE2's exactly as its own trace has them, and the last line
/// is FILE2's measurement as `relaunch measure` predicts it (`docs/fuki.md`). A bad FILE2
/// is a usage error before anything is traced.
#[test]
fn trace_next_runs_the_handed_over_bundle_on_a_new_vm() {
    let Some(f) = bundle("boot-images/out/hello.igvm") else {
        return;
    };
    let next = temp("next.igvm", &igvm_gen::spec_file(1));
    let first = trace(&f, "snp", 1, &[]);
    let second = trace(&next, "snp", 1, &[]);
    let lines = trace(&f, "snp", 1, &["--next", next.to_str().unwrap()]);
    let names: Vec<String> = ioctls(&lines).into_iter().map(|(n, _)| n).collect();
    let creates: Vec<usize> = names
        .iter()
        .enumerate()
        .filter(|(_, n)| *n == "KVM_CREATE_VM")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(creates.len(), 2);
    assert!(names[creates[0]..creates[1]].iter().any(|n| n == "close"));
    let mut want = measured(&first);
    want.extend(measured(&second));
    assert_eq!(measured(&lines), want);
    assert_eq!(measurement(&lines), measurement(&second));
    assert_eq!(measurement(&lines), predicted(&next, Platform::Snp, 1));
    assert_ne!(measurement(&first), measurement(&second));
    let bad = temp("bad-next.igvm", b"not a bundle");
    let args: Vec<OsString> = vec![
        f.into(),
        "--platform".into(),
        "snp".into(),
        "--next".into(),
        bad.clone().into(),
    ];
    let e = relaunch::cli::trace::run(&args).unwrap_err();
    assert_eq!(e.code, 2, "{}", e.message);
    assert!(e.message.contains("--next"), "{}", e.message);
    assert!(e.partial.is_empty());
    let _ = std::fs::remove_file(next);
    let _ = std::fs::remove_file(bad);
}
