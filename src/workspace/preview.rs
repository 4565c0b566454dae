//! Previews of git-tracked content at a ref: a directory listing and a file, read from the
//! project's repository with `git ls-tree` and `git cat-file` (never from a worktree, so a
//! run in progress changes nothing a preview shows, and nothing outside the tree can be read).
//!
//! Paths are relative and normalised (`.` and empty components dropped); `..`, an absolute
//! path or NUL is refused. A ref is resolved as a local branch, then a remote branch, then
//! anything `git rev-parse --verify <ref>^{commit}` accepts (a commit id, a tag); a ref starting
//! with `-` is refused.

use serde::Serialize;

use super::Workspaces;
use super::git::Failure;

/// Entries listed at most, and the default.
pub const MAX_ENTRIES: usize = 100_000;
pub const DEFAULT_ENTRIES: usize = 1000;
/// Bytes of a file returned at most, and the default.
pub const MAX_FILE_BYTES: usize = 16 << 20;
pub const DEFAULT_FILE_BYTES: usize = 1 << 20;
/// Bytes looked at for a NUL to call a file binary (git's own heuristic).
const BINARY_PROBE: usize = 8000;

/// Why a preview has no answer; the API maps each to a status.
#[derive(Debug, PartialEq, Eq)]
pub enum PreviewError {
    /// 400: a bad path, ref or parameter.
    Invalid(String),
    /// 404: unknown project, ref or path.
    NotFound(String),
    /// 415: the file is not text.
    Binary(String),
    /// 503: git failed (remote down, timeout).
    Unavailable(String),
}

impl From<Failure> for PreviewError {
    fn from(e: Failure) -> PreviewError {
        PreviewError::Unavailable(e.to_string())
    }
}

/// One entry of a listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// `tree`, `blob` or `commit` (a submodule).
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub path: String,
    /// Bytes of a blob; `null` otherwise.
    pub size: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Tree {
    pub project: String,
    #[serde(rename = "ref")]
    pub reference: String,
    /// The commit the ref named.
    pub commit: String,
    pub path: String,
    pub entries: Vec<Entry>,
    pub truncated: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct File {
    pub project: String,
    #[serde(rename = "ref")]
    pub reference: String,
    pub commit: String,
    pub path: String,
    pub size: u64,
    pub truncated: bool,
    pub content: String,
}

/// `path` as git names it inside a tree: relative, `/`-separated, no `.`/empty components.
pub fn normalise(path: &str) -> Result<String, PreviewError> {
    let invalid = |why: &str| Err(PreviewError::Invalid(format!("path '{}' {why}", path.escape_debug())));
    if path.contains('\0') {
        return invalid("contains NUL");
    }
    if path.starts_with('/') {
        return invalid("is absolute; paths are relative to the repository's root");
    }
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => return invalid("contains '..'"),
            p => parts.push(p),
        }
    }
    Ok(parts.join("/"))
}

fn check_ref(reference: &str) -> Result<(), PreviewError> {
    if reference.is_empty() || reference.starts_with('-') || reference.contains(['\0', '\n']) || reference.len() > 255 {
        return Err(PreviewError::Invalid(format!(
            "ref '{}' must be 1 to 255 bytes, not start with '-', and hold no NUL or newline",
            reference.escape_debug()
        )));
    }
    Ok(())
}

impl Workspaces {
    /// The commit `reference` names in the project's repository (fetching once more when it is
    /// not known yet).
    async fn preview_commit(
        &self,
        project_id: &str,
        reference: Option<&str>,
    ) -> Result<(std::path::PathBuf, String, String), PreviewError> {
        let project = self
            .projects
            .get(project_id)
            .ok_or_else(|| PreviewError::NotFound(format!("project '{project_id}' is not configured")))?;
        let reference = reference.filter(|r| !r.is_empty()).unwrap_or(&project.base).to_string();
        check_ref(&reference)?;
        for refetch in [false, true] {
            let repo = self.preview_repo(project, refetch).await?;
            for candidate in [
                format!("refs/heads/{reference}"),
                format!("refs/remotes/origin/{reference}"),
                reference.clone(),
            ] {
                if let Some(commit) = self.resolve(&repo, &candidate).await? {
                    return Ok((repo, reference, commit));
                }
            }
        }
        Err(PreviewError::NotFound(format!(
            "ref '{}' is not known in project '{project_id}'",
            reference.escape_debug()
        )))
    }

    /// The object type at `commit:path` (`tree`, `blob`, …), or 404.
    async fn object_type(&self, repo: &std::path::Path, commit: &str, path: &str) -> Result<String, PreviewError> {
        let object = format!("{commit}:{path}");
        let out = self.git.run(repo, &["cat-file", "-t", &object], None).await?;
        if !out.ok() {
            return Err(PreviewError::NotFound(format!(
                "path '{path}' does not exist at this ref"
            )));
        }
        Ok(out.text())
    }

    /// `GET /projects/{id}/tree`.
    pub async fn tree(
        &self,
        project_id: &str,
        reference: Option<&str>,
        path: &str,
        recursive: bool,
        max_entries: usize,
    ) -> Result<Tree, PreviewError> {
        let path = normalise(path)?;
        let (repo, reference, commit) = self.preview_commit(project_id, reference).await?;
        let kind = self.object_type(&repo, &commit, &path).await?;
        if kind != "tree" {
            return Err(PreviewError::Invalid(format!(
                "path '{path}' is a {kind}, not a directory; use /file"
            )));
        }
        let object = format!("{commit}:{path}");
        let mut args = vec!["ls-tree", "-z", "--long"];
        if recursive {
            args.extend(["-r", "-t"]);
        }
        args.push(&object);
        let out = self.git.run(&repo, &args, None).await?;
        if !out.ok() {
            return Err(PreviewError::Unavailable(format!(
                "git ls-tree failed: {}",
                out.stderr.trim()
            )));
        }
        let mut entries = Vec::new();
        let mut truncated = out.truncated;
        // Each record: "<mode> SP <type> SP <object> SP+ <size> TAB <name> NUL".
        let records: Vec<&[u8]> = out.stdout.split(|b| *b == 0).filter(|r| !r.is_empty()).collect();
        let complete = if out.truncated {
            records.len().saturating_sub(1)
        } else {
            records.len()
        };
        for record in &records[..complete] {
            if entries.len() == max_entries {
                truncated = true;
                break;
            }
            let record = String::from_utf8_lossy(record);
            let Some((meta, name)) = record.split_once('\t') else {
                continue;
            };
            let mut fields = meta.split_whitespace();
            let (_mode, kind, _oid, size) = (fields.next(), fields.next(), fields.next(), fields.next());
            let full = if path.is_empty() {
                name.to_string()
            } else {
                format!("{path}/{name}")
            };
            entries.push(Entry {
                kind: kind.unwrap_or("blob").to_string(),
                name: full.rsplit('/').next().unwrap_or(&full).to_string(),
                path: full,
                size: size.and_then(|s| s.parse().ok()),
            });
        }
        Ok(Tree {
            project: project_id.to_string(),
            reference,
            commit,
            path,
            entries,
            truncated,
        })
    }

    /// `GET /projects/{id}/file`.
    pub async fn file(
        &self,
        project_id: &str,
        reference: Option<&str>,
        path: &str,
        max_bytes: usize,
    ) -> Result<File, PreviewError> {
        let path = normalise(path)?;
        if path.is_empty() {
            return Err(PreviewError::Invalid("path is required".into()));
        }
        let (repo, reference, commit) = self.preview_commit(project_id, reference).await?;
        let kind = self.object_type(&repo, &commit, &path).await?;
        if kind != "blob" {
            return Err(PreviewError::Invalid(format!(
                "path '{path}' is a {kind}, not a file; use /tree"
            )));
        }
        let object = format!("{commit}:{path}");
        let size: u64 = self
            .git
            .check(&repo, &["cat-file", "-s", &object], None)
            .await?
            .text()
            .parse()
            .map_err(|_| PreviewError::Unavailable("git cat-file -s gave no size".into()))?;
        let out = self
            .git
            .run_capped(&repo, &["cat-file", "blob", &object], None, max_bytes)
            .await?;
        if !out.ok() {
            return Err(PreviewError::Unavailable(format!(
                "git cat-file failed: {}",
                out.stderr.trim()
            )));
        }
        let bytes = out.stdout;
        if bytes[..bytes.len().min(BINARY_PROBE)].contains(&0) {
            return Err(PreviewError::Binary(format!(
                "'{path}' is a binary file ({size} bytes)"
            )));
        }
        let truncated = size > max_bytes as u64;
        let content = match String::from_utf8(bytes) {
            Ok(text) => text,
            Err(e) => {
                let valid = e.utf8_error().valid_up_to();
                let mut bytes = e.into_bytes();
                // A character cut by the truncation is dropped; anything else is not text.
                if truncated && bytes.len() - valid < 4 && e_is_incomplete(&bytes[valid..]) {
                    bytes.truncate(valid);
                    String::from_utf8(bytes).expect("valid up to here")
                } else {
                    return Err(PreviewError::Binary(format!(
                        "'{path}' is not UTF-8 text ({size} bytes)"
                    )));
                }
            }
        };
        Ok(File {
            project: project_id.to_string(),
            reference,
            commit,
            path,
            size,
            truncated,
            content,
        })
    }
}

/// Whether `tail` is the start of a UTF-8 character cut short.
fn e_is_incomplete(tail: &[u8]) -> bool {
    matches!(std::str::from_utf8(tail), Err(e) if e.error_len().is_none())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_normalised_or_refused() {
        assert_eq!(normalise("").unwrap(), "");
        assert_eq!(normalise("./src//lib.rs/").unwrap(), "src/lib.rs");
        assert_eq!(normalise("a/./b").unwrap(), "a/b");
        for bad in ["../etc/passwd", "a/../../b", "/etc/passwd", "a\0b", "a/.."] {
            assert!(matches!(normalise(bad), Err(PreviewError::Invalid(_))), "{bad:?}");
        }
    }

    #[test]
    fn refs_that_look_like_options_are_refused() {
        for bad in ["-n", "--output=/tmp/x", "", "a\nb"] {
            assert!(check_ref(bad).is_err(), "{bad:?}");
        }
        assert!(check_ref("codex/req-1").is_ok());
    }
}
