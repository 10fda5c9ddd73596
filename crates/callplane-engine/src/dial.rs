//! Dial, sans-IO: the outbound attempts of one BRIDGE block. It owns which destination is called
//! when, the ring timers, what the caller hears meanwhile (180, early media, local ringback) and
//! the choice of exactly one winner; the Call actor carries out its outputs and reports SIP events.
//!
//! Ordering: `handle_input` never fires due timers itself. An input and a timer due at the same
//! instant are taken in the order the driver delivers them, so the driver decides (and tests pin)
//! whether a 200 OK at the deadline wins or is too late.

use crate::askurl::LegStatus;
use crate::blocks::{BridgeBlock, BridgeMode};
use crate::flow::BridgeResult;
use crate::hangup::HangupCause;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The RFC 3326 Reason sent to the losers when a destination answered.
pub const COMPLETED_ELSEWHERE: &str = "SIP;cause=200;text=\"Call completed elsewhere\"";

/// One outbound call placed by a [`Dial`]; numbered from 0 in launch order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AttemptId(pub u32);

/// What happened to an attempt, reported by the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialInput {
    /// The INVITE went out.
    Launched { attempt: AttemptId },
    /// The attempt could not even start: no such user (404), not registered (480), no trunk,
    /// DNS failure or no media port (503)...
    LaunchFailed { attempt: AttemptId, status: u16 },
    /// 180/183; `early_media`: a 183 with usable SDP.
    Ringing {
        attempt: AttemptId,
        early_media: bool,
    },
    /// 200 OK.
    Answered { attempt: AttemptId },
    /// A final non-2xx, a transaction timeout (408) or a transport failure (503).
    Failed { attempt: AttemptId, status: u16 },
    /// The callee's dialog ended. After answer the bridged call is over; before answer it is a
    /// failure of that attempt with status 487.
    RemoteBye { attempt: AttemptId },
}

/// Why an attempt ended, for its CDR leg and its ask-URL `hangup_url` callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptEnd {
    /// It was the winner; then either side hung up.
    Answered,
    /// Another destination answered.
    CompletedElsewhere,
    /// The dial was stopped (caller left, interrupt, shutdown).
    Cancelled,
    /// Its ring time ran out.
    NoAnswer,
    /// It failed with this status (launch failure, final response, BYE before answer: 487).
    Failed(u16),
}

impl AttemptEnd {
    /// The `status` of the leg's `hangup_url` request.
    pub fn leg_status(self) -> LegStatus {
        match self {
            AttemptEnd::Answered => LegStatus::Answer,
            AttemptEnd::CompletedElsewhere | AttemptEnd::Cancelled => LegStatus::Cancel,
            AttemptEnd::NoAnswer => LegStatus::NoAnswer,
            AttemptEnd::Failed(status) => LegStatus::from_sip_status(status),
        }
    }

    /// The hangup cause of the leg's CDR record.
    pub fn hangup_cause(self) -> HangupCause {
        match self {
            AttemptEnd::Answered => HangupCause::NormalClearing,
            AttemptEnd::CompletedElsewhere | AttemptEnd::Cancelled => HangupCause::OriginatorCancel,
            AttemptEnd::NoAnswer => HangupCause::NoAnswer,
            AttemptEnd::Failed(status) => HangupCause::from_sip_status(status),
        }
    }
}

/// What the driver must do, in order. A terminal output (`Ended`, `Failed`) comes last, after
/// every `AttemptEnded` it implies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DialOutput {
    /// Place a call to destination `destination` of the block as `attempt`: allocate media,
    /// resolve, send the INVITE, then report `Launched` or `LaunchFailed`.
    Launch {
        attempt: AttemptId,
        destination: usize,
    },
    /// End this attempt: abort it if still launching, CANCEL before answer, BYE after. `reason`
    /// is an RFC 3326 Reason value. Inputs for it are ignored from now on, except a 200 OK.
    Hangup {
        attempt: AttemptId,
        reason: Option<String>,
    },
    /// A 200 OK arrived for an attempt that cannot win (it crossed our CANCEL, came after its
    /// timeout, after another winner or after the dial ended): ACK and BYE it, never bridge it.
    ByeLate { attempt: AttemptId },
    /// Send the caller 180 Ringing. At most once per dial, never once a 183 went out.
    Ringing,
    /// Bridge the early media of `attempt` to the caller and send a 183 with our SDP. `first`: no
    /// 180/183 went to the caller before (the moment to report "ringing").
    EarlyMedia { attempt: AttemptId, first: bool },
    /// Unbridge the early media of `attempt` (it failed or lost); the caller hears silence until
    /// another attempt's early media is connected.
    Disconnect { attempt: AttemptId },
    /// The caller is already answered: play local ringback. At most once per dial.
    StartRingback,
    /// Stop the local ringback.
    StopRingback,
    /// The winner: bridge the caller to `attempt`, answer the caller if not yet. Once per dial.
    Connected { attempt: AttemptId },
    /// An attempt ended, for whatever reason; exactly once per launched attempt. `status` is the
    /// SIP status for its CDR leg.
    AttemptEnded {
        attempt: AttemptId,
        status: u16,
        cause: AttemptEnd,
    },
    /// `attempt` is a leg answered elsewhere that the driver hands this dial as its new winner
    /// ([`Dial::replace_winner`]): nothing to do but to hold it as that attempt.
    Adopted { attempt: AttemptId },
    /// The connected callee's dialog ended. Terminal.
    Ended,
    /// Every attempt ended and none answered. Terminal.
    Failed(BridgeResult),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// `Launch` went out; the driver has not reported the INVITE yet.
    Launching,
    Calling,
    /// The winner, bridged to the caller.
    Answered,
    /// `counted`: the status this attempt adds to the block's result (none when cancelled or
    /// after answer).
    Ended {
        counted: Option<u16>,
    },
}

impl State {
    fn is_live(self) -> bool {
        matches!(self, State::Launching | State::Calling)
    }
}

#[derive(Debug)]
struct Attempt {
    state: State,
    /// When it is given up; `None` rings until something else ends it.
    deadline: Option<Instant>,
}

/// One BRIDGE block's dialing. Feed it inputs and timeouts, drain `poll_output` after each.
#[derive(Debug)]
pub struct Dial {
    block: BridgeBlock,
    /// Indexed by `AttemptId`; one per destination, so an attempt's id is its destination too.
    attempts: Vec<Attempt>,
    next_destination: usize,
    caller_answered: bool,
    /// A 180 or 183 went to the caller.
    alerted: bool,
    ringback: bool,
    /// The attempt whose early media the caller hears.
    early: Option<AttemptId>,
    winner: Option<AttemptId>,
    finished: bool,
    outputs: VecDeque<DialOutput>,
}

impl Dial {
    /// Starts dialing: PARALLEL launches every destination, sharing the block's `block_timeout`;
    /// SEQUENTIAL launches the first, with its own `timeout`. No timeout configured: no timer.
    /// `caller_answered`: an announcement already answered the caller, so ringing is local
    /// ringback rather than 180/183.
    pub fn new(block: BridgeBlock, caller_answered: bool, now: Instant) -> Self {
        let n = block.destinations.len();
        let mut dial = Dial {
            block,
            attempts: Vec::with_capacity(n),
            next_destination: 0,
            caller_answered,
            alerted: false,
            ringback: false,
            early: None,
            winner: None,
            finished: false,
            // Launches, plus room for the first reports, without growing.
            outputs: VecDeque::with_capacity(n + 2),
        };
        if dial.block.bridge_mode == BridgeMode::Parallel {
            let deadline = deadline(now, dial.block.block_timeout);
            while dial.next_destination < n {
                dial.launch(deadline);
            }
        }
        // SEQUENTIAL launches its first here; an empty block fails at once.
        dial.advance(now);
        dial
    }

    /// A bridge whose callee answered elsewhere and is handed in (an attended transfer from a
    /// call's first leg): nothing is launched, attempt 0 is the winner, and the first output is
    /// its `Connected`. Its end is the dial's `Ended`, as any winner's.
    pub fn with_answered(block: BridgeBlock) -> Self {
        let winner = AttemptId(0);
        let mut outputs = VecDeque::with_capacity(2);
        outputs.push_back(DialOutput::Connected { attempt: winner });
        Dial {
            next_destination: block.destinations.len(),
            block,
            attempts: vec![Attempt {
                state: State::Answered,
                deadline: None,
            }],
            caller_answered: true,
            alerted: false,
            ringback: false,
            early: None,
            winner: Some(winner),
            finished: false,
            outputs,
        }
    }

    /// The block being dialed (the destinations that `Launch` indexes).
    pub fn block(&self) -> &BridgeBlock {
        &self.block
    }

    /// Takes one input. It does not fire timers due at `now`: call `handle_timeout` for those,
    /// before or after, in the order the events really happened. Inputs for unknown attempts,
    /// for attempts already ended, or after the dial finished are ignored, except that a 200 OK
    /// that cannot win yields `ByeLate`.
    pub fn handle_input(&mut self, input: DialInput, now: Instant) {
        match input {
            DialInput::Launched { attempt } => {
                if let Some(a) = self.live_mut(attempt) {
                    a.state = State::Calling;
                }
            }
            DialInput::LaunchFailed { attempt, status } | DialInput::Failed { attempt, status } => {
                self.on_failed(attempt, status, now)
            }
            DialInput::Ringing {
                attempt,
                early_media,
            } => self.on_ringing(attempt, early_media),
            DialInput::Answered { attempt } => self.on_answered(attempt),
            DialInput::RemoteBye { attempt } => self.on_failed(attempt, 487, now),
        }
    }

    /// Gives up every ringing attempt whose deadline is at or before `now`; SEQUENTIAL then
    /// launches the next destination.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.finished || self.winner.is_some() {
            return;
        }
        for i in 0..self.attempts.len() {
            let a = &self.attempts[i];
            if a.state.is_live() && a.deadline.is_some_and(|d| d <= now) {
                // A timeout counts as 408 for the result; the leg itself ends with our CANCEL.
                self.end_attempt(i, Some(None), 487, AttemptEnd::NoAnswer, Some(408));
            }
        }
        self.advance(now);
    }

    /// The earliest deadline of a ringing attempt.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.finished || self.winner.is_some() {
            return None;
        }
        self.attempts
            .iter()
            .filter(|a| a.state.is_live())
            .filter_map(|a| a.deadline)
            .min()
    }

    pub fn poll_output(&mut self) -> Option<DialOutput> {
        self.outputs.pop_front()
    }

    /// The caller got answered meanwhile: later ringing is local ringback, and it starts now if
    /// a callee already rings without early media (the caller's phone stopped its own at 200).
    pub fn caller_answered(&mut self) {
        if self.caller_answered {
            return;
        }
        self.caller_answered = true;
        if !self.finished && self.winner.is_none() && self.alerted && self.early.is_none() {
            self.start_ringback();
        }
    }

    /// The caller left or the bridge is abandoned (interrupt, shutdown): hangs up every live
    /// attempt, the connected callee included, with `reason`. No `Connected`, `Ended` or `Failed`
    /// follows; a later 200 OK gets `ByeLate`.
    pub fn stop(&mut self, reason: Option<String>) {
        if self.finished {
            return;
        }
        self.stop_ringback();
        if let Some(w) = self.winner {
            self.outputs.push_back(DialOutput::Hangup {
                attempt: w,
                reason: reason.clone(),
            });
            self.end_winner();
        }
        for i in 0..self.attempts.len() {
            if self.attempts[i].state.is_live() {
                self.end_attempt(i, Some(reason.clone()), 487, AttemptEnd::Cancelled, None);
            }
        }
        self.finished = true;
    }

    /// The connected callee is replaced by a leg answered elsewhere (a supervisor taking the
    /// call over, an attended transfer's target): the old winner is hung up with `reason` and
    /// reported, and a new attempt, numbered after every other, is the winner from now on (its
    /// end is the dial's `Ended`). Returns it; `None` (and nothing happens) unless a winner is
    /// connected.
    pub fn replace_winner(&mut self, reason: Option<String>) -> Option<AttemptId> {
        let old = self.connected()?;
        self.outputs.push_back(DialOutput::Hangup {
            attempt: old,
            reason,
        });
        self.end_winner();
        let id = AttemptId(self.attempts.len() as u32);
        self.attempts.push(Attempt {
            state: State::Answered,
            deadline: None,
        });
        self.winner = Some(id);
        self.outputs.push_back(DialOutput::Adopted { attempt: id });
        Some(id)
    }

    /// Nothing more will happen: `Ended`, `Failed` or `stop`.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// The winner, while the caller is bridged to it.
    pub fn connected(&self) -> Option<AttemptId> {
        self.winner.filter(|_| !self.finished)
    }

    /// The attempt whose early media the caller hears, before any answer.
    pub fn early_media(&self) -> Option<AttemptId> {
        self.early
    }

    fn live_mut(&mut self, id: AttemptId) -> Option<&mut Attempt> {
        if self.finished {
            return None;
        }
        self.attempts
            .get_mut(id.0 as usize)
            .filter(|a| a.state.is_live())
    }

    fn on_failed(&mut self, id: AttemptId, status: u16, now: Instant) {
        if self.finished {
            return;
        }
        if self.winner == Some(id) {
            // The bridged callee is gone, whatever the driver calls it.
            self.end_winner();
            self.finished = true;
            self.outputs.push_back(DialOutput::Ended);
            return;
        }
        if self.live_mut(id).is_none() {
            return;
        }
        self.end_attempt(
            id.0 as usize,
            None,
            status,
            AttemptEnd::Failed(status),
            Some(status),
        );
        self.advance(now);
    }

    fn on_ringing(&mut self, id: AttemptId, early_media: bool) {
        if self.winner.is_some() {
            return;
        }
        let Some(a) = self.live_mut(id) else {
            return;
        };
        a.state = State::Calling;
        if self.caller_answered {
            // The caller's media is ours already; early media is not relayed (as before).
            if self.early.is_none() {
                self.start_ringback();
            }
        } else if early_media && self.early.is_none() {
            let first = !self.alerted;
            self.alerted = true;
            self.early = Some(id);
            self.outputs
                .push_back(DialOutput::EarlyMedia { attempt: id, first });
        } else if !self.alerted {
            self.alerted = true;
            self.outputs.push_back(DialOutput::Ringing);
        }
    }

    fn on_answered(&mut self, id: AttemptId) {
        if self.winner.is_none() && self.live_mut(id).is_some() {
            self.win(id);
        } else if self.connected() != Some(id) {
            // Too late, or for an attempt we never placed: it must not stay up, and a dialog
            // nobody bridges is safe to end.
            self.outputs.push_back(DialOutput::ByeLate { attempt: id });
        }
        // A repeated report of the winner's 200 changes nothing.
    }

    fn win(&mut self, id: AttemptId) {
        self.winner = Some(id);
        self.attempts[id.0 as usize].state = State::Answered;
        self.stop_ringback();
        if let Some(e) = self.early.take() {
            if e != id {
                self.outputs
                    .push_back(DialOutput::Disconnect { attempt: e });
            }
        }
        self.outputs
            .push_back(DialOutput::Connected { attempt: id });
        for i in 0..self.attempts.len() {
            if self.attempts[i].state.is_live() {
                self.end_attempt(
                    i,
                    Some(Some(COMPLETED_ELSEWHERE.to_string())),
                    487,
                    AttemptEnd::CompletedElsewhere,
                    None,
                );
            }
        }
    }

    fn end_winner(&mut self) {
        if let Some(w) = self.winner {
            self.attempts[w.0 as usize].state = State::Ended { counted: None };
            self.outputs.push_back(DialOutput::AttemptEnded {
                attempt: w,
                status: 200,
                cause: AttemptEnd::Answered,
            });
        }
    }

    /// Ends live attempt `i`: unbridges its early media, hangs it up when `hangup` is `Some`
    /// (with that reason), and reports it.
    fn end_attempt(
        &mut self,
        i: usize,
        hangup: Option<Option<String>>,
        status: u16,
        cause: AttemptEnd,
        counted: Option<u16>,
    ) {
        let attempt = AttemptId(i as u32);
        self.attempts[i].state = State::Ended { counted };
        if self.early == Some(attempt) {
            self.early = None;
            self.outputs.push_back(DialOutput::Disconnect { attempt });
        }
        if let Some(reason) = hangup {
            self.outputs
                .push_back(DialOutput::Hangup { attempt, reason });
        }
        self.outputs.push_back(DialOutput::AttemptEnded {
            attempt,
            status,
            cause,
        });
    }

    /// After an attempt ended unanswered: SEQUENTIAL launches the next destination; with none
    /// left and nothing ringing, the block failed.
    fn advance(&mut self, now: Instant) {
        if self.finished || self.winner.is_some() || self.attempts.iter().any(|a| a.state.is_live())
        {
            return;
        }
        if let Some(dest) = self.block.destinations.get(self.next_destination) {
            // The timer runs from the launch, not from the INVITE, so a launch that never
            // reports back cannot stall the dial.
            let d = deadline(now, dest.timeout);
            self.launch(d);
            return;
        }
        self.stop_ringback();
        self.finished = true;
        let result = self.result();
        self.outputs.push_back(DialOutput::Failed(result));
    }

    fn launch(&mut self, deadline: Option<Instant>) {
        let attempt = AttemptId(self.attempts.len() as u32);
        let destination = self.next_destination;
        self.next_destination += 1;
        self.attempts.push(Attempt {
            state: State::Launching,
            deadline,
        });
        self.outputs.push_back(DialOutput::Launch {
            attempt,
            destination,
        });
    }

    /// Busy if anyone was busy, no answer if nobody was reached, else failed.
    fn result(&self) -> BridgeResult {
        let counted = || {
            self.attempts.iter().filter_map(|a| match a.state {
                State::Ended { counted } => counted,
                _ => None,
            })
        };
        if counted().any(|s| matches!(s, 486 | 600)) {
            BridgeResult::Busy
        } else if counted().all(|s| matches!(s, 408 | 480 | 487)) {
            BridgeResult::NoAnswer
        } else {
            BridgeResult::Failed
        }
    }

    fn start_ringback(&mut self) {
        if !self.ringback {
            self.ringback = true;
            self.outputs.push_back(DialOutput::StartRingback);
        }
    }

    fn stop_ringback(&mut self) {
        if self.ringback {
            self.ringback = false;
            self.outputs.push_back(DialOutput::StopRingback);
        }
    }
}

fn deadline(now: Instant, seconds: Option<u32>) -> Option<Instant> {
    seconds.map(|s| now + Duration::from_secs(s.into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blocks::{BridgeDestination, DestinationType};
    use std::collections::BTreeMap;
    use DialInput as I;
    use DialOutput as O;

    fn a(n: u32) -> AttemptId {
        AttemptId(n)
    }

    fn dest(n: usize, timeout: Option<u32>) -> BridgeDestination {
        BridgeDestination {
            destination_type: DestinationType::SipUser,
            destination: format!("user{n}"),
            timeout,
        }
    }

    fn seq(timeouts: &[Option<u32>]) -> BridgeBlock {
        BridgeBlock {
            bridge_mode: BridgeMode::Sequential,
            block_timeout: None,
            destinations: timeouts
                .iter()
                .enumerate()
                .map(|(i, t)| dest(i, *t))
                .collect(),
        }
    }

    fn par(n: usize, block_timeout: Option<u32>) -> BridgeBlock {
        BridgeBlock {
            bridge_mode: BridgeMode::Parallel,
            block_timeout,
            destinations: (0..n).map(|i| dest(i, None)).collect(),
        }
    }

    fn launch(n: u32) -> O {
        O::Launch {
            attempt: a(n),
            destination: n as usize,
        }
    }

    fn ended(n: u32, status: u16, cause: AttemptEnd) -> O {
        O::AttemptEnded {
            attempt: a(n),
            status,
            cause,
        }
    }

    fn elsewhere(n: u32) -> O {
        O::Hangup {
            attempt: a(n),
            reason: Some(COMPLETED_ELSEWHERE.into()),
        }
    }

    fn hangup(n: u32) -> O {
        O::Hangup {
            attempt: a(n),
            reason: None,
        }
    }

    #[test]
    fn a_callee_handed_in_is_connected_at_once_and_its_bye_ends_the_dial() {
        let t = Instant::now();
        let mut d = Dial::with_answered(seq(&[Some(30)]));
        assert_eq!(d.poll_output(), Some(O::Connected { attempt: a(0) }));
        assert_eq!(d.poll_output(), None);
        assert_eq!(d.connected(), Some(a(0)));
        assert_eq!(d.poll_timeout(), None, "nothing rings");
        d.handle_input(I::RemoteBye { attempt: a(0) }, t);
        assert_eq!(d.poll_output(), Some(ended(0, 200, AttemptEnd::Answered)));
        assert_eq!(d.poll_output(), Some(O::Ended));
        assert!(d.is_finished());
    }

    /// A dial plus every output it produced, so `finish` can check the whole-run invariants.
    struct Run {
        dial: Dial,
        log: Vec<O>,
        t0: Instant,
    }

    impl Run {
        fn new(block: BridgeBlock, caller_answered: bool) -> (Run, Vec<O>) {
            let t0 = Instant::now();
            let mut r = Run {
                dial: Dial::new(block, caller_answered, t0),
                log: Vec::new(),
                t0,
            };
            let out = r.drain();
            (r, out)
        }

        fn at(&self, secs: u64) -> Instant {
            self.t0 + Duration::from_secs(secs)
        }

        fn drain(&mut self) -> Vec<O> {
            let out: Vec<O> = std::iter::from_fn(|| self.dial.poll_output()).collect();
            self.log.extend(out.iter().cloned());
            out
        }

        fn input(&mut self, input: I, secs: u64) -> Vec<O> {
            self.dial.handle_input(input, self.at(secs));
            self.drain()
        }

        fn timeout(&mut self, secs: u64) -> Vec<O> {
            self.dial.handle_timeout(self.at(secs));
            self.drain()
        }

        fn stop(&mut self, reason: Option<&str>) -> Vec<O> {
            self.dial.stop(reason.map(String::from));
            self.drain()
        }

        /// Stops the dial if still running, then checks the run: every launched attempt ended
        /// exactly once and was hung up at most once, at most one winner and one terminal
        /// output, no `ByeLate` for the winner while bridged.
        fn finish(mut self) {
            if !self.dial.is_finished() {
                self.stop(None);
            }
            assert!(self.dial.is_finished());
            assert_eq!(self.dial.poll_timeout(), None);
            let mut launched = BTreeMap::new();
            let mut ends = BTreeMap::new();
            let mut hangups = BTreeMap::new();
            let mut winners = Vec::new();
            let mut terminal = 0;
            for o in &self.log {
                match o {
                    O::Launch { attempt, .. } | O::Adopted { attempt } => {
                        *launched.entry(*attempt).or_insert(0) += 1
                    }
                    O::AttemptEnded { attempt, .. } => {
                        assert!(
                            launched.contains_key(attempt),
                            "{attempt:?} ended unlaunched"
                        );
                        *ends.entry(*attempt).or_insert(0) += 1;
                    }
                    O::Hangup { attempt, .. } => {
                        assert!(!ends.contains_key(attempt), "{attempt:?} hung up after end");
                        *hangups.entry(*attempt).or_insert(0) += 1;
                    }
                    O::Connected { attempt } => winners.push(*attempt),
                    O::ByeLate { attempt } => {
                        // Never the bridged winner; once its call ended, a 200 is just late.
                        let bridged = winners.contains(attempt) && !ends.contains_key(attempt);
                        assert!(!bridged, "ByeLate for the bridged {attempt:?}");
                    }
                    O::Ended | O::Failed(_) => terminal += 1,
                    _ => {}
                }
            }
            assert!(launched.values().all(|&n| n == 1), "{launched:?}");
            assert_eq!(
                launched.keys().collect::<Vec<_>>(),
                ends.keys().collect::<Vec<_>>(),
                "every launched attempt ends"
            );
            assert!(ends.values().all(|&n| n == 1), "ended once: {ends:?}");
            assert!(
                hangups.values().all(|&n| n == 1),
                "hung up once: {hangups:?}"
            );
            assert!(winners.len() <= 1, "one winner: {winners:?}");
            assert!(terminal <= 1);
        }
    }

    #[test]
    fn parallel_two_answers_at_the_same_instant_have_one_winner() {
        let (mut r, out) = Run::new(par(2, Some(30)), false);
        assert_eq!(out, vec![launch(0), launch(1)]);
        assert_eq!(r.dial.poll_timeout(), Some(r.at(30)));
        assert_eq!(r.input(I::Launched { attempt: a(0) }, 0), vec![]);
        assert_eq!(r.input(I::Launched { attempt: a(1) }, 0), vec![]);
        let ring = |n| I::Ringing {
            attempt: a(n),
            early_media: false,
        };
        assert_eq!(r.input(ring(0), 1), vec![O::Ringing]);
        assert_eq!(r.input(ring(1), 1), vec![]);
        assert_eq!(
            r.input(I::Answered { attempt: a(0) }, 5),
            vec![
                O::Connected { attempt: a(0) },
                elsewhere(1),
                ended(1, 487, AttemptEnd::CompletedElsewhere)
            ]
        );
        assert_eq!(
            r.input(I::Answered { attempt: a(1) }, 5),
            vec![O::ByeLate { attempt: a(1) }]
        );
        // The loser's dialog winding down changes nothing.
        assert_eq!(
            r.input(
                I::Failed {
                    attempt: a(1),
                    status: 487
                },
                5
            ),
            vec![]
        );
        assert_eq!(r.dial.connected(), Some(a(0)));
        assert_eq!(r.dial.poll_timeout(), None);
        assert_eq!(r.timeout(30), vec![]);
        assert_eq!(
            r.input(I::RemoteBye { attempt: a(0) }, 60),
            vec![ended(0, 200, AttemptEnd::Answered), O::Ended]
        );
        assert_eq!(r.dial.connected(), None);
        r.finish();
    }

    #[test]
    fn answer_crossing_cancel_after_stop_is_bye_late() {
        let (mut r, out) = Run::new(par(2, Some(30)), false);
        assert_eq!(out, vec![launch(0), launch(1)]);
        let early = I::Ringing {
            attempt: a(0),
            early_media: true,
        };
        assert_eq!(
            r.input(early, 1),
            vec![O::EarlyMedia {
                attempt: a(0),
                first: true
            }]
        );
        let ring = I::Ringing {
            attempt: a(1),
            early_media: false,
        };
        assert_eq!(r.input(ring, 1), vec![]);
        let reason = "SIP;cause=487;text=\"ORIGINATOR_CANCEL\"";
        let cancel = |n| O::Hangup {
            attempt: a(n),
            reason: Some(reason.into()),
        };
        assert_eq!(
            r.stop(Some(reason)),
            vec![
                O::Disconnect { attempt: a(0) },
                cancel(0),
                ended(0, 487, AttemptEnd::Cancelled),
                cancel(1),
                ended(1, 487, AttemptEnd::Cancelled),
            ]
        );
        assert!(r.dial.is_finished());
        assert_eq!(
            r.input(I::Answered { attempt: a(1) }, 2),
            vec![O::ByeLate { attempt: a(1) }]
        );
        assert_eq!(
            r.input(
                I::Failed {
                    attempt: a(0),
                    status: 487
                },
                2
            ),
            vec![]
        );
        assert_eq!(r.stop(None), vec![]);
        assert_eq!(r.dial.connected(), None);
        r.finish();
    }

    #[test]
    fn callee_bye_before_answer_during_ringback_sequential_moves_on() {
        let (mut r, out) = Run::new(seq(&[Some(20), Some(20)]), true);
        assert_eq!(out, vec![launch(0)]);
        r.input(I::Launched { attempt: a(0) }, 0);
        let ring = |n| I::Ringing {
            attempt: a(n),
            early_media: true,
        };
        // Already answered: local ringback, no 180/183, early media not relayed.
        assert_eq!(r.input(ring(0), 1), vec![O::StartRingback]);
        assert_eq!(r.dial.early_media(), None);
        assert_eq!(
            r.input(I::RemoteBye { attempt: a(0) }, 3),
            vec![ended(0, 487, AttemptEnd::Failed(487)), launch(1)]
        );
        assert_eq!(r.dial.poll_timeout(), Some(r.at(23)));
        r.input(I::Launched { attempt: a(1) }, 3);
        assert_eq!(r.input(ring(1), 4), vec![]);
        assert_eq!(
            r.input(I::Answered { attempt: a(1) }, 6),
            vec![O::StopRingback, O::Connected { attempt: a(1) }]
        );
        r.finish();
    }

    #[test]
    fn callee_bye_before_answer_during_ringback_parallel_last_fails() {
        let (mut r, out) = Run::new(par(2, Some(30)), true);
        assert_eq!(out, vec![launch(0), launch(1)]);
        assert_eq!(
            r.input(
                I::LaunchFailed {
                    attempt: a(1),
                    status: 480
                },
                0
            ),
            vec![ended(1, 480, AttemptEnd::Failed(480))]
        );
        let ring = I::Ringing {
            attempt: a(0),
            early_media: false,
        };
        assert_eq!(r.input(ring, 1), vec![O::StartRingback]);
        assert_eq!(
            r.input(I::RemoteBye { attempt: a(0) }, 2),
            vec![
                ended(0, 487, AttemptEnd::Failed(487)),
                O::StopRingback,
                O::Failed(BridgeResult::NoAnswer)
            ]
        );
        assert!(r.dial.is_finished());
        r.finish();
    }

    #[test]
    fn answer_then_timeout_at_the_same_instant_answer_wins() {
        let (mut r, _) = Run::new(par(2, Some(30)), false);
        assert_eq!(
            r.input(I::Answered { attempt: a(0) }, 30),
            vec![
                O::Connected { attempt: a(0) },
                elsewhere(1),
                ended(1, 487, AttemptEnd::CompletedElsewhere)
            ]
        );
        assert_eq!(r.timeout(30), vec![]);
        assert_eq!(r.dial.connected(), Some(a(0)));
        r.finish();
    }

    #[test]
    fn timeout_then_answer_at_the_same_instant_timeout_wins() {
        let (mut r, _) = Run::new(par(2, Some(30)), false);
        assert_eq!(r.timeout(29), vec![]);
        assert_eq!(
            r.timeout(30),
            vec![
                hangup(0),
                ended(0, 487, AttemptEnd::NoAnswer),
                hangup(1),
                ended(1, 487, AttemptEnd::NoAnswer),
                O::Failed(BridgeResult::NoAnswer)
            ]
        );
        assert_eq!(
            r.input(I::Answered { attempt: a(0) }, 30),
            vec![O::ByeLate { attempt: a(0) }]
        );
        assert_eq!(r.dial.connected(), None);
        r.finish();
    }

    #[test]
    fn sequential_answer_after_own_timeout_is_bye_late() {
        let (mut r, out) = Run::new(seq(&[Some(10), Some(20)]), false);
        assert_eq!(out, vec![launch(0)]);
        r.input(I::Launched { attempt: a(0) }, 0);
        assert_eq!(r.dial.poll_timeout(), Some(r.at(10)));
        assert_eq!(
            r.timeout(10),
            vec![hangup(0), ended(0, 487, AttemptEnd::NoAnswer), launch(1)]
        );
        assert_eq!(r.dial.poll_timeout(), Some(r.at(30)));
        assert_eq!(
            r.input(I::Answered { attempt: a(0) }, 10),
            vec![O::ByeLate { attempt: a(0) }]
        );
        r.input(I::Launched { attempt: a(1) }, 10);
        assert_eq!(
            r.input(I::Answered { attempt: a(1) }, 12),
            vec![O::Connected { attempt: a(1) }]
        );
        assert_eq!(r.dial.poll_timeout(), None);
        r.finish();
    }

    #[test]
    fn sequential_launch_failure_moves_on() {
        let (mut r, out) = Run::new(seq(&[Some(10), Some(10), Some(10)]), false);
        assert_eq!(out, vec![launch(0)]);
        assert_eq!(
            r.input(
                I::LaunchFailed {
                    attempt: a(0),
                    status: 404
                },
                1
            ),
            vec![ended(0, 404, AttemptEnd::Failed(404)), launch(1)]
        );
        assert_eq!(
            r.input(
                I::LaunchFailed {
                    attempt: a(1),
                    status: 480
                },
                2
            ),
            vec![ended(1, 480, AttemptEnd::Failed(480)), launch(2)]
        );
        // Each destination's ring time starts at its own launch.
        assert_eq!(r.dial.poll_timeout(), Some(r.at(12)));
        r.input(I::Launched { attempt: a(2) }, 2);
        assert_eq!(
            r.input(
                I::Failed {
                    attempt: a(2),
                    status: 503
                },
                3
            ),
            vec![
                ended(2, 503, AttemptEnd::Failed(503)),
                O::Failed(BridgeResult::Failed)
            ]
        );
        r.finish();
    }

    #[test]
    fn exhaustion_results_busy_no_answer_failed() {
        let cases: &[(&[u16], BridgeResult)] = &[
            (&[486, 408], BridgeResult::Busy),
            (&[503, 600], BridgeResult::Busy),
            (&[408, 480, 487], BridgeResult::NoAnswer),
            (&[480, 503], BridgeResult::Failed),
            (&[404], BridgeResult::Failed),
        ];
        for (statuses, result) in cases {
            let (mut r, _) = Run::new(par(statuses.len(), Some(30)), false);
            let mut last = Vec::new();
            for (i, &status) in statuses.iter().enumerate() {
                let attempt = a(i as u32);
                last = r.input(I::Failed { attempt, status }, 1);
            }
            assert_eq!(last.last(), Some(&O::Failed(*result)), "{statuses:?}");
            r.finish();
        }
        // Timeouts count as 408 and mix with real statuses.
        let (mut r, _) = Run::new(seq(&[Some(5), Some(5)]), false);
        r.timeout(5);
        let out = r.input(
            I::Failed {
                attempt: a(1),
                status: 486,
            },
            6,
        );
        assert_eq!(out.last(), Some(&O::Failed(BridgeResult::Busy)));
        r.finish();
    }

    #[test]
    fn early_media_of_a_failed_attempt_is_disconnected_and_the_next_connects() {
        let (mut r, _) = Run::new(par(2, Some(30)), false);
        let ring = |n, early_media| I::Ringing {
            attempt: a(n),
            early_media,
        };
        assert_eq!(
            r.input(ring(0, true), 1),
            vec![O::EarlyMedia {
                attempt: a(0),
                first: true
            }]
        );
        assert_eq!(r.input(ring(1, true), 1), vec![]);
        assert_eq!(r.input(ring(1, false), 1), vec![]);
        assert_eq!(
            r.input(
                I::Failed {
                    attempt: a(0),
                    status: 486
                },
                2
            ),
            vec![
                O::Disconnect { attempt: a(0) },
                ended(0, 486, AttemptEnd::Failed(486))
            ]
        );
        assert_eq!(r.dial.early_media(), None);
        assert_eq!(
            r.input(ring(1, true), 3),
            vec![O::EarlyMedia {
                attempt: a(1),
                first: false
            }]
        );
        // Its own early media is bridged already: no disconnect on answer.
        assert_eq!(
            r.input(I::Answered { attempt: a(1) }, 4),
            vec![O::Connected { attempt: a(1) }]
        );
        assert_eq!(r.dial.early_media(), None);
        r.finish();
    }

    #[test]
    fn answer_elsewhere_unbridges_early_media_first() {
        let (mut r, _) = Run::new(par(2, Some(30)), false);
        let early = I::Ringing {
            attempt: a(0),
            early_media: true,
        };
        r.input(early, 1);
        assert_eq!(
            r.input(I::Answered { attempt: a(1) }, 2),
            vec![
                O::Disconnect { attempt: a(0) },
                O::Connected { attempt: a(1) },
                elsewhere(0),
                ended(0, 487, AttemptEnd::CompletedElsewhere)
            ]
        );
        r.finish();
    }

    #[test]
    fn a_replaced_winner_is_hung_up_and_the_new_one_ends_the_dial() {
        let (mut r, _) = Run::new(seq(&[Some(10)]), true);
        // Nothing connected: nothing to replace.
        assert_eq!(r.dial.replace_winner(None), None);
        r.input(I::Launched { attempt: a(0) }, 0);
        r.input(I::Answered { attempt: a(0) }, 1);
        let new = r.dial.replace_winner(Some("why".into()));
        assert_eq!(new, Some(a(1)));
        assert_eq!(
            r.drain(),
            vec![
                O::Hangup {
                    attempt: a(0),
                    reason: Some("why".into())
                },
                ended(0, 200, AttemptEnd::Answered),
                O::Adopted { attempt: a(1) }
            ]
        );
        assert_eq!(r.dial.connected(), Some(a(1)));
        // The old winner's BYE changes nothing; the new one's ends the dial.
        assert_eq!(r.input(I::RemoteBye { attempt: a(0) }, 2), vec![]);
        assert_eq!(
            r.input(I::RemoteBye { attempt: a(1) }, 3),
            vec![ended(1, 200, AttemptEnd::Answered), O::Ended]
        );
        r.finish();
    }

    #[test]
    fn connected_callee_bye_ends_the_dial() {
        let (mut r, _) = Run::new(seq(&[Some(10), Some(10)]), false);
        r.input(I::Launched { attempt: a(0) }, 0);
        assert_eq!(
            r.input(I::Answered { attempt: a(0) }, 1),
            vec![O::Connected { attempt: a(0) }]
        );
        // A repeated report of the winner's 200 is not a second winner.
        assert_eq!(r.input(I::Answered { attempt: a(0) }, 1), vec![]);
        assert_eq!(r.timeout(10), vec![]);
        assert_eq!(
            r.input(I::RemoteBye { attempt: a(0) }, 50),
            vec![ended(0, 200, AttemptEnd::Answered), O::Ended]
        );
        assert!(r.dial.is_finished());
        // Nothing re-dials or re-bridges afterwards.
        assert_eq!(
            r.input(
                I::Failed {
                    attempt: a(0),
                    status: 500
                },
                51
            ),
            vec![]
        );
        assert_eq!(
            r.input(I::Answered { attempt: a(0) }, 51),
            vec![O::ByeLate { attempt: a(0) }]
        );
        r.finish();
    }

    #[test]
    fn stop_after_connect_hangs_up_the_winner() {
        let (mut r, _) = Run::new(par(1, Some(30)), false);
        r.input(I::Answered { attempt: a(0) }, 1);
        let reason = "Q.850;cause=16;text=\"NORMAL_CLEARING\"";
        assert_eq!(
            r.stop(Some(reason)),
            vec![
                O::Hangup {
                    attempt: a(0),
                    reason: Some(reason.into())
                },
                ended(0, 200, AttemptEnd::Answered)
            ]
        );
        assert_eq!(r.input(I::RemoteBye { attempt: a(0) }, 2), vec![]);
        r.finish();
    }

    #[test]
    fn unknown_and_stale_inputs_are_ignored() {
        let (mut r, _) = Run::new(seq(&[Some(5), None]), false);
        let stranger = a(7);
        for input in [
            I::Launched { attempt: stranger },
            I::LaunchFailed {
                attempt: stranger,
                status: 404,
            },
            I::Ringing {
                attempt: stranger,
                early_media: true,
            },
            I::Failed {
                attempt: stranger,
                status: 486,
            },
            I::RemoteBye { attempt: stranger },
        ] {
            assert_eq!(r.input(input, 1), vec![]);
        }
        assert_eq!(
            r.input(I::Answered { attempt: stranger }, 1),
            vec![O::ByeLate { attempt: stranger }]
        );
        // Timed out while still launching; its late reports are stale.
        assert_eq!(
            r.timeout(5),
            vec![hangup(0), ended(0, 487, AttemptEnd::NoAnswer), launch(1)]
        );
        assert_eq!(r.input(I::Launched { attempt: a(0) }, 5), vec![]);
        let ring = I::Ringing {
            attempt: a(0),
            early_media: true,
        };
        assert_eq!(r.input(ring, 5), vec![]);
        assert_eq!(
            r.input(
                I::Failed {
                    attempt: a(0),
                    status: 487
                },
                5
            ),
            vec![]
        );
        // No timeout on the second destination: it rings until something happens.
        assert_eq!(r.dial.poll_timeout(), None);
        assert_eq!(r.timeout(10_000), vec![]);
        r.finish();
    }

    #[test]
    fn caller_answered_meanwhile_switches_to_local_ringback() {
        let (mut r, _) = Run::new(seq(&[Some(30)]), false);
        let ring = I::Ringing {
            attempt: a(0),
            early_media: false,
        };
        assert_eq!(r.input(ring, 1), vec![O::Ringing]);
        r.dial.caller_answered();
        assert_eq!(r.drain(), vec![O::StartRingback]);
        r.dial.caller_answered();
        assert_eq!(r.input(ring, 2), vec![]);
        assert_eq!(
            r.input(I::Answered { attempt: a(0) }, 3),
            vec![O::StopRingback, O::Connected { attempt: a(0) }]
        );
        r.finish();
    }

    #[test]
    fn stop_during_ringback_stops_it() {
        let (mut r, _) = Run::new(seq(&[Some(30)]), true);
        let ring = I::Ringing {
            attempt: a(0),
            early_media: false,
        };
        assert_eq!(r.input(ring, 1), vec![O::StartRingback]);
        assert_eq!(
            r.stop(None),
            vec![
                O::StopRingback,
                hangup(0),
                ended(0, 487, AttemptEnd::Cancelled)
            ]
        );
        r.finish();
    }

    #[test]
    fn no_timer_without_timeouts_and_empty_block_fails_at_once() {
        let (r, _) = Run::new(par(2, None), false);
        assert_eq!(r.dial.poll_timeout(), None);
        r.finish();
        let (r, out) = Run::new(seq(&[]), false);
        assert_eq!(out, vec![O::Failed(BridgeResult::NoAnswer)]);
        assert!(r.dial.is_finished());
        r.finish();
    }

    #[test]
    fn attempt_end_maps_to_leg_status_and_cause() {
        assert_eq!(AttemptEnd::Answered.leg_status(), LegStatus::Answer);
        assert_eq!(
            AttemptEnd::CompletedElsewhere.leg_status(),
            LegStatus::Cancel
        );
        assert_eq!(AttemptEnd::NoAnswer.leg_status(), LegStatus::NoAnswer);
        assert_eq!(AttemptEnd::Failed(486).leg_status(), LegStatus::Busy);
        assert_eq!(AttemptEnd::NoAnswer.hangup_cause(), HangupCause::NoAnswer);
        assert_eq!(
            AttemptEnd::Cancelled.hangup_cause(),
            HangupCause::OriginatorCancel
        );
        assert_eq!(
            AttemptEnd::Failed(486).hangup_cause(),
            HangupCause::UserBusy
        );
    }
}
