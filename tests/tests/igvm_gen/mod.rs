//! IGVM test-file generators shared by `igvm_oracle.rs` and `cli_*.rs`.
//!
//! Two independent writers: our `relaunch_core::writer::IgvmBuilder`, and the `igvm`
//! crate's own serializer (`igvm::IgvmFile::new` + `serialize`), so the oracle test does
//! not only compare our reader with our writer.
#![allow(dead_code)]

use igvm::snp_defs::SevVmsa;
use igvm::{
    IgvmDirectiveHeader, IgvmFile, IgvmInitializationHeader, IgvmPlatformHeader, IgvmRevision,
};
use igvm_defs::{
    IgvmPageDataFlags, IgvmPageDataType, IgvmPlatformType, IGVM_VHS_PARAMETER,
    IGVM_VHS_PARAMETER_INSERT, IGVM_VHS_SUPPORTED_PLATFORM,
};
use relaunch_core::arch::regs::VpRegs;
use relaunch_core::arch::vmsa::{kvm_measured_vmsa, reset_regs, BSP_RESET_ADDR, KVM_VMSA_GPA};
use relaunch_core::plan::Platform;
use relaunch_core::writer::IgvmBuilder;
use zerocopy::FromBytes;

/// EPYC-v4 CPUID(1).EAX.
pub const SIG: u32 = 0x800F12;

/// A small deterministic PRNG (xorshift64*), so generated files are reproducible.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// Seeded generator (seed 0 is replaced).
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    /// Next 64 random bits.
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// Fills `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// The VMSA KVM builds for QEMU's reset state (sev-snp-measure's QEMU BSP VMSA): a VMSA
/// a bundle can carry that survives KVM's normalisation unchanged.
pub fn reset_vmsa(platform: Platform, features: u64) -> [u8; 4096] {
    kvm_measured_vmsa(
        &reset_regs(SIG, BSP_RESET_ADDR),
        features & !1,
        platform,
        true,
    )
}

/// A 64-bit VMSA with random GPRs/RIP (still only fields QEMU/KVM load, already in KVM's
/// normalised form), so the oracle sees non-trivial VMSAs.
pub fn random_vmsa(rng: &mut Rng, features: u64) -> [u8; 4096] {
    let mut r: VpRegs = reset_regs(SIG, BSP_RESET_ADDR);
    r.rip = rng.next() & 0xFFFF_FFFF;
    r.gprs.rsp = rng.next() & 0xFFFF_FFF0;
    r.gprs.rsi = rng.next();
    r.gprs.rax = rng.next();
    r.gprs.r15 = rng.next();
    r.cr0 = 0x10;
    r.cr4 = 0x40;
    kvm_measured_vmsa(&r, features & !1, Platform::Snp, true)
}

/// The spec §5 vector file (`../shared/spec/igvm-snp.md`) written with our writer: SNP
/// (mask 1), GUEST_POLICY 0x30000, PARAMETER_AREA 0 of `n` pages + VP_COUNT + insert at
/// 0x10000, NORMAL @0 (byte i = i & 0xFF), zero page @0x1000, unmeasured @0x2000, SECRETS
/// @0x3000, CPUID_DATA @0x4000, the QEMU BSP VMSA at 0xFFFFFFFFF000.
pub fn spec_file(n: u64) -> Vec<u8> {
    spec_file_with(n, false)
}

/// [`spec_file`], with the VMSA written right after the GUEST_POLICY when `vmsa_first`
/// (igvm-wrap puts its VMSA before the page data).
pub fn spec_file_with(n: u64, vmsa_first: bool) -> Vec<u8> {
    let mut b = IgvmBuilder::new();
    let m = b.platform(IgvmPlatformType::SEV_SNP, 0).unwrap();
    b.guest_policy(0x30000, m);
    if vmsa_first {
        b.vp_context(KVM_VMSA_GPA, m, 0, &reset_vmsa(Platform::Snp, 1))
            .unwrap();
    }
    b.parameter_area(0, n * 4096, &[]).unwrap();
    b.vp_count(0, 0);
    b.parameter_insert(0x10000, m, 0);
    let data: Vec<u8> = (0..4096u32).map(|i| (i & 0xFF) as u8).collect();
    let f = IgvmPageDataFlags::new();
    b.page_data(0, m, f, IgvmPageDataType::NORMAL, &data)
        .unwrap();
    b.page_data(0x1000, m, f, IgvmPageDataType::NORMAL, &[])
        .unwrap();
    b.page_data(
        0x2000,
        m,
        IgvmPageDataFlags::new().with_unmeasured(true),
        IgvmPageDataType::NORMAL,
        &[],
    )
    .unwrap();
    b.page_data(0x3000, m, f, IgvmPageDataType::SECRETS, &[])
        .unwrap();
    // The spec's file carries 4 KiB of zeros for the CPUID page (its contents are never
    // measured; QEMU rebuilds them).
    b.page_data(0x4000, m, f, IgvmPageDataType::CPUID_DATA, &[0; 4096])
        .unwrap();
    if !vmsa_first {
        b.vp_context(KVM_VMSA_GPA, m, 0, &reset_vmsa(Platform::Snp, 1))
            .unwrap();
    }
    b.finish().unwrap()
}

/// What a random file may contain.
#[derive(Clone, Copy, Debug)]
pub struct GenOptions {
    /// Platform type of the single platform.
    pub platform: IgvmPlatformType,
    /// Add pages with the `shared` flag (the igvm crate's SNP measurement skips them,
    /// QEMU and we measure them: keep off for SNP equality).
    pub shared_pages: bool,
    /// Number of 4 KiB pages of random data (besides the other kinds).
    pub data_pages: usize,
}

/// A random IGVM file written by the **igvm crate**: runs of random-data, zero and
/// unmeasured pages at random GPAs below 64 MiB, SNP SECRETS/CPUID pages, parameter areas of
/// 1-4 pages with VP_COUNT / MEMORY_MAP / ENVIRONMENT_INFO inserted between page runs, a
/// GUEST_POLICY, and (SNP) a VMSA at 0xFFFFFFFFF000 as the last directive.
pub fn random_igvm_crate_file(seed: u64, o: GenOptions) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let mask = 1u32;
    let platforms = vec![IgvmPlatformHeader::SupportedPlatform(
        IGVM_VHS_SUPPORTED_PLATFORM {
            compatibility_mask: mask,
            highest_vtl: 0,
            platform_type: o.platform,
            platform_version: 1,
            shared_gpa_boundary: 0,
        },
    )];
    let snp = o.platform == IgvmPlatformType::SEV_SNP;
    let inits = if snp || o.platform == IgvmPlatformType::TDX {
        vec![IgvmInitializationHeader::GuestPolicy {
            policy: if snp { 0x30000 } else { 0b10 },
            compatibility_mask: mask,
        }]
    } else {
        vec![]
    };
    let mut dirs = Vec::new();
    // Distinct 4 KiB frames below 64 MiB, handed out without repetition.
    let mut next_frame = 0x10u64 + rng.below(16);
    let mut frame = |rng: &mut Rng, pages: u64| {
        let gpa = next_frame * 4096;
        next_frame += pages + rng.below(4);
        gpa
    };
    let mut area_index = 0u32;
    let mut remaining = o.data_pages;
    while remaining > 0 {
        let run = (1 + rng.below(8) as usize).min(remaining);
        remaining -= run;
        let base = frame(&mut rng, run as u64);
        for i in 0..run {
            let kind = rng.below(10);
            let gpa = base + 4096 * i as u64;
            let (flags, data) = match kind {
                0 => (IgvmPageDataFlags::new(), Vec::new()),
                1 => (IgvmPageDataFlags::new().with_unmeasured(true), Vec::new()),
                2 => {
                    let mut d = vec![0u8; 1 + rng.below(4095) as usize];
                    rng.fill(&mut d);
                    (IgvmPageDataFlags::new().with_unmeasured(true), d)
                }
                3 if o.shared_pages => {
                    let mut d = vec![0u8; 4096];
                    rng.fill(&mut d);
                    (IgvmPageDataFlags::new().with_shared(true), d)
                }
                _ => {
                    let mut d = vec![0u8; 4096];
                    rng.fill(&mut d);
                    (IgvmPageDataFlags::new(), d)
                }
            };
            dirs.push(IgvmDirectiveHeader::PageData {
                gpa,
                compatibility_mask: mask,
                flags,
                data_type: IgvmPageDataType::NORMAL,
                data,
            });
        }
        // Sometimes a parameter area between page runs (the "ordering trap" position).
        if rng.below(3) == 0 {
            let pages = 1 + rng.below(4);
            dirs.push(IgvmDirectiveHeader::ParameterArea {
                number_of_bytes: pages * 4096,
                parameter_area_index: area_index,
                initial_data: vec![],
            });
            let param = IGVM_VHS_PARAMETER {
                parameter_area_index: area_index,
                byte_offset: 0,
            };
            dirs.push(match rng.below(3) {
                0 => IgvmDirectiveHeader::VpCount(param),
                1 => IgvmDirectiveHeader::MemoryMap(param),
                _ => IgvmDirectiveHeader::EnvironmentInfo(param),
            });
            dirs.push(IgvmDirectiveHeader::ParameterInsert(
                IGVM_VHS_PARAMETER_INSERT {
                    gpa: frame(&mut rng, pages),
                    compatibility_mask: mask,
                    parameter_area_index: area_index,
                },
            ));
            area_index += 1;
        }
    }
    // At least one page of file data: the igvm 0.5 parser rejects an empty data section.
    let mut d = vec![0u8; 4096];
    rng.fill(&mut d);
    dirs.push(IgvmDirectiveHeader::PageData {
        gpa: frame(&mut rng, 1),
        compatibility_mask: mask,
        flags: IgvmPageDataFlags::new(),
        data_type: IgvmPageDataType::NORMAL,
        data: d,
    });
    if snp {
        for data_type in [IgvmPageDataType::SECRETS, IgvmPageDataType::CPUID_DATA] {
            dirs.push(IgvmDirectiveHeader::PageData {
                gpa: frame(&mut rng, 1),
                compatibility_mask: mask,
                flags: IgvmPageDataFlags::new(),
                data_type,
                data: vec![],
            });
        }
        let vmsa = random_vmsa(&mut rng, 1);
        dirs.push(IgvmDirectiveHeader::SnpVpContext {
            gpa: KVM_VMSA_GPA,
            compatibility_mask: mask,
            vp_index: 0,
            vmsa: Box::new(SevVmsa::read_from_bytes(&vmsa[..]).unwrap()),
        });
    }
    let file = IgvmFile::new(IgvmRevision::V1, platforms, inits, dirs).unwrap();
    let mut out = Vec::new();
    file.serialize(&mut out).unwrap();
    out
}
