//! The running index: the runs executing in this process, by session id and by run id. It
//! refuses a second run of a running session, finds a live run (to stop it or follow its log),
//! and lets shutdown end them all. Records of every run, running or not, are in the store.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::Run;
use super::frame::EndReason;

#[derive(Debug, Default)]
pub struct Registry {
    /// Never held across an `.await`.
    runs: Mutex<HashMap<String, Arc<Run>>>,
}

/// Keeps a run registered; dropping it (when the run ends) removes the entry.
#[derive(Debug)]
pub struct Registration {
    registry: Arc<Registry>,
    run: Arc<Run>,
}

impl Registry {
    /// Registers `run` unless its session is already running.
    pub fn insert(self: &Arc<Self>, run: Arc<Run>) -> Option<Registration> {
        let mut runs = self.runs.lock().expect("registry lock");
        if runs.contains_key(&run.session_id) {
            return None;
        }
        runs.insert(run.session_id.clone(), run.clone());
        Some(Registration {
            registry: self.clone(),
            run,
        })
    }

    pub fn get(&self, session_id: &str) -> Option<Arc<Run>> {
        self.runs.lock().expect("registry lock").get(session_id).cloned()
    }

    /// The running run with this run id. A scan: the index holds at most the running runs.
    pub fn by_run_id(&self, run_id: &str) -> Option<Arc<Run>> {
        self.runs
            .lock()
            .expect("registry lock")
            .values()
            .find(|r| r.id == run_id)
            .cloned()
    }

    /// Asks the session's run to end; false when no such run is running.
    pub fn stop(&self, session_id: &str, reason: EndReason) -> bool {
        self.get(session_id).is_some_and(|run| run.stop(reason))
    }

    /// Asks every run to end.
    pub fn stop_all(&self, reason: EndReason) {
        let runs: Vec<_> = self.runs.lock().expect("registry lock").values().cloned().collect();
        for run in runs {
            run.request_stop(reason);
        }
    }

    /// The ids of the registered runs.
    pub fn run_ids(&self) -> Vec<String> {
        self.runs
            .lock()
            .expect("registry lock")
            .values()
            .map(|r| r.id.clone())
            .collect()
    }

    pub fn len(&self) -> usize {
        self.runs.lock().expect("registry lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut runs = self.registry.runs.lock().expect("registry lock");
        if runs
            .get(&self.run.session_id)
            .is_some_and(|r| Arc::ptr_eq(r, &self.run))
        {
            runs.remove(&self.run.session_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::{End, RunState};
    use crate::runlog::fresh_id;

    #[test]
    fn a_session_runs_once_at_a_time() {
        let reg = Arc::new(Registry::default());
        let a = Arc::new(Run::new(fresh_id(), "s".into(), "codex".into()));
        let entry = reg.insert(a.clone()).unwrap();
        assert!(
            reg.insert(Arc::new(Run::new(fresh_id(), "s".into(), "codex".into())))
                .is_none()
        );
        assert!(reg.stop("s", EndReason::Stopped));
        assert!(
            reg.stop("s", EndReason::Shutdown),
            "still running: a second stop is accepted"
        );
        drop(entry);
        assert!(reg.is_empty());
        assert!(!reg.stop("s", EndReason::Stopped));
        assert!(
            reg.insert(Arc::new(Run::new(fresh_id(), "s".into(), "codex".into())))
                .is_some()
        );
    }

    #[test]
    fn a_finished_run_cannot_be_stopped() {
        let run = Run::new(fresh_id(), "s".into(), "c".into());
        run.set_state(RunState::Finished(End {
            code: 0,
            reason: EndReason::Exited,
        }));
        assert!(!run.request_stop(EndReason::Stopped));
        assert!(!run.stop(EndReason::Stopped));
    }

    /// A run that ends on another thread as soon as it is asked to (as a queued run does) was
    /// still going when the stop came: the stop is accepted, never answered "not running".
    #[test]
    fn a_stop_is_accepted_when_the_run_ends_at_once() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        for i in 0..3000 {
            let reg = Arc::new(Registry::default());
            let run = Arc::new(Run::new(fresh_id(), format!("s{i}"), "c".into()));
            let _entry = reg.insert(run.clone()).unwrap();
            let ends = run.clone();
            let ended = runtime.spawn(async move {
                let reason = ends.stop_requested().await;
                ends.set_state(RunState::Finished(End { code: 143, reason }));
            });
            assert!(reg.stop(&format!("s{i}"), EndReason::Stopped), "round {i}");
            runtime.block_on(ended).unwrap();
        }
    }
}
