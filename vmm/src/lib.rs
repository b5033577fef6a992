//! relaunch: the hosted shell around `relaunch-core`.
//!
//! All `unsafe` lives in [`sys`].
#![deny(missing_docs)]

pub mod args;
pub mod cli;
pub mod json;
pub mod sys;
