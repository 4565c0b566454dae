//! Where a bare program name is found on the gateway's `PATH`, remembered for a second.
//!
//! Looking a name up is one `stat` per `PATH` directory until one holds it: on a `PATH` of ten
//! directories with the CLI in the ninth, 4% of the HTTP workers' time per short run (measured
//! with `perf`). A place found is reused for [`FRESH`] and then looked up again, so a CLI
//! installed (or moved to an earlier directory) while the gateway serves is picked up within
//! that time. A name that is not found is never remembered: the next run looks again, so a CLI
//! installed after a refusal is found at once. A remembered program that has been removed fails
//! its exec, which is reported like a program that is not there (127).

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::resolve_program;

/// How long a place found stays in use without a new lookup.
pub const FRESH: Duration = Duration::from_secs(1);

/// Places found, by program name: the place, the `PATH` it was found on, and when.
#[derive(Debug, Default)]
pub struct Lookups {
    found: Mutex<HashMap<String, (PathBuf, OsString, Instant)>>,
}

impl Lookups {
    /// Where `program` is: a path is taken as it is (if it is an executable file); a bare name
    /// is looked up on `search_path`, or taken from a lookup on the same `PATH` less than
    /// [`FRESH`] ago.
    pub fn resolve(&self, program: &str, search_path: &OsStr) -> Option<PathBuf> {
        if program.contains('/') {
            return resolve_program(program, search_path);
        }
        let now = Instant::now();
        {
            let found = self.found.lock().expect("lookups lock");
            if let Some((place, path, at)) = found.get(program)
                && path == search_path
                && now.duration_since(*at) < FRESH
            {
                return Some(place.clone());
            }
        }
        let place = resolve_program(program, search_path)?;
        let mut found = self.found.lock().expect("lookups lock");
        found.insert(program.to_string(), (place.clone(), search_path.to_owned(), now));
        Some(place)
    }
}

/// The gateway's lookups.
pub fn lookups() -> &'static Lookups {
    static LOOKUPS: std::sync::OnceLock<Lookups> = std::sync::OnceLock::new();
    LOOKUPS.get_or_init(Lookups::default)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn program(dir: &std::path::Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[test]
    fn a_place_found_is_reused_for_a_while_and_a_missing_name_never_is() {
        let (first, second) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let path = std::env::join_paths([first.path(), second.path()]).unwrap();
        let lookups = Lookups::default();

        assert_eq!(lookups.resolve("cli", &path), None);
        let later = program(second.path(), "cli");
        assert_eq!(
            lookups.resolve("cli", &path),
            Some(later.clone()),
            "a missing name is looked up again"
        );

        // Installed in an earlier directory: the remembered place is used until it is stale...
        let earlier = program(first.path(), "cli");
        assert_eq!(lookups.resolve("cli", &path), Some(later.clone()));
        // ...on the same PATH only.
        let only_first = std::env::join_paths([first.path()]).unwrap();
        assert_eq!(lookups.resolve("cli", &only_first), Some(earlier.clone()));

        std::thread::sleep(FRESH + Duration::from_millis(50));
        assert_eq!(
            lookups.resolve("cli", &path),
            Some(earlier),
            "looked up again once stale"
        );

        // A path is never looked up nor remembered.
        assert_eq!(lookups.resolve(later.to_str().unwrap(), &path), Some(later.clone()));
        std::fs::remove_file(&later).unwrap();
        assert_eq!(lookups.resolve(later.to_str().unwrap(), &path), None);
    }
}
