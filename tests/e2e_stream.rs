//! The STREAM block against a WebSocket server written here, speaking the Twilio Media Streams
//! format: the server gets `connected`, `start` (ids, tracks, custom parameters) and `media`
//! whose decoded audio is the caller's tone; a key the caller presses arrives as `dtmf`; audio
//! the server sends back is heard by the caller; `clear` cuts it within 100 ms and answers the
//! pending `mark`; the server's `stop` ends the block and the plan goes on. A server that cannot
//! be reached sends the call to the block's fallback plan.

mod common;

use base64::Engine as _;
use common::*;
use serde_json::{json, Value};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tungstenite::Message;

/// What the bot saw and did.
#[derive(Default)]
struct BotLog {
    events: Vec<Value>,
    inbound: Vec<i16>,
    clear_sent: Option<Instant>,
    audio_sent: Option<Instant>,
}

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// A bot: once it has 1 s of the caller's audio it sends 3 s of a 1 kHz tone and a mark, 1 s
/// later `clear`, 0.8 s after that `stop`.
fn bot(listener: TcpListener, log: Arc<Mutex<BotLog>>) {
    let Ok((stream, _)) = listener.accept() else {
        return;
    };
    stream
        .set_read_timeout(Some(Duration::from_millis(5)))
        .unwrap_or_default();
    let Ok(mut ws) = tungstenite::accept(stream) else {
        return;
    };
    let mut sid = String::new();
    let mut inbound_frames = 0;
    let started = Instant::now();
    let (mut sent_audio, mut cleared, mut stopped) = (None::<Instant>, None::<Instant>, false);
    while started.elapsed() < Duration::from_secs(20) {
        match ws.read() {
            Ok(Message::Text(t)) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap_or(Value::Null);
                if v["event"] == "start" {
                    sid = v["streamSid"].as_str().unwrap_or_default().to_owned();
                }
                if v["event"] == "media" && v["media"]["track"] == "inbound" {
                    inbound_frames += 1;
                    let bytes = B64
                        .decode(v["media"]["payload"].as_str().unwrap_or_default())
                        .unwrap_or_default();
                    log.lock()
                        .unwrap()
                        .inbound
                        .extend(bytes.iter().map(|&b| ulaw_decode(b)));
                } else {
                    log.lock().unwrap().events.push(v);
                }
            }
            Ok(Message::Close(_)) => break,
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
        if sent_audio.is_none() && inbound_frames >= 50 {
            let tone = sine(1000.0, 3.0, 8000.0);
            for chunk in tone.chunks(160) {
                let payload: Vec<u8> = chunk.iter().map(|&s| ulaw_encode(s)).collect();
                let m = json!({"event": "media", "streamSid": sid,
                               "media": {"payload": B64.encode(payload)}});
                let _ = ws.send(Message::text(m.to_string()));
            }
            let _ = ws.send(Message::text(
                json!({"event": "mark", "streamSid": sid, "mark": {"name": "m1"}}).to_string(),
            ));
            sent_audio = Some(Instant::now());
            log.lock().unwrap().audio_sent = sent_audio;
        }
        if let (Some(t), None) = (sent_audio, cleared) {
            if t.elapsed() >= Duration::from_secs(1) {
                let _ = ws.send(Message::text(
                    json!({"event": "clear", "streamSid": sid}).to_string(),
                ));
                cleared = Some(Instant::now());
                log.lock().unwrap().clear_sent = cleared;
            }
        }
        if let (Some(t), false) = (cleared, stopped) {
            if t.elapsed() >= Duration::from_millis(800) {
                let _ = ws.send(Message::text(
                    json!({"event": "stop", "streamSid": sid}).to_string(),
                ));
                stopped = true;
            }
        }
    }
}

#[test]
fn a_bot_hears_the_caller_speaks_back_is_cut_by_clear_and_its_stop_continues_the_plan() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().map(|a| a.port()).unwrap_or_default();
    let log = Arc::new(Mutex::new(BotLog::default()));
    let bot_log = log.clone();
    let bot = std::thread::spawn(move || bot(listener, bot_log));

    let prov = format!(
        "{}{}",
        tenant_with_prompts(),
        number_with_plan(
            "900",
            "bot",
            &format!(
                r#"  {{ blockType = "STREAM", url = "ws://127.0.0.1:{port}/media", track = "inbound", parameters = {{ lang = "de", tries = 3 }} }},
  {{ blockType = "HANGUP", hangupCause = "USER_BUSY" }},"#
            )
        )
    );
    let server = Server::start(&prov, true);
    let rtp = RtpPeer::new();
    let caller = Sipp::uac("uac_announcement.xml", server.sip_addr())
        .service("900")
        .set("rtp_port", rtp.port())
        .spawn();
    rtp.wait_for_packets(1, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("the call's media starts: {e}\n{}", server.log_tail()));
    // The caller speaks (a 600 Hz tone) for 1.2 s, then presses 5.
    rtp.send_pcm(&sine(600.0, 1.2, 8000.0));
    rtp.send_rfc4733("5", 101, 5);
    rtp.send_silence(10);
    let caller = caller.wait();
    caller.assert_success(&server.log_tail());
    let _ = bot.join();

    let log = log.lock().unwrap();
    let kinds: Vec<&str> = log
        .events
        .iter()
        .filter_map(|e| e["event"].as_str())
        .collect();
    assert_eq!(kinds.first(), Some(&"connected"), "{kinds:?}");
    let start = log
        .events
        .iter()
        .find(|e| e["event"] == "start")
        .unwrap_or_else(|| panic!("no start: {kinds:?}"));
    assert_eq!(start["start"]["tracks"], json!(["inbound"]), "{start}");
    assert_eq!(
        start["start"]["customParameters"],
        json!({"lang": "de", "tries": "3"}),
        "{start}"
    );
    assert_eq!(
        start["start"]["mediaFormat"],
        json!({"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1})
    );
    let cdr = server.cdr_for_call_id(&caller.call_id);
    assert_eq!(
        start["start"]["callSid"].as_str(),
        Some(cdr.call_id.as_str()),
        "callSid is our call id"
    );
    assert!(
        start["streamSid"]
            .as_str()
            .is_some_and(|s| s.starts_with("MZ")),
        "{start}"
    );
    // The caller's tone reached the bot.
    let tone = tone_amplitude(&log.inbound, 600.0);
    assert!(
        tone > 2000.0 && log.inbound.len() >= 8000,
        "the bot hears the caller's 600 Hz ({tone:.0}, {} samples)",
        log.inbound.len()
    );
    let dtmf = log.events.iter().find(|e| e["event"] == "dtmf");
    assert_eq!(
        dtmf.map(|d| d["dtmf"]["digit"].clone()),
        Some(json!("5")),
        "{kinds:?}"
    );
    // `clear` answered the mark of the audio it cut.
    assert!(
        log.events
            .iter()
            .any(|e| e["event"] == "mark" && e["mark"]["name"] == "m1"),
        "{kinds:?}"
    );

    // The caller heard the bot's tone, and not 100 ms after `clear`.
    let (Some(sent), Some(clear)) = (log.audio_sent, log.clear_sent) else {
        panic!("the bot never spoke: {kinds:?}");
    };
    let toned: Vec<Instant> = rtp
        .packets()
        .iter()
        .filter(|p| p.pt == 0 && p.arrival >= sent)
        .filter(|p| {
            let pcm: Vec<i16> = p.payload.iter().map(|&c| ulaw_decode(c)).collect();
            tone_amplitude(&pcm, 1000.0) > 2000.0
        })
        .map(|p| p.arrival)
        .collect();
    assert!(
        toned.len() >= 40,
        "the caller hears the bot (1 kHz in {} packets)",
        toned.len()
    );
    let last = toned.last().copied().unwrap_or(sent);
    eprintln!(
        "bot tone heard in {} packets, the last {:?} after clear (negative: {:?} before)",
        toned.len(),
        last.saturating_duration_since(clear),
        clear.saturating_duration_since(last)
    );
    assert!(
        last < clear + Duration::from_millis(100),
        "clear cuts the bot's audio within 100 ms (last tone {:?} after clear)",
        last.saturating_duration_since(clear)
    );
    // The bot's stop ended the block; the plan's HANGUP ran.
    assert_eq!(cdr.hangup_cause, "USER_BUSY", "{}", cdr_text(&cdr));
    assert_eq!(
        cdr.variables.get("stream_result").map(String::as_str),
        Some("stopped"),
        "{}",
        cdr_text(&cdr)
    );
}

#[test]
fn an_unreachable_bot_sends_the_call_to_the_fallback_plan() {
    // A port nobody listens on.
    let port = free_port();
    let prov = format!(
        "{}{}[[routingPlans]]\ntenant = \"t1\"\nname = \"human\"\nblocks = [ {{ blockType = \"HANGUP\", hangupCause = \"CALL_REJECTED\" }} ]\n\n",
        tenant_with_prompts(),
        number_with_plan(
            "901",
            "bot",
            &format!(
                r#"  {{ blockType = "STREAM", url = "ws://127.0.0.1:{port}/media", fallbackPlan = "human" }},
  {{ blockType = "HANGUP", hangupCause = "USER_BUSY" }},"#
            )
        )
    );
    let server = Server::start(&prov, true);
    let rtp = RtpPeer::new();
    let caller = Sipp::uac("uac_announcement.xml", server.sip_addr())
        .service("901")
        .set("rtp_port", rtp.port())
        .run();
    caller.assert_success(&server.log_tail());
    let cdr = server.cdr_for_call_id(&caller.call_id);
    assert_eq!(cdr.hangup_cause, "CALL_REJECTED", "{}", cdr_text(&cdr));
    assert_eq!(
        cdr.variables.get("stream_result").map(String::as_str),
        Some("failed")
    );
}
