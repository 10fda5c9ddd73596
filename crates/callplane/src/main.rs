//! The `callplane` binary: loads the config (or the built-in demo), opens the store, and wires
//! SIP, media, the engine and the HTTP server together. No call logic lives here.

mod cli;
mod config;
mod logging;
mod metrics;
mod retention;
mod sched;

use anyhow::{bail, Context};
use callplane_engine::prompts::{find_program, PromptConfig};
use callplane_engine::tts::{EspeakTts, EspeakVoices, HttpTts, TtsProvider};
use callplane_engine::{Engine, EngineConfig};
use callplane_media::{MediaConfig, MediaEngine};
use callplane_sip::digest::Algorithm;
use callplane_sip::listen::ConnectionLimits;
use callplane_sip::Network;
use callplane_sip::{SipConfig, SipDirectory, SipServer};
use callplane_store::{CdrWriter, Store};
use config::Config;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tracing::{info, warn};

fn main() {
    use clap::Parser;
    // clap prints usage errors and --help / --version itself (exit 2 and 0).
    let cli = cli::Cli::parse();
    let code = match run(cli.command) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            2
        }
    };
    std::process::exit(code);
}

fn run(command: cli::Command) -> anyhow::Result<()> {
    use cli::{ApikeyCommand, CallsCommand, Command, ConfigCommand, PlanCommand};
    match command {
        Command::Serve { config, data_dir } => {
            let mut cfg = match &config {
                Some(path) => Config::load(path)?,
                None => Config::demo(PathBuf::from("callplane-data")),
            };
            if let Some(d) = data_dir {
                cfg.server.data_dir = d;
            }
            serve(cfg, config.is_none())
        }
        Command::Config {
            command: ConfigCommand::Check { file },
        } => {
            Config::load(&file)?;
            println!("{}: ok", file.display());
            Ok(())
        }
        Command::Plan {
            command: PlanCommand::Validate { file },
        } => {
            let name = file.display().to_string();
            let text =
                std::fs::read_to_string(&file).with_context(|| format!("cannot read {name}"))?;
            let value: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| anyhow::anyhow!("{name}: not JSON: {e}"))?;
            // Either a bare block list or a plan object with `blocks`.
            let blocks = value.get("blocks").cloned().unwrap_or(value);
            match callplane_engine::blocks::parse_blocks(&blocks) {
                Ok(b) => {
                    println!("{name}: ok ({} blocks)", b.len());
                    Ok(())
                }
                Err(errs) => {
                    let list: Vec<String> = errs.iter().map(|e| format!("  {name}: {e}")).collect();
                    bail!("{} error(s):\n{}", errs.len(), list.join("\n"))
                }
            }
        }
        Command::Apikey {
            command: ApikeyCommand::Create(args),
        } => apikey_create(args),
        Command::Calls {
            command:
                CallsCommand::List {
                    line,
                    number,
                    json,
                    api,
                },
        } => cli::calls_list(&api, line, number, json),
        Command::Call {
            from,
            to,
            tenant,
            caller_id,
            api,
        } => cli::call(&api, &from, &to, tenant, caller_id),
        Command::Hangup { id, cause, api } => cli::hangup(&api, &id, cause),
        Command::Events { line, number, api } => cli::events(&api, line, number),
        Command::Version => {
            println!("callplane {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
    }
}

/// `callplane apikey create`: a new random key stored (as its hash) in the data directory's
/// database; the key is printed once, on stdout alone, so a script can capture it.
fn apikey_create(args: cli::ApikeyCreate) -> anyhow::Result<()> {
    let cli::ApikeyCreate {
        realm,
        name,
        tenant,
        reseller,
        sip_user,
        rate_limit,
        config,
        data_dir,
    } = args;
    let realm = callplane_store::ApiRealm::parse(&realm).with_context(|| {
        format!("unknown realm {realm:?}: admin, reseller, customer or account")
    })?;
    // The SIP realm matters only if this is the first open of an older database (its SIP
    // passwords are then hashed for it): the config's, or the default one.
    let (dir, sip_realm) = match (data_dir, config) {
        (Some(_), Some(_)) => bail!("give either --config or --data-dir, not both"),
        (Some(d), None) => (d, callplane_store::DEFAULT_REALM.to_string()),
        (None, Some(c)) => {
            let cfg = Config::load(&c)?;
            (cfg.server.data_dir, cfg.server.realm)
        }
        (None, None) => (
            PathBuf::from("callplane-data"),
            callplane_store::DEFAULT_REALM.to_string(),
        ),
    };
    callplane_store::create_private_dir(&dir)
        .with_context(|| format!("cannot create data dir {}", dir.display()))?;
    let db = dir.join("callplane.db");
    let store =
        Store::open(&db, &sip_realm).with_context(|| format!("cannot open {}", db.display()))?;
    let secret = callplane_api::generate_key();
    let mut key = callplane_store::ApiKey {
        // A readable default that does not collide: the realm and a short random tag.
        name: name.unwrap_or_else(|| format!("{realm}-{}", &secret[3..11])),
        realm,
        tenant,
        reseller,
        sip_user,
        rate_limit,
        created: None,
    };
    let errors = callplane_api::resolve_api_key(&store, &mut key, "apikey")?;
    if !errors.is_empty() {
        let list: Vec<String> = errors.iter().map(|e| format!("  {e}")).collect();
        bail!("{} error(s):\n{}", errors.len(), list.join("\n"));
    }
    let stored = store
        .create_api_key(&key, &callplane_api::hash_key(&secret))
        .map_err(|e| anyhow::anyhow!("cannot store the key: {e}"))?;
    eprintln!(
        "created API key {:?} (realm {}); it is shown only now:",
        stored.name, stored.realm
    );
    println!("{secret}");
    Ok(())
}

/// Upserts the config file's API keys (by name), after the provisioning they may refer to.
fn apply_api_keys(store: &Store, cfg: &Config) -> anyhow::Result<()> {
    let mut problems = Vec::new();
    for (i, k) in cfg.api_keys.iter().enumerate() {
        let mut key = k.key.clone();
        let errors = callplane_api::resolve_api_key(store, &mut key, &format!("apiKeys[{i}]"))?;
        if !errors.is_empty() {
            problems.extend(errors.iter().map(|e| format!("  {e}")));
            continue;
        }
        store
            .upsert_api_key(&key, &k.key_sha256)
            .map_err(|e| anyhow::anyhow!("apiKeys[{i}] ({}): {e}", key.name))?;
    }
    if !problems.is_empty() {
        bail!(
            "{} API key error(s):\n{}",
            problems.len(),
            problems.join("\n")
        );
    }
    if !cfg.api_keys.is_empty() {
        info!(
            count = cfg.api_keys.len(),
            "API keys from the config file applied"
        );
    }
    Ok(())
}

/// The registrar and INVITE policy's view of the store: the store's in-memory SIP directory,
/// so the SIP dispatch loop never runs a query (see `callplane_store::SipDirectoryView`).
struct Directory {
    store: Store,
    trusted: Vec<Network>,
    realm: String,
}

impl SipDirectory for Directory {
    fn sip_user_ha1(&self, username: &str, algorithm: Algorithm) -> Option<String> {
        let d = self.store.sip_directory();
        let c = d.credentials(username)?;
        // HA1 computed for another realm cannot verify here (warned about at start).
        if c.realm != self.realm {
            return None;
        }
        Some(match algorithm {
            Algorithm::Md5 => c.ha1_md5.clone(),
            Algorithm::Sha256 => c.ha1_sha256.clone(),
        })
    }

    fn is_trusted_source(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|n| n.contains(ip))
            || self.store.sip_directory().is_trunk_address(ip)
    }

    fn number_exists(&self, number: &str) -> bool {
        self.store.sip_directory().has_number(number)
    }
}

/// The kernel's host name, for the ask-URL `server` field.
/// The SAY providers in order: the configured HTTP endpoint first, espeak-ng (when installed)
/// as the fallback.
fn tts_providers(
    t: &config::TtsSection,
    espeak: Option<String>,
) -> anyhow::Result<Vec<Arc<dyn TtsProvider>>> {
    let timeout = std::time::Duration::from_secs_f64(t.timeout);
    let mut providers: Vec<Arc<dyn TtsProvider>> = Vec::new();
    if let Some(url) = &t.url {
        let http = HttpTts::new(
            url.clone(),
            t.api_key.clone(),
            t.model.clone(),
            t.default_voice.clone(),
            t.voices.clone(),
            timeout,
        )
        .map_err(|e| anyhow::anyhow!("[tts]: {e}"))?;
        info!(url = %url, model = %t.model, "SAY speaks through an HTTP TTS endpoint (espeak-ng as the fallback)");
        providers.push(Arc::new(http));
    }
    if let Some(program) = espeak {
        let voices = EspeakVoices::list(&program);
        providers.push(Arc::new(EspeakTts {
            program,
            voices,
            timeout,
        }));
    }
    Ok(providers)
}

/// COLLECT_SPEECH's recognizer, said once at start either way: the configured Vosk-protocol
/// server, else the built-in one when its model is installed.
fn speech_recognizer(
    a: &config::AsrSection,
) -> Option<Arc<dyn callplane_engine::asr::SpeechRecognizer>> {
    use callplane_engine::moonshine::{MoonshineRecognizer, DEFAULT_DIR};
    if let Some(url) = &a.url {
        info!(url = %url, "COLLECT_SPEECH recognises through a Vosk-protocol server");
        return Some(Arc::new(callplane_engine::asr::VoskRecognizer {
            url: url.clone(),
        }));
    }
    let dir = a.moonshine_dir.as_deref().unwrap_or(DEFAULT_DIR);
    let threads = a.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    match MoonshineRecognizer::load(std::path::Path::new(dir), threads) {
        Ok(r) => {
            info!(
                dir,
                threads,
                preload = a.preload,
                "COLLECT_SPEECH recognises English with the built-in Moonshine model"
            );
            let r = Arc::new(r);
            if a.preload {
                let r = r.clone();
                tokio::spawn(async move {
                    if let Err(e) = r.warm_up().await {
                        warn!(error = %e, "the built-in speech model did not load");
                    }
                });
            }
            Some(r)
        }
        Err(e) => {
            warn!(
                "no speech recognizer: the built-in model is not usable ({e}); COLLECT_SPEECH blocks fail over (install it with scripts/install-moonshine.sh, or set [asr] url to a Vosk-protocol server)"
            );
            None
        }
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "callplane".into())
}

fn serve(cfg: Config, demo: bool) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CALLPLANE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rsipstack=warn")),
        )
        .with_target(false)
        // No colours: escape codes would be escaped like any other control character.
        .with_ansi(false)
        .with_writer(|| logging::EscapingStdout)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_start(sched::short_slice)
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(serve_async(cfg, demo))
}

async fn serve_async(cfg: Config, demo: bool) -> anyhow::Result<()> {
    let s = &cfg.server;
    let click_to_dial = &cfg.click_to_dial;
    // 0700 / 0600: the database holds trunk passwords, signing secrets and HA1 values.
    callplane_store::create_private_dir(&s.data_dir)
        .with_context(|| format!("cannot create data dir {}", s.data_dir.display()))?;
    let db = s.data_dir.join("callplane.db");
    let store =
        Store::open(&db, &s.realm).with_context(|| format!("cannot open {}", db.display()))?;
    store
        .apply_provisioning(&cfg.provisioning)
        .map_err(|e| anyhow::anyhow!("cannot store the configuration: {e}"))?;
    apply_api_keys(&store, &cfg)?;
    let cdrs = CdrWriter::spawn(store.clone());
    if s.recording_retention_days > 0 {
        tokio::spawn(retention::run(store.clone(), s.recording_retention_days));
    }

    // Optional system parts: say once, clearly, what is missing and what fails over.
    let espeak = find_program(&s.espeak_path);
    if espeak.is_none() {
        warn!(
            "espeak-ng not found ({}): SAY blocks will be skipped (install: apt-get install espeak-ng)",
            s.espeak_path
        );
    }
    if !s.sounds_dir.is_dir() {
        warn!(
            "standard prompt set not found at {}: standardAnnouncement prompts will be skipped (install: apt-get install asterisk-core-sounds-en-wav)",
            s.sounds_dir.display()
        );
    }
    if !s.prompts_dir.join("digit-0.wav").exists() {
        warn!(
            "Callplane prompts not found at {}: digit read-back will be skipped",
            s.prompts_dir.display()
        );
    }

    let trusted = s
        .trusted_networks
        .iter()
        .filter_map(|n| Network::parse(n))
        .collect();
    let directory = Arc::new(Directory {
        store: store.clone(),
        trusted,
        realm: s.realm.clone(),
    });
    // Changes made by another process (a CLI, a second instance on the same file) reach the
    // in-memory directory within this interval; this process's own writes reload it at once.
    if let Err(e) = store.watch_directory(callplane_store::DIRECTORY_WATCH_INTERVAL) {
        warn!(error = %e, "cannot start the SIP directory watcher: changes from other processes need a restart");
    }
    let descriptors = raise_descriptor_limit();
    start_heap_trimmer();
    let budget = ConnectionBudget::new(
        descriptors,
        s.reserved_descriptors,
        s.sip_tcp.map(|_| s.sip_tcp_max_connections),
        s.http.map(|_| s.http_max_connections),
    );
    info!(
        descriptors,
        reserved = budget.reserved,
        sip_tcp_connections = budget.sip_tcp,
        http_connections = budget.http,
        "descriptor limit"
    );
    let secs = std::time::Duration::from_secs_f64;
    let sip_cfg = SipConfig {
        udp: s.sip_udp,
        tcp: s.sip_tcp,
        realm: s.realm.clone(),
        user_agent: (!s.user_agent.is_empty()).then(|| s.user_agent.clone()),
        digest_algorithms: s
            .digest_algorithms
            .iter()
            .filter_map(|a| Algorithm::parse(a))
            .collect(),
        max_auth_failures: s.max_auth_failures,
        lockout_per_user: s.auth_lockout == config::AuthLockout::SourceUser,
        tcp_limits: ConnectionLimits {
            max_total: budget.sip_tcp,
            max_per_source: s.sip_tcp_max_connections_per_source,
        },
        tcp_first_message_timeout: secs(s.sip_tcp_first_message_timeout),
        tcp_idle_timeout: secs(s.sip_tcp_idle_timeout),
        failed_invites: callplane_sip::flood::Limits {
            per_source: s.failed_invite_limit,
            held: s.failed_invites_held,
        },
        ..SipConfig::default()
    };
    let (sip, calls) = SipServer::start(sip_cfg, directory).await?;
    let media = MediaEngine::new(MediaConfig {
        bind_ip: s.rtp_ip,
        advertise_ip: s.rtp_advertise_ip.unwrap_or(s.rtp_ip),
        port_min: s.rtp_port_min,
        port_max: s.rtp_port_max,
    });
    let engine = Engine::new(
        EngineConfig {
            prompts: PromptConfig {
                sounds_dir: s.sounds_dir.clone(),
                prompts_dir: s.prompts_dir.clone(),
                tts_cache_dir: s.data_dir.join("tts-cache"),
                tts: tts_providers(&cfg.tts, espeak)?,
            },
            webhooks: callplane_engine::webhook::WebhookConfig {
                max_per_host: s.webhook_max_per_host.max(1),
                ..Default::default()
            },
            max_call_control_loops: s.call_control_max_loops,
            ask_url_ring_seconds: s.ask_url_ring_timeout,
            node_name: s.node_name.clone().unwrap_or_else(host_name),
            music_on_hold: s.music_on_hold.clone(),
            recordings_dir: s.data_dir.join("recordings"),
            offer_timeout: std::time::Duration::from_secs_f64(s.offer_timeout.clamp(0.1, 600.0)),
            claim_idle_timeout: (s.claim_idle_timeout > 0.0).then(|| {
                std::time::Duration::from_secs_f64(s.claim_idle_timeout.clamp(0.1, 86_400.0))
            }),
            recognizer: speech_recognizer(&cfg.asr),
        },
        store.clone(),
        cdrs.clone(),
        sip.clone(),
        media.clone(),
    )
    .map_err(|e| anyhow::anyhow!("cannot start the webhook client: {e}"))?;
    let runner = engine.clone();
    tokio::spawn(async move { runner.run(calls).await });

    let mut http_addr = None;
    let mut api_shutdown = None;
    if let Some(addr) = s.http {
        let source = Arc::new(metrics::Metrics {
            engine: engine.clone(),
            sip: sip.clone(),
            media: media.clone(),
            http_connections: std::sync::OnceLock::new(),
        });
        let mut api = callplane_api::ApiState::with_events(
            store.clone(),
            s.data_dir.clone(),
            Arc::new(engine.clone()),
            callplane_api::events_ws::EventsConfig {
                ping_interval: secs(s.events_ping_interval),
                inactivity_timeout: (s.events_inactivity_timeout > 0.0)
                    .then(|| secs(s.events_inactivity_timeout)),
                queue: s.events_queue,
                resume_window: secs(s.events_resume_window),
            },
        );
        api_shutdown = Some(api.shutdown.clone());
        api.rate_limits = Arc::new(callplane_api::ratelimit::RateLimits::new(
            callplane_api::ratelimit::Rate::per_second(s.api_rate_limit),
        ));
        api.click_to_dial = callplane_api::click_to_dial::ClickToDialConfig {
            allow_from: click_to_dial
                .allow_from
                .iter()
                .filter_map(|n| Network::parse(n))
                .collect(),
            keyless: click_to_dial.keyless,
        };
        let limits = callplane_api::HttpLimits {
            connections: ConnectionLimits {
                max_total: budget.http,
                max_per_source: s.http_max_connections_per_source,
            },
            header_read_timeout: secs(s.http_header_read_timeout),
            idle_timeout: secs(s.http_idle_timeout),
        };
        let (server, app) = callplane_api::bind(addr, limits, source.clone(), api)
            .with_context(|| format!("cannot bind HTTP on {addr}"))?;
        http_addr = server.local_addr().ok();
        source.http_connections.set(server.counter()).ok();
        tokio::spawn(server.serve(app));
    }
    let show =
        |a: Option<std::net::SocketAddr>| a.map(|a| a.to_string()).unwrap_or_else(|| "-".into());
    info!(
        "callplane ready: sip udp {} tcp {}, http {}, data {}",
        show(sip.local_udp()),
        show(sip.local_tcp()),
        show(http_addr),
        s.data_dir.display()
    );
    if demo {
        if let Some(udp) = sip.local_udp() {
            info!("demo: call sip:100@{udp} (greeting, 3 digits + #, read-back); phones may REGISTER as alice/alice-secret and be reached on number 200");
        }
    }

    shutdown_signal().await;
    if let Some(t) = api_shutdown {
        // Event sockets close (1001) instead of waiting for events that will not come.
        t.cancel();
    }
    // Finished calls always leave a CDR: end the calls in progress (their BYEs still need the
    // SIP stack), then stop SIP and write out the queue.
    let active = engine.active_calls();
    info!(active, "shutting down: ending calls in progress");
    let left = engine.drain(std::time::Duration::from_secs(5)).await;
    if left > 0 {
        warn!(
            left,
            "calls still running after the grace time; their CDRs are lost"
        );
    }
    sip.shutdown();
    cdrs.flush();
    Ok(())
}

/// Raises the soft limit on open descriptors to the hard limit (a server should not stop at
/// the shell's 1024 when the system allows more) and returns the limit in force.
fn raise_descriptor_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
    }
    lim.rlim_cur
}

/// Growth of the free heap since the last check above which the trimmer hands memory back.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_ABOVE_FREE_BYTES: usize = 2 << 20;

/// glibc keeps freed memory in its arenas, so after a burst (a flood of rejected INVITEs, a
/// peak of calls) RSS would stay at the peak for good. Every few seconds the trimmer reads the
/// heap's free bytes (`mallinfo2`, cheap); when they grew by more than a threshold over their
/// lowest since the last trim, `malloc_trim` returns the free pages to the system (a few
/// milliseconds on a heap of tens of MB, on this thread), and again every 30 s while much is
/// free (pages next to memory still in use at the last trim may have come free since). Free
/// bytes stay counted after a trim (the pages are only unmapped), hence the growth measure.
fn start_heap_trimmer() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let spawned = std::thread::Builder::new()
            .name("heap-trim".into())
            .spawn(|| {
                let mut baseline = 0usize;
                let mut last_trim = std::time::Instant::now();
                loop {
                    std::thread::sleep(std::time::Duration::from_secs(5));
                    // SAFETY: mallinfo2 and malloc_trim take no pointers and are thread-safe.
                    let info = unsafe { libc::mallinfo2() };
                    let free = info.fordblks;
                    baseline = baseline.min(free);
                    let grew = free > baseline + TRIM_ABOVE_FREE_BYTES;
                    let due = free > TRIM_ABOVE_FREE_BYTES
                        && last_trim.elapsed() >= std::time::Duration::from_secs(30);
                    if grew || due {
                        let started = std::time::Instant::now();
                        unsafe { libc::malloc_trim(0) };
                        last_trim = std::time::Instant::now();
                        baseline = free;
                        tracing::debug!(
                            free_mb = free >> 20,
                            in_use_mb = info.uordblks >> 20,
                            took_us = started.elapsed().as_micros() as u64,
                            "heap trimmed"
                        );
                    }
                }
            });
        if let Err(e) = spawned {
            warn!(error = %e, "cannot start the heap trimmer; memory freed after bursts stays with the process");
        }
    }
}

/// How many descriptors the connection listeners may use: the limit less a reserve for RTP,
/// the database, webhooks and outbound SIP, so that a signalling flood cannot starve calls in
/// progress. When the configured caps do not fit, both shrink in proportion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ConnectionBudget {
    reserved: u64,
    sip_tcp: usize,
    http: usize,
}

impl ConnectionBudget {
    fn new(limit: u64, reserved: Option<u64>, sip_tcp: Option<usize>, http: Option<usize>) -> Self {
        let reserved = reserved.unwrap_or((limit / 4).max(256)).min(limit);
        let available = limit - reserved;
        let want_sip = sip_tcp.unwrap_or(0) as u64;
        let want_http = http.unwrap_or(0) as u64;
        let wanted = want_sip + want_http;
        let scale = |w: u64| -> usize {
            let v = if wanted <= available {
                w
            } else {
                w * available / wanted.max(1)
            };
            usize::try_from(v.max(u64::from(w > 0))).unwrap_or(usize::MAX)
        };
        ConnectionBudget {
            reserved,
            sip_tcp: scale(want_sip),
            http: scale(want_http),
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

#[cfg(test)]
mod tests {
    use super::ConnectionBudget;

    #[test]
    fn connection_budget_keeps_the_reserve_free() {
        // 1024 descriptors: 256 reserved, 768 shared in proportion to the wanted caps.
        let b = ConnectionBudget::new(1024, None, Some(4096), Some(1024));
        assert_eq!(b.reserved, 256);
        assert_eq!((b.sip_tcp, b.http), (614, 153));
        assert!(b.sip_tcp + b.http <= 768);
        // Plenty of descriptors: the caps as configured.
        let b = ConnectionBudget::new(1 << 20, None, Some(4096), Some(1024));
        assert_eq!((b.sip_tcp, b.http), (4096, 1024));
        // A listener that is off gets nothing; an explicit reserve is honoured.
        let b = ConnectionBudget::new(1024, Some(900), None, Some(1024));
        assert_eq!((b.reserved, b.sip_tcp, b.http), (900, 0, 124));
        // A reserve larger than the limit leaves each listener one connection, never zero.
        let b = ConnectionBudget::new(100, Some(500), Some(10), Some(10));
        assert_eq!((b.sip_tcp, b.http), (1, 1));
    }
}
