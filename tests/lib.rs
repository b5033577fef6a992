//! Shared helpers for relaunch's end-to-end tests.

// The project's `unsafe` lives only in `vmm/src/sys/`.
#![forbid(unsafe_code)]
