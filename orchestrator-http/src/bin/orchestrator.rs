//! The `orchestrator` binary: `serve` (the default) or `migrate`.
//! Configuration: flags or environment variables, see `orchestrator --help`
//! and `orchestrator_http::server::config`.

use std::process::ExitCode;

use anyhow::Context as _;
use orchestrator_http::server;
use orchestrator_http::server::config::{self, Cli, Command, Config, LogFormat};
use tracing_subscriber::EnvFilter;

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only on a terminal, so redirected logs stay plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli: Cli = config::parse_args();
    init_logging(cli.settings.log_format);
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // One line with each cause once, without a backtrace: these are
            // configuration and start-up errors for an operator.
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = Config::from_settings(cli.settings).context("invalid configuration")?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Migrate(args) => server::migrate(&config, args)
            .await
            .context("migrate failed"),
        Command::Serve => {
            let running = server::start(config).await.context("could not start")?;
            running
                .run_until(server::shutdown_signal())
                .await
                .context("server failed")?;
            tracing::info!("stopped");
            Ok(())
        }
    }
}
