//! Test support (feature `testing`): a fresh, empty database per call.
//!
//! [`fresh_database_url`] creates a uniquely named database and returns its
//! URL, with no migrations applied. The server is, on first use in a process:
//! - the one `DATABASE_URL` names, when that variable is set (the user must
//!   be allowed to `CREATE DATABASE`; the databases, named `orch_test_*`,
//!   are left behind for inspection);
//! - otherwise a throwaway cluster started for this process from the local
//!   PostgreSQL server binaries, on 127.0.0.1 with a free port, `fsync=off`,
//!   its data in a fresh temporary directory. A small detached watchdog stops
//!   it and deletes the directory once this process has exited, however it
//!   exits.
//!
//! When neither is possible this panics with what to install: a test that
//! needs PostgreSQL never passes without one.
//!
//! [`start_cluster`] starts a cluster of the caller's own, with extra
//! server settings and files (a TLS certificate and key, say), always from
//! the local server binaries.

use std::fmt::Write as _;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::{Connection, PgConnection};

/// The server's maintenance database URL, or why there is no server.
static SERVER: OnceLock<Result<String, String>> = OnceLock::new();
static DATABASES: AtomicU64 = AtomicU64::new(0);

const INSTALL_HINT: &str = "install the PostgreSQL server (`apt-get install postgresql`) \
     or set DATABASE_URL to a server where this user may CREATE DATABASE";

/// The URL of a new, empty database (no migrations applied).
///
/// # Panics
/// When no PostgreSQL server can be reached or started, with a message
/// saying how to install one; or when the database cannot be created.
pub async fn fresh_database_url() -> String {
    // Starting a cluster runs blocking processes for a second or two.
    let server = tokio::task::spawn_blocking(|| SERVER.get_or_init(server).clone())
        .await
        .unwrap_or_else(|error| Err(format!("starting PostgreSQL panicked: {error}")));
    let admin_url = match server {
        Ok(url) => url,
        Err(problem) => panic!("no PostgreSQL for the tests: {problem}"),
    };
    let name = format!(
        "orch_test_{}_{}_{}",
        process_started(),
        std::process::id(),
        DATABASES.fetch_add(1, Ordering::Relaxed)
    );
    let mut admin = PgConnection::connect(&admin_url)
        .await
        .unwrap_or_else(|error| panic!("cannot connect to {admin_url}: {error}"));
    sqlx::query(&format!("CREATE DATABASE \"{name}\""))
        .execute(&mut admin)
        .await
        .unwrap_or_else(|error| panic!("cannot create database {name}: {error}"));
    let _ = admin.close().await;
    with_database(&admin_url, &name)
}

/// Seconds since the epoch when this process first asked for a database:
/// with the pid, it keeps names unique across runs on a shared server.
fn process_started() -> u64 {
    static STARTED: OnceLock<u64> = OnceLock::new();
    *STARTED.get_or_init(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_secs())
    })
}

fn server() -> Result<String, String> {
    match std::env::var("DATABASE_URL") {
        Ok(url) if !url.trim().is_empty() => Ok(url),
        _ => start(&ClusterConfig::default()).map(|cluster| cluster.url("postgres")),
    }
}

/// Extra configuration of a cluster started by [`start_cluster`].
#[derive(Debug, Default)]
pub struct ClusterConfig {
    /// Files written into the data directory before the server starts, as
    /// `(file name, contents)`, readable by the server's user only (as
    /// PostgreSQL requires of a private key). Settings name them relative
    /// to the data directory (`ssl_cert_file=server.crt`).
    pub files: Vec<(String, Vec<u8>)>,
    /// Server settings, `(name, value)`, passed as `-c name=value` (no
    /// spaces in either).
    pub settings: Vec<(String, String)>,
}

/// A throwaway PostgreSQL cluster on 127.0.0.1 that accepts user `postgres`
/// without a password. It is stopped and its directory deleted once this
/// process has exited.
#[derive(Debug)]
pub struct Cluster {
    port: u16,
    data: PathBuf,
}

impl Cluster {
    /// The URL of `database` on this cluster as user `postgres`, over TCP to
    /// 127.0.0.1, with no query parameters.
    #[must_use]
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// The data directory, where [`ClusterConfig::files`] were written.
    #[must_use]
    pub fn data_dir(&self) -> &Path {
        &self.data
    }
}

/// Starts a cluster of its own with `config`, from the local server
/// binaries (`DATABASE_URL` plays no part). Blocks for a second or two.
///
/// # Panics
/// When the cluster cannot be started: no server binaries (the message says
/// what to install), or the server refused `config` (the message holds the
/// end of its log).
#[must_use]
pub fn start_cluster(config: &ClusterConfig) -> Cluster {
    start(config).unwrap_or_else(|problem| panic!("cannot start a PostgreSQL cluster: {problem}"))
}

/// `url` naming database `name` instead of its own.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |at| at + 3);
    let path_start = base[authority_start..]
        .find('/')
        .map_or(base.len(), |at| authority_start + at);
    let mut out = format!("{}/{name}", &base[..path_start]);
    if let Some(query) = query {
        let _ = write!(out, "?{query}");
    }
    out
}

/// How to run the server binaries: as the `postgres` user when we are root
/// (PostgreSQL refuses to run as root), as ourselves otherwise.
struct Runner {
    bindir: PathBuf,
    as_postgres: bool,
}

impl Runner {
    fn command(&self, program: &str) -> Command {
        let program = self.bindir.join(program);
        if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        }
    }

    /// The shell words that run `program`, for the watchdog script.
    fn shell(&self, program: &str) -> String {
        let program = self.bindir.join(program);
        if self.as_postgres {
            format!("runuser -u postgres -- '{}'", program.display())
        } else {
            format!("'{}'", program.display())
        }
    }
}

fn start(config: &ClusterConfig) -> Result<Cluster, String> {
    let bindir = find_bindir().ok_or_else(|| {
        format!("DATABASE_URL is not set and no PostgreSQL server binaries (initdb, pg_ctl) were found; {INSTALL_HINT}")
    })?;
    let runner = Runner {
        bindir,
        as_postgres: is_root(),
    };
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos());
    // The `postgres` user must reach the directory: a root's TMPDIR (say,
    // under /root) may not let it, /tmp always does.
    let temp = if runner.as_postgres {
        PathBuf::from("/tmp")
    } else {
        std::env::temp_dir()
    };
    let dir = temp.join(format!(
        "orchestrator-pg-test-{}-{nanos}",
        std::process::id()
    ));
    let data = dir.join("data");
    let socket = dir.join("socket");
    std::fs::create_dir_all(&socket)
        .map_err(|error| format!("cannot create {}: {error}", socket.display()))?;
    if runner.as_postgres {
        run(Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&dir))?;
    }
    // The watchdog comes first, so the directory goes even if we die while
    // starting the server.
    spawn_watchdog(&runner, &dir, &data)?;
    run(runner
        .command("initdb")
        .arg("-D")
        .arg(&data)
        .args(["-U", "postgres", "--auth=trust", "--encoding=UTF8"])
        .args(["--no-locale", "--no-sync"]))?;
    write_files(&runner, &data, &config.files)?;
    let log = dir.join("server.log");
    let mut last_error = String::new();
    // A free port can be taken by someone else before the server binds it.
    for _ in 0..3 {
        let port = free_port()?;
        let mut options = format!(
            "-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories='{}' \
             -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
             -c max_connections=300 -c shared_buffers=128MB",
            socket.display()
        );
        for (name, value) in &config.settings {
            let _ = write!(options, " -c {name}={value}");
        }
        let started = run(runner
            .command("pg_ctl")
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", "60", "-o", &options, "start"]));
        match started {
            Ok(()) => return Ok(Cluster { port, data }),
            Err(error) => {
                last_error = format!("{error}; server log: {}", tail(&log));
            }
        }
    }
    Err(format!(
        "could not start a PostgreSQL cluster in {}: {last_error}",
        dir.display()
    ))
}

/// Writes `files` into `data`, owned by the server's user, mode 0600.
fn write_files(runner: &Runner, data: &Path, files: &[(String, Vec<u8>)]) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt as _;
    for (name, contents) in files {
        let path = data.join(name);
        std::fs::write(&path, contents)
            .and_then(|()| std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)))
            .map_err(|error| format!("cannot write {}: {error}", path.display()))?;
        if runner.as_postgres {
            run(Command::new("chown").arg("postgres:postgres").arg(&path))?;
        }
    }
    Ok(())
}

/// A detached shell that waits for this process to exit, then stops the
/// cluster at once and deletes its directory. In its own process group, so a
/// Ctrl-C that kills the tests does not kill it too.
fn spawn_watchdog(runner: &Runner, dir: &Path, data: &Path) -> Result<(), String> {
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
         {pg_ctl} -D '{data}' stop -m immediate >/dev/null 2>&1; \
         rm -rf '{dir}'",
        pid = std::process::id(),
        pg_ctl = runner.shell("pg_ctl"),
        data = data.display(),
        dir = dir.display(),
    );
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map(drop)
        .map_err(|error| format!("cannot start the cleanup watchdog: {error}"))
}

/// Where `initdb` and `pg_ctl` are: `pg_config --bindir`, else the newest
/// Debian-style `/usr/lib/postgresql/<version>/bin`, else `PATH`.
fn find_bindir() -> Option<PathBuf> {
    let has_server = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    let from_pg_config = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|output| PathBuf::from(String::from_utf8_lossy(&output.stdout).trim()));
    if let Some(dir) = from_pg_config.filter(|dir| has_server(dir)) {
        return Some(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, dir)| has_server(dir))
        .collect();
    versions.sort();
    if let Some((_, dir)) = versions.pop() {
        return Some(dir);
    }
    std::env::var_os("PATH")
        .and_then(|path| std::env::split_paths(&path).find(|dir| has_server(dir)))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|output| String::from_utf8_lossy(&output.stdout).trim() == "0")
}

fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .map_err(|error| format!("cannot find a free port: {error}"))
}

fn run(command: &mut Command) -> Result<(), String> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|error| format!("cannot run {command:?}: {error}"))?;
    if output.status.success() {
        return Ok(());
    }
    Err(format!(
        "{command:?} failed ({}): {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout).trim(),
        String::from_utf8_lossy(&output.stderr).trim()
    ))
}

/// The end of the server log, for error messages.
fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let start = text.len().saturating_sub(2000);
    let start = (start..text.len())
        .find(|at| text.is_char_boundary(*at))
        .unwrap_or(text.len());
    text[start..].to_owned()
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn with_database_replaces_only_the_path() {
        assert_eq!(
            with_database("postgres://u:p@h:5432/app?sslmode=disable", "t1"),
            "postgres://u:p@h:5432/t1?sslmode=disable"
        );
        assert_eq!(with_database("postgres://h", "t1"), "postgres://h/t1");
        assert_eq!(
            with_database("postgresql:///app?host=/run/postgresql", "t1"),
            "postgresql:///t1?host=/run/postgresql"
        );
    }
}
