//! A PostgreSQL cluster the tests can stop and start again: `initdb` into a
//! fresh directory under /tmp, `pg_ctl start` / `stop -m fast|immediate` on
//! one port kept for the cluster's life, so URLs handed to orchestrator
//! processes stay valid across restarts.
//!
//! The server binaries are found as `orchestrator_pg::testing` finds them
//! (`pg_config --bindir`, else the newest `/usr/lib/postgresql/<v>/bin`, else
//! `PATH`) and run as the `postgres` user when we are root, since PostgreSQL
//! refuses to run as root. There is no fallback: a cluster that cannot be
//! created or started fails the test with the server's log.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// How `pg_ctl stop` stops the server.
#[derive(Clone, Copy, Debug)]
pub(crate) enum StopMode {
    /// Roll back open transactions, disconnect clients, checkpoint.
    Fast,
    /// Kill every server process at once, as a crash or power cut would.
    Immediate,
}

impl StopMode {
    fn as_arg(self) -> &'static str {
        match self {
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        }
    }
}

/// A running (or deliberately stopped) throwaway cluster. Cheap to clone;
/// the last clone dropped stops it and deletes its directory.
#[derive(Clone, Debug)]
pub(crate) struct Cluster {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    bindir: PathBuf,
    as_postgres: bool,
    dir: PathBuf,
    port: u16,
}

impl Cluster {
    /// Creates and starts a cluster on a free port.
    ///
    /// # Panics
    /// When the server binaries are missing or the cluster does not start.
    pub(crate) async fn start_new() -> Cluster {
        tokio::task::spawn_blocking(Cluster::create)
            .await
            .expect("creating the PostgreSQL cluster panicked")
    }

    fn create() -> Cluster {
        let bindir = find_bindir().unwrap_or_else(|| {
            panic!(
                "the fault tests need the PostgreSQL server binaries (initdb, pg_ctl): \
                 install them, e.g. `apt-get install postgresql`"
            )
        });
        let as_postgres = is_root();
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_nanos());
        // The `postgres` user must reach the directory; /tmp always lets it.
        let dir = PathBuf::from("/tmp").join(format!(
            "orchestrator-faults-pg-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(dir.join("socket"))
            .unwrap_or_else(|error| panic!("cannot create {}: {error}", dir.display()));
        if as_postgres {
            run(Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir))
            .unwrap_or_else(|error| panic!("{error}"));
        }
        let mut cluster = Inner {
            bindir,
            as_postgres,
            dir,
            port: 0,
        };
        // First, so the directory and server go even if this process is killed.
        cluster.spawn_watchdog();
        run(cluster
            .command("initdb")
            .arg("-D")
            .arg(cluster.data())
            .args(["-U", "postgres", "--auth=trust", "--encoding=UTF8"])
            .args(["--no-locale", "--no-sync"]))
        .unwrap_or_else(|error| panic!("initdb failed: {error}"));
        // A free port can be taken by someone else before the server binds it.
        let mut last_error = String::new();
        for _ in 0..3 {
            cluster.port = free_port();
            match cluster.pg_ctl_start() {
                Ok(()) => {
                    return Cluster {
                        inner: Arc::new(cluster),
                    }
                }
                Err(error) => last_error = error,
            }
        }
        panic!("PostgreSQL did not start: {last_error}");
    }

    /// The URL of the cluster's `postgres` database, valid across restarts.
    pub(crate) fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.inner.port)
    }

    /// Stops the server; returns once it is down.
    ///
    /// # Panics
    /// When `pg_ctl stop` fails.
    pub(crate) async fn stop(&self, mode: StopMode) {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            run(inner.command("pg_ctl").arg("-D").arg(inner.data()).args([
                "-w",
                "-t",
                "60",
                "-m",
                mode.as_arg(),
                "stop",
            ]))
        })
        .await
        .expect("pg_ctl stop panicked")
        .unwrap_or_else(|error| panic!("PostgreSQL did not stop: {error}"));
    }

    /// Starts the stopped server again on the same port; returns once it
    /// accepts connections.
    ///
    /// # Panics
    /// When it does not start (the log is in the message).
    pub(crate) async fn start(&self) {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || inner.pg_ctl_start())
            .await
            .expect("pg_ctl start panicked")
            .unwrap_or_else(|error| panic!("PostgreSQL did not start again: {error}"));
    }
}

impl Inner {
    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn log(&self) -> PathBuf {
        self.dir.join("server.log")
    }

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

    fn pg_ctl_start(&self) -> Result<(), String> {
        // `fsync=off` survives the crashes these tests cause (server
        // processes killed, the kernel's page cache intact); asynchronous
        // commit would not: `stop -m immediate` would lose acknowledged
        // commits, which is not a fault the orchestrator has to survive.
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -c unix_socket_directories='{}' \
             -c fsync=off -c synchronous_commit=on -c full_page_writes=off \
             -c max_connections=200",
            self.port,
            self.dir.join("socket").display()
        );
        run(self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.log())
            .args(["-w", "-t", "60", "-o", &options, "start"]))
        .map_err(|error| format!("{error}; server log: {}", tail(&self.log())))
    }

    /// A detached shell that waits for this process to exit, then stops the
    /// server at once and deletes the directory. In its own process group, so
    /// a Ctrl-C that kills the tests does not kill it too.
    fn spawn_watchdog(&self) {
        let pg_ctl = self.bindir.join("pg_ctl");
        let pg_ctl = if self.as_postgres {
            format!("runuser -u postgres -- '{}'", pg_ctl.display())
        } else {
            format!("'{}'", pg_ctl.display())
        };
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
             {pg_ctl} -D '{data}' stop -m immediate >/dev/null 2>&1; rm -rf '{dir}'",
            pid = std::process::id(),
            data = self.data().display(),
            dir = self.dir.display(),
        );
        Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            // Never waited for: it outlives this process by design.
            .map(drop)
            .unwrap_or_else(|error| panic!("cannot start the cluster's watchdog: {error}"));
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "stop"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
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
    nix::unistd::geteuid().is_root()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .unwrap_or_else(|error| panic!("cannot find a free port: {error}"))
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
