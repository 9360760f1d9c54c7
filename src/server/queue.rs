//! The model's work queue: at most `slots` model runs at once, at most `queue`
//! more waiting in arrival order; beyond that a request is refused at once with
//! 503 `busy` and a `Retry-After`.
//!
//! Everything that costs memory in proportion to the text — the trace and the
//! answer built from it — happens inside [`WorkQueue::run`], so the number of
//! slots bounds the server's memory, not only its CPU.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::http::StatusCode;
use tokio::sync::Semaphore;

use super::error::AppError;

/// Seconds a refused client is told to wait before retrying.
const RETRY_AFTER_SECS: u32 = 2;

/// A fair (FIFO) queue in front of a fixed number of model slots.
#[derive(Debug)]
pub struct WorkQueue {
    slots: usize,
    queue: usize,
    permits: Arc<Semaphore>,
    waiting: AtomicUsize,
}

/// Decrements the waiting count however the wait ends (served, cancelled).
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl WorkQueue {
    pub fn new(slots: usize, queue: usize) -> Self {
        let slots = slots.max(1);
        Self { slots, queue, permits: Arc::new(Semaphore::new(slots)), waiting: AtomicUsize::new(0) }
    }

    /// Requests waiting for a slot now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// Slots free now.
    pub fn free_slots(&self) -> usize {
        self.permits.available_permits()
    }

    /// Whether a run that holds a slot is the only one: every other slot free and
    /// no one waiting, so the server's other cores have none of its work.
    pub fn alone(&self) -> bool {
        self.free_slots() + 1 >= self.slots && self.waiting() == 0
    }

    fn busy(&self) -> AppError {
        AppError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            format!(
                "all {} model slots are busy and {} requests are already waiting; retry in {RETRY_AFTER_SECS} s \
                 (server flags --max-concurrent, --max-queue)",
                self.slots, self.queue
            ),
        )
        .with_retry_after(RETRY_AFTER_SECS)
    }

    /// Waits for a free slot (in line if the queue has room, else 503 at once).
    /// A client that disconnects while waiting leaves the line without costing a slot.
    pub async fn slot(&self) -> Result<Slot, AppError> {
        if let Ok(p) = self.permits.clone().try_acquire_owned() {
            return Ok(Slot(p));
        }
        let ahead = self.waiting.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&self.waiting);
        if ahead >= self.queue {
            return Err(self.busy());
        }
        let permit =
            self.permits.clone().acquire_owned().await.map_err(|_| AppError::internal("the work queue was closed"))?;
        Ok(Slot(permit))
    }

    /// Runs `work` on the blocking pool once a slot is free.
    pub async fn run<R: Send + 'static>(&self, work: impl FnOnce() -> R + Send + 'static) -> Result<R, AppError> {
        self.slot().await?.run(work).await
    }
}

/// A taken model slot; freed when the work given to [`Slot::run`] ends.
pub struct Slot(tokio::sync::OwnedSemaphorePermit);

impl Slot {
    /// Runs `work` on the blocking pool, holding the slot until it returns.
    pub async fn run<R: Send + 'static>(self, work: impl FnOnce() -> R + Send + 'static) -> Result<R, AppError> {
        let permit = self.0;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            work()
        })
        .await
        .map_err(|e| AppError::internal(format!("model task failed: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Whether a run on `q` finds itself alone.
    async fn run_alone(q: &Arc<WorkQueue>) -> bool {
        let me = q.clone();
        q.run(move || me.alone()).await.unwrap()
    }

    #[tokio::test]
    async fn a_run_is_alone_only_while_no_other_holds_or_awaits_a_slot() {
        let q = Arc::new(WorkQueue::new(2, 4));
        assert!(run_alone(&q).await, "one run on an idle server");
        // A second run holding the other slot: the first is no longer alone.
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let q1 = q.clone();
        let holder = tokio::spawn(async move { q1.run(move || rx.recv().unwrap()).await });
        while q.free_slots() > 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(!run_alone(&q).await, "another run holds a slot");
        tx.send(()).unwrap();
        holder.await.unwrap().unwrap();
        assert!(run_alone(&q).await, "alone again");
    }

    #[tokio::test]
    async fn waits_in_line_then_refuses_beyond_the_queue() {
        let q = Arc::new(WorkQueue::new(1, 1));
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        // Occupy the only slot until we say so.
        let q1 = q.clone();
        let first = tokio::spawn(async move { q1.run(move || rx.recv().unwrap()).await });
        while q.free_slots() > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let q2 = q.clone();
        let second = tokio::spawn(async move { q2.run(|| 2).await });
        while q.waiting() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let third = q.run(|| 3).await.unwrap_err();
        assert_eq!(third.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(third.retry_after, Some(RETRY_AFTER_SECS));
        tx.send(()).unwrap();
        first.await.unwrap().unwrap();
        assert_eq!(second.await.unwrap().unwrap(), 2, "the waiting request is served");
        assert_eq!(q.waiting(), 0);
        assert_eq!(q.free_slots(), 1);
    }
}
