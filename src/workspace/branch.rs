//! Branch names and other names a request gives, checked before they reach git or a path:
//! a branch the way `git check-ref-format --branch` accepts it (so git never reads it as an
//! option, a revision expression or a path outside `refs/heads/`), a state key as a plain name.

/// Longest branch name accepted (git has no limit; paths and argv do).
pub const MAX_BRANCH: usize = 200;
/// Longest `state_key`.
pub const MAX_STATE_KEY: usize = 128;

/// Checks `name` like `git check-ref-format --branch`: no `..`, `@{`, control characters,
/// space, `~^:?*[\`; no component starting with `.` or ending with `.lock`; no leading, trailing
/// or doubled `/`; not ending with `.`; not `@`, not `HEAD`, not starting with `-`.
pub fn check_branch(name: &str) -> Result<(), String> {
    let bad = |why: &str| {
        Err(format!(
            "branch '{}' is not a valid branch name: {why}",
            name.escape_debug()
        ))
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > MAX_BRANCH {
        return bad(&format!("longer than {MAX_BRANCH} bytes"));
    }
    if name.starts_with('-') {
        return bad("it starts with '-'");
    }
    if name == "@" || name == "HEAD" {
        return bad("it is reserved");
    }
    if let Some(c) = name
        .chars()
        .find(|c| c.is_ascii_control() || matches!(c, ' ' | '~' | '^' | ':' | '?' | '*' | '[' | '\\'))
    {
        return bad(&format!("it contains {:?}", c));
    }
    if name.contains("..") || name.contains("@{") {
        return bad("it contains '..' or '@{'");
    }
    if name.ends_with('.') {
        return bad("it ends with '.'");
    }
    for component in name.split('/') {
        if component.is_empty() {
            return bad("it has an empty component (leading, trailing or doubled '/')");
        }
        if component.starts_with('.') {
            return bad("a component starts with '.'");
        }
        if component.ends_with(".lock") {
            return bad("a component ends with '.lock'");
        }
    }
    Ok(())
}

/// A state key or project id: 1 to [`MAX_STATE_KEY`] of `A-Z a-z 0-9 . _ -`, not starting with
/// `.` or `-` (it names a directory).
pub fn check_name(what: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_STATE_KEY
        && !name.starts_with(['.', '-'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} '{}' must be 1 to {MAX_STATE_KEY} of A-Z a-z 0-9 . _ - (not starting with . or -)",
            name.escape_debug()
        ))
    }
}

/// The directory name of a branch's worktree: `/` and `%` escaped, so that every branch has
/// its own directory and none is nested in another's.
pub fn dir_name(branch: &str) -> String {
    branch.replace('%', "%25").replace('/', "%2F")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branches_git_accepts_pass() {
        for name in ["main", "codex/req-1", "feature/a.b_c-d", "v1.2", "a/b/c", "x@y", "ünï"] {
            assert!(check_branch(name).is_ok(), "{name}");
        }
    }

    #[test]
    fn branches_git_refuses_are_refused() {
        for name in [
            "",
            "-x",
            "--upload-pack=x",
            "@",
            "HEAD",
            "a..b",
            "a@{1}",
            "a b",
            "a~1",
            "a^",
            "a:b",
            "a?",
            "a*",
            "a[",
            "a\\b",
            "a\nb",
            "a\u{7f}",
            "/a",
            "a/",
            "a//b",
            ".a",
            "a/.b",
            "a.lock",
            "a/b.lock/c",
            "a.",
        ] {
            assert!(check_branch(name).is_err(), "{name:?}");
        }
        assert!(check_branch(&"a".repeat(MAX_BRANCH + 1)).is_err());
    }

    #[test]
    fn branch_names_agree_with_git_itself() {
        for name in [
            "codex/req-1",
            "a..b",
            "-x",
            "a//b",
            "a.lock",
            "x@{y",
            "ok_1",
            "a/.b",
            "a.",
        ] {
            let git = std::process::Command::new("git")
                .args(["check-ref-format", "--branch", name])
                .output()
                .expect("git runs");
            assert_eq!(git.status.success(), check_branch(name).is_ok(), "{name}");
        }
    }

    #[test]
    fn names_are_plain() {
        assert!(check_name("state_key", "conv-1.a_B").is_ok());
        for bad in ["", ".x", "-x", "a/b", "a b", "..", "é", &"k".repeat(129)] {
            assert!(check_name("state_key", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn dir_names_do_not_collide_or_nest() {
        assert_eq!(dir_name("codex/req-1"), "codex%2Freq-1");
        assert_ne!(dir_name("a/b"), dir_name("a%2Fb"));
        assert!(!dir_name("a/b/c").contains('/'));
    }
}
