//! The device classes in force, swappable while devices are connected: a SIGHUP reload of
//! `[policy]` classes and devices, and an admin's per-device override, take effect at each
//! session's next publish. Every device keeps its state: rhythm, strikes, counters, and its rate
//! cells unless its class's quotas changed.
//!
//! A publish pays one atomic load for this (the generation); only a session whose generation is
//! behind re-resolves its class.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use crate::config::policy::{DeviceClass, PolicyConfig};

use super::class::{self, ClassRules, Resolver};
use super::rates::ClassQuotas;

/// Overrides an admin may set at once (each is a client ID and a class name in memory).
pub const MAX_OVERRIDES: usize = 100_000;

/// Classes compiled from a config, ready to be swapped in (see `Policy::apply_classes`).
pub struct Classes {
    pub(crate) resolver: Resolver,
    pub(crate) quotas: Vec<ClassQuotas>,
    /// As configured, for the admin API.
    pub(crate) settings: BTreeMap<String, DeviceClass>,
}

impl Classes {
    pub(crate) fn compile(cfg: &PolicyConfig) -> Result<Classes, String> {
        let (resolver, rates) = class::compile(cfg)?;
        Ok(Classes {
            resolver,
            quotas: rates.iter().map(ClassQuotas::new).collect(),
            settings: cfg.classes.clone(),
        })
    }
}

/// What one generation resolves with.
struct Snapshot {
    classes: Arc<Classes>,
    /// Client ID → class name.
    overrides: Arc<HashMap<Arc<str>, Arc<str>>>,
    generation: u64,
}

/// A device's class as the admin API shows it.
#[derive(Debug, Clone)]
pub struct DeviceClassView {
    pub class: String,
    /// Set through the admin API (else from `[policy]` devices, prefixes or the default).
    pub overridden: bool,
    pub settings: DeviceClass,
}

/// One resolution: the class, its quotas, and the generation it belongs to.
pub(crate) struct Resolved {
    pub(crate) class: Arc<ClassRules>,
    pub(crate) quotas: ClassQuotas,
    pub(crate) generation: u64,
}

pub(crate) struct Live {
    snapshot: RwLock<Arc<Snapshot>>,
    generation: AtomicU64,
}

impl Live {
    pub(crate) fn new(classes: Classes) -> Live {
        Live {
            snapshot: RwLock::new(Arc::new(Snapshot {
                classes: Arc::new(classes),
                overrides: Arc::default(),
                generation: 0,
            })),
            generation: AtomicU64::new(0),
        }
    }

    /// The generation in force: a session resolved under another one resolves again.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn current(&self) -> Arc<Snapshot> {
        self.snapshot
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// An override first, then `[policy]` devices, prefixes and the default.
    pub(crate) fn resolve(&self, client_id: &str) -> Option<Resolved> {
        Self::resolve_in(&self.current(), client_id)
    }

    fn resolve_in(snap: &Snapshot, client_id: &str) -> Option<Resolved> {
        let by_override = snap
            .overrides
            .get(client_id)
            .and_then(|name| snap.classes.resolver.by_name(name));
        let class = by_override.or_else(|| snap.classes.resolver.resolve(client_id))?;
        let quotas = *snap.classes.quotas.get(class.index)?;
        Some(Resolved {
            class: Arc::clone(class),
            quotas,
            generation: snap.generation,
        })
    }

    pub(crate) fn class_count(&self) -> usize {
        self.current().classes.quotas.len()
    }

    pub(crate) fn view(&self, client_id: &str) -> Option<DeviceClassView> {
        // One snapshot for all of it: a reload in between cannot mix two.
        let snap = self.current();
        let overridden = snap.overrides.contains_key(client_id);
        let r = Self::resolve_in(&snap, client_id)?;
        let settings = snap.classes.settings.get(&*r.class.name)?.clone();
        Some(DeviceClassView {
            class: r.class.name.to_string(),
            overridden,
            settings,
        })
    }

    /// Every class as configured, by name.
    pub(crate) fn classes(&self) -> BTreeMap<String, DeviceClass> {
        self.current().classes.settings.clone()
    }

    /// The admin's overrides (client ID, class), sorted by client ID.
    pub(crate) fn overrides(&self) -> Vec<(Arc<str>, Arc<str>)> {
        let snap = self.current();
        let mut all: Vec<_> = snap
            .overrides
            .iter()
            .map(|(id, class)| (Arc::clone(id), Arc::clone(class)))
            .collect();
        all.sort_unstable();
        all
    }

    /// Replace the snapshot with `change` applied; the generation moves on.
    fn update(
        &self,
        change: impl FnOnce(&Snapshot) -> Result<(Arc<Classes>, HashMap<Arc<str>, Arc<str>>), String>,
    ) -> Result<(), String> {
        let mut guard = self.snapshot.write().unwrap_or_else(|e| e.into_inner());
        let (classes, overrides) = change(&guard)?;
        let generation = guard.generation + 1;
        *guard = Arc::new(Snapshot {
            classes,
            overrides: Arc::new(overrides),
            generation,
        });
        self.generation.store(generation, Ordering::Release);
        Ok(())
    }

    pub(crate) fn set_override(&self, client_id: &str, class: &str) -> Result<(), String> {
        self.update(|s| {
            if s.classes.resolver.by_name(class).is_none() {
                return Err(format!("class: no class {class:?} in [policy.classes]"));
            }
            if s.overrides.len() >= MAX_OVERRIDES && !s.overrides.contains_key(client_id) {
                return Err(format!("at most {MAX_OVERRIDES} overrides may exist"));
            }
            let mut o = (*s.overrides).clone();
            o.insert(client_id.into(), class.into());
            Ok((Arc::clone(&s.classes), o))
        })
    }

    /// False if there was none (and then nothing changes: no session re-resolves).
    pub(crate) fn clear_override(&self, client_id: &str) -> bool {
        if !self.current().overrides.contains_key(client_id) {
            return false;
        }
        let mut had = false;
        let _ = self.update(|s| {
            let mut o = (*s.overrides).clone();
            had = o.remove(client_id).is_some();
            Ok((Arc::clone(&s.classes), o))
        });
        had
    }

    /// Swap in reloaded classes; overrides naming a class that no longer exists are dropped
    /// (and returned, to be logged).
    pub(crate) fn apply(&self, classes: Classes) -> Vec<Arc<str>> {
        let mut dropped = Vec::new();
        let _ = self.update(|s| {
            let mut o = (*s.overrides).clone();
            o.retain(|id, class| {
                let keep = classes.resolver.by_name(class).is_some();
                if !keep {
                    dropped.push(Arc::clone(id));
                }
                keep
            });
            Ok((Arc::new(classes), o))
        });
        dropped
    }
}
