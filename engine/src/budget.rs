//! Byte budgets for event data held on its way to a client.
//!
//! Counting messages does not bound memory when one event may be megabytes,
//! so every read chunk and every buffered subscription event holds a
//! [`BytePermit`] for its bytes until the facade hands it to the transport.
//! Permits come from the server-wide [`ByteBudget`] (and, for a subscription,
//! from its own smaller one as well, so that one stalled client cannot take
//! the whole server's budget). When a budget is spent, the task that wants
//! more waits: back-pressure, never an unbounded buffer, never a dropped
//! event.
//!
//! A request larger than a budget's whole capacity takes the whole capacity:
//! a single event larger than the budget still goes through, alone.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A budget of bytes, shared by the tasks that draw on it. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ByteBudget {
    /// One permit per byte.
    semaphore: Arc<Semaphore>,
    /// Permits it was created with.
    capacity: usize,
}

impl ByteBudget {
    /// A budget of `capacity` bytes (at least 1, at most tokio's permit limit).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            semaphore: Arc::new(Semaphore::new(capacity)),
            capacity,
        }
    }

    /// Its size.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Bytes held by permits now.
    pub fn in_use(&self) -> usize {
        self.capacity
            .saturating_sub(self.semaphore.available_permits())
    }

    /// What a request of `bytes` takes from this budget.
    fn share(&self, bytes: usize) -> u32 {
        u32::try_from(bytes.min(self.capacity)).unwrap_or(u32::MAX)
    }
}

/// Bytes held from one or more budgets, given back when dropped (or split
/// off and dropped piece by piece).
#[derive(Debug, Default)]
pub struct BytePermit {
    /// One permit per budget drawn on, in the order given to `reserve`.
    held: Vec<OwnedSemaphorePermit>,
    /// The bytes this permit stands for.
    bytes: usize,
}

impl BytePermit {
    /// Waits until every budget in `budgets` has `bytes` free (or its whole
    /// capacity, if smaller) and takes them, in order. Callers pass budgets
    /// in one fixed order (a call's own first, then the server's), so two
    /// tasks never wait on each other.
    pub async fn reserve(budgets: &[&ByteBudget], bytes: usize) -> BytePermit {
        let mut held = Vec::with_capacity(budgets.len());
        for budget in budgets {
            let permit = Arc::clone(&budget.semaphore)
                .acquire_many_owned(budget.share(bytes))
                .await
                // The semaphores are never closed.
                .unwrap_or_else(|_| unreachable!("byte budgets are never closed"));
            held.push(permit);
        }
        BytePermit { held, bytes }
    }

    /// The bytes it stands for.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Splits off a permit for `bytes` (at most what this one holds); this
    /// one keeps the rest.
    pub fn split(&mut self, bytes: usize) -> BytePermit {
        let bytes = bytes.min(self.bytes);
        let held = self
            .held
            .iter_mut()
            .filter_map(|permit| permit.split(bytes.min(permit.num_permits())))
            .collect();
        self.bytes -= bytes;
        BytePermit { held, bytes }
    }

    /// Gives back everything beyond `bytes`.
    pub fn shrink_to(&mut self, bytes: usize) {
        if bytes < self.bytes {
            let mut keep = self.split(bytes);
            std::mem::swap(self, &mut keep);
        }
    }

    /// Makes it stand for exactly `bytes`: gives back the excess, or waits
    /// for the bytes from `budgets` (the ones it was reserved from). To grow,
    /// it gives back what it holds first and then reserves the whole amount:
    /// a task never waits while holding bytes of a budget other tasks wait
    /// on, so tasks cannot deadlock on the budget.
    pub async fn resize(&mut self, budgets: &[&ByteBudget], bytes: usize) {
        if bytes <= self.bytes {
            self.shrink_to(bytes);
            return;
        }
        *self = BytePermit::default();
        *self = BytePermit::reserve(budgets, bytes).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn permits_hold_bytes_until_dropped() {
        let server = ByteBudget::new(100);
        let own = ByteBudget::new(40);
        let mut permit = BytePermit::reserve(&[&own, &server], 30).await;
        assert_eq!((own.in_use(), server.in_use()), (30, 30));
        let part = permit.split(10);
        assert_eq!((part.bytes(), permit.bytes()), (10, 20));
        drop(part);
        assert_eq!((own.in_use(), server.in_use()), (20, 20));
        permit.resize(&[&own, &server], 35).await;
        assert_eq!((own.in_use(), server.in_use()), (35, 35));
        permit.shrink_to(5);
        assert_eq!((own.in_use(), server.in_use()), (5, 5));
        drop(permit);
        assert_eq!((own.in_use(), server.in_use()), (0, 0));
    }

    #[tokio::test]
    async fn a_spent_budget_makes_the_next_reservation_wait() {
        let budget = ByteBudget::new(10);
        let first = BytePermit::reserve(&[&budget], 8).await;
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move { BytePermit::reserve(&[&budget], 5).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "only 2 of 10 bytes are free");
        drop(first);
        let second = waiting.await.expect("reservation");
        assert_eq!(budget.in_use(), 5);
        drop(second);
        // Larger than the whole budget: takes all of it, and still proceeds.
        let huge = BytePermit::reserve(&[&budget], 1000).await;
        assert_eq!((huge.bytes(), budget.in_use()), (1000, 10));
    }
}
