//! `relaunch inspect`, run as a process, on IGVM files and an OVMF-like image.

mod cli_common;

use cli_common::{assert_usage_error, relaunch, scratch, spec_file, N1};
use igvm_defs::{IgvmPageDataFlags, IgvmPageDataType, IgvmPlatformType};
use relaunch_core::writer::IgvmBuilder;

#[test]
fn text_report_explains_the_bundle() {
    let f = scratch("inspect-spec.igvm", &spec_file(2, true));
    let r = relaunch(&["inspect", f.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let out = &r.stdout;
    for needle in [
        "IGVM format v1",
        "snp     mask 0x1",
        "native  mask 0x2",
        "GUEST_POLICY",
        "policy 0x30000",
        "PARAMETER_AREA",
        "area 0: 0x2000 bytes (2 pages)",
        "PARAMETER_INSERT",
        "VP_CONTEXT",
        "VMSA @0xfffffffff000",
        "== native view",
        "== snp view",
        "policy 0x30000 (ABI 0.0, SMT, MBO)",
        "0x10000-0x11fff",
        "unmeasured generated pages 0..1",
        "secrets",
        "cpuid",
        "vCPU 0 (bundle)",
        "rdx 0x800f12",
        "cr4 0x40",
        "SNP ID block: none",
        "region for imports outside RAM",
        "launch digest: none (native launches are not measured)",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in:\n{out}");
    }
    // With one vCPU the digest is the spec vector for a two-page area.
    assert!(out.contains(
        "launch digest: 1bfb0a463e7b887525d354e50b5e32118c0601f5d5b01eb3cbfb753f2dd1ba2ff65331d4ba23675636b26655d227c94f"
    ), "{out}");
    let r = relaunch(&[
        "inspect",
        f.to_str().unwrap(),
        "--platform",
        "snp",
        "--vcpus",
        "2",
    ]);
    assert!(r.stdout.contains("vCPU 1 (reset)"), "{}", r.stdout);
    assert!(
        r.stdout
            .contains("launch digest: depends on the vCPU signature"),
        "{}",
        r.stdout
    );
    assert!(!r.stdout.contains("== native view"));
}

#[test]
fn page_runs_are_collapsed() {
    let mut b = IgvmBuilder::new();
    let m = b.platform(IgvmPlatformType::SEV_SNP, 0).unwrap();
    let f = IgvmPageDataFlags::new();
    for i in 0..300u64 {
        b.page_data(
            0x100000 + i * 4096,
            m,
            f,
            IgvmPageDataType::NORMAL,
            &[(i % 250) as u8 + 1],
        )
        .unwrap();
    }
    let file = scratch("inspect-runs.igvm", &b.finish().unwrap());
    let r = relaunch(&["inspect", file.to_str().unwrap(), "--vcpu-type", "EPYC-v4"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("PAGE_DATA x300"), "{}", r.stdout);
    assert!(r.stdout.contains("0x100000-0x22bfff"), "{}", r.stdout);
    assert!(r.stdout.contains("300 pages  normal"), "{}", r.stdout);
    assert!(r.stdout.lines().count() < 40, "{}", r.stdout);
    assert!(r.stdout.contains("vCPU 0 (reset)"));
    // --json keeps every header and every op.
    let r = relaunch(&["inspect", file.to_str().unwrap(), "--json"]);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["headers"].as_array().unwrap().len(), 301);
    let ops = v["views"][0]["ops"].as_array().unwrap();
    assert_eq!(ops.iter().filter(|o| o["op"] == "import_page").count(), 300);
    // No CPU type: the digest is withheld with a reason instead of guessed.
    assert!(v["views"][0]["digest"].is_null());
    assert!(v["views"][0]["digest_note"]
        .as_str()
        .unwrap()
        .contains("--vcpu-type"));
}

#[test]
fn json_report() {
    let f = scratch("inspect-json.igvm", &spec_file(1, true));
    let r = relaunch(&["inspect", f.to_str().unwrap(), "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["input"], "igvm");
    assert_eq!(v["platforms"].as_array().unwrap().len(), 2);
    let views = v["views"].as_array().unwrap();
    assert_eq!(views.len(), 2);
    let snp = views.iter().find(|w| w["platform"] == "snp").unwrap();
    assert_eq!(snp["digest"], N1);
    assert_eq!(snp["ops"][0]["op"], "create_vm");
    assert_eq!(snp["ops"][0]["policy"], "0x30000");
    assert_eq!(snp["vp_contexts"][0]["rdx"], "0x800f12");
    assert_eq!(snp["pages"]["secrets"], 1);
    let last = snp["ops"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["op"], "finalize");
    let native = views.iter().find(|w| w["platform"] == "native").unwrap();
    assert!(native["digest"].is_null());
}

#[test]
fn a_view_that_cannot_be_planned_shows_why() {
    let mut b = IgvmBuilder::new();
    let m = b.platform(IgvmPlatformType::SEV_SNP, 0).unwrap();
    let n = b.platform(IgvmPlatformType::NATIVE, 0).unwrap();
    b.page_data(
        0,
        m | n,
        IgvmPageDataFlags::new(),
        IgvmPageDataType::NORMAL,
        &[1],
    )
    .unwrap();
    // A VMSA where KVM cannot take it: the snp view fails, the native view still shows.
    b.vp_context(0x5000, m, 0, &cli_common::reset_vmsa())
        .unwrap();
    let f = scratch("inspect-badvmsa.igvm", &b.finish().unwrap());
    let r = relaunch(&["inspect", f.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains("cannot launch: header 3 (VP_CONTEXT)"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("0xfffffffff000"), "{}", r.stdout);
    assert!(r.stdout.contains("== native view"));
}

#[test]
fn firmware_image() {
    // A minimal OVMF-like image: a GUID table with the SEV-ES reset block, at the end of a
    // 64 KiB image (footer GUID 96b582de-1fb2-45f7-baea-a366c55a082d, 0x30 bytes before
    // the end; table entries are {data, u16 size, guid} read backwards).
    let guid = |s: &str| -> [u8; 16] {
        let h: Vec<u8> = s
            .split('-')
            .flat_map(|p| {
                (0..p.len() / 2)
                    .map(|i| u8::from_str_radix(&p[2 * i..2 * i + 2], 16).unwrap())
                    .collect::<Vec<_>>()
            })
            .collect();
        // Mixed-endian GUID: first three fields little-endian.
        let mut g = [0u8; 16];
        g[..4].copy_from_slice(&[h[3], h[2], h[1], h[0]]);
        g[4..6].copy_from_slice(&[h[5], h[4]]);
        g[6..8].copy_from_slice(&[h[7], h[6]]);
        g[8..].copy_from_slice(&h[8..]);
        g
    };
    let len = 64 * 1024;
    let mut img = vec![0u8; len];
    let footer_end = len - 0x20; // the table footer ends 0x20 bytes before the image end
    let mut entry = Vec::new();
    entry.extend_from_slice(&0x0080_b004u32.to_le_bytes());
    entry.extend_from_slice(&(4u16 + 18).to_le_bytes());
    entry.extend_from_slice(&guid("00f771de-1a7e-4fcb-890e-68c77e2fb44e"));
    let mut table = entry.clone();
    let total = (table.len() + 18) as u16;
    table.extend_from_slice(&total.to_le_bytes());
    table.extend_from_slice(&guid("96b582de-1fb2-45f7-baea-a366c55a082d"));
    img[footer_end - table.len()..footer_end].copy_from_slice(&table);
    let f = scratch("inspect-ovmf.fd", &img);
    let r = relaunch(&["inspect", f.to_str().unwrap(), "--vcpu-type", "EPYC-v4"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains("OVMF/TDVF firmware image"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("00f771de-1a7e-4fcb-890e-68c77e2fb44e"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("== sev view"), "{}", r.stdout);
    let r = relaunch(&["inspect", f.to_str().unwrap(), "--json"]);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["input"], "firmware");
    assert_eq!(v["sev_es_reset_addr"], "0x80b004");
}

#[test]
fn bad_input_is_one_line_and_exit_2() {
    let garbage = scratch("inspect-garbage.bin", b"hello");
    let g = garbage.to_str().unwrap();
    let p = "relaunch inspect: ";
    assert_usage_error(&relaunch(&["inspect"]), p, "no bundle FILE");
    assert_usage_error(&relaunch(&["inspect", g]), p, "not an IGVM file");
    assert_usage_error(&relaunch(&["inspect", "/nonexistent"]), p, "No such file");
    assert_usage_error(&relaunch(&["inspect", g, "--bogus"]), p, "unknown flag");
    assert_usage_error(
        &relaunch(&["inspect", g, "--platform", "x"]),
        p,
        "--platform",
    );
    let mut truncated = spec_file(1, false);
    truncated.truncate(100);
    let t = scratch("inspect-truncated.igvm", &truncated);
    assert_usage_error(
        &relaunch(&["inspect", t.to_str().unwrap()]),
        p,
        "total_file_size",
    );
}

#[test]
fn non_utf8_text_value_is_a_usage_error() {
    use std::os::unix::ffi::OsStrExt;
    let bad = std::ffi::OsStr::from_bytes(b"sn\xffp");
    let f = scratch("inspect-non-utf8-value.igvm", &spec_file(1, false));
    let name = std::ffi::OsStr::new;
    for (args, prefix, needle) in [
        (
            vec![name("inspect"), f.as_os_str(), name("--platform"), bad],
            "relaunch inspect: ",
            "not valid UTF-8",
        ),
        (
            vec![name("measure"), f.as_os_str(), name("--platform"), bad],
            "relaunch measure: ",
            "not valid UTF-8",
        ),
        (
            vec![name("run"), f.as_os_str(), name("--fw-cfg"), bad],
            "relaunch run: ",
            "not valid UTF-8",
        ),
        (vec![bad], "relaunch: ", "unknown command"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_relaunch"))
            .args(&args)
            .output()
            .unwrap();
        let r = cli_common::Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        assert_usage_error(&r, prefix, needle);
    }
}
