//! sock_diag (`NETLINK_SOCK_DIAG`), the interface `ss` uses: listing a network namespace's
//! established TCP sockets, and ending chosen ones (`SOCK_DESTROY`, which the kernel carries
//! out as `tcp_abort`: the socket's owner gets `ECONNABORTED`, its peer a reset).
//!
//! A netlink socket answers for the network namespace it was created in, whatever the
//! creating thread does afterwards: [`super::netns`] makes one per namespace.
//!
//! A socket is named by its addresses, ports, interface and cookie, as the dump gave them;
//! the kernel looks it up by the addresses and ends it only if the cookie matches too. A
//! socket that closed since the dump, or whose addresses a new socket took, answers
//! `ENOENT` and is left alone.

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::Duration,
};

/// `SOCK_DIAG_BY_FAMILY` and `SOCK_DESTROY` from linux/sock_diag.h.
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
/// `INET_DIAG_INFO`: the reply carries the socket's `struct tcp_info`.
const INET_DIAG_INFO: u16 = 2;
const TCP_ESTABLISHED: u8 = 1;
const NLMSG_HDR: usize = 16;
/// `struct inet_diag_req_v2`.
const REQ_LEN: usize = 56;
/// `struct inet_diag_msg`.
const MSG_LEN: usize = 72;
/// Requests per `sendmsg` when ending sockets: each ack (with the request echoed) is 92
/// bytes, so a batch's answers fit the receive buffer many times over.
const DESTROY_BATCH: usize = 128;
/// A dump or a batch that does not answer within this is given up (the kernel answers in
/// microseconds; this bounds a wedged socket, not a slow one).
const RECV_TIMEOUT: Duration = Duration::from_secs(5);

/// `struct inet_diag_sockid`, as the kernel wrote it: ports and addresses in network
/// order, then the interface and the cookie's two halves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockId(pub [u8; 48]);

impl SockId {
    /// Destination address (16 bytes: an IPv4 address is its first 4) and port.
    pub fn destination(&self, family: u8) -> std::net::SocketAddr {
        let port = u16::from_be_bytes([self.0[2], self.0[3]]);
        let d = &self.0[20..36];
        let ip: std::net::IpAddr = if i32::from(family) == libc::AF_INET {
            std::net::Ipv4Addr::new(d[0], d[1], d[2], d[3]).into()
        } else {
            let mut b = [0u8; 16];
            b.copy_from_slice(d);
            let v6 = std::net::Ipv6Addr::from(b);
            v6.to_ipv4_mapped().map_or(v6.into(), Into::into)
        };
        std::net::SocketAddr::new(ip, port)
    }

    pub fn cookie(&self) -> u64 {
        let lo = u32::from_ne_bytes(self.0[40..44].try_into().expect("4 bytes"));
        let hi = u32::from_ne_bytes(self.0[44..48].try_into().expect("4 bytes"));
        u64::from(lo) | (u64::from(hi) << 32)
    }
}

/// What the dump says of one established socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpSocket {
    pub family: u8,
    /// TCP state (1: established).
    pub state: u8,
    pub id: SockId,
    /// Bytes received and not yet read by the application.
    pub unread: u32,
    /// Bytes sent and not yet acknowledged by the peer.
    pub unacked: u32,
    /// From `tcp_info`: milliseconds since data last left and last arrived, and the
    /// smoothed round-trip time (µs).
    pub last_sent_ms: u32,
    pub last_received_ms: u32,
    pub rtt_us: u32,
}

/// A `NETLINK_SOCK_DIAG` socket, bound to the network namespace it was created in.
pub struct Diag {
    fd: OwnedFd,
    seq: u32,
}

/// How ending one socket went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    Yes,
    /// It was gone (closed, or its addresses belong to another socket now).
    Gone,
    /// The kernel refused (errno).
    Refused(i32),
}

impl Ended {
    /// Logs a refusal: the kernel said why it would not end the connection.
    pub fn warn_if_refused(self, service: &str) {
        if let Ended::Refused(errno) = self {
            tracing::warn!(
                service,
                error = %io::Error::from_raw_os_error(errno),
                "the kernel refused to end a connection"
            );
        }
    }
}

impl Diag {
    /// A socket in the calling thread's network namespace.
    pub fn open() -> io::Result<Self> {
        // SAFETY: plain socket(2); the result is checked before use.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                libc::NETLINK_SOCK_DIAG,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // The field's own type: time_t's width is the C library's (musl's is changing).
        let tv = libc::timeval {
            tv_sec: RECV_TIMEOUT.as_secs() as _,
            tv_usec: 0,
        };
        // SAFETY: the option value is a timeval that lives across the call.
        let ret = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const tv).cast(),
                size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if ret != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { fd, seq: 0 })
    }

    /// Every established TCP socket of `family` (`AF_INET` or `AF_INET6`) in the namespace,
    /// appended to `out`.
    pub fn established(&mut self, family: u8, out: &mut Vec<TcpSocket>) -> io::Result<()> {
        let seq = self.next_seq();
        let all = SockId([0; 48]);
        let mut req = Vec::with_capacity(NLMSG_HDR + REQ_LEN);
        request(
            &mut req,
            SOCK_DIAG_BY_FAMILY,
            NLM_F_REQUEST | NLM_F_DUMP,
            seq,
            family,
            1 << TCP_ESTABLISHED,
            &all,
        );
        self.send(&req)?;
        self.receive(64 * 1024, |kind, at, body| match kind {
            _ if at != seq => None,
            NLMSG_DONE => Some(Ok(())),
            NLMSG_ERROR => Some(Err(io::Error::from_raw_os_error(error_code(body)))),
            SOCK_DIAG_BY_FAMILY if body.len() >= MSG_LEN => {
                out.push(parse(body));
                None
            }
            _ => None,
        })
    }

    /// One socket, looked up by what the dump gave: how it is now, or `None` if it is gone.
    pub fn one(&mut self, socket: &TcpSocket) -> io::Result<Option<TcpSocket>> {
        let seq = self.next_seq();
        let mut req = Vec::with_capacity(NLMSG_HDR + REQ_LEN);
        request(
            &mut req,
            SOCK_DIAG_BY_FAMILY,
            NLM_F_REQUEST,
            seq,
            socket.family,
            u32::MAX,
            &socket.id,
        );
        self.send(&req)?;
        self.receive(8 * 1024, |kind, at, body| match kind {
            _ if at != seq => None,
            SOCK_DIAG_BY_FAMILY if body.len() >= MSG_LEN => {
                let s = parse(body);
                Some(Ok((s.state == TCP_ESTABLISHED).then_some(s)))
            }
            NLMSG_ERROR => Some(match error_code(body) {
                libc::ENOENT => Ok(None),
                e => Err(io::Error::from_raw_os_error(e)),
            }),
            _ => None,
        })
    }

    /// Ends each of `sockets` (as the dump gave them), in batches; one answer each, in order.
    pub fn destroy(&mut self, sockets: &[TcpSocket]) -> io::Result<Vec<Ended>> {
        let mut answers = Vec::with_capacity(sockets.len());
        for batch in sockets.chunks(DESTROY_BATCH) {
            let first = self.seq.wrapping_add(1);
            let mut req = Vec::with_capacity(batch.len() * (NLMSG_HDR + REQ_LEN));
            for s in batch {
                let seq = self.next_seq();
                request(
                    &mut req,
                    SOCK_DESTROY,
                    NLM_F_REQUEST | NLM_F_ACK,
                    seq,
                    s.family,
                    u32::MAX,
                    &s.id,
                );
            }
            self.send(&req)?;
            let mut got = vec![None; batch.len()];
            let mut left = batch.len();
            self.receive(64 * 1024, |kind, seq, body| {
                let index = seq.wrapping_sub(first) as usize;
                if kind == NLMSG_ERROR && index < batch.len() && got[index].is_none() {
                    got[index] = Some(match error_code(body) {
                        0 => Ended::Yes,
                        libc::ENOENT => Ended::Gone,
                        e => Ended::Refused(e),
                    });
                    left -= 1;
                }
                (left == 0).then_some(Ok(()))
            })?;
            answers.extend(got.into_iter().map(|a| a.expect("every answer arrived")));
        }
        Ok(answers)
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Reads answers into a buffer of `size` bytes and hands each message (kind, sequence
    /// number, body) to `each`, until it returns a result.
    fn receive<T>(
        &self,
        size: usize,
        mut each: impl FnMut(u16, u32, &[u8]) -> Option<io::Result<T>>,
    ) -> io::Result<T> {
        let mut buf = vec![0u8; size];
        loop {
            let n = self.recv(&mut buf)?;
            let mut at = 0;
            while at + NLMSG_HDR <= n {
                let len = u32::from_ne_bytes(buf[at..at + 4].try_into().expect("4 bytes")) as usize;
                if len < NLMSG_HDR || at + len > n {
                    return Err(io::Error::other("truncated sock_diag message"));
                }
                let kind = u16::from_ne_bytes(buf[at + 4..at + 6].try_into().expect("2 bytes"));
                let seq = u32::from_ne_bytes(buf[at + 8..at + 12].try_into().expect("4 bytes"));
                if let Some(done) = each(kind, seq, &buf[at + NLMSG_HDR..at + len]) {
                    return done;
                }
                at += align4(len);
            }
        }
    }

    fn send(&self, req: &[u8]) -> io::Result<()> {
        // SAFETY: `sockaddr_nl` zeroed is the kernel's address (pid 0, no groups); the
        // buffer and address live across the call.
        let ret = unsafe {
            let mut kernel: libc::sockaddr_nl = std::mem::zeroed();
            kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
            libc::sendto(
                self.fd.as_raw_fd(),
                req.as_ptr().cast(),
                req.len(),
                0,
                (&raw const kernel).cast(),
                size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            // SAFETY: writes at most `buf.len()` bytes into `buf`.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

/// One `nlmsghdr` and `inet_diag_req_v2` for TCP: `states` a bit set of TCP states, `id`
/// the socket (zeros for all), `tcp_info` asked for with every answer.
fn request(
    buf: &mut Vec<u8>,
    kind: u16,
    flags: u16,
    seq: u32,
    family: u8,
    states: u32,
    id: &SockId,
) {
    buf.extend_from_slice(&((NLMSG_HDR + REQ_LEN) as u32).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(&flags.to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes());
    let ext = if kind == SOCK_DESTROY {
        0
    } else {
        1 << (INET_DIAG_INFO - 1)
    };
    buf.extend_from_slice(&[family, libc::IPPROTO_TCP as u8, ext, 0]);
    buf.extend_from_slice(&states.to_ne_bytes());
    buf.extend_from_slice(&id.0);
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// The (negative) errno of an `NLMSG_ERROR`, as a positive number; 0 for an ack.
fn error_code(body: &[u8]) -> i32 {
    body.get(0..4).map_or(libc::EIO, |b| {
        -i32::from_ne_bytes(b.try_into().expect("4 bytes"))
    })
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .map_or(0, |s| u32::from_ne_bytes(s.try_into().expect("4 bytes")))
}

/// One `inet_diag_msg` and its attributes.
fn parse(body: &[u8]) -> TcpSocket {
    let mut id = [0u8; 48];
    id.copy_from_slice(&body[4..52]);
    let mut s = TcpSocket {
        family: body[0],
        state: body[1],
        id: SockId(id),
        unread: u32_at(body, 56),
        unacked: u32_at(body, 60),
        last_sent_ms: u32::MAX,
        last_received_ms: u32::MAX,
        rtt_us: 0,
    };
    let mut at = MSG_LEN;
    while at + 4 <= body.len() {
        let len = usize::from(u16::from_ne_bytes([body[at], body[at + 1]]));
        let kind = u16::from_ne_bytes([body[at + 2], body[at + 3]]);
        if len < 4 || at + len > body.len() {
            break;
        }
        if kind == INET_DIAG_INFO {
            // struct tcp_info: tcpi_last_data_sent at 44, tcpi_last_data_recv at 52,
            // tcpi_rtt at 68 (offsets from the attribute's payload).
            let info = &body[at + 4..at + len];
            if info.len() >= 72 {
                s.last_sent_ms = u32_at(info, 44);
                s.last_received_ms = u32_at(info, 52);
                s.rtt_us = u32_at(info, 68);
            }
        }
        at += align4(len);
    }
    s
}

#[cfg(test)]
mod tests;
