//! Cross-checks of `relaunch_core::arch::vmsa` against an independent VMSA definition: the
//! `igvm` crate's `snp_defs::SevVmsa` (microsoft/igvm 0.5.0, written from the AMD APM
//! Table B-4). Both structs view the same pseudo-random page; every field must read the
//! same value, which pins every offset and size we use.

use igvm::snp_defs::SevVmsa;
use relaunch_core::arch::vmsa::{
    kvm_measured_vmsa, parse_vmsa, regs_from_vmsa, reset_regs, Vmsa, BSP_RESET_ADDR, VMSA_SIZE,
};
use relaunch_core::plan::Platform;
use zerocopy::{FromBytes, IntoBytes};

fn pattern() -> [u8; VMSA_SIZE] {
    let mut x: u32 = 0x9E37_79B9;
    core::array::from_fn(|_| {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x as u8
    })
}

#[test]
fn every_field_matches_the_igvm_crate_layout() {
    assert_eq!(core::mem::size_of::<SevVmsa>(), VMSA_SIZE);
    let page = pattern();
    let theirs = SevVmsa::read_from_bytes(&page[..]).unwrap();
    let ours: Vmsa = parse_vmsa(&page).unwrap();
    assert_eq!(theirs.as_bytes(), ours.as_bytes());

    macro_rules! same_seg {
        ($($f:ident),*) => {$(
            assert_eq!(theirs.$f.selector, ours.$f.selector.get(), stringify!($f));
            assert_eq!(theirs.$f.attrib, ours.$f.attrib.get(), stringify!($f));
            assert_eq!(theirs.$f.limit, ours.$f.limit.get(), stringify!($f));
            assert_eq!(theirs.$f.base, ours.$f.base.get(), stringify!($f));
        )*};
    }
    same_seg!(es, cs, ss, ds, fs, gs, gdtr, ldtr, idtr, tr);

    macro_rules! same {
        ($($t:ident => $o:ident),* $(,)?) => {$(
            assert_eq!(theirs.$t, ours.$o.get(), stringify!($o));
        )*};
    }
    same!(
        pl0_ssp => pl0_ssp, pl1_ssp => pl1_ssp, pl2_ssp => pl2_ssp, pl3_ssp => pl3_ssp,
        u_cet => u_cet, efer => efer, xss => xss, cr4 => cr4, cr3 => cr3, cr0 => cr0,
        dr7 => dr7, dr6 => dr6, rflags => rflags, rip => rip, dr0 => dr0, dr1 => dr1,
        dr2 => dr2, dr3 => dr3, dr0_addr_mask => dr0_addr_mask, dr3_addr_mask => dr3_addr_mask,
        rsp => rsp, s_cet => s_cet, ssp => ssp, interrupt_ssp_table_addr => isst_addr,
        rax => rax, star => star, lstar => lstar, cstar => cstar, sfmask => sfmask,
        kernel_gs_base => kernel_gs_base, sysenter_cs => sysenter_cs,
        sysenter_esp => sysenter_esp, sysenter_eip => sysenter_eip, cr2 => cr2, pat => g_pat,
        dbgctl => dbgctl, last_branch_from_ip => br_from, last_branch_to_ip => br_to,
        last_excp_from_ip => last_excp_from, last_excp_to_ip => last_excp_to,
        spec_ctrl => spec_ctrl, rcx => rcx, rdx => rdx, rbx => rbx, rbp => rbp, rsi => rsi,
        rdi => rdi, r8 => r8, r9 => r9, r10 => r10, r11 => r11, r12 => r12, r13 => r13,
        r14 => r14, r15 => r15, exit_info1 => guest_exit_info_1,
        exit_info2 => guest_exit_info_2, exit_int_info => guest_exit_int_info,
        next_rip => guest_nrip, guest_error_code => guest_exit_code,
        virtual_tom => virtual_tom, tlb_id => tlb_id, pcpu_id => pcpu_id, xcr0 => xcr0,
        x87dp => x87_dp, mxcsr => mxcsr, x87_ftw => x87_ftw, x87_fsw => x87_fsw,
        x87_fcw => x87_fcw, x87_op => x87_fop, x87_ds => x87_ds, x87_cs => x87_cs,
        x87_rip => x87_rip,
    );
    assert_eq!(theirs.vmpl, ours.vmpl);
    assert_eq!(theirs.cpl, ours.cpl);
    assert_eq!(theirs.sev_features.as_bytes(), ours.sev_features.as_bytes());
    assert_eq!(theirs.v_intr_cntrl.0, ours.vintr_ctrl.get());
    assert_eq!(theirs.event_inject.as_bytes(), ours.event_inj.as_bytes());
    assert_eq!(theirs.xmm_registers.as_bytes(), &ours.fpreg_xmm[..]);
    assert_eq!(theirs.ymm_registers.as_bytes(), &ours.fpreg_ymm[..]);
    let x87: Vec<u8> = [
        &theirs.x87_registers1[..],
        &theirs.x87_registers2[..],
        &theirs.x87_registers3[..],
    ]
    .concat();
    assert_eq!(x87, ours.fpreg_x87);
}

#[test]
fn an_igvm_crate_vmsa_round_trips_through_the_kvm_model() {
    // The VMSA an IGVM builder would write for QEMU's reset state (igvm crate struct),
    // converted by the QEMU model and rebuilt by the KVM model, is the page KVM measures.
    let regs = reset_regs(0x00A1_0F10, BSP_RESET_ADDR);
    let measured = kvm_measured_vmsa(&regs, 0, Platform::Snp, true);
    let mut theirs = SevVmsa::read_from_bytes(&measured[..]).unwrap();
    theirs.cpl = 0;
    theirs.cr0 = 0x10;
    theirs.rflags = 0x2;
    let (back, features) = regs_from_vmsa(theirs.as_bytes(), Platform::Snp).unwrap();
    assert_eq!(features, 1);
    assert_eq!(kvm_measured_vmsa(&back, 0, Platform::Snp, true), measured);
    // A field KVM never takes (cr2) is refused with its offset.
    theirs.cr2 = 1;
    let err = regs_from_vmsa(theirs.as_bytes(), Platform::Snp).unwrap_err();
    assert!(err.to_string().contains("cr2"), "{err}");
}
