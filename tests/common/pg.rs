//! A throw-away PostgreSQL cluster for tests: one per test process, started on first use.
//!
//! `initdb` refuses to run as root, so as root the cluster belongs to `nobody` (set on the child
//! processes with `setuid`/`setgid`). The postmaster is started directly (`postgres -D …`) from a
//! thread that lives as long as the process, with `PR_SET_PDEATHSIG` so that it dies with the
//! test process whatever happens; an `atexit` hook asks it for a fast shutdown first and removes
//! the cluster's directory. When PostgreSQL cannot start, [`fresh_database`] panics: it never
//! skips.
//!
//! ```ignore
//! let url = common::pg::fresh_database().await; // postgres://postgres@127.0.0.1:PORT/test_3
//! ```

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sqlx::{Connection, Executor};

/// The running cluster.
struct Cluster {
    port: u16,
    dir: PathBuf,
}

static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();
/// The postmaster's pid, for the exit hook; 0 when none runs.
static POSTMASTER: AtomicI32 = AtomicI32::new(0);
static DIR: OnceLock<PathBuf> = OnceLock::new();
static DATABASES: AtomicUsize = AtomicUsize::new(0);

/// Creates a new, empty database in the test cluster and returns its URL.
pub async fn fresh_database() -> String {
    let cluster = tokio::task::spawn_blocking(|| CLUSTER.get_or_init(start).as_ref().map(|c| c.port))
        .await
        .expect("starting PostgreSQL");
    let port = match cluster {
        Ok(port) => port,
        Err(why) => panic!("the PostgreSQL test cluster could not start: {why}"),
    };
    let name = format!("test_{}", DATABASES.fetch_add(1, Ordering::SeqCst));
    let base = format!("postgres://postgres@127.0.0.1:{port}");
    administer(&base, format!("CREATE DATABASE {name}")).await;
    format!("{base}/{name}")
}

/// Drops the database at `url` (made by [`fresh_database`]) under whoever is connected to it:
/// their connections are ended and every later use fails, as with a database that went away.
pub async fn drop_database(url: &str) {
    let (base, name) = url.rsplit_once('/').expect("a database URL");
    administer(base, format!("DROP DATABASE {name} WITH (FORCE)")).await;
}

/// Runs one statement in the `postgres` database of the cluster at `base` (a URL without a
/// database).
async fn administer(base: &str, statement: String) {
    let mut conn = sqlx::PgConnection::connect(&format!("{base}/postgres"))
        .await
        .unwrap_or_else(|e| panic!("connecting to the PostgreSQL test cluster: {e}"));
    conn.execute(sqlx::AssertSqlSafe(statement.clone()))
        .await
        .unwrap_or_else(|e| panic!("{statement}: {e}"));
    conn.close().await.ok();
}

/// Finds a PostgreSQL server program on PATH or in Debian's versioned directories.
fn program(name: &str) -> Result<PathBuf, String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    if let Some(found) = std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file()) {
        return Ok(found);
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin").join(name))
                .collect()
        })
        .unwrap_or_default();
    versions.retain(|p| p.is_file());
    versions.sort_by_key(|p| {
        p.components()
            .nth(4)
            .and_then(|c| c.as_os_str().to_str()?.parse::<u32>().ok())
            .unwrap_or(0)
    });
    versions
        .pop()
        .ok_or_else(|| format!("{name} is neither on PATH nor in /usr/lib/postgresql/*/bin (install postgresql)"))
}

/// The unprivileged user the cluster runs as when the tests run as root.
fn unprivileged() -> Option<(u32, u32)> {
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let pw = unsafe { libc::getpwnam(c"nobody".as_ptr()) };
    assert!(
        !pw.is_null(),
        "running as root, but there is no user 'nobody' to own the test cluster"
    );
    Some(unsafe { ((*pw).pw_uid, (*pw).pw_gid) })
}

fn as_owner(cmd: &mut Command, owner: Option<(u32, u32)>) -> &mut Command {
    if let Some((uid, gid)) = owner {
        cmd.uid(uid).gid(gid);
    }
    cmd
}

fn start() -> Result<Cluster, String> {
    let initdb = program("initdb")?;
    let postgres = program("postgres")?;
    let owner = unprivileged();
    remove_leftovers();
    let dir = std::env::temp_dir().join(format!(
        "cligate-pg-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    DIR.set(dir.clone()).ok();
    unsafe { libc::atexit(stop_at_exit) };
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).map_err(|e| format!("chown {}: {e}", dir.display()))?;
    }
    let data = dir.join("data");
    let out = as_owner(&mut Command::new(&initdb), owner)
        .args([
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
            "-D",
        ])
        .arg(&data)
        .current_dir(&dir)
        .output()
        .map_err(|e| format!("running {}: {e}", initdb.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} failed ({}): {}",
            initdb.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let mut last = String::new();
    for _ in 0..3 {
        let port = free_port();
        match run_postmaster(&postgres, &dir, &data, port, owner) {
            Ok(()) => return Ok(Cluster { port, dir }),
            Err(why) => last = why,
        }
    }
    Err(last)
}

/// Removes the clusters of test processes that were killed (no exit hook ran): their
/// postmasters died with them, their directories did not.
fn remove_leftovers() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("cligate-pg-"))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Starts the postmaster from a thread that never ends (PDEATHSIG follows the thread that
/// spawned the child) and waits until it accepts connections.
fn run_postmaster(
    postgres: &Path,
    dir: &Path,
    data: &Path,
    port: u16,
    owner: Option<(u32, u32)>,
) -> Result<(), String> {
    let log_path = dir.join(format!("postgres-{port}.log"));
    let log = std::fs::File::create(&log_path).map_err(|e| format!("creating {}: {e}", log_path.display()))?;
    let mut cmd = Command::new(postgres);
    as_owner(&mut cmd, owner)
        .arg("-D")
        .arg(data)
        .args(["-c", "listen_addresses=127.0.0.1", "-p", &port.to_string(), "-k"])
        .arg(dir)
        .args([
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
        ])
        .args(["-c", "max_connections=200"])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log);
    unsafe {
        cmd.pre_exec(|| {
            // Runs after setuid in the child, so the setting survives into exec.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let exited = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = exited.clone();
    std::thread::Builder::new()
        .name(format!("postgres-{port}"))
        .spawn(move || {
            let mut child = match cmd.spawn() {
                Ok(c) => c,
                Err(e) => {
                    let _ = tx.send(Err(format!("spawning postgres: {e}")));
                    return;
                }
            };
            let _ = tx.send(Ok(child.id() as i32));
            let _ = child.wait();
            flag.store(true, Ordering::SeqCst);
            // Stay alive: the thread's end would not matter to a dead child, but keep it simple.
            loop {
                std::thread::park();
            }
        })
        .map_err(|e| e.to_string())?;
    let pid = rx.recv().map_err(|e| e.to_string())??;
    POSTMASTER.store(pid, Ordering::SeqCst);
    let start = Instant::now();
    loop {
        if exited.load(Ordering::SeqCst) {
            POSTMASTER.store(0, Ordering::SeqCst);
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            return Err(format!("postgres exited at start-up: {}", text.trim()));
        }
        // The postmaster writes "ready" into postmaster.pid once it accepts connections.
        let ready = std::fs::read_to_string(data.join("postmaster.pid"))
            .map(|t| t.lines().nth(7).is_some_and(|l| l.trim() == "ready"))
            .unwrap_or(false);
        if ready && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(60) {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            return Err(format!("postgres did not become ready in 60 s: {}", text.trim()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// At process exit: fast shutdown (SIGINT), a short wait, then SIGKILL; remove the directory.
extern "C" fn stop_at_exit() {
    let pid = POSTMASTER.swap(0, Ordering::SeqCst);
    if pid > 0 {
        unsafe { libc::kill(pid, libc::SIGINT) };
        let start = Instant::now();
        while unsafe { libc::kill(pid, 0) } == 0 && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(10));
        }
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    if let Some(dir) = DIR.get() {
        let _ = std::fs::remove_dir_all(dir);
    }
}
