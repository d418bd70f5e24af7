//! A call's outgoing channel that notices when its client stops reading.
//!
//! What a call buffers for its client (read chunks, subscription events)
//! holds bytes of the server's [`ByteBudget`](crate::ByteBudget) until the
//! transport takes it. A client that never reads (never opens its HTTP/2
//! window) would keep those bytes forever, and about 25 such calls spend the
//! whole budget, so that every other reader waits.
//!
//! An [`Outbox`] is a bounded channel whose receiving side is shared with the
//! producer: the producer can see that nothing was taken for the stall
//! timeout while something waited ([`Outbox::stalled`], [`Outbox::send`]),
//! and then cut the receiver off ([`Outbox::cut_off`]): everything buffered
//! is dropped at once, even though the receiver is never polled again, and
//! the receiver yields one closing item (the call's error status) if it ever
//! is.
//!
//! Progress is a take, or an item arriving in an empty channel: a channel
//! that stays empty is never stalled (a quiet subscription is fine), and an
//! item is never older than the stall timeout when its call is cut off for
//! it. Every lock here is held for a few instructions and never across an
//! `.await`.

use std::future::pending;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio::time::Instant;

/// Why an item was not delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Undelivered {
    /// The receiver is gone (the client went away, or it was cut off).
    Gone,
    /// The receiver took nothing for the stall timeout while items waited.
    Stalled,
}

/// A channel of `capacity` items whose receiver counts as stalled after
/// `stall_timeout` without progress (`None`: never, for the server's own
/// consumers).
pub fn channel<T>(
    capacity: usize,
    stall_timeout: Option<Duration>,
) -> (Outbox<T>, OutboxReceiver<T>) {
    let (sender, receiver) = mpsc::channel(capacity.max(1));
    let shared = Arc::new(Shared {
        stall_timeout,
        state: Mutex::new(State {
            receiver: Some(receiver),
            progress: Instant::now(),
            closing: false,
            last: None,
            waker: None,
        }),
    });
    (
        Outbox {
            sender,
            shared: Arc::clone(&shared),
        },
        OutboxReceiver { shared },
    )
}

/// The producing side.
#[derive(Debug)]
pub struct Outbox<T> {
    sender: mpsc::Sender<T>,
    shared: Arc<Shared<T>>,
}

/// The consuming side (the call's response stream).
#[derive(Debug)]
pub struct OutboxReceiver<T> {
    shared: Arc<Shared<T>>,
}

/// A handle on a receiver's progress, for a task that does not send on the
/// channel (a consumer group's actor sends, the call's own task watches).
#[derive(Debug)]
pub struct StallWatch<T> {
    shared: Arc<Shared<T>>,
}

#[derive(Debug)]
struct Shared<T> {
    stall_timeout: Option<Duration>,
    state: Mutex<State<T>>,
}

#[derive(Debug)]
struct State<T> {
    /// `None` once cut off (or ended): what it buffered is dropped.
    receiver: Option<mpsc::Receiver<T>>,
    /// The last take, or the last arrival in an empty channel.
    progress: Instant,
    /// No more items will be sent: once the channel is empty the receiver
    /// yields `last` and ends.
    closing: bool,
    /// Yielded once after everything buffered (or instead of it, when cut off).
    last: Option<T>,
    /// The receiver's task, to wake when it is cut off or closed.
    waker: Option<Waker>,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Resolves once items have waited with no progress for the stall
    /// timeout; never without a stall timeout or after the receiver is gone.
    async fn stalled(&self) {
        let Some(timeout) = self.stall_timeout else {
            return pending().await;
        };
        loop {
            let due = {
                let state = self.lock();
                match &state.receiver {
                    None => None,
                    Some(receiver) if receiver.is_empty() => None,
                    Some(_) => Some(state.progress + timeout),
                }
            };
            match due {
                // Nothing waits: the earliest possible stall is a timeout
                // after the next arrival.
                None => tokio::time::sleep(timeout).await,
                Some(due) if due <= Instant::now() => return,
                Some(due) => tokio::time::sleep_until(due).await,
            }
        }
    }

    /// Drops everything buffered now; the receiver yields `last` (unless a
    /// closing item was set already: the call ends with the error that
    /// ended it) and ends.
    fn cut_off(&self, last: T) {
        let (receiver, waker) = {
            let mut state = self.lock();
            state.last.get_or_insert(last);
            state.closing = true;
            (state.receiver.take(), state.waker.take())
        };
        drop(receiver);
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl<T> Outbox<T> {
    /// A handle on the receiver's progress.
    pub fn watch(&self) -> StallWatch<T> {
        StallWatch {
            shared: Arc::clone(&self.shared),
        }
    }

    /// The stall timeout it was made with.
    pub fn stall_timeout(&self) -> Option<Duration> {
        self.shared.stall_timeout
    }

    /// An item now enters an empty channel: that is progress.
    fn mark_arrival(&self) {
        if self.sender.capacity() == self.sender.max_capacity() {
            self.shared.lock().progress = Instant::now();
        }
    }

    /// Sends `item`, waiting for room while the receiver makes progress.
    pub async fn send(&self, item: T) -> Result<(), Undelivered> {
        self.mark_arrival();
        tokio::select! {
            biased;
            sent = self.sender.send(item) => sent.map_err(|_| Undelivered::Gone),
            () = self.stalled() => Err(Undelivered::Stalled),
        }
    }

    /// Sends `item` if there is room now.
    pub fn try_send(&self, item: T) -> Result<(), TrySendError<T>> {
        self.mark_arrival();
        self.sender.try_send(item)
    }

    /// Resolves once the receiver is gone (dropped or cut off).
    pub async fn closed(&self) {
        self.sender.closed().await;
    }

    /// See [`StallWatch::stalled`].
    pub async fn stalled(&self) {
        self.shared.stalled().await;
    }

    /// See [`StallWatch::cut_off`].
    pub fn cut_off(&self, last: T) {
        self.shared.cut_off(last);
    }

    /// Nothing more will be sent: the receiver yields what is buffered, then
    /// `last` (if any), then ends.
    pub fn close(&self, last: Option<T>) {
        let waker = {
            let mut state = self.shared.lock();
            state.closing = true;
            if let Some(last) = last {
                state.last.get_or_insert(last);
            }
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// After [`Outbox::close`]: resolves once the receiver took everything
    /// buffered (or is gone), or with [`Undelivered::Stalled`] when it
    /// stalls first (then cut it off, or what it holds stays until the
    /// connection closes).
    pub async fn drained(&self) -> Result<(), Undelivered> {
        let everything = self.sender.max_capacity();
        tokio::select! {
            biased;
            // All permits free: nothing is buffered.
            _ = self.sender.reserve_many(everything) => Ok(()),
            () = self.stalled() => Err(Undelivered::Stalled),
        }
    }
}

impl<T> StallWatch<T> {
    /// Resolves once items have waited in the channel without progress for
    /// the stall timeout. Pending forever without a stall timeout, and while
    /// the channel is empty.
    pub async fn stalled(&self) {
        self.shared.stalled().await;
    }

    /// Drops everything buffered at once (and with it the bytes it holds);
    /// the receiver, if it is ever polled again, yields `last` (or the
    /// closing item set before) and ends. Later sends fail with
    /// [`Undelivered::Gone`].
    pub fn cut_off(&self, last: T) {
        self.shared.cut_off(last);
    }
}

impl<T> OutboxReceiver<T> {
    /// A handle on this receiver's progress.
    pub fn watch(&self) -> StallWatch<T> {
        StallWatch {
            shared: Arc::clone(&self.shared),
        }
    }

    /// The next item; `None` once the channel ended.
    pub async fn recv(&mut self) -> Option<T> {
        std::future::poll_fn(|context| self.poll_recv(context)).await
    }

    /// Polls for the next item: what is buffered, then the closing item, then
    /// `None`.
    pub fn poll_recv(&mut self, context: &mut Context<'_>) -> Poll<Option<T>> {
        let mut guard = self.shared.lock();
        // One reborrow of the guard, so its fields borrow apart.
        let state = &mut *guard;
        if let Some(receiver) = state.receiver.as_mut() {
            match receiver.poll_recv(context) {
                Poll::Ready(Some(item)) => {
                    state.progress = Instant::now();
                    return Poll::Ready(Some(item));
                }
                Poll::Ready(None) => state.receiver = None,
                // Empty, and nothing more will come. `Pending` alone does not
                // say empty: tokio's channel also answers `Pending` when the
                // task used up its cooperative budget (it has woken the task
                // to poll again), and ending then would drop what is left.
                Poll::Pending if state.closing && receiver.is_empty() => {}
                Poll::Pending => {
                    if !state
                        .waker
                        .as_ref()
                        .is_some_and(|waker| waker.will_wake(context.waker()))
                    {
                        state.waker = Some(context.waker().clone());
                    }
                    return Poll::Pending;
                }
            }
        }
        Poll::Ready(state.last.take())
    }
}

impl<T> Drop for OutboxReceiver<T> {
    /// The client went away: the channel closes (the producer sees
    /// [`Undelivered::Gone`]) and what it buffered is dropped now.
    fn drop(&mut self) {
        let receiver = self.shared.lock().receiver.take();
        drop(receiver);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STALL: Duration = Duration::from_secs(60);

    #[tokio::test(start_paused = true)]
    async fn a_receiver_that_takes_nothing_is_cut_off_and_yields_the_closing_item() {
        let (outbox, mut receiver) = channel::<u32>(2, Some(STALL));
        outbox.send(1).await.expect("room");
        outbox.send(2).await.expect("room");
        let started = Instant::now();
        assert_eq!(outbox.send(3).await, Err(Undelivered::Stalled));
        assert_eq!(started.elapsed(), STALL, "a full stall timeout, no more");
        outbox.cut_off(99);
        assert_eq!(outbox.send(4).await, Err(Undelivered::Gone));
        assert_eq!(receiver.recv().await, Some(99), "buffered items are gone");
        assert_eq!(receiver.recv().await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn cutting_off_frees_what_is_buffered_without_the_receiver() {
        let held = Arc::new(());
        let (outbox, receiver) = channel::<Arc<()>>(2, Some(STALL));
        outbox.send(Arc::clone(&held)).await.expect("room");
        outbox.watch().stalled().await;
        assert_eq!(Arc::strong_count(&held), 2);
        outbox.cut_off(Arc::new(()));
        assert_eq!(Arc::strong_count(&held), 1, "dropped, never polled");
        drop(receiver);
    }

    #[tokio::test]
    async fn dropping_the_receiver_closes_the_channel() {
        let held = Arc::new(());
        let (outbox, receiver) = channel::<Arc<()>>(2, Some(STALL));
        outbox.send(Arc::clone(&held)).await.expect("room");
        drop(receiver);
        outbox.closed().await;
        assert_eq!(Arc::strong_count(&held), 1, "buffered items are dropped");
        assert_eq!(outbox.send(Arc::new(())).await, Err(Undelivered::Gone));
        assert_eq!(outbox.drained().await, Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_receiver_and_a_quiet_channel_are_not_stalled() {
        let (outbox, mut receiver) = channel::<u32>(1, Some(STALL));
        let reader = tokio::spawn(async move {
            let mut seen = Vec::new();
            while let Some(item) = receiver.recv().await {
                seen.push(item);
                tokio::time::sleep(STALL / 2).await;
            }
            seen
        });
        for n in 0..5 {
            outbox.send(n).await.expect("a slow reader is not stalled");
        }
        // Quiet for much longer than the stall timeout: nothing waits.
        let quiet = tokio::time::timeout(STALL * 3, outbox.stalled()).await;
        assert!(quiet.is_err(), "an empty channel never stalls");
        outbox.send(5).await.expect("after a quiet spell");
        outbox.close(Some(6));
        assert_eq!(outbox.drained().await, Ok(()));
        drop(outbox);
        assert_eq!(reader.await.expect("reader"), vec![0, 1, 2, 3, 4, 5, 6]);
    }

    #[tokio::test]
    async fn a_closed_channel_yields_everything_buffered_beyond_one_poll_budget() {
        // tokio's channel answers `Pending` once a task used up its
        // cooperative budget (128 takes); a closed channel must not read that
        // as "empty" and end early (an AppendStream lost answers so).
        let (outbox, mut receiver) = channel::<u32>(1000, Some(STALL));
        for n in 0..1000 {
            outbox.try_send(n).expect("room");
        }
        outbox.close(Some(1000));
        let mut seen = Vec::new();
        while let Some(item) = receiver.recv().await {
            seen.push(item);
        }
        assert_eq!(seen, (0..=1000).collect::<Vec<_>>());
    }

    #[tokio::test(start_paused = true)]
    async fn closing_keeps_what_is_buffered_and_a_stall_while_draining_is_seen() {
        let (outbox, mut receiver) = channel::<u32>(4, Some(STALL));
        outbox.send(1).await.expect("room");
        outbox.close(Some(7));
        assert_eq!(outbox.drained().await, Err(Undelivered::Stalled));
        // The closing item set first is kept.
        outbox.cut_off(99);
        assert_eq!(receiver.recv().await, Some(7));
        assert_eq!(receiver.recv().await, None);

        let (outbox, mut receiver) = channel::<u32>(4, None);
        outbox.send(1).await.expect("room");
        let never = tokio::time::timeout(STALL * 10, outbox.stalled()).await;
        assert!(never.is_err(), "no stall timeout: never stalled");
        outbox.close(None);
        assert_eq!(receiver.recv().await, Some(1));
        assert_eq!(
            receiver.recv().await,
            None,
            "ended although the sender lives"
        );
    }
}
