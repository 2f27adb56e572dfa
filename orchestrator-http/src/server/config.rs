//! The `orchestrator` binary's configuration (SPEC section 6): command-line
//! flags, each with a matching environment variable, read once into a
//! validated [`Config`]. A bad value is a clear error at start naming the
//! variable, never a panic later.
//!
//! | variable | flag | default | meaning |
//! |---|---|---|---|
//! | `DATABASE_URL` | `--database-url` | none: in-memory store | PostgreSQL URL; migrations are applied at start |
//! | `BIND_HOST` | `--bind-host` | `0.0.0.0` | address to listen on |
//! | `PORT` | `--port` | `8080` | port to listen on (0: any free port) |
//! | `MAX_CONCURRENT_CALLS` | `--max-concurrent-calls` | `30` | global cap on IN_PROGRESS calls |
//! | `MAX_ATTEMPTS` | `--max-attempts` | `3` | dials before a call fails |
//! | `BASE_RETRY_SECONDS` | `--base-retry-seconds` | `30` | back-off after the first failed attempt, doubling |
//! | `MAX_RETRY_SECONDS` | `--max-retry-seconds` | `600` | cap on one back-off |
//! | `STALE_INPROG_SECONDS` | `--stale-inprog-seconds` | `900` | IN_PROGRESS this long without a webhook is a failed attempt |
//! | `PENDING_TTL_SECONDS` | `--pending-ttl-seconds` | none | calls without `expiresAt` expire this long after creation |
//! | `PROVIDER_BASE_URL` | `--provider-base-url` | none: simulated provider | the AI-call provider |
//! | `PROVIDER_API_KEY` | `--provider-api-key` | none | sent as `Authorization: Bearer` |
//! | `PROVIDER_TIMEOUT_MS` | `--provider-timeout-ms` | `10000` | bound on one dial request |
//! | `PUBLIC_BASE_URL` | `--public-base-url` | `http://127.0.0.1:{port}` | our URL as the provider reaches it, for `webhookUrl` |
//! | `WEBHOOK_SECRET` | `--webhook-secret` | none: unsigned webhooks accepted | Standard Webhooks secret `whsec_<base64>` |
//! | `LOG_FORMAT` | `--log-format` | `text` | `text` or `json` |
//! | `RUST_LOG` | | `info` | log filter (tracing-subscriber `EnvFilter`) |
//!
//! Durations are seconds and may be fractional (`BASE_RETRY_SECONDS=0.2`).

use std::fmt;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use orchestrator_core::retry::RetryPolicyError;
use orchestrator_core::{EngineConfig, RetryPolicy};
use reqwest::Url;

use crate::signature::WebhookSecret;

/// The `orchestrator` command line.
#[derive(Debug, Parser)]
#[command(
    name = "orchestrator",
    version,
    about = "Outbound AI voice call orchestrator: HTTP API, dispatcher and webhook intake.",
    long_about = None
)]
pub struct Cli {
    /// What to do; `serve` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Settings shared by every subcommand.
    #[command(flatten)]
    pub settings: Settings,
}

/// Subcommands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Subcommand)]
pub enum Command {
    /// Serve the HTTP API and dispatch calls (the default).
    Serve,
    /// Apply the PostgreSQL migrations to DATABASE_URL and exit.
    Migrate,
}

/// Log line format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The raw settings, as flags or environment variables (flags win).
#[derive(Clone, Args)]
pub struct Settings {
    /// PostgreSQL URL; without it calls live in memory.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<String>,
    /// Address to listen on.
    #[arg(long, env = "BIND_HOST", default_value = "0.0.0.0", global = true)]
    pub bind_host: String,
    /// Port to listen on (0 picks a free port).
    #[arg(long, env = "PORT", default_value_t = 8080, global = true)]
    pub port: u16,
    /// Global cap on calls in progress.
    #[arg(
        long,
        env = "MAX_CONCURRENT_CALLS",
        default_value_t = 30,
        global = true
    )]
    pub max_concurrent_calls: u32,
    /// Dials before a call fails.
    #[arg(long, env = "MAX_ATTEMPTS", default_value_t = 3, global = true)]
    pub max_attempts: u32,
    /// Back-off after the first failed attempt, seconds (doubles per attempt).
    #[arg(long, env = "BASE_RETRY_SECONDS", default_value = "30", value_parser = seconds("BASE_RETRY_SECONDS"), global = true)]
    pub base_retry_seconds: Duration,
    /// Cap on one back-off, seconds.
    #[arg(long, env = "MAX_RETRY_SECONDS", default_value = "600", value_parser = seconds("MAX_RETRY_SECONDS"), global = true)]
    pub max_retry_seconds: Duration,
    /// A call in progress this long without a webhook is a failed attempt, seconds.
    #[arg(long, env = "STALE_INPROG_SECONDS", default_value = "900", value_parser = seconds("STALE_INPROG_SECONDS"), global = true)]
    pub stale_inprog_seconds: Duration,
    /// Calls created without expiresAt expire this long after creation, seconds.
    #[arg(long, env = "PENDING_TTL_SECONDS", value_parser = seconds("PENDING_TTL_SECONDS"), global = true)]
    pub pending_ttl_seconds: Option<Duration>,
    /// The AI-call provider's base URL; without it a simulated provider answers.
    #[arg(long, env = "PROVIDER_BASE_URL", global = true)]
    pub provider_base_url: Option<String>,
    /// Sent to the provider as `Authorization: Bearer <key>`.
    #[arg(long, env = "PROVIDER_API_KEY", global = true, hide_env_values = true)]
    pub provider_api_key: Option<String>,
    /// Bound on one dial request, milliseconds.
    #[arg(
        long,
        env = "PROVIDER_TIMEOUT_MS",
        default_value_t = 10_000,
        global = true
    )]
    pub provider_timeout_ms: u64,
    /// Our base URL as the provider reaches it (default `http://127.0.0.1:<port>`).
    #[arg(long, env = "PUBLIC_BASE_URL", global = true)]
    pub public_base_url: Option<String>,
    /// Standard Webhooks secret (`whsec_<base64>`); webhooks must then be signed.
    #[arg(long, env = "WEBHOOK_SECRET", global = true, hide_env_values = true)]
    pub webhook_secret: Option<String>,
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
}

impl fmt::Debug for Settings {
    /// Secrets and the database URL (which may hold a password) are not shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("bind_host", &self.bind_host)
            .field("port", &self.port)
            .field("max_concurrent_calls", &self.max_concurrent_calls)
            .field("provider_base_url", &self.provider_base_url)
            .finish_non_exhaustive()
    }
}

/// A value parser for a duration in (possibly fractional) seconds, whose
/// errors name the environment variable.
fn seconds(variable: &'static str) -> impl Fn(&str) -> Result<Duration, String> + Clone {
    move |raw: &str| {
        let value: f64 = raw
            .trim()
            .parse()
            .map_err(|_| format!("{variable} must be a number of seconds, e.g. 30 or 0.2"))?;
        if !value.is_finite() || value < 0.0 {
            return Err(format!(
                "{variable} must be a finite, non-negative number of seconds"
            ));
        }
        Duration::try_from_secs_f64(value).map_err(|_| format!("{variable} is too large"))
    }
}

/// A configuration value is invalid; names the variable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {variable} {message}")]
pub struct ConfigError {
    /// The environment variable at fault (the flag is its kebab-case twin).
    pub variable: &'static str,
    /// What is wrong.
    pub message: String,
}

impl ConfigError {
    fn new(variable: &'static str, message: impl Into<String>) -> Self {
        Self {
            variable,
            message: message.into(),
        }
    }
}

/// Where the provider is, when it is a real one.
#[derive(Clone)]
pub struct ProviderSettings {
    /// `PROVIDER_BASE_URL`.
    pub base_url: Url,
    /// `PROVIDER_API_KEY`.
    pub api_key: Option<String>,
    /// `PROVIDER_TIMEOUT_MS`.
    pub timeout: Duration,
}

impl fmt::Debug for ProviderSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProviderSettings")
            .field("base_url", &self.base_url.as_str())
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// The validated configuration.
#[derive(Clone)]
pub struct Config {
    /// `DATABASE_URL`; `None` for the in-memory store.
    pub database_url: Option<String>,
    /// `BIND_HOST`.
    pub bind_host: String,
    /// `PORT`.
    pub port: u16,
    /// The engine's rules, built through the core's validating constructors.
    pub engine: EngineConfig,
    /// The real provider; `None` for the simulated one.
    pub provider: Option<ProviderSettings>,
    /// `PUBLIC_BASE_URL`; `None` for `http://127.0.0.1:{bound port}`.
    pub public_base_url: Option<Url>,
    /// `WEBHOOK_SECRET`.
    pub webhook_secret: Option<WebhookSecret>,
    /// `LOG_FORMAT`.
    pub log_format: LogFormat,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("database", &self.database_url.as_deref().map(redact_url))
            .field("bind_host", &self.bind_host)
            .field("port", &self.port)
            .field("engine", &self.engine)
            .field("provider", &self.provider)
            .field(
                "public_base_url",
                &self.public_base_url.as_ref().map(Url::as_str),
            )
            .field("webhook_secret", &self.webhook_secret)
            .finish_non_exhaustive()
    }
}

/// `url` without its password, for logs.
#[must_use]
pub fn redact_url(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("***"));
            }
            parsed.to_string()
        }
        Err(_) => "<unparseable URL>".to_owned(),
    }
}

fn http_url(variable: &'static str, raw: &str) -> Result<Url, ConfigError> {
    let url = Url::parse(raw.trim())
        .map_err(|error| ConfigError::new(variable, format!("is not a URL ({error}): {raw:?}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
        return Err(ConfigError::new(
            variable,
            "must be an http:// or https:// URL",
        ));
    }
    Ok(url)
}

impl Config {
    /// Validates `settings`.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first variable at fault.
    pub fn from_settings(settings: Settings) -> Result<Self, ConfigError> {
        let retry = RetryPolicy::new(
            settings.base_retry_seconds,
            settings.max_retry_seconds,
            settings.max_attempts,
            RetryPolicy::DEFAULT_JITTER,
        )
        .map_err(|error| match error {
            RetryPolicyError::ZeroBase => {
                ConfigError::new("BASE_RETRY_SECONDS", "must be greater than 0")
            }
            RetryPolicyError::MaxBelowBase { base, max } => ConfigError::new(
                "MAX_RETRY_SECONDS",
                format!(
                    "({}) must be at least BASE_RETRY_SECONDS ({})",
                    max.as_secs_f64(),
                    base.as_secs_f64()
                ),
            ),
            RetryPolicyError::ZeroAttempts => {
                ConfigError::new("MAX_ATTEMPTS", "must be at least 1")
            }
            other => ConfigError::new("BASE_RETRY_SECONDS", other.to_string()),
        })?;
        let engine = EngineConfig {
            max_concurrent_calls: settings.max_concurrent_calls,
            retry,
            lease: settings.stale_inprog_seconds,
            pending_ttl: settings.pending_ttl_seconds,
            ..EngineConfig::default()
        };
        engine.validate().map_err(|error| {
            let variable = match error.field {
                "max_concurrent_calls" => "MAX_CONCURRENT_CALLS",
                "lease" => "STALE_INPROG_SECONDS",
                "pending_ttl" => "PENDING_TTL_SECONDS",
                _ => "engine configuration",
            };
            ConfigError::new(variable, error.problem)
        })?;
        let database_url = match settings.database_url {
            Some(url) if url.trim().is_empty() => None,
            Some(url) => {
                let scheme = Url::parse(url.trim()).map(|u| u.scheme().to_owned());
                if !matches!(scheme.as_deref(), Ok("postgres" | "postgresql")) {
                    return Err(ConfigError::new(
                        "DATABASE_URL",
                        "must be a postgres:// or postgresql:// URL",
                    ));
                }
                Some(url.trim().to_owned())
            }
            None => None,
        };
        if settings.provider_timeout_ms == 0 {
            return Err(ConfigError::new(
                "PROVIDER_TIMEOUT_MS",
                "must be at least 1",
            ));
        }
        let provider = match settings.provider_base_url.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(raw) => Some(ProviderSettings {
                base_url: http_url("PROVIDER_BASE_URL", raw)?,
                api_key: match settings.provider_api_key {
                    Some(key) if !key.is_empty() && !key.bytes().all(|b| b.is_ascii_graphic()) => {
                        return Err(ConfigError::new(
                            "PROVIDER_API_KEY",
                            "must be visible ASCII characters without spaces",
                        ))
                    }
                    Some(key) if key.is_empty() => None,
                    other => other,
                },
                timeout: Duration::from_millis(settings.provider_timeout_ms),
            }),
        };
        let public_base_url = match settings.public_base_url.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(raw) => Some(http_url("PUBLIC_BASE_URL", raw)?),
        };
        let webhook_secret = match settings.webhook_secret.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(raw) => Some(
                raw.parse::<WebhookSecret>()
                    .map_err(|error| ConfigError::new("WEBHOOK_SECRET", error.to_string()))?,
            ),
        };
        if settings.bind_host.trim().is_empty() {
            return Err(ConfigError::new("BIND_HOST", "must not be empty"));
        }
        Ok(Self {
            database_url,
            bind_host: settings.bind_host.trim().to_owned(),
            port: settings.port,
            engine,
            provider,
            public_base_url,
            webhook_secret,
            log_format: settings.log_format,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, String> {
        let cli = Cli::try_parse_from(std::iter::once("orchestrator").chain(args.iter().copied()))
            .map_err(|error| error.to_string())?;
        Config::from_settings(cli.settings).map_err(|error| error.to_string())
    }

    #[test]
    fn defaults_follow_the_spec() {
        let config = parse(&[]).unwrap();
        assert_eq!(config.port, 8080);
        assert_eq!(config.bind_host, "0.0.0.0");
        assert_eq!(config.engine.max_concurrent_calls, 30);
        assert_eq!(config.engine.retry.max_attempts(), 3);
        assert_eq!(config.engine.retry.base(), Duration::from_secs(30));
        assert_eq!(config.engine.retry.max_delay(), Duration::from_secs(600));
        assert_eq!(config.engine.lease, Duration::from_secs(900));
        assert_eq!(config.engine.pending_ttl, None);
    }

    #[test]
    fn durations_accept_fractions() {
        let config = parse(&[
            "--base-retry-seconds",
            "0.2",
            "--max-retry-seconds",
            "1.5",
            "serve",
            "--pending-ttl-seconds",
            "0.25",
        ])
        .unwrap();
        assert_eq!(config.engine.retry.base(), Duration::from_millis(200));
        assert_eq!(config.engine.retry.max_delay(), Duration::from_millis(1500));
        assert_eq!(config.engine.pending_ttl, Some(Duration::from_millis(250)));
    }

    #[test]
    fn errors_name_the_variable() {
        let cases: [(&[&str], &str); 8] = [
            (&["--base-retry-seconds", "abc"], "BASE_RETRY_SECONDS"),
            (&["--base-retry-seconds=-1"], "BASE_RETRY_SECONDS"),
            (&["--base-retry-seconds", "0"], "BASE_RETRY_SECONDS"),
            (&["--max-retry-seconds", "1"], "MAX_RETRY_SECONDS"),
            (&["--max-attempts", "0"], "MAX_ATTEMPTS"),
            (&["--max-concurrent-calls", "0"], "MAX_CONCURRENT_CALLS"),
            (&["--stale-inprog-seconds", "0"], "STALE_INPROG_SECONDS"),
            (&["--webhook-secret", "hunter2"], "WEBHOOK_SECRET"),
        ];
        for (args, variable) in cases {
            let error = parse(args).unwrap_err();
            assert!(error.contains(variable), "{args:?}: {error}");
        }
        let error = parse(&["--provider-base-url", "ftp://x"]).unwrap_err();
        assert!(error.contains("PROVIDER_BASE_URL"), "{error}");
        let error = parse(&["--database-url", "mysql://x"]).unwrap_err();
        assert!(error.contains("DATABASE_URL"), "{error}");
    }

    #[test]
    fn database_passwords_are_not_logged() {
        assert_eq!(
            redact_url("postgres://app:s3cret@db:5432/calls"),
            "postgres://app:***@db:5432/calls"
        );
    }
}
