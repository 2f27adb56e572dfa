//! Handlers of the `/calls` resource.
//!
//! Bodies are read field by field ([`Fields`]): unknown members are
//! rejected with 400 naming them, because a misspelt optional field (say
//! `notbefore`) would otherwise be dropped silently and the call dialled at
//! once. `null` stands for "absent" in `POST` bodies; in `PATCH` bodies it
//! is refused (leave a field out to keep it). Unknown query parameters of
//! `GET /calls` are rejected the same way.

use axum::extract::State;
use axum::http::header::LOCATION;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use orchestrator_core::store::ListQuery;
use orchestrator_core::validate::{validate_patch, MAX_IDEMPOTENCY_KEY_CHARS};
use orchestrator_core::{Call, CallPayload, CallStatus, NewCall, PayloadPatch, PhoneNumber};

use crate::extract::{CallIdPath, Fields, JsonObject, Presence, QueryPairs};
use crate::problem::{ApiError, FieldError};
use crate::state::AppState;
use crate::telemetry::record_call_id;

/// The request header carrying a client's idempotency key.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// The response header set on a `POST /calls` that returned an existing call.
pub const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";

const CREATE_FIELDS: [&str; 5] = ["to", "scriptId", "metadata", "notBefore", "expiresAt"];
const PATCH_FIELDS: [&str; 3] = ["to", "scriptId", "metadata"];
const LIST_PARAMETERS: [&str; 3] = ["status", "page", "pageSize"];

/// `POST /calls`: stores a `PENDING` call and answers 201 with it at once
/// (the engine dials later). With an `Idempotency-Key` seen before, answers
/// 201 with the first call and `Idempotent-Replayed: true`; reusing a key
/// with a different payload is 422, as the IETF httpapi Idempotency-Key
/// draft recommends.
///
/// # Errors
/// 400 naming the fields at fault; 415 when not JSON; 413; 422; 503.
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonObject(body): JsonObject,
) -> Result<Response, ApiError> {
    let mut fields = Fields::new(body);
    let idempotency_key = idempotency_key(&headers, &mut fields);
    fields.reject_unknown(&CREATE_FIELDS);
    let to = fields.parsed("to", Presence::Required, PhoneNumber::parse);
    let script_id = fields.string("scriptId", Presence::Required);
    let metadata = fields.object("metadata", Presence::Optional);
    let not_before = fields.timestamp("notBefore", Presence::Optional);
    let expires_at = fields.timestamp("expiresAt", Presence::Optional);
    check_with_core_rules(&mut fields, script_id.as_deref(), metadata.as_ref());
    fields.finish()?;
    let (Some(to), Some(script_id)) = (to, script_id) else {
        // `finish` has refused a missing `to` or `scriptId` already.
        return Err(ApiError::invalid("to", "is required"));
    };
    let new = NewCall {
        payload: CallPayload {
            to,
            script_id,
            metadata,
        },
        not_before,
        expires_at,
        idempotency_key,
    };
    let created = state.orchestrator().create_call(new.clone()).await?;
    let call = created.call;
    record_call_id(call.id);
    if !created.created && !same_request(&call, &new) {
        return Err(ApiError::IdempotencyKeyReused(format!(
            "this Idempotency-Key was first used for call {} with a different payload; use a new key for a new call",
            call.id
        )));
    }
    let mut response = (StatusCode::CREATED, Json(&call)).into_response();
    let headers = response.headers_mut();
    if let Ok(location) = HeaderValue::from_str(&format!("/calls/{}", call.id)) {
        headers.insert(LOCATION, location);
    }
    if !created.created {
        headers.insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// Applies the core's rules for `scriptId` and `metadata` now, field by
/// field, so that one answer names every field at fault (the engine stops
/// at the first); the engine checks them again, so the rules live in one place.
fn check_with_core_rules(
    fields: &mut Fields,
    script_id: Option<&str>,
    metadata: Option<&serde_json::Value>,
) {
    let one_field = [
        PayloadPatch {
            script_id: script_id.map(str::to_owned),
            ..PayloadPatch::default()
        },
        PayloadPatch {
            metadata: metadata.cloned(),
            ..PayloadPatch::default()
        },
    ];
    for patch in one_field {
        if let Err(invalid) = validate_patch(&patch) {
            fields.error(invalid.field, invalid.message);
        }
    }
}

/// Reads the optional `Idempotency-Key` header, recording an error in `fields`
/// when it is not 1 to 255 visible ASCII characters.
fn idempotency_key(headers: &HeaderMap, fields: &mut Fields) -> Option<String> {
    let value = headers.get(IDEMPOTENCY_KEY)?;
    let key = value
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|key| !key.is_empty() && key.len() <= MAX_IDEMPOTENCY_KEY_CHARS);
    if key.is_none() {
        fields.error(
            "Idempotency-Key",
            format!("must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} visible ASCII characters"),
        );
    }
    key.map(str::to_owned)
}

/// Whether an idempotent repeat asked for what the first request did. Only
/// what the client sent is compared: a pending TTL may have filled in `expiresAt`.
fn same_request(first: &Call, repeat: &NewCall) -> bool {
    first.payload == repeat.payload
        && first.not_before == repeat.not_before
        && repeat
            .expires_at
            .is_none_or(|expires_at| first.expires_at == Some(expires_at))
}

/// `GET /calls/{id}`: one call.
///
/// # Errors
/// 400 for an id that is not a UUID; 404; 503.
pub async fn get(
    State(state): State<AppState>,
    CallIdPath(id): CallIdPath,
) -> Result<Json<Call>, ApiError> {
    record_call_id(id);
    Ok(Json(state.orchestrator().get_call(id).await?))
}

/// `PATCH /calls/{id}`: replaces `to`, `scriptId` and/or `metadata` of a
/// `PENDING` call (members left out keep their value; `metadata` is replaced
/// whole). `{}` changes nothing and answers the call.
///
/// # Errors
/// 400 naming the fields at fault; 404; 409 when the call is not `PENDING`; 415; 503.
pub async fn update(
    State(state): State<AppState>,
    CallIdPath(id): CallIdPath,
    JsonObject(body): JsonObject,
) -> Result<Json<Call>, ApiError> {
    record_call_id(id);
    let mut fields = Fields::new(body);
    fields.reject_unknown(&PATCH_FIELDS);
    let patch = PayloadPatch {
        to: fields.parsed("to", Presence::OptionalNotNull, PhoneNumber::parse),
        script_id: fields.string("scriptId", Presence::OptionalNotNull),
        metadata: fields.object("metadata", Presence::OptionalNotNull),
    };
    check_with_core_rules(
        &mut fields,
        patch.script_id.as_deref(),
        patch.metadata.as_ref(),
    );
    fields.finish()?;
    Ok(Json(state.orchestrator().update_call(id, &patch).await?))
}

/// `GET /calls?status=S&page=P&pageSize=N`: calls newest first, optionally
/// filtered by status; `page` from 1 (default 1), `pageSize` 1 to 100 (default 20).
///
/// # Errors
/// 400 naming the parameter at fault (unknown status, page 0, pageSize out
/// of range, unknown parameter); 503.
pub async fn list(
    State(state): State<AppState>,
    query: QueryPairs,
) -> Result<Json<orchestrator_core::store::Page>, ApiError> {
    let list_query = list_query(&query)?;
    Ok(Json(state.orchestrator().list_calls(&list_query).await?))
}

fn list_query(query: &QueryPairs) -> Result<ListQuery, ApiError> {
    let mut errors = Vec::new();
    for (name, _) in &query.0 {
        if !LIST_PARAMETERS.contains(&name.as_str()) {
            errors.push(FieldError::new(
                name.clone(),
                format!(
                    "is not a known parameter; expected {}",
                    LIST_PARAMETERS.join(", ")
                ),
            ));
        }
    }
    let mut list = ListQuery::default();
    if let Some(raw) = query.get("status") {
        match raw.parse::<CallStatus>() {
            Ok(status) => list.status = Some(status),
            Err(error) => errors.push(FieldError::new("status", error.to_string())),
        }
    }
    if let Some(raw) = query.get("page") {
        match raw.parse::<u32>() {
            Ok(page) if page >= 1 => list.page = page,
            _ => errors.push(FieldError::new(
                "page",
                format!("must be a whole number of at least 1, not {raw:?}"),
            )),
        }
    }
    if let Some(raw) = query.get("pageSize") {
        match raw.parse::<u32>() {
            Ok(size) if (1..=ListQuery::MAX_PAGE_SIZE).contains(&size) => list.page_size = size,
            _ => errors.push(FieldError::new(
                "pageSize",
                format!(
                    "must be a whole number from 1 to {}, not {raw:?}",
                    ListQuery::MAX_PAGE_SIZE
                ),
            )),
        }
    }
    if errors.is_empty() {
        Ok(list)
    } else {
        Err(ApiError::Invalid(errors))
    }
}
