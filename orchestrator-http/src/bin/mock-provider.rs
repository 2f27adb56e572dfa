//! The `mock-provider` binary: a stand-alone mock of the AI-call provider
//! (see `orchestrator_http::mock_provider`). Configuration: flags or
//! environment variables, see `mock-provider --help`.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use orchestrator_http::server::mock_provider::{
    self, MockProvider, MockProviderConfig, OutcomeMixArg,
};
use orchestrator_http::WebhookSecret;
use tracing_subscriber::EnvFilter;

/// A mock AI-call provider: answers dial requests with 202 and calls the
/// webhook back after the call duration.
#[derive(Debug, Parser)]
#[command(name = "mock-provider", version, long_about = None)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "MOCK_BIND_HOST", default_value = "127.0.0.1")]
    bind_host: String,
    /// Port to listen on (0 picks a free port).
    #[arg(long, env = "MOCK_PORT", default_value_t = 9090)]
    port: u16,
    /// Seconds from an accepted dial to its webhook (fractions allowed).
    #[arg(long, env = "MOCK_CALL_DURATION_SECONDS", default_value_t = 2.0)]
    call_duration_seconds: f64,
    /// Outcome weights, e.g. COMPLETED=85,FAILED=5,BUSY=5,NO_ANSWER=5.
    #[arg(
        long,
        env = "MOCK_OUTCOMES",
        default_value = "COMPLETED=85,FAILED=5,BUSY=5,NO_ANSWER=5"
    )]
    outcomes: OutcomeMixArg,
    /// Standard Webhooks secret (`whsec_<base64>`) to sign webhooks with.
    #[arg(long, env = "WEBHOOK_SECRET", hide_env_values = true)]
    webhook_secret: Option<String>,
    /// Require `Authorization: Bearer <key>` on dial requests.
    #[arg(long, env = "PROVIDER_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Fraction of dials answered 503 (0 to 1).
    #[arg(long, env = "MOCK_SERVER_ERROR_RATE", default_value_t = 0.0)]
    server_error_rate: f64,
    /// Fraction of dials answered 429 (0 to 1).
    #[arg(long, env = "MOCK_CAPACITY_RATE", default_value_t = 0.0)]
    capacity_rate: f64,
    /// Seed of the outcome and fault draws.
    #[arg(long, env = "MOCK_SEED", default_value_t = 0)]
    seed: u64,
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .init();
    let args = Args::parse();
    let call_duration = Duration::try_from_secs_f64(args.call_duration_seconds)
        .context("MOCK_CALL_DURATION_SECONDS must be a non-negative number of seconds")?;
    for (name, rate) in [
        ("MOCK_SERVER_ERROR_RATE", args.server_error_rate),
        ("MOCK_CAPACITY_RATE", args.capacity_rate),
    ] {
        anyhow::ensure!(
            (0.0..=1.0).contains(&rate),
            "{name} must be between 0 and 1"
        );
    }
    let webhook_secret = args
        .webhook_secret
        .filter(|secret| !secret.trim().is_empty())
        .map(|secret| secret.parse::<WebhookSecret>())
        .transpose()
        .context("WEBHOOK_SECRET is not a Standard Webhooks secret")?;
    let signed = webhook_secret.is_some();
    let mock = MockProvider::new(MockProviderConfig {
        call_duration,
        outcomes: args.outcomes.0,
        webhook_secret,
        api_key: args.api_key.filter(|key| !key.is_empty()),
        server_error_rate: args.server_error_rate,
        capacity_rate: args.capacity_rate,
        seed: args.seed,
        ..MockProviderConfig::default()
    })?;
    let listener = tokio::net::TcpListener::bind((args.bind_host.as_str(), args.port))
        .await
        .with_context(|| format!("cannot listen on {}:{}", args.bind_host, args.port))?;
    tracing::info!(
        address = %listener.local_addr()?,
        call_duration_seconds = args.call_duration_seconds,
        signed_webhooks = signed,
        "mock provider listening"
    );
    mock_provider::serve(
        listener,
        &mock,
        orchestrator_http::server::shutdown_signal(),
    )
    .await?;
    tracing::info!("stopped");
    Ok(())
}
