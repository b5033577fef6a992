//! `IgvmFile::parse` on arbitrary bytes: never panics, and whatever it accepts can be
//! walked, displayed and layout-checked without panicking.
//!
//! Every input is tried twice: as is (exercises the fixed header and CRC checks), and with
//! total_file_size and the checksum patched to be right, so that the fuzzer gets past the
//! CRC and explores the variable headers.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relaunch_core::igvm::IgvmFile;

fn exercise(data: &[u8]) {
    match IgvmFile::parse(data) {
        Ok(file) => {
            let mut n = 0u32;
            for h in file.headers() {
                assert_eq!(h.index, n);
                n += 1;
                let _ = h.header.compatibility_mask();
                let _ = h.header.type_code();
                let _ = h.header.parameter();
                let _ = std::format!("{h:?}");
            }
            assert_eq!(n, file.header_count());
            for p in file.platforms() {
                assert_eq!(file.mask_for(p.platform_type), Some(p.compatibility_mask));
                if let Err(e) = file.check_page_layout(p.compatibility_mask) {
                    let _ = std::format!("{e}");
                }
            }
            let _ = file.check_page_layout(u32::MAX);
        }
        Err(e) => {
            let _ = std::format!("{e}");
        }
    }
}

/// Sets total_file_size and the CRC-32 (fixed header with checksum 0, then the variable
/// header region) to the values the bytes need.
fn fix_up(data: &[u8]) -> Option<Vec<u8>> {
    let mut f = data.get(..)?.to_vec();
    if f.len() < 0x18 {
        return None;
    }
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
    exercise(data);
    if let Some(f) = fix_up(data) {
        exercise(&f);
    }
});
