//! The boot images (`boot-images/out/*.igvm`, built by `cargo xtask build-images`) planned by
//! the core and run on real KVM: serial output, reboot counts, exit codes, audit records,
//! and the `relaunch run` command line's reboot contract.
//!
//! A missing image prints `SKIPPED: ... (run cargo xtask build-images)`; under `CI=true` it
//! fails instead (CI builds the images first).

mod kvm_common;

use std::path::PathBuf;

use kvm_common::*;
use relaunch::launch::Launch;
use relaunch::session::{EXIT_POWER_OFF, EXIT_REBOOT_LIMIT, EXIT_USAGE};
use relaunch::vstate::Host;
use relaunch_core::plan::Platform;
use sha2::{Digest, Sha256};
use std::sync::Arc;

const MEM: u64 = 256 << 20;

fn plan_native(host: &Host, bundle: &[u8], vcpus: u32) -> Arc<Launch> {
    let cfg = launch_config(Platform::Native, vcpus, MEM, host.vcpu_signature());
    Arc::new(Launch::new(bundle.to_vec(), &cfg).expect("plan the native view"))
}

/// This host and the one-vCPU native plan of `boot-images/out/NAME.igvm`, or the skip.
fn native_image(name: &str) -> Option<(Arc<Host>, Arc<Launch>)> {
    let host = host(true)?;
    let (_, bundle) = image(name)?;
    let plan = plan_native(&host, &bundle, 1);
    Some((host, plan))
}

#[test]
fn kvm_image_hello() {
    let Some((host, plan)) = native_image("hello") else {
        return;
    };
    let cfg = config(MEM, None, false);
    let r = run(&host, &plan, &cfg);
    assert_eq!(r.exit_code, EXIT_POWER_OFF, "{:?}", r.outcome);
    let out = output(&cfg);
    assert!(out.contains("hello from relaunch guest"), "{out:?}");
    assert!(out.contains("generation 1"), "{out:?}");
}

/// The UART's IRQ 4 reaches the guest: `KVM_IRQ_LINE` on the in-kernel irqchip, the 8259
/// master (remapped to 0x20), the BSP's LINT0, the IDT. The second line is written only by
/// the guest's interrupt handler, one byte per THR-empty interrupt.
#[test]
fn kvm_image_irq_serial_interrupts_are_delivered() {
    let Some((host, plan)) = native_image("irq") else {
        return;
    };
    let cfg = config(MEM, None, false);
    let r = run(&host, &plan, &cfg);
    assert_eq!(r.exit_code, EXIT_POWER_OFF, "{:?}", r.outcome);
    let out = output(&cfg);
    let msg = "irq: sent from the IRQ 4 handler\n";
    assert_eq!(
        out,
        format!(
            "irq: start\n{msg}irq: {} interrupts, {} bytes from the handler\n",
            msg.len() + 1,
            msg.len()
        )
    );
}

#[test]
fn kvm_image_reboot_loop_counts_generations() {
    let Some((host, plan)) = native_image("reboot-loop") else {
        return;
    };
    for prestage in [false, true] {
        let mut cfg = config(MEM, None, prestage);
        cfg.fw_cfg_files = vec![(
            "opt/relaunch/reboot-until".into(),
            7u64.to_le_bytes().to_vec(),
        )];
        let r = run(&host, &plan, &cfg);
        assert_eq!(r.exit_code, EXIT_POWER_OFF, "{:?}", r.outcome);
        assert_eq!(r.launches, 7);
        let out = output(&cfg);
        for g in 1..=7 {
            assert!(out.contains(&format!("generation {g}\n")), "{out:?}");
        }
        assert!(out.contains("done after 7 launches"), "{out:?}");
        let ev = events(&cfg);
        let reasons: Vec<_> = ev
            .iter()
            .filter_map(|e| e.split("\"reason\":\"").nth(1)?.split('"').next())
            .collect();
        // Every reset path the guest rotates through was taken.
        for reason in ["i8042", "cf9", "triple-fault"] {
            assert!(reasons.contains(&reason), "{reasons:?}");
        }
        println!(
            "reboot-loop prestage={prestage}: relaunch latency p50 {} us",
            pct_us(&r.relaunch_latency, 0.5)
        );
    }
    // Reboot limit: the guest wants 7 launches, we allow 2 relaunches.
    let mut cfg = config(MEM, Some(2), false);
    cfg.fw_cfg_files = vec![(
        "opt/relaunch/reboot-until".into(),
        7u64.to_le_bytes().to_vec(),
    )];
    let r = run(&host, &plan, &cfg);
    assert_eq!(r.exit_code, EXIT_REBOOT_LIMIT);
    assert_eq!(r.launches, 3);
}

/// A session handed another bundle runs it from its next relaunch: reboot-loop resets, then
/// hello runs (generation 2, read from fw_cfg) and powers off; with `--prestage` the VM
/// prestaged for the old bundle is thrown away. The audit log names both bundles.
#[test]
fn kvm_image_session_switches_bundle_at_reset() {
    let Some(host) = host(true) else { return };
    let (Some((_, loop_bytes)), Some((_, hello_bytes))) = (image("reboot-loop"), image("hello"))
    else {
        return;
    };
    let first = plan_native(&host, &loop_bytes, 1);
    let second = plan_native(&host, &hello_bytes, 1);
    let path =
        std::env::temp_dir().join(format!("relaunch-img-switch-{}.jsonl", std::process::id()));
    for prestage in [false, true] {
        let _ = std::fs::remove_file(&path);
        let mut cfg = with_audit(config(MEM, None, prestage), &path);
        // Launch 1 (reboot-loop) resets; launch 2 (hello) has reached it and powers off (every
        // guest relaunches while the generation is below it: `power::finish`).
        cfg.fw_cfg_files = vec![(
            "opt/relaunch/reboot-until".into(),
            2u64.to_le_bytes().to_vec(),
        )];
        cfg.next.set(Arc::clone(&second));
        let r = run(&host, &first, &cfg);
        assert_eq!(r.exit_code, EXIT_POWER_OFF, "{:?}", r.outcome);
        assert_eq!(r.launches, 2);
        let out = output(&cfg);
        assert!(out.contains("hello from relaunch guest"), "{out:?}");
        let text = std::fs::read_to_string(&path).unwrap();
        let launches: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("\"event\":\"launch\""))
            .collect();
        assert_eq!(launches.len(), 2, "{text}");
        let sha = |b: &[u8]| relaunch::json::hex(&Sha256::digest(b));
        assert!(launches[0].contains(&sha(&loop_bytes)), "{}", launches[0]);
        assert!(launches[1].contains(&sha(&hello_bytes)), "{}", launches[1]);
        assert!(
            launches[1].contains("\"prestaged\":false"),
            "{}",
            launches[1]
        );
    }
    let _ = std::fs::remove_file(&path);
}

#[test]
fn kvm_image_smp_reports_every_vcpu() {
    let Some(host) = host(true) else { return };
    let Some((_, bundle)) = image("smp") else {
        return;
    };
    for vcpus in [1u32, 2, 4] {
        let plan = plan_native(&host, &bundle, vcpus);
        let cfg = config(MEM, None, false);
        let r = run(&host, &plan, &cfg);
        assert_eq!(r.exit_code, EXIT_POWER_OFF, "{:?}", r.outcome);
        let out = output(&cfg);
        assert!(out.contains(&format!("smp: {vcpus} cpus")), "{out:?}");
        for k in 1..vcpus {
            assert!(out.contains(&format!("cpu {k} up")), "{out:?}");
        }
    }
}

#[test]
fn kvm_image_junk_is_survived() {
    let Some((host, plan)) = native_image("junk") else {
        return;
    };
    let cfg = config(MEM, None, false);
    let r = run(&host, &plan, &cfg);
    assert_eq!(r.exit_code, EXIT_POWER_OFF, "{:?}", r.outcome);
    assert!(output(&cfg).contains("survived"));
}

/// The `sevinfo: ` lines of a run (docs/boot-images.md "sevinfo's output contract").
fn sevinfo_lines(out: &str) -> Vec<&str> {
    out.lines()
        .filter_map(|l| l.strip_prefix("sevinfo: "))
        .collect()
}

fn hex_field(line: &str, name: &str) -> u32 {
    let v = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix(name)?.strip_prefix("=0x"))
        .unwrap_or_else(|| panic!("no {name}= in {line:?}"));
    u32::from_str_radix(v, 16).unwrap()
}

/// sevinfo on the native view of this host: it reports the CPUID the VMM gave it (the host's
/// `KVM_GET_SUPPORTED_CPUID`), reads SEV_STATUS only where CPUID 0x8000001F EAX bit 1 (SEV)
/// says the MSR exists (AMD APM Vol. 2 §15.34.10), never builds C-bit tables on a guest
/// that is not SEV, finds no launch secret in zeroed RAM, and powers off.
#[test]
fn kvm_image_sevinfo_reports_the_native_view() {
    let Some((host, plan)) = native_image("sevinfo") else {
        return;
    };
    let cfg = config(MEM, None, false);
    let r = run(&host, &plan, &cfg);
    assert_eq!(r.exit_code, EXIT_POWER_OFF, "{:?}", r.outcome);
    let out = output(&cfg);
    let lines = sevinfo_lines(&out);
    assert_eq!(lines.len(), 7, "{out:?}");
    assert_eq!(lines[0], "start");
    assert_eq!(lines[6], "done");
    let entry = |function: u32| {
        host.cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == function && e.index == 0)
            .map(|e| (e.eax, e.ebx))
    };
    let max_ext = entry(0x8000_0000).map(|e| e.0).unwrap_or(0);
    // CPUID 0x8000001F: the host's values, or "absent" where the largest extended leaf is
    // below it.
    let sev_eax = if max_ext >= 0x8000_001F {
        let l = lines[1];
        assert!(l.starts_with("cpuid 8000001f eax=0x"), "{l:?}");
        let (eax, ebx) = (hex_field(l, "eax"), hex_field(l, "ebx"));
        if let Some(want) = entry(0x8000_001F) {
            assert_eq!((eax, ebx), want, "{l:?}");
        }
        eax
    } else {
        assert_eq!(lines[1], "cpuid 8000001f absent");
        0
    };
    if max_ext >= 0x8000_0008 {
        let eax = hex_field(lines[2], "eax");
        if let Some(want) = entry(0x8000_0008) {
            assert_eq!(eax, want.0, "{:?}", lines[2]);
        }
    } else {
        assert_eq!(lines[2], "cpuid 80000008 absent");
    }
    if sev_eax & 2 == 0 {
        assert_eq!(
            lines[3],
            "sev_status not read (cpuid 8000001f eax bit 1 clear)"
        );
    } else {
        // A host that reports SEV to ordinary guests: KVM answers the MSR or raises #GP,
        // which sevinfo catches.
        assert!(
            lines[3] == "sev_status #GP" || lines[3].starts_with("sev_status=0x"),
            "{:?}",
            lines[3]
        );
        println!("sevinfo on a host with SEV in CPUID: {}", lines[3]);
    }
    // Not a SEV guest: no C-bit tables (SEV_STATUS bit 0 is clear or was never read).
    assert_eq!(lines[4], "c-bit paging skipped (sev_status bit 0 clear)");
    assert_eq!(lines[5], "secret none");
    assert!(!out.contains("exception"), "{out:?}");
}

/// sevinfo under a guest-visible SEV view, run by `boot-images/tools/kvm_smoke.py` (its own
/// KVM runner, not relaunch): CPUID 0x8000001F with SEV (and SEV-ES / SNP per SEV_STATUS),
/// C-bit 47, SEV_STATUS from user space, RAM aliased at 1 << 47. sevinfo must print that
/// view, run on page tables with the C-bit set, and hash the launch secret written at
/// layout::SEV_SECRET_GPA (u32 LE length, then the bytes); with CPUID alone (no MSR) its
/// RDMSR #GP is caught.
#[test]
fn kvm_image_sevinfo_under_an_emulated_sev_view() {
    let Some(_host) = host(true) else { return };
    let Some((path, _)) = image("sevinfo") else {
        return;
    };
    let tool = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../boot-images/tools/kvm_smoke.py");
    let smoke = |args: &[&str]| {
        let out = std::process::Command::new("python3")
            .arg(&tool)
            .arg(&path)
            .args(args)
            .output()
            .expect("python3 (boot-images/tools/kvm_smoke.py)");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{args:?}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    let secret = b"relaunch launch secret";
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    let want = relaunch::json::hex(&Sha256::digest(secret));
    // SEV_STATUS 0x3: SEV and SEV-ES. CPUID EAX: SEV (bit 1) | SEV-ES (bit 3); EBX: C-bit 47
    // | reduction 1 << 6 (AMD APM Vol. 3 §E.4.17).
    let out = smoke(&["--view", "sev", "--sev-status", "3", "--secret", &hex]);
    assert_eq!(
        sevinfo_lines(&out),
        vec![
            "start",
            "cpuid 8000001f eax=0x0000000a ebx=0x0000006f",
            "cpuid 80000008 eax=0x00003030",
            "sev_status=0x3",
            "c-bit paging ok (c-bit 47, cr3=0x8000002fd000)",
            &format!("secret sha256={want}"),
            "done",
        ],
        "{out}"
    );
    // The largest secret, and one byte too many (then "none").
    let big = vec![0xA5u8; 4092];
    let big_hex: String = big.iter().map(|b| format!("{b:02x}")).collect();
    let out = smoke(&["--view", "sev", "--sev-status", "1", "--secret", &big_hex]);
    let want = relaunch::json::hex(&Sha256::digest(&big));
    assert!(
        out.contains(&format!("sevinfo: secret sha256={want}\n")),
        "{out}"
    );
    let out = smoke(&[
        "--view",
        "sev",
        "--sev-status",
        "1",
        "--secret",
        &(big_hex + "a5"),
    ]);
    assert!(out.contains("sevinfo: secret none\n"), "{out}");
    // CPUID says SEV, but nothing answers SEV_STATUS: KVM's #GP is caught and reported.
    let out = smoke(&["--sev-cpuid-only"]);
    let lines = sevinfo_lines(&out);
    assert_eq!(lines[3], "sev_status #GP", "{out}");
    assert_eq!(lines[4], "c-bit paging skipped (sev_status bit 0 clear)");
    assert_eq!(lines.last(), Some(&"done"));
}

fn cli(args: &[&str]) -> u8 {
    let v: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    relaunch::cli::main(&v)
}

#[test]
fn kvm_cli_reboot_contract_and_audit_log() {
    let Some(host) = host(true) else { return };
    let Some((path, bundle)) = image("reboot-loop") else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("relaunch-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let audit = dir.join("audit.jsonl");
    let events = dir.join("events.jsonl");
    let p = path.to_str().unwrap();
    let (a, e) = (audit.to_str().unwrap(), events.to_str().unwrap());
    // Power-off after 3 launches: exit 0.
    let code = cli(&[
        "run",
        p,
        "--quiet",
        "--audit-log",
        a,
        "--events",
        e,
        "--fw-cfg",
        "opt/relaunch/reboot-until=u64:3",
    ]);
    assert_eq!(code, EXIT_POWER_OFF);
    let text = std::fs::read_to_string(&audit).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 6, "{text}");
    let sha = relaunch::json::hex(&Sha256::digest(&bundle));
    for (i, pair) in lines.chunks(2).enumerate() {
        assert!(pair[0].starts_with("{\"event\":\"launch\""));
        assert!(pair[0].contains(&format!("\"generation\":{}", i + 1)));
        assert!(pair[0].contains(&format!("\"bundle_sha256\":\"{sha}\"")));
        // `run` picks what this host offers (guest_memfd where KVM has MMAP|INIT_SHARED,
        // anonymous memory elsewhere): the same probe as `host(true)`.
        let backing = format!("\"memory_backing\":\"{}\"", host.backing.name());
        assert!(pair[0].contains(&backing), "{}", pair[0]);
        assert!(pair[1].starts_with("{\"event\":\"exit\""));
    }
    assert!(lines[5].contains("\"outcome\":\"power-off\""));
    assert!(lines[5].contains("\"exit_code\":0"));
    assert_eq!(std::fs::read_to_string(&events).unwrap().lines().count(), 3);
    // Reboot limit: exit 4.
    let code = cli(&[
        "run",
        p,
        "--quiet",
        "--max-reboots",
        "1",
        "--fw-cfg",
        "opt/relaunch/reboot-until=u64:3",
    ]);
    assert_eq!(code, EXIT_REBOOT_LIMIT);
    // Bad flags, bad bundles, unsupported platforms: exit 2, nothing started (no record).
    let before = std::fs::read_to_string(&audit).unwrap();
    let junk = dir.join("junk.bin");
    std::fs::write(&junk, b"not an igvm file at all").unwrap();
    let j = junk.to_str().unwrap();
    for args in [
        &["run"][..],
        &["run", p, "--mem", "12"],
        &["run", p, "--vcpus", "0"],
        &["run", p, "--bogus"],
        &["run", "/nonexistent/bundle.igvm", "--audit-log", a],
        &["run", j, "--audit-log", a],
        &["run", p, "--audit-log", "/nonexistent/dir/audit.jsonl"],
        &[
            "run",
            p,
            "--audit-log",
            a,
            "--control",
            "/nonexistent/dir/ctl.sock",
        ],
        // An existing file is never replaced by the control socket.
        &["run", p, "--audit-log", a, "--control", a],
        &["run", p, "--wait-for-secret"],
    ] {
        assert_eq!(cli(args), EXIT_USAGE, "{args:?}");
    }
    // A confidential platform this host's KVM does not offer (probed: `KVM_CAP_VM_TYPES`,
    // bit N = VM type N; `KVM_X86_SEV_VM` 2, `SEV_ES` 3, `SNP` 4, `TDX` 5): exit 2 with one
    // sentence, nothing created, no record. A host that offers one would launch it.
    for (platform, vm_type) in [("sev", 2), ("sev-es", 3), ("snp", 4), ("tdx", 5)] {
        if host.vm_types & (1 << vm_type) != 0 {
            println!("SKIPPED ({platform} refusal): this host's KVM offers VM type {vm_type}");
            continue;
        }
        assert_eq!(
            cli(&["run", p, "--platform", platform, "--audit-log", a]),
            EXIT_USAGE,
            "{platform}"
        );
    }
    assert_eq!(std::fs::read_to_string(&audit).unwrap(), before);
    // A bad --events path after a good --audit-log: nothing is left behind.
    let fresh = dir.join("fresh-audit.jsonl");
    let f = fresh.to_str().unwrap();
    assert_eq!(
        cli(&[
            "run",
            p,
            "--audit-log",
            f,
            "--events",
            "/nonexistent/dir/ev"
        ]),
        EXIT_USAGE
    );
    assert!(!fresh.exists(), "{f} was left behind");
    // An existing audit log is kept (and not touched).
    assert_eq!(
        cli(&[
            "run",
            p,
            "--audit-log",
            a,
            "--events",
            "/nonexistent/dir/ev"
        ]),
        EXIT_USAGE
    );
    assert_eq!(std::fs::read_to_string(&audit).unwrap(), before);
    let _ = std::fs::remove_dir_all(&dir);
}
