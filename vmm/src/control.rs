//! The control socket (`relaunch run --control PATH`): JSON lines over a Unix socket for
//! orchestrators and guest owners.
//!
//! A request is one JSON object per line naming its command in `"cmd"`; every request gets
//! one reply line, an object with `"ok": true|false` (and `"error"` when false). Commands:
//!
//! - `status`, `measurement`: generation, state, platform, bundle, the predicted
//!   measurement, `launch_measurement` (what the platform reported for the running launch,
//!   as in its audit record: the model's measurement on an emulated platform, the
//!   `LAUNCH_MEASURE` MAC on real SEV / SEV-ES, `null` otherwise), and for SEV / SEV-ES the
//!   last `LAUNCH_MEASURE` result as `launch_measure_mac` (the 32-byte MAC, hex) and `mnonce`
//!   (16 bytes, hex) — what a guest owner verifies with its TIK;
//! - `reset`, `power-off`: end the running launch (or the one waiting, unrun);
//! - `continue`: ends the owner's turn, or the wait before the first launch runs;
//! - `inject-secret` `{"cmd":"inject-secret","header":"<hex>","packet":"<hex>","gpa":N}`:
//!   one `KVM_SEV_LAUNCH_SECRET` (the layout: `relaunch_core::owner`), accepted only at the
//!   owner's turn; the reply is the firmware's answer (`"ok":true`, or the error with the
//!   firmware status). `gpa` is a number or a `"0x…"` string.
//! - `switch-bundle` `{"cmd":"switch-bundle","path":"/path/to/bundle"}`: the host's
//!   hand-over (`docs/fuki.md`): the bundle is read (at most 1 GiB), planned for the
//!   session's platform and launch config, kept in the bundle store (`--bundle-store`) and
//!   audited (`swap` record), then runs from the next relaunch on and becomes the host's
//!   bundle (what a guest's one-shot hand-over returns to). `"one_shot":true` runs it for the
//!   next relaunch only, as `run --next`. The reply names its SHA-256 and predicted
//!   measurement; an invalid bundle is an error reply and changes nothing. It is read and
//!   planned on the client's thread: a large bundle holds only that client.
//!
//! **The owner's turn** (SEV and SEV-ES; [`Control`] is the backend's
//! [`OwnerGate`]): with `--wait-for-secret` every SEV / SEV-ES launch stops after
//! `LAUNCH_MEASURE`, in state `awaiting-secret`, before `LAUNCH_FINISH` (the firmware's
//! LSECRET state: only `LAUNCH_SECRET` and `LAUNCH_FINISH` remain). The owner reads
//! `launch_measure_mac` and `mnonce`, checks them against the launch it expects, injects
//! any number of secrets and sends `continue`; `power-off` / `reset` instead end the launch
//! before it runs. Every launch waits, a relaunch too: its MEASURE is new (fresh MNONCE),
//! so a secret wrapped for the last launch no longer verifies — the guest needs a new one.
//! On other platforms `--wait-for-secret` only holds the first launch before it runs, until
//! `continue`. Without `--wait-for-secret` the turn does not wait (the measurement is still
//! shown) and `inject-secret` is refused.
//!
//! Threat model: the socket is the owner's (mode 0600, created by us, never over an existing
//! file, removed at exit), but a client may still be buggy: a line longer than
//! [`MAX_LINE`] or not JSON gets an error reply and the connection stays usable; at most
//! [`MAX_CLIENTS`] connections are served at once (more are told so and closed); a client
//! that does not read its replies only blocks its own thread (writes time out after
//! [`WRITE_TIMEOUT`]). vCPU threads never wait on a client: the session only publishes state
//! under a short lock, and a `reset` / `power-off` is the same `RunControl::post` a device
//! makes. A secret is injected on the thread that builds the launch (the one waiting at the
//! turn), never on a client's; a client that never sends `continue` holds only the launch
//! that waits for it, by design. `inject-secret` arguments are checked (hex, a 52-byte
//! header, a packet of 16 to 16384 bytes in 16-byte units) before anything reaches the
//! kernel, and a client waits at most [`INJECT_TIMEOUT`] for the answer.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use relaunch_core::owner::{HEADER_LEN, MAX_PACKET, SECRET_ALIGN};
use serde::Serialize;

use crate::backend::{LaunchSecret, OwnerGate};
use crate::devices::ResetSource;
use crate::handover::Handover;
use crate::launch::Launch;
use crate::vcpu::{Outcome, RunControl};

/// Longest request line, bytes.
pub const MAX_LINE: usize = 64 * 1024;
/// Connections served at once.
pub const MAX_CLIENTS: usize = 8;
/// How long a reply may wait for a client that does not read.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long an `inject-secret` waits for the launch to take and answer it.
pub const INJECT_TIMEOUT: Duration = Duration::from_secs(30);

/// What the session publishes, and what clients ask of it.
#[derive(Debug, Default)]
struct State {
    generation: u64,
    state: &'static str,
    platform: &'static str,
    emulated: bool,
    launch: Option<Arc<Launch>>,
    run: Option<Arc<RunControl>>,
    /// `--wait-for-secret`: every SEV / SEV-ES launch waits at the owner's turn.
    wait: bool,
    /// `continue` was asked (or no wait was configured).
    continued: bool,
    /// A `power-off` or `reset` asked while paused before the first run or at the owner's
    /// turn: it ends that launch before it runs.
    pending: Option<Outcome>,
    /// The last `LAUNCH_MEASURE` result (MAC ‖ MNONCE).
    measure_blob: Option<[u8; 48]>,
    /// What the platform reported for the running launch ([`crate::backend::BuiltVm`]).
    reported: Option<String>,
    /// The owner's turn under way: the launch id, and whether `continue` ended it.
    turn: Option<(u64, bool)>,
    /// The secret waiting for the turn's thread (request number, secret): one at a time.
    request: Option<(u64, LaunchSecret)>,
    /// Answers the turn's thread gave, by request number, until their clients take them.
    answers: Vec<(u64, Result<(), String>)>,
    /// The last request number handed out.
    requests: u64,
}

impl State {
    /// The owner's turn is under way and not ended.
    fn at_turn(&self) -> bool {
        matches!(self.turn, Some((_, false))) && self.pending.is_none()
    }
}

/// The state shared by the session and the control socket.
#[derive(Debug, Default)]
pub struct Control {
    state: Mutex<State>,
    cv: Condvar,
    /// Where `switch-bundle` hands bundles over ([`Control::set_handover`]).
    handover: std::sync::OnceLock<Arc<Handover>>,
}

impl Control {
    /// A control whose first launch waits for `continue` when `wait` is set.
    pub fn new(wait: bool) -> Control {
        Control {
            state: Mutex::new(State {
                state: "starting",
                wait,
                continued: !wait,
                ..State::default()
            }),
            cv: Condvar::new(),
            handover: std::sync::OnceLock::new(),
        }
    }

    /// `switch-bundle` hands bundles over through `handover` (set once; later calls are
    /// ignored).
    pub fn set_handover(&self, handover: Arc<Handover>) {
        let _ = self.handover.set(handover);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The session starts launch `generation` of `launch` on `platform`, stopped by `run`;
    /// the platform reported `reported` about its measurement.
    pub fn launching(
        &self,
        generation: u64,
        launch: &Arc<Launch>,
        (platform, emulated): (&'static str, bool),
        reported: Option<&str>,
        run: &Arc<RunControl>,
    ) {
        let mut s = self.lock();
        s.reported = reported.map(str::to_owned);
        s.generation = generation;
        s.launch = Some(Arc::clone(launch));
        s.platform = platform;
        s.emulated = emulated;
        s.run = Some(Arc::clone(run));
        s.state = if s.continued { "running" } else { "paused" };
    }

    /// Before the first `KVM_RUN`: waits for `continue` if the session was started with a
    /// wait. Returns an outcome asked for meanwhile (`power-off`, `reset`), which ends the
    /// launch before it runs.
    pub fn wait_continue(&self) -> Option<Outcome> {
        let mut s = self.lock();
        while !s.continued && s.pending.is_none() {
            s = self.cv.wait(s).unwrap_or_else(PoisonError::into_inner);
        }
        s.state = "running";
        s.pending.take()
    }

    /// The launch ended; the session decides what comes next.
    pub fn ended(&self) {
        let mut s = self.lock();
        s.run = None;
        s.state = "relaunching";
    }

    /// The session is over.
    pub fn stopped(&self) {
        let mut s = self.lock();
        s.run = None;
        s.state = "stopped";
    }

    /// Ends the running launch with `outcome` (or the paused one before it runs, or the one
    /// at the owner's turn).
    fn post(&self, outcome: Outcome) -> Result<(), String> {
        let mut s = self.lock();
        if !s.continued || s.at_turn() {
            s.pending = Some(outcome);
            self.cv.notify_all();
            return Ok(());
        }
        match &s.run {
            Some(run) => {
                run.post(outcome);
                Ok(())
            }
            None => Err(format!("no launch is running (state {})", s.state)),
        }
    }

    /// Answers one request line.
    pub fn handle(&self, line: &str) -> String {
        let reply = match serde_json::from_str::<serde_json::Value>(line) {
            Err(e) => Err(format!("not a JSON object: {e}")),
            Ok(v) => match v.get("cmd").and_then(serde_json::Value::as_str) {
                None => Err("a request names its command in \"cmd\"".into()),
                Some(cmd) => self.command(cmd, &v),
            },
        };
        match reply {
            Ok(v) => v,
            Err(e) => error_line(&e),
        }
    }

    fn command(&self, cmd: &str, v: &serde_json::Value) -> Result<String, String> {
        match cmd {
            "status" | "measurement" => {
                let s = self.lock();
                let l = s.launch.as_deref();
                let blob = s.measure_blob;
                let reply = Status {
                    ok: true,
                    generation: s.generation,
                    state: s.state,
                    platform: s.platform,
                    emulated: s.emulated,
                    bundle_sha256: l.map(Launch::bundle_sha256),
                    predicted_measurement: l.and_then(Launch::predicted_measurement),
                    launch_measurement: s.reported.as_deref(),
                    // What SEV / SEV-ES LAUNCH_MEASURE returned (the other platforms report
                    // no such value to the host).
                    launch_measure_mac: blob.map(|b| crate::json::hex(&b[..32])),
                    mnonce: blob.map(|b| crate::json::hex(&b[32..])),
                    awaiting_launch: s.turn.filter(|t| !t.1).map(|t| t.0),
                    next_bundle_sha256: self.handover.get().and_then(|h| h.slot().pending_sha256()),
                };
                Ok(crate::json::to_line(&reply))
            }
            "reset" => self
                .post(Outcome::Reset(ResetSource::Control))
                .map(|()| ok_line()),
            "power-off" => self
                .post(Outcome::PowerOff("control-socket"))
                .map(|()| ok_line()),
            "continue" => {
                let mut s = self.lock();
                if !s.at_turn() && s.continued {
                    return Err("the launch is not waiting for continue".into());
                }
                // One `continue` ends the owner's turn and the wait before the first run.
                if let Some((_, done)) = &mut s.turn {
                    *done = true;
                }
                // From this reply on, `status` never shows the finished turn as waiting (a
                // client polling for the next launch's turn must not see this one).
                if s.state == "awaiting-secret" {
                    s.state = "launching";
                }
                s.continued = true;
                self.cv.notify_all();
                Ok(ok_line())
            }
            "inject-secret" => self.inject(parse_secret(v)?),
            "switch-bundle" => self.switch_bundle(v),
            other => Err(format!(
                "unknown command {other:?}: status, measurement, reset, power-off, continue, \
                 inject-secret, switch-bundle"
            )),
        }
    }
}

impl Control {
    /// `switch-bundle` (module doc).
    fn switch_bundle(&self, v: &serde_json::Value) -> Result<String, String> {
        let path = v
            .get("path")
            .and_then(serde_json::Value::as_str)
            .filter(|p| !p.is_empty())
            .ok_or("switch-bundle needs \"path\": the bundle file to run next")?;
        let one_shot = match v.get("one_shot") {
            None => false,
            Some(serde_json::Value::Bool(b)) => *b,
            Some(_) => return Err("\"one_shot\" is true or false".into()),
        };
        let h = self
            .handover
            .get()
            .ok_or("this session takes no bundle hand-overs")?;
        let ready = h.host_switch(Path::new(path), one_shot)?;
        #[derive(Serialize)]
        struct Switched<'a> {
            ok: bool,
            bundle_sha256: &'a str,
            predicted_measurement: Option<&'a str>,
            one_shot: bool,
            stored: Option<String>,
            plan_cached: bool,
        }
        Ok(crate::json::to_line(&Switched {
            ok: true,
            bundle_sha256: ready.launch.bundle_sha256(),
            predicted_measurement: ready.launch.predicted_measurement(),
            one_shot,
            stored: ready.stored.as_ref().map(|p| p.display().to_string()),
            plan_cached: ready.cached,
        }))
    }

    /// Hands `secret` to the thread at the owner's turn and waits for its answer.
    fn inject(&self, secret: LaunchSecret) -> Result<String, String> {
        let deadline = std::time::Instant::now() + INJECT_TIMEOUT;
        let mut s = self.lock();
        let not_at_turn = |s: &State| {
            format!(
                "inject-secret is taken only at a SEV / SEV-ES launch's owner's turn \
                 (run --wait-for-secret; state {})",
                s.state
            )
        };
        if !s.at_turn() {
            return Err(not_at_turn(&s));
        }
        // One secret at a time: wait for the slot.
        while s.request.is_some() {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err("another secret is being injected; try again".into());
            }
            s = self
                .cv
                .wait_timeout(s, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            if !s.at_turn() {
                return Err(not_at_turn(&s));
            }
        }
        s.requests += 1;
        let id = s.requests;
        s.request = Some((id, secret));
        self.cv.notify_all();
        loop {
            if let Some(i) = s.answers.iter().position(|(a, _)| *a == id) {
                let (_, r) = s.answers.swap_remove(i);
                return r.map(|()| ok_line());
            }
            let ours_waiting = matches!(&s.request, Some((r, _)) if *r == id);
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if ours_waiting && (!s.at_turn() || left.is_zero()) {
                // Never taken: withdraw it.
                s.request = None;
                self.cv.notify_all();
                return Err(if left.is_zero() {
                    "the launch did not take the secret in time".into()
                } else {
                    "the owner's turn ended before the secret was injected".into()
                });
            }
            if left.is_zero() {
                // Taken but unanswered: the build thread is stuck in the kernel.
                return Err("no answer from the launch in time (the secret may still land)".into());
            }
            s = self
                .cv
                .wait_timeout(s, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// The owner's turn (module doc), on the thread building the launch.
impl OwnerGate for Control {
    fn measured(
        &self,
        launch_id: u64,
        blob: &[u8; 48],
        inject: &mut dyn FnMut(&LaunchSecret) -> Result<(), String>,
    ) {
        let mut s = self.lock();
        s.measure_blob = Some(*blob);
        if !s.wait {
            return;
        }
        s.turn = Some((launch_id, false));
        s.answers.clear();
        let before = s.state;
        s.state = "awaiting-secret";
        self.cv.notify_all();
        loop {
            // Secrets asked before `continue` go in first, in order.
            if let Some((id, secret)) = s.request.take() {
                drop(s);
                let r = inject(&secret);
                s = self.lock();
                s.answers.push((id, r));
                self.cv.notify_all();
                continue;
            }
            if !s.at_turn() {
                break;
            }
            s = self.cv.wait(s).unwrap_or_else(PoisonError::into_inner);
        }
        s.turn = None;
        // The session may have moved on meanwhile (a prestaged build's turn): only undo our
        // own state.
        if matches!(s.state, "awaiting-secret" | "launching") {
            s.state = before;
        }
        self.cv.notify_all();
    }
}

/// Parses and checks an `inject-secret` request (module doc).
fn parse_secret(v: &serde_json::Value) -> Result<LaunchSecret, String> {
    let field = |k: &str| {
        v.get(k)
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| format!("inject-secret needs \"{k}\" as a hex string"))
    };
    let header = unhex(field("header")?).ok_or("\"header\" is not hex")?;
    if header.len() != HEADER_LEN {
        return Err(format!(
            "\"header\" is {} bytes; a LAUNCH_SECRET packet header is {HEADER_LEN}",
            header.len()
        ));
    }
    let packet = unhex(field("packet")?).ok_or("\"packet\" is not hex")?;
    if packet.is_empty() || packet.len() > MAX_PACKET || !packet.len().is_multiple_of(SECRET_ALIGN)
    {
        return Err(format!(
            "\"packet\" is {} bytes; the firmware takes {SECRET_ALIGN} to {MAX_PACKET} bytes \
             in {SECRET_ALIGN}-byte units",
            packet.len()
        ));
    }
    let gpa = match v.get("gpa") {
        Some(serde_json::Value::Number(n)) => n.as_u64(),
        Some(serde_json::Value::String(h)) => h
            .strip_prefix("0x")
            .and_then(|h| u64::from_str_radix(h, 16).ok()),
        _ => None,
    }
    .ok_or("inject-secret needs \"gpa\": a guest-physical address (a number or \"0x…\")")?;
    Ok(LaunchSecret {
        header,
        packet,
        gpa,
    })
}

/// Bytes of an even-length hex string (either case), or `None`.
fn unhex(s: &str) -> Option<Vec<u8>> {
    // `from_str_radix` alone would take a sign ("+f"): digits only.
    if !s.len().is_multiple_of(2) || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[derive(Serialize)]
struct Status<'a> {
    ok: bool,
    generation: u64,
    state: &'static str,
    platform: &'static str,
    emulated: bool,
    bundle_sha256: Option<&'a str>,
    predicted_measurement: Option<&'a str>,
    launch_measurement: Option<&'a str>,
    launch_measure_mac: Option<String>,
    mnonce: Option<String>,
    /// The launch id waiting at the owner's turn.
    #[serde(skip_serializing_if = "Option::is_none")]
    awaiting_launch: Option<u64>,
    /// The bundle handed over for the next relaunch, not taken yet.
    next_bundle_sha256: Option<String>,
}

fn ok_line() -> String {
    "{\"ok\":true}".into()
}

fn error_line(e: &str) -> String {
    #[derive(Serialize)]
    struct Error<'a> {
        ok: bool,
        error: &'a str,
    }
    crate::json::to_line(&Error {
        ok: false,
        error: e,
    })
}

/// The listening socket and its accept thread; removes the socket at drop.
#[derive(Debug)]
pub struct ControlServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ControlServer {
    /// Creates the socket at `path` (mode 0600, never over an existing file) and serves
    /// `control` on it from a thread.
    ///
    /// # Errors
    /// The socket cannot be created.
    pub fn start(path: &Path, control: Arc<Control>) -> std::io::Result<ControlServer> {
        let listener = crate::sys::sock::bind_private(path)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("control".into())
            .spawn(move || accept_loop(&listener, &control, &stop2))?;
        Ok(ControlServer {
            path: path.to_path_buf(),
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop with one connection of our own.
        let _ = UnixStream::connect(&self.path);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn accept_loop(listener: &UnixListener, control: &Arc<Control>, stop: &AtomicBool) {
    let clients = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(mut conn) = conn else { continue };
        let _ = conn.set_write_timeout(Some(WRITE_TIMEOUT));
        if clients.fetch_add(1, Ordering::SeqCst) >= MAX_CLIENTS {
            clients.fetch_sub(1, Ordering::SeqCst);
            let _ = writeln!(
                conn,
                "{}",
                error_line(&format!(
                    "too many control connections (at most {MAX_CLIENTS})"
                ))
            );
            continue;
        }
        let (control, clients2) = (Arc::clone(control), Arc::clone(&clients));
        let spawned = std::thread::Builder::new()
            .name("control-client".into())
            .spawn(move || {
                serve(conn, &control);
                clients2.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            clients.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Serves one client until it hangs up, a reply cannot be written, or its line is endless.
fn serve(conn: UnixStream, control: &Control) {
    let Ok(mut out) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(conn);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        // Bounded: a line longer than MAX_LINE is answered with an error and skipped.
        let n = match (&mut reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut buf)
        {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let reply = if n > MAX_LINE && buf.last() != Some(&b'\n') {
            // Skip the rest of the overlong line.
            let mut rest = Vec::new();
            loop {
                rest.clear();
                match (&mut reader)
                    .take(MAX_LINE as u64)
                    .read_until(b'\n', &mut rest)
                {
                    Ok(0) | Err(_) => return,
                    Ok(_) if rest.last() == Some(&b'\n') => break,
                    Ok(_) => {}
                }
            }
            error_line(&format!("request line longer than {MAX_LINE} bytes"))
        } else {
            match std::str::from_utf8(&buf) {
                Ok(line) if line.trim().is_empty() => continue,
                Ok(line) => control.handle(line.trim()),
                Err(_) => error_line("request line is not UTF-8"),
            }
        };
        if writeln!(out, "{reply}").is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_get_one_reply_each_and_bad_ones_an_error() {
        let c = Control::new(false);
        let status = c.handle(r#"{"cmd":"status"}"#);
        assert!(
            status.starts_with("{\"ok\":true,\"generation\":0"),
            "{status}"
        );
        for bad in [
            "not json",
            "[1,2]",
            r#"{"command":"status"}"#,
            r#"{"cmd":7}"#,
            r#"{"cmd":"frobnicate"}"#,
            r#"{"cmd":"inject-secret","header":"00"}"#,
            r#"{"cmd":"continue"}"#,
        ] {
            let r = c.handle(bad);
            assert!(r.starts_with("{\"ok\":false,\"error\":"), "{bad}: {r}");
        }
        // Nothing running: reset and power-off say so.
        assert!(c
            .handle(r#"{"cmd":"reset"}"#)
            .contains("no launch is running"));
    }

    #[test]
    fn reset_and_power_off_reach_the_running_launch() {
        let c = Control::new(false);
        let run = Arc::new(RunControl::new());
        let l = Arc::new(Launch::from_plan(crate::testing::plan(
            crate::testing::HELLO,
            &[],
            1,
            1 << 20,
            0,
        )));
        c.launching(3, &l, ("native", false), None, &run);
        let s = c.handle(r#"{"cmd":"measurement"}"#);
        assert!(
            s.contains("\"generation\":3") && s.contains("\"state\":\"running\""),
            "{s}"
        );
        assert!(s.contains(l.bundle_sha256()), "{s}");
        assert_eq!(c.handle(r#"{"cmd":"reset"}"#), "{\"ok\":true}");
        assert!(run.stopping());
        assert_eq!(run.wait().0, Outcome::Reset(ResetSource::Control));
    }

    #[test]
    fn a_waiting_launch_runs_after_continue_or_ends_on_power_off() {
        let c = Arc::new(Control::new(true));
        let c2 = Arc::clone(&c);
        let t = std::thread::spawn(move || c2.wait_continue());
        std::thread::sleep(Duration::from_millis(20));
        assert!(!t.is_finished());
        assert_eq!(c.handle(r#"{"cmd":"continue"}"#), "{\"ok\":true}");
        assert_eq!(t.join().unwrap(), None);
        let c = Arc::new(Control::new(true));
        let c2 = Arc::clone(&c);
        let t = std::thread::spawn(move || c2.wait_continue());
        assert_eq!(c.handle(r#"{"cmd":"power-off"}"#), "{\"ok\":true}");
        assert_eq!(t.join().unwrap(), Some(Outcome::PowerOff("control-socket")));
    }

    #[test]
    fn socket_serves_lines_survives_garbage_and_is_removed() {
        let dir = std::env::temp_dir().join(format!("relaunch-ctl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ctl.sock");
        let _ = std::fs::remove_file(&path);
        let server = ControlServer::start(&path, Arc::new(Control::new(false))).unwrap();
        let mut s = UnixStream::connect(&path).unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut line = String::new();
        // Garbage, an overlong line, then a good request: three replies, in order.
        s.write_all(b"garbage\n").unwrap();
        s.write_all(&vec![b'x'; MAX_LINE + 10]).unwrap();
        s.write_all(b"\n{\"cmd\":\"status\"}\n").unwrap();
        for want in ["\"ok\":false", "longer than", "\"ok\":true"] {
            line.clear();
            r.read_line(&mut line).unwrap();
            assert!(line.contains(want), "{want}: {line}");
        }
        drop((s, r));
        drop(server);
        assert!(!path.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// `switch-bundle`: a valid bundle is handed over permanently (or once with
    /// `one_shot`), audited, and shown in `status`; a missing file, garbage, a bad argument
    /// or a session without hand-overs is an error reply that changes nothing.
    #[test]
    fn switch_bundle_hands_over_or_explains_why_not() {
        use crate::handover::tests::{igvm, native_config};
        use crate::launch::LaunchSlot;
        let dir = std::env::temp_dir().join(format!("relaunch-ctl-sw-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let c = Control::new(false);
        let good = dir.join("stage2.igvm");
        let bundle = igvm(crate::testing::HELLO, &[]);
        std::fs::write(&good, &bundle).unwrap();
        let line = |p: &std::path::Path, extra: &str| {
            format!(
                r#"{{"cmd":"switch-bundle","path":{}{extra}}}"#,
                serde_json::to_string(&p.display().to_string()).unwrap()
            )
        };
        let r = c.handle(&line(&good, ""));
        assert!(r.contains("takes no bundle hand-overs"), "{r}");
        let slot = Arc::new(LaunchSlot::new());
        let first = Arc::new(
            Launch::new(igvm(crate::testing::RESET, &[]), &native_config(16 << 20)).unwrap(),
        );
        slot.start(&first, 1);
        let audit = Arc::new(crate::audit::AuditLog::open(&dir.join("audit.jsonl")).unwrap());
        c.set_handover(Arc::new(Handover::new(
            Arc::clone(&slot),
            native_config(16 << 20),
            None,
            Some(audit),
        )));
        let garbage = dir.join("garbage");
        std::fs::write(&garbage, b"\x7fELF not a bundle").unwrap();
        for bad in [
            r#"{"cmd":"switch-bundle"}"#.to_string(),
            r#"{"cmd":"switch-bundle","path":""}"#.to_string(),
            r#"{"cmd":"switch-bundle","path":7}"#.to_string(),
            line(&good, r#","one_shot":"yes""#),
            line(&dir.join("missing"), ""),
            line(&garbage, ""),
        ] {
            let r: serde_json::Value = serde_json::from_str(&c.handle(&bad)).unwrap();
            assert_eq!(r["ok"], false, "{bad}: {r}");
            assert!(slot.pending_sha256().is_none(), "{bad}");
        }
        assert_eq!(status(&c)["next_bundle_sha256"], serde_json::Value::Null);
        let r: serde_json::Value = serde_json::from_str(&c.handle(&line(&good, ""))).unwrap();
        assert_eq!(r["ok"], true, "{r}");
        let sha = crate::json::hex(&<sha2::Sha256 as sha2::Digest>::digest(&bundle));
        assert_eq!(r["bundle_sha256"], sha.as_str());
        assert_eq!(r["one_shot"], false);
        assert_eq!(status(&c)["next_bundle_sha256"], sha.as_str());
        assert_eq!(
            slot.base().unwrap().bundle_sha256(),
            sha,
            "permanent: the new original"
        );
        let r: serde_json::Value =
            serde_json::from_str(&c.handle(&line(&good, r#","one_shot":true"#))).unwrap();
        assert_eq!(
            (r["one_shot"].clone(), r["plan_cached"].clone()),
            (true.into(), true.into())
        );
        let g2 = slot.relaunch(2).unwrap();
        assert_eq!(g2.launch.bundle_sha256(), sha);
        // Audited: the two refusals of readable paths that reached the planner or the file
        // system, and the two hand-overs.
        let log = std::fs::read_to_string(dir.join("audit.jsonl")).unwrap();
        let statuses: Vec<u64> = log
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["status"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(statuses, [1, 1, 0, 0], "{log}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A valid-looking `inject-secret` line: a 52-byte header, a `len`-byte packet, `gpa`.
    fn inject_line(len: usize, gpa: &str) -> String {
        format!(
            r#"{{"cmd":"inject-secret","header":"{}","packet":"{}","gpa":{gpa}}}"#,
            "ab".repeat(HEADER_LEN),
            "cd".repeat(len)
        )
    }

    fn status(c: &Control) -> serde_json::Value {
        serde_json::from_str(&c.handle(r#"{"cmd":"status"}"#)).unwrap()
    }

    /// Waits (bounded) until `status` shows `state`.
    fn wait_state(c: &Control, state: &str) {
        for _ in 0..500 {
            if status(c)["state"] == state {
                return;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        panic!("never reached state {state}: {}", status(c));
    }

    /// Malformed `inject-secret` requests get an error naming what is wrong, whatever the
    /// state, and stop nothing: the header must be the 52-byte LAUNCH_SECRET header, the
    /// packet 16..=16384 bytes in 16-byte units (KVM's `SEV_FW_BLOB_MAX_SIZE`, the
    /// firmware's alignment), the GPA a number or "0x…" string.
    #[test]
    fn malformed_inject_secret_is_refused_with_its_reason() {
        let c = Control::new(true);
        let hdr = "ab".repeat(HEADER_LEN);
        let cases = [
            (
                r#"{"cmd":"inject-secret","packet":"00","gpa":0}"#.to_string(),
                "\"header\"",
            ),
            (
                format!(r#"{{"cmd":"inject-secret","header":"{hdr}","gpa":0}}"#),
                "\"packet\"",
            ),
            (
                format!(r#"{{"cmd":"inject-secret","header":"{hdr}x","packet":"00","gpa":0}}"#),
                "not hex",
            ),
            (
                format!(r#"{{"cmd":"inject-secret","header":"+f{hdr}","packet":"00","gpa":0}}"#),
                "not hex",
            ),
            (
                r#"{"cmd":"inject-secret","header":"abcd","packet":"00","gpa":0}"#.into(),
                "is 2 bytes",
            ),
            (inject_line(0, "0"), "is 0 bytes"),
            (inject_line(15, "0"), "is 15 bytes"),
            (inject_line(24, "0"), "is 24 bytes"),
            (inject_line(MAX_PACKET + 16, "0"), "is 16400 bytes"),
            (inject_line(16, "-1"), "\"gpa\""),
            (inject_line(16, "1.5"), "\"gpa\""),
            (inject_line(16, "\"4096\""), "\"gpa\""),
            (
                format!(
                    r#"{{"cmd":"inject-secret","header":"{hdr}","packet":"{}"}}"#,
                    "00".repeat(16)
                ),
                "\"gpa\"",
            ),
        ];
        for (line, want) in cases {
            let r = c.handle(&line);
            assert!(r.starts_with("{\"ok\":false,\"error\":"), "{line}: {r}");
            let v: serde_json::Value = serde_json::from_str(&r).unwrap();
            let e = v["error"].as_str().unwrap();
            assert!(e.contains(want), "{want} in {e}");
        }
        // Well-formed but no launch is at the owner's turn.
        let r = c.handle(&inject_line(16, "\"0x1000\""));
        assert!(r.contains("owner's turn"), "{r}");
        // Nothing was stopped: the first-run wait still waits for continue.
        assert_eq!(status(&c)["state"], "starting");
        assert_eq!(c.handle(r#"{"cmd":"continue"}"#), "{\"ok\":true}");
    }

    /// The owner's turn: the launch's thread waits in `measured` in state
    /// `awaiting-secret`; `status` shows the LAUNCH_MEASURE MAC and MNONCE as hex; each
    /// `inject-secret` runs on that thread and is answered with what `inject` returned (the
    /// firmware's refusal too); `continue` ends the turn (and the first-run wait). A relaunch
    /// waits again; without `--wait-for-secret` the turn does not wait and injects nothing.
    #[test]
    fn owner_turn_injects_on_the_launch_thread_until_continue() {
        let c = Arc::new(Control::new(true));
        let mut blob = [0u8; 48];
        blob[..32].copy_from_slice(&[0x11; 32]);
        blob[32..].copy_from_slice(&[0x22; 16]);
        let turn = |c: &Arc<Control>, id: u64| {
            let c2 = Arc::clone(c);
            std::thread::spawn(move || {
                let me = std::thread::current().id();
                let mut got = Vec::new();
                let mut inject = |s: &LaunchSecret| {
                    got.push((
                        s.gpa,
                        s.header.len(),
                        s.packet.len(),
                        std::thread::current().id() == me,
                    ));
                    if s.gpa == 0x1000 {
                        Ok(())
                    } else {
                        Err("KVM_SEV_LAUNCH_SECRET: EIO (firmware status 0xb: SEV_RET_BAD_MEASUREMENT)".into())
                    }
                };
                c2.measured(id, &blob, &mut inject);
                got
            })
        };
        let t = turn(&c, 7);
        wait_state(&c, "awaiting-secret");
        let st = status(&c);
        assert_eq!(st["launch_measure_mac"], "11".repeat(32));
        assert_eq!(st["mnonce"], "22".repeat(16));
        assert_eq!(st["awaiting_launch"], 7);
        assert_eq!(c.handle(&inject_line(32, "4096")), "{\"ok\":true}");
        let r = c.handle(&inject_line(16, "\"0x2000\""));
        assert!(
            r.contains("SEV_RET_BAD_MEASUREMENT") && r.contains("\"ok\":false"),
            "{r}"
        );
        assert!(!t.is_finished(), "the turn lasts until continue");
        assert_eq!(c.handle(r#"{"cmd":"continue"}"#), "{\"ok\":true}");
        // Once continue is answered no status shows this turn as waiting any more (a client
        // polling for the next launch's turn must not see it).
        assert_ne!(status(&c)["state"], "awaiting-secret");
        let got = t.join().unwrap();
        assert_eq!(got, [(0x1000, 52, 32, true), (0x2000, 52, 16, true)]);
        assert!(c.handle(&inject_line(16, "0")).contains("owner's turn"));
        // The first-run wait is over too, and the measurement stays visible.
        assert_eq!(c.wait_continue(), None);
        assert_eq!(status(&c)["launch_measure_mac"], "11".repeat(32));
        assert!(status(&c).get("awaiting_launch").is_none());
        // A relaunch has its own turn.
        c.ended();
        let t = turn(&c, 8);
        wait_state(&c, "awaiting-secret");
        assert_eq!(status(&c)["awaiting_launch"], 8);
        assert_eq!(c.handle(r#"{"cmd":"continue"}"#), "{\"ok\":true}");
        assert!(t.join().unwrap().is_empty());
        assert_eq!(status(&c)["state"], "relaunching");
        // Without --wait-for-secret: the blob is shown, nothing waits.
        let c = Arc::new(Control::new(false));
        assert!(turn(&c, 9).join().unwrap().is_empty());
        assert_eq!(status(&c)["mnonce"], "22".repeat(16));
        assert!(c.handle(&inject_line(16, "0")).contains("owner's turn"));
    }

    /// `power-off` (or `reset`) at the owner's turn ends it and the launch, unrun: the
    /// session's `wait_continue` hands the outcome back before the first `KVM_RUN`.
    #[test]
    fn power_off_at_the_owner_turn_ends_the_launch_unrun() {
        let c = Arc::new(Control::new(true));
        // A relaunch: the first launch already ran.
        assert_eq!(c.handle(r#"{"cmd":"continue"}"#), "{\"ok\":true}");
        assert_eq!(c.wait_continue(), None);
        c.ended();
        let c2 = Arc::clone(&c);
        let t = std::thread::spawn(move || c2.measured(3, &[0; 48], &mut |_| Ok(())));
        wait_state(&c, "awaiting-secret");
        assert_eq!(c.handle(r#"{"cmd":"power-off"}"#), "{\"ok\":true}");
        t.join().unwrap();
        assert_eq!(c.wait_continue(), Some(Outcome::PowerOff("control-socket")));
    }
}
