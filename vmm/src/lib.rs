//! relaunch: the hosted shell around `relaunch-core`.
//!
//! All `unsafe` lives in [`sys`].
#![deny(missing_docs)]

pub mod args;
pub mod audit;
pub mod backend;
pub mod cli;
pub mod devices;
pub mod json;
pub mod log;
pub mod session;
pub mod sys;
pub mod testing;
pub mod vcpu;
pub mod vstate;
