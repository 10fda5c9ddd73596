//! The declarative config file (TOML): a `[server]` section for listeners and paths, and the
//! provisioned objects in the spec's shapes. Everything is validated, with the file, object and
//! field named, before anything starts.

use anyhow::{bail, Context};
use callplane_sip::Network;
use callplane_store::model::{ApiKey, ApiRealm, FieldError, Provisioning, Validate};
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

/// Listeners, paths and policies.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ServerSection {
    /// Where the SQLite file, recordings and the TTS cache live.
    pub data_dir: PathBuf,
    /// Listening addresses; `false` or `""` turns a listener off.
    #[serde(deserialize_with = "listen_addr")]
    pub sip_udp: Option<SocketAddr>,
    #[serde(deserialize_with = "listen_addr")]
    pub sip_tcp: Option<SocketAddr>,
    #[serde(deserialize_with = "listen_addr")]
    pub http: Option<SocketAddr>,
    /// Address RTP sockets bind to, and the one written into SDP.
    pub rtp_ip: IpAddr,
    pub rtp_advertise_ip: Option<IpAddr>,
    pub rtp_port_min: u16,
    pub rtp_port_max: u16,
    /// Digest realm.
    pub realm: String,
    /// Networks (CIDR) whose INVITEs need no digest auth, besides trunks' inbound addresses.
    pub trusted_networks: Vec<String>,
    /// Directory of the standard prompt set (`standardAnnouncement: true`).
    pub sounds_dir: PathBuf,
    /// Directory that relative announcement paths are resolved against.
    pub prompts_dir: PathBuf,
    /// espeak-ng binary for SAY.
    pub espeak_path: String,
    /// Failed digest authentications (per source, or per source and user: `authLockout`)
    /// within a minute before it is blocked for five; 0 turns the lock-out off.
    pub max_auth_failures: u32,
    /// What failures are counted against: `"source"` (the address) or `"sourceUser"` (the
    /// address and the user name, so one user's failures never lock out another).
    pub auth_lockout: AuthLockout,
    /// Digest algorithms offered in challenges, in this order: `["MD5", "SHA-256"]`.
    pub digest_algorithms: Vec<String>,
    /// INVITEs from one source address that may fail (unknown number, no or wrong
    /// credentials, malformed) per 10 seconds; over it, its INVITEs that would fail are
    /// dropped unanswered. 0 turns the per-source limit off.
    pub failed_invite_limit: u32,
    /// Failed INVITE transactions (waiting for the caller's ACK, or Timer H) held at once
    /// over all sources; at the cap, INVITEs that would fail are dropped. 0: no cap.
    pub failed_invites_held: usize,
    /// The `User-Agent`/`Server` banner on SIP messages; `""` sends none.
    pub user_agent: String,
    /// Open SIP/TCP connections at most, in total and per source address.
    pub sip_tcp_max_connections: usize,
    pub sip_tcp_max_connections_per_source: usize,
    /// Seconds a new SIP/TCP connection has to deliver a complete message.
    pub sip_tcp_first_message_timeout: f64,
    /// Seconds without a byte received before a SIP/TCP connection is closed.
    pub sip_tcp_idle_timeout: f64,
    /// Open HTTP connections at most, in total and per source address.
    pub http_max_connections: usize,
    pub http_max_connections_per_source: usize,
    /// Seconds a client has to send a request's headers (also the keep-alive idle time).
    pub http_header_read_timeout: f64,
    /// Seconds without a byte moving before an HTTP connection is closed (stalled bodies).
    pub http_idle_timeout: f64,
    /// Descriptors kept free of connections for RTP, the database, webhooks and outbound
    /// SIP; default: a quarter of the limit, at least 256.
    pub reserved_descriptors: Option<u64>,
    /// Requests one CALL_CONTROL block instance may send before it is stopped (its
    /// `fallbackPlan` then runs): a customer server that never answers `[]` cannot hold a call.
    pub call_control_max_loops: u32,
    /// Webhook requests in flight to one customer host at most; more wait for a slot within
    /// their own timeout.
    pub webhook_max_per_host: usize,
    /// Seconds a destination chosen by an ASK_URL answer rings (the protocol has no field).
    pub ask_url_ring_timeout: u32,
    /// This node's name (the ask-URL `server` field); default: the machine's host name.
    pub node_name: Option<String>,
    /// Seconds between the events WebSocket's pings; a client that has not answered the last
    /// one by the next is closed.
    pub events_ping_interval: f64,
    /// Seconds an events WebSocket client may send no message of its own (`ping`,
    /// `subscribe`, a command) before it is closed; 0: never.
    pub events_inactivity_timeout: f64,
    /// Events held per WebSocket session (sent or not, for resuming); a client more than this
    /// many behind is closed (`queue_overflow`).
    pub events_queue: usize,
    /// Seconds a WebSocket session stays resumable after its socket closed.
    pub events_resume_window: f64,
    /// API requests per second per key (burst twice that, at least 10) unless the key sets
    /// its own `rateLimit`; 0: no limit.
    pub api_rate_limit: u32,
    /// A WAV file (any common format) played, looped, to a party held by a command; absent:
    /// a built-in tune.
    pub music_on_hold: Option<PathBuf>,
    /// Days a finished recording is kept (its file and its listing); 0: for ever.
    pub recording_retention_days: u32,
    /// Seconds a call to a number an application controls (`"control": true` on the events
    /// socket) waits for a claim before its plan runs.
    pub offer_timeout: f64,
    /// Seconds a claimed call may wait for its application (nothing running, no blocks sent)
    /// before it goes back to its plan; 0: for ever.
    pub claim_idle_timeout: f64,
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            data_dir: PathBuf::from("callplane-data"),
            sip_udp: Some(SocketAddr::from(([127, 0, 0, 1], 5060))),
            sip_tcp: Some(SocketAddr::from(([127, 0, 0, 1], 5060))),
            http: Some(SocketAddr::from(([127, 0, 0, 1], 8080))),
            rtp_ip: IpAddr::from([127, 0, 0, 1]),
            rtp_advertise_ip: None,
            rtp_port_min: 20000,
            rtp_port_max: 40000,
            realm: "callplane".into(),
            trusted_networks: vec![],
            sounds_dir: PathBuf::from("/usr/share/asterisk/sounds/en"),
            prompts_dir: default_prompts_dir(),
            espeak_path: "espeak-ng".into(),
            max_auth_failures: 5,
            auth_lockout: AuthLockout::Source,
            digest_algorithms: vec!["MD5".into(), "SHA-256".into()],
            failed_invite_limit: 50,
            failed_invites_held: 500,
            user_agent: concat!("Callplane/", env!("CARGO_PKG_VERSION")).into(),
            sip_tcp_max_connections: 4096,
            sip_tcp_max_connections_per_source: 64,
            sip_tcp_first_message_timeout: 10.0,
            sip_tcp_idle_timeout: 300.0,
            http_max_connections: 1024,
            http_max_connections_per_source: 64,
            http_header_read_timeout: 10.0,
            http_idle_timeout: 60.0,
            reserved_descriptors: None,
            call_control_max_loops: callplane_engine::flow::DEFAULT_MAX_CALL_CONTROL_LOOPS,
            webhook_max_per_host: callplane_engine::webhook::WebhookConfig::default().max_per_host,
            node_name: None,
            ask_url_ring_timeout: callplane_engine::flow::DEFAULT_ASK_URL_RING_SECONDS,
            events_ping_interval: 20.0,
            events_inactivity_timeout: 0.0,
            events_queue: 1000,
            events_resume_window: 60.0,
            api_rate_limit: 100,
            music_on_hold: None,
            recording_retention_days: 0,
            offer_timeout: 10.0,
            claim_idle_timeout: 60.0,
        }
    }
}

/// What digest failures are counted against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum AuthLockout {
    Source,
    SourceUser,
}

/// A listening address, or `false` / `""` for none.
fn listen_addr<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Off(bool),
        Addr(String),
    }
    match Raw::deserialize(d)? {
        Raw::Off(false) => Ok(None),
        Raw::Off(true) => Err(serde::de::Error::custom(
            "expected an address such as \"0.0.0.0:5060\", or false / \"\" to turn it off",
        )),
        Raw::Addr(a) if a.trim().is_empty() => Ok(None),
        Raw::Addr(a) => a
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| serde::de::Error::custom(format!("{a:?} is not an address (ip:port)"))),
    }
}

/// The repository's `prompts/` folder next to the working directory, else the one the binary
/// was built from (a fresh checkout running `cargo run`).
pub fn default_prompts_dir() -> PathBuf {
    let local = PathBuf::from("prompts");
    if local.join("welcome.wav").exists() {
        return local;
    }
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/prompts"))
}

/// `[clickToDial]`: who may use `GET /v1/call-init`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ClickToDialSection {
    /// Source networks (CIDR) allowed to call the route; others get 403.
    pub allow_from: Vec<String>,
    /// Whether a request from `allowFrom` needs no API key (plain GET links from phones and
    /// CRMs); it then acts within the tenant of the `user` it names.
    pub keyless: bool,
}

impl Default for ClickToDialSection {
    fn default() -> Self {
        ClickToDialSection {
            allow_from: vec!["127.0.0.0/8".into(), "::1/128".into()],
            keyless: false,
        }
    }
}

/// `[tts]`: an OpenAI-compatible speech endpoint tried before the built-in espeak-ng (which
/// stays the fallback, so a SAY is not silent when the endpoint fails).
#[derive(Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct TtsSection {
    /// The endpoint, e.g. `https://api.openai.com/v1/audio/speech`; absent: espeak-ng only.
    pub url: Option<String>,
    /// Bearer key for the endpoint; write-only (never logged).
    pub api_key: Option<String>,
    pub model: String,
    /// The endpoint's voice for a SAY without `voiceName`, or with one not in `voices`.
    pub default_voice: String,
    /// SAY `voiceName` (e.g. TENIOS's `de.female.1`) → the endpoint's voice name.
    pub voices: std::collections::BTreeMap<String, String>,
    /// Seconds one synthesis may take before the next provider is asked.
    pub timeout: f64,
}

impl Default for TtsSection {
    fn default() -> Self {
        TtsSection {
            url: None,
            api_key: None,
            model: "tts-1".into(),
            default_voice: "alloy".into(),
            voices: Default::default(),
            timeout: 10.0,
        }
    }
}

// By hand so that the key never reaches a log line.
impl std::fmt::Debug for TtsSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TtsSection")
            .field("url", &self.url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("model", &self.model)
            .field("default_voice", &self.default_voice)
            .field("voices", &self.voices)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// `[asr]`: the speech recognizer COLLECT_SPEECH uses. With `url`, a server speaking the
/// Vosk/Kaldi WebSocket protocol (`vosk-server`, …); without it the built-in offline one
/// (Moonshine's English model, installed by scripts/install-moonshine.sh). Neither there:
/// COLLECT_SPEECH blocks fail over (one log line at start says so).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct AsrSection {
    /// `ws://host:2700` or `wss://…`.
    pub url: Option<String>,
    /// Where the built-in recognizer's package is (default
    /// `/usr/local/lib/callplane/moonshine/moonshine_cpp`).
    pub moonshine_dir: Option<String>,
    /// Utterances the built-in recognizer works on at once, one core each (default: the
    /// machine's cores).
    pub threads: Option<usize>,
    /// Load the built-in model at start instead of on its first utterance (each thread's copy
    /// takes about half a second and 130 MB).
    pub preload: bool,
}

/// The file's shape: `[server]` plus the provisioning lists. Spelled out rather than
/// flattened so that TOML errors keep their line numbers.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    server: ServerSection,
    #[serde(default)]
    click_to_dial: ClickToDialSection,
    #[serde(default)]
    tts: TtsSection,
    #[serde(default)]
    asr: AsrSection,
    #[serde(default)]
    tenants: Vec<callplane_store::model::Tenant>,
    #[serde(default)]
    numbers: Vec<callplane_store::model::Number>,
    #[serde(default)]
    sip_users: Vec<callplane_store::model::SipUser>,
    #[serde(default)]
    trunks: Vec<callplane_store::model::Trunk>,
    #[serde(default)]
    routing_plans: Vec<callplane_store::model::RoutingPlan>,
    #[serde(default)]
    announcements: Vec<callplane_store::model::Announcement>,
    #[serde(default)]
    api_keys: Vec<ApiKeyEntry>,
}

/// An API key as written in the file: the plain secret, hashed as soon as it is read.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ApiKeyEntry {
    name: String,
    realm: ApiRealm,
    key: String,
    tenant: Option<String>,
    reseller: Option<String>,
    sip_user: Option<String>,
    /// Requests per second (0: unlimited); default the server's `apiRateLimit`.
    rate_limit: Option<u32>,
}

// By hand so that the secret never reaches a log line.
impl std::fmt::Debug for ApiKeyEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeyEntry")
            .field("name", &self.name)
            .field("realm", &self.realm)
            .field("key", &"<redacted>")
            .field("tenant", &self.tenant)
            .field("reseller", &self.reseller)
            .field("sip_user", &self.sip_user)
            .finish()
    }
}

/// An API key from the file, applied (upserted by name) at every start. Only the secret's
/// SHA-256 is kept, with its length for the minimum-length check.
#[derive(Debug, Clone)]
pub struct ConfiguredApiKey {
    pub key: ApiKey,
    pub key_sha256: String,
    secret_chars: usize,
}

/// A loaded and validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerSection,
    pub click_to_dial: ClickToDialSection,
    pub tts: TtsSection,
    pub asr: AsrSection,
    pub provisioning: Provisioning,
    pub api_keys: Vec<ConfiguredApiKey>,
}

impl Config {
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        let file: ConfigFile = toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.to_string().trim()))?;
        let mut cfg = Config {
            server: file.server,
            click_to_dial: file.click_to_dial,
            tts: file.tts,
            asr: file.asr,
            provisioning: Provisioning {
                tenants: file.tenants,
                numbers: file.numbers,
                sip_users: file.sip_users,
                trunks: file.trunks,
                routing_plans: file.routing_plans,
                announcements: file.announcements,
            },
            api_keys: file
                .api_keys
                .into_iter()
                .map(|k| ConfiguredApiKey {
                    key_sha256: callplane_api::hash_key(&k.key),
                    secret_chars: k.key.chars().count(),
                    key: ApiKey {
                        name: k.name,
                        realm: k.realm,
                        tenant: k.tenant,
                        reseller: k.reseller,
                        sip_user: k.sip_user,
                        rate_limit: k.rate_limit,
                        created: None,
                    },
                })
                .collect(),
        };
        // Relative paths in the file are relative to the file.
        let base = path.parent().unwrap_or(Path::new("."));
        let absolutize = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        absolutize(&mut cfg.server.data_dir);
        if let Some(p) = cfg.server.music_on_hold.as_mut() {
            absolutize(p);
        }
        for a in &mut cfg.provisioning.announcements {
            let p = Path::new(&a.file);
            if p.is_relative() {
                a.file = base.join(p).to_string_lossy().into_owned();
            }
        }
        cfg.validate(&path.display().to_string())?;
        Ok(cfg)
    }

    /// Every problem at once, each naming the file, the object and the field.
    pub fn validate(&self, file: &str) -> anyhow::Result<()> {
        let mut errors: Vec<FieldError> = self.provisioning.validate();
        for (i, plan) in self.provisioning.routing_plans.iter().enumerate() {
            let object = format!("routingPlans[{i}] ({})", plan.name);
            errors.extend(callplane_api::validation::block_errors(
                &object,
                &plan.blocks,
            ));
        }
        // Whether a key's tenant or SIP user exists is checked against the database at start.
        let mut names = std::collections::HashSet::new();
        let mut secrets = std::collections::HashMap::new();
        for (i, k) in self.api_keys.iter().enumerate() {
            let object = format!("apiKeys[{i}]");
            errors.extend(k.key.validate_as(&object));
            if k.secret_chars < callplane_api::MIN_KEY_CHARS {
                errors.push(FieldError {
                    object: object.clone(),
                    field: "key".into(),
                    message: format!(
                        "must be at least {} characters",
                        callplane_api::MIN_KEY_CHARS
                    ),
                });
            }
            if !names.insert(k.key.name.as_str()) {
                errors.push(FieldError {
                    object: object.clone(),
                    field: "name".into(),
                    message: "duplicate API key name".into(),
                });
            }
            if let Some(first) = secrets.insert(k.key_sha256.as_str(), i) {
                errors.push(FieldError {
                    object,
                    field: "key".into(),
                    message: format!("same key as apiKeys[{first}]"),
                });
            }
        }
        for (i, n) in self.click_to_dial.allow_from.iter().enumerate() {
            if Network::parse(n).is_none() {
                errors.push(FieldError {
                    object: "clickToDial".into(),
                    field: format!("allowFrom[{i}]"),
                    message: format!("{n:?} is not an address or CIDR network"),
                });
            }
        }
        if let Some(url) = &self.tts.url {
            let lower = url.to_ascii_lowercase();
            if !(lower.starts_with("http://") || lower.starts_with("https://")) {
                errors.push(FieldError {
                    object: "tts".into(),
                    field: "url".into(),
                    message: format!("{url:?} is not an http:// or https:// URL"),
                });
            }
        }
        if let Some(url) = &self.asr.url {
            let lower = url.to_ascii_lowercase();
            if !(lower.starts_with("ws://") || lower.starts_with("wss://")) {
                errors.push(FieldError {
                    object: "asr".into(),
                    field: "url".into(),
                    message: format!("{url:?} is not a ws:// or wss:// URL"),
                });
            }
        }
        if self.asr.threads.is_some_and(|t| !(1..=256).contains(&t)) {
            errors.push(FieldError {
                object: "asr".into(),
                field: "threads".into(),
                message: "must be between 1 and 256".into(),
            });
        }
        if !(self.tts.timeout.is_finite() && (0.1..=120.0).contains(&self.tts.timeout)) {
            errors.push(FieldError {
                object: "tts".into(),
                field: "timeout".into(),
                message: "must be between 0.1 and 120 seconds".into(),
            });
        }
        let s = &self.server;
        for (i, n) in s.trusted_networks.iter().enumerate() {
            if Network::parse(n).is_none() {
                errors.push(FieldError {
                    object: "server".into(),
                    field: format!("trustedNetworks[{i}]"),
                    message: format!("{n:?} is not an address or CIDR network"),
                });
            }
        }
        if s.rtp_port_min == 0 || s.rtp_port_min >= s.rtp_port_max {
            errors.push(FieldError {
                object: "server".into(),
                field: "rtpPortMin".into(),
                message: "must be > 0 and below rtpPortMax".into(),
            });
        }
        let mut range = |field: &str, value: u64, min: u64, max: u64| {
            if !(min..=max).contains(&value) {
                errors.push(FieldError {
                    object: "server".into(),
                    field: field.into(),
                    message: format!("must be between {min} and {max} (got {value})"),
                });
            }
        };
        range(
            "callControlMaxLoops",
            s.call_control_max_loops.into(),
            1,
            100_000,
        );
        range(
            "webhookMaxPerHost",
            s.webhook_max_per_host as u64,
            1,
            100_000,
        );
        range("askUrlRingTimeout", s.ask_url_ring_timeout.into(), 1, 600);
        range(
            "sipTcpMaxConnections",
            s.sip_tcp_max_connections as u64,
            1,
            10_000_000,
        );
        range(
            "sipTcpMaxConnectionsPerSource",
            s.sip_tcp_max_connections_per_source as u64,
            1,
            10_000_000,
        );
        range("eventsQueue", s.events_queue as u64, 1, 1_000_000);
        range(
            "httpMaxConnections",
            s.http_max_connections as u64,
            1,
            10_000_000,
        );
        range(
            "httpMaxConnectionsPerSource",
            s.http_max_connections_per_source as u64,
            1,
            10_000_000,
        );
        for (field, v) in [
            ("sipTcpFirstMessageTimeout", s.sip_tcp_first_message_timeout),
            ("sipTcpIdleTimeout", s.sip_tcp_idle_timeout),
            ("httpHeaderReadTimeout", s.http_header_read_timeout),
            ("httpIdleTimeout", s.http_idle_timeout),
            ("eventsPingInterval", s.events_ping_interval),
            ("eventsResumeWindow", s.events_resume_window),
        ] {
            if !(0.05..=86_400.0).contains(&v) {
                errors.push(FieldError {
                    object: "server".into(),
                    field: field.into(),
                    message: format!("must be between 0.05 and 86400 seconds (got {v})"),
                });
            }
        }
        if s.events_inactivity_timeout != 0.0
            && !(0.05..=86_400.0).contains(&s.events_inactivity_timeout)
        {
            errors.push(FieldError {
                object: "server".into(),
                field: "eventsInactivityTimeout".into(),
                message: format!(
                    "must be 0 (off) or between 0.05 and 86400 seconds (got {})",
                    s.events_inactivity_timeout
                ),
            });
        }
        if s.digest_algorithms.is_empty() {
            errors.push(FieldError {
                object: "server".into(),
                field: "digestAlgorithms".into(),
                message: "at least one algorithm is needed (\"MD5\", \"SHA-256\")".into(),
            });
        }
        for (i, a) in s.digest_algorithms.iter().enumerate() {
            if callplane_sip::digest::Algorithm::parse(a).is_none() {
                errors.push(FieldError {
                    object: "server".into(),
                    field: format!("digestAlgorithms[{i}]"),
                    message: format!("{a:?} is not one of \"MD5\", \"SHA-256\""),
                });
            }
        }
        if s.sip_udp.is_none() && s.sip_tcp.is_none() {
            errors.push(FieldError {
                object: "server".into(),
                field: "sipUdp".into(),
                message: "at least one of sipUdp and sipTcp is needed".into(),
            });
        }
        if errors.is_empty() {
            return Ok(());
        }
        let list: Vec<String> = errors.iter().map(|e| format!("  {file}: {e}")).collect();
        bail!(
            "{} configuration error(s):\n{}",
            errors.len(),
            list.join("\n")
        )
    }

    /// The built-in demo: number 100 greets the caller, collects three digits and reads them
    /// back. Everything on loopback; prompts from the repository's `prompts/`.
    pub fn demo(data_dir: PathBuf) -> Config {
        let server = ServerSection {
            data_dir,
            trusted_networks: vec!["127.0.0.0/8".into(), "::1/128".into()],
            ..ServerSection::default()
        };
        let prompts = server.prompts_dir.clone();
        let text = DEMO_PROVISIONING;
        let mut provisioning: Provisioning = match toml::from_str(text) {
            Ok(p) => p,
            Err(e) => panic!("built-in demo provisioning is invalid: {e}"),
        };
        for a in &mut provisioning.announcements {
            a.file = prompts.join(&a.file).to_string_lossy().into_owned();
        }
        Config {
            server,
            click_to_dial: ClickToDialSection::default(),
            tts: TtsSection::default(),
            asr: AsrSection::default(),
            provisioning,
            api_keys: Vec::new(),
        }
    }
}

const DEMO_PROVISIONING: &str = r##"
[[tenants]]
name = "demo"
customerNumber = 200002

[[sipUsers]]
tenant = "demo"
username = "alice"
password = "alice-secret"

[[sipUsers]]
tenant = "demo"
username = "bob"
password = "bob-secret"

[[numbers]]
number = "100"
tenant = "demo"
routingPlan = "demo"

[[numbers]]
number = "200"
tenant = "demo"
routingPlan = "call-alice"

[[announcements]]
tenant = "demo"
name = "welcome"
file = "welcome.wav"

[[announcements]]
tenant = "demo"
name = "enter-digits"
file = "enter-digits.wav"

[[announcements]]
tenant = "demo"
name = "invalid"
file = "invalid.wav"

[[announcements]]
tenant = "demo"
name = "you-entered"
file = "you-entered.wav"

[[announcements]]
tenant = "demo"
name = "goodbye"
file = "goodbye.wav"

[[routingPlans]]
tenant = "demo"
name = "demo"
blocks = [
  { blockType = "ANNOUNCEMENT", standardAnnouncement = false, announcementName = "welcome" },
  { blockType = "COLLECT_DIGITS", standardAnnouncement = false, announcementName = "enter-digits", standardErrorAnnouncement = false, errorAnnouncementName = "invalid", variableName = "digits", minDigits = 3, maxDigits = 3, terminator = "#", maxTries = 3, timeout = 10 },
  { blockType = "ANNOUNCEMENT", standardAnnouncement = false, announcementName = "you-entered" },
  { blockType = "SAY_DIGITS", variableName = "digits" },
  { blockType = "ANNOUNCEMENT", standardAnnouncement = false, announcementName = "goodbye" },
  { blockType = "HANGUP", hangupCause = "NORMAL_CLEARING" },
]

[[routingPlans]]
tenant = "demo"
name = "call-alice"
blocks = [
  { blockType = "BRIDGE", bridgeMode = "SEQUENTIAL", destinations = [ { destinationType = "SIP_USER", destination = "alice", timeout = 30 } ] },
  { blockType = "HANGUP", hangupCause = "NO_ANSWER" },
]
"##;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_configuration_is_valid() {
        let cfg = Config::demo(PathBuf::from("/tmp/callplane-demo-test"));
        cfg.validate("demo").expect("demo config validates");
        assert!(cfg.provisioning.numbers.iter().any(|n| n.number == "100"));
    }

    fn load_text(text: &str) -> anyhow::Result<Config> {
        let dir = std::env::temp_dir().join(format!(
            "callplane-config-test-{}-{}",
            std::process::id(),
            text.len()
        ));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("callplane.toml");
        std::fs::write(&path, text)?;
        let r = Config::load(&path);
        let _ = std::fs::remove_dir_all(&dir);
        r
    }

    #[test]
    fn errors_name_file_object_and_field() {
        let err = load_text(
            r#"
[[tenants]]
name = "t"
customerNumber = 1

[[numbers]]
number = "100"
tenant = "t"
routingPlan = "p"

[[routingPlans]]
tenant = "t"
name = "p"
blocks = [ { blockType = "COLLECT_DIGITS", announcementName = "a", variableName = "pin", minDigits = 3, maxDigits = 40 } ]
"#,
        )
        .err()
        .map(|e| format!("{e:#}"))
        .unwrap_or_default();
        assert!(err.contains("callplane.toml"), "{err}");
        assert!(err.contains("routingPlans[0] (p)"), "{err}");
        assert!(err.contains("maxDigits"), "{err}");
    }

    #[test]
    fn unknown_keys_and_bad_types_are_reported_with_their_line() {
        let err = load_text("[server]\nsipUpd = \"127.0.0.1:5060\"\n")
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default();
        assert!(err.contains("sipUpd"), "{err}");
        assert!(err.contains("line 2"), "{err}");
        let err = load_text("[[numbers]]\nnumber = 100\n")
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default();
        assert!(err.contains("line"), "{err}");
    }

    #[test]
    fn dangling_references_are_errors() {
        let err = load_text(
            r#"
[[numbers]]
number = "100"
tenant = "nobody"
routingPlan = "p"
"#,
        )
        .err()
        .map(|e| format!("{e:#}"))
        .unwrap_or_default();
        assert!(err.contains("numbers[0]"), "{err}");
        assert!(err.contains("tenant"), "{err}");
    }

    #[test]
    fn api_keys_are_hashed_at_load_and_validated() {
        let cfg = load_text(
            r#"
[[apiKeys]]
name = "ops"
realm = "admin"
key = "0123456789abcdef-ops"

[[apiKeys]]
name = "acme-app"
realm = "customer"
tenant = "acme"
key = "0123456789abcdef-acme"
"#,
        )
        .expect("valid api keys");
        assert_eq!(cfg.api_keys.len(), 2);
        assert_eq!(cfg.api_keys[0].key.realm, ApiRealm::Admin);
        assert_eq!(
            cfg.api_keys[0].key_sha256,
            callplane_api::hash_key("0123456789abcdef-ops")
        );
        assert_eq!(cfg.api_keys[1].key.tenant.as_deref(), Some("acme"));
        // Neither the debug form of the config nor of the file's entry shows the secret.
        assert!(!format!("{cfg:?}").contains("0123456789abcdef"));

        let err = load_text(
            r#"
[[apiKeys]]
name = "short"
realm = "admin"
key = "tooshort"

[[apiKeys]]
name = "cust"
realm = "customer"
key = "0123456789abcdef-cust"

[[apiKeys]]
name = "short"
realm = "account"
key = "0123456789abcdef-cust"
"#,
        )
        .err()
        .map(|e| format!("{e:#}"))
        .unwrap_or_default();
        assert!(err.contains("apiKeys[0].key: must be at least 16"), "{err}");
        assert!(
            err.contains("apiKeys[1].tenant: is required for realm customer"),
            "{err}"
        );
        assert!(
            err.contains("apiKeys[2].sipUser: is required for realm account"),
            "{err}"
        );
        assert!(err.contains("apiKeys[2].name: duplicate"), "{err}");
        assert!(
            err.contains("apiKeys[2].key: same key as apiKeys[1]"),
            "{err}"
        );
        assert!(!err.contains("0123456789abcdef"), "{err}");

        let err =
            load_text("[[apiKeys]]\nname = \"x\"\nrealm = \"root\"\nkey = \"0123456789abcdef\"\n")
                .err()
                .map(|e| format!("{e:#}"))
                .unwrap_or_default();
        assert!(err.contains("unknown variant `root`"), "{err}");
    }

    #[test]
    fn block_errors_name_the_block_index_and_field() {
        let err = load_text(
            r#"
[[tenants]]
name = "t"
customerNumber = 1

[[routingPlans]]
tenant = "t"
name = "p"
blocks = [ { blockType = "HANGUP", hangupCause = "NORMAL_CLEARING" }, "not a block", { blockType = "COLLECT_DIGITS", announcementName = "a", variableName = "pin", minDigits = 3, maxDigits = 40 } ]
"#,
        )
        .err()
        .map(|e| format!("{e:#}"))
        .unwrap_or_default();
        assert!(
            err.contains("routingPlans[0] (p).blocks[1]: block 1"),
            "{err}"
        );
        assert!(
            err.contains("routingPlans[0] (p).blocks[2].maxDigits"),
            "{err}"
        );
    }

    #[test]
    fn networks() {
        let n = Network::parse("127.0.0.0/8").unwrap();
        assert!(n.contains("127.1.2.3".parse().unwrap()));
        assert!(!n.contains("128.0.0.1".parse().unwrap()));
        let h = Network::parse("10.0.0.5").unwrap();
        assert!(h.contains("10.0.0.5".parse().unwrap()));
        assert!(!h.contains("10.0.0.6".parse().unwrap()));
        assert!(Network::parse("::1/128")
            .unwrap()
            .contains("::1".parse().unwrap()));
        assert!(Network::parse("10.0.0.0/33").is_none());
        assert!(Network::parse("nonsense").is_none());
        assert!(Network::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
    }
}
