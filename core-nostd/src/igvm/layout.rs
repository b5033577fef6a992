//! Guest-memory layout check for one platform: no page imported twice.
//!
//! Needs a set, so it allocates (feature `alloc`): one entry per import *range* (not per
//! page), sorted, then one sweep. O(n log n) in the number of headers; a 2 MiB page, a large
//! parameter area or a 256 MiB bundle of 65536 PAGE_DATA headers is cheap.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use super::error::{IgvmError, IgvmErrorKind as K};
use super::header::{Header, VpContextKind, PAGE_2M, PAGE_4K};
use super::IgvmFile;

#[derive(Clone, Copy)]
struct Import {
    start: u64,
    /// Exclusive (checked not to overflow at parse time).
    end: u64,
    index: u32,
    offset: u32,
    typ: u32,
    vmsa: bool,
}

impl IgvmFile<'_> {
    /// Rejects overlapping or duplicate guest pages among the headers that apply to `mask`
    /// (`header & mask != 0`; normally one platform's bit): PAGE_DATA (4 KiB or 2 MiB),
    /// PARAMETER_INSERT (the whole area) and SNP/SEV-ES VMSA pages.
    ///
    /// Several VMSAs at one identical GPA are allowed: under KVM every VMSA sits at
    /// 0xFFFFFFFFF000 and QEMU requires exactly that GPA for each
    /// (`../shared/spec/igvm-snp.md` §2.2, §2.4), so a multi-vCPU file for QEMU repeats it.
    ///
    /// # Errors
    /// `PageOverlap` at the later header of the first overlapping pair found (sorted by
    /// GPA), naming the earlier one.
    pub fn check_page_layout(&self, mask: u32) -> Result<(), IgvmError> {
        let mut areas: BTreeMap<u32, u64> = BTreeMap::new();
        let mut imports: Vec<Import> = Vec::new();
        for h in self.headers() {
            let typ = h.header.type_code();
            let (start, size, vmsa) = match h.header {
                Header::ParameterArea {
                    parameter_area_index,
                    number_of_bytes,
                    ..
                } => {
                    areas.insert(parameter_area_index, number_of_bytes);
                    continue;
                }
                Header::PageData { gpa, flags, .. } if h.header.applies_to(mask) => (
                    gpa,
                    if flags.is_2mb_page { PAGE_2M } else { PAGE_4K },
                    false,
                ),
                Header::ParameterInsert {
                    gpa,
                    parameter_area_index,
                    ..
                } if h.header.applies_to(mask) => (
                    gpa,
                    areas.get(&parameter_area_index).copied().unwrap_or(0),
                    false,
                ),
                Header::VpContext {
                    gpa,
                    kind: VpContextKind::Vmsa,
                    ..
                } if h.header.applies_to(mask) => (gpa, PAGE_4K, true),
                _ => continue,
            };
            imports.push(Import {
                start,
                end: start.saturating_add(size),
                index: h.index,
                offset: h.offset,
                typ,
                vmsa,
            });
        }
        imports.sort_unstable_by_key(|i| (i.start, i.index));
        let mut iter = imports.iter();
        let Some(mut reach) = iter.next().copied() else {
            return Ok(());
        };
        for &i in iter {
            let same_vmsa = i.vmsa && reach.vmsa && i.start == reach.start && i.end == reach.end;
            if i.start < reach.end && !same_vmsa {
                let (later, earlier) = if i.index > reach.index {
                    (i, reach)
                } else {
                    (reach, i)
                };
                return Err(IgvmError::at(
                    K::PageOverlap {
                        gpa: i.start,
                        other: earlier.index,
                    },
                    later.index,
                    later.offset,
                    later.typ,
                ));
            }
            if i.end > reach.end {
                reach = i;
            }
        }
        Ok(())
    }
}
