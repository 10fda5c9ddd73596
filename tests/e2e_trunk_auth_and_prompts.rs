//! Digest authentication toward a trunk and the prompts that do not come from the tenant's own
//! files. A carrier that challenges with 407 gets a second INVITE with a Proxy-Authorization
//! whose digest response is checked here against the configured password (MD5 written from
//! RFC 1321 in this file, independent of the product's code); a carrier that refuses the
//! credentials with 403 makes the bridge fail (`bridge_result` = `failed`) and the plan goes on;
//! with a 401 challenge SIPp's own `<verifyauth>` decides. SAY speaks its text with espeak-ng
//! (audio of the spoken length, not silence, then BYE) and caches the speech under
//! `<dataDir>/tts-cache/`; a standard announcement plays the Asterisk prompt at its length; a
//! standard prompt that does not exist is skipped and the next block plays at once.

mod common;

use common::*;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

/// Where `.ci/run` puts the standard prompt set (asterisk-core-sounds-en-wav); the harness's
/// `soundsDir`.
const SOUNDS_DIR: &str = "/usr/share/asterisk/sounds/en";

const BRIDGE_TO_CARRIER: &str = r##"{ blockType = "BRIDGE", bridgeMode = "SEQUENTIAL", destinations = [ { destinationType = "SIP_TRUNK", destination = "4930123@carrier", timeout = 10 } ] }"##;

/// A UDP trunk of tenant t1 with digest credentials.
fn trunk_with_credentials(name: &str, port: u16, username: &str, password: &str) -> String {
    format!(
        "[[trunks]]\ntenant = \"t1\"\nname = \"{name}\"\nhost = \"127.0.0.1\"\nport = {port}\n\
         transport = \"udp\"\nusername = \"{username}\"\npassword = \"{password}\"\n\n"
    )
}

/// The value of a Reason header's `cause=` parameter.
fn q850_cause(reason: &str) -> Option<u32> {
    reason
        .split(';')
        .find_map(|p| p.trim().strip_prefix("cause="))
        .and_then(|v| v.trim().parse().ok())
}

// ---------------------------------------------------------------------------------------------
// Digest (RFC 1321 MD5, RFC 2617 response), for checking what the server sent to the carrier
// ---------------------------------------------------------------------------------------------

/// MD5 of `data` (RFC 1321 §3).
fn md5(data: &[u8]) -> [u8; 16] {
    const S: [u32; 64] = [
        7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 5, 9, 14, 20, 5, 9, 14, 20, 5,
        9, 14, 20, 5, 9, 14, 20, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 6, 10,
        15, 21, 6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21,
    ];
    // T[i] = floor(2^32 * |sin(i + 1)|) (RFC 1321 §3.4).
    let t: Vec<u32> = (0..64)
        .map(|i| ((i as f64 + 1.0).sin().abs() * 4_294_967_296.0) as u32)
        .collect();
    let mut msg = data.to_vec();
    let bits = (data.len() as u64).wrapping_mul(8);
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&bits.to_le_bytes());
    let mut h: [u32; 4] = [0x6745_2301, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476];
    for block in msg.chunks(64) {
        let x: Vec<u32> = block
            .chunks(4)
            .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
            .collect();
        let [mut a, mut b, mut c, mut d] = h;
        for i in 0..64 {
            let (f, g) = match i / 16 {
                0 => ((b & c) | (!b & d), i),
                1 => ((b & d) | (c & !d), (5 * i + 1) % 16),
                2 => (b ^ c ^ d, (3 * i + 5) % 16),
                _ => (c ^ (b | !d), (7 * i) % 16),
            };
            let sum = a.wrapping_add(f).wrapping_add(t[i]).wrapping_add(x[g]);
            a = d;
            d = c;
            c = b;
            b = b.wrapping_add(sum.rotate_left(S[i]));
        }
        h[0] = h[0].wrapping_add(a);
        h[1] = h[1].wrapping_add(b);
        h[2] = h[2].wrapping_add(c);
        h[3] = h[3].wrapping_add(d);
    }
    let mut out = [0u8; 16];
    for (i, w) in h.iter().enumerate() {
        out[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
    }
    out
}

fn md5_hex(s: &str) -> String {
    md5(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The parameters of a `Digest k=v, k="v"` credentials or challenge header, names lower-cased,
/// quotes removed. Commas inside quoted values do not split.
fn digest_params(header: &str) -> Vec<(String, String)> {
    let rest = header.trim();
    let rest = match rest.split_once(char::is_whitespace) {
        Some((scheme, r)) if scheme.eq_ignore_ascii_case("Digest") => r,
        _ => return Vec::new(),
    };
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in rest.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            ',' if !quoted => parts.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    parts.push(cur);
    parts
        .iter()
        .filter_map(|p| {
            let (k, v) = p.split_once('=')?;
            Some((
                k.trim().to_ascii_lowercase(),
                v.trim().trim_matches('"').to_string(),
            ))
        })
        .collect()
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// The RFC 2617 §3.2.2 request-digest for these credentials (MD5; with qop when it is given).
fn expected_digest_response(params: &[(String, String)], method: &str, password: &str) -> String {
    let get = |n: &str| param(params, n).unwrap_or("");
    let ha1 = md5_hex(&format!("{}:{}:{password}", get("username"), get("realm")));
    let ha2 = md5_hex(&format!("{method}:{}", get("uri")));
    match param(params, "qop") {
        Some(qop) => md5_hex(&format!(
            "{ha1}:{}:{}:{}:{qop}:{ha2}",
            get("nonce"),
            get("nc"),
            get("cnonce")
        )),
        None => md5_hex(&format!("{ha1}:{}:{ha2}", get("nonce"))),
    }
}

#[test]
fn md5_and_digest_match_the_rfc_examples() {
    // RFC 1321 appendix A.5.
    assert_eq!(md5_hex(""), "d41d8cd98f00b204e9800998ecf8427e");
    assert_eq!(md5_hex("abc"), "900150983cd24fb0d6963f7d28e17f72");
    assert_eq!(
        md5_hex("message digest"),
        "f96b697d7cb7938d525a2f31aaf161d0"
    );
    assert_eq!(
        md5_hex("12345678901234567890123456789012345678901234567890123456789012345678901234567890"),
        "57edf4a22be3c955ac49da2e2107b67a"
    );
    // RFC 2617 §3.5.
    let params = digest_params(
        r#"Digest username="Mufasa", realm="testrealm@host.com", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", uri="/dir/index.html", qop=auth, nc=00000001, cnonce="0a4f113b", response="6629fae49393a05397450978507c4ef1", opaque="5ccc069c403ebaf9f0171e9517f40e41""#,
    );
    assert_eq!(
        expected_digest_response(&params, "GET", "Circle Of Life"),
        "6629fae49393a05397450978507c4ef1"
    );
}

/// What the carrier saw: its INVITEs (the second with credentials), the challenge it sent, and
/// the credentials header's parameters. Panics with the SIPp report when the flow is not
/// INVITE → challenge → ACK → INVITE with `credentials_header`.
struct ChallengeFlow<'a> {
    invites: Vec<&'a TracedMessage>,
    challenge: &'a TracedMessage,
    credentials: String,
    params: Vec<(String, String)>,
}

fn challenge_flow<'a>(
    carrier: &'a SippResult,
    challenge_status: u16,
    challenge_header: &str,
    credentials_header: &str,
    server: &Server,
) -> ChallengeFlow<'a> {
    let invites: Vec<&TracedMessage> = carrier
        .received()
        .filter(|m| m.method() == Some("INVITE"))
        .collect();
    assert_eq!(
        invites.len(),
        2,
        "the carrier should get exactly two INVITEs (without, then with credentials)\n{}\n{}",
        carrier.report(),
        server.log_tail()
    );
    let challenge = carrier
        .sent()
        .find(|m| m.status() == Some(challenge_status))
        .unwrap_or_else(|| {
            panic!(
                "the carrier sent no {challenge_status}\n{}",
                carrier.report()
            )
        });
    assert!(
        challenge.header(challenge_header).is_some(),
        "the {challenge_status} carries no {challenge_header}:\n{}",
        challenge.text
    );
    assert!(
        invites[0].header(credentials_header).is_none(),
        "the first INVITE was not challenged yet and should carry no {credentials_header}:\n{}",
        invites[0].text
    );
    let credentials = invites[1].header(credentials_header).unwrap_or_else(|| {
        panic!(
            "the INVITE after the {challenge_status} has no {credentials_header} header:\n{}\n{}",
            invites[1].text,
            server.log_tail()
        )
    });
    // Same call, new transaction: same Call-ID and From tag, higher CSeq, new Via branch.
    assert_eq!(
        invites[0].header("Call-ID"),
        invites[1].header("Call-ID"),
        "the authenticated INVITE should belong to the same call (RFC 3261 §22.2)"
    );
    assert_eq!(invites[0].header("From"), invites[1].header("From"));
    let cseq = |m: &TracedMessage| -> u32 {
        m.header("CSeq")
            .and_then(|c| c.split_whitespace().next().and_then(|n| n.parse().ok()))
            .unwrap_or(0)
    };
    assert!(
        cseq(invites[1]) > cseq(invites[0]),
        "the INVITE with credentials needs a higher CSeq ({} then {})",
        cseq(invites[0]),
        cseq(invites[1])
    );
    let branch = |m: &TracedMessage| {
        m.header("Via").and_then(|v| {
            v.split(';')
                .find_map(|p| p.trim().strip_prefix("branch=").map(str::to_string))
        })
    };
    assert_ne!(
        branch(invites[0]),
        branch(invites[1]),
        "the INVITE with credentials is a new transaction and needs a new Via branch"
    );
    let params = digest_params(&credentials);
    ChallengeFlow {
        invites,
        challenge,
        credentials,
        params,
    }
}

impl ChallengeFlow<'_> {
    /// Checks the credentials' fields against the challenge and the request (RFC 2617 §3.2.2).
    fn check_credentials(&self, challenge_header: &str, username: &str) {
        let challenge = digest_params(&self.challenge.header(challenge_header).unwrap_or_default());
        let cred = &self.params;
        let creds = &self.credentials;
        assert_eq!(param(cred, "username"), Some(username), "username: {creds}");
        assert_eq!(
            param(cred, "realm"),
            Some("carrier.example"),
            "the realm must be the challenge's: {creds}"
        );
        assert_eq!(
            param(cred, "nonce"),
            param(&challenge, "nonce"),
            "the nonce must be the challenge's: {creds}"
        );
        if let Some(opaque) = param(&challenge, "opaque") {
            assert_eq!(
                param(cred, "opaque"),
                Some(opaque),
                "the challenge's opaque must come back unchanged (RFC 2617 §3.2.2): {creds}"
            );
        }
        let request_uri = self.invites[1]
            .first_line()
            .split_whitespace()
            .nth(1)
            .unwrap_or("");
        assert_eq!(
            param(cred, "uri"),
            Some(request_uri),
            "digest-uri should be the Request-URI: {creds}"
        );
        assert_eq!(
            param(cred, "qop"),
            Some("auth"),
            "the challenge offered qop=\"auth\": {creds}"
        );
        assert!(
            param(cred, "cnonce").is_some_and(|c| !c.is_empty())
                && param(cred, "nc").is_some_and(|n| n.len() == 8),
            "with qop, cnonce and an 8-hex nc are required (RFC 2617 §3.2.2): {creds}"
        );
        if let Some(alg) = param(cred, "algorithm") {
            assert!(alg.eq_ignore_ascii_case("MD5"), "algorithm: {creds}");
        }
    }

    /// Whether the digest response was computed with `password`.
    fn response_matches(&self, password: &str) -> bool {
        param(&self.params, "response").is_some_and(|r| {
            r.eq_ignore_ascii_case(&expected_digest_response(&self.params, "INVITE", password))
        })
    }
}

// ---------------------------------------------------------------------------------------------
// RTP as the caller heard it
// ---------------------------------------------------------------------------------------------

/// The RTP the server sent to the caller of `sipp`. Waits until nothing new has arrived for
/// 300 ms (on a loaded machine the receiving thread can lag behind the BYE), then keeps the
/// packets that come from the media address of the server's SDP answer, so a stray stream
/// cannot inflate a packet count. The second value describes the stream for failure messages.
fn heard_from_server(rtp: &RtpPeer, sipp: &SippResult) -> (Vec<RtpPacket>, String) {
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut seen = rtp.packet_count();
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let now = rtp.packet_count();
        if now == seen || Instant::now() >= deadline {
            break;
        }
        seen = now;
    }
    let answer = sipp
        .received()
        .find(|m| m.status() == Some(200) && m.cseq_method().as_deref() == Some("INVITE"))
        .unwrap_or_else(|| panic!("no 200 to the INVITE\n{}", sipp.report()));
    let server_media = sdp_audio_addr(answer.body())
        .unwrap_or_else(|| panic!("no audio address in the 200's SDP:\n{}", answer.text));
    let all = rtp.packets();
    let (heard, stray): (Vec<RtpPacket>, Vec<RtpPacket>) =
        all.into_iter().partition(|p| p.from == server_media);
    let ssrcs: std::collections::BTreeSet<u32> = heard.iter().map(|p| p.ssrc).collect();
    let max_gap = heard
        .windows(2)
        .map(|w| w[1].arrival.saturating_duration_since(w[0].arrival))
        .max()
        .unwrap_or_default();
    let seq = match (heard.first(), heard.last()) {
        (Some(a), Some(b)) => format!("seq {}..{}", a.seq, b.seq),
        _ => "no packets".into(),
    };
    let description = format!(
        "{} packets from the server's SDP address {server_media} ({seq}, SSRCs {ssrcs:x?}, \
         largest gap {max_gap:?}); {} from elsewhere{}",
        heard.len(),
        stray.len(),
        stray
            .first()
            .map(|p| format!(" (first from {}, SSRC {:x})", p.from, p.ssrc))
            .unwrap_or_default()
    );
    (heard, description)
}

// ---------------------------------------------------------------------------------------------
// 1. Digest authentication toward a trunk
// ---------------------------------------------------------------------------------------------

#[test]
fn trunk_407_challenge_is_answered_with_proxy_authorization() {
    let callee_rtp = RtpPeer::new();
    let mut carrier = Sipp::uas("uas_challenge_then_answer.xml")
        .set("rtp_port", callee_rtp.port())
        .set("hangup_after_ms", 1000)
        .spawn();
    carrier.wait_listening();
    let prov = format!(
        "{}{}{}",
        tenant_with_prompts(),
        trunk_with_credentials("carrier", carrier.port(), "trunkuser", "trunkpass"),
        number_with_plan(
            "600",
            "auth",
            &format!(
                "  {BRIDGE_TO_CARRIER},\n  {{ blockType = \"HANGUP\", hangupCause = \"DESTINATION_OUT_OF_ORDER\" }},"
            )
        )
    );
    let server = Server::start(&prov, true);
    let caller_rtp = RtpPeer::new();
    let caller = Sipp::uac("uac_announcement.xml", server.sip_addr())
        .service("600")
        .set("rtp_port", caller_rtp.port())
        .run();
    let carrier = carrier.wait();
    carrier.assert_success(&format!(
        "the carrier wants a 407 answered with valid Proxy-Authorization, then hangs up 1 s \
         after answering\n{}",
        server.log_tail()
    ));
    caller.assert_success(&format!("{}\n{}", carrier.report(), server.log_tail()));

    // The carrier's side: 407, ACK, INVITE again with the right credentials.
    let flow = challenge_flow(
        &carrier,
        407,
        "Proxy-Authenticate",
        "Proxy-Authorization",
        &server,
    );
    flow.check_credentials("Proxy-Authenticate", "trunkuser");
    assert!(
        flow.invites[1].header("Authorization").is_none(),
        "a 407 is answered with Proxy-Authorization, not Authorization (RFC 3261 §22.3):\n{}",
        flow.invites[1].text
    );
    assert!(
        flow.response_matches("trunkpass"),
        "the digest response is not MD5 over trunkuser:carrier.example:trunkpass with the \
         challenge's nonce (RFC 2617 §3.2.2): {}",
        flow.credentials
    );
    assert!(
        flow.invites[1]
            .first_line()
            .starts_with("INVITE sip:4930123@"),
        "`4930123@carrier` must call user 4930123 at the trunk: {}",
        flow.invites[1].first_line()
    );
    assert!(
        carrier.sent().any(|m| m.status() == Some(200)),
        "the carrier should have answered\n{}",
        carrier.report()
    );

    // The caller's side: connected, then the server's BYE when the carrier hung up.
    assert_eq!(
        caller
            .final_responses("INVITE")
            .first()
            .and_then(|m| m.status()),
        Some(200),
        "the caller should be connected through the authenticated trunk\n{}",
        caller.report()
    );
    assert!(
        caller.received_request("BYE").is_some(),
        "{}",
        caller.report()
    );

    let cdr = server.cdr_for_call_id(&caller.call_id);
    let all = cdr_text(&cdr);
    let out: Vec<_> = cdr
        .legs
        .iter()
        .filter(|l| l.direction == "outbound")
        .collect();
    assert_eq!(
        out.len(),
        1,
        "one outbound leg: the challenge is part of it, not a leg of its own: {all}"
    );
    assert_eq!(out[0].destination, "4930123@carrier", "{all}");
    assert!(out[0].answer_time.is_some(), "{all}");
    assert_eq!(out[0].sip_status, Some(200), "{all}");
    assert_eq!(
        cdr.variables.get("bridge_result").map(String::as_str),
        Some("answered"),
        "{all}"
    );
    assert!(cdr.answer_time.is_some(), "{all}");
    assert_eq!(cdr.hangup_by, "callee", "{all}");
}

#[test]
fn trunk_refusing_the_credentials_fails_the_bridge_and_the_plan_goes_on() {
    let mut carrier = Sipp::uas("uas_challenge_then_reject.xml").spawn();
    carrier.wait_listening();
    let prov = format!(
        "{}{}{}",
        tenant_with_prompts(),
        trunk_with_credentials("carrier", carrier.port(), "trunkuser", "wrongpass"),
        number_with_plan(
            "601",
            "auth",
            &format!(
                "  {BRIDGE_TO_CARRIER},\n  {{ blockType = \"HANGUP\", hangupCause = \"DESTINATION_OUT_OF_ORDER\" }},"
            )
        )
    );
    let server = Server::start(&prov, true);
    let rtp = RtpPeer::new();
    let caller = Sipp::uac("uac_expect_status.xml", server.sip_addr())
        .service("601")
        .set("rtp_port", rtp.port())
        .run();
    let carrier = carrier.wait();
    carrier.assert_success(&server.log_tail());
    caller.assert_success(&format!("{}\n{}", carrier.report(), server.log_tail()));

    let flow = challenge_flow(
        &carrier,
        407,
        "Proxy-Authenticate",
        "Proxy-Authorization",
        &server,
    );
    flow.check_credentials("Proxy-Authenticate", "trunkuser");
    assert!(
        flow.response_matches("wrongpass") && !flow.response_matches("trunkpass"),
        "the digest response should be computed with the configured (wrong) password: {}",
        flow.credentials
    );
    assert!(
        carrier.sent().any(|m| m.status() == Some(403)),
        "{}",
        carrier.report()
    );

    // The bridge failed; the plan's next block (HANGUP DESTINATION_OUT_OF_ORDER → 502) ran.
    assert_eq!(
        caller
            .final_responses("INVITE")
            .first()
            .and_then(|m| m.status()),
        Some(502),
        "after the failed bridge the plan's HANGUP DESTINATION_OUT_OF_ORDER answers 502 (not \
         the carrier's 403 passed through)\n{}",
        caller.report()
    );
    let cdr = server.cdr_for_call_id(&caller.call_id);
    let all = cdr_text(&cdr);
    assert_eq!(
        cdr.variables.get("bridge_result").map(String::as_str),
        Some("failed"),
        "{all}"
    );
    assert_eq!(cdr.hangup_cause, "DESTINATION_OUT_OF_ORDER", "{all}");
    assert_eq!(cdr.hangup_by, "system", "{all}");
    assert_eq!(cdr.sip_status, Some(502), "{all}");
    let out: Vec<_> = cdr
        .legs
        .iter()
        .filter(|l| l.direction == "outbound")
        .collect();
    assert_eq!(out.len(), 1, "{all}");
    assert!(out[0].answer_time.is_none(), "{all}");
    assert_eq!(out[0].sip_status, Some(403), "{all}");
    assert_eq!(
        out[0].hangup_cause, "CALL_REJECTED",
        "403 maps to CALL_REJECTED (RFC 3398): {all}"
    );
}

#[test]
fn trunk_401_challenge_is_verified_by_the_carrier() {
    // Two carriers that both know trunkuser / trunkpass and check it with SIPp's <verifyauth>;
    // we are configured with the right password for one and a wrong one for the other.
    let good_rtp = RtpPeer::new();
    let mut good = Sipp::uas("uas_www_challenge_verifyauth.xml")
        .set("rtp_port", good_rtp.port())
        .set("hangup_after_ms", 1000)
        .spawn();
    let bad_rtp = RtpPeer::new();
    let mut bad = Sipp::uas("uas_www_challenge_verifyauth.xml")
        .set("rtp_port", bad_rtp.port())
        .set("hangup_after_ms", 1000)
        .spawn();
    good.wait_listening();
    bad.wait_listening();
    let hangup = r##"{ blockType = "HANGUP", hangupCause = "DESTINATION_OUT_OF_ORDER" }"##;
    let prov = format!(
        "{}{}{}{}{}",
        tenant_with_prompts(),
        trunk_with_credentials("carrier", good.port(), "trunkuser", "trunkpass"),
        trunk_with_credentials("badcarrier", bad.port(), "trunkuser", "wrongpass"),
        number_with_plan(
            "610",
            "good",
            &format!("  {BRIDGE_TO_CARRIER},\n  {hangup},")
        ),
        number_with_plan(
            "611",
            "bad",
            &format!(
                "  {},\n  {hangup},",
                BRIDGE_TO_CARRIER.replace("4930123@carrier", "4930123@badcarrier")
            )
        )
    );
    let server = Server::start(&prov, true);

    let rtp = RtpPeer::new();
    let c1 = Sipp::uac("uac_announcement.xml", server.sip_addr())
        .service("610")
        .set("rtp_port", rtp.port())
        .run();
    let good = good.wait();
    good.assert_success(&server.log_tail());
    c1.assert_success(&format!("{}\n{}", good.report(), server.log_tail()));
    let flow = challenge_flow(&good, 401, "WWW-Authenticate", "Authorization", &server);
    flow.check_credentials("WWW-Authenticate", "trunkuser");
    assert!(
        good.sent().any(|m| m.status() == Some(200)),
        "SIPp's verifyauth should accept the credentials made with the right password: {}\n{}",
        flow.credentials,
        good.report()
    );
    assert_eq!(
        c1.final_responses("INVITE")
            .first()
            .and_then(|m| m.status()),
        Some(200),
        "{}",
        c1.report()
    );

    let c2 = Sipp::uac("uac_expect_status.xml", server.sip_addr())
        .service("611")
        .set("rtp_port", rtp.port())
        .run();
    let bad = bad.wait();
    bad.assert_success(&server.log_tail());
    c2.assert_success(&format!("{}\n{}", bad.report(), server.log_tail()));
    let flow = challenge_flow(&bad, 401, "WWW-Authenticate", "Authorization", &server);
    flow.check_credentials("WWW-Authenticate", "trunkuser");
    assert!(
        bad.sent().any(|m| m.status() == Some(403)),
        "SIPp's verifyauth should refuse credentials made with the wrong password\n{}",
        bad.report()
    );
    assert_eq!(
        c2.final_responses("INVITE")
            .first()
            .and_then(|m| m.status()),
        Some(502),
        "{}",
        c2.report()
    );
    let cdr = server.cdr_for_call_id(&c2.call_id);
    assert_eq!(
        cdr.variables.get("bridge_result").map(String::as_str),
        Some("failed"),
        "{}",
        cdr_text(&cdr)
    );
}

// ---------------------------------------------------------------------------------------------
// 2. SAY (espeak-ng)
// ---------------------------------------------------------------------------------------------

/// What espeak-ng itself makes of `text` with the product's default voice: the reference for
/// the length and loudness envelope of what the caller should hear. Fails (never skips) when
/// espeak-ng is missing: SAY is a feature the suite must check.
fn espeak_reference(text: &str) -> Wav {
    let path = std::env::temp_dir().join(format!(
        "callplane-e2e-say-{}-{}.wav",
        std::process::id(),
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
    ));
    let mut child = Command::new("espeak-ng")
        .args(["-v", "en", "-w"])
        .arg(&path)
        .arg("--stdin")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "espeak-ng is needed for SAY and cannot be run ({e}); install it: \
                 apt-get install espeak-ng (.ci/run and scripts/test.sh do)"
            )
        });
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write text to espeak-ng");
    let out = child.wait_with_output().expect("wait for espeak-ng");
    assert!(
        out.status.success(),
        "espeak-ng failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let wav = read_wav(&path);
    let _ = std::fs::remove_file(&path);
    wav
}

fn rms(x: &[i16]) -> f64 {
    if x.is_empty() {
        return 0.0;
    }
    (x.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>() / x.len() as f64).sqrt()
}

/// RMS of each 20 ms of `samples` at `rate`.
fn envelope_20ms(samples: &[i16], rate: u32) -> Vec<f64> {
    samples.chunks((rate / 50) as usize).map(rms).collect()
}

fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len().min(b.len());
    if n < 2 {
        return 0.0;
    }
    let ma = a[..n].iter().sum::<f64>() / n as f64;
    let mb = b[..n].iter().sum::<f64>() / n as f64;
    let (mut num, mut da, mut db) = (0.0, 0.0, 0.0);
    for i in 0..n {
        num += (a[i] - ma) * (b[i] - mb);
        da += (a[i] - ma) * (a[i] - ma);
        db += (b[i] - mb) * (b[i] - mb);
    }
    if da == 0.0 || db == 0.0 {
        0.0
    } else {
        num / (da.sqrt() * db.sqrt())
    }
}

/// Best correlation of two loudness envelopes, shifted against each other by up to 10 frames.
fn best_envelope_correlation(heard: &[f64], reference: &[f64]) -> f64 {
    (0..=10)
        .flat_map(|s| {
            [
                pearson(&heard[s.min(heard.len())..], reference),
                pearson(heard, &reference[s.min(reference.len())..]),
            ]
        })
        .fold(f64::MIN, f64::max)
}

/// The `.wav` files in the TTS cache (not the temporary ones being written).
fn tts_cache_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    let name = p.file_name().unwrap_or_default().to_string_lossy();
                    name.ends_with(".wav") && !name.ends_with(".tmp.wav")
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// One SAY call: checks what the caller heard against espeak-ng's own rendering and returns
/// the number of packets.
fn say_call(server: &Server, number: &str, reference: &Wav, label: &str) -> usize {
    let rtp = RtpPeer::new();
    let sipp = Sipp::uac("uac_announcement.xml", server.sip_addr())
        .service(number)
        .set("rtp_port", rtp.port())
        .run();
    sipp.assert_success(&server.log_tail());
    let bye = sipp
        .received_request("BYE")
        .unwrap_or_else(|| panic!("{label}: no BYE after SAY\n{}", sipp.report()));
    let reason = bye.header("Reason").unwrap_or_default();
    assert_eq!(
        q850_cause(&reason),
        Some(16),
        "{label}: the plan's HANGUP NORMAL_CLEARING should follow SAY; BYE Reason {reason:?}"
    );

    let (packets, stream) = heard_from_server(&rtp, &sipp);
    let heard = Duration::from_millis(20 * packets.len() as u64);
    assert!(
        heard > Duration::from_millis(500) && heard < Duration::from_secs(5),
        "{label}: \"Hello from Callplane\" should be 0.5–5 s of speech; the caller got {} \
         packets ({heard:?}): {stream}\n{}",
        packets.len(),
        server.log_tail()
    );
    assert!(
        packets.iter().all(|p| p.pt == 0 && p.payload.len() == 160),
        "{label}: SAY audio should be PCMU, 160 samples a packet"
    );
    let expected_frames = (reference.duration().as_secs_f64() * 50.0).round() as i64;
    let got = packets.len() as i64;
    assert!(
        (got - expected_frames).abs() <= expected_frames / 10 + 2,
        "{label}: espeak-ng speaks the text in {:?} = {expected_frames} frames of 20 ms; the \
         caller got {got}: {stream}",
        reference.duration()
    );
    let audio = pcm_of(&packets);
    let level = rms(&audio);
    assert!(
        level > 500.0,
        "{label}: the SAY audio is (nearly) silent: RMS {level:.0} of 32767 (espeak-ng's own \
         rendering has {:.0})",
        rms(&reference.samples)
    );
    let corr = best_envelope_correlation(
        &envelope_20ms(&audio, 8000),
        &envelope_20ms(&reference.samples, reference.rate),
    );
    println!(
        "  SAY {label}: {got} packets (espeak-ng: {expected_frames}), RMS {level:.0} \
         (espeak-ng: {:.0}), envelope correlation {corr:.2}",
        rms(&reference.samples)
    );
    assert!(
        corr > 0.8,
        "{label}: the loudness over time of what the caller heard does not follow espeak-ng's \
         rendering of the text (correlation {corr:.2})"
    );
    let cdr = server.cdr_for_call_id(&sipp.call_id);
    assert_eq!(cdr.hangup_cause, "NORMAL_CLEARING", "{}", cdr_text(&cdr));
    assert_eq!(cdr.hangup_by, "system", "{}", cdr_text(&cdr));
    packets.len()
}

#[test]
fn say_speaks_the_text_then_hangs_up_and_caches_the_speech() {
    const TEXT: &str = "Hello from Callplane";
    let reference = espeak_reference(TEXT);
    let prov = format!(
        "{}{}",
        tenant_with_prompts(),
        number_with_plan(
            "700",
            "say",
            &format!(
                "  {{ blockType = \"SAY\", text = \"{TEXT}\" }},\n  \
                 {{ blockType = \"HANGUP\", hangupCause = \"NORMAL_CLEARING\" }},"
            )
        )
    );
    let server = Server::start(&prov, true);
    assert!(
        !server
            .log_lines()
            .iter()
            .any(|l| l.contains("espeak-ng not found")),
        "the server did not find espeak-ng although the test did\n{}",
        server.log_tail()
    );
    let cache_dir = server.dir().join("data").join("tts-cache");

    let first = say_call(&server, "700", &reference, "first call");
    let files = tts_cache_files(&cache_dir);
    assert_eq!(
        files.len(),
        1,
        "after one SAY the speech should be cached as one WAV in {}; found {files:?}\n{}",
        cache_dir.display(),
        server.log_tail()
    );
    let cached = read_wav(&files[0]);
    let diff = (cached.duration().as_secs_f64() - reference.duration().as_secs_f64()).abs();
    assert!(
        diff < 0.1,
        "the cached file {} ({:?}) should be espeak-ng's rendering of the text ({:?})",
        files[0].display(),
        cached.duration(),
        reference.duration()
    );
    let mtime = std::fs::metadata(&files[0])
        .and_then(|m| m.modified())
        .expect("mtime of the cached speech");

    // The same text again: played from the cache, the file is neither duplicated nor rewritten.
    let second = say_call(&server, "700", &reference, "second call");
    assert!(
        second.abs_diff(first) <= 2,
        "the same text should sound the same length twice: {first} then {second} packets"
    );
    let files_after = tts_cache_files(&cache_dir);
    assert_eq!(
        files_after, files,
        "the second SAY of the same text should reuse the cached file"
    );
    let mtime_after = std::fs::metadata(&files[0])
        .and_then(|m| m.modified())
        .expect("mtime of the cached speech");
    assert_eq!(
        mtime_after, mtime,
        "the cached speech was generated again for the same text"
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Standard announcements
// ---------------------------------------------------------------------------------------------

/// A prompt of the standard set, failing clearly when the set is not installed.
fn standard_prompt(name: &str) -> Wav {
    let path = Path::new(SOUNDS_DIR).join(format!("{name}.wav"));
    assert!(
        path.is_file(),
        "{} is missing: the standard prompt set is needed; install it: apt-get install \
         asterisk-core-sounds-en-wav (.ci/run and scripts/test.sh do)",
        path.display()
    );
    let w = read_wav(&path);
    assert_eq!(w.rate, 8000, "{} is not 8 kHz", path.display());
    w
}

#[test]
fn standard_announcement_plays_the_prompt_at_its_length() {
    // "Weasels have eaten our phone system", 2.95 s.
    let weasels = standard_prompt("tt-weasels");
    let prov = format!(
        "{}{}",
        tenant_with_prompts(),
        number_with_plan(
            "710",
            "standard",
            r##"  { blockType = "ANNOUNCEMENT", standardAnnouncement = true, announcementName = "tt-weasels" },
  { blockType = "HANGUP", hangupCause = "NORMAL_CLEARING" },"##
        )
    );
    let server = Server::start(&prov, true);
    let rtp = RtpPeer::new();
    let sipp = Sipp::uac("uac_announcement.xml", server.sip_addr())
        .service("710")
        .set("rtp_port", rtp.port())
        .run();
    sipp.assert_success(&server.log_tail());
    assert!(sipp.received_request("BYE").is_some(), "{}", sipp.report());

    let (packets, stream) = heard_from_server(&rtp, &sipp);
    let expected = weasels.samples.len().div_ceil(160) as i64;
    let got = packets.len() as i64;
    assert!(
        (got - expected).abs() * 10 <= expected,
        "tt-weasels.wav is {:?} = {expected} packets of 20 ms; the caller got {got} (more than \
         10% off): {stream}\n{}",
        weasels.duration(),
        server.log_tail()
    );
    assert!(
        packets.iter().all(|p| p.pt == 0 && p.payload.len() == 160),
        "the announcement should be PCMU, 160 samples a packet"
    );
    let audio = pcm_of(&packets);
    let (offset, corr) = find_audio(&audio, &weasels.samples).unwrap_or_else(|| {
        panic!(
            "received {} samples, fewer than the prompt's {}",
            audio.len(),
            weasels.samples.len()
        )
    });
    println!("  tt-weasels: {got} packets (WAV: {expected}), correlation {corr:.3}");
    assert!(
        corr > 0.95,
        "the received audio is not tt-weasels.wav: best correlation {corr:.3} at sample {offset}"
    );
    let cdr = server.cdr_for_call_id(&sipp.call_id);
    assert_eq!(cdr.hangup_cause, "NORMAL_CLEARING", "{}", cdr_text(&cdr));
}

#[test]
fn missing_standard_prompt_is_skipped_and_the_next_block_plays() {
    let welcome = prompt("welcome");
    let prov = format!(
        "{}{}",
        tenant_with_prompts(),
        number_with_plan(
            "711",
            "missing",
            r##"  { blockType = "ANNOUNCEMENT", standardAnnouncement = true, announcementName = "no-such-prompt" },
  { blockType = "ANNOUNCEMENT", announcementName = "welcome" },
  { blockType = "HANGUP", hangupCause = "NORMAL_CLEARING" },"##
        )
    );
    let server = Server::start(&prov, true);
    let rtp = RtpPeer::new();
    let sipp = Sipp::uac("uac_announcement.xml", server.sip_addr())
        .service("711")
        .set("rtp_port", rtp.port())
        .run();
    sipp.assert_success(&server.log_tail());

    // welcome.wav is what the caller hears, from the start, and nothing else.
    let (packets, stream) = heard_from_server(&rtp, &sipp);
    let expected = welcome.samples.len().div_ceil(160);
    assert!(
        packets.len() >= expected && packets.len() <= expected + 10,
        "only welcome.wav ({expected} packets) should be heard; the caller got {}: {stream}\n{}",
        packets.len(),
        server.log_tail()
    );
    let audio = pcm_of(&packets);
    let (offset, corr) = find_audio(&audio, &welcome.samples)
        .unwrap_or_else(|| panic!("received {} samples, fewer than welcome.wav", audio.len()));
    assert!(
        corr > 0.95,
        "the announcement after the missing prompt should be welcome.wav: best correlation \
         {corr:.3} at sample {offset}"
    );
    assert!(
        offset < 160 * 10,
        "welcome.wav should start at once, not after {} ms of something else",
        offset / 8
    );

    // No silent wait where the missing prompt would have been: answer to BYE takes about as
    // long as welcome.wav.
    let answered = sipp
        .received()
        .find(|m| m.status() == Some(200) && m.cseq_method().as_deref() == Some("INVITE"))
        .and_then(|m| m.time)
        .expect("the 200 to the INVITE, with a time");
    let bye = sipp
        .received_request("BYE")
        .and_then(|m| m.time)
        .expect("the server's BYE, with a time");
    let call = bye - answered;
    let prompt_s = welcome.duration().as_secs_f64();
    assert!(
        call < prompt_s + 1.0,
        "answer to BYE took {call:.2} s for a {prompt_s:.2} s prompt: the missing standard \
         prompt should be skipped, not waited on\n{}",
        server.log_tail()
    );
    assert!(
        server
            .log_lines()
            .iter()
            .any(|l| l.contains("no-such-prompt")),
        "the server log should name the missing standard prompt\n{}",
        server.log_tail()
    );
    let cdr = server.cdr_for_call_id(&sipp.call_id);
    assert_eq!(cdr.hangup_cause, "NORMAL_CLEARING", "{}", cdr_text(&cdr));
    assert_eq!(cdr.hangup_by, "system", "{}", cdr_text(&cdr));
}
