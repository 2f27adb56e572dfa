//! Standard Webhooks signatures (<https://www.standardwebhooks.com>, symmetric `v1` scheme).
//!
//! One module signs and verifies, so the orchestrator's webhook endpoint and
//! the mock provider cannot drift apart:
//!
//! - the secret is `whsec_` followed by base64; the HMAC key is the decoded bytes;
//! - the signed content is `{webhook-id}.{webhook-timestamp}.{raw body}`;
//! - the signature is `v1,` followed by the base64 HMAC-SHA256 of that content;
//! - the `webhook-signature` header holds one or more space-separated
//!   signatures (several during a secret rotation), any one of which may match;
//! - `webhook-timestamp` (Unix seconds) must be within [`TOLERANCE`] of now,
//!   either way, which bounds replays.
//!
//! Verification runs on the raw body bytes before any JSON parsing, because a
//! re-serialised body would not be the bytes that were signed.

use std::str::FromStr;
use std::time::Duration;

use axum::http::HeaderMap;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretSlice};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Header carrying the message id, an idempotency key chosen by the sender.
pub const WEBHOOK_ID: &str = "webhook-id";
/// Header carrying the sending time, integer Unix seconds.
pub const WEBHOOK_TIMESTAMP: &str = "webhook-timestamp";
/// Header carrying the space-separated `v1,<base64>` signatures.
pub const WEBHOOK_SIGNATURE: &str = "webhook-signature";
/// How far `webhook-timestamp` may be from now, in either direction (5 minutes,
/// as the Standard Webhooks libraries use).
pub const TOLERANCE: Duration = Duration::from_secs(5 * 60);

/// The prefix of a serialised symmetric secret.
const SECRET_PREFIX: &str = "whsec_";
/// The identifier of the symmetric (HMAC-SHA256) scheme.
const SCHEME_V1: &str = "v1";
/// Fewest key bytes accepted: the Standard Webhooks specification asks for at
/// least 24 random bytes (192 bits).
pub const MIN_SECRET_BYTES: usize = 24;
/// Most key bytes accepted (the specification's maximum, 512 bits).
pub const MAX_SECRET_BYTES: usize = 64;

/// A Standard Webhooks symmetric secret (`whsec_<base64>`). The key is held
/// as a secret: `Debug` output never shows it.
#[derive(Clone, Debug)]
pub struct WebhookSecret {
    key: SecretSlice<u8>,
}

/// Why a string is not a usable `whsec_` secret.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SecretError {
    /// The `whsec_` prefix is missing.
    #[error("must start with \"whsec_\" followed by base64 (a Standard Webhooks secret)")]
    MissingPrefix,
    /// The part after `whsec_` is not standard base64.
    #[error("the part after \"whsec_\" is not valid base64")]
    NotBase64,
    /// The decoded key is shorter or longer than the specification allows.
    #[error(
        "the decoded key has {0} bytes; Standard Webhooks secrets have {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES}"
    )]
    BadLength(usize),
}

/// Why a webhook's signature was refused. Each maps to the header at fault.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// A required header is absent.
    #[error("header {0} is missing")]
    MissingHeader(&'static str),
    /// A header is present but not well-formed (not visible ASCII, not an integer, empty).
    #[error("header {0} is malformed")]
    MalformedHeader(&'static str),
    /// `webhook-timestamp` is more than [`TOLERANCE`] away from now.
    #[error("header webhook-timestamp is more than 5 minutes from the server's time")]
    TimestampOutOfTolerance,
    /// No `v1` signature in `webhook-signature` matches the content.
    #[error("no signature in header webhook-signature matches the request")]
    NoMatch,
    /// A platform's signature header (e.g. `x-retell-signature`) carries a
    /// timestamp more than 5 minutes from the server's time.
    #[error("the timestamp in header {0} is more than 5 minutes from the server's time")]
    StaleHeader(&'static str),
    /// A platform's signature header does not match the request.
    #[error("the signature in header {0} does not match the request")]
    MismatchIn(&'static str),
    /// A platform's webhook arrived, but no key to verify its signature
    /// header is configured (that platform is not in use).
    #[error("no key is configured to verify header {0}")]
    NoKeyFor(&'static str),
}

impl SignatureError {
    /// The header at fault, for the problem document's `errors[].field`.
    #[must_use]
    pub fn header(&self) -> &'static str {
        match self {
            SignatureError::MissingHeader(name)
            | SignatureError::MalformedHeader(name)
            | SignatureError::StaleHeader(name)
            | SignatureError::MismatchIn(name)
            | SignatureError::NoKeyFor(name) => name,
            SignatureError::TimestampOutOfTolerance => WEBHOOK_TIMESTAMP,
            SignatureError::NoMatch => WEBHOOK_SIGNATURE,
        }
    }
}

impl FromStr for WebhookSecret {
    type Err = SecretError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let encoded = s
            .trim()
            .strip_prefix(SECRET_PREFIX)
            .ok_or(SecretError::MissingPrefix)?;
        let key = BASE64.decode(encoded).map_err(|_| SecretError::NotBase64)?;
        if !(MIN_SECRET_BYTES..=MAX_SECRET_BYTES).contains(&key.len()) {
            return Err(SecretError::BadLength(key.len()));
        }
        Ok(Self {
            key: SecretSlice::from(key),
        })
    }
}

/// The three Standard Webhooks headers of one signed delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedHeaders {
    /// `webhook-id`.
    pub id: String,
    /// `webhook-timestamp`, Unix seconds.
    pub timestamp: i64,
    /// `webhook-signature`, e.g. `v1,K5oZ...=`.
    pub signature: String,
}

impl WebhookSecret {
    fn mac(&self, id: &str, timestamp: i64, body: &[u8]) -> HmacSha256 {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac =
            HmacSha256::new_from_slice(self.key.expose_secret()).unwrap_or_else(|_| unreachable!());
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// The `v1,<base64>` signature of `body` sent with message id `id` at
    /// `timestamp` (Unix seconds).
    #[must_use]
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let tag = self.mac(id, timestamp, body).finalize().into_bytes();
        format!("{SCHEME_V1},{}", BASE64.encode(tag))
    }

    /// The headers to send with `body`.
    #[must_use]
    pub fn sign_headers(&self, id: &str, timestamp: i64, body: &[u8]) -> SignedHeaders {
        SignedHeaders {
            id: id.to_owned(),
            timestamp,
            signature: self.sign(id, timestamp, body),
        }
    }

    /// Verifies a delivery's headers against its raw `body` at `now` (Unix seconds).
    ///
    /// Signatures of other schemes (e.g. `v1a`, asymmetric) are skipped; each
    /// `v1` candidate is compared in constant time.
    ///
    /// # Errors
    /// A [`SignatureError`] naming the header at fault.
    pub fn verify(&self, headers: &HeaderMap, body: &[u8], now: i64) -> Result<(), SignatureError> {
        let id = header(headers, WEBHOOK_ID)?;
        let timestamp: i64 = header(headers, WEBHOOK_TIMESTAMP)?
            .parse()
            .map_err(|_| SignatureError::MalformedHeader(WEBHOOK_TIMESTAMP))?;
        let signatures = header(headers, WEBHOOK_SIGNATURE)?;
        let tolerance = i64::try_from(TOLERANCE.as_secs()).unwrap_or(i64::MAX);
        if now.abs_diff(timestamp) > tolerance.unsigned_abs() {
            return Err(SignatureError::TimestampOutOfTolerance);
        }
        let mac = self.mac(id, timestamp, body);
        let matched = signatures
            .split(' ')
            .filter_map(|entry| entry.split_once(','))
            .filter(|(scheme, _)| *scheme == SCHEME_V1)
            .filter_map(|(_, encoded)| BASE64.decode(encoded).ok())
            // `verify_slice` compares in constant time (the `subtle` crate underneath).
            .any(|candidate| mac.clone().verify_slice(&candidate).is_ok());
        if matched {
            Ok(())
        } else {
            Err(SignatureError::NoMatch)
        }
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &'static str) -> Result<&'a str, SignatureError> {
    let value = headers
        .get(name)
        .ok_or(SignatureError::MissingHeader(name))?
        .to_str()
        .map_err(|_| SignatureError::MalformedHeader(name))?
        .trim();
    if value.is_empty() {
        return Err(SignatureError::MalformedHeader(name));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    // The published test vector of the Standard Webhooks reference libraries
    // (standard-webhooks/standard-webhooks, libraries/rust/src/lib.rs, `test_sign`;
    // the other languages' test suites use the same values).
    const VECTOR_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    const VECTOR_ID: &str = "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk";
    const VECTOR_TIMESTAMP: i64 = 1_649_367_553;
    const VECTOR_BODY: &[u8] = br#"{"email":"test@example.com","username":"test_user"}"#;
    const VECTOR_SIGNATURE: &str = "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=";

    fn secret() -> WebhookSecret {
        VECTOR_SECRET.parse().unwrap()
    }

    fn headers(id: &str, timestamp: i64, signature: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(WEBHOOK_ID, HeaderValue::from_str(id).unwrap());
        headers.insert(
            WEBHOOK_TIMESTAMP,
            HeaderValue::from_str(&timestamp.to_string()).unwrap(),
        );
        headers.insert(WEBHOOK_SIGNATURE, HeaderValue::from_str(signature).unwrap());
        headers
    }

    #[test]
    fn signing_reproduces_the_published_test_vector() {
        assert_eq!(
            secret().sign(VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY),
            VECTOR_SIGNATURE
        );
    }

    #[test]
    fn the_published_test_vector_verifies_at_its_timestamp() {
        let headers = headers(VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_SIGNATURE);
        assert_eq!(
            secret().verify(&headers, VECTOR_BODY, VECTOR_TIMESTAMP),
            Ok(())
        );
    }

    #[test]
    fn any_of_several_signatures_may_match() {
        let header = format!(
            "v1,tFtCZ5RDCPxzWQRWXWPgrCgE2frDBe9gjpbWQxnVfsQ= v1a,abc {VECTOR_SIGNATURE} v1,bm90LWl0"
        );
        let headers = headers(VECTOR_ID, VECTOR_TIMESTAMP, &header);
        assert_eq!(
            secret().verify(&headers, VECTOR_BODY, VECTOR_TIMESTAMP),
            Ok(())
        );
    }

    #[test]
    fn a_changed_body_id_or_timestamp_does_not_verify() {
        let secret = secret();
        let tampered_body = br#"{"email":"test@example.com","username":"test_user2"}"#;
        let cases = [
            (
                headers(VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_SIGNATURE),
                &tampered_body[..],
            ),
            (
                headers("msg_other", VECTOR_TIMESTAMP, VECTOR_SIGNATURE),
                VECTOR_BODY,
            ),
            (
                headers(VECTOR_ID, VECTOR_TIMESTAMP + 1, VECTOR_SIGNATURE),
                VECTOR_BODY,
            ),
        ];
        for (headers, body) in cases {
            assert_eq!(
                secret.verify(&headers, body, VECTOR_TIMESTAMP),
                Err(SignatureError::NoMatch)
            );
        }
    }

    #[test]
    fn only_v1_signatures_count() {
        let asymmetric = VECTOR_SIGNATURE.replacen("v1,", "v1a,", 1);
        let headers = headers(VECTOR_ID, VECTOR_TIMESTAMP, &asymmetric);
        assert_eq!(
            secret().verify(&headers, VECTOR_BODY, VECTOR_TIMESTAMP),
            Err(SignatureError::NoMatch)
        );
    }

    #[test]
    fn timestamps_more_than_five_minutes_away_are_refused_either_way() {
        let secret = secret();
        let headers = headers(VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_SIGNATURE);
        for now in [VECTOR_TIMESTAMP + 301, VECTOR_TIMESTAMP - 301] {
            assert_eq!(
                secret.verify(&headers, VECTOR_BODY, now),
                Err(SignatureError::TimestampOutOfTolerance)
            );
        }
        for now in [VECTOR_TIMESTAMP + 300, VECTOR_TIMESTAMP - 300] {
            assert_eq!(secret.verify(&headers, VECTOR_BODY, now), Ok(()));
        }
    }

    #[test]
    fn missing_and_malformed_headers_name_the_header() {
        let secret = secret();
        for name in [WEBHOOK_ID, WEBHOOK_TIMESTAMP, WEBHOOK_SIGNATURE] {
            let mut headers = headers(VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_SIGNATURE);
            headers.remove(name);
            let error = secret
                .verify(&headers, VECTOR_BODY, VECTOR_TIMESTAMP)
                .unwrap_err();
            assert_eq!(error, SignatureError::MissingHeader(name));
            assert_eq!(error.header(), name);
        }
        let headers = headers(VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_SIGNATURE);
        let mut bad = headers.clone();
        bad.insert(WEBHOOK_TIMESTAMP, HeaderValue::from_static("12.5"));
        assert_eq!(
            secret.verify(&bad, VECTOR_BODY, VECTOR_TIMESTAMP),
            Err(SignatureError::MalformedHeader(WEBHOOK_TIMESTAMP))
        );
    }

    #[test]
    fn secrets_must_be_whsec_base64_of_a_sensible_length() {
        let refused = |raw: &str| raw.parse::<WebhookSecret>().unwrap_err();
        assert_eq!(
            refused("C2FVsBQIhrscChlQIMV+b5sSYspob7oD"),
            SecretError::MissingPrefix
        );
        assert_eq!(refused("whsec_not base64!"), SecretError::NotBase64);
        assert_eq!(refused("whsec_dGVzdA=="), SecretError::BadLength(4));
    }

    #[test]
    fn debug_output_does_not_show_the_key() {
        let shown = format!("{:?}", secret());
        assert!(!shown.contains("C2FVsBQIhrscChlQIMV"), "{shown}");
        assert!(shown.contains("REDACTED"), "{shown}");
    }
}
