//! `--help`, `--version`, non-UTF-8 paths and the shared limit messages, through the binary.

mod cli_common;

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::process::Command;

use cli_common::{assert_usage_error, relaunch, spec_file, Run, N1};
use relaunch::args::Flag;

fn run_os(args: &[&OsStr]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_relaunch"))
        .args(args)
        .output()
        .expect("run relaunch");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

const COMMANDS: [(&str, &[Flag]); 3] = [
    ("run", relaunch::cli::run::FLAGS),
    ("measure", relaunch::cli::measure::FLAGS),
    ("inspect", relaunch::cli::inspect::FLAGS),
];

#[test]
fn every_command_help_names_every_flag() {
    for (cmd, flags) in COMMANDS {
        for form in [vec![cmd, "--help"], vec![cmd, "-h"], vec!["help", cmd]] {
            let r = relaunch(&form);
            assert_eq!(r.code, 0, "{form:?}: {}", r.stderr);
            assert!(r.stderr.is_empty(), "{form:?}: {}", r.stderr);
            assert!(
                r.stdout.starts_with(&format!("usage: relaunch {cmd}")),
                "{form:?}: {}",
                r.stdout
            );
            assert!(r.stdout.contains("Examples:"), "{}", r.stdout);
            for f in flags {
                assert!(
                    r.stdout.contains(&f.name()),
                    "{cmd} help lacks {}",
                    f.name()
                );
            }
        }
        // Help wins over a bad flag elsewhere on the line.
        let r = relaunch(&[cmd, "--frobnicate", "--help"]);
        assert_eq!(r.code, 0, "{}", r.stderr);
    }
    let r = relaunch(&["run", "--help"]);
    assert!(r.stdout.contains("--quiet"));
    assert!(r.stdout.contains("final outcome line"), "{}", r.stdout);
    assert!(r.stdout.contains("--no-guest-memfd"));
}

#[test]
fn top_level_help_and_version() {
    for form in [&["--help"][..], &["-h"], &["help"]] {
        let r = relaunch(form);
        assert_eq!(r.code, 0, "{}", r.stderr);
        for (cmd, _) in COMMANDS {
            assert!(r.stdout.contains(cmd), "{}", r.stdout);
        }
    }
    for form in ["--version", "-V"] {
        let r = relaunch(&[form]);
        assert_eq!(r.code, 0);
        assert_eq!(r.stdout, format!("relaunch {}\n", relaunch::cli::VERSION));
    }
    assert_usage_error(&relaunch(&["help", "frob"]), "relaunch help: ", "frob");
    assert_usage_error(&relaunch(&["frob"]), "relaunch: ", "unknown command");
}

#[test]
fn non_utf8_bundle_paths_work() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cli-tests");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(OsStr::from_bytes(b"bundle-\xff\xfe.igvm"));
    assert!(path.to_str().is_none());
    std::fs::write(&path, spec_file(1, false)).unwrap();
    let p = path.as_os_str();
    let s = OsStr::new;
    let r = run_os(&[s("measure"), p, s("--platform"), s("snp")]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, format!("{N1}\n"));
    let r = run_os(&[s("inspect"), p, s("--platform"), s("snp")]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains(N1), "{}", r.stdout);
    let r = run_os(&[s("inspect"), p, s("--json")]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert!(v["file"].as_str().unwrap().contains("bundle-"));
    // `run` takes the path too: a missing one is a plain "No such file" error.
    let missing = dir.join(OsStr::from_bytes(b"missing-\xff.igvm"));
    let r = run_os(&[s("run"), missing.as_os_str()]);
    assert_usage_error(&r, "relaunch run: ", "No such file");
    // --kernel takes a non-UTF-8 path (refused afterwards: an IGVM carries its own kernel).
    let r = run_os(&[s("measure"), p, s("--platform"), s("sev"), s("--kernel"), p]);
    assert_usage_error(&r, "relaunch measure: ", "IGVM");
}

#[test]
fn run_and_measure_say_the_same_about_limits() {
    let f = cli_common::scratch("help-limits.igvm", &spec_file(1, false));
    let f = f.to_str().unwrap();
    for (flag, value) in [("--vcpus", "0"), ("--mem", "12"), ("--vcpus", "4096")] {
        let run = relaunch(&["run", f, flag, value]);
        let measure = relaunch(&["measure", f, "--platform", "snp", flag, value]);
        let inspect = relaunch(&["inspect", f, flag, value]);
        assert_usage_error(&run, "relaunch run: ", flag);
        assert_usage_error(&measure, "relaunch measure: ", flag);
        assert_usage_error(&inspect, "relaunch inspect: ", flag);
        let msg = |r: &Run, prefix: &str| {
            r.stderr
                .trim_end()
                .strip_prefix(prefix)
                .unwrap()
                .to_string()
        };
        let m = msg(&measure, "relaunch measure: ");
        assert_eq!(msg(&run, "relaunch run: "), m);
        assert_eq!(msg(&inspect, "relaunch inspect: "), m);
        assert!(m.contains("a launch has"), "{m}");
    }
}

#[test]
fn args_are_os_strings() {
    // The library entry point takes OsStrings (as main passes them).
    let code = relaunch::cli::main([OsString::from("--version")]);
    assert_eq!(code, 0);
}
