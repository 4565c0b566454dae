//! Workspaces end to end, with real git and real remotes on loopback: a bare repository served
//! by `git daemon --enable=receive-pack`, and one served by `git http-backend` behind this
//! test's own HTTP server, which demands a token. The fixture CLI is `sh -c`, editing, adding
//! and deleting files in its working directory.

mod common;

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Gateway, RunStream};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

/// Files of the seeded `dev` branch.
const README: &str = "# demo\n";
const LIB: &str = "pub fn answer() -> u32 { 42 }\n";

/// Git outside the gateway, `main` as the default branch.
fn git(dir: &Path, args: &[&str]) -> String {
    common::git_in(dir, "main", args)
}

/// A bare repository `origin.git` with `main` and `dev`; `dev` holds a readme, a source file,
/// a file to delete and a binary file.
struct Remote {
    dir: tempfile::TempDir,
}

impl Remote {
    fn new() -> Remote {
        let dir = tempfile::Builder::new().prefix("cligate-remote-").tempdir().unwrap();
        git(dir.path(), &["init", "--bare", "--quiet", "origin.git"]);
        let seed = dir.path().join("seed");
        std::fs::create_dir(&seed).unwrap();
        git(&seed, &["init", "--quiet", "-b", "main"]);
        std::fs::write(seed.join("README.md"), README).unwrap();
        git(&seed, &["add", "."]);
        git(&seed, &["commit", "--quiet", "-m", "main"]);
        git(&seed, &["checkout", "--quiet", "-b", "dev"]);
        std::fs::create_dir(seed.join("src")).unwrap();
        std::fs::write(seed.join("src/lib.rs"), LIB).unwrap();
        std::fs::write(seed.join("delete-me.txt"), "bye\n").unwrap();
        std::fs::write(seed.join("logo.bin"), b"\x89PNG\r\n\x1a\n\0\0\0binary").unwrap();
        git(&seed, &["add", "."]);
        git(&seed, &["commit", "--quiet", "-m", "dev"]);
        let origin = dir.path().join("origin.git").display().to_string();
        git(&seed, &["push", "--quiet", &origin, "main", "dev"]);
        Remote { dir }
    }

    fn bare(&self) -> PathBuf {
        self.dir.path().join("origin.git")
    }

    /// The commit of `branch` on the remote, if it has it.
    fn head(&self, branch: &str) -> Option<String> {
        let out = std::process::Command::new("git")
            .args(["rev-parse", "--verify", "--quiet", &format!("refs/heads/{branch}")])
            .current_dir(self.bare())
            .output()
            .unwrap();
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Makes the remote refuse every push (a pre-receive hook), or accept them again.
    fn refuse_pushes(&self, refuse: bool) {
        let hook = self.bare().join("hooks/pre-receive");
        if refuse {
            std::fs::write(&hook, "#!/bin/sh\necho 'pushes are closed today' >&2\nexit 1\n").unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
        } else {
            let _ = std::fs::remove_file(&hook);
        }
    }
}

/// `git daemon` serving the remote's directory on a loopback port, pushes allowed.
struct Daemon {
    url: String,
    child: std::process::Child,
}

impl Daemon {
    async fn start(remote: &Remote) -> Daemon {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // The daemon itself, not the `git daemon` wrapper (which would outlive a kill).
        let child = std::process::Command::new(Path::new(&git(Path::new("/"), &["--exec-path"])).join("git-daemon"))
            .arg("--reuseaddr")
            .arg("--export-all")
            .arg("--enable=receive-pack")
            .arg("--listen=127.0.0.1")
            .arg(format!("--port={port}"))
            .arg(format!("--base-path={}", remote.dir.path().display()))
            .arg(remote.dir.path())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("git daemon starts");
        // Owned (and so killed and reaped on drop) before anything can fail.
        let daemon = Daemon {
            url: format!("git://127.0.0.1:{port}/origin.git"),
            child,
        };
        for _ in 0..400 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                return daemon;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("git daemon does not listen");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn base64(input: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(TABLE[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `git http-backend` behind a tiny HTTP server that answers 401 unless the request carries
/// `Basic x-access-token:<token>`. While it serves an authorised request it looks at every
/// process's command line for the token (git is waiting for this answer at that moment).
struct HttpRemote {
    url: String,
    unauthorised: Arc<AtomicUsize>,
    authorised: Arc<AtomicUsize>,
    token_on_a_command_line: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl HttpRemote {
    async fn start(remote: &Remote, token: &str) -> HttpRemote {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let unauthorised = Arc::new(AtomicUsize::new(0));
        let authorised = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let expected = format!("Basic {}", base64(format!("x-access-token:{token}").as_bytes()));
        let root = remote.dir.path().to_path_buf();
        let (u, a, s, token) = (
            unauthorised.clone(),
            authorised.clone(),
            seen.clone(),
            token.to_string(),
        );
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (u, a, s, root, expected, token) = (
                    u.clone(),
                    a.clone(),
                    s.clone(),
                    root.clone(),
                    expected.clone(),
                    token.clone(),
                );
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        cgi(
                            req,
                            root.clone(),
                            expected.clone(),
                            token.clone(),
                            u.clone(),
                            a.clone(),
                            s.clone(),
                        )
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        HttpRemote {
            url: format!("http://{addr}/origin.git"),
            unauthorised,
            authorised,
            token_on_a_command_line: seen,
            task,
        }
    }
}

impl Drop for HttpRemote {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Command lines of every process that hold `needle`.
fn command_lines_holding(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if text.contains(needle) {
                found.push(text);
            }
        }
    }
    found
}

#[allow(clippy::too_many_arguments)]
async fn cgi(
    req: Request<Incoming>,
    root: PathBuf,
    expected: String,
    token: String,
    unauthorised: Arc<AtomicUsize>,
    authorised: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<String>>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let auth = parts.headers.get("authorization").and_then(|v| v.to_str().ok());
    if auth != Some(expected.as_str()) {
        unauthorised.fetch_add(1, Ordering::SeqCst);
        return Ok(Response::builder()
            .status(StatusCode::UNAUTHORIZED)
            .header("www-authenticate", "Basic realm=\"test\"")
            .body(Full::new(Bytes::from_static(b"token required\n")))
            .unwrap());
    }
    authorised.fetch_add(1, Ordering::SeqCst);
    seen.lock().unwrap().extend(command_lines_holding(&token));
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let mut child = tokio::process::Command::new("git")
        .arg("http-backend")
        .env("GIT_PROJECT_ROOT", &root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("REMOTE_USER", "x-access-token")
        .env("REQUEST_METHOD", parts.method.as_str())
        .env("PATH_INFO", parts.uri.path())
        .env("QUERY_STRING", parts.uri.query().unwrap_or(""))
        .env("CONTENT_TYPE", header("content-type"))
        .env("HTTP_CONTENT_ENCODING", header("content-encoding"))
        .env("GIT_PROTOCOL", header("git-protocol"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let _ = stdin.write_all(&body).await;
    });
    let out = child.wait_with_output().await.unwrap();
    let _ = writer.await;
    let raw = out.stdout;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4))
        .or_else(|| raw.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2)))
        .expect("CGI headers");
    let head = String::from_utf8_lossy(&raw[..split.0]).to_string();
    let mut response = Response::builder();
    for line in head.lines() {
        let Some((k, v)) = line.split_once(':') else { continue };
        if k.eq_ignore_ascii_case("status") {
            let code: u16 = v.trim()[..3].parse().unwrap();
            response = response.status(code);
        } else {
            response = response.header(k.trim(), v.trim());
        }
    }
    Ok(response
        .body(Full::new(Bytes::from(raw[split.0 + split.1..].to_vec())))
        .unwrap())
}

/// A projects file naming `projects` (id, url, extra TOML lines).
fn projects_file(dir: &Path, projects: &[(&str, &str, &str)]) -> PathBuf {
    let mut text = String::new();
    for (id, url, extra) in projects {
        text.push_str(&format!("[projects.{id}]\nurl = \"{url}\"\nbase = \"dev\"\n{extra}\n"));
    }
    let path = dir.join("projects.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A gateway whose only project is `demo`, served by `git daemon`.
struct Setup {
    gw: Gateway,
    remote: Remote,
    _daemon: Daemon,
}

async fn setup(extra: &[(&str, &str)]) -> Setup {
    let remote = Remote::new();
    let daemon = Daemon::start(&remote).await;
    let file = projects_file(remote.dir.path(), &[("demo", &daemon.url, "")]);
    let file = file.display().to_string();
    let mut vars = vec![
        ("PROJECTS_FILE", file.as_str()),
        ("GIT_AUTHOR_NAME", "Gate Keeper"),
        ("GIT_AUTHOR_EMAIL", "gate@example.test"),
        ("GIT_TIMEOUT_SECONDS", "60"),
    ];
    vars.extend_from_slice(extra);
    let gw = Gateway::start(&vars).await;
    Setup {
        gw,
        remote,
        _daemon: daemon,
    }
}

/// A run of `sh -c script` on `branch` of `demo`.
fn branch_run(branch: &str, script: &str, push: bool) -> Value {
    json!({
        "cli": "sh",
        "args": ["-c", script],
        "workspace": {"project": "demo", "branch": branch, "push": push, "commit_message": format!("edit {branch}")},
    })
}

/// The frames as their JSON objects.
fn values(frames: &common::Frames) -> Vec<Value> {
    frames.0.iter().map(|f| serde_json::to_value(f).unwrap()).collect()
}

fn git_frame(frames: &common::Frames) -> Value {
    let all = values(frames);
    let git: Vec<&Value> = all.iter().filter(|f| f["type"] == "git").collect();
    assert_eq!(git.len(), 1, "{all:?}");
    assert_eq!(
        all[all.len() - 2]["type"],
        "git",
        "the git frame comes just before exit: {all:?}"
    );
    git[0].clone()
}

async fn record(gw: &Gateway, frames: &common::Frames) -> Value {
    let first = values(frames).remove(0);
    let run_id = first["run_id"].as_str().unwrap();
    let reply = gw.get(&format!("/runs/{run_id}")).await;
    assert_eq!(reply.status, 200);
    reply.json()
}

const EDIT: &str = "pwd; printf 'more\\n' >> README.md; printf 'new\\n' > added.txt; rm delete-me.txt; \
    mkdir -p docs && printf 'x\\n' > docs/guide.md";

#[tokio::test]
async fn a_run_on_a_new_branch_commits_exactly_its_changes_and_pushes_them() {
    let s = setup(&[]).await;
    let dev = s.remote.head("dev").unwrap();
    assert_eq!(s.remote.head("codex/req-1"), None);
    let frames = s.gw.run_to_end(branch_run("codex/req-1", EDIT, true)).await;
    assert_eq!(frames.exit(), (0, "exited".into()), "{}", frames.stderr());
    let worktree = s.gw.data_dir.join("workspaces/demo/trees/codex%2Freq-1");
    assert_eq!(
        frames.stdout().trim(),
        std::path::absolute(&worktree).unwrap().display().to_string(),
        "the CLI works in the branch's worktree"
    );
    let stderr = frames.stderr();
    for step in [
        "cligate: workspace: git fetch origin",
        "creating branch 'codex/req-1' from origin/dev",
    ] {
        assert!(stderr.contains(step), "{step}: {stderr}");
    }

    let git = git_frame(&frames);
    let head = s.remote.head("codex/req-1").expect("the branch was pushed");
    assert_eq!(
        git,
        json!({"type": "git", "project": "demo", "branch": "codex/req-1", "head": head, "committed": true,
            "pushed": true, "error": null})
    );
    let bare = s.remote.bare();
    assert_eq!(
        git_in(&bare, &["rev-parse", &format!("{head}^")]),
        dev,
        "branched from dev"
    );
    assert_eq!(
        git_in(&bare, &["diff", "--name-status", &dev, &head]),
        "M\tREADME.md\nA\tadded.txt\nD\tdelete-me.txt\nA\tdocs/guide.md"
    );
    assert_eq!(
        git_in(&bare, &["log", "-1", "--format=%an <%ae>|%cn|%s", &head]),
        "Gate Keeper <gate@example.test>|Gate Keeper|edit codex/req-1"
    );
    let mut expected = git.clone();
    expected.as_object_mut().unwrap().remove("type");
    assert_eq!(record(&s.gw, &frames).await["git"], expected);

    // The next run on the branch starts from its head and sees the earlier work.
    let frames = s.gw.run_to_end(branch_run("codex/req-1", "cat added.txt", false)).await;
    assert_eq!(frames.stdout(), "new\n");
    let git = git_frame(&frames);
    assert_eq!(
        (git["committed"].clone(), git["pushed"].clone(), git["head"].clone()),
        (json!(false), json!(false), json!(head))
    );
}

fn git_in(dir: &Path, args: &[&str]) -> String {
    git(dir, args)
}

#[tokio::test]
async fn a_run_that_changes_nothing_commits_nothing() {
    let s = setup(&[]).await;
    let dev = s.remote.head("dev").unwrap();
    let frames = s.gw.run_to_end(branch_run("quiet", "ls", true)).await;
    assert_eq!(frames.exit(), (0, "exited".into()));
    assert!(frames.stdout().contains("README.md"), "{}", frames.stdout());
    let git = git_frame(&frames);
    assert_eq!(
        (git["committed"].clone(), git["head"].clone(), git["error"].clone()),
        (json!(false), json!(dev), Value::Null)
    );
    assert!(frames.stderr().contains("nothing to commit"), "{}", frames.stderr());
    // Pushed: the new branch now exists on the remote, at dev.
    assert_eq!(git["pushed"], true);
    assert_eq!(s.remote.head("quiet").as_deref(), Some(dev.as_str()));
}

#[tokio::test]
async fn a_failed_push_keeps_the_commit_and_a_later_run_pushes_it_first() {
    let s = setup(&[]).await;
    s.remote.refuse_pushes(true);
    let frames =
        s.gw.run_to_end(branch_run("fix", "printf 'one\\n' > one.txt", true))
            .await;
    assert_eq!(frames.exit(), (0, "exited".into()));
    let git = git_frame(&frames);
    assert_eq!(
        (git["committed"].clone(), git["pushed"].clone()),
        (json!(true), json!(false))
    );
    let error = git["error"].as_str().unwrap();
    assert!(
        error.contains("push failed") && error.contains("commit is kept"),
        "{error}"
    );
    let first = git["head"].as_str().unwrap().to_string();
    assert_eq!(s.remote.head("fix"), None);
    assert_eq!(record(&s.gw, &frames).await["git"]["error"], error);

    // Still refused: the run is refused before the CLI, and the commit is still there.
    let frames = s.gw.run_to_end(branch_run("fix", "echo must-not-run", true)).await;
    assert_eq!(frames.exit(), (1, "workspace".into()), "{}", frames.stderr());
    assert!(!frames.stdout().contains("must-not-run"));
    let git = git_frame(&frames);
    let error = git["error"].as_str().unwrap();
    assert!(
        error.contains("1 commit(s) that are not on the remote") && error.contains("nothing was reset"),
        "{error}"
    );
    let rec = record(&s.gw, &frames).await;
    assert_eq!(
        (rec["reason"].clone(), rec["exit_code"].clone()),
        (json!("workspace"), json!(1))
    );
    assert_eq!(rec["git"]["error"], error);
    let tree = s.gw.get("/projects/demo/tree?ref=fix").await.json();
    assert!(
        tree["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "one.txt"),
        "{tree}"
    );
    assert_eq!(tree["commit"], first.as_str());

    // A run without push works on top of the local commit.
    let frames = s.gw.run_to_end(branch_run("fix", "cat one.txt", false)).await;
    assert_eq!(frames.stdout(), "one\n");
    assert!(
        frames.stderr().contains("keeping 1 local commit(s)"),
        "{}",
        frames.stderr()
    );

    // Once the remote takes pushes again, the kept commit goes first, then the new one.
    s.remote.refuse_pushes(false);
    let frames =
        s.gw.run_to_end(branch_run("fix", "printf 'two\\n' > two.txt", true))
            .await;
    assert_eq!(frames.exit(), (0, "exited".into()), "{}", frames.stderr());
    assert!(frames.stderr().contains("pushing them first"), "{}", frames.stderr());
    let git = git_frame(&frames);
    assert_eq!(
        (git["committed"].clone(), git["pushed"].clone(), git["error"].clone()),
        (json!(true), json!(true), Value::Null)
    );
    let head = s.remote.head("fix").unwrap();
    assert_eq!(git["head"], head.as_str());
    assert_eq!(git_in(&s.remote.bare(), &["rev-parse", &format!("{head}^")]), first);
}

#[tokio::test]
async fn a_branch_that_moved_on_the_remote_is_fast_forwarded_and_a_diverged_one_refused() {
    let s = setup(&[]).await;
    let frames = s.gw.run_to_end(branch_run("ff", "printf 'a\\n' > a.txt", true)).await;
    assert_eq!(git_frame(&frames)["pushed"], true);
    // Someone else pushes to the branch.
    let other = s.remote.dir.path().join("other");
    git(
        s.remote.dir.path(),
        &["clone", "--quiet", "-b", "ff", "origin.git", "other"],
    );
    std::fs::write(other.join("b.txt"), "b\n").unwrap();
    git(&other, &["add", "."]);
    git(&other, &["commit", "--quiet", "-m", "b"]);
    git(&other, &["push", "--quiet", "origin", "ff"]);
    let frames = s.gw.run_to_end(branch_run("ff", "cat b.txt", false)).await;
    assert_eq!(frames.stdout(), "b\n", "{}", frames.stderr());
    assert!(
        frames.stderr().contains("fast-forwarding to origin/ff"),
        "{}",
        frames.stderr()
    );

    // Local commit (push off) plus another remote commit: diverged, refused, nothing lost.
    let frames = s.gw.run_to_end(branch_run("ff", "printf 'c\\n' > c.txt", false)).await;
    let local = git_frame(&frames)["head"].as_str().unwrap().to_string();
    std::fs::write(other.join("d.txt"), "d\n").unwrap();
    git(&other, &["add", "."]);
    git(&other, &["commit", "--quiet", "-m", "d"]);
    git(&other, &["push", "--quiet", "origin", "ff"]);
    let frames = s.gw.run_to_end(branch_run("ff", "echo no", true)).await;
    assert_eq!(frames.exit(), (1, "workspace".into()));
    assert!(
        git_frame(&frames)["error"].as_str().unwrap().contains("diverged"),
        "{:?}",
        values(&frames)
    );
    let tree = s.gw.get("/projects/demo/tree?ref=ff").await.json();
    assert_eq!(tree["commit"], local.as_str(), "the local branch keeps its commit");
}

/// Opens a run and reads until its CLI printed `ready`.
async fn open_ready(gw: &Gateway, body: Value) -> RunStream {
    let mut stream = RunStream::open(gw.addr, body.to_string().into_bytes(), &[]).await;
    if stream.status != 200 {
        let status = stream.status;
        panic!("{status}: {}", stream.error_body().await);
    }
    stream.stdout_until("ready").await;
    stream
}

#[tokio::test]
async fn two_branches_run_at_once_and_a_busy_branch_or_state_key_is_409() {
    let s = setup(&[]).await;
    let flags = tempfile::tempdir().unwrap();
    let wait = |name: &str, file: &str| {
        let flag = flags.path().join(name).display().to_string();
        format!("printf '{file}\\n' > {file}.txt; echo ready; while [ ! -e {flag} ]; do sleep 0.05; done")
    };
    let mut a = open_ready(&s.gw, {
        let mut body = branch_run("feature/a", &wait("a", "a"), true);
        body["state_key"] = json!("conv-a");
        body
    })
    .await;
    // Both are running at once: the second starts while the first waits.
    let b = open_ready(&s.gw, branch_run("feature/b", &wait("b", "b"), true)).await;

    for path in ["/run", "/runs"] {
        let reply =
            s.gw.post(path, &branch_run("feature/a", "true", false).to_string())
                .await;
        let body = reply.assert_error(409);
        assert_eq!(body["error"], "busy", "{body}");
        assert!(
            body["detail"]
                .as_str()
                .unwrap()
                .contains("branch 'feature/a' of project 'demo' is busy"),
            "{body}"
        );
        let reply =
            s.gw.post(
                path,
                &json!({"cli": "sh", "args": ["-c", "true"], "state_key": "conv-a"}).to_string(),
            )
            .await;
        let body = reply.assert_error(409);
        assert!(
            body["detail"].as_str().unwrap().contains("state_key 'conv-a' is busy"),
            "{body}"
        );
    }

    std::fs::write(flags.path().join("a"), "").unwrap();
    std::fs::write(flags.path().join("b"), "").unwrap();
    let git_a = serde_json::to_value(a.until("git").await).unwrap();
    assert_eq!(serde_json::to_value(a.until("exit").await).unwrap()["code"], 0);
    let b = values(&b.collect().await);
    assert_eq!(
        b.last().unwrap(),
        &json!({"type": "exit", "code": 0, "reason": "exited"})
    );
    let git_b = b.iter().find(|f| f["type"] == "git").unwrap().clone();
    for (git, branch) in [(git_a, "feature/a"), (git_b, "feature/b")] {
        assert_eq!(
            (git["committed"].clone(), git["pushed"].clone()),
            (json!(true), json!(true)),
            "{git}"
        );
        assert_eq!(s.remote.head(branch).as_deref(), git["head"].as_str());
    }
    // Free again once ended.
    let frames = s.gw.run_to_end(branch_run("feature/a", "cat a.txt", false)).await;
    assert_eq!(frames.stdout(), "a\n");
}

#[tokio::test]
async fn bad_workspace_requests_are_refused_with_clear_errors() {
    let s = setup(&[]).await;
    let cases = [
        (
            json!({"project": "nope", "branch": "x"}),
            400,
            "project 'nope' is not configured; known: demo",
        ),
        (
            json!({"project": "demo", "branch": "a..b"}),
            400,
            "not a valid branch name",
        ),
        (json!({"project": "demo", "branch": "-f"}), 400, "starts with '-'"),
        (
            json!({"project": "demo", "branch": "ok", "base": "x y"}),
            400,
            "base branch",
        ),
        (
            json!({"project": "demo", "branch": "ok", "url": "file:///etc"}),
            422,
            "unknown field",
        ),
        (json!({"project": "demo"}), 422, "branch"),
    ];
    for (workspace, status, needle) in cases {
        let reply =
            s.gw.post("/run", &json!({"cli": "sh", "workspace": workspace}).to_string())
                .await;
        let body = reply.assert_error(status);
        assert!(body["detail"].as_str().unwrap().contains(needle), "{workspace}: {body}");
    }
    for key in ["../x", "a/b", "", ".hidden"] {
        let reply =
            s.gw.post("/run", &json!({"cli": "sh", "state_key": key}).to_string())
                .await;
        assert!(
            reply.assert_error(400)["detail"]
                .as_str()
                .unwrap()
                .contains("state_key"),
            "{key}"
        );
    }
    // A base branch the remote does not have: the run is refused before the CLI.
    let frames = s
        .gw
        .run_to_end(json!({"cli": "sh", "args": ["-c", "echo ran"], "workspace": {"project": "demo", "branch": "n", "base": "missing"}}))
        .await;
    assert_eq!(frames.exit(), (1, "workspace".into()));
    assert!(
        git_frame(&frames)["error"]
            .as_str()
            .unwrap()
            .contains("base branch 'missing' does not exist")
    );
    // Without PROJECTS_FILE there are no workspaces.
    let plain = Gateway::start(&[]).await;
    let reply = plain
        .post(
            "/run",
            &json!({"cli": "sh", "workspace": {"project": "demo", "branch": "x"}}).to_string(),
        )
        .await;
    assert!(
        reply.assert_error(400)["detail"]
            .as_str()
            .unwrap()
            .contains("PROJECTS_FILE")
    );
    assert_eq!(plain.get("/projects").await.json(), json!({"projects": []}));
    // The gateway still serves.
    assert_eq!(
        s.gw.run_to_end(branch_run("after", "true", false)).await.exit(),
        (0, "exited".into())
    );
}

#[tokio::test]
async fn previews_show_tree_and_file_at_a_ref_and_refuse_what_they_must() {
    let s = setup(&[]).await;
    let projects = s.gw.get("/projects").await;
    assert_eq!(projects.json(), json!({"projects": [{"id": "demo", "base": "dev"}]}));
    assert!(!String::from_utf8_lossy(&projects.body).contains("git://"));

    let tree = s.gw.get("/projects/demo/tree").await.json();
    assert_eq!(
        (tree["ref"].clone(), tree["path"].clone(), tree["truncated"].clone()),
        (json!("dev"), json!(""), json!(false))
    );
    let names: Vec<(String, String, Value)> = tree["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap().into(),
                e["path"].as_str().unwrap().into(),
                e["size"].clone(),
            )
        })
        .collect();
    assert_eq!(
        names,
        [
            ("blob".into(), "README.md".into(), json!(README.len())),
            ("blob".into(), "delete-me.txt".into(), json!(4)),
            ("blob".into(), "logo.bin".into(), json!(17)),
            ("tree".into(), "src".into(), Value::Null),
        ]
    );
    let main = s.gw.get("/projects/demo/tree?ref=main").await.json();
    assert_eq!(main["entries"].as_array().unwrap().len(), 1);
    let sub = s.gw.get("/projects/demo/tree?path=./src/").await.json();
    assert_eq!(
        sub["entries"],
        json!([{"type": "blob", "name": "lib.rs", "path": "src/lib.rs", "size": LIB.len()}])
    );
    let all = s.gw.get("/projects/demo/tree?recursive=1").await.json();
    assert_eq!(all["entries"].as_array().unwrap().len(), 5);
    let few =
        s.gw.get("/projects/demo/tree?recursive=true&max_entries=2")
            .await
            .json();
    assert_eq!(
        (few["entries"].as_array().unwrap().len(), few["truncated"].clone()),
        (2, json!(true))
    );

    let file = s.gw.get("/projects/demo/file?path=src/lib.rs&ref=dev").await.json();
    assert_eq!(
        (
            file["content"].as_str(),
            file["size"].clone(),
            file["truncated"].clone()
        ),
        (Some(LIB), json!(LIB.len()), json!(false))
    );
    let cut = s.gw.get("/projects/demo/file?path=src/lib.rs&max_bytes=6").await.json();
    assert_eq!(
        (cut["content"].as_str(), cut["truncated"].clone()),
        (Some("pub fn"), json!(true))
    );
    let commit = s.remote.head("dev").unwrap();
    let by_id =
        s.gw.get(&format!("/projects/demo/file?path=README.md&ref={commit}"))
            .await
            .json();
    assert_eq!(
        (by_id["content"].as_str(), by_id["commit"].as_str()),
        (Some(README), Some(commit.as_str()))
    );

    // A branch pushed after the first fetch is found: the preview fetches once more
    // (an unknown ref makes it fetch at most every 10 s, so this comes before the 404 below).
    let other = s.remote.dir.path().join("late");
    git(
        s.remote.dir.path(),
        &["clone", "--quiet", "-b", "dev", "origin.git", "late"],
    );
    git(&other, &["checkout", "--quiet", "-b", "late-branch"]);
    git(&other, &["push", "--quiet", "origin", "late-branch"]);
    let late = s.gw.get("/projects/demo/tree?ref=late-branch").await;
    assert_eq!(late.status, 200, "{:?}", late.body);

    let refused = [
        ("/projects/demo/file?path=logo.bin", 415, "binary"),
        ("/projects/demo/file?path=../etc/passwd", 400, ".."),
        ("/projects/demo/file?path=/etc/passwd", 400, "absolute"),
        ("/projects/demo/file?path=src%00x", 400, "NUL"),
        ("/projects/demo/tree?path=src/../..", 400, ".."),
        ("/projects/demo/file?path=src", 400, "not a file"),
        ("/projects/demo/tree?path=README.md", 400, "not a directory"),
        ("/projects/demo/file", 400, "path is required"),
        ("/projects/demo/tree?ref=--output=/tmp/x", 400, "not start with '-'"),
        ("/projects/demo/tree?recursive=maybe", 400, "recursive"),
        ("/projects/demo/tree?max_entries=0", 400, "max_entries"),
        ("/projects/demo/tree?ref=no-such-branch", 404, "not known"),
        ("/projects/demo/file?path=nothing.txt", 404, "does not exist"),
        ("/projects/demo/tree?path=nowhere", 404, "does not exist"),
        ("/projects/other/tree", 404, "not configured"),
    ];
    for (path, status, needle) in refused {
        let body = s.gw.get(path).await.assert_error(status);
        assert!(body["detail"].as_str().unwrap().contains(needle), "{path}: {body}");
    }
}

#[tokio::test]
async fn credentials_reach_git_only_through_askpass() {
    const TOKEN: &str = "tok-9f8e7d6c5b4a-never-show-me";
    let remote = Remote::new();
    let http = HttpRemote::start(&remote, TOKEN).await;
    let file = projects_file(
        remote.dir.path(),
        &[
            ("secure", &http.url, "token_env = \"SECURE_GIT_TOKEN\""),
            ("wrong", &http.url, "token_env = \"WRONG_GIT_TOKEN\""),
        ],
    );
    let file = file.display().to_string();
    let gw = Gateway::start(&[
        ("PROJECTS_FILE", &file),
        ("SECURE_GIT_TOKEN", TOKEN),
        ("WRONG_GIT_TOKEN", "not-the-token"),
        ("GIT_TIMEOUT_SECONDS", "60"),
    ])
    .await;
    let frames = gw
        .run_to_end(json!({
            "cli": "sh",
            "args": ["-c", "env; printf 'x\\n' > x.txt"],
            "workspace": {"project": "secure", "branch": "tok/1", "push": true},
        }))
        .await;
    assert_eq!(frames.exit(), (0, "exited".into()), "{}", frames.stderr());
    let git = git_frame(&frames);
    assert_eq!(
        (git["committed"].clone(), git["pushed"].clone(), git["error"].clone()),
        (json!(true), json!(true), Value::Null)
    );
    assert_eq!(remote.head("tok/1").as_deref(), git["head"].as_str());
    assert!(
        http.unauthorised.load(Ordering::SeqCst) >= 1,
        "git was asked for the credential"
    );
    assert!(
        http.authorised.load(Ordering::SeqCst) >= 2,
        "fetch and push were authorised"
    );
    assert_eq!(*http.token_on_a_command_line.lock().unwrap(), Vec::<String>::new());
    // The CLI gets neither the token nor its variable.
    assert!(!frames.stdout().contains(TOKEN) && !frames.stdout().contains("SECURE_GIT_TOKEN"));

    // Previews fetch with it too.
    let preview = gw.get("/projects/secure/file?path=README.md&ref=tok/1").await;
    assert_eq!(preview.json()["content"], README);

    // A wrong token: the fetch fails, the run is refused, and nothing says the token.
    let frames = gw
        .run_to_end(json!({"cli": "sh", "args": ["-c", "echo ran"], "workspace": {"project": "wrong", "branch": "w"}}))
        .await;
    assert_eq!(frames.exit(), (1, "workspace".into()));
    assert!(
        git_frame(&frames)["error"].as_str().unwrap().contains("cannot fetch"),
        "{:?}",
        values(&frames)
    );

    // Nowhere on disk: not in the logs, the records, the repositories' config or any file of
    // the workspaces (git's config, worktree links, the askpass helper).
    let mut files = vec![gw.data_dir.clone()];
    let mut checked = 0;
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().flatten().map(|e| e.path()));
        } else if let Ok(bytes) = std::fs::read(&path) {
            checked += 1;
            assert!(
                !String::from_utf8_lossy(&bytes).contains(TOKEN),
                "the token is in {}",
                path.display()
            );
        }
    }
    assert!(checked > 10, "{checked} files checked");
    let config = std::fs::read_to_string(gw.data_dir.join("workspaces/secure/repo.git/config")).unwrap();
    assert!(config.contains(&http.url) && !config.contains(TOKEN), "{config}");
    let askpass = gw.data_dir.join("workspaces/.askpass/askpass.sh");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&askpass).unwrap().permissions().mode() & 0o777, 0o700);
    let runs = gw.get("/runs").await;
    assert!(!String::from_utf8_lossy(&runs.body).contains(TOKEN));
}

#[tokio::test]
async fn a_state_key_gives_the_cli_a_home_that_outlives_its_run() {
    let gw = Gateway::start(&[]).await;
    let first = gw
        .run_to_end(json!({"cli": "sh", "args": ["-c", "echo $HOME; echo $CODEX_HOME; echo remembered > $HOME/note"], "state_key": "conv-1"}))
        .await;
    assert_eq!(first.exit(), (0, "exited".into()));
    let lines: Vec<String> = first.stdout().lines().map(String::from).collect();
    let home = std::path::absolute(gw.data_dir.join("state/_/conv-1")).unwrap();
    assert_eq!(
        lines,
        [home.display().to_string(), format!("{}/.codex", home.display())]
    );
    let again = gw
        .run_to_end(json!({"cli": "sh", "args": ["-c", "cat $HOME/note"], "state_key": "conv-1"}))
        .await;
    assert_eq!(again.stdout(), "remembered\n");
    let other = gw
        .run_to_end(json!({"cli": "sh", "args": ["-c", "cat $HOME/note 2>&1 || echo none"], "state_key": "conv-2"}))
        .await;
    assert!(other.stdout().contains("none"), "{}", other.stdout());
}

/// Waits until no process's command line names `needle`; panics after 10 s.
async fn assert_no_process_naming(needle: &str) {
    for _ in 0..200 {
        if command_lines_holding(needle).is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("still running: {:?}", command_lines_holding(needle));
}

#[tokio::test]
async fn a_remote_that_never_answers_is_bounded_by_the_git_timeout_and_by_a_stop() {
    let (url, _remote) = common::silent_remote().await;
    let dir = tempfile::tempdir().unwrap();
    let file = projects_file(dir.path(), &[("slow", &url, "")]).display().to_string();
    let run = |sid: &str| {
        json!({"cli": "sh", "args": ["-c", "echo ran"], "session_id": sid,
            "workspace": {"project": "slow", "branch": "b"}})
    };

    let gw = Gateway::start(&[("PROJECTS_FILE", &file), ("GIT_TIMEOUT_SECONDS", "1")]).await;
    let frames = gw.run_to_end(run("slow-1")).await;
    assert_eq!(frames.exit(), (1, "workspace".into()));
    assert!(!frames.stdout().contains("ran"));
    let error = git_frame(&frames)["error"].as_str().unwrap().to_string();
    assert!(
        error.contains("cannot fetch") && error.contains("GIT_TIMEOUT_SECONDS"),
        "{error}"
    );
    assert_no_process_naming(&url).await;
    drop(gw);

    // A stop while the fetch hangs ends the run at once, and git with it.
    let gw = Gateway::start(&[("PROJECTS_FILE", &file), ("GIT_TIMEOUT_SECONDS", "600")]).await;
    let mut stream = RunStream::open(gw.addr, run("slow-2").to_string().into_bytes(), &[]).await;
    assert_eq!(stream.status, 200);
    loop {
        let frame = serde_json::to_value(stream.next().await.expect("a frame")).unwrap();
        if frame["data"].as_str().is_some_and(|d| d.contains("git fetch origin")) {
            break;
        }
    }
    let stopped = gw.post("/sessions/slow-2/stop", "").await;
    assert_eq!(stopped.status, 200, "{:?}", stopped.body);
    let rest = values(&stream.collect().await);
    assert_eq!(
        rest.last().unwrap(),
        &json!({"type": "exit", "code": 143, "reason": "stopped"})
    );
    let git = &rest[rest.len() - 2];
    assert!(git["error"].as_str().unwrap().contains("stopped"), "{git}");
    assert_no_process_naming(&url).await;
    // The branch is free again (a detached run on it is taken, then stopped).
    let again = gw.post("/runs", &run("slow-3").to_string()).await;
    assert_eq!(again.status, 202, "{:?}", again.body);
    let run_id = again.json()["run_id"].as_str().unwrap().to_string();
    assert_eq!(gw.post(&format!("/runs/{run_id}/stop"), "").await.status, 200);
}

#[tokio::test]
async fn a_cli_that_repoints_the_worktrees_git_link_cannot_make_the_gateways_git_run_its_code() {
    let s = setup(&[]).await;
    let evil = tempfile::tempdir().unwrap();
    let marker = evil.path().join("filter-ran");
    // The CLI makes a repository whose config defines a filter, points the worktree's `.git`
    // at it and asks for the filter on every file: a gateway that read that `.git` would run it
    // on `git add`.
    let script = format!(
        "git init -q {dir}/r && git -C {dir}/r config filter.evil.clean 'touch {marker}; cat' && \
         printf 'gitdir: {dir}/r/.git\\n' > .git && printf '* filter=evil\\n' > .gitattributes && \
         printf 'x\\n' > x.txt",
        dir = evil.path().display(),
        marker = marker.display(),
    );
    let frames = s.gw.run_to_end(branch_run("evil", &script, true)).await;
    assert_eq!(frames.exit(), (0, "exited".into()), "{}", frames.stderr());
    let git = git_frame(&frames);
    assert_eq!(
        (git["committed"].clone(), git["pushed"].clone(), git["error"].clone()),
        (json!(true), json!(true), Value::Null)
    );
    assert!(!marker.exists(), "the gateway's git ran the CLI's filter");
    let head = s.remote.head("evil").unwrap();
    assert_eq!(git_in(&s.remote.bare(), &["show", &format!("{head}:x.txt")]), "x");
    // The next run on the branch is set up as usual.
    let frames = s.gw.run_to_end(branch_run("evil", "cat x.txt", false)).await;
    assert_eq!(frames.stdout(), "x\n", "{}", frames.stderr());
    assert!(!marker.exists());
}

/// The value of the metric line starting with `name ` (0 when absent).
async fn metric(gw: &Gateway, name: &str) -> u64 {
    let text = String::from_utf8(gw.get("/metrics").await.body.to_vec()).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn an_idle_worktree_is_removed_its_branch_kept_and_a_held_one_spared() {
    let s = setup(&[("WORKSPACE_TREE_IDLE_SECONDS", "1")]).await;
    let trees = s.gw.data_dir.join("workspaces/demo/trees");
    let repo = s.gw.data_dir.join("workspaces/demo/repo.git");
    let frames =
        s.gw.run_to_end(branch_run("idle/one", "printf 'kept\\n' > kept.txt", false))
            .await;
    assert_eq!(frames.exit(), (0, "exited".into()), "{}", frames.stderr());
    let head = git_frame(&frames)["head"].clone();
    let idle_tree = trees.join("idle%2Fone");
    assert!(idle_tree.join("kept.txt").exists());

    // A run that holds its branch for longer than the idle time.
    let flags = tempfile::tempdir().unwrap();
    let go = flags.path().join("go");
    let script = format!("echo ready; while [ ! -e {} ]; do sleep 0.05; done", go.display());
    let mut held = open_ready(&s.gw, branch_run("held", &script, false)).await;
    let held_tree = trees.join("held");

    let start = Instant::now();
    while idle_tree.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "the idle worktree was not removed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(metric(&s.gw, "cligate_worktrees_removed_total").await, 1);
    assert!(
        !git(&repo, &["worktree", "list"]).contains("idle%2Fone"),
        "git forgot the worktree too"
    );
    // Several sweeps pass while the held branch's worktree is older than the idle time.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert!(
        held_tree.join(".git").exists(),
        "the worktree of a running run was removed"
    );
    std::fs::write(&go, "").unwrap();
    assert_eq!(serde_json::to_value(held.until("exit").await).unwrap()["code"], 0);

    // The branch and its commit stayed: the next run checks it out again and finds its work.
    let frames = s.gw.run_to_end(branch_run("idle/one", "cat kept.txt", false)).await;
    assert_eq!(frames.stdout(), "kept\n", "{}", frames.stderr());
    assert_eq!(git_frame(&frames)["head"], head);
    assert!(frames.stderr().contains("git worktree add"), "{}", frames.stderr());
}
