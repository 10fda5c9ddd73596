//! A minimal WebSocket client for reading a server's text frames as cheaply as possible: one
//! 64 KiB read takes whatever the socket holds, and frames are parsed in place. It sends only
//! short masked text frames and pongs; it does not take fragmented messages (Callplane's
//! events are single frames).

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub struct Client {
    tcp: TcpStream,
    buf: Vec<u8>,
    /// Where the next unparsed frame starts in `buf`.
    at: usize,
}

pub enum Frame<'a> {
    Text(&'a str),
    Ping(Vec<u8>),
    Close,
    Other,
}

fn io_err(what: &str) -> std::io::Error {
    std::io::Error::other(what.to_string())
}

impl Client {
    /// TCP connect and the HTTP upgrade of `GET /v1/events?token=<key>`.
    pub async fn connect(port: u16, key: &str) -> std::io::Result<Client> {
        let mut tcp = TcpStream::connect(("127.0.0.1", port)).await?;
        tcp.set_nodelay(true)?;
        let req = format!(
            "GET /v1/events?token={key} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
             Upgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        tcp.write_all(req.as_bytes()).await?;
        let mut c = Client {
            tcp,
            buf: Vec::with_capacity(64 * 1024),
            at: 0,
        };
        loop {
            if let Some(end) = c.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                if !c.buf.starts_with(b"HTTP/1.1 101") {
                    return Err(io_err("the server refused the upgrade"));
                }
                c.at = end + 4;
                return Ok(c);
            }
            if c.buf.len() > 16 * 1024 {
                return Err(io_err("no end to the upgrade answer"));
            }
            c.fill().await?;
        }
    }

    /// Reads what the socket holds (waiting for at least one byte); error at its end.
    pub async fn fill(&mut self) -> std::io::Result<()> {
        if self.at > 0 {
            self.buf.drain(..self.at);
            self.at = 0;
        }
        if self.buf.capacity() - self.buf.len() < 16 * 1024 {
            self.buf.reserve(64 * 1024);
        }
        match self.tcp.read_buf(&mut self.buf).await? {
            0 => Err(io_err("connection closed")),
            _ => Ok(()),
        }
    }

    /// The next whole frame in the buffer, if any.
    pub fn frame(&mut self) -> Option<Frame<'_>> {
        let b = &self.buf[self.at..];
        if b.len() < 2 {
            return None;
        }
        let opcode = b[0] & 0x0f;
        let (len, head) = match b[1] & 0x7f {
            126 => (u16::from_be_bytes([*b.get(2)?, *b.get(3)?]) as usize, 4),
            127 => {
                let mut n = [0u8; 8];
                n.copy_from_slice(b.get(2..10)?);
                (u64::from_be_bytes(n) as usize, 10)
            }
            n => (n as usize, 2),
        };
        // Server frames are not masked.
        let payload = b.get(head..head + len)?;
        let start = self.at + head;
        self.at += head + len;
        Some(match opcode {
            0x1 => match std::str::from_utf8(&self.buf[start..start + len]) {
                Ok(t) => Frame::Text(t),
                Err(_) => Frame::Other,
            },
            0x8 => Frame::Close,
            0x9 => Frame::Ping(payload.to_vec()),
            _ => Frame::Other,
        })
    }

    /// The next text frame (waiting for it); `None` at the connection's end.
    pub async fn next_text(&mut self) -> Option<String> {
        loop {
            match self.frame() {
                Some(Frame::Text(t)) => return Some(t.to_string()),
                Some(Frame::Close) => return None,
                Some(_) => continue,
                None => self.fill().await.ok()?,
            }
        }
    }

    pub async fn send_text(&mut self, text: &str) -> std::io::Result<()> {
        self.send(0x1, text.as_bytes()).await
    }

    pub async fn send_pong(&mut self, payload: &[u8]) -> std::io::Result<()> {
        self.send(0xa, payload).await
    }

    /// One masked frame (clients must mask; payloads under 126 bytes).
    async fn send(&mut self, opcode: u8, payload: &[u8]) -> std::io::Result<()> {
        if payload.len() >= 126 {
            return Err(io_err("payload too long for this client"));
        }
        let mask = [0x5a, 0x17, 0xc3, 0x88];
        let mut f = vec![0x80 | opcode, 0x80 | payload.len() as u8];
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.tcp.write_all(&f).await
    }
}
