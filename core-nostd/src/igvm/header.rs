//! Typed variable headers and their per-header (stateless) validation.
//!
//! Layouts are igvm_defs 0.5 `IGVM_VHS_*` (spec notes `../shared/spec/igvm-snp.md` §1.2);
//! every field is copied out of the (possibly unaligned) file bytes, file data is resolved to
//! sub-slices of the file after a range check.

use igvm_defs::{
    IgvmNativeVpContextX64, IgvmPlatformType, IgvmVariableHeaderType as T, IgvmVpContextAArch64Cca,
    VbsVpContextRegister, IGVM_VHS_CCA_POLICY, IGVM_VHS_ERROR_RANGE, IGVM_VHS_GUEST_POLICY,
    IGVM_VHS_PAGE_DATA, IGVM_VHS_PAGE_TABLE_RELOCATION, IGVM_VHS_PARAMETER,
    IGVM_VHS_PARAMETER_AREA, IGVM_VHS_PARAMETER_INSERT, IGVM_VHS_RELOCATABLE_REGION,
    IGVM_VHS_REQUIRED_MEMORY, IGVM_VHS_SNP_ID_BLOCK, IGVM_VHS_SUPPORTED_PLATFORM,
    IGVM_VHS_VBS_MEASUREMENT, IGVM_VHS_VP_CONTEXT,
};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::error::IgvmErrorKind as K;

/// 4 KiB.
pub(crate) const PAGE_4K: u64 = 4096;
/// 2 MiB.
pub(crate) const PAGE_2M: u64 = 2 * 1024 * 1024;

/// igvm_defs 0.5 `IGVM_VHT_CORIM_DOCUMENT` (only defined there with feature `corim`).
pub const IGVM_VHT_CORIM_DOCUMENT: u32 = 0x104;
/// igvm_defs 0.5 `IGVM_VHT_CORIM_SIGNATURE` (only defined there with feature `corim`).
pub const IGVM_VHT_CORIM_SIGNATURE: u32 = 0x105;

/// igvm_defs 0.5 `IGVM_VHS_CORIM_DATA` (feature `corim` there): compat u32 @0, file_offset
/// u32 @4, size_bytes u32 @8, reserved u32 @C.
#[repr(C)]
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
struct CorimData {
    compatibility_mask: u32,
    file_offset: u32,
    size_bytes: u32,
    reserved: u32,
}

/// Architecture of the file (V1 files are X64; V2 `IGVM_FIXED_HEADER_V2::architecture`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Arch {
    /// x86-64.
    X64,
    /// AArch64.
    Aarch64,
}

/// One `IGVM_VHS_SUPPORTED_PLATFORM`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PlatformInfo {
    /// The single compatibility mask bit of this platform.
    pub compatibility_mask: u32,
    /// Platform type.
    pub platform_type: IgvmPlatformType,
    /// Highest VTL (0 or 2).
    pub highest_vtl: u8,
    /// GPA from which memory is host visible (0 = enlightened).
    pub shared_gpa_boundary: u64,
    /// Platform version (1).
    pub platform_version: u16,
}

/// `IgvmPageDataType` (validated to the four defined values).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PageDataType {
    /// Normal page data.
    Normal,
    /// SNP secrets page.
    Secrets,
    /// SNP CPUID page.
    CpuidData,
    /// SNP CPUID page with extended features (XF).
    CpuidXf,
}

/// `IgvmPageDataFlags` (reserved bits validated to be zero).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PageDataFlags {
    /// Bit 0: a 2 MiB page (GPA 2 MiB aligned).
    pub is_2mb_page: bool,
    /// Bit 1: import unmeasured.
    pub unmeasured: bool,
    /// Bit 2: assigned but host visible, not measured.
    pub shared: bool,
}

/// `IGVM_VHS_PARAMETER`: where a loader deposits a parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Parameter {
    /// Parameter area index.
    pub parameter_area_index: u32,
    /// Byte offset within the area.
    pub byte_offset: u32,
}

/// The file-data format of a VP context, decided by the platforms its mask names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum VpContextKind {
    /// SEV-SNP / SEV-ES: a 4 KiB VMSA page.
    Vmsa,
    /// NATIVE / SEV (x86-64): `IgvmNativeVpContextX64`, zero-padded to 4 KiB.
    NativeX64,
    /// VSM isolation: `VbsVpContextHeader` + registers.
    Vbs,
    /// Arm CCA: `IgvmVpContextAArch64Cca`, zero-padded to 4 KiB.
    Cca,
}

/// An `IGVM_VHS_SNP_ID_BLOCK`, borrowed (0x2B8 bytes, kept out of line so that `Header` stays
/// small). Fields are copied out on access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnpIdBlockRef<'a>(&'a [u8; 0x2B8]);

impl<'a> SnpIdBlockRef<'a> {
    /// The raw 0x2B8 body bytes.
    pub fn bytes(&self) -> &'a [u8; 0x2B8] {
        self.0
    }

    /// The whole structure, copied.
    pub fn get(&self) -> IGVM_VHS_SNP_ID_BLOCK {
        zerocopy::transmute!(*self.0)
    }

    /// Compatibility mask.
    pub fn compatibility_mask(&self) -> u32 {
        self.get().compatibility_mask
    }

    /// The expected launch digest.
    pub fn ld(&self) -> [u8; 48] {
        self.get().ld
    }
}

/// An `IGVM_VHS_VBS_MEASUREMENT`, borrowed (864 bytes). Fields are copied out on access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VbsMeasurementRef<'a>(&'a [u8; 864]);

impl<'a> VbsMeasurementRef<'a> {
    /// The raw 864 body bytes.
    pub fn bytes(&self) -> &'a [u8; 864] {
        self.0
    }

    /// The whole structure, copied.
    pub fn get(&self) -> IGVM_VHS_VBS_MEASUREMENT {
        zerocopy::transmute!(*self.0)
    }

    /// Compatibility mask.
    pub fn compatibility_mask(&self) -> u32 {
        self.get().compatibility_mask
    }
}

/// One validated variable header.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Header<'a> {
    /// 0x001 SUPPORTED_PLATFORM.
    SupportedPlatform(PlatformInfo),
    /// 0x101 GUEST_POLICY.
    GuestPolicy {
        /// Platform-specific policy (SNP policy, TDX policy).
        policy: u64,
        /// Compatibility mask.
        compatibility_mask: u32,
    },
    /// 0x102 RELOCATABLE_REGION.
    RelocatableRegion {
        /// Compatibility mask.
        compatibility_mask: u32,
        /// VP whose registers the flags apply to.
        vp_index: u16,
        /// VTL whose registers the flags apply to.
        vtl: u8,
        /// Flag bit 0: the region is VTL2.
        is_vtl2: bool,
        /// Flag bit 1: relocate RIP/PC.
        apply_rip_offset: bool,
        /// Flag bit 2: relocate GDTR.
        apply_gdtr_offset: bool,
        /// Relocation alignment (non-zero multiple of 4 KiB).
        relocation_alignment: u64,
        /// Base GPA.
        relocation_region_gpa: u64,
        /// Size (multiple of 4 KiB).
        relocation_region_size: u64,
        /// Lowest relocation base.
        minimum_relocation_gpa: u64,
        /// Highest relocation base.
        maximum_relocation_gpa: u64,
    },
    /// 0x103 PAGE_TABLE_RELOCATION_REGION.
    PageTableRelocationRegion {
        /// Compatibility mask.
        compatibility_mask: u32,
        /// VP whose paging state is described.
        vp_index: u16,
        /// VTL whose paging state is described.
        vtl: u8,
        /// Base GPA.
        gpa: u64,
        /// Size.
        size: u64,
        /// Bytes already used by the page table.
        used_size: u64,
    },
    /// 0x104 CORIM_DOCUMENT.
    CorimDocument {
        /// Compatibility mask.
        compatibility_mask: u32,
        /// The CBOR document (empty when file_offset is 0).
        data: &'a [u8],
    },
    /// 0x105 CORIM_SIGNATURE.
    CorimSignature {
        /// Compatibility mask.
        compatibility_mask: u32,
        /// The COSE_Sign1 signature (empty when file_offset is 0).
        data: &'a [u8],
    },
    /// 0x106 CCA_POLICY.
    CcaPolicy {
        /// Compatibility mask.
        compatibility_mask: u32,
        /// Attribute bits that must be 0.
        attributes_required_zeroes: u64,
        /// Attribute bits that must be 1.
        attributes_required_ones: u64,
        /// `CcaHashAlgorithm`.
        hash_algorithm: u8,
        /// `CcaLfaPolicy`.
        lfa_policy: u8,
    },
    /// 0x107 VERSION_STRING.
    VersionString(&'a str),
    /// 0x301 PARAMETER_AREA.
    ParameterArea {
        /// Size (non-zero multiple of 4 KiB).
        number_of_bytes: u64,
        /// Area index.
        parameter_area_index: u32,
        /// File offset of the initial contents (0 = zeros).
        file_offset: u32,
        /// Initial contents: empty, or exactly `number_of_bytes` bytes.
        initial_data: &'a [u8],
    },
    /// 0x302 PAGE_DATA.
    PageData {
        /// GPA (4 KiB aligned, 2 MiB for 2 MiB pages).
        gpa: u64,
        /// Compatibility mask.
        compatibility_mask: u32,
        /// Flags.
        flags: PageDataFlags,
        /// Data type.
        data_type: PageDataType,
        /// Absolute file offset of the data (0 = a page of zeros).
        file_offset: u32,
        /// The data: empty for a zero page, else 4096 file bytes for a 4 KiB page, or up to
        /// 2 MiB for a 2 MiB page whose data the file may cut short (the rest is zero).
        data: &'a [u8],
    },
    /// 0x303 PARAMETER_INSERT.
    ParameterInsert {
        /// GPA (4 KiB aligned).
        gpa: u64,
        /// Compatibility mask.
        compatibility_mask: u32,
        /// Area index.
        parameter_area_index: u32,
    },
    /// 0x304 VP_CONTEXT.
    VpContext {
        /// GPA (the VMSA page for SNP/SEV-ES; 0 otherwise).
        gpa: u64,
        /// Compatibility mask.
        compatibility_mask: u32,
        /// Absolute file offset of the context data.
        file_offset: u32,
        /// VP index.
        vp_index: u16,
        /// Data format.
        kind: VpContextKind,
        /// The context data: 4096 bytes for Vmsa/NativeX64/Cca, 4 + 32 × count for Vbs.
        data: &'a [u8],
    },
    /// 0x305 REQUIRED_MEMORY.
    RequiredMemory {
        /// GPA (4 KiB aligned).
        gpa: u64,
        /// Compatibility mask.
        compatibility_mask: u32,
        /// Size (multiple of 4 KiB).
        number_of_bytes: u32,
        /// Flag bit 0.
        vtl2_protectable: bool,
    },
    /// 0x307 VP_COUNT_PARAMETER (u32).
    VpCount(Parameter),
    /// 0x308 SRAT.
    Srat(Parameter),
    /// 0x309 MADT.
    Madt(Parameter),
    /// 0x30A MMIO_RANGES (`IGVM_VHS_MMIO_RANGES`, 32 bytes).
    MmioRanges(Parameter),
    /// 0x30B SNP_ID_BLOCK.
    SnpIdBlock(SnpIdBlockRef<'a>),
    /// 0x30C MEMORY_MAP (array of `IGVM_VHS_MEMORY_MAP_ENTRY`).
    MemoryMap(Parameter),
    /// 0x30D ERROR_RANGE.
    ErrorRange {
        /// GPA (4 KiB aligned).
        gpa: u64,
        /// Compatibility mask.
        compatibility_mask: u32,
        /// Size (non-zero multiple of 4 KiB).
        size_bytes: u32,
    },
    /// 0x30E COMMAND_LINE.
    CommandLine(Parameter),
    /// 0x30F SLIT.
    Slit(Parameter),
    /// 0x310 PPTT.
    Pptt(Parameter),
    /// 0x311 VBS_MEASUREMENT.
    VbsMeasurement(VbsMeasurementRef<'a>),
    /// 0x312 DEVICE_TREE.
    DeviceTree(Parameter),
    /// 0x313 ENVIRONMENT_INFO_PARAMETER (u32).
    EnvironmentInfo(Parameter),
    /// A type with the optional bit 31 set, skipped.
    Unknown {
        /// Raw type.
        typ: u32,
        /// Body (`length` bytes).
        body: &'a [u8],
    },
}

impl Header<'_> {
    /// The compatibility mask, for headers that have one.
    pub fn compatibility_mask(&self) -> Option<u32> {
        match *self {
            Header::SupportedPlatform(p) => Some(p.compatibility_mask),
            Header::GuestPolicy {
                compatibility_mask, ..
            }
            | Header::RelocatableRegion {
                compatibility_mask, ..
            }
            | Header::PageTableRelocationRegion {
                compatibility_mask, ..
            }
            | Header::CorimDocument {
                compatibility_mask, ..
            }
            | Header::CorimSignature {
                compatibility_mask, ..
            }
            | Header::CcaPolicy {
                compatibility_mask, ..
            }
            | Header::PageData {
                compatibility_mask, ..
            }
            | Header::ParameterInsert {
                compatibility_mask, ..
            }
            | Header::VpContext {
                compatibility_mask, ..
            }
            | Header::RequiredMemory {
                compatibility_mask, ..
            }
            | Header::ErrorRange {
                compatibility_mask, ..
            } => Some(compatibility_mask),
            Header::SnpIdBlock(b) => Some(b.compatibility_mask()),
            Header::VbsMeasurement(m) => Some(m.compatibility_mask()),
            Header::VersionString(_)
            | Header::ParameterArea { .. }
            | Header::VpCount(_)
            | Header::Srat(_)
            | Header::Madt(_)
            | Header::MmioRanges(_)
            | Header::MemoryMap(_)
            | Header::CommandLine(_)
            | Header::Slit(_)
            | Header::Pptt(_)
            | Header::DeviceTree(_)
            | Header::EnvironmentInfo(_)
            | Header::Unknown { .. } => None,
        }
    }

    /// The raw header type (igvm_defs 0.5 `IgvmVariableHeaderType`).
    pub fn type_code(&self) -> u32 {
        match *self {
            Header::SupportedPlatform(_) => 0x001,
            Header::GuestPolicy { .. } => 0x101,
            Header::RelocatableRegion { .. } => 0x102,
            Header::PageTableRelocationRegion { .. } => 0x103,
            Header::CorimDocument { .. } => IGVM_VHT_CORIM_DOCUMENT,
            Header::CorimSignature { .. } => IGVM_VHT_CORIM_SIGNATURE,
            Header::CcaPolicy { .. } => 0x106,
            Header::VersionString(_) => 0x107,
            Header::ParameterArea { .. } => 0x301,
            Header::PageData { .. } => 0x302,
            Header::ParameterInsert { .. } => 0x303,
            Header::VpContext { .. } => 0x304,
            Header::RequiredMemory { .. } => 0x305,
            Header::VpCount(_) => 0x307,
            Header::Srat(_) => 0x308,
            Header::Madt(_) => 0x309,
            Header::MmioRanges(_) => 0x30A,
            Header::SnpIdBlock(_) => 0x30B,
            Header::MemoryMap(_) => 0x30C,
            Header::ErrorRange { .. } => 0x30D,
            Header::CommandLine(_) => 0x30E,
            Header::Slit(_) => 0x30F,
            Header::Pptt(_) => 0x310,
            Header::VbsMeasurement(_) => 0x311,
            Header::DeviceTree(_) => 0x312,
            Header::EnvironmentInfo(_) => 0x313,
            Header::Unknown { typ, .. } => typ,
        }
    }

    /// Whether this header applies to a platform with mask `mask` (`header & mask != 0`, as
    /// QEMU and igvmmeasure test it); headers without a mask apply to every platform.
    pub fn applies_to(&self, mask: u32) -> bool {
        self.compatibility_mask().is_none_or(|m| m & mask != 0)
    }

    /// The parameter of a parameter-usage header (VP_COUNT, SRAT, ..., ENVIRONMENT_INFO).
    pub fn parameter(&self) -> Option<Parameter> {
        match *self {
            Header::VpCount(p)
            | Header::Srat(p)
            | Header::Madt(p)
            | Header::MmioRanges(p)
            | Header::MemoryMap(p)
            | Header::CommandLine(p)
            | Header::Slit(p)
            | Header::Pptt(p)
            | Header::DeviceTree(p)
            | Header::EnvironmentInfo(p) => Some(p),
            _ => None,
        }
    }
}

/// What decoding a header needs to know about the file. Small and `Copy`, so that the header
/// iterator can own one.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DecodeCtx<'a> {
    pub bytes: &'a [u8],
    /// Absolute offset of the file data section (variable_header_offset + size).
    pub data_start: u32,
    /// OR of every declared platform mask.
    pub declared: u32,
    /// Platform type per mask bit (valid where `declared` has the bit).
    pub types: [IgvmPlatformType; 32],
    pub arch: Arch,
}

/// Reads a wire struct from a body of exactly its size.
fn exact<S: FromBytes + KnownLayout + Immutable>(body: &[u8]) -> Result<S, K> {
    S::read_from_bytes(body).map_err(|_| K::BadLength {
        length: len_u32(body),
        expected: len_u32_of::<S>(),
    })
}

fn len_u32(b: &[u8]) -> u32 {
    u32::try_from(b.len()).unwrap_or(u32::MAX)
}

fn len_u32_of<S>() -> u32 {
    u32::try_from(core::mem::size_of::<S>()).unwrap_or(u32::MAX)
}

fn aligned(gpa: u64, align: u64) -> Result<(), K> {
    // `align` is a power of two.
    if gpa & align.wrapping_sub(1) != 0 {
        Err(K::MisalignedGpa { gpa, align })
    } else {
        Ok(())
    }
}

fn page_multiple(size: u64, allow_zero: bool) -> Result<(), K> {
    if size & (PAGE_4K - 1) != 0 || (size == 0 && !allow_zero) {
        Err(K::BadSize { size })
    } else {
        Ok(())
    }
}

fn no_overflow(gpa: u64, size: u64) -> Result<(), K> {
    match gpa.checked_add(size) {
        Some(_) => Ok(()),
        None => Err(K::GpaOverflow { gpa, size }),
    }
}

fn param(body: &[u8]) -> Result<Parameter, K> {
    let p: IGVM_VHS_PARAMETER = exact(body)?;
    Ok(Parameter {
        parameter_area_index: p.parameter_area_index,
        byte_offset: p.byte_offset,
    })
}

/// Platform types igvm_defs 0.5 defines.
pub(crate) fn known_platform(t: IgvmPlatformType) -> bool {
    matches!(
        t,
        IgvmPlatformType::NATIVE
            | IgvmPlatformType::VSM_ISOLATION
            | IgvmPlatformType::SEV_SNP
            | IgvmPlatformType::TDX
            | IgvmPlatformType::SEV
            | IgvmPlatformType::SEV_ES
            | IgvmPlatformType::CCA
    )
}

impl<'a> DecodeCtx<'a> {
    /// A compatibility mask must be non-zero and name only declared platforms.
    fn mask(&self, mask: u32) -> Result<u32, K> {
        if mask == 0 || mask & !self.declared != 0 {
            Err(K::BadCompatibilityMask {
                mask,
                declared: self.declared,
            })
        } else {
            Ok(mask)
        }
    }

    /// Every platform `mask` names must satisfy `ok`.
    fn mask_only(&self, mask: u32, ok: impl Fn(IgvmPlatformType) -> bool) -> Result<(), K> {
        let mut m = mask;
        while m != 0 {
            let bit = m.trailing_zeros();
            m &= m.wrapping_sub(1);
            let t = self
                .types
                .get(bit as usize)
                .copied()
                .unwrap_or(IgvmPlatformType(0xFF));
            if !ok(t) {
                return Err(K::WrongPlatform { mask });
            }
        }
        Ok(())
    }

    /// File data at absolute `file_offset`: `size` bytes, all inside the file data section.
    pub(crate) fn data(&self, file_offset: u32, size: u64) -> Result<&'a [u8], K> {
        let err = K::FileDataOutOfRange { file_offset, size };
        if file_offset < self.data_start {
            return Err(err);
        }
        let start = file_offset as usize;
        let end = usize::try_from(size)
            .ok()
            .and_then(|s| start.checked_add(s))
            .ok_or(err)?;
        self.bytes.get(start..end).ok_or(err)
    }

    /// Like [`Self::data`], but the file may end before `size` bytes (at least one byte must
    /// be there): the rest is implicitly zero.
    fn data_upto(&self, file_offset: u32, size: u64) -> Result<&'a [u8], K> {
        let err = K::FileDataOutOfRange { file_offset, size };
        if file_offset < self.data_start || file_offset as usize >= self.bytes.len() {
            return Err(err);
        }
        let start = file_offset as usize;
        let end = usize::try_from(size)
            .ok()
            .and_then(|s| start.checked_add(s))
            .ok_or(err)?
            .min(self.bytes.len());
        self.bytes.get(start..end).ok_or(err)
    }

    /// The VP context format of a mask: every platform it names must share one.
    fn vp_kind(&self, mask: u32) -> Result<VpContextKind, K> {
        let mut kind = None;
        let mut m = mask;
        while m != 0 {
            let bit = m.trailing_zeros();
            m &= m.wrapping_sub(1);
            let t = self
                .types
                .get(bit as usize)
                .copied()
                .unwrap_or(IgvmPlatformType(0xFF));
            let k = match t {
                IgvmPlatformType::SEV_SNP | IgvmPlatformType::SEV_ES => VpContextKind::Vmsa,
                IgvmPlatformType::NATIVE | IgvmPlatformType::SEV if self.arch == Arch::X64 => {
                    VpContextKind::NativeX64
                }
                IgvmPlatformType::VSM_ISOLATION => VpContextKind::Vbs,
                IgvmPlatformType::CCA => VpContextKind::Cca,
                // TDX has an architectural reset state: igvm_defs 0.5 `IGVM_VHS_VP_CONTEXT`
                // "For architectures such as Intel TDX ... this structure is invalid".
                _ => return Err(K::BadVpContextPlatform { mask }),
            };
            match kind {
                None => kind = Some(k),
                Some(prev) if prev == k => {}
                Some(_) => return Err(K::BadVpContextPlatform { mask }),
            }
        }
        kind.ok_or(K::BadVpContextPlatform { mask })
    }

    /// Decodes and validates one header body (everything that needs no other header).
    pub(crate) fn decode(&self, typ: u32, body: &'a [u8]) -> Result<Header<'a>, K> {
        if typ & igvm_defs::IGVM_VHT_OPTIONAL_BIT != 0 {
            // igvm_defs 0.5 `IGVM_VHT_OPTIONAL_BIT`: a loader may skip the structure. We skip
            // every optional-marked header, known base type or not.
            return Ok(Header::Unknown { typ, body });
        }
        Ok(match T(typ) {
            T::IGVM_VHT_SUPPORTED_PLATFORM => {
                let p: IGVM_VHS_SUPPORTED_PLATFORM = exact(body)?;
                Header::SupportedPlatform(self.platform(p)?)
            }
            T::IGVM_VHT_GUEST_POLICY => {
                let p: IGVM_VHS_GUEST_POLICY = exact(body)?;
                if p.reserved != 0 {
                    return Err(K::ReservedNotZero { field: "reserved" });
                }
                Header::GuestPolicy {
                    policy: p.policy,
                    compatibility_mask: self.mask(p.compatibility_mask)?,
                }
            }
            T::IGVM_VHT_RELOCATABLE_REGION => self.relocatable(exact(body)?)?,
            T::IGVM_VHT_PAGE_TABLE_RELOCATION_REGION => {
                let p: IGVM_VHS_PAGE_TABLE_RELOCATION = exact(body)?;
                if p.reserved != 0 {
                    return Err(K::ReservedNotZero { field: "reserved" });
                }
                if p.vtl > 2 {
                    return Err(K::BadVtl { vtl: p.vtl });
                }
                aligned(p.gpa, PAGE_4K)?;
                page_multiple(p.size, false)?;
                page_multiple(p.used_size, true)?;
                no_overflow(p.gpa, p.size)?;
                if p.used_size > p.size {
                    return Err(K::InvalidField {
                        field: "used_size",
                        value: p.used_size,
                    });
                }
                Header::PageTableRelocationRegion {
                    compatibility_mask: self.mask(p.compatibility_mask)?,
                    vp_index: p.vp_index,
                    vtl: p.vtl,
                    gpa: p.gpa,
                    size: p.size,
                    used_size: p.used_size,
                }
            }
            t if t.0 == IGVM_VHT_CORIM_DOCUMENT || t.0 == IGVM_VHT_CORIM_SIGNATURE => {
                let c: CorimData = exact(body)?;
                if c.reserved != 0 {
                    return Err(K::ReservedNotZero { field: "reserved" });
                }
                let compatibility_mask = self.mask(c.compatibility_mask)?;
                // igvm 0.5: file_offset 0 = no data.
                let data = if c.file_offset == 0 {
                    if c.size_bytes != 0 {
                        return Err(K::FileDataOutOfRange {
                            file_offset: 0,
                            size: c.size_bytes.into(),
                        });
                    }
                    &[][..]
                } else {
                    self.data(c.file_offset, c.size_bytes.into())?
                };
                if t.0 == IGVM_VHT_CORIM_DOCUMENT {
                    Header::CorimDocument {
                        compatibility_mask,
                        data,
                    }
                } else {
                    Header::CorimSignature {
                        compatibility_mask,
                        data,
                    }
                }
            }
            T::IGVM_VHT_CCA_POLICY => {
                let p: IGVM_VHS_CCA_POLICY = exact(body)?;
                if p.reserved != 0 || p.reserved2 != [0; 6] {
                    return Err(K::ReservedNotZero { field: "reserved" });
                }
                if self.arch != Arch::Aarch64 {
                    return Err(K::WrongArchitecture);
                }
                let compatibility_mask = self.mask(p.compatibility_mask)?;
                self.mask_only(compatibility_mask, |t| t == IgvmPlatformType::CCA)?;
                if p.attributes_required_zeroes & p.attributes_required_ones != 0 {
                    return Err(K::InvalidField {
                        field: "attributes (required zeroes & ones)",
                        value: p.attributes_required_zeroes & p.attributes_required_ones,
                    });
                }
                Header::CcaPolicy {
                    compatibility_mask,
                    attributes_required_zeroes: p.attributes_required_zeroes,
                    attributes_required_ones: p.attributes_required_ones,
                    hash_algorithm: p.hash_algorithm.0,
                    lfa_policy: p.lfa_policy.0,
                }
            }
            T::IGVM_VHT_VERSION_STRING => {
                Header::VersionString(core::str::from_utf8(body).map_err(|_| K::NotUtf8)?)
            }
            T::IGVM_VHT_PARAMETER_AREA => {
                let p: IGVM_VHS_PARAMETER_AREA = exact(body)?;
                page_multiple(p.number_of_bytes, false)?;
                let initial_data = if p.file_offset == 0 {
                    &[][..]
                } else {
                    self.data(p.file_offset, p.number_of_bytes)?
                };
                Header::ParameterArea {
                    number_of_bytes: p.number_of_bytes,
                    parameter_area_index: p.parameter_area_index,
                    file_offset: p.file_offset,
                    initial_data,
                }
            }
            T::IGVM_VHT_PAGE_DATA => self.page_data(exact(body)?)?,
            T::IGVM_VHT_PARAMETER_INSERT => {
                let p: IGVM_VHS_PARAMETER_INSERT = exact(body)?;
                aligned(p.gpa, PAGE_4K)?;
                Header::ParameterInsert {
                    gpa: p.gpa,
                    compatibility_mask: self.mask(p.compatibility_mask)?,
                    parameter_area_index: p.parameter_area_index,
                }
            }
            T::IGVM_VHT_VP_CONTEXT => self.vp_context(body)?,
            T::IGVM_VHT_REQUIRED_MEMORY => {
                let p: IGVM_VHS_REQUIRED_MEMORY = exact(body)?;
                if p.reserved != 0 {
                    return Err(K::ReservedNotZero { field: "reserved" });
                }
                let flags = p.flags.into_bits();
                if flags & !1 != 0 {
                    return Err(K::ReservedFlags { flags });
                }
                aligned(p.gpa, PAGE_4K)?;
                page_multiple(p.number_of_bytes.into(), false)?;
                no_overflow(p.gpa, p.number_of_bytes.into())?;
                Header::RequiredMemory {
                    gpa: p.gpa,
                    compatibility_mask: self.mask(p.compatibility_mask)?,
                    number_of_bytes: p.number_of_bytes,
                    vtl2_protectable: flags & 1 != 0,
                }
            }
            T::IGVM_VHT_VP_COUNT_PARAMETER => Header::VpCount(param(body)?),
            T::IGVM_VHT_SRAT => Header::Srat(param(body)?),
            T::IGVM_VHT_MADT => Header::Madt(param(body)?),
            T::IGVM_VHT_MMIO_RANGES => Header::MmioRanges(param(body)?),
            T::IGVM_VHT_SNP_ID_BLOCK => self.id_block(body)?,
            T::IGVM_VHT_MEMORY_MAP => Header::MemoryMap(param(body)?),
            T::IGVM_VHT_ERROR_RANGE => {
                let p: IGVM_VHS_ERROR_RANGE = exact(body)?;
                aligned(p.gpa, PAGE_4K)?;
                page_multiple(p.size_bytes.into(), false)?;
                no_overflow(p.gpa, p.size_bytes.into())?;
                Header::ErrorRange {
                    gpa: p.gpa,
                    compatibility_mask: self.mask(p.compatibility_mask)?,
                    size_bytes: p.size_bytes,
                }
            }
            T::IGVM_VHT_COMMAND_LINE => Header::CommandLine(param(body)?),
            T::IGVM_VHT_SLIT => Header::Slit(param(body)?),
            T::IGVM_VHT_PPTT => Header::Pptt(param(body)?),
            T::IGVM_VHT_VBS_MEASUREMENT => {
                let arr = <&[u8; 864]>::try_from(body).map_err(|_| K::BadLength {
                    length: len_u32(body),
                    expected: 864,
                })?;
                let m = VbsMeasurementRef(arr);
                self.mask(m.compatibility_mask())?;
                Header::VbsMeasurement(m)
            }
            T::IGVM_VHT_DEVICE_TREE => Header::DeviceTree(param(body)?),
            T::IGVM_VHT_ENVIRONMENT_INFO_PARAMETER => Header::EnvironmentInfo(param(body)?),
            T::INVALID | T::RESERVED_DO_NOT_USE => return Err(K::ReservedType),
            _ => return Err(K::UnknownType),
        })
    }

    fn platform(&self, p: IGVM_VHS_SUPPORTED_PLATFORM) -> Result<PlatformInfo, K> {
        let t = p.platform_type;
        if p.compatibility_mask.count_ones() != 1 {
            return Err(K::PlatformMaskNotOneBit {
                mask: p.compatibility_mask,
            });
        }
        if p.highest_vtl != 0 && p.highest_vtl != 2 {
            return Err(K::BadVtl { vtl: p.highest_vtl });
        }
        if !known_platform(t) {
            return Err(K::UnknownPlatformType { platform_type: t.0 });
        }
        // Every platform version igvm_defs 0.5 defines is 1.
        if p.platform_version != 1 {
            return Err(K::BadPlatformVersion {
                version: p.platform_version,
            });
        }
        if matches!(
            t,
            IgvmPlatformType::NATIVE | IgvmPlatformType::VSM_ISOLATION
        ) && p.shared_gpa_boundary != 0
        {
            return Err(K::SharedGpaBoundaryNotZero {
                boundary: p.shared_gpa_boundary,
            });
        }
        // igvm 0.5 `validate_platform_headers`: VSM on both, CCA on AArch64, others on X64.
        let arch_ok = match t {
            IgvmPlatformType::VSM_ISOLATION => true,
            IgvmPlatformType::CCA => self.arch == Arch::Aarch64,
            _ => self.arch == Arch::X64,
        };
        if !arch_ok {
            return Err(K::PlatformArchMismatch { platform_type: t.0 });
        }
        Ok(PlatformInfo {
            compatibility_mask: p.compatibility_mask,
            platform_type: t,
            highest_vtl: p.highest_vtl,
            shared_gpa_boundary: p.shared_gpa_boundary,
            platform_version: p.platform_version,
        })
    }

    fn relocatable(&self, p: IGVM_VHS_RELOCATABLE_REGION) -> Result<Header<'a>, K> {
        if p.flags & !7 != 0 {
            return Err(K::ReservedFlags {
                flags: p.flags.into(),
            });
        }
        if p.vtl > 2 {
            return Err(K::BadVtl { vtl: p.vtl });
        }
        page_multiple(p.relocation_region_size, false)?;
        let align = p.relocation_alignment;
        page_multiple(align, false)?;
        for (field, value) in [
            ("relocation_region_gpa", p.relocation_region_gpa),
            ("minimum_relocation_gpa", p.minimum_relocation_gpa),
            ("maximum_relocation_gpa", p.maximum_relocation_gpa),
        ] {
            // `align` is non-zero (checked above).
            if value.checked_rem(align) != Some(0) {
                return Err(K::InvalidField { field, value });
            }
        }
        no_overflow(p.relocation_region_gpa, p.relocation_region_size)?;
        if p.minimum_relocation_gpa > p.maximum_relocation_gpa {
            return Err(K::InvalidField {
                field: "minimum_relocation_gpa",
                value: p.minimum_relocation_gpa,
            });
        }
        Ok(Header::RelocatableRegion {
            compatibility_mask: self.mask(p.compatibility_mask)?,
            vp_index: p.vp_index,
            vtl: p.vtl,
            is_vtl2: p.flags & igvm_defs::IGVM_VHF_RELOCATABLE_REGION_IS_VTL2 != 0,
            apply_rip_offset: p.flags & igvm_defs::IGVM_VHF_RELOCATABLE_REGION_APPLY_RIP != 0,
            apply_gdtr_offset: p.flags & igvm_defs::IGVM_VHF_RELOCATABLE_REGION_APPLY_GDTR != 0,
            relocation_alignment: align,
            relocation_region_gpa: p.relocation_region_gpa,
            relocation_region_size: p.relocation_region_size,
            minimum_relocation_gpa: p.minimum_relocation_gpa,
            maximum_relocation_gpa: p.maximum_relocation_gpa,
        })
    }

    fn page_data(&self, p: IGVM_VHS_PAGE_DATA) -> Result<Header<'a>, K> {
        if p.reserved != 0 {
            return Err(K::ReservedNotZero { field: "reserved" });
        }
        let bits = p.flags.into_bits();
        if bits & !7 != 0 {
            return Err(K::ReservedFlags { flags: bits });
        }
        let flags = PageDataFlags {
            is_2mb_page: bits & 1 != 0,
            unmeasured: bits & 2 != 0,
            shared: bits & 4 != 0,
        };
        let data_type = match p.data_type.0 {
            0 => PageDataType::Normal,
            1 => PageDataType::Secrets,
            2 => PageDataType::CpuidData,
            3 => PageDataType::CpuidXf,
            data_type => return Err(K::BadPageDataType { data_type }),
        };
        let page = if flags.is_2mb_page { PAGE_2M } else { PAGE_4K };
        aligned(p.gpa, page)?;
        no_overflow(p.gpa, page)?;
        let compatibility_mask = self.mask(p.compatibility_mask)?;
        let data = if p.file_offset == 0 {
            &[][..]
        } else if flags.is_2mb_page {
            // Writers disagree on 2 MiB page data (igvm 0.5 writes and reads 4 KiB of it):
            // take up to 2 MiB, the file may end earlier (the rest is zero).
            self.data_upto(p.file_offset, page)?
        } else {
            // igvm 0.5 reads exactly 4 KiB; its writer and svsm igvmbld write whole pages.
            self.data(p.file_offset, page)?
        };
        Ok(Header::PageData {
            gpa: p.gpa,
            compatibility_mask,
            flags,
            data_type,
            file_offset: p.file_offset,
            data,
        })
    }

    fn vp_context(&self, body: &'a [u8]) -> Result<Header<'a>, K> {
        // The body is 0x14 bytes (igvm 0.5, coconut-svsm igvmbld's `FIELD_OFFSET(..,
        // padding)`); a writer using sizeof of a C struct with a u64 first member would
        // write 0x18, so accept that with a zero tail.
        let p = match body.len() {
            0x14 => exact::<IGVM_VHS_VP_CONTEXT>(body)?,
            0x18 => {
                let (p, tail) =
                    IGVM_VHS_VP_CONTEXT::read_from_prefix(body).map_err(|_| K::BadLength {
                        length: 0x18,
                        expected: 0x14,
                    })?;
                if tail.iter().any(|&b| b != 0) {
                    return Err(K::ReservedNotZero { field: "padding" });
                }
                p
            }
            _ => {
                return Err(K::BadLength {
                    length: len_u32(body),
                    expected: 0x14,
                })
            }
        };
        if p.reserved != 0 {
            return Err(K::ReservedNotZero { field: "reserved" });
        }
        let gpa = p.gpa.get();
        let compatibility_mask = self.mask(p.compatibility_mask)?;
        let kind = self.vp_kind(compatibility_mask)?;
        let data = match kind {
            VpContextKind::Vmsa => {
                aligned(gpa, PAGE_4K)?;
                no_overflow(gpa, PAGE_4K)?;
                self.data(p.file_offset, PAGE_4K)?
            }
            VpContextKind::NativeX64 => {
                zero_gpa(gpa)?;
                let data = self.data(p.file_offset, PAGE_4K)?;
                let (ctx, rest) = IgvmNativeVpContextX64::read_from_prefix(data)
                    .map_err(|_| K::BadVpContext { reason: "short" })?;
                if rest.iter().any(|&b| b != 0) {
                    return Err(K::BadVpContext {
                        reason: "bytes after IgvmNativeVpContextX64 are not zero",
                    });
                }
                if ctx.reserved != [0; 2] {
                    return Err(K::ReservedNotZero { field: "reserved" });
                }
                // igvm_defs 0.5 `IgvmNativeVpContextX64`: "Bits 11:8 must be zero".
                if ctx.code_attributes & 0x0F00 != 0 || ctx.data_attributes & 0x0F00 != 0 {
                    return Err(K::BadVpContext {
                        reason: "segment attribute bits 11:8 are not zero",
                    });
                }
                data
            }
            VpContextKind::Cca => {
                let data = self.data(p.file_offset, PAGE_4K)?;
                let (_, rest) = IgvmVpContextAArch64Cca::read_from_prefix(data)
                    .map_err(|_| K::BadVpContext { reason: "short" })?;
                if rest.iter().any(|&b| b != 0) {
                    return Err(K::BadVpContext {
                        reason: "bytes after IgvmVpContextAArch64Cca are not zero",
                    });
                }
                data
            }
            VpContextKind::Vbs => {
                zero_gpa(gpa)?;
                self.vbs_context(p.file_offset)?
            }
        };
        Ok(Header::VpContext {
            gpa,
            compatibility_mask,
            file_offset: p.file_offset,
            vp_index: p.vp_index,
            kind,
            data,
        })
    }

    /// `VbsVpContextHeader { register_count }` + `register_count` × `VbsVpContextRegister`,
    /// all for one VTL (igvm 0.5 expects a single VTL per context).
    fn vbs_context(&self, file_offset: u32) -> Result<&'a [u8], K> {
        let head = self.data(file_offset, 4)?;
        let count = u32::from_le_bytes(
            <[u8; 4]>::try_from(head).map_err(|_| K::BadVpContext { reason: "short" })?,
        );
        if count == 0 {
            return Err(K::BadVpContext {
                reason: "no registers",
            });
        }
        let size = u64::from(count)
            .checked_mul(32)
            .and_then(|s| s.checked_add(4))
            .ok_or(K::BadVpContext {
                reason: "register count overflows",
            })?;
        let data = self.data(file_offset, size)?;
        let regs = data.get(4..).unwrap_or(&[]);
        let mut vtl = None;
        for chunk in regs.chunks_exact(32) {
            let r = VbsVpContextRegister::read_from_bytes(chunk)
                .map_err(|_| K::BadVpContext { reason: "short" })?;
            if r.mbz != [0; 11] {
                return Err(K::ReservedNotZero { field: "mbz" });
            }
            if r.vtl > 2 {
                return Err(K::BadVtl { vtl: r.vtl });
            }
            match vtl {
                None => vtl = Some(r.vtl),
                Some(v) if v == r.vtl => {}
                Some(_) => {
                    return Err(K::BadVpContext {
                        reason: "registers for more than one VTL",
                    })
                }
            }
        }
        Ok(data)
    }

    fn id_block(&self, body: &'a [u8]) -> Result<Header<'a>, K> {
        let arr = <&[u8; 0x2B8]>::try_from(body).map_err(|_| K::BadLength {
            length: len_u32(body),
            expected: 0x2B8,
        })?;
        let r = SnpIdBlockRef(arr);
        let b = r.get();
        let mask = self.mask(b.compatibility_mask)?;
        self.mask_only(mask, |t| t == IgvmPlatformType::SEV_SNP)?;
        if b.reserved != [0; 3] {
            return Err(K::ReservedNotZero { field: "reserved" });
        }
        if b.id_public_key.reserved != 0 || b.author_public_key.reserved != 0 {
            return Err(K::ReservedNotZero {
                field: "public key reserved",
            });
        }
        match b.author_key_enabled {
            0 => {
                // igvm_defs 0.5: "Otherwise, the author key fields must be zero."
                if b.author_key_signature.as_bytes().iter().any(|&x| x != 0)
                    || b.author_public_key.as_bytes().iter().any(|&x| x != 0)
                {
                    return Err(K::ReservedNotZero {
                        field: "author key (author_key_enabled is 0)",
                    });
                }
            }
            1 => {}
            v => {
                return Err(K::InvalidField {
                    field: "author_key_enabled",
                    value: v.into(),
                })
            }
        }
        Ok(Header::SnpIdBlock(r))
    }
}

fn zero_gpa(gpa: u64) -> Result<(), K> {
    if gpa != 0 {
        Err(K::VpContextGpaNotZero { gpa })
    } else {
        Ok(())
    }
}
