//! Soak: 1000 relaunches in one process, with no growth in open fds or RSS.
//!
//! A normal (not ignored) test: 1000 relaunches of the tiny reset guest take well under 60 s
//! on this host (release or debug). It prints fd count and RSS at start and end, and the
//! relaunch-latency percentiles it saw.

mod kvm_common;

use kvm_common::*;
use relaunch::session::EXIT_REBOOT_LIMIT;
use relaunch::testing;

const MEM: u64 = 256 << 20;
const RELAUNCHES: u64 = 1000;

#[test]
fn kvm_soak_1000_relaunches_without_fd_or_rss_growth() {
    let Some(host) = host(true) else { return };
    let plan = testing::plan(testing::RESET, &[], 1, MEM, 0);
    // Warm up: thread stacks, allocator arenas, the stdout/stderr locks.
    let warm = config(MEM, Some(20), false);
    assert_eq!(run(&host, &plan, &warm).exit_code, EXIT_REBOOT_LIMIT);
    let (fds0, rss0) = (fd_count(), rss_kib());
    println!("start: {fds0} fds, RSS {rss0} KiB");
    let cfg = config(MEM, Some(RELAUNCHES), false);
    let t = std::time::Instant::now();
    let r = run(&host, &plan, &cfg);
    let took = t.elapsed();
    let (fds1, rss1) = (fd_count(), rss_kib());
    println!("end:   {fds1} fds, RSS {rss1} KiB");
    println!(
        "{} launches in {took:?}; relaunch latency p50 {} us, p99 {} us; reset->start p50 {} us",
        r.launches,
        pct_us(&r.relaunch_latency, 0.5),
        pct_us(&r.relaunch_latency, 0.99),
        pct_us(&r.reset_to_start, 0.5),
    );
    assert_eq!(r.exit_code, EXIT_REBOOT_LIMIT, "{:?}", r.outcome);
    assert_eq!(r.launches, RELAUNCHES + 1);
    assert_eq!(r.relaunch_latency.len() as u64, RELAUNCHES);
    assert_eq!(fds1, fds0, "open fds grew");
    // Event lines are kept in memory by this test's sink (~400 B each): allow for them plus
    // allocator noise, but not for a leaked VM (each would be ≥ 100 KiB of kvm_run + pages).
    let allowance = 1024 + 400 * RELAUNCHES / 1024 * 2;
    assert!(
        rss1 <= rss0 + allowance,
        "RSS grew from {rss0} to {rss1} KiB (allowance {allowance} KiB)"
    );
}
