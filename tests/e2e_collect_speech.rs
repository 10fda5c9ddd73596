//! COLLECT_SPEECH through the Vosk-protocol streaming provider. The recognizer is a server in
//! this test speaking Vosk's WebSocket protocol; it recognises by comparing the audio it
//! receives with espeak-ng's renderings of the three phrases the callers say (so a result is
//! only right when the caller's words reached it intact). Callers say "yes", "no" and a digit
//! string (espeak-ng audio sent as RTP after the prompt): the text lands in the variable, in
//! `collected_<name>` and with its confidence. A silent caller hears the missing-input prompt,
//! is asked again, and the variable ends up empty. COLLECT_DIGITS with `allowSpeechInput` takes
//! spoken digits ("four five six" → 456).

mod common;

use common::*;
use serde_json::{json, Value};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tungstenite::Message;

const PHRASES: [&str; 3] = ["yes", "no", "four five six"];

/// What the recognizer got: per session, the config and the audio.
#[derive(Default)]
struct Sessions(Vec<(Value, Vec<i16>)>);

/// A Vosk-protocol recognizer that matches the utterance against `phrases` by correlation.
fn recognizer(listener: TcpListener, phrases: Vec<(String, Vec<i16>)>, log: Arc<Mutex<Sessions>>) {
    for stream in listener.incoming() {
        let Ok(stream) = stream else { return };
        let phrases = phrases.clone();
        let log = log.clone();
        std::thread::spawn(move || {
            let Ok(mut ws) = tungstenite::accept(stream) else {
                return;
            };
            let mut config = Value::Null;
            let mut audio: Vec<i16> = Vec::new();
            loop {
                match ws.read() {
                    Ok(Message::Text(t)) => {
                        let v: Value = serde_json::from_str(t.as_str()).unwrap_or(Value::Null);
                        if v.get("config").is_some() {
                            config = v;
                        } else if v.get("eof").is_some() {
                            break;
                        }
                    }
                    Ok(Message::Binary(b)) => {
                        audio.extend(b.chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]])));
                        let _ = ws.send(Message::text(json!({"partial": ""}).to_string()));
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
            let best = phrases
                .iter()
                .filter_map(|(text, pcm)| {
                    let (_, c) = find_audio(&audio, pcm)?;
                    Some((text.clone(), c))
                })
                .max_by(|a, b| a.1.total_cmp(&b.1));
            let result = match best {
                Some((text, c)) if c > 0.5 => json!({
                    "result": text.split(' ').map(|w| json!({"word": w, "conf": c})).collect::<Vec<_>>(),
                    "text": text,
                }),
                _ => json!({"text": ""}),
            };
            let _ = ws.send(Message::text(result.to_string()));
            log.lock().unwrap().0.push((config, audio));
        });
    }
}

#[test]
fn callers_are_recognised_and_a_silent_one_hears_the_missing_input_prompt() {
    let phrases: Vec<(String, Vec<i16>)> = PHRASES
        .iter()
        .map(|p| (p.to_string(), espeak_8k("en-us", p)))
        .collect();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().map(|a| a.port()).unwrap_or_default();
    let log = Arc::new(Mutex::new(Sessions::default()));
    {
        let phrases = phrases.clone();
        let log = log.clone();
        std::thread::spawn(move || recognizer(listener, phrases, log));
    }
    let prov = format!(
        "[asr]\nurl = \"ws://127.0.0.1:{port}\"\n\n{}{}{}",
        tenant_with_prompts(),
        number_with_plan(
            "950",
            "ask",
            r#"  { blockType = "COLLECT_SPEECH", announcementName = "enter-digits", missingInputAnnouncementName = "invalid", language = "en-US", variableName = "answer", maxTries = 2, timeout = 2 },
  { blockType = "HANGUP" },"#
        ),
        number_with_plan(
            "951",
            "keys",
            r#"  { blockType = "COLLECT_DIGITS", announcementName = "enter-digits", variableName = "pin", minDigits = 1, maxDigits = 4, maxTries = 1, timeout = 3, allowSpeechInput = true, language = "en-US" },
  { blockType = "HANGUP" },"#
        )
    );
    let server = Server::start(&prov, true);
    let prompt_len = prompt("enter-digits").duration();

    for (text, pcm) in &phrases {
        let cdr = say_after_prompt(&server, "950", pcm);
        let var = |n: &str| cdr.variables.get(n).cloned().unwrap_or_default();
        assert_eq!(var("answer"), *text, "{}", cdr_text(&cdr));
        assert_eq!(var("collected_answer"), *text);
        let confidence: f64 = var("answer_confidence").parse().unwrap_or(0.0);
        assert!(confidence > 0.5, "{}", cdr_text(&cdr));
    }
    {
        let log = log.lock().unwrap();
        assert_eq!(log.0.len(), 3, "one recognizer session per utterance");
        for ((config, audio), (text, pcm)) in log.0.iter().zip(&phrases) {
            assert_eq!(config["config"]["sample_rate"], 8000);
            assert_eq!(config["config"]["language"], "en-US");
            // The utterance with up to 300 ms before it and the 800 ms of silence that ended it.
            let (got, said) = (audio.len() as f64 / 8000.0, pcm.len() as f64 / 8000.0);
            assert!(
                got >= said && got <= said + 1.4,
                "{text}: {got:.2} s streamed for {said:.2} s said"
            );
        }
    }

    // A silent caller: prompt, 2 s, the missing-input prompt, the prompt again, 2 s, done.
    let cdr = silent_caller(&server, "950");
    assert_eq!(
        log.lock().unwrap().0.len(),
        3,
        "silence never reaches the recognizer"
    );
    let length = Duration::from_millis(cdr.talk_time_ms as u64);
    assert!(
        length >= prompt_len * 2 + Duration::from_secs(4),
        "prompt, 2 s, missing-input prompt, prompt, 2 s: {length:?}"
    );

    // COLLECT_DIGITS with allowSpeechInput: the caller says the digits instead of keying them.
    let cdr = say_after_prompt(&server, "951", &phrases[2].1);
    assert_eq!(
        cdr.variables.get("pin").map(String::as_str),
        Some("456"),
        "spoken digits become the digits: {}",
        cdr_text(&cdr)
    );
}
