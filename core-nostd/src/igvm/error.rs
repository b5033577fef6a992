//! Parse and validation errors: where (header index, file offset) and what.

use core::fmt;

/// A section of the variable header region (igvm_defs 0.5 `IGVM_VHT_RANGE_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Section {
    /// Types 0x1..=0x100: platform headers.
    Platform,
    /// Types 0x101..=0x200: initialization headers.
    Initialization,
    /// Types 0x301..=0x400: directive headers.
    Directive,
}

impl Section {
    /// The section a header type belongs to (the optional bit 31 ignored), if any.
    pub fn of(typ: u32) -> Option<Section> {
        let t = typ & !igvm_defs::IGVM_VHT_OPTIONAL_BIT;
        if igvm_defs::IGVM_VHT_RANGE_PLATFORM.contains(&t) {
            Some(Section::Platform)
        } else if igvm_defs::IGVM_VHT_RANGE_INIT.contains(&t) {
            Some(Section::Initialization)
        } else if igvm_defs::IGVM_VHT_RANGE_DIRECTIVE.contains(&t) {
            Some(Section::Directive)
        } else {
            None
        }
    }

    const fn name(self) -> &'static str {
        match self {
            Section::Platform => "platform",
            Section::Initialization => "initialization",
            Section::Directive => "directive",
        }
    }
}

/// What is wrong with an IGVM file.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IgvmErrorKind {
    /// The file is shorter than its fixed header.
    TooShort {
        /// File length.
        len: u64,
    },
    /// The magic is not `IGVM` (0x4D564749).
    BadMagic {
        /// The value found.
        found: u32,
    },
    /// format_version is neither 1 nor 2.
    UnsupportedVersion {
        /// The value found.
        version: u32,
    },
    /// V2 architecture is neither X64 (0) nor AARCH64 (1).
    UnsupportedArchitecture {
        /// The value found.
        arch: u32,
    },
    /// V2 page_size is not 4096.
    UnsupportedPageSize {
        /// The value found.
        page_size: u32,
    },
    /// total_file_size differs from the length of the bytes given.
    FileSizeMismatch {
        /// total_file_size in the header.
        header: u32,
        /// Actual length.
        actual: u64,
    },
    /// variable_header_offset is below the fixed header or not 8-byte aligned.
    BadVariableHeaderOffset {
        /// The value found.
        offset: u32,
    },
    /// The variable header region does not fit in the file.
    VariableHeadersOutOfBounds {
        /// variable_header_offset.
        offset: u32,
        /// variable_header_size.
        size: u32,
    },
    /// The CRC-32 over the fixed and variable headers does not match.
    ChecksumMismatch {
        /// The checksum stored in the fixed header.
        stored: u32,
        /// The checksum computed over the file.
        computed: u32,
    },
    /// A variable header (type/length pair, body or padding) runs past the end of the
    /// variable header region.
    Truncated {
        /// Bytes the header needs (8 + align8(length)).
        needed: u64,
        /// Bytes left in the region.
        left: u32,
    },
    /// The body length does not match the header type.
    BadLength {
        /// length field.
        length: u32,
        /// Length this type requires.
        expected: u32,
    },
    /// A header of an earlier section after a header of a later one.
    OutOfOrder {
        /// Section of this header.
        section: Section,
        /// Section already reached.
        after: Section,
    },
    /// A header type this parser does not know, without the optional bit 31.
    UnknownType,
    /// A reserved header type (0 INVALID, 0x306 RESERVED_DO_NOT_USE).
    ReservedType,
    /// A reserved field is not zero.
    ReservedNotZero {
        /// Field name.
        field: &'static str,
    },
    /// Reserved flag bits are set.
    ReservedFlags {
        /// The flags value.
        flags: u32,
    },
    /// The file declares no platform.
    NoPlatforms,
    /// A platform's compatibility mask does not have exactly one bit set.
    PlatformMaskNotOneBit {
        /// The mask.
        mask: u32,
    },
    /// Two platforms share a compatibility mask bit.
    DuplicatePlatformMask {
        /// The mask.
        mask: u32,
    },
    /// Two platform headers have the same platform type.
    DuplicatePlatformType {
        /// The platform type.
        platform_type: u8,
    },
    /// A platform type igvm_defs 0.5 does not define.
    UnknownPlatformType {
        /// The platform type.
        platform_type: u8,
    },
    /// The platform does not exist on the file's architecture.
    PlatformArchMismatch {
        /// The platform type.
        platform_type: u8,
    },
    /// platform_version is not 1.
    BadPlatformVersion {
        /// The value found.
        version: u16,
    },
    /// A VTL other than the ones allowed here.
    BadVtl {
        /// The value found.
        vtl: u8,
    },
    /// shared_gpa_boundary must be 0 for NATIVE and VSM_ISOLATION.
    SharedGpaBoundaryNotZero {
        /// The value found.
        boundary: u64,
    },
    /// A compatibility mask that is zero or names a platform the file does not declare.
    BadCompatibilityMask {
        /// The mask.
        mask: u32,
        /// OR of every declared platform mask.
        declared: u32,
    },
    /// The header does not apply to (one of) the platforms its mask names.
    WrongPlatform {
        /// The mask.
        mask: u32,
    },
    /// The header is not allowed on the file's architecture.
    WrongArchitecture,
    /// A guest-physical address is not aligned.
    MisalignedGpa {
        /// The address.
        gpa: u64,
        /// Required alignment.
        align: u64,
    },
    /// A size is not a non-zero multiple of 4 KiB.
    BadSize {
        /// The size.
        size: u64,
    },
    /// gpa + size overflows the 64-bit address space.
    GpaOverflow {
        /// The address.
        gpa: u64,
        /// The size.
        size: u64,
    },
    /// PAGE_DATA data_type is not NORMAL, SECRETS, CPUID_DATA or CPUID_XF.
    BadPageDataType {
        /// The value found.
        data_type: u16,
    },
    /// File data outside the file data section.
    FileDataOutOfRange {
        /// Absolute file offset.
        file_offset: u32,
        /// Bytes wanted.
        size: u64,
    },
    /// A parameter area index used before its PARAMETER_AREA.
    ParameterAreaUndeclared {
        /// The index.
        index: u32,
    },
    /// A parameter area index declared twice.
    ParameterAreaRedeclared {
        /// The index.
        index: u32,
    },
    /// A parameter area used or inserted after it was inserted.
    ParameterAreaAlreadyInserted {
        /// The index.
        index: u32,
    },
    /// A parameter does not fit in its area.
    ParameterOutOfArea {
        /// Area index.
        index: u32,
        /// byte_offset.
        byte_offset: u32,
        /// Area size.
        area_size: u64,
    },
    /// More parameter areas than this parser tracks without allocation.
    TooManyParameterAreas {
        /// The limit.
        limit: u32,
    },
    /// A VP context for a platform that has none (TDX) or whose mask mixes platforms with
    /// different context formats.
    BadVpContextPlatform {
        /// The mask.
        mask: u32,
    },
    /// A VP context GPA that must be zero (native, SEV, VBS) is not.
    VpContextGpaNotZero {
        /// The GPA.
        gpa: u64,
    },
    /// The VP context data is malformed.
    BadVpContext {
        /// What is wrong.
        reason: &'static str,
    },
    /// Two VP contexts for the same VP index and platform.
    DuplicateVpContext {
        /// VP index.
        vp_index: u16,
        /// Mask bits both name.
        mask: u32,
    },
    /// More distinct VP indices than this parser tracks without allocation.
    TooManyVpIndices {
        /// The limit.
        limit: u32,
    },
    /// A header that may appear once (per platform) appears again.
    Duplicate {
        /// Mask bits both name (0 for file-wide headers).
        mask: u32,
    },
    /// VERSION_STRING is not UTF-8.
    NotUtf8,
    /// A header field has an invalid value.
    InvalidField {
        /// Field name.
        field: &'static str,
        /// The value.
        value: u64,
    },
    /// A CORIM_SIGNATURE without a CORIM_DOCUMENT for the same platform before it.
    CorimSignatureWithoutDocument {
        /// Mask bits lacking a document.
        mask: u32,
    },
    /// Relocation regions of one platform overlap.
    RelocationOverlap {
        /// Index of the other header.
        other: u32,
    },
    /// More relocation regions than this parser tracks without allocation.
    TooManyRelocationRegions {
        /// The limit.
        limit: u32,
    },
    /// A parameter area is inserted inside a page table relocation region.
    InsertInsidePageTableRegion {
        /// The GPA.
        gpa: u64,
    },
    /// Two page imports for one platform overlap (`IgvmFile::check_page_layout`).
    PageOverlap {
        /// First overlapping GPA.
        gpa: u64,
        /// Index of the other header.
        other: u32,
    },
}

/// An IGVM parse or validation error, with its location.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IgvmError {
    /// What is wrong.
    pub kind: IgvmErrorKind,
    /// Index of the variable header (0-based, file order), if the error is in one.
    pub header_index: Option<u32>,
    /// Absolute file offset of that header (of its type field), or of the fixed-header
    /// field at fault.
    pub offset: u32,
    /// Raw type of that header (0 when the error is not in a variable header).
    pub header_type: u32,
}

impl IgvmError {
    /// An error in the fixed header / file framing.
    pub(crate) const fn file(kind: IgvmErrorKind, offset: u32) -> IgvmError {
        IgvmError {
            kind,
            header_index: None,
            offset,
            header_type: 0,
        }
    }

    /// An error in variable header `index` of type `typ` at `offset`.
    pub(crate) const fn at(kind: IgvmErrorKind, index: u32, offset: u32, typ: u32) -> IgvmError {
        IgvmError {
            kind,
            header_index: Some(index),
            offset,
            header_type: typ,
        }
    }
}

/// The spec name of a variable header type (without the `IGVM_VHT_` prefix).
pub fn type_name(typ: u32) -> &'static str {
    if typ & igvm_defs::IGVM_VHT_OPTIONAL_BIT != 0 {
        return "optional type";
    }
    match typ {
        0x001 => "SUPPORTED_PLATFORM",
        0x101 => "GUEST_POLICY",
        0x102 => "RELOCATABLE_REGION",
        0x103 => "PAGE_TABLE_RELOCATION_REGION",
        0x104 => "CORIM_DOCUMENT",
        0x105 => "CORIM_SIGNATURE",
        0x106 => "CCA_POLICY",
        0x107 => "VERSION_STRING",
        0x301 => "PARAMETER_AREA",
        0x302 => "PAGE_DATA",
        0x303 => "PARAMETER_INSERT",
        0x304 => "VP_CONTEXT",
        0x305 => "REQUIRED_MEMORY",
        0x306 => "RESERVED_DO_NOT_USE",
        0x307 => "VP_COUNT_PARAMETER",
        0x308 => "SRAT",
        0x309 => "MADT",
        0x30A => "MMIO_RANGES",
        0x30B => "SNP_ID_BLOCK",
        0x30C => "MEMORY_MAP",
        0x30D => "ERROR_RANGE",
        0x30E => "COMMAND_LINE",
        0x30F => "SLIT",
        0x310 => "PPTT",
        0x311 => "VBS_MEASUREMENT",
        0x312 => "DEVICE_TREE",
        0x313 => "ENVIRONMENT_INFO_PARAMETER",
        0 => "INVALID",
        _ => "unknown type",
    }
}

impl fmt::Display for IgvmErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use IgvmErrorKind::*;
        match *self {
            TooShort { len } => write!(f, "file of {len} bytes is shorter than the fixed header"),
            BadMagic { found } => write!(f, "magic {found:#x} is not \"IGVM\" (0x4d564749)"),
            UnsupportedVersion { version } => {
                write!(f, "format_version {version} is not supported (only 1 and 2)")
            }
            UnsupportedArchitecture { arch } => {
                write!(f, "architecture {arch} is neither X64 (0) nor AARCH64 (1)")
            }
            UnsupportedPageSize { page_size } => {
                write!(f, "page_size {page_size} is not supported (only 4096)")
            }
            FileSizeMismatch { header, actual } => write!(
                f,
                "total_file_size {header:#x} differs from the file length {actual:#x}"
            ),
            BadVariableHeaderOffset { offset } => write!(
                f,
                "variable_header_offset {offset:#x} is inside the fixed header or not 8-byte aligned"
            ),
            VariableHeadersOutOfBounds { offset, size } => write!(
                f,
                "variable header region {offset:#x}+{size:#x} runs past the end of the file"
            ),
            ChecksumMismatch { stored, computed } => write!(
                f,
                "checksum {stored:#010x} does not match the CRC-32 of the headers ({computed:#010x})"
            ),
            Truncated { needed, left } => write!(
                f,
                "header needs {needed:#x} bytes but only {left:#x} are left in the variable header region"
            ),
            BadLength { length, expected } => {
                write!(f, "length {length:#x}, this type requires {expected:#x}")
            }
            OutOfOrder { section, after } => write!(
                f,
                "{} header after a {} header (order must be platform, initialization, directive)",
                section.name(),
                after.name()
            ),
            UnknownType => f.write_str("unknown header type without the optional bit (bit 31)"),
            ReservedType => f.write_str("reserved header type"),
            ReservedNotZero { field } => write!(f, "reserved field {field} is not zero"),
            ReservedFlags { flags } => write!(f, "reserved bits set in flags {flags:#x}"),
            NoPlatforms => f.write_str("no SUPPORTED_PLATFORM header"),
            PlatformMaskNotOneBit { mask } => {
                write!(f, "compatibility_mask {mask:#x} does not have exactly one bit set")
            }
            DuplicatePlatformMask { mask } => {
                write!(f, "compatibility_mask {mask:#x} already used by another platform")
            }
            DuplicatePlatformType { platform_type } => {
                write!(f, "platform type {platform_type} declared twice")
            }
            UnknownPlatformType { platform_type } => {
                write!(f, "unknown platform type {platform_type}")
            }
            PlatformArchMismatch { platform_type } => write!(
                f,
                "platform type {platform_type} does not exist on the file's architecture"
            ),
            BadPlatformVersion { version } => write!(f, "platform_version {version} is not 1"),
            BadVtl { vtl } => write!(f, "VTL {vtl} is not allowed here"),
            SharedGpaBoundaryNotZero { boundary } => write!(
                f,
                "shared_gpa_boundary {boundary:#x} must be 0 for this platform type"
            ),
            BadCompatibilityMask { mask, declared } => write!(
                f,
                "compatibility_mask {mask:#x} is empty or names undeclared platforms (declared: {declared:#x})"
            ),
            WrongPlatform { mask } => write!(
                f,
                "compatibility_mask {mask:#x} names a platform this header does not apply to"
            ),
            WrongArchitecture => f.write_str("header type not allowed on the file's architecture"),
            MisalignedGpa { gpa, align } => {
                if align >= 1 << 20 {
                    write!(f, "gpa {gpa:#x} not {} MiB aligned", align >> 20)
                } else {
                    write!(f, "gpa {gpa:#x} not {} KiB aligned", align >> 10)
                }
            }
            BadSize { size } => write!(f, "size {size:#x} is not a non-zero multiple of 4 KiB"),
            GpaOverflow { gpa, size } => {
                write!(f, "range {gpa:#x}+{size:#x} overflows the address space")
            }
            BadPageDataType { data_type } => write!(f, "unknown data_type {data_type}"),
            FileDataOutOfRange { file_offset, size } => write!(
                f,
                "file data {file_offset:#x}+{size:#x} lies outside the file data section"
            ),
            ParameterAreaUndeclared { index } => {
                write!(f, "parameter area {index} used before its PARAMETER_AREA")
            }
            ParameterAreaRedeclared { index } => {
                write!(f, "parameter area {index} declared twice")
            }
            ParameterAreaAlreadyInserted { index } => {
                write!(f, "parameter area {index} already inserted")
            }
            ParameterOutOfArea {
                index,
                byte_offset,
                area_size,
            } => write!(
                f,
                "parameter at byte {byte_offset:#x} does not fit in area {index} of {area_size:#x} bytes"
            ),
            TooManyParameterAreas { limit } => {
                write!(f, "more than {limit} parameter areas")
            }
            BadVpContextPlatform { mask } => write!(
                f,
                "compatibility_mask {mask:#x} names a platform without VP contexts or mixes context formats"
            ),
            VpContextGpaNotZero { gpa } => {
                write!(f, "gpa {gpa:#x} must be 0 for this platform's VP context")
            }
            BadVpContext { reason } => write!(f, "bad VP context data: {reason}"),
            DuplicateVpContext { vp_index, mask } => write!(
                f,
                "second VP context for VP {vp_index} on platform mask {mask:#x}"
            ),
            TooManyVpIndices { limit } => write!(f, "more than {limit} distinct VP indices"),
            Duplicate { mask } => {
                if mask == 0 {
                    f.write_str("header may appear only once per file")
                } else {
                    write!(f, "header may appear only once per platform (mask {mask:#x})")
                }
            }
            NotUtf8 => f.write_str("version string is not UTF-8"),
            InvalidField { field, value } => write!(f, "invalid {field} {value:#x}"),
            CorimSignatureWithoutDocument { mask } => {
                write!(f, "CoRIM signature without a CoRIM document for mask {mask:#x}")
            }
            RelocationOverlap { other } => {
                write!(f, "relocation region overlaps the one of header {other}")
            }
            TooManyRelocationRegions { limit } => {
                write!(f, "more than {limit} relocation regions")
            }
            InsertInsidePageTableRegion { gpa } => write!(
                f,
                "parameter insert at {gpa:#x} lies in a page table relocation region"
            ),
            PageOverlap { gpa, other } => {
                write!(f, "page at {gpa:#x} overlaps a page of header {other}")
            }
        }
    }
}

impl fmt::Display for IgvmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.header_index {
            Some(index) => {
                let name = type_name(self.header_type);
                write!(f, "header {index} ({name}")?;
                if name.ends_with("type") {
                    write!(f, " {:#x}", self.header_type)?;
                }
                write!(f, ") at {:#x}: {}", self.offset, self.kind)
            }
            None => write!(f, "IGVM file at {:#x}: {}", self.offset, self.kind),
        }
    }
}
