//! The Call actor: one task per call that owns the call's legs (SIP dialogs and media) and drives
//! its `CallFlow`. It turns SIP and media events into flow inputs and flow actions into SIP and
//! media operations, runs BRIDGE attempts, and writes the CDR when the call ends. Nothing else
//! touches a call's state.

use crate::askurl::{encode_form, parse_reply, LegStatus};
use crate::blocks::{
    parse_blocks, Block, BridgeBlock, ConferenceBlock, DestinationType, ForwardAni,
};
use crate::callstate::{CallStateSender, CallStateSubscriber, CallStateTarget};
use crate::conference::JoinError;
use crate::dial::{AttemptEnd, AttemptId, Dial, DialInput, DialOutput};
use crate::events::{CallEvents, EventBus, EventKind, Party};
use crate::flow::{
    Action, AskUrlRequest, CallControlRequest, CallFlow, ConferenceResult, Input, LegUrls, Prompt,
};
use crate::hangup::HangupCause;
use crate::leg::{
    spawn_inbound, spawn_outbound, Addressed, InboundLegHandle, LegHandle, LegId, LegState, Mailbox,
};
use crate::prompts::PromptLibrary;
use crate::registry::{
    leg_id, CallCommand, CallHandle, CallInfo, CommandRefused, LegInfo, PlayRefused,
};
use crate::variables::CallVariables;
use crate::webhook::{Outcome, WebhookClient, WebhookKind, WebhookRequest};
use bytes::Bytes;
use callplane_media::room::{Audience, MemberId};
use callplane_media::sdp::{negotiate, Direction, LocalSdp, Negotiated, SessionDescription};
use callplane_media::{
    DtmfSource, MediaEngine, MediaEvent, MediaHandle, MediaLeg, RemoteMedia, Room, RoomEvent,
};
use callplane_sip::{
    InboundCall, InboundEvent, OutboundCall, OutboundEvent, OutboundLeg, SipServer, Transport,
};
use callplane_store::model::{Cdr, CdrLeg, Number, Tenant};
use callplane_store::{CdrWriter, Store};
use chrono::{DateTime, Utc};
use serde_json::json;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

/// What every Call actor shares: handles, not state.
pub struct CallServices {
    pub store: Store,
    /// Where every call publishes its events (call-state callbacks, CDRs and metrics subscribe).
    pub events: Arc<dyn EventBus>,
    /// The call-state callback subscriber, where calls register their `callstateInfoUrl`.
    pub callstate: Arc<CallStateSubscriber>,
    /// The tenants' live conferences (CONFERENCE blocks).
    pub conferences: Arc<crate::conference::Conferences>,
    pub cdrs: CdrWriter,
    pub sip: SipServer,
    pub media: MediaEngine,
    pub prompts: Arc<PromptLibrary>,
    /// Active calls by UUID, for commands from the API.
    pub calls: crate::registry::CallRegistry,
    /// The one HTTP client for webhooks and callbacks.
    pub webhooks: Arc<WebhookClient>,
    /// Requests one CALL_CONTROL block instance may send.
    pub max_call_control_loops: u32,
    /// How long a destination chosen by ASK_URL rings.
    pub ask_url_ring_seconds: u32,
    /// This node's name (the ask-URL `server` field).
    pub node_name: String,
    pub active_calls: AtomicUsize,
    pub finished_calls: AtomicU64,
    /// Ids of sessions (leg owners) and of inbound legs on this node.
    pub next_owner: AtomicU64,
    pub next_leg: AtomicU64,
    /// Cancelled when the process shuts down: every Call actor ends its call.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// What a party held by a command hears (8 kHz), looped.
    pub music_on_hold: Arc<[i16]>,
    /// Where recordings are written (`<dir>/<tenant>/<call id>-<recording id>.wav`).
    pub recordings_dir: std::path::PathBuf,
    /// The numbers applications control (custom IVR): their calls are offered first.
    pub controllers: Arc<Controllers>,
    /// How long an offered call waits for a claim before its plan runs.
    pub offer_timeout: Duration,
    /// How long a claimed call waits for its application before its plan runs.
    pub claim_idle_timeout: Option<Duration>,
    /// COLLECT_SPEECH's recognizer, if one is configured.
    pub recognizer: Option<Arc<dyn crate::asr::SpeechRecognizer>>,
}

/// Who ended the call, as written to the CDR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HangupBy {
    Caller,
    Callee,
    System,
    /// An API command (`POST /v1/calls/{id}/hangup`).
    Api,
    /// The caller's side took the call elsewhere (a REFER block).
    Referred,
    /// The first leg moved to another call (a supervisor named by its leg).
    Moved,
}

impl HangupBy {
    fn as_str(self) -> &'static str {
        match self {
            HangupBy::Caller => "caller",
            HangupBy::Callee => "callee",
            HangupBy::System => "system",
            HangupBy::Api => "api",
            HangupBy::Referred => "referred",
            HangupBy::Moved => "moved",
        }
    }
}

/// Per-leg facts for the CDR.
struct LegRecord {
    direction: &'static str,
    destination_type: Option<String>,
    destination: String,
    start: DateTime<Utc>,
    answer: Option<DateTime<Utc>>,
    end: Option<DateTime<Utc>>,
    sip_status: Option<u16>,
    cause: Option<HangupCause>,
}

impl LegRecord {
    /// A destination we are dialling, from now.
    fn dialled(dest: &crate::blocks::BridgeDestination) -> Self {
        LegRecord {
            direction: "outbound",
            destination_type: Some(dest.destination_type.as_str().into()),
            destination: dest.destination.clone(),
            start: now_utc(),
            answer: None,
            end: None,
            sip_status: None,
            cause: None,
        }
    }

    fn to_cdr(
        &self,
        index: usize,
        default_end: DateTime<Utc>,
        default_cause: HangupCause,
    ) -> CdrLeg {
        CdrLeg {
            leg_index: index as i64,
            direction: self.direction.into(),
            destination_type: self.destination_type.clone(),
            destination: self.destination.clone(),
            start_time: self.start,
            answer_time: self.answer,
            end_time: self.end.unwrap_or(default_end),
            sip_status: self.sip_status,
            hangup_cause: self.cause.unwrap_or(default_cause).as_str().into(),
        }
    }
}

/// Turns a judged webhook answer into the flow input that reports it.
type Reply<T> = Box<dyn FnOnce(Result<T, String>) -> Input + Send>;

/// How long an ASK_URL leg callback may take; its answer is ignored anyway.
const LEG_CALLBACK_TIMEOUT: Duration = Duration::from_secs(5);

/// Seconds as the ask-URL protocol counts them: whole, rounded.
fn whole_seconds(d: Duration) -> u64 {
    d.as_secs_f64().round() as u64
}

/// One destination being called by a BRIDGE block, once its INVITE went out.
struct Attempt {
    /// Drives the callee's RTP endpoint; the endpoint itself belongs to the leg's task.
    media: MediaHandle,
    /// Our session description toward this callee, for the whole dialog.
    sdp: LocalSdp,
    /// The outbound leg's own task.
    leg: LegHandle<AttemptEvent>,
    /// Its dialog's Call-ID.
    sip_call_id: String,
    started: Instant,
    answered_at: Option<Instant>,
    /// The callee's telephone-event payload type, once negotiated.
    remote_te: Option<u8>,
    /// The callee's session description (its answer, or its latest re-INVITE's offer),
    /// negotiated: what a session that takes the leg as its first answers against.
    remote: Option<Negotiated>,
    /// Its leg's state as this session last saw it (for `leg.state` events).
    state: LegState,
}

/// A destination's slot in a running BRIDGE, by `AttemptId` (= destination index).
struct AttemptSlot {
    /// Its CDR leg record.
    record: usize,
    /// `None` while its launch task runs (or when the launch failed).
    live: Option<Attempt>,
    /// Dial hung it up while it was still launching: the reason to hang up with on arrival.
    hangup_pending: Option<Option<String>>,
}

/// What a launch task reports: the attempt's INVITE is out, or why it could not be placed.
struct Launched {
    leg: OutboundLeg,
    media: MediaLeg,
    sdp: LocalSdp,
}

/// Results of work a Call actor runs off its task, so that it never awaits IO inline.
enum TaskDone {
    Launched {
        bridge: u64,
        attempt: AttemptId,
        result: Result<Box<Launched>, (u16, String)>,
    },
    Prompts {
        flow_id: u64,
        audio: Arc<[i16]>,
    },
    /// Prompts for [`CallCommand::PlayIntoBridge`], rendered: mixed into that bridge's room.
    BridgePrompts {
        bridge: u64,
        /// Which of the bridge's rooms (`BridgeRoom::id`).
        room: u64,
        audio: Arc<[i16]>,
    },
    /// A player in that bridge's room is over (a prompt ended, music on hold was removed).
    BridgePlayerDone {
        bridge: u64,
        /// Which of the bridge's rooms (`BridgeRoom::id`).
        room: u64,
        member: MemberId,
    },
    /// The supervisor's INVITE is out, or why it could not be placed.
    SupervisorLaunched {
        serial: u64,
        result: Result<Box<Launched>, (u16, String)>,
    },
    /// A party answered our re-INVITE (hold, resume): the callee of that bridge, or the caller.
    Reinvited {
        /// The leg's index in the call (0: the caller).
        record: usize,
        result: Result<callplane_sip::ReinviteAnswer, String>,
    },
}

/// What an attempt's tasks report: its SIP events, keypad digits its media detected, and its
/// media's other events (ends of plays, RTP timeouts: only a session that took the leg as its
/// first plays to it and reads them).
enum AttemptEvent {
    Sip(OutboundEvent),
    Digit { digit: char, source: DtmfSource },
    Media(MediaEvent),
}

impl AttemptEvent {
    fn from_media(ev: MediaEvent) -> Option<AttemptEvent> {
        Some(match ev {
            MediaEvent::Dtmf { digit, source } => AttemptEvent::Digit { digit, source },
            ev => AttemptEvent::Media(ev),
        })
    }
}

/// A running BRIDGE block: the sans-IO `Dial` and the legs it placed.
struct BridgeRun {
    /// Which BRIDGE of the call this is: late launch results of an earlier one are refused.
    serial: u64,
    dial: Dial,
    forward_ani: ForwardAni,
    slots: Vec<AttemptSlot>,
    events_tx: mpsc::UnboundedSender<Addressed<AttemptEvent>>,
    events: mpsc::UnboundedReceiver<Addressed<AttemptEvent>>,
    /// The placed legs this bridge owns (leg id = attempt number), in their current epoch.
    mailbox: Mailbox,
    /// The attempt whose audio the caller's media is bridged to (early media or answered).
    bridged: Option<AttemptId>,
    /// The winner; stays set after its callee hung up.
    connected: Option<AttemptId>,
    ringback_playing: bool,
    /// ASK_URL's `answer_url`/`hangup_url` for every leg of this bridge.
    leg_urls: Option<LegUrls>,
    /// Set while the connected pair is in a room (something was played into the bridge).
    room: Option<BridgeRoom>,
    /// Legs placed elsewhere that this bridge adopted (a supervisor that intercepted), with
    /// the attempt each is here; every other leg's id is its attempt number.
    adopted: Vec<(LegId, AttemptId)>,
}

impl BridgeRun {
    fn live(&self, a: AttemptId) -> Option<&Attempt> {
        self.slots.get(a.0 as usize).and_then(|s| s.live.as_ref())
    }

    /// Puts `attempt`'s slot in place (the slots before it, not yet used, are empty).
    fn put_slot(&mut self, attempt: AttemptId, record: usize, live: Option<Attempt>) {
        let slot = attempt.0 as usize;
        if self.slots.len() <= slot {
            self.slots.resize_with(slot + 1, || AttemptSlot {
                record: usize::MAX,
                live: None,
                hangup_pending: None,
            });
        }
        self.slots[slot] = AttemptSlot {
            record,
            live,
            hangup_pending: None,
        };
    }
}

/// The leg a session runs its plan for: the caller of an inbound call, or the party an
/// originated call reached (already answered when its session starts).
enum CallerLeg {
    Inbound(InboundLegHandle),
    Outbound(LegHandle<OutboundEvent>),
    /// A party another call dialled, handed over answered (a blind transfer from that call's
    /// first leg): its task speaks a dialled party's events.
    Party(LegHandle<AttemptEvent>),
    /// Moved to another call ([`Call::release_caller`]): nothing of this session reaches it.
    Moved,
}

impl CallerLeg {
    /// Its leg id (none once moved).
    fn id(&self) -> Option<LegId> {
        match self {
            CallerLeg::Inbound(l) => Some(l.id),
            CallerLeg::Outbound(l) => Some(l.id),
            CallerLeg::Party(l) => Some(l.id),
            CallerLeg::Moved => None,
        }
    }

    fn ringing(&self, sdp: Option<String>) {
        if let CallerLeg::Inbound(l) = self {
            l.ringing(sdp);
        }
    }

    fn answer(&self, sdp: String) -> Result<(), callplane_sip::SipError> {
        match self {
            CallerLeg::Inbound(l) => l.answer(sdp),
            CallerLeg::Outbound(_) | CallerLeg::Party(_) | CallerLeg::Moved => Ok(()),
        }
    }

    fn reject(&self, status: u16, reason: Option<String>) {
        match self {
            CallerLeg::Inbound(l) => l.reject(status, reason),
            CallerLeg::Outbound(l) => l.hangup(reason),
            CallerLeg::Party(l) => l.hangup(reason),
            CallerLeg::Moved => {}
        }
    }

    /// What sends re-INVITEs on its dialog (none once moved).
    fn reinviter(&self) -> Option<callplane_sip::Reinviter> {
        match self {
            CallerLeg::Inbound(l) => Some(l.reinviter()),
            CallerLeg::Outbound(l) => Some(l.reinviter()),
            CallerLeg::Party(l) => Some(l.reinviter()),
            CallerLeg::Moved => None,
        }
    }

    /// BYE; the receiver fires when its transaction is over (an outbound leg's task does not
    /// say: at once).
    fn hangup(&self, reason: Option<String>) -> tokio::sync::oneshot::Receiver<()> {
        match self {
            CallerLeg::Inbound(l) => l.hangup(reason),
            CallerLeg::Outbound(l) => {
                l.hangup(reason);
                tokio::sync::oneshot::channel().1
            }
            CallerLeg::Party(l) => {
                l.hangup(reason);
                tokio::sync::oneshot::channel().1
            }
            CallerLeg::Moved => tokio::sync::oneshot::channel().1,
        }
    }
}

/// How a session presents itself to the destinations its BRIDGE blocks dial: by default the
/// caller's number (or the called one, per CALL_SETTINGS `forwardAni`), no display name, no
/// extra headers. Callback and click-to-dial set the caller ID the second party sees, and
/// for a withheld one the `anonymous` identity and `Privacy` header.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BridgeIdentity {
    /// The From user BRIDGE destinations see (overrides `forwardAni`).
    pub caller_id: Option<String>,
    pub display: Option<String>,
    pub headers: Vec<(String, String)>,
}

/// What differs between the sessions of an inbound and an originated call when they start.
struct SessionStart {
    bridge_as: BridgeIdentity,
    uuid: String,
    sip_call_id: String,
    tenant: Tenant,
    number: Number,
    caller: String,
    called: String,
    authenticated_user: Option<String>,
    leg: CallerLeg,
    direction: &'static str,
    leg_events: mpsc::UnboundedReceiver<Addressed<InboundEvent>>,
    held: Mailbox,
    caller_state: LegState,
    media: MediaHandle,
    media_events: mpsc::Receiver<MediaEvent>,
    sdp: LocalSdp,
    offer: Negotiated,
    flow: CallFlow,
    first_leg: LegRecord,
    start: DateTime<Utc>,
    /// Set for an originated call: answered before its session starts.
    answered: Option<(DateTime<Utc>, Instant)>,
    commands: mpsc::UnboundedReceiver<CallCommand>,
    events: CallEvents,
}

impl SessionStart {
    fn into_call(self, svc: Arc<CallServices>) -> Call {
        let (inputs_tx, inputs) = mpsc::unbounded_channel();
        let (tasks_tx, tasks) = mpsc::unbounded_channel();
        let (side_tx, side_rx) = mpsc::unbounded_channel();
        let svc_owner = svc.next_owner.fetch_add(1, Ordering::Relaxed);
        Call {
            svc,
            uuid: self.uuid,
            sip_call_id: self.sip_call_id,
            tenant: self.tenant,
            number: self.number,
            caller: self.caller,
            called: self.called,
            authenticated_user: self.authenticated_user,
            leg: self.leg,
            direction: self.direction,
            bridge_as: self.bridge_as,
            leg_events: self.leg_events,
            held: self.held,
            bye_done: None,
            caller_state: self.caller_state,
            media: self.media,
            media_events: self.media_events,
            media_gone: false,
            sdp: self.sdp,
            offer: self.offer,
            answered: self.answered.is_some(),
            answer_with: None,
            flow: self.flow,
            playing: None,
            stream: None,
            listening: None,
            bridge: None,
            conference: None,
            callee_seat: None,
            conf_mode: false,
            caller_gone: false,
            reinviting: std::collections::HashMap::new(),
            offer_deadline: None,
            controller: None,
            controller_session: None,
            idle_since: None,
            bridges_run: 0,
            rooms_made: 0,
            supervisor: None,
            supervisions: 0,
            adopt_on_bridge: None,
            side: Mailbox::new(svc_owner),
            side_tx,
            side_rx,
            tasks_tx,
            tasks,
            legs: vec![self.first_leg],
            start: self.start,
            answer_time: self.answered.map(|a| a.0),
            answered_at: self.answered.map(|a| a.1),
            ended: None,
            inputs_tx,
            inputs,
            commands: self.commands,
            events: self.events,
        }
    }
}

struct Call {
    svc: Arc<CallServices>,
    uuid: String,
    sip_call_id: String,
    tenant: Tenant,
    number: Number,
    caller: String,
    called: String,
    /// The SIP user who placed the call, when it came from a registered phone.
    authenticated_user: Option<String>,
    /// The caller's leg (for a call we placed, the party we called first): its own task,
    /// reporting here.
    leg: CallerLeg,
    /// `inbound` (offered to us) or `outbound` (placed through the API).
    direction: &'static str,
    /// Who BRIDGE destinations see calling (set by callback and click-to-dial).
    bridge_as: BridgeIdentity,
    leg_events: mpsc::UnboundedReceiver<Addressed<InboundEvent>>,
    /// The legs this session holds (the caller's), in their current epoch.
    held: Mailbox,
    /// Fires when the BYE we sent the caller is over (awaited once the CDR is written).
    bye_done: Option<tokio::sync::oneshot::Receiver<()>>,
    /// The caller's leg state as this session drives and sees it (for `leg.state` events).
    caller_state: LegState,
    /// Drives the caller's RTP endpoint; the endpoint itself belongs to the caller's leg task.
    media: MediaHandle,
    media_events: mpsc::Receiver<MediaEvent>,
    media_gone: bool,
    /// Our session description toward the caller, for the whole dialog.
    sdp: LocalSdp,
    /// The caller's last offer (initial INVITE or re-INVITE), negotiated.
    offer: Negotiated,
    answered: bool,
    /// The flow answered for a prompt that is still rendering (its flow play id): the 200 OK
    /// goes out with the audio ready, so the caller hears ringback rather than dead air
    /// meanwhile and a CANCEL still ends the call with 487.
    answer_with: Option<u64>,
    flow: CallFlow,
    /// The flow's play id of what the media leg is playing, keyed by the media's play id.
    playing: Option<(u64, u64)>,
    /// The running STREAM block's task: digits and ends of plays go to it; dropping it ends
    /// the stream.
    stream: Option<(u64, mpsc::UnboundedSender<crate::stream::StreamControl>)>,
    /// A COLLECT_SPEECH try's listen task; sending (or dropping) stops it.
    listening: Option<mpsc::UnboundedSender<()>>,
    bridge: Option<BridgeRun>,
    /// The conference the caller is in (CONFERENCE block, or the call turned into one).
    conference: Option<ConferenceSeat>,
    /// The connected callee's seat, once the call was turned into a conference.
    callee_seat: Option<ConferenceSeat>,
    /// The call was turned into a conference: its plan is over, and it lives as long as one of
    /// its legs is in the conference.
    conf_mode: bool,
    /// In conference mode: the caller's leg is gone (the callee goes on).
    caller_gone: bool,
    /// Legs (by index) with a re-INVITE of ours in flight, and the hold state asked for
    /// meanwhile (sent once that one is answered).
    reinviting: std::collections::HashMap<usize, Option<bool>>,
    /// Offered to applications: when the plan runs if nobody claims the call.
    offer_deadline: Option<Instant>,
    /// The application (its API key's name) that claimed the call.
    controller: Option<String>,
    /// The events session it claimed the call through: the claim lasts as long as it does.
    controller_session: Option<String>,
    /// Since when a claimed call has been waiting for its application (nothing running).
    idle_since: Option<Instant>,
    /// Counts BRIDGE blocks run, for `BridgeRun::serial`.
    bridges_run: u64,
    /// Counts bridge rooms made, for `BridgeRoom::id`.
    rooms_made: u64,
    /// The supervisor dialled into the call (`POST …/supervise`).
    supervisor: Option<supervise::Supervisor>,
    /// Counts supervisors dialled, for `Supervisor::serial`.
    supervisions: u64,
    /// A party answered elsewhere that the next BRIDGE is connected to instead of dialling
    /// (the new call of an attended transfer from a first leg).
    adopt_on_bridge: Option<MovedLeg>,
    /// The legs this session holds besides its caller and its bridge's (the supervisor), and
    /// where they report.
    side: Mailbox,
    side_tx: mpsc::UnboundedSender<Addressed<AttemptEvent>>,
    side_rx: mpsc::UnboundedReceiver<Addressed<AttemptEvent>>,
    /// Work run off the actor (launches, prompt rendering) reports back here.
    tasks_tx: mpsc::UnboundedSender<TaskDone>,
    tasks: mpsc::UnboundedReceiver<TaskDone>,
    legs: Vec<LegRecord>,
    start: DateTime<Utc>,
    answer_time: Option<DateTime<Utc>>,
    answered_at: Option<Instant>,
    ended: Option<(HangupCause, HangupBy, Option<u16>)>,
    /// Webhook answers come back here as flow inputs.
    inputs_tx: mpsc::UnboundedSender<Input>,
    inputs: mpsc::UnboundedReceiver<Input>,
    /// Commands from the API (through the registry).
    commands: mpsc::UnboundedReceiver<CallCommand>,
    /// This call's events, numbered, on the bus.
    events: CallEvents,
}

fn now_utc() -> DateTime<Utc> {
    Utc::now()
}

/// The DTMF digits in a SIP INFO or RTP event that a flow understands.
fn is_dtmf(d: char) -> bool {
    matches!(d, '0'..='9' | '*' | '#' | 'A'..='D')
}

/// Resolves `prompts` (files, espeak-ng for TTS) on a blocking thread and joins them; a prompt
/// that cannot be had is skipped with a log line (nothing at all: empty audio).
async fn render_prompts(
    lib: Arc<PromptLibrary>,
    tenant: String,
    prompts: Vec<Prompt>,
) -> Arc<[i16]> {
    let resolved = tokio::task::spawn_blocking(move || {
        let mut out: Vec<Arc<[i16]>> = Vec::new();
        for p in &prompts {
            match lib.resolve_blocking(&tenant, p) {
                Ok(a) => out.push(a),
                Err(e) => warn!(prompt = ?p, error = %e, "prompt unavailable; skipped"),
            }
        }
        out
    })
    .await
    .unwrap_or_default();
    if resolved.len() == 1 {
        resolved[0].clone()
    } else {
        resolved.iter().flat_map(|a| a.iter().copied()).collect()
    }
}

/// The events of a leg whose state went from `was` to `state`: its `leg.state`, and
/// `call.held` / `call.unheld` when its hold changed.
fn leg_state_events(
    party: Party,
    attempt: Option<u32>,
    destination: Option<String>,
    was: LegState,
    state: LegState,
) -> Vec<EventKind> {
    let mut out = vec![EventKind::Leg {
        party,
        attempt,
        destination,
        state,
    }];
    match (was, state) {
        (_, LegState::Held) => out.push(EventKind::Held { party }),
        (LegState::Held, LegState::Answered) => out.push(EventKind::Unheld { party }),
        _ => {}
    }
    out
}

/// Whether a party's offer puts the call on hold (RFC 3264 §8.4: it stops receiving).
fn holds(direction: Direction) -> bool {
    matches!(direction, Direction::SendOnly | Direction::Inactive)
}

/// The variable that collects the digits a bridged callee pressed.
const CALLEE_DIGITS: &str = "callee_digits";

/// Whether a digit from one bridged party must be sent to the other by us: the relay carries
/// RFC 4733 events to a party that negotiated telephone-event, and in-band tones as audio; SIP
/// INFO, and RFC 4733 toward a party without telephone-event (then in band), it cannot.
fn needs_regeneration(source: Option<DtmfSource>, other_te: Option<u8>) -> bool {
    match source {
        None => true,
        Some(DtmfSource::Rfc4733) => other_te.is_none(),
        Some(DtmfSource::Inband) => false,
    }
}

/// Parses an SDP offer or answer and picks our codec and telephone-event from it.
fn negotiate_sdp(sdp: &str) -> Result<Negotiated, String> {
    let sd = SessionDescription::parse(sdp).map_err(|e| e.to_string())?;
    negotiate(&sd).map_err(|e| e.to_string())
}

/// Publishes a finished call's record: the CDR writer (a bus subscriber) queues it, retries and,
/// if the database stays unwritable, logs the whole CDR.
fn write_cdr(events: &mut CallEvents, cdr: Cdr) {
    events.publish(EventKind::Finished { cdr: Box::new(cdr) });
}

/// Starts call `uuid`'s call-state callbacks: to `url`, else the tenant's URL, if any.
fn register_callstate(svc: &CallServices, tenant: &Tenant, uuid: &str, url: Option<String>) {
    let Some(url) = url.or_else(|| tenant.callstate_info_url.clone()) else {
        return;
    };
    let sender = CallStateSender::start(
        svc.webhooks.clone(),
        CallStateTarget {
            url,
            tenant: tenant.name.clone(),
            customer_number: tenant.customer_number,
            signing_secret: tenant.signing_secret.clone(),
        },
        uuid.to_string(),
    );
    svc.callstate.register(uuid, sender);
}

/// Refuses a call that never reached a Call actor (unknown number, bad SDP…) with the cause's
/// SIP response, and writes its CDR.
fn reject_call(
    svc: &CallServices,
    call: &mut InboundCall,
    tenant: Option<&str>,
    cause: HangupCause,
    start: DateTime<Utc>,
) {
    let status = cause.sip_status();
    call.leg.reject(status, Some(cause.reason_header()));
    let end = now_utc();
    let mut variables = std::collections::BTreeMap::new();
    variables.insert("caller_id_number".to_string(), call.caller.clone());
    variables.insert("destination_number".to_string(), call.called.clone());
    let call_id = uuid::Uuid::new_v4().to_string();
    let mut events = CallEvents::new(
        svc.events.clone(),
        call_id.clone(),
        tenant.map(str::to_string),
    );
    write_cdr(
        &mut events,
        Cdr {
            call_id,
            sip_call_id: call.sip_call_id.clone(),
            tenant: tenant.map(str::to_string),
            number: call.called.clone(),
            caller: call.caller.clone(),
            start_time: start,
            answer_time: None,
            end_time: end,
            talk_time_ms: 0,
            hangup_cause: cause.as_str().into(),
            hangup_by: HangupBy::System.as_str().into(),
            sip_status: Some(status),
            recording_path: None,
            legs: vec![CdrLeg {
                leg_index: 0,
                direction: "inbound".into(),
                destination_type: None,
                destination: call.called.clone(),
                start_time: start,
                answer_time: None,
                end_time: end,
                sip_status: Some(status),
                hangup_cause: cause.as_str().into(),
            }],
            variables,
            lines: call.authenticated_user.iter().cloned().collect(),
            recordings: Vec::new(),
        },
    );
}

/// Handles one inbound INVITE from offer to CDR.
pub async fn run_inbound_call(svc: Arc<CallServices>, mut call: InboundCall) {
    let start = now_utc();
    svc.active_calls.fetch_add(1, Ordering::Relaxed);
    let _guard = ActiveGuard(svc.clone());

    // Two indexed reads on a read connection (never behind a writer), on a blocking thread so
    // that a slow disk holds no runtime worker. The leg's events wait in its own channel.
    let looked_up = {
        let store = svc.store.clone();
        let called = call.called.clone();
        tokio::task::spawn_blocking(move || {
            let found = store.find_number(&called)?;
            let plan = match &found {
                Some((number, tenant)) => store
                    .get_routing_plan(&tenant.name, &number.routing_plan)
                    .ok()
                    .flatten(),
                None => None,
            };
            Ok::<_, callplane_store::StoreError>((found, plan))
        })
        .await
    };
    let (found, plan) = match looked_up {
        Ok(Ok(f)) => (Ok(f.0), f.1),
        Ok(Err(e)) => (Err(e.to_string()), None),
        Err(e) => (Err(e.to_string()), None),
    };
    let found = match found {
        Ok(f) => f,
        Err(e) => {
            warn!(error = %e, "store lookup failed");
            reject_call(
                &svc,
                &mut call,
                None,
                HangupCause::NormalTemporaryFailure,
                start,
            );
            return;
        }
    };
    let Some((number, tenant)) = found else {
        info!(called = %call.called, caller = %call.caller, "unknown number");
        reject_call(&svc, &mut call, None, HangupCause::UnallocatedNumber, start);
        return;
    };
    let mut plan_callstate_url = None;
    let blocks = match plan {
        Some(plan) => {
            plan_callstate_url = plan.callstate_info_url;
            parse_blocks(&serde_json::Value::Array(plan.blocks))
        }
        _ => Err(Vec::new()),
    };
    let Ok(blocks) = blocks else {
        warn!(plan = %number.routing_plan, "routing plan missing or invalid");
        reject_call(
            &svc,
            &mut call,
            Some(&tenant.name),
            HangupCause::NormalTemporaryFailure,
            start,
        );
        return;
    };
    let negotiated = call
        .offer
        .as_deref()
        .ok_or_else(|| "INVITE without SDP offer".to_string())
        .and_then(negotiate_sdp);
    let negotiated = match negotiated {
        Ok(n) => n,
        Err(e) => {
            info!(error = %e, "cannot negotiate media");
            reject_call(
                &svc,
                &mut call,
                Some(&tenant.name),
                HangupCause::IncompatibleDestination,
                start,
            );
            return;
        }
    };
    let mut media = match svc.media.allocate().await {
        Ok(m) => m,
        Err(e) => {
            warn!(error = %e, "no RTP port");
            reject_call(
                &svc,
                &mut call,
                Some(&tenant.name),
                HangupCause::SwitchCongestion,
                start,
            );
            return;
        }
    };
    media.set_remote(RemoteMedia::from(&negotiated));
    let media_addr = media.local_addr();
    // Peers without RFC 4733 get their keypad tones detected in the audio.
    media.set_inband_detection(negotiated.telephone_event_pt.is_none());
    let Some(media_events) = media.take_events() else {
        warn!("media leg without event channel");
        return;
    };

    let call_uuid = uuid::Uuid::new_v4();
    let uuid = call_uuid.to_string();
    let vars = CallVariables::new(
        call_uuid,
        call.sip_call_id.clone(),
        call.caller.clone(),
        call.called.clone(),
        start,
    );
    let flow = CallFlow::new(blocks, vars)
        .with_max_call_control_loops(svc.max_call_control_loops)
        .with_ask_url_ring_seconds(svc.ask_url_ring_seconds);
    let InboundCall {
        sip_call_id,
        caller,
        called,
        leg,
        source,
        authenticated_user,
        ..
    } = call;
    // The most specific callstateInfoUrl wins: number, then plan, then tenant.
    register_callstate(
        &svc,
        &tenant,
        &uuid,
        number.callstate_info_url.clone().or(plan_callstate_url),
    );
    let mut events = CallEvents::new(svc.events.clone(), uuid.clone(), Some(tenant.name.clone()));
    events.set_number(&number.number);
    if let Some(user) = &authenticated_user {
        events.add_line(user);
    }
    // The session owns the caller's leg in epoch 1; the leg is a task of its own.
    let mut held = Mailbox::new(svc.next_owner.fetch_add(1, Ordering::Relaxed));
    let leg_id = LegId(svc.next_leg.fetch_add(1, Ordering::Relaxed));
    let (leg_tx, leg_events) = mpsc::unbounded_channel();
    // The leg's task owns the caller's RTP endpoint too: it lives as long as the dialog.
    let media_owner = media;
    let media = media_owner.handle();
    let leg = spawn_inbound(leg_id, leg, media_owner, held.adopt(leg_id, 1), leg_tx);
    let (commands_tx, commands) = mpsc::unbounded_channel();
    svc.calls.insert(
        &uuid,
        CallHandle {
            tenant: tenant.name.clone(),
            number: number.number.clone(),
            commands: commands_tx,
        },
    );
    // Logged once the API can reach the call (tests read its id from this line).
    info!(call = %uuid, %caller, %called, %source, tenant = %tenant.name, "call started");
    let mut c = SessionStart {
        bridge_as: BridgeIdentity::default(),
        uuid,
        sip_call_id,
        tenant,
        number,
        caller,
        called: called.clone(),
        authenticated_user,
        leg: CallerLeg::Inbound(leg),
        direction: "inbound",
        leg_events,
        held,
        caller_state: LegState::Calling,
        media,
        media_events,
        sdp: LocalSdp::new(rand_u64(), media_addr),
        offer: negotiated,
        flow,
        first_leg: LegRecord {
            direction: "inbound",
            destination_type: None,
            destination: called,
            start,
            answer: None,
            end: None,
            sip_status: None,
            cause: None,
        },
        start,
        answered: None,
        commands,
        events,
    }
    .into_call(svc.clone());
    c.emit(EventKind::Created {
        from: c.caller.clone(),
        to: c.called.clone(),
        tenant: c.tenant.name.clone(),
    });
    if svc
        .controllers
        .is_controlled(&c.tenant.name, &c.number.number)
    {
        c.offer();
    }
    c.run().await;
    svc.calls.remove(&c.uuid);
}

struct ActiveGuard(Arc<CallServices>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active_calls.fetch_sub(1, Ordering::Relaxed);
        self.0.finished_calls.fetch_add(1, Ordering::Relaxed);
    }
}

fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    rand::fill(&mut b);
    u64::from_be_bytes(b) >> 1
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
        None => std::future::pending().await,
    }
}

impl Call {
    /// Our answer to the caller's current offer.
    fn local_sdp(&mut self) -> String {
        self.sdp.answer(&self.offer)
    }

    async fn run(&mut self) {
        // An offered call's plan waits for the offer to expire (or never runs if claimed).
        if self.offer_deadline.is_none() {
            self.flow.start(Instant::now());
        }
        loop {
            self.run_actions().await;
            if self.ended.is_some() {
                break;
            }
            let timer = self.flow.poll_timeout();
            let bridge_deadline = self.bridge.as_ref().and_then(|b| b.dial.poll_timeout());
            let claim_deadline = self.claim_idle_deadline();
            tokio::select! {
                ev = self.leg_events.recv() => match ev {
                    // An event from an epoch this session no longer holds is dropped.
                    Some(a) => {
                        if let Some((_, ev)) = self.held.accept(a) {
                            self.on_leg_event(Some(ev)).await;
                        }
                    }
                    None => self.on_leg_event(None).await,
                },
                ev = self.media_events.recv(), if !self.media_gone => self.on_media_event(ev),
                ev = recv_bridge(&mut self.bridge) => self.on_bridge_event(ev).await,
                ev = supervise::recv_side(&mut self.side_rx, &self.side) => self.on_supervisor_event(ev).await,
                _ = sleep_until_opt(timer) => self.flow.handle_timeout(Instant::now()),
                _ = sleep_until_opt(self.offer_deadline) => self.offer_expired(),
                _ = sleep_until_opt(claim_deadline) => self.claim_idle(),
                Some(input) = self.inputs.recv() => {
                    if let Input::StreamEnded { id, .. } = &input {
                        if self.stream.as_ref().is_some_and(|(s, _)| s == id) {
                            self.stream = None;
                        }
                    }
                    if matches!(input, Input::ConferenceLeft(_)) {
                        // The conference ended under us: out of its room first.
                        self.leave_conference();
                        if self.conf_mode {
                            // A call made a conference has no plan to go on with.
                            self.hangup(HangupCause::NormalClearing, HangupBy::System).await;
                            continue;
                        }
                    }
                    self.flow.handle(input, Instant::now());
                }
                Some(done) = self.tasks.recv() => self.on_task_done(done),
                Some(cmd) = self.commands.recv() => match cmd {
                    CallCommand::Interrupt => {
                        info!(call = %self.uuid, "interrupted");
                        self.flow.handle(Input::Interrupt, Instant::now());
                    }
                    CallCommand::PlayIntoBridge { blocks, reply } => {
                        let _ = reply.send(self.play_into_bridge(blocks));
                    }
                    CallCommand::Control { cmd, reply } => {
                        let _ = reply.send(self.control(cmd));
                    }
                    CallCommand::Claim { by, session, reply } => {
                        let _ = reply.send(self.claim(by, session));
                    }
                    CallCommand::ReleaseClaim { session } => self.release_claim(&session),
                    CallCommand::RunBlocks { blocks, reply } => {
                        let _ = reply.send(self.run_blocks(blocks));
                    }
                    CallCommand::ReleaseLeg { leg, to_call, mode, reply } => {
                        let released = self.release_leg(leg, &to_call, mode).map(Box::new);
                        // The transfer was given up meanwhile: nobody takes the leg.
                        if let Err(Ok(moved)) = reply.send(released) {
                            moved.hang_up();
                        }
                    }
                    CallCommand::HandOffWith { leg, consult, reply } => {
                        let _ = reply.send(self.attended_from_first_leg(*leg, consult));
                    }
                    CallCommand::AdoptSupervisor { leg, mode, reply } => {
                        let _ = reply.send(self.adopt_supervisor(*leg, mode));
                    }
                    CallCommand::AdoptForTransfer { leg, from, consult, reply } => {
                        let _ = reply.send(self.adopt_for_transfer(*leg, from, &consult));
                    }
                    CallCommand::Snapshot { reply } => {
                        let _ = reply.send(self.snapshot());
                    }
                    CallCommand::SendDtmf { leg, digits, reply } => {
                        let r = self.send_dtmf(leg, &digits).map(|()| self.snapshot());
                        let _ = reply.send(r);
                    }
                    CallCommand::Hangup { cause, reply } => {
                        if self.ended.is_some() {
                            let _ = reply.send(Err(CommandRefused::Ending));
                        } else {
                            info!(call = %self.uuid, cause = cause.as_str(), "hung up by the API");
                            self.flow.stop();
                            self.hangup(cause, HangupBy::Api).await;
                            let _ = reply.send(Ok(self.snapshot()));
                        }
                    }
                },
                _ = sleep_until_opt(bridge_deadline) => self.on_bridge_timeout(),
                _ = self.svc.shutdown.cancelled() => {
                    info!(call = %self.uuid, "ending the call: the switch is shutting down");
                    self.flow.stop();
                    self.hangup(HangupCause::NormalTemporaryFailure, HangupBy::System).await;
                }
            }
        }
        self.finish().await;
    }

    async fn run_actions(&mut self) {
        while let Some(action) = self.flow.poll_action() {
            if self.answer_with.is_some() && !matches!(action, Action::Play { .. }) {
                // The flow went on before the prompt was ready: answer as it asked.
                self.answer_with = None;
                self.answer();
            }
            match action {
                Action::Answer => match self.flow.peek_action() {
                    Some(Action::Play { id, .. }) if !self.answered => {
                        self.answer_with = Some(*id);
                    }
                    _ => self.answer(),
                },
                Action::Play { id, prompts } => self.play(id, prompts),
                Action::StopPlay => {
                    self.media.stop_play();
                }
                Action::Bridge {
                    block,
                    forward_ani,
                    leg_urls,
                } => self.start_bridge(block, forward_ani, leg_urls),
                Action::StopBridge => self.stop_bridge(),
                Action::CallControl(req) => self.send_call_control(req),
                Action::AskUrl(req) => self.send_ask_url(req),
                Action::LoadPlan { name } => self.load_plan(name),
                Action::Hangup { cause } => {
                    self.hangup(cause, HangupBy::System).await;
                }
                Action::Conference { block } => self.join_conference(block),
                Action::LeaveConference => self.leave_conference(),
                Action::Collected { variable, digits } => {
                    self.emit_for(0, EventKind::DigitsCollected { variable, digits })
                }
                Action::BlocksDone => self.emit_for(0, EventKind::BlocksDone),
                Action::Refer { id, destination } => self.send_refer(id, destination),
                Action::Referred {
                    destination,
                    status,
                } => self.referred(destination, status).await,
                Action::Stream { id, block } => self.start_stream(id, block),
                Action::Listen {
                    id,
                    language,
                    timeout,
                } => self.start_listening(id, language, timeout),
                Action::StopListen => {
                    if let Some(stop) = self.listening.take() {
                        let _ = stop.send(());
                    }
                }
                Action::StopStream => {
                    if let Some((_, s)) = self.stream.take() {
                        let _ = s.send(crate::stream::StreamControl::Stop);
                    }
                }
            }
        }
    }

    /// Starts a COLLECT_SPEECH try's listen task; `Input::SpeechResult` comes back through
    /// `inputs` (at once, as a failure, when no recognizer is configured).
    fn start_listening(&mut self, id: u64, language: String, timeout: Duration) {
        if let Some(old) = self.listening.take() {
            let _ = old.send(());
        }
        let Some(recognizer) = self.svc.recognizer.clone() else {
            let _ = self.inputs_tx.send(Input::SpeechResult {
                id,
                result: Err(
                    "no speech recognizer (neither [asr] url nor the built-in model)".into(),
                ),
            });
            return;
        };
        let (stop_tx, stop) = mpsc::unbounded_channel();
        self.listening = Some(stop_tx);
        tokio::spawn(crate::asr::listen(crate::asr::ListenJob {
            id,
            language,
            timeout,
            recognizer,
            media: self.media.clone(),
            inputs: self.inputs_tx.clone(),
            stop,
        }));
    }

    /// Starts a STREAM block's task; `Input::StreamEnded` comes back through `inputs`.
    fn start_stream(&mut self, id: u64, block: crate::blocks::StreamBlock) {
        let (control_tx, control) = mpsc::unbounded_channel();
        if let Some((_, old)) = self.stream.replace((id, control_tx)) {
            let _ = old.send(crate::stream::StreamControl::Stop);
        }
        let job = crate::stream::StreamJob {
            id,
            url: block.url,
            track: block.track,
            parameters: block.parameters,
            timeout: Duration::from_secs(block.timeout.into()),
            call_id: self.uuid.clone(),
            account: self.tenant.name.clone(),
            media: self.media.clone(),
            inputs: self.inputs_tx.clone(),
            control,
        };
        tokio::spawn(crate::stream::run(job));
    }

    /// Sends REFER off the actor; `Input::ReferAnswered` comes back through `inputs`.
    fn send_refer(&mut self, id: u64, destination: String) {
        info!(call = %self.uuid, %destination, "REFER");
        let reinviter = self.leg.reinviter();
        let inputs = self.inputs_tx.clone();
        let uuid = self.uuid.clone();
        tokio::spawn(async move {
            let Some(reinviter) = reinviter else {
                let _ = inputs.send(Input::ReferAnswered { id, status: None });
                return;
            };
            let status = match reinviter.refer(&destination).await {
                Ok(status) => Some(status),
                Err(e) => {
                    warn!(call = %uuid, error = %e, "REFER could not be sent");
                    None
                }
            };
            let _ = inputs.send(Input::ReferAnswered { id, status });
        });
    }

    /// The caller's side transferred the call (REFER block): our part ends with BYE, and the
    /// CDR has a `refer` leg naming where it went.
    async fn referred(&mut self, destination: String, status: u16) {
        info!(call = %self.uuid, %destination, status, "call referred");
        let now = now_utc();
        self.legs.push(LegRecord {
            direction: "refer",
            destination_type: None,
            destination,
            start: now,
            answer: Some(now),
            end: Some(now),
            sip_status: Some(status),
            cause: Some(HangupCause::NormalClearing),
        });
        self.hangup(HangupCause::NormalClearing, HangupBy::Referred)
            .await;
    }

    /// Reads a stored plan off the actor; `Input::PlanLoaded` comes back through `inputs`.
    fn load_plan(&mut self, name: String) {
        let store = self.svc.store.clone();
        let tenant = self.tenant.name.clone();
        let inputs = self.inputs_tx.clone();
        tokio::spawn(async move {
            let lookup = name.clone();
            let plan =
                tokio::task::spawn_blocking(move || store.get_routing_plan(&tenant, &lookup)).await;
            let blocks = match plan {
                Ok(Ok(Some(plan))) => parse_blocks(&serde_json::Value::Array(plan.blocks))
                    .map_err(
                        |errs| warn!(plan = %name, errors = errs.len(), "stored plan is invalid"),
                    )
                    .ok(),
                _ => None,
            };
            let _ = inputs.send(Input::PlanLoaded { name, blocks });
        });
    }

    fn answer(&mut self) {
        if self.answered {
            return;
        }
        let sdp = self.local_sdp();
        if let Err(e) = self.leg.answer(sdp) {
            // The caller cancelled first: its CANCEL arrives as an event.
            warn!(call = %self.uuid, error = %e, "answer failed");
            return;
        }
        // From now on the caller hears a continuous stream whatever the plan does.
        self.media.set_fill_silence(true);
        self.answered = true;
        self.emit_for(0, EventKind::Answered);
        self.set_caller_state(LegState::Answered);
        let now = now_utc();
        self.answer_time = Some(now);
        self.flow.set_answered_time(now);
        self.answered_at = Some(Instant::now());
        if let Some(l) = self.legs.first_mut() {
            l.answer = Some(now);
            l.sip_status = Some(200);
        }
    }

    /// Resolves the prompts off the actor (files, espeak-ng for SAY); `TaskDone::Prompts`
    /// starts the playback, so a CANCEL or BYE is handled at once while they render.
    fn play(&mut self, flow_id: u64, prompts: Vec<Prompt>) {
        let render = render_prompts(self.svc.prompts.clone(), self.tenant.name.clone(), prompts);
        let done = self.tasks_tx.clone();
        tokio::spawn(async move {
            let audio = render.await;
            let _ = done.send(TaskDone::Prompts { flow_id, audio });
        });
    }

    /// Prompts are ready: play them, unless the flow moved on meanwhile.
    fn start_playback(&mut self, flow_id: u64, audio: Arc<[i16]>) {
        if self.ended.is_some() {
            return;
        }
        if self.answer_with == Some(flow_id) {
            self.answer_with = None;
            self.answer();
            if !self.answered {
                // The caller cancelled first: its CANCEL arrives as an event.
                return;
            }
        }
        if !self.flow.is_playing(flow_id) {
            return;
        }
        if audio.is_empty() {
            // Nothing playable: the block fails over at once instead of leaving silence.
            self.flow
                .handle(Input::PlayFinished { id: flow_id }, Instant::now());
            return;
        }
        let media_id = self.media.play(audio);
        self.playing = Some((media_id, flow_id));
    }

    /// [`CallCommand::PlayIntoBridge`]: the connected pair joins a room (relaying as before
    /// until the audio is ready), the prompts render off the actor, then mix into the room.
    fn play_into_bridge(&mut self, blocks: Vec<Block>) -> Result<(), PlayRefused> {
        let prompts: Vec<Prompt> = blocks
            .into_iter()
            .filter_map(|b| match b {
                Block::Announcement(a) => Some(Prompt::Announcement {
                    name: a.announcement_name,
                    standard: a.standard_announcement,
                }),
                Block::Say(s) => Some(Prompt::Tts {
                    text: self.flow.variables().expand_for(&s.text, s.use_ssml),
                    voice: s.voice_name,
                    ssml: s.use_ssml,
                }),
                _ => None,
            })
            .collect();
        let Some(r) = self.bridge_room() else {
            return Err(PlayRefused::NotConnected);
        };
        r.rendering += 1;
        let room = r.id;
        info!(call = %self.uuid, prompts = prompts.len(), "playing into the bridge");
        let serial = self.bridge.as_ref().map_or(0, |b| b.serial);
        let render = render_prompts(self.svc.prompts.clone(), self.tenant.name.clone(), prompts);
        let done = self.tasks_tx.clone();
        tokio::spawn(async move {
            let audio = render.await;
            let _ = done.send(TaskDone::BridgePrompts {
                bridge: serial,
                room,
                audio,
            });
        });
        Ok(())
    }

    /// Rendered prompts for the bridge: into its room, if that pair is still connected.
    fn mix_into_bridge(&mut self, serial: u64, room: u64, audio: Arc<[i16]>) {
        let Some(b) = self.bridge.as_mut().filter(|b| b.serial == serial) else {
            return;
        };
        let Some(r) = b.room.as_mut().filter(|r| r.id == room) else {
            return;
        };
        let connected = b.connected == Some(r.attempt) && b.bridged == Some(r.attempt);
        r.rendering = r.rendering.saturating_sub(1);
        if connected && !audio.is_empty() {
            let player = r.room.play(audio, Audience::All);
            r.prompts.push(player);
        }
        self.dissolve_unneeded_room();
    }

    /// A player in the bridge's room is over: a prompt ended (or music on hold was removed).
    fn bridge_player_done(&mut self, serial: u64, room: u64, member: MemberId) {
        if let Some(r) = self
            .bridge
            .as_mut()
            .filter(|b| b.serial == serial)
            .and_then(|b| b.room.as_mut())
            .filter(|r| r.id == room)
        {
            r.prompts.retain(|m| *m != member);
        }
        if self.bridge.as_ref().is_some_and(|b| b.serial == serial) {
            self.dissolve_unneeded_room();
        }
    }

    fn on_task_done(&mut self, done: TaskDone) {
        match done {
            TaskDone::Prompts { flow_id, audio } => self.start_playback(flow_id, audio),
            TaskDone::BridgePrompts {
                bridge,
                room,
                audio,
            } => self.mix_into_bridge(bridge, room, audio),
            TaskDone::BridgePlayerDone {
                bridge,
                room,
                member,
            } => self.bridge_player_done(bridge, room, member),
            TaskDone::Reinvited { record, result } => self.on_reinvited(record, result),
            TaskDone::SupervisorLaunched { serial, result } => {
                self.on_supervisor_launched(serial, result)
            }

            TaskDone::Launched {
                bridge,
                attempt,
                result,
            } => self.on_launched(bridge, attempt, result),
        }
    }

    fn on_media_event(&mut self, ev: Option<MediaEvent>) {
        let Some(ev) = ev else {
            // The leg's media task is gone; stop polling its channel (it would be ready forever).
            warn!(call = %self.uuid, "media task ended");
            self.media_gone = true;
            return;
        };
        match ev {
            MediaEvent::Dtmf { digit, source } => {
                debug!(call = %self.uuid, %digit, ?source, "DTMF");
                if is_dtmf(digit) {
                    self.on_digit(digit, Some(source));
                }
            }
            MediaEvent::PlayFinished { id, .. } => {
                if let Some((_, s)) = &self.stream {
                    let _ = s.send(crate::stream::StreamControl::Played(id));
                }
                if let Some((media_id, flow_id)) = self.playing {
                    if media_id == id {
                        self.playing = None;
                        if self.bridge.as_ref().is_some_and(|b| b.ringback_playing) {
                            return;
                        }
                        self.flow
                            .handle(Input::PlayFinished { id: flow_id }, Instant::now());
                    }
                }
            }
            MediaEvent::RtpTimeout => {
                info!(call = %self.uuid, "RTP timeout");
            }
        }
    }

    async fn on_leg_event(&mut self, ev: Option<InboundEvent>) {
        match ev {
            None => {
                // The dialog vanished under us: treat as a caller hang-up.
                self.caller_left(HangupCause::NormalClearing, None).await;
            }
            Some(InboundEvent::Confirmed) => {}
            Some(InboundEvent::Cancelled) => {
                self.caller_left(HangupCause::OriginatorCancel, Some(487))
                    .await
            }
            Some(InboundEvent::RemoteBye) => {
                self.caller_left(HangupCause::NormalClearing, None).await
            }
            Some(InboundEvent::Failed(reason)) => {
                info!(call = %self.uuid, %reason, "inbound dialog failed");
                self.caller_left(HangupCause::RecoveryOnTimerExpire, None)
                    .await
            }
            Some(InboundEvent::Dtmf(d)) => self.on_digit(d, None),
            Some(InboundEvent::ReferProgress(p)) => {
                info!(call = %self.uuid, status = p.status, done = p.done, "REFER progress");
                self.flow.handle(
                    Input::ReferProgress {
                        status: p.status,
                        done: p.done,
                    },
                    Instant::now(),
                );
            }
            Some(InboundEvent::Reinvite { sdp, responder }) => {
                let parsed = sdp.as_deref().map(negotiate_sdp).transpose();
                match parsed {
                    Ok(Some(n)) => {
                        info!(call = %self.uuid, direction = ?n.direction, "re-INVITE");
                        // Held by a command: it stays held, and our answer keeps sending it
                        // music only.
                        let held_by_us = self
                            .current_bridge_room()
                            .is_some_and(|r| r.is_held(Side::Caller))
                            || self.conference.as_ref().is_some_and(|c| c.hold.is_some());
                        if self.answered && !held_by_us {
                            self.set_caller_state(if holds(n.direction) {
                                LegState::Held
                            } else {
                                LegState::Answered
                            });
                        }
                        self.media.set_remote(RemoteMedia::from(&n));
                        self.offer = n;
                        let sdp = if held_by_us {
                            self.sdp.answer_holding(&self.offer)
                        } else {
                            self.local_sdp()
                        };
                        responder.accept(sdp).await;
                    }
                    Ok(None) => {
                        // Offerless re-INVITE: offer our current session again.
                        let sdp = self.sdp.current();
                        responder.accept(sdp).await;
                    }
                    Err(e) => {
                        info!(call = %self.uuid, error = %e, "re-INVITE rejected");
                        responder.reject(488).await;
                    }
                }
            }
        }
    }

    /// The caller hung up or cancelled.
    async fn caller_left(&mut self, cause: HangupCause, status: Option<u16>) {
        self.forget_holds();
        if self.conf_mode {
            // A conference call goes on while its callee is in the conference.
            self.caller_left_conference(cause);
            if self.ended.is_some() {
                self.end_bridge_attempts(Some(cause));
            }
            return;
        }
        self.flow.stop();
        self.end_bridge_attempts(Some(cause));
        if let Some(l) = self.legs.first_mut() {
            l.end = Some(now_utc());
            l.cause = Some(cause);
            if status.is_some() {
                l.sip_status = status;
            }
        }
        self.ended = Some((
            cause,
            HangupBy::Caller,
            status.or(Some(200).filter(|_| self.answered)),
        ));
    }

    /// We end the call (plan HANGUP, plan end, bridged callee left).
    async fn hangup(&mut self, cause: HangupCause, by: HangupBy) {
        self.hang_up_now(cause, by);
    }

    /// [`Call::hangup`], for code that does not await (nothing in it does).
    fn hang_up_now(&mut self, cause: HangupCause, by: HangupBy) {
        if self.ended.is_some() {
            return;
        }
        self.forget_holds();
        self.end_bridge_attempts(Some(cause));
        let status;
        if self.answered {
            self.bye_done = Some(self.leg.hangup(Some(cause.reason_header())));
            status = Some(200);
        } else {
            let s = cause.sip_status();
            self.leg.reject(s, Some(cause.reason_header()));
            status = Some(s);
        }
        if let Some(l) = self.legs.first_mut() {
            l.end = Some(now_utc());
            l.cause = Some(cause);
            if !self.answered {
                l.sip_status = status;
            }
        }
        let by = if by == HangupBy::System
            && self.bridge.as_ref().is_some_and(|b| b.connected.is_some())
            && cause == HangupCause::NormalClearing
        {
            HangupBy::Callee
        } else {
            by
        };
        self.ended = Some((cause, by, status));
    }

    async fn finish(&mut self) {
        self.set_caller_state(LegState::Ended);
        if let Some((_, s)) = self.stream.take() {
            let _ = s.send(crate::stream::StreamControl::Stop);
        }
        if let Some(stop) = self.listening.take() {
            let _ = stop.send(());
        }
        self.leave_conference();
        if let Some(seat) = self.callee_seat.take() {
            self.vacate(seat);
        }
        self.media.stop_play();
        let (cause, by, status) =
            self.ended
                .unwrap_or((HangupCause::NormalUnspecified, HangupBy::System, None));
        let end = now_utc();
        let talk_time_ms = self
            .answered_at
            .map(|t| t.elapsed().as_millis() as i64)
            .unwrap_or(0);
        let legs = self
            .legs
            .iter()
            .enumerate()
            .map(|(i, l)| l.to_cdr(i, end, cause))
            .collect();
        self.emit(EventKind::Hangup {
            cause,
            hangup_by: by.as_str(),
            sip_status: status,
            duration_ms: (end - self.start).num_milliseconds().max(0),
            talk_time_ms,
        });
        let stats = self.media.stats();
        info!(
            call = %self.uuid,
            cause = cause.as_str(),
            by = by.as_str(),
            rtp_in = stats.packets_received,
            rtp_out = stats.packets_sent,
            rtp_lost = stats.lost,
            rtp_late = stats.late_frames,
            jitter_ms = format!("{:.1}", stats.jitter_ms),
            "call ended"
        );
        let lines = self.events.scope().lines.clone();
        write_cdr(
            &mut self.events,
            Cdr {
                call_id: self.uuid.clone(),
                sip_call_id: self.sip_call_id.clone(),
                tenant: Some(self.tenant.name.clone()),
                number: self.number.number.clone(),
                caller: self.caller.clone(),
                start_time: self.start,
                answer_time: self.answer_time,
                end_time: end,
                talk_time_ms,
                hangup_cause: cause.as_str().into(),
                hangup_by: by.as_str().into(),
                sip_status: status,
                recording_path: None,
                legs,
                variables: self.flow.variables().as_map().clone(),
                lines,
                recordings: Vec::new(),
            },
        );
        // The call is over and recorded: no command can reach it any more (those already
        // queued are dropped unanswered: the API reports the call as gone). Its end is when
        // our BYE's transaction is too (as long as a BYE can take).
        self.svc
            .calls
            .finish(&self.uuid, self.events.scope().lines.clone());
        self.commands.close();
        while self.commands.try_recv().is_ok() {}
        if let Some(done) = self.bye_done.take() {
            let _ = tokio::time::timeout(Duration::from_secs(35), done).await;
        }
    }

    /// Publishes one of this call's events.
    fn emit(&mut self, kind: EventKind) {
        self.events.publish(kind);
    }

    /// Publishes an event about one of the call's legs (by its index in `legs`, 0 = caller).
    fn emit_for(&mut self, leg: usize, kind: EventKind) {
        self.events.publish_for(Some(leg as u32), kind);
    }

    /// The caller's leg is now in `state`: a `leg.state` event when that is a change (an
    /// ended leg stays ended), and `call.held` / `call.unheld` for the caller's hold.
    fn set_caller_state(&mut self, state: LegState) {
        let was = self.caller_state;
        if was == state || was.is_ended() {
            return;
        }
        self.caller_state = state;
        for e in leg_state_events(Party::Caller, None, None, was, state) {
            self.emit_for(0, e);
        }
    }

    /// A callee's leg (leg `record`, the BRIDGE's `attempt`) went from `was` to `state`: its
    /// `leg.state` (and hold) events.
    fn callee_state_changed(
        &mut self,
        record: usize,
        attempt: u32,
        was: LegState,
        state: LegState,
    ) {
        let destination = self.destination_of(record);
        for e in leg_state_events(Party::Callee, Some(attempt), destination, was, state) {
            self.emit_for(record, e);
        }
    }

    /// Where a BRIDGE destination's leg goes, for its events.
    fn destination_of(&self, record: usize) -> Option<String> {
        self.legs.get(record).map(|l| l.destination.clone())
    }

    /// A keypad digit from the caller (`source` None: SIP INFO): to the flow, unless the
    /// caller talks to a callee; then to the callee where the media relay cannot carry it.
    fn on_digit(&mut self, digit: char, source: Option<DtmfSource>) {
        self.emit_for(
            0,
            EventKind::Dtmf {
                digit,
                party: Party::Caller,
            },
        );
        if let Some((_, s)) = &self.stream {
            let _ = s.send(crate::stream::StreamControl::Dtmf(digit));
        }
        let Some(a) = self.bridged_callee() else {
            self.flow.handle(Input::Digit(digit), Instant::now());
            return;
        };
        if needs_regeneration(source, a.remote_te) {
            a.media.send_dtmf(digit);
        }
    }

    /// The connected callee, while the caller's media is bridged to it.
    fn bridged_callee(&self) -> Option<&Attempt> {
        let b = self.bridge.as_ref()?;
        let winner = b.connected?;
        (b.bridged == Some(winner))
            .then(|| b.live(winner))
            .flatten()
    }

    /// A keypad digit from a bridged callee: an event, the `callee_digits` variable (seen by
    /// later webhooks and the CDR), and regenerated toward the caller where the relay cannot
    /// carry it (SIP INFO, or RFC 4733 to a caller without telephone-event: in band).
    fn on_callee_digit(&mut self, attempt: AttemptId, digit: char, source: Option<DtmfSource>) {
        if !is_dtmf(digit)
            || self.bridged_callee().is_none()
            || self.bridge.as_ref().and_then(|b| b.connected) != Some(attempt)
        {
            return;
        }
        debug!(call = %self.uuid, %digit, ?source, "callee DTMF");
        let record = self
            .bridge
            .as_ref()
            .and_then(|b| b.slots.get(attempt.0 as usize))
            .map(|s| s.record);
        let kind = EventKind::Dtmf {
            digit,
            party: Party::Callee,
        };
        match record {
            Some(r) => self.emit_for(r, kind),
            None => self.emit(kind),
        }
        let mut digits = self
            .flow
            .variables()
            .get(CALLEE_DIGITS)
            .unwrap_or_default()
            .to_string();
        digits.push(digit);
        self.flow.set_variable(CALLEE_DIGITS, digits);
        if needs_regeneration(source, self.offer.telephone_event_pt) {
            self.media.send_dtmf(digit);
        }
    }

    // ---- webhooks ----

    fn webhook_request(
        &self,
        kind: WebhookKind,
        url: &str,
        content_type: &'static str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> WebhookRequest {
        WebhookRequest {
            kind,
            tenant: self.tenant.name.clone(),
            url: url.to_string(),
            content_type,
            body: Bytes::from(body),
            signing_secret: self.tenant.signing_secret.clone(),
            timeout,
        }
    }

    /// POSTs a Call Control request; its answer comes back through `inputs` (a
    /// VALIDATION_ERRORS request's answer is only counted).
    fn send_call_control(&mut self, req: CallControlRequest) {
        let body = json!({
            "requestType": "EXTERNAL_CALL_CONTROL",
            "customerNumber": self.tenant.customer_number,
            "accessKey": req.access_key,
            "callControlUuid": req.call_control_uuid,
            "loopCount": req.loop_count,
            "requestStatus": if req.validation_errors.is_some() { "VALIDATION_ERRORS" } else { "REQUESTING_BLOCKS" },
            "blocksProcessingResult": req.validation_errors.as_ref().map(|e| json!({ "validationErrors": e })),
            "variables": req.variables,
        });
        let wreq = self.webhook_request(
            WebhookKind::CallControl,
            &req.url,
            "application/json",
            serde_json::to_vec(&body).unwrap_or_default(),
            req.timeout,
        );
        let id = req.id;
        let reply = req
            .validation_errors
            .is_none()
            .then(|| Box::new(move |result| Input::CallControlAnswered { id, result }) as Reply<_>);
        self.spawn_webhook(
            wreq,
            |body| match serde_json::from_slice::<serde_json::Value>(body) {
                Ok(v) if v.is_object() => Ok(v),
                Ok(_) => Err("answer is not a JSON object".into()),
                Err(e) => Err(format!("answer is not JSON: {e}")),
            },
            reply,
        );
    }

    /// Sends `wreq` in the background, judges a 2xx body with `judge`, counts the outcome,
    /// and, with `reply`, hands the result to the flow as the input `reply` makes of it.
    fn spawn_webhook<T: Send + 'static>(
        &self,
        wreq: WebhookRequest,
        judge: fn(&[u8]) -> Result<T, String>,
        reply: Option<Reply<T>>,
    ) {
        let client = self.svc.webhooks.clone();
        let inputs = self.inputs_tx.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let result = match client.send(&wreq).await {
                Ok(body) => judge(&body).map_err(|why| (Outcome::InvalidAnswer, why)),
                Err(e) => Err((e.outcome(), e.to_string())),
            };
            let outcome = result.as_ref().map_or_else(|(o, _)| *o, |_| Outcome::Ok);
            client
                .metrics()
                .record(&wreq.tenant, wreq.kind, outcome, started.elapsed());
            if let Some(reply) = reply {
                let _ = inputs.send(reply(result.map_err(|(_, why)| why)));
            }
        });
    }

    /// The ask-URL input fields describing this call, with `state`.
    fn ask_url_fields(&self, state: &'static str) -> Vec<(&'static str, String)> {
        let customer = self.tenant.customer_number.to_string();
        let (stype, snumber) = match &self.authenticated_user {
            Some(user) => ("phone", user.clone()),
            None => ("external", self.caller.clone()),
        };
        vec![
            ("customer", customer.clone()),
            ("scustomer", customer.clone()),
            ("stype", stype.into()),
            ("snumber", snumber),
            ("ctype", String::new()),
            ("cnumber", self.called.clone()),
            ("dcustomer", customer),
            ("dtype", "number".into()),
            ("dnumber", self.called.clone()),
            ("server", self.svc.node_name.clone()),
            ("callid", self.sip_call_id.clone()),
            ("uniqueid", self.uuid.clone()),
            ("state", state.into()),
        ]
    }

    fn send_ask_url(&mut self, req: AskUrlRequest) {
        let mut fields = self.ask_url_fields("ring");
        if let Some(d) = req.digits {
            fields.push(("patternmenu_digits", d));
        }
        let body = encode_form(fields.iter().map(|(k, v)| (*k, v.as_str())));
        let wreq = self.webhook_request(
            WebhookKind::AskUrl,
            &req.url,
            "application/x-www-form-urlencoded",
            body.into_bytes(),
            req.timeout,
        );
        let id = req.id;
        self.spawn_webhook(
            wreq,
            |body| parse_reply(&String::from_utf8_lossy(body)),
            Some(Box::new(move |result| Input::AskUrlAnswered { id, result })),
        );
    }

    /// POSTs an ASK_URL leg's `answer_url` or `hangup_url`; the answer is ignored.
    fn post_leg_callback(
        &self,
        url: &str,
        state: &'static str,
        extra: Vec<(&'static str, String)>,
    ) {
        let mut fields = self.ask_url_fields(state);
        fields.extend(extra);
        let body = encode_form(fields.iter().map(|(k, v)| (*k, v.as_str())));
        let wreq = self.webhook_request(
            WebhookKind::LegCallback,
            url,
            "application/x-www-form-urlencoded",
            body.into_bytes(),
            LEG_CALLBACK_TIMEOUT,
        );
        let client = self.svc.webhooks.clone();
        tokio::spawn(async move {
            if let Err(e) = client.send_and_record(&wreq).await {
                info!(url = %wreq.url, error = %e, "leg callback failed");
            }
        });
    }

    /// Reports the end of a placed bridge leg to its `hangup_url`.
    fn report_leg_hangup(&self, attempt: &Attempt, status: LegStatus) {
        let Some(url) = self
            .bridge
            .as_ref()
            .and_then(|b| b.leg_urls.as_ref())
            .and_then(|u| u.hangup_url.clone())
        else {
            return;
        };
        let now = Instant::now();
        let total = now.duration_since(attempt.started);
        let talk = attempt
            .answered_at
            .map_or(Duration::ZERO, |t| now.duration_since(t));
        self.post_leg_callback(
            &url,
            "hangup",
            vec![
                ("totaltime", whole_seconds(total).to_string()),
                ("talktime", whole_seconds(talk).to_string()),
                ("status", status.as_str().into()),
                ("recording", String::new()),
            ],
        );
    }

    // ---- BRIDGE ----

    fn start_bridge(
        &mut self,
        block: BridgeBlock,
        forward_ani: ForwardAni,
        leg_urls: Option<LegUrls>,
    ) {
        let (events_tx, events) = mpsc::unbounded_channel();
        self.bridges_run += 1;
        let adopted = self.adopt_on_bridge.take();
        let dial = match adopted {
            Some(_) => Dial::with_answered(block),
            None => Dial::new(block, self.answered, Instant::now()),
        };
        self.bridge = Some(BridgeRun {
            serial: self.bridges_run,
            dial,
            forward_ani,
            slots: Vec::new(),
            events_tx,
            events,
            mailbox: Mailbox::new(self.bridges_run),
            bridged: None,
            connected: None,
            ringback_playing: false,
            leg_urls,
            room: None,
            adopted: Vec::new(),
        });
        if let Some(moved) = adopted {
            self.seat_handed_in(moved);
        }
        self.run_dial();
    }

    /// The party handed in takes the new bridge's winning attempt 0 (in its next epoch), before
    /// the dial reports it connected.
    fn seat_handed_in(&mut self, moved: MovedLeg) {
        let (attempt, owner, record) = moved.into_parts();
        let index = self.legs.len();
        self.legs.push(record);
        let Some(b) = self.bridge.as_mut() else {
            attempt.leg.hangup(None);
            return;
        };
        let winner = AttemptId(0);
        b.adopted.push((attempt.leg.id, winner));
        let gone = crate::leg::arrive(&attempt.leg, owner, &mut b.mailbox, b.events_tx.clone());
        b.put_slot(winner, index, Some(attempt));
        if gone {
            b.dial
                .handle_input(DialInput::RemoteBye { attempt: winner }, Instant::now());
        }
    }

    /// Carries out what the Dial machine decided, until it has nothing more to say.
    fn run_dial(&mut self) {
        loop {
            let Some(out) = self.bridge.as_mut().and_then(|b| b.dial.poll_output()) else {
                return;
            };
            match out {
                DialOutput::Launch {
                    attempt,
                    destination,
                } => self.launch(attempt, destination),
                DialOutput::Hangup { attempt, reason } => self.hangup_attempt(attempt, reason),
                DialOutput::ByeLate { attempt } => {
                    // rsipstack ACKs and BYEs a 2xx that crossed our CANCEL; a 200 that
                    // arrived before our hang-up reached the leg gets its BYE from there.
                    debug!(call = %self.uuid, attempt = attempt.0, "late 200 OK: not bridged");
                    self.hangup_attempt(attempt, None);
                }
                DialOutput::Ringing => {
                    self.leg.ringing(None);
                    if self.caller_state == LegState::Calling {
                        self.set_caller_state(LegState::Ringing);
                    }
                    self.emit(EventKind::Ringing { early_media: false });
                }
                DialOutput::EarlyMedia { attempt, first } => {
                    let Some(b) = self.bridge.as_mut() else {
                        return;
                    };
                    if let Some(a) = b
                        .slots
                        .get(attempt.0 as usize)
                        .and_then(|s| s.live.as_ref())
                    {
                        self.media.bridge(&a.media);
                        b.bridged = Some(attempt);
                    }
                    let sdp = self.local_sdp();
                    self.leg.ringing(Some(sdp));
                    if matches!(self.caller_state, LegState::Calling | LegState::Ringing) {
                        self.set_caller_state(LegState::EarlyMedia);
                    }
                    if first {
                        self.emit(EventKind::Ringing { early_media: true });
                    }
                }
                DialOutput::Disconnect { attempt } => {
                    let mut unbridged = false;
                    if self
                        .bridge
                        .as_ref()
                        .is_some_and(|b| b.bridged == Some(attempt))
                    {
                        self.end_bridge_room();
                    }
                    if let Some(b) = self.bridge.as_mut() {
                        if b.bridged == Some(attempt) {
                            self.media.unbridge();
                            b.bridged = None;
                            unbridged = b.connected == Some(attempt);
                        }
                    }
                    if unbridged {
                        self.emit(EventKind::Unbridged);
                    }
                }
                DialOutput::StartRingback => {
                    if let Some(b) = self.bridge.as_mut() {
                        b.ringback_playing = true;
                    }
                    let id = self.media.play(ringback_tone());
                    self.playing = Some((id, 0));
                    self.emit(EventKind::Ringing { early_media: false });
                }
                DialOutput::StopRingback => self.stop_ringback(),
                DialOutput::Connected { attempt } => self.bridge_connected(attempt),
                DialOutput::AttemptEnded {
                    attempt,
                    status,
                    cause,
                } => self.attempt_ended(attempt, status, cause),
                DialOutput::Ended => {
                    if self.conf_mode {
                        // In a conference the callee leaving is one participant less.
                        self.callee_left_conference(HangupCause::NormalClearing);
                    } else {
                        self.flow.handle(Input::BridgeEnded, Instant::now());
                    }
                }
                // The session moved that leg into the bridge itself (a supervisor's intercept).
                DialOutput::Adopted { .. } => {}
                DialOutput::Failed(result) => {
                    self.stop_ringback();
                    self.bridge = None;
                    info!(call = %self.uuid, result = result.as_str(), "bridge failed");
                    self.flow
                        .handle(Input::BridgeFailed(result), Instant::now());
                }
            }
        }
    }

    fn stop_ringback(&mut self) {
        if let Some(b) = self.bridge.as_mut() {
            if b.ringback_playing {
                b.ringback_playing = false;
                self.media.stop_play();
                self.playing = None;
            }
        }
    }

    /// Starts placing destination `destination` as `attempt`: the destination is resolved
    /// (store, DNS), an RTP port allocated and the INVITE sent by a task; its result comes back
    /// as `TaskDone::Launched`.
    fn launch(&mut self, attempt: AttemptId, destination: usize) {
        let Some(b) = self.bridge.as_mut() else {
            return;
        };
        let Some(dest) = b.dial.block().destinations.get(destination).cloned() else {
            b.dial.handle_input(
                DialInput::LaunchFailed {
                    attempt,
                    status: 500,
                },
                Instant::now(),
            );
            return;
        };
        if dest.destination_type == DestinationType::SipUser {
            self.events.add_line(&dest.destination);
        }
        let record = self.legs.len();
        self.legs.push(LegRecord::dialled(&dest));
        b.put_slot(attempt, record, None);
        let id = &self.bridge_as;
        // A caller ID the API set wins over CALL_SETTINGS; a number CALL_SETTINGS set is
        // presented like the caller's own.
        let (caller, forward_ani) = match (&id.caller_id, &b.forward_ani) {
            (Some(number), _) | (None, ForwardAni::Number(number)) => (number.clone(), true),
            (None, ForwardAni::Caller) => (self.caller.clone(), true),
            (None, ForwardAni::Called) => (self.caller.clone(), false),
        };
        let job = LaunchJob {
            svc: self.svc.clone(),
            tenant: self.tenant.clone(),
            caller,
            called: self.called.clone(),
            forward_ani,
            kind: dest.destination_type,
            destination: dest.destination,
            from_display: id.display.clone(),
            extra_headers: id.headers.clone(),
        };
        let done = self.tasks_tx.clone();
        let bridge = b.serial;
        tokio::spawn(async move {
            let result = job.run().await.map(Box::new);
            if let Err(mpsc::error::SendError(TaskDone::Launched {
                result: Ok(mut l), ..
            })) = done.send(TaskDone::Launched {
                bridge,
                attempt,
                result,
            }) {
                // The call is gone: nobody will bridge this callee.
                l.leg.hangup(None).await;
            }
        });
    }

    /// A launch task finished.
    fn on_launched(
        &mut self,
        serial: u64,
        attempt: AttemptId,
        result: Result<Box<Launched>, (u16, String)>,
    ) {
        let Some(b) = self.bridge.as_mut().filter(|b| b.serial == serial) else {
            // Its BRIDGE is over: a placed call is hung up at once (off the actor).
            if let Ok(mut l) = result {
                tokio::spawn(async move { l.leg.hangup(None).await });
            }
            return;
        };
        let Some(slot) = b.slots.get_mut(attempt.0 as usize) else {
            return;
        };
        let mut launched = None;
        match result {
            Err((status, why)) => {
                info!(call = %self.uuid, attempt = attempt.0, %why, "destination not reachable");
                b.dial
                    .handle_input(DialInput::LaunchFailed { attempt, status }, Instant::now());
            }
            Ok(l) => {
                let leg_id = LegId(u64::from(attempt.0));
                let owner = b.mailbox.adopt(leg_id, 1);
                let Launched { leg, media, sdp } = *l;
                let sip_call_id = leg.call_id().to_string();
                let handle = media.handle();
                // The callee's keypad digits (RFC 4733 or in-band) reach the session too, and
                // whichever call owns the leg after an attended transfer.
                let leg = spawn_outbound(
                    leg_id,
                    leg,
                    media,
                    owner,
                    b.events_tx.clone(),
                    AttemptEvent::Sip,
                    Some(AttemptEvent::from_media),
                );
                if let Some(reason) = slot.hangup_pending.take() {
                    // Dial gave it up while it was launching.
                    leg.hangup(reason);
                }
                slot.live = Some(Attempt {
                    media: handle,
                    sdp,
                    leg,
                    sip_call_id,
                    started: Instant::now(),
                    answered_at: None,
                    remote_te: None,
                    remote: None,
                    state: LegState::Calling,
                });
                b.dial
                    .handle_input(DialInput::Launched { attempt }, Instant::now());
                launched = Some(slot.record);
            }
        }
        if let Some(record) = launched {
            let calling = LegState::Calling;
            let destination = self.destination_of(record);
            for e in leg_state_events(
                Party::Callee,
                Some(attempt.0),
                destination,
                calling,
                calling,
            ) {
                self.emit_for(record, e);
            }
        }
        self.run_dial();
    }

    fn hangup_attempt(&mut self, attempt: AttemptId, reason: Option<String>) {
        let Some(slot) = self
            .bridge
            .as_mut()
            .and_then(|b| b.slots.get_mut(attempt.0 as usize))
        else {
            return;
        };
        let record = slot.record;
        match slot.live.as_mut() {
            Some(a) => {
                a.leg.hangup(reason);
                let was = a.state;
                if !was.is_ended() && was != LegState::Ending {
                    a.state = LegState::Ending;
                    self.callee_state_changed(record, attempt.0, was, LegState::Ending);
                }
            }
            None => slot.hangup_pending = Some(reason),
        }
    }

    fn bridge_connected(&mut self, attempt: AttemptId) {
        let Some(b) = self.bridge.as_mut() else {
            return;
        };
        let Some(slot) = b.slots.get_mut(attempt.0 as usize) else {
            return;
        };
        let record = slot.record;
        if let Some(a) = slot.live.as_mut() {
            a.answered_at = Some(Instant::now());
            // Once answered the callee hears a continuous stream too (silence when unbridged).
            a.media.set_fill_silence(true);
            if b.bridged != Some(attempt) {
                self.media.bridge(&a.media);
            }
        }
        b.bridged = Some(attempt);
        b.connected = Some(attempt);
        let answer_url = b.leg_urls.as_ref().and_then(|u| u.answer_url.clone());
        let l = &mut self.legs[record];
        // A party handed in keeps the time it answered elsewhere.
        l.answer.get_or_insert_with(now_utc);
        l.sip_status = Some(200);
        let destination = l.destination.clone();
        let destination_type = l.destination_type.clone();
        if let Some(url) = answer_url {
            self.post_leg_callback(&url, "answer", Vec::new());
        }
        self.answer();
        self.emit_for(
            record,
            EventKind::Bridged {
                destination,
                destination_type,
            },
        );
        self.flow.handle(Input::BridgeConnected, Instant::now());
    }

    fn attempt_ended(&mut self, attempt: AttemptId, status: u16, cause: AttemptEnd) {
        let Some(slot) = self
            .bridge
            .as_mut()
            .and_then(|b| b.slots.get_mut(attempt.0 as usize))
        else {
            return;
        };
        let record = slot.record;
        if let Some(l) = self.legs.get_mut(record) {
            l.end = Some(now_utc());
            l.cause = Some(cause.hangup_cause());
            // A cancelled leg keeps the last status it answered; an answered one its 200.
            if !matches!(cause, AttemptEnd::Answered | AttemptEnd::Cancelled) {
                l.sip_status = Some(status);
            }
        }
        // Only legs whose INVITE went out are reported to the ask-URL `hangup_url`.
        if let Some(a) = self.bridge.as_ref().and_then(|b| b.live(attempt)) {
            self.report_leg_hangup(a, cause.leg_status());
        }
    }

    async fn on_bridge_event(&mut self, ev: (AttemptId, AttemptEvent)) {
        let (attempt, ev) = ev;
        let ev = match ev {
            AttemptEvent::Sip(OutboundEvent::Dtmf(digit)) => {
                return self.on_callee_digit(attempt, digit, None)
            }
            AttemptEvent::Sip(ev) => ev,
            AttemptEvent::Digit { digit, source } => {
                return self.on_callee_digit(attempt, digit, Some(source))
            }
            // Nothing is played to a callee by its media's own queue.
            AttemptEvent::Media(_) => return,
        };
        let now = Instant::now();
        let Some(b) = self.bridge.as_mut() else {
            return;
        };
        // Held by a command: its own re-INVITEs do not take it off hold.
        let held_by_us = b
            .room
            .as_ref()
            .is_some_and(|r| r.attempt == attempt && r.is_held(Side::Callee))
            || self.callee_seat.as_ref().is_some_and(|c| c.hold.is_some());
        let Some(slot) = b.slots.get_mut(attempt.0 as usize) else {
            return;
        };
        let record = slot.record;
        let Some(a) = slot.live.as_mut() else { return };
        let early = matches!(&ev, OutboundEvent::Ringing { sdp: Some(_), .. });
        let hold = match &ev {
            OutboundEvent::Reinvite { sdp: Some(sdp), .. } => {
                negotiate_sdp(sdp).is_ok_and(|n| holds(n.direction))
            }
            _ => false,
        };
        let was = a.state;
        let state = match was.after_outbound(&ev, early, hold) {
            LegState::Answered if held_by_us => LegState::Held,
            s => s,
        };
        if state != was {
            a.state = state;
            self.callee_state_changed(record, attempt.0, was, state);
        }
        let Some(b) = self.bridge.as_mut() else {
            return;
        };
        let Some(a) = b
            .slots
            .get_mut(attempt.0 as usize)
            .and_then(|s| s.live.as_mut())
        else {
            return;
        };
        let input = match ev {
            OutboundEvent::Ringing { status, sdp } => {
                if let Some(l) = self.legs.get_mut(record) {
                    if l.sip_status != Some(200) {
                        l.sip_status = Some(status);
                    }
                }
                let early = sdp.and_then(|s| negotiate_sdp(&s).ok());
                if let Some(n) = &early {
                    a.media.set_remote(RemoteMedia::from(n));
                    a.media.set_inband_detection(n.telephone_event_pt.is_none());
                    a.remote_te = n.telephone_event_pt;
                    a.remote = Some(n.clone());
                    a.sdp.agreed(n);
                }
                DialInput::Ringing {
                    attempt,
                    early_media: early.is_some(),
                }
            }
            OutboundEvent::Answered { sdp } => {
                if let Some(n) = sdp.and_then(|s| negotiate_sdp(&s).ok()) {
                    a.media.set_remote(RemoteMedia::from(&n));
                    a.media.set_inband_detection(n.telephone_event_pt.is_none());
                    a.remote_te = n.telephone_event_pt;
                    a.remote = Some(n.clone());
                    a.sdp.agreed(&n);
                }
                DialInput::Answered { attempt }
            }
            OutboundEvent::Failed { status } => DialInput::Failed { attempt, status },
            OutboundEvent::RemoteBye => DialInput::RemoteBye { attempt },
            OutboundEvent::Dtmf(_) => return, // taken above
            // We send no REFER to a callee.
            OutboundEvent::ReferProgress(_) => return,
            OutboundEvent::Reinvite { sdp, responder } => {
                // The callee's hold, resume or session refresh: answered from its leg's own
                // description (same o= session id, direction mirrored, its telephone-event).
                let answer = match sdp.as_deref().map(negotiate_sdp) {
                    Some(Ok(n)) => {
                        a.media.set_remote(RemoteMedia::from(&n));
                        a.remote_te = n.telephone_event_pt;
                        a.remote = Some(n.clone());
                        Some(if held_by_us {
                            a.sdp.answer_holding(&n)
                        } else {
                            a.sdp.answer(&n)
                        })
                    }
                    None => Some(a.sdp.current()),
                    Some(Err(e)) => {
                        info!(call = %self.uuid, error = %e, "callee re-INVITE rejected");
                        None
                    }
                };
                match answer {
                    Some(sdp) => responder.accept(sdp).await,
                    None => responder.reject(488).await,
                }
                return;
            }
        };
        b.dial.handle_input(input, now);
        self.run_dial();
    }

    /// A destination's ring time (or the block's) ran out.
    fn on_bridge_timeout(&mut self) {
        if let Some(b) = self.bridge.as_mut() {
            b.dial.handle_timeout(Instant::now());
        }
        self.run_dial();
    }

    /// Hangs up every outbound attempt still alive (caller left or the call ends), and the
    /// supervisor.
    fn end_bridge_attempts(&mut self, cause: Option<HangupCause>) {
        self.end_supervision(cause.unwrap_or(HangupCause::NormalClearing));
        let Some(b) = self.bridge.as_mut() else {
            return;
        };
        b.dial.stop(cause.map(|c| c.reason_header()));
        self.run_dial();
        self.media.unbridge();
        self.end_bridge_room();
        let mut unbridged = false;
        if let Some(b) = self.bridge.as_mut() {
            unbridged = b.bridged.is_some() && b.bridged == b.connected;
            b.bridged = None;
        }
        if unbridged {
            self.emit(EventKind::Unbridged);
        }
    }

    /// Interrupt: the bridge is abandoned (ringing legs cancelled, a connected callee hung up)
    /// and the caller stays for the next blocks.
    fn stop_bridge(&mut self) {
        self.end_bridge_attempts(Some(HangupCause::NormalClearing));
        self.stop_ringback();
        self.bridge = None;
    }
}

/// Where a caller sits in a conference.
impl Call {
    /// Queues `digits` toward one leg (0: the caller; else a BRIDGE destination's).
    fn send_dtmf(&mut self, leg: u32, digits: &str) -> Result<(), CommandRefused> {
        if self.ended.is_some() {
            return Err(CommandRefused::Ending);
        }
        let media = if leg == 0 {
            if !self.answered {
                return Err(CommandRefused::NotAnswered);
            }
            &self.media
        } else {
            let i = leg as usize;
            if i >= self.legs.len() {
                return Err(CommandRefused::NoSuchLeg);
            }
            let live = self
                .bridge
                .as_ref()
                .and_then(|b| b.slots.iter().find(|s| s.record == i))
                .and_then(|s| s.live.as_ref());
            match live {
                None => return Err(CommandRefused::LegEnded),
                Some(a) if a.answered_at.is_none() => return Err(CommandRefused::NotAnswered),
                Some(a) if a.state.is_ended() => return Err(CommandRefused::LegEnded),
                Some(a) => &a.media,
            }
        };
        for d in digits.chars() {
            media.send_dtmf(d);
        }
        info!(call = %self.uuid, leg, digits = digits.len(), "sending DTMF for the API");
        Ok(())
    }

    /// The call as the API shows it now.
    fn snapshot(&self) -> CallInfo {
        let mut legs = Vec::with_capacity(self.legs.len());
        let supervisor = self.supervisor.as_ref().map(|s| (s.record, s.state()));
        for (i, l) in self.legs.iter().enumerate() {
            let state = if i == 0 {
                self.caller_state
            } else if l.end.is_some() {
                // Its end is recorded (hung up by us, the BYE's transaction may still run).
                LegState::Ended
            } else if let Some((_, state)) = supervisor.filter(|(r, _)| *r == i) {
                state
            } else {
                self.bridge
                    .as_ref()
                    .and_then(|b| b.slots.iter().find(|s| s.record == i))
                    .and_then(|s| s.live.as_ref())
                    .map(|a| a.state)
                    .unwrap_or(if l.end.is_some() || self.bridge.is_none() {
                        LegState::Ended
                    } else {
                        LegState::Calling
                    })
            };
            let (held, muted) = self.leg_flags(i);
            legs.push(LegInfo {
                id: leg_id(&self.uuid, i as u32),
                index: i as u32,
                party: match i {
                    0 => "caller",
                    _ if supervisor.is_some_and(|(r, _)| r == i) => "supervisor",
                    _ => "callee",
                },
                direction: l.direction,
                destination_type: l.destination_type.clone(),
                destination: l.destination.clone(),
                state: state.as_str(),
                start_time: l.start,
                answer_time: l.answer,
                end_time: l.end,
                sip_status: l.sip_status,
                hangup_cause: l.cause.map(HangupCause::as_str),
                held,
                muted,
            });
        }
        let bridged_to = self.bridged_callee().and_then(|_| {
            let b = self.bridge.as_ref()?;
            let slot = b.slots.get(b.connected?.0 as usize)?;
            Some(leg_id(&self.uuid, slot.record as u32))
        });
        CallInfo {
            id: self.uuid.clone(),
            sip_call_id: self.sip_call_id.clone(),
            tenant: self.tenant.name.clone(),
            direction: self.direction,
            from: self.caller.clone(),
            to: self.called.clone(),
            number: self.number.number.clone(),
            lines: self.events.scope().lines.clone(),
            state: if self.ended.is_some() && !self.caller_state.is_ended() {
                LegState::Ending.as_str()
            } else {
                self.caller_state.as_str()
            },
            bridged_to,
            conference: self
                .conference
                .as_ref()
                .or(self.callee_seat.as_ref())
                .map(|c| c.name.clone()),
            recording: self.recording_info(),
            start_time: self.start,
            answer_time: self.answer_time,
            legs,
            variables: self.flow.variables().as_map().clone(),
        }
    }
}

mod attended;
mod conference_mode;
mod control;
mod handoff;
mod ivr;
mod originate;
mod supervise;
pub use attended::MovedLeg;
pub use control::default_music_on_hold;
use control::{BridgeRoom, Side};
pub use ivr::{ControlRegistration, Controllers};
pub use originate::{run_outbound_call, Originate};

/// Where a leg of the call sits in a conference.
struct ConferenceSeat {
    name: String,
    room: Arc<Room>,
    member: MemberId,
    /// The leg's index in the call.
    leg: u32,
    /// Whom it is heard by when neither muted nor held (nobody for `listenOnly`).
    heard_by: Audience,
    muted: bool,
    /// Its music-on-hold player while a command holds it.
    hold: Option<MemberId>,
}

impl Call {
    // ---- CONFERENCE ----

    fn join_conference(&mut self, block: ConferenceBlock) {
        let name = block.conference_name.clone();
        let joined = self.svc.conferences.join(crate::conference::Joining {
            tenant: &self.tenant.name,
            name: &name,
            call: &self.uuid,
            leg: 0,
            party: self.caller.clone(),
            max_participants: block.max_participants,
            end_on_exit: block.end_conference_on_exit,
            owner: false,
            inputs: self.inputs_tx.clone(),
        });
        let room = match joined {
            Ok(room) => room,
            Err(JoinError::Full) => {
                info!(call = %self.uuid, conference = %name, "conference full");
                self.flow.handle(
                    Input::ConferenceLeft(ConferenceResult::Full),
                    Instant::now(),
                );
                return;
            }
        };
        let heard_by = if block.listen_only {
            Audience::None
        } else {
            Audience::All
        };
        let member = room.add_leg(&self.media, heard_by.clone(), Audience::All);
        if block.join_muted {
            room.set_muted(member, true);
            self.svc
                .conferences
                .set_flags(&self.tenant.name, &name, &self.uuid, 0, true, false);
        }
        // The others hear someone arrive: the enter announcement, or a beep.
        match block.enter_announcement_name {
            Some(announcement) => {
                let lib = self.svc.prompts.clone();
                let tenant = self.tenant.name.clone();
                let room = room.clone();
                let prompt = Prompt::Announcement {
                    name: announcement,
                    standard: block.standard_enter_announcement,
                };
                tokio::spawn(async move {
                    let audio =
                        tokio::task::spawn_blocking(move || lib.resolve_blocking(&tenant, &prompt))
                            .await;
                    match audio {
                        Ok(Ok(a)) => {
                            room.play(a, Audience::All);
                        }
                        Ok(Err(e)) => warn!(error = %e, "enter announcement unavailable"),
                        Err(_) => {}
                    }
                });
            }
            None => {
                room.play(enter_beep(), Audience::All);
            }
        }
        info!(call = %self.uuid, conference = %name, member = member.get(), "joined conference");
        self.emit_for(
            0,
            EventKind::ConferenceJoined {
                conference: name.clone(),
                muted: block.join_muted,
                listen_only: block.listen_only,
            },
        );
        self.conference = Some(ConferenceSeat {
            name,
            room,
            member,
            leg: 0,
            heard_by,
            muted: block.join_muted,
            hold: None,
        });
    }

    /// The caller leaves its conference seat.
    fn leave_conference(&mut self) {
        if let Some(seat) = self.conference.take() {
            self.vacate(seat);
        }
    }

    /// A leg leaves its seat: out of the room and the registry (its music with it).
    fn vacate(&mut self, seat: ConferenceSeat) {
        if let Some(music) = seat.hold {
            seat.room.remove(music);
        }
        seat.room.remove(seat.member);
        self.svc
            .conferences
            .leave(&self.tenant.name, &seat.name, &self.uuid, seat.leg);
        self.emit_for(
            seat.leg as usize,
            EventKind::ConferenceLeft {
                conference: seat.name,
            },
        );
    }
}

/// 880 Hz for 200 ms at about -16 dBm0: someone joined the conference.
fn enter_beep() -> Arc<[i16]> {
    static BEEP: std::sync::OnceLock<Arc<[i16]>> = std::sync::OnceLock::new();
    BEEP.get_or_init(|| {
        (0..1600)
            .map(|n| {
                let t = n as f32 / 8000.0;
                ((2.0 * std::f32::consts::PI * 880.0 * t).sin() * 4000.0) as i16
            })
            .collect()
    })
    .clone()
}

/// What a launch task needs to place one destination, off the Call actor.
struct LaunchJob {
    svc: Arc<CallServices>,
    tenant: Tenant,
    caller: String,
    called: String,
    forward_ani: bool,
    kind: DestinationType,
    destination: String,
    /// The From display name (`anonymous` for a withheld caller ID).
    from_display: Option<String>,
    /// More INVITE headers (auto-answer, Privacy).
    extra_headers: Vec<(String, String)>,
}

/// How long a trunk's host name may take to resolve.
const DNS_TIMEOUT: Duration = Duration::from_secs(5);

impl LaunchJob {
    async fn run(self) -> Result<Launched, (u16, String)> {
        let target = self.resolve().await?;
        let media = self
            .svc
            .media
            .allocate()
            .await
            .map_err(|e| (503, format!("no RTP port for outbound leg: {e}")))?;
        let mut sdp = LocalSdp::new(rand_u64(), media.local_addr());
        let offer = sdp.offer(Direction::SendRecv);
        let out = OutboundCall {
            target_uri: target.uri,
            destination: target.addr,
            transport: target.transport,
            from_user: target.from_user,
            from_display: self.from_display.clone(),
            offer,
            credential: target.credential,
            extra_headers: self.extra_headers.clone(),
        };
        let leg = self
            .svc
            .sip
            .invite(out)
            .map_err(|e| (503, format!("cannot place outbound call: {e}")))?;
        Ok(Launched { leg, media, sdp })
    }

    async fn resolve(&self) -> Result<Target, (u16, String)> {
        let presented = if self.forward_ani {
            self.caller.clone()
        } else {
            self.called.clone()
        };
        let store = self.svc.store.clone();
        match self.kind {
            DestinationType::SipUser => {
                let name = self.destination.clone();
                let user = tokio::task::spawn_blocking(move || store.get_sip_user(&name))
                    .await
                    .map_err(|e| (503, e.to_string()))?
                    .map_err(|e| (503, e.to_string()))?
                    .filter(|u| u.tenant == self.tenant.name)
                    .ok_or((
                        404,
                        format!("no SIP user {} in this tenant", self.destination),
                    ))?;
                let binding = self
                    .svc
                    .sip
                    .lookup_registration(&user.username)
                    .pop()
                    .ok_or((480, format!("{} is not registered", self.destination)))?;
                Ok(Target {
                    uri: binding.contact,
                    addr: binding.source,
                    transport: binding.transport,
                    from_user: presented,
                    credential: None,
                })
            }
            DestinationType::SipTrunk | DestinationType::ExternalNumber => {
                let (trunk_name, number) = if self.kind == DestinationType::SipTrunk {
                    // `trunkname` alone, or `number@trunkname`.
                    match self.destination.split_once('@') {
                        Some((n, t)) => (t.to_string(), n.to_string()),
                        None => (self.destination.clone(), self.called.clone()),
                    }
                } else {
                    let t = self.tenant.default_trunk.clone().ok_or((
                        503,
                        "tenant has no defaultTrunk for EXTERNALNUMBER".to_string(),
                    ))?;
                    (t, self.destination.clone())
                };
                let tenant = self.tenant.name.clone();
                let lookup = trunk_name.clone();
                let trunk = tokio::task::spawn_blocking(move || store.get_trunk(&tenant, &lookup))
                    .await
                    .map_err(|e| (503, e.to_string()))?
                    .map_err(|e| (503, e.to_string()))?
                    .ok_or((404, format!("no trunk {trunk_name}")))?;
                let lookup = tokio::net::lookup_host((trunk.host.as_str(), trunk.port));
                let addr = tokio::time::timeout(DNS_TIMEOUT, lookup)
                    .await
                    .map_err(|_| (503, format!("resolving {} timed out", trunk.host)))?
                    .map_err(|e| (503, format!("cannot resolve {}: {e}", trunk.host)))?
                    .next()
                    .ok_or((503, format!("{} has no address", trunk.host)))?;
                let transport = match trunk.transport {
                    callplane_store::model::Transport::Tcp => Transport::Tcp,
                    callplane_store::model::Transport::Udp => Transport::Udp,
                };
                let from_user = if self.forward_ani {
                    presented
                } else {
                    trunk.caller_id.clone().unwrap_or(presented)
                };
                let credential = match (&trunk.username, &trunk.password) {
                    (Some(u), Some(p)) => Some((u.clone(), p.clone())),
                    _ => None,
                };
                Ok(Target {
                    uri: format!("sip:{number}@{}:{}", trunk.host, trunk.port),
                    addr,
                    transport,
                    from_user,
                    credential,
                })
            }
        }
    }
}

struct Target {
    uri: String,
    addr: SocketAddr,
    transport: Transport,
    from_user: String,
    credential: Option<(String, String)>,
}

async fn recv_bridge(bridge: &mut Option<BridgeRun>) -> (AttemptId, AttemptEvent) {
    let Some(b) = bridge else {
        return std::future::pending().await;
    };
    loop {
        let Some(ev) = b.events.recv().await else {
            return std::future::pending().await;
        };
        // A leg moved away (or from an older stay) is not this bridge's to hear.
        if let Some((leg, ev)) = b.mailbox.accept(ev) {
            let attempt = b
                .adopted
                .iter()
                .find(|(l, _)| *l == leg)
                .map_or(AttemptId(leg.0 as u32), |(_, a)| *a);
            return (attempt, ev);
        }
    }
}

/// 425 Hz, 1 s on / 4 s off (ITU-T E.180 European ringback), 60 s long.
fn ringback_tone() -> Arc<[i16]> {
    static TONE: std::sync::OnceLock<Arc<[i16]>> = std::sync::OnceLock::new();
    TONE.get_or_init(|| {
        let mut v = Vec::with_capacity(8000 * 60);
        for cycle in 0..12 {
            let _ = cycle;
            for n in 0..8000 {
                let t = n as f32 / 8000.0;
                v.push(((2.0 * std::f32::consts::PI * 425.0 * t).sin() * 6000.0) as i16);
            }
            v.extend(std::iter::repeat_n(0i16, 32000));
        }
        v.into()
    })
    .clone()
}
