//! COLLECT_SPEECH with the built-in offline recognizer (Moonshine's English model on ONNX
//! Runtime, from the PyPI package scripts/install-moonshine.sh installs; scripts/test.sh runs
//! it first). No `[asr] url`: callers say "yes", "no" and "one two three four" (espeak-ng audio
//! sent as RTP after the prompt) and the words land in the variable and `collected_<name>`,
//! with a confidence; COLLECT_DIGITS with `allowSpeechInput` turns the spoken digits into
//! 1234; a silent caller hears the missing-input prompt and the question again, and the
//! variable ends up empty. A model that is not there gives one log line at start, and the
//! block is skipped with the variable empty while the plan goes on.

mod common;

use common::*;
use std::time::Duration;

fn plans() -> String {
    format!(
        "{}{}{}",
        tenant_with_prompts(),
        number_with_plan(
            "960",
            "ask",
            r#"  { blockType = "COLLECT_SPEECH", announcementName = "enter-digits", missingInputAnnouncementName = "invalid", language = "en-US", variableName = "answer", maxTries = 2, timeout = 3 },
  { blockType = "HANGUP" },"#
        ),
        number_with_plan(
            "961",
            "keys",
            r#"  { blockType = "COLLECT_DIGITS", announcementName = "enter-digits", variableName = "pin", minDigits = 1, maxDigits = 4, maxTries = 1, timeout = 3, allowSpeechInput = true, language = "en-US" },
  { blockType = "HANGUP" },"#
        )
    )
}

#[test]
fn the_built_in_recognizer_understands_yes_no_and_digits() {
    let server = Server::start(&plans(), true);
    server
        .wait_for_log("built-in Moonshine model", Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("the model is installed (scripts/install-moonshine.sh): {e}"));
    for text in ["yes", "no", "one two three four"] {
        let cdr = say_after_prompt(&server, "960", &espeak_8k("en-us", text));
        let var = |n: &str| cdr.variables.get(n).cloned().unwrap_or_default();
        assert_eq!(
            var("answer"),
            text,
            "{}\n{}",
            cdr_text(&cdr),
            server.log_tail()
        );
        assert_eq!(var("collected_answer"), text);
        let confidence: f64 = var("answer_confidence").parse().unwrap_or(0.0);
        assert!(
            confidence > 0.3 && confidence <= 1.0,
            "confidence {confidence}: {}",
            cdr_text(&cdr)
        );
    }
    // A silent caller: the missing-input prompt, the question again, then an empty answer.
    let cdr = silent_caller(&server, "960");
    let length = Duration::from_millis(cdr.talk_time_ms as u64);
    let prompt_len = prompt("enter-digits").duration();
    assert!(
        length >= prompt_len * 2 + Duration::from_secs(6),
        "prompt, 3 s, missing-input prompt, prompt, 3 s: {length:?}"
    );

    let cdr = say_after_prompt(&server, "961", &espeak_8k("en-us", "one two three four"));
    assert_eq!(
        cdr.variables.get("pin").map(String::as_str),
        Some("1234"),
        "spoken digits become the digits: {}",
        cdr_text(&cdr)
    );
}

#[test]
fn a_missing_model_is_said_at_start_and_the_block_is_skipped() {
    let prov = format!(
        "[asr]\nmoonshineDir = \"/nonexistent/moonshine_cpp\"\n\n{}",
        plans()
    );
    let server = Server::start(&prov, true);
    let line = server
        .wait_for_log("no speech recognizer", Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        line.contains("/nonexistent/moonshine_cpp"),
        "the line says what is missing: {line}"
    );
    let cdr = say_after_prompt(&server, "960", &espeak_8k("en-us", "yes"));
    assert_eq!(
        cdr.variables.get("answer").map(String::as_str),
        Some(""),
        "{}",
        cdr_text(&cdr)
    );
    assert_eq!(cdr.hangup_cause, "NORMAL_CLEARING", "{}", cdr_text(&cdr));
}
