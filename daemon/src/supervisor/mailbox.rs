//! Bounded mailboxes with a per-actor overflow policy.
//!
//! A mailbox outlives the incarnations of its actor: messages sent while the actor restarts wait in it
//! and are handled by the next incarnation. Senders hold a [`Mailbox`]; the running incarnation reads
//! through an [`Inbox`] over the same queue. When the queue is full the policy decides:
//!
//! | policy        | the sender…                                   | counted as a drop |
//! |---------------|-----------------------------------------------|-------------------|
//! | `wait`        | waits for room up to its deadline, then `Full` | no                |
//! | `drop_oldest` | gets in; the oldest queued message is dropped | yes               |
//! | `drop_newest` | is told its message was dropped               | yes               |
//! | `reject`      | is refused at once with `Full`                | no                |

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;

use crate::supervisor::config::OverflowPolicy;

/// How long a refused sender is told to wait before trying again.
pub const RETRY_AFTER: Duration = Duration::from_millis(100);

/// What happened to a sent message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    Queued,
    /// `drop_newest` with a full mailbox: the message was discarded.
    Dropped,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MailboxError {
    #[error("mailbox full; retry after {retry_after:?}")]
    Full { retry_after: Duration },
    #[error("mailbox closed")]
    Closed,
}

struct Inner<M> {
    queue: Mutex<VecDeque<M>>,
    capacity: usize,
    policy: OverflowPolicy,
    wait: Duration,
    /// Wakes the receiver when a message arrives (or the mailbox closes).
    items: Notify,
    /// Wakes waiting senders when room appears (or the mailbox closes).
    space: Notify,
    drops: AtomicU64,
    closed: AtomicBool,
}

impl<M> Inner<M> {
    fn lock(&self) -> MutexGuard<'_, VecDeque<M>> {
        // A panic while holding this lock cannot leave the queue half-modified (VecDeque operations
        // are atomic from our side), so a poisoned lock is still a valid queue.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The sending side. Cheap to clone.
pub struct Mailbox<M> {
    inner: Arc<Inner<M>>,
}

impl<M> Clone for Mailbox<M> {
    fn clone(&self) -> Self {
        Mailbox {
            inner: self.inner.clone(),
        }
    }
}

/// The receiving side, handed to the running incarnation.
pub struct Inbox<M> {
    inner: Arc<Inner<M>>,
}

/// Read-only view of a mailbox for counters and the API, independent of the message type.
pub trait MailboxStats: Send + Sync {
    fn depth(&self) -> usize;
    fn capacity(&self) -> usize;
    fn drops(&self) -> u64;
    /// Drops every queued message (their senders see their reply channel close).
    fn clear(&self) -> usize;
    fn close(&self);
}

impl<M: Send> MailboxStats for Inner<M> {
    fn depth(&self) -> usize {
        self.lock().len()
    }
    fn capacity(&self) -> usize {
        self.capacity
    }
    fn drops(&self) -> u64 {
        self.drops.load(Ordering::Relaxed)
    }
    fn clear(&self) -> usize {
        let drained: Vec<M> = self.lock().drain(..).collect();
        self.space.notify_waiters();
        drained.len()
    }
    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.items.notify_waiters();
        self.items.notify_one();
        self.space.notify_waiters();
    }
}

impl<M: Send + 'static> Mailbox<M> {
    pub fn new(capacity: usize, policy: OverflowPolicy, wait: Duration) -> Mailbox<M> {
        Mailbox {
            inner: Arc::new(Inner {
                queue: Mutex::new(VecDeque::with_capacity(capacity.min(1024))),
                capacity: capacity.max(1),
                policy,
                wait,
                items: Notify::new(),
                space: Notify::new(),
                drops: AtomicU64::new(0),
                closed: AtomicBool::new(false),
            }),
        }
    }

    pub fn stats(&self) -> Arc<dyn MailboxStats> {
        self.inner.clone()
    }

    pub(crate) fn inbox(&self) -> Inbox<M> {
        Inbox {
            inner: self.inner.clone(),
        }
    }

    /// Sends one message under the overflow policy.
    pub async fn send(&self, message: M) -> Result<Delivery, MailboxError> {
        let inner = &self.inner;
        let deadline = tokio::time::Instant::now() + inner.wait;
        loop {
            let space = inner.space.notified();
            tokio::pin!(space);
            // Registered before the check, so a slot freed between the check and the wait is not missed.
            space.as_mut().enable();
            {
                let mut queue = inner.lock();
                if inner.closed.load(Ordering::Acquire) {
                    return Err(MailboxError::Closed);
                }
                if queue.len() < inner.capacity {
                    queue.push_back(message);
                    drop(queue);
                    inner.items.notify_one();
                    return Ok(Delivery::Queued);
                }
                match inner.policy {
                    OverflowPolicy::DropOldest => {
                        let oldest = queue.pop_front();
                        queue.push_back(message);
                        drop(queue);
                        // Dropped outside the lock: dropping may run the message's own destructors.
                        drop(oldest);
                        inner.drops.fetch_add(1, Ordering::Relaxed);
                        inner.items.notify_one();
                        return Ok(Delivery::Queued);
                    }
                    OverflowPolicy::DropNewest => {
                        drop(queue);
                        inner.drops.fetch_add(1, Ordering::Relaxed);
                        return Ok(Delivery::Dropped);
                    }
                    OverflowPolicy::Reject => {
                        return Err(MailboxError::Full {
                            retry_after: RETRY_AFTER,
                        });
                    }
                    OverflowPolicy::Wait => {}
                }
            }
            if tokio::time::timeout_at(deadline, space).await.is_err() {
                return Err(MailboxError::Full {
                    retry_after: inner.wait.max(RETRY_AFTER),
                });
            }
            // Woken: try again (another sender may have taken the room first).
        }
    }
}

impl<M: Send> Inbox<M> {
    /// The next message; `None` once the mailbox is closed and empty.
    pub async fn recv(&mut self) -> Option<M> {
        loop {
            let items = self.inner.items.notified();
            tokio::pin!(items);
            items.as_mut().enable();
            {
                let mut queue = self.inner.lock();
                if let Some(message) = queue.pop_front() {
                    drop(queue);
                    self.inner.space.notify_one();
                    return Some(message);
                }
                if self.inner.closed.load(Ordering::Acquire) {
                    return None;
                }
            }
            items.await;
        }
    }

    /// A message if one is queued, without waiting.
    pub fn try_recv(&mut self) -> Option<M> {
        let message = self.inner.lock().pop_front();
        if message.is_some() {
            self.inner.space.notify_one();
        }
        message
    }

    pub fn len(&self) -> usize {
        self.inner.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mailbox(policy: OverflowPolicy) -> Mailbox<u32> {
        Mailbox::new(2, policy, Duration::from_millis(500))
    }

    #[tokio::test(start_paused = true)]
    async fn wait_policy_waits_for_room_then_gives_up_at_its_deadline() {
        let mailbox = mailbox(OverflowPolicy::Wait);
        let mut inbox = mailbox.inbox();
        assert_eq!(mailbox.send(1).await, Ok(Delivery::Queued));
        assert_eq!(mailbox.send(2).await, Ok(Delivery::Queued));

        // Room appears within the deadline: the waiting sender gets in.
        let sender = mailbox.clone();
        let waiting = tokio::spawn(async move { sender.send(3).await });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            !waiting.is_finished(),
            "the sender waits while the queue is full"
        );
        assert_eq!(inbox.recv().await, Some(1));
        assert_eq!(waiting.await.unwrap(), Ok(Delivery::Queued));

        // No room within the deadline: refused with a retry hint, nothing dropped.
        let started = tokio::time::Instant::now();
        let refused = mailbox.send(4).await;
        assert_eq!(started.elapsed(), Duration::from_millis(500));
        assert_eq!(
            refused,
            Err(MailboxError::Full {
                retry_after: Duration::from_millis(500)
            })
        );
        assert_eq!(mailbox.stats().drops(), 0);
        assert_eq!(inbox.recv().await, Some(2));
        assert_eq!(inbox.recv().await, Some(3));
    }

    #[tokio::test(start_paused = true)]
    async fn drop_oldest_makes_room_and_counts() {
        let mailbox = mailbox(OverflowPolicy::DropOldest);
        let mut inbox = mailbox.inbox();
        for i in 1..=4 {
            assert_eq!(mailbox.send(i).await, Ok(Delivery::Queued));
        }
        assert_eq!(mailbox.stats().drops(), 2);
        assert_eq!(mailbox.stats().depth(), 2);
        assert_eq!(inbox.recv().await, Some(3));
        assert_eq!(inbox.recv().await, Some(4));
    }

    #[tokio::test(start_paused = true)]
    async fn drop_newest_discards_the_new_message_and_counts() {
        let mailbox = mailbox(OverflowPolicy::DropNewest);
        let mut inbox = mailbox.inbox();
        assert_eq!(mailbox.send(1).await, Ok(Delivery::Queued));
        assert_eq!(mailbox.send(2).await, Ok(Delivery::Queued));
        assert_eq!(mailbox.send(3).await, Ok(Delivery::Dropped));
        assert_eq!(mailbox.stats().drops(), 1);
        assert_eq!(inbox.recv().await, Some(1));
        assert_eq!(inbox.recv().await, Some(2));
        assert_eq!(inbox.try_recv(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn reject_refuses_at_once_with_a_retry_hint() {
        let mailbox = mailbox(OverflowPolicy::Reject);
        mailbox.send(1).await.unwrap();
        mailbox.send(2).await.unwrap();
        let started = tokio::time::Instant::now();
        assert_eq!(
            mailbox.send(3).await,
            Err(MailboxError::Full {
                retry_after: RETRY_AFTER
            })
        );
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert_eq!(mailbox.stats().drops(), 0);
        assert_eq!(mailbox.stats().depth(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn closing_wakes_receivers_and_refuses_senders() {
        let mailbox = mailbox(OverflowPolicy::Wait);
        let mut inbox = mailbox.inbox();
        let receiver = tokio::spawn(async move { inbox.recv().await });
        tokio::task::yield_now().await;
        mailbox.stats().close();
        assert_eq!(receiver.await.unwrap(), None);
        assert_eq!(mailbox.send(1).await, Err(MailboxError::Closed));
    }
}
