//! The claim: the only way a call becomes `IN_PROGRESS`.
//!
//! One transaction per claim:
//! 1. `pg_advisory_xact_lock` serialises claimers across every process and
//!    connection sharing the schema (the lock is held until commit or
//!    rollback; a crashed client's transaction is rolled back by the server,
//!    which releases it). Its key is the schema's (see `crate::schema`), so
//!    stores in other schemas of the database claim independently.
//! 2. Under the lock, a fresh snapshot (READ COMMITTED takes one per
//!    statement) counts the `IN_PROGRESS` calls: the count is exact up to
//!    settlements committing concurrently, which can only make it too high,
//!    never too low, because nobody but a lock holder adds to it.
//! 3. Due calls are read oldest first with `FOR UPDATE SKIP LOCKED`, skipping
//!    busy numbers (each statement's snapshot sees every earlier claim's
//!    `IN_PROGRESS` rows, for the same reason) and numbers already taken by
//!    this batch, page by page until the free capacity is filled or the
//!    queue is exhausted.
//! 4. One statement moves them to `IN_PROGRESS` and writes their history rows
//!    and their `call.dialled` events.
//!
//! Why this holds across processes:
//! - **Cap.** Only a claim makes a call `IN_PROGRESS`, and claims are
//!   serialised by the lock, so step 2 sees every earlier claim; concurrent
//!   settlements can only lower the true count below what it read. Hence
//!   `in_flight + taken <= max_in_flight` at commit.
//! - **One call per number.** Step 3's busy numbers are exact for the same
//!   reason; it excludes them and takes one call per number. The partial
//!   unique index `calls_one_in_progress_per_number` enforces the rule again
//!   whatever the writer.
//! - **Exclusive attempts.** Step 3 returns only rows this transaction locked
//!   and that are still `PENDING` (`SKIP LOCKED` rechecks the predicate on
//!   rows updated meanwhile), and step 4 rechecks the status: a call is taken
//!   by one claimer, and its attempt counted once.
//! - **Crashes.** A claimer that dies before commit is rolled back: no call
//!   changed, no history row, the lock released with its session.
//! - **Waiting is free.** A call to a busy number is skipped, not written.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use orchestrator_core::call::Call;
use orchestrator_core::clock;
use orchestrator_core::store::ClaimRequest;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::error::PgError;
use crate::events::{event_columns, log_events};
use crate::row::{call_column_names, call_columns, calls, CallRow};
use crate::schema::LockKey;

/// Largest page of candidates read at once: bounds the rows one claim locks
/// beyond those it takes.
const MAX_PAGE: usize = 1000;

const LOCK: &str = "SELECT pg_advisory_xact_lock($1, $2)";

/// The calls in progress: counted on the partial unique index, without
/// reading their rows.
const IN_FLIGHT: &str = "SELECT count(*) FROM calls WHERE status = 'IN_PROGRESS'";

/// Due means what `Call::due_at` and `expires_at` say in the memory store:
/// `due_at` (creation, `notBefore`, back-off) has passed and the call has not
/// expired. A busy number is one with a call `IN_PROGRESS` (one probe of the
/// partial unique index per candidate); `$2` excludes the numbers already
/// chosen by this claim.
const FIRST_PAGE: &str = "\
    SELECT id, to_number, created_at FROM calls \
    WHERE status = 'PENDING' AND due_at <= $1 AND (expires_at IS NULL OR expires_at > $1) \
      AND NOT EXISTS (SELECT 1 FROM calls AS busy \
                      WHERE busy.to_number = calls.to_number AND busy.status = 'IN_PROGRESS') \
      AND to_number <> ALL($2) \
    ORDER BY created_at, id \
    LIMIT $3 \
    FOR UPDATE SKIP LOCKED";

const NEXT_PAGE: &str = "\
    SELECT id, to_number, created_at FROM calls \
    WHERE status = 'PENDING' AND due_at <= $1 AND (expires_at IS NULL OR expires_at > $1) \
      AND NOT EXISTS (SELECT 1 FROM calls AS busy \
                      WHERE busy.to_number = calls.to_number AND busy.status = 'IN_PROGRESS') \
      AND to_number <> ALL($2) \
      AND (created_at, id) > ($4, $5) \
    ORDER BY created_at, id \
    LIMIT $3 \
    FOR UPDATE SKIP LOCKED";

/// The `Claim` transition of `orchestrator_core::state::transition`, set-based:
/// one more attempt, `startedAt = now`, a lease, no back-off, no provider id;
/// with each call's `call.dialled` event and history row. One
/// `call_event_seq` value for the whole batch orders it among all claims
/// and settlements.
const TAKE: &str = concat!(
    "WITH changed AS ( \
        UPDATE calls SET status = 'IN_PROGRESS', attempts = attempts + 1, started_at = $2, \
            lease_expires_at = $3, next_attempt_at = NULL, provider_call_id = NULL \
        WHERE id = ANY($1) AND status = 'PENDING' \
        RETURNING ",
    call_columns!(),
    ", ",
    event_columns!("'call.dialled'", "$2"),
    " ), history AS ( \
        INSERT INTO call_attempts (call_id, claim_seq, attempt, to_number, claimed_at, lease_expires_at) \
        SELECT id, (SELECT nextval('call_event_seq')), attempts, to_number, started_at, lease_expires_at \
        FROM changed \
    ), ",
    log_events!(),
    " SELECT ",
    call_column_names!(),
    " FROM changed ORDER BY created_at, id"
);

/// What a claim found.
enum Claimed {
    /// No slot was free.
    CapFull,
    /// The calls it took (none when nothing was due).
    Calls(Vec<Call>),
}

/// How long a claim that found the cap full keeps later claims from running
/// when nothing says a slot was freed: the bound on missing a slot freed
/// unannounced (by a process whose notification was lost, or by hand).
pub(crate) const FULL_RECHECK: Duration = Duration::from_millis(500);

/// Skips claims while the cap is known to be full. The engine runs a round
/// on every change (a call created, a slot freed), and with every slot
/// taken a claim could only count the calls in progress and give up; this
/// answers "nothing" at once instead, until something may have freed a
/// slot: a settlement applied here, a notification from another process
/// (it cannot tell what changed there), a reconnect of the listener, or
/// [`FULL_RECHECK`]. Only ever claims less, never more, so the cap and the
/// one-call-per-number rule do not depend on it.
#[derive(Debug, Default)]
pub(crate) struct FullCap {
    /// Events that may have freed a slot, counted.
    freed: Arc<AtomicU64>,
    /// After a claim found no free slot: `freed` before it started, the
    /// cap it was given, and when it ended.
    full: Mutex<Option<(u64, u32, Instant)>>,
}

impl FullCap {
    /// The counter the listener bumps on every notification and reconnect.
    pub(crate) fn freed_counter(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.freed)
    }

    /// A slot may have been freed.
    pub(crate) fn freed(&self) {
        self.freed.fetch_add(1, Ordering::SeqCst);
    }

    fn lock(&self) -> MutexGuard<'_, Option<(u64, u32, Instant)>> {
        self.full.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Claims as [`orchestrator_core::Store::claim`] says, in one transaction,
/// under the advisory lock `lock`; or takes nothing at once while `cap`
/// knows every slot is taken.
pub(crate) async fn claim(
    pool: &PgPool,
    lock: LockKey,
    cap: &FullCap,
    request: &ClaimRequest,
) -> Result<Vec<Call>, PgError> {
    if request.limit == 0 || request.max_in_flight == 0 {
        return Ok(Vec::new());
    }
    let freed = cap.freed.load(Ordering::SeqCst);
    let known_full = matches!(*cap.lock(), Some((then, max, at))
        if then == freed && max == request.max_in_flight && at.elapsed() < FULL_RECHECK);
    if known_full {
        return Ok(Vec::new());
    }
    // A fresh transaction: the lock has to come before any snapshot this
    // claim relies on.
    let mut tx = pool.begin().await?;
    let claimed = claim_locked(&mut tx, lock, request).await?;
    tx.commit().await?;
    Ok(match claimed {
        Claimed::CapFull => {
            *cap.lock() = Some((freed, request.max_in_flight, Instant::now()));
            Vec::new()
        }
        Claimed::Calls(calls) => {
            *cap.lock() = None;
            calls
        }
    })
}

/// Steps 1 to 4, in `tx`.
async fn claim_locked(
    tx: &mut PgConnection,
    lock: LockKey,
    request: &ClaimRequest,
) -> Result<Claimed, PgError> {
    sqlx::query(LOCK)
        .bind(lock.0)
        .bind(lock.1)
        .execute(&mut *tx)
        .await?;
    let in_flight: i64 = sqlx::query_scalar(IN_FLIGHT).fetch_one(&mut *tx).await?;
    let free =
        u64::from(request.max_in_flight).saturating_sub(u64::try_from(in_flight).unwrap_or(0));
    if free == 0 {
        return Ok(Claimed::CapFull);
    }
    let want = usize::try_from(free)
        .unwrap_or(usize::MAX)
        .min(request.limit as usize);
    let chosen = choose(tx, request.now, want).await?;
    if chosen.is_empty() {
        return Ok(Claimed::Calls(Vec::new()));
    }
    let lease_until = clock::add(request.now, request.lease);
    let rows: Vec<CallRow> = sqlx::query_as(TAKE)
        .bind(&chosen)
        .bind(request.now)
        .bind(lease_until)
        .fetch_all(&mut *tx)
        .await?;
    calls(rows).map(Claimed::Calls)
}

/// Up to `want` due calls, oldest first, at most one per number and none to
/// a busy number. Every returned row is locked by `tx`.
async fn choose(
    tx: &mut PgConnection,
    now: DateTime<Utc>,
    want: usize,
) -> Result<Vec<Uuid>, PgError> {
    // Half as many again as needed, so a batch usually fills in one page
    // even when a few candidates share a number, without locking many rows
    // it will not take; later pages exclude the numbers already chosen.
    let page = (want + want / 2 + 4).min(MAX_PAGE);
    let page_limit = i64::try_from(page).unwrap_or(i64::MAX);
    let mut chosen = Vec::with_capacity(want);
    let mut taken: HashSet<String> = HashSet::new();
    // The numbers chosen, for the next pages' queries.
    let mut excluded: Vec<String> = Vec::new();
    let mut after: Option<(DateTime<Utc>, Uuid)> = None;
    loop {
        let query = match after {
            None => sqlx::query_as(FIRST_PAGE),
            Some(_) => sqlx::query_as(NEXT_PAGE),
        };
        let mut query = query.bind(now).bind(&excluded).bind(page_limit);
        if let Some((created_at, id)) = after {
            query = query.bind(created_at).bind(id);
        }
        let rows: Vec<(Uuid, String, DateTime<Utc>)> = query.fetch_all(&mut *tx).await?;
        let exhausted = rows.len() < page;
        after = rows.last().map(|(id, _, created_at)| (*created_at, *id));
        for (id, to_number, _) in rows {
            if chosen.len() == want {
                break;
            }
            if taken.insert(to_number.clone()) {
                chosen.push(id);
                excluded.push(to_number);
            }
        }
        if chosen.len() == want || exhausted {
            return Ok(chosen);
        }
    }
}
