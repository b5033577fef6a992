//! Packs relaunch's own test guests into IGVM bundles.
