//! What the stand-in's recording says about the invariants: dials per
//! attempt, calls in flight, wake-up latency.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use crate::stand_in::{Recording, WebhookTry};

impl Recording {
    /// Each `(callId, attempt)` dialled more than once other than as a
    /// re-send of the same `Idempotency-Key`, and each dial whose key is not
    /// `{callId}:{attempt}`: one line per problem.
    pub(crate) fn double_dials(&self) -> Vec<String> {
        let mut keys: BTreeMap<(&str, u32), Vec<&str>> = BTreeMap::new();
        let mut problems = Vec::new();
        for dial in &self.dials {
            let expected = format!("{}:{}", dial.call_id, dial.attempt);
            if dial.key != expected {
                problems.push(format!(
                    "call {} attempt {} dialled with Idempotency-Key {:?}, not {expected:?}",
                    dial.call_id, dial.attempt, dial.key
                ));
            }
            keys.entry((dial.call_id.as_str(), dial.attempt))
                .or_default()
                .push(dial.key.as_str());
        }
        for ((call, attempt), keys) in keys {
            let distinct: HashSet<&str> = keys.iter().copied().collect();
            if distinct.len() > 1 {
                problems.push(format!(
                    "call {call} attempt {attempt} dialled {} times with different keys {distinct:?}",
                    keys.len()
                ));
            }
        }
        problems
    }

    /// The first accepted try of dial `index`'s webhook.
    pub(crate) fn accepted_webhook(&self, index: usize) -> Option<&WebhookTry> {
        self.webhooks
            .iter()
            .find(|webhook| webhook.dial == index && webhook.accepted())
    }

    /// The first try of dial `index`'s webhook.
    pub(crate) fn first_webhook(&self, index: usize) -> Option<&WebhookTry> {
        self.webhooks.iter().find(|webhook| webhook.dial == index)
    }

    /// The most calls in flight at once as the provider sees them, and when.
    ///
    /// A call is in flight from its dial's arrival until the provider has
    /// refused it (a non-2xx answer), abandoned it, or sent the first
    /// webhook the node may have applied (accepted, or lost after it reached
    /// the node: a node killed mid-request may have settled it). Re-sends of
    /// a key are not new calls. Ending at the *send* of that webhook, before
    /// the node settles it, makes this a lower bound of the store's own
    /// count, so it never reports a breach that did not happen.
    pub(crate) fn max_in_flight(&self) -> (usize, Option<Instant>) {
        let intervals = self.in_flight_intervals();
        let mut events: Vec<(Instant, i32)> = Vec::new();
        for (_, start, end) in &intervals {
            events.push((*start, 1));
            if let Some(end) = end {
                events.push((*end, -1));
            }
        }
        // Ends before starts at the same instant.
        events.sort();
        let (mut current, mut most, mut when) = (0i32, 0i32, None);
        for (at, change) in events {
            current += change;
            if current > most {
                most = current;
                when = Some(at);
            }
        }
        (usize::try_from(most).unwrap_or(0), when)
    }

    /// The calls in flight (as [`max_in_flight`](Self::max_in_flight)
    /// counts them) at `at`, described from `at`: for failure messages.
    pub(crate) fn describe_in_flight(&self, at: Instant) -> String {
        self.in_flight_intervals()
            .into_iter()
            .filter(|(_, start, end)| *start <= at && end.is_none_or(|end| end > at))
            .map(|(index, ..)| self.describe(&self.dials[index].call_id, at))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// (dial index, start, end) of every call the provider started.
    fn in_flight_intervals(&self) -> Vec<(usize, Instant, Option<Instant>)> {
        self.dials
            .iter()
            .enumerate()
            .filter(|(_, dial)| !dial.resend)
            .map(|(index, dial)| {
                let end = match (dial.answered, dial.abandoned) {
                    (_, Some(at)) => Some(at),
                    (Some((at, status)), _) if !(200..300).contains(&status) => Some(at),
                    _ => self
                        .webhooks
                        .iter()
                        .find(|webhook| webhook.dial == index && webhook.maybe_applied())
                        .map(|webhook| webhook.sent),
                };
                (index, dial.received, end)
            })
            .collect()
    }

    /// The attempts of each call that reached the provider, sorted.
    pub(crate) fn attempts_by_call(&self) -> BTreeMap<String, Vec<u32>> {
        let mut attempts: BTreeMap<String, Vec<u32>> = BTreeMap::new();
        for dial in self.dials.iter().filter(|dial| !dial.resend) {
            attempts
                .entry(dial.call_id.clone())
                .or_default()
                .push(dial.attempt);
        }
        for list in attempts.values_mut() {
            list.sort_unstable();
        }
        attempts
    }

    /// Wake-up latencies among `calls`: for each accepted webhook of one of
    /// them sent before the last of their dials, the time from its send to
    /// the next dial of one of them. A webhook frees a slot; with calls
    /// waiting, the next dial should follow within milliseconds.
    pub(crate) fn wakeups(&self, calls: &HashSet<String>) -> Vec<Duration> {
        let dials: Vec<Instant> = self
            .dials
            .iter()
            .filter(|dial| calls.contains(&dial.call_id))
            .map(|dial| dial.received)
            .collect();
        self.webhooks
            .iter()
            .filter(|webhook| {
                webhook.accepted() && calls.contains(&self.dials[webhook.dial].call_id)
            })
            .filter_map(|webhook| {
                dials
                    .iter()
                    .filter(|received| **received >= webhook.sent)
                    .min()
                    .map(|received| received.duration_since(webhook.sent))
            })
            .collect()
    }

    /// Everything seen of `call`, one line per dial and webhook try, times
    /// relative to `origin`: for failure messages.
    pub(crate) fn describe(&self, call: &str, origin: Instant) -> String {
        let at = |instant: Instant| {
            let millis = |d: Duration| d.as_millis();
            if instant >= origin {
                format!("+{} ms", millis(instant - origin))
            } else {
                format!("-{} ms", millis(origin - instant))
            }
        };
        let mut lines = Vec::new();
        for (index, dial) in self.dials.iter().enumerate() {
            if dial.call_id != call {
                continue;
            }
            lines.push(format!(
                "  dial attempt {} key {} from {} at {}, answered {}{}",
                dial.attempt,
                dial.key,
                dial.node,
                at(dial.received),
                dial.answered
                    .map_or("never".to_owned(), |(when, status)| format!(
                        "{status} at {}",
                        at(when)
                    )),
                match (dial.resend, dial.abandoned) {
                    (true, _) => " (re-send)",
                    (_, Some(_)) => " (abandoned: its caller was gone)",
                    _ => "",
                }
            ));
            for webhook in self.webhooks.iter().filter(|webhook| webhook.dial == index) {
                lines.push(format!(
                    "    webhook to {} at {}: {:?}",
                    webhook.target,
                    at(webhook.sent),
                    webhook.result
                ));
            }
        }
        format!("call {call}:\n{}", lines.join("\n"))
    }
}
