//! QEMU `-cpu` model names → CPUID(1).EAX signatures.
//!
//! On a reset-vector launch QEMU puts CPUID(1).EAX of the vCPU model into RDX
//! (`x86_cpu_reset_hold`), and KVM copies RDX into every SEV-ES/SNP VMSA, so the model name
//! is a launch-measurement input (`../shared/spec/igvm-snp.md` §4.2).
//!
//! Family/model/stepping per model are those of QEMU `target/i386/cpu.c`
//! `builtin_x86_defs` (EPYC-Turin: family 26, model 0, stepping 0, added in QEMU 10.1).
//! Versioned names (`-v1`, `-v2`, ...) only change features in QEMU, never the signature.
//! The table is a superset of sev-snp-measure's `sevsnpmeasure/vcpu_types.py` `CPU_SIGS`
//! (every name there is here with the same value; the unit tests check this). Intel models
//! are not listed: SEV guests only run on AMD models, and TDX does not take RDX from `-cpu`.

/// CPUID(1).EAX from family, model and stepping (AMD CPUID Specification #25481,
/// "CPUID Fn0000_0001_EAX Family, Model, Stepping Identifiers"): families above 0xF are
/// encoded as BaseFamily 0xF plus ExtFamily = family - 0xF; the model is split into
/// ExtModel (bits 19:16) and BaseModel (bits 7:4). Inputs out of range are masked to
/// their field widths (family ≤ 0xF + 0xFF, model and stepping to 8 and 4 bits).
pub const fn sig(family: u32, model: u32, stepping: u32) -> u32 {
    let (fam_lo, fam_hi) = if family > 0xF {
        (0xF, (family.wrapping_sub(0xF)) & 0xFF)
    } else {
        (family, 0)
    };
    (fam_hi << 20)
        | (((model >> 4) & 0xF) << 16)
        | ((fam_lo & 0xF) << 8)
        | ((model & 0xF) << 4)
        | (stepping & 0xF)
}

/// One QEMU CPU model: name, family, model, stepping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuModel {
    /// QEMU `-cpu` name.
    pub name: &'static str,
    /// CPU family (decimal, as in QEMU's table).
    pub family: u32,
    /// CPU model.
    pub model: u32,
    /// Stepping.
    pub stepping: u32,
}

impl CpuModel {
    /// The CPUID(1).EAX signature.
    pub const fn sig(&self) -> u32 {
        sig(self.family, self.model, self.stepping)
    }
}

const fn m(name: &'static str, family: u32, model: u32, stepping: u32) -> CpuModel {
    CpuModel {
        name,
        family,
        model,
        stepping,
    }
}

/// Every model name we know, in QEMU's order (QEMU `target/i386/cpu.c`).
pub const MODELS: &[CpuModel] = &[
    // "EPYC": family 23, model 1, stepping 2; versions 1-4 (v2 was "EPYC-IBPB").
    m("EPYC", 23, 1, 2),
    m("EPYC-v1", 23, 1, 2),
    m("EPYC-v2", 23, 1, 2),
    m("EPYC-IBPB", 23, 1, 2),
    m("EPYC-v3", 23, 1, 2),
    m("EPYC-v4", 23, 1, 2),
    m("EPYC-v5", 23, 1, 2),
    // "EPYC-Rome": family 23, model 49, stepping 0; versions 1-5.
    m("EPYC-Rome", 23, 49, 0),
    m("EPYC-Rome-v1", 23, 49, 0),
    m("EPYC-Rome-v2", 23, 49, 0),
    m("EPYC-Rome-v3", 23, 49, 0),
    m("EPYC-Rome-v4", 23, 49, 0),
    m("EPYC-Rome-v5", 23, 49, 0),
    // "EPYC-Milan": family 25, model 1, stepping 1; versions 1-3.
    m("EPYC-Milan", 25, 1, 1),
    m("EPYC-Milan-v1", 25, 1, 1),
    m("EPYC-Milan-v2", 25, 1, 1),
    m("EPYC-Milan-v3", 25, 1, 1),
    // "EPYC-Genoa": family 25, model 17, stepping 0; versions 1-2.
    m("EPYC-Genoa", 25, 17, 0),
    m("EPYC-Genoa-v1", 25, 17, 0),
    m("EPYC-Genoa-v2", 25, 17, 0),
    // "EPYC-Turin": family 26, model 0, stepping 0 (QEMU 10.1+).
    m("EPYC-Turin", 26, 0, 0),
    m("EPYC-Turin-v1", 26, 0, 0),
];

/// Looks a QEMU `-cpu` name up (ASCII case-insensitive, as QEMU and sev-snp-measure accept
/// any case for these names).
pub fn model_by_name(name: &str) -> Option<&'static CpuModel> {
    MODELS.iter().find(|c| c.name.eq_ignore_ascii_case(name))
}

/// CPUID(1).EAX of a QEMU `-cpu` model name, `None` if the name is unknown.
pub fn vcpu_sig_by_name(name: &str) -> Option<u32> {
    model_by_name(name).map(CpuModel::sig)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_match_sev_snp_measure() {
        // sev-snp-measure vcpu_types.py CPU_SIGS, and the worked value in
        // ../shared/spec/igvm-snp.md §4.2 (EPYC-v4 = 0x800F12).
        let expect: &[(&str, u32)] = &[
            ("EPYC", 0x0080_0F12),
            ("EPYC-v1", 0x0080_0F12),
            ("EPYC-v2", 0x0080_0F12),
            ("EPYC-IBPB", 0x0080_0F12),
            ("EPYC-v3", 0x0080_0F12),
            ("EPYC-v4", 0x0080_0F12),
            ("EPYC-Rome", 0x0083_0F10),
            ("EPYC-Rome-v1", 0x0083_0F10),
            ("EPYC-Rome-v2", 0x0083_0F10),
            ("EPYC-Rome-v3", 0x0083_0F10),
            ("EPYC-Milan", 0x00A0_0F11),
            ("EPYC-Milan-v1", 0x00A0_0F11),
            ("EPYC-Milan-v2", 0x00A0_0F11),
            ("EPYC-Genoa", 0x00A1_0F10),
            ("EPYC-Genoa-v1", 0x00A1_0F10),
            ("EPYC-Turin", 0x00B0_0F00),
        ];
        for &(name, want) in expect {
            assert_eq!(vcpu_sig_by_name(name), Some(want), "{name}");
        }
    }

    #[test]
    fn lookup_is_case_insensitive_and_rejects_unknown() {
        assert_eq!(vcpu_sig_by_name("epyc-milan"), Some(0x00A0_0F11));
        assert_eq!(vcpu_sig_by_name("EPYC-v99"), None);
        assert_eq!(vcpu_sig_by_name(""), None);
    }

    #[test]
    fn sig_encoding() {
        assert_eq!(sig(6, 0x55, 4), 0x0005_0654);
        assert_eq!(sig(0xF, 0x6B, 1), 0x0006_0FB1);
        // Masked, never overflowing.
        assert_eq!(sig(u32::MAX, u32::MAX, u32::MAX), 0x0F0F_0FFF);
    }
}
