//! The event sequencer: gives committed events their ids, in commit order.
//!
//! Writers insert events with `id` NULL (see `crate::events`). A pass, in
//! one transaction:
//! 1. takes the schema's sequencer lock (`pg_advisory_xact_lock`), so one
//!    pass runs at a time across every process sharing the schema;
//! 2. in a new statement, so under READ COMMITTED its snapshot is taken
//!    after the lock was granted and sees every event committed before,
//!    numbers up to [`BATCH`] unsequenced rows in `seq` order, continuing
//!    from the position row, and moves the position; again while a batch
//!    comes back full;
//! 3. `pg_notify`s the schema's events channel once, if it numbered any
//!    (delivered at commit, to every process's listener).
//!
//! Why ids follow commit order: a pass numbers only committed rows, and
//! everything committed before it started; ids are never reused and passes
//! run one at a time, each continuing from the last, so a row committed
//! after a pass started gets a larger id than every row that pass numbered.
//! Two changes of one call cannot commit out of order either: the second
//! waits for the first's row lock, so it inserts its event (and draws its
//! `seq`) after the first committed; if both are in one pass, `seq` orders
//! them, and otherwise the first is in the earlier pass. A reader that saw
//! id N never misses a later event: ids become visible a whole pass at a
//! time, in increasing order.
//!
//! Each store runs one sequencer task. It runs a pass when a local write
//! inserted events ([`Sequencer::written`]), and at least every
//! [`FALLBACK_EVERY`] (events committed by a process that died before its
//! own pass ran). Writers only wake it, so the write path takes no shared
//! lock. [`Sequencer::caught_up`] waits until every event this process
//! committed so far is numbered: readers call it for read-your-writes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::{watch, Notify};
use tracing::debug;

use crate::error::PgError;
use crate::listen::bump;
use crate::schema::LockKey;

/// Rows numbered by one statement.
const BATCH: i64 = 1000;

/// The longest an event committed by a dead process waits for its id.
pub(crate) const FALLBACK_EVERY: Duration = Duration::from_secs(1);

/// The longest [`Sequencer::caught_up`] waits (the database may be down:
/// the read that follows then fails on its own).
const CATCH_UP_LIMIT: Duration = Duration::from_secs(5);

/// The plan settings of the pass (for this transaction only: index
/// lookups, no JIT compilation), then the schema's sequencer lock: one
/// round trip.
const LOCK: &str = "SELECT set_config('enable_hashjoin', 'off', true), \
                           set_config('enable_mergejoin', 'off', true), \
                           set_config('jit', 'off', true), \
                           pg_advisory_xact_lock($1, $2)";

/// Whether any committed event waits for its id (the partial index answers).
const WAITING: &str = "SELECT EXISTS (SELECT 1 FROM call_events WHERE id IS NULL)";

/// Numbers the oldest unsequenced rows after the position, and moves the
/// position; returns how many rows it numbered.
const NUMBER: &str = "\
    WITH batch AS ( \
        SELECT seq, (SELECT last_id FROM call_event_position) \
                    + row_number() OVER (ORDER BY seq) AS id \
        FROM (SELECT seq FROM call_events WHERE id IS NULL ORDER BY seq LIMIT $1) AS waiting \
    ), numbered AS ( \
        UPDATE call_events SET id = batch.id FROM batch WHERE call_events.seq = batch.seq \
        RETURNING batch.id \
    ), moved AS ( \
        UPDATE call_event_position SET last_id = (SELECT max(id) FROM numbered) \
        WHERE EXISTS (SELECT 1 FROM numbered) \
    ) \
    SELECT count(*) FROM numbered";

const NOTIFY: &str = "SELECT pg_notify($1, '')";

/// The sequencer's shared state: what local writers tell it, and what it
/// has done.
#[derive(Debug)]
pub(crate) struct Sequencer {
    wake: Notify,
    /// Local writes that committed events, counted after their commit.
    written: AtomicU64,
    /// The value of `written` read before the start of the last pass that
    /// succeeded: every event of those writes is numbered.
    done: watch::Sender<u64>,
}

impl Sequencer {
    pub(crate) fn new() -> Self {
        Self {
            wake: Notify::new(),
            written: AtomicU64::new(0),
            done: watch::Sender::new(0),
        }
    }

    /// Call after a local write that inserted events has committed.
    pub(crate) fn written(&self) {
        self.written.fetch_add(1, Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// Waits until every event that local writes committed before this
    /// call is numbered (at most [`CATCH_UP_LIMIT`]). Costs nothing when
    /// the sequencer is caught up.
    pub(crate) async fn caught_up(&self) {
        let target = self.written.load(Ordering::SeqCst);
        let mut done = self.done.subscribe();
        if *done.borrow_and_update() >= target {
            return;
        }
        self.wake.notify_one();
        let _ = tokio::time::timeout(CATCH_UP_LIMIT, done.wait_for(|done| *done >= target)).await;
    }
}

/// The sequencer task of one store, until aborted: a pass on every wake-up
/// and every [`FALLBACK_EVERY`]; after a pass that numbered events, bumps
/// `events_readable`. Failures are logged at debug level and retried at the
/// next wake-up (they are expected before the migrations ran).
pub(crate) async fn run(
    pool: PgPool,
    sequencer: Arc<Sequencer>,
    lock: LockKey,
    channel: String,
    events_readable: Arc<watch::Sender<u64>>,
) {
    let mut ticks = tokio::time::interval(FALLBACK_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let ticked = tokio::select! {
            biased;
            () = sequencer.wake.notified() => false,
            _ = ticks.tick() => true,
        };
        let target = sequencer.written.load(Ordering::SeqCst);
        // A fallback tick with nothing waiting needs no pass (nor its lock,
        // which idle processes would otherwise queue for every second).
        let idle = ticked
            && matches!(
                sqlx::query_scalar::<_, bool>(WAITING)
                    .fetch_one(&pool)
                    .await,
                Ok(false)
            );
        let outcome = if idle {
            Ok(0)
        } else {
            pass(&pool, lock, &channel).await
        };
        match outcome {
            Ok(numbered) => {
                if numbered > 0 {
                    bump(&events_readable);
                }
                sequencer.done.send_if_modified(|done| {
                    let behind = *done < target;
                    *done = (*done).max(target);
                    behind
                });
            }
            Err(error) => debug!(%error, "could not number events"),
        }
    }
}

/// One pass; returns how many events it numbered.
pub(crate) async fn pass(pool: &PgPool, lock: LockKey, channel: &str) -> Result<u64, PgError> {
    let mut tx = pool.begin().await?;
    // A pass touches at most BATCH rows, through the primary key. Left to
    // itself, the planner may hash-join the batch against a scan of the
    // whole log, or JIT-compile the statement: either makes a pass cost
    // the log's size, or hundreds of milliseconds.
    sqlx::query(LOCK)
        .bind(lock.0)
        .bind(lock.1)
        .execute(&mut *tx)
        .await?;
    let mut total: u64 = 0;
    loop {
        let numbered: i64 = sqlx::query_scalar(NUMBER)
            .bind(BATCH)
            .fetch_one(&mut *tx)
            .await?;
        total += u64::try_from(numbered).unwrap_or_default();
        if numbered < BATCH {
            break;
        }
    }
    if total > 0 {
        sqlx::query(NOTIFY).bind(channel).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(total)
}
