//! A launch: one bundle, planned once for one launch config, with everything a relaunch
//! reuses — the bundle bytes, the validated plan, the bundle's SHA-256 and the predicted
//! measurement. Owned and immutable, shared by `Arc` between the session, the prestage
//! builder and whoever hands the session its next launch ([`LaunchSlot`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
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

/// The launch a session runs next: set from any thread (a hand-over, an operator), taken by
/// the session at its next relaunch, which then runs it from then on.
#[derive(Debug, Default)]
pub struct LaunchSlot {
    next: Mutex<Option<Arc<Launch>>>,
}

impl LaunchSlot {
    /// An empty slot.
    pub fn new() -> LaunchSlot {
        LaunchSlot::default()
    }

    /// The session runs `launch` from its next relaunch on (replacing any launch set before
    /// and not taken yet).
    pub fn set(&self, launch: Arc<Launch>) {
        *self.next.lock().unwrap_or_else(PoisonError::into_inner) = Some(launch);
    }

    /// Takes the launch set, if any.
    pub fn take(&self) -> Option<Arc<Launch>> {
        self.next
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}
