//! An `orchestrator` process: the release binary (or `ORCHESTRATOR_BIN`)
//! with a clean environment, on 127.0.0.1 and a free port, its output in a
//! log file. Killed when dropped.

use std::fs::File;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

use crate::process::{spawn_reaper, tail};
use crate::Bench;

/// How long a server may take to answer `/health` (migrations included).
const START_WITHIN: Duration = Duration::from_secs(60);
/// How long a server may take to exit after SIGTERM.
const STOP_WITHIN: Duration = Duration::from_secs(30);

/// The log level the servers run with: per-request and per-call `info`
/// lines would measure the log writer.
pub(crate) const LOG_LEVEL: &str = "warn";

/// What a server runs against.
#[derive(Clone, Debug)]
pub(crate) struct Spec<'a> {
    /// `DATABASE_URL`.
    pub database_url: &'a str,
    /// `PROVIDER_BASE_URL`: the in-process mock provider.
    pub provider_url: &'a str,
    /// `MAX_CONCURRENT_CALLS`.
    pub max_concurrent_calls: u32,
}

/// A running `orchestrator`.
#[derive(Debug)]
pub(crate) struct Server {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    /// When `/health` first answered 200.
    pub ready_at: Instant,
    log: PathBuf,
}

impl Server {
    /// Starts `name` as `spec` says and waits until `/health` answers 200.
    ///
    /// # Errors
    /// When it cannot start, exits, or does not answer within [`START_WITHIN`].
    pub(crate) async fn start(bench: &Bench, name: &str, spec: &Spec<'_>) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .context("no free port")?
            .port();
        let log = bench.logs.join(format!("{name}.log"));
        let output =
            File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
        let errors = output.try_clone()?;
        let child = Command::new(&bench.orchestrator)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("RUST_LOG", LOG_LEVEL)
            .env("BIND_HOST", "127.0.0.1")
            .env("PORT", port.to_string())
            .env("DATABASE_URL", spec.database_url)
            .env("PROVIDER_BASE_URL", spec.provider_url)
            .env(
                "MAX_CONCURRENT_CALLS",
                spec.max_concurrent_calls.to_string(),
            )
            .stdin(Stdio::null())
            .stdout(output)
            .stderr(errors)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", bench.orchestrator.display()))?;
        if let Some(pid) = child.id() {
            spawn_reaper(pid);
        }
        let mut server = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            ready_at: Instant::now(),
            log,
        };
        server
            .wait_ready()
            .await
            .with_context(|| format!("server {name}"))?;
        Ok(server)
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()?;
        let deadline = Instant::now() + START_WITHIN;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("it exited ({status}); log:\n{}", self.log_tail());
            }
            if let Ok(response) = client.get(format!("{}/health", self.url)).send().await {
                if response.status() == 200 {
                    self.ready_at = Instant::now();
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "no 200 from /health within {START_WITHIN:?}; log:\n{}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// SIGTERM, then waits for the exit (its sessions end with it).
    ///
    /// # Errors
    /// When it does not exit within [`STOP_WITHIN`] (it is killed then).
    pub(crate) async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(pid) = self.child.id() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
        match tokio::time::timeout(STOP_WITHIN, self.child.wait()).await {
            Ok(status) => {
                status?;
                Ok(())
            }
            Err(_) => {
                let _ = self.child.kill().await;
                bail!(
                    "the server did not stop within {STOP_WITHIN:?} of SIGTERM; log:\n{}",
                    self.log_tail()
                )
            }
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        format!("({})\n{}", self.log.display(), tail(&text))
    }
}
