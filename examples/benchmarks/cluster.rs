//! The throwaway PostgreSQL cluster: durable settings, `pg_stat_statements`,
//! a database per scenario run, and the statement and commit counters of a
//! database.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use orchestrator_pg::testing::{start_cluster, Cluster, ClusterConfig};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

use crate::progress;

/// Server settings on top of `start_cluster`'s own, `(name, value)`: commits
/// durable, statement statistics for the per-call counts (nested statements
/// too, reported apart), room for every pool and load generator, and enough
/// memory and WAL that a million calls fit in cache and no checkpoint is
/// forced by WAL volume in the middle of a measurement.
const SETTINGS: &[(&str, &str)] = &[
    ("fsync", "on"),
    ("synchronous_commit", "on"),
    ("full_page_writes", "on"),
    ("shared_preload_libraries", "pg_stat_statements"),
    ("pg_stat_statements.track", "all"),
    ("pg_stat_statements.max", "10000"),
    ("max_connections", "500"),
    ("shared_buffers", "1GB"),
    ("max_wal_size", "8GB"),
];

/// Settings read back from the server for the report.
const REPORTED: &[&str] = &[
    "server_version",
    "fsync",
    "synchronous_commit",
    "full_page_writes",
    "wal_sync_method",
    "wal_level",
    "shared_buffers",
    "max_wal_size",
    "checkpoint_timeout",
    "max_connections",
    "shared_preload_libraries",
    "pg_stat_statements.track",
    "pg_stat_statements.max",
    "autovacuum",
    "jit",
];

/// Statement and commit counters of one database.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct DbStats {
    /// Top-level statements executed (`pg_stat_statements`, `toplevel`).
    pub statements: i64,
    /// Statements run inside functions and triggers (FK checks included).
    pub nested: i64,
    /// Committed transactions (`pg_stat_database.xact_commit`).
    pub commits: i64,
}

impl std::ops::Sub for DbStats {
    type Output = DbStats;

    fn sub(self, before: DbStats) -> DbStats {
        DbStats {
            statements: self.statements - before.statements,
            nested: self.nested - before.nested,
            commits: self.commits - before.commits,
        }
    }
}

/// One row of a statement profile (`pg_stat_statements`).
#[derive(Clone, Debug)]
pub(crate) struct Statement {
    /// The normalised text, whitespace collapsed, cut at 120 characters.
    pub query: String,
    /// Whether the client sent it (not run inside a function or trigger).
    pub toplevel: bool,
    /// Executions.
    pub calls: i64,
    /// Total execution time, milliseconds.
    pub total_ms: f64,
}

/// The running cluster.
#[derive(Debug)]
pub(crate) struct Pg {
    cluster: Option<Cluster>,
    admin: PgPool,
    /// Where `pgbench` and `pg_ctl` are.
    pub bindir: PathBuf,
    /// [`REPORTED`] settings, with the data directory's file system.
    pub settings: Vec<(String, String)>,
}

impl Pg {
    /// Starts the cluster with [`SETTINGS`] and connects to it.
    ///
    /// # Errors
    /// When it cannot be started (no server binaries, a refused setting).
    pub(crate) async fn start() -> anyhow::Result<Self> {
        let bindir = bindir()?;
        let config = ClusterConfig {
            settings: SETTINGS
                .iter()
                .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
                .collect(),
            ..ClusterConfig::default()
        };
        // `start_cluster` panics with its reason; here that is an error.
        let cluster = tokio::task::spawn_blocking(move || start_cluster(&config))
            .await
            .map_err(|error| match error.try_into_panic() {
                Ok(panic) => anyhow::anyhow!(
                    "{}",
                    panic
                        .downcast_ref::<String>()
                        .cloned()
                        .unwrap_or_else(|| "starting PostgreSQL panicked".to_owned())
                ),
                Err(error) => anyhow::anyhow!("starting PostgreSQL failed: {error}"),
            })?;
        // Every admin statement (CHECKPOINT, CREATE DATABASE, ...) is bounded.
        let options = cluster
            .url("postgres")
            .parse::<PgConnectOptions>()?
            .options([("statement_timeout", "600s")]);
        let admin = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options)
            .await
            .context("cannot connect to the cluster")?;
        sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            .execute(&admin)
            .await
            .context("pg_stat_statements")?;
        let mut settings = Vec::new();
        for name in REPORTED {
            let value: String = sqlx::query_scalar("SELECT current_setting($1)")
                .bind(name)
                .fetch_one(&admin)
                .await
                .with_context(|| format!("reading setting {name}"))?;
            settings.push(((*name).to_owned(), value));
        }
        settings.push((
            "data directory file system".to_owned(),
            file_system(&cluster.data_dir().to_string_lossy()),
        ));
        progress!("PostgreSQL on {}", cluster.url(""));
        Ok(Self {
            cluster: Some(cluster),
            admin,
            bindir,
            settings,
        })
    }

    /// The URL of `database` on the cluster.
    pub(crate) fn url(&self, database: &str) -> String {
        self.cluster
            .as_ref()
            .map(|cluster| cluster.url(database))
            .unwrap_or_default()
    }

    /// Creates database `name` afresh (dropping one left by an earlier
    /// run) and returns its URL.
    pub(crate) async fn create_database(&self, name: &str) -> anyhow::Result<String> {
        self.drop_database(name).await?;
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&self.admin)
            .await
            .with_context(|| format!("cannot create database {name}"))?;
        Ok(self.url(name))
    }

    /// Drops database `name` if it exists, closing its connections.
    pub(crate) async fn drop_database(&self, name: &str) -> anyhow::Result<()> {
        sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .execute(&self.admin)
            .await
            .with_context(|| format!("cannot drop database {name}"))?;
        Ok(())
    }

    /// Sets `synchronous_commit` for new connections to `database`: `off`
    /// while seeding (not measured), back to the server's `on` after.
    pub(crate) async fn seeding(&self, database: &str, seeding: bool) -> anyhow::Result<()> {
        let statement = if seeding {
            format!("ALTER DATABASE \"{database}\" SET synchronous_commit = off")
        } else {
            format!("ALTER DATABASE \"{database}\" RESET synchronous_commit")
        };
        sqlx::query(&statement).execute(&self.admin).await?;
        Ok(())
    }

    /// A checkpoint, so no measurement starts with the previous one's dirty
    /// pages still to write.
    pub(crate) async fn checkpoint(&self) -> anyhow::Result<()> {
        sqlx::query("CHECKPOINT").execute(&self.admin).await?;
        Ok(())
    }

    /// Empties `pg_stat_statements` (every database).
    pub(crate) async fn reset_statements(&self) -> anyhow::Result<()> {
        sqlx::query("SELECT pg_stat_statements_reset()")
            .execute(&self.admin)
            .await?;
        Ok(())
    }

    /// Waits until no client session is connected to `database`: a
    /// backend reports its counters when it ends, so they are complete then.
    /// (Autovacuum workers may come and go; they are not clients.)
    pub(crate) async fn wait_idle(&self, database: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let sessions: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = $1 AND backend_type = 'client backend'",
            )
            .bind(database)
            .fetch_one(&self.admin)
            .await?;
            if sessions == 0 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let who: Vec<(Option<String>, Option<String>, Option<String>)> = sqlx::query_as(
                    "SELECT application_name, state, left(query, 200) FROM pg_stat_activity \
                     WHERE datname = $1 AND backend_type = 'client backend'",
                )
                .bind(database)
                .fetch_all(&self.admin)
                .await?;
                bail!("{sessions} sessions still connected to {database} after 30 s: {who:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The statement and commit counters of `database` now.
    pub(crate) async fn stats(&self, database: &str) -> anyhow::Result<DbStats> {
        let (statements, nested): (i64, i64) = sqlx::query_as(
            "SELECT coalesce(sum(calls) FILTER (WHERE toplevel), 0)::bigint, \
                    coalesce(sum(calls) FILTER (WHERE NOT toplevel), 0)::bigint \
             FROM pg_stat_statements \
             WHERE dbid = (SELECT oid FROM pg_database WHERE datname = $1)",
        )
        .bind(database)
        .fetch_one(&self.admin)
        .await
        .context("reading pg_stat_statements")?;
        // A fresh snapshot: the statistics views are cached per transaction.
        sqlx::query("SELECT pg_stat_clear_snapshot()")
            .execute(&self.admin)
            .await?;
        let commits: i64 = sqlx::query_scalar(
            "SELECT coalesce(xact_commit, 0) FROM pg_stat_database WHERE datname = $1",
        )
        .bind(database)
        .fetch_one(&self.admin)
        .await
        .context("reading pg_stat_database")?;
        Ok(DbStats {
            statements,
            nested,
            commits,
        })
    }

    /// The `limit` statements of `database` executed most often since the
    /// last [`reset_statements`](Self::reset_statements).
    pub(crate) async fn profile(
        &self,
        database: &str,
        limit: i64,
    ) -> anyhow::Result<Vec<Statement>> {
        let rows: Vec<(String, bool, i64, f64)> = sqlx::query_as(
            "SELECT query, toplevel, calls, total_exec_time FROM pg_stat_statements \
             WHERE dbid = (SELECT oid FROM pg_database WHERE datname = $1) \
             ORDER BY calls DESC, total_exec_time DESC LIMIT $2",
        )
        .bind(database)
        .bind(limit)
        .fetch_all(&self.admin)
        .await
        .context("reading pg_stat_statements")?;
        Ok(rows
            .into_iter()
            .map(|(query, toplevel, calls, total_ms)| {
                let query = query.split_whitespace().collect::<Vec<_>>().join(" ");
                let query = match query.char_indices().nth(120) {
                    Some((at, _)) => format!("{}…", &query[..at]),
                    None => query,
                };
                Statement {
                    query,
                    toplevel,
                    calls,
                    total_ms,
                }
            })
            .collect())
    }

    /// Stops the cluster now (the testing watchdog would, once we exit).
    pub(crate) fn stop(&mut self) {
        let Some(cluster) = self.cluster.take() else {
            return;
        };
        let pg_ctl = self.bindir.join("pg_ctl");
        let mut command = if is_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(pg_ctl);
            command
        } else {
            Command::new(pg_ctl)
        };
        let stopped = command
            .arg("-D")
            .arg(cluster.data_dir())
            .args(["-m", "fast", "-w", "-t", "30", "stop"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        match stopped {
            Ok(status) if status.success() => progress!("PostgreSQL stopped"),
            other => progress!("pg_ctl stop: {other:?} (the watchdog stops it when we exit)"),
        }
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `pg_config --bindir`, which must hold `pgbench`.
fn bindir() -> anyhow::Result<PathBuf> {
    let output = Command::new("pg_config").arg("--bindir").output().context(
        "cannot run pg_config: install the PostgreSQL server (apt-get install postgresql)",
    )?;
    ensure!(output.status.success(), "pg_config --bindir failed");
    let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    ensure!(
        dir.join("pgbench").is_file(),
        "no pgbench in {} (apt-get install postgresql-client)",
        dir.display()
    );
    Ok(dir)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|output| String::from_utf8_lossy(&output.stdout).trim() == "0")
}

/// The file system type and device under `path` (`findmnt`), or "unknown".
fn file_system(path: &str) -> String {
    Command::new("findmnt")
        .args(["-n", "-o", "FSTYPE,SOURCE", "-T", path])
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|output| {
            String::from_utf8_lossy(&output.stdout)
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" on ")
        })
        .filter(|text| !text.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}
