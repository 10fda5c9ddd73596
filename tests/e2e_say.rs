//! SAY with TENIOS voice names, SSML and the HTTP provider, heard over real RTP: a German and an
//! English TENIOS voice speak their language (the call's audio matches espeak-ng's rendering in
//! that language far better than in another), an unknown voice falls back instead of going
//! silent, `<break time="1s"/>` adds the pause, invalid SSML is refused naming the field, and an
//! OpenAI-compatible endpoint (a server in the test) is spoken through — with espeak-ng taking
//! over when it fails.

mod common;

use common::webhook::*;
use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const GERMAN: &str = "Guten Tag und herzlich willkommen. Bitte warten Sie einen Moment.";
const ENGLISH: &str = "Good morning and welcome. Please hold the line for a moment.";

fn say_plan(voice: &str, text: &str, ssml: bool) -> String {
    format!(
        "  {{ blockType = \"SAY\", voiceName = \"{voice}\", useSsml = {ssml}, text = {text:?} }},\n  {{ blockType = \"HANGUP\" }},"
    )
}

/// Calls `number` and returns what the caller heard (decoded PCMU) until our BYE.
fn hear(server: &Server, number: &str) -> Vec<i16> {
    let rtp = RtpPeer::new();
    let from = Instant::now();
    let caller = Sipp::uac("uac_announcement.xml", server.sip_addr())
        .service(number)
        .set("rtp_port", rtp.port())
        .run();
    caller.assert_success(&server.log_tail());
    rtp.heard(from, Instant::now())
}

/// Seconds of audible 20 ms frames.
fn audible_seconds(pcm: &[i16]) -> f64 {
    pcm.chunks(160).filter(|f| is_audible(f)).count() as f64 * 0.02
}

/// The longest run of silent 20 ms frames between the first and the last audible one.
fn longest_inner_pause(pcm: &[i16]) -> Duration {
    let frames: Vec<bool> = pcm.chunks(160).map(is_audible).collect();
    let (Some(first), Some(last)) = (
        frames.iter().position(|a| *a),
        frames.iter().rposition(|a| *a),
    ) else {
        return Duration::ZERO;
    };
    let mut longest = 0;
    let mut run = 0;
    for a in &frames[first..=last] {
        if *a {
            run = 0;
        } else {
            run += 1;
            longest = longest.max(run);
        }
    }
    Duration::from_millis(longest * 20)
}

#[test]
fn tenios_voice_names_speak_their_language_and_unknown_voices_fall_back() {
    let prov = format!(
        "{}{}{}{}",
        tenant_with_prompts(),
        number_with_plan("800", "de", &say_plan("de.female.2", GERMAN, false)),
        number_with_plan("801", "en", &say_plan("en-us.male.1", ENGLISH, false)),
        number_with_plan("802", "xx", &say_plan("xx.female.1", ENGLISH, false)),
    );
    let server = Server::start(&prov, true);

    for (number, text, voice, other) in [
        ("800", GERMAN, "de+f2", "en-us+f2"),
        ("801", ENGLISH, "en-us+m1", "de+m1"),
    ] {
        let heard = hear(&server, number);
        let right_ref = espeak_8k(voice, text);
        let wrong = espeak_8k(other, text);
        let speech = audible_seconds(&heard);
        let expected = right_ref.len() as f64 / 8000.0;
        assert!(
            speech > 0.5 * expected && heard.len() as f64 / 8000.0 < expected + 3.0,
            "{number}: {speech:.2} s audible of {:.2} s heard; espeak-ng's rendering is {expected:.2} s",
            heard.len() as f64 / 8000.0
        );
        // The first two seconds of each rendering, so both fit in what was heard.
        let head = |x: &[i16]| x[..x.len().min(16_000)].to_vec();
        let (_, right) = find_audio(&heard, &head(&right_ref)).unwrap_or_default();
        let (_, other_language) = find_audio(&heard, &head(&wrong)).unwrap_or_default();
        eprintln!("{number}: matches {voice} {right:.3}, {other} {other_language:.3}");
        assert!(
            right > 0.6 && right > other_language + 0.2,
            "{number}: the call's audio matches the {voice} rendering ({right:.2}) rather than the \
             {other} one ({other_language:.2})"
        );
    }

    // An unknown language is spoken by the default voice, not skipped.
    let heard = hear(&server, "802");
    assert!(
        audible_seconds(&heard) > 1.0,
        "an unknown voice still speaks"
    );
    server
        .wait_for_log(
            "no xx voice installed: using the default voice",
            Duration::from_secs(5),
        )
        .unwrap_or_else(|e| panic!("the fallback is logged: {e}"));
}

#[test]
fn an_ssml_break_adds_the_pause_and_invalid_ssml_is_refused_naming_the_field() {
    let prov = format!(
        "{}{}{}",
        tenant_with_prompts(),
        number_with_plan(
            "810",
            "plain",
            &say_plan("de.male.1", "Eins zwei drei", false)
        ),
        number_with_plan(
            "811",
            "ssml",
            &say_plan(
                "de.male.1",
                "<speak>Eins <break time=\"1s\"/> zwei drei</speak>",
                true
            )
        ),
    );
    let server = Server::start(&prov, true);
    let plain = longest_inner_pause(&hear(&server, "810"));
    let ssml = longest_inner_pause(&hear(&server, "811"));
    assert!(
        plain < Duration::from_millis(500),
        "without a break the words run on: {plain:?}"
    );
    assert!(
        ssml >= Duration::from_millis(900) && ssml < Duration::from_millis(1600),
        "<break time=\"1s\"/> adds a one-second pause: {ssml:?}"
    );

    let list = json!([{"blockType": "SAY", "useSsml": true, "voiceName": "de.female.1",
                       "text": "<speak>Hallo <blink>Welt</blink></speak>"}]);
    let (ok, text) = plan_validate(&list);
    assert!(!ok, "{text}");
    assert!(
        text.contains("block 0 (SAY): field 'text': must be valid SSML when useSsml is true"),
        "{text}"
    );
}

/// A WAV file of a 1 kHz tone at 16 kHz, as a speech endpoint would send (not 8 kHz: ours
/// resamples).
fn tone_wav(secs: f64) -> Vec<u8> {
    let rate = 16_000u32;
    let n = (secs * rate as f64) as usize;
    let mut data = Vec::with_capacity(n * 2);
    for i in 0..n {
        let v =
            (8000.0 * (2.0 * std::f64::consts::PI * 1000.0 * i as f64 / rate as f64).sin()) as i16;
        data.extend_from_slice(&v.to_le_bytes());
    }
    let mut wav = Vec::new();
    wav.extend_from_slice(b"RIFF");
    wav.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
    wav.extend_from_slice(b"WAVEfmt ");
    wav.extend_from_slice(&16u32.to_le_bytes());
    wav.extend_from_slice(&1u16.to_le_bytes());
    wav.extend_from_slice(&1u16.to_le_bytes());
    wav.extend_from_slice(&rate.to_le_bytes());
    wav.extend_from_slice(&(rate * 2).to_le_bytes());
    wav.extend_from_slice(&2u16.to_le_bytes());
    wav.extend_from_slice(&16u16.to_le_bytes());
    wav.extend_from_slice(b"data");
    wav.extend_from_slice(&(data.len() as u32).to_le_bytes());
    wav.extend_from_slice(&data);
    wav
}

#[test]
fn an_http_speech_endpoint_is_spoken_through_and_espeak_takes_over_when_it_fails() {
    let tts = WebhookServer::start(|r| {
        let body: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        if body["input"].as_str().is_some_and(|i| i.contains("broken")) {
            return HookReply::Raw(500, "text/plain", "overloaded".into());
        }
        HookReply::Bytes(200, "audio/wav", tone_wav(1.5))
    });
    const KEY: &str = "sk-test-0123456789abcdef";
    let prov = format!(
        "[tts]\nurl = \"{}\"\napiKey = \"{KEY}\"\nmodel = \"tts-1-hd\"\nvoices = {{ \"de.female.1\" = \"nova\" }}\n\n{}{}{}",
        tts.url("/v1/audio/speech"),
        tenant_with_prompts(),
        number_with_plan(
            "820",
            "http",
            &say_plan("de.female.1", "<speak>Hallo <break time=\"300ms\"/> Welt</speak>", true)
        ),
        number_with_plan(
            "821",
            "broken",
            &say_plan("de.female.1", "Das ist broken", false)
        ),
    );
    let server = Server::start(&prov, true);

    let heard = hear(&server, "820");
    let reqs = tts.wait_for("/v1/audio/speech", 1, Duration::from_secs(5));
    let body = reqs[0].json();
    assert_eq!(body["model"], "tts-1-hd", "{body}");
    assert_eq!(
        body["voice"], "nova",
        "the TENIOS name maps to the endpoint's voice: {body}"
    );
    assert_eq!(
        body["input"], "Hallo , Welt",
        "SSML goes as its words: {body}"
    );
    assert_eq!(body["response_format"], "wav");
    assert_eq!(
        reqs[0].header("authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );
    let tone = tone_amplitude(&heard, 1000.0);
    assert!(
        tone > 1000.0 && audible_seconds(&heard) > 1.2,
        "the caller hears the endpoint's audio (1 kHz at {tone:.0})"
    );

    // The endpoint fails: espeak-ng speaks instead (speech, not the tone, not silence).
    let heard = hear(&server, "821");
    assert!(
        audible_seconds(&heard) > 0.5,
        "espeak-ng takes over when the endpoint fails"
    );
    assert!(
        tts.requests_to("/v1/audio/speech").len() >= 2,
        "the endpoint was asked first"
    );
    assert!(
        !server.log_lines().iter().any(|l| l.contains(KEY)),
        "the key is never logged"
    );
}
