//! The model against hand-built door call sequences: its refusals (errno and firmware
//! status), partial progress, and measurements equal to the core's prediction.

use std::sync::Arc;

use relaunch_core::arch::vmsa::{kvm_measured_vmsa, reset_regs, KVM_VMSA_GPA};
use relaunch_core::launch::{LaunchConfig, LaunchOp, PageData, PageKind, Platform};
use relaunch_core::measure::snp::{SnpDigest, PAGE_TYPE_NORMAL, PAGE_TYPE_VMSA, PAGE_TYPE_ZERO};
use relaunch_core::measure::tdx::MrtdDigest;
use relaunch_core::measure::{expected, Measurement};
use sha2::{Digest, Sha256, Sha384};

use super::*;
use crate::backend::native::{set_vp_regs, FreshRegs};
use crate::sys::coco::{
    CocoError, FwStatus, SevCmd, SnpUpdate, Source, TdxMemRegion, TdxVcpuCmd, TdxVmCmd,
};
use crate::sys::kvm::{Kvm, Vcpu, Vm};
use crate::sys::mem::GuestMapping;

const MB: u64 = 1 << 20;
const SNP_POLICY: u64 = 0x3_0000; // SMT + reserved-MBO (§1.3)

fn model(cfg: ModelConfig) -> (Model, Kvm) {
    let m = Model::new(cfg);
    let kvm = Kvm::with(Arc::new(m.clone()));
    (m, kvm)
}

fn errno_of(e: CocoError) -> i32 {
    e.errno.errno()
}

fn sev_fw(e: CocoError) -> Option<u32> {
    match e.fw_error {
        Some(FwStatus::Sev(c)) => Some(c),
        _ => None,
    }
}

/// An SNP VM with `mem` bytes of guest_memfd RAM at 0 (private) and `vcpus` vCPUs, after
/// INIT2 and SNP_LAUNCH_START.
fn snp_vm(kvm: &Kvm, mem: u64, vcpus: u64) -> (Vm, Vec<Vcpu>) {
    let mut vm = kvm.create_vm(KVM_X86_SNP_VM).unwrap();
    vm.sev_cmd(
        &mut SevCmd::Init2 {
            vmsa_features: 0,
            ghcb_version: 0,
        },
        3,
    )
    .unwrap();
    vm.sev_cmd(&mut SevCmd::SnpLaunchStart { policy: SNP_POLICY }, 3)
        .unwrap();
    let gmem = Arc::new(vm.create_guest_memfd(mem, 0).unwrap());
    vm.add_memslot(0, mem, None, Some(&gmem)).unwrap();
    vm.set_memory_attributes(0, mem, true).unwrap();
    let v = (0..vcpus).map(|i| vm.create_vcpu(i).unwrap()).collect();
    (vm, v)
}

fn staging(pages: usize, fill: impl Fn(usize) -> u8) -> GuestMapping {
    let m = GuestMapping::anonymous(pages * 4096).unwrap();
    let bytes: Vec<u8> = (0..pages * 4096).map(fill).collect();
    m.write(0, &bytes).unwrap();
    m
}

/// Issues one SNP_LAUNCH_UPDATE and loops over partial progress and EINTR as a backend must.
fn snp_update_all(vm: &Vm, gfn: u64, src: Option<&GuestMapping>, pages: u64, ty: u8) -> u32 {
    let mut u = SnpUpdate {
        gfn_start: gfn,
        source: src.map(|m| Source {
            mapping: m,
            offset: 0,
        }),
        len: pages * 4096,
        page_type: ty,
    };
    let mut calls = 0;
    while u.len > 0 {
        calls += 1;
        let mut cmd = SevCmd::SnpLaunchUpdate(u);
        let r = vm.sev_cmd(&mut cmd, 3);
        let SevCmd::SnpLaunchUpdate(back) = cmd else {
            unreachable!()
        };
        u = back;
        match r {
            Ok(()) => {}
            Err(e) if errno_of(e) == libc::EINTR => {}
            Err(e) => panic!("update failed: {e}"),
        }
        assert!(calls < 10_000);
    }
    calls
}

fn snp_finish(vm: &Vm, id_block: Option<&[u8; 96]>) -> Result<(), CocoError> {
    vm.sev_cmd(
        &mut SevCmd::SnpLaunchFinish {
            id_block,
            id_auth: None,
            auth_key_en: false,
            host_data: [0; 32],
        },
        3,
    )
}

/// The digest a by-hand fold of the same pages gives (SNP ABI PAGE_INFO chain, through the
/// core's primitives), with the VMSAs of untouched vCPUs: KVM's reset state, TR 0x83.
fn hand_digest(normal: &[u8], pages: u64, zero_gfn: u64, vcpus: usize) -> [u8; 48] {
    let mut d = SnpDigest::new();
    for i in 0..pages {
        let page = &normal[(i * 4096) as usize..((i + 1) * 4096) as usize];
        d.update_page(page, i * 4096, PAGE_TYPE_NORMAL);
    }
    d.update(&[0; 48], zero_gfn * 4096, PAGE_TYPE_ZERO);
    let mut regs = reset_regs(0x00A0_0F11, 0xFFFF_FFF0);
    regs.tr.attrib = 0x83;
    for _ in 0..vcpus {
        let v = kvm_measured_vmsa(&regs, 0, Platform::Snp, true);
        d.update_page(&v, KVM_VMSA_GPA, PAGE_TYPE_VMSA);
    }
    d.ld()
}

#[test]
fn snp_digest_from_what_it_was_given_with_partial_progress() {
    for (max, eintr) in [(None, None), (Some(3), Some(4)), (Some(1), Some(2))] {
        let (m, kvm) = model(ModelConfig {
            max_pages_per_call: max,
            eintr_every: eintr,
            ..ModelConfig::default()
        });
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = Arc::clone(&seen);
        m.set_hook(Box::new(move |p: &Measured| {
            sink.lock().unwrap().push(p.clone())
        }));
        let (vm, _vcpus) = snp_vm(&kvm, 4 * MB, 2);
        let src = staging(10, |i| (i * 7 % 251) as u8);
        let calls = snp_update_all(&vm, 0, Some(&src), 10, PAGE_TYPE_NORMAL);
        snp_update_all(&vm, 20, None, 1, PAGE_TYPE_ZERO);
        snp_finish(&vm, None).unwrap();
        let mut bytes = vec![0u8; 10 * 4096];
        src.read(0, &mut bytes).unwrap();
        let want = hand_digest(&bytes, 10, 20, 2);
        assert_eq!(
            m.measurement(),
            Some(Measurement::Snp(want)),
            "{max:?} {eintr:?}"
        );
        // Partial progress really split the call.
        match max {
            None => assert_eq!(calls, 1),
            Some(n) => assert!(calls as u64 >= 10 / n, "{calls} calls"),
        }
        // The measured entries: 10 normal, 1 zero, 2 VMSAs, with contents hashes.
        let ms = m.measured();
        assert_eq!(ms.len(), 13);
        // The hook saw every page, in the same order.
        assert_eq!(*seen.lock().unwrap(), ms);
        assert_eq!(
            ms[0],
            Measured::Snp {
                gpa: 0,
                page_type: 1,
                sha384: Some(Sha384::digest(&bytes[..4096]).into())
            }
        );
        assert!(matches!(
            ms[10],
            Measured::Snp {
                gpa: 0x14000,
                page_type: 3,
                sha384: None
            }
        ));
        assert!(matches!(
            ms[12],
            Measured::Snp {
                gpa: KVM_VMSA_GPA,
                page_type: 2,
                sha384: Some(_)
            }
        ));
    }
}

#[test]
fn snp_vmsa_comes_from_the_registers_set() {
    let (m, kvm) = model(ModelConfig::default());
    let (vm, vcpus) = snp_vm(&kvm, MB, 1);
    let mut r = reset_regs(0x00A0_0F11, 0xFFFF_FFF0);
    r.rip = 0x1234;
    r.gprs.rsi = 0x5678;
    let fresh = FreshRegs {
        sregs: vcpus[0].get_sregs().unwrap(),
        regs: vcpus[0].get_regs().unwrap(),
    };
    set_vp_regs(&vcpus[0], &fresh, &r).unwrap();
    snp_finish(&vm, None).unwrap();
    let mut d = SnpDigest::new();
    d.update_page(
        &kvm_measured_vmsa(&r, 0, Platform::Snp, true),
        KVM_VMSA_GPA,
        PAGE_TYPE_VMSA,
    );
    assert_eq!(m.measurement(), Some(Measurement::Snp(d.ld())));
    // Sealed: the registers can no longer be read or written (§1.4).
    assert_eq!(vcpus[0].get_regs().unwrap_err().errno(), libc::EINVAL);
}

#[test]
fn refuses_update_after_finish_with_firmware_status() {
    let (_m, kvm) = model(ModelConfig::default());
    let (vm, _v) = snp_vm(&kvm, MB, 1);
    snp_finish(&vm, None).unwrap();
    let src = staging(1, |_| 1);
    let mut cmd = SevCmd::SnpLaunchUpdate(SnpUpdate {
        gfn_start: 0,
        source: Some(Source {
            mapping: &src,
            offset: 0,
        }),
        len: 4096,
        page_type: 1,
    });
    let e = vm.sev_cmd(&mut cmd, 3).unwrap_err();
    assert_eq!(errno_of(e), libc::EIO);
    assert_eq!(sev_fw(e), Some(0x02));
    assert!(e.to_string().contains("SEV_RET_INVALID_GUEST_STATE"), "{e}");
}

#[test]
fn refuses_double_assignment_misalignment_out_of_ram_and_shared() {
    let (_m, kvm) = model(ModelConfig::default());
    let (vm, _v) = snp_vm(&kvm, MB, 1);
    let src = staging(2, |_| 9);
    let upd = |gfn, len, off, ty| {
        let mut cmd = SevCmd::SnpLaunchUpdate(SnpUpdate {
            gfn_start: gfn,
            source: Some(Source {
                mapping: &src,
                offset: off,
            }),
            len,
            page_type: ty,
        });
        vm.sev_cmd(&mut cmd, 3).map_err(errno_of)
    };
    assert_eq!(upd(3, 4096, 0, 1), Ok(()));
    // Double assignment of gfn 3.
    assert_eq!(upd(3, 4096, 0, 1), Err(libc::EEXIST));
    // len not a page multiple; source not page-aligned; unknown and VMSA types.
    assert_eq!(upd(4, 100, 0, 1), Err(libc::EINVAL));
    assert_eq!(upd(4, 4096, 8, 1), Err(libc::EINVAL));
    assert_eq!(upd(4, 4096, 0, 2), Err(libc::EINVAL));
    assert_eq!(upd(4, 4096, 0, 9), Err(libc::EINVAL));
    // Outside every memslot (RAM is 1 MiB = 256 pages).
    assert_eq!(upd(256, 4096, 0, 1), Err(libc::EINVAL));
    // Not private.
    vm.set_memory_attributes(0x10000, 4096, false).unwrap();
    assert_eq!(upd(0x10, 4096, 0, 1), Err(libc::EINVAL));
    // A source past the staging mapping.
    assert_eq!(upd(5, 4096, 2 * 4096, 1), Err(libc::EFAULT));
    // Misaligned memslots and attributes.
    assert_eq!(
        vm.set_memory_attributes(0x800, 4096, true)
            .unwrap_err()
            .errno(),
        libc::EINVAL
    );
}

#[test]
fn refuses_snp_policy_kvm_rejects() {
    let (_m, kvm) = model(ModelConfig::default());
    for (policy, ok) in [
        (SNP_POLICY, true),
        (0x1_0000, false),             // reserved-MBO bit 17 clear
        (0x2_0000, false),             // SMT bit 16 clear
        (SNP_POLICY | 1 << 25, false), // outside the supported set
        (SNP_POLICY | 1 << 19, true),  // DEBUG is a known bit
    ] {
        let vm = kvm.create_vm(KVM_X86_SNP_VM).unwrap();
        vm.sev_cmd(
            &mut SevCmd::Init2 {
                vmsa_features: 0,
                ghcb_version: 0,
            },
            3,
        )
        .unwrap();
        let r = vm.sev_cmd(&mut SevCmd::SnpLaunchStart { policy }, 3);
        assert_eq!(
            r.map_err(errno_of),
            if ok { Ok(()) } else { Err(libc::EINVAL) },
            "{policy:#x}"
        );
    }
}

#[test]
fn refuses_commands_out_of_order() {
    let (_m, kvm) = model(ModelConfig::default());
    let vm = kvm.create_vm(KVM_X86_SNP_VM).unwrap();
    // Before INIT2: ENOTTY (`sev_mem_enc_ioctl`).
    let e = vm
        .sev_cmd(&mut SevCmd::SnpLaunchStart { policy: SNP_POLICY }, 3)
        .unwrap_err();
    assert_eq!(errno_of(e), libc::ENOTTY);
    // INIT2: bad ghcb version, features outside the host's set; after a vCPU.
    let bad = vm.sev_cmd(
        &mut SevCmd::Init2 {
            vmsa_features: 0,
            ghcb_version: 3,
        },
        3,
    );
    assert_eq!(bad.map_err(errno_of), Err(libc::EINVAL));
    let bad = vm.sev_cmd(
        &mut SevCmd::Init2 {
            vmsa_features: 1 << 40,
            ghcb_version: 0,
        },
        3,
    );
    assert_eq!(bad.map_err(errno_of), Err(libc::EINVAL));
    let _v = vm.create_vcpu(0).unwrap();
    let late = vm.sev_cmd(
        &mut SevCmd::Init2 {
            vmsa_features: 0,
            ghcb_version: 0,
        },
        3,
    );
    assert_eq!(late.map_err(errno_of), Err(libc::EINVAL));
    // No /dev/sev handle.
    let vm = kvm.create_vm(KVM_X86_SNP_VM).unwrap();
    let nofd = vm.sev_cmd(
        &mut SevCmd::Init2 {
            vmsa_features: 0,
            ghcb_version: 0,
        },
        -1,
    );
    assert_eq!(nofd.map_err(errno_of), Err(libc::EBADF));
    // SEV commands on a default VM; an unknown VM type.
    let plain = kvm.create_vm(0).unwrap();
    let e = plain.sev_cmd(
        &mut SevCmd::Init2 {
            vmsa_features: 0,
            ghcb_version: 0,
        },
        3,
    );
    assert_eq!(e.map_err(errno_of), Err(libc::ENOTTY));
    assert_eq!(kvm.create_vm(1).unwrap_err().errno(), libc::EINVAL);
    // Private attributes on a default VM (no private memory), INIT_SHARED on SNP.
    assert_eq!(
        plain
            .set_memory_attributes(0, 4096, true)
            .unwrap_err()
            .errno(),
        libc::EINVAL
    );
    let snp = kvm.create_vm(KVM_X86_SNP_VM).unwrap();
    assert_eq!(
        snp.create_guest_memfd(MB, 2).unwrap_err().errno(),
        libc::EINVAL
    );
}

/// SNP_LAUNCH_FINISH with an ID block (SEV-SNP firmware ABI, SNP_LAUNCH_FINISH): its LD
/// must be the launch digest (else BAD_MEASUREMENT, 0x0B) and its POLICY (@0x58) the launch
/// policy (else POLICY_FAILURE, 0x07); a refused finish leaves no measurement.
#[test]
fn refuses_id_block_whose_digest_does_not_match() {
    for (case, fw) in [("good", None), ("ld", Some(0x0B)), ("policy", Some(0x07))] {
        let (m, kvm) = model(ModelConfig::default());
        let (vm, _v) = snp_vm(&kvm, MB, 1);
        let want = hand_digest(&[], 0, 7, 1);
        snp_update_all(&vm, 7, None, 1, PAGE_TYPE_ZERO);
        let mut block = [0u8; 96];
        block[..48].copy_from_slice(&want);
        if case == "ld" {
            block[0] ^= 1;
        }
        let policy = if case == "policy" {
            SNP_POLICY | 1 << 19
        } else {
            SNP_POLICY
        };
        block[88..96].copy_from_slice(&policy.to_le_bytes());
        let r = snp_finish(&vm, Some(&block));
        match fw {
            None => {
                r.unwrap();
                assert_eq!(m.measurement(), Some(Measurement::Snp(want)));
            }
            Some(code) => {
                let e = r.unwrap_err();
                assert_eq!((errno_of(e), sev_fw(e)), (libc::EIO, Some(code)), "{case}");
                if code == 0x0B {
                    assert!(e.to_string().contains("SEV_RET_BAD_MEASUREMENT"));
                }
                assert_eq!(m.measurement(), None);
            }
        }
    }
}

#[test]
fn sev_es_digest_and_launch_measure_blob() {
    let (m, kvm) = model(ModelConfig {
        tik: [7; 16],
        mnonce: Some([9; 16]),
        ..ModelConfig::default()
    });
    let mut vm = kvm.create_vm(KVM_X86_SEV_ES_VM).unwrap();
    vm.sev_cmd(
        &mut SevCmd::Init2 {
            vmsa_features: 0,
            ghcb_version: 0,
        },
        3,
    )
    .unwrap();
    // SEV-ES policy needs POLICY.ES (bit 2).
    let e = vm
        .sev_cmd(
            &mut SevCmd::LaunchStart {
                policy: 0,
                handle: 0,
            },
            3,
        )
        .unwrap_err();
    assert_eq!((errno_of(e), sev_fw(e)), (libc::EIO, Some(0x07)));
    vm.sev_cmd(
        &mut SevCmd::LaunchStart {
            policy: 4,
            handle: 0,
        },
        3,
    )
    .unwrap();
    let ram = Arc::new(staging(16, |i| (i % 13) as u8));
    vm.add_memslot(0, 16 * 4096, Some(&ram), None).unwrap();
    let _v = vm.create_vcpu(0).unwrap();
    let upd = |off: u64, len: u32| {
        vm.sev_cmd(
            &mut SevCmd::LaunchUpdateData {
                source: Source {
                    mapping: &ram,
                    offset: off,
                },
                len,
            },
            3,
        )
    };
    upd(0x1000, 0x2000).unwrap();
    upd(0x5000, 0x30).unwrap();
    assert_eq!(sev_fw(upd(0x6000, 0x31).unwrap_err()), Some(0x04));
    // MEASURE before UPDATE_VMSA on SEV-ES: the guest is not in the right state.
    let e = vm
        .sev_cmd(&mut SevCmd::LaunchMeasure { blob: [0; 48] }, 3)
        .unwrap_err();
    assert_eq!(sev_fw(e), Some(0x02));
    vm.sev_cmd(&mut SevCmd::LaunchUpdateVmsa, 3).unwrap();
    let mut cmd = SevCmd::LaunchMeasure { blob: [0; 48] };
    vm.sev_cmd(&mut cmd, 3).unwrap();
    let mut bytes = vec![0u8; 0x2000];
    ram.read(0x1000, &mut bytes).unwrap();
    let mut tail = vec![0u8; 0x30];
    ram.read(0x5000, &mut tail).unwrap();
    let mut regs = reset_regs(0x00A0_0F11, 0xFFFF_FFF0);
    regs.tr.attrib = 0x83;
    let vmsa = kvm_measured_vmsa(&regs, 0, Platform::SevEs, true);
    let mut h = Sha256::new();
    h.update(&bytes);
    h.update(&tail);
    h.update(vmsa);
    let digest: [u8; 32] = h.finalize().into();
    assert_eq!(m.measurement(), Some(Measurement::SevEs(digest)));
    let SevCmd::LaunchMeasure { blob } = cmd else {
        unreachable!()
    };
    let mac = relaunch_core::measure::sev::launch_measure(&[7; 16], 1, 55, 0, 4, &digest, &[9; 16]);
    assert_eq!(&blob[..32], &mac);
    assert_eq!(&blob[32..], &[9; 16]);
    // The trace sees the GPA of each range and the bytes.
    let ms = m.measured();
    assert!(matches!(&ms[0], Measured::Sev { gpa: 0x1000, bytes } if bytes.len() == 0x2000));
    // Update after finish.
    vm.sev_cmd(&mut SevCmd::LaunchFinish, 3).unwrap();
    assert_eq!(sev_fw(upd(0, 16).unwrap_err()), Some(0x02));
}

#[test]
fn tdx_mrtd_partial_progress_and_refusals() {
    let (m, kvm) = model(ModelConfig {
        max_pages_per_call: Some(2),
        eintr_every: Some(3),
        ..ModelConfig::default()
    });
    // vCPU before INIT_VM: EIO.
    let mut vm = kvm.create_vm(KVM_X86_TDX_VM).unwrap();
    assert_eq!(vm.create_vcpu(0).unwrap_err().errno(), libc::EIO);
    assert_eq!(vm.create_irqchip().unwrap_err().errno(), libc::ENOTTY);
    // The TD's CPUID as the backend builds it: the host's values masked by what the module
    // lets the VMM configure (INIT_VM refuses any other bit).
    let mut caps = crate::sys::coco::TdxCapabilities::default();
    kvm.create_vm(KVM_X86_TDX_VM)
        .unwrap()
        .tdx_vm_cmd(&mut TdxVmCmd::Capabilities(&mut caps))
        .unwrap();
    let entries = crate::backend::tdx::td_cpuid(&kvm.supported_cpuid(64).unwrap(), &caps);
    let cpuid = kvm_bindings::CpuId::from_entries(&entries).unwrap();
    let init = |vm: &Vm| {
        vm.tdx_vm_cmd(&mut TdxVmCmd::InitVm {
            attributes: 0,
            xfam: 3,
            mrconfigid: [0; 48],
            mrowner: [0; 48],
            mrownerconfig: [0; 48],
            cpuid: &cpuid,
        })
    };
    init(&vm).unwrap();
    assert_eq!(init(&vm).map_err(errno_of), Err(libc::EINVAL));
    let gmem = Arc::new(vm.create_guest_memfd(MB, 0).unwrap());
    vm.add_memslot(0, MB, None, Some(&gmem)).unwrap();
    vm.set_memory_attributes(0, MB, true).unwrap();
    let v = vm.create_vcpu(0).unwrap();
    let src = staging(5, |i| (i % 17) as u8);
    let region = |gpa, n, measure| TdxMemRegion {
        source: Source {
            mapping: &src,
            offset: 0,
        },
        gpa,
        nr_pages: n,
        measure,
    };
    // Before INIT_VCPU: EINVAL.
    let e = v
        .tdx_vcpu_cmd(&mut TdxVcpuCmd::InitMemRegion(region(0, 1, true)))
        .unwrap_err();
    assert_eq!(errno_of(e), libc::EINVAL);
    v.tdx_vcpu_cmd(&mut TdxVcpuCmd::InitVcpu { rcx: 0 })
        .unwrap();
    let mut cmd = TdxVcpuCmd::InitMemRegion(region(0x10000, 5, true));
    let mut calls = 0;
    loop {
        calls += 1;
        let r = v.tdx_vcpu_cmd(&mut cmd);
        let TdxVcpuCmd::InitMemRegion(r2) = &cmd else {
            unreachable!()
        };
        match r {
            Ok(()) if r2.nr_pages == 0 => break,
            Ok(()) => {}
            Err(e) if errno_of(e) == libc::EINTR => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert!(calls >= 3, "{calls}");
    // Misaligned GPA; double add; shared-bit GPA.
    let e = v.tdx_vcpu_cmd(&mut TdxVcpuCmd::InitMemRegion(region(0x20800, 1, false)));
    assert_eq!(e.map_err(errno_of), Err(libc::EINVAL));
    let e = v.tdx_vcpu_cmd(&mut TdxVcpuCmd::InitMemRegion(region(0x10000, 1, false)));
    assert_eq!(e.map_err(errno_of), Err(libc::EEXIST));
    let e = v.tdx_vcpu_cmd(&mut TdxVcpuCmd::InitMemRegion(region(1 << 47, 1, false)));
    assert_eq!(e.map_err(errno_of), Err(libc::EINVAL));
    vm.tdx_vm_cmd(&mut TdxVmCmd::FinalizeVm).unwrap();
    let mut d = MrtdDigest::new();
    let mut bytes = vec![0u8; 5 * 4096];
    src.read(0, &mut bytes).unwrap();
    for i in 0..5u64 {
        d.add_measured_page(0x10000 + i * 4096, &bytes[(i * 4096) as usize..][..4096]);
    }
    assert_eq!(m.measurement(), Some(Measurement::Tdx(d.finish())));
    // After FINALIZE every vCPU sub-command is refused.
    let e = v.tdx_vcpu_cmd(&mut TdxVcpuCmd::InitMemRegion(region(0x30000, 1, false)));
    assert_eq!(e.map_err(errno_of), Err(libc::EINVAL));
    let e = v.tdx_vcpu_cmd(&mut TdxVcpuCmd::GetCpuid(crate::sys::coco::TdxCpuid {
        nent: 256,
        entries: Vec::new(),
    }));
    assert_eq!(e.map_err(errno_of), Err(libc::EINVAL));
}

/// `KVM_TDX_GET_CPUID` (`intel-tdx.rst`): a vCPU ioctl between INIT_VM and FINALIZE_VM;
/// too little room is `E2BIG` with `nent` set to the entries needed and none written; the
/// TD's configurable bits are those INIT_VM configured (here leaf 7.0 EBX without bit 0).
#[test]
fn tdx_get_cpuid_answers_the_configured_td_cpuid() {
    use crate::sys::coco::TdxCpuid;
    let (_m, kvm) = model(ModelConfig::default());
    let vm = kvm.create_vm(KVM_X86_TDX_VM).unwrap();
    let host = kvm.supported_cpuid(256).unwrap();
    let mut config: Vec<_> = host
        .as_slice()
        .iter()
        .filter(|e| e.function == 7)
        .copied()
        .collect();
    config[0].ebx &= !1;
    let cpuid = kvm_bindings::CpuId::from_entries(&config).unwrap();
    vm.tdx_vm_cmd(&mut TdxVmCmd::InitVm {
        attributes: 0,
        xfam: 3,
        mrconfigid: [0; 48],
        mrowner: [0; 48],
        mrownerconfig: [0; 48],
        cpuid: &cpuid,
    })
    .unwrap();
    let v = vm.create_vcpu(0).unwrap();
    let mut cmd = TdxVcpuCmd::GetCpuid(TdxCpuid {
        nent: 1,
        entries: Vec::new(),
    });
    let e = v.tdx_vcpu_cmd(&mut cmd).unwrap_err();
    assert_eq!(errno_of(e), libc::E2BIG);
    let TdxVcpuCmd::GetCpuid(out) = cmd else {
        unreachable!()
    };
    let need = out.nent;
    assert_eq!(need as usize, host.as_slice().len());
    assert!(out.entries.is_empty());
    let mut cmd = TdxVcpuCmd::GetCpuid(TdxCpuid {
        nent: need,
        entries: Vec::new(),
    });
    v.tdx_vcpu_cmd(&mut cmd).unwrap();
    let TdxVcpuCmd::GetCpuid(out) = cmd else {
        unreachable!()
    };
    let leaf7 = out.entries.iter().find(|e| e.function == 7).unwrap();
    assert_eq!(leaf7.ebx, config[0].ebx);
    let leaf0 = out.entries.iter().find(|e| e.function == 0).unwrap();
    assert_eq!(
        leaf0.eax,
        host.as_slice()[0].eax,
        "not configurable: the host's"
    );
}

/// A minimal SNP launcher written here from the ABI (not the backend): drives a plan's ops
/// through the door, so the model's digest can be compared with the core's prediction.
fn drive_snp(kvm: &Kvm, plan: &relaunch_core::plan::LaunchPlan<Vec<u8>>, mem: u64) {
    let ops = plan.ops();
    let Some(LaunchOp::CreateVm {
        policy,
        vmsa_features,
        vcpus,
        ..
    }) = ops.first().copied()
    else {
        panic!("no CreateVm");
    };
    let mut vm = kvm.create_vm(KVM_X86_SNP_VM).unwrap();
    vm.sev_cmd(
        &mut SevCmd::Init2 {
            vmsa_features,
            ghcb_version: 0,
        },
        3,
    )
    .unwrap();
    vm.sev_cmd(&mut SevCmd::SnpLaunchStart { policy }, 3)
        .unwrap();
    let mut ranges: Vec<(u64, u64)> = crate::vstate::ram_layout(mem);
    for op in ops {
        if let LaunchOp::MapRam { gpa, size } = *op {
            if !ranges.iter().any(|&(g, s)| gpa < g + s && g < gpa + size) && size > 0 {
                ranges.push((gpa, size));
            }
        }
    }
    for &(gpa, size) in &ranges {
        let g = Arc::new(vm.create_guest_memfd(size, 0).unwrap());
        vm.add_memslot(gpa, size, None, Some(&g)).unwrap();
        vm.set_memory_attributes(gpa, size, true).unwrap();
    }
    let vcpus: Vec<Vcpu> = (0..u64::from(vcpus))
        .map(|i| vm.create_vcpu(i).unwrap())
        .collect();
    let stage = GuestMapping::anonymous(4096).unwrap();
    let mut pending = Vec::new();
    for op in ops {
        match *op {
            LaunchOp::ImportPage { gpa, kind, data } => {
                let ty = match kind {
                    PageKind::Normal => 1,
                    PageKind::Zero => 3,
                    PageKind::Unmeasured => 4,
                    PageKind::Secrets => 5,
                    PageKind::Cpuid => 6,
                    PageKind::Shared => continue,
                };
                let mut page = [0u8; 4096];
                if !matches!(data, PageData::Zeros) {
                    let b = plan.page_bytes(&data);
                    page[..b.len().min(4096)].copy_from_slice(&b[..b.len().min(4096)]);
                }
                stage.write(0, &page).unwrap();
                snp_update_all(&vm, gpa / 4096, Some(&stage), 1, ty);
            }
            LaunchOp::SetVpContext { vp, ctx, .. } => pending.push((vp, ctx)),
            _ => {}
        }
    }
    for (vp, ctx) in pending {
        let v = &vcpus[vp as usize];
        let fresh = FreshRegs {
            sregs: v.get_sregs().unwrap(),
            regs: v.get_regs().unwrap(),
        };
        set_vp_regs(v, &fresh, plan.vp_context(ctx).unwrap()).unwrap();
    }
    snp_finish(&vm, None).unwrap();
}

fn bundle(rel: &str) -> Option<Vec<u8>> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(rel);
    match std::fs::read(&p) {
        Ok(b) => Some(b),
        Err(_) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "{} absent under CI",
                p.display()
            );
            eprintln!(
                "SKIPPED: {} absent (cargo xtask build-images / scripts/oracles.sh)",
                p.display()
            );
            None
        }
    }
}

#[test]
fn snp_digest_equals_core_prediction_for_real_bundles() {
    for rel in [
        "boot-images/out/hello.igvm",
        ".oracles/ovmf/usr/share/ovmf/OVMF.fd",
    ] {
        let Some(b) = bundle(rel) else { continue };
        for vcpus in [1, 4] {
            let mem = 256 * MB;
            let cfg = LaunchConfig {
                platform: Platform::Snp,
                vcpus,
                mem_bytes: mem,
                vcpu_sig: 0x00A0_0F11,
                guest_features: 0,
                policy: None,
                host_data: [0; 32],
                kernel_hashes: None,
            };
            let plan = relaunch_core::plan::plan(b.clone(), &cfg).unwrap();
            let (m, kvm) = model(ModelConfig {
                max_pages_per_call: Some(1),
                ..ModelConfig::default()
            });
            drive_snp(&kvm, &plan, mem);
            assert_eq!(
                m.measurement(),
                Some(expected(plan.stream()).unwrap()),
                "{rel} with {vcpus} vCPUs"
            );
        }
    }
}

/// The SEV / SEV-ES counterpart of [`drive_snp`]: pages encrypted in place in guest memory
/// with LAUNCH_UPDATE_DATA, then (SEV-ES) LAUNCH_UPDATE_VMSA, LAUNCH_MEASURE, FINISH.
fn drive_sev(kvm: &Kvm, plan: &relaunch_core::plan::LaunchPlan<Vec<u8>>, mem: u64, es: bool) {
    let ops = plan.ops();
    let Some(LaunchOp::CreateVm {
        policy,
        vmsa_features,
        vcpus,
        ..
    }) = ops.first().copied()
    else {
        panic!("no CreateVm");
    };
    let ty = if es {
        KVM_X86_SEV_ES_VM
    } else {
        KVM_X86_SEV_VM
    };
    let mut vm = kvm.create_vm(ty).unwrap();
    let features = if es { vmsa_features } else { 0 };
    vm.sev_cmd(
        &mut SevCmd::Init2 {
            vmsa_features: features,
            ghcb_version: 0,
        },
        3,
    )
    .unwrap();
    vm.sev_cmd(
        &mut SevCmd::LaunchStart {
            policy: policy as u32,
            handle: 0,
        },
        3,
    )
    .unwrap();
    let mut ranges: Vec<(u64, u64)> = crate::vstate::ram_layout(mem);
    for op in ops {
        if let LaunchOp::MapRam { gpa, size } = *op {
            if !ranges.iter().any(|&(g, s)| gpa < g + s && g < gpa + size) && size > 0 {
                ranges.push((gpa, size));
            }
        }
    }
    let mut maps = Vec::new();
    for &(gpa, size) in &ranges {
        let m = Arc::new(GuestMapping::anonymous(size as usize).unwrap());
        vm.add_memslot(gpa, size, Some(&m), None).unwrap();
        maps.push((gpa, size, m));
    }
    let vcpus: Vec<Vcpu> = (0..u64::from(vcpus))
        .map(|i| vm.create_vcpu(i).unwrap())
        .collect();
    let at = |gpa: u64| {
        maps.iter()
            .find(|(g, s, _)| gpa >= *g && gpa < g + s)
            .map(|(g, _, m)| (Arc::clone(m), gpa - g))
            .unwrap()
    };
    for op in ops {
        match *op {
            LaunchOp::ImportPage { gpa, kind, data } => {
                let (m, off) = at(gpa);
                let b = if matches!(data, PageData::Zeros) {
                    &[][..]
                } else {
                    plan.page_bytes(&data)
                };
                let len = match (kind, data) {
                    (PageKind::Normal, PageData::GeneratedPart { .. }) => b.len() as u32,
                    (PageKind::Normal | PageKind::Zero, _) => 4096,
                    _ => 0,
                };
                let mut page = vec![0u8; 4096];
                page[..b.len().min(4096)].copy_from_slice(&b[..b.len().min(4096)]);
                if matches!(data, PageData::GeneratedPart { .. }) {
                    m.write(off, b).unwrap();
                } else {
                    m.write(off, &page).unwrap();
                }
                if len > 0 {
                    vm.sev_cmd(
                        &mut SevCmd::LaunchUpdateData {
                            source: Source {
                                mapping: &m,
                                offset: off,
                            },
                            len,
                        },
                        3,
                    )
                    .unwrap();
                }
            }
            LaunchOp::SetVpContext { vp, ctx, .. } if es => {
                let v = &vcpus[vp as usize];
                let fresh = FreshRegs {
                    sregs: v.get_sregs().unwrap(),
                    regs: v.get_regs().unwrap(),
                };
                set_vp_regs(v, &fresh, plan.vp_context(ctx).unwrap()).unwrap();
            }
            _ => {}
        }
    }
    if es {
        vm.sev_cmd(&mut SevCmd::LaunchUpdateVmsa, 3).unwrap();
    }
    vm.sev_cmd(&mut SevCmd::LaunchMeasure { blob: [0; 48] }, 3)
        .unwrap();
    vm.sev_cmd(&mut SevCmd::LaunchFinish, 3).unwrap();
}

/// Runs scripts/trace_digest.py over the model's events as `relaunch trace` prints them.
fn script_digest(m: &Model) -> String {
    let lines: String = m
        .events()
        .iter()
        .map(|e| crate::cli::trace::event_line(e) + "\n")
        .collect();
    let dir = std::env::temp_dir().join(format!("relaunch-trace-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join(format!("{:x}.jsonl", Sha256::digest(lines.as_bytes())[0]));
    std::fs::write(&f, &lines).unwrap();
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/trace_digest.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .arg(&f)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&f);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn sev_digests_and_script_equal_core_prediction_for_real_bundles() {
    for rel in [
        "boot-images/out/hello.igvm",
        ".oracles/ovmf/usr/share/ovmf/OVMF.fd",
    ] {
        let Some(b) = bundle(rel) else { continue };
        for platform in [Platform::Snp, Platform::SevEs, Platform::Sev] {
            for vcpus in [1, 4] {
                let mem = 256 * MB;
                let cfg = LaunchConfig {
                    platform,
                    vcpus,
                    mem_bytes: mem,
                    vcpu_sig: 0x00A0_0F11,
                    guest_features: 0,
                    policy: None,
                    host_data: [0; 32],
                    kernel_hashes: None,
                };
                let Ok(plan) = relaunch_core::plan::plan(b.clone(), &cfg) else {
                    // hello.igvm has no SEV / SEV-ES view.
                    assert!(
                        rel.ends_with(".igvm") && platform != Platform::Snp,
                        "{rel} {platform}"
                    );
                    continue;
                };
                let (m, kvm) = model(ModelConfig::default());
                match platform {
                    Platform::Snp => drive_snp(&kvm, &plan, mem),
                    p => drive_sev(&kvm, &plan, mem, p == Platform::SevEs),
                }
                let want = expected(plan.stream()).unwrap();
                assert_eq!(m.measurement(), Some(want), "{rel} {platform} {vcpus}");
                assert_eq!(
                    script_digest(&m),
                    want.to_string(),
                    "{rel} {platform} {vcpus}"
                );
            }
        }
    }
}

/// `KVM_GET_DEVICE_ATTR` on the system fd, group `KVM_X86_GRP_SEV` (1)
/// (`amd-memory-encryption.rst`, "Device attribute API"): attribute 0 is the accepted
/// `vmsa_features`, attribute 1 the accepted SNP policy bits (Linux 6.19+; `ENXIO` on older
/// kernels), attribute 2 `KVM_X86_SEV_SNP_REQ_CERTS` (1 on Linux 7.0+ with SNP on; `ENXIO`
/// before); anything else `ENXIO`.
#[test]
fn device_attrs_answer_the_sev_group_only() {
    let (_m, kvm) = model(ModelConfig {
        vmsa_features: 0x20,
        snp_policy_bits: 0xF_FFFF,
        ..ModelConfig::default()
    });
    assert_eq!(kvm.device_attr(1, 0), Ok(0x20));
    assert_eq!(kvm.device_attr(1, 1), Ok(0xF_FFFF));
    assert_eq!(kvm.device_attr(1, 2), Ok(1));
    assert_eq!(kvm.device_attr(1, 3).unwrap_err().errno(), libc::ENXIO);
    assert_eq!(kvm.device_attr(0, 1).unwrap_err().errno(), libc::ENXIO);
    let (_m, old) = model(ModelConfig {
        snp_policy_bits_attr: false,
        snp_req_certs: false,
        ..ModelConfig::default()
    });
    assert_eq!(old.device_attr(1, 1).unwrap_err().errno(), libc::ENXIO);
    assert_eq!(old.device_attr(1, 2).unwrap_err().errno(), libc::ENXIO);
    assert!(old.device_attr(1, 0).is_ok());
}

/// The SNP CPUID page (SEV-SNP firmware ABI, SNP_LAUNCH_UPDATE page type CPUID; what the
/// firmware does: `amd/AMD-ASPFW` `sev_mcmd.c`, `cpuid_lookup.c`): the page QEMU builds from
/// the host's CPUID is accepted and measured with empty contents; a page asking for a
/// feature the firmware's host lacks fails with EIO / `INVALID_PARAM`, the corrected table
/// comes back in the source (KVM copies it: `../shared/spec/kvm-coco-abi.md` §1.3), the
/// page is not assigned, and the corrected page is then accepted.
#[test]
fn snp_cpuid_page_is_checked_against_the_host_cpuid() {
    use crate::backend::snp_cpuid::CpuidTable;
    use relaunch_core::measure::snp::PAGE_TYPE_CPUID;

    let (m, kvm) = model(ModelConfig::default());
    let host = kvm.supported_cpuid(256).unwrap();
    let good = CpuidTable::from_kvm(&host).unwrap();
    let (vm, _v) = snp_vm(&kvm, MB, 1);
    let src = GuestMapping::anonymous(4096).unwrap();
    src.write(0, &good.to_page()).unwrap();
    snp_update_all(&vm, 4, Some(&src), 1, PAGE_TYPE_CPUID);
    assert_eq!(
        m.measured(),
        [Measured::Snp {
            gpa: 0x4000,
            page_type: PAGE_TYPE_CPUID,
            sha384: None
        }]
    );

    // The firmware's host has no leaf-1 EDX bit 28 (HTT) and a smaller max extended leaf.
    let mut fw: Vec<_> = host.as_slice().to_vec();
    for e in &mut fw {
        match e.function {
            1 => e.edx &= !(1 << 28),
            0x8000_0000 => e.eax = 0x8000_0008,
            _ => {}
        }
    }
    let (m, kvm) = model(ModelConfig {
        firmware_cpuid: Some(fw),
        ..ModelConfig::default()
    });
    let (vm, _v) = snp_vm(&kvm, MB, 1);
    src.write(0, &good.to_page()).unwrap();
    let mut cmd = SevCmd::SnpLaunchUpdate(SnpUpdate {
        gfn_start: 4,
        source: Some(Source {
            mapping: &src,
            offset: 0,
        }),
        len: 4096,
        page_type: PAGE_TYPE_CPUID,
    });
    let e = vm.sev_cmd(&mut cmd, 3).unwrap_err();
    assert_eq!((errno_of(e), sev_fw(e)), (libc::EIO, Some(0x16)));
    let SevCmd::SnpLaunchUpdate(u) = cmd else {
        unreachable!()
    };
    assert_eq!((u.gfn_start, u.len), (4, 4096), "no progress");
    assert!(m.measured().is_empty());
    let mut back = [0u8; 4096];
    src.read(0, &mut back).unwrap();
    let fixed = CpuidTable::from_page(&back);
    assert_eq!(
        good.mismatches(&fixed),
        [
            "leaf 0x1 subleaf 0x0: edx 0x178bfbff expected 0x078bfbff",
            "leaf 0x80000000 subleaf 0x0: eax 0x8000001f expected 0x80000008",
        ]
    );
    // The page was not assigned: the corrected table is accepted.
    snp_update_all(&vm, 4, Some(&src), 1, PAGE_TYPE_CPUID);
    assert_eq!(m.measured().len(), 1);
}

/// A CPUID page whose header is malformed (reserved field set, more than 64 functions) is
/// refused and left as it was (`sev_mcmd.c`: no write-back for these).
#[test]
fn snp_cpuid_page_with_a_bad_header_is_refused_untouched() {
    use relaunch_core::measure::snp::PAGE_TYPE_CPUID;
    let (_m, kvm) = model(ModelConfig::default());
    let (vm, _v) = snp_vm(&kvm, MB, 1);
    for header in [[65u8, 0, 0, 0, 0, 0, 0, 0], [1, 0, 0, 0, 1, 0, 0, 0]] {
        let src = GuestMapping::anonymous(4096).unwrap();
        src.write(0, &header).unwrap();
        let mut cmd = SevCmd::SnpLaunchUpdate(SnpUpdate {
            gfn_start: 5,
            source: Some(Source {
                mapping: &src,
                offset: 0,
            }),
            len: 4096,
            page_type: PAGE_TYPE_CPUID,
        });
        let e = vm.sev_cmd(&mut cmd, 3).unwrap_err();
        assert_eq!((errno_of(e), sev_fw(e)), (libc::EIO, Some(0x16)));
        let mut back = [0u8; 8];
        src.read(0, &mut back).unwrap();
        assert_eq!(back, header);
    }
}

/// A SEV (type 2) VM of the model with `ram` at GPA 0, launched with policy 1 (NODBG) and
/// one `LAUNCH_UPDATE_DATA` over its first page, not measured yet.
fn sev_updated_vm(kvm: &Kvm, ram: &Arc<GuestMapping>) -> Vm {
    let mut vm = kvm.create_vm(KVM_X86_SEV_VM).unwrap();
    vm.sev_cmd(
        &mut SevCmd::Init2 {
            vmsa_features: 0,
            ghcb_version: 0,
        },
        3,
    )
    .unwrap();
    vm.sev_cmd(
        &mut SevCmd::LaunchStart {
            policy: 1,
            handle: 0,
        },
        3,
    )
    .unwrap();
    vm.add_memslot(0, ram.len() as u64, Some(ram), None)
        .unwrap();
    vm.sev_cmd(
        &mut SevCmd::LaunchUpdateData {
            source: Source {
                mapping: ram,
                offset: 0,
            },
            len: 4096,
        },
        3,
    )
    .unwrap();
    vm
}

fn measure(vm: &Vm) -> relaunch_core::owner::LaunchMeasure {
    let mut cmd = SevCmd::LaunchMeasure { blob: [0; 48] };
    vm.sev_cmd(&mut cmd, 3).unwrap();
    let SevCmd::LaunchMeasure { blob } = cmd else {
        unreachable!()
    };
    relaunch_core::owner::LaunchMeasure::from_bytes(&blob)
}

fn inject(
    vm: &Vm,
    ram: &GuestMapping,
    header: &[u8],
    offset: u64,
    guest_len: u32,
    trans: &[u8],
) -> Result<(), CocoError> {
    vm.sev_cmd(
        &mut SevCmd::LaunchSecret {
            header,
            guest: Source {
                mapping: ram,
                offset,
            },
            guest_len,
            trans,
        },
        3,
    )
}

const OWNER: relaunch_core::owner::TransportKeys = relaunch_core::owner::TransportKeys {
    tek: [0x11; 16],
    tik: [0x22; 16],
};

fn owner_model() -> (Model, Kvm) {
    model(ModelConfig {
        tik: OWNER.tik,
        tek: OWNER.tek,
        ..ModelConfig::default()
    })
}

/// The owner's turn against the model, as the SEV firmware defines it (amd/AMD-ASPFW
/// `sev_mcmd_launch_secret`, `sev_channel_extract`; `amd-memory-encryption.rst`
/// KVM_SEV_LAUNCH_SECRET "after the measurement has been validated"): before
/// `LAUNCH_MEASURE` the guest is not in LSECRET (INVALID_GUEST_STATE, 0x02); the blob's
/// MEASURE verifies with the owner's TIK over the model's digest and firmware version, its
/// MNONCE is fresh per call; a packet wrapped with the owner's keys lands decrypted at the
/// named guest address, any number of times; after `LAUNCH_FINISH` the guest is RUNNING
/// (0x02 again).
#[test]
fn launch_secret_lands_in_guest_memory_between_measure_and_finish() {
    use relaunch_core::owner::{verify_launch_measure, wrap_secret};
    let (m, kvm) = owner_model();
    let ram = Arc::new(staging(8, |_| 0xEE));
    let vm = sev_updated_vm(&kvm, &ram);
    let secret = *b"the owner's disk key, 32 bytes!!";
    let mut packet = secret;
    let early = wrap_secret(&OWNER, &[1; 16], 0, &[0; 32], &mut packet).unwrap();
    let e = inject(&vm, &ram, &early.to_bytes(), 0x3000, 32, &packet).unwrap_err();
    assert_eq!((errno_of(e), sev_fw(e)), (libc::EIO, Some(0x02)));

    let got = measure(&vm);
    let Some(Measurement::Sev(digest)) = m.measurement() else {
        panic!("no SEV measurement")
    };
    let mut page = [0u8; 4096];
    ram.read(0, &mut page).unwrap();
    assert_eq!(digest, <[u8; 32]>::from(Sha256::digest(page)));
    verify_launch_measure(&OWNER.tik, MODEL_FW, 1, &digest, &got).unwrap();
    // A second launch gets another nonce (the firmware's TRNG), hence another MEASURE.
    let vm2 = sev_updated_vm(&kvm, &Arc::new(staging(8, |_| 0xEE)));
    let got2 = measure(&vm2);
    assert_ne!(got.mnonce, got2.mnonce);
    verify_launch_measure(&OWNER.tik, MODEL_FW, 1, &digest, &got2).unwrap();

    let mut packet = secret;
    let h = wrap_secret(&OWNER, &[2; 16], 0, &got.measure, &mut packet).unwrap();
    assert_ne!(packet, secret);
    inject(&vm, &ram, &h.to_bytes(), 0x3000, 32, &packet).unwrap();
    let mut back = [0u8; 32];
    ram.read(0x3000, &mut back).unwrap();
    assert_eq!(back, secret);
    let mut around = [0u8; 2];
    ram.read(0x2FFF, &mut around[..1]).unwrap();
    ram.read(0x3020, &mut around[1..]).unwrap();
    assert_eq!(around, [0xEE, 0xEE], "nothing outside the range is written");
    // Any number of secrets before FINISH.
    let mut p2 = [0x5A; 16];
    let h2 = wrap_secret(&OWNER, &[3; 16], 0, &got.measure, &mut p2).unwrap();
    inject(&vm, &ram, &h2.to_bytes(), 0x4010, 16, &p2).unwrap();
    let mut b2 = [0u8; 16];
    ram.read(0x4010, &mut b2).unwrap();
    assert_eq!(b2, [0x5A; 16]);
    // The trace names the uapi fields and the GPA.
    let call = m
        .events()
        .into_iter()
        .filter_map(|e| match e {
            Event::Call(c) if c.ioctl == "KVM_SEV_LAUNCH_SECRET" => Some(c),
            _ => None,
        })
        .nth(1)
        .unwrap();
    assert_eq!(call.error, None);
    for (k, v) in [
        ("hdr_len", 52),
        ("gpa", 0x3000),
        ("guest_len", 32),
        ("trans_len", 32),
    ] {
        assert!(
            call.args.contains(&(k, Arg::Num(v))),
            "{k}: {:?}",
            call.args
        );
    }
    vm.sev_cmd(&mut SevCmd::LaunchFinish, 3).unwrap();
    let e = inject(&vm, &ram, &h.to_bytes(), 0x3000, 32, &packet).unwrap_err();
    assert_eq!((errno_of(e), sev_fw(e)), (libc::EIO, Some(0x02)));
}

/// What the firmware and KVM refuse, each with guest memory untouched: a packet whose MAC
/// does not verify — a flipped byte, the wrong TIK, or a packet wrapped for another launch's
/// MEASURE — is BAD_MEASUREMENT (0x0B, `hmac_sha256_verify`); FLAGS.COMPRESSED with a good
/// MAC is UNSUPPORTED (0x15); a header that is not 52 bytes, a guest length that is not a
/// non-zero multiple of 16 or differs from the packet's is INVALID_LENGTH (0x04); a guest
/// address not 16-byte aligned INVALID_ADDRESS (0x09) (`sev_mcmd_launch_secret`); a range
/// outside the memory is EFAULT, an empty range or a packet over 16 KiB EINVAL
/// (`sev_launch_secret`: `sev_pin_memory`, `psp_copy_user_blob`).
#[test]
fn launch_secret_refusals() {
    use relaunch_core::owner::{wrap_secret, TransportKeys, FLAG_COMPRESSED};
    let (_m, kvm) = owner_model();
    let ram = Arc::new(staging(8, |_| 0xEE));
    let vm = sev_updated_vm(&kvm, &ram);
    let got = measure(&vm);
    let other = measure(&sev_updated_vm(&kvm, &Arc::new(staging(8, |_| 0xEE))));
    let wrap = |keys: &TransportKeys, flags: u32, measure: &[u8; 32], len: usize| {
        let mut p = vec![0x77u8; len];
        let h = wrap_secret(keys, &[9; 16], flags, measure, &mut p).unwrap();
        (h.to_bytes(), p)
    };
    let fw_err = |r: Result<(), CocoError>| {
        let e = r.unwrap_err();
        (errno_of(e), sev_fw(e))
    };
    let (h, p) = wrap(&OWNER, 0, &got.measure, 32);
    let mut flipped = p.clone();
    flipped[7] ^= 1;
    let wrong_tik = TransportKeys {
        tik: [0x23; 16],
        ..OWNER
    };
    let (hw, pw) = wrap(&wrong_tik, 0, &got.measure, 32);
    let (ho, po) = wrap(&OWNER, 0, &other.measure, 32);
    let (hc, pc) = wrap(&OWNER, FLAG_COMPRESSED, &got.measure, 32);
    let big = wrap(&OWNER, 0, &got.measure, 0x4000).1;
    type Case<'a> = (&'a str, Result<(), CocoError>, (i32, Option<u32>));
    let cases: Vec<Case<'_>> = vec![
        (
            "flipped packet",
            inject(&vm, &ram, &h, 0x3000, 32, &flipped),
            (libc::EIO, Some(0x0B)),
        ),
        (
            "wrong TIK",
            inject(&vm, &ram, &hw, 0x3000, 32, &pw),
            (libc::EIO, Some(0x0B)),
        ),
        (
            "another launch's MEASURE",
            inject(&vm, &ram, &ho, 0x3000, 32, &po),
            (libc::EIO, Some(0x0B)),
        ),
        (
            "compressed",
            inject(&vm, &ram, &hc, 0x3000, 32, &pc),
            (libc::EIO, Some(0x15)),
        ),
        (
            "51-byte header",
            inject(&vm, &ram, &h[..51], 0x3000, 32, &p),
            (libc::EIO, Some(0x04)),
        ),
        (
            "guest_len != trans_len",
            inject(&vm, &ram, &h, 0x3000, 48, &p),
            (libc::EIO, Some(0x04)),
        ),
        (
            "guest_len not a 16 multiple",
            inject(&vm, &ram, &h, 0x3000, 24, &p[..24]),
            (libc::EIO, Some(0x04)),
        ),
        (
            "misaligned guest address",
            inject(&vm, &ram, &h, 0x3008, 32, &p),
            (libc::EIO, Some(0x09)),
        ),
        (
            "past the memory",
            inject(&vm, &ram, &h, 8 * 4096 - 16, 32, &p),
            (libc::EFAULT, None),
        ),
        (
            "empty range",
            inject(&vm, &ram, &h, 0x3000, 0, &p),
            (libc::EINVAL, None),
        ),
        (
            "empty packet",
            inject(&vm, &ram, &h, 0x3000, 32, &[]),
            (libc::EINVAL, None),
        ),
        (
            "packet over 16 KiB",
            inject(
                &vm,
                &ram,
                &h,
                0,
                0x4010,
                &[big.as_slice(), &[0; 16]].concat(),
            ),
            (libc::EINVAL, None),
        ),
    ];
    for (what, r, want) in cases {
        assert_eq!(fw_err(r), want, "{what}");
    }
    let mut page = [0u8; 4096];
    ram.read(0x3000, &mut page).unwrap();
    assert!(page.iter().all(|&b| b == 0xEE), "guest memory untouched");
    // The good packet still goes in afterwards (refusals change no state).
    inject(&vm, &ram, &h, 0x3000, 32, &p).unwrap();
    let mut back = [0u8; 32];
    ram.read(0x3000, &mut back).unwrap();
    assert_eq!(back, [0x77; 32]);
}

/// `KVM_SEV_SNP_ENABLE_REQ_CERTS` (Linux 7.0 `snp_enable_certs`, kvm-x86 20c3c4108d58):
/// `kvm->created_vcpus || !sev_snp_guest(kvm)` → EINVAL, so it works on an initialised SNP
/// VM before any vCPU (SNP_LAUNCH_START or not) and nowhere else; like every command but
/// the INITs it needs INIT2 first (`sev_mem_enc_ioctl`: ENOTTY).
#[test]
fn enable_req_certs_only_on_snp_before_vcpus() {
    let (_m, kvm) = model(ModelConfig::default());
    let init2 = |vm: &Vm| {
        vm.sev_cmd(
            &mut SevCmd::Init2 {
                vmsa_features: 0,
                ghcb_version: 0,
            },
            3,
        )
    };
    let vm = kvm.create_vm(KVM_X86_SNP_VM).unwrap();
    let early = vm.sev_cmd(&mut SevCmd::SnpEnableReqCerts, 3);
    assert_eq!(early.map_err(errno_of), Err(libc::ENOTTY));
    init2(&vm).unwrap();
    vm.sev_cmd(&mut SevCmd::SnpEnableReqCerts, 3).unwrap();
    vm.sev_cmd(&mut SevCmd::SnpLaunchStart { policy: SNP_POLICY }, 3)
        .unwrap();
    vm.sev_cmd(&mut SevCmd::SnpEnableReqCerts, 3).unwrap();
    let _v = vm.create_vcpu(0).unwrap();
    let late = vm.sev_cmd(&mut SevCmd::SnpEnableReqCerts, 3);
    assert_eq!(late.map_err(errno_of), Err(libc::EINVAL));
    let es = kvm.create_vm(KVM_X86_SEV_ES_VM).unwrap();
    init2(&es).unwrap();
    let not_snp = es.sev_cmd(&mut SevCmd::SnpEnableReqCerts, 3);
    assert_eq!(not_snp.map_err(errno_of), Err(libc::EINVAL));
    // A kernel before 7.0 does not know the command id (`sev_mem_enc_ioctl`: EINVAL).
    let (_m, old) = model(ModelConfig {
        snp_req_certs: false,
        ..ModelConfig::default()
    });
    let vm = old.create_vm(KVM_X86_SNP_VM).unwrap();
    init2(&vm).unwrap();
    let unknown = vm.sev_cmd(&mut SevCmd::SnpEnableReqCerts, 3);
    assert_eq!(unknown.map_err(errno_of), Err(libc::EINVAL));
}

/// `KVM_IRQ_LINE` needs the in-kernel irqchip (`kvm_vm_ioctl_irq_line`: ENXIO without one);
/// with it every level is accepted, and the call is on record.
#[test]
fn irq_line_needs_the_irqchip() {
    let (m, kvm) = model(ModelConfig {
        record_events: true,
        ..ModelConfig::default()
    });
    let vm = kvm.create_vm(0).unwrap();
    let line = vm.irq_line();
    assert_eq!(line.set(4, true).unwrap_err().errno(), libc::ENXIO);
    vm.create_irqchip().unwrap();
    line.set(4, true).unwrap();
    line.set(4, false).unwrap();
    let irq_calls = m
        .events()
        .iter()
        .filter(|e| format!("{e:?}").contains("KVM_IRQ_LINE"))
        .count();
    assert_eq!(irq_calls, 3);
}
