//! A launch: one bundle, planned once for one launch config, with everything a relaunch
//! reuses — the bundle bytes, the validated plan, the bundle's SHA-256 and the predicted
//! measurement. Owned and immutable, shared by `Arc` between the session, the prestage
//! builder and whoever hands the session its next launch ([`LaunchSlot`]).
//!
//! [`LaunchSlot`] decides what the session launches at each relaunch: the same launch, one
//! handed over (by the guest through `etc/vmlaunchupdate`, or by the host: `run --next`,
//! control `switch-bundle`), or the host's own launch again (`docs/fuki.md`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use relaunch_core::plan::{LaunchConfig, LaunchOp, LaunchPlan, Platform, SnpIdBlock};
use sha2::{Digest, Sha256};

use crate::json::hex;

/// A planned bundle, ready to be launched any number of times.
#[derive(Debug)]
pub struct Launch {
    id: u64,
    plan: LaunchPlan,
    bundle_sha256: String,
    predicted: Option<String>,
    plan_time: Duration,
    /// The guest-physical pages the plan imports, sorted (computed on first use).
    imported: OnceLock<Vec<u64>>,
}

/// Launch ids: unique per process, so per-launch caches can tell launches apart.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl Launch {
    /// Plans `bundle` for `cfg` (once) and predicts its measurement on confidential
    /// platforms.
    ///
    /// # Errors
    /// The planner's or the measurement's message.
    pub fn new(bundle: Vec<u8>, cfg: &LaunchConfig) -> Result<Launch, String> {
        Launch::with_id_block(bundle, cfg, None)
    }

    /// [`Launch::new`], with `id_block` (`--id-block`/`--id-auth`) given at
    /// `SNP_LAUNCH_FINISH` instead of any ID block the bundle carries. The ID block does not
    /// change the launch digest; the firmware checks it against the digest and the policy
    /// at `SNP_LAUNCH_FINISH`.
    ///
    /// # Errors
    /// The planner's or the measurement's message; an ID block for a platform other than SNP.
    pub fn with_id_block(
        bundle: Vec<u8>,
        cfg: &LaunchConfig,
        id_block: Option<SnpIdBlock>,
    ) -> Result<Launch, String> {
        let t = Instant::now();
        let bundle_sha256 = hex(&Sha256::digest(&bundle));
        Launch::planned(bundle, bundle_sha256, cfg, id_block, t)
    }

    /// [`Launch::new`] of a bundle whose SHA-256 (hex) the caller computed already.
    ///
    /// # Errors
    /// The planner's or the measurement's message.
    pub fn with_sha256(
        bundle: Vec<u8>,
        bundle_sha256: String,
        cfg: &LaunchConfig,
    ) -> Result<Launch, String> {
        Launch::planned(bundle, bundle_sha256, cfg, None, Instant::now())
    }

    fn planned(
        bundle: Vec<u8>,
        bundle_sha256: String,
        cfg: &LaunchConfig,
        id_block: Option<SnpIdBlock>,
        t: Instant,
    ) -> Result<Launch, String> {
        let mut plan =
            relaunch_core::plan::plan(Arc::<[u8]>::from(bundle), cfg).map_err(|e| e.to_string())?;
        if let Some(block) = id_block {
            plan = replace_id_block(plan, block)?;
        }
        let predicted = if cfg.platform == Platform::Native {
            None
        } else {
            let m = relaunch_core::measure::expected(plan.stream()).map_err(|e| e.to_string())?;
            Some(hex(m.as_bytes()))
        };
        Ok(Launch {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            plan,
            bundle_sha256,
            predicted,
            plan_time: t.elapsed(),
            imported: OnceLock::new(),
        })
    }

    /// A launch of a plan built by hand (tests, benchmarks).
    pub fn from_plan(plan: LaunchPlan) -> Launch {
        Launch {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            bundle_sha256: hex(&Sha256::digest(plan.bundle())),
            plan,
            predicted: None,
            plan_time: Duration::ZERO,
            imported: OnceLock::new(),
        }
    }

    /// Unique per process.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The validated plan.
    pub fn plan(&self) -> &LaunchPlan {
        &self.plan
    }

    /// The launch config the plan was made for.
    pub fn config(&self) -> &LaunchConfig {
        self.plan.config()
    }

    /// The platform.
    pub fn platform(&self) -> Platform {
        self.plan.config().platform
    }

    /// Guest RAM bytes.
    pub fn mem_bytes(&self) -> u64 {
        self.plan.config().mem_bytes
    }

    /// vCPUs.
    pub fn vcpus(&self) -> u32 {
        self.plan.config().vcpus
    }

    /// SHA-256 of the bundle, hex.
    pub fn bundle_sha256(&self) -> &str {
        &self.bundle_sha256
    }

    /// The launch measurement the platform will report, hex (`None` for native).
    pub fn predicted_measurement(&self) -> Option<&str> {
        self.predicted.as_deref()
    }

    /// How long planning (and predicting) took.
    pub fn plan_time(&self) -> Duration {
        self.plan_time
    }

    /// Whether the bundle is an IGVM file (not an OVMF/TDVF image, not a hand-made plan).
    pub fn is_igvm(&self) -> bool {
        relaunch_core::ovmf::detect(self.plan.bundle()) == relaunch_core::ovmf::InputKind::Igvm
    }

    /// Whether the plan imports the 4 KiB page holding `gpa` (what a launch writes into guest
    /// memory, so nothing carried over from an earlier launch may overwrite it).
    pub fn imports_page(&self, gpa: u64) -> bool {
        let page = gpa & !(relaunch_core::limits::PAGE_SIZE - 1);
        self.imported
            .get_or_init(|| {
                let mut v: Vec<u64> = self
                    .plan
                    .ops()
                    .iter()
                    .filter_map(|op| match op {
                        LaunchOp::ImportPage { gpa, .. } => Some(*gpa),
                        _ => None,
                    })
                    .collect();
                v.sort_unstable();
                v.dedup();
                v
            })
            .binary_search(&page)
            .is_ok()
    }
}

/// `plan` with `block` as the ID block its `Finalize` gives (the bundle's, if any, dropped).
fn replace_id_block(plan: LaunchPlan, block: SnpIdBlock) -> Result<LaunchPlan, String> {
    if plan.platform() != Platform::Snp {
        return Err(format!(
            "an ID block (--id-block) is given at SNP_LAUNCH_FINISH; {} has none",
            plan.platform()
        ));
    }
    let mut parts = plan.into_parts();
    parts.id_block = Some(block);
    if let Some(LaunchOp::Finalize { id_block, .. }) = parts.ops.last_mut() {
        *id_block = true;
    }
    LaunchPlan::from_parts(parts).map_err(|e| e.to_string())
}

/// Who handed a launch over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum By {
    /// The guest, through `etc/vmlaunchupdate` (`devices::launch_update`).
    Guest,
    /// The host: `run --next`, control `switch-bundle`, or [`LaunchSlot::set`].
    Host,
}

impl By {
    /// Name in audit records.
    pub fn name(self) -> &'static str {
        match self {
            By::Guest => "guest",
            By::Host => "host",
        }
    }
}

/// A launch handed to the session for its next relaunch.
#[derive(Clone, Debug)]
pub struct HandOver {
    /// What to launch.
    pub launch: Arc<Launch>,
    /// Who asked.
    pub by: By,
    /// For one launch only: the relaunch after it goes back to the host's launch (QEMU
    /// `VM_LAUNCHUPDATE_CTL_HOST_IGVM`; `run --next`).
    pub one_shot: bool,
}

/// What was asked for the next relaunch and not taken yet.
#[derive(Clone, Debug)]
enum Pending {
    Launch(HandOver),
    /// The host's launch ([`LaunchSlot::base`]).
    Original(By),
}

/// What the session runs at a relaunch, and why it changed (if it did).
#[derive(Clone, Debug)]
pub struct Relaunch {
    /// The launch to build and run.
    pub launch: Arc<Launch>,
    /// What changed.
    pub change: Change,
}

/// Why the launch of a relaunch is what it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Nothing was asked: the launch that ran before runs again.
    Same,
    /// A hand-over takes effect.
    HandedOver {
        /// Who asked.
        by: By,
        /// For this launch only.
        one_shot: bool,
    },
    /// The host's launch again: asked for (`Some`: QEMU `CTL_HOST_IGVM` with no image), or
    /// a one-shot launch ran its one launch (`None`).
    Original(Option<By>),
}

impl Change {
    /// Whether the host's launch runs because the host's bundle was restored or given:
    /// QEMU re-enables the vmlaunchupdate interface when it restores the host's IGVM
    /// (`hw/misc/vmlaunchupdate.c` `vmlaunch_reset_enter`); a host hand-over counts too.
    pub fn host_restored(self) -> bool {
        matches!(
            self,
            Change::Original(_) | Change::HandedOver { by: By::Host, .. }
        )
    }
}

/// What [`LaunchSlot::revert`] restores.
#[derive(Debug)]
struct Undo {
    running: Option<Arc<Launch>>,
    one_shot: bool,
    base: Option<Arc<Launch>>,
}

#[derive(Debug, Default)]
struct SlotState {
    /// The host's launch: the session's first one, or the last permanent host hand-over.
    base: Option<Arc<Launch>>,
    /// What runs now, its generation, and whether it runs for one launch only.
    running: Option<Arc<Launch>>,
    generation: u64,
    running_one_shot: bool,
    pending: Option<Pending>,
    /// What the last relaunch replaced when it took a hand-over (running, one-shot, the
    /// host's launch before a permanent host hand-over), for [`LaunchSlot::revert`].
    before: Option<Undo>,
    /// The host's launch before the first permanent host hand-over not taken yet.
    base_before: Option<Arc<Launch>>,
}

/// The launch a session runs next: hand-overs are set from any thread (a vCPU thread for the
/// guest's, the control socket's or the CLI for the host's) and taken by the session at its
/// next relaunch ([`LaunchSlot::relaunch`]); the last request before a relaunch wins.
///
/// Rules (`docs/fuki.md`): a permanent host hand-over also becomes the host's launch (what
/// "back to the original" means from then on); a one-shot hand-over runs for one launch,
/// after which the host's launch runs again unless something newer was handed over; a
/// request for the original replaces any hand-over not taken yet.
#[derive(Debug, Default)]
pub struct LaunchSlot {
    state: Mutex<SlotState>,
}

impl LaunchSlot {
    /// An empty slot.
    pub fn new() -> LaunchSlot {
        LaunchSlot::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The session starts with `first` as launch `generation`: it becomes the running launch
    /// and, unless a host hand-over already named one, the host's launch.
    pub fn start(&self, first: &Arc<Launch>, generation: u64) {
        let mut s = self.lock();
        if s.base.is_none() {
            s.base = Some(Arc::clone(first));
        } else if s.base_before.is_none() {
            // A permanent host hand-over made before the start: undone, `first` is the
            // host's launch.
            s.base_before = Some(Arc::clone(first));
        }
        s.running = Some(Arc::clone(first));
        s.generation = generation;
        s.running_one_shot = false;
    }

    /// The session runs `launch` from its next relaunch on, and it is the host's launch from
    /// now on (a permanent host hand-over).
    pub fn set(&self, launch: Arc<Launch>) {
        self.hand_over(HandOver {
            launch,
            by: By::Host,
            one_shot: false,
        });
    }

    /// `h` runs at the next relaunch (replacing anything asked before and not taken yet).
    /// A permanent host hand-over becomes the host's launch at once.
    pub fn hand_over(&self, h: HandOver) {
        let mut s = self.lock();
        if h.by == By::Host && !h.one_shot {
            let prev = s.base.replace(Arc::clone(&h.launch));
            if s.base_before.is_none() {
                s.base_before = prev;
            }
        }
        s.pending = Some(Pending::Launch(h));
    }

    /// The host's launch runs at the next relaunch (replacing anything asked before and not
    /// taken yet).
    pub fn request_original(&self, by: By) {
        self.lock().pending = Some(Pending::Original(by));
    }

    /// The session relaunches as launch `generation`: what it runs ([`LaunchSlot`] rules).
    /// `None` before [`LaunchSlot::start`].
    pub fn relaunch(&self, generation: u64) -> Option<Relaunch> {
        let mut s = self.lock();
        let base = s.base.clone()?;
        let took_hand_over = matches!(s.pending, Some(Pending::Launch(_)));
        let base_before = s.base_before.take();
        s.before = took_hand_over.then(|| Undo {
            running: s.running.clone(),
            one_shot: s.running_one_shot,
            base: base_before,
        });
        let (launch, change, one_shot) = match s.pending.take() {
            Some(Pending::Launch(h)) => (
                h.launch,
                Change::HandedOver {
                    by: h.by,
                    one_shot: h.one_shot,
                },
                h.one_shot,
            ),
            Some(Pending::Original(by)) => (base, Change::Original(Some(by)), false),
            None if s.running_one_shot => (base, Change::Original(None), false),
            None => (s.running.clone().unwrap_or(base), Change::Same, false),
        };
        s.running = Some(Arc::clone(&launch));
        s.running_one_shot = one_shot;
        s.generation = generation;
        Some(Relaunch { launch, change })
    }

    /// The hand-over the last [`LaunchSlot::relaunch`] took could not be launched (the
    /// platform or the backend refused it when the VM was built): what ran before it runs
    /// again, as if it had not been asked, and a permanent host hand-over stops being the
    /// host's launch. Returns whether there was a hand-over to undo; the session's next
    /// [`LaunchSlot::relaunch`] then gives the earlier launch (`docs/fuki.md`).
    pub fn revert(&self) -> bool {
        let mut s = self.lock();
        let Some(undo) = s.before.take() else {
            return false;
        };
        if undo.base.is_some() {
            s.base = undo.base;
        }
        s.running = undo.running;
        s.running_one_shot = undo.one_shot;
        true
    }

    /// The running launch and its generation.
    pub fn running(&self) -> Option<(Arc<Launch>, u64)> {
        let s = self.lock();
        s.running.clone().map(|l| (l, s.generation))
    }

    /// The host's launch.
    pub fn base(&self) -> Option<Arc<Launch>> {
        self.lock().base.clone()
    }

    /// What the next relaunch would run if nothing else is asked: the bundle SHA-256 of the
    /// launch handed over and not taken yet, or `None` for "whatever the rules give".
    pub fn pending_sha256(&self) -> Option<String> {
        match &self.lock().pending {
            Some(Pending::Launch(h)) => Some(h.launch.bundle_sha256().to_owned()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing;

    fn launch(code: &[u8]) -> Arc<Launch> {
        Arc::new(Launch::from_plan(testing::plan(code, &[], 1, 1 << 20, 0)))
    }

    /// The guest hands `l` over to `slot`.
    fn guest_hands_over(slot: &LaunchSlot, l: &Arc<Launch>, one_shot: bool) {
        slot.hand_over(HandOver {
            launch: Arc::clone(l),
            by: By::Guest,
            one_shot,
        });
    }

    /// Nothing asked: the same launch again; a hand-over takes effect at the next relaunch
    /// only, and from then on runs at every relaunch (permanent).
    #[test]
    fn hand_over_takes_effect_at_the_next_relaunch() {
        let slot = LaunchSlot::new();
        let (a, b) = (launch(testing::HELLO), launch(testing::RESET));
        assert!(slot.relaunch(2).is_none(), "nothing started yet");
        slot.start(&a, 1);
        let r = slot.relaunch(2).unwrap();
        assert_eq!((r.launch.id(), r.change), (a.id(), Change::Same));
        guest_hands_over(&slot, &b, false);
        assert_eq!(slot.pending_sha256().as_deref(), Some(b.bundle_sha256()));
        // Still `a` until the relaunch.
        assert_eq!(slot.running().unwrap().0.id(), a.id());
        let r = slot.relaunch(3).unwrap();
        assert_eq!(r.launch.id(), b.id());
        assert_eq!(
            r.change,
            Change::HandedOver {
                by: By::Guest,
                one_shot: false
            }
        );
        let (running, generation) = slot.running().unwrap();
        assert_eq!((running.id(), generation), (b.id(), 3));
        for g in 4..7 {
            let r = slot.relaunch(g).unwrap();
            assert_eq!((r.launch.id(), r.change), (b.id(), Change::Same));
        }
        // A guest hand-over does not change the host's launch.
        assert_eq!(slot.base().unwrap().id(), a.id());
    }

    /// A hand-over whose VM cannot be built is undone: the launch that ran before runs
    /// again as if nothing had been asked (after a one-shot launch: the host's), a permanent
    /// host hand-over stops being the host's launch, and with nothing taken there is nothing
    /// to undo.
    #[test]
    fn a_hand_over_that_cannot_be_built_is_reverted() {
        let slot = LaunchSlot::new();
        let (a, b, c) = (
            launch(testing::HELLO),
            launch(testing::RESET),
            launch(testing::PANIC),
        );
        slot.start(&a, 1);
        assert!(!slot.revert(), "nothing was handed over");
        guest_hands_over(&slot, &b, false);
        assert_eq!(slot.relaunch(2).unwrap().launch.id(), b.id());
        assert!(slot.revert());
        assert!(!slot.revert(), "undone once");
        let r = slot.relaunch(2).unwrap();
        assert_eq!((r.launch.id(), r.change), (a.id(), Change::Same));
        // A permanent host switch to `c` that fails: `a` is the host's launch again.
        slot.set(Arc::clone(&c));
        assert_eq!(slot.base().unwrap().id(), c.id());
        assert_eq!(slot.relaunch(3).unwrap().launch.id(), c.id());
        assert!(slot.revert());
        assert_eq!(slot.base().unwrap().id(), a.id());
        assert_eq!(slot.relaunch(3).unwrap().launch.id(), a.id());
        // Two permanent host switches before a relaunch, the second (`c`) fails: `a`, not
        // `b` (which never ran), is the host's launch again.
        slot.set(Arc::clone(&b));
        slot.set(Arc::clone(&c));
        assert_eq!(slot.relaunch(3).unwrap().launch.id(), c.id());
        assert!(slot.revert());
        assert_eq!(slot.base().unwrap().id(), a.id());
        assert_eq!(slot.relaunch(3).unwrap().launch.id(), a.id());
        // A one-shot `b` runs; a guest hand-over of `c` during it fails: as if it had not
        // been asked, the one-shot is over and the host's `a` runs.
        guest_hands_over(&slot, &b, true);
        assert_eq!(slot.relaunch(4).unwrap().launch.id(), b.id());
        guest_hands_over(&slot, &c, false);
        assert_eq!(slot.relaunch(5).unwrap().launch.id(), c.id());
        assert!(slot.revert());
        assert_eq!(slot.relaunch(5).unwrap().launch.id(), a.id());
    }

    /// One-shot: one launch, then the host's launch again (QEMU spec combinations C/D).
    #[test]
    fn one_shot_returns_to_the_original() {
        let slot = LaunchSlot::new();
        let (a, b) = (launch(testing::HELLO), launch(testing::RESET));
        slot.start(&a, 1);
        guest_hands_over(&slot, &b, true);
        let r = slot.relaunch(2).unwrap();
        assert_eq!(r.launch.id(), b.id());
        let r = slot.relaunch(3).unwrap();
        assert_eq!((r.launch.id(), r.change), (a.id(), Change::Original(None)));
        assert!(r.change.host_restored());
        let r = slot.relaunch(4).unwrap();
        assert_eq!((r.launch.id(), r.change), (a.id(), Change::Same));
    }

    /// The newest request wins: a hand-over made while a one-shot launch runs replaces the
    /// return to the original; a request for the original replaces a pending hand-over.
    #[test]
    fn newest_request_wins() {
        let slot = LaunchSlot::new();
        let (a, b, c) = (
            launch(testing::HELLO),
            launch(testing::RESET),
            launch(testing::PANIC),
        );
        slot.start(&a, 1);
        guest_hands_over(&slot, &b, true);
        slot.relaunch(2);
        guest_hands_over(&slot, &c, false);
        assert_eq!(slot.relaunch(3).unwrap().launch.id(), c.id());
        guest_hands_over(&slot, &b, false);
        slot.request_original(By::Guest);
        assert_eq!(slot.pending_sha256(), None);
        let r = slot.relaunch(4).unwrap();
        assert_eq!(
            (r.launch.id(), r.change),
            (a.id(), Change::Original(Some(By::Guest)))
        );
    }

    /// A permanent host hand-over becomes the host's launch at once: a later one-shot
    /// returns to it, and so does a request for the original made before the relaunch.
    #[test]
    fn permanent_host_switch_is_the_new_original() {
        let slot = LaunchSlot::new();
        let (a, b, c) = (
            launch(testing::HELLO),
            launch(testing::RESET),
            launch(testing::PANIC),
        );
        slot.start(&a, 1);
        slot.set(Arc::clone(&b));
        assert_eq!(slot.base().unwrap().id(), b.id());
        slot.request_original(By::Guest);
        assert_eq!(slot.relaunch(2).unwrap().launch.id(), b.id());
        slot.hand_over(HandOver {
            launch: Arc::clone(&c),
            by: By::Host,
            one_shot: true,
        });
        assert_eq!(
            slot.base().unwrap().id(),
            b.id(),
            "one-shot: not the original"
        );
        let r = slot.relaunch(3).unwrap();
        assert_eq!(r.launch.id(), c.id());
        assert!(r.change.host_restored(), "a host hand-over re-enables");
        assert_eq!(slot.relaunch(4).unwrap().launch.id(), b.id());
        // A slot a host switch was made on before the session started keeps it as base.
        let early = LaunchSlot::new();
        early.set(Arc::clone(&c));
        early.start(&a, 1);
        assert_eq!(early.base().unwrap().id(), c.id());
        assert_eq!(early.relaunch(2).unwrap().launch.id(), c.id());
    }

    #[test]
    fn imported_pages_and_format() {
        let l = launch(testing::HELLO);
        assert!(l.imports_page(testing::CODE_GPA));
        assert!(l.imports_page(testing::CODE_GPA + 0xFFF));
        assert!(!l.imports_page(testing::CODE_GPA + 0x1000));
        assert!(!l.imports_page(0));
        assert!(!l.is_igvm(), "a hand-made plan has no bundle");
    }
}
