//! IGVM parsing and validation (on top of `igvm_defs`), allocation-free, from a `&[u8]`.
//!
//! [`IgvmFile::parse`] checks the whole file once: the fixed header (versions 1 and 2), the
//! CRC-32, the variable header framing and section order, every header body (exact lengths,
//! reserved fields and flag bits, GPA alignment and overflow, compatibility masks, file data
//! ranges, VP context formats) and the rules between headers (platforms unique, parameter
//! areas declared before use and inserted once, one VP context per VP and platform, one
//! policy / ID block / CoRIM document per platform, relocation regions disjoint). After that,
//! [`IgvmFile::headers`] streams typed, borrowed [`Header`]s in file order.
//!
//! Format facts: igvm_defs 0.5 `src/lib.rs`; spec notes `../shared/spec/igvm-snp.md` §1.
//! Where real writers differ from the igvm 0.5 parser we follow the writers (see each item):
//! - an empty file data section is fine (igvm rejects `voff + vsize == len`);
//! - VERSION_STRING and every header type carrying the optional bit 31 are accepted (the
//!   latter skipped as [`Header::Unknown`]);
//! - VP_CONTEXT bodies of 0x14 (igvm, svsm igvmbld) or 0x18 bytes (zero tail);
//! - a VP context may be anywhere among the directives (igvm-wrap writes the VMSA before
//!   the page data of other platforms);
//! - a 2 MiB PAGE_DATA takes up to 2 MiB of file data (igvm reads 4 KiB), shorter at the end
//!   of the file;
//! - a VP context mask may name several platforms that share a context format.
//!
//! Stricter than igvm 0.5: compatibility masks must name only declared platforms, reserved
//! flag bits must be clear, file offsets must point into the file data section, parameters
//! must fit in their area, a file has at most one VP context per (VP, platform).
//! [`IgvmFile::check_page_layout`] (feature `alloc`) rejects overlapping imports.
//!
//! Nothing here panics or overflows on any input: the module denies indexing, unchecked
//! arithmetic and `unwrap` (clippy), and the fuzz target `fuzz/fuzz_targets/parse.rs` checks it.
#![deny(
    clippy::arithmetic_side_effects,
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

mod error;
mod header;
#[cfg(feature = "alloc")]
mod layout;
#[cfg(test)]
mod tests;

use core::fmt;

use igvm_defs::{IgvmPlatformType, IGVM_FIXED_HEADER, IGVM_FIXED_HEADER_V2};
use zerocopy::FromBytes;

pub use error::{type_name, IgvmError, IgvmErrorKind, Section};
pub use header::{
    Arch, Header, PageDataFlags, PageDataType, Parameter, PlatformInfo, SnpIdBlockRef,
    VbsMeasurementRef, VpContextKind, IGVM_VHT_CORIM_DOCUMENT, IGVM_VHT_CORIM_SIGNATURE,
};

use error::IgvmErrorKind as K;
use header::DecodeCtx;

/// At most this many parameter areas per file (tracked without allocation).
pub const MAX_PARAMETER_AREAS: usize = 64;
/// At most this many distinct VP indices with a VP context per file.
pub const MAX_VP_INDICES: usize = 1024;
/// At most this many relocation regions (RELOCATABLE_REGION + PAGE_TABLE_RELOCATION).
pub const MAX_RELOCATION_REGIONS: usize = 64;

/// A parsed and validated IGVM file, borrowing the file bytes.
#[derive(Clone)]
pub struct IgvmFile<'a> {
    ctx: DecodeCtx<'a>,
    version: u32,
    platforms: heapless::Vec<PlatformInfo, 8>,
    vh_start: u32,
    vh_end: u32,
    header_count: u32,
}

impl fmt::Debug for IgvmFile<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IgvmFile")
            .field("len", &self.ctx.bytes.len())
            .field("version", &self.version)
            .field("arch", &self.ctx.arch)
            .field("platforms", &self.platforms)
            .field("header_count", &self.header_count)
            .finish()
    }
}

/// One header with its place in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeaderRef<'a> {
    /// 0-based index among the variable headers.
    pub index: u32,
    /// Absolute file offset of the header's type field.
    pub offset: u32,
    /// The header.
    pub header: Header<'a>,
}

/// Iterator over the variable headers of a parsed file, in file order.
#[derive(Clone)]
pub struct Headers<'a> {
    ctx: DecodeCtx<'a>,
    pos: u32,
    end: u32,
    index: u32,
}

impl fmt::Debug for Headers<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Headers")
            .field("pos", &self.pos)
            .field("end", &self.end)
            .field("index", &self.index)
            .finish()
    }
}

/// One type-length-value entry of the variable header region.
struct Tlv<'a> {
    typ: u32,
    body: &'a [u8],
    /// 8 + align8(length): where the next entry starts.
    advance: u32,
}

/// Reads the entry at `pos` of a region ending at `end` (igvm_defs 0.5
/// `IGVM_VHS_VARIABLE_HEADER`: the next entry starts at the 8-aligned end of the body).
fn tlv(bytes: &[u8], pos: u32, end: u32) -> Result<Tlv<'_>, K> {
    let left = end.saturating_sub(pos);
    let p = pos as usize;
    let head = bytes
        .get(p..p.saturating_add(8))
        .filter(|_| left >= 8)
        .ok_or(K::Truncated { needed: 8, left })?;
    let word = |i: usize| {
        head.get(i..i.saturating_add(4))
            .and_then(|w| <[u8; 4]>::try_from(w).ok())
            .map(u32::from_le_bytes)
            .unwrap_or(0)
    };
    let typ = word(0);
    let length = word(4);
    let needed = u64::from(length).saturating_add(7) & !7;
    let needed = needed.saturating_add(8);
    if needed > u64::from(left) {
        return Err(K::Truncated { needed, left });
    }
    let body_start = p.saturating_add(8);
    let body = bytes
        .get(body_start..body_start.saturating_add(length as usize))
        .ok_or(K::Truncated { needed, left })?;
    Ok(Tlv {
        typ,
        body,
        advance: u32::try_from(needed).unwrap_or(u32::MAX),
    })
}

impl<'a> Iterator for Headers<'a> {
    type Item = HeaderRef<'a>;

    fn next(&mut self) -> Option<HeaderRef<'a>> {
        if self.pos >= self.end {
            return None;
        }
        // The region was fully validated by `IgvmFile::parse` with the same decoder, so
        // neither step can fail here; if one did, the iteration just ends.
        let decoded = tlv(self.ctx.bytes, self.pos, self.end)
            .and_then(|t| Ok((t.advance, self.ctx.decode(t.typ, t.body)?)));
        match decoded {
            Ok((advance, header)) => {
                let item = HeaderRef {
                    index: self.index,
                    offset: self.pos,
                    header,
                };
                self.pos = self.pos.saturating_add(advance);
                self.index = self.index.saturating_add(1);
                Some(item)
            }
            Err(_) => {
                self.pos = self.end;
                None
            }
        }
    }
}

#[derive(Clone, Copy)]
struct Area {
    index: u32,
    size: u64,
    inserted: bool,
}

#[derive(Clone, Copy)]
struct Region {
    mask: u32,
    start: u64,
    /// Exclusive; `start + size` was checked not to overflow.
    end: u64,
    header: u32,
    page_table: bool,
}

/// The rules between headers, checked while walking the region once.
#[derive(Default)]
struct Rules {
    policy: u32,
    cca_policy: u32,
    page_table_reloc: u32,
    corim_doc: u32,
    corim_sig: u32,
    id_block: u32,
    version_string: bool,
    areas: heapless::Vec<Area, MAX_PARAMETER_AREAS>,
    /// (VP index, OR of the platform masks that have a context for it).
    vps: heapless::Vec<(u16, u32), MAX_VP_INDICES>,
    regions: heapless::Vec<Region, MAX_RELOCATION_REGIONS>,
}

/// Marks `mask` bits in `seen`; fails if one was already there.
fn once(seen: &mut u32, mask: u32) -> Result<(), K> {
    if *seen & mask != 0 {
        return Err(K::Duplicate { mask: *seen & mask });
    }
    *seen |= mask;
    Ok(())
}

impl Rules {
    fn area(&mut self, index: u32) -> Result<&mut Area, K> {
        self.areas
            .iter_mut()
            .find(|a| a.index == index)
            .ok_or(K::ParameterAreaUndeclared { index })
    }

    fn region(&mut self, r: Region) -> Result<(), K> {
        if let Some(o) = self
            .regions
            .iter()
            .find(|o| o.mask & r.mask != 0 && o.start < r.end && r.start < o.end)
        {
            return Err(K::RelocationOverlap { other: o.header });
        }
        self.regions
            .push(r)
            .map_err(|_| K::TooManyRelocationRegions {
                limit: MAX_RELOCATION_REGIONS as u32,
            })
    }

    fn apply(&mut self, h: &Header<'_>, index: u32) -> Result<(), K> {
        match *h {
            Header::GuestPolicy {
                compatibility_mask, ..
            } => once(&mut self.policy, compatibility_mask),
            Header::CcaPolicy {
                compatibility_mask, ..
            } => once(&mut self.cca_policy, compatibility_mask),
            Header::CorimDocument {
                compatibility_mask, ..
            } => once(&mut self.corim_doc, compatibility_mask),
            Header::CorimSignature {
                compatibility_mask, ..
            } => {
                // igvm 0.5 `validate_initialization_headers`: the document comes first.
                let missing = compatibility_mask & !self.corim_doc;
                if missing != 0 {
                    return Err(K::CorimSignatureWithoutDocument { mask: missing });
                }
                once(&mut self.corim_sig, compatibility_mask)
            }
            Header::VersionString(_) => {
                // igvm_defs 0.5: "There may be at most one such header in the file."
                if self.version_string {
                    return Err(K::Duplicate { mask: 0 });
                }
                self.version_string = true;
                Ok(())
            }
            Header::SnpIdBlock(b) => once(&mut self.id_block, b.compatibility_mask()),
            Header::RelocatableRegion {
                compatibility_mask,
                relocation_region_gpa,
                relocation_region_size,
                ..
            } => self.region(Region {
                mask: compatibility_mask,
                start: relocation_region_gpa,
                end: relocation_region_gpa.saturating_add(relocation_region_size),
                header: index,
                page_table: false,
            }),
            Header::PageTableRelocationRegion {
                compatibility_mask,
                gpa,
                size,
                ..
            } => {
                // igvm 0.5: one page table relocation region per platform.
                once(&mut self.page_table_reloc, compatibility_mask)?;
                self.region(Region {
                    mask: compatibility_mask,
                    start: gpa,
                    end: gpa.saturating_add(size),
                    header: index,
                    page_table: true,
                })
            }
            Header::ParameterArea {
                number_of_bytes,
                parameter_area_index,
                ..
            } => {
                if self.areas.iter().any(|a| a.index == parameter_area_index) {
                    return Err(K::ParameterAreaRedeclared {
                        index: parameter_area_index,
                    });
                }
                self.areas
                    .push(Area {
                        index: parameter_area_index,
                        size: number_of_bytes,
                        inserted: false,
                    })
                    .map_err(|_| K::TooManyParameterAreas {
                        limit: MAX_PARAMETER_AREAS as u32,
                    })
            }
            Header::ParameterInsert {
                gpa,
                compatibility_mask,
                parameter_area_index,
            } => {
                let area = self.area(parameter_area_index)?;
                if area.inserted {
                    return Err(K::ParameterAreaAlreadyInserted {
                        index: parameter_area_index,
                    });
                }
                area.inserted = true;
                let size = area.size;
                if gpa.checked_add(size).is_none() {
                    return Err(K::GpaOverflow { gpa, size });
                }
                // igvm_defs 0.5 `IGVM_VHS_PAGE_TABLE_RELOCATION`: no parameter insert in the
                // page table region.
                if self.regions.iter().any(|r| {
                    r.page_table
                        && r.mask & compatibility_mask != 0
                        && gpa >= r.start
                        && gpa < r.end
                }) {
                    return Err(K::InsertInsidePageTableRegion { gpa });
                }
                Ok(())
            }
            Header::VpContext {
                compatibility_mask,
                vp_index,
                ..
            } => {
                if let Some(e) = self.vps.iter_mut().find(|e| e.0 == vp_index) {
                    if e.1 & compatibility_mask != 0 {
                        return Err(K::DuplicateVpContext {
                            vp_index,
                            mask: e.1 & compatibility_mask,
                        });
                    }
                    e.1 |= compatibility_mask;
                    return Ok(());
                }
                self.vps
                    .push((vp_index, compatibility_mask))
                    .map_err(|_| K::TooManyVpIndices {
                        limit: MAX_VP_INDICES as u32,
                    })
            }
            _ => {
                if let Some(p) = h.parameter() {
                    // Smallest value each parameter type writes: a u32 (VP_COUNT,
                    // ENVIRONMENT_INFO), `IGVM_VHS_MMIO_RANGES` (32), one
                    // `IGVM_VHS_MEMORY_MAP_ENTRY` (24), at least a byte otherwise.
                    let need: u64 = match h {
                        Header::VpCount(_) | Header::EnvironmentInfo(_) => 4,
                        Header::MmioRanges(_) => 32,
                        Header::MemoryMap(_) => 24,
                        _ => 1,
                    };
                    let index = p.parameter_area_index;
                    let area = self.area(index)?;
                    if area.inserted {
                        return Err(K::ParameterAreaAlreadyInserted { index });
                    }
                    if u64::from(p.byte_offset).saturating_add(need) > area.size {
                        return Err(K::ParameterOutOfArea {
                            index,
                            byte_offset: p.byte_offset,
                            area_size: area.size,
                        });
                    }
                }
                Ok(())
            }
        }
    }
}

/// Little-endian u32 at `off` (the caller checked the length).
fn le32(bytes: &[u8], off: usize) -> u32 {
    bytes
        .get(off..off.saturating_add(4))
        .and_then(|w| <[u8; 4]>::try_from(w).ok())
        .map(u32::from_le_bytes)
        .unwrap_or(0)
}

impl<'a> IgvmFile<'a> {
    /// Parses and fully validates an IGVM file: structure and every rule that can be checked
    /// without allocating (see the module doc).
    ///
    /// # Errors
    /// The first problem found, with the header index, file offset and header type.
    pub fn parse(bytes: &'a [u8]) -> Result<IgvmFile<'a>, IgvmError> {
        let len = bytes.len() as u64;
        let (fixed, _) = IGVM_FIXED_HEADER::read_from_prefix(bytes)
            .map_err(|_| IgvmError::file(K::TooShort { len }, 0))?;
        if fixed.magic != igvm_defs::IGVM_MAGIC_VALUE {
            return Err(IgvmError::file(K::BadMagic { found: fixed.magic }, 0));
        }
        let (fixed_size, arch) = match fixed.format_version {
            igvm_defs::IGVM_FORMAT_VERSION_1 => (0x18u32, Arch::X64),
            igvm_defs::IGVM_FORMAT_VERSION_2 => {
                let (v2, _) = IGVM_FIXED_HEADER_V2::read_from_prefix(bytes)
                    .map_err(|_| IgvmError::file(K::TooShort { len }, 0))?;
                let arch = match v2.architecture {
                    igvm_defs::IgvmArchitecture::X64 => Arch::X64,
                    igvm_defs::IgvmArchitecture::AARCH64 => Arch::Aarch64,
                    a => {
                        return Err(IgvmError::file(
                            K::UnsupportedArchitecture { arch: a.0 },
                            0x18,
                        ))
                    }
                };
                if u64::from(v2.page_size) != igvm_defs::PAGE_SIZE_4K {
                    return Err(IgvmError::file(
                        K::UnsupportedPageSize {
                            page_size: v2.page_size,
                        },
                        0x1C,
                    ));
                }
                (0x20, arch)
            }
            version => return Err(IgvmError::file(K::UnsupportedVersion { version }, 4)),
        };
        if u64::from(fixed.total_file_size) != len {
            return Err(IgvmError::file(
                K::FileSizeMismatch {
                    header: fixed.total_file_size,
                    actual: len,
                },
                0x10,
            ));
        }
        let voff = fixed.variable_header_offset;
        if voff < fixed_size || voff & 7 != 0 {
            return Err(IgvmError::file(
                K::BadVariableHeaderOffset { offset: voff },
                8,
            ));
        }
        let vh_end = voff
            .checked_add(fixed.variable_header_size)
            .filter(|&e| u64::from(e) <= len)
            .ok_or(IgvmError::file(
                K::VariableHeadersOutOfBounds {
                    offset: voff,
                    size: fixed.variable_header_size,
                },
                0xC,
            ))?;

        // igvm_defs 0.5 `IGVM_FIXED_HEADER::checksum`: CRC-32 of the fixed header with the
        // checksum field zero, then of the variable header region.
        let mut crc = crate::crc32::Crc32::new();
        crc.update(bytes.get(..0x14).unwrap_or(&[]));
        crc.update(&[0; 4]);
        crc.update(bytes.get(0x18..fixed_size as usize).unwrap_or(&[]));
        crc.update(bytes.get(voff as usize..vh_end as usize).unwrap_or(&[]));
        let computed = crc.finish();
        if computed != fixed.checksum {
            return Err(IgvmError::file(
                K::ChecksumMismatch {
                    stored: fixed.checksum,
                    computed,
                },
                0x14,
            ));
        }

        let mut file = IgvmFile {
            ctx: DecodeCtx {
                bytes,
                data_start: vh_end,
                declared: 0,
                types: [IgvmPlatformType(0xFF); 32],
                arch,
            },
            version: fixed.format_version,
            platforms: heapless::Vec::new(),
            vh_start: voff,
            vh_end,
            header_count: 0,
        };
        let mut rules = Rules::default();
        let mut reached = Section::Platform;
        let mut pos = voff;
        let mut index = 0u32;
        while pos < vh_end {
            let typ = le32(bytes, pos as usize);
            let at = |kind| IgvmError::at(kind, index, pos, typ);
            let t = tlv(bytes, pos, vh_end).map_err(at)?;
            if let Some(section) = Section::of(t.typ) {
                if section < reached {
                    return Err(at(K::OutOfOrder {
                        section,
                        after: reached,
                    }));
                }
                if section != Section::Platform && file.platforms.is_empty() {
                    return Err(at(K::NoPlatforms));
                }
                reached = section;
            }
            let header = file.ctx.decode(t.typ, t.body).map_err(at)?;
            if let Header::SupportedPlatform(p) = header {
                file.add_platform(p).map_err(at)?;
            }
            rules.apply(&header, index).map_err(at)?;
            pos = pos.saturating_add(t.advance);
            index = index.saturating_add(1);
        }
        if file.platforms.is_empty() {
            return Err(IgvmError::file(K::NoPlatforms, voff));
        }
        file.header_count = index;
        Ok(file)
    }

    fn add_platform(&mut self, p: PlatformInfo) -> Result<(), K> {
        if self.ctx.declared & p.compatibility_mask != 0 {
            return Err(K::DuplicatePlatformMask {
                mask: p.compatibility_mask,
            });
        }
        if self
            .platforms
            .iter()
            .any(|q| q.platform_type == p.platform_type)
        {
            return Err(K::DuplicatePlatformType {
                platform_type: p.platform_type.0,
            });
        }
        // Unique known types: at most 7 platforms, so the push cannot fail.
        self.platforms
            .push(p)
            .map_err(|_| K::DuplicatePlatformType {
                platform_type: p.platform_type.0,
            })?;
        self.ctx.declared |= p.compatibility_mask;
        let bit = p.compatibility_mask.trailing_zeros() as usize;
        if let Some(slot) = self.ctx.types.get_mut(bit) {
            *slot = p.platform_type;
        }
        Ok(())
    }

    /// The file bytes.
    pub fn bytes(&self) -> &'a [u8] {
        self.ctx.bytes
    }

    /// format_version (1 or 2).
    pub fn format_version(&self) -> u32 {
        self.version
    }

    /// Architecture (X64 for version 1 files).
    pub fn architecture(&self) -> Arch {
        self.ctx.arch
    }

    /// The supported platforms, in file order.
    pub fn platforms(&self) -> impl Iterator<Item = PlatformInfo> + '_ {
        self.platforms.iter().copied()
    }

    /// The compatibility mask of the platform of this type, if declared.
    pub fn mask_for(&self, platform_type: IgvmPlatformType) -> Option<u32> {
        self.platforms
            .iter()
            .find(|p| p.platform_type == platform_type)
            .map(|p| p.compatibility_mask)
    }

    /// The platform declared with mask bit `mask` (a single bit), if any.
    pub fn platform(&self, mask: u32) -> Option<PlatformInfo> {
        self.platforms
            .iter()
            .find(|p| p.compatibility_mask == mask)
            .copied()
    }

    /// Every variable header in file order (platform, initialization, directives, skipped
    /// optional types), each with its index and absolute file offset.
    pub fn headers(&self) -> Headers<'a> {
        Headers {
            ctx: self.ctx,
            pos: self.vh_start,
            end: self.vh_end,
            index: 0,
        }
    }

    /// Number of variable headers.
    pub fn header_count(&self) -> u32 {
        self.header_count
    }

    /// Absolute offset of the file data section (end of the variable headers).
    pub fn file_data_start(&self) -> u32 {
        self.ctx.data_start
    }
}
