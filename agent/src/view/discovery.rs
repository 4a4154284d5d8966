//! What a name a service gives has resolved to, as `sluice status` shows it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Every result a lookup can have: `ok`, then the failures.
pub const LOOKUP_RESULTS: [&str; 8] = [
    "ok",
    "empty",
    "nxdomain",
    "servfail",
    "refused",
    "timeout",
    "unreachable",
    "error",
];

/// One name of one service: where it is used, what the kernel steers to for it, and how its
/// lookups have gone.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct NameStatus {
    /// `stable`, `canary` or `virtual_address`.
    pub role: String,
    pub name: String,
    pub port: u16,
    /// The last good answer: what steering uses (empty: the name has never resolved).
    pub addresses: Vec<String>,
    /// The last lookup's result (`ok`, `empty`, `nxdomain`, `servfail`, `refused`,
    /// `timeout`, `unreachable`, `error`; `pending` before the first).
    pub result: String,
    /// Lookups that failed since the last good one.
    pub failures_in_a_row: u64,
    /// Seconds since the last good answer.
    pub last_good_seconds_ago: Option<f64>,
    /// Seconds until the next lookup.
    pub next_lookup_seconds: Option<f64>,
    /// Lookups so far, by result.
    pub lookups: BTreeMap<String, u64>,
}

/// One service's names in one role (`stable`, `canary`, `virtual_address`), for `/metrics`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiscoverySeries {
    pub service: String,
    pub role: &'static str,
    /// Lookups by result label, summed over the role's names.
    pub lookups: BTreeMap<&'static str, u64>,
    /// The role's names whose last lookup failed (steering on their last good set).
    pub failing: u32,
}

impl DiscoverySeries {
    pub fn new(service: &str, role: &'static str) -> Self {
        Self {
            service: service.into(),
            role,
            lookups: BTreeMap::new(),
            failing: 0,
        }
    }
}
