//! Reading runs: records (only the caller's), lists, and the [`Source`] a reader of a run's
//! output follows — the live log, the copy kept with a small run's record, or the file.

use std::sync::Arc;
use std::time::Duration;

use crate::auth::Caller;
use crate::runlog::{LogFile, Source};
use crate::store::{ListError, ListQuery, RunRecord};

use super::{Refusal, Runs};

impl Runs {
    /// The run an `Idempotency-Key` named, once it exists: the request that claimed the key may
    /// still be waiting for its slot. Gives up after the queue's own bound.
    /// Its record only: the run may execute on another replica (its log is read there).
    pub async fn await_run(&self, caller: &Caller, run_id: &str) -> Result<RunRecord, Refusal> {
        let limit = self.config.queue_timeout.unwrap_or(Duration::from_secs(30)) + Duration::from_secs(5);
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match self.record(caller, run_id).await {
                Ok(found) => return Ok(found),
                Err(Refusal::NotFound(_)) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Err(Refusal::NotFound(_)) => {
                    return Err(Refusal::Conflict(
                        "the request holding this Idempotency-Key has not started its run; retry".into(),
                    ));
                }
                Err(other) => return Err(other),
            }
        }
    }

    /// The record of a run the caller may see.
    pub async fn record(&self, caller: &Caller, run_id: &str) -> Result<RunRecord, Refusal> {
        let found = self.store.get(run_id).await;
        visible(caller, found, || format!("run '{run_id}' not found"))
    }

    /// The newest record of a session the caller may see.
    pub async fn session_record(&self, caller: &Caller, session_id: &str) -> Result<RunRecord, Refusal> {
        let found = self.store.latest_by_session(session_id).await;
        visible(caller, found, || format!("session '{session_id}' is not running"))
    }

    /// Records newest first, the caller's own unless it is an admin.
    pub async fn list(
        &self,
        caller: &Caller,
        mut query: ListQuery,
    ) -> Result<(Vec<RunRecord>, Option<String>), Refusal> {
        query.owner = if caller.admin { None } else { caller.name.clone() };
        self.store.list(&query).await.map_err(|e| match e {
            ListError::Invalid(why) => Refusal::Invalid(why),
            ListError::Store(e) => Refusal::failed("the run store does not answer", e),
        })
    }

    /// A run's log for reading: the live log while it runs here, else the copy kept with its
    /// record, else its file.
    pub async fn source(&self, caller: &Caller, run_id: &str) -> Result<(RunRecord, Source), Refusal> {
        let record = self.record(caller, run_id).await?;
        let source = self.source_of(&record).await?;
        Ok((record, source))
    }

    /// The log of a run found already (its record), on this replica: the live log while it
    /// runs here, else the copy kept with its record, else its file. The record may be older
    /// than the run's end, so the kept copy is always looked for: a run leaves the registry only
    /// after its end (and kept copy) committed, and a kept log's file is reused.
    pub async fn source_of(&self, record: &RunRecord) -> Result<Source, Refusal> {
        let run_id = record.run_id.as_str();
        if let Some(log) = self.registry.by_run_id(run_id).and_then(|r| r.log.clone()) {
            return Ok(Source::Live(log));
        }
        match self.store.kept_log(run_id).await {
            Ok(Some(kept)) => return Ok(Source::Finished(Arc::new(LogFile::kept(kept.into())))),
            Ok(None) => {}
            Err(e) => return Err(Refusal::failed("the run store does not answer", e)),
        }
        match self.logs.open_finished(run_id) {
            Ok(file) => Ok(Source::Finished(Arc::new(file))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(Refusal::NotFound(format!("the log of run '{run_id}' is gone")))
            }
            Err(e) => Err(Refusal::failed("cannot read the log", e)),
        }
    }
}

/// A record the store found, when `caller` may see it; a record of another token's is answered
/// exactly like one that does not exist.
pub(super) fn visible(
    caller: &Caller,
    found: anyhow::Result<Option<RunRecord>>,
    not_found: impl Fn() -> String,
) -> Result<RunRecord, Refusal> {
    let record = found
        .map_err(|e| Refusal::failed("the run store does not answer", e))?
        .filter(|r| caller.may_see(r.owner.as_deref()));
    record.ok_or_else(|| Refusal::NotFound(not_found()))
}
