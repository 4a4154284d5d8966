//! Kernel samples -> Prometheus text. Names carry a `sluice_` prefix and units; labels are
//! `service`, `version` (`stable`|`canary`) and, per metric, one low-cardinality label.

use prometheus::TextEncoder;
use sluice_common::{
    PPM,
    counters::{STEER_COUNTER_NAMES, STEERED_CANARY, STEERED_STABLE},
    metrics::{
        BYTES_RECEIVED, BYTES_SENT, CLOSED, ESTABLISHED, FAILED_OTHER, FAILED_REFUSED,
        FAILED_TIMEOUT, HIST_CONNECT, HIST_LIFETIME, HIST_RTT, HIST_TTFB, HTTP_CODES,
        HTTP_INCOMPLETE, HTTP_INTERIM, HTTP_METHODS, HTTP_REQUESTS, HTTP_RESPONSES,
        HTTP_RESPONSES_OTHER, HTTP_UNPARSEABLE_REQUESTS, HTTP_UNPARSEABLE_RESPONSES,
        RESETS_RECEIVED, RESETS_SENT, RETRANSMITS, RTO_EXPIRIES,
    },
};

use super::{
    ShareWindows,
    families::{Families, VERSIONS, VersionLabels, pair},
    rollout::rollout_series,
};
use crate::drain::{DrainStats, How, Reason};
use crate::view::{
    AgentHealth, DiscoverySeries, LOOKUP_RESULTS, ReloadResult, RolloutStatus, ServiceSample,
};

/// The whole exposition.
pub fn encode(
    samples: &[ServiceSample],
    windows: &ShareWindows,
    rollouts: &[(String, RolloutStatus)],
    discovery: &[DiscoverySeries],
    health: &AgentHealth,
    drain: &DrainStats,
) -> Result<String, prometheus::Error> {
    let mut f = Families::default();
    let info = vec![pair("version", env!("CARGO_PKG_VERSION"))];
    f.gauge(
        "sluice_build_info",
        "sluice agent build; the value is always 1.",
        info,
        1.0,
    );
    health_series(&mut f, health);
    for s in samples {
        service_series(&mut f, s, windows);
        for (v, name) in VERSIONS.iter().enumerate() {
            let labels = VersionLabels {
                service: &s.name,
                version: name,
            };
            version_series(&mut f, s, v, &labels);
            if s.http1 {
                http_series(&mut f, &s.versions[v], &labels);
            }
        }
    }
    for (service, r) in rollouts {
        rollout_series(&mut f, service, r);
    }
    discovery_series(&mut f, discovery);
    drain_series(&mut f, samples, drain);
    let mut out = String::default();
    TextEncoder::new().encode_utf8(&f.0, &mut out)?;
    Ok(out)
}

fn service_series(f: &mut Families, s: &ServiceSample, windows: &ShareWindows) {
    let svc = || vec![pair("service", &s.name)];
    f.gauge(
        "sluice_canary_weight_ratio",
        "Share of new connections the kernel sends to the canary now (0-1).",
        svc(),
        f64::from(s.canary_ppm) / f64::from(PPM),
    );
    f.gauge(
        "sluice_canary_configured_weight_ratio",
        "Share of new connections the configuration asks for (0-1); differs after `sluice weight`.",
        svc(),
        f64::from(s.config_ppm) / f64::from(PPM),
    );
    let (connections, requests) = windows.shares(&s.name);
    if let Some(c) = connections {
        f.gauge(
            "sluice_canary_connection_share_ratio",
            "Measured share of new connections steered to the canary over the last minute.",
            svc(),
            c,
        );
    }
    if let Some(r) = requests {
        f.gauge(
            "sluice_canary_request_share_ratio",
            "Measured share of HTTP requests sent to the canary over the last minute (differs from the connection share when connections are long-lived).",
            svc(),
            r,
        );
    }
    for (i, event) in STEER_COUNTER_NAMES.iter().enumerate() {
        if i == STEERED_STABLE as usize || i == STEERED_CANARY as usize {
            continue;
        }
        f.counter(
            "sluice_steering_events_total",
            "Steering outcomes other than a normal steer: fallbacks, refusals (no_backend), exclusions, getpeername rewrites.",
            vec![pair("service", &s.name), pair("event", event)],
            s.steer[i],
        );
    }
}

/// Every (reason, how) a connection can be ended for.
const DRAIN_KINDS: [(Reason, How); 3] = [
    (Reason::Rollback, How::Idle),
    (Reason::Rollback, How::Grace),
    (Reason::MaxAge, How::Idle),
];

fn drain_series(f: &mut Families, samples: &[ServiceSample], drain: &DrainStats) {
    // Zeros too, for every service, so that `rate()` sees the first.
    for s in samples {
        for (reason, how) in DRAIN_KINDS {
            let n = drain
                .ended
                .get(&(s.name.clone(), reason, how))
                .copied()
                .unwrap_or(0);
            f.counter(
                "sluice_connections_drained_total",
                "Steered connections this agent ended: reason rollback (the canary's share went to 0) or max_connection_age; how idle (between requests) or grace (at the deadline, whatever it was doing).",
                vec![
                    pair("service", &s.name),
                    pair("reason", reason.name()),
                    pair("how", how.name()),
                ],
                n,
            );
        }
    }
    f.gauge(
        "sluice_drain_unreachable_namespaces",
        "Network namespaces of steered processes the agent could not enter (entering needs CAP_SYS_ADMIN): their connections are not drained.",
        Vec::new(),
        drain.unreachable_namespaces as f64,
    );
}

fn discovery_series(f: &mut Families, series: &[DiscoverySeries]) {
    for s in series {
        let labels = |extra: Option<&str>| {
            let mut l = vec![pair("service", &s.service), pair("version", s.role)];
            if let Some(r) = extra {
                l.push(pair("result", r));
            }
            l
        };
        // Every result for every service and role, zeros too, so that `rate()` sees the
        // first failure.
        for result in LOOKUP_RESULTS {
            f.counter(
                "sluice_discovery_lookups_total",
                "DNS lookups of the names a service gives, by result; `version` is stable, canary or virtual_address. A failed or empty lookup keeps the last good set.",
                labels(Some(result)),
                s.lookups.get(result).copied().unwrap_or(0),
            );
        }
        f.gauge(
            "sluice_discovery_names_failing",
            "Names of this service and version whose last lookup failed: steering uses their last good answer.",
            labels(None),
            f64::from(s.failing),
        );
    }
}

fn version_series(f: &mut Families, s: &ServiceSample, v: usize, l: &VersionLabels<'_>) {
    let m = &s.versions[v];
    f.gauge(
        "sluice_backends",
        "Backend addresses of this version in the kernel now (literal ones and what names resolved to).",
        l.pairs(&[]),
        f64::from(s.backends[v]),
    );
    let at = |slot: u32| m[slot as usize];
    let steered = s.steer[if v == 0 {
        STEERED_STABLE
    } else {
        STEERED_CANARY
    } as usize];
    f.counter(
        "sluice_connections_attempted_total",
        "connect() calls to a virtual address steered to this version (cgroup/connect4|6).",
        l.pairs(&[]),
        steered,
    );
    f.counter(
        "sluice_connections_established_total",
        "Handshakes completed: the SYN-ACK arrived (cgroup_skb ingress).",
        l.pairs(&[]),
        at(ESTABLISHED),
    );
    for (reason, slot) in [
        ("refused", FAILED_REFUSED),
        ("timeout", FAILED_TIMEOUT),
        ("other", FAILED_OTHER),
    ] {
        f.counter(
            "sluice_connections_failed_total",
            "Handshakes that failed: refused (a reset answered the SYN), timeout (SYNs retransmitted, none answered), other (tp_btf tcp_destroy_sock, tcp_receive_reset).",
            l.pairs(&[("reason", reason)]),
            at(slot),
        );
    }
    f.counter(
        "sluice_connections_closed_total",
        "Established connections ended: at a reset, or when the kernel destroyed the socket (tp_btf tcp_receive_reset, tcp_send_reset, tcp_destroy_sock).",
        l.pairs(&[]),
        at(CLOSED),
    );
    f.gauge(
        "sluice_connections_active",
        "Established connections not yet closed.",
        l.pairs(&[]),
        at(ESTABLISHED).saturating_sub(at(CLOSED)) as f64,
    );
    let counters = [
        (
            "sluice_tcp_retransmits_total",
            "Retransmitted segments: the socket's total_retrans, as it grows (tp_btf tcp_retransmit_skb, tcp_destroy_sock).",
            RETRANSMITS,
        ),
        (
            "sluice_tcp_rto_expirations_total",
            "Retransmission timer expiries that retransmitted, as tcp_info's tcpi_total_rto (tp_btf tcp_retransmit_skb, tcp_destroy_sock).",
            RTO_EXPIRIES,
        ),
        (
            "sluice_tcp_resets_received_total",
            "Resets received (tp_btf tcp_receive_reset).",
            RESETS_RECEIVED,
        ),
        (
            "sluice_tcp_resets_sent_total",
            "Resets sent (tp_btf tcp_send_reset).",
            RESETS_SENT,
        ),
        (
            "sluice_sent_bytes_total",
            "Bytes acknowledged by the peer, counted at the connection's end (tcp_sock bytes_acked).",
            BYTES_SENT,
        ),
        (
            "sluice_received_bytes_total",
            "Bytes received, counted at the connection's end (tcp_sock bytes_received).",
            BYTES_RECEIVED,
        ),
    ];
    for (name, help, slot) in counters {
        f.counter(name, help, l.pairs(&[]), at(slot));
    }
    let histograms = [
        (
            "sluice_tcp_rtt_seconds",
            "Smoothed RTT of each established connection, at its end (tcp_sock srtt_us).",
            HIST_RTT,
        ),
        (
            "sluice_connection_duration_seconds",
            "Established to the connection's end (a reset, or the kernel destroying the socket).",
            HIST_LIFETIME,
        ),
    ];
    for (name, help, hist) in histograms {
        f.histogram(name, help, l.pairs(&[]), &m[hist as usize..]);
    }
    f.latency_histogram(
        "sluice_connect_duration_seconds",
        "SYN sent to SYN-ACK received (cgroup_skb egress and ingress).",
        l.pairs(&[]),
        &m[HIST_CONNECT as usize..],
    );
}

fn http_series(f: &mut Families, m: &[u64], l: &VersionLabels<'_>) {
    for (i, method) in HTTP_METHODS.iter().enumerate() {
        f.counter(
            "sluice_http_requests_total",
            "HTTP/1.x requests by method (cgroup_skb egress).",
            l.pairs(&[("method", method)]),
            m[HTTP_REQUESTS as usize + i],
        );
    }
    let help = "HTTP/1.x final responses by status class and code; code=\"other\" for uncommon codes (cgroup_skb ingress).";
    for (i, code) in HTTP_CODES.iter().enumerate() {
        let class = format!("{}xx", code / 100);
        f.counter(
            "sluice_http_responses_total",
            help,
            l.pairs(&[("class", &class), ("code", &code.to_string())]),
            m[HTTP_RESPONSES as usize + i],
        );
    }
    for c in 1..=5 {
        f.counter(
            "sluice_http_responses_total",
            help,
            l.pairs(&[("class", &format!("{c}xx")), ("code", "other")]),
            m[HTTP_RESPONSES_OTHER as usize + c - 1],
        );
    }
    for (name, help, slot) in [
        (
            "sluice_http_interim_responses_total",
            "1xx interim responses (100 Continue, 103 Early Hints); not counted as responses.",
            HTTP_INTERIM,
        ),
        (
            "sluice_http_incomplete_requests_total",
            "Requests outstanding when the connection ended (a reset, a close).",
            HTTP_INCOMPLETE,
        ),
    ] {
        f.counter(name, help, l.pairs(&[]), m[slot as usize]);
    }
    for (direction, slot) in [
        ("request", HTTP_UNPARSEABLE_REQUESTS),
        ("response", HTTP_UNPARSEABLE_RESPONSES),
    ] {
        f.counter(
            "sluice_http_unparseable_total",
            "Data where a request or status line was expected but none was found; counted, never guessed.",
            l.pairs(&[("direction", direction)]),
            m[slot as usize],
        );
    }
    f.latency_histogram(
        "sluice_http_response_first_byte_seconds",
        "First request byte sent to first response byte received (cgroup_skb).",
        l.pairs(&[]),
        &m[HIST_TTFB as usize..],
    );
}

/// The agent's own health: reloads, state saves, the attach cgroup.
fn health_series(f: &mut Families, h: &AgentHealth) {
    for result in ReloadResult::ALL {
        f.counter(
            "sluice_config_reloads_total",
            "Configuration reloads by result: applied, rejected (invalid), needs_restart, failed (the kernel refused).",
            vec![pair("result", result.name())],
            h.reloads[result as usize],
        );
    }
    for (i, result) in ["ok", "failed"].iter().enumerate() {
        f.counter(
            "sluice_state_saves_total",
            "Writes of the rollout state file by result.",
            vec![pair("result", result)],
            h.state_saves[i],
        );
    }
    f.gauge(
        "sluice_cgroup_attached",
        "1 while the programs are attached to the configured cgroup, 0 while it is missing.",
        Vec::new(),
        if h.cgroup_missing.is_some() { 0.0 } else { 1.0 },
    );
    if let Some(c) = h.cluster {
        f.gauge(
            "sluice_cluster_connected",
            "Cluster mode: 1 while this node is connected to etcd; 0 while it fails static (keeps its shares, lowers them only through its guards).",
            Vec::new(),
            if c.connected { 1.0 } else { 0.0 },
        );
        f.gauge(
            "sluice_cluster_leader",
            "Cluster mode: 1 while this node leads the cluster's rollouts (runs their analyses).",
            Vec::new(),
            if c.leader { 1.0 } else { 0.0 },
        );
    }
}
