//! The `$all` filter of KurrentDB reads and subscriptions: on stream names
//! or on event types, by prefixes or by a regex in .NET syntax. Clients send
//! look-arounds (the Python client's default exclude filter is
//! `^(?!(\$.+$|...))`), which the `regex` crate of storage's `ReadFilter`
//! does not have, so matching happens here with `fancy-regex`.
//!
//! Bounds: the pattern is at most [`cairn_storage::MAX_FILTER_REGEX_BYTES`]
//! long, its compiled automata at most [`COMPILED_BYTES`], prefixes as
//! storage bounds them, and one match at most [`BACKTRACK_LIMIT`] backtracking
//! steps: a pathological pattern fails the call with a clear error instead
//! of burning a core.

use cairn_proto::kurrent::streams::read_req::options::{FilterOptions, filter_options};
use cairn_storage::{MAX_FILTER_REGEX_BYTES, ReadFilter};
use tonic::Status;

use super::error;

/// Backtracking steps one match may take (fancy-regex's default is 1,000,000;
/// names are at most 1 KiB, so honest patterns need far fewer).
pub(super) const BACKTRACK_LIMIT: usize = 100_000;
/// Largest compiled size of the regex parts fancy-regex hands to `regex`.
pub(super) const COMPILED_BYTES: usize = 1 << 20;
/// The checkpoint window when the client leaves it to the server (`count`):
/// KurrentDB's default.
const DEFAULT_WINDOW: u32 = 32;
/// The multiplier when the client sends 0.
const DEFAULT_MULTIPLIER: u32 = 1;

/// What the filter looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    StreamName,
    EventType,
}

/// A compiled filter.
#[derive(Debug, Clone)]
pub(super) struct Filter {
    target: Target,
    prefixes: Vec<String>,
    regex: Option<fancy_regex::Regex>,
    /// Checkpoint every this many considered events (subscriptions).
    pub checkpoint_interval: u64,
}

impl Filter {
    /// The filter of a request, or `None` for `no_filter`/unset.
    pub(super) fn of(options: Option<&FilterOptions>) -> Result<Option<Self>, Status> {
        let Some(options) = options else {
            return Ok(None);
        };
        let (target, expression) = match &options.filter {
            Some(filter_options::Filter::StreamIdentifier(expression)) => {
                (Target::StreamName, expression)
            }
            Some(filter_options::Filter::EventType(expression)) => (Target::EventType, expression),
            None => return Ok(None),
        };
        ReadFilter::check_prefixes(&expression.prefix, &[])
            .map_err(|error| error::invalid(error.to_string()))?;
        let regex = if expression.regex.is_empty() {
            None
        } else {
            Some(compile(&expression.regex)?)
        };
        let window = match options.window {
            Some(filter_options::Window::Max(max)) if max > 0 => max,
            _ => DEFAULT_WINDOW,
        };
        let multiplier = match options.checkpoint_interval_multiplier {
            0 => DEFAULT_MULTIPLIER,
            multiplier => multiplier,
        };
        Ok(Some(Self {
            target,
            prefixes: expression.prefix.clone(),
            regex,
            checkpoint_interval: u64::from(window) * u64::from(multiplier),
        }))
    }

    /// Whether an event of `stream` with `event_type` passes; an error when
    /// the regex ran out of its backtracking budget.
    pub(super) fn matches(&self, stream: &str, event_type: &str) -> Result<bool, Status> {
        let value = match self.target {
            Target::StreamName => stream,
            Target::EventType => event_type,
        };
        if !self.prefixes.is_empty()
            && !self
                .prefixes
                .iter()
                .any(|prefix| value.starts_with(prefix.as_str()))
        {
            return Ok(false);
        }
        match &self.regex {
            None => Ok(true),
            Some(regex) => regex.is_match(value).map_err(|_| {
                Status::invalid_argument(format!(
                    "the filter regex needed more than {BACKTRACK_LIMIT} backtracking steps on one name; simplify it"
                ))
            }),
        }
    }
}

/// Compiles a client's regex with the bounds above.
fn compile(pattern: &str) -> Result<fancy_regex::Regex, Status> {
    if pattern.len() > MAX_FILTER_REGEX_BYTES {
        return Err(error::invalid(format!(
            "the filter regex is {} bytes; the limit is {MAX_FILTER_REGEX_BYTES}",
            pattern.len()
        )));
    }
    fancy_regex::RegexBuilder::new(pattern)
        .backtrack_limit(BACKTRACK_LIMIT)
        .delegate_size_limit(COMPILED_BYTES)
        .build()
        .map_err(|error| {
            let shown: String = pattern.chars().take(64).collect();
            error::invalid(format!("bad filter regex '{shown}': {error}"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_proto::kurrent::streams::read_req::options::filter_options::Expression;

    fn options(target_is_type: bool, regex: &str, prefix: &[&str]) -> FilterOptions {
        let expression = Expression {
            regex: regex.to_owned(),
            prefix: prefix.iter().map(|p| (*p).to_owned()).collect(),
        };
        FilterOptions {
            filter: Some(if target_is_type {
                filter_options::Filter::EventType(expression)
            } else {
                filter_options::Filter::StreamIdentifier(expression)
            }),
            window: Some(filter_options::Window::Max(30)),
            checkpoint_interval_multiplier: 5,
        }
    }

    #[test]
    fn the_python_default_exclude_filter_works() {
        let filter = Filter::of(Some(&options(
            true,
            r"^(?!(\$.+$|PersistentConfig1$|Result$))",
            &[],
        )))
        .unwrap()
        .unwrap();
        assert!(filter.matches("s", "OrderPlaced").unwrap());
        assert!(!filter.matches("s", "$metadata").unwrap());
        assert!(!filter.matches("s", "Result").unwrap());
        assert!(filter.matches("s", "Results").unwrap());
        assert_eq!(filter.checkpoint_interval, 150);
    }

    #[test]
    fn prefixes_apply_to_the_chosen_target() {
        let filter = Filter::of(Some(&options(false, "", &["order-", "cart-"])))
            .unwrap()
            .unwrap();
        assert!(filter.matches("order-1", "$x").unwrap());
        assert!(!filter.matches("user-1", "order-").unwrap());
    }

    #[test]
    fn pathological_patterns_are_bounded() {
        // Nested quantifiers under a look-ahead backtrack exponentially;
        // the limit turns that into an error after a bounded amount of work.
        let filter = Filter::of(Some(&options(false, r"^((?=a)a+)+$", &[])))
            .unwrap()
            .unwrap();
        let name = format!("{}c", "a".repeat(64));
        assert!(filter.matches(&name, "t").is_err());
        assert!(filter.matches("aaaa", "t").unwrap());
        let long = "a".repeat(MAX_FILTER_REGEX_BYTES + 1);
        assert!(Filter::of(Some(&options(false, &long, &[]))).is_err());
        assert!(Filter::of(Some(&options(false, "(", &[]))).is_err());
    }
}
