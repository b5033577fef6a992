//! The vm-launch-update hand-over end to end on real KVM (native), with hand-assembled
//! guests (`relaunch::testing::HANDOVER_STAGE1` / `HANDOVER_STAGE2`) packed into IGVM
//! bundles here: stage 1 writes `etc/vmlaunchupdate` by fw_cfg DMA exactly as
//! `docs/fuki.md` describes, reads the structure back, prints the status and resets.
//! Expectations come from QEMU's `docs/specs/vmlaunchupdate.rst` (status codes, one-shot
//! vs permanent, the opaque region surviving the reset) and `docs/fuki.md`.
//!
//! The boot-image pair (Rust guests, emulated SNP/TDX) is tested in its own file.

mod kvm_common;

use std::path::PathBuf;
use std::sync::Arc;

use igvm_defs::{IgvmNativeVpContextX64, IgvmPageDataFlags, IgvmPageDataType, IgvmPlatformType};
use kvm_common::*;
use relaunch::devices::fw_cfg::{DMA_READ, DMA_SELECT, DMA_WRITE};
use relaunch::devices::launch_update::{
    LaunchUpdate, Regs, CTL_HOST_IGVM, FORMAT_IGVM, MAX_IMAGE, SIZE,
};
use relaunch::handover::Handover;
use relaunch::launch::Launch;
use relaunch::session::{SessionConfig, EXIT_POWER_OFF, EXIT_REBOOT_LIMIT};
use relaunch::testing;
use relaunch_core::plan::{LaunchConfig, Platform};

const MEM: u64 = 16 << 20;
/// Where stage 1's bundle carries stage 2.
const IMAGE_GPA: u64 = 0x10_0000;
/// `etc/vmlaunchupdate`'s selector without `--fw-cfg` files: after
/// `etc/relaunch/generation` (0x20), by name (`docs/devices.md`).
const KEY: u32 = 0x21;

fn config() -> LaunchConfig {
    LaunchConfig {
        platform: Platform::Native,
        vcpus: 1,
        mem_bytes: MEM,
        vcpu_sig: 0,
        guest_features: 0,
        policy: None,
        host_data: [0; 32],
        kernel_hashes: None,
    }
}

/// A native IGVM bundle: `pages` (gpa, bytes; split into 4 KiB pages), vCPU 0 in real mode
/// at 0x1000.
fn native_igvm(pages: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let mut b = relaunch_core::writer::IgvmBuilder::new();
    let native = b.platform(IgvmPlatformType::NATIVE, 0).unwrap();
    let mut pages = pages.to_vec();
    pages.sort_by_key(|p| p.0);
    for (gpa, data) in &pages {
        for (i, chunk) in data.chunks(4096).enumerate() {
            b.page_data(
                gpa + 4096 * i as u64,
                native,
                IgvmPageDataFlags::new(),
                IgvmPageDataType::NORMAL,
                chunk,
            )
            .unwrap();
        }
    }
    let ctx = IgvmNativeVpContextX64 {
        rip: 0x1000,
        rflags: 2,
        gdtr_limit: 0xFFFF,
        idtr_limit: 0x3FF,
        code_attributes: 0x9B,
        code_limit: 0xFFFF,
        data_attributes: 0x93,
        data_limit: 0xFFFF,
        cr0: 0x10,
        ..zerocopy::FromZeros::new_zeroed()
    };
    b.native_vp_context(native, 0, &ctx).unwrap();
    b.finish().unwrap()
}

/// Stage 2; `reset`: it resets instead of powering off.
fn stage2(reset: bool) -> Vec<u8> {
    let mut code = testing::HANDOVER_STAGE2.to_vec();
    code.resize(4096, 0);
    code[0xFFF] = u8::from(reset);
    native_igvm(&[(0x1000, code)])
}

/// A `FWCfgDmaAccess` (big-endian control, length, address).
fn dma(control: u32, len: u32, addr: u64) -> Vec<u8> {
    let mut r = control.to_be_bytes().to_vec();
    r.extend_from_slice(&len.to_be_bytes());
    r.extend_from_slice(&addr.to_be_bytes());
    r
}

/// Stage 1 writing `regs` (opaque region: "opaque-1" at 0x7000), with `payload` in its
/// bundle at [`IMAGE_GPA`].
fn stage1_pages(regs: Regs, payload: &[u8]) -> Vec<(u64, Vec<u8>)> {
    let mut req = dma(
        (KEY << 16) | DMA_SELECT | DMA_WRITE,
        SIZE as u32,
        testing::HANDOVER_STRUCT_GPA,
    );
    req.extend(dma(
        (KEY << 16) | DMA_SELECT | DMA_READ,
        SIZE as u32,
        testing::HANDOVER_READBACK_GPA,
    ));
    let mut pages = vec![
        (0x1000, testing::HANDOVER_STAGE1.to_vec()),
        (testing::HANDOVER_REQUEST_GPA, req),
        (testing::HANDOVER_STRUCT_GPA, regs.to_bytes().to_vec()),
        (testing::HANDOVER_OPAQUE_GPA, b"opaque-1".to_vec()),
    ];
    if !payload.is_empty() {
        pages.push((IMAGE_GPA, payload.to_vec()));
    }
    pages
}

/// The structure stage 1 writes: `control`, the image at `addr`/`size`, the opaque region.
fn regs(control: u64, addr: u64, size: u64) -> Regs {
    Regs {
        version: 1,
        capabilities: FORMAT_IGVM,
        control,
        fw_image_addr: addr,
        fw_image_size: size,
        opaque_addr: testing::HANDOVER_OPAQUE_GPA,
        opaque_size: 8,
        ..Regs::default()
    }
}

struct Run {
    cfg: SessionConfig,
    audit: PathBuf,
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.audit);
    }
}

impl Run {
    fn records(&self, event: &str) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.audit)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| v["event"] == event)
            .collect()
    }

    fn launched(&self) -> Vec<String> {
        self.records("launch")
            .iter()
            .map(|v| v["bundle_sha256"].as_str().unwrap().to_owned())
            .collect()
    }
}

/// A session config with the vm-launch-update device, an audit log and `max_reboots`.
fn session(name: &str, max_reboots: Option<u64>, prestage: bool) -> Run {
    let audit = std::env::temp_dir().join(format!(
        "relaunch-kvm-handover-{name}-{}.jsonl",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&audit);
    let mut cfg = with_audit(config_for(max_reboots, prestage), &audit);
    let h = Handover::new(Arc::clone(&cfg.next), config(), None, cfg.audit.clone());
    cfg.launch_update = Some(Arc::new(LaunchUpdate::new(Arc::new(h))));
    Run { cfg, audit }
}

fn config_for(max_reboots: Option<u64>, prestage: bool) -> SessionConfig {
    kvm_common::config(MEM, max_reboots, prestage)
}

/// Permanent hand-over: stage 1 writes (status 0), resets; stage 2 runs at the next
/// relaunch, sees the opaque region, powers off. On record: the swap, both launches, the
/// switch and the carried region.
#[test]
fn kvm_guest_hands_over_stage2_permanently() {
    let Some(host) = host(true) else { return };
    let s2 = stage2(false);
    let s1 = native_igvm(&stage1_pages(
        regs(FORMAT_IGVM, IMAGE_GPA, s2.len() as u64),
        &s2,
    ));
    let first = Arc::new(Launch::new(s1.clone(), &config()).unwrap());
    let mut run = session("permanent", Some(5), false);
    // The session's own device (`SessionConfig::vm_launch_update`).
    run.cfg.launch_update = None;
    run.cfg.vm_launch_update = true;
    let r = kvm_common::run(&host, &first, &run.cfg);
    assert_eq!(r.exit_code, EXIT_POWER_OFF, "{:?}", r.outcome);
    assert_eq!(output(&run.cfg), "s0\n2:opaque-1\n");
    assert_eq!(run.launched(), [sha(&s1), sha(&s2)]);
    let swaps = run.records("swap");
    assert_eq!(swaps.len(), 1, "{swaps:?}");
    let w = &swaps[0];
    assert_eq!(
        (&w["by"], &w["request"], &w["one_shot"], &w["status"]),
        (&"guest".into(), &"bundle".into(), &false.into(), &0.into())
    );
    assert_eq!(w["old_bundle_sha256"], sha(&s1).as_str());
    assert_eq!(w["new_bundle_sha256"], sha(&s2).as_str());
    assert_eq!(w["generation"], 1);
    let launches = run.records("launch");
    assert_eq!(launches[0]["switch"], serde_json::Value::Null);
    assert_eq!(launches[1]["switch"]["to"], "handed-over");
    assert_eq!(launches[1]["switch"]["by"], "guest");
    let o = &launches[1]["opaque"];
    assert_eq!(
        (&o["gpa"], &o["size"], &o["restored"]),
        (&0x7000.into(), &8.into(), &8.into())
    );
    let exits = run.records("exit");
    assert_eq!(exits[0]["vmlaunchupdate"]["requests"], 1);
}

/// One-shot (`CTL_HOST_IGVM`): stage 2 runs once, the next relaunch runs stage 1 again
/// (whose own page at 0x7000 wins over the carried region); with prestage the VM built for
/// the old bundle is discarded.
#[test]
fn kvm_one_shot_hand_over_returns_to_stage1() {
    let Some(host) = host(true) else { return };
    for prestage in [false, true] {
        let s2 = stage2(true);
        let s1 = native_igvm(&stage1_pages(
            regs(FORMAT_IGVM | CTL_HOST_IGVM, IMAGE_GPA, s2.len() as u64),
            &s2,
        ));
        let first = Arc::new(Launch::new(s1.clone(), &config()).unwrap());
        let run = session(&format!("oneshot-{prestage}"), Some(3), prestage);
        let r = kvm_common::run(&host, &first, &run.cfg);
        assert_eq!(r.exit_code, EXIT_REBOOT_LIMIT, "{:?}", r.outcome);
        assert_eq!(
            output(&run.cfg),
            "s0\n2:opaque-1\ns0\n2:opaque-1\n",
            "prestage {prestage}"
        );
        assert_eq!(run.launched(), [sha(&s1), sha(&s2), sha(&s1), sha(&s2)]);
        let launches = run.records("launch");
        assert_eq!(launches[1]["switch"]["one_shot"], true);
        assert_eq!(launches[2]["switch"]["to"], "original");
        assert_eq!(launches[2]["switch"]["by"], serde_json::Value::Null);
        // Stage 1 imports 0x7000: nothing restored there.
        assert_eq!(launches[2]["opaque"]["skipped"], 8);
        // The second hand-over of the same bytes reused the plan.
        let swaps = run.records("swap");
        assert_eq!(swaps.len(), 2);
        assert_eq!(swaps[0]["plan_cached"], false);
        assert_eq!(swaps[1]["plan_cached"], true);
    }
}

/// A hostile stage 1: every bad request leaves the VMM running stage 1 (status 1 printed by
/// the guest, the same bundle relaunched), each refusal on record.
#[test]
fn kvm_hostile_stage1_keeps_the_old_bundle() {
    let Some(host) = host(true) else { return };
    let s2 = stage2(false);
    let len = s2.len() as u64;
    let cases: Vec<(&str, Regs, Vec<u8>)> = vec![
        (
            "garbage image",
            regs(FORMAT_IGVM, IMAGE_GPA, 0x1000),
            vec![0xA5; 0x1000],
        ),
        (
            "truncated image",
            regs(FORMAT_IGVM, IMAGE_GPA, len / 2),
            s2.clone(),
        ),
        (
            "oversized",
            regs(FORMAT_IGVM, IMAGE_GPA, MAX_IMAGE + 1),
            s2.clone(),
        ),
        (
            "outside RAM",
            regs(FORMAT_IGVM, MEM - 0x1000, len),
            s2.clone(),
        ),
        (
            "wrapping",
            regs(FORMAT_IGVM, u64::MAX - 0xFFF, len),
            s2.clone(),
        ),
        ("no format bit", regs(0, IMAGE_GPA, len), s2.clone()),
    ];
    for (what, regs, payload) in cases {
        let s1 = native_igvm(&stage1_pages(regs, &payload));
        let first = Arc::new(Launch::new(s1.clone(), &config()).unwrap());
        let run = session("hostile", Some(1), false);
        let r = kvm_common::run(&host, &first, &run.cfg);
        assert_eq!(r.exit_code, EXIT_REBOOT_LIMIT, "{what}: {:?}", r.outcome);
        assert_eq!(output(&run.cfg), "s1\ns1\n", "{what}");
        assert_eq!(run.launched(), [sha(&s1), sha(&s1)], "{what}");
        let swaps = run.records("swap");
        assert_eq!(swaps.len(), 2, "{what}");
        for s in &swaps {
            assert_eq!(s["status"], 1, "{what}: {s}");
        }
    }
}

/// A session not started from an IGVM bundle (a hand-made plan with the same pages):
/// status 2, nothing handed over.
#[test]
fn kvm_not_started_from_igvm() {
    let Some(host) = host(true) else { return };
    let s2 = stage2(false);
    let pages = stage1_pages(regs(FORMAT_IGVM, IMAGE_GPA, s2.len() as u64), &s2);
    let extra: Vec<(u64, &[u8])> = pages[1..4]
        .iter()
        .map(|(g, b)| (*g, b.as_slice()))
        .collect();
    let plan = testing::plan(testing::HANDOVER_STAGE1, &extra, 1, MEM, 0);
    let run = session("notigvm", Some(0), false);
    let r = kvm_common::run(&host, &plan, &run.cfg);
    assert_eq!(r.exit_code, EXIT_REBOOT_LIMIT, "{:?}", r.outcome);
    assert_eq!(output(&run.cfg), "s2\n");
    assert_eq!(run.records("swap")[0]["status"], 2);
}

/// `relaunch run BUNDLE --next NEXT --bundle-store DIR`: NEXT runs at the first relaunch
/// only, then BUNDLE again; both are kept in the store under their SHA-256 and the audit
/// log has the host's one-shot `swap` before the first launch. A bad `--next` is a usage
/// error (exit 2) that creates nothing.
#[test]
fn kvm_run_next_is_one_shot_and_stored() {
    let Some(_host) = host(true) else { return };
    let dir = std::env::temp_dir().join(format!("relaunch-kvm-next-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let first = native_igvm(&[(0x1000, testing::RESET.to_vec())]);
    let next = stage2(true);
    let (fp, np) = (dir.join("first.igvm"), dir.join("next.igvm"));
    std::fs::write(&fp, &first).unwrap();
    std::fs::write(&np, &next).unwrap();
    let audit = dir.join("audit.jsonl");
    let store = dir.join("store");
    let arg = |p: &std::path::Path| p.display().to_string();
    let args = |next: &std::path::Path| -> Vec<std::ffi::OsString> {
        [
            arg(&fp),
            "--quiet".into(),
            "--mem".into(),
            "16M".into(),
            "--max-reboots".into(),
            "2".into(),
            "--next".into(),
            arg(next),
            "--audit-log".into(),
            arg(&audit),
            "--bundle-store".into(),
            arg(&store),
        ]
        .into_iter()
        .map(Into::into)
        .collect()
    };
    // Bad --next: nothing started, nothing created.
    let bad = dir.join("bad.igvm");
    std::fs::write(&bad, b"IGVM? no").unwrap();
    for b in [&bad, &dir.join("missing.igvm")] {
        assert_eq!(relaunch::cli::run::main(&args(b)), 2);
        assert!(!audit.exists() && !store.exists(), "{}", b.display());
    }
    assert_eq!(relaunch::cli::run::main(&args(&np)), EXIT_REBOOT_LIMIT);
    let text = std::fs::read_to_string(&audit).unwrap();
    let recs: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(recs[0]["event"], "swap", "{text}");
    assert_eq!(recs[0]["by"], "host");
    assert_eq!(recs[0]["one_shot"], true);
    assert_eq!(recs[0]["generation"], 0, "before the first launch");
    assert_eq!(recs[0]["new_bundle_sha256"], sha(&next).as_str());
    let launched: Vec<&str> = recs
        .iter()
        .filter(|r| r["event"] == "launch")
        .map(|r| r["bundle_sha256"].as_str().unwrap())
        .collect();
    assert_eq!(launched, [sha(&first), sha(&next), sha(&first)]);
    for b in [&first, &next] {
        assert_eq!(&std::fs::read(store.join(sha(b))).unwrap(), b);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The control socket's `switch-bundle` against a running guest: the bundle runs from the
/// next reset on; a bad one is an error reply and the guest keeps its bundle.
#[test]
fn kvm_control_switch_bundle() {
    use relaunch::control::{Control, ControlServer};
    let Some(host) = host(true) else { return };
    let dir = std::env::temp_dir().join(format!("relaunch-kvm-switch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ctl.sock");
    // Idle: boot marker, then halt forever (`kvm_control.rs`).
    let idle = native_igvm(&[(0x1000, vec![0xB0, 0x01, 0xE6, 0x80, 0xFA, 0xF4, 0xEB, 0xFD])]);
    let hello = native_igvm(&[(0x1000, testing::HELLO.to_vec())]);
    std::fs::write(dir.join("hello.igvm"), &hello).unwrap();
    std::fs::write(dir.join("junk.igvm"), b"junk").unwrap();
    let mut run = session("switch", Some(5), false);
    let mut cfg = std::mem::replace(&mut run.cfg, config_for(None, false));
    let control = Arc::new(Control::new(false));
    control.set_handover(Arc::new(Handover::new(
        Arc::clone(&cfg.next),
        config(),
        None,
        cfg.audit.clone(),
    )));
    cfg.control = Some(Arc::clone(&control));
    let server = ControlServer::start(&path, control).unwrap();
    let first = Arc::new(Launch::new(idle.clone(), &config()).unwrap());
    let session = std::thread::spawn(move || {
        let r = kvm_common::run(&host, &first, &cfg);
        (r, output(&cfg))
    });
    let mut c = Client::connect(&path);
    c.wait_status(&["\"generation\":1", "\"state\":\"running\""]);
    let line = |p: &str| {
        format!(
            r#"{{"cmd":"switch-bundle","path":{}}}"#,
            serde_json::to_string(&dir.join(p).display().to_string()).unwrap()
        )
    };
    let r = c.ask(&line("junk.igvm"));
    assert!(r.starts_with("{\"ok\":false"), "{r}");
    let r: serde_json::Value = serde_json::from_str(&c.ask(&line("hello.igvm"))).unwrap();
    assert_eq!(r["bundle_sha256"], sha(&hello).as_str(), "{r}");
    c.wait_status(&[&format!("\"next_bundle_sha256\":\"{}\"", sha(&hello))]);
    assert_eq!(c.ask(r#"{"cmd":"reset"}"#).trim(), "{\"ok\":true}");
    let (r, out) = session.join().unwrap();
    assert_eq!(r.exit_code, EXIT_POWER_OFF, "{:?}", r.outcome);
    assert_eq!(out, "hello from a hand-built plan\n");
    drop(server);
    let audit = std::fs::read_to_string(&run.audit).unwrap();
    let shas: Vec<String> = audit
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["event"] == "launch")
        .map(|v| v["bundle_sha256"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(shas, [sha(&idle), sha(&hello)]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// On every emulated confidential platform, a host one-shot hand-over (`run --next`) runs
/// the new bundle at the first relaunch with the measurement its `swap` record predicted —
/// the platform (model) reports exactly that, and `relaunch measure` of the stored copy
/// gives it too — then the original again, measured as before.
#[test]
fn kvm_emulated_hand_over_measures_as_predicted() {
    let Some(_host) = host(true) else { return };
    let (Some((first, _)), Some((next, _))) = (image("reboot-loop"), image("hello")) else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("relaunch-kvm-emu-next-{}", std::process::id()));
    for platform in ["snp", "sev-es", "tdx"] {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (audit, store) = (dir.join("audit.jsonl"), dir.join("store"));
        let args: Vec<std::ffi::OsString> = [
            first.display().to_string(),
            "--platform".into(),
            format!("emulated:{platform}"),
            "--mem".into(),
            "64M".into(),
            "--quiet".into(),
            "--next".into(),
            next.display().to_string(),
            "--max-reboots".into(),
            "2".into(),
            // The boot images' runtime resets until this generation.
            "--fw-cfg".into(),
            "opt/relaunch/reboot-until=u64:7".into(),
            "--audit-log".into(),
            audit.display().to_string(),
            "--bundle-store".into(),
            store.display().to_string(),
        ]
        .into_iter()
        .map(Into::into)
        .collect();
        assert_eq!(
            relaunch::cli::run::main(&args),
            EXIT_REBOOT_LIMIT,
            "{platform}"
        );
        let recs = take_audit_records(&audit);
        let swap = recs.iter().find(|r| r["event"] == "swap").unwrap();
        let launches: Vec<&serde_json::Value> =
            recs.iter().filter(|r| r["event"] == "launch").collect();
        assert_eq!(launches.len(), 3, "{platform}");
        for l in &launches {
            assert_eq!(
                l["launch_measurement"], l["predicted_measurement"],
                "{platform}: {l}"
            );
        }
        let next_sha = sha(&std::fs::read(&next).unwrap());
        assert_eq!(launches[1]["bundle_sha256"], next_sha.as_str());
        assert_eq!(
            launches[1]["launch_measurement"],
            swap["predicted_measurement"]
        );
        assert_eq!(launches[2]["bundle_sha256"], launches[0]["bundle_sha256"]);
        assert_eq!(
            launches[2]["launch_measurement"],
            launches[0]["launch_measurement"]
        );
        // What `relaunch measure STORE/<sha> --platform P --mem 64M` computes.
        let stored = std::fs::read(store.join(&next_sha)).unwrap();
        let cfg = LaunchConfig {
            platform: Platform::from_name(platform).unwrap(),
            mem_bytes: 64 << 20,
            ..config()
        };
        let plan = relaunch_core::plan::plan(&stored[..], &cfg).unwrap();
        let m = relaunch_core::measure::expected(plan.stream())
            .unwrap()
            .to_string();
        assert_eq!(
            m,
            swap["predicted_measurement"].as_str().unwrap(),
            "{platform}: relaunch measure of the stored bundle"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
