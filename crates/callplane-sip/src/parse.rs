//! Parsing entry points for untrusted SIP bytes, shared by the fuzz targets and tests: the
//! stack's message parser plus our own header parsers (digest credentials, Contact, INFO
//! DTMF). None of them may panic on any input.

use crate::digest::DigestCredentials;
use crate::info_dtmf::parse_info_dtmf;
use rsipstack::sip::prelude::HeadersExt;
use rsipstack::sip::SipMessage;

/// What a parsed message says about itself, in our types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageSummary {
    Request {
        method: String,
        call_id: Option<String>,
    },
    Response {
        status: u16,
        call_id: Option<String>,
    },
}

/// Parses one SIP message and every header our code reads from it.
pub fn parse_message(bytes: &[u8]) -> Result<MessageSummary, String> {
    let msg = SipMessage::try_from(bytes).map_err(|e| e.to_string())?;
    let headers = match &msg {
        SipMessage::Request(r) => &r.headers,
        SipMessage::Response(r) => &r.headers,
    };
    for h in headers.iter() {
        let name = h.name();
        if name.eq_ignore_ascii_case("Authorization")
            || name.eq_ignore_ascii_case("Proxy-Authorization")
        {
            let _ = DigestCredentials::parse(h.value());
        }
        if name.eq_ignore_ascii_case("Contact") {
            for c in crate::server::split_contacts(h.value()) {
                let _ = crate::server::contact_uri(&c);
                let _ = crate::server::contact_param(&c, "expires");
            }
        }
    }
    let call_id = msg.call_id_header().ok().map(|c| c.value().to_string());
    Ok(match msg {
        SipMessage::Request(r) => {
            let _ = crate::validate::validate_request(&r, false);
            let _ = parse_info_dtmf(Some("application/dtmf-relay"), &r.body);
            let _ = r.from_header().and_then(|f| f.uri());
            let _ = r.to_header().and_then(|t| t.tag());
            MessageSummary::Request {
                method: r.method.to_string(),
                call_id,
            }
        }
        SipMessage::Response(r) => MessageSummary::Response {
            status: r.status_code.code(),
            call_id,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const INVITE: &str = "INVITE sip:100@127.0.0.1 SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-1\r\n\
Max-Forwards: 70\r\n\
From: \"Alice\" <sip:alice@127.0.0.1>;tag=1\r\n\
To: <sip:100@127.0.0.1>\r\n\
Call-ID: abc@127.0.0.1\r\n\
CSeq: 1 INVITE\r\n\
Contact: <sip:alice@127.0.0.1:5070>;expires=60\r\n\
Proxy-Authorization: Digest username=\"alice\", realm=\"callplane\", nonce=\"1.2\", uri=\"sip:100@127.0.0.1\", response=\"00\"\r\n\
Content-Length: 0\r\n\r\n";

    #[test]
    fn parses_a_request() {
        let s = parse_message(INVITE.as_bytes()).unwrap();
        assert_eq!(
            s,
            MessageSummary::Request {
                method: "INVITE".into(),
                call_id: Some("abc@127.0.0.1".into())
            }
        );
    }

    /// Deterministic mutation smoke test: truncations, byte flips and splices of a real
    /// message must never panic. (The libFuzzer target in fuzz/ explores much further.)
    #[test]
    fn mutated_messages_never_panic() {
        let base = INVITE.as_bytes();
        let mut state: u64 = 0x9e3779b97f4a7c15;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for cut in 0..base.len() {
            let _ = parse_message(&base[..cut]);
        }
        for _ in 0..20_000 {
            let mut m = base.to_vec();
            let edits = 1 + next() % 8;
            for _ in 0..edits {
                let i = (next() as usize) % m.len().max(1);
                match next() % 4 {
                    0 => m[i] = next() as u8,
                    1 => {
                        m.remove(i);
                    }
                    2 => m.insert(i, b"\r\n:;,<>\"\\= "[(next() % 11) as usize]),
                    _ => {
                        let j = (next() as usize) % m.len().max(1);
                        let chunk: Vec<u8> = m[j..].iter().take(16).copied().collect();
                        m.splice(i..i, chunk);
                    }
                }
                if m.is_empty() {
                    break;
                }
            }
            let _ = parse_message(&m);
        }
    }
}
