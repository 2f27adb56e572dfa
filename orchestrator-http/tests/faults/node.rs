//! One `orchestrator` process: the binary this package builds, started with
//! a clean environment plus the variables a scenario gives, on 127.0.0.1 and
//! a free port, its output in a log file. Killed when dropped.

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::api::Api;

/// How long a node may take to answer `/health` after it was spawned
/// (PostgreSQL migrations included).
const START_WITHIN: Duration = Duration::from_secs(30);

/// What to start.
#[derive(Clone, Debug, Default)]
pub(crate) struct NodeSpec {
    /// Environment variables on top of `PATH`, `BIND_HOST`, `PORT` and `RUST_LOG`.
    pub env: Vec<(String, String)>,
    /// A soft open-file limit for the process, as a service manager would
    /// set it (`None`: inherit ours).
    pub open_files: Option<u64>,
}

impl NodeSpec {
    /// A spec with these variables.
    pub(crate) fn new<K: Into<String>, V: Into<String>>(
        env: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        NodeSpec {
            env: env
                .into_iter()
                .map(|(key, value)| (key.into(), value.into()))
                .collect(),
            open_files: None,
        }
    }
}

/// A running orchestrator process.
#[derive(Debug)]
pub(crate) struct Node {
    name: String,
    child: Child,
    address: SocketAddr,
    log: PathBuf,
    status: Option<ExitStatus>,
}

impl Node {
    /// Starts `orchestrator` as `spec` says and waits until `/health` answers 200.
    ///
    /// # Panics
    /// When it exits or does not answer within [`START_WITHIN`], with the end of its log.
    pub(crate) async fn start(name: &str, logs: &Path, spec: &NodeSpec) -> Node {
        // A free port can be taken between our probe and the node's bind: try a few.
        for round in 0..3 {
            let port = free_port();
            let log = logs.join(format!("{name}-{round}.log"));
            let mut node = Node::spawn(name, port, &log, spec);
            match node.wait_healthy().await {
                Ok(()) => return node,
                // Another port, next round.
                Err(problem) if problem.contains("cannot listen") => {}
                Err(problem) => panic!("node {name} did not start: {problem}"),
            }
        }
        panic!("node {name} found no free port in three tries");
    }

    fn spawn(name: &str, port: u16, log: &Path, spec: &NodeSpec) -> Node {
        let binary = env!("CARGO_BIN_EXE_orchestrator");
        let mut command = match spec.open_files {
            // `exec` keeps the pid, so signals reach the orchestrator itself.
            Some(limit) => {
                let mut command = Command::new("sh");
                command
                    .arg("-c")
                    .arg(format!("ulimit -S -n {limit} && exec \"$0\" \"$@\""))
                    .arg(binary);
                command
            }
            None => Command::new(binary),
        };
        let output = File::create(log)
            .unwrap_or_else(|error| panic!("cannot create {}: {error}", log.display()));
        let errors = output.try_clone().expect("a second handle on the log file");
        // Nothing from our environment (say, a DATABASE_URL meant for other
        // tests) may change what the node runs against.
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("RUST_LOG", "info")
            .env("BIND_HOST", "127.0.0.1")
            .env("PORT", port.to_string())
            .envs(spec.env.iter().map(|(key, value)| (key, value)))
            .stdin(Stdio::null())
            .stdout(output)
            .stderr(errors)
            // Its own process group: a Ctrl-C meant for the test runner is
            // not also a SIGINT the node would shut down on.
            .process_group(0);
        let child = command
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {binary}: {error}"));
        spawn_reaper(child.id());
        Node {
            name: name.to_owned(),
            child,
            address: SocketAddr::from(([127, 0, 0, 1], port)),
            log: log.to_owned(),
            status: None,
        }
    }

    async fn wait_healthy(&mut self) -> Result<(), String> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(500))
            .build()
            .expect("an HTTP client");
        let deadline = Instant::now() + START_WITHIN;
        loop {
            if let Some(status) = self.try_status() {
                return Err(format!("it exited ({status}); log:\n{}", self.log_tail()));
            }
            if let Ok(response) = client.get(format!("{}/health", self.url())).send().await {
                if response.status() == 200 {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "no 200 from /health within {START_WITHIN:?}; log:\n{}",
                    self.log_tail()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// The address it listens on.
    pub(crate) fn address(&self) -> SocketAddr {
        self.address
    }

    /// A client of its API.
    pub(crate) fn api(&self) -> Api {
        Api::new(&self.url())
    }

    /// Sends SIGTERM.
    pub(crate) fn terminate(&self) {
        kill(self.pid(), Signal::SIGTERM)
            .unwrap_or_else(|error| panic!("cannot signal node {}: {error}", self.name));
    }

    /// `kill -9`, and reaps it.
    pub(crate) fn kill(&mut self) {
        if self.try_status().is_none() {
            let _ = kill(self.pid(), Signal::SIGKILL);
            self.status = self.child.wait().ok();
        }
    }

    /// Waits up to `within` for the process to exit; its status, or `None`
    /// when it is still running.
    pub(crate) async fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.try_status() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.child.id()).expect("a pid fits in i32"))
    }

    /// The last lines of its output, for failure messages.
    pub(crate) fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let start = lines.len().saturating_sub(30);
        format!("({})\n{}", self.log.display(), lines[start..].join("\n"))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A detached shell that kills the node once this process is gone, so a
/// test runner killed mid-scenario leaves no orchestrator behind.
fn spawn_reaper(child: u32) {
    let script = format!(
        "while kill -0 {parent} 2>/dev/null && kill -0 {child} 2>/dev/null; do sleep 1; done; \
         kill -9 {child} 2>/dev/null",
        parent = std::process::id(),
    );
    let _ = Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn();
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .unwrap_or_else(|error| panic!("cannot find a free port: {error}"))
}
