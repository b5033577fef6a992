//! relaunch: the hosted shell around `relaunch-core`.
//!
//! All `unsafe` lives in [`sys`].
#![deny(missing_docs)]

pub mod cli;
pub mod sys;
