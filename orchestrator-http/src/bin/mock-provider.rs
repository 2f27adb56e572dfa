//! The `mock-provider` binary: a stand-alone mock of the AI-call provider
//! (see `orchestrator_http::server::mock_provider`). Configuration: flags or
//! environment variables, see `mock-provider --help`.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use orchestrator_http::platforms::vapi::webhook::VapiSecret;
use orchestrator_http::provider::ApiKey;
use orchestrator_http::server::config::{http_url, parse_args, parse_duration, secret};
use orchestrator_http::server::mock_provider::{
    self, MockProvider, MockProviderConfig, OutcomeMixArg,
};
use orchestrator_http::server::mock_retell::{self, RetellMock};
use orchestrator_http::server::mock_vapi::{MockVapi, MockVapiConfig};
use orchestrator_http::server::shutdown_signal;
use orchestrator_http::WebhookSecret;
use reqwest::Url;
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
    /// Time from an accepted dial to its webhook: seconds (fractions allowed), or e.g. 500ms.
    #[arg(long, env = "MOCK_CALL_DURATION_SECONDS", default_value = "2", value_parser = parse_duration)]
    call_duration_seconds: Duration,
    /// Outcome weights, e.g. COMPLETED=85,FAILED=5,BUSY=5,NO_ANSWER=5.
    #[arg(
        long,
        env = "MOCK_OUTCOMES",
        default_value = "COMPLETED=85,FAILED=5,BUSY=5,NO_ANSWER=5"
    )]
    outcomes: OutcomeMixArg,
    /// Standard Webhooks secret (`whsec_<base64>`) to sign webhooks with.
    #[arg(long, env = "WEBHOOK_SECRET", hide_env_values = true, value_parser = secret::<WebhookSecret>())]
    webhook_secret: Option<WebhookSecret>,
    /// Require `Authorization: Bearer <key>` on dial requests.
    #[arg(long, env = "PROVIDER_API_KEY", hide_env_values = true, value_parser = secret::<ApiKey>())]
    api_key: Option<ApiKey>,
    /// Fraction of dials answered 503 (0 to 1).
    #[arg(long, env = "MOCK_SERVER_ERROR_RATE", default_value_t = 0.0, value_parser = fraction)]
    server_error_rate: f64,
    /// Fraction of dials answered 429 (0 to 1).
    #[arg(long, env = "MOCK_CAPACITY_RATE", default_value_t = 0.0, value_parser = fraction)]
    capacity_rate: f64,
    /// Seed of the outcome and fault draws.
    #[arg(long, env = "MOCK_SEED", default_value_t = 0)]
    seed: u64,
    /// Which API to mock: `generic` (the orchestrator's own contract),
    /// `retell` (Retell's API and webhooks; needs --api-key and --webhook-url)
    /// or `vapi` (Vapi's API and server messages).
    #[arg(long, env = "MOCK_DIALECT", value_enum, default_value_t = Dialect::Generic, ignore_case = true)]
    dialect: Dialect,
    /// Where the `retell` dialect sends its webhooks, e.g. http://127.0.0.1:8080/callbacks/retell.
    #[arg(long, env = "MOCK_WEBHOOK_URL", value_parser = http_url)]
    webhook_url: Option<reqwest::Url>,
    /// Vapi dialect: where server messages go (the orchestrator's `/callbacks/vapi`).
    #[arg(long, env = "MOCK_VAPI_SERVER_URL", default_value = "http://127.0.0.1:8080/callbacks/vapi", value_parser = http_url)]
    vapi_server_url: Url,
    /// Vapi dialect: the HMAC secret server messages are signed with.
    #[arg(long, env = "VAPI_WEBHOOK_SECRET", hide_env_values = true, value_parser = secret::<VapiSecret>())]
    vapi_webhook_secret: Option<VapiSecret>,
}

/// The API the mock speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Dialect {
    /// `POST /api/v1/calls` and Standard Webhooks.
    Generic,
    /// Retell: `create-phone-call`, `get-call`, `stop-call`, `x-retell-signature`.
    Retell,
    /// Vapi's API and server messages.
    Vapi,
}

/// A number from 0 to 1.
fn fraction(raw: &str) -> Result<f64, String> {
    raw.trim()
        .parse::<f64>()
        .ok()
        .filter(|rate| (0.0..=1.0).contains(rate))
        .ok_or_else(|| "must be a number from 0 to 1".to_owned())
}

#[tokio::main]
async fn main() -> ExitCode {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .init();
    match run(parse_args()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    if args.dialect == Dialect::Vapi {
        return run_vapi(args).await;
    }
    let signed = args.webhook_secret.is_some();
    let config = MockProviderConfig {
        call_duration: args.call_duration_seconds,
        outcomes: args.outcomes.0,
        webhook_secret: args.webhook_secret,
        api_key: args.api_key,
        server_error_rate: args.server_error_rate,
        capacity_rate: args.capacity_rate,
        seed: args.seed,
        ..MockProviderConfig::default()
    };
    let listener = tokio::net::TcpListener::bind((args.bind_host.as_str(), args.port))
        .await
        .with_context(|| format!("cannot listen on {}:{}", args.bind_host, args.port))?;
    if args.dialect == Dialect::Retell {
        let api_key = config.api_key.clone().context(
            "the retell dialect needs --api-key (PROVIDER_API_KEY): Retell signs webhooks with it",
        )?;
        let webhook_url = args
            .webhook_url
            .context("the retell dialect needs --webhook-url (MOCK_WEBHOOK_URL)")?;
        let mock =
            RetellMock::new(config, api_key, webhook_url.clone()).context("could not start")?;
        tracing::info!(
            address = %listener.local_addr()?,
            call_duration = ?args.call_duration_seconds,
            %webhook_url,
            "mock provider listening, Retell dialect"
        );
        mock_retell::serve(listener, &mock, shutdown_signal()).await?;
        tracing::info!("stopped");
        return Ok(());
    }
    let mock = MockProvider::new(config).context("could not start")?;
    tracing::info!(
        address = %listener.local_addr()?,
        call_duration = ?args.call_duration_seconds,
        signed_webhooks = signed,
        "mock provider listening"
    );
    mock_provider::serve(listener, &mock, shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}

/// The Vapi dialect: `POST /call`, `GET /call/{id}`, `POST /control/{id}`,
/// and signed server messages to `--vapi-server-url`.
async fn run_vapi(args: Args) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind((args.bind_host.as_str(), args.port))
        .await
        .with_context(|| format!("cannot listen on {}:{}", args.bind_host, args.port))?;
    let address = listener.local_addr()?;
    let signed = args.vapi_webhook_secret.is_some();
    let mock = MockVapi::new(MockVapiConfig {
        call_duration: args.call_duration_seconds,
        outcomes: args.outcomes.0,
        server_url: args.vapi_server_url.clone(),
        secret: args.vapi_webhook_secret,
        api_key: args.api_key,
        public_url: Url::parse(&format!("http://{address}/")).context("the mock's URL")?,
        seed: args.seed,
    })
    .context("could not start")?;
    tracing::info!(
        %address,
        server_url = %args.vapi_server_url,
        signed_webhooks = signed,
        "mock provider (Vapi dialect) listening"
    );
    axum::serve(listener, mock.router())
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    tracing::info!("stopped");
    Ok(())
}
