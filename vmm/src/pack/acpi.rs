//! The ACPI tables `relaunch pack --kernel` gives a Linux guest (ACPI Specification 6.5,
//! "ACPI 6.5" below; section numbers are that document's): an RSDP, an XSDT, a FADT with its
//! FACS and DSDT, and a MADT, all in one page at [`BASE`] (inside the ISA hole the E820
//! table marks reserved, `super::linux::e820_for`), found through `boot_params.
//! acpi_rsdp_addr` (and by the legacy scan of 0xE0000..0xFFFFF, ACPI 6.5 §5.2.5.1).
//!
//! They describe exactly the devices `vmm/src/devices/` has (`docs/devices.md`):
//!
//! - the ICH9-style PM1a event block at 0x600 (PM1_STS, PM1_EN) and control block at 0x604,
//!   always in ACPI mode (SMI_CMD 0), SCI on IRQ 9 (never raised: no fixed or general-purpose
//!   event source exists);
//! - `\_S5` = `Package { 0, 0, 0, 0 }`: SLP_TYP 0, the value QEMU's pc/q35 DSDT gives
//!   (`hw/i386/acpi-build.c`, `build_dsdt`); our PM1a_CNT powers off on SLP_EN whatever
//!   SLP_TYP says;
//! - the reset register: RST_CNT at I/O port 0xCF9, value 0x06 (RST_CPU | SYS_RST: a reset
//!   for our device, `devices::PORT_RST_CNT`);
//! - KVM's in-kernel irqchip (`KVM_CREATE_IRQCHIP`): one local APIC per vCPU (APIC ID = vCPU
//!   index, as the native backend sets CPUID), the IOAPIC at 0xFEC00000 with GSI base 0, the
//!   8259 pair (PCAT_COMPAT). KVM's default GSI routing (`virt/kvm/irqchip.c` /
//!   `arch/x86/kvm/irq_comm.c` `default_routing`) sends GSI n to IOAPIC pin n for n < 24, so
//!   ISA IRQ 0 is GSI 0: no IRQ0 → GSI2 override (QEMU lists one because it installs its own
//!   routing, `kvm_pc_setup_irq_routing`; relaunch does not). The only override is the SCI's:
//!   IRQ 9, level triggered, active high, as the FADT's SCI requires (ACPI 6.5 §5.2.9, SCI_INT).
//!
//! No PM timer (PM_TMR_LEN 0), no GPE blocks, no HPET, no CMOS RTC (IAPC_BOOT_ARCH says so),
//! no 8042 (the i8042 port only resets). Linux's time sources are the KVM paravirtual clock
//! and the local APIC's TSC-deadline timer (`docs/linux-guests.md`, "Time").

use std::fmt;

/// Guest-physical address of the tables' page (and of the RSDP, its first bytes).
pub const BASE: u64 = 0xE_0000;
/// The RSDP.
pub const RSDP: u64 = BASE;
/// The FACS (64-byte aligned: ACPI 6.5 §5.2.10).
pub const FACS: u64 = BASE + 0x40;
/// The DSDT.
pub const DSDT: u64 = BASE + 0x80;
/// The FADT.
pub const FADT: u64 = BASE + 0x100;
/// The XSDT.
pub const XSDT: u64 = BASE + 0x240;
/// The MADT.
pub const MADT: u64 = BASE + 0x280;
/// Bytes the tables take at most (one page).
pub const SIZE: usize = 4096;

/// PM1a event block (PM1_STS at +0, PM1_EN at +2), `devices::pm`.
pub const PM1A_EVT_BLK: u16 = 0x600;
/// Its length (ACPI 6.5 §4.8.3.1: status and enable, 2 bytes each).
pub const PM1_EVT_LEN: u8 = 4;
/// PM1a control block.
pub const PM1A_CNT_BLK: u16 = 0x604;
/// Its length (ACPI 6.5 §4.8.3.2).
pub const PM1_CNT_LEN: u8 = 2;
/// The SCI's ISA IRQ (as ICH9's default and QEMU's q35).
pub const SCI_IRQ: u8 = 9;
/// RST_CNT.
pub const RESET_PORT: u16 = 0xCF9;
/// What the guest writes to [`RESET_PORT`] to reset: RST_CPU (bit 2) | SYS_RST (bit 1).
pub const RESET_VALUE: u8 = 0x06;
/// The IOAPIC's MMIO base (KVM's in-kernel IOAPIC: `IOAPIC_DEFAULT_BASE_ADDRESS`,
/// `arch/x86/kvm/ioapic.h`).
pub const IOAPIC_ADDR: u32 = 0xFEC0_0000;
/// The IOAPIC's ID (KVM's reset value, `kvm_ioapic_reset`).
pub const IOAPIC_ID: u8 = 0;
/// The local APICs' MMIO base (architectural default, Intel SDM Vol. 3A §11.4.1).
pub const LAPIC_ADDR: u32 = 0xFEE0_0000;
/// Most vCPUs the MADT describes: Processor Local APIC structures carry an 8-bit APIC ID and
/// 0xFF is the broadcast ID (x2APIC structures would be needed beyond).
pub const MAX_VCPUS: u32 = 255;

/// OEMID of every table (ACPI 6.5 §5.2.6).
pub const OEM_ID: &[u8; 6] = b"RLAUNC";
/// OEM Table ID.
pub const OEM_TABLE_ID: &[u8; 8] = b"RELAUNCH";
/// Creator ID.
pub const CREATOR_ID: &[u8; 4] = b"RLCH";

/// FADT Flags (ACPI 6.5 §5.2.9, the fixed feature flags).
pub mod fadt_flags {
    /// WBINVD works (required of every ACPI-compatible platform).
    pub const WBINVD: u32 = 1 << 0;
    /// C1 is supported on all processors (HLT, handled in KVM).
    pub const PROC_C1: u32 = 1 << 2;
    /// The power button, if any, is a control-method device (there is none).
    pub const PWR_BUTTON: u32 = 1 << 4;
    /// The sleep button, if any, is a control-method device (there is none).
    pub const SLP_BUTTON: u32 = 1 << 5;
    /// The RTC wake status is not in the fixed register space.
    pub const FIX_RTC: u32 = 1 << 6;
    /// RESET_REG is supported.
    pub const RESET_REG_SUP: u32 = 1 << 10;
}

/// IA-PC boot architecture flags (ACPI 6.5 §5.2.9.3).
pub mod boot_arch {
    /// ISA/LPC devices the user can see (COM1).
    pub const LEGACY_DEVICES: u16 = 1 << 0;
    /// No VGA.
    pub const VGA_NOT_PRESENT: u16 = 1 << 2;
    /// No CMOS RTC (port 0x70/0x71 is not a device here).
    pub const CMOS_RTC_NOT_PRESENT: u16 = 1 << 5;
}

/// Why the tables could not be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcpiError {
    /// The vCPU count is 0 or above [`MAX_VCPUS`].
    Vcpus(u32),
}

impl fmt::Display for AcpiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AcpiError::Vcpus(n) => write!(
                f,
                "the MADT describes 1 to {MAX_VCPUS} vCPUs (8-bit local APIC IDs); {n} asked"
            ),
        }
    }
}

impl std::error::Error for AcpiError {}

/// One table: its signature (as `iasl -d` names the file), address and bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// "RSDP", "XSDT", "FACP", "FACS", "DSDT", "APIC".
    pub signature: &'static str,
    /// Guest-physical address.
    pub gpa: u64,
    /// The bytes, checksums filled in.
    pub bytes: Vec<u8>,
}

/// The tables for `vcpus` vCPUs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcpiTables {
    /// RSDP, FACS, DSDT, FADT, XSDT, MADT (by address).
    pub tables: Vec<Table>,
}

impl AcpiTables {
    /// The page at [`BASE`] holding every table.
    pub fn page(&self) -> Vec<u8> {
        let mut page = vec![0u8; SIZE];
        for t in &self.tables {
            let at = (t.gpa - BASE) as usize;
            page[at..at + t.bytes.len()].copy_from_slice(&t.bytes);
        }
        page
    }

    /// The table with `signature`.
    pub fn get(&self, signature: &str) -> Option<&Table> {
        self.tables.iter().find(|t| t.signature == signature)
    }
}

/// The byte that makes `bytes` sum to zero (mod 256) when stored at a zeroed position.
fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |s, &b| s.wrapping_add(b))
        .wrapping_neg()
}

/// A system description table: the 36-byte header (ACPI 6.5 §5.2.6) followed by
/// `body`, Length and Checksum filled in.
fn sdt(signature: &[u8; 4], revision: u8, body: &[u8]) -> Vec<u8> {
    let mut t = Vec::with_capacity(36 + body.len());
    t.extend_from_slice(signature); // Signature
    t.extend_from_slice(&((36 + body.len()) as u32).to_le_bytes()); // Length
    t.push(revision); // Revision
    t.push(0); // Checksum (below)
    t.extend_from_slice(OEM_ID); // OEMID
    t.extend_from_slice(OEM_TABLE_ID); // OEM Table ID
    t.extend_from_slice(&1u32.to_le_bytes()); // OEM Revision
    t.extend_from_slice(CREATOR_ID); // Creator ID
    t.extend_from_slice(&1u32.to_le_bytes()); // Creator Revision
    t.extend_from_slice(body);
    t[9] = checksum(&t);
    t
}

/// A Generic Address Structure (ACPI 6.5 §5.2.3.2) for an I/O port register of
/// `bits` bits accessed `access` (1 byte, 2 word, 3 dword; 0 for none).
fn gas_io(port: u16, bits: u8, access: u8) -> [u8; 12] {
    let mut g = [0u8; 12];
    if port != 0 {
        g[0] = 1; // Address Space ID: System I/O
        g[1] = bits; // Register Bit Width
        g[2] = 0; // Register Bit Offset
        g[3] = access; // Access Size
        g[4..12].copy_from_slice(&u64::from(port).to_le_bytes()); // Address
    }
    g
}

/// RSDP (ACPI 6.5 §5.2.5.3), revision 2, pointing at the XSDT only.
fn rsdp() -> Vec<u8> {
    let mut r = Vec::with_capacity(36);
    r.extend_from_slice(b"RSD PTR "); // Signature
    r.push(0); // Checksum (first 20 bytes, below)
    r.extend_from_slice(OEM_ID); // OEMID
    r.push(2); // Revision: ACPI 2.0+ (XSDT)
    r.extend_from_slice(&0u32.to_le_bytes()); // RsdtAddress: no RSDT
    r.extend_from_slice(&36u32.to_le_bytes()); // Length
    r.extend_from_slice(&XSDT.to_le_bytes()); // XsdtAddress
    r.push(0); // Extended Checksum (whole table, below)
    r.extend_from_slice(&[0; 3]); // Reserved
    r[8] = checksum(&r[..20]);
    r[32] = checksum(&r);
    r
}

/// XSDT (ACPI 6.5 §5.2.8): the FADT and the MADT.
fn xsdt() -> Vec<u8> {
    let mut body = Vec::new();
    for gpa in [FADT, MADT] {
        body.extend_from_slice(&gpa.to_le_bytes());
    }
    sdt(b"XSDT", 1, &body)
}

/// FACS (ACPI 6.5 §5.2.10): 64 bytes, no checksum, version 2, no waking vector
/// (S5 only: there is no sleep state to wake from).
fn facs() -> Vec<u8> {
    let mut f = vec![0u8; 64];
    f[0..4].copy_from_slice(b"FACS"); // Signature
    f[4..8].copy_from_slice(&64u32.to_le_bytes()); // Length
                                                   // Hardware Signature 0, Firmware Waking Vector 0, Global Lock 0, Flags 0 (no S4BIOS,
                                                   // no 64-bit wake), X_Firmware_Waking_Vector 0.
    f[32] = 2; // Version
    f
}

/// DSDT (ACPI 6.5 §5.2.11.1), revision 2: the AML `Name (\_S5, Package (0x04) { Zero, Zero,
/// Zero, Zero })` (ACPI 6.5 §7.4.2 \_Sx: PM1a_CNT.SLP_TYP, PM1b_CNT.SLP_TYP, reserved,
/// reserved).
fn dsdt() -> Vec<u8> {
    let aml: [u8; 12] = [
        0x08, // NameOp (ACPI 6.5 §20.2.5.1, DefName)
        b'_', b'S', b'5', b'_', // NameSeg "_S5_" (§20.2.2)
        0x12, // PackageOp (§20.2.5.4, DefPackage)
        0x06, // PkgLength: 6 bytes, this byte included (§20.2.4)
        0x04, // NumElements
        0x00, 0x00, 0x00, 0x00, // ZeroOp ×4 (§20.2.3)
    ];
    sdt(b"DSDT", 2, &aml)
}

/// FADT (ACPI 6.5 §5.2.9), revision 6, minor version 5: 276 bytes.
fn fadt() -> Vec<u8> {
    let mut b = Vec::with_capacity(276 - 36);
    b.extend_from_slice(&(FACS as u32).to_le_bytes()); // 36 FIRMWARE_CTRL
    b.extend_from_slice(&(DSDT as u32).to_le_bytes()); // 40 DSDT
    b.push(0); // 44 Reserved (was INT_MODEL)
    b.push(0); // 45 Preferred_PM_Profile: Unspecified
    b.extend_from_slice(&u16::from(SCI_IRQ).to_le_bytes()); // 46 SCI_INT
    b.extend_from_slice(&0u32.to_le_bytes()); // 48 SMI_CMD: 0 = always in ACPI mode
    b.push(0); // 52 ACPI_ENABLE
    b.push(0); // 53 ACPI_DISABLE
    b.push(0); // 54 S4BIOS_REQ
    b.push(0); // 55 PSTATE_CNT
    b.extend_from_slice(&u32::from(PM1A_EVT_BLK).to_le_bytes()); // 56 PM1a_EVT_BLK
    b.extend_from_slice(&0u32.to_le_bytes()); // 60 PM1b_EVT_BLK
    b.extend_from_slice(&u32::from(PM1A_CNT_BLK).to_le_bytes()); // 64 PM1a_CNT_BLK
    b.extend_from_slice(&0u32.to_le_bytes()); // 68 PM1b_CNT_BLK
    b.extend_from_slice(&0u32.to_le_bytes()); // 72 PM2_CNT_BLK
    b.extend_from_slice(&0u32.to_le_bytes()); // 76 PM_TMR_BLK: no PM timer
    b.extend_from_slice(&0u32.to_le_bytes()); // 80 GPE0_BLK
    b.extend_from_slice(&0u32.to_le_bytes()); // 84 GPE1_BLK
    b.push(PM1_EVT_LEN); // 88 PM1_EVT_LEN
    b.push(PM1_CNT_LEN); // 89 PM1_CNT_LEN
    b.push(0); // 90 PM2_CNT_LEN
    b.push(0); // 91 PM_TMR_LEN
    b.push(0); // 92 GPE0_BLK_LEN
    b.push(0); // 93 GPE1_BLK_LEN
    b.push(0); // 94 GPE1_BASE
    b.push(0); // 95 CST_CNT
    b.extend_from_slice(&0x0FFFu16.to_le_bytes()); // 96 P_LVL2_LAT: > 100, no C2
    b.extend_from_slice(&0x0FFFu16.to_le_bytes()); // 98 P_LVL3_LAT: > 1000, no C3
    b.extend_from_slice(&0u16.to_le_bytes()); // 100 FLUSH_SIZE
    b.extend_from_slice(&0u16.to_le_bytes()); // 102 FLUSH_STRIDE
    b.push(0); // 104 DUTY_OFFSET
    b.push(0); // 105 DUTY_WIDTH
    b.push(0); // 106 DAY_ALRM
    b.push(0); // 107 MON_ALRM
    b.push(0); // 108 CENTURY
    let arch =
        boot_arch::LEGACY_DEVICES | boot_arch::VGA_NOT_PRESENT | boot_arch::CMOS_RTC_NOT_PRESENT;
    b.extend_from_slice(&arch.to_le_bytes()); // 109 IAPC_BOOT_ARCH
    b.push(0); // 111 Reserved
    let flags = fadt_flags::WBINVD
        | fadt_flags::PROC_C1
        | fadt_flags::PWR_BUTTON
        | fadt_flags::SLP_BUTTON
        | fadt_flags::FIX_RTC
        | fadt_flags::RESET_REG_SUP;
    b.extend_from_slice(&flags.to_le_bytes()); // 112 Flags
    b.extend_from_slice(&gas_io(RESET_PORT, 8, 1)); // 116 RESET_REG (§4.8.3.6)
    b.push(RESET_VALUE); // 128 RESET_VALUE
    b.extend_from_slice(&0u16.to_le_bytes()); // 129 ARM_BOOT_ARCH
    b.push(5); // 131 FADT Minor Version
               // 132 X_FIRMWARE_CTRL: zero, since FIRMWARE_CTRL holds the FACS (below 4 GiB; §5.2.9:
               // with FIRMWARE_CTRL non-zero this field must be zero).
    b.extend_from_slice(&0u64.to_le_bytes());
    b.extend_from_slice(&DSDT.to_le_bytes()); // 140 X_DSDT
    b.extend_from_slice(&gas_io(PM1A_EVT_BLK, PM1_EVT_LEN * 8, 2)); // 148 X_PM1a_EVT_BLK
    b.extend_from_slice(&gas_io(0, 0, 0)); // 160 X_PM1b_EVT_BLK
    b.extend_from_slice(&gas_io(PM1A_CNT_BLK, PM1_CNT_LEN * 8, 2)); // 172 X_PM1a_CNT_BLK
    b.extend_from_slice(&gas_io(0, 0, 0)); // 184 X_PM1b_CNT_BLK
    b.extend_from_slice(&gas_io(0, 0, 0)); // 196 X_PM2_CNT_BLK
    b.extend_from_slice(&gas_io(0, 0, 0)); // 208 X_PM_TMR_BLK
    b.extend_from_slice(&gas_io(0, 0, 0)); // 220 X_GPE0_BLK
    b.extend_from_slice(&gas_io(0, 0, 0)); // 232 X_GPE1_BLK
    b.extend_from_slice(&gas_io(0, 0, 0)); // 244 SLEEP_CONTROL_REG (HW-reduced only)
    b.extend_from_slice(&gas_io(0, 0, 0)); // 256 SLEEP_STATUS_REG (HW-reduced only)
    b.extend_from_slice(&0u64.to_le_bytes()); // 268 Hypervisor Vendor Identity
    sdt(b"FACP", 6, &b)
}

/// MADT (ACPI 6.5 §5.2.12), revision 6.
fn madt(vcpus: u32) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&LAPIC_ADDR.to_le_bytes()); // Local Interrupt Controller Address
    b.extend_from_slice(&1u32.to_le_bytes()); // Flags: PCAT_COMPAT (8259s present)
    for id in 0..vcpus {
        // Processor Local APIC (§5.2.12.2): type 0, length 8, ACPI Processor
        // UID, APIC ID, flags Enabled (bit 0).
        b.extend_from_slice(&[0, 8, id as u8, id as u8]);
        b.extend_from_slice(&1u32.to_le_bytes());
    }
    // I/O APIC (§5.2.12.3): type 1, length 12, ID, reserved, address, GSI base.
    b.extend_from_slice(&[1, 12, IOAPIC_ID, 0]);
    b.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    // Interrupt Source Override (§5.2.12.5) for the SCI: type 2, length 10,
    // bus 0 (ISA), source IRQ 9, GSI 9, MPS INTI flags active high (01) and
    // level triggered (11 << 2).
    b.extend_from_slice(&[2, 10, 0, SCI_IRQ]);
    b.extend_from_slice(&u32::from(SCI_IRQ).to_le_bytes());
    b.extend_from_slice(&0x000Du16.to_le_bytes());
    sdt(b"APIC", 6, &b)
}

/// The tables for `vcpus` vCPUs (module doc).
///
/// # Errors
/// [`AcpiError::Vcpus`] for 0 or more than [`MAX_VCPUS`].
pub fn tables(vcpus: u32) -> Result<AcpiTables, AcpiError> {
    if vcpus == 0 || vcpus > MAX_VCPUS {
        return Err(AcpiError::Vcpus(vcpus));
    }
    let t = |signature, gpa, bytes| Table {
        signature,
        gpa,
        bytes,
    };
    Ok(AcpiTables {
        tables: vec![
            t("RSDP", RSDP, rsdp()),
            t("FACS", FACS, facs()),
            t("DSDT", DSDT, dsdt()),
            t("FACP", FADT, fadt()),
            t("XSDT", XSDT, xsdt()),
            t("APIC", MADT, madt(vcpus)),
        ],
    })
}

/// The vCPUs the MADT in `page` (the bytes a bundle imports at [`BASE`]) lists as enabled,
/// if the page holds these tables: an RSDP at its start and a MADT of valid length and
/// checksum at [`MADT`]. `relaunch run` compares it with its `--vcpus`.
pub fn madt_vcpus(page: &[u8]) -> Option<u32> {
    if page.get(..8)? != b"RSD PTR " {
        return None;
    }
    let at = (MADT - BASE) as usize;
    let head = page.get(at..at + 8)?;
    let len = u32::from_le_bytes(head[4..8].try_into().ok()?) as usize;
    let m = page.get(at..at.checked_add(len)?)?;
    if &m[..4] != b"APIC" || len < 44 || checksum(m) != 0 {
        return None;
    }
    let (mut i, mut n) = (44, 0u32);
    while i + 2 <= m.len() {
        let (ty, l) = (m[i], usize::from(m[i + 1]));
        let entry = m.get(i..i + l.max(2))?;
        if ty == 0 && l == 8 && entry[4] & 1 == 1 {
            n += 1;
        }
        i += l.max(2);
    }
    Some(n)
}

/// The vCPU count of the MADT a planned launch imports at [`BASE`] (a `pack --kernel`
/// bundle), if it imports such tables ([`madt_vcpus`]).
pub fn planned_vcpus<B: AsRef<[u8]>>(plan: &relaunch_core::plan::LaunchPlan<B>) -> Option<u32> {
    use relaunch_core::plan::LaunchOp;
    plan.ops().iter().find_map(|op| match op {
        LaunchOp::ImportPage { gpa, data, .. } if *gpa == BASE => madt_vcpus(plan.page_bytes(data)),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u16_at(b: &[u8], at: usize) -> u16 {
        u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
    }
    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }
    fn u64_at(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }
    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |s, &x| s.wrapping_add(x))
    }

    #[test]
    fn layout_fits_one_page_without_overlap() {
        let t = tables(MAX_VCPUS).unwrap();
        let mut spans: Vec<(u64, u64)> = t
            .tables
            .iter()
            .map(|t| (t.gpa, t.gpa + t.bytes.len() as u64))
            .collect();
        spans.sort_unstable();
        for w in spans.windows(2) {
            assert!(w[0].1 <= w[1].0, "{spans:x?}");
        }
        assert!(spans.last().unwrap().1 <= BASE + SIZE as u64);
        assert_eq!(FACS % 64, 0);
        assert_eq!(t.page().len(), SIZE);
        assert_eq!(tables(0), Err(AcpiError::Vcpus(0)));
        assert_eq!(tables(256), Err(AcpiError::Vcpus(256)));
    }

    #[test]
    fn checksums_lengths_and_pointers() {
        let t = tables(4).unwrap();
        let rsdp = &t.get("RSDP").unwrap().bytes;
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert_eq!(sum(&rsdp[..20]), 0);
        assert_eq!(sum(rsdp), 0);
        assert_eq!((rsdp[15], u32_at(rsdp, 20)), (2, 36));
        assert_eq!(u64_at(rsdp, 24), XSDT);
        for sig in ["XSDT", "FACP", "DSDT", "APIC"] {
            let b = &t.get(sig).unwrap().bytes;
            assert_eq!(&b[..4], sig.as_bytes());
            assert_eq!(u32_at(b, 4) as usize, b.len(), "{sig}");
            assert_eq!(sum(b), 0, "{sig}");
        }
        let xsdt = &t.get("XSDT").unwrap().bytes;
        assert_eq!((u64_at(xsdt, 36), u64_at(xsdt, 44)), (FADT, MADT));
        let fadt = &t.get("FACP").unwrap().bytes;
        assert_eq!(fadt.len(), 276);
        assert_eq!((fadt[8], fadt[131]), (6, 5));
        assert_eq!(u32_at(fadt, 36), FACS as u32);
        assert_eq!(u32_at(fadt, 40), DSDT as u32);
        assert_eq!(u64_at(fadt, 132), 0);
        assert_eq!(u64_at(fadt, 140), DSDT);
        assert_eq!(u16_at(fadt, 46), 9);
        assert_eq!(u32_at(fadt, 48), 0);
        assert_eq!((u32_at(fadt, 56), u32_at(fadt, 64)), (0x600, 0x604));
        assert_eq!((fadt[88], fadt[89], fadt[91]), (4, 2, 0));
        assert_eq!(u32_at(fadt, 112) & (1 << 10), 1 << 10);
        // RESET_REG: system I/O, 8 bits, byte access, 0xCF9; value 6.
        assert_eq!(&fadt[116..120], &[1, 8, 0, 1]);
        assert_eq!((u64_at(fadt, 120), fadt[128]), (0xCF9, 6));
        assert_eq!(u64_at(fadt, 148 + 4), 0x600);
        assert_eq!(u64_at(fadt, 172 + 4), 0x604);
        let facs = &t.get("FACS").unwrap().bytes;
        assert_eq!(
            (&facs[..4], u32_at(facs, 4), facs[32]),
            (&b"FACS"[..], 64, 2)
        );
        // The page holds each table at its address.
        let page = t.page();
        for tb in &t.tables {
            let at = (tb.gpa - BASE) as usize;
            assert_eq!(&page[at..at + tb.bytes.len()], &tb.bytes[..]);
        }
    }

    #[test]
    fn madt_vcpus_reads_the_count_back() {
        for n in [1, 4, 255] {
            assert_eq!(madt_vcpus(&tables(n).unwrap().page()), Some(n));
        }
        let mut page = tables(2).unwrap().page();
        assert_eq!(madt_vcpus(&page[..100]), None);
        page[(MADT - BASE) as usize + 44 + 4] = 0; // CPU 0 disabled: checksum now wrong
        assert_eq!(madt_vcpus(&page), None);
        assert_eq!(madt_vcpus(&[0u8; 4096]), None);
        assert_eq!(madt_vcpus(&[]), None);
    }

    #[test]
    fn madt_lists_every_vcpu_and_the_ioapic() {
        for n in [1u32, 2, 255] {
            let m = tables(n).unwrap().get("APIC").unwrap().bytes.clone();
            assert_eq!(m.len(), 44 + 8 * n as usize + 12 + 10);
            assert_eq!((u32_at(&m, 36), u32_at(&m, 40)), (0xFEE0_0000, 1));
            let mut at = 44;
            let mut ids = Vec::new();
            let mut rest = Vec::new();
            while at < m.len() {
                let (ty, len) = (m[at], usize::from(m[at + 1]));
                if ty == 0 {
                    assert_eq!(len, 8);
                    assert_eq!(m[at + 2], m[at + 3]);
                    assert_eq!(u32_at(&m, at + 4), 1);
                    ids.push(u32::from(m[at + 3]));
                } else {
                    rest.push(m[at..at + len].to_vec());
                }
                at += len;
            }
            assert_eq!(at, m.len());
            assert_eq!(ids, (0..n).collect::<Vec<_>>());
            let mut ioapic = vec![1, 12, 0, 0];
            ioapic.extend_from_slice(&0xFEC0_0000u32.to_le_bytes());
            ioapic.extend_from_slice(&0u32.to_le_bytes());
            assert_eq!(rest, vec![ioapic, vec![2, 10, 0, 9, 9, 0, 0, 0, 0x0D, 0]]);
        }
    }
}
