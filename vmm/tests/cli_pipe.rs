//! Writing to a closed pipe must not kill `relaunch` (Rust ignores SIGPIPE, so `println!`
//! and `eprintln!` would panic on EPIPE, and `panic = "abort"` makes that exit 134).

mod cli_common;

use std::io::pipe;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use cli_common::{scratch, spec_file};

/// Runs `relaunch ARGS` with stdout and/or stderr connected to a pipe whose read end is
/// already closed; returns the exit code.
fn run_closed(args: &[&str], close_stdout: bool, close_stderr: bool) -> i32 {
    let (reader, writer) = pipe().unwrap();
    drop(reader);
    let mut c = Command::new(env!("CARGO_BIN_EXE_relaunch"));
    c.args(args).stdin(Stdio::null());
    c.stdout(if close_stdout {
        Stdio::from(writer.try_clone().unwrap())
    } else {
        Stdio::null()
    });
    c.stderr(if close_stderr {
        Stdio::from(writer)
    } else {
        Stdio::null()
    });
    let status = c.status().unwrap();
    status.code().unwrap_or(-1)
}

#[test]
fn inspect_and_measure_survive_a_closed_stdout() {
    let f = scratch("pipe-spec.igvm", &spec_file(2, true));
    let f = f.to_str().unwrap();
    assert_eq!(run_closed(&["inspect", f], true, false), 0);
    assert_eq!(run_closed(&["inspect", f, "--json"], true, true), 0);
    let m = scratch("pipe-spec1.igvm", &spec_file(1, false));
    let m = m.to_str().unwrap();
    assert_eq!(
        run_closed(&["measure", m, "--platform", "snp"], true, true),
        0
    );
    for help in [
        &["--help"][..],
        &["inspect", "--help"],
        &["measure", "--help"],
        &["run", "--help"],
    ] {
        assert_eq!(run_closed(help, true, true), 0, "{help:?}");
    }
}

#[test]
fn errors_survive_a_closed_stderr() {
    for args in [
        &[][..],
        &["frobnicate"],
        &["inspect", "/nonexistent.igvm"],
        &["measure", "/nonexistent.igvm"],
        &["run", "/nonexistent.igvm"],
        &["run", "x.igvm", "--bogus"],
    ] {
        assert_eq!(run_closed(args, true, true), 2, "{args:?}");
    }
}

/// The junk image pokes unknown ports (logged to stderr) and then powers off: a guest must
/// not be able to kill the VMM through the log.
#[test]
fn kvm_guest_log_survives_a_closed_stderr() {
    let img = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../boot-images/out/junk.igvm");
    let ci = std::env::var("CI").as_deref() == Ok("true");
    if !img.exists() || std::fs::File::open("/dev/kvm").is_err() {
        assert!(!ci, "CI=true but /dev/kvm or {} is missing", img.display());
        println!("SKIPPED: needs /dev/kvm and {}", img.display());
        return;
    }
    let img = img.to_str().unwrap();
    // 0 = power-off (docs/reboot-contract.md).
    assert_eq!(run_closed(&["run", img, "--quiet"], false, true), 0);
    assert_eq!(run_closed(&["run", img], true, true), 0);
}

/// `run` ends with exactly one line naming the outcome and the exit code, `--quiet` or not.
#[test]
fn kvm_run_ends_with_one_outcome_line() {
    let img = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../boot-images/out/reboot-loop.igvm");
    let ci = std::env::var("CI").as_deref() == Ok("true");
    if !img.exists() || std::fs::File::open("/dev/kvm").is_err() {
        assert!(!ci, "CI=true but /dev/kvm or {} is missing", img.display());
        println!("SKIPPED: needs /dev/kvm and {}", img.display());
        return;
    }
    let img = img.to_str().unwrap();
    let last_line = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_relaunch"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        let n = err.lines().filter(|l| l.contains("(exit ")).count();
        assert_eq!(n, 1, "{err}");
        (
            out.status.code(),
            err.lines().last().unwrap_or("").to_string(),
        )
    };
    let until3 = "opt/relaunch/reboot-until=u64:3";
    let audit = scratch("pipe-outcome-audit.jsonl", b"");
    let a = audit.to_str().unwrap();
    let (code, line) = last_line(&["run", img, "--quiet", "--fw-cfg", until3, "--audit-log", a]);
    assert_eq!(code, Some(0));
    assert_eq!(
        line,
        "relaunch: guest powered off after 3 launches (exit 0)"
    );
    // The audit `launch` records name the version (`relaunch --version`).
    let text = std::fs::read_to_string(&audit).unwrap();
    let version = format!("\"version\":\"{}\"", relaunch::cli::VERSION);
    let launches: Vec<&str> = text.lines().filter(|l| l.contains("\"launch\"")).collect();
    assert_eq!(launches.len(), 3, "{text}");
    assert!(launches.iter().all(|l| l.contains(&version)), "{text}");
    let (code, line) = last_line(&["run", img, "--fw-cfg", until3, "--max-reboots", "1"]);
    assert_eq!(code, Some(4));
    assert_eq!(
        line,
        "relaunch: reboot limit reached: the guest asked for reset #2 after --max-reboots 1 \
         (exit 4)"
    );
}
