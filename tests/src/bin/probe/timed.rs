//! A TCP stream that remembers when its data arrived: the kernel's receive timestamp of the
//! first bytes read since the last [`TimedStream::mark`] (`SO_TIMESTAMPNS`, CLOCK_REALTIME).
//! An HTTP client timing a request from its write to that arrival measures what the network
//! and the server took, not how long its own thread waited to be scheduled afterwards.

use std::{
    io::{self, Read},
    net::TcpStream,
    os::fd::AsRawFd,
};

pub struct TimedStream {
    stream: TcpStream,
    /// Arrival of the first bytes read since the mark, ns since the epoch.
    first_arrival_ns: Option<u64>,
}

impl TimedStream {
    pub fn new(stream: TcpStream) -> io::Result<Self> {
        let on: libc::c_int = 1;
        // SAFETY: a valid socket and a c_int option of the right size.
        let rc = unsafe {
            libc::setsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_TIMESTAMPNS,
                (&raw const on).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            stream,
            first_arrival_ns: None,
        })
    }

    /// Forgets the last arrival: the next read's is the one [`Self::arrival_ns`] gives.
    pub fn mark(&mut self) {
        self.first_arrival_ns = None;
    }

    pub fn arrival_ns(&self) -> Option<u64> {
        self.first_arrival_ns
    }
}

/// Now, ns since the epoch: the clock `SO_TIMESTAMPNS` stamps with.
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

impl Read for TimedStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // Room for one SCM_TIMESTAMPNS (a timespec) and its header, aligned.
        let mut control = [0u64; 8];
        // SAFETY: msghdr is plain data; every pointer set below outlives the call.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = size_of_val(&control);
        // SAFETY: a valid socket and a msghdr whose buffers are ours.
        let n = unsafe { libc::recvmsg(self.stream.as_raw_fd(), &raw mut msg, 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: walking the control messages recvmsg wrote, with the kernel's macros.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&raw const msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                    let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                    if self.first_arrival_ns.is_none() && n > 0 {
                        self.first_arrival_ns =
                            Some(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64);
                    }
                }
                c = libc::CMSG_NXTHDR(&raw const msg, c);
            }
        }
        Ok(n as usize)
    }
}
