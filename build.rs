//! Rebuilds the crate when a migration changes: `sqlx::migrate!` embeds `migrations/` in the
//! binary at compile time, and without this a changed or added migration left a stale schema in
//! an incremental build.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
