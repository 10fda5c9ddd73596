//! The routing-plan interpreter of one call, sans-IO: it takes inputs (a prompt finished, a
//! digit, a bridge outcome, a timer) with the current time and emits actions (answer, play,
//! bridge, hang up) for the Call actor to carry out. No sockets, no clocks, no sleeping, so the
//! whole block flow is unit-tested in microseconds.

use crate::askurl::AskUrlReply;
use crate::blocks::{
    parse_blocks, AskUrlBlock, AskUrlDestinationType, Block, BridgeBlock, BridgeDestination,
    BridgeMode, CallControlBlock, CollectDigitsBlock, CollectSpeechBlock, ConferenceBlock,
    DestinationType, ForwardAni, StreamBlock, TimeoutDestination,
};
use crate::hangup::HangupCause;
use crate::variables::CallVariables;
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// Routing plans may jump to each other; a plan that loops forever is cut off here.
const MAX_PLAN_JUMPS: u32 = 32;

/// Requests one CALL_CONTROL block instance may send before it is stopped, unless configured.
pub const DEFAULT_MAX_CALL_CONTROL_LOOPS: u32 = 100;

/// CALL_CONTROL blocks returned by a webhook may nest this deep.
const MAX_CALL_CONTROL_DEPTH: usize = 8;

/// How long an ask-URL destination rings unless configured (the protocol has no field for it).
pub const DEFAULT_ASK_URL_RING_SECONDS: u32 = 60;

/// One request of the Call Control protocol; the actor adds `customerNumber`, signs and sends.
#[derive(Debug, Clone, PartialEq)]
pub struct CallControlRequest {
    /// Reported back in `Input::CallControlAnswered` (not for VALIDATION_ERRORS requests,
    /// whose answer is ignored).
    pub id: u64,
    pub url: String,
    pub access_key: Option<String>,
    pub call_control_uuid: String,
    pub loop_count: u32,
    /// `Some`: a `VALIDATION_ERRORS` request with these messages; `None`: `REQUESTING_BLOCKS`.
    pub validation_errors: Option<Vec<String>>,
    pub variables: BTreeMap<String, String>,
    pub timeout: Duration,
}

/// One ask-URL request; the actor adds the call's fields and sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AskUrlRequest {
    pub id: u64,
    pub url: String,
    pub timeout: Duration,
    /// The digits the caller last entered in a COLLECT_DIGITS block (`patternmenu_digits`).
    pub digits: Option<String>,
}

/// Where to report the answer and end of each leg of a bridge started by ASK_URL.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LegUrls {
    pub answer_url: Option<String>,
    pub hangup_url: Option<String>,
}

/// Something to play to the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prompt {
    /// A tenant announcement (`standard == false`) or one from the standard prompt set.
    Announcement { name: String, standard: bool },
    /// Text to speech; `ssml`: the text is an SSML document (checked when the block was).
    Tts {
        text: String,
        voice: Option<String>,
        ssml: bool,
    },
    /// Digits read one by one from the digit prompts (`digit-0` … `digit-hash`).
    Digits(String),
}

/// What the Call actor must do next.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Answer the inbound leg (200 OK with our SDP) if it is not answered yet.
    Answer,
    /// Play the prompts in order; report `Input::PlayFinished { id }` when done or stopped.
    Play { id: u64, prompts: Vec<Prompt> },
    /// Stop playback (barge-in).
    StopPlay,
    /// Call the destinations; report `BridgeConnected`/`BridgeFailed`, then `BridgeEnded`.
    Bridge {
        block: BridgeBlock,
        forward_ani: ForwardAni,
        /// Set when ASK_URL chose the destination.
        leg_urls: Option<LegUrls>,
    },
    /// Abandon the running bridge (interrupt): cancel ringing legs, hang up a connected one,
    /// report nothing back.
    StopBridge,
    /// POST to the customer's Call Control webhook; report `CallControlAnswered` unless it is
    /// a VALIDATION_ERRORS request.
    CallControl(CallControlRequest),
    /// POST to an ask-URL server; report `AskUrlAnswered`.
    AskUrl(AskUrlRequest),
    /// Fetch another plan of the tenant; report `PlanLoaded`.
    LoadPlan { name: String },
    /// End the call: a final response before answer, BYE with Reason after.
    Hangup { cause: HangupCause },
    /// Join the caller to the tenant's conference; report `ConferenceLeft` when the
    /// conference refused it (full) or ended.
    Conference { block: ConferenceBlock },
    /// Take the caller out of its conference (interrupt); report nothing back.
    LeaveConference,
    /// A COLLECT_DIGITS block is over: what it stored in `variable` (empty: no input).
    Collected { variable: String, digits: String },
    /// Blocks run on the call through the API are done; the call waits for more (a claimed
    /// call) or its plan goes on.
    BlocksDone,
    /// Send SIP REFER to the caller's side with `destination` (a URI, or a number at the
    /// peer's host); report `ReferAnswered { id }` with its final status, then the NOTIFYs as
    /// `ReferProgress`.
    Refer { id: u64, destination: String },
    /// The caller's side took the call elsewhere (REFER accepted, NOTIFY 2xx): end our part
    /// with BYE; the CDR says it was referred to `destination` (`status`: the NOTIFY's).
    Referred { destination: String, status: u16 },
    /// Stream the call's audio to the block's WebSocket server (its audio plays to the
    /// caller); report `StreamEnded { id }`.
    Stream { id: u64, block: StreamBlock },
    /// End the running stream (interrupt); its `StreamEnded` is then ignored.
    StopStream,
    /// Listen to the caller for one utterance (COLLECT_SPEECH); report `SpeechResult { id }`.
    Listen {
        id: u64,
        /// The block's `language`.
        language: String,
        /// How long to wait for speech to start.
        timeout: Duration,
    },
    /// Stop listening (interrupt); its `SpeechResult` is then ignored.
    StopListen,
}

/// What a recognizer understood.
#[derive(Debug, Clone, PartialEq)]
pub struct Recognized {
    pub text: String,
    /// 0–1, when the recognizer gives one.
    pub confidence: Option<f64>,
}

/// How a STREAM block's stream ended with the call still up, as stored in `stream_result`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    /// The server sent `stop`.
    Stopped,
    /// The server closed the WebSocket (or it broke).
    Closed,
    /// The block's `timeout` passed.
    Timeout,
}

impl StreamEnd {
    pub fn as_str(self) -> &'static str {
        match self {
            StreamEnd::Stopped => "stopped",
            StreamEnd::Closed => "closed",
            StreamEnd::Timeout => "timeout",
        }
    }
}

/// The digits a spoken answer names, when every word is a digit (English or German, or the
/// digit itself): `"four five six"` → `"456"`, `"null acht"` → `"08"`.
pub fn spoken_digits(text: &str) -> Option<String> {
    const WORDS: &[(&str, char)] = &[
        ("zero", '0'),
        ("oh", '0'),
        ("o", '0'),
        ("null", '0'),
        ("one", '1'),
        ("eins", '1'),
        ("ein", '1'),
        ("two", '2'),
        ("to", '2'),
        ("too", '2'),
        ("zwei", '2'),
        ("zwo", '2'),
        ("three", '3'),
        ("drei", '3'),
        ("four", '4'),
        ("for", '4'),
        ("vier", '4'),
        ("five", '5'),
        ("fünf", '5'),
        ("fuenf", '5'),
        ("six", '6'),
        ("sechs", '6'),
        ("seven", '7'),
        ("sieben", '7'),
        ("eight", '8'),
        ("acht", '8'),
        ("nine", '9'),
        ("neun", '9'),
    ];
    let mut out = String::new();
    // Any punctuation separates (engines write "One, two, three." or "4-5-6").
    for word in text.split(|c: char| !c.is_alphanumeric()) {
        if word.is_empty() {
            continue;
        }
        if word.chars().all(|c| c.is_ascii_digit()) {
            out.push_str(word);
            continue;
        }
        let lower = word.to_lowercase();
        out.push(WORDS.iter().find(|(w, _)| *w == lower)?.1);
    }
    (!out.is_empty()).then_some(out)
}

/// How long a REFER block waits for the transfer's outcome (REFER answered and a final
/// NOTIFY) before it gives up and the plan goes on with `refer_result=timeout`.
pub const REFER_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a REFER block did not end the call, as stored in `refer_result`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReferResult {
    /// The REFER itself was refused (a final non-2xx, `refer_status` holds it) or could not
    /// be sent.
    Rejected,
    /// Accepted, but the NOTIFY reported the transfer failed (`refer_status`: its status).
    Failed,
    /// No outcome within [`REFER_TIMEOUT`].
    Timeout,
}

impl ReferResult {
    pub fn as_str(self) -> &'static str {
        match self {
            ReferResult::Rejected => "rejected",
            ReferResult::Failed => "failed",
            ReferResult::Timeout => "timeout",
        }
    }
}

/// Why a CONFERENCE block ended with the caller still there, as stored in `conference_result`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConferenceResult {
    /// `maxParticipants` were present already: the caller never joined.
    Full,
    /// A member with `endConferenceOnExit` left: the conference ended for everyone.
    Ended,
}

impl ConferenceResult {
    pub fn as_str(self) -> &'static str {
        match self {
            ConferenceResult::Full => "full",
            ConferenceResult::Ended => "ended",
        }
    }
}

/// Why a BRIDGE block ended without connecting, as stored in `bridge_result`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BridgeResult {
    NoAnswer,
    Busy,
    Failed,
}

impl BridgeResult {
    pub fn as_str(self) -> &'static str {
        match self {
            BridgeResult::NoAnswer => "no_answer",
            BridgeResult::Busy => "busy",
            BridgeResult::Failed => "failed",
        }
    }
}

/// What happened, reported by the Call actor.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    PlayFinished {
        id: u64,
    },
    Digit(char),
    BridgeConnected,
    BridgeFailed(BridgeResult),
    /// The bridged callee hung up.
    BridgeEnded,
    /// The caller is out of its CONFERENCE block's conference, and still on the call.
    ConferenceLeft(ConferenceResult),
    PlanLoaded {
        name: String,
        blocks: Option<Vec<Block>>,
    },
    /// A Call Control answer: the JSON body of a 2xx, or why there is none (timeout,
    /// connection, status, not JSON).
    CallControlAnswered {
        id: u64,
        result: Result<serde_json::Value, String>,
    },
    AskUrlAnswered {
        id: u64,
        result: Result<AskUrlReply, String>,
    },
    /// Stop the running block (API `interrupt`).
    Interrupt,
    /// Send the call elsewhere (API `redirect`): whatever runs stops, and the rest of the plan
    /// (returned Call Control blocks included) is replaced by this BRIDGE.
    Redirect(BridgeBlock),
    /// The connected callee was transferred away and the caller is being connected to
    /// another party (API blind transfer): the BRIDGE block is dialling again, so a failure
    /// continues the plan after it (with `bridge_result`) as the block's own would have.
    BridgeRestarted,
    /// Run these blocks now (API `POST …/blocks`): what runs stops (as an interrupt; a
    /// pending webhook's answer is ignored), and when they are done the plan goes on after the
    /// block that was running (under CALL_CONTROL: its next returned block, or its next
    /// request) — or, on a call an application claimed, the call waits for more. Blocks
    /// posted while earlier ones run replace them.
    RunBlocks(Vec<Block>),
    /// The final response to REFER `id`: its status, or `None` when it could not be sent.
    ReferAnswered {
        id: u64,
        status: Option<u16>,
    },
    /// A NOTIFY about the REFER in progress.
    ReferProgress {
        status: u16,
        done: bool,
    },
    /// STREAM `id` is over: how it ended, or why the server could not be reached.
    StreamEnded {
        id: u64,
        result: Result<StreamEnd, String>,
    },
    /// Listen `id` heard the caller start speaking: a COLLECT_DIGITS try's timeout waits for
    /// what was said instead of running out while the recognizer works.
    SpeechStarted {
        id: u64,
    },
    /// Listen `id` is over: what was said (`None`: no speech before the timeout, or nothing
    /// intelligible), or why it could not be recognised.
    SpeechResult {
        id: u64,
        result: Result<Option<Recognized>, String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SpeechPhase {
    /// The block's prompt is playing.
    Prompt(u64),
    /// Waiting for the caller's words.
    Listening(u64),
    /// The missing-input prompt is playing before the next try.
    Missing(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CollectPhase {
    Prompt(u64),
    ErrorPrompt(u64),
    Waiting,
}

#[derive(Debug)]
enum Step {
    /// Between blocks.
    Idle,
    /// A call an application claimed, with nothing to run: it waits for the application's
    /// commands.
    Controlled,
    Playing(u64),
    Collect {
        block: CollectDigitsBlock,
        tries: u32,
        digits: String,
        phase: CollectPhase,
    },
    Bridging,
    Bridged,
    /// In a CONFERENCE block.
    Conference,
    LoadingPlan,
    /// Waiting for the Call Control webhook's answer.
    Webhook(u64),
    AskUrl {
        id: u64,
        block: AskUrlBlock,
    },
    /// A REFER block waiting for the transfer's outcome.
    Referring {
        id: u64,
        destination: String,
    },
    /// A STREAM block's stream is running.
    Streaming {
        id: u64,
        fallback: Option<String>,
    },
    /// A COLLECT_SPEECH block.
    CollectSpeech {
        block: CollectSpeechBlock,
        /// Tries that heard nothing so far.
        tries: u32,
        phase: SpeechPhase,
    },
    Done,
}

/// A CALL_CONTROL block instance in progress.
#[derive(Debug)]
struct Control {
    block: CallControlBlock,
    uuid: String,
    /// `loopCount` of the next request.
    next_loop: u32,
}

impl Control {
    /// This instance's next request: REQUESTING_BLOCKS, or VALIDATION_ERRORS with `errors`.
    fn request(
        &self,
        id: u64,
        validation_errors: Option<Vec<String>>,
        variables: BTreeMap<String, String>,
    ) -> CallControlRequest {
        CallControlRequest {
            id,
            url: self.block.url.clone(),
            access_key: self.block.access_key.clone(),
            call_control_uuid: self.uuid.clone(),
            loop_count: self.next_loop,
            validation_errors,
            variables,
            timeout: Duration::from_millis(self.block.timeout.into()),
        }
    }
}

/// A block list being run: the routing plan (`control == None`, always the bottom frame) or
/// the blocks a Call Control webhook returned.
#[derive(Debug)]
struct Frame {
    blocks: Vec<Block>,
    pc: usize,
    control: Option<Control>,
    /// Blocks run on the call through the API: when they are done, the frame below goes on
    /// (and [`Action::BlocksDone`] says so).
    injected: bool,
}

/// The interpreter state of one call.
pub struct CallFlow {
    frames: Vec<Frame>,
    step: Step,
    vars: CallVariables,
    answered: bool,
    forward_ani: ForwardAni,
    next_play_id: u64,
    timer: Option<Instant>,
    actions: VecDeque<Action>,
    plan_jumps: u32,
    hangup: Option<HangupCause>,
    max_loops: u32,
    ask_url_ring_seconds: u32,
    /// What the caller last keyed into a COLLECT_DIGITS block.
    last_digits: Option<String>,
    /// The listen id of a COLLECT_DIGITS with `allowSpeechInput` waiting for its answer: the
    /// caller may say it instead of keying it.
    speech_listen: Option<u64>,
    /// An application claimed the call: no plan runs, only the blocks it sends.
    controlled: bool,
    /// The routing plan a claim set aside, for [`CallFlow::release_control`].
    plan_set_aside: Option<Vec<Block>>,
}

impl CallFlow {
    pub fn new(blocks: Vec<Block>, vars: CallVariables) -> Self {
        CallFlow {
            frames: vec![Frame {
                blocks,
                pc: 0,
                control: None,
                injected: false,
            }],
            step: Step::Idle,
            vars,
            answered: false,
            forward_ani: ForwardAni::Caller,
            next_play_id: 1,
            timer: None,
            actions: VecDeque::new(),
            plan_jumps: 0,
            hangup: None,
            max_loops: DEFAULT_MAX_CALL_CONTROL_LOOPS,
            ask_url_ring_seconds: DEFAULT_ASK_URL_RING_SECONDS,
            last_digits: None,
            speech_listen: None,
            controlled: false,
            plan_set_aside: None,
        }
    }

    /// An application claimed the call (before the plan started): the plan never runs; the
    /// call waits for the blocks the application sends.
    pub fn take_control(&mut self) {
        self.controlled = true;
        self.plan_set_aside = self
            .frames
            .first_mut()
            .map(|f| std::mem::take(&mut f.blocks));
        self.frames = vec![Frame {
            blocks: Vec::new(),
            pc: 0,
            control: None,
            injected: false,
        }];
        self.timer = None;
        self.actions.clear();
        self.step = Step::Controlled;
    }

    /// The application that claimed the call is gone: the call is its plan's again. Blocks the
    /// application sent that are still running (a bridge to an agent) finish first; then, or
    /// at once when the call was waiting for the application, the routing plan runs from its
    /// first block.
    pub fn release_control(&mut self, now: Instant) {
        if !self.controlled {
            return;
        }
        self.controlled = false;
        if let Some(base) = self.frames.first_mut() {
            base.blocks = self.plan_set_aside.take().unwrap_or_default();
            base.pc = 0;
        }
        if matches!(self.step, Step::Controlled) {
            self.step = Step::Idle;
            self.advance(now);
        }
    }

    /// The call ends now with `cause` (a participant removed from its conference): what runs
    /// stops and [`Action::Hangup`] follows.
    pub fn end_call(&mut self, cause: HangupCause) {
        if self.stop_step() {
            self.end(cause);
        }
    }

    /// Whether an application claimed the call.
    pub fn is_controlled(&self) -> bool {
        self.controlled
    }

    /// Whether a claimed call waits for its application: nothing runs and no blocks are left.
    pub fn is_waiting(&self) -> bool {
        matches!(self.step, Step::Controlled)
    }

    /// Sets how many requests one CALL_CONTROL block instance may send (at least 1).
    pub fn with_max_call_control_loops(mut self, n: u32) -> Self {
        self.max_loops = n.max(1);
        self
    }

    /// Sets how long a destination chosen by ASK_URL rings (at least 1 s).
    pub fn with_ask_url_ring_seconds(mut self, s: u32) -> Self {
        self.ask_url_ring_seconds = s.max(1);
        self
    }

    /// Runs the first block.
    pub fn start(&mut self, now: Instant) {
        self.advance(now);
    }

    /// Sets a call variable from outside the plan (digits a bridged callee pressed); reserved
    /// names are refused silently.
    pub fn set_variable(&mut self, name: &str, value: String) {
        let _ = self.vars.set(name, value);
    }

    pub fn variables(&self) -> &CallVariables {
        &self.vars
    }

    /// The call was answered at `at` (the `answered_time` variable).
    pub fn set_answered_time(&mut self, at: chrono::DateTime<chrono::Utc>) {
        self.vars.set_answered(at);
    }

    pub fn is_done(&self) -> bool {
        matches!(self.step, Step::Done)
    }

    /// The cause the plan ended the call with, once it has.
    pub fn hangup_cause(&self) -> Option<HangupCause> {
        self.hangup
    }

    /// The call is ending outside the plan (caller hung up, shutdown): nothing more runs.
    pub fn stop(&mut self) {
        self.step = Step::Done;
        self.timer = None;
        self.actions.clear();
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The action [`CallFlow::poll_action`] returns next, left in place.
    pub fn peek_action(&self) -> Option<&Action> {
        self.actions.front()
    }

    /// When `handle_timeout` must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timer
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        match self.timer {
            Some(t) if t <= now => {}
            _ => return,
        }
        self.timer = None;
        match self.step {
            Step::Collect { .. } => self.finish_try(now),
            Step::Webhook(_) => self.call_control_failed("no answer within the timeout", now),
            Step::Referring { .. } => self.refer_failed(ReferResult::Timeout, None, now),
            Step::AskUrl { .. } => {
                if let Step::AskUrl { block, .. } = std::mem::replace(&mut self.step, Step::Idle) {
                    self.ask_url_failed(block, "no answer within the timeout", now);
                }
            }
            _ => {}
        }
    }

    pub fn handle(&mut self, input: Input, now: Instant) {
        match input {
            Input::PlayFinished { id } => self.on_play_finished(id, now),
            Input::Digit(d) => self.on_digit(d, now),
            Input::BridgeConnected => {
                if matches!(self.step, Step::Bridging) {
                    self.answered = true;
                    let _ = self.vars.set("bridge_result", "answered");
                    self.step = Step::Bridged;
                }
            }
            Input::BridgeFailed(result) => {
                if matches!(self.step, Step::Bridging) {
                    let _ = self.vars.set("bridge_result", result.as_str());
                    self.step = Step::Idle;
                    self.advance(now);
                }
            }
            Input::ConferenceLeft(result) => {
                if matches!(self.step, Step::Conference) {
                    let _ = self.vars.set("conference_result", result.as_str());
                    self.step = Step::Idle;
                    self.advance(now);
                }
            }
            Input::BridgeEnded => {
                if matches!(self.step, Step::Bridged) {
                    // A connected bridge is the call's purpose: when the callee leaves, the
                    // call is over (as with TENIOS and Asterisk's Dial without continue).
                    self.end(HangupCause::NormalClearing);
                }
            }
            Input::PlanLoaded { name, blocks } => {
                if !matches!(self.step, Step::LoadingPlan) {
                    return;
                }
                match blocks {
                    Some(blocks) => {
                        // A new plan replaces everything, webhook-returned blocks included.
                        self.frames = vec![Frame {
                            blocks,
                            pc: 0,
                            control: None,
                            injected: false,
                        }];
                    }
                    None => {
                        tracing::warn!(plan = %name, "ROUTINGPLAN names an unknown plan; continuing");
                    }
                }
                self.step = Step::Idle;
                self.advance(now);
            }
            Input::CallControlAnswered { id, result } => {
                if matches!(self.step, Step::Webhook(w) if w == id) {
                    self.timer = None;
                    self.step = Step::Idle;
                    match result {
                        Ok(body) => self.on_call_control_answer(body, now),
                        Err(why) => self.call_control_failed(&why, now),
                    }
                }
            }
            Input::AskUrlAnswered { id, result } => {
                let Step::AskUrl { id: current, .. } = &self.step else {
                    return;
                };
                if *current != id {
                    return;
                }
                self.timer = None;
                let Step::AskUrl { block, .. } = std::mem::replace(&mut self.step, Step::Idle)
                else {
                    return;
                };
                match result {
                    Ok(reply) => {
                        let urls = LegUrls {
                            answer_url: reply.answer_url.or(block.answer_url),
                            hangup_url: reply.hangup_url.or(block.hangup_url),
                        };
                        self.route_ask_url(reply.dtype, reply.dnumber, urls, now);
                    }
                    Err(why) => self.ask_url_failed(block, &why, now),
                }
            }
            Input::Interrupt => self.interrupt(now),
            Input::Redirect(block) => self.redirect(block, now),
            Input::RunBlocks(blocks) => self.run_blocks(blocks, now),
            Input::BridgeRestarted => {
                if matches!(self.step, Step::Bridged) {
                    self.step = Step::Bridging;
                }
            }
            Input::ReferAnswered { id, status } => {
                if !matches!(&self.step, Step::Referring { id: current, .. } if *current == id) {
                    return;
                }
                match status {
                    Some(200..=299) => {} // accepted: the NOTIFYs tell the rest
                    other => self.refer_failed(ReferResult::Rejected, other, now),
                }
            }
            Input::SpeechStarted { id } => {
                if self.speech_listen == Some(id) && matches!(self.step, Step::Collect { .. }) {
                    self.timer = None;
                }
            }
            Input::SpeechResult { id, result } if self.speech_listen == Some(id) => {
                self.speech_listen = None;
                self.on_spoken_digits(result, now);
            }
            Input::SpeechResult { id, result } => self.on_speech(id, result, now),
            Input::StreamEnded { id, result } => {
                let Step::Streaming {
                    id: current,
                    fallback,
                } = &self.step
                else {
                    return;
                };
                if *current != id {
                    return;
                }
                let fallback = fallback.clone();
                self.step = Step::Idle;
                match result {
                    Ok(end) => {
                        let _ = self.vars.set("stream_result", end.as_str());
                        self.advance(now);
                    }
                    Err(why) => {
                        tracing::warn!(error = %why, "STREAM server unreachable");
                        let _ = self.vars.set("stream_result", "failed");
                        match fallback {
                            Some(plan) => self.load_plan(plan),
                            None => self.advance(now),
                        }
                    }
                }
            }
            Input::ReferProgress { status, done } => {
                let Step::Referring { destination, .. } = &self.step else {
                    return;
                };
                if (200..300).contains(&status) {
                    let destination = destination.clone();
                    let _ = self.vars.set("refer_status", status.to_string());
                    self.hangup = Some(HangupCause::NormalClearing);
                    self.timer = None;
                    self.step = Step::Done;
                    self.actions.push_back(Action::Referred {
                        destination,
                        status,
                    });
                } else if done {
                    let failed = (status >= 300).then_some(status);
                    self.refer_failed(ReferResult::Failed, failed, now);
                }
            }
        }
    }

    /// One try of a COLLECT_SPEECH block: its prompt (if it has one), then listening.
    fn speech_try(&mut self, block: CollectSpeechBlock, tries: u32) {
        let prompt = block.announcement_name.clone();
        let standard = block.standard_announcement;
        self.step = Step::CollectSpeech {
            block,
            tries,
            phase: SpeechPhase::Listening(0),
        };
        match prompt {
            Some(name) => {
                let id = self.play(vec![Prompt::Announcement { name, standard }]);
                if let Step::CollectSpeech { phase, .. } = &mut self.step {
                    *phase = SpeechPhase::Prompt(id);
                }
            }
            None => self.start_listening(),
        }
    }

    fn start_listening(&mut self) {
        let id = self.next_id();
        let Step::CollectSpeech { block, phase, .. } = &mut self.step else {
            return;
        };
        *phase = SpeechPhase::Listening(id);
        let action = Action::Listen {
            id,
            language: block.language.clone(),
            timeout: Duration::from_secs(block.timeout.into()),
        };
        self.actions.push_back(action);
    }

    /// [`Input::SpeechResult`]: the text is stored and the plan goes on; nothing heard plays
    /// the missing-input prompt and tries again (up to `maxTries`, then the variable is empty);
    /// a recognizer that failed fails the block over as a missing prompt does.
    fn on_speech(&mut self, id: u64, result: Result<Option<Recognized>, String>, now: Instant) {
        let Step::CollectSpeech {
            phase: SpeechPhase::Listening(current),
            ..
        } = &self.step
        else {
            return;
        };
        if *current != id {
            return;
        }
        let Step::CollectSpeech { block, tries, .. } =
            std::mem::replace(&mut self.step, Step::Idle)
        else {
            return;
        };
        let name = block.variable_name.clone();
        match result {
            Ok(Some(r)) => {
                let _ = self.vars.set_collected(&name, &r.text);
                if let Some(c) = r.confidence {
                    let _ = self
                        .vars
                        .set(format!("{name}_confidence"), format!("{c:.2}"));
                }
                self.advance(now);
            }
            Ok(None) if tries + 1 < block.max_tries => {
                let tries = tries + 1;
                match block.missing_input_announcement_name.clone() {
                    Some(missing) => {
                        let standard = block.standard_missing_input_announcement;
                        let id = self.play(vec![Prompt::Announcement {
                            name: missing,
                            standard,
                        }]);
                        self.step = Step::CollectSpeech {
                            block,
                            tries,
                            phase: SpeechPhase::Missing(id),
                        };
                    }
                    None => self.speech_try(block, tries),
                }
            }
            Ok(None) => {
                let _ = self.vars.set_collected(&name, "");
                self.advance(now);
            }
            Err(why) => {
                tracing::warn!(error = %why, "COLLECT_SPEECH could not recognise; skipped");
                let _ = self.vars.set_collected(&name, "");
                self.advance(now);
            }
        }
    }

    /// A REFER block ends without a transfer: `refer_result` (and `refer_status` when a SIP
    /// status says why) are set and the plan goes on.
    fn refer_failed(&mut self, result: ReferResult, status: Option<u16>, now: Instant) {
        tracing::info!(
            result = result.as_str(),
            ?status,
            "REFER did not transfer the call"
        );
        let _ = self.vars.set("refer_result", result.as_str());
        let _ = self.vars.set(
            "refer_status",
            status.map(|s| s.to_string()).unwrap_or_default(),
        );
        self.timer = None;
        self.step = Step::Idle;
        self.advance(now);
    }

    /// Stops whatever runs — a prompt, a collection, a bridge, a conference seat, or a wait
    /// for a webhook or a plan (whose late answer is then ignored) — and leaves the flow
    /// idle. False when the flow is done.
    fn stop_step(&mut self) -> bool {
        match &self.step {
            Step::Done => return false,
            Step::Playing(_) => self.actions.push_back(Action::StopPlay),
            Step::Collect { .. } => {
                self.actions.push_back(Action::StopPlay);
                if self.speech_listen.take().is_some() {
                    self.actions.push_back(Action::StopListen);
                }
            }
            Step::Bridging | Step::Bridged => self.actions.push_back(Action::StopBridge),
            Step::Conference => self.actions.push_back(Action::LeaveConference),
            Step::Idle
            | Step::Controlled
            | Step::Webhook(_)
            | Step::AskUrl { .. }
            | Step::LoadingPlan
            | Step::Referring { .. } => {}
            Step::Streaming { .. } => self.actions.push_back(Action::StopStream),
            Step::CollectSpeech { phase, .. } => self.actions.push_back(match phase {
                SpeechPhase::Listening(_) => Action::StopListen,
                SpeechPhase::Prompt(_) | SpeechPhase::Missing(_) => Action::StopPlay,
            }),
        }
        self.timer = None;
        self.step = Step::Idle;
        true
    }

    /// [`Input::RunBlocks`].
    fn run_blocks(&mut self, blocks: Vec<Block>, now: Instant) {
        if !self.stop_step() {
            return;
        }
        // Blocks posted earlier and still running are replaced.
        if self.frames.last().is_some_and(|f| f.injected) {
            self.frames.pop();
        }
        self.frames.push(Frame {
            blocks,
            pc: 0,
            control: None,
            injected: true,
        });
        self.advance(now);
    }

    /// Stops whatever runs (as an interrupt does, but also a wait for a webhook or a plan,
    /// whose late answer is then ignored) and continues with `block` alone.
    fn redirect(&mut self, block: BridgeBlock, now: Instant) {
        if !self.stop_step() {
            return;
        }
        self.frames = vec![Frame {
            blocks: vec![Block::Bridge(block)],
            pc: 0,
            control: None,
            injected: false,
        }];
        self.advance(now);
    }

    /// Whether the flow still waits for the end of play `id`: a prompt that finished rendering
    /// after the flow moved on (a digit, an interrupt) is not played at all.
    pub fn is_playing(&self, id: u64) -> bool {
        match &self.step {
            Step::Playing(p) => *p == id,
            Step::Collect {
                phase: CollectPhase::Prompt(p) | CollectPhase::ErrorPrompt(p),
                ..
            } => *p == id,
            Step::CollectSpeech {
                phase: SpeechPhase::Prompt(p) | SpeechPhase::Missing(p),
                ..
            } => *p == id,
            _ => false,
        }
    }

    fn next_id(&mut self) -> u64 {
        let id = self.next_play_id;
        self.next_play_id += 1;
        id
    }

    /// Stops the running block. Under CALL_CONTROL the rest of the returned blocks is
    /// dropped and the next request goes out at once; otherwise the plan goes on with the
    /// next block. Waiting for a webhook or a plan is not a block to stop.
    fn interrupt(&mut self, now: Instant) {
        match &self.step {
            Step::Done
            | Step::Idle
            | Step::Controlled
            | Step::Webhook(_)
            | Step::AskUrl { .. }
            | Step::LoadingPlan => return,
            Step::Playing(_) => self.actions.push_back(Action::StopPlay),
            Step::Collect { .. } => {
                self.actions.push_back(Action::StopPlay);
                if self.speech_listen.take().is_some() {
                    self.actions.push_back(Action::StopListen);
                }
            }
            Step::Bridging | Step::Bridged => self.actions.push_back(Action::StopBridge),
            Step::Conference => self.actions.push_back(Action::LeaveConference),
            // Stop waiting for the transfer's outcome (the peer may still carry it out).
            Step::Referring { .. } => {
                let _ = self.vars.set("refer_result", "interrupted");
            }
            Step::Streaming { .. } => {
                let _ = self.vars.set("stream_result", "interrupted");
                self.actions.push_back(Action::StopStream);
            }
            Step::CollectSpeech { phase, .. } => self.actions.push_back(match phase {
                SpeechPhase::Listening(_) => Action::StopListen,
                SpeechPhase::Prompt(_) | SpeechPhase::Missing(_) => Action::StopPlay,
            }),
        }
        self.timer = None;
        self.step = Step::Idle;
        if let Some(k) = self.frames.iter().rposition(|f| f.control.is_some()) {
            self.frames.truncate(k + 1);
            let f = &mut self.frames[k];
            f.pc = f.blocks.len();
        }
        self.advance(now);
    }

    /// Sends the next request of the innermost CALL_CONTROL (its returned blocks are done).
    fn request_blocks(&mut self, now: Instant) {
        let id = self.next_id();
        let max_loops = self.max_loops;
        let variables = self.vars.as_map().clone();
        let Some(control) = self.frames.last_mut().and_then(|f| f.control.as_mut()) else {
            return;
        };
        if control.next_loop >= max_loops {
            let why = format!("loop limit of {max_loops} requests reached");
            self.call_control_failed(&why, now);
            return;
        }
        let req = control.request(id, None, variables);
        control.next_loop += 1;
        self.timer = Some(now + req.timeout);
        self.step = Step::Webhook(id);
        self.actions.push_back(Action::CallControl(req));
    }

    fn on_call_control_answer(&mut self, body: serde_json::Value, now: Instant) {
        let blocks = body
            .get("blocks")
            .cloned()
            .unwrap_or(serde_json::Value::Null);
        match parse_blocks(&blocks) {
            Ok(blocks) if blocks.is_empty() => {
                // `[]`: control goes back to the plan, after the CALL_CONTROL block.
                self.frames.pop();
                self.advance(now);
            }
            Ok(blocks) => {
                if let Some(f) = self.frames.last_mut() {
                    f.blocks = blocks;
                    f.pc = 0;
                }
                self.advance(now);
            }
            Err(errors) => {
                // Nothing of the list runs; the customer hears once what was wrong, and the
                // plan goes on after the block (that answer is not waited for).
                let variables = self.vars.as_map().clone();
                let id = self.next_id();
                if let Some(control) = self.frames.pop().and_then(|f| f.control) {
                    tracing::info!(
                        uuid = %control.uuid,
                        errors = errors.len(),
                        "Call Control answer has invalid blocks"
                    );
                    let messages = errors.iter().map(ToString::to_string).collect();
                    self.actions.push_back(Action::CallControl(control.request(
                        id,
                        Some(messages),
                        variables,
                    )));
                }
                self.advance(now);
            }
        }
    }

    /// The webhook gave no usable answer: `fallbackPlan`, else on after the block.
    fn call_control_failed(&mut self, why: &str, now: Instant) {
        self.timer = None;
        self.step = Step::Idle;
        let Some(control) = self.frames.pop().and_then(|f| f.control) else {
            self.advance(now);
            return;
        };
        tracing::info!(
            uuid = %control.uuid,
            url = %control.block.url,
            %why,
            fallback = control.block.fallback_plan.as_deref().unwrap_or("-"),
            "Call Control webhook failed"
        );
        match control.block.fallback_plan {
            Some(plan) => self.load_plan(plan),
            None => self.advance(now),
        }
    }

    /// No usable ask-URL answer: `timeoutDestination`, else on after the block.
    fn ask_url_failed(&mut self, block: AskUrlBlock, why: &str, now: Instant) {
        self.timer = None;
        self.step = Step::Idle;
        tracing::info!(url = %block.url, %why, "ask-URL request failed");
        let urls = LegUrls {
            answer_url: block.answer_url,
            hangup_url: block.hangup_url,
        };
        match block.timeout_destination {
            Some(TimeoutDestination::Plan(plan)) => self.load_plan(plan),
            Some(TimeoutDestination::Target { dtype, dnumber }) => {
                self.route_ask_url(dtype, dnumber, urls, now)
            }
            None => self.advance(now),
        }
    }

    fn route_ask_url(
        &mut self,
        dtype: AskUrlDestinationType,
        dnumber: Option<String>,
        urls: LegUrls,
        now: Instant,
    ) {
        let destination_type = match dtype {
            AskUrlDestinationType::Hangup => {
                self.end(HangupCause::NormalClearing);
                return;
            }
            AskUrlDestinationType::Plan => {
                match dnumber {
                    Some(plan) => self.load_plan(plan),
                    None => self.advance(now),
                }
                return;
            }
            AskUrlDestinationType::Phone => DestinationType::SipUser,
            AskUrlDestinationType::External => DestinationType::ExternalNumber,
        };
        let Some(destination) = dnumber else {
            self.advance(now);
            return;
        };
        let block = BridgeBlock {
            bridge_mode: BridgeMode::Sequential,
            block_timeout: None,
            destinations: vec![BridgeDestination {
                destination_type,
                destination,
                timeout: Some(self.ask_url_ring_seconds),
            }],
        };
        let leg_urls = (urls.answer_url.is_some() || urls.hangup_url.is_some()).then_some(urls);
        self.actions.push_back(Action::Bridge {
            block,
            forward_ani: self.forward_ani.clone(),
            leg_urls,
        });
        self.step = Step::Bridging;
    }

    /// Continues in another plan of the tenant (ROUTINGPLAN, fallbacks).
    fn load_plan(&mut self, name: String) {
        self.plan_jumps += 1;
        if self.plan_jumps > MAX_PLAN_JUMPS {
            tracing::warn!("routing plans jump in a loop; ending the call");
            self.end(HangupCause::ExchangeRoutingError);
            return;
        }
        self.actions.push_back(Action::LoadPlan { name });
        self.step = Step::LoadingPlan;
    }

    fn ensure_answered(&mut self) {
        if !self.answered {
            self.answered = true;
            self.actions.push_back(Action::Answer);
        }
    }

    fn play(&mut self, prompts: Vec<Prompt>) -> u64 {
        let id = self.next_id();
        self.actions.push_back(Action::Play { id, prompts });
        id
    }

    fn end(&mut self, cause: HangupCause) {
        self.hangup = Some(cause);
        self.timer = None;
        self.step = Step::Done;
        self.actions.push_back(Action::Hangup { cause });
    }

    /// Runs blocks until one has to wait for something.
    fn advance(&mut self, now: Instant) {
        while matches!(self.step, Step::Idle) {
            let Some(frame) = self.frames.last_mut() else {
                self.end(HangupCause::NormalUnspecified);
                return;
            };
            let Some(block) = frame.blocks.get(frame.pc).cloned() else {
                if frame.control.is_some() {
                    // The returned blocks are done and the call is still up: ask again.
                    self.request_blocks(now);
                } else if frame.injected {
                    // Blocks sent through the API are done: the frame below goes on.
                    self.frames.pop();
                    self.actions.push_back(Action::BlocksDone);
                } else if self.controlled {
                    // A claimed call waits for its application.
                    self.step = Step::Controlled;
                } else {
                    // The plan ran out with the call still up.
                    self.end(HangupCause::NormalUnspecified);
                }
                continue;
            };
            frame.pc += 1;
            match block {
                Block::Announcement(b) => {
                    self.ensure_answered();
                    let id = self.play(vec![Prompt::Announcement {
                        name: b.announcement_name,
                        standard: b.standard_announcement,
                    }]);
                    self.step = Step::Playing(id);
                }
                Block::Say(b) => {
                    self.ensure_answered();
                    let text = self.vars.expand_for(&b.text, b.use_ssml);
                    let id = self.play(vec![Prompt::Tts {
                        text,
                        voice: b.voice_name,
                        ssml: b.use_ssml,
                    }]);
                    self.step = Step::Playing(id);
                }
                Block::SayDigits(b) => {
                    let digits = self.vars.get(&b.variable_name).unwrap_or("").to_string();
                    if !digits.is_empty() {
                        self.ensure_answered();
                        let id = self.play(vec![Prompt::Digits(digits)]);
                        self.step = Step::Playing(id);
                    }
                }
                Block::CollectDigits(b) => {
                    self.ensure_answered();
                    let id = self.play(vec![Prompt::Announcement {
                        name: b.announcement_name.clone(),
                        standard: b.standard_announcement,
                    }]);
                    self.step = Step::Collect {
                        block: b,
                        tries: 0,
                        digits: String::new(),
                        phase: CollectPhase::Prompt(id),
                    };
                }
                Block::Bridge(b) => {
                    self.actions.push_back(Action::Bridge {
                        block: b,
                        forward_ani: self.forward_ani.clone(),
                        leg_urls: None,
                    });
                    self.step = Step::Bridging;
                }
                Block::Hangup(b) => self.end(b.hangup_cause),
                Block::Conference(b) => {
                    self.ensure_answered();
                    self.actions.push_back(Action::Conference { block: b });
                    self.step = Step::Conference;
                }
                Block::RoutingPlan(b) => self.load_plan(b.routingplan_name),
                Block::CallSettings(b) => self.forward_ani = b.forward_ani,
                Block::CallControl(b) => {
                    if self.frames.len() > MAX_CALL_CONTROL_DEPTH {
                        tracing::warn!("CALL_CONTROL nested too deep; skipped");
                        continue;
                    }
                    for (name, value) in &b.variables {
                        let _ = self.vars.set(name, value);
                    }
                    self.frames.push(Frame {
                        blocks: Vec::new(),
                        pc: 0,
                        control: Some(Control {
                            block: b,
                            uuid: uuid::Uuid::new_v4().to_string(),
                            next_loop: 0,
                        }),
                        injected: false,
                    });
                }
                Block::AskUrl(b) => {
                    let id = self.next_id();
                    let timeout = Duration::from_secs(b.timeout.into());
                    self.actions.push_back(Action::AskUrl(AskUrlRequest {
                        id,
                        url: b.url.clone(),
                        timeout,
                        digits: self.last_digits.clone(),
                    }));
                    self.timer = Some(now + timeout);
                    self.step = Step::AskUrl { id, block: b };
                }
                Block::CollectSpeech(b) => {
                    self.ensure_answered();
                    self.speech_try(b, 0);
                }
                Block::Stream(b) => {
                    self.ensure_answered();
                    let id = self.next_id();
                    let fallback = b.fallback_plan.clone();
                    self.actions.push_back(Action::Stream { id, block: b });
                    self.step = Step::Streaming { id, fallback };
                }
                Block::Refer(b) => {
                    // REFER needs a confirmed dialog: answer first (TENIOS's REFER block is
                    // for calls from SIP trunks, which it answers too).
                    self.ensure_answered();
                    let id = self.next_id();
                    self.actions.push_back(Action::Refer {
                        id,
                        destination: b.destination.clone(),
                    });
                    self.timer = Some(now + REFER_TIMEOUT);
                    self.step = Step::Referring {
                        id,
                        destination: b.destination,
                    };
                }
            }
        }
    }

    fn on_play_finished(&mut self, id: u64, now: Instant) {
        if let Step::CollectSpeech { phase, .. } = &self.step {
            match *phase {
                SpeechPhase::Prompt(p) if p == id => self.start_listening(),
                SpeechPhase::Missing(p) if p == id => {
                    if let Step::CollectSpeech { block, tries, .. } =
                        std::mem::replace(&mut self.step, Step::Idle)
                    {
                        self.speech_try(block, tries);
                    }
                }
                _ => {}
            }
            let _ = now;
            return;
        }
        match &mut self.step {
            Step::Playing(current) if *current == id => {
                self.step = Step::Idle;
                self.advance(now);
            }
            Step::Collect {
                block,
                phase,
                digits,
                ..
            } => match *phase {
                CollectPhase::Prompt(p) if p == id => {
                    *phase = CollectPhase::Waiting;
                    let _ = digits;
                    let timeout = Duration::from_secs(block.timeout.into());
                    self.timer = Some(now + timeout);
                    if block.allow_speech_input {
                        let language = block.language.clone().unwrap_or_default();
                        let id = self.next_id();
                        self.speech_listen = Some(id);
                        self.actions.push_back(Action::Listen {
                            id,
                            language,
                            timeout,
                        });
                    }
                }
                CollectPhase::ErrorPrompt(p) if p == id => {
                    let name = block.announcement_name.clone();
                    let standard = block.standard_announcement;
                    let new_id = self.play(vec![Prompt::Announcement { name, standard }]);
                    if let Step::Collect { phase, .. } = &mut self.step {
                        *phase = CollectPhase::Prompt(new_id);
                    }
                }
                _ => {}
            },
            _ => {}
        }
    }

    fn on_digit(&mut self, d: char, now: Instant) {
        if matches!(self.step, Step::Collect { .. }) && self.speech_listen.take().is_some() {
            // A key: the caller answers by keys, not by voice.
            self.actions.push_back(Action::StopListen);
        }
        let Step::Collect {
            block,
            digits,
            phase,
            ..
        } = &mut self.step
        else {
            return;
        };
        if !matches!(phase, CollectPhase::Waiting) {
            // Barge-in: a key stops the prompt.
            *phase = CollectPhase::Waiting;
            self.actions.push_back(Action::StopPlay);
        }
        if d == block.terminator.as_char() {
            self.finish_try(now);
            return;
        }
        digits.push(d);
        if digits.len() >= block.max_digits as usize {
            self.finish_try(now);
        } else {
            self.timer = Some(now + Duration::from_secs(block.timeout.into()));
        }
    }

    /// What a COLLECT_DIGITS with `allowSpeechInput` heard: spoken digits ("four five six",
    /// "vier fünf sechs") become the digits they name, other words are kept as said; either
    /// ends the try as keyed digits would. Nothing heard, or a failed recognizer: the keys
    /// and the try's timeout decide as without speech (once the caller had spoken, the
    /// timeout has been waiting for this: the try ends now, as at its timeout).
    fn on_spoken_digits(&mut self, result: Result<Option<Recognized>, String>, now: Instant) {
        let spoke = self.timer.is_none();
        let text = match result {
            Ok(Some(r)) => r.text,
            Ok(None) | Err(_) if spoke => return self.finish_try(now),
            Ok(None) => return,
            Err(why) => {
                // Said once at start when no recognizer is configured; keys still work.
                tracing::debug!(error = %why, "COLLECT_DIGITS speech input could not be recognised");
                return;
            }
        };
        let Step::Collect { digits, .. } = &mut self.step else {
            return;
        };
        *digits = spoken_digits(&text).unwrap_or(text);
        self.finish_try(now);
    }

    /// Ends one try of COLLECT_DIGITS: success, retry with the error prompt, or give up.
    fn finish_try(&mut self, now: Instant) {
        self.timer = None;
        if self.speech_listen.take().is_some() {
            self.actions.push_back(Action::StopListen);
        }
        let Step::Collect {
            block,
            tries,
            digits,
            phase,
        } = &mut self.step
        else {
            return;
        };
        if digits.len() >= block.min_digits as usize {
            let (name, value) = (block.variable_name.clone(), std::mem::take(digits));
            let _ = self.vars.set_collected(&name, &value);
            self.actions.push_back(Action::Collected {
                variable: name,
                digits: value.clone(),
            });
            self.last_digits = Some(value);
            self.step = Step::Idle;
            self.advance(now);
            return;
        }
        *tries += 1;
        digits.clear();
        if *tries >= block.max_tries {
            // Out of tries: the variable is set empty and the plan goes on, so the plan (or
            // the customer's webhook) decides what an empty answer means.
            let name = block.variable_name.clone();
            let _ = self.vars.set_collected(&name, "");
            self.actions.push_back(Action::Collected {
                variable: name,
                digits: String::new(),
            });
            self.step = Step::Idle;
            self.advance(now);
            return;
        }
        let prompt = match &block.error_announcement_name {
            Some(err) => (err.clone(), block.standard_error_announcement, true),
            None => (
                block.announcement_name.clone(),
                block.standard_announcement,
                false,
            ),
        };
        let _ = phase;
        let id = self.play(vec![Prompt::Announcement {
            name: prompt.0,
            standard: prompt.1,
        }]);
        if let Step::Collect { phase, .. } = &mut self.step {
            *phase = if prompt.2 {
                CollectPhase::ErrorPrompt(id)
            } else {
                CollectPhase::Prompt(id)
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blocks::parse_blocks;
    use serde_json::json;

    fn flow(blocks: serde_json::Value) -> CallFlow {
        let blocks = parse_blocks(&blocks).expect("valid blocks");
        let vars = CallVariables::new(
            uuid::Uuid::nil(),
            "corr-1",
            "+4922100",
            "100",
            chrono::DateTime::from_timestamp(0, 0).expect("epoch"),
        );
        CallFlow::new(blocks, vars)
    }

    fn drain(f: &mut CallFlow) -> Vec<Action> {
        std::iter::from_fn(|| f.poll_action()).collect()
    }

    fn play_id(actions: &[Action]) -> u64 {
        actions
            .iter()
            .find_map(|a| match a {
                Action::Play { id, .. } => Some(*id),
                _ => None,
            })
            .expect("a Play action")
    }

    fn collect(min: u32, max: u32, tries: u32) -> serde_json::Value {
        json!({"blockType":"COLLECT_DIGITS","announcementName":"enter","errorAnnouncementName":"invalid",
               "variableName":"pin","minDigits":min,"maxDigits":max,"terminator":"#","maxTries":tries,"timeout":5})
    }

    #[test]
    fn announcement_answers_then_plan_end_hangs_up_normal_unspecified() {
        let t = Instant::now();
        let mut f = flow(json!([{"blockType":"ANNOUNCEMENT","announcementName":"welcome"}]));
        f.start(t);
        let a = drain(&mut f);
        assert_eq!(a[0], Action::Answer);
        let id = play_id(&a);
        assert!(!f.is_done());
        f.handle(Input::PlayFinished { id: id + 7 }, t); // a stale report changes nothing
        assert!(drain(&mut f).is_empty());
        f.handle(Input::PlayFinished { id }, t);
        assert_eq!(
            drain(&mut f),
            vec![Action::Hangup {
                cause: HangupCause::NormalUnspecified
            }]
        );
        assert!(f.is_done());
    }

    #[test]
    fn hangup_block_before_answer_does_not_answer() {
        let mut f = flow(json!([{"blockType":"HANGUP","hangupCause":"USER_BUSY"}]));
        f.start(Instant::now());
        assert_eq!(
            drain(&mut f),
            vec![Action::Hangup {
                cause: HangupCause::UserBusy
            }]
        );
    }

    #[test]
    fn collect_digits_success_with_terminator_and_barge_in() {
        let t = Instant::now();
        let mut f =
            flow(json!([collect(1, 5, 3), {"blockType":"HANGUP","hangupCause":"NORMAL_CLEARING"}]));
        f.start(t);
        let a = drain(&mut f);
        assert_eq!(a[0], Action::Answer);
        play_id(&a);
        f.handle(Input::Digit('4'), t);
        assert_eq!(drain(&mut f), vec![Action::StopPlay]);
        f.handle(Input::Digit('2'), t);
        assert!(drain(&mut f).is_empty());
        f.handle(Input::Digit('#'), t);
        assert_eq!(f.variables().get("pin"), Some("42"));
        assert_eq!(
            drain(&mut f),
            vec![
                Action::Collected {
                    variable: "pin".into(),
                    digits: "42".into()
                },
                Action::Hangup {
                    cause: HangupCause::NormalClearing
                }
            ]
        );
    }

    #[test]
    fn collect_digits_completes_at_max_digits() {
        let t = Instant::now();
        let mut f = flow(json!([collect(3, 3, 3)]));
        f.start(t);
        let id = play_id(&drain(&mut f));
        f.handle(Input::PlayFinished { id }, t);
        for d in ['1', '2', '3'] {
            f.handle(Input::Digit(d), t);
        }
        assert_eq!(f.variables().get("pin"), Some("123"));
    }

    #[test]
    fn too_few_digits_plays_error_prompt_and_retries_then_gives_up() {
        let t = Instant::now();
        let mut f = flow(
            json!([collect(3, 3, 2), {"blockType":"ANNOUNCEMENT","announcementName":"after"}]),
        );
        f.start(t);
        let id = play_id(&drain(&mut f));
        f.handle(Input::PlayFinished { id }, t);
        // Timer armed after the prompt; nothing happens before it fires.
        let deadline = f.poll_timeout().expect("timer armed");
        assert_eq!(deadline, t + Duration::from_secs(5));
        f.handle_timeout(t + Duration::from_secs(4));
        assert!(drain(&mut f).is_empty());
        // Two digits then timeout: too few → error prompt.
        f.handle(Input::Digit('1'), t);
        f.handle(Input::Digit('2'), t);
        f.handle_timeout(t + Duration::from_secs(5));
        let a = drain(&mut f);
        match &a[..] {
            [Action::Play { prompts, .. }] => assert_eq!(
                prompts[0],
                Prompt::Announcement {
                    name: "invalid".into(),
                    standard: false
                }
            ),
            other => panic!("expected the error prompt, got {other:?}"),
        }
        // After the error prompt the main prompt plays again.
        f.handle(Input::PlayFinished { id: play_id(&a) }, t);
        let a = drain(&mut f);
        match &a[..] {
            [Action::Play { prompts, id }] => {
                assert_eq!(
                    prompts[0],
                    Prompt::Announcement {
                        name: "enter".into(),
                        standard: false
                    }
                );
                f.handle(Input::PlayFinished { id: *id }, t);
            }
            other => panic!("expected the prompt again, got {other:?}"),
        }
        // Second (last) try times out with nothing: the variable is empty and the plan goes on.
        f.handle_timeout(t + Duration::from_secs(60));
        assert_eq!(f.variables().get("pin"), Some(""));
        let a = drain(&mut f);
        assert!(
            matches!(&a[..], [Action::Collected { variable, digits }, Action::Play { prompts, .. }]
                if variable == "pin" && digits.is_empty()
                    && prompts[0] == Prompt::Announcement { name: "after".into(), standard: false }),
            "{a:?}"
        );
    }

    #[test]
    fn bridge_failure_sets_bridge_result_and_continues() {
        let t = Instant::now();
        let mut f = flow(json!([
            {"blockType":"BRIDGE","bridgeMode":"SEQUENTIAL","destinations":[{"destinationType":"SIP_USER","destination":"alice","timeout":5}]},
            {"blockType":"HANGUP","hangupCause":"NO_ANSWER"}
        ]));
        f.start(t);
        let a = drain(&mut f);
        assert!(matches!(
            &a[..],
            [Action::Bridge {
                forward_ani: ForwardAni::Caller,
                ..
            }]
        ));
        f.handle(Input::BridgeFailed(BridgeResult::Busy), t);
        assert_eq!(f.variables().get("bridge_result"), Some("busy"));
        assert_eq!(
            drain(&mut f),
            vec![Action::Hangup {
                cause: HangupCause::NoAnswer
            }]
        );
    }

    #[test]
    fn conference_answers_joins_and_goes_on_when_full_ended_or_interrupted() {
        let t = Instant::now();
        let plan = json!([
            {"blockType":"CONFERENCE","conferenceName":"sales","maxParticipants":3},
            {"blockType":"HANGUP","hangupCause":"NORMAL_CLEARING"}
        ]);
        for (input, result) in [
            (Some(ConferenceResult::Full), Some("full")),
            (Some(ConferenceResult::Ended), Some("ended")),
            (None, None),
        ] {
            let mut f = flow(plan.clone());
            f.start(t);
            let a = drain(&mut f);
            assert!(
                matches!(&a[..], [Action::Answer, Action::Conference { block }]
                    if block.conference_name == "sales" && block.max_participants == 3),
                "{a:?}"
            );
            // Digits and stray play ends do not end the block.
            f.handle(Input::Digit('5'), t);
            f.handle(Input::PlayFinished { id: 99 }, t);
            assert_eq!(drain(&mut f), vec![]);
            match input {
                Some(r) => f.handle(Input::ConferenceLeft(r), t),
                None => f.handle(Input::Interrupt, t),
            }
            assert_eq!(f.variables().get("conference_result"), result);
            let rest = drain(&mut f);
            assert_eq!(
                rest.first() == Some(&Action::LeaveConference),
                input.is_none(),
                "{rest:?}"
            );
            assert_eq!(
                rest.last(),
                Some(&Action::Hangup {
                    cause: HangupCause::NormalClearing
                }),
                "{rest:?}"
            );
        }
    }

    #[test]
    fn bridge_connected_then_callee_leaves_ends_call() {
        let t = Instant::now();
        let mut f = flow(json!([
            {"blockType":"CALL_SETTINGS","forwardAni":false},
            {"blockType":"BRIDGE","bridgeMode":"PARALLEL","blockTimeout":20,"destinations":[{"destinationType":"SIP_USER","destination":"a"},{"destinationType":"SIP_USER","destination":"b"}]},
            {"blockType":"ANNOUNCEMENT","announcementName":"never"}
        ]));
        f.start(t);
        assert!(matches!(
            &drain(&mut f)[..],
            [Action::Bridge {
                forward_ani: ForwardAni::Called,
                ..
            }]
        ));
        f.handle(Input::BridgeConnected, t);
        assert!(drain(&mut f).is_empty());
        f.handle(Input::BridgeEnded, t);
        assert_eq!(
            drain(&mut f),
            vec![Action::Hangup {
                cause: HangupCause::NormalClearing
            }]
        );
    }

    #[test]
    fn routing_plan_switches_and_loops_are_cut() {
        let t = Instant::now();
        let mut f = flow(json!([{"blockType":"ROUTINGPLAN","routingplanName":"other"}]));
        f.start(t);
        assert_eq!(
            drain(&mut f),
            vec![Action::LoadPlan {
                name: "other".into()
            }]
        );
        // "other" jumps back to itself forever.
        let looping =
            parse_blocks(&json!([{"blockType":"ROUTINGPLAN","routingplanName":"other"}])).unwrap();
        let mut hops = 0;
        loop {
            f.handle(
                Input::PlanLoaded {
                    name: "other".into(),
                    blocks: Some(looping.clone()),
                },
                t,
            );
            let a = drain(&mut f);
            if let [Action::Hangup { cause }] = &a[..] {
                assert_eq!(*cause, HangupCause::ExchangeRoutingError);
                break;
            }
            hops += 1;
            assert!(hops < 100, "loop not cut");
        }
    }

    #[test]
    fn caller_hangup_stops_everything() {
        let t = Instant::now();
        let mut f = flow(json!([collect(1, 2, 3)]));
        f.start(t);
        drain(&mut f);
        f.stop();
        f.handle(Input::Digit('1'), t);
        f.handle_timeout(t + Duration::from_secs(100));
        assert!(drain(&mut f).is_empty());
        assert!(f.is_done());
        assert_eq!(f.variables().get("pin"), None);
    }

    #[test]
    fn say_digits_reads_the_variable_and_skips_when_empty() {
        let t = Instant::now();
        let mut f =
            flow(json!([collect(1, 3, 1), {"blockType":"SAY_DIGITS","variableName":"pin"}]));
        f.start(t);
        drain(&mut f);
        f.handle(Input::Digit('7'), t);
        f.handle(Input::Digit('#'), t);
        let a = drain(&mut f);
        assert!(
            matches!(&a[..], [Action::StopPlay, Action::Collected { digits, .. }, Action::Play { prompts, .. }]
                if digits == "7" && prompts[0] == Prompt::Digits("7".into())),
            "{a:?}"
        );
    }

    // ---- CALL_CONTROL ----

    fn cc(extra: serde_json::Value) -> serde_json::Value {
        let mut b = json!({"blockType":"CALL_CONTROL","url":"http://hook/cc","accessKey":"k1",
                           "variables":{"customer":"gold"},"timeout":2000});
        if let (Some(o), serde_json::Value::Object(e)) = (b.as_object_mut(), extra) {
            o.extend(e);
        }
        b
    }

    fn cc_request(actions: &[Action]) -> CallControlRequest {
        actions
            .iter()
            .find_map(|a| match a {
                Action::CallControl(r) => Some(r.clone()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("a CallControl action in {actions:?}"))
    }

    fn answer(f: &mut CallFlow, id: u64, body: serde_json::Value, t: Instant) -> Vec<Action> {
        f.handle(
            Input::CallControlAnswered {
                id,
                result: Ok(body),
            },
            t,
        );
        drain(f)
    }

    const AFTER: &str = "after-block";

    fn plan_with_cc(extra: serde_json::Value) -> CallFlow {
        flow(json!([cc(extra), {"blockType":"ANNOUNCEMENT","announcementName":AFTER}]))
    }

    fn plays(actions: &[Action], name: &str) -> bool {
        actions.iter().any(|a| matches!(a, Action::Play { prompts, .. }
            if prompts.iter().any(|p| matches!(p, Prompt::Announcement { name: n, .. } if n == name))))
    }

    #[test]
    fn call_control_loops_with_variables_then_empty_list_returns_to_plan() {
        let t = Instant::now();
        let mut f = plan_with_cc(json!({}));
        f.start(t);
        let r0 = cc_request(&drain(&mut f));
        assert_eq!(r0.loop_count, 0);
        assert_eq!(r0.validation_errors, None);
        assert_eq!(r0.access_key.as_deref(), Some("k1"));
        assert_eq!(r0.timeout, Duration::from_millis(2000));
        assert_eq!(
            r0.variables.get("customer").map(String::as_str),
            Some("gold")
        );
        assert_eq!(f.poll_timeout(), Some(t + Duration::from_millis(2000)));
        // Loop 0 answers a prompt and a digit collection.
        let a = answer(&mut f, r0.id, json!({"blocks":[collect(1, 3, 1)]}), t);
        assert_eq!(a[0], Action::Answer);
        f.handle(Input::Digit('4'), t);
        f.handle(Input::Digit('2'), t);
        f.handle(Input::Digit('#'), t);
        let r1 = cc_request(&drain(&mut f));
        assert_eq!(r1.loop_count, 1);
        assert_eq!(r1.call_control_uuid, r0.call_control_uuid);
        assert_eq!(r1.variables.get("pin").map(String::as_str), Some("42"));
        // Loop 1: `[]` hands control back: the plan's next block runs.
        let a = answer(&mut f, r1.id, json!({"blocks":[]}), t);
        assert!(plays(&a, AFTER), "{a:?}");
    }

    #[test]
    fn invalid_blocks_send_one_validation_errors_request_and_continue() {
        let t = Instant::now();
        let mut f = plan_with_cc(json!({}));
        f.start(t);
        let r0 = cc_request(&drain(&mut f));
        let a = answer(
            &mut f,
            r0.id,
            json!({"blocks":[{"blockType":"ANNOUNCEMENT","announcementName":"ok"},
                             {"blockType":"COLLECT_DIGITS","announcementName":"a","variableName":"p","maxDigits":40}]}),
            t,
        );
        let r = cc_request(&a);
        let errors = r.validation_errors.clone().expect("VALIDATION_ERRORS");
        assert!(
            errors
                .iter()
                .any(|e| e.contains("block 1") && e.contains("maxDigits")),
            "{errors:?}"
        );
        // Nothing of the list ran; the plan went on after the block.
        assert!(!plays(&a, "ok"), "{a:?}");
        assert!(plays(&a, AFTER), "{a:?}");
        // The answer to the VALIDATION_ERRORS request is not waited for nor used.
        let a = answer(
            &mut f,
            r.id,
            json!({"blocks":[{"blockType":"HANGUP","hangupCause":"USER_BUSY"}]}),
            t,
        );
        assert!(a.is_empty(), "{a:?}");
    }

    #[test]
    fn a_body_without_blocks_is_a_validation_error() {
        let t = Instant::now();
        let mut f = plan_with_cc(json!({}));
        f.start(t);
        let r0 = cc_request(&drain(&mut f));
        let a = answer(&mut f, r0.id, json!({"hello":"world"}), t);
        assert!(cc_request(&a).validation_errors.is_some());
    }

    #[test]
    fn failures_and_timeouts_go_to_the_fallback_plan_or_on() {
        let t = Instant::now();
        // A failed request with a fallback plan loads it.
        let mut f = plan_with_cc(json!({"fallbackPlan":"fallback"}));
        f.start(t);
        let r0 = cc_request(&drain(&mut f));
        f.handle(
            Input::CallControlAnswered {
                id: r0.id,
                result: Err("HTTP status 500".into()),
            },
            t,
        );
        assert_eq!(
            drain(&mut f),
            vec![Action::LoadPlan {
                name: "fallback".into()
            }]
        );
        // A timeout without a fallback continues after the block; a late answer is ignored.
        let mut f = plan_with_cc(json!({}));
        f.start(t);
        let r0 = cc_request(&drain(&mut f));
        f.handle_timeout(t + Duration::from_millis(1999));
        assert!(drain(&mut f).is_empty());
        f.handle_timeout(t + Duration::from_millis(2000));
        let a = drain(&mut f);
        assert!(plays(&a, AFTER), "{a:?}");
        let late = answer(
            &mut f,
            r0.id,
            json!({"blocks":[{"blockType":"HANGUP","hangupCause":"USER_BUSY"}]}),
            t,
        );
        assert!(late.is_empty(), "{late:?}");
    }

    #[test]
    fn the_loop_limit_stops_a_server_that_never_returns_an_empty_list() {
        let t = Instant::now();
        let mut f = plan_with_cc(json!({"fallbackPlan":"fallback"})).with_max_call_control_loops(3);
        f.start(t);
        let mut loops = Vec::new();
        let mut a = drain(&mut f);
        for _ in 0..3 {
            let r = cc_request(&a);
            loops.push(r.loop_count);
            a = answer(
                &mut f,
                r.id,
                json!({"blocks":[{"blockType":"CALL_SETTINGS","forwardAni":true}]}),
                t,
            );
        }
        assert_eq!(loops, vec![0, 1, 2]);
        assert_eq!(
            a,
            vec![Action::LoadPlan {
                name: "fallback".into()
            }]
        );
    }

    #[test]
    fn routingplan_in_returned_blocks_replaces_everything() {
        let t = Instant::now();
        let mut f = plan_with_cc(json!({}));
        f.start(t);
        let r0 = cc_request(&drain(&mut f));
        let a = answer(
            &mut f,
            r0.id,
            json!({"blocks":[{"blockType":"ROUTINGPLAN","routingplanName":"other"}]}),
            t,
        );
        assert_eq!(
            a,
            vec![Action::LoadPlan {
                name: "other".into()
            }]
        );
        let other = parse_blocks(&json!([{"blockType":"HANGUP","hangupCause":"CALL_REJECTED"}]))
            .expect("valid");
        f.handle(
            Input::PlanLoaded {
                name: "other".into(),
                blocks: Some(other),
            },
            t,
        );
        assert_eq!(
            drain(&mut f),
            vec![Action::Hangup {
                cause: HangupCause::CallRejected
            }]
        );
    }

    #[test]
    fn interrupt_stops_the_block_and_asks_the_webhook_at_once() {
        let t = Instant::now();
        let mut f = plan_with_cc(json!({}));
        f.start(t);
        let r0 = cc_request(&drain(&mut f));
        answer(
            &mut f,
            r0.id,
            json!({"blocks":[{"blockType":"ANNOUNCEMENT","announcementName":"long"},
                             {"blockType":"ANNOUNCEMENT","announcementName":"never"}]}),
            t,
        );
        f.handle(Input::Interrupt, t);
        let a = drain(&mut f);
        assert_eq!(a[0], Action::StopPlay);
        let r1 = cc_request(&a);
        assert_eq!(r1.loop_count, 1);
        assert!(!plays(&a, "never"));
        // Interrupting while the request is out changes nothing.
        f.handle(Input::Interrupt, t);
        assert!(drain(&mut f).is_empty());
    }

    #[test]
    fn interrupt_outside_call_control_moves_to_the_next_block() {
        let t = Instant::now();
        let mut f = flow(json!([
            {"blockType":"BRIDGE","bridgeMode":"SEQUENTIAL","destinations":[{"destinationType":"SIP_USER","destination":"bob","timeout":30}]},
            {"blockType":"ANNOUNCEMENT","announcementName":"next"}
        ]));
        f.start(t);
        drain(&mut f);
        f.handle(Input::Interrupt, t);
        let a = drain(&mut f);
        assert_eq!(a[0], Action::StopBridge);
        assert!(plays(&a, "next"), "{a:?}");
        // A late bridge outcome of the abandoned bridge is ignored.
        f.handle(Input::BridgeFailed(BridgeResult::Busy), t);
        assert_eq!(f.variables().get("bridge_result"), None);
    }

    fn bridge_to(user: &str) -> BridgeBlock {
        BridgeBlock {
            bridge_mode: crate::blocks::BridgeMode::Sequential,
            block_timeout: None,
            destinations: vec![BridgeDestination {
                destination_type: crate::blocks::DestinationType::SipUser,
                destination: user.into(),
                timeout: Some(20),
            }],
        }
    }

    #[test]
    fn redirect_replaces_the_rest_of_the_plan_even_while_a_webhook_is_asked() {
        let t = Instant::now();
        let mut f = plan_with_cc(json!({}));
        f.start(t);
        let r0 = cc_request(&drain(&mut f));
        f.handle(Input::Redirect(bridge_to("carol")), t);
        let a = drain(&mut f);
        assert!(
            matches!(&a[..], [Action::Bridge { block, .. }] if block.destinations[0].destination == "carol"),
            "{a:?}"
        );
        // The webhook's late answer is ignored: the redirect's bridge is what runs.
        answer(
            &mut f,
            r0.id,
            json!({"blocks":[{"blockType":"ANNOUNCEMENT","announcementName":"late"}]}),
            t,
        );
        assert!(drain(&mut f).is_empty());
        // A failed redirect ends the call: nothing of the old plan is left.
        f.handle(Input::BridgeFailed(BridgeResult::Busy), t);
        assert!(
            matches!(&drain(&mut f)[..], [Action::Hangup { .. }]),
            "the call ends"
        );
    }

    #[test]
    fn redirect_of_a_connected_call_stops_its_bridge_first() {
        let t = Instant::now();
        let mut f = flow(json!([
            {"blockType":"BRIDGE","bridgeMode":"SEQUENTIAL","destinations":[{"destinationType":"SIP_USER","destination":"bob","timeout":30}]},
            {"blockType":"ANNOUNCEMENT","announcementName":"next"}
        ]));
        f.start(t);
        drain(&mut f);
        f.handle(Input::BridgeConnected, t);
        f.handle(Input::Redirect(bridge_to("carol")), t);
        let a = drain(&mut f);
        assert_eq!(a[0], Action::StopBridge);
        assert!(matches!(&a[1], Action::Bridge { .. }), "{a:?}");
        assert!(!plays(&a, "next"));
    }

    #[test]
    fn a_restarted_bridge_that_fails_continues_after_the_block() {
        let t = Instant::now();
        let mut f = flow(json!([
            {"blockType":"BRIDGE","bridgeMode":"SEQUENTIAL","destinations":[{"destinationType":"SIP_USER","destination":"bob","timeout":30}]},
            {"blockType":"ANNOUNCEMENT","announcementName":"next"}
        ]));
        f.start(t);
        drain(&mut f);
        f.handle(Input::BridgeConnected, t);
        // Transferred: dialling again; the transfer target does not answer.
        f.handle(Input::BridgeRestarted, t);
        f.handle(Input::BridgeFailed(BridgeResult::NoAnswer), t);
        assert_eq!(f.variables().get("bridge_result"), Some("no_answer"));
        assert!(plays(&drain(&mut f), "next"));
        // Outside a connected bridge it means nothing.
        f.handle(Input::BridgeRestarted, t);
        f.handle(Input::BridgeFailed(BridgeResult::Busy), t);
        assert_eq!(f.variables().get("bridge_result"), Some("no_answer"));
    }

    #[test]
    fn a_claimed_call_runs_only_the_blocks_it_is_sent_and_then_waits() {
        let t = Instant::now();
        let mut f = flow(json!([{"blockType":"HANGUP","hangupCause":"CALL_REJECTED"}]));
        f.take_control();
        assert!(f.is_controlled());
        // Its plan never runs.
        f.start(t);
        assert!(drain(&mut f).is_empty());
        let collect = parse_blocks(&json!([collect(2, 2, 1)])).expect("valid");
        f.handle(Input::RunBlocks(collect), t);
        let a = drain(&mut f);
        assert!(matches!(a[0], Action::Answer), "{a:?}");
        f.handle(Input::Digit('4'), t);
        f.handle(Input::Digit('2'), t);
        let a = drain(&mut f);
        assert!(
            a.contains(&Action::Collected {
                variable: "pin".into(),
                digits: "42".into()
            }),
            "{a:?}"
        );
        assert!(a.contains(&Action::BlocksDone), "{a:?}");
        assert!(
            !a.iter().any(|x| matches!(x, Action::Hangup { .. })),
            "it waits: {a:?}"
        );
        assert_eq!(f.variables().get("pin"), Some("42"));
        assert!(!f.is_done());
        // The application goes away: the plan runs from its first block.
        f.release_control(t);
        assert!(!f.is_controlled());
        let a = drain(&mut f);
        assert!(
            a.contains(&Action::Hangup {
                cause: HangupCause::CallRejected
            }),
            "{a:?}"
        );
    }

    #[test]
    fn a_released_call_finishes_the_blocks_it_was_sent_before_its_plan() {
        let t = Instant::now();
        let mut f = flow(json!([{"blockType":"ANNOUNCEMENT","announcementName":"plan"}]));
        f.take_control();
        f.start(t);
        let sent = parse_blocks(&json!([{"blockType":"ANNOUNCEMENT","announcementName":"app"}]))
            .expect("valid");
        f.handle(Input::RunBlocks(sent), t);
        let a = drain(&mut f);
        assert!(plays(&a, "app"), "{a:?}");
        f.release_control(t);
        assert!(drain(&mut f).is_empty(), "the app's prompt plays on");
        f.handle(Input::PlayFinished { id: play_id(&a) }, t);
        let a = drain(&mut f);
        assert!(plays(&a, "plan"), "then the plan: {a:?}");
    }

    #[test]
    fn blocks_sent_while_a_webhook_is_asked_run_and_the_webhook_is_asked_again() {
        let t = Instant::now();
        let mut f = plan_with_cc(json!({}));
        f.start(t);
        let r0 = cc_request(&drain(&mut f));
        let now = parse_blocks(&json!([{"blockType":"ANNOUNCEMENT","announcementName":"now"}]))
            .expect("valid");
        f.handle(Input::RunBlocks(now), t);
        let a = drain(&mut f);
        assert!(plays(&a, "now"), "{a:?}");
        // The pending request's answer comes too late to count.
        answer(
            &mut f,
            r0.id,
            json!({"blocks":[{"blockType":"ANNOUNCEMENT","announcementName":"late"}]}),
            t,
        );
        assert!(drain(&mut f).is_empty());
        let id = play_id(&a);
        f.handle(Input::PlayFinished { id }, t);
        let a = drain(&mut f);
        assert!(a.contains(&Action::BlocksDone), "{a:?}");
        let r1 = cc_request(&a);
        assert_eq!(r1.loop_count, 1, "the Call Control exchange goes on");
    }

    #[test]
    fn blocks_sent_to_a_call_in_its_plan_run_then_the_plan_goes_on() {
        let t = Instant::now();
        let mut f = flow(json!([
            {"blockType":"ANNOUNCEMENT","announcementName":"first"},
            {"blockType":"ANNOUNCEMENT","announcementName":"second"}
        ]));
        f.start(t);
        let first = drain(&mut f);
        assert!(plays(&first, "first"));
        let now = parse_blocks(&json!([{"blockType":"ANNOUNCEMENT","announcementName":"now"}]))
            .expect("valid");
        f.handle(Input::RunBlocks(now), t);
        let a = drain(&mut f);
        assert_eq!(a[0], Action::StopPlay);
        assert!(plays(&a, "now"), "{a:?}");
        let id = a
            .iter()
            .find_map(|x| match x {
                Action::Play { id, .. } => Some(*id),
                _ => None,
            })
            .expect("a play");
        f.handle(Input::PlayFinished { id }, t);
        let a = drain(&mut f);
        assert!(a.contains(&Action::BlocksDone), "{a:?}");
        // The interrupted block is not resumed: the plan goes on after it.
        assert!(plays(&a, "second"), "{a:?}");
    }

    // ---- ASK_URL ----

    fn ask(extra: serde_json::Value) -> CallFlow {
        let mut b = json!({"blockType":"ASK_URL","url":"http://hook/ask","timeout":3,
                           "answerUrl":"http://hook/answer"});
        if let (Some(o), serde_json::Value::Object(e)) = (b.as_object_mut(), extra) {
            o.extend(e);
        }
        flow(json!([collect(1, 3, 1), b, {"blockType":"ANNOUNCEMENT","announcementName":AFTER}]))
    }

    fn ask_request(actions: &[Action]) -> AskUrlRequest {
        actions
            .iter()
            .find_map(|a| match a {
                Action::AskUrl(r) => Some(r.clone()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("an AskUrl action in {actions:?}"))
    }

    fn start_ask(f: &mut CallFlow, t: Instant) -> AskUrlRequest {
        f.start(t);
        drain(f);
        f.handle(Input::Digit('7'), t);
        f.handle(Input::Digit('#'), t);
        ask_request(&drain(f))
    }

    #[test]
    fn ask_url_reply_bridges_with_leg_urls_and_digits_are_sent() {
        let t = Instant::now();
        let mut f = ask(json!({}));
        let r = start_ask(&mut f, t);
        assert_eq!(r.digits.as_deref(), Some("7"));
        assert_eq!(r.timeout, Duration::from_secs(3));
        let reply = crate::askurl::parse_reply(
            "dtype: phone\r\ndnumber: bob\r\nhangup_url: http://hook/h\r\n",
        )
        .expect("reply");
        f.handle(
            Input::AskUrlAnswered {
                id: r.id,
                result: Ok(reply),
            },
            t,
        );
        let a = drain(&mut f);
        let [Action::Bridge {
            block, leg_urls, ..
        }] = &a[..]
        else {
            panic!("{a:?}")
        };
        assert_eq!(
            block.destinations[0].destination_type,
            DestinationType::SipUser
        );
        assert_eq!(block.destinations[0].destination, "bob");
        assert_eq!(
            block.destinations[0].timeout,
            Some(DEFAULT_ASK_URL_RING_SECONDS)
        );
        assert_eq!(
            leg_urls,
            &Some(LegUrls {
                answer_url: Some("http://hook/answer".into()),
                hangup_url: Some("http://hook/h".into())
            })
        );
        // The destination not answering continues the plan.
        f.handle(Input::BridgeFailed(BridgeResult::NoAnswer), t);
        assert!(plays(&drain(&mut f), AFTER));
    }

    #[test]
    fn ask_url_timeout_routes_to_the_timeout_destination() {
        let t = Instant::now();
        let mut f = ask(json!({"timeoutDestination":{"dtype":"external","dnumber":"+4930123"}}));
        let r = start_ask(&mut f, t);
        f.handle_timeout(t + Duration::from_secs(3));
        let a = drain(&mut f);
        assert!(
            matches!(&a[..], [Action::Bridge { block, .. }] if block.destinations[0].destination_type == DestinationType::ExternalNumber
                && block.destinations[0].destination == "+4930123"),
            "{a:?}"
        );
        // The late reply is ignored.
        f.handle(
            Input::AskUrlAnswered {
                id: r.id,
                result: Err("late".into()),
            },
            t,
        );
        assert!(drain(&mut f).is_empty());
        // An error answer routes the same way; a plan destination loads the plan.
        let mut f = ask(json!({"timeoutDestination":"night"}));
        let r = start_ask(&mut f, t);
        f.handle(
            Input::AskUrlAnswered {
                id: r.id,
                result: Err("HTTP status 500".into()),
            },
            t,
        );
        assert_eq!(
            drain(&mut f),
            vec![Action::LoadPlan {
                name: "night".into()
            }]
        );
        // No timeout destination: on after the block.
        let mut f = ask(json!({}));
        start_ask(&mut f, t);
        f.handle_timeout(t + Duration::from_secs(3));
        assert!(plays(&drain(&mut f), AFTER));
    }

    #[test]
    fn ask_url_hangup_and_plan_replies() {
        let t = Instant::now();
        let mut f = ask(json!({}));
        let r = start_ask(&mut f, t);
        let reply = crate::askurl::parse_reply("dtype: hangup\n").expect("reply");
        f.handle(
            Input::AskUrlAnswered {
                id: r.id,
                result: Ok(reply),
            },
            t,
        );
        assert_eq!(
            drain(&mut f),
            vec![Action::Hangup {
                cause: HangupCause::NormalClearing
            }]
        );
        let mut f = ask(json!({}));
        let r = start_ask(&mut f, t);
        let reply = crate::askurl::parse_reply("dtype: plan\ndnumber: sales\n").expect("reply");
        f.handle(
            Input::AskUrlAnswered {
                id: r.id,
                result: Ok(reply),
            },
            t,
        );
        assert_eq!(
            drain(&mut f),
            vec![Action::LoadPlan {
                name: "sales".into()
            }]
        );
    }

    fn refer_plan() -> CallFlow {
        flow(json!([
            {"blockType":"REFER","destination":"+4930123"},
            {"blockType":"HANGUP","hangupCause":"CALL_REJECTED"}
        ]))
    }

    /// Starts a REFER plan: answer, then the REFER; its id.
    fn start_refer(f: &mut CallFlow, t: Instant) -> u64 {
        f.start(t);
        let a = drain(f);
        assert!(matches!(a[0], Action::Answer), "{a:?}");
        match &a[1] {
            Action::Refer { id, destination } if destination == "+4930123" => *id,
            other => panic!("expected a REFER, got {other:?}"),
        }
    }

    #[test]
    fn refer_accepted_and_notified_ok_ends_the_call_as_referred() {
        let t = Instant::now();
        let mut f = refer_plan();
        let id = start_refer(&mut f, t);
        f.handle(
            Input::ReferAnswered {
                id,
                status: Some(202),
            },
            t,
        );
        f.handle(
            Input::ReferProgress {
                status: 100,
                done: false,
            },
            t,
        );
        assert!(drain(&mut f).is_empty(), "still waiting");
        f.handle(
            Input::ReferProgress {
                status: 200,
                done: true,
            },
            t,
        );
        assert_eq!(
            drain(&mut f),
            [Action::Referred {
                destination: "+4930123".into(),
                status: 200
            }]
        );
        assert!(f.is_done());
        assert_eq!(f.hangup_cause(), Some(HangupCause::NormalClearing));
        // A late answer to the REFER changes nothing.
        f.handle(
            Input::ReferAnswered {
                id,
                status: Some(202),
            },
            t,
        );
        assert!(drain(&mut f).is_empty());
    }

    #[test]
    fn a_notify_before_the_202_still_counts() {
        let t = Instant::now();
        let mut f = refer_plan();
        let id = start_refer(&mut f, t);
        f.handle(
            Input::ReferProgress {
                status: 200,
                done: true,
            },
            t,
        );
        f.handle(
            Input::ReferAnswered {
                id,
                status: Some(202),
            },
            t,
        );
        assert!(matches!(drain(&mut f)[..], [Action::Referred { .. }]));
    }

    #[test]
    fn refused_failed_or_silent_refers_continue_the_plan_with_refer_result() {
        let t = Instant::now();
        for (name, inputs, result, status) in [
            (
                "refused",
                vec![Input::ReferAnswered {
                    id: 0,
                    status: Some(603),
                }],
                "rejected",
                "603",
            ),
            (
                "unsendable",
                vec![Input::ReferAnswered {
                    id: 0,
                    status: None,
                }],
                "rejected",
                "",
            ),
            (
                "failed",
                vec![
                    Input::ReferAnswered {
                        id: 0,
                        status: Some(202),
                    },
                    Input::ReferProgress {
                        status: 180,
                        done: false,
                    },
                    Input::ReferProgress {
                        status: 486,
                        done: true,
                    },
                ],
                "failed",
                "486",
            ),
            (
                "given up",
                vec![
                    Input::ReferAnswered {
                        id: 0,
                        status: Some(202),
                    },
                    Input::ReferProgress {
                        status: 100,
                        done: true,
                    },
                ],
                "failed",
                "",
            ),
        ] {
            let mut f = refer_plan();
            let id = start_refer(&mut f, t);
            for input in inputs {
                let input = match input {
                    Input::ReferAnswered { status, .. } => Input::ReferAnswered { id, status },
                    other => other,
                };
                f.handle(input, t);
            }
            assert_eq!(
                drain(&mut f),
                [Action::Hangup {
                    cause: HangupCause::CallRejected
                }],
                "{name}: the plan goes on"
            );
            assert_eq!(f.variables().get("refer_result"), Some(result), "{name}");
            assert_eq!(f.variables().get("refer_status"), Some(status), "{name}");
        }
        // No outcome at all within the timeout.
        let mut f = refer_plan();
        let id = start_refer(&mut f, t);
        f.handle(
            Input::ReferAnswered {
                id,
                status: Some(202),
            },
            t,
        );
        f.handle_timeout(t + REFER_TIMEOUT - Duration::from_millis(1));
        assert!(drain(&mut f).is_empty());
        f.handle_timeout(t + REFER_TIMEOUT);
        assert_eq!(
            drain(&mut f),
            [Action::Hangup {
                cause: HangupCause::CallRejected
            }]
        );
        assert_eq!(f.variables().get("refer_result"), Some("timeout"));
    }

    #[test]
    fn spoken_digit_strings() {
        assert_eq!(spoken_digits("four five six").as_deref(), Some("456"));
        assert_eq!(spoken_digits("Null acht, fünf").as_deref(), Some("085"));
        assert_eq!(spoken_digits("1 2 three").as_deref(), Some("123"));
        assert_eq!(
            spoken_digits("One, two, three, four.").as_deref(),
            Some("1234")
        );
        assert_eq!(spoken_digits("yes"), None);
        assert_eq!(spoken_digits("four score"), None);
        assert_eq!(spoken_digits("  "), None);
    }

    #[test]
    fn collect_digits_with_speech_listens_and_keys_or_words_end_it() {
        let t = Instant::now();
        let plan = json!([
            {"blockType":"COLLECT_DIGITS","announcementName":"ask","variableName":"pin",
             "minDigits":1,"maxDigits":4,"maxTries":1,"timeout":5,"allowSpeechInput":true,
             "language":"de-DE"},
            {"blockType":"HANGUP","hangupCause":"CALL_REJECTED"}
        ]);
        // A new flow whose prompt has played: it listens (the listen's id, language, timeout).
        let listening = || {
            let mut f = flow(plan.clone());
            f.start(t);
            let id = play_id(&drain(&mut f));
            f.handle(Input::PlayFinished { id }, t);
            match &drain(&mut f)[..] {
                [Action::Listen {
                    id,
                    language,
                    timeout,
                }] => {
                    let (id, language, timeout) = (*id, language.clone(), *timeout);
                    (f, id, language, timeout)
                }
                other => panic!("expected a Listen, got {other:?}"),
            }
        };
        // Spoken digits answer it.
        let (mut f, listen, language, timeout) = listening();
        assert_eq!(
            (language.as_str(), timeout),
            ("de-DE", Duration::from_secs(5))
        );
        let heard = Recognized {
            text: "vier zwei".into(),
            confidence: Some(0.9),
        };
        f.handle(
            Input::SpeechResult {
                id: listen,
                result: Ok(Some(heard)),
            },
            t,
        );
        let a = drain(&mut f);
        assert!(
            a.contains(&Action::Collected {
                variable: "pin".into(),
                digits: "42".into()
            }),
            "{a:?}"
        );
        assert_eq!(f.variables().get("collected_pin"), Some("42"));
        // Once the caller speaks, the try's timeout waits for the recognizer.
        let (mut f, listen, ..) = listening();
        assert_eq!(f.poll_timeout(), Some(t + Duration::from_secs(5)));
        f.handle(
            Input::SpeechStarted { id: listen },
            t + Duration::from_secs(4),
        );
        assert_eq!(
            f.poll_timeout(),
            None,
            "no timeout while the words are recognised"
        );
        let late = t + Duration::from_secs(7);
        f.handle(
            Input::SpeechResult {
                id: listen,
                result: Ok(Some(Recognized {
                    text: "eins".into(),
                    confidence: None,
                })),
            },
            late,
        );
        assert!(drain(&mut f).contains(&Action::Collected {
            variable: "pin".into(),
            digits: "1".into()
        }));
        // A key stops listening; the keys answer it.
        let (mut f, listen, ..) = listening();
        f.handle(Input::Digit('7'), t);
        assert_eq!(drain(&mut f), [Action::StopListen]);
        f.handle(Input::Digit('#'), t);
        assert!(drain(&mut f).contains(&Action::Collected {
            variable: "pin".into(),
            digits: "7".into()
        }));
        // A late recognition changes nothing.
        let late = Recognized {
            text: "eins".into(),
            confidence: None,
        };
        f.handle(
            Input::SpeechResult {
                id: listen,
                result: Ok(Some(late)),
            },
            t,
        );
        assert_eq!(f.variables().get("pin"), Some("7"));
    }
}
