//! The SEV-SNP CPUID page: the table of CPUID results the AMD Secure Processor checks at
//! `SNP_LAUNCH_UPDATE` (page type CPUID, 6) and the guest then trusts instead of asking the
//! hypervisor (`Documentation/virt/coco/sev-guest.rst`, "SEV-SNP CPUID Enforcement").
//!
//! Layout (SEV-SNP firmware ABI, "CPUID reporting": `SNP_CPUID_FUNCTION` table; the same
//! layout in QEMU `target/i386/sev.c` `SnpCpuidInfo`/`SnpCpuidFunc`, Linux
//! `arch/x86/include/asm/sev.h` `struct snp_cpuid_table`, and the firmware's own
//! `amd/AMD-ASPFW` `fw/psp_bl_uapps/sev_uapp/src/cpuid_lookup.h`): `count` u32 @0, two
//! reserved fields (u32 @4, u64 @8) that must be 0, then at most 64 functions of 48 bytes
//! from @16: `eax_in` u32, `ecx_in` u32, `xcr0_in` u64, `xss_in` u64, `eax`, `ebx`, `ecx`,
//! `edx` u32, `reserved` u64. The rest of the 4 KiB page is zero.
//!
//! The page is built as QEMU builds it ([`CpuidTable::from_kvm`], `sev_snp_cpuid_info_fill`
//! via `snp_launch_update_cpuid`), for an IGVM `CPUID_DATA`/`CPUID_XF` page
//! (`backends/igvm.c` maps both to `CGS_PAGE_TYPE_CPUID`, and `sev.c` discards the file's
//! contents) and for OVMF's SEV metadata CPUID section alike. The page is not measured (its
//! PAGE_INFO contents are zero), so what it holds never changes the launch digest.

use std::mem::{offset_of, size_of};

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

/// Most functions a page holds (`SNP_CPUID_FUNCTION_MAXCOUNT` in QEMU, `SNP_CPUID_COUNT_MAX`
/// in the firmware).
pub const MAX_FUNCTIONS: usize = 64;

/// One `SNP_CPUID_FUNCTION` (48 bytes, little-endian, no padding: the field offsets are
/// pinned below).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuidFunction {
    /// CPUID leaf (EAX input).
    pub eax_in: u32,
    /// Subleaf (ECX input); 0 for leaves whose subleaf is not significant.
    pub ecx_in: u32,
    /// The XCR0 value the result applies to (leaf 0xD subleaves 0 and 1).
    pub xcr0_in: u64,
    /// The IA32_XSS value the result applies to (leaf 0xD subleaf 1).
    pub xss_in: u64,
    /// Result EAX.
    pub eax: u32,
    /// Result EBX.
    pub ebx: u32,
    /// Result ECX.
    pub ecx: u32,
    /// Result EDX.
    pub edx: u32,
    /// Reserved, must be 0.
    pub reserved: u64,
}

/// Offset of the first function in the page.
const FUNCTIONS_AT: usize = 16;

const _: () = {
    assert!(size_of::<CpuidFunction>() == 48);
    assert!(offset_of!(CpuidFunction, eax_in) == 0);
    assert!(offset_of!(CpuidFunction, ecx_in) == 4);
    assert!(offset_of!(CpuidFunction, xcr0_in) == 8);
    assert!(offset_of!(CpuidFunction, xss_in) == 16);
    assert!(offset_of!(CpuidFunction, eax) == 24);
    assert!(offset_of!(CpuidFunction, ebx) == 28);
    assert!(offset_of!(CpuidFunction, ecx) == 32);
    assert!(offset_of!(CpuidFunction, edx) == 36);
    assert!(offset_of!(CpuidFunction, reserved) == 40);
    // The whole table fits the page: 16 + 64 × 48 = 3088 bytes.
    assert!(FUNCTIONS_AT + MAX_FUNCTIONS * size_of::<CpuidFunction>() <= 4096);
};

/// The table a CPUID page holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CpuidTable {
    /// `count` as written in the page (may exceed [`MAX_FUNCTIONS`] in a page read back).
    pub count: u32,
    /// Reserved u32 @4 (must be 0).
    pub reserved1: u32,
    /// Reserved u64 @8 (must be 0).
    pub reserved2: u64,
    /// The first `min(count, 64)` functions.
    pub functions: Vec<CpuidFunction>,
}

/// The vCPU's CPUID has more entries than a CPUID page holds (QEMU refuses the same:
/// "CPUID entry count (%d) exceeds max (%d)").
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "the vCPU's CPUID has {0} entries that are not all-zero; the SNP CPUID page holds at \
     most {MAX_FUNCTIONS} (SEV-SNP firmware ABI, CPUID reporting)"
)]
pub struct TooManyFunctions(pub usize);

fn u32_at(page: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    if let Some(s) = page.get(at..at + 4) {
        b.copy_from_slice(s);
    }
    u32::from_le_bytes(b)
}

fn u64_at(page: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    if let Some(s) = page.get(at..at + 8) {
        b.copy_from_slice(s);
    }
    u64::from_le_bytes(b)
}

fn put(page: &mut [u8], at: usize, bytes: &[u8]) {
    if let Some(d) = page.get_mut(at..at + bytes.len()) {
        d.copy_from_slice(bytes);
    }
}

impl CpuidTable {
    /// The page QEMU gives the firmware for a vCPU whose CPUID is `cpuid`
    /// (`sev_snp_cpuid_info_fill`): one function per entry, in the entry order; `ecx_in` is
    /// the entry's index when its flags are exactly `KVM_CPUID_FLAG_SIGNIFCANT_INDEX`, else
    /// 0; `xcr0_in`/`xss_in` 0, except leaf 0xD subleaves 0 and 1, whose EBX becomes 0x240
    /// (the legacy XSAVE area: x87 + SSE, what XCR0 = 1 enables) with `xcr0_in` 1 and
    /// `xss_in` 0 ("guest kernels will calculate EBX themselves using the 0xD
    /// subfunctions").
    ///
    /// A CPUID with more than 64 entries (KVM lists every leaf up to the host's maximum
    /// basic and extended leaf, most of them all-zero on some hosts: 75 entries on the nested
    /// hosts these tests run on) loses its all-zero entries first: an SNP guest treats a
    /// leaf missing from the table as all-zero when it lies in the table's ranges (Linux
    /// `arch/x86/boot/startup/sev-shared.c` `snp_cpuid`: "Some hypervisors will avoid keeping
    /// track of CPUID entries where all values are zero, since they can be handled the same
    /// as out-of-range values"), so the guest sees the same CPUID. Leaves 0, 0x4000_0000
    /// and 0x8000_0000 (the ranges) are never all-zero. The page is not measured, so the
    /// launch digest does not change either. QEMU refuses such a CPUID instead.
    ///
    /// # Errors
    /// [`TooManyFunctions`] for more than 64 entries that are not all-zero.
    pub fn from_kvm(cpuid: &CpuId) -> Result<CpuidTable, TooManyFunctions> {
        let all = cpuid.as_slice();
        let compact: Vec<kvm_cpuid_entry2>;
        let entries = if all.len() > MAX_FUNCTIONS {
            compact = all
                .iter()
                .filter(|e| (e.eax, e.ebx, e.ecx, e.edx) != (0, 0, 0, 0))
                .copied()
                .collect();
            if compact.len() > MAX_FUNCTIONS {
                return Err(TooManyFunctions(compact.len()));
            }
            &compact[..]
        } else {
            all
        };
        let functions = entries
            .iter()
            .map(|e| {
                let ecx_in = if e.flags == KVM_CPUID_FLAG_SIGNIFCANT_INDEX {
                    e.index
                } else {
                    0
                };
                let mut f = CpuidFunction {
                    eax_in: e.function,
                    ecx_in,
                    eax: e.eax,
                    ebx: e.ebx,
                    ecx: e.ecx,
                    edx: e.edx,
                    ..CpuidFunction::default()
                };
                if f.eax_in == 0xD && f.ecx_in <= 1 {
                    f.ebx = 0x240;
                    f.xcr0_in = 1;
                    f.xss_in = 0;
                }
                f
            })
            .collect::<Vec<_>>();
        Ok(CpuidTable {
            count: functions.len() as u32,
            reserved1: 0,
            reserved2: 0,
            functions,
        })
    }

    /// The 4 KiB page holding this table (zero past the last function). Functions past 64
    /// are not written (a table from [`CpuidTable::from_kvm`] has none).
    pub fn to_page(&self) -> [u8; 4096] {
        let mut page = [0u8; 4096];
        put(&mut page, 0, &self.count.to_le_bytes());
        put(&mut page, 4, &self.reserved1.to_le_bytes());
        put(&mut page, 8, &self.reserved2.to_le_bytes());
        for (i, f) in self.functions.iter().take(MAX_FUNCTIONS).enumerate() {
            let at = FUNCTIONS_AT + i * size_of::<CpuidFunction>();
            put(
                &mut page,
                at + offset_of!(CpuidFunction, eax_in),
                &f.eax_in.to_le_bytes(),
            );
            put(
                &mut page,
                at + offset_of!(CpuidFunction, ecx_in),
                &f.ecx_in.to_le_bytes(),
            );
            put(
                &mut page,
                at + offset_of!(CpuidFunction, xcr0_in),
                &f.xcr0_in.to_le_bytes(),
            );
            put(
                &mut page,
                at + offset_of!(CpuidFunction, xss_in),
                &f.xss_in.to_le_bytes(),
            );
            put(
                &mut page,
                at + offset_of!(CpuidFunction, eax),
                &f.eax.to_le_bytes(),
            );
            put(
                &mut page,
                at + offset_of!(CpuidFunction, ebx),
                &f.ebx.to_le_bytes(),
            );
            put(
                &mut page,
                at + offset_of!(CpuidFunction, ecx),
                &f.ecx.to_le_bytes(),
            );
            put(
                &mut page,
                at + offset_of!(CpuidFunction, edx),
                &f.edx.to_le_bytes(),
            );
            put(
                &mut page,
                at + offset_of!(CpuidFunction, reserved),
                &f.reserved.to_le_bytes(),
            );
        }
        page
    }

    /// The table a page holds (any bytes: a count above 64 keeps the first 64 functions; a
    /// short slice reads as zeros past its end).
    pub fn from_page(page: &[u8]) -> CpuidTable {
        let count = u32_at(page, 0);
        let n = (count as usize).min(MAX_FUNCTIONS);
        let functions = (0..n)
            .map(|i| {
                let at = FUNCTIONS_AT + i * size_of::<CpuidFunction>();
                CpuidFunction {
                    eax_in: u32_at(page, at + offset_of!(CpuidFunction, eax_in)),
                    ecx_in: u32_at(page, at + offset_of!(CpuidFunction, ecx_in)),
                    xcr0_in: u64_at(page, at + offset_of!(CpuidFunction, xcr0_in)),
                    xss_in: u64_at(page, at + offset_of!(CpuidFunction, xss_in)),
                    eax: u32_at(page, at + offset_of!(CpuidFunction, eax)),
                    ebx: u32_at(page, at + offset_of!(CpuidFunction, ebx)),
                    ecx: u32_at(page, at + offset_of!(CpuidFunction, ecx)),
                    edx: u32_at(page, at + offset_of!(CpuidFunction, edx)),
                    reserved: u64_at(page, at + offset_of!(CpuidFunction, reserved)),
                }
            })
            .collect();
        CpuidTable {
            count,
            reserved1: u32_at(page, 4),
            reserved2: u64_at(page, 8),
            functions,
        }
    }

    /// What differs between the table given to the firmware (`self`) and the one it wrote
    /// back (`corrected`), one phrase per differing function, as QEMU reports it
    /// (`sev_snp_cpuid_report_mismatches`: a count mismatch alone, else every function whose
    /// bytes differ, with the values provided and expected). Empty when they are equal.
    pub fn mismatches(&self, corrected: &CpuidTable) -> Vec<String> {
        if self.count != corrected.count {
            return vec![format!(
                "count {} given, {} expected",
                self.count, corrected.count
            )];
        }
        let mut out = Vec::new();
        if (self.reserved1, self.reserved2) != (corrected.reserved1, corrected.reserved2) {
            out.push("the reserved header fields".to_string());
        }
        for (g, c) in self.functions.iter().zip(&corrected.functions) {
            if g == c {
                continue;
            }
            let regs: Vec<String> = [
                ("eax", g.eax, c.eax),
                ("ebx", g.ebx, c.ebx),
                ("ecx", g.ecx, c.ecx),
                ("edx", g.edx, c.edx),
            ]
            .iter()
            .filter(|(_, a, b)| a != b)
            .map(|(r, a, b)| format!("{r} {a:#010x} expected {b:#010x}"))
            .collect();
            let what = if regs.is_empty() {
                "inputs or reserved field".to_string()
            } else {
                regs.join(", ")
            };
            out.push(format!(
                "leaf {:#x} subleaf {:#x}: {what}",
                g.eax_in, g.ecx_in
            ));
        }
        out
    }
}

/// Clears the CPUID bits QEMU hides from every SNP guest (`target/i386/sev.c`
/// `sev_snp_mask_cpuid_features`, applied to the vCPU's CPUID and so to the CPUID page):
/// leaf 1 ECX TSC_DEADLINE (bit 24); leaf 7.0 EBX TSC_ADJUST (bit 1); leaf 7.0 EDX
/// SPEC_CTRL, STIBP, FLUSH_L1D, ARCH_CAPABILITIES, CORE_CAPABILITY and SPEC_CTRL_SSBD (bits
/// 26–31); leaf 0x80000008 EBX VIRT_SSBD (bit 25). Bit numbers: QEMU `target/i386/cpu.h`
/// `CPUID_EXT_TSC_DEADLINE_TIMER`, `CPUID_7_0_EBX_TSC_ADJUST`, `CPUID_7_0_EDX_*`,
/// `CPUID_8000_0008_EBX_VIRT_SSBD`.
pub fn mask_snp_features(entries: &mut [kvm_cpuid_entry2]) {
    for e in entries {
        match (e.function, e.index) {
            (1, _) => e.ecx &= !(1 << 24),
            (7, 0) => {
                e.ebx &= !(1 << 1);
                e.edx &= !(0x3F << 26);
            }
            (0x8000_0008, _) => e.ebx &= !(1 << 25),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32, flags: u32, regs: [u32; 4]) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            flags,
            eax: regs[0],
            ebx: regs[1],
            ecx: regs[2],
            edx: regs[3],
            ..Default::default()
        }
    }

    /// QEMU's rules (`sev_snp_cpuid_info_fill`): entry order kept, `ecx_in` only for
    /// significant-index entries, leaf 0xD subleaves 0/1 forced to EBX 0x240 with
    /// `xcr0_in` 1, other subleaves of 0xD untouched; the byte layout as the ABI's table.
    #[test]
    fn page_is_built_as_qemu_builds_it() {
        let sig = KVM_CPUID_FLAG_SIGNIFCANT_INDEX;
        let cpuid = CpuId::from_entries(&[
            entry(0, 0, 0, [0xD, 1, 2, 3]),
            entry(4, 3, 0, [4, 4, 4, 4]),
            entry(7, 0, sig, [0, 0x1A9, 0, 0]),
            entry(0xD, 0, sig, [7, 0x340, 0x340, 0]),
            entry(0xD, 1, sig, [1, 0x340, 0, 0]),
            entry(0xD, 2, sig, [0x100, 0x240, 0, 0]),
            entry(0x8000_001D, 1, sig, [0x121, 0x1C0_003F, 0x3F, 0]),
        ])
        .unwrap();
        let t = CpuidTable::from_kvm(&cpuid).unwrap();
        assert_eq!(t.count, 7);
        let ins: Vec<(u32, u32, u64, u32)> = t
            .functions
            .iter()
            .map(|f| (f.eax_in, f.ecx_in, f.xcr0_in, f.ebx))
            .collect();
        assert_eq!(
            ins,
            [
                (0, 0, 0, 1),
                // Index 3 without the significant-index flag: ecx_in 0.
                (4, 0, 0, 4),
                (7, 0, 0, 0x1A9),
                (0xD, 0, 1, 0x240),
                (0xD, 1, 1, 0x240),
                (0xD, 2, 0, 0x240),
                (0x8000_001D, 1, 0, 0x1C0_003F),
            ]
        );
        let page = t.to_page();
        // count @0, function 3 (leaf 0xD.0) at 16 + 3 × 48: eax_in, ecx_in, xcr0_in, ...,
        // eax @+24, ebx @+28, ecx @+32.
        assert_eq!(&page[0..4], &7u32.to_le_bytes());
        let f3 = 16 + 3 * 48;
        assert_eq!(&page[f3..f3 + 4], &0xDu32.to_le_bytes());
        assert_eq!(&page[f3 + 8..f3 + 16], &1u64.to_le_bytes());
        assert_eq!(&page[f3 + 24..f3 + 28], &7u32.to_le_bytes());
        assert_eq!(&page[f3 + 28..f3 + 32], &0x240u32.to_le_bytes());
        assert_eq!(&page[f3 + 32..f3 + 36], &0x340u32.to_le_bytes());
        assert!(page[16 + 7 * 48..].iter().all(|&b| b == 0));
        assert_eq!(CpuidTable::from_page(&page), t);
    }

    /// More than 64 entries: the all-zero ones are left out (the guest reads a missing
    /// in-range leaf as zeros), the rest kept in order; more than 64 non-zero ones are
    /// refused. 64 or fewer are kept whole, zeros included (as QEMU's page).
    #[test]
    fn more_than_64_entries_lose_the_all_zero_ones_or_are_refused() {
        let many: Vec<kvm_cpuid_entry2> =
            (0..65).map(|i| entry(i, 0, 0, [i + 1, 0, 0, 0])).collect();
        let cpuid = CpuId::from_entries(&many).unwrap();
        assert_eq!(CpuidTable::from_kvm(&cpuid), Err(TooManyFunctions(65)));
        let ok = CpuId::from_entries(&many[..64]).unwrap();
        assert_eq!(CpuidTable::from_kvm(&ok).unwrap().count, 64);
        // 75 entries as on a host whose maximum leaves leave gaps: 11 all-zero.
        let mut host: Vec<kvm_cpuid_entry2> =
            (0..64).map(|i| entry(i, 0, 0, [i + 1, 0, 0, 0])).collect();
        for k in 0..11 {
            host.insert(3 + 5 * k, entry(0x100 + k as u32, 0, 0, [0; 4]));
        }
        assert_eq!(host.len(), 75);
        let t = CpuidTable::from_kvm(&CpuId::from_entries(&host).unwrap()).unwrap();
        assert_eq!(t.count, 64);
        let ins: Vec<u32> = t.functions.iter().map(|f| f.eax_in).collect();
        assert_eq!(ins, (0..64).collect::<Vec<u32>>());
        let zeros: Vec<kvm_cpuid_entry2> = (0..10).map(|i| entry(i, 0, 0, [0; 4])).collect();
        let kept = CpuidTable::from_kvm(&CpuId::from_entries(&zeros).unwrap()).unwrap();
        assert_eq!(kept.count, 10, "64 or fewer: kept whole");
    }

    /// A page read back with a count above 64 (firmware-corrected or garbage) never reads
    /// past the table.
    #[test]
    fn a_page_with_a_huge_count_reads_64_functions() {
        let mut page = [0u8; 4096];
        page[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        let t = CpuidTable::from_page(&page);
        assert_eq!(t.count, u32::MAX);
        assert_eq!(t.functions.len(), MAX_FUNCTIONS);
        assert_eq!(CpuidTable::from_page(&[]).functions.len(), 0);
    }

    #[test]
    fn mismatches_name_leaf_subleaf_and_registers() {
        let cpuid = CpuId::from_entries(&[
            entry(1, 0, 0, [0xA00F11, 0x800, 0x1, 0x2]),
            entry(7, 0, KVM_CPUID_FLAG_SIGNIFCANT_INDEX, [0, 0x1A9, 0, 0]),
        ])
        .unwrap();
        let given = CpuidTable::from_kvm(&cpuid).unwrap();
        let mut fixed = given.clone();
        fixed.functions[1].ebx = 0x9;
        assert_eq!(
            given.mismatches(&fixed),
            ["leaf 0x7 subleaf 0x0: ebx 0x000001a9 expected 0x00000009"]
        );
        fixed.count = 1;
        assert_eq!(given.mismatches(&fixed), ["count 2 given, 1 expected"]);
        assert!(given.mismatches(&given).is_empty());
    }

    /// QEMU's SNP masks (`sev_snp_mask_cpuid_features`) clear exactly their bits.
    #[test]
    fn snp_masks_clear_qemus_bits_only() {
        let mut e = [
            entry(1, 0, 0, [!0; 4]),
            entry(7, 0, KVM_CPUID_FLAG_SIGNIFCANT_INDEX, [!0; 4]),
            entry(7, 1, KVM_CPUID_FLAG_SIGNIFCANT_INDEX, [!0; 4]),
            entry(0x8000_0008, 0, 0, [!0; 4]),
        ];
        mask_snp_features(&mut e);
        assert_eq!(
            [e[0].eax, e[0].ebx, e[0].ecx, e[0].edx],
            [!0, !0, !(1 << 24), !0]
        );
        assert_eq!(
            [e[1].eax, e[1].ebx, e[1].ecx, e[1].edx],
            [!0, !(1 << 1), !0, 0x03FF_FFFF]
        );
        assert_eq!([e[2].ebx, e[2].edx], [!0, !0]);
        assert_eq!(e[3].ebx, !(1 << 25));
    }
}
