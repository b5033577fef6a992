//! `pack --kernel`'s SEV-SNP view (`relaunch::pack::linux`, docs/linux-guests.md "The SEV-SNP
//! view"):
//!
//! - the digest `pack` predicts equals `relaunch measure`'s (`cli::measure::measure_bundle`)
//!   and the `igvm` crate's own (feature `corim`: `generate_snp_measurement`), which treats
//!   PAGE_DATA without file data as a page of zeros exactly as the planner does;
//! - `run --platform emulated:snp` of the packed file records that digest as its launch
//!   measurement, and the guest starts at `startup_64` with the CC blob reachable through the
//!   C-bit page tables.
//!
//! The kernel is a synthetic bzImage whose `startup_64` prints the CC blob's magic, and
//! Debian's cloud kernel (`scripts/linux-guest.sh`, `.oracles/linux/vmlinuz`) when it is
//! there. Nested KVM cannot run Linux far (DESIGN.md "This host"): for Debian's kernel the
//! test asserts the digest and prints what the console shows.

mod kvm_common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use igvm::measurement::generate_snp_measurement;
use igvm::IsolationType;
use igvm_defs::IgvmPlatformType;
use relaunch::pack::linux::{self, LinuxInputs, LinuxOptions};
use relaunch::pack::predict;
use relaunch_core::measure::Measurement;
use relaunch_core::plan::{LaunchConfig, Platform};

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// `startup_64` of the synthetic kernel (x86-64): EDI = `boot_params.cc_blob_address`
/// (RSI + 0x13c), EAX = the blob's first four bytes, each written to COM1, then a newline
/// and `hlt` forever. Through the SNP view's page tables every access carries the C-bit.
const STARTUP_64: &[u8] = &[
    0x8B, 0xBE, 0x3C, 0x01, 0x00, 0x00, // mov edi, [rsi + 0x13c]
    0x8B, 0x07, // mov eax, [rdi]
    0x66, 0xBA, 0xF8, 0x03, // mov dx, 0x3f8
    0xEE, // out dx, al
    0xC1, 0xE8, 0x08, 0xEE, // shr eax, 8; out dx, al
    0xC1, 0xE8, 0x08, 0xEE, // shr eax, 8; out dx, al
    0xC1, 0xE8, 0x08, 0xEE, // shr eax, 8; out dx, al
    0xB0, 0x0A, 0xEE, // mov al, '\n'; out dx, al
    0xF4, // hlt
    0xEB, 0xFD, // jmp hlt
];

/// The pack tests' synthetic bzImage (`relaunch::testing::synthetic_bzimage`) whose
/// protected-mode part has [`STARTUP_64`] at 0x200 (int3 before it).
fn synthetic_bzimage() -> Vec<u8> {
    let mut payload = vec![0xCCu8; 0x200];
    payload.extend_from_slice(STARTUP_64);
    relaunch::testing::synthetic_bzimage(&payload)
}

/// Debian's cloud kernel, or `None` with the skip printed (under `CI=true`
/// scripts/linux-guest.sh must have installed it).
fn debian_kernel() -> Option<Vec<u8>> {
    let p = repo_root().join(".oracles/linux/vmlinuz");
    match std::fs::read(&p) {
        Ok(b) => Some(b),
        Err(e) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true but {} is missing ({e}); scripts/linux-guest.sh installs it",
                p.display()
            );
            println!(
                "SKIPPED: {} missing (bash scripts/linux-guest.sh)",
                p.display()
            );
            None
        }
    }
}

/// RAM of the digest checks and of the Debian kernel's run (the E820 table, every page
/// pre-validated).
const MEM: u64 = 256 << 20;
/// RAM of the synthetic kernel's emulated run: enough for its 16 MiB load address, and a
/// quarter of the pages for the emulated Secure Processor to take in one by one.
const SMALL_MEM: u64 = 64 << 20;
const APPEND: &str = "console=ttyS0 earlyprintk=serial panic=-1";

fn cfg(vcpus: u32, sig: u32, mem: u64) -> LaunchConfig {
    LaunchConfig {
        platform: Platform::Snp,
        vcpus,
        mem_bytes: mem,
        vcpu_sig: sig,
        guest_features: 0,
        policy: None,
        host_data: [0; 32],
        kernel_hashes: None,
    }
}

/// The igvm crate's SNP measurement of `file`.
fn igvm_crate(file: &[u8]) -> Measurement {
    let f = igvm::IgvmFile::new_from_binary(file, Some(IsolationType::Snp))
        .expect("the igvm crate parses the file");
    let mask = f
        .platforms()
        .iter()
        .find_map(|p| match p {
            igvm::IgvmPlatformHeader::SupportedPlatform(h)
                if h.platform_type == IgvmPlatformType::SEV_SNP =>
            {
                Some(h.compatibility_mask)
            }
            _ => None,
        })
        .expect("an SNP platform");
    Measurement::Snp(
        generate_snp_measurement(f.initializations(), f.directives(), mask)
            .expect("igvm crate SNP measurement"),
    )
}

fn pack(kernel: &[u8], c_bit: u8, mem: u64) -> Vec<u8> {
    linux::pack_with(
        &LinuxInputs {
            kernel,
            initrd: Some(&[0x42; 10_000]),
            cmdline: APPEND,
            mem,
            vcpus: 1,
        },
        &LinuxOptions {
            views: Vec::new(),
            c_bit,
        },
    )
    .expect("pack")
    .bytes
}

/// The SNP prediction of `file` for `vcpus`, checked against `relaunch measure` and the igvm
/// crate (which measures the VMSAs where they stand: one vCPU, or APs whose reset VMSAs the
/// crate does not know; so it is compared for 1 vCPU only).
fn check_digests(file: &[u8], mem: u64) -> Measurement {
    let mut one = None;
    for vcpus in [1, 2] {
        let c = cfg(vcpus, 0x0080_0F12, mem);
        let views = predict(file, &c, 1).unwrap();
        assert_eq!(
            views.iter().map(|v| v.platform).collect::<Vec<_>>(),
            [Platform::Native, Platform::Snp]
        );
        let predicted = views[1].measurement.clone().unwrap();
        let measured = relaunch::cli::measure::measure_bundle(file, &c, 1)
            .unwrap_or_else(|e| panic!("measure: {e:?}"))
            .measurement;
        assert_eq!(predicted, measured, "{vcpus} vCPUs: relaunch measure");
        if vcpus == 1 {
            assert_eq!(predicted, igvm_crate(file), "the igvm crate");
            one = Some(predicted);
        } else {
            assert_ne!(Some(predicted), one, "the AP's reset VMSA is measured");
        }
    }
    one.unwrap()
}

#[test]
fn snp_view_digest_is_measure_and_the_igvm_crate() {
    let k = synthetic_bzimage();
    let d51 = check_digests(&pack(&k, 51, MEM), MEM);
    let d47 = check_digests(&pack(&k, 47, MEM), MEM);
    assert_ne!(
        d51, d47,
        "the C-bit is in measured page tables and the VMSA"
    );
    println!("synthetic kernel, 256 MiB: snp {d51} (C-bit 51), {d47} (C-bit 47)");
    if let Some(debian) = debian_kernel() {
        let file = pack(&debian, 51, MEM);
        let d = check_digests(&file, MEM);
        println!(
            "Debian kernel ({} bytes), 256 MiB: file {} bytes, snp {d}",
            debian.len(),
            file.len()
        );
    }
}

/// Runs `file`'s SNP view on the emulated SNP platform until it is paused at launch (the
/// digest is read from the control socket and the audit log), then lets it run for `run_for`
/// and powers it off. Returns (recorded digest, console output).
fn run_emulated(file: Vec<u8>, mem: u64, run_for: Duration) -> Option<(String, String)> {
    use kvm_common::*;
    use relaunch::control::Control;
    use relaunch::launch::Launch;
    use relaunch::session::run_session;

    let host = host(false)?;
    let c = cfg(1, host.vcpu_signature(), mem);
    let launch = Arc::new(Launch::new(file, &c).expect("plan"));
    let backend = backend_for(Platform::Snp, true, &host);
    let audit =
        std::env::temp_dir().join(format!("relaunch-pack-linux-{}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&audit);
    let control = Arc::new(Control::new(true));
    let mut sc = with_audit(config(mem, Some(0), false), &audit);
    sc.control = Some(Arc::clone(&control));
    let driver = pause_then_power_off(Arc::clone(&control), run_for);
    let r = run_session(&*backend, launch, &sc);
    let (status, _) = driver.join().unwrap();
    let out = output(&sc);
    assert_eq!(status["state"], "paused", "{:?}\n{out}", r.outcome);
    assert_eq!(status["emulated"], true, "{status}");
    let records = take_audit_records(&audit);
    let launches = records_of(&records, "launch");
    assert_eq!(launches.len(), 1, "{records:?}");
    assert_eq!(launches[0]["emulated"], true);
    assert_eq!(
        launches[0]["launch_measurement"], status["launch_measurement"],
        "{records:?}"
    );
    assert_eq!(
        launches[0]["predicted_measurement"], launches[0]["launch_measurement"],
        "{records:?}"
    );
    println!("emulated SNP: outcome {:?}", r.outcome);
    Some((
        launches[0]["launch_measurement"]
            .as_str()
            .unwrap()
            .to_string(),
        out,
    ))
}

/// The emulated platform reports C-bit 47 (`sys::emu::C_BIT`), so the file is packed for
/// it; the synthetic `startup_64` reads the CC blob through the C-bit tables and prints its
/// magic.
#[test]
fn emulated_snp_run_records_the_packed_digest() {
    let file = pack(&synthetic_bzimage(), 47, SMALL_MEM);
    let want = check_digests(&file, SMALL_MEM).to_string();
    let Some((digest, out)) = run_emulated(file, SMALL_MEM, Duration::from_millis(500)) else {
        return;
    };
    assert_eq!(digest, want);
    assert!(
        out.contains("AMDE\n"),
        "the guest did not print the blob: {out:?}"
    );
    println!("synthetic kernel: launch {digest}, console {out:?}");
}

/// Debian's kernel on the emulated SNP platform: the digest, and whatever the console shows
/// in `RELAUNCH_LINUX_RUN_SECS` (default 20) seconds (nested KVM runs the decompressor one
/// instruction at a time; no assertion on how far it gets).
#[test]
fn emulated_snp_run_of_debian_kernel_records_the_packed_digest() {
    let Some(k) = debian_kernel() else { return };
    let file = pack(&k, 47, MEM);
    let want = check_digests(&file, MEM).to_string();
    let secs = std::env::var("RELAUNCH_LINUX_RUN_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let Some((digest, out)) = run_emulated(file, MEM, Duration::from_secs(secs)) else {
        return;
    };
    assert_eq!(digest, want);
    let tail: String = out
        .chars()
        .rev()
        .take(2000)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    println!("Debian kernel: launch {digest}; console after {secs} s:\n{tail}");
}
