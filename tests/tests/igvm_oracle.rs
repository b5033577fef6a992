//! Our IGVM launch measurement vs the `igvm` crate's own (`igvm::measurement`, feature
//! `corim`: `generate_snp_measurement`, `generate_tdx_measurement`), on files written by the
//! igvm crate's serializer and by our writer, plus the spec §5 vectors
//! (`../shared/spec/igvm-snp.md`).
//!
//! Where we differ from the igvm crate on purpose (written down in `docs/measurement.md`,
//! "IGVM bundles"), the tests assert the difference exactly:
//! - **vCPUs.** KVM builds and measures one VMSA per created vCPU at `SNP_LAUNCH_FINISH`;
//!   the igvm crate measures the file's VMSA pages where they are. With one vCPU and the
//!   VMSA last (and already in the form KVM builds), both agree; each extra vCPU appends
//!   one VMSA PAGE_INFO (its reset state) to our chain.
//! - **`shared` pages.** QEMU ignores the flag and measures such pages; the igvm crate
//!   skips them (SNP). In the TDX view we follow the igvm crate (QEMU does not load TDX
//!   IGVM files), so TDX agrees with shared pages present.

mod igvm_gen;

use igvm::measurement::{generate_snp_measurement, generate_tdx_measurement};
use igvm::IsolationType;
use igvm_defs::IgvmPlatformType;
use igvm_gen::{random_igvm_crate_file, reset_vmsa, spec_file, spec_file_with, GenOptions, SIG};
use relaunch_core::arch::vmsa::KVM_VMSA_GPA;
use relaunch_core::measure::snp::{contents_digest, page_info_digest, PAGE_TYPE_VMSA};
use relaunch_core::measure::{expected, Measurement};
use relaunch_core::plan::{plan, LaunchConfig, Platform};

const N1: &str = "bc0606d033beaafe04315123f4e0ce4697a72b01d3833841cd41ab0e96494f60\
                  86e8f8e04434a32897862f3d54ff7cb6";
const N2: &str = "1bfb0a463e7b887525d354e50b5e32118c0601f5d5b01eb3cbfb753f2dd1ba2f\
                  f65331d4ba23675636b26655d227c94f";

fn cfg(platform: Platform, vcpus: u32) -> LaunchConfig {
    LaunchConfig {
        platform,
        vcpus,
        mem_bytes: 256 << 20,
        vcpu_sig: SIG,
        guest_features: 0,
        policy: None,
        host_data: [0; 32],
        kernel_hashes: None,
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn ours(file: &[u8], platform: Platform, vcpus: u32) -> Measurement {
    let p = plan(file, &cfg(platform, vcpus)).unwrap_or_else(|e| panic!("plan: {e}"));
    expected(p.stream()).unwrap_or_else(|e| panic!("measure: {e}"))
}

fn igvm_snp(file: &[u8]) -> [u8; 48] {
    let f = igvm::IgvmFile::new_from_binary(file, Some(IsolationType::Snp)).unwrap();
    generate_snp_measurement(f.initializations(), f.directives(), 1).unwrap()
}

fn igvm_tdx(file: &[u8]) -> [u8; 48] {
    let f = igvm::IgvmFile::new_from_binary(file, Some(IsolationType::Tdx)).unwrap();
    generate_tdx_measurement(f.directives(), 1).unwrap()
}

#[test]
fn spec_vector_one_page_area() {
    let file = spec_file(1);
    // The same file as the spec's: size and fixed header (§5).
    assert_eq!(file.len(), 12616);
    assert_eq!(
        hex(&file[..0x18]),
        "4947564d01000000180000003001000048310000efb34959"
    );
    // The VMSA is the QEMU BSP VMSA the spec names (page SHA-384 77920c4c…1c553a).
    let vmsa = reset_vmsa(Platform::Snp, 1);
    let d = hex(&contents_digest(&vmsa));
    assert!(d.starts_with("77920c4c") && d.ends_with("1c553a"), "{d}");
    assert_eq!(ours(&file, Platform::Snp, 1).to_string(), N1);
    assert_eq!(hex(&igvm_snp(&file)), N1);
}

#[test]
fn spec_vector_two_page_area() {
    // igvmmeasure measures one UNMEASURED page per insert and gets bc0606d0… here too; QEMU
    // and the igvm crate measure the whole area (spec §2.3, §6.4), and so do we.
    let file = spec_file(2);
    assert_eq!(ours(&file, Platform::Snp, 1).to_string(), N2);
    assert_eq!(hex(&igvm_snp(&file)), N2);
}

#[test]
fn each_extra_vcpu_appends_its_reset_vmsa() {
    // KVM measures every created vCPU's VMSA; the bundle names only VP 0, so VPs 1..n start
    // from QEMU's reset state (RDX = signature; no AP reset block with IGVM), which for the
    // EPYC-v4 signature is the same page as this file's BSP VMSA.
    let file = spec_file(1);
    let ap = contents_digest(&reset_vmsa(Platform::Snp, 1));
    let mut ld = igvm_snp(&file);
    for vcpus in 2..=4 {
        ld = page_info_digest(&ld, &ap, KVM_VMSA_GPA, PAGE_TYPE_VMSA);
        assert_eq!(
            ours(&file, Platform::Snp, vcpus),
            Measurement::Snp(ld),
            "{vcpus} vCPUs"
        );
    }
}

#[test]
fn random_snp_files_match_the_igvm_crate() {
    for seed in 1..=40u64 {
        let file = random_igvm_crate_file(
            seed,
            GenOptions {
                platform: IgvmPlatformType::SEV_SNP,
                shared_pages: false,
                data_pages: 1 + (seed as usize * 7) % 60,
            },
        );
        assert_eq!(
            ours(&file, Platform::Snp, 1),
            Measurement::Snp(igvm_snp(&file)),
            "seed {seed}"
        );
    }
}

#[test]
fn shared_pages_are_measured_like_qemu_not_like_the_igvm_crate() {
    let mut differed = 0;
    for seed in 100..120u64 {
        let file = random_igvm_crate_file(
            seed,
            GenOptions {
                platform: IgvmPlatformType::SEV_SNP,
                shared_pages: true,
                data_pages: 40,
            },
        );
        let has_shared = {
            let f = igvm::IgvmFile::new_from_binary(&file, Some(IsolationType::Snp)).unwrap();
            f.directives().iter().any(|d| {
                matches!(d, igvm::IgvmDirectiveHeader::PageData { flags, .. } if flags.shared())
            })
        };
        let same = ours(&file, Platform::Snp, 1) == Measurement::Snp(igvm_snp(&file));
        // Equal exactly when no page carries the flag.
        assert_eq!(same, !has_shared, "seed {seed}");
        differed += usize::from(has_shared);
    }
    assert!(differed > 5, "the generator made too few shared pages");
}

#[test]
fn random_tdx_files_match_the_igvm_crate() {
    for seed in 200..230u64 {
        let file = random_igvm_crate_file(
            seed,
            GenOptions {
                platform: IgvmPlatformType::TDX,
                shared_pages: true,
                data_pages: 1 + (seed as usize * 5) % 50,
            },
        );
        assert_eq!(
            ours(&file, Platform::Tdx, 2),
            Measurement::Tdx(igvm_tdx(&file)),
            "seed {seed}"
        );
    }
}

#[test]
fn our_writer_and_the_igvm_crate_agree_on_our_files() {
    // Files from our writer, measured by the igvm crate after its own parse.
    for n in 1..=4 {
        let file = spec_file(n);
        assert_eq!(
            ours(&file, Platform::Snp, 1),
            Measurement::Snp(igvm_snp(&file)),
            "{n}-page area"
        );
    }
}

#[test]
fn a_vmsa_before_the_pages_is_still_measured_last() {
    // igvm-wrap writes its VMSA before the page data. KVM measures every VMSA at
    // SNP_LAUNCH_FINISH, so the digest is the one of the VMSA-last file; the igvm crate
    // measures the VMSA where it stands and so gets another value.
    let file = spec_file_with(1, true);
    assert_eq!(ours(&file, Platform::Snp, 1).to_string(), N1);
    assert_ne!(hex(&igvm_snp(&file)), N1);
}
