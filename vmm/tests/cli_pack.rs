//! `relaunch pack`, run as a process: `--elf` reproduces the prebuilt boot image byte for
//! byte, the printed digests are `relaunch measure`'s and `relaunch inspect`'s, `--kernel`
//! packs a (synthetic) bzImage, and bad input is exit code 2 with one line.

mod cli_common;

use std::path::PathBuf;

use cli_common::{assert_usage_error, relaunch, scratch};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn out(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cli-tests");
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    let _ = std::fs::remove_file(&p);
    p
}

/// `relaunch pack -o O --elf ELF EXTRA…`.
fn pack_elf(o: &std::path::Path, elf: &std::path::Path, extra: &[&str]) -> cli_common::Run {
    let mut args = vec![
        "pack",
        "-o",
        o.to_str().unwrap(),
        "--elf",
        elf.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    relaunch(&args)
}

/// `(platform, digest or None)` per line of `pack`'s text output after the first.
fn digests(stdout: &str) -> Vec<(String, Option<String>)> {
    stdout
        .lines()
        .skip(1)
        .map(|l| {
            let (p, rest) = l.split_once(' ').unwrap();
            let rest = rest.trim();
            let d = (!rest.starts_with('(')).then(|| rest.to_string());
            (p.to_string(), d)
        })
        .collect()
}

#[test]
fn elf_reproduces_the_prebuilt_hello_and_predicts_measure_and_inspect() {
    let elf = root().join("boot-images/prebuilt/hello.elf");
    let want = std::fs::read(root().join("boot-images/prebuilt/hello.igvm")).unwrap();
    let o = out("pack-hello.igvm");
    let r = pack_elf(&o, &elf, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.is_empty(), "{}", r.stderr);
    assert_eq!(
        std::fs::read(&o).unwrap(),
        want,
        "not byte for byte hello.igvm"
    );
    assert!(
        r.stdout.starts_with(&format!(
            "wrote {} ({} bytes), views: native, sev, sev-es, snp, tdx\n",
            o.display(),
            want.len()
        )),
        "{}",
        r.stdout
    );
    let views = digests(&r.stdout);
    assert_eq!(views.len(), 5, "{}", r.stdout);
    assert_eq!(views[0], ("native".to_string(), None));
    // Every confidential view: the digest `relaunch measure` prints for the file.
    for (platform, digest) in &views[1..] {
        let m = relaunch(&["measure", o.to_str().unwrap(), "--platform", platform]);
        assert_eq!(m.code, 0, "{}", m.stderr);
        assert_eq!(Some(m.stdout.trim()), digest.as_deref(), "{platform}");
    }
    // The digests known for the prebuilt image (boot-images/src/lib.rs
    // `prebuilt_hello_measurements`, checked independently there).
    assert_eq!(
        views[3].1.as_deref(),
        Some(
            "d08b79ffae5644f252c9304d485de78e395bc90cbf2e5adb6ed53b8562281b49\
             91640c806ba00bd59edfe268acd1d333"
        )
    );
    // `inspect` shows the same views with the same digests, in the same order.
    let i = relaunch(&["inspect", o.to_str().unwrap()]);
    assert_eq!(i.code, 0, "{}", i.stderr);
    let heads: Vec<&str> = i
        .stdout
        .lines()
        .filter(|l| l.starts_with("== ") && l.contains(" view "))
        .collect();
    assert_eq!(heads.len(), 5, "{}", i.stdout);
    for ((platform, _), head) in views.iter().zip(&heads) {
        assert!(head.starts_with(&format!("== {platform} view")), "{head}");
    }
    let inspected: Vec<Option<String>> = i
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("launch digest: "))
        .map(|d| (!d.starts_with("none")).then(|| d.to_string()))
        .collect();
    let packed: Vec<Option<String>> = views.into_iter().map(|v| v.1).collect();
    assert_eq!(inspected, packed);

    // --json: the same facts as one object.
    let r = pack_elf(&o, &elf, &["--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["size"], want.len() as u64);
    let views = v["views"].as_array().unwrap();
    let names: Vec<&str> = views
        .iter()
        .map(|v| v["platform"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["native", "sev", "sev-es", "snp", "tdx"]);
    assert_eq!(views[0]["measured"], false);
    assert_eq!(views[3]["algorithm"], "sha384");
    assert_eq!(views[3]["digest"].as_str(), packed[3].as_deref());
    assert_eq!(views[1]["algorithm"], "sha256");
}

/// With `--vcpus 2` the second vCPU starts from the reset state: SNP and SEV-ES need a CPU
/// signature, and `pack` says so for those views instead of failing the pack.
#[test]
fn vcpus_change_the_prediction_like_measure() {
    let elf = root().join("boot-images/prebuilt/hello.elf");
    let o = out("pack-hello-2.igvm");
    let args = [
        "pack",
        "-o",
        o.to_str().unwrap(),
        "--elf",
        elf.to_str().unwrap(),
        "--vcpus",
        "4",
        "--vcpu-sig",
        "0x800f12",
    ];
    let r = relaunch(&args);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let views = digests(&r.stdout);
    // boot-images `prebuilt_hello_measurements`: SNP and SEV-ES with 4 vCPUs.
    let snp = views.iter().find(|v| v.0 == "snp").unwrap();
    assert_eq!(
        snp.1.as_deref(),
        Some(
            "b2902d601cddf91c2dbc4f65e814efed54f107da7b2bca8ef1b8775a02801793\
             fd3897b495e304b8e212c3e8508c2978"
        )
    );
    let es = views.iter().find(|v| v.0 == "sev-es").unwrap();
    assert_eq!(
        es.1.as_deref(),
        Some("2fb09a8d33a14834fc6c87a9994a4b51b98673f15e45c0d059bc49c10cf4b794")
    );
}

#[test]
fn kernel_packs_native_and_snp_views_that_measure_and_inspect_show() {
    let k = scratch(
        "pack-fake-bzimage",
        &relaunch::testing::synthetic_bzimage(&[0x90; 5000]),
    );
    let initrd = scratch("pack-fake-initrd", &[7u8; 3000]);
    let o = out("pack-linux.igvm");
    let pack = |o: &std::path::Path, extra: &[&str]| {
        let mut args = vec![
            "pack",
            "-o",
            o.to_str().unwrap(),
            "--kernel",
            k.to_str().unwrap(),
            "--initrd",
            initrd.to_str().unwrap(),
            "--append",
            "console=ttyS0 panic=-1",
        ];
        args.extend_from_slice(extra);
        relaunch(&args)
    };
    let r = pack(&o, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("views: native, snp\n"), "{}", r.stdout);
    let views = digests(&r.stdout);
    assert_eq!(views.len(), 2, "{}", r.stdout);
    assert_eq!(views[0], ("native".to_string(), None));
    assert_eq!(views[1].0, "snp");
    // The SNP digest is `relaunch measure`'s for the file.
    let m = relaunch(&["measure", o.to_str().unwrap(), "--platform", "snp"]);
    assert_eq!(m.code, 0, "{}", m.stderr);
    assert_eq!(Some(m.stdout.trim()), views[1].1.as_deref());
    let i = relaunch(&["inspect", o.to_str().unwrap(), "--platform", "native"]);
    assert_eq!(i.code, 0, "{}", i.stderr);
    // startup_64 = load address + 0x200, RSI = the zero page, __BOOT_CS / __BOOT_DS.
    assert!(i.stdout.contains("rip 0x1000200 "), "{}", i.stdout);
    assert!(i.stdout.contains("rsi 0x10000 "), "{}", i.stdout);
    assert!(i.stdout.contains("cs 0x0010/0xa9b"), "{}", i.stdout);
    assert!(i.stdout.contains("ss 0x0018/0xc93"), "{}", i.stdout);
    let i = relaunch(&["inspect", o.to_str().unwrap(), "--platform", "snp"]);
    assert_eq!(i.code, 0, "{}", i.stderr);
    assert!(i.stdout.contains("native  mask 0x1"), "{}", i.stdout);
    assert!(i.stdout.contains("snp     mask 0x2"), "{}", i.stdout);
    // The same entry; CR3 with the C-bit (51), EFER.SVME; the CC blob, secrets and CPUID
    // pages; every page of E820 RAM imported once: 256 MiB less the ISA hole's 96 pages.
    assert!(i.stdout.contains("rip 0x1000200 "), "{}", i.stdout);
    assert!(i.stdout.contains("cr3 0x8000000002000 "), "{}", i.stdout);
    assert!(i.stdout.contains("efer 0x1500 "), "{}", i.stdout);
    assert!(
        i.stdout
            .contains("0x12000-0x12fff                 1 page  secrets"),
        "{}",
        i.stdout
    );
    assert!(
        i.stdout
            .contains("0x13000-0x13fff                 1 page  cpuid"),
        "{}",
        i.stdout
    );
    assert!(
        i.stdout
            .contains("65441 pages imported (normal 65439, secrets 1, cpuid 1)"),
        "{}",
        i.stdout
    );
    assert!(i.stdout.contains(&format!(
        "launch digest: {}",
        views[1].1.as_deref().unwrap()
    )));

    // --platform and --c-bit: the SNP view alone, its digest changed by the C-bit; --json.
    let o47 = out("pack-linux-47.igvm");
    let r = pack(&o47, &["--platform", "snp", "--c-bit", "47", "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let j: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(j["c_bit"], 47, "{j}");
    assert_eq!(j["views"].as_array().unwrap().len(), 1, "{j}");
    assert_eq!(j["views"][0]["platform"], "snp");
    assert_eq!(j["views"][0]["algorithm"], "sha384");
    let d47 = j["views"][0]["digest"].as_str().unwrap().to_string();
    assert_ne!(Some(d47.as_str()), views[1].1.as_deref());
    let m = relaunch(&["measure", o47.to_str().unwrap(), "--platform", "snp"]);
    assert_eq!(m.stdout.trim(), d47);
    let i = relaunch(&["inspect", o47.to_str().unwrap(), "--platform", "snp"]);
    assert!(i.stdout.contains("cr3 0x800000002000 "), "{}", i.stdout);
    let r = pack(&out("pack-linux-native.igvm"), &["--platform", "native"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("views: native\n"), "{}", r.stdout);
    for (extra, want) in [
        (&["--platform", "tdx"][..], "packs native and snp views"),
        (&["--platform", "snp,snp"][..], "asked for twice"),
        (&["--c-bit", "31"][..], "from 32 to 51"),
    ] {
        let r = pack(&out("pack-linux-bad.igvm"), extra);
        assert_usage_error(&r, "relaunch pack: ", want);
    }
}

#[test]
fn bad_input_is_one_line_and_exit_2() {
    let o = out("pack-bad.igvm");
    let os = o.to_str().unwrap();
    let junk = scratch("pack-junk", b"not an elf at all");
    let js = junk.to_str().unwrap();
    for (args, needle) in [
        (vec!["pack", "-o", os, "--elf", js], "not an x86-64 ELF64"),
        (
            vec!["pack", "-o", os, "--kernel", js],
            "not a Linux bzImage",
        ),
        (
            vec!["pack", "-o", os, "--elf", "/nonexistent/x.elf"],
            "--elf /nonexistent/x.elf",
        ),
        (vec!["pack", "--elf", js], "-o OUT is required"),
        (vec!["pack", "-o", os], "nothing to pack"),
        (
            vec!["pack", "-o", os, "--elf", js, "--frob"],
            "unknown flag",
        ),
    ] {
        let r = relaunch(&args);
        assert_usage_error(&r, "relaunch pack: ", needle);
        assert!(!o.exists(), "{args:?} wrote a file");
    }
    let k = scratch(
        "pack-fake-bzimage-2",
        &relaunch::testing::synthetic_bzimage(&[1; 100]),
    );
    let long = "x".repeat(3000);
    let r = relaunch(&[
        "pack",
        "-o",
        os,
        "--kernel",
        k.to_str().unwrap(),
        "--append",
        &long,
    ]);
    assert_usage_error(&r, "relaunch pack: ", "command line is 3001 bytes");
    let r = relaunch(&[
        "pack",
        "-o",
        os,
        "--kernel",
        k.to_str().unwrap(),
        "--mem",
        "16M",
    ]);
    assert_usage_error(&r, "relaunch pack: ", "does not fit");
    let r = relaunch(&["help", "pack"]);
    assert_eq!(r.code, 0);
    assert!(r.stdout.contains("--kernel BZIMAGE"), "{}", r.stdout);
}

/// `--host-window` gives the fuki image's bundle: `pack --elf fuki --host-window` is
/// `boot-images/out/fuki.igvm` byte for byte (both from `cargo xtask build-images`).
#[test]
fn host_window_reproduces_the_fuki_image() {
    let elf = root().join("target/guests/x86_64-unknown-none/release/fuki");
    let built = root().join("boot-images/out/fuki.igvm");
    if !elf.exists() || !built.exists() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but {} or {} is missing (cargo xtask build-images)",
            elf.display(),
            built.display()
        );
        println!("SKIPPED: no fuki ELF and image here (cargo xtask build-images makes them)");
        return;
    }
    let o = out("pack-fuki.igvm");
    let r = pack_elf(&o, &elf, &["--host-window"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(std::fs::read(&o).unwrap(), std::fs::read(&built).unwrap());
    // Without the window it is a different bundle.
    let r = pack_elf(&o, &elf, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_ne!(std::fs::read(&o).unwrap(), std::fs::read(&built).unwrap());
}

/// `--firmware` on Debian's OVMF.fd (installed by `scripts/oracles.sh`): the SNP digest
/// printed is `relaunch measure` of the packed file, the classic one is `relaunch measure`
/// of the image itself with the vCPU type the VMSAs were packed with (EPYC-v4 by default),
/// and the TDX view measures the classic MRTD.
#[test]
fn firmware_prints_measure_of_the_packed_file_and_the_classic_launch() {
    let ovmf = root().join(".oracles/ovmf/usr/share/ovmf/OVMF.fd");
    if !ovmf.exists() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but {} is missing (scripts/oracles.sh)",
            ovmf.display()
        );
        println!(
            "SKIPPED: {} missing (run scripts/oracles.sh)",
            ovmf.display()
        );
        return;
    }
    let o = out("pack-ovmf.igvm");
    let (o_s, ovmf_s) = (o.to_str().unwrap(), ovmf.to_str().unwrap());
    let r = relaunch(&["pack", "-o", o_s, "--firmware", ovmf_s, "--vcpus", "2"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert!(
        lines[0].ends_with("views: native, snp, tdx"),
        "{}",
        r.stdout
    );
    let field = |line: &str, after: &str| {
        line.split_once(after)
            .map(|(_, rest)| rest.split_whitespace().next().unwrap().to_string())
            .unwrap_or_else(|| panic!("{after:?} not in {line:?}"))
    };
    let snp = field(lines[2], "snp");
    let snp_classic = field(lines[3], "classic launch of the image:");
    assert!(
        lines[3].contains("(29 ZERO pages packed as NORMAL zeros)"),
        "{}",
        r.stdout
    );
    let tdx = field(lines[4], "tdx");
    let tdx_classic = field(lines[5], "classic launch of the image:");
    let measure = |file: &str, platform: &str, extra: &[&str]| {
        let mut args = vec!["measure", file, "--platform", platform, "--vcpus", "2"];
        args.extend_from_slice(extra);
        let m = relaunch(&args);
        assert_eq!(m.code, 0, "{}", m.stderr);
        m.stdout.trim().to_string()
    };
    assert_eq!(snp, measure(o_s, "snp", &[]));
    assert_eq!(
        snp_classic,
        measure(ovmf_s, "snp", &["--vcpu-type", "EPYC-v4"])
    );
    assert_ne!(snp, snp_classic, "the ZERO pages are measured differently");
    assert_eq!(tdx, measure(o_s, "tdx", &[]));
    assert_eq!(tdx, tdx_classic);
    assert_eq!(tdx_classic, measure(ovmf_s, "tdx", &[]));
    // Another vCPU type is another VMSA RDX: another packed digest.
    let r2 = relaunch(&[
        "pack",
        "-o",
        o_s,
        "--firmware",
        ovmf_s,
        "--vcpus",
        "2",
        "--vcpu-type",
        "EPYC-Milan",
    ]);
    assert_eq!(r2.code, 0, "{}", r2.stderr);
    assert_ne!(field(r2.stdout.lines().nth(2).unwrap(), "snp"), snp);
    // --platform picks views: the TDX view alone, with the same MRTD.
    let r3 = relaunch(&[
        "pack",
        "-o",
        o_s,
        "--firmware",
        ovmf_s,
        "--vcpus",
        "2",
        "--platform",
        "tdx",
    ]);
    assert_eq!(r3.code, 0, "{}", r3.stderr);
    assert!(
        r3.stdout.lines().next().unwrap().ends_with("views: tdx"),
        "{}",
        r3.stdout
    );
    assert_eq!(field(r3.stdout.lines().nth(1).unwrap(), "tdx"), tdx);
    let _ = std::fs::remove_file(&o);
}
