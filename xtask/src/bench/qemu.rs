//! The QEMU side: Debian's `qemu-system-x86` running the tiny guest as `-bios`, resetting it
//! in place through port 0xCF9, and its cold start.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};

use super::{cycle_times, stdout_arrivals, Reaped};

/// The QEMU binary Debian's `qemu-system-x86` package installs.
pub const QEMU: &str = "qemu-system-x86_64";

fn installed() -> bool {
    Command::new(QEMU)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Installs `qemu-system-x86` with apt-get when `qemu-system-x86_64` is missing; returns
/// the first line of `--version`.
pub fn ensure_installed() -> anyhow::Result<String> {
    if !installed() {
        eprintln!("bench: {QEMU} missing, installing Debian's qemu-system-x86");
        crate::run("apt-get", &["update", "-q"])?;
        let status = Command::new("apt-get")
            .args(["install", "-y", "-q", "qemu-system-x86"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .context("cannot start apt-get")?;
        if !status.success() || !installed() {
            bail!("installing qemu-system-x86 failed ({status})");
        }
    }
    let out = Command::new(QEMU)
        .arg("--version")
        .output()
        .context("qemu --version")?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or("")
        .to_string())
}

/// The QEMU command line for the tiny guest on `machine` (`q35` or `pc`).
pub fn command(bios: &Path, machine: &str, mem_mib: u64) -> Command {
    let mut c = Command::new(QEMU);
    c.arg("-bios")
        .arg(bios)
        .args(["-machine", machine, "-accel", "kvm", "-m"])
        .arg(format!("{mem_mib}M"))
        .args([
            "-nographic",
            "-no-user-config",
            "-nodefaults",
            "-serial",
            "stdio",
        ]);
    c
}

/// The command line as text, for the report.
pub fn command_text(bios: &Path, machine: &str, mem_mib: u64) -> String {
    let c = command(bios, machine, mem_mib);
    std::iter::once(c.get_program().to_string_lossy().into_owned())
        .chain(c.get_args().map(|a| a.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// In-place reset loop: runs QEMU for `warmup + measure`, counts the guest's serial bytes
/// (one per boot) in windows; returns the per-reset times per window and the total count.
pub fn in_place(
    bios: &Path,
    machine: &str,
    mem_mib: u64,
    warmup: Duration,
    measure: Duration,
    window: Duration,
) -> anyhow::Result<(Vec<Duration>, usize)> {
    let mut cmd = command(bios, machine, mem_mib);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = Reaped::spawn(&mut cmd)?;
    let rx = stdout_arrivals(&mut child.0)?;
    let r = cycle_times(&rx, warmup, measure, window);
    drop(child);
    r
}
