//! End-to-end harness: starts the real `callplane` binary on free loopback ports with a
//! temporary home, drives it with SIPp, and observes what a caller would: SIP messages (from
//! SIPp's message trace), RTP (through `RtpPeer`, a socket the SDP points media at) and CDR rows.
//! Everything here is independent of the product's code: the RTP, RFC 4733, G.711 and WAV code
//! below is written from the RFCs, so a shared bug cannot hide itself.
//!
//! Every wait is bounded and fails with a message that says what did not happen, with the
//! server's log attached.

#![allow(dead_code)]

pub mod http;
pub mod webhook;
pub mod ws;

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long the binary may take to log `callplane ready:`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a CDR may take to appear after the call ended.
pub const CDR_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Paths and ports
// ---------------------------------------------------------------------------------------------

pub fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn prompts_dir() -> PathBuf {
    manifest_dir().join("prompts")
}

pub fn prompt_path(name: &str) -> PathBuf {
    prompts_dir().join(format!("{name}.wav"))
}

pub fn sipp_scenario(name: &str) -> PathBuf {
    manifest_dir().join("tests").join("sipp").join(name)
}

pub fn data_path(rel: &str) -> PathBuf {
    manifest_dir().join("tests").join("data").join(rel)
}

fn handed_out() -> &'static Mutex<HashSet<u16>> {
    static PORTS: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    PORTS.get_or_init(|| Mutex::new(HashSet::new()))
}

/// A loopback port that is free for both UDP and TCP right now and has not been handed out
/// before in this process (the kernel likes to give the same port back right after release).
pub fn free_port() -> u16 {
    for _ in 0..200 {
        let Ok(udp) = UdpSocket::bind("127.0.0.1:0") else {
            continue;
        };
        let Ok(addr) = udp.local_addr() else { continue };
        let port = addr.port();
        if TcpListener::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        let mut seen = handed_out().lock().unwrap();
        if seen.insert(port) {
            return port;
        }
    }
    panic!("could not find a free loopback port in 200 tries");
}

/// A free port `p` such that `p + 2` is free as well (SIPp binds its media port and +2).
fn free_port_pair() -> u16 {
    for _ in 0..50 {
        let p = free_port();
        if p < 65000 && UdpSocket::bind(("127.0.0.1", p + 2)).is_ok() {
            handed_out().lock().unwrap().insert(p + 2);
            return p;
        }
    }
    panic!("could not find a free pair of loopback ports");
}

/// A distinct RTP port range for each server: below the kernel's ephemeral range (32768+),
/// where `free_port` and SIPp's sockets live, so the ranges never collide with them.
fn rtp_range() -> (u16, u16) {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let slot = (std::process::id().wrapping_mul(37).wrapping_add(n)) % 220;
    let base = 10_000 + (slot as u16) * 100;
    (base, base + 99)
}

fn unique_tag() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{}-{}-{:x}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        nanos
    )
}

fn temp_dir(prefix: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("callplane-e2e-{prefix}-{}", unique_tag()));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// Strips ANSI colour sequences from a log line.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c2 in chars.by_ref() {
                    if c2.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Output collection (server logs)
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct Lines {
    lines: Vec<String>,
    closed: usize,
}

/// Lines read from a child's stdout and stderr on threads, with a condvar to wait on.
#[derive(Clone, Default)]
pub struct LogSink(Arc<(Mutex<Lines>, Condvar)>);

impl LogSink {
    fn attach<R: Read + Send + 'static>(&self, reader: R, tag: &'static str) -> JoinHandle<()> {
        let sink = self.clone();
        std::thread::spawn(move || {
            let mut r = BufReader::new(reader);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = strip_ansi(String::from_utf8_lossy(&buf).trim_end());
                        let (m, cv) = &*sink.0;
                        let mut g = m.lock().unwrap();
                        g.lines.push(if tag.is_empty() {
                            line
                        } else {
                            format!("{tag}{line}")
                        });
                        cv.notify_all();
                    }
                }
            }
            let (m, cv) = &*sink.0;
            m.lock().unwrap().closed += 1;
            cv.notify_all();
        })
    }

    pub fn lines(&self) -> Vec<String> {
        self.0 .0.lock().unwrap().lines.clone()
    }

    /// Waits until a line satisfies `pred`; Err when `streams` outputs closed first or time ran out.
    fn wait_for(
        &self,
        streams: usize,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        let (m, cv) = &*self.0;
        let mut g = m.lock().unwrap();
        let mut checked = 0;
        loop {
            while checked < g.lines.len() {
                if pred(&g.lines[checked]) {
                    return Ok(g.lines[checked].clone());
                }
                checked += 1;
            }
            if g.closed >= streams {
                return Err("the process closed its output (exited)".into());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(format!("no such line within {timeout:?}"));
            }
            g = cv.wait_timeout(g, deadline - now).unwrap().0;
        }
    }

    /// The last `n` lines, one per line, for failure messages.
    pub fn tail(&self, n: usize) -> String {
        let lines = self.lines();
        let start = lines.len().saturating_sub(n);
        let mut s = String::new();
        for l in &lines[start..] {
            let _ = writeln!(s, "    | {l}");
        }
        s
    }
}

// ---------------------------------------------------------------------------------------------
// The server under test
// ---------------------------------------------------------------------------------------------

/// Options for the `[server]` section beyond ports and paths.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Whether `127.0.0.0/8` is a trusted network (INVITEs need no digest auth).
    pub trusted: bool,
    pub max_auth_failures: u32,
    /// More `[server]` lines (`key = value\n` each).
    pub extra_server: String,
    /// Whether the SIP UDP / TCP listeners are configured (`false` writes `sipUdp = false`).
    pub sip_udp: bool,
    pub sip_tcp: bool,
    /// Start the binary under `ulimit -n` of this many descriptors (soft and hard).
    pub nofile: Option<u64>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            trusted: true,
            max_auth_failures: 5,
            extra_server: String::new(),
            sip_udp: true,
            sip_tcp: true,
            nofile: None,
        }
    }
}

/// A running `callplane serve`.
pub struct Server {
    child: Option<Child>,
    dir: PathBuf,
    config_path: PathBuf,
    sip_port: u16,
    http_port: u16,
    rtp: (u16, u16),
    logs: LogSink,
    readers: Vec<JoinHandle<()>>,
}

/// Starts `callplane serve --config <config_path>` with its output read into a new log.
fn spawn_serve(mut cmd: Command, config_path: &Path) -> (Child, LogSink, Vec<JoinHandle<()>>) {
    let mut child = cmd
        .arg("serve")
        .arg("--config")
        .arg(config_path)
        .env("NO_COLOR", "1")
        .env("CALLPLANE_LOG", "info,rsipstack=warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn callplane");
    let logs = LogSink::default();
    let readers = vec![
        logs.attach(child.stdout.take().expect("stdout"), ""),
        logs.attach(child.stderr.take().expect("stderr"), "[stderr] "),
    ];
    (child, logs, readers)
}

fn toml_str(p: &Path) -> String {
    format!("{:?}", p.to_string_lossy())
}

impl Server {
    /// Starts the binary with `provisioning_toml` (tenants, numbers, plans…) appended to a
    /// generated `[server]` section, and waits for `callplane ready:`.
    pub fn start(provisioning_toml: &str, trusted: bool) -> Server {
        Server::start_with(
            provisioning_toml,
            ServerOptions {
                trusted,
                ..ServerOptions::default()
            },
        )
    }

    pub fn start_with(provisioning_toml: &str, opts: ServerOptions) -> Server {
        // A port found free can be taken by someone else before the binary binds it: retry
        // with new ports when that is why it failed.
        let mut last = String::new();
        for _ in 0..3 {
            match Server::try_start(provisioning_toml, &opts) {
                Ok(s) => return s,
                Err((msg, retry)) => {
                    last = msg;
                    if !retry {
                        break;
                    }
                }
            }
        }
        panic!("callplane did not start:\n{last}");
    }

    fn try_start(provisioning_toml: &str, opts: &ServerOptions) -> Result<Server, (String, bool)> {
        let dir = temp_dir("server");
        let data_dir = dir.join("data");
        let sip_port = free_port();
        let http_port = free_port();
        let rtp = rtp_range();
        let trusted = if opts.trusted {
            "trustedNetworks = [\"127.0.0.0/8\"]\n"
        } else {
            ""
        };
        let config = format!(
            "[server]\n\
             dataDir = {data}\n\
             sipUdp = {udp}\n\
             sipTcp = {tcp}\n\
             http = \"127.0.0.1:{http_port}\"\n\
             rtpIp = \"127.0.0.1\"\n\
             rtpPortMin = {rmin}\n\
             rtpPortMax = {rmax}\n\
             {trusted}\
             promptsDir = {prompts}\n\
             soundsDir = \"/usr/share/asterisk/sounds/en\"\n\
             maxAuthFailures = {maf}\n\
             {extra}\n\
             {provisioning_toml}\n",
            data = toml_str(&data_dir),
            rmin = rtp.0,
            rmax = rtp.1,
            prompts = toml_str(&prompts_dir()),
            maf = opts.max_auth_failures,
            extra = opts.extra_server,
            udp = if opts.sip_udp {
                format!("\"127.0.0.1:{sip_port}\"")
            } else {
                "false".into()
            },
            tcp = if opts.sip_tcp {
                format!("\"127.0.0.1:{sip_port}\"")
            } else {
                "false".into()
            },
        );
        let config_path = dir.join("callplane.toml");
        std::fs::write(&config_path, &config).expect("write config");
        let cmd = match opts.nofile {
            None => Command::new(env!("CARGO_BIN_EXE_callplane")),
            Some(n) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                    .arg(env!("CARGO_BIN_EXE_callplane"));
                c
            }
        };
        let (child, logs, readers) = spawn_serve(cmd, &config_path);
        let mut server = Server {
            child: Some(child),
            dir,
            config_path,
            sip_port,
            http_port,
            rtp,
            logs,
            readers,
        };
        match server
            .logs
            .wait_for(2, READY_TIMEOUT, |l| l.contains("callplane ready:"))
        {
            Ok(_) => Ok(server),
            Err(why) => {
                let lines = server.logs.lines().join("\n");
                let retry = lines.contains("in use") || lines.contains("AddrInUse");
                let msg = format!(
                    "no `callplane ready:` line: {why}\nconfig:\n{config}\noutput:\n{}",
                    server.logs.tail(60)
                );
                server.stop();
                Err((msg, retry))
            }
        }
    }

    /// Stops the process (SIGTERM) and starts it again on the same configuration and data
    /// directory, as an operator restarts it; the log starts afresh.
    pub fn restart(&mut self) {
        self.stop();
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        let (child, logs, readers) = spawn_serve(
            Command::new(env!("CARGO_BIN_EXE_callplane")),
            &self.config_path,
        );
        self.child = Some(child);
        self.logs = logs;
        self.readers = readers;
        if let Err(why) = self
            .logs
            .wait_for(2, READY_TIMEOUT, |l| l.contains("callplane ready:"))
        {
            panic!(
                "no `callplane ready:` line after a restart: {why}\n{}",
                self.logs.tail(60)
            );
        }
    }

    pub fn sip_port(&self) -> u16 {
        self.sip_port
    }

    pub fn sip_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.sip_port))
    }

    pub fn http_port(&self) -> u16 {
        self.http_port
    }

    pub fn rtp_range(&self) -> (u16, u16) {
        self.rtp
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.join("data").join("callplane.db")
    }

    /// A read-only connection to the server's SQLite file.
    pub fn db(&self) -> rusqlite::Connection {
        let conn = rusqlite::Connection::open_with_flags(
            self.db_path(),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", self.db_path().display()));
        conn.busy_timeout(Duration::from_secs(5)).ok();
        conn
    }

    /// Everything the server printed so far.
    pub fn log_lines(&self) -> Vec<String> {
        self.logs.lines()
    }

    /// The last lines of the server's output, formatted for a failure message.
    pub fn log_tail(&self) -> String {
        format!("server log (last 80 lines):\n{}", self.logs.tail(80))
    }

    /// Waits for a log line containing `needle`.
    /// The id of the (first) call the server logged as started (`call started call=…`).
    pub fn started_call_id(&self) -> String {
        let line = self
            .wait_for_log("call started", Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{e}\n{}", self.log_tail()));
        line.split_whitespace()
            .find_map(|w| w.strip_prefix("call="))
            .map(|w| w.trim_matches('"').to_string())
            .unwrap_or_else(|| panic!("no call= in {line:?}"))
    }

    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> Result<String, String> {
        self.logs.wait_for(2, timeout, |l| l.contains(needle))
    }

    /// The process's resident memory now, from `/proc/<pid>/status`.
    pub fn rss_bytes(&self) -> u64 {
        let pid = self.child.as_ref().expect("server running").id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .expect("VmRSS")
            * 1024
    }

    /// One unlabelled value from `/metrics`.
    pub fn metric(&self, name: &str) -> f64 {
        let text = http::request(self.http_port, "GET", "/metrics", &[], b"").text();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{text}"))
    }

    /// Whether the process is still running.
    pub fn is_alive(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// SIGTERM, then SIGKILL if it does not exit within 5 s. Returns the exit status if known.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match child.try_wait() {
                Ok(Some(st)) => return Some(st),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = child.kill();
                    return child.wait().ok();
                }
            }
        }
    }

    /// Polls the CDR table until a row satisfies `pred` (rows appear shortly after a call ends:
    /// the writer is asynchronous, so there is no event to await from outside).
    pub fn wait_for_cdr(&self, what: &str, pred: impl Fn(&Cdr) -> bool) -> Cdr {
        let conn = self.db();
        match wait_for_cdr(&conn, CDR_TIMEOUT, &pred) {
            Ok(c) => c,
            Err(all) => panic!(
                "no CDR row for {what} within {CDR_TIMEOUT:?}; rows present:\n{}\n{}",
                format_cdrs(&all),
                self.log_tail()
            ),
        }
    }

    /// The CDR of the call with this SIP Call-ID.
    pub fn cdr_for_call_id(&self, sip_call_id: &str) -> Cdr {
        self.wait_for_cdr(&format!("SIP Call-ID {sip_call_id}"), |c| {
            c.sip_call_id == sip_call_id
        })
    }

    /// Asserts that `got` equals `want`, with the server log in the failure message.
    pub fn check(&self, ok: bool, msg: impl AsRef<str>) {
        if !ok {
            panic!("{}\n{}", msg.as_ref(), self.log_tail());
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        if std::thread::panicking() {
            eprintln!(
                "test failed: server home kept at {} (config, SQLite file)",
                self.dir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// CDRs
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct CdrLeg {
    pub leg_index: i64,
    pub direction: String,
    pub destination_type: Option<String>,
    pub destination: String,
    pub answer_time: Option<String>,
    pub sip_status: Option<i64>,
    pub hangup_cause: String,
}

#[derive(Debug, Clone)]
pub struct Cdr {
    pub call_id: String,
    pub sip_call_id: String,
    pub tenant: Option<String>,
    pub number: String,
    pub caller: String,
    pub start_time: String,
    pub answer_time: Option<String>,
    pub end_time: String,
    pub talk_time_ms: i64,
    pub hangup_cause: String,
    pub hangup_by: String,
    pub sip_status: Option<i64>,
    pub legs: Vec<CdrLeg>,
    pub variables: BTreeMap<String, String>,
}

/// Every CDR row with its legs and variables, oldest first.
pub fn read_cdrs(conn: &rusqlite::Connection) -> rusqlite::Result<Vec<Cdr>> {
    let mut stmt = conn.prepare(
        "SELECT call_id, sip_call_id, tenant, number, caller, start_time, answer_time, end_time,
                talk_time_ms, hangup_cause, hangup_by, sip_status
         FROM cdrs ORDER BY start_time, rowid",
    )?;
    let mut cdrs: Vec<Cdr> = stmt
        .query_map([], |r| {
            Ok(Cdr {
                call_id: r.get(0)?,
                sip_call_id: r.get(1)?,
                tenant: r.get(2)?,
                number: r.get(3)?,
                caller: r.get(4)?,
                start_time: r.get(5)?,
                answer_time: r.get(6)?,
                end_time: r.get(7)?,
                talk_time_ms: r.get(8)?,
                hangup_cause: r.get(9)?,
                hangup_by: r.get(10)?,
                sip_status: r.get(11)?,
                legs: Vec::new(),
                variables: BTreeMap::new(),
            })
        })?
        .collect::<Result<_, _>>()?;
    let mut legs = conn.prepare(
        "SELECT leg_index, direction, destination_type, destination, answer_time, sip_status,
                hangup_cause
         FROM cdr_legs WHERE call_id = ?1 ORDER BY leg_index",
    )?;
    let mut vars = conn.prepare("SELECT name, value FROM cdr_variables WHERE call_id = ?1")?;
    for c in &mut cdrs {
        c.legs = legs
            .query_map([&c.call_id], |r| {
                Ok(CdrLeg {
                    leg_index: r.get(0)?,
                    direction: r.get(1)?,
                    destination_type: r.get(2)?,
                    destination: r.get(3)?,
                    answer_time: r.get(4)?,
                    sip_status: r.get(5)?,
                    hangup_cause: r.get(6)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        c.variables = vars
            .query_map([&c.call_id], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
    }
    Ok(cdrs)
}

/// Polls until a CDR satisfies `pred`. Err carries the rows that were there at the end.
pub fn wait_for_cdr(
    conn: &rusqlite::Connection,
    timeout: Duration,
    pred: &dyn Fn(&Cdr) -> bool,
) -> Result<Cdr, Vec<Cdr>> {
    let deadline = Instant::now() + timeout;
    loop {
        // The schema may not exist yet if the server is still migrating: treat as no rows.
        let rows = read_cdrs(conn).unwrap_or_default();
        if let Some(c) = rows.iter().find(|c| pred(c)) {
            return Ok(c.clone());
        }
        if Instant::now() >= deadline {
            return Err(rows);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls until there are at least `n` CDR rows.
pub fn wait_for_cdr_count(
    conn: &rusqlite::Connection,
    n: usize,
    timeout: Duration,
) -> Result<Vec<Cdr>, Vec<Cdr>> {
    let deadline = Instant::now() + timeout;
    loop {
        let rows = read_cdrs(conn).unwrap_or_default();
        if rows.len() >= n {
            return Ok(rows);
        }
        if Instant::now() >= deadline {
            return Err(rows);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One CDR formatted for a failure message.
pub fn cdr_text(cdr: &Cdr) -> String {
    format_cdrs(std::slice::from_ref(cdr))
}

pub fn format_cdrs(cdrs: &[Cdr]) -> String {
    if cdrs.is_empty() {
        return "    (none)".into();
    }
    let mut s = String::new();
    for c in cdrs {
        let _ = writeln!(
            s,
            "    call_id={} sip_call_id={} number={} caller={} cause={} by={} status={:?} talk={}ms vars={:?}",
            c.call_id, c.sip_call_id, c.number, c.caller, c.hangup_cause, c.hangup_by,
            c.sip_status, c.talk_time_ms, c.variables
        );
        for l in &c.legs {
            let _ = writeln!(
                s,
                "      leg {} {} {:?} {} status={:?} cause={} answered={}",
                l.leg_index,
                l.direction,
                l.destination_type,
                l.destination,
                l.sip_status,
                l.hangup_cause,
                l.answer_time.is_some()
            );
        }
    }
    s
}

// ---------------------------------------------------------------------------------------------
// SIPp
// ---------------------------------------------------------------------------------------------

/// One SIP message from SIPp's `-trace_msg` log.
#[derive(Debug, Clone)]
pub struct TracedMessage {
    pub sent: bool,
    /// Seconds since midnight (local time of SIPp's log), for intervals between messages.
    pub time: Option<f64>,
    pub text: String,
}

impl TracedMessage {
    pub fn first_line(&self) -> &str {
        self.text.lines().next().unwrap_or("")
    }

    /// The status code when this is a response.
    pub fn status(&self) -> Option<u16> {
        let l = self.first_line();
        l.strip_prefix("SIP/2.0 ")?.get(..3)?.parse().ok()
    }

    /// The method when this is a request.
    pub fn method(&self) -> Option<&str> {
        let l = self.first_line();
        if l.starts_with("SIP/2.0") {
            return None;
        }
        l.split_whitespace().next()
    }

    /// The first header with this name (case-insensitive), value trimmed.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers(name).into_iter().next()
    }

    pub fn headers(&self, name: &str) -> Vec<String> {
        let mut out = Vec::new();
        for line in self.text.lines().skip(1) {
            if line.trim().is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.trim().eq_ignore_ascii_case(name) {
                    out.push(v.trim().to_string());
                }
            }
        }
        out
    }

    /// The CSeq method (`INVITE` for responses to INVITE).
    pub fn cseq_method(&self) -> Option<String> {
        self.header("CSeq")
            .and_then(|c| c.split_whitespace().nth(1).map(str::to_string))
    }

    pub fn body(&self) -> &str {
        match self.text.find("\n\n") {
            Some(i) => &self.text[i + 2..],
            None => "",
        }
    }
}

/// The audio address of an SDP body (`c=` and `m=audio`).
pub fn sdp_audio_addr(sdp: &str) -> Option<SocketAddr> {
    let mut ip = None;
    let mut port = None;
    for line in sdp.lines() {
        let line = line.trim();
        if let Some(c) = line.strip_prefix("c=IN IP4 ") {
            ip = c
                .split_whitespace()
                .next()
                .and_then(|s| s.parse::<std::net::Ipv4Addr>().ok());
        } else if let Some(m) = line.strip_prefix("m=audio ") {
            port = m
                .split_whitespace()
                .next()
                .and_then(|p| p.parse::<u16>().ok());
        }
    }
    Some(SocketAddr::from((ip?, port?)))
}

/// Parses SIPp's message log (`-trace_msg -message_file F`).
pub fn parse_sipp_messages(log: &str) -> Vec<TracedMessage> {
    let mut out = Vec::new();
    let text = log.replace('\r', "");
    for block in text.split("\n----------------------------------------------- ") {
        let block = block.trim_start_matches("----------------------------------------------- ");
        let mut lines = block.lines();
        // "2026-11-21 05:52:48.641122"
        let time = lines.next().and_then(|ts| {
            let clock = ts.split_whitespace().nth(1)?;
            let mut parts = clock.split(':');
            let h: f64 = parts.next()?.parse().ok()?;
            let m: f64 = parts.next()?.parse().ok()?;
            let s: f64 = parts.next()?.parse().ok()?;
            Some(h * 3600.0 + m * 60.0 + s)
        });
        let Some(kind) = lines.next() else { continue };
        let sent = if kind.contains("message sent") {
            true
        } else if kind.contains("message received") {
            false
        } else {
            continue;
        };
        let rest: Vec<&str> = lines.collect();
        let msg = rest.join("\n");
        let msg = msg.trim_matches('\n').to_string();
        if !msg.is_empty() {
            out.push(TracedMessage {
                sent,
                time,
                text: msg,
            });
        }
    }
    out
}

/// The outcome of one SIPp run.
#[derive(Debug)]
pub struct SippResult {
    pub scenario: String,
    pub status: Option<ExitStatus>,
    pub timed_out: bool,
    pub stdout: String,
    pub error_log: String,
    pub message_log: String,
    pub messages: Vec<TracedMessage>,
    pub call_id: String,
}

impl SippResult {
    pub fn success(&self) -> bool {
        !self.timed_out && self.status.is_some_and(|s| s.success())
    }

    pub fn exit_code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }

    pub fn received(&self) -> impl Iterator<Item = &TracedMessage> {
        self.messages.iter().filter(|m| !m.sent)
    }

    pub fn sent(&self) -> impl Iterator<Item = &TracedMessage> {
        self.messages.iter().filter(|m| m.sent)
    }

    /// Status codes of the responses received, in order.
    pub fn received_statuses(&self) -> Vec<u16> {
        self.received().filter_map(|m| m.status()).collect()
    }

    /// The first received request with this method.
    pub fn received_request(&self, method: &str) -> Option<&TracedMessage> {
        self.received().find(|m| m.method() == Some(method))
    }

    /// The final (>= 200) responses received for requests with this CSeq method.
    pub fn final_responses(&self, cseq_method: &str) -> Vec<&TracedMessage> {
        self.received()
            .filter(|m| m.status().is_some_and(|s| s >= 200))
            .filter(|m| m.cseq_method().as_deref() == Some(cseq_method))
            .collect()
    }

    /// A summary for failure messages: exit status, errors, the SIP flow and the screen tail.
    pub fn report(&self) -> String {
        let mut s = format!(
            "SIPp {} exit={:?}{}\n",
            self.scenario,
            self.exit_code(),
            if self.timed_out {
                " (killed: did not finish)"
            } else {
                ""
            }
        );
        let flow: Vec<String> = self
            .messages
            .iter()
            .map(|m| format!("{} {}", if m.sent { "->" } else { "<-" }, m.first_line()))
            .collect();
        let _ = writeln!(s, "  flow: {}", flow.join(" | "));
        if !self.error_log.trim().is_empty() {
            let _ = writeln!(s, "  error log:\n{}", indent(&self.error_log, 60));
        }
        let _ = writeln!(s, "  screen (tail):\n{}", indent(&self.stdout, 25));
        s
    }

    /// Panics with the SIPp report (and `context`, e.g. the server log) unless SIPp passed.
    pub fn assert_success(&self, context: &str) {
        if !self.success() {
            panic!(
                "SIPp scenario {} failed\n{}\n{}",
                self.scenario,
                self.report(),
                context
            );
        }
    }
}

fn indent(text: &str, last: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(last);
    lines[start..]
        .iter()
        .map(|l| format!("    | {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Builds a SIPp command line.
pub struct Sipp {
    scenario: String,
    remote: Option<SocketAddr>,
    service: Option<String>,
    vars: Vec<(String, String)>,
    extra: Vec<String>,
    timeout_s: u32,
    port: u16,
}

impl Sipp {
    /// A UAC scenario that sends to `remote`.
    pub fn uac(scenario: &str, remote: SocketAddr) -> Sipp {
        Sipp {
            scenario: scenario.into(),
            remote: Some(remote),
            service: None,
            vars: Vec::new(),
            extra: Vec::new(),
            timeout_s: 30,
            port: free_port(),
        }
    }

    /// A UAS scenario listening on its own port (see `port()`).
    pub fn uas(scenario: &str) -> Sipp {
        Sipp {
            scenario: scenario.into(),
            remote: None,
            service: None,
            vars: Vec::new(),
            extra: Vec::new(),
            timeout_s: 30,
            port: free_port(),
        }
    }

    /// The Request-URI user (`-s`).
    pub fn service(mut self, s: &str) -> Sipp {
        self.service = Some(s.into());
        self
    }

    /// A `-set name value` global (the scenario declares it with `<Global variables=…>`).
    pub fn set(mut self, name: &str, value: impl ToString) -> Sipp {
        self.vars.push((name.into(), value.to_string()));
        self
    }

    pub fn arg(mut self, a: &str) -> Sipp {
        self.extra.push(a.into());
        self
    }

    pub fn timeout_s(mut self, s: u32) -> Sipp {
        self.timeout_s = s;
        self
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn spawn(self) -> SippProcess {
        let dir = temp_dir("sipp");
        let name = self.scenario.trim_end_matches(".xml").to_string();
        let call_id_prefix = format!("e2e-{name}-{}", unique_tag());
        let mut cmd = Command::new("sipp");
        if let Some(r) = self.remote {
            cmd.arg(r.to_string());
        }
        cmd.arg("-sf")
            .arg(sipp_scenario(&self.scenario))
            .args(["-i", "127.0.0.1", "-mi", "127.0.0.1"])
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-mp")
            .arg(free_port_pair().to_string())
            .args(["-m", "1", "-l", "1", "-nostdin"])
            .arg("-timeout")
            .arg(format!("{}s", self.timeout_s))
            .arg("-timeout_error")
            .arg("-trace_err")
            .arg("-error_file")
            .arg(dir.join("errors.log"))
            .arg("-trace_msg")
            .arg("-message_file")
            .arg(dir.join("messages.log"))
            // %u is the call number: our prefix makes the Call-ID known before the call.
            .arg("-cid_str")
            .arg(format!("{call_id_prefix}-%u@%s"));
        if let Some(s) = &self.service {
            cmd.arg("-s").arg(s);
        }
        for (k, v) in &self.vars {
            cmd.arg("-set").arg(k).arg(v);
        }
        cmd.args(&self.extra);
        let stdout_path = dir.join("screen.log");
        let stdout = std::fs::File::create(&stdout_path).expect("create sipp screen log");
        let stderr = stdout.try_clone().expect("clone file handle");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(stderr));
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!("cannot run sipp ({e}); install it: apt-get install sip-tester")
        });
        SippProcess {
            child: Some(child),
            dir,
            scenario: self.scenario,
            port: self.port,
            timeout: Duration::from_secs(self.timeout_s as u64 + 15),
            call_id: format!("{call_id_prefix}-1@127.0.0.1"),
        }
    }

    /// Spawns SIPp and waits for it to finish.
    pub fn run(self) -> SippResult {
        self.spawn().wait()
    }
}

/// A phone registered as `user` (digest password `password`) that answers every call to it
/// (`ooc_answer.xml`, media at `rtp_port`) and stays up `stay_ms`; returned once its REGISTER
/// got its 200.
pub fn registered_phone(
    server: &Server,
    user: &str,
    password: &str,
    rtp_port: u16,
    stay_ms: u32,
) -> SippProcess {
    let mut phone = Sipp::uac("register_then_answer.xml", server.sip_addr())
        .service(user)
        .arg("-au")
        .arg(user)
        .arg("-ap")
        .arg(password)
        .arg("-oocsf")
        .arg(sipp_scenario("ooc_answer.xml").to_str().unwrap_or_default())
        .set("rtp_port", rtp_port)
        .set("stay_ms", stay_ms)
        .timeout_s(stay_ms / 1000 + 30)
        .spawn();
    phone.wait_for_message("the 200 to the REGISTER", Duration::from_secs(10), |m| {
        !m.sent && m.status() == Some(200)
    });
    phone
}

/// `run_sipp("uac_announcement.xml", &["127.0.0.1:5060", "-s", "100"])`: the raw form, for
/// scenarios that need nothing from the builder.
pub fn run_sipp(scenario: &str, args: &[&str]) -> SippResult {
    let mut s = Sipp::uas(scenario);
    for a in args {
        s = s.arg(a);
    }
    s.run()
}

/// A SIPp process that is running.
pub struct SippProcess {
    child: Option<Child>,
    dir: PathBuf,
    scenario: String,
    port: u16,
    timeout: Duration,
    /// The Call-ID of the scenario's first call (UAC scenarios).
    pub call_id: String,
}

impl SippProcess {
    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Waits until SIPp has bound its SIP port (so a UAS is ready before calls are placed):
    /// a UDP socket on it, or (`-t t1`) a TCP socket listening on it. Read from the kernel's
    /// socket tables: a probe that bound the port itself could take it from SIPp for that
    /// moment (SIPp then dies of `EADDRINUSE`), and a probe connection would be a call to it.
    pub fn wait_listening(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if port_in_use(self.port) {
                return;
            }
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    let r = self.collect(Some(st), false);
                    panic!(
                        "SIPp {} exited before listening\n{}",
                        self.scenario,
                        r.report()
                    );
                }
            }
            if Instant::now() >= deadline {
                panic!(
                    "SIPp {} did not bind port {} within 10 s",
                    self.scenario, self.port
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The messages SIPp has logged so far (its message file is written as it goes).
    pub fn messages_so_far(&self) -> Vec<TracedMessage> {
        let log = std::fs::read(self.dir.join("messages.log")).unwrap_or_default();
        parse_sipp_messages(&String::from_utf8_lossy(&log))
    }

    /// Waits until SIPp has logged a message that satisfies `pred` (bounded; polls the file).
    pub fn wait_for_message(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&TracedMessage) -> bool,
    ) -> TracedMessage {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(m) = self.messages_so_far().into_iter().find(|m| pred(m)) {
                return m;
            }
            let finished = self.is_finished();
            if finished || Instant::now() >= deadline {
                let flow: Vec<String> = self
                    .messages_so_far()
                    .iter()
                    .map(|m| format!("{} {}", if m.sent { "->" } else { "<-" }, m.first_line()))
                    .collect();
                panic!(
                    "SIPp {}: {what} did not happen within {timeout:?}{}; flow so far: {}",
                    self.scenario,
                    if finished { " (SIPp exited)" } else { "" },
                    flow.join(" | ")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether it has exited.
    pub fn is_finished(&mut self) -> bool {
        self.child
            .as_mut()
            .is_none_or(|c| matches!(c.try_wait(), Ok(Some(_))))
    }

    /// Waits for SIPp to exit (its own `-timeout` bounds it; we kill it 15 s after that).
    pub fn wait(mut self) -> SippResult {
        let deadline = Instant::now() + self.timeout;
        let mut child = self.child.take().expect("child");
        let (status, timed_out) = loop {
            match child.try_wait() {
                Ok(Some(st)) => break (Some(st), false),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = child.kill();
                    break (child.wait().ok(), true);
                }
            }
        };
        self.collect(status, timed_out)
    }

    fn collect(&self, status: Option<ExitStatus>, timed_out: bool) -> SippResult {
        let read = |f: &str| std::fs::read_to_string(self.dir.join(f)).unwrap_or_default();
        let message_log = String::from_utf8_lossy(
            &std::fs::read(self.dir.join("messages.log")).unwrap_or_default(),
        )
        .into_owned();
        let stdout = read("screen.log");
        SippResult {
            scenario: self.scenario.clone(),
            status,
            timed_out,
            messages: parse_sipp_messages(&message_log),
            stdout,
            error_log: read("errors.log"),
            message_log,
            call_id: self.call_id.clone(),
        }
    }
}

impl Drop for SippProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// G.711 µ-law and WAV (from ITU-T G.711 and the RIFF/WAVE layout; not the product's code)
// ---------------------------------------------------------------------------------------------

/// µ-law code to 16-bit linear PCM (G.711, with the usual <<2 scaling of the 14-bit value).
pub fn ulaw_decode(code: u8) -> i16 {
    let u = !code;
    let sign = u & 0x80;
    let exponent = (u >> 4) & 0x07;
    let mantissa = u & 0x0F;
    let magnitude = ((((mantissa as i32) << 3) + 0x84) << exponent) - 0x84;
    (if sign != 0 { -magnitude } else { magnitude }) as i16
}

/// 16-bit linear PCM to µ-law code.
pub fn ulaw_encode(sample: i16) -> u8 {
    const BIAS: i32 = 0x84;
    const CLIP: i32 = 32635;
    let mut s = sample as i32;
    let sign = if s < 0 {
        s = -s;
        0x80
    } else {
        0
    };
    if s > CLIP {
        s = CLIP;
    }
    s += BIAS;
    let mut exponent = 7;
    let mut mask = 0x4000;
    while exponent > 0 && s & mask == 0 {
        exponent -= 1;
        mask >>= 1;
    }
    let mantissa = (s >> (exponent + 3)) & 0x0F;
    !(sign | (exponent << 4) | mantissa) as u8
}

/// A WAV file's audio as 16-bit PCM, with its sample rate.
pub struct Wav {
    pub rate: u32,
    pub samples: Vec<i16>,
}

impl Wav {
    pub fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.samples.len() as f64 / self.rate as f64)
    }
}

/// Reads a mono WAV file: G.711 µ-law (format 7) or 16-bit PCM (format 1).
pub fn read_wav(path: &Path) -> Wav {
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    assert!(
        b.len() > 12 && &b[0..4] == b"RIFF" && &b[8..12] == b"WAVE",
        "{} is not a RIFF/WAVE file",
        path.display()
    );
    let mut pos = 12;
    let mut format = None;
    while pos + 8 <= b.len() {
        let id = &b[pos..pos + 4];
        let len = u32::from_le_bytes([b[pos + 4], b[pos + 5], b[pos + 6], b[pos + 7]]) as usize;
        let body = &b[pos + 8..(pos + 8 + len).min(b.len())];
        if id == b"fmt " {
            let tag = u16::from_le_bytes([body[0], body[1]]);
            let channels = u16::from_le_bytes([body[2], body[3]]);
            let rate = u32::from_le_bytes([body[4], body[5], body[6], body[7]]);
            let bits = u16::from_le_bytes([body[14], body[15]]);
            assert_eq!(channels, 1, "{}: only mono is handled", path.display());
            format = Some((tag, rate, bits));
        } else if id == b"data" {
            let (tag, rate, bits) = format.expect("fmt chunk before data");
            let samples = match (tag, bits) {
                (7, 8) => body.iter().map(|&c| ulaw_decode(c)).collect(),
                (1, 16) => body
                    .chunks_exact(2)
                    .map(|c| i16::from_le_bytes([c[0], c[1]]))
                    .collect(),
                other => panic!("{}: unhandled WAV format {other:?}", path.display()),
            };
            return Wav { rate, samples };
        }
        pos += 8 + len + (len & 1);
    }
    panic!("{}: no data chunk", path.display());
}

/// Loads a prompt from `prompts/` as PCM.
pub fn prompt(name: &str) -> Wav {
    let w = read_wav(&prompt_path(name));
    assert_eq!(w.rate, 8000, "prompt {name} is not 8 kHz");
    w
}

// ---------------------------------------------------------------------------------------------
// Audio comparison
// ---------------------------------------------------------------------------------------------

fn rms(x: &[i16]) -> f64 {
    if x.is_empty() {
        return 0.0;
    }
    (x.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>() / x.len() as f64).sqrt()
}

/// Whether a frame carries sound (above about -50 dBFS).
pub fn is_audible(frame: &[i16]) -> bool {
    rms(frame) > 100.0
}

fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len().min(b.len());
    if n == 0 {
        return 0.0;
    }
    let ma = a[..n].iter().sum::<f64>() / n as f64;
    let mb = b[..n].iter().sum::<f64>() / n as f64;
    let (mut num, mut da, mut db) = (0.0, 0.0, 0.0);
    for i in 0..n {
        let x = a[i] - ma;
        let y = b[i] - mb;
        num += x * y;
        da += x * x;
        db += y * y;
    }
    if da == 0.0 || db == 0.0 {
        return 0.0;
    }
    num / (da.sqrt() * db.sqrt())
}

/// Finds `template` in `stream`: the sample offset with the highest normalized correlation,
/// and that correlation (1.0 = identical up to gain). None when the stream is shorter.
/// A coarse search on 10 ms energy envelopes, then a sample-exact one around the best spot.
pub fn find_audio(stream: &[i16], template: &[i16]) -> Option<(usize, f64)> {
    const BLOCK: usize = 80;
    if template.len() < BLOCK || stream.len() < template.len() {
        return None;
    }
    let env = |x: &[i16]| -> Vec<f64> { x.chunks(BLOCK).map(rms).collect() };
    let es = env(stream);
    let et = env(&template[..template.len() / BLOCK * BLOCK]);
    let mut candidates: Vec<(usize, f64)> = (0..=es.len().saturating_sub(et.len()))
        .map(|o| (o, pearson(&es[o..o + et.len()], &et)))
        .collect();
    candidates.sort_by(|a, b| b.1.total_cmp(&a.1));
    let n = template.len() as f64;
    let t_mean = template.iter().map(|&v| v as f64).sum::<f64>() / n;
    let t_var: f64 = template
        .iter()
        .map(|&v| (v as f64 - t_mean) * (v as f64 - t_mean))
        .sum();
    let mut best: Option<(usize, f64)> = None;
    for &(block, _) in candidates.iter().take(3) {
        let centre = block * BLOCK;
        let lo = centre.saturating_sub(BLOCK);
        let hi = (centre + BLOCK).min(stream.len() - template.len());
        for off in lo..=hi {
            let s = &stream[off..off + template.len()];
            let s_mean = s.iter().map(|&v| v as f64).sum::<f64>() / n;
            let (mut num, mut s_var) = (0.0, 0.0);
            for (a, b) in s.iter().zip(template) {
                let x = *a as f64 - s_mean;
                num += x * (*b as f64 - t_mean);
                s_var += x * x;
            }
            let c = if s_var == 0.0 || t_var == 0.0 {
                0.0
            } else {
                num / (s_var.sqrt() * t_var.sqrt())
            };
            if best.is_none_or(|(_, b)| c > b) {
                best = Some((off, c));
            }
        }
    }
    best
}

// ---------------------------------------------------------------------------------------------
// RTP peer
// ---------------------------------------------------------------------------------------------

/// One RTP packet as received.
#[derive(Debug, Clone)]
pub struct RtpPacket {
    pub arrival: Instant,
    pub from: SocketAddr,
    pub marker: bool,
    pub pt: u8,
    pub seq: u16,
    pub ts: u32,
    pub ssrc: u32,
    pub payload: Vec<u8>,
}

/// Parses an RTP packet (RFC 3550 §5.1), skipping CSRCs, extension and padding.
pub fn parse_rtp(b: &[u8]) -> Option<(bool, u8, u16, u32, u32, Vec<u8>)> {
    if b.len() < 12 || b[0] >> 6 != 2 {
        return None;
    }
    let padding = b[0] & 0x20 != 0;
    let extension = b[0] & 0x10 != 0;
    let cc = (b[0] & 0x0F) as usize;
    let marker = b[1] & 0x80 != 0;
    let pt = b[1] & 0x7F;
    let seq = u16::from_be_bytes([b[2], b[3]]);
    let ts = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
    let ssrc = u32::from_be_bytes([b[8], b[9], b[10], b[11]]);
    let mut pos = 12 + 4 * cc;
    if extension {
        if b.len() < pos + 4 {
            return None;
        }
        let words = u16::from_be_bytes([b[pos + 2], b[pos + 3]]) as usize;
        pos += 4 + 4 * words;
    }
    let mut end = b.len();
    if padding {
        let p = *b.last()? as usize;
        end = end.checked_sub(p)?;
    }
    if pos > end {
        return None;
    }
    Some((marker, pt, seq, ts, ssrc, b[pos..end].to_vec()))
}

fn rtp_header(marker: bool, pt: u8, seq: u16, ts: u32, ssrc: u32) -> Vec<u8> {
    let mut h = Vec::with_capacity(12 + 160);
    h.push(0x80);
    h.push(if marker { 0x80 } else { 0 } | (pt & 0x7F));
    h.extend_from_slice(&seq.to_be_bytes());
    h.extend_from_slice(&ts.to_be_bytes());
    h.extend_from_slice(&ssrc.to_be_bytes());
    h
}

/// RFC 4733 event codes: 0-9, * = 10, # = 11, A-D = 12-15.
pub fn dtmf_event(d: char) -> u8 {
    match d {
        '0'..='9' => d as u8 - b'0',
        '*' => 10,
        '#' => 11,
        'A'..='D' => 12 + (d as u8 - b'A'),
        other => panic!("not a DTMF digit: {other:?}"),
    }
}

/// DTMF frequency pairs (ITU-T Q.23).
pub fn dtmf_freqs(d: char) -> (f64, f64) {
    let rows = [697.0, 770.0, 852.0, 941.0];
    let cols = [1209.0, 1336.0, 1477.0, 1633.0];
    let (r, c) = match d {
        '1' => (0, 0),
        '2' => (0, 1),
        '3' => (0, 2),
        'A' => (0, 3),
        '4' => (1, 0),
        '5' => (1, 1),
        '6' => (1, 2),
        'B' => (1, 3),
        '7' => (2, 0),
        '8' => (2, 1),
        '9' => (2, 2),
        'C' => (2, 3),
        '*' => (3, 0),
        '0' => (3, 1),
        '#' => (3, 2),
        'D' => (3, 3),
        other => panic!("not a DTMF digit: {other:?}"),
    };
    (rows[r], cols[c])
}

#[derive(Default)]
struct RtpState {
    packets: Vec<RtpPacket>,
    remote: Option<SocketAddr>,
    invalid: usize,
}

struct TxState {
    seq: u16,
    ts: u32,
    ssrc: u32,
    next_send: Option<Instant>,
}

/// The media end of a test caller or callee: a UDP socket whose port goes into the SDP.
/// It records every RTP packet with its arrival time, learns the peer's RTP address from the
/// first packet, and sends RFC 4733 events, in-band DTMF or silence back to it.
pub struct RtpPeer {
    socket: Arc<UdpSocket>,
    state: Arc<(Mutex<RtpState>, Condvar)>,
    tx: Mutex<TxState>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl RtpPeer {
    pub fn new() -> RtpPeer {
        let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").expect("bind RTP socket"));
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("set read timeout");
        let state: Arc<(Mutex<RtpState>, Condvar)> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (socket, state, stop) = (socket.clone(), state.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((n, from)) = socket.recv_from(&mut buf) else {
                        continue;
                    };
                    let arrival = Instant::now();
                    let (m, cv) = &*state;
                    let mut g = m.lock().unwrap();
                    match parse_rtp(&buf[..n]) {
                        Some((marker, pt, seq, ts, ssrc, payload)) => {
                            if g.remote.is_none() {
                                g.remote = Some(from);
                            }
                            g.packets.push(RtpPacket {
                                arrival,
                                from,
                                marker,
                                pt,
                                seq,
                                ts,
                                ssrc,
                                payload,
                            });
                        }
                        None => g.invalid += 1,
                    }
                    cv.notify_all();
                }
            })
        };
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(7);
        RtpPeer {
            socket,
            state,
            tx: Mutex::new(TxState {
                seq: (seed & 0x7FFF) as u16,
                ts: seed.wrapping_mul(2654435761),
                ssrc: seed ^ 0x5EED_0001,
                next_send: None,
            }),
            stop,
            thread: Some(thread),
        }
    }

    pub fn port(&self) -> u16 {
        self.socket.local_addr().expect("local addr").port()
    }

    /// Copies of every packet received so far.
    pub fn packets(&self) -> Vec<RtpPacket> {
        self.state.0.lock().unwrap().packets.clone()
    }

    /// What it received (PCMU audio) between two instants, decoded.
    pub fn heard(&self, from: Instant, to: Instant) -> Vec<i16> {
        let packets: Vec<RtpPacket> = self
            .packets()
            .into_iter()
            .filter(|p| p.arrival >= from && p.arrival <= to && p.pt == 0)
            .collect();
        pcm_of(&packets)
    }

    pub fn packet_count(&self) -> usize {
        self.state.0.lock().unwrap().packets.len()
    }

    /// Datagrams that were not RTP.
    pub fn invalid_count(&self) -> usize {
        self.state.0.lock().unwrap().invalid
    }

    /// Where the peer's RTP comes from (learned from the first packet).
    pub fn remote(&self) -> Option<SocketAddr> {
        self.state.0.lock().unwrap().remote
    }

    /// Waits until at least `n` packets have arrived.
    pub fn wait_for_packets(&self, n: usize, timeout: Duration) -> Result<(), String> {
        self.wait_until(timeout, |s| s.packets.len() >= n)
            .map_err(|_| {
                format!(
                    "expected at least {n} RTP packets on port {} within {timeout:?}, got {}",
                    self.port(),
                    self.packet_count()
                )
            })
    }

    fn wait_until(&self, timeout: Duration, pred: impl Fn(&RtpState) -> bool) -> Result<(), ()> {
        let deadline = Instant::now() + timeout;
        let (m, cv) = &*self.state;
        let mut g = m.lock().unwrap();
        loop {
            if pred(&g) {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(());
            }
            g = cv.wait_timeout(g, deadline - now).unwrap().0;
        }
    }

    /// Waits until `template` has been heard in full in the audio received from packet index
    /// `from_packet` on (checked as packets arrive). Returns (offset in that audio, correlation).
    /// `packet_index_after` turns the result into the index of the first packet after it.
    pub fn wait_for_audio(
        &self,
        template: &[i16],
        from_packet: usize,
        min_correlation: f64,
        timeout: Duration,
    ) -> Result<(usize, f64), String> {
        let deadline = Instant::now() + timeout;
        let mut checked_len = 0;
        let mut best = None;
        loop {
            let pkts = self.packets();
            if pkts.len() > checked_len {
                checked_len = pkts.len();
                let audio = pcm_of(&pkts[from_packet.min(pkts.len())..]);
                if let Some((off, c)) = find_audio(&audio, template) {
                    if c >= min_correlation {
                        return Ok((off, c));
                    }
                    best = Some(c);
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(format!(
                    "the expected audio ({} samples) was not heard within {timeout:?} \
                     (best correlation {best:?}, {} packets received)",
                    template.len(),
                    checked_len
                ));
            }
            // Searching is costly in a debug build: look again every 200 ms at most.
            std::thread::sleep((deadline - now).min(Duration::from_millis(200)));
        }
    }

    /// Sets where to send media before anything was received (from the peer's SDP).
    pub fn set_remote(&self, addr: SocketAddr) {
        self.state.0.lock().unwrap().remote = Some(addr);
    }

    /// Sends PCM as PCMU frames (PT 0) in real time, 20 ms per packet.
    pub fn send_pcm(&self, samples: &[i16]) {
        let to = self.target();
        for (i, frame) in samples.chunks(160).enumerate() {
            let mut payload: Vec<u8> = frame.iter().map(|&v| ulaw_encode(v)).collect();
            payload.resize(160, 0xFF);
            let ts = self.tx.lock().unwrap().ts;
            self.send_raw(to, i == 0, 0, ts, &payload);
            let mut tx = self.tx.lock().unwrap();
            tx.ts = tx.ts.wrapping_add(160);
        }
    }

    fn send_raw(&self, to: SocketAddr, marker: bool, pt: u8, ts: u32, payload: &[u8]) {
        let mut tx = self.tx.lock().unwrap();
        // Real time: one packet every 20 ms, as a phone would send them.
        if let Some(t) = tx.next_send {
            let now = Instant::now();
            if t > now {
                std::thread::sleep(t - now);
            }
        }
        let mut pkt = rtp_header(marker, pt, tx.seq, ts, tx.ssrc);
        pkt.extend_from_slice(payload);
        self.socket.send_to(&pkt, to).expect("send RTP");
        tx.seq = tx.seq.wrapping_add(1);
        tx.next_send = Some(Instant::now() + Duration::from_millis(20));
    }

    fn target(&self) -> SocketAddr {
        self.remote().expect(
            "the peer's RTP address is learned from its first packet: wait_for_packets(1) first",
        )
    }

    /// Sends `frames` 20 ms frames of µ-law silence (PT 0).
    pub fn send_silence(&self, frames: usize) {
        let to = self.target();
        for _ in 0..frames {
            let ts = self.tx.lock().unwrap().ts;
            self.send_raw(to, false, 0, ts, &[0xFF; 160]);
            let mut tx = self.tx.lock().unwrap();
            tx.ts = tx.ts.wrapping_add(160);
        }
    }

    /// Sends each digit as an RFC 4733 telephone-event with payload type `pt`: `tone_frames`
    /// packets with growing duration (the first with the marker bit), then three end packets,
    /// then 100 ms of silence before the next digit.
    pub fn send_rfc4733(&self, digits: &str, pt: u8, tone_frames: u16) {
        let to = self.target();
        for d in digits.chars() {
            let event = dtmf_event(d);
            let start_ts = self.tx.lock().unwrap().ts;
            let volume = 10u8; // -10 dBm0
            for i in 1..=tone_frames {
                let duration = i * 160;
                let mut p = vec![event, volume & 0x3F];
                p.extend_from_slice(&duration.to_be_bytes());
                self.send_raw(to, i == 1, pt, start_ts, &p);
            }
            let duration = tone_frames * 160;
            for _ in 0..3 {
                let mut p = vec![event, 0x80 | (volume & 0x3F)];
                p.extend_from_slice(&duration.to_be_bytes());
                self.send_raw(to, false, pt, start_ts, &p);
            }
            {
                let mut tx = self.tx.lock().unwrap();
                tx.ts = tx.ts.wrapping_add(duration as u32);
            }
            self.send_silence(5);
        }
    }

    /// Sends each digit as in-band DTMF (PCMU, PT 0): `tone_frames` 20 ms frames of the two
    /// Q.23 frequencies at about -9 dBm0 each, then 100 ms of silence.
    pub fn send_inband(&self, digits: &str, tone_frames: usize) {
        let to = self.target();
        let mut n: u64 = 0;
        for d in digits.chars() {
            let (f1, f2) = dtmf_freqs(d);
            for _ in 0..tone_frames {
                let payload: Vec<u8> = (0..160)
                    .map(|_| {
                        let t = n as f64 / 8000.0;
                        n += 1;
                        let v = 7000.0 * (2.0 * std::f64::consts::PI * f1 * t).sin()
                            + 7000.0 * (2.0 * std::f64::consts::PI * f2 * t).sin();
                        ulaw_encode(v as i16)
                    })
                    .collect();
                let ts = self.tx.lock().unwrap().ts;
                self.send_raw(to, false, 0, ts, &payload);
                let mut tx = self.tx.lock().unwrap();
                tx.ts = tx.ts.wrapping_add(160);
            }
            self.send_silence(5);
        }
    }
}

/// The index of the first packet after a match found with `wait_for_audio(template, from, ..)`
/// at `offset` (all packets PCMU, 160 samples each).
pub fn packet_index_after(from_packet: usize, offset: usize, template_len: usize) -> usize {
    from_packet + (offset + template_len).div_ceil(160)
}

impl Default for RtpPeer {
    fn default() -> Self {
        RtpPeer::new()
    }
}

impl Drop for RtpPeer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The PCMU (PT 0) audio of these packets, decoded, in arrival order.
pub fn pcm_of(packets: &[RtpPacket]) -> Vec<i16> {
    packets
        .iter()
        .filter(|p| p.pt == 0)
        .flat_map(|p| p.payload.iter().map(|&c| ulaw_decode(c)))
        .collect()
}

/// `secs` of a sine at `freq` Hz and `amplitude`, 8 kHz.
pub fn sine(freq: f64, secs: f64, amplitude: f64) -> Vec<i16> {
    (0..(secs * 8000.0) as usize)
        .map(|n| (amplitude * (2.0 * std::f64::consts::PI * freq * n as f64 / 8000.0).sin()) as i16)
        .collect()
}

/// The amplitude of the `freq` component of 8 kHz `pcm` (Goertzel); 0 for no samples.
pub fn tone_amplitude(pcm: &[i16], freq: f64) -> f64 {
    if pcm.is_empty() {
        return 0.0;
    }
    let w = 2.0 * std::f64::consts::PI * freq / 8000.0;
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &x in pcm {
        let s0 = x as f64 + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    2.0 * (s1 * s1 + s2 * s2 - coeff * s1 * s2).max(0.0).sqrt() / pcm.len() as f64
}

/// A 16-bit PCM WAV file of `samples` (interleaved when `channels` > 1).
pub fn pcm16_wav(rate: u32, channels: u16, samples: &[i16]) -> Vec<u8> {
    let data_len = (samples.len() * 2) as u32;
    let block = 2 * u32::from(channels);
    let mut v = Vec::with_capacity(44 + data_len as usize);
    v.extend_from_slice(b"RIFF");
    v.extend_from_slice(&(36 + data_len).to_le_bytes());
    v.extend_from_slice(b"WAVEfmt ");
    v.extend_from_slice(&16u32.to_le_bytes());
    v.extend_from_slice(&1u16.to_le_bytes()); // PCM
    v.extend_from_slice(&channels.to_le_bytes());
    v.extend_from_slice(&rate.to_le_bytes());
    v.extend_from_slice(&(rate * block).to_le_bytes());
    v.extend_from_slice(&(block as u16).to_le_bytes());
    v.extend_from_slice(&16u16.to_le_bytes());
    v.extend_from_slice(b"data");
    v.extend_from_slice(&data_len.to_le_bytes());
    for s in samples {
        v.extend_from_slice(&s.to_le_bytes());
    }
    v
}

/// Median of the gaps between consecutive arrivals.
pub fn median_interarrival(packets: &[RtpPacket]) -> Option<Duration> {
    let mut gaps: Vec<Duration> = packets
        .windows(2)
        .map(|w| w[1].arrival.saturating_duration_since(w[0].arrival))
        .collect();
    if gaps.is_empty() {
        return None;
    }
    gaps.sort();
    Some(gaps[gaps.len() / 2])
}

/// Index of the first packet that arrived at or after `t`.
pub fn first_packet_after(packets: &[RtpPacket], t: Instant) -> usize {
    packets
        .iter()
        .position(|p| p.arrival >= t)
        .unwrap_or(packets.len())
}

/// Calls `number` with `uac_expect_status.xml` (the server must refuse it) and returns the final
/// status and the seconds from our INVITE to it.
pub fn call_refused(server: &Server, number: &str) -> (u16, f64) {
    let rtp = RtpPeer::new();
    let caller = Sipp::uac("uac_expect_status.xml", server.sip_addr())
        .service(number)
        .set("rtp_port", rtp.port())
        .run();
    caller.assert_success(&server.log_tail());
    let invite = caller
        .sent()
        .find(|m| m.method() == Some("INVITE"))
        .and_then(|m| m.time)
        .expect("INVITE sent");
    let finals = caller.final_responses("INVITE");
    let last = finals.first().expect("a final response");
    let status = last.status().expect("a status line");
    (status, last.time.expect("timestamp") - invite)
}

// ---------------------------------------------------------------------------------------------
// Provisioning helpers
// ---------------------------------------------------------------------------------------------

/// Tenant `t1` with the standard prompts as announcements (`welcome`, `enter-digits`,
/// `invalid`, `goodbye`, `you-entered`).
pub fn tenant_with_prompts() -> String {
    let mut s = String::from("[[tenants]]\nname = \"t1\"\ncustomerNumber = 200002\n\n");
    for p in [
        "welcome",
        "enter-digits",
        "invalid",
        "goodbye",
        "you-entered",
    ] {
        let _ = write!(
            s,
            "[[announcements]]\ntenant = \"t1\"\nname = \"{p}\"\nfile = {}\n\n",
            toml_str(&prompt_path(p))
        );
    }
    s
}

/// Plan blocks (for `number_with_plan`): the welcome announcement, then a normal hangup.
pub const WELCOME_THEN_CLEARING: &str = r##"  { blockType = "ANNOUNCEMENT", announcementName = "welcome" },
  { blockType = "HANGUP", hangupCause = "NORMAL_CLEARING" },"##;

/// A `[[numbers]]` + `[[routingPlans]]` pair: number → plan with these blocks (TOML inline).
pub fn number_with_plan(number: &str, plan: &str, blocks: &str) -> String {
    format!(
        "[[numbers]]\nnumber = \"{number}\"\ntenant = \"t1\"\nroutingPlan = \"{plan}\"\n\n\
         [[routingPlans]]\ntenant = \"t1\"\nname = \"{plan}\"\nblocks = [\n{blocks}\n]\n\n"
    )
}

/// A UDP trunk of tenant t1 pointing at a local port.
pub fn trunk(name: &str, port: u16) -> String {
    format!(
        "[[trunks]]\ntenant = \"t1\"\nname = \"{name}\"\nhost = \"127.0.0.1\"\nport = {port}\ntransport = \"udp\"\n\n"
    )
}

/// Plan blocks (TOML) that connect the caller to trunk `trunk` (15 s ring), then end the call
/// with `cause` if that fails.
pub fn bridge_to_trunk(trunk: &str, cause: &str) -> String {
    format!(
        "  {{ blockType = \"BRIDGE\", bridgeMode = \"SEQUENTIAL\", destinations = [ {{ destinationType = \"SIP_TRUNK\", destination = \"{trunk}\", timeout = 15 }} ] }},\n  {{ blockType = \"HANGUP\", hangupCause = \"{cause}\" }},"
    )
}

/// A SIPp callee (`uas_reinvited.xml`: it answers the server's re-INVITEs and its BYE) that
/// answers after `answer_delay_ms`, listening, with the RTP peer its SDP names.
pub fn reinvited_callee(answer_delay_ms: u32) -> (SippProcess, RtpPeer) {
    let rtp = RtpPeer::new();
    let mut sipp = Sipp::uas("uas_reinvited.xml")
        .set("rtp_port", rtp.port())
        .set("answer_delay_ms", answer_delay_ms)
        .timeout_s(90)
        .spawn();
    sipp.wait_listening();
    (sipp, rtp)
}

/// A SIPp caller (`uac_reinvited.xml`) calling `number` on the server, with its RTP peer.
pub fn reinvited_caller(server: &Server, number: &str) -> (SippProcess, RtpPeer) {
    let rtp = RtpPeer::new();
    let sipp = Sipp::uac("uac_reinvited.xml", server.sip_addr())
        .service(number)
        .set("rtp_port", rtp.port())
        .timeout_s(90)
        .spawn();
    (sipp, rtp)
}

/// Waits for the 200 OK to `caller`'s INVITE and points its RTP peer at the SDP in it.
pub fn wait_answered(caller: &mut SippProcess, rtp: &RtpPeer) -> TracedMessage {
    let ok = caller.wait_for_message("the 200 OK to the caller", Duration::from_secs(15), |m| {
        !m.sent && m.status() == Some(200) && m.cseq_method().as_deref() == Some("INVITE")
    });
    rtp.set_remote(sdp_audio_addr(ok.body()).expect("SDP in the 200 OK"));
    ok
}

/// Lets connected parties talk for 2.5 s, then gives the window in which to judge what they
/// heard (the first half second left out, while the relay settles).
pub fn talk_window() -> (Instant, Instant) {
    let connected = Instant::now();
    std::thread::sleep(Duration::from_millis(2500));
    (
        connected + Duration::from_millis(500),
        connected + Duration::from_millis(2400),
    )
}

/// `GET /v1/calls/{id}` with `key`, as JSON.
pub fn call_json(server: &Server, key: &str, id: &str) -> serde_json::Value {
    http::json(
        server.http_port(),
        "GET",
        &format!("/v1/calls/{id}"),
        Some(key),
        None,
    )
    .json()
}

/// Waits until call `id` is connected to a callee (`bridgedTo` set in its `GET`), for at most
/// `within`.
pub fn wait_bridged(server: &Server, key: &str, id: &str, within: Duration) {
    let deadline = Instant::now() + within;
    while call_json(server, key, id)["bridgedTo"].is_null() {
        assert!(
            Instant::now() < deadline,
            "call {id} never connected\n{}",
            server.log_tail()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits for the INVITE at `callee` (and its 200 OK to it) and points its RTP peer at the SDP
/// in the INVITE.
pub fn wait_invited(callee: &mut SippProcess, rtp: &RtpPeer) -> TracedMessage {
    let invite =
        callee.wait_for_message("the INVITE to the callee", Duration::from_secs(10), |m| {
            !m.sent && m.method() == Some("INVITE")
        });
    rtp.set_remote(sdp_audio_addr(invite.body()).expect("SDP in the INVITE"));
    callee.wait_for_message("the callee's 200 OK", Duration::from_secs(10), |m| {
        m.sent && m.status() == Some(200)
    });
    invite
}

/// `callplane plan validate` on `blocks` (written to a scratch file): whether it passed, and
/// what it printed (stdout and stderr).
pub fn plan_validate(blocks: &serde_json::Value) -> (bool, String) {
    let dir = temp_dir("plan-validate");
    let file = dir.join("plan.json");
    std::fs::write(&file, blocks.to_string()).unwrap_or_default();
    let out = Command::new(env!("CARGO_BIN_EXE_callplane"))
        .args(["plan", "validate"])
        .arg(&file)
        .output()
        .expect("run callplane plan validate");
    let _ = std::fs::remove_dir_all(&dir);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// espeak-ng's rendering of `text` with `voice`, resampled to 8 kHz mono by sox: what a
/// caller "says" in the speech tests, and the reference SAY's audio is compared with.
pub fn espeak_8k(voice: &str, text: &str) -> Vec<i16> {
    let dir = temp_dir("espeak");
    let raw = dir.join("raw.wav");
    let out = dir.join("8k.wav");
    let ok = Command::new("espeak-ng")
        .args(["-v", voice, "-w"])
        .arg(&raw)
        .arg(text)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "espeak-ng renders {text:?} with {voice}");
    let ok = Command::new("sox")
        .arg(&raw)
        .args(["-r", "8000", "-c", "1", "-b", "16"])
        .arg(&out)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "sox resamples {text:?} to 8 kHz");
    let samples = read_wav(&out).samples;
    let _ = std::fs::remove_dir_all(&dir);
    samples
}

/// A SIPp caller (`uac_announcement.xml`) of `number` with its RTP peer, once the first
/// packet of the call's audio has arrived.
fn caller_hearing_media(server: &Server, number: &str) -> (RtpPeer, SippProcess) {
    let rtp = RtpPeer::new();
    let caller = Sipp::uac("uac_announcement.xml", server.sip_addr())
        .service(number)
        .set("rtp_port", rtp.port())
        .spawn();
    rtp.wait_for_packets(1, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("media: {e}\n{}", server.log_tail()));
    (rtp, caller)
}

/// Calls `number`, stays silent while its prompt ("enter-digits") plays, says `pcm`, and waits
/// for the call to end; its CDR.
pub fn say_after_prompt(server: &Server, number: &str, pcm: &[i16]) -> Cdr {
    let (rtp, caller) = caller_hearing_media(server, number);
    // Silence while the prompt plays (listening starts after it), then the words.
    let prompt_len = prompt("enter-digits").duration();
    rtp.send_silence((prompt_len.as_millis() / 20) as usize + 15);
    rtp.send_pcm(pcm);
    rtp.send_silence(60);
    let caller = caller.wait();
    caller.assert_success(&server.log_tail());
    server.cdr_for_call_id(&caller.call_id)
}

/// Calls `number` (a COLLECT_SPEECH plan asking with "enter-digits", "invalid" for missing
/// input, `answer` as its variable) and says nothing: checks that the missing-input prompt was
/// played and the answer left empty; the CDR.
pub fn silent_caller(server: &Server, number: &str) -> Cdr {
    let started = Instant::now();
    let (rtp, caller) = caller_hearing_media(server, number);
    let caller = caller.wait();
    caller.assert_success(&server.log_tail());
    let heard = rtp.heard(started, Instant::now());
    let (_, missing) = find_audio(&heard, &prompt("invalid").samples).unwrap_or_default();
    assert!(
        missing > 0.9,
        "the missing-input prompt is played ({missing:.2})"
    );
    let cdr = server.cdr_for_call_id(&caller.call_id);
    assert_eq!(
        cdr.variables.get("answer").map(String::as_str),
        Some(""),
        "{}",
        cdr_text(&cdr)
    );
    cdr
}

/// Whether a local UDP socket is bound to `port`, or a TCP socket listens on it
/// (`/proc/net/{udp,udp6,tcp,tcp6}`: `local_address` is `ADDR:PORT` in hex, `st` 0A is LISTEN).
pub fn port_in_use(port: u16) -> bool {
    let wanted = format!("{port:04X}");
    [
        ("/proc/net/udp", false),
        ("/proc/net/udp6", false),
        ("/proc/net/tcp", true),
        ("/proc/net/tcp6", true),
    ]
    .iter()
    .any(|(table, listening_only)| {
        std::fs::read_to_string(table).is_ok_and(|text| {
            text.lines().skip(1).any(|line| {
                let mut fields = line.split_whitespace();
                let local = fields.nth(1).unwrap_or("");
                let state = fields.nth(1).unwrap_or("");
                local.rsplit(':').next() == Some(wanted.as_str())
                    && (!listening_only || state == "0A")
            })
        })
    })
}
