//! Accepting stream connections under limits, for every TCP listener we run (SIP/TCP and HTTP):
//! caps on open connections in total and per source address (the excess is closed at once),
//! and accept errors (EMFILE under a flood) paced with a backoff and logged once per interval
//! with a count instead of spinning. The counting and pacing are sans-IO types; `Listener`
//! is the thin tokio part around them.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// How many connections a listener keeps open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    pub max_total: usize,
    pub max_per_source: usize,
}

/// Why a new connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Total,
    PerSource,
}

/// One admitted connection, named in admission order.
pub type ConnId = u64;

/// A connection admitted; `evict` names one that must be closed to make room for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    pub id: ConnId,
    pub evict: Option<ConnId>,
}

#[derive(Debug)]
struct Entry {
    ip: IpAddr,
    /// Has not yet delivered a complete first message (SIP) or request head (HTTP).
    pending: bool,
}

/// Open connections of one listener, in total and per source address.
///
/// When the table is full, a newcomer may take the place of the oldest *pending* connection
/// (one that has not sent anything useful yet) of the source holding the most connections,
/// provided that source holds more than the newcomer's would after admission. So a single
/// address (or a few) filling the listener with idle connections cannot lock out a client
/// from elsewhere, which sends its request at once; a connection that has delivered a
/// message is never evicted.
#[derive(Debug)]
pub struct ConnectionTable {
    limits: ConnectionLimits,
    next_id: ConnId,
    /// By id, which is admission order: the first pending entry found is the oldest.
    entries: BTreeMap<ConnId, Entry>,
    per_source: HashMap<IpAddr, usize>,
}

impl ConnectionTable {
    pub fn new(limits: ConnectionLimits) -> Self {
        ConnectionTable {
            limits,
            next_id: 0,
            entries: BTreeMap::new(),
            per_source: HashMap::new(),
        }
    }

    pub fn admit(&mut self, ip: IpAddr) -> Result<Admission, Refusal> {
        let have = self.per_source.get(&ip).copied().unwrap_or(0);
        if have >= self.limits.max_per_source {
            return Err(Refusal::PerSource);
        }
        let mut evict = None;
        if self.entries.len() >= self.limits.max_total {
            let mut best: Option<(ConnId, usize)> = None;
            for (id, e) in &self.entries {
                if !e.pending {
                    continue;
                }
                let n = self.per_source.get(&e.ip).copied().unwrap_or(0);
                if n > have + 1 && best.is_none_or(|(_, b)| n > b) {
                    best = Some((*id, n));
                }
            }
            let Some((victim, _)) = best else {
                return Err(Refusal::Total);
            };
            self.release(victim);
            evict = Some(victim);
        }
        let id = self.next_id;
        self.next_id += 1;
        self.entries.insert(id, Entry { ip, pending: true });
        *self.per_source.entry(ip).or_insert(0) += 1;
        Ok(Admission { id, evict })
    }

    /// The connection has delivered a message: it is no longer a candidate for eviction.
    pub fn activate(&mut self, id: ConnId) {
        if let Some(e) = self.entries.get_mut(&id) {
            e.pending = false;
        }
    }

    /// Frees the connection's place (a no-op for one already evicted).
    pub fn release(&mut self, id: ConnId) {
        let Some(e) = self.entries.remove(&id) else {
            return;
        };
        if let Some(n) = self.per_source.get_mut(&e.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_source.remove(&e.ip);
            }
        }
    }

    pub fn open(&self) -> usize {
        self.entries.len()
    }
}

/// Paces a listener through a run of failures (accept errors, refused connections): the
/// delay before the next accept doubles from `MIN_BACKOFF` to `MAX_BACKOFF` while accept
/// errors go on, and each kind of event is reported at most once per `interval`, with how
/// many happened since the last report.
#[derive(Debug)]
pub struct EventPacer {
    interval: Duration,
    backoff: Duration,
    last_report: Option<Instant>,
    unreported: u64,
}

pub const MIN_BACKOFF: Duration = Duration::from_millis(5);
pub const MAX_BACKOFF: Duration = Duration::from_secs(1);

impl EventPacer {
    pub fn new(interval: Duration) -> Self {
        EventPacer {
            interval,
            backoff: Duration::ZERO,
            last_report: None,
            unreported: 0,
        }
    }

    /// Records one event; returns the count to report now, if a report is due.
    pub fn record(&mut self, now: Instant) -> Option<u64> {
        self.unreported += 1;
        let due = self
            .last_report
            .is_none_or(|t| now.duration_since(t) >= self.interval);
        if due {
            self.last_report = Some(now);
            let n = self.unreported;
            self.unreported = 0;
            Some(n)
        } else {
            None
        }
    }

    /// The wait before the next accept after an accept error.
    pub fn next_backoff(&mut self) -> Duration {
        self.backoff = (self.backoff * 2).clamp(MIN_BACKOFF, MAX_BACKOFF);
        self.backoff
    }

    pub fn reset_backoff(&mut self) {
        self.backoff = Duration::ZERO;
    }
}

/// A listener's table and, for each admitted connection, the token that closes it if evicted.
#[derive(Debug)]
struct Shared {
    table: ConnectionTable,
    evictors: HashMap<ConnId, CancellationToken>,
}

/// Holds one admitted connection's place in its listener's table until dropped.
#[derive(Debug)]
pub struct Permit {
    shared: Arc<Mutex<Shared>>,
    id: ConnId,
    evicted: CancellationToken,
}

impl Permit {
    /// The connection delivered its first message: it keeps its place from now on.
    pub fn activate(&self) {
        if let Ok(mut s) = self.shared.lock() {
            s.table.activate(self.id);
            s.evictors.remove(&self.id);
        }
    }

    /// Resolves when the connection was evicted to make room for another: close it.
    pub async fn evicted(&self) {
        self.evicted.cancelled().await
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Ok(mut s) = self.shared.lock() {
            s.table.release(self.id);
            s.evictors.remove(&self.id);
        }
    }
}

/// The accept queue asked of the kernel.
pub const LISTEN_BACKLOG: u32 = 4096;

/// A bound TCP listener that hands out only connections within its limits.
pub struct Listener {
    name: &'static str,
    tcp: TcpListener,
    shared: Arc<Mutex<Shared>>,
    errors: EventPacer,
    refused: EventPacer,
    evictions: EventPacer,
}

impl Listener {
    /// Binds now (so that an address in use is a start error, not a warning later).
    pub fn bind(
        name: &'static str,
        addr: SocketAddr,
        limits: ConnectionLimits,
    ) -> std::io::Result<Listener> {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        // A deep accept queue (the kernel caps it at net.core.somaxconn): a burst of connects
        // waits for the accept loop instead of having SYNs dropped and retried a second later.
        let tcp = socket.listen(LISTEN_BACKLOG)?;
        Ok(Listener {
            name,
            tcp,
            shared: Arc::new(Mutex::new(Shared {
                table: ConnectionTable::new(limits),
                evictors: HashMap::new(),
            })),
            errors: EventPacer::new(Duration::from_secs(10)),
            refused: EventPacer::new(Duration::from_secs(10)),
            evictions: EventPacer::new(Duration::from_secs(10)),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        self.shared.lock().map(|s| s.table.open()).unwrap_or(0)
    }

    /// A handle to read the open-connection count after the listener moved into its task.
    pub fn counter(&self) -> ConnectionCounter {
        ConnectionCounter(self.shared.clone())
    }

    fn admit(&self, ip: IpAddr) -> Result<(Permit, Option<ConnId>), Refusal> {
        let mut s = self.shared.lock().map_err(|_| Refusal::Total)?;
        let a = s.table.admit(ip)?;
        if let Some(victim) = a.evict {
            if let Some(t) = s.evictors.remove(&victim) {
                t.cancel();
            }
        }
        let evicted = CancellationToken::new();
        s.evictors.insert(a.id, evicted.clone());
        Ok((
            Permit {
                shared: self.shared.clone(),
                id: a.id,
                evicted,
            },
            a.evict,
        ))
    }

    /// The next connection within the limits. Over-limit connections are closed at once;
    /// accept errors wait out a growing backoff.
    pub async fn accept(&mut self) -> (TcpStream, SocketAddr, Permit) {
        loop {
            match self.tcp.accept().await {
                Ok((stream, peer)) => {
                    self.errors.reset_backoff();
                    match self.admit(peer.ip()) {
                        Ok((permit, evicted)) => {
                            if evicted.is_some() {
                                if let Some(n) = self.evictions.record(Instant::now()) {
                                    warn!(
                                        listener = self.name,
                                        evicted = n,
                                        "listener full: idle connections closed to make room"
                                    );
                                }
                            }
                            return (stream, peer, permit);
                        }
                        Err(why) => {
                            // Closing here (dropping `stream`) is the refusal: no bytes read.
                            if let Some(n) = self.refused.record(Instant::now()) {
                                warn!(
                                    listener = self.name,
                                    source = %peer.ip(),
                                    refused = n,
                                    limit = ?why,
                                    "connections refused over the limit"
                                );
                            }
                        }
                    }
                }
                Err(e) => {
                    if let Some(n) = self.errors.record(Instant::now()) {
                        warn!(listener = self.name, error = %e, count = n, "accept failed");
                    }
                    tokio::time::sleep(self.errors.next_backoff()).await;
                }
            }
        }
    }
}

/// Reads a listener's open-connection count.
#[derive(Clone)]
pub struct ConnectionCounter(Arc<Mutex<Shared>>);

impl ConnectionCounter {
    pub fn open(&self) -> usize {
        self.0.lock().map(|s| s.table.open()).unwrap_or(0)
    }
}

/// What the start of a stream holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// One complete message of this many bytes (with any leading keep-alive CRLFs).
    Complete(usize),
    /// Not yet a whole message.
    Incomplete,
    /// Can never become a message: no header end within the maximum, a bad Content-Length,
    /// or a message longer than the maximum.
    Invalid,
}

/// Where a complete SIP message ends in `buf`, if it holds one: leading CRLF keep-alives are
/// skipped, then headers up to the empty line, then `Content-Length` (or `l`) bytes of body.
pub fn complete_message_len(buf: &[u8], max: usize) -> Framing {
    let start = buf
        .iter()
        .position(|b| *b != b'\r' && *b != b'\n')
        .unwrap_or(buf.len());
    let rest = buf.get(start..).unwrap_or(&[]);
    let Some(head_end) = rest.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if buf.len() >= max {
            Framing::Invalid
        } else {
            Framing::Incomplete
        };
    };
    let head = String::from_utf8_lossy(rest.get(..head_end).unwrap_or(&[]));
    let mut body = 0usize;
    for line in head.split("\r\n").skip(1) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim();
        if name.eq_ignore_ascii_case("content-length") || name.eq_ignore_ascii_case("l") {
            match value.trim().parse() {
                Ok(n) => body = n,
                Err(_) => return Framing::Invalid,
            }
        }
    }
    let total = start + head_end + 4 + body;
    if total > max {
        Framing::Invalid
    } else if buf.len() >= total {
        Framing::Complete(total)
    } else {
        Framing::Incomplete
    }
}

/// Waits until the peer has sent one complete SIP message (without reading it: the bytes stay
/// in the socket for the stack), for at most `timeout`. A connection that sends nothing, or
/// only part of a message, within that time is not worth a reader: `false`, close it.
pub async fn first_message_within(stream: &TcpStream, timeout: Duration) -> bool {
    // One deadline over the whole wait: readiness, peeks and pauses alike.
    tokio::time::timeout(timeout, wait_for_first_message(stream))
        .await
        .unwrap_or(false)
}

async fn wait_for_first_message(stream: &TcpStream) -> bool {
    const MAX: usize = 64 * 1024;
    // Nothing is allocated for a connection until it sends something.
    let mut buf: Vec<u8> = Vec::new();
    let mut delay = Duration::from_millis(5);
    loop {
        if stream.readable().await.is_err() {
            return false;
        }
        if buf.is_empty() {
            buf.resize(4096, 0);
        }
        let n = match stream.peek(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => n,
        };
        match complete_message_len(buf.get(..n).unwrap_or(&[]), MAX) {
            Framing::Complete(_) => return true,
            Framing::Invalid => return false,
            Framing::Incomplete => {}
        }
        if n == buf.len() {
            buf.resize((buf.len() * 2).min(MAX), 0);
            continue;
        }
        // Peeked data keeps the socket readable: wait a little before looking again, so a
        // peer trickling bytes costs a few peeks, not a spin.
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn admitted(r: Result<Admission, Refusal>) -> ConnId {
        let a = r.expect("admitted");
        assert_eq!(a.evict, None, "nothing should be evicted here");
        a.id
    }

    #[test]
    fn table_caps_total_and_per_source_and_releases() {
        let mut t = ConnectionTable::new(ConnectionLimits {
            max_total: 3,
            max_per_source: 2,
        });
        let a = admitted(t.admit(ip("10.0.0.1")));
        let b = admitted(t.admit(ip("10.0.0.1")));
        assert_eq!(t.admit(ip("10.0.0.1")), Err(Refusal::PerSource));
        let c = admitted(t.admit(ip("10.0.0.2")));
        for id in [a, b, c] {
            t.activate(id);
        }
        // Full of active connections: nobody is evicted, the newcomer is refused.
        assert_eq!(t.admit(ip("10.0.0.3")), Err(Refusal::Total));
        t.release(a);
        assert_eq!(t.open(), 2);
        admitted(t.admit(ip("10.0.0.3")));
        // Releasing twice (or an evicted one) changes nothing.
        t.release(a);
        assert_eq!(t.open(), 3);
    }

    #[test]
    fn a_full_table_evicts_the_oldest_idle_connection_of_the_heaviest_source() {
        let mut t = ConnectionTable::new(ConnectionLimits {
            max_total: 4,
            max_per_source: 10,
        });
        let x1 = admitted(t.admit(ip("10.0.0.1")));
        let x2 = admitted(t.admit(ip("10.0.0.1")));
        let x3 = admitted(t.admit(ip("10.0.0.1")));
        let y1 = admitted(t.admit(ip("10.0.0.2")));
        t.activate(x1);
        // A new source takes the place of 10.0.0.1's oldest pending connection (x2: x1 has
        // delivered a message and is never evicted).
        let z = t.admit(ip("10.0.0.3")).unwrap();
        assert_eq!(z.evict, Some(x2));
        assert_eq!(t.open(), 4);
        // The heaviest source itself cannot push out others, nor sources as light as it.
        assert_eq!(t.admit(ip("10.0.0.1")), Err(Refusal::Total));
        assert_eq!(t.admit(ip("10.0.0.2")), Err(Refusal::Total));
        // 10.0.0.1 now holds 2 (x1 active, x3 pending): a newcomer with none evicts x3.
        let w = t.admit(ip("10.0.0.4")).unwrap();
        assert_eq!(w.evict, Some(x3));
        // Everyone holds one now: a full table refuses.
        assert_eq!(t.admit(ip("10.0.0.5")), Err(Refusal::Total));
        t.release(y1);
        admitted(t.admit(ip("10.0.0.5")));
        t.release(x2);
        assert_eq!(t.open(), 4);
    }

    #[test]
    fn pacer_reports_once_per_interval_with_the_count_and_backs_off() {
        let t0 = Instant::now();
        let mut p = EventPacer::new(Duration::from_secs(10));
        assert_eq!(p.record(t0), Some(1));
        for i in 1..1000 {
            assert_eq!(p.record(t0 + Duration::from_millis(i)), None);
        }
        assert_eq!(p.record(t0 + Duration::from_secs(10)), Some(1000));
        assert_eq!(p.next_backoff(), MIN_BACKOFF);
        assert_eq!(p.next_backoff(), MIN_BACKOFF * 2);
        for _ in 0..20 {
            p.next_backoff();
        }
        assert_eq!(p.next_backoff(), MAX_BACKOFF);
        p.reset_backoff();
        assert_eq!(p.next_backoff(), MIN_BACKOFF);
    }

    #[test]
    fn complete_message_detection() {
        let max = 65536;
        let head = b"OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/TCP a\r\nContent-Length: 4\r\n\r\n";
        assert_eq!(complete_message_len(head, max), Framing::Incomplete);
        let mut full = head.to_vec();
        full.extend_from_slice(b"abcd");
        assert_eq!(
            complete_message_len(&full, max),
            Framing::Complete(full.len())
        );
        let mut ka = b"\r\n\r\n".to_vec();
        ka.extend_from_slice(&full);
        assert_eq!(complete_message_len(&ka, max), Framing::Complete(ka.len()));
        assert_eq!(complete_message_len(b"\r\n\r\n", max), Framing::Incomplete);
        let compact = b"OPTIONS sip:x SIP/2.0\r\nl: 0\r\n\r\n";
        assert_eq!(
            complete_message_len(compact, max),
            Framing::Complete(compact.len())
        );
        assert_eq!(complete_message_len(b"INV", max), Framing::Incomplete);
        assert_eq!(complete_message_len(&[b'a'; 100], 100), Framing::Invalid);
        let bad = b"OPTIONS sip:x SIP/2.0\r\nContent-Length: x\r\n\r\n";
        assert_eq!(complete_message_len(bad, max), Framing::Invalid);
        let huge = b"OPTIONS sip:x SIP/2.0\r\nContent-Length: 99999999\r\n\r\n";
        assert_eq!(complete_message_len(huge, max), Framing::Invalid);
    }

    #[tokio::test]
    async fn listener_refuses_over_the_per_source_cap_at_once() {
        let mut l = Listener::bind(
            "test",
            "127.0.0.1:0".parse().unwrap(),
            ConnectionLimits {
                max_total: 10,
                max_per_source: 1,
            },
        )
        .unwrap();
        let addr = l.local_addr().unwrap();
        let first = TcpStream::connect(addr).await.unwrap();
        let (_s, _p, permit) = l.accept().await;
        let mut second = TcpStream::connect(addr).await.unwrap();
        // The second is accepted and closed by the listener: the client reads EOF.
        let server = tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_millis(300), l.accept()).await;
            l
        });
        let mut b = [0u8; 1];
        let n = tokio::time::timeout(
            Duration::from_secs(2),
            tokio::io::AsyncReadExt::read(&mut second, &mut b),
        )
        .await
        .expect("refused connection was not closed");
        assert!(matches!(n, Ok(0) | Err(_)));
        let l = server.await.unwrap();
        assert_eq!(l.open_connections(), 1);
        drop(permit);
        assert_eq!(l.open_connections(), 0);
        drop(first);
    }

    #[tokio::test]
    async fn first_message_gate() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        // Silent peer: false after the timeout.
        let _silent = TcpStream::connect(addr).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        let t = Instant::now();
        assert!(!first_message_within(&s, Duration::from_millis(200)).await);
        assert!(t.elapsed() >= Duration::from_millis(190));
        // A message in two pieces: true, and the bytes are still there to read.
        let mut c = TcpStream::connect(addr).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        let msg = b"OPTIONS sip:x SIP/2.0\r\nContent-Length: 0\r\n\r\n";
        tokio::io::AsyncWriteExt::write_all(&mut c, &msg[..10])
            .await
            .unwrap();
        let w = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            tokio::io::AsyncWriteExt::write_all(&mut c, &msg[10..])
                .await
                .unwrap();
            c
        });
        assert!(first_message_within(&s, Duration::from_secs(2)).await);
        let mut got = vec![0u8; msg.len()];
        let n = s.peek(&mut got).await.unwrap();
        assert_eq!(&got[..n], &msg[..]);
        drop(w.await);
        // Partial message, never completed: false.
        let mut c = TcpStream::connect(addr).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut c, b"INVITE sip:")
            .await
            .unwrap();
        assert!(!first_message_within(&s, Duration::from_millis(300)).await);
    }
}
