//! The AMD Secure Processor's check of an SNP CPUID page at `SNP_LAUNCH_UPDATE` (page type
//! CPUID), against the model host's CPUID.
//!
//! What the firmware does, from AMD's published SEV firmware (`amd/AMD-ASPFW`,
//! `fw/psp_bl_uapps/sev_uapp/src/sev_mcmd.c` `snp_mcmd_launch_update` and
//! `cpuid_lookup.c` `sanitize_cpuid_list`; the SEV-SNP firmware ABI, SNP_LAUNCH_UPDATE and
//! "CPUID reporting", says the same in prose):
//! - the page's reserved header fields must be 0 and `count` at most 64, else
//!   `INVALID_PARAM` with the page left as it was;
//! - every function whose `eax_in` is a standard (0–0xFFFF) or extended
//!   (0x80000000–0x8000FFFF) leaf is checked; others are not. A non-zero `reserved` field
//!   fails it. A function the firmware's table lists is checked register by register with
//!   that register's rule: *exact* (must equal the reference), *mask* (may set only bits the
//!   reference has), *less than* (at most the reference), *unchecked*, or a leaf-specific
//!   rule (below). A function the table does not list must return all zeros;
//! - on any failure the firmware writes the corrected table (each failing register replaced
//!   by the value the rule allows) back to the page, does not encrypt it, and returns
//!   `INVALID_PARAM`; KVM then copies the page back to `uaddr` and fails the ioctl with
//!   `EIO` (`../shared/spec/kvm-coco-abi.md` §1.3).
//!
//! The firmware's reference values are the part's PPR values built into it; the model's
//! are its host CPUID ([`super::ModelConfig::firmware_cpuid`], by default what its
//! `KVM_GET_SUPPORTED_CPUID` reports). Modelled from the source: the rule of every leaf of
//! the firmware's table (`lookup_table`), and the leaf-specific rules of 0x1, 0x7.0, 0xD.0,
//! 0xD.1, 0x80000001, 0x80000008, 0x8000001F and 0x80000022. Not modelled: the
//! per-register *reserved* masks (PPR values of one part; a reference without the bit fails
//! the mask rules anyway), and the firmware's bug in 0x7.0 EDX (it clears the allowed bits
//! instead of the others; the model applies the documented mask rule).

use kvm_bindings::kvm_cpuid_entry2;

use crate::backend::snp_cpuid::{CpuidFunction, CpuidTable, MAX_FUNCTIONS};

/// How one register is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rule {
    /// Must equal the reference.
    Exact,
    /// May set only bits the reference sets.
    Mask,
    /// At most the reference.
    LessThan,
    /// Anything.
    Unchecked,
}

/// How one function is checked.
#[derive(Clone, Copy, Debug)]
enum Check {
    /// One rule per register: EAX, EBX, ECX, EDX.
    Regs([Rule; 4]),
    /// A leaf-specific rule.
    Custom(Custom),
}

#[derive(Clone, Copy, Debug)]
enum Custom {
    Leaf1,
    Leaf7Sub0,
    LeafDSub0,
    LeafDSub1,
    Ext1,
    Ext8,
    Ext1F,
    Ext22,
}

use Rule::{Exact as E, LessThan as L, Mask as M, Unchecked as U};

const UNCHECKED: Check = Check::Regs([U, U, U, U]);

/// `(leaf, subleaf, check)`: the firmware's table (`cpuid_lookup.c` `lookup_table`, rules
/// only).
const TABLE: &[(u32, u32, Check)] = &[
    (0x0, 0, Check::Regs([L, U, U, U])),
    (0x1, 0, Check::Custom(Custom::Leaf1)),
    (0x2, 0, UNCHECKED),
    (0x4, 0, UNCHECKED),
    (0x5, 0, UNCHECKED),
    (0x6, 0, Check::Regs([M, E, M, E])),
    (0x7, 0, Check::Custom(Custom::Leaf7Sub0)),
    (0x7, 1, Check::Regs([M, E, E, E])),
    (0xB, 0, UNCHECKED),
    (0xB, 1, UNCHECKED),
    (0xB, 2, UNCHECKED),
    (0xD, 0, Check::Custom(Custom::LeafDSub0)),
    (0xD, 1, Check::Custom(Custom::LeafDSub1)),
    (0xD, 2, Check::Regs([E, E, E, E])),
    (0xD, 5, Check::Regs([E, E, M, E])),
    (0xD, 6, Check::Regs([E, E, M, E])),
    (0xD, 7, Check::Regs([E, E, M, E])),
    (0xD, 9, Check::Regs([E, E, E, E])),
    (0xD, 0xB, Check::Regs([E, E, E, E])),
    (0xD, 0xC, Check::Regs([E, E, E, E])),
    (0xF, 0, Check::Regs([E, U, E, U])),
    (0xF, 1, UNCHECKED),
    (0x10, 0, Check::Regs([E, U, E, E])),
    (0x10, 1, UNCHECKED),
    (0x8000_0000, 0, Check::Regs([L, U, U, U])),
    (0x8000_0001, 0, Check::Custom(Custom::Ext1)),
    (0x8000_0002, 0, UNCHECKED),
    (0x8000_0003, 0, UNCHECKED),
    (0x8000_0004, 0, UNCHECKED),
    (0x8000_0005, 0, UNCHECKED),
    (0x8000_0006, 0, UNCHECKED),
    (0x8000_0007, 0, Check::Regs([E, M, U, M])),
    (0x8000_0008, 0, Check::Custom(Custom::Ext8)),
    (0x8000_000A, 0, Check::Regs([U, U, E, M])),
    (0x8000_0019, 0, Check::Regs([U, U, E, E])),
    (0x8000_001A, 0, Check::Regs([U, E, E, E])),
    (0x8000_001B, 0, Check::Regs([M, E, E, E])),
    (0x8000_001D, 0, UNCHECKED),
    (0x8000_001D, 1, UNCHECKED),
    (0x8000_001D, 2, UNCHECKED),
    (0x8000_001D, 3, UNCHECKED),
    (0x8000_001D, 4, Check::Regs([U, E, U, E])),
    (0x8000_001E, 0, UNCHECKED),
    (0x8000_001F, 0, Check::Custom(Custom::Ext1F)),
    (0x8000_0020, 0, Check::Regs([E, U, E, E])),
    (0x8000_0020, 1, Check::Regs([U, E, E, U])),
    (0x8000_0020, 2, Check::Regs([U, E, E, U])),
    (0x8000_0020, 3, Check::Regs([E, U, M, E])),
    (0x8000_0021, 0, Check::Regs([M, U, E, E])),
    (0x8000_0022, 0, Check::Custom(Custom::Ext22)),
    (0x8000_0023, 0, Check::Regs([M, U, E, E])),
    (0x8000_0024, 0, Check::Regs([L, M, M, E])),
    (0x8000_0024, 1, Check::Regs([M, E, E, E])),
    (0x8000_0026, 0, UNCHECKED),
    (0x8000_0026, 1, UNCHECKED),
    (0x8000_0026, 2, UNCHECKED),
    (0x8000_0026, 3, UNCHECKED),
];

/// What the firmware answers to a CPUID page.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Accepted.
    Ok,
    /// `INVALID_PARAM`, the page untouched (reserved header fields, count above 64).
    Refused,
    /// `INVALID_PARAM`, the corrected page written back.
    Corrected(Box<[u8; 4096]>),
}

/// The reference CPUID: the model host's result for `(leaf, subleaf)`, zeros if it has none.
struct Host<'a>(&'a [kvm_cpuid_entry2]);

impl Host<'_> {
    fn regs(&self, leaf: u32, subleaf: u32) -> [u32; 4] {
        self.0
            .iter()
            .find(|e| e.function == leaf && e.index == subleaf)
            .map_or([0; 4], |e| [e.eax, e.ebx, e.ecx, e.edx])
    }
}

/// Applies `rule` with reference `r` to `v`; true when `v` had to change.
fn apply(rule: Rule, r: u32, v: &mut u32) -> bool {
    let want = match rule {
        Rule::Exact => r,
        Rule::Mask => *v & r,
        Rule::LessThan => (*v).min(r),
        Rule::Unchecked => *v,
    };
    let failed = want != *v;
    *v = want;
    failed
}

/// Applies "less than" to the field `mask` of `v` (reference `r`).
fn field_le(mask: u32, r: u32, v: &mut u32) -> bool {
    let shift = mask.trailing_zeros();
    let (got, max) = ((*v & mask) >> shift, (r & mask) >> shift);
    if got > max {
        *v = (*v & !mask) | (max << shift);
        true
    } else {
        false
    }
}

/// Family, model and stepping as the firmware compares them (`cpuid_lookup.h` `FMS_FAMILY`
/// = ExtFamily + BaseFamily, `FMS_MODEL` = ExtModel + BaseModel, `FMS_STEPPING`).
fn fms(eax: u32) -> (u32, u32, u32) {
    (
        ((eax >> 20) & 0xFF) + ((eax >> 8) & 0xF),
        ((eax >> 16) & 0xF) + ((eax >> 4) & 0xF),
        eax & 0xF,
    )
}

/// `compare_FMS`: the page's family/model/stepping at most the host's (lexicographically);
/// otherwise the host's signature.
fn fms_le(host: u32, v: &mut u32) -> bool {
    if fms(*v) <= fms(host) {
        false
    } else {
        *v = host;
        true
    }
}

/// XSAVE area sizes the firmware's 0xD rules compute from `xcr0_in` / `xss_in`
/// (`FN0000000D_X00_CUSTOM`, `FN0000000D_X01_CUSTOM`; XCR0 bits AVX 2, opmask 5, ZMM_Hi256 6,
/// Hi16_ZMM 7, PKRU 9; XSS bits CET_U 11, CET_S 12).
fn xsave_size_sub0(xcr0: u64) -> u32 {
    if xcr0 & (1 << 9) != 0 {
        0x988
    } else if xcr0 & (1 << 7) != 0 {
        0x980
    } else if xcr0 & (1 << 6) != 0 {
        0x580
    } else if xcr0 & (1 << 5) != 0 {
        0x380
    } else if xcr0 & (1 << 2) != 0 {
        0x340
    } else {
        0x240
    }
}

fn xsave_size_sub1(xcr0: u64, xss: u64) -> u32 {
    let mut size = 0x240;
    for (bit, add) in [(9, 0x8), (7, 0x400), (6, 0x200), (5, 0x40), (2, 0x100)] {
        if xcr0 & (1 << bit) != 0 {
            size += add;
        }
    }
    for (bit, add) in [(11, 0x10), (12, 0x18)] {
        if xss & (1 << bit) != 0 {
            size += add;
        }
    }
    size
}

/// Checks one function in place; true when it failed.
fn check_function(host: &Host<'_>, f: &mut CpuidFunction) -> bool {
    let Some(&(_, _, check)) = TABLE
        .iter()
        .find(|(l, s, _)| *l == f.eax_in && *s == f.ecx_in)
    else {
        // Not in the table: must be all zeros.
        let failed = [f.eax, f.ebx, f.ecx, f.edx] != [0; 4];
        (f.eax, f.ebx, f.ecx, f.edx) = (0, 0, 0, 0);
        return failed;
    };
    let r = host.regs(f.eax_in, f.ecx_in);
    let mut failed = false;
    match check {
        Check::Regs(rules) => {
            failed |= apply(rules[0], r[0], &mut f.eax);
            failed |= apply(rules[1], r[1], &mut f.ebx);
            failed |= apply(rules[2], r[2], &mut f.ecx);
            failed |= apply(rules[3], r[3], &mut f.edx);
        }
        Check::Custom(Custom::Leaf1) => {
            // EAX: family/model/stepping at most the host's. EBX: CLFLUSH size (bits 15:8)
            // exact, the rest unchecked. ECX: OSXSAVE (27) and bit 31 unchecked, the rest a
            // mask. EDX: mask.
            failed |= fms_le(r[0], &mut f.eax);
            let clflush = 0xFF00;
            if f.ebx & clflush != r[1] & clflush {
                f.ebx = (f.ebx & !clflush) | (r[1] & clflush);
                failed = true;
            }
            let free = (1 << 27) | (1 << 31);
            failed |= apply(Rule::Mask, r[2] | free, &mut f.ecx);
            failed |= apply(Rule::Mask, r[3], &mut f.edx);
        }
        Check::Custom(Custom::Leaf7Sub0) => {
            // EAX less than; EBX mask; ECX mask but OSPKE (bit 4) unchecked; EDX mask.
            failed |= apply(Rule::LessThan, r[0], &mut f.eax);
            failed |= apply(Rule::Mask, r[1], &mut f.ebx);
            failed |= apply(Rule::Mask, r[2] | (1 << 4), &mut f.ecx);
            failed |= apply(Rule::Mask, r[3], &mut f.edx);
        }
        Check::Custom(Custom::LeafDSub0) => {
            // EAX: x87 and SSE set, the rest a mask; EBX: the size for `xcr0_in`; ECX
            // unchecked; EDX exact.
            if f.eax & 0b11 != 0b11 {
                f.eax |= 0b11;
                failed = true;
            }
            failed |= apply(Rule::Mask, r[0] | 0b11, &mut f.eax);
            failed |= apply(Rule::Exact, xsave_size_sub0(f.xcr0_in), &mut f.ebx);
            failed |= apply(Rule::Exact, r[3], &mut f.edx);
        }
        Check::Custom(Custom::LeafDSub1) => {
            // EAX, ECX, EDX masks; EBX the size for `xcr0_in` and `xss_in`.
            failed |= apply(Rule::Mask, r[0], &mut f.eax);
            failed |= apply(
                Rule::Exact,
                xsave_size_sub1(f.xcr0_in, f.xss_in),
                &mut f.ebx,
            );
            failed |= apply(Rule::Mask, r[2], &mut f.ecx);
            failed |= apply(Rule::Mask, r[3], &mut f.edx);
        }
        Check::Custom(Custom::Ext1) => {
            // EAX: family/model/stepping at most leaf 1's; EBX unchecked; ECX, EDX masks.
            failed |= fms_le(host.regs(1, 0)[0], &mut f.eax);
            failed |= apply(Rule::Mask, r[2], &mut f.ecx);
            failed |= apply(Rule::Mask, r[3], &mut f.edx);
        }
        Check::Custom(Custom::Ext8) => {
            // EAX: physical, linear and guest-physical address sizes (7:0, 15:8, 23:16) each
            // at most the host's; EBX mask; ECX unchecked; EDX: INVLPGB count (15:0) and
            // RDPRU max (23:16) at most the host's.
            for mask in [0xFF, 0xFF00, 0xFF_0000] {
                failed |= field_le(mask, r[0], &mut f.eax);
            }
            failed |= apply(Rule::Mask, r[1], &mut f.ebx);
            for mask in [0xFFFF, 0xFF_0000] {
                failed |= field_le(mask, r[3], &mut f.edx);
            }
        }
        Check::Custom(Custom::Ext1F) => {
            // EAX mask; EBX: bits 11:6 (physical address reduction) unchecked, VMPL count
            // (15:12) at most the host's, the rest exact; ECX, EDX unchecked.
            failed |= apply(Rule::Mask, r[0], &mut f.eax);
            let exact = !(0x3F << 6) & !(0xF << 12);
            if f.ebx & exact != r[1] & exact {
                f.ebx = (f.ebx & !exact) | (r[1] & exact);
                failed = true;
            }
            failed |= field_le(0xF << 12, r[1], &mut f.ebx);
        }
        Check::Custom(Custom::Ext22) => {
            // EAX mask; EBX: NumPerfCtrCore (3:0) and LbrV2StackSize (9:4) at most the
            // host's, the rest unchecked; ECX unchecked; EDX exact.
            failed |= apply(Rule::Mask, r[0], &mut f.eax);
            failed |= field_le(0xF, r[1], &mut f.ebx);
            failed |= field_le(0x3F << 4, r[1], &mut f.ebx);
            failed |= apply(Rule::Exact, r[3], &mut f.edx);
        }
    }
    failed
}

/// The firmware's verdict on `page` against the host CPUID `host`.
pub(super) fn check_page(page: &[u8; 4096], host: &[kvm_cpuid_entry2]) -> Verdict {
    let mut t = CpuidTable::from_page(page);
    if t.reserved1 != 0 || t.reserved2 != 0 || t.count as usize > MAX_FUNCTIONS {
        return Verdict::Refused;
    }
    let host = Host(host);
    let mut failed = false;
    for f in &mut t.functions {
        let standard = f.eax_in <= 0xFFFF;
        let extended = (0x8000_0000..=0x8000_FFFF).contains(&f.eax_in);
        if !(standard || extended) {
            continue;
        }
        failed |= f.reserved != 0;
        failed |= check_function(&host, f);
    }
    if !failed {
        return Verdict::Ok;
    }
    // The corrected table over the page as it was (bytes past the table unchanged).
    let mut out = Box::new(*page);
    let fixed = t.to_page();
    let len = 16 + t.functions.len() * std::mem::size_of::<CpuidFunction>();
    out[..len].copy_from_slice(&fixed[..len]);
    Verdict::Corrected(out)
}

#[cfg(test)]
mod tests {
    use kvm_bindings::{CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

    use super::*;

    fn e(function: u32, index: u32, regs: [u32; 4]) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            flags: if index > 0 || function == 0xD || function == 7 {
                KVM_CPUID_FLAG_SIGNIFCANT_INDEX
            } else {
                0
            },
            eax: regs[0],
            ebx: regs[1],
            ecx: regs[2],
            edx: regs[3],
            ..Default::default()
        }
    }

    fn host() -> Vec<kvm_cpuid_entry2> {
        vec![
            e(0, 0, [0xD, 0x6874_7541, 0x444D_4163, 0x6974_6E65]),
            e(1, 0, [0x00A0_0F11, 0x0000_0800, 0x1418_0201, 0x178B_FBFF]),
            e(7, 0, [0, 0x1A9, 0, 0]),
            e(0xD, 0, [7, 0x340, 0x340, 0]),
            e(0xD, 1, [1, 0x340, 0, 0]),
            e(0x8000_0008, 0, [0x3030, 0, 0, 0]),
            e(0x8000_001F, 0, [0x1B, 0x33 | (4 << 12) | (1 << 6), 0, 0]),
        ]
    }

    fn page_of(entries: &[kvm_cpuid_entry2]) -> (CpuidTable, [u8; 4096]) {
        let t = CpuidTable::from_kvm(&CpuId::from_entries(entries).unwrap()).unwrap();
        let p = t.to_page();
        (t, p)
    }

    /// The page QEMU builds from the host's own CPUID passes (every rule compares against
    /// that CPUID; 0xD.0/1 carry EBX 0x240 for `xcr0_in` 1, what the firmware computes).
    #[test]
    fn qemus_page_of_the_host_cpuid_passes() {
        let (_, p) = page_of(&host());
        assert_eq!(check_page(&p, &host()), Verdict::Ok);
    }

    /// A feature bit the host lacks (mask rule), a larger signature (less-than), a wrong
    /// XSAVE size for `xcr0_in` and an unlisted leaf with values: each is rewritten to what
    /// the rule allows, the rest untouched.
    #[test]
    fn failing_registers_are_corrected_and_the_rest_kept() {
        let mut vcpu = host();
        vcpu[1].edx |= 1 << 30; // not in the host's leaf 1 EDX
        vcpu[1].ecx |= 1 << 31; // the hypervisor bit: unchecked
        vcpu[2].ebx |= 1 << 9; // not in the host's 7.0 EBX
        vcpu[5].eax = 0x3134; // linear size 0x31 > 0x30
        vcpu.push(e(0x4000_0000, 0, [1, 2, 3, 4])); // outside the ranges: not checked
        vcpu.push(e(0x8000_0099, 0, [0, 5, 0, 0])); // not in the table
        let (t, p) = page_of(&vcpu);
        let Verdict::Corrected(back) = check_page(&p, &host()) else {
            panic!("accepted")
        };
        let fixed = CpuidTable::from_page(&back[..]);
        let m = t.mismatches(&fixed);
        assert_eq!(
            m,
            [
                "leaf 0x1 subleaf 0x0: edx 0x578bfbff expected 0x178bfbff",
                "leaf 0x7 subleaf 0x0: ebx 0x000003a9 expected 0x000001a9",
                "leaf 0x80000008 subleaf 0x0: eax 0x00003134 expected 0x00003030",
                "leaf 0x80000099 subleaf 0x0: ebx 0x00000005 expected 0x00000000",
            ]
        );
        assert_eq!(fixed.functions[1].ecx, vcpu[1].ecx, "bit 31 unchecked");
        assert!(back[16 + fixed.functions.len() * 48..]
            .iter()
            .all(|&b| b == 0));
    }

    /// 0xD.0 EBX must be the firmware's size for `xcr0_in`: KVM's own EBX with `xcr0_in` 0
    /// (what a page without QEMU's rewrite would carry) fails.
    #[test]
    fn leaf_d_needs_the_size_for_xcr0_in() {
        let (mut t, _) = page_of(&host());
        t.functions[3].ebx = 0x340;
        t.functions[3].xcr0_in = 0;
        let Verdict::Corrected(back) = check_page(&t.to_page(), &host()) else {
            panic!("accepted")
        };
        assert_eq!(CpuidTable::from_page(&back[..]).functions[3].ebx, 0x240);
        // With xcr0_in = x87|SSE|AVX the size is 0x340.
        t.functions[3].xcr0_in = 7;
        assert_eq!(check_page(&t.to_page(), &host()), Verdict::Ok);
    }

    #[test]
    fn reserved_header_or_count_above_64_is_refused_untouched() {
        let (mut t, _) = page_of(&host());
        t.reserved2 = 1;
        assert_eq!(check_page(&t.to_page(), &host()), Verdict::Refused);
        let mut p = page_of(&host()).1;
        p[..4].copy_from_slice(&65u32.to_le_bytes());
        assert_eq!(check_page(&p, &host()), Verdict::Refused);
    }

    /// A signature above the host's (family, then model, then stepping) is replaced by the
    /// host's; below it passes.
    #[test]
    fn signature_is_at_most_the_hosts() {
        let mut vcpu = host();
        vcpu[1].eax = 0x00A0_0F12; // stepping 2 > 1
        let (_, p) = page_of(&vcpu);
        assert!(matches!(check_page(&p, &host()), Verdict::Corrected(_)));
        vcpu[1].eax = 0x0080_0F12; // family 23 < 25
        let (_, p) = page_of(&vcpu);
        assert_eq!(check_page(&p, &host()), Verdict::Ok);
    }
}
