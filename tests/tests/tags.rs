//! Socket tags (keyed by socket cookie: a slot of `SLUICE_TAG_SLOTS`, or `SLUICE_SOCK_TAGS`
//! when a live socket holds that slot) live exactly as long as they are needed: while the
//! application holds the socket (getpeername), and with signals on until the kernel destroys
//! it (its close and resets counted); then they are gone, so the maps never fill with dead
//! sockets. Needs root.

use std::{
    io::Write as _,
    net::{SocketAddr, TcpListener},
    time::Duration,
};

use sluice_tests::{
    Agent, Backend, CGROUP_PROGRAMS_STEERING_ONLY, TestCgroup, hold_probe, http::Scraped, probe,
    root_or_skip, tag, unused_port,
};

fn vip(ip: &str) -> SocketAddr {
    format!("{ip}:{}", unused_port(ip)).parse().expect("vip")
}

fn service(name: &str, vip: SocketAddr, backend: SocketAddr) -> String {
    format!(
        "  - name: {name}\n    virtual_addresses: [\"{vip}\"]\n    stable: [{{address: \"{backend}\"}}]\n"
    )
}

/// A server that greets and then keeps every connection open until dropped: a client that
/// closes first stays in FIN_WAIT2, its connection not closed yet.
struct Holder {
    addr: SocketAddr,
    held: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl Holder {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind holder");
        let addr = listener.local_addr().expect("holder addr");
        let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let keep = held.clone();
        std::thread::spawn(move || {
            for mut s in listener.incoming().flatten() {
                let _ = s.write_all(b"holder\n");
                keep.lock().expect("held").push(s);
            }
        });
        Self { addr, held }
    }

    /// Closes every connection it holds (each sends its FIN).
    fn release_all(&self) {
        self.held.lock().expect("held").clear();
    }
}

/// A client in `cg` holds a connection to `vip` (its one tag counted), then dies.
fn hold_then_kill(agent: &Agent, cg: &TestCgroup, vip: SocketAddr) {
    let (mut client, _out, greeting) = hold_probe(cg, vip);
    assert!(greeting.contains("holder"), "{greeting}");
    assert_eq!(agent.sock_tags(), 1);
    assert_eq!(agent.tag_filter_count(), 1);
    client.kill().expect("kill the client");
    client.wait().expect("client exit");
}

fn closed(agent: &Agent, service: &str) -> u64 {
    let (m, _) = Scraped::fetch(agent.metrics_addr());
    m.get("sluice_connections_closed_total", &[("service", service)])
}

#[test]
fn tags_go_when_sockets_are_released_with_steering_only() {
    if !root_or_skip("tags_go_when_sockets_are_released_with_steering_only") {
        return;
    }
    let t = tag("tagsteer");
    let cg = TestCgroup::new(&t);
    let (backend, holder) = (Backend::start("127.0.0.1", "stable"), Holder::start());
    let (busy, held) = (vip("127.77.8.1"), vip("127.77.8.2"));
    let yaml = service("web", busy, backend.addr) + &service("held", held, holder.addr);
    let mut agent = Agent::start(&t, &cg, &yaml);
    agent.write_raw_config(&agent.config_text_with(&cg, "signals: false", &yaml));
    agent.kill9();
    agent.spawn();
    // Switched off, the signal programs went and the release program came (it ends the tags
    // the destroy tracepoint ended with signals on).
    let mut attached = Agent::attached(cg.path());
    attached.sort();
    assert_eq!(attached, CGROUP_PROGRAMS_STEERING_ONLY);

    let r = probe(Some(&cg), busy, 2_000);
    assert_eq!(r.total(), 2_000, "{r:?}");
    assert_eq!(
        r.peer_vip, 2_000,
        "getpeername saw the virtual address: {r:?}"
    );
    agent.assert_tags_gone();

    // A held socket keeps its tag; released, it loses it at the release, though TCP has not
    // closed the connection yet (the server still holds its end).
    hold_then_kill(&agent, &cg, held);
    agent.assert_tags_gone();
    holder.release_all();
}

#[test]
fn with_signals_a_tag_outlives_the_release_until_tcp_is_done() {
    if !root_or_skip("with_signals_a_tag_outlives_the_release") {
        return;
    }
    let t = tag("tagsignals");
    let cg = TestCgroup::new(&t);
    let backend = Backend::start("127.0.0.1", "stable");
    let web = vip("127.77.8.3");
    let refused = vip("127.77.8.4");
    let nobody: SocketAddr = format!("127.0.0.1:{}", unused_port("127.0.0.1"))
        .parse()
        .expect("closed port");
    let agent = Agent::start(
        &t,
        &cg,
        &(service("web", web, backend.addr) + &service("gone", refused, nobody)),
    );

    // The probe closes each connection with linger 0: TCP sends the reset after the
    // application has released the socket. Every one is counted, so each tag outlived its
    // release; and none is left once TCP is done.
    let r = probe(Some(&cg), web, 1_000);
    assert_eq!(r.total(), 1_000, "{r:?}");
    assert_eq!(r.peer_vip, 1_000, "{r:?}");
    agent.assert_tags_gone();
    let (m, _) = Scraped::fetch(agent.metrics_addr());
    assert_eq!(
        m.get("sluice_tcp_resets_sent_total", &[("service", "web")]),
        1_000
    );
    assert_eq!(closed(&agent, "web"), 1_000);

    // A held connection keeps its tag; the client dies, its FIN is acknowledged, TCP is done
    // with the socket (an orphan in FIN_WAIT2 becomes a time-wait mini socket): the close
    // is counted and the tag goes.
    let holder = Holder::start();
    let held = vip("127.77.8.5");
    agent.write_config(
        &cg,
        &(service("web", web, backend.addr)
            + &service("gone", refused, nobody)
            + &service("held", held, holder.addr)),
    );
    agent.wait_log("configuration applied", 1, Duration::from_secs(5));
    hold_then_kill(&agent, &cg, held);
    agent.assert_tags_gone();
    assert_eq!(closed(&agent, "held"), 1);
    holder.release_all();

    // Refused connects leave no tag either.
    let r = probe(Some(&cg), refused, 50);
    assert_eq!(r.total(), 0, "{r:?}");
    agent.assert_tags_gone();
}

#[test]
fn tags_whose_slot_is_held_live_in_the_hash_and_work_the_same() {
    if !root_or_skip("tags_whose_slot_is_held_live_in_the_hash") {
        return;
    }
    let t = tag("tagoverflow");
    let cg = TestCgroup::new(&t);
    let (backend, holder) = (Backend::start("127.0.0.1", "stable"), Holder::start());
    let (web, held) = (vip("127.77.8.6"), vip("127.77.8.7"));
    let yaml = service("web", web, backend.addr) + &service("held", held, holder.addr);
    // One slot: the first held connection takes it, every other tag goes to the hash.
    let mut agent = Agent::start(&t, &cg, &yaml);
    agent.write_raw_config(&agent.config_text_with(&cg, "socket_tag_slots: 1", &yaml));
    agent.kill9();
    std::fs::remove_dir_all(agent.maps_dir().parent().expect("abi dir")).expect("fresh pins");
    agent.spawn();

    let (mut first, _out1, greeting) = hold_probe(&cg, held);
    assert!(greeting.contains("holder"), "{greeting}");
    let (mut second, _out2, greeting) = hold_probe(&cg, held);
    assert!(greeting.contains("holder"), "{greeting}");
    assert_eq!((agent.tags_in_slots(), agent.tags_in_hash()), (1, 1));
    assert_eq!(agent.tag_filter_count(), 2);

    // With the slot held, every one of these is tagged in the hash: getpeername, the
    // resets sent after the release and the closes are all theirs.
    let r = probe(Some(&cg), web, 1_000);
    assert_eq!(r.total(), 1_000, "{r:?}");
    assert_eq!(
        r.peer_vip, 1_000,
        "getpeername saw the virtual address: {r:?}"
    );
    let (m, _) = Scraped::fetch(agent.metrics_addr());
    assert_eq!(
        m.get("sluice_tcp_resets_sent_total", &[("service", "web")]),
        1_000
    );
    assert_eq!(closed(&agent, "web"), 1_000);
    assert_eq!(
        agent.tag_filter_count(),
        2,
        "only the two held tags are left"
    );

    for c in [&mut first, &mut second] {
        c.kill().expect("kill a holding client");
        c.wait().expect("client exit");
    }
    agent.assert_tags_gone();
    assert_eq!(closed(&agent, "held"), 2);
    holder.release_all();
}

#[test]
fn a_restart_with_another_slot_count_is_refused_and_changes_nothing() {
    if !root_or_skip("a_restart_with_another_slot_count_is_refused") {
        return;
    }
    let t = tag("tagslots");
    let cg = TestCgroup::new(&t);
    let holder = Holder::start();
    let held = vip("127.77.8.8");
    let yaml = service("held", held, holder.addr);
    let mut agent = Agent::start(&t, &cg, &yaml);
    let (mut client, _out, greeting) = hold_probe(&cg, held);
    assert!(greeting.contains("holder"), "{greeting}");
    let attached = Agent::attached(cg.path());

    agent.kill9();
    agent.write_raw_config(&agent.config_text_with(&cg, "socket_tag_slots: 1024", &yaml));
    let (status, log) = agent.run_expecting_refusal();
    assert!(!status.success(), "{log}");
    assert!(
        log.contains("SLUICE_TAG_SLOTS has 65536 slots and socket_tag_slots asks for 1024"),
        "{log}"
    );
    // The programs stay attached and the live connection keeps its tag.
    assert_eq!(Agent::attached(cg.path()), attached);
    assert_eq!(agent.sock_tags(), 1);

    // A bad value is refused before anything is touched.
    agent.write_raw_config(&agent.config_text_with(&cg, "socket_tag_slots: 1000", &yaml));
    let (status, log) = agent.run_expecting_refusal();
    assert!(!status.success(), "{log}");
    assert!(
        log.contains("socket_tag_slots") && log.contains("1000 must be a power of two"),
        "{log}"
    );
    assert_eq!(agent.sock_tags(), 1);

    agent.write_config(&cg, &yaml);
    agent.spawn();
    client.kill().expect("kill the client");
    client.wait().expect("client exit");
    agent.assert_tags_gone();
    holder.release_all();
}
