//! The HTTP server's own accept loop, in place of `axum::serve`, so that
//! slow, idle and too many clients cannot take the server down, and so that
//! a shutdown drains in a bounded time while still taking requests.
//!
//! - **Header-read timeout.** A client must send a request's headers within
//!   [`ServeOptions::header_read_timeout`], counted from the moment the
//!   connection is ready for a request: its opening, or the end of the
//!   previous answer. So the same bound closes idle keep-alive connections
//!   (hyper's HTTP/1 timer, which also runs between requests).
//! - **Connection limit.** At most [`ServeOptions::max_connections`] are
//!   open. A connection arriving at the limit is always taken: to make room,
//!   the connection that has waited longest without a request in our hands
//!   (still sending its headers, idle between requests, or slow to read its
//!   answer) is closed; only when every connection has a request in
//!   progress is the one whose request has run longest closed. So a flood of
//!   slow clients cannot keep a new one, say `/health` from a probe, out,
//!   and refusing at the limit (the kernel's accept queue would fill and
//!   every client, probes included, would hang) is never needed.
//! - **Shutdown.** When the shutdown future completes, the server keeps
//!   accepting and answering, webhooks included, while requests are in
//!   progress, for at most [`ServeOptions::shutdown_drain`]; then it stops
//!   accepting, lets each connection finish the request it is on and close,
//!   and at the end of that same bound closes whatever is left. A client
//!   that stalls mid-request cannot hold a shutdown past the bound.
//!
//! HTTP/1.1 only (as before), which is what the API's clients and
//! providers' webhooks use.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;
use tower::ServiceExt as _;

/// Connection handling of [`serve`](crate::server::serve).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServeOptions {
    /// Longest a client may take to send a request's headers, from the
    /// connection's opening or the end of its previous answer; so also how
    /// long an idle keep-alive connection is kept. Default 10 s.
    pub header_read_timeout: Duration,
    /// Most connections open at once; at the limit, a new connection takes
    /// the place of the one that waited longest. Default
    /// [`default_max_connections`].
    pub max_connections: NonZeroUsize,
    /// Longest a shutdown waits for requests in progress, while still
    /// accepting new ones; the engine's dial requests in flight get the same
    /// bound. Default 10 s.
    pub shutdown_drain: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            max_connections: default_max_connections(),
            shutdown_drain: Duration::from_secs(10),
        }
    }
}

/// Most connections allowed by default: 1,024, or half the process's soft
/// open-file limit when that is lower, leaving the other half for the
/// database pool, the provider client, logs and the listener.
#[must_use]
pub fn default_max_connections() -> NonZeroUsize {
    const DEFAULT: usize = 1024;
    let half_the_files = open_file_limit().map_or(DEFAULT, |limit| {
        usize::try_from(limit / 2).unwrap_or(DEFAULT)
    });
    NonZeroUsize::new(DEFAULT.min(half_the_files)).unwrap_or(NonZeroUsize::MIN)
}

/// The process's soft `RLIMIT_NOFILE`, when it has one.
pub(crate) fn open_file_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        use nix::sys::resource::{getrlimit, Resource, RLIM_INFINITY};
        getrlimit(Resource::RLIMIT_NOFILE)
            .ok()
            .map(|(soft, _)| soft)
            .filter(|soft| *soft != RLIM_INFINITY)
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// Serves `app` on `listener` as the module documentation says, until
/// `shutdown` completes and the drain is over.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    options: &ServeOptions,
    shutdown: impl Future<Output = ()>,
) {
    let mut server = Server::new(app, options);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => server.admit(accepted).await,
            Some(_) = server.tasks.join_next(), if !server.tasks.is_empty() => {}
        }
    }

    // Draining: still accepting and answering while requests are in progress.
    let deadline = Instant::now() + options.shutdown_drain;
    let mut requests = server.requests.subscribe();
    let in_progress = *requests.borrow();
    tracing::info!(
        in_progress,
        within = ?options.shutdown_drain,
        "draining: answering requests until those in progress are done"
    );
    loop {
        tokio::select! {
            biased;
            () = tokio::time::sleep_until(deadline) => {
                let in_progress = *server.requests.borrow();
                tracing::warn!(
                    in_progress,
                    "shutdown drain bound reached; closing requests still in progress"
                );
                break;
            }
            // The `Ref` that `wait_for` yields must not live across the other branches' awaits.
            () = async { let _ = requests.wait_for(|in_progress| *in_progress == 0).await; } => break,
            accepted = listener.accept() => server.admit(accepted).await,
            Some(_) = server.tasks.join_next(), if !server.tasks.is_empty() => {}
        }
    }

    // Closing: no new connections; each finishes its request and closes,
    // within what is left of the bound.
    drop(listener);
    server.closing.send_replace(true);
    let tasks = &mut server.tasks;
    let _ = tokio::time::timeout_at(deadline, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    server.tasks.abort_all();
}

/// The accept loop's state.
struct Server {
    app: Router,
    builder: http1::Builder,
    max_connections: usize,
    table: Arc<Mutex<Table>>,
    /// Requests in progress, across connections.
    requests: Arc<watch::Sender<usize>>,
    /// Set when connections are to finish their request and close.
    closing: watch::Sender<bool>,
    tasks: JoinSet<()>,
    /// Connections closed to make room since the last warning, and when that was.
    shed_since_warning: u64,
    last_warning: Option<Instant>,
}

/// How often, at most, the server warns that it is closing connections to
/// make room: one line per burst, not one per connection.
const WARN_EVERY: Duration = Duration::from_secs(10);

impl Server {
    fn new(app: Router, options: &ServeOptions) -> Self {
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(options.header_read_timeout);
        Self {
            app,
            builder,
            max_connections: options.max_connections.get(),
            table: Arc::default(),
            requests: Arc::new(watch::Sender::new(0)),
            closing: watch::Sender::new(false),
            tasks: JoinSet::new(),
            shed_since_warning: 0,
            last_warning: None,
        }
    }

    /// Takes an accepted connection, closing another first when at the
    /// limit, and serves it on a task of its own.
    async fn admit(&mut self, accepted: io::Result<(TcpStream, std::net::SocketAddr)>) {
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => return self.accept_failed(&error).await,
        };
        // Reap finished tasks here too: under a flood of connections the
        // loop's own reaping branch may not get its turn.
        while self.tasks.try_join_next().is_some() {}
        if lock(&self.table).connections.len() >= self.max_connections {
            self.make_room();
        }
        let id = lock(&self.table).open();
        let connection = Connection {
            id,
            table: Arc::clone(&self.table),
        };
        let task = self.tasks.spawn(serve_connection(
            self.builder.clone(),
            stream,
            self.app.clone(),
            connection,
            Arc::clone(&self.requests),
            self.closing.subscribe(),
        ));
        if let Some(entry) = lock(&self.table).connections.get_mut(&id) {
            entry.task = Some(task);
        }
    }

    /// Closes the connection that waited longest, and warns now and then.
    fn make_room(&mut self) {
        if !lock(&self.table).close_longest_waiting() {
            return;
        }
        self.shed_since_warning += 1;
        let now = Instant::now();
        if self
            .last_warning
            .is_none_or(|last| now.duration_since(last) >= WARN_EVERY)
        {
            tracing::warn!(
                limit = self.max_connections,
                closed = self.shed_since_warning,
                "connection limit reached: closing the connections that waited longest"
            );
            self.shed_since_warning = 0;
            self.last_warning = Some(now);
        }
    }

    /// A failed `accept`: nothing to do for a connection that went away
    /// before it was taken; out of file descriptors (the limit is set too
    /// high for the open-file limit), close one to free one and pause
    /// briefly, rather than spin.
    async fn accept_failed(&mut self, error: &io::Error) {
        use io::ErrorKind::{ConnectionAborted, ConnectionReset, Interrupted};
        if matches!(
            error.kind(),
            ConnectionAborted | ConnectionReset | Interrupted
        ) {
            return;
        }
        tracing::warn!(%error, "cannot accept a connection; closing the one that waited longest");
        self.make_room();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Serves one connection until it closes, `closing` asks it to finish, or
/// its task is aborted.
async fn serve_connection(
    builder: http1::Builder,
    stream: TcpStream,
    app: Router,
    connection: Connection,
    requests: Arc<watch::Sender<usize>>,
    mut closing: watch::Receiver<bool>,
) {
    let connection = Arc::new(connection);
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let in_progress = InProgress::start(&connection, &requests);
        let answer = app.clone().oneshot(request);
        async move {
            let response = answer.await;
            // The answer is ready; from here the connection waits on the client.
            drop(in_progress);
            response
        }
    });
    let http = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(http);
    tokio::select! {
        biased;
        served = http.as_mut() => {
            if let Err(error) = served {
                // Header-read timeouts, resets, malformed requests: routine.
                tracing::debug!(%error, "connection closed");
            }
            return;
        }
        true = async { closing.wait_for(|closing| *closing).await.is_ok() } => {
            http.as_mut().graceful_shutdown();
        }
    }
    let _ = http.await;
}

/// The open connections.
#[derive(Debug, Default)]
struct Table {
    next_id: u64,
    connections: HashMap<u64, Entry>,
}

/// One open connection.
#[derive(Debug)]
struct Entry {
    /// Whether a request is in progress.
    busy: bool,
    /// Since when it has been waiting on the client (opened, or its last
    /// answer ready) or, when `busy`, since its request began.
    since: Instant,
    /// Its task, to close it.
    task: Option<AbortHandle>,
}

impl Table {
    /// Records a new connection, waiting on its client; its id.
    fn open(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.connections.insert(
            id,
            Entry {
                busy: false,
                since: Instant::now(),
                task: None,
            },
        );
        id
    }

    /// Closes the connection that has waited on its client longest or,
    /// when every one has a request in progress, the one whose request has
    /// run longest; whether there was one. A linear scan: it runs only at
    /// the limit, over at most the limit's entries.
    fn close_longest_waiting(&mut self) -> bool {
        let oldest = self
            .connections
            .iter()
            .min_by_key(|(id, entry)| (entry.busy, entry.since, **id))
            .map(|(id, _)| *id);
        match oldest.and_then(|id| self.connections.remove(&id)) {
            Some(entry) => {
                if let Some(task) = entry.task {
                    task.abort();
                }
                true
            }
            None => false,
        }
    }
}

fn lock(table: &Mutex<Table>) -> std::sync::MutexGuard<'_, Table> {
    // The table holds no invariant a panic could break half-way.
    table.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A connection's place in the table, given up when its task ends or is aborted.
struct Connection {
    id: u64,
    table: Arc<Mutex<Table>>,
}

impl Connection {
    fn set_busy(&self, busy: bool) {
        if let Some(entry) = lock(&self.table).connections.get_mut(&self.id) {
            entry.busy = busy;
            entry.since = Instant::now();
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        lock(&self.table).connections.remove(&self.id);
    }
}

/// A request in progress: counted, and its connection marked busy, until dropped.
struct InProgress {
    connection: Arc<Connection>,
    requests: Arc<watch::Sender<usize>>,
}

impl InProgress {
    fn start(connection: &Arc<Connection>, requests: &Arc<watch::Sender<usize>>) -> Self {
        connection.set_busy(true);
        requests.send_modify(|in_progress| *in_progress += 1);
        Self {
            connection: Arc::clone(connection),
            requests: Arc::clone(requests),
        }
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        self.connection.set_busy(false);
        self.requests
            .send_modify(|in_progress| *in_progress = in_progress.saturating_sub(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn at_the_limit_the_longest_waiting_connection_goes_first() {
        let mut table = Table::default();
        let first = table.open();
        tokio::time::advance(Duration::from_millis(1)).await;
        let second = table.open();
        tokio::time::advance(Duration::from_millis(1)).await;
        let third = table.open();
        // The oldest has a request in progress: the next oldest waiting goes.
        table.connections.get_mut(&first).unwrap().busy = true;
        assert!(table.close_longest_waiting());
        assert!(!table.connections.contains_key(&second));
        assert!(table.close_longest_waiting());
        assert!(!table.connections.contains_key(&third));
        // Only busy ones left: the longest-running request goes.
        assert!(table.close_longest_waiting());
        assert!(table.connections.is_empty());
        assert!(!table.close_longest_waiting());
    }
}
