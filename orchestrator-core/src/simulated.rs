//! `SimulatedProvider`: a seeded stand-in for an AI-call provider that places
//! no real calls. It answers dial requests after a latency, "talks" for a call
//! duration, then reports an outcome through the engine's webhook intake by
//! itself, so an embedded engine works with no other setup. Faults (5xx, 429,
//! timeouts, lost, duplicate and early webhooks) are drawn from the same seed,
//! so a run replays exactly under tokio's paused clock. It can hang up a live
//! call ([`Provider::hang_up`]): the call ends at once and its webhook
//! reports `FAILED`.

use std::collections::HashMap;
use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::sync::oneshot;

use crate::call::AttemptRef;
use crate::provider::{
    DialError, DialRequest, Dialled, HangUpError, Provider, ReportedStatus, StatusReport,
    WebhookDelivery, WebhookSink,
};

/// Relative weights of the outcomes a completed dial reports.
///
/// ```
/// use orchestrator_core::{OutcomeMix, ReportedStatus};
///
/// // Three completed calls for every busy one.
/// let mix = OutcomeMix::only(ReportedStatus::Completed)
///     .with_weight(ReportedStatus::Completed, 3)
///     .with_weight(ReportedStatus::Busy, 1);
/// assert_eq!(mix.weight(ReportedStatus::Busy), 1);
/// assert_eq!(mix.weight(ReportedStatus::Failed), 0);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct OutcomeMix {
    /// Weight of `COMPLETED`.
    pub completed: u32,
    /// Weight of `FAILED`.
    pub failed: u32,
    /// Weight of `BUSY`.
    pub busy: u32,
    /// Weight of `NO_ANSWER`.
    pub no_answer: u32,
    /// Weight of `VOICEMAIL`.
    pub voicemail: u32,
    /// Weight of `TRANSIENT`.
    pub transient: u32,
    /// Weight of `BAD_NUMBER`.
    pub bad_number: u32,
    /// Weight of `ACCOUNT_ERROR`.
    pub account_error: u32,
    /// Weight of `CAPACITY`.
    pub capacity: u32,
}

impl OutcomeMix {
    /// Every weight 0; build a mix from it with [`with_weight`](Self::with_weight).
    /// A mix left all zero reports `COMPLETED`.
    #[must_use]
    pub fn zero() -> Self {
        Self {
            completed: 0,
            failed: 0,
            busy: 0,
            no_answer: 0,
            voicemail: 0,
            transient: 0,
            bad_number: 0,
            account_error: 0,
            capacity: 0,
        }
    }

    /// Every dial reports `status`.
    #[must_use]
    pub fn only(status: ReportedStatus) -> Self {
        Self::zero().with_weight(status, 1)
    }

    /// This mix with `status` weighing `weight`.
    #[must_use]
    pub fn with_weight(mut self, status: ReportedStatus, weight: u32) -> Self {
        *self.slot(status) = weight;
        self
    }

    /// The weight of `status`.
    #[must_use]
    pub fn weight(&self, status: ReportedStatus) -> u32 {
        let mut mix = *self;
        *mix.slot(status)
    }

    fn slot(&mut self, status: ReportedStatus) -> &mut u32 {
        match status {
            ReportedStatus::Completed => &mut self.completed,
            ReportedStatus::Failed => &mut self.failed,
            ReportedStatus::Busy => &mut self.busy,
            ReportedStatus::NoAnswer => &mut self.no_answer,
            ReportedStatus::Voicemail => &mut self.voicemail,
            ReportedStatus::Transient => &mut self.transient,
            ReportedStatus::BadNumber => &mut self.bad_number,
            ReportedStatus::AccountError => &mut self.account_error,
            ReportedStatus::Capacity => &mut self.capacity,
        }
    }

    /// Draws one outcome with these weights; `COMPLETED` when every weight is 0.
    pub fn pick(&self, rng: &mut impl Rng) -> ReportedStatus {
        // The generic four first, so mixes without the others draw exactly
        // as before they existed.
        let weighted = [
            ReportedStatus::Completed,
            ReportedStatus::Failed,
            ReportedStatus::Busy,
            ReportedStatus::NoAnswer,
            ReportedStatus::Voicemail,
            ReportedStatus::Transient,
            ReportedStatus::BadNumber,
            ReportedStatus::AccountError,
            ReportedStatus::Capacity,
        ]
        .map(|status| (self.weight(status), status));
        let total: u32 = weighted.iter().map(|(weight, _)| weight).sum();
        if total == 0 {
            return ReportedStatus::Completed;
        }
        let mut roll = rng.random_range(0..total);
        for (weight, status) in weighted {
            if roll < weight {
                return status;
            }
            roll -= weight;
        }
        ReportedStatus::Completed
    }
}

impl Default for OutcomeMix {
    /// 85 % completed, 5 % each of failed, busy and no answer.
    fn default() -> Self {
        Self::zero()
            .with_weight(ReportedStatus::Completed, 85)
            .with_weight(ReportedStatus::Failed, 5)
            .with_weight(ReportedStatus::Busy, 5)
            .with_weight(ReportedStatus::NoAnswer, 5)
    }
}

/// Fault probabilities, each a fraction in `0.0..=1.0`, drawn per dial or per webhook.
/// The default is no faults.
///
/// ```
/// use std::time::Duration;
/// use orchestrator_core::Faults;
///
/// let faults = Faults::default()
///     .with_server_error(0.05)
///     .with_at_capacity(0.05, Some(Duration::from_millis(250)))
///     .with_lost_webhook(0.01);
/// assert_eq!(faults.server_error, 0.05);
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct Faults {
    /// The dial answers 503 (retryable).
    pub server_error: f64,
    /// The dial answers 429 (at capacity).
    pub at_capacity: f64,
    /// `Retry-After` sent with a 429.
    pub retry_after: Option<Duration>,
    /// The dial answers 422 (permanent).
    pub permanent_error: f64,
    /// The dial hangs for `timeout_after` and fails as a timeout; in half of
    /// these the provider had in fact started the call (and will call back).
    pub timeout: f64,
    /// How long a timing-out dial hangs.
    pub timeout_after: Duration,
    /// The webhook is never sent.
    pub lost_webhook: f64,
    /// The webhook is sent twice.
    pub duplicate_webhook: f64,
    /// The webhook is sent before the dial's 202 returns.
    pub early_webhook: f64,
}

/// How the simulated provider behaves.
///
/// ```
/// use std::time::Duration;
/// use orchestrator_core::{Faults, SimulationConfig};
///
/// let config = SimulationConfig::default()
///     .with_seed(42)
///     .with_call_duration(Duration::from_millis(100)..=Duration::from_millis(600))
///     .with_faults(Faults::default().with_duplicate_webhook(0.05));
/// assert_eq!(config.seed, 42);
/// ```
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct SimulationConfig {
    /// Seed of every random draw.
    pub seed: u64,
    /// Time to answer a dial request, drawn uniformly.
    pub dial_latency: RangeInclusive<Duration>,
    /// Time from an accepted dial to its webhook, drawn uniformly.
    pub call_duration: RangeInclusive<Duration>,
    /// Outcome weights.
    pub outcomes: OutcomeMix,
    /// Fault probabilities.
    pub faults: Faults,
}

impl Default for SimulationConfig {
    /// Seed 0, 20–200 ms to answer, calls of 1–5 s, [`OutcomeMix::default`], no faults.
    fn default() -> Self {
        Self {
            seed: 0,
            dial_latency: Duration::from_millis(20)..=Duration::from_millis(200),
            call_duration: Duration::from_secs(1)..=Duration::from_secs(5),
            outcomes: OutcomeMix::default(),
            faults: Faults::default(),
        }
    }
}

impl Faults {
    /// These faults, with this fraction of dials answered 503 (retryable).
    #[must_use]
    pub fn with_server_error(mut self, probability: f64) -> Self {
        self.server_error = probability;
        self
    }

    /// These faults, with this fraction of dials answered 429 (at capacity),
    /// sending `retry_after` as `Retry-After`.
    #[must_use]
    pub fn with_at_capacity(mut self, probability: f64, retry_after: Option<Duration>) -> Self {
        self.at_capacity = probability;
        self.retry_after = retry_after;
        self
    }

    /// These faults, with this fraction of dials answered 422 (permanent).
    #[must_use]
    pub fn with_permanent_error(mut self, probability: f64) -> Self {
        self.permanent_error = probability;
        self
    }

    /// These faults, with this fraction of dials hanging for `after` and then
    /// failing as a timeout.
    #[must_use]
    pub fn with_timeout(mut self, probability: f64, after: Duration) -> Self {
        self.timeout = probability;
        self.timeout_after = after;
        self
    }

    /// These faults, with this fraction of webhooks never sent.
    #[must_use]
    pub fn with_lost_webhook(mut self, probability: f64) -> Self {
        self.lost_webhook = probability;
        self
    }

    /// These faults, with this fraction of webhooks sent twice.
    #[must_use]
    pub fn with_duplicate_webhook(mut self, probability: f64) -> Self {
        self.duplicate_webhook = probability;
        self
    }

    /// These faults, with this fraction of webhooks sent before the dial's 202.
    #[must_use]
    pub fn with_early_webhook(mut self, probability: f64) -> Self {
        self.early_webhook = probability;
        self
    }
}

impl SimulationConfig {
    /// This configuration with the seed of every random draw.
    #[must_use]
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// This configuration with the range of times to answer a dial.
    #[must_use]
    pub fn with_dial_latency(mut self, latency: RangeInclusive<Duration>) -> Self {
        self.dial_latency = latency;
        self
    }

    /// This configuration with the range of times from an accepted dial to its webhook.
    #[must_use]
    pub fn with_call_duration(mut self, duration: RangeInclusive<Duration>) -> Self {
        self.call_duration = duration;
        self
    }

    /// This configuration with the outcome weights.
    #[must_use]
    pub fn with_outcomes(mut self, outcomes: OutcomeMix) -> Self {
        self.outcomes = outcomes;
        self
    }

    /// This configuration with the fault probabilities.
    #[must_use]
    pub fn with_faults(mut self, faults: Faults) -> Self {
        self.faults = faults;
        self
    }
}

/// One call the simulated provider started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StartedCall {
    /// Our call and attempt (the idempotency key).
    pub attempt: AttemptRef,
    /// The provider's id for it: `sim-` and 32 lowercase hex digits (128
    /// bits drawn from the seeded generator), the same for a seed on every run.
    pub provider_call_id: String,
}

struct State {
    rng: ChaCha8Rng,
    config: SimulationConfig,
    /// Every engine bound to this provider, newest first; closed ones are dropped.
    sinks: Vec<WebhookSink>,
    /// Idempotency key → provider call id, so a re-sent attempt starts nothing new.
    by_key: HashMap<AttemptRef, String>,
    started: Vec<StartedCall>,
    /// Calls still talking, by provider id: a hang-up ends one through its sender.
    live: HashMap<String, oneshot::Sender<()>>,
    requests: u64,
    webhooks_sent: u64,
    hang_ups: u64,
}

/// What one dial request will do, drawn up front so draws stay in a fixed order.
enum Plan {
    Reject(DialError),
    Timeout { started: bool },
    Accept,
}

struct Draw {
    latency: Duration,
    plan: Plan,
    duration: Duration,
    status: ReportedStatus,
    lost: bool,
    duplicate: bool,
    early: bool,
}

/// A seeded simulated provider. Cheap to clone: clones share state.
#[derive(Clone)]
pub struct SimulatedProvider {
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for SimulatedProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimulatedProvider").finish_non_exhaustive()
    }
}

impl SimulatedProvider {
    /// A provider behaving as `config` says.
    #[must_use]
    pub fn new(config: SimulationConfig) -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                rng: ChaCha8Rng::seed_from_u64(config.seed),
                config,
                sinks: Vec::new(),
                by_key: HashMap::new(),
                started: Vec::new(),
                live: HashMap::new(),
                requests: 0,
                webhooks_sent: 0,
                hang_ups: 0,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Replaces the fault probabilities from now on (e.g. to turn faults off).
    pub fn set_faults(&self, faults: Faults) {
        self.lock().config.faults = faults;
    }

    /// Every call the provider started, in order.
    #[must_use]
    pub fn started_calls(&self) -> Vec<StartedCall> {
        self.lock().started.clone()
    }

    /// Dial requests received, including rejected and re-sent ones.
    #[must_use]
    pub fn requests(&self) -> u64 {
        self.lock().requests
    }

    /// Webhooks delivered (duplicates included).
    #[must_use]
    pub fn webhooks_sent(&self) -> u64 {
        self.lock().webhooks_sent
    }

    /// Live calls ended by [`Provider::hang_up`].
    #[must_use]
    pub fn hang_ups(&self) -> u64 {
        self.lock().hang_ups
    }

    fn draw(&self) -> Draw {
        let mut state = self.lock();
        let State { rng, config, .. } = &mut *state;
        let faults = &config.faults;
        let latency = uniform(rng, &config.dial_latency);
        let roll: f64 = rng.random();
        let mut threshold = faults.server_error;
        let plan = if roll < threshold {
            Plan::Reject(DialError::Retryable {
                reason: "provider 503".into(),
            })
        } else if roll < {
            threshold += faults.at_capacity;
            threshold
        } {
            Plan::Reject(DialError::AtCapacity {
                retry_after: faults.retry_after,
            })
        } else if roll < {
            threshold += faults.permanent_error;
            threshold
        } {
            Plan::Reject(DialError::Permanent {
                reason: "provider 422: number not reachable".into(),
            })
        } else if roll < threshold + faults.timeout {
            Plan::Timeout {
                started: rng.random_bool(0.5),
            }
        } else {
            Plan::Accept
        };
        let duration = uniform(rng, &config.call_duration);
        let status = config.outcomes.pick(rng);
        let lost = rng.random::<f64>() < faults.lost_webhook;
        let duplicate = rng.random::<f64>() < faults.duplicate_webhook;
        let early = rng.random::<f64>() < faults.early_webhook;
        Draw {
            latency,
            plan,
            duration,
            status,
            lost,
            duplicate,
            early,
        }
    }

    /// Starts the call for `attempt` unless this key started one already;
    /// returns the provider id and whether it is new.
    fn start(&self, attempt: AttemptRef) -> (String, bool) {
        let mut state = self.lock();
        if let Some(id) = state.by_key.get(&attempt) {
            return (id.clone(), false);
        }
        // 128 random bits from the seeded generator: a run replays with its
        // seed, yet nobody without the seed can guess an id and settle a
        // call with a forged webhook.
        let id = format!("sim-{:032x}", state.rng.random::<u128>());
        state.by_key.insert(attempt, id.clone());
        state.started.push(StartedCall {
            attempt,
            provider_call_id: id.clone(),
        });
        (id, true)
    }

    async fn deliver(&self, attempt: AttemptRef, report: StatusReport, copies: u32) {
        for _ in 0..copies {
            let sink = {
                let mut state = self.lock();
                state.webhooks_sent += 1;
                // Like a load balancer in front of several engines: any live
                // engine may receive the webhook.
                state.sinks.retain(|sink| !sink.0.is_closed());
                state.sinks.first().cloned()
            };
            // No engine running: the webhook is lost, as it would be if nobody
            // listened at the webhook URL.
            if let Some(sink) = sink {
                let _ = sink
                    .deliver(WebhookDelivery {
                        report: report.clone(),
                        attempt: Some(attempt),
                    })
                    .await;
            }
        }
    }

    /// Lets the call talk for its drawn duration (or until it is hung up),
    /// then sends its webhook, unless the draw lost it.
    fn call_back_later(&self, attempt: AttemptRef, provider_call_id: String, draw: &Draw) {
        let provider = self.clone();
        let mut report = report(provider_call_id.clone(), draw);
        let (delay, copies) = (draw.duration, if draw.duplicate { 2 } else { 1 });
        let lost = draw.lost;
        let (hang_up, hung_up) = oneshot::channel();
        self.lock().live.insert(provider_call_id.clone(), hang_up);
        let started = tokio::time::Instant::now();
        tokio::spawn(async move {
            let hung_up = tokio::select! {
                biased;
                Ok(()) = hung_up => true,
                // A hang-up at the very instant the call ended took the
                // entry first: it counts as the hang-up it was counted as.
                () = tokio::time::sleep(delay) => provider.lock().live.remove(&provider_call_id).is_none(),
            };
            if hung_up {
                // The call ends now, as a failed one, having talked for as
                // long as it did.
                report.status = ReportedStatus::Failed;
                report.duration_sec =
                    Some(u32::try_from(started.elapsed().as_secs()).unwrap_or(u32::MAX));
            }
            if !lost {
                provider.deliver(attempt, report, copies).await;
            }
        });
    }
}

fn report(provider_call_id: String, draw: &Draw) -> StatusReport {
    StatusReport {
        provider_call_id,
        status: draw.status,
        duration_sec: Some(u32::try_from(draw.duration.as_secs()).unwrap_or(u32::MAX)),
        completed_at: None,
        reason: None,
    }
}

fn uniform(rng: &mut ChaCha8Rng, range: &RangeInclusive<Duration>) -> Duration {
    let (low, high) = (range.start().as_micros(), range.end().as_micros());
    if high <= low {
        return *range.start();
    }
    let micros = rng.random_range(low..=high);
    Duration::from_micros(u64::try_from(micros).unwrap_or(u64::MAX))
}

#[async_trait]
impl Provider for SimulatedProvider {
    async fn start_call(&self, request: &DialRequest) -> Result<Dialled, DialError> {
        let draw = self.draw();
        let attempt = request.attempt;
        self.lock().requests += 1;
        tokio::time::sleep(draw.latency).await;
        match draw.plan {
            Plan::Reject(error) => Err(error),
            Plan::Timeout { started } => {
                if started {
                    let (id, new) = self.start(attempt);
                    if new {
                        self.call_back_later(attempt, id, &draw);
                    }
                }
                let hang = self.lock().config.faults.timeout_after;
                tokio::time::sleep(hang).await;
                Err(DialError::Retryable {
                    reason: "provider timeout".into(),
                })
            }
            Plan::Accept => {
                let (provider_call_id, new) = self.start(attempt);
                if new {
                    if draw.early && !draw.lost {
                        let report = report(provider_call_id.clone(), &draw);
                        self.deliver(attempt, report, 1).await;
                    } else {
                        self.call_back_later(attempt, provider_call_id.clone(), &draw);
                    }
                }
                Ok(Dialled { provider_call_id })
            }
        }
    }

    /// Ends the live call `provider_call_id` at once: its webhook (unless
    /// the draw lost it) reports `FAILED` now instead of its drawn outcome
    /// later. A call that has ended, or was never started, is `Ok` and
    /// changes nothing. Draws nothing, so a run with hang-ups replays
    /// exactly under its seed.
    async fn hang_up(
        &self,
        provider_call_id: &str,
        _attempt: AttemptRef,
    ) -> Result<(), HangUpError> {
        let mut state = self.lock();
        if let Some(live) = state.live.remove(provider_call_id) {
            state.hang_ups += 1;
            // The talking task reads a missing entry as a hang-up too, so
            // it need not be listening any more.
            let _ = live.send(());
        }
        Ok(())
    }

    fn bind_webhooks(&self, sink: WebhookSink) {
        self.lock().sinks.insert(0, sink);
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};
    use tokio::sync::mpsc;
    use tokio::time::Instant;

    use super::*;
    use crate::call::CallId;
    use crate::phone::PhoneNumber;

    const ALL_REPORTED: [ReportedStatus; 4] = ReportedStatus::GENERIC;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn exactly(duration: Duration) -> RangeInclusive<Duration> {
        duration..=duration
    }

    fn request(n: u8, attempt: u32) -> DialRequest {
        let at = Utc.with_ymd_and_hms(2025, 7, 20, 10, 0, 0).unwrap();
        DialRequest {
            attempt: AttemptRef {
                call_id: CallId::v7_from_parts(at, [n; 10]),
                attempt,
            },
            to: PhoneNumber::parse("+14155550100").unwrap(),
            script_id: "welcomeFlow".into(),
            metadata: None,
        }
    }

    /// A provider answering in exactly 1 s, whose calls last exactly 10 s and
    /// report `COMPLETED`, with `faults`.
    fn provider(faults: Faults) -> SimulatedProvider {
        SimulatedProvider::new(
            SimulationConfig::default()
                .with_seed(5)
                .with_dial_latency(exactly(secs(1)))
                .with_call_duration(exactly(secs(10)))
                .with_outcomes(OutcomeMix::only(ReportedStatus::Completed))
                .with_faults(faults),
        )
    }

    /// Binds an engine-side queue to `provider` and returns its receiving end.
    fn bind(provider: &SimulatedProvider) -> mpsc::Receiver<WebhookDelivery> {
        let (sink, webhooks) = mpsc::channel(16);
        provider.bind_webhooks(WebhookSink(sink));
        webhooks
    }

    /// The webhooks delivered once every call the provider started has called back.
    async fn delivered(webhooks: &mut mpsc::Receiver<WebhookDelivery>) -> Vec<WebhookDelivery> {
        tokio::time::sleep(secs(60)).await;
        let mut all = Vec::new();
        while let Ok(delivery) = webhooks.try_recv() {
            all.push(delivery);
        }
        all
    }

    // ------------------------------------------------------ outcome mix

    #[test]
    fn an_outcome_mix_holds_one_weight_per_status() {
        for status in ALL_REPORTED {
            let mix = OutcomeMix::zero().with_weight(status, 7);
            for other in ALL_REPORTED {
                let expected = if other == status { 7 } else { 0 };
                assert_eq!(mix.weight(other), expected, "{status:?} {other:?}");
            }
            assert_eq!(
                OutcomeMix::only(status),
                OutcomeMix::zero().with_weight(status, 1)
            );
        }
        let default = OutcomeMix::default();
        let weights = ALL_REPORTED.map(|status| default.weight(status));
        assert_eq!(weights, [85, 5, 5, 5]);
    }

    #[test]
    fn a_mix_with_one_weight_always_picks_that_status_and_an_empty_one_completes() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for status in ALL_REPORTED {
            let mix = OutcomeMix::only(status);
            assert!((0..50).all(|_| mix.pick(&mut rng) == status), "{status:?}");
        }
        let empty = OutcomeMix::zero();
        assert!((0..50).all(|_| empty.pick(&mut rng) == ReportedStatus::Completed));
    }

    #[test]
    fn picks_follow_the_weights() {
        let mix = OutcomeMix::zero()
            .with_weight(ReportedStatus::Completed, 1)
            .with_weight(ReportedStatus::Failed, 2)
            .with_weight(ReportedStatus::Busy, 3)
            .with_weight(ReportedStatus::NoAnswer, 4);
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let mut seen = HashMap::new();
        for _ in 0..10_000 {
            *seen.entry(mix.pick(&mut rng)).or_insert(0u32) += 1;
        }
        for (status, weight) in ALL_REPORTED.into_iter().zip(1..) {
            let share = seen.get(&status).copied().unwrap_or(0);
            let expected = 1_000 * weight;
            assert!(
                share.abs_diff(expected) < 200,
                "{status:?}: {share} of 10000, expected about {expected}"
            );
        }
    }

    // ---------------------------------------------------- configuration

    #[test]
    fn with_methods_set_their_fields() {
        let faults = Faults::default()
            .with_server_error(0.1)
            .with_at_capacity(0.2, Some(secs(3)))
            .with_permanent_error(0.3)
            .with_timeout(0.4, secs(4))
            .with_lost_webhook(0.5)
            .with_duplicate_webhook(0.6)
            .with_early_webhook(0.7);
        assert_eq!(
            faults,
            Faults {
                server_error: 0.1,
                at_capacity: 0.2,
                retry_after: Some(secs(3)),
                permanent_error: 0.3,
                timeout: 0.4,
                timeout_after: secs(4),
                lost_webhook: 0.5,
                duplicate_webhook: 0.6,
                early_webhook: 0.7,
            }
        );
        let outcomes = OutcomeMix::only(ReportedStatus::Busy);
        let config = SimulationConfig::default()
            .with_seed(9)
            .with_dial_latency(secs(1)..=secs(2))
            .with_call_duration(secs(3)..=secs(4))
            .with_outcomes(outcomes)
            .with_faults(faults.clone());
        assert_eq!(
            config,
            SimulationConfig {
                seed: 9,
                dial_latency: secs(1)..=secs(2),
                call_duration: secs(3)..=secs(4),
                outcomes,
                faults,
            }
        );
    }

    #[test]
    fn uniform_draws_spread_over_the_range_and_a_point_range_is_its_point() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let draws: Vec<Duration> = (0..100)
            .map(|_| uniform(&mut rng, &(secs(1)..=secs(3))))
            .collect();
        assert!(
            draws.iter().all(|d| (secs(1)..=secs(3)).contains(d)),
            "{draws:?}"
        );
        assert!(draws.iter().any(|d| *d < secs(2)) && draws.iter().any(|d| *d > secs(2)));
        assert_eq!(uniform(&mut rng, &exactly(secs(5))), secs(5));
        #[allow(clippy::reversed_empty_ranges)]
        let reversed = secs(3)..=secs(1);
        assert_eq!(uniform(&mut rng, &reversed), secs(3));
    }

    // ------------------------------------------------------------ dials

    #[tokio::test(start_paused = true)]
    async fn an_accepted_dial_answers_after_the_latency_and_calls_back_after_the_duration() {
        let provider = provider(Faults::default());
        let mut webhooks = bind(&provider);
        let started = Instant::now();
        let dialled = provider.start_call(&request(1, 1)).await.expect("accepted");
        assert_eq!(started.elapsed(), secs(1));
        assert_eq!(
            provider.started_calls(),
            [StartedCall {
                attempt: request(1, 1).attempt,
                provider_call_id: dialled.provider_call_id.clone(),
            }]
        );

        let webhook = tokio::time::timeout(secs(60), webhooks.recv())
            .await
            .expect("a webhook within the call's duration")
            .expect("the sink is open");
        assert_eq!(started.elapsed(), secs(11));
        assert_eq!(
            webhook,
            WebhookDelivery {
                report: StatusReport {
                    provider_call_id: dialled.provider_call_id,
                    status: ReportedStatus::Completed,
                    duration_sec: Some(10),
                    completed_at: None,
                    reason: None,
                },
                attempt: Some(request(1, 1).attempt),
            }
        );
        assert_eq!((provider.requests(), provider.webhooks_sent()), (1, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_re_sent_attempt_starts_nothing_new() {
        let provider = provider(Faults::default());
        let mut webhooks = bind(&provider);
        let first = provider.start_call(&request(1, 1)).await.unwrap();
        let again = provider.start_call(&request(1, 1)).await.unwrap();
        let next = provider.start_call(&request(1, 2)).await.unwrap();
        assert_eq!(first, again);
        assert_ne!(first, next);
        assert_eq!(provider.started_calls().len(), 2);
        assert_eq!(provider.requests(), 3);
        assert_eq!(delivered(&mut webhooks).await.len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn certain_faults_answer_as_the_provider_would() {
        let cases = [
            (
                Faults::default().with_server_error(1.0),
                DialError::Retryable {
                    reason: "provider 503".into(),
                },
            ),
            (
                Faults::default().with_at_capacity(1.0, Some(secs(2))),
                DialError::AtCapacity {
                    retry_after: Some(secs(2)),
                },
            ),
            (
                Faults::default().with_permanent_error(1.0),
                DialError::Permanent {
                    reason: "provider 422: number not reachable".into(),
                },
            ),
        ];
        for (faults, expected) in cases {
            let provider = provider(faults);
            let mut webhooks = bind(&provider);
            assert_eq!(provider.start_call(&request(1, 1)).await, Err(expected));
            assert!(provider.started_calls().is_empty());
            assert!(delivered(&mut webhooks).await.is_empty());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_timeout_hangs_then_fails_and_sometimes_the_call_started_anyway() {
        let provider = provider(Faults::default().with_timeout(1.0, secs(4)));
        let mut webhooks = bind(&provider);
        for n in 0..20 {
            let started = Instant::now();
            assert_eq!(
                provider.start_call(&request(n, 1)).await,
                Err(DialError::Retryable {
                    reason: "provider timeout".into()
                })
            );
            assert_eq!(started.elapsed(), secs(5), "latency, then the hang");
        }
        let started = provider.started_calls().len();
        assert!((3..=17).contains(&started), "{started} of 20 started");
        assert_eq!(delivered(&mut webhooks).await.len(), started);
    }

    /// The four dial faults are drawn from one roll, each taking its own
    /// share: with a quarter each, no dial is accepted.
    #[tokio::test(start_paused = true)]
    async fn dial_faults_take_their_shares_of_one_roll() {
        let provider = provider(
            Faults::default()
                .with_server_error(0.25)
                .with_at_capacity(0.25, None)
                .with_permanent_error(0.25)
                .with_timeout(0.25, Duration::ZERO),
        );
        let mut kinds = HashMap::new();
        for n in 0..200 {
            let kind = match provider.start_call(&request(n, 1)).await {
                Ok(_) => "accepted",
                Err(DialError::Retryable { reason }) if reason == "provider 503" => "503",
                Err(DialError::Retryable { .. }) => "timeout",
                Err(DialError::AtCapacity { .. }) => "429",
                Err(DialError::Permanent { .. }) => "422",
                Err(DialError::Account { .. }) => "account",
            };
            *kinds.entry(kind).or_insert(0u32) += 1;
        }
        assert_eq!(kinds.get("accepted"), None, "{kinds:?}");
        for kind in ["503", "429", "422", "timeout"] {
            let share = kinds.get(kind).copied().unwrap_or(0);
            assert!(
                (25..=75).contains(&share),
                "{kind}: {share} of 200 ({kinds:?})"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn set_faults_changes_the_answers_from_then_on() {
        let provider = provider(Faults::default().with_server_error(1.0));
        assert!(provider
            .start_call(&request(1, 1))
            .await
            .is_err_and(|e| matches!(e, DialError::Retryable { .. })));
        provider.set_faults(Faults::default());
        assert!(provider
            .start_call(&request(1, 2))
            .await
            .is_ok_and(|d| !d.provider_call_id.is_empty()));
    }

    // --------------------------------------------------------- webhooks

    #[tokio::test(start_paused = true)]
    async fn a_lost_webhook_is_never_sent_even_when_early() {
        let faults = Faults::default()
            .with_lost_webhook(1.0)
            .with_early_webhook(1.0);
        let provider = provider(faults);
        let mut webhooks = bind(&provider);
        provider.start_call(&request(1, 1)).await.unwrap();
        assert!(delivered(&mut webhooks).await.is_empty());
        assert_eq!(provider.webhooks_sent(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_duplicate_webhook_is_sent_twice_and_counted_twice() {
        let provider = provider(Faults::default().with_duplicate_webhook(1.0));
        let mut webhooks = bind(&provider);
        provider.start_call(&request(1, 1)).await.unwrap();
        let sent = delivered(&mut webhooks).await;
        assert_eq!(sent.len(), 2);
        assert_eq!(sent[0], sent[1]);
        assert_eq!(provider.webhooks_sent(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn an_early_webhook_arrives_before_the_dial_answers() {
        let provider = provider(Faults::default().with_early_webhook(1.0));
        let mut webhooks = bind(&provider);
        let dialled = provider.start_call(&request(1, 1)).await.unwrap();
        let early = webhooks.try_recv().expect("delivered before the answer");
        assert_eq!(early.report.provider_call_id, dialled.provider_call_id);
        assert!(delivered(&mut webhooks).await.is_empty(), "sent once");
    }

    #[tokio::test(start_paused = true)]
    async fn webhooks_go_to_the_newest_live_engine_and_are_lost_without_one() {
        let provider = provider(Faults::default());
        let mut older = bind(&provider);
        let newer = bind(&provider);
        drop(newer);
        provider.start_call(&request(1, 1)).await.unwrap();
        assert_eq!(
            delivered(&mut older).await.len(),
            1,
            "the closed sink is skipped"
        );

        drop(older);
        provider.start_call(&request(2, 1)).await.unwrap();
        tokio::time::sleep(secs(60)).await;
        assert_eq!(provider.webhooks_sent(), 2, "sent, though nobody listened");
    }

    // --------------------------------------------------------- hang-ups

    #[tokio::test(start_paused = true)]
    async fn a_hung_up_call_ends_at_once_and_its_webhook_reports_failed() {
        let provider = provider(Faults::default());
        let mut webhooks = bind(&provider);
        let attempt = request(1, 1).attempt;
        let dialled = provider.start_call(&request(1, 1)).await.expect("accepted");
        tokio::time::sleep(secs(3)).await;
        let hung_up = Instant::now();
        assert_eq!(
            provider.hang_up(&dialled.provider_call_id, attempt).await,
            Ok(())
        );
        let webhook = webhooks.recv().await.expect("the sink is open");
        assert_eq!(hung_up.elapsed(), Duration::ZERO, "at once");
        assert_eq!(
            webhook,
            WebhookDelivery {
                report: StatusReport {
                    provider_call_id: dialled.provider_call_id.clone(),
                    status: ReportedStatus::Failed,
                    duration_sec: Some(3),
                    completed_at: None,
                    reason: None,
                },
                attempt: Some(attempt),
            }
        );
        assert!(
            delivered(&mut webhooks).await.is_empty(),
            "no later webhook"
        );
        assert_eq!((provider.hang_ups(), provider.webhooks_sent()), (1, 1));
        assert_eq!(
            provider.hang_up(&dialled.provider_call_id, attempt).await,
            Ok(()),
            "hanging up again changes nothing"
        );
        assert_eq!(provider.hang_ups(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn hanging_up_an_ended_or_unknown_call_is_ok_and_changes_nothing() {
        let provider = provider(Faults::default());
        let mut webhooks = bind(&provider);
        let attempt = request(1, 1).attempt;
        let dialled = provider.start_call(&request(1, 1)).await.expect("accepted");
        let ended = delivered(&mut webhooks).await;
        assert_eq!(ended.len(), 1);
        assert_eq!(ended[0].report.status, ReportedStatus::Completed);
        assert_eq!(
            provider.hang_up(&dialled.provider_call_id, attempt).await,
            Ok(())
        );
        assert_eq!(provider.hang_up("sim-unknown", attempt).await, Ok(()));
        assert!(delivered(&mut webhooks).await.is_empty());
        assert_eq!((provider.hang_ups(), provider.webhooks_sent()), (0, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_up_call_keeps_its_webhook_faults() {
        let attempt = request(1, 1).attempt;
        let lost = provider(Faults::default().with_lost_webhook(1.0));
        let duplicated = provider(Faults::default().with_duplicate_webhook(1.0));
        for (faulty, copies) in [(lost, 0), (duplicated, 2)] {
            let mut webhooks = bind(&faulty);
            let dialled = faulty.start_call(&request(1, 1)).await.expect("accepted");
            faulty
                .hang_up(&dialled.provider_call_id, attempt)
                .await
                .expect("hung up");
            let sent = delivered(&mut webhooks).await;
            assert_eq!(sent.len(), copies);
            assert!(sent
                .iter()
                .all(|webhook| webhook.report.status == ReportedStatus::Failed));
            assert_eq!(faulty.hang_ups(), 1);
        }
    }

    /// A call that timed out at the dial but started anyway can be hung up too.
    #[tokio::test(start_paused = true)]
    async fn a_call_started_by_a_timed_out_dial_can_be_hung_up() {
        let provider = provider(Faults::default().with_timeout(1.0, secs(4)));
        let mut webhooks = bind(&provider);
        for n in 0..10 {
            let _ = provider.start_call(&request(n, 1)).await;
            // Still talking: the dial hung up after 5 s of a 10 s call.
            if let Some(call) = provider.started_calls().last() {
                provider
                    .hang_up(&call.provider_call_id, call.attempt)
                    .await
                    .expect("hung up");
            }
        }
        let started = provider.started_calls();
        assert!(!started.is_empty());
        assert_eq!(provider.hang_ups(), started.len() as u64);
        let sent = delivered(&mut webhooks).await;
        assert_eq!(sent.len(), started.len());
        assert!(sent
            .iter()
            .all(|webhook| webhook.report.status == ReportedStatus::Failed));
    }

    /// Hang-ups draw nothing from the seed: the dials after one go as they
    /// would have gone without it.
    #[tokio::test(start_paused = true)]
    async fn hang_ups_leave_the_seeded_draws_alone() {
        async fn run(hang_up: bool) -> (Vec<String>, Vec<ReportedStatus>) {
            let provider = SimulatedProvider::new(
                SimulationConfig::default()
                    .with_seed(11)
                    .with_faults(Faults::default().with_server_error(0.3)),
            );
            let mut webhooks = bind(&provider);
            let mut results = Vec::new();
            for n in 0..6 {
                let result = provider.start_call(&request(n, 1)).await;
                if let (0, Ok(dialled)) = (n, &result) {
                    if hang_up {
                        provider
                            .hang_up(&dialled.provider_call_id, request(n, 1).attempt)
                            .await
                            .expect("hung up");
                    }
                }
                results.push(result.map_or_else(|e| e.to_string(), |d| d.provider_call_id));
            }
            let mut statuses: Vec<(String, ReportedStatus)> = delivered(&mut webhooks)
                .await
                .into_iter()
                .map(|webhook| (webhook.report.provider_call_id, webhook.report.status))
                .collect();
            statuses.sort_by(|a, b| a.0.cmp(&b.0));
            let first = results[0].clone();
            let statuses = statuses
                .into_iter()
                .filter(|(id, _)| *id != first)
                .map(|(_, status)| status)
                .collect();
            (results, statuses)
        }
        assert_eq!(run(true).await, run(false).await);
    }

    /// The ids `seed`'s provider gives three accepted dials.
    async fn ids(seed: u64) -> Vec<String> {
        let provider = SimulatedProvider::new(
            SimulationConfig::default()
                .with_seed(seed)
                .with_faults(Faults::default().with_lost_webhook(1.0)),
        );
        let mut ids = Vec::new();
        for n in 0..3 {
            let dialled = provider.start_call(&request(n, 1)).await.expect("accepted");
            ids.push(dialled.provider_call_id);
        }
        ids
    }

    #[tokio::test(start_paused = true)]
    async fn provider_call_ids_are_128_random_bits_replayed_by_the_seed() {
        let first = ids(5).await;
        for id in &first {
            let hex = id.strip_prefix("sim-").expect("sim- prefix");
            assert_eq!(hex.len(), 32, "{id}");
            assert!(
                hex.chars()
                    .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)),
                "{id}"
            );
        }
        assert!(first[0] != first[1] && first[1] != first[2], "{first:?}");
        assert_eq!(ids(5).await, first, "the same seed gives the same ids");
        assert!(
            ids(6).await.iter().all(|id| !first.contains(id)),
            "another seed gives other ids"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_re_sent_attempt_gets_the_id_it_was_given_first() {
        let provider = SimulatedProvider::new(
            SimulationConfig::default().with_faults(Faults::default().with_lost_webhook(1.0)),
        );
        let first = provider.start_call(&request(1, 1)).await.expect("accepted");
        let again = provider.start_call(&request(1, 1)).await.expect("accepted");
        assert_eq!(again, first);
        assert_eq!(provider.started_calls().len(), 1);
    }
}
