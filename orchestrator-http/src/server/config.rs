//! The `orchestrator` binary's configuration: command-line flags, each with a
//! matching environment variable (flags win), parsed by clap into typed
//! values and read once into a [`Config`]. A bad value stops the program at
//! start with a message naming the flag and the variable, before our code runs.
//!
//! | variable | flag | default | meaning |
//! |---|---|---|---|
//! | `DATABASE_URL` | `--database-url` | none: in-memory store | PostgreSQL URL (`postgres://` or `postgresql://`, TLS with `?sslmode=require` or `verify-full`); migrations are applied at start |
//! | `DATABASE_SCHEMA` | `--database-schema` | `public` | PostgreSQL schema of the store's tables and its own migrations table, created if missing: give the store one of its own in a database shared with another application |
//! | `API_KEYS` | `--api-keys` | none | comma-separated keys, each 16 to 512 visible ASCII characters; when set (or `API_KEYS_FILE`), every route but `GET /health`, `GET /ready` and the provider webhooks requires `Authorization: Bearer <key>` |
//! | `API_KEYS_FILE` | `--api-keys-file` | none | a file of keys, one a line; blank lines and lines starting with `#` are ignored; adds to `API_KEYS` |
//! | `BIND_HOST` | `--bind-host` | `0.0.0.0` with API keys, else `127.0.0.1` | address to listen on |
//! | `PORT` | `--port` | `8080` | port to listen on (0: any free port) |
//! | `HEADER_READ_TIMEOUT_SECONDS` | `--header-read-timeout-seconds` | `10` | longest a client may take to send a request's headers, from its connection's opening or its previous answer (so also the keep-alive idle timeout) |
//! | `MAX_CONNECTIONS` | `--max-connections` | 1024, or half the open-file limit when lower | most connections open at once; at the limit a new one replaces the one that waited longest |
//! | `SHUTDOWN_DRAIN_SECONDS` | `--shutdown-drain-seconds` | `10` | on SIGTERM or Ctrl-C, dispatching stops at once and requests (webhooks included) are still answered while some are in progress, for at most this long; dial requests in flight get the same bound |
//! | `MAX_CONCURRENT_CALLS` | `--max-concurrent-calls` | `30` | global cap on IN_PROGRESS calls, at least 1 |
//! | `MAX_ATTEMPTS` | `--max-attempts` | `3` | dials before a call fails, at least 1 |
//! | `BASE_RETRY_SECONDS` | `--base-retry-seconds` | `30` | back-off after the first failed attempt, doubling |
//! | `MAX_RETRY_SECONDS` | `--max-retry-seconds` | `600` | cap on one back-off, at least `BASE_RETRY_SECONDS` |
//! | `STALE_INPROG_SECONDS` | `--stale-inprog-seconds` | `900` | IN_PROGRESS this long without a webhook is a failed attempt |
//! | `PENDING_TTL_SECONDS` | `--pending-ttl-seconds` | none | calls without `expiresAt` expire this long after creation |
//! | `RETENTION_SECONDS` | `--retention-seconds` | none: keep every call | terminal calls that ended longer ago are deleted, in small batches every few seconds |
//! | `REDIAL_ON` | `--redial-on` | none | webhook outcomes re-dialled with back-off instead of failing the call: any of `BUSY`, `NO_ANSWER`, `VOICEMAIL` (platform adapters), comma-separated |
//! | `PROVIDER_BASE_URL` | `--provider-base-url` | none: simulated provider | the AI-call provider, `http://` or `https://` |
//! | `PROVIDER_API_KEY` | `--provider-api-key` | none | sent as `Authorization: Bearer`; visible ASCII |
//! | `PROVIDER_TIMEOUT_MS` | `--provider-timeout-ms` | `10000` | bound on one dial request, milliseconds, at least 1 |
//! | `PUBLIC_BASE_URL` | `--public-base-url` | `http://127.0.0.1:{port}` | our URL as the provider reaches it, for `webhookUrl` |
//! | `WEBHOOK_SECRET` | `--webhook-secret` | none: unsigned webhooks accepted | Standard Webhooks secret `whsec_<base64>` |
//! | `CALLBACK_URL` | `--callback-url` | none: only calls with a `callbackUrl` get callbacks | the `callbackUrl` of calls created without one, `http://` or `https://` |
//! | `CALLBACK_SECRET` | `--callback-secret` | none: callbacks are sent unsigned | Standard Webhooks secret `whsec_<base64>` that signs client callbacks |
//! | `CALLBACK_TIMEOUT_MS` | `--callback-timeout-ms` | `5000` | bound on one callback try, milliseconds, at least 1 |
//! | `CALLBACK_MAX_ATTEMPTS` | `--callback-max-attempts` | `10` | tries of one callback before it is `FAILED`, at least 1 |
//! | `CALLBACK_BASE_RETRY_SECONDS` | `--callback-base-retry-seconds` | `5` | wait after the first failed callback try, doubling (less up to half, at random) |
//! | `CALLBACK_MAX_RETRY_SECONDS` | `--callback-max-retry-seconds` | `3600` | cap on one wait between callback tries, at least `CALLBACK_BASE_RETRY_SECONDS` |
//! | `CALLBACK_ALLOW_PRIVATE_NETWORKS` | `--callback-allow-private-networks` | `false` | also send callbacks to loopback, private and link-local addresses (refused by default: a `callbackUrl` is chosen by API clients) |
//! | `PROVIDER` | `--provider` | `generic` | which provider API dials: `generic` (the contract above, `PROVIDER_BASE_URL`), `vapi` or `retell` |
//! | `RETELL_API_KEY` | `--retell-api-key` | none; required with `PROVIDER=retell` | Retell API key: sent as `Authorization: Bearer`, and the key that verifies `x-retell-signature` on `POST /callbacks/retell` |
//! | `RETELL_BASE_URL` | `--retell-base-url` | `https://api.retellai.com` | Retell's API, overridable for tests and the mock provider |
//! | `RETELL_FROM_NUMBER` | `--retell-from-number` | none; required with `PROVIDER=retell` | the number Retell calls from (E.164, bought from or imported to Retell) |
//! | `VAPI_API_KEY` | `--vapi-api-key` | none (required with `PROVIDER=vapi`) | Vapi private API key, sent as `Authorization: Bearer` |
//! | `VAPI_BASE_URL` | `--vapi-base-url` | `https://api.vapi.ai` | Vapi's API, `http://` or `https://` (a stand-in in tests) |
//! | `VAPI_PHONE_NUMBER_ID` | `--vapi-phone-number-id` | none (required with `PROVIDER=vapi`) | the Vapi phone number calls are placed from |
//! | `VAPI_WEBHOOK_AUTH` | `--vapi-webhook-auth` | `hmac` | how `POST /callbacks/vapi` is authenticated: `hmac` (Vapi's HMAC credential with its defaults) or `bearer` (`Authorization: Bearer` or `X-Vapi-Secret`) |
//! | `VAPI_WEBHOOK_SECRET` | `--vapi-webhook-secret` | none | the secret of that credential, at least 16 visible ASCII characters; required with `PROVIDER=vapi` unless `VAPI_WEBHOOK_INSECURE=true` |
//! | `VAPI_WEBHOOK_INSECURE` | `--vapi-webhook-insecure` | `false` | `true` accepts unauthenticated Vapi webhooks (development only; anyone reaching the route can settle calls) |
//! | `LOG_FORMAT` | `--log-format` | `text` | `text` or `json` |
//! | `RUST_LOG` | | `info` | log filter (tracing-subscriber `EnvFilter`) |
//!
//! Durations (the `_SECONDS` settings) are a number of seconds, fractions
//! allowed (`0.2`), or numbers with units `ms`, `s`, `m`, `h`, `d`, also
//! combined: `250ms`, `1.5s`, `10m`, `1h30m`. See [`parse_duration`].
//!
//! An environment variable set to the empty string counts as unset (see
//! [`parse_args`]), as `VAR=` in a compose file usually means "no value".
//! Secrets (`DATABASE_URL`'s password, `API_KEYS`, `PROVIDER_API_KEY`,
//! `WEBHOOK_SECRET`, `CALLBACK_SECRET`) are held in [`secrecy`] wrappers: no `Debug` output,
//! log line or configuration error shows them.
//!
//! Without API keys the server still starts, for development: it says so
//! in a warning at start and listens on `127.0.0.1` only, unless `BIND_HOST`
//! is set.
//!
//! `orchestrator migrate` applies the PostgreSQL migrations and exits;
//! `migrate --create-database` first creates the database `DATABASE_URL`
//! names if it does not exist (the role then needs `CREATEDB`).

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::marker::PhantomData;
use std::num::{NonZeroU32, NonZeroU64, NonZeroUsize};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::builder::{NonEmptyStringValueParser, TypedValueParser};
use clap::error::ErrorKind;
use clap::{Args, Parser, Subcommand, ValueEnum};
use orchestrator_core::retry::RetryPolicyError;
use orchestrator_core::{CallbackUrl, EngineConfig, PhoneNumber, RedialPolicy, RetryPolicy};
use reqwest::Url;
use secrecy::{ExposeSecret, SecretString};

use crate::auth::{ApiKeyError, ApiKeys};
use crate::egress::Targets;
use crate::platforms::vapi::webhook::{VapiSecret, VapiWebhookAuth};
use crate::platforms::vapi::VapiConfig;
use crate::provider::ApiKey;
use crate::server::connections::{default_max_connections, ServeOptions};
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
    Migrate(MigrateArgs),
}

/// What `migrate` does besides applying the migrations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Args)]
pub struct MigrateArgs {
    /// First create the database DATABASE_URL names, if it does not exist
    /// (the role needs the CREATEDB attribute then).
    #[arg(long)]
    pub create_database: bool,
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

/// A webhook outcome that may be re-dialled (`REDIAL_ON`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Redial {
    /// The callee's line was busy.
    #[value(name = "BUSY")]
    Busy,
    /// Nobody answered.
    #[value(name = "NO_ANSWER")]
    NoAnswer,
    /// An answering machine took the call (reported by platform adapters).
    #[value(name = "VOICEMAIL")]
    Voicemail,
}

/// Which provider API dials calls (`PROVIDER`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum ProviderKind {
    /// The generic HTTP contract (`PROVIDER_BASE_URL`), or the simulated
    /// provider without a base URL.
    #[default]
    Generic,
    /// Vapi (`VAPI_*`).
    Vapi,
    /// Retell AI (`RETELL_*`).
    Retell,
}

/// The settings, as flags or environment variables (flags win), each parsed
/// into its type by clap.
#[derive(Clone, Debug, Args)]
pub struct Settings {
    /// PostgreSQL URL; without it calls live in memory.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true, value_parser = secret::<DatabaseUrl>())]
    pub database_url: Option<DatabaseUrl>,
    /// PostgreSQL schema of the store's tables and migrations (default public).
    #[cfg(feature = "postgres")]
    #[arg(long, env = "DATABASE_SCHEMA", global = true, value_parser = schema_name)]
    pub database_schema: Option<orchestrator_pg::SchemaName>,
    /// Comma-separated API keys; with any, requests need `Authorization: Bearer <key>`.
    #[arg(long, env = "API_KEYS", global = true, hide_env_values = true, value_parser = secret::<ApiKeys>())]
    pub api_keys: Option<ApiKeys>,
    /// A file of API keys, one a line (`#` comments and blank lines ignored).
    #[arg(long, env = "API_KEYS_FILE", global = true)]
    pub api_keys_file: Option<PathBuf>,
    /// Address to listen on (default 0.0.0.0 with API keys, else 127.0.0.1).
    #[arg(long, env = "BIND_HOST", global = true, value_parser = NonEmptyStringValueParser::new())]
    pub bind_host: Option<String>,
    /// Port to listen on (0 picks a free port).
    #[arg(long, env = "PORT", default_value_t = 8080, global = true)]
    pub port: u16,
    /// Longest a client may take to send a request's headers (also the keep-alive idle timeout).
    #[arg(long, env = "HEADER_READ_TIMEOUT_SECONDS", default_value = "10", value_parser = positive_duration, global = true)]
    pub header_read_timeout_seconds: Duration,
    /// Most connections open at once (default 1024, or half the open-file limit when lower).
    #[arg(long, env = "MAX_CONNECTIONS", value_parser = at_least_one::<NonZeroUsize>, global = true)]
    pub max_connections: Option<NonZeroUsize>,
    /// On SIGTERM or Ctrl-C, the longest requests in progress are waited for.
    #[arg(long, env = "SHUTDOWN_DRAIN_SECONDS", default_value = "10", value_parser = positive_duration, global = true)]
    pub shutdown_drain_seconds: Duration,
    /// Global cap on calls in progress.
    #[arg(
        long,
        env = "MAX_CONCURRENT_CALLS",
        default_value = "30",
        global = true
    )]
    pub max_concurrent_calls: NonZeroU32,
    /// Dials before a call fails.
    #[arg(long, env = "MAX_ATTEMPTS", default_value = "3", value_parser = at_least_one::<NonZeroU32>, global = true)]
    pub max_attempts: NonZeroU32,
    /// Back-off after the first failed attempt (doubles per attempt): seconds, or e.g. 250ms, 10m.
    #[arg(long, env = "BASE_RETRY_SECONDS", default_value = "30", value_parser = positive_duration, global = true)]
    pub base_retry_seconds: Duration,
    /// Cap on one back-off: seconds, or e.g. 10m.
    #[arg(long, env = "MAX_RETRY_SECONDS", default_value = "600", value_parser = positive_duration, global = true)]
    pub max_retry_seconds: Duration,
    /// A call in progress this long without a webhook is a failed attempt: seconds, or e.g. 15m.
    #[arg(long, env = "STALE_INPROG_SECONDS", default_value = "900", value_parser = positive_duration, global = true)]
    pub stale_inprog_seconds: Duration,
    /// Calls created without expiresAt expire this long after creation: seconds, or e.g. 1h.
    #[arg(long, env = "PENDING_TTL_SECONDS", value_parser = positive_duration, global = true)]
    pub pending_ttl_seconds: Option<Duration>,
    /// Terminal calls that ended longer ago are deleted: seconds, or e.g. 30d.
    #[arg(long, env = "RETENTION_SECONDS", value_parser = positive_duration, global = true)]
    pub retention_seconds: Option<Duration>,
    /// Webhook outcomes re-dialled with back-off instead of failing the call.
    #[arg(
        long,
        env = "REDIAL_ON",
        value_enum,
        value_delimiter = ',',
        ignore_case = true,
        global = true
    )]
    pub redial_on: Vec<Redial>,
    /// The AI-call provider's base URL; without it a simulated provider answers.
    #[arg(long, env = "PROVIDER_BASE_URL", value_parser = http_url, global = true)]
    pub provider_base_url: Option<Url>,
    /// Sent to the provider as `Authorization: Bearer <key>`.
    #[arg(long, env = "PROVIDER_API_KEY", global = true, hide_env_values = true, value_parser = secret::<ApiKey>())]
    pub provider_api_key: Option<ApiKey>,
    /// Bound on one dial request, milliseconds.
    #[arg(
        long,
        env = "PROVIDER_TIMEOUT_MS",
        default_value = "10000",
        value_parser = at_least_one::<NonZeroU64>,
        global = true
    )]
    pub provider_timeout_ms: NonZeroU64,
    /// Our base URL as the provider reaches it (default `http://127.0.0.1:<port>`).
    #[arg(long, env = "PUBLIC_BASE_URL", value_parser = http_url, global = true)]
    pub public_base_url: Option<Url>,
    /// Standard Webhooks secret (`whsec_<base64>`); webhooks must then be signed.
    #[arg(long, env = "WEBHOOK_SECRET", global = true, hide_env_values = true, value_parser = secret::<WebhookSecret>())]
    pub webhook_secret: Option<WebhookSecret>,
    /// The `callbackUrl` of calls created without one.
    #[arg(long, env = "CALLBACK_URL", value_parser = callback_url, global = true)]
    pub callback_url: Option<CallbackUrl>,
    /// Standard Webhooks secret (`whsec_<base64>`) signing client callbacks; unsigned without it.
    #[arg(long, env = "CALLBACK_SECRET", global = true, hide_env_values = true, value_parser = secret::<WebhookSecret>())]
    pub callback_secret: Option<WebhookSecret>,
    /// Bound on one callback try, milliseconds.
    #[arg(
        long,
        env = "CALLBACK_TIMEOUT_MS",
        default_value = "5000",
        value_parser = at_least_one::<NonZeroU64>,
        global = true
    )]
    pub callback_timeout_ms: NonZeroU64,
    /// Tries of one callback delivery before it is failed.
    #[arg(long, env = "CALLBACK_MAX_ATTEMPTS", default_value = "10", value_parser = at_least_one::<NonZeroU32>, global = true)]
    pub callback_max_attempts: NonZeroU32,
    /// Wait after the first failed callback try, doubling up to the cap.
    #[arg(long, env = "CALLBACK_BASE_RETRY_SECONDS", default_value = "5", value_parser = positive_duration, global = true)]
    pub callback_base_retry_seconds: Duration,
    /// Cap on one wait between callback tries.
    #[arg(long, env = "CALLBACK_MAX_RETRY_SECONDS", default_value = "3600", value_parser = positive_duration, global = true)]
    pub callback_max_retry_seconds: Duration,
    /// Also send callbacks to loopback, private and link-local addresses.
    #[arg(long, env = "CALLBACK_ALLOW_PRIVATE_NETWORKS", default_value_t = false, action = clap::ArgAction::Set, global = true)]
    pub callback_allow_private_networks: bool,
    /// Which provider API dials calls.
    #[arg(long, env = "PROVIDER", value_enum, default_value_t = ProviderKind::Generic, ignore_case = true, global = true)]
    pub provider: ProviderKind,
    /// Retell API key: authenticates our requests and verifies Retell's webhook signatures.
    #[arg(long, env = "RETELL_API_KEY", global = true, hide_env_values = true, value_parser = secret::<ApiKey>())]
    pub retell_api_key: Option<ApiKey>,
    /// Retell's API base URL.
    #[arg(long, env = "RETELL_BASE_URL", default_value = crate::platforms::retell::provider::DEFAULT_BASE_URL, value_parser = http_url, global = true)]
    pub retell_base_url: Url,
    /// The number Retell calls from, E.164.
    #[arg(long, env = "RETELL_FROM_NUMBER", value_parser = phone_number, global = true)]
    pub retell_from_number: Option<PhoneNumber>,
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    /// Vapi private API key.
    #[arg(long, env = "VAPI_API_KEY", global = true, hide_env_values = true, value_parser = secret::<ApiKey>())]
    pub vapi_api_key: Option<ApiKey>,
    /// Vapi's API base URL.
    #[arg(long, env = "VAPI_BASE_URL", default_value = crate::platforms::vapi::DEFAULT_BASE_URL, value_parser = http_url, global = true)]
    pub vapi_base_url: Url,
    /// The Vapi phone number id calls are placed from.
    #[arg(long, env = "VAPI_PHONE_NUMBER_ID", value_parser = NonEmptyStringValueParser::new(), global = true)]
    pub vapi_phone_number_id: Option<String>,
    /// How Vapi's webhooks are authenticated.
    #[arg(long, env = "VAPI_WEBHOOK_AUTH", value_enum, default_value_t = VapiAuthKind::Hmac, ignore_case = true, global = true)]
    pub vapi_webhook_auth: VapiAuthKind,
    /// The secret of Vapi's HMAC or bearer credential.
    #[arg(long, env = "VAPI_WEBHOOK_SECRET", global = true, hide_env_values = true, value_parser = secret::<VapiSecret>())]
    pub vapi_webhook_secret: Option<VapiSecret>,
    /// Accept unauthenticated Vapi webhooks (development only).
    #[arg(long, env = "VAPI_WEBHOOK_INSECURE", default_value = "false", action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new(), global = true)]
    pub vapi_webhook_insecure: bool,
}

/// How Vapi's webhooks are authenticated (`VAPI_WEBHOOK_AUTH`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum VapiAuthKind {
    /// Vapi's HMAC credential, default headers and payload format.
    #[default]
    Hmac,
    /// Vapi's bearer-token credential.
    Bearer,
}

/// Parses the command line and the environment into `P`, exiting with
/// clap's message (naming the flag and variable at fault) on a bad value.
/// An environment variable set to the empty string counts as unset, so
/// `DATABASE_URL=` means the in-memory store and `PORT=` the default port,
/// rather than an invalid value.
#[must_use]
pub fn parse_args<P: Parser>() -> P {
    try_parse_from(std::env::args_os()).unwrap_or_else(|error| error.exit())
}

/// Parses `args` (the program name first) and the environment into `P`, as
/// [`parse_args`] does, but returns clap's error instead of exiting.
///
/// # Errors
/// clap's error, naming the flag and variable at fault.
pub fn try_parse_from<P, I, T>(args: I) -> Result<P, clap::Error>
where
    P: Parser,
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let mut command = without_empty_env(P::command(), |name| std::env::var_os(name));
    let matches = command.try_get_matches_from_mut(args)?;
    P::from_arg_matches(&matches).map_err(|error| error.format(&mut command))
}

/// `command` without the environment variables `lookup` finds empty.
fn without_empty_env(
    mut command: clap::Command,
    lookup: impl Fn(&OsStr) -> Option<OsString>,
) -> clap::Command {
    let empty: Vec<clap::Id> = command
        .get_arguments()
        .filter(|arg| {
            arg.get_env()
                .is_some_and(|name| lookup(name).is_some_and(|value| value.is_empty()))
        })
        .map(|arg| arg.get_id().clone())
        .collect();
    for id in empty {
        command = command.mut_arg(id, |arg| arg.env(None));
    }
    command
}

/// A value parser for secrets: parses with `T`'s [`FromStr`] and, on
/// failure, names the flag and the reason but, unlike clap's own message,
/// not the value.
#[must_use]
pub fn secret<T>() -> Secret<T> {
    Secret(PhantomData)
}

/// The value parser [`secret`] returns.
#[derive(Debug)]
pub struct Secret<T>(PhantomData<fn() -> T>);

impl<T> Clone for Secret<T> {
    fn clone(&self) -> Self {
        Self(PhantomData)
    }
}

impl<T> TypedValueParser for Secret<T>
where
    T: FromStr + Clone + Send + Sync + 'static,
    T::Err: fmt::Display,
{
    type Value = T;

    fn parse_ref(
        &self,
        command: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<T, clap::Error> {
        let refused = |reason: &dyn fmt::Display| {
            let flag = arg.map_or_else(|| "a secret".to_owned(), |arg| format!("'{arg}'"));
            clap::Error::raw(
                ErrorKind::ValueValidation,
                format!("invalid value for {flag}: {reason}"),
            )
            .with_cmd(command)
        };
        let text = value.to_str().ok_or_else(|| refused(&"not valid UTF-8"))?;
        text.parse::<T>().map_err(|error| refused(&error))
    }
}

/// A whole number of at least 1, as `T` (`NonZeroU32`, `NonZeroU64`).
fn at_least_one<T: FromStr>(raw: &str) -> Result<T, String> {
    raw.trim()
        .parse::<T>()
        .map_err(|_| "must be a whole number of at least 1".to_owned())
}

/// Parses a duration: a number of seconds, fractions allowed (`30`, `0.2`),
/// or one or more numbers with a unit, `ms`, `s`, `m` (minutes), `h` or `d`,
/// fractions allowed, optionally separated by spaces: `250ms`, `1.5s`, `10m`,
/// `1h30m`. Exact to the nanosecond (no floating point).
///
/// # Errors
/// A message saying what is accepted, for clap to show after the flag's name.
pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    const NANOS_PER_SECOND: u128 = 1_000_000_000;
    let invalid = || {
        format!(
            "{raw:?} is not a duration: give seconds (30, 0.2) or numbers with units ms, s, m, h, d (250ms, 1.5s, 10m, 1h30m)"
        )
    };
    let text = raw.trim();
    if text.is_empty() {
        return Err(invalid());
    }
    let mut rest = text;
    let mut nanos: u128 = 0;
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(number_end);
        let unit_end = after
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_end);
        let unit_nanos = match unit {
            // A bare number is seconds, and only on its own.
            "" if number_end == text.len() => NANOS_PER_SECOND,
            "ms" => NANOS_PER_SECOND / 1000,
            "s" => NANOS_PER_SECOND,
            "m" => 60 * NANOS_PER_SECOND,
            "h" => 3600 * NANOS_PER_SECOND,
            "d" => 86_400 * NANOS_PER_SECOND,
            _ => return Err(invalid()),
        };
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        let digits_ok = |part: &str| part.bytes().all(|b| b.is_ascii_digit());
        // `.5` and `5.` are fine; `.` and `1.2.3` are not. Digits past the
        // nanosecond cannot matter, so long fractions are cut to 18.
        if (whole.is_empty() && fraction.is_empty()) || !digits_ok(whole) || !digits_ok(fraction) {
            return Err(invalid());
        }
        let fraction = &fraction[..fraction.len().min(18)];
        let scale = 10_u128.pow(u32::try_from(fraction.len()).unwrap_or(18));
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| invalid())?
        };
        let fraction: u128 = if fraction.is_empty() {
            0
        } else {
            fraction.parse().map_err(|_| invalid())?
        };
        let term = whole
            .checked_mul(unit_nanos)
            .and_then(|w| w.checked_add(fraction * unit_nanos / scale))
            .ok_or_else(|| format!("{raw:?} is too long a duration"))?;
        nanos = nanos
            .checked_add(term)
            .ok_or_else(|| format!("{raw:?} is too long a duration"))?;
        rest = after.trim_start();
    }
    let seconds = u64::try_from(nanos / NANOS_PER_SECOND)
        .map_err(|_| format!("{raw:?} is too long a duration"))?;
    let subsec = u32::try_from(nanos % NANOS_PER_SECOND).unwrap_or(0);
    Ok(Duration::new(seconds, subsec))
}

/// [`parse_duration`], refusing zero.
///
/// # Errors
/// As [`parse_duration`], or "must be greater than zero".
pub fn positive_duration(raw: &str) -> Result<Duration, String> {
    let duration = parse_duration(raw)?;
    if duration.is_zero() {
        return Err("must be greater than zero".to_owned());
    }
    Ok(duration)
}

/// An absolute `http://` or `https://` URL that paths can be appended to.
///
/// # Errors
/// A message saying what is wrong, for clap to show after the flag's name.
pub fn http_url(raw: &str) -> Result<Url, String> {
    let url = Url::parse(raw.trim()).map_err(|error| format!("not a URL: {error}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
        return Err("must be an http:// or https:// URL".to_owned());
    }
    Ok(url)
}

/// `CALLBACK_URL`: a [`CallbackUrl`] (absolute `http://` or `https://`,
/// with a host and no credentials).
fn callback_url(raw: &str) -> Result<CallbackUrl, String> {
    CallbackUrl::parse(raw.trim()).map_err(|invalid| invalid.message)
}

/// `DATABASE_URL`: a `postgres://` or `postgresql://` URL. The password is
/// kept apart, as a secret: `Debug` and `Display` show the URL without it.
#[derive(Clone, Debug)]
pub struct DatabaseUrl {
    /// The URL without its password.
    url: Url,
    /// The password, percent-encoded as it was written.
    password: Option<SecretString>,
}

impl FromStr for DatabaseUrl {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        // `Url`'s own error never quotes its input, so no password leaks here.
        let mut url = Url::parse(raw.trim()).map_err(|error| format!("not a URL: {error}"))?;
        if !matches!(url.scheme(), "postgres" | "postgresql") {
            return Err("must be a postgres:// or postgresql:// URL".to_owned());
        }
        let password = url.password().map(SecretString::from);
        if password.is_some() {
            // A URL with a password has a host, so the password can be removed.
            url.set_password(None)
                .map_err(|()| "must name a host".to_owned())?;
        }
        Ok(Self { url, password })
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.url.as_str())
    }
}

impl DatabaseUrl {
    /// The whole URL, password included, to connect with.
    #[must_use]
    pub fn with_password(&self) -> SecretString {
        let mut url = self.url.clone();
        if let Some(password) = &self.password {
            // The URL had this password when it was parsed, so it can again.
            let _ = url.set_password(Some(password.expose_secret()));
        }
        SecretString::from(String::from(url))
    }

    /// `host:port` (5432 unless the URL says otherwise), for messages.
    #[must_use]
    pub fn endpoint(&self) -> String {
        format!(
            "{}:{}",
            self.url.host_str().unwrap_or("localhost"),
            self.url.port().unwrap_or(5432)
        )
    }
}

/// `DATABASE_SCHEMA`: a [`SchemaName`](orchestrator_pg::SchemaName).
#[cfg(feature = "postgres")]
fn schema_name(raw: &str) -> Result<orchestrator_pg::SchemaName, String> {
    raw.trim().parse().map_err(|error| format!("{error}"))
}

/// A configuration that clap cannot check alone: a rule across settings, or a file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// `API_KEYS_FILE` cannot be read.
    #[error("cannot read API_KEYS_FILE {path}")]
    ApiKeysFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `API_KEYS_FILE` holds no key, or a bad one (named by line, not quoted).
    #[error("API_KEYS_FILE {path}")]
    ApiKeysFileContent {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: ApiKeyError,
    },
    /// `CALLBACK_MAX_RETRY_SECONDS` is below `CALLBACK_BASE_RETRY_SECONDS`.
    #[error("CALLBACK_MAX_RETRY_SECONDS ({max:?}) must be at least CALLBACK_BASE_RETRY_SECONDS ({base:?})")]
    CallbackMaxRetryBelowBase {
        /// `CALLBACK_BASE_RETRY_SECONDS`.
        base: Duration,
        /// `CALLBACK_MAX_RETRY_SECONDS`.
        max: Duration,
    },
    /// `MAX_RETRY_SECONDS` is below `BASE_RETRY_SECONDS`.
    #[error("MAX_RETRY_SECONDS ({max:?}) must be at least BASE_RETRY_SECONDS ({base:?})")]
    MaxRetryBelowBase {
        /// `BASE_RETRY_SECONDS`.
        base: Duration,
        /// `MAX_RETRY_SECONDS`.
        max: Duration,
    },
    /// The core refused the retry policy.
    #[error("invalid retry policy")]
    Retry(#[source] RetryPolicyError),
    /// `PROVIDER` names a platform whose settings are incomplete.
    #[error("PROVIDER={provider} needs {missing}")]
    ProviderSettingMissing {
        /// The platform, as `PROVIDER` spells it.
        provider: &'static str,
        /// The variable to set.
        missing: &'static str,
    },
}

/// `RETELL_FROM_NUMBER`: a valid phone number, kept in E.164.
fn phone_number(raw: &str) -> Result<PhoneNumber, String> {
    PhoneNumber::parse(raw.trim()).map_err(|error| error.to_string())
}

/// Vapi, when it is the provider (`PROVIDER=vapi`).
#[derive(Clone, Debug)]
pub struct VapiSettings {
    /// How to reach Vapi's API.
    pub api: VapiConfig,
    /// How its webhooks are authenticated.
    pub webhook: VapiWebhookAuth,
}

impl VapiSettings {
    /// The Vapi settings in `settings`.
    ///
    /// # Errors
    /// [`ConfigError::ProviderSettingMissing`] naming the first one missing.
    fn from_settings(settings: &Settings) -> Result<Self, ConfigError> {
        let missing = |missing| ConfigError::ProviderSettingMissing {
            provider: "vapi",
            missing,
        };
        let api_key = settings
            .vapi_api_key
            .clone()
            .ok_or_else(|| missing("VAPI_API_KEY"))?;
        let phone_number_id = settings
            .vapi_phone_number_id
            .clone()
            .ok_or_else(|| missing("VAPI_PHONE_NUMBER_ID"))?;
        // Without a secret anyone who finds the route can settle calls:
        // refused unless asked for explicitly.
        let webhook = match (&settings.vapi_webhook_secret, settings.vapi_webhook_auth) {
            (Some(secret), VapiAuthKind::Hmac) => VapiWebhookAuth::Hmac(secret.clone()),
            (Some(secret), VapiAuthKind::Bearer) => VapiWebhookAuth::Bearer(secret.clone()),
            (None, _) if settings.vapi_webhook_insecure => VapiWebhookAuth::Unverified,
            (None, _) => {
                return Err(missing(
                    "VAPI_WEBHOOK_SECRET (or VAPI_WEBHOOK_INSECURE=true to accept unauthenticated webhooks)",
                ))
            }
        };
        Ok(Self {
            api: VapiConfig {
                base_url: settings.vapi_base_url.clone(),
                api_key,
                phone_number_id,
                timeout: Duration::from_millis(settings.provider_timeout_ms.get()),
            },
            webhook,
        })
    }
}

/// Where the provider is, when it is a real one.
#[derive(Clone, Debug)]
pub struct ProviderSettings {
    /// `PROVIDER_BASE_URL`.
    pub base_url: Url,
    /// `PROVIDER_API_KEY`.
    pub api_key: Option<ApiKey>,
    /// `PROVIDER_TIMEOUT_MS`.
    pub timeout: Duration,
}

/// The validated configuration. Its `Debug` output shows no secret.
///
/// `Default` is what no flag and no environment variable give, except that
/// the connection limit does not depend on the open-file limit.
#[derive(Clone, Debug)]
pub struct Config {
    /// `DATABASE_URL`; `None` for the in-memory store.
    pub database_url: Option<DatabaseUrl>,
    /// `DATABASE_SCHEMA`; `None` for `public`.
    #[cfg(feature = "postgres")]
    pub database_schema: Option<orchestrator_pg::SchemaName>,
    /// `API_KEYS` and `API_KEYS_FILE` together; `None` when neither is set.
    pub api_keys: Option<ApiKeys>,
    /// `BIND_HOST`, or its default: `0.0.0.0` with API keys, else `127.0.0.1`.
    pub bind_host: String,
    /// `PORT`.
    pub port: u16,
    /// `HEADER_READ_TIMEOUT_SECONDS`, `MAX_CONNECTIONS`, `SHUTDOWN_DRAIN_SECONDS`.
    pub serve: ServeOptions,
    /// The engine's rules, built through the core's validating constructors.
    pub engine: EngineConfig,
    /// The real provider; `None` for the simulated one.
    pub provider: Option<ProviderSettings>,
    /// Vapi, with `PROVIDER=vapi` (then `provider` is `None`).
    pub vapi: Option<VapiSettings>,
    /// `PUBLIC_BASE_URL`; `None` for `http://127.0.0.1:{bound port}`.
    pub public_base_url: Option<Url>,
    /// `WEBHOOK_SECRET`.
    pub webhook_secret: Option<WebhookSecret>,
    /// `CALLBACK_SECRET`; `None`: callbacks are sent unsigned.
    pub callback_secret: Option<WebhookSecret>,
    /// `CALLBACK_TIMEOUT_MS`.
    pub callback_timeout: Duration,
    /// `CALLBACK_ALLOW_PRIVATE_NETWORKS`: where callbacks may go.
    pub callback_targets: Targets,
    /// `LOG_FORMAT`.
    pub log_format: LogFormat,
    /// Retell, with `PROVIDER=retell` (`RETELL_*`, `PROVIDER_TIMEOUT_MS`);
    /// then `provider` is `None`.
    pub retell: Option<crate::platforms::retell::RetellConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            database_url: None,
            #[cfg(feature = "postgres")]
            database_schema: None,
            api_keys: None,
            bind_host: LOOPBACK.to_owned(),
            port: 8080,
            serve: ServeOptions {
                max_connections: NonZeroUsize::new(1024).unwrap_or(NonZeroUsize::MIN),
                ..ServeOptions::default()
            },
            engine: EngineConfig::default(),
            provider: None,
            vapi: None,
            public_base_url: None,
            webhook_secret: None,
            callback_secret: None,
            callback_timeout: Duration::from_secs(5),
            callback_targets: Targets::PublicOnly,
            log_format: LogFormat::Text,
            retell: None,
        }
    }
}

/// Where the server listens without API keys and without `BIND_HOST`.
const LOOPBACK: &str = "127.0.0.1";
/// Where it listens with API keys and without `BIND_HOST`.
const ANY_ADDRESS: &str = "0.0.0.0";

impl Config {
    /// Checks the rules across `settings`, reads `API_KEYS_FILE` and
    /// assembles the engine's configuration.
    ///
    /// # Errors
    /// [`ConfigError`] naming the variables (or the file) at fault.
    pub fn from_settings(settings: Settings) -> Result<Self, ConfigError> {
        let vapi = match settings.provider {
            ProviderKind::Generic => None,
            ProviderKind::Vapi => Some(VapiSettings::from_settings(&settings)?),
            ProviderKind::Retell => None,
        };
        let retry = RetryPolicy::new(
            settings.base_retry_seconds,
            settings.max_retry_seconds,
            settings.max_attempts.get(),
            RetryPolicy::DEFAULT_JITTER,
        )
        .map_err(|error| match error {
            RetryPolicyError::MaxBelowBase { base, max } => {
                ConfigError::MaxRetryBelowBase { base, max }
            }
            other => ConfigError::Retry(other),
        })?;
        let defaults = EngineConfig::default();
        let callback_retry = RetryPolicy::new(
            settings.callback_base_retry_seconds,
            settings.callback_max_retry_seconds,
            settings.callback_max_attempts.get(),
            defaults.callback_retry.jitter(),
        )
        .map_err(|error| match error {
            RetryPolicyError::MaxBelowBase { base, max } => {
                ConfigError::CallbackMaxRetryBelowBase { base, max }
            }
            other => ConfigError::Retry(other),
        })?;
        let callback_timeout = Duration::from_millis(settings.callback_timeout_ms.get());
        // A try's lease outlasts its timeout (and the write that records its
        // answer), so a live try is never taken over and sent twice at once;
        // a try whose node died is taken over soon after.
        let callback_lease = (callback_timeout * 2).max(callback_timeout + Duration::from_secs(5));
        let engine = EngineConfig::default()
            .with_max_concurrent_calls(settings.max_concurrent_calls.get())
            .with_retry(retry)
            .with_lease(settings.stale_inprog_seconds)
            // One bound for the whole shutdown: HTTP requests and dial requests drain together.
            .with_shutdown_grace(settings.shutdown_drain_seconds)
            .with_pending_ttl(settings.pending_ttl_seconds)
            .with_retention(settings.retention_seconds)
            .with_redial(
                RedialPolicy::default()
                    .with_busy(settings.redial_on.contains(&Redial::Busy))
                    .with_no_answer(settings.redial_on.contains(&Redial::NoAnswer))
                    .with_voicemail(settings.redial_on.contains(&Redial::Voicemail)),
            )
            .with_default_callback_url(settings.callback_url)
            .with_callback_retry(callback_retry)
            .with_callback_lease(callback_lease);
        let provider_timeout = Duration::from_millis(settings.provider_timeout_ms.get());
        let (provider, retell) = match settings.provider {
            ProviderKind::Generic => (
                settings.provider_base_url.map(|base_url| ProviderSettings {
                    base_url,
                    api_key: settings.provider_api_key,
                    timeout: provider_timeout,
                }),
                None,
            ),
            ProviderKind::Retell => {
                let missing = |missing| ConfigError::ProviderSettingMissing {
                    provider: "retell",
                    missing,
                };
                let retell = crate::platforms::retell::RetellConfig {
                    base_url: settings.retell_base_url,
                    api_key: settings
                        .retell_api_key
                        .ok_or_else(|| missing("RETELL_API_KEY"))?,
                    from_number: settings
                        .retell_from_number
                        .ok_or_else(|| missing("RETELL_FROM_NUMBER"))?,
                    timeout: provider_timeout,
                };
                (None, Some(retell))
            }
            // `vapi`, read above.
            ProviderKind::Vapi => (None, None),
        };
        let api_keys = match &settings.api_keys_file {
            None => settings.api_keys,
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|source| ConfigError::ApiKeysFile {
                        path: path.clone(),
                        source,
                    })?;
                let from_file = ApiKeys::from_lines(&text).map_err(|source| {
                    ConfigError::ApiKeysFileContent {
                        path: path.clone(),
                        source,
                    }
                })?;
                Some(match settings.api_keys {
                    Some(listed) => listed.union(&from_file),
                    None => from_file,
                })
            }
        };
        let bind_host = settings.bind_host.unwrap_or_else(|| {
            if api_keys.is_some() {
                ANY_ADDRESS
            } else {
                LOOPBACK
            }
            .to_owned()
        });
        Ok(Self {
            database_url: settings.database_url,
            #[cfg(feature = "postgres")]
            database_schema: settings.database_schema,
            api_keys,
            bind_host,
            port: settings.port,
            serve: ServeOptions {
                header_read_timeout: settings.header_read_timeout_seconds,
                max_connections: settings
                    .max_connections
                    .unwrap_or_else(default_max_connections),
                shutdown_drain: settings.shutdown_drain_seconds,
            },
            engine,
            provider,
            vapi,
            public_base_url: settings.public_base_url,
            webhook_secret: settings.webhook_secret,
            callback_secret: settings.callback_secret,
            callback_timeout,
            callback_targets: if settings.callback_allow_private_networks {
                Targets::Any
            } else {
                Targets::PublicOnly
            },
            log_format: settings.log_format,
            retell,
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[derive(Debug)]
    enum Refused {
        /// clap refused a value; its message.
        Clap(String),
        /// A rule across settings.
        Config(ConfigError),
    }

    fn parse(args: &[&str]) -> Result<Config, Refused> {
        let cli: Cli = try_parse_from(std::iter::once("orchestrator").chain(args.iter().copied()))
            .map_err(|error| Refused::Clap(error.to_string()))?;
        Config::from_settings(cli.settings).map_err(Refused::Config)
    }

    fn clap_error(args: &[&str]) -> String {
        match parse(args) {
            Err(Refused::Clap(message)) => message,
            other => panic!("{args:?}: expected clap to refuse, got {other:?}"),
        }
    }

    #[test]
    fn defaults_follow_the_documented_table() {
        let config = parse(&[]).unwrap();
        assert_eq!(config.port, 8080);
        assert_eq!(config.bind_host, "127.0.0.1");
        assert!(config.api_keys.is_none());
        assert_eq!(config.serve.header_read_timeout, Duration::from_secs(10));
        assert_eq!(config.serve.shutdown_drain, Duration::from_secs(10));
        assert_eq!(config.serve.max_connections, default_max_connections());
        assert!(config.serve.max_connections.get() <= 1024);
        assert_eq!(config.engine.shutdown_grace, Duration::from_secs(10));
        assert_eq!(config.engine.max_concurrent_calls, 30);
        assert_eq!(config.engine.retry.max_attempts(), 3);
        assert_eq!(config.engine.retry.base(), Duration::from_secs(30));
        assert_eq!(config.engine.retry.max_delay(), Duration::from_secs(600));
        assert_eq!(config.engine.lease, Duration::from_secs(900));
        assert_eq!(config.engine.pending_ttl, None);
        assert_eq!(config.engine.retention, None);
        assert_eq!(config.engine.redial, RedialPolicy::default());
        assert!(config.database_url.is_none());
        assert!(config.provider.is_none());
        assert!(config.webhook_secret.is_none());
        #[cfg(feature = "postgres")]
        assert!(config.database_schema.is_none());
    }

    #[test]
    fn the_default_config_is_the_documented_table() {
        let parsed = parse(&[]).unwrap();
        let default = Config::default();
        // Everything but the connection limit, which follows the open-file limit when parsed.
        let parsed = Config {
            serve: ServeOptions {
                max_connections: default.serve.max_connections,
                ..parsed.serve
            },
            ..parsed
        };
        assert_eq!(format!("{parsed:?}"), format!("{default:?}"));
    }

    #[test]
    fn api_keys_open_the_default_bind_address_and_bind_host_wins() {
        let keys = "0123456789abcdef,fedcba9876543210";
        let with_keys = parse(&["--api-keys", keys]).unwrap();
        assert_eq!(with_keys.api_keys.as_ref().map(ApiKeys::len), Some(2));
        assert_eq!(with_keys.bind_host, "0.0.0.0");
        let explicit = parse(&["--api-keys", keys, "--bind-host", "10.0.0.7"]).unwrap();
        assert_eq!(explicit.bind_host, "10.0.0.7");
        let open = parse(&["--bind-host", "0.0.0.0"]).unwrap();
        assert_eq!(open.bind_host, "0.0.0.0");
        assert!(open.api_keys.is_none());
    }

    /// A file under the temporary directory, removed when dropped.
    struct TempFile(std::path::PathBuf);

    impl TempFile {
        fn new(name: &str, text: &str) -> Self {
            let path = std::env::temp_dir()
                .join(format!("orchestrator-config-{}-{name}", std::process::id()));
            std::fs::write(&path, text).unwrap();
            Self(path)
        }

        fn arg(&self) -> &str {
            self.0.to_str().unwrap()
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    #[test]
    fn an_api_keys_file_adds_its_keys_to_the_list() {
        let file = TempFile::new(
            "keys",
            "# the CRM\nk3y-from-the-file-0001\n\n  k3y-from-the-file-0002  \n",
        );
        let config = parse(&[
            "--api-keys-file",
            file.arg(),
            "--api-keys",
            "k3y-from-the-list-0001",
        ])
        .unwrap();
        let keys = config.api_keys.unwrap();
        assert_eq!(keys.len(), 3);
        for key in [
            "k3y-from-the-file-0001",
            "k3y-from-the-file-0002",
            "k3y-from-the-list-0001",
        ] {
            assert!(keys.accepts(key), "{key}");
        }
        assert_eq!(config.bind_host, "0.0.0.0");
    }

    #[test]
    fn a_bad_api_keys_file_is_refused_by_line_without_quoting_keys() {
        let file = TempFile::new("bad-keys", "k3y-from-the-file-0001\ntoo short\n");
        match parse(&["--api-keys-file", file.arg()]) {
            Err(Refused::Config(
                error @ ConfigError::ApiKeysFileContent {
                    source: ApiKeyError::Invalid { position: 2, .. },
                    ..
                },
            )) => {
                let message = format!("{:#}", anyhow::Error::from(error));
                assert!(message.contains("API_KEYS_FILE"), "{message}");
                assert!(!message.contains("k3y-from"), "{message}");
                assert!(!message.contains("too short"), "{message}");
            }
            other => panic!("expected ApiKeysFileContent, got {other:?}"),
        }
        let missing = parse(&["--api-keys-file", "/nonexistent/orchestrator-keys"]);
        assert!(
            matches!(
                missing,
                Err(Refused::Config(ConfigError::ApiKeysFile { .. }))
            ),
            "{missing:?}"
        );
        let empty = TempFile::new("no-keys", "# none yet\n\n");
        assert!(matches!(
            parse(&["--api-keys-file", empty.arg()]),
            Err(Refused::Config(ConfigError::ApiKeysFileContent {
                source: ApiKeyError::Empty,
                ..
            }))
        ));
    }

    #[test]
    fn connection_settings_are_read() {
        let config = parse(&[
            "--header-read-timeout-seconds",
            "2.5",
            "--max-connections",
            "500",
            "--shutdown-drain-seconds",
            "3",
        ])
        .unwrap();
        assert_eq!(
            config.serve.header_read_timeout,
            Duration::from_millis(2500)
        );
        assert_eq!(config.serve.max_connections.get(), 500);
        assert_eq!(config.serve.shutdown_drain, Duration::from_secs(3));
        assert_eq!(config.engine.shutdown_grace, Duration::from_secs(3));
    }

    #[test]
    fn migrate_can_create_the_database() {
        let cli: Cli = try_parse_from(["orchestrator", "migrate", "--create-database"]).unwrap();
        assert_eq!(
            cli.command,
            Some(Command::Migrate(MigrateArgs {
                create_database: true
            }))
        );
        let cli: Cli = try_parse_from(["orchestrator", "migrate"]).unwrap();
        assert_eq!(cli.command, Some(Command::Migrate(MigrateArgs::default())));
    }

    #[cfg(feature = "postgres")]
    #[test]
    fn a_database_schema_is_a_schema_name() {
        let config = parse(&["--database-schema", "orchestrator"]).unwrap();
        assert_eq!(
            config
                .database_schema
                .as_ref()
                .map(orchestrator_pg::SchemaName::as_str),
            Some("orchestrator")
        );
        for bad in ["Calls", "pg_calls", "1calls", "my-schema"] {
            let message = clap_error(&["--database-schema", bad]);
            assert!(message.contains("DATABASE_SCHEMA"), "{message}");
        }
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
    fn durations_accept_units() {
        let config = parse(&[
            "--base-retry-seconds",
            "250ms",
            "--max-retry-seconds",
            "10m",
            "--stale-inprog-seconds",
            "1.5s",
            "--pending-ttl-seconds",
            "1h30m",
            "--retention-seconds",
            "30d",
        ])
        .unwrap();
        assert_eq!(config.engine.retry.base(), Duration::from_millis(250));
        assert_eq!(config.engine.retry.max_delay(), Duration::from_secs(600));
        assert_eq!(config.engine.lease, Duration::from_millis(1500));
        assert_eq!(config.engine.pending_ttl, Some(Duration::from_secs(5400)));
        assert_eq!(
            config.engine.retention,
            Some(Duration::from_secs(30 * 86_400))
        );
    }

    #[test]
    fn duration_syntax() {
        let ok = [
            ("30", Duration::from_secs(30)),
            (" 0.2 ", Duration::from_millis(200)),
            (".5", Duration::from_millis(500)),
            ("5.", Duration::from_secs(5)),
            ("0", Duration::ZERO),
            ("250ms", Duration::from_millis(250)),
            ("1.5s", Duration::from_millis(1500)),
            ("0.1s", Duration::from_millis(100)),
            ("10m", Duration::from_secs(600)),
            ("2h", Duration::from_secs(7200)),
            ("1d", Duration::from_secs(86_400)),
            ("1h30m", Duration::from_secs(5400)),
            ("1m 30s", Duration::from_secs(90)),
            ("0.000000001s", Duration::from_nanos(1)),
        ];
        for (raw, expected) in ok {
            assert_eq!(parse_duration(raw), Ok(expected), "{raw:?}");
        }
        for raw in [
            "", " ", "abc", "-1", "1e3", "1.2.3", ".", "s", "10 m x", "5 10", "10min", "1.5sec",
            "inf", "NaN",
        ] {
            assert!(parse_duration(raw).is_err(), "{raw:?} was accepted");
        }
        assert!(parse_duration("999999999999999999999999d")
            .unwrap_err()
            .contains("too long"));
        assert_eq!(
            positive_duration("0ms"),
            Err("must be greater than zero".to_owned())
        );
    }

    #[test]
    fn errors_name_the_flag_and_variable() {
        let cases: &[(&[&str], &str)] = &[
            (&["--api-keys", "short"], "API_KEYS"),
            (
                &["--header-read-timeout-seconds", "0"],
                "HEADER_READ_TIMEOUT_SECONDS",
            ),
            (&["--max-connections", "0"], "MAX_CONNECTIONS"),
            (
                &["--shutdown-drain-seconds", "soon"],
                "SHUTDOWN_DRAIN_SECONDS",
            ),
            (&["--base-retry-seconds", "abc"], "BASE_RETRY_SECONDS"),
            (&["--base-retry-seconds=-1"], "BASE_RETRY_SECONDS"),
            (&["--base-retry-seconds", "0"], "BASE_RETRY_SECONDS"),
            (&["--max-attempts", "0"], "MAX_ATTEMPTS"),
            (&["--max-concurrent-calls", "0"], "MAX_CONCURRENT_CALLS"),
            (&["--stale-inprog-seconds", "0"], "STALE_INPROG_SECONDS"),
            (
                &["--pending-ttl-seconds", "10 parsecs"],
                "PENDING_TTL_SECONDS",
            ),
            (&["--provider-timeout-ms", "0"], "PROVIDER_TIMEOUT_MS"),
            (&["--webhook-secret", "hunter2"], "WEBHOOK_SECRET"),
            (&["--provider-base-url", "ftp://x"], "PROVIDER_BASE_URL"),
            (&["--public-base-url", "not a url"], "PUBLIC_BASE_URL"),
            (&["--database-url", "mysql://x"], "DATABASE_URL"),
            (&["--redial-on", "BUSY,RINGING"], "REDIAL_ON"),
            (&["--retention-seconds", "0"], "RETENTION_SECONDS"),
            (&["--callback-url", "ftp://x"], "CALLBACK_URL"),
            (&["--callback-url", "https://user:pw@x"], "CALLBACK_URL"),
            (&["--callback-secret", "hunter2"], "CALLBACK_SECRET"),
            (&["--callback-timeout-ms", "0"], "CALLBACK_TIMEOUT_MS"),
            (&["--callback-max-attempts", "0"], "CALLBACK_MAX_ATTEMPTS"),
        ];
        for &(args, variable) in cases {
            let message = clap_error(args);
            assert!(message.contains(variable), "{args:?}: {message}");
            let flag = format!("--{}", variable.to_ascii_lowercase().replace('_', "-"));
            assert!(message.contains(&flag), "{args:?}: {message}");
        }
    }

    #[test]
    fn a_retry_cap_below_the_base_is_refused_naming_both() {
        match parse(&["--max-retry-seconds", "1"]) {
            Err(Refused::Config(error @ ConfigError::MaxRetryBelowBase { base, max })) => {
                assert_eq!(
                    (base, max),
                    (Duration::from_secs(30), Duration::from_secs(1))
                );
                let message = error.to_string();
                assert!(message.contains("MAX_RETRY_SECONDS"), "{message}");
                assert!(message.contains("BASE_RETRY_SECONDS"), "{message}");
            }
            other => panic!("expected MaxRetryBelowBase, got {other:?}"),
        }
    }

    #[test]
    fn refused_secrets_are_not_echoed() {
        for (flag, value) in [
            ("--webhook-secret", "whsec_dG9vc2hvcnQ="),
            ("--provider-api-key", "sk live with spaces"),
            ("--database-url", "mysql://app:s3cret@db/calls"),
            ("--api-keys", "0123456789abcdef,sh0rt"),
        ] {
            let message = clap_error(&[flag, value]);
            assert!(message.contains(flag), "{message}");
            assert!(!message.contains(value), "{message}");
        }
    }

    #[test]
    fn callback_settings_are_read() {
        let defaults = parse(&[]).unwrap();
        assert_eq!(defaults.engine.default_callback_url, None);
        assert!(defaults.callback_secret.is_none());
        assert_eq!(defaults.callback_timeout, Duration::from_secs(5));
        assert_eq!(defaults.engine.callback_retry.max_attempts(), 10);
        assert_eq!(defaults.engine.callback_lease, Duration::from_secs(10));
        let config = parse(&[
            "--callback-url",
            "https://crm.example.com/hooks/calls",
            "--callback-secret",
            "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
            "--callback-timeout-ms",
            "45000",
            "--callback-max-attempts",
            "3",
        ])
        .unwrap();
        assert_eq!(
            config
                .engine
                .default_callback_url
                .as_ref()
                .map(CallbackUrl::as_str),
            Some("https://crm.example.com/hooks/calls")
        );
        assert!(config.callback_secret.is_some());
        assert_eq!(config.callback_timeout, Duration::from_secs(45));
        assert_eq!(config.engine.callback_retry.max_attempts(), 3);
        assert_eq!(config.engine.callback_lease, Duration::from_secs(90));
    }

    #[test]
    fn redial_on_lists_outcomes_to_redial() {
        let both = parse(&["--redial-on", "BUSY,NO_ANSWER"]).unwrap();
        assert_eq!(
            both.engine.redial,
            RedialPolicy::default().with_busy(true).with_no_answer(true)
        );
        let busy = parse(&["--redial-on", "busy"]).unwrap();
        assert_eq!(
            busy.engine.redial,
            RedialPolicy::default()
                .with_busy(true)
                .with_no_answer(false)
        );
        let voicemail = parse(&["--redial-on", "VOICEMAIL"]).unwrap();
        assert_eq!(
            voicemail.engine.redial,
            RedialPolicy::default().with_voicemail(true)
        );
    }

    #[test]
    fn a_provider_url_brings_the_provider_settings() {
        let config = parse(&[
            "--provider-base-url",
            "https://provider.test/v2/",
            "--provider-api-key",
            "sk-live-123",
            "--provider-timeout-ms",
            "2500",
        ])
        .unwrap();
        let provider = config.provider.unwrap();
        assert_eq!(provider.base_url.as_str(), "https://provider.test/v2/");
        assert_eq!(provider.api_key.unwrap().expose(), "sk-live-123");
        assert_eq!(provider.timeout, Duration::from_millis(2500));
    }

    #[test]
    fn provider_retell_reads_the_retell_settings_and_needs_key_and_number() {
        let config = parse(&[
            "--provider",
            "retell",
            "--retell-api-key",
            "key_retell_123",
            "--retell-from-number",
            "+1 415 555 0100",
            "--provider-timeout-ms",
            "2500",
        ])
        .unwrap();
        assert!(config.provider.is_none());
        let retell = config.retell.unwrap();
        assert_eq!(retell.base_url.as_str(), "https://api.retellai.com/");
        assert_eq!(retell.api_key.expose(), "key_retell_123");
        assert_eq!(retell.from_number.as_str(), "+14155550100");
        assert_eq!(retell.timeout, Duration::from_millis(2500));
        assert!(!format!("{retell:?}").contains("key_retell_123"));
        for (args, missing) in [
            (
                &[
                    "--provider",
                    "retell",
                    "--retell-from-number",
                    "+14155550100",
                ][..],
                "RETELL_API_KEY",
            ),
            (
                &["--provider", "RETELL", "--retell-api-key", "k"][..],
                "RETELL_FROM_NUMBER",
            ),
        ] {
            match parse(args) {
                Err(Refused::Config(error @ ConfigError::ProviderSettingMissing { .. })) => {
                    assert!(error.to_string().contains(missing), "{error}");
                }
                other => panic!("{args:?}: expected ProviderSettingMissing, got {other:?}"),
            }
        }
        let message = clap_error(&["--retell-from-number", "12"]);
        assert!(message.contains("RETELL_FROM_NUMBER"), "{message}");
        let generic = parse(&["--retell-api-key", "k"]).unwrap();
        assert!(generic.retell.is_none());
    }

    #[test]
    fn secrets_do_not_show_in_debug_output() {
        let config = parse(&[
            "--database-url",
            "postgres://app:s3cret@db:6543/calls",
            "--provider-base-url",
            "https://provider.test",
            "--provider-api-key",
            "sk-live-123",
            "--webhook-secret",
            "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
            "--api-keys",
            "api-key-0123456789",
            "--callback-secret",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        ])
        .unwrap();
        let shown = format!("{config:?}");
        for secret in [
            "s3cret",
            "sk-live-123",
            "C2FVsBQIhrscChlQIMV",
            "api-key-0123456789",
            "MfKQ9r8GKYqrTwjUPD8I",
        ] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("6543"), "the rest is shown: {shown}");
    }

    #[test]
    fn database_passwords_are_kept_apart() {
        let raw = "postgres://app:p%40ss%3Aw0rd@db:5432/calls?sslmode=require";
        let url: DatabaseUrl = raw.parse().unwrap();
        assert_eq!(
            url.to_string(),
            "postgres://app@db:5432/calls?sslmode=require"
        );
        assert_eq!(url.with_password().expose_secret(), raw);
        assert_eq!(url.endpoint(), "db:5432");
        let default_port: DatabaseUrl = "postgresql://db.internal/calls".parse().unwrap();
        assert_eq!(default_port.endpoint(), "db.internal:5432");
        assert_eq!(
            default_port.with_password().expose_secret(),
            "postgresql://db.internal/calls"
        );
    }

    #[test]
    fn empty_environment_variables_count_as_unset() {
        let empty = |name: &OsStr| (name == "DATABASE_URL").then(OsString::new);
        let command = without_empty_env(Cli::command(), empty);
        let database_url = command
            .get_arguments()
            .find(|arg| arg.get_id() == "database_url")
            .unwrap();
        assert_eq!(database_url.get_env(), None);
        let port = command
            .get_arguments()
            .find(|arg| arg.get_id() == "port")
            .unwrap();
        assert_eq!(port.get_env(), Some(OsStr::new("PORT")));
    }

    #[test]
    fn vapi_needs_its_key_its_number_and_a_webhook_secret() {
        let base = [
            "--provider",
            "vapi",
            "--vapi-api-key",
            "vapi-private-key",
            "--vapi-phone-number-id",
            "pn-1",
        ];
        let missing = |args: &[&str]| match parse(args) {
            Err(Refused::Config(ConfigError::ProviderSettingMissing { missing, .. })) => missing,
            other => panic!("{args:?}: {other:?}"),
        };
        assert_eq!(missing(&["--provider", "vapi"]), "VAPI_API_KEY");
        assert_eq!(missing(&base[..4]), "VAPI_PHONE_NUMBER_ID");
        assert!(missing(&base).starts_with("VAPI_WEBHOOK_SECRET"));
        let insecure = parse(&[&base[..], &["--vapi-webhook-insecure", "true"]].concat()).unwrap();
        let vapi = insecure.vapi.unwrap();
        assert!(matches!(vapi.webhook, VapiWebhookAuth::Unverified));
        assert_eq!(vapi.api.base_url.as_str(), "https://api.vapi.ai/");
        let signed = parse(
            &[
                &base[..],
                &[
                    "--vapi-webhook-secret",
                    "0123456789abcdef",
                    "--vapi-webhook-auth",
                    "bearer",
                ],
            ]
            .concat(),
        )
        .unwrap();
        assert!(matches!(
            signed.vapi.unwrap().webhook,
            VapiWebhookAuth::Bearer(_)
        ));
        assert!(signed.provider.is_none());
    }

    #[test]
    fn each_provider_reads_only_its_own_settings() {
        let generic = parse(&[]).unwrap();
        assert!(generic.vapi.is_none() && generic.retell.is_none());
        let retell = parse(&[
            "--provider",
            "retell",
            "--retell-api-key",
            "key_0123456789",
            "--retell-from-number",
            "+14155550100",
        ])
        .unwrap();
        assert!(retell.retell.is_some() && retell.vapi.is_none() && retell.provider.is_none());
    }
}
