//! Digest authentication end to end with SIPp as the phone: REGISTER with a wrong password is
//! refused with 403 and the right one then registers; repeated failures from one address get
//! that address refused outright; an INVITE from an untrusted address is challenged (407).

mod common;

use common::*;
use std::time::Duration;

const ALICE: &str =
    "[[sipUsers]]\ntenant = \"t1\"\nusername = \"alice\"\npassword = \"secret\"\n\n";

fn user_server(opts: ServerOptions) -> Server {
    let prov = format!(
        "{}{ALICE}{}",
        tenant_with_prompts(),
        number_with_plan("100", "main", WELCOME_THEN_CLEARING)
    );
    Server::start_with(&prov, opts)
}

fn user_server_with_plan(number: &str, blocks: &str) -> Server {
    let prov = format!(
        "{}{ALICE}{}",
        tenant_with_prompts(),
        number_with_plan(number, "plan", blocks)
    );
    Server::start(&prov, true)
}

/// The `algorithm=` of each challenge header, in order.
fn algorithms(challenges: &[String]) -> Vec<String> {
    challenges
        .iter()
        .map(|c| {
            c.split(',')
                .find_map(|p| p.trim().strip_prefix("algorithm="))
                .map(|a| a.trim_matches('"').to_ascii_uppercase())
                .unwrap_or_else(|| "MD5".into())
        })
        .collect()
}

#[test]
fn register_with_wrong_then_right_password() {
    let server = user_server(ServerOptions::default());
    let phone = Sipp::uac("register_wrong_then_right.xml", server.sip_addr())
        .service("alice")
        .arg("-au")
        .arg("alice")
        .arg("-ap")
        .arg("secret")
        .run();

    // Whatever SIPp made of it, the server's challenges must offer MD5 (what SIPp and most
    // phones speak) first and SHA-256 as well.
    let challenge = phone
        .received()
        .find(|m| m.status() == Some(401))
        .unwrap_or_else(|| {
            panic!(
                "no 401 challenge\n{}\n{}",
                phone.report(),
                server.log_tail()
            )
        });
    let algs = algorithms(&challenge.headers("WWW-Authenticate"));
    assert_eq!(
        algs.first().map(String::as_str),
        Some("MD5"),
        "the first WWW-Authenticate should offer MD5, then SHA-256; got {algs:?}\n{}",
        challenge.text
    );
    assert!(
        algs.iter().any(|a| a == "SHA-256"),
        "SHA-256 should be offered too (RFC 8760); got {algs:?}"
    );

    phone.assert_success(&server.log_tail());
    assert_eq!(
        phone.received_statuses(),
        vec![401, 403, 401, 200],
        "REGISTER -> 401, wrong password -> 403, REGISTER -> 401, right password -> 200\n{}",
        phone.report()
    );
    let ok = phone
        .received()
        .find(|m| m.status() == Some(200))
        .expect("200");
    let contact = ok.header("Contact").unwrap_or_default();
    assert!(
        contact.contains(&format!("@127.0.0.1:{}", phone_port(&phone)))
            && contact.contains("expires="),
        "the 200 must list the registered contact with its expiry; got Contact: {contact:?}"
    );
}

/// SIPp's own port, from the Via of its first REGISTER.
fn phone_port(r: &SippResult) -> u16 {
    r.sent()
        .next()
        .and_then(|m| m.header("Via"))
        .and_then(|v| {
            v.split_whitespace()
                .nth(1)
                .and_then(|hp| hp.split(';').next())
                .and_then(|hp| hp.rsplit(':').next())
                .and_then(|p| p.parse().ok())
        })
        .expect("Via of the first REGISTER")
}

#[test]
fn repeated_failures_block_the_address() {
    let server = user_server(ServerOptions {
        max_auth_failures: 3,
        ..ServerOptions::default()
    });
    let guesser = Sipp::uac("register_blocked.xml", server.sip_addr())
        .service("alice")
        .arg("-au")
        .arg("alice")
        .arg("-ap")
        .arg("secret")
        .run();
    guesser.assert_success(&server.log_tail());
    assert_eq!(
        guesser.received_statuses(),
        vec![401, 403, 401, 403, 401, 403, 403],
        "three wrong passwords (each after a 401), then a plain REGISTER is refused without \
         a challenge\n{}",
        guesser.report()
    );
    let last = guesser.received().last().expect("a response");
    assert!(
        last.header("WWW-Authenticate").is_none(),
        "a blocked address gets no challenge: {}",
        last.text
    );
}

#[test]
fn untrusted_invite_is_challenged_then_accepted_with_credentials() {
    let server = user_server(ServerOptions {
        trusted: false,
        ..ServerOptions::default()
    });
    let rtp = RtpPeer::new();
    let caller = Sipp::uac("uac_auth_announcement.xml", server.sip_addr())
        .service("100")
        .set("rtp_port", rtp.port())
        .arg("-au")
        .arg("alice")
        .arg("-ap")
        .arg("secret")
        .run();
    let first = caller
        .received()
        .find(|m| m.status().is_some_and(|s| s >= 200));
    assert_eq!(
        first.and_then(|m| m.status()),
        Some(407),
        "an INVITE from an address outside trustedNetworks must be challenged with 407\n{}\n{}",
        caller.report(),
        server.log_tail()
    );
    let challenge = first.unwrap();
    let algs = algorithms(&challenge.headers("Proxy-Authenticate"));
    assert_eq!(
        algs.first().map(String::as_str),
        Some("MD5"),
        "the first Proxy-Authenticate should offer MD5, then SHA-256; got {algs:?}\n{}",
        challenge.text
    );
    caller.assert_success(&server.log_tail());
    assert!(
        rtp.packet_count() > 0,
        "the authenticated call should hear the announcement"
    );
    let cdr = server.cdr_for_call_id(&caller.call_id);
    assert_eq!(cdr.hangup_cause, "NORMAL_CLEARING", "{}", cdr_text(&cdr));
    assert_eq!(cdr.caller, "100");
}

#[test]
fn sip_user_destination_reaches_the_registered_phone() {
    let server = user_server_with_plan(
        "600",
        r##"  { blockType = "BRIDGE", bridgeMode = "SEQUENTIAL", destinations = [ { destinationType = "SIP_USER", destination = "alice", timeout = 10 } ] },
  { blockType = "HANGUP", hangupCause = "NO_ANSWER" },"##,
    );

    // Not registered yet: the bridge fails at once and the plan's HANGUP NO_ANSWER answers 480.
    let rtp = RtpPeer::new();
    let early = Sipp::uac("uac_expect_status.xml", server.sip_addr())
        .service("600")
        .set("rtp_port", rtp.port())
        .run();
    early.assert_success(&server.log_tail());
    assert_eq!(
        early
            .final_responses("INVITE")
            .first()
            .and_then(|m| m.status()),
        Some(480),
        "calling an unregistered SIP user\n{}",
        early.report()
    );
    let cdr = server.cdr_for_call_id(&early.call_id);
    assert_eq!(
        cdr.variables.get("bridge_result").map(String::as_str),
        Some("no_answer"),
        "{}",
        cdr_text(&cdr)
    );

    // Register, then call again: the INVITE must reach the phone at its registered contact.
    let phone_rtp = RtpPeer::new();
    let mut phone = Sipp::uac("register_then_answer.xml", server.sip_addr())
        .service("alice")
        .arg("-au")
        .arg("alice")
        .arg("-ap")
        .arg("secret")
        .arg("-oocsf")
        .arg(sipp_scenario("ooc_answer.xml").to_str().unwrap())
        .set("rtp_port", phone_rtp.port())
        .set("stay_ms", 5000)
        .spawn();
    phone.wait_for_message("the 200 to the REGISTER", Duration::from_secs(10), |m| {
        !m.sent && m.status() == Some(200)
    });
    let caller = Sipp::uac("uac_hangup_after.xml", server.sip_addr())
        .service("600")
        .set("rtp_port", rtp.port())
        .set("hangup_after_ms", 1000)
        .run();
    caller.assert_success(&server.log_tail());
    let phone_port = phone.port();
    let phone = phone.wait();
    phone.assert_success(&server.log_tail());
    let invite = phone.received_request("INVITE").unwrap_or_else(|| {
        panic!(
            "the registered phone got no INVITE\n{}\n{}",
            phone.report(),
            server.log_tail()
        )
    });
    assert!(
        invite
            .first_line()
            .starts_with(&format!("INVITE sip:alice@127.0.0.1:{phone_port}")),
        "the INVITE must target the registered contact: {}",
        invite.first_line()
    );
    assert!(
        phone.received_request("BYE").is_some(),
        "the caller's BYE must reach the phone\n{}",
        phone.report()
    );
    let cdr = server.cdr_for_call_id(&caller.call_id);
    let leg = cdr
        .legs
        .iter()
        .find(|l| l.direction == "outbound")
        .unwrap_or_else(|| panic!("no outbound leg: {}", cdr_text(&cdr)));
    assert_eq!(
        leg.destination_type.as_deref(),
        Some("SIP_USER"),
        "{}",
        cdr_text(&cdr)
    );
    assert_eq!(leg.destination, "alice");
    assert!(leg.answer_time.is_some(), "{}", cdr_text(&cdr));
    assert_eq!(cdr.hangup_by, "caller", "{}", cdr_text(&cdr));
}
