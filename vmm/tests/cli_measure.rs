//! `relaunch measure`, run as a process: happy paths against known digests, and bad input
//! (exit code 2, one line on stderr, nothing on stdout).

mod cli_common;

use cli_common::{assert_usage_error, relaunch, reset_vmsa, scratch, spec_file, N1};
use igvm_defs::{IgvmPageDataFlags, IgvmPageDataType, IgvmPlatformType};
use relaunch_core::arch::vmsa::KVM_VMSA_GPA;
use relaunch_core::measure::sev::launch_measure;
use relaunch_core::measure::snp::{contents_digest, page_info_digest, PAGE_TYPE_VMSA};
use relaunch_core::writer::IgvmBuilder;

fn unhex<const N: usize>(s: &str) -> [u8; N] {
    let mut out = [0u8; N];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
    }
    out
}

#[test]
fn prints_the_spec_vector_digest() {
    let f = scratch("measure-spec1.igvm", &spec_file(1, false));
    let r = relaunch(&["measure", f.to_str().unwrap(), "--platform", "snp"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, format!("{N1}\n"));
    assert!(r.stderr.is_empty(), "{}", r.stderr);
    // `--flag=value` works as well, and the vCPU type does not matter when every vCPU has
    // the bundle's VMSA.
    let r = relaunch(&[
        "measure",
        "--platform=snp",
        "--vcpu-type=EPYC-Milan",
        f.to_str().unwrap(),
    ]);
    assert_eq!(r.stdout, format!("{N1}\n"));
}

#[test]
fn extra_vcpus_need_a_cpu_type_and_add_one_vmsa_each() {
    let f = scratch("measure-spec-vcpus.igvm", &spec_file(1, false));
    let path = f.to_str().unwrap();
    let r = relaunch(&["measure", path, "--platform", "snp", "--vcpus", "2"]);
    assert_usage_error(&r, "relaunch measure: ", "--vcpu-type");

    let r = relaunch(&[
        "measure",
        path,
        "--platform",
        "snp",
        "--vcpus",
        "2",
        "--vcpu-sig",
        "0x800F12",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    // vCPU 1 starts from QEMU's reset state with EPYC-v4's signature: the same VMSA page.
    let want = page_info_digest(
        &unhex::<48>(N1),
        &contents_digest(&reset_vmsa()),
        KVM_VMSA_GPA,
        PAGE_TYPE_VMSA,
    );
    let want: String = want.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(r.stdout.trim(), want);
    let r2 = relaunch(&[
        "measure",
        path,
        "--platform",
        "snp",
        "--vcpus",
        "2",
        "--vcpu-type",
        "EPYC-v4",
    ]);
    assert_eq!(r2.stdout, r.stdout);
    let r3 = relaunch(&[
        "measure",
        path,
        "--platform",
        "snp",
        "--vcpus",
        "2",
        "--vcpu-type",
        "EPYC-Genoa",
    ]);
    assert_eq!(r3.code, 0);
    assert_ne!(r3.stdout, r.stdout, "RDX differs with the CPU model");
}

#[test]
fn json_report_has_the_inputs_and_facts() {
    let f = scratch("measure-json.igvm", &spec_file(2, true));
    let r = relaunch(&[
        "measure",
        f.to_str().unwrap(),
        "--platform",
        "snp",
        "--vcpus",
        "3",
        "--vcpu-type",
        "EPYC-v4",
        "--json",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout.lines().count(), 1);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["platform"], "snp");
    assert_eq!(v["input"], "igvm");
    assert_eq!(v["inputs"]["vcpus"], 3);
    assert_eq!(v["inputs"]["vcpu_type"], "EPYC-v4");
    assert_eq!(v["inputs"]["vcpu_sig"], "0x800f12");
    assert_eq!(v["policy"], "0x30000");
    assert_eq!(v["pages"]["unmeasured"], 3); // 2 parameter pages + 1 unmeasured page
    assert_eq!(v["pages"]["normal"], 2);
    assert_eq!(v["pages"]["secrets"], 1);
    assert_eq!(v["pages"]["cpuid"], 1);
    let vcpus = v["vcpus"].as_array().unwrap();
    assert_eq!(vcpus.len(), 3);
    assert_eq!(vcpus[0]["source"], "bundle");
    assert_eq!(vcpus[1]["source"], "reset");
    assert!(vcpus[0]["vmsa_sha384"]
        .as_str()
        .unwrap()
        .starts_with("77920c4c"));
    assert!(v["id_block"].is_null());
    assert_eq!(v["algorithm"], "sha384");
    assert_eq!(v["digest"].as_str().unwrap().len(), 96);
}

#[test]
fn id_block_match_is_reported() {
    // Write the ID block with the right ld: the spec file's N = 1 digest.
    let mut raw = <igvm_defs::IGVM_VHS_SNP_ID_BLOCK as zerocopy::FromZeros>::new_zeroed();
    raw.compatibility_mask = 1;
    raw.ld = unhex::<48>(N1);
    raw.id_key_algorithm = 1;
    let file = |raw: &igvm_defs::IGVM_VHS_SNP_ID_BLOCK| {
        let mut b = IgvmBuilder::new();
        let m = b.platform(IgvmPlatformType::SEV_SNP, 0).unwrap();
        b.guest_policy(0x30000, m);
        b.snp_id_block(raw);
        b.parameter_area(0, 4096, &[]).unwrap();
        b.vp_count(0, 0);
        b.parameter_insert(0x10000, m, 0);
        let data: Vec<u8> = (0..4096u32).map(|i| (i & 0xFF) as u8).collect();
        let f = IgvmPageDataFlags::new();
        b.page_data(0, m, f, IgvmPageDataType::NORMAL, &data)
            .unwrap();
        b.page_data(0x1000, m, f, IgvmPageDataType::NORMAL, &[])
            .unwrap();
        b.page_data(
            0x2000,
            m,
            IgvmPageDataFlags::new().with_unmeasured(true),
            IgvmPageDataType::NORMAL,
            &[],
        )
        .unwrap();
        b.page_data(0x3000, m, f, IgvmPageDataType::SECRETS, &[])
            .unwrap();
        b.page_data(0x4000, m, f, IgvmPageDataType::CPUID_DATA, &[0; 4096])
            .unwrap();
        b.vp_context(KVM_VMSA_GPA, m, 0, &reset_vmsa()).unwrap();
        b.finish().unwrap()
    };
    let good = scratch("measure-idblock-good.igvm", &file(&raw));
    let r = relaunch(&[
        "measure",
        good.to_str().unwrap(),
        "--platform",
        "snp",
        "--json",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["digest"], N1);
    assert_eq!(v["id_block"]["matches"], true);
    assert_eq!(v["id_block"]["policy"], "0x30000");
    let r = relaunch(&["measure", good.to_str().unwrap(), "--platform", "snp"]);
    assert_eq!(r.stdout.trim(), N1);
    assert!(r.stderr.contains("ID block ld matches"), "{}", r.stderr);

    raw.ld[0] ^= 1;
    let bad = scratch("measure-idblock-bad.igvm", &file(&raw));
    let r = relaunch(&[
        "measure",
        bad.to_str().unwrap(),
        "--platform",
        "snp",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["id_block"]["matches"], false);
}

#[test]
fn sev_launch_measure() {
    let mut b = IgvmBuilder::new();
    let m = b.platform(IgvmPlatformType::SEV, 0).unwrap();
    b.page_data(
        0,
        m,
        IgvmPageDataFlags::new(),
        IgvmPageDataType::NORMAL,
        b"sev",
    )
    .unwrap();
    let f = scratch("measure-sev.igvm", &b.finish().unwrap());
    let path = f.to_str().unwrap();
    let plain = relaunch(&["measure", path, "--platform", "sev"]);
    assert_eq!(plain.code, 0, "{}", plain.stderr);
    let digest = unhex::<32>(plain.stdout.trim());
    let r = relaunch(&[
        "measure",
        path,
        "--platform",
        "sev",
        "--tik",
        "000102030405060708090a0b0c0d0e0f",
        "--mnonce",
        "00000000000000000000000000000000",
        "--api",
        "1.55",
        "--build",
        "21",
        "--json",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let tik: [u8; 16] = core::array::from_fn(|i| i as u8);
    let want = launch_measure(&tik, 1, 55, 21, 1, &digest, &[0; 16]);
    let want: String = want.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(v["launch_measure"]["measure"], want.as_str());
    assert_eq!(v["launch_measure"]["policy"], "0x1");
    assert_eq!(v["algorithm"], "sha256");

    // The TIK may also be a 16-byte file (sev-tool's tik.bin).
    let tik_file = scratch("tik.bin", &tik);
    let r2 = relaunch(&[
        "measure",
        path,
        "--platform",
        "sev",
        "--tik",
        tik_file.to_str().unwrap(),
        "--mnonce",
        "00000000000000000000000000000000",
        "--api",
        "1.55",
        "--build",
        "21",
        "--json",
    ]);
    let v2: serde_json::Value = serde_json::from_str(&r2.stdout).unwrap();
    assert_eq!(v2["launch_measure"], v["launch_measure"]);
}

#[test]
fn tdx_mrtd() {
    let mut b = IgvmBuilder::new();
    let m = b.platform(IgvmPlatformType::TDX, 0).unwrap();
    b.page_data(
        0xFFFF_F000,
        m,
        IgvmPageDataFlags::new(),
        IgvmPageDataType::NORMAL,
        &[],
    )
    .unwrap();
    b.page_data(
        0,
        m,
        IgvmPageDataFlags::new().with_unmeasured(true),
        IgvmPageDataType::NORMAL,
        &[1],
    )
    .unwrap();
    let f = scratch("measure-tdx.igvm", &b.finish().unwrap());
    let r = relaunch(&["measure", f.to_str().unwrap(), "--platform", "tdx"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout.trim().len(), 96);
}

#[test]
fn bad_input_is_one_line_and_exit_2() {
    let spec = scratch("measure-bad-spec.igvm", &spec_file(1, false));
    let spec = spec.to_str().unwrap();
    let garbage = scratch("measure-garbage.bin", &[0x5A; 1000]);
    let garbage = garbage.to_str().unwrap();
    let mut corrupt = spec_file(1, false);
    corrupt[0x30] ^= 0xFF; // inside the variable headers: CRC mismatch
    let corrupt = scratch("measure-corrupt.igvm", &corrupt);
    let corrupt = corrupt.to_str().unwrap();
    let p = "relaunch measure: ";
    for (args, needle) in [
        (vec!["measure"], "no bundle FILE"),
        (vec!["measure", spec], "--platform"),
        (
            vec!["measure", spec, "--platform", "arm"],
            "--platform \"arm\"",
        ),
        (vec!["measure", spec, "--platform", "native"], "--platform"),
        (
            vec!["measure", spec, "--platform"],
            "--platform needs a value",
        ),
        (
            vec!["measure", spec, "--platform", "snp", "--frob"],
            "unknown flag",
        ),
        (
            vec!["measure", spec, "--platform", "snp", "--json=yes"],
            "--json takes no value",
        ),
        (
            vec!["measure", spec, "--platform", "snp", "--vcpus", "0"],
            "--vcpus",
        ),
        (
            vec!["measure", spec, "--platform", "snp", "--vcpus", "x"],
            "--vcpus",
        ),
        (
            vec![
                "measure",
                spec,
                "--platform",
                "snp",
                "--vcpu-type",
                "Pentium",
            ],
            "Pentium",
        ),
        (
            vec![
                "measure",
                spec,
                "--platform",
                "snp",
                "--vcpu-type",
                "EPYC",
                "--vcpu-sig",
                "1",
            ],
            "not both",
        ),
        (
            vec!["measure", spec, "--platform", "snp", "--policy", "0x10000"],
            "bit 17",
        ),
        (vec!["measure", spec, "--platform", "tdx"], "no tdx view"),
        (
            vec!["measure", spec, "--platform", "sev-es"],
            "no sev-es view",
        ),
        (
            vec!["measure", spec, "--platform", "snp", "--kernel", spec],
            "IGVM",
        ),
        (
            vec!["measure", spec, "--platform", "snp", "--append", "x"],
            "--kernel",
        ),
        (
            vec!["measure", spec, "--platform", "snp", "--tik", "00"],
            "--tik",
        ),
        (
            vec!["measure", "/nonexistent/x.igvm", "--platform", "snp"],
            "No such file",
        ),
        (
            vec!["measure", garbage, "--platform", "snp"],
            "not an IGVM file",
        ),
        (vec!["measure", corrupt, "--platform", "snp"], "checksum"),
        (
            vec!["measure", spec, spec, "--platform", "snp"],
            "unexpected argument",
        ),
    ] {
        let r = relaunch(&args);
        assert_usage_error(&r, p, needle);
    }
}

#[test]
fn help_exits_zero() {
    let r = relaunch(&["measure", "--help"]);
    assert_eq!(r.code, 0);
    assert!(r.stdout.starts_with("usage: relaunch measure"));
}
