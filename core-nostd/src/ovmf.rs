//! OVMF / TDVF firmware images: the GUID table at the reset vector, the SEV metadata and the
//! TDX (TDVF) metadata it points to.
//!
//! A firmware image is a flash image that QEMU maps so that it ends at 4 GiB: byte `off` of
//! an image of `len` bytes sits at GPA `4 GiB - len + off` (QEMU `hw/i386/pc_sysfw.c`,
//! sev-snp-measure `ovmf.py` `OVMF.gpa`).
//!
//! **GUID table** (edk2 `OvmfPkg/ResetVector/Ia16/ResetVectorVtf0.asm`, QEMU
//! `hw/i386/pc_sysfw_ovmf.c` `pc_system_parse_ovmf_flash`): the 18 bytes ending 32 bytes
//! before the end of the image are the table footer, `{u16 size; guid 96b582de-…}`, where
//! `size` counts the whole table including the footer. The entries sit immediately before
//! the footer and are read backwards: each entry *ends* with `{u16 size; guid}` and its
//! data precedes that trailer; `size` counts data + trailer.
//!
//! Entries this module understands (everything little-endian):
//! - SEV metadata `dc886566-984a-4798-a75e-5585a7bf67cc`: `u32` offset *from the end of the
//!   image* of the "ASEV" metadata `{sig "ASEV", u32 size, u32 version = 1, u32 count}` followed
//!   by `count` × `{u32 gpa, u32 size, u32 type}` (edk2 `OvmfPkg/ResetVector/X64/OvmfSevMetadata.asm`,
//!   sev-snp-measure `ovmf.py`).
//! - SEV-ES reset block `00f771de-1a7e-4fcb-890e-68c77e2fb44e`: `u32` AP reset address (QEMU
//!   `target/i386/sev.c` `sev_es_find_reset_vector`).
//! - SEV hash table `7255371f-3a3b-4b04-927b-1da6efa8d454`: `{u32 base, u32 size}` of the area
//!   QEMU writes the kernel-hashes table to; base 0 means the build has none (QEMU
//!   `sev_add_kernel_loader_hashes`).
//! - TDX metadata `e47a6535-984a-4798-865e-4685a7bf8ec2`: `u32` offset from the end of the
//!   image of the "TDVF" descriptor `{sig "TDVF", u32 length, u32 version = 1, u32 count}`
//!   followed by `count` × `{u32 data_offset, u32 raw_size, u64 mem_base, u64 mem_size,
//!   u32 type, u32 attributes}` (edk2 `OvmfPkg/ResetVector/X64/IntelTdxMetadata.asm`, QEMU
//!   `hw/i386/tdvf.c`).
//!
//! Other entries are kept (iterate [`Firmware::table_entries`]) but not interpreted.
//! Parsing allocates nothing; every offset and size read from the image is checked before use.

use core::fmt;

/// 4 GiB: the end of the flash mapping.
pub const FOUR_GIB: u64 = 1 << 32;

/// Page size of every GPA range in the metadata.
pub const PAGE_SIZE: u64 = 4096;

/// Distance from the end of the image to the end of the table footer.
const FOOTER_END_FROM_IMAGE_END: usize = 0x20;

/// Size of an entry trailer / the footer: `u16 size` + GUID.
const TRAILER_LEN: usize = 18;

/// A GUID in its in-memory (mixed-endian, `uuid.bytes_le`) byte order.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    /// Builds a GUID from its canonical fields `d1-d2-d3-d4[0..2]-d4[2..8]`.
    pub const fn from_fields(d1: u32, d2: u16, d3: u16, d4: [u8; 8]) -> Guid {
        let a = d1.to_le_bytes();
        let b = d2.to_le_bytes();
        let c = d3.to_le_bytes();
        Guid([
            a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d4[0], d4[1], d4[2], d4[3], d4[4],
            d4[5], d4[6], d4[7],
        ])
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.0;
        write!(
            f,
            "{:08x}-{:04x}-{:04x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
            u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            u16::from_le_bytes([b[4], b[5]]),
            u16::from_le_bytes([b[6], b[7]]),
            b[8],
            b[9],
            b[10],
            b[11],
            b[12],
            b[13],
            b[14],
            b[15]
        )
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The GUID table footer, `96b582de-1fb2-45f7-baea-a366c55a082d`.
pub const TABLE_FOOTER_GUID: Guid = Guid::from_fields(
    0x96b5_82de,
    0x1fb2,
    0x45f7,
    [0xba, 0xea, 0xa3, 0x66, 0xc5, 0x5a, 0x08, 0x2d],
);
/// SEV metadata pointer, `dc886566-984a-4798-a75e-5585a7bf67cc`.
pub const SEV_METADATA_GUID: Guid = Guid::from_fields(
    0xdc88_6566,
    0x984a,
    0x4798,
    [0xa7, 0x5e, 0x55, 0x85, 0xa7, 0xbf, 0x67, 0xcc],
);
/// SEV-ES AP reset block, `00f771de-1a7e-4fcb-890e-68c77e2fb44e`.
pub const SEV_ES_RESET_BLOCK_GUID: Guid = Guid::from_fields(
    0x00f7_71de,
    0x1a7e,
    0x4fcb,
    [0x89, 0x0e, 0x68, 0xc7, 0x7e, 0x2f, 0xb4, 0x4e],
);
/// SEV kernel-hashes table area, `7255371f-3a3b-4b04-927b-1da6efa8d454`.
pub const SEV_HASH_TABLE_GUID: Guid = Guid::from_fields(
    0x7255_371f,
    0x3a3b,
    0x4b04,
    [0x92, 0x7b, 0x1d, 0xa6, 0xef, 0xa8, 0xd4, 0x54],
);
/// TDX metadata pointer, `e47a6535-984a-4798-865e-4685a7bf8ec2`.
pub const TDX_METADATA_GUID: Guid = Guid::from_fields(
    0xe47a_6535,
    0x984a,
    0x4798,
    [0x86, 0x5e, 0x46, 0x85, 0xa7, 0xbf, 0x8e, 0xc2],
);

/// What a bundle is, judged from its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputKind {
    /// An IGVM file (magic `"IGVM"` at offset 0).
    Igvm,
    /// An OVMF/TDVF flash image (GUID table footer 32 bytes before the end).
    Firmware,
    /// Neither.
    Unknown,
}

/// Tells an IGVM file from a firmware image. Only the magic / footer GUID are looked at; the
/// parsers decide whether the rest is valid.
pub fn detect(bytes: &[u8]) -> InputKind {
    if bytes.get(..4) == Some(b"IGVM".as_slice()) {
        return InputKind::Igvm;
    }
    match footer_offset(bytes) {
        Some(at) if read_guid(bytes, at + 2) == Some(TABLE_FOOTER_GUID) => InputKind::Firmware,
        _ => InputKind::Unknown,
    }
}

/// Which structure of the image an error is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Structure {
    /// The image as a whole.
    Image,
    /// The GUID table (footer or an entry).
    GuidTable,
    /// The SEV metadata ("ASEV").
    SevMetadata,
    /// The SEV-ES reset block entry.
    SevEsResetBlock,
    /// The SEV hash table entry.
    SevHashTable,
    /// The TDX metadata ("TDVF").
    TdxMetadata,
}

impl fmt::Display for Structure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Structure::Image => "firmware image",
            Structure::GuidTable => "GUID table",
            Structure::SevMetadata => "SEV metadata",
            Structure::SevEsResetBlock => "SEV-ES reset block",
            Structure::SevHashTable => "SEV hash table entry",
            Structure::TdxMetadata => "TDX metadata",
        })
    }
}

/// What is wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum OvmfErrorKind {
    /// The image is empty, not a multiple of 4 KiB, or larger than 4 GiB.
    BadImageSize {
        /// Image length.
        len: u64,
    },
    /// No GUID table footer 32 bytes before the end of the image.
    NoGuidTable,
    /// The footer's size is smaller than the footer or larger than what precedes it.
    BadTableSize {
        /// The footer's size field.
        size: u16,
    },
    /// An entry's size is smaller than its trailer or runs past the start of the table.
    BadEntrySize {
        /// The entry's GUID.
        guid: Guid,
        /// The entry's size field.
        size: u16,
    },
    /// A GUID appears twice in the table.
    DuplicateEntry {
        /// The GUID.
        guid: Guid,
    },
    /// An entry's data is shorter than its known layout.
    EntryTooShort {
        /// The entry's GUID.
        guid: Guid,
        /// Data bytes present.
        len: usize,
        /// Data bytes needed.
        need: usize,
    },
    /// A metadata offset (counted from the end of the image) points outside it, or the
    /// structure it points to runs past the end.
    OutOfImage {
        /// The offset from the end of the image, as stored.
        offset_from_end: u32,
    },
    /// A metadata signature is wrong.
    BadSignature {
        /// The four bytes found.
        found: [u8; 4],
    },
    /// A metadata version other than 1.
    BadVersion {
        /// The version found.
        version: u32,
    },
    /// The metadata's length does not match its section count.
    BadLength {
        /// Length field.
        length: u32,
        /// Section count.
        count: u32,
    },
    /// TDX metadata must have at least two sections (QEMU `tdvf_parse_metadata`).
    TooFewSections {
        /// Section count.
        count: u32,
    },
    /// A section's GPA or size is not 4 KiB aligned, its size is 0, or it ends above 4 GiB
    /// (SEV) / overflows (TDX).
    BadRange {
        /// Section index.
        section: u32,
        /// GPA.
        gpa: u64,
        /// Size in bytes.
        size: u64,
    },
    /// A TDVF section's file data is out of the image, larger than its memory size, or
    /// present / absent against what its type requires.
    BadSectionData {
        /// Section index.
        section: u32,
        /// `data_offset`.
        data_offset: u32,
        /// `raw_size`.
        raw_size: u32,
    },
    /// A TDVF section type this loader does not support (QEMU supports BFV, CFV, TD_HOB and
    /// TempMem; PermMem only with PAGE_AUG).
    UnsupportedSectionType {
        /// Section index.
        section: u32,
        /// The type.
        ty: u32,
    },
    /// A TDVF section's attributes have unknown bits or PAGE_AUG on a section that needs data.
    BadAttributes {
        /// Section index.
        section: u32,
        /// The attributes.
        attributes: u32,
    },
    /// The SEV-ES reset address is 0 (QEMU refuses it).
    ZeroResetAddress,
}

/// A firmware image parse error: where and what.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OvmfError {
    /// The structure at fault.
    pub at: Structure,
    /// Byte offset into the image where the faulty field or structure starts.
    pub offset: u64,
    /// What is wrong.
    pub kind: OvmfErrorKind,
}

impl fmt::Display for OvmfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at image offset {:#x}: ", self.at, self.offset)?;
        match self.kind {
            OvmfErrorKind::BadImageSize { len } => write!(
                f,
                "image size {len:#x} is not a non-zero multiple of 4 KiB up to 4 GiB"
            ),
            OvmfErrorKind::NoGuidTable => {
                f.write_str("no GUID table footer (96b582de-…) 32 bytes before the end")
            }
            OvmfErrorKind::BadTableSize { size } => {
                write!(f, "table size {size:#x} does not fit the image")
            }
            OvmfErrorKind::BadEntrySize { guid, size } => {
                write!(f, "entry {guid} has size {size:#x}, outside the table")
            }
            OvmfErrorKind::DuplicateEntry { guid } => write!(f, "entry {guid} appears twice"),
            OvmfErrorKind::EntryTooShort { guid, len, need } => {
                write!(f, "entry {guid} has {len} data bytes, needs {need}")
            }
            OvmfErrorKind::OutOfImage { offset_from_end } => write!(
                f,
                "offset {offset_from_end:#x} from the end of the image points outside it"
            ),
            OvmfErrorKind::BadSignature { found } => {
                write!(f, "bad signature {:02x?}", found)
            }
            OvmfErrorKind::BadVersion { version } => {
                write!(f, "version {version} (only 1 is defined)")
            }
            OvmfErrorKind::BadLength { length, count } => {
                write!(f, "length {length:#x} does not match {count} sections")
            }
            OvmfErrorKind::TooFewSections { count } => {
                write!(f, "{count} sections (TDVF needs at least 2)")
            }
            OvmfErrorKind::BadRange { section, gpa, size } => write!(
                f,
                "section {section}: range {gpa:#x}+{size:#x} is empty, not 4 KiB aligned or too high"
            ),
            OvmfErrorKind::BadSectionData {
                section,
                data_offset,
                raw_size,
            } => write!(
                f,
                "section {section}: file data {data_offset:#x}+{raw_size:#x} is out of the image, \
                 larger than the section, or not allowed for its type"
            ),
            OvmfErrorKind::UnsupportedSectionType { section, ty } => {
                write!(f, "section {section}: unsupported TDVF section type {ty}")
            }
            OvmfErrorKind::BadAttributes {
                section,
                attributes,
            } => write!(
                f,
                "section {section}: attributes {attributes:#x} are invalid for its type"
            ),
            OvmfErrorKind::ZeroResetAddress => f.write_str("the AP reset address is 0"),
        }
    }
}

fn err(at: Structure, offset: usize, kind: OvmfErrorKind) -> OvmfError {
    OvmfError {
        at,
        offset: offset as u64,
        kind,
    }
}

fn read_u16(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at.checked_add(2)?)?;
    Some(u16::from_le_bytes([s[0], s[1]]))
}

fn read_u32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    let mut a = [0u8; 4];
    a.copy_from_slice(s);
    Some(u32::from_le_bytes(a))
}

fn read_u64(b: &[u8], at: usize) -> Option<u64> {
    let s = b.get(at..at.checked_add(8)?)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    Some(u64::from_le_bytes(a))
}

fn read_guid(b: &[u8], at: usize) -> Option<Guid> {
    let s = b.get(at..at.checked_add(16)?)?;
    let mut g = [0u8; 16];
    g.copy_from_slice(s);
    Some(Guid(g))
}

/// Offset of the footer's `u16 size` (the footer GUID follows it), if the image is long enough.
fn footer_offset(bytes: &[u8]) -> Option<usize> {
    bytes
        .len()
        .checked_sub(FOOTER_END_FROM_IMAGE_END + TRAILER_LEN)
}

/// One GUID table entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableEntry<'a> {
    /// The entry's GUID.
    pub guid: Guid,
    /// The entry's data (without the trailer).
    pub data: &'a [u8],
    /// Image offset of the data.
    pub offset: usize,
}

/// Iterator over GUID table entries, from the footer backwards (table order as QEMU and
/// sev-snp-measure walk it).
#[derive(Clone, Debug)]
pub struct TableEntries<'a> {
    image: &'a [u8],
    /// Image offset of the first table byte.
    start: usize,
    /// Image offset one past the next entry's trailer.
    end: usize,
}

impl<'a> TableEntries<'a> {
    /// Reads the next entry, or fails with the error the checked parse reports.
    fn next_checked(&mut self) -> Option<Result<TableEntry<'a>, OvmfError>> {
        let avail = self.end.checked_sub(self.start)?;
        if avail < TRAILER_LEN {
            return None;
        }
        let trailer = self.end - TRAILER_LEN;
        let (Some(size), Some(guid)) = (
            read_u16(self.image, trailer),
            read_guid(self.image, trailer + 2),
        ) else {
            return None;
        };
        let size_us = usize::from(size);
        if size_us < TRAILER_LEN || size_us > avail {
            self.end = self.start;
            return Some(Err(err(
                Structure::GuidTable,
                trailer,
                OvmfErrorKind::BadEntrySize { guid, size },
            )));
        }
        let data_start = self.end - size_us;
        self.end = data_start;
        Some(Ok(TableEntry {
            guid,
            data: self.image.get(data_start..trailer).unwrap_or(&[]),
            offset: data_start,
        }))
    }
}

impl<'a> Iterator for TableEntries<'a> {
    type Item = TableEntry<'a>;
    fn next(&mut self) -> Option<TableEntry<'a>> {
        // `Firmware::parse` has walked the whole table already, so no error can appear here.
        self.next_checked().and_then(Result::ok)
    }
}

/// The kernel-hashes table area named by the SEV hash table entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HashTableArea {
    /// GPA of the table (not necessarily page aligned).
    pub base: u32,
    /// Size of the area in bytes.
    pub size: u32,
}

/// SEV metadata section types (edk2 `OvmfSevMetadata.asm`; sev-snp-measure `ovmf.py`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SevSectionKind {
    /// 1: memory OVMF's SEC phase expects pre-validated (QEMU: SNP page type ZERO).
    SnpSecMem,
    /// 2: the SNP secrets page.
    SnpSecrets,
    /// 3: the SNP CPUID page.
    Cpuid,
    /// 4: the SVSM calling area (QEMU: ZERO).
    SvsmCaa,
    /// 0x10: the kernel-hashes page.
    SnpKernelHashes,
    /// Any other value (QEMU treats it as ZERO; sev-snp-measure rejects it).
    Other(u32),
}

impl SevSectionKind {
    /// Decodes the metadata's type field.
    pub const fn from_raw(ty: u32) -> SevSectionKind {
        match ty {
            1 => SevSectionKind::SnpSecMem,
            2 => SevSectionKind::SnpSecrets,
            3 => SevSectionKind::Cpuid,
            4 => SevSectionKind::SvsmCaa,
            0x10 => SevSectionKind::SnpKernelHashes,
            other => SevSectionKind::Other(other),
        }
    }
}

/// One SEV metadata section.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SevSection {
    /// First GPA (4 KiB aligned).
    pub gpa: u32,
    /// Size in bytes (non-zero multiple of 4 KiB).
    pub size: u32,
    /// Type.
    pub kind: SevSectionKind,
}

/// The SEV metadata ("ASEV"): a validated, borrowed section list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SevMetadata<'a> {
    /// The section descriptors (12 bytes each), already range-checked.
    raw: &'a [u8],
    /// Image offset of the "ASEV" header.
    pub offset: usize,
}

impl<'a> SevMetadata<'a> {
    /// Number of sections.
    pub fn len(&self) -> usize {
        self.raw.len() / SEV_SECTION_LEN
    }

    /// Whether there are no sections.
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    /// The sections in metadata order (the order QEMU issues them in).
    pub fn sections(&self) -> impl Iterator<Item = SevSection> + 'a {
        self.raw.chunks_exact(SEV_SECTION_LEN).map(|c| SevSection {
            gpa: read_u32(c, 0).unwrap_or(0),
            size: read_u32(c, 4).unwrap_or(0),
            kind: SevSectionKind::from_raw(read_u32(c, 8).unwrap_or(0)),
        })
    }
}

const SEV_SECTION_LEN: usize = 12;
const META_HEADER_LEN: usize = 16;
const TDVF_SECTION_LEN: usize = 32;

/// TDVF section types (TDVF design guide §"TDVF metadata", edk2 `IntelTdxMetadata.asm`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TdvfSectionKind {
    /// 0: boot firmware volume (code), from the image.
    Bfv,
    /// 1: configuration firmware volume (variables), from the image.
    Cfv,
    /// 2: the TD HOB the VMM writes.
    TdHob,
    /// 3: temporary memory the firmware uses before it accepts RAM.
    TempMem,
    /// 4: permanent memory (only with PAGE_AUG: the guest accepts it).
    PermMem,
    /// 5: payload (direct-boot kernel).
    Payload,
    /// 6: payload parameters (direct-boot command line).
    PayloadParam,
}

impl TdvfSectionKind {
    const fn from_raw(ty: u32) -> Option<TdvfSectionKind> {
        Some(match ty {
            0 => TdvfSectionKind::Bfv,
            1 => TdvfSectionKind::Cfv,
            2 => TdvfSectionKind::TdHob,
            3 => TdvfSectionKind::TempMem,
            4 => TdvfSectionKind::PermMem,
            5 => TdvfSectionKind::Payload,
            6 => TdvfSectionKind::PayloadParam,
            _ => return None,
        })
    }
}

/// TDVF section attribute: the section's contents are measured (TDH.MR.EXTEND).
pub const TDVF_ATTR_MR_EXTEND: u32 = 1 << 0;
/// TDVF section attribute: the section is not added by the VMM; the guest accepts it later
/// (TDH.MEM.PAGE.AUG).
pub const TDVF_ATTR_PAGE_AUG: u32 = 1 << 1;

/// One validated TDVF section.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TdvfSection {
    /// Image offset of the section's data.
    pub data_offset: u32,
    /// Bytes of data in the image (the rest of the section is zero).
    pub raw_size: u32,
    /// First GPA (4 KiB aligned).
    pub gpa: u64,
    /// Size in memory (non-zero multiple of 4 KiB).
    pub size: u64,
    /// Type.
    pub kind: TdvfSectionKind,
    /// Attribute bits ([`TDVF_ATTR_MR_EXTEND`], [`TDVF_ATTR_PAGE_AUG`]).
    pub attributes: u32,
}

impl TdvfSection {
    /// Whether the contents are measured (MR.EXTEND).
    pub const fn extend(&self) -> bool {
        self.attributes & TDVF_ATTR_MR_EXTEND != 0
    }

    /// Whether the guest accepts the pages itself (not added by the VMM).
    pub const fn page_aug(&self) -> bool {
        self.attributes & TDVF_ATTR_PAGE_AUG != 0
    }
}

/// The TDX metadata ("TDVF"): a validated, borrowed section list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TdxMetadata<'a> {
    raw: &'a [u8],
    /// Image offset of the "TDVF" header.
    pub offset: usize,
}

impl<'a> TdxMetadata<'a> {
    /// Number of sections.
    pub fn len(&self) -> usize {
        self.raw.len() / TDVF_SECTION_LEN
    }

    /// Whether there are no sections.
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    /// The sections in metadata order (the order QEMU adds them in).
    pub fn sections(&self) -> impl Iterator<Item = TdvfSection> + 'a {
        self.raw
            .chunks_exact(TDVF_SECTION_LEN)
            .filter_map(|c| decode_tdvf_section(c).ok())
    }
}

/// Decodes one 32-byte TDVF section descriptor (no validation).
fn decode_tdvf_section(c: &[u8]) -> Result<TdvfSection, u32> {
    let ty = read_u32(c, 24).unwrap_or(u32::MAX);
    let kind = TdvfSectionKind::from_raw(ty).ok_or(ty)?;
    Ok(TdvfSection {
        data_offset: read_u32(c, 0).unwrap_or(0),
        raw_size: read_u32(c, 4).unwrap_or(0),
        gpa: read_u64(c, 8).unwrap_or(0),
        size: read_u64(c, 16).unwrap_or(0),
        kind,
        attributes: read_u32(c, 28).unwrap_or(0),
    })
}

/// A parsed OVMF/TDVF firmware image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Firmware<'a> {
    bytes: &'a [u8],
    table_start: usize,
    table_end: usize,
}

impl<'a> Firmware<'a> {
    /// Parses an image and validates its GUID table (sizes, no duplicate GUIDs). The
    /// entries' contents are validated by the accessors that interpret them.
    ///
    /// # Errors
    /// [`OvmfError`] names the structure and image offset at fault.
    pub fn parse(bytes: &'a [u8]) -> Result<Firmware<'a>, OvmfError> {
        let len = bytes.len();
        if len == 0 || !len.is_multiple_of(PAGE_SIZE as usize) || len as u64 > FOUR_GIB {
            return Err(err(
                Structure::Image,
                0,
                OvmfErrorKind::BadImageSize { len: len as u64 },
            ));
        }
        let footer =
            footer_offset(bytes).ok_or(err(Structure::GuidTable, 0, OvmfErrorKind::NoGuidTable))?;
        if read_guid(bytes, footer + 2) != Some(TABLE_FOOTER_GUID) {
            return Err(err(
                Structure::GuidTable,
                footer + 2,
                OvmfErrorKind::NoGuidTable,
            ));
        }
        let size = read_u16(bytes, footer).unwrap_or(0);
        let table_end = footer; // entries end where the footer starts
        let entries_len = usize::from(size)
            .checked_sub(TRAILER_LEN)
            .filter(|&l| l <= table_end)
            .ok_or(err(
                Structure::GuidTable,
                footer,
                OvmfErrorKind::BadTableSize { size },
            ))?;
        let table_start = table_end - entries_len;

        let fw = Firmware {
            bytes,
            table_start,
            table_end,
        };

        // Walk the whole table once: sizes and duplicates.
        let mut walk = fw.raw_entries();
        while let Some(entry) = walk.next_checked() {
            let entry = entry?;
            let mut later = fw.raw_entries();
            while let Some(Ok(other)) = later.next_checked() {
                if other.offset == entry.offset {
                    break;
                }
                if other.guid == entry.guid {
                    return Err(err(
                        Structure::GuidTable,
                        entry.offset,
                        OvmfErrorKind::DuplicateEntry { guid: entry.guid },
                    ));
                }
            }
        }

        Ok(fw)
    }

    fn raw_entries(&self) -> TableEntries<'a> {
        TableEntries {
            image: self.bytes,
            start: self.table_start,
            end: self.table_end,
        }
    }

    /// The image bytes.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Image length in bytes.
    pub fn len(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// Always false: a parsed image has at least one page.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// GPA of the first image byte: `4 GiB - len`.
    pub fn base_gpa(&self) -> u64 {
        FOUR_GIB - self.len()
    }

    /// The GUID table entries, from the footer backwards.
    pub fn table_entries(&self) -> TableEntries<'a> {
        self.raw_entries()
    }

    /// The entry with this GUID, if any.
    pub fn entry(&self, guid: &Guid) -> Option<TableEntry<'a>> {
        self.raw_entries().find(|e| e.guid == *guid)
    }

    /// The SEV-ES AP reset address (the SEV-ES reset block), if the image has one.
    ///
    /// # Errors
    /// The entry is shorter than 4 bytes, or the address is 0 (QEMU refuses it).
    pub fn sev_es_reset_addr(&self) -> Result<Option<u32>, OvmfError> {
        let Some(e) = self.entry(&SEV_ES_RESET_BLOCK_GUID) else {
            return Ok(None);
        };
        let addr = entry_u32(&e, 0, Structure::SevEsResetBlock)?;
        if addr == 0 {
            return Err(err(
                Structure::SevEsResetBlock,
                e.offset,
                OvmfErrorKind::ZeroResetAddress,
            ));
        }
        Ok(Some(addr))
    }

    /// The kernel-hashes table area, if the image has one with a non-zero base (OVMF builds
    /// without one carry the entry with base 0).
    ///
    /// # Errors
    /// The entry is shorter than 8 bytes.
    pub fn sev_hash_table(&self) -> Result<Option<HashTableArea>, OvmfError> {
        let Some(e) = self.entry(&SEV_HASH_TABLE_GUID) else {
            return Ok(None);
        };
        let base = entry_u32(&e, 0, Structure::SevHashTable)?;
        let size = entry_u32(&e, 4, Structure::SevHashTable)?;
        Ok((base != 0).then_some(HashTableArea { base, size }))
    }

    /// The SEV metadata, if present, validated.
    ///
    /// Metadata is validated on demand, per platform, as QEMU does: the 4 KiB test images
    /// of sev-snp-measure, for one, carry TDX metadata that points outside them, which only
    /// matters for a TDX launch.
    ///
    /// # Errors
    /// [`OvmfError`] at the faulty field.
    pub fn sev_metadata(&self) -> Result<Option<SevMetadata<'a>>, OvmfError> {
        self.entry(&SEV_METADATA_GUID)
            .map(|e| parse_sev_metadata(self.bytes, &e))
            .transpose()
    }

    /// The TDX metadata, if present, validated (see [`Firmware::sev_metadata`]).
    ///
    /// # Errors
    /// [`OvmfError`] at the faulty field.
    pub fn tdx_metadata(&self) -> Result<Option<TdxMetadata<'a>>, OvmfError> {
        self.entry(&TDX_METADATA_GUID)
            .map(|e| parse_tdx_metadata(self.bytes, &e))
            .transpose()
    }
}

fn entry_u32(e: &TableEntry<'_>, at: usize, s: Structure) -> Result<u32, OvmfError> {
    read_u32(e.data, at).ok_or(err(
        s,
        e.offset,
        OvmfErrorKind::EntryTooShort {
            guid: e.guid,
            len: e.data.len(),
            need: at + 4,
        },
    ))
}

/// Locates a metadata header from the "offset from the end" in a table entry and checks that
/// the 16-byte header lies inside the image. Returns (header offset, length field, count).
fn locate_metadata(
    bytes: &[u8],
    e: &TableEntry<'_>,
    at: Structure,
    signature: &[u8; 4],
) -> Result<(usize, u32, u32), OvmfError> {
    let from_end = entry_u32(e, 0, at)?;
    let out = err(
        at,
        e.offset,
        OvmfErrorKind::OutOfImage {
            offset_from_end: from_end,
        },
    );
    let start = bytes.len().checked_sub(from_end as usize).ok_or(out)?;
    let header = bytes
        .get(start..start.checked_add(META_HEADER_LEN).ok_or(out)?)
        .ok_or(out)?;
    let mut sig = [0u8; 4];
    sig.copy_from_slice(&header[..4]);
    if &sig != signature {
        return Err(err(at, start, OvmfErrorKind::BadSignature { found: sig }));
    }
    let length = read_u32(header, 4).unwrap_or(0);
    let version = read_u32(header, 8).unwrap_or(0);
    let count = read_u32(header, 12).unwrap_or(0);
    if version != 1 {
        return Err(err(at, start + 8, OvmfErrorKind::BadVersion { version }));
    }
    Ok((start, length, count))
}

fn parse_sev_metadata<'a>(
    bytes: &'a [u8],
    e: &TableEntry<'_>,
) -> Result<SevMetadata<'a>, OvmfError> {
    let at = Structure::SevMetadata;
    let (start, length, count) = locate_metadata(bytes, e, at, b"ASEV")?;
    // sev-snp-measure reads `count` descriptors from the `length` bytes; QEMU
    // (`pc_system_get_ovmf_sev_metadata_ptr`) checks the header against the image. Both must
    // fit: the descriptors within `length`, and `length` within the image.
    let bad_len = err(at, start + 4, OvmfErrorKind::BadLength { length, count });
    let need = (count as usize)
        .checked_mul(SEV_SECTION_LEN)
        .and_then(|n| n.checked_add(META_HEADER_LEN))
        .ok_or(bad_len)?;
    if (length as usize) < need {
        return Err(bad_len);
    }
    let end = start.checked_add(length as usize).ok_or(bad_len)?;
    if end > bytes.len() {
        return Err(err(
            at,
            start + 4,
            OvmfErrorKind::OutOfImage {
                offset_from_end: (bytes.len() - start) as u32,
            },
        ));
    }
    let raw = bytes
        .get(start + META_HEADER_LEN..start + need)
        .ok_or(bad_len)?;
    for (i, c) in raw.chunks_exact(SEV_SECTION_LEN).enumerate() {
        let gpa = read_u32(c, 0).unwrap_or(0);
        let size = read_u32(c, 4).unwrap_or(0);
        let end = u64::from(gpa) + u64::from(size);
        if size == 0
            || !u64::from(gpa).is_multiple_of(PAGE_SIZE)
            || !u64::from(size).is_multiple_of(PAGE_SIZE)
            || end > FOUR_GIB
        {
            return Err(err(
                at,
                start + META_HEADER_LEN + i * SEV_SECTION_LEN,
                OvmfErrorKind::BadRange {
                    section: i as u32,
                    gpa: u64::from(gpa),
                    size: u64::from(size),
                },
            ));
        }
    }
    Ok(SevMetadata { raw, offset: start })
}

fn parse_tdx_metadata<'a>(
    bytes: &'a [u8],
    e: &TableEntry<'_>,
) -> Result<TdxMetadata<'a>, OvmfError> {
    let at = Structure::TdxMetadata;
    let (start, length, count) = locate_metadata(bytes, e, at, b"TDVF")?;
    // QEMU `tdvf_parse_metadata`: at least 2 sections, length == header + sections exactly.
    if count < 2 {
        return Err(err(at, start + 12, OvmfErrorKind::TooFewSections { count }));
    }
    let bad_len = err(at, start + 4, OvmfErrorKind::BadLength { length, count });
    let need = (count as usize)
        .checked_mul(TDVF_SECTION_LEN)
        .and_then(|n| n.checked_add(META_HEADER_LEN))
        .ok_or(bad_len)?;
    if length as usize != need {
        return Err(bad_len);
    }
    let raw = start
        .checked_add(need)
        .and_then(|end| bytes.get(start + META_HEADER_LEN..end))
        .ok_or(err(
            at,
            start + 4,
            OvmfErrorKind::OutOfImage {
                offset_from_end: (bytes.len() - start) as u32,
            },
        ))?;
    for (i, c) in raw.chunks_exact(TDVF_SECTION_LEN).enumerate() {
        let off = start + META_HEADER_LEN + i * TDVF_SECTION_LEN;
        let section = i as u32;
        let s = decode_tdvf_section(c).map_err(|ty| {
            err(
                at,
                off + 24,
                OvmfErrorKind::UnsupportedSectionType { section, ty },
            )
        })?;
        check_tdvf_section(bytes.len(), section, off, &s)?;
    }
    Ok(TdxMetadata { raw, offset: start })
}

/// QEMU `tdvf_parse_and_check_section_entry`, plus image bounds (QEMU reads BFV/CFV data from
/// the flash copy without checking `data_offset`).
fn check_tdvf_section(
    image_len: usize,
    section: u32,
    off: usize,
    s: &TdvfSection,
) -> Result<(), OvmfError> {
    let at = Structure::TdxMetadata;
    let bad_range = err(
        at,
        off + 8,
        OvmfErrorKind::BadRange {
            section,
            gpa: s.gpa,
            size: s.size,
        },
    );
    if s.size == 0
        || !s.gpa.is_multiple_of(PAGE_SIZE)
        || !s.size.is_multiple_of(PAGE_SIZE)
        || s.gpa.checked_add(s.size).is_none()
    {
        return Err(bad_range);
    }
    let bad_data = err(
        at,
        off,
        OvmfErrorKind::BadSectionData {
            section,
            data_offset: s.data_offset,
            raw_size: s.raw_size,
        },
    );
    if u64::from(s.raw_size) > s.size {
        return Err(bad_data);
    }
    let bad_attr = err(
        at,
        off + 28,
        OvmfErrorKind::BadAttributes {
            section,
            attributes: s.attributes,
        },
    );
    if s.attributes & !(TDVF_ATTR_MR_EXTEND | TDVF_ATTR_PAGE_AUG) != 0 {
        return Err(bad_attr);
    }
    match s.kind {
        TdvfSectionKind::Bfv | TdvfSectionKind::Cfv => {
            let end = u64::from(s.data_offset) + u64::from(s.raw_size);
            if s.raw_size == 0 || end > image_len as u64 {
                return Err(bad_data);
            }
            if s.page_aug() {
                return Err(bad_attr);
            }
        }
        TdvfSectionKind::TdHob | TdvfSectionKind::TempMem => {
            if s.raw_size != 0 {
                return Err(bad_data);
            }
            if s.extend() && s.page_aug() {
                return Err(bad_attr);
            }
        }
        TdvfSectionKind::PermMem => {
            if s.raw_size != 0 {
                return Err(bad_data);
            }
            // Permanent memory is accepted by the guest, never added by the VMM.
            if !s.page_aug() || s.extend() {
                return Err(bad_attr);
            }
        }
        TdvfSectionKind::Payload | TdvfSectionKind::PayloadParam => {
            // Direct-boot payloads come from the VMM's kernel loader, which QEMU's TDX
            // support does not have (hw/i386/tdvf.c rejects these types).
            return Err(err(
                at,
                off + 24,
                OvmfErrorKind::UnsupportedSectionType {
                    section,
                    ty: s.kind as u32,
                },
            ));
        }
    }
    Ok(())
}

/// Builds firmware images for tests: a body followed by a GUID table at the reset vector.
#[cfg(test)]
pub(crate) mod test_image {
    use super::*;
    extern crate std;
    use std::vec::Vec;

    /// An image builder: `len` bytes, entries appended to the table in table order (the
    /// first one given ends up nearest the footer).
    pub struct Builder {
        pub image: Vec<u8>,
        entries: Vec<(Guid, Vec<u8>)>,
    }

    impl Builder {
        pub fn new(len: usize) -> Builder {
            Builder {
                image: std::vec![0u8; len],
                entries: Vec::new(),
            }
        }

        pub fn entry(mut self, guid: Guid, data: &[u8]) -> Builder {
            self.entries.push((guid, data.to_vec()));
            self
        }

        /// Writes `blob` at `offset_from_end` bytes before the end and returns that offset.
        pub fn blob_at_end(&mut self, offset_from_end: usize, blob: &[u8]) -> u32 {
            let start = self.image.len() - offset_from_end;
            self.image[start..start + blob.len()].copy_from_slice(blob);
            offset_from_end as u32
        }

        pub fn build(mut self) -> Vec<u8> {
            let len = self.image.len();
            let footer = len - 0x20 - 18;
            let mut pos = footer;
            let mut total = 18usize;
            for (guid, data) in &self.entries {
                let size = data.len() + 18;
                let trailer = pos - 18;
                self.image[trailer..trailer + 2].copy_from_slice(&(size as u16).to_le_bytes());
                self.image[trailer + 2..trailer + 18].copy_from_slice(&guid.0);
                self.image[trailer - data.len()..trailer].copy_from_slice(data);
                pos -= size;
                total += size;
            }
            self.image[footer..footer + 2].copy_from_slice(&(total as u16).to_le_bytes());
            self.image[footer + 2..footer + 18].copy_from_slice(&TABLE_FOOTER_GUID.0);
            self.image
        }
    }

    pub fn asev(sections: &[(u32, u32, u32)]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(b"ASEV");
        v.extend_from_slice(&((16 + 12 * sections.len()) as u32).to_le_bytes());
        v.extend_from_slice(&1u32.to_le_bytes());
        v.extend_from_slice(&(sections.len() as u32).to_le_bytes());
        for &(gpa, size, ty) in sections {
            v.extend_from_slice(&gpa.to_le_bytes());
            v.extend_from_slice(&size.to_le_bytes());
            v.extend_from_slice(&ty.to_le_bytes());
        }
        v
    }

    /// `(data_offset, raw_size, gpa, size, type, attributes)`.
    pub type TdvfRow = (u32, u32, u64, u64, u32, u32);

    pub fn tdvf(sections: &[TdvfRow]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(b"TDVF");
        v.extend_from_slice(&((16 + 32 * sections.len()) as u32).to_le_bytes());
        v.extend_from_slice(&1u32.to_le_bytes());
        v.extend_from_slice(&(sections.len() as u32).to_le_bytes());
        for &(off, raw, gpa, size, ty, attr) in sections {
            v.extend_from_slice(&off.to_le_bytes());
            v.extend_from_slice(&raw.to_le_bytes());
            v.extend_from_slice(&gpa.to_le_bytes());
            v.extend_from_slice(&size.to_le_bytes());
            v.extend_from_slice(&ty.to_le_bytes());
            v.extend_from_slice(&attr.to_le_bytes());
        }
        v
    }

    /// An AmdSev-like 64 KiB image: reset block, hash table, SEV metadata (offset 0x1000
    /// from the end), TDX metadata (offset 0x2000 from the end).
    pub fn amdsev_like() -> Vec<u8> {
        let mut b = Builder::new(0x10000);
        let asev = asev(&[
            (0x80_0000, 0x9000, 1),
            (0x80_a000, 0x3000, 1),
            (0x80_d000, 0x1000, 2),
            (0x80_e000, 0x1000, 3),
            (0x81_0000, 0x1000, 0x10),
            (0x81_1000, 0xf000, 1),
        ]);
        let sev_off = b.blob_at_end(0x1000, &asev);
        let tdvf = tdvf(&[
            (0x1000, 0xf000, 0xffff_1000, 0xf000, 0, 1),
            (0, 0x1000, 0xffff_0000, 0x1000, 1, 0),
            (0, 0, 0x80_9000, 0x2000, 2, 0),
            (0, 0, 0x80_0000, 0x6000, 3, 0),
        ]);
        let tdx_off = b.blob_at_end(0x2000, &tdvf);
        let mut ht = Vec::new();
        ht.extend_from_slice(&0x81_0c00u32.to_le_bytes());
        ht.extend_from_slice(&0x400u32.to_le_bytes());
        b.entry(SEV_ES_RESET_BLOCK_GUID, &0x80_b004u32.to_le_bytes())
            .entry(SEV_HASH_TABLE_GUID, &ht)
            .entry(SEV_METADATA_GUID, &sev_off.to_le_bytes())
            .entry(TDX_METADATA_GUID, &tdx_off.to_le_bytes())
            .build()
    }
}

#[cfg(test)]
mod tests {
    use super::test_image::*;
    use super::*;
    extern crate std;
    use std::format;
    use std::vec::Vec;

    /// Parses and interprets every entry this module knows.
    fn full(img: &[u8]) -> Result<(), OvmfError> {
        let fw = Firmware::parse(img)?;
        fw.sev_es_reset_addr()?;
        fw.sev_hash_table()?;
        fw.sev_metadata()?;
        fw.tdx_metadata()?;
        Ok(())
    }

    #[test]
    fn guid_text_and_bytes() {
        assert_eq!(
            format!("{}", TABLE_FOOTER_GUID),
            "96b582de-1fb2-45f7-baea-a366c55a082d"
        );
        // bytes_le of the footer GUID as it sits in OVMF images
        assert_eq!(
            TABLE_FOOTER_GUID.0,
            [
                0xde, 0x82, 0xb5, 0x96, 0xb2, 0x1f, 0xf7, 0x45, 0xba, 0xea, 0xa3, 0x66, 0xc5, 0x5a,
                0x08, 0x2d
            ]
        );
        assert_eq!(
            format!("{}", TDX_METADATA_GUID),
            "e47a6535-984a-4798-865e-4685a7bf8ec2"
        );
    }

    #[test]
    fn parses_amdsev_like() {
        let img = amdsev_like();
        assert_eq!(detect(&img), InputKind::Firmware);
        let fw = Firmware::parse(&img).unwrap();
        assert_eq!(fw.base_gpa(), 0xffff_0000);
        assert_eq!(fw.sev_es_reset_addr(), Ok(Some(0x80_b004)));
        assert_eq!(
            fw.sev_hash_table(),
            Ok(Some(HashTableArea {
                base: 0x81_0c00,
                size: 0x400
            }))
        );
        let sev = fw.sev_metadata().unwrap().unwrap();
        assert_eq!(sev.len(), 6);
        let kinds: Vec<_> = sev.sections().map(|s| s.kind).collect();
        assert_eq!(
            kinds,
            [
                SevSectionKind::SnpSecMem,
                SevSectionKind::SnpSecMem,
                SevSectionKind::SnpSecrets,
                SevSectionKind::Cpuid,
                SevSectionKind::SnpKernelHashes,
                SevSectionKind::SnpSecMem
            ]
        );
        let tdx = fw.tdx_metadata().unwrap().unwrap();
        let secs: Vec<_> = tdx.sections().collect();
        assert_eq!(secs.len(), 4);
        assert_eq!(secs[0].kind, TdvfSectionKind::Bfv);
        assert!(secs[0].extend());
        assert_eq!(secs[3].kind, TdvfSectionKind::TempMem);
        // table order: nearest the footer first
        let guids: Vec<_> = fw.table_entries().map(|e| e.guid).collect();
        assert_eq!(
            guids,
            [
                SEV_ES_RESET_BLOCK_GUID,
                SEV_HASH_TABLE_GUID,
                SEV_METADATA_GUID,
                TDX_METADATA_GUID
            ]
        );
    }

    #[test]
    fn detect_kinds() {
        assert_eq!(detect(b"IGVM\x01\0\0\0"), InputKind::Igvm);
        assert_eq!(detect(&[0u8; 4096]), InputKind::Unknown);
        assert_eq!(detect(&[]), InputKind::Unknown);
        assert_eq!(detect(&[0u8; 10]), InputKind::Unknown);
    }

    #[test]
    fn minimal_table_without_entries() {
        let img = Builder::new(4096).build();
        let fw = Firmware::parse(&img).unwrap();
        assert_eq!(fw.table_entries().count(), 0);
        assert_eq!(fw.sev_metadata(), Ok(None));
        assert_eq!(fw.tdx_metadata(), Ok(None));
        assert_eq!(fw.sev_es_reset_addr(), Ok(None));
    }

    #[test]
    fn rejects_bad_images() {
        let e = Firmware::parse(&[0u8; 100]).unwrap_err();
        assert!(matches!(e.kind, OvmfErrorKind::BadImageSize { len: 100 }));
        let e = Firmware::parse(&[0u8; 4096]).unwrap_err();
        assert_eq!(e.kind, OvmfErrorKind::NoGuidTable);
        assert_eq!(e.offset, 4096 - 0x20 - 16);

        // table size larger than the image
        let mut img = Builder::new(4096).build();
        let footer = 4096 - 0x20 - 18;
        img[footer..footer + 2].copy_from_slice(&0xffffu16.to_le_bytes());
        let e = Firmware::parse(&img).unwrap_err();
        assert_eq!(e.kind, OvmfErrorKind::BadTableSize { size: 0xffff });
        // table size smaller than the footer
        img[footer..footer + 2].copy_from_slice(&3u16.to_le_bytes());
        assert!(matches!(
            Firmware::parse(&img).unwrap_err().kind,
            OvmfErrorKind::BadTableSize { size: 3 }
        ));
    }

    #[test]
    fn rejects_bad_entries() {
        // entry size too small
        let mut img = Builder::new(4096)
            .entry(SEV_ES_RESET_BLOCK_GUID, &0x1234u32.to_le_bytes())
            .build();
        let trailer = 4096 - 0x20 - 18 - 18;
        img[trailer..trailer + 2].copy_from_slice(&5u16.to_le_bytes());
        assert!(matches!(
            full(&img).unwrap_err().kind,
            OvmfErrorKind::BadEntrySize { size: 5, .. }
        ));
        // duplicate
        let img = Builder::new(4096)
            .entry(SEV_ES_RESET_BLOCK_GUID, &1u32.to_le_bytes())
            .entry(SEV_ES_RESET_BLOCK_GUID, &1u32.to_le_bytes())
            .build();
        assert!(matches!(
            full(&img).unwrap_err().kind,
            OvmfErrorKind::DuplicateEntry { .. }
        ));
        // short reset block
        let img = Builder::new(4096)
            .entry(SEV_ES_RESET_BLOCK_GUID, &[1, 2])
            .build();
        assert!(matches!(
            full(&img).unwrap_err().kind,
            OvmfErrorKind::EntryTooShort {
                len: 2,
                need: 4,
                ..
            }
        ));
        // zero reset address
        let img = Builder::new(4096)
            .entry(SEV_ES_RESET_BLOCK_GUID, &0u32.to_le_bytes())
            .build();
        assert_eq!(
            full(&img).unwrap_err().kind,
            OvmfErrorKind::ZeroResetAddress
        );
        // hash table with base 0 = none
        let img = Builder::new(4096)
            .entry(SEV_HASH_TABLE_GUID, &[0u8; 8])
            .build();
        assert_eq!(Firmware::parse(&img).unwrap().sev_hash_table(), Ok(None));
    }

    fn with_asev(blob: &[u8], off: usize) -> Vec<u8> {
        let mut b = Builder::new(0x4000);
        let o = b.blob_at_end(off, blob);
        b.entry(SEV_METADATA_GUID, &o.to_le_bytes()).build()
    }

    #[test]
    fn rejects_bad_sev_metadata() {
        // offset beyond the image
        let img = Builder::new(0x4000)
            .entry(SEV_METADATA_GUID, &0x5000u32.to_le_bytes())
            .build();
        assert!(matches!(
            full(&img).unwrap_err().kind,
            OvmfErrorKind::OutOfImage {
                offset_from_end: 0x5000
            }
        ));
        // header crossing the end
        let img = Builder::new(0x4000)
            .entry(SEV_METADATA_GUID, &8u32.to_le_bytes())
            .build();
        assert!(matches!(
            full(&img).unwrap_err().kind,
            OvmfErrorKind::OutOfImage { .. }
        ));
        let mut good = asev(&[(0x1000, 0x1000, 1)]);
        assert!(full(&with_asev(&good, 0x1000)).is_ok());
        // signature
        good[0] = b'X';
        assert!(matches!(
            full(&with_asev(&good, 0x1000)).unwrap_err().kind,
            OvmfErrorKind::BadSignature { .. }
        ));
        good[0] = b'A';
        // version
        good[8] = 2;
        assert_eq!(
            full(&with_asev(&good, 0x1000)).unwrap_err().kind,
            OvmfErrorKind::BadVersion { version: 2 }
        );
        good[8] = 1;
        // count too big for the length
        good[12] = 9;
        assert!(matches!(
            full(&with_asev(&good, 0x1000)).unwrap_err().kind,
            OvmfErrorKind::BadLength { count: 9, .. }
        ));
        good[12] = 0xff;
        good[15] = 0xff;
        assert!(full(&with_asev(&good, 0x1000)).is_err());
        // misaligned / empty / past 4 GiB
        for (gpa, size) in [
            (0x1001, 0x1000),
            (0x1000, 0),
            (0x1000, 0x800),
            (0xffff_f000, 0x2000),
        ] {
            let bad = asev(&[(gpa, size, 1)]);
            assert!(matches!(
                full(&with_asev(&bad, 0x1000)).unwrap_err().kind,
                OvmfErrorKind::BadRange { section: 0, .. }
            ));
        }
        // length running past the image end
        let mut long = asev(&[(0x1000, 0x1000, 1)]);
        long[4..8].copy_from_slice(&0x100u32.to_le_bytes());
        assert!(full(&with_asev(&long, 0x40)).is_err());
    }

    fn with_tdvf(blob: &[u8]) -> Vec<u8> {
        let mut b = Builder::new(0x4000);
        let o = b.blob_at_end(0x1000, blob);
        b.entry(TDX_METADATA_GUID, &o.to_le_bytes()).build()
    }

    #[test]
    fn rejects_bad_tdx_metadata() {
        let bfv = (0u32, 0x1000u32, 0xffff_c000u64, 0x1000u64, 0u32, 1u32);
        let hob = (0, 0, 0x80_0000, 0x1000, 2, 0);
        assert!(full(&with_tdvf(&tdvf(&[bfv, hob]))).is_ok());
        assert_eq!(
            full(&with_tdvf(&tdvf(&[bfv]))).unwrap_err().kind,
            OvmfErrorKind::TooFewSections { count: 1 }
        );
        let cases: [(TdvfRow, OvmfErrorKind); 9] = [
            (
                (0, 0x1000, 0xffff_c001, 0x1000, 0, 1),
                OvmfErrorKind::BadRange {
                    section: 0,
                    gpa: 0xffff_c001,
                    size: 0x1000,
                },
            ),
            (
                (0, 0x1000, u64::MAX - 0xfff, 0x2000, 0, 1),
                OvmfErrorKind::BadRange {
                    section: 0,
                    gpa: u64::MAX - 0xfff,
                    size: 0x2000,
                },
            ),
            (
                (0, 0x2000, 0xffff_c000, 0x1000, 0, 1),
                OvmfErrorKind::BadSectionData {
                    section: 0,
                    data_offset: 0,
                    raw_size: 0x2000,
                },
            ),
            (
                (0x3800, 0x1000, 0xffff_c000, 0x1000, 0, 1),
                OvmfErrorKind::BadSectionData {
                    section: 0,
                    data_offset: 0x3800,
                    raw_size: 0x1000,
                },
            ),
            (
                (0, 0, 0xffff_c000, 0x1000, 0, 1),
                OvmfErrorKind::BadSectionData {
                    section: 0,
                    data_offset: 0,
                    raw_size: 0,
                },
            ),
            (
                (0, 0x1000, 0xffff_c000, 0x1000, 7, 1),
                OvmfErrorKind::UnsupportedSectionType { section: 0, ty: 7 },
            ),
            (
                (0, 0, 0x100_0000, 0x1000, 5, 0),
                OvmfErrorKind::UnsupportedSectionType { section: 0, ty: 5 },
            ),
            (
                (0, 0, 0x100_0000, 0x1000, 4, 0),
                OvmfErrorKind::BadAttributes {
                    section: 0,
                    attributes: 0,
                },
            ),
            (
                (0, 0x1000, 0xffff_c000, 0x1000, 0, 4),
                OvmfErrorKind::BadAttributes {
                    section: 0,
                    attributes: 4,
                },
            ),
        ];
        for (sec, kind) in cases {
            let e = full(&with_tdvf(&tdvf(&[sec, hob]))).unwrap_err();
            assert_eq!(e.kind, kind, "{sec:x?}");
            assert_eq!(e.at, Structure::TdxMetadata);
        }
        // length field not matching the count
        let mut t = tdvf(&[bfv, hob]);
        t[4] = t[4].wrapping_add(1);
        assert!(matches!(
            full(&with_tdvf(&t)).unwrap_err().kind,
            OvmfErrorKind::BadLength { .. }
        ));
        // PermMem with PAGE_AUG is fine
        let perm = (0, 0, 0x100_0000, 0x1000, 4, 2);
        assert!(full(&with_tdvf(&tdvf(&[bfv, hob, perm]))).is_ok());
    }

    #[test]
    fn errors_display() {
        let e = Firmware::parse(&[0u8; 4096]).unwrap_err();
        let s = format!("{e}");
        assert!(
            s.starts_with("GUID table at image offset 0xfd0: no GUID table"),
            "{s}"
        );
    }

    /// Every truncation and every single-byte corruption of a valid image parses or fails
    /// cleanly (no panic).
    #[test]
    fn corruption_never_panics() {
        let img = amdsev_like();
        let tail = img.len() - 0x2100;
        for i in tail..img.len() {
            for v in [0u8, 1, 0x7f, 0xff] {
                let mut m = img.clone();
                m[i] = v;
                let _ = Firmware::parse(&m).map(|fw| {
                    let _ = fw.sev_es_reset_addr();
                    let _ = fw.sev_hash_table();
                    let _ = fw.sev_metadata().map(|s| s.map(|s| s.sections().count()));
                    let _ = fw.tdx_metadata().map(|s| s.map(|s| s.sections().count()));
                    fw.table_entries().count()
                });
            }
        }
        for cut in (0..img.len()).step_by(512) {
            let _ = Firmware::parse(&img[cut..]);
            let _ = detect(&img[cut..]);
        }
    }
}
