//! `relaunch inspect`: what a bundle contains and what launching it does.
//!
//! ```text
//! relaunch inspect FILE [options]
//! ```
//!
//! The flags are in [`FLAGS`] (also what `--help` prints). The `--json` form is derived
//! from `serde` view structs (one per entity: `HeaderView`, `FirmwareView`, one per
//! platform view); the text form is written by hand for reading.
//!
//! Two parts:
//! 1. **The file as written.** IGVM: format, platforms, every header in file order with its
//!    fields (runs of contiguous PAGE_DATA headers with the same mask, type and flags are
//!    collapsed into one line in the text form; `--json` lists every header). OVMF/TDVF:
//!    the GUID table, the SEV metadata sections, the TDX metadata sections.
//! 2. **One view per platform** the bundle can be launched on (its launch plan, as
//!    `relaunch run` would execute it): policy, memory layout, imports in launch order with
//!    their page kinds (runs collapsed in text; every op in JSON), parameter areas, the
//!    vCPU registers, the SNP ID block, page totals, and the launch digest.
//!
//! A bundle that does not parse is a one-line error and exit code 2; a platform view that
//! cannot be planned shows why, and the other views are still printed.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::PathBuf;

use relaunch_core::arch::cpu::vcpu_sig_by_name;
use relaunch_core::arch::regs::{Segment, VpRegs};
use relaunch_core::igvm::{
    type_name, Header, HeaderRef, IgvmFile, PageDataFlags, PageDataType, VpContextKind,
};
use relaunch_core::measure::{self, Measurement};
use relaunch_core::ovmf::{detect, Firmware, InputKind, SevSectionKind, TdvfSectionKind};
use relaunch_core::plan::igvm::igvm_platform_type;
use relaunch_core::plan::{LaunchConfig, LaunchOp, LaunchPlan, PageData, PageKind, Platform};

use super::measure::{
    final_vp_contexts, kind_name, measure_bundle, one_line, source_name, Failure, DEFAULT_MEM,
};
use crate::args::{
    one_positional, parse_hex_u64, wants_help, ArgError, CommandHelp, Cursor, Flag, Item, HELP_FLAG,
};
use crate::json::{self, Hex};
use serde::Serialize;

/// `relaunch inspect`'s flags: the parser and `--help` are both built from this table.
pub const FLAGS: &[Flag] = &[
    Flag {
        long: "platform",
        short: None,
        value: Some("P"),
        help: "Show only this platform's view: native, sev, sev-es, snp or tdx. Default: every \
               platform the bundle supports.",
    },
    Flag {
        long: "vcpus",
        short: None,
        value: Some("N"),
        help: "Number of vCPUs the views are planned for, 1 to 255. Default: 1.",
    },
    Flag {
        long: "vcpu-type",
        short: None,
        value: Some("NAME"),
        help: "QEMU -cpu model for the reset state's RDX (EPYC, EPYC-v4, EPYC-Rome, \
               EPYC-Milan, EPYC-Genoa, ...). Default: none (a digest that depends on it is \
               not shown).",
    },
    Flag {
        long: "vcpu-sig",
        short: None,
        value: Some("HEX"),
        help: "The vCPU signature (CPUID(1).EAX) as hex, instead of --vcpu-type. Default: none.",
    },
    Flag {
        long: "mem",
        short: None,
        value: Some("SIZE"),
        help: "Guest RAM the views are planned for: a byte count or a size with K, M, G or T, \
               a 4 KiB multiple from 4 KiB to 1 TiB. Default: 256M.",
    },
    Flag {
        long: "json",
        short: None,
        value: None,
        help: "Print one JSON object (every header and every launch op, uncollapsed) instead \
               of text. Default: off.",
    },
    HELP_FLAG,
];

/// `relaunch inspect --help`.
pub const HELP: CommandHelp = CommandHelp {
    usage: "relaunch inspect FILE [options]",
    about: "\
Describes FILE (an IGVM file or an OVMF/TDVF image) and what launching it does. First the
file as written: IGVM platforms and headers in file order (runs of contiguous pages
collapsed), or the firmware's GUID table and SEV/TDX metadata. Then one view per platform
the bundle can be launched on: policy, memory map, imports in launch order, vCPU registers,
SNP ID block, page totals and the launch digest. A view that cannot be planned says why.",
    flags: FLAGS,
    notes: "Exit codes: 0 printed; 2 bad flags or an unreadable or invalid file.",
    examples: &[
        "relaunch inspect boot-images/prebuilt/hello.igvm",
        "relaunch inspect guest.igvm --platform snp --vcpu-type EPYC-v4 --json",
    ],
};

/// Why `relaunch inspect` failed.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// Bad command line.
    #[error("{0}")]
    Args(#[from] ArgError),
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a bundle, or does not parse.
    #[error("{path}: {message}")]
    Bundle {
        /// The path.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

pub(crate) struct InspectArgs {
    file: PathBuf,
    platform: Option<Platform>,
    vcpus: u32,
    vcpu_sig: Option<u32>,
    mem: u64,
    json: bool,
}

/// Runs `relaunch inspect` with `args`; returns the exit code.
pub fn main(args: &[OsString]) -> u8 {
    if wants_help(args) {
        return crate::log::print_output("inspect", HELP.render().as_bytes());
    }
    match run(args) {
        Ok(out) => crate::log::print_output("inspect", out.as_bytes()),
        Err(InspectError::Args(ArgError::Help)) => {
            crate::log::print_output("inspect", HELP.render().as_bytes())
        }
        Err(e) => {
            crate::elog!("relaunch inspect: {}", one_line(&e.to_string()));
            super::EXIT_USAGE
        }
    }
}

pub(crate) fn parse_args(args: &[OsString]) -> Result<InspectArgs, ArgError> {
    let mut it = Cursor::new(args, FLAGS);
    let mut a = InspectArgs {
        file: PathBuf::new(),
        platform: None,
        vcpus: 1,
        vcpu_sig: None,
        mem: DEFAULT_MEM,
        json: false,
    };
    let mut file = None;
    let mut sig_sources = 0;
    while let Some(arg) = it.next()? {
        let f = match arg {
            Item::Positional(p) => {
                one_positional(&mut file, p)?;
                continue;
            }
            Item::Flag(f) => f,
        };
        match f.long {
            "platform" => {
                a.platform =
                    Some(it.parsed(f, "native, sev, sev-es, snp or tdx", Platform::from_name)?)
            }
            "vcpus" => a.vcpus = it.vcpus(f)?,
            "vcpu-type" => {
                sig_sources += 1;
                a.vcpu_sig = Some(it.parsed(
                    f,
                    "a QEMU -cpu model (EPYC, EPYC-v4, EPYC-Rome, EPYC-Milan, EPYC-Genoa, ...)",
                    vcpu_sig_by_name,
                )?)
            }
            "vcpu-sig" => {
                sig_sources += 1;
                a.vcpu_sig = Some(it.parsed(f, "a 32-bit hex CPUID(1).EAX", |v| {
                    parse_hex_u64(v).and_then(|n| u32::try_from(n).ok())
                })?)
            }
            "mem" => a.mem = it.mem(f)?,
            "json" => a.json = true,
            other => return Err(ArgError::Unhandled(other)),
        }
    }
    if sig_sources > 1 {
        return Err(ArgError::Other(
            "give --vcpu-type or --vcpu-sig, not both".into(),
        ));
    }
    a.file = file.ok_or_else(|| ArgError::Other("no bundle FILE given".into()))?;
    Ok(a)
}

fn run(args: &[OsString]) -> Result<String, InspectError> {
    let a = parse_args(args)?;
    let bundle = std::fs::read(&a.file).map_err(|source| InspectError::Read {
        path: a.file.clone(),
        source,
    })?;
    let bad = |message: String| InspectError::Bundle {
        path: a.file.clone(),
        message,
    };
    let (input, platforms): (Input<'_>, Vec<Platform>) = match detect(&bundle) {
        InputKind::Igvm => {
            let f = IgvmFile::parse(&bundle).map_err(|e| bad(e.to_string()))?;
            let ps = Platform::ALL
                .into_iter()
                .filter(|&p| f.mask_for(igvm_platform_type(p)).is_some())
                .collect();
            (Input::Igvm(f), ps)
        }
        InputKind::Firmware => {
            let f = Firmware::parse(&bundle).map_err(|e| bad(e.to_string()))?;
            (Input::Firmware(f), Platform::ALL.to_vec())
        }
        InputKind::Unknown => {
            return Err(bad(
                "not an IGVM file (no \"IGVM\" magic) and not an OVMF/TDVF image (no GUID \
                 table footer)"
                    .into(),
            ))
        }
    };
    let platforms: Vec<Platform> = platforms
        .into_iter()
        .filter(|p| a.platform.is_none_or(|want| want == *p))
        .collect();
    let views: Vec<View<'_>> = platforms
        .iter()
        .map(|&p| View::new(&bundle, &a, p))
        .collect();
    if a.json {
        let mut s = json::to_line(&Report {
            file: a.file.to_string_lossy().into_owned(),
            size: bundle.len() as u64,
            input: match &input {
                Input::Igvm(f) => FileView::Igvm(igvm_view(f)),
                Input::Firmware(f) => FileView::Firmware(firmware_view(f)),
            },
            views: views.iter().map(View::json).collect(),
        });
        s.push('\n');
        Ok(s)
    } else {
        let mut s = String::new();
        let _ = writeln!(s, "{}: {} bytes", a.file.display(), bundle.len());
        match &input {
            Input::Igvm(f) => igvm_text(&mut s, f),
            Input::Firmware(f) => firmware_text(&mut s, f),
        }
        if views.is_empty() {
            let _ = writeln!(s, "\nno platform view to show");
        }
        for v in &views {
            v.text(&mut s);
        }
        Ok(s)
    }
}

/// `inspect --json`: the file as written, then one object per platform view.
#[derive(Serialize)]
struct Report {
    file: String,
    size: u64,
    #[serde(flatten)]
    input: FileView,
    views: Vec<ViewJson>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum FileView {
    Igvm(IgvmView),
    Firmware(FirmwareView),
}

enum Input<'a> {
    Igvm(IgvmFile<'a>),
    Firmware(Firmware<'a>),
}

// ---------------------------------------------------------------------------------------
// The file as written: IGVM

/// igvm_defs `IgvmPlatformType` values (the raw byte of `PlatformInfo::platform_type`).
fn platform_type_name(t: u8) -> &'static str {
    match t {
        0 => "native",
        1 => "vsm",
        2 => "snp",
        3 => "tdx",
        4 => "sev",
        5 => "sev-es",
        6 => "cca",
        _ => "unknown",
    }
}

/// The SNP policy bits by name (`../shared/spec/igvm-snp.md` §4.1).
fn snp_policy_text(p: u64) -> String {
    let mut parts = vec![format!("ABI {}.{}", (p >> 8) & 0xFF, p & 0xFF)];
    for (bit, name) in [
        (16, "SMT"),
        (17, "MBO"),
        (18, "MIGRATE_MA"),
        (19, "DEBUG"),
        (20, "SINGLE_SOCKET"),
        (21, "CXL_ALLOW"),
        (22, "AES_256_XTS"),
        (23, "RAPL_DIS"),
        (24, "CIPHERTEXT_HIDING"),
        (25, "PAGE_SWAP_DISABLE"),
    ] {
        if p & (1 << bit) != 0 {
            parts.push(name.to_string());
        }
    }
    if p >> 26 != 0 {
        parts.push(format!("unknown bits {:#x}", p & !((1 << 26) - 1)));
    }
    parts.join(", ")
}

fn sev_policy_text(p: u64) -> String {
    let mut parts = Vec::new();
    for (bit, name) in [
        (0, "NODBG"),
        (1, "NOKS"),
        (2, "ES"),
        (3, "NOSEND"),
        (4, "DOMAIN"),
        (5, "SEV"),
    ] {
        if p & (1 << bit) != 0 {
            parts.push(name.to_string());
        }
    }
    parts.push(format!("API >= {}.{}", (p >> 16) & 0xFF, (p >> 24) & 0xFF));
    parts.join(", ")
}

fn policy_text(platform: Platform, p: u64) -> String {
    match platform {
        Platform::Snp => snp_policy_text(p),
        Platform::Sev | Platform::SevEs => sev_policy_text(p),
        Platform::Tdx => {
            let mut parts = Vec::new();
            if p & 1 != 0 {
                parts.push("DEBUG");
            }
            if p & (1 << 28) != 0 {
                parts.push("SEPT_VE_DISABLE");
            }
            if parts.is_empty() {
                "no attributes".into()
            } else {
                parts.join(", ")
            }
        }
        Platform::Native => "none".into(),
    }
}

fn data_type_name(t: PageDataType) -> &'static str {
    match t {
        PageDataType::Normal => "normal",
        PageDataType::Secrets => "secrets",
        PageDataType::CpuidData => "cpuid",
        PageDataType::CpuidXf => "cpuid-xf",
    }
}

fn flags_text(f: PageDataFlags) -> String {
    let mut v = Vec::new();
    if f.is_2mb_page {
        v.push("2MiB");
    }
    if f.unmeasured {
        v.push("unmeasured");
    }
    if f.shared {
        v.push("shared");
    }
    v.join(",")
}

fn range(gpa: u64, size: u64) -> String {
    format!("{gpa:#x}-{:#x}", gpa.saturating_add(size).saturating_sub(1))
}

fn size_text(bytes: u64) -> String {
    if bytes >= 1 << 30 && bytes.is_multiple_of(1 << 30) {
        format!("{} GiB", bytes >> 30)
    } else if bytes >= 1 << 20 {
        format!("{:.1} MiB", bytes as f64 / f64::from(1u32 << 20))
    } else {
        format!("{} KiB", bytes >> 10)
    }
}

fn pages(n: u64) -> String {
    if n == 1 {
        "1 page".into()
    } else {
        format!("{n} pages")
    }
}

/// One-line description of a header (without index/offset/type).
fn header_text(h: &Header<'_>) -> String {
    let mask = h
        .compatibility_mask()
        .map(|m| format!("mask {m:#x}  "))
        .unwrap_or_default();
    let body = match *h {
        Header::SupportedPlatform(p) => format!(
            "{} highest VTL {} shared_gpa_boundary {:#x}",
            platform_type_name(p.platform_type.0),
            p.highest_vtl,
            p.shared_gpa_boundary
        ),
        Header::GuestPolicy { policy, .. } => format!("policy {policy:#x}"),
        Header::RelocatableRegion {
            vp_index,
            relocation_region_gpa,
            relocation_region_size,
            minimum_relocation_gpa,
            maximum_relocation_gpa,
            relocation_alignment,
            ..
        } => format!(
            "vp {vp_index} region {} relocatable to [{minimum_relocation_gpa:#x}, \
             {maximum_relocation_gpa:#x}] align {relocation_alignment:#x} (loaded in place)",
            range(relocation_region_gpa, relocation_region_size)
        ),
        Header::PageTableRelocationRegion {
            vp_index,
            gpa,
            size,
            used_size,
            ..
        } => format!(
            "vp {vp_index} page tables {} used {used_size:#x} (loaded in place)",
            range(gpa, size)
        ),
        Header::CorimDocument { data, .. } => format!("CoRIM document, {} bytes", data.len()),
        Header::CorimSignature { data, .. } => format!("CoRIM signature, {} bytes", data.len()),
        Header::CcaPolicy { .. } => "CCA policy".into(),
        Header::VersionString(s) => format!("{s:?}"),
        Header::ParameterArea {
            number_of_bytes,
            parameter_area_index,
            initial_data,
            ..
        } => format!(
            "area {parameter_area_index}: {number_of_bytes:#x} bytes ({}), initial data: {}",
            pages(number_of_bytes / 4096),
            if initial_data.is_empty() {
                "zeros".to_string()
            } else {
                format!("{} bytes", initial_data.len())
            }
        ),
        Header::PageData {
            gpa,
            flags,
            data_type,
            file_offset,
            data,
            ..
        } => {
            let size = if flags.is_2mb_page { 2 << 20 } else { 4096 };
            let f = flags_text(flags);
            format!(
                "{} {}{}{}, {}",
                range(gpa, size),
                data_type_name(data_type),
                if f.is_empty() { "" } else { " " },
                f,
                if data.is_empty() {
                    "zeros".to_string()
                } else {
                    format!("{} bytes @{file_offset:#x}", data.len())
                }
            )
        }
        Header::ParameterInsert {
            gpa,
            parameter_area_index,
            ..
        } => format!("area {parameter_area_index} -> {gpa:#x}"),
        Header::VpContext {
            gpa,
            vp_index,
            kind,
            ..
        } => format!(
            "vp {vp_index} {} {}",
            match kind {
                VpContextKind::Vmsa => "VMSA",
                VpContextKind::NativeX64 => "native x64 context",
                VpContextKind::Vbs => "VBS registers",
                VpContextKind::Cca => "CCA context",
            },
            if kind == VpContextKind::Vmsa {
                format!("@{gpa:#x}")
            } else {
                String::new()
            }
        ),
        Header::RequiredMemory {
            gpa,
            number_of_bytes,
            vtl2_protectable,
            ..
        } => format!(
            "{}{}",
            range(gpa, number_of_bytes.into()),
            if vtl2_protectable {
                " vtl2-protectable"
            } else {
                ""
            }
        ),
        Header::SnpIdBlock(b) => {
            let ld = b.ld();
            format!("ld {}…", json::hex(&ld[..8]))
        }
        Header::ErrorRange {
            gpa, size_bytes, ..
        } => range(gpa, size_bytes.into()),
        Header::VbsMeasurement(_) => "VBS measurement".into(),
        Header::Unknown { body, .. } => format!("optional header skipped, {} bytes", body.len()),
        _ => match h.parameter() {
            Some(p) => format!("area {} @+{:#x}", p.parameter_area_index, p.byte_offset),
            None => String::new(),
        },
    };
    format!("{mask}{body}")
}

fn header_type_of(h: &HeaderRef<'_>, bytes: &[u8]) -> u32 {
    // The raw type field of the TLV at the header's offset.
    let o = h.offset as usize;
    bytes
        .get(o..o.saturating_add(4))
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(u32::from_le_bytes)
        .unwrap_or(0)
}

/// Whether `b` continues the PAGE_DATA run whose last header is `a`.
fn continues(a: &Header<'_>, b: &Header<'_>) -> bool {
    match (*a, *b) {
        (
            Header::PageData {
                gpa: ga,
                compatibility_mask: ma,
                flags: fa,
                data_type: ta,
                data: da,
                ..
            },
            Header::PageData {
                gpa: gb,
                compatibility_mask: mb,
                flags: fb,
                data_type: tb,
                data: db,
                ..
            },
        ) => {
            let size = if fa.is_2mb_page { 2 << 20 } else { 4096 };
            ma == mb
                && fa == fb
                && ta == tb
                && da.is_empty() == db.is_empty()
                && ga.checked_add(size) == Some(gb)
        }
        _ => false,
    }
}

fn igvm_text(s: &mut String, f: &IgvmFile<'_>) {
    let _ = writeln!(
        s,
        "IGVM format v{} ({:?}), {} headers, file data at {:#x}; CRC-32 ok",
        f.format_version(),
        f.architecture(),
        f.header_count(),
        f.file_data_start()
    );
    let _ = writeln!(s, "platforms:");
    for p in f.platforms() {
        let _ = writeln!(
            s,
            "  {:<7} mask {:#x}  highest VTL {}  shared_gpa_boundary {:#x}",
            platform_type_name(p.platform_type.0),
            p.compatibility_mask,
            p.highest_vtl,
            p.shared_gpa_boundary
        );
    }
    let _ = writeln!(
        s,
        "headers in file order (runs of contiguous PAGE_DATA with equal mask, type and flags \
         collapsed):"
    );
    let headers: Vec<HeaderRef<'_>> = f.headers().collect();
    let mut i = 0;
    while let Some(first) = headers.get(i) {
        let mut j = i;
        while let (Some(a), Some(b)) = (headers.get(j), headers.get(j + 1)) {
            if continues(&a.header, &b.header) {
                j += 1;
            } else {
                break;
            }
        }
        let typ = type_name(header_type_of(first, f.bytes()));
        if j == i {
            let _ = writeln!(
                s,
                "  #{:<5} {:#08x}  {:<27} {}",
                first.index,
                first.offset,
                typ,
                header_text(&first.header)
            );
        } else if let (
            Some(last),
            Header::PageData {
                gpa,
                compatibility_mask,
                flags,
                data_type,
                ..
            },
        ) = (headers.get(j), first.header)
        {
            let n = (j - i + 1) as u64;
            let page = if flags.is_2mb_page { 2 << 20 } else { 4096u64 };
            let fl = flags_text(flags);
            let data_bytes: usize = headers[i..=j]
                .iter()
                .map(|h| match h.header {
                    Header::PageData { data, .. } => data.len(),
                    _ => 0,
                })
                .sum();
            let _ = writeln!(
                s,
                "  #{:<5} {:#08x}  {:<27} mask {compatibility_mask:#x}  {} {}{}{}, {} ({})",
                format!("{}-{}", first.index, last.index),
                first.offset,
                format!("PAGE_DATA x{n}"),
                range(gpa, page.saturating_mul(n)),
                data_type_name(data_type),
                if fl.is_empty() { "" } else { " " },
                fl,
                if data_bytes == 0 {
                    "zeros".to_string()
                } else {
                    format!("{data_bytes} bytes of file data")
                },
                pages(n * (page / 4096))
            );
        }
        i = j + 1;
    }
}

/// `--json` of an IGVM file as written.
#[derive(Serialize)]
struct IgvmView {
    input: &'static str,
    format_version: u32,
    architecture: String,
    file_data_start: Hex,
    platforms: Vec<PlatformView>,
    headers: Vec<HeaderView>,
}

#[derive(Serialize)]
struct PlatformView {
    platform: &'static str,
    mask: Hex,
    highest_vtl: u64,
    shared_gpa_boundary: Hex,
}

/// One IGVM header: the common fields, then the fields of its kind.
#[derive(Serialize)]
struct HeaderView {
    index: u64,
    offset: Hex,
    #[serde(rename = "type")]
    typ: &'static str,
    raw_type: Hex,
    #[serde(skip_serializing_if = "Option::is_none")]
    mask: Option<Hex>,
    #[serde(flatten)]
    body: HeaderBody,
}

/// The kind-specific fields of a [`HeaderView`].
#[derive(Serialize)]
#[serde(untagged)]
enum HeaderBody {
    SupportedPlatform {
        platform: &'static str,
        highest_vtl: u64,
        shared_gpa_boundary: Hex,
    },
    GuestPolicy {
        policy: Hex,
    },
    ParameterArea {
        area: u64,
        size: Hex,
        file_offset: Hex,
        initial_data_len: u64,
    },
    PageData {
        gpa: Hex,
        data_type: &'static str,
        is_2mb_page: bool,
        unmeasured: bool,
        shared: bool,
        file_offset: Hex,
        data_len: u64,
    },
    ParameterInsert {
        gpa: Hex,
        area: u64,
    },
    VpContext {
        gpa: Hex,
        vp: u64,
        format: String,
        file_offset: Hex,
        data_len: u64,
    },
    RequiredMemory {
        gpa: Hex,
        size: Hex,
        vtl2_protectable: bool,
    },
    SnpIdBlock {
        #[serde(serialize_with = "json::hex_bytes")]
        ld: [u8; 48],
        #[serde(serialize_with = "json::hex_bytes")]
        family_id: [u8; 16],
        #[serde(serialize_with = "json::hex_bytes")]
        image_id: [u8; 16],
        version: u64,
        guest_svn: u64,
        id_key_algorithm: u64,
        author_key_enabled: u64,
    },
    ErrorRange {
        gpa: Hex,
        size: Hex,
    },
    Parameter {
        area: u64,
        byte_offset: Hex,
    },
    Other {
        details: String,
    },
}

fn header_view(h: &HeaderRef<'_>, bytes: &[u8]) -> HeaderView {
    let typ = header_type_of(h, bytes);
    let body = match h.header {
        Header::SupportedPlatform(p) => HeaderBody::SupportedPlatform {
            platform: platform_type_name(p.platform_type.0),
            highest_vtl: p.highest_vtl.into(),
            shared_gpa_boundary: Hex(p.shared_gpa_boundary),
        },
        Header::GuestPolicy { policy, .. } => HeaderBody::GuestPolicy {
            policy: Hex(policy),
        },
        Header::ParameterArea {
            number_of_bytes,
            parameter_area_index,
            file_offset,
            initial_data,
        } => HeaderBody::ParameterArea {
            area: parameter_area_index.into(),
            size: Hex(number_of_bytes),
            file_offset: Hex(file_offset.into()),
            initial_data_len: initial_data.len() as u64,
        },
        Header::PageData {
            gpa,
            flags,
            data_type,
            file_offset,
            data,
            ..
        } => HeaderBody::PageData {
            gpa: Hex(gpa),
            data_type: data_type_name(data_type),
            is_2mb_page: flags.is_2mb_page,
            unmeasured: flags.unmeasured,
            shared: flags.shared,
            file_offset: Hex(file_offset.into()),
            data_len: data.len() as u64,
        },
        Header::ParameterInsert {
            gpa,
            parameter_area_index,
            ..
        } => HeaderBody::ParameterInsert {
            gpa: Hex(gpa),
            area: parameter_area_index.into(),
        },
        Header::VpContext {
            gpa,
            file_offset,
            vp_index,
            kind,
            data,
            ..
        } => HeaderBody::VpContext {
            gpa: Hex(gpa),
            vp: vp_index.into(),
            format: format!("{kind:?}"),
            file_offset: Hex(file_offset.into()),
            data_len: data.len() as u64,
        },
        Header::RequiredMemory {
            gpa,
            number_of_bytes,
            vtl2_protectable,
            ..
        } => HeaderBody::RequiredMemory {
            gpa: Hex(gpa),
            size: Hex(number_of_bytes.into()),
            vtl2_protectable,
        },
        Header::SnpIdBlock(b) => {
            let raw = b.get();
            HeaderBody::SnpIdBlock {
                ld: raw.ld,
                family_id: raw.family_id,
                image_id: raw.image_id,
                version: raw.version.into(),
                guest_svn: raw.guest_svn.into(),
                id_key_algorithm: raw.id_key_algorithm.into(),
                author_key_enabled: raw.author_key_enabled.into(),
            }
        }
        Header::ErrorRange {
            gpa, size_bytes, ..
        } => HeaderBody::ErrorRange {
            gpa: Hex(gpa),
            size: Hex(size_bytes.into()),
        },
        _ => match h.header.parameter() {
            Some(p) => HeaderBody::Parameter {
                area: p.parameter_area_index.into(),
                byte_offset: Hex(p.byte_offset.into()),
            },
            None => HeaderBody::Other {
                details: header_text(&h.header),
            },
        },
    };
    HeaderView {
        index: h.index.into(),
        offset: Hex(h.offset.into()),
        typ: type_name(typ),
        raw_type: Hex(typ.into()),
        mask: h.header.compatibility_mask().map(|m| Hex(m.into())),
        body,
    }
}

fn igvm_view(f: &IgvmFile<'_>) -> IgvmView {
    IgvmView {
        input: "igvm",
        format_version: f.format_version(),
        architecture: format!("{:?}", f.architecture()),
        file_data_start: Hex(f.file_data_start().into()),
        platforms: f
            .platforms()
            .map(|p| PlatformView {
                platform: platform_type_name(p.platform_type.0),
                mask: Hex(p.compatibility_mask.into()),
                highest_vtl: p.highest_vtl.into(),
                shared_gpa_boundary: Hex(p.shared_gpa_boundary),
            })
            .collect(),
        headers: f.headers().map(|h| header_view(&h, f.bytes())).collect(),
    }
}

// ---------------------------------------------------------------------------------------
// The file as written: OVMF / TDVF

fn sev_kind_name(k: SevSectionKind) -> String {
    match k {
        SevSectionKind::SnpSecMem => "SNP_SEC_MEM".into(),
        SevSectionKind::SnpSecrets => "SNP_SECRETS".into(),
        SevSectionKind::Cpuid => "CPUID".into(),
        SevSectionKind::SvsmCaa => "SVSM_CAA".into(),
        SevSectionKind::SnpKernelHashes => "SNP_KERNEL_HASHES".into(),
        SevSectionKind::Other(t) => format!("type {t:#x}"),
    }
}

fn tdvf_kind_name(k: TdvfSectionKind) -> &'static str {
    match k {
        TdvfSectionKind::Bfv => "BFV",
        TdvfSectionKind::Cfv => "CFV",
        TdvfSectionKind::TdHob => "TD_HOB",
        TdvfSectionKind::TempMem => "TEMP_MEM",
        TdvfSectionKind::PermMem => "PERM_MEM",
        TdvfSectionKind::Payload => "PAYLOAD",
        TdvfSectionKind::PayloadParam => "PAYLOAD_PARAM",
    }
}

fn firmware_text(s: &mut String, f: &Firmware<'_>) {
    let _ = writeln!(
        s,
        "OVMF/TDVF firmware image, mapped at {} (below 4 GiB)",
        range(f.base_gpa(), f.len())
    );
    let _ = writeln!(s, "GUID table (footer 0x30 bytes before the end):");
    for e in f.table_entries() {
        let _ = writeln!(
            s,
            "  {}  {} bytes at image offset {:#x}",
            e.guid,
            e.data.len(),
            e.offset
        );
    }
    match f.sev_es_reset_addr() {
        Ok(Some(a)) => {
            let _ = writeln!(s, "SEV-ES AP reset address: {a:#x}");
        }
        Ok(None) => {}
        Err(e) => {
            let _ = writeln!(s, "SEV-ES AP reset block: {e}");
        }
    }
    match f.sev_hash_table() {
        Ok(Some(h)) => {
            let _ = writeln!(
                s,
                "SEV kernel-hashes table: {}",
                range(h.base.into(), h.size.into())
            );
        }
        Ok(None) => {}
        Err(e) => {
            let _ = writeln!(s, "SEV kernel-hashes table: {e}");
        }
    }
    match f.sev_metadata() {
        Ok(Some(m)) => {
            let _ = writeln!(s, "SEV metadata ({} sections):", m.len());
            for sec in m.sections() {
                let _ = writeln!(
                    s,
                    "  {:<18} {}",
                    sev_kind_name(sec.kind),
                    range(sec.gpa.into(), sec.size.into())
                );
            }
        }
        Ok(None) => {
            let _ = writeln!(s, "SEV metadata: none");
        }
        Err(e) => {
            let _ = writeln!(s, "SEV metadata: {e}");
        }
    }
    match f.tdx_metadata() {
        Ok(Some(m)) => {
            let _ = writeln!(s, "TDX metadata ({} sections):", m.len());
            for sec in m.sections() {
                let _ = writeln!(
                    s,
                    "  {:<13} {}  from image {:#x}+{:#x}{}{}",
                    tdvf_kind_name(sec.kind),
                    range(sec.gpa, sec.size),
                    sec.data_offset,
                    sec.raw_size,
                    if sec.extend() { "  MR_EXTEND" } else { "" },
                    if sec.page_aug() { "  PAGE_AUG" } else { "" }
                );
            }
        }
        Ok(None) => {
            let _ = writeln!(s, "TDX metadata: none");
        }
        Err(e) => {
            let _ = writeln!(s, "TDX metadata: {e}");
        }
    }
}

/// `--json` of an OVMF/TDVF image as written. Each table that cannot be read has an
/// `*_error` key instead of its own.
#[derive(Serialize)]
struct FirmwareView {
    input: &'static str,
    base_gpa: Hex,
    guid_table: Vec<GuidEntryView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sev_es_reset_addr: Option<Option<Hex>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sev_es_reset_addr_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sev_metadata: Option<Option<Vec<SevSectionView>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sev_metadata_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tdx_metadata: Option<Option<Vec<TdxSectionView>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tdx_metadata_error: Option<String>,
}

#[derive(Serialize)]
struct GuidEntryView {
    guid: String,
    offset: Hex,
    len: u64,
}

#[derive(Serialize)]
struct SevSectionView {
    kind: String,
    gpa: Hex,
    size: Hex,
}

#[derive(Serialize)]
struct TdxSectionView {
    kind: &'static str,
    gpa: Hex,
    size: Hex,
    data_offset: Hex,
    raw_size: Hex,
    mr_extend: bool,
    page_aug: bool,
}

/// A `Result` as the pair (value, error) of two optional keys.
fn split<T, E: ToString>(r: Result<T, E>) -> (Option<T>, Option<String>) {
    match r {
        Ok(v) => (Some(v), None),
        Err(e) => (None, Some(e.to_string())),
    }
}

fn firmware_view(f: &Firmware<'_>) -> FirmwareView {
    let (sev_es_reset_addr, sev_es_reset_addr_error) =
        split(f.sev_es_reset_addr().map(|a| a.map(|a| Hex(a.into()))));
    let (sev_metadata, sev_metadata_error) = split(f.sev_metadata().map(|m| {
        m.map(|m| {
            m.sections()
                .map(|sec| SevSectionView {
                    kind: sev_kind_name(sec.kind),
                    gpa: Hex(sec.gpa.into()),
                    size: Hex(sec.size.into()),
                })
                .collect()
        })
    }));
    let (tdx_metadata, tdx_metadata_error) = split(f.tdx_metadata().map(|m| {
        m.map(|m| {
            m.sections()
                .map(|sec| TdxSectionView {
                    kind: tdvf_kind_name(sec.kind),
                    gpa: Hex(sec.gpa),
                    size: Hex(sec.size),
                    data_offset: Hex(sec.data_offset.into()),
                    raw_size: Hex(sec.raw_size.into()),
                    mr_extend: sec.extend(),
                    page_aug: sec.page_aug(),
                })
                .collect()
        })
    }));
    FirmwareView {
        input: "firmware",
        base_gpa: Hex(f.base_gpa()),
        guid_table: f
            .table_entries()
            .map(|e| GuidEntryView {
                guid: e.guid.to_string(),
                offset: Hex(e.offset as u64),
                len: e.data.len() as u64,
            })
            .collect(),
        sev_es_reset_addr,
        sev_es_reset_addr_error,
        sev_metadata,
        sev_metadata_error,
        tdx_metadata,
        tdx_metadata_error,
    }
}

// ---------------------------------------------------------------------------------------
// Platform views (launch plans)

struct View<'a> {
    platform: Platform,
    cfg: LaunchConfig,
    result: Result<Planned<'a>, String>,
}

struct Planned<'a> {
    plan: LaunchPlan<&'a [u8]>,
    policy: u64,
    vmsa_features: u64,
    /// The digest, or why there is none.
    digest: Result<Measurement, String>,
}

impl<'a> View<'a> {
    fn new(bundle: &'a [u8], a: &InspectArgs, platform: Platform) -> View<'a> {
        let cfg = LaunchConfig {
            platform,
            vcpus: a.vcpus,
            mem_bytes: a.mem,
            vcpu_sig: a.vcpu_sig.unwrap_or(0),
            guest_features: 0,
            policy: None,
            host_data: [0; 32],
            kernel_hashes: None,
        };
        let result = match measure_bundle(bundle, &cfg, 0) {
            Ok(m) => {
                let needs_sig = matches!(platform, Platform::Snp | Platform::SevEs)
                    && a.vcpu_sig.is_none()
                    && final_vp_contexts(&m.plan)
                        .iter()
                        .any(|&(_, s, _)| s == relaunch_core::plan::VpSource::Reset);
                let digest = if needs_sig {
                    Err(
                        "depends on the vCPU signature in the reset state's RDX: give \
                         --vcpu-type NAME or --vcpu-sig HEX"
                            .to_string(),
                    )
                } else {
                    Ok(m.measurement)
                };
                Ok(Planned {
                    plan: m.plan,
                    policy: m.policy,
                    vmsa_features: m.vmsa_features,
                    digest,
                })
            }
            Err(Failure::Plan(e)) => Err(e.to_string()),
            Err(Failure::Measure(e)) => Err(format!("cannot be measured: {e}")),
        };
        View {
            platform,
            cfg,
            result,
        }
    }

    fn text(&self, s: &mut String) {
        let _ = writeln!(
            s,
            "\n== {} view ({} vCPU{}, {} RAM) ==",
            self.platform,
            self.cfg.vcpus,
            if self.cfg.vcpus == 1 { "" } else { "s" },
            size_text(self.cfg.mem_bytes)
        );
        let p = match &self.result {
            Ok(p) => p,
            Err(e) => {
                let _ = writeln!(s, "cannot launch: {}", one_line(e));
                return;
            }
        };
        let plan = &p.plan;
        let _ = writeln!(
            s,
            "policy {:#x} ({}){}",
            p.policy,
            policy_text(self.platform, p.policy),
            if matches!(self.platform, Platform::Snp | Platform::SevEs) {
                format!(", vmsa_features {:#x}", p.vmsa_features)
            } else {
                String::new()
            }
        );
        let _ = writeln!(s, "memory:");
        for op in plan.ops() {
            if let LaunchOp::MapRam { gpa, size } = *op {
                let what = if relaunch_core::plan::in_ram(self.cfg.mem_bytes, gpa, size) {
                    "guest RAM"
                } else {
                    "region for imports outside RAM"
                };
                let _ = writeln!(s, "  {:<27} {what}", range(gpa, size));
            }
        }
        let _ = writeln!(
            s,
            "imports in launch (= measurement) order, contiguous runs collapsed:"
        );
        for run in import_runs(plan) {
            let _ = writeln!(
                s,
                "  {:<27} {:>10}  {:<10} {}",
                range(run.gpa, run.pages * 4096),
                pages(run.pages),
                kind_name(run.kind),
                run.source_text()
            );
        }
        if !plan.generated().is_empty() {
            let _ = writeln!(
                s,
                "generated pages (parameter areas, tables): {}",
                plan.generated().len()
            );
        }
        let _ = writeln!(s, "vCPUs:");
        for (vp, source, ctx) in final_vp_contexts(plan) {
            let _ = writeln!(s, "  vCPU {vp} ({}):", source_name(source));
            if let Some(r) = plan.vp_contexts().get(ctx as usize) {
                for line in regs_text(r) {
                    let _ = writeln!(s, "    {line}");
                }
            }
        }
        match plan.id_block() {
            Some(id) => {
                let ld = id.ld();
                let matches = p
                    .digest
                    .as_ref()
                    .map(|m| measure::id_block_matches(&ld, m))
                    .unwrap_or(false);
                let _ = writeln!(
                    s,
                    "SNP ID block: ld {} ({}), policy {:#x}, author key {}",
                    json::hex(&ld),
                    if matches {
                        "matches the launch digest"
                    } else {
                        "does NOT match the launch digest"
                    },
                    id.policy(),
                    if id.author_key_enabled { "yes" } else { "no" }
                );
            }
            None => {
                if self.platform == Platform::Snp {
                    let _ = writeln!(s, "SNP ID block: none");
                }
            }
        }
        let counts = kind_counts(plan);
        let total: u64 = counts.iter().map(|c| c.1).sum();
        let parts: Vec<String> = counts
            .iter()
            .filter(|c| c.1 != 0)
            .map(|(k, n)| format!("{} {n}", kind_name(*k)))
            .collect();
        let _ = writeln!(
            s,
            "totals: {} ops, {} imported ({}), {}",
            plan.ops().len(),
            pages(total),
            parts.join(", "),
            size_text(total * 4096)
        );
        match &p.digest {
            Ok(Measurement::None) => {
                let _ = writeln!(s, "launch digest: none (native launches are not measured)");
            }
            Ok(m) => {
                let _ = writeln!(s, "launch digest: {m}");
            }
            Err(e) => {
                let _ = writeln!(s, "launch digest: {e}");
            }
        }
    }

    /// The JSON side of the view.
    fn json(&self) -> ViewJson {
        let body = match &self.result {
            Err(e) => ViewBody::Error { error: one_line(e) },
            Ok(p) => {
                let plan = &p.plan;
                let counts = kind_counts(plan);
                let count = |k: PageKind| counts.iter().find(|c| c.0 == k).map_or(0, |c| c.1);
                let (digest, digest_note) = match &p.digest {
                    Ok(Measurement::None) => (None, None),
                    Ok(m) => (Some(m.to_string()), None),
                    Err(e) => (None, Some(e.clone())),
                };
                ViewBody::Planned(Box::new(PlannedView {
                    policy: Hex(p.policy),
                    policy_decoded: policy_text(self.platform, p.policy),
                    vmsa_features: Hex(p.vmsa_features),
                    ops: plan.ops().iter().map(op_view).collect(),
                    generated: plan.generated().iter().map(|g| json::hex(g)).collect(),
                    vp_contexts: plan.vp_contexts().iter().map(regs_view).collect(),
                    id_block: plan.id_block().as_ref().map(|id| IdBlockView {
                        id_block: json::hex(&id.id_block),
                        id_auth: json::hex(&id.id_auth),
                        author_key_enabled: id.author_key_enabled,
                        ld: json::hex(&id.ld()),
                        matches: p
                            .digest
                            .as_ref()
                            .ok()
                            .map(|m| measure::id_block_matches(&id.ld(), m)),
                    }),
                    pages: PagesView {
                        normal: count(PageKind::Normal),
                        zero: count(PageKind::Zero),
                        unmeasured: count(PageKind::Unmeasured),
                        secrets: count(PageKind::Secrets),
                        cpuid: count(PageKind::Cpuid),
                        shared: count(PageKind::Shared),
                    },
                    digest,
                    digest_note,
                }))
            }
        };
        ViewJson {
            platform: self.platform.name(),
            vcpus: self.cfg.vcpus,
            mem: self.cfg.mem_bytes,
            body,
        }
    }
}

/// `--json` of one platform view.
#[derive(Serialize)]
struct ViewJson {
    platform: &'static str,
    vcpus: u32,
    mem: u64,
    #[serde(flatten)]
    body: ViewBody,
}

#[derive(Serialize)]
#[serde(untagged)]
enum ViewBody {
    /// Why the view cannot be planned.
    Error {
        error: String,
    },
    Planned(Box<PlannedView>),
}

/// A planned view: the plan, every op uncollapsed.
#[derive(Serialize)]
struct PlannedView {
    policy: Hex,
    policy_decoded: String,
    vmsa_features: Hex,
    ops: Vec<OpView>,
    generated: Vec<String>,
    vp_contexts: Vec<RegsView>,
    id_block: Option<IdBlockView>,
    pages: PagesView,
    /// `null` for native launches and when there is no digest (`digest_note` says why).
    digest: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    digest_note: Option<String>,
}

#[derive(Serialize)]
struct IdBlockView {
    id_block: String,
    id_auth: String,
    author_key_enabled: bool,
    ld: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    matches: Option<bool>,
}

#[derive(Serialize)]
struct PagesView {
    normal: u64,
    zero: u64,
    unmeasured: u64,
    secrets: u64,
    cpuid: u64,
    shared: u64,
}

fn kind_counts(plan: &LaunchPlan<&[u8]>) -> Vec<(PageKind, u64)> {
    let mut v: Vec<(PageKind, u64)> = [
        PageKind::Normal,
        PageKind::Zero,
        PageKind::Unmeasured,
        PageKind::Secrets,
        PageKind::Cpuid,
        PageKind::Shared,
    ]
    .into_iter()
    .map(|k| (k, 0))
    .collect();
    for op in plan.ops() {
        if let LaunchOp::ImportPage { kind, .. } = *op {
            if let Some(e) = v.iter_mut().find(|e| e.0 == kind) {
                e.1 += 1;
            }
        }
    }
    v
}

/// A run of imports: contiguous GPAs, same kind, same kind of data source.
struct Run {
    gpa: u64,
    pages: u64,
    kind: PageKind,
    /// 0 zeros, 1 file, 2 generated.
    source: u8,
    /// First and last file offset (file runs), first and last index (generated runs).
    first: u64,
    last: u64,
}

impl Run {
    fn source_text(&self) -> String {
        match self.source {
            0 => "zeros".into(),
            1 if self.first == self.last => format!("file data @{:#x}", self.first),
            1 => format!("file data @{:#x}..{:#x}", self.first, self.last),
            _ if self.first == self.last => format!("generated page {}", self.first),
            _ => format!("generated pages {}..{}", self.first, self.last),
        }
    }
}

fn import_runs(plan: &LaunchPlan<&[u8]>) -> Vec<Run> {
    let mut runs: Vec<Run> = Vec::new();
    for op in plan.ops() {
        let LaunchOp::ImportPage { gpa, kind, data } = *op else {
            continue;
        };
        let (source, at) = match data {
            PageData::Zeros => (0u8, 0u64),
            PageData::File { offset, .. } => (1, offset.into()),
            PageData::Generated { index } | PageData::GeneratedPart { index, .. } => {
                (2, index.into())
            }
        };
        if let Some(r) = runs.last_mut() {
            if r.kind == kind
                && r.source == source
                && r.gpa.checked_add(r.pages * 4096) == Some(gpa)
            {
                r.pages += 1;
                r.last = at;
                continue;
            }
        }
        runs.push(Run {
            gpa,
            pages: 1,
            kind,
            source,
            first: at,
            last: at,
        });
    }
    runs
}

/// One launch op.
#[derive(Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum OpView {
    CreateVm {
        platform: &'static str,
        policy: Hex,
        vmsa_features: Hex,
        vcpus: u32,
    },
    MapRam {
        gpa: Hex,
        size: Hex,
    },
    ImportPage {
        gpa: Hex,
        kind: &'static str,
        data: PageDataView,
    },
    SetVpContext {
        vp: u32,
        source: &'static str,
        ctx: u32,
    },
    Finalize {
        id_block: bool,
        #[serde(serialize_with = "json::hex_bytes")]
        host_data: [u8; 32],
    },
}

/// Where an imported page's bytes come from.
#[derive(Serialize)]
#[serde(untagged)]
enum PageDataView {
    /// `"zeros"`.
    Zeros(&'static str),
    File {
        file_offset: Hex,
        len: u64,
    },
    Generated {
        generated: u64,
    },
    GeneratedPart {
        generated: u64,
        start: u64,
        len: u64,
    },
}

fn op_view(op: &LaunchOp) -> OpView {
    match *op {
        LaunchOp::CreateVm {
            platform,
            policy,
            vmsa_features,
            vcpus,
        } => OpView::CreateVm {
            platform: platform.name(),
            policy: Hex(policy),
            vmsa_features: Hex(vmsa_features),
            vcpus,
        },
        LaunchOp::MapRam { gpa, size } => OpView::MapRam {
            gpa: Hex(gpa),
            size: Hex(size),
        },
        LaunchOp::ImportPage { gpa, kind, data } => OpView::ImportPage {
            gpa: Hex(gpa),
            kind: kind_name(kind),
            data: match data {
                PageData::Zeros => PageDataView::Zeros("zeros"),
                PageData::File { offset, len } => PageDataView::File {
                    file_offset: Hex(offset.into()),
                    len: len.into(),
                },
                PageData::Generated { index } => PageDataView::Generated {
                    generated: index.into(),
                },
                PageData::GeneratedPart { index, start, len } => PageDataView::GeneratedPart {
                    generated: index.into(),
                    start: start.into(),
                    len: len.into(),
                },
            },
        },
        LaunchOp::SetVpContext { vp, source, ctx } => OpView::SetVpContext {
            vp,
            source: source_name(source),
            ctx,
        },
        LaunchOp::Finalize {
            id_block,
            host_data,
        } => OpView::Finalize {
            id_block,
            host_data,
        },
    }
}

fn seg_text(name: &str, s: &Segment) -> String {
    format!(
        "{name} {:#06x}/{:#05x}/{:#x}/{:#x}",
        s.selector, s.attrib, s.limit, s.base
    )
}

/// Registers, a few per line (selector/attrib/limit/base for segments).
fn regs_text(r: &VpRegs) -> Vec<String> {
    let g = &r.gprs;
    vec![
        format!(
            "rip {:#x}  rflags {:#x}  rsp {:#x}  rax {:#x}  rbx {:#x}  rcx {:#x}  rdx {:#x}",
            r.rip, r.rflags, g.rsp, g.rax, g.rbx, g.rcx, g.rdx
        ),
        format!(
            "rsi {:#x}  rdi {:#x}  rbp {:#x}  r8 {:#x}  r9 {:#x}  r10 {:#x}  r11 {:#x}",
            g.rsi, g.rdi, g.rbp, g.r8, g.r9, g.r10, g.r11
        ),
        format!(
            "r12 {:#x}  r13 {:#x}  r14 {:#x}  r15 {:#x}",
            g.r12, g.r13, g.r14, g.r15
        ),
        format!(
            "cr0 {:#x}  cr3 {:#x}  cr4 {:#x}  efer {:#x}  xcr0 {:#x}  pat {:#x}",
            r.cr0, r.cr3, r.cr4, r.efer, r.xcr0, r.pat
        ),
        format!(
            "dr6 {:#x}  dr7 {:#x}  fcw {:#x}  mxcsr {:#x}",
            r.dr6, r.dr7, r.fcw, r.mxcsr
        ),
        format!(
            "{}  {}  {}",
            seg_text("cs", &r.cs),
            seg_text("ss", &r.ss),
            seg_text("ds", &r.ds)
        ),
        format!(
            "{}  {}  {}",
            seg_text("es", &r.es),
            seg_text("fs", &r.fs),
            seg_text("gs", &r.gs)
        ),
        format!(
            "{}  {}  gdtr {:#x}/{:#x}  idtr {:#x}/{:#x}",
            seg_text("tr", &r.tr),
            seg_text("ldtr", &r.ldtr),
            r.gdtr.base,
            r.gdtr.limit,
            r.idtr.base,
            r.idtr.limit
        ),
    ]
}

/// A vCPU's registers, every value a `"0x…"` string.
#[derive(Serialize)]
struct RegsView {
    rax: Hex,
    rcx: Hex,
    rdx: Hex,
    rbx: Hex,
    rsp: Hex,
    rbp: Hex,
    rsi: Hex,
    rdi: Hex,
    r8: Hex,
    r9: Hex,
    r10: Hex,
    r11: Hex,
    r12: Hex,
    r13: Hex,
    r14: Hex,
    r15: Hex,
    rip: Hex,
    rflags: Hex,
    cr0: Hex,
    cr3: Hex,
    cr4: Hex,
    efer: Hex,
    xcr0: Hex,
    dr6: Hex,
    dr7: Hex,
    pat: Hex,
    fcw: Hex,
    mxcsr: Hex,
    segments_cs_ss_ds_es_fs_gs_tr_ldtr: [SegmentView; 8],
    gdtr: TableView,
    idtr: TableView,
}

#[derive(Serialize)]
struct SegmentView {
    selector: Hex,
    attrib: Hex,
    limit: Hex,
    base: Hex,
}

#[derive(Serialize)]
struct TableView {
    base: Hex,
    limit: Hex,
}

fn regs_view(r: &VpRegs) -> RegsView {
    let g = &r.gprs;
    let seg = |s: &Segment| SegmentView {
        selector: Hex(s.selector.into()),
        attrib: Hex(s.attrib.into()),
        limit: Hex(s.limit.into()),
        base: Hex(s.base),
    };
    RegsView {
        rax: Hex(g.rax),
        rcx: Hex(g.rcx),
        rdx: Hex(g.rdx),
        rbx: Hex(g.rbx),
        rsp: Hex(g.rsp),
        rbp: Hex(g.rbp),
        rsi: Hex(g.rsi),
        rdi: Hex(g.rdi),
        r8: Hex(g.r8),
        r9: Hex(g.r9),
        r10: Hex(g.r10),
        r11: Hex(g.r11),
        r12: Hex(g.r12),
        r13: Hex(g.r13),
        r14: Hex(g.r14),
        r15: Hex(g.r15),
        rip: Hex(r.rip),
        rflags: Hex(r.rflags),
        cr0: Hex(r.cr0),
        cr3: Hex(r.cr3),
        cr4: Hex(r.cr4),
        efer: Hex(r.efer),
        xcr0: Hex(r.xcr0),
        dr6: Hex(r.dr6),
        dr7: Hex(r.dr7),
        pat: Hex(r.pat),
        fcw: Hex(r.fcw.into()),
        mxcsr: Hex(r.mxcsr.into()),
        segments_cs_ss_ds_es_fs_gs_tr_ldtr: [
            seg(&r.cs),
            seg(&r.ss),
            seg(&r.ds),
            seg(&r.es),
            seg(&r.fs),
            seg(&r.gs),
            seg(&r.tr),
            seg(&r.ldtr),
        ],
        gdtr: TableView {
            base: Hex(r.gdtr.base),
            limit: Hex(r.gdtr.limit.into()),
        },
        idtr: TableView {
            base: Hex(r.idtr.base),
            limit: Hex(r.idtr.limit.into()),
        },
    }
}
