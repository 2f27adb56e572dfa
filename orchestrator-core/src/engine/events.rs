//! Reading the event log as a live stream, and waiting for a call to end.
//!
//! Each stream has its own reader task that pages through the store's log
//! from its cursor and then waits for the store's event signal. It pushes
//! into a small bounded channel, so a slow consumer slows only its own
//! reader, never dispatch or other readers; whatever it has not read yet
//! stays in the store, not in memory.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{Engine, EngineError};
use crate::call::{Call, CallId};
use crate::event::{Event, EventFilter, EventId};
use crate::store::Store;

/// Events read from the store per round trip.
const PAGE: u32 = 256;
/// Events a stream holds that its consumer has not taken yet.
const BUFFER: usize = 64;

/// A live stream of events, in id order: the backlog after the id it
/// started from, then new events as they are written. Ends after yielding
/// an error (resume from the last id seen), or when the engine's store is
/// gone. Implements [`futures_core::Stream`]; or call [`next`](Self::next).
/// Dropping it stops its reader.
#[derive(Debug)]
pub struct EventStream {
    events: mpsc::Receiver<Result<Event, EngineError>>,
    reader: JoinHandle<()>,
}

impl EventStream {
    /// The next event, or `None` once the stream has ended.
    pub async fn next(&mut self) -> Option<Result<Event, EngineError>> {
        self.events.recv().await
    }
}

impl futures_core::Stream for EventStream {
    type Item = Result<Event, EngineError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.events.poll_recv(cx)
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Engine {
    /// The events after `after` that pass `filter`, then live ones; with
    /// `after` = `None`, only events written from now on. Must be called
    /// inside a tokio runtime. Several engines sharing one store each see
    /// every event: the log lives in the store.
    #[must_use]
    pub fn events(&self, after: Option<EventId>, filter: EventFilter) -> EventStream {
        let (sender, events) = mpsc::channel(BUFFER);
        let store = Arc::clone(&self.inner.store);
        let fallback = self.inner.config.fallback_poll;
        let reader = tokio::spawn(async move {
            if let Err(error) = read(&*store, after, &filter, &sender, fallback).await {
                let _ = sender.send(Err(error.into())).await;
            }
        });
        EventStream { events, reader }
    }

    /// Waits until call `id` is terminal and returns it as it then is,
    /// without polling: it wakes on the store's event signal. Bound the
    /// wait with `tokio::time::timeout`.
    ///
    /// # Errors
    /// [`EngineError::NotFound`]; [`EngineError::Store`].
    pub async fn wait_for_terminal(&self, id: CallId) -> Result<Call, EngineError> {
        let store = &self.inner.store;
        let mut signal = store.subscribe_events();
        loop {
            signal.mark_unchanged();
            let call = store.get(id).await?;
            if call.status.is_terminal() {
                return Ok(call);
            }
            tokio::select! {
                changed = signal.changed() => {
                    if changed.is_err() {
                        // The store is gone; read it once more and fail if still live.
                        let call = store.get(id).await?;
                        if call.status.is_terminal() {
                            return Ok(call);
                        }
                        return Err(EngineError::NotFound(format!("call {id} cannot be watched: its store is gone")));
                    }
                }
                () = tokio::time::sleep(self.inner.config.fallback_poll) => {}
            }
        }
    }
}

/// Pages through the log from `after` and then follows it, sending what
/// passes `filter`, until the consumer is gone. Returns a store error.
async fn read(
    store: &dyn Store,
    after: Option<EventId>,
    filter: &EventFilter,
    sender: &mpsc::Sender<Result<Event, EngineError>>,
    fallback: std::time::Duration,
) -> Result<(), crate::store::StoreError> {
    let mut signal = store.subscribe_events();
    let mut cursor = match after {
        Some(after) => after,
        None => store.last_event_id().await?,
    };
    loop {
        // Marked before reading: a signal during the read is not lost.
        signal.mark_unchanged();
        let page = store.events_after(cursor, PAGE).await?;
        let caught_up = page.len() < PAGE as usize;
        for event in page {
            cursor = event.id;
            if filter.matches(&event) && sender.send(Ok(event)).await.is_err() {
                return Ok(());
            }
        }
        if caught_up {
            tokio::select! {
                changed = signal.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                }
                () = sender.closed() => return Ok(()),
                // A safety net for a lost signal, as for dispatch.
                () = tokio::time::sleep(fallback) => {}
            }
        }
    }
}
