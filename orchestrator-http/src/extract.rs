//! Request extractors whose every rejection is an [`ApiError`], so axum's
//! built-in plain-text rejections never reach a client.
//!
//! JSON bodies are read as a [`serde_json::Value`] first and then field by
//! field with [`Fields`], rather than deserialised straight into a struct:
//! that way an error names the field at fault (`to`, `notBefore`) and all
//! wrong fields are reported at once, instead of serde's first message.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use chrono::{DateTime, Utc};
use orchestrator_core::clock::truncate_to_micros;
use orchestrator_core::CallId;
use serde_json::{Map, Value};

use crate::problem::{ApiError, FieldError};
use crate::state::AppState;

/// The raw request body, within the configured size limit.
#[derive(Debug)]
pub struct RawBody(pub Bytes);

impl FromRequest<AppState> for RawBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        Bytes::from_request(request, state)
            .await
            .map(RawBody)
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::PayloadTooLarge(state.limits().body_bytes)
                } else {
                    ApiError::MalformedBody(format!(
                        "the request body could not be read: {}",
                        rejection.body_text()
                    ))
                }
            })
    }
}

/// A JSON object body sent as `application/json` (or any `application/*+json`,
/// e.g. `application/merge-patch+json` for PATCH).
#[derive(Debug)]
pub struct JsonObject(pub Map<String, Value>);

impl FromRequest<AppState> for JsonObject {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        if !is_json(request.headers()) {
            return Err(ApiError::UnsupportedMediaType(
                "send the body as JSON with Content-Type: application/json".to_owned(),
            ));
        }
        let RawBody(bytes) = RawBody::from_request(request, state).await?;
        parse_object(&bytes).map(JsonObject)
    }
}

/// Parses `bytes` as a JSON object.
///
/// # Errors
/// [`ApiError::MalformedBody`] with serde's position of the syntax error, or
/// when the JSON is not an object.
pub fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, ApiError> {
    // serde_json stops at 128 levels of nesting, so hostile input cannot
    // exhaust the stack.
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|error| ApiError::MalformedBody(format!("the body is not valid JSON: {error}")))?;
    match value {
        Value::Object(map) => Ok(map),
        other => Err(ApiError::MalformedBody(format!(
            "the body must be a JSON object, not {}",
            json_type(&other)
        ))),
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    let Some(content_type) = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// The name of a JSON value's type, for messages.
#[must_use]
pub fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The `{id}` path segment, a call id (UUID).
#[derive(Clone, Copy, Debug)]
pub struct CallIdPath(pub CallId);

impl<S: Send + Sync> FromRequestParts<S> for CallIdPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|rejection| ApiError::MalformedPath(rejection.body_text()))?;
        raw.parse::<CallId>().map(CallIdPath).map_err(|_| {
            ApiError::invalid(
                "id",
                format!("{raw:?} is not a call id; call ids are UUIDs, e.g. 0198c0de-7f3a-7b52-9c1e-5d6f7a8b9c0d"),
            )
        })
    }
}

/// The query string as name/value pairs, each name at most once.
#[derive(Debug, Default)]
pub struct QueryPairs(pub Vec<(String, String)>);

impl<S: Send + Sync> FromRequestParts<S> for QueryPairs {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Query(pairs) = Query::<Vec<(String, String)>>::from_request_parts(parts, state)
            .await
            .map_err(|rejection| ApiError::MalformedQuery(rejection.body_text()))?;
        // A set keeps this linear: a long query string must not cost quadratic time.
        let mut seen = std::collections::BTreeSet::new();
        let mut repeated = std::collections::BTreeSet::new();
        for (name, _) in &pairs {
            if !seen.insert(name.as_str()) {
                repeated.insert(name.as_str());
            }
        }
        let errors: Vec<FieldError> = repeated
            .into_iter()
            .map(|name| FieldError::new(name, "must be given at most once"))
            .collect();
        if errors.is_empty() {
            Ok(QueryPairs(pairs))
        } else {
            Err(ApiError::Invalid(errors))
        }
    }
}

impl QueryPairs {
    /// The value of `name`, if given.
    #[must_use]
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// How a body member may be given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Presence {
    /// Must be present and not `null`.
    Required,
    /// May be absent; `null` means absent.
    Optional,
    /// May be absent, but not `null` (PATCH: absent keeps the old value, and
    /// there is no way to clear a required field).
    OptionalNotNull,
}

/// Reads a JSON object's members one by one, collecting every error.
#[derive(Debug)]
pub struct Fields {
    map: Map<String, Value>,
    errors: Vec<FieldError>,
}

impl Fields {
    /// A reader over `map`.
    #[must_use]
    pub fn new(map: Map<String, Value>) -> Self {
        Self {
            map,
            errors: Vec::new(),
        }
    }

    /// Records an error for every member not in `allowed`.
    pub fn reject_unknown(&mut self, allowed: &[&str]) {
        let mut unknown: Vec<&String> = self
            .map
            .keys()
            .filter(|key| !allowed.contains(&key.as_str()))
            .collect();
        unknown.sort();
        for key in unknown {
            self.errors.push(FieldError::new(
                key.clone(),
                format!("is not a known field; expected {}", allowed.join(", ")),
            ));
        }
    }

    /// Records an error for `field`.
    pub fn error(&mut self, field: &str, message: impl Into<String>) {
        self.errors.push(FieldError::new(field, message));
    }

    /// The member `name`, applying `presence`; `None` when absent (or null
    /// where allowed) or wrong.
    fn take(&mut self, name: &str, presence: Presence) -> Option<Value> {
        match (self.map.remove(name), presence) {
            (None, Presence::Required) | (Some(Value::Null), Presence::Required) => {
                self.error(name, "is required");
                None
            }
            (Some(Value::Null), Presence::OptionalNotNull) => {
                self.error(
                    name,
                    "must not be null; leave it out to keep the current value",
                );
                None
            }
            (None, _) | (Some(Value::Null), _) => None,
            (Some(value), _) => Some(value),
        }
    }

    /// A string member.
    pub fn string(&mut self, name: &str, presence: Presence) -> Option<String> {
        match self.take(name, presence)? {
            Value::String(value) => Some(value),
            other => {
                self.error(name, format!("must be a string, not {}", json_type(&other)));
                None
            }
        }
    }

    /// A string member parsed by `parse`, whose error message is recorded.
    pub fn parsed<T, E: std::fmt::Display>(
        &mut self,
        name: &str,
        presence: Presence,
        parse: impl FnOnce(&str) -> Result<T, E>,
    ) -> Option<T> {
        let raw = self.string(name, presence)?;
        match parse(&raw) {
            Ok(value) => Some(value),
            Err(error) => {
                self.error(name, error.to_string());
                None
            }
        }
    }

    /// An RFC 3339 timestamp member with an explicit offset, converted to UTC
    /// and truncated to microseconds (what every store keeps).
    pub fn timestamp(&mut self, name: &str, presence: Presence) -> Option<DateTime<Utc>> {
        self.parsed(name, presence, |raw| {
            DateTime::parse_from_rfc3339(raw)
                .map(|at| truncate_to_micros(at.with_timezone(&Utc)))
                .map_err(|_| {
                    format!(
                        "{raw:?} is not an RFC 3339 timestamp with an offset, e.g. 2025-07-20T10:00:00Z"
                    )
                })
        })
    }

    /// A JSON object member.
    pub fn object(&mut self, name: &str, presence: Presence) -> Option<Value> {
        match self.take(name, presence)? {
            value @ Value::Object(_) => Some(value),
            other => {
                self.error(
                    name,
                    format!("must be a JSON object, not {}", json_type(&other)),
                );
                None
            }
        }
    }

    /// A non-negative integer member that fits in `u32`.
    pub fn u32(&mut self, name: &str, presence: Presence) -> Option<u32> {
        let value = self.take(name, presence)?;
        match value.as_u64().map(u32::try_from) {
            Some(Ok(number)) => Some(number),
            _ => {
                let got = if value.is_number() {
                    value.to_string()
                } else {
                    json_type(&value).to_owned()
                };
                self.error(
                    name,
                    format!("must be a whole number from 0 to {}, not {got}", u32::MAX),
                );
                None
            }
        }
    }

    /// Ok when no member was wrong.
    ///
    /// # Errors
    /// [`ApiError::Invalid`] naming every field at fault.
    pub fn finish(self) -> Result<(), ApiError> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ApiError::Invalid(self.errors))
        }
    }
}
