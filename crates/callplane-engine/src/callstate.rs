//! Call-state callbacks (`callstateInfoUrl`): one delivery task per call posts the call's
//! events as JSON, in order, retrying a failed delivery with backoff for a bounded time. The
//! Call actor only queues events (never waits), and a full queue drops the newest event.

use crate::webhook::{WebhookClient, WebhookKind, WebhookRequest};
use bytes::Bytes;
use serde_json::{json, Map, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Events a call may queue before the newest are dropped (a slow server never slows a call).
const QUEUE: usize = 256;
/// One delivery attempt may take this long.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// After this long an event that still cannot be delivered is given up (and logged).
const RETRY_WINDOW: Duration = Duration::from_secs(30);
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(8);

/// Where a call's events go.
#[derive(Debug, Clone)]
pub struct CallStateTarget {
    pub url: String,
    pub tenant: String,
    pub customer_number: i64,
    pub signing_secret: Option<String>,
}

/// The Call actor's side: numbers and queues events.
pub struct CallStateSender {
    tx: mpsc::Sender<Value>,
    call_id: String,
    customer_number: i64,
    seq: u64,
}

impl CallStateSender {
    /// Spawns the delivery task for one call.
    pub fn start(client: Arc<WebhookClient>, target: CallStateTarget, call_id: String) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        let customer_number = target.customer_number;
        tokio::spawn(deliver(client, target, rx));
        CallStateSender {
            tx,
            call_id,
            customer_number,
            seq: 0,
        }
    }

    /// Queues `call.<what>` with `data` merged into the envelope.
    pub fn emit(&mut self, event_type: &str, data: Value) {
        let seq = self.seq + 1;
        self.emit_numbered(event_type, seq, data);
    }

    /// Queues an event whose per-call number was given by the event bus.
    pub fn emit_numbered(&mut self, event_type: &str, seq: u64, data: Value) {
        self.seq = seq;
        let mut ev = Map::new();
        ev.insert("type".into(), json!(event_type));
        ev.insert("callId".into(), json!(self.call_id));
        ev.insert("customerNumber".into(), json!(self.customer_number));
        ev.insert(
            "time".into(),
            json!(callplane_store::model::format_time(&chrono::Utc::now())),
        );
        ev.insert("seq".into(), json!(self.seq));
        if let Value::Object(d) = data {
            for (k, v) in d {
                ev.entry(k).or_insert(v);
            }
        }
        if self.tx.try_send(Value::Object(ev)).is_err() {
            tracing::warn!(call = %self.call_id, event = event_type, "call-state queue full; event dropped");
        }
    }
}

async fn deliver(
    client: Arc<WebhookClient>,
    target: CallStateTarget,
    mut rx: mpsc::Receiver<Value>,
) {
    while let Some(ev) = rx.recv().await {
        let body = Bytes::from(serde_json::to_vec(&ev).unwrap_or_default());
        let req = WebhookRequest {
            kind: WebhookKind::CallState,
            tenant: target.tenant.clone(),
            url: target.url.clone(),
            content_type: "application/json",
            body,
            signing_secret: target.signing_secret.clone(),
            timeout: ATTEMPT_TIMEOUT,
        };
        let first = Instant::now();
        let mut backoff = FIRST_BACKOFF;
        loop {
            match client.send_and_record(&req).await {
                Ok(_) => break,
                Err(e) => {
                    if first.elapsed() + backoff > RETRY_WINDOW {
                        let event = ev.get("type").and_then(Value::as_str).unwrap_or("?");
                        tracing::warn!(
                            url = %target.url,
                            event,
                            error = %e,
                            "call-state event not delivered; given up"
                        );
                        break;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

/// The event types sent to a `callstateInfoUrl`.
const CALLSTATE_TYPES: [&str; 8] = [
    "call.created",
    "call.ringing",
    "call.answered",
    "call.bridged",
    "call.dtmf",
    "conference.joined",
    "conference.left",
    "call.hangup",
];

/// The call-state callbacks as an event-bus subscriber: calls with a `callstateInfoUrl`
/// register their sender when they start; their events (all but the final record) are queued
/// for delivery, numbered as the bus numbered them.
#[derive(Default)]
pub struct CallStateSubscriber {
    senders: std::sync::Mutex<std::collections::HashMap<String, CallStateSender>>,
}

impl CallStateSubscriber {
    /// Call `call_id`'s events go to `sender` from now on, until its `call.finished`.
    pub fn register(&self, call_id: &str, sender: CallStateSender) {
        self.lock().insert(call_id.to_string(), sender);
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, CallStateSender>> {
        self.senders.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl crate::events::EventSubscriber for CallStateSubscriber {
    fn on_event(&self, event: &crate::events::CallEvent) {
        let mut senders = self.lock();
        if matches!(event.kind, crate::events::EventKind::Finished { .. }) {
            senders.remove(&event.call_id);
            return;
        }
        // The call-state wire format keeps its event types: the bus's finer ones (leg
        // states, hold, unbridge) are for the API's subscribers. Numbered per destination, so
        // the callbacks' `seq` has no gaps.
        if !CALLSTATE_TYPES.contains(&event.kind.name()) {
            return;
        }
        if let Some(s) = senders.get_mut(&event.call_id) {
            s.emit(event.kind.name(), event.kind.data());
        }
    }
}
