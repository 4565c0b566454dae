//! Admission: the one place that decides whether a run may start now, wait for a slot in a
//! bounded queue, or be refused (503 with `Retry-After`).

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
    /// Requests waiting for a slot now; bounded by `max_queued` so waiting cannot grow without end.
    queued: AtomicUsize,
    max_queued: usize,
    queue_timeout: Option<Duration>,
    metrics: Arc<Metrics>,
}

/// Counts a waiting request for as long as it waits (also when its client goes away).
struct Waiting<'a>(&'a Admission);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.queued.fetch_sub(1, Ordering::AcqRel);
        self.0.metrics.queued.dec();
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
            queued: AtomicUsize::new(0),
            max_queued,
            queue_timeout,
            metrics,
        }
    }

    /// A slot for one run, now or after a bounded wait.
    pub async fn admit(&self) -> Result<OwnedSemaphorePermit, Refused> {
        match self.slots.clone().try_acquire_owned() {
            Ok(permit) => return Ok(permit),
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
        let _waiting = Waiting(self);
        let acquire = self.slots.clone().acquire_owned();
        let permit = match self.queue_timeout {
            Some(limit) => tokio::time::timeout(limit, acquire)
                .await
                .map_err(|_| Refused::QueueTimeout)?,
            None => acquire.await,
        };
        permit.map_err(|_| Refused::ShuttingDown)
    }

    /// Refuses every waiting and future request (shutdown).
    pub fn close(&self) {
        self.slots.close();
    }
}
