//! `relaunch pack`'s library side: bundles made from what users have, and the measurement
//! each platform view of a packed bundle predicts.
//!
//! - [`elf`]: a bare-metal ELF linked against relaunch's guest layout (the boot images'
//!   packer, `relaunch_boot_images`).
//! - [`linux`]: a Linux bzImage (+ initrd, command line) for the x86 64-bit boot protocol,
//!   with the ACPI tables of [`acpi`].
//! - [`firmware`]: an OVMF/TDVF image as SNP / TDX / native views (the job of `igvm-wrap`).
//!
//! Every packer returns the IGVM bytes; [`predict`] plans and measures each view the file
//! declares with `relaunch measure`'s own code (`crate::cli::measure::measure_bundle`), so
//! what `pack` prints is what `relaunch measure` prints for the same file and flags.

pub mod acpi;
pub mod elf;
pub mod firmware;
pub mod linux;

use igvm_defs::IgvmPlatformType;
use relaunch_core::igvm::IgvmFile;
use relaunch_core::measure::Measurement;
use relaunch_core::plan::{LaunchConfig, Platform};

use crate::cli::measure::{measure_bundle, Failure};

/// The platform views an IGVM file declares, in [`Platform::ALL`] order.
///
/// # Errors
/// The core parser's error, as one line.
pub fn views(bundle: &[u8]) -> Result<Vec<Platform>, String> {
    let file = IgvmFile::parse(bundle).map_err(|e| format!("not a valid IGVM file: {e}"))?;
    Ok(Platform::ALL
        .into_iter()
        .filter(|&p| file.mask_for(platform_type(p)).is_some())
        .collect())
}

/// The IGVM platform type of a view.
pub fn platform_type(p: Platform) -> IgvmPlatformType {
    relaunch_core::plan::igvm::igvm_platform_type(p)
}

/// One view's predicted launch measurement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewMeasurement {
    /// The view.
    pub platform: Platform,
    /// The measurement ([`Measurement::None`] for NATIVE), or why the view cannot be
    /// planned or measured with the given launch parameters (one line).
    pub measurement: Result<Measurement, String>,
}

/// Plans and measures every view of `bundle` with `base` (its `platform` is replaced by
/// each view's), hashing pages on `threads` threads (0 = one per CPU).
///
/// # Errors
/// The bundle does not parse.
pub fn predict(
    bundle: &[u8],
    base: &LaunchConfig,
    threads: usize,
) -> Result<Vec<ViewMeasurement>, String> {
    Ok(views(bundle)?
        .into_iter()
        .map(|platform| {
            let cfg = LaunchConfig { platform, ..*base };
            let measurement = match measure_bundle(bundle, &cfg, threads) {
                Ok(m) => Ok(m.measurement),
                Err(Failure::Plan(e)) => Err(format!("cannot be planned: {e}")),
                Err(Failure::Measure(e)) => Err(format!("cannot be measured: {e}")),
            };
            ViewMeasurement {
                platform,
                measurement,
            }
        })
        .collect())
}
