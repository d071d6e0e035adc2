//! Device classes: the config's rules compiled once, and the client ID → class lookup.
//!
//! The lookup runs once per CONNECT; the [`Session`](super::Session) keeps the resulting
//! `Arc<ClassRules>` so a publish never looks its class up again.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;

use crate::config::policy::{DeviceClass, PolicyConfig, UnknownDevices};

use super::topic::{TopicFilter, TopicFilters};

/// One class, as the hot path needs it. The class's rate quotas are in the policy at index
/// `index`; its devices' rate limiters are in their per-device entries (see `rates`).
#[derive(Debug)]
pub(crate) struct ClassRules {
    pub(crate) name: Arc<str>,
    pub(crate) index: usize,
    pub(crate) rhythm: Option<Rhythm>,
    pub(crate) topics: TopicFilters,
    pub(crate) max_connections: u32,
    /// A CONNECT over `max_connections` takes over (else it is refused).
    pub(crate) takeover: bool,
    /// Where its devices may publish.
    pub(crate) publish: super::acl::Acl,
    /// A publish outside closes the connection (else it is acknowledged and discarded).
    pub(crate) disconnect_when_denied: bool,
    /// What its devices may subscribe to.
    pub(crate) subscribe: super::acl::Acl,
}

/// In rhythm iff `lo ≤ Δ ≤ hi` (nanoseconds, both inclusive: T − E and T + E).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rhythm {
    pub(crate) lo: u64,
    pub(crate) hi: u64,
}

/// A class's rate quotas, validated non-zero.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RateSpec {
    pub(crate) messages_per_sec: NonZeroU32,
    pub(crate) message_burst: NonZeroU32,
    pub(crate) bytes_per_sec: NonZeroU32,
    pub(crate) byte_burst: NonZeroU32,
}

/// Client ID → class.
#[derive(Debug)]
pub(crate) struct Resolver {
    classes: Vec<Arc<ClassRules>>,
    devices: HashMap<Box<str>, usize>,
    prefixes: Vec<(Box<str>, usize)>,
    /// The default class's index when unknown devices are admitted.
    unknown: Option<usize>,
}

impl Resolver {
    /// Exact `devices` entry, then `device_prefixes` in config order, then the default class
    /// if unknown devices are admitted.
    pub(crate) fn resolve(&self, client_id: &str) -> Option<&Arc<ClassRules>> {
        let index = self.devices.get(client_id).copied().or_else(|| {
            self.prefixes
                .iter()
                .find(|(p, _)| client_id.starts_with(&**p))
                .map(|(_, i)| *i)
                .or(self.unknown)
        })?;
        self.classes.get(index)
    }

    /// A class by its name (an admin's override names one).
    pub(crate) fn by_name(&self, name: &str) -> Option<&Arc<ClassRules>> {
        self.classes.iter().find(|c| &*c.name == name)
    }
}

/// Compiles and validates the class part of the config. Errors name the key.
pub(crate) fn compile(cfg: &PolicyConfig) -> Result<(Resolver, Vec<RateSpec>), String> {
    let mut classes = Vec::with_capacity(cfg.classes.len());
    let mut rates = Vec::with_capacity(cfg.classes.len());
    let mut index_of: HashMap<&str, usize> = HashMap::with_capacity(cfg.classes.len());
    for (index, (name, class)) in cfg.classes.iter().enumerate() {
        let key = format!("policy.classes.{name}");
        let (rules, rate) = compile_class(&key, name, index, class)?;
        classes.push(Arc::new(rules));
        rates.push(rate);
        index_of.insert(name.as_str(), index);
    }
    // The key is formatted only on error: `devices` may hold a million entries.
    let lookup = |class: &str, key: &dyn Fn() -> String| {
        index_of
            .get(class)
            .copied()
            .ok_or_else(|| format!("{}: no class {class:?}", key()))
    };
    let default = lookup(&cfg.default_class, &|| "policy.default_class".into())?;
    let mut devices = HashMap::with_capacity(cfg.devices.len());
    for (id, class) in &cfg.devices {
        let index = lookup(class, &|| format!("policy.devices.{id}"))?;
        devices.insert(id.as_str().into(), index);
    }
    let mut prefixes = Vec::with_capacity(cfg.device_prefixes.len());
    for (i, rule) in cfg.device_prefixes.iter().enumerate() {
        let index = lookup(&rule.class, &|| {
            format!("policy.device_prefixes[{i}].class")
        })?;
        prefixes.push((rule.prefix.as_str().into(), index));
    }
    let unknown = (cfg.unknown_devices == UnknownDevices::Admit).then_some(default);
    let resolver = Resolver {
        classes,
        devices,
        prefixes,
        unknown,
    };
    Ok((resolver, rates))
}

fn compile_class(
    key: &str,
    name: &str,
    index: usize,
    c: &DeviceClass,
) -> Result<(ClassRules, RateSpec), String> {
    let rhythm = match c.push_interval_secs {
        None => None,
        Some(t) => {
            let e = c.tolerance_secs;
            if !(t.is_finite() && t > 0.0) {
                return Err(format!("{key}.push_interval_secs: must be > 0 (got {t})"));
            }
            if !(e.is_finite() && (0.0..t).contains(&e)) {
                return Err(format!(
                    "{key}.tolerance_secs: must be >= 0 and < push_interval_secs ({t}) (got {e})"
                ));
            }
            Some(Rhythm {
                lo: secs_to_nanos(t - e),
                hi: secs_to_nanos(t + e),
            })
        }
    };
    let topics = c
        .rhythm_topics
        .iter()
        .enumerate()
        .map(|(i, f)| TopicFilter::parse(f).map_err(|e| format!("{key}.rhythm_topics[{i}]: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let non_zero = |field: &str, v: u32| {
        NonZeroU32::new(v).ok_or_else(|| format!("{key}.{field}: must be > 0"))
    };
    let rate = RateSpec {
        messages_per_sec: non_zero("messages_per_sec", c.messages_per_sec)?,
        message_burst: non_zero("message_burst", c.message_burst)?,
        bytes_per_sec: non_zero("bytes_per_sec", c.bytes_per_sec)?,
        byte_burst: non_zero("byte_burst", c.byte_burst)?,
    };
    non_zero("max_connections", c.max_connections)?;
    let rules = ClassRules {
        name: name.into(),
        index,
        rhythm,
        topics: TopicFilters::new(topics),
        max_connections: c.max_connections,
        takeover: c.on_duplicate == crate::config::policy::OnDuplicate::Takeover,
        publish: super::acl::Acl::compile(&format!("{key}.publish_topics"), &c.publish_topics)?,
        disconnect_when_denied: c.on_publish_denied == crate::config::policy::OnDenied::Disconnect,
        subscribe: super::acl::Acl::compile(
            &format!("{key}.subscribe_topics"),
            &c.subscribe_topics,
        )?,
    };
    Ok((rules, rate))
}

/// Seconds (validated finite, ≥ 0) to nanoseconds; rounding so that 55.0 s is exactly
/// 55_000_000_000 ns and the inclusive bounds hold to the nanosecond.
fn secs_to_nanos(secs: f64) -> u64 {
    // `as` saturates for values beyond u64 (≈ 584 years): an absurd T simply never fires.
    (secs * 1e9).round() as u64
}
