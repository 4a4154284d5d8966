//! A real Prometheus (Debian's, started here on loopback) scrapes the agent; PromQL for the
//! canary's and stable's success rate and p99 time to first byte returns what the servers
//! imply. `promtool check metrics` accepts the exposition. Needs root.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use sluice_tests::{
    Agent, TestCgroup,
    http::{Behaviour, HttpBackend, Scraped},
    http_probe, root_or_skip, tag, unused_port,
};

/// A Prometheus server of our own; killed (by its pid) and its data removed on drop.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: std::path::PathBuf,
}

impl Prometheus {
    fn start(tag: &str, target: SocketAddr) -> Self {
        let dir = std::env::temp_dir().join(format!("sluice-prometheus-{tag}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: sluice\n    static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        )
        .expect("config");
        let addr: SocketAddr = format!("127.0.0.1:{}", unused_port("127.0.0.1"))
            .parse()
            .expect("addr");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus (cargo xtask setup installs it)");
        let p = Self { child, addr, dir };
        let end = Instant::now() + Duration::from_secs(20);
        while Instant::now() < end {
            if get(p.addr, "/-/ready").is_some_and(|b| b.contains("Ready")) {
                return p;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("prometheus did not become ready");
    }

    /// An instant query: (labels of the result, value) per series.
    fn query(&self, promql: &str) -> Vec<(serde_json::Value, f64)> {
        let body = get(
            self.addr,
            &format!("/api/v1/query?query={}", urlencode(promql)),
        )
        .expect("query");
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["status"], "success", "{body}");
        v["data"]["result"]
            .as_array()
            .expect("result")
            .iter()
            .map(|r| {
                (
                    r["metric"].clone(),
                    r["value"][1]
                        .as_str()
                        .expect("value")
                        .parse()
                        .expect("number"),
                )
            })
            .collect()
    }

    fn by_version(&self, promql: &str) -> std::collections::BTreeMap<String, f64> {
        self.query(promql)
            .into_iter()
            .map(|(m, v)| (m["version"].as_str().unwrap_or("").to_owned(), v))
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    // Prometheus answers chunked; a chunk-size line may precede the JSON.
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body.lines()
            .filter(|l| !l.chars().all(|c| c.is_ascii_hexdigit()) || l.is_empty())
            .collect::<Vec<_>>()
            .join("\n")
    } else {
        body.to_owned()
    };
    Some(body)
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn prometheus_scrapes_and_promql_sees_success_rate_and_p99() {
    if !root_or_skip("prometheus_scrapes_and_promql_sees_success_rate_and_p99") {
        return;
    }
    let t = tag("prom");
    let cg = TestCgroup::new(&t);
    let stable = HttpBackend::start("127.0.0.1", Behaviour::default());
    let canary = HttpBackend::start(
        "127.0.0.1",
        Behaviour {
            delay: Duration::from_millis(20),
            fail_every: 10,
            ..Behaviour::default()
        },
    );
    let web: SocketAddr = format!("127.77.6.1:{}", unused_port("127.77.6.1"))
        .parse()
        .expect("vip");
    let yaml = format!(
        "  - name: web\n    virtual_addresses: [\"{web}\"]\n    l7: http1\n    canary_percent: 50\n    \
         stable: [{{address: \"{}\"}}]\n    canary: [{{address: \"{}\"}}]\n",
        stable.addr, canary.addr
    );
    let agent = Agent::start(&t, &cg, &yaml);

    // promtool accepts the exposition (after traffic, so every series has data).
    let r = http_probe(Some(&cg), web, 40, &["/status/200"; 5]);
    assert_eq!(r.statuses.values().sum::<u64>(), 200, "{r:?}");
    std::thread::sleep(Duration::from_millis(200));
    let (_, exposition) = Scraped::fetch(agent.metrics_addr());
    sluice_tests::promtool_check(&exposition);

    // The measured shares over the last minute: the agent samples every 5 s, so wait for a
    // sample taken after the traffic. The window holds all of it: the shares must equal the
    // canary's share of what the servers saw.
    let (s_seen, c_seen) = (stable.seen(), canary.seen());
    let expect_connections =
        c_seen.connections as f64 / (s_seen.connections + c_seen.connections) as f64;
    let expect_requests = c_seen.requests as f64 / (s_seen.requests + c_seen.requests) as f64;
    let end = Instant::now() + Duration::from_secs(15);
    loop {
        let (m, _) = Scraped::fetch(agent.metrics_addr());
        let conn = m.sum(
            "sluice_canary_connection_share_ratio",
            &[("service", "web")],
        );
        let req = m.sum("sluice_canary_request_share_ratio", &[("service", "web")]);
        if (conn - expect_connections).abs() < 1e-9 && (req - expect_requests).abs() < 1e-9 {
            eprintln!("measured shares: connections {conn:.4}, requests {req:.4}");
            break;
        }
        assert!(
            Instant::now() < end,
            "shares {conn} / {req}, servers imply {expect_connections} / {expect_requests}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    let prometheus = Prometheus::start(&t, agent.metrics_addr());
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let total = prometheus.query("sum(sluice_http_responses_total{service=\"web\"})");
        if total.first().is_some_and(|(_, v)| *v == 200.0) {
            break;
        }
        assert!(
            Instant::now() < end,
            "prometheus never saw the 200 responses: {total:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }

    let (s, c) = (stable.seen(), canary.seen());
    let canary_total: u64 = c.responses.values().sum();
    let canary_errors = c.responses.get(&503).copied().unwrap_or(0);
    assert!(canary_errors > 0 && !s.responses.contains_key(&503));
    let success = prometheus.by_version(
        "sum by (version) (sluice_http_responses_total{service=\"web\",class!=\"5xx\"}) \
         / sum by (version) (sluice_http_responses_total{service=\"web\"})",
    );
    let expect_canary = (canary_total - canary_errors) as f64 / canary_total as f64;
    eprintln!("success rate: {success:?} (canary expected {expect_canary})");
    assert!((success["canary"] - expect_canary).abs() < 1e-9);
    assert_eq!(success["stable"], 1.0);

    let p99 = prometheus.by_version(
        "histogram_quantile(0.99, sum by (le, version) \
         (sluice_http_response_first_byte_seconds_bucket{service=\"web\"}))",
    );
    eprintln!("p99 time to first byte: {p99:?}");
    // The canary answers after 20 ms: its p99 lies in the exported (16.384, 32.768] ms
    // bucket, or in the next one when one of its ~100 answers comes 13 ms late on a loaded
    // machine (with so few requests the p99 is the slowest one or two).
    assert!(
        p99["canary"] > 0.016384 && p99["canary"] <= 0.065536,
        "canary p99 in (16.384 ms, 65.536 ms]: {p99:?}"
    );
    // Stable adds no delay: its p99 stays below the canary's range. (With about 90 stable
    // requests their p99 is the slowest one or two, and on a loaded machine one loopback
    // answer past 1 ms happens; the medians' 1 ms bound is signals.rs's to check.)
    assert!(
        p99["stable"] < 0.016384,
        "stable p99 below the canary's 16.384 ms floor: {p99:?}"
    );
}
