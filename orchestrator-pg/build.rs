//! Rebuilds when a migration is added or changed: `sqlx::migrate!` embeds
//! the directory at compile time, and cargo cannot see new files otherwise.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
