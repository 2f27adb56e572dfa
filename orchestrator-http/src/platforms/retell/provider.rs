//! [`RetellProvider`]: the engine's [`Provider`] on Retell's REST API.
//!
//! ```text
//! POST {RETELL_BASE_URL}/v2/create-phone-call
//! Authorization: Bearer {RETELL_API_KEY}
//! {"from_number": "{RETELL_FROM_NUMBER}", "to_number": "+14155550100",
//!  "override_agent_id": "{scriptId}",
//!  "retell_llm_dynamic_variables": {"name": "Sara", "visits": "3"},
//!  "metadata": {"callId": "{our call id}", "attempt": 2}}
//! → 201 {"call_id": "...", "call_status": "registered", ...}
//! ```
//!
//! Sources: the request members are those of
//! `RetellAI/retell-python-sdk:src/retell/types/call_create_phone_call_params.py`
//! (`from_number` and `to_number` required, E.164; `override_agent_id`,
//! `metadata` an arbitrary object echoed in the call object,
//! `retell_llm_dynamic_variables` a map of strings), the path, the base URL
//! `https://api.retellai.com` and the bearer header from
//! `src/retell/resources/call.py` and `src/retell/_client.py` of the same
//! repository, and the response from `src/retell/types/phone_call_response.py`.
//!
//! Our `metadata` (always a JSON object) becomes Retell's
//! `retell_llm_dynamic_variables`, which must be strings: a string member is
//! sent as it is, any other value as its compact JSON text (`3`, `true`,
//! `null`, `["a","b"]`, `{"k":1}`), so a prompt's `{{visits}}` reads `3`.
//! Retell's own `metadata` carries our call id and attempt, which Retell
//! echoes in every webhook and in `get-call`, so a webhook that beats the
//! recording of the `call_id` still finds its attempt.
//!
//! Idempotency: Retell documents no idempotency key (its generated SDK
//! clients send none: `_idempotency_header` is `None` in
//! `src/retell/_base_client.py`). A dial whose answer was lost (timeout,
//! 5xx) may therefore have started a call; it is retried as the engine
//! retries any ambiguous failure, and the retry policy bounds the cost.
//!
//! Classification of answers. Error bodies are `{"status": "error",
//! "message": "..."}` in Retell's current OpenAPI document (components
//! `BadRequest`, `Unauthorized`, `PaymentRequired`, `TooManyRequests`,
//! `InternalServerError`, served with every page of
//! <https://docs.retellai.com/api-references>) and `{"error_message": "..."}`
//! in the first generated SDK (`RetellAI/retell-python-sdk@cd12d56:
//! src/retellclient/models/errors/createphonecall.py`, which also lists
//! 422 "Cannot find requested asset under given api key."); both are read.
//!
//! | answer | classification |
//! |---|---|
//! | 2xx with a `call_id` | dialled |
//! | 2xx without a usable `call_id` | retryable, `"retell 201: no call_id in the response"` |
//! | 429, or any 4xx whose message mentions concurrency | at capacity, after `Retry-After` |
//! | 401, 403 (the key), 402 (payment: "Trial has ended, please add payment method."), 404 (a wrong `RETELL_BASE_URL`), 422 (an agent or `from_number` the key does not own) | account error: the call fails and dialling pauses |
//! | 400 whose message names `from_number` or the agent | account error |
//! | any other 4xx (e.g. a `to_number` Retell refuses) | permanent |
//! | 5xx, 1xx, 3xx | retryable, `"retell 500"` |
//! | timeout, connection error | retryable, `"retell timeout"`, `"retell unreachable"` |
//!
//! Reasons quote Retell's message, cut to 200 characters: `"retell 402:
//! Trial has ended, please add payment method."`.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use axum::http::header::{AUTHORIZATION, RETRY_AFTER};
use axum::http::HeaderValue;
use orchestrator_core::{
    AttemptRef, CallLookup, DialError, DialRequest, Dialled, HangUpError, LookupError, PhoneNumber,
    Provider,
};
use reqwest::{StatusCode, Url};
use serde_json::{json, Map, Value};

use super::call::{RetellCall, Stage, METADATA_ATTEMPT, METADATA_CALL_ID};
use crate::provider::{parse_retry_after, quote, ApiKey};

/// Retell's API, when `RETELL_BASE_URL` is not set.
pub const DEFAULT_BASE_URL: &str = "https://api.retellai.com";
/// Most response bytes read from Retell (a call object carries its
/// transcript once the call has ended).
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// How to reach Retell.
#[derive(Clone, Debug)]
pub struct RetellConfig {
    /// `RETELL_BASE_URL`, e.g. [`DEFAULT_BASE_URL`]; paths are appended to it.
    pub base_url: Url,
    /// `RETELL_API_KEY`: sent as `Authorization: Bearer`, and the key of
    /// Retell's webhook signatures.
    pub api_key: ApiKey,
    /// `RETELL_FROM_NUMBER`: the number calls are placed from, one Retell
    /// knows (bought from or imported to Retell).
    pub from_number: PhoneNumber,
    /// Bound on one request, connection to last byte (`PROVIDER_TIMEOUT_MS`).
    pub timeout: Duration,
}

/// Why a [`RetellProvider`] could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RetellError {
    /// `RETELL_BASE_URL` is not an absolute `http(s)` URL.
    #[error("RETELL_BASE_URL must be an absolute http:// or https:// URL")]
    BadUrl,
    /// The API key cannot be sent in a header.
    #[error("RETELL_API_KEY cannot be sent in a header")]
    BadApiKey,
    /// The timeout is zero.
    #[error("PROVIDER_TIMEOUT_MS must be at least 1")]
    ZeroTimeout,
    /// The HTTP client could not be built (TLS set-up).
    #[error("the HTTP client could not be built")]
    Client(#[source] reqwest::Error),
}

/// Retell as the engine's provider. Cheap to clone: clones share the connection pool.
#[derive(Clone, Debug)]
pub struct RetellProvider {
    client: reqwest::Client,
    base_url: Url,
    authorization: HeaderValue,
    from_number: String,
}

impl RetellProvider {
    /// A client for `config`.
    ///
    /// # Errors
    /// [`RetellError`] for a bad URL or key, a zero timeout, or a TLS set-up failure.
    pub fn new(config: &RetellConfig) -> Result<Self, RetellError> {
        if !matches!(config.base_url.scheme(), "http" | "https")
            || config.base_url.cannot_be_a_base()
        {
            return Err(RetellError::BadUrl);
        }
        if config.timeout.is_zero() {
            return Err(RetellError::ZeroTimeout);
        }
        let authorization = config.api_key.bearer().ok_or(RetellError::BadApiKey)?;
        let client = crate::provider::outbound_client(config.timeout)
            .build()
            .map_err(RetellError::Client)?;
        Ok(Self {
            client,
            base_url: config.base_url.clone(),
            authorization,
            from_number: config.from_number.as_str().to_owned(),
        })
    }

    /// `{base}/{path}`, keeping a path prefix of the base; `segment` is
    /// percent-encoded as one path segment.
    #[must_use]
    pub fn url(&self, path: &str, segment: Option<&str>) -> Url {
        let mut url = self.base_url.clone();
        url.set_query(None);
        url.set_fragment(None);
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.pop_if_empty();
            segments.extend(path.split('/'));
            if let Some(segment) = segment {
                segments.push(segment);
            }
        }
        url
    }

    /// The `create-phone-call` body for `request` (see the module documentation).
    #[must_use]
    pub fn create_body(&self, request: &DialRequest) -> Value {
        let mut body = json!({
            "from_number": self.from_number,
            "to_number": request.to.as_str(),
            "override_agent_id": request.script_id,
            "metadata": {
                METADATA_CALL_ID: request.attempt.call_id,
                METADATA_ATTEMPT: request.attempt.attempt,
            },
        });
        let variables = dynamic_variables(request.metadata.as_ref());
        if let (false, Some(object)) = (variables.is_empty(), body.as_object_mut()) {
            object.insert(
                "retell_llm_dynamic_variables".to_owned(),
                Value::Object(variables),
            );
        }
        body
    }

    async fn send(&self, builder: reqwest::RequestBuilder) -> Result<reqwest::Response, String> {
        builder
            .header(AUTHORIZATION, self.authorization.clone())
            .send()
            .await
            .map_err(|error| {
                tracing::debug!(%error, "retell request failed");
                if error.is_timeout() {
                    "retell timeout"
                } else if error.is_connect() {
                    "retell unreachable"
                } else {
                    "retell request failed"
                }
                .to_owned()
            })
    }
}

/// Our metadata as Retell's dynamic variables: strings as they are, any
/// other value as its compact JSON text.
#[must_use]
pub fn dynamic_variables(metadata: Option<&Value>) -> Map<String, Value> {
    let Some(Value::Object(members)) = metadata else {
        return Map::new();
    };
    members
        .iter()
        .map(|(name, value)| {
            let text = match value {
                Value::String(text) => text.clone(),
                other => other.to_string(),
            };
            (name.clone(), Value::String(text))
        })
        .collect()
}

/// Reads at most [`MAX_RESPONSE_BYTES`] of the body.
async fn read_capped(mut response: reqwest::Response) -> Vec<u8> {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        let room = MAX_RESPONSE_BYTES.saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= MAX_RESPONSE_BYTES {
            break;
        }
    }
    body
}

/// Retell's message in an error body (`message`, or the older
/// `error_message`), else the start of the body, on one line and cut.
fn message(body: &[u8]) -> String {
    let parsed = serde_json::from_slice::<Value>(body).ok();
    let text = parsed.as_ref().and_then(|value| {
        value
            .get("message")
            .or_else(|| value.get("error_message"))
            .and_then(Value::as_str)
    });
    quote(text.map_or(body, str::as_bytes))
}

/// `"retell 402: <message>"`, or `"retell 402"` without one.
fn reason(status: StatusCode, message: &str) -> String {
    if message.is_empty() {
        format!("retell {}", status.as_u16())
    } else {
        format!("retell {}: {message}", status.as_u16())
    }
}

/// How a refused `create-phone-call` is classified (see the module table).
fn refusal(status: StatusCode, message: &str, retry_after: Option<Duration>) -> DialError {
    let lower = message.to_ascii_lowercase();
    if status == StatusCode::TOO_MANY_REQUESTS || lower.contains("concurrency") {
        return DialError::AtCapacity { retry_after };
    }
    let reason = reason(status, message);
    let ours = matches!(status.as_u16(), 401 | 402 | 403 | 404 | 422)
        || lower.contains("from_number")
        || lower.contains("agent");
    if ours {
        DialError::Account { reason }
    } else {
        DialError::Permanent { reason }
    }
}

#[async_trait]
impl Provider for RetellProvider {
    async fn start_call(&self, request: &DialRequest) -> Result<Dialled, DialError> {
        let url = self.url("v2/create-phone-call", None);
        let response = self
            .send(self.client.post(url).json(&self.create_body(request)))
            .await
            .map_err(|reason| DialError::Retryable { reason })?;
        let status = response.status();
        if status.is_client_error() {
            let retry_after = response
                .headers()
                .get(RETRY_AFTER)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| parse_retry_after(value, SystemTime::now()));
            let body = read_capped(response).await;
            return Err(refusal(status, &message(&body), retry_after));
        }
        if !status.is_success() {
            return Err(DialError::Retryable {
                reason: format!("retell {}", status.as_u16()),
            });
        }
        let body = read_capped(response).await;
        let call: Option<RetellCall> = serde_json::from_slice(&body).ok();
        match call.and_then(|call| call.call_id) {
            Some(provider_call_id)
                if orchestrator_core::validate::validate_provider_call_id(&provider_call_id)
                    .is_ok() =>
            {
                Ok(Dialled { provider_call_id })
            }
            _ => Err(DialError::Retryable {
                reason: format!("retell {}: no call_id in the response", status.as_u16()),
            }),
        }
    }

    /// `POST /v2/stop-call/{call_id}` ("Stop an ongoing call",
    /// `RetellAI/retell-python-sdk:src/retell/resources/call.py`, `stop`).
    /// Any 2xx is done; 404 (Retell does not know the call) counts as
    /// already ended. What Retell answers for a call that has already ended
    /// is not documented: such an answer is reported as a failure, which the
    /// engine logs; the call still ends by its webhook.
    async fn hang_up(
        &self,
        provider_call_id: &str,
        _attempt: AttemptRef,
    ) -> Result<(), HangUpError> {
        let url = self.url("v2/stop-call", Some(provider_call_id));
        let response = self
            .send(self.client.post(url))
            .await
            .map_err(|reason| HangUpError::Failed { reason })?;
        let status = response.status();
        if status.is_success() || status == StatusCode::NOT_FOUND {
            return Ok(());
        }
        let body = read_capped(response).await;
        Err(HangUpError::Failed {
            reason: reason(status, &message(&body)),
        })
    }

    /// `GET /v2/get-call/{call_id}` (`RetellAI/retell-python-sdk:
    /// src/retell/resources/call.py`, `retrieve`): `call_status`
    /// `registered`/`ongoing` is live; `ended`/`not_connected`/`error` is
    /// ended, reported from `disconnection_reason` as a webhook would be;
    /// 404 is unknown.
    async fn call_status(
        &self,
        provider_call_id: &str,
        _attempt: AttemptRef,
    ) -> Result<CallLookup, LookupError> {
        let url = self.url("v2/get-call", Some(provider_call_id));
        let response = self
            .send(self.client.get(url))
            .await
            .map_err(|reason| LookupError::Failed { reason })?;
        let status = response.status();
        if status == StatusCode::NOT_FOUND {
            return Ok(CallLookup::Unknown);
        }
        let body = read_capped(response).await;
        if !status.is_success() {
            return Err(LookupError::Failed {
                reason: reason(status, &message(&body)),
            });
        }
        let call: RetellCall = serde_json::from_slice(&body).map_err(|_| LookupError::Failed {
            reason: format!("retell {}: not a call object", status.as_u16()),
        })?;
        match call.stage() {
            Some(Stage::Live) => Ok(CallLookup::Live),
            Some(Stage::Ended) => {
                let mut call = call;
                // The id asked for, should Retell's answer omit it.
                call.call_id
                    .get_or_insert_with(|| provider_call_id.to_owned());
                call.report("")
                    .map(CallLookup::Ended)
                    .map_err(|errors| LookupError::Failed {
                        reason: format!(
                            "retell get-call: {}",
                            errors
                                .iter()
                                .map(|e| format!("{} {}", e.field, e.message))
                                .collect::<Vec<_>>()
                                .join("; ")
                        ),
                    })
            }
            None => Err(LookupError::Failed {
                reason: format!(
                    "retell get-call: unknown call_status {:?}",
                    call.call_status.as_deref().unwrap_or("")
                ),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_variables_are_strings_and_other_values_their_json_text() {
        let variables = dynamic_variables(Some(&json!({
            "name": "Sara",
            "visits": 3,
            "vip": true,
            "note": null,
            "tags": ["a", "b"],
            "address": {"city": "Riyadh"},
        })));
        assert_eq!(
            Value::Object(variables),
            json!({
                "name": "Sara",
                "visits": "3",
                "vip": "true",
                "note": "null",
                "tags": "[\"a\",\"b\"]",
                "address": "{\"city\":\"Riyadh\"}",
            })
        );
        assert!(dynamic_variables(None).is_empty());
    }

    #[test]
    fn refusals_are_classified_by_status_and_message() {
        let at_capacity = DialError::AtCapacity { retry_after: None };
        assert_eq!(
            refusal(
                StatusCode::TOO_MANY_REQUESTS,
                "Account rate limited, please throttle your requests.",
                None
            ),
            at_capacity
        );
        assert_eq!(
            refusal(StatusCode::BAD_REQUEST, "Concurrency limit reached", None),
            at_capacity
        );
        for status in [401, 402, 403, 404, 422] {
            let status = StatusCode::from_u16(status).unwrap();
            assert!(
                matches!(refusal(status, "m", None), DialError::Account { .. }),
                "{status}"
            );
        }
        assert_eq!(
            refusal(StatusCode::BAD_REQUEST, "Invalid from_number", None),
            DialError::Account {
                reason: "retell 400: Invalid from_number".into()
            }
        );
        assert_eq!(
            refusal(
                StatusCode::BAD_REQUEST,
                "to_number is not a valid E.164 number",
                None
            ),
            DialError::Permanent {
                reason: "retell 400: to_number is not a valid E.164 number".into()
            }
        );
    }

    #[test]
    fn messages_come_from_either_error_shape_and_are_cut() {
        assert_eq!(
            message(br#"{"status":"error","message":"API key is missing or invalid."}"#),
            "API key is missing or invalid."
        );
        assert_eq!(
            message(br#"{"error_message":"Trial has ended,\n please add payment method."}"#),
            "Trial has ended, please add payment method."
        );
        assert_eq!(message(b"plain text"), "plain text");
        assert_eq!(
            message(&[b'x'; 500]).chars().count(),
            crate::provider::MAX_QUOTED_CHARS
        );
    }
}
