//! Shared pieces of `cargo xtask bench relaunch` and `cargo xtask bench size`: the tiny guest,
//! the raw KVM floor, the QEMU side, statistics, host facts and child-process handling.

pub mod floor;
pub mod guest;
pub mod qemu;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Nearest-rank percentile (`p` in 0..=100) of `samples`; `None` when empty.
pub fn percentile(samples: &[Duration], p: u32) -> Option<Duration> {
    if samples.is_empty() {
        return None;
    }
    let mut v = samples.to_vec();
    v.sort_unstable();
    // rank = ceil(p/100 * n), at least 1.
    let n = v.len();
    let rank = (n * p.min(100) as usize).div_ceil(100).max(1);
    v.get(rank - 1).copied()
}

/// p50 and p99 of a sample set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Summary {
    /// Median.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Number of samples.
    pub n: usize,
}

impl Summary {
    /// Summarises `samples`; `None` when empty.
    pub fn of(samples: &[Duration]) -> Option<Summary> {
        Some(Summary {
            p50: percentile(samples, 50)?,
            p99: percentile(samples, 99)?,
            n: samples.len(),
        })
    }
}

/// `a / b` as `1.50x` (`n/a` when `b` is zero): the ratio column of every bench table.
pub fn ratio(a: Duration, b: Duration) -> String {
    if b.is_zero() {
        return "n/a".into();
    }
    format!("{:.2}x", a.as_secs_f64() / b.as_secs_f64())
}

/// Milliseconds with three decimals.
pub fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1e3)
}

/// The host: CPU model (from /proc/cpuinfo), kernel release, KVM module hint.
pub fn host_description() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown kernel".into());
    let kvm = ["kvm_pvm", "kvm_amd", "kvm_intel"]
        .into_iter()
        .filter(|m| Path::new("/sys/module").join(m).exists())
        .collect::<Vec<_>>()
        .join(",");
    format!("CPU: {cpu} ({cpus} CPUs online); kernel: {kernel}; KVM modules: {kvm}")
}

/// The cargo target directory this xtask was built for (`CARGO_TARGET_DIR` or `target/`).
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => {
            let p = PathBuf::from(d);
            if p.is_absolute() {
                p
            } else {
                crate::workspace_root().join(p)
            }
        }
        _ => crate::workspace_root().join("target"),
    }
}

/// Where the bench writes its guest files.
pub fn work_dir() -> anyhow::Result<PathBuf> {
    let d = target_dir().join("bench");
    std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    Ok(d)
}

/// The musl target the shipped binary is built for.
pub const MUSL: &str = "x86_64-unknown-linux-musl";

/// Builds the static `relaunch` binary (release, musl) and returns its path.
pub fn build_relaunch_static() -> anyhow::Result<PathBuf> {
    crate::run(
        "cargo",
        &[
            "build",
            "--release",
            "--locked",
            "-p",
            "relaunch",
            "--target",
            MUSL,
        ],
    )?;
    let bin = target_dir().join(MUSL).join("release").join("relaunch");
    if !bin.is_file() {
        bail!("built relaunch but {} is missing", bin.display());
    }
    Ok(bin)
}

/// Builds the `relaunch` release binary for timing runs: the static musl binary (what ships),
/// or, when that does not build, the host-libc release build with a loud note (the timings
/// of the two differ only in process start-up). Returns the path and a label.
pub fn build_relaunch_for_bench() -> anyhow::Result<(PathBuf, &'static str)> {
    match build_relaunch_static() {
        Ok(p) => Ok((p, "static musl release build")),
        Err(e) => {
            println!(
                "NOTE: the static musl build failed ({e:#}); measuring the glibc release \
                 build instead"
            );
            crate::run(
                "cargo",
                &["build", "--release", "--locked", "-p", "relaunch"],
            )?;
            let bin = target_dir().join("release").join("relaunch");
            if !bin.is_file() {
                bail!("built relaunch but {} is missing", bin.display());
            }
            Ok((bin, "glibc release build (musl build FAILED)"))
        }
    }
}

/// A child process that is killed and reaped when dropped, so no bench path leaves one
/// behind (errors, timeouts, early returns).
pub struct Reaped(pub Child);

impl Reaped {
    /// Spawns `cmd`.
    pub fn spawn(cmd: &mut Command) -> anyhow::Result<Reaped> {
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {:?}", cmd.get_program()))?;
        Ok(Reaped(child))
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// Arrival times of stdout bytes: a reader thread (`relaunch_linux_guest::timed_reads`)
/// timestamps every `read` and sends `(instant, count of SERIAL_BYTE in that read)`.
pub fn stdout_arrivals(child: &mut Child) -> anyhow::Result<mpsc::Receiver<(Instant, usize)>> {
    let out = child.stdout.take().context("child has no piped stdout")?;
    Ok(relaunch_linux_guest::timed_reads(out, |bytes| {
        bytes.iter().filter(|&&b| b == guest::SERIAL_BYTE).count()
    }))
}

/// Spawn → first guest serial byte on stdout, `runs` times; the child is killed right after
/// its first byte. `make` builds a fresh command each run (stdout is piped here).
pub fn cold_starts(
    runs: usize,
    limit: Duration,
    mut make: impl FnMut() -> Command,
) -> anyhow::Result<Vec<Duration>> {
    let mut samples = Vec::with_capacity(runs);
    for i in 0..runs {
        let mut cmd = make();
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let t0 = Instant::now();
        let mut child = Reaped::spawn(&mut cmd)?;
        let rx = stdout_arrivals(&mut child.0)?;
        let deadline = t0 + limit;
        let first = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok((t, k)) if k > 0 => break Some(t),
                Ok(_) => continue,
                Err(_) => break None,
            }
        };
        drop(child);
        match first {
            Some(t) => samples.push(t.duration_since(t0)),
            None => bail!("cold start run {i}: no serial byte within {limit:?}"),
        }
    }
    Ok(samples)
}

/// Per-cycle time from a stream of serial-byte arrivals: the run is cut into `window`
/// slices; each slice with at least one byte gives `window / bytes`. Windows (not gaps
/// between reads) make the figure immune to a reader that gets several bytes in one read.
pub fn cycle_times(
    rx: &mpsc::Receiver<(Instant, usize)>,
    warmup: Duration,
    measure: Duration,
    window: Duration,
) -> anyhow::Result<(Vec<Duration>, usize)> {
    // Wait for the first byte (the guest is up), then skip the warm-up.
    let first = loop {
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok((t, k)) if k > 0 => break t,
            Ok(_) => continue,
            Err(_) => bail!("no serial byte within 10 s"),
        }
    };
    let start = first + warmup;
    let end = start + measure;
    let nwin = (measure.as_nanos() / window.as_nanos().max(1)) as usize;
    let mut counts = vec![0usize; nwin];
    let mut total = 0usize;
    loop {
        let now = Instant::now();
        if now >= end + Duration::from_millis(50) {
            break;
        }
        match rx.recv_timeout(end + Duration::from_millis(50) - now) {
            Ok((t, k)) => {
                if t < start || t >= end {
                    continue;
                }
                let idx = (t.duration_since(start).as_nanos() / window.as_nanos()) as usize;
                if let Some(c) = counts.get_mut(idx) {
                    *c += k;
                    total += k;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => break,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let per = counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| window / c as u32)
        .collect();
    Ok((per, total))
}

/// Writes `bytes` to `dir/name` and returns the path.
pub fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> anyhow::Result<PathBuf> {
    let p = dir.join(name);
    std::fs::write(&p, bytes).with_context(|| format!("writing {}", p.display()))?;
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|&x| Duration::from_micros(x)).collect()
    }

    #[test]
    fn nearest_rank_percentiles() {
        let s = us(&(1..=100).collect::<Vec<_>>());
        assert_eq!(percentile(&s, 50), Some(Duration::from_micros(50)));
        assert_eq!(percentile(&s, 99), Some(Duration::from_micros(99)));
        assert_eq!(percentile(&s, 100), Some(Duration::from_micros(100)));
        assert_eq!(percentile(&s, 0), Some(Duration::from_micros(1)));
        let s = us(&[5, 1, 3]);
        assert_eq!(percentile(&s, 50), Some(Duration::from_micros(3)));
        assert_eq!(percentile(&s, 99), Some(Duration::from_micros(5)));
        assert_eq!(percentile(&[], 50), None);
    }

    #[test]
    fn ratio_text() {
        let ms = Duration::from_millis;
        assert_eq!(ratio(ms(3), ms(2)), "1.50x");
        assert_eq!(ratio(ms(1), ms(3)), "0.33x");
        assert_eq!(ratio(ms(3), Duration::ZERO), "n/a");
    }

    #[test]
    fn cycle_times_from_windows() {
        let (tx, rx) = mpsc::channel();
        let t0 = Instant::now();
        // The first byte only says the guest is up; it is not counted.
        tx.send((t0, 1)).unwrap();
        // 10 ms windows from the first byte: 4 bytes in window 0, 2 in window 1.
        let w = Duration::from_millis(10);
        tx.send((t0 + Duration::from_millis(1), 2)).unwrap();
        tx.send((t0 + Duration::from_millis(9), 2)).unwrap();
        tx.send((t0 + Duration::from_millis(15), 2)).unwrap();
        // outside the measured span: ignored
        tx.send((t0 + Duration::from_millis(25), 7)).unwrap();
        drop(tx);
        let (per, total) = cycle_times(&rx, Duration::ZERO, Duration::from_millis(20), w).unwrap();
        assert_eq!(total, 6);
        assert_eq!(per, vec![w / 4, w / 2]);
    }
}
