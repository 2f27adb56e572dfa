//! Request extractors and the pieces request types are declared with. Every
//! rejection is an [`ApiError`], so axum's plain-text rejections never reach
//! a client.
//!
//! A JSON body is declared as a serde struct whose members are [`Member`]s:
//! a member whose value is wrong does not stop the others being read, so one
//! answer names every field at fault. Members the struct does not declare
//! are collected in [`UnknownMembers`] and reported, each by name (serde's
//! `deny_unknown_fields` would stop at the first). The struct then converts
//! into core types with `TryFrom`; each value was already checked by its core
//! type's `Deserialize`, so no rule is written twice.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use chrono::{DateTime, Utc};
use orchestrator_core::clock::truncate_to_micros;
use orchestrator_core::CallId;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Deserializer};
use serde_json::error::Category;

use crate::problem::{ApiError, FieldError};
use crate::state::AppState;

/// The raw request body, within the route's size limit.
#[derive(Debug)]
pub struct RawBody(pub Bytes);

/// The body limit of the route a request is for, in bytes: set by the
/// router next to the limit layer, so a refusal names the limit that applied.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BodyLimit(pub(crate) usize);

impl FromRequest<AppState> for RawBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let limit = request
            .extensions()
            .get::<BodyLimit>()
            .map_or(state.limits().body_bytes, |limit| limit.0);
        Bytes::from_request(request, state)
            .await
            .map(RawBody)
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::PayloadTooLarge(limit)
                } else {
                    ApiError::MalformedBody(format!(
                        "the request body could not be read: {}",
                        rejection.body_text()
                    ))
                }
            })
    }
}

/// A JSON body read into `T`, sent as `application/json` (or any
/// `application/*+json`, e.g. `application/merge-patch+json` for PATCH).
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        if !is_json(request.headers()) {
            return Err(ApiError::UnsupportedMediaType(
                "send the body as JSON with Content-Type: application/json".to_owned(),
            ));
        }
        let RawBody(bytes) = RawBody::from_request(request, state).await?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// An optional JSON body: `None` for an empty body (any or no
/// `Content-Type`), otherwise read as [`JsonBody`] reads it.
#[derive(Debug)]
pub struct OptionalJsonBody<T>(pub Option<T>);

impl<T: DeserializeOwned> FromRequest<AppState> for OptionalJsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let json = is_json(request.headers());
        let RawBody(bytes) = RawBody::from_request(request, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJsonBody(None));
        }
        if !json {
            return Err(ApiError::UnsupportedMediaType(
                "send the body as JSON with Content-Type: application/json, or no body".to_owned(),
            ));
        }
        parse_json(&bytes).map(|value| OptionalJsonBody(Some(value)))
    }
}

/// Reads `bytes` as one JSON value of type `T`.
///
/// # Errors
/// [`ApiError::MalformedBody`] when `bytes` are not JSON (with serde's
/// position of the error) or not the shape `T` expects at the top (e.g. an
/// array where an object is expected); [`ApiError::Invalid`] naming the path
/// of a value of the wrong type below the top (e.g. `metadata`).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // serde_json stops at 128 levels of nesting, so hostile input cannot
    // exhaust the stack.
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let (path, error) = match serde_path_to_error::deserialize(&mut deserializer) {
        Ok(value) => match deserializer.end() {
            Ok(()) => return Ok(value),
            Err(trailing) => (String::new(), trailing),
        },
        Err(error) => (error.path().to_string(), error.into_inner()),
    };
    Err(match error.classify() {
        Category::Data if !path.is_empty() && path != "." => {
            ApiError::invalid(path, error.to_string())
        }
        Category::Data => {
            ApiError::MalformedBody(format!("the body is not the JSON expected: {error}"))
        }
        Category::Syntax | Category::Eof | Category::Io => {
            ApiError::MalformedBody(format!("the body is not valid JSON: {error}"))
        }
    })
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

/// One member of a JSON object in a request, read so that a wrong value
/// does not stop the other members being read. `T` is usually a core type
/// whose `Deserialize` checks its rule, so the message is the rule's.
///
/// Declare the struct `#[serde(default)]`, so a member left out is
/// [`Member::Absent`].
#[derive(Debug, Default, PartialEq)]
pub enum Member<T> {
    /// Not in the object.
    #[default]
    Absent,
    /// Present as `null`.
    Null,
    /// Present and valid.
    Valid(T),
    /// Present but not a valid `T`: what is wrong.
    Invalid(String),
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Member<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(deserializer)?;
        if value.is_null() {
            return Ok(Member::Null);
        }
        Ok(match T::deserialize(value) {
            Ok(valid) => Member::Valid(valid),
            Err(error) => Member::Invalid(error.to_string()),
        })
    }
}

impl<T> Member<T> {
    /// The value of a member that must be present and not `null`; otherwise
    /// records why in `errors` under `name`.
    pub fn required(self, name: &str, errors: &mut Vec<FieldError>) -> Option<T> {
        match self {
            Member::Absent | Member::Null => {
                errors.push(FieldError::new(name, "is required"));
                None
            }
            other => other.optional(name, errors),
        }
    }

    /// The value of a member that may be left out; `null` counts as left out.
    /// A wrong value is recorded in `errors` under `name`.
    pub fn optional(self, name: &str, errors: &mut Vec<FieldError>) -> Option<T> {
        match self {
            Member::Absent | Member::Null => None,
            Member::Valid(value) => Some(value),
            Member::Invalid(message) => {
                errors.push(FieldError::new(name, message));
                None
            }
        }
    }

    /// The value of a member that may be left out but not be `null`: in a
    /// PATCH, a member left out keeps its value, and a required field cannot
    /// be cleared. A `null` or wrong value is recorded in `errors` under `name`.
    pub fn optional_not_null(self, name: &str, errors: &mut Vec<FieldError>) -> Option<T> {
        match self {
            Member::Null => {
                errors.push(FieldError::new(
                    name,
                    "must not be null; leave it out to keep the current value",
                ));
                None
            }
            other => other.optional(name, errors),
        }
    }

    /// The value of a member that may be left out (`None`: keep the current
    /// value) or `null` (`Some(None)`: clear it), as a PATCH reads an
    /// optional field. A wrong value is recorded in `errors` under `name`.
    #[allow(clippy::option_option)] // absent, null and a value are three requests
    pub fn nullable(self, name: &str, errors: &mut Vec<FieldError>) -> Option<Option<T>> {
        match self {
            Member::Absent => None,
            Member::Null => Some(None),
            Member::Valid(value) => Some(Some(value)),
            Member::Invalid(message) => {
                errors.push(FieldError::new(name, message));
                None
            }
        }
    }
}

/// The members of a JSON object that its request type does not declare, by
/// name. Declared as `#[serde(flatten)] unknown: UnknownMembers`.
#[derive(Debug, Default, Deserialize)]
#[serde(transparent)]
pub struct UnknownMembers(BTreeMap<String, IgnoredAny>);

impl UnknownMembers {
    /// Records one error per unknown member, in name order, listing the `known` ones.
    pub fn report(self, known: &[&str], errors: &mut Vec<FieldError>) {
        for name in self.0.into_keys() {
            errors.push(FieldError::new(
                name,
                format!("is not a known field; expected {}", known.join(", ")),
            ));
        }
    }
}

/// An RFC 3339 timestamp with an explicit offset (`2025-07-20T10:00:00Z`,
/// `...+03:00`), converted to UTC and truncated to microseconds (what every
/// store keeps).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timestamp(pub DateTime<Utc>);

impl Timestamp {
    /// Parses `raw` (in a body or a query parameter).
    ///
    /// # Errors
    /// What is expected, quoting `raw`.
    pub fn parse(raw: &str) -> Result<Self, String> {
        DateTime::parse_from_rfc3339(raw)
            .map(|at| Timestamp(truncate_to_micros(at.with_timezone(&Utc))))
            .map_err(|_| {
                format!(
                    "{raw:?} is not an RFC 3339 timestamp with an offset, e.g. 2025-07-20T10:00:00Z"
                )
            })
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        Timestamp::parse(&raw).map_err(serde::de::Error::custom)
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
