//! `relaunch inspect`: what a bundle contains and what launching it does.
//!
//! ```text
//! relaunch inspect FILE [--platform P] [--vcpus N] [--vcpu-type NAME | --vcpu-sig HEX]
//!     [--mem SIZE] [--json]
//! ```
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
use crate::args::{parse_hex_u64, parse_size, parse_u64, Arg, ArgError, Args};
use crate::json::{self, ArrayWriter, ObjectWriter};

const HELP: &str = "\
usage: relaunch inspect FILE [--platform <native|sev|sev-es|snp|tdx>] [--vcpus N]
         [--vcpu-type NAME | --vcpu-sig HEX] [--mem SIZE] [--json]
Describes an IGVM file or OVMF/TDVF image and the launch plan of each platform view.";

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

struct InspectArgs {
    file: PathBuf,
    platform: Option<Platform>,
    vcpus: u32,
    vcpu_sig: Option<u32>,
    mem: u64,
    json: bool,
}

/// Runs `relaunch inspect` with `args`; returns the exit code.
pub fn main(args: &[String]) -> u8 {
    if args.iter().any(|a| a == "-h" || a == "--help") {
        return crate::log::print_output("inspect", format!("{HELP}\n").as_bytes());
    }
    match run(args) {
        Ok(out) => crate::log::print_output("inspect", out.as_bytes()),
        Err(e) => {
            crate::elog!("relaunch inspect: {}", one_line(&e.to_string()));
            super::EXIT_USAGE
        }
    }
}

fn parse_args(args: &[String]) -> Result<InspectArgs, ArgError> {
    let mut it = Args::new(args);
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
        match arg {
            Arg::Positional(p) => {
                if file.replace(PathBuf::from(p)).is_some() {
                    return Err(ArgError::Other(format!("unexpected argument {p:?}")));
                }
            }
            Arg::Flag { name, .. } => match name {
                "--platform" => {
                    a.platform = Some(it.parsed(
                        name,
                        "native, sev, sev-es, snp or tdx",
                        Platform::from_name,
                    )?)
                }
                "--vcpus" => {
                    a.vcpus = it.parsed(name, "a vCPU count (1-4096)", |v| {
                        parse_u64(v)
                            .and_then(|n| u32::try_from(n).ok())
                            .filter(|&n| (1..=4096).contains(&n))
                    })?
                }
                "--vcpu-type" => {
                    sig_sources += 1;
                    a.vcpu_sig = Some(it.parsed(
                        name,
                        "a QEMU -cpu model (EPYC, EPYC-v4, EPYC-Rome, EPYC-Milan, EPYC-Genoa, ...)",
                        vcpu_sig_by_name,
                    )?)
                }
                "--vcpu-sig" => {
                    sig_sources += 1;
                    a.vcpu_sig = Some(it.parsed(name, "a 32-bit hex CPUID(1).EAX", |v| {
                        parse_hex_u64(v).and_then(|n| u32::try_from(n).ok())
                    })?)
                }
                "--mem" => {
                    a.mem = it.parsed(name, "a size such as 512M or 2G", |v| {
                        parse_size(v).filter(|&n| n > 0 && n.is_multiple_of(4096))
                    })?
                }
                "--json" => a.json = true,
                other => return Err(ArgError::UnknownFlag(other.to_string())),
            },
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

fn run(args: &[String]) -> Result<String, InspectError> {
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
        let mut s = json::object(|o| {
            o.str("file", &a.file.to_string_lossy())
                .u64("size", bundle.len() as u64);
            match &input {
                Input::Igvm(f) => igvm_json(o, f),
                Input::Firmware(f) => firmware_json(o, f),
            }
            o.array("views", |arr| {
                for v in &views {
                    arr.object(|o| v.json(o));
                }
            });
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

fn header_json(o: &mut ObjectWriter<'_>, h: &HeaderRef<'_>, bytes: &[u8]) {
    let typ = header_type_of(h, bytes);
    o.u64("index", h.index.into())
        .hex_u64("offset", h.offset.into())
        .str("type", type_name(typ))
        .hex_u64("raw_type", typ.into());
    if let Some(m) = h.header.compatibility_mask() {
        o.hex_u64("mask", m.into());
    }
    match h.header {
        Header::SupportedPlatform(p) => {
            o.str("platform", platform_type_name(p.platform_type.0))
                .u64("highest_vtl", p.highest_vtl.into())
                .hex_u64("shared_gpa_boundary", p.shared_gpa_boundary);
        }
        Header::GuestPolicy { policy, .. } => {
            o.hex_u64("policy", policy);
        }
        Header::ParameterArea {
            number_of_bytes,
            parameter_area_index,
            file_offset,
            initial_data,
        } => {
            o.u64("area", parameter_area_index.into())
                .hex_u64("size", number_of_bytes)
                .hex_u64("file_offset", file_offset.into())
                .u64("initial_data_len", initial_data.len() as u64);
        }
        Header::PageData {
            gpa,
            flags,
            data_type,
            file_offset,
            data,
            ..
        } => {
            o.hex_u64("gpa", gpa)
                .str("data_type", data_type_name(data_type))
                .bool("is_2mb_page", flags.is_2mb_page)
                .bool("unmeasured", flags.unmeasured)
                .bool("shared", flags.shared)
                .hex_u64("file_offset", file_offset.into())
                .u64("data_len", data.len() as u64);
        }
        Header::ParameterInsert {
            gpa,
            parameter_area_index,
            ..
        } => {
            o.hex_u64("gpa", gpa)
                .u64("area", parameter_area_index.into());
        }
        Header::VpContext {
            gpa,
            file_offset,
            vp_index,
            kind,
            data,
            ..
        } => {
            o.hex_u64("gpa", gpa)
                .u64("vp", vp_index.into())
                .str("format", &format!("{kind:?}"))
                .hex_u64("file_offset", file_offset.into())
                .u64("data_len", data.len() as u64);
        }
        Header::RequiredMemory {
            gpa,
            number_of_bytes,
            vtl2_protectable,
            ..
        } => {
            o.hex_u64("gpa", gpa)
                .hex_u64("size", number_of_bytes.into())
                .bool("vtl2_protectable", vtl2_protectable);
        }
        Header::SnpIdBlock(b) => {
            let raw = b.get();
            o.hex("ld", &raw.ld)
                .hex("family_id", &raw.family_id)
                .hex("image_id", &raw.image_id)
                .u64("version", raw.version.into())
                .u64("guest_svn", raw.guest_svn.into())
                .u64("id_key_algorithm", raw.id_key_algorithm.into())
                .u64("author_key_enabled", raw.author_key_enabled.into());
        }
        Header::ErrorRange {
            gpa, size_bytes, ..
        } => {
            o.hex_u64("gpa", gpa).hex_u64("size", size_bytes.into());
        }
        _ => {
            if let Some(p) = h.header.parameter() {
                o.u64("area", p.parameter_area_index.into())
                    .hex_u64("byte_offset", p.byte_offset.into());
            } else {
                o.str("details", &header_text(&h.header));
            }
        }
    }
}

fn igvm_json(o: &mut ObjectWriter<'_>, f: &IgvmFile<'_>) {
    o.str("input", "igvm")
        .u64("format_version", f.format_version().into())
        .str("architecture", &format!("{:?}", f.architecture()))
        .hex_u64("file_data_start", f.file_data_start().into())
        .array("platforms", |arr| {
            for p in f.platforms() {
                arr.object(|o| {
                    o.str("platform", platform_type_name(p.platform_type.0))
                        .hex_u64("mask", p.compatibility_mask.into())
                        .u64("highest_vtl", p.highest_vtl.into())
                        .hex_u64("shared_gpa_boundary", p.shared_gpa_boundary);
                });
            }
        })
        .array("headers", |arr| {
            for h in f.headers() {
                arr.object(|o| header_json(o, &h, f.bytes()));
            }
        });
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

fn firmware_json(o: &mut ObjectWriter<'_>, f: &Firmware<'_>) {
    o.str("input", "firmware")
        .hex_u64("base_gpa", f.base_gpa())
        .array("guid_table", |arr| {
            for e in f.table_entries() {
                arr.object(|o| {
                    o.str("guid", &e.guid.to_string())
                        .hex_u64("offset", e.offset as u64)
                        .u64("len", e.data.len() as u64);
                });
            }
        });
    match f.sev_es_reset_addr() {
        Ok(Some(a)) => o.hex_u64("sev_es_reset_addr", a.into()),
        Ok(None) => o.null("sev_es_reset_addr"),
        Err(e) => o.str("sev_es_reset_addr_error", &e.to_string()),
    };
    match f.sev_metadata() {
        Ok(Some(m)) => o.array("sev_metadata", |arr| {
            for sec in m.sections() {
                arr.object(|o| {
                    o.str("kind", &sev_kind_name(sec.kind))
                        .hex_u64("gpa", sec.gpa.into())
                        .hex_u64("size", sec.size.into());
                });
            }
        }),
        Ok(None) => o.null("sev_metadata"),
        Err(e) => o.str("sev_metadata_error", &e.to_string()),
    };
    match f.tdx_metadata() {
        Ok(Some(m)) => o.array("tdx_metadata", |arr| {
            for sec in m.sections() {
                arr.object(|o| {
                    o.str("kind", tdvf_kind_name(sec.kind))
                        .hex_u64("gpa", sec.gpa)
                        .hex_u64("size", sec.size)
                        .hex_u64("data_offset", sec.data_offset.into())
                        .hex_u64("raw_size", sec.raw_size.into())
                        .bool("mr_extend", sec.extend())
                        .bool("page_aug", sec.page_aug());
                });
            }
        }),
        Ok(None) => o.null("tdx_metadata"),
        Err(e) => o.str("tdx_metadata_error", &e.to_string()),
    };
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

    fn json(&self, o: &mut ObjectWriter<'_>) {
        o.str("platform", self.platform.name())
            .u64("vcpus", self.cfg.vcpus.into())
            .u64("mem", self.cfg.mem_bytes);
        let p = match &self.result {
            Ok(p) => p,
            Err(e) => {
                o.str("error", &one_line(e));
                return;
            }
        };
        let plan = &p.plan;
        o.hex_u64("policy", p.policy)
            .str("policy_decoded", &policy_text(self.platform, p.policy))
            .hex_u64("vmsa_features", p.vmsa_features)
            .array("ops", |arr| {
                for op in plan.ops() {
                    arr.object(|o| op_json(o, op));
                }
            })
            .array("generated", |arr| {
                for page in plan.generated() {
                    arr.hex(page);
                }
            })
            .array("vp_contexts", |arr| {
                for r in plan.vp_contexts() {
                    arr.object(|o| regs_json(o, r));
                }
            });
        match plan.id_block() {
            Some(id) => o.object("id_block", |o| {
                o.hex("id_block", &id.id_block)
                    .hex("id_auth", &id.id_auth)
                    .bool("author_key_enabled", id.author_key_enabled)
                    .hex("ld", &id.ld());
                if let Ok(m) = &p.digest {
                    o.bool("matches", measure::id_block_matches(&id.ld(), m));
                }
            }),
            None => o.null("id_block"),
        };
        o.object("pages", |o| {
            for (k, n) in kind_counts(plan) {
                o.u64(kind_name(k), n);
            }
        });
        match &p.digest {
            Ok(Measurement::None) => o.null("digest"),
            Ok(m) => o.str("digest", &m.to_string()),
            Err(e) => o.null("digest").str("digest_note", e),
        };
    }
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

fn op_json(o: &mut ObjectWriter<'_>, op: &LaunchOp) {
    match *op {
        LaunchOp::CreateVm {
            platform,
            policy,
            vmsa_features,
            vcpus,
        } => {
            o.str("op", "create_vm")
                .str("platform", platform.name())
                .hex_u64("policy", policy)
                .hex_u64("vmsa_features", vmsa_features)
                .u64("vcpus", vcpus.into());
        }
        LaunchOp::MapRam { gpa, size } => {
            o.str("op", "map_ram")
                .hex_u64("gpa", gpa)
                .hex_u64("size", size);
        }
        LaunchOp::ImportPage { gpa, kind, data } => {
            o.str("op", "import_page")
                .hex_u64("gpa", gpa)
                .str("kind", kind_name(kind));
            match data {
                PageData::Zeros => o.str("data", "zeros"),
                PageData::File { offset, len } => o.object("data", |o| {
                    o.hex_u64("file_offset", offset.into())
                        .u64("len", len.into());
                }),
                PageData::Generated { index } => o.object("data", |o| {
                    o.u64("generated", index.into());
                }),
                PageData::GeneratedPart { index, start, len } => o.object("data", |o| {
                    o.u64("generated", index.into())
                        .u64("start", start.into())
                        .u64("len", len.into());
                }),
            };
        }
        LaunchOp::SetVpContext { vp, source, ctx } => {
            o.str("op", "set_vp_context")
                .u64("vp", vp.into())
                .str("source", source_name(source))
                .u64("ctx", ctx.into());
        }
        LaunchOp::Finalize {
            id_block,
            host_data,
        } => {
            o.str("op", "finalize")
                .bool("id_block", id_block)
                .hex("host_data", &host_data);
        }
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

fn seg_json(a: &mut ArrayWriter<'_>, s: &Segment) {
    a.object(|o| {
        o.hex_u64("selector", s.selector.into())
            .hex_u64("attrib", s.attrib.into())
            .hex_u64("limit", s.limit.into())
            .hex_u64("base", s.base);
    });
}

fn regs_json(o: &mut ObjectWriter<'_>, r: &VpRegs) {
    let g = &r.gprs;
    for (name, v) in [
        ("rax", g.rax),
        ("rcx", g.rcx),
        ("rdx", g.rdx),
        ("rbx", g.rbx),
        ("rsp", g.rsp),
        ("rbp", g.rbp),
        ("rsi", g.rsi),
        ("rdi", g.rdi),
        ("r8", g.r8),
        ("r9", g.r9),
        ("r10", g.r10),
        ("r11", g.r11),
        ("r12", g.r12),
        ("r13", g.r13),
        ("r14", g.r14),
        ("r15", g.r15),
        ("rip", r.rip),
        ("rflags", r.rflags),
        ("cr0", r.cr0),
        ("cr3", r.cr3),
        ("cr4", r.cr4),
        ("efer", r.efer),
        ("xcr0", r.xcr0),
        ("dr6", r.dr6),
        ("dr7", r.dr7),
        ("pat", r.pat),
        ("fcw", r.fcw.into()),
        ("mxcsr", r.mxcsr.into()),
    ] {
        o.hex_u64(name, v);
    }
    o.array("segments_cs_ss_ds_es_fs_gs_tr_ldtr", |a| {
        for s in [&r.cs, &r.ss, &r.ds, &r.es, &r.fs, &r.gs, &r.tr, &r.ldtr] {
            seg_json(a, s);
        }
    })
    .object("gdtr", |o| {
        o.hex_u64("base", r.gdtr.base)
            .hex_u64("limit", r.gdtr.limit.into());
    })
    .object("idtr", |o| {
        o.hex_u64("base", r.idtr.base)
            .hex_u64("limit", r.idtr.limit.into());
    });
}
