//! Child processes: run to completion within a bound, or keep running and
//! die with us.

use std::process::{Command as StdCommand, Stdio};
use std::time::Duration;

use anyhow::{bail, Context as _};
use tokio::process::Command;

/// Runs `command` to completion within `within` and returns its stdout.
/// The child is killed if the bound passes or this future is dropped.
///
/// # Errors
/// When it cannot start, does not finish in time, or exits unsuccessfully
/// (with the end of its stderr).
pub(crate) async fn output(
    what: &str,
    command: &mut Command,
    within: Duration,
) -> anyhow::Result<String> {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {what}"))?;
    let output = tokio::time::timeout(within, child.wait_with_output())
        .await
        .with_context(|| format!("{what} did not finish within {within:?}"))?
        .with_context(|| format!("{what} failed to run"))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        bail!(
            "{what} failed ({}): {}{}",
            output.status,
            tail(&String::from_utf8_lossy(&output.stderr)),
            tail(&stdout)
        );
    }
    Ok(stdout)
}

/// The last 2,000 characters of `text`.
pub(crate) fn tail(text: &str) -> &str {
    let start = text.len().saturating_sub(2000);
    let start = (start..text.len())
        .find(|at| text.is_char_boundary(*at))
        .unwrap_or(text.len());
    &text[start..]
}

/// A detached shell that kills `child` once this process is gone, however
/// it ended (even `kill -9`, which runs no destructor).
pub(crate) fn spawn_reaper(child: u32) {
    let script = format!(
        "while kill -0 {parent} 2>/dev/null && kill -0 {child} 2>/dev/null; do sleep 1; done; \
         kill -9 {child} 2>/dev/null",
        parent = std::process::id(),
    );
    let _ = StdCommand::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
}

/// `future`'s output, or an error naming `what` when `within` passes first.
///
/// # Errors
/// The timeout, or `future`'s own error.
pub(crate) async fn bounded<T, E>(
    what: &str,
    within: Duration,
    future: impl std::future::Future<Output = Result<T, E>>,
) -> anyhow::Result<T>
where
    E: Into<anyhow::Error>,
{
    match tokio::time::timeout(within, future).await {
        Ok(result) => result.map_err(Into::into).with_context(|| what.to_owned()),
        Err(_) => bail!("{what} did not finish within {within:?}"),
    }
}
