//! `cargo xtask bench size`: the static musl `relaunch` binary's size and the VMM's own RSS
//! with a 256 MiB guest (issue 3, "Proof required").
//!
//! - Size: `cargo build --release -p relaunch --target x86_64-unknown-linux-musl` (the
//!   release profile strips symbols); `file` and `ldd` must both say the binary is static.
//!   Target ≤ 2 MiB.
//! - RSS: relaunch runs an idle guest (`bench::guest`, `Ending::Halt`: boot marker, one
//!   serial byte, then `cli; hlt`) with `--mem 256M --audit-log FILE`. Once the audit log
//!   holds the launch record (written before the guest runs) and the process has had 1 s
//!   to settle, `/proc/PID/smaps` is read: VMM-own RSS = total Rss of all mappings minus the
//!   Rss of the guest-RAM mapping(s) (every mapping at least as large as the guest RAM, i.e.
//!   the 256 MiB anonymous or guest_memfd mapping). Target ≤ 4 MiB. The same is measured
//!   with `--prestage` (a second VM is built while the guest runs): its extra RSS is the
//!   memory cost of prestaging.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::bench::{self, guest, Reaped};

const USAGE: &str = "usage: cargo xtask bench size [--relaunch-bin PATH]";

/// Guest RAM for the RSS measurement.
const GUEST_MIB: u64 = 256;

/// Entry point.
pub fn main(args: &[String]) -> anyhow::Result<()> {
    let bin = match args {
        [] => None,
        [flag, path] if flag == "--relaunch-bin" => {
            Some(std::fs::canonicalize(path).with_context(|| format!("--relaunch-bin {path}"))?)
        }
        _ => bail!("unexpected arguments {args:?}; {USAGE}"),
    };
    println!("== cargo xtask bench size ==");
    println!("host: {}", bench::host_description());
    let bin = match bin {
        Some(b) => {
            println!("measuring the given binary {}", b.display());
            b
        }
        None => bench::build_relaunch_static()?,
    };
    let is_static = binary_size(&bin)?;
    let dir = bench::work_dir()?;
    let page = guest::page(guest::Ending::Halt);
    let igvm = bench::write_file(&dir, "tiny-idle.igvm", &guest::igvm(&page)?)?;
    let plain = rss(&bin, &igvm, &dir, &[])?;
    let staged = rss(&bin, &igvm, &dir, &["--prestage"])?;
    println!(
        "\n--prestage memory cost: VMM-own RSS {:+} KiB, guest-RAM-sized mappings {:+} KiB Rss \
         ({} vs {} such mappings; untouched guest RAM costs address space, not RSS)",
        staged.own_kib as i64 - plain.own_kib as i64,
        staged.guest_kib as i64 - plain.guest_kib as i64,
        staged.guest_maps,
        plain.guest_maps
    );
    if !is_static {
        bail!("{} is not a static executable", bin.display());
    }
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

/// Prints the binary's `file`/`ldd` verdicts and size; returns whether it is static.
fn binary_size(bin: &Path) -> anyhow::Result<bool> {
    let file = tool_output("file", bin)?;
    let ldd = tool_output("ldd", bin)?;
    println!("$ file {}\n{file}", bin.display());
    println!("$ ldd {}\n{ldd}", bin.display());
    let is_static = says_static(&file, &ldd);
    if !is_static {
        println!("NOT STATIC: {} needs a dynamic loader", bin.display());
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
    Ok(is_static)
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

/// One RSS measurement.
struct Rss {
    own_kib: u64,
    guest_kib: u64,
    guest_maps: usize,
}

fn rss(bin: &Path, igvm: &Path, dir: &Path, extra: &[&str]) -> anyhow::Result<Rss> {
    let audit = dir.join("rss-audit.jsonl");
    let _ = std::fs::remove_file(&audit);
    let mut cmd = Command::new(bin);
    cmd.arg("run")
        .arg(igvm)
        .args(["--mem", &format!("{GUEST_MIB}M"), "--audit-log"])
        .arg(&audit)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    println!(
        "\n$ {} run {} --mem {GUEST_MIB}M --audit-log {} {}",
        bin.display(),
        igvm.display(),
        audit.display(),
        extra.join(" ")
    );
    let mut child = Reaped::spawn(&mut cmd)?;
    let pid = child.0.id();
    // The launch record is written (and flushed) before the guest runs.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&audit).unwrap_or_default();
        if text.contains("\"launch\"") {
            break;
        }
        if let Ok(Some(st)) = child.0.try_wait() {
            bail!("relaunch exited ({st}) before its launch record");
        }
        if Instant::now() > deadline {
            bail!("no launch record in {} within 10 s", audit.display());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // Let the VMM settle (vCPU thread in the guest's hlt, prestaged VM built).
    std::thread::sleep(Duration::from_secs(1));
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))
        .with_context(|| format!("reading /proc/{pid}/smaps"))?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    if let Ok(Some(st)) = child.0.try_wait() {
        bail!("relaunch exited ({st}) while the idle guest should be running");
    }
    drop(child);
    let maps = parse_smaps(&smaps);
    let (total, guest) = split_rss(&maps, GUEST_MIB << 20);
    for l in status.lines().filter(|l| {
        l.starts_with("VmRSS:")
            || l.starts_with("RssAnon:")
            || l.starts_with("RssFile:")
            || l.starts_with("RssShmem:")
            || l.starts_with("Threads:")
    }) {
        println!("{l}");
    }
    let big: Vec<&Mapping> = maps
        .iter()
        .filter(|m| m.end.saturating_sub(m.start) >= GUEST_MIB << 20)
        .collect();
    for m in &big {
        println!(
            "guest-RAM-sized mapping {:#x}-{:#x} ({} MiB) {:?}: Rss {} KiB",
            m.start,
            m.end,
            (m.end - m.start) >> 20,
            m.name,
            m.rss_kib
        );
    }
    let own = total.saturating_sub(guest);
    println!(
        "RSS (sum of smaps Rss): total {total} KiB, guest RAM {guest} KiB, VMM own {own} KiB = \
         {:.2} MiB (target <= 4 MiB: {})",
        own as f64 / 1024.0,
        if own <= 4 * 1024 { "MET" } else { "MISSED" }
    );
    Ok(Rss {
        own_kib: own,
        guest_kib: guest,
        guest_maps: big.len(),
    })
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
