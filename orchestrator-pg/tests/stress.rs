//! Stress: many claimers and settlers on separate connections and stores,
//! then several engines sharing one database, all audited afterwards from the
//! `call_attempts` history.
//!
//! The audit orders claims and settlements by `call_event_seq`, which each
//! claim statement and each applied settlement draws inside its transaction.
//! That order is sound for the cap and the per-number rule: claimers draw
//! while holding the claim lock, so claims are numbered in lock order, and
//! each claimer reads the in-progress calls after the previous one committed.
//! Take claims C1 before C2, and C1's settlement S1 numbered after C2. S1
//! draws inside its transaction, so it had not committed when C2 drew, nor
//! when C2 read the in-progress calls before that: C2 counted C1 as in
//! flight. So what the sequence order shows in flight at C2 is a subset of
//! what C2 itself saw, and a correct store never shows more than the cap
//! there, while claimers that miscount or overlap do.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use orchestrator_core::call::{AttemptRef, Call, CallId, CallStatus, NewCall};
use orchestrator_core::simulated::Faults;
use orchestrator_core::store::{ClaimRequest, Settled, Settlement};
use orchestrator_core::{
    Engine, EngineConfig, PhoneNumber, RetryPolicy, ScriptId, SimulatedProvider, SimulationConfig,
    Store,
};
use orchestrator_pg::{testing, PgStore};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::sync::Notify;
use uuid::Uuid;

const CAP: u32 = 5;
const DEADLINE: Duration = Duration::from_secs(120);

fn t(micros: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 7, 20, 10, 0, 0).unwrap() + chrono::TimeDelta::microseconds(micros)
}

fn number(n: u32) -> PhoneNumber {
    PhoneNumber::parse(&format!("+1415555{n:04}")).unwrap()
}

/// A number from `0..numbers`, skewed so the first few recur often and the
/// per-number rule binds.
fn skewed_number(rng: &mut ChaCha8Rng, numbers: u32) -> u32 {
    let x: f64 = rng.random();
    ((x * x) * f64::from(numbers)) as u32
}

async fn stores(n: usize) -> Vec<Arc<PgStore>> {
    let url = testing::fresh_database_url().await;
    let first = PgStore::connect(&url).await.expect("connect");
    first.migrate().await.expect("migrate");
    let mut stores = vec![Arc::new(first)];
    for _ in 1..n {
        stores.push(Arc::new(PgStore::connect(&url).await.expect("connect")));
    }
    stores
}

/// Samples the database while a test runs and fails it on the first sample
/// that shows more than the cap, or two calls in progress to one number.
fn spawn_monitor(store: Arc<PgStore>, done: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut samples = 0;
        while !done.load(Ordering::Relaxed) {
            let (in_flight, per_number): (i64, i64) = sqlx::query_as(
                "SELECT COALESCE(sum(n), 0)::bigint, COALESCE(max(n), 0) FROM ( \
                   SELECT count(*) AS n FROM calls WHERE status = 'IN_PROGRESS' \
                   GROUP BY to_number) AS busy",
            )
            .fetch_one(store.pool())
            .await
            .expect("monitor query");
            assert!(in_flight <= i64::from(CAP), "{in_flight} calls in progress");
            assert!(
                per_number <= 1,
                "{per_number} calls in progress to one number"
            );
            samples += 1;
            // A sampling interval, not synchronisation.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        samples
    })
}

#[derive(Debug, sqlx::FromRow)]
struct HistoryRow {
    call_id: Uuid,
    attempt: i32,
    to_number: String,
    claim_seq: i64,
    settle_seq: Option<i64>,
    outcome: Option<String>,
}

#[derive(Debug, Default)]
struct Audit {
    claims: usize,
    capacity_give_backs: usize,
    peak_in_flight: usize,
}

/// Checks the whole history of a finished run (see the module docs for why
/// the sequence order is sound): every claim was settled once and after it
/// was claimed; at no point in sequence order were more than `cap` attempts
/// in flight, or two for one number; an attempt number was claimed again
/// only after a 429 gave it back; every call's `attempts` is its number of
/// real dials.
async fn audit(store: &PgStore, cap: u32) -> Audit {
    let rows: Vec<HistoryRow> = sqlx::query_as(
        "SELECT call_id, attempt, to_number, claim_seq, settle_seq, outcome \
         FROM call_attempts ORDER BY claim_seq, call_id",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();

    // +1 at the claim, -1 at the settlement, in sequence order.
    let mut events: BTreeMap<i64, (Vec<usize>, Vec<usize>)> = BTreeMap::new();
    for (i, row) in rows.iter().enumerate() {
        let settled = row
            .settle_seq
            .unwrap_or_else(|| panic!("attempt never settled: {row:?}"));
        assert!(settled > row.claim_seq, "settled before claimed: {row:?}");
        events.entry(row.claim_seq).or_default().0.push(i);
        events.entry(settled).or_default().1.push(i);
    }
    let mut in_flight: HashMap<&str, usize> = HashMap::new();
    let mut total = 0usize;
    let mut peak = 0usize;
    for (seq, (claims, settles)) in &events {
        assert!(
            claims.is_empty() || settles.is_empty(),
            "one sequence value for a claim and a settlement: {seq}"
        );
        for &i in settles {
            *in_flight.get_mut(rows[i].to_number.as_str()).unwrap() -= 1;
            total -= 1;
        }
        for &i in claims {
            let busy = in_flight.entry(rows[i].to_number.as_str()).or_default();
            *busy += 1;
            assert_eq!(
                *busy, 1,
                "two calls in flight to {} at seq {seq}",
                rows[i].to_number
            );
            total += 1;
        }
        assert!(total <= cap as usize, "{total} in flight at seq {seq}");
        peak = peak.max(total);
    }

    let mut by_attempt: BTreeMap<(Uuid, i32), Vec<&HistoryRow>> = BTreeMap::new();
    let mut dials: HashMap<Uuid, u32> = HashMap::new();
    for row in &rows {
        by_attempt
            .entry((row.call_id, row.attempt))
            .or_default()
            .push(row);
        if row.outcome.as_deref() != Some("CAPACITY") {
            *dials.entry(row.call_id).or_default() += 1;
        }
    }
    for ((call_id, attempt), claims) in &by_attempt {
        for earlier in &claims[..claims.len() - 1] {
            assert_eq!(
                earlier.outcome.as_deref(),
                Some("CAPACITY"),
                "attempt {attempt} of {call_id} claimed again without being given back"
            );
        }
    }
    let calls: Vec<(Uuid, String, i32)> = sqlx::query_as("SELECT id, status, attempts FROM calls")
        .fetch_all(store.pool())
        .await
        .unwrap();
    for (id, status, attempts) in calls {
        let status: CallStatus = status.parse().unwrap();
        assert!(status.is_terminal(), "call {id} ended {status}");
        assert_eq!(
            attempts as u32,
            dials.get(&id).copied().unwrap_or(0),
            "call {id}: attempts vs dials in history"
        );
    }
    Audit {
        claims: rows.len(),
        capacity_give_backs: rows
            .iter()
            .filter(|row| row.outcome.as_deref() == Some("CAPACITY"))
            .count(),
        peak_in_flight: peak,
    }
}

/// Counters kept by triggers must equal a full count.
async fn assert_counts_exact(store: &PgStore) {
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, count(*) FROM calls GROUP BY status")
            .fetch_all(store.pool())
            .await
            .unwrap();
    let counts = store.counts().await.unwrap();
    for status in CallStatus::ALL {
        let scanned = rows
            .iter()
            .find(|(s, _)| s == status.as_str())
            .map_or(0, |(_, n)| *n as u64);
        assert_eq!(counts.get(status), scanned, "{status}");
    }
}

/// Waits, event-driven, until no call is pending or in progress.
async fn until_all_terminal(store: &PgStore, started: Instant) {
    let mut changes = store.subscribe();
    loop {
        changes.mark_unchanged();
        let counts = store.counts().await.unwrap();
        if counts.get(CallStatus::Pending) + counts.get(CallStatus::InProgress) == 0 {
            return;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "calls still open after {DEADLINE:?}: {counts:?}"
        );
        // Woken by any create or settlement; the timeout only bounds the wait.
        let _ = tokio::time::timeout(Duration::from_millis(500), changes.changed()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_claimers_on_separate_stores_keep_the_cap_and_the_number_rule() {
    const CALLS: u32 = 3000;
    const NUMBERS: u32 = 60;
    const CLAIMERS: usize = 6;
    const SETTLERS: usize = 4;
    let started = Instant::now();
    let stores = stores(4).await;
    let now = t(10_000_000);

    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut creators = tokio::task::JoinSet::new();
    let plan: Vec<u32> = (0..CALLS)
        .map(|_| skewed_number(&mut rng, NUMBERS))
        .collect();
    for (worker, chunk) in plan.chunks(CALLS as usize / 8).enumerate() {
        let store = Arc::clone(&stores[worker % stores.len()]);
        let chunk = chunk.to_vec();
        let offset = worker * chunk.len();
        creators.spawn(async move {
            for (i, n) in chunk.into_iter().enumerate() {
                let at = t((offset + i) as i64);
                store
                    .create(
                        CallId::new_v7(at),
                        &NewCall::new(number(n), ScriptId::parse("s").unwrap()),
                        at,
                    )
                    .await
                    .unwrap();
            }
        });
    }
    creators.join_all().await;
    println!("created {CALLS} calls in {:?}", started.elapsed());

    let done = Arc::new(AtomicBool::new(false));
    let monitor = spawn_monitor(Arc::clone(&stores[0]), Arc::clone(&done));
    let in_flight: Arc<Mutex<Vec<Call>>> = Arc::default();
    let claimed_some = Arc::new(Notify::new());
    let settled: Arc<Mutex<Vec<AttemptRef>>> = Arc::default();
    let stale_answers = Arc::new(AtomicU64::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..CLAIMERS {
        let store = Arc::clone(&stores[1 + worker % (stores.len() - 1)]);
        let (in_flight, done, claimed_some) = (
            Arc::clone(&in_flight),
            Arc::clone(&done),
            Arc::clone(&claimed_some),
        );
        workers.spawn(async move {
            let mut rng = ChaCha8Rng::seed_from_u64(100 + worker as u64);
            let mut changes = store.subscribe();
            while !done.load(Ordering::Relaxed) {
                changes.mark_unchanged();
                let request = ClaimRequest {
                    now,
                    max_in_flight: CAP,
                    limit: rng.random_range(1..=CAP),
                    lease: Duration::from_secs(900),
                };
                let claimed = store.claim(&request).await.expect("claim");
                if claimed.is_empty() {
                    let _ =
                        tokio::time::timeout(Duration::from_millis(50), changes.changed()).await;
                }
                if !claimed.is_empty() {
                    in_flight.lock().unwrap().extend(claimed);
                    claimed_some.notify_waiters();
                }
            }
        });
    }
    for worker in 0..SETTLERS {
        let store = Arc::clone(&stores[worker % stores.len()]);
        let (in_flight, settled, done, stale_answers, claimed_some) = (
            Arc::clone(&in_flight),
            Arc::clone(&settled),
            Arc::clone(&done),
            Arc::clone(&stale_answers),
            Arc::clone(&claimed_some),
        );
        workers.spawn(async move {
            let mut rng = ChaCha8Rng::seed_from_u64(200 + worker as u64);
            while !done.load(Ordering::Relaxed) {
                let wake = claimed_some.notified();
                let picked = {
                    let mut calls = in_flight.lock().unwrap();
                    (!calls.is_empty()).then(|| {
                        let i = rng.random_range(0..calls.len());
                        calls.swap_remove(i)
                    })
                };
                let Some(call) = picked else {
                    // Woken by the next claim; the timeout only bounds the wait.
                    let _ = tokio::time::timeout(Duration::from_millis(50), wake).await;
                    continue;
                };
                let roll: f64 = rng.random();
                let settlement = if roll < 0.10 {
                    Settlement::Capacity {
                        at: now,
                        retry_at: now,
                    }
                } else if roll < 0.35 && call.attempts < 3 {
                    Settlement::Retry {
                        error: "provider 503".into(),
                        at: now,
                        retry_at: now,
                    }
                } else if roll < 0.5 {
                    Settlement::Failed {
                        error: "BUSY".into(),
                        at: now,
                        duration_sec: None,
                    }
                } else {
                    Settlement::Completed {
                        at: now,
                        duration_sec: Some(1),
                    }
                };
                let attempt = call.current_attempt();
                // A 429 gives the attempt number back, so the same AttemptRef
                // becomes current again at the next claim: only attempts that
                // were used up may be replayed as late duplicates below.
                let used_up = !matches!(settlement, Settlement::Capacity { .. });
                match store.settle(attempt, settlement).await.expect("settle") {
                    Settled::Applied(_) if used_up => settled.lock().unwrap().push(attempt),
                    Settled::Applied(_) => {}
                    Settled::Stale(call) => panic!("a claimed attempt was stale: {call:?}"),
                }
                // Now and then, a late duplicate of an earlier settlement.
                if rng.random_bool(0.1) {
                    let old = {
                        let settled = settled.lock().unwrap();
                        if settled.is_empty() {
                            continue;
                        }
                        settled[rng.random_range(0..settled.len())]
                    };
                    let late = Settlement::Completed {
                        at: now,
                        duration_sec: None,
                    };
                    match store.settle(old, late).await.expect("settle") {
                        Settled::Stale(_) => stale_answers.fetch_add(1, Ordering::Relaxed),
                        Settled::Applied(call) => {
                            panic!("a used-up attempt was settled again: {call:?}")
                        }
                    };
                }
            }
        });
    }

    until_all_terminal(&stores[0], started).await;
    done.store(true, Ordering::Relaxed);
    workers.join_all().await;
    let samples = monitor.await.expect("monitor");

    let audit = audit(&stores[0], CAP).await;
    assert_counts_exact(&stores[0]).await;
    assert!(
        audit.peak_in_flight == CAP as usize,
        "the cap was reached: {audit:?}"
    );
    assert!(stale_answers.load(Ordering::Relaxed) > 0);
    println!(
        "{CALLS} calls, {} claims ({} given back by 429), peak {} in flight, {samples} monitor samples, {:?}",
        audit.claims,
        audit.capacity_give_backs,
        audit.peak_in_flight,
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engines_sharing_one_database_keep_every_invariant() {
    const ENGINES: usize = 3;
    const CALLS: u32 = 1200;
    const NUMBERS: u32 = 50;
    let started = Instant::now();
    let stores = stores(ENGINES).await;
    let provider = SimulatedProvider::new(
        SimulationConfig::default()
            .with_seed(11)
            .with_dial_latency(Duration::from_millis(1)..=Duration::from_millis(5))
            .with_call_duration(Duration::from_millis(1)..=Duration::from_millis(20))
            .with_faults(
                Faults::default()
                    .with_server_error(0.05)
                    .with_at_capacity(0.05, Some(Duration::from_millis(5)))
                    .with_duplicate_webhook(0.05)
                    .with_early_webhook(0.05),
            ),
    );
    let config = EngineConfig::default()
        .with_max_concurrent_calls(CAP)
        .with_retry(
            RetryPolicy::new(Duration::from_millis(10), Duration::from_millis(50), 3, 0.2).unwrap(),
        )
        .with_capacity_retry_after(Duration::from_millis(5))
        .with_fallback_poll(Duration::from_millis(250))
        .with_claim_batch(CAP);
    let engines: Vec<Engine> = stores
        .iter()
        .enumerate()
        .map(|(i, store)| {
            Engine::builder(
                Arc::clone(store) as Arc<dyn Store>,
                Arc::new(provider.clone()),
            )
            .config(config.clone())
            .seed(i as u64)
            .build()
            .expect("valid config")
        })
        .collect();
    let handles: Vec<_> = engines.iter().map(Engine::start).collect();

    let done = Arc::new(AtomicBool::new(false));
    let monitor = spawn_monitor(Arc::clone(&stores[0]), Arc::clone(&done));
    // Calls arrive while the engines dispatch, through every engine.
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let plan: Vec<u32> = (0..CALLS)
        .map(|_| skewed_number(&mut rng, NUMBERS))
        .collect();
    let mut creators = tokio::task::JoinSet::new();
    for (i, chunk) in plan.chunks(CALLS as usize / ENGINES).enumerate() {
        let engine = engines[i % ENGINES].clone();
        let chunk = chunk.to_vec();
        creators.spawn(async move {
            for n in chunk {
                engine
                    .create_call(NewCall::new(
                        number(n),
                        ScriptId::parse("welcomeFlow").unwrap(),
                    ))
                    .await
                    .expect("create");
            }
        });
    }
    creators.join_all().await;
    until_all_terminal(&stores[0], started).await;
    for handle in handles {
        handle.shutdown().await;
    }
    done.store(true, Ordering::Relaxed);
    let samples = monitor.await.expect("monitor");

    let audit = audit(&stores[0], CAP).await;
    assert_counts_exact(&stores[0]).await;
    // Every claim was dialled exactly once: one dial request per history row.
    assert_eq!(provider.requests(), audit.claims as u64);
    // Every call the provider started is a real (not given back) dial in
    // the history, and the provider never started one attempt twice.
    let real_dials: Vec<(Uuid, i32)> =
        sqlx::query_as("SELECT call_id, attempt FROM call_attempts WHERE outcome <> 'CAPACITY'")
            .fetch_all(stores[0].pool())
            .await
            .unwrap();
    let started_calls = provider.started_calls();
    let mut seen = std::collections::HashSet::new();
    for call in &started_calls {
        assert!(seen.insert(call.attempt), "dialled twice: {call:?}");
        assert!(
            real_dials.contains(&(call.attempt.call_id.0, call.attempt.attempt as i32)),
            "started but not a recorded dial: {call:?}"
        );
    }
    let counts = stores[0].counts().await.unwrap();
    assert_eq!(counts.total(), u64::from(CALLS));
    println!(
        "{CALLS} calls through {ENGINES} engines: {} claims ({} given back), {} started, peak {} in flight, {counts:?}, {samples} monitor samples, {:?}",
        audit.claims,
        audit.capacity_give_backs,
        started_calls.len(),
        audit.peak_in_flight,
        started.elapsed()
    );
}
