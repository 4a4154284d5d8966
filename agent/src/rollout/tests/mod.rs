//! The state machine against synthetic counters, with an injected clock. The kernel-side
//! scenarios (real servers, real load) are in tests/tests/rollout.rs; these pin down the
//! decisions themselves.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use sluice_common::metrics::{
    FAILED_REFUSED, HIST_TTFB, HTTP_CODES, HTTP_REQUESTS, HTTP_RESPONSES, METRIC_SLOTS,
    latency_bucket_of,
};

use super::*;
use crate::{
    config::{Config, parse_str},
    desired::RolloutShare,
    view::{Action, Check, Phase, ServiceSample, Verdict},
};

fn config(rollout: &str, state: &std::path::Path) -> Config {
    let yaml = format!(
        r#"
state_path: {}
services:
  - name: web
    virtual_addresses: ["10.99.0.1:80"]
    l7: http1
    stable: [{{address: "127.0.0.1:8001"}}]
    canary: [{{address: "127.0.0.1:8002"}}]
    rollout:
{rollout}
"#,
        state.display()
    );
    parse_str(&yaml).expect("test config")
}

/// Cumulative counters of a version: `requests` answered 200 in `ttfb_ns`, of which
/// `errors` answered 503, and `refused` failed connects.
fn version(requests: u64, errors: u64, refused: u64, ttfb_ns: u64) -> Vec<u64> {
    let mut v = vec![0u64; METRIC_SLOTS as usize];
    let code = |c: u16| {
        HTTP_RESPONSES as usize + HTTP_CODES.iter().position(|x| *x == c).expect("test value")
    };
    v[HTTP_REQUESTS as usize] = requests;
    v[code(200)] = requests - errors;
    v[code(503)] = errors;
    v[FAILED_REFUSED as usize] = refused;
    v[HIST_TTFB as usize + latency_bucket_of(ttfb_ns) as usize] = requests;
    v
}

fn sample(stable: Vec<u64>, canary: Vec<u64>) -> Vec<ServiceSample> {
    vec![ServiceSample {
        name: "web".into(),
        canary_ppm: 0,
        config_ppm: 0,
        http1: true,
        steer: [0; sluice_common::counters::STEER_COUNTERS as usize],
        backends: [1, 1],
        versions: [stable, canary],
    }]
}

/// A scratch directory for a state file, removed when dropped.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new() -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "sluice-rollout-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).expect("scratch dir");
        Self(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A clock that moves only when told to.
struct ManualClock(Mutex<Moment>);

impl ManualClock {
    fn new() -> Arc<Self> {
        Arc::new(Self(Mutex::new(Moment {
            at: Instant::now(),
            unix_ms: 1_800_000_000_000,
        })))
    }

    fn advance(&self, by: Duration) {
        let mut m = self.0.lock().expect("clock");
        m.at += by;
        m.unix_ms += by.as_millis() as u64;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Moment {
        *self.0.lock().expect("clock")
    }
}

struct Run {
    c: Controller,
    clock: Arc<ManualClock>,
    /// Cumulative (stable requests, stable errors, canary requests, canary errors, refused).
    n: [u64; 5],
    canary_ttfb: u64,
    weights: Vec<u32>,
}

impl Run {
    fn new(rollout: &str) -> (Self, Scratch) {
        let dir = Scratch::new();
        let cfg = config(rollout, &dir.0.join("state.json"));
        let clock = ManualClock::new();
        let (c, _) = Controller::load(&cfg, clock.clone()).expect("load");
        (
            Self {
                c,
                clock,
                n: [0; 5],
                canary_ttfb: 20_000,
                weights: Vec::new(),
            },
            dir,
        )
    }

    /// One 250 ms tick with `stable`/`canary` more requests, `canary_errors` of them 503.
    fn tick(&mut self, stable: u64, canary: u64, canary_errors: u64, refused: u64) {
        self.clock.advance(TICK);
        self.n[0] += stable;
        self.n[2] += canary;
        self.n[3] += canary_errors;
        self.n[4] += refused;
        let s = sample(
            version(self.n[0], self.n[1], 0, 20_000),
            version(self.n[2], self.n[3], self.n[4], self.canary_ttfb),
        );
        let out = self.c.tick(&s);
        self.weights.extend(out.weights.iter().map(|(_, w)| *w));
    }

    fn phase(&self) -> Phase {
        self.c.has_rollout("web").expect("rollout")
    }

    fn actions(&self) -> Vec<Action> {
        self.c.rollouts["web"]
            .state
            .decisions
            .iter()
            .map(|d| d.action)
            .collect()
    }
}

mod scenarios;
mod simulation;
