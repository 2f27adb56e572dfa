//! `GET /events`: the event log as Server-Sent Events (the WHATWG HTML
//! Standard, section 9.2).
//!
//! Each event is sent as
//!
//! ```text
//! id: 42
//! event: call.completed
//! data: {"id":42,"type":"call.completed","occurredAt":"...","call":{...}}
//! ```
//!
//! - **Where to start.** A client that reconnects sends the last id it saw
//!   in `Last-Event-ID` (an `EventSource` does so by itself) and receives
//!   every later event still retained, in order, then live ones. `?after=<id>`
//!   does the same for clients that cannot set headers (curl users,
//!   `?after=0` for the whole retained log); `Last-Event-ID` wins when both
//!   are given, since a reconnecting `EventSource` repeats the URL it first
//!   used. With neither, only events from now on are sent.
//! - **Filters.** `?type=call.completed,call.failed` (comma-separated event
//!   types) and `?callId=<id>`; both at once must both match.
//! - **Keep-alive.** A comment line (`:`) is sent when nothing else was for
//!   [`Limits::event_keep_alive`](crate::Limits) (15 s by default), so
//!   proxies do not close idle streams.
//! - **Back-pressure.** Events are read from the store as the client takes
//!   them (the engine's stream is bounded and pull-based): a slow client
//!   slows only its own stream, never dispatch or other clients.
//! - **Ends.** When the store cannot be read, the response ends (the client
//!   resumes from its last id); when the server shuts down, every stream
//!   ends ([`AppState::close_event_streams`](crate::AppState::close_event_streams)).

use std::collections::BTreeSet;
use std::convert::Infallible;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{Stream, StreamExt as _};
use orchestrator_core::{CallId, EventFilter, EventId, EventType};

use crate::extract::QueryPairs;
use crate::problem::{ApiError, FieldError};
use crate::state::AppState;

/// The request header a reconnecting client sends with the last id it saw.
pub const LAST_EVENT_ID: &str = "last-event-id";

const PARAMETERS: [&str; 3] = ["after", "type", "callId"];

/// Where a stream starts and what it carries.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Subscription {
    after: Option<EventId>,
    filter: EventFilter,
}

/// `GET /events`; see the module documentation.
///
/// # Errors
/// 400 naming `Last-Event-ID`, `after`, `type`, `callId` or an unknown
/// parameter.
pub async fn events(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: QueryPairs,
) -> Result<Response, ApiError> {
    let subscription = subscription(&headers, &query)?;
    let events = state
        .engine()
        .events(subscription.after, subscription.filter);
    let mut closing = state.closing();
    let closed = async move {
        let _ = closing.wait_for(|closing| *closing).await;
    };
    let stream = sse_events(events).take_until(closed);
    let mut response = Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(state.limits().event_keep_alive))
        .into_response();
    // Reverse proxies that buffer answers (nginx) would hold events back.
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// The engine's events as SSE events, ending (cleanly, rather than with a
/// broken body) after the first error: the client resumes by id.
fn sse_events(
    events: orchestrator_core::engine::EventStream,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    events
        .map(|item| match item {
            Ok(event) => SseEvent::default()
                .id(event.id.to_string())
                .event(event.kind.as_str())
                .json_data(&event)
                .map_err(|error| {
                    tracing::error!(%error, event_id = %event.id, "an event could not be serialised; ending the stream");
                }),
            Err(error) => {
                tracing::warn!(
                    error = &error as &dyn std::error::Error,
                    "the event log could not be read; ending the stream (the client resumes by id)"
                );
                Err(())
            }
        })
        .take_while(|item| std::future::ready(item.is_ok()))
        .filter_map(|item| std::future::ready(item.ok().map(Ok)))
}

fn subscription(headers: &HeaderMap, query: &QueryPairs) -> Result<Subscription, ApiError> {
    let mut errors = Vec::new();
    for (name, _) in &query.0 {
        if !PARAMETERS.contains(&name.as_str()) {
            errors.push(FieldError::new(
                name.clone(),
                format!(
                    "is not a known parameter; expected {}",
                    PARAMETERS.join(", ")
                ),
            ));
        }
    }
    let event_id = |raw: &str| {
        raw.trim().parse::<EventId>().map_err(|_| {
            format!("must be an event id (a whole number, 0 for the start of the log), not {raw:?}")
        })
    };
    // An `EventSource` with no id yet sends no header; an empty one means the same.
    let header = match headers.get(LAST_EVENT_ID).map(HeaderValue::to_str) {
        None => None,
        Some(Ok(raw)) if raw.trim().is_empty() => None,
        Some(Ok(raw)) => event_id(raw)
            .map_err(|message| errors.push(FieldError::new("Last-Event-ID", message)))
            .ok(),
        Some(Err(_)) => {
            errors.push(FieldError::new(
                "Last-Event-ID",
                "must be an event id (a whole number)",
            ));
            None
        }
    };
    let after = query.get("after").and_then(|raw| {
        event_id(raw)
            .map_err(|message| errors.push(FieldError::new("after", message)))
            .ok()
    });
    let mut types = BTreeSet::new();
    if let Some(raw) = query.get("type") {
        for name in raw.split(',').map(str::trim) {
            match name.parse::<EventType>() {
                Ok(kind) => {
                    types.insert(kind);
                }
                Err(error) => errors.push(FieldError::new("type", error.to_string())),
            }
        }
    }
    let call_id = query.get("callId").and_then(|raw| {
        raw.parse::<CallId>()
            .map_err(|_| {
                errors.push(FieldError::new(
                    "callId",
                    format!("{raw:?} is not a call id; call ids are UUIDs"),
                ));
            })
            .ok()
    });
    if !errors.is_empty() {
        return Err(ApiError::Invalid(errors));
    }
    Ok(Subscription {
        after: header.or(after),
        filter: EventFilter { types, call_id },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(header: Option<&str>, query: &[(&str, &str)]) -> Result<Subscription, Vec<String>> {
        let mut headers = HeaderMap::new();
        if let Some(value) = header {
            headers.insert(LAST_EVENT_ID, HeaderValue::from_str(value).unwrap());
        }
        let query = QueryPairs(
            query
                .iter()
                .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
                .collect(),
        );
        subscription(&headers, &query).map_err(|error| match error {
            ApiError::Invalid(errors) => errors.into_iter().map(|error| error.field).collect(),
            other => panic!("expected Invalid, got {other:?}"),
        })
    }

    #[test]
    fn last_event_id_wins_over_after() {
        let both = parse(Some("7"), &[("after", "3")]).unwrap();
        assert_eq!(both.after, Some(EventId(7)));
        assert_eq!(
            parse(None, &[("after", "3")]).unwrap().after,
            Some(EventId(3))
        );
        assert_eq!(parse(Some(" "), &[]).unwrap().after, None);
        assert_eq!(parse(None, &[]).unwrap().after, None);
    }

    #[test]
    fn filters_are_read_and_mistakes_named() {
        let filtered = parse(None, &[("type", "call.completed, call.failed")]).unwrap();
        assert_eq!(
            filtered.filter.types,
            BTreeSet::from([EventType::Completed, EventType::Failed])
        );
        assert_eq!(
            parse(
                Some("x"),
                &[
                    ("type", "call.done"),
                    ("callId", "42"),
                    ("after", "-1"),
                    ("since", "1")
                ]
            ),
            Err(vec![
                "since".to_owned(),
                "Last-Event-ID".to_owned(),
                "after".to_owned(),
                "type".to_owned(),
                "callId".to_owned()
            ])
        );
    }
}
