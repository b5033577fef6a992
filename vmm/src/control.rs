//! The control socket (`relaunch run --control PATH`): JSON lines over a Unix socket for
//! orchestrators and guest owners.
//!
//! A request is one JSON object per line naming its command in `"cmd"`; every request gets
//! one reply line, an object with `"ok": true|false` (and `"error"` when false). Commands:
//! `status` (generation, state, platform, bundle, measurements), `measurement`, `reset`,
//! `power-off`, `continue` (with `--wait-for-secret` the first launch waits before its
//! first `KVM_RUN` until then). `inject-secret` is refused with its reason until a platform
//! that takes launch secrets is running.
//!
//! Threat model: the socket is the owner's (mode 0600, created by us, never over an existing
//! file, removed at exit), but a client may still be buggy: a line longer than
//! [`MAX_LINE`] or not JSON gets an error reply and the connection stays usable; at most
//! [`MAX_CLIENTS`] connections are served at once (more are told so and closed); a client
//! that does not read its replies only blocks its own thread (writes time out after
//! [`WRITE_TIMEOUT`]). vCPU threads never wait on a client: the session only publishes state
//! under a short lock, and a `reset` / `power-off` is the same `RunControl::post` a device
//! makes.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use serde::Serialize;

use crate::devices::ResetSource;
use crate::launch::Launch;
use crate::vcpu::{Outcome, RunControl};

/// Longest request line, bytes.
pub const MAX_LINE: usize = 64 * 1024;
/// Connections served at once.
pub const MAX_CLIENTS: usize = 8;
/// How long a reply may wait for a client that does not read.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// What the session publishes, and what clients ask of it.
#[derive(Debug, Default)]
struct State {
    generation: u64,
    state: &'static str,
    platform: &'static str,
    emulated: bool,
    launch: Option<Arc<Launch>>,
    run: Option<Arc<RunControl>>,
    /// `continue` was asked (or no wait was configured).
    continued: bool,
    /// A `power-off` or `reset` asked while paused before the first run.
    pending: Option<Outcome>,
}

/// The state shared by the session and the control socket.
#[derive(Debug, Default)]
pub struct Control {
    state: Mutex<State>,
    cv: Condvar,
}

impl Control {
    /// A control whose first launch waits for `continue` when `wait` is set.
    pub fn new(wait: bool) -> Control {
        Control {
            state: Mutex::new(State {
                state: "starting",
                continued: !wait,
                ..State::default()
            }),
            cv: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The session starts launch `generation` of `launch` on `platform`, stopped by `run`.
    pub fn launching(
        &self,
        generation: u64,
        launch: &Arc<Launch>,
        platform: &'static str,
        emulated: bool,
        run: &Arc<RunControl>,
    ) {
        let mut s = self.lock();
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

    /// Ends the running launch with `outcome` (or the paused one before it runs).
    fn post(&self, outcome: Outcome) -> Result<(), String> {
        let mut s = self.lock();
        if !s.continued {
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
                Some(cmd) => self.command(cmd),
            },
        };
        match reply {
            Ok(v) => v,
            Err(e) => error_line(&e),
        }
    }

    fn command(&self, cmd: &str) -> Result<String, String> {
        match cmd {
            "status" | "measurement" => {
                let s = self.lock();
                let l = s.launch.as_deref();
                let reply = Status {
                    ok: true,
                    generation: s.generation,
                    state: s.state,
                    platform: s.platform,
                    emulated: s.emulated,
                    bundle_sha256: l.map(Launch::bundle_sha256),
                    predicted_measurement: l.and_then(Launch::predicted_measurement),
                    // What the platform reported at finish: none of today's backends reports
                    // one (native has no measurement).
                    launch_measurement: None,
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
                if s.continued {
                    return Err("the launch is not waiting for continue".into());
                }
                s.continued = true;
                self.cv.notify_all();
                Ok(ok_line())
            }
            "inject-secret" => Err(
                "inject-secret needs a platform that takes launch secrets (SEV, SEV-ES); \
                 none is running"
                    .into(),
            ),
            other => Err(format!(
                "unknown command {other:?}: status, measurement, reset, power-off, continue, \
                 inject-secret"
            )),
        }
    }
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
        c.launching(3, &l, "native", false, &run);
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
}
