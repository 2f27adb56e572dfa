//! [`router`]: the API's routes over an [`AppState`], bare and under
//! [`API_PREFIX`], with the cross-cutting layers.

use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tower::ServiceBuilder;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;

use crate::auth::require_api_key;
use crate::extract::BodyLimit;
use crate::problem::{log_server_errors, problem_for_bare_errors, ApiError};
use crate::routes::{self, Access};
use crate::state::AppState;
use crate::telemetry;

/// The prefix under which every route is served a second time, for compatibility.
pub const API_PREFIX: &str = "/api/v1";

/// The API: every operation of [`routes::operations`], mounted at `/` and at
/// [`API_PREFIX`], behind these layers, outermost first:
///
/// 1. an `x-request-id` (a UUID unless the client sent one), echoed in the answer;
/// 2. a `request` span with method, path, request id and call id, and one
///    log line per answer;
/// 3. every 4xx and 5xx answer is an RFC 9457 problem document, including
///    axum's own (405, 413, ...); the cause of a 5xx is logged once, here;
/// 4. the request timeout ([`Limits::request_timeout`](crate::Limits), 503);
/// 5. the body limit ([`Limits::body_bytes`](crate::Limits), or the
///    operation's own, [`Operation::body_limit`](routes::Operation::body_limit), 413);
/// 6. when the state has API keys, the key check of every operation but
///    those open to all or authenticated by a webhook signature
///    ([`Access`]), 401.
///
/// Unknown paths are 404 problem documents.
pub fn router(state: AppState) -> Router {
    let keys = state.api_keys().cloned();
    let limits = state.limits();
    let api = routes::operations()
        .into_iter()
        .fold(Router::new(), |api, operation| {
            let needs_key = operation.access() == Access::ApiKey;
            let body_bytes = operation.body_limit().unwrap_or(limits.body_bytes);
            let (path, route) = operation.into_route();
            // Per operation, so that a platform's webhook may carry more
            // than the API's default; the route's answer to a larger body
            // is the 413 problem document as everywhere else.
            let route: axum::routing::MethodRouter<AppState> =
                route.layer(RequestBodyLimitLayer::new(body_bytes));
            let route = route.layer(axum::Extension(BodyLimit(body_bytes)));
            let route = match &keys {
                Some(keys) if needs_key => route.route_layer(middleware::from_fn_with_state(
                    keys.clone(),
                    require_api_key,
                )),
                _ => route,
            };
            api.route(path, route)
        });
    let layers = ServiceBuilder::new()
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|request: &Request| telemetry::request_span(request))
                .on_response(DefaultOnResponse::new().level(Level::INFO))
                // A 5xx is logged once, with its cause, by `log_server_errors`;
                // the answer's status is in the response line above.
                .on_failure(()),
        )
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(middleware::from_fn(problem_for_bare_errors))
        .layer(middleware::from_fn(log_server_errors))
        .layer(middleware::from_fn_with_state(
            limits.request_timeout,
            request_timeout,
        ));
    Router::new()
        .merge(api.clone())
        .nest(API_PREFIX, api)
        .fallback(unknown_route)
        .layer(layers)
        .with_state(state)
}

async fn request_timeout(State(limit): State<Duration>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::Timeout(limit).into_response(),
    }
}

async fn unknown_route(request: Request) -> ApiError {
    ApiError::RouteNotFound(request.uri().path().to_owned())
}
