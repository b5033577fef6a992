//! Every `unsafe` block of the VMM: guest-memory mappings, raw ioctls, signals, terminal fds.
//!
//! Each `unsafe` block carries a `// SAFETY:` comment naming the callee's invariants and why
//! they hold; every ioctl struct defined here has size/offset const assertions citing
//! `include/uapi/linux/kvm.h`. Everything outside this module is safe Rust.

pub mod coco;
pub mod cpu;
pub mod emu;
pub mod kvm;
pub mod mem;
pub mod record;
pub mod safe;
pub mod sev;
pub mod signal;
pub mod sock;
pub mod tdx;

/// An `errno` value from a failed system call.
pub type Errno = vmm_sys_util::errno::Error;
