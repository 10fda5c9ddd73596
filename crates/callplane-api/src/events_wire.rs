//! The events socket's connection: the WebSocket handshake, and one byte queue in front of the
//! upgraded connection that two writers share.
//!
//! Why not axum's `WebSocket`: the hub fans each event out to every session (1,000 of them in
//! `bench/events_fanout.py`). Through a `WebSocket` per task, every batch cost each session a
//! task wake-up, a `select!` over its timers and socket, a `String` per event and tungstenite's
//! framing — about half of the events thread's own time in a profile. Here the hub frames a
//! session's events itself (an unmasked text frame is two or four bytes of header) straight
//! into the session's [`Wire`] and writes them with one non-blocking write; the session's task
//! runs only when the client sends something or its socket is full.
//!
//! The TCP stream itself is taken back from hyper and registered with the events thread's own
//! reactor: the calls' runtime then sees none of these sockets' readiness (an event socket's
//! write readiness changes at every batch the client acknowledges; on the calls' threads that
//! was thousands of wake-ups a second beside the SIP traffic).
//!
//! Reading (and the frames the session's task sends: `hello`, replies, pings, pongs, close)
//! still goes through tokio-tungstenite over [`WireIo`]: masking, fragments, control frames
//! and size limits are its job. Both writers append *whole frames* to the one queue, so their
//! frames never interleave mid-frame.

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use axum::extract::FromRequestParts;
use axum::http::header::{
    CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION, UPGRADE,
};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::Response;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes a session's own frames (replies, pongs) may queue before its writes wait for the
/// client to read; the hub never appends to a queue it could not write out.
const OUT_LIMIT: usize = 256 * 1024;

/// A queue's buffer larger than this is given back once it has been written out.
const KEEP_CAPACITY: usize = 64 * 1024;

/// A valid WebSocket handshake request (RFC 6455 §4.2.1) on a connection that can upgrade.
pub(crate) struct Upgrade {
    on_upgrade: OnUpgrade,
    accept: HeaderValue,
}

fn header_has_token(headers: &HeaderMap, name: &axum::http::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

impl<S: Send + Sync> FromRequestParts<S> for Upgrade {
    /// Why the request is not a WebSocket handshake.
    type Rejection = &'static str;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        if parts.method != Method::GET {
            return Err("a WebSocket handshake is a GET");
        }
        if !header_has_token(&parts.headers, &CONNECTION, "upgrade") {
            return Err("`Connection` does not include `upgrade`");
        }
        if !header_has_token(&parts.headers, &UPGRADE, "websocket") {
            return Err("`Upgrade` is not `websocket`");
        }
        if parts
            .headers
            .get(SEC_WEBSOCKET_VERSION)
            .map(HeaderValue::as_bytes)
            != Some(b"13")
        {
            return Err("`Sec-WebSocket-Version` is not 13");
        }
        let key = parts
            .headers
            .get(SEC_WEBSOCKET_KEY)
            .ok_or("`Sec-WebSocket-Key` is missing")?;
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
        let accept = HeaderValue::from_str(&accept).map_err(|_| "bad `Sec-WebSocket-Key`")?;
        let on_upgrade = parts
            .extensions
            .remove::<OnUpgrade>()
            .ok_or("the connection cannot be upgraded")?;
        Ok(Upgrade { on_upgrade, accept })
    }
}

impl Upgrade {
    /// Answers `101 Switching Protocols`; once hyper hands the connection over, `serve` runs
    /// with it on `runtime` (whose reactor then owns the socket).
    pub(crate) fn accept<F, Fut>(self, runtime: tokio::runtime::Handle, serve: F) -> Response
    where
        F: FnOnce(Arc<Wire>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let on_upgrade = self.on_upgrade;
        tokio::spawn(async move {
            let upgraded = match on_upgrade.await {
                Ok(upgraded) => upgraded,
                Err(e) => return tracing::debug!(error = %e, "events socket: upgrade failed"),
            };
            let conn = match crate::serve::upgraded_tcp(upgraded) {
                Ok(Ok((tcp, read))) => Conn::Tcp(tcp, read),
                Ok(Err(e)) => {
                    return tracing::debug!(error = %e, "events socket: cannot take the stream")
                }
                Err(other) => Conn::Other(other),
            };
            // Detached: this task (on the calls' runtime) has nothing left to do.
            drop(runtime.spawn(async move {
                match Wire::new(conn) {
                    Ok(wire) => serve(wire).await,
                    Err(e) => {
                        tracing::debug!(error = %e, "events socket: cannot register the stream")
                    }
                }
            }));
        });
        let mut r = Response::new(axum::body::Body::empty());
        *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = r.headers_mut();
        h.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(SEC_WEBSOCKET_ACCEPT, self.accept);
        r
    }
}

/// Where a write of the queue stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flush {
    /// Everything queued is written.
    Done,
    /// The socket takes nothing more for now: the rest waits in the queue.
    Blocked,
    /// The connection failed.
    Failed,
}

/// An upgraded connection with the bytes queued for it.
pub(crate) struct Wire {
    inner: Mutex<Inner>,
}

/// A connection as hyper hands it over.
enum Conn {
    /// One of this server's TCP connections, with what hyper had read past the request.
    Tcp(std::net::TcpStream, bytes::Bytes),
    Other(Upgraded),
}

enum Io {
    Tcp {
        stream: tokio::net::TcpStream,
        /// Bytes the client sent right behind its handshake, read before the stream.
        early: bytes::Bytes,
    },
    Other(TokioIo<Upgraded>),
}

impl Io {
    fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self {
            Io::Tcp { early, .. } if !early.is_empty() => {
                let n = early.len().min(buf.remaining());
                buf.put_slice(&early.split_to(n));
                Poll::Ready(Ok(()))
            }
            Io::Tcp { stream, .. } => Pin::new(stream).poll_read(cx, buf),
            Io::Other(io) => Pin::new(io).poll_read(cx, buf),
        }
    }

    fn poll_write(&mut self, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        match self {
            Io::Tcp { stream, .. } => Pin::new(stream).poll_write(cx, data),
            Io::Other(io) => Pin::new(io).poll_write(cx, data),
        }
    }

    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self {
            Io::Tcp { stream, .. } => Pin::new(stream).poll_shutdown(cx),
            Io::Other(io) => Pin::new(io).poll_shutdown(cx),
        }
    }
}

struct Inner {
    io: Io,
    out: Vec<u8>,
    /// How much of `out` is written.
    written: usize,
    failed: bool,
}

impl Wire {
    /// Must run on the runtime that is to own the socket's readiness.
    fn new(conn: Conn) -> std::io::Result<Arc<Wire>> {
        let io = match conn {
            Conn::Tcp(tcp, early) => Io::Tcp {
                stream: tokio::net::TcpStream::from_std(tcp)?,
                early,
            },
            Conn::Other(upgraded) => Io::Other(TokioIo::new(upgraded)),
        };
        Ok(Arc::new(Wire {
            inner: Mutex::new(Inner {
                io,
                out: Vec::new(),
                written: 0,
                failed: false,
            }),
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Lets `frames` append whole frames to the queue (see [`push_text_frame`]).
    pub(crate) fn append<R>(&self, frames: impl FnOnce(&mut Vec<u8>) -> R) -> R {
        frames(&mut self.lock().out)
    }

    /// Writes what the queue holds without waiting.
    pub(crate) fn try_flush(&self) -> Flush {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match self.lock().poll_flush(&mut cx) {
            Poll::Ready(Ok(())) => Flush::Done,
            Poll::Ready(Err(_)) => Flush::Failed,
            Poll::Pending => Flush::Blocked,
        }
    }

    /// Writes what the queue holds; pending until the socket has taken it all.
    pub(crate) fn poll_flush(&self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.lock().poll_flush(cx)
    }
}

impl Inner {
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.failed {
            return Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()));
        }
        while self.written < self.out.len() {
            match self.io.poll_write(cx, &self.out[self.written..]) {
                Poll::Ready(Ok(0)) => {
                    self.failed = true;
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(n)) => self.written += n,
                Poll::Ready(Err(e)) => {
                    self.failed = true;
                    return Poll::Ready(Err(e));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
        self.out.clear();
        self.written = 0;
        if self.out.capacity() > KEEP_CAPACITY {
            self.out = Vec::new();
        }
        Poll::Ready(Ok(()))
    }
}

/// Appends one unmasked, unfragmented text frame (RFC 6455 §5.2) whose payload is `len`
/// bytes, written by `payload`.
pub(crate) fn push_text_frame(out: &mut Vec<u8>, len: usize, payload: impl FnOnce(&mut Vec<u8>)) {
    out.push(0x81); // FIN, text
    if len < 126 {
        out.push(len as u8);
    } else if let Ok(len) = u16::try_from(len) {
        out.push(126);
        out.extend_from_slice(&len.to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    let start = out.len();
    payload(out);
    debug_assert_eq!(
        out.len() - start,
        len,
        "the frame's payload is the length given"
    );
}

/// The connection as tokio-tungstenite's stream: reads go to the socket, writes go to the
/// queue (whole, or not at all, so a frame is never split around one of the hub's).
pub(crate) struct WireIo(pub(crate) Arc<Wire>);

impl AsyncRead for WireIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.0.lock().io.poll_read(cx, buf)
    }
}

impl AsyncWrite for WireIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let mut w = self.0.lock();
        if w.failed {
            return Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()));
        }
        if w.out.len() - w.written + data.len() > OUT_LIMIT {
            match w.poll_flush(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        w.out.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.0.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let mut w = self.0.lock();
        match w.poll_flush(cx) {
            Poll::Ready(Ok(())) => w.io.poll_shutdown(cx),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(len: usize) -> Vec<u8> {
        let mut out = Vec::new();
        push_text_frame(&mut out, len, |o| o.resize(o.len() + len, b'x'));
        out
    }

    #[test]
    fn text_frames_carry_the_length_in_the_smallest_form() {
        assert_eq!(&frame(0)[..], &[0x81, 0]);
        assert_eq!(&frame(125)[..2], &[0x81, 125]);
        assert_eq!(&frame(126)[..4], &[0x81, 126, 0, 126]);
        assert_eq!(&frame(65_535)[..4], &[0x81, 126, 0xff, 0xff]);
        assert_eq!(&frame(65_536)[..10], &[0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]);
        assert_eq!(frame(300).len(), 4 + 300);
    }

    #[test]
    fn a_frame_pushed_by_hand_is_what_tungstenite_reads() {
        use tokio_tungstenite::tungstenite::protocol::{Role, WebSocket};
        let mut bytes = Vec::new();
        let text = "{\"seq\":1,\"type\":\"call.created\"}".repeat(10);
        push_text_frame(&mut bytes, text.len(), |o| {
            o.extend_from_slice(text.as_bytes())
        });
        // A client reads it.
        let mut ws = WebSocket::from_raw_socket(std::io::Cursor::new(bytes), Role::Client, None);
        let msg = ws.read().expect("a frame");
        assert_eq!(msg.into_text().expect("text").as_str(), text);
    }
}
