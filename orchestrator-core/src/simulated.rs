//! `SimulatedProvider`: a seeded stand-in for an AI-call provider that places
//! no real calls. It answers dial requests after a latency, "talks" for a call
//! duration, then reports an outcome through the engine's webhook intake by
//! itself, so an embedded engine works with no other setup. Faults (5xx, 429,
//! timeouts, lost, duplicate and early webhooks) are drawn from the same seed,
//! so a run replays exactly under tokio's paused clock.

use std::collections::HashMap;
use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::call::AttemptRef;
use crate::provider::{
    DialError, DialRequest, Dialled, Provider, ReportedStatus, StatusReport, WebhookDelivery,
    WebhookSink,
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
        match status {
            ReportedStatus::Completed => self.completed,
            ReportedStatus::Failed => self.failed,
            ReportedStatus::Busy => self.busy,
            ReportedStatus::NoAnswer => self.no_answer,
        }
    }

    fn slot(&mut self, status: ReportedStatus) -> &mut u32 {
        match status {
            ReportedStatus::Completed => &mut self.completed,
            ReportedStatus::Failed => &mut self.failed,
            ReportedStatus::Busy => &mut self.busy,
            ReportedStatus::NoAnswer => &mut self.no_answer,
        }
    }

    /// Draws one outcome with these weights; `COMPLETED` when every weight is 0.
    pub fn pick(&self, rng: &mut impl Rng) -> ReportedStatus {
        let weighted = [
            (self.completed, ReportedStatus::Completed),
            (self.failed, ReportedStatus::Failed),
            (self.busy, ReportedStatus::Busy),
            (self.no_answer, ReportedStatus::NoAnswer),
        ];
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
        Self {
            completed: 85,
            failed: 5,
            busy: 5,
            no_answer: 5,
        }
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
    requests: u64,
    webhooks_sent: u64,
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
                requests: 0,
                webhooks_sent: 0,
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

    fn call_back_later(&self, attempt: AttemptRef, provider_call_id: String, draw: &Draw) {
        if draw.lost {
            return;
        }
        let provider = self.clone();
        let report = report(provider_call_id, draw);
        let (delay, copies) = (draw.duration, if draw.duplicate { 2 } else { 1 });
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            provider.deliver(attempt, report, copies).await;
        });
    }
}

fn report(provider_call_id: String, draw: &Draw) -> StatusReport {
    StatusReport {
        provider_call_id,
        status: draw.status,
        duration_sec: Some(u32::try_from(draw.duration.as_secs()).unwrap_or(u32::MAX)),
        completed_at: None,
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

    fn bind_webhooks(&self, sink: WebhookSink) {
        self.lock().sinks.insert(0, sink);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::CallId;
    use crate::phone::PhoneNumber;

    fn request(n: u8) -> DialRequest {
        DialRequest {
            attempt: AttemptRef {
                call_id: CallId(uuid::Uuid::from_bytes([n; 16])),
                attempt: 1,
            },
            to: PhoneNumber::parse("+14155550100").expect("valid number"),
            script_id: "welcomeFlow".into(),
            metadata: None,
        }
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
            let dialled = provider.start_call(&request(n)).await.expect("accepted");
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
        let first = provider.start_call(&request(1)).await.expect("accepted");
        let again = provider.start_call(&request(1)).await.expect("accepted");
        assert_eq!(again, first);
        assert_eq!(provider.started_calls().len(), 1);
    }
}
