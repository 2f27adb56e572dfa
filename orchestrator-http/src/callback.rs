//! [`HttpCallbackSender`]: delivers a call's terminal event to its
//! `callbackUrl`, as the engine's [`CallbackSender`].
//!
//! ```text
//! POST {callbackUrl}
//! Content-Type: application/json
//! webhook-id: {event id}                  (the same on every retry: deduplicate by it)
//! webhook-timestamp: {Unix seconds, now}
//! webhook-signature: v1,{base64 HMAC-SHA256 of "{id}.{timestamp}.{body}"}   (with CALLBACK_SECRET)
//!
//! {"type": "call.completed", "timestamp": "{the event's occurredAt}", "data": {Call}}
//! ```
//!
//! The signature is the Standard Webhooks scheme, made by the same code
//! ([`crate::signature`]) that verifies the provider's webhooks. A 2xx
//! answer is delivery; anything else, including a redirect (not followed),
//! is a failed try with a short, stable reason (`"receiver 500"`, `"timed
//! out"`, `"connection failed"`) that the engine records and retries with
//! back-off. Each try is bounded by the timeout, connection to last byte, and
//! at most [`MAX_RESPONSE_BYTES`] of the answer are read.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use orchestrator_core::{Call, CallbackError, CallbackSender, Delivery, EventType};
use serde::Serialize;

use crate::egress::{self, Targets};
use crate::signature::{WebhookSecret, WEBHOOK_ID, WEBHOOK_SIGNATURE, WEBHOOK_TIMESTAMP};

/// Most bytes of a receiver's answer read (and then dropped): enough to let
/// the connection be reused for a short answer, never a large download.
pub const MAX_RESPONSE_BYTES: usize = 4 * 1024;

/// Sends callback deliveries over HTTP. Cheap to clone: clones share the
/// connection pool.
#[derive(Clone, Debug)]
pub struct HttpCallbackSender {
    client: reqwest::Client,
    secret: Option<WebhookSecret>,
    targets: Targets,
}

impl HttpCallbackSender {
    /// A sender whose tries take at most `timeout`, signing with `secret`
    /// when there is one (unsigned otherwise: `webhook-id` and
    /// `webhook-timestamp` are still sent), to the addresses `targets`
    /// allows (see [`crate::egress`]; a refused try fails with
    /// [`egress::BLOCKED`] and is retried like any failed try).
    ///
    /// # Errors
    /// When the HTTP client cannot be built (TLS set-up).
    pub fn new(
        timeout: Duration,
        secret: Option<WebhookSecret>,
        targets: Targets,
    ) -> Result<Self, reqwest::Error> {
        let mut client = crate::provider::outbound_client(timeout);
        if targets == Targets::PublicOnly {
            client = client.dns_resolver(std::sync::Arc::new(egress::PublicOnly));
        }
        let client = client.build()?;
        Ok(Self {
            client,
            secret,
            targets,
        })
    }
}

/// The body of a delivery: `{"type", "timestamp", "data"}`.
#[derive(Serialize)]
struct Body<'a> {
    /// The event type, e.g. `call.completed`.
    #[serde(rename = "type")]
    kind: EventType,
    /// When the change happened (the event's `occurredAt`).
    timestamp: DateTime<Utc>,
    /// The call after the change.
    data: &'a Call,
}

fn body(delivery: &Delivery) -> Vec<u8> {
    let event = &delivery.event;
    // Serialising plain data cannot fail.
    serde_json::to_vec(&Body {
        kind: event.kind,
        timestamp: event.occurred_at,
        data: &event.call,
    })
    .unwrap_or_default()
}

#[async_trait]
impl CallbackSender for HttpCallbackSender {
    async fn send(&self, delivery: &Delivery) -> Result<(), CallbackError> {
        if self.targets == Targets::PublicOnly {
            let url = reqwest::Url::parse(delivery.url.as_str())
                .map_err(|_| CallbackError::new("request failed"))?;
            if !egress::is_public_url(&url) {
                return Err(CallbackError::new(egress::BLOCKED));
            }
        }
        let body = body(delivery);
        let id = delivery.event.id.to_string();
        let timestamp = chrono::Utc::now().timestamp();
        let mut request = self
            .client
            .post(delivery.url.as_str())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(WEBHOOK_ID, &id)
            .header(WEBHOOK_TIMESTAMP, timestamp.to_string());
        if let Some(secret) = &self.secret {
            request = request.header(WEBHOOK_SIGNATURE, secret.sign(&id, timestamp, &body));
        }
        let mut response = request
            .body(body)
            .send()
            .await
            .map_err(|error| transport_error(&error))?;
        let status = response.status();
        // Read a little of the answer, so a short one frees the connection
        // for reuse; its content does not matter.
        let mut read = 0;
        while read < MAX_RESPONSE_BYTES {
            match response.chunk().await {
                Ok(Some(chunk)) => read += chunk.len(),
                Ok(None) | Err(_) => break,
            }
        }
        if status.is_success() {
            Ok(())
        } else {
            Err(CallbackError::new(format!("receiver {}", status.as_u16())))
        }
    }
}

fn transport_error(error: &reqwest::Error) -> CallbackError {
    let reason = if egress::refused(error) {
        egress::BLOCKED
    } else if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    tracing::debug!(%error, reason, "callback request failed");
    CallbackError::new(reason)
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use orchestrator_core::{CallId, CallbackUrl, Event, EventId, NewCall, PhoneNumber, ScriptId};

    use super::*;

    fn delivery(url: &str) -> Delivery {
        let at = Utc.with_ymd_and_hms(2025, 7, 20, 10, 0, 0).unwrap();
        let new = NewCall::new(
            PhoneNumber::parse("+14155550100").unwrap(),
            ScriptId::parse("welcome").unwrap(),
        );
        let call = Call::new(CallId::new_v7(at), &new, at);
        Delivery {
            event: Event {
                id: EventId(1),
                kind: EventType::Created,
                occurred_at: at,
                call,
            },
            url: CallbackUrl::parse(url).unwrap(),
            attempt: 1,
        }
    }

    #[tokio::test]
    async fn callbacks_to_private_addresses_are_refused_unless_allowed() {
        let public_only =
            HttpCallbackSender::new(Duration::from_secs(2), None, Targets::PublicOnly).unwrap();
        for url in [
            "http://127.0.0.1:9/hook",
            "http://[::1]:9/hook",
            "http://169.254.169.254/latest/meta-data",
            "http://localhost:9/hook",
        ] {
            let refused = public_only.send(&delivery(url)).await.unwrap_err();
            assert_eq!(refused.reason, egress::BLOCKED, "{url}");
        }
        // Allowed, the same target is tried (and, nothing listening, fails to connect).
        let any = HttpCallbackSender::new(Duration::from_secs(2), None, Targets::Any).unwrap();
        let failed = any
            .send(&delivery("http://127.0.0.1:9/hook"))
            .await
            .unwrap_err();
        assert_eq!(failed.reason, "connection failed");
    }
}
