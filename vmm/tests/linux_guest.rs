//! A real Linux guest from `relaunch pack --kernel` (docs/linux-guests.md): Debian's cloud
//! kernel (`scripts/linux-guest.sh` puts it in `.oracles/linux/vmlinuz`) with a tiny
//! initramfs whose init (`tests/linux/init.c`, built with `gcc -static` by the
//! `relaunch-linux-guest` crate, shared with `cargo xtask bench linux`) prints a marker, its
//! command line and the kernel's copy of its boot parameters, then powers off.
//!
//! - If the host's QEMU can load IGVM files (`-object igvm-cfg`), it boots the packed
//!   bundle's native view under TCG and the init's message must appear.
//! - Either way, QEMU's own `-kernel` direct boot of the same kernel, initrd, command line
//!   and memory size is read back (the init's dump of `/sys/kernel/boot_params/data`) and
//!   compared field by field with the zero page relaunch packs: every field that differs
//!   must be one of [`EXPLAINED`], each with its reason.
//! - `relaunch run` of the bundle on this host's KVM: how far the kernel gets in a bounded
//!   time (its first serial lines), skipped with the reason where the host cannot go on.
//!
//! Missing tools or kernel: `SKIPPED: <reason>`, except under CI=true, where
//! `scripts/linux-guest.sh` (run by the set-up script) must have installed them.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use relaunch::pack::linux::{self, read_boot_params, LinuxInputs};
use relaunch_linux_guest::{self as guest_kit, BuildError, MARKER};

/// The guest RAM of every launch here: `pack`'s and `run`'s default `--mem`, which the
/// commands below rely on.
const MEM: u64 = relaunch::cli::run::DEFAULT_MEM;
const APPEND: &str = "earlyprintk=ttyS0 console=ttyS0 panic=-1";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Skips (or, under CI, fails) for a missing prerequisite.
fn missing<T>(what: &str) -> Option<T> {
    assert!(
        !ci(),
        "{what}: scripts/linux-guest.sh installs it and CI=true"
    );
    println!("SKIPPED: {what} (bash scripts/linux-guest.sh installs it)");
    None
}

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The fixtures: (kernel, initrd bytes, initrd path, scratch dir).
struct Guest {
    kernel: PathBuf,
    kernel_bytes: Vec<u8>,
    initrd: PathBuf,
    initrd_bytes: Vec<u8>,
    dir: PathBuf,
}

fn guest(name: &str) -> Option<Guest> {
    let kernel = root().join(".oracles/linux/vmlinuz");
    if !kernel.exists() {
        return missing("no Debian cloud kernel at .oracles/linux/vmlinuz");
    }
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("linux-guest-{name}"));
    let initrd = match guest_kit::build(&dir) {
        Ok(i) => i,
        // No gcc, or one without the static C library (libc6-dev).
        Err(e @ (BuildError::NoGcc(_) | BuildError::Gcc(_))) => return missing(&e.to_string()),
        Err(e) => panic!("building the initramfs: {e}"),
    };
    Some(Guest {
        kernel_bytes: std::fs::read(&kernel).unwrap(),
        kernel,
        initrd: initrd.path,
        initrd_bytes: initrd.bytes,
        dir,
    })
}

/// Runs `cmd` for at most `limit` (killed then), returning its stdout, its stderr and the
/// time to the first line containing `marker` (if any).
fn run_for_both(cmd: Command, limit: Duration, marker: &str) -> (String, String, Option<Duration>) {
    let w = guest_kit::watch(cmd, limit, |_| false).expect("spawn");
    (w.stdout(), w.stderr.clone(), w.first(marker))
}

/// [`run_for_both`] without stderr.
fn run_for(cmd: Command, limit: Duration, marker: &str) -> (String, Option<Duration>) {
    let (out, _, t) = run_for_both(cmd, limit, marker);
    (out, t)
}

fn qemu(args: &[&str], g: &Guest) -> Command {
    let mut c = Command::new("qemu-system-x86_64");
    c.args([
        "-machine",
        "pc",
        "-accel",
        "tcg",
        "-m",
        "256M",
        "-display",
        "none",
        "-serial",
        "stdio",
        "-monitor",
        "none",
        "-no-reboot",
    ]);
    c.args(args).current_dir(&g.dir);
    c
}

fn init_line<'a>(out: &'a str, key: &str) -> Option<&'a str> {
    out.lines().find_map(|l| {
        l.trim_end()
            .strip_prefix("RELAUNCH-INIT: ")?
            .strip_prefix(key)
    })
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

/// The boot-parameter fields that differ between QEMU's `-kernel` boot and relaunch's
/// 64-bit entry, each with why (field names and offsets: `struct boot_params`,
/// `arch/x86/include/uapi/asm/bootparam.h`; what fills them: QEMU `hw/i386/x86.c`
/// `x86_load_linux`, the kernel's real-mode setup `arch/x86/boot/main.c`).
const EXPLAINED: &[(&str, usize, usize, &str)] = &[
    ("screen_info", 0x000, 0x040, "filled by the kernel's 16-bit setup code (BIOS video calls) under QEMU, which enters through the real-mode setup; the 64-bit entry skips that code, so the loader leaves it zero (no console but serial)"),
    ("apm_bios_info", 0x040, 0x054, "16-bit setup code (BIOS int 0x15 APM); none without a BIOS"),
    ("acpi_rsdp_addr", 0x070, 0x078, "QEMU: written by the kernel's decompressor when it finds SeaBIOS's RSDP in the BIOS area; relaunch: the RSDP of the tables pack writes (0xe0000, in the reserved ISA hole)"),
    ("ist_info", 0x060, 0x070, "16-bit setup code (BIOS SpeedStep query)"),
    ("sys_desc_table", 0x0A0, 0x0B0, "16-bit setup code (BIOS int 0x15 C0)"),
    ("edid_info", 0x140, 0x1C0, "16-bit setup code (VESA DDC)"),
    ("alt_mem_k", 0x1E0, 0x1E4, "16-bit setup code (BIOS int 0x15 E801): the memory size a BIOS reports; the E820 table says it for us"),
    ("scratch", 0x1E4, 0x1E8, "the 32-bit entry (startup_32, which QEMU's real-mode path reaches) uses it as a one-word stack to find its own address; the 64-bit entry does not"),
    ("e820_entries", 0x1E8, 0x1E9, "SeaBIOS's E820 has the BIOS areas (0x9fc00.., 0xf0000..) and the top reserved; ours is the launch's memory map: RAM with the ISA hole (640 KiB-1 MiB) reserved"),
    ("eddbuf_entries", 0x1E9, 0x1EA, "16-bit setup code (BIOS EDD disk info)"),
    ("edd_mbr_sig_buf_entries", 0x1EA, 0x1EB, "16-bit setup code (BIOS EDD)"),
    ("kbd_status", 0x1EB, 0x1EC, "16-bit setup code (BIOS keyboard flags)"),
    ("vid_mode", 0x1FA, 0x1FC, "QEMU writes the vga= mode (default 0xffff normal); 16-bit setup code then stores the mode it set"),
    ("type_of_loader", 0x210, 0x211, "QEMU says 0xb0 (its assigned ID); relaunch has none and says 0xff (boot.rst: undefined)"),
    ("loadflags", 0x211, 0x212, "QEMU sets CAN_USE_HEAP (bit 7) for the 16-bit setup code's heap; the 64-bit entry has no such heap"),
    ("ramdisk_image", 0x218, 0x21C, "QEMU puts the initrd at the top of RAM below initrd_addr_max; relaunch right above the kernel's init_size window (both in RAM, both out of the decompressor's way)"),
    ("heap_end_ptr", 0x224, 0x226, "QEMU's 16-bit setup heap end; unused by the 64-bit entry"),
    ("cmd_line_ptr", 0x228, 0x22C, "where each loader put the command line (QEMU next to the real-mode setup, relaunch at 0x20000); the command lines are compared as text"),
    ("e820_table", 0x2D0, 0xCD0, "see e820_entries"),
    ("eddbuf", 0xD00, 0xEEC, "16-bit setup code (BIOS EDD)"),
    ("edd_mbr_sig_buffer", 0x290, 0x2D0, "16-bit setup code (BIOS EDD)"),
];

fn field_at(off: usize) -> Option<&'static (&'static str, usize, usize, &'static str)> {
    EXPLAINED.iter().find(|f| (f.1..f.2).contains(&off))
}

#[test]
fn qemu_direct_boot_params_match_relaunch_pack() {
    let Some(g) = guest("qemu") else { return };
    if !have("qemu-system-x86_64") {
        missing::<()>("no qemu-system-x86_64");
        return;
    }
    let (out, t) = run_for(
        qemu(
            &[
                "-kernel",
                g.kernel.to_str().unwrap(),
                "-initrd",
                g.initrd.to_str().unwrap(),
                "-append",
                APPEND,
            ],
            &g,
        ),
        Duration::from_secs(120),
        MARKER,
    );
    let t = t.unwrap_or_else(|| panic!("QEMU -kernel never reached init:\n{out}"));
    println!("QEMU TCG -kernel: init after {:.2} s", t.as_secs_f64());
    assert_eq!(init_line(&out, "cmdline "), Some(APPEND));
    let dump = init_line(&out, "boot_params 4096 ").expect("boot_params dump");
    let qemu_zp = unhex(dump);
    assert_eq!(qemu_zp.len(), 4096);

    let inputs = LinuxInputs {
        kernel: &g.kernel_bytes,
        initrd: Some(&g.initrd_bytes),
        cmdline: APPEND,
        mem: MEM,
        vcpus: 1,
    };
    let (_, ours) = linux::layout(&inputs).unwrap();
    let (q, r) = (
        read_boot_params(&qemu_zp),
        read_boot_params(&ours.zero_page),
    );

    // What must agree: the kernel's own header and the initrd's size.
    assert_eq!(q.version, r.version);
    assert_eq!(q.init_size, r.init_size);
    assert_eq!(q.cmdline_size, r.cmdline_size);
    assert_eq!(q.initrd_addr_max, r.initrd_addr_max);
    assert_eq!(q.ramdisk_size, g.initrd_bytes.len() as u64);
    assert_eq!(r.ramdisk_size, g.initrd_bytes.len() as u64);
    assert_eq!((q.type_of_loader, r.type_of_loader), (0xB0, 0xFF));
    // Each its own ACPI tables: SeaBIOS's RSDP (in the BIOS area), ours at 0xE0000.
    assert_eq!(r.acpi_rsdp_addr, relaunch::pack::acpi::RSDP);
    assert!((0xE_0000..0x10_0000).contains(&q.acpi_rsdp_addr), "{q:x?}");
    // Both initrds lie in RAM below initrd_addr_max, clear of the kernel's window.
    for (who, bp) in [("qemu", &q), ("relaunch", &r)] {
        let end = bp.ramdisk_image + bp.ramdisk_size;
        assert!(end <= u64::from(bp.initrd_addr_max) + 1, "{who}");
        assert!(end <= MEM, "{who}");
        assert!(
            bp.ramdisk_image >= ours.load + u64::from(bp.init_size),
            "{who}"
        );
    }
    // Both E820 tables give the kernel RAM from 1 MiB to (nearly) the end of --mem.
    assert_eq!(r.e820, linux::e820_for(MEM));
    assert!(r.e820.contains(&(0x10_0000, MEM - 0x10_0000, 1)));
    let q_ram_1m = q
        .e820
        .iter()
        .find(|e| e.2 == 1 && e.0 == 0x10_0000)
        .unwrap_or_else(|| panic!("QEMU's E820: {:x?}", q.e820));
    assert!(q_ram_1m.0 + q_ram_1m.1 <= MEM && q_ram_1m.0 + q_ram_1m.1 >= MEM - (1 << 20));

    // Every other byte is equal, or in an explained field.
    let mut report = Vec::new();
    let mut unexplained = Vec::new();
    for (off, (a, b)) in qemu_zp.iter().zip(&ours.zero_page).enumerate() {
        if a == b {
            continue;
        }
        match field_at(off) {
            Some(f) => {
                if !report.iter().any(|l: &(&str, &str)| l.0 == f.0) {
                    report.push((f.0, f.3));
                }
            }
            None => unexplained.push(format!("{off:#05x}: QEMU {a:#04x}, relaunch {b:#04x}")),
        }
    }
    assert!(
        unexplained.is_empty(),
        "boot_params bytes differ outside the explained fields:\n{}",
        unexplained.join("\n")
    );
    report.dedup();
    println!("QEMU E820: {:x?}", q.e820);
    println!("relaunch E820: {:x?}", r.e820);
    println!(
        "initrd: QEMU {:#x}, relaunch {:#x}; cmdline: QEMU {:#x}, relaunch {:#x}",
        q.ramdisk_image, r.ramdisk_image, q.cmd_line_ptr, r.cmd_line_ptr
    );
    for (name, why) in &report {
        println!("differs: {name}: {why}");
    }
}

#[test]
fn packed_native_view_boots_where_qemu_loads_igvm() {
    let Some(g) = guest("igvm") else { return };
    if !have("qemu-system-x86_64") {
        missing::<()>("no qemu-system-x86_64");
        return;
    }
    let help = Command::new("qemu-system-x86_64")
        .args(["-object", "help"])
        .output()
        .unwrap();
    if !String::from_utf8_lossy(&help.stdout).contains("igvm-cfg") {
        // Debian 12's QEMU 7.2 (and any QEMU before 9.2, or built without libigvm).
        println!(
            "SKIPPED: this QEMU has no igvm-cfg object (qemu-system-x86_64 -object help): \
             the packed bundle is proven by qemu_direct_boot_params_match_relaunch_pack"
        );
        return;
    }
    let bundle = g.dir.join("linux.igvm");
    let packed = linux::pack(&LinuxInputs {
        kernel: &g.kernel_bytes,
        initrd: Some(&g.initrd_bytes),
        cmdline: APPEND,
        mem: MEM,
        vcpus: 1,
    })
    .unwrap();
    std::fs::write(&bundle, &packed.bytes).unwrap();
    let cfg = format!("igvm-cfg,id=igvm0,file={}", bundle.display());
    let (out, t) = run_for(
        qemu(&["-object", &cfg, "-machine", "pc,igvm-cfg=igvm0"], &g),
        Duration::from_secs(120),
        MARKER,
    );
    let t = t.unwrap_or_else(|| panic!("QEMU never reached init from the IGVM file:\n{out}"));
    println!("QEMU TCG, packed IGVM: init after {:.2} s", t.as_secs_f64());
    assert_eq!(init_line(&out, "cmdline "), Some(APPEND));
}

/// How long `relaunch run` may take (`RELAUNCH_LINUX_RUN_SECS`, default 400): on this kind
/// of host the kernel's decompressor alone takes ≈ 140 s (guest kernel code is emulated
/// one instruction at a time: docs/linux-guests.md).
fn run_limit() -> Duration {
    let secs = std::env::var("RELAUNCH_LINUX_RUN_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400);
    Duration::from_secs(secs)
}

#[test]
fn relaunch_run_shows_how_far_linux_gets() {
    let Some(g) = guest("run") else { return };
    let kvm = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm");
    if let Err(e) = kvm {
        assert!(!ci(), "CI=true but /dev/kvm is not usable ({e})");
        println!("SKIPPED: /dev/kvm is not usable here ({e})");
        return;
    }
    let bundle = g.dir.join("linux.igvm");
    let pack = Command::new(env!("CARGO_BIN_EXE_relaunch"))
        .args(["pack", "-o"])
        .arg(&bundle)
        .arg("--kernel")
        .arg(&g.kernel)
        .arg("--initrd")
        .arg(&g.initrd)
        .args(["--append", APPEND])
        .output()
        .unwrap();
    assert!(
        pack.status.success(),
        "{}",
        String::from_utf8_lossy(&pack.stderr)
    );
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_relaunch"));
    cmd.arg("run").arg(&bundle).args(["--max-reboots", "0"]);
    let limit = run_limit();
    let (out, err, t) = run_for_both(cmd, limit, MARKER);
    let lines: Vec<&str> = out.lines().collect();
    if let Some(t) = t {
        // A host that runs Linux: the whole way to our init.
        println!("relaunch run: init after {:.1} s", t.as_secs_f64());
        assert_eq!(init_line(&out, "cmdline "), Some(APPEND));
        return;
    }
    // Whatever the host, the guest must not have reset or been refused (exit 4, or a VMM
    // error), and what the kernel printed must be what we gave it.
    assert!(
        !err.contains("(exit 4)") && !err.contains("(exit 1)"),
        "{err}"
    );
    if lines.is_empty() {
        assert!(!err.contains("guest fatal"), "no serial output, and: {err}");
        println!(
            "SKIPPED: no serial output from the kernel within {} s (its decompressor is \
             emulated instruction by instruction on this host); stderr: {err}",
            limit.as_secs()
        );
        return;
    }
    let kernel_lines: Vec<&str> = lines
        .iter()
        .filter_map(|l| Some(l.split_once("] ")?.1))
        .collect();
    assert!(kernel_lines[0].starts_with("Linux version "), "{out}");
    assert!(
        kernel_lines.contains(&format!("Command line: {APPEND}").as_str()),
        "{out}"
    );
    // The kernel's own view of our E820 table (arch/x86/kernel/e820.c `e820__print_table`).
    let e820: Vec<&str> = kernel_lines
        .iter()
        .copied()
        .filter(|l| l.starts_with("BIOS-e820: "))
        .collect();
    let want: Vec<String> = linux::e820_for(MEM)
        .iter()
        .map(|&(a, n, t)| {
            let kind = if t == 1 { "usable" } else { "reserved" };
            format!("BIOS-e820: [mem {a:#018x}-{:#018x}] {kind}", a + n - 1)
        })
        .collect();
    assert_eq!(e820, want, "{out}");
    // The initrd where the zero page says (`RAMDISK: [mem start-end]`, page-rounded end).
    let layout = linux::layout(&LinuxInputs {
        kernel: &g.kernel_bytes,
        initrd: Some(&g.initrd_bytes),
        cmdline: APPEND,
        mem: MEM,
        vcpus: 1,
    })
    .unwrap()
    .1;
    let (start, size) = layout.initrd.unwrap();
    let end = (start + size).div_ceil(4096) * 4096 - 1;
    let ramdisk = format!("RAMDISK: [mem {start:#010x}-{end:#010x}]");
    if kernel_lines.len() > 25 {
        assert!(kernel_lines.contains(&ramdisk.as_str()), "{ramdisk}\n{out}");
    }
    // The kernel found our ACPI tables where the zero page says, each with its length and
    // header (ACPICA's table banner, `drivers/acpi/acpica/tbprint.c`), before "Memory:".
    let acpi_lines = acpi_banner(&relaunch::pack::acpi::tables(1).unwrap());
    if kernel_lines.iter().any(|l| l.starts_with("Memory: ")) {
        for want in &acpi_lines {
            assert!(
                kernel_lines.iter().any(|l| l.trim_end() == want),
                "no {want:?}:\n{out}"
            );
        }
        // The KVM paravirtual clock: the time source relaunch leaves to KVM's CPUID.
        assert!(
            kernel_lines.iter().any(|l| l.starts_with("kvm-clock: ")),
            "{out}"
        );
        let seen: Vec<&str> = kernel_lines
            .iter()
            .copied()
            .filter(|l| {
                ["ACPI", "kvm-clock", "tsc:", "Hypervisor"]
                    .iter()
                    .any(|p| l.starts_with(p))
            })
            .collect();
        println!("ACPI and clock lines:\n{}", seen.join("\n"));
    }
    let first: Vec<&str> = lines.iter().take(8).copied().collect();
    let last = lines.last().copied().unwrap_or("");
    println!(
        "SKIPPED (boot to init): under this host's KVM the kernel printed {} lines and \
         stopped; first lines:\n{}\nlast line: {last}\nstderr: {}",
        lines.len(),
        first.join("\n"),
        err.lines().last().unwrap_or("")
    );
}

/// The lines ACPICA prints for each table it finds (`acpi_tb_print_table_header`): the RSDP
/// with its OEM ID, the FACS with its length only, every other table with its header.
fn acpi_banner(t: &relaunch::pack::acpi::AcpiTables) -> Vec<String> {
    let order = ["RSDP", "XSDT", "FACP", "DSDT", "FACS", "APIC"];
    order
        .iter()
        .map(|sig| {
            let tb = t.get(sig).unwrap();
            let b = &tb.bytes;
            let head = format!("ACPI: {sig} {:#018X} {:06X}", tb.gpa, b.len()).replace("0X", "0x");
            let s = |r: std::ops::Range<usize>| String::from_utf8_lossy(&b[r]).into_owned();
            let u = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
            match *sig {
                "RSDP" => format!("{head} (v{:02} {})", b[15], s(9..15)),
                "FACS" => head,
                _ => format!(
                    "{head} (v{:02} {} {} {:08X} {} {:08X})",
                    b[8],
                    s(10..16),
                    s(16..24),
                    u(24),
                    s(28..32),
                    u(32)
                ),
            }
        })
        .collect()
}

/// Runs `iasl` with `args` in `dir`; its stdout and stderr together.
fn iasl(dir: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new("iasl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "iasl {args:?}:\n{text}");
    text
}

/// The values of the disassembly lines `[off len] name : value` (or `name : value`, the
/// decoded flag lines) whose name is exactly `name`, in order.
fn dsl_field<'a>(dsl: &'a str, name: &str) -> Vec<&'a str> {
    dsl.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(" : ")?;
            let k = k.rsplit_once(']').map_or(k, |x| x.1).trim();
            (k == name).then(|| v.trim())
        })
        .collect()
}

/// The ACPI tables `pack --kernel` writes, checked by an independent implementation:
/// ACPICA's `iasl` (Debian's acpica-tools). Each table is disassembled (`iasl -d`, which
/// checks the checksum and decodes every field: asserted below), then compiled back from
/// the disassembly and compared byte for byte (all but the checksum and the compiler ID
/// and revision, which iasl writes as its own). `iasl -d` of this version cannot read an
/// RSDP, so the RSDP is written out as iasl source from the expected values and compiled:
/// iasl computes both its checksums.
#[test]
fn acpi_tables_disassemble_with_iasl() {
    if !have("iasl") && Command::new("iasl").arg("-v").output().is_err() {
        missing::<()>("no iasl (Debian's acpica-tools)");
        return;
    }
    use relaunch::pack::acpi;
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("acpi-iasl");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("back")).unwrap();
    let vcpus = 3;
    let tables = acpi::tables(vcpus).unwrap();
    let mut dsl = std::collections::BTreeMap::new();
    for t in tables.tables.iter().filter(|t| t.signature != "RSDP") {
        let name = t.signature.to_lowercase();
        std::fs::write(dir.join(format!("{name}.dat")), &t.bytes).unwrap();
        let log = iasl(&dir, &["-d", &format!("{name}.dat")]);
        assert!(!log.contains("Incorrect checksum"), "{log}");
        let text = std::fs::read_to_string(dir.join(format!("{name}.dsl"))).unwrap();
        assert!(!text.contains("Incorrect checksum"), "{text}");
        // Round trip: the disassembly compiles back to our bytes.
        std::fs::write(dir.join(format!("back/{name}.dsl")), &text).unwrap();
        iasl(&dir.join("back"), &[&format!("{name}.dsl")]);
        let back = std::fs::read(dir.join(format!("back/{name}.aml"))).unwrap();
        assert_eq!(back.len(), t.bytes.len(), "{name}");
        for (i, (a, b)) in back.iter().zip(&t.bytes).enumerate() {
            if t.signature == "FACS" || !(i == 9 || (28..36).contains(&i)) {
                assert_eq!(a, b, "{name} byte {i:#x}");
            }
        }
        dsl.insert(t.signature, text);
    }
    // FADT (ACPI 6.5 §5.2.9).
    let f = &dsl["FACP"];
    let one = |name: &str| -> String {
        let v = dsl_field(f, name);
        assert!(!v.is_empty(), "no {name} in\n{f}");
        v[0].to_string()
    };
    assert_eq!(one("Revision"), "06");
    assert_eq!(one("FADT Minor Revision"), "05");
    assert_eq!(
        dsl_field(f, "FACS Address"),
        ["000E0040", "0000000000000000"]
    );
    assert_eq!(
        dsl_field(f, "DSDT Address"),
        ["000E0080", "00000000000E0080"]
    );
    assert_eq!(one("SCI Interrupt"), "0009");
    assert_eq!(one("SMI Command Port"), "00000000");
    assert_eq!(one("PM1A Event Block Address"), "00000600");
    assert_eq!(one("PM1A Control Block Address"), "00000604");
    assert_eq!(one("PM1 Event Block Length"), "04");
    assert_eq!(one("PM1 Control Block Length"), "02");
    assert_eq!(one("PM Timer Block Length"), "00");
    assert_eq!(one("Reset Register Supported (V2)"), "1");
    assert_eq!(one("Hardware Reduced (V5)"), "0");
    assert_eq!(one("8042 Present on ports 60/64 (V2)"), "0");
    assert_eq!(one("CMOS RTC Not Present (V5)"), "1");
    assert_eq!(one("Value to cause reset"), "06");
    // The generic addresses in order: RESET_REG, X_PM1a_EVT_BLK, X_PM1b_EVT_BLK (none),
    // X_PM1a_CNT_BLK.
    let pick = |name: &str| -> Vec<String> {
        let v = dsl_field(f, name);
        [0, 1, 2, 3].iter().map(|&i| v[i].to_string()).collect()
    };
    assert_eq!(
        pick("Space ID"),
        [
            "01 [SystemIO]",
            "01 [SystemIO]",
            "00 [SystemMemory]",
            "01 [SystemIO]"
        ]
    );
    assert_eq!(
        pick("Address"),
        [
            "0000000000000CF9",
            "0000000000000600",
            "0000000000000000",
            "0000000000000604"
        ]
    );
    assert_eq!(pick("Bit Width"), ["08", "20", "00", "10"]);
    // DSDT: \_S5 with SLP_TYP 0 (what PM1a_CNT accepts; QEMU's q35 value).
    let d = &dsl["DSDT"];
    let s5: String = d.split_whitespace().collect();
    assert!(
        s5.contains("Name(_S5,Package(0x04)//_S5_:S5SystemState{Zero,Zero,Zero,Zero})"),
        "{d}"
    );
    // MADT (ACPI 6.5 §5.2.12).
    let m = &dsl["APIC"];
    assert_eq!(dsl_field(m, "Revision"), ["06"]);
    assert_eq!(dsl_field(m, "Local Apic Address"), ["FEE00000"]);
    assert_eq!(dsl_field(m, "PC-AT Compatibility"), ["1"]);
    assert_eq!(dsl_field(m, "Local Apic ID"), ["00", "01", "02"]);
    assert_eq!(dsl_field(m, "Processor ID"), ["00", "01", "02"]);
    assert_eq!(dsl_field(m, "Processor Enabled"), ["1"; 3]);
    assert_eq!(
        dsl_field(m, "Subtable Type"),
        [
            "00 [Processor Local APIC]",
            "00 [Processor Local APIC]",
            "00 [Processor Local APIC]",
            "01 [I/O APIC]",
            "02 [Interrupt Source Override]"
        ]
    );
    assert_eq!(dsl_field(m, "Address"), ["FEC00000"]);
    assert_eq!(dsl_field(m, "Interrupt"), ["00000000", "00000009"]);
    assert_eq!(dsl_field(m, "Source"), ["09"]);
    assert_eq!(dsl_field(m, "Polarity"), ["1"]);
    assert_eq!(dsl_field(m, "Trigger Mode"), ["3"]);
    // XSDT → FADT, MADT; FACS.
    let x = &dsl["XSDT"];
    assert_eq!(
        dsl_field(x, "ACPI Table Address   0")
            .iter()
            .chain(&dsl_field(x, "ACPI Table Address   1"))
            .copied()
            .collect::<Vec<_>>(),
        ["00000000000E0100", "00000000000E0280"]
    );
    assert_eq!(dsl_field(&dsl["FACS"], "Version"), ["02"]);
    // The RSDP: iasl's data-table compiler, given the fields, produces our bytes (and so
    // our two checksums).
    let src = format!(
        "[0008] Signature : \"RSD PTR \"\n[0001] Checksum : 00\n[0006] Oem ID : \"RLAUNC\"\n\
         [0001] Revision : 02\n[0004] RSDT Address : 00000000\n[0004] Length : 00000024\n\
         [0008] XSDT Address : {:016X}\n[0001] Extended Checksum : 00\n[0003] Reserved : 000000\n",
        acpi::XSDT
    );
    std::fs::write(dir.join("rsdp.asl"), src).unwrap();
    iasl(&dir, &["rsdp.asl"]);
    let rsdp = std::fs::read(dir.join("rsdp.aml")).unwrap();
    assert_eq!(rsdp, tables.get("RSDP").unwrap().bytes);
    println!(
        "iasl: {} tables disassembled and recompiled, RSDP compiled equal",
        dsl.len()
    );
}
