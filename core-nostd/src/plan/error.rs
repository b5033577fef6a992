//! Planning errors: where (header index + file offset, or the launch config) and what, with a
//! fix-it where KVM (or QEMU, whose semantics we follow) imposes the rule — in the spirit of
//! coconut-svsm `igvmmeasure --check-kvm` (`tools/igvmmeasure/src/igvm_measure.rs`).

use core::fmt;

use crate::arch::vmsa::VmsaError;
use crate::igvm::{type_name, IgvmError};
use crate::launch::Platform;
use crate::limits::LimitError;
use crate::plan::ovmf::FirmwarePlanError;
use crate::plan::InvalidPlan;

/// Where a planning error is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Location {
    /// The bundle as a whole (input kind, platform view).
    Bundle,
    /// A variable header of an IGVM bundle.
    Header {
        /// Header index (0-based, file order, all sections).
        index: u32,
        /// Absolute file offset of the header (its type field).
        offset: u32,
        /// Raw header type.
        typ: u32,
    },
    /// The launch config (command-line flags).
    Config,
}

/// A launch-config field the planner refuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigField {
    /// `vcpus`.
    Vcpus,
    /// `mem_bytes`.
    Memory,
    /// `policy`.
    Policy,
    /// `guest_features`.
    GuestFeatures,
}

impl ConfigField {
    const fn flag(self) -> &'static str {
        match self {
            ConfigField::Vcpus => "--vcpus",
            ConfigField::Memory => "--mem",
            ConfigField::Policy => "--policy",
            ConfigField::GuestFeatures => "--guest-features",
        }
    }
}

/// What is wrong.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlanErrorKind {
    /// The IGVM file does not parse or validate (carries its own location).
    Igvm(IgvmError),
    /// The firmware image cannot be planned (parse errors carry their own location).
    Firmware(FirmwarePlanError),
    /// The bundle is neither an IGVM file nor an OVMF/TDVF image.
    UnknownInput,
    /// The IGVM file has no SUPPORTED_PLATFORM header for the requested platform.
    NoPlatformView {
        /// Requested platform.
        platform: Platform,
        /// Bit per declared platform: 1 << `Platform as usize` in [`Platform::ALL`] order.
        declared: u8,
    },
    /// A vCPU count or RAM size outside [`crate::limits`].
    Limit(LimitError),
    /// The planner made a plan that breaks the plan's invariants (a planner bug, reported
    /// instead of executed).
    Invalid(InvalidPlan),
    /// A launch-config value the planner refuses.
    BadConfig {
        /// Which field.
        field: ConfigField,
        /// Its value.
        value: u64,
        /// Why.
        reason: &'static str,
    },
    /// A directive this loader does not implement (QEMU 11 rejects it as well).
    UnsupportedDirective,
    /// A page or range beyond what the platform can address.
    GpaTooHigh {
        /// First byte.
        gpa: u64,
        /// Size of the range.
        size: u64,
        /// The limit (exclusive).
        limit: u64,
        /// The limit is the platform's shared_gpa_boundary (vTOM), not the address width.
        shared_boundary: bool,
    },
    /// Memory outside guest RAM that the bundle imports exceeds the planner's budget.
    TooMuchExtraMemory {
        /// Bytes needed.
        bytes: u64,
        /// The limit.
        limit: u64,
    },
    /// The bundle imports more separate ranges outside guest RAM than the planner allows
    /// (each becomes its own memory region).
    TooManyExtraRegions {
        /// Separate ranges after merging touching ones.
        regions: u64,
        /// The limit.
        limit: u64,
    },
    /// More imported pages than the planner's budget.
    TooManyPages {
        /// The limit.
        limit: u64,
    },
    /// A page type that only SEV-SNP has (SECRETS, CPUID) in a SEV or SEV-ES view.
    SnpOnlyPage {
        /// `"SECRETS"` or `"CPUID"`.
        page: &'static str,
        /// The platform.
        platform: Platform,
    },
    /// A parameter area bigger than the planner allocates.
    ParameterAreaTooLarge {
        /// Area index.
        index: u32,
        /// Its size.
        size: u64,
        /// The limit (per area, or in total when `total` is set).
        limit: u64,
        /// The limit is the total over all areas.
        total: bool,
    },
    /// A parameter usage or insert names an area this view never declared.
    ParameterAreaMissing {
        /// Area index.
        index: u32,
    },
    /// A parameter value does not fit at its byte offset.
    ParameterDoesNotFit {
        /// Area index.
        index: u32,
        /// byte_offset.
        byte_offset: u32,
        /// Bytes the value needs.
        needed: u64,
        /// Area size.
        area_size: u64,
    },
    /// A VP context the platform's KVM flow cannot take.
    VpContext(VmsaError),
    /// A VMSA at a GPA other than the one KVM measures every VMSA at.
    VmsaGpa {
        /// The GPA in the file.
        gpa: u64,
    },
    /// A VP context for a vCPU the launch does not create.
    VpIndexOutOfRange {
        /// VP index in the file.
        vp: u16,
        /// vCPUs of the launch.
        vcpus: u32,
    },
    /// A VMSA whose SEV_FEATURES differ from VP 0's (KVM applies one `vmsa_features` to
    /// every vCPU).
    VmsaFeaturesDiffer {
        /// VP index.
        vp: u16,
        /// Its SEV_FEATURES (without SNP_ACTIVE).
        features: u64,
        /// The VM's `vmsa_features` (VP 0's, or `--guest-features`).
        vm: u64,
    },
    /// A VP context format the platform view cannot use (VBS, CCA, or one for TDX).
    VpContextFormat {
        /// The platform.
        platform: Platform,
    },
    /// Two SNP_ID_BLOCK directives for the platform (QEMU: "Multiple ID blocks").
    DuplicateIdBlock,
    /// A guest policy KVM or the firmware refuses.
    BadPolicy {
        /// The policy.
        policy: u64,
        /// The platform.
        platform: Platform,
        /// What is wrong and how to fix it.
        reason: &'static str,
    },
    /// The input kind has no planner for this platform.
    UnsupportedPlatform {
        /// The platform.
        platform: Platform,
    },
}

/// A planning error with its location.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlanError {
    /// Where.
    pub at: Location,
    /// What.
    pub kind: PlanErrorKind,
}

impl PlanError {
    /// An error at `at`.
    pub const fn new(at: Location, kind: PlanErrorKind) -> PlanError {
        PlanError { at, kind }
    }

    /// An error in the launch config.
    pub const fn config(field: ConfigField, value: u64, reason: &'static str) -> PlanError {
        PlanError {
            at: Location::Config,
            kind: PlanErrorKind::BadConfig {
                field,
                value,
                reason,
            },
        }
    }
}

impl From<IgvmError> for PlanError {
    fn from(e: IgvmError) -> PlanError {
        let at = match e.header_index {
            Some(index) => Location::Header {
                index,
                offset: e.offset,
                typ: e.header_type,
            },
            None => Location::Bundle,
        };
        PlanError::new(at, PlanErrorKind::Igvm(e))
    }
}

impl From<FirmwarePlanError> for PlanError {
    fn from(e: FirmwarePlanError) -> PlanError {
        match e {
            FirmwarePlanError::Limit(l) => {
                PlanError::new(Location::Config, PlanErrorKind::Limit(l))
            }
            e => PlanError::new(Location::Bundle, PlanErrorKind::Firmware(e)),
        }
    }
}

impl fmt::Display for PlanErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use PlanErrorKind::*;
        match *self {
            Igvm(e) => write!(f, "{}", e.kind),
            Firmware(e) => write!(f, "{e}"),
            UnknownInput => f.write_str(
                "not an IGVM file (no \"IGVM\" magic) and not an OVMF/TDVF image (no GUID table \
                 footer 0x30 bytes before the end)",
            ),
            NoPlatformView { platform, declared } => {
                write!(f, "the bundle has no {platform} view; it declares: ")?;
                let mut first = true;
                for (i, p) in Platform::ALL.iter().enumerate() {
                    if declared & (1u8 << i) != 0 {
                        if !first {
                            f.write_str(", ")?;
                        }
                        first = false;
                        f.write_str(p.name())?;
                    }
                }
                if first {
                    f.write_str("no platform relaunch can launch")?;
                }
                Ok(())
            }
            Limit(e) => write!(f, "{e}"),
            Invalid(e) => write!(f, "internal planner error, please report: {e}"),
            BadConfig {
                field,
                value,
                reason,
            } => write!(f, "{} {value:#x}: {reason}", field.flag()),
            UnsupportedDirective => f.write_str(
                "directive not supported by relaunch (QEMU 11 rejects it too); rebuild the \
                 bundle without it",
            ),
            GpaTooHigh {
                gpa,
                size,
                limit,
                shared_boundary,
            } => {
                write!(f, "range {gpa:#x}+{size:#x} lies at or above {limit:#x}")?;
                if shared_boundary {
                    f.write_str(", the platform's shared_gpa_boundary (vTOM)")
                } else {
                    f.write_str(", the highest guest-physical address this platform can map")
                }
            }
            TooMuchExtraMemory { bytes, limit } => write!(
                f,
                "the bundle imports {bytes:#x} bytes outside guest RAM (limit {limit:#x}); \
                 give more RAM (--mem) so the imports fall inside it"
            ),
            TooManyExtraRegions { regions, limit } => write!(
                f,
                "the bundle imports {regions} separate ranges outside guest RAM (limit {limit}), \
                 each needing its own memory region; give more RAM (--mem) so the imports fall \
                 inside it, or make the bundle's out-of-RAM pages contiguous"
            ),
            TooManyPages { limit } => write!(f, "more than {limit} imported 4 KiB pages"),
            SnpOnlyPage { page, platform } => write!(
                f,
                "{page} page in the {platform} view: only SEV-SNP has it (QEMU refuses it too)"
            ),
            ParameterAreaTooLarge {
                index,
                size,
                limit,
                total,
            } => {
                if total {
                    write!(
                        f,
                        "parameter area {index} of {size:#x} bytes brings all areas above \
                         {limit:#x} bytes"
                    )
                } else {
                    write!(
                        f,
                        "parameter area {index} of {size:#x} bytes is larger than {limit:#x}"
                    )
                }
            }
            ParameterAreaMissing { index } => {
                write!(
                    f,
                    "parameter area {index} is not declared (or already inserted)"
                )
            }
            ParameterDoesNotFit {
                index,
                byte_offset,
                needed,
                area_size,
            } => write!(
                f,
                "{needed:#x} bytes at offset {byte_offset:#x} do not fit in parameter area \
                 {index} of {area_size:#x} bytes"
            ),
            VpContext(e) => write!(f, "{e}"),
            VmsaGpa { gpa } => write!(
                f,
                "VMSA at GPA {gpa:#x}: KVM builds and measures every VMSA at 0xfffffffff000 \
                 (INITIAL_VMSA_GPA); rebuild the bundle with the VMSA at that GPA"
            ),
            VpIndexOutOfRange { vp, vcpus } => write!(
                f,
                "VP context for vCPU {vp}, but the launch creates {vcpus} vCPU(s); use \
                 --vcpus {} or more",
                u32::from(vp).saturating_add(1)
            ),
            VmsaFeaturesDiffer { vp, features, vm } => write!(
                f,
                "VMSA of vCPU {vp} has SEV_FEATURES {features:#x} but KVM applies one \
                 vmsa_features ({vm:#x}, from VP 0) to every vCPU; give every VMSA the same \
                 sev_features"
            ),
            VpContextFormat { platform } => {
                write!(f, "VP context format not usable in the {platform} view")
            }
            DuplicateIdBlock => f.write_str("second SNP_ID_BLOCK for the platform"),
            BadPolicy {
                policy,
                platform,
                reason,
            } => write!(f, "{platform} policy {policy:#x}: {reason}"),
            UnsupportedPlatform { platform } => {
                write!(f, "this kind of bundle cannot be launched as {platform}")
            }
        }
    }
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.at, self.kind) {
            // These carry their own location.
            (_, PlanErrorKind::Igvm(e)) => write!(f, "{e}"),
            (_, PlanErrorKind::Firmware(e)) => write!(f, "{e}"),
            (Location::Bundle, kind) => write!(f, "{kind}"),
            (Location::Config, kind) => write!(f, "launch config: {kind}"),
            (Location::Header { index, offset, typ }, kind) => write!(
                f,
                "header {index} ({}) at {offset:#x}: {kind}",
                type_name(typ)
            ),
        }
    }
}
