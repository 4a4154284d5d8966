//! The drainer's loop: notice shares going to 0, list sockets while there is work, end what
//! the plan says, count it, report finished drains.

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

use sluice_common::maps::VERSION_CANARY;

use super::{
    DrainReport, DrainStats, Update,
    diag::{Ended, TcpSocket},
    kernel::Kernel,
    netns::Namespaces,
    plan::{self, How, Policy, Reason, Verdict},
};

/// How often shares are read when nothing wakes the thread.
const IDLE_TICK: Duration = Duration::from_millis(250);
/// The pause between scans while a drain waits on busy HTTP connections (each scan also
/// watches them for `watch::WATCH_BUDGET`).
const DRAIN_TICK: Duration = Duration::from_millis(5);
/// How often while a drain only waits for its grace (connections without HTTP parsing):
/// no new canary connection can appear, so the next look that matters is the deadline.
const GRACE_TICK: Duration = Duration::from_secs(1);
/// Bounds of the interval between age scans (a quarter of the shortest age).
const AGE_SCAN_MIN: Duration = Duration::from_millis(250);
const AGE_SCAN_MAX: Duration = Duration::from_secs(5);

/// A drain under way.
struct Drain {
    since: Instant,
    /// Started by a share going to 0 while this agent watched (not found at start).
    seen_fall: bool,
    idle: u64,
    at_grace: u64,
    in_flight: u64,
    last_end: Instant,
}

pub struct Worker {
    kernel: Kernel,
    cgroup: PathBuf,
    update: Update,
    stats: Arc<Mutex<DrainStats>>,
    reports: tokio::sync::mpsc::UnboundedSender<DrainReport>,
    namespaces: Namespaces,
    /// Whether each service's canary was off at the last look (absent: not looked at yet).
    off: HashMap<String, bool>,
    drains: HashMap<String, Drain>,
    next_age_scan: Instant,
    /// The last scan left busy HTTP connections of a drain waiting.
    hot: bool,
    /// When sockets without a kernel timestamp were first listed (signals off).
    first_seen: HashMap<u64, Instant>,
}

impl Worker {
    pub fn new(
        kernel: Kernel,
        cgroup: PathBuf,
        update: Update,
        stats: Arc<Mutex<DrainStats>>,
        reports: tokio::sync::mpsc::UnboundedSender<DrainReport>,
    ) -> Self {
        Self {
            kernel,
            cgroup,
            update,
            stats,
            reports,
            namespaces: Namespaces::default(),
            off: HashMap::new(),
            drains: HashMap::new(),
            next_age_scan: Instant::now(),
            hot: false,
            first_seen: HashMap::new(),
        }
    }

    pub fn run(mut self, updates: mpsc::Receiver<Update>) {
        loop {
            self.look_at_shares();
            let age_due = self.age_scan_period().is_some() && Instant::now() >= self.next_age_scan;
            if !self.drains.is_empty() || age_due {
                self.scan(age_due);
            }
            let wait = self.next_look();
            match updates.recv_timeout(wait) {
                Ok(u) => {
                    self.update = u;
                    // Take the newest of any queued behind it.
                    while let Ok(u) = updates.try_recv() {
                        self.update = u;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    /// Starts a drain for every service whose canary went off (or is off when first seen:
    /// what a restart cut short is redone), and drops drains whose canary came back.
    fn look_at_shares(&mut self) {
        let now = Instant::now();
        let mut names = HashSet::new();
        for p in &self.update.policies {
            names.insert(p.name.clone());
            let off = p.on_rollback
                && !p.canary_backends.is_empty()
                && self.kernel.canary_ppm(&p.vip) == Some(0);
            let before = self.off.insert(p.name.clone(), off);
            if off && before != Some(true) && !self.drains.contains_key(&p.name) {
                self.drains.insert(
                    p.name.clone(),
                    Drain {
                        since: now,
                        seen_fall: before == Some(false),
                        idle: 0,
                        at_grace: 0,
                        in_flight: 0,
                        last_end: now,
                    },
                );
            }
            if !off && self.drains.remove(&p.name).is_some() {
                tracing::info!(service = %p.name, "the canary takes connections again: its drain stops");
            }
        }
        self.off.retain(|n, _| names.contains(n));
        self.drains.retain(|n, _| names.contains(n));
    }

    /// How long to sleep before the next look.
    fn next_look(&self) -> Duration {
        if self.drains.is_empty() {
            return IDLE_TICK;
        }
        if self.hot {
            return DRAIN_TICK;
        }
        let now = Instant::now();
        let grace_due = self
            .update
            .policies
            .iter()
            .filter_map(|p| Some(self.drains.get(&p.name)?.since + p.grace))
            .map(|at| at.saturating_duration_since(now))
            .min()
            .unwrap_or(GRACE_TICK);
        grace_due.clamp(DRAIN_TICK, GRACE_TICK)
    }

    fn age_scan_period(&self) -> Option<Duration> {
        self.update
            .policies
            .iter()
            .filter_map(|p| p.max_age)
            .min()
            .map(|a| (a / 4).clamp(AGE_SCAN_MIN, AGE_SCAN_MAX))
    }

    /// Lists every namespace's established sockets and ends what the plan says.
    fn scan(&mut self, ages: bool) {
        let now = Instant::now();
        if ages && let Some(period) = self.age_scan_period() {
            self.next_age_scan = now + period;
        }
        let by_id: HashMap<u32, &Policy> = self.update.policies.iter().map(|p| (p.id, p)).collect();
        let mono_now = crate::sys::monotonic_ns();
        let mut waiting: HashMap<String, u64> = HashMap::new();
        let mut ended: Vec<(String, Reason, How, bool)> = Vec::new();
        let mut listed = HashSet::new();
        let watch_until = now + super::watch::WATCH_BUDGET;
        let mut watched = 0;
        self.hot = false;
        let namespaces = self
            .namespaces
            .refresh(&self.cgroup, &self.update.netns_dirs);
        for (ino, diag) in namespaces {
            let mut busy: Vec<(TcpSocket, String, Reason)> = Vec::new();
            let mut sockets = Vec::new();
            for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
                if let Err(e) = diag.established(family, &mut sockets) {
                    tracing::warn!(namespace = ino, error = %e, "listing sockets failed");
                }
            }
            let mut at_grace: Vec<(TcpSocket, String, Reason, bool)> = Vec::new();
            for s in sockets {
                let cookie = s.id.cookie();
                let Some(tag) = self.kernel.tag(cookie) else {
                    continue;
                };
                let Some(p) = by_id.get(&tag.service) else {
                    continue;
                };
                listed.insert(cookie);
                let destination = s.id.destination(s.family);
                let mut verdict = Verdict::Skip;
                if let Some(d) = self.drains.get(&p.name) {
                    verdict = plan::rollback(p, &s, &tag, destination, now - d.since);
                }
                if verdict == Verdict::Skip && ages {
                    let age = if tag.connect_ns != 0 {
                        Duration::from_nanos(mono_now.saturating_sub(tag.connect_ns))
                    } else {
                        now - *self.first_seen.entry(cookie).or_insert(now)
                    };
                    verdict = plan::max_age(p, &s, &tag, age);
                }
                match verdict {
                    Verdict::Skip => {}
                    Verdict::Wait => {
                        let draining =
                            tag.version == VERSION_CANARY && self.drains.contains_key(&p.name);
                        let reason = if draining {
                            Reason::Rollback
                        } else {
                            Reason::MaxAge
                        };
                        if draining && p.http1 {
                            self.hot = true;
                        }
                        if p.http1 && watched < super::watch::WATCH_MAX {
                            watched += 1;
                            busy.push((s, p.name.clone(), reason));
                        } else if draining {
                            *waiting.entry(p.name.clone()).or_default() += 1;
                        }
                    }
                    Verdict::End(reason, How::Idle) => {
                        // Read the tag again just before: a request that left since the
                        // listing keeps its connection until the next look.
                        let still =
                            !p.http1 || self.kernel.tag(cookie).is_some_and(|t| t.outstanding == 0);
                        if !still {
                            *waiting.entry(p.name.clone()).or_default() += 1;
                            continue;
                        }
                        match diag.destroy(&[s]) {
                            Ok(a) if a[0] == Ended::Yes => {
                                ended.push((p.name.clone(), reason, How::Idle, false));
                            }
                            Ok(a) => a[0].warn_if_refused(&p.name),
                            Err(e) => {
                                tracing::warn!(service = %p.name, error = %e, "ending a connection failed")
                            }
                        }
                    }
                    Verdict::End(reason, How::Grace) => {
                        let busy = p.http1 && tag.outstanding != 0;
                        at_grace.push((s, p.name.clone(), reason, busy));
                    }
                }
            }
            if !at_grace.is_empty() {
                let list: Vec<TcpSocket> = at_grace.iter().map(|g| g.0).collect();
                match diag.destroy(&list) {
                    Ok(answers) => {
                        for ((_, name, reason, busy), a) in at_grace.into_iter().zip(answers) {
                            if a == Ended::Yes {
                                ended.push((name, reason, How::Grace, busy));
                            } else {
                                a.warn_if_refused(&name);
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "ending connections at the grace failed"),
                }
            }
            super::watch::watch_busy(&self.kernel, diag, &mut busy, watch_until, &mut ended);
            for (_, name, reason) in busy {
                if reason == Reason::Rollback {
                    *waiting.entry(name).or_default() += 1;
                }
            }
        }
        if ages {
            self.first_seen.retain(|c, _| listed.contains(c));
        }
        self.count(&ended, now);
        self.finish(&waiting);
    }

    fn count(&mut self, ended: &[(String, Reason, How, bool)], now: Instant) {
        if ended.is_empty() {
            return;
        }
        if let Ok(mut stats) = self.stats.lock() {
            for (name, reason, how, _) in ended {
                *stats
                    .ended
                    .entry((name.clone(), *reason, *how))
                    .or_default() += 1;
            }
        }
        for (name, reason, how, busy) in ended {
            if *reason == Reason::MaxAge {
                continue;
            }
            if let Some(d) = self.drains.get_mut(name) {
                match how {
                    How::Idle => d.idle += 1,
                    How::Grace => d.at_grace += 1,
                }
                d.in_flight += u64::from(*busy);
                d.last_end = now;
            }
        }
        let aged = ended.iter().filter(|e| e.1 == Reason::MaxAge).count();
        if aged > 0 {
            tracing::debug!(
                connections = aged,
                "ended connections past their maximum age"
            );
        }
    }

    /// Drains with no canary connection left are done: said, counted, reported.
    fn finish(&mut self, waiting: &HashMap<String, u64>) {
        let unreachable = self.namespaces.unreachable();
        if let Ok(mut stats) = self.stats.lock() {
            stats.unreachable_namespaces = unreachable;
        }
        let done: Vec<String> = self
            .drains
            .keys()
            .filter(|n| !waiting.contains_key(*n))
            .cloned()
            .collect();
        for name in done {
            let d = self.drains.remove(&name).expect("listed above");
            if !d.seen_fall && d.idle + d.at_grace == 0 {
                continue;
            }
            let report = DrainReport {
                service: name.clone(),
                idle: d.idle,
                at_grace: d.at_grace,
                in_flight: d.in_flight,
                seconds: (d.last_end - d.since).as_secs_f64(),
                unreachable_namespaces: unreachable,
            };
            tracing::info!(
                service = %name,
                connections = d.idle + d.at_grace,
                idle = d.idle,
                at_grace = d.at_grace,
                in_flight = d.in_flight,
                seconds = report.seconds,
                unreachable_namespaces = unreachable,
                "drained the canary's connections"
            );
            let _ = self.reports.send(report);
        }
    }
}
