//! The map of active calls: call UUID → the handle of its Call actor (tenant and mailbox).
//! It holds handles only; a call's state stays in its actor, which adds itself when it starts
//! and removes itself when it ends.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use tokio::sync::mpsc;

/// What the API (or later a queue or conference) can ask of a running call.
#[derive(Debug)]
pub enum CallCommand {
    /// The call as it is now.
    Snapshot {
        reply: tokio::sync::oneshot::Sender<CallInfo>,
    },
    /// End the call with this cause (BYE after answer, the cause's final response before),
    /// answered with the call as it is then (`ending`), or why it cannot.
    Hangup {
        cause: crate::hangup::HangupCause,
        reply: tokio::sync::oneshot::Sender<Result<CallInfo, CommandRefused>>,
    },
    /// Send keypad digits to one leg (its index in the call), RFC 4733 where it negotiated
    /// telephone-event, else in band; answered with the call once the digits are queued.
    SendDtmf {
        leg: u32,
        digits: String,
        reply: tokio::sync::oneshot::Sender<Result<CallInfo, CommandRefused>>,
    },
    /// Stop the running block; a call under CALL_CONTROL sends its next webhook request at once.
    Interrupt,
    /// A command that changes the call's legs or room (hold, mute, record…), answered with
    /// the call as it is then, or why it cannot apply.
    Control {
        cmd: ControlCommand,
        reply: tokio::sync::oneshot::Sender<Result<CallInfo, CommandRefused>>,
    },
    /// An application claims an offered call (`by`: its API key's name; `session`: the
    /// events socket session it claimed through, if any): the first claim wins, and the
    /// call's plan will not run while the claim holds.
    Claim {
        by: String,
        session: Option<String>,
        reply: tokio::sync::oneshot::Sender<Result<CallInfo, CommandRefused>>,
    },
    /// The events session that claimed the call is gone: the call is its plan's again.
    ReleaseClaim { session: String },
    /// Run blocks on the call now (`POST …/blocks`): see [`crate::flow::Input::RunBlocks`].
    RunBlocks {
        blocks: Vec<crate::blocks::Block>,
        reply: tokio::sync::oneshot::Sender<Result<CallInfo, CommandRefused>>,
    },
    /// Hand a leg over to another call (`to_call`: an attended transfer, a supervisor named
    /// by its leg): `leg` is the connected callee (`None` too) or the first leg (0), which
    /// must be answered. This call lets it go without hanging it up: a callee's leaving ends
    /// the bridge as if it had hung up, the first leg's ends the call.
    ReleaseLeg {
        leg: Option<u32>,
        to_call: String,
        /// The `mode` of the `call.transferred` event it leaves: `attended`, `moved`.
        mode: &'static str,
        reply: tokio::sync::oneshot::Sender<Result<Box<crate::call::MovedLeg>, CommandRefused>>,
    },
    /// Attended transfer from the first leg, the last step: the connected callee goes to a
    /// new call, connected there to `leg` (the consultation call `consult`'s party); this
    /// call's first leg ends. Refused: the moved leg is hung up.
    HandOffWith {
        leg: Box<crate::call::MovedLeg>,
        consult: String,
        reply: tokio::sync::oneshot::Sender<Result<CallInfo, CommandRefused>>,
    },
    /// A supervisor named by its leg (moved here from its own call) joins the connected call
    /// in `mode`. Refused: the moved leg is hung up.
    AdoptSupervisor {
        leg: Box<crate::call::MovedLeg>,
        mode: SuperviseMode,
        reply: tokio::sync::oneshot::Sender<Result<CallInfo, CommandRefused>>,
    },
    /// Attended transfer, the last step: `leg` (the consultation call `consult`'s party) takes
    /// the place of leg `from` (default: the connected callee), whose leg ends. Refused: the
    /// moved leg is hung up.
    AdoptForTransfer {
        leg: Box<crate::call::MovedLeg>,
        from: Option<u32>,
        consult: String,
        reply: tokio::sync::oneshot::Sender<Result<CallInfo, CommandRefused>>,
    },
    /// Play ANNOUNCEMENT / SAY blocks into the call's connected bridge, mixed with both
    /// parties' audio and heard by both; answered once accepted (before the audio renders).
    PlayIntoBridge {
        blocks: Vec<crate::blocks::Block>,
        reply: tokio::sync::oneshot::Sender<Result<(), PlayRefused>>,
    },
}

/// What [`CallCommand::Control`] asks of a call. A leg is named by its index in the call (0:
/// the caller, or the party a placed call reached); `None` takes the default the API
/// documents (leg 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlCommand {
    /// Put a party of the connected call on hold: a re-INVITE `sendonly` toward it, music on
    /// hold into it, and the other party no longer hears it.
    Hold {
        leg: Option<u32>,
    },
    Unhold {
        leg: Option<u32>,
    },
    /// Mute a party in the call's room: nobody hears it (it still hears everyone).
    Mute {
        leg: Option<u32>,
    },
    Unmute {
        leg: Option<u32>,
    },
    /// Record the connected call into a WAV file: both parties mixed, or `stereo` with the
    /// caller on the left channel and the callee on the right.
    StartRecording {
        stereo: bool,
    },
    StopRecording,
    /// Blind transfer: the party on the other side of leg `from` (default: the connected
    /// callee; so the caller) is connected to `to`, and `from`'s leg ends. From leg 0, the
    /// callee is handed to a new call that dials `to`, and this call ends.
    Transfer {
        to: crate::blocks::BridgeDestination,
        from: Option<u32>,
    },
    /// Send the call (its caller, ringing or answered) to `to`: whatever runs stops and the
    /// rest of its plan is that BRIDGE.
    Redirect {
        to: crate::blocks::BridgeDestination,
    },
    /// Dial `supervisor` into the connected call in `mode`, or (without one) switch the mode
    /// of the supervisor on it.
    Supervise {
        mode: SuperviseMode,
        supervisor: Option<crate::blocks::BridgeDestination>,
    },
    /// Hang up the call's supervisor.
    StopSupervising,
    /// Whether a transfer from leg `from` could apply now (the first step of an attended
    /// transfer, before the consultation call gives its party up).
    CheckTransfer {
        from: Option<u32>,
    },
    /// Whether a supervisor could join now (the first step of supervising with a leg named,
    /// before that leg's call lets it go).
    CheckSupervise,
    /// Whether the connected callee could be handed to a new call now (the first step of an
    /// attended transfer from the first leg).
    CheckHandOff,
    /// Turn the connected call into a conference (`call-<call id>`); `owner` (default: the
    /// connected callee) is its owner.
    MakeConference {
        owner: Option<u32>,
    },
    /// Hang up a leg that sits in a conference (it leaves it).
    Remove {
        leg: Option<u32>,
    },
    /// Answer an inbound call an application claimed (200 OK).
    Answer,
}

/// How a supervisor takes part in a call: the agent is the connected callee, the customer the
/// caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SuperviseMode {
    /// Hears both, heard by nobody.
    Listen,
    /// Hears both, heard by the agent only (coaching).
    Whisper,
    /// Hears both, heard by both (three-way).
    Barge,
    /// Takes the agent's place: the agent's leg ends.
    Intercept,
}

impl SuperviseMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SuperviseMode::Listen => "listen",
            SuperviseMode::Whisper => "whisper",
            SuperviseMode::Barge => "barge",
            SuperviseMode::Intercept => "intercept",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "listen" => SuperviseMode::Listen,
            "whisper" => SuperviseMode::Whisper,
            "barge" => SuperviseMode::Barge,
            "intercept" => SuperviseMode::Intercept,
            _ => return None,
        })
    }
}

/// Why blocks cannot be played into a call now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlayRefused {
    /// No callee is connected (the call is in its plan, ringing, or its callee hung up).
    NotConnected,
}

/// Why a command cannot apply to a call in its present state (the API's `409`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandRefused {
    /// The call is already ending (hung up, its CDR being written).
    Ending,
    /// The leg is not answered yet (it rings, or is being dialled).
    NotAnswered,
    /// The leg has ended.
    LegEnded,
    /// The call has no leg with this index.
    NoSuchLeg,
    /// The call's parties are not connected (it is in its plan, ringing, or its callee left).
    NotConnected,
    /// The leg is not one of the connected call's two parties.
    NotAParty,
    AlreadyHeld,
    NotHeld,
    AlreadyMuted,
    NotMuted,
    AlreadyRecording,
    NotRecording,
    /// The recording file could not be created.
    RecordingUnavailable,
    /// The call's first leg cannot be replaced in its call (a transfer from it hands the callee
    /// to a new call instead).
    TransferFromFirstLeg,
    /// A supervisor is on the call already (post the mode alone to switch it).
    AlreadySupervised,
    /// No supervisor is on the call.
    NoSupervisor,
    /// A leg named as a supervisor cannot come: its call is gone, or refused to let it go
    /// (the reason).
    SupervisorLeg(Box<CommandRefused>),
    /// The supervisor's leg would be one of the call's own.
    SupervisorInCall,
    /// The leg is busy with a re-INVITE of ours (hold, resume): it cannot move until that is
    /// answered.
    LegBusy,
    /// The consultation call of an attended transfer has ended.
    ConsultGone,
    /// The consultation call has no connected party to transfer to.
    ConsultNotConnected,
    /// The consultation call is the call itself.
    ConsultIsTheCall,
    /// The call is not offered to applications (its number is not controlled, or the offer
    /// expired and its plan runs).
    NotOffered,
    /// Another application claimed the call first.
    AlreadyClaimed,
    /// The call is answered already.
    AlreadyAnswered,
    /// Only a call an application claimed is answered on command.
    NotClaimed,
    /// Blocks other than ANNOUNCEMENT and SAY cannot run while the call is connected or in
    /// a conference.
    BlocksWhileConnected,
    /// The call was turned into a conference: its legs take participant commands only.
    InConference,
}

impl CommandRefused {
    pub fn message(&self) -> &'static str {
        match self {
            CommandRefused::Ending => "the call is already ending",
            CommandRefused::NotAnswered => "the leg is not answered yet",
            CommandRefused::LegEnded => "the leg has ended",
            CommandRefused::NoSuchLeg => "the call has no such leg",
            CommandRefused::NotConnected => "the call is not connected to a party",
            CommandRefused::NotAParty => "the leg is not a party of the connected call",
            CommandRefused::AlreadyHeld => "the leg is already on hold",
            CommandRefused::NotHeld => "the leg is not on hold",
            CommandRefused::AlreadyMuted => "the leg is already muted",
            CommandRefused::NotMuted => "the leg is not muted",
            CommandRefused::AlreadyRecording => "the call is already being recorded",
            CommandRefused::NotRecording => "the call is not being recorded",
            CommandRefused::RecordingUnavailable => "the recording file cannot be written",
            CommandRefused::TransferFromFirstLeg => {
                "leg 0 cannot be replaced in its call (a transfer from leg 0 hands the callee \
                 to a new call)"
            }
            CommandRefused::AlreadySupervised => {
                "a supervisor is on the call already (post the mode alone to switch it)"
            }
            CommandRefused::NoSupervisor => "no supervisor is on the call (name one to dial)",
            CommandRefused::SupervisorLeg(why) => match **why {
                CommandRefused::ConsultGone => "the supervisor's call has ended",
                CommandRefused::ConsultNotConnected | CommandRefused::NotConnected => {
                    "the supervisor's leg is not connected in its call"
                }
                ref other => other.message(),
            },
            CommandRefused::SupervisorInCall => {
                "the supervisor's leg is a leg of this call (name a leg of another call)"
            }
            CommandRefused::LegBusy => {
                "the leg is being re-INVITEd (hold or resume); try again when that is over"
            }
            CommandRefused::ConsultGone => "the consultation call has ended",
            CommandRefused::ConsultNotConnected => {
                "the consultation call has no connected party to transfer to"
            }
            CommandRefused::ConsultIsTheCall => "the consultation call is the call itself",
            CommandRefused::NotOffered => {
                "the call is not offered to applications (or its offer expired)"
            }
            CommandRefused::AlreadyClaimed => "another application claimed the call first",
            CommandRefused::InConference => {
                "the call is a conference: command its participants \
                 (/v1/conferences/{name}/participants/{leg}/…)"
            }
            CommandRefused::AlreadyAnswered => "the call is answered already",
            CommandRefused::NotClaimed => {
                "only a call an application claimed is answered on command"
            }
            CommandRefused::BlocksWhileConnected => {
                "only ANNOUNCEMENT and SAY blocks run on a connected call (mixed into it); \
                 other blocks run on a call in its plan or one an application claimed"
            }
        }
    }

    /// The request field the refusal is about: `leg` when the named leg is the problem,
    /// else `state` (the call's state does not allow it).
    pub fn field(&self) -> &'static str {
        match self {
            CommandRefused::NoSuchLeg | CommandRefused::NotAParty => "leg",
            CommandRefused::TransferFromFirstLeg => "from",
            CommandRefused::AlreadySupervised
            | CommandRefused::NoSupervisor
            | CommandRefused::SupervisorLeg(_)
            | CommandRefused::SupervisorInCall => "supervisor",
            CommandRefused::ConsultGone
            | CommandRefused::ConsultNotConnected
            | CommandRefused::ConsultIsTheCall => "consultCallId",
            _ => "state",
        }
    }
}

/// The values of a call's or leg's `direction`.
const DIRECTIONS: [&str; 2] = ["inbound", "outbound"];

/// A call in progress as the API shows it (`GET /v1/calls/{id}`), built by its actor.
#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "Call")]
pub struct CallInfo {
    pub id: String,
    pub sip_call_id: String,
    pub tenant: String,
    /// `inbound` (offered to us) or `outbound` (placed through the API).
    #[schemars(extend("enum" = DIRECTIONS))]
    pub direction: &'static str,
    /// The caller (From user part).
    pub from: String,
    /// The called number as dialled.
    pub to: String,
    /// The tenant's number the call came in on.
    pub number: String,
    /// The lines (SIP users) the call involves: the phone that placed it and those it dialled.
    pub lines: Vec<String>,
    /// The caller's leg state (`calling`, `ringing`, `early_media`, `answered`, `held`,
    /// `ending`, `ended`).
    #[schemars(extend("enum" = crate::leg::LegState::names()))]
    pub state: &'static str,
    /// The leg id of the callee the caller talks to, when bridged.
    pub bridged_to: Option<String>,
    /// The conference the caller is in.
    pub conference: Option<String>,
    /// The recording running on the call, if any.
    pub recording: Option<RecordingInfo>,
    pub start_time: chrono::DateTime<chrono::Utc>,
    pub answer_time: Option<chrono::DateTime<chrono::Utc>>,
    pub legs: Vec<LegInfo>,
    pub variables: std::collections::BTreeMap<String, String>,
}

/// One leg of a call (`legs` in `GET /v1/calls/{id}`).
#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "CallLeg")]
pub struct LegInfo {
    /// `<call id>.<index>`: the index is the leg's `legIndex` in the CDR (0 = the caller).
    pub id: String,
    pub index: u32,
    /// `caller`, `callee` or `supervisor`.
    #[schemars(extend("enum" = ["caller", "callee", "supervisor"]))]
    pub party: &'static str,
    /// `inbound` or `outbound`.
    #[schemars(extend("enum" = DIRECTIONS))]
    pub direction: &'static str,
    pub destination_type: Option<String>,
    pub destination: String,
    #[schemars(extend("enum" = crate::leg::LegState::names()))]
    pub state: &'static str,
    pub start_time: chrono::DateTime<chrono::Utc>,
    pub answer_time: Option<chrono::DateTime<chrono::Utc>>,
    pub end_time: Option<chrono::DateTime<chrono::Utc>>,
    pub sip_status: Option<u16>,
    pub hangup_cause: Option<&'static str>,
    /// On hold by a command (`POST …/hold`): it hears music, the other party does not hear it.
    pub held: bool,
    /// Muted by a command: nobody hears it.
    pub muted: bool,
}

/// A recording of a call in progress.
#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "RecordingRun")]
pub struct RecordingInfo {
    /// Its id: `GET /v1/recordings/{id}` once it is complete.
    pub id: String,
    pub stereo: bool,
    pub start_time: chrono::DateTime<chrono::Utc>,
}

/// The public id of a call's leg: `<call id>.<index>`.
pub fn leg_id(call_id: &str, index: u32) -> String {
    format!("{call_id}.{index}")
}

#[derive(Clone)]
pub struct CallHandle {
    pub tenant: String,
    /// The tenant's number the call came in on.
    pub number: String,
    pub commands: mpsc::UnboundedSender<CallCommand>,
}

#[derive(Default)]
pub struct CallRegistry {
    calls: Mutex<HashMap<String, CallHandle>>,
    /// Calls that ended a short while ago, so that a command arriving late is told the call
    /// has ended (the API's `409`) rather than that it never was.
    ended: Mutex<EndedCalls>,
}

/// How long, and how many, ended calls are remembered.
const ENDED_KEEP: std::time::Duration = std::time::Duration::from_secs(300);
const ENDED_MAX: usize = 10_000;

/// A call that ended: whom it concerned, for the API's realms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndedCall {
    pub tenant: String,
    pub number: String,
    pub lines: Vec<String>,
}

#[derive(Default)]
struct EndedCalls {
    by_id: HashMap<String, EndedCall>,
    /// Oldest first.
    order: std::collections::VecDeque<(std::time::Instant, String)>,
}

impl EndedCalls {
    fn expire(&mut self, now: std::time::Instant) {
        while let Some((at, id)) = self.order.front() {
            if now.duration_since(*at) < ENDED_KEEP && self.order.len() <= ENDED_MAX {
                break;
            }
            self.by_id.remove(id);
            self.order.pop_front();
        }
    }
}

impl CallRegistry {
    pub fn insert(&self, call_id: &str, handle: CallHandle) {
        self.lock().insert(call_id.to_string(), handle);
    }

    pub fn remove(&self, call_id: &str) {
        self.lock().remove(call_id);
    }

    /// The call ended: it leaves the map of active calls and is remembered as ended (with its
    /// `lines`) for a while.
    pub fn finish(&self, call_id: &str, lines: Vec<String>) {
        let Some(h) = self.lock().remove(call_id) else {
            return;
        };
        let now = std::time::Instant::now();
        let mut ended = self.ended.lock().unwrap_or_else(PoisonError::into_inner);
        ended.by_id.insert(
            call_id.to_string(),
            EndedCall {
                tenant: h.tenant,
                number: h.number,
                lines,
            },
        );
        ended.order.push_back((now, call_id.to_string()));
        ended.expire(now);
    }

    /// The call, if it ended within the last few minutes.
    pub fn ended(&self, call_id: &str) -> Option<EndedCall> {
        let mut ended = self.ended.lock().unwrap_or_else(PoisonError::into_inner);
        ended.expire(std::time::Instant::now());
        ended.by_id.get(call_id).cloned()
    }

    pub fn get(&self, call_id: &str) -> Option<CallHandle> {
        self.lock().get(call_id).cloned()
    }

    /// Every active call `(id, handle)` whose tenant `keep` accepts.
    pub fn list(&self, keep: impl Fn(&CallHandle) -> bool) -> Vec<(String, CallHandle)> {
        self.lock()
            .iter()
            .filter(|(_, h)| keep(h))
            .map(|(id, h)| (id.clone(), h.clone()))
            .collect()
    }

    /// Sends the command `make` builds around a reply channel and waits for the answer.
    /// `None` when no such call is active, or it ended before it read the command (it drops
    /// the reply): gone, as if not found.
    pub async fn ask<T>(
        &self,
        call_id: &str,
        make: impl FnOnce(tokio::sync::oneshot::Sender<T>) -> CallCommand,
    ) -> Option<T> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        if !self.send(call_id, make(reply)) {
            return None;
        }
        answer.await.ok()
    }

    /// Sends a command to the call's actor; false when no such call is active.
    pub fn send(&self, call_id: &str, cmd: CallCommand) -> bool {
        self.get(call_id)
            .is_some_and(|h| h.commands.send(cmd).is_ok())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, CallHandle>> {
        // The map holds plain handles; a panic elsewhere cannot leave it half-updated.
        self.calls.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
