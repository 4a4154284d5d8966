//! Building metric families: typed label sets and the counter, gauge and histogram shapes
//! the exporter writes.

use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
};
use sluice_common::metrics::{BUCKET_BOUNDS_NS, BUCKETS, LATENCY_BUCKETS, latency_bucket_of};

pub(super) const VERSIONS: [&str; 2] = ["stable", "canary"];

/// The label set of a per-version series: a typed struct, so no series can forget one.
pub(super) struct VersionLabels<'a> {
    pub service: &'a str,
    pub version: &'a str,
}

impl VersionLabels<'_> {
    pub fn pairs(&self, extra: &[(&str, &str)]) -> Vec<LabelPair> {
        let Self { service, version } = self;
        let mut v = vec![pair("service", service), pair("version", version)];
        v.extend(extra.iter().map(|(k, val)| pair(k, val)));
        v
    }
}

pub(super) fn pair(name: &str, value: &str) -> LabelPair {
    let mut l = LabelPair::default();
    l.set_name(name.to_owned());
    l.set_value(value.to_owned());
    l
}

/// Metric families under construction, by name, in the order first seen.
#[derive(Default)]
pub(super) struct Families(pub Vec<MetricFamily>);

impl Families {
    pub fn family(&mut self, name: &str, help: &str, kind: MetricType) -> &mut MetricFamily {
        if let Some(i) = self.0.iter().position(|f| f.name() == name) {
            return &mut self.0[i];
        }
        let mut f = MetricFamily::default();
        f.set_name(name.to_owned());
        f.set_help(help.to_owned());
        f.set_field_type(kind);
        self.0.push(f);
        let last = self.0.len() - 1;
        &mut self.0[last]
    }

    pub fn counter(&mut self, name: &str, help: &str, labels: Vec<LabelPair>, value: u64) {
        let mut c = Counter::default();
        c.set_value(value as f64);
        let mut m = Metric::default();
        m.set_label(labels);
        m.set_counter(c);
        self.family(name, help, MetricType::COUNTER)
            .mut_metric()
            .push(m);
    }

    pub fn gauge(&mut self, name: &str, help: &str, labels: Vec<LabelPair>, value: f64) {
        let mut g = Gauge::default();
        g.set_value(value);
        let mut m = Metric::default();
        m.set_label(labels);
        m.set_gauge(g);
        self.family(name, help, MetricType::GAUGE)
            .mut_metric()
            .push(m);
    }

    /// A classic histogram from the kernel's per-bucket counts (not cumulative) and sum in ns.
    pub fn histogram(&mut self, name: &str, help: &str, labels: Vec<LabelPair>, slots: &[u64]) {
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(BUCKET_BOUNDS_NS.len());
        for (i, bound) in BUCKET_BOUNDS_NS.iter().enumerate() {
            cumulative += slots[i];
            buckets.push(bucket(*bound, cumulative));
        }
        let count = cumulative + slots[BUCKETS as usize - 1];
        self.push_histogram(name, help, labels, buckets, count, slots[BUCKETS as usize]);
    }

    /// A log-linear latency histogram, exported with the classic bounds of
    /// [`LATENCY_EXPORT_BOUNDS_NS`]: each is the upper bound of a kernel bucket, so every
    /// cumulative count is exact.
    pub fn latency_histogram(
        &mut self,
        name: &str,
        help: &str,
        labels: Vec<LabelPair>,
        slots: &[u64],
    ) {
        let mut cumulative = 0;
        let mut next = 0;
        let mut buckets = Vec::with_capacity(LATENCY_EXPORT_BOUNDS_NS.len());
        for bound in LATENCY_EXPORT_BOUNDS_NS {
            let last = latency_bucket_of(bound) as usize;
            cumulative += slots[next..=last].iter().sum::<u64>();
            next = last + 1;
            buckets.push(bucket(bound, cumulative));
        }
        let count = cumulative + slots[next..LATENCY_BUCKETS as usize].iter().sum::<u64>();
        let sum = slots[LATENCY_BUCKETS as usize];
        self.push_histogram(name, help, labels, buckets, count, sum);
    }

    fn push_histogram(
        &mut self,
        name: &str,
        help: &str,
        labels: Vec<LabelPair>,
        buckets: Vec<Bucket>,
        count: u64,
        sum_ns: u64,
    ) {
        let mut h = Histogram::default();
        h.set_bucket(buckets);
        h.set_sample_count(count);
        h.set_sample_sum(sum_ns as f64 / 1e9);
        let mut m = Metric::default();
        m.set_label(labels);
        m.set_histogram(h);
        self.family(name, help, MetricType::HISTOGRAM)
            .mut_metric()
            .push(m);
    }
}

/// The bounds the latency histograms are exported with: the powers of two from 8 µs to
/// 2^24 µs (16.8 s), as many series as the classic histograms have. The analysis and
/// `sluice status` read the kernel's finer buckets.
pub(super) const LATENCY_EXPORT_BOUNDS_NS: [u64; 22] = {
    let mut bounds = [0; 22];
    let mut k = 0;
    while k < bounds.len() {
        bounds[k] = (8 << k) * 1_000;
        k += 1;
    }
    bounds
};

fn bucket(bound_ns: u64, cumulative: u64) -> Bucket {
    let mut b = Bucket::default();
    b.set_upper_bound(bound_ns as f64 / 1e9);
    b.set_cumulative_count(cumulative);
    b
}

#[cfg(test)]
mod tests {
    use sluice_common::metrics::latency_upper_ns;

    use super::*;

    #[test]
    fn latency_export_bounds_close_kernel_buckets() {
        for bound in LATENCY_EXPORT_BOUNDS_NS {
            let i = latency_bucket_of(bound);
            assert_eq!(latency_upper_ns(i), Some(bound), "{bound} ns");
        }
        assert_eq!(LATENCY_EXPORT_BOUNDS_NS[21], 16_777_216_000);
    }

    #[test]
    fn latency_histogram_counts_are_exact_and_cumulative() {
        let mut slots = vec![0u64; LATENCY_BUCKETS as usize + 1];
        slots[latency_bucket_of(8_000) as usize] += 1; // <= 8 µs
        slots[latency_bucket_of(8_001) as usize] += 2; // (8, 16] µs
        slots[latency_bucket_of(1_000_000_000_000) as usize] += 4; // +Inf
        slots[LATENCY_BUCKETS as usize] = 123_000;
        let mut f = Families::default();
        f.latency_histogram("h", "help", vec![], &slots);
        let h = f.0[0].get_metric()[0].get_histogram();
        let counts: Vec<u64> = h
            .get_bucket()
            .iter()
            .map(|b| b.cumulative_count())
            .collect();
        assert_eq!(&counts[..3], &[1, 3, 3]);
        assert_eq!(counts[21], 3);
        assert_eq!(h.get_sample_count(), 7);
        assert!((h.get_sample_sum() - 123e-6).abs() < 1e-12);
    }
}
