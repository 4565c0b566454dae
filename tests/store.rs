//! The run store against both databases: every test function below runs once on SQLite (a temp
//! DATA_DIR) and once on PostgreSQL (a fresh database in the test cluster of `common::pg`).
//! The throughput measurements are `#[ignore]`d: `cargo test --release --test store -- --ignored
//! --nocapture throughput`.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cligate::store::idempotency::Claim;
use cligate::store::{Finish, ListError, ListQuery, RecordState, RunMode, RunRecord, Store};
use serde_json::json;

/// A store and what it was opened on (kept alive for the test).
struct Ctx {
    store: Store,
    url: Option<String>,
    dir: tempfile::TempDir,
}

impl Ctx {
    async fn reopen(&self) -> Store {
        Store::open(self.url.as_deref(), &self.dir.path().join("data"))
            .await
            .expect("reopen")
    }
}

async fn sqlite() -> Ctx {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(None, &dir.path().join("data")).await.expect("open SQLite");
    Ctx { store, url: None, dir }
}

async fn postgres() -> Ctx {
    let url = common::pg::fresh_database().await;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(Some(&url), &dir.path().join("data"))
        .await
        .expect("open PostgreSQL");
    Ctx {
        store,
        url: Some(url),
        dir,
    }
}

/// Runs each listed `async fn(Ctx)` on both databases.
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::sqlite().await).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::postgres().await).await
                }
            )*
        }
    };
}

on_both!(
    round_trip_keeps_every_field,
    final_records_never_change,
    list_filters_and_pages_newest_first,
    bad_list_arguments_are_refused,
    interrupt_touches_only_that_instance,
    retention_never_removes_unfinished_runs,
    migrations_are_idempotent,
    concurrent_writers_lose_nothing,
    ping_answers,
    an_idempotency_key_is_claimed_once,
);

const T0: i64 = 1_764_549_363_123;

fn record(run_id: &str, session: &str, created_at: i64) -> RunRecord {
    RunRecord::queued(run_id, session, "codex", "gw-a", created_at)
}

fn finished(at: i64, log_bytes: u64) -> Finish {
    Finish {
        state: RecordState::Finished,
        exit_code: Some(0),
        reason: Some("exited".into()),
        finished_at: at,
        stdout_bytes: 1,
        stderr_bytes: 2,
        log_bytes,
        git: None,
    }
}

async fn round_trip_keeps_every_field(ctx: Ctx) {
    let s = &ctx.store;
    let full = RunRecord {
        run_id: "run-full".into(),
        session_id: "sess-1".into(),
        cli: "codex".into(),
        args: vec!["exec".into(), "--json".into(), "héllo \"quoted\" ✓".into()],
        env_keys: vec!["OPENAI_API_KEY".into(), "MY_FLAG".into()],
        model: Some("gpt-test".into()),
        mode: RunMode::Docker,
        owner: Some("alice".into()),
        instance: "gw-a".into(),
        state: RecordState::Finished,
        exit_code: Some(-9),
        reason: Some("timeout".into()),
        created_at: T0,
        started_at: Some(T0 + 5),
        finished_at: Some(T0 + 1_000),
        stdout_bytes: 5_000_000_000,
        stderr_bytes: 7,
        log_bytes: 12_345,
        detached: true,
        callback_url: Some("https://hooks.example/x?y=1".into()),
        callback: Some(json!({"status": "delivered", "attempts": 2})),
        git: Some(
            json!({"project": "p", "branch": "b", "head": null, "committed": false, "pushed": false, "error": "x"}),
        ),
        branch_hold: None,
        state_hold: None,
    };
    s.insert(&full).await.unwrap();
    assert_eq!(s.get("run-full").await.unwrap().as_ref(), Some(&full));
    let bare = record("run-bare", "sess-2", T0);
    s.insert(&bare).await.unwrap();
    assert_eq!(s.get("run-bare").await.unwrap(), Some(bare));
    assert_eq!(s.get("nope").await.unwrap(), None);
    assert!(s.insert(&full).await.is_err(), "a run id is recorded once");

    let api = serde_json::to_value(&full).unwrap();
    assert_eq!(api["created_at"], "2025-12-01T00:36:03.123Z");
    assert_eq!(api["started_at"], "2025-12-01T00:36:03.128Z");
    assert_eq!(api["finished_at"], "2025-12-01T00:36:04.123Z");
    assert_eq!(api["args"][2], "héllo \"quoted\" ✓");
    assert_eq!(api["env_keys"], json!(["OPENAI_API_KEY", "MY_FLAG"]));
    assert_eq!(api["callback"]["status"], "delivered");
    assert_eq!(
        (api["mode"].as_str(), api["state"].as_str()),
        (Some("docker"), Some("finished"))
    );
    assert_eq!(api["detached"], true);
    let fields: Vec<&str> = api.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(fields.len(), 22, "{fields:?}");
    assert_eq!(api["git"]["error"], "x");
    let api = serde_json::to_value(s.get("run-bare").await.unwrap()).unwrap();
    assert!(api["finished_at"].is_null() && api["callback"].is_null() && api["model"].is_null());
    assert!(api["git"].is_null());
    // A run on a branch gets its git outcome when it ends.
    s.insert(&record("run-git", "s", T0)).await.unwrap();
    let git = json!({"project": "p", "branch": "b", "head": "abc", "committed": true, "pushed": false,
        "error": "push failed"});
    let end = Finish {
        git: Some(git.clone()),
        ..finished(T0 + 1, 10)
    };
    assert!(s.finish("run-git", &end).await.unwrap());
    assert_eq!(s.get("run-git").await.unwrap().unwrap().git, Some(git));
}

async fn final_records_never_change(ctx: Ctx) {
    let s = &ctx.store;
    s.insert(&record("r1", "s", T0)).await.unwrap();
    assert!(s.mark_running("r1", T0 + 1).await.unwrap());
    assert!(!s.mark_running("r1", T0 + 2).await.unwrap(), "running is not queued");
    let got = s.get("r1").await.unwrap().unwrap();
    assert_eq!((got.state, got.started_at), (RecordState::Running, Some(T0 + 1)));

    assert!(s.finish("r1", &finished(T0 + 10, 99)).await.unwrap());
    let done = s.get("r1").await.unwrap().unwrap();
    assert_eq!(done.state, RecordState::Finished);
    assert_eq!((done.exit_code, done.reason.as_deref()), (Some(0), Some("exited")));
    assert_eq!(
        (done.finished_at, done.stdout_bytes, done.stderr_bytes, done.log_bytes),
        (Some(T0 + 10), 1, 2, 99)
    );

    let again = Finish {
        state: RecordState::Interrupted,
        exit_code: Some(1),
        reason: Some("gateway_lost".into()),
        ..finished(T0 + 20, 5)
    };
    assert!(!s.finish("r1", &again).await.unwrap());
    assert!(!s.mark_running("r1", T0 + 30).await.unwrap());
    assert!(
        s.interrupt_instance("gw-a", "gateway_lost", T0 + 40)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        s.get("r1").await.unwrap().unwrap(),
        done,
        "a finished record is never changed"
    );

    // Queued runs may end without running (e.g. refused after the queue timeout).
    s.insert(&record("r2", "s", T0)).await.unwrap();
    assert!(s.finish("r2", &again).await.unwrap());
    assert_eq!(s.get("r2").await.unwrap().unwrap().state, RecordState::Interrupted);
    assert!(!s.finish("r2", &finished(T0, 0)).await.unwrap());
    assert!(!s.finish("unknown", &finished(T0, 0)).await.unwrap());
    s.insert(&record("r3", "s", T0)).await.unwrap();
    let not_final = Finish {
        state: RecordState::Running,
        ..finished(T0, 0)
    };
    assert!(s.finish("r3", &not_final).await.is_err());
}

/// 120 runs: owners alice/bob/none, clis codex/qwen, 4 sessions of finished runs and 24
/// running runs of sessions of their own (a session has one queued/running run at a time;
/// PostgreSQL enforces it), and created_at ties.
async fn seed_120(s: &Store) -> Vec<RunRecord> {
    let mut all = Vec::new();
    for i in 0..120 {
        let mut r = record(&format!("run-{i:03}"), &format!("sess-{}", i % 4), T0 + i / 3);
        r.owner = match i % 3 {
            0 => Some("alice".into()),
            1 => Some("bob".into()),
            _ => None,
        };
        r.cli = if i % 2 == 0 { "codex" } else { "qwen" }.into();
        if i % 5 == 0 {
            r.session_id = format!("sess-run-{i}");
            s.insert(&r).await.unwrap();
            s.mark_running(&r.run_id, T0 + 200).await.unwrap();
        } else {
            s.insert(&r).await.unwrap();
            assert!(s.finish(&r.run_id, &finished(T0 + 300, 10)).await.unwrap());
        }
        all.push(s.get(&r.run_id).await.unwrap().unwrap());
    }
    all.sort_by(|a, b| (b.created_at, &b.run_id).cmp(&(a.created_at, &a.run_id)));
    all
}

/// Every page of `query`, following cursors; `between` runs after each page.
async fn all_pages(s: &Store, query: ListQuery, mut between: impl AsyncFnMut(usize)) -> (Vec<RunRecord>, Vec<usize>) {
    let mut out = Vec::new();
    let mut sizes = Vec::new();
    let mut query = query;
    loop {
        let (page, next) = s.list(&query).await.unwrap();
        sizes.push(page.len());
        out.extend(page);
        between(sizes.len()).await;
        match next {
            Some(c) => query.cursor = Some(c),
            None => return (out, sizes),
        }
    }
}

async fn list_filters_and_pages_newest_first(ctx: Ctx) {
    let s = &ctx.store;
    let all = seed_120(s).await;
    let query = ListQuery {
        limit: Some(50),
        ..ListQuery::default()
    };
    // New runs arrive while a client pages: they are newer than the first page, so the later
    // pages neither repeat nor skip anything.
    let (paged, sizes) = all_pages(s, query, async |page| {
        s.insert(&record(
            &format!("late-{page}"),
            &format!("sess-late-{page}"),
            T0 + 10_000 + page as i64,
        ))
        .await
        .unwrap();
    })
    .await;
    assert_eq!(sizes, [50, 50, 20]);
    let ids: Vec<&str> = paged.iter().map(|r| r.run_id.as_str()).collect();
    let want: Vec<&str> = all.iter().map(|r| r.run_id.as_str()).collect();
    assert_eq!(
        ids, want,
        "newest first by (created_at, run_id), no gaps, no duplicates"
    );
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 120);

    let (first, _) = s.list(&ListQuery::default()).await.unwrap();
    assert_eq!(first.len(), 50, "default limit");
    assert_eq!(first[0].run_id, "late-3");

    let count = async |q: ListQuery| all_pages(s, ListQuery { limit: Some(7), ..q }, async |_| {}).await.0;
    let alice = count(ListQuery {
        owner: Some("alice".into()),
        ..ListQuery::default()
    })
    .await;
    assert_eq!(alice.len(), 40);
    assert!(alice.iter().all(|r| r.owner.as_deref() == Some("alice")));
    assert!(
        alice
            .windows(2)
            .all(|w| (w[0].created_at, &w[0].run_id) > (w[1].created_at, &w[1].run_id))
    );
    let running = count(ListQuery {
        state: Some(RecordState::Running),
        ..ListQuery::default()
    })
    .await;
    assert_eq!(running.len(), 24);
    let combined = count(ListQuery {
        state: Some(RecordState::Finished),
        cli: Some("qwen".into()),
        session_id: Some("sess-1".into()),
        owner: Some("bob".into()),
        ..ListQuery::default()
    })
    .await;
    let expected: Vec<&RunRecord> = all
        .iter()
        .filter(|r| {
            r.state == RecordState::Finished
                && r.cli == "qwen"
                && r.session_id == "sess-1"
                && r.owner.as_deref() == Some("bob")
        })
        .collect();
    assert!(!expected.is_empty());
    assert_eq!(combined.iter().collect::<Vec<_>>(), expected);
    assert!(
        count(ListQuery {
            owner: Some("mallory".into()),
            ..ListQuery::default()
        })
        .await
        .is_empty()
    );

    let latest = s.latest_by_session("sess-2").await.unwrap().unwrap();
    assert_eq!(
        latest.run_id,
        all.iter().find(|r| r.session_id == "sess-2").unwrap().run_id
    );
    assert_eq!(s.latest_by_session("sess-none").await.unwrap(), None);
}

async fn bad_list_arguments_are_refused(ctx: Ctx) {
    let s = &ctx.store;
    seed_120(s).await;
    for bad in ["garbage", "", "123", "123.zz", "abc.6162"] {
        let q = ListQuery {
            cursor: Some(bad.into()),
            ..ListQuery::default()
        };
        assert!(matches!(s.list(&q).await, Err(ListError::Invalid(_))), "cursor {bad:?}");
    }
    for limit in [0, 1001] {
        let q = ListQuery {
            limit: Some(limit),
            ..ListQuery::default()
        };
        assert!(matches!(s.list(&q).await, Err(ListError::Invalid(_))), "limit {limit}");
    }
    let q = ListQuery {
        limit: Some(1000),
        ..ListQuery::default()
    };
    assert_eq!(s.list(&q).await.unwrap().0.len(), 120);
}

async fn interrupt_touches_only_that_instance(ctx: Ctx) {
    let s = &ctx.store;
    for (id, instance, state) in [
        ("a-queued", "gw-a", "queued"),
        ("a-running", "gw-a", "running"),
        ("a-done", "gw-a", "finished"),
        ("b-queued", "gw-b", "queued"),
        ("b-running", "gw-b", "running"),
    ] {
        let mut r = record(id, id, T0);
        r.instance = instance.into();
        s.insert(&r).await.unwrap();
        if state != "queued" {
            s.mark_running(id, T0 + 1).await.unwrap();
        }
        if state == "finished" {
            s.finish(id, &finished(T0 + 2, 10)).await.unwrap();
        }
    }
    let running_a: Vec<String> = s
        .running_of_instance("gw-a")
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.run_id)
        .collect();
    assert_eq!(running_a.len(), 2);
    let done_before = s.get("a-done").await.unwrap();

    let hit = s.interrupt_instance("gw-a", "gateway_lost", T0 + 50).await.unwrap();
    let mut ids: Vec<&str> = hit.iter().map(|r| r.run_id.as_str()).collect();
    ids.sort();
    assert_eq!(ids, ["a-queued", "a-running"]);
    for r in &hit {
        assert_eq!(r.state, RecordState::Interrupted);
        assert_eq!(
            (r.reason.as_deref(), r.finished_at),
            (Some("gateway_lost"), Some(T0 + 50))
        );
        assert_eq!(s.get(&r.run_id).await.unwrap().as_ref(), Some(r));
    }
    assert_eq!(s.get("a-done").await.unwrap(), done_before);
    assert!(s.running_of_instance("gw-a").await.unwrap().is_empty());
    let b: Vec<RecordState> = s
        .running_of_instance("gw-b")
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.state)
        .collect();
    assert_eq!(b.len(), 2);
    assert!(b.contains(&RecordState::Queued) && b.contains(&RecordState::Running));
    assert!(
        s.interrupt_instance("gw-a", "gateway_lost", T0 + 60)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn retention_never_removes_unfinished_runs(ctx: Ctx) {
    let s = &ctx.store;
    // ended-N ended at T0+N with N*100 log bytes; live runs are queued or running.
    for n in 1..=6 {
        let id = format!("ended-{n}");
        s.insert(&record(&id, "s", T0)).await.unwrap();
        let end = if n % 2 == 0 {
            Finish {
                state: RecordState::Interrupted,
                ..finished(T0 + n, n as u64 * 100)
            }
        } else {
            finished(T0 + n, n as u64 * 100)
        };
        assert!(s.finish(&id, &end).await.unwrap());
    }
    s.insert(&record("live-queued", "s-queued", T0 - 10)).await.unwrap();
    s.insert(&record("live-running", "s-running", T0 - 10)).await.unwrap();
    s.mark_running("live-running", T0 - 9).await.unwrap();

    let old = s.finished_before(T0 + 4, 100).await.unwrap();
    assert_eq!(
        old,
        [
            ("ended-1".to_string(), 100),
            ("ended-2".into(), 200),
            ("ended-3".into(), 300)
        ]
    );
    assert_eq!(s.finished_before(T0 + 4, 2).await.unwrap().len(), 2);
    let oldest = s.finished_oldest_first(100).await.unwrap();
    assert_eq!(oldest.len(), 6);
    assert_eq!(oldest[0], ("ended-1".to_string(), 100, T0 + 1));
    assert_eq!(oldest[5], ("ended-6".to_string(), 600, T0 + 6));
    assert_eq!(s.total_log_bytes_finished().await.unwrap(), 2100);

    // Idempotency keys naming a run that will be deleted, a live run and an ended run that stays.
    for (key, run) in [
        ("k-ended-1", "ended-1"),
        ("k-live", "live-running"),
        ("k-ended-4", "ended-4"),
    ] {
        assert_eq!(s.claim_key("", key, "h", (run, "gw-a"), T0).await.unwrap(), Claim::New);
    }
    let ids: Vec<String> = ["ended-1", "ended-2", "live-queued", "live-running", "missing"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(s.delete(&ids).await.unwrap(), 2);
    assert!(s.get("ended-1").await.unwrap().is_none());
    assert!(s.get("live-queued").await.unwrap().is_some());
    assert!(s.get("live-running").await.unwrap().is_some());
    // The deleted run's key is forgotten (a retry starts a run); the others still name theirs.
    assert_eq!(
        s.claim_key("", "k-ended-1", "h", ("new-run", "gw-a"), T0 + 10)
            .await
            .unwrap(),
        Claim::New
    );
    for (key, run) in [("k-live", "live-running"), ("k-ended-4", "ended-4")] {
        assert_eq!(
            s.claim_key("", key, "h", ("other", "gw-a"), T0 + 10).await.unwrap(),
            Claim::Taken {
                body_hash: "h".into(),
                run_id: run.into()
            },
            "{key}"
        );
    }
    assert_eq!(s.total_log_bytes_finished().await.unwrap(), 1800);
    // Many ids at once (more than one statement's worth).
    let many: Vec<String> = (0..1200)
        .map(|i| format!("x-{i}"))
        .chain(["ended-3".to_string()])
        .collect();
    assert_eq!(s.delete(&many).await.unwrap(), 1);
    assert_eq!(s.delete(&[]).await.unwrap(), 0);
}

async fn migrations_are_idempotent(ctx: Ctx) {
    ctx.store.insert(&record("kept", "s", T0)).await.unwrap();
    let again = ctx.reopen().await;
    let third = ctx.reopen().await;
    assert!(again.get("kept").await.unwrap().is_some());
    assert!(third.get("kept").await.unwrap().is_some());
}

async fn concurrent_writers_lose_nothing(ctx: Ctx) {
    let s = &ctx.store;
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let s = s.clone();
            tokio::spawn(async move {
                for i in 0..200 {
                    let id = format!("w{t}-{i}");
                    s.insert(&record(&id, &format!("s{t}"), T0 + i)).await.unwrap();
                    assert!(s.mark_running(&id, T0 + i).await.unwrap());
                    assert!(s.finish(&id, &finished(T0 + i + 1, 1)).await.unwrap());
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let (page, next) = s
        .list(&ListQuery {
            limit: Some(1000),
            state: Some(RecordState::Finished),
            ..ListQuery::default()
        })
        .await
        .unwrap();
    let (rest, _) = s
        .list(&ListQuery {
            limit: Some(1000),
            state: Some(RecordState::Finished),
            cursor: next,
            ..ListQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(page.len() + rest.len(), 1600);
    assert_eq!(s.total_log_bytes_finished().await.unwrap(), 1600);
}

async fn ping_answers(ctx: Ctx) {
    let rtt = ctx.store.ping().await.unwrap();
    assert!(rtt.as_secs() < 5, "{rtt:?}");
}

#[tokio::test]
async fn open_errors_name_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    for url in ["mysql://u:hunter2@h/db", "sqlite://x.db", "x"] {
        let err = Store::open(Some(url), dir.path()).await.unwrap_err().to_string();
        assert!(err.starts_with("DATABASE_URL"), "{err}");
        assert!(!err.contains("hunter2") && !err.contains('\n'), "{err}");
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://u:hunter2@127.0.0.1:{port}/db");
    let err = Store::open_within(Some(&url), dir.path(), Duration::from_millis(500))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("DATABASE_URL") && !err.contains("hunter2") && !err.contains('\n'),
        "{err}"
    );
    assert!(err.contains("refused"), "the cause is named: {err}");

    let file = dir.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let err = Store::open(None, &file.join("data")).await.unwrap_err().to_string();
    assert!(err.starts_with("DATA_DIR") && !err.contains('\n'), "{err}");
    let err = Store::open(None, &file).await.unwrap_err().to_string();
    assert!(err.starts_with("DATA_DIR") && !err.contains('\n'), "{err}");
}

#[tokio::test]
async fn sqlite_lives_in_data_dir_in_wal_mode() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("nested/data");
    let store = Store::open(None, &data).await.unwrap();
    assert_eq!(store.sqlite_path(), Some(data.join("cligate.db").as_path()));
    store.insert(&record("r", "s", T0)).await.unwrap();
    assert!(Path::new(&data.join("cligate.db-wal")).exists(), "WAL journal");
}

/// No commit waits for a checkpoint's bulk (a thread of its own copies the WAL back), and yet
/// the WAL does not grow with every commit: after each background pass the writer copies what
/// came meanwhile, so the WAL can start over. 1500 runs are 4500 commits of 12–24 pages each,
/// about 200 MiB of WAL frames if the WAL never started over (without the writer's part it
/// reached 112 MB here); with a checkpoint every 256 commits it stays under 20 MiB (17 MiB
/// measured at eight at once), whether the runs come one at a time or eight at once (commits
/// overlapping each pass).
async fn the_wal_stays_small(concurrency: usize) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(None, dir.path()).await.unwrap();
    let wal = dir.path().join("cligate.db-wal");
    let largest = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..concurrency)
        .map(|t| {
            let (store, wal, largest) = (store.clone(), wal.clone(), largest.clone());
            tokio::spawn(async move {
                for i in (t..1500).step_by(concurrency) {
                    let id = format!("wal-{i}");
                    let at = T0 + i as i64;
                    store.insert(&record(&id, &id, at)).await.unwrap();
                    assert!(store.mark_running(&id, at).await.unwrap());
                    assert!(store.finish(&id, &finished(at + 1, 10)).await.unwrap());
                    largest.fetch_max(std::fs::metadata(&wal).unwrap().len(), Ordering::Relaxed);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let largest = largest.load(Ordering::Relaxed);
    assert!(largest < 32 << 20, "the WAL grew to {largest} bytes");
    let (newest, _) = store.list(&ListQuery::default()).await.unwrap();
    assert_eq!((newest.len(), newest[0].run_id.as_str()), (50, "wal-1499"));
    assert_eq!(newest[0].state, RecordState::Finished);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wal_is_checkpointed_between_commits() {
    the_wal_stays_small(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wal_is_checkpointed_under_concurrent_commits() {
    the_wal_stays_small(8).await;
}

/// `n` runs × (insert, mark_running, finish) from `concurrency` tasks; prints statements/s.
async fn throughput(label: &str, store: Store, n: usize, concurrency: usize) {
    let start = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|t| {
            let s = store.clone();
            tokio::spawn(async move {
                for i in (t..n).step_by(concurrency) {
                    let id = format!("bench-{i}");
                    let mut r = record(&id, &id, T0 + i as i64);
                    r.args = vec!["exec".into(), "--json".into(), "write a haiku".into()];
                    r.env_keys = vec!["OPENAI_API_KEY".into()];
                    r.owner = Some("alice".into());
                    s.insert(&r).await.unwrap();
                    s.mark_running(&id, T0 + i as i64).await.unwrap();
                    s.finish(&id, &finished(T0 + i as i64 + 5, 1000)).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{label}: {n} runs x 3 statements at concurrency {concurrency} in {secs:.2} s = {:.0} runs/s, {:.0} statements/s",
        n as f64 / secs,
        3.0 * n as f64 / secs
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement: cargo test --release --test store -- --ignored --nocapture throughput"]
async fn throughput_sqlite() {
    let ctx = sqlite().await;
    throughput("sqlite", ctx.store.clone(), 5000, 8).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement: cargo test --release --test store -- --ignored --nocapture throughput"]
async fn throughput_postgres() {
    let ctx = postgres().await;
    throughput("postgres", ctx.store.clone(), 5000, 8).await;
}

async fn an_idempotency_key_is_claimed_once(ctx: Ctx) {
    use cligate::store::idempotency::{Claim, KEY_LIFETIME_MS};
    let s = &ctx.store;
    // Twenty claims at once: exactly one wins, the others are told its run.
    let claims: Vec<_> = (0..20)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                s.claim_key("alice", "k1", "h1", (&format!("run-{i}"), "i1"), T0)
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut new = 0;
    let mut named = std::collections::BTreeSet::new();
    for c in claims {
        match c.await.unwrap() {
            Claim::New => new += 1,
            Claim::Taken { body_hash, run_id } => {
                assert_eq!(body_hash, "h1");
                named.insert(run_id);
            }
        }
    }
    assert_eq!(new, 1);
    assert_eq!(named.len(), 1, "{named:?}");
    // Keys are per owner; a released key can be claimed again; an expired one is taken over.
    assert_eq!(
        s.claim_key("bob", "k1", "h2", ("run-b", "i1"), T0).await.unwrap(),
        Claim::New
    );
    let winner = named.into_iter().next().unwrap();
    s.release_key("alice", "k1", "someone-else").await.unwrap();
    assert!(matches!(
        s.claim_key("alice", "k1", "h1", ("x", "i1"), T0).await.unwrap(),
        Claim::Taken { .. }
    ));
    s.release_key("alice", "k1", &winner).await.unwrap();
    assert_eq!(
        s.claim_key("alice", "k1", "h3", ("run-c", "i1"), T0 + 1).await.unwrap(),
        Claim::New
    );
    let later = T0 + 1 + KEY_LIFETIME_MS;
    assert_eq!(
        s.claim_key("alice", "k1", "h4", ("run-d", "i1"), later).await.unwrap(),
        Claim::New
    );
    assert_eq!(s.expire_keys(later + KEY_LIFETIME_MS).await.unwrap(), 2);
    // A key survives reopening the store.
    assert_eq!(
        s.claim_key("carol", "k9", "h", ("run-e", "i1"), T0).await.unwrap(),
        Claim::New
    );
    let again = ctx.reopen().await;
    assert!(
        matches!(again.claim_key("carol", "k9", "h", ("x", "i1"), T0).await.unwrap(), Claim::Taken { run_id, .. } if run_id == "run-e")
    );
    // At an instance's start, its claims whose run has no record are forgotten (its previous
    // process died between claim and record); a recorded run's key and other instances' stay.
    again.insert(&record("run-f", "s-f", T0)).await.unwrap();
    assert_eq!(
        again.claim_key("dave", "k1", "h", ("run-f", "i1"), T0).await.unwrap(),
        Claim::New
    );
    assert_eq!(
        again.claim_key("erin", "k1", "h", ("run-g", "i2"), T0).await.unwrap(),
        Claim::New
    );
    assert_eq!(again.forget_unstarted_keys("i1").await.unwrap(), 1);
    assert_eq!(
        again.claim_key("carol", "k9", "h", ("run-h", "i1"), T0).await.unwrap(),
        Claim::New
    );
    let named = |c: Claim| match c {
        Claim::Taken { run_id, .. } => run_id,
        Claim::New => "new".into(),
    };
    assert_eq!(
        named(again.claim_key("dave", "k1", "h", ("x", "i1"), T0).await.unwrap()),
        "run-f"
    );
    assert_eq!(
        named(again.claim_key("erin", "k1", "h", ("x", "i1"), T0).await.unwrap()),
        "run-g"
    );
}

/// Several replicas on PostgreSQL: heartbeats, the sweep of dead replicas' runs (one statement,
/// each run ended once when replicas sweep at once), and one active run per session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_replicas_sweep_dead_ones_once_and_keep_sessions_unique() {
    use cligate::store::replicas::{Held, taken};
    let ctx = postgres().await;
    let s = &ctx.store;
    let dead = Duration::from_secs(2);
    s.heartbeat("live", "http://10.0.0.1:8000").await.unwrap();
    s.heartbeat("gone", "http://10.0.0.2:8000").await.unwrap();
    // "gone" last beat long ago (by the database's clock).
    let other = ctx.reopen().await;
    let peers = other.peers().await.unwrap();
    assert_eq!(
        peers.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(),
        ["gone", "live"]
    );
    assert!(peers.iter().all(|p| p.alive(dead)));
    sqlx::query("UPDATE replicas SET heartbeat_at = heartbeat_at - 60000 WHERE id = 'gone'")
        .execute(&sqlx::PgPool::connect(ctx.url.as_deref().unwrap()).await.unwrap())
        .await
        .unwrap();
    assert!(!s.peer("gone").await.unwrap().unwrap().alive(dead));
    assert_eq!(s.peer("live").await.unwrap().unwrap().url, "http://10.0.0.1:8000");

    for (id, instance) in [
        ("g1", "gone"),
        ("g2", "gone"),
        ("n1", "never-registered"),
        ("l1", "live"),
        ("m1", "me"),
    ] {
        let mut r = RunRecord::queued(id, &format!("s-{id}"), "codex", instance, T0);
        r.state = RecordState::Running;
        s.insert(&r).await.unwrap();
    }
    // Keys claimed by a dead replica for runs it never recorded are forgotten by a live one;
    // those of recorded runs, of live replicas, of unregistered instances and its own stay.
    {
        for (key, run_id, instance) in [
            ("k-gone", "unrecorded-1", "gone"),
            ("k-gone-recorded", "g1", "gone"),
            ("k-live", "unrecorded-2", "live"),
            ("k-never", "unrecorded-3", "never-registered"),
            ("k-me", "unrecorded-4", "me"),
        ] {
            assert_eq!(
                s.claim_key("o", key, "h", (run_id, instance), T0).await.unwrap(),
                Claim::New
            );
        }
        assert_eq!(s.forget_lost_replicas_keys("me", dead).await.unwrap(), 1);
        for key in ["k-gone", "k-gone-recorded", "k-live", "k-never", "k-me"] {
            let again = s.claim_key("o", key, "h", ("new", "me"), T0).await.unwrap();
            assert_eq!(again == Claim::New, key == "k-gone", "{key}: {again:?}");
        }
    }
    // Three replicas sweep at once: every lost run is ended by exactly one of them.
    let (a, b, c) = tokio::join!(
        s.interrupt_lost("me", dead, T0 + 1),
        other.interrupt_lost("me", dead, T0 + 1),
        s.interrupt_lost("live", dead, T0 + 1),
    );
    let mut ended: Vec<String> = [a.unwrap(), b.unwrap(), c.unwrap()]
        .concat()
        .into_iter()
        .map(|r| {
            assert_eq!(
                (r.state, r.reason.as_deref()),
                (RecordState::Interrupted, Some("replica_lost"))
            );
            r.run_id
        })
        .collect();
    ended.sort();
    // "me" swept by the sweep of "live" (its heartbeat is absent): only the sweeper itself is spared.
    assert_eq!(ended, ["g1", "g2", "m1", "n1"]);
    assert_eq!(s.get("l1").await.unwrap().unwrap().state, RecordState::Running);
    assert_eq!(
        s.final_among(&["l1".into(), "g1".into(), "x".into()]).await.unwrap(),
        ["g1"]
    );

    // One queued/running run per session: the second insert is refused, recognisably.
    let mut first = RunRecord::queued("first", "shared", "codex", "live", T0);
    first.state = RecordState::Running;
    s.insert(&first).await.unwrap();
    let second = RunRecord::queued("second", "shared", "codex", "me", T0 + 1);
    let err = s.insert(&second).await.unwrap_err();
    assert_eq!(taken(&err), Some(Held::Session), "{err:#}");
    // Held by a live replica: not released; held by a dead one: released, then the insert works.
    assert!(
        !s.release_stale(Held::Session, "shared", "me", dead, T0 + 2)
            .await
            .unwrap()
    );
    sqlx::query("UPDATE replicas SET heartbeat_at = heartbeat_at - 60000 WHERE id = 'live'")
        .execute(&sqlx::PgPool::connect(ctx.url.as_deref().unwrap()).await.unwrap())
        .await
        .unwrap();
    assert!(
        s.release_stale(Held::Session, "shared", "me", dead, T0 + 2)
            .await
            .unwrap()
    );
    s.insert(&second).await.unwrap();
    assert_eq!(
        s.get("first").await.unwrap().unwrap().reason.as_deref(),
        Some("replica_lost")
    );
    // Ended runs do not hold their session; another error is not taken for a session conflict.
    assert!(s.finish("second", &finished(T0 + 3, 1)).await.unwrap());
    s.insert(&RunRecord::queued("third", "shared", "codex", "me", T0 + 4))
        .await
        .unwrap();
    let dup = s
        .insert(&RunRecord::queued("third", "other", "codex", "me", T0 + 4))
        .await
        .unwrap_err();
    assert_eq!(taken(&dup), None, "{dup:#}");

    // Retention of a replica considers only its own runs (their logs are in its DATA_DIR).
    let mut mine = ctx.reopen().await;
    mine.scope_retention("me");
    let oldest: Vec<String> = mine
        .finished_oldest_first(100)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.0)
        .collect();
    assert_eq!(oldest, ["m1", "second"]);
    let expired: Vec<String> = mine
        .finished_before(T0 + 100, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.0)
        .collect();
    assert_eq!(expired, ["m1", "second"]);
    assert_eq!(mine.total_log_bytes_finished().await.unwrap(), 1);
    assert_eq!(
        s.finished_oldest_first(100).await.unwrap().len(),
        6,
        "unscoped: every replica's"
    );

    s.deregister("live").await.unwrap();
    assert_eq!(s.peer("live").await.unwrap(), None);

    // A branch and a state key are held alike, each by its own index (the sessions differ).
    let holding = |id: &str, session: &str, instance: &str, at| {
        let mut r = RunRecord::queued(id, session, "codex", instance, at);
        r.branch_hold = Some(r#"["demo","feature/x"]"#.into());
        r.state_hold = Some(r#"["alice","conv"]"#.into());
        r
    };
    s.heartbeat("holder", "http://10.0.0.3:8000").await.unwrap();
    s.insert(&holding("b1", "s-b1", "holder", T0)).await.unwrap();
    let err = s.insert(&holding("b2", "s-b2", "me", T0 + 1)).await.unwrap_err();
    assert!(matches!(taken(&err), Some(Held::Branch | Held::StateKey)), "{err:#}");
    let mut state_only = holding("b3", "s-b3", "me", T0 + 1);
    state_only.branch_hold = Some(r#"["demo","feature/y"]"#.into());
    let err = s.insert(&state_only).await.unwrap_err();
    assert_eq!(taken(&err), Some(Held::StateKey), "{err:#}");
    let mut branch_only = holding("b4", "s-b4", "me", T0 + 1);
    branch_only.state_hold = None;
    let err = s.insert(&branch_only).await.unwrap_err();
    assert_eq!(taken(&err), Some(Held::Branch), "{err:#}");
    // Another owner's state key of the same name, and no hold at all, are free.
    let mut bobs = holding("b5", "s-b5", "me", T0 + 1);
    bobs.branch_hold = None;
    bobs.state_hold = Some(r#"["bob","conv"]"#.into());
    s.insert(&bobs).await.unwrap();
    // Held by a live replica: kept; once it is dead, released.
    assert!(
        !s.release_stale(Held::Branch, r#"["demo","feature/x"]"#, "me", dead, T0 + 2)
            .await
            .unwrap()
    );
    sqlx::query("UPDATE replicas SET heartbeat_at = heartbeat_at - 60000 WHERE id = 'holder'")
        .execute(&sqlx::PgPool::connect(ctx.url.as_deref().unwrap()).await.unwrap())
        .await
        .unwrap();
    assert!(
        s.release_stale(Held::Branch, r#"["demo","feature/x"]"#, "me", dead, T0 + 2)
            .await
            .unwrap()
    );
    s.insert(&holding("b2", "s-b2", "me", T0 + 3)).await.unwrap();
    // Ended, a run holds nothing.
    assert!(s.finish("b2", &finished(T0 + 4, 0)).await.unwrap());
    s.insert(&holding("b6", "s-b6", "me", T0 + 5)).await.unwrap();
}
