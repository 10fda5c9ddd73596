//! The raw-datagram screen in front of the stack's parser for SIP over UDP. The parser is
//! lenient in ways that hide malformed requests from us (it trims the Request-Line, strips
//! `<>` around the Request-URI) and strict in ways that drop valid ones (no header folding,
//! no extension methods). Sans-IO: `screen` looks at one datagram and says pass, drop, or
//! answer it ourselves; `ScreenedUdp` applies that to the socket the stack reads.

use rsipstack::platform::net::UdpSocket as StackUdpSocket;
use std::net::SocketAddr;

/// Methods the stack parses; any other well-formed method gets 501 from us.
const KNOWN_METHODS: &[&str] = &[
    "ACK",
    "BYE",
    "CANCEL",
    "INFO",
    "INVITE",
    "MESSAGE",
    "NOTIFY",
    "OPTIONS",
    "PRACK",
    "PUBLISH",
    "REFER",
    "REGISTER",
    "SUBSCRIBE",
    "UPDATE",
];

const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE, REGISTER";

/// What to do with one datagram.
#[derive(Debug, PartialEq, Eq)]
pub enum Screen {
    /// Hand the first `len` bytes (possibly rewritten in place) to the stack.
    Pass(usize),
    /// A malformed request: say nothing (RFC 4475 allows 400 or silence).
    Drop,
    /// Answer with these bytes ourselves and do not hand it on.
    Reply(Vec<u8>),
}

/// RFC 3261 token characters (method names).
fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Joins folded header lines (CRLF followed by SP/HT continues the header, RFC 3261 §7.3.1)
/// in the header section only, in place; returns the new length. The body is moved down
/// unchanged, so Content-Length stays right.
fn unfold_headers(buf: &mut [u8], len: usize) -> usize {
    let Some(data) = buf.get(..len) else {
        return len;
    };
    let Some(end) = find(data, b"\r\n\r\n") else {
        return len;
    };
    let mut r = 0;
    let mut w = 0;
    while r < end {
        let folded = buf[r] == b'\r'
            && buf.get(r + 1) == Some(&b'\n')
            && matches!(buf.get(r + 2), Some(b' ' | b'\t'));
        if folded {
            buf[w] = b' ';
            w += 1;
            r += 2;
            while r < end && matches!(buf[r], b' ' | b'\t') {
                r += 1;
            }
            continue;
        }
        buf[w] = buf[r];
        w += 1;
        r += 1;
    }
    if w == r {
        return len;
    }
    buf.copy_within(end..len, w);
    w + (len - end)
}

/// The header lines of a message (after the first line, before the blank line).
fn header_lines(text: &str) -> impl Iterator<Item = &str> {
    text.split("\r\n").skip(1).take_while(|l| !l.is_empty())
}

fn header_name_is(line: &str, long: &str, short: &str) -> bool {
    match line.split_once(':') {
        Some((n, _)) => {
            let n = n.trim();
            n.eq_ignore_ascii_case(long) || n.eq_ignore_ascii_case(short)
        }
        None => false,
    }
}

/// A 501 for an extension method we do not implement, built from the request's own headers.
fn not_implemented(text: &str) -> Option<Vec<u8>> {
    let mut out = String::from("SIP/2.0 501 Not Implemented\r\n");
    let mut have = [false; 4];
    for line in header_lines(text) {
        if header_name_is(line, "Via", "v") {
            out.push_str(line);
            out.push_str("\r\n");
            have[0] = true;
        } else if header_name_is(line, "From", "f")
            || header_name_is(line, "Call-ID", "i")
            || header_name_is(line, "CSeq", "")
        {
            out.push_str(line);
            out.push_str("\r\n");
            have[1] |= header_name_is(line, "From", "f");
            have[2] |= header_name_is(line, "Call-ID", "i");
            have[3] |= header_name_is(line, "CSeq", "");
        } else if header_name_is(line, "To", "t") {
            out.push_str(line);
            if !line.to_ascii_lowercase().contains(";tag=") {
                out.push_str(";tag=callplane501");
            }
            out.push_str("\r\n");
        }
    }
    // Without the headers that identify the transaction there is nothing to answer.
    if have.iter().any(|h| !h) {
        return None;
    }
    out.push_str("Allow: ");
    out.push_str(ALLOW);
    out.push_str("\r\nContent-Length: 0\r\n\r\n");
    Some(out.into_bytes())
}

/// Screens one received datagram (`buf[..len]`).
pub fn screen(buf: &mut [u8], len: usize) -> Screen {
    let len = unfold_headers(buf, len);
    let Some(data) = buf.get(..len) else {
        return Screen::Drop;
    };
    // Responses, keep-alives and anything the parser will reject anyway pass unchanged.
    if data.starts_with(b"SIP/") || data.iter().all(|b| b.is_ascii_whitespace()) {
        return Screen::Pass(len);
    }
    let Some(line_end) = find(data, b"\r\n") else {
        return Screen::Pass(len);
    };
    let line = &data[..line_end];
    // Request-Line = Method SP Request-URI SP SIP-Version, exactly (RFC 3261 §7.1).
    let mut parts = line.split(|b| *b == b' ');
    let (Some(method), Some(uri), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Screen::Drop;
    };
    if method.is_empty()
        || !method.iter().all(|b| is_token(*b))
        || uri.is_empty()
        || uri.iter().any(|b| matches!(b, b'<' | b'>' | b'\t'))
        || !version.starts_with(b"SIP/")
        || version.iter().any(|b| b.is_ascii_whitespace())
    {
        return Screen::Drop;
    }
    let known = std::str::from_utf8(method)
        .map(|m| KNOWN_METHODS.contains(&m))
        .unwrap_or(false);
    if !known {
        let text = String::from_utf8_lossy(data);
        return match not_implemented(&text) {
            Some(reply) => Screen::Reply(reply),
            None => Screen::Drop,
        };
    }
    Screen::Pass(len)
}

/// The UDP socket the stack reads, with `screen` applied to every datagram.
pub struct ScreenedUdp {
    socket: tokio::net::UdpSocket,
}

impl ScreenedUdp {
    pub fn bind(addr: SocketAddr) -> std::io::Result<ScreenedUdp> {
        let std = std::net::UdpSocket::bind(addr)?;
        std.set_nonblocking(true)?;
        Ok(ScreenedUdp {
            socket: tokio::net::UdpSocket::from_std(std)?,
        })
    }
}

#[async_trait::async_trait]
impl StackUdpSocket for ScreenedUdp {
    async fn recv_from(&self, buf: &mut [u8]) -> rsipstack::Result<(usize, SocketAddr)> {
        loop {
            let (n, src) = self.socket.recv_from(buf).await?;
            match screen(buf, n) {
                Screen::Pass(len) => return Ok((len, src)),
                Screen::Drop => {
                    tracing::debug!(%src, "malformed SIP request dropped");
                }
                Screen::Reply(reply) => {
                    if let Err(e) = self.socket.send_to(&reply, src).await {
                        tracing::debug!(%src, error = %e, "cannot answer an unknown method");
                    }
                }
            }
        }
    }

    async fn send_to(&self, buf: &[u8], addr: SocketAddr) -> rsipstack::Result<usize> {
        Ok(self.socket.send_to(buf, addr).await?)
    }

    fn local_addr(&self) -> rsipstack::Result<SocketAddr> {
        Ok(self.socket.local_addr()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(msg: &str) -> (Screen, String) {
        let mut buf = msg.as_bytes().to_vec();
        let n = buf.len();
        let s = screen(&mut buf, n);
        let text = match &s {
            Screen::Pass(len) => String::from_utf8_lossy(&buf[..*len]).into_owned(),
            _ => String::new(),
        };
        (s, text)
    }

    const HEADERS: &str = "Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK-1\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nCall-ID: x\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";

    #[test]
    fn normal_requests_and_responses_pass_unchanged() {
        let m = format!("OPTIONS sip:c@d SIP/2.0\r\n{HEADERS}");
        assert_eq!(run(&m), (Screen::Pass(m.len()), m.clone()));
        let r = "SIP/2.0 200 OK\r\nVia: x\r\n\r\n";
        assert_eq!(run(r).0, Screen::Pass(r.len()));
        assert_eq!(run("\r\n\r\n").0, Screen::Pass(4));
    }

    #[test]
    fn malformed_request_lines_are_dropped() {
        for first in [
            "OPTIONS sip:c@d SIP/2.0  ",
            "INVITE <sip:c@d> SIP/2.0",
            "OPTIONS  sip:c@d SIP/2.0",
            "OPTIONS sip:c@d",
        ] {
            let m = format!("{first}\r\n{HEADERS}");
            assert_eq!(run(&m).0, Screen::Drop, "{first:?}");
        }
    }

    #[test]
    fn folded_headers_are_joined_and_the_body_kept() {
        let m = "INVITE sip:c@d SIP/2.0\r\nFrom: <sip:a@b>\r\n  ;tag=9\r\nContent-Length: 4\r\n\r\nbody";
        let (s, text) = run(m);
        assert!(matches!(s, Screen::Pass(_)));
        assert!(text.contains("From: <sip:a@b> ;tag=9\r\n"), "{text:?}");
        assert!(text.ends_with("\r\n\r\nbody"), "{text:?}");
    }

    #[test]
    fn unknown_methods_get_501_with_the_transaction_headers() {
        let m = format!(
            "FOO%47 sip:c@d SIP/2.0\r\n{}",
            HEADERS.replace("1 OPTIONS", "1 FOO%47")
        );
        match run(&m).0 {
            Screen::Reply(r) => {
                let r = String::from_utf8(r).unwrap();
                assert!(r.starts_with("SIP/2.0 501 Not Implemented\r\n"), "{r}");
                assert!(
                    r.contains("Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK-1\r\n"),
                    "{r}"
                );
                assert!(r.contains("To: <sip:c@d>;tag="), "{r}");
                assert!(r.contains("CSeq: 1 FOO%47\r\n"), "{r}");
                assert!(r.contains("Allow: "), "{r}");
            }
            other => panic!("expected a 501, got {other:?}"),
        }
        // Without a Call-ID there is no transaction to answer.
        let m = format!(
            "FOO sip:c@d SIP/2.0\r\n{}",
            HEADERS.replace("Call-ID: x\r\n", "")
        );
        assert_eq!(run(&m).0, Screen::Drop);
    }

    #[test]
    fn garbage_never_panics() {
        let mut state: u64 = 0x243f6a8885a308d3;
        let base = format!("INVITE sip:c@d SIP/2.0\r\n{HEADERS}");
        for _ in 0..20_000 {
            let mut m = base.as_bytes().to_vec();
            for _ in 0..6 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let i = (state as usize) % m.len();
                m[i] = (state >> 32) as u8;
            }
            let n = m.len();
            let _ = screen(&mut m, n);
        }
        for cut in 0..base.len() {
            let mut m = base.as_bytes()[..cut].to_vec();
            let n = m.len();
            let _ = screen(&mut m, n);
        }
    }
}
