//! The monotonic clock shared by processes: `clock_gettime(CLOCK_MONOTONIC)` in
//! nanoseconds.
//!
//! `std::time::Instant` reads the same clock on Linux but hides its value, so an
//! `Instant` cannot travel to another process. Events carry this value in their
//! `t` field; a subscriber in another process computes `delivery - t` with the
//! same clock (WORKLOAD.md, W6).

use rustix::time::{ClockId, clock_gettime};

/// Nanoseconds of `CLOCK_MONOTONIC` (time since boot, excluding suspend): the
/// same value in every process of the machine at the same moment.
pub(crate) fn monotonic_ns() -> u64 {
    let now = clock_gettime(ClockId::Monotonic);
    let secs = u64::try_from(now.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(now.tv_nsec).unwrap_or(0);
    secs.saturating_mul(1_000_000_000).saturating_add(nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advances_like_instant() {
        let start = std::time::Instant::now();
        let before = monotonic_ns();
        std::thread::sleep(std::time::Duration::from_millis(5));
        let after = monotonic_ns();
        let elapsed = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        assert!(after - before >= 5_000_000);
        assert!(after - before <= elapsed);
    }
}
