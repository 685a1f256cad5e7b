//! The bounded channel that links processor tasks.
//!
//! Each processor task owns one receiver per lane and is the only one reading it; its neighbours
//! (and tasks it spawned) send. That shape allows a cheaper channel than a general one: a short
//! mutex around a queue, and a receiver that takes everything queued in one go, so a task woken
//! once handles a whole batch with one lock instead of one per frame, where tokio's bounded mpsc
//! returns a permit to a semaphore under a lock on every receive (`slowcat bench pipeline`
//! compares the throughput of a chain of pass-through processors).
//!
//! Capacity: a sender waits while `capacity` items are queued. The receiver's current batch is
//! not counted, so at most twice the capacity is in flight per lane.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

struct State<T> {
    queue: VecDeque<T>,
    /// The receiver, parked on an empty queue.
    receiver_waker: Option<Waker>,
    /// Senders parked on a full queue.
    sender_wakers: Vec<Waker>,
    senders: usize,
    receiver_alive: bool,
}

struct Shared<T> {
    state: Mutex<State<T>>,
    capacity: usize,
    /// The queue's length, written under the lock: lets `try_recv` on an empty lane (the system
    /// lane, checked before every data frame) skip the lock.
    queued: AtomicUsize,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // Nothing panics while the lock is held; a poisoned lock still holds a consistent queue.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Creates a lane holding at most `capacity` queued items (at least 1).
pub(crate) fn bounded<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            queue: VecDeque::with_capacity(capacity.min(1024)),
            receiver_waker: None,
            sender_wakers: Vec::new(),
            senders: 1,
            receiver_alive: true,
        }),
        capacity: capacity.max(1),
        queued: AtomicUsize::new(0),
    });
    (Sender { shared: shared.clone() }, Receiver { shared, batch: VecDeque::new() })
}

/// Why [`Sender::try_send`] gave the item back.
#[cfg(test)]
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum TrySendError<T> {
    /// The lane is full; [`Sender::send`] would wait.
    Full(T),
    /// The receiver is gone.
    Closed(T),
}

/// The sending half; cloneable.
pub(crate) struct Sender<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Sender<T> {
    /// Queues `item` if there is room, without waiting.
    #[cfg(test)]
    pub(crate) fn try_send(&self, item: T) -> Result<(), TrySendError<T>> {
        let state = self.shared.lock();
        if !state.receiver_alive {
            return Err(TrySendError::Closed(item));
        }
        if state.queue.len() >= self.shared.capacity {
            return Err(TrySendError::Full(item));
        }
        self.push(state, item);
        Ok(())
    }

    /// Queues `item` under the held lock, then wakes the receiver if it is parked.
    fn push(&self, mut state: MutexGuard<'_, State<T>>, item: T) {
        state.queue.push_back(item);
        self.shared.queued.store(state.queue.len(), Ordering::Release);
        let waker = state.receiver_waker.take();
        drop(state);
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Queues `item`, waiting for room. Gives it back when the receiver is gone. Dropping the
    /// future before it completes drops the item. (The runtime's own future is
    /// [`crate::processor::Push`], on [`Sender::poll_send`].)
    #[cfg(test)]
    pub(crate) async fn send(&self, item: T) -> Result<(), T> {
        let mut item = Some(item);
        poll_fn(|cx| self.poll_send(cx, &mut item)).await
    }

    /// Queues the item in `slot` if there is room, else registers the task to be woken when there
    /// is. Ready with `Err(item)` when the receiver is gone, with `Ok` when queued (or when `slot`
    /// was already empty). For futures that hold their item themselves.
    pub(crate) fn poll_send(&self, cx: &mut Context<'_>, slot: &mut Option<T>) -> Poll<Result<(), T>> {
        let mut state = self.shared.lock();
        let Some(item) = slot.take() else { return Poll::Ready(Ok(())) };
        if !state.receiver_alive {
            return Poll::Ready(Err(item));
        }
        if state.queue.len() >= self.shared.capacity {
            *slot = Some(item);
            if !state.sender_wakers.iter().any(|w| w.will_wake(cx.waker())) {
                state.sender_wakers.push(cx.waker().clone());
            }
            return Poll::Pending;
        }
        self.push(state, item);
        Poll::Ready(Ok(()))
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.shared.lock().senders += 1;
        Self { shared: self.shared.clone() }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.senders -= 1;
        let waker = if state.senders == 0 { state.receiver_waker.take() } else { None };
        drop(state);
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// Why [`Receiver::try_recv`] returned nothing.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum TryRecvError {
    /// Nothing queued now.
    Empty,
    /// Nothing queued and every sender is gone.
    Closed,
}

/// The receiving half, owned by one task.
pub(crate) struct Receiver<T> {
    shared: Arc<Shared<T>>,
    /// Items taken off the shared queue in one go, handed out one by one.
    batch: VecDeque<T>,
}

impl<T> Receiver<T> {
    /// The next item if one is queued.
    pub(crate) fn try_recv(&mut self) -> Result<T, TryRecvError> {
        if self.batch.is_empty() && self.shared.queued.load(Ordering::Acquire) == 0 {
            // Racy by nature (a sender may be pushing right now), like any try_recv; whether
            // every sender is gone still needs the lock.
            if Arc::strong_count(&self.shared) > 1 {
                return Err(TryRecvError::Empty);
            }
        }
        self.next(None)
    }

    /// The next item, waiting for one; `None` once every sender is gone and the lane is empty.
    /// Cancel-safe: an item is only taken by the poll that returns it.
    pub(crate) async fn recv(&mut self) -> Option<T> {
        poll_fn(|cx| match self.next(Some(cx.waker())) {
            Ok(item) => Poll::Ready(Some(item)),
            Err(TryRecvError::Closed) => Poll::Ready(None),
            Err(TryRecvError::Empty) => Poll::Pending,
        })
        .await
    }

    fn next(&mut self, waker: Option<&Waker>) -> Result<T, TryRecvError> {
        if let Some(item) = self.batch.pop_front() {
            return Ok(item);
        }
        let mut state = self.shared.lock();
        if state.queue.is_empty() {
            if state.senders == 0 {
                return Err(TryRecvError::Closed);
            }
            if let Some(w) = waker
                && !state.receiver_waker.as_ref().is_some_and(|old| old.will_wake(w))
            {
                state.receiver_waker = Some(w.clone());
            }
            return Err(TryRecvError::Empty);
        }
        // Take the whole queue; the (empty) batch buffer becomes the new queue, so neither side
        // allocates in the steady state.
        std::mem::swap(&mut self.batch, &mut state.queue);
        self.shared.queued.store(0, Ordering::Release);
        let senders = std::mem::take(&mut state.sender_wakers);
        drop(state);
        for w in senders {
            w.wake();
        }
        Ok(self.batch.pop_front().expect("the queue was not empty"))
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.receiver_alive = false;
        let queued = std::mem::take(&mut state.queue);
        self.shared.queued.store(0, Ordering::Release);
        let senders = std::mem::take(&mut state.sender_wakers);
        drop(state);
        // Items are dropped outside the lock: their destructors may do anything.
        drop(queued);
        for w in senders {
            w.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn items_arrive_in_order_across_batches() {
        let (tx, mut rx) = bounded(4);
        let producer = tokio::spawn(async move {
            for i in 0..1000 {
                tx.send(i).await.unwrap();
            }
        });
        for i in 0..1000 {
            assert_eq!(rx.recv().await, Some(i));
        }
        producer.await.unwrap();
        assert_eq!(rx.recv().await, None, "closed once the only sender is gone");
    }

    #[tokio::test]
    async fn a_full_lane_makes_the_sender_wait_until_the_receiver_takes() {
        let (tx, mut rx) = bounded(2);
        tx.try_send(1).unwrap();
        tx.try_send(2).unwrap();
        assert_eq!(tx.try_send(3), Err(TrySendError::Full(3)));
        let tx2 = tx.clone();
        let waiting = tokio::spawn(async move { tx2.send(3).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "the sender must wait while the lane is full");
        assert_eq!(rx.recv().await, Some(1));
        waiting.await.unwrap().unwrap();
        assert_eq!(rx.try_recv(), Ok(2));
        assert_eq!(rx.try_recv(), Ok(3));
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
        drop(tx);
        assert_eq!(rx.try_recv(), Err(TryRecvError::Closed));
    }

    #[tokio::test]
    async fn a_dropped_receiver_releases_waiting_senders_and_refuses_new_items() {
        let (tx, rx) = bounded(1);
        tx.try_send(1).unwrap();
        let tx2 = tx.clone();
        let waiting = tokio::spawn(async move { tx2.send(2).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(rx);
        assert_eq!(waiting.await.unwrap(), Err(2));
        assert_eq!(tx.try_send(3), Err(TrySendError::Closed(3)));
    }

    #[tokio::test]
    async fn a_cancelled_recv_loses_nothing() {
        let (tx, mut rx) = bounded(8);
        // Poll recv on an empty lane, then drop it.
        assert!(tokio::time::timeout(Duration::from_millis(10), rx.recv()).await.is_err());
        tx.try_send(7).unwrap();
        assert_eq!(rx.recv().await, Some(7));
    }
}
