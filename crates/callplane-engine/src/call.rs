//! The Call actor: one task per call that owns the call's legs (SIP dialogs and media) and drives
//! its `CallFlow`. It turns SIP and media events into flow inputs and flow actions into SIP and
//! media operations, runs BRIDGE attempts, and writes the CDR when the call ends. Nothing else
//! touches a call's state.

use crate::askurl::{encode_form, parse_reply, LegStatus};
use crate::blocks::{parse_blocks, BridgeBlock, BridgeMode, DestinationType};
use crate::callstate::{CallStateSender, CallStateTarget};
use crate::flow::{
    Action, AskUrlRequest, BridgeResult, CallControlRequest, CallFlow, Input, LegUrls, Prompt,
};
use crate::hangup::HangupCause;
use crate::prompts::PromptLibrary;
use crate::registry::{CallCommand, CallHandle};
use crate::variables::CallVariables;
use crate::webhook::{Outcome, WebhookClient, WebhookKind, WebhookRequest};
use bytes::Bytes;
use callplane_media::sdp::{
    build_sdp, negotiate, Direction, Negotiated, SdpParams, SessionDescription,
};
use callplane_media::{Codec, MediaEngine, MediaEvent, MediaLeg, RemoteMedia};
use callplane_sip::{
    InboundCall, InboundEvent, InboundLeg, OutboundCall, OutboundEvent, OutboundLeg, SipServer,
    Transport,
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

/// Payload type we offer for RFC 4733 telephone-event.
const TELEPHONE_EVENT_PT: u8 = 101;

/// What every Call actor shares: handles, not state.
pub struct CallServices {
    pub store: Store,
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
    /// Cancelled when the process shuts down: every Call actor ends its call.
    pub shutdown: tokio_util::sync::CancellationToken,
}

/// Who ended the call, as written to the CDR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HangupBy {
    Caller,
    Callee,
    System,
}

impl HangupBy {
    fn as_str(self) -> &'static str {
        match self {
            HangupBy::Caller => "caller",
            HangupBy::Callee => "callee",
            HangupBy::System => "system",
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

/// Commands to an outbound attempt's task.
enum AttemptCommand {
    Hangup(Option<String>),
}

/// One destination being called by a BRIDGE block.
struct Attempt {
    record: usize,
    media: MediaLeg,
    commands: mpsc::UnboundedSender<AttemptCommand>,
    deadline: Option<Instant>,
    done: bool,
    answered: bool,
    last_status: Option<u16>,
    started: Instant,
    answered_at: Option<Instant>,
    /// Its `hangup_url` request has gone out.
    hangup_reported: bool,
}

/// A running BRIDGE block.
struct BridgeRun {
    block: BridgeBlock,
    forward_ani: bool,
    next_destination: usize,
    attempts: Vec<Attempt>,
    events_tx: mpsc::UnboundedSender<(usize, OutboundEvent)>,
    events: mpsc::UnboundedReceiver<(usize, OutboundEvent)>,
    /// The attempt bridged to the caller (early media or answered).
    connected: Option<usize>,
    statuses: Vec<u16>,
    ringing_sent: bool,
    ringback_playing: bool,
    /// ASK_URL's `answer_url`/`hangup_url` for every leg of this bridge.
    leg_urls: Option<LegUrls>,
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
    leg: InboundLeg,
    media: MediaLeg,
    media_events: mpsc::Receiver<MediaEvent>,
    media_gone: bool,
    local_sdp_version: u64,
    session_id: u64,
    remote_telephone_event: Option<u8>,
    codec: Codec,
    answered: bool,
    flow: CallFlow,
    /// The flow's play id of what the media leg is playing, keyed by the media's play id.
    playing: Option<(u64, u64)>,
    bridge: Option<BridgeRun>,
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
    /// Call-state callbacks, when the number, plan or tenant has a `callstateInfoUrl`.
    callstate: Option<CallStateSender>,
}

fn now_utc() -> DateTime<Utc> {
    Utc::now()
}

/// The DTMF digits in a SIP INFO or RTP event that a flow understands.
fn is_dtmf(d: char) -> bool {
    matches!(d, '0'..='9' | '*' | '#' | 'A'..='D')
}

/// Parses an SDP offer or answer and picks our codec and telephone-event from it.
fn negotiate_sdp(sdp: &str) -> Result<Negotiated, String> {
    let sd = SessionDescription::parse(sdp).map_err(|e| e.to_string())?;
    negotiate(&sd).map_err(|e| e.to_string())
}

/// Queues a CDR; the writer retries and, if the database stays unwritable, logs the whole CDR.
fn write_cdr(svc: &CallServices, cdr: Cdr) {
    if let Err(e) = svc.cdrs.write(cdr) {
        warn!(error = %e, "CDR could not be queued");
    }
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
    write_cdr(
        svc,
        Cdr {
            call_id: uuid::Uuid::new_v4().to_string(),
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
        },
    );
}

/// Handles one inbound INVITE from offer to CDR.
pub async fn run_inbound_call(svc: Arc<CallServices>, mut call: InboundCall) {
    let start = now_utc();
    svc.active_calls.fetch_add(1, Ordering::Relaxed);
    let _guard = ActiveGuard(svc.clone());

    let found = match svc.store.find_number(&call.called) {
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
    let blocks = match svc
        .store
        .get_routing_plan(&tenant.name, &number.routing_plan)
    {
        Ok(Some(plan)) => {
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
    info!(call = %uuid, %caller, %called, %source, tenant = %tenant.name, "call started");
    // The most specific callstateInfoUrl wins: number, then plan, then tenant.
    let callstate = number
        .callstate_info_url
        .clone()
        .or(plan_callstate_url)
        .or_else(|| tenant.callstate_info_url.clone())
        .map(|url| {
            CallStateSender::start(
                svc.webhooks.clone(),
                CallStateTarget {
                    url,
                    tenant: tenant.name.clone(),
                    customer_number: tenant.customer_number,
                    signing_secret: tenant.signing_secret.clone(),
                },
                uuid.clone(),
            )
        });
    let (commands_tx, commands) = mpsc::unbounded_channel();
    svc.calls.insert(
        &uuid,
        CallHandle {
            tenant: tenant.name.clone(),
            commands: commands_tx,
        },
    );
    let (inputs_tx, inputs) = mpsc::unbounded_channel();
    let mut c = Call {
        svc: svc.clone(),
        uuid,
        sip_call_id,
        tenant,
        number,
        caller,
        called: called.clone(),
        authenticated_user,
        leg,
        media,
        media_events,
        media_gone: false,
        local_sdp_version: 1,
        session_id: rand_u64(),
        remote_telephone_event: negotiated.telephone_event_pt,
        codec: negotiated.codec,
        answered: false,
        flow,
        playing: None,
        bridge: None,
        legs: vec![LegRecord {
            direction: "inbound",
            destination_type: None,
            destination: called,
            start,
            answer: None,
            end: None,
            sip_status: None,
            cause: None,
        }],
        start,
        answer_time: None,
        answered_at: None,
        ended: None,
        inputs_tx,
        inputs,
        commands,
        callstate,
    };
    c.emit(
        "call.created",
        json!({"from": c.caller, "to": c.called, "tenant": c.tenant.name}),
    );
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
    fn local_sdp(&mut self, direction: Direction) -> String {
        let addr = self.media.local_addr();
        let sdp = build_sdp(SdpParams {
            session_id: self.session_id,
            session_version: self.local_sdp_version,
            ip: addr.ip(),
            port: addr.port(),
            codecs: &[self.codec],
            telephone_event_pt: self.remote_telephone_event,
            direction,
        });
        self.local_sdp_version += 1;
        sdp
    }

    async fn run(&mut self) {
        self.flow.start(Instant::now());
        loop {
            self.run_actions().await;
            if self.ended.is_some() {
                break;
            }
            let timer = self.flow.poll_timeout();
            let bridge_deadline = self.bridge.as_ref().and_then(|b| {
                b.attempts
                    .iter()
                    .filter(|a| !a.done && !a.answered)
                    .filter_map(|a| a.deadline)
                    .min()
            });
            tokio::select! {
                ev = self.leg.next_event() => self.on_leg_event(ev).await,
                ev = self.media_events.recv(), if !self.media_gone => self.on_media_event(ev),
                ev = recv_bridge(&mut self.bridge) => self.on_bridge_event(ev).await,
                _ = sleep_until_opt(timer) => self.flow.handle_timeout(Instant::now()),
                Some(input) = self.inputs.recv() => self.flow.handle(input, Instant::now()),
                Some(cmd) = self.commands.recv() => match cmd {
                    CallCommand::Interrupt => {
                        info!(call = %self.uuid, "interrupted");
                        self.flow.handle(Input::Interrupt, Instant::now());
                    }
                },
                _ = sleep_until_opt(bridge_deadline) => self.on_bridge_timeout().await,
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
            match action {
                Action::Answer => self.answer(),
                Action::Play { id, prompts } => self.play(id, prompts).await,
                Action::StopPlay => {
                    self.media.stop_play();
                }
                Action::Bridge {
                    block,
                    forward_ani,
                    leg_urls,
                } => self.start_bridge(block, forward_ani, leg_urls).await,
                Action::StopBridge => self.stop_bridge().await,
                Action::CallControl(req) => self.send_call_control(req),
                Action::AskUrl(req) => self.send_ask_url(req),
                Action::LoadPlan { name } => {
                    let blocks = match self.svc.store.get_routing_plan(&self.tenant.name, &name) {
                        Ok(Some(plan)) => parse_blocks(&serde_json::Value::Array(plan.blocks))
                            .map_err(|errs| {
                                warn!(plan = %name, errors = errs.len(), "stored plan is invalid")
                            })
                            .ok(),
                        _ => None,
                    };
                    self.flow
                        .handle(Input::PlanLoaded { name, blocks }, Instant::now());
                }
                Action::Hangup { cause } => {
                    self.hangup(cause, HangupBy::System).await;
                }
            }
        }
    }

    fn answer(&mut self) {
        if self.answered {
            return;
        }
        let sdp = self.local_sdp(Direction::SendRecv);
        if let Err(e) = self.leg.answer(sdp) {
            warn!(call = %self.uuid, error = %e, "answer failed");
            return;
        }
        self.answered = true;
        self.emit("call.answered", json!({}));
        let now = now_utc();
        self.answer_time = Some(now);
        self.answered_at = Some(Instant::now());
        if let Some(l) = self.legs.first_mut() {
            l.answer = Some(now);
            l.sip_status = Some(200);
        }
    }

    async fn play(&mut self, flow_id: u64, prompts: Vec<Prompt>) {
        let lib = self.svc.prompts.clone();
        let tenant = self.tenant.name.clone();
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
        let audio: Arc<[i16]> = if resolved.len() == 1 {
            resolved[0].clone()
        } else {
            resolved.iter().flat_map(|a| a.iter().copied()).collect()
        };
        if audio.is_empty() {
            // Nothing playable: the block fails over at once instead of leaving silence.
            self.flow
                .handle(Input::PlayFinished { id: flow_id }, Instant::now());
            return;
        }
        let media_id = self.media.play(audio);
        self.playing = Some((media_id, flow_id));
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
                    self.on_digit(digit);
                }
            }
            MediaEvent::PlayFinished { id, .. } => {
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
            Some(InboundEvent::Dtmf(d)) => self.on_digit(d),
            Some(InboundEvent::Reinvite { sdp, responder }) => {
                let parsed = sdp.as_deref().map(negotiate_sdp).transpose();
                match parsed {
                    Ok(Some(n)) => {
                        let answer_dir = match n.direction {
                            Direction::SendOnly => Direction::RecvOnly,
                            Direction::Inactive => Direction::Inactive,
                            Direction::RecvOnly => Direction::SendOnly,
                            Direction::SendRecv => Direction::SendRecv,
                        };
                        info!(call = %self.uuid, direction = ?n.direction, "re-INVITE");
                        self.codec = n.codec;
                        self.media.set_remote(RemoteMedia::from(&n));
                        let sdp = self.local_sdp(answer_dir);
                        responder.accept(sdp).await;
                    }
                    Ok(None) => {
                        // Offerless re-INVITE: offer our current session again.
                        let sdp = self.local_sdp(Direction::SendRecv);
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
        self.flow.stop();
        self.end_bridge_attempts(Some(cause)).await;
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
        if self.ended.is_some() {
            return;
        }
        self.end_bridge_attempts(Some(cause)).await;
        let status;
        if self.answered {
            self.leg.hangup(Some(cause.reason_header())).await;
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
        self.emit(
            "call.hangup",
            json!({
                "cause": cause.as_str(),
                "hangupBy": by.as_str(),
                "sipStatus": status,
                "durationMs": (end - self.start).num_milliseconds().max(0),
                "talkTimeMs": talk_time_ms,
            }),
        );
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
        write_cdr(
            &self.svc,
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
            },
        );
    }

    /// Queues a call-state event when the call has a `callstateInfoUrl`.
    fn emit(&mut self, event_type: &str, data: serde_json::Value) {
        if let Some(cs) = self.callstate.as_mut() {
            cs.emit(event_type, data);
        }
    }

    /// A keypad digit from the caller: to the flow, unless the caller talks to a callee.
    fn on_digit(&mut self, digit: char) {
        self.emit("call.dtmf", json!({ "digit": digit.to_string() }));
        if self.bridge.as_ref().is_none_or(|b| b.connected.is_none()) {
            self.flow.handle(Input::Digit(digit), Instant::now());
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

    /// Reports the end of bridge leg `index` to its `hangup_url`, once.
    fn leg_ended(&mut self, index: usize, status: LegStatus) {
        let Some(b) = self.bridge.as_mut() else {
            return;
        };
        let Some(url) = b.leg_urls.as_ref().and_then(|u| u.hangup_url.clone()) else {
            return;
        };
        let Some(a) = b.attempts.get_mut(index) else {
            return;
        };
        if a.hangup_reported {
            return;
        }
        a.hangup_reported = true;
        let now = Instant::now();
        let total = now.duration_since(a.started);
        let talk = a
            .answered_at
            .map_or(Duration::ZERO, |t| now.duration_since(t));
        let status = if a.answered {
            LegStatus::Answer
        } else {
            status
        };
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

    async fn start_bridge(
        &mut self,
        block: BridgeBlock,
        forward_ani: bool,
        leg_urls: Option<LegUrls>,
    ) {
        let (events_tx, events) = mpsc::unbounded_channel();
        self.bridge = Some(BridgeRun {
            block,
            forward_ani,
            next_destination: 0,
            attempts: Vec::new(),
            events_tx,
            events,
            connected: None,
            statuses: Vec::new(),
            ringing_sent: false,
            ringback_playing: false,
            leg_urls,
        });
        let parallel = self
            .bridge
            .as_ref()
            .is_some_and(|b| b.block.bridge_mode == BridgeMode::Parallel);
        if parallel {
            let n = self
                .bridge
                .as_ref()
                .map_or(0, |b| b.block.destinations.len());
            let deadline = self
                .bridge
                .as_ref()
                .and_then(|b| b.block.block_timeout)
                .map(|s| Instant::now() + Duration::from_secs(s.into()));
            for _ in 0..n {
                self.launch_next(deadline).await;
            }
        } else {
            self.launch_next(None).await;
        }
        self.check_bridge_exhausted().await;
    }

    /// Starts the next destination; failures to even start are recorded as failed attempts.
    async fn launch_next(&mut self, shared_deadline: Option<Instant>) {
        let Some(b) = self.bridge.as_mut() else {
            return;
        };
        let Some(dest) = b.block.destinations.get(b.next_destination).cloned() else {
            return;
        };
        b.next_destination += 1;
        let forward_ani = b.forward_ani;
        let events_tx = b.events_tx.clone();
        let record = self.legs.len();
        self.legs.push(LegRecord {
            direction: "outbound",
            destination_type: Some(dest.destination_type.as_str().into()),
            destination: dest.destination.clone(),
            start: now_utc(),
            answer: None,
            end: None,
            sip_status: None,
            cause: None,
        });
        let target = self
            .resolve_destination(dest.destination_type, &dest.destination, forward_ani)
            .await;
        let target = match target {
            Ok(t) => t,
            Err((status, why)) => {
                info!(call = %self.uuid, destination = %dest.destination, %why, "destination not reachable");
                let l = &mut self.legs[record];
                l.end = Some(now_utc());
                l.sip_status = Some(status);
                l.cause = Some(HangupCause::from_sip_status(status));
                if let Some(b) = self.bridge.as_mut() {
                    b.statuses.push(status);
                }
                return;
            }
        };
        let media = match self.svc.media.allocate().await {
            Ok(m) => m,
            Err(e) => {
                warn!(error = %e, "no RTP port for outbound leg");
                let l = &mut self.legs[record];
                l.end = Some(now_utc());
                l.sip_status = Some(503);
                l.cause = Some(HangupCause::SwitchCongestion);
                if let Some(b) = self.bridge.as_mut() {
                    b.statuses.push(503);
                }
                return;
            }
        };
        let addr = media.local_addr();
        let offer = build_sdp(SdpParams {
            session_id: rand_u64(),
            session_version: 1,
            ip: addr.ip(),
            port: addr.port(),
            codecs: &[Codec::Pcmu, Codec::Pcma],
            telephone_event_pt: Some(TELEPHONE_EVENT_PT),
            direction: Direction::SendRecv,
        });
        let out = OutboundCall {
            target_uri: target.uri,
            destination: target.addr,
            transport: target.transport,
            from_user: target.from_user,
            from_display: None,
            offer,
            credential: target.credential,
            extra_headers: vec![],
        };
        let leg = match self.svc.sip.invite(out) {
            Ok(l) => l,
            Err(e) => {
                warn!(error = %e, "cannot place outbound call");
                let l = &mut self.legs[record];
                l.end = Some(now_utc());
                l.sip_status = Some(503);
                l.cause = Some(HangupCause::NormalTemporaryFailure);
                if let Some(b) = self.bridge.as_mut() {
                    b.statuses.push(503);
                }
                return;
            }
        };
        let deadline = shared_deadline.or_else(|| {
            dest.timeout
                .map(|s| Instant::now() + Duration::from_secs(s.into()))
        });
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let Some(b) = self.bridge.as_mut() else {
            return;
        };
        let index = b.attempts.len();
        tokio::spawn(drive_attempt(index, leg, cmd_rx, events_tx));
        b.attempts.push(Attempt {
            record,
            media,
            commands: cmd_tx,
            deadline,
            done: false,
            answered: false,
            last_status: None,
            started: Instant::now(),
            answered_at: None,
            hangup_reported: false,
        });
    }

    async fn resolve_destination(
        &self,
        kind: DestinationType,
        destination: &str,
        forward_ani: bool,
    ) -> Result<Target, (u16, String)> {
        let presented = if forward_ani {
            self.caller.clone()
        } else {
            self.called.clone()
        };
        match kind {
            DestinationType::SipUser => {
                let user = self
                    .svc
                    .store
                    .get_sip_user(destination)
                    .map_err(|e| (503, e.to_string()))?
                    .filter(|u| u.tenant == self.tenant.name)
                    .ok_or((404, format!("no SIP user {destination} in this tenant")))?;
                let binding = self
                    .svc
                    .sip
                    .lookup_registration(&user.username)
                    .pop()
                    .ok_or((480, format!("{destination} is not registered")))?;
                Ok(Target {
                    uri: binding.contact,
                    addr: binding.source,
                    transport: binding.transport,
                    from_user: presented,
                    credential: None,
                })
            }
            DestinationType::SipTrunk | DestinationType::ExternalNumber => {
                let (trunk_name, number) = if kind == DestinationType::SipTrunk {
                    // `trunkname` alone, or `number@trunkname`.
                    match destination.split_once('@') {
                        Some((n, t)) => (t.to_string(), n.to_string()),
                        None => (destination.to_string(), self.called.clone()),
                    }
                } else {
                    let t = self.tenant.default_trunk.clone().ok_or((
                        503,
                        "tenant has no defaultTrunk for EXTERNALNUMBER".to_string(),
                    ))?;
                    (t, destination.to_string())
                };
                let trunk = self
                    .svc
                    .store
                    .get_trunk(&self.tenant.name, &trunk_name)
                    .map_err(|e| (503, e.to_string()))?
                    .ok_or((404, format!("no trunk {trunk_name}")))?;
                let addr = tokio::net::lookup_host((trunk.host.as_str(), trunk.port))
                    .await
                    .map_err(|e| (503, format!("cannot resolve {}: {e}", trunk.host)))?
                    .next()
                    .ok_or((503, format!("{} has no address", trunk.host)))?;
                let transport = match trunk.transport {
                    callplane_store::model::Transport::Tcp => Transport::Tcp,
                    callplane_store::model::Transport::Udp => Transport::Udp,
                };
                let from_user = if forward_ani {
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

    async fn on_bridge_event(&mut self, ev: (usize, OutboundEvent)) {
        let (index, ev) = ev;
        let Some(b) = self.bridge.as_mut() else {
            return;
        };
        let Some(attempt) = b.attempts.get_mut(index) else {
            return;
        };
        let record = attempt.record;
        match ev {
            OutboundEvent::Ringing { status, sdp } => {
                self.legs[record].sip_status = Some(status);
                if self.answered {
                    // Already talking to the caller (an announcement ran first): local ringback.
                    if !b.ringback_playing && b.connected.is_none() {
                        b.ringback_playing = true;
                        let tone = ringback_tone();
                        let id = self.media.play(tone);
                        self.playing = Some((id, 0));
                        self.emit("call.ringing", json!({ "earlyMedia": false }));
                    }
                    return;
                }
                match sdp.and_then(|s| negotiate_sdp(&s).ok()) {
                    Some(n) if b.connected.is_none() => {
                        // Early media: relay the callee's audio (ringback, announcements).
                        attempt.media.set_remote(RemoteMedia::from(&n));
                        self.media.bridge(&attempt.media);
                        b.connected = Some(index);
                        let first = !b.ringing_sent;
                        b.ringing_sent = true;
                        let sdp = self.local_sdp(Direction::SendRecv);
                        self.leg.ringing(Some(sdp));
                        if first {
                            self.emit("call.ringing", json!({ "earlyMedia": true }));
                        }
                    }
                    _ => {
                        if !b.ringing_sent {
                            b.ringing_sent = true;
                            self.leg.ringing(None);
                            self.emit("call.ringing", json!({ "earlyMedia": false }));
                        }
                    }
                }
            }
            OutboundEvent::Answered { sdp } => {
                attempt.answered = true;
                attempt.answered_at = Some(Instant::now());
                attempt.last_status = Some(200);
                self.legs[record].answer = Some(now_utc());
                self.legs[record].sip_status = Some(200);
                if let Some(n) = sdp.and_then(|s| negotiate_sdp(&s).ok()) {
                    attempt.media.set_remote(RemoteMedia::from(&n));
                }
                if b.ringback_playing {
                    b.ringback_playing = false;
                    self.media.stop_play();
                    self.playing = None;
                }
                if b.connected != Some(index) {
                    if let Some(prev) = b.connected {
                        if let Some(p) = b.attempts.get(prev) {
                            p.media.unbridge();
                        }
                    }
                    self.media.bridge(&b.attempts[index].media);
                    b.connected = Some(index);
                }
                // Cancel the others: "call completed elsewhere" (RFC 3326).
                let mut cancelled = Vec::new();
                for (i, other) in b.attempts.iter_mut().enumerate() {
                    if i != index && !other.done {
                        cancelled.push(i);
                        other.done = true;
                        other
                            .commands
                            .send(AttemptCommand::Hangup(Some(
                                "SIP;cause=200;text=\"Call completed elsewhere\"".into(),
                            )))
                            .ok();
                        let l = &mut self.legs[other.record];
                        l.end = Some(now_utc());
                        l.cause = Some(HangupCause::OriginatorCancel);
                        l.sip_status = Some(487);
                    }
                }
                let answer_url = b.leg_urls.as_ref().and_then(|u| u.answer_url.clone());
                let destination = self.legs[record].destination.clone();
                let destination_type = self.legs[record].destination_type.clone();
                for i in cancelled {
                    self.leg_ended(i, LegStatus::Cancel);
                }
                if let Some(url) = answer_url {
                    self.post_leg_callback(&url, "answer", Vec::new());
                }
                self.answer();
                self.emit(
                    "call.bridged",
                    json!({ "destination": destination, "destinationType": destination_type }),
                );
                self.flow.handle(Input::BridgeConnected, Instant::now());
            }
            OutboundEvent::Failed { status } => {
                if attempt.done {
                    return;
                }
                attempt.done = true;
                attempt.last_status = Some(status);
                b.statuses.push(status);
                let l = &mut self.legs[record];
                l.end = Some(now_utc());
                l.sip_status = Some(status);
                l.cause = Some(HangupCause::from_sip_status(status));
                if b.connected == Some(index) {
                    self.media.unbridge();
                    b.connected = None;
                }
                let sequential = b.block.bridge_mode == BridgeMode::Sequential;
                self.leg_ended(index, LegStatus::from_sip_status(status));
                if sequential {
                    self.launch_next(None).await;
                }
                self.check_bridge_exhausted().await;
            }
            OutboundEvent::RemoteBye => {
                attempt.done = true;
                let answered = attempt.answered;
                let l = &mut self.legs[record];
                l.end = Some(now_utc());
                l.cause = Some(HangupCause::NormalClearing);
                self.leg_ended(index, LegStatus::Answer);
                if answered {
                    self.flow.handle(Input::BridgeEnded, Instant::now());
                }
            }
            OutboundEvent::Dtmf(_) => {}
            OutboundEvent::Reinvite { sdp, responder } => {
                if let Some(n) = sdp.and_then(|s| negotiate_sdp(&s).ok()) {
                    attempt.media.set_remote(RemoteMedia::from(&n));
                }
                let a = attempt.media.local_addr();
                let sdp = build_sdp(SdpParams {
                    session_id: 1,
                    session_version: rand_u64() & 0xffff,
                    ip: a.ip(),
                    port: a.port(),
                    codecs: &[Codec::Pcmu, Codec::Pcma],
                    telephone_event_pt: Some(TELEPHONE_EVENT_PT),
                    direction: Direction::SendRecv,
                });
                responder.accept(sdp).await;
            }
        }
    }

    /// A destination's ring time (or the block's) ran out.
    async fn on_bridge_timeout(&mut self) {
        let now = Instant::now();
        let Some(b) = self.bridge.as_mut() else {
            return;
        };
        let mut expired = Vec::new();
        for (i, a) in b.attempts.iter_mut().enumerate() {
            if !a.done && !a.answered && a.deadline.is_some_and(|d| d <= now) {
                a.done = true;
                a.commands.send(AttemptCommand::Hangup(None)).ok();
                b.statuses.push(408);
                expired.push((i, a.record));
            }
        }
        for (i, record) in expired {
            self.leg_ended(i, LegStatus::NoAnswer);
            let l = &mut self.legs[record];
            l.end = Some(now_utc());
            l.cause = Some(HangupCause::NoAnswer);
            l.sip_status = Some(487);
            if let Some(b) = self.bridge.as_mut() {
                if b.connected == Some(i) {
                    self.media.unbridge();
                    b.connected = None;
                }
            }
        }
        let sequential = self
            .bridge
            .as_ref()
            .is_some_and(|b| b.block.bridge_mode == BridgeMode::Sequential);
        if sequential {
            self.launch_next(None).await;
        }
        self.check_bridge_exhausted().await;
    }

    /// When no attempt is left running and none answered, the block failed.
    async fn check_bridge_exhausted(&mut self) {
        loop {
            let Some(b) = self.bridge.as_ref() else {
                return;
            };
            if b.attempts.iter().any(|a| a.answered || !a.done) {
                return;
            }
            // A sequential bridge whose next destination failed to start tries the one after.
            if b.block.bridge_mode == BridgeMode::Sequential
                && b.next_destination < b.block.destinations.len()
            {
                self.launch_next(None).await;
                continue;
            }
            break;
        }
        let Some(b) = self.bridge.take() else { return };
        if b.ringback_playing {
            self.media.stop_play();
            self.playing = None;
        }
        let result = if b.statuses.iter().any(|s| matches!(s, 486 | 600)) {
            BridgeResult::Busy
        } else if b.statuses.iter().all(|s| matches!(s, 408 | 480 | 487)) {
            BridgeResult::NoAnswer
        } else {
            BridgeResult::Failed
        };
        info!(call = %self.uuid, result = result.as_str(), "bridge failed");
        self.flow
            .handle(Input::BridgeFailed(result), Instant::now());
    }

    /// Hangs up every outbound attempt still alive (caller left or the call ends).
    async fn end_bridge_attempts(&mut self, cause: Option<HangupCause>) {
        let Some(b) = self.bridge.as_mut() else {
            return;
        };
        let reason = cause.map(|c| c.reason_header());
        let mut ended = Vec::new();
        for (i, a) in b.attempts.iter_mut().enumerate() {
            if !a.done {
                ended.push(i);
                a.done = true;
                a.commands.send(AttemptCommand::Hangup(reason.clone())).ok();
                let l = &mut self.legs[a.record];
                l.end = Some(now_utc());
                if l.cause.is_none() {
                    l.cause = Some(if a.answered {
                        HangupCause::NormalClearing
                    } else {
                        HangupCause::OriginatorCancel
                    });
                }
            }
        }
        for i in ended {
            self.leg_ended(i, LegStatus::Cancel);
        }
        self.media.unbridge();
    }

    /// Interrupt: the bridge is abandoned (ringing legs cancelled, a connected callee hung up)
    /// and the caller stays for the next blocks.
    async fn stop_bridge(&mut self) {
        self.end_bridge_attempts(Some(HangupCause::NormalClearing))
            .await;
        if let Some(b) = self.bridge.take() {
            if b.ringback_playing {
                self.media.stop_play();
                self.playing = None;
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

async fn recv_bridge(bridge: &mut Option<BridgeRun>) -> (usize, OutboundEvent) {
    match bridge {
        Some(b) => match b.events.recv().await {
            Some(ev) => ev,
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// Owns one outbound leg: forwards its events to the Call actor and carries out its hangup.
async fn drive_attempt(
    index: usize,
    mut leg: OutboundLeg,
    mut commands: mpsc::UnboundedReceiver<AttemptCommand>,
    events: mpsc::UnboundedSender<(usize, OutboundEvent)>,
) {
    loop {
        tokio::select! {
            cmd = commands.recv() => {
                match cmd {
                    Some(AttemptCommand::Hangup(reason)) => leg.hangup(reason).await,
                    None => leg.hangup(None).await,
                }
                // Drain remaining events so the dialog's final transaction completes.
                let drain = async { while leg.next_event().await.is_some() {} };
                let _ = tokio::time::timeout(Duration::from_secs(32), drain).await;
                return;
            }
            ev = leg.next_event() => {
                let Some(ev) = ev else { return };
                let terminal = matches!(ev, OutboundEvent::Failed { .. } | OutboundEvent::RemoteBye);
                if events.send((index, ev)).is_err() || terminal {
                    return;
                }
            }
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
