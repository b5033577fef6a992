//! The native KVM backend end to end with hand-assembled guests (`relaunch::testing`): boot,
//! serial output, every reset and power-off path, fw_cfg launch generation, SMP via
//! INIT/SIPI, a hostile guest, prestaging, guest_memfd and anonymous RAM, the audit log.

mod kvm_common;

use kvm_common::*;
use relaunch::devices::ResetSource;
use relaunch::session::{EXIT_GUEST_FATAL, EXIT_POWER_OFF, EXIT_REBOOT_LIMIT};
use relaunch::testing;
use relaunch::vcpu::Outcome;
use relaunch::vstate::MemoryBacking;

const MEM: u64 = 64 << 20;

#[test]
fn kvm_hello_powers_off() {
    for gmem in [true, false] {
        let Some(host) = host(gmem) else { return };
        // What this host must do: guest_memfd exactly where KVM offers MMAP|INIT_SHARED
        // (machines here differ), anonymous memory when asked to avoid it.
        let want = relaunch::sys::kvm::GUEST_MEMFD_FLAG_MMAP
            | relaunch::sys::kvm::GUEST_MEMFD_FLAG_INIT_SHARED;
        let offered = host.gmem_flags & want == want;
        let expect = if gmem && offered {
            MemoryBacking::GuestMemfd
        } else {
            MemoryBacking::Anonymous
        };
        assert_eq!(host.backing, expect, "gmem_flags {:#x}", host.gmem_flags);
        if gmem && !offered {
            println!("SKIPPED (guest_memfd backing): KVM_CAP_GUEST_MEMFD_FLAGS lacks MMAP|INIT_SHARED here");
        }
        let plan = testing::plan(testing::HELLO, &[], 1, MEM, 0);
        let cfg = config(MEM, None, false);
        let r = run(&host, &plan, &cfg);
        assert_eq!(r.exit_code, EXIT_POWER_OFF, "{:?}", r.outcome);
        assert_eq!(r.launches, 1);
        assert_eq!(output(&cfg), "hello from a hand-built plan\n");
        let ev = events(&cfg);
        assert_eq!(ev.len(), 1);
        assert!(ev[0].contains("\"outcome\":\"power-off\""), "{}", ev[0]);
        assert!(ev[0].contains("\"exit_code\":0"), "{}", ev[0]);
        println!("backing {:?}: {}", host.backing, ev[0]);
    }
}

#[test]
fn kvm_i8042_reset_relaunches_until_limit() {
    let Some(host) = host(true) else { return };
    let plan = testing::plan(testing::RESET, &[], 1, MEM, 0);
    let cfg = config(MEM, Some(5), false);
    let r = run(&host, &plan, &cfg);
    assert_eq!(r.exit_code, EXIT_REBOOT_LIMIT);
    assert_eq!(r.launches, 6);
    assert_eq!(r.outcome, Outcome::Reset(ResetSource::I8042));
    assert_eq!(r.relaunch_latency.len(), 5);
    let ev = events(&cfg);
    assert_eq!(ev.len(), 6);
    for (i, e) in ev.iter().enumerate() {
        assert!(e.contains(&format!("\"generation\":{}", i + 1)), "{e}");
        assert!(e.contains("\"reason\":\"i8042\""), "{e}");
    }
    assert!(ev[5].contains("\"exit_code\":4"));
    assert!(ev[1].contains("\"relaunch_latency_us\":"));
    println!(
        "relaunch latency p50 {} us, max {} us",
        pct_us(&r.relaunch_latency, 0.5),
        pct_us(&r.relaunch_latency, 1.0)
    );
}

#[test]
fn kvm_fw_cfg_generation_and_cf9_reset() {
    for prestage in [false, true] {
        let Some(host) = host(true) else { return };
        let plan = testing::plan(testing::FW_LOOP, &[], 1, MEM, 0);
        let mut cfg = config(MEM, None, prestage);
        cfg.fw_cfg_files = vec![(
            "opt/relaunch/reboot-until".into(),
            4u64.to_le_bytes().to_vec(),
        )];
        let r = run(&host, &plan, &cfg);
        assert_eq!(r.exit_code, EXIT_POWER_OFF, "{:?}", r.outcome);
        assert_eq!(r.launches, 4);
        assert_eq!(output(&cfg), "g1\ng2\ng3\ng4\n");
        let ev = events(&cfg);
        assert!(ev[0].contains("\"reason\":\"cf9\""), "{}", ev[0]);
        println!(
            "prestage {prestage}: relaunch latency {:?}",
            r.relaunch_latency
        );
    }
}

#[test]
fn kvm_triple_fault_is_a_reset() {
    let Some(host) = host(true) else { return };
    let plan = testing::plan_with_regs(
        testing::TRIPLE_FAULT,
        testing::protected_mode_regs(testing::CODE_GPA),
        1,
        MEM,
    );
    let cfg = config(MEM, Some(1), false);
    let r = run(&host, &plan, &cfg);
    assert_eq!(r.outcome, Outcome::Reset(ResetSource::TripleFault));
    assert_eq!(r.exit_code, EXIT_REBOOT_LIMIT);
    assert_eq!(r.launches, 2);
}

#[test]
fn kvm_pvpanic_is_guest_fatal() {
    let Some(host) = host(true) else { return };
    let plan = testing::plan(testing::PANIC, &[], 1, MEM, 0);
    let cfg = config(MEM, None, false);
    let r = run(&host, &plan, &cfg);
    assert_eq!(r.exit_code, EXIT_GUEST_FATAL);
    assert_eq!(r.outcome, Outcome::GuestFatal("pvpanic".into()));
}

#[test]
fn kvm_hostile_guest_is_survived() {
    let Some(host) = host(true) else { return };
    let plan = testing::plan(testing::JUNK, &[], 1, MEM, 0);
    let cfg = config(MEM, None, false);
    let r = run(&host, &plan, &cfg);
    assert_eq!(r.exit_code, EXIT_POWER_OFF, "{:?}", r.outcome);
    let ev = events(&cfg);
    let e = &ev[0];
    let unknown: u64 = e
        .split("\"unknown_io\":")
        .nth(1)
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|s| s.parse().ok())
        .unwrap();
    assert!(unknown > 10_000, "{e}");
    // The DMA request outside RAM (the second one, at 0x3000, reads an all-zero request:
    // a no-op that succeeds).
    assert!(e.contains("\"fw_cfg_dma_errors\":1"), "{e}");
    // The console got the junk bytes, bounded by the capture.
    assert!(!cfg.console.captured().is_empty());
}

#[test]
fn kvm_smp_aps_start_by_init_sipi() {
    let Some(host) = host(true) else { return };
    for vcpus in [2u32, 4] {
        let plan = testing::smp_plan(vcpus, MEM);
        let cfg = config(MEM, None, false);
        let r = run(&host, &plan, &cfg);
        assert_eq!(r.exit_code, EXIT_POWER_OFF, "{:?}", r.outcome);
        let out = output(&cfg);
        assert_eq!(out.matches('A').count(), (vcpus - 1) as usize, "{out:?}");
        assert!(out.ends_with("S\n"), "{out:?}");
    }
}

/// An AP's outcome must stop vCPU 0, which runs on the session thread itself and here sleeps
/// in an in-kernel `hlt` with interrupts off: only the kick signal gets it out of `KVM_RUN`.
/// A lost kick would hang the session, so it runs on its own thread with a deadline.
#[test]
fn kvm_ap_outcome_kicks_vcpu0_on_the_session_thread() {
    let Some(host) = host(true) else { return };
    // SMP_BSP up to its SIPI (LAPIC on, INIT + SIPI vector 2 to all others), then
    // `1: cli; hlt; jmp 1b`.
    let mut bsp = testing::SMP_BSP[..44].to_vec();
    bsp.extend_from_slice(&[0xfa, 0xf4, 0xeb, 0xfc]);
    // The AP at 0x2000: `mov $0x604, %dx; mov $0x2000, %ax; out %ax, %dx` (PM1a SLP_EN:
    // power-off), then `1: hlt; jmp 1b`.
    const AP_POWER_OFF: &[u8] = &[0xba, 0x04, 0x06, 0xb8, 0x00, 0x20, 0xef, 0xf4, 0xeb, 0xfd];
    let plan = testing::plan(
        &bsp,
        &[(testing::AP_GPA, AP_POWER_OFF)],
        2,
        MEM,
        0xFEE0_0000,
    );
    let cfg = config(MEM, None, false);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let r = run(&host, &plan, &cfg);
        let _ = tx.send((r, events(&cfg)));
    });
    let (r, ev) = rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("the session did not end: vCPU 0 was not kicked out of its hlt");
    assert_eq!(r.exit_code, EXIT_POWER_OFF, "{:?}", r.outcome);
    assert_eq!(r.outcome, Outcome::PowerOff("acpi-pm1-slp-en"));
    assert_eq!(ev.len(), 1);
}

/// A plan that cannot be executed (a page outside guest RAM) ends the session with exit
/// code 1 and one `exit` line (written through the reaper when there is no audit log).
#[test]
fn kvm_unexecutable_plan_is_a_vmm_error_with_an_event_line() {
    let Some(host) = host(true) else { return };
    let plan = testing::plan(testing::HELLO, &[(MEM + 0x1000, &[1u8][..])], 1, MEM, 0);
    let cfg = config(MEM, None, false);
    let r = run(&host, &plan, &cfg);
    assert_eq!(
        r.exit_code,
        relaunch::session::EXIT_VMM_ERROR,
        "{:?}",
        r.outcome
    );
    assert_eq!(r.launches, 0);
    let ev = events(&cfg);
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert!(ev[0].contains("\"outcome\":\"vmm-error\""), "{}", ev[0]);
    assert!(ev[0].contains("\"exit_code\":1"), "{}", ev[0]);
    assert!(output(&cfg).is_empty());
}

#[test]
fn kvm_audit_log_records_every_launch_before_it_runs() {
    let Some(host) = host(true) else { return };
    let path =
        std::env::temp_dir().join(format!("relaunch-kvm-audit-{}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let plan = testing::plan(testing::RESET, &[], 1, MEM, 0);
    let cfg = with_audit(config(MEM, Some(2), false), &path);
    let r = run(&host, &plan, &cfg);
    assert_eq!(r.exit_code, EXIT_REBOOT_LIMIT);
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 6, "{text}");
    for (i, pair) in lines.chunks(2).enumerate() {
        let g = format!("\"generation\":{}", i + 1);
        assert!(pair[0].starts_with("{\"event\":\"launch\""), "{}", pair[0]);
        assert!(pair[0].contains(&g));
        // The SHA-256 of the bytes the plan was made from (a hand-built plan's code).
        let sha = relaunch::json::hex(&<sha2::Sha256 as sha2::Digest>::digest(plan.bundle()));
        assert!(pair[0].contains(&format!("\"bundle_sha256\":\"{sha}\"")));
        assert!(pair[0].contains("\"platform\":\"native\""));
        assert!(pair[0].contains("\"predicted_measurement\":null"));
        assert!(pair[0].contains(&format!("\"mem\":{MEM}")));
        assert!(pair[0].contains("\"execute_us\":"));
        assert!(pair[1].starts_with("{\"event\":\"exit\""), "{}", pair[1]);
        assert!(pair[1].contains(&g));
        assert!(pair[1].contains("\"outcome\":\"reset\""));
    }
    let _ = std::fs::remove_file(&path);
}

/// The session runs the launch it is handed at its next relaunch: a guest that resets is
/// replaced by one that powers off, and the audit log names both bundles.
#[test]
fn kvm_session_switches_launch_at_relaunch() {
    let Some(host) = host(true) else { return };
    let path =
        std::env::temp_dir().join(format!("relaunch-kvm-switch-{}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let reset = testing::plan(testing::RESET, &[], 1, MEM, 0).launch();
    let hello = testing::plan(testing::HELLO, &[], 1, MEM, 0).launch();
    let cfg = with_audit(config(MEM, Some(5), false), &path);
    cfg.next.set(std::sync::Arc::clone(&hello));
    let r = run(&host, &reset, &cfg);
    assert_eq!(r.exit_code, EXIT_POWER_OFF, "{:?}", r.outcome);
    assert_eq!((r.launches, r.generation), (2, 2));
    assert_eq!(output(&cfg), "hello from a hand-built plan\n");
    let text = std::fs::read_to_string(&path).unwrap();
    let launches: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("{\"event\":\"launch\""))
        .collect();
    assert_eq!(launches.len(), 2, "{text}");
    assert!(launches[0].contains("\"generation\":1"));
    assert!(launches[1].contains("\"generation\":2"));
    assert_ne!(reset.id(), hello.id());
    let _ = std::fs::remove_file(&path);
}

/// More resets than the limit allows within its interval stop the session with exit code 4,
/// and the last exit record says why.
#[test]
fn kvm_reset_rate_limit_stops_a_reboot_storm() {
    let Some(host) = host(true) else { return };
    let plan = testing::plan(testing::RESET, &[], 1, MEM, 0);
    let mut cfg = config(MEM, None, false);
    cfg.reset_limit = relaunch::session::ResetLimit::parse("3/60s");
    let r = run(&host, &plan, &cfg);
    assert_eq!(r.exit_code, EXIT_REBOOT_LIMIT, "{:?}", r.outcome);
    // Three resets relaunch; the fourth within the minute stops.
    assert_eq!(r.launches, 4);
    let why = r.stopped_by.expect("stopped by the limit");
    assert!(why.contains("4 resets within 60000 ms"), "{why}");
    let ev = events(&cfg);
    assert_eq!(ev.len(), 4);
    assert!(
        ev[3].contains("\"stopped_by\":\"reset rate limit"),
        "{}",
        ev[3]
    );
    assert!(ev[3].contains("\"exit_code\":4"), "{}", ev[3]);
    assert!(ev[2].contains("\"stopped_by\":null"), "{}", ev[2]);
}

/// A guest that resets in a loop while `fdatasync` is slow: dead VMs pile up behind the
/// droppers, and the backlog bound holds them at the limit (the relaunch waits instead).
#[test]
fn kvm_dead_vm_backlog_is_bounded_with_a_slow_fdatasync() {
    let Some(host) = host(true) else { return };
    let path =
        std::env::temp_dir().join(format!("relaunch-kvm-backlog-{}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let plan = testing::plan(testing::RESET, &[], 1, MEM, 0);
    let mut cfg = with_audit(config(MEM, Some(40), false), &path);
    cfg.backlog = relaunch::session::BacklogLimit {
        vms: 3,
        bytes: 1 << 40,
    };
    cfg.audit
        .as_ref()
        .unwrap()
        .set_sync_delay(std::time::Duration::from_millis(15));
    let r = run(&host, &plan, &cfg);
    assert_eq!(r.exit_code, EXIT_REBOOT_LIMIT, "{:?}", r.outcome);
    assert_eq!(r.launches, 41);
    // With 15 ms per sync and two droppers, a reset every ≈ 1 ms would queue dozens.
    assert!(r.peak_backlog >= 2, "peak {}", r.peak_backlog);
    assert!(r.peak_backlog <= 3, "peak {}", r.peak_backlog);
    // The byte bound: one 64 MiB VM at a time.
    let mut cfg = with_audit(config(MEM, Some(10), false), &path);
    cfg.backlog = relaunch::session::BacklogLimit {
        vms: 32,
        bytes: MEM,
    };
    cfg.audit
        .as_ref()
        .unwrap()
        .set_sync_delay(std::time::Duration::from_millis(10));
    let r = run(&host, &plan, &cfg);
    assert_eq!(r.exit_code, EXIT_REBOOT_LIMIT, "{:?}", r.outcome);
    assert_eq!(r.peak_backlog, 1);
    let _ = std::fs::remove_file(&path);
}

/// A port access covers consecutive ports, one register per byte: a 16-bit `out` to THR
/// writes THR and IER, a 16-bit `in` from RBR reads RBR and IER. The guest prints 'A'
/// (the low byte), then IER (the high byte, 2) as a digit, and powers off.
///
/// ```text
/// .code16
///   mov $0x3f8, %dx
///   mov $0x0241, %ax    # 'A' to THR, IER_THRE (2) to IER
///   out %ax, %dx
///   in  %dx, %ax        # AL = RBR (no input: 0), AH = IER
///   mov %ah, %al
///   add $0x30, %al
///   out %al, %dx
///   mov $0xa, %al
///   out %al, %dx
///   mov $0x604, %dx
///   mov $0x2000, %ax
///   out %ax, %dx
/// 1: hlt
///   jmp 1b
/// ```
#[test]
fn kvm_wide_uart_accesses_cover_consecutive_registers() {
    const WIDE_UART: &[u8] = &[
        0xba, 0xf8, 0x03, 0xb8, 0x41, 0x02, 0xef, 0xed, 0x88, 0xe0, 0x04, 0x30, 0xee, 0xb0, 0x0a,
        0xee, 0xba, 0x04, 0x06, 0xb8, 0x00, 0x20, 0xef, 0xf4, 0xeb, 0xfd,
    ];
    let Some(host) = host(true) else { return };
    let plan = testing::plan(WIDE_UART, &[], 1, MEM, 0);
    let cfg = config(MEM, None, false);
    let r = run(&host, &plan, &cfg);
    assert_eq!(r.exit_code, EXIT_POWER_OFF, "{:?}", r.outcome);
    // Before: "A\x02" from the `out`, then IER read back as 0.
    assert_eq!(output(&cfg), "A2\n");
}
