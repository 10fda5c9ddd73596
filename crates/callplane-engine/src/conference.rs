//! Conferences: each tenant's named rooms that CONFERENCE blocks join and calls turned into a
//! conference (`POST …/conference`) live in. This registry owns who is in which conference —
//! its participants are legs, present and departed (for `maxParticipants`,
//! `endConferenceOnExit` and the API's listings) — and the room's handle; a conference exists
//! from its first join until its last participant leaves. It is touched when a leg joins,
//! leaves or changes its flags, never per packet.

use crate::flow::{ConferenceResult, Input};
use callplane_media::{MediaEngine, Room};
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::mpsc;

/// Why a leg could not join.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinError {
    /// `maxParticipants` are present already.
    Full,
}

/// One leg in a conference, as the API lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "ConferenceParticipant")]
pub struct ParticipantInfo {
    /// `<call id>.<leg index>`.
    pub leg_id: String,
    pub call_id: String,
    /// Who it is: the caller's number, or the destination dialled.
    pub party: String,
    pub joined_at: DateTime<Utc>,
    pub left_at: Option<DateTime<Utc>>,
    pub muted: bool,
    pub held: bool,
    /// It turned its call into this conference (or was named its owner).
    pub owner: bool,
}

/// A conference as the API shows it: present participants first (in joining order), then the
/// departed ones.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "Conference")]
pub struct ConferenceInfo {
    pub name: String,
    pub tenant: String,
    pub created_at: DateTime<Utc>,
    pub present: usize,
    pub participants: Vec<ParticipantInfo>,
}

/// What a leg joins with.
pub struct Joining<'a> {
    pub tenant: &'a str,
    pub name: &'a str,
    pub call: &'a str,
    pub leg: u32,
    pub party: String,
    pub max_participants: u32,
    pub end_on_exit: bool,
    pub owner: bool,
    /// The leg's Call actor, told when the conference ends under it.
    pub inputs: mpsc::UnboundedSender<Input>,
}

struct Participant {
    call: String,
    leg: u32,
    end_on_exit: bool,
    inputs: mpsc::UnboundedSender<Input>,
    info: ParticipantInfo,
}

struct Conference {
    room: Arc<Room>,
    created: DateTime<Utc>,
    members: Vec<Participant>,
    departed: Vec<ParticipantInfo>,
}

/// Departed participants kept per conference (the oldest are forgotten beyond it).
const DEPARTED_KEPT: usize = 1000;

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

    /// Adds a leg to the conference (created if it does not exist) and returns its room.
    pub fn join(&self, j: Joining<'_>) -> Result<Arc<Room>, JoinError> {
        let mut rooms = self.lock();
        let conf = rooms
            .entry((j.tenant.to_string(), j.name.to_string()))
            .or_insert_with(|| Conference {
                room: Arc::new(self.media.create_room()),
                created: Utc::now(),
                members: Vec::new(),
                departed: Vec::new(),
            });
        if conf.members.len() >= j.max_participants as usize {
            return Err(JoinError::Full);
        }
        conf.members.push(Participant {
            call: j.call.to_string(),
            leg: j.leg,
            end_on_exit: j.end_on_exit,
            inputs: j.inputs,
            info: ParticipantInfo {
                leg_id: crate::registry::leg_id(j.call, j.leg),
                call_id: j.call.to_string(),
                party: j.party,
                joined_at: Utc::now(),
                left_at: None,
                muted: false,
                held: false,
                owner: j.owner,
            },
        });
        Ok(conf.room.clone())
    }

    /// Leg `leg` of call `call` left (hung up, interrupted, or took note that the conference
    /// ended). When it was an `endConferenceOnExit` member, every other member is told the
    /// conference ended.
    pub fn leave(&self, tenant: &str, name: &str, call: &str, leg: u32) {
        let mut rooms = self.lock();
        let key = (tenant.to_string(), name.to_string());
        let Some(conf) = rooms.get_mut(&key) else {
            return;
        };
        let Some(at) = conf
            .members
            .iter()
            .position(|p| p.call == call && p.leg == leg)
        else {
            return;
        };
        let mut left = conf.members.remove(at);
        left.info.left_at = Some(Utc::now());
        conf.departed.push(left.info);
        if conf.departed.len() > DEPARTED_KEPT {
            conf.departed.remove(0);
        }
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

    /// A present leg's flags changed (muted or held by a command).
    pub fn set_flags(
        &self,
        tenant: &str,
        name: &str,
        call: &str,
        leg: u32,
        muted: bool,
        held: bool,
    ) {
        let mut rooms = self.lock();
        if let Some(p) = rooms
            .get_mut(&(tenant.to_string(), name.to_string()))
            .and_then(|c| {
                c.members
                    .iter_mut()
                    .find(|p| p.call == call && p.leg == leg)
            })
        {
            p.info.muted = muted;
            p.info.held = held;
        }
    }

    /// Members present in a conference (0 when it does not exist).
    pub fn participants(&self, tenant: &str, name: &str) -> usize {
        self.lock()
            .get(&(tenant.to_string(), name.to_string()))
            .map_or(0, |c| c.members.len())
    }

    /// The live conferences whose tenant `keep` accepts, by tenant and name.
    pub fn list(&self, keep: impl Fn(&str) -> bool) -> Vec<ConferenceInfo> {
        let rooms = self.lock();
        let mut out: Vec<ConferenceInfo> = rooms
            .iter()
            .filter(|((tenant, _), _)| keep(tenant))
            .map(|((tenant, name), c)| info(tenant, name, c))
            .collect();
        out.sort_by(|a, b| (&a.tenant, &a.name).cmp(&(&b.tenant, &b.name)));
        out
    }

    /// One live conference.
    pub fn get(&self, tenant: &str, name: &str) -> Option<ConferenceInfo> {
        self.lock()
            .get(&(tenant.to_string(), name.to_string()))
            .map(|c| info(tenant, name, c))
    }

    /// The call and leg index of a present participant, by its leg id.
    pub fn locate(&self, tenant: &str, name: &str, leg_id: &str) -> Option<(String, u32)> {
        self.lock()
            .get(&(tenant.to_string(), name.to_string()))?
            .members
            .iter()
            .find(|p| p.info.leg_id == leg_id)
            .map(|p| (p.call.clone(), p.leg))
    }
}

fn info(tenant: &str, name: &str, c: &Conference) -> ConferenceInfo {
    ConferenceInfo {
        name: name.to_string(),
        tenant: tenant.to_string(),
        created_at: c.created,
        present: c.members.len(),
        participants: c
            .members
            .iter()
            .map(|p| p.info.clone())
            .chain(c.departed.iter().cloned())
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    fn joining<'a>(
        name: &'a str,
        call: &'a str,
        leg: u32,
        owner: bool,
        end_on_exit: bool,
        inputs: &mpsc::UnboundedSender<Input>,
    ) -> Joining<'a> {
        Joining {
            tenant: "t1",
            name,
            call,
            leg,
            party: format!("{call}-{leg}"),
            max_participants: 3,
            end_on_exit,
            owner,
            inputs: inputs.clone(),
        }
    }

    /// Legs join and leave; the conference lists the present ones first and keeps the departed,
    /// finds a present leg by id, refuses one beyond `maxParticipants`, tells the others when
    /// an `endConferenceOnExit` leg leaves, and is gone with its last leg.
    #[tokio::test]
    async fn participants_are_legs_present_and_departed() {
        let local = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let confs = Conferences::new(MediaEngine::new(callplane_media::MediaConfig {
            bind_ip: local,
            advertise_ip: local,
            port_min: 47000,
            port_max: 47100,
        }));
        let (tx, mut rx) = mpsc::unbounded_channel();
        assert!(confs.join(joining("c", "a", 0, false, false, &tx)).is_ok());
        assert!(confs.join(joining("c", "a", 1, true, false, &tx)).is_ok());
        assert!(confs.join(joining("c", "b", 0, false, true, &tx)).is_ok());
        assert_eq!(
            confs.join(joining("c", "x", 0, false, false, &tx)).err(),
            Some(JoinError::Full)
        );
        assert_eq!(confs.locate("t1", "c", "a.1"), Some(("a".to_string(), 1)));
        confs.set_flags("t1", "c", "a", 1, true, false);
        confs.leave("t1", "c", "a", 1);
        let c = confs.get("t1", "c").expect("live");
        assert_eq!(c.present, 2);
        let ids: Vec<&str> = c.participants.iter().map(|p| p.leg_id.as_str()).collect();
        assert_eq!(ids, ["a.0", "b.0", "a.1"]);
        assert!(c.participants[2].left_at.is_some() && c.participants[2].owner);
        assert!(c.participants[2].muted);
        assert_eq!(confs.locate("t1", "c", "a.1"), None);
        assert_eq!(confs.list(|t| t == "t1").len(), 1);
        assert!(confs.list(|t| t == "other").is_empty());
        // b ends it for everyone when it leaves.
        confs.leave("t1", "c", "b", 0);
        assert!(matches!(
            rx.try_recv(),
            Ok(Input::ConferenceLeft(ConferenceResult::Ended))
        ));
        assert_eq!(confs.get("t1", "c"), None);
    }
}
