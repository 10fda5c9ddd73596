//! Hardening against an attacker, end to end with the real binary: idle TCP connections to
//! the SIP and HTTP ports under a 1024-descriptor limit do not stop calls or the API and are
//! closed by the server; a captured digest answer cannot be replayed, from another address or
//! twice; a nonce fetched by one address cannot lock out another; listeners that cannot bind
//! stop the start; UDP or TCP can be turned off; `maxAuthFailures = 0` never locks out; the
//! offered digest algorithms and the version banner are configurable; control characters from
//! the network are escaped in the log.
//!
//! The SIP here is written by hand on real sockets (UDP from several loopback addresses, TCP
//! bound to a chosen source), so that the same `Authorization` can be sent again unchanged.

mod common;

use common::http;
use common::*;
use md5::{Digest, Md5};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ADMIN_KEY: &str = "e2e-hardening-admin-key-0123";

fn users() -> String {
    format!(
        "[[apiKeys]]\nname = \"ops\"\nrealm = \"admin\"\nkey = \"{ADMIN_KEY}\"\n\n\
         [[sipUsers]]\ntenant = \"t1\"\nusername = \"alice\"\npassword = \"secret\"\n\n\
         [[sipUsers]]\ntenant = \"t1\"\nusername = \"bob\"\npassword = \"hunter2\"\n\n"
    )
}

fn provisioning() -> String {
    format!(
        "{}{}{}{}",
        tenant_with_prompts(),
        users(),
        number_with_plan("100", "main", WELCOME_THEN_CLEARING),
        number_with_plan(
            "300",
            "busy",
            r##"  { blockType = "HANGUP", hangupCause = "USER_BUSY" },"##
        )
    )
}

fn server(opts: ServerOptions) -> Server {
    Server::start_with(&provisioning(), opts)
}

fn with_server_lines(lines: &str) -> ServerOptions {
    ServerOptions {
        extra_server: lines.into(),
        ..ServerOptions::default()
    }
}

fn md5_hex(s: &str) -> String {
    Md5::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn lo(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, n)
}

// ---------------------------------------------------------------------------------------------
// Raw SIP over UDP
// ---------------------------------------------------------------------------------------------

/// A SIP client on its own UDP socket at a chosen loopback address.
struct Phone {
    sock: UdpSocket,
    local: SocketAddr,
    server: SocketAddr,
    seq: u32,
}

impl Phone {
    fn at(ip: Ipv4Addr, server: SocketAddr) -> Phone {
        let sock = UdpSocket::bind((ip, 0)).expect("bind a phone socket");
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let local = sock.local_addr().unwrap();
        Phone {
            sock,
            local,
            server,
            seq: 0,
        }
    }

    fn next(&mut self) -> u32 {
        self.seq += 1;
        self.seq
    }

    fn send(&self, msg: &str) {
        self.sock.send_to(msg.as_bytes(), self.server).unwrap();
    }

    fn send_bytes(&self, msg: &[u8]) {
        self.sock.send_to(msg, self.server).unwrap();
    }

    /// The next final response (1xx skipped), within 5 s.
    fn final_response(&self) -> TracedMessage {
        self.try_final_response(Duration::from_secs(5))
            .unwrap_or_else(|| panic!("no final response within 5 s at {}", self.local))
    }

    /// The next final response (1xx skipped) if one comes within `within`.
    fn try_final_response(&self, within: Duration) -> Option<TracedMessage> {
        let deadline = Instant::now() + within;
        let mut buf = vec![0u8; 65536];
        while Instant::now() < deadline {
            let Ok((n, _)) = self.sock.recv_from(&mut buf) else {
                continue;
            };
            let text = String::from_utf8_lossy(&buf[..n]).replace("\r\n", "\n");
            let m = TracedMessage {
                sent: false,
                time: None,
                text,
            };
            if m.status().is_some_and(|s| s >= 200) {
                return Some(m);
            }
        }
        None
    }

    /// Sends an INVITE to `target` (with a Proxy-Authorization if given), and ACKs the final
    /// answer if one comes within `within` (a non-2xx one: same branch, the answer's To).
    fn invite(
        &mut self,
        target: &str,
        call_id: &str,
        auth: Option<&str>,
        within: Duration,
    ) -> Option<TracedMessage> {
        let n = self.next();
        let local = self.local;
        let auth = auth
            .map(|a| format!("Proxy-Authorization: {a}\r\n"))
            .unwrap_or_default();
        let sdp = format!(
            "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
             m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n",
            ip = local.ip()
        );
        let branch = format!("z9hG4bK-inv-{call_id}-{n}");
        self.send(&format!(
            "INVITE {target} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {local};branch={branch};rport\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:alice@{local}>;tag=a{call_id}\r\n\
             To: <{target}>\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: {n} INVITE\r\n\
             Contact: <sip:alice@{local}>\r\n\
             {auth}\
             Content-Type: application/sdp\r\n\
             Content-Length: {}\r\n\r\n{sdp}",
            sdp.len()
        ));
        let r = self.try_final_response(within)?;
        let to = r.header("To").unwrap_or_default();
        self.send(&format!(
            "ACK {target} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {local};branch={branch};rport\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:alice@{local}>;tag=a{call_id}\r\n\
             To: {to}\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: {n} ACK\r\n\
             Content-Length: 0\r\n\r\n"
        ));
        Some(r)
    }

    /// Sends a REGISTER for `user` (binding this phone's address) and returns the final answer.
    fn register(&mut self, user: &str, call_id: &str, auth: Option<&str>) -> TracedMessage {
        let n = self.next();
        let local = self.local;
        let auth = auth
            .map(|a| format!("Authorization: {a}\r\n"))
            .unwrap_or_default();
        self.send(&format!(
            "REGISTER sip:{srv} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {local};branch=z9hG4bK-reg-{call_id}-{n};rport\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:{user}@{srv}>;tag=f{n}\r\n\
             To: <sip:{user}@{srv}>\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: {n} REGISTER\r\n\
             Contact: <sip:{user}@{local}>\r\n\
             Expires: 300\r\n\
             {auth}\
             Content-Length: 0\r\n\r\n",
            srv = self.server,
        ));
        self.final_response()
    }
}

/// One digest challenge's parameters.
#[derive(Debug, Clone)]
struct Challenge {
    realm: String,
    nonce: String,
    opaque: Option<String>,
    algorithm: String,
}

fn param(h: &str, name: &str) -> Option<String> {
    let h = h.trim_start_matches("Digest").trim_start();
    for part in h.split(',') {
        let (k, v) = part.trim().split_once('=')?;
        if k.trim().eq_ignore_ascii_case(name) {
            return Some(v.trim().trim_matches('"').to_string());
        }
    }
    None
}

fn challenges(m: &TracedMessage, header: &str) -> Vec<Challenge> {
    m.headers(header)
        .iter()
        .map(|h| Challenge {
            realm: param(h, "realm").expect("realm"),
            nonce: param(h, "nonce").expect("nonce"),
            opaque: param(h, "opaque"),
            algorithm: param(h, "algorithm").unwrap_or_else(|| "MD5".into()),
        })
        .collect()
}

/// The MD5 challenge of a 401/407.
fn md5_challenge(m: &TracedMessage, header: &str) -> Challenge {
    challenges(m, header)
        .into_iter()
        .find(|c| c.algorithm.eq_ignore_ascii_case("MD5"))
        .unwrap_or_else(|| panic!("no MD5 challenge in\n{}", m.text))
}

/// An MD5 digest answer with qop=auth.
fn answer(c: &Challenge, user: &str, pass: &str, method: &str, uri: &str, nc: u32) -> String {
    let cnonce = "0a4f113b";
    let nc = format!("{nc:08x}");
    let ha1 = md5_hex(&format!("{user}:{}:{pass}", c.realm));
    let ha2 = md5_hex(&format!("{method}:{uri}"));
    let response = md5_hex(&format!("{ha1}:{}:{nc}:{cnonce}:auth:{ha2}", c.nonce));
    let opaque = c
        .opaque
        .as_ref()
        .map(|o| format!(", opaque=\"{o}\""))
        .unwrap_or_default();
    format!(
        "Digest username=\"{user}\", realm=\"{}\", nonce=\"{}\", uri=\"{uri}\", \
         response=\"{response}\", algorithm=MD5, qop=auth, nc={nc}, cnonce=\"{cnonce}\"{opaque}",
        c.realm, c.nonce
    )
}

fn register_uri(server: SocketAddr) -> String {
    format!("sip:{server}")
}

/// REGISTER with a fresh challenge and the given password: the final status.
fn register_fresh(phone: &mut Phone, user: &str, pass: &str, call_id: &str) -> u16 {
    let r = phone.register(user, call_id, None);
    assert_eq!(
        r.status(),
        Some(401),
        "a first REGISTER is challenged\n{}",
        r.text
    );
    let c = md5_challenge(&r, "WWW-Authenticate");
    let a = answer(&c, user, pass, "REGISTER", &register_uri(phone.server), 1);
    phone.register(user, call_id, Some(&a)).status().unwrap()
}

// ---------------------------------------------------------------------------------------------
// Replayed credentials
// ---------------------------------------------------------------------------------------------

#[test]
fn a_captured_register_authorization_cannot_be_replayed() {
    let server = server(ServerOptions::default());
    let mut alice = Phone::at(lo(1), server.sip_addr());
    let uri = register_uri(server.sip_addr());

    let r = alice.register("alice", "reg-alice", None);
    assert_eq!(r.status(), Some(401), "{}", r.text);
    let c = md5_challenge(&r, "WWW-Authenticate");
    let captured = answer(&c, "alice", "secret", "REGISTER", &uri, 1);
    let ok = alice.register("alice", "reg-alice", Some(&captured));
    assert_eq!(ok.status(), Some(200), "alice registers\n{}", ok.text);

    // The attacker sends the captured header unchanged from another address, with its own
    // Contact and Call-ID: a new challenge, not a binding.
    let mut thief = Phone::at(lo(2), server.sip_addr());
    let stolen = thief.register("alice", "reg-thief", Some(&captured));
    assert_eq!(
        stolen.status(),
        Some(401),
        "a replayed Authorization from another address must be refused with a new \
         challenge\n{}\n{}",
        stolen.text,
        server.log_tail()
    );
    let fresh = md5_challenge(&stolen, "WWW-Authenticate");
    assert_ne!(
        fresh.nonce, c.nonce,
        "the new challenge carries a new nonce"
    );

    // The same (nonce, nc) again from alice's own address: refused too.
    let again = alice.register("alice", "reg-alice", Some(&captured));
    assert_eq!(
        again.status(),
        Some(401),
        "a reused (nonce, nc) must be refused\n{}",
        again.text
    );
    // The next nc on the same nonce is what a real phone sends: accepted.
    let next = answer(&c, "alice", "secret", "REGISTER", &uri, 2);
    let ok2 = alice.register("alice", "reg-alice", Some(&next));
    assert_eq!(ok2.status(), Some(200), "nc=2 on the nonce\n{}", ok2.text);

    // Only alice's own address is bound: her Contact, not the thief's.
    let contacts = ok2.headers("Contact").join(" ");
    assert!(
        contacts.contains(&alice.local.to_string()) && !contacts.contains(&thief.local.to_string()),
        "the binding must be alice's own phone only; got {contacts}"
    );
}

#[test]
fn a_captured_invite_proxy_authorization_cannot_be_replayed_from_elsewhere() {
    let server = server(ServerOptions {
        trusted: false,
        ..ServerOptions::default()
    });
    let target = format!("sip:300@{}", server.sip_addr());
    let invite = |phone: &mut Phone, call_id: &str, auth: Option<&str>| -> TracedMessage {
        phone
            .invite(&target, call_id, auth, Duration::from_secs(5))
            .unwrap_or_else(|| panic!("no final answer to INVITE {call_id}"))
    };

    let mut alice = Phone::at(lo(1), server.sip_addr());
    let first = invite(&mut alice, "inv-alice", None);
    assert_eq!(first.status(), Some(407), "{}", first.text);
    let c = md5_challenge(&first, "Proxy-Authenticate");
    let captured = answer(&c, "alice", "secret", "INVITE", &target, 1);
    let authed = invite(&mut alice, "inv-alice", Some(&captured));
    assert_eq!(
        authed.status(),
        Some(486),
        "the authenticated INVITE runs the plan (HANGUP USER_BUSY)\n{}\n{}",
        authed.text,
        server.log_tail()
    );

    let mut thief = Phone::at(lo(2), server.sip_addr());
    let stolen = invite(&mut thief, "inv-thief", Some(&captured));
    assert_eq!(
        stolen.status(),
        Some(407),
        "the captured Proxy-Authorization from another address must be challenged\n{}",
        stolen.text
    );
}

// ---------------------------------------------------------------------------------------------
// Failed-INVITE limit (the memory side of a flood is in e2e_flood.rs)
// ---------------------------------------------------------------------------------------------

const WITHIN: Duration = Duration::from_millis(1500);

#[test]
fn a_source_over_its_failed_invite_limit_is_dropped_but_calls_that_work_go_on() {
    let server = server(ServerOptions {
        extra_server: "failedInviteLimit = 5\nfailedInvitesHeld = 0\n".into(),
        ..ServerOptions::default()
    });
    let unknown = format!("sip:999@{}", server.sip_addr());
    let busy = format!("sip:300@{}", server.sip_addr());
    let mut scanner = Phone::at(lo(60), server.sip_addr());
    for i in 0..5 {
        let r = scanner.invite(&unknown, &format!("scan-{i}"), None, WITHIN);
        assert_eq!(
            r.as_ref().and_then(TracedMessage::status),
            Some(404),
            "failed INVITE {i} of 5 is answered\n{}",
            server.log_tail()
        );
    }
    // The sixth that would fail is dropped: no answer at all, not even a 100 Trying.
    assert!(
        scanner.invite(&unknown, "scan-5", None, WITHIN).is_none(),
        "an INVITE over the limit must go unanswered"
    );
    // The same source calling a number that exists still gets its call run.
    let r = scanner.invite(&busy, "scan-busy", None, Duration::from_secs(5));
    assert_eq!(
        r.as_ref().and_then(TracedMessage::status),
        Some(486),
        "an INVITE that would succeed is not dropped\n{}",
        server.log_tail()
    );
    // Another source is not affected.
    let mut other = Phone::at(lo(61), server.sip_addr());
    let r = other.invite(&unknown, "other-0", None, WITHIN);
    assert_eq!(r.as_ref().and_then(TracedMessage::status), Some(404));

    assert_eq!(
        server.metric("callplane_sip_failed_invites_dropped_total"),
        1.0
    );
    let logged = server
        .log_lines()
        .iter()
        .filter(|l| l.contains("INVITEs that would fail dropped"))
        .count();
    assert_eq!(logged, 1, "the drop is logged once\n{}", server.log_tail());
    // No CDR for the dropped INVITE; one for each answered one.
    let cdrs = read_cdrs(&server.db()).unwrap();
    assert!(
        !cdrs.iter().any(|c| c.sip_call_id == "scan-5"),
        "{}",
        format_cdrs(&cdrs)
    );
    for id in ["scan-0", "scan-4", "scan-busy", "other-0"] {
        server.cdr_for_call_id(id);
    }
}

#[test]
fn a_phone_that_authenticates_every_call_never_reaches_the_failed_invite_limit() {
    let server = server(ServerOptions {
        trusted: false,
        extra_server: "failedInviteLimit = 3\nfailedInvitesHeld = 0\n".into(),
        ..ServerOptions::default()
    });
    let busy = format!("sip:300@{}", server.sip_addr());
    let mut alice = Phone::at(lo(62), server.sip_addr());
    // Each call is challenged (a failure) and then authenticated (its token given back).
    for i in 0..8 {
        let id = format!("alice-{i}");
        let r = alice
            .invite(&busy, &id, None, WITHIN)
            .unwrap_or_else(|| panic!("call {i} is challenged\n{}", server.log_tail()));
        assert_eq!(r.status(), Some(407), "{}", r.text);
        let c = md5_challenge(&r, "Proxy-Authenticate");
        let a = answer(&c, "alice", "secret", "INVITE", &busy, 1);
        let r = alice.invite(&busy, &id, Some(&a), WITHIN);
        assert_eq!(
            r.as_ref().and_then(TracedMessage::status),
            Some(486),
            "authenticated call {i}\n{}",
            server.log_tail()
        );
    }
    // A scanner without credentials is stopped after 3; a nonce it was given earlier, answered
    // with the right password, still gets its call through (it would not fail).
    let mut scanner = Phone::at(lo(63), server.sip_addr());
    let mut nonce = None;
    for i in 0..3 {
        let r = scanner.invite(&busy, &format!("scan-{i}"), None, WITHIN);
        assert_eq!(r.as_ref().and_then(TracedMessage::status), Some(407));
        nonce = r.map(|r| md5_challenge(&r, "Proxy-Authenticate"));
    }
    assert!(scanner.invite(&busy, "scan-3", None, WITHIN).is_none());
    let a = answer(&nonce.unwrap(), "alice", "secret", "INVITE", &busy, 1);
    let r = scanner.invite(&busy, "scan-auth", Some(&a), WITHIN);
    assert_eq!(
        r.as_ref().and_then(TracedMessage::status),
        Some(486),
        "an authenticated INVITE from a source over its limit is not dropped\n{}",
        server.log_tail()
    );
    assert_eq!(
        server.metric("callplane_sip_failed_invites_dropped_total"),
        1.0
    );
}

#[test]
fn failed_invite_limit_zero_never_drops() {
    let server = server(ServerOptions {
        extra_server: "failedInviteLimit = 0\nfailedInvitesHeld = 0\n".into(),
        ..ServerOptions::default()
    });
    let unknown = format!("sip:999@{}", server.sip_addr());
    let mut scanner = Phone::at(lo(64), server.sip_addr());
    for i in 0..30 {
        let r = scanner.invite(&unknown, &format!("scan-{i}"), None, WITHIN);
        assert_eq!(
            r.as_ref().and_then(TracedMessage::status),
            Some(404),
            "INVITE {i}"
        );
    }
    assert_eq!(
        server.metric("callplane_sip_failed_invites_dropped_total"),
        0.0
    );
}

// ---------------------------------------------------------------------------------------------
// Lock-out
// ---------------------------------------------------------------------------------------------

fn lockout_server(max_auth_failures: u32, extra_server: &str) -> Server {
    server(ServerOptions {
        max_auth_failures,
        extra_server: extra_server.into(),
        ..ServerOptions::default()
    })
}

/// `n` REGISTERs of `user` with wrong passwords, each at a fresh nonce: each must get 403.
fn fail_logins(phone: &mut Phone, user: &str, n: u32, call_id: &str) {
    for i in 0..n {
        assert_eq!(
            register_fresh(phone, user, &format!("wrong{i}"), call_id),
            403,
            "wrong password {i} for {user}"
        );
    }
}

#[test]
fn a_nonce_fetched_elsewhere_cannot_lock_out_an_address() {
    let server = lockout_server(3, "");
    let uri = register_uri(server.sip_addr());
    // The attacker fetches a nonce at its own address…
    let mut attacker = Phone::at(lo(3), server.sip_addr());
    let r = attacker.register("alice", "atk", None);
    let c = md5_challenge(&r, "WWW-Authenticate");
    // …and sends wrong passwords with it under the victim's address (as a forged source
    // would). Each is a fresh challenge for the victim; none counts against it.
    let mut victim = Phone::at(lo(2), server.sip_addr());
    for i in 0..6 {
        let a = answer(&c, "alice", &format!("guess{i}"), "REGISTER", &uri, i + 1);
        let r = victim.register("alice", "forged", Some(&a));
        assert_eq!(
            r.status(),
            Some(401),
            "a nonce issued to another address is only a reason for a new challenge \
             (attempt {i})\n{}",
            r.text
        );
    }
    assert_eq!(
        register_fresh(&mut victim, "alice", "secret", "victim"),
        200,
        "the victim's address is not locked out\n{}",
        server.log_tail()
    );
    // Real failures at one's own nonces still lock out (the policy works).
    fail_logins(&mut attacker, "alice", 3, "atk2");
    let blocked = attacker.register("alice", "atk3", None);
    assert_eq!(blocked.status(), Some(403), "{}", blocked.text);
    assert!(blocked.header("WWW-Authenticate").is_none());
}

#[test]
fn per_source_and_user_lockout_spares_other_users_of_the_address() {
    let server = lockout_server(3, "authLockout = \"sourceUser\"\n");
    let mut office = Phone::at(lo(4), server.sip_addr());
    fail_logins(&mut office, "alice", 3, "a");
    // Before credentials the user is unknown, so the challenge comes; alice's right password
    // is refused all the same while she is locked out at this address.
    assert_eq!(
        register_fresh(&mut office, "alice", "secret", "a2"),
        403,
        "alice is locked out at this address"
    );
    assert_eq!(
        register_fresh(&mut office, "bob", "hunter2", "b"),
        200,
        "bob, at the same address, is not\n{}",
        server.log_tail()
    );
}

#[test]
fn per_source_lockout_is_the_default_and_blocks_the_address() {
    let server = lockout_server(3, "");
    let mut office = Phone::at(lo(4), server.sip_addr());
    fail_logins(&mut office, "alice", 3, "a");
    let r = office.register("bob", "b", None);
    assert_eq!(
        r.status(),
        Some(403),
        "with authLockout = \"source\" (the default) the whole address is locked out"
    );
}

#[test]
fn max_auth_failures_zero_never_locks_out() {
    let server = lockout_server(0, "");
    let mut phone = Phone::at(lo(1), server.sip_addr());
    fail_logins(&mut phone, "alice", 8, "z");
    assert_eq!(register_fresh(&mut phone, "alice", "secret", "z"), 200);
}

// ---------------------------------------------------------------------------------------------
// Challenges and banner
// ---------------------------------------------------------------------------------------------

#[test]
fn digest_algorithms_setting_controls_the_challenges_offered() {
    let server1 = server(ServerOptions::default());
    let mut phone = Phone::at(lo(1), server1.sip_addr());
    let r = phone.register("alice", "d1", None);
    let algs: Vec<String> = challenges(&r, "WWW-Authenticate")
        .into_iter()
        .map(|c| c.algorithm.to_ascii_uppercase())
        .collect();
    assert_eq!(algs, vec!["MD5", "SHA-256"], "default: both, MD5 first");
    // The default banner names the product.
    let banner = r.header("Server").or_else(|| r.header("User-Agent"));
    assert!(
        banner.as_deref().is_some_and(|b| b.contains("Callplane")),
        "default banner: {banner:?}\n{}",
        r.text
    );

    let server2 = server(with_server_lines(
        "digestAlgorithms = [\"MD5\"]\nuserAgent = \"\"\n",
    ));
    let mut phone = Phone::at(lo(1), server2.sip_addr());
    let r = phone.register("alice", "d2", None);
    let algs: Vec<String> = challenges(&r, "WWW-Authenticate")
        .into_iter()
        .map(|c| c.algorithm.to_ascii_uppercase())
        .collect();
    assert_eq!(algs, vec!["MD5"], "one MD5 challenge only\n{}", r.text);
    assert!(
        r.header("Server").is_none() && r.header("User-Agent").is_none(),
        "userAgent = \"\" turns the banner off\n{}",
        r.text
    );
    assert_eq!(register_fresh(&mut phone, "alice", "secret", "d3"), 200);
}

#[test]
fn control_characters_from_the_network_are_escaped_in_the_log() {
    let server = server(ServerOptions::default());
    let phone = Phone::at(lo(1), server.sip_addr());
    let local = phone.local;
    let target = format!("sip:777@{}", server.sip_addr());
    // An unknown number is logged with the caller: the caller's name carries ESC and NUL.
    let sdp = format!(
        "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
         m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n",
        ip = local.ip()
    );
    let mut msg = format!(
        "INVITE {target} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {local};branch=z9hG4bK-ctl-1;rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:ev\u{1b}[2Jil\u{7}@{local}>;tag=c1\r\n\
         To: <{target}>\r\n\
         Call-ID: ctl-1\r\n\
         CSeq: 1 INVITE\r\n\
         Contact: <sip:x@{local}>\r\n\
         Content-Type: application/sdp\r\n\
         Content-Length: {}\r\n\r\n",
        sdp.len()
    )
    .into_bytes();
    msg.extend_from_slice(sdp.as_bytes());
    phone.send_bytes(&msg);
    let r = phone.final_response();
    assert!(r.status().is_some_and(|s| s >= 400), "{}", r.text);
    let line = server
        .wait_for_log("unknown number", Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{e}\n{}", server.log_tail()));
    assert!(
        line.contains("\\x1b[2J") && line.contains("\\x07"),
        "ESC and BEL must be written as escapes: {line:?}"
    );
    assert!(
        server
            .log_lines()
            .iter()
            .all(|l| !l.contains('\u{1b}') && !l.contains('\u{7}') && !l.contains('\0')),
        "no raw control character in the log"
    );
}

// ---------------------------------------------------------------------------------------------
// Listeners at start
// ---------------------------------------------------------------------------------------------

/// Runs `callplane serve` with a `[server]` section and waits for it to exit (or be ready).
fn run_to_exit(server_lines: &str) -> (Option<i32>, String) {
    let dir = std::env::temp_dir().join(format!(
        "callplane-e2e-hard-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("callplane.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\ndataDir = {:?}\nrtpIp = \"127.0.0.1\"\n{server_lines}",
            dir.join("data").to_string_lossy()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_callplane"))
        .arg("serve")
        .arg("--config")
        .arg(&cfg)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut child = out;
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            let mut text = String::new();
            child.stdout.take().unwrap().read_to_string(&mut text).ok();
            child.stderr.take().unwrap().read_to_string(&mut text).ok();
            return (st.code(), text);
        }
        if Instant::now() > deadline {
            child.kill().ok();
            let mut text = String::new();
            child.stdout.take().unwrap().read_to_string(&mut text).ok();
            return (None, text);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn an_occupied_sip_tcp_port_stops_the_start() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let http = free_port();
    let (code, out) = run_to_exit(&format!(
        "sipUdp = \"127.0.0.1:{port}\"\nsipTcp = \"127.0.0.1:{port}\"\nhttp = \"127.0.0.1:{http}\"\n"
    ));
    assert_eq!(
        code,
        Some(2),
        "exit 2 on a listener that cannot bind\n{out}"
    );
    assert!(
        out.contains(&format!("127.0.0.1:{port}")) && !out.contains("callplane ready"),
        "the message names the address, and nothing claims to be ready\n{out}"
    );
    drop(taken);
}

#[test]
fn udp_or_tcp_can_be_turned_off() {
    for (udp, tcp) in [(false, true), (true, false)] {
        let server = Server::start_with(
            &provisioning(),
            ServerOptions {
                sip_udp: udp,
                sip_tcp: tcp,
                ..ServerOptions::default()
            },
        );
        let ready = server
            .wait_for_log("callplane ready", Duration::from_secs(1))
            .unwrap();
        let port = server.sip_port();
        if !udp {
            assert!(ready.contains("sip udp -"), "{ready}");
            // The UDP port is free: nothing of ours is bound there.
            UdpSocket::bind(("127.0.0.1", port)).expect("UDP port must be unbound");
            // TCP answers.
            let mut c = TcpStream::connect(server.sip_addr()).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let local = c.local_addr().unwrap();
            c.write_all(options(local, "TCP", server.sip_addr()).as_bytes())
                .unwrap();
            let mut b = [0u8; 2048];
            let n = c.read(&mut b).unwrap();
            assert!(
                String::from_utf8_lossy(&b[..n]).starts_with("SIP/2.0 "),
                "a response over TCP"
            );
        } else {
            assert!(ready.contains(" tcp -"), "{ready}");
            TcpListener::bind(("127.0.0.1", port)).expect("TCP port must be unbound");
            let phone = Phone::at(lo(1), server.sip_addr());
            phone.send(&options(phone.local, "UDP", server.sip_addr()));
            phone.final_response();
        }
    }
}

fn options(local: SocketAddr, transport: &str, server: SocketAddr) -> String {
    format!(
        "OPTIONS sip:{server} SIP/2.0\r\n\
         Via: SIP/2.0/{transport} {local};branch=z9hG4bK-opt-{}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:probe@{local}>;tag=o1\r\n\
         To: <sip:{server}>\r\n\
         Call-ID: opt-{}\r\n\
         CSeq: 1 OPTIONS\r\n\
         Content-Length: 0\r\n\r\n",
        local.port(),
        local.port()
    )
}

// ---------------------------------------------------------------------------------------------
// Idle connections
// ---------------------------------------------------------------------------------------------

/// Raises this process's descriptor limit towards `want` (soft, and hard when permitted);
/// returns the soft limit in force.
fn raise_own_nofile(want: u64) -> u64 {
    // SAFETY: getrlimit/setrlimit read and write only the struct passed.
    unsafe {
        let mut l = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut l);
        if l.rlim_cur < want {
            let max = l.rlim_max.max(want);
            let r = libc::rlimit {
                rlim_cur: want,
                rlim_max: max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &r) != 0 {
                let r = libc::rlimit {
                    rlim_cur: l.rlim_max,
                    rlim_max: l.rlim_max,
                };
                libc::setrlimit(libc::RLIMIT_NOFILE, &r);
            }
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut l);
        l.rlim_cur
    }
}

/// A TCP connection from a chosen source address.
fn connect_from(src: Ipv4Addr, dst: SocketAddr) -> std::io::Result<TcpStream> {
    use std::os::fd::FromRawFd;
    let sin = |ip: Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    let IpAddr::V4(dip) = dst.ip() else {
        unreachable!("loopback v4")
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: a fresh socket owned by the TcpStream at once; the addresses outlive the calls.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let stream = TcpStream::from_raw_fd(fd);
        let a = sin(src, 0);
        if libc::bind(fd, (&a as *const libc::sockaddr_in).cast(), len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let d = sin(dip, dst.port());
        if libc::connect(fd, (&d as *const libc::sockaddr_in).cast(), len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(stream)
    }
}

/// Whether the server has closed this connection (EOF or reset), without waiting.
fn closed_by_server(s: &mut TcpStream) -> bool {
    s.set_nonblocking(true).ok();
    let mut b = [0u8; 64];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

#[test]
fn idle_connections_do_not_starve_calls_or_the_api_and_are_closed() {
    // The server runs at the common 1024-descriptor limit; this process needs room for two
    // listeners' worth of idle connections on top.
    let have = raise_own_nofile(4096);
    let server_limit: u64 = if have >= 2600 {
        1024
    } else {
        ((have.saturating_sub(300)) / 2).clamp(300, 1024)
    };
    let per_port = server_limit as usize + 76;
    let first_message_timeout = 12;
    let server = server(ServerOptions {
        nofile: Some(server_limit),
        // Per-source caps out of the way: the total caps and the descriptor reserve are what
        // is tested here (per-source caps are unit-tested in `listen`).
        extra_server: format!(
            "sipTcpMaxConnectionsPerSource = 100000\nhttpMaxConnectionsPerSource = 100000\n\
             sipTcpFirstMessageTimeout = {first_message_timeout}\n\
             httpHeaderReadTimeout = {first_message_timeout}\n"
        ),
        ..ServerOptions::default()
    });
    let limit_line = server
        .wait_for_log("descriptor limit", Duration::from_secs(1))
        .unwrap();
    assert!(
        limit_line.contains(&format!("descriptors={server_limit}")),
        "the server logs its descriptor limit: {limit_line}"
    );
    let lines_before = server.log_lines().len();

    let started = Instant::now();
    let mut idle = Vec::with_capacity(2 * per_port);
    let mut connect_errors = 0;
    for i in 0..per_port {
        let src = lo(2 + (i % 4) as u8);
        for dst in [
            server.sip_addr(),
            SocketAddr::from(([127, 0, 0, 1], server.http_port())),
        ] {
            match connect_from(src, dst) {
                Ok(s) => idle.push(s),
                Err(_) => connect_errors += 1,
            }
        }
    }
    let opened = started.elapsed();
    eprintln!(
        "opened {} connections in {opened:?} ({connect_errors} errors)",
        2 * per_port
    );
    assert!(
        opened < Duration::from_secs(first_message_timeout - 4),
        "opening {} connections took {opened:?}: too slow for this test's timing",
        2 * per_port
    );

    // While they are held: calls over UDP and over TCP, and the API, from 127.0.0.1.
    let rtp = RtpPeer::new();
    let calls = Sipp::uac("uac_hangup_after.xml", server.sip_addr())
        .service("100")
        .set("rtp_port", rtp.port())
        .set("hangup_after_ms", 300)
        .arg("-m")
        .arg("10")
        .arg("-r")
        .arg("10")
        .spawn();
    for i in 0..20 {
        let r = http::request(
            server.http_port(),
            "GET",
            "/v1/tenants",
            &[("Authorization", &format!("Bearer {ADMIN_KEY}"))],
            b"",
        );
        assert_eq!(
            r.status,
            200,
            "API request {i} while the HTTP port is full of idle connections: {}",
            r.describe()
        );
    }
    let tcp_call = Sipp::uac("uac_hangup_after.xml", server.sip_addr())
        .service("100")
        .set("rtp_port", rtp.port())
        .set("hangup_after_ms", 300)
        .arg("-t")
        .arg("t1")
        .run();
    let calls = calls.wait();
    let held_for = started.elapsed();
    calls.assert_success(&server.log_tail());
    tcp_call.assert_success(&server.log_tail());
    assert!(
        held_for < Duration::from_secs(first_message_timeout),
        "the calls must have run while the idle connections were held ({held_for:?})"
    );

    // The idle connections are closed by the server: at once when over the caps, and the
    // admitted ones after the first-message timeout.
    let deadline = started + Duration::from_secs(first_message_timeout + 8);
    let mut open: Vec<TcpStream> = idle;
    while !open.is_empty() && Instant::now() < deadline {
        open.retain_mut(|s| !closed_by_server(s));
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        open.is_empty(),
        "{} of {} idle connections still open {:?} after they were made ({} connect errors)\n{}",
        open.len(),
        2 * per_port,
        started.elapsed(),
        connect_errors,
        server.log_tail()
    );

    // The log stayed bounded: a few paced lines, not one per connection or accept error.
    let lines = server.log_lines();
    let new_lines = &lines[lines_before..];
    let noisy = new_lines
        .iter()
        .filter(|l| l.contains("refused") || l.contains("accept failed") || l.contains("room"))
        .count();
    assert!(
        noisy <= 12 && new_lines.len() < 300,
        "{} log lines ({noisy} about connections) for {} idle connections\n{}",
        new_lines.len(),
        2 * per_port,
        server.log_tail()
    );
    // And everything still works afterwards.
    let r = http::request(
        server.http_port(),
        "GET",
        "/v1/tenants",
        &[("Authorization", &format!("Bearer {ADMIN_KEY}"))],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.describe());
}

#[test]
fn kept_alive_connections_are_closed_after_the_idle_timeout() {
    let server = server(with_server_lines(
        "sipTcpIdleTimeout = 2\nhttpIdleTimeout = 2\nhttpHeaderReadTimeout = 2\n",
    ));
    // SIP/TCP: one OPTIONS answered, then silence.
    let mut sip = TcpStream::connect(server.sip_addr()).unwrap();
    let local = sip.local_addr().unwrap();
    sip.write_all(options(local, "TCP", server.sip_addr()).as_bytes())
        .unwrap();
    sip.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut b = [0u8; 2048];
    let n = sip.read(&mut b).unwrap();
    assert!(String::from_utf8_lossy(&b[..n]).starts_with("SIP/2.0 "));
    // HTTP: one request on a kept-alive connection, then silence.
    let mut web = TcpStream::connect(("127.0.0.1", server.http_port())).unwrap();
    web.write_all(
        format!("GET /v1/tenants HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_KEY}\r\n\r\n")
            .as_bytes(),
    )
    .unwrap();
    web.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let n = web.read(&mut b).unwrap();
    assert!(String::from_utf8_lossy(&b[..n]).starts_with("HTTP/1.1 200"));
    let t = Instant::now();
    let mut sip_open = true;
    let mut web_open = true;
    while (sip_open || web_open) && t.elapsed() < Duration::from_secs(10) {
        sip_open = sip_open && !closed_by_server(&mut sip);
        web_open = web_open && !closed_by_server(&mut web);
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !sip_open && !web_open,
        "idle kept-alive connections must be closed (sip open {sip_open}, http open {web_open})"
    );
    assert!(
        t.elapsed() >= Duration::from_millis(1500),
        "not before the idle timeout ({:?})",
        t.elapsed()
    );
}

#[test]
fn two_phones_behind_one_address_register_in_the_same_second() {
    // Each challenge carries its own nonce, so two phones at one address (a NAT) that both
    // answer with nc=1 are not taken for a replay of each other.
    let server = server(ServerOptions::default());
    let mut a = Phone::at(lo(6), server.sip_addr());
    let mut b = Phone::at(lo(6), server.sip_addr());
    let ra = a.register("alice", "nat-a", None);
    let rb = b.register("bob", "nat-b", None);
    let ca = md5_challenge(&ra, "WWW-Authenticate");
    let cb = md5_challenge(&rb, "WWW-Authenticate");
    assert_ne!(ca.nonce, cb.nonce, "two challenges, two nonces");
    let uri = register_uri(server.sip_addr());
    let oka = a.register(
        "alice",
        "nat-a",
        Some(&answer(&ca, "alice", "secret", "REGISTER", &uri, 1)),
    );
    let okb = b.register(
        "bob",
        "nat-b",
        Some(&answer(&cb, "bob", "hunter2", "REGISTER", &uri, 1)),
    );
    assert_eq!(oka.status(), Some(200), "{}", oka.text);
    assert_eq!(okb.status(), Some(200), "{}", okb.text);
}
