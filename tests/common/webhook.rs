//! A customer web server for the tests: a real HTTP/1.1 server on a loopback port (keep-alive,
//! one thread per connection) that records every request it receives and answers each with
//! what the test's handler says — JSON, plain text, an error status, or never (it hangs).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// One request as received.
#[derive(Debug, Clone)]
pub struct HookRequest {
    pub method: String,
    pub path: String,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub at: Instant,
}

impl HookRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON (panics with the body when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("request body is not JSON ({e}): {}", self.text()))
    }

    /// The body as `application/x-www-form-urlencoded` fields.
    pub fn form(&self) -> BTreeMap<String, String> {
        self.text()
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (url_decode(k), url_decode(v))
            })
            .collect()
    }
}

/// Decodes `+` and `%XX` of a form field.
pub fn url_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What the server answers.
#[derive(Debug, Clone)]
pub enum HookReply {
    /// 200 with this JSON.
    Json(serde_json::Value),
    /// This status, content type and body.
    Raw(u16, &'static str, String),
    /// This status, content type and binary body (audio).
    Bytes(u16, &'static str, Vec<u8>),
    /// Never answer; keep the connection open until the client gives up.
    Hang,
}

impl HookReply {
    pub fn text(body: &str) -> HookReply {
        HookReply::Raw(200, "text/plain", body.to_string())
    }
}

type Handler = dyn Fn(&HookRequest) -> HookReply + Send + Sync;

struct Shared {
    requests: Mutex<Vec<HookRequest>>,
    arrived: Condvar,
    handler: Box<Handler>,
    stop: AtomicBool,
}

pub struct WebhookServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl WebhookServer {
    /// Starts the server; `handler` decides each answer (it sees the request already recorded,
    /// so `server.requests()` inside it would include it).
    pub fn start(handler: impl Fn(&HookRequest) -> HookReply + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind webhook server");
        let addr = listener.local_addr().expect("webhook addr");
        let shared = Arc::new(Shared {
            requests: Mutex::new(Vec::new()),
            arrived: Condvar::new(),
            handler: Box::new(handler),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.stop.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let s = s.clone();
                std::thread::spawn(move || serve_connection(conn, &s));
            }
        });
        WebhookServer { addr, shared }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn requests(&self) -> Vec<HookRequest> {
        self.shared.requests.lock().expect("lock").clone()
    }

    pub fn requests_to(&self, path: &str) -> Vec<HookRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }

    /// Waits until at least `n` requests went to `path`; fails saying what arrived.
    pub fn wait_for(&self, path: &str, n: usize, timeout: Duration) -> Vec<HookRequest> {
        let deadline = Instant::now() + timeout;
        let mut reqs = self.shared.requests.lock().expect("lock");
        loop {
            let matching: Vec<HookRequest> =
                reqs.iter().filter(|r| r.path == path).cloned().collect();
            if matching.len() >= n {
                return matching;
            }
            let now = Instant::now();
            if now >= deadline {
                let seen: Vec<String> = reqs
                    .iter()
                    .map(|r| format!("{} {}: {}", r.method, r.path, r.text()))
                    .collect();
                panic!(
                    "expected {n} request(s) to {path} within {timeout:?}, got {}; all requests:\n{}",
                    matching.len(),
                    seen.join("\n")
                );
            }
            reqs = self
                .shared
                .arrived
                .wait_timeout(reqs, deadline - now)
                .expect("lock")
                .0;
        }
    }
}

impl Drop for WebhookServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

fn serve_connection(conn: TcpStream, s: &Shared) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(120)));
    let mut writer = match conn.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    let mut reader = BufReader::new(conn);
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let line = line.trim_end();
        if line.is_empty() {
            continue;
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let path = parts.next().unwrap_or("").to_string();
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            match reader.read_line(&mut h) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let len = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.parse::<usize>().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let req = HookRequest {
            method,
            path,
            headers,
            body,
            at: Instant::now(),
        };
        s.requests.lock().expect("lock").push(req.clone());
        s.arrived.notify_all();
        let (status, ctype, body) = match (s.handler)(&req) {
            HookReply::Json(v) => (200, "application/json", v.to_string().into_bytes()),
            HookReply::Raw(status, ctype, body) => (status, ctype, body.into_bytes()),
            HookReply::Bytes(status, ctype, body) => (status, ctype, body),
            HookReply::Hang => {
                // Hold the connection without a word until the client closes it.
                let mut sink = [0u8; 512];
                while let Ok(n) = reader.read(&mut sink) {
                    if n == 0 {
                        break;
                    }
                }
                return;
            }
        };
        let mut resp = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        resp.extend_from_slice(&body);
        if writer.write_all(&resp).is_err() {
            return;
        }
    }
}

/// Hex HMAC-SHA256, to check `X-Callplane-Signature`.
pub fn hmac_sha256_hex(key: &[u8], data: &[u8]) -> String {
    use hmac::{KeyInit, Mac};
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("any key length");
    mac.update(data);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
