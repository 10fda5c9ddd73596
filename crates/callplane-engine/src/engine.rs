//! The engine: accepts inbound calls from the SIP layer and starts one Call actor per call.
//! It holds only shared handles (store, CDR writer, SIP server, media engine, prompts).

use crate::call::{run_inbound_call, CallServices};
use crate::callstate::CallStateSubscriber;
use crate::events::{CdrSubscriber, EventBus, EventCounters, LocalBus};
use crate::prompts::{PromptConfig, PromptLibrary};
use crate::registry::{CallCommand, CallRegistry};
use crate::webhook::{WebhookClient, WebhookConfig};
use callplane_media::MediaEngine;
use callplane_sip::{InboundCall, SipServer};
use callplane_store::{CdrWriter, Store};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub prompts: PromptConfig,
    /// The shared webhook client's limits.
    pub webhooks: WebhookConfig,
    /// Requests one CALL_CONTROL block instance may send before it is stopped.
    pub max_call_control_loops: u32,
    /// How long a destination chosen by ASK_URL rings.
    pub ask_url_ring_seconds: u32,
    /// This node's name, sent as the ask-URL `server` field.
    pub node_name: String,
    /// A WAV file played to a party held by a command; `None`: a built-in tune.
    pub music_on_hold: Option<std::path::PathBuf>,
    /// Where call recordings are written.
    pub recordings_dir: std::path::PathBuf,
    /// How long a call to a number an application controls waits for a claim.
    pub offer_timeout: Duration,
    /// How long a claimed call waits for its application before its plan runs; `None`: for
    /// ever.
    pub claim_idle_timeout: Option<Duration>,
    /// COLLECT_SPEECH's recognizer; `None`: the blocks are skipped (logged at start).
    pub recognizer: Option<Arc<dyn crate::asr::SpeechRecognizer>>,
}

#[derive(Clone)]
pub struct Engine {
    svc: Arc<CallServices>,
    event_counters: Arc<EventCounters>,
}

impl Engine {
    pub fn new(
        cfg: EngineConfig,
        store: Store,
        cdrs: CdrWriter,
        sip: SipServer,
        media: MediaEngine,
    ) -> Result<Self, String> {
        let prompts = Arc::new(PromptLibrary::new(cfg.prompts, store.clone()));
        let music_on_hold = match &cfg.music_on_hold {
            Some(path) => callplane_media::load_wav_8k(path)
                .map_err(|e| format!("musicOnHold {}: {e}", path.display()))?
                .into(),
            None => crate::call::default_music_on_hold(),
        };
        let webhooks = Arc::new(WebhookClient::new(cfg.webhooks)?);
        // The in-process bus and its subscribers: call-state callbacks, the CDR writer, metrics.
        let events: Arc<dyn EventBus> = Arc::new(LocalBus::default());
        let callstate = Arc::new(CallStateSubscriber::default());
        let event_counters = Arc::new(EventCounters::default());
        events.subscribe(callstate.clone());
        events.subscribe(Arc::new(CdrSubscriber(cdrs.clone())));
        events.subscribe(event_counters.clone());
        Ok(Engine {
            event_counters,
            svc: Arc::new(CallServices {
                store,
                cdrs,
                sip,
                events,
                callstate,
                conferences: Arc::new(crate::conference::Conferences::new(media.clone())),
                media,
                prompts,
                calls: CallRegistry::default(),
                webhooks,
                max_call_control_loops: cfg.max_call_control_loops,
                ask_url_ring_seconds: cfg.ask_url_ring_seconds,
                node_name: cfg.node_name,
                active_calls: AtomicUsize::new(0),
                finished_calls: AtomicU64::new(0),
                next_owner: AtomicU64::new(1),
                next_leg: AtomicU64::new(1),
                shutdown: CancellationToken::new(),
                music_on_hold,
                recordings_dir: cfg.recordings_dir,
                controllers: Arc::default(),
                offer_timeout: cfg.offer_timeout,
                claim_idle_timeout: cfg.claim_idle_timeout,
                recognizer: cfg.recognizer,
            }),
        })
    }

    /// Runs until the SIP layer stops delivering calls.
    pub async fn run(&self, mut calls: mpsc::Receiver<InboundCall>) {
        while let Some(call) = calls.recv().await {
            tokio::spawn(run_inbound_call(self.svc.clone(), call));
        }
    }

    /// Ends every call in progress (NORMAL_TEMPORARY_FAILURE: a final response before answer,
    /// BYE with Reason after) and waits, at most `grace`, until their CDRs are queued.
    /// Returns the number of calls still running when the grace time ran out.
    pub async fn drain(&self, grace: Duration) -> usize {
        self.svc.shutdown.cancel();
        let deadline = tokio::time::Instant::now() + grace;
        while self.active_calls() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.active_calls()
    }

    pub fn active_calls(&self) -> usize {
        self.svc.active_calls.load(Ordering::Relaxed)
    }

    pub fn finished_calls(&self) -> u64 {
        self.svc.finished_calls.load(Ordering::Relaxed)
    }

    /// The tenant of an active call, `None` when no call with that id is running.
    pub fn call_tenant(&self, call_id: &str) -> Option<String> {
        self.svc.calls.get(call_id).map(|h| h.tenant)
    }

    /// An application controls `number` of `tenant` (calls to it are offered first) until
    /// the registration is dropped.
    pub fn control_number(&self, tenant: &str, number: &str) -> crate::call::ControlRegistration {
        self.svc.controllers.register(tenant, number)
    }

    /// An application claims an offered call; `None` when it is not running.
    pub async fn claim(
        &self,
        call_id: &str,
        by: String,
        session: Option<String>,
    ) -> Option<Result<crate::registry::CallInfo, crate::registry::CommandRefused>> {
        self.svc
            .calls
            .ask(call_id, |reply| CallCommand::Claim { by, session, reply })
            .await
    }

    /// The events session `session` is gone: a call it claimed goes back to its plan. False
    /// when the call is not running.
    pub fn release_claim(&self, call_id: &str, session: String) -> bool {
        self.svc
            .calls
            .send(call_id, CallCommand::ReleaseClaim { session })
    }

    /// Runs blocks on a call now (see [`crate::flow::Input::RunBlocks`]); `None` when it is
    /// not running.
    pub async fn run_blocks(
        &self,
        call_id: &str,
        blocks: Vec<crate::blocks::Block>,
    ) -> Option<Result<crate::registry::CallInfo, crate::registry::CommandRefused>> {
        self.svc
            .calls
            .ask(call_id, |reply| CallCommand::RunBlocks { blocks, reply })
            .await
    }

    /// The live conferences of this node.
    pub fn conferences(&self) -> &crate::conference::Conferences {
        &self.svc.conferences
    }

    /// A call that ended within the last few minutes.
    pub fn ended_call(&self, call_id: &str) -> Option<crate::registry::EndedCall> {
        self.svc.calls.ended(call_id)
    }

    /// Webhook requests by tenant and kind, for `/metrics`.
    pub fn webhook_series(&self) -> Vec<crate::webhook::WebhookSeries> {
        self.svc.webhooks.metrics().series()
    }

    /// Call events published on the bus: `(event type, hangup cause or "", count)`, sorted.
    pub fn event_counts(&self) -> Vec<(&'static str, String, u64)> {
        self.event_counters.snapshot()
    }

    /// The call as it is now; `None` when no call with that id is running.
    pub async fn call_info(&self, call_id: &str) -> Option<crate::registry::CallInfo> {
        self.svc
            .calls
            .ask(call_id, |reply| CallCommand::Snapshot { reply })
            .await
    }

    /// The active calls whose `(tenant, number)` `keep` accepts, as they are now, oldest
    /// first. Every call is asked at once; a call that ends meanwhile is left out.
    pub async fn list_calls(
        &self,
        keep: impl Fn(&str, &str) -> bool,
    ) -> Vec<crate::registry::CallInfo> {
        let asked: Vec<_> = self
            .svc
            .calls
            .list(|h| keep(&h.tenant, &h.number))
            .into_iter()
            .filter_map(|(_, h)| {
                let (reply, answer) = tokio::sync::oneshot::channel();
                h.commands
                    .send(CallCommand::Snapshot { reply })
                    .is_ok()
                    .then_some(answer)
            })
            .collect();
        let mut out = Vec::with_capacity(asked.len());
        for answer in asked {
            if let Ok(info) = answer.await {
                out.push(info);
            }
        }
        out.sort_by(|a, b| a.start_time.cmp(&b.start_time).then(a.id.cmp(&b.id)));
        out
    }

    /// Ends the call with `cause`: `None` when no call with that id is running, else the call
    /// as it is once ending, or why it cannot be ended.
    pub async fn hangup(
        &self,
        call_id: &str,
        cause: crate::hangup::HangupCause,
    ) -> Option<Result<crate::registry::CallInfo, crate::registry::CommandRefused>> {
        self.svc
            .calls
            .ask(call_id, |reply| CallCommand::Hangup { cause, reply })
            .await
    }

    /// Places a call (`POST /v1/calls`): dials the destination and runs the blocks once it
    /// answers. Returns the call as it starts (`calling`); what becomes of it is told by its
    /// events and its CDR.
    pub fn originate(&self, req: crate::call::Originate) -> crate::registry::CallInfo {
        crate::call::run_outbound_call(self.svc.clone(), req)
    }

    /// Whether the SIP user has a registered device now.
    pub fn is_registered(&self, user: &str) -> bool {
        !self.svc.sip.lookup_registration(user).is_empty()
    }

    /// Carries out a command on a live call (hold, mute, record…): `None` when no such call
    /// is running, else the call as it is then, or why the command cannot apply.
    pub async fn control(
        &self,
        call_id: &str,
        cmd: crate::registry::ControlCommand,
    ) -> Option<Result<crate::registry::CallInfo, crate::registry::CommandRefused>> {
        self.svc
            .calls
            .ask(call_id, |reply| CallCommand::Control { cmd, reply })
            .await
    }

    /// Attended transfer: the party of call `consult` (its connected callee) takes the place
    /// of leg `from` (default: the connected callee) of call `call_id`, whose leg ends, and
    /// `consult` ends as if that party had left. From leg 0, `call_id`'s callee and that party
    /// are joined in a new call and `call_id` ends. `None` when `call_id` is not running.
    pub async fn attended_transfer(
        &self,
        call_id: &str,
        from: Option<u32>,
        consult: &str,
    ) -> Option<Result<crate::registry::CallInfo, crate::registry::CommandRefused>> {
        use crate::registry::{CommandRefused, ControlCommand};
        if call_id == consult {
            return Some(Err(CommandRefused::ConsultIsTheCall));
        }
        // From the first leg the callee goes to a new call, joined there by the party; from
        // the callee's, the party takes its place here.
        let from_first = from == Some(0);
        let check = if from_first {
            ControlCommand::CheckHandOff
        } else {
            ControlCommand::CheckTransfer { from }
        };
        let released = self
            .release_for(call_id, check, consult, None, "attended")
            .await?;
        let moved = match released {
            Ok(m) => m,
            Err(Refusal::Here(why) | Refusal::There(Some(why))) => return Some(Err(why)),
            Err(Refusal::There(None)) => return Some(Err(CommandRefused::ConsultGone)),
        };
        let consult = consult.to_string();
        self.hand_to(call_id, |reply| {
            if from_first {
                CallCommand::HandOffWith {
                    leg: moved,
                    consult,
                    reply,
                }
            } else {
                CallCommand::AdoptForTransfer {
                    leg: moved,
                    from,
                    consult,
                    reply,
                }
            }
        })
        .await
    }

    /// The first two steps of moving a leg into call `call_id`: whether that call can take it
    /// (`check`), then call `from_call` lets its leg `leg` go (`None`: its connected callee),
    /// leaving a `call.transferred` event with `mode`. `None` when `call_id` is not running.
    async fn release_for(
        &self,
        call_id: &str,
        check: crate::registry::ControlCommand,
        from_call: &str,
        leg: Option<u32>,
        mode: &'static str,
    ) -> Option<Result<Box<crate::call::MovedLeg>, Refusal>> {
        if let Err(why) = self.control(call_id, check).await? {
            return Some(Err(Refusal::Here(why)));
        }
        let to_call = call_id.to_string();
        let released = self
            .svc
            .calls
            .ask(from_call, |reply| CallCommand::ReleaseLeg {
                leg,
                to_call,
                mode,
                reply,
            })
            .await;
        Some(match released {
            None => Err(Refusal::There(None)),
            Some(Err(why)) => Err(Refusal::There(Some(why))),
            Some(Ok(m)) => Ok(m),
        })
    }

    /// Sends call `call_id` the command that adopts a moved leg; `None` when that call ended
    /// meanwhile — then the leg, with nowhere to go, is hung up.
    async fn hand_to(
        &self,
        call_id: &str,
        adopt: impl FnOnce(
            tokio::sync::oneshot::Sender<
                Result<crate::registry::CallInfo, crate::registry::CommandRefused>,
            >,
        ) -> CallCommand,
    ) -> Option<Result<crate::registry::CallInfo, crate::registry::CommandRefused>> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let cmd = adopt(reply);
        let sent = match self.svc.calls.get(call_id) {
            Some(h) => h.commands.send(cmd).map_err(|e| e.0),
            None => Err(cmd),
        };
        if let Err(cmd) = sent {
            if let CallCommand::AdoptForTransfer { leg, .. }
            | CallCommand::AdoptSupervisor { leg, .. }
            | CallCommand::HandOffWith { leg, .. } = cmd
            {
                leg.hang_up();
            }
            return None;
        }
        answer.await.ok()
    }

    /// Supervision by a leg of another call (`POST …/supervise` naming `leg_call`'s leg
    /// `leg`): that call lets the leg go (its connected callee, or its answered first leg, and
    /// then it ends) and the leg joins call `call_id` as its supervisor in `mode`. `None` when
    /// `call_id` is not running.
    pub async fn supervise_with_leg(
        &self,
        call_id: &str,
        mode: crate::registry::SuperviseMode,
        leg_call: &str,
        leg: u32,
    ) -> Option<Result<crate::registry::CallInfo, crate::registry::CommandRefused>> {
        use crate::registry::{CommandRefused, ControlCommand};
        if call_id == leg_call {
            return Some(Err(CommandRefused::SupervisorInCall));
        }
        let released = self
            .release_for(
                call_id,
                ControlCommand::CheckSupervise,
                leg_call,
                Some(leg),
                "moved",
            )
            .await?;
        let moved = match released {
            Ok(m) => m,
            Err(Refusal::Here(why)) => return Some(Err(why)),
            Err(Refusal::There(why)) => {
                let why = why.unwrap_or(CommandRefused::ConsultGone);
                return Some(Err(CommandRefused::SupervisorLeg(Box::new(why))));
            }
        };
        self.hand_to(call_id, |reply| CallCommand::AdoptSupervisor {
            leg: moved,
            mode,
            reply,
        })
        .await
    }

    /// Sends keypad digits to leg `leg` of the call; `None` when no such call is running.
    pub async fn send_dtmf(
        &self,
        call_id: &str,
        leg: u32,
        digits: String,
    ) -> Option<Result<crate::registry::CallInfo, crate::registry::CommandRefused>> {
        self.svc
            .calls
            .ask(call_id, |reply| CallCommand::SendDtmf {
                leg,
                digits,
                reply,
            })
            .await
    }

    /// Subscribes to every call event of this node (the API's WebSocket, for instance).
    pub fn subscribe(&self, subscriber: Arc<dyn crate::events::EventSubscriber>) {
        self.svc.events.subscribe(subscriber);
    }

    /// Asks the call's actor to stop its running block (the next webhook request goes out at
    /// once under CALL_CONTROL). False when no call with that id is running.
    pub fn interrupt(&self, call_id: &str) -> bool {
        self.svc.calls.send(call_id, CallCommand::Interrupt)
    }

    /// Plays ANNOUNCEMENT and SAY `blocks` into the call's connected bridge: they are mixed
    /// with both parties' audio and heard by both (the bridge becomes a mixing room while they
    /// play). `None` when no call with that id is running.
    pub async fn play_into_bridge(
        &self,
        call_id: &str,
        blocks: Vec<crate::blocks::Block>,
    ) -> Option<Result<(), crate::registry::PlayRefused>> {
        self.svc
            .calls
            .ask(call_id, |reply| CallCommand::PlayIntoBridge {
                blocks,
                reply,
            })
            .await
    }
}

/// Why a leg could not be moved: the call it was to join refused it, or the call it is in
/// (`None`: that call is gone).
enum Refusal {
    Here(crate::registry::CommandRefused),
    There(Option<crate::registry::CommandRefused>),
}
