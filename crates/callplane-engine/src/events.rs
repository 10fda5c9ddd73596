//! Call events and the bus they travel on. Every state change of a call (its legs, its room,
//! its end) is a typed [`CallEvent`] with a per-call sequence number; the Call actor publishes
//! it on an [`EventBus`] and never waits. Subscribers — call-state callbacks, the CDR writer,
//! metrics, later the API's WebSocket — are handed each event in publishing order and must not
//! block: each keeps its own queue if it has slow work to do.
//!
//! [`LocalBus`] is the in-process bus of one node. A cluster bus (NATS, Redis) implements the
//! same trait: it publishes remotely and hands events to its local subscribers alike.

use crate::hangup::HangupCause;
use crate::leg::LegState;
use callplane_store::model::Cdr;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use std::sync::{Arc, RwLock};

/// Which side of the call: the caller, or a (BRIDGE) callee.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Party {
    Caller,
    Callee,
}

impl Party {
    pub fn as_str(self) -> &'static str {
        match self {
            Party::Caller => "caller",
            Party::Callee => "callee",
        }
    }
}

/// What changed.
#[derive(Debug, Clone, PartialEq)]
pub enum EventKind {
    /// The inbound call reached a plan.
    Created {
        from: String,
        to: String,
        tenant: String,
    },
    /// The caller hears ringing: a 180/183 went out, or local ringback plays.
    Ringing {
        early_media: bool,
    },
    /// The inbound leg was answered (200 OK).
    Answered,
    /// A BRIDGE destination answered and is connected to the caller.
    Bridged {
        destination: String,
        destination_type: Option<String>,
    },
    /// The connected callee and the caller no longer talk (the callee left, or the bridge was
    /// stopped).
    Unbridged,
    /// A party put the call on hold (its re-INVITE `sendonly` or `inactive`).
    Held {
        party: Party,
    },
    /// A party took the call off hold.
    Unheld {
        party: Party,
    },
    /// The call was sent elsewhere by a command: `redirect` (its plan replaced by a BRIDGE to
    /// `to`) or a `blind` transfer (leg `from` hung up, its other party dialling `to`).
    Transferred {
        mode: &'static str,
        from_leg: Option<u32>,
        to: String,
        to_type: String,
    },
    /// An inbound call to a number an application controls is offered to it (the plan
    /// waits up to `timeout_ms` for a claim).
    Offered {
        from: String,
        to: String,
        number: String,
        timeout_ms: u64,
    },
    /// An application claimed the offered call (`by`: its API key's name).
    Claimed {
        by: String,
    },
    /// Nobody claimed the offered call in time: its plan runs.
    OfferExpired,
    /// The application that claimed the call (`by`) is gone (`reason`: `gone`, its events
    /// session ended; `idle`, it left the call waiting too long): its plan runs.
    Released {
        by: String,
        reason: &'static str,
    },
    /// A COLLECT_DIGITS block is over: what it stored in `variable` (empty: no input).
    DigitsCollected {
        variable: String,
        digits: String,
    },
    /// Blocks run on the call through the API are done.
    BlocksDone,
    /// A supervisor's part in the call: `calling` (dialled), `joined` (answered, in the
    /// room), `mode` (switched), `intercepted` (took the agent's place), `left`.
    Supervisor {
        what: &'static str,
        mode: crate::registry::SuperviseMode,
    },
    /// A party was muted (nobody hears it) or unmuted by a command.
    Muted {
        party: Party,
        muted: bool,
    },
    /// A recording of the call started, or stopped (its file is completed and listed on the
    /// call's CDR right after).
    Recording {
        recording_id: String,
        started: bool,
        stereo: bool,
        duration_ms: Option<i64>,
    },
    /// One leg's state changed: the caller's leg, or a BRIDGE destination's (`attempt`, its
    /// index in the block's destinations, and where it goes).
    Leg {
        party: Party,
        attempt: Option<u32>,
        destination: Option<String>,
        state: LegState,
    },
    /// A keypad digit.
    Dtmf {
        digit: char,
        party: Party,
    },
    ConferenceJoined {
        conference: String,
        muted: bool,
        listen_only: bool,
    },
    ConferenceLeft {
        conference: String,
    },
    /// The call ended.
    Hangup {
        cause: HangupCause,
        hangup_by: &'static str,
        sip_status: Option<u16>,
        duration_ms: i64,
        talk_time_ms: i64,
    },
    /// The call's record, complete: the last event of every call (also of one refused before
    /// it reached a plan, which has no other event).
    Finished {
        cdr: Box<Cdr>,
    },
}

impl EventKind {
    /// The event's `type` (`call.answered`, `conference.joined`…).
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::Created { .. } => "call.created",
            EventKind::Ringing { .. } => "call.ringing",
            EventKind::Answered => "call.answered",
            EventKind::Bridged { .. } => "call.bridged",
            EventKind::Unbridged => "call.unbridged",
            EventKind::Held { .. } => "call.held",
            EventKind::Unheld { .. } => "call.unheld",
            EventKind::Muted { muted: true, .. } => "call.muted",
            EventKind::Muted { muted: false, .. } => "call.unmuted",
            EventKind::Recording { .. } => "call.recording",
            EventKind::Transferred { .. } => "call.transferred",
            EventKind::Offered { .. } => "call.offered",
            EventKind::Claimed { .. } => "call.claimed",
            EventKind::OfferExpired => "call.offer_expired",
            EventKind::Released { .. } => "call.released",
            EventKind::DigitsCollected { .. } => "call.digits_collected",
            EventKind::BlocksDone => "call.blocks_done",
            EventKind::Supervisor { what, .. } => match *what {
                "calling" => "supervisor.calling",
                "joined" => "supervisor.joined",
                "mode" => "supervisor.mode",
                "intercepted" => "supervisor.intercepted",
                _ => "supervisor.left",
            },
            EventKind::Leg { .. } => "leg.state",
            EventKind::Dtmf { .. } => "call.dtmf",
            EventKind::ConferenceJoined { .. } => "conference.joined",
            EventKind::ConferenceLeft { .. } => "conference.left",
            EventKind::Hangup { .. } => "call.hangup",
            EventKind::Finished { .. } => "call.finished",
        }
    }

    /// The event's own fields as JSON (the envelope — type, callId, time, seq — is added by
    /// whoever sends it on).
    pub fn data(&self) -> Value {
        match self {
            EventKind::Created { from, to, tenant } => {
                json!({ "from": from, "to": to, "tenant": tenant })
            }
            EventKind::Ringing { early_media } => json!({ "earlyMedia": early_media }),
            EventKind::Answered => json!({}),
            EventKind::Bridged {
                destination,
                destination_type,
            } => json!({ "destination": destination, "destinationType": destination_type }),
            EventKind::Unbridged => json!({}),
            EventKind::Held { party }
            | EventKind::Unheld { party }
            | EventKind::Muted { party, .. } => {
                json!({ "party": party.as_str() })
            }
            EventKind::Supervisor { mode, .. } => json!({ "mode": mode.as_str() }),
            EventKind::Offered {
                from,
                to,
                number,
                timeout_ms,
            } => json!({ "from": from, "to": to, "number": number, "timeoutMs": timeout_ms }),
            EventKind::Claimed { by } => json!({ "by": by }),
            EventKind::Released { by, reason } => json!({ "by": by, "reason": reason }),
            EventKind::OfferExpired | EventKind::BlocksDone => json!({}),
            EventKind::DigitsCollected { variable, digits } => {
                json!({ "variable": variable, "digits": digits })
            }
            EventKind::Transferred {
                mode,
                from_leg,
                to,
                to_type,
            } => json!({
                "mode": mode,
                "fromLeg": from_leg,
                "to": to,
                "destinationType": to_type,
            }),
            EventKind::Recording {
                recording_id,
                started,
                stereo,
                duration_ms,
            } => json!({
                "recordingId": recording_id,
                "state": if *started { "started" } else { "stopped" },
                "stereo": stereo,
                "durationMs": duration_ms,
            }),
            EventKind::Leg {
                party,
                attempt,
                destination,
                state,
            } => json!({
                "party": party.as_str(),
                "attempt": attempt,
                "destination": destination,
                "state": state.as_str(),
            }),
            EventKind::Dtmf {
                digit,
                party: Party::Caller,
            } => json!({ "digit": digit.to_string() }),
            EventKind::Dtmf {
                digit,
                party: Party::Callee,
            } => json!({ "digit": digit.to_string(), "party": "callee" }),
            EventKind::ConferenceJoined {
                conference,
                muted,
                listen_only,
            } => json!({ "conference": conference, "muted": muted, "listenOnly": listen_only }),
            EventKind::ConferenceLeft { conference } => json!({ "conference": conference }),
            EventKind::Hangup {
                cause,
                hangup_by,
                sip_status,
                duration_ms,
                talk_time_ms,
            } => json!({
                "cause": cause.as_str(),
                "hangupBy": hangup_by,
                "sipStatus": sip_status,
                "durationMs": duration_ms,
                "talkTimeMs": talk_time_ms,
            }),
            EventKind::Finished { cdr } => json!({ "hangupCause": cdr.hangup_cause }),
        }
    }
}

/// Whom a call concerns, for realms and subscriptions: the number it was called on and the
/// lines (SIP users) it involves — the phone that placed it, and every SIP user it dialled,
/// from the moment the dialling starts. It only grows during a call.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EventScope {
    pub number: Option<String>,
    pub lines: Vec<String>,
}

/// One state change of one call.
#[derive(Debug, Clone, PartialEq)]
pub struct CallEvent {
    pub call_id: String,
    /// The call's tenant, when it reached one (realms filter on it).
    pub tenant: Option<String>,
    /// The call's number and lines as of this event (shared, cheap to clone).
    pub scope: Arc<EventScope>,
    /// The leg the event is about, by its index in the call (the CDR's `legIndex`: 0 is the
    /// caller), when it is about one.
    pub leg: Option<u32>,
    /// 1, 2, 3… per call, in publishing order.
    pub seq: u64,
    pub time: DateTime<Utc>,
    pub kind: EventKind,
}

/// Receives every event published on a bus. Called on the publisher's task: must not block.
pub trait EventSubscriber: Send + Sync + 'static {
    fn on_event(&self, event: &CallEvent);
}

/// Where call events go.
pub trait EventBus: Send + Sync + 'static {
    fn publish(&self, event: CallEvent);
    fn subscribe(&self, subscriber: Arc<dyn EventSubscriber>);
}

/// The in-process bus: events are handed to every subscriber at once, in order, on the
/// publishing task (a lock is read per event, never written after start-up).
#[derive(Default)]
pub struct LocalBus {
    subscribers: RwLock<Vec<Arc<dyn EventSubscriber>>>,
}

impl EventBus for LocalBus {
    fn publish(&self, event: CallEvent) {
        let subs = self.subscribers.read().unwrap_or_else(|e| e.into_inner());
        for s in subs.iter() {
            s.on_event(&event);
        }
    }

    fn subscribe(&self, subscriber: Arc<dyn EventSubscriber>) {
        self.subscribers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(subscriber);
    }
}

/// Numbers one call's events and publishes them.
pub struct CallEvents {
    bus: Arc<dyn EventBus>,
    call_id: String,
    tenant: Option<String>,
    scope: Arc<EventScope>,
    seq: u64,
}

impl CallEvents {
    pub fn new(bus: Arc<dyn EventBus>, call_id: String, tenant: Option<String>) -> Self {
        CallEvents {
            bus,
            call_id,
            tenant,
            scope: Arc::default(),
            seq: 0,
        }
    }

    /// The number the call was called on, for the events that follow.
    pub fn set_number(&mut self, number: &str) {
        Arc::make_mut(&mut self.scope).number = Some(number.to_string());
    }

    /// A line (SIP user) the call now involves, for the events that follow.
    pub fn add_line(&mut self, line: &str) {
        if !self.scope.lines.iter().any(|l| l == line) {
            Arc::make_mut(&mut self.scope).lines.push(line.to_string());
        }
    }

    /// The call's number and lines so far.
    pub fn scope(&self) -> &EventScope {
        &self.scope
    }

    pub fn publish(&mut self, kind: EventKind) {
        self.publish_for(None, kind);
    }

    /// Publishes an event about one leg (its index in the call, 0 = the caller).
    pub fn publish_for(&mut self, leg: Option<u32>, kind: EventKind) {
        self.seq += 1;
        self.bus.publish(CallEvent {
            call_id: self.call_id.clone(),
            tenant: self.tenant.clone(),
            scope: self.scope.clone(),
            leg,
            seq: self.seq,
            time: Utc::now(),
            kind,
        });
    }
}

/// The CDR writer as a subscriber: every `Finished` event's record is queued for the store
/// (the writer retries, batches and, if the database stays unwritable, logs the whole CDR).
pub struct CdrSubscriber(pub callplane_store::CdrWriter);

impl EventSubscriber for CdrSubscriber {
    fn on_event(&self, event: &CallEvent) {
        if let EventKind::Finished { cdr } = &event.kind {
            if let Err(e) = self.0.write((**cdr).clone()) {
                tracing::warn!(call = %event.call_id, error = %e, "CDR could not be queued");
            }
        }
    }
}

/// Counts events by type and calls ended by cause, for `/metrics`.
#[derive(Default)]
pub struct EventCounters {
    counts: std::sync::Mutex<std::collections::BTreeMap<(&'static str, String), u64>>,
}

impl EventSubscriber for EventCounters {
    fn on_event(&self, event: &CallEvent) {
        let label = match &event.kind {
            EventKind::Hangup { cause, .. } => cause.as_str().to_string(),
            _ => String::new(),
        };
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        *c.entry((event.kind.name(), label)).or_insert(0) += 1;
    }
}

impl EventCounters {
    /// `(event type, hangup cause or "", count)`, sorted.
    pub fn snapshot(&self) -> Vec<(&'static str, String, u64)> {
        self.counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|((t, l), n)| (*t, l.clone(), *n))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn leg_hold_and_unbridge_events_have_names_and_data() {
        let leg = EventKind::Leg {
            party: Party::Callee,
            attempt: Some(1),
            destination: Some("alice".into()),
            state: LegState::EarlyMedia,
        };
        assert_eq!(leg.name(), "leg.state");
        assert_eq!(
            leg.data(),
            json!({"party": "callee", "attempt": 1, "destination": "alice", "state": "early_media"})
        );
        let held = EventKind::Held {
            party: Party::Caller,
        };
        assert_eq!(
            (held.name(), held.data()),
            ("call.held", json!({"party": "caller"}))
        );
        assert_eq!(
            EventKind::Unheld {
                party: Party::Callee
            }
            .name(),
            "call.unheld"
        );
        assert_eq!(EventKind::Unbridged.name(), "call.unbridged");
    }

    #[derive(Default)]
    struct Recorder(Mutex<Vec<(String, u64, &'static str)>>);

    impl EventSubscriber for Recorder {
        fn on_event(&self, e: &CallEvent) {
            self.0
                .lock()
                .unwrap()
                .push((e.call_id.clone(), e.seq, e.kind.name()));
        }
    }

    #[test]
    fn every_subscriber_gets_each_call_s_events_numbered_in_order() {
        let bus: Arc<dyn EventBus> = Arc::new(LocalBus::default());
        let a = Arc::new(Recorder::default());
        let b = Arc::new(Recorder::default());
        bus.subscribe(a.clone());
        bus.subscribe(b.clone());
        let mut one = CallEvents::new(bus.clone(), "c1".into(), Some("t".into()));
        let mut two = CallEvents::new(bus.clone(), "c2".into(), None);
        one.publish(EventKind::Created {
            from: "1".into(),
            to: "2".into(),
            tenant: "t".into(),
        });
        two.publish(EventKind::Answered);
        one.publish(EventKind::Answered);
        let expected = vec![
            ("c1".to_string(), 1, "call.created"),
            ("c2".to_string(), 1, "call.answered"),
            ("c1".to_string(), 2, "call.answered"),
        ];
        assert_eq!(*a.0.lock().unwrap(), expected);
        assert_eq!(*b.0.lock().unwrap(), expected);
    }

    #[test]
    fn event_data_keeps_the_callback_wire_format() {
        assert_eq!(
            EventKind::Dtmf {
                digit: '5',
                party: Party::Caller
            }
            .data(),
            json!({"digit": "5"})
        );
        assert_eq!(
            EventKind::Ringing { early_media: true }.data(),
            json!({"earlyMedia": true})
        );
        let counters = EventCounters::default();
        let ev = |kind| CallEvent {
            call_id: "c".into(),
            tenant: None,
            scope: Arc::default(),
            leg: None,
            seq: 1,
            time: Utc::now(),
            kind,
        };
        counters.on_event(&ev(EventKind::Answered));
        counters.on_event(&ev(EventKind::Hangup {
            cause: HangupCause::NormalClearing,
            hangup_by: "caller",
            sip_status: Some(200),
            duration_ms: 1,
            talk_time_ms: 1,
        }));
        assert_eq!(
            counters.snapshot(),
            vec![
                ("call.answered", String::new(), 1),
                ("call.hangup", "NORMAL_CLEARING".to_string(), 1)
            ]
        );
    }
}
