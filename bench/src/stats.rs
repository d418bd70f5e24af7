//! Latency summaries: exact percentiles by sorting every sample (runs are at most
//! a few hundred thousand appends, so no histogram is needed).

use serde_json::{Value, json};

/// Percentiles of a set of latencies, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Latency {
    /// Number of samples.
    pub(crate) count: usize,
    /// Median.
    pub(crate) p50_us: f64,
    /// 99th percentile.
    pub(crate) p99_us: f64,
    /// Slowest sample.
    pub(crate) max_us: f64,
    /// Arithmetic mean.
    pub(crate) mean_us: f64,
}

impl Latency {
    /// Summarises samples given in nanoseconds.
    pub(crate) fn from_nanos(mut samples: Vec<u64>) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        samples.sort_unstable();
        let us = |ns: u64| ns as f64 / 1_000.0;
        let sum: u128 = samples.iter().map(|&ns| u128::from(ns)).sum();
        Self {
            count: samples.len(),
            p50_us: us(percentile(&samples, 50.0)),
            p99_us: us(percentile(&samples, 99.0)),
            max_us: us(samples[samples.len() - 1]),
            mean_us: sum as f64 / samples.len() as f64 / 1_000.0,
        }
    }

    /// The summary as a JSON object.
    pub(crate) fn to_json(self) -> Value {
        json!({
            "count": self.count,
            "p50_us": round(self.p50_us),
            "p99_us": round(self.p99_us),
            "max_us": round(self.max_us),
            "mean_us": round(self.mean_us),
        })
    }
}

/// Nearest-rank percentile of sorted, non-empty samples.
fn percentile(sorted: &[u64], p: f64) -> u64 {
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Rounds to one decimal, for readable JSON.
pub(crate) fn round(value: f64) -> f64 {
    round_to(value, 1)
}

/// Rounds to `decimals` decimals, for readable JSON.
pub(crate) fn round_to(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<u64> = (1..=100).map(|i| i * 1_000).collect();
        let latency = Latency::from_nanos(samples);
        assert_eq!(latency.count, 100);
        assert_eq!(latency.p50_us, 50.0);
        assert_eq!(latency.p99_us, 99.0);
        assert_eq!(latency.max_us, 100.0);
        assert_eq!(latency.mean_us, 50.5);
    }

    #[test]
    fn rounding() {
        assert_eq!(round(2.04), 2.0);
        assert_eq!(round_to(2.000_099_9, 3), 2.0);
        assert_eq!(round_to(5.104_9, 2), 5.1);
    }

    #[test]
    fn one_and_no_samples() {
        assert_eq!(Latency::from_nanos(vec![7_000]).p99_us, 7.0);
        assert_eq!(Latency::from_nanos(Vec::new()), Latency::default());
    }
}
