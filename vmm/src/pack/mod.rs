//! `relaunch pack`: IGVM bundles from what users have.

pub mod firmware;
