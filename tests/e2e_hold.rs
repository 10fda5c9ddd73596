//! Hold and resume by the caller, against the real binary: a re-INVITE whose offer says
//! `a=sendonly` (or `a=inactive`) is answered 200 with the reverse direction (`a=recvonly`,
//! `a=inactive`) and the server stops sending RTP to the caller while it is held; a later
//! re-INVITE with `a=sendrecv` gets `a=sendrecv` back and the RTP comes again. Each new SDP
//! answer carries a higher o= session version of the same session. The caller's BYE ends the
//! call and the CDR says so.

mod common;

use common::*;
use std::time::{Duration, Instant};

/// About 10 s of audio (enter-digits is ~2.4 s), so the server is still playing when the caller
/// takes the call off hold and when it hangs up.
const TEN_SECONDS_OF_PROMPTS: &str = r##"  { blockType = "ANNOUNCEMENT", announcementName = "enter-digits" },
  { blockType = "ANNOUNCEMENT", announcementName = "enter-digits" },
  { blockType = "ANNOUNCEMENT", announcementName = "enter-digits" },
  { blockType = "ANNOUNCEMENT", announcementName = "enter-digits" },
  { blockType = "HANGUP", hangupCause = "NORMAL_CLEARING" },"##;

/// After the 200 to the hold re-INVITE, packets already on their way may still arrive.
const SETTLE: Duration = Duration::from_millis(150);
/// The quiet window ends this long before the resume re-INVITE was sent, which covers how late
/// the test may have noticed the hold 200 (it polls SIPp's message file).
const BEFORE_RESUME: Duration = Duration::from_millis(250);

fn server_with(number: &str, plan: &str, blocks: &str) -> Server {
    let mut prov = tenant_with_prompts();
    prov.push_str(&number_with_plan(number, plan, blocks));
    Server::start(&prov, true)
}

/// The direction attributes of an SDP body (`sendrecv`, `sendonly`, `recvonly`, `inactive`).
fn sdp_directions(sdp: &str) -> Vec<String> {
    sdp.lines()
        .filter_map(|l| l.trim().strip_prefix("a="))
        .filter(|a| matches!(*a, "sendrecv" | "sendonly" | "recvonly" | "inactive"))
        .map(str::to_string)
        .collect()
}

/// The o= line's session id and session version.
fn sdp_origin(sdp: &str) -> Option<(String, u64)> {
    let o = sdp.lines().find_map(|l| l.trim().strip_prefix("o="))?;
    let f: Vec<&str> = o.split_whitespace().collect();
    Some((f.get(1)?.to_string(), f.get(2)?.parse().ok()?))
}

fn is_cseq(m: &TracedMessage, n: u32, method: &str) -> bool {
    m.header("CSeq")
        .is_some_and(|c| c.split_whitespace().eq([n.to_string().as_str(), method]))
}

/// What one hold/resume call looked like from the caller's side.
struct HoldCall {
    sipp: SippResult,
    packets: Vec<RtpPacket>,
    /// When the test saw the 200 to the hold re-INVITE (at or shortly after it arrived).
    hold_ok_seen: Instant,
    /// From SIPp's trace: the 200 to the hold re-INVITE → the resume re-INVITE sent.
    held_for: Duration,
}

impl HoldCall {
    /// Where nothing may arrive: from SETTLE after the hold 200 to BEFORE_RESUME before the
    /// resume re-INVITE left.
    fn quiet_window(&self) -> (Instant, Instant) {
        (
            self.hold_ok_seen + SETTLE,
            self.hold_ok_seen + self.held_for.saturating_sub(BEFORE_RESUME),
        )
    }

    /// When the resume re-INVITE left (on the test's clock, give or take the polling delay).
    fn resume_sent(&self) -> Instant {
        self.hold_ok_seen + self.held_for
    }

    fn count_between(&self, from: Option<Instant>, to: Option<Instant>) -> usize {
        self.packets
            .iter()
            .filter(|p| from.is_none_or(|f| p.arrival >= f) && to.is_none_or(|t| p.arrival < t))
            .count()
    }

    /// The 200 to the INVITE with this CSeq number.
    fn ok_to(&self, cseq: u32, server: &Server) -> &TracedMessage {
        self.sipp
            .received()
            .find(|m| m.status().is_some_and(|s| s >= 200) && is_cseq(m, cseq, "INVITE"))
            .unwrap_or_else(|| {
                panic!(
                    "no final response to INVITE CSeq {cseq}\n{}\n{}",
                    self.sipp.report(),
                    server.log_tail()
                )
            })
    }

    /// A table of when RTP arrived, for --nocapture.
    fn print_timeline(&self, label: &str) {
        let Some(first) = self.packets.first() else {
            println!("{label}: no RTP at all");
            return;
        };
        let ms = |t: Instant| t.saturating_duration_since(first.arrival).as_millis();
        let (q0, q1) = self.quiet_window();
        println!(
            "{label}: {} packets; times in ms from the first packet",
            self.packets.len()
        );
        println!("  hold 200 seen   {:>6}", ms(self.hold_ok_seen));
        println!("  quiet window    {:>6} .. {}", ms(q0), ms(q1));
        println!("  resume sent     {:>6}", ms(self.resume_sent()));
        let last_before = self
            .packets
            .iter()
            .rev()
            .find(|p| p.arrival < q0)
            .map(|p| ms(p.arrival));
        let first_after = self
            .packets
            .iter()
            .find(|p| p.arrival >= q0)
            .map(|p| ms(p.arrival));
        println!("  last packet before the window {last_before:?}, first after its start {first_after:?}");
    }
}

/// Places a call to `number` with uac_hold.xml and waits for it to finish.
fn hold_call(
    server: &Server,
    number: &str,
    direction: &str,
    hold_after_ms: u64,
    hold_ms: u64,
    resume_ms: u64,
) -> HoldCall {
    let rtp = RtpPeer::new();
    let mut caller = Sipp::uac("uac_hold.xml", server.sip_addr())
        .service(number)
        .set("rtp_port", rtp.port())
        .set("hold_after_ms", hold_after_ms)
        .set("hold_direction", direction)
        .set("hold_ms", hold_ms)
        .set("resume_ms", resume_ms)
        .spawn();
    // Noted on the test's clock as soon as SIPp logs it (its message file is polled).
    let deadline = Instant::now() + Duration::from_millis(hold_after_ms) + Duration::from_secs(10);
    let hold_ok_seen = loop {
        let hold_ok = caller
            .messages_so_far()
            .iter()
            .any(|m| !m.sent && m.status() == Some(200) && is_cseq(m, 2, "INVITE"));
        if hold_ok {
            break Instant::now();
        }
        if caller.is_finished() || Instant::now() >= deadline {
            let sipp = caller.wait();
            panic!(
                "no 200 to the hold re-INVITE\n{}\n{}",
                sipp.report(),
                server.log_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let sipp = caller.wait();
    let packets = rtp.packets();

    let hold_ok = sipp
        .received()
        .find(|m| m.status() == Some(200) && is_cseq(m, 2, "INVITE"))
        .and_then(|m| m.time);
    let resume_sent = sipp
        .sent()
        .find(|m| m.method() == Some("INVITE") && is_cseq(m, 3, "INVITE"))
        .and_then(|m| m.time);
    let held_for = match (hold_ok, resume_sent) {
        (Some(a), Some(b)) if b > a => Duration::from_secs_f64(b - a),
        _ => panic!(
            "SIPp's trace lacks the hold 200 or the resume re-INVITE (or their times)\n{}\n{}",
            sipp.report(),
            server.log_tail()
        ),
    };
    HoldCall {
        sipp,
        packets,
        hold_ok_seen,
        held_for,
    }
}

/// The checks both hold styles share: 200s, answer directions, o= versions, no RTP while held,
/// RTP before and after, the CDR.
fn check_hold_call(
    server: &Server,
    call: &HoldCall,
    held_answer: &str,
    min_before: usize,
    min_after: usize,
) {
    let sipp = &call.sipp;
    let initial = call.ok_to(1, server);
    let hold = call.ok_to(2, server);
    let resume = call.ok_to(3, server);
    for (what, m) in [("hold", hold), ("resume", resume)] {
        assert_eq!(
            m.status(),
            Some(200),
            "the {what} re-INVITE should be answered 200, got {:?}\n{}\n{}",
            m.first_line(),
            sipp.report(),
            server.log_tail()
        );
    }
    sipp.assert_success(&server.log_tail());

    // SDP answers: the reverse direction while held, sendrecv again after.
    assert_eq!(
        sdp_directions(hold.body()),
        vec![held_answer.to_string()],
        "the answer to the hold offer should say a={held_answer}; body:\n{}",
        hold.body()
    );
    assert_eq!(
        sdp_directions(resume.body()),
        vec!["sendrecv".to_string()],
        "the answer to the resume offer should say a=sendrecv; body:\n{}",
        resume.body()
    );
    // Same media address all along, same session, a new version for every new answer.
    let addr = sdp_audio_addr(initial.body()).expect("SDP in the 200 to the INVITE");
    for (what, m) in [("hold", hold), ("resume", resume)] {
        assert_eq!(
            sdp_audio_addr(m.body()),
            Some(addr),
            "the {what} answer should keep the media address of the first answer; body:\n{}",
            m.body()
        );
    }
    let origin = |what: &str, m: &TracedMessage| {
        sdp_origin(m.body())
            .unwrap_or_else(|| panic!("no parsable o= line in the {what} answer:\n{}", m.body()))
    };
    let (id0, v0) = origin("initial", initial);
    let (id1, v1) = origin("hold", hold);
    let (id2, v2) = origin("resume", resume);
    println!("  o= session {id0}: versions {v0} -> {v1} -> {v2}");
    assert!(
        id1 == id0 && id2 == id0,
        "the o= session id must stay the same (RFC 3264 8): {id0}, {id1}, {id2}"
    );
    assert!(
        v0 < v1 && v1 < v2,
        "the o= session version must increase with each new answer: initial {v0}, hold {v1}, \
         resume {v2}"
    );

    // Media: flowing before the hold, nothing during it, flowing again after.
    let (q0, q1) = call.quiet_window();
    let before = call.count_between(None, Some(call.hold_ok_seen));
    let during = call.count_between(Some(q0), Some(q1));
    let after = call.count_between(Some(call.resume_sent()), None);
    let quiet_ms = q1.saturating_duration_since(q0).as_millis();
    assert!(
        call.packets.iter().all(|p| p.pt == 0),
        "every packet should be PCMU (PT 0); got PTs {:?}",
        call.packets
            .iter()
            .map(|p| p.pt)
            .collect::<std::collections::BTreeSet<_>>()
    );
    assert!(
        before >= min_before,
        "expected at least {min_before} RTP packets before the hold, got {before}\n{}",
        server.log_tail()
    );
    assert!(
        quiet_ms >= 1000,
        "the quiet window is only {quiet_ms} ms long: the hold was shorter than planned"
    );
    assert_eq!(
        during,
        0,
        "no RTP may reach the caller while it is held ({quiet_ms} ms window from {} ms after the \
         hold 200 to {} ms before the resume re-INVITE), got {during} packets\n{}",
        SETTLE.as_millis(),
        BEFORE_RESUME.as_millis(),
        server.log_tail()
    );
    assert!(
        after >= min_after,
        "expected at least {min_after} RTP packets after the resume re-INVITE, got {after}\n{}",
        server.log_tail()
    );

    // The caller ended the call.
    assert!(
        sipp.received_request("BYE").is_none(),
        "the server must not send BYE: the caller hangs up first\n{}",
        sipp.report()
    );
    let cdr = server.cdr_for_call_id(&sipp.call_id);
    assert_eq!(cdr.hangup_by, "caller", "{}", cdr_text(&cdr));
    assert_eq!(cdr.hangup_cause, "NORMAL_CLEARING", "{}", cdr_text(&cdr));
    assert_eq!(cdr.sip_status, Some(200), "{}", cdr_text(&cdr));
}

#[test]
fn sendonly_hold_stops_rtp_and_sendrecv_resumes_it() {
    let server = server_with("100", "prompts", TEN_SECONDS_OF_PROMPTS);
    let call = hold_call(&server, "100", "sendonly", 1500, 2000, 1500);
    call.print_timeline("sendonly hold");
    check_hold_call(&server, &call, "recvonly", 40, 20);
}

#[test]
fn inactive_hold_is_answered_inactive() {
    let server = server_with("101", "prompts", TEN_SECONDS_OF_PROMPTS);
    let call = hold_call(&server, "101", "inactive", 1000, 1500, 1000);
    call.print_timeline("inactive hold");
    check_hold_call(&server, &call, "inactive", 25, 20);
}
