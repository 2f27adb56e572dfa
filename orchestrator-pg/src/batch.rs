//! Group commit: the writes many callers make at once, of one kind, in one
//! transaction.
//!
//! A settlement or a provider id is one small write, and its cost is almost
//! all round trips and the commit's WAL flush. A [`Batcher`] queues the
//! requests of one kind; its task takes every request waiting (up to the
//! batch size) and hands them to one write, which answers each request on
//! its own. A lone request goes at once, so batching adds no latency when
//! the store is idle, and under load one commit serves many calls. At most
//! `max_in_flight` batches run at once; the queue holds at most
//! [`MAX_QUEUED`] requests, and a caller past that waits for room.
//!
//! A batch is gathered once it has a connection: requests that arrive while
//! it waits for one join it. When no connection can be had (the database is
//! down: the pool's acquire timeout ran out), every request waiting fails at
//! once with that error, as each would have on its own, instead of each
//! waiting out another timeout behind the one before.

use std::future::Future;
use std::sync::Arc;

use sqlx::pool::PoolConnection;
use sqlx::{PgPool, Postgres};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::{JoinHandle, JoinSet};

use crate::error::PgError;

/// Requests waiting for a batch, per batcher.
pub(crate) const MAX_QUEUED: usize = 4096;

/// What one batch's write answers: one result per request, in order; or
/// one error for the whole batch (its transaction failed), which every
/// request then gets.
pub(crate) type Answers<R> = Result<Vec<Result<R, PgError>>, PgError>;

/// One request and where its answer goes.
struct Request<T, R> {
    item: T,
    reply: oneshot::Sender<Result<R, PgError>>,
}

/// The queue of one kind of write. Cheap to clone.
pub(crate) struct Batcher<T, R> {
    queue: mpsc::Sender<Request<T, R>>,
}

impl<T, R> Clone for Batcher<T, R> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
        }
    }
}

impl<T: Send + 'static, R: Send + 'static> Batcher<T, R> {
    /// A batcher whose task runs `write` on batches of at most `max_batch`
    /// requests, each on a connection of `pool`, at most `max_in_flight` at
    /// once. The task (and the batches it runs) stops when the returned
    /// handle is aborted; requests then fail with [`PgError::Stopped`].
    pub(crate) fn start<F, Fut>(
        pool: PgPool,
        max_batch: usize,
        max_in_flight: usize,
        write: F,
    ) -> (Self, JoinHandle<()>)
    where
        F: Fn(PoolConnection<Postgres>, Vec<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Answers<R>> + Send + 'static,
    {
        let (queue, requests) = mpsc::channel(MAX_QUEUED);
        let limits = (max_batch.max(1), max_in_flight.max(1));
        let task = tokio::spawn(run(pool, requests, limits, write));
        (Self { queue }, task)
    }

    /// Queues `item` and waits for its batch's answer.
    pub(crate) async fn submit(&self, item: T) -> Result<R, PgError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Request { item, reply })
            .await
            .map_err(|_| PgError::Stopped)?;
        answer.await.map_err(|_| PgError::Stopped)?
    }
}

/// `limits`: the most requests per batch, and batches at once.
async fn run<T, R, F, Fut>(
    pool: PgPool,
    mut requests: mpsc::Receiver<Request<T, R>>,
    (max_batch, max_in_flight): (usize, usize),
    write: F,
) where
    T: Send + 'static,
    R: Send + 'static,
    F: Fn(PoolConnection<Postgres>, Vec<T>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Answers<R>> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(max_in_flight));
    // Dropped with this task, which aborts the batches still running.
    let mut batches = JoinSet::new();
    while let Some(first) = requests.recv().await {
        // Wait for a free slot and a connection before gathering: requests
        // that arrive meanwhile join this batch instead of queueing for the
        // next.
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let connection = match pool.acquire().await {
            Ok(connection) => connection,
            Err(error) => {
                let error = Arc::new(PgError::from(error));
                let _ = first.reply.send(Err(PgError::Batch(Arc::clone(&error))));
                while let Ok(request) = requests.try_recv() {
                    let _ = request.reply.send(Err(PgError::Batch(Arc::clone(&error))));
                }
                continue;
            }
        };
        let mut batch = vec![first];
        while batch.len() < max_batch {
            match requests.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        let (items, replies): (Vec<T>, Vec<_>) = batch
            .into_iter()
            .map(|request| (request.item, request.reply))
            .unzip();
        let written = write(connection, items);
        batches.spawn(async move {
            match written.await {
                Ok(answers) => {
                    // A write that answered too few leaves the rest to fail
                    // with `Stopped` (their senders are dropped).
                    for (reply, answer) in replies.into_iter().zip(answers) {
                        let _ = reply.send(answer);
                    }
                }
                Err(error) => {
                    let error = Arc::new(error);
                    for reply in replies {
                        let _ = reply.send(Err(PgError::Batch(Arc::clone(&error))));
                    }
                }
            }
            drop(slot);
        });
        while batches.try_join_next().is_some() {}
    }
}
