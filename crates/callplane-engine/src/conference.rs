//! Conferences: each tenant's named rooms that CONFERENCE blocks join. This registry owns who
//! is in which conference (for `maxParticipants` and `endConferenceOnExit`) and the room's
//! handle; a conference exists from its first join until its last member leaves. It is touched
//! only when a caller joins or leaves, never per packet.

use crate::flow::{ConferenceResult, Input};
use callplane_media::{MediaEngine, Room};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::mpsc;

/// Why a caller could not join.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinError {
    /// `maxParticipants` are present already.
    Full,
}

struct Participant {
    call: String,
    end_on_exit: bool,
    /// The member's Call actor, told when the conference ends under it.
    inputs: mpsc::UnboundedSender<Input>,
}

struct Conference {
    room: Arc<Room>,
    members: Vec<Participant>,
}

/// Every live conference of this node, by (tenant, conference name).
pub struct Conferences {
    media: MediaEngine,
    rooms: Mutex<HashMap<(String, String), Conference>>,
}

impl Conferences {
    pub fn new(media: MediaEngine) -> Self {
        Conferences {
            media,
            rooms: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<(String, String), Conference>> {
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds call `call` to the conference (created if it does not exist) and returns its room.
    pub fn join(
        &self,
        tenant: &str,
        name: &str,
        call: &str,
        max_participants: u32,
        end_on_exit: bool,
        inputs: mpsc::UnboundedSender<Input>,
    ) -> Result<Arc<Room>, JoinError> {
        let mut rooms = self.lock();
        let conf = rooms
            .entry((tenant.to_string(), name.to_string()))
            .or_insert_with(|| Conference {
                room: Arc::new(self.media.create_room()),
                members: Vec::new(),
            });
        if conf.members.len() >= max_participants as usize {
            return Err(JoinError::Full);
        }
        conf.members.push(Participant {
            call: call.to_string(),
            end_on_exit,
            inputs,
        });
        Ok(conf.room.clone())
    }

    /// Call `call` left (hung up, interrupted, or took note that the conference ended). When it
    /// was an `endConferenceOnExit` member, every other member is told the conference ended.
    pub fn leave(&self, tenant: &str, name: &str, call: &str) {
        let mut rooms = self.lock();
        let key = (tenant.to_string(), name.to_string());
        let Some(conf) = rooms.get_mut(&key) else {
            return;
        };
        let Some(at) = conf.members.iter().position(|p| p.call == call) else {
            return;
        };
        let left = conf.members.remove(at);
        if left.end_on_exit {
            for p in conf.members.drain(..) {
                let _ = p
                    .inputs
                    .send(Input::ConferenceLeft(ConferenceResult::Ended));
            }
        }
        if conf.members.is_empty() {
            rooms.remove(&key);
        }
    }

    /// Members present in a conference (0 when it does not exist).
    pub fn participants(&self, tenant: &str, name: &str) -> usize {
        self.lock()
            .get(&(tenant.to_string(), name.to_string()))
            .map_or(0, |c| c.members.len())
    }
}
