//! The control socket against a real guest on KVM: a launch that waits for `continue`,
//! `status` while paused and running, `reset` (a relaunch), `power-off` (exit 0), garbage and
//! a hung-up client in between, and the socket gone at the end.

mod kvm_common;

use std::sync::Arc;

use kvm_common::*;
use relaunch::control::{Control, ControlServer};
use relaunch::session::EXIT_POWER_OFF;
use relaunch::testing;
use relaunch::vcpu::Outcome;

const MEM: u64 = 16 << 20;

/// Real mode: boot marker, then halt forever with interrupts off (the vCPU sleeps in the
/// kernel's HLT until kicked).
///
/// ```text
/// mov $1, %al ; out %al, $0x80 ; cli ; 1: hlt ; jmp 1b
/// ```
const IDLE: &[u8] = &[0xB0, 0x01, 0xE6, 0x80, 0xFA, 0xF4, 0xEB, 0xFD];

#[test]
fn kvm_control_socket_drives_a_session() {
    let Some(host) = host(true) else { return };
    let dir = std::env::temp_dir().join(format!("relaunch-kvm-ctl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ctl.sock");
    let _ = std::fs::remove_file(&path);
    let control = Arc::new(Control::new(true));
    let server = ControlServer::start(&path, Arc::clone(&control)).unwrap();
    let plan = testing::plan(IDLE, &[], 1, MEM, 0);
    let mut cfg = config(MEM, Some(5), false);
    cfg.control = Some(control);
    let session = std::thread::spawn(move || {
        let r = run(&host, &plan, &cfg);
        (r, events(&cfg))
    });
    let mut c = Client::connect(&path);
    // Paused before its first instruction until `continue`.
    let s = c.wait_status(&["\"generation\":1", "\"state\":\"paused\""]);
    assert!(s.starts_with("{\"ok\":true"), "{s}");
    assert!(s.contains("\"platform\":\"native\""), "{s}");
    // A client that sends garbage and hangs up changes nothing.
    {
        let mut bad = Client::connect(&path);
        assert!(bad.ask("{not json").starts_with("{\"ok\":false"));
        assert!(bad
            .ask(r#"{"cmd":"launch-missiles"}"#)
            .contains("unknown command"));
    }
    assert_eq!(c.ask(r#"{"cmd":"continue"}"#).trim(), "{\"ok\":true}");
    c.wait_status(&["\"generation\":1", "\"state\":\"running\""]);
    assert!(c.ask(r#"{"cmd":"continue"}"#).contains("not waiting"));
    // Reset: the session relaunches (generation 2 runs without waiting).
    assert_eq!(c.ask(r#"{"cmd":"reset"}"#).trim(), "{\"ok\":true}");
    c.wait_status(&["\"generation\":2", "\"state\":\"running\""]);
    assert_eq!(c.ask(r#"{"cmd":"power-off"}"#).trim(), "{\"ok\":true}");
    let (r, ev) = session.join().unwrap();
    assert_eq!(r.exit_code, EXIT_POWER_OFF, "{:?}", r.outcome);
    assert_eq!(r.launches, 2);
    assert_eq!(r.outcome, Outcome::PowerOff("control-socket"));
    assert!(ev[0].contains("\"reason\":\"control-socket\""), "{}", ev[0]);
    assert!(ev[1].contains("\"outcome\":\"power-off\""), "{}", ev[1]);
    c.wait_status(&["\"state\":\"stopped\""]);
    drop(c);
    drop(server);
    assert!(!path.exists(), "the socket is removed at exit");
    let _ = std::fs::remove_dir_all(&dir);
}
