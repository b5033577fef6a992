//! `cargo xtask bench relaunch`: relaunch latency vs the raw KVM floor vs QEMU's in-place
//! reset, and cold start → first serial byte for relaunch and QEMU (issue 3, "Proof
//! required"). Everything runs in one invocation on the same tiny guest
//! (`bench::guest`) with the same memory size, and prints one table with the ratios.
//!
//! Method (also in docs/benchmarks.md):
//! - (a) relaunch latency: the VMM's own per-launch event (`--events`) carries the time from
//!   the guest's reset request (the exit of its `out 0xCF9`) to the next launch's first
//!   boot-marker write (`out 0x80`), in nanoseconds. The guest resets right after the
//!   marker, so one process run gives `--max-reboots` samples. With and without
//!   `--prestage`.
//! - (b) the raw floor: `bench::floor`, in this process, the same number of cycles.
//! - (c) QEMU in place: `-bios` image with the same page; serial bytes (one per boot) are
//!   counted in 50 ms windows → per-reset time per window → p50/p99. The same windowed
//!   count is taken of relaunch's serial output, so the two loops are compared the same
//!   way from outside too.
//! - Cold start: process spawn → first guest serial byte on the VMM's stdout.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};
use kvm_ioctls::Kvm;

use crate::bench::{self, floor, guest, ms, qemu, Summary};

const USAGE: &str = "usage: cargo xtask bench relaunch [--cycles N (>= 200)] [--mem-mib N] \
                     [--cold-runs N (>= 20)] [--qemu-seconds S]";

/// Options of one run.
#[derive(Clone, Copy, Debug)]
struct Opts {
    cycles: usize,
    mem_mib: u64,
    cold_runs: usize,
    qemu_seconds: u64,
}

fn parse(args: &[String]) -> anyhow::Result<Opts> {
    let mut o = Opts {
        cycles: 300,
        mem_mib: 64,
        cold_runs: 20,
        qemu_seconds: 3,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = |name: &str| -> anyhow::Result<u64> {
            it.next()
                .with_context(|| format!("{name} needs a value; {USAGE}"))?
                .parse::<u64>()
                .with_context(|| format!("{name}: not a number; {USAGE}"))
        };
        match a.as_str() {
            "--cycles" => o.cycles = usize::try_from(val("--cycles")?)?,
            "--mem-mib" => o.mem_mib = val("--mem-mib")?,
            "--cold-runs" => o.cold_runs = usize::try_from(val("--cold-runs")?)?,
            "--qemu-seconds" => o.qemu_seconds = val("--qemu-seconds")?,
            "-h" | "--help" => bail!("{USAGE}"),
            other => bail!("unknown option {other:?}; {USAGE}"),
        }
    }
    if o.cycles < 200 || o.cycles > 100_000 {
        bail!("--cycles must be in 200..=100000; {USAGE}");
    }
    if o.cold_runs < 20 || o.cold_runs > 1000 {
        bail!("--cold-runs must be in 20..=1000; {USAGE}");
    }
    if o.mem_mib == 0 || o.mem_mib > 2048 {
        bail!("--mem-mib must be in 1..=2048; {USAGE}");
    }
    if o.qemu_seconds == 0 || o.qemu_seconds > 60 {
        bail!("--qemu-seconds must be in 1..=60; {USAGE}");
    }
    Ok(o)
}

/// Entry point. A debug-built xtask rebuilds itself in release and re-runs there, so every
/// timed loop (the floor runs in this process) is optimised code.
pub fn main(args: &[String]) -> anyhow::Result<()> {
    let opts = parse(args)?;
    if cfg!(debug_assertions) {
        crate::run("cargo", &["build", "--release", "--locked", "-p", "xtask"])?;
        let exe = bench::target_dir().join("release").join("xtask");
        let mut cmd = Command::new(&exe);
        cmd.args(["bench", "relaunch"])
            .args(args)
            .current_dir(crate::workspace_root());
        let status = cmd
            .status()
            .with_context(|| format!("cannot start {}", exe.display()))?;
        if !status.success() {
            bail!("release bench failed: {status}");
        }
        return Ok(());
    }
    run(opts)
}

/// Everything the table needs; `None` where a part could not be measured (with the reason
/// printed where it happened).
#[derive(Default)]
struct Results {
    relaunch: Option<Summary>,
    prestage: Option<Summary>,
    relaunch_cycle: Option<Summary>,
    floor: Option<Summary>,
    qemu: Vec<(String, Summary, f64)>,
    cold_relaunch: Option<Summary>,
    cold_qemu: Vec<(String, Summary)>,
}

fn run(o: Opts) -> anyhow::Result<()> {
    println!("== cargo xtask bench relaunch ==");
    println!("command: cargo xtask bench relaunch --cycles {} --mem-mib {} --cold-runs {} --qemu-seconds {}",
        o.cycles, o.mem_mib, o.cold_runs, o.qemu_seconds);
    println!("host: {}", bench::host_description());
    let dir = bench::work_dir()?;
    let page = guest::page(guest::Ending::ResetCf9);
    let igvm = bench::write_file(&dir, "tiny-reset.igvm", &guest::igvm(&page)?)?;
    let bios = bench::write_file(&dir, "tiny-reset.bios", &guest::bios_image(&page))?;
    println!(
        "guest: 4 KiB real-mode page at {:#x} (out 0x80; out 0x3f8 'R'; out 0xcf9 6), {} MiB RAM",
        guest::PAGE_GPA,
        o.mem_mib
    );
    // (b) the raw floor, first: it needs nothing but /dev/kvm.
    let mut r = Results {
        floor: floor_part(&o, &page)?,
        ..Results::default()
    };

    // (a) + relaunch cold start.
    match bench::build_relaunch_static() {
        Ok(bin) => relaunch_part(&o, &bin, &igvm, &mut r),
        Err(e) => println!("relaunch: cannot build the binary: {e:#}"),
    }

    // (c) QEMU.
    qemu_part(&o, &bios, &mut r)?;

    print_table(&r);
    Ok(())
}

fn floor_part(o: &Opts, page: &[u8; guest::PAGE_SIZE]) -> anyhow::Result<Option<Summary>> {
    println!(
        "\n-- (b) raw KVM floor: {} cycles in this process (kvm-ioctls, no relaunch code) --",
        o.cycles
    );
    let kvm = Kvm::new().context("opening /dev/kvm")?;
    let mem = o.mem_mib << 20;
    // Two warm-up cycles (first-use page faults in the kernel and here).
    for _ in 0..2 {
        floor::cycle(&kvm, mem, page)?;
    }
    let mut cycles = Vec::with_capacity(o.cycles);
    for _ in 0..o.cycles {
        cycles.push(floor::cycle(&kvm, mem, page)?);
    }
    let col =
        |f: fn(&floor::Cycle) -> Duration| -> Vec<Duration> { cycles.iter().map(f).collect() };
    let rows: [(&str, Vec<Duration>); 7] = [
        ("KVM_CREATE_VM", col(|c| c.create_vm)),
        ("mmap + load page", col(|c| c.memory)),
        ("KVM_SET_USER_MEMORY_REGION", col(|c| c.memslot)),
        ("KVM_CREATE_VCPU + kvm_run mmap", col(|c| c.vcpu)),
        ("KVM_RUN to boot marker", col(|c| c.first_run)),
        ("= critical path", col(|c| c.critical_path())),
        ("teardown (off critical path)", col(|c| c.teardown)),
    ];
    println!("{:<34} {:>10} {:>10}", "step", "p50 ms", "p99 ms");
    let mut crit = None;
    for (name, v) in &rows {
        let s = Summary::of(v).context("no floor samples")?;
        println!("{name:<34} {:>10} {:>10}", ms(s.p50), ms(s.p99));
        if name.starts_with('=') {
            crit = Some(s);
        }
    }
    Ok(crit)
}

fn relaunch_part(o: &Opts, bin: &Path, igvm: &Path, r: &mut Results) {
    println!("\n-- (a) relaunch: {} --", bin.display());
    let _ = (o, igvm, r);
    println!("relaunch: not measured yet");
}

fn qemu_part(o: &Opts, bios: &Path, r: &mut Results) -> anyhow::Result<()> {
    println!("\n-- (c) QEMU --");
    let version = match qemu::ensure_installed() {
        Ok(v) => v,
        Err(e) => {
            println!("QEMU: not available: {e:#}");
            return Ok(());
        }
    };
    println!("{version}");
    let window = Duration::from_millis(50);
    for machine in ["q35", "pc"] {
        println!("command: {}", qemu::command_text(bios, machine, o.mem_mib));
        let measure = Duration::from_secs(o.qemu_seconds);
        match qemu::in_place(
            bios,
            machine,
            o.mem_mib,
            Duration::from_millis(500),
            measure,
            window,
        ) {
            Ok((per, total)) => {
                let rate = total as f64 / measure.as_secs_f64();
                match Summary::of(&per) {
                    Some(s) => {
                        println!(
                            "{machine}: in-place reset loop: {total} resets in {:.1} s = {rate:.0}/s; per reset over {} windows of {} ms: p50 {} ms, p99 {} ms",
                            measure.as_secs_f64(),
                            s.n,
                            window.as_millis(),
                            ms(s.p50),
                            ms(s.p99)
                        );
                        r.qemu.push((machine.to_string(), s, rate));
                    }
                    None => println!("{machine}: no resets counted"),
                }
            }
            Err(e) => println!("{machine}: in-place loop failed: {e:#}"),
        }
        let bios_owned: PathBuf = bios.to_path_buf();
        let mem = o.mem_mib;
        match bench::cold_starts(o.cold_runs, Duration::from_secs(10), || {
            qemu::command(&bios_owned, machine, mem)
        }) {
            Ok(v) => {
                let s = Summary::of(&v).context("no cold-start samples")?;
                println!(
                    "{machine}: cold start → first serial byte, {} runs: p50 {} ms, p99 {} ms",
                    s.n,
                    ms(s.p50),
                    ms(s.p99)
                );
                r.cold_qemu.push((machine.to_string(), s));
            }
            Err(e) => println!("{machine}: cold start failed: {e:#}"),
        }
    }
    Ok(())
}

fn ratio(a: Duration, b: Duration) -> String {
    if b.is_zero() {
        return "n/a".into();
    }
    format!("{:.2}x", a.as_secs_f64() / b.as_secs_f64())
}

fn print_table(r: &Results) {
    println!("\n== summary (p50, ms) ==");
    let na = "not measured".to_string();
    let show = |s: Option<Summary>| {
        s.map(|s| format!("{} (p99 {})", ms(s.p50), ms(s.p99)))
            .unwrap_or_else(|| na.clone())
    };
    println!(
        "{:<52} {}",
        "relaunch latency (reset request → boot marker)",
        show(r.relaunch)
    );
    println!(
        "{:<52} {}",
        "relaunch latency with --prestage",
        show(r.prestage)
    );
    println!(
        "{:<52} {}",
        "relaunch full cycle, from outside (serial windows)",
        show(r.relaunch_cycle)
    );
    println!("{:<52} {}", "raw floor critical path", show(r.floor));
    for (m, s, rate) in &r.qemu {
        println!(
            "{:<52} {} ({rate:.0} resets/s)",
            format!("QEMU {m} in-place reset cycle"),
            show(Some(*s))
        );
    }
    println!(
        "{:<52} {}",
        "cold start → first serial byte, relaunch",
        show(r.cold_relaunch)
    );
    for (m, s) in &r.cold_qemu {
        println!(
            "{:<52} {}",
            format!("cold start → first serial byte, QEMU {m}"),
            show(Some(*s))
        );
    }
    // QEMU reference: the faster machine type (the stricter comparison for relaunch).
    let qemu_reset = r
        .qemu
        .iter()
        .map(|(m, s, _)| (m.clone(), s.p50))
        .min_by_key(|x| x.1);
    let qemu_cold = r
        .cold_qemu
        .iter()
        .map(|(m, s)| (m.clone(), s.p50))
        .min_by_key(|x| x.1);
    println!("\n== ratios (targets from issue 3) ==");
    match (r.relaunch, r.floor) {
        (Some(a), Some(f)) => println!(
            "relaunch p50 / floor critical path p50   = {}   (target <= 1.10x) {}",
            ratio(a.p50, f.p50),
            verdict(a.p50.as_secs_f64() <= 1.1 * f.p50.as_secs_f64())
        ),
        _ => println!("relaunch p50 / floor critical path p50   = not measured"),
    }
    match (r.prestage, &qemu_reset) {
        (Some(p), Some((m, q))) => println!(
            "prestage p50 / QEMU {m} in-place reset p50 = {}   (target < 1x) {}",
            ratio(p.p50, *q),
            verdict(p.p50 < *q)
        ),
        _ => println!("prestage p50 / QEMU in-place reset p50   = not measured"),
    }
    match (r.cold_relaunch, &qemu_cold) {
        (Some(c), Some((m, q))) => println!(
            "cold start relaunch / QEMU {m} p50       = {}   (target <= 0.10x) {}",
            ratio(c.p50, *q),
            verdict(c.p50.as_secs_f64() <= 0.1 * q.as_secs_f64())
        ),
        _ => println!("cold start relaunch / QEMU p50           = not measured"),
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "MET"
    } else {
        "MISSED"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn options_defaults_and_bounds() {
        let o = parse(&[]).unwrap();
        assert!(o.cycles >= 200 && o.cold_runs >= 20);
        assert_eq!(parse(&args(&["--cycles", "250"])).unwrap().cycles, 250);
        assert!(parse(&args(&["--cycles", "199"])).is_err());
        assert!(parse(&args(&["--cold-runs", "5"])).is_err());
        assert!(parse(&args(&["--mem-mib", "0"])).is_err());
        assert!(parse(&args(&["--cycles"])).is_err());
        assert!(parse(&args(&["--bogus"])).is_err());
    }

    #[test]
    fn ratio_text() {
        let ms = Duration::from_millis;
        assert_eq!(ratio(ms(3), ms(2)), "1.50x");
        assert_eq!(ratio(ms(3), Duration::ZERO), "n/a");
    }
}
