//! The targets of WORKLOAD.md and how a run's figures compare with them.
//!
//! Durable targets are ratios within one run: against the disk's fdatasync
//! rate measured in the same minutes, or against the peers' anchor figures of
//! WORKLOAD.md (measured on a machine of this kind). Where the anchor is a
//! range, the top of the range is used, so "met" is never flattering.

use serde_json::{Value, json};

use crate::stats::round_to;
use crate::workloads::Measured;

/// PostgreSQL 15, synchronous_commit=on, W2 ev/s (top of 2,452-3,086).
const PG_W2: f64 = 3_086.0;
/// PostgreSQL 15, synchronous_commit=on, W3 ev/s (top of 7,776-8,872).
const PG_W3: f64 = 8_872.0;
/// PostgreSQL 15, synchronous_commit=on, W4 ev/s.
const PG_W4: f64 = 201_717.0;
/// Redis 7 streams, everysec (not durable), W1 ev/s (top of 4,287-4,410).
const REDIS_EVERYSEC_W1: f64 = 4_410.0;

/// One target and how the run did.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Verdict {
    /// The workload, e.g. `W2`.
    pub(crate) workload: &'static str,
    /// What is compared, e.g. `ev/s ÷ fdatasync/s`.
    pub(crate) measure: &'static str,
    /// The run's value of that measure.
    pub(crate) value: f64,
    /// How the value is printed (unit included).
    pub(crate) shown: String,
    /// The goal as text, e.g. `>= 15x`.
    pub(crate) goal: String,
    /// Whether the goal was met; `None` when it does not apply to this run
    /// (durable targets in a not-durable run).
    pub(crate) met: Option<bool>,
}

impl Verdict {
    /// The verdict as a JSON object.
    pub(crate) fn to_json(&self) -> Value {
        json!({
            "workload": self.workload,
            "measure": self.measure,
            "value": round_to(self.value, 3),
            "goal": self.goal,
            "met": self.met,
        })
    }

    /// `yes`, `NO` or `n/a (not durable)`.
    pub(crate) fn met_text(&self) -> &'static str {
        match self.met {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "n/a (not durable)",
        }
    }
}

/// Compares `results` with the targets. `fsync_per_second` is the disk's rate in
/// this run; `own_fsync` the rate measured around a single workload (the mean
/// of probes just before and after it), which takes precedence; `durable` says whether the server acknowledged after fsync.
pub(crate) fn verdicts(
    results: &[Measured],
    fsync_per_second: f64,
    own_fsync: &[(String, f64)],
    durable: bool,
) -> Vec<Verdict> {
    let find = |id: &str| {
        results
            .iter()
            .find(|result| result.id == id && !result.capped)
    };
    let fsync_for = |id: &str| {
        own_fsync
            .iter()
            .find(|(own, _)| own == id)
            .map_or(fsync_per_second, |(_, rate)| *rate)
    };
    let durable_only = |met: bool| durable.then_some(met);
    let mut out = Vec::new();
    if let Some(w1) = find("W1") {
        let ratio = w1.events_per_second() / fsync_for("W1");
        out.push(Verdict {
            workload: "W1",
            measure: "ev/s ÷ fdatasync/s",
            value: ratio,
            shown: format!("{ratio:.2}x"),
            goal: ">= 0.95x (within 5%)".to_owned(),
            met: durable_only(ratio >= 0.95),
        });
        if !durable {
            let ratio = w1.events_per_second() / REDIS_EVERYSEC_W1;
            out.push(Verdict {
                workload: "W1",
                measure: "not durable: ev/s ÷ Redis everysec (4,410)",
                value: ratio,
                shown: format!("{ratio:.2}x"),
                goal: ">= 2x".to_owned(),
                met: Some(ratio >= 2.0),
            });
        }
    }
    if let Some(w2) = find("W2") {
        let ratio = w2.events_per_second() / fsync_for("W2");
        out.push(Verdict {
            workload: "W2",
            measure: "ev/s ÷ fdatasync/s",
            value: ratio,
            shown: format!("{ratio:.2}x"),
            goal: ">= 15x".to_owned(),
            met: durable_only(ratio >= 15.0),
        });
        let ratio = w2.events_per_second() / PG_W2;
        out.push(Verdict {
            workload: "W2",
            measure: "ev/s ÷ PostgreSQL sync (3,086)",
            value: ratio,
            shown: format!("{ratio:.2}x"),
            goal: ">= 2x".to_owned(),
            met: durable_only(ratio >= 2.0),
        });
    }
    if let Some(w3) = find("W3") {
        let ratio = w3.events_per_second() / PG_W3;
        out.push(Verdict {
            workload: "W3",
            measure: "ev/s ÷ PostgreSQL sync (8,872)",
            value: ratio,
            shown: format!("{ratio:.2}x"),
            goal: ">= 3x".to_owned(),
            met: durable_only(ratio >= 3.0),
        });
    }
    if let Some(w4) = find("W4") {
        let ratio = w4.events_per_second() / PG_W4;
        out.push(Verdict {
            workload: "W4",
            measure: "ev/s ÷ PostgreSQL (201,717)",
            value: ratio,
            shown: format!("{ratio:.2}x"),
            goal: ">= 2.5x".to_owned(),
            met: Some(ratio >= 2.5),
        });
    }
    if let Some(w5) = find("W5") {
        let ms = w5.latency.p50_us / 1_000.0;
        out.push(Verdict {
            workload: "W5",
            measure: "median read of 1,000 events",
            value: ms,
            shown: format!("{ms:.2} ms"),
            goal: "<= 2 ms".to_owned(),
            met: Some(ms <= 2.0),
        });
    }
    if let Some(adds) = find("W6").and_then(Measured::delivery_adds_ms) {
        out.push(Verdict {
            workload: "W6",
            measure: "p50 append->delivery − p50 append",
            value: adds,
            shown: format!("{adds:.3} ms"),
            goal: "<= 0.5 ms".to_owned(),
            met: durable_only(adds <= 0.5),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Latency;

    fn measured(id: &str, events: u64, seconds: f64) -> Measured {
        Measured {
            id: id.to_owned(),
            what: String::new(),
            events,
            operations: events,
            seconds,
            latency: Latency::from_nanos(vec![1_000_000]),
            append_latency: None,
            capped: false,
        }
    }

    #[test]
    fn ratios_against_the_disk_and_the_anchors() {
        let results = [measured("W1", 300, 1.0), measured("W2", 6_000, 1.0)];
        let durable = verdicts(&results, 310.0, &[], true);
        assert_eq!(durable.len(), 3);
        assert_eq!(durable[0].met, Some(true)); // 0.97x of fdatasync
        assert_eq!(durable[1].met, Some(true)); // 19.4x of fdatasync
        assert!((durable[1].value - 6_000.0 / 310.0).abs() < 1e-9);
        assert_eq!(durable[2].met, Some(false)); // 1.94x PostgreSQL
        let not_durable = verdicts(&results, 310.0, &[], false);
        assert_eq!(not_durable[0].met, None);
        assert_eq!(not_durable[1].workload, "W1");
        assert_eq!(not_durable[1].met, Some(false)); // 300 ev/s is not 2x Redis
    }

    #[test]
    fn a_workload_s_own_probes_take_precedence() {
        let w1 = measured("W1", 300, 1.0);
        let verdict = &verdicts(&[w1], 3_000.0, &[("W1".to_owned(), 300.0)], true)[0];
        assert!((verdict.value - 1.0).abs() < 1e-9);
    }

    #[test]
    fn capped_workloads_are_not_judged() {
        let mut w1 = measured("W1", 10, 300.0);
        w1.capped = true;
        assert!(verdicts(&[w1], 300.0, &[], true).is_empty());
    }
}
