//! The map of active calls: call UUID → the handle of its Call actor (tenant and mailbox).
//! It holds handles only; a call's state stays in its actor, which adds itself when it starts
//! and removes itself when it ends.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use tokio::sync::mpsc;

/// What the API (or later a queue or conference) can ask of a running call.
#[derive(Debug)]
pub enum CallCommand {
    /// Stop the running block; a call under CALL_CONTROL sends its next webhook request at once.
    Interrupt,
    /// Play ANNOUNCEMENT / SAY blocks into the call's connected bridge, mixed with both
    /// parties' audio and heard by both; answered once accepted (before the audio renders).
    PlayIntoBridge {
        blocks: Vec<crate::blocks::Block>,
        reply: tokio::sync::oneshot::Sender<Result<(), PlayRefused>>,
    },
}

/// Why blocks cannot be played into a call now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlayRefused {
    /// No callee is connected (the call is in its plan, ringing, or its callee hung up).
    NotConnected,
}

#[derive(Clone)]
pub struct CallHandle {
    pub tenant: String,
    pub commands: mpsc::UnboundedSender<CallCommand>,
}

#[derive(Default)]
pub struct CallRegistry {
    calls: Mutex<HashMap<String, CallHandle>>,
}

impl CallRegistry {
    pub fn insert(&self, call_id: &str, handle: CallHandle) {
        self.lock().insert(call_id.to_string(), handle);
    }

    pub fn remove(&self, call_id: &str) {
        self.lock().remove(call_id);
    }

    pub fn get(&self, call_id: &str) -> Option<CallHandle> {
        self.lock().get(call_id).cloned()
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
