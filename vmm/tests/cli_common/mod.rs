//! Shared by the CLI tests: run the built `relaunch` binary, write test bundles.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

use igvm_defs::{IgvmPageDataFlags, IgvmPageDataType, IgvmPlatformType};
use relaunch_core::arch::vmsa::{kvm_measured_vmsa, reset_regs, BSP_RESET_ADDR, KVM_VMSA_GPA};
use relaunch_core::plan::Platform;
use relaunch_core::writer::IgvmBuilder;

/// EPYC-v4 CPUID(1).EAX.
pub const SIG: u32 = 0x800F12;

/// The SNP digest of [`spec_file`]`(1)` with one vCPU (`../shared/spec/igvm-snp.md` §5).
pub const N1: &str = "bc0606d033beaafe04315123f4e0ce4697a72b01d3833841cd41ab0e96494f6086e8f8e04434a32897862f3d54ff7cb6";

/// Result of one run.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `relaunch ARGS`.
pub fn relaunch(args: &[&str]) -> Run {
    let out: Output = Command::new(env!("CARGO_BIN_EXE_relaunch"))
        .args(args)
        .output()
        .expect("run relaunch");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Asserts a bad-input run: exit code 2, nothing on stdout, exactly one stderr line that
/// starts with `prefix` and contains `needle`.
pub fn assert_usage_error(r: &Run, prefix: &str, needle: &str) {
    assert_eq!(r.code, 2, "stderr: {}", r.stderr);
    assert!(r.stdout.is_empty(), "stdout: {}", r.stdout);
    assert_eq!(r.stderr.lines().count(), 1, "not one line: {:?}", r.stderr);
    assert!(r.stderr.starts_with(prefix), "{:?}", r.stderr);
    assert!(r.stderr.contains(needle), "{:?} lacks {needle:?}", r.stderr);
}

/// A scratch file under the target dir's tmp (unique per test name).
pub fn scratch(name: &str, bytes: &[u8]) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cli-tests");
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// The VMSA KVM builds for QEMU's reset state.
pub fn reset_vmsa() -> [u8; 4096] {
    kvm_measured_vmsa(&reset_regs(SIG, BSP_RESET_ADDR), 0, Platform::Snp, true)
}

/// The spec §5 vector file with an `n`-page parameter area, plus a NATIVE view of two pages
/// when `native` is set.
pub fn spec_file(n: u64, native: bool) -> Vec<u8> {
    let mut b = IgvmBuilder::new();
    let m = b.platform(IgvmPlatformType::SEV_SNP, 0).unwrap();
    let nat = if native {
        b.platform(IgvmPlatformType::NATIVE, 0).unwrap()
    } else {
        0
    };
    b.guest_policy(0x30000, m);
    b.parameter_area(0, n * 4096, &[]).unwrap();
    b.vp_count(0, 0);
    b.parameter_insert(0x10000, m, 0);
    let data: Vec<u8> = (0..4096u32).map(|i| (i & 0xFF) as u8).collect();
    let f = IgvmPageDataFlags::new();
    b.page_data(0, m | nat, f, IgvmPageDataType::NORMAL, &data)
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
    if native {
        b.page_data(0xFFFF_F000, nat, f, IgvmPageDataType::NORMAL, &[0xF4; 16])
            .unwrap();
    }
    b.vp_context(KVM_VMSA_GPA, m, 0, &reset_vmsa()).unwrap();
    b.finish().unwrap()
}
