//! `HttpProvider`: the engine's [`Provider`] over HTTP (reqwest, rustls): how we
//! ask the AI-call provider to place a call, and how its answer is classified.
//!
//! ```text
//! POST {base}/api/v1/calls
//! Authorization: Bearer {api key}            (when configured)
//! Idempotency-Key: {callId}:{attempt}        (the same if this very attempt is re-sent)
//! {"to", "scriptId", "metadata", "webhookUrl": "{public}/callbacks/call-status?callId=..&attempt=.."}
//! → 2xx (202 expected) {"callId": "<the provider's id for the call>"}
//! ```
//!
//! The `callId` and `attempt` in `webhookUrl` let a webhook that arrives
//! before the provider's answer was recorded still find its attempt.
//!
//! | answer | classification |
//! |---|---|
//! | 2xx with `{"callId": "<non-empty string>"}` | dialled |
//! | 2xx without a usable `callId` | retryable, `"provider 202: no callId in the response"` |
//! | 429 | at capacity, after `Retry-After` (delta-seconds or HTTP-date, RFC 9110 section 10.2.3) |
//! | other 4xx | permanent, `"provider 422: <start of the body>"` |
//! | 5xx, 1xx, 3xx (redirects are not followed) | retryable, `"provider 503"` |
//! | timeout | retryable, `"provider timeout"` |
//! | connection or other transport error | retryable, `"provider unreachable"` / `"provider request failed"` |
//!
//! Hang-up, an optional extension of the contract, for a canceled call
//! that is live:
//!
//! ```text
//! POST {base}/api/v1/calls/{provider's callId}/hangup
//! Authorization: Bearer {api key}            (when configured)
//! → 2xx: the call is being ended; 404: no such live call (it ended already)
//! ```
//!
//! Either way the call still ends through its webhook (or its lease). Any
//! other answer, a timeout or a network error is a failed hang-up, which
//! the engine logs; the call is never re-dialled regardless.

use std::str::FromStr;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use axum::http::header::{AUTHORIZATION, RETRY_AFTER};
use axum::http::HeaderValue;
use orchestrator_core::provider::webhook_query;
use orchestrator_core::validate::validate_provider_call_id;
use orchestrator_core::{AttemptRef, DialError, DialRequest, Dialled, HangUpError, Provider};
use reqwest::{StatusCode, Url};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};

/// Longest `Retry-After` honoured; longer waits are cut to this, so a
/// misbehaving provider cannot park calls for days.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);
/// Most response bytes read from the provider.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// Most characters of an error body quoted in `lastError`.
pub(crate) const MAX_QUOTED_CHARS: usize = 200;

/// A provider API key: one or more visible ASCII characters (no spaces), so
/// that it can be sent as `Authorization: Bearer {key}`. Held as a secret:
/// its `Debug` output never shows it.
#[derive(Clone, Debug)]
pub struct ApiKey(SecretString);

/// A string that cannot be an [`ApiKey`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("an API key must be one or more visible ASCII characters, without spaces")]
pub struct BadApiKey;

impl FromStr for ApiKey {
    type Err = BadApiKey;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(BadApiKey);
        }
        Ok(Self(SecretString::from(s)))
    }
}

impl ApiKey {
    /// The key itself, to send or compare.
    #[must_use]
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    /// `Bearer {key}`, marked sensitive so that HTTP libraries neither log
    /// nor compress-index it.
    #[must_use]
    pub fn bearer(&self) -> Option<HeaderValue> {
        let mut value = HeaderValue::from_str(&format!("Bearer {}", self.expose())).ok()?;
        value.set_sensitive(true);
        Some(value)
    }
}

/// How to reach the provider.
#[derive(Clone, Debug)]
pub struct HttpProviderConfig {
    /// The provider's base URL (`PROVIDER_BASE_URL`); `/api/v1/calls` is appended.
    pub base_url: Url,
    /// Sent as `Authorization: Bearer {key}` when set (`PROVIDER_API_KEY`).
    pub api_key: Option<ApiKey>,
    /// Bound on one dial request, connection to last byte (`PROVIDER_TIMEOUT_MS`).
    pub timeout: Duration,
    /// Our externally reachable base URL (`PUBLIC_BASE_URL`), for `webhookUrl`.
    pub public_base_url: Url,
}

/// Why an [`HttpProvider`] could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HttpProviderError {
    /// A URL is not `http` or `https`, or cannot be a base.
    #[error("{0} must be an absolute http:// or https:// URL")]
    BadUrl(&'static str),
    /// The API key cannot be sent in a header.
    #[error("PROVIDER_API_KEY cannot be sent in a header")]
    BadApiKey,
    /// The timeout is zero.
    #[error("PROVIDER_TIMEOUT_MS must be at least 1")]
    ZeroTimeout,
    /// The HTTP client could not be built (TLS set-up).
    #[error("the HTTP client could not be built")]
    Client(#[source] reqwest::Error),
}

/// A provider reached over HTTP. Cheap to clone: clones share the connection pool.
#[derive(Clone, Debug)]
pub struct HttpProvider {
    client: reqwest::Client,
    calls_url: Url,
    webhook_url: String,
    /// `Bearer {key}`, marked sensitive.
    authorization: Option<HeaderValue>,
}

impl HttpProvider {
    /// A provider client for `config`.
    ///
    /// # Errors
    /// [`HttpProviderError`] for a bad URL or key, a zero timeout, or a TLS set-up failure.
    pub fn new(config: &HttpProviderConfig) -> Result<Self, HttpProviderError> {
        let calls_url = join(&config.base_url, "api/v1/calls")
            .ok_or(HttpProviderError::BadUrl("PROVIDER_BASE_URL"))?;
        let webhook_url = join(&config.public_base_url, "callbacks/call-status")
            .ok_or(HttpProviderError::BadUrl("PUBLIC_BASE_URL"))?;
        if config.timeout.is_zero() {
            return Err(HttpProviderError::ZeroTimeout);
        }
        let authorization = match &config.api_key {
            Some(key) => Some(key.bearer().ok_or(HttpProviderError::BadApiKey)?),
            None => None,
        };
        let client = outbound_client(config.timeout)
            .build()
            .map_err(HttpProviderError::Client)?;
        Ok(Self {
            client,
            calls_url,
            webhook_url: webhook_url.to_string(),
            authorization,
        })
    }

    /// The URL dial requests are posted to.
    #[must_use]
    pub fn calls_url(&self) -> &Url {
        &self.calls_url
    }

    /// `{base}/api/v1/calls/{provider_call_id}/hangup`, the id
    /// percent-encoded as one path segment.
    #[must_use]
    pub fn hang_up_url(&self, provider_call_id: &str) -> Url {
        let mut url = self.calls_url.clone();
        // The calls URL is an http(s) URL (checked in `new`), so it is a base.
        if let Ok(mut segments) = url.path_segments_mut() {
            segments
                .pop_if_empty()
                .push(provider_call_id)
                .push("hangup");
        }
        url
    }

    async fn send(&self, request: &DialRequest) -> Result<reqwest::Response, DialError> {
        let mut body = json!({
            "to": request.to,
            "scriptId": request.script_id,
            "webhookUrl": format!("{}?{}", self.webhook_url, webhook_query(request.attempt)),
        });
        // Absent metadata is left out rather than sent as `null`, which a
        // strict provider might refuse.
        if let (Some(metadata), Some(object)) = (&request.metadata, body.as_object_mut()) {
            object.insert("metadata".to_owned(), metadata.clone());
        }
        let mut builder = self
            .client
            .post(self.calls_url.clone())
            .header("idempotency-key", request.idempotency_key())
            .json(&body);
        if let Some(authorization) = &self.authorization {
            builder = builder.header(AUTHORIZATION, authorization.clone());
        }
        builder
            .send()
            .await
            .map_err(|error| transport_error(&error))
    }
}

/// `base` with `path` appended to its path (keeping any prefix, e.g. `/v2/`).
pub(crate) fn join(base: &Url, path: &str) -> Option<Url> {
    if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
        return None;
    }
    let mut joined = base.clone();
    let prefix = base.path().trim_end_matches('/');
    joined.set_path(&format!("{prefix}/{path}"));
    joined.set_query(None);
    joined.set_fragment(None);
    Some(joined)
}

fn transport_error(error: &reqwest::Error) -> DialError {
    let reason = if error.is_timeout() {
        "provider timeout"
    } else if error.is_connect() {
        "provider unreachable"
    } else {
        "provider request failed"
    };
    tracing::debug!(%error, reason, "provider request failed");
    DialError::Retryable {
        reason: reason.to_owned(),
    }
}

/// Reads at most [`MAX_RESPONSE_BYTES`] of the body.
async fn read_capped(mut response: reqwest::Response) -> Result<Vec<u8>, DialError> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|error| transport_error(&error))?
    {
        let room = MAX_RESPONSE_BYTES.saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= MAX_RESPONSE_BYTES {
            break;
        }
    }
    Ok(body)
}

/// The start of an error body, on one line, for `lastError`.
pub(crate) fn quote(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let flat: String = text
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_QUOTED_CHARS)
        .collect();
    flat
}

/// Parses `Retry-After` (RFC 9110 section 10.2.3): delta-seconds, or an
/// HTTP-date (IMF-fixdate, or the obsolete RFC 850 and asctime forms)
/// taken relative to `now`; a date in the past means "now". Capped at
/// [`MAX_RETRY_AFTER`]. `None` when absent or unparseable.
#[must_use]
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    let wait = if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Overlong digit strings are "a very long time", not an error.
        Duration::from_secs(value.parse::<u64>().unwrap_or(u64::MAX))
    } else {
        let at = httpdate::parse_http_date(value).ok()?;
        at.duration_since(now).unwrap_or(Duration::ZERO)
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

#[async_trait]
impl Provider for HttpProvider {
    async fn start_call(&self, request: &DialRequest) -> Result<Dialled, DialError> {
        let response = self.send(request).await?;
        let status = response.status();
        if status == StatusCode::TOO_MANY_REQUESTS {
            let retry_after = response
                .headers()
                .get(RETRY_AFTER)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| parse_retry_after(value, SystemTime::now()));
            return Err(DialError::AtCapacity { retry_after });
        }
        if status.is_client_error() {
            let body = read_capped(response).await.unwrap_or_default();
            let quoted = quote(&body);
            let reason = if quoted.is_empty() {
                format!("provider {}", status.as_u16())
            } else {
                format!("provider {}: {quoted}", status.as_u16())
            };
            return Err(DialError::Permanent { reason });
        }
        if !status.is_success() {
            return Err(DialError::Retryable {
                reason: format!("provider {}", status.as_u16()),
            });
        }
        let body = read_capped(response).await?;
        let provider_call_id = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|value| value.get("callId")?.as_str().map(str::to_owned))
            .filter(|id| validate_provider_call_id(id).is_ok());
        match provider_call_id {
            Some(provider_call_id) => Ok(Dialled { provider_call_id }),
            // The provider may or may not have started the call; retrying with
            // the same idempotency key is safe either way.
            None => Err(DialError::Retryable {
                reason: format!("provider {}: no callId in the response", status.as_u16()),
            }),
        }
    }

    async fn hang_up(
        &self,
        provider_call_id: &str,
        _attempt: AttemptRef,
    ) -> Result<(), HangUpError> {
        let url = self.hang_up_url(provider_call_id);
        let mut builder = self.client.post(url);
        if let Some(authorization) = &self.authorization {
            builder = builder.header(AUTHORIZATION, authorization.clone());
        }
        let response = builder.send().await.map_err(|error| HangUpError::Failed {
            reason: transport_error(&error).to_string(),
        })?;
        let status = response.status();
        // Read the (short) answer so the connection can be reused.
        let _ = read_capped(response).await;
        if status.is_success() || status == StatusCode::NOT_FOUND {
            Ok(())
        } else {
            Err(HangUpError::Failed {
                reason: format!("provider {}", status.as_u16()),
            })
        }
    }
}

/// The HTTP client set-up every outbound request shares (provider APIs,
/// client callbacks): each request bounded by `timeout`, connection to
/// last byte; redirects not followed (a redirected POST may turn into a
/// GET, or carry our credentials to another host: a moved endpoint is a
/// configuration problem to surface); our user agent.
pub(crate) fn outbound_client(timeout: Duration) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("call-orchestrator/", env!("CARGO_PKG_VERSION")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_accepts_seconds_and_http_dates() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:50:07 GMT", now),
            Some(Duration::from_secs(30))
        );
        // The obsolete forms RFC 9110 section 5.6.7 requires recipients to accept.
        assert_eq!(
            parse_retry_after("Sunday, 06-Nov-94 08:50:07 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Sun Nov  6 08:50:07 1994", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(
            parse_retry_after("999999999999999999999999", now),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(parse_retry_after("-5", now), None);
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("", now), None);
    }

    #[test]
    fn urls_keep_a_base_path_prefix() {
        let base = Url::parse("http://provider.test/v2/").unwrap();
        assert_eq!(
            join(&base, "api/v1/calls").unwrap().as_str(),
            "http://provider.test/v2/api/v1/calls"
        );
        let bare = Url::parse("https://provider.test").unwrap();
        assert_eq!(
            join(&bare, "api/v1/calls").unwrap().as_str(),
            "https://provider.test/api/v1/calls"
        );
        assert!(join(&Url::parse("ftp://provider.test").unwrap(), "x").is_none());
    }

    #[test]
    fn hang_up_urls_name_the_provider_call_as_one_segment() {
        let provider = HttpProvider::new(&HttpProviderConfig {
            base_url: Url::parse("http://provider.test/v2/").unwrap(),
            api_key: None,
            timeout: Duration::from_secs(1),
            public_base_url: Url::parse("http://127.0.0.1:8080").unwrap(),
        })
        .unwrap();
        assert_eq!(
            provider.hang_up_url("mock-7").as_str(),
            "http://provider.test/v2/api/v1/calls/mock-7/hangup"
        );
        assert_eq!(
            provider.hang_up_url("a/b?c").as_str(),
            "http://provider.test/v2/api/v1/calls/a%2Fb%3Fc/hangup"
        );
    }

    #[test]
    fn quoted_bodies_are_short_single_lines() {
        let body = format!("{{\"error\":\n\"bad\tnumber\"}}{}", "x".repeat(500));
        let quoted = quote(body.as_bytes());
        assert!(quoted.starts_with("{\"error\": \"bad number\"}"));
        assert_eq!(quoted.chars().count(), MAX_QUOTED_CHARS);
    }
}
