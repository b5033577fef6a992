//! relaunch-core: the pure launch core of relaunch.
//!
//! Bytes in, typed launch plan and exact launch measurement out. No I/O, no clocks, no
//! unsafe, no panics on input. The pipeline is
//!
//! ```text
//! bundle bytes ─► igvm::IgvmFile::parse / ovmf::Firmware::parse ─► plan::plan ─► measure::expected
//! ```
//!
//! Layers, each depending only on those before it: [`limits`]; [`launch`], the shared
//! vocabulary (platform, config, ops, page kinds, vCPU registers, RAM layout); [`arch`]
//! (VMSA, CPU models); [`plan`] and [`measure`], which never import each other (the
//! measurement folds a [`launch::OpStream`] a plan hands out); `fwmodel` and [`owner`] (the
//! SEV guest owner's side: checking `LAUNCH_MEASURE`, wrapping launch secrets) on top.
//!
//! Every offset and size read from a file is an allegation until checked; every error says
//! which header or structure, at which file offset, is wrong.
#![no_std]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

#[cfg(feature = "alloc")]
extern crate alloc;

pub mod arch;
pub mod crc32;
#[cfg(feature = "alloc")]
pub mod fwmodel;
pub mod igvm;
pub mod launch;
pub mod limits;
pub mod measure;
pub mod ovmf;
// Hosted targets only: its AES dependency has no soft-float build here (Cargo.toml).
#[cfg(not(target_os = "none"))]
pub mod owner;
pub mod plan;
#[cfg(any(test, feature = "test-utils"))]
pub mod testutil;
pub mod writer;
