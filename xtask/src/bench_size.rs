//! `cargo xtask bench size`: the static musl `relaunch` binary's size and the VMM's own RSS
//! with a 256 MiB guest (issue 3, "Proof required").
//!
//! - Size: `cargo build --release -p relaunch --target x86_64-unknown-linux-musl` (the
//!   release profile strips symbols); `file` and `ldd` must both say the binary is static.
//!   Target ≤ 2 MiB.
//! - RSS: relaunch runs an idle guest (`bench::guest`, `Ending::Halt`: boot marker, one
//!   serial byte, then `cli; hlt`) with `--mem 256M`. Once the guest's serial byte has
//!   arrived and the process has settled, `/proc/PID/smaps` is read: VMM-own RSS = total Rss
//!   of all mappings minus the Rss of the guest-RAM mapping(s) (every mapping at least as
//!   large as the guest RAM, i.e. the 256 MiB anonymous or guest_memfd mapping). Target
//!   ≤ 4 MiB.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::bench::{self, guest, Reaped};

const USAGE: &str = "usage: cargo xtask bench size";

/// Guest RAM for the RSS measurement.
const GUEST_MIB: u64 = 256;

/// Entry point.
pub fn main(args: &[String]) -> anyhow::Result<()> {
    if let Some(a) = args.first() {
        bail!("unexpected argument {a:?}; {USAGE}");
    }
    println!("== cargo xtask bench size ==");
    println!("host: {}", bench::host_description());
    let bin = bench::build_relaunch_static()?;
    binary_size(&bin)?;
    let dir = bench::work_dir()?;
    let page = guest::page(guest::Ending::Halt);
    let igvm = bench::write_file(&dir, "tiny-idle.igvm", &guest::igvm(&page)?)?;
    rss(&bin, &igvm, &[])?;
    Ok(())
}

fn tool_output(program: &str, arg: &Path) -> anyhow::Result<String> {
    let out = Command::new(program)
        .arg(arg)
        .output()
        .with_context(|| format!("cannot start {program}"))?;
    let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
    s.push_str(&String::from_utf8_lossy(&out.stderr));
    Ok(s.trim().to_string())
}

/// Whether `file`'s and `ldd`'s words mean "no dynamic loader, no shared libraries".
fn says_static(file: &str, ldd: &str) -> bool {
    let file_ok = (file.contains("statically linked") || file.contains("static-pie linked"))
        && !file.contains("dynamically linked");
    let ldd_ok = ldd.contains("not a dynamic executable") || ldd.contains("statically linked");
    file_ok && ldd_ok
}

fn binary_size(bin: &Path) -> anyhow::Result<()> {
    let file = tool_output("file", bin)?;
    let ldd = tool_output("ldd", bin)?;
    println!("$ file {}\n{file}", bin.display());
    println!("$ ldd {}\n{ldd}", bin.display());
    if !says_static(&file, &ldd) {
        bail!("{} is not a static executable", bin.display());
    }
    let len = std::fs::metadata(bin)
        .with_context(|| format!("stat {}", bin.display()))?
        .len();
    let mib = len as f64 / (1024.0 * 1024.0);
    println!(
        "size: {len} bytes = {mib:.3} MiB (target <= 2 MiB: {}), stripped: {}",
        if len <= 2 << 20 { "MET" } else { "MISSED" },
        if file.contains("not stripped") {
            "no"
        } else {
            "yes"
        }
    );
    Ok(())
}

/// One mapping of /proc/PID/smaps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// Start address.
    pub start: u64,
    /// End address (exclusive).
    pub end: u64,
    /// Path or pseudo-name (may be empty).
    pub name: String,
    /// Rss in KiB.
    pub rss_kib: u64,
}

/// Parses /proc/PID/smaps text.
pub fn parse_smaps(text: &str) -> Vec<Mapping> {
    let mut out: Vec<Mapping> = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let Some(first) = words.next() else { continue };
        if let Some((a, b)) = first.split_once('-') {
            if let (Ok(start), Ok(end)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) {
                // perms offset dev inode [name...]
                let name = words.skip(4).collect::<Vec<_>>().join(" ");
                out.push(Mapping {
                    start,
                    end,
                    name,
                    rss_kib: 0,
                });
                continue;
            }
        }
        if first == "Rss:" {
            if let (Some(m), Some(Ok(kib))) = (out.last_mut(), words.next().map(str::parse)) {
                m.rss_kib = kib;
            }
        }
    }
    out
}

/// (total Rss, Rss of mappings of at least `guest_bytes`) in KiB.
pub fn split_rss(maps: &[Mapping], guest_bytes: u64) -> (u64, u64) {
    let total = maps.iter().map(|m| m.rss_kib).sum();
    let guest = maps
        .iter()
        .filter(|m| m.end.saturating_sub(m.start) >= guest_bytes)
        .map(|m| m.rss_kib)
        .sum();
    (total, guest)
}

fn rss(bin: &Path, igvm: &Path, extra: &[&str]) -> anyhow::Result<()> {
    let mut cmd = Command::new(bin);
    cmd.arg("run")
        .arg(igvm)
        .args(["--mem", &format!("{GUEST_MIB}M")])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    println!(
        "\n$ {} run {} --mem {GUEST_MIB}M {}",
        bin.display(),
        igvm.display(),
        extra.join(" ")
    );
    let mut child = Reaped::spawn(&mut cmd)?;
    let pid = child.0.id();
    let rx = bench::stdout_arrivals(&mut child.0)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((_, k)) if k > 0 => break,
            Ok(_) => continue,
            Err(_) => bail!("the idle guest printed nothing within 10 s"),
        }
    }
    // Let the VMM settle (threads started, any post-launch work done).
    std::thread::sleep(Duration::from_millis(500));
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))
        .with_context(|| format!("reading /proc/{pid}/smaps"))?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    if let Ok(Some(st)) = child.0.try_wait() {
        bail!("relaunch exited ({st}) while the idle guest should be running");
    }
    drop(child);
    let maps = parse_smaps(&smaps);
    let (total, guest) = split_rss(&maps, GUEST_MIB << 20);
    let vmrss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .unwrap_or("VmRSS: ?")
        .to_string();
    println!("{vmrss}");
    for m in maps
        .iter()
        .filter(|m| m.end.saturating_sub(m.start) >= GUEST_MIB << 20)
    {
        println!(
            "guest mapping {:#x}-{:#x} ({} MiB) {:?}: Rss {} KiB",
            m.start,
            m.end,
            (m.end - m.start) >> 20,
            m.name,
            m.rss_kib
        );
    }
    let own = total.saturating_sub(guest);
    println!(
        "RSS: total {total} KiB, guest RAM {guest} KiB, VMM own {own} KiB = {:.2} MiB (target <= 4 MiB: {})",
        own as f64 / 1024.0,
        if own <= 4 * 1024 { "MET" } else { "MISSED" }
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0a0000000-55d0a0100000 r-xp 00000000 08:01 1234 /usr/bin/relaunch
Size:               1024 kB
Rss:                 600 kB
Pss:                 600 kB
7f0000000000-7f0010000000 rw-s 00000000 00:0f 99 /memfd:guest (deleted)
Size:             262144 kB
Rss:                  12 kB
7fff00000000-7fff00021000 rw-p 00000000 00:00 0                          [stack]
Size:                132 kB
Rss:                  40 kB
";

    #[test]
    fn smaps_parsed_and_split() {
        let m = parse_smaps(SMAPS);
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].name, "/usr/bin/relaunch");
        assert_eq!(m[1].name, "/memfd:guest (deleted)");
        assert_eq!(m[2].name, "[stack]");
        assert_eq!(m[1].end - m[1].start, 256 << 20);
        assert_eq!(split_rss(&m, 256 << 20), (652, 12));
    }

    #[test]
    fn static_detection() {
        assert!(says_static(
            "relaunch: ELF 64-bit LSB pie executable, x86-64, static-pie linked, stripped",
            "\tstatically linked"
        ));
        assert!(says_static(
            "x: ELF 64-bit LSB executable, x86-64, statically linked, stripped",
            "\tnot a dynamic executable"
        ));
        assert!(!says_static(
            "x: ELF 64-bit LSB pie executable, dynamically linked, interpreter /lib64/ld-linux-x86-64.so.2",
            "\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6"
        ));
    }
}
