//! The TDX part of the kernel door: the uapi structs KVM's `KVM_MEMORY_ENCRYPT_OP` carries for
//! TDX (none of them is in kvm-bindings 0.14, `../shared/spec/kvm-coco-abi.md` §4) and the
//! raw calls on the VM and vCPU fds. Everything mirrors `arch/x86/include/uapi/asm/kvm.h`
//! (Linux 6.16+, the TDX host support merge); layouts are checked by the `const` assertions
//! below against the offsets in `../shared/spec/kvm-coco-abi.md` §3.1.

use std::os::fd::RawFd;

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

use super::coco::{CocoError, FwStatus, TdxCapabilities, TdxVcpuCmd, TdxVmCmd};
use super::Errno;

/// Room for CPUID entries in `KVM_TDX_CAPABILITIES` (`KVM_MAX_CPUID_ENTRIES` = 256,
/// `arch/x86/include/asm/kvm_host.h`; the kernel answers `E2BIG` with the count it needs
/// when `nent` is smaller).
const CAPS_CPUID_ENTRIES: usize = 256;

/// Most entries a `KVM_TDX_GET_CPUID` buffer is made for (the kernel builds its answer in a
/// `KVM_MAX_CPUID_ENTRIES` = 256 buffer, `arch/x86/kvm/vmx/tdx.c` `tdx_vcpu_get_cpuid`; a
/// larger `nent` asked for is refused here rather than allocated).
pub const GET_CPUID_MAX_ENTRIES: u32 = 4096;

/// `KVM_X86_TDX_VM` (`arch/x86/include/uapi/asm/kvm.h`: `#define KVM_X86_TDX_VM 5`).
pub const KVM_X86_TDX_VM: u64 = 5;
/// `KVM_EXIT_TDX` (`include/uapi/linux/kvm.h`: `#define KVM_EXIT_TDX 40`).
pub const KVM_EXIT_TDX: u32 = 40;
/// `KVM_SYSTEM_EVENT_TDX_FATAL` (`include/uapi/linux/kvm.h`:
/// `#define KVM_SYSTEM_EVENT_TDX_FATAL 7`).
pub const KVM_SYSTEM_EVENT_TDX_FATAL: u32 = 7;
/// `KVM_TDX_MEASURE_MEMORY_REGION` (`arch/x86/include/uapi/asm/kvm.h`:
/// `#define KVM_TDX_MEASURE_MEMORY_REGION _BITULL(0)`), `kvm_tdx_cmd.flags` of
/// `KVM_TDX_INIT_MEM_REGION`.
pub const KVM_TDX_MEASURE_MEMORY_REGION: u32 = 1 << 0;

/// `enum kvm_tdx_cmd_id` (`arch/x86/include/uapi/asm/kvm.h`).
pub mod cmd_id {
    /// `KVM_TDX_CAPABILITIES = 0` (VM fd).
    pub const CAPABILITIES: u32 = 0;
    /// `KVM_TDX_INIT_VM` (VM fd).
    pub const INIT_VM: u32 = 1;
    /// `KVM_TDX_INIT_VCPU` (vCPU fd).
    pub const INIT_VCPU: u32 = 2;
    /// `KVM_TDX_INIT_MEM_REGION` (vCPU fd).
    pub const INIT_MEM_REGION: u32 = 3;
    /// `KVM_TDX_FINALIZE_VM` (VM fd).
    pub const FINALIZE_VM: u32 = 4;
    /// `KVM_TDX_GET_CPUID` (vCPU fd).
    pub const GET_CPUID: u32 = 5;
}

/// `struct kvm_tdx_cmd` (`arch/x86/include/uapi/asm/kvm.h`):
/// `{ __u32 id; __u32 flags; __u64 data; __u64 hw_error; }`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct kvm_tdx_cmd {
    /// `enum kvm_tdx_cmd_id`.
    pub id: u32,
    /// Sub-command flags.
    pub flags: u32,
    /// The command's argument: a pointer, or a value (INIT_VCPU's RCX).
    pub data: u64,
    /// Out: the TDX module's status on failure (must be 0 in).
    pub hw_error: u64,
}

/// `struct kvm_tdx_init_mem_region` (`arch/x86/include/uapi/asm/kvm.h`):
/// `{ __u64 source_addr; __u64 gpa; __u64 nr_pages; }`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct kvm_tdx_init_mem_region {
    /// Host address of the source pages.
    pub source_addr: u64,
    /// First private GPA.
    pub gpa: u64,
    /// Pages left.
    pub nr_pages: u64,
}

/// The head of `struct kvm_cpuid2` (`arch/x86/include/uapi/asm/kvm.h`:
/// `{ __u32 nent; __u32 padding; struct kvm_cpuid_entry2 entries[]; }`) without the flexible
/// array (kvm-bindings' own type is not `Copy`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct kvm_cpuid2_head {
    /// Number of entries.
    pub nent: u32,
    /// Padding.
    pub padding: u32,
}

/// The fixed part of `struct kvm_tdx_capabilities` (`arch/x86/include/uapi/asm/kvm.h`):
/// `{ __u64 supported_attrs; __u64 supported_xfam; __u64 kernel_tdvmcallinfo_1_r11;
/// __u64 user_tdvmcallinfo_1_r11; __u64 kernel_tdvmcallinfo_1_r12;
/// __u64 user_tdvmcallinfo_1_r12; __u64 reserved[250]; struct kvm_cpuid2 cpuid; }`
/// (the flexible `cpuid.entries[]` follows).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct kvm_tdx_capabilities {
    /// TD attributes the module lets the VMM set.
    pub supported_attrs: u64,
    /// XFAM bits the module lets the VMM set.
    pub supported_xfam: u64,
    /// TDVMCALLs KVM handles itself (GetTdVmCallInfo leaf 1, R11).
    pub kernel_tdvmcallinfo_1_r11: u64,
    /// TDVMCALLs KVM forwards to userspace (R11; bit 0 GetQuote).
    pub user_tdvmcallinfo_1_r11: u64,
    /// TDVMCALLs KVM handles itself (R12).
    pub kernel_tdvmcallinfo_1_r12: u64,
    /// TDVMCALLs KVM forwards to userspace (R12; bit 1 SetupEventNotifyInterrupt).
    pub user_tdvmcallinfo_1_r12: u64,
    /// Reserved, 0.
    pub reserved: [u64; 250],
    /// The configurable CPUID bits (`nent` = capacity in, count out).
    pub cpuid: kvm_cpuid2_head,
}

/// The fixed part of `struct kvm_tdx_init_vm` (`arch/x86/include/uapi/asm/kvm.h`):
/// `{ __u64 attributes; __u64 xfam; __u64 mrconfigid[6]; __u64 mrowner[6];
/// __u64 mrownerconfig[6]; __u64 reserved[12]; struct kvm_cpuid2 cpuid; }` (the flexible
/// `cpuid.entries[]` follows).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct kvm_tdx_init_vm {
    /// TD attributes.
    pub attributes: u64,
    /// XFAM.
    pub xfam: u64,
    /// MRCONFIGID (SHA-384).
    pub mrconfigid: [u64; 6],
    /// MROWNER.
    pub mrowner: [u64; 6],
    /// MROWNERCONFIG.
    pub mrownerconfig: [u64; 6],
    /// Reserved, must be 0.
    pub reserved: [u64; 12],
    /// The TD's CPUID configuration.
    pub cpuid: kvm_cpuid2_head,
}

const _: () = {
    use std::mem::{offset_of, size_of};
    // `../shared/spec/kvm-coco-abi.md` §3.1.
    assert!(size_of::<kvm_tdx_cmd>() == 24);
    assert!(offset_of!(kvm_tdx_cmd, id) == 0);
    assert!(offset_of!(kvm_tdx_cmd, flags) == 4);
    assert!(offset_of!(kvm_tdx_cmd, data) == 8);
    assert!(offset_of!(kvm_tdx_cmd, hw_error) == 16);
    assert!(size_of::<kvm_tdx_init_mem_region>() == 24);
    assert!(offset_of!(kvm_tdx_init_mem_region, source_addr) == 0);
    assert!(offset_of!(kvm_tdx_init_mem_region, gpa) == 8);
    assert!(offset_of!(kvm_tdx_init_mem_region, nr_pages) == 16);
    assert!(offset_of!(kvm_tdx_capabilities, supported_attrs) == 0);
    assert!(offset_of!(kvm_tdx_capabilities, supported_xfam) == 8);
    assert!(offset_of!(kvm_tdx_capabilities, user_tdvmcallinfo_1_r11) == 24);
    assert!(offset_of!(kvm_tdx_capabilities, user_tdvmcallinfo_1_r12) == 40);
    assert!(offset_of!(kvm_tdx_capabilities, reserved) == 48);
    assert!(offset_of!(kvm_tdx_capabilities, cpuid) == 2048);
    // `struct kvm_cpuid2` { __u32 nent; __u32 padding; entries[] }: 8 bytes, entries of 40.
    assert!(size_of::<kvm_tdx_capabilities>() == 2048 + 8);
    assert!(offset_of!(kvm_tdx_init_vm, attributes) == 0);
    assert!(offset_of!(kvm_tdx_init_vm, xfam) == 8);
    assert!(offset_of!(kvm_tdx_init_vm, mrconfigid) == 16);
    assert!(offset_of!(kvm_tdx_init_vm, mrowner) == 64);
    assert!(offset_of!(kvm_tdx_init_vm, mrownerconfig) == 112);
    assert!(offset_of!(kvm_tdx_init_vm, reserved) == 160);
    assert!(offset_of!(kvm_tdx_init_vm, cpuid) == 256);
    assert!(size_of::<kvm_tdx_init_vm>() == 256 + 8);
    assert!(size_of::<kvm_cpuid_entry2>() == 40);
    assert!(size_of::<kvm_cpuid2_head>() == size_of::<kvm_bindings::kvm_cpuid2>());
};

/// A `#[repr(C)]` header followed by `n` CPUID entries, in one 8-byte aligned buffer: how the
/// kernel reads `kvm_tdx_init_vm` and `kvm_tdx_capabilities` (a struct with a trailing
/// `kvm_cpuid2` whose `entries[]` is a flexible array).
#[derive(Debug)]
pub struct WithCpuid {
    buf: Vec<u64>,
    header: usize,
    nent: usize,
}

impl WithCpuid {
    /// A zeroed buffer for a header of `header` bytes (a multiple of 8 ending in the
    /// `kvm_cpuid2` head) and `nent` entries.
    pub fn new(header: usize, nent: usize) -> WithCpuid {
        let bytes = header + nent * std::mem::size_of::<kvm_cpuid_entry2>();
        WithCpuid {
            buf: vec![0; bytes.div_ceil(8)],
            header,
            nent,
        }
    }

    /// The buffer as bytes.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        let len = self.buf.len() * 8;
        // SAFETY: from_raw_parts_mut needs `len` initialised bytes valid for reads and
        // writes, properly aligned for u8, and no other access while the slice lives: they
        // are exactly the bytes of the `Vec<u64>` this `&mut self` borrows exclusively.
        unsafe { std::slice::from_raw_parts_mut(self.buf.as_mut_ptr().cast::<u8>(), len) }
    }

    /// Writes the `kvm_tdx_init_vm` header (the buffer must have been made for one).
    pub fn set_init_vm(&mut self, h: &kvm_tdx_init_vm) {
        let size = std::mem::size_of::<kvm_tdx_init_vm>().min(self.header);
        // SAFETY: from_raw_parts needs `size` initialised readable bytes: `h` is a live
        // `kvm_tdx_init_vm` of at least `size` bytes, and that `#[repr(C)]` struct has no
        // padding bytes (u64 fields, then the u32 pair of the cpuid head: 264 bytes, asserted).
        let src = unsafe { std::slice::from_raw_parts(std::ptr::from_ref(h).cast::<u8>(), size) };
        if let Some(dst) = self.bytes_mut().get_mut(..size) {
            dst.copy_from_slice(src);
        }
    }

    /// Reads a `u64` at byte `off` of the header.
    pub fn u64_at(&self, off: usize) -> u64 {
        self.buf.get(off / 8).copied().unwrap_or(0)
    }

    /// Stores the entries after the header and `nent` in the `kvm_cpuid2` head (the last
    /// 8 bytes of the header).
    pub fn set_entries(&mut self, entries: &[kvm_cpuid_entry2]) {
        let n = entries.len().min(self.nent);
        let header = self.header;
        let bytes = self.bytes_mut();
        if let Some(nent) = bytes.get_mut(header.saturating_sub(8)..header.saturating_sub(4)) {
            nent.copy_from_slice(&(n as u32).to_ne_bytes());
        }
        for (i, e) in entries.iter().take(n).enumerate() {
            let at = header + i * 40;
            let words = [
                e.function,
                e.index,
                e.flags,
                e.eax,
                e.ebx,
                e.ecx,
                e.edx,
                e.padding[0],
                e.padding[1],
                e.padding[2],
            ];
            for (j, w) in words.iter().enumerate() {
                if let Some(d) = bytes.get_mut(at + j * 4..at + j * 4 + 4) {
                    d.copy_from_slice(&w.to_ne_bytes());
                }
            }
        }
    }

    /// Sets `kvm_cpuid2.nent` (the capacity, for a command the kernel fills).
    pub fn set_nent(&mut self, n: u32) {
        let header = self.header;
        if let Some(nent) = self
            .bytes_mut()
            .get_mut(header.saturating_sub(8)..header.saturating_sub(4))
        {
            nent.copy_from_slice(&n.to_ne_bytes());
        }
    }

    /// `kvm_cpuid2.nent` as the kernel left it.
    pub fn head_nent(&mut self) -> u32 {
        let header = self.header;
        self.bytes_mut()
            .get(header.saturating_sub(8)..header.saturating_sub(4))
            .and_then(|b| b.try_into().ok())
            .map_or(0, u32::from_ne_bytes)
    }

    /// The entries the kernel wrote (`nent` from the head, capped at the capacity).
    pub fn entries(&mut self) -> Result<CpuId, Errno> {
        let header = self.header;
        let cap = self.nent;
        let bytes = self.bytes_mut();
        let word = |at: usize| {
            bytes
                .get(at..at + 4)
                .and_then(|b| b.try_into().ok())
                .map_or(0, u32::from_ne_bytes)
        };
        let n = (word(header.saturating_sub(8)) as usize).min(cap);
        let list: Vec<kvm_cpuid_entry2> = (0..n)
            .map(|i| {
                let at = header + i * 40;
                kvm_cpuid_entry2 {
                    function: word(at),
                    index: word(at + 4),
                    flags: word(at + 8),
                    eax: word(at + 12),
                    ebx: word(at + 16),
                    ecx: word(at + 20),
                    edx: word(at + 24),
                    padding: [0; 3],
                }
            })
            .collect();
        CpuId::from_entries(&list).map_err(|_| Errno::new(libc::ENOMEM))
    }

    /// The buffer's address (for `kvm_tdx_cmd.data`).
    pub fn as_mut_ptr(&mut self) -> *mut u64 {
        self.buf.as_mut_ptr()
    }
}

// `KVM_MEMORY_ENCRYPT_OP = _IOWR(KVMIO, 0xba, unsigned long)` (`include/uapi/linux/kvm.h`).
mod nr {
    #![allow(missing_docs)]
    vmm_sys_util::ioctl_iowr_nr!(
        KVM_MEMORY_ENCRYPT_OP,
        kvm_bindings::KVMIO,
        0xba,
        libc::c_ulong
    );
}
use nr::KVM_MEMORY_ENCRYPT_OP;

/// `KVM_MEMORY_ENCRYPT_OP` with `cmd` on `fd` (a TDX VM's VM fd or one of its vCPU fds).
///
/// # Safety
/// `fd` must be a KVM VM or vCPU fd; when `cmd.data` is an address (every command but
/// `INIT_VCPU`), it must point to memory of the layout the command id names, valid for
/// reads and writes for the whole call; for `INIT_MEM_REGION`, the struct's `source_addr`
/// must be `nr_pages` pages of readable memory of this process.
///
/// # Errors
/// The ioctl's errno (`cmd.hw_error` then holds the module's status, if any).
pub unsafe fn encrypt_op(fd: RawFd, cmd: &mut kvm_tdx_cmd) -> Result<(), Errno> {
    // SAFETY: ioctl(2) with KVM_MEMORY_ENCRYPT_OP reads and writes one `struct kvm_tdx_cmd`
    // (24 bytes, the layout asserted above) through the pointer, which is a live exclusive
    // borrow; what `cmd.data` points at is the caller's promise (# Safety).
    let ret = unsafe { libc::ioctl(fd, KVM_MEMORY_ENCRYPT_OP() as _, std::ptr::from_mut(cmd)) };
    if ret < 0 {
        return Err(Errno::last());
    }
    Ok(())
}

fn coco_err(errno: Errno, hw_error: u64) -> CocoError {
    CocoError {
        errno,
        fw_error: (hw_error != 0).then_some(FwStatus::Tdx(hw_error)),
    }
}

/// A SHA-384 as the kernel's `__u64[6]`, byte for byte.
fn words48(b: &[u8; 48]) -> [u64; 6] {
    let mut w = [0u64; 6];
    for (d, c) in w.iter_mut().zip(b.chunks_exact(8)) {
        let mut a = [0u8; 8];
        a.copy_from_slice(c);
        *d = u64::from_ne_bytes(a);
    }
    w
}

/// Issues a VM-scoped TDX command on the VM fd `fd`.
///
/// # Safety
/// `fd` must be a KVM VM fd (of a TDX VM, or the kernel refuses the command).
///
/// # Errors
/// [`CocoError`] with the TDX module's `hw_error`.
pub unsafe fn vm_cmd(fd: RawFd, cmd: &mut TdxVmCmd<'_>) -> Result<(), CocoError> {
    match cmd {
        TdxVmCmd::Capabilities(caps) => {
            let mut buf = WithCpuid::new(
                std::mem::size_of::<kvm_tdx_capabilities>(),
                CAPS_CPUID_ENTRIES,
            );
            buf.set_nent(CAPS_CPUID_ENTRIES as u32);
            let mut c = kvm_tdx_cmd {
                id: cmd_id::CAPABILITIES,
                data: buf.as_mut_ptr() as u64,
                ..Default::default()
            };
            // SAFETY: encrypt_op needs a VM or vCPU fd (the caller's promise) and `data`
            // pointing to a `kvm_tdx_capabilities` with room for `cpuid.nent` entries, valid
            // for the call: `buf` is an 8-byte aligned live buffer of the header size plus
            // CAPS_CPUID_ENTRIES × 40 bytes, with nent = CAPS_CPUID_ENTRIES.
            unsafe { encrypt_op(fd, &mut c) }.map_err(|e| coco_err(e, c.hw_error))?;
            let cpuid = buf.entries().map_err(CocoError::from)?;
            **caps = TdxCapabilities {
                supported_attrs: buf.u64_at(0),
                supported_xfam: buf.u64_at(8),
                user_tdvmcallinfo_1_r11: buf.u64_at(24),
                user_tdvmcallinfo_1_r12: buf.u64_at(40),
                cpuid: cpuid.as_slice().to_vec(),
            };
            Ok(())
        }
        TdxVmCmd::InitVm {
            attributes,
            xfam,
            mrconfigid,
            mrowner,
            mrownerconfig,
            cpuid,
        } => {
            let entries = cpuid.as_slice();
            let mut buf = WithCpuid::new(std::mem::size_of::<kvm_tdx_init_vm>(), entries.len());
            buf.set_init_vm(&kvm_tdx_init_vm {
                attributes: *attributes,
                xfam: *xfam,
                mrconfigid: words48(mrconfigid),
                mrowner: words48(mrowner),
                mrownerconfig: words48(mrownerconfig),
                reserved: [0; 12],
                cpuid: kvm_cpuid2_head::default(),
            });
            buf.set_entries(entries);
            let mut c = kvm_tdx_cmd {
                id: cmd_id::INIT_VM,
                data: buf.as_mut_ptr() as u64,
                ..Default::default()
            };
            // SAFETY: encrypt_op needs a VM fd (the caller's promise) and `data` pointing to
            // a `kvm_tdx_init_vm` followed by `cpuid.nent` entries: `buf` is 8-byte aligned,
            // sized header + nent × 40, and lives across the call.
            unsafe { encrypt_op(fd, &mut c) }.map_err(|e| coco_err(e, c.hw_error))
        }
        TdxVmCmd::FinalizeVm => {
            let mut c = kvm_tdx_cmd {
                id: cmd_id::FINALIZE_VM,
                ..Default::default()
            };
            // SAFETY: encrypt_op needs a VM fd (the caller's promise); FINALIZE_VM reads no
            // memory through `data` (0).
            unsafe { encrypt_op(fd, &mut c) }.map_err(|e| coco_err(e, c.hw_error))
        }
    }
}

/// Issues a vCPU-scoped TDX command on the vCPU fd `fd`; `INIT_MEM_REGION`'s progress
/// (`gpa`, source offset, `nr_pages`) is copied back even when the call fails, as the kernel
/// copies the struct back (`../shared/spec/kvm-coco-abi.md` §3.1).
///
/// # Safety
/// `fd` must be a KVM vCPU fd.
///
/// # Errors
/// [`CocoError`] with the TDX module's `hw_error`; `EINVAL` before any call for a source
/// range outside its mapping.
pub unsafe fn vcpu_cmd(fd: RawFd, cmd: &mut TdxVcpuCmd<'_>) -> Result<(), CocoError> {
    match cmd {
        TdxVcpuCmd::InitVcpu { rcx } => {
            let mut c = kvm_tdx_cmd {
                id: cmd_id::INIT_VCPU,
                data: *rcx,
                ..Default::default()
            };
            // SAFETY: encrypt_op needs a vCPU fd (the caller's promise); INIT_VCPU takes
            // `data` as a value (the initial RCX), not a pointer.
            unsafe { encrypt_op(fd, &mut c) }.map_err(|e| coco_err(e, c.hw_error))
        }
        TdxVcpuCmd::InitMemRegion(r) => {
            let einval = CocoError::errno(libc::EINVAL);
            let len = r.nr_pages.checked_mul(4096).ok_or(einval)?;
            let end = r.source.offset.checked_add(len).ok_or(einval)?;
            if end > r.source.mapping.len() as u64 {
                return Err(einval);
            }
            let base = r.source.mapping.host_addr();
            let mut region = kvm_tdx_init_mem_region {
                source_addr: base.checked_add(r.source.offset).ok_or(einval)?,
                gpa: r.gpa,
                nr_pages: r.nr_pages,
            };
            let mut c = kvm_tdx_cmd {
                id: cmd_id::INIT_MEM_REGION,
                flags: if r.measure {
                    KVM_TDX_MEASURE_MEMORY_REGION
                } else {
                    0
                },
                data: std::ptr::from_mut(&mut region) as u64,
                ..Default::default()
            };
            // SAFETY: encrypt_op needs a vCPU fd (the caller's promise), `data` pointing to a
            // live `kvm_tdx_init_mem_region` (a local, borrowed for the call) and its
            // `source_addr` covering `nr_pages` readable pages: [offset, offset + len) was
            // checked above to lie inside `mapping`, which the `Source` borrow keeps mapped.
            let res = unsafe { encrypt_op(fd, &mut c) };
            r.gpa = region.gpa;
            r.source.offset = region.source_addr.saturating_sub(base);
            r.nr_pages = region.nr_pages;
            res.map_err(|e| coco_err(e, c.hw_error))
        }
        TdxVcpuCmd::GetCpuid(out) => {
            if out.nent > GET_CPUID_MAX_ENTRIES {
                return Err(CocoError::errno(libc::EINVAL));
            }
            let head = std::mem::size_of::<kvm_cpuid2_head>();
            let mut buf = WithCpuid::new(head, out.nent as usize);
            buf.set_nent(out.nent);
            let mut c = kvm_tdx_cmd {
                id: cmd_id::GET_CPUID,
                data: buf.as_mut_ptr() as u64,
                ..Default::default()
            };
            // SAFETY: encrypt_op needs a vCPU fd (the caller's promise) and `data` pointing
            // to a `struct kvm_cpuid2` with room for `nent` entries, valid for reads and
            // writes during the call: `buf` is an 8-byte aligned live buffer of the 8-byte
            // head plus `nent` × 40 bytes, with the head's `nent` set to that room (the
            // kernel writes at most `nent` entries, `tdx_vcpu_get_cpuid`).
            let res = unsafe { encrypt_op(fd, &mut c) };
            // The head (nent) is copied back on success and on E2BIG alike.
            let nent = buf.head_nent();
            out.nent = nent;
            res.map_err(|e| coco_err(e, c.hw_error))?;
            out.entries = buf.entries().map_err(CocoError::from)?.as_slice().to_vec();
            Ok(())
        }
    }
}

/// `TDVMCALL_STATUS_SUCCESS` (`arch/x86/include/asm/shared/tdx.h`).
pub const TDVMCALL_STATUS_SUCCESS: u64 = 0;
/// `TDVMCALL_STATUS_SUBFUNC_UNSUPPORTED` (`arch/x86/include/asm/shared/tdx.h`:
/// `0x8000000000000003ULL`).
pub const TDVMCALL_STATUS_SUBFUNC_UNSUPPORTED: u64 = 0x8000_0000_0000_0003;
/// `TDVMCALL_GET_TD_VM_CALL_INFO` (`arch/x86/include/asm/shared/tdx.h`: 0x10000).
pub const TDVMCALL_GET_TD_VM_CALL_INFO: u64 = 0x10000;
/// `TDVMCALL_GET_QUOTE` (0x10002).
pub const TDVMCALL_GET_QUOTE: u64 = 0x10002;
/// `TDVMCALL_SETUP_EVENT_NOTIFY_INTERRUPT` (0x10004).
pub const TDVMCALL_SETUP_EVENT_NOTIFY_INTERRUPT: u64 = 0x10004;

/// A `KVM_EXIT_TDX` exit, from `kvm_run`'s `tdx` union member (`include/uapi/linux/kvm.h`:
/// `struct { __u64 flags; __u64 nr; union { struct { __u64 ret; __u64 data[5]; } unknown;
/// get_quote {ret, gpa, size}; get_tdvmcall_info {ret, leaf, r11, r12, r13, r14};
/// setup_event_notify {ret, vector}; }; } tdx;` at byte 32 of `struct kvm_run`;
/// `../shared/spec/kvm-coco-abi.md` §3.2).
#[derive(Debug)]
pub struct TdxExit<'a> {
    /// The TDVMCALL sub-function (`TDVMCALL_*`).
    pub nr: u64,
    /// The words after `ret`: `gpa, size` (GetQuote), `leaf, r11..r14`
    /// (GetTdVmCallInfo; the VMM writes r11..r14), `vector` (SetupEventNotifyInterrupt).
    pub data: &'a mut [u64; 5],
    /// The TDVMCALL status the guest gets: written by the VMM before the next `KVM_RUN`.
    pub ret: &'a mut u64,
}

/// Byte offset of `kvm_run`'s exit union (`include/uapi/linux/kvm.h`).
const KVM_RUN_EXIT_UNION: usize = 32;

/// The `KVM_EXIT_TDX` view of `run`, or `None` for another exit.
pub fn decode_tdx_exit(run: &mut kvm_bindings::kvm_run) -> Option<TdxExit<'_>> {
    if run.exit_reason != KVM_EXIT_TDX {
        return None;
    }
    // `tdx` is { flags, nr, ret, data[5] }: 8 u64 words at the start of the union.
    let base = std::ptr::addr_of_mut!(run.__bindgen_anon_1).cast::<[u64; 8]>();
    // SAFETY: `base` points into `*run`, which `&mut` borrows exclusively for the returned
    // lifetime; the union is 256 bytes (asserted) and 8-byte aligned (it holds u64 members),
    // so the 64 bytes of `[u64; 8]` are in bounds and aligned; every bit pattern is a valid
    // u64; the kernel wrote `tdx` for exit_reason KVM_EXIT_TDX, checked above.
    let words = unsafe { &mut *base };
    let (head, data) = words.split_at_mut(3);
    let nr = head[1];
    let ret = &mut head[2];
    let data: &mut [u64; 5] = data.try_into().ok()?;
    Some(TdxExit { nr, data, ret })
}

const _: () = {
    use std::mem::{align_of, offset_of, size_of};
    assert!(offset_of!(kvm_bindings::kvm_run, __bindgen_anon_1) == KVM_RUN_EXIT_UNION);
    assert!(size_of::<kvm_bindings::kvm_run__bindgen_ty_1>() == 256);
    assert!(align_of::<kvm_bindings::kvm_run__bindgen_ty_1>() >= 8);
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_and_ids_match_the_uapi() {
        assert_eq!(std::mem::size_of::<kvm_tdx_cmd>(), 24);
        assert_eq!(std::mem::size_of::<kvm_tdx_init_mem_region>(), 24);
        // `_IOWR(0xAE, 0xBA, unsigned long)` = 0xC008AEBA on x86_64.
        assert_eq!(KVM_MEMORY_ENCRYPT_OP(), 0xC008_AEBA);
        assert_eq!(
            (
                cmd_id::CAPABILITIES,
                cmd_id::INIT_MEM_REGION,
                cmd_id::GET_CPUID
            ),
            (0, 3, 5)
        );
    }

    #[test]
    fn tdx_exit_fields_are_where_the_uapi_puts_them() {
        let mut run = kvm_bindings::kvm_run {
            exit_reason: KVM_EXIT_TDX,
            ..Default::default()
        };
        // Bytes 40 (nr), 48 (ret), 56 (get_quote.gpa), 64 (size) of struct kvm_run.
        let put = |run: &mut kvm_bindings::kvm_run, at: usize, v: u64| {
            // SAFETY: test-only write of 8 bytes inside `*run` (at + 8 ≤ 32 + 256).
            unsafe {
                std::ptr::from_mut(run)
                    .cast::<u8>()
                    .wrapping_add(at)
                    .cast::<u64>()
                    .write_unaligned(v)
            }
        };
        put(&mut run, 40, TDVMCALL_GET_QUOTE);
        put(&mut run, 48, TDVMCALL_STATUS_SUBFUNC_UNSUPPORTED);
        put(&mut run, 56, 0x7000);
        put(&mut run, 64, 0x2000);
        let e = decode_tdx_exit(&mut run).unwrap();
        assert_eq!(
            (e.nr, *e.ret, e.data[0], e.data[1]),
            (
                TDVMCALL_GET_QUOTE,
                TDVMCALL_STATUS_SUBFUNC_UNSUPPORTED,
                0x7000,
                0x2000
            )
        );
        *e.ret = TDVMCALL_STATUS_SUCCESS;
        // SAFETY: test-only read of 8 bytes inside `run`.
        let back = unsafe {
            std::ptr::from_ref(&run)
                .cast::<u8>()
                .wrapping_add(48)
                .cast::<u64>()
                .read_unaligned()
        };
        assert_eq!(back, 0);
        run.exit_reason = kvm_bindings::KVM_EXIT_IO;
        assert!(decode_tdx_exit(&mut run).is_none());
    }

    #[test]
    fn init_vm_buffer_puts_entries_at_byte_264() {
        let mut b = WithCpuid::new(std::mem::size_of::<kvm_tdx_init_vm>(), 2);
        assert_eq!(b.as_mut_ptr() as usize % 8, 0);
        let hdr = kvm_tdx_init_vm {
            attributes: 0x1000_0000,
            xfam: 0xE7,
            mrconfigid: [0; 6],
            mrowner: [1; 6],
            mrownerconfig: [0; 6],
            reserved: [0; 12],
            cpuid: kvm_cpuid2_head::default(),
        };
        b.set_init_vm(&hdr);
        let e = kvm_cpuid_entry2 {
            function: 7,
            index: 0,
            ebx: 0xAABB_CCDD,
            ..Default::default()
        };
        b.set_entries(&[e]);
        let bytes = b.bytes_mut();
        assert_eq!(bytes.len(), 264 + 80);
        assert_eq!(bytes[0..8], 0x1000_0000u64.to_ne_bytes());
        assert_eq!(bytes[64..72], 1u64.to_ne_bytes());
        // nent = 1 at 256, entry 0 at 264: function 7, ebx at +16.
        assert_eq!(bytes[256..260], 1u32.to_ne_bytes());
        assert_eq!(bytes[264..268], 7u32.to_ne_bytes());
        assert_eq!(bytes[280..284], 0xAABB_CCDDu32.to_ne_bytes());
        let back = b.entries().unwrap();
        assert_eq!(back.as_slice(), &[e]);
    }
}
