//! Per-version golden signals. Each (service, version) has [`METRIC_SLOTS`] `u64`s per CPU,
//! laid out as below, in one of two maps: services whose id is below
//! [`ARRAY_METRICS_SERVICES`] in the per-CPU array `SLUICE_METRICS_ARRAY` (see
//! [`metrics_array_index`]), the others in the per-CPU hash `SLUICE_METRICS` keyed by
//! [`MetricsKey`]. The kernel only adds; the agent sums CPUs and exports.

/// Services (the lowest ids, which the agent hands out first) whose metrics live in the
/// per-CPU array. The verifier turns an array lookup into an address computation, where a
/// hash lookup hashes and compares the key: about 70 ns a lookup here, two a keep-alive
/// request. A (service, version) is 4 KiB a CPU (the log-linear latency histograms are most
/// of it), so 64 services cost 512 KiB a CPU, allocated up front; a node with more services
/// keeps the rest in the hash, which allocates per live service.
pub const ARRAY_METRICS_SERVICES: u32 = 64;
pub const ARRAY_METRICS_ENTRIES: u32 = ARRAY_METRICS_SERVICES * crate::maps::VERSIONS;

/// Index in `SLUICE_METRICS_ARRAY` of a (service, version), if it lives there.
#[inline(always)]
pub fn metrics_array_index(service: u32, version: u8) -> Option<u32> {
    (service < ARRAY_METRICS_SERVICES)
        .then(|| service * crate::maps::VERSIONS + u32::from(version & 1))
}

/// Key of `SLUICE_METRICS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct MetricsKey {
    pub service: u32,
    pub version: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<MetricsKey>() == 8);

// === Connection counters ===
/// Handshake completed: the SYN-ACK arrived (cgroup_skb ingress).
pub const ESTABLISHED: u32 = 0;
/// Handshake failed: a reset answered the SYN (the port was closed).
pub const FAILED_REFUSED: u32 = 1;
/// Handshake failed after SYN retransmissions timed out.
pub const FAILED_TIMEOUT: u32 = 2;
/// Handshake ended otherwise (ICMP error, the application gave up).
pub const FAILED_OTHER: u32 = 3;
/// Established connections that have ended (the kernel destroyed the socket).
pub const CLOSED: u32 = 4;
/// Retransmitted segments: the socket's `total_retrans`, as it grows (tp_btf
/// tcp_retransmit_skb) and at the end (tp_btf tcp_destroy_sock).
pub const RETRANSMITS: u32 = 5;
/// Retransmission timer expiries that retransmitted: the socket's `total_rto` (tcp_info's
/// `tcpi_total_rto`), counted as [`RETRANSMITS`]. An expiry that gives up ends the
/// connection instead (a failed handshake of reason timeout).
pub const RTO_EXPIRIES: u32 = 6;
/// Resets received (tp_btf tcp_receive_reset).
pub const RESETS_RECEIVED: u32 = 7;
/// Resets sent (tp_btf tcp_send_reset).
pub const RESETS_SENT: u32 = 8;
/// Bytes acknowledged by the peer, at the connection's end.
pub const BYTES_SENT: u32 = 9;
/// Bytes received, at the connection's end.
pub const BYTES_RECEIVED: u32 = 10;

// === HTTP/1.x ===
/// Requests by method: GET HEAD POST PUT DELETE PATCH OPTIONS, then any other token.
pub const HTTP_METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "other",
];
pub const HTTP_REQUESTS: u32 = 11;
/// Responses by code: the common codes, then "other" per class (1xx..5xx).
pub const HTTP_CODES: [u16; 16] = [
    200, 201, 204, 301, 302, 304, 400, 401, 403, 404, 408, 429, 500, 502, 503, 504,
];
pub const HTTP_RESPONSES: u32 = HTTP_REQUESTS + HTTP_METHODS.len() as u32;
/// Slot of "other" of class `c` (1..=5) is `HTTP_RESPONSES_OTHER + c - 1`.
pub const HTTP_RESPONSES_OTHER: u32 = HTTP_RESPONSES + HTTP_CODES.len() as u32;
/// Interim responses (1xx: 100 Continue, 103 Early Hints): not a response to the request.
pub const HTTP_INTERIM: u32 = HTTP_RESPONSES_OTHER + 5;
/// A request outstanding when the connection closed or was reset.
pub const HTTP_INCOMPLETE: u32 = HTTP_INTERIM + 1;
/// New request data that does not start with a method token (counted, never guessed).
pub const HTTP_UNPARSEABLE_REQUESTS: u32 = HTTP_INCOMPLETE + 1;
/// Data answering a request that does not start with `HTTP/1.x NNN`.
pub const HTTP_UNPARSEABLE_RESPONSES: u32 = HTTP_UNPARSEABLE_REQUESTS + 1;

// === Histograms ===
// A histogram is its buckets' counts (not cumulative), then the sum in nanoseconds.

/// Bounds of the classic histograms (round-trip time, connection lifetime), in nanoseconds
/// (1-2.5-5 series, 10 µs to 10 s); one more bucket is +Inf. A value lands in the first
/// bucket whose bound it does not exceed.
pub const BUCKET_BOUNDS_NS: [u64; 19] = [
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];
pub const BUCKETS: u32 = BUCKET_BOUNDS_NS.len() as u32 + 1;
pub const HISTOGRAM_SLOTS: u32 = BUCKETS + 1;

/// The latency histograms the analysis reads (connect, time to first byte) are log-linear,
/// in microseconds: one bucket per microsecond below 8 µs, then each power of two split
/// into `2^LATENCY_SUB_BITS` equal parts, up to 2^26 µs (67 s); one more bucket is +Inf. A
/// bucket is at most an eighth of its lower bound wide, so its middle is within a
/// sixteenth (6.25 %) of any duration in it: the quantiles the agent reads are middles.
pub const LATENCY_SUB_BITS: u32 = 3;
const LATENCY_SUBS: u64 = 1 << LATENCY_SUB_BITS;
/// Powers of two above the linear part: 2^3 µs up to 2^26 µs.
const LATENCY_OCTAVES: u32 = 23;
pub const LATENCY_BUCKETS: u32 = (LATENCY_SUBS as u32) * (1 + LATENCY_OCTAVES) + 1;
pub const LATENCY_HISTOGRAM_SLOTS: u32 = LATENCY_BUCKETS + 1;

// === Histogram slots ===
/// Connect latency: the first SYN's departure to the SYN-ACK's arrival (log-linear).
pub const HIST_CONNECT: u32 = HTTP_UNPARSEABLE_RESPONSES + 1;
/// First request byte sent to first response byte received (log-linear).
pub const HIST_TTFB: u32 = HIST_CONNECT + LATENCY_HISTOGRAM_SLOTS;
/// Smoothed RTT at the connection's end, per established connection that has one.
pub const HIST_RTT: u32 = HIST_TTFB + LATENCY_HISTOGRAM_SLOTS;
/// Established to the connection's end.
pub const HIST_LIFETIME: u32 = HIST_RTT + HISTOGRAM_SLOTS;

/// A power of two, so that the kernel can bound a slot index with a mask.
pub const METRIC_SLOTS: u32 = 512;
const _: () = assert!(HIST_LIFETIME + HISTOGRAM_SLOTS <= METRIC_SLOTS);
const _: () = assert!(METRIC_SLOTS.is_power_of_two());

/// The per-CPU value.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Metrics {
    pub slots: [u64; METRIC_SLOTS as usize],
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            slots: [0; METRIC_SLOTS as usize],
        }
    }
}

/// The bucket of a duration: the first bound it does not exceed, or +Inf.
#[inline(always)]
pub fn bucket_of(ns: u64) -> u32 {
    let mut i = 0;
    while i < BUCKET_BOUNDS_NS.len() {
        if ns <= BUCKET_BOUNDS_NS[i] {
            return i as u32;
        }
        i += 1;
    }
    BUCKETS - 1
}

/// The latency bucket of a duration: bit arithmetic, no loop (it runs per request).
/// Bucket `i` holds the durations in `(latency_lower_ns(i), latency_upper_ns(i)]`.
#[inline(always)]
pub fn latency_bucket_of(ns: u64) -> u32 {
    // Whole microseconds below the duration: a bound itself lands in the bucket it closes.
    let us = ns.saturating_sub(1) / 1_000;
    if us < LATENCY_SUBS {
        return us as u32;
    }
    let octave = 63 - us.leading_zeros(); // >= LATENCY_SUB_BITS
    let sub = ((us >> (octave - LATENCY_SUB_BITS)) & (LATENCY_SUBS - 1)) as u32;
    let i = (octave - LATENCY_SUB_BITS + 1) * LATENCY_SUBS as u32 + sub;
    if i < LATENCY_BUCKETS - 1 {
        i
    } else {
        LATENCY_BUCKETS - 1
    }
}

/// The upper bound of latency bucket `i` in nanoseconds; `None` for +Inf.
pub const fn latency_upper_ns(i: u32) -> Option<u64> {
    if i >= LATENCY_BUCKETS - 1 {
        return None;
    }
    let i = i as u64;
    let us = if i < LATENCY_SUBS {
        i + 1
    } else {
        let octave = i / LATENCY_SUBS - 1 + LATENCY_SUB_BITS as u64;
        let sub = i % LATENCY_SUBS;
        (1 << octave) + ((sub + 1) << (octave - LATENCY_SUB_BITS as u64))
    };
    Some(us * 1_000)
}

/// The lower bound of latency bucket `i` in nanoseconds (exclusive; 0 for the first).
pub const fn latency_lower_ns(i: u32) -> u64 {
    match i {
        0 => 0,
        _ => match latency_upper_ns(i - 1) {
            Some(ns) => ns,
            None => 0,
        },
    }
}

/// The largest finite latency bound: the +Inf bucket holds what is above it.
pub const LATENCY_MAX_NS: u64 = match latency_upper_ns(LATENCY_BUCKETS - 2) {
    Some(ns) => ns,
    None => 0,
};

/// Index of a method's counter from the first bytes of a request, `None` if they do not
/// start with a method token followed by a space.
#[inline(always)]
pub fn method_of(head: &[u8; 8]) -> Option<u32> {
    let is = |m: &[u8]| {
        let mut i = 0;
        while i < m.len() {
            if head[i] != m[i] {
                return false;
            }
            i += 1;
        }
        head[m.len()] == b' '
    };
    let idx = if is(b"GET") {
        0
    } else if is(b"HEAD") {
        1
    } else if is(b"POST") {
        2
    } else if is(b"PUT") {
        3
    } else if is(b"DELETE") {
        4
    } else if is(b"PATCH") {
        5
    } else if is(b"OPTIONS") {
        6
    } else if head[0].is_ascii_uppercase()
        && head[1].is_ascii_uppercase()
        && head[2].is_ascii_uppercase()
    {
        // Another token (CONNECT, TRACE, PROPFIND...): a request, of an uncommon method.
        7
    } else {
        return None;
    };
    Some(HTTP_REQUESTS + idx)
}

/// The status code of a response from its first 12 bytes (`HTTP/1.x NNN`).
#[inline(always)]
pub fn status_of(head: &[u8; 12]) -> Option<u16> {
    if head[0] != b'H'
        || head[1] != b'T'
        || head[2] != b'T'
        || head[3] != b'P'
        || head[4] != b'/'
        || head[5] != b'1'
        || head[6] != b'.'
        || head[8] != b' '
    {
        return None;
    }
    let d = |b: u8| {
        if b.is_ascii_digit() {
            Some(u16::from(b - b'0'))
        } else {
            None
        }
    };
    let code = d(head[9])? * 100 + d(head[10])? * 10 + d(head[11])?;
    (100..=599).contains(&code).then_some(code)
}

/// The counter of a final response's code.
#[inline(always)]
pub fn response_slot(code: u16) -> u32 {
    let mut i = 0;
    while i < HTTP_CODES.len() {
        if HTTP_CODES[i] == code {
            return HTTP_RESPONSES + i as u32;
        }
        i += 1;
    }
    HTTP_RESPONSES_OTHER + u32::from(code / 100) - 1
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), Copy, no padding, no pointers.
    unsafe impl aya::Pod for super::MetricsKey {}
    unsafe impl aya::Pod for super::Metrics {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_metrics_cover_the_lowest_ids_without_overlap() {
        assert_eq!(metrics_array_index(0, 0), Some(0));
        assert_eq!(metrics_array_index(0, 1), Some(1));
        assert_eq!(metrics_array_index(1, 0), Some(2));
        let last = ARRAY_METRICS_SERVICES - 1;
        assert_eq!(
            metrics_array_index(last, 1),
            Some(ARRAY_METRICS_ENTRIES - 1)
        );
        assert_eq!(metrics_array_index(ARRAY_METRICS_SERVICES, 0), None);
        assert_eq!(metrics_array_index(u32::MAX, 1), None);
    }

    #[test]
    fn buckets() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(10_000), 0);
        assert_eq!(bucket_of(10_001), 1);
        assert_eq!(bucket_of(20_000_000), 10, "20 ms lies in (10 ms, 25 ms]");
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn latency_buckets_are_log_linear_and_contiguous() {
        assert_eq!(LATENCY_BUCKETS, 193);
        assert_eq!(latency_bucket_of(0), 0);
        assert_eq!(latency_bucket_of(1_000), 0, "a bound closes its bucket");
        assert_eq!(latency_bucket_of(1_001), 1);
        assert_eq!(latency_bucket_of(8_000), 7);
        assert_eq!(latency_bucket_of(8_001), 8);
        assert_eq!(latency_upper_ns(8), Some(9_000));
        assert_eq!(LATENCY_MAX_NS, (1 << 26) * 1_000);
        assert_eq!(latency_bucket_of(LATENCY_MAX_NS), LATENCY_BUCKETS - 2);
        assert_eq!(latency_bucket_of(LATENCY_MAX_NS + 1), LATENCY_BUCKETS - 1);
        assert_eq!(latency_bucket_of(u64::MAX), LATENCY_BUCKETS - 1);
        assert_eq!(latency_upper_ns(LATENCY_BUCKETS - 1), None);
        // Every bucket starts where the one before it ends, and holds exactly its range.
        for i in 0..LATENCY_BUCKETS - 1 {
            let (lo, hi) = (latency_lower_ns(i), latency_upper_ns(i).expect("finite"));
            assert!(lo < hi, "bucket {i}");
            assert_eq!(
                latency_bucket_of(lo + 1),
                i,
                "just above bucket {i}'s lower bound"
            );
            assert_eq!(latency_bucket_of(hi), i, "bucket {i}'s upper bound");
            assert_eq!(latency_bucket_of(hi + 1), i + 1, "just above bucket {i}");
            if lo >= 8_000 {
                // At most an eighth of the lower bound wide.
                assert!((hi - lo) * 8 <= lo, "bucket {i}: ({lo}, {hi}]");
            }
        }
    }

    #[test]
    fn methods_and_statuses() {
        assert_eq!(method_of(b"GET / HT"), Some(HTTP_REQUESTS));
        assert_eq!(method_of(b"OPTIONS "), Some(HTTP_REQUESTS + 6));
        assert_eq!(method_of(b"PROPFIND"), Some(HTTP_REQUESTS + 7));
        assert_eq!(
            method_of(b"\x16\x03\x01\x02\x00\x01\x00\x01"),
            None,
            "TLS is not HTTP"
        );
        assert_eq!(method_of(b"GETX / H"), Some(HTTP_REQUESTS + 7));
        assert_eq!(status_of(b"HTTP/1.1 404"), Some(404));
        assert_eq!(status_of(b"HTTP/1.0 200"), Some(200));
        assert_eq!(status_of(b"HTTP/2.0 200"), None);
        assert_eq!(status_of(b"HTTP/1.1 9xx"), None);
        assert_eq!(response_slot(404), HTTP_RESPONSES + 9);
        assert_eq!(response_slot(418), HTTP_RESPONSES_OTHER + 3);
        assert_eq!(response_slot(599), HTTP_RESPONSES_OTHER + 4);
    }
}
