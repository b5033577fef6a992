//! `cargo xtask bench linux [--runs N] [--probe-secs S] [--run-secs S] [--relaunch-bin PATH]`:
//! a real Linux guest, relaunch against QEMU (docs/linux-guests.md, "Benchmark").
//!
//! The guest: Debian's cloud kernel (`scripts/linux-guest.sh` → `.oracles/linux/vmlinuz`)
//! with the initramfs of `tests/linux` (crate `relaunch-linux-guest`), its command line
//! [`APPEND`] ending in `relaunch_init=reboot`: on every boot the init prints its marker and
//! reboots. Each run boots twice and is stopped at the second boot's marker:
//! - **relaunch**: `relaunch pack --kernel --initrd --append` once, then per run
//!   `relaunch run linux.igvm --max-reboots 1` (the reboot is a relaunch on a new VM; a third
//!   boot would end the run with exit 4);
//! - **QEMU**: `qemu-system-x86_64 -accel kvm` with `-kernel/-initrd/-append`, the same
//!   kernel, initramfs, command line and RAM, without `-no-reboot` (QEMU resets the VM in
//!   place and boots the kernel again).
//!
//! Phases, from each child's console lines as they arrive (`relaunch_linux_guest::phases`):
//! **boot to init** = spawn → the first init marker; **reboot to init** = the init's
//! "rebooting" line → the next marker. Runs alternate QEMU and relaunch; the table gives the
//! medians of `--runs` (default 5) and relaunch/QEMU.
//!
//! First a probe, bounded by `--probe-secs` (default 25): one QEMU `-accel kvm` boot must
//! reach the init in that time. Where it does not (no kernel, no QEMU, no usable /dev/kvm,
//! no gcc, or a KVM that cannot run Linux: nested PVM emulates guest kernel code one
//! instruction at a time, `../shared/DESIGN.md` "This host"), the bench prints
//! `SKIPPED: <what was seen>` and exits 0 before building anything.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};
use relaunch_linux_guest::{self as kit, Line, Watched, BANNER, MARKER};

use crate::bench::{self, ms, ratio, Summary};

const USAGE: &str = "usage: cargo xtask bench linux [--runs N (1..=100, default 5)] \
                     [--probe-secs S (1..=3600, default 25)] [--run-secs S (1..=3600, \
                     default 120)] [--relaunch-bin PATH]";

/// The guest's command line: serial console, panic reboots at once, the init reboots.
pub const APPEND: &str = "earlyprintk=ttyS0 console=ttyS0 panic=-1 relaunch_init=reboot";
/// Guest RAM for both VMMs: `relaunch pack`'s and `run`'s default `--mem`.
const MEM: u64 = relaunch::cli::run::DEFAULT_MEM;
/// The kernel, relative to the workspace root.
const KERNEL: &str = ".oracles/linux/vmlinuz";

/// `bench linux` options.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Options {
    runs: usize,
    probe: Duration,
    run: Duration,
    relaunch_bin: Option<PathBuf>,
}

fn parse(args: &[String]) -> anyhow::Result<Options> {
    let mut o = Options {
        runs: 5,
        probe: Duration::from_secs(25),
        run: Duration::from_secs(120),
        relaunch_bin: None,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) => (f, Some(v)),
            None => (a.as_str(), None),
        };
        let mut value = || -> anyhow::Result<&str> {
            inline
                .or_else(|| it.next().map(String::as_str))
                .with_context(|| format!("{flag} needs a value; {USAGE}"))
        };
        let mut number = |lo: u64, hi: u64| -> anyhow::Result<u64> {
            let v = value()?;
            v.parse::<u64>()
                .ok()
                .filter(|n| (lo..=hi).contains(n))
                .with_context(|| format!("{flag} {v:?}: needs a number in {lo}..={hi}; {USAGE}"))
        };
        match flag {
            "--runs" => o.runs = usize::try_from(number(1, 100)?)?,
            "--probe-secs" => o.probe = Duration::from_secs(number(1, 3600)?),
            "--run-secs" => o.run = Duration::from_secs(number(1, 3600)?),
            "--relaunch-bin" => o.relaunch_bin = Some(PathBuf::from(value()?)),
            _ => bail!("unknown option {a:?}; {USAGE}"),
        }
    }
    Ok(o)
}

/// Entry point.
pub fn main(args: &[String]) -> anyhow::Result<()> {
    let o = parse(args)?;
    println!("host: {}", bench::host_description());
    match run(&o)? {
        Ok(()) => Ok(()),
        Err(reason) => {
            println!("SKIPPED: {reason}");
            Ok(())
        }
    }
}

/// The first non-blank console line from the end, quoted, or "no console output".
fn last_console_line(lines: &[Line]) -> String {
    lines
        .iter()
        .rev()
        .find(|l| !l.text.trim().is_empty())
        .map(|l| format!("last console line {:?}", l.text.trim()))
        .unwrap_or_else(|| "no console output".into())
}

/// Why `who` did not reach the init in `w`, watched for at most `limit`: how far the kernel
/// got, how the VMM ended, the console's and stderr's last lines.
fn unreached(who: &str, w: &Watched, limit: Duration) -> String {
    let seen = match w.first(BANNER) {
        Some(t) => format!(
            "the kernel banner after {:.1} s but no init marker",
            t.as_secs_f64()
        ),
        None => format!("no kernel banner ({:?})", BANNER.trim()),
    };
    let n = w.lines.len();
    format!(
        "{who} did not reach init within {} s: {seen}; {}; {n} console line{}, {}{}",
        limit.as_secs(),
        ending(who, w),
        if n == 1 { "" } else { "s" },
        last_console_line(&w.lines),
        stderr_note(w),
    )
}

/// How the watched VMM ended.
fn ending(who: &str, w: &Watched) -> String {
    match w.status {
        Some(s) => format!("{who} exited ({s}) after {:.1} s", w.elapsed.as_secs_f64()),
        None => format!("{who} still running, stopped at the limit"),
    }
}

/// `; stderr: "<its last line>"`, or nothing.
fn stderr_note(w: &Watched) -> String {
    match w.last_stderr_line() {
        "" => String::new(),
        e => format!("; stderr: {:?}", e.trim()),
    }
}

/// On this kind of host, why Linux crawls (a fact of the host, appended to a skip reason).
fn host_note() -> &'static str {
    if Path::new("/sys/module/kvm_pvm").exists() {
        " (KVM here is kvm_pvm, nested: guest kernel code is emulated one instruction at a \
         time; docs/linux-guests.md)"
    } else {
        ""
    }
}

/// QEMU with `accel` (`kvm`; `tcg` in the test of the timing path).
fn qemu_command(accel: &str, kernel: &Path, initrd: &Path) -> Command {
    let mut c = Command::new(bench::qemu::QEMU);
    c.args(["-machine", "pc", "-accel", accel, "-m"])
        .arg(format!("{}M", MEM >> 20))
        .args([
            "-display",
            "none",
            "-no-user-config",
            "-nodefaults",
            "-serial",
            "stdio",
            "-kernel",
        ])
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", APPEND]);
    c
}

fn relaunch_command(bin: &Path, bundle: &Path) -> Command {
    let mut c = Command::new(bin);
    c.arg("run").arg(bundle).args(["--max-reboots", "1"]);
    c
}

fn text(c: &Command) -> String {
    std::iter::once(c.get_program())
        .chain(c.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// What stands in the way of the bench on this host, before anything is built.
fn prerequisites(root: &Path) -> Result<(), String> {
    if !root.join(KERNEL).is_file() {
        return Err(format!(
            "no kernel at {KERNEL} (bash scripts/linux-guest.sh fetches Debian's cloud kernel)"
        ));
    }
    let qemu = Command::new(bench::qemu::QEMU).arg("--version").output();
    if !qemu.is_ok_and(|o| o.status.success()) {
        return Err(format!(
            "no working {} (bash scripts/linux-guest.sh installs qemu-system-x86)",
            bench::qemu::QEMU
        ));
    }
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        return Err(format!("/dev/kvm is not usable here ({e})"));
    }
    Ok(())
}

/// One measured run: both phases, or why not.
fn measure_one(who: &str, cmd: Command, limit: Duration) -> anyhow::Result<(Duration, Duration)> {
    let w = kit::watch(cmd, limit, |l| kit::boots(l) >= 2)
        .with_context(|| format!("starting {who}"))?;
    let p = kit::phases(&w.lines);
    match (p.boot_to_init, p.reboot_to_init) {
        (Some(b), Some(r)) => Ok((b, r)),
        (Some(_), None) => bail!(
            "{who}: the first boot reached init, the reboot did not within {} s; {}; {}{}",
            limit.as_secs(),
            ending(who, &w),
            last_console_line(&w.lines),
            stderr_note(&w)
        ),
        (None, _) => bail!("{}", unreached(who, &w, limit)),
    }
}

/// The bench; `Ok(Err(reason))` is a skip.
fn run(o: &Options) -> anyhow::Result<Result<(), String>> {
    let root = crate::workspace_root();
    if let Err(reason) = prerequisites(&root) {
        return Ok(Err(reason));
    }
    let kernel = root.join(KERNEL);
    let dir = bench::work_dir()?.join("linux");
    let initrd = match kit::build(&dir) {
        Ok(i) => i,
        Err(e @ (kit::BuildError::NoGcc(_) | kit::BuildError::Gcc(_))) => {
            return Ok(Err(format!(
                "{e} (bash scripts/linux-guest.sh installs gcc and libc6-dev)"
            )))
        }
        Err(e) => return Err(e.into()),
    };
    let version = std::fs::read_to_string(root.join(".oracles/linux/VERSION")).unwrap_or_default();
    println!(
        "guest: {KERNEL} ({}), initramfs {} bytes, {} MiB RAM, command line {APPEND:?}",
        version.trim(),
        initrd.bytes.len(),
        MEM >> 20
    );

    // The probe: can this host's KVM run Linux to the init at all?
    let probe = qemu_command("kvm", &kernel, &initrd.path);
    println!("probe ({} s at most): {}", o.probe.as_secs(), text(&probe));
    let w = kit::watch(probe, o.probe, |l| kit::boots(l) >= 1).context("starting QEMU")?;
    match w.first(MARKER) {
        Some(t) => println!("probe: QEMU -accel kvm reached init after {}", secs(t)),
        None => {
            let why = unreached("QEMU -accel kvm", &w, o.probe);
            return Ok(Err(format!("{why}{}", host_note())));
        }
    }

    let (bin, label) = match &o.relaunch_bin {
        Some(p) => (
            std::fs::canonicalize(p).with_context(|| format!("--relaunch-bin {}", p.display()))?,
            "given with --relaunch-bin",
        ),
        None => bench::build_relaunch_for_bench()?,
    };
    println!("relaunch: {} ({label})", bin.display());
    let bundle = dir.join("linux.igvm");
    let pack = Command::new(&bin)
        .args(["pack", "-o"])
        .arg(&bundle)
        .arg("--kernel")
        .arg(&kernel)
        .arg("--initrd")
        .arg(&initrd.path)
        .args(["--append", APPEND])
        .output()
        .context("running relaunch pack")?;
    if !pack.status.success() {
        bail!(
            "relaunch pack failed: {}",
            String::from_utf8_lossy(&pack.stderr).trim()
        );
    }
    println!(
        "QEMU:     {}",
        text(&qemu_command("kvm", &kernel, &initrd.path))
    );
    println!("relaunch: {}", text(&relaunch_command(&bin, &bundle)));

    let mut samples: [[Vec<Duration>; 2]; 2] = Default::default();
    for i in 0..o.runs {
        for (side, who) in ["QEMU", "relaunch"].into_iter().enumerate() {
            let cmd = match side {
                0 => qemu_command("kvm", &kernel, &initrd.path),
                _ => relaunch_command(&bin, &bundle),
            };
            let (boot, reboot) = measure_one(who, cmd, o.run)?;
            println!(
                "run {}: {who:8} boot to init {} ms, reboot to init {} ms",
                i + 1,
                ms(boot),
                ms(reboot)
            );
            samples[0][side].push(boot);
            samples[1][side].push(reboot);
        }
    }
    print!(
        "{}",
        table(&[
            ("boot to init", &samples[0][0], &samples[0][1]),
            ("reboot to init", &samples[1][0], &samples[1][1]),
        ])
    );
    Ok(Ok(()))
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// The result table: per phase the medians (ms) of QEMU and relaunch and relaunch/QEMU.
fn table(rows: &[(&str, &[Duration], &[Duration])]) -> String {
    let mut s = String::from(
        "\n| phase | QEMU -accel kvm p50 (ms) | relaunch p50 (ms) | relaunch/QEMU | runs |\n\
         | --- | --- | --- | --- | --- |\n",
    );
    let show = |s: Option<Summary>| s.map_or_else(|| "no samples".to_string(), |s| ms(s.p50));
    for (name, qemu, ours) in rows {
        let (q, r) = (Summary::of(qemu), Summary::of(ours));
        let r_over_q = match (q, r) {
            (Some(q), Some(r)) => ratio(r.p50, q.p50),
            _ => "n/a".into(),
        };
        s.push_str(&format!(
            "| {name} | {} | {} | {r_over_q} | {} |\n",
            show(q),
            show(r),
            qemu.len().min(ours.len())
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    fn args(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn options() {
        let d = parse(&[]).unwrap();
        assert_eq!(
            (d.runs, d.probe, d.run, d.relaunch_bin),
            (5, Duration::from_secs(25), Duration::from_secs(120), None)
        );
        let o = parse(&args(&[
            "--runs",
            "3",
            "--probe-secs=7",
            "--run-secs",
            "60",
            "--relaunch-bin",
            "/x/relaunch",
        ]))
        .unwrap();
        assert_eq!(o.runs, 3);
        assert_eq!(o.probe, Duration::from_secs(7));
        assert_eq!(o.run, Duration::from_secs(60));
        assert_eq!(o.relaunch_bin, Some(PathBuf::from("/x/relaunch")));
        for bad in [
            &["--runs", "0"][..],
            &["--runs", "101"],
            &["--runs"],
            &["--probe-secs", "0"],
            &["--probe-secs", "x"],
            &["--run-secs=3601"],
            &["--bogus"],
        ] {
            let e = parse(&args(bad)).unwrap_err().to_string();
            assert!(e.contains("usage: cargo xtask bench linux"), "{bad:?}: {e}");
        }
    }

    fn watched(lines: &[(u64, &str)], stderr: &str, code: Option<i32>) -> Watched {
        Watched {
            lines: lines
                .iter()
                .map(|&(at, t)| Line {
                    at: Duration::from_millis(at),
                    text: t.into(),
                })
                .collect(),
            stderr: stderr.into(),
            // wait(2) status: exit code in bits 8..16.
            status: code.map(|c| std::process::ExitStatus::from_raw(c << 8)),
            elapsed: Duration::from_millis(25_000),
            stopped: false,
        }
    }

    #[test]
    fn skip_reasons_name_what_was_seen() {
        let limit = Duration::from_secs(25);
        let w = watched(
            &[(40, "Probing EDD (edd=off to disable)... ok"), (41, "  ")],
            "qemu-system-x86_64: warning: host doesn't support requested feature\n",
            None,
        );
        assert_eq!(
            unreached("QEMU -accel kvm", &w, limit),
            "QEMU -accel kvm did not reach init within 25 s: no kernel banner (\"Linux \
             version\"); QEMU -accel kvm still running, stopped at the limit; 2 console \
             lines, last console line \"Probing EDD (edd=off to disable)... ok\"; stderr: \
             \"qemu-system-x86_64: warning: host doesn't support requested feature\""
        );
        let w = watched(
            &[
                (1500, "[    0.000000] Linux version 6.1.0-57-cloud-amd64"),
                (1900, "[    0.2] Memory: 214136K/261756K available"),
            ],
            "relaunch: guest fatal in launch 1: KVM internal error (exit 3)",
            Some(3),
        );
        let r = unreached("relaunch", &w, limit);
        assert!(
            r.contains("the kernel banner after 1.5 s but no init marker"),
            "{r}"
        );
        assert!(
            r.contains("relaunch exited (exit status: 3) after 25.0 s"),
            "{r}"
        );
        assert!(r.contains("last console line \"[    0.2] Memory:"), "{r}");
        assert!(
            r.ends_with(
                "stderr: \"relaunch: guest fatal in launch 1: KVM internal error (exit 3)\""
            ),
            "{r}"
        );
        let w = watched(&[], "", None);
        assert!(unreached("QEMU", &w, limit).ends_with("0 console lines, no console output"));
        let w = watched(&[(5, "x")], "", None);
        assert!(unreached("QEMU", &w, limit).ends_with("1 console line, last console line \"x\""));
    }

    #[test]
    fn result_table() {
        let ms = Duration::from_millis;
        let t = table(&[
            (
                "boot to init",
                &[ms(900), ms(1000), ms(800)],
                &[ms(450), ms(500), ms(700)],
            ),
            ("reboot to init", &[ms(700)], &[]),
        ]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "");
        assert!(lines[1].starts_with("| phase | QEMU -accel kvm p50 (ms) |"));
        assert_eq!(lines[3], "| boot to init | 900.000 | 500.000 | 0.56x | 3 |");
        assert_eq!(
            lines[4],
            "| reboot to init | 700.000 | no samples | n/a | 0 |"
        );
    }

    fn sh(script: &str) -> Command {
        let mut c = Command::new("sh");
        c.args(["-c", script]);
        c
    }

    #[test]
    fn one_run_read_off_a_console() {
        // Two boots, 50 ms from the reboot line to the second marker; stopped there (the
        // sleep would otherwise hold the run for 30 s).
        let two = format!(
            "echo '{MARKER}'; echo '{}'; sleep 0.05; echo '[ 0.0] {BANNER}6.1'; \
             echo '{MARKER}'; exec sleep 30",
            kit::REBOOTING
        );
        let t = std::time::Instant::now();
        let (boot, reboot) = measure_one("fake", sh(&two), Duration::from_secs(20)).unwrap();
        assert!(t.elapsed() < Duration::from_secs(20));
        assert!(boot < Duration::from_secs(5), "{boot:?}");
        assert!(reboot >= Duration::from_millis(50), "{reboot:?}");
        // The first boot only: the reboot never reached init.
        let one = format!(
            "echo '{MARKER}'; echo '{}'; echo 'reboot: Restarting'",
            kit::REBOOTING
        );
        let e = measure_one("fake", sh(&one), Duration::from_secs(20)).unwrap_err();
        assert!(
            e.to_string().starts_with(
                "fake: the first boot reached init, the reboot did not within 20 s; fake \
                 exited (exit status: 0) after "
            ),
            "{e}"
        );
        assert!(
            e.to_string()
                .ends_with("; last console line \"reboot: Restarting\""),
            "{e}"
        );
        // The kernel died before init: the VMM's exit and its last words.
        let dead = format!("echo '[ 0.0] {BANNER}6.1'; echo 'fatal' >&2; exit 3");
        let e = measure_one("fake", sh(&dead), Duration::from_secs(20))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("fake did not reach init within 20 s: the kernel banner after "),
            "{e}"
        );
        assert!(e.contains("fake exited (exit status: 3)"), "{e}");
        assert!(e.ends_with("stderr: \"fatal\""), "{e}");
    }

    /// The timing path on a real kernel, where KVM cannot run it: QEMU under TCG boots the
    /// bench's guest twice (the init reboots, QEMU resets in place) and both phases are read
    /// off its console.
    #[test]
    fn two_boots_timed_under_qemu_tcg() {
        let root = crate::workspace_root();
        let ci = std::env::var("CI").is_ok_and(|v| v == "true");
        let skip = |why: String| {
            assert!(!ci, "{why}: scripts/linux-guest.sh installs it and CI=true");
            println!("SKIPPED: {why}");
        };
        if let Err(why) = prerequisites(&root).or_else(|e| {
            // Only the kernel and QEMU matter here (TCG needs no /dev/kvm).
            if e.starts_with("/dev/kvm") {
                Ok(())
            } else {
                Err(e)
            }
        }) {
            return skip(why);
        }
        let dir = bench::work_dir().unwrap().join("linux-tcg-test");
        let initrd = match kit::build(&dir) {
            Ok(i) => i,
            Err(e) => return skip(e.to_string()),
        };
        let cmd = qemu_command("tcg", &root.join(KERNEL), &initrd.path);
        let (boot, reboot) = measure_one("QEMU TCG", cmd, Duration::from_secs(180)).unwrap();
        println!(
            "QEMU TCG: boot to init {} ms, reboot to init {} ms",
            ms(boot),
            ms(reboot)
        );
        // Both boots run the whole kernel: neither phase can be near zero.
        assert!(boot > Duration::from_millis(200), "{boot:?}");
        assert!(reboot > Duration::from_millis(200), "{reboot:?}");
    }

    #[test]
    fn commands() {
        let q = text(&qemu_command("kvm", Path::new("/k"), Path::new("/i")));
        assert!(
            q.starts_with("qemu-system-x86_64 -machine pc -accel kvm -m 256M "),
            "{q}"
        );
        assert!(q.contains(" -kernel /k -initrd /i -append "), "{q}");
        assert!(!q.contains("-no-reboot"), "{q}");
        assert!(APPEND.ends_with(kit::REBOOT_PARAM));
        let r = text(&relaunch_command(
            Path::new("/b/relaunch"),
            Path::new("/l.igvm"),
        ));
        assert_eq!(r, "/b/relaunch run /l.igvm --max-reboots 1");
    }
}
