//! Catch-up subscriptions: a plain one ([`Subscription`]) that ends when the
//! connection does, and a resilient one ([`ResilientSubscription`]) that
//! reconnects and resumes after the last event it handed out.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use cairn_proto::v1 as pb;
use futures_core::Stream;

use crate::{Client, Error, Filter, RecordedEvent, Result};

/// Where a subscription starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SubscribeFrom {
    /// From the first event.
    #[default]
    Start,
    /// Only events committed from now on.
    End,
    /// After this revision (stream) or position (`$all`, categories, types),
    /// exclusive: pass your last processed event's to resume.
    After(u64),
}

/// Options of a subscription.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubscribeOptions {
    /// Start.
    pub from: SubscribeFrom,
    /// Server-side filter.
    pub filter: Option<Filter>,
    /// With a filter: a checkpoint every this many non-matching events (0 = 1000).
    pub checkpoint_interval: u32,
}

impl SubscribeOptions {
    /// From the start.
    pub fn from_start() -> Self {
        Self::default()
    }

    /// From now on.
    pub fn from_end() -> Self {
        Self {
            from: SubscribeFrom::End,
            ..Self::default()
        }
    }

    /// After a revision or position.
    pub fn after(at: u64) -> Self {
        Self {
            from: SubscribeFrom::After(at),
            ..Self::default()
        }
    }

    /// Adds a filter.
    #[must_use]
    pub fn filter(mut self, filter: Filter, checkpoint_interval: u32) -> Self {
        self.filter = Some(filter);
        self.checkpoint_interval = checkpoint_interval;
        self
    }
}

/// What a subscription yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscriptionMessage {
    /// The server accepted the subscription.
    Confirmed {
        /// Server-side id.
        subscription_id: String,
    },
    /// An event.
    Event(RecordedEvent),
    /// History delivered; live from here.
    CaughtUp {
        /// Head position at that moment.
        head_position: u64,
    },
    /// The subscriber fell behind the live buffer; the server serves it from
    /// storage again. Nothing is lost.
    FellBehind {
        /// The position it needed.
        position: u64,
    },
    /// Everything up to this position was examined (filtered subscriptions).
    Checkpoint {
        /// Resume with `SubscribeFrom::After(position)`.
        position: u64,
    },
}

/// A live subscription; ends with an error when the connection or server does.
///
/// Read it promptly. All calls of one [`Client`] share one HTTP/2 connection, and
/// data the server has sent but you have not read counts against that
/// connection's flow-control window: an unread subscription can hold up the
/// responses of other calls on the same `Client`. Give subscriptions you may not
/// read for a while a `Client` of their own.
pub struct Subscription {
    inner: tonic::Streaming<pb::SubscribeResponse>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription").finish_non_exhaustive()
    }
}

impl Subscription {
    /// The next message; `Ok(None)` if the server ended the stream without error.
    pub async fn next_message(&mut self) -> Result<Option<SubscriptionMessage>> {
        std::future::poll_fn(|context| Pin::new(&mut *self).poll_next(context))
            .await
            .transpose()
    }
}

fn message(response: pb::SubscribeResponse) -> Result<Option<SubscriptionMessage>> {
    use pb::subscribe_response::Content;
    Ok(match response.content {
        Some(Content::Event(event)) => Some(SubscriptionMessage::Event(RecordedEvent::from_proto(
            event,
        )?)),
        Some(Content::CaughtUp(caught_up)) => Some(SubscriptionMessage::CaughtUp {
            head_position: caught_up.head_position,
        }),
        Some(Content::FellBehind(fell_behind)) => Some(SubscriptionMessage::FellBehind {
            position: fell_behind.position,
        }),
        Some(Content::Checkpoint(checkpoint)) => Some(SubscriptionMessage::Checkpoint {
            position: checkpoint.position,
        }),
        Some(Content::Confirmation(confirmation)) => Some(SubscriptionMessage::Confirmed {
            subscription_id: confirmation.subscription_id,
        }),
        None => None,
    })
}

impl Stream for Subscription {
    type Item = Result<SubscriptionMessage>;

    fn poll_next(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            return match Pin::new(&mut self.inner).poll_next(context) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Ready(Some(Err(status))) => Poll::Ready(Some(Err(status.into()))),
                Poll::Ready(Some(Ok(response))) => match message(response) {
                    Ok(Some(message)) => Poll::Ready(Some(Ok(message))),
                    // An empty message from a newer server: skip it.
                    Ok(None) => continue,
                    Err(error) => Poll::Ready(Some(Err(error))),
                },
            };
        }
    }
}

impl Client {
    /// Subscribes to a stream, `$all`, `$ce-<category>` or `$et-<type>`.
    pub async fn subscribe(
        &self,
        source: impl Into<String>,
        options: SubscribeOptions,
    ) -> Result<Subscription> {
        self.subscribe_request(source.into(), options, None).await
    }

    /// Subscribes to `stream` (a name), or with `query` to the events
    /// matching it (`stream` empty); `After` is a revision only for a stream
    /// name.
    pub(crate) async fn subscribe_request(
        &self,
        stream: String,
        options: SubscribeOptions,
        query: Option<pb::Query>,
    ) -> Result<Subscription> {
        use pb::subscribe_request::From;
        let by_revision = query.is_none() && crate::is_stream_name(&stream);
        let from = match options.from {
            SubscribeFrom::Start => From::Start(()),
            SubscribeFrom::End => From::End(()),
            SubscribeFrom::After(at) if by_revision => From::AfterRevision(at),
            SubscribeFrom::After(at) => From::AfterPosition(at),
        };
        let request = pb::SubscribeRequest {
            stream,
            from: Some(from),
            filter: options.filter.map(crate::filter_to_proto),
            checkpoint_interval: options.checkpoint_interval,
            query,
        };
        let response = self.subscriptions.clone().subscribe(request).await?;
        Ok(Subscription {
            inner: response.into_inner(),
        })
    }

    /// A subscription that survives dropped connections and server restarts: see
    /// [`ResilientSubscription`].
    pub fn subscribe_resilient(
        &self,
        source: impl Into<String>,
        options: SubscribeOptions,
    ) -> ResilientSubscription {
        ResilientSubscription {
            client: self.clone(),
            source: source.into(),
            options,
            current: None,
            backoff: INITIAL_BACKOFF,
            max_backoff: Duration::from_secs(2),
        }
    }
}

const INITIAL_BACKOFF: Duration = Duration::from_millis(50);

/// A subscription that reconnects after a dropped connection or a server restart
/// and resumes right after the last event (or checkpoint) it handed out, so the
/// caller sees every event exactly once, in order. To survive a restart of the
/// caller too, persist the last handed-out revision/position and start with
/// `SubscribeFrom::After(it)`.
///
/// Errors that retrying cannot fix (stream deleted, invalid request) are
/// returned, and the subscription ends.
#[derive(Debug)]
pub struct ResilientSubscription {
    client: Client,
    source: String,
    options: SubscribeOptions,
    current: Option<Subscription>,
    backoff: Duration,
    max_backoff: Duration,
}

impl ResilientSubscription {
    fn is_stream(&self) -> bool {
        !self.source.starts_with('$')
    }

    fn transient(error: &Error) -> bool {
        matches!(error, Error::Unavailable(_) | Error::Connect(_))
            || matches!(error, Error::Other { code, .. } if matches!(code, tonic::Code::Unknown | tonic::Code::Cancelled | tonic::Code::Internal | tonic::Code::Aborted))
    }

    /// The next message. Reconnects (with backoff) as often as needed.
    pub async fn next(&mut self) -> Result<SubscriptionMessage> {
        loop {
            let subscription = match self.current.as_mut() {
                Some(subscription) => subscription,
                None => match self
                    .client
                    .subscribe(self.source.clone(), self.options.clone())
                    .await
                {
                    Ok(subscription) => self.current.insert(subscription),
                    Err(error) if Self::transient(&error) => {
                        self.wait().await;
                        continue;
                    }
                    Err(error) => return Err(error),
                },
            };
            match subscription.next_message().await {
                Ok(Some(message)) => {
                    self.backoff = INITIAL_BACKOFF;
                    match &message {
                        SubscriptionMessage::Event(event) => {
                            let at = if self.is_stream() {
                                event.revision
                            } else {
                                event.position
                            };
                            self.options.from = SubscribeFrom::After(at);
                        }
                        SubscriptionMessage::Checkpoint { position } if !self.is_stream() => {
                            self.options.from = SubscribeFrom::After(*position);
                        }
                        _ => {}
                    }
                    return Ok(message);
                }
                Ok(None) => {
                    self.current = None;
                    self.wait().await;
                }
                Err(error) if Self::transient(&error) => {
                    self.current = None;
                    self.wait().await;
                }
                Err(error) => {
                    self.current = None;
                    return Err(error);
                }
            }
        }
    }

    /// Where the subscription would resume now.
    pub fn resume_from(&self) -> SubscribeFrom {
        self.options.from
    }

    async fn wait(&mut self) {
        tokio::time::sleep(self.backoff).await;
        self.backoff = (self.backoff * 2).min(self.max_backoff);
    }
}
