//! Legs: one per SIP dialog. The sans-IO part is a leg's explicit state ([`LegState`], moved
//! by what its dialog reports) and its owner `(owner id, epoch)`: a leg reports to whoever owns
//! it now, moving it to another owner bumps the epoch, and an owner's [`Mailbox`] drops events
//! addressed to an epoch it no longer holds (sent before a move, read after it). The IO part is
//! the task that owns a dialog ([`spawn_outbound`] for a call we placed, [`spawn_inbound`] for
//! a call offered to us): it forwards the dialog's events to the current owner and carries out
//! the owner's commands (ringing, answer, reject, hang-up) and moves, so the leg outlives the
//! owner that created it once it is moved, and no owner awaits a SIP transaction.

use callplane_media::{MediaEvent, MediaLeg};
use callplane_sip::{Answerer, InboundEvent, InboundLeg, OutboundEvent, OutboundLeg, Reinviter};
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::mpsc;

/// A leg's identity within its node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LegId(pub u64);

/// Who a leg reports to: an owner (a session, later a queue or the API) and the epoch of the
/// leg's current stay with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub id: u64,
    pub epoch: u64,
}

/// Where a leg's dialog is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LegState {
    /// INVITE sent or received, nothing back yet.
    Calling,
    /// 180 without media.
    Ringing,
    /// 183 with media (early media flows).
    EarlyMedia,
    Answered,
    /// Answered, and the far end put us on hold (or we hold it).
    Held,
    /// We sent CANCEL or BYE and wait for its end.
    Ending,
    Ended,
}

impl LegState {
    /// Every state, in the order a leg goes through them.
    pub const ALL: [LegState; 7] = [
        LegState::Calling,
        LegState::Ringing,
        LegState::EarlyMedia,
        LegState::Answered,
        LegState::Held,
        LegState::Ending,
        LegState::Ended,
    ];

    /// The names of [`LegState::ALL`] (the `enum` of the API's state fields).
    pub fn names() -> Vec<&'static str> {
        LegState::ALL.iter().map(|s| s.as_str()).collect()
    }

    /// The state's name in events (`calling`, `ringing`, `early_media`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            LegState::Calling => "calling",
            LegState::Ringing => "ringing",
            LegState::EarlyMedia => "early_media",
            LegState::Answered => "answered",
            LegState::Held => "held",
            LegState::Ending => "ending",
            LegState::Ended => "ended",
        }
    }

    /// The state after an outbound dialog's event (`early` = a 183 with usable SDP, `hold` =
    /// a re-INVITE that holds). An ended leg stays ended.
    pub fn after_outbound(self, ev: &OutboundEvent, early: bool, hold: bool) -> LegState {
        use LegState::*;
        match (self, ev) {
            (Ended, _) => Ended,
            (Calling | Ringing | EarlyMedia, OutboundEvent::Ringing { .. }) => {
                if early || self == EarlyMedia {
                    EarlyMedia
                } else {
                    Ringing
                }
            }
            (Ending, OutboundEvent::Answered { .. }) => Ending,
            (_, OutboundEvent::Answered { .. }) => Answered,
            (_, OutboundEvent::Failed { .. } | OutboundEvent::RemoteBye) => Ended,
            (Answered | Held, OutboundEvent::Reinvite { .. }) => {
                if hold {
                    Held
                } else {
                    Answered
                }
            }
            (s, _) => s,
        }
    }

    /// The state after an inbound dialog's event (`hold` = a re-INVITE that holds).
    pub fn after_inbound(self, ev: &InboundEvent, hold: bool) -> LegState {
        use LegState::*;
        match (self, ev) {
            (Ended, _) => Ended,
            (_, InboundEvent::Cancelled | InboundEvent::RemoteBye | InboundEvent::Failed(_)) => {
                Ended
            }
            (Answered | Held, InboundEvent::Reinvite { .. }) => {
                if hold {
                    Held
                } else {
                    Answered
                }
            }
            (s, _) => s,
        }
    }

    /// Whether the dialog is over (nothing more will come from it).
    pub fn is_ended(self) -> bool {
        self == LegState::Ended
    }
}

/// One event of a leg, addressed to the owner (and epoch) it was sent to.
#[derive(Debug)]
pub struct Addressed<E> {
    pub leg: LegId,
    pub owner: Owner,
    pub event: E,
}

/// An owner's side: which legs it holds, and in which epoch. Events from legs it does not hold
/// now, or from an epoch before its current one, are dropped.
#[derive(Debug)]
pub struct Mailbox {
    owner_id: u64,
    held: HashMap<LegId, u64>,
}

impl Mailbox {
    pub fn new(owner_id: u64) -> Self {
        Mailbox {
            owner_id,
            held: HashMap::new(),
        }
    }

    pub fn owner_id(&self) -> u64 {
        self.owner_id
    }

    /// The owner takes `leg` in `epoch` (a new leg: 1; a leg moved here: its bumped epoch).
    pub fn adopt(&mut self, leg: LegId, epoch: u64) -> Owner {
        self.held.insert(leg, epoch);
        Owner {
            id: self.owner_id,
            epoch,
        }
    }

    /// The leg was moved away (or ended): nothing more from it is accepted.
    pub fn release(&mut self, leg: LegId) {
        self.held.remove(&leg);
    }

    /// Who `leg` reports to while this owner holds it.
    pub fn owner_of(&self, leg: LegId) -> Option<Owner> {
        self.held.get(&leg).map(|&epoch| Owner {
            id: self.owner_id,
            epoch,
        })
    }

    /// The event, if it is addressed to this owner in the leg's current epoch.
    pub fn accept<E>(&self, a: Addressed<E>) -> Option<(LegId, E)> {
        let current = self.held.get(&a.leg)?;
        (a.owner.id == self.owner_id && a.owner.epoch == *current).then_some((a.leg, a.event))
    }
}

/// The epoch a leg gets when it moves from `from` to a new owner.
pub fn moved(from: Owner, to_owner_id: u64) -> Owner {
    Owner {
        id: to_owner_id,
        epoch: from.epoch + 1,
    }
}

/// A leg moved away from owner `from` arrives at `mailbox`'s owner: adopted there in its next
/// epoch, its events sent on `events` from now on. True when its dialog ended before it could
/// move (it is gone as it arrives).
pub fn arrive<E>(
    leg: &LegHandle<E>,
    from: Owner,
    mailbox: &mut Mailbox,
    events: mpsc::UnboundedSender<Addressed<E>>,
) -> bool {
    let here = moved(from, mailbox.owner_id());
    mailbox.adopt(leg.id, here.epoch);
    !leg.move_to(here, events)
}

/// Commands to an outbound leg's task.
pub enum LegCommand<E> {
    /// CANCEL before answer, BYE after; an RFC 3326 Reason value.
    Hangup(Option<String>),
    /// Report to another owner from now on (its epoch must be newer).
    MoveTo {
        owner: Owner,
        events: mpsc::UnboundedSender<Addressed<E>>,
    },
}

/// Handle to an outbound leg's task.
pub struct LegHandle<E> {
    pub id: LegId,
    commands: mpsc::UnboundedSender<LegCommand<E>>,
    reinviter: Reinviter,
}

impl<E> LegHandle<E> {
    /// Hangs the leg up (dropping every handle does too, without a Reason).
    pub fn hangup(&self, reason: Option<String>) {
        let _ = self.commands.send(LegCommand::Hangup(reason));
    }

    /// Hands the leg to another owner. False when the leg's task is gone (its dialog is over).
    pub fn move_to(&self, owner: Owner, events: mpsc::UnboundedSender<Addressed<E>>) -> bool {
        self.commands
            .send(LegCommand::MoveTo { owner, events })
            .is_ok()
    }

    /// What sends re-INVITEs on the leg's dialog (hold, resume), from a task of the owner's.
    pub fn reinviter(&self) -> Reinviter {
        self.reinviter.clone()
    }
}

/// How long a hung-up leg's task keeps reading its dialog so the final transaction completes.
const DRAIN: Duration = Duration::from_secs(32);

/// Spawns the task that owns `leg`: it forwards the dialog's events (mapped by `wrap`) to the
/// current owner and tracks the leg's state; it ends with the dialog. With `wrap_media`, the
/// events of the leg's media (keypad digits) are forwarded to the current owner too, so they
/// follow the leg when it moves.
pub fn spawn_outbound<E: Send + 'static>(
    id: LegId,
    mut leg: OutboundLeg,
    mut media: MediaLeg,
    owner: Owner,
    events: mpsc::UnboundedSender<Addressed<E>>,
    wrap: fn(OutboundEvent) -> E,
    wrap_media: Option<fn(MediaEvent) -> Option<E>>,
) -> LegHandle<E> {
    let (tx, mut commands) = mpsc::unbounded_channel::<LegCommand<E>>();
    let reinviter = leg.reinviter();
    let mut media_events = wrap_media.and_then(|_| media.take_events());
    tokio::spawn(async move {
        // The leg's RTP endpoint: closed when the dialog is over (or hung up), not before.
        let mut media = Some(media);
        let mut owner = owner;
        let mut events = events;
        let mut state = LegState::Calling;
        loop {
            tokio::select! {
                cmd = commands.recv() => match cmd {
                    Some(LegCommand::MoveTo { owner: o, events: e }) => {
                        if o.epoch > owner.epoch {
                            owner = o;
                            events = e;
                        }
                    }
                    hangup => {
                        let reason = match hangup {
                            Some(LegCommand::Hangup(r)) => r,
                            _ => None,
                        };
                        state = LegState::Ending;
                        // Boxed, here and below: the hang-up's state would otherwise be part
                        // of every leg task's future for the whole call.
                        // No media while the CANCEL/BYE and the last transaction run: the
                        // port is free again at once.
                        drop(media.take());
                        Box::pin(leg.hangup(reason)).await;
                        let drain = async { while leg.next_event().await.is_some() {} };
                        let _ = Box::pin(tokio::time::timeout(DRAIN, drain)).await;
                        tracing::trace!(leg = id.0, ?state, "leg ended");
                        return;
                    }
                },
                ev = recv_media(&mut media_events) => match (ev, wrap_media) {
                    (Some(ev), Some(wrap_media)) => {
                        if let Some(event) = wrap_media(ev) {
                            let _ = events.send(Addressed { leg: id, owner, event });
                        }
                    }
                    _ => media_events = None,
                },
                ev = leg.next_event() => {
                    let Some(ev) = ev else { return };
                    let early = matches!(&ev, OutboundEvent::Ringing { sdp: Some(_), .. });
                    let hold = matches!(&ev, OutboundEvent::Reinvite { sdp: Some(s), .. }
                        if s.contains("a=sendonly") || s.contains("a=inactive"));
                    state = state.after_outbound(&ev, early, hold);
                    let addressed = Addressed { leg: id, owner, event: wrap(ev) };
                    // The owner is gone and no one took the leg over: nothing left to report.
                    if events.send(addressed).is_err() || state.is_ended() {
                        // A move asked for meanwhile: the new owner learns the leg is over.
                        while let Ok(cmd) = commands.try_recv() {
                            if let LegCommand::MoveTo { owner: o, events: e } = cmd {
                                if o.epoch > owner.epoch {
                                    let event = wrap(OutboundEvent::RemoteBye);
                                    let _ = e.send(Addressed { leg: id, owner: o, event });
                                }
                            }
                        }
                        return;
                    }
                }
            }
        }
    });
    LegHandle {
        id,
        commands: tx,
        reinviter,
    }
}

/// The next media event, or never when there is no receiver.
async fn recv_media(rx: &mut Option<mpsc::Receiver<MediaEvent>>) -> Option<MediaEvent> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Commands to an inbound leg's task.
pub enum InboundCommand {
    /// 180, or 183 with early media when an SDP is given.
    Ringing(Option<String>),
    /// A final non-2xx with an RFC 3326 Reason value; the leg ends.
    Reject { status: u16, reason: Option<String> },
    /// BYE after answer (a Reason value); `done` is told once its transaction is over.
    Hangup {
        reason: Option<String>,
        done: Option<tokio::sync::oneshot::Sender<()>>,
    },
    /// Report to another owner from now on (its epoch must be newer).
    MoveTo {
        owner: Owner,
        events: mpsc::UnboundedSender<Addressed<InboundEvent>>,
    },
}

/// Handle to an inbound leg's task. Dropping it before answer rejects the call (500), after
/// answer hangs it up.
pub struct InboundLegHandle {
    pub id: LegId,
    commands: mpsc::UnboundedSender<InboundCommand>,
    answerer: Answerer,
    reinviter: Reinviter,
}

impl InboundLegHandle {
    pub fn ringing(&self, sdp: Option<String>) {
        let _ = self.commands.send(InboundCommand::Ringing(sdp));
    }

    /// 200 OK with our SDP answer, sent now (not queued), so the owner knows whether the
    /// call is answered: an error when the caller cancelled first.
    pub fn answer(&self, sdp: String) -> Result<(), callplane_sip::SipError> {
        self.answerer.answer(sdp)
    }

    pub fn reject(&self, status: u16, reason: Option<String>) {
        let _ = self
            .commands
            .send(InboundCommand::Reject { status, reason });
    }

    /// Sends BYE; the returned receiver fires when the BYE's transaction is over (or at once
    /// when the leg had already ended).
    pub fn hangup(&self, reason: Option<String>) -> tokio::sync::oneshot::Receiver<()> {
        let (done, over) = tokio::sync::oneshot::channel();
        let _ = self.commands.send(InboundCommand::Hangup {
            reason,
            done: Some(done),
        });
        over
    }

    /// Hands the leg to another owner.
    pub fn move_to(&self, owner: Owner, events: mpsc::UnboundedSender<Addressed<InboundEvent>>) {
        let _ = self.commands.send(InboundCommand::MoveTo { owner, events });
    }

    /// What sends re-INVITEs on the leg's dialog (hold, resume), from a task of the owner's.
    pub fn reinviter(&self) -> Reinviter {
        self.reinviter.clone()
    }
}

/// Spawns the task that owns an inbound `leg` (already past its INVITE's checks): it carries
/// out the owner's commands in order and forwards the dialog's events, tracking the leg's
/// state; it ends with the dialog.
pub fn spawn_inbound(
    id: LegId,
    mut leg: InboundLeg,
    media: MediaLeg,
    owner: Owner,
    events: mpsc::UnboundedSender<Addressed<InboundEvent>>,
) -> InboundLegHandle {
    let (tx, mut commands) = mpsc::unbounded_channel::<InboundCommand>();
    let answerer = leg.answerer();
    let reinviter = leg.reinviter();
    tokio::spawn(async move {
        // The caller's RTP endpoint lives as long as the dialog (and moves with the leg).
        let _media = media;
        let mut owner = owner;
        let mut events = events;
        let mut state = LegState::Calling;
        loop {
            if leg.is_answered() && !matches!(state, LegState::Answered | LegState::Held) {
                state = LegState::Answered;
            }
            tokio::select! {
                // The owner's commands first: a reject queued before the owner went away is
                // still carried out.
                biased;
                cmd = commands.recv() => match cmd {
                    Some(InboundCommand::Ringing(sdp)) => {
                        if matches!(state, LegState::Calling | LegState::Ringing) {
                            state = if sdp.is_some() { LegState::EarlyMedia } else { LegState::Ringing };
                        }
                        leg.ringing(sdp);
                    }
                    Some(InboundCommand::MoveTo { owner: o, events: e }) => {
                        if o.epoch > owner.epoch {
                            owner = o;
                            events = e;
                        }
                    }
                    Some(InboundCommand::Reject { status, reason }) => {
                        leg.reject(status, reason);
                        state = LegState::Ended;
                        tracing::trace!(leg = id.0, ?state, "leg rejected");
                        return;
                    }
                    ended => {
                        let (reason, done) = match ended {
                            Some(InboundCommand::Hangup { reason, done }) => (reason, done),
                            _ => (None, None),
                        };
                        if leg.is_answered() {
                            Box::pin(leg.hangup(reason)).await;
                        } else {
                            // Every owner is gone before answer: the call cannot go on.
                            leg.reject(500, reason);
                        }
                        if let Some(done) = done {
                            let _ = done.send(());
                        }
                        tracing::trace!(leg = id.0, "leg ended");
                        return;
                    }
                },
                ev = leg.next_event() => {
                    let Some(ev) = ev else { return };
                    let hold = matches!(&ev, InboundEvent::Reinvite { sdp: Some(s), .. }
                        if s.contains("a=sendonly") || s.contains("a=inactive"));
                    state = state.after_inbound(&ev, hold);
                    let addressed = Addressed { leg: id, owner, event: ev };
                    // An owner that is gone still has its last commands queued (or none,
                    // and then its dropped handle ends the leg): keep going until then.
                    let _ = events.send(addressed);
                    if state.is_ended() {
                        return;
                    }
                }
            }
        }
    });
    InboundLegHandle {
        id,
        commands: tx,
        answerer,
        reinviter,
    }
}

/// What an adapter ([`adapt`]) asks of the leg it wraps, whatever that leg's events are.
pub trait LegControl<E>: Send + 'static {
    /// CANCEL before answer, BYE after.
    fn hang_up(&self, reason: Option<String>);
    /// Report to `owner` through `events` from now on.
    fn report_to(&self, owner: Owner, events: mpsc::UnboundedSender<Addressed<E>>);
}

impl<E: Send + 'static> LegControl<E> for LegHandle<E> {
    fn hang_up(&self, reason: Option<String>) {
        self.hangup(reason);
    }
    fn report_to(&self, owner: Owner, events: mpsc::UnboundedSender<Addressed<E>>) {
        self.move_to(owner, events);
    }
}

impl LegControl<InboundEvent> for InboundLegHandle {
    fn hang_up(&self, reason: Option<String>) {
        // Whether the BYE's transaction is over is not awaited here.
        drop(self.hangup(reason));
    }
    fn report_to(&self, owner: Owner, events: mpsc::UnboundedSender<Addressed<InboundEvent>>) {
        self.move_to(owner, events);
    }
}

/// A leg's media events, and what of them its owner takes (as its `Out` events).
pub type MediaEvents<Out> = (mpsc::Receiver<MediaEvent>, fn(MediaEvent) -> Option<Out>);

/// Hands a leg whose task speaks `In` events (a caller's leg: [`InboundEvent`]s, or an
/// originated call's) to an owner that takes `Out` events (a session's dialled parties): a
/// task of its own takes the leg over in `epoch` (newer than its owner's), maps its events
/// (`None`: dropped) and the digits of its `media` events, and carries out the new handle's
/// commands. Events that come before the new handle's first move are kept and delivered
/// then. Dropping every handle hangs the leg up; when the leg's dialog is over the task ends
/// after its last event (and `move_to` says so).
pub fn adapt<In: Send + 'static, Out: Send + 'static>(
    id: LegId,
    inner: impl LegControl<In>,
    reinviter: Reinviter,
    epoch: Owner,
    map: fn(In) -> Option<Out>,
    media: Option<MediaEvents<Out>>,
) -> LegHandle<Out> {
    let (tx, mut commands) = mpsc::unbounded_channel::<LegCommand<Out>>();
    let (in_tx, mut from_leg) = mpsc::unbounded_channel::<Addressed<In>>();
    inner.report_to(epoch, in_tx);
    let (mut media_events, media_map) = match media {
        Some((rx, f)) => (Some(rx), Some(f)),
        None => (None, None),
    };
    tokio::spawn(async move {
        let mut to: Option<(Owner, mpsc::UnboundedSender<Addressed<Out>>)> = None;
        let mut kept: Vec<Out> = Vec::new();
        let deliver = |to: &Option<(Owner, mpsc::UnboundedSender<Addressed<Out>>)>,
                       kept: &mut Vec<Out>,
                       event: Out| match to {
            Some((owner, events)) => {
                let _ = events.send(Addressed {
                    leg: id,
                    owner: *owner,
                    event,
                });
            }
            None => kept.push(event),
        };
        loop {
            tokio::select! {
                biased;
                cmd = commands.recv() => match cmd {
                    Some(LegCommand::MoveTo { owner, events }) => {
                        if to.as_ref().is_some_and(|(o, _)| o.epoch >= owner.epoch) {
                            continue;
                        }
                        for event in kept.drain(..) {
                            let _ = events.send(Addressed { leg: id, owner, event });
                        }
                        to = Some((owner, events));
                    }
                    Some(LegCommand::Hangup(reason)) => {
                        inner.hang_up(reason);
                        return;
                    }
                    None => {
                        inner.hang_up(None);
                        return;
                    }
                },
                ev = recv_media(&mut media_events) => match (ev, media_map) {
                    (Some(ev), Some(f)) => {
                        if let Some(event) = f(ev) {
                            deliver(&to, &mut kept, event);
                        }
                    }
                    _ => media_events = None,
                },
                ev = from_leg.recv() => {
                    // The dialog is over and its last event delivered.
                    let Some(a) = ev else { return };
                    if let Some(event) = map(a.event) {
                        deliver(&to, &mut kept, event);
                    }
                }
            }
        }
    });
    LegHandle {
        id,
        commands: tx,
        reinviter,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inbound_states_follow_the_dialog() {
        use LegState::*;
        let bye = InboundEvent::RemoteBye;
        let dtmf = InboundEvent::Dtmf('5');
        assert_eq!(Answered.after_inbound(&dtmf, false), Answered);
        assert_eq!(Answered.after_inbound(&bye, false), Ended);
        assert_eq!(
            Ringing.after_inbound(&InboundEvent::Cancelled, false),
            Ended
        );
        assert_eq!(
            Answered.after_inbound(&InboundEvent::Failed("no ACK".into()), false),
            Ended
        );
        assert_eq!(Ended.after_inbound(&dtmf, false), Ended);
        assert_eq!(Held.after_inbound(&InboundEvent::Confirmed, false), Held);
    }

    #[test]
    fn a_late_event_to_an_old_epoch_is_dropped() {
        let mut first = Mailbox::new(1);
        let mut second = Mailbox::new(2);
        let leg = LegId(7);
        let o1 = first.adopt(leg, 1);
        // An event the leg sent while owned by the first session.
        let early = Addressed {
            leg,
            owner: o1,
            event: "ringing",
        };
        assert_eq!(first.accept(early), Some((leg, "ringing")));
        // Moved to the second owner: epoch 2. A late event addressed to epoch 1 reaches
        // neither the old owner (it released the leg) nor the new one.
        let o2 = moved(o1, second.owner_id());
        assert_eq!(o2, Owner { id: 2, epoch: 2 });
        first.release(leg);
        second.adopt(leg, o2.epoch);
        let late = || Addressed {
            leg,
            owner: o1,
            event: "dtmf 5",
        };
        assert_eq!(first.accept(late()), None);
        assert_eq!(second.accept(late()), None);
        assert_eq!(
            second.accept(Addressed {
                leg,
                owner: o2,
                event: "bye"
            }),
            Some((leg, "bye"))
        );
        // And a leg moved back gets a newer epoch again; the old stay's events stay dropped.
        let o3 = moved(o2, 1);
        second.release(leg);
        first.adopt(leg, o3.epoch);
        assert_eq!(first.accept(late()), None);
        assert_eq!(
            first.accept(Addressed {
                leg,
                owner: o3,
                event: "x"
            }),
            Some((leg, "x"))
        );
    }

    #[test]
    fn states_follow_the_dialog() {
        use LegState::*;
        let ringing = OutboundEvent::Ringing {
            status: 180,
            sdp: None,
        };
        let answered = OutboundEvent::Answered { sdp: None };
        assert_eq!(Calling.after_outbound(&ringing, false, false), Ringing);
        assert_eq!(Ringing.after_outbound(&ringing, true, false), EarlyMedia);
        assert_eq!(
            EarlyMedia.after_outbound(&ringing, false, false),
            EarlyMedia
        );
        assert_eq!(EarlyMedia.after_outbound(&answered, false, false), Answered);
        // A 200 after we cancelled does not make the leg answered.
        assert_eq!(Ending.after_outbound(&answered, false, false), Ending);
        assert_eq!(
            Answered.after_outbound(&OutboundEvent::RemoteBye, false, false),
            Ended
        );
        assert_eq!(
            Ended.after_outbound(&answered, false, false),
            Ended,
            "an ended leg stays ended"
        );
        assert_eq!(
            Calling.after_outbound(&OutboundEvent::Failed { status: 486 }, false, false),
            Ended
        );
    }
}
