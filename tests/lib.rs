//! Shared helpers for relaunch's end-to-end tests.
