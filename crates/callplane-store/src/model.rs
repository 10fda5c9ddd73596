//! The provisioned objects (tenants, numbers, SIP users, trunks, routing plans, announcements)
//! and call detail records, in the shapes used by the declarative config file and the REST API.
//! Field and cross-reference validation is here too; blocks stay JSON and the engine checks them.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

mod validation;

use validation::{
    DISPLAY_NAME_PATTERN, HOST_PATTERN, NAME_PATTERN, NUMBER_PATTERN, URL_PATTERN, USERNAME_PATTERN,
};

pub use validation::{canonical_ip, is_http_url, is_valid_number, is_valid_username, Validate};

/// A customer. `customerNumber` identifies it in webhooks.
// Its JSON Schema (the API's `Tenant`, `TenantCreate`, `TenantReplace`) says what `Validate`
// checks, as do the other provisioned objects'.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Tenant {
    /// Free text without leading/trailing whitespace or control characters.
    #[schemars(length(min = 1), extend("pattern" = NAME_PATTERN))]
    pub name: String,
    /// Identifies the tenant in webhooks; unique.
    #[schemars(range(min = 1, max = i64::MAX))]
    pub customer_number: i64,
    /// Key of the X-Callplane-Signature HMAC. Write-only: never in answers (see
    /// `signingSecretSet`); left out on PUT keeps the stored one, `null` removes it.
    #[schemars(length(min = 1), extend("writeOnly" = true))]
    pub signing_secret: Option<String>,
    /// A trunk of this tenant, used for EXTERNALNUMBER destinations.
    #[schemars(length(min = 1), extend("pattern" = NAME_PATTERN))]
    pub default_trunk: Option<String>,
    /// Where this tenant's call-state callbacks go (http:// or https://).
    #[schemars(extend("pattern" = URL_PATTERN))]
    pub callstate_info_url: Option<String>,
    /// Reseller owning the tenant. Forced to the key's own for reseller keys.
    #[schemars(length(min = 1), extend("pattern" = NAME_PATTERN))]
    pub reseller: Option<String>,
}

/// A called number (DNIS): E.164 like `+4922155400300` or a short code like `100`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Number {
    /// E.164 number or short code.
    #[schemars(extend("pattern" = NUMBER_PATTERN))]
    pub number: String,
    /// The tenant it belongs to.
    pub tenant: String,
    /// A routing plan of the same tenant.
    #[schemars(length(min = 1), extend("pattern" = NAME_PATTERN))]
    pub routing_plan: String,
    /// Where this number's call-state callbacks go (http:// or https://).
    #[schemars(extend("pattern" = URL_PATTERN))]
    pub callstate_info_url: Option<String>,
}

/// A digest-auth account that phones REGISTER as. Usernames are global for the registrar.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SipUser {
    /// The tenant it belongs to.
    pub tenant: String,
    /// Global: REGISTER carries no tenant.
    #[schemars(extend("pattern" = USERNAME_PATTERN))]
    pub username: String,
    /// Write-only. On input the clear password, which the store turns into digest HA1 values
    /// and forgets; left out, the stored HA1 values are kept. Always `None` when read back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        with = "String",
        length(min = 1),
        extend("writeOnly" = true),
        description = "Write-only: stored as digest HA1 values (MD5 and SHA-256) for the \
                       server's realm, never in answers (see `passwordSet`). Required for a new \
                       SIP user; left out on PUT keeps the stored credentials."
    )]
    pub password: Option<String>,
    /// The name its calls show.
    #[schemars(extend("pattern" = DISPLAY_NAME_PATTERN))]
    pub display_name: Option<String>,
    /// Click-to-dial rings this user's phone with the auto-answer headers unless the request
    /// says `autoAnswer=0` (a headset user's desk phone, an operator's softphone).
    #[serde(default)]
    pub auto_answer: bool,
    /// Read from the store: whether HA1 values are stored (`passwordSet` in API answers).
    #[serde(skip)]
    #[schemars(skip)]
    pub password_set: bool,
}

/// SIP transport towards a trunk.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    #[default]
    Udp,
    Tcp,
}

impl Transport {
    /// The lowercase name used in serde and in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        }
    }

    /// Parses the lowercase name; `None` for anything else.
    pub fn parse(s: &str) -> Option<Transport> {
        match s {
            "udp" => Some(Transport::Udp),
            "tcp" => Some(Transport::Tcp),
            _ => None,
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn default_sip_port() -> u16 {
    5060
}

/// An outbound gateway, and the source of inbound calls from the listed addresses.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Trunk {
    /// The tenant it belongs to.
    pub tenant: String,
    /// Free text without leading/trailing whitespace or control characters.
    #[schemars(length(min = 1), extend("pattern" = NAME_PATTERN))]
    pub name: String,
    /// Host name or IP address.
    #[schemars(length(min = 1), extend("pattern" = HOST_PATTERN))]
    pub host: String,
    #[serde(default = "default_sip_port")]
    #[schemars(range(min = 1))]
    pub port: u16,
    #[serde(default)]
    pub transport: Transport,
    /// The user name of the trunk's digest challenge.
    #[schemars(length(min = 1), extend("pattern" = NAME_PATTERN))]
    pub username: Option<String>,
    /// Answers the trunk's digest challenge, so it is stored as given (the database file is
    /// 0600). Write-only: never in answers (see `passwordSet`); left out on PUT keeps the
    /// stored one, `null` removes it.
    #[schemars(extend("writeOnly" = true))]
    pub password: Option<String>,
    /// Number presented as caller on outbound calls through this trunk.
    #[schemars(extend("pattern" = NUMBER_PATTERN))]
    pub caller_id: Option<String>,
    /// Source IPs whose INVITEs are accepted as from this trunk without authentication (IPv4
    /// or IPv6, each unique across trunks).
    #[serde(default)]
    #[schemars(schema_with = "ip_addresses")]
    pub inbound_addresses: Vec<String>,
}

/// `inboundAddresses`: IP addresses.
fn ip_addresses(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "items": {
            "type": "string",
            "anyOf": [{ "format": "ipv4" }, { "format": "ipv6" }],
            "description": "IPv4 or IPv6 address, unique across trunks."
        },
        "default": []
    })
}

/// A named list of blocks owned by a tenant. Blocks are parsed and validated by the engine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RoutingPlan {
    /// The tenant it belongs to.
    pub tenant: String,
    /// Free text without leading/trailing whitespace or control characters.
    #[schemars(length(min = 1), extend("pattern" = NAME_PATTERN))]
    pub name: String,
    /// The plan's blocks (`Block`, checked by the block rules).
    #[schemars(schema_with = "block_list")]
    pub blocks: Vec<serde_json::Value>,
    /// Where the call-state callbacks of calls in this plan go (http:// or https://).
    #[schemars(extend("pattern" = URL_PATTERN))]
    pub callstate_info_url: Option<String>,
}

/// A plan's `blocks`: at most 256 `Block`s.
fn block_list(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "items": { "$ref": "#/components/schemas/Block" },
        "maxItems": 256
    })
}

/// A named audio file of a tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Announcement {
    /// The tenant it belongs to.
    pub tenant: String,
    /// Free text without leading/trailing whitespace or control characters.
    #[schemars(length(min = 1), extend("pattern" = NAME_PATTERN))]
    pub name: String,
    /// Server path of the stored 8 kHz 16-bit mono WAV.
    pub file: String,
}

/// A whole set of provisioned objects, as held by the declarative config file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Provisioning {
    #[serde(default)]
    pub tenants: Vec<Tenant>,
    #[serde(default)]
    pub numbers: Vec<Number>,
    #[serde(default)]
    pub sip_users: Vec<SipUser>,
    #[serde(default)]
    pub trunks: Vec<Trunk>,
    #[serde(default)]
    pub routing_plans: Vec<RoutingPlan>,
    #[serde(default)]
    pub announcements: Vec<Announcement>,
}

/// What an API key may do: `admin` everything, `reseller` the tenants whose `reseller` is the
/// key's, `customer` one tenant, `account` one SIP user. Ordered from least to most powerful.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum ApiRealm {
    Account,
    Customer,
    Reseller,
    Admin,
}

/// An API key's scope fields, by their JSON names.
pub const SCOPE_FIELDS: [&str; 3] = ["tenant", "reseller", "sipUser"];

/// Which of the [`SCOPE_FIELDS`] a realm's keys use (see [`ApiRealm::scope`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RealmScope {
    pub required: Option<&'static str>,
    pub optional: Option<&'static str>,
}

impl ApiRealm {
    /// The lowercase name used in JSON, the config file and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            ApiRealm::Account => "account",
            ApiRealm::Customer => "customer",
            ApiRealm::Reseller => "reseller",
            ApiRealm::Admin => "admin",
        }
    }

    /// The scope fields of a key of this realm (their JSON names): the one it must give and
    /// the one it may give; a key of the realm may not give the other [`SCOPE_FIELDS`].
    /// `Validate for ApiKey` checks keys by it, and the API's `ApiKeyCreate` schema says it.
    pub fn scope(self) -> RealmScope {
        match self {
            ApiRealm::Admin => RealmScope {
                required: None,
                optional: None,
            },
            ApiRealm::Reseller => RealmScope {
                required: Some("reseller"),
                optional: None,
            },
            ApiRealm::Customer => RealmScope {
                required: Some("tenant"),
                optional: None,
            },
            // An account key's tenant is its SIP user's: it may be given (it must match).
            ApiRealm::Account => RealmScope {
                required: Some("sipUser"),
                optional: Some("tenant"),
            },
        }
    }

    /// Every realm, lowest first.
    pub const ALL: [ApiRealm; 4] = [
        ApiRealm::Account,
        ApiRealm::Customer,
        ApiRealm::Reseller,
        ApiRealm::Admin,
    ];

    /// Parses the lowercase name; `None` for anything else.
    pub fn parse(s: &str) -> Option<ApiRealm> {
        match s {
            "account" => Some(ApiRealm::Account),
            "customer" => Some(ApiRealm::Customer),
            "reseller" => Some(ApiRealm::Reseller),
            "admin" => Some(ApiRealm::Admin),
            _ => None,
        }
    }
}

impl fmt::Display for ApiRealm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An API key's identity and scope. The secret itself is never stored: the database keeps
/// only its SHA-256, so nothing here is a secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApiKey {
    /// Free text without leading/trailing whitespace or control characters.
    #[schemars(length(min = 1), extend("pattern" = NAME_PATTERN))]
    pub name: String,
    pub realm: ApiRealm,
    /// The tenant of a `customer` key, and (filled from the SIP user) of an `account` key.
    #[schemars(length(min = 1), extend("pattern" = NAME_PATTERN))]
    pub tenant: Option<String>,
    /// The reseller name of a `reseller` key.
    #[schemars(length(min = 1), extend("pattern" = NAME_PATTERN))]
    pub reseller: Option<String>,
    /// The SIP user (username) of an `account` key.
    #[schemars(length(min = 1), extend("pattern" = NAME_PATTERN))]
    pub sip_user: Option<String>,
    /// Requests per second this key may make (`0`: no limit); left out, the server's
    /// `apiRateLimit`. Below admin, not above the creating key's own rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = validation::MAX_RATE_LIMIT))]
    pub rate_limit: Option<u32>,
    /// When the key was created; set by the store, ignored on input.
    #[serde(
        default,
        with = "opt_time_serde",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<DateTime<Utc>>", extend("readOnly" = true))]
    pub created: Option<DateTime<Utc>>,
}

/// One validation problem: which object (`numbers[2]`, `number 100`), which field
/// (its camelCase name), and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FieldError {
    /// The object at fault, e.g. `number 100`.
    pub object: String,
    /// Its field, as the client spelled it.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}: {}", self.object, self.field, self.message)
    }
}

/// Call detail record of one finished call, written in one transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Cdr {
    /// Our call UUID.
    pub call_id: String,
    pub sip_call_id: String,
    pub tenant: Option<String>,
    /// Called number (DNIS).
    pub number: String,
    /// Calling number (ANI).
    pub caller: String,
    #[serde(with = "time_serde")]
    #[schemars(with = "DateTime<Utc>")]
    pub start_time: DateTime<Utc>,
    #[serde(with = "opt_time_serde")]
    #[schemars(with = "Option<DateTime<Utc>>")]
    pub answer_time: Option<DateTime<Utc>>,
    #[serde(with = "time_serde")]
    #[schemars(with = "DateTime<Utc>")]
    pub end_time: DateTime<Utc>,
    pub talk_time_ms: i64,
    /// Q.850 cause name, e.g. `NORMAL_CLEARING`.
    pub hangup_cause: String,
    /// `caller`, `callee` or `system`.
    pub hangup_by: String,
    pub sip_status: Option<u16>,
    pub recording_path: Option<String>,
    pub legs: Vec<CdrLeg>,
    pub variables: BTreeMap<String, String>,
    /// The SIP users the call involved: the phone that placed it and those it dialled.
    #[serde(default)]
    pub lines: Vec<String>,
    /// The call's complete recordings (read with the CDR; written on their own when each
    /// recording ends, see [`Recording`]).
    #[serde(default)]
    pub recordings: Vec<Recording>,
}

/// A finished recording of a call (`POST /v1/calls/{id}/record`): an 8 kHz 16-bit WAV file,
/// mono (both parties mixed) or stereo (caller left, callee right).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Recording {
    pub id: String,
    pub call_id: String,
    pub tenant: Option<String>,
    /// Where the file is on this node; not served (the API serves the file itself).
    #[serde(skip_serializing, default)]
    pub path: String,
    /// 1: both parties mixed; 2: caller left, callee right.
    #[schemars(extend("enum" = [1, 2]))]
    pub channels: u16,
    #[serde(with = "time_serde")]
    #[schemars(with = "DateTime<Utc>")]
    pub start_time: DateTime<Utc>,
    #[serde(with = "time_serde")]
    #[schemars(with = "DateTime<Utc>")]
    pub end_time: DateTime<Utc>,
    #[schemars(range(min = 0))]
    pub duration_ms: i64,
    #[schemars(range(min = 0))]
    pub size_bytes: i64,
}

/// One leg of a call (the inbound leg or an outbound BRIDGE attempt).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CdrLeg {
    pub leg_index: i64,
    /// `inbound` or `outbound`.
    pub direction: String,
    /// `EXTERNALNUMBER`, `SIP_USER`, `SIP_TRUNK`, …
    pub destination_type: Option<String>,
    pub destination: String,
    #[serde(with = "time_serde")]
    #[schemars(with = "DateTime<Utc>")]
    pub start_time: DateTime<Utc>,
    #[serde(with = "opt_time_serde")]
    #[schemars(with = "Option<DateTime<Utc>>")]
    pub answer_time: Option<DateTime<Utc>>,
    #[serde(with = "time_serde")]
    #[schemars(with = "DateTime<Utc>")]
    pub end_time: DateTime<Utc>,
    pub sip_status: Option<u16>,
    pub hangup_cause: String,
}

/// Formats a time the way it is stored and served: RFC 3339, UTC (`Z`), milliseconds.
pub fn format_time(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Parses any RFC 3339 time (any offset) into UTC.
pub fn parse_time(s: &str) -> Result<DateTime<Utc>, chrono::ParseError> {
    DateTime::parse_from_rfc3339(s).map(|t| t.with_timezone(&Utc))
}

// chrono's own serde support is a feature the workspace does not enable; these keep the wire
// format identical to the stored one (RFC 3339 with milliseconds).
mod time_serde {
    use chrono::{DateTime, Utc};
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_time(t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_time(&s).map_err(D::Error::custom)
    }
}

mod opt_time_serde {
    use chrono::{DateTime, Utc};
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_some(&super::format_time(t)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        match Option::<String>::deserialize(d)? {
            Some(s) => super::parse_time(&s).map(Some).map_err(D::Error::custom),
            None => Ok(None),
        }
    }
}

// Debug is written by hand for objects holding secrets so that a `?tenant` in a log line
// never leaks a password or signing key.
const REDACTED: &str = "<redacted>";

fn redact(secret: &Option<String>) -> Option<&'static str> {
    secret.as_ref().map(|_| REDACTED)
}

impl fmt::Debug for Tenant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tenant")
            .field("name", &self.name)
            .field("customer_number", &self.customer_number)
            .field("signing_secret", &redact(&self.signing_secret))
            .field("default_trunk", &self.default_trunk)
            .field("callstate_info_url", &self.callstate_info_url)
            .field("reseller", &self.reseller)
            .finish()
    }
}

impl fmt::Debug for SipUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SipUser")
            .field("tenant", &self.tenant)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| REDACTED))
            .field("display_name", &self.display_name)
            .field("password_set", &self.password_set)
            .field("auto_answer", &self.auto_answer)
            .finish()
    }
}

impl fmt::Debug for Trunk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Trunk")
            .field("tenant", &self.tenant)
            .field("name", &self.name)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("transport", &self.transport)
            .field("username", &self.username)
            .field("password", &redact(&self.password))
            .field("caller_id", &self.caller_id)
            .field("inbound_addresses", &self.inbound_addresses)
            .finish()
    }
}
