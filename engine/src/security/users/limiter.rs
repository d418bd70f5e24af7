//! Failed logins per source, sans I/O: the caller passes the time in, so the
//! rules are tested without waiting.
//!
//! After [`MAX_FAILURES`] failures from one source within [`WINDOW`], every
//! attempt from it is refused for a while without checking its credentials
//! (the first time [`FIRST_BLOCK`], doubling each time it is blocked again,
//! up to [`MAX_BLOCK`]). A success resets the source; a source quiet for
//! [`FORGET_AFTER`] after its last failure or block starts over. IPv6 sources count per /64 (one host
//! usually holds a whole /64). At most `max_sources` sources are tracked:
//! when full, quiet entries are dropped first; a source that still finds no
//! room is not tracked (its attempts still cost a full password check each,
//! which the hashing pool bounds).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Failures within [`WINDOW`] that block a source.
pub const MAX_FAILURES: u32 = 5;
/// The window failures are counted in.
pub const WINDOW: Duration = Duration::from_secs(60);
/// The first block.
pub const FIRST_BLOCK: Duration = Duration::from_secs(10);
/// The longest block.
pub const MAX_BLOCK: Duration = Duration::from_secs(15 * 60);
/// A source without failures for this long starts over.
pub const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);

/// Where attempts come from: an address (IPv6 cut to its /64), or unknown.
type SourceKey = Option<IpAddr>;

fn key(source: Option<IpAddr>) -> SourceKey {
    source.map(|address| match address {
        IpAddr::V4(_) => address,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(bits.into())
            }
        },
    })
}

#[derive(Debug, Clone)]
struct Failures {
    /// Start of the current counting window.
    window_start: Instant,
    /// Failures in it.
    count: u32,
    /// How often the source was blocked (the backoff's exponent).
    blocks: u32,
    /// Refused until then.
    blocked_until: Option<Instant>,
    /// The last failure (for forgetting).
    last_failure: Instant,
}

/// The failure book.
#[derive(Debug)]
pub struct LoginLimiter {
    sources: HashMap<SourceKey, Failures>,
    max_sources: usize,
}

impl LoginLimiter {
    /// A book tracking at most `max_sources` sources.
    pub fn new(max_sources: usize) -> Self {
        Self {
            sources: HashMap::new(),
            max_sources: max_sources.max(1),
        }
    }

    /// `Err(wait)` while `source` is blocked at `now`.
    pub fn check(&self, source: Option<IpAddr>, now: Instant) -> Result<(), Duration> {
        match self
            .sources
            .get(&key(source))
            .and_then(|failures| failures.blocked_until)
        {
            Some(until) if until > now => Err(until - now),
            _ => Ok(()),
        }
    }

    /// Counts a failure of `source` at `now`; returns the block it started,
    /// if it did.
    pub fn failure(&mut self, source: Option<IpAddr>, now: Instant) -> Option<Duration> {
        let key = key(source);
        if !self.sources.contains_key(&key) && self.sources.len() >= self.max_sources {
            self.sources.retain(|_, failures| !quiet(failures, now));
            if self.sources.len() >= self.max_sources {
                return None;
            }
        }
        let failures = self.sources.entry(key).or_insert(Failures {
            window_start: now,
            count: 0,
            blocks: 0,
            blocked_until: None,
            last_failure: now,
        });
        let quiet_since = failures
            .blocked_until
            .map_or(failures.last_failure, |until| {
                until.max(failures.last_failure)
            });
        if now.saturating_duration_since(quiet_since) >= FORGET_AFTER {
            failures.blocks = 0;
        }
        if now.saturating_duration_since(failures.window_start) >= WINDOW {
            failures.window_start = now;
            failures.count = 0;
        }
        failures.last_failure = now;
        failures.count += 1;
        if failures.count < MAX_FAILURES {
            return None;
        }
        let block = FIRST_BLOCK
            .saturating_mul(1u32 << failures.blocks.min(16))
            .min(MAX_BLOCK);
        failures.blocks = failures.blocks.saturating_add(1);
        failures.blocked_until = Some(now + block);
        failures.window_start = now;
        failures.count = 0;
        Some(block)
    }

    /// A success of `source`: forgets its failures.
    pub fn success(&mut self, source: Option<IpAddr>) {
        self.sources.remove(&key(source));
    }

    /// Sources tracked now.
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.sources.len()
    }
}

/// True when an entry neither blocks nor counts anything any more.
fn quiet(failures: &Failures, now: Instant) -> bool {
    failures.blocked_until.is_none_or(|until| until <= now)
        && now.saturating_duration_since(failures.window_start) >= WINDOW
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> Option<IpAddr> {
        Some(text.parse().unwrap())
    }

    #[test]
    fn five_failures_in_a_minute_block_that_source_only() {
        let mut limiter = LoginLimiter::new(100);
        let start = Instant::now();
        for n in 0..MAX_FAILURES - 1 {
            assert_eq!(
                limiter.failure(ip("10.0.0.1"), start + Duration::from_secs(n.into())),
                None
            );
            assert!(limiter.check(ip("10.0.0.1"), start).is_ok());
        }
        let at = start + Duration::from_secs(10);
        assert_eq!(limiter.failure(ip("10.0.0.1"), at), Some(FIRST_BLOCK));
        assert_eq!(limiter.check(ip("10.0.0.1"), at), Err(FIRST_BLOCK));
        assert!(limiter.check(ip("10.0.0.2"), at).is_ok());
        assert!(limiter.check(None, at).is_ok());
        assert!(limiter.check(ip("10.0.0.1"), at + FIRST_BLOCK).is_ok());
    }

    #[test]
    fn failures_spread_over_more_than_a_window_do_not_block() {
        let mut limiter = LoginLimiter::new(100);
        let start = Instant::now();
        for n in 0..20u64 {
            let at = start + Duration::from_secs(n * 20);
            assert_eq!(limiter.failure(ip("10.0.0.1"), at), None, "failure {n}");
        }
    }

    #[test]
    fn blocks_grow_then_reset_after_a_success_or_a_quiet_spell() {
        let mut limiter = LoginLimiter::new(100);
        let mut now = Instant::now();
        let mut blocks = Vec::new();
        for _ in 0..9 {
            let mut block = None;
            for _ in 0..MAX_FAILURES {
                block = limiter.failure(ip("10.0.0.1"), now);
            }
            let block = block.expect("blocked");
            blocks.push(block.as_secs());
            now += block;
        }
        assert_eq!(blocks, [10, 20, 40, 80, 160, 320, 640, 900, 900]);

        limiter.success(ip("10.0.0.1"));
        let mut block = None;
        for _ in 0..MAX_FAILURES {
            block = limiter.failure(ip("10.0.0.1"), now);
        }
        assert_eq!(block, Some(FIRST_BLOCK));

        now += FORGET_AFTER + FIRST_BLOCK;
        for _ in 0..MAX_FAILURES {
            block = limiter.failure(ip("10.0.0.1"), now);
        }
        assert_eq!(block, Some(FIRST_BLOCK), "a quiet spell starts over");
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_v4_as_v4() {
        let mut limiter = LoginLimiter::new(100);
        let now = Instant::now();
        for n in 0..MAX_FAILURES {
            limiter.failure(ip(&format!("2001:db8:1:2::{n:x}")), now);
        }
        assert!(limiter.check(ip("2001:db8:1:2:ffff::1"), now).is_err());
        assert!(limiter.check(ip("2001:db8:1:3::1"), now).is_ok());
        for _ in 0..MAX_FAILURES {
            limiter.failure(ip("::ffff:10.1.1.1"), now);
        }
        assert!(limiter.check(ip("10.1.1.1"), now).is_err());
    }

    #[test]
    fn the_book_is_bounded_and_drops_quiet_sources_first() {
        let mut limiter = LoginLimiter::new(3);
        let now = Instant::now();
        for n in 0..3 {
            limiter.failure(ip(&format!("10.0.0.{n}")), now);
        }
        limiter.failure(ip("10.0.0.9"), now);
        assert_eq!(limiter.tracked(), 3, "full: a new source is not tracked");
        let later = now + WINDOW;
        limiter.failure(ip("10.0.0.9"), later);
        assert_eq!(limiter.tracked(), 1, "quiet sources made room");
    }
}
