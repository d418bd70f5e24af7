//! A one-shot reply slot that works for both sync and async callers.
//!
//! The committer thread answers through a [`Responder`]; the caller holds the
//! matching [`Ticket`] and either blocks on [`Ticket::wait`] or `.await`s it. This
//! keeps the crate free of any async runtime. A responder dropped without an
//! answer (the committer stopped) resolves the ticket to `Error::ShuttingDown`.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};

use crate::error::{Error, Result};

struct Slot<T> {
    state: Mutex<SlotState<T>>,
    answered: Condvar,
}

struct SlotState<T> {
    /// The answer, once given; taken by the ticket.
    answer: Option<Result<T>>,
    /// The responder was dropped; no answer will come unless one is stored.
    closed: bool,
    /// The task to wake when the answer arrives (async callers only).
    waker: Option<Waker>,
    /// A thread blocks in [`Ticket::wait`]: only then is the condvar
    /// notified (a notify is a futex syscall even with no waiter, one per
    /// append on the hot path of async callers).
    thread_waiting: bool,
}

/// The caller's half: resolves to the committer's answer.
#[must_use = "a ticket does nothing unless waited on or awaited"]
pub struct Ticket<T> {
    slot: Arc<Slot<T>>,
}

/// The committer's half: answers exactly once.
pub(crate) struct Responder<T> {
    slot: Arc<Slot<T>>,
}

/// A connected ticket and responder.
pub(crate) fn channel<T>() -> (Ticket<T>, Responder<T>) {
    let slot = Arc::new(Slot {
        state: Mutex::new(SlotState {
            answer: None,
            closed: false,
            waker: None,
            thread_waiting: false,
        }),
        answered: Condvar::new(),
    });
    (
        Ticket {
            slot: Arc::clone(&slot),
        },
        Responder { slot },
    )
}

impl<T> Ticket<T> {
    /// A ticket that is already answered (for errors found before queueing).
    pub(crate) fn ready(answer: Result<T>) -> Self {
        let (ticket, responder) = channel();
        responder.send(answer);
        ticket
    }

    /// Blocks the current thread until the answer arrives.
    pub fn wait(self) -> Result<T> {
        let mut state = self
            .slot
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(answer) = state.answer.take() {
                return answer;
            }
            if state.closed {
                return Err(Error::ShuttingDown);
            }
            state.thread_waiting = true;
            state = self
                .slot
                .answered
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

impl<T> Future for Ticket<T> {
    type Output = Result<T>;

    fn poll(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self
            .slot
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(answer) = state.answer.take() {
            return Poll::Ready(answer);
        }
        if state.closed {
            return Poll::Ready(Err(Error::ShuttingDown));
        }
        state.waker = Some(context.waker().clone());
        Poll::Pending
    }
}

impl<T> Responder<T> {
    /// Delivers the answer and wakes the caller.
    pub(crate) fn send(self, answer: Result<T>) {
        let mut state = self
            .slot
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        state.answer = Some(answer);
        self.wake(&mut state);
    }

    fn wake(&self, state: &mut SlotState<T>) {
        state.closed = true;
        if state.thread_waiting {
            self.slot.answered.notify_all();
        }
        if let Some(waker) = state.waker.take() {
            waker.wake();
        }
    }
}

impl<T> Drop for Responder<T> {
    fn drop(&mut self) {
        let mut state = self
            .slot
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !state.closed {
            self.wake(&mut state);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_gets_the_answer_from_another_thread() {
        let (ticket, responder) = channel::<u32>();
        let sender = std::thread::spawn(move || responder.send(Ok(7)));
        assert_eq!(ticket.wait(), Ok(7));
        sender.join().unwrap();
    }

    #[test]
    fn dropped_responder_means_shutting_down() {
        let (ticket, responder) = channel::<u32>();
        drop(responder);
        assert_eq!(ticket.wait(), Err(Error::ShuttingDown));
    }

    #[test]
    fn ready_ticket() {
        assert_eq!(Ticket::ready(Ok(1u8)).wait(), Ok(1));
    }
}
