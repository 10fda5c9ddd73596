//! Checks a parsed request against RFC 3261's syntax rules that the stack's lenient parser lets
//! through, so malformed requests get 400 (or 505/416/420) instead of being acted on. Sans-IO:
//! works on the parsed message and returns the response status to send.

use rsipstack::sip::{Header, Request, Scheme, Version};

/// Option tags we implement; a Require naming anything else gets 420.
const SUPPORTED: &[&str] = &[];

/// Why a request is refused, with the status to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub reason: String,
    /// For 420: the option tags we do not support (sent in `Unsupported`).
    pub unsupported: Vec<String>,
}

fn refuse(status: u16, reason: impl Into<String>) -> Refusal {
    Refusal {
        status,
        reason: reason.into(),
        unsupported: Vec::new(),
    }
}

/// Quotes balanced and no unescaped quote inside; a display name with an open quote is invalid.
fn quotes_balanced(v: &str) -> bool {
    let mut inside = false;
    let mut escaped = false;
    for c in v.chars() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if inside => escaped = true,
            '"' => inside = !inside,
            _ => {}
        }
    }
    !inside
}

/// `;;` or a trailing `;` in a header's parameters (outside quotes and `<…>`).
fn has_empty_param(v: &str) -> bool {
    let mut inside_quotes = false;
    let mut angle = 0i32;
    let mut prev_semicolon = false;
    for c in v.chars() {
        match c {
            '"' => inside_quotes = !inside_quotes,
            '<' if !inside_quotes => angle += 1,
            '>' if !inside_quotes => angle -= 1,
            _ => {}
        }
        if inside_quotes || angle > 0 {
            prev_semicolon = false;
            continue;
        }
        if c == ';' || c == ',' {
            if prev_semicolon {
                return true;
            }
            prev_semicolon = c == ';';
        } else if !c.is_whitespace() {
            prev_semicolon = false;
        }
    }
    prev_semicolon
}

/// Validates a request; `reliable` is true on TCP (where Content-Length framing is the
/// transport's business).
pub fn validate_request(req: &Request, reliable: bool) -> Result<(), Refusal> {
    if req.version != Version::V2 {
        return Err(refuse(505, "SIP Version Not Supported"));
    }
    match &req.uri.scheme {
        Some(Scheme::Sip) | Some(Scheme::Sips) => {}
        // The parser leaves the scheme empty for URIs like `soap.beep://host`.
        None => return Err(refuse(416, "Unsupported URI Scheme")),
        Some(other) => {
            let s = other.to_string().to_ascii_lowercase();
            if s != "tel" {
                return Err(refuse(416, "Unsupported URI Scheme"));
            }
        }
    }
    let uri_text = req.uri.to_string();
    if uri_text.contains('<') || uri_text.contains('>') || uri_text.contains(' ') {
        return Err(refuse(400, "Malformed Request-URI"));
    }
    let mut counts = [0usize; 6];
    let mut content_length: Option<&str> = None;
    let mut cseq_method: Option<String> = None;
    let mut require: Vec<String> = Vec::new();
    for h in req.headers.iter() {
        let slot = match h {
            Header::From(_) => Some(0),
            Header::To(_) => Some(1),
            Header::CallId(_) => Some(2),
            Header::CSeq(_) => Some(3),
            Header::MaxForwards(_) => Some(4),
            Header::ContentLength(_) => Some(5),
            _ => None,
        };
        if let Some(i) = slot {
            counts[i] += 1;
        }
        let value = h.value();
        match h {
            Header::From(_) | Header::To(_) | Header::Contact(_) => {
                if !quotes_balanced(value) {
                    return Err(refuse(400, format!("Unbalanced quotes in {}", h.name())));
                }
                if has_empty_param(value) {
                    return Err(refuse(400, format!("Empty parameter in {}", h.name())));
                }
            }
            Header::Via(_) => {
                if has_empty_param(value) {
                    return Err(refuse(400, "Empty parameter in Via"));
                }
            }
            Header::ContentLength(_) => content_length = Some(value),
            Header::CSeq(_) => {
                let mut parts = value.split_whitespace();
                let num = parts.next().and_then(|n| n.parse::<u32>().ok());
                let method = parts.next();
                if num.is_none() || method.is_none() || parts.next().is_some() {
                    return Err(refuse(400, "Malformed CSeq"));
                }
                cseq_method = method.map(str::to_string);
            }
            Header::MaxForwards(_) => {
                if value.trim().parse::<u8>().is_err() {
                    return Err(refuse(400, "Malformed Max-Forwards"));
                }
            }
            _ => {
                if h.name().eq_ignore_ascii_case("Require") {
                    require.extend(
                        value
                            .split(',')
                            .map(|t| t.trim().to_ascii_lowercase())
                            .filter(|t| !t.is_empty()),
                    );
                }
            }
        }
    }
    const NAMES: [&str; 6] = [
        "From",
        "To",
        "Call-ID",
        "CSeq",
        "Max-Forwards",
        "Content-Length",
    ];
    for (i, n) in counts.iter().enumerate() {
        if *n > 1 {
            return Err(refuse(400, format!("Multiple {} headers", NAMES[i])));
        }
        if *n == 0 && i < 4 {
            return Err(refuse(400, format!("Missing {}", NAMES[i])));
        }
    }
    let method = req.method.to_string();
    if let Some(cm) = cseq_method {
        if !cm.eq_ignore_ascii_case(&method) {
            return Err(refuse(400, "CSeq method does not match the request"));
        }
    }
    match content_length.map(|v| v.trim().parse::<usize>()) {
        Some(Err(_)) => return Err(refuse(400, "Malformed Content-Length")),
        Some(Ok(n)) if !reliable && n != req.body.len() => {
            return Err(refuse(400, "Content-Length does not match the body"));
        }
        _ => {}
    }
    // RFC 3261 §8.2.2.3: a Require we do not know is refused (never for ACK and CANCEL).
    if !matches!(method.as_str(), "ACK" | "CANCEL") {
        let unknown: Vec<String> = require
            .into_iter()
            .filter(|t| !SUPPORTED.contains(&t.as_str()))
            .collect();
        if !unknown.is_empty() {
            return Err(Refusal {
                status: 420,
                reason: "Bad Extension".into(),
                unsupported: unknown,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rsipstack::sip::SipMessage;

    fn req(text: &str) -> Request {
        let text = text.replace('\n', "\r\n");
        match SipMessage::try_from(text.as_str()) {
            Ok(SipMessage::Request(r)) => r,
            other => panic!("test message did not parse as a request: {:?}", other.err()),
        }
    }

    const GOOD: &str = "OPTIONS sip:100@example.com SIP/2.0
Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK-1
From: \"A \\\"quoted\\\" name\" <sip:a@example.com>;tag=1
To: <sip:100@example.com>
Call-ID: x1
CSeq: 1 OPTIONS
Max-Forwards: 70
Content-Length: 0

";

    #[test]
    fn a_normal_request_passes() {
        assert_eq!(validate_request(&req(GOOD), false), Ok(()));
    }

    #[test]
    fn cseq_method_mismatch_is_400() {
        let r = req(&GOOD.replace("CSeq: 1 OPTIONS", "CSeq: 1 INVITE"));
        assert_eq!(validate_request(&r, false).map_err(|e| e.status), Err(400));
    }

    #[test]
    fn duplicate_single_value_headers_are_400() {
        let r = req(&GOOD.replace("Call-ID: x1\n", "Call-ID: x1\nCall-ID: x2\n"));
        assert_eq!(validate_request(&r, false).map_err(|e| e.status), Err(400));
        let r = req(&GOOD.replace(
            "Content-Length: 0\n",
            "Content-Length: 0\nContent-Length: 0\n",
        ));
        assert_eq!(validate_request(&r, false).map_err(|e| e.status), Err(400));
    }

    #[test]
    fn content_length_must_match_on_udp() {
        let r = req(&GOOD.replace("Content-Length: 0", "Content-Length: 9999"));
        assert_eq!(validate_request(&r, false).map_err(|e| e.status), Err(400));
    }

    #[test]
    fn unbalanced_quotes_and_empty_params_are_400() {
        let r = req(&GOOD.replace("From: \"A \\\"quoted\\\" name\"", "From: \"A name"));
        assert_eq!(validate_request(&r, false).map_err(|e| e.status), Err(400));
        let r = req(&GOOD.replace(";branch=z9hG4bK-1", ";;,;,,"));
        assert_eq!(validate_request(&r, false).map_err(|e| e.status), Err(400));
    }

    #[test]
    fn unknown_require_is_420_with_the_tags() {
        let r = req(&GOOD.replace(
            "Max-Forwards: 70",
            "Max-Forwards: 70\nRequire: nothingSupportsThis, nothingSupportsThisEither",
        ));
        let e = validate_request(&r, false).unwrap_err();
        assert_eq!(e.status, 420);
        assert_eq!(
            e.unsupported,
            ["nothingsupportsthis", "nothingsupportsthiseither"]
        );
    }

    #[test]
    fn helpers() {
        assert!(quotes_balanced("\"a\\\"b\" <sip:x>"));
        assert!(!quotes_balanced("\"a <sip:x>"));
        assert!(has_empty_param("sip:x;;a"));
        assert!(has_empty_param("<sip:x>;"));
        assert!(!has_empty_param("<sip:x;;y>;tag=1"));
        assert!(!has_empty_param("\"a;;b\" <sip:x>;tag=1"));
    }
}
