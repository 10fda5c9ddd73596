//! The Enswitch "Ask web URL" wire format: the form fields Callplane posts and the `key: value`
//! text it reads back. Pure functions; the Call actor does the HTTP.

use crate::blocks::AskUrlDestinationType;

/// The routing answer of an ask-URL server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AskUrlReply {
    pub dtype: AskUrlDestinationType,
    /// Required unless `dtype` is `hangup`.
    pub dnumber: Option<String>,
    pub answer_url: Option<String>,
    pub hangup_url: Option<String>,
}

/// Reads a `text/plain` reply: one `key: value` per line, `\n` or `\r\n`, unknown keys and
/// blank lines ignored, the last of repeated keys wins (as a CGI script's output would be
/// read by Enswitch). `dtype` must be one of `phone`, `external`, `plan`, `hangup`.
pub fn parse_reply(text: &str) -> Result<AskUrlReply, String> {
    let mut dtype = None;
    let mut dnumber = None;
    let mut answer_url = None;
    let mut hangup_url = None;
    for line in text.split('\n') {
        let line = line.trim_end_matches('\r').trim();
        if line.is_empty() {
            continue;
        }
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        let slot = match key.trim().to_ascii_lowercase().as_str() {
            "dtype" => &mut dtype,
            "dnumber" => &mut dnumber,
            "answer_url" => &mut answer_url,
            "hangup_url" => &mut hangup_url,
            _ => continue,
        };
        *slot = (!value.is_empty()).then(|| value.to_string());
    }
    let dtype_text = dtype.ok_or_else(|| "no dtype line".to_string())?;
    let dtype = AskUrlDestinationType::parse(&dtype_text.to_ascii_lowercase())
        .ok_or_else(|| format!("unknown dtype {dtype_text:?}"))?;
    if dtype != AskUrlDestinationType::Hangup && dnumber.is_none() {
        return Err(format!("dtype {} without dnumber", dtype.as_str()));
    }
    for url in [&answer_url, &hangup_url].into_iter().flatten() {
        if !callplane_store::model::is_http_url(url) {
            return Err(format!("not an http(s) URL: {url:?}"));
        }
    }
    Ok(AskUrlReply {
        dtype,
        dnumber,
        answer_url,
        hangup_url,
    })
}

/// `application/x-www-form-urlencoded` encoding of `fields`, in order.
pub fn encode_form<'a>(fields: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in fields {
        s.append_pair(k, v);
    }
    s.finish()
}

/// How an ask-URL leg ended, as the `status` field of its `hangup_url` request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LegStatus {
    Answer,
    Busy,
    Cancel,
    Congestion,
    NoAnswer,
}

impl LegStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            LegStatus::Answer => "answer",
            LegStatus::Busy => "busy",
            LegStatus::Cancel => "cancel",
            LegStatus::Congestion => "congestion",
            LegStatus::NoAnswer => "noanswer",
        }
    }

    /// The status of a leg that was not answered and ended with this final SIP response.
    pub fn from_sip_status(status: u16) -> LegStatus {
        match status {
            486 | 600 => LegStatus::Busy,
            408 | 480 => LegStatus::NoAnswer,
            487 => LegStatus::Cancel,
            _ => LegStatus::Congestion,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_crlf_and_lf_lines_and_overrides() {
        let r = parse_reply(
            "dtype: phone\r\ndnumber: 1001\r\nanswer_url: http://x/a\r\nhangup_url: https://x/h\r\n",
        )
        .expect("valid");
        assert_eq!(r.dtype, AskUrlDestinationType::Phone);
        assert_eq!(r.dnumber.as_deref(), Some("1001"));
        assert_eq!(r.answer_url.as_deref(), Some("http://x/a"));
        assert_eq!(r.hangup_url.as_deref(), Some("https://x/h"));
        let r = parse_reply("junk line\n\ndtype:external\ndnumber:  +4930123 \nfoo: bar\n")
            .expect("valid");
        assert_eq!(r.dtype, AskUrlDestinationType::External);
        assert_eq!(r.dnumber.as_deref(), Some("+4930123"));
        assert_eq!(r.answer_url, None);
    }

    #[test]
    fn hangup_needs_no_number_others_do() {
        assert_eq!(
            parse_reply("dtype: hangup").map(|r| r.dtype),
            Ok(AskUrlDestinationType::Hangup)
        );
        assert!(parse_reply("dtype: plan\n").is_err());
        assert!(parse_reply("dnumber: 12\n").is_err());
        assert!(parse_reply("dtype: voicemail\ndnumber: 1\n").is_err());
        assert!(parse_reply("<html><body>oops</body></html>").is_err());
        assert!(parse_reply("dtype: phone\ndnumber: 1\nanswer_url: ftp://x\n").is_err());
    }

    #[test]
    fn form_is_url_encoded_in_order() {
        assert_eq!(
            encode_form([("snumber", "+49 30"), ("state", "ring"), ("x", "a&b=c")]),
            "snumber=%2B49+30&state=ring&x=a%26b%3Dc"
        );
    }

    #[test]
    fn leg_status_from_sip() {
        assert_eq!(LegStatus::from_sip_status(486), LegStatus::Busy);
        assert_eq!(LegStatus::from_sip_status(480), LegStatus::NoAnswer);
        assert_eq!(LegStatus::from_sip_status(487), LegStatus::Cancel);
        assert_eq!(LegStatus::from_sip_status(503), LegStatus::Congestion);
        assert_eq!(LegStatus::NoAnswer.as_str(), "noanswer");
    }
}
