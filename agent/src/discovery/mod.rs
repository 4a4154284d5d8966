//! Backends (and virtual addresses) given by name: each name is looked up once before the
//! configuration that gives it is applied, then followed, asked again when its TTL runs
//! out (within `discovery.min_ttl` and `max_ttl`).
//!
//! The loop owns the [`Discovered`] table; one follower task looks names up when they are
//! due and sends what it found. A changed set goes into the desired state like any other input
//! and reaches the kernel through the transactional apply: a new slot generation, so a
//! connection sees the old set or the new one. A failed or empty lookup never takes a set
//! away: the last good one stays, and the failure is counted.

mod follow;
mod lookup;
mod table;

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use tokio::sync::mpsc;

pub use lookup::{Failure, Lookup, Resolver, ResolverError};
pub use table::{Discovered, NameKey, NameState, Recorded, Refresh};

use crate::{
    config::{Config, DiscoveryConfig, Target, Unresolved},
    desired::Resolved,
    view::{DiscoverySeries, NameStatus},
};

/// Most lookups in flight at once when a configuration is first resolved.
const FIRST_ROUND_CONCURRENCY: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error(transparent)]
    Resolver(#[from] ResolverError),
    #[error(
        "discovery.unresolved_at_start is refuse, and {} did not resolve: {}",
        if .0.len() == 1 { "a name" } else { "names" },
        .0.join(", ")
    )]
    Unresolved(Vec<String>),
}

/// What the loop needs to know of the current discovery to prepare a reload.
#[derive(Clone, Debug)]
pub struct Known {
    settings: DiscoveryConfig,
    names: BTreeSet<NameKey>,
}

/// A configuration's names, resolved as far as they need to be before it is applied: a
/// resolver for its settings, and the first answers of the names not yet followed (all of
/// them when the settings changed).
pub struct Prepared {
    settings: DiscoveryConfig,
    resolver: Option<Resolver>,
    names: BTreeSet<NameKey>,
    first: Vec<(NameKey, Lookup)>,
}

impl Prepared {
    /// Builds the resolver and looks up what needs it. Without names, nothing: a node with
    /// literal backends only needs no resolver configuration at all.
    pub async fn new(config: &Config, known: Option<&Known>) -> Result<Self, ResolverError> {
        let names = config.names();
        let settings = config.discovery.clone();
        if names.is_empty() {
            return Ok(Self {
                settings,
                resolver: None,
                names,
                first: Vec::new(),
            });
        }
        let resolver = Resolver::new(&settings)?;
        let todo: Vec<NameKey> = match known {
            Some(k) if k.settings == settings => names.difference(&k.names).cloned().collect(),
            _ => names.iter().cloned().collect(),
        };
        let first = first_round(&resolver, todo).await;
        Ok(Self {
            settings,
            resolver: Some(resolver),
            names,
            first,
        })
    }

    /// The sets the configuration would steer to: the first answers over what `current`
    /// already has.
    pub fn resolved_over(&self, current: &Discovery) -> Resolved {
        let mut table = current.table.clone();
        table.retain(&self.names);
        let refresh = refresh(&self.settings);
        let now = Instant::now();
        for (key, lookup) in &self.first {
            table.record(key, lookup, refresh, now);
        }
        table.resolved()
    }
}

/// Looks every name up once, a bounded number at a time.
async fn first_round(resolver: &Resolver, names: Vec<NameKey>) -> Vec<(NameKey, Lookup)> {
    let mut set = tokio::task::JoinSet::new();
    let mut out = Vec::with_capacity(names.len());
    for key in names {
        if set.len() >= FIRST_ROUND_CONCURRENCY
            && let Some(Ok(done)) = set.join_next().await
        {
            out.push(done);
        }
        let r = resolver.clone();
        set.spawn(async move {
            let lookup = r.lookup(&key.0, key.1).await;
            (key, lookup)
        });
    }
    while let Some(done) = set.join_next().await {
        if let Ok(done) = done {
            out.push(done);
        }
    }
    out
}

fn refresh(settings: &DiscoveryConfig) -> Refresh {
    Refresh {
        min: settings.min_ttl,
        max: settings.max_ttl,
    }
}

/// The loop's discovery: the table, and a follower per name.
pub struct Discovery {
    settings: DiscoveryConfig,
    table: Discovered,
    /// The names followed (the table may hold names a reload has not adopted yet: no).
    followed: BTreeSet<NameKey>,
    followers: Option<follow::Followers>,
    tx: mpsc::Sender<(NameKey, Lookup)>,
}

/// Where the followers' lookups arrive: the loop receives them and gives each to
/// [`Discovery::record`].
pub type Found = mpsc::Receiver<(NameKey, Lookup)>;

impl Discovery {
    /// Resolves every name of `config` once and starts following them; refuses when a name
    /// did not resolve and the configuration says so.
    pub async fn start(config: &Config) -> Result<(Self, Found), DiscoveryError> {
        let prepared = Prepared::new(config, None).await?;
        let (tx, rx) = mpsc::channel(1024);
        let mut d = Self {
            settings: config.discovery.clone(),
            table: Discovered::default(),
            followed: BTreeSet::new(),
            followers: None,
            tx,
        };
        d.adopt(prepared);
        let unresolved: Vec<String> = d
            .table
            .unresolved()
            .into_iter()
            .map(|k| {
                let result = d.table.get(k).map_or("pending", NameState::result_label);
                format!("{} ({result})", k.0)
            })
            .collect();
        if config.discovery.unresolved_at_start == Unresolved::Refuse && !unresolved.is_empty() {
            return Err(DiscoveryError::Unresolved(unresolved));
        }
        for name in &unresolved {
            tracing::warn!(
                name = %name,
                "a name did not resolve: the versions that give it steer to their other backends until it does"
            );
        }
        Ok((d, rx))
    }

    pub fn known(&self) -> Known {
        Known {
            settings: self.settings.clone(),
            names: self.followed.clone(),
        }
    }

    /// Takes a prepared configuration's names (once its desired state is in the kernel):
    /// records the first answers and follows exactly its names.
    pub fn adopt(&mut self, p: Prepared) {
        let refresh = refresh(&p.settings);
        let now = Instant::now();
        self.table.retain(&p.names);
        let mut first_next = BTreeMap::new();
        for (key, lookup) in &p.first {
            let r = self.table.record(key, lookup, refresh, now);
            log_result(key, self.table.get(key), lookup, r.set_changed);
            first_next.insert(key.clone(), r.next);
        }
        // The followers start again with this resolver; a name already followed keeps its
        // schedule and its back-off.
        self.followers = p.resolver.as_ref().map(|resolver| {
            let names = p
                .names
                .iter()
                .map(|key| {
                    let state = self.table.get(key);
                    let delay = first_next.get(key).copied().unwrap_or_else(|| {
                        state
                            .and_then(|s| s.next_lookup)
                            .map_or(Duration::ZERO, |at| at.saturating_duration_since(now))
                    });
                    follow::Follow {
                        key: key.clone(),
                        delay,
                        failures_in_a_row: state.map_or(0, |s| s.failures_in_a_row),
                    }
                })
                .collect();
            follow::Followers::spawn(names, resolver.clone(), refresh, self.tx.clone())
        });
        self.followed.clone_from(&p.names);
        self.settings = p.settings;
    }

    /// Records a follower's lookup; says whether a set changed. Lookups of names no longer
    /// followed (sent before a reload dropped them) are ignored.
    pub fn record(&mut self, key: &NameKey, lookup: &Lookup) -> bool {
        if !self.followed.contains(key) {
            return false;
        }
        let r = self
            .table
            .record(key, lookup, refresh(&self.settings), Instant::now());
        if r.result_changed || r.set_changed {
            log_result(key, self.table.get(key), lookup, r.set_changed);
        }
        r.set_changed
    }

    pub fn resolved(&self) -> Resolved {
        self.table.resolved()
    }

    /// Per service, its names and how they resolve, for `sluice status`.
    pub fn statuses(&self, config: &Config) -> BTreeMap<String, Vec<NameStatus>> {
        let now = Instant::now();
        config
            .services
            .iter()
            .map(|s| {
                let names = uses(s)
                    .map(|(role, name, port)| {
                        let state = self.table.get(&(name.to_owned(), s.family));
                        name_status(role, name, port, state, now)
                    })
                    .collect();
                (s.name.clone(), names)
            })
            .filter(|(_, v): &(String, Vec<NameStatus>)| !v.is_empty())
            .collect()
    }

    /// Per service and role, lookups by result and names failing now, for `/metrics`.
    pub fn series(&self, config: &Config) -> Vec<DiscoverySeries> {
        let mut out: BTreeMap<(String, &'static str), DiscoverySeries> = BTreeMap::new();
        for s in &config.services {
            for (role, name, _) in uses(s) {
                let entry = out
                    .entry((s.name.clone(), role))
                    .or_insert_with(|| DiscoverySeries::new(&s.name, role));
                let Some(state) = self.table.get(&(name.to_owned(), s.family)) else {
                    continue;
                };
                *entry.lookups.entry("ok").or_default() += state.ok;
                for (f, n) in &state.failed {
                    *entry.lookups.entry(f.label()).or_default() += n;
                }
                if matches!(state.last, Some(Err(_))) {
                    entry.failing += 1;
                }
            }
        }
        out.into_values().collect()
    }
}

/// The names a service gives: `(role, name, port)`.
fn uses(s: &crate::config::ServiceConfig) -> impl Iterator<Item = (&'static str, &str, u16)> {
    let vips = s.virtual_addresses.iter().map(|t| ("virtual_address", t));
    let stable = s.stable.iter().map(|b| ("stable", &b.target));
    let canary = s.canary.iter().map(|b| ("canary", &b.target));
    vips.chain(stable)
        .chain(canary)
        .filter_map(|(role, t)| match t {
            Target::Name(n) => Some((role, n.name.as_str(), n.port)),
            Target::Address(_) => None,
        })
}

fn name_status(
    role: &str,
    name: &str,
    port: u16,
    state: Option<&NameState>,
    now: Instant,
) -> NameStatus {
    let default = NameState::default();
    let state = state.unwrap_or(&default);
    let mut lookups: BTreeMap<String, u64> = state
        .failed
        .iter()
        .map(|(f, n)| (f.label().to_owned(), *n))
        .collect();
    lookups.insert("ok".into(), state.ok);
    NameStatus {
        role: role.into(),
        name: name.into(),
        port,
        addresses: state.addresses.iter().map(ToString::to_string).collect(),
        result: state.result_label().into(),
        failures_in_a_row: state.failures_in_a_row,
        last_good_seconds_ago: state
            .last_good
            .map(|t| now.saturating_duration_since(t).as_secs_f64()),
        next_lookup_seconds: state
            .next_lookup
            .map(|t| t.saturating_duration_since(now).as_secs_f64()),
        lookups,
    }
}

/// One line when a name's result or set changes, not one per lookup.
fn log_result(key: &NameKey, state: Option<&NameState>, lookup: &Lookup, set_changed: bool) {
    let Some(state) = state else { return };
    let addresses: Vec<String> = state.addresses.iter().map(ToString::to_string).collect();
    match lookup {
        Lookup::Answer { .. } if set_changed => tracing::info!(
            name = %key.0,
            family = key.1.label(),
            addresses = %addresses.join(","),
            "a name's set changed: steering to the new set"
        ),
        Lookup::Answer { .. } => tracing::info!(
            name = %key.0,
            family = key.1.label(),
            addresses = %addresses.join(","),
            "a name resolves again"
        ),
        Lookup::Failed(f) if state.addresses.is_empty() => tracing::warn!(
            name = %key.0,
            family = key.1.label(),
            result = f.label(),
            "a name does not resolve; its entry has no backends until it does"
        ),
        Lookup::Failed(f) => tracing::warn!(
            name = %key.0,
            family = key.1.label(),
            result = f.label(),
            addresses = %addresses.join(","),
            "a name's lookup failed: steering stays on its last good set"
        ),
    }
}
