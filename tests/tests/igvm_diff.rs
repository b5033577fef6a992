//! Differential test of `relaunch_core::igvm` against the `igvm` 0.5 crate.
//!
//! Many files are generated with the igvm crate's own model and serializer (random
//! platforms, page kinds, parameter areas, VP contexts, ID blocks, ... from a small
//! deterministic PRNG), parsed by both parsers, and compared header by header, field by
//! field. Corrupted variants (bit flips with and without a repaired CRC, truncations, length
//! changes) are then fed to our parser, which must never panic.
//!
//! What is *not* generated, because the two parsers disagree by design (module doc of
//! `relaunch_core::igvm`): relocation headers (igvm only accepts them with VBS contexts),
//! CoRIM headers (igvm feature `corim`), version strings and optional-bit types (igvm
//! rejects both).

use igvm::registers::{SegmentRegister, TableRegister, X86Register};
use igvm::snp_defs::SevVmsa;
use igvm::{
    Arch, IgvmDirectiveHeader as D, IgvmFile as Theirs, IgvmInitializationHeader as I,
    IgvmPlatformHeader, IgvmRevision,
};
use igvm_defs::{
    IgvmNativeVpContextX64, IgvmPageDataFlags, IgvmPageDataType, IgvmPlatformType as P,
    IGVM_VHS_PARAMETER, IGVM_VHS_PARAMETER_INSERT, IGVM_VHS_SNP_ID_BLOCK_PUBLIC_KEY,
    IGVM_VHS_SNP_ID_BLOCK_SIGNATURE, IGVM_VHS_SUPPORTED_PLATFORM,
};
use relaunch_core::igvm::{Header, IgvmFile, PageDataType, Parameter, VpContextKind};
use zerocopy::{FromZeros, IntoBytes};

/// xorshift64*: deterministic, no extra crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

struct Gen {
    rng: Rng,
    /// Bump allocator for GPAs, so that no two imports overlap.
    next_gpa: u64,
    platforms: Vec<(u32, P)>,
}

impl Gen {
    fn gpa(&mut self, bytes: u64, align: u64) -> u64 {
        let g = self.next_gpa.div_ceil(align) * align;
        self.next_gpa = g + bytes + 0x1000 * self.rng.below(3);
        g
    }

    fn mask_of(&self, t: P) -> Option<u32> {
        self.platforms.iter().find(|p| p.1 == t).map(|p| p.0)
    }

    fn any_mask(&mut self) -> u32 {
        let mut m = 0;
        while m == 0 {
            for &(bit, _) in &self.platforms {
                if self.rng.chance(50) {
                    m |= bit;
                }
            }
        }
        m
    }

    fn vmsa(&mut self) -> Box<SevVmsa> {
        let mut v = SevVmsa::new_box_zeroed().unwrap();
        v.rip = self.rng.next();
        v.rsp = self.rng.next();
        v.cr0 = 0x31;
        v.efer = 0x1000;
        v.xcr0 = 1;
        v.cs.selector = 0xF000;
        v.cs.attrib = 0x9B;
        v.sev_features.set_snp(true);
        v
    }

    fn native(&mut self) -> Box<IgvmNativeVpContextX64> {
        let mut c = IgvmNativeVpContextX64::new_box_zeroed().unwrap();
        c.rip = self.rng.next();
        c.rsp = self.rng.next();
        c.cr0 = 0x8000_0031;
        c.code_selector = 8;
        c.code_attributes = 0xA09B;
        c.data_selector = 0x10;
        c.data_attributes = 0xC093;
        c.gdtr_base = self.rng.next() & 0xFFFF_F000;
        c.gdtr_limit = 0x27;
        c
    }

    fn file(&mut self) -> Theirs {
        let all = [
            P::SEV_SNP,
            P::NATIVE,
            P::TDX,
            P::SEV,
            P::SEV_ES,
            P::VSM_ISOLATION,
        ];
        let mut bits: Vec<u32> = (0..32).collect();
        self.platforms.clear();
        for t in all {
            if self.rng.chance(55) || (t == P::VSM_ISOLATION && self.platforms.is_empty()) {
                let i = self.rng.below(bits.len() as u64) as usize;
                self.platforms.push((1 << bits.remove(i), t));
            }
        }
        let revision = if self.rng.chance(50) {
            IgvmRevision::V1
        } else {
            IgvmRevision::V2 {
                arch: Arch::X64,
                page_size: 4096,
            }
        };
        let platforms: Vec<_> = self
            .platforms
            .iter()
            .map(|&(mask, t)| {
                IgvmPlatformHeader::SupportedPlatform(IGVM_VHS_SUPPORTED_PLATFORM {
                    compatibility_mask: mask,
                    highest_vtl: if self.rng.chance(30) { 2 } else { 0 },
                    platform_type: t,
                    platform_version: 1,
                    shared_gpa_boundary: if matches!(t, P::NATIVE | P::VSM_ISOLATION) {
                        0
                    } else {
                        self.rng.below(2) << 46
                    },
                })
            })
            .collect();
        let mut inits = Vec::new();
        for &(mask, t) in &self.platforms.clone() {
            if self.rng.chance(60) {
                inits.push(I::GuestPolicy {
                    policy: if t == P::SEV_SNP {
                        0x30000
                    } else {
                        self.rng.below(8)
                    },
                    compatibility_mask: mask,
                });
            }
        }
        let directives = self.directives();
        Theirs::new(revision, platforms, inits, directives).expect("generated file is valid")
    }

    fn directives(&mut self) -> Vec<D> {
        let mut out = Vec::new();
        let mut declared: Vec<(u32, u64)> = Vec::new();
        let mut open: Vec<(u32, u64)> = Vec::new();
        let mut vp_next: u16 = 0;
        let mut id_block_masks = 0u32;
        let steps = 5 + self.rng.below(60);
        let shared_blob = self.rng.bytes(4096);
        for _ in 0..steps {
            match self.rng.below(12) {
                0..=4 => {
                    let two_mb = self.rng.chance(5);
                    let gpa = if two_mb {
                        self.gpa(0x20_0000, 0x20_0000)
                    } else {
                        self.gpa(0x1000, 0x1000)
                    };
                    let data = match self.rng.below(4) {
                        0 => Vec::new(),
                        1 => shared_blob.clone(),
                        _ => {
                            let n = 1 + self.rng.below(4096) as usize;
                            self.rng.bytes(n)
                        }
                    };
                    let flags = IgvmPageDataFlags::new()
                        .with_is_2mb_page(two_mb)
                        .with_unmeasured(self.rng.chance(20))
                        .with_shared(self.rng.chance(10));
                    out.push(D::PageData {
                        gpa,
                        compatibility_mask: self.any_mask(),
                        flags,
                        data_type: IgvmPageDataType(self.rng.below(4) as u16),
                        data,
                    });
                }
                5 if declared.len() < 4 => {
                    let mut index = self.rng.next() as u32;
                    while declared.iter().any(|d| d.0 == index) {
                        index = index.wrapping_add(1);
                    }
                    let size = 0x1000 * (1 + self.rng.below(3));
                    let initial_data = if self.rng.chance(30) {
                        let n = 1 + self.rng.below(size) as usize;
                        self.rng.bytes(n)
                    } else {
                        Vec::new()
                    };
                    declared.push((index, size));
                    open.push((index, size));
                    out.push(D::ParameterArea {
                        number_of_bytes: size,
                        parameter_area_index: index,
                        initial_data,
                    });
                }
                6 if !open.is_empty() => {
                    let (index, size) = open[self.rng.below(open.len() as u64) as usize];
                    let off = (self.rng.below(size - 32)) as u32;
                    let p = IGVM_VHS_PARAMETER {
                        parameter_area_index: index,
                        byte_offset: off,
                    };
                    out.push(match self.rng.below(10) {
                        0 => D::VpCount(p),
                        1 => D::Srat(p),
                        2 => D::Madt(p),
                        3 => D::Slit(p),
                        4 => D::Pptt(p),
                        5 => D::MmioRanges(p),
                        6 => D::MemoryMap(p),
                        7 => D::CommandLine(p),
                        8 => D::DeviceTree(p),
                        _ => D::EnvironmentInfo(p),
                    });
                }
                7 if !open.is_empty() => {
                    let (index, size) = open.remove(self.rng.below(open.len() as u64) as usize);
                    let gpa = self.gpa(size, 0x1000);
                    out.push(D::ParameterInsert(IGVM_VHS_PARAMETER_INSERT {
                        gpa,
                        compatibility_mask: self.any_mask(),
                        parameter_area_index: index,
                    }));
                }
                8 => {
                    // One VP context for one platform (igvm wants the mask to equal a
                    // platform's mask).
                    let (mask, t) =
                        self.platforms[self.rng.below(self.platforms.len() as u64) as usize];
                    let vp_index = vp_next;
                    vp_next += 1;
                    match t {
                        P::SEV_SNP | P::SEV_ES => {
                            let gpa = if self.rng.chance(50) {
                                0xFFFF_FFFF_F000
                            } else {
                                self.gpa(0x1000, 0x1000)
                            };
                            let vmsa = self.vmsa();
                            out.push(D::SnpVpContext {
                                gpa,
                                compatibility_mask: mask,
                                vp_index,
                                vmsa,
                            });
                        }
                        P::NATIVE | P::SEV => {
                            let context = self.native();
                            out.push(D::X64NativeVpContext {
                                compatibility_mask: mask,
                                vp_index,
                                context,
                            });
                        }
                        P::VSM_ISOLATION
                            if !out.iter().any(|d| matches!(d, D::X64VbsVpContext { .. })) =>
                        {
                            let rip = self.rng.next();
                            out.push(D::X64VbsVpContext {
                                vtl: igvm::hv_defs::Vtl::Vtl0,
                                registers: vec![
                                    X86Register::Rip(rip),
                                    X86Register::Cr0(0x31),
                                    X86Register::Cs(SegmentRegister {
                                        base: 0,
                                        limit: 0xFFFF_FFFF,
                                        selector: 8,
                                        attributes: 0xA09B,
                                    }),
                                    X86Register::Gdtr(TableRegister {
                                        base: 0x1000,
                                        limit: 0x27,
                                    }),
                                ],
                                compatibility_mask: mask,
                            });
                        }
                        _ => {}
                    }
                }
                9 => {
                    let gpa = self.gpa(0x3000, 0x1000);
                    if self.rng.chance(50) {
                        out.push(D::RequiredMemory {
                            gpa,
                            compatibility_mask: self.any_mask(),
                            number_of_bytes: 0x3000,
                            vtl2_protectable: self.rng.chance(50),
                        });
                    } else {
                        out.push(D::ErrorRange {
                            gpa,
                            compatibility_mask: self.any_mask(),
                            size_bytes: 0x2000,
                        });
                    }
                }
                10 => {
                    if let Some(mask) = self.mask_of(P::SEV_SNP) {
                        if id_block_masks & mask == 0 {
                            id_block_masks |= mask;
                            let author = self.rng.chance(50);
                            let mut key = IGVM_VHS_SNP_ID_BLOCK_PUBLIC_KEY::new_zeroed();
                            key.curve = 2;
                            key.qx[..48].copy_from_slice(&self.rng.bytes(48));
                            let mut sig = IGVM_VHS_SNP_ID_BLOCK_SIGNATURE::new_zeroed();
                            sig.r_comp[..48].copy_from_slice(&self.rng.bytes(48));
                            let zero_sig = IGVM_VHS_SNP_ID_BLOCK_SIGNATURE::new_zeroed();
                            let zero_key = IGVM_VHS_SNP_ID_BLOCK_PUBLIC_KEY::new_zeroed();
                            out.push(D::SnpIdBlock {
                                compatibility_mask: mask,
                                author_key_enabled: author as u8,
                                reserved: [0; 3],
                                ld: self.rng.bytes(48).try_into().unwrap(),
                                family_id: [1; 16],
                                image_id: [2; 16],
                                version: 1,
                                guest_svn: self.rng.below(10) as u32,
                                id_key_algorithm: 1,
                                author_key_algorithm: author as u32,
                                id_key_signature: Box::new(sig),
                                id_public_key: Box::new(key),
                                author_key_signature: Box::new(if author { sig } else { zero_sig }),
                                author_public_key: Box::new(if author { key } else { zero_key }),
                            });
                        }
                    }
                }
                _ => {
                    if let Some(mask) = self.mask_of(P::VSM_ISOLATION) {
                        out.push(D::VbsMeasurement {
                            compatibility_mask: mask,
                            version: 1,
                            product_id: self.rng.below(100) as u32,
                            module_id: 2,
                            security_version: 3,
                            policy_flags: 0,
                            boot_digest_algo: 1,
                            signing_algo: 1,
                            boot_measurement_digest: Box::new([7; 64]),
                            signature: Box::new([8; 256]),
                            public_key: Box::new([9; 512]),
                        });
                    }
                }
            }
        }
        // Insert what is still open, so that the file exercises inserts often.
        for (index, size) in open {
            let gpa = self.gpa(size, 0x1000);
            out.push(D::ParameterInsert(IGVM_VHS_PARAMETER_INSERT {
                gpa,
                compatibility_mask: self.any_mask(),
                parameter_area_index: index,
            }));
        }
        out
    }
}

fn param_eq(ours: Parameter, theirs: &IGVM_VHS_PARAMETER) -> bool {
    ours.parameter_area_index == theirs.parameter_area_index
        && ours.byte_offset == theirs.byte_offset
}

/// Our header against theirs, field by field.
fn same_directive(ours: &Header<'_>, theirs: &D) -> Result<(), String> {
    let ok = match (ours, theirs) {
        (
            Header::PageData {
                gpa,
                compatibility_mask,
                flags,
                data_type,
                data,
                ..
            },
            D::PageData {
                gpa: g,
                compatibility_mask: m,
                flags: f,
                data_type: t,
                data: d,
            },
        ) => {
            let dt = match data_type {
                PageDataType::Normal => 0,
                PageDataType::Secrets => 1,
                PageDataType::CpuidData => 2,
                PageDataType::CpuidXf => 3,
            };
            // igvm reads 4 KiB for every page with data; ours gives up to a page (2 MiB).
            let ours_data = &data[..data.len().min(4096)];
            gpa == g
                && compatibility_mask == m
                && flags.is_2mb_page == f.is_2mb_page()
                && flags.unmeasured == f.unmeasured()
                && flags.shared == f.shared()
                && dt == t.0
                && ours_data == &d[..]
        }
        (
            Header::ParameterArea {
                number_of_bytes,
                parameter_area_index,
                initial_data,
                ..
            },
            D::ParameterArea {
                number_of_bytes: n,
                parameter_area_index: i,
                initial_data: d,
            },
        ) => number_of_bytes == n && parameter_area_index == i && *initial_data == &d[..],
        (Header::VpCount(p), D::VpCount(q))
        | (Header::Srat(p), D::Srat(q))
        | (Header::Madt(p), D::Madt(q))
        | (Header::Slit(p), D::Slit(q))
        | (Header::Pptt(p), D::Pptt(q))
        | (Header::MmioRanges(p), D::MmioRanges(q))
        | (Header::MemoryMap(p), D::MemoryMap(q))
        | (Header::CommandLine(p), D::CommandLine(q))
        | (Header::DeviceTree(p), D::DeviceTree(q))
        | (Header::EnvironmentInfo(p), D::EnvironmentInfo(q)) => param_eq(*p, q),
        (
            Header::ParameterInsert {
                gpa,
                compatibility_mask,
                parameter_area_index,
            },
            D::ParameterInsert(q),
        ) => {
            *gpa == q.gpa
                && *compatibility_mask == q.compatibility_mask
                && *parameter_area_index == q.parameter_area_index
        }
        (
            Header::VpContext {
                gpa,
                compatibility_mask,
                vp_index,
                kind: VpContextKind::Vmsa,
                data,
                ..
            },
            D::SnpVpContext {
                gpa: g,
                compatibility_mask: m,
                vp_index: v,
                vmsa,
            },
        ) => {
            let b = vmsa.as_bytes();
            gpa == g
                && compatibility_mask == m
                && vp_index == v
                && data.len() == 4096
                && &data[..b.len()] == b
                && data[b.len()..].iter().all(|&x| x == 0)
        }
        (
            Header::VpContext {
                gpa: 0,
                compatibility_mask,
                vp_index,
                kind: VpContextKind::NativeX64,
                data,
                ..
            },
            D::X64NativeVpContext {
                compatibility_mask: m,
                vp_index: v,
                context,
            },
        ) => {
            let b = context.as_bytes();
            compatibility_mask == m && vp_index == v && &data[..b.len()] == b
        }
        (
            Header::VpContext {
                compatibility_mask,
                kind: VpContextKind::Vbs,
                data,
                ..
            },
            D::X64VbsVpContext {
                vtl,
                registers,
                compatibility_mask: m,
            },
        ) => {
            let count = u32::from_le_bytes(data[..4].try_into().unwrap()) as usize;
            compatibility_mask == m
                && count == registers.len()
                && data.len() == 4 + 32 * count
                && data[4..].chunks(32).all(|r| r[0] == *vtl as u8)
        }
        (
            Header::RequiredMemory {
                gpa,
                compatibility_mask,
                number_of_bytes,
                vtl2_protectable,
            },
            D::RequiredMemory {
                gpa: g,
                compatibility_mask: m,
                number_of_bytes: n,
                vtl2_protectable: v,
            },
        ) => gpa == g && compatibility_mask == m && number_of_bytes == n && vtl2_protectable == v,
        (
            Header::ErrorRange {
                gpa,
                compatibility_mask,
                size_bytes,
            },
            D::ErrorRange {
                gpa: g,
                compatibility_mask: m,
                size_bytes: s,
            },
        ) => gpa == g && compatibility_mask == m && size_bytes == s,
        (
            Header::SnpIdBlock(b),
            D::SnpIdBlock {
                compatibility_mask,
                author_key_enabled,
                ld,
                family_id,
                image_id,
                version,
                guest_svn,
                id_key_algorithm,
                author_key_algorithm,
                id_key_signature,
                id_public_key,
                author_key_signature,
                author_public_key,
                ..
            },
        ) => {
            let o = b.get();
            o.compatibility_mask == *compatibility_mask
                && o.author_key_enabled == *author_key_enabled
                && o.ld == *ld
                && o.family_id == *family_id
                && o.image_id == *image_id
                && o.version == *version
                && o.guest_svn == *guest_svn
                && o.id_key_algorithm == *id_key_algorithm
                && o.author_key_algorithm == *author_key_algorithm
                && o.id_key_signature == **id_key_signature
                && o.id_public_key == **id_public_key
                && o.author_key_signature == **author_key_signature
                && o.author_public_key == **author_public_key
        }
        (
            Header::VbsMeasurement(r),
            D::VbsMeasurement {
                compatibility_mask,
                version,
                product_id,
                module_id,
                security_version,
                policy_flags,
                boot_digest_algo,
                signing_algo,
                boot_measurement_digest,
                signature,
                public_key,
            },
        ) => {
            let o = r.get();
            o.compatibility_mask == *compatibility_mask
                && o.version == *version
                && o.product_id == *product_id
                && o.module_id == *module_id
                && o.security_version == *security_version
                && o.policy_flags == *policy_flags
                && o.boot_digest_algo == *boot_digest_algo
                && o.signing_algo == *signing_algo
                && o.boot_measurement_digest == **boot_measurement_digest
                && o.signature == **signature
                && o.public_key == **public_key
        }
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!("ours {ours:?}\ntheirs {theirs:?}"))
    }
}

/// Parses `bytes` with both parsers and compares everything.
///
/// Returns false when only ours could parse: igvm 0.5 rejects its own files whose file data
/// section is empty (`voff + vsize >= len`, spec notes §1.3); ours must accept those.
fn compare(bytes: &[u8]) -> bool {
    let voff = u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize;
    let vsize = u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize;
    if voff + vsize == bytes.len() {
        assert!(matches!(
            Theirs::new_from_binary(bytes, None),
            Err(igvm::Error::InvalidFixedHeader)
        ));
        let ours = IgvmFile::parse(bytes).unwrap_or_else(|e| panic!("ours rejects: {e}"));
        assert_eq!(ours.headers().count() as u32, ours.header_count());
        return false;
    }
    let theirs = Theirs::new_from_binary(bytes, None).expect("igvm parses its own output");
    let ours = IgvmFile::parse(bytes).unwrap_or_else(|e| panic!("ours rejects: {e}"));
    let headers: Vec<_> = ours.headers().map(|h| h.header).collect();
    assert_eq!(headers.len() as u32, ours.header_count());

    let plats: Vec<_> = headers
        .iter()
        .filter_map(|h| match h {
            Header::SupportedPlatform(p) => Some(*p),
            _ => None,
        })
        .collect();
    assert_eq!(plats.len(), theirs.platforms().len());
    for (o, IgvmPlatformHeader::SupportedPlatform(t)) in plats.iter().zip(theirs.platforms()) {
        assert_eq!(o.compatibility_mask, t.compatibility_mask);
        assert_eq!(o.platform_type, t.platform_type);
        assert_eq!(o.highest_vtl, t.highest_vtl);
        assert_eq!(o.platform_version, t.platform_version);
        assert_eq!(o.shared_gpa_boundary, t.shared_gpa_boundary);
        assert_eq!(ours.mask_for(t.platform_type), Some(t.compatibility_mask));
    }

    let inits: Vec<_> = headers
        .iter()
        .filter(|h| matches!(h, Header::GuestPolicy { .. }))
        .collect();
    assert_eq!(inits.len(), theirs.initializations().len());
    for (o, t) in inits.iter().zip(theirs.initializations()) {
        match (o, t) {
            (
                Header::GuestPolicy {
                    policy,
                    compatibility_mask,
                },
                I::GuestPolicy {
                    policy: p,
                    compatibility_mask: m,
                },
            ) => assert_eq!((policy, compatibility_mask), (p, m)),
            _ => panic!("init mismatch: {o:?} vs {t:?}"),
        }
    }

    let dirs: Vec<_> = headers.iter().filter(|h| h.type_code() >= 0x301).collect();
    assert_eq!(dirs.len(), theirs.directives().len());
    for (i, (o, t)) in dirs.iter().zip(theirs.directives()).enumerate() {
        if let Err(e) = same_directive(o, t) {
            panic!("directive {i} differs:\n{e}");
        }
    }
    assert_eq!(
        plats.len() + inits.len() + dirs.len(),
        headers.len(),
        "every header accounted for"
    );
    // The generator never overlaps imports.
    for p in &plats {
        ours.check_page_layout(p.compatibility_mask)
            .unwrap_or_else(|e| panic!("layout: {e}"));
    }
    true
}

/// Ours on corrupted bytes: never panics; whatever it accepts can be walked.
fn ours_survives(bytes: &[u8]) -> bool {
    match IgvmFile::parse(bytes) {
        Ok(f) => {
            let n = f.headers().count();
            assert_eq!(n as u32, f.header_count());
            for p in f.platforms() {
                let _ = f.check_page_layout(p.compatibility_mask);
            }
            true
        }
        Err(e) => {
            let s = e.to_string();
            assert!(!s.is_empty());
            false
        }
    }
}

fn fix_crc(f: &mut [u8]) {
    if f.len() < 0x18 {
        return;
    }
    let len = f.len() as u32;
    f[0x10..0x14].copy_from_slice(&len.to_le_bytes());
    f[0x14..0x18].fill(0);
    let word = |f: &[u8], o: usize| u32::from_le_bytes(f[o..o + 4].try_into().unwrap());
    let fixed = if word(f, 4) == 2 { 0x20 } else { 0x18 };
    let voff = word(f, 8) as usize;
    let vend = voff.saturating_add(word(f, 12) as usize);
    let mut c = relaunch_core::crc32::Crc32::new();
    c.update(&f[..fixed.min(f.len())]);
    c.update(f.get(voff..vend).unwrap_or(&[]));
    let crc = c.finish();
    f[0x14..0x18].copy_from_slice(&crc.to_le_bytes());
}

#[test]
fn generated_files_parse_identically() {
    let mut g = Gen {
        rng: Rng(0x5EED_1234_ABCD_0001),
        next_gpa: 0,
        platforms: Vec::new(),
    };
    let mut total_headers = 0usize;
    let mut accepted_mutants = 0usize;
    let mut no_data_files = 0usize;
    let files = 400;
    for n in 0..files {
        g.next_gpa = 0;
        let file = g.file();
        let mut bytes = Vec::new();
        file.serialize(&mut bytes).unwrap();
        if compare(&bytes) {
            total_headers += IgvmFile::parse(&bytes).unwrap().header_count() as usize;
        } else {
            no_data_files += 1;
        }

        // Corruptions.
        for _ in 0..20 {
            let mut m = bytes.clone();
            let flips = 1 + g.rng.below(4);
            for _ in 0..flips {
                let i = g.rng.below(m.len() as u64) as usize;
                m[i] ^= 1 << g.rng.below(8);
            }
            ours_survives(&m);
            fix_crc(&mut m);
            if ours_survives(&m) {
                accepted_mutants += 1;
            }
        }
        for _ in 0..4 {
            let cut = g.rng.below(bytes.len() as u64) as usize;
            let mut m = bytes[..cut].to_vec();
            assert!(!ours_survives(&m), "truncated file accepted");
            fix_crc(&mut m);
            ours_survives(&m);
        }
        // A header length field set to something random.
        let voff = u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize;
        let vsize = u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize;
        let mut m = bytes.clone();
        let mut pos = voff;
        let target = g.rng.below(8);
        for k in 0.. {
            if pos + 8 > voff + vsize {
                break;
            }
            let len = u32::from_le_bytes(m[pos + 4..pos + 8].try_into().unwrap()) as usize;
            if k == target {
                let v = g.rng.next() as u32 % 0x1000;
                m[pos + 4..pos + 8].copy_from_slice(&v.to_le_bytes());
                break;
            }
            pos += 8 + len.div_ceil(8) * 8;
        }
        fix_crc(&mut m);
        ours_survives(&m);
        if n == 0 {
            eprintln!("first file: {} bytes", bytes.len());
        }
    }
    eprintln!(
        "{files} files, {total_headers} headers compared ({no_data_files} files without file data \
         only parsed by ours); {accepted_mutants} CRC-repaired bit-flip mutants accepted"
    );
    assert!(total_headers > files * 10);
}

/// The shape igvm-wrap (virtfw-igvm-tools) writes: a V2 file with NATIVE and SEV-SNP views,
/// a native VP context and an SNP VMSA before the page data of the firmware.
#[test]
fn igvm_wrap_shaped_file() {
    let mut g = Gen {
        rng: Rng(7),
        next_gpa: 0,
        platforms: vec![(1, P::NATIVE), (2, P::SEV_SNP)],
    };
    let platforms = g
        .platforms
        .iter()
        .map(|&(m, t)| {
            IgvmPlatformHeader::SupportedPlatform(IGVM_VHS_SUPPORTED_PLATFORM {
                compatibility_mask: m,
                highest_vtl: 0,
                platform_type: t,
                platform_version: 1,
                shared_gpa_boundary: 0,
            })
        })
        .collect();
    let mut dirs = vec![
        D::X64NativeVpContext {
            compatibility_mask: 1,
            vp_index: 0,
            context: g.native(),
        },
        D::SnpVpContext {
            gpa: 0xFFFF_FFFF_F000,
            compatibility_mask: 2,
            vp_index: 0,
            vmsa: g.vmsa(),
        },
    ];
    for i in 0..64u64 {
        dirs.push(D::PageData {
            gpa: 0xFFC0_0000 + i * 0x1000,
            compatibility_mask: 3,
            flags: IgvmPageDataFlags::new(),
            data_type: IgvmPageDataType::NORMAL,
            data: g.rng.bytes(4096),
        });
    }
    dirs.push(D::PageData {
        gpa: 0x80_0000,
        compatibility_mask: 2,
        flags: IgvmPageDataFlags::new(),
        data_type: IgvmPageDataType::SECRETS,
        data: Vec::new(),
    });
    let file = Theirs::new(
        IgvmRevision::V2 {
            arch: Arch::X64,
            page_size: 4096,
        },
        platforms,
        vec![I::GuestPolicy {
            policy: 0x30000,
            compatibility_mask: 2,
        }],
        dirs,
    )
    .unwrap();
    let mut bytes = Vec::new();
    file.serialize(&mut bytes).unwrap();
    assert!(compare(&bytes));
    let ours = IgvmFile::parse(&bytes).unwrap();
    // The VMSA is the second directive, not the last.
    let vps: Vec<_> = ours
        .headers()
        .filter(|h| matches!(h.header, Header::VpContext { .. }))
        .map(|h| h.index)
        .collect();
    assert_eq!(vps, [3, 4]);
    assert!(ours.header_count() > 60);
}

/// (type, GPA or value, mask) of a header, for comparing with what a generator asked for.
fn key(h: &Header<'_>) -> (u32, u64, u32) {
    let mask = h.compatibility_mask().unwrap_or(0);
    let v = match *h {
        Header::PageData { gpa, .. }
        | Header::ParameterInsert { gpa, .. }
        | Header::VpContext { gpa, .. }
        | Header::RequiredMemory { gpa, .. } => gpa,
        Header::GuestPolicy { policy, .. } => policy,
        Header::ParameterArea {
            number_of_bytes, ..
        } => number_of_bytes,
        Header::SupportedPlatform(p) => u64::from(p.platform_type.0),
        Header::SnpIdBlock(b) => u64::from(b.get().guest_svn),
        _ => h.parameter().map_or(0, |p| u64::from(p.byte_offset)),
    };
    (h.type_code(), v, mask)
}

/// Our writer (`relaunch_core::writer::IgvmBuilder`) → our parser → the igvm crate's parser:
/// both parsers agree with each other and with what was written.
#[test]
fn writer_round_trip() {
    use relaunch_core::writer::IgvmBuilder;
    let mut g = Gen {
        rng: Rng(0xB0B),
        next_gpa: 0,
        platforms: Vec::new(),
    };
    let mut compared = 0;
    for _ in 0..200 {
        g.next_gpa = 0;
        let mut b = IgvmBuilder::new();
        let mut want = Vec::new();
        g.platforms.clear();
        for t in [P::SEV_SNP, P::NATIVE, P::TDX, P::SEV_ES] {
            if g.rng.chance(60) || (t == P::SEV_ES && g.platforms.is_empty()) {
                let m = b.platform(t, 0).unwrap();
                g.platforms.push((m, t));
                want.push((1, u64::from(t.0), m));
            }
        }
        if let Some(m) = g.mask_of(P::SEV_SNP) {
            b.guest_policy(0x30000, m);
            want.push((0x101, 0x30000, m));
        }
        let mut areas = Vec::new();
        for i in 0..g.rng.below(3) as u32 {
            let size = 0x1000 * (1 + g.rng.below(2));
            let init = if g.rng.chance(50) {
                g.rng.bytes(100)
            } else {
                Vec::new()
            };
            b.parameter_area(i, size, &init).unwrap();
            want.push((0x301, size, 0));
            areas.push((i, size));
        }
        for &(i, _) in &areas {
            match g.rng.below(4) {
                0 => {
                    b.vp_count(i, 0);
                    want.push((0x307, 0, 0));
                }
                1 => {
                    b.memory_map(i, 0x100);
                    want.push((0x30C, 0x100, 0));
                }
                2 => {
                    b.environment_info(i, 8);
                    want.push((0x313, 8, 0));
                }
                _ => {
                    b.mmio_ranges(i, 0x40);
                    want.push((0x30A, 0x40, 0));
                }
            }
        }
        for _ in 0..g.rng.below(30) {
            let gpa = g.gpa(0x1000, 0x1000);
            let m = g.any_mask();
            let data = if g.rng.chance(30) {
                Vec::new()
            } else {
                let n = 1 + g.rng.below(4096) as usize;
                g.rng.bytes(n)
            };
            let flags = IgvmPageDataFlags::new().with_unmeasured(g.rng.chance(20));
            let dt = IgvmPageDataType(g.rng.below(4) as u16);
            b.page_data(gpa, m, flags, dt, &data).unwrap();
            want.push((0x302, gpa, m));
        }
        for &(i, size) in &areas {
            let gpa = g.gpa(size, 0x1000);
            let m = g.any_mask();
            b.parameter_insert(gpa, m, i);
            want.push((0x303, gpa, m));
        }
        let m = g.any_mask();
        let gpa = g.gpa(0x10000, 0x1000);
        b.required_memory(gpa, m, 0x10000, 0);
        want.push((0x305, gpa, m));
        if let Some(m) = g.mask_of(P::SEV_SNP) {
            let vmsa = g.vmsa();
            b.vp_context(0xFFFF_FFFF_F000, m, 0, vmsa.as_bytes())
                .unwrap();
            want.push((0x304, 0xFFFF_FFFF_F000, m));
            let mut id = igvm_defs::IGVM_VHS_SNP_ID_BLOCK::new_zeroed();
            id.compatibility_mask = m;
            id.guest_svn = 5;
            b.snp_id_block(&id);
            want.push((0x30B, 5, m));
        }
        if let Some(m) = g.mask_of(P::NATIVE) {
            let ctx = g.native();
            b.native_vp_context(m, 0, &ctx).unwrap();
            want.push((0x304, 0, m));
        }
        let bytes = b.finish().unwrap();
        if compare(&bytes) {
            compared += 1;
        }
        let ours = IgvmFile::parse(&bytes).unwrap();
        let got: Vec<_> = ours.headers().map(|h| key(&h.header)).collect();
        assert_eq!(got, want);
    }
    eprintln!("{compared}/200 writer files compared with the igvm crate");
    assert!(compared > 150);
}

/// Every IGVM file committed in the repository parses with both parsers, identically.
#[test]
fn committed_bundles() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let mut n = 0;
    for dir in ["boot-images/prebuilt", "tests/data", "tests/vectors"] {
        let Ok(entries) = std::fs::read_dir(format!("{root}/{dir}")) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "igvm") {
                let bytes = std::fs::read(&p).unwrap();
                assert!(compare(&bytes), "{}: no file data", p.display());
                n += 1;
            }
        }
    }
    eprintln!("{n} committed IGVM files compared");
    assert!(n >= 1, "boot-images/prebuilt/hello.igvm is committed");
}

/// Crashers the fuzzer found (`tests/data/fuzz_*.bin`), and inputs that make the igvm 0.5
/// parser itself panic: ours rejects or accepts them cleanly.
#[test]
fn fuzz_regressions() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/data");
    let mut n = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("fuzz_") && name.ends_with(".bin") {
                let bytes = std::fs::read(e.path()).unwrap();
                ours_survives(&bytes);
                let mut fixed = bytes.clone();
                fix_crc(&mut fixed);
                ours_survives(&fixed);
                n += 1;
            }
        }
    }
    eprintln!("{n} fuzz regression inputs");

    // A VBS VP context whose registers name two VTLs: igvm 0.5 `assert_eq!`s (panics);
    // ours returns an error. Built from a valid igvm file by patching the second
    // register's VTL byte.
    let vsm = IGVM_VHS_SUPPORTED_PLATFORM {
        compatibility_mask: 1,
        highest_vtl: 2,
        platform_type: P::VSM_ISOLATION,
        platform_version: 1,
        shared_gpa_boundary: 0,
    };
    let file = Theirs::new(
        IgvmRevision::V1,
        vec![IgvmPlatformHeader::SupportedPlatform(vsm)],
        vec![],
        vec![D::X64VbsVpContext {
            vtl: igvm::hv_defs::Vtl::Vtl2,
            registers: vec![X86Register::Rip(0x1000), X86Register::Cr0(0x31)],
            compatibility_mask: 1,
        }],
    )
    .unwrap();
    let mut bytes = Vec::new();
    file.serialize(&mut bytes).unwrap();
    assert!(compare(&bytes));
    let data_start = IgvmFile::parse(&bytes).unwrap().file_data_start() as usize;
    assert_eq!(bytes[data_start + 4 + 32], 2, "second register's VTL byte");
    bytes[data_start + 4 + 32] = 0;
    // (The test output shows igvm's assertion message from here: that panic is expected.)
    let theirs = std::panic::catch_unwind(|| Theirs::new_from_binary(&bytes, None).is_ok());
    assert!(theirs.is_err(), "igvm 0.5 panics on mixed VTLs");
    let e = IgvmFile::parse(&bytes).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "header 1 (VP_CONTEXT) at 0x30: bad VP context data: registers for more than one VTL"
        )
    );
}
