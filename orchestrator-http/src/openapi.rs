//! The OpenAPI 3.1 document of the API, generated with `utoipa` from the
//! types the API reads and writes, and served at `GET /openapi.json`.
//!
//! Each operation of [`routes::operations`](crate::routes::operations) is
//! described here by a `#[utoipa::path]` item; the tests check that the two
//! lists agree and that the document validates against the OpenAPI 3.1 schema.
//! Which operations require an API key is taken from that list too
//! ([`Access`]): each gets the `apiKey` bearer security requirement and its
//! 401 answer from it, so the document cannot disagree with the router.
//! The document's description is `API.md`, the API reference.

use axum::http::Method;
use chrono::{DateTime, Utc};
use orchestrator_core::{
    Attempt, AttemptOutcome, Call, CallId, CallPayload, CallStatus, CallbackState, CallbackStatus,
    Event, EventId, EventType, Page, ReportedStatus,
};
use serde::Deserialize;
use utoipa::openapi::content::Content;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::{Object, Ref, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::{IntoParams, Modify, OpenApi, ToSchema};

use crate::problem::{FieldError, Problem};
use crate::routes::Access;

/// The OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Call orchestrator API",
        description = include_str!("../API.md"),
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    servers(
        (url = "/", description = "Canonical paths."),
        (url = "/api/v1", description = "The same routes, for compatibility."),
    ),
    paths(
        create_call,
        list_calls,
        get_call,
        update_call,
        cancel_call,
        retry_call,
        list_attempts,
        events,
        call_status,
        crate::platforms::retell::openapi::retell_webhook,
        vapi_callback,
        metrics,
        health,
        ready,
        openapi,
    ),
    components(schemas(
        crate::platforms::retell::openapi::RetellWebhookBody,
        crate::platforms::retell::openapi::RetellCallObject,
        crate::platforms::retell::openapi::RetellWebhookAnswer,
        Call,
        CallId,
        CallPayload,
        CallStatus,
        CallbackStatus,
        CallbackState,
        Page,
        StatusCounts,
        NewCallBody,
        CallPatchBody,
        CancelBody,
        Attempt,
        AttemptOutcome,
        AttemptList,
        Event,
        EventId,
        EventType,
        WebhookBody,
        ReportedStatus,
        WebhookAnswer,
        WebhookOutcome,
        Health,
        Problem,
        FieldError,
    )),
    modifiers(&ApiKeySecurity),
    tags(
        (name = "calls", description = "Calls to place: create, read, change, list, cancel, retry."),
        (name = "events", description = "Every change of a call's status, live."),
        (name = "provider", description = "What the AI-call provider sends us."),
        (name = "operations", description = "Health, readiness, metrics, this document."),
    ),
)]
#[derive(Debug)]
pub struct ApiDoc;

/// Adds the `apiKey` security scheme, and to every operation that requires
/// a key ([`Access::ApiKey`]) the security requirement and the 401 answer.
struct ApiKeySecurity;

/// The name of the bearer security scheme in the document.
const API_KEY_SCHEME: &str = "apiKey";

impl Modify for ApiKeySecurity {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            API_KEY_SCHEME,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "One of the server's API keys (`API_KEYS`), required when it has any.",
                    ))
                    .build(),
            ),
        );
        let unauthenticated = ResponseBuilder::new()
            .description(
                "No API key, or a wrong one, while the server requires one; `errors` names `Authorization`.",
            )
            .content(
                PROBLEM_JSON,
                Content::new(Some(Ref::from_schema_name("Problem"))),
            )
            .header(
                "WWW-Authenticate",
                HeaderBuilder::new()
                    .schema(Object::with_type(Type::String))
                    .description(Some(
                        "`Bearer realm=\"orchestrator\"`, with `error=\"invalid_token\"` for a wrong key.",
                    ))
                    .build(),
            )
            .build();
        for operation in crate::routes::operations() {
            if operation.access() != Access::ApiKey {
                continue;
            }
            let Some(item) = openapi.paths.paths.get_mut(operation.path()) else {
                continue;
            };
            let documented = match operation.method() {
                Method::GET => item.get.as_mut(),
                Method::POST => item.post.as_mut(),
                Method::PATCH => item.patch.as_mut(),
                _ => None,
            };
            if let Some(documented) = documented {
                documented.security = Some(vec![SecurityRequirement::new(
                    API_KEY_SCHEME,
                    Vec::<String>::new(),
                )]);
                documented
                    .responses
                    .responses
                    .insert("401".to_owned(), unauthenticated.clone().into());
            }
        }
    }
}

/// The OpenAPI document.
#[must_use]
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// The document, serialised.
pub(crate) fn document_json() -> Vec<u8> {
    // Serialising a document of plain data cannot fail; an empty body would
    // fail the tests that parse it.
    serde_json::to_vec(&document()).unwrap_or_default()
}

const PROBLEM_JSON: &str = crate::problem::PROBLEM_JSON;

/// The body of `POST /calls`. `null` stands for an absent member.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(as = NewCall)]
#[allow(dead_code)] // Only its schema is used.
struct NewCallBody {
    /// The number to call, in E.164 form: `+`, the country code, the
    /// subscriber number; spaces, `-`, `.`, `(` and `)` are ignored.
    #[schema(example = "+966501234567")]
    to: String,
    /// The call script / flow at the provider: 1 to 256 characters, no
    /// control characters.
    #[schema(example = "welcomeFlow")]
    script_id: String,
    /// Free-form JSON object passed to the provider untouched, at most 16 KiB.
    #[schema(value_type = Option<Object>)]
    metadata: Option<serde_json::Value>,
    /// Do not dial before this instant.
    not_before: Option<DateTime<Utc>>,
    /// Not dialled by this instant: the call becomes `EXPIRED`. Must be in
    /// the future and after `notBefore`.
    expires_at: Option<DateTime<Utc>>,
    /// Where the call's terminal event is POSTed (an `http` or `https` URL
    /// with a host and no credentials, at most 2048 bytes); the server's
    /// `CALLBACK_URL` when absent.
    #[schema(example = "https://crm.example.com/hooks/calls")]
    callback_url: Option<String>,
}

/// The body of `PATCH /calls/{id}`: the members to replace; members left out
/// keep their value, `metadata` is replaced whole. `null` clears `notBefore`
/// or `expiresAt` and is refused for the others. The rules at creation apply
/// to the result. `{}` changes nothing.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(as = CallPatch)]
#[allow(dead_code)] // Only its schema is used.
struct CallPatchBody {
    /// The number to call, as in `POST /calls`.
    #[serde(default)]
    #[schema(example = "+966501234567")]
    to: String,
    /// The call script, as in `POST /calls`.
    #[serde(default)]
    script_id: String,
    /// The new metadata, as in `POST /calls`.
    #[serde(default)]
    #[schema(value_type = Object)]
    metadata: serde_json::Map<String, serde_json::Value>,
    /// Do not dial before this instant; `null`: as soon as possible.
    #[serde(default)]
    not_before: Option<DateTime<Utc>>,
    /// Not dialled by this instant: `EXPIRED`; `null`: no deadline (unless
    /// the server has a pending TTL, which is not re-applied).
    #[serde(default)]
    expires_at: Option<DateTime<Utc>>,
}

/// The optional body of `POST /calls/{id}/cancel`. No body at all is the
/// same as `{}`.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(as = CancelRequest)]
#[allow(dead_code)] // Only its schema is used.
struct CancelBody {
    /// Why; the call's `lastError` once it ends `CANCELED` (default
    /// `"canceled"`): 1 to 500 characters, not blank, no control characters.
    #[schema(example = "the callee asked not to be called")]
    reason: Option<String>,
}

/// The dials of a call.
#[derive(ToSchema)]
#[allow(dead_code)] // Only its schema is used.
struct AttemptList {
    /// Every dial, in dial order; empty before the first.
    items: Vec<Attempt>,
}

/// The provider's report of how a call ended. Unknown members are ignored.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = CallStatusReport)]
#[allow(dead_code)] // Only its schema is used.
struct WebhookBody {
    /// The provider's id of the call, as it answered our dial request:
    /// 1 to 512 characters, no control characters.
    #[schema(example = "prov-8f14e45f")]
    call_id: String,
    /// How the call ended.
    status: ReportedStatus,
    /// How long the call lasted, in seconds.
    #[schema(minimum = 0, maximum = 4_294_967_295_u64)]
    duration_sec: Option<u64>,
    /// When the call ended; the call's `endedAt` (now when absent).
    completed_at: Option<DateTime<Utc>>,
}

/// What a webhook did.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)] // Only its schema is used.
enum WebhookOutcome {
    /// It settled the call's current attempt.
    Applied,
    /// A repeated or late webhook: nothing changed.
    Unchanged,
    /// It named an attempt that was never dialled: nothing changed.
    Ignored,
}

/// The answer to a webhook.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
#[allow(dead_code)] // Only its schema is used.
struct WebhookAnswer {
    /// What the webhook did.
    outcome: WebhookOutcome,
    /// Our id of the call.
    call_id: CallId,
    /// The call's status now.
    status: CallStatus,
}

/// Calls per status: every status present, zero-filled.
#[derive(ToSchema)]
#[allow(dead_code, non_snake_case)] // Only its schema is used; the names are the wire names.
struct StatusCounts {
    PENDING: u64,
    IN_PROGRESS: u64,
    COMPLETED: u64,
    FAILED: u64,
    EXPIRED: u64,
    CANCELED: u64,
}

/// A liveness or readiness answer.
#[derive(ToSchema)]
#[allow(dead_code)] // Only its schema is used.
struct Health {
    /// `ok` (liveness) or `ready` (readiness).
    #[schema(example = "ok")]
    status: String,
}

/// The query of `GET /calls`.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // Only its parameters are used.
struct ListQuery {
    /// Only calls in this status.
    status: Option<CallStatus>,
    /// Page number, from 1.
    #[param(minimum = 1, default = 1)]
    page: Option<u32>,
    /// Only calls to this number, in any spelling `POST /calls` accepts
    /// (compared canonical). Write `+` as `%2B` in a query string.
    #[param(example = "+966501234567")]
    to: Option<String>,
    /// Only calls running this script.
    #[param(rename = "scriptId")]
    script_id: Option<String>,
    /// Only calls created at or after this instant (RFC 3339).
    #[param(rename = "createdFrom")]
    created_from: Option<DateTime<Utc>>,
    /// Only calls created before this instant (RFC 3339); after `createdFrom`.
    #[param(rename = "createdTo")]
    created_to: Option<DateTime<Utc>>,
    /// Calls per page, 1 to 100.
    #[param(rename = "pageSize", minimum = 1, maximum = 100, default = 20)]
    page_size: Option<u32>,
}

/// Where an event stream starts and what it carries.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // Only its parameters are used.
struct EventsQuery {
    /// Start after this event id (`0`: the whole retained log), for clients
    /// that cannot send `Last-Event-ID`, which wins when both are given.
    #[param(minimum = 0)]
    after: Option<u64>,
    /// Only these event types, comma-separated, e.g.
    /// `call.completed,call.failed`.
    #[param(rename = "type", example = "call.completed,call.failed")]
    types: Option<String>,
    /// Only this call's events.
    #[param(rename = "callId")]
    call_id: Option<CallId>,
}

/// The header a reconnecting client sends.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)] // Only its parameters are used.
struct EventsHeaders {
    /// The id of the last event received: the stream resumes after it.
    #[param(rename = "Last-Event-ID", required = false, minimum = 0)]
    last_event_id: u64,
}

/// The headers of `POST /calls`.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)] // Only its parameters are used.
struct CreateHeaders {
    /// 1 to 255 visible ASCII characters; a repeat with the same request
    /// answers the first call.
    #[param(rename = "Idempotency-Key", required = false)]
    idempotency_key: String,
}

/// The Standard Webhooks headers, required when the server has a webhook secret.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)] // Only its parameters are used.
struct SignatureHeaders {
    /// The message id, the same on every re-send.
    #[param(rename = "webhook-id", required = false)]
    webhook_id: String,
    /// When the message was sent, Unix seconds; within 5 minutes of the
    /// server's clock either way.
    #[param(rename = "webhook-timestamp", required = false)]
    webhook_timestamp: i64,
    /// One or more space-separated `v1,<base64>` signatures: HMAC-SHA256 of
    /// `{webhook-id}.{webhook-timestamp}.{raw body}` keyed with the secret's
    /// decoded bytes.
    #[param(rename = "webhook-signature", required = false)]
    webhook_signature: String,
}

/// The `callId` and `attempt` we put in the `webhookUrl`: both or neither.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // Only its parameters are used.
struct WebhookQuery {
    /// Our id of the call the provider was asked to place.
    #[param(rename = "callId")]
    call_id: Option<CallId>,
    /// Which attempt of that call, from 1.
    #[param(minimum = 1)]
    attempt: Option<u32>,
}

/// Creates a call.
///
/// Stores a `PENDING` call and answers at once; the engine dials it later.
#[utoipa::path(
    post,
    path = "/calls",
    tag = "calls",
    operation_id = "createCall",
    params(CreateHeaders),
    request_body(content = NewCallBody, content_type = "application/json",
        description = "Any `application/*+json` media type is accepted too."),
    responses(
        (status = 201, description = "The call, created now or, for a repeated `Idempotency-Key`, before.",
            body = Call,
            headers(
                ("Location" = String, description = "`/calls/{id}`."),
                ("Idempotent-Replayed" = String, description = "`true` when the call was created by an earlier request with this key; absent otherwise."),
            )),
        (status = 400, description = "Invalid or malformed; `errors` names each field at fault.",
            body = Problem, content_type = PROBLEM_JSON),
        (status = 413, description = "The body is larger than 64 KiB.", body = Problem, content_type = PROBLEM_JSON),
        (status = 415, description = "The body is not JSON.", body = Problem, content_type = PROBLEM_JSON),
        (status = 422, description = "The `Idempotency-Key` was used for a different request.",
            body = Problem, content_type = PROBLEM_JSON),
        (status = 503, description = "The store cannot be reached, or the request timed out.",
            body = Problem, content_type = PROBLEM_JSON, headers(("Retry-After" = String, description = "Seconds to wait."))),
    ),
)]
#[allow(dead_code)]
fn create_call() {}

/// Lists calls, newest first.
#[utoipa::path(
    get,
    path = "/calls",
    tag = "calls",
    operation_id = "listCalls",
    params(ListQuery),
    responses(
        (status = 200, description = "One page of calls.", body = Page),
        (status = 400, description = "A parameter is invalid or unknown, or given twice.",
            body = Problem, content_type = PROBLEM_JSON),
        (status = 503, description = "The store cannot be reached, or the request timed out.",
            body = Problem, content_type = PROBLEM_JSON, headers(("Retry-After" = String, description = "Seconds to wait."))),
    ),
)]
#[allow(dead_code)]
fn list_calls() {}

/// Reads one call.
#[utoipa::path(
    get,
    path = "/calls/{id}",
    tag = "calls",
    operation_id = "getCall",
    params(("id" = CallId, Path, description = "The call's id.")),
    responses(
        (status = 200, description = "The call.", body = Call),
        (status = 400, description = "The id is not a UUID.", body = Problem, content_type = PROBLEM_JSON),
        (status = 404, description = "No call has this id.", body = Problem, content_type = PROBLEM_JSON),
        (status = 503, description = "The store cannot be reached, or the request timed out.",
            body = Problem, content_type = PROBLEM_JSON, headers(("Retry-After" = String, description = "Seconds to wait."))),
    ),
)]
#[allow(dead_code)]
fn get_call() {}

/// Changes what a `PENDING` call will dial.
#[utoipa::path(
    patch,
    path = "/calls/{id}",
    tag = "calls",
    operation_id = "updateCall",
    params(("id" = CallId, Path, description = "The call's id.")),
    request_body(content(
        (CallPatchBody = "application/json"),
        (CallPatchBody = "application/merge-patch+json"),
    )),
    responses(
        (status = 200, description = "The call as changed.", body = Call),
        (status = 400, description = "Invalid or malformed; `errors` names each field at fault.",
            body = Problem, content_type = PROBLEM_JSON),
        (status = 404, description = "No call has this id.", body = Problem, content_type = PROBLEM_JSON),
        (status = 409, description = "The call is not `PENDING` any more.", body = Problem, content_type = PROBLEM_JSON),
        (status = 413, description = "The body is larger than 64 KiB.", body = Problem, content_type = PROBLEM_JSON),
        (status = 415, description = "The body is not JSON.", body = Problem, content_type = PROBLEM_JSON),
        (status = 503, description = "The store cannot be reached, or the request timed out.",
            body = Problem, content_type = PROBLEM_JSON, headers(("Retry-After" = String, description = "Seconds to wait."))),
    ),
)]
#[allow(dead_code)]
fn update_call() {}

/// Cancels a call.
///
/// A `PENDING` call ends `CANCELED` at once (200). An `IN_PROGRESS` call is
/// never dialled again and the provider is asked to hang up where it can
/// (202); its webhook or lease then ends it `COMPLETED` if the provider
/// reports it completed, otherwise `CANCELED`. A `CANCELED` call is answered
/// as it is (200).
#[utoipa::path(
    post,
    path = "/calls/{id}/cancel",
    tag = "calls",
    operation_id = "cancelCall",
    params(("id" = CallId, Path, description = "The call's id.")),
    request_body(content = Option<CancelBody>, content_type = "application/json",
        description = "Optional; no body is the same as `{}`."),
    responses(
        (status = 200, description = "The call, `CANCELED` now or before.", body = Call),
        (status = 202, description = "The call, still `IN_PROGRESS`, with `cancelRequestedAt` set.", body = Call),
        (status = 400, description = "A malformed id, or a bad `reason`; `errors` names it.",
            body = Problem, content_type = PROBLEM_JSON),
        (status = 404, description = "No call has this id.", body = Problem, content_type = PROBLEM_JSON),
        (status = 409, description = "The call is `COMPLETED`, `FAILED` or `EXPIRED`.", body = Problem, content_type = PROBLEM_JSON),
        (status = 413, description = "The body is larger than 64 KiB.", body = Problem, content_type = PROBLEM_JSON),
        (status = 415, description = "A body that is not JSON.", body = Problem, content_type = PROBLEM_JSON),
        (status = 503, description = "The store cannot be reached, or the request timed out.",
            body = Problem, content_type = PROBLEM_JSON, headers(("Retry-After" = String, description = "Seconds to wait."))),
    ),
)]
#[allow(dead_code)]
fn cancel_call() {}

/// Retries a finished call as a new one.
///
/// Creates a `PENDING` call with the payload and `callbackUrl` of a
/// `FAILED`, `EXPIRED` or `CANCELED` call, and `retryOf` = its id. The
/// original stays as it is.
#[utoipa::path(
    post,
    path = "/calls/{id}/retry",
    tag = "calls",
    operation_id = "retryCall",
    params(("id" = CallId, Path, description = "The call to retry."), CreateHeaders),
    responses(
        (status = 201, description = "The new call, created now or, for a repeated `Idempotency-Key`, before.",
            body = Call,
            headers(
                ("Location" = String, description = "`/calls/{id}` of the new call."),
                ("Idempotent-Replayed" = String, description = "`true` when the call was created by an earlier request with this key; absent otherwise."),
            )),
        (status = 400, description = "A malformed id or `Idempotency-Key`.", body = Problem, content_type = PROBLEM_JSON),
        (status = 404, description = "No call has this id.", body = Problem, content_type = PROBLEM_JSON),
        (status = 409, description = "The call is `PENDING`, `IN_PROGRESS` or `COMPLETED`.", body = Problem, content_type = PROBLEM_JSON),
        (status = 422, description = "The `Idempotency-Key` was used for a different request.",
            body = Problem, content_type = PROBLEM_JSON),
        (status = 503, description = "The store cannot be reached, or the request timed out.",
            body = Problem, content_type = PROBLEM_JSON, headers(("Retry-After" = String, description = "Seconds to wait."))),
    ),
)]
#[allow(dead_code)]
fn retry_call() {}

/// Lists a call's dials.
#[utoipa::path(
    get,
    path = "/calls/{id}/attempts",
    tag = "calls",
    operation_id = "listAttempts",
    params(("id" = CallId, Path, description = "The call's id.")),
    responses(
        (status = 200, description = "Every dial, in dial order.", body = AttemptList),
        (status = 400, description = "The id is not a UUID.", body = Problem, content_type = PROBLEM_JSON),
        (status = 404, description = "No call has this id.", body = Problem, content_type = PROBLEM_JSON),
        (status = 503, description = "The store cannot be reached, or the request timed out.",
            body = Problem, content_type = PROBLEM_JSON, headers(("Retry-After" = String, description = "Seconds to wait."))),
    ),
)]
#[allow(dead_code)]
fn list_attempts() {}

/// Streams events as Server-Sent Events.
///
/// Each event is `id: <event id>`, `event: <type>`, `data: <Event JSON>`.
/// Resume with `Last-Event-ID` (or `?after=`): every later event still
/// retained, in order, then live ones; with neither, events from now on. A
/// comment line is sent at least every 15 s. The stream ends when the
/// server shuts down or cannot read the log; reconnect with the last id.
#[utoipa::path(
    get,
    path = "/events",
    tag = "events",
    operation_id = "streamEvents",
    params(EventsQuery, EventsHeaders),
    responses(
        (status = 200, description = "An endless `text/event-stream`; each `data:` is an `Event`.",
            content_type = "text/event-stream", body = String),
        (status = 400, description = "A bad `Last-Event-ID`, `after`, `type` or `callId`, or an unknown parameter; `errors` names it.",
            body = Problem, content_type = PROBLEM_JSON),
        (status = 503, description = "The request timed out before the stream began.",
            body = Problem, content_type = PROBLEM_JSON, headers(("Retry-After" = String, description = "Seconds to wait."))),
    ),
)]
#[allow(dead_code)]
fn events() {}

/// The provider's webhook: how a call it placed ended.
///
/// With a webhook secret configured, the Standard Webhooks headers are required.
#[utoipa::path(
    post,
    path = "/callbacks/call-status",
    tag = "provider",
    operation_id = "reportCallStatus",
    params(WebhookQuery, SignatureHeaders),
    request_body(content = WebhookBody, content_type = "application/json",
        description = "Read as JSON whatever its `Content-Type`."),
    responses(
        (status = 200, description = "Settled, or repeated, late, or for an attempt never dialled: changed nothing.",
            body = WebhookAnswer),
        (status = 400, description = "Unknown status, wrong types, bad timestamp or query values.",
            body = Problem, content_type = PROBLEM_JSON),
        (status = 401, description = "The signature is missing or wrong; `errors` names the header.",
            body = Problem, content_type = PROBLEM_JSON,
            headers(("WWW-Authenticate" = String, description = "`StandardWebhooks realm=\"call-status\"`."))),
        (status = 404, description = "No call has this provider call id (nor the query's call id): retry later.",
            body = Problem, content_type = PROBLEM_JSON),
        (status = 413, description = "The body is larger than 64 KiB.", body = Problem, content_type = PROBLEM_JSON),
        (status = 503, description = "The store cannot be reached, or the request timed out.",
            body = Problem, content_type = PROBLEM_JSON, headers(("Retry-After" = String, description = "Seconds to wait."))),
    ),
)]
#[allow(dead_code)]
fn call_status() {}

/// Vapi's server messages (`PROVIDER=vapi`): `{"message": {"type", "call", ...}}`.
///
/// `end-of-call-report`, and `status-update` with `status: "ended"`, settle
/// the call by its `endedReason`; every other type is acknowledged and
/// ignored. Authenticated by Vapi's HMAC credential (`x-signature`, hex
/// HMAC-SHA256 of `"{x-timestamp}.{body}"`, within 5 minutes) or its bearer
/// credential (`Authorization: Bearer` or `X-Vapi-Secret`), as
/// `VAPI_WEBHOOK_AUTH` says. 404 while Vapi is not the provider.
#[utoipa::path(
    post,
    path = "/callbacks/vapi",
    tag = "provider",
    operation_id = "vapiServerMessage",
    request_body(content = Object, content_type = "application/json",
        description = "A Vapi server message (see Vapi's `ServerMessage` schema)."),
    responses(
        (status = 200, description = "Settled, repeated, or a message type that settles nothing (`outcome: ignored`).",
            body = Object),
        (status = 400, description = "No `message`, `message.type`, `message.call.id` or `endedReason`, or wrong types; `errors` names the field.",
            body = Problem, content_type = PROBLEM_JSON),
        (status = 401, description = "The signature or secret is missing, wrong or stale; `errors` names the header.",
            body = Problem, content_type = PROBLEM_JSON,
            headers(("WWW-Authenticate" = String, description = "`Vapi realm=\"callbacks\"`."))),
        (status = 404, description = "No call has this Vapi call id (nor the echoed call id), or Vapi is not the provider.",
            body = Problem, content_type = PROBLEM_JSON),
        (status = 413, description = "The body is larger than 1 MiB.", body = Problem, content_type = PROBLEM_JSON),
        (status = 503, description = "The store cannot be reached, or the request timed out.",
            body = Problem, content_type = PROBLEM_JSON, headers(("Retry-After" = String, description = "Seconds to wait."))),
    ),
)]
#[allow(dead_code)]
fn vapi_callback() {}

/// Call counts per status, as JSON or as Prometheus text.
///
/// JSON unless `Accept` prefers `text/plain` or `application/openmetrics-text`
/// (as a Prometheus scraper does); then the Prometheus text format 0.0.4:
/// gauges `orchestrator_store_up`, `orchestrator_calls{status}`,
/// `orchestrator_slots_in_use`, `orchestrator_slots_max`, and the engine's
/// counters and histograms when the server exports them. While the store
/// cannot be reached, the text is still served, with `orchestrator_store_up
/// 0` and without the gauges only the store knows; JSON is then a 503.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    operation_id = "metrics",
    responses(
        (status = 200, description = "The counts.", content(
            (StatusCounts = "application/json"),
            (String = "text/plain"),
        )),
        (status = 503, description = "JSON asked for and the store cannot be reached, or the request timed out.",
            body = Problem, content_type = PROBLEM_JSON, headers(("Retry-After" = String, description = "Seconds to wait."))),
    ),
)]
#[allow(dead_code)]
fn metrics() {}

/// Liveness: the process is up.
#[utoipa::path(
    get,
    path = "/health",
    tag = "operations",
    operation_id = "health",
    responses((status = 200, description = "Always.", body = Health, example = json!({"status": "ok"}))),
)]
#[allow(dead_code)]
fn health() {}

/// Readiness: the store answers.
#[utoipa::path(
    get,
    path = "/ready",
    tag = "operations",
    operation_id = "ready",
    responses(
        (status = 200, description = "The store answers.", body = Health, example = json!({"status": "ready"})),
        (status = 503, description = "The store cannot be reached, or the request timed out.",
            body = Problem, content_type = PROBLEM_JSON, headers(("Retry-After" = String, description = "Seconds to wait."))),
    ),
)]
#[allow(dead_code)]
fn ready() {}

/// This document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    operation_id = "openapi",
    responses((status = 200, description = "The OpenAPI 3.1 description of this API.", body = Object)),
)]
#[allow(dead_code)]
fn openapi() {}
