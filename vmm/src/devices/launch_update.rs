//! `etc/vmlaunchupdate`: QEMU's vm-launch-update device, the guest's way to hand the VMM a
//! new bundle for its next reset (`docs/fuki.md`).
//!
//! The ABI is QEMU's, checked against its source: `docs/specs/vmlaunchupdate.rst`,
//! `include/standard-headers/misc/vmlaunchupdate.h` and `hw/misc/vmlaunchupdate.c` (qemu
//! master, commits eea8fe61 / 30688c02). One fw_cfg file of [`SIZE`] bytes, a packed
//! little-endian structure ([`Regs`]), readable and writable by fw_cfg DMA. A write copies
//! the guest's bytes into the file, then runs QEMU's write callback (`launch_update_write`)
//! on the whole structure, in its order:
//!
//! 1. `status` = 0 ([`STATUS_SUCCESS`]);
//! 2. interface disabled → nothing (the write is ignored);
//! 3. `control` has [`CTL_DISABLE`] → the interface is disabled (latched; an image in the
//!    same write is **not** loaded, as in QEMU);
//! 4. image address and size both 0 and `control` has [`CTL_HOST_IGVM`] → the host's bundle
//!    runs at the next reset;
//! 5. an address or size given without [`FORMAT_IGVM`] in `control` → status
//!    [`STATUS_LOAD_FAIL`];
//! 6. [`FORMAT_IGVM`] in `control` → the image is loaded: the session was not started from
//!    an IGVM bundle → [`STATUS_NOT_IGVM_INIT`]; address or size 0, size over [`MAX_IMAGE`],
//!    a range not inside one guest RAM region or holding a private page, not an IGVM file,
//!    a bundle the planner refuses for this platform and launch config, a bundle the store
//!    cannot keep → [`STATUS_LOAD_FAIL`]; otherwise it is handed over
//!    ([`crate::launch::LaunchSlot`]): it runs from the next reset on, or for that reset
//!    only when `control` has [`CTL_HOST_IGVM`];
//! 7. on success (and when nothing was asked) the image address and size are cleared.
//!
//! Selecting the file re-initialises `version`, `capabilities` and `control` (QEMU
//! `launch_update_select`: `control` = [`CTL_DISABLE`] if disabled, else 0); `status`, the
//! addresses and the opaque region keep what the last write left. The device state lives
//! for the whole session (it is not reset by a relaunch), as QEMU's does.
//!
//! Where we differ from QEMU's source, on purpose (each also in `docs/fuki.md`):
//! - one-shot or permanent is decided by the [`CTL_HOST_IGVM`] bit of the write that handed
//!   the image over. QEMU decides at reset from the `control` field as it is then, which a
//!   re-select clears (so in QEMU a guest that reads `status` back before resetting turns a
//!   one-shot hand-over into a permanent one);
//! - a hand-over made while a one-shot launch runs wins over the return to the host's
//!   bundle (QEMU restores the host's IGVM and drops it, although its status said 0);
//! - the image is planned, not only parsed, at the write: a bundle that parses but cannot
//!   launch on this platform fails with status 1 then, not at the reset;
//! - at most [`MAX_REQUESTS`] requests per launch are processed and audited; later image
//!   loads fail with status 1 (counted in the launch's `exit` record).
//!
//! The opaque region (`opaque_addr`, `opaque_size`) is carried into the next launch: QEMU
//! keeps all shared guest memory across a reset; we give every launch fresh RAM, so the
//! region (at most [`MAX_OPAQUE`] bytes, in one region of shared memory) is copied out when
//! the launch ends ([`LaunchUpdate::save_opaque`]) and back into the same guest-physical
//! pages once the next launch's memory is built ([`Opaque::restore`]), except into pages
//! the new launch imports (its bundle wins).
//!
//! Locking: the file is behind a short lock taken under the devices lock (reads, selects).
//! A write is processed outside the devices lock ([`crate::devices::fw_cfg`] defers it to the
//! vCPU thread after the exit's device work): copying a large image and planning it stall
//! no other vCPU; writes are serialised by a second lock, and a write's effect on the file
//! becomes visible at once when it is done.

use std::sync::{Arc, Mutex, PoisonError};

use crate::handover::{Handover, Swap};
use crate::launch::{By, Change, HandOver, Launch};
use crate::memory::GuestMemory;

/// The fw_cfg file name (`FILE_VMLAUNCHUPDATE`).
pub const FILE_NAME: &str = "etc/vmlaunchupdate";
/// Size of `VMLaunchUpdate` (`QEMU_PACKED`: 2 + 2 + 4 + 6 × 8).
pub const SIZE: usize = 56;

/// Byte offsets of the `VMLaunchUpdate` fields (`vmlaunchupdate.h`, in declaration order,
/// packed).
pub mod offset {
    /// `uint16_t version`.
    pub const VERSION: usize = 0;
    /// `uint16_t status`.
    pub const STATUS: usize = 2;
    /// `uint32_t _padding`.
    pub const PADDING: usize = 4;
    /// `uint64_t capabilities`.
    pub const CAPABILITIES: usize = 8;
    /// `uint64_t control`.
    pub const CONTROL: usize = 16;
    /// `uint64_t fw_image_addr`.
    pub const FW_IMAGE_ADDR: usize = 24;
    /// `uint64_t fw_image_size`.
    pub const FW_IMAGE_SIZE: usize = 32;
    /// `uint64_t opaque_addr`.
    pub const OPAQUE_ADDR: usize = 40;
    /// `uint64_t opaque_size`.
    pub const OPAQUE_SIZE: usize = 48;
}

const _: () = assert!(offset::STATUS == offset::VERSION + 2);
const _: () = assert!(offset::PADDING == offset::STATUS + 2);
const _: () = assert!(offset::CAPABILITIES == offset::PADDING + 4);
const _: () = assert!(offset::CONTROL == offset::CAPABILITIES + 8);
const _: () = assert!(offset::FW_IMAGE_ADDR == offset::CONTROL + 8);
const _: () = assert!(offset::FW_IMAGE_SIZE == offset::FW_IMAGE_ADDR + 8);
const _: () = assert!(offset::OPAQUE_ADDR == offset::FW_IMAGE_SIZE + 8);
const _: () = assert!(offset::OPAQUE_SIZE == offset::OPAQUE_ADDR + 8);
const _: () = assert!(offset::OPAQUE_SIZE + 8 == SIZE);

/// `VM_LAUNCHUPDATE_VERSION`.
pub const VERSION: u16 = 1;
/// `VM_LAUNCHUPDATE_FORMAT_IGVM` (in `capabilities` and `control`).
pub const FORMAT_IGVM: u64 = 1 << 32;
/// `VM_LAUNCHUPDATE_CTL_DISABLE`.
pub const CTL_DISABLE: u64 = 1 << 0;
/// `VM_LAUNCHUPDATE_CTL_HOST_IGVM`.
pub const CTL_HOST_IGVM: u64 = 1 << 1;
/// `VM_LAUNCHUPDATE_SUCCESS`.
pub const STATUS_SUCCESS: u16 = 0;
/// `VM_LAUNCHUPDATE_LOAD_FAIL`.
pub const STATUS_LOAD_FAIL: u16 = 1;
/// `VM_LAUNCHUPDATE_NOT_IGVM_INIT`.
pub const STATUS_NOT_IGVM_INIT: u16 = 2;

/// Largest image the guest may hand over (our limit; QEMU has none). 64 MiB holds an OVMF
/// build plus a UKI with a large initrd; the copy is one allocation of this size at most.
pub const MAX_IMAGE: u64 = 64 << 20;
/// Largest opaque region carried into the next launch (our limit: it is copied twice per
/// relaunch, on the relaunch path).
pub const MAX_OPAQUE: u64 = 1 << 20;
/// Requests processed (and audited) per launch at most (module doc).
pub const MAX_REQUESTS: u64 = 16;

/// `VMLaunchUpdate`, typed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Regs {
    /// `version`.
    pub version: u16,
    /// `status`.
    pub status: u16,
    /// `_padding`.
    pub padding: u32,
    /// `capabilities`.
    pub capabilities: u64,
    /// `control`.
    pub control: u64,
    /// `fw_image_addr`.
    pub fw_image_addr: u64,
    /// `fw_image_size`.
    pub fw_image_size: u64,
    /// `opaque_addr`.
    pub opaque_addr: u64,
    /// `opaque_size`.
    pub opaque_size: u64,
}

fn u16_at(b: &[u8; SIZE], at: usize) -> u16 {
    let mut v = [0u8; 2];
    if let Some(s) = b.get(at..at + 2) {
        v.copy_from_slice(s);
    }
    u16::from_le_bytes(v)
}

fn u32_at(b: &[u8; SIZE], at: usize) -> u32 {
    let mut v = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        v.copy_from_slice(s);
    }
    u32::from_le_bytes(v)
}

fn u64_at(b: &[u8; SIZE], at: usize) -> u64 {
    let mut v = [0u8; 8];
    if let Some(s) = b.get(at..at + 8) {
        v.copy_from_slice(s);
    }
    u64::from_le_bytes(v)
}

fn put(b: &mut [u8; SIZE], at: usize, v: &[u8]) {
    if let Some(d) = b.get_mut(at..at + v.len()) {
        d.copy_from_slice(v);
    }
}

impl Regs {
    /// Decodes the file's bytes.
    pub fn from_bytes(b: &[u8; SIZE]) -> Regs {
        Regs {
            version: u16_at(b, offset::VERSION),
            status: u16_at(b, offset::STATUS),
            padding: u32_at(b, offset::PADDING),
            capabilities: u64_at(b, offset::CAPABILITIES),
            control: u64_at(b, offset::CONTROL),
            fw_image_addr: u64_at(b, offset::FW_IMAGE_ADDR),
            fw_image_size: u64_at(b, offset::FW_IMAGE_SIZE),
            opaque_addr: u64_at(b, offset::OPAQUE_ADDR),
            opaque_size: u64_at(b, offset::OPAQUE_SIZE),
        }
    }

    /// Encodes the file's bytes.
    pub fn to_bytes(&self) -> [u8; SIZE] {
        let mut b = [0u8; SIZE];
        put(&mut b, offset::VERSION, &self.version.to_le_bytes());
        put(&mut b, offset::STATUS, &self.status.to_le_bytes());
        put(&mut b, offset::PADDING, &self.padding.to_le_bytes());
        put(
            &mut b,
            offset::CAPABILITIES,
            &self.capabilities.to_le_bytes(),
        );
        put(&mut b, offset::CONTROL, &self.control.to_le_bytes());
        put(
            &mut b,
            offset::FW_IMAGE_ADDR,
            &self.fw_image_addr.to_le_bytes(),
        );
        put(
            &mut b,
            offset::FW_IMAGE_SIZE,
            &self.fw_image_size.to_le_bytes(),
        );
        put(&mut b, offset::OPAQUE_ADDR, &self.opaque_addr.to_le_bytes());
        put(&mut b, offset::OPAQUE_SIZE, &self.opaque_size.to_le_bytes());
        b
    }

    /// Both image fields are 0 (QEMU `fw_address_cleared`).
    pub fn image_cleared(&self) -> bool {
        self.fw_image_addr == 0 && self.fw_image_size == 0
    }
}

#[derive(Debug)]
struct State {
    file: [u8; SIZE],
    /// QEMU `VMLaunchUpdateState.disabled`.
    disabled: bool,
    /// Requests made in the running launch, and those past [`MAX_REQUESTS`].
    requests: u64,
    over_limit: u64,
    /// Selects so far: a write notices the selects made while it was processed.
    selects: u64,
}

/// A write copied into the file's image, not yet processed ([`LaunchUpdate::write`]).
struct Begun {
    file: [u8; SIZE],
    disabled: bool,
    over: bool,
    /// [`State::selects`] when the write began.
    selects: u64,
}

/// A processed write, to be stored.
struct Done {
    file: [u8; SIZE],
    latch: bool,
    selects: u64,
    status: u16,
}

/// The device, one per session (module doc).
#[derive(Debug)]
pub struct LaunchUpdate {
    state: Mutex<State>,
    /// Serialises writes (never taken under the devices lock).
    writer: Mutex<()>,
    handover: Arc<Handover>,
}

/// Requests of one launch, for its `exit` record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct RequestCounts {
    /// Writes that asked for something.
    pub requests: u64,
    /// Of those, the ones past [`MAX_REQUESTS`] (not audited; image loads refused).
    pub over_limit: u64,
}

/// What one write asks for (decided on the structure as written).
enum Ask {
    Nothing,
    Ignored,
    Disable,
    Original,
    NoFormat,
    Load {
        addr: u64,
        size: u64,
        one_shot: bool,
    },
}

impl LaunchUpdate {
    /// The device for a session whose hand-overs go through `handover`; the file as QEMU
    /// realises it (`clear_init_vm_launch_update`: zeros, then version, capabilities,
    /// control).
    pub fn new(handover: Arc<Handover>) -> LaunchUpdate {
        let regs = Regs {
            version: VERSION,
            capabilities: FORMAT_IGVM,
            ..Regs::default()
        };
        LaunchUpdate {
            state: Mutex::new(State {
                file: regs.to_bytes(),
                disabled: false,
                requests: 0,
                over_limit: 0,
                selects: 0,
            }),
            writer: Mutex::new(()),
            handover,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The file's bytes now.
    pub fn read(&self) -> [u8; SIZE] {
        self.lock().file
    }

    /// The file, typed.
    pub fn regs(&self) -> Regs {
        Regs::from_bytes(&self.read())
    }

    /// Whether the guest disabled the interface.
    pub fn disabled(&self) -> bool {
        self.lock().disabled
    }

    /// The guest selected the file (QEMU `launch_update_select` → `init_vm_launch_update`).
    pub fn select(&self) {
        let mut s = self.lock();
        s.selects = s.selects.wrapping_add(1);
        Self::reinit(&mut s);
    }

    /// QEMU `init_vm_launch_update` on the file.
    fn reinit(s: &mut State) {
        let mut r = Regs::from_bytes(&s.file);
        r.version = VERSION;
        r.capabilities = FORMAT_IGVM;
        r.control = if s.disabled { CTL_DISABLE } else { 0 };
        s.file = r.to_bytes();
    }

    /// The guest wrote `bytes` at `at` (a fw_cfg DMA write, already bounds-checked against
    /// the file by fw_cfg; anything else is ignored). Processes the whole structure (module
    /// doc) and returns the status it sets. Guest memory `mem` holds the image.
    ///
    /// Writes are serialised. A select made (by another vCPU) while a write is processed
    /// is applied again once the write's result is stored: the file then reads as if the
    /// select came after the write, never as the write's result with the select lost.
    pub fn write(&self, at: usize, bytes: &[u8], mem: &GuestMemory) -> u16 {
        let _one = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        match self.begin(at, bytes) {
            Ok(begun) => self.commit(self.process(begun, mem)),
            Err(status) => status,
        }
    }

    /// The write's bytes copied into an image of the file, the request counted; `Err` with
    /// the current status for a range outside the file (nothing written). Under the writer
    /// lock.
    fn begin(&self, at: usize, bytes: &[u8]) -> Result<Begun, u16> {
        let mut s = self.lock();
        let ask_something = |f: &[u8; SIZE]| {
            let r = Regs::from_bytes(f);
            r.control != 0 || !r.image_cleared()
        };
        let mut f = s.file;
        let Some(dst) = at
            .checked_add(bytes.len())
            .and_then(|end| f.get_mut(at..end))
        else {
            return Err(Regs::from_bytes(&s.file).status);
        };
        dst.copy_from_slice(bytes);
        let over = if ask_something(&f) {
            s.requests = s.requests.saturating_add(1);
            let over = s.requests > MAX_REQUESTS;
            if over {
                s.over_limit = s.over_limit.saturating_add(1);
            }
            over
        } else {
            false
        };
        Ok(Begun {
            file: f,
            disabled: s.disabled,
            over,
            selects: s.selects,
        })
    }

    /// Stores a processed write: the file, the latch, and the selects made meanwhile
    /// ([`LaunchUpdate::write`]). Returns its status.
    fn commit(&self, done: Done) -> u16 {
        let mut s = self.lock();
        s.file = done.file;
        if done.latch {
            s.disabled = true;
        }
        if s.selects != done.selects {
            Self::reinit(&mut s);
        }
        done.status
    }

    /// Runs QEMU's write callback on the file image of `begun` (module doc): decides, loads,
    /// hands over, audits. Outside the state lock.
    fn process(&self, begun: Begun, mem: &GuestMemory) -> Done {
        let Begun {
            mut file,
            disabled,
            over,
            selects,
        } = begun;
        let r = Regs::from_bytes(&file);
        let ask = if disabled {
            if r.control != 0 || !r.image_cleared() {
                Ask::Ignored
            } else {
                Ask::Nothing
            }
        } else if r.control & CTL_DISABLE != 0 {
            Ask::Disable
        } else if r.image_cleared() && r.control & CTL_HOST_IGVM != 0 {
            Ask::Original
        } else if r.control & FORMAT_IGVM == 0 && !r.image_cleared() {
            Ask::NoFormat
        } else if r.control & FORMAT_IGVM != 0 {
            Ask::Load {
                addr: r.fw_image_addr,
                size: r.fw_image_size,
                one_shot: r.control & CTL_HOST_IGVM != 0,
            }
        } else {
            Ask::Nothing
        };
        let image = Some((r.fw_image_addr, r.fw_image_size));
        let mut swap = Swap {
            by: Some(By::Guest),
            image,
            ..Swap::default()
        };
        let mut recorded = false;
        let (status, clear, latch) = match ask {
            Ask::Nothing => (STATUS_SUCCESS, true, false),
            Ask::Ignored => {
                swap.request = "ignored";
                swap.result = "ignored: the interface is disabled (CTL_DISABLE)".into();
                (STATUS_SUCCESS, false, false)
            }
            Ask::Disable => {
                swap.request = "disable";
                swap.result = if r.image_cleared() {
                    "disabled until the host's bundle runs again".into()
                } else {
                    "disabled until the host's bundle runs again; the image in the same \
                     write is not loaded (as QEMU)"
                        .into()
                };
                (STATUS_SUCCESS, false, true)
            }
            Ask::Original => {
                swap.request = "original";
                swap.result = "accepted: the host's bundle runs at the next reset".into();
                self.handover.slot().request_original(By::Guest);
                (STATUS_SUCCESS, false, false)
            }
            Ask::NoFormat => {
                swap.request = "bundle";
                swap.status = STATUS_LOAD_FAIL;
                swap.result = "refused: an image address or size without \
                               VM_LAUNCHUPDATE_FORMAT_IGVM in control"
                    .into();
                (STATUS_LOAD_FAIL, false, false)
            }
            Ask::Load {
                addr,
                size,
                one_shot,
            } => {
                swap.request = "bundle";
                swap.one_shot = one_shot;
                let status = if over {
                    STATUS_LOAD_FAIL
                } else {
                    let (status, on_record) = self.load(addr, size, one_shot, mem, &mut swap);
                    recorded = on_record;
                    status
                };
                (status, status == STATUS_SUCCESS, false)
            }
        };
        if !matches!(ask, Ask::Nothing) && !over && !recorded {
            let _ = self.handover.record(&swap);
        }
        put(&mut file, offset::STATUS, &status.to_le_bytes());
        if clear {
            put(&mut file, offset::FW_IMAGE_ADDR, &0u64.to_le_bytes());
            put(&mut file, offset::FW_IMAGE_SIZE, &0u64.to_le_bytes());
        }
        Done {
            file,
            latch,
            selects,
            status,
        }
    }

    /// Loads the image at `[addr, addr + size)` and hands it over; fills `swap`; returns the
    /// status and whether the request is on record already (an accepted one is recorded
    /// before it is handed over).
    fn load(
        &self,
        addr: u64,
        size: u64,
        one_shot: bool,
        mem: &GuestMemory,
        swap: &mut Swap,
    ) -> (u16, bool) {
        let status = self.try_load(addr, size, one_shot, mem, swap);
        (status, status == STATUS_SUCCESS)
    }

    fn try_load(
        &self,
        addr: u64,
        size: u64,
        one_shot: bool,
        mem: &GuestMemory,
        swap: &mut Swap,
    ) -> u16 {
        let fail = |swap: &mut Swap, status: u16, why: String| {
            swap.status = status;
            swap.result = format!("refused: {why}");
            status
        };
        if !self.handover.slot().base().is_some_and(|b| b.is_igvm()) {
            return fail(
                swap,
                STATUS_NOT_IGVM_INIT,
                "the session was not started from an IGVM bundle".into(),
            );
        }
        if addr == 0 || size == 0 {
            return fail(
                swap,
                STATUS_LOAD_FAIL,
                "fw_image_addr and fw_image_size must both be non-zero".into(),
            );
        }
        if size > MAX_IMAGE {
            return fail(
                swap,
                STATUS_LOAD_FAIL,
                format!("an image of {size} bytes is larger than {MAX_IMAGE} bytes"),
            );
        }
        // Checked before anything is allocated: inside one region, every page shared.
        if let Err(e) = mem.shared_range(addr, size) {
            return fail(swap, STATUS_LOAD_FAIL, e.to_string());
        }
        let Ok(len) = usize::try_from(size) else {
            return fail(swap, STATUS_LOAD_FAIL, "size".into());
        };
        let mut image = Vec::new();
        if image.try_reserve_exact(len).is_err() {
            return fail(
                swap,
                STATUS_LOAD_FAIL,
                format!("no host memory for an image of {size} bytes"),
            );
        }
        image.resize(len, 0);
        // One copy: the guest may change its buffer meanwhile, what we plan is this copy.
        if let Err(e) = mem.read(addr, &mut image) {
            return fail(swap, STATUS_LOAD_FAIL, e.to_string());
        }
        if relaunch_core::ovmf::detect(&image) != relaunch_core::ovmf::InputKind::Igvm {
            swap.new_sha256 = Some(crate::json::hex(&<sha2::Sha256 as sha2::Digest>::digest(
                &image,
            )));
            return fail(swap, STATUS_LOAD_FAIL, "not an IGVM file".into());
        }
        let ready = match self.handover.prepare(image) {
            Ok(r) => r,
            Err(e) => return fail(swap, STATUS_LOAD_FAIL, e.to_string()),
        };
        swap.new_sha256 = Some(ready.launch.bundle_sha256().to_owned());
        swap.predicted = ready.launch.predicted_measurement().map(str::to_owned);
        swap.stored = ready.stored.clone();
        swap.plan_cached = Some(ready.cached);
        swap.result = if one_shot {
            "accepted: runs at the next reset, once".into()
        } else {
            "accepted: runs from the next reset on".into()
        };
        // On record before it can run: a hand-over the audit log does not show is refused.
        if let Err(e) = self.handover.record(swap) {
            swap.result = format!("refused: writing the audit log: {e}");
            return STATUS_LOAD_FAIL;
        }
        self.handover.slot().hand_over(HandOver {
            launch: ready.launch,
            by: By::Guest,
            one_shot,
        });
        STATUS_SUCCESS
    }

    /// The running launch's requests so far.
    pub fn counts(&self) -> RequestCounts {
        let s = self.lock();
        RequestCounts {
            requests: s.requests,
            over_limit: s.over_limit,
        }
    }

    /// The session relaunched with `change`: the request budget starts again, and when the
    /// host's bundle was restored (or given) the interface is enabled again and
    /// `CTL_HOST_IGVM` cleared, as QEMU's `vmlaunch_reset_enter` does.
    pub fn relaunched(&self, change: Change) {
        let mut s = self.lock();
        s.requests = 0;
        s.over_limit = 0;
        if change.host_restored() {
            s.disabled = false;
            let mut r = Regs::from_bytes(&s.file);
            r.control &= !CTL_HOST_IGVM;
            s.file = r.to_bytes();
        }
    }

    /// The opaque region of the launch that just ended, copied out of `mem` (its vCPUs are
    /// stopped): `Ok(None)` when the guest set none (`opaque_size` 0).
    ///
    /// # Errors
    /// Why it cannot be carried (too large, outside one RAM region, private): one sentence.
    pub fn save_opaque(&self, mem: &GuestMemory) -> Result<Option<Opaque>, String> {
        let r = self.regs();
        if r.opaque_size == 0 {
            return Ok(None);
        }
        if r.opaque_size > MAX_OPAQUE {
            return Err(format!(
                "opaque region of {} bytes is larger than {MAX_OPAQUE} bytes",
                r.opaque_size
            ));
        }
        let mut bytes = vec![0u8; r.opaque_size as usize];
        mem.read(r.opaque_addr, &mut bytes)
            .map_err(|e| format!("opaque region: {e}"))?;
        Ok(Some(Opaque {
            gpa: r.opaque_addr,
            bytes,
        }))
    }
}

/// An opaque region copied out of an ended launch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Opaque {
    /// Its guest-physical address.
    pub gpa: u64,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

/// What [`Opaque::restore`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct OpaqueReport {
    /// The region.
    pub gpa: u64,
    /// Its size.
    pub size: u64,
    /// Bytes written into the new launch's memory.
    pub restored: u64,
    /// Bytes not written: their page is imported by the new launch (its bundle wins), or
    /// not in its memory.
    pub skipped: u64,
}

impl Opaque {
    /// Writes the region into the new launch's memory `mem` at the same guest-physical
    /// address, page by page, skipping pages `launch` imports (before its vCPUs run; on a
    /// confidential platform into the shared view the guest reads once it converts the
    /// pages to shared).
    pub fn restore(&self, mem: &GuestMemory, launch: &Launch) -> OpaqueReport {
        let page = relaunch_core::limits::PAGE_SIZE;
        let mut report = OpaqueReport {
            gpa: self.gpa,
            size: self.bytes.len() as u64,
            ..OpaqueReport::default()
        };
        let mut done = 0usize;
        while done < self.bytes.len() {
            let gpa = self.gpa.saturating_add(done as u64);
            // Up to the end of this page.
            let room = (page - gpa % page) as usize;
            let n = room.min(self.bytes.len() - done);
            let chunk = self.bytes.get(done..done + n).unwrap_or(&[]);
            let wrote = !launch.imports_page(gpa) && mem.stage(gpa, chunk).is_ok();
            if wrote {
                report.restored += n as u64;
            } else {
                report.skipped += n as u64;
            }
            done += n;
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::AuditLog;
    use crate::handover::tests::{igvm, native_config};
    use crate::launch::LaunchSlot;
    use crate::memory::Region;
    use crate::sys::mem::GuestMapping;
    use crate::testing;

    const MEM: u64 = 16 << 20;

    struct Rig {
        dev: LaunchUpdate,
        slot: Arc<LaunchSlot>,
        mem: GuestMemory,
        audit: std::path::PathBuf,
        first: Arc<Launch>,
    }

    fn rig(name: &str, igvm_base: bool) -> Rig {
        let audit =
            std::env::temp_dir().join(format!("relaunch-lu-{name}-{}.jsonl", std::process::id()));
        let _ = std::fs::remove_file(&audit);
        let log = Arc::new(AuditLog::open(&audit).unwrap());
        let slot = Arc::new(LaunchSlot::new());
        let first = Arc::new(if igvm_base {
            Launch::new(igvm(testing::RESET, &[]), &native_config(MEM)).unwrap()
        } else {
            Launch::from_plan(testing::plan(testing::RESET, &[], 1, MEM, 0))
        });
        slot.start(&first, 1);
        let h = Arc::new(Handover::new(
            Arc::clone(&slot),
            native_config(MEM),
            None,
            Some(log),
        ));
        let mut mem = GuestMemory::default();
        mem.push(Region::shared(
            0,
            Arc::new(GuestMapping::anonymous(MEM as usize).unwrap()),
        ));
        Rig {
            dev: LaunchUpdate::new(h),
            slot,
            mem,
            audit,
            first,
        }
    }

    impl Rig {
        fn records(&self) -> Vec<serde_json::Value> {
            std::fs::read_to_string(&self.audit)
                .unwrap_or_default()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect()
        }

        /// The guest writes the whole structure with `control`, image and opaque fields.
        fn write(&self, control: u64, addr: u64, size: u64) -> u16 {
            let r = Regs {
                version: VERSION,
                capabilities: FORMAT_IGVM,
                control,
                fw_image_addr: addr,
                fw_image_size: size,
                ..Regs::default()
            };
            self.dev.write(0, &r.to_bytes(), &self.mem)
        }

        /// Places `bytes` in guest memory at `gpa`.
        fn place(&self, gpa: u64, bytes: &[u8]) {
            self.mem.write(gpa, bytes).unwrap();
        }
    }

    impl Drop for Rig {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.audit);
        }
    }

    const IMAGE: u64 = 0x10_0000;

    #[test]
    fn layout_matches_qemu() {
        // include/standard-headers/misc/vmlaunchupdate.h: QEMU_PACKED, LE.
        let r = Regs {
            version: 0x0102,
            status: 0x0304,
            padding: 0x0506_0708,
            capabilities: 0x1111_1111_1111_1111,
            control: 0x2222_2222_2222_2222,
            fw_image_addr: 0x3333_3333_3333_3333,
            fw_image_size: 0x4444_4444_4444_4444,
            opaque_addr: 0x5555_5555_5555_5555,
            opaque_size: 0x6666_6666_6666_6666,
        };
        let b = r.to_bytes();
        assert_eq!(&b[..8], &[0x02, 0x01, 0x04, 0x03, 0x08, 0x07, 0x06, 0x05]);
        for (i, v) in [0x11u8, 0x22, 0x33, 0x44, 0x55, 0x66].iter().enumerate() {
            assert_eq!(&b[8 + 8 * i..16 + 8 * i], &[*v; 8]);
        }
        assert_eq!(Regs::from_bytes(&b), r);
        assert_eq!(FORMAT_IGVM, 0x1_0000_0000);
        assert_eq!((CTL_DISABLE, CTL_HOST_IGVM), (1, 2));
        assert_eq!(
            (STATUS_SUCCESS, STATUS_LOAD_FAIL, STATUS_NOT_IGVM_INIT),
            (0, 1, 2)
        );
    }

    /// As QEMU realises it, and what a select re-initialises.
    #[test]
    fn initial_state_and_select() {
        let r = rig("init", true);
        let regs = r.dev.regs();
        assert_eq!(
            regs,
            Regs {
                version: 1,
                capabilities: FORMAT_IGVM,
                ..Regs::default()
            }
        );
        // The guest scribbles over version/capabilities/control: a select restores them,
        // status and the rest stay.
        let junk = Regs {
            version: 9,
            status: 7,
            capabilities: 5,
            control: 0,
            opaque_addr: 0x5000,
            opaque_size: 0x10,
            ..Regs::default()
        };
        r.dev.write(0, &junk.to_bytes(), &r.mem);
        r.dev.select();
        let after = r.dev.regs();
        assert_eq!(
            (after.version, after.capabilities, after.control),
            (1, FORMAT_IGVM, 0)
        );
        assert_eq!(after.status, 0, "status set by the write");
        assert_eq!((after.opaque_addr, after.opaque_size), (0x5000, 0x10));
        assert!(
            r.records().is_empty(),
            "a write that asks nothing is not a request"
        );
    }

    #[test]
    fn accepted_image_is_handed_over_and_audited() {
        let r = rig("ok", true);
        let image = igvm(testing::HELLO, &[]);
        r.place(IMAGE, &image);
        let status = r.write(FORMAT_IGVM, IMAGE, image.len() as u64);
        assert_eq!(status, STATUS_SUCCESS);
        let regs = r.dev.regs();
        assert_eq!(regs.status, 0);
        assert!(regs.image_cleared(), "cleared on success");
        let sha = crate::json::hex(&<sha2::Sha256 as sha2::Digest>::digest(&image));
        assert_eq!(r.slot.pending_sha256().as_deref(), Some(sha.as_str()));
        let recs = r.records();
        assert_eq!(recs.len(), 1);
        let rec = &recs[0];
        assert_eq!(rec["event"], "swap");
        assert_eq!(rec["by"], "guest");
        assert_eq!(rec["request"], "bundle");
        assert_eq!(rec["one_shot"], false);
        assert_eq!(rec["status"], 0);
        assert_eq!(rec["old_bundle_sha256"], r.first.bundle_sha256());
        assert_eq!(rec["new_bundle_sha256"], sha.as_str());
        assert_eq!(rec["image_gpa"], IMAGE);
        assert_eq!(rec["image_size"], image.len() as u64);
        // Permanent: runs at every relaunch from the next on.
        let change = r.slot.relaunch(2).unwrap();
        assert_eq!(change.launch.bundle_sha256(), sha);
        r.dev.relaunched(change.change);
        assert_eq!(r.slot.relaunch(3).unwrap().launch.bundle_sha256(), sha);
    }

    /// Every way an image fails: status 1 (or 2), the addresses kept, nothing handed over,
    /// a refusal on record.
    #[test]
    fn refused_images_never_replace_the_working_bundle() {
        let r = rig("bad", true);
        let good = igvm(testing::HELLO, &[]);
        r.place(IMAGE, &good);
        // Private memory: a confidential region whose pages start private.
        let mut conf = GuestMemory::default();
        let fd = crate::sys::record::memfd(0x10000).unwrap();
        conf.push(Region::private(
            0,
            0x10000,
            Arc::new(std::os::fd::OwnedFd::from(fd)),
            Some(Arc::new(GuestMapping::anonymous(0x10000).unwrap())),
        ));
        let cases: Vec<(&str, u64, u64, u64)> = vec![
            ("no address", FORMAT_IGVM, 0, 100),
            ("no size", FORMAT_IGVM, IMAGE, 0),
            ("too large", FORMAT_IGVM, IMAGE, MAX_IMAGE + 1),
            ("outside RAM", FORMAT_IGVM, MEM - 0x1000, 0x2000),
            ("far outside", FORMAT_IGVM, 1 << 40, 0x1000),
            ("wrapping", FORMAT_IGVM, u64::MAX - 0xFFF, 0x2000),
            ("wrapping size", FORMAT_IGVM, IMAGE, u64::MAX),
            ("truncated", FORMAT_IGVM, IMAGE, good.len() as u64 / 2),
            ("garbage", FORMAT_IGVM, IMAGE + 0x10_0000, 0x1000),
            ("no format bit", 0, IMAGE, good.len() as u64),
            ("no format bit, size only", CTL_HOST_IGVM << 8, 0, 5),
        ];
        r.place(IMAGE + 0x10_0000, &[0xAB; 0x1000]);
        for (what, control, addr, size) in &cases {
            let status = r.write(*control, *addr, *size);
            assert_eq!(status, STATUS_LOAD_FAIL, "{what}");
            let regs = r.dev.regs();
            assert_eq!(regs.status, STATUS_LOAD_FAIL, "{what}");
            assert_eq!(
                (regs.fw_image_addr, regs.fw_image_size),
                (*addr, *size),
                "{what}: kept"
            );
            assert!(r.slot.pending_sha256().is_none(), "{what}");
        }
        // Private pages, through the confidential memory.
        let private = Regs {
            control: FORMAT_IGVM,
            fw_image_addr: 0x1000,
            fw_image_size: 0x1000,
            ..Regs::default()
        };
        assert_eq!(r.dev.write(0, &private.to_bytes(), &conf), STATUS_LOAD_FAIL);
        assert!(r.slot.pending_sha256().is_none());
        let recs = r.records();
        assert_eq!(recs.len(), cases.len() + 1);
        for rec in &recs {
            assert_eq!(rec["status"], 1, "{rec}");
            assert!(
                rec["result"].as_str().unwrap().starts_with("refused: "),
                "{rec}"
            );
        }
        assert!(recs[5]["result"]
            .as_str()
            .unwrap()
            .contains("not inside one guest memory"));
        assert!(recs[8]["result"]
            .as_str()
            .unwrap()
            .contains("not an IGVM file"));
        assert!(recs.last().unwrap()["result"]
            .as_str()
            .unwrap()
            .contains("private"));
        // The relaunch runs the first launch.
        assert_eq!(r.slot.relaunch(2).unwrap().launch.id(), r.first.id());
    }

    /// A session not started from an IGVM bundle: status 2, checked before the address.
    #[test]
    fn not_started_from_igvm() {
        let r = rig("notigvm", false);
        let image = igvm(testing::HELLO, &[]);
        r.place(IMAGE, &image);
        assert_eq!(
            r.write(FORMAT_IGVM, IMAGE, image.len() as u64),
            STATUS_NOT_IGVM_INIT
        );
        assert_eq!(r.write(FORMAT_IGVM, 0, 0), STATUS_NOT_IGVM_INIT);
        assert!(r.slot.pending_sha256().is_none());
        assert_eq!(r.records()[0]["status"], 2);
    }

    /// CTL_DISABLE latches; while disabled every write is ignored (status 0, addresses kept);
    /// a select shows it in control; the host's bundle running again re-enables.
    #[test]
    fn disable_latches_until_the_host_bundle_runs() {
        let r = rig("disable", true);
        let image = igvm(testing::HELLO, &[]);
        r.place(IMAGE, &image);
        // DISABLE with an image in the same write: disabled, image not loaded (QEMU order).
        assert_eq!(
            r.write(FORMAT_IGVM | CTL_DISABLE, IMAGE, image.len() as u64),
            STATUS_SUCCESS
        );
        assert!(r.dev.disabled());
        assert!(r.slot.pending_sha256().is_none());
        assert_eq!(r.dev.regs().fw_image_addr, IMAGE, "not cleared");
        assert_eq!(
            r.write(FORMAT_IGVM, IMAGE, image.len() as u64),
            STATUS_SUCCESS
        );
        assert!(r.slot.pending_sha256().is_none(), "ignored");
        r.dev.select();
        assert_eq!(r.dev.regs().control, CTL_DISABLE);
        // A guest relaunch with no host restore keeps it disabled.
        r.dev.relaunched(Change::Same);
        assert!(r.dev.disabled());
        r.dev.relaunched(Change::HandedOver {
            by: By::Guest,
            one_shot: false,
        });
        assert!(r.dev.disabled());
        r.dev.relaunched(Change::Original(None));
        assert!(!r.dev.disabled());
        assert_eq!(
            r.write(FORMAT_IGVM, IMAGE, image.len() as u64),
            STATUS_SUCCESS
        );
        assert!(r.slot.pending_sha256().is_some());
        let kinds: Vec<_> = r.records().iter().map(|v| v["request"].clone()).collect();
        assert_eq!(kinds, ["disable", "ignored", "bundle"]);
    }

    /// The four combinations of the spec (A–D) as sequences of writes and resets.
    #[test]
    fn control_combinations() {
        let image = igvm(testing::HELLO, &[]);
        let sha = crate::json::hex(&<sha2::Sha256 as sha2::Digest>::digest(&image));
        let size = image.len() as u64;
        for (name, host_igvm, disable) in [
            ("A", false, false),
            ("B", false, true),
            ("C", true, false),
            ("D", true, true),
        ] {
            let r = rig(name, true);
            r.place(IMAGE, &image);
            let one = if host_igvm { CTL_HOST_IGVM } else { 0 };
            assert_eq!(r.write(FORMAT_IGVM | one, IMAGE, size), 0, "{name}");
            // The guest reads the status back (a select clears control in QEMU).
            r.dev.select();
            if disable {
                assert_eq!(r.write(CTL_DISABLE | one, 0, 0), 0, "{name}");
            }
            let g2 = r.slot.relaunch(2).unwrap();
            r.dev.relaunched(g2.change);
            assert_eq!(
                g2.launch.bundle_sha256(),
                sha,
                "{name}: reset 1 runs the image"
            );
            // Updating again: possible unless disabled.
            assert_eq!(r.dev.disabled(), disable, "{name}");
            let g3 = r.slot.relaunch(3).unwrap();
            r.dev.relaunched(g3.change);
            if host_igvm {
                assert_eq!(g3.launch.id(), r.first.id(), "{name}: back to the original");
                assert!(!r.dev.disabled(), "{name}: the original re-enables");
            } else {
                assert_eq!(g3.launch.bundle_sha256(), sha, "{name}: permanent");
                assert_eq!(r.dev.disabled(), disable, "{name}");
            }
        }
    }

    /// CTL_HOST_IGVM with no image: the host's bundle at the next reset, replacing a pending
    /// hand-over.
    #[test]
    fn host_igvm_without_image_restores_the_original() {
        let r = rig("orig", true);
        let image = igvm(testing::HELLO, &[]);
        r.place(IMAGE, &image);
        assert_eq!(r.write(FORMAT_IGVM, IMAGE, image.len() as u64), 0);
        assert_eq!(r.write(CTL_HOST_IGVM | FORMAT_IGVM, 0, 0), 0);
        assert!(r.slot.pending_sha256().is_none());
        let g2 = r.slot.relaunch(2).unwrap();
        assert_eq!(g2.launch.id(), r.first.id());
        assert_eq!(g2.change, Change::Original(Some(By::Guest)));
        assert_eq!(r.records()[1]["request"], "original");
    }

    /// Partial writes are processed with the rest of the structure as it is (QEMU's
    /// callback ignores offset and length); writes outside the structure change nothing.
    #[test]
    fn partial_writes() {
        let r = rig("partial", true);
        let image = igvm(testing::HELLO, &[]);
        r.place(IMAGE, &image);
        r.dev
            .write(offset::FW_IMAGE_ADDR, &IMAGE.to_le_bytes(), &r.mem);
        assert_eq!(
            r.dev.regs().status,
            STATUS_LOAD_FAIL,
            "address without format"
        );
        r.dev.write(
            offset::FW_IMAGE_SIZE,
            &(image.len() as u64).to_le_bytes(),
            &r.mem,
        );
        assert!(r.slot.pending_sha256().is_none());
        assert_eq!(
            r.dev
                .write(offset::CONTROL, &FORMAT_IGVM.to_le_bytes(), &r.mem),
            0
        );
        assert!(r.slot.pending_sha256().is_some());
        let before = r.dev.read();
        assert_eq!(r.dev.write(SIZE - 4, &[1; 8], &r.mem), STATUS_SUCCESS);
        assert_eq!(r.dev.write(usize::MAX, &[1], &r.mem), 0);
        assert_eq!(r.dev.read(), before);
    }

    /// The request budget: past MAX_REQUESTS an image load fails unprocessed and unaudited.
    #[test]
    fn request_budget_per_launch() {
        let r = rig("budget", true);
        for _ in 0..MAX_REQUESTS {
            assert_eq!(r.write(FORMAT_IGVM, 0, 0), STATUS_LOAD_FAIL);
        }
        let image = igvm(testing::HELLO, &[]);
        r.place(IMAGE, &image);
        assert_eq!(
            r.write(FORMAT_IGVM, IMAGE, image.len() as u64),
            STATUS_LOAD_FAIL
        );
        assert!(r.slot.pending_sha256().is_none());
        assert_eq!(
            r.dev.counts(),
            RequestCounts {
                requests: MAX_REQUESTS + 1,
                over_limit: 1
            }
        );
        assert_eq!(r.records().len() as u64, MAX_REQUESTS);
        r.dev.relaunched(Change::Same);
        assert_eq!(r.dev.counts(), RequestCounts::default());
        assert_eq!(r.write(FORMAT_IGVM, IMAGE, image.len() as u64), 0);
    }

    /// Two vCPUs racing writes: each is processed whole, the last accepted one is pending.
    #[test]
    fn racing_writes() {
        let r = Arc::new(rig("race", true));
        let a = igvm(testing::HELLO, &[]);
        let b = igvm(testing::PANIC, &[]);
        r.place(IMAGE, &a);
        r.place(IMAGE + 0x10_0000, &b);
        let shas: Vec<String> = [&a, &b]
            .iter()
            .map(|x| crate::json::hex(&<sha2::Sha256 as sha2::Digest>::digest(x)))
            .collect();
        let threads: Vec<_> = [(IMAGE, a.len()), (IMAGE + 0x10_0000, b.len())]
            .into_iter()
            .map(|(addr, len)| {
                let r = Arc::clone(&r);
                std::thread::spawn(move || {
                    (0..4)
                        .map(|_| r.write(FORMAT_IGVM, addr, len as u64))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for t in threads {
            assert_eq!(t.join().unwrap(), [0; 4]);
        }
        let pending = r.slot.pending_sha256().unwrap();
        assert!(shas.contains(&pending));
        let recs = r.records();
        assert_eq!(recs.len(), 8);
        // The last record is the pending one (writes are serialised).
        assert_eq!(recs[7]["new_bundle_sha256"], pending.as_str());
        // Each was planned once.
        assert_eq!(recs.iter().filter(|v| v["plan_cached"] == false).count(), 2);
    }

    /// Another vCPU selects the file while a write is processed (the write runs outside the
    /// devices lock): the select is applied after the write's result, not lost under it —
    /// `control` reads 0 (or `CTL_DISABLE`) as after any select, `version`/`capabilities`
    /// re-initialised, the write's status and cleared image kept. Before, the write stored
    /// its own image of the file over the select's (`control` read the written value).
    #[test]
    fn a_select_during_a_write_is_not_lost() {
        let r = rig("select-race", true);
        let image = igvm(testing::HELLO, &[]);
        r.place(IMAGE, &image);
        let regs = Regs {
            version: 0xBEEF,
            capabilities: 7,
            control: FORMAT_IGVM,
            fw_image_addr: IMAGE,
            fw_image_size: image.len() as u64,
            ..Regs::default()
        };
        let _one = r.dev.writer.lock().unwrap();
        let begun = r.dev.begin(0, &regs.to_bytes()).ok().unwrap();
        r.dev.select(); // another vCPU, between the copy-in and the commit
        let status = r.dev.commit(r.dev.process(begun, &r.mem));
        assert_eq!(status, STATUS_SUCCESS);
        let after = r.dev.regs();
        assert_eq!(after.status, STATUS_SUCCESS);
        assert!(after.image_cleared());
        assert_eq!(after.control, 0, "the select's control");
        assert_eq!((after.version, after.capabilities), (VERSION, FORMAT_IGVM));
        assert!(
            r.slot.pending_sha256().is_some(),
            "handed over all the same"
        );
        // A DISABLE write with a select meanwhile: latched, and control reads CTL_DISABLE.
        let disable = Regs {
            control: CTL_DISABLE,
            ..Regs::default()
        };
        let begun = r.dev.begin(0, &disable.to_bytes()).ok().unwrap();
        r.dev.select();
        r.dev.commit(r.dev.process(begun, &r.mem));
        assert!(r.dev.disabled());
        assert_eq!(r.dev.regs().control, CTL_DISABLE);
        // Without a select meanwhile the file keeps what was written (as QEMU's).
        drop(_one);
        r.dev.relaunched(Change::Original(None));
        assert_eq!(r.write(FORMAT_IGVM, IMAGE, image.len() as u64), 0);
        assert_eq!(r.dev.regs().control, FORMAT_IGVM);
    }

    #[test]
    fn opaque_region_is_carried_around_imported_pages() {
        let r = rig("opaque", true);
        assert_eq!(r.dev.save_opaque(&r.mem), Ok(None));
        // 3 pages from 0x800 into the code page 0x1000 (imported by the next launch).
        let data: Vec<u8> = (0..0x3000u32).map(|i| (i % 251) as u8).collect();
        r.place(0x800, &data);
        let regs = Regs {
            opaque_addr: 0x800,
            opaque_size: data.len() as u64,
            ..Regs::default()
        };
        r.dev.write(0, &regs.to_bytes(), &r.mem);
        let saved = r.dev.save_opaque(&r.mem).unwrap().unwrap();
        assert_eq!(saved.bytes, data);
        let mut fresh = GuestMemory::default();
        fresh.push(Region::shared(
            0,
            Arc::new(GuestMapping::anonymous(MEM as usize).unwrap()),
        ));
        let next = Launch::from_plan(testing::plan(testing::HELLO, &[], 1, MEM, 0));
        let rep = saved.restore(&fresh, &next);
        // [0x800, 0x1000) and [0x2000, 0x3800) restored; the code page skipped.
        assert_eq!(
            rep,
            OpaqueReport {
                gpa: 0x800,
                size: 0x3000,
                restored: 0x800 + 0x1800,
                skipped: 0x1000
            }
        );
        let mut got = vec![0u8; 0x3000];
        fresh.read(0x800, &mut got).unwrap();
        assert_eq!(&got[..0x800], &data[..0x800]);
        assert_eq!(&got[0x800..0x1800], &[0u8; 0x1000][..]);
        assert_eq!(&got[0x1800..], &data[0x1800..]);
        // Too large, outside RAM, wrapping: not carried, with a reason.
        for (addr, size) in [(0, MAX_OPAQUE + 1), (MEM - 8, 16), (u64::MAX - 7, 16)] {
            let regs = Regs {
                opaque_addr: addr,
                opaque_size: size,
                ..Regs::default()
            };
            r.dev.write(0, &regs.to_bytes(), &r.mem);
            assert!(r.dev.save_opaque(&r.mem).is_err(), "{addr:#x}+{size:#x}");
        }
    }
}
