//! Wiring and serving: [`serve`] runs a router on a listener with the
//! connection handling of [`ServeOptions`] and a bounded, graceful drain;
//! [`start`] builds the whole application from a [`Config`] (store,
//! provider, engine, metrics recorder, HTTP server) and runs it in the
//! background, which is what the `orchestrator` binary and the end-to-end
//! tests use.
//!
//! Shutdown order ([`Running::shutdown`]): the dispatcher stops claiming at
//! once, while the HTTP server keeps answering (webhooks included) until
//! its requests in progress are done; both are bounded by
//! `ServeOptions::shutdown_drain`. So a node being stopped dials nobody new
//! but still records what its provider reports, and a stalled client
//! cannot hold the shutdown.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use orchestrator_core::store::StoreError;
use orchestrator_core::{
    Engine, MemoryStore, Provider, SimulatedProvider, SimulationConfig, Store,
};
use reqwest::Url;
#[cfg(feature = "postgres")]
use secrecy::ExposeSecret as _;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::callback::HttpCallbackSender;
use crate::provider::{HttpProvider, HttpProviderConfig, HttpProviderError};
use crate::router::router;
use crate::server::config::{Config, DatabaseUrl, MigrateArgs};
use crate::server::connections::{self, ServeOptions};
use crate::state::AppState;

/// How often the Prometheus recorder's histograms are drained between scrapes,
/// so that memory stays bounded when nobody scrapes.
const METRICS_UPKEEP: Duration = Duration::from_secs(5);
/// How often the store is pinged while serving, so that the log says when
/// it becomes unreachable and when it is back even if nobody probes `/ready`.
const STORE_CHECK: Duration = Duration::from_secs(2);

/// Why the application could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AppError {
    /// The listener could not be bound.
    #[error("cannot listen on {address}")]
    Bind {
        /// `BIND_HOST:PORT`.
        address: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The PostgreSQL store could not be reached or migrated.
    #[error("cannot open the PostgreSQL store at {endpoint}")]
    Store {
        /// `host:port` of `DATABASE_URL`.
        endpoint: String,
        /// The cause.
        #[source]
        source: StoreError,
    },
    /// `DATABASE_URL` is set but this build has no PostgreSQL support.
    #[error("DATABASE_URL is set but this binary was built without the `postgres` feature")]
    NoPostgres,
    /// `migrate` needs `DATABASE_URL`.
    #[error("migrate needs DATABASE_URL (or --database-url)")]
    NoDatabaseUrl,
    /// The HTTP provider could not be configured.
    #[error(transparent)]
    Provider(#[from] HttpProviderError),
    /// The Retell adapter could not be configured.
    #[error(transparent)]
    Retell(#[from] crate::platforms::retell::RetellError),
    /// The Vapi provider could not be configured.
    #[error(transparent)]
    Vapi(#[from] crate::platforms::vapi::VapiConfigError),
    /// The HTTP client of client callbacks could not be built.
    #[error("the callback HTTP client could not be built")]
    Callbacks(#[source] reqwest::Error),
    /// The engine refused its configuration.
    #[error(transparent)]
    Engine(#[from] orchestrator_core::config::ConfigError),
    /// The server failed while running.
    #[error("the HTTP server failed")]
    Serve(#[source] std::io::Error),
}

/// Serves `router(state)` on `listener` with the connection handling of
/// `options` until `shutdown` completes, then drains within
/// `options.shutdown_drain`: still accepting and answering while requests
/// are in progress, then letting each connection finish and close, then
/// closing what is left (see [`ServeOptions`]). Meanwhile keeps the metrics
/// recorder's histograms bounded and logs when the store becomes
/// unreachable and reachable again.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    options: &ServeOptions,
    shutdown: impl Future<Output = ()>,
) {
    let housekeeping = tokio::spawn(housekeeping(state.clone()));
    let streams = state.clone();
    let shutdown = async move {
        shutdown.await;
        // Event streams never end by themselves; the drain would wait for them.
        streams.close_event_streams();
    };
    connections::serve(listener, router(state), options, shutdown).await;
    housekeeping.abort();
}

/// What runs beside the server: the recorder's upkeep and the store check.
async fn housekeeping(state: AppState) {
    let mut upkeep = tokio::time::interval(METRICS_UPKEEP);
    let mut check = tokio::time::interval(STORE_CHECK);
    loop {
        tokio::select! {
            biased;
            _ = upkeep.tick() => {
                if let Some(handle) = state.metrics() {
                    handle.run_upkeep();
                }
            }
            _ = check.tick() => {
                let ready = state.engine().ready().await;
                state.observe_store(&ready);
            }
        }
    }
}

/// The running application.
pub struct Running {
    local_addr: SocketAddr,
    public_base_url: Url,
    engine: Engine,
    stop: Arc<watch::Sender<bool>>,
    task: JoinHandle<Result<(), AppError>>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("local_addr", &self.local_addr)
            .field("public_base_url", &self.public_base_url.as_str())
            .finish_non_exhaustive()
    }
}

impl Running {
    /// The address the server listens on.
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The base URL given to the provider for webhooks.
    #[must_use]
    pub fn public_base_url(&self) -> &Url {
        &self.public_base_url
    }

    /// The engine.
    #[must_use]
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Graceful stop, bounded by `ServeOptions::shutdown_drain`: the
    /// dispatcher claims nothing more at once and waits for its dial
    /// requests in flight (see `EngineHandle::shutdown`), while the server
    /// keeps answering until its requests in progress are done (see
    /// [`serve`]).
    ///
    /// # Errors
    /// [`AppError::Serve`] when the server had failed.
    pub async fn shutdown(self) -> Result<(), AppError> {
        self.stop.send_replace(true);
        match self.task.await {
            Ok(result) => result,
            Err(join) => Err(AppError::Serve(std::io::Error::other(join))),
        }
    }

    /// Runs until `signal` completes or the server fails, then shuts down gracefully.
    ///
    /// # Errors
    /// [`AppError::Serve`] when the server failed.
    pub async fn run_until(mut self, signal: impl Future<Output = ()>) -> Result<(), AppError> {
        tokio::select! {
            biased;
            finished = &mut self.task => {
                return finished.unwrap_or_else(|join| Err(AppError::Serve(std::io::Error::other(join))));
            }
            () = signal => {}
        }
        tracing::info!(
            "shutting down: dispatching stops now; requests in progress are still answered"
        );
        self.shutdown().await
    }
}

/// Opens the store `config` names: PostgreSQL (migrated) or memory. Returns
/// it with a description for the logs.
async fn open_store(config: &Config) -> Result<(Arc<dyn Store>, String), AppError> {
    match &config.database_url {
        None => Ok((Arc::new(MemoryStore::new()), "memory".to_owned())),
        Some(url) => {
            let (store, schema) = open_postgres(config, url).await?;
            Ok((store, format!("postgres {url} (schema {schema})")))
        }
    }
}

/// Connects to `url`, in the schema `config` names, and applies the
/// migrations; the store and its schema.
#[cfg(feature = "postgres")]
async fn open_postgres(
    config: &Config,
    url: &DatabaseUrl,
) -> Result<(Arc<dyn Store>, String), AppError> {
    let failed = |source| AppError::Store {
        endpoint: url.endpoint(),
        source,
    };
    let options = orchestrator_pg::PgStoreOptions {
        schema: config.database_schema.clone().unwrap_or_default(),
        ..orchestrator_pg::PgStoreOptions::default()
    };
    let store =
        orchestrator_pg::PgStore::connect_with(url.with_password().expose_secret(), &options)
            .await
            .map_err(failed)?;
    store.migrate().await.map_err(failed)?;
    let schema = store.schema().to_string();
    Ok((Arc::new(store), schema))
}

#[cfg(not(feature = "postgres"))]
async fn open_postgres(_: &Config, _: &DatabaseUrl) -> Result<(Arc<dyn Store>, String), AppError> {
    Err(AppError::NoPostgres)
}

/// Applies the PostgreSQL migrations to `config.database_url`, in
/// `config.database_schema`; with `args.create_database`, first creates the
/// database if it does not exist.
///
/// # Errors
/// [`AppError::NoDatabaseUrl`], [`AppError::NoPostgres`], [`AppError::Store`].
pub async fn migrate(config: &Config, args: MigrateArgs) -> Result<(), AppError> {
    let url = config
        .database_url
        .as_ref()
        .ok_or(AppError::NoDatabaseUrl)?;
    if args.create_database {
        create_database(url).await?;
    }
    let (_, schema) = open_postgres(config, url).await?;
    tracing::info!(database = %url, %schema, "migrations applied");
    Ok(())
}

/// Creates the database `url` names unless it exists.
#[cfg(feature = "postgres")]
async fn create_database(url: &DatabaseUrl) -> Result<(), AppError> {
    let created =
        orchestrator_pg::PgStore::create_database_if_missing(url.with_password().expose_secret())
            .await
            .map_err(|source| AppError::Store {
                endpoint: url.endpoint(),
                source,
            })?;
    if created {
        tracing::info!(database = %url, "database created");
    } else {
        tracing::info!(database = %url, "database exists");
    }
    Ok(())
}

#[cfg(not(feature = "postgres"))]
async fn create_database(_: &DatabaseUrl) -> Result<(), AppError> {
    Err(AppError::NoPostgres)
}

/// Builds everything `config` describes, binds the listener, starts the
/// engine and serves in the background. Logs what it runs on.
///
/// # Errors
/// [`AppError`] when the listener, store, provider or engine cannot be set up.
pub async fn start(config: Config) -> Result<Running, AppError> {
    let address = format!("{}:{}", config.bind_host, config.port);
    let listener = TcpListener::bind((config.bind_host.as_str(), config.port))
        .await
        .map_err(|source| AppError::Bind {
            address: address.clone(),
            source,
        })?;
    let local_addr = listener.local_addr().map_err(|source| AppError::Bind {
        address: address.clone(),
        source,
    })?;
    let public_base_url = match &config.public_base_url {
        Some(url) => url.clone(),
        None => Url::parse(&format!("http://127.0.0.1:{}", local_addr.port()))
            .map_err(|_| HttpProviderError::BadUrl("PUBLIC_BASE_URL"))?,
    };
    let (store, store_description) = open_store(&config).await?;
    let retell = config
        .retell
        .as_ref()
        .map(crate::platforms::retell::RetellProvider::new)
        .transpose()?;
    let vapi = config
        .vapi
        .as_ref()
        .map(|vapi| crate::platforms::vapi::VapiProvider::new(&vapi.api))
        .transpose()?;
    // `PROVIDER=vapi|retell`: `Config` then has no generic provider.
    let (provider, provider_description): (Arc<dyn Provider>, String) =
        match (&config.provider, retell, vapi) {
            (Some(settings), _, _) => {
                let provider = HttpProvider::new(&HttpProviderConfig {
                    base_url: settings.base_url.clone(),
                    api_key: settings.api_key.clone(),
                    timeout: settings.timeout,
                    public_base_url: public_base_url.clone(),
                })?;
                let description = format!("http {}", provider.calls_url());
                (Arc::new(provider), description)
            }
            (None, Some(provider), _) => {
                let description = format!(
                    "retell {} (configure Retell's webhook URL as {}callbacks/retell)",
                    provider.url("", None),
                    public_base_url
                );
                (Arc::new(provider), description)
            }
            (None, None, Some(provider)) => {
                let description = format!("vapi {}", provider.call_url());
                (Arc::new(provider), description)
            }
            (None, None, None) => {
                let simulation = SimulationConfig::default().with_seed(rand::random());
                (
                    Arc::new(SimulatedProvider::new(simulation)),
                    "simulated (answers and calls back by itself)".to_owned(),
                )
            }
        };
    let callbacks = HttpCallbackSender::new(
        config.callback_timeout,
        config.callback_secret.clone(),
        config.callback_targets,
    )
    .map_err(AppError::Callbacks)?;
    let orchestrator = Engine::builder(store, provider)
        .config(config.engine.clone())
        .callbacks(Arc::new(callbacks))
        .build()?;
    warn_about_exposure(&config, local_addr, &public_base_url);
    tracing::info!(
        address = %local_addr,
        store = %store_description,
        provider = %provider_description,
        max_concurrent_calls = config.engine.max_concurrent_calls,
        max_attempts = config.engine.retry.max_attempts(),
        redial = ?config.engine.redial,
        public_base_url = %public_base_url,
        signed_webhooks = config.webhook_secret.is_some(),
        signed_callbacks = config.callback_secret.is_some(),
        default_callback_url = config.engine.default_callback_url.as_ref().map(|url| url.as_str()),
        api_keys = config.api_keys.as_ref().map_or(0, crate::ApiKeys::len),
        max_connections = config.serve.max_connections,
        header_read_timeout = ?config.serve.header_read_timeout,
        shutdown_drain = ?config.serve.shutdown_drain,
        "orchestrator listening"
    );
    let mut state =
        AppState::new(orchestrator.clone())
            .with_webhook_secret(config.webhook_secret)
            .with_api_keys(config.api_keys)
            .with_retell_webhook_key(config.retell.as_ref().map(|retell| {
                crate::platforms::retell::RetellWebhookKey::new(retell.api_key.clone())
            }));
    if let Some(vapi) = &config.vapi {
        announce_vapi_webhook(&vapi.webhook, &public_base_url);
        state = state.with_vapi_webhook(vapi.webhook.clone());
    }
    if let Some(handle) = crate::metrics::prometheus_recorder() {
        state = state.with_metrics(handle);
    }
    let engine = orchestrator.start();
    let stop = Arc::new(watch::Sender::new(false));
    let options = config.serve;
    let task = tokio::spawn({
        let stop = Arc::clone(&stop);
        async move {
            let stopping = stop.subscribe();
            let server = async {
                let mut stopping = stop.subscribe();
                serve(listener, state, &options, async move {
                    let _ = stopping.wait_for(|stop| *stop).await;
                })
                .await;
                // Also when the server ended by itself: the engine follows it.
                stop.send_replace(true);
                tracing::info!("HTTP server stopped");
            };
            let dispatcher = async {
                let mut stopping = stopping;
                let _ = stopping.wait_for(|stop| *stop).await;
                engine.shutdown().await;
                tracing::info!("engine stopped");
            };
            tokio::join!(server, dispatcher);
            Ok(())
        }
    });
    Ok(Running {
        local_addr,
        public_base_url,
        engine: orchestrator,
        stop,
        task,
    })
}

/// A setting that leaves the server open, or its webhooks unreachable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Exposure {
    /// No API keys: anyone who reaches the port controls calls.
    NoApiKeys,
    /// A real provider and no webhook secret: anyone can settle calls.
    UnsignedWebhooks,
    /// A remote provider told to call back a loopback address it cannot reach.
    UnreachableWebhooks,
    /// No callback secret: client callbacks are sent unsigned, so their
    /// receivers cannot tell them from forgeries.
    UnsignedCallbacks,
}

/// What `config` exposes, with `public_base_url` as the provider is given it.
fn exposures(config: &Config, public_base_url: &Url) -> Vec<Exposure> {
    let mut found = Vec::new();
    if config.api_keys.is_none() {
        found.push(Exposure::NoApiKeys);
    }
    if let Some(provider) = &config.provider {
        if config.webhook_secret.is_none() {
            found.push(Exposure::UnsignedWebhooks);
        }
        if !is_loopback(&provider.base_url) && is_loopback(public_base_url) {
            found.push(Exposure::UnreachableWebhooks);
        }
    }
    if config.callback_secret.is_none() {
        found.push(Exposure::UnsignedCallbacks);
    }
    found
}

/// Warns at start about each of [`exposures`].
fn warn_about_exposure(config: &Config, local_addr: SocketAddr, public_base_url: &Url) {
    for exposure in exposures(config, public_base_url) {
        match exposure {
            Exposure::NoApiKeys => tracing::warn!(
                address = %local_addr,
                "NO API KEYS: anyone who reaches this port can place, read and change calls. \
                 Set API_KEYS or API_KEYS_FILE before exposing it; without them the server \
                 listens on 127.0.0.1 unless BIND_HOST says otherwise"
            ),
            Exposure::UnsignedWebhooks => {
                tracing::warn!("WEBHOOK_SECRET is not set: unsigned webhooks will be accepted");
            }
            Exposure::UnreachableWebhooks => tracing::warn!(
                provider = ?config.provider.as_ref().map(|provider| provider.base_url.as_str()),
                public_base_url = %public_base_url,
                "the provider is remote but PUBLIC_BASE_URL is a loopback address: its webhooks \
                 can never reach this server, so every call will end by its lease running out. \
                 Set PUBLIC_BASE_URL to the URL the provider can reach"
            ),
            Exposure::UnsignedCallbacks => tracing::warn!(
                "CALLBACK_SECRET is not set: client callbacks are sent UNSIGNED, and receivers \
                 cannot tell them from forgeries. Set CALLBACK_SECRET (whsec_<base64>)"
            ),
        }
    }
}

/// Says where Vapi must send its server messages, and warns loudly when
/// they are accepted without authentication.
fn announce_vapi_webhook(
    auth: &crate::platforms::vapi::webhook::VapiWebhookAuth,
    public_base_url: &Url,
) {
    use crate::platforms::vapi::webhook::VapiWebhookAuth;
    let server_url = format!(
        "{}/callbacks/vapi",
        public_base_url.as_str().trim_end_matches('/')
    );
    let credential = match auth {
        VapiWebhookAuth::Hmac(_) => "an HMAC credential (sha256, default headers and payload format) with VAPI_WEBHOOK_SECRET",
        VapiWebhookAuth::Bearer(_) => "a Bearer Token credential with VAPI_WEBHOOK_SECRET",
        VapiWebhookAuth::Unverified => "no credential",
    };
    tracing::info!(server_url, credential, "set this as Vapi's Server URL (assistant, phone number or organization) with the credential named");
    if matches!(auth, VapiWebhookAuth::Unverified) {
        tracing::warn!(
            server_url,
            "VAPI_WEBHOOK_INSECURE=true: Vapi webhooks are accepted WITHOUT authentication; anyone who can reach this URL can settle calls. Set VAPI_WEBHOOK_SECRET before exposing it"
        );
    }
}

/// Whether `url` names this machine: `localhost` (and its subdomains, RFC
/// 6761 section 6.3) or a loopback address.
fn is_loopback(url: &Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    // IPv6 hosts are written in brackets.
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match host.parse::<IpAddr>() {
        Ok(address) => address.is_loopback(),
        Err(_) => {
            let name = host.trim_end_matches('.').to_ascii_lowercase();
            name == "localhost" || name.ends_with(".localhost")
        }
    }
}

/// Completes on Ctrl-C or, on Unix, SIGTERM: the signal both binaries shut down on.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        biased;
        () = ctrl_c => {}
        () = terminate => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_provider(base_url: &str) -> Config {
        Config {
            provider: Some(crate::server::config::ProviderSettings {
                base_url: Url::parse(base_url).unwrap(),
                api_key: None,
                timeout: Duration::from_secs(1),
            }),
            webhook_secret: Some("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD".parse().unwrap()),
            callback_secret: Some("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD".parse().unwrap()),
            api_keys: Some("0123456789abcdef".parse().unwrap()),
            ..Config::default()
        }
    }

    #[test]
    fn a_remote_provider_with_a_loopback_public_url_is_an_exposure() {
        let loopback = Url::parse("http://127.0.0.1:8080/").unwrap();
        let public = Url::parse("https://calls.example.com/").unwrap();
        let remote = with_provider("https://provider.example.com/");
        assert_eq!(
            exposures(&remote, &loopback),
            [Exposure::UnreachableWebhooks]
        );
        assert_eq!(exposures(&remote, &public), []);
        // A provider on this machine (a mock, a stand-in) reaches loopback fine.
        let local = with_provider("http://localhost:9090/");
        assert_eq!(exposures(&local, &loopback), []);
    }

    #[test]
    fn missing_keys_and_secrets_are_exposures() {
        let loopback = Url::parse("http://127.0.0.1:8080/").unwrap();
        assert_eq!(
            exposures(&Config::default(), &loopback),
            [Exposure::NoApiKeys, Exposure::UnsignedCallbacks]
        );
        let unsigned = Config {
            webhook_secret: None,
            ..with_provider("http://127.0.0.1:9090/")
        };
        assert_eq!(
            exposures(&unsigned, &loopback),
            [Exposure::UnsignedWebhooks]
        );
    }

    #[test]
    fn loopback_urls_are_recognised() {
        for url in [
            "http://127.0.0.1:8080",
            "http://127.1.2.3/",
            "http://[::1]:8080/",
            "http://localhost:8080",
            "http://LOCALHOST./",
            "http://api.localhost/",
        ] {
            assert!(is_loopback(&Url::parse(url).unwrap()), "{url}");
        }
        for url in [
            "https://calls.example.com/",
            "http://10.0.0.5/",
            "http://[2001:db8::1]/",
            "http://localhost.example.com/",
        ] {
            assert!(!is_loopback(&Url::parse(url).unwrap()), "{url}");
        }
    }
}
