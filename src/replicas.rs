//! Several gateways sharing one PostgreSQL database act as one service. Each replica registers
//! itself (its `CLIGATE_INSTANCE`, the URL other replicas reach it at) and heartbeats every
//! third of `REPLICA_DEAD_SECONDS`; each run's record names the replica that executes it
//! (`instance`). In the same beat every replica ends, in one statement, the runs of replicas
//! whose heartbeat is older than `REPLICA_DEAD_SECONDS` (`interrupted`, `replica_lost`), and ends
//! its own runs that another replica declared lost meanwhile (it was cut off from the database).
//! Reads of shared state are answered by any replica; what lives on the owner (logs, the
//! process) is forwarded to it by [`crate::api::forward`]. With SQLite there is one gateway and
//! none of this runs.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Result;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Secret};
use crate::metrics::Metrics;
use crate::run::frame::EndReason;
use crate::runs::Runs;
use crate::store::replicas::Peer;
use crate::store::time::now_ms;
use crate::store::{Backend, Store};

/// Where a run's executing replica is, as seen from this one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// This replica.
    Here,
    /// A live replica, reached at this base URL.
    Peer { id: String, url: String },
    /// A replica that is dead or gone; the text says which and since when.
    Gone(String),
}

/// This replica's membership.
#[derive(Debug)]
pub struct Replicas {
    /// `CLIGATE_INSTANCE`.
    pub id: String,
    /// Where other replicas reach this one; set by [`Replicas::register`].
    url: OnceLock<String>,
    advertise: Option<url::Url>,
    pub dead: Duration,
    /// `REPLICA_SECRET`: signs forwarded requests.
    pub secret: Option<Secret>,
    /// Live replicas other than this one, as of the last heartbeat.
    peers: AtomicUsize,
    store: Store,
    metrics: Arc<Metrics>,
    /// Forwarded requests (see [`crate::api::forward`]).
    pub client: reqwest::Client,
}

impl Replicas {
    /// The membership of a gateway on PostgreSQL; `None` on SQLite.
    pub fn new(config: &Config, store: &Store, metrics: Arc<Metrics>) -> Result<Option<Arc<Replicas>>> {
        if store.backend() != Backend::Postgres {
            return Ok(None);
        }
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(3))
            // Replica to replica, never through a proxy meant for the CLIs.
            .no_proxy()
            .tcp_nodelay(true)
            .user_agent(concat!("cligate/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Some(Arc::new(Replicas {
            id: config.instance.clone(),
            url: OnceLock::new(),
            advertise: config.advertise_url.clone(),
            dead: config.replica_dead,
            secret: config.replica_secret.clone(),
            peers: AtomicUsize::new(0),
            store: store.clone(),
            metrics,
            client,
        })))
    }

    /// Registers this replica, reachable at `ADVERTISE_URL` or else at `bound` (an unspecified
    /// address read as loopback), before the first request is served; once (later calls do
    /// nothing). Refuses when another live gateway already answers under this
    /// `CLIGATE_INSTANCE` at another address: two replicas with one name would take each
    /// other's runs for their own.
    pub async fn register(&self, bound: SocketAddr) -> Result<()> {
        if self.url.get().is_some() {
            return Ok(());
        }
        // Checked again: two gateways of one name may have started at once.
        self.refuse_a_live_namesake(bound).await?;
        let url = self.url.get_or_init(|| self.own_url(bound, true)).clone();
        self.store.heartbeat(&self.id, &url).await?;
        self.count_peers().await?;
        tracing::info!(
            replica = self.id.as_str(),
            url = url.as_str(),
            peers = self.peers(),
            dead_s = self.dead.as_secs_f64(),
            "replica registered"
        );
        Ok(())
    }

    /// Fails when another live gateway answers under this `CLIGATE_INSTANCE` at an address other
    /// than this one's (a predecessor that died without deregistering does not answer). Made
    /// before anything of the instance's predecessor is taken over (see
    /// [`crate::server::prepare`]), and again when registering.
    pub async fn refuse_a_live_namesake(&self, bound: SocketAddr) -> Result<()> {
        let url = self.own_url(bound, false);
        if let Some(other) = self.store.peer(&self.id).await?
            && other.url != url
            && other.alive(self.dead)
            && self.answers_as_me(&other.url).await
        {
            anyhow::bail!(
                "CLIGATE_INSTANCE: another gateway named '{}' is running at {} (each replica needs its own CLIGATE_INSTANCE)",
                self.id,
                other.url
            );
        }
        Ok(())
    }

    /// Where other replicas reach this one: `ADVERTISE_URL`, else `bound` (an unspecified
    /// address read as loopback, with a warning when `warn`).
    fn own_url(&self, bound: SocketAddr, warn: bool) -> String {
        match &self.advertise {
            Some(u) => u.as_str().trim_end_matches('/').to_string(),
            None => {
                let mut addr = bound;
                if addr.ip().is_unspecified() {
                    addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
                    if warn {
                        tracing::warn!(
                            "ADVERTISE_URL is not set: other replicas reach this one at http://{addr}, on this host only"
                        );
                    }
                }
                format!("http://{addr}")
            }
        }
    }

    /// Whether a gateway answers at `url` under this replica's name (a predecessor that died
    /// without deregistering does not answer).
    async fn answers_as_me(&self, url: &str) -> bool {
        let probe = self
            .client
            .get(format!("{url}/readyz"))
            .timeout(Duration::from_secs(2))
            .send()
            .await;
        match probe {
            Ok(answer) => match answer
                .bytes()
                .await
                .map(|b| serde_json::from_slice::<serde_json::Value>(&b))
            {
                Ok(Ok(body)) => body["replica"] == self.id.as_str(),
                // Something answers there, but not as a gateway that says its name.
                _ => false,
            },
            Err(_) => false,
        }
    }

    /// Live replicas other than this one, as of the last heartbeat.
    pub fn peers(&self) -> usize {
        self.peers.load(Ordering::Relaxed)
    }

    async fn count_peers(&self) -> Result<usize> {
        let peers = self.store.peers().await?;
        let alive = peers.iter().filter(|p| p.id != self.id && p.alive(self.dead)).count();
        self.peers.store(alive, Ordering::Relaxed);
        self.metrics.replica_peers.set(alive as i64);
        Ok(alive)
    }

    /// Where the replica `instance` (a record's executing replica) is.
    pub async fn locate(&self, instance: &str) -> Result<Owner> {
        if instance == self.id {
            return Ok(Owner::Here);
        }
        let gone = |p: Option<&Peer>| match p {
            Some(p) => Owner::Gone(format!(
                "replica '{instance}' is gone (no heartbeat for {} s)",
                p.age_ms / 1000
            )),
            None => Owner::Gone(format!("replica '{instance}' is not registered")),
        };
        Ok(match self.store.peer(instance).await? {
            Some(p) if p.alive(self.dead) => Owner::Peer { id: p.id, url: p.url },
            other => gone(other.as_ref()),
        })
    }

    /// One beat: renew the heartbeat, end the runs of dead replicas (and tell their callbacks),
    /// forget the idempotency keys they claimed for runs they never recorded,
    /// end local runs another replica declared lost, count the live peers.
    async fn beat(&self, runs: &Runs) -> Result<()> {
        let url = self.url.get().cloned().unwrap_or_default();
        self.store.heartbeat(&self.id, &url).await?;
        let lost = self.store.interrupt_lost(&self.id, self.dead, now_ms()).await?;
        for record in &lost {
            tracing::warn!(
                run_id = record.run_id.as_str(),
                replica = record.instance.as_str(),
                "run interrupted: the replica that ran it stopped heartbeating"
            );
            runs.callbacks.run_ended(&record.run_id);
        }
        let forgotten = self.store.forget_lost_replicas_keys(&self.id, self.dead).await?;
        if forgotten > 0 {
            tracing::warn!(
                keys = forgotten,
                "idempotency keys forgotten: the replica that claimed them stopped heartbeating before their runs started"
            );
        }
        let mine = runs.registry.run_ids();
        for run_id in self.store.final_among(&mine).await? {
            if let Some(run) = runs.registry.by_run_id(&run_id) {
                tracing::warn!(
                    run_id = run_id.as_str(),
                    "ending a run that other replicas declared lost while this one was cut off"
                );
                run.request_stop(EndReason::Shutdown);
            }
        }
        self.count_peers().await?;
        Ok(())
    }

    /// Beats every third of `REPLICA_DEAD_SECONDS` until `stop`.
    pub async fn keep_alive(self: Arc<Self>, runs: Arc<Runs>, stop: CancellationToken) {
        let every = self.dead / 3;
        let mut failing = false;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.cancelled() => return,
            }
            match self.beat(&runs).await {
                Ok(()) if failing => {
                    failing = false;
                    tracing::info!("replica heartbeat works again");
                }
                Ok(()) => {}
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(error = %format!("{e:#}"), "replica heartbeat failed; other replicas will declare this one dead after REPLICA_DEAD_SECONDS");
                }
                Err(_) => {}
            }
        }
    }

    /// Graceful shutdown, once this replica's runs have ended: other replicas stop counting it.
    pub async fn deregister(&self) {
        match self.store.deregister(&self.id).await {
            Ok(()) => tracing::info!(replica = self.id.as_str(), "replica deregistered"),
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "cannot deregister the replica"),
        }
    }
}
