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
use orchestrator_core::{CallbackError, CallbackSender, Delivery};
use serde_json::json;

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
}

impl HttpCallbackSender {
    /// A sender whose tries take at most `timeout`, signing with `secret`
    /// when there is one (unsigned otherwise: `webhook-id` and
    /// `webhook-timestamp` are still sent).
    ///
    /// # Errors
    /// When the HTTP client cannot be built (TLS set-up).
    pub fn new(timeout: Duration, secret: Option<WebhookSecret>) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            // A redirected POST may turn into a GET, or leave for another
            // host with our signature: a moved receiver is for its owner to fix.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("call-orchestrator/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self { client, secret })
    }

    /// Whether deliveries are signed.
    #[must_use]
    pub fn signs(&self) -> bool {
        self.secret.is_some()
    }
}

/// The body of a delivery: `{"type", "timestamp", "data"}`.
fn body(delivery: &Delivery) -> Vec<u8> {
    let event = &delivery.event;
    // Serialising plain data cannot fail.
    serde_json::to_vec(&json!({
        "type": event.kind,
        "timestamp": event.occurred_at,
        "data": event.call,
    }))
    .unwrap_or_default()
}

#[async_trait]
impl CallbackSender for HttpCallbackSender {
    async fn send(&self, delivery: &Delivery) -> Result<(), CallbackError> {
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
            let signed = secret.sign_headers(&id, timestamp, &body);
            request = request.header(WEBHOOK_SIGNATURE, signed.signature);
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
    let reason = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    tracing::debug!(%error, reason, "callback request failed");
    CallbackError::new(reason)
}
