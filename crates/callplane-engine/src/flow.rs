//! The routing-plan interpreter of one call, sans-IO: it takes inputs (a prompt finished, a
//! digit, a bridge outcome, a timer) with the current time and emits actions (answer, play,
//! bridge, hang up) for the Call actor to carry out. No sockets, no clocks, no sleeping, so the
//! whole block flow is unit-tested in microseconds.

use crate::blocks::{Block, BridgeBlock, CollectDigitsBlock};
use crate::hangup::HangupCause;
use crate::variables::CallVariables;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Routing plans may jump to each other; a plan that loops forever is cut off here.
const MAX_PLAN_JUMPS: u32 = 32;

/// Something to play to the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prompt {
    /// A tenant announcement (`standard == false`) or one from the standard prompt set.
    Announcement { name: String, standard: bool },
    /// Text to speech.
    Tts { text: String, voice: Option<String> },
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
        forward_ani: bool,
    },
    /// Fetch another plan of the tenant; report `PlanLoaded`.
    LoadPlan { name: String },
    /// End the call: a final response before answer, BYE with Reason after.
    Hangup { cause: HangupCause },
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
    PlanLoaded {
        name: String,
        blocks: Option<Vec<Block>>,
    },
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
    Playing(u64),
    Collect {
        block: CollectDigitsBlock,
        tries: u32,
        digits: String,
        phase: CollectPhase,
    },
    Bridging,
    Bridged,
    LoadingPlan,
    Done,
}

/// The interpreter state of one call.
pub struct CallFlow {
    blocks: Vec<Block>,
    pc: usize,
    step: Step,
    vars: CallVariables,
    answered: bool,
    forward_ani: bool,
    next_play_id: u64,
    timer: Option<Instant>,
    actions: VecDeque<Action>,
    plan_jumps: u32,
    hangup: Option<HangupCause>,
}

impl CallFlow {
    pub fn new(blocks: Vec<Block>, vars: CallVariables) -> Self {
        CallFlow {
            blocks,
            pc: 0,
            step: Step::Idle,
            vars,
            answered: false,
            forward_ani: true,
            next_play_id: 1,
            timer: None,
            actions: VecDeque::new(),
            plan_jumps: 0,
            hangup: None,
        }
    }

    /// Runs the first block.
    pub fn start(&mut self, now: Instant) {
        self.advance(now);
    }

    pub fn variables(&self) -> &CallVariables {
        &self.vars
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
        if matches!(self.step, Step::Collect { .. }) {
            self.finish_try(now);
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
                        self.blocks = blocks;
                        self.pc = 0;
                    }
                    None => {
                        tracing::warn!(plan = %name, "ROUTINGPLAN names an unknown plan; continuing");
                    }
                }
                self.step = Step::Idle;
                self.advance(now);
            }
        }
    }

    fn ensure_answered(&mut self) {
        if !self.answered {
            self.answered = true;
            self.actions.push_back(Action::Answer);
        }
    }

    fn play(&mut self, prompts: Vec<Prompt>) -> u64 {
        let id = self.next_play_id;
        self.next_play_id += 1;
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
            let Some(block) = self.blocks.get(self.pc).cloned() else {
                // The plan ran out with the call still up.
                self.end(HangupCause::NormalUnspecified);
                return;
            };
            self.pc += 1;
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
                    let text = self.vars.expand(&b.text);
                    let id = self.play(vec![Prompt::Tts {
                        text,
                        voice: b.voice_name,
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
                        forward_ani: self.forward_ani,
                    });
                    self.step = Step::Bridging;
                }
                Block::Hangup(b) => self.end(b.hangup_cause),
                Block::RoutingPlan(b) => {
                    self.plan_jumps += 1;
                    if self.plan_jumps > MAX_PLAN_JUMPS {
                        tracing::warn!("routing plans jump in a loop; ending the call");
                        self.end(HangupCause::ExchangeRoutingError);
                        return;
                    }
                    self.actions.push_back(Action::LoadPlan {
                        name: b.routingplan_name,
                    });
                    self.step = Step::LoadingPlan;
                }
                Block::CallSettings(b) => self.forward_ani = b.forward_ani,
                other => {
                    // Webhook, speech and transfer blocks come with later work; skipping them
                    // keeps the rest of the plan (and the caller) going.
                    tracing::warn!(
                        block = other.block_type(),
                        "block not supported yet; skipped"
                    );
                }
            }
        }
        let _ = now;
    }

    fn on_play_finished(&mut self, id: u64, now: Instant) {
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
                    self.timer = Some(now + Duration::from_secs(block.timeout.into()));
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

    /// Ends one try of COLLECT_DIGITS: success, retry with the error prompt, or give up.
    fn finish_try(&mut self, now: Instant) {
        self.timer = None;
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
            let _ = self.vars.set(&name, &value);
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
            let _ = self.vars.set(&name, "");
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
            vec![Action::Hangup {
                cause: HangupCause::NormalClearing
            }]
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
            matches!(&a[..], [Action::Play { prompts, .. }] if prompts[0] == Prompt::Announcement { name: "after".into(), standard: false })
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
                forward_ani: true,
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
                forward_ani: false,
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
            matches!(&a[..], [Action::StopPlay, Action::Play { prompts, .. }] if prompts[0] == Prompt::Digits("7".into())),
            "{a:?}"
        );
    }
}
