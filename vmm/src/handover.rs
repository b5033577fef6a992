//! Hand-overs: a new bundle for the session's next relaunch, from the guest
//! (`etc/vmlaunchupdate`, [`crate::devices::launch_update`]) or from the host (`run --next`,
//! the control socket's `switch-bundle`), with the same validation and the same audit
//! (`docs/fuki.md`).
//!
//! [`Handover::prepare`] turns bundle bytes into a [`Launch`] for the session's platform and
//! launch config: SHA-256, plan, predicted measurement — once per distinct bundle (a small
//! cache by SHA-256, so a guest that hands the same stage 2 over at every boot is planned
//! once), then keeps a copy in the bundle store if there is one. Only a bundle that plans
//! (and is stored, with `--bundle-store`) can be handed over: an invalid bundle never
//! reaches the [`LaunchSlot`]. Every request is a `swap` audit record ([`Swap`]).

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use relaunch_core::plan::LaunchConfig;
use sha2::{Digest, Sha256};

use crate::audit::{unix_ms, AuditLog, BundleStore};
use crate::json::hex;
use crate::launch::{By, HandOver, Launch, LaunchSlot};

/// Planned hand-over launches kept for reuse, at most.
pub const CACHE_LAUNCHES: usize = 4;
/// Bundle bytes those launches may hold at most (a larger bundle is used, not cached).
pub const CACHE_BYTES: u64 = 256 << 20;

/// A bundle ready to be handed over.
#[derive(Clone, Debug)]
pub struct Ready {
    /// Its launch (planned now, or earlier: `cached`).
    pub launch: Arc<Launch>,
    /// The plan came from the cache.
    pub cached: bool,
    /// Where the bundle store keeps it.
    pub stored: Option<PathBuf>,
}

/// Why a bundle cannot be handed over (one sentence).
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// The planner (or the measurement) refused it.
    #[error("{0}")]
    Plan(String),
    /// The bundle store could not keep it.
    #[error(transparent)]
    Store(#[from] crate::audit::StoreError),
    /// The file could not be read.
    #[error("{0}")]
    Read(String),
}

/// One hand-over request, as audited (`docs/fuki.md`, "Audit").
#[derive(Clone, Debug, Default)]
pub struct Swap {
    /// Who asked (`None` = the guest, the default).
    pub by: Option<By>,
    /// `bundle`, `original` (back to the host's bundle) or `disable` (the guest latched the
    /// interface off), or `ignored` (a write while disabled).
    pub request: &'static str,
    /// For one launch only.
    pub one_shot: bool,
    /// SHA-256 of the bundle handed over (also of one refused, if it was copied out).
    pub new_sha256: Option<String>,
    /// Its predicted measurement (confidential platforms).
    pub predicted: Option<String>,
    /// QEMU's status code for a guest request (0 ok, 1 load failure, 2 not started from
    /// IGVM); 0 or 1 for a host request.
    pub status: u16,
    /// What happened, one sentence.
    pub result: String,
    /// The image's guest-physical address and size (guest requests).
    pub image: Option<(u64, u64)>,
    /// Where the bundle store keeps the bundle.
    pub stored: Option<PathBuf>,
    /// The plan came from the cache.
    pub plan_cached: Option<bool>,
}

/// The `swap` audit record.
#[derive(serde::Serialize)]
struct SwapRecord<'a> {
    event: &'static str,
    time_ms: u64,
    /// The launch that was running when the request was made (0: before the first).
    generation: u64,
    by: &'static str,
    request: &'static str,
    one_shot: bool,
    old_bundle_sha256: Option<&'a str>,
    new_bundle_sha256: Option<&'a str>,
    predicted_measurement: Option<&'a str>,
    status: u16,
    result: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    image_gpa: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    image_size: Option<u64>,
    stored: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    plan_cached: Option<bool>,
}

/// The session's hand-over service (module doc).
#[derive(Debug)]
pub struct Handover {
    slot: Arc<LaunchSlot>,
    config: LaunchConfig,
    store: Option<BundleStore>,
    audit: Option<Arc<AuditLog>>,
    cache: Mutex<VecDeque<Arc<Launch>>>,
}

impl Handover {
    /// Hand-overs into `slot`, planned for `config` (the launch config of the session's
    /// first launch: platform, RAM, vCPUs, policy, host data), kept in `store`, audited in
    /// `audit`.
    pub fn new(
        slot: Arc<LaunchSlot>,
        config: LaunchConfig,
        store: Option<BundleStore>,
        audit: Option<Arc<AuditLog>>,
    ) -> Handover {
        Handover {
            slot,
            config,
            store,
            audit,
            cache: Mutex::new(VecDeque::new()),
        }
    }

    /// The slot hand-overs go to.
    pub fn slot(&self) -> &Arc<LaunchSlot> {
        &self.slot
    }

    /// The bundle store, if any.
    pub fn store(&self) -> Option<&BundleStore> {
        self.store.as_ref()
    }

    /// The launch config a hand-over of `bundle` is planned for: the session's, without
    /// the kernel-hashes table for an IGVM bundle (`--kernel` fills an OVMF image's table;
    /// an IGVM bundle carries its own kernel).
    pub fn config_for(&self, bundle: &[u8]) -> LaunchConfig {
        let mut c = self.config;
        if relaunch_core::ovmf::detect(bundle) == relaunch_core::ovmf::InputKind::Igvm {
            c.kernel_hashes = None;
        }
        c
    }

    /// Plans `bundle` (or finds it planned already, by SHA-256) and keeps it in the bundle
    /// store.
    ///
    /// # Errors
    /// [`PrepareError`]: the planner's message, or the store's.
    pub fn prepare(&self, bundle: Vec<u8>) -> Result<Ready, PrepareError> {
        let sha = hex(&Sha256::digest(&bundle));
        if let Some(launch) = self.cached(&sha) {
            // Stored when it was planned (a store error then refused it).
            let stored = self.store.as_ref().map(|s| s.path_of(&sha));
            return Ok(Ready {
                launch,
                cached: true,
                stored,
            });
        }
        let cfg = self.config_for(&bundle);
        let launch =
            Arc::new(Launch::with_sha256(bundle, sha.clone(), &cfg).map_err(PrepareError::Plan)?);
        let stored = match &self.store {
            Some(s) => Some(s.store(&sha, launch.plan().bundle())?),
            None => None,
        };
        self.remember(&launch);
        Ok(Ready {
            launch,
            cached: false,
            stored,
        })
    }

    /// Takes `launch` (planned elsewhere: the command line's bundle, `--next`) into the
    /// store and the cache, as if [`Handover::prepare`] had planned it.
    ///
    /// # Errors
    /// The store's.
    pub fn adopt(&self, launch: &Arc<Launch>) -> Result<Ready, PrepareError> {
        let stored = match &self.store {
            Some(s) => Some(s.store(launch.bundle_sha256(), launch.plan().bundle())?),
            None => None,
        };
        self.remember(launch);
        Ok(Ready {
            launch: Arc::clone(launch),
            cached: false,
            stored,
        })
    }

    /// Reads the bundle at `path` (at most [`crate::cli::run::MAX_BUNDLE`] bytes) and
    /// [`Handover::prepare`]s it.
    ///
    /// # Errors
    /// [`PrepareError`], naming `path`.
    pub fn prepare_file(&self, path: &std::path::Path) -> Result<Ready, PrepareError> {
        let bundle = crate::cli::run::read_bundle(path).map_err(PrepareError::Read)?;
        self.prepare(bundle).map_err(|e| match e {
            PrepareError::Plan(m) => PrepareError::Plan(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// Hands `ready` over for the next relaunch on the host's behalf (`one_shot`: for that
    /// launch only, as `run --next`; otherwise permanently, as `switch-bundle`), after its
    /// `swap` record is written.
    ///
    /// # Errors
    /// The audit log cannot be written: nothing is handed over.
    pub fn commit_host(&self, ready: &Ready, one_shot: bool) -> std::io::Result<()> {
        self.record(&Swap {
            by: Some(By::Host),
            request: "bundle",
            one_shot,
            new_sha256: Some(ready.launch.bundle_sha256().to_owned()),
            predicted: ready.launch.predicted_measurement().map(str::to_owned),
            status: 0,
            result: if one_shot {
                "accepted: runs at the next relaunch, once".into()
            } else {
                "accepted: runs from the next relaunch on".into()
            },
            stored: ready.stored.clone(),
            plan_cached: Some(ready.cached),
            ..Swap::default()
        })?;
        self.slot.hand_over(HandOver {
            launch: Arc::clone(&ready.launch),
            by: By::Host,
            one_shot,
        });
        Ok(())
    }

    /// The host's request to run the bundle at `path` from the next relaunch on
    /// (permanently, or once with `one_shot`); a refusal is audited too.
    ///
    /// # Errors
    /// Why it was refused (one sentence); the session is unchanged.
    pub fn host_switch(&self, path: &std::path::Path, one_shot: bool) -> Result<Ready, String> {
        match self.prepare_file(path) {
            Ok(ready) => {
                self.commit_host(&ready, one_shot)
                    .map_err(|e| format!("writing the audit log: {e}"))?;
                Ok(ready)
            }
            Err(e) => {
                let reason = e.to_string();
                let _ = self.record(&Swap {
                    by: Some(By::Host),
                    request: "bundle",
                    one_shot,
                    status: 1,
                    result: format!("refused: {reason}"),
                    ..Swap::default()
                });
                Err(reason)
            }
        }
    }

    /// Writes `swap`'s audit record (nothing without an audit log).
    ///
    /// # Errors
    /// The write error.
    pub fn record(&self, swap: &Swap) -> std::io::Result<()> {
        let Some(audit) = &self.audit else {
            return Ok(());
        };
        let running = self.slot.running();
        let line = crate::json::to_line(&SwapRecord {
            event: "swap",
            time_ms: unix_ms(),
            generation: running.as_ref().map_or(0, |r| r.1),
            by: swap.by.unwrap_or(By::Guest).name(),
            request: swap.request,
            one_shot: swap.one_shot,
            old_bundle_sha256: running.as_ref().map(|r| r.0.bundle_sha256()),
            new_bundle_sha256: swap.new_sha256.as_deref(),
            predicted_measurement: swap.predicted.as_deref(),
            status: swap.status,
            result: &swap.result,
            image_gpa: swap.image.map(|i| i.0),
            image_size: swap.image.map(|i| i.1),
            stored: swap.stored.as_ref().map(|p| p.display().to_string()),
            plan_cached: swap.plan_cached,
        });
        audit.append(&line)
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, VecDeque<Arc<Launch>>> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn cached(&self, sha: &str) -> Option<Arc<Launch>> {
        let mut c = self.lock_cache();
        let i = c.iter().position(|l| l.bundle_sha256() == sha)?;
        // Most recently used last.
        let l = c.remove(i)?;
        c.push_back(Arc::clone(&l));
        Some(l)
    }

    fn remember(&self, launch: &Arc<Launch>) {
        let size = launch.plan().bundle().len() as u64;
        if size > CACHE_BYTES {
            return;
        }
        let mut c = self.lock_cache();
        c.push_back(Arc::clone(launch));
        let total = |c: &VecDeque<Arc<Launch>>| {
            c.iter()
                .map(|l| l.plan().bundle().len() as u64)
                .fold(0u64, u64::saturating_add)
        };
        while c.len() > CACHE_LAUNCHES || total(&c) > CACHE_BYTES {
            c.pop_front();
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use relaunch_core::plan::Platform;

    /// A native IGVM bundle: `code` at 0x1000 (plus `extra` pages), vCPU 0 in real mode at
    /// 0x1000 — the IGVM form of `testing::plan`.
    pub(crate) fn igvm(code: &[u8], extra: &[(u64, &[u8])]) -> Vec<u8> {
        use igvm_defs::{
            IgvmNativeVpContextX64, IgvmPageDataFlags, IgvmPageDataType, IgvmPlatformType,
        };
        let mut b = relaunch_core::writer::IgvmBuilder::new();
        let native = b.platform(IgvmPlatformType::NATIVE, 0).unwrap();
        let mut pages = vec![(0x1000u64, code)];
        pages.extend_from_slice(extra);
        pages.sort_by_key(|p| p.0);
        for (gpa, data) in pages {
            for (i, chunk) in data.chunks(4096).enumerate() {
                b.page_data(
                    gpa + 4096 * i as u64,
                    native,
                    IgvmPageDataFlags::new(),
                    IgvmPageDataType::NORMAL,
                    chunk,
                )
                .unwrap();
            }
        }
        // Real mode at 0x1000: the descriptor-flags attribute form (byte 5 = present, S,
        // type), 64 KiB limits, CR0.ET.
        let ctx = IgvmNativeVpContextX64 {
            rip: 0x1000,
            rflags: 2,
            gdtr_limit: 0xFFFF,
            idtr_limit: 0x3FF,
            code_attributes: 0x9B,
            code_limit: 0xFFFF,
            data_attributes: 0x93,
            data_limit: 0xFFFF,
            cr0: 0x10,
            ..zerocopy::FromZeros::new_zeroed()
        };
        b.native_vp_context(native, 0, &ctx).unwrap();
        b.finish().unwrap()
    }

    pub(crate) fn native_config(mem: u64) -> LaunchConfig {
        LaunchConfig {
            platform: Platform::Native,
            vcpus: 1,
            mem_bytes: mem,
            vcpu_sig: 0x800F12,
            guest_features: 0,
            policy: None,
            host_data: [0; 32],
            kernel_hashes: None,
        }
    }

    fn temp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("relaunch-handover-{name}-{}", std::process::id()))
    }

    #[test]
    fn prepare_plans_once_and_refuses_garbage() {
        let slot = Arc::new(LaunchSlot::new());
        let h = Handover::new(Arc::clone(&slot), native_config(16 << 20), None, None);
        let bundle = igvm(crate::testing::HELLO, &[]);
        let a = h.prepare(bundle.clone()).unwrap();
        assert!(!a.cached && a.stored.is_none());
        assert_eq!(
            a.launch.bundle_sha256(),
            hex(&Sha256::digest(&bundle)),
            "the audited SHA-256 is of the bytes handed over"
        );
        let b = h.prepare(bundle.clone()).unwrap();
        assert!(b.cached);
        assert_eq!(a.launch.id(), b.launch.id(), "planned once");
        assert!(matches!(
            h.prepare(b"garbage".to_vec()),
            Err(PrepareError::Plan(_))
        ));
        let mut truncated = bundle.clone();
        truncated.truncate(bundle.len() / 2);
        assert!(matches!(h.prepare(truncated), Err(PrepareError::Plan(_))));
        // The cache is bounded.
        for i in 0..CACHE_LAUNCHES as u8 + 2 {
            let code = [0xF4, 0xEB, 0xFD, i];
            h.prepare(igvm(&code, &[])).unwrap();
        }
        assert_eq!(h.lock_cache().len(), CACHE_LAUNCHES);
        assert!(!h.prepare(bundle).unwrap().cached, "evicted");
        // Nothing of this reached the slot.
        assert!(slot.pending_sha256().is_none());
    }

    /// A host hand-over is recorded before it reaches the slot; a refused one is recorded
    /// and changes nothing; the bundle store keeps what was handed over.
    #[test]
    fn host_switch_is_audited_and_stored() {
        let dir = temp("host");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let audit = Arc::new(AuditLog::open(&dir.join("audit.jsonl")).unwrap());
        let store = BundleStore::open(&dir.join("store")).unwrap();
        let slot = Arc::new(LaunchSlot::new());
        let first = Arc::new(
            Launch::new(igvm(crate::testing::RESET, &[]), &native_config(16 << 20)).unwrap(),
        );
        slot.start(&first, 1);
        let h = Handover::new(
            Arc::clone(&slot),
            native_config(16 << 20),
            Some(store),
            Some(audit),
        );
        let good = dir.join("good.igvm");
        let bundle = igvm(crate::testing::HELLO, &[]);
        std::fs::write(&good, &bundle).unwrap();
        let r = h.host_switch(&good, false).unwrap();
        let sha = r.launch.bundle_sha256().to_owned();
        assert_eq!(slot.pending_sha256().as_deref(), Some(sha.as_str()));
        assert_eq!(slot.base().unwrap().id(), r.launch.id(), "permanent");
        assert_eq!(std::fs::read(dir.join("store").join(&sha)).unwrap(), bundle);
        let bad = dir.join("bad.igvm");
        std::fs::write(&bad, b"IGVM but not really").unwrap();
        let e = h.host_switch(&bad, true).unwrap_err();
        assert!(e.contains("bad.igvm"), "{e}");
        assert!(h.host_switch(&dir.join("missing"), true).is_err());
        assert_eq!(
            slot.pending_sha256().as_deref(),
            Some(sha.as_str()),
            "unchanged"
        );
        let log = std::fs::read_to_string(dir.join("audit.jsonl")).unwrap();
        let lines: Vec<serde_json::Value> = log
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3, "{log}");
        let ok = &lines[0];
        assert_eq!(ok["event"], "swap");
        assert_eq!(ok["by"], "host");
        assert_eq!(ok["one_shot"], false);
        assert_eq!(ok["status"], 0);
        assert_eq!(ok["generation"], 1);
        assert_eq!(ok["old_bundle_sha256"], first.bundle_sha256());
        assert_eq!(ok["new_bundle_sha256"], sha.as_str());
        assert_eq!(
            ok["predicted_measurement"],
            serde_json::Value::Null,
            "native"
        );
        assert!(ok["stored"].as_str().unwrap().ends_with(&sha));
        for refused in &lines[1..] {
            assert_eq!(refused["status"], 1);
            assert_eq!(refused["one_shot"], true);
            assert_eq!(refused["new_bundle_sha256"], serde_json::Value::Null);
            assert!(refused["result"].as_str().unwrap().starts_with("refused: "));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A hand-over is planned for the session's config: an IGVM bundle drops the
    /// kernel-hashes table the session's OVMF image had.
    #[test]
    fn config_for_igvm_has_no_kernel_hashes() {
        let mut cfg = native_config(16 << 20);
        cfg.kernel_hashes = Some(relaunch_core::plan::KernelHashes {
            kernel: [1; 32],
            initrd: [2; 32],
            cmdline: [3; 32],
        });
        let h = Handover::new(Arc::new(LaunchSlot::new()), cfg, None, None);
        assert_eq!(
            h.config_for(&igvm(crate::testing::HELLO, &[]))
                .kernel_hashes,
            None
        );
        assert_eq!(h.config_for(b"not igvm").kernel_hashes, cfg.kernel_hashes);
    }
}
