//! sock_diag against real connections on loopback.
use super::*;
use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
};

/// Needs nothing but a loopback: listing and ending one's own sockets takes no
/// privilege in one's own namespace... except `SOCK_DESTROY`, which needs
/// CAP_NET_ADMIN; without it the refusal is what is checked.
#[test]
fn lists_a_connection_and_ends_it() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let mut client =
        TcpStream::connect(listener.local_addr().expect("test setup")).expect("connect");
    let (mut server, _) = listener.accept().expect("accept");
    client.write_all(b"x").expect("test setup");
    let mut one = [0u8; 1];
    server.read_exact(&mut one).expect("test setup");
    let mut diag = Diag::open().expect("sock_diag socket");
    let mut dump = Vec::new();
    diag.established(libc::AF_INET as u8, &mut dump)
        .expect("dump");
    // The client's socket: source is the client's local address... listed by its
    // destination, the listener, and its source port.
    let local = client.local_addr().expect("test setup");
    let mine: Vec<_> = dump
        .iter()
        .filter(|s| {
            u16::from_be_bytes([s.id.0[0], s.id.0[1]]) == local.port()
                && s.id.destination(s.family) == listener.local_addr().expect("test setup")
        })
        .copied()
        .collect();
    assert_eq!(mine.len(), 1, "the client socket is listed once");
    assert_ne!(mine[0].id.cookie(), 0);
    assert_eq!(mine[0].unacked, 0);
    // Looked up alone, it is the same socket.
    let alone = diag.one(&mine[0]).expect("lookup").expect("still there");
    assert_eq!(alone.id, mine[0].id);
    let answers = diag.destroy(&mine).expect("destroy");
    match answers[0] {
        Ended::Yes => {
            let mut buf = [0u8; 1];
            let err = client.read(&mut buf).expect_err("an ended socket errors");
            assert_eq!(err.raw_os_error(), Some(libc::ECONNABORTED));
            // Asking again: the socket is gone.
            assert_eq!(diag.destroy(&mine).expect("destroy")[0], Ended::Gone);
            assert_eq!(diag.one(&mine[0]).expect("lookup"), None);
        }
        Ended::Refused(e) => assert_eq!(e, libc::EPERM, "only a missing capability"),
        Ended::Gone => panic!("the socket was there"),
    }
}
