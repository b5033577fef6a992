//! Shared helpers of the KVM integration tests.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use relaunch::audit::{AuditLog, EventSink};
use relaunch::backend::native::NativeBackend;
use relaunch::devices::console::Console;
use relaunch::launch::Launch;
use relaunch::session::{run_session, SessionConfig, SessionReport};
use relaunch::vstate::Host;
use relaunch_core::plan::{LaunchConfig, LaunchPlan, Platform};

/// Opens /dev/kvm, or reports the skip: `None` means "skip this test" (prints
/// `SKIPPED: no /dev/kvm`); under `CI=true` a missing /dev/kvm fails the test instead.
pub fn host(prefer_gmem: bool) -> Option<Arc<Host>> {
    if !std::path::Path::new("/dev/kvm").exists() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but /dev/kvm is missing"
        );
        println!("SKIPPED: no /dev/kvm");
        return None;
    }
    Some(Arc::new(Host::open(prefer_gmem).expect("open /dev/kvm")))
}

/// A session config with captured console and in-memory events (`_mem`: the RAM size is the
/// launch's own).
pub fn config(_mem: u64, max_reboots: Option<u64>, prestage: bool) -> SessionConfig {
    SessionConfig {
        max_reboots,
        prestage,
        events: Some(Arc::new(EventSink::Memory(Default::default()))),
        ..SessionConfig::new(Arc::new(Console::capture(1 << 20)))
    }
}

/// With an audit log at `path`.
pub fn with_audit(mut c: SessionConfig, path: &std::path::Path) -> SessionConfig {
    c.audit = Some(Arc::new(AuditLog::open(path).expect("audit log")));
    c
}

/// What a session can run: a hand-built plan or a launch.
pub trait AsLaunch {
    /// The launch.
    fn launch(&self) -> Arc<Launch>;
}

impl AsLaunch for LaunchPlan {
    fn launch(&self) -> Arc<Launch> {
        Arc::new(Launch::from_plan(self.clone()))
    }
}

impl AsLaunch for Arc<Launch> {
    fn launch(&self) -> Arc<Launch> {
        Arc::clone(self)
    }
}

/// Runs a session of `launch` on the native backend.
pub fn run(host: &Arc<Host>, launch: &impl AsLaunch, cfg: &SessionConfig) -> SessionReport {
    let backend = NativeBackend::new(Arc::clone(host));
    run_session(&backend, launch.launch(), cfg)
}

/// Captured guest output.
pub fn output(cfg: &SessionConfig) -> String {
    String::from_utf8_lossy(&cfg.console.captured()).into_owned()
}

/// Event lines.
pub fn events(cfg: &SessionConfig) -> Vec<String> {
    cfg.events.as_ref().map(|e| e.lines()).unwrap_or_default()
}

/// Open fds of this process.
pub fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Resident set size of this process, KiB.
pub fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Percentile of durations (sorted copy), in microseconds.
pub fn pct_us(v: &[Duration], p: f64) -> u128 {
    let mut s: Vec<_> = v.to_vec();
    s.sort();
    if s.is_empty() {
        return 0;
    }
    let i = ((s.len() - 1) as f64 * p).round() as usize;
    s[i].as_micros()
}

/// A control-socket client (`--control`): one request line, one reply line.
pub struct Client {
    w: UnixStream,
    r: BufReader<UnixStream>,
}

impl Client {
    /// Connects to the socket at `path` (10 s read timeout).
    pub fn connect(path: &std::path::Path) -> Client {
        let w = UnixStream::connect(path).unwrap();
        w.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Client {
            r: BufReader::new(w.try_clone().unwrap()),
            w,
        }
    }

    /// Sends `line`, returns the reply line.
    pub fn ask(&mut self, line: &str) -> String {
        writeln!(self.w, "{line}").unwrap();
        let mut reply = String::new();
        self.r.read_line(&mut reply).unwrap();
        reply
    }

    /// Polls `status` until it contains every one of `want` (10 s at most).
    pub fn wait_status(&mut self, want: &[&str]) -> String {
        let t = Instant::now();
        loop {
            let s = self.ask(r#"{"cmd":"status"}"#);
            if want.iter().all(|w| s.contains(w)) {
                return s;
            }
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "{want:?} never in {s}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// `boot-images/out/NAME.igvm` (built by `cargo xtask build-images`), or the skip: `None`
/// prints `SKIPPED: …`; under `CI=true` a missing image fails the test instead.
pub fn image(name: &str) -> Option<(std::path::PathBuf, Vec<u8>)> {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../boot-images/out")
        .join(format!("{name}.igvm"));
    match std::fs::read(&path) {
        Ok(b) => Some((path, b)),
        Err(_) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true but {} is missing",
                path.display()
            );
            println!(
                "SKIPPED: {} missing (run cargo xtask build-images)",
                path.display()
            );
            None
        }
    }
}

/// The launch config of `vcpus` vCPUs with `mem` bytes of RAM on `platform`, the vCPU
/// signature `sig`, no policy override, no host data, no kernel.
pub fn launch_config(platform: Platform, vcpus: u32, mem: u64, sig: u32) -> LaunchConfig {
    LaunchConfig {
        platform,
        vcpus,
        mem_bytes: mem,
        vcpu_sig: sig,
        guest_features: 0,
        policy: None,
        host_data: [0; 32],
        kernel_hashes: None,
    }
}

/// The backend of `platform`: the emulated one (`emulated`, this host's vCPU signature in
/// the model) or native.
pub fn backend_for(
    platform: Platform,
    emulated: bool,
    host: &Arc<Host>,
) -> Box<dyn relaunch::backend::Backend> {
    if emulated {
        Box::new(
            relaunch::backend::emulated::EmulatedBackend::new(
                platform,
                &host.kvm,
                relaunch::model::ModelConfig {
                    vcpu_sig: host.vcpu_signature(),
                    ..relaunch::model::ModelConfig::default()
                },
            )
            .expect("emulated backend"),
        )
    } else {
        Box::new(NativeBackend::new(Arc::clone(host)))
    }
}

/// The records of the audit log at `path`, one JSON value per line, and the file removed
/// (an absent log has none).
pub fn take_audit_records(path: &std::path::Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let _ = std::fs::remove_file(path);
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// The hex SHA-256 of `b` (as audit records write bundle hashes).
pub fn sha(b: &[u8]) -> String {
    use sha2::Digest;
    relaunch::json::hex(&sha2::Sha256::digest(b))
}

/// The records of `event` among `records`.
pub fn records_of<'a>(records: &'a [serde_json::Value], event: &str) -> Vec<&'a serde_json::Value> {
    records.iter().filter(|v| v["event"] == event).collect()
}

/// Drives a session started with `control` (paused after its launch, `Control::new(true)`):
/// waits, at most 120 s, until it pauses or stops; lets a paused one run for `run_for`;
/// then powers it off. The thread returns the status it saw and the power-off answer.
pub fn pause_then_power_off(
    control: Arc<relaunch::control::Control>,
    run_for: Duration,
) -> std::thread::JoinHandle<(serde_json::Value, String)> {
    std::thread::spawn(move || {
        let t0 = Instant::now();
        let status = loop {
            let s: serde_json::Value =
                serde_json::from_str(&control.handle(r#"{"cmd":"status"}"#)).unwrap();
            if s["state"] == "paused" || s["state"] == "stopped" {
                break s;
            }
            assert!(t0.elapsed() < Duration::from_secs(120), "never paused: {s}");
            std::thread::sleep(Duration::from_millis(20));
        };
        if status["state"] == "paused" {
            assert!(control.handle(r#"{"cmd":"continue"}"#).contains("true"));
            std::thread::sleep(run_for);
        }
        let off = control.handle(r#"{"cmd":"power-off"}"#);
        (status, off)
    })
}
