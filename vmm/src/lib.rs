//! relaunch: the hosted shell around `relaunch-core`.
//!
//! All `unsafe` lives in [`sys`]: everywhere else it is denied.
#![deny(missing_docs)]
#![deny(unsafe_code)]

pub mod args;
pub mod audit;
pub mod backend;
pub mod cli;
pub mod control;
pub mod devices;
pub mod handover;
pub mod json;
pub mod launch;
pub mod log;
pub mod memory;
pub mod model;
pub mod pack;
pub mod session;
#[allow(unsafe_code)]
pub mod sys;
pub mod testing;
pub mod vcpu;
pub mod vstate;
