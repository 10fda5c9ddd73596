//! Calls driven by an application (custom IVR): an inbound call to a number an application
//! controls (`"control": true` on the events socket) is offered to it (`call.offered`) and
//! waits, ringing, for a claim; the first claim wins and the call's plan never runs — the
//! application answers it and sends it blocks. Unclaimed within the offer timeout, the plan
//! runs as usual. Blocks sent to a call in its plan run at once and the plan goes on after.

use super::*;

/// The numbers applications control now, by (tenant, number): how many control them.
#[derive(Default)]
pub struct Controllers {
    numbers: std::sync::Mutex<std::collections::HashMap<(String, String), usize>>,
}

/// One application's control of a number; dropping it gives the control up.
pub struct ControlRegistration {
    controllers: Arc<Controllers>,
    key: (String, String),
}

impl Drop for ControlRegistration {
    fn drop(&mut self) {
        let mut m = self.controllers.lock();
        if let Some(n) = m.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.key);
            }
        }
    }
}

impl Controllers {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<(String, String), usize>> {
        self.numbers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An application controls `number` of `tenant` until the registration is dropped.
    pub fn register(self: &Arc<Self>, tenant: &str, number: &str) -> ControlRegistration {
        let key = (tenant.to_string(), number.to_string());
        *self.lock().entry(key.clone()).or_insert(0) += 1;
        ControlRegistration {
            controllers: self.clone(),
            key,
        }
    }

    /// Whether an application controls `number` of `tenant` now.
    pub fn is_controlled(&self, tenant: &str, number: &str) -> bool {
        self.lock()
            .contains_key(&(tenant.to_string(), number.to_string()))
    }
}

impl Call {
    /// Offers the new call to the applications controlling its number: 180 Ringing, the
    /// `call.offered` event, and the plan waits for a claim until the offer timeout.
    pub(super) fn offer(&mut self) {
        let timeout = self.svc.offer_timeout;
        self.offer_deadline = Some(Instant::now() + timeout);
        self.leg.ringing(None);
        self.set_caller_state(LegState::Ringing);
        info!(call = %self.uuid, "offered to applications");
        self.emit(EventKind::Offered {
            from: self.caller.clone(),
            to: self.called.clone(),
            number: self.number.number.clone(),
            timeout_ms: timeout.as_millis() as u64,
        });
    }

    /// Nobody claimed the call in time: its plan runs.
    pub(super) fn offer_expired(&mut self) {
        if self.offer_deadline.take().is_none() {
            return;
        }
        info!(call = %self.uuid, "no application claimed the call: its plan runs");
        self.emit(EventKind::OfferExpired);
        self.flow.start(Instant::now());
    }

    /// [`CallCommand::Claim`]: the first claim of an offered call wins.
    pub(super) fn claim(
        &mut self,
        by: String,
        session: Option<String>,
    ) -> Result<CallInfo, CommandRefused> {
        if self.ended.is_some() {
            return Err(CommandRefused::Ending);
        }
        if self.controller.is_some() {
            return Err(CommandRefused::AlreadyClaimed);
        }
        if self.offer_deadline.take().is_none() {
            return Err(CommandRefused::NotOffered);
        }
        info!(call = %self.uuid, by = %by, "claimed by an application");
        self.flow.take_control();
        self.controller = Some(by.clone());
        self.controller_session = session;
        self.emit(EventKind::Claimed { by });
        Ok(self.snapshot())
    }

    /// [`CallCommand::ReleaseClaim`]: the events session that claimed the call ended (closed,
    /// and not resumed within its window). The call is handed back to its routing plan, which
    /// runs from its first block once the blocks the application sent are done.
    pub(super) fn release_claim(&mut self, session: &str) {
        if self.ended.is_some() || self.controller_session.as_deref() != Some(session) {
            return;
        }
        info!(call = %self.uuid, "the application that claimed the call is gone: its plan runs");
        self.give_back("gone");
    }

    /// When a claimed call that waits for its application (nothing running, no blocks sent)
    /// gives up on it: the claim idle timeout after it began to wait.
    pub(super) fn claim_idle_deadline(&mut self) -> Option<Instant> {
        let waiting = self.ended.is_none() && self.controller.is_some() && self.flow.is_waiting();
        if !waiting {
            self.idle_since = None;
            return None;
        }
        let since = *self.idle_since.get_or_insert_with(Instant::now);
        self.svc.claim_idle_timeout.map(|t| since + t)
    }

    /// A claimed call waited for its application for the claim idle timeout: the application
    /// is taken as stuck (a claim made over REST has no socket that could be seen to close),
    /// and the call goes back to its plan.
    pub(super) fn claim_idle(&mut self) {
        if self
            .claim_idle_deadline()
            .is_none_or(|d| d > Instant::now())
        {
            return;
        }
        info!(call = %self.uuid, "the claimed call waited too long for its application: its plan runs");
        self.give_back("idle");
    }

    /// The claim ends: `call.released` (`by`, `reason`) and the plan runs.
    fn give_back(&mut self, reason: &'static str) {
        self.controller_session = None;
        self.idle_since = None;
        let Some(by) = self.controller.take() else {
            return;
        };
        self.emit(EventKind::Released { by, reason });
        self.flow.release_control(Instant::now());
    }

    /// [`ControlCommand::Answer`]: a claimed call is answered on command.
    pub(super) fn answer_on_command(&mut self) -> Result<(), CommandRefused> {
        if self.answered {
            return Err(CommandRefused::AlreadyAnswered);
        }
        if self.controller.is_none() {
            return Err(CommandRefused::NotClaimed);
        }
        self.answer();
        if self.answered {
            Ok(())
        } else {
            // The caller cancelled first: its CANCEL arrives as an event.
            Err(CommandRefused::Ending)
        }
    }

    /// [`CallCommand::RunBlocks`]: blocks run now on a call in its plan or claimed, never on
    /// one dialling, connected or in a conference (what runs there is mixed in instead).
    pub(super) fn run_blocks(&mut self, blocks: Vec<Block>) -> Result<CallInfo, CommandRefused> {
        if self.ended.is_some() {
            return Err(CommandRefused::Ending);
        }
        if self.bridge.is_some() || self.conference.is_some() || self.conf_mode {
            return Err(CommandRefused::BlocksWhileConnected);
        }
        if self.offer_deadline.is_some() {
            return Err(CommandRefused::NotClaimed);
        }
        info!(call = %self.uuid, blocks = blocks.len(), "running blocks for the API");
        self.flow.handle(Input::RunBlocks(blocks), Instant::now());
        Ok(self.snapshot())
    }
}
