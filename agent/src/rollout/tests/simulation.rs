//! The analysis characterised: the controller, with its default settings, against many
//! seeded runs of synthetic traffic per case, with the Waiting loop's repeated looks as they
//! happen. Deterministic (a fixed seed per run). Each run is a canary rollout from its first
//! step to a final phase or the deadline; the fault, if any, is there from the start.
//!
//! Traffic: 100 requests a second on the service, split by the share the controller sets;
//! each request errs with its version's error rate and takes a log-normal time (median 4 ms,
//! sigma 0.4) plus, for one request in 200 of either version, a hiccup of 15 to 25 ms. The
//! table this prints is the one in docs/rollouts.md:
//! `cargo test -p sluice --release simulation -- --nocapture`.

use sluice_common::metrics::{
    HIST_TTFB, HTTP_CODES, HTTP_REQUESTS, METRIC_SLOTS, latency_bucket_of,
};

use super::*;

/// The default settings (every key but the steps), with the example's steps.
const DEFAULTS: &str = "      steps: [5, 10, 25, 50]";

const RATE_PER_TICK: u64 = 25;

/// splitmix64: small, fast, and the same numbers on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn uniform(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f64 {
        // Box-Muller; one of the pair is enough here.
        let (u1, u2) = (self.uniform().max(1e-300), self.uniform());
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

#[derive(Clone, Copy)]
struct Version {
    error_rate: f64,
    /// Added to every request.
    extra_ms: f64,
    /// Added to this share of requests (a tail regression).
    tail_share: f64,
    tail_ms: f64,
}

const HEALTHY: Version = Version {
    error_rate: 0.0,
    extra_ms: 0.0,
    tail_share: 0.0,
    tail_ms: 0.0,
};

impl Version {
    fn latency_ms(&self, rng: &mut Rng) -> f64 {
        let mut ms = 4.0 * (0.4 * rng.normal()).exp() + self.extra_ms;
        if rng.uniform() < 0.005 {
            ms += 15.0 + 10.0 * rng.uniform();
        }
        if rng.uniform() < self.tail_share {
            ms += self.tail_ms;
        }
        ms
    }
}

/// Cumulative counters of one version, in the kernel's layout.
struct Counters(Vec<u64>);

impl Counters {
    fn new() -> Self {
        Self(vec![0; METRIC_SLOTS as usize])
    }

    fn request(&mut self, v: &Version, rng: &mut Rng) {
        let code = |c: u16| {
            sluice_common::metrics::HTTP_RESPONSES as usize
                + HTTP_CODES
                    .iter()
                    .position(|x| *x == c)
                    .expect("a counted code")
        };
        self.0[HTTP_REQUESTS as usize] += 1;
        let status = if rng.uniform() < v.error_rate {
            503
        } else {
            200
        };
        self.0[code(status)] += 1;
        let ns = (v.latency_ms(rng) * 1e6) as u64;
        self.0[HIST_TTFB as usize + latency_bucket_of(ns) as usize] += 1;
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum End {
    Promoted,
    RolledBack,
    /// Paused by the deadline (`on_deadline: pause`), or still waiting after 20 minutes.
    Undecided,
}

/// One rollout from the first step: how it ended and when (seconds).
fn run(seed: u64, stable: Version, canary: Version, cfg: &Config) -> (End, f64) {
    let mut rng = Rng(seed);
    let clock = ManualClock::new();
    let (mut c, _) = Controller::load(cfg, clock.clone()).expect("load");
    let (mut s, mut k) = (Counters::new(), Counters::new());
    let mut share = 0.0;
    let limit = 20 * 60 * 4; // 20 minutes of ticks: twice the default deadline.
    for t in 0..limit {
        clock.advance(TICK);
        for _ in 0..RATE_PER_TICK {
            if rng.uniform() < share {
                k.request(&canary, &mut rng);
            } else {
                s.request(&stable, &mut rng);
            }
        }
        let out = c.tick(&sample(s.0.clone(), k.0.clone()));
        if let Some((_, w)) = out.weights.last() {
            share = f64::from(*w) / f64::from(sluice_common::PPM);
        }
        let seconds = f64::from(t + 1) * TICK.as_secs_f64();
        match c.has_rollout("web") {
            Some(Phase::Succeeded | Phase::Promoting) => return (End::Promoted, seconds),
            Some(Phase::RolledBack | Phase::Failed) => return (End::RolledBack, seconds),
            Some(Phase::Paused) => return (End::Undecided, seconds),
            _ => {}
        }
    }
    (End::Undecided, limit as f64 * TICK.as_secs_f64())
}

struct Case {
    name: &'static str,
    stable: Version,
    canary: Version,
    /// Whether the canary is faulty (what a rollback would be right for).
    faulty: bool,
}

fn cases() -> Vec<Case> {
    let errs = |p: f64| Version {
        error_rate: p,
        ..HEALTHY
    };
    let slow = |ms: f64| Version {
        extra_ms: ms,
        ..HEALTHY
    };
    vec![
        Case {
            name: "healthy, 0 % errors",
            stable: HEALTHY,
            canary: HEALTHY,
            faulty: false,
        },
        Case {
            name: "healthy, 1 % errors",
            stable: errs(0.01),
            canary: errs(0.01),
            faulty: false,
        },
        Case {
            name: "5xx +1 point",
            stable: errs(0.01),
            canary: errs(0.02),
            faulty: true,
        },
        Case {
            name: "5xx +2 points",
            stable: errs(0.01),
            canary: errs(0.03),
            faulty: true,
        },
        Case {
            name: "5xx +5 points",
            stable: errs(0.01),
            canary: errs(0.06),
            faulty: true,
        },
        Case {
            name: "latency +10 ms",
            stable: HEALTHY,
            canary: slow(10.0),
            faulty: true,
        },
        Case {
            name: "latency +30 ms",
            stable: HEALTHY,
            canary: slow(30.0),
            faulty: true,
        },
        Case {
            name: "latency +100 ms",
            stable: HEALTHY,
            canary: slow(100.0),
            faulty: true,
        },
        Case {
            name: "tail: +30 ms on 20 %",
            stable: HEALTHY,
            canary: Version {
                tail_share: 0.2,
                tail_ms: 30.0,
                ..HEALTHY
            },
            faulty: true,
        },
    ]
}

struct Row {
    name: &'static str,
    faulty: bool,
    promoted: u32,
    rolled_back: u32,
    undecided: u32,
    median_seconds: f64,
}

/// Every case's runs, a thread per case (the runs are seeded and share nothing but the
/// configuration, which the simulation never saves to), rows in the order of `cases()`.
fn characterise(runs: u32) -> Vec<Row> {
    let dir = Scratch::new();
    let cfg = config(DEFAULTS, &dir.0.join("state.json"));
    std::thread::scope(|scope| {
        let threads: Vec<_> = cases()
            .into_iter()
            .enumerate()
            .map(|(i, case)| {
                let cfg = &cfg;
                scope.spawn(move || characterise_case(i, &case, runs, cfg))
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().expect("a simulated case panicked"))
            .collect()
    })
}

fn characterise_case(i: usize, case: &Case, runs: u32, cfg: &Config) -> Row {
    let mut row = Row {
        name: case.name,
        faulty: case.faulty,
        promoted: 0,
        rolled_back: 0,
        undecided: 0,
        median_seconds: f64::NAN,
    };
    let right = if case.faulty {
        End::RolledBack
    } else {
        End::Promoted
    };
    let mut times = Vec::new();
    for r in 0..runs {
        let seed = (i as u64) << 32 | u64::from(r);
        let (end, at) = run(seed, case.stable, case.canary, cfg);
        match end {
            End::Promoted => row.promoted += 1,
            End::RolledBack => row.rolled_back += 1,
            End::Undecided => row.undecided += 1,
        }
        if end == right {
            times.push(at);
        }
    }
    times.sort_by(f64::total_cmp);
    if !times.is_empty() {
        row.median_seconds = times[times.len() / 2];
    }
    row
}

fn table(rows: &[Row], runs: u32) -> String {
    let mut out = String::from(
        "| case | promoted | rolled back | undecided | median time to the right decision |\n\
         |---|---|---|---|---|\n",
    );
    for r in rows {
        let pct = |n: u32| format!("{:.1} %", 100.0 * f64::from(n) / f64::from(runs));
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            r.name,
            pct(r.promoted),
            pct(r.rolled_back),
            pct(r.undecided),
            if r.median_seconds.is_nan() {
                "–".into()
            } else {
                format!("{:.0} s", r.median_seconds)
            }
        ));
    }
    out
}

/// 1 000 runs a case, in every `cargo xtask test` (about a minute unoptimised). The goals:
/// at most 1 % false rollbacks of healthy canaries; faults at twice the margin or more never
/// promoted, and those the analysis can see within the deadline at this traffic (5xx +5
/// points, the latency faults) caught in at least 99 % of runs. 5xx +2 points at a 5 %
/// first step of 100 requests a second is caught in about 93 % of runs: the rest are
/// paused at the deadline (`on_deadline: pause`) at their step's share, still undecided;
/// the table says so and the test holds that line.
#[test]
fn the_default_settings_over_a_thousand_runs_a_case() {
    let runs = 1_000;
    let rows = characterise(runs);
    println!("{}", table(&rows, runs));
    let by = |name: &str| rows.iter().find(|r| r.name == name).expect("case");
    for r in rows.iter().filter(|r| !r.faulty) {
        assert!(
            r.rolled_back * 100 <= runs,
            "{}: {} false rollbacks",
            r.name,
            r.rolled_back
        );
    }
    for name in [
        "5xx +2 points",
        "5xx +5 points",
        "latency +30 ms",
        "latency +100 ms",
        "tail: +30 ms on 20 %",
    ] {
        assert_eq!(by(name).promoted, 0, "{name} promoted");
    }
    for name in [
        "5xx +5 points",
        "latency +30 ms",
        "latency +100 ms",
        "tail: +30 ms on 20 %",
    ] {
        assert!(
            by(name).rolled_back * 100 >= 99 * runs,
            "{name}: {}",
            by(name).rolled_back
        );
    }
    assert!(by("5xx +2 points").rolled_back * 100 >= 90 * runs);
}
