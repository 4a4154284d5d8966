//! Building metric families: typed label sets and the counter, gauge and histogram shapes
//! the exporter writes.

use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
};
use sluice_common::metrics::{BUCKET_BOUNDS_NS, BUCKETS};

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

    /// A histogram from the kernel's per-bucket counts (not cumulative) and sum in ns.
    pub fn histogram(&mut self, name: &str, help: &str, labels: Vec<LabelPair>, slots: &[u64]) {
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(BUCKET_BOUNDS_NS.len());
        for (i, bound) in BUCKET_BOUNDS_NS.iter().enumerate() {
            cumulative += slots[i];
            let mut b = Bucket::default();
            b.set_upper_bound(*bound as f64 / 1e9);
            b.set_cumulative_count(cumulative);
            buckets.push(b);
        }
        let count = cumulative + slots[BUCKETS as usize - 1];
        let mut h = Histogram::default();
        h.set_bucket(buckets);
        h.set_sample_count(count);
        h.set_sample_sum(slots[BUCKETS as usize] as f64 / 1e9);
        let mut m = Metric::default();
        m.set_label(labels);
        m.set_histogram(h);
        self.family(name, help, MetricType::HISTOGRAM)
            .mut_metric()
            .push(m);
    }
}
