//! `sevinfo`: prints the SEV view the platform gives the guest, one fact per line, then
//! powers off.
//!
//! Serial output (docs/boot-images.md "sevinfo's output contract"), every line starting with
//! `sevinfo: `:
//! ```text
//! sevinfo: start
//! sevinfo: cpuid 8000001f eax=0x........ ebx=0x........   | sevinfo: cpuid 8000001f absent
//! sevinfo: cpuid 80000008 eax=0x........                  | sevinfo: cpuid 80000008 absent
//! sevinfo: sev_status=0x...   | sevinfo: sev_status not read (cpuid 8000001f eax bit 1 clear)
//!                             | sevinfo: sev_status #GP
//! sevinfo: c-bit paging ok (c-bit 47, cr3=0x...)   | sevinfo: c-bit paging skipped (sev_status bit 0 clear)
//!                                                 | sevinfo: c-bit paging failed: <why>
//! sevinfo: secret sha256=<64 hex digits>   | sevinfo: secret none
//! sevinfo: done
//! ```
//! An exception the guest did not expect is reported as
//! `sevinfo: exception V error=0x.. rip=0x.. cr2=0x..`, followed by the crash report
//! (pvpanic), instead of a triple fault.
//!
//! Sources: CPUID Fn8000_001F (AMD APM Vol. 3 §E.4.17; Linux
//! `tools/arch/x86/kcpuid/cpuid.csv`): EAX bit 1 SEV, bit 3 SEV-ES, bit 4 SEV-SNP; EBX\[5:0\]
//! the C-bit position, EBX\[11:6\] the physical-address reduction. CPUID Fn8000_0008
//! EAX\[7:0\]: physical address bits. MSR SEV_STATUS 0xC0010131 (AMD APM Vol. 2 §15.34.10;
//! Linux `arch/x86/include/asm/msr-index.h` `MSR_AMD64_SEV`): bit 0 SEV enabled, bit 1
//! SEV-ES enabled, bit 2 SEV-SNP enabled; it exists only where CPUID reports SEV (elsewhere
//! RDMSR raises #GP, which this guest catches).
#![no_std]
#![no_main]

use core::arch::{asm, global_asm};

use relaunch_guests::{layout, platform, power, print, println, serial, sha256};

/// CPUID: the largest extended function (EAX of Fn8000_0000).
const CPUID_EXT_MAX: u32 = 0x8000_0000;
/// CPUID: address sizes.
const CPUID_ADDR_SIZES: u32 = 0x8000_0008;
/// CPUID: encrypted memory capabilities.
const CPUID_SEV: u32 = 0x8000_001F;
/// CPUID Fn8000_001F EAX bit 1: SEV supported.
const CPUID_SEV_EAX_SEV: u32 = 1 << 1;
use platform::MSR_SEV_STATUS;
/// SEV_STATUS bit 0: SEV is enabled for this guest.
const SEV_STATUS_SEV: u64 = 1;

/// Page-table entry bits: present, writable, 2 MiB page (PS, in a page-directory entry).
const PTE_P_RW: u64 = 0x3;
const PTE_PS: u64 = 0x80;
/// Entries per page-table page.
const ENTRIES: u64 = 512;

/// A value in the image (`.rodata`), read back through the C-bit mapping.
static PROBE: u64 = 0x5345_5649_4E46_4F21; // "SEVINFO!"

#[derive(Clone, Copy)]
struct Cpuid {
    eax: u32,
    ebx: u32,
}

fn cpuid(leaf: u32) -> Cpuid {
    let [eax, ebx, ..] = platform::cpuid(leaf, 0);
    Cpuid { eax, ebx }
}

// The exception gates: 32 stubs, 16 bytes apart from `sevinfo_vectors`, each pushing a zero
// error code where the CPU pushes none (vectors outside 0x60227D00 = 8, 10-14, 17, 21, 29,
// 30: AMD APM Vol. 2 §8.2, Table 8-1), then the vector, then `sevinfo_trap`.
//
// `sevinfo_trap`: a #GP at `sevinfo_rdmsr_insn` is the guarded RDMSR faulting: it sets R8D
// to 1, steps over the 2-byte RDMSR and returns (IRETQ restores RFLAGS). Anything else is
// reported by `sevinfo_exception` (never returns) with RDI = the frame
// {vector, error, rip, cs, rflags, rsp, ss} and a 16-byte aligned stack.
//
// `sevinfo_rdmsr(msr: u32, out: *mut u64) -> u32`: 0 and *out = the MSR, or 1 after a #GP.
global_asm!(
    ".section .text.sevinfo_trap, \"ax\"",
    ".balign 16",
    ".global sevinfo_vectors",
    "sevinfo_vectors:",
    ".irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31",
    ".balign 16",
    ".if ((0x60227D00 >> \\v) & 1) == 0",
    "    push 0",
    ".endif",
    "    push \\v",
    "    jmp sevinfo_trap",
    ".endr",
    "sevinfo_trap:",
    "    cmp qword ptr [rsp], 13",
    "    jne 2f",
    "    push rax",
    "    lea rax, [rip + sevinfo_rdmsr_insn]",
    "    cmp rax, [rsp + 24]",
    "    pop rax",
    "    jne 2f",
    "    mov r8d, 1",
    "    add qword ptr [rsp + 16], 2",
    "    add rsp, 16",
    "    iretq",
    "2:  mov rdi, rsp",
    "    and rsp, -16",
    "    call {report}",
    "    ud2",
    ".global sevinfo_rdmsr",
    "sevinfo_rdmsr:",
    "    mov ecx, edi",
    "    xor r8d, r8d",
    "sevinfo_rdmsr_insn:",
    "    rdmsr",
    "    shl rdx, 32",
    "    mov eax, eax",
    "    or rax, rdx",
    "    mov [rsi], rax",
    "    mov eax, r8d",
    "    ret",
    ".text",
    report = sym sevinfo_exception,
);

extern "C" {
    /// Reads MSR `msr` into `*out`; returns 0, or 1 when the RDMSR raised #GP (then `*out`
    /// is written with whatever EDX:EAX held).
    fn sevinfo_rdmsr(msr: u32, out: *mut u64) -> u32;
}

/// The frame `sevinfo_trap` hands over: its two pushes, then what the CPU pushed.
#[repr(C)]
struct TrapFrame {
    vector: u64,
    error: u64,
    rip: u64,
    cs: u64,
    rflags: u64,
    rsp: u64,
    ss: u64,
}

/// Reports an unexpected exception and the crash (pvpanic); never returns.
extern "C" fn sevinfo_exception(frame: *const TrapFrame) -> ! {
    // SAFETY: `sevinfo_trap` passes the address of the frame it and the CPU just pushed on
    // this stack; it stays there (nothing returns past it).
    let f = unsafe { &*frame };
    let cr2: u64;
    // SAFETY: reading CR2 at CPL0 has no side effects.
    unsafe { asm!("mov {}, cr2", out(reg) cr2, options(nomem, nostack, preserves_flags)) };
    println!(
        "sevinfo: exception {} error={:#x} rip={:#x} cr2={:#x} cs={:#x} rflags={:#x} \
         rsp={:#x} ss={:#x}",
        f.vector, f.error, f.rip, cr2, f.cs, f.rflags, f.rsp, f.ss
    );
    power::report_panic()
}

/// Loads an IDT at [`layout::SEVINFO_IDT`] whose 32 exception gates lead to the stubs.
fn install_idt() {
    let vectors: u64;
    // SAFETY: a RIP-relative address computation; no memory access.
    unsafe {
        asm!("lea {}, [rip + sevinfo_vectors]", out(reg) vectors,
             options(nomem, nostack, preserves_flags))
    };
    for v in 0..32u64 {
        let handler = vectors + 16 * v;
        // 64-bit interrupt gate (AMD APM Vol. 2 §4.8.4, Figure 4-24): offset 15:0, selector,
        // IST 0, type 0xE, DPL 0, P; offset 31:16; offset 63:32; reserved.
        let low = (handler & 0xFFFF)
            | (u64::from(layout::SEL_CODE64) << 16)
            | (0x8E00 << 32)
            | (((handler >> 16) & 0xFFFF) << 48);
        let high = handler >> 32;
        let gate = (layout::SEVINFO_IDT + 16 * v) as *mut u64;
        let gate_high = (layout::SEVINFO_IDT + 16 * v + 8) as *mut u64;
        // SAFETY: SEVINFO_IDT is scratch RAM reserved for this table (layout.rs), identity-
        // mapped, 16-byte aligned, 32 * 16 bytes long; nothing else uses it.
        unsafe { gate.write_volatile(low) };
        // SAFETY: as above.
        unsafe { gate_high.write_volatile(high) };
    }
    let mut idtr = [0u8; 10];
    idtr[..2].copy_from_slice(&(32u16 * 16 - 1).to_le_bytes());
    idtr[2..].copy_from_slice(&layout::SEVINFO_IDT.to_le_bytes());
    // SAFETY: the descriptor names the table just written, whose gates point at the stubs
    // above with this guest's 64-bit code selector.
    unsafe {
        asm!("lidt [{}]", in(reg) idtr.as_ptr(), options(readonly, nostack, preserves_flags))
    };
}

/// SEV_STATUS, or `None` when the RDMSR raised #GP.
fn read_sev_status() -> Option<u64> {
    let mut value = 0u64;
    // SAFETY: `sevinfo_rdmsr` reads MSR `msr` and writes `value`, a live local; a #GP from
    // the RDMSR is caught by the IDT installed before (`install_idt`).
    let faulted = unsafe { sevinfo_rdmsr(MSR_SEV_STATUS, &mut value) };
    (faulted == 0).then_some(value)
}

fn read_cr3() -> u64 {
    let v: u64;
    // SAFETY: reading CR3 at CPL0 has no side effects.
    unsafe { asm!("mov {}, cr3", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

/// Writes entry `index` of one of sevinfo's table pages.
fn set_entry(table: u64, index: u64, value: u64) {
    assert!(
        [
            layout::SEVINFO_PML4,
            layout::SEVINFO_PDPT,
            layout::SEVINFO_PD
        ]
        .contains(&table)
            && index < ENTRIES,
        "not a sevinfo page-table entry"
    );
    // SAFETY: checked above: an entry of a scratch page reserved for sevinfo's tables
    // (layout.rs), identity-mapped, 8-byte aligned; nothing else uses those pages.
    unsafe { ((table + 8 * index) as *mut u64).write_volatile(value) }
}

/// Builds the C-bit page tables, switches CR3 to them and reads [`PROBE`] and a freshly
/// written scratch word through the new mapping. Ok(CR3) or what failed.
fn cbit_paging(cbit_pos: u32) -> Result<u64, &'static str> {
    // The C-bit must lie above every address this map uses (< 1 GiB) and inside the
    // page-table address field (bits 51:12).
    if !(32..=51).contains(&cbit_pos) {
        return Err("c-bit position outside 32..=51");
    }
    let c = 1u64 << cbit_pos;
    for i in 0..ENTRIES {
        set_entry(layout::SEVINFO_PML4, i, 0);
        set_entry(layout::SEVINFO_PDPT, i, 0);
        set_entry(layout::SEVINFO_PD, i, (i << 21) | c | PTE_P_RW | PTE_PS);
    }
    set_entry(layout::SEVINFO_PML4, 0, layout::SEVINFO_PDPT | c | PTE_P_RW);
    set_entry(layout::SEVINFO_PDPT, 0, layout::SEVINFO_PD | c | PTE_P_RW);
    let cr3 = layout::SEVINFO_PML4 | c;
    // SAFETY: the new tables identity-map 0 .. 1 GiB, which holds everything this guest
    // touches from here on (GDT, IDT, stack, image, scratch, the secret page; the serial
    // port is port I/O); a fault is reported through the IDT.
    unsafe { asm!("mov cr3, {}", in(reg) cr3, options(nostack, preserves_flags)) };
    if read_cr3() != cr3 {
        return Err("cr3 does not read back with the c-bit");
    }
    // SAFETY: PROBE is a live static; a volatile read keeps the access through the new map.
    if unsafe { core::ptr::read_volatile(&PROBE) } != 0x5345_5649_4E46_4F21 {
        return Err("the probe value reads differently through the c-bit mapping");
    }
    let word = (layout::SEVINFO_IDT + 32 * 16) as *mut u64;
    // SAFETY: scratch RAM right after the IDT (still in SEVINFO_IDT's page), not used
    // otherwise; identity-mapped by both maps.
    unsafe { word.write_volatile(!PROBE) };
    // SAFETY: as above.
    let back = unsafe { word.read_volatile() };
    if back != !PROBE {
        return Err("a scratch word written through the c-bit mapping reads back differently");
    }
    Ok(cr3)
}

/// Prints the launch secret's SHA-256 (layout::SEV_SECRET_GPA: u32 LE length, then data).
fn secret() {
    // SAFETY: the secret page is guest RAM in every view (layout.rs), identity-mapped by the
    // packer's tables and by the C-bit tables.
    let len = unsafe { (layout::SEV_SECRET_GPA as *const u32).read_volatile() };
    if len == 0 || len > layout::SEV_SECRET_MAX {
        println!("sevinfo: secret none");
        return;
    }
    // SAFETY: 4 + len <= 4096 bytes of that page; nothing writes it while the guest runs.
    let bytes = unsafe {
        core::slice::from_raw_parts((layout::SEV_SECRET_GPA + 4) as *const u8, len as usize)
    };
    let digest = sha256::digest(bytes);
    print!("sevinfo: secret sha256=");
    for b in digest {
        print!("{b:02x}");
    }
    println!();
}

#[no_mangle]
extern "C" fn guest_main() {
    serial::init();
    println!("sevinfo: start");
    install_idt();
    let max = cpuid(CPUID_EXT_MAX).eax;
    let sev = (max >= CPUID_SEV).then(|| cpuid(CPUID_SEV));
    match sev {
        Some(r) => println!(
            "sevinfo: cpuid 8000001f eax={:#010x} ebx={:#010x}",
            r.eax, r.ebx
        ),
        None => println!("sevinfo: cpuid 8000001f absent"),
    }
    if max >= CPUID_ADDR_SIZES {
        println!(
            "sevinfo: cpuid 80000008 eax={:#010x}",
            cpuid(CPUID_ADDR_SIZES).eax
        );
    } else {
        println!("sevinfo: cpuid 80000008 absent");
    }
    let status = match sev {
        Some(r) if r.eax & CPUID_SEV_EAX_SEV != 0 => match read_sev_status() {
            Some(v) => {
                println!("sevinfo: sev_status={v:#x}");
                v
            }
            None => {
                println!("sevinfo: sev_status #GP");
                0
            }
        },
        _ => {
            println!("sevinfo: sev_status not read (cpuid 8000001f eax bit 1 clear)");
            0
        }
    };
    if status & SEV_STATUS_SEV != 0 {
        let pos = sev.map(|r| r.ebx & 0x3F).unwrap_or(0);
        match cbit_paging(pos) {
            Ok(cr3) => println!("sevinfo: c-bit paging ok (c-bit {pos}, cr3={cr3:#x})"),
            Err(why) => println!("sevinfo: c-bit paging failed: {why} (c-bit {pos})"),
        }
    } else {
        println!("sevinfo: c-bit paging skipped (sev_status bit 0 clear)");
    }
    secret();
    println!("sevinfo: done");
}
