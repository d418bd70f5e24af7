//! Dynamic consistency boundaries (DCB): query reads, conditional appends and
//! subscriptions by query, and [`Decider`], the read–decide–append loop.
//!
//! A decision that depends on events of several streams (an email address
//! registered once; at most N open orders per customer) reads the events that
//! matter with a [`Query`] over types and tags, decides, and appends with an
//! [`AppendCondition`]: "fail if any event matching the query was written after
//! the position my read was consistent through". If one was, nothing is written
//! and the decision is made again on fresh events. Streams and their expected
//! revisions work as before beside it, atomically in the same append.
//!
//! ```no_run
//! use cairn_client::{Client, Decider, Decision, EventData, ExpectedRevision, Query, QueryItem, StreamAppend};
//!
//! # async fn demo(client: Client) -> cairn_client::Result<()> {
//! let email = "ada@example.com";
//! let query = Query::of([QueryItem::types(["EmailRegistered"]).with_tags([format!("email:{email}")])]);
//! let registered = Decider::new(client, query)
//!     .run(
//!         || false,
//!         |taken, _event| *taken = true,
//!         |taken| -> cairn_client::Result<Decision<bool>> {
//!             if *taken {
//!                 return Ok(Decision::nothing(false));
//!             }
//!             let event = EventData::json_text("EmailRegistered", r#"{"customer":"c-7"}"#)
//!                 .tags([format!("email:{email}")]);
//!             Ok(Decision::append(
//!                 vec![StreamAppend::new("customer-c-7", ExpectedRevision::Any, vec![event])],
//!                 true,
//!             ))
//!         },
//!     )
//!     .await?;
//! assert!(registered.value);
//! # Ok(()) }
//! ```

use cairn_proto::v1 as pb;

use crate::error::{Error, Result};
use crate::subscription::{SubscribeOptions, Subscription};
use crate::types::{AppendResult, ReadOptions, RecordedEvent};
use crate::{Client, EventStream, ExpectedRevision, StreamAppend};

/// One alternative of a [`Query`]: events of any of `types` (any type when
/// empty) that carry every one of `tags`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct QueryItem {
    /// Event types; empty: any type.
    pub types: Vec<String>,
    /// Tags an event must all carry.
    pub tags: Vec<String>,
}

impl QueryItem {
    /// Events of any of these types.
    pub fn types<S: Into<String>>(types: impl IntoIterator<Item = S>) -> Self {
        Self {
            types: types.into_iter().map(Into::into).collect(),
            tags: Vec::new(),
        }
    }

    /// Events carrying all of these tags.
    pub fn tags<S: Into<String>>(tags: impl IntoIterator<Item = S>) -> Self {
        Self {
            types: Vec::new(),
            tags: tags.into_iter().map(Into::into).collect(),
        }
    }

    /// Adds tags the events must carry too.
    #[must_use]
    pub fn with_tags<S: Into<String>>(mut self, tags: impl IntoIterator<Item = S>) -> Self {
        self.tags.extend(tags.into_iter().map(Into::into));
        self
    }

    /// Whether `event` matches (the server's rule, for folding).
    pub fn matches(&self, event: &RecordedEvent) -> bool {
        (self.types.is_empty() || self.types.contains(&event.event_type))
            && self.tags.iter().all(|tag| event.tags.contains(tag))
    }
}

/// A DCB query: events matching any of its items; no items match every event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Query {
    /// The alternatives.
    pub items: Vec<QueryItem>,
}

impl Query {
    /// A query of these items.
    pub fn of(items: impl IntoIterator<Item = QueryItem>) -> Self {
        Self {
            items: items.into_iter().collect(),
        }
    }

    /// Whether `event` matches.
    pub fn matches(&self, event: &RecordedEvent) -> bool {
        self.items.is_empty() || self.items.iter().any(|item| item.matches(event))
    }

    fn into_proto(self) -> pb::Query {
        pb::Query {
            items: self
                .items
                .into_iter()
                .map(|item| pb::QueryItem {
                    types: item.types,
                    tags: item.tags,
                })
                .collect(),
        }
    }
}

/// "Fail the append if an event matching `query` exists after `after`"
/// (`None`: if one exists at all).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendCondition {
    /// What the decision read.
    pub query: Query,
    /// The position the read was consistent through
    /// ([`EventStream::consistent_through`]).
    pub after: Option<u64>,
}

impl AppendCondition {
    /// Fail if an event matching `query` exists after `after`.
    pub fn new(query: Query, after: Option<u64>) -> Self {
        Self { query, after }
    }

    pub(crate) fn into_proto(self) -> pb::AppendCondition {
        pb::AppendCondition {
            query: Some(self.query.into_proto()),
            after: self.after,
        }
    }
}

impl Client {
    /// Reads the events matching `query`, by position (from the type and tag
    /// indexes). `options.from` is a position; a filter applies on top.
    pub async fn read_query(&self, query: Query, options: ReadOptions) -> Result<EventStream> {
        self.read_request(String::new(), options, Some(query.into_proto()))
            .await
    }

    /// Appends to one stream if `expected` holds and `condition` does.
    /// A failed condition is [`Error::AppendConditionFailed`].
    pub async fn append_if(
        &self,
        stream: impl Into<String>,
        expected: ExpectedRevision,
        events: Vec<crate::EventData>,
        condition: AppendCondition,
    ) -> Result<AppendResult> {
        let mut request = StreamAppend::new(stream, expected, events).into_proto();
        request.condition = Some(condition.into_proto());
        let response = self
            .on_leader(request, |mut streams, request| async move {
                streams.append(request).await
            })
            .await?;
        Ok(response.into())
    }

    /// Appends to several streams atomically if every expectation and the
    /// condition (when given) hold.
    pub async fn append_multi_if(
        &self,
        parts: Vec<StreamAppend>,
        condition: Option<AppendCondition>,
    ) -> Result<Vec<AppendResult>> {
        let request = pb::AppendMultiRequest {
            parts: parts.into_iter().map(StreamAppend::into_proto).collect(),
            condition: condition.map(AppendCondition::into_proto),
        };
        let response = self
            .on_leader(request, |mut streams, request| async move {
                streams.append_multi(request).await
            })
            .await?;
        Ok(response
            .results
            .into_iter()
            .map(AppendResult::from)
            .collect())
    }

    /// Follows the events matching `query`: history, `caught_up`, then live
    /// events. `SubscribeFrom::After` takes a position.
    pub async fn subscribe_query(
        &self,
        query: Query,
        options: SubscribeOptions,
    ) -> Result<Subscription> {
        self.subscribe_request(String::new(), options, Some(query.into_proto()))
            .await
    }
}

/// What a [`Decider`]'s decision does: append these parts (atomically, under
/// the query's condition) and answer `value`, or append nothing.
#[derive(Debug, Clone)]
pub struct Decision<T> {
    /// Parts to append; empty: nothing is written.
    pub appends: Vec<StreamAppend>,
    /// What the decision answers the caller.
    pub value: T,
}

impl<T> Decision<T> {
    /// Append `appends`, answer `value`.
    pub fn append(appends: Vec<StreamAppend>, value: T) -> Self {
        Self { appends, value }
    }

    /// Write nothing, answer `value`.
    pub fn nothing(value: T) -> Self {
        Self {
            appends: Vec::new(),
            value,
        }
    }
}

/// The outcome of [`Decider::run`].
#[derive(Debug, Clone)]
pub struct Decided<T> {
    /// The decision's value.
    pub value: T,
    /// One result per appended part (empty when nothing was appended).
    pub results: Vec<AppendResult>,
    /// Decisions made: 1 plus the conflicts retried.
    pub attempts: u32,
    /// Events the last decision folded.
    pub events_read: usize,
}

/// The DCB decision loop: read the query's events, fold them into a state,
/// decide, append with the condition "nothing matching the query after what I
/// read"; on a conflict read again and decide again, at most `max_attempts`
/// times (default 10), then [`Error::AppendConditionFailed`].
#[derive(Debug, Clone)]
pub struct Decider {
    client: Client,
    query: Query,
    max_attempts: u32,
}

impl Decider {
    /// A decider over `query`.
    pub fn new(client: Client, query: Query) -> Self {
        Self {
            client,
            query,
            max_attempts: 10,
        }
    }

    /// How many decisions to make at most before giving up on conflicts (at
    /// least 1).
    #[must_use]
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// Runs the loop. `initial` makes a fresh state for each attempt, `fold`
    /// applies one matching event to it, `decide` turns the state into a
    /// [`Decision`] (or a business error, returned as is, nothing written).
    pub async fn run<S, T, E>(
        &self,
        initial: impl Fn() -> S,
        fold: impl Fn(&mut S, &RecordedEvent),
        decide: impl Fn(&S) -> std::result::Result<Decision<T>, E>,
    ) -> std::result::Result<Decided<T>, E>
    where
        E: From<Error>,
    {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let mut events = self
                .client
                .read_query(self.query.clone(), ReadOptions::forwards())
                .await?;
            let mut state = initial();
            let mut events_read = 0;
            while let Some(event) = events.next_event().await? {
                fold(&mut state, &event);
                events_read += 1;
            }
            let after = events.consistent_through();
            let decision = decide(&state)?;
            if decision.appends.is_empty() {
                return Ok(Decided {
                    value: decision.value,
                    results: Vec::new(),
                    attempts,
                    events_read,
                });
            }
            let condition = AppendCondition::new(self.query.clone(), after);
            match self
                .client
                .append_multi_if(decision.appends, Some(condition))
                .await
            {
                Ok(results) => {
                    return Ok(Decided {
                        value: decision.value,
                        results,
                        attempts,
                        events_read,
                    });
                }
                // Someone wrote a matching event since the read: decide again.
                Err(Error::AppendConditionFailed { .. }) if attempts < self.max_attempts => {}
                Err(error) => return Err(error.into()),
            }
        }
    }
}
