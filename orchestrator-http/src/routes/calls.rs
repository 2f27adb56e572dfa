//! Handlers of the `/calls` resource, and the request bodies they read.
//!
//! Bodies are serde structs ([`CreateCallRequest`], [`UpdateCallRequest`])
//! converted into core types with `TryFrom`, which names every field at
//! fault. Unknown members are rejected with 400 naming them, because a
//! misspelt optional field (say `notbefore`) would otherwise be dropped
//! silently and the call dialled at once. `null` stands for "absent" in
//! `POST` bodies; in `PATCH` bodies it is refused (leave a field out to keep
//! it). Unknown query parameters of `GET /calls` are rejected the same way.

use axum::extract::State;
use axum::http::header::LOCATION;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use orchestrator_core::store::{Created, ListFilter, ListQuery};
use orchestrator_core::{
    Call, CallPatch, CallPayload, CallStatus, CallbackUrl, IdempotencyKey, Metadata, NewCall,
    PhoneNumber, ScriptId,
};
use serde::Deserialize;

use crate::extract::{CallIdPath, JsonBody, Member, QueryPairs, Timestamp, UnknownMembers};
use crate::problem::{ApiError, FieldError};
use crate::state::AppState;
use crate::telemetry::record_call_id;

/// The request header carrying a client's idempotency key.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// The response header set on a `POST /calls` that returned an existing call.
pub const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";

const LIST_PARAMETERS: [&str; 7] = [
    "status",
    "to",
    "scriptId",
    "createdFrom",
    "createdTo",
    "page",
    "pageSize",
];

/// The body of `POST /calls`: `{to, scriptId, metadata?, notBefore?,
/// expiresAt?, callbackUrl?}`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase", expecting = "a JSON object")]
pub struct CreateCallRequest {
    /// The callee, any spelling of an international number.
    to: Member<PhoneNumber>,
    /// The provider's script / flow.
    script_id: Member<ScriptId>,
    /// A JSON object passed through to the provider.
    metadata: Member<Metadata>,
    /// Do not dial before this instant (RFC 3339).
    not_before: Member<Timestamp>,
    /// Not dialled by this instant → `EXPIRED` (RFC 3339).
    expires_at: Member<Timestamp>,
    /// Where the call's terminal event is POSTed (http or https).
    callback_url: Member<CallbackUrl>,
    #[serde(flatten)]
    unknown: UnknownMembers,
}

impl CreateCallRequest {
    /// The members, by wire name.
    pub const FIELDS: [&'static str; 6] = [
        "to",
        "scriptId",
        "metadata",
        "notBefore",
        "expiresAt",
        "callbackUrl",
    ];
}

impl TryFrom<CreateCallRequest> for NewCall {
    type Error = Vec<FieldError>;

    /// The new call, without an idempotency key (that is a header).
    fn try_from(request: CreateCallRequest) -> Result<Self, Self::Error> {
        let mut errors = Vec::new();
        request
            .unknown
            .report(&CreateCallRequest::FIELDS, &mut errors);
        let to = request.to.required("to", &mut errors);
        let script_id = request.script_id.required("scriptId", &mut errors);
        let metadata = request.metadata.optional("metadata", &mut errors);
        let not_before = request.not_before.optional("notBefore", &mut errors);
        let expires_at = request.expires_at.optional("expiresAt", &mut errors);
        let callback_url = request
            .callback_url
            .optional(CallbackUrl::FIELD, &mut errors);
        match (to, script_id) {
            (Some(to), Some(script_id)) if errors.is_empty() => Ok(NewCall {
                payload: CallPayload {
                    to,
                    script_id,
                    metadata,
                },
                not_before: not_before.map(|at| at.0),
                expires_at: expires_at.map(|at| at.0),
                idempotency_key: None,
                callback_url,
                retry_of: None,
            }),
            _ => Err(errors),
        }
    }
}

/// The body of `PATCH /calls/{id}`: `{to?, scriptId?, metadata?,
/// notBefore?, expiresAt?}`; members left out keep their value, and
/// `notBefore` or `expiresAt` set to `null` clear it.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase", expecting = "a JSON object")]
pub struct UpdateCallRequest {
    /// The new callee.
    to: Member<PhoneNumber>,
    /// The new script.
    script_id: Member<ScriptId>,
    /// The new metadata, replacing the old whole.
    metadata: Member<Metadata>,
    /// The new `notBefore`, or `null`: dial as soon as possible.
    not_before: Member<Timestamp>,
    /// The new `expiresAt`, or `null`: no deadline.
    expires_at: Member<Timestamp>,
    #[serde(flatten)]
    unknown: UnknownMembers,
}

impl UpdateCallRequest {
    /// The members, by wire name.
    pub const FIELDS: [&'static str; 5] = ["to", "scriptId", "metadata", "notBefore", "expiresAt"];
}

impl TryFrom<UpdateCallRequest> for CallPatch {
    type Error = Vec<FieldError>;

    fn try_from(request: UpdateCallRequest) -> Result<Self, Self::Error> {
        let mut errors = Vec::new();
        request
            .unknown
            .report(&UpdateCallRequest::FIELDS, &mut errors);
        let patch = CallPatch {
            to: request.to.optional_not_null("to", &mut errors),
            script_id: request.script_id.optional_not_null("scriptId", &mut errors),
            metadata: request.metadata.optional_not_null("metadata", &mut errors),
            not_before: request
                .not_before
                .nullable("notBefore", &mut errors)
                .map(|at| at.map(|at| at.0)),
            expires_at: request
                .expires_at
                .nullable("expiresAt", &mut errors)
                .map(|at| at.map(|at| at.0)),
        };
        if errors.is_empty() {
            Ok(patch)
        } else {
            Err(errors)
        }
    }
}

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
    JsonBody(request): JsonBody<CreateCallRequest>,
) -> Result<Response, ApiError> {
    let new = match (idempotency_key(&headers), NewCall::try_from(request)) {
        (Ok(idempotency_key), Ok(new)) => NewCall {
            idempotency_key,
            ..new
        },
        (key, new) => {
            let mut errors: Vec<FieldError> = key.err().into_iter().collect();
            errors.extend(new.err().into_iter().flatten());
            return Err(ApiError::Invalid(errors));
        }
    };
    let created = state.engine().create_call(new.clone()).await?;
    let call = &created.call;
    record_call_id(call.id);
    if !created.created && !same_request(call, &new) {
        return Err(ApiError::IdempotencyKeyReused(format!(
            "this Idempotency-Key was first used for call {} with a different payload; use a new key for a new call",
            call.id
        )));
    }
    Ok(created_response(&created))
}

/// 201 with the call, `Location: /calls/{id}`, and `Idempotent-Replayed:
/// true` when the call was created by an earlier request with the same key.
pub(crate) fn created_response(created: &Created) -> Response {
    let call = &created.call;
    let mut response = (StatusCode::CREATED, Json(call)).into_response();
    let headers = response.headers_mut();
    if let Ok(location) = HeaderValue::from_str(&format!("/calls/{}", call.id)) {
        headers.insert(LOCATION, location);
    }
    if !created.created {
        headers.insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    }
    response
}

/// The optional `Idempotency-Key` header.
pub(crate) fn idempotency_key(headers: &HeaderMap) -> Result<Option<IdempotencyKey>, FieldError> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    // Bytes that are not visible ASCII are refused by the key's own rule.
    let raw = String::from_utf8_lossy(value.as_bytes());
    IdempotencyKey::parse(raw)
        .map(Some)
        .map_err(FieldError::from)
}

/// Whether an idempotent repeat asked for what the first request did. Only
/// what the client sent is compared: a pending TTL may have filled in
/// `expiresAt`, and `CALLBACK_URL` the `callbackUrl`. A key first used to
/// retry a call is a different request.
fn same_request(first: &Call, repeat: &NewCall) -> bool {
    first.retry_of.is_none()
        && first.payload == repeat.payload
        && first.not_before == repeat.not_before
        && repeat
            .expires_at
            .is_none_or(|expires_at| first.expires_at == Some(expires_at))
        && repeat
            .callback_url
            .as_ref()
            .is_none_or(|url| first.callback_url.as_ref() == Some(url))
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
    Ok(Json(state.engine().get_call(id).await?))
}

/// `PATCH /calls/{id}`: replaces `to`, `scriptId`, `metadata`, `notBefore`
/// and/or `expiresAt` of a `PENDING` call (members left out keep their
/// value; `metadata` is replaced whole; `notBefore` and `expiresAt` may be
/// `null` to clear them). The rules at creation apply to the result (e.g.
/// `expiresAt` in the future and after `notBefore`). `{}` changes nothing
/// and answers the call.
///
/// # Errors
/// 400 naming the fields at fault; 404; 409 when the call is not `PENDING`; 415; 503.
pub async fn update(
    State(state): State<AppState>,
    CallIdPath(id): CallIdPath,
    JsonBody(request): JsonBody<UpdateCallRequest>,
) -> Result<Json<Call>, ApiError> {
    record_call_id(id);
    let patch = CallPatch::try_from(request).map_err(ApiError::Invalid)?;
    Ok(Json(state.engine().update_call(id, &patch).await?))
}

/// `GET /calls?status=S&to=N&scriptId=X&createdFrom=T&createdTo=T&page=P&pageSize=N`:
/// calls newest first, optionally filtered by status, number (any accepted
/// spelling, compared canonical), script and creation time (`createdFrom`
/// inclusive, `createdTo` exclusive, RFC 3339); `page` from 1 (default 1),
/// `pageSize` 1 to 100 (default 20).
///
/// # Errors
/// 400 naming the parameter at fault (unknown status, a number no plan
/// allows, a bad timestamp, `createdTo` not after `createdFrom`, page 0,
/// pageSize out of range, unknown parameter); 503.
pub async fn list(
    State(state): State<AppState>,
    query: QueryPairs,
) -> Result<Json<orchestrator_core::store::Page>, ApiError> {
    let list_query = list_query(&query)?;
    Ok(Json(state.engine().list_calls(&list_query).await?))
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
    // Each parameter is parsed by its core type, whose message names the rule.
    let filter = ListFilter {
        status: parameter(query, "status", &mut errors, |raw| {
            raw.parse::<CallStatus>().map_err(|e| e.to_string())
        }),
        to: parameter(query, "to", &mut errors, |raw| {
            PhoneNumber::parse(raw).map_err(|e| e.to_string())
        }),
        script_id: parameter(query, "scriptId", &mut errors, |raw| {
            ScriptId::parse(raw).map_err(|e| e.message)
        }),
        created_from: parameter(query, "createdFrom", &mut errors, |raw| {
            Timestamp::parse(raw).map(|at| at.0)
        }),
        created_to: parameter(query, "createdTo", &mut errors, |raw| {
            Timestamp::parse(raw).map(|at| at.0)
        }),
    };
    let page = parameter(query, "page", &mut errors, whole_number);
    let page_size = parameter(query, "pageSize", &mut errors, whole_number);
    match ListQuery::new(filter, page, page_size) {
        Ok(list) if errors.is_empty() => Ok(list),
        Ok(_) => Err(ApiError::Invalid(errors)),
        Err(invalid) => {
            errors.extend(invalid.into_iter().map(FieldError::from));
            Err(ApiError::Invalid(errors))
        }
    }
}

/// Query parameter `name` read by `read`, if given; a wrong value is
/// recorded in `errors` under `name`.
fn parameter<T>(
    query: &QueryPairs,
    name: &str,
    errors: &mut Vec<FieldError>,
    read: impl FnOnce(&str) -> Result<T, String>,
) -> Option<T> {
    let raw = query.get(name)?;
    read(raw)
        .map_err(|message| errors.push(FieldError::new(name, message)))
        .ok()
}

fn whole_number(raw: &str) -> Result<u32, String> {
    raw.parse::<u32>()
        .map_err(|_| format!("must be a whole number, not {raw:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The field names listed in errors about unknown members are the ones serde reads.
    fn declared_fields_are_known<T>(fields: &[&str], convert: impl Fn(T) -> Vec<FieldError>)
    where
        T: serde::de::DeserializeOwned,
    {
        let body: serde_json::Map<String, serde_json::Value> = fields
            .iter()
            .map(|name| ((*name).to_owned(), serde_json::json!(["wrong"])))
            .collect();
        let request: T = serde_json::from_value(body.into()).expect("an object");
        let mut named: Vec<String> = convert(request)
            .into_iter()
            .map(|error| error.field)
            .collect();
        named.sort();
        let mut expected: Vec<String> = fields.iter().map(|name| (*name).to_owned()).collect();
        expected.sort();
        assert_eq!(
            named, expected,
            "each declared field is read, and reported once"
        );
    }

    #[test]
    fn create_fields_are_the_ones_read() {
        declared_fields_are_known(&CreateCallRequest::FIELDS, |request: CreateCallRequest| {
            NewCall::try_from(request).expect_err("all wrong")
        });
    }

    #[test]
    fn update_fields_are_the_ones_read() {
        declared_fields_are_known(&UpdateCallRequest::FIELDS, |request: UpdateCallRequest| {
            CallPatch::try_from(request).expect_err("all wrong")
        });
    }

    #[test]
    fn an_empty_patch_changes_nothing() {
        let request: UpdateCallRequest = serde_json::from_str("{}").expect("an object");
        assert_eq!(CallPatch::try_from(request), Ok(CallPatch::default()));
    }
}
