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
//! - (b) the raw floor: `bench::floor`, in this process, the same number of cycles, in four
//!   flavours ([`floor_kind`]): the same KVM work as a relaunch of this guest with
//!   relaunch's memory backing (the target's reference), the same with each VM closed on a
//!   second thread while the next cycles run (relaunch's teardown strategy), and the
//!   minimal one-memslot floor with anonymous memory and with a guest_memfd. The machine is
//!   shared and KVM's memslot and teardown costs swing with host load (SRCU grace periods),
//!   so the floors and relaunch's main variant are measured interleaved: a floor block,
//!   then a relaunch run, [`ROUNDS`] times, and each side is pooled.
//! - (c) QEMU in place: `-bios` image with the same page; serial bytes (one per boot) are
//!   counted in 50 ms windows → per-reset time per window → p50/p99. The same windowed
//!   count is taken of relaunch's serial output, so the two loops are compared the same
//!   way from outside too.
//! - Cold start: process spawn → first guest serial byte on the VMM's stdout.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use relaunch::sys::kvm::Kvm;

use crate::bench::{self, floor, guest, ms, qemu, ratio, Reaped, Summary};

const USAGE: &str = "usage: cargo xtask bench relaunch [--cycles N (>= 200)] [--mem-mib N] \
                     [--cold-runs N (>= 20)] [--qemu-seconds S] [--relaunch-bin PATH] \
                     [--baseline-bin PATH] [--platform emulated:<snp|sev-es|sev|tdx>]";

/// Options of one run.
#[derive(Clone, Debug)]
struct Opts {
    cycles: usize,
    mem_mib: u64,
    cold_runs: usize,
    qemu_seconds: u64,
    /// A prebuilt `relaunch` to measure instead of building the static release binary
    /// (A/B comparisons of two builds).
    relaunch_bin: Option<PathBuf>,
    /// Another `relaunch` (e.g. the previous commit's) run in the same rounds as the main
    /// variant, interleaved with it: the before/after ratio of one run.
    baseline_bin: Option<PathBuf>,
    /// `--platform emulated:<p>`: instead of the native comparisons, the emulated platform's
    /// relaunch latency against native relaunch of the same image ([`emulated_part`]).
    platform: Option<String>,
}

fn parse(args: &[String]) -> anyhow::Result<Opts> {
    let mut o = Opts {
        cycles: 300,
        mem_mib: 64,
        cold_runs: 20,
        qemu_seconds: 3,
        relaunch_bin: None,
        baseline_bin: None,
        platform: None,
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
            "--relaunch-bin" => {
                let p = it
                    .next()
                    .with_context(|| format!("--relaunch-bin needs a value; {USAGE}"))?;
                o.relaunch_bin =
                    Some(std::fs::canonicalize(p).with_context(|| format!("--relaunch-bin {p}"))?);
            }
            "--baseline-bin" => {
                let p = it
                    .next()
                    .with_context(|| format!("--baseline-bin needs a value; {USAGE}"))?;
                o.baseline_bin =
                    Some(std::fs::canonicalize(p).with_context(|| format!("--baseline-bin {p}"))?);
            }
            "--platform" => {
                let p = it
                    .next()
                    .with_context(|| format!("--platform needs a value; {USAGE}"))?;
                let ok = p
                    .strip_prefix("emulated:")
                    .is_some_and(|q| ["snp", "sev-es", "sev", "tdx"].contains(&q));
                if !ok {
                    bail!("--platform {p}: only emulated:<snp|sev-es|sev|tdx>; {USAGE}");
                }
                o.platform = Some(p.clone());
            }
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
    /// This build and the `--baseline-bin` binary in alternating pairs (`baseline_ab`).
    baseline: Option<(Summary, Summary)>,
    relaunch_spin: Option<Summary>,
    prestage: Option<Summary>,
    prestage_at_once: Option<Summary>,
    relaunch_cycle: Option<(Summary, f64)>,
    floor: Option<Summary>,
    floor_gmem: Option<Summary>,
    /// The floor doing relaunch's work (same memslots, backing, irqchip, CPUID).
    floor_same: Option<Summary>,
    /// Same, with the teardown on a second thread while the next cycle runs.
    floor_same_conc: Option<Summary>,
    /// Name of the backing relaunch (and the same-work floor) uses.
    backing: &'static str,
    qemu: Vec<(String, Summary, f64)>,
    cold_relaunch: Option<Summary>,
    cold_qemu: Vec<(String, Summary)>,
}

/// Floor blocks and relaunch runs alternate this many times for the main comparison.
const ROUNDS: usize = 3;

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn run(o: Opts) -> anyhow::Result<()> {
    println!("== cargo xtask bench relaunch ==");
    println!(
        "command: cargo xtask bench relaunch --cycles {} --mem-mib {} --cold-runs {} \
         --qemu-seconds {}{}",
        o.cycles,
        o.mem_mib,
        o.cold_runs,
        o.qemu_seconds,
        o.relaunch_bin
            .as_ref()
            .map(|p| format!(" --relaunch-bin {}", p.display()))
            .unwrap_or_default()
            + &o.baseline_bin
                .as_ref()
                .map(|p| format!(" --baseline-bin {}", p.display()))
                .unwrap_or_default()
    );
    println!("host: {}", bench::host_description());
    println!("load average at start: {}", load());
    let dir = bench::work_dir()?;
    let page = guest::page(guest::Ending::ResetCf9);
    let bios = bench::write_file(&dir, "tiny-reset.bios", &guest::bios_image(&page))?;
    let reset = bench::write_file(&dir, "tiny-reset.igvm", &guest::igvm(&page)?)?;
    let spin = bench::write_file(
        &dir,
        "tiny-spin-reset.igvm",
        &guest::igvm(&guest::page(guest::Ending::SpinThenReset(SPIN)))?,
    )?;
    println!(
        "guest: 4 KiB real-mode page at {:#x} (out 0x80; out 0x3f8 'R'; out 0xcf9 6), {} MiB RAM",
        guest::PAGE_GPA,
        o.mem_mib
    );
    let bin = match &o.relaunch_bin {
        Some(b) => Some((b.clone(), "given with --relaunch-bin")),
        None => match bench::build_relaunch_for_bench() {
            Ok(b) => Some(b),
            Err(e) => {
                println!("relaunch: cannot build the binary: {e:#}");
                None
            }
        },
    };
    if let Some((b, what)) = &bin {
        println!("relaunch binary: {} ({what})", b.display());
    }
    let bin = bin.map(|(b, _)| b);
    if let Some(p) = &o.platform {
        let bin = bin.context("no relaunch binary to run")?;
        return emulated_part(&o, &bin, p, &dir);
    }
    let mut r = Results::default();

    // (a) main variant and (b) the floor, interleaved.
    println!(
        "\n-- (a)+(b) relaunch (guest resets at once, no prestage) and the raw KVM floor, \
         interleaved in {ROUNDS} rounds --"
    );
    let kvm = Kvm::open().context("opening /dev/kvm")?;
    let cpuid = kvm
        .supported_cpuid(256)
        .context("KVM_GET_SUPPORTED_CPUID")?;
    let backing = floor::relaunch_backing(&kvm);
    r.backing = backing.name();
    println!(
        "relaunch's guest RAM backing on this host: {}",
        backing.name()
    );
    let mut floor_cycles: [Vec<floor::Cycle>; FLOORS] = Default::default();
    let mut main_events: BTreeMap<String, Vec<Duration>> = BTreeMap::new();
    let mut main_error = None;

    let per_round = o.cycles.div_ceil(ROUNDS);
    for round in 0..ROUNDS {
        floor_block(
            &kvm,
            &o,
            &page,
            &cpuid,
            backing,
            per_round,
            &mut floor_cycles,
        )?;
        println!("round {round}: floor block done, load {}", load());
        let (Some(bin), None) = (&bin, &main_error) else {
            continue;
        };
        let events = dir.join(format!("events-tiny-reset-{round}.jsonl"));
        match relaunch_events(bin, &reset, o.mem_mib, per_round, false, &events) {
            Ok(t) => {
                for (k, v) in t {
                    main_events.entry(k).or_default().extend(v);
                }
                println!("round {round}: relaunch run done, load {}", load());
            }
            Err(e) => main_error = Some(e),
        }
    }
    print_floor(&floor_cycles, &mut r)?;
    irqchip_order(&kvm, &o)?;
    if bin.is_some() {
        println!("\nrelaunch [reset at once] ({ROUNDS} runs pooled):");
        match main_error {
            Some(e) => println!("relaunch [reset at once]: failed: {e:#}"),
            None => r.relaunch = print_events(&main_events, o.cycles),
        }
    }
    if let (Some(bin), Some(base)) = (&bin, &o.baseline_bin) {
        r.baseline = baseline_ab(&o, bin, base, &reset, &dir);
    }

    // (a) the other variants, the loop from outside, and cold start.
    if let Some(bin) = &bin {
        relaunch_part(&o, bin, &reset, &spin, &dir, &mut r);
    }

    // (c) QEMU.
    qemu_part(&o, &bios, &mut r)?;

    println!("\nload average at end: {}", load());
    print_table(&r);
    Ok(())
}

/// The floors measured, interleaved cycle by cycle.
const FLOORS: usize = 4;

/// Floor `i`: (title, backing (`None` = relaunch's), work, teardown on another thread).
fn floor_kind(i: usize) -> (&'static str, Option<floor::Backing>, floor::Work, bool) {
    match i {
        0 => (
            "minimal, anonymous memory",
            Some(floor::Backing::Anonymous),
            floor::Work::Minimal,
            false,
        ),
        1 => (
            "minimal, guest_memfd (MMAP|INIT_SHARED)",
            Some(floor::Backing::GuestMemfd),
            floor::Work::Minimal,
            false,
        ),
        2 => (
            "same work as relaunch, relaunch's backing",
            None,
            floor::Work::SameAsRelaunch,
            false,
        ),
        _ => (
            "same work as relaunch, teardown on a 2nd thread",
            None,
            floor::Work::SameAsRelaunch,
            true,
        ),
    }
}

/// Runs `n` cycles of every floor after two warm-up cycles each: the inline-teardown floors
/// interleaved cycle by cycle, then the 2nd-thread-teardown floor as one block of
/// back-to-back cycles (interleaving it with inline teardowns would hide the overlap it is
/// there to show).
fn floor_block(
    kvm: &Kvm,
    o: &Opts,
    page: &[u8; guest::PAGE_SIZE],
    cpuid: &kvm_bindings::CpuId,
    relaunch_backing: floor::Backing,
    n: usize,
    out: &mut [Vec<floor::Cycle>; FLOORS],
) -> anyhow::Result<()> {
    let mem = o.mem_mib << 20;
    let mut ok = [true; FLOORS];
    for i in 0..n + 2 {
        for (j, ok_j) in ok.iter_mut().enumerate() {
            let (_, b, work, concurrent) = floor_kind(j);
            if !*ok_j || concurrent {
                continue;
            }
            let b = b.unwrap_or(relaunch_backing);
            match floor::cycle(kvm, mem, b, work, cpuid, page) {
                Ok(c) if i >= 2 => out[j].push(c),
                Ok(_) => {}
                // guest_memfd is optional (the VMM falls back to anonymous memory).
                Err(e) if b == floor::Backing::GuestMemfd && i == 0 => {
                    println!("floor with {}: not available: {e:#}", b.name());
                    *ok_j = false;
                }
                Err(e) => return Err(e),
            }
        }
    }
    // The concurrent floor: each VM goes to a reaper thread right after its boot marker
    // (relaunch's reaper starts at the new launch's first exit, which is that marker).
    let j = FLOORS - 1;
    let (_, _, work, _) = floor_kind(j);
    let (tx, rx) = std::sync::mpsc::channel::<floor::Live>();
    let reaper = std::thread::spawn(move || {
        for live in rx {
            drop(live);
        }
    });
    let mut result = Ok(());
    for i in 0..n + 2 {
        match floor::cycle_live(kvm, mem, relaunch_backing, work, cpuid, page) {
            Ok((c, live)) => {
                let _ = tx.send(live);
                if i >= 2 {
                    out[j].push(c);
                }
            }
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    drop(tx);
    let _ = reaper.join();
    result
}

fn print_floor(cycles: &[Vec<floor::Cycle>; FLOORS], r: &mut Results) -> anyhow::Result<()> {
    for (i, cs) in cycles.iter().enumerate() {
        if cs.is_empty() {
            continue;
        }
        let (title, _, _, concurrent) = floor_kind(i);
        println!("\nfloor, {title} ({} cycles):", cs.len());
        let col =
            |f: fn(&floor::Cycle) -> Duration| -> Vec<Duration> { cs.iter().map(f).collect() };
        let rows: [(&str, Vec<Duration>); 8] = [
            ("KVM_CREATE_VM", col(|c| c.create_vm)),
            ("[gmem +] mmap + load page", col(|c| c.memory)),
            ("KVM_SET_USER_MEMORY_REGION2 (all)", col(|c| c.memslot)),
            ("KVM_CREATE_IRQCHIP", col(|c| c.irqchip)),
            ("KVM_CREATE_VCPU [+ SET_CPUID2]", col(|c| c.vcpu)),
            ("KVM_RUN to boot marker", col(|c| c.first_run)),
            ("= critical path", col(|c| c.critical_path())),
            ("teardown (off critical path)", col(|c| c.teardown)),
        ];
        println!("{:<34} {:>10} {:>10}", "step", "p50 ms", "p99 ms");
        for (name, v) in &rows {
            if concurrent && name.starts_with("teardown") {
                println!("{name:<34} {:>10}", "(2nd thread)");
                continue;
            }
            let s = Summary::of(v).context("no floor samples")?;
            println!("{name:<34} {:>10} {:>10}", ms(s.p50), ms(s.p99));
            if name.starts_with('=') {
                match i {
                    0 => r.floor = Some(s),
                    1 => r.floor_gmem = Some(s),
                    2 => r.floor_same = Some(s),
                    _ => r.floor_same_conc = Some(s),
                }
            }
        }
    }
    Ok(())
}

/// Diagnostic (not part of the floor): does creating the in-kernel irqchip before the RAM
/// memslot cost more than after it? 50 fresh VMs each way, interleaved.
fn irqchip_order(kvm: &Kvm, o: &Opts) -> anyhow::Result<()> {
    let mem = o.mem_mib << 20;
    let mut before = Vec::new();
    let mut after = Vec::new();
    for _ in 0..50 {
        before.push(floor::irqchip_and_memslot(kvm, mem, true)?);
        after.push(floor::irqchip_and_memslot(kvm, mem, false)?);
    }
    println!(
        "\ndiagnostic: KVM_CREATE_IRQCHIP + one {} MiB memslot on a fresh VM, 50 each:",
        o.mem_mib
    );
    for (name, v) in [
        ("irqchip, then memslot", &before),
        ("memslot, then irqchip", &after),
    ] {
        let s = Summary::of(v).context("no samples")?;
        println!(
            "{name:<34} p50 {:>8} ms  p99 {:>8} ms",
            ms(s.p50),
            ms(s.p99)
        );
    }
    Ok(())
}

/// Alternating pairs of this build and `--baseline-bin`, for the before/after ratio.
const AB_PAIRS: usize = 12;

/// This build vs `--baseline-bin`: [`AB_PAIRS`] pairs of runs of the same guest, the order
/// alternating from pair to pair, nothing else in between (the floor blocks' teardowns and
/// load drift hit both sides alike). Each run gives its p50 relaunch latency; the summary is
/// the median of those p50s per side, and the ratio is printed with the per-run p50s.
/// Returns both sides' summaries (`p50` = the median of the run p50s): this build, baseline.
fn baseline_ab(
    o: &Opts,
    bin: &Path,
    base: &Path,
    reset: &Path,
    dir: &Path,
) -> Option<(Summary, Summary)> {
    println!(
        "\n-- (a') this build vs --baseline-bin {}: {AB_PAIRS} alternating pairs of runs --",
        base.display()
    );
    let per_run = (o.cycles / 4).max(100);
    let mut p50s: [Vec<Duration>; 2] = Default::default();
    for pair in 0..AB_PAIRS {
        let mut order = [(0usize, bin), (1usize, base)];
        if pair % 2 == 1 {
            order.reverse();
        }
        for (side, b) in order {
            let events = dir.join(format!("events-ab-{side}-{pair}.jsonl"));
            match relaunch_events(b, reset, o.mem_mib, per_run, false, &events) {
                Ok(t) => {
                    if let Some(s) = t.get("relaunch_latency").and_then(|v| Summary::of(v)) {
                        p50s[side].push(s.p50);
                    }
                }
                Err(e) => {
                    println!("a/b pair {pair}: {} failed: {e:#}", b.display());
                    return None;
                }
            }
        }
    }
    let med = |v: &[Duration]| Summary::of(v);
    let (Some(this), Some(before)) = (med(&p50s[0]), med(&p50s[1])) else {
        println!("a/b: no relaunch latency samples");
        return None;
    };
    let list = |v: &[Duration]| v.iter().map(|d| ms(*d)).collect::<Vec<_>>().join(" ");
    println!(
        "per-run p50 relaunch latency, this build (ms): {}",
        list(&p50s[0])
    );
    println!(
        "per-run p50 relaunch latency, baseline   (ms): {}",
        list(&p50s[1])
    );
    println!(
        "median of run p50s: this build {} ms, baseline {} ms → this build / baseline = {}",
        ms(this.p50),
        ms(before.p50),
        ratio(this.p50, before.p50)
    );
    Some((this, before))
}

/// Prints every per-launch event timing; returns the relaunch latency summary.
fn print_events(t: &BTreeMap<String, Vec<Duration>>, expected: usize) -> Option<Summary> {
    println!(
        "{:<34} {:>10} {:>10} {:>6}",
        "event timing (per launch)", "p50 ms", "p99 ms", "n"
    );
    for (k, samples) in t {
        if let Some(s) = Summary::of(samples) {
            println!("{k:<34} {:>10} {:>10} {:>6}", ms(s.p50), ms(s.p99), s.n);
        }
    }
    let lat = t.get("relaunch_latency").and_then(|v| Summary::of(v));
    match lat {
        Some(s) if s.n >= expected => {}
        Some(s) => println!("warning: {} latency samples, {expected} expected", s.n),
        None => println!("no relaunch_latency in the events"),
    }
    lat
}

/// Guest loop iterations before the reset for the prestage runs: long enough (≈ 9 ms here,
/// see `guest::Ending::SpinThenReset`) for the next VM to be built while the guest runs.
const SPIN: u32 = 20_000;

/// Launches skipped at the start of every relaunch run (first-use costs).
const WARMUP: usize = 5;

/// `relaunch run IGVM --mem N extra...`. Runs that count serial bytes keep the console;
/// event-only runs add `--quiet` (which also discards guest output) to `extra`.
fn relaunch_command(bin: &Path, igvm: &Path, mem_mib: u64, extra: &[String]) -> Command {
    let mut c = Command::new(bin);
    c.arg("run")
        .arg(igvm)
        .args(["--mem", &format!("{mem_mib}M")])
        .args(extra);
    c
}

fn command_text(c: &Command) -> String {
    std::iter::once(c.get_program().to_string_lossy().into_owned())
        .chain(c.get_args().map(|a| a.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Per-launch timings from the VMM's `exit` event lines, by field name, in microseconds
/// (`*_ns` fields are converted), in launch order.
fn event_timings(text: &str) -> BTreeMap<String, Vec<Duration>> {
    let mut out: BTreeMap<String, Vec<Duration>> = BTreeMap::new();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v.get("event").and_then(|e| e.as_str()) != Some("exit") {
            continue;
        }
        let Some(t) = v.get("timings").and_then(|t| t.as_object()) else {
            continue;
        };
        for (k, val) in t {
            let Some(n) = val.as_u64() else { continue };
            let (name, d) = if let Some(base) = k.strip_suffix("_ns") {
                (base, Duration::from_nanos(n))
            } else if let Some(base) = k.strip_suffix("_us") {
                // The same timing in ns, when the VMM gives it, is the more precise one.
                if t.contains_key(&format!("{base}_ns")) {
                    continue;
                }
                (base, Duration::from_micros(n))
            } else {
                continue;
            };
            out.entry(name.to_string()).or_default().push(d);
        }
    }
    out
}

/// Runs `relaunch` for `cycles` relaunches with `--events`, checks it stopped at the reboot
/// limit, and returns the per-launch timings (warm-up launches dropped).
fn relaunch_events(
    bin: &Path,
    igvm: &Path,
    mem_mib: u64,
    launches: usize,
    prestage: bool,
    events: &Path,
) -> anyhow::Result<BTreeMap<String, Vec<Duration>>> {
    relaunch_events_with(bin, igvm, mem_mib, launches, prestage, events, &[])
}

/// [`relaunch_events`] with `more` flags for `relaunch run`.
fn relaunch_events_with(
    bin: &Path,
    igvm: &Path,
    mem_mib: u64,
    launches: usize,
    prestage: bool,
    events: &Path,
    more: &[String],
) -> anyhow::Result<BTreeMap<String, Vec<Duration>>> {
    let _ = std::fs::remove_file(events);
    let reboots = launches + WARMUP;
    let mut extra = vec![
        "--quiet".to_string(),
        "--max-reboots".to_string(),
        reboots.to_string(),
        "--events".to_string(),
        events.display().to_string(),
    ];
    if prestage {
        extra.push("--prestage".into());
    }
    extra.extend_from_slice(more);
    let mut cmd = relaunch_command(bin, igvm, mem_mib, &extra);
    println!("command: {}", command_text(&cmd));
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = Reaped::spawn(&mut cmd)?;
    let mut stderr = child.0.stderr.take().context("no stderr")?;
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    // Bounded: at most 10 ms per launch plus a minute, then the child is killed.
    let limit = Duration::from_millis(10 * reboots as u64) + Duration::from_secs(60);
    let status = wait_bounded(&mut child, limit);
    drop(child);
    let err = err_reader.join().unwrap_or_default();
    let Some(status) = status else {
        bail!(
            "relaunch did not finish within {limit:?}; stderr: {}",
            tail(&err)
        );
    };
    // Reboot contract: exit code 4 = the guest asked for a reset after --max-reboots.
    if status.code() != Some(4) {
        bail!(
            "relaunch exited with {status} (expected 4 = reboot limit); stderr: {}",
            tail(&err)
        );
    }
    let text =
        std::fs::read_to_string(events).with_context(|| format!("reading {}", events.display()))?;
    let mut t = event_timings(&text);
    for v in t.values_mut() {
        let skip = WARMUP.min(v.len());
        v.drain(..skip);
    }
    Ok(t)
}

/// Rounds of the emulated comparison: native, emulated, alternating (first side flips).
const EMU_ROUNDS: usize = 6;
/// Guest sizes of the emulated comparison (issue 8: 64 MiB and 1 GiB).
const EMU_MEM_MIB: [u64; 2] = [64, 1024];

/// `--platform emulated:<p>`: relaunch latency of `reboot-loop.igvm` (a boot image with
/// every platform's view; it resets at once on every launch while fw_cfg
/// `opt/relaunch/reboot-until` is above its generation) on the emulated platform — the whole
/// launch replayed and measured by the model on every relaunch — against native relaunch of
/// the same image, in alternating runs, for each size in [`EMU_MEM_MIB`]. The measured share
/// of RAM is what the bundle imports (its pages), whatever the RAM size.
fn emulated_part(o: &Opts, bin: &Path, platform: &str, dir: &Path) -> anyhow::Result<()> {
    let image = crate::workspace_root().join("boot-images/out/reboot-loop.igvm");
    if !image.exists() {
        crate::images::build_images(&[])?;
    }
    println!(
        "\n-- relaunch latency, {platform} vs native, {} ({} bytes), {EMU_ROUNDS} alternating \
         rounds per size --",
        image.display(),
        std::fs::metadata(&image).map(|m| m.len()).unwrap_or(0)
    );
    let until = [
        "--fw-cfg".to_string(),
        format!("opt/relaunch/reboot-until=u64:{}", u64::MAX),
    ];
    let per_run = (o.cycles / EMU_ROUNDS).max(40);
    let mut rows = Vec::new();
    for mem in EMU_MEM_MIB {
        let mut samples: [Vec<Duration>; 2] = Default::default();
        for round in 0..EMU_ROUNDS {
            let mut sides = [(0usize, None), (1usize, Some(platform))];
            if round % 2 == 1 {
                sides.reverse();
            }
            for (side, p) in sides {
                let mut more = until.to_vec();
                if let Some(p) = p {
                    more.extend(["--platform".to_string(), p.to_string()]);
                }
                let events = dir.join(format!("events-emu-{mem}-{side}-{round}.jsonl"));
                let t = relaunch_events_with(bin, &image, mem, per_run, false, &events, &more)
                    .with_context(|| format!("{mem} MiB, {}", p.unwrap_or("native")))?;
                samples[side].extend(t.get("relaunch_latency").cloned().unwrap_or_default());
            }
            println!("{mem} MiB round {round} done, load {}", load());
        }
        let (Some(native), Some(emu)) = (Summary::of(&samples[0]), Summary::of(&samples[1])) else {
            bail!("{mem} MiB: no relaunch latency samples");
        };
        println!(
            "{mem} MiB: native p50 {} ms p99 {} ms (n={}), {platform} p50 {} ms p99 {} ms (n={})",
            ms(native.p50),
            ms(native.p99),
            samples[0].len(),
            ms(emu.p50),
            ms(emu.p99),
            samples[1].len()
        );
        rows.push((mem, native, emu));
    }
    println!("\n| guest RAM | native relaunch p50 | {platform} relaunch p50 | ratio |");
    println!("|---|---|---|---|");
    for (mem, native, emu) in rows {
        println!(
            "| {mem} MiB | {} ms | {} ms | {} |",
            ms(native.p50),
            ms(emu.p50),
            ratio(emu.p50, native.p50)
        );
    }
    Ok(())
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(5)..].join(" | ")
}

/// Waits for `child` up to `limit`; `None` (child killed) on timeout.
fn wait_bounded(child: &mut Reaped, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        match child.0.try_wait() {
            Ok(Some(st)) => return Some(st),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => {
                let _ = child.0.kill();
                let _ = child.0.wait();
                return None;
            }
        }
    }
}

fn relaunch_part(o: &Opts, bin: &Path, reset: &Path, spin: &Path, dir: &Path, r: &mut Results) {
    println!("\n-- (a) relaunch, other variants: {} --", bin.display());
    let variants = [
        ("reset at once, --prestage", reset, true),
        ("spin ~9 ms, then reset", spin, false),
        ("spin ~9 ms, then reset, --prestage", spin, true),
    ];
    for (i, (name, igvm, prestage)) in variants.into_iter().enumerate() {
        println!("\n[{name}] {} relaunches (+{WARMUP} warm-up)", o.cycles);
        let events = dir.join(format!("events-variant-{i}.jsonl"));
        let lat = match relaunch_events(bin, igvm, o.mem_mib, o.cycles, prestage, &events) {
            Ok(t) => print_events(&t, o.cycles),
            Err(e) => {
                println!("relaunch [{name}]: failed: {e:#}");
                continue;
            }
        };
        match i {
            0 => r.prestage_at_once = lat,
            1 => r.relaunch_spin = lat,
            _ => r.prestage = lat,
        }
    }
    if let Err(e) = outside_and_cold(o, bin, reset, r) {
        println!("relaunch: {e:#}");
    }
}

fn outside_and_cold(o: &Opts, bin: &Path, reset: &Path, r: &mut Results) -> anyhow::Result<()> {
    // The full cycle from outside, counted like QEMU's in-place loop.
    let window = Duration::from_millis(50);
    let measure = Duration::from_secs(o.qemu_seconds);
    let extra = ["--max-reboots".to_string(), "100000000".to_string()];
    let mut cmd = relaunch_command(bin, reset, o.mem_mib, &extra);
    println!(
        "\nrelaunch loop from outside, command: {}",
        command_text(&cmd)
    );
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = Reaped::spawn(&mut cmd)?;
    let rx = bench::stdout_arrivals(&mut child.0)?;
    let res = bench::cycle_times(&rx, Duration::from_millis(500), measure, window);
    drop(child);
    match res {
        Ok((per, total)) => {
            let rate = total as f64 / measure.as_secs_f64();
            if let Some(s) = Summary::of(&per) {
                println!(
                    "relaunch loop from outside: {total} relaunches in {:.1} s = {rate:.0}/s; per cycle over {} windows of {} ms: p50 {} ms, p99 {} ms",
                    measure.as_secs_f64(), s.n, window.as_millis(), ms(s.p50), ms(s.p99)
                );
                r.relaunch_cycle = Some((s, rate));
            }
        }
        Err(e) => println!("relaunch loop from outside: failed: {e:#}"),
    }

    // Cold start.
    let extra = ["--max-reboots".to_string(), "0".to_string()];
    let probe = relaunch_command(bin, reset, o.mem_mib, &extra);
    println!("\ncold start command: {}", command_text(&probe));
    match bench::cold_starts(o.cold_runs, Duration::from_secs(10), || {
        relaunch_command(bin, reset, o.mem_mib, &extra)
    }) {
        Ok(v) => {
            let s = Summary::of(&v).context("no cold-start samples")?;
            println!(
                "relaunch: cold start → first serial byte, {} runs: p50 {} ms, p99 {} ms",
                s.n,
                ms(s.p50),
                ms(s.p99)
            );
            r.cold_relaunch = Some(s);
        }
        Err(e) => println!("relaunch: cold start failed: {e:#}"),
    }
    Ok(())
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
    println!("{version}; load {}", load());
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
    if let Some((this, b)) = r.baseline {
        println!(
            "{:<52} {} vs baseline {} → this build / baseline = {}",
            format!("  a/b, {AB_PAIRS} alternating pairs (median of run p50s)"),
            ms(this.p50),
            ms(b.p50),
            ratio(this.p50, b.p50)
        );
    }
    println!(
        "{:<52} {}",
        "  same, guest spins ~9 ms before its reset",
        show(r.relaunch_spin)
    );
    println!(
        "{:<52} {}",
        "relaunch latency, --prestage (guest spins ~9 ms)",
        show(r.prestage)
    );
    println!(
        "{:<52} {}",
        "  same, guest resets at once (VM not ready yet)",
        show(r.prestage_at_once)
    );
    match r.relaunch_cycle {
        Some((s, rate)) => println!(
            "{:<52} {} ({rate:.0} relaunches/s)",
            "relaunch full cycle, from outside",
            show(Some(s))
        ),
        None => println!("{:<52} {na}", "relaunch full cycle, from outside"),
    }
    println!(
        "{:<52} {}",
        format!("raw floor, same work as relaunch ({})", r.backing),
        show(r.floor_same)
    );
    println!(
        "{:<52} {}",
        "  same, teardown on a 2nd thread (as relaunch)",
        show(r.floor_same_conc)
    );
    println!(
        "{:<52} {}",
        "raw floor, minimal, anonymous memory",
        show(r.floor)
    );
    println!(
        "{:<52} {}",
        "raw floor, minimal, guest_memfd",
        show(r.floor_gmem)
    );
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
    match (r.relaunch, r.floor_same) {
        (Some(a), Some(f)) => println!(
            "relaunch p50 / same-work floor p50       = {}   (target <= 1.10x) {}",
            ratio(a.p50, f.p50),
            verdict(a.p50.as_secs_f64() <= 1.1 * f.p50.as_secs_f64())
        ),
        _ => println!("relaunch p50 / same-work floor p50       = not measured"),
    }
    if let (Some(a), Some(f)) = (r.relaunch, r.floor_same_conc) {
        println!(
            "relaunch p50 / same-work floor, 2nd-thread teardown p50 = {}",
            ratio(a.p50, f.p50)
        );
    }
    if let (Some(a), Some(f)) = (r.relaunch, r.floor) {
        println!(
            "relaunch p50 / minimal floor (anonymous) p50 = {}",
            ratio(a.p50, f.p50)
        );
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
    fn exit_event_timings() {
        let text = r#"{"event":"launch","timings":{"execute_us":9}}
{"event":"exit","generation":1,"timings":{"run_us":5,"boot_marker_us":2}}
not json
{"event":"exit","generation":2,"timings":{"relaunch_latency_us":400,"run_us":6,"x_ns":1500,"flag":true}}
{"event":"exit","generation":3,"timings":{"relaunch_latency_us":401,"relaunch_latency_ns":401234}}
"#;
        let t = event_timings(text);
        let us = Duration::from_micros;
        // µs and ns of the same timing: only the ns value counts.
        assert_eq!(
            t["relaunch_latency"],
            vec![us(400), Duration::from_nanos(401_234)]
        );
        assert_eq!(t["run"], vec![us(5), us(6)]);
        assert_eq!(t["x"], vec![Duration::from_nanos(1500)]);
        assert!(!t.contains_key("execute"));
        assert!(!t.contains_key("flag"));
    }
}
