//! The block vocabulary of routing plans and Call Control answers: one typed [`Block`] per
//! `blockType`, validated by hand from JSON so that every bad field is reported by block index and
//! field name, and serialized back to the same TENIOS-compatible shape.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use crate::hangup::HangupCause;
use crate::variables;

/// Most blocks one list (a routing plan or one webhook answer) may hold.
pub const MAX_BLOCKS: usize = 250;
/// Most destinations one BRIDGE block may call.
pub const MAX_DESTINATIONS: usize = 20;
/// Longest SAY `text`, in characters.
pub const MAX_SAY_TEXT_CHARS: usize = 5000;
/// Longest name of an announcement, plan, trunk or voice, in characters.
pub const MAX_NAME_CHARS: usize = 255;
/// Longest URL, in characters.
pub const MAX_URL_CHARS: usize = 2048;
/// Longest variable name, in characters.
pub const MAX_VARIABLE_NAME_CHARS: usize = 64;
/// Longest CALL_CONTROL variable value, in characters.
pub const MAX_VARIABLE_VALUE_CHARS: usize = 4096;
/// Most entries in a CALL_CONTROL `variables` map.
pub const MAX_VARIABLES: usize = 100;
/// Longest SIP user name or number used as a destination, in characters.
pub const MAX_ADDRESS_CHARS: usize = 64;
/// Longest REFER target, in characters.
pub const MAX_REFER_TARGET_CHARS: usize = 512;
/// Longest CALL_CONTROL `accessKey`, in characters.
pub const MAX_ACCESS_KEY_CHARS: usize = 1024;
/// How long a destination rings when its block says nothing (a SEQUENTIAL destination without
/// `timeout`, a PARALLEL block without `blockTimeout`), in seconds. TENIOS's own example servers
/// send SEQUENTIAL destinations without a `timeout`; their documentation shows 25–30 s.
pub const DEFAULT_RING_TIMEOUT: u32 = 30;

/// Every `blockType` this vocabulary knows, in the spec's order.
pub const BLOCK_TYPES: [&str; 14] = [
    "ANNOUNCEMENT",
    "SAY",
    "SAY_DIGITS",
    "COLLECT_DIGITS",
    "COLLECT_SPEECH",
    "BRIDGE",
    "HANGUP",
    "ROUTINGPLAN",
    "CALL_SETTINGS",
    "REFER",
    "CALL_CONTROL",
    "ASK_URL",
    "CONFERENCE",
    "STREAM",
];

/// Most participants a CONFERENCE may allow.
pub const MAX_CONFERENCE_PARTICIPANTS: u32 = 1000;
/// Longest conference name, in characters.
pub const MAX_CONFERENCE_NAME_CHARS: usize = 64;

/// One step of a routing plan or of a Call Control answer. Serializes as the JSON object it was
/// parsed from (tagged by `blockType`), with defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "blockType")]
pub enum Block {
    #[serde(rename = "ANNOUNCEMENT")]
    Announcement(AnnouncementBlock),
    #[serde(rename = "SAY")]
    Say(SayBlock),
    /// Callplane extension: reads a variable's digits back with the digit prompts.
    #[serde(rename = "SAY_DIGITS")]
    SayDigits(SayDigitsBlock),
    #[serde(rename = "COLLECT_DIGITS")]
    CollectDigits(CollectDigitsBlock),
    #[serde(rename = "COLLECT_SPEECH")]
    CollectSpeech(CollectSpeechBlock),
    #[serde(rename = "BRIDGE")]
    Bridge(BridgeBlock),
    #[serde(rename = "HANGUP")]
    Hangup(HangupBlock),
    #[serde(rename = "ROUTINGPLAN")]
    RoutingPlan(RoutingPlanBlock),
    #[serde(rename = "CALL_SETTINGS")]
    CallSettings(CallSettingsBlock),
    #[serde(rename = "REFER")]
    Refer(ReferBlock),
    #[serde(rename = "CALL_CONTROL")]
    CallControl(CallControlBlock),
    #[serde(rename = "ASK_URL")]
    AskUrl(AskUrlBlock),
    /// Callplane extension: joins the caller to the tenant's named conference room.
    #[serde(rename = "CONFERENCE")]
    Conference(ConferenceBlock),
    #[serde(rename = "STREAM")]
    Stream(StreamBlock),
}

impl Block {
    /// The block's `blockType` string.
    pub fn block_type(&self) -> &'static str {
        match self {
            Block::Announcement(_) => "ANNOUNCEMENT",
            Block::Say(_) => "SAY",
            Block::SayDigits(_) => "SAY_DIGITS",
            Block::CollectDigits(_) => "COLLECT_DIGITS",
            Block::CollectSpeech(_) => "COLLECT_SPEECH",
            Block::Bridge(_) => "BRIDGE",
            Block::Hangup(_) => "HANGUP",
            Block::RoutingPlan(_) => "ROUTINGPLAN",
            Block::CallSettings(_) => "CALL_SETTINGS",
            Block::Refer(_) => "REFER",
            Block::CallControl(_) => "CALL_CONTROL",
            Block::AskUrl(_) => "ASK_URL",
            Block::Conference(_) => "CONFERENCE",
            Block::Stream(_) => "STREAM",
        }
    }
}

/// `ANNOUNCEMENT`: answer if needed and play a named audio file to the caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AnnouncementBlock {
    /// `standardAnnouncement`: the name refers to the shipped prompt set, not the tenant's
    /// uploads. Optional, default `false`.
    pub standard_announcement: bool,
    /// `announcementName`: required, 1–255 characters.
    pub announcement_name: String,
}

/// `SAY`: text to speech, played like an announcement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SayBlock {
    /// `text`: required, not blank, at most [`MAX_SAY_TEXT_CHARS`] characters.
    pub text: String,
    /// `voiceName`: optional (absent: the engine's default voice). Letters, digits and `_ + . -`,
    /// not starting with `-`, at most 255 characters, because it is handed to a TTS program.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub voice_name: Option<String>,
    /// `useSsml`: `text` is SSML markup. Optional, default `false`.
    pub use_ssml: bool,
}

/// `SAY_DIGITS` (Callplane extension): answer if needed and read the digits of a call variable
/// one by one with the shipped digit prompts; nothing is played when the variable is empty. It
/// needs no text-to-speech engine, so a read-back works on any installation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SayDigitsBlock {
    /// `variableName`: required, as for COLLECT_DIGITS (reserved names may be read).
    pub variable_name: String,
}

/// The DTMF key that ends digit entry early.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Terminator {
    #[serde(rename = "#")]
    Hash,
    #[serde(rename = "*")]
    Star,
}

impl Terminator {
    /// The key as a DTMF character.
    pub fn as_char(self) -> char {
        match self {
            Terminator::Hash => '#',
            Terminator::Star => '*',
        }
    }
}

/// `COLLECT_DIGITS`: play a prompt and collect DTMF into a call variable, with retries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CollectDigitsBlock {
    /// `standardAnnouncement`: optional, default `false`.
    pub standard_announcement: bool,
    /// `announcementName`: the prompt; required.
    pub announcement_name: String,
    /// `standardErrorAnnouncement`: optional, default `false`.
    pub standard_error_announcement: bool,
    /// `errorAnnouncementName`: played before a retry. Optional: absent, the retry replays only
    /// the prompt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_announcement_name: Option<String>,
    /// `variableName`: required, `^[a-z0-9_]+$`, at most 64 characters, not a reserved variable.
    pub variable_name: String,
    /// `minDigits`: required, 1–32.
    pub min_digits: u32,
    /// `maxDigits`: required, 1–32 and ≥ `minDigits`.
    pub max_digits: u32,
    /// `terminator`: `#` or `*`. Optional, default `#` (TENIOS's default).
    pub terminator: Terminator,
    /// `maxTries`: 1–10. Optional, default 3.
    pub max_tries: u32,
    /// `timeout`: seconds to wait for input per try, 1–300. Optional, default 10.
    pub timeout: u32,
    /// `allowSpeechInput` (TENIOS): the caller may also answer by voice. Optional, default
    /// `false`.
    pub allow_speech_input: bool,
    /// `language`: the language spoken input is recognised in (with `allowSpeechInput`).
    /// Optional; absent, the recognizer's default language.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    /// `asrProvider` (TENIOS: `GOOGLE`, `MICROSOFT`, …): which recognizer to use. Optional; a
    /// provider that is not configured here falls back to the default one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub asr_provider: Option<String>,
}

/// `COLLECT_SPEECH`: play a prompt and recognise speech into a call variable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CollectSpeechBlock {
    /// `standardAnnouncement`: optional, default `false`.
    pub standard_announcement: bool,
    /// `announcementName`: the prompt. Optional (TENIOS apps send COLLECT_SPEECH without one
    /// after a SAY): absent, listening starts at once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub announcement_name: Option<String>,
    /// `standardMissingInputAnnouncement`: optional, default `false`.
    pub standard_missing_input_announcement: bool,
    /// `missingInputAnnouncementName`: played when nothing was recognised, before a retry.
    /// Optional: absent, the retry replays only the prompt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub missing_input_announcement_name: Option<String>,
    /// `language`: a language tag such as `de-DE` or `en-US`; required. Letters, digits, `-` and
    /// `_`, at most 35 characters, starting with a letter.
    pub language: String,
    /// `variableName`: as for COLLECT_DIGITS.
    pub variable_name: String,
    /// `maxTries`: 1–10. Optional, default 3.
    pub max_tries: u32,
    /// `timeout`: seconds to wait for speech to start per try, 1–300. Optional, default 10.
    pub timeout: u32,
    /// `asrProvider`: as for COLLECT_DIGITS. Optional.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub asr_provider: Option<String>,
}

/// How a BRIDGE block calls its destinations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum BridgeMode {
    /// One after another, each with its own `timeout`.
    Sequential,
    /// All at once, with one `blockTimeout`.
    Parallel,
}

/// What a BRIDGE `destination` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, schemars::JsonSchema)]
pub enum DestinationType {
    /// A phone number, called through the tenant's default trunk.
    #[serde(rename = "EXTERNALNUMBER")]
    ExternalNumber,
    /// A registered SIP user of the tenant.
    #[serde(rename = "SIP_USER")]
    SipUser,
    /// A trunk of the tenant, by name.
    #[serde(rename = "SIP_TRUNK")]
    SipTrunk,
}

impl DestinationType {
    /// The wire name (`destinationType`), as stored in CDR legs too.
    pub const fn as_str(self) -> &'static str {
        match self {
            DestinationType::ExternalNumber => "EXTERNALNUMBER",
            DestinationType::SipUser => "SIP_USER",
            DestinationType::SipTrunk => "SIP_TRUNK",
        }
    }
}

/// One target of a BRIDGE block (`Destination` in the API's document, where a destination
/// object is read by the block's rules; errors name its fields).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(
    rename = "Destination",
    description = "A BRIDGE block's destination (its rules apply; errors name its fields)."
)]
pub struct BridgeDestination {
    /// `destinationType`: required.
    #[schemars(description = "What `destination` names.")]
    pub destination_type: DestinationType,
    /// `destination`: required. EXTERNALNUMBER: an optional `+` and 1–32 digits. SIP_USER: at
    /// most 64 letters, digits or `-_.!~*'()&=+$,;?/` (the characters a SIP URI user part allows
    /// unescaped), or a SIP URI naming one (`sip:alice@pbx.example.com`: the user part is kept,
    /// the host is not checked). SIP_TRUNK: a trunk name, 1–255 characters without control
    /// characters.
    #[schemars(
        length(min = 1),
        description = "EXTERNALNUMBER: an optional `+` and 1–32 digits. SIP_USER: a SIP user of \
                       the tenant, or a SIP URI naming one (`sip:alice@pbx.example.com`). \
                       SIP_TRUNK: a trunk name of the tenant."
    )]
    pub destination: String,
    /// `timeout`: seconds this destination rings, 1–600. SEQUENTIAL mode: optional, absent it is
    /// the block's `blockTimeout` if given, else [`DEFAULT_RING_TIMEOUT`]. PARALLEL mode: not used
    /// (only a default for a missing `blockTimeout`) and dropped (`None`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(
        range(min = 1, max = 600),
        description = "Seconds it rings (default 30)."
    )]
    pub timeout: Option<u32>,
}

/// `BRIDGE`: call destinations and connect the caller to the first that answers.
///
/// After validation: SEQUENTIAL has `block_timeout == None` and every destination's `timeout` set;
/// PARALLEL has `block_timeout` set and every destination's `timeout == None`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BridgeBlock {
    /// `bridgeMode`: required.
    pub bridge_mode: BridgeMode,
    /// `blockTimeout`: seconds all destinations ring together, 1–600. PARALLEL mode: optional,
    /// absent it is the longest destination `timeout` if any, else [`DEFAULT_RING_TIMEOUT`].
    /// SEQUENTIAL mode: only a default for destinations without `timeout`, then dropped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub block_timeout: Option<u32>,
    /// `destinations`: required, 1–[`MAX_DESTINATIONS`] entries.
    pub destinations: Vec<BridgeDestination>,
}

/// `CONFERENCE` (a Callplane extension in the TENIOS style): join the tenant's room named
/// `conferenceName` (created on first join, removed when empty) until the caller leaves or the
/// conference ends; then the plan goes on with `conference_result` set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConferenceBlock {
    /// `conferenceName`: required, 1–64 of `[A-Za-z0-9_.-]`.
    pub conference_name: String,
    /// `joinMuted`: heard by nobody until unmuted (through the API). Optional, default `false`.
    pub join_muted: bool,
    /// `listenOnly`: hears everyone, is never heard. Optional, default `false`.
    pub listen_only: bool,
    /// `endConferenceOnExit`: when this member leaves, the conference ends for everyone.
    /// Optional, default `false`.
    pub end_conference_on_exit: bool,
    /// `maxParticipants`: 2–1000, optional, default 50. A caller beyond it is refused
    /// (`conference_result=full`).
    pub max_participants: u32,
    /// `enterAnnouncementName`: played into the room when this caller joins; absent, a beep.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enter_announcement_name: Option<String>,
    /// `standardEnterAnnouncement`: the name is from the shipped prompt set. Optional, default
    /// `false`.
    pub standard_enter_announcement: bool,
}

/// `HANGUP`: end the call with a cause.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HangupBlock {
    /// `hangupCause`: a Q.850 name (any case). Optional: absent, `NORMAL_CLEARING` (TENIOS apps
    /// send a bare `{"blockType":"HANGUP"}`).
    pub hangup_cause: HangupCause,
}

/// `ROUTINGPLAN`: continue in another plan of the same tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RoutingPlanBlock {
    /// `routingplanName`: required, 1–255 characters.
    pub routingplan_name: String,
}

/// `CALL_SETTINGS`: change how later blocks place calls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CallSettingsBlock {
    /// `forwardAni`: which number later BRIDGE legs present. Required: it is the block's only
    /// setting.
    pub forward_ani: ForwardAni,
}

/// What CALL_SETTINGS `forwardAni` asks later BRIDGE legs to present as the calling number.
/// Serializes back as TENIOS clients write it: a boolean, or the number as a string.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ForwardAni {
    /// `true` (or `"true"`): the caller's number. The default before any CALL_SETTINGS.
    #[default]
    Caller,
    /// `false` (or `"false"`): the called number (the access number).
    Called,
    /// A phone number as a string (`"+4930123456"`): present this number.
    Number(String),
}

impl Serialize for ForwardAni {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            ForwardAni::Caller => serializer.serialize_bool(true),
            ForwardAni::Called => serializer.serialize_bool(false),
            ForwardAni::Number(n) => serializer.serialize_str(n),
        }
    }
}

/// `REFER`: transfer the caller's side with SIP REFER.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReferBlock {
    /// `destination`: required. A `sip:`, `sips:` or `tel:` URI without spaces, quotes or angle
    /// brackets, or a number (optional `+` and 1–32 digits); at most 512 characters.
    pub destination: String,
}

/// `CALL_CONTROL`: hand control to the customer's webhook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CallControlBlock {
    /// `url`: required, `http://` or `https://`.
    pub url: String,
    /// `accessKey`: echoed in every request body. Optional, at most 1024 characters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_key: Option<String>,
    /// `variables`: added to the call variables. Optional, default empty; at most
    /// [`MAX_VARIABLES`] entries. Values may be strings, numbers or booleans (stored as their JSON
    /// text, e.g. `42`, `true`); names must not be empty or reserved.
    pub variables: BTreeMap<String, String>,
    /// `timeout`: milliseconds to wait for each webhook answer, 100–60000. Optional, default 5000.
    pub timeout: u32,
    /// `fallbackPlan`: the plan to continue in when the webhook fails. Optional: absent, the plan
    /// continues after this block.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback_plan: Option<String>,
}

/// Which audio a STREAM block sends to its WebSocket server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StreamTrack {
    /// What the caller says (Twilio's `inbound_track`).
    Inbound,
    /// What the caller hears from us (prompts, the server's own audio).
    Outbound,
    /// Both, as separate `media` messages.
    Both,
}

impl StreamTrack {
    pub fn wants(self, track: callplane_media::Track) -> bool {
        matches!(
            (self, track),
            (StreamTrack::Both, _)
                | (StreamTrack::Inbound, callplane_media::Track::Inbound)
                | (StreamTrack::Outbound, callplane_media::Track::Outbound)
        )
    }
}

/// `STREAM` (Callplane extension for voice bots): the call's audio to a WebSocket server in
/// the Twilio Media Streams format, and the server's audio back to the caller, until the
/// server closes the socket or sends `stop`; then the plan goes on (`stream_result`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamBlock {
    /// `url`: required, `ws://` or `wss://` with a host.
    pub url: String,
    /// `track`: `inbound` (default), `outbound` or `both`.
    pub track: StreamTrack,
    /// `parameters`: sent as `start.customParameters`. Optional; scalars as strings, at most
    /// [`MAX_VARIABLES`] entries.
    pub parameters: BTreeMap<String, String>,
    /// `timeout`: seconds the stream may last at most, 1–86400. Optional, default 3600.
    pub timeout: u32,
    /// `fallbackPlan`: the plan to continue in when the server cannot be reached. Optional:
    /// absent, the plan continues after this block.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback_plan: Option<String>,
}

/// A `dtype` of the ask-URL protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AskUrlDestinationType {
    /// A SIP user.
    Phone,
    /// A phone number.
    External,
    /// A routing plan.
    Plan,
    /// End the call.
    Hangup,
}

impl AskUrlDestinationType {
    /// The protocol's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            AskUrlDestinationType::Phone => "phone",
            AskUrlDestinationType::External => "external",
            AskUrlDestinationType::Plan => "plan",
            AskUrlDestinationType::Hangup => "hangup",
        }
    }

    /// Parses the protocol's (lower-case) spelling.
    pub fn parse(s: &str) -> Option<Self> {
        ASK_URL_DTYPES
            .iter()
            .find(|(name, _)| *name == s)
            .map(|&(_, t)| t)
    }
}

/// Where an ASK_URL block sends the call when the URL does not answer in time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum TimeoutDestination {
    /// A JSON string: the name of a routing plan.
    Plan(String),
    /// A JSON object `{dtype, dnumber}`, as an ask-URL reply would give.
    Target {
        dtype: AskUrlDestinationType,
        /// Required unless `dtype` is `hangup`.
        #[serde(skip_serializing_if = "Option::is_none")]
        dnumber: Option<String>,
    },
}

/// `ASK_URL`: Enswitch-style routing by asking a URL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AskUrlBlock {
    /// `url`: required, `http://` or `https://`.
    pub url: String,
    /// `timeout`: seconds to wait for the reply (DNS included), 1–60. Optional, default 5.
    pub timeout: u32,
    /// `timeoutDestination`: optional; absent, a timeout continues the plan after this block.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_destination: Option<TimeoutDestination>,
    /// `answerUrl`: optional, `http://` or `https://`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answer_url: Option<String>,
    /// `hangupUrl`: optional, `http://` or `https://`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hangup_url: Option<String>,
}

/// One problem with one field of one block. Its `Display` is the text put verbatim into a
/// webhook's `blocksProcessingResult.validationErrors`, e.g.
/// `block 2 (COLLECT_DIGITS): field 'maxDigits': must be between 1 and 32 and >= minDigits (got 40)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError {
    /// Position of the block in its list, from 0.
    pub index: usize,
    /// The block's `blockType`, when it is a known one.
    pub block_type: Option<String>,
    /// The field, as spelled in JSON; nested fields as `destinations[1].timeout` or
    /// `variables.customer`. Empty when the block as a whole is wrong (not an object);
    /// `blocks` when the list itself is wrong.
    pub field: String,
    /// What is wrong, with the offending value where there is one.
    pub message: String,
}

impl ValidationError {
    /// The error without its block index, for contexts that have no list.
    fn without_index(&self) -> String {
        let mut out = String::new();
        if let Some(block_type) = &self.block_type {
            out.push_str(block_type);
            out.push_str(": ");
        }
        if !self.field.is_empty() {
            out.push_str(&format!("field '{}': ", self.field));
        }
        out.push_str(&self.message);
        out
    }
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "block {}", self.index)?;
        if let Some(block_type) = &self.block_type {
            write!(f, " ({block_type})")?;
        }
        if !self.field.is_empty() {
            write!(f, ": field '{}'", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ValidationError {}

/// Parses a JSON array of block objects, reporting every invalid field of every block.
pub fn parse_blocks(value: &Value) -> Result<Vec<Block>, Vec<ValidationError>> {
    let list_error = |message: String| ValidationError {
        index: 0,
        block_type: None,
        field: "blocks".to_owned(),
        message,
    };
    let Some(items) = value.as_array() else {
        return Err(vec![list_error(format!(
            "must be a JSON array of block objects (got {})",
            describe(value)
        ))]);
    };
    if items.len() > MAX_BLOCKS {
        return Err(vec![list_error(format!(
            "must hold at most {MAX_BLOCKS} blocks (got {})",
            items.len()
        ))]);
    }
    let mut blocks = Vec::with_capacity(items.len());
    let mut errors = Vec::new();
    for (index, item) in items.iter().enumerate() {
        match parse_block(index, item) {
            Ok(block) => blocks.push(block),
            Err(mut e) => errors.append(&mut e),
        }
    }
    if errors.is_empty() {
        Ok(blocks)
    } else {
        Err(errors)
    }
}

/// Parses one block object; `index` is its position in its list, used in the errors.
pub fn parse_block(index: usize, value: &Value) -> Result<Block, Vec<ValidationError>> {
    let mut errors = Errors {
        index,
        block_type: None,
        list: Vec::new(),
    };
    let Some(map) = value.as_object() else {
        errors.push(
            String::new(),
            format!("must be a JSON object (got {})", describe(value)),
        );
        return Err(errors.list);
    };
    let fields = Fields {
        map,
        prefix: String::new(),
    };
    let Some(block_type) = fields.block_type(&mut errors) else {
        return Err(errors.list);
    };
    errors.block_type = Some(block_type);
    let e = &mut errors;
    let block = match block_type {
        "ANNOUNCEMENT" => parse_announcement(&fields, e),
        "SAY" => parse_say(&fields, e),
        "SAY_DIGITS" => parse_say_digits(&fields, e),
        "COLLECT_DIGITS" => parse_collect_digits(&fields, e),
        "COLLECT_SPEECH" => parse_collect_speech(&fields, e),
        "BRIDGE" => parse_bridge(&fields, e),
        "HANGUP" => parse_hangup(&fields, e),
        "ROUTINGPLAN" => parse_routing_plan(&fields, e),
        "CALL_SETTINGS" => parse_call_settings(&fields, e),
        "REFER" => parse_refer(&fields, e),
        "CALL_CONTROL" => parse_call_control(&fields, e),
        "ASK_URL" => parse_ask_url(&fields, e),
        "CONFERENCE" => parse_conference(&fields, e),
        "STREAM" => parse_stream(&fields, e),
        _ => None,
    };
    match block {
        Some(block) if errors.list.is_empty() => Ok(block),
        _ => {
            if errors.list.is_empty() {
                // Every parser records why it returned None; this only guards that promise.
                errors.push(String::new(), "is invalid".to_owned());
            }
            Err(errors.list)
        }
    }
}

/// Deserializes through [`parse_block`], so a routing plan in a TOML/YAML file is checked by the
/// same rules. Errors carry no block index here; use [`parse_blocks`] for user-facing reports.
impl<'de> Deserialize<'de> for Block {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        parse_block(0, &value).map_err(|errors| {
            let text: Vec<String> = errors.iter().map(ValidationError::without_index).collect();
            serde::de::Error::custom(text.join("; "))
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Per-block parsers. Each reads every field first (so all errors are collected), then builds the
// block only if every field was valid. A `None` from a field reader always comes with an error.

fn parse_announcement(f: &Fields, e: &mut Errors) -> Option<Block> {
    let standard_announcement = f.boolean(e, "standardAnnouncement", false);
    let announcement_name = f.name(e, "announcementName", true).flatten();
    Some(Block::Announcement(AnnouncementBlock {
        standard_announcement: standard_announcement?.unwrap_or(false),
        announcement_name: announcement_name?.to_owned(),
    }))
}

fn parse_say(f: &Fields, e: &mut Errors) -> Option<Block> {
    let text = f.string(e, "text", true, MAX_SAY_TEXT_CHARS).flatten();
    let voice_name = f.program_word(e, "voiceName", false, MAX_NAME_CHARS, "voice name");
    let use_ssml = f.boolean(e, "useSsml", false);
    let text = match (text, &use_ssml) {
        (Some(t), Some(Some(true))) => match crate::tts::Ssml::parse(t) {
            Ok(_) => Some(t),
            Err(why) => {
                e.push(
                    f.path("text"),
                    format!("must be valid SSML when useSsml is true: {why}"),
                );
                None
            }
        },
        (t, _) => t,
    };
    Some(Block::Say(SayBlock {
        text: text?.to_owned(),
        voice_name: voice_name?.map(str::to_owned),
        use_ssml: use_ssml?.unwrap_or(false),
    }))
}

fn parse_collect_digits(f: &Fields, e: &mut Errors) -> Option<Block> {
    let standard_announcement = f.boolean(e, "standardAnnouncement", false);
    let announcement_name = f.name(e, "announcementName", true).flatten();
    let standard_error_announcement = f.boolean(e, "standardErrorAnnouncement", false);
    let error_announcement_name = f.name(e, "errorAnnouncementName", false);
    let variable_name = f.variable_name(e, "variableName");
    let min_digits = f.integer_in(e, "minDigits", 1, 32, true).flatten();
    let max_digits = match f.integer(e, "maxDigits", true).flatten() {
        Some(n) if (1..=32).contains(&n) && min_digits.is_none_or(|min| n >= i64::from(min)) => {
            u32::try_from(n).ok()
        }
        Some(n) => {
            e.push(
                f.path("maxDigits"),
                format!("must be between 1 and 32 and >= minDigits (got {n})"),
            );
            None
        }
        None => None,
    };
    let terminator = f.terminator(e, "terminator");
    let max_tries = f.integer_in(e, "maxTries", 1, 10, false);
    let timeout = f.integer_in(e, "timeout", 1, 300, false);
    let allow_speech_input = f.boolean(e, "allowSpeechInput", false);
    let language = f.language(e, "language", false);
    let asr_provider = f.program_word(e, "asrProvider", false, 64, "provider name");
    Some(Block::CollectDigits(CollectDigitsBlock {
        standard_announcement: standard_announcement?.unwrap_or(false),
        announcement_name: announcement_name?.to_owned(),
        standard_error_announcement: standard_error_announcement?.unwrap_or(false),
        error_announcement_name: error_announcement_name?.map(str::to_owned),
        variable_name: variable_name?.to_owned(),
        min_digits: min_digits?,
        max_digits: max_digits?,
        terminator: terminator?.unwrap_or(Terminator::Hash),
        max_tries: max_tries?.unwrap_or(3),
        timeout: timeout?.unwrap_or(10),
        allow_speech_input: allow_speech_input?.unwrap_or(false),
        language: language?.map(str::to_owned),
        asr_provider: asr_provider?.map(str::to_owned),
    }))
}

fn parse_collect_speech(f: &Fields, e: &mut Errors) -> Option<Block> {
    let standard_announcement = f.boolean(e, "standardAnnouncement", false);
    let announcement_name = f.name(e, "announcementName", false);
    let standard_missing = f.boolean(e, "standardMissingInputAnnouncement", false);
    let missing_name = f.name(e, "missingInputAnnouncementName", false);
    let language = f.language(e, "language", true).flatten();
    let variable_name = f.variable_name(e, "variableName");
    let max_tries = f.integer_in(e, "maxTries", 1, 10, false);
    let timeout = f.integer_in(e, "timeout", 1, 300, false);
    let asr_provider = f.program_word(e, "asrProvider", false, 64, "provider name");
    Some(Block::CollectSpeech(CollectSpeechBlock {
        standard_announcement: standard_announcement?.unwrap_or(false),
        announcement_name: announcement_name?.map(str::to_owned),
        standard_missing_input_announcement: standard_missing?.unwrap_or(false),
        missing_input_announcement_name: missing_name?.map(str::to_owned),
        language: language?.to_owned(),
        variable_name: variable_name?.to_owned(),
        max_tries: max_tries?.unwrap_or(3),
        timeout: timeout?.unwrap_or(10),
        asr_provider: asr_provider?.map(str::to_owned),
    }))
}

fn parse_bridge(f: &Fields, e: &mut Errors) -> Option<Block> {
    const MODES: &[(&str, BridgeMode)] = &[
        ("SEQUENTIAL", BridgeMode::Sequential),
        ("PARALLEL", BridgeMode::Parallel),
    ];
    let mode = f.choice(e, "bridgeMode", MODES, true).flatten();
    // Every present timeout is range-checked; a missing one takes its default (TENIOS's own
    // examples leave them out), so the mode only decides which one is used.
    let block_timeout = f.integer_in(e, "blockTimeout", 1, 600, false);
    let destinations = parse_destinations(f, e);
    let (mode, given, mut destinations) = (mode?, block_timeout?, destinations?);
    let block_timeout = match mode {
        BridgeMode::Parallel => Some(given.unwrap_or_else(|| {
            (destinations.iter().filter_map(|d| d.timeout).max()).unwrap_or(DEFAULT_RING_TIMEOUT)
        })),
        BridgeMode::Sequential => None,
    };
    for d in &mut destinations {
        d.timeout = match mode {
            BridgeMode::Sequential => Some(d.timeout.or(given).unwrap_or(DEFAULT_RING_TIMEOUT)),
            BridgeMode::Parallel => None,
        };
    }
    Some(Block::Bridge(BridgeBlock {
        bridge_mode: mode,
        block_timeout,
        destinations,
    }))
}

/// The destinations with their own `timeout` if they have one (defaults are the caller's).
fn parse_destinations(f: &Fields, e: &mut Errors) -> Option<Vec<BridgeDestination>> {
    const TYPES: &[(&str, DestinationType)] = &[
        (
            DestinationType::ExternalNumber.as_str(),
            DestinationType::ExternalNumber,
        ),
        (DestinationType::SipUser.as_str(), DestinationType::SipUser),
        (
            DestinationType::SipTrunk.as_str(),
            DestinationType::SipTrunk,
        ),
    ];
    let items = f.array(e, "destinations")?;
    if items.is_empty() || items.len() > MAX_DESTINATIONS {
        e.push(
            f.path("destinations"),
            format!(
                "must hold between 1 and {MAX_DESTINATIONS} destinations (got {})",
                items.len()
            ),
        );
        return None;
    }
    let mut out = Vec::with_capacity(items.len());
    let mut all_valid = true;
    for (i, item) in items.iter().enumerate() {
        let path = format!("{}destinations[{i}]", f.prefix);
        let Some(map) = item.as_object() else {
            e.push(path, format!("must be an object (got {})", describe(item)));
            all_valid = false;
            continue;
        };
        let d = Fields {
            map,
            prefix: format!("{path}."),
        };
        let destination_type = d.choice(e, "destinationType", TYPES, true).flatten();
        let destination = d.string(e, "destination", true, MAX_NAME_CHARS).flatten();
        let destination = match (destination_type, destination) {
            (Some(t), Some(s)) => d.check_destination(e, t, s),
            (_, s) => s,
        };
        let timeout = d.integer_in(e, "timeout", 1, 600, false);
        match (destination_type, destination, timeout) {
            (Some(destination_type), Some(destination), Some(timeout)) => {
                out.push(BridgeDestination {
                    destination_type,
                    destination: destination.to_owned(),
                    timeout,
                })
            }
            _ => all_valid = false,
        }
    }
    all_valid.then_some(out)
}

fn parse_hangup(f: &Fields, e: &mut Errors) -> Option<Block> {
    let Some(raw) = f.string(e, "hangupCause", false, MAX_NAME_CHARS)? else {
        return Some(Block::Hangup(HangupBlock {
            hangup_cause: HangupCause::NormalClearing,
        }));
    };
    match raw.trim().to_ascii_uppercase().parse::<HangupCause>() {
        Ok(hangup_cause) => Some(Block::Hangup(HangupBlock { hangup_cause })),
        Err(_) => {
            e.push(
                f.path("hangupCause"),
                format!(
                    "must be a Q.850 cause name such as NORMAL_CLEARING, USER_BUSY or \
                     CALL_REJECTED (got {})",
                    quote(raw)
                ),
            );
            None
        }
    }
}

fn parse_say_digits(f: &Fields, e: &mut Errors) -> Option<Block> {
    let name = f.name(e, "variableName", true).flatten()?;
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        e.push(
            "variableName".to_owned(),
            format!("must match ^[a-z0-9_]+$ (got {name:?})"),
        );
        return None;
    }
    Some(Block::SayDigits(SayDigitsBlock {
        variable_name: name.to_owned(),
    }))
}

fn parse_conference(f: &Fields, e: &mut Errors) -> Option<Block> {
    let name = f
        .string(e, "conferenceName", true, MAX_CONFERENCE_NAME_CHARS)
        .flatten();
    let name = match name {
        Some(n)
            if !n
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) =>
        {
            e.push(
                f.path("conferenceName"),
                format!("must match ^[A-Za-z0-9_.-]+$ (got {})", quote(n)),
            );
            None
        }
        n => n,
    };
    let join_muted = f.boolean(e, "joinMuted", false);
    let listen_only = f.boolean(e, "listenOnly", false);
    let end_on_exit = f.boolean(e, "endConferenceOnExit", false);
    let max = f.integer_in(e, "maxParticipants", 2, MAX_CONFERENCE_PARTICIPANTS, false);
    let enter = f.name(e, "enterAnnouncementName", false);
    let standard_enter = f.boolean(e, "standardEnterAnnouncement", false);
    Some(Block::Conference(ConferenceBlock {
        conference_name: name?.to_owned(),
        join_muted: join_muted?.unwrap_or(false),
        listen_only: listen_only?.unwrap_or(false),
        end_conference_on_exit: end_on_exit?.unwrap_or(false),
        max_participants: max?.unwrap_or(50),
        enter_announcement_name: enter?.map(str::to_owned),
        standard_enter_announcement: standard_enter?.unwrap_or(false),
    }))
}

fn parse_routing_plan(f: &Fields, e: &mut Errors) -> Option<Block> {
    let name = f.name(e, "routingplanName", true).flatten()?;
    Some(Block::RoutingPlan(RoutingPlanBlock {
        routingplan_name: name.to_owned(),
    }))
}

fn parse_call_settings(f: &Fields, e: &mut Errors) -> Option<Block> {
    const FIELD: &str = "forwardAni";
    let forward_ani = match f.get(FIELD) {
        None => return f.absent(e, FIELD, true).flatten(),
        Some(Value::Bool(true)) => ForwardAni::Caller,
        Some(Value::Bool(false)) => ForwardAni::Called,
        Some(Value::String(s)) if s.trim().eq_ignore_ascii_case("true") => ForwardAni::Caller,
        Some(Value::String(s)) if s.trim().eq_ignore_ascii_case("false") => ForwardAni::Called,
        Some(Value::String(s)) if is_phone_number(s.trim()) => {
            ForwardAni::Number(s.trim().to_owned())
        }
        Some(Value::Number(n)) if n.as_u64().is_some_and(|n| is_phone_number(&n.to_string())) => {
            ForwardAni::Number(n.to_string())
        }
        Some(other) => {
            return f.type_error(
                e,
                FIELD,
                "true, false or the phone number to present ('+' and digits)",
                other,
            )
        }
    };
    Some(Block::CallSettings(CallSettingsBlock { forward_ani }))
}

fn parse_refer(f: &Fields, e: &mut Errors) -> Option<Block> {
    let target = f
        .string(e, "destination", true, MAX_REFER_TARGET_CHARS)
        .flatten()?;
    let lower = target.to_ascii_lowercase();
    let is_uri = ["sip:", "sips:", "tel:"]
        .iter()
        .any(|scheme| lower.starts_with(scheme) && lower.len() > scheme.len())
        && !target
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | '"'));
    if is_uri || is_phone_number(target) {
        Some(Block::Refer(ReferBlock {
            destination: target.to_owned(),
        }))
    } else {
        e.push(
            f.path("destination"),
            format!(
                "must be a sip:, sips: or tel: URI without spaces, quotes or angle brackets, or a \
                 phone number ('+' and digits) (got {})",
                quote(target)
            ),
        );
        None
    }
}

fn parse_call_control(f: &Fields, e: &mut Errors) -> Option<Block> {
    let url = f.url(e, "url", true).flatten();
    let access_key = f.string(e, "accessKey", false, MAX_ACCESS_KEY_CHARS);
    let variables = f.variables(e, "variables", true);
    let timeout = f.integer_in(e, "timeout", 100, 60_000, false);
    let fallback_plan = f.name(e, "fallbackPlan", false);
    Some(Block::CallControl(CallControlBlock {
        url: url?.to_owned(),
        access_key: access_key?.map(str::to_owned),
        variables: variables?,
        timeout: timeout?.unwrap_or(5000),
        fallback_plan: fallback_plan?.map(str::to_owned),
    }))
}

const ASK_URL_DTYPES: &[(&str, AskUrlDestinationType)] = &[
    ("phone", AskUrlDestinationType::Phone),
    ("external", AskUrlDestinationType::External),
    ("plan", AskUrlDestinationType::Plan),
    ("hangup", AskUrlDestinationType::Hangup),
];

fn parse_stream(f: &Fields, e: &mut Errors) -> Option<Block> {
    const TRACKS: &[(&str, StreamTrack)] = &[
        ("inbound", StreamTrack::Inbound),
        ("outbound", StreamTrack::Outbound),
        ("both", StreamTrack::Both),
    ];
    let url = f.string(e, "url", true, MAX_URL_CHARS).flatten();
    let url = match url {
        Some(u) if !is_ws_url(u) => {
            e.push(
                f.path("url"),
                format!(
                    "must be a ws:// or wss:// URL with a host and no spaces (got {})",
                    quote(u)
                ),
            );
            None
        }
        u => u,
    };
    let track = f.choice(e, "track", TRACKS, false);
    let parameters = f.variables(e, "parameters", false);
    let timeout = f.integer_in(e, "timeout", 1, 86_400, false);
    let fallback_plan = f.name(e, "fallbackPlan", false);
    Some(Block::Stream(StreamBlock {
        url: url?.to_owned(),
        track: track?.unwrap_or(StreamTrack::Inbound),
        parameters: parameters?,
        timeout: timeout?.unwrap_or(3600),
        fallback_plan: fallback_plan?.map(str::to_owned),
    }))
}

/// A `ws://` or `wss://` URL with a host (the http check, on the same rest).
fn is_ws_url(s: &str) -> bool {
    let lower = s.to_ascii_lowercase();
    let rest = if lower.starts_with("wss://") {
        s.get(6..)
    } else if lower.starts_with("ws://") {
        s.get(5..)
    } else {
        None
    };
    rest.is_some_and(|r| is_http_url(&format!("http://{r}")))
}

fn parse_ask_url(f: &Fields, e: &mut Errors) -> Option<Block> {
    let url = f.url(e, "url", true).flatten();
    let timeout = f.integer_in(e, "timeout", 1, 60, false);
    let timeout_destination = parse_timeout_destination(f, e);
    let answer_url = f.url(e, "answerUrl", false);
    let hangup_url = f.url(e, "hangupUrl", false);
    Some(Block::AskUrl(AskUrlBlock {
        url: url?.to_owned(),
        timeout: timeout?.unwrap_or(5),
        timeout_destination: timeout_destination?,
        answer_url: answer_url?.map(str::to_owned),
        hangup_url: hangup_url?.map(str::to_owned),
    }))
}

fn parse_timeout_destination(f: &Fields, e: &mut Errors) -> Option<Option<TimeoutDestination>> {
    const FIELD: &str = "timeoutDestination";
    match f.get(FIELD) {
        None => Some(None),
        Some(Value::String(_)) => {
            let plan = f.name(e, FIELD, true).flatten()?;
            Some(Some(TimeoutDestination::Plan(plan.to_owned())))
        }
        Some(Value::Object(map)) => {
            let t = Fields {
                map,
                prefix: format!("{}{FIELD}.", f.prefix),
            };
            let dtype = t.choice(e, "dtype", ASK_URL_DTYPES, true).flatten();
            let required = dtype != Some(AskUrlDestinationType::Hangup);
            let dnumber = t.name(e, "dnumber", required);
            Some(Some(TimeoutDestination::Target {
                dtype: dtype?,
                dnumber: dnumber?.map(str::to_owned),
            }))
        }
        Some(other) => {
            e.push(
                f.path(FIELD),
                format!(
                    "must be a plan name or an object {{\"dtype\": ..., \"dnumber\": ...}} (got {})",
                    describe(other)
                ),
            );
            None
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Field readers. Optional readers return `Option<Option<T>>`: `None` = invalid (error recorded),
// `Some(None)` = absent, `Some(Some(v))` = valid. With `required`, absence is an error, so
// `.flatten()` gives `None` exactly when an error was recorded. JSON `null` counts as absent.

struct Errors {
    index: usize,
    block_type: Option<&'static str>,
    list: Vec<ValidationError>,
}

impl Errors {
    fn push(&mut self, field: String, message: String) {
        self.list.push(ValidationError {
            index: self.index,
            block_type: self.block_type.map(str::to_owned),
            field,
            message,
        });
    }
}

struct Fields<'a> {
    map: &'a Map<String, Value>,
    /// Path of this object inside the block, ending in `.`, or empty for the block itself.
    prefix: String,
}

impl<'a> Fields<'a> {
    fn path(&self, field: &str) -> String {
        format!("{}{field}", self.prefix)
    }

    fn get(&self, field: &str) -> Option<&'a Value> {
        self.map.get(field).filter(|v| !v.is_null())
    }

    /// Absent: records "is required" if `required`.
    fn absent<T>(&self, e: &mut Errors, field: &str, required: bool) -> Option<Option<T>> {
        if required {
            e.push(self.path(field), "is required".to_owned());
            None
        } else {
            Some(None)
        }
    }

    fn type_error<T>(&self, e: &mut Errors, field: &str, expected: &str, got: &Value) -> Option<T> {
        e.push(
            self.path(field),
            format!("must be {expected} (got {})", describe(got)),
        );
        None
    }

    fn block_type(&self, e: &mut Errors) -> Option<&'static str> {
        let raw = match self.get("blockType") {
            None => return self.absent(e, "blockType", true).flatten(),
            Some(Value::String(s)) => s.as_str(),
            Some(other) => return self.type_error(e, "blockType", "a string", other),
        };
        // `COLLECT DIGITS` (as TENIOS's documentation titles it), `collect_digits`: one name.
        let normalized = raw.trim().replace([' ', '-'], "_");
        match BLOCK_TYPES
            .iter()
            .find(|t| t.eq_ignore_ascii_case(&normalized))
        {
            Some(t) => Some(*t),
            None => {
                e.push(
                    "blockType".to_owned(),
                    format!(
                        "unknown block type {} (expected one of {})",
                        quote(raw),
                        BLOCK_TYPES.join(", ")
                    ),
                );
                None
            }
        }
    }

    fn boolean(&self, e: &mut Errors, field: &str, required: bool) -> Option<Option<bool>> {
        match self.get(field) {
            None => self.absent(e, field, required),
            Some(Value::Bool(b)) => Some(Some(*b)),
            // As Jackson (TENIOS's JSON reader) coerces them.
            Some(Value::String(s)) if s.trim().eq_ignore_ascii_case("true") => Some(Some(true)),
            Some(Value::String(s)) if s.trim().eq_ignore_ascii_case("false") => Some(Some(false)),
            Some(other) => self.type_error(e, field, "true or false", other),
        }
    }

    /// A string that is not blank and has at most `max_chars` characters.
    fn string(
        &self,
        e: &mut Errors,
        field: &str,
        required: bool,
        max_chars: usize,
    ) -> Option<Option<&'a str>> {
        let s = match self.get(field) {
            None => return self.absent(e, field, required),
            Some(Value::String(s)) => s.as_str(),
            Some(other) => return self.type_error(e, field, "a string", other),
        };
        if s.trim().is_empty() {
            e.push(self.path(field), "must not be empty".to_owned());
            return None;
        }
        let chars = s.chars().count();
        if chars > max_chars {
            e.push(
                self.path(field),
                format!("must be at most {max_chars} characters (got {chars})"),
            );
            return None;
        }
        Some(Some(s))
    }

    /// The name of a stored object (announcement, plan, trunk): at most 255 characters, no
    /// control characters.
    fn name(&self, e: &mut Errors, field: &str, required: bool) -> Option<Option<&'a str>> {
        let s = self.string(e, field, required, MAX_NAME_CHARS)?;
        match s {
            Some(s) if s.chars().any(char::is_control) => {
                e.push(
                    self.path(field),
                    format!("must not contain control characters (got {})", quote(s)),
                );
                None
            }
            s => Some(s),
        }
    }

    /// A word passed to a helper program (TTS voice): `[A-Za-z0-9_+.-]`, not starting with `-`.
    fn program_word(
        &self,
        e: &mut Errors,
        field: &str,
        required: bool,
        max_chars: usize,
        what: &str,
    ) -> Option<Option<&'a str>> {
        let s = self.string(e, field, required, max_chars)?;
        match s {
            Some(s)
                if s.starts_with('-')
                    || !s.chars().all(|c| {
                        c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '.' | '-')
                    }) =>
            {
                e.push(
                    self.path(field),
                    format!(
                        "must be a {what}: letters, digits and _ + . -, not starting with '-' \
                         (got {})",
                        quote(s)
                    ),
                );
                None
            }
            s => Some(s),
        }
    }

    fn language(&self, e: &mut Errors, field: &str, required: bool) -> Option<Option<&'a str>> {
        let Some(s) = self.string(e, field, required, 35)? else {
            return Some(None);
        };
        let starts_with_letter = s.chars().next().is_some_and(|c| c.is_ascii_alphabetic());
        if starts_with_letter
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
        {
            Some(Some(s))
        } else {
            e.push(
                self.path(field),
                format!(
                    "must be a language tag such as de-DE or en-US (got {})",
                    quote(s)
                ),
            );
            None
        }
    }

    /// A call variable a block writes: `^[a-z0-9_]+$`, not one of the reserved variables.
    fn variable_name(&self, e: &mut Errors, field: &str) -> Option<&'a str> {
        let s = self
            .string(e, field, true, MAX_VARIABLE_NAME_CHARS)
            .flatten()?;
        if !s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            e.push(
                self.path(field),
                format!(
                    "must match ^[a-z0-9_]+$ (lower-case letters, digits, underscore) (got {})",
                    quote(s)
                ),
            );
            return None;
        }
        if variables::is_reserved(s) {
            e.push(
                self.path(field),
                format!(
                    "{} is set by Callplane for every call and cannot be overwritten",
                    quote(s)
                ),
            );
            return None;
        }
        Some(s)
    }

    /// A JSON integer (a float with no fractional part is accepted, e.g. `3.0`).
    fn integer(&self, e: &mut Errors, field: &str, required: bool) -> Option<Option<i64>> {
        let value = match self.get(field) {
            None => return self.absent(e, field, required),
            Some(v) => v,
        };
        let n = match value {
            Value::Number(n) => n.clone(),
            // A string of digits, as Jackson (TENIOS's JSON reader) coerces it.
            Value::String(s) => match s.trim().parse::<serde_json::Number>() {
                Ok(n) if !s.trim().is_empty() => n,
                _ => return self.type_error(e, field, "an integer", value),
            },
            _ => return self.type_error(e, field, "an integer", value),
        };
        if let Some(i) = n.as_i64() {
            return Some(Some(i));
        }
        if n.as_u64().is_some() {
            // Above i64::MAX: certainly out of every range; report it as such.
            return Some(Some(i64::MAX));
        }
        match n.as_f64() {
            Some(x) if x.fract() == 0.0 && x.abs() < 9.0e15 => Some(Some(x as i64)),
            Some(x) if x.fract() == 0.0 && x.is_finite() => {
                Some(Some(if x > 0.0 { i64::MAX } else { i64::MIN }))
            }
            _ => self.type_error(e, field, "an integer", value),
        }
    }

    fn integer_in(
        &self,
        e: &mut Errors,
        field: &str,
        min: u32,
        max: u32,
        required: bool,
    ) -> Option<Option<u32>> {
        let n = match self.integer(e, field, required)? {
            None => return Some(None),
            Some(n) => n,
        };
        match u32::try_from(n) {
            Ok(v) if (min..=max).contains(&v) => Some(Some(v)),
            _ => {
                let got = self.get(field).map_or_else(|| n.to_string(), describe);
                e.push(
                    self.path(field),
                    format!("must be between {min} and {max} (got {got})"),
                );
                None
            }
        }
    }

    fn choice<T: Copy>(
        &self,
        e: &mut Errors,
        field: &str,
        options: &[(&str, T)],
        required: bool,
    ) -> Option<Option<T>> {
        let value = match self.get(field) {
            None => return self.absent(e, field, required),
            Some(v) => v,
        };
        if let Value::String(s) = value {
            let s = s.trim();
            if let Some(&(_, t)) = options
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(s))
            {
                return Some(Some(t));
            }
        }
        let names: Vec<&str> = options.iter().map(|(name, _)| *name).collect();
        e.push(
            self.path(field),
            format!(
                "must be one of {} (got {})",
                names.join(", "),
                describe(value)
            ),
        );
        None
    }

    fn terminator(&self, e: &mut Errors, field: &str) -> Option<Option<Terminator>> {
        const OPTIONS: &[(&str, Terminator)] = &[("#", Terminator::Hash), ("*", Terminator::Star)];
        self.choice(e, field, OPTIONS, false)
    }

    fn array(&self, e: &mut Errors, field: &str) -> Option<&'a Vec<Value>> {
        match self.get(field) {
            None => self.absent(e, field, true).flatten(),
            Some(Value::Array(items)) => Some(items),
            Some(other) => self.type_error(e, field, "an array", other),
        }
    }

    /// An absolute `http://` or `https://` URL with a host, no whitespace or control characters.
    fn url(&self, e: &mut Errors, field: &str, required: bool) -> Option<Option<&'a str>> {
        let s = self.string(e, field, required, MAX_URL_CHARS)?;
        match s {
            Some(s) if !is_http_url(s) => {
                e.push(
                    self.path(field),
                    format!(
                        "must be an http:// or https:// URL with a host and no spaces (got {})",
                        quote(s)
                    ),
                );
                None
            }
            s => Some(s),
        }
    }

    /// A map of scalars as strings; `call_variables`: its names become call variables, so
    /// the reserved ones are refused.
    fn variables(
        &self,
        e: &mut Errors,
        field: &str,
        call_variables: bool,
    ) -> Option<BTreeMap<String, String>> {
        let map = match self.get(field) {
            None => return Some(BTreeMap::new()),
            Some(Value::Object(map)) => map,
            Some(other) => return self.type_error(e, field, "an object of strings", other),
        };
        if map.len() > MAX_VARIABLES {
            e.push(
                self.path(field),
                format!(
                    "must hold at most {MAX_VARIABLES} variables (got {})",
                    map.len()
                ),
            );
            return None;
        }
        let mut out = BTreeMap::new();
        let mut all_valid = true;
        for (name, value) in map {
            let path = format!("{}{field}.{name}", self.prefix);
            let name_problem = if name.trim().is_empty() {
                Some("a variable name must not be empty".to_owned())
            } else if name.chars().count() > MAX_VARIABLE_NAME_CHARS {
                Some(format!(
                    "a variable name must be at most {MAX_VARIABLE_NAME_CHARS} characters"
                ))
            } else if name.chars().any(char::is_control) {
                Some("a variable name must not contain control characters".to_owned())
            } else if call_variables && variables::is_reserved(name) {
                Some(format!(
                    "{} is set by Callplane for every call and cannot be overwritten",
                    quote(name)
                ))
            } else {
                None
            };
            if let Some(problem) = name_problem {
                e.push(path, problem);
                all_valid = false;
                continue;
            }
            let text = match value {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                other => {
                    e.push(
                        path,
                        format!(
                            "must be a string, number or boolean (got {})",
                            describe(other)
                        ),
                    );
                    all_valid = false;
                    continue;
                }
            };
            let chars = text.chars().count();
            if chars > MAX_VARIABLE_VALUE_CHARS {
                e.push(
                    path,
                    format!("must be at most {MAX_VARIABLE_VALUE_CHARS} characters (got {chars})"),
                );
                all_valid = false;
                continue;
            }
            out.insert(name.clone(), text);
        }
        all_valid.then_some(out)
    }

    /// Checks a BRIDGE destination's format for its type; a SIP_USER written as a SIP URI
    /// (`sip:alice@host`, `<sips:alice@host;transport=tcp>`, `alice@host`) gives its user part.
    fn check_destination(
        &self,
        e: &mut Errors,
        destination_type: DestinationType,
        s: &'a str,
    ) -> Option<&'a str> {
        let s = match destination_type {
            DestinationType::SipUser => sip_user_part(s),
            _ => s,
        };
        let problem = match destination_type {
            DestinationType::ExternalNumber if !is_phone_number(s) => {
                "an EXTERNALNUMBER destination must be a phone number: an optional '+' and 1 to 32 \
                 digits, no spaces"
            }
            DestinationType::SipUser
                if s.chars().count() > MAX_ADDRESS_CHARS || !s.chars().all(is_sip_user_char) =>
            {
                "a SIP_USER destination must be a SIP user name: at most 64 letters, digits or \
                 -_.!~*'()&=+$,;?/"
            }
            DestinationType::SipTrunk if s.chars().any(char::is_control) => {
                "a SIP_TRUNK destination must be a trunk name without control characters"
            }
            _ => return Some(s),
        };
        e.push(
            self.path("destination"),
            format!("{problem} (got {})", quote(s)),
        );
        None
    }
}

/// The user part of a SIP URI (`sip:alice@host` → `alice`); anything else as it is.
fn sip_user_part(s: &str) -> &str {
    let t = s.trim();
    let t = t
        .strip_prefix('<')
        .and_then(|t| t.strip_suffix('>'))
        .unwrap_or(t);
    let lower = t.get(..5).map(str::to_ascii_lowercase).unwrap_or_default();
    let rest = if lower.starts_with("sips:") {
        &t[5..]
    } else if lower.starts_with("sip:") {
        &t[4..]
    } else {
        t
    };
    match rest.split_once('@') {
        Some((user, host)) if !user.is_empty() && !host.is_empty() => user,
        _ if rest.len() != t.len() && !rest.is_empty() => rest,
        _ => s,
    }
}

/// An optional `+` followed by 1–32 ASCII digits.
fn is_phone_number(s: &str) -> bool {
    let digits = s.strip_prefix('+').unwrap_or(s);
    (1..=32).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit())
}

/// The characters a SIP URI user part may hold unescaped (RFC 3261: unreserved / user-unreserved).
fn is_sip_user_char(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(
            c,
            '-' | '_'
                | '.'
                | '!'
                | '~'
                | '*'
                | '\''
                | '('
                | ')'
                | '&'
                | '='
                | '+'
                | '$'
                | ','
                | ';'
                | '?'
                | '/'
        )
}

fn is_http_url(s: &str) -> bool {
    let lower = s.to_ascii_lowercase();
    // The scheme is ASCII, so these byte offsets are character boundaries in `s`.
    let rest = if lower.starts_with("https://") {
        s.get(8..)
    } else if lower.starts_with("http://") {
        s.get(7..)
    } else {
        None
    };
    let Some(rest) = rest else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit('@').next().unwrap_or("");
    !host.is_empty()
        && !host.starts_with(':')
        && !s
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | '"'))
}

/// A short rendering of a JSON value for error messages (strings quoted and escaped, truncated).
fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => quote(s),
        Value::Array(_) => "an array".to_owned(),
        Value::Object(_) => "an object".to_owned(),
    }
}

/// A string quoted with control characters escaped, cut at 40 characters.
fn quote(s: &str) -> String {
    const LIMIT: usize = 40;
    if s.chars().count() > LIMIT {
        let head: String = s.chars().take(LIMIT).collect();
        format!("{head:?}…")
    } else {
        format!("{s:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: &Value) -> Result<Block, Vec<ValidationError>> {
        parse_block(0, v)
    }

    #[track_caller]
    fn accepted(v: &Value) -> Block {
        match parse(v) {
            Ok(b) => b,
            Err(errors) => panic!("rejected {v}: {errors:?}"),
        }
    }

    #[track_caller]
    fn errors_of(v: &Value) -> Vec<ValidationError> {
        match parse(v) {
            Ok(b) => panic!("accepted {v} as {b:?}"),
            Err(errors) => errors,
        }
    }

    /// Asserts `v` is rejected with exactly one error, on `field`, and returns its message.
    #[track_caller]
    fn rejected_on(v: &Value, field: &str) -> String {
        let errors = errors_of(v);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].field, field, "{errors:?}");
        errors[0].message.clone()
    }

    fn with(base: &Value, field: &str, value: Value) -> Value {
        let mut v = base.clone();
        if let Some(map) = v.as_object_mut() {
            map.insert(field.to_owned(), value);
        }
        v
    }

    fn without(base: &Value, field: &str) -> Value {
        let mut v = base.clone();
        if let Some(map) = v.as_object_mut() {
            map.remove(field);
        }
        v
    }

    /// Integer bounds: min and max accepted (also as strings of digits, as Jackson coerces
    /// them); min-1, max+1, a word, a fraction rejected.
    #[track_caller]
    fn check_int_bounds(base: &Value, field: &str, min: i64, max: i64) {
        accepted(&with(base, field, json!(min)));
        accepted(&with(base, field, json!(max)));
        assert_eq!(
            accepted(&with(base, field, json!(max.to_string()))),
            accepted(&with(base, field, json!(max)))
        );
        let msg = rejected_on(&with(base, field, json!(min - 1)), field);
        assert_eq!(
            msg,
            format!("must be between {min} and {max} (got {})", min - 1)
        );
        let msg = rejected_on(&with(base, field, json!(max + 1)), field);
        assert_eq!(
            msg,
            format!("must be between {min} and {max} (got {})", max + 1)
        );
        let msg = rejected_on(&with(base, field, json!((max + 1).to_string())), field);
        assert!(msg.starts_with("must be between"), "{msg}");
        let msg = rejected_on(&with(base, field, json!("ten")), field);
        assert!(msg.starts_with("must be an integer"), "{msg}");
        let msg = rejected_on(&with(base, field, json!("")), field);
        assert!(msg.starts_with("must be an integer"), "{msg}");
        let msg = rejected_on(&with(base, field, json!(1.5)), field);
        assert!(msg.starts_with("must be an integer"), "{msg}");
    }

    #[track_caller]
    fn check_required(base: &Value, field: &str) {
        assert_eq!(rejected_on(&without(base, field), field), "is required");
        assert_eq!(
            rejected_on(&with(base, field, Value::Null), field),
            "is required"
        );
    }

    #[track_caller]
    fn check_bool(base: &Value, field: &str) {
        accepted(&with(base, field, json!(true)));
        accepted(&with(base, field, json!(false)));
        // Strings as Jackson coerces them.
        assert_eq!(
            accepted(&with(base, field, json!("TRUE"))),
            accepted(&with(base, field, json!(true)))
        );
        assert_eq!(
            accepted(&with(base, field, json!("false"))),
            accepted(&with(base, field, json!(false)))
        );
        let msg = rejected_on(&with(base, field, json!("yes")), field);
        assert_eq!(msg, "must be true or false (got \"yes\")");
    }

    #[track_caller]
    fn check_string_type(base: &Value, field: &str) {
        let msg = rejected_on(&with(base, field, json!(5)), field);
        assert_eq!(msg, "must be a string (got 5)");
        let msg = rejected_on(&with(base, field, json!("  ")), field);
        assert_eq!(msg, "must not be empty");
    }

    fn tenios_collect_digits() -> Value {
        json!({"blockType":"COLLECT_DIGITS","standardAnnouncement":false,
               "announcementName":"enter-digits","standardErrorAnnouncement":false,
               "errorAnnouncementName":"invalid","variableName":"pin","minDigits":3,
               "maxDigits":3,"terminator":"#","maxTries":3,"timeout":10})
    }

    fn collect_speech() -> Value {
        json!({"blockType":"COLLECT_SPEECH","standardAnnouncement":false,
               "announcementName":"say-your-wish","missingInputAnnouncementName":"pardon",
               "language":"de-DE","variableName":"wish","maxTries":2})
    }

    fn sequential_bridge() -> Value {
        json!({"blockType":"BRIDGE","bridgeMode":"SEQUENTIAL","destinations":[
            {"destination":"1001","destinationType":"SIP_USER","timeout":25},
            {"destination":"+4978787878","destinationType":"EXTERNALNUMBER","timeout":30}]})
    }

    fn parallel_bridge() -> Value {
        json!({"blockType":"BRIDGE","blockTimeout":50,"bridgeMode":"PARALLEL","destinations":[
            {"destination":"1001","destinationType":"SIP_USER"},
            {"destination":"+4978787878","destinationType":"EXTERNALNUMBER"}]})
    }

    fn call_control() -> Value {
        json!({"blockType":"CALL_CONTROL","url":"https://example.com/cc","accessKey":"k-1",
               "variables":{"customer":"42"},"timeout":3000,"fallbackPlan":"after-hours"})
    }

    fn ask_url() -> Value {
        json!({"blockType":"ASK_URL","url":"http://router.example.net/route","timeout":4,
               "timeoutDestination":"fallback","answerUrl":"https://example.net/a",
               "hangupUrl":"https://example.net/h"})
    }

    // ----- realistic payloads -------------------------------------------------------------

    #[test]
    fn tenios_collect_digits_example_parses_and_serializes_back_identically() {
        let v = tenios_collect_digits();
        let block = accepted(&v);
        assert_eq!(
            block,
            Block::CollectDigits(CollectDigitsBlock {
                standard_announcement: false,
                announcement_name: "enter-digits".into(),
                standard_error_announcement: false,
                error_announcement_name: Some("invalid".into()),
                variable_name: "pin".into(),
                min_digits: 3,
                max_digits: 3,
                terminator: Terminator::Hash,
                max_tries: 3,
                timeout: 10,
                allow_speech_input: false,
                language: None,
                asr_provider: None,
            })
        );
        let mut back = v.clone();
        back["allowSpeechInput"] = json!(false);
        assert_eq!(serde_json::to_value(&block).ok(), Some(back));
    }

    #[test]
    fn tenios_bridge_examples_parse() {
        let Block::Bridge(seq) = accepted(&sequential_bridge()) else {
            panic!("not a bridge");
        };
        assert_eq!(seq.bridge_mode, BridgeMode::Sequential);
        assert_eq!(seq.block_timeout, None);
        assert_eq!(
            seq.destinations,
            vec![
                BridgeDestination {
                    destination_type: DestinationType::SipUser,
                    destination: "1001".into(),
                    timeout: Some(25),
                },
                BridgeDestination {
                    destination_type: DestinationType::ExternalNumber,
                    destination: "+4978787878".into(),
                    timeout: Some(30),
                },
            ]
        );
        let Block::Bridge(par) = accepted(&parallel_bridge()) else {
            panic!("not a bridge");
        };
        assert_eq!(par.bridge_mode, BridgeMode::Parallel);
        assert_eq!(par.block_timeout, Some(50));
        assert!(par.destinations.iter().all(|d| d.timeout.is_none()));
    }

    #[test]
    fn tenios_webhook_answer_with_several_blocks_parses_in_order() {
        let answer = json!({"blocks":[
            {"blockType":"ANNOUNCEMENT","standardAnnouncement":false,
             "announcementName":"MySpecialAnnouncement"},
            tenios_collect_digits(),
            {"blockType":"SAY","text":"Sie werden verbunden","voiceName":"de","useSsml":false},
            sequential_bridge(),
            {"blockType":"HANGUP","hangupCause":"NORMAL_CLEARING"}]});
        let blocks = parse_blocks(&answer["blocks"]).unwrap_or_default();
        let types: Vec<&str> = blocks.iter().map(Block::block_type).collect();
        assert_eq!(
            types,
            ["ANNOUNCEMENT", "COLLECT_DIGITS", "SAY", "BRIDGE", "HANGUP"]
        );
        assert_eq!(parse_blocks(&json!([])), Ok(vec![]));
    }

    // ----- errors: shape and collection -----------------------------------------------------

    #[test]
    fn display_names_index_type_field_and_value() {
        let bad = with(&tenios_collect_digits(), "maxDigits", json!(40));
        let list =
            json!([{"blockType":"HANGUP","hangupCause":"USER_BUSY"}, sequential_bridge(), bad]);
        let errors = parse_blocks(&list).err().unwrap_or_default();
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            ["block 2 (COLLECT_DIGITS): field 'maxDigits': must be between 1 and 32 and >= minDigits (got 40)"]
        );
    }

    #[test]
    fn all_errors_of_all_blocks_are_collected() {
        let digits = json!({"blockType":"COLLECT_DIGITS","announcementName":"p",
            "variableName":"Pin","minDigits":0,"maxDigits":"four","terminator":"5","maxTries":11,
            "timeout":0});
        let list = json!([digits, {"blockType":"SAY","text":"ok"},
                          {"blockType":"HANGUP","hangupCause":"LATER"}, {"blockType":"NOPE"}, 7]);
        let errors = parse_blocks(&list).err().unwrap_or_default();
        let got: Vec<(usize, Option<&str>, &str)> = errors
            .iter()
            .map(|e| (e.index, e.block_type.as_deref(), e.field.as_str()))
            .collect();
        let cd = Some("COLLECT_DIGITS");
        assert_eq!(
            got,
            [
                (0, cd, "variableName"),
                (0, cd, "minDigits"),
                (0, cd, "maxDigits"),
                (0, cd, "terminator"),
                (0, cd, "maxTries"),
                (0, cd, "timeout"),
                (2, Some("HANGUP"), "hangupCause"),
                (3, None, "blockType"),
                (4, None, ""),
            ]
        );
        assert_eq!(
            errors[8].to_string(),
            "block 4: must be a JSON object (got 7)"
        );
        assert_eq!(
            errors[7].to_string(),
            "block 3: field 'blockType': unknown block type \"NOPE\" (expected one of \
             ANNOUNCEMENT, SAY, SAY_DIGITS, COLLECT_DIGITS, COLLECT_SPEECH, BRIDGE, HANGUP, ROUTINGPLAN, \
             CALL_SETTINGS, REFER, CALL_CONTROL, ASK_URL, CONFERENCE, STREAM)"
        );
    }

    #[test]
    fn missing_or_non_string_block_type_is_an_error_on_block_type() {
        assert_eq!(
            rejected_on(&json!({"text":"x"}), "blockType"),
            "is required"
        );
        assert_eq!(
            rejected_on(&json!({"blockType":3}), "blockType"),
            "must be a string (got 3)"
        );
        // Any case, and TENIOS's documentation's spelling with a space.
        accepted(&json!({"blockType":"hangup","hangupCause":"USER_BUSY"}));
        accepted(&json!({"blockType":"Collect Digits","announcementName":"p",
                         "variableName":"pin","minDigits":1,"maxDigits":4}));
        rejected_on(&json!({"blockType":"HANG UP"}), "blockType");
    }

    #[test]
    fn the_list_must_be_an_array_of_bounded_length() {
        let errors = parse_blocks(&json!({"blocks":[]}))
            .err()
            .unwrap_or_default();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].field, "blocks");
        assert!(errors[0].message.contains("JSON array"), "{:?}", errors[0]);
        let many = Value::Array(vec![
            json!({"blockType":"CALL_SETTINGS","forwardAni":true});
            MAX_BLOCKS
        ]);
        assert_eq!(parse_blocks(&many).map(|b| b.len()), Ok(MAX_BLOCKS));
        let too_many = Value::Array(vec![
            json!({"blockType":"CALL_SETTINGS","forwardAni":true});
            MAX_BLOCKS + 1
        ]);
        let errors = parse_blocks(&too_many).err().unwrap_or_default();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].field, "blocks");
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let v = with(
            &tenios_collect_digits(),
            "somethingNew",
            json!({"nested": [1, 2]}),
        );
        assert_eq!(accepted(&v), accepted(&tenios_collect_digits()));
        let v = json!({"blockType":"HANGUP","hangupCause":"USER_BUSY","comment":"bye"});
        assert_eq!(
            accepted(&v),
            Block::Hangup(HangupBlock {
                hangup_cause: HangupCause::UserBusy
            })
        );
    }

    #[test]
    fn long_and_odd_values_are_quoted_escaped_and_truncated_in_messages() {
        let v = with(
            &tenios_collect_digits(),
            "variableName",
            json!(format!("A\n{}", "x".repeat(50))),
        );
        let msg = rejected_on(&v, "variableName");
        assert!(msg.contains("(got \"A\\nxxxx"), "{msg}");
        assert!(msg.ends_with("…)"), "{msg}");
    }

    // ----- ANNOUNCEMENT ------------------------------------------------------------------------

    #[test]
    fn announcement_fields() {
        let base = json!({"blockType":"ANNOUNCEMENT","standardAnnouncement":true,
                          "announcementName":"welcome"});
        assert_eq!(
            accepted(&base),
            Block::Announcement(AnnouncementBlock {
                standard_announcement: true,
                announcement_name: "welcome".into()
            })
        );
        check_required(&base, "announcementName");
        check_string_type(&base, "announcementName");
        check_bool(&base, "standardAnnouncement");
        let Block::Announcement(a) = accepted(&without(&base, "standardAnnouncement")) else {
            panic!("not an announcement");
        };
        assert!(!a.standard_announcement, "default is false");
        accepted(&with(
            &base,
            "announcementName",
            json!("a".repeat(MAX_NAME_CHARS)),
        ));
        rejected_on(
            &with(
                &base,
                "announcementName",
                json!("a".repeat(MAX_NAME_CHARS + 1)),
            ),
            "announcementName",
        );
        rejected_on(
            &with(&base, "announcementName", json!("a\u{0}b")),
            "announcementName",
        );
    }

    // ----- SAY ---------------------------------------------------------------------------------

    #[test]
    fn say_fields() {
        let base = json!({"blockType":"SAY","text":"Hallo","voiceName":"de+f3","useSsml":true});
        assert_eq!(
            accepted(&base),
            Block::Say(SayBlock {
                text: "Hallo".into(),
                voice_name: Some("de+f3".into()),
                use_ssml: true
            })
        );
        check_required(&base, "text");
        check_string_type(&base, "text");
        accepted(&with(&base, "text", json!("ä".repeat(MAX_SAY_TEXT_CHARS))));
        let msg = rejected_on(
            &with(&base, "text", json!("a".repeat(MAX_SAY_TEXT_CHARS + 1))),
            "text",
        );
        assert_eq!(msg, "must be at most 5000 characters (got 5001)");
        check_bool(&base, "useSsml");
        check_string_type(&base, "voiceName");
        rejected_on(&with(&base, "voiceName", json!("--stdout")), "voiceName");
        rejected_on(&with(&base, "voiceName", json!("en us")), "voiceName");
        let defaults = accepted(&json!({"blockType":"SAY","text":"Hi"}));
        assert_eq!(
            defaults,
            Block::Say(SayBlock {
                text: "Hi".into(),
                voice_name: None,
                use_ssml: false
            })
        );
        // TENIOS voice names.
        for voice in ["de.female.1", "en-us.male.2", "en-au.female.1"] {
            accepted(&with(&base, "voiceName", json!(voice)));
        }
        // With useSsml the text must be SSML; without, markup is just text.
        accepted(&with(
            &base,
            "text",
            json!("<speak>Hallo <break time=\"1s\"/></speak>"),
        ));
        let msg = rejected_on(
            &with(&base, "text", json!("<speak>Hallo <blink/></speak>")),
            "text",
        );
        assert!(
            msg.starts_with("must be valid SSML when useSsml is true: <blink>"),
            "{msg}"
        );
        rejected_on(&with(&base, "text", json!("<speak>Hallo")), "text");
        let plain = with(
            &with(&base, "text", json!("<speak>Hallo")),
            "useSsml",
            json!(false),
        );
        accepted(&plain);
    }

    // ----- COLLECT_DIGITS ----------------------------------------------------------------------

    #[test]
    fn collect_digits_required_fields() {
        let base = tenios_collect_digits();
        for field in ["announcementName", "variableName", "minDigits", "maxDigits"] {
            check_required(&base, field);
        }
    }

    #[test]
    fn collect_digits_defaults() {
        let mut base = tenios_collect_digits();
        for field in [
            "standardAnnouncement",
            "standardErrorAnnouncement",
            "errorAnnouncementName",
            "terminator",
            "maxTries",
            "timeout",
        ] {
            base = without(&base, field);
        }
        let Block::CollectDigits(b) = accepted(&base) else {
            panic!("not collect digits");
        };
        assert!(!b.standard_announcement);
        assert!(!b.standard_error_announcement);
        assert_eq!(b.error_announcement_name, None);
        assert_eq!(b.terminator, Terminator::Hash);
        assert_eq!(b.max_tries, 3);
        assert_eq!(b.timeout, 10);
    }

    #[test]
    fn collect_digits_min_digits_bounds() {
        // maxDigits 32 so that only minDigits' own bound is under test.
        let base = with(&tenios_collect_digits(), "maxDigits", json!(32));
        check_int_bounds(&base, "minDigits", 1, 32);
    }

    #[test]
    fn collect_digits_max_digits_bounds_and_order() {
        let base = with(&tenios_collect_digits(), "minDigits", json!(1));
        accepted(&with(&base, "maxDigits", json!(1)));
        accepted(&with(&base, "maxDigits", json!(32)));
        for bad in [0, 33] {
            let msg = rejected_on(&with(&base, "maxDigits", json!(bad)), "maxDigits");
            assert_eq!(
                msg,
                format!("must be between 1 and 32 and >= minDigits (got {bad})")
            );
        }
        let base = with(&tenios_collect_digits(), "minDigits", json!(4));
        accepted(&with(&base, "maxDigits", json!(4)));
        let msg = rejected_on(&with(&base, "maxDigits", json!(3)), "maxDigits");
        assert_eq!(msg, "must be between 1 and 32 and >= minDigits (got 3)");
        rejected_on(&with(&base, "maxDigits", json!("3")), "maxDigits");
        accepted(&with(&base, "maxDigits", json!("8")));
        rejected_on(&with(&base, "maxDigits", json!(8.5)), "maxDigits");
        // A whole float is an integer.
        accepted(&with(&base, "maxDigits", json!(8.0)));
    }

    #[test]
    fn collect_digits_max_tries_and_timeout_bounds() {
        check_int_bounds(&tenios_collect_digits(), "maxTries", 1, 10);
        check_int_bounds(&tenios_collect_digits(), "timeout", 1, 300);
    }

    #[test]
    fn huge_and_negative_numbers_are_out_of_range_not_wrapped() {
        let base = tenios_collect_digits();
        for n in [
            json!(u64::MAX),
            json!(i64::MIN),
            json!(-1),
            json!(4_294_967_306_u64),
            json!(1e300),
        ] {
            let msg = rejected_on(&with(&base, "timeout", n.clone()), "timeout");
            assert_eq!(msg, format!("must be between 1 and 300 (got {n})"));
        }
    }

    #[test]
    fn collect_digits_terminator() {
        let base = tenios_collect_digits();
        let Block::CollectDigits(b) = accepted(&with(&base, "terminator", json!("*"))) else {
            panic!("not collect digits");
        };
        assert_eq!(b.terminator, Terminator::Star);
        assert_eq!(b.terminator.as_char(), '*');
        for bad in [json!("5"), json!("##"), json!(""), json!(35)] {
            let msg = rejected_on(&with(&base, "terminator", bad.clone()), "terminator");
            assert_eq!(msg, format!("must be one of #, * (got {bad})"));
        }
    }

    #[test]
    fn collect_digits_variable_name_pattern() {
        let base = tenios_collect_digits();
        for good in ["pin", "a", "account_no_2", "0", "_"] {
            accepted(&with(&base, "variableName", json!(good)));
        }
        for bad in ["Pin", "pin-code", "pin code", "pïn", "a.b"] {
            let msg = rejected_on(&with(&base, "variableName", json!(bad)), "variableName");
            assert!(msg.starts_with("must match ^[a-z0-9_]+$"), "{msg}");
        }
        check_string_type(&base, "variableName");
        accepted(&with(
            &base,
            "variableName",
            json!("a".repeat(MAX_VARIABLE_NAME_CHARS)),
        ));
        rejected_on(
            &with(
                &base,
                "variableName",
                json!("a".repeat(MAX_VARIABLE_NAME_CHARS + 1)),
            ),
            "variableName",
        );
        let msg = rejected_on(
            &with(&base, "variableName", json!("call_uuid")),
            "variableName",
        );
        assert!(msg.contains("cannot be overwritten"), "{msg}");
    }

    #[test]
    fn collect_digits_announcement_fields() {
        let base = tenios_collect_digits();
        check_bool(&base, "standardAnnouncement");
        check_bool(&base, "standardErrorAnnouncement");
        check_string_type(&base, "announcementName");
        check_string_type(&base, "errorAnnouncementName");
        accepted(&with(&base, "errorAnnouncementName", Value::Null));
    }

    // ----- COLLECT_SPEECH ----------------------------------------------------------------------

    #[test]
    fn collect_speech_fields() {
        let base = collect_speech();
        assert_eq!(
            accepted(&base),
            Block::CollectSpeech(CollectSpeechBlock {
                standard_announcement: false,
                announcement_name: Some("say-your-wish".into()),
                standard_missing_input_announcement: false,
                missing_input_announcement_name: Some("pardon".into()),
                language: "de-DE".into(),
                variable_name: "wish".into(),
                max_tries: 2,
                timeout: 10,
                asr_provider: None,
            })
        );
        for field in ["language", "variableName"] {
            check_required(&base, field);
        }
        check_int_bounds(&base, "maxTries", 1, 10);
        check_int_bounds(&base, "timeout", 1, 300);
        // As a TENIOS voice-bot app sends it: no announcement, a provider, a timeout.
        let tenios = json!({"blockType":"COLLECT_SPEECH","asrProvider":"GOOGLE",
                            "language":"de-DE","variableName":"user_input","maxTries":2,
                            "timeout":10});
        let Block::CollectSpeech(b) = accepted(&tenios) else {
            panic!("not collect speech");
        };
        assert_eq!(b.announcement_name, None);
        assert_eq!(b.asr_provider.as_deref(), Some("GOOGLE"));
        rejected_on(&with(&tenios, "asrProvider", json!("a b")), "asrProvider");
        check_string_type(&base, "missingInputAnnouncementName");
        check_bool(&base, "standardMissingInputAnnouncement");
        for bad in ["de DE", "-de", "1de", "de;rm"] {
            rejected_on(&with(&base, "language", json!(bad)), "language");
        }
        accepted(&with(&base, "language", json!("en-US")));
        rejected_on(&with(&base, "variableName", json!("Wish")), "variableName");
        let Block::CollectSpeech(b) = accepted(&without(
            &without(&base, "maxTries"),
            "missingInputAnnouncementName",
        )) else {
            panic!("not collect speech");
        };
        assert_eq!(b.max_tries, 3);
        assert_eq!(b.missing_input_announcement_name, None);
    }

    // ----- BRIDGE ------------------------------------------------------------------------------

    fn set_dest(base: &Value, i: usize, field: &str, value: Value) -> Value {
        let mut v = base.clone();
        if let Some(d) = v["destinations"][i].as_object_mut() {
            d.insert(field.to_owned(), value);
        }
        v
    }

    fn unset_dest(base: &Value, i: usize, field: &str) -> Value {
        let mut v = base.clone();
        if let Some(d) = v["destinations"][i].as_object_mut() {
            d.remove(field);
        }
        v
    }

    #[test]
    fn bridge_mode_is_required_and_checked() {
        check_required(&sequential_bridge(), "bridgeMode");
        let msg = rejected_on(
            &with(&sequential_bridge(), "bridgeMode", json!("serial")),
            "bridgeMode",
        );
        assert_eq!(msg, "must be one of SEQUENTIAL, PARALLEL (got \"serial\")");
        // Case does not matter.
        accepted(&with(
            &sequential_bridge(),
            "bridgeMode",
            json!("sequential"),
        ));
    }

    #[test]
    fn sequential_destination_timeouts_are_checked_and_default() {
        let base = sequential_bridge();
        accepted(&set_dest(&base, 0, "timeout", json!(1)));
        accepted(&set_dest(&base, 0, "timeout", json!(600)));
        for bad in [json!(0), json!(601), json!("x")] {
            rejected_on(
                &set_dest(&base, 0, "timeout", bad),
                "destinations[0].timeout",
            );
        }
        // As TENIOS's example servers send it: no timeout at all.
        let Block::Bridge(b) = accepted(&unset_dest(&base, 1, "timeout")) else {
            panic!("not a bridge");
        };
        assert_eq!(b.destinations[1].timeout, Some(DEFAULT_RING_TIMEOUT));
        assert_eq!(b.block_timeout, None);
        // A blockTimeout is the default of a destination without its own, then dropped.
        let with_block = with(&unset_dest(&base, 1, "timeout"), "blockTimeout", json!(12));
        let Block::Bridge(b) = accepted(&with_block) else {
            panic!("not a bridge");
        };
        assert_eq!(b.destinations[0].timeout, Some(25));
        assert_eq!(b.destinations[1].timeout, Some(12));
        assert_eq!(b.block_timeout, None);
        rejected_on(&with(&base, "blockTimeout", json!("x")), "blockTimeout");
    }

    #[test]
    fn parallel_block_timeout_is_checked_and_defaults() {
        let base = parallel_bridge();
        check_int_bounds(&base, "blockTimeout", 1, 600);
        // Destination timeouts are not used in PARALLEL mode, only checked.
        let Block::Bridge(b) = accepted(&set_dest(&base, 0, "timeout", json!(600))) else {
            panic!("not a bridge");
        };
        assert_eq!(b.destinations[0].timeout, None);
        rejected_on(
            &set_dest(&base, 0, "timeout", json!(9999)),
            "destinations[0].timeout",
        );
        // Without blockTimeout: the longest destination timeout, else the default.
        let Block::Bridge(b) = accepted(&without(&base, "blockTimeout")) else {
            panic!("not a bridge");
        };
        assert_eq!(b.block_timeout, Some(DEFAULT_RING_TIMEOUT));
        let longest = set_dest(
            &set_dest(&without(&base, "blockTimeout"), 0, "timeout", json!(20)),
            1,
            "timeout",
            json!(45),
        );
        let Block::Bridge(b) = accepted(&longest) else {
            panic!("not a bridge");
        };
        assert_eq!(b.block_timeout, Some(45));
    }

    #[test]
    fn sip_user_destinations_may_be_sip_uris() {
        let base = parallel_bridge();
        for (written, user) in [
            ("sip:alice@pbx.example.com", "alice"),
            ("SIP:alice@10.0.0.1:5060", "alice"),
            ("sips:bob.smith@example.com;transport=tls", "bob.smith"),
            ("<sip:1001@204671.tenios.com>", "1001"),
            ("carol@example.com", "carol"),
            ("sip:dave", "dave"),
            ("erin", "erin"),
        ] {
            let v = set_dest(
                &set_dest(&base, 0, "destinationType", json!("SIP_USER")),
                0,
                "destination",
                json!(written),
            );
            let Block::Bridge(b) = accepted(&v) else {
                panic!("not a bridge");
            };
            assert_eq!(b.destinations[0].destination, user, "{written}");
        }
        for bad in ["sip:@example.com", "sip:a b@example.com", "<sip:>"] {
            let v = set_dest(
                &set_dest(&base, 0, "destinationType", json!("SIP_USER")),
                0,
                "destination",
                json!(bad),
            );
            rejected_on(&v, "destinations[0].destination");
        }
    }

    #[test]
    fn destinations_must_be_a_bounded_non_empty_array_of_objects() {
        let base = sequential_bridge();
        check_required(&base, "destinations");
        assert_eq!(
            rejected_on(&with(&base, "destinations", json!({})), "destinations"),
            "must be an array (got an object)"
        );
        assert_eq!(
            rejected_on(&with(&base, "destinations", json!([])), "destinations"),
            "must hold between 1 and 20 destinations (got 0)"
        );
        let one = json!({"destination":"1001","destinationType":"SIP_USER","timeout":5});
        accepted(&with(
            &base,
            "destinations",
            Value::Array(vec![one.clone(); MAX_DESTINATIONS]),
        ));
        rejected_on(
            &with(
                &base,
                "destinations",
                Value::Array(vec![one; MAX_DESTINATIONS + 1]),
            ),
            "destinations",
        );
        assert_eq!(
            rejected_on(
                &with(&base, "destinations", json!(["1001"])),
                "destinations[0]"
            ),
            "must be an object (got \"1001\")"
        );
    }

    #[test]
    fn destination_type_and_destination_are_required_and_checked() {
        let base = sequential_bridge();
        assert_eq!(
            rejected_on(
                &unset_dest(&base, 0, "destinationType"),
                "destinations[0].destinationType"
            ),
            "is required"
        );
        assert_eq!(
            rejected_on(
                &unset_dest(&base, 1, "destination"),
                "destinations[1].destination"
            ),
            "is required"
        );
        rejected_on(
            &set_dest(&base, 0, "destinationType", json!("PHONE")),
            "destinations[0].destinationType",
        );
        rejected_on(
            &set_dest(&base, 0, "destination", json!("")),
            "destinations[0].destination",
        );
        rejected_on(
            &set_dest(&base, 0, "destination", json!(1001)),
            "destinations[0].destination",
        );
    }

    #[test]
    fn destination_format_depends_on_its_type() {
        let base = sequential_bridge();
        let ext = |d: &str| {
            let v = set_dest(&base, 0, "destinationType", json!("EXTERNALNUMBER"));
            set_dest(&v, 0, "destination", json!(d))
        };
        let user = |d: &str| set_dest(&base, 0, "destination", json!(d));
        let trunk = |d: &str| {
            let v = set_dest(&base, 0, "destinationType", json!("SIP_TRUNK"));
            set_dest(&v, 0, "destination", json!(d))
        };
        accepted(&ext("+49221987654321"));
        accepted(&ext("0221987654"));
        for bad in ["+49 221 98", "+", "49-221", "sip:x@y", &"1".repeat(33)] {
            rejected_on(&ext(bad), "destinations[0].destination");
        }
        accepted(&user("alice.smith"));
        accepted(&user("1001"));
        // A SIP URI names its user.
        accepted(&user("a@b"));
        for bad in ["a b", "<x>", "a:b", "@b", &"u".repeat(65)] {
            rejected_on(&user(bad), "destinations[0].destination");
        }
        accepted(&trunk("Carrier One"));
        rejected_on(&trunk("bad\r\nname"), "destinations[0].destination");
    }

    #[test]
    fn unknown_mode_still_reports_destination_problems() {
        let v = set_dest(
            &with(&parallel_bridge(), "bridgeMode", json!("BOTH")),
            1,
            "destination",
            json!(""),
        );
        let fields: Vec<String> = errors_of(&v).into_iter().map(|e| e.field).collect();
        assert_eq!(fields, ["bridgeMode", "destinations[1].destination"]);
    }

    // ----- HANGUP, ROUTINGPLAN, CALL_SETTINGS, REFER -------------------------------------------

    #[test]
    fn hangup_cause_is_optional_and_a_q850_name() {
        let base = json!({"blockType":"HANGUP","hangupCause":"CALL_REJECTED"});
        assert_eq!(
            accepted(&base),
            Block::Hangup(HangupBlock {
                hangup_cause: HangupCause::CallRejected
            })
        );
        for c in HangupCause::ALL {
            accepted(&with(&base, "hangupCause", json!(c.as_str())));
        }
        // TENIOS apps send a bare HANGUP: a normal clearing.
        for bare in [
            without(&base, "hangupCause"),
            with(&base, "hangupCause", Value::Null),
        ] {
            assert_eq!(
                accepted(&bare),
                Block::Hangup(HangupBlock {
                    hangup_cause: HangupCause::NormalClearing
                })
            );
        }
        assert_eq!(
            accepted(&with(&base, "hangupCause", json!("user_busy"))),
            Block::Hangup(HangupBlock {
                hangup_cause: HangupCause::UserBusy
            })
        );
        check_string_type(&base, "hangupCause");
        let msg = rejected_on(&with(&base, "hangupCause", json!("BUSY")), "hangupCause");
        assert!(msg.starts_with("must be a Q.850 cause name"), "{msg}");
        assert!(msg.ends_with("(got \"BUSY\")"), "{msg}");
    }

    #[test]
    fn routingplan_name_is_required() {
        let base = json!({"blockType":"ROUTINGPLAN","routingplanName":"Main menu"});
        assert_eq!(
            accepted(&base),
            Block::RoutingPlan(RoutingPlanBlock {
                routingplan_name: "Main menu".into()
            })
        );
        check_required(&base, "routingplanName");
        check_string_type(&base, "routingplanName");
    }

    #[test]
    fn call_settings_forward_ani_is_a_boolean_or_a_number() {
        let base = json!({"blockType":"CALL_SETTINGS","forwardAni":false});
        let settings = |v: Value| accepted(&with(&base, "forwardAni", v));
        let expect = |forward_ani| Block::CallSettings(CallSettingsBlock { forward_ani });
        assert_eq!(accepted(&base), expect(ForwardAni::Called));
        assert_eq!(settings(json!(true)), expect(ForwardAni::Caller));
        assert_eq!(settings(json!("true")), expect(ForwardAni::Caller));
        assert_eq!(settings(json!("False")), expect(ForwardAni::Called));
        let number = ForwardAni::Number("+4930123456".into());
        assert_eq!(settings(json!("+4930123456")), expect(number.clone()));
        assert_eq!(
            settings(json!(4930123456_u64)),
            expect(ForwardAni::Number("4930123456".into()))
        );
        // It serializes back as it came.
        assert_eq!(
            serde_json::to_value(expect(number)).ok(),
            Some(json!({"blockType":"CALL_SETTINGS","forwardAni":"+4930123456"}))
        );
        check_required(&base, "forwardAni");
        for bad in [json!("yes"), json!("+49 30"), json!(-5), json!([true])] {
            let msg = rejected_on(&with(&base, "forwardAni", bad), "forwardAni");
            assert!(
                msg.starts_with("must be true, false or the phone number"),
                "{msg}"
            );
        }
    }

    #[test]
    fn refer_destination_is_a_sip_uri_or_number() {
        let base = json!({"blockType":"REFER","destination":"sip:+4922155400300@pbx.example.com"});
        accepted(&base);
        check_required(&base, "destination");
        check_string_type(&base, "destination");
        for good in [
            "+4922155400300",
            "SIPS:alice@example.com;transport=tls",
            "tel:+4922155",
        ] {
            accepted(&with(&base, "destination", json!(good)));
        }
        for bad in [
            "sip:",
            "alice",
            "sip:a b@c",
            "<sip:a@b>",
            "http://x",
            "sip:a@b\r\nX: y",
        ] {
            rejected_on(&with(&base, "destination", json!(bad)), "destination");
        }
        rejected_on(
            &with(
                &base,
                "destination",
                json!(format!("sip:{}", "a".repeat(MAX_REFER_TARGET_CHARS))),
            ),
            "destination",
        );
    }

    // ----- CALL_CONTROL ------------------------------------------------------------------------

    #[test]
    fn call_control_fields_and_defaults() {
        let base = call_control();
        assert_eq!(
            accepted(&base),
            Block::CallControl(CallControlBlock {
                url: "https://example.com/cc".into(),
                access_key: Some("k-1".into()),
                variables: BTreeMap::from([("customer".to_owned(), "42".to_owned())]),
                timeout: 3000,
                fallback_plan: Some("after-hours".into()),
            })
        );
        check_required(&base, "url");
        check_string_type(&base, "url");
        check_int_bounds(&base, "timeout", 100, 60_000);
        check_string_type(&base, "accessKey");
        check_string_type(&base, "fallbackPlan");
        let minimal = json!({"blockType":"CALL_CONTROL","url":"http://127.0.0.1:8080/hook"});
        assert_eq!(
            accepted(&minimal),
            Block::CallControl(CallControlBlock {
                url: "http://127.0.0.1:8080/hook".into(),
                access_key: None,
                variables: BTreeMap::new(),
                timeout: 5000,
                fallback_plan: None,
            })
        );
    }

    #[test]
    fn call_control_url_must_be_http_or_https_with_a_host() {
        let base = call_control();
        for good in [
            "HTTPS://Example.com",
            "http://[::1]:9/x?y=1#z",
            "https://user@h/p",
        ] {
            accepted(&with(&base, "url", json!(good)));
        }
        for bad in [
            "ftp://x",
            "https://",
            "http:///path",
            "https://:80/",
            "example.com/cc",
            "https://a b",
        ] {
            let msg = rejected_on(&with(&base, "url", json!(bad)), "url");
            assert!(
                msg.starts_with("must be an http:// or https:// URL"),
                "{msg}"
            );
        }
    }

    #[test]
    fn call_control_variables_are_scalars_converted_to_strings() {
        let base = call_control();
        let v = with(&base, "variables", json!({"a":"x","n":42,"f":1.5,"b":true}));
        let Block::CallControl(b) = accepted(&v) else {
            panic!("not call control");
        };
        let got: Vec<(&str, &str)> = b
            .variables
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(got, [("a", "x"), ("b", "true"), ("f", "1.5"), ("n", "42")]);
        let v = with(
            &base,
            "variables",
            json!({"ok":"1","list":[1],"obj":{},"nil":null,"call_uuid":"x"}),
        );
        let fields: Vec<String> = errors_of(&v).into_iter().map(|e| e.field).collect();
        assert_eq!(
            fields,
            [
                "variables.call_uuid",
                "variables.list",
                "variables.nil",
                "variables.obj"
            ]
        );
        assert_eq!(
            rejected_on(&with(&base, "variables", json!(["a"])), "variables"),
            "must be an object of strings (got an array)"
        );
        let many: Map<String, Value> = (0..=MAX_VARIABLES)
            .map(|i| (format!("v{i}"), json!("x")))
            .collect();
        rejected_on(&with(&base, "variables", Value::Object(many)), "variables");
        rejected_on(&with(&base, "variables", json!({"": "x"})), "variables.");
    }

    // ----- ASK_URL -----------------------------------------------------------------------------

    #[test]
    fn ask_url_fields_and_defaults() {
        let base = ask_url();
        assert_eq!(
            accepted(&base),
            Block::AskUrl(AskUrlBlock {
                url: "http://router.example.net/route".into(),
                timeout: 4,
                timeout_destination: Some(TimeoutDestination::Plan("fallback".into())),
                answer_url: Some("https://example.net/a".into()),
                hangup_url: Some("https://example.net/h".into()),
            })
        );
        check_required(&base, "url");
        check_int_bounds(&base, "timeout", 1, 60);
        rejected_on(&with(&base, "answerUrl", json!("mailto:x@y")), "answerUrl");
        rejected_on(&with(&base, "hangupUrl", json!(3)), "hangupUrl");
        let minimal = json!({"blockType":"ASK_URL","url":"https://r.example"});
        assert_eq!(
            accepted(&minimal),
            Block::AskUrl(AskUrlBlock {
                url: "https://r.example".into(),
                timeout: 5,
                timeout_destination: None,
                answer_url: None,
                hangup_url: None,
            })
        );
    }

    #[test]
    fn ask_url_timeout_destination_is_a_plan_name_or_dtype_dnumber() {
        let base = ask_url();
        let target = |v: Value| with(&base, "timeoutDestination", v);
        let Block::AskUrl(b) = accepted(&target(json!({"dtype":"phone","dnumber":"1001"}))) else {
            panic!("not ask url");
        };
        assert_eq!(
            b.timeout_destination,
            Some(TimeoutDestination::Target {
                dtype: AskUrlDestinationType::Phone,
                dnumber: Some("1001".into())
            })
        );
        accepted(&target(json!({"dtype":"hangup"})));
        accepted(&target(json!({"dtype":"external","dnumber":"+4930123"})));
        accepted(&target(json!({"dtype":"plan","dnumber":"night"})));
        assert_eq!(
            rejected_on(
                &target(json!({"dtype":"plan"})),
                "timeoutDestination.dnumber"
            ),
            "is required"
        );
        rejected_on(
            &target(json!({"dtype":"queue","dnumber":"1"})),
            "timeoutDestination.dtype",
        );
        rejected_on(&target(json!({"dnumber":"1"})), "timeoutDestination.dtype");
        rejected_on(&target(json!("")), "timeoutDestination");
        let msg = rejected_on(&target(json!(12)), "timeoutDestination");
        assert!(msg.starts_with("must be a plan name or an object"), "{msg}");
        assert_eq!(
            AskUrlDestinationType::parse("external"),
            Some(AskUrlDestinationType::External)
        );
        assert_eq!(AskUrlDestinationType::parse("EXTERNAL"), None);
        assert_eq!(AskUrlDestinationType::Hangup.as_str(), "hangup");
    }

    // ----- round trip --------------------------------------------------------------------------

    fn one_of_each() -> Vec<Block> {
        vec![
            Block::Announcement(AnnouncementBlock {
                standard_announcement: true,
                announcement_name: "welcome".into(),
            }),
            Block::Say(SayBlock {
                text: "<speak>Hallo</speak>".into(),
                voice_name: Some("de".into()),
                use_ssml: true,
            }),
            Block::Say(SayBlock {
                text: "Hi".into(),
                voice_name: None,
                use_ssml: false,
            }),
            Block::SayDigits(SayDigitsBlock {
                variable_name: "pin".into(),
            }),
            Block::CollectDigits(CollectDigitsBlock {
                standard_announcement: true,
                announcement_name: "enter".into(),
                standard_error_announcement: true,
                error_announcement_name: None,
                variable_name: "account".into(),
                min_digits: 1,
                max_digits: 12,
                terminator: Terminator::Star,
                max_tries: 5,
                timeout: 300,
                allow_speech_input: true,
                language: Some("de-DE".into()),
                asr_provider: Some("GOOGLE".into()),
            }),
            Block::CollectSpeech(CollectSpeechBlock {
                standard_announcement: false,
                announcement_name: Some("speak".into()),
                standard_missing_input_announcement: true,
                missing_input_announcement_name: Some("again".into()),
                language: "en-US".into(),
                variable_name: "said".into(),
                max_tries: 1,
                timeout: 5,
                asr_provider: None,
            }),
            Block::CollectSpeech(CollectSpeechBlock {
                standard_announcement: false,
                announcement_name: None,
                standard_missing_input_announcement: false,
                missing_input_announcement_name: None,
                language: "de-DE".into(),
                variable_name: "said".into(),
                max_tries: 3,
                timeout: 10,
                asr_provider: Some("MICROSOFT".into()),
            }),
            Block::Bridge(BridgeBlock {
                bridge_mode: BridgeMode::Sequential,
                block_timeout: None,
                destinations: vec![
                    BridgeDestination {
                        destination_type: DestinationType::SipTrunk,
                        destination: "carrier".into(),
                        timeout: Some(600),
                    },
                    BridgeDestination {
                        destination_type: DestinationType::ExternalNumber,
                        destination: "+4930".into(),
                        timeout: Some(1),
                    },
                ],
            }),
            Block::Bridge(BridgeBlock {
                bridge_mode: BridgeMode::Parallel,
                block_timeout: Some(45),
                destinations: vec![BridgeDestination {
                    destination_type: DestinationType::SipUser,
                    destination: "alice".into(),
                    timeout: None,
                }],
            }),
            Block::Hangup(HangupBlock {
                hangup_cause: HangupCause::OriginatorCancel,
            }),
            Block::RoutingPlan(RoutingPlanBlock {
                routingplan_name: "other".into(),
            }),
            Block::CallSettings(CallSettingsBlock {
                forward_ani: ForwardAni::Caller,
            }),
            Block::CallSettings(CallSettingsBlock {
                forward_ani: ForwardAni::Number("+4930".into()),
            }),
            Block::Refer(ReferBlock {
                destination: "sip:bob@example.com".into(),
            }),
            Block::CallControl(CallControlBlock {
                url: "https://cc.example.com/".into(),
                access_key: Some("secret".into()),
                variables: BTreeMap::from([("x".to_owned(), "1".to_owned())]),
                timeout: 100,
                fallback_plan: None,
            }),
            Block::CallControl(CallControlBlock {
                url: "http://cc".into(),
                access_key: None,
                variables: BTreeMap::new(),
                timeout: 60_000,
                fallback_plan: Some("fb".into()),
            }),
            Block::AskUrl(AskUrlBlock {
                url: "https://ask".into(),
                timeout: 60,
                timeout_destination: Some(TimeoutDestination::Target {
                    dtype: AskUrlDestinationType::Hangup,
                    dnumber: None,
                }),
                answer_url: None,
                hangup_url: Some("https://h".into()),
            }),
            Block::AskUrl(AskUrlBlock {
                url: "https://ask".into(),
                timeout: 1,
                timeout_destination: Some(TimeoutDestination::Plan("p".into())),
                answer_url: Some("https://a".into()),
                hangup_url: None,
            }),
            Block::Conference(ConferenceBlock {
                conference_name: "sales".into(),
                join_muted: true,
                listen_only: false,
                end_conference_on_exit: true,
                max_participants: 10,
                enter_announcement_name: Some("welcome".into()),
                standard_enter_announcement: false,
            }),
            Block::Stream(StreamBlock {
                url: "wss://bot.example.com/media".into(),
                track: StreamTrack::Both,
                parameters: BTreeMap::from([("call_uuid".to_owned(), "x".to_owned())]),
                timeout: 86_400,
                fallback_plan: Some("human".into()),
            }),
        ]
    }

    #[test]
    fn stream_fields_and_defaults() {
        let base = json!({"blockType":"STREAM","url":"ws://127.0.0.1:9000/bot"});
        assert_eq!(
            accepted(&base),
            Block::Stream(StreamBlock {
                url: "ws://127.0.0.1:9000/bot".into(),
                track: StreamTrack::Inbound,
                parameters: BTreeMap::new(),
                timeout: 3600,
                fallback_plan: None,
            })
        );
        check_required(&base, "url");
        for bad in ["http://x/", "ws://", "wss:// x", "bot"] {
            let msg = rejected_on(&with(&base, "url", json!(bad)), "url");
            assert!(msg.starts_with("must be a ws:// or wss:// URL"), "{msg}");
        }
        for t in ["inbound", "outbound", "both", "BOTH"] {
            accepted(&with(&base, "track", json!(t)));
        }
        rejected_on(&with(&base, "track", json!("stereo")), "track");
        check_int_bounds(&base, "timeout", 1, 86_400);
        let Block::Stream(b) = accepted(&with(&base, "parameters", json!({"lang":"de","n":3})))
        else {
            panic!("not a stream");
        };
        assert_eq!(b.parameters.get("n").map(String::as_str), Some("3"));
        rejected_on(&with(&base, "parameters", json!({"x":[1]})), "parameters.x");
    }

    #[test]
    fn conference_defaults_and_errors_name_index_and_field() {
        let ok = parse_blocks(&json!([{"blockType":"CONFERENCE","conferenceName":"sales"}]));
        assert_eq!(
            ok,
            Ok(vec![Block::Conference(ConferenceBlock {
                conference_name: "sales".into(),
                join_muted: false,
                listen_only: false,
                end_conference_on_exit: false,
                max_participants: 50,
                enter_announcement_name: None,
                standard_enter_announcement: false,
            })])
        );
        let errors = parse_blocks(&json!([
            {"blockType":"HANGUP","hangupCause":"NORMAL_CLEARING"},
            {"blockType":"CONFERENCE","conferenceName":"sales room","maxParticipants":1,
             "joinMuted":"yes"}
        ]))
        .expect_err("invalid");
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(text.len(), 3, "{text:?}");
        assert!(
            text.iter()
                .any(|t| t.starts_with("block 1 (CONFERENCE): field 'conferenceName': must match")),
            "{text:?}"
        );
        assert!(
            text.iter().any(|t| t.starts_with(
                "block 1 (CONFERENCE): field 'maxParticipants': must be between 2 and 1000"
            )),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|t| t.starts_with("block 1 (CONFERENCE): field 'joinMuted'")),
            "{text:?}"
        );
        let missing = parse_blocks(&json!([{"blockType":"CONFERENCE"}])).expect_err("no name");
        assert!(
            missing[0]
                .to_string()
                .starts_with("block 0 (CONFERENCE): field 'conferenceName'"),
            "{}",
            missing[0]
        );
    }

    #[test]
    fn every_block_type_round_trips_through_json() {
        let blocks = one_of_each();
        let mut seen: Vec<&str> = blocks.iter().map(Block::block_type).collect();
        seen.dedup();
        assert_eq!(seen, BLOCK_TYPES);
        let json = serde_json::to_value(&blocks).unwrap_or_default();
        assert_eq!(parse_blocks(&json), Ok(blocks.clone()));
        // And through the serde Deserialize impl.
        let again: Vec<Block> = serde_json::from_value(json).unwrap_or_default();
        assert_eq!(again, blocks);
    }

    #[test]
    fn serialized_shape_uses_the_spec_field_names() {
        let json = serde_json::to_value(one_of_each()).unwrap_or_default();
        assert_eq!(
            json[7],
            json!({"blockType":"BRIDGE","bridgeMode":"SEQUENTIAL","destinations":[
                {"destinationType":"SIP_TRUNK","destination":"carrier","timeout":600},
                {"destinationType":"EXTERNALNUMBER","destination":"+4930","timeout":1}]})
        );
        assert_eq!(
            json[14],
            json!({"blockType":"CALL_CONTROL","url":"https://cc.example.com/","accessKey":"secret",
                   "variables":{"x":"1"},"timeout":100})
        );
        assert_eq!(
            json[16],
            json!({"blockType":"ASK_URL","url":"https://ask","timeout":60,
                   "timeoutDestination":{"dtype":"hangup"},"hangupUrl":"https://h"})
        );
        assert_eq!(
            json[10],
            json!({"blockType":"ROUTINGPLAN","routingplanName":"other"})
        );
        assert_eq!(
            json[11],
            json!({"blockType":"CALL_SETTINGS","forwardAni":true})
        );
        assert_eq!(
            json[12],
            json!({"blockType":"CALL_SETTINGS","forwardAni":"+4930"})
        );
    }

    #[test]
    fn serde_deserialize_reports_fields_without_an_index() {
        let err = serde_json::from_value::<Block>(json!({"blockType":"SAY","text":""}))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert_eq!(err, "SAY: field 'text': must not be empty");
    }
}
