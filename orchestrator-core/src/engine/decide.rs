//! The engine's decisions, as pure functions: what a dial's answer and what a
//! webhook's report settle an attempt to.
//!
//! Nothing here touches a store, a clock or the network: the facts come in as
//! arguments (the answer or report, the policies, the attempt, the current
//! time) and randomness comes from the `rng` passed in, which is drawn only
//! when a back-off delay is jittered. The dispatcher and the webhook intake
//! apply what these functions return, so every rule of the outcome table is
//! unit-tested here, without a store.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;

use crate::clock;
use crate::config::RedialPolicy;
use crate::provider::{DialError, Dialled, ReportedStatus, StatusReport};
use crate::retry::{RetryDecision, RetryPolicy};
use crate::store::Settlement;
use crate::validate::validate_provider_call_id;

/// The dial-outcome label of an account error (see [`DialError::Account`]).
pub(crate) const ACCOUNT: &str = "account";

/// The `lastError` of an attempt whose lease ran out without a webhook.
pub(crate) const WEBHOOK_TIMEOUT: &str = "webhook timeout";

/// What a dial's answer leads to.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum DialVerdict {
    /// The provider accepted the dial: record its id so the webhook finds the
    /// attempt. The attempt stays `IN_PROGRESS` until the webhook or its lease.
    Record {
        /// The provider's id for the attempt, validated.
        provider_call_id: String,
    },
    /// The dial did not start: settle the attempt now.
    Settle {
        /// The dial outcome for metrics: `retryable`, `capacity`, `permanent` or `account`.
        label: &'static str,
        /// What the attempt settles to.
        settlement: Settlement,
    },
}

/// What attempt `attempt` (from 1) settles to when the provider answered its
/// dial with `answer` at `now`.
///
/// - Accepted with a valid provider call id: record the id.
/// - Accepted with an invalid id (empty, too long, control characters): a
///   retryable failure, since the webhook could never be matched to it.
/// - Retryable: re-enqueue with jittered back-off, or fail once `attempt`
///   reaches the retry policy's limit ([`after_failure`]).
/// - At capacity (429): give the attempt back until `Retry-After`, or
///   `capacity_retry_after` when the provider sent none.
/// - Permanent: fail at once with the provider's reason.
pub(crate) fn dial_verdict(
    answer: Result<Dialled, DialError>,
    retry: &RetryPolicy,
    capacity_retry_after: Duration,
    attempt: u32,
    now: DateTime<Utc>,
    rng: &mut impl Rng,
) -> DialVerdict {
    let answer = answer.and_then(|dialled| {
        validate_provider_call_id(&dialled.provider_call_id)
            .map(|()| dialled)
            .map_err(|invalid| DialError::Retryable {
                reason: format!("provider answered with an invalid {invalid}"),
            })
    });
    let (label, settlement) = match answer {
        Ok(dialled) => {
            return DialVerdict::Record {
                provider_call_id: dialled.provider_call_id,
            }
        }
        Err(DialError::Retryable { reason }) => {
            ("retryable", after_failure(retry, attempt, reason, now, rng))
        }
        Err(DialError::AtCapacity { retry_after }) => (
            "capacity",
            Settlement::Capacity {
                at: now,
                retry_at: clock::add(now, retry_after.unwrap_or(capacity_retry_after)),
            },
        ),
        Err(DialError::Account { reason }) => (
            ACCOUNT,
            Settlement::Failed {
                error: reason,
                at: now,
                duration_sec: None,
            },
        ),
        Err(DialError::Permanent { reason }) => (
            "permanent",
            Settlement::Failed {
                error: reason,
                at: now,
                duration_sec: None,
            },
        ),
    };
    DialVerdict::Settle { label, settlement }
}

/// What attempt `attempt` (from 1) settles to when the provider's webhook
/// (or a status lookup) reports `report` at `now`, by disposition:
///
/// - `COMPLETED` completes the call.
/// - No contact (`BUSY`, `NO_ANSWER`, `VOICEMAIL`) fails it, unless `redial`
///   re-dials that status: then it is a retryable failure
///   ([`after_failure`]) that fails the call only once the attempts are
///   used up.
/// - `TRANSIENT` (a platform fault) is a retryable failure.
/// - `FAILED`, `BAD_NUMBER` and `ACCOUNT_ERROR` fail it at once (the caller
///   also pauses dialling on an account error).
/// - `CAPACITY` (the platform refused to start it for lack of a slot) gives
///   the attempt back, to re-dial after `capacity_retry_after`.
///
/// The `lastError` is the platform's own reason when the report carries
/// one, else the status's name. A call that ends takes its `endedAt` from
/// the report's `completedAt` (truncated to microseconds), or `now` when
/// absent, and the reported duration.
pub(crate) fn report_settlement(
    report: &StatusReport,
    redial: RedialPolicy,
    retry: &RetryPolicy,
    capacity_retry_after: Duration,
    attempt: u32,
    now: DateTime<Utc>,
    rng: &mut impl Rng,
) -> Settlement {
    let at = report.completed_at.map_or(now, clock::truncate_to_micros);
    let duration_sec = report.duration_sec;
    let error = report
        .reason
        .clone()
        .unwrap_or_else(|| report.status.as_str().to_owned());
    let failed = |error| Settlement::Failed {
        error,
        at,
        duration_sec,
    };
    match report.status {
        ReportedStatus::Completed => Settlement::Completed { at, duration_sec },
        ReportedStatus::Capacity => Settlement::Capacity {
            at: now,
            retry_at: clock::add(now, capacity_retry_after),
        },
        status if status == ReportedStatus::Transient || redial.redials(status) => {
            match after_failure(retry, attempt, error, now, rng) {
                Settlement::Failed { error, .. } => failed(error),
                retry => retry,
            }
        }
        ReportedStatus::Failed
        | ReportedStatus::Busy
        | ReportedStatus::NoAnswer
        | ReportedStatus::Voicemail
        | ReportedStatus::Transient
        | ReportedStatus::BadNumber
        | ReportedStatus::AccountError => failed(error),
    }
}

/// What a failed attempt `attempt` (from 1) settles to at `now`: back to
/// `PENDING` after the retry policy's jittered back-off, or `FAILED` at `now`
/// once `attempt` reaches the policy's limit. `error` becomes `lastError`.
pub(crate) fn after_failure(
    retry: &RetryPolicy,
    attempt: u32,
    error: String,
    now: DateTime<Utc>,
    rng: &mut impl Rng,
) -> Settlement {
    match retry.decide(attempt, rng) {
        RetryDecision::RetryAfter(delay) => Settlement::Retry {
            error,
            at: now,
            retry_at: clock::add(now, delay),
        },
        RetryDecision::GiveUp => Settlement::Failed {
            error,
            at: now,
            duration_sec: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeDelta, TimeZone};
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    const ALL_REPORTED: [ReportedStatus; 4] = ReportedStatus::GENERIC;

    /// The wait after a `CAPACITY` report in these tests.
    const CAPACITY_WAIT: Duration = Duration::from_secs(5);

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 7, 20, 10, 0, 0).unwrap()
    }

    fn secs(n: i64) -> TimeDelta {
        TimeDelta::seconds(n)
    }

    fn rng() -> ChaCha8Rng {
        ChaCha8Rng::seed_from_u64(3)
    }

    /// Back-off 10 s doubling to 40 s, without jitter so delays are exact,
    /// and `max_attempts` dials.
    fn exact(max_attempts: u32) -> RetryPolicy {
        RetryPolicy::new(
            Duration::from_secs(10),
            Duration::from_secs(40),
            max_attempts,
            0.0,
        )
        .unwrap()
    }

    fn retryable(reason: &str) -> Result<Dialled, DialError> {
        Err(DialError::Retryable {
            reason: reason.to_owned(),
        })
    }

    fn accepted(id: &str) -> Result<Dialled, DialError> {
        Ok(Dialled {
            provider_call_id: id.to_owned(),
        })
    }

    fn dial(answer: Result<Dialled, DialError>, attempt: u32) -> DialVerdict {
        dial_verdict(
            answer,
            &exact(3),
            Duration::from_secs(5),
            attempt,
            now(),
            &mut rng(),
        )
    }

    fn settle(label: &'static str, settlement: Settlement) -> DialVerdict {
        DialVerdict::Settle { label, settlement }
    }

    fn report(status: ReportedStatus, completed_at: Option<DateTime<Utc>>) -> StatusReport {
        StatusReport {
            provider_call_id: "p-1".into(),
            status,
            duration_sec: Some(42),
            completed_at,
            reason: None,
        }
    }

    const REDIAL_BOTH: RedialPolicy = RedialPolicy {
        busy: true,
        no_answer: true,
        voicemail: false,
    };

    // ------------------------------------------------------------ dials

    #[test]
    fn an_accepted_dial_records_the_provider_call_id() {
        assert_eq!(
            dial(accepted("CA-123"), 1),
            DialVerdict::Record {
                provider_call_id: "CA-123".into()
            }
        );
    }

    #[test]
    fn an_accepted_dial_with_an_invalid_provider_call_id_is_a_retryable_failure() {
        for bad in ["", "   ", "p-\u{0}", "line\nbreak", &"x".repeat(513)] {
            let DialVerdict::Settle {
                label: "retryable",
                settlement:
                    Settlement::Retry {
                        error, retry_at, ..
                    },
            } = dial(accepted(bad), 1)
            else {
                panic!("{bad:?} was not refused as retryable");
            };
            assert!(
                error.starts_with("provider answered with an invalid callId"),
                "{error}"
            );
            assert_eq!(retry_at, now() + secs(10));
        }
    }

    #[test]
    fn an_invalid_provider_call_id_on_the_last_attempt_fails_the_call() {
        let verdict = dial(accepted(""), 3);
        assert!(
            matches!(
                &verdict,
                DialVerdict::Settle { label: "retryable", settlement: Settlement::Failed { at, duration_sec: None, .. } }
                    if *at == now()
            ),
            "{verdict:?}"
        );
    }

    #[test]
    fn a_retryable_error_backs_off_doubling_per_attempt() {
        for (attempt, delay) in [(1, 10), (2, 20)] {
            assert_eq!(
                dial(retryable("provider 503"), attempt),
                settle(
                    "retryable",
                    Settlement::Retry {
                        error: "provider 503".into(),
                        at: now(),
                        retry_at: now() + secs(delay),
                    }
                ),
                "attempt {attempt}"
            );
        }
    }

    #[test]
    fn a_retryable_error_on_the_last_attempt_fails_the_call_now() {
        for attempt in [3, 4] {
            assert_eq!(
                dial(retryable("provider timeout"), attempt),
                settle(
                    "retryable",
                    Settlement::Failed {
                        error: "provider timeout".into(),
                        at: now(),
                        duration_sec: None,
                    }
                ),
                "attempt {attempt}"
            );
        }
    }

    #[test]
    fn at_capacity_gives_the_attempt_back_until_retry_after() {
        let answer = Err(DialError::AtCapacity {
            retry_after: Some(Duration::from_secs(7)),
        });
        // Capacity does not use up attempts, so even the last one comes back.
        for attempt in [1, 3] {
            assert_eq!(
                dial(answer.clone(), attempt),
                settle(
                    "capacity",
                    Settlement::Capacity {
                        at: now(),
                        retry_at: now() + secs(7)
                    }
                )
            );
        }
    }

    #[test]
    fn at_capacity_without_retry_after_waits_the_configured_default() {
        let answer = Err(DialError::AtCapacity { retry_after: None });
        assert_eq!(
            dial(answer, 1),
            settle(
                "capacity",
                Settlement::Capacity {
                    at: now(),
                    retry_at: now() + secs(5)
                }
            )
        );
    }

    #[test]
    fn a_permanent_error_fails_the_call_at_once_whatever_the_attempt() {
        for attempt in [1, 2, 3] {
            let answer = Err(DialError::Permanent {
                reason: "provider 422: invalid number".into(),
            });
            assert_eq!(
                dial(answer, attempt),
                settle(
                    "permanent",
                    Settlement::Failed {
                        error: "provider 422: invalid number".into(),
                        at: now(),
                        duration_sec: None,
                    }
                )
            );
        }
    }

    #[test]
    fn a_jittered_back_off_stays_within_the_policy_bounds() {
        let policy =
            RetryPolicy::new(Duration::from_secs(10), Duration::from_secs(40), 5, 0.5).unwrap();
        let mut rng = rng();
        for attempt in 1..5 {
            let verdict = dial_verdict(
                retryable("provider 503"),
                &policy,
                Duration::from_secs(5),
                attempt,
                now(),
                &mut rng,
            );
            let DialVerdict::Settle {
                settlement: Settlement::Retry { retry_at, .. },
                ..
            } = verdict
            else {
                panic!("attempt {attempt}: {verdict:?}");
            };
            let delay = (retry_at - now()).to_std().unwrap();
            assert!(
                delay >= policy.min_delay(attempt) - Duration::from_micros(1)
                    && delay <= policy.nominal_delay(attempt),
                "attempt {attempt}: {delay:?}"
            );
        }
    }

    // --------------------------------------------------------- webhooks

    #[test]
    fn completed_completes_with_completed_at_and_duration_whatever_the_policies() {
        let ended = now() - secs(3);
        for redial in [RedialPolicy::default(), REDIAL_BOTH] {
            for attempt in [1, 3] {
                assert_eq!(
                    report_settlement(
                        &report(ReportedStatus::Completed, Some(ended)),
                        redial,
                        &exact(3),
                        CAPACITY_WAIT,
                        attempt,
                        now(),
                        &mut rng(),
                    ),
                    Settlement::Completed {
                        at: ended,
                        duration_sec: Some(42)
                    }
                );
            }
        }
    }

    #[test]
    fn without_completed_at_the_call_ends_now() {
        for status in ALL_REPORTED {
            let settlement = report_settlement(
                &report(status, None),
                RedialPolicy::default(),
                &exact(3),
                CAPACITY_WAIT,
                1,
                now(),
                &mut rng(),
            );
            let at = match settlement {
                Settlement::Completed { at, .. } | Settlement::Failed { at, .. } => at,
                other => panic!("{status:?}: {other:?}"),
            };
            assert_eq!(at, now(), "{status:?}");
        }
    }

    #[test]
    fn completed_at_is_truncated_to_microseconds() {
        let precise = now() + TimeDelta::nanoseconds(1_234_567);
        let settlement = report_settlement(
            &report(ReportedStatus::Completed, Some(precise)),
            RedialPolicy::default(),
            &exact(3),
            CAPACITY_WAIT,
            1,
            now(),
            &mut rng(),
        );
        assert_eq!(
            settlement,
            Settlement::Completed {
                at: now() + TimeDelta::microseconds(1_234),
                duration_sec: Some(42)
            }
        );
    }

    #[test]
    fn without_redial_every_other_status_fails_with_that_status() {
        let ended = now() - secs(3);
        for (status, error) in [
            (ReportedStatus::Failed, "FAILED"),
            (ReportedStatus::Busy, "BUSY"),
            (ReportedStatus::NoAnswer, "NO_ANSWER"),
        ] {
            assert_eq!(
                report_settlement(
                    &report(status, Some(ended)),
                    RedialPolicy::default(),
                    &exact(3),
                    CAPACITY_WAIT,
                    1,
                    now(),
                    &mut rng(),
                ),
                Settlement::Failed {
                    error: error.into(),
                    at: ended,
                    duration_sec: Some(42)
                }
            );
        }
    }

    #[test]
    fn redial_re_enqueues_busy_and_no_answer_with_back_off_from_now() {
        for (status, error) in [
            (ReportedStatus::Busy, "BUSY"),
            (ReportedStatus::NoAnswer, "NO_ANSWER"),
        ] {
            for (attempt, delay) in [(1, 10), (2, 20)] {
                assert_eq!(
                    report_settlement(
                        &report(status, Some(now() - secs(3))),
                        REDIAL_BOTH,
                        &exact(3),
                        CAPACITY_WAIT,
                        attempt,
                        now(),
                        &mut rng(),
                    ),
                    Settlement::Retry {
                        error: error.into(),
                        at: now(),
                        retry_at: now() + secs(delay)
                    },
                    "{status:?} attempt {attempt}"
                );
            }
        }
    }

    #[test]
    fn redial_out_of_attempts_fails_with_completed_at_and_duration() {
        let ended = now() - secs(3);
        for completed_at in [Some(ended), None] {
            assert_eq!(
                report_settlement(
                    &report(ReportedStatus::Busy, completed_at),
                    REDIAL_BOTH,
                    &exact(3),
                    CAPACITY_WAIT,
                    3,
                    now(),
                    &mut rng(),
                ),
                Settlement::Failed {
                    error: "BUSY".into(),
                    at: completed_at.unwrap_or(now()),
                    duration_sec: Some(42)
                }
            );
        }
    }

    #[test]
    fn redial_applies_only_to_the_statuses_it_names() {
        let busy_only = RedialPolicy {
            busy: true,
            no_answer: false,
            voicemail: false,
        };
        let no_answer_only = RedialPolicy {
            busy: false,
            no_answer: true,
            voicemail: false,
        };
        for (policy, redialled) in [
            (busy_only, ReportedStatus::Busy),
            (no_answer_only, ReportedStatus::NoAnswer),
        ] {
            for status in ALL_REPORTED {
                let settlement = report_settlement(
                    &report(status, None),
                    policy,
                    &exact(3),
                    CAPACITY_WAIT,
                    1,
                    now(),
                    &mut rng(),
                );
                let retried = matches!(settlement, Settlement::Retry { .. });
                assert_eq!(retried, status == redialled, "{policy:?} {status:?}");
            }
        }
        // FAILED is final even when both re-dials are on.
        assert!(matches!(
            report_settlement(
                &report(ReportedStatus::Failed, None),
                REDIAL_BOTH,
                &exact(3),
                CAPACITY_WAIT,
                1,
                now(),
                &mut rng(),
            ),
            Settlement::Failed { .. }
        ));
    }

    // ---------------------------------------------------- stale leases

    #[test]
    fn after_failure_retries_until_the_last_attempt_then_fails_now() {
        let policy = exact(2);
        assert_eq!(
            after_failure(&policy, 1, WEBHOOK_TIMEOUT.into(), now(), &mut rng()),
            Settlement::Retry {
                error: "webhook timeout".into(),
                at: now(),
                retry_at: now() + secs(10)
            }
        );
        assert_eq!(
            after_failure(&policy, 2, WEBHOOK_TIMEOUT.into(), now(), &mut rng()),
            Settlement::Failed {
                error: "webhook timeout".into(),
                at: now(),
                duration_sec: None
            }
        );
    }

    #[test]
    fn platform_dispositions_settle_by_what_they_mean() {
        let settle = |status, redial| {
            let mut report = report(status, None);
            report.reason = Some(format!("platform said {}", status.as_str()));
            report_settlement(
                &report,
                redial,
                &exact(3),
                CAPACITY_WAIT,
                1,
                now(),
                &mut rng(),
            )
        };
        // Voicemail is no contact: failed, or re-dialled when the policy says so.
        let voicemail = RedialPolicy::default().with_voicemail(true);
        assert!(matches!(
            settle(ReportedStatus::Voicemail, RedialPolicy::default()),
            Settlement::Failed { ref error, .. } if error == "platform said VOICEMAIL"
        ));
        assert!(matches!(
            settle(ReportedStatus::Voicemail, voicemail),
            Settlement::Retry { ref error, .. } if error == "platform said VOICEMAIL"
        ));
        // A platform fault is retried with back-off whatever the policy.
        assert!(matches!(
            settle(ReportedStatus::Transient, RedialPolicy::default()),
            Settlement::Retry { .. }
        ));
        // A bad number and an account error fail at once, even when no-contact
        // outcomes are re-dialled.
        for status in [ReportedStatus::BadNumber, ReportedStatus::AccountError] {
            assert!(matches!(
                settle(status, REDIAL_BOTH.with_voicemail(true)),
                Settlement::Failed { .. }
            ));
        }
        // Capacity gives the attempt back, to re-dial after the capacity wait.
        assert_eq!(
            settle(ReportedStatus::Capacity, RedialPolicy::default()),
            Settlement::Capacity {
                at: now(),
                retry_at: now() + CAPACITY_WAIT
            }
        );
    }

    #[test]
    fn an_account_error_answer_fails_the_dial_and_is_labelled_for_the_pause() {
        let verdict = dial_verdict(
            Err(DialError::Account {
                reason: "insufficient credits".into(),
            }),
            &exact(3),
            CAPACITY_WAIT,
            1,
            now(),
            &mut rng(),
        );
        assert_eq!(
            verdict,
            DialVerdict::Settle {
                label: ACCOUNT,
                settlement: Settlement::Failed {
                    error: "insufficient credits".into(),
                    at: now(),
                    duration_sec: None
                }
            }
        );
    }
}
