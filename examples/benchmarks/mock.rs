//! The mock provider in this process, on its own runtime: its timeline of
//! dials and webhooks is read directly, and dropping it ends every call
//! it still holds (no webhook of a long call outlives its scenario).

use std::time::Duration;

use anyhow::Context as _;
use orchestrator_core::{OutcomeMix, ReportedStatus};
use orchestrator_http::server::mock_provider::{self, MockProvider, MockProviderConfig};
use tokio::runtime::Runtime;

/// A mock provider serving on 127.0.0.1.
#[derive(Debug)]
pub(crate) struct Mock {
    /// The provider, for its timeline and counters.
    pub provider: MockProvider,
    /// `http://127.0.0.1:<port>/`, for `PROVIDER_BASE_URL`.
    pub url: String,
    runtime: Option<Runtime>,
}

impl Mock {
    /// A mock whose calls all last `call_duration` and end `COMPLETED`.
    ///
    /// # Errors
    /// When its runtime or listener cannot be set up.
    pub(crate) fn start(call_duration: Duration) -> anyhow::Result<Self> {
        let provider = MockProvider::new(MockProviderConfig {
            call_duration,
            outcomes: OutcomeMix::only(ReportedStatus::Completed),
            ..MockProviderConfig::default()
        })
        .context("mock provider")?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("mock-provider")
            .enable_all()
            .build()
            .context("mock provider runtime")?;
        let listener =
            std::net::TcpListener::bind("127.0.0.1:0").context("mock provider listener")?;
        listener.set_nonblocking(true)?;
        let url = format!("http://{}/", listener.local_addr()?);
        let serving = provider.clone();
        runtime.spawn(async move {
            match tokio::net::TcpListener::from_std(listener) {
                Ok(listener) => {
                    let _ = mock_provider::serve(listener, &serving, std::future::pending()).await;
                }
                Err(error) => eprintln!("mock provider cannot listen: {error}"),
            }
        });
        Ok(Self {
            provider,
            url,
            runtime: Some(runtime),
        })
    }
}

impl Drop for Mock {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
