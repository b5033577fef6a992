//! `pack --firmware` (`relaunch::pack::firmware::pack_firmware`) on Debian's `OVMF.fd` and on
//! a generated AmdSev-like image (for the kernel-hashes table, which Debian's build lacks):
//!
//! - every view's predicted measurement equals what `relaunch measure` computes for the
//!   packed file (`cli::measure::measure_bundle`, the CLI's own function), and the `igvm`
//!   crate's own measurement (feature `corim`: `generate_snp_measurement`,
//!   `generate_tdx_measurement`) agrees: the VMSAs are written last and in vCPU order, the
//!   order KVM measures them in;
//! - the classic digest (`relaunch measure OVMF.fd`) and the packed one differ on SNP by
//!   exactly the SEV metadata's ZERO pages (IGVM has no ZERO page type; `docs/measurement.md`
//!   "OVMF packed as IGVM"), and agree on TDX;
//! - `igvm-wrap` (crate `virtfw-igvm-tools`), when installed, gives the SEV metadata
//!   sections and the flash the same page types and contents;
//! - `run --platform emulated:snp` of the packed file records the predicted digest as its
//!   launch measurement.
//!
//! Debian's OVMF comes from `scripts/oracles.sh` (`.oracles/ovmf/`); without it the tests
//! print `SKIPPED: …` (under `CI=true` they fail).

mod kvm_common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use igvm::measurement::{generate_snp_measurement, generate_tdx_measurement};
use igvm::{IgvmDirectiveHeader, IsolationType};
use igvm_defs::IgvmPageDataType;
use relaunch::pack::firmware::{
    kernel_hashes, pack_firmware, view_config, FirmwareOptions, PackedFirmware,
};
use relaunch_core::measure::Measurement;
use relaunch_core::ovmf::{Firmware, SevSectionKind};
use relaunch_core::plan::ovmf::hash_table_bytes;
use relaunch_core::plan::Platform;
use relaunch_core::testutil::{ovmf_like_image, OvmfFlavor};

/// EPYC-v4 CPUID(1).EAX.
const SIG: u32 = 0x800F12;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Debian's OVMF.fd, or the skip.
fn debian_ovmf() -> Option<Vec<u8>> {
    let p = repo_root().join(".oracles/ovmf/usr/share/ovmf/OVMF.fd");
    match std::fs::read(&p) {
        Ok(b) => Some(b),
        Err(e) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true but {} is missing ({e}); scripts/oracles.sh installs it",
                p.display()
            );
            println!("SKIPPED: {} missing (run scripts/oracles.sh)", p.display());
            None
        }
    }
}

/// The Debian package the recorded digests are for.
const RECORDED_PACKAGE: &str = "2022.11-6+deb12u2";

/// (vCPUs, view, classic, packed) for Debian's OVMF.fd, EPYC-v4, 256 MiB.
const RECORDED: [(u32, &str, &str, &str); 4] = [
    (
        1,
        "snp",
        "11570979c77a0adb515761a702527c8b9e11554e730552621d950988613a3a75c6ff1703f540bd22a9beede8fe7a97e3",
        "452085ba208daeb9c3e63ba501f856c0c59f065eeae4a8e3a6d4ee60fd9fd6f7927878a97a8d3e785704934801355d0e",
    ),
    (
        4,
        "snp",
        "32ac9d7a17d28f7cd4404a4516d2f00519668c40ada2062351c36767e908eb3f090d66c33ab10f80150e00a4385b6d0f",
        "d43ef8d4189dc786518364cf2e913f56d1cd9d97849f73201e6187ac91cf7d2a2601e87c12671a48eddc45d30e2a0bdc",
    ),
    (
        1,
        "tdx",
        "4c7206f0f483c524f12c366c711e9049030a8d47c471ee5aa9c4999a08de4057fb887fed0744d5631a212967fb231c47",
        "4c7206f0f483c524f12c366c711e9049030a8d47c471ee5aa9c4999a08de4057fb887fed0744d5631a212967fb231c47",
    ),
    (
        4,
        "tdx",
        "4c7206f0f483c524f12c366c711e9049030a8d47c471ee5aa9c4999a08de4057fb887fed0744d5631a212967fb231c47",
        "4c7206f0f483c524f12c366c711e9049030a8d47c471ee5aa9c4999a08de4057fb887fed0744d5631a212967fb231c47",
    ),
];

fn debian_ovmf_version() -> Option<String> {
    std::fs::read_to_string(repo_root().join(".oracles/ovmf.version"))
        .ok()
        .map(|s| s.trim().to_string())
}

fn opts(vcpus: u32) -> FirmwareOptions {
    FirmwareOptions {
        vcpus,
        mem_bytes: 256 << 20,
        vcpu_sig: SIG,
        ..FirmwareOptions::default()
    }
}

fn measure(bundle: &[u8], platform: Platform, o: &FirmwareOptions) -> Measurement {
    relaunch::cli::measure::measure_bundle(bundle, &view_config(platform, o), 1)
        .unwrap_or_else(|e| panic!("measure {platform}: {e:?}"))
        .measurement
}

/// The igvm crate's measurement of one view.
fn igvm_crate(file: &[u8], platform: Platform, mask: u32) -> Measurement {
    match platform {
        Platform::Snp => {
            let f = igvm::IgvmFile::new_from_binary(file, Some(IsolationType::Snp))
                .expect("igvm crate parses the SNP view");
            Measurement::Snp(
                generate_snp_measurement(f.initializations(), f.directives(), mask)
                    .expect("igvm crate SNP measurement"),
            )
        }
        Platform::Tdx => {
            let f = igvm::IgvmFile::new_from_binary(file, Some(IsolationType::Tdx))
                .expect("igvm crate parses the TDX view");
            Measurement::Tdx(
                generate_tdx_measurement(f.directives(), mask).expect("igvm crate MRTD"),
            )
        }
        _ => Measurement::None,
    }
}

/// Pages of the SEV metadata's ZERO sections (SNP_SEC_MEM, SVSM_CAA, and KERNEL_HASHES
/// when no kernel is given).
fn zero_section_pages(image: &[u8], with_kernel: bool) -> u64 {
    let fw = Firmware::parse(image).unwrap();
    let meta = fw.sev_metadata().unwrap().unwrap();
    meta.sections()
        .filter(|s| match s.kind {
            SevSectionKind::SnpSecrets | SevSectionKind::Cpuid => false,
            SevSectionKind::SnpKernelHashes => !with_kernel,
            _ => true,
        })
        .map(|s| u64::from(s.size) / 4096)
        .sum()
}

/// Checks every view of `packed` against `relaunch measure` (packed and classic) and the
/// igvm crate; returns (platform, classic, packed) per view.
fn check_views(
    image: &[u8],
    packed: &PackedFirmware,
    o: &FirmwareOptions,
) -> Vec<(Platform, Measurement, Measurement)> {
    let mut out = Vec::new();
    for v in &packed.views {
        let p = v.platform;
        assert_eq!(
            measure(&packed.igvm, p, o),
            v.measurement,
            "{p}: relaunch measure"
        );
        assert_eq!(measure(image, p, o), v.classic, "{p}: classic");
        assert_eq!(
            igvm_crate(&packed.igvm, p, v.mask),
            v.measurement,
            "{p}: igvm crate"
        );
        match p {
            Platform::Snp => {
                assert_eq!(
                    v.zero_pages,
                    zero_section_pages(image, o.kernel_hashes.is_some())
                );
                assert!(v.zero_pages > 0);
                assert_ne!(
                    v.measurement, v.classic,
                    "ZERO pages are measured differently"
                );
            }
            _ => {
                assert_eq!(v.zero_pages, 0);
                assert_eq!(v.measurement, v.classic, "{p}");
            }
        }
        out.push((p, v.classic, v.measurement));
    }
    out
}

#[test]
fn debian_ovmf_views_match_relaunch_measure_and_the_igvm_crate() {
    let Some(fd) = debian_ovmf() else { return };
    for vcpus in [1, 4] {
        let o = opts(vcpus);
        let packed = pack_firmware(&fd, &o).expect("pack Debian's OVMF.fd");
        let platforms: Vec<Platform> = packed.views.iter().map(|v| v.platform).collect();
        assert_eq!(
            platforms,
            [Platform::Snp, Platform::Tdx, Platform::Native],
            "Debian's OVMF.fd carries SEV and TDX metadata"
        );
        for (p, classic, packed_m) in check_views(&fd, &packed, &o) {
            println!("{vcpus} vCPU {p}: classic {classic} packed {packed_m}");
            // The digests docs/measurement.md §12.6 shows, for the package they were taken
            // from (the classic ones are sev-snp-measure's, tests/vectors/debian-ovmf).
            if debian_ovmf_version().as_deref() == Some(RECORDED_PACKAGE) {
                if let Some(&(_, _, c, pk)) =
                    RECORDED.iter().find(|r| r.0 == vcpus && r.1 == p.name())
                {
                    assert_eq!(classic.to_string(), c, "{vcpus} vCPU {p} classic");
                    assert_eq!(packed_m.to_string(), pk, "{vcpus} vCPU {p} packed");
                }
            }
        }
        // Identical page data is stored once: the file is not three images long.
        assert!(packed.igvm.len() < 2 * fd.len(), "{}", packed.igvm.len());
    }
}

#[test]
fn a_launch_with_more_vcpus_than_packed_measures_reset_state_aps() {
    // The file names VMSAs for VPs 0..2; a 3-vCPU launch gives VP 2 the reset state at
    // 0xFFFFFFF0 (not the AP reset address), and a 1-vCPU launch is refused.
    let image = ovmf_like_image(OvmfFlavor::AmdSev).to_vec();
    let packed = pack_firmware(&image, &opts(2)).unwrap();
    let three = opts(3);
    let m3 = measure(&packed.igvm, Platform::Snp, &three);
    let packed_for_three = pack_firmware(&image, &three).unwrap().views[0].measurement;
    assert_ne!(m3, packed_for_three);
    assert_ne!(m3, packed.views[0].measurement);
    let one = view_config(Platform::Snp, &opts(1));
    assert!(relaunch::cli::measure::measure_bundle(&packed.igvm, &one, 1).is_err());
}

#[test]
fn generated_amdsev_with_kernel_hashes() {
    let image = ovmf_like_image(OvmfFlavor::AmdSev).to_vec();
    let kernel: Vec<u8> = (0..12_345u32).map(|i| (i * 31 + 7) as u8).collect();
    let initrd: Vec<u8> = (0..5_000u32).map(|i| (i ^ 0x5a) as u8).collect();
    let hashes = kernel_hashes(&kernel, Some(&initrd), Some("console=ttyS0"));
    for vcpus in [1, 2] {
        let o = FirmwareOptions {
            views: vec![Platform::Snp],
            kernel_hashes: Some(hashes),
            ..opts(vcpus)
        };
        let packed = pack_firmware(&image, &o).unwrap();
        check_views(&image, &packed, &o);
        // The hash table is in the file, where the SEV hash table entry says.
        let area = Firmware::parse(&image)
            .unwrap()
            .sev_hash_table()
            .unwrap()
            .unwrap();
        let f = igvm::IgvmFile::new_from_binary(&packed.igvm, Some(IsolationType::Snp)).unwrap();
        let page = u64::from(area.base) & !0xFFF;
        let off = (area.base & 0xFFF) as usize;
        let data = f
            .directives()
            .iter()
            .find_map(|d| match d {
                IgvmDirectiveHeader::PageData { gpa, data, .. } if *gpa == page => {
                    Some(data.clone())
                }
                _ => None,
            })
            .expect("hashes page");
        assert_eq!(&data[off..off + 176], &hash_table_bytes(&hashes)[..]);
        // Another command line, another digest.
        let other = FirmwareOptions {
            kernel_hashes: Some(kernel_hashes(&kernel, Some(&initrd), None)),
            ..o.clone()
        };
        assert_ne!(
            pack_firmware(&image, &other).unwrap().views[0].measurement,
            packed.views[0].measurement
        );
    }
    // Debian's build has no hash table: refused, as QEMU and sev-snp-measure refuse it.
    if let Some(fd) = debian_ovmf() {
        let o = FirmwareOptions {
            views: vec![Platform::Snp],
            kernel_hashes: Some(hashes),
            ..opts(1)
        };
        let e = pack_firmware(&fd, &o).unwrap_err();
        assert!(e.to_string().contains("hash table"), "{e}");
    }
}

/// (data type, unmeasured, contents padded to a page) of every SNP PAGE_DATA by GPA.
fn snp_pages(file: &[u8]) -> std::collections::BTreeMap<u64, (u16, bool, Vec<u8>)> {
    let f = igvm::IgvmFile::new_from_binary(file, Some(IsolationType::Snp)).unwrap();
    let mut m = std::collections::BTreeMap::new();
    for d in f.directives() {
        if let IgvmDirectiveHeader::PageData {
            gpa,
            flags,
            data_type,
            data,
            ..
        } = d
        {
            let mut page = data.clone();
            page.resize(4096, 0);
            m.insert(*gpa, (data_type.0, flags.unmeasured(), page));
        }
    }
    m
}

#[test]
fn igvm_wrap_gives_the_same_snp_pages() {
    let Some(fd) = debian_ovmf() else { return };
    let out = std::env::temp_dir().join(format!("relaunch-igvm-wrap-{}.igvm", std::process::id()));
    let run = Command::new("igvm-wrap")
        .arg("-i")
        .arg(repo_root().join(".oracles/ovmf/usr/share/ovmf/OVMF.fd"))
        .args(["--snp", "--no-native", "-o"])
        .arg(&out)
        .output();
    let run = match run {
        Ok(r) => r,
        Err(e) => {
            // Required under CI once the set-up script installs it.
            let installs = std::fs::read_to_string(repo_root().join("scripts/setup.sh"))
                .is_ok_and(|s| s.contains("virtfw-igvm-tools"));
            assert!(
                !(installs && std::env::var("CI").as_deref() == Ok("true")),
                "CI=true but igvm-wrap is missing ({e}); scripts/setup.sh installs it"
            );
            println!(
                "SKIPPED: igvm-wrap not found ({e}; cargo install --locked virtfw-igvm-tools)"
            );
            return;
        }
    };
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let theirs = snp_pages(&std::fs::read(&out).unwrap());
    let _ = std::fs::remove_file(&out);
    let o = FirmwareOptions {
        views: vec![Platform::Snp],
        ..opts(1)
    };
    let ours = snp_pages(&pack_firmware(&fd, &o).unwrap().igvm);
    // The flash and the SEV metadata sections: the same type, flags and contents. (igvm-wrap
    // also copies the flash's last 128 KiB below 1 MiB and adds parameter areas: pages we do
    // not write; the classic launch has neither.)
    let fw = Firmware::parse(&fd).unwrap();
    let flash = fw.base_gpa()..(1u64 << 32);
    let mut compared = 0;
    for (gpa, page) in &ours {
        let t = theirs
            .get(gpa)
            .unwrap_or_else(|| panic!("igvm-wrap has no page at {gpa:#x}"));
        assert_eq!(t.0, page.0, "{gpa:#x}: data type");
        assert_eq!(t.1, page.1, "{gpa:#x}: unmeasured");
        assert!(t.2 == page.2, "{gpa:#x}: contents");
        compared += 1;
    }
    let in_flash = ours.keys().filter(|g| flash.contains(g)).count();
    assert_eq!(in_flash as u64, fw.len() / 4096);
    let zero_normal = ours
        .values()
        .filter(|p| p.0 == IgvmPageDataType::NORMAL.0 && p.2.iter().all(|&b| b == 0))
        .count();
    println!("{compared} pages compared with igvm-wrap ({zero_normal} NORMAL pages of zeros)");
}

/// `relaunch trace` of the packed SNP view: the real SNP backend's calls against the kernel
/// model, whose firmware model folds the launch digest page by page: the predicted one, and
/// the SEV metadata's ZERO sections are measured as NORMAL pages (type 1) of zeros.
#[test]
fn trace_of_the_packed_snp_view_measures_the_prediction() {
    let Some(fd) = debian_ovmf() else { return };
    let out = std::env::temp_dir().join(format!("relaunch-pack-fw-{}.igvm", std::process::id()));
    for vcpus in [1u32, 4] {
        let o = FirmwareOptions {
            views: vec![Platform::Snp],
            mem_bytes: relaunch::cli::run::DEFAULT_MEM,
            ..opts(vcpus)
        };
        let packed = pack_firmware(&fd, &o).unwrap();
        std::fs::write(&out, &packed.igvm).unwrap();
        let args: Vec<std::ffi::OsString> = vec![
            out.clone().into(),
            "--platform".into(),
            "snp".into(),
            "--vcpus".into(),
            vcpus.to_string().into(),
            "--vcpu-sig".into(),
            format!("{SIG:x}").into(),
        ];
        let text = relaunch::cli::trace::run(&args)
            .unwrap_or_else(|e| panic!("trace: {}\n{}", e.message, e.partial));
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let last = lines.last().unwrap();
        assert_eq!(
            last["measurement"],
            packed.views[0].measurement.to_string().as_str()
        );
        let fw = Firmware::parse(&fd).unwrap();
        let zero_gpas: Vec<u64> = fw
            .sev_metadata()
            .unwrap()
            .unwrap()
            .sections()
            .filter(|s| s.kind == SevSectionKind::SnpSecMem)
            .flat_map(|s| (0..u64::from(s.size) / 4096).map(move |i| u64::from(s.gpa) + i * 4096))
            .collect();
        let measured_normal = lines
            .iter()
            .filter_map(|l| l.get("measured"))
            .filter(|m| zero_gpas.contains(&m["gpa"].as_u64().unwrap()))
            .filter(|m| m["page_type"] == 1)
            .count();
        assert_eq!(measured_normal, zero_gpas.len());
        let vmsas = lines
            .iter()
            .filter_map(|l| l.get("measured"))
            .filter(|m| m["page_type"] == 2)
            .count();
        assert_eq!(vmsas, vcpus as usize);
    }
    let _ = std::fs::remove_file(&out);
}

/// `run --platform emulated:snp` of the packed file (the session, the emulated SNP platform
/// over this host's KVM): the launch record's measurement is the predicted one. OVMF does
/// not get far under the nested hypervisor: the launch waits for `continue` (control
/// socket), its digest is read, then it runs for a moment and is powered off.
#[test]
fn emulated_snp_run_records_the_packed_digest() {
    use kvm_common::*;
    use relaunch::control::Control;
    use relaunch::launch::Launch;
    use relaunch::session::run_session;

    let Some(fd) = debian_ovmf() else { return };
    let Some(host) = host(false) else { return };
    let sig = host.vcpu_signature();
    // No CPUID help: the SNP CPUID page leaves out KVM's all-zero leaves (75 entries here,
    // 51 of them zero; a page holds 64), and the model's Secure Processor checks the page
    // against this host's CPU as the emulated part shows it.
    for vcpus in [1, 2] {
        let o = FirmwareOptions {
            vcpu_sig: sig,
            ..opts(vcpus)
        };
        let packed = pack_firmware(&fd, &o).unwrap();
        let want = packed.views[0].measurement.to_string();
        let cfg_l = view_config(Platform::Snp, &o);
        let launch = Arc::new(Launch::new(packed.igvm.clone(), &cfg_l).expect("plan"));
        let backend = backend_for(Platform::Snp, true, &host);
        let audit = std::env::temp_dir().join(format!(
            "relaunch-pack-fw-{vcpus}-{}.jsonl",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&audit);
        let control = Arc::new(Control::new(true));
        let mut cfg = with_audit(config(o.mem_bytes, Some(0), false), &audit);
        cfg.control = Some(Arc::clone(&control));
        let driver = pause_then_power_off(Arc::clone(&control), Duration::from_millis(500));
        let r = run_session(&*backend, launch, &cfg);
        let (status, off) = driver.join().unwrap();
        let out = output(&cfg);
        assert_eq!(status["state"], "paused", "{:?}\n{out}", r.outcome);
        assert_eq!(status["launch_measurement"], want.as_str(), "{status}");
        assert_eq!(status["predicted_measurement"], want.as_str(), "{status}");
        assert_eq!(status["emulated"], true, "{status}");
        let records = take_audit_records(&audit);
        let launches = records_of(&records, "launch");
        assert_eq!(launches.len(), 1, "{records:?}");
        assert_eq!(
            launches[0]["launch_measurement"],
            want.as_str(),
            "{records:?}"
        );
        assert_eq!(launches[0]["predicted_measurement"], want.as_str());
        assert_eq!(launches[0]["emulated"], true);
        println!(
            "{vcpus} vCPU: launch {want}, then {:?} (power-off: {off}), \
             {} launch(es)",
            r.outcome, r.launches
        );
    }
}
