//! Wiring and serving: [`serve`] runs a router on a listener with graceful
//! shutdown; [`start`] builds the whole application from a [`Config`] (store,
//! provider, engine, metrics recorder, HTTP server) and runs it in the
//! background, which is what the `orchestrator` binary and the end-to-end
//! tests use.

use std::future::Future;
use std::net::SocketAddr;
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
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::provider::{HttpProvider, HttpProviderConfig, HttpProviderError};
use crate::router::router;
use crate::server::config::{Config, DatabaseUrl};
use crate::state::AppState;

/// How often the Prometheus recorder's histograms are drained between scrapes,
/// so that memory stays bounded when nobody scrapes.
const METRICS_UPKEEP: Duration = Duration::from_secs(5);

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
    /// The engine refused its configuration.
    #[error(transparent)]
    Engine(#[from] orchestrator_core::config::ConfigError),
    /// The server failed while running.
    #[error("the HTTP server failed")]
    Serve(#[source] std::io::Error),
}

/// Serves `router(state)` on `listener` until `shutdown` completes, then
/// stops accepting connections and waits for requests in flight (each
/// bounded by the request timeout).
///
/// # Errors
/// I/O errors of the listener.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let upkeep = state.metrics().cloned().map(|handle| {
        tokio::spawn(async move {
            let mut every = tokio::time::interval(METRICS_UPKEEP);
            loop {
                every.tick().await;
                handle.run_upkeep();
            }
        })
    });
    let served = axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await;
    if let Some(upkeep) = upkeep {
        upkeep.abort();
    }
    served
}

/// The running application.
pub struct Running {
    local_addr: SocketAddr,
    public_base_url: Url,
    engine: Engine,
    stop: oneshot::Sender<()>,
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

    /// Graceful stop: stops accepting, finishes requests in flight, then stops
    /// the engine (see `EngineHandle::shutdown`).
    ///
    /// # Errors
    /// [`AppError::Serve`] when the server had failed.
    pub async fn shutdown(self) -> Result<(), AppError> {
        let _ = self.stop.send(());
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
        tracing::info!("shutting down: no new connections; finishing requests in flight");
        self.shutdown().await
    }
}

/// Opens the store `config` names: PostgreSQL (migrated) or memory. Returns
/// it with a description for the logs.
async fn open_store(config: &Config) -> Result<(Arc<dyn Store>, String), AppError> {
    match &config.database_url {
        None => Ok((Arc::new(MemoryStore::new()), "memory".to_owned())),
        Some(url) => {
            let store = open_postgres(url).await?;
            Ok((store, format!("postgres {url}")))
        }
    }
}

/// Connects to `url` and applies the migrations.
#[cfg(feature = "postgres")]
async fn open_postgres(url: &DatabaseUrl) -> Result<Arc<dyn Store>, AppError> {
    let failed = |source| AppError::Store {
        endpoint: url.endpoint(),
        source,
    };
    let store = orchestrator_pg::PgStore::connect(url.with_password().expose_secret())
        .await
        .map_err(failed)?;
    store.migrate().await.map_err(failed)?;
    Ok(Arc::new(store))
}

#[cfg(not(feature = "postgres"))]
async fn open_postgres(_: &DatabaseUrl) -> Result<Arc<dyn Store>, AppError> {
    Err(AppError::NoPostgres)
}

/// Applies the PostgreSQL migrations to `config.database_url`.
///
/// # Errors
/// [`AppError::NoDatabaseUrl`], [`AppError::NoPostgres`], [`AppError::Store`].
pub async fn migrate(config: &Config) -> Result<(), AppError> {
    let url = config
        .database_url
        .as_ref()
        .ok_or(AppError::NoDatabaseUrl)?;
    open_postgres(url).await?;
    tracing::info!(database = %url, "migrations applied");
    Ok(())
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
    let (provider, provider_description): (Arc<dyn Provider>, String) = match &config.provider {
        Some(settings) => {
            let provider = HttpProvider::new(&HttpProviderConfig {
                base_url: settings.base_url.clone(),
                api_key: settings.api_key.clone(),
                timeout: settings.timeout,
                public_base_url: public_base_url.clone(),
            })?;
            let description = format!("http {}", provider.calls_url());
            (Arc::new(provider), description)
        }
        None => {
            let simulation = SimulationConfig::default().with_seed(rand::random());
            (
                Arc::new(SimulatedProvider::new(simulation)),
                "simulated (answers and calls back by itself)".to_owned(),
            )
        }
    };
    let orchestrator = Engine::builder(store, provider)
        .config(config.engine.clone())
        .build()?;
    if config.provider.is_some() && config.webhook_secret.is_none() {
        tracing::warn!("WEBHOOK_SECRET is not set: unsigned webhooks will be accepted");
    }
    tracing::info!(
        address = %local_addr,
        store = %store_description,
        provider = %provider_description,
        max_concurrent_calls = config.engine.max_concurrent_calls,
        max_attempts = config.engine.retry.max_attempts(),
        redial = ?config.engine.redial,
        public_base_url = %public_base_url,
        signed_webhooks = config.webhook_secret.is_some(),
        "orchestrator listening"
    );
    let mut state = AppState::new(orchestrator.clone()).with_webhook_secret(config.webhook_secret);
    if let Some(handle) = crate::metrics::prometheus_recorder() {
        state = state.with_metrics(handle);
    }
    let engine = orchestrator.start();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let served = serve(listener, state, async {
            let _ = stopped.await;
        })
        .await;
        engine.shutdown().await;
        tracing::info!("engine stopped");
        served.map_err(AppError::Serve)
    });
    Ok(Running {
        local_addr,
        public_base_url,
        engine: orchestrator,
        stop,
        task,
    })
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
