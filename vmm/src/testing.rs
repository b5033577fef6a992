//! Hand-assembled test guests and plans (fixtures for the KVM tests, before and besides the
//! boot images of `boot-images/`).
//!
//! Provenance: each guest is 16-bit real-mode code assembled with GNU `as --32` (`.code16`)
//! and `objcopy -O binary -j .text`; the source is quoted above each byte array. The plan
//! places the code at GPA 0x1000 and starts vCPU 0 there in real mode (CS base 0); port
//! conventions are those of `docs/devices.md`.

use std::sync::Arc;

use relaunch_core::arch::regs::{DescriptorTable, Segment, VpRegs};
use relaunch_core::plan::{
    LaunchConfig, LaunchOp, LaunchPlan, PageData, PageKind, PlanParts, Platform, VpSource,
};

/// Where guest code is loaded.
pub const CODE_GPA: u64 = 0x1000;
/// Where the SMP guest's AP code is loaded (SIPI vector 2).
pub const AP_GPA: u64 = 0x2000;
/// The SMP guest's data page (AP counter at +0, expected count at +1).
pub const DATA_GPA: u64 = 0x3000;

/// Prints "hello from a hand-built plan\\n" and powers off.
///
/// ```text
/// .code16
/// .org 0
/// start:
///   mov $1, %al
///   out %al, $0x80
///   mov $0x3f8, %dx
///   mov $(msg - start + 0x1000), %si
/// 1: lodsb
///   test %al, %al
///   jz 2f
///   out %al, %dx
///   jmp 1b
/// 2: mov $0x604, %dx
///   mov $0x2000, %ax
///   out %ax, %dx
/// 3: hlt
///   jmp 3b
/// msg: .asciz "hello from a hand-built plan\n"
/// ```
pub const HELLO: &[u8] = &[
    0xb0, 0x01, 0xe6, 0x80, 0xba, 0xf8, 0x03, 0xbe, 0x1c, 0x10, 0xac, 0x84, 0xc0, 0x74, 0x03, 0xee,
    0xeb, 0xf8, 0xba, 0x04, 0x06, 0xb8, 0x00, 0x20, 0xef, 0xf4, 0xeb, 0xfd, 0x68, 0x65, 0x6c, 0x6c,
    0x6f, 0x20, 0x66, 0x72, 0x6f, 0x6d, 0x20, 0x61, 0x20, 0x68, 0x61, 0x6e, 0x64, 0x2d, 0x62, 0x75,
    0x69, 0x6c, 0x74, 0x20, 0x70, 0x6c, 0x61, 0x6e, 0x0a, 0x00,
];

/// Reads fw_cfg `etc/relaunch/generation` and `opt/relaunch/reboot-until`, prints "g<gen mod 10>\\n", resets through 0xCF9 while gen < until, then powers off.
///
/// ```text
/// # Reads its launch generation (fw_cfg 0x20, u64 LE) and opt/relaunch/reboot-until (0x21),
/// # prints "gen N\n" (N one digit mod 10), resets via 0xCF9 while gen < until, then powers off.
/// .code16
/// start:
///   mov $1, %al
///   out %al, $0x80
///   mov $0x510, %dx
///   mov $0x20, %ax
///   out %ax, %dx
///   mov $0x511, %dx
///   in %dx, %al
///   mov %al, %bh
///   mov $0x510, %dx
///   mov $0x21, %ax
///   out %ax, %dx
///   mov $0x511, %dx
///   in %dx, %al
///   mov %al, %bl
///   mov $0x3f8, %dx
///   mov $'g', %al
///   out %al, %dx
///   mov %bh, %al
///   xor %ah, %ah
///   mov $10, %cl
///   div %cl
///   mov %ah, %al
///   add $'0', %al
///   out %al, %dx
///   mov $'\n', %al
///   out %al, %dx
///   cmp %bl, %bh
///   jae off
///   mov $0xcf9, %dx
///   mov $0x06, %al
///   out %al, %dx
/// 1: hlt
///   jmp 1b
/// off:
///   mov $0x604, %dx
///   mov $0x2000, %ax
///   out %ax, %dx
/// 2: hlt
///   jmp 2b
/// ```
pub const FW_LOOP: &[u8] = &[
    0xb0, 0x01, 0xe6, 0x80, 0xba, 0x10, 0x05, 0xb8, 0x20, 0x00, 0xef, 0xba, 0x11, 0x05, 0xec, 0x88,
    0xc7, 0xba, 0x10, 0x05, 0xb8, 0x21, 0x00, 0xef, 0xba, 0x11, 0x05, 0xec, 0x88, 0xc3, 0xba, 0xf8,
    0x03, 0xb0, 0x67, 0xee, 0x88, 0xf8, 0x30, 0xe4, 0xb1, 0x0a, 0xf6, 0xf1, 0x88, 0xe0, 0x04, 0x30,
    0xee, 0xb0, 0x0a, 0xee, 0x38, 0xdf, 0x73, 0x09, 0xba, 0xf9, 0x0c, 0xb0, 0x06, 0xee, 0xf4, 0xeb,
    0xfd, 0xba, 0x04, 0x06, 0xb8, 0x00, 0x20, 0xef, 0xf4, 0xeb, 0xfd,
];

/// Boot marker, then reset through the i8042 (0xFE to port 0x64).
///
/// ```text
/// .code16
/// start:
///   mov $1, %al
///   out %al, $0x80
///   mov $0xfe, %al
///   out %al, $0x64
/// 1: hlt
///   jmp 1b
/// ```
pub const RESET: &[u8] = &[
    0xb0, 0x01, 0xe6, 0x80, 0xb0, 0xfe, 0xe6, 0x64, 0xf4, 0xeb, 0xfd,
];

/// Boot marker, then `ud2` with an empty IDT: #UD → #GP → #DF → triple fault. Runs in
/// 32-bit protected mode ([`protected_mode_regs`]; real-mode exception delivery is emulated
/// by KVM and fails on this nested host with an internal error instead).
///
/// ```text
/// .code32
///   mov $1, %al
///   out %al, $0x80
///   ud2
/// ```
pub const TRIPLE_FAULT: &[u8] = &[0xb0, 0x01, 0xe6, 0x80, 0x0f, 0x0b];

/// Boot marker, then pvpanic PANICKED.
///
/// ```text
/// .code16
/// start:
///   mov $1, %al
///   out %al, $0x80
///   mov $0x505, %dx
///   out %al, %dx
/// 1: hlt
///   jmp 1b
/// ```
pub const PANIC: &[u8] = &[
    0xb0, 0x01, 0xe6, 0x80, 0xba, 0x05, 0x05, 0xee, 0xf4, 0xeb, 0xfd,
];

/// Writes and reads junk on every port but the reset/power/panic ones, sends fw_cfg DMA requests at absurd addresses, `rep outsb` to COM1, then powers off.
///
/// ```text
/// # Pokes ports with junk: every port 0..0xffff gets out/in (skipping the reset/power/panic
/// # ports), then rep outsb garbage to COM1 and fw_cfg DMA at absurd addresses, then powers off.
/// .code16
/// start:
///   xor %cx, %cx
/// 1: mov %cx, %dx
///   cmp $0x64, %dx
///   je 2f
///   cmp $0xcf9, %dx
///   je 2f
///   cmp $0x604, %dx
///   je 2f
///   cmp $0x605, %dx
///   je 2f
///   cmp $0x505, %dx
///   je 2f
///   cmp $0x518, %dx
///   je 2f
///   mov $0xffffffff, %eax
///   out %eax, %dx
///   out %ax, %dx
///   out %al, %dx
///   in %dx, %eax
///   in %dx, %ax
/// 2: inc %cx
///   jnz 1b
///   # fw_cfg DMA: descriptor at 0xffff_fff0 (outside RAM), then a descriptor in RAM that
///   # asks for 4 GiB at a wrapping address.
///   mov $0x514, %dx
///   mov $0xffffffff, %eax
///   out %eax, %dx
///   mov $0x518, %dx
///   out %eax, %dx
///   mov $0x514, %dx
///   xor %eax, %eax
///   out %eax, %dx
///   mov $0x518, %dx
///   mov $0x00300000, %eax   # BE of 0x3000
///   out %eax, %dx
///   # MMIO junk at 0xF0000000 via FS base? (real mode: fs base set by the test plan)
///   mov $0x3f8, %dx
///   mov $0x1000, %si
///   mov $64, %cx
///   rep outsb
///   mov $0x604, %dx
///   mov $0x2000, %ax
///   out %ax, %dx
/// 3: hlt
///   jmp 3b
/// ```
pub const JUNK: &[u8] = &[
    0x31, 0xc9, 0x89, 0xca, 0x83, 0xfa, 0x64, 0x74, 0x2b, 0x81, 0xfa, 0xf9, 0x0c, 0x74, 0x25, 0x81,
    0xfa, 0x04, 0x06, 0x74, 0x1f, 0x81, 0xfa, 0x05, 0x06, 0x74, 0x19, 0x81, 0xfa, 0x05, 0x05, 0x74,
    0x13, 0x81, 0xfa, 0x18, 0x05, 0x74, 0x0d, 0x66, 0xb8, 0xff, 0xff, 0xff, 0xff, 0x66, 0xef, 0xef,
    0xee, 0x66, 0xed, 0xed, 0x41, 0x75, 0xcb, 0xba, 0x14, 0x05, 0x66, 0xb8, 0xff, 0xff, 0xff, 0xff,
    0x66, 0xef, 0xba, 0x18, 0x05, 0x66, 0xef, 0xba, 0x14, 0x05, 0x66, 0x31, 0xc0, 0x66, 0xef, 0xba,
    0x18, 0x05, 0x66, 0xb8, 0x00, 0x00, 0x30, 0x00, 0x66, 0xef, 0xba, 0xf8, 0x03, 0xbe, 0x00, 0x10,
    0xb9, 0x40, 0x00, 0xf3, 0x6e, 0xba, 0x04, 0x06, 0xb8, 0x00, 0x20, 0xef, 0xf4, 0xeb, 0xfd,
];

/// BSP: enables its LAPIC (FS base = 0xFEE00000), INIT + SIPI(2) to all APs, waits for the AP count at 0x3000 to reach the byte at 0x3001, prints "S\\n", powers off.
///
/// ```text
/// # BSP (real mode, FS base = 0xFEE00000 set by the plan): enable the LAPIC, INIT + SIPI
/// # (vector 2 -> 0x2000) to all others, wait until every AP incremented [0x3000], print "S\n",
/// # power off. The byte at 0x3001 holds the expected AP count (patched by the plan).
/// .code16
/// start:
///   mov $1, %al
///   out %al, $0x80
///   movl $0x1ff, %fs:0xf0
///   movl $0x000c4500, %fs:0x300
///   movl $0x000c4602, %fs:0x300
///   movl $0x000c4602, %fs:0x300
/// 1: mov (0x3000), %al
///   cmp (0x3001), %al
///   jb 1b
///   mov $0x3f8, %dx
///   mov $'S', %al
///   out %al, %dx
///   mov $'\n', %al
///   out %al, %dx
///   mov $0x604, %dx
///   mov $0x2000, %ax
///   out %ax, %dx
/// 2: hlt
///   jmp 2b
/// ```
pub const SMP_BSP: &[u8] = &[
    0xb0, 0x01, 0xe6, 0x80, 0x64, 0x66, 0xc7, 0x06, 0xf0, 0x00, 0xff, 0x01, 0x00, 0x00, 0x64, 0x66,
    0xc7, 0x06, 0x00, 0x03, 0x00, 0x45, 0x0c, 0x00, 0x64, 0x66, 0xc7, 0x06, 0x00, 0x03, 0x02, 0x46,
    0x0c, 0x00, 0x64, 0x66, 0xc7, 0x06, 0x00, 0x03, 0x02, 0x46, 0x0c, 0x00, 0xa0, 0x00, 0x30, 0x3a,
    0x06, 0x01, 0x30, 0x72, 0xf7, 0xba, 0xf8, 0x03, 0xb0, 0x53, 0xee, 0xb0, 0x0a, 0xee, 0xba, 0x04,
    0x06, 0xb8, 0x00, 0x20, 0xef, 0xf4, 0xeb, 0xfd,
];

/// AP (started by SIPI at 0x2000): prints "A", then `lock inc` of the counter at 0x3000 (in
/// that order, so every "A" is out before the BSP can see the full count and print "S"),
/// halts.
///
/// ```text
/// .code16
/// ap:
///   mov $0x3f8, %dx
///   mov $'A', %al
///   out %al, %dx
///   lock incb (0x3000)
/// 1: cli
///   hlt
///   jmp 1b
/// ```
pub const SMP_AP: &[u8] = &[
    0xba, 0xf8, 0x03, 0xb0, 0x41, 0xee, 0xf0, 0xfe, 0x06, 0x00, 0x30, 0xfa, 0xf4, 0xeb, 0xfc,
];
/// vm-launch-update stage 1 (`docs/fuki.md`): kicks the fw_cfg DMA request at 0x4000 (the
/// test places a SELECT|WRITE of the 56-byte `etc/vmlaunchupdate` structure there), then the
/// one at 0x4010 (SELECT|READ of it to 0x6000), prints "s" and the status digit (the byte at
/// 0x6002), resets through 0xCF9.
///
/// ```text
/// .code16
/// start:
///   mov $1, %al
///   out %al, $0x80
///   mov $0x514, %dx
///   xor %eax, %eax
///   out %eax, %dx          # DMA address, high half: 0
///   mov $0x518, %dx
///   mov $0x00400000, %eax  # low half, big-endian 0x4000: start
///   out %eax, %dx
///   mov $0x514, %dx
///   xor %eax, %eax
///   out %eax, %dx
///   mov $0x518, %dx
///   mov $0x10400000, %eax  # big-endian 0x4010
///   out %eax, %dx
///   mov $0x3f8, %dx
///   mov $'s', %al
///   out %al, %dx
///   mov (0x6002), %al
///   add $'0', %al
///   out %al, %dx
///   mov $'\n', %al
///   out %al, %dx
///   mov $0xcf9, %dx
///   mov $0x06, %al
///   out %al, %dx
/// 1: hlt
///   jmp 1b
/// ```
pub const HANDOVER_STAGE1: &[u8] = &[
    0xb0, 0x01, 0xe6, 0x80, 0xba, 0x14, 0x05, 0x66, 0x31, 0xc0, 0x66, 0xef, 0xba, 0x18, 0x05, 0x66,
    0xb8, 0x00, 0x00, 0x40, 0x00, 0x66, 0xef, 0xba, 0x14, 0x05, 0x66, 0x31, 0xc0, 0x66, 0xef, 0xba,
    0x18, 0x05, 0x66, 0xb8, 0x00, 0x00, 0x40, 0x10, 0x66, 0xef, 0xba, 0xf8, 0x03, 0xb0, 0x73, 0xee,
    0xa0, 0x02, 0x60, 0x04, 0x30, 0xee, 0xb0, 0x0a, 0xee, 0xba, 0xf9, 0x0c, 0xb0, 0x06, 0xee, 0xf4,
    0xeb, 0xfd,
];

/// Where [`HANDOVER_STAGE1`] finds its write request (its read request is 16 bytes on).
pub const HANDOVER_REQUEST_GPA: u64 = 0x4000;
/// Where the test places the structure [`HANDOVER_STAGE1`] writes.
pub const HANDOVER_STRUCT_GPA: u64 = 0x5000;
/// Where [`HANDOVER_STAGE1`] reads the structure back to.
pub const HANDOVER_READBACK_GPA: u64 = 0x6000;
/// The opaque region [`HANDOVER_STAGE2`] prints (8 bytes).
pub const HANDOVER_OPAQUE_GPA: u64 = 0x7000;

/// vm-launch-update stage 2: prints "2:" and the 8 bytes at 0x7000 (the opaque region
/// carried over), then powers off — or resets if the byte at 0x1FFF (the end of its code
/// page) is non-zero.
///
/// ```text
/// .code16
/// start:
///   mov $1, %al
///   out %al, $0x80
///   mov $0x3f8, %dx
///   mov $'2', %al
///   out %al, %dx
///   mov $':', %al
///   out %al, %dx
///   mov $0x7000, %si
///   mov $8, %cx
///   rep outsb
///   mov $'\n', %al
///   out %al, %dx
///   mov (0x1fff), %al
///   cmp $0, %al
///   jne 2f
///   mov $0x604, %dx
///   mov $0x2000, %ax
///   out %ax, %dx
/// 1: hlt
///   jmp 1b
/// 2: mov $0xcf9, %dx
///   mov $0x06, %al
///   out %al, %dx
/// 3: hlt
///   jmp 3b
/// ```
pub const HANDOVER_STAGE2: &[u8] = &[
    0xb0, 0x01, 0xe6, 0x80, 0xba, 0xf8, 0x03, 0xb0, 0x32, 0xee, 0xb0, 0x3a, 0xee, 0xbe, 0x00, 0x70,
    0xb9, 0x08, 0x00, 0xf3, 0x6e, 0xb0, 0x0a, 0xee, 0xa0, 0xff, 0x1f, 0x3c, 0x00, 0x75, 0x0a, 0xba,
    0x04, 0x06, 0xb8, 0x00, 0x20, 0xef, 0xf4, 0xeb, 0xfd, 0xba, 0xf9, 0x0c, 0xb0, 0x06, 0xee, 0xf4,
    0xeb, 0xfd,
];

/// A real-mode segment (VMSA attribute encoding: present, S, type).
fn rm_seg(selector: u16, base: u64, attrib: u16) -> Segment {
    Segment {
        selector,
        attrib,
        limit: 0xFFFF,
        base,
    }
}

/// Real-mode registers starting at `rip` with CS/DS/ES/SS base 0; `fs_base` for the FS
/// segment (the SMP guest reaches the LAPIC through it).
pub fn real_mode_regs(rip: u64, fs_base: u64) -> VpRegs {
    let data = rm_seg(0, 0, 0x93);
    VpRegs {
        rip,
        rflags: 2,
        cs: rm_seg(0, 0, 0x9B),
        ds: data,
        es: data,
        fs: rm_seg(0, fs_base, 0x93),
        gs: data,
        ss: data,
        tr: rm_seg(0, 0, 0x8B),
        ldtr: rm_seg(0, 0, 0x82),
        gdtr: DescriptorTable {
            limit: 0xFFFF,
            base: 0,
        },
        idtr: DescriptorTable {
            limit: 0x3FF,
            base: 0,
        },
        cr0: 0x6000_0010,
        ..VpRegs::default()
    }
}

/// Flat 32-bit protected mode (CR0.PE, 4 GiB code/data segments, empty IDT) at `rip`.
pub fn protected_mode_regs(rip: u64) -> VpRegs {
    let seg = |attrib| Segment {
        selector: 0,
        attrib,
        limit: 0xFFFF_FFFF,
        base: 0,
    };
    VpRegs {
        rip,
        rflags: 2,
        cs: seg(0xC9B),
        ds: seg(0xC93),
        es: seg(0xC93),
        fs: seg(0xC93),
        gs: seg(0xC93),
        ss: seg(0xC93),
        tr: rm_seg(0, 0, 0x8B),
        ldtr: rm_seg(0, 0, 0x82),
        gdtr: DescriptorTable::default(),
        idtr: DescriptorTable::default(),
        cr0: 0x11,
        ..VpRegs::default()
    }
}

/// A native plan: `code` at [`CODE_GPA`], extra `(gpa, bytes)` pages, vCPU 0 started in real
/// mode at [`CODE_GPA`] (FS base `fs_base`), `vcpus` vCPUs (the others wait for INIT/SIPI),
/// `mem` bytes of RAM.
pub fn plan(code: &[u8], extra: &[(u64, &[u8])], vcpus: u32, mem: u64, fs_base: u64) -> LaunchPlan {
    checked(parts(code, extra, vcpus, mem, fs_base))
}

/// A hand-made plan, checked by the core like a planned one.
fn checked(parts: PlanParts<Arc<[u8]>>) -> LaunchPlan {
    LaunchPlan::from_parts(parts).unwrap_or_else(|e| panic!("hand-made test plan: {e}"))
}

/// The parts of [`plan`].
fn parts(
    code: &[u8],
    extra: &[(u64, &[u8])],
    vcpus: u32,
    mem: u64,
    fs_base: u64,
) -> PlanParts<Arc<[u8]>> {
    let config = LaunchConfig {
        platform: Platform::Native,
        vcpus,
        mem_bytes: mem,
        vcpu_sig: 0,
        guest_features: 0,
        policy: None,
        host_data: [0; 32],
        kernel_hashes: None,
    };
    let mut p = PlanParts::new(Arc::from(&[][..]), config);
    p.ops.push(LaunchOp::CreateVm {
        platform: Platform::Native,
        policy: 0,
        vmsa_features: 0,
        vcpus,
    });
    let mut pages = vec![(CODE_GPA, code)];
    pages.extend_from_slice(extra);
    for (gpa, bytes) in pages {
        let mut page = [0u8; 4096];
        let n = bytes.len().min(4096);
        page[..n].copy_from_slice(&bytes[..n]);
        p.generated.push(page);
        p.ops.push(LaunchOp::ImportPage {
            gpa,
            kind: PageKind::Normal,
            data: PageData::Generated {
                index: (p.generated.len() - 1) as u32,
            },
        });
    }
    p.vp_contexts.push(real_mode_regs(CODE_GPA, fs_base));
    p.ops.push(LaunchOp::SetVpContext {
        vp: 0,
        source: VpSource::Bundle,
        ctx: 0,
    });
    p.ops.push(LaunchOp::Finalize {
        id_block: false,
        host_data: [0; 32],
    });
    p
}

/// [`plan`] with vCPU 0 starting from `regs` instead of real mode.
pub fn plan_with_regs(code: &[u8], regs: VpRegs, vcpus: u32, mem: u64) -> LaunchPlan {
    let mut p = parts(code, &[], vcpus, mem, 0);
    if let Some(r) = p.vp_contexts.get_mut(0) {
        *r = regs;
    }
    checked(p)
}

/// The SMP guest for `vcpus` vCPUs (BSP + APs started by INIT/SIPI).
pub fn smp_plan(vcpus: u32, mem: u64) -> LaunchPlan {
    let aps = u8::try_from(vcpus.saturating_sub(1)).unwrap_or(u8::MAX);
    let data = [0u8, aps];
    plan(
        SMP_BSP,
        &[(AP_GPA, SMP_AP), (DATA_GPA, &data)],
        vcpus,
        mem,
        0xFEE0_0000,
    )
}

/// A synthetic bzImage for the pack tests (Linux `Documentation/arch/x86/boot.rst`, "The
/// Real-Mode Kernel Header"): 4 setup sectors after the boot sector, boot protocol 2.15,
/// XLF_KERNEL_64, relocatable, `initrd_addr_max` 2 GiB - 1, 2 MiB alignment, a 2047-byte
/// command line, loaded at 16 MiB with `init_size` 2 MiB; `payload` is the protected-mode
/// kernel (`startup_64` at its +0x200).
pub fn synthetic_bzimage(payload: &[u8]) -> Vec<u8> {
    use crate::pack::linux::hdr;
    let mut b = vec![0u8; 5 * 512];
    let mut put = |at: usize, v: &[u8]| b[at..at + v.len()].copy_from_slice(v);
    put(hdr::SETUP_SECTS, &[4]);
    put(hdr::BOOT_FLAG, &0xAA55u16.to_le_bytes());
    put(hdr::JUMP_LEN, &[0x6A]); // the header ends at 0x26c
    put(hdr::MAGIC, b"HdrS");
    put(hdr::VERSION, &0x020Fu16.to_le_bytes());
    put(hdr::INITRD_ADDR_MAX, &0x7FFF_FFFFu32.to_le_bytes());
    put(hdr::KERNEL_ALIGNMENT, &0x20_0000u32.to_le_bytes());
    put(hdr::RELOCATABLE, &[1]);
    put(hdr::XLOADFLAGS, &1u16.to_le_bytes()); // XLF_KERNEL_64
    put(hdr::CMDLINE_SIZE, &2047u32.to_le_bytes());
    put(hdr::PREF_ADDRESS, &0x100_0000u64.to_le_bytes());
    put(hdr::INIT_SIZE, &0x20_0000u32.to_le_bytes());
    b.extend_from_slice(payload);
    b
}
