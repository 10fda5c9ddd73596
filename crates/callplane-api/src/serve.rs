//! The HTTP listener: connections within `callplane_sip::listen` limits, each served by hyper
//! with a header read timeout (a new connection's first request and every later one on a
//! kept-alive connection must arrive in time) and an idle timeout (no bytes moving either way,
//! for example a stalled upload), so idle or trickling clients cannot hold descriptors.

use axum::Router;
use callplane_sip::listen::{ConnectionCounter, ConnectionLimits, Listener, Permit};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::debug;

/// Limits of the HTTP listener.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    pub connections: ConnectionLimits,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            connections: ConnectionLimits {
                max_total: 1024,
                max_per_source: 64,
            },
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// A bound HTTP listener, ready to serve.
pub struct HttpServer {
    listener: Listener,
    limits: HttpLimits,
}

impl HttpServer {
    pub fn bind(addr: SocketAddr, limits: HttpLimits) -> std::io::Result<HttpServer> {
        Ok(HttpServer {
            listener: Listener::bind("http", addr, limits.connections)?,
            limits,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn counter(&self) -> ConnectionCounter {
        self.listener.counter()
    }

    /// Serves `app` until the process ends.
    pub async fn serve(mut self, app: Router) {
        loop {
            let (stream, peer, permit) = self.listener.accept().await;
            let app = app.clone();
            let limits = self.limits;
            tokio::spawn(async move {
                serve_connection(stream, app, limits, Arc::new(permit)).await;
                debug!(%peer, "HTTP connection closed");
            });
        }
    }
}

async fn serve_connection(stream: TcpStream, app: Router, limits: HttpLimits, permit: Arc<Permit>) {
    // hyper allots its read buffer when it takes the connection: until the client sends
    // something, an idle connection costs only its socket and this wait.
    tokio::select! {
        r = tokio::time::timeout(limits.header_read_timeout, stream.readable()) => {
            if !matches!(r, Ok(Ok(()))) {
                return;
            }
        }
        _ = permit.evicted() => return,
    }
    // Responses and event batches are written whole: Nagle's algorithm would only hold a
    // batch back until the client's delayed ACK (up to 40 ms on Linux).
    let _ = stream.set_nodelay(true);
    let clock = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let fd = std::os::fd::AsRawFd::as_raw_fd(&stream);
    let peer = stream.peer_addr().ok();
    let io = TokioIo::new(Activity {
        inner: stream,
        clock,
        last: last.clone(),
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        // Applies to every request head on the connection (so a client that sent its first
        // byte late may take up to twice the timeout for its first head: still bounded).
        .header_read_timeout(limits.header_read_timeout)
        .serve_connection(io, first_request_activates(app, permit.clone(), fd, peer))
        // `GET /v1/events` upgrades to a WebSocket; the socket then holds the connection's
        // permit (see [`ConnectionPermit`]) and keeps its own timers.
        .with_upgrades();
    tokio::select! {
        _ = conn => {}
        _ = idle(clock, last, limits.idle_timeout) => {}
        // Only a connection that has not sent a request head yet can be evicted.
        _ = permit.evicted() => {}
    }
}

/// The app as a hyper service that marks the connection active at its first request head.
fn first_request_activates(
    app: Router,
    permit: Arc<Permit>,
    fd: std::os::fd::RawFd,
    peer: Option<SocketAddr>,
) -> impl hyper::service::Service<
    hyper::Request<hyper::body::Incoming>,
    Response = axum::response::Response,
    Error = std::convert::Infallible,
    Future = impl Send,
> + Clone {
    hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        permit.activate();
        if is_websocket_upgrade(&req) {
            limit_send_buffer(fd);
        }
        req.extensions_mut()
            .insert(ConnectionPermit(permit.clone()));
        if let Some(peer) = peer {
            // The client's address, for routes that check where a request comes from.
            req.extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
        }
        tower::ServiceExt::oneshot(app.clone(), req)
    })
}

/// Kernel send buffer of a WebSocket connection (Linux doubles it for its bookkeeping). Left
/// to autotuning, a loopback or LAN socket's buffer grows to 4 MiB: a thousand event clients
/// that stopped reading could pin 4 GiB, and a stuck client would hide thousands of events in
/// the kernel before its session's queue (which closes it) even filled.
pub const WEBSOCKET_SEND_BUFFER: usize = 64 * 1024;

fn is_websocket_upgrade<B>(req: &hyper::Request<B>) -> bool {
    req.headers()
        .get(hyper::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

fn limit_send_buffer(fd: std::os::fd::RawFd) {
    // SAFETY: the service runs only while hyper holds the connection, which owns `fd`; the
    // borrow ends before this function returns.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    if let Err(e) = socket2::SockRef::from(&fd).set_send_buffer_size(WEBSOCKET_SEND_BUFFER) {
        debug!(error = %e, "cannot set a WebSocket's send buffer");
    }
}

/// The connection's place within the listener's limits, handed to the request: a WebSocket
/// keeps it for as long as the socket is open, so upgraded connections count too.
#[derive(Clone)]
pub struct ConnectionPermit(#[allow(dead_code)] Arc<Permit>);

/// The TCP connection under an upgraded request, taken back from hyper and off this runtime's
/// reactor (so that another runtime can own its readiness), with the bytes hyper had read past
/// the request. `Err` gives back a connection that is not one of this server's TCP streams.
pub(crate) fn upgraded_tcp(
    upgraded: hyper::upgrade::Upgraded,
) -> Result<std::io::Result<(std::net::TcpStream, bytes::Bytes)>, hyper::upgrade::Upgraded> {
    let parts = upgraded.downcast::<TokioIo<Activity>>()?;
    let tcp = parts.io.into_inner().inner;
    Ok(tcp.into_std().map(|std| (std, parts.read_buf)))
}

/// Resolves once no bytes have moved for `timeout`.
async fn idle(clock: Instant, last: Arc<AtomicU64>, timeout: Duration) {
    loop {
        let at = clock + Duration::from_millis(last.load(Ordering::Relaxed)) + timeout;
        if Instant::now() >= at {
            return;
        }
        tokio::time::sleep_until(at).await;
    }
}

/// A stream that notes when bytes last moved.
struct Activity {
    inner: TcpStream,
    clock: Instant,
    last: Arc<AtomicU64>,
}

impl Activity {
    fn touch(&self) {
        let ms = u64::try_from(self.clock.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::Relaxed);
    }
}

impl AsyncRead for Activity {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        r
    }
}

impl AsyncWrite for Activity {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn server(limits: HttpLimits) -> SocketAddr {
        let s = HttpServer::bind("127.0.0.1:0".parse().unwrap(), limits).unwrap();
        let addr = s.local_addr().unwrap();
        let app = Router::new().route("/", axum::routing::get(|| async { "ok" }));
        tokio::spawn(s.serve(app));
        addr
    }

    async fn closed_within(c: &mut TcpStream, d: Duration) -> bool {
        let mut b = [0u8; 256];
        loop {
            match tokio::time::timeout(d, c.read(&mut b)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
                Err(_) => return false,
            }
        }
    }

    #[tokio::test]
    async fn silent_and_idle_keepalive_connections_are_closed_and_requests_served() {
        let limits = HttpLimits {
            header_read_timeout: Duration::from_millis(300),
            idle_timeout: Duration::from_secs(5),
            ..HttpLimits::default()
        };
        let addr = server(limits).await;
        // Never sends a byte.
        let mut silent = TcpStream::connect(addr).await.unwrap();
        let t = std::time::Instant::now();
        assert!(closed_within(&mut silent, Duration::from_secs(3)).await);
        assert!(t.elapsed() >= Duration::from_millis(250));
        // Half a request line.
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET / HT").await.unwrap();
        assert!(closed_within(&mut slow, Duration::from_secs(3)).await);
        // A served request, then the kept-alive connection idles and is closed.
        let mut ok = TcpStream::connect(addr).await.unwrap();
        ok.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut b = [0u8; 512];
        let n = ok.read(&mut b).await.unwrap();
        assert!(String::from_utf8_lossy(&b[..n]).starts_with("HTTP/1.1 200"));
        assert!(closed_within(&mut ok, Duration::from_secs(3)).await);
    }

    #[tokio::test]
    async fn stalled_body_hits_the_idle_timeout() {
        let limits = HttpLimits {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_millis(300),
            ..HttpLimits::default()
        };
        let addr = server(limits).await;
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nab")
            .await
            .unwrap();
        assert!(closed_within(&mut c, Duration::from_secs(3)).await);
    }
}
