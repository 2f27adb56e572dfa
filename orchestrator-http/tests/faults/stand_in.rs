//! The provider stand-in: `POST /api/v1/calls` on 127.0.0.1:0, as the
//! provider contract describes it, that records everything it sees.
//!
//! A dial is recorded with the call id and attempt from its `webhookUrl`,
//! its `Idempotency-Key` and the time. It is answered 202 with a fresh
//! provider id (or, when the scenario says so, with an error status); a
//! repeated `Idempotency-Key` is answered with the first id and starts no
//! second call, as a real provider does. After the call duration the
//! stand-in posts a Standard Webhooks-signed `COMPLETED` webhook to the
//! `webhookUrl`, retrying every [`WEBHOOK_RETRY`] until a 2xx, as providers
//! do. When a node cannot be connected to, the retry goes to another node
//! of the failover list, as a load balancer in front of the nodes would.
//!
//! A scenario can hold dial answers or webhooks at a gate and release them
//! later, and can change the answers. A held dial whose caller goes away
//! (the node died) is answered all the same when released, as a provider
//! that goes on with a request it has taken, unless the scenario asks for
//! it to be abandoned. Every webhook attempt is recorded with its target,
//! send time and result.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use orchestrator_http::WebhookSecret;
use reqwest::Url;
use serde_json::{json, Value};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// Pause between two tries of one webhook.
pub(crate) const WEBHOOK_RETRY: Duration = Duration::from_millis(200);
/// A webhook is given up this long after its first try.
const WEBHOOK_GIVE_UP: Duration = Duration::from_secs(120);
/// Bound on one webhook request.
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(15);

/// How to answer a dial.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    /// 202 with a provider id; the webhook follows after the call duration.
    Accept,
    /// This status with a JSON error body; no call, no webhook.
    Status(u16),
}

/// Which dials wait at the gate.
#[derive(Clone, Debug, PartialEq, Eq)]
enum DialHold {
    None,
    All,
    /// Those whose `webhookUrl` names this `host:port`.
    Node(String),
}

impl DialHold {
    fn holds(&self, node: &str) -> bool {
        match self {
            DialHold::None => false,
            DialHold::All => true,
            DialHold::Node(held) => held == node,
        }
    }
}

/// One dial request as received.
#[derive(Clone, Debug)]
pub(crate) struct Dial {
    /// The orchestrator's call id, from the `webhookUrl` query.
    pub call_id: String,
    /// The attempt, from the `webhookUrl` query.
    pub attempt: u32,
    /// The `Idempotency-Key` header.
    pub key: String,
    /// The `webhookUrl`'s `host:port`: which node dialled.
    pub node: String,
    /// When the request arrived.
    pub received: Instant,
    /// When it was answered, and with what status (`None`: not yet).
    pub answered: Option<(Instant, u16)>,
    /// The provider id handed out (for 202s).
    pub provider_id: Option<String>,
    /// A repeat of an earlier dial's `Idempotency-Key`.
    pub resend: bool,
    /// The caller went away while the dial was held.
    pub orphaned: bool,
    /// When the provider gave up an orphaned dial without starting the call.
    pub abandoned: Option<Instant>,
}

/// One try of one webhook.
#[derive(Clone, Debug)]
pub(crate) struct WebhookTry {
    /// Index of the dial in [`Recording::dials`].
    pub dial: usize,
    /// The `host:port` it was sent to.
    pub target: String,
    /// When it was sent.
    pub sent: Instant,
    /// The answer's status, or why there was none.
    pub result: Result<u16, String>,
    /// No connection could be made: the node cannot have seen it.
    pub refused: bool,
    /// When the answer (or the error) came.
    pub finished: Instant,
}

impl WebhookTry {
    /// Answered 2xx.
    pub(crate) fn accepted(&self) -> bool {
        matches!(self.result, Ok(status) if (200..300).contains(&status))
    }

    /// Perhaps applied: answered 2xx, or lost after it reached the node
    /// (say, the node died before answering).
    pub(crate) fn maybe_applied(&self) -> bool {
        self.accepted() || (self.result.is_err() && !self.refused)
    }
}

/// Everything seen so far.
#[derive(Clone, Debug, Default)]
pub(crate) struct Recording {
    /// Dials in arrival order.
    pub dials: Vec<Dial>,
    /// Webhook tries in send order.
    pub webhooks: Vec<WebhookTry>,
}

struct Shared {
    secret: WebhookSecret,
    client: reqwest::Client,
    state: Mutex<Behaviour>,
    dial_gate: watch::Sender<DialHold>,
    webhook_gate: watch::Sender<bool>,
}

struct Behaviour {
    call_duration: Duration,
    script: VecDeque<Answer>,
    answers: Vec<Answer>,
    answered: usize,
    failover: Vec<String>,
    recording: Recording,
    ids_by_key: HashMap<String, String>,
    next_id: u64,
    held_dials: usize,
    abandon_orphans: usize,
    held_webhooks: Vec<usize>,
}

/// The running stand-in; stops serving when dropped.
pub(crate) struct StandIn {
    shared: Arc<Shared>,
    url: String,
    server: JoinHandle<()>,
}

impl StandIn {
    /// Starts it on 127.0.0.1:0: every dial accepted, 250 ms calls.
    pub(crate) async fn start() -> StandIn {
        let secret: WebhookSecret = crate::WEBHOOK_SECRET.parse().expect("a valid secret");
        let shared = Arc::new(Shared {
            secret,
            client: reqwest::Client::builder()
                .timeout(WEBHOOK_TIMEOUT)
                // A fresh connection per webhook, as a provider's many
                // senders would open: a node must accept new connections
                // to take webhooks.
                .pool_max_idle_per_host(0)
                .build()
                .expect("an HTTP client"),
            state: Mutex::new(Behaviour {
                call_duration: Duration::from_millis(250),
                script: VecDeque::new(),
                answers: vec![Answer::Accept],
                answered: 0,
                failover: Vec::new(),
                recording: Recording::default(),
                ids_by_key: HashMap::new(),
                next_id: 1,
                held_dials: 0,
                abandon_orphans: 0,
                held_webhooks: Vec::new(),
            }),
            dial_gate: watch::channel(DialHold::None).0,
            webhook_gate: watch::channel(false).0,
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port for the stand-in");
        let url = format!("http://{}", listener.local_addr().expect("its address"));
        let app = Router::new()
            .route("/api/v1/calls", post(dial))
            .with_state(Arc::clone(&shared));
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        StandIn {
            shared,
            url,
            server,
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Behaviour) -> T) -> T {
        lock(&self.shared, f)
    }

    /// Its base URL, for `PROVIDER_BASE_URL`.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// How long a call lasts, from the 202 to its webhook.
    pub(crate) fn set_call_duration(&self, duration: Duration) {
        self.with(|state| state.call_duration = duration);
    }

    /// Answers from now on, taken in turn, once the scripted ones are used
    /// up (new dials only; repeated keys always get their first answer).
    pub(crate) fn set_answers(&self, answers: Vec<Answer>) {
        assert!(!answers.is_empty(), "at least one answer");
        self.with(|state| {
            state.answers = answers;
            state.answered = 0;
        });
    }

    /// Answers for the next dials, each used once, before those of
    /// [`set_answers`](Self::set_answers).
    pub(crate) fn script_answers(&self, answers: Vec<Answer>) {
        self.with(|state| state.script.extend(answers));
    }

    /// The nodes' base URLs a webhook may fail over to.
    pub(crate) fn set_failover(&self, nodes: &[String]) {
        let nodes = nodes.iter().map(|url| authority(url)).collect();
        self.with(|state| state.failover = nodes);
    }

    /// Dials of the node at `url` from now on wait, unanswered, until
    /// [`release_dials`](Self::release_dials); other nodes' are answered.
    pub(crate) fn hold_dials_from(&self, url: &str) {
        self.shared
            .dial_gate
            .send_replace(DialHold::Node(authority(url)));
    }

    /// Dials from now on wait, unanswered, until [`release_dials`](Self::release_dials).
    pub(crate) fn hold_dials(&self) {
        self.shared.dial_gate.send_replace(DialHold::All);
    }

    /// Answers every held dial.
    pub(crate) fn release_dials(&self) {
        self.shared.dial_gate.send_replace(DialHold::None);
    }

    /// The next `count` held dials whose caller went away are given up when
    /// released, as a provider that never got to start the call; the others
    /// go on as usual.
    pub(crate) fn abandon_orphans(&self, count: usize) {
        self.with(|state| state.abandon_orphans = count);
    }

    /// Dials waiting at the gate.
    pub(crate) fn held_dials(&self) -> usize {
        self.with(|state| state.held_dials)
    }

    /// Webhook tries from now on wait until [`release_webhooks`](Self::release_webhooks).
    pub(crate) fn hold_webhooks(&self) {
        self.shared.webhook_gate.send_replace(true);
    }

    /// Sends every held webhook.
    pub(crate) fn release_webhooks(&self) {
        self.shared.webhook_gate.send_replace(false);
    }

    /// The dials (indices into [`Recording::dials`]) whose webhooks wait at the gate.
    pub(crate) fn held_webhooks(&self) -> Vec<usize> {
        self.with(|state| state.held_webhooks.clone())
    }

    /// Dials received so far.
    pub(crate) fn dial_count(&self) -> usize {
        self.with(|state| state.recording.dials.len())
    }

    /// A copy of everything seen so far.
    pub(crate) fn recording(&self) -> Recording {
        self.with(|state| state.recording.clone())
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn dial(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Json<Value>,
) -> Response {
    let received = Instant::now();
    // In a task of its own, which sees when the caller goes away (a node
    // killed while its dial is held) and can go on with the call regardless.
    let (mut answer, answered) = oneshot::channel();
    tokio::spawn(async move {
        if let Some(response) = answer_dial(shared, headers, body, received, &mut answer).await {
            let _ = answer.send(response);
        }
    });
    answered
        .await
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// The answer to one dial; `None` when the caller went away and the
/// provider abandons the call (see [`StandIn::abandon_orphans`]).
async fn answer_dial(
    shared: Arc<Shared>,
    headers: HeaderMap,
    body: Json<Value>,
    received: Instant,
    caller: &mut oneshot::Sender<Response>,
) -> Option<Response> {
    let webhook_url = body["webhookUrl"]
        .as_str()
        .and_then(|raw| Url::parse(raw).ok());
    let Some(webhook_url) = webhook_url else {
        return Some((StatusCode::BAD_REQUEST, "webhookUrl is not a URL").into_response());
    };
    let query = |name: &str| {
        webhook_url
            .query_pairs()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.into_owned())
    };
    let (Some(call_id), Some(attempt)) = (
        query("callId"),
        query("attempt").and_then(|raw| raw.parse::<u32>().ok()),
    ) else {
        return Some((StatusCode::BAD_REQUEST, "webhookUrl lacks callId/attempt").into_response());
    };
    let key = headers
        .get("idempotency-key")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let index = lock(&shared, |state| {
        state.recording.dials.push(Dial {
            call_id,
            attempt,
            key: key.clone(),
            node: authority(webhook_url.as_str()),
            received,
            answered: None,
            provider_id: None,
            resend: false,
            orphaned: false,
            abandoned: None,
        });
        state.recording.dials.len() - 1
    });
    let node = authority(webhook_url.as_str());
    let mut gate = shared.dial_gate.subscribe();
    let held = gate.borrow_and_update().holds(&node);
    if held {
        lock(&shared, |state| state.held_dials += 1);
        let mut orphaned = false;
        loop {
            let held = gate.borrow_and_update().holds(&node);
            if !held {
                break;
            }
            tokio::select! {
                biased;
                changed = gate.changed() => if changed.is_err() { break },
                () = caller.closed(), if !orphaned => {
                    orphaned = true;
                    lock(&shared, |state| state.recording.dials[index].orphaned = true);
                }
            }
        }
        lock(&shared, |state| state.held_dials -= 1);
    }
    let abandon = lock(&shared, |state| {
        let abandon = state.recording.dials[index].orphaned && state.abandon_orphans > 0;
        if abandon {
            state.abandon_orphans -= 1;
            state.recording.dials[index].abandoned = Some(Instant::now());
        }
        abandon
    });
    if abandon {
        return None;
    }
    let (answer, provider_id, call_duration) = lock(&shared, |state| {
        if let Some(id) = state.ids_by_key.get(&key).cloned() {
            state.recording.dials[index].resend = true;
            return (Answer::Accept, Some(id), None);
        }
        let answer = state.script.pop_front().unwrap_or_else(|| {
            state.answered += 1;
            state.answers[(state.answered - 1) % state.answers.len()]
        });
        if answer != Answer::Accept {
            return (answer, None, None);
        }
        let id = format!("standin-{}", state.next_id);
        state.next_id += 1;
        state.ids_by_key.insert(key.clone(), id.clone());
        (answer, Some(id), Some(state.call_duration))
    });
    let status = match answer {
        Answer::Accept => 202,
        Answer::Status(status) => status,
    };
    lock(&shared, |state| {
        let dial = &mut state.recording.dials[index];
        dial.answered = Some((Instant::now(), status));
        dial.provider_id.clone_from(&provider_id);
    });
    if let (Some(id), Some(duration)) = (&provider_id, call_duration) {
        tokio::spawn(deliver(
            Arc::clone(&shared),
            index,
            id.clone(),
            webhook_url,
            duration,
        ));
    }
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    Some(match provider_id {
        Some(id) => (status, Json(json!({"callId": id}))).into_response(),
        None => (status, Json(json!({"error": "stand-in told to refuse"}))).into_response(),
    })
}

/// Posts the webhook of dial `index` after `duration`, until a 2xx.
async fn deliver(
    shared: Arc<Shared>,
    index: usize,
    provider_id: String,
    url: Url,
    duration: Duration,
) {
    // The provider's call itself: a duration, not a synchronisation.
    tokio::time::sleep(duration).await;
    let completed_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let body = serde_json::to_vec(&json!({
        "callId": provider_id,
        "status": "COMPLETED",
        "durationSec": 1,
        "completedAt": completed_at,
    }))
    .expect("a JSON body");
    let message_id = format!("msg_{provider_id}");
    let first_try = Instant::now();
    let mut target = url;
    let mut failed_over = false;
    loop {
        let mut gate = shared.webhook_gate.subscribe();
        if *gate.borrow_and_update() {
            lock(&shared, |state| state.held_webhooks.push(index));
            let _ = gate.wait_for(|held| !held).await;
            lock(&shared, |state| {
                state.held_webhooks.retain(|held| *held != index)
            });
        }
        let timestamp = chrono::Utc::now().timestamp();
        let signed = shared.secret.sign_headers(&message_id, timestamp, &body);
        let sent = Instant::now();
        let result = shared
            .client
            .post(target.clone())
            .header("content-type", "application/json")
            .header("webhook-id", signed.id)
            .header("webhook-timestamp", signed.timestamp.to_string())
            .header("webhook-signature", signed.signature)
            .body(body.clone())
            .send()
            .await;
        let finished = Instant::now();
        let refused = matches!(&result, Err(error) if error.is_connect());
        let result = result
            .map(|response| response.status().as_u16())
            .map_err(|error| error.to_string());
        let try_ = WebhookTry {
            dial: index,
            target: authority(target.as_str()),
            sent,
            result,
            refused,
            finished,
        };
        let accepted = try_.accepted();
        let next = lock(&shared, |state| {
            state.recording.webhooks.push(try_);
            refused
                .then(|| failover(&state.failover, &authority(target.as_str())))
                .flatten()
        });
        if accepted || first_try.elapsed() > WEBHOOK_GIVE_UP {
            return;
        }
        if let Some(next) = next {
            let _ = target.set_host(Some(next.split(':').next().unwrap_or_default()));
            let _ = target.set_port(next.split(':').nth(1).and_then(|port| port.parse().ok()));
            // Straight to the next node, once; a second refusal in a row
            // waits like any failed try, so dead nodes are not spun on.
            failed_over = !failed_over;
            if failed_over {
                continue;
            }
        } else {
            failed_over = false;
        }
        tokio::time::sleep(WEBHOOK_RETRY).await;
    }
}

/// The node after `failed` in `nodes` (round robin), if there is another.
fn failover(nodes: &[String], failed: &str) -> Option<String> {
    let at = nodes.iter().position(|node| node == failed)?;
    let next = &nodes[(at + 1) % nodes.len()];
    (next != failed).then(|| next.clone())
}

fn lock<T>(shared: &Shared, f: impl FnOnce(&mut Behaviour) -> T) -> T {
    f(&mut shared.state.lock().unwrap_or_else(PoisonError::into_inner))
}

/// `host:port` of a URL.
pub(crate) fn authority(url: &str) -> String {
    Url::parse(url)
        .ok()
        .and_then(|url| {
            Some(format!(
                "{}:{}",
                url.host_str()?,
                url.port_or_known_default()?
            ))
        })
        .unwrap_or_default()
}
