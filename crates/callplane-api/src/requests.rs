//! The request bodies of the call and conference commands, as their handlers decode them
//! ([`crate::body::decode`]: unknown fields, wrong types and missing fields are `400` naming
//! the field). The OpenAPI document's request schemas are generated from these types, so the
//! document and the handlers cannot drift. What a type cannot say (a leg id of this call, a
//! SIP user of the tenant, a plan that exists) the handler checks after decoding.
//!
//! Destinations stay JSON values here: the handler reads them with the BRIDGE block's own
//! lenient parser (so they accept exactly what a BRIDGE destination does), and their schema
//! is that of the type the parser produces ([`BridgeDestination`], `Destination` in the
//! document).

use callplane_engine::blocks::BridgeDestination;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::Deserialize;
use serde_json::Value;

/// A list of blocks: each is checked by the block rules (`Block` in the document).
fn block_list(_: &mut SchemaGenerator) -> Schema {
    schemars::json_schema!({
        "type": ["array", "null"],
        "minItems": 1,
        "items": { "$ref": "#/components/schemas/Block" }
    })
}

/// Every `hangupCause` name (and `null`: the default).
fn hangup_causes() -> Vec<Value> {
    callplane_engine::hangup::HangupCause::ALL
        .iter()
        .map(|c| Value::from(c.as_str()))
        .chain([Value::Null])
        .collect()
}

/// A caller ID: what `auth::valid_caller_id` accepts.
const CALLER_ID_PATTERN: &str = "^[A-Za-z0-9+._*#-]{1,64}$";

/// `POST /v1/calls/{id}/hangup` (the body is optional).
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HangupRequest {
    /// A Q.850 cause name (`NORMAL_CLEARING`, `USER_BUSY`, `CALL_REJECTED`, …); default
    /// `NORMAL_CLEARING`. It goes into the BYE's (or the final response's) Reason header and
    /// the CDR.
    #[schemars(extend("enum" = hangup_causes()))]
    pub hangup_cause: Option<String>,
}

/// `POST /v1/calls/{id}/dtmf`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DtmfRequest {
    /// 1 to 64 keypad digits: `0-9 * # A B C D`.
    #[schemars(extend("pattern" = "^[0-9*#A-D]{1,64}$"))]
    pub digits: String,
    /// The leg id (`<call id>.<index>`) to send them to; default leg 0.
    pub leg: Option<String>,
}

/// `POST /v1/calls/{id}/hold`, `…/unhold`, `…/mute`, `…/unmute` (the body is optional).
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PartyRequest {
    /// The leg id (`<call id>.<index>`) of one party of the connected call; default leg 0.
    pub leg: Option<String>,
}

/// `POST /v1/calls/{id}/record` (the body is optional).
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RecordRequest {
    /// Stereo: the caller (leg 0) on the left channel, the callee on the right; default mono,
    /// both mixed.
    pub stereo: Option<bool>,
}

/// `POST /v1/calls/{id}/blocks`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BlocksRequest {
    /// The blocks to run now (at least one): ANNOUNCEMENT and SAY on a connected call are mixed
    /// into it; any blocks on a call in its plan or claimed by an application.
    #[schemars(schema_with = "block_list")]
    pub blocks: Option<Vec<Value>>,
}

/// `POST /v1/calls/{id}/transfer`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TransferRequest {
    /// Blind transfer: where the other party of `from` goes (required without
    /// `consultCallId`, not allowed with it).
    #[serde(default)]
    #[schemars(with = "Option<BridgeDestination>")]
    pub to: Option<Value>,
    /// The leg id of the party that leaves; default the connected callee. Leg 0: the callee
    /// goes, answered, to a new call that dials `to` or is joined by the consultation call's
    /// party.
    pub from: Option<String>,
    /// Attended transfer: the consultation call whose connected party takes `from`'s place.
    pub consult_call_id: Option<String>,
}

/// `POST /v1/calls/{id}/redirect`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RedirectRequest {
    /// Where the call goes: the rest of its plan is a BRIDGE to it.
    #[schemars(with = "BridgeDestination")]
    pub to: Option<Value>,
}

/// A supervisor: a destination to dial, or the leg id of a leg of another call.
fn supervisor_schema(g: &mut SchemaGenerator) -> Schema {
    let destination = g.subschema_for::<BridgeDestination>();
    schemars::json_schema!({
        "description": "A destination to dial, or the leg id (`<call id>.<index>`) of an \
                        answered first leg or connected callee of another call, which moves in \
                        (that call ends if it was its first leg)",
        "oneOf": [
            { "type": "null" },
            destination,
            { "type": "string", "pattern": "^.+\\.[0-9]+$" }
        ]
    })
}

/// `POST /v1/calls/{id}/supervise`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SuperviseRequest {
    /// listen (hears both, heard by nobody), whisper (heard by the agent only), barge (heard by
    /// both), intercept (takes the agent's place).
    #[schemars(extend("enum" = ["listen", "whisper", "barge", "intercept"]))]
    pub mode: String,
    /// Who supervises (the first time); left out, the mode of the supervisor on the call
    /// switches.
    #[serde(default)]
    #[schemars(schema_with = "supervisor_schema")]
    pub supervisor: Option<Value>,
}

/// `POST /v1/calls/{id}/conference` (the body is optional).
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConferenceRequest {
    /// The leg id of the conference's owner; default the connected callee.
    pub owner: Option<String>,
}

/// `POST /v1/conferences/{name}/participants`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ParticipantRequest {
    /// Who is dialled in.
    #[schemars(with = "BridgeDestination")]
    pub to: Option<Value>,
    /// What it sees calling; default the conference's first participant.
    #[schemars(extend("pattern" = CALLER_ID_PATTERN))]
    pub caller_id: Option<String>,
    /// Ring time, seconds (1 to 600); default the destination's `timeout`, else 30.
    #[schemars(range(min = 1, max = 600))]
    pub timeout: Option<u64>,
}

/// `POST /v1/calls`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OriginateRequest {
    /// The tenant: required for admin and reseller keys (others: their own).
    pub tenant: Option<String>,
    /// The SIP user the call is made for (an account key: its own).
    pub from: Option<String>,
    /// Who is called first; the call's leg 0.
    #[schemars(with = "BridgeDestination")]
    pub to: Option<Value>,
    /// Shown to `to`; default `from`.
    #[schemars(extend("pattern" = CALLER_ID_PATTERN))]
    pub caller_id: Option<String>,
    /// Ring time, seconds (1 to 600); default the destination's `timeout`, else 30.
    #[schemars(range(min = 1, max = 600))]
    pub timeout: Option<u64>,
    /// The blocks to run once `to` answers (or `plan`).
    #[serde(default)]
    #[schemars(schema_with = "block_list")]
    pub blocks: Option<Vec<Value>>,
    /// A routing plan of the tenant to run once `to` answers (or `blocks`).
    pub plan: Option<String>,
    /// Where this call's state callbacks go (http:// or https://); default the tenant's.
    pub callstate_info_url: Option<String>,
}

/// `POST /v1/calls/callback`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CallbackRequest {
    /// The tenant: required for admin and reseller keys (others: their own).
    pub tenant: Option<String>,
    /// The SIP user the call is made for (an account key: its own).
    pub from: Option<String>,
    /// Called first; the call's leg 0.
    #[schemars(with = "BridgeDestination")]
    pub first: Option<Value>,
    /// Called when `first` answers, and bridged to it.
    #[schemars(with = "BridgeDestination")]
    pub second: Option<Value>,
    /// What `second` sees calling; default `first`'s number.
    #[schemars(extend("pattern" = CALLER_ID_PATTERN))]
    pub caller_id: Option<String>,
    /// What `first` sees calling; default `second`'s number.
    #[schemars(extend("pattern" = CALLER_ID_PATTERN))]
    pub first_caller_id: Option<String>,
    /// Ring time of `first`, seconds (1 to 600).
    #[schemars(range(min = 1, max = 600))]
    pub timeout: Option<u64>,
    /// Kept in the call's variables and CDR (`billing_account`): 1 to 128 characters without
    /// control characters.
    #[schemars(length(min = 1, max = 128))]
    pub billing_account: Option<String>,
    /// Where this call's state callbacks go (http:// or https://); default the tenant's.
    pub callstate_info_url: Option<String>,
}

/// Adds the schemas of the request bodies to `generator` (named as the types are).
pub fn add_schemas(generator: &mut SchemaGenerator) {
    generator.subschema_for::<HangupRequest>();
    generator.subschema_for::<DtmfRequest>();
    generator.subschema_for::<PartyRequest>();
    generator.subschema_for::<RecordRequest>();
    generator.subschema_for::<BlocksRequest>();
    generator.subschema_for::<TransferRequest>();
    generator.subschema_for::<RedirectRequest>();
    generator.subschema_for::<SuperviseRequest>();
    generator.subschema_for::<ConferenceRequest>();
    generator.subschema_for::<ParticipantRequest>();
    generator.subschema_for::<OriginateRequest>();
    generator.subschema_for::<CallbackRequest>();
}
