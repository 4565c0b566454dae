//! Admission: the one place that decides whether a run may start now, wait for a slot in a
//! bounded queue, or be refused (503 with `Retry-After`). A place is reserved at once (so a
//! detached run can be answered 202 or 503 before it waits) and the slot awaited afterwards.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::metrics::Metrics;

/// Why a run was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Every slot is busy and the queue is full.
    QueueFull,
    /// The request waited `QUEUE_TIMEOUT_SECONDS` without getting a slot.
    QueueTimeout,
    /// The gateway is shutting down.
    ShuttingDown,
}

#[derive(Debug)]
pub struct Admission {
    /// One permit per concurrently executing run; a permit lives as long as its run.
    slots: Arc<Semaphore>,
    /// Runs waiting for a slot now; bounded by `max_queued` so waiting cannot grow without end.
    queued: Arc<AtomicUsize>,
    max_queued: usize,
    queue_timeout: Option<Duration>,
    metrics: Arc<Metrics>,
}

/// A run's place: a slot already, or a place in the queue.
#[derive(Debug)]
pub enum Reservation {
    Slot(OwnedSemaphorePermit),
    Queued { slots: Arc<Semaphore>, _waiting: Waiting },
}

/// Counts a waiting run for as long as it waits (also when its client goes away).
#[derive(Debug)]
pub struct Waiting {
    queued: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.queued.fetch_sub(1, Ordering::AcqRel);
        self.metrics.queued.dec();
    }
}

impl Reservation {
    /// Whether the run may start at once.
    pub fn has_slot(&self) -> bool {
        matches!(self, Reservation::Slot(_))
    }

    /// The slot: at once, or after waiting at most `limit` (`None`: as long as it takes).
    pub async fn slot(self, limit: Option<Duration>) -> Result<OwnedSemaphorePermit, Refused> {
        match self {
            Reservation::Slot(permit) => Ok(permit),
            // `_waiting` lives until the slot is had (or the wait given up).
            Reservation::Queued { slots, _waiting } => {
                let acquire = slots.acquire_owned();
                let permit = match limit {
                    Some(limit) => tokio::time::timeout(limit, acquire)
                        .await
                        .map_err(|_| Refused::QueueTimeout)?,
                    None => acquire.await,
                };
                permit.map_err(|_| Refused::ShuttingDown)
            }
        }
    }
}

impl Admission {
    pub fn new(
        max_concurrent: usize,
        max_queued: usize,
        queue_timeout: Option<Duration>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Admission {
            slots: Arc::new(Semaphore::new(max_concurrent)),
            queued: Arc::new(AtomicUsize::new(0)),
            max_queued,
            queue_timeout,
            metrics,
        }
    }

    /// A slot now, or a place in the queue, or the reason there is neither.
    pub fn reserve(&self) -> Result<Reservation, Refused> {
        match self.slots.clone().try_acquire_owned() {
            Ok(permit) => return Ok(Reservation::Slot(permit)),
            Err(tokio::sync::TryAcquireError::Closed) => return Err(Refused::ShuttingDown),
            Err(tokio::sync::TryAcquireError::NoPermits) => {}
        }
        if self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                (q < self.max_queued).then_some(q + 1)
            })
            .is_err()
        {
            return Err(Refused::QueueFull);
        }
        self.metrics.queued.inc();
        Ok(Reservation::Queued {
            slots: self.slots.clone(),
            _waiting: Waiting {
                queued: self.queued.clone(),
                metrics: self.metrics.clone(),
            },
        })
    }

    /// A slot for one run, now or after a wait bounded by `QUEUE_TIMEOUT_SECONDS`.
    pub async fn admit(&self) -> Result<OwnedSemaphorePermit, Refused> {
        self.reserve()?.slot(self.queue_timeout).await
    }

    /// Refuses every waiting and future request (shutdown).
    pub fn close(&self) {
        self.slots.close();
    }
}
