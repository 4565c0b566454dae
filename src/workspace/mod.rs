//! Workspaces: a run on a git branch of one of the operator's projects, and persistent CLI
//! homes (`state_key`). The run service calls this module — claim at submit, prepare before the
//! CLI, finish after it — and this module never calls the run service.
//!
//! Layout (`WORKSPACE_ROOT`, default `$DATA_DIR/workspaces`):
//!
//! ```text
//! <project>/repo.git            one bare repository per project (origin = the project's URL)
//! <project>/trees/<branch>      one `git worktree` per branch ('/' written as %2F)
//! .askpass/askpass.sh           the GIT_ASKPASS helper (0700, in a 0700 directory)
//! ```
//!
//! and `$DATA_DIR/state/<owner>/<state_key>` for the homes (the owner part keeps one token's
//! conversations from another's).
//!
//! A worktree unused for `WORKSPACE_TREE_IDLE_SECONDS` is removed by [`Workspaces::sweep_idle_trees`]
//! (the branch and its commits stay in the repository; the next run on it checks it out again),
//! so a gateway that serves many branches does not keep a checkout of each forever.
//!
//! A branch is busy while a run on it is queued or running; a second run on it is refused at
//! submit with 409 (`busy`), as is a second run with a state key in use: simple and
//! predictable, no hidden queue, and the client decides when to retry. Runs on different
//! branches of a project run in parallel; the project's network and ref steps (fetch, branch
//! creation, worktree set-up, push) take turns on a per-project lock.

pub mod branch;
pub mod git;
pub mod preview;
pub mod projects;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::run::frame::{Stream, encode_output};
use crate::runlog::RunLog;
use git::{Failure, Git, Output};
use projects::Credential;
use projects::{Project, Projects};

/// Where the worktree is mounted in a container, and its working directory.
pub const CONTAINER_WORKDIR: &str = "/workspace";
/// Where a state home is mounted in a container (and its `HOME`).
pub const CONTAINER_HOME: &str = "/cligate-home";

/// A run's `workspace`, validated: the project exists, the names are branch names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkspaceSpec {
    pub project: String,
    pub branch: String,
    /// Where a new branch starts (`origin/<base>`); the project's default when not given.
    pub base: String,
    /// Commit what the CLI changed (default true).
    pub commit: bool,
    /// `None`: a message naming the CLI and the run.
    pub commit_message: Option<String>,
    /// Push the branch after the run (default false).
    pub push: bool,
}

/// A directory a run uses: its path here, and the same directory as the docker engine sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dir {
    pub local: PathBuf,
    pub host: PathBuf,
}

/// Where a run works and keeps its home; filled in by the run service before planning.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Place {
    /// The branch's worktree: the CLI's working directory.
    pub workdir: Option<Dir>,
    /// The `state_key`'s home: `HOME`, `CODEX_HOME` and the XDG directories point into it.
    pub home: Option<Dir>,
}

impl Place {
    /// The variables that point a CLI at its home `home` (a path as the CLI sees it).
    pub fn home_env(home: &str) -> Vec<(String, String)> {
        [
            ("HOME", ""),
            ("CODEX_HOME", "/.codex"),
            ("XDG_CONFIG_HOME", "/.config"),
            ("XDG_DATA_HOME", "/.local/share"),
            ("XDG_STATE_HOME", "/.local/state"),
            ("XDG_CACHE_HOME", "/.cache"),
        ]
        .iter()
        .map(|(k, suffix)| (k.to_string(), format!("{home}{suffix}")))
        .collect()
    }
}

/// The `git` frame and the record's `git` field: how the run's branch ended up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GitReport {
    pub project: String,
    pub branch: String,
    /// The branch's commit after the run (`null` when it could not be set up).
    pub head: Option<String>,
    /// Whether the run's changes were committed.
    pub committed: bool,
    /// Whether the branch was pushed to the remote.
    pub pushed: bool,
    /// What went wrong, if anything (a failed push keeps the commit).
    pub error: Option<String>,
}

/// Why a run cannot be submitted now.
#[derive(Debug)]
pub struct Busy(pub String);

/// Something a queued or running run holds so that no other run has it at the same time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldKind {
    /// A workspace's branch.
    Branch,
    /// A state key (per owner).
    StateKey,
}

impl HoldKind {
    fn prefix(self) -> &'static str {
        match self {
            HoldKind::Branch => "branch\0",
            HoldKind::StateKey => "state\0",
        }
    }
}

/// One hold of a run: what it is, its value as recorded (`branch_hold` / `state_hold` of the
/// run's record: a JSON array, `["<project>","<branch>"]` or `["<owner>","<state_key>"]`), and
/// the refusal a second run gets while it is held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    pub kind: HoldKind,
    pub value: String,
    pub busy: String,
}

impl Hold {
    /// Its key in the gateway's own set of holds.
    fn key(&self) -> String {
        format!("{}{}", self.kind.prefix(), self.value)
    }
}

/// What a run with these settings holds while it is queued or running.
pub fn holds(workspace: Option<&WorkspaceSpec>, state_key: Option<&str>, owner: Option<&str>) -> Vec<Hold> {
    let pair = |a: &str, b: &str| serde_json::to_string(&[a, b]).expect("strings serialise");
    let mut holds = Vec::new();
    if let Some(w) = workspace {
        holds.push(Hold {
            kind: HoldKind::Branch,
            value: pair(&w.project, &w.branch),
            busy: format!(
                "branch '{}' of project '{}' is busy: another run on it is queued or running; retry when it has ended",
                w.branch, w.project
            ),
        });
    }
    if let Some(key) = state_key {
        holds.push(Hold {
            kind: HoldKind::StateKey,
            value: pair(owner.unwrap_or(""), key),
            busy: format!(
                "state_key '{key}' is busy: another run with it is queued or running; retry when it has ended"
            ),
        });
    }
    holds
}

/// A run's hold on its branch and state key; dropping it frees them.
#[derive(Debug, Default)]
pub struct Claim {
    keys: Vec<String>,
    busy: Option<Arc<Mutex<HashSet<String>>>>,
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let Some(busy) = &self.busy {
            let mut busy = busy.lock().expect("not poisoned");
            for key in &self.keys {
                busy.remove(key);
            }
        }
    }
}

/// A branch's worktree and the options that point git at it (see [`Workspaces::worktree`]).
#[derive(Debug)]
struct Tree {
    dir: PathBuf,
    git_dir: String,
    work_tree: String,
}

/// Per project: the lock its network and ref steps take turns on, and when a preview of a ref
/// it did not know last made it fetch.
#[derive(Debug, Default)]
struct ProjectState {
    refetched: Option<Instant>,
}

/// The workspace service.
#[derive(Debug)]
pub struct Workspaces {
    projects: Projects,
    root: PathBuf,
    host_root: Option<PathBuf>,
    state_root: PathBuf,
    pub git: Git,
    busy: Arc<Mutex<HashSet<String>>>,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<ProjectState>>>>,
}

/// Previews of refs the repository does not know make it fetch at most this often.
const REFETCH: Duration = Duration::from_secs(10);

impl Workspaces {
    /// Creates `WORKSPACE_ROOT` and the askpass helper.
    pub fn open(config: &Config) -> anyhow::Result<Workspaces> {
        let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        let root = absolute(&config.workspace_root);
        std::fs::create_dir_all(&root)
            .map_err(|e| anyhow::anyhow!("WORKSPACE_ROOT: cannot create '{}': {e}", root.display()))?;
        if config.docker().is_some() {
            for (name, path) in [
                ("WORKSPACE_ROOT", Some(&root)),
                ("WORKSPACE_HOST_ROOT", config.workspace_host_root.as_ref()),
            ] {
                if path.is_some_and(|p| p.to_string_lossy().contains([':', ','])) {
                    anyhow::bail!("{name}: a path mounted into containers may not contain ':' or ','");
                }
            }
        }
        let git = Git::new(
            &root.join(".askpass"),
            config.git_timeout,
            config.git_author.clone(),
            config.projects.secret_variables(),
        )
        .map_err(|e| anyhow::anyhow!("WORKSPACE_ROOT: cannot write the askpass helper: {e}"))?;
        Ok(Workspaces {
            projects: config.projects.clone(),
            root,
            host_root: config.workspace_host_root.clone(),
            state_root: absolute(&config.data_dir.join("state")),
            git,
            busy: Arc::default(),
            locks: Mutex::default(),
        })
    }

    pub fn projects(&self) -> &Projects {
        &self.projects
    }

    /// Claims the run's branch and state key, or says which is busy (409).
    pub fn claim(
        &self,
        workspace: Option<&WorkspaceSpec>,
        state_key: Option<&str>,
        owner: Option<&str>,
    ) -> Result<Claim, Busy> {
        let holds = holds(workspace, state_key, owner);
        if holds.is_empty() {
            return Ok(Claim::default());
        }
        let keys: Vec<String> = holds.iter().map(Hold::key).collect();
        let mut busy = self.busy.lock().expect("not poisoned");
        if let Some((_, hold)) = keys.iter().zip(&holds).find(|(k, _)| busy.contains(*k)) {
            return Err(Busy(hold.busy.clone()));
        }
        for k in &keys {
            busy.insert(k.clone());
        }
        Ok(Claim {
            keys,
            busy: Some(self.busy.clone()),
        })
    }

    /// The run's directories (the state home is created here, 0700).
    pub fn place(
        &self,
        workspace: Option<&WorkspaceSpec>,
        state_key: Option<&str>,
        owner: Option<&str>,
    ) -> std::io::Result<Place> {
        let workdir = workspace.map(|w| self.dir(self.tree_dir(&w.project, &w.branch)));
        let home = match state_key {
            None => None,
            Some(key) => {
                let owner_dir = match owner {
                    None => "_".to_string(),
                    Some(name) => format!("o-{}", &hex(&Sha256::digest(name.as_bytes()))[..16]),
                };
                let path = self.state_root.join(owner_dir).join(key);
                std::fs::create_dir_all(&path)?;
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700))?;
                Some(Dir {
                    host: path.clone(),
                    local: path,
                })
            }
        };
        Ok(Place { workdir, home })
    }

    fn dir(&self, local: PathBuf) -> Dir {
        let host = match (&self.host_root, local.strip_prefix(&self.root)) {
            (Some(host_root), Ok(rel)) => host_root.join(rel),
            _ => local.clone(),
        };
        Dir { local, host }
    }

    fn repo_dir(&self, project: &str) -> PathBuf {
        self.root.join(project).join("repo.git")
    }

    fn tree_dir(&self, project: &str, branch_name: &str) -> PathBuf {
        self.root
            .join(project)
            .join("trees")
            .join(branch::dir_name(branch_name))
    }

    fn project(&self, id: &str) -> Result<&Project, String> {
        self.projects
            .get(id)
            .ok_or_else(|| format!("project '{id}' is not configured"))
    }

    fn lock(&self, project: &str) -> Arc<tokio::sync::Mutex<ProjectState>> {
        self.locks
            .lock()
            .expect("not poisoned")
            .entry(project.to_string())
            .or_default()
            .clone()
    }

    /// The project's bare repository, created (with `origin`) when missing. Under the
    /// project's lock.
    async fn ensure_repo(&self, project: &Project) -> Result<PathBuf, Failure> {
        let repo = self.repo_dir(&project.id);
        if !repo.join("HEAD").is_file() {
            let parent = repo.parent().expect("under the root");
            std::fs::create_dir_all(parent).map_err(Failure::Spawn)?;
            let temp = parent.join(format!("repo.git.{}.tmp", uuid::Uuid::new_v4().simple()));
            let temp_name = temp.file_name().unwrap().to_string_lossy().to_string();
            self.git
                .check(parent, &["init", "--bare", "--quiet", &temp_name], None)
                .await?;
            std::fs::rename(&temp, &repo).map_err(Failure::Spawn)?;
        }
        // Every time: the projects file may have changed since the repository was made.
        self.git
            .check(&repo, &["config", "remote.origin.url", &project.url], None)
            .await?;
        self.git
            .check(
                &repo,
                &["config", "remote.origin.fetch", "+refs/heads/*:refs/remotes/origin/*"],
                None,
            )
            .await?;
        Ok(repo)
    }

    /// Fetches every branch of the remote (under the project's lock).
    async fn fetch(&self, repo: &Path, project: &Project) -> Result<(), Failure> {
        self.git
            .check(
                repo,
                &["fetch", "--quiet", "--prune", "--no-tags", "origin"],
                project.credential.as_ref(),
            )
            .await
            .map(|_| ())
    }

    /// The commit `reference` names in `dir`, if it names one.
    async fn resolve(&self, dir: &Path, reference: &str) -> Result<Option<String>, Failure> {
        let spec = format!("{reference}^{{commit}}");
        let out = self
            .git
            .run(
                dir,
                &["rev-parse", "--verify", "--quiet", "--end-of-options", &spec],
                None,
            )
            .await?;
        Ok(out.ok().then(|| out.text()).filter(|s| !s.is_empty()))
    }

    /// The branch's worktree, with its git directory found from the repository's side: the
    /// `worktrees/*/gitdir` file (which the CLI cannot reach in docker mode) that names the
    /// worktree. Git is then always pointed at that directory explicitly and never reads the
    /// worktree's own `.git` file, which a container can rewrite to point git at a
    /// configuration of its choosing (a `filter` that `git add` would run here, an `insteadOf`
    /// that would send the credential elsewhere).
    fn worktree(&self, project: &str, branch_name: &str) -> Result<Tree, Failure> {
        let dir = self.tree_dir(project, branch_name);
        let missing = || {
            Failure::Failed(format!(
                "the worktree of branch '{branch_name}' is not registered in the repository"
            ))
        };
        let real = std::fs::canonicalize(&dir).map_err(|_| missing())?;
        let registered = std::fs::read_dir(self.repo_dir(project).join("worktrees")).map_err(|_| missing())?;
        for entry in registered.flatten() {
            let Ok(named) = std::fs::read_to_string(entry.path().join("gitdir")) else {
                continue;
            };
            let names_it = Path::new(named.trim())
                .parent()
                .and_then(|p| std::fs::canonicalize(p).ok())
                .is_some_and(|p| p == real);
            if names_it {
                return Ok(Tree {
                    git_dir: format!("--git-dir={}", entry.path().display()),
                    work_tree: format!("--work-tree={}", dir.display()),
                    dir,
                });
            }
        }
        Err(missing())
    }

    /// `git --git-dir=… --work-tree=… <args>` in the worktree.
    async fn in_tree(&self, tree: &Tree, args: &[&str], credential: Option<&Credential>) -> Result<Output, Failure> {
        let mut all = vec![tree.git_dir.as_str(), tree.work_tree.as_str()];
        all.extend_from_slice(args);
        self.git.check(&tree.dir, &all, credential).await
    }

    /// [`Workspaces::resolve`] in the worktree.
    async fn resolve_in(&self, tree: &Tree, reference: &str) -> Result<Option<String>, Failure> {
        let spec = format!("{reference}^{{commit}}");
        let mut all = vec![tree.git_dir.as_str(), tree.work_tree.as_str()];
        all.extend_from_slice(&["rev-parse", "--verify", "--quiet", "--end-of-options", &spec]);
        let out = self.git.run(&tree.dir, &all, None).await?;
        Ok(out.ok().then(|| out.text()).filter(|s| !s.is_empty()))
    }

    /// Before the CLI: fetch; create the branch from `origin/<base>` when it is new (or from
    /// `origin/<branch>` when only the remote has it); check out its worktree, cleaned of
    /// whatever an interrupted run left uncommitted; fast-forward to the remote. Local commits
    /// are never dropped: when the branch is ahead of the remote (an earlier push failed) they
    /// are pushed first if the run pushes, and a branch that has diverged is refused. Each step
    /// is said in the run's log. Returns the message to refuse the run with.
    pub async fn prepare(&self, w: &WorkspaceSpec, log: &RunLog) -> Result<(), String> {
        let project = self.project(&w.project)?;
        let tree_path = self.tree_dir(&w.project, &w.branch);
        let remote_ref = format!("refs/remotes/origin/{}", w.branch);
        let lock = self.lock(&project.id);
        let failed = |what: &str, e: Failure| format!("{what}: {e}");
        {
            let _state = lock.lock().await;
            say(
                log,
                &format!("preparing branch '{}' of project '{}'", w.branch, w.project),
            );
            let repo = self
                .ensure_repo(project)
                .await
                .map_err(|e| failed("cannot set up the repository", e))?;
            say(log, "git fetch origin");
            self.fetch(&repo, project)
                .await
                .map_err(|e| failed("cannot fetch from the project's remote", e))?;
            let local = self
                .resolve(&repo, &format!("refs/heads/{}", w.branch))
                .await
                .map_err(|e| failed("git", e))?;
            if local.is_none() {
                let remote = self.resolve(&repo, &remote_ref).await.map_err(|e| failed("git", e))?;
                let (start, from) = match remote {
                    Some(sha) => (sha, format!("origin/{}", w.branch)),
                    None => {
                        let base = self
                            .resolve(&repo, &format!("refs/remotes/origin/{}", w.base))
                            .await
                            .map_err(|e| failed("git", e))?
                            .ok_or_else(|| {
                                format!(
                                    "base branch '{}' does not exist on the remote of project '{}'",
                                    w.base, w.project
                                )
                            })?;
                        (base, format!("origin/{}", w.base))
                    }
                };
                say(
                    log,
                    &format!("creating branch '{}' from {from} ({})", w.branch, short(&start)),
                );
                let new_ref = format!("refs/heads/{}", w.branch);
                self.git
                    .check(&repo, &["update-ref", &new_ref, &start, ""], None)
                    .await
                    .map_err(|e| failed("cannot create the branch", e))?;
            }
            if !tree_path.join(".git").exists() {
                if tree_path.exists() {
                    std::fs::remove_dir_all(&tree_path).map_err(|e| format!("cannot remove a broken worktree: {e}"))?;
                }
                self.git
                    .check(&repo, &["worktree", "prune"], None)
                    .await
                    .map_err(|e| failed("git", e))?;
                let tree_arg = tree_path.to_string_lossy().to_string();
                say(log, &format!("git worktree add for '{}'", w.branch));
                self.git
                    .check(&repo, &["worktree", "add", "--quiet", &tree_arg, &w.branch], None)
                    .await
                    .map_err(|e| failed("cannot create the branch's worktree", e))?;
            }
        }
        let tree = self.worktree(&w.project, &w.branch).map_err(|e| failed("git", e))?;
        mark_used(&tree.dir);
        // What an interrupted run left uncommitted is not this run's to commit.
        self.in_tree(&tree, &["reset", "--quiet", "--hard", "HEAD"], None)
            .await
            .map_err(|e| failed("cannot clean the worktree", e))?;
        self.in_tree(&tree, &["clean", "-ffdq"], None)
            .await
            .map_err(|e| failed("cannot clean the worktree", e))?;
        let remote = self
            .resolve_in(&tree, &remote_ref)
            .await
            .map_err(|e| failed("git", e))?;
        let range = remote.as_ref().map(|r| format!("HEAD...{r}"));
        let args: &[&str] = match &range {
            // Commits only here, and commits only on the remote.
            Some(range) => &["rev-list", "--left-right", "--count", range],
            // A branch the remote does not have: what is on no remote branch is only here.
            None => &["rev-list", "--count", "HEAD", "--not", "--remotes=origin"],
        };
        let counts = self
            .in_tree(&tree, args, None)
            .await
            .map_err(|e| failed("git", e))?
            .text();
        let mut parts = counts.split_whitespace().map(|n| n.parse::<u64>().unwrap_or(0));
        let (ahead, behind) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        let remote = remote.unwrap_or_default();
        match (ahead, behind) {
            (0, 0) => {}
            (0, _) => {
                say(
                    log,
                    &format!("fast-forwarding to origin/{} ({})", w.branch, short(&remote)),
                );
                self.in_tree(&tree, &["merge", "--quiet", "--ff-only", &remote], None)
                    .await
                    .map_err(|e| failed("cannot fast-forward to the remote", e))?;
            }
            (_, 0) if w.push => {
                say(
                    log,
                    &format!(
                        "the branch has {ahead} commit(s) not on the remote (an earlier push failed): pushing them first"
                    ),
                );
                let _state = lock.lock().await;
                self.push(&w.branch, project).await.map_err(|e| {
                    format!(
                        "branch '{}' has {ahead} commit(s) that are not on the remote, and pushing them failed: {e}; \
                         the run was refused and nothing was reset",
                        w.branch
                    )
                })?;
            }
            (_, 0) => say(
                log,
                &format!("keeping {ahead} local commit(s) not on the remote (push is off)"),
            ),
            _ => {
                return Err(format!(
                    "branch '{}' and origin/{} have diverged ({ahead} local, {behind} remote commit(s)); the run was \
                     refused rather than drop commits",
                    w.branch, w.branch
                ));
            }
        }
        Ok(())
    }

    async fn push(&self, branch_name: &str, project: &Project) -> Result<(), Failure> {
        let repo = self.repo_dir(&project.id);
        let refspec = format!("refs/heads/{branch_name}:refs/heads/{branch_name}");
        self.git
            .check(
                &repo,
                &["push", "--quiet", "origin", &refspec],
                project.credential.as_ref(),
            )
            .await
            .map(|_| ())
    }

    /// After the CLI: commit what it changed (when asked), push (when asked), and report.
    pub async fn finish(&self, w: &WorkspaceSpec, default_message: &str, log: &RunLog) -> GitReport {
        let mut report = GitReport {
            project: w.project.clone(),
            branch: w.branch.clone(),
            head: None,
            committed: false,
            pushed: false,
            error: None,
        };
        let Ok(project) = self.project(&w.project) else {
            report.error = Some(format!("project '{}' is not configured", w.project));
            return report;
        };
        let tree = match self.worktree(&w.project, &w.branch) {
            Ok(tree) => tree,
            Err(e) => {
                report.error = Some(format!("cannot commit: {e}"));
                return report;
            }
        };
        mark_used(&tree.dir);
        let step = async {
            let status = self
                .in_tree(&tree, &["status", "--porcelain", "--untracked-files=all"], None)
                .await?;
            let changed = status.text().lines().count();
            if changed == 0 {
                say(log, "nothing to commit");
            } else if w.commit {
                self.in_tree(&tree, &["add", "--all"], None).await?;
                let message = w.commit_message.as_deref().unwrap_or(default_message);
                self.in_tree(
                    &tree,
                    &[
                        "commit",
                        "--quiet",
                        "--no-verify",
                        "--allow-empty-message",
                        "-m",
                        message,
                    ],
                    None,
                )
                .await?;
                report.committed = true;
            } else {
                say(
                    log,
                    &format!("{changed} changed path(s) left uncommitted (commit is off)"),
                );
            }
            Ok::<_, Failure>(())
        };
        if let Err(e) = step.await {
            report.error = Some(format!("cannot commit: {e}"));
        }
        report.head = self.resolve_in(&tree, "HEAD").await.ok().flatten();
        if let (true, Some(head)) = (report.committed, &report.head) {
            say(log, &format!("committed {}", short(head)));
        }
        if w.push && report.error.is_none() {
            say(log, &format!("git push origin {}", w.branch));
            let lock = self.lock(&project.id);
            let _state = lock.lock().await;
            match self.push(&w.branch, project).await {
                Ok(()) => report.pushed = true,
                Err(e) => {
                    let e = format!("push failed (the commit is kept on the branch): {e}");
                    say(log, &e);
                    report.error = Some(e);
                }
            }
        }
        report
    }

    /// The project's repository for a preview, fetched when it has never been; `refetch`
    /// fetches again (at most every [`REFETCH`]).
    async fn preview_repo(&self, project: &Project, refetch: bool) -> Result<PathBuf, Failure> {
        let lock = self.lock(&project.id);
        let mut state = lock.lock().await;
        let repo = self.repo_dir(&project.id);
        let fresh = !repo.join("HEAD").is_file();
        let repo = if fresh { self.ensure_repo(project).await? } else { repo };
        let due = state.refetched.is_none_or(|t| t.elapsed() >= REFETCH);
        if fresh || (refetch && due) {
            self.fetch(&repo, project).await?;
        }
        if refetch && due {
            state.refetched = Some(Instant::now());
        }
        Ok(repo)
    }
}

/// Writes `text` to the run's log as a stderr line of the gateway's own.
impl Workspaces {
    /// Removes the worktrees of every project that no run has used for `idle` (by the time
    /// [`mark_used`] left on them) and that no queued or running run holds; returns how many.
    /// The branch and its commits stay in the project's repository. Each removal is done under
    /// the project's lock after checking the branch is not claimed: a run claims its branch
    /// before it prepares, and prepares under the same lock, so a run either holds the branch
    /// (and the tree is spared) or prepares after the removal (and checks the branch out again).
    pub async fn sweep_idle_trees(&self, idle: Duration) -> usize {
        let mut removed = 0;
        for project in self.projects.0.keys() {
            let trees = self.root.join(project).join("trees");
            let Ok(entries) = std::fs::read_dir(&trees) else {
                continue;
            };
            let idle_trees: Vec<PathBuf> = entries
                .flatten()
                .map(|e| e.path())
                .filter(|path| unused_for(path, idle))
                .collect();
            if idle_trees.is_empty() {
                continue;
            }
            let lock = self.lock(project);
            let _state = lock.lock().await;
            let repo = self.repo_dir(project);
            for path in idle_trees {
                let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
                // Looked at again under the lock: a run may have used it since.
                if name.is_none_or(|n| self.branch_claimed(project, &n)) || !unused_for(&path, idle) {
                    continue;
                }
                let arg = path.to_string_lossy().into_owned();
                let gone = match self
                    .git
                    .check(&repo, &["worktree", "remove", "--force", &arg], None)
                    .await
                {
                    Ok(_) => true,
                    // Not a registered worktree (a broken one): its directory goes, and git
                    // forgets whatever it still recorded for it.
                    Err(e) => {
                        tracing::debug!(path = %path.display(), error = %e, "git worktree remove");
                        let deleted = std::fs::remove_dir_all(&path).is_ok();
                        let _ = self.git.check(&repo, &["worktree", "prune"], None).await;
                        deleted
                    }
                };
                if gone {
                    tracing::info!(project = project.as_str(), path = %path.display(), "removed an idle worktree");
                    removed += 1;
                } else {
                    tracing::warn!(project = project.as_str(), path = %path.display(), "cannot remove an idle worktree");
                }
            }
        }
        removed
    }

    /// Whether a queued or running run holds the branch whose worktree directory is `dir_name`.
    fn branch_claimed(&self, project: &str, dir_name: &str) -> bool {
        self.busy
            .lock()
            .expect("not poisoned")
            .iter()
            .filter_map(|key| key.strip_prefix(HoldKind::Branch.prefix()))
            .filter_map(|value| serde_json::from_str::<(String, String)>(value).ok())
            .any(|(p, b)| p == project && branch::dir_name(&b) == dir_name)
    }
}

/// Records that a run used the worktree at `dir` now (its modification time; see
/// [`Workspaces::sweep_idle_trees`]).
fn mark_used(dir: &Path) {
    let now = std::time::SystemTime::now();
    if let Err(e) = std::fs::File::open(dir).and_then(|d| d.set_modified(now)) {
        tracing::debug!(path = %dir.display(), error = %e, "cannot mark a worktree used");
    }
}

/// Whether the directory at `path` was last marked used longer than `idle` ago.
fn unused_for(path: &Path, idle: Duration) -> bool {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .is_ok_and(|t| t.elapsed().is_ok_and(|age| age >= idle))
}

pub fn say(log: &RunLog, text: &str) {
    let mut out = BytesMut::new();
    encode_output(Stream::Stderr, &format!("cligate: workspace: {text}\n"), &mut out);
    let _ = log.append(out.freeze());
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worktrees_map_to_the_host_root_and_homes_are_per_owner() {
        let tmp = tempfile::tempdir().unwrap();
        let config = Config::from_vars([
            ("DATA_DIR".to_string(), tmp.path().display().to_string()),
            ("WORKSPACE_HOST_ROOT".to_string(), "/srv/cligate/ws".to_string()),
        ])
        .unwrap();
        let ws = Workspaces::open(&config).unwrap();
        let w = WorkspaceSpec {
            project: "p".into(),
            branch: "codex/1".into(),
            base: "dev".into(),
            commit: true,
            commit_message: None,
            push: false,
        };
        let alice = ws.place(Some(&w), Some("k"), Some("alice")).unwrap();
        let workdir = alice.workdir.unwrap();
        assert_eq!(workdir.host, Path::new("/srv/cligate/ws/p/trees/codex%2F1"));
        assert_eq!(workdir.local, tmp.path().join("workspaces/p/trees/codex%2F1"));
        let home = alice.home.unwrap();
        assert!(home.local.starts_with(tmp.path().join("state")) && home.local.ends_with("k"));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&home.local).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let bob = ws.place(None, Some("k"), Some("bob")).unwrap();
        assert!(bob.workdir.is_none());
        assert_ne!(
            bob.home.unwrap().local,
            home.local,
            "one token cannot use another's home"
        );
        let open = ws.place(None, Some("k"), None).unwrap();
        assert_eq!(open.home.unwrap().local, tmp.path().join("state/_/k"));
    }

    #[test]
    fn a_branch_and_a_state_key_are_held_until_the_claim_is_dropped() {
        let tmp = tempfile::tempdir().unwrap();
        let config = Config::from_vars([("DATA_DIR".to_string(), tmp.path().display().to_string())]).unwrap();
        let ws = Workspaces::open(&config).unwrap();
        let w = WorkspaceSpec {
            project: "p".into(),
            branch: "b".into(),
            base: "dev".into(),
            commit: true,
            commit_message: None,
            push: false,
        };
        let claim = ws.claim(Some(&w), Some("k"), None).unwrap();
        assert!(
            ws.claim(Some(&w), None, None)
                .unwrap_err()
                .0
                .contains("branch 'b' of project 'p' is busy")
        );
        assert!(
            ws.claim(None, Some("k"), None)
                .unwrap_err()
                .0
                .contains("state_key 'k' is busy")
        );
        // Another token's key of the same name is another home.
        assert!(ws.claim(None, Some("k"), Some("alice")).is_ok());
        // A refused claim takes nothing.
        let other = WorkspaceSpec {
            branch: "c".into(),
            ..w.clone()
        };
        assert!(ws.claim(Some(&other), Some("k"), None).is_err());
        drop(claim);
        let _both = ws.claim(Some(&other), Some("k"), None).unwrap();
        assert!(ws.claim(Some(&w), None, None).is_ok());
    }
}
