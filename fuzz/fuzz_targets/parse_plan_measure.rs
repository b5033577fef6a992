//! The whole pure pipeline on arbitrary bytes: `plan::plan` (IGVM or OVMF/TDVF input,
//! auto-detected) then `measure::expected`, for a launch config taken from the first bytes.
//! Never panics, never allocates without bound (libFuzzer's -rss_limit_mb catches that).
//!
//! As in `parse`, IGVM-looking inputs are also tried with total_file_size and the CRC-32
//! repaired, so that mutations reach the planner.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relaunch_core::plan::{LaunchConfig, Platform};

fn config(b: &[u8; 4]) -> LaunchConfig {
    LaunchConfig {
        platform: Platform::ALL[usize::from(b[0]) % Platform::ALL.len()],
        vcpus: 1 + u32::from(b[1] % 4),
        mem_bytes: [16 << 20, 128 << 20, 1 << 30, 4 << 30][usize::from(b[2] % 4)],
        vcpu_sig: 0x800F12,
        guest_features: u64::from(b[3] >> 4) & 0x21,
        policy: if b[3] & 1 != 0 { Some(0x30000) } else { None },
        host_data: [0; 32],
        kernel_hashes: None,
    }
}

fn run(bundle: &[u8], cfg: &LaunchConfig) {
    if let Ok(plan) = relaunch_core::plan::plan(bundle, cfg) {
        let _ = relaunch_core::measure::expected(plan.stream());
    }
}

fn fix_up(data: &[u8]) -> Option<Vec<u8>> {
    if data.len() < 0x18 || data.get(..4)? != b"IGVM" {
        return None;
    }
    let mut f = data.to_vec();
    let len = u32::try_from(f.len()).ok()?;
    f[0x10..0x14].copy_from_slice(&len.to_le_bytes());
    f[0x14..0x18].fill(0);
    let word = |o: usize| u32::from_le_bytes(f[o..o + 4].try_into().unwrap());
    let fixed = if word(4) == 2 { 0x20 } else { 0x18 };
    let voff = word(8) as usize;
    let vend = voff.checked_add(word(12) as usize)?;
    let mut c = relaunch_core::crc32::Crc32::new();
    c.update(f.get(..fixed)?);
    c.update(f.get(voff..vend)?);
    let crc = c.finish();
    f[0x14..0x18].copy_from_slice(&crc.to_le_bytes());
    Some(f)
}

fuzz_target!(|data: &[u8]| {
    let Some((head, bundle)) = data.split_first_chunk::<4>() else {
        return;
    };
    let cfg = config(head);
    run(bundle, &cfg);
    if let Some(f) = fix_up(bundle) {
        run(&f, &cfg);
    }
});
