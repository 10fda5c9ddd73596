//! `asr-bench [--dir DIR] [--rounds 3] [--workers 1]`: the built-in recognizer on phrases
//! spoken by espeak-ng, as COLLECT_SPEECH hands them over: 8 kHz, through G.711 μ-law (what
//! RTP carries), with 300 ms before the speech and 800 ms of silence after it.
//!
//! 1. One at a time on one worker: each phrase's text, the time it took and its real-time
//!    factor (time / audio length), and the total real-time factor.
//! 2. Throughput: every phrase `--rounds` times onto `--workers` workers (one core each),
//!    each kept busy: seconds of speech recognised per second of wall time, which is how
//!    many callers speaking without a pause that many cores keep up with.
//!
//! Needs espeak-ng and sox, and the model (scripts/install-moonshine.sh).

use callplane_engine::moonshine::{MoonshineRecognizer, DEFAULT_DIR};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

const PHRASES: &[&str] = &[
    "yes",
    "no",
    "one two three four",
    "four one five",
    "I would like to speak to sales",
    "my account number is four seven one one",
    "please call me back tomorrow",
    "cancel my order",
];

/// Samples of silence around each phrase: 300 ms before, 800 ms after.
const PADDING: usize = 8_800;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

/// espeak-ng → 8 kHz 16-bit → μ-law and back, padded as the speech detector pads.
fn speak(text: &str) -> Vec<i16> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "espeak-ng -v en-us --stdout '{text}' | sox -t wav - -t raw -r 8000 -e signed -b 16 -c 1 -"
        ))
        .output()
        .expect("espeak-ng and sox");
    let pcm: Vec<i16> = out
        .stdout
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    let mut ulaw = vec![0u8; pcm.len()];
    callplane_media::g711::encode_ulaw(&pcm, &mut ulaw);
    let mut back = vec![0i16; pcm.len()];
    callplane_media::g711::decode_ulaw(&ulaw, &mut back);
    let mut padded = vec![0i16; 2_400];
    padded.extend_from_slice(&back);
    padded.extend(std::iter::repeat_n(0, PADDING - 2_400));
    padded
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = PathBuf::from(arg(&args, "--dir").unwrap_or_else(|| DEFAULT_DIR.into()));
    let rounds: usize = arg(&args, "--rounds")
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let workers: usize = arg(&args, "--workers")
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let t0 = Instant::now();
    let one = MoonshineRecognizer::load(&dir, 1).unwrap_or_else(|e| panic!("{e}"));
    // The model loads on its worker's first utterance; ONNX Runtime also sets up its arenas.
    one.warm_up().await.unwrap_or_else(|e| panic!("{e}"));
    println!("{{\"load_ms\": {}}}", t0.elapsed().as_millis());
    let audio: Vec<(&str, Vec<i16>)> = PHRASES.iter().map(|p| (*p, speak(p))).collect();
    let (mut spent, mut spoken) = (0.0, 0.0);
    for (text, pcm) in &audio {
        let seconds = pcm.len() as f64 / 8_000.0;
        let t = Instant::now();
        let r = one.transcribe(pcm.clone()).await;
        let took = t.elapsed().as_secs_f64();
        spent += took;
        spoken += seconds;
        let (heard, conf) = match r {
            Ok(Some(r)) => (r.text, r.confidence.unwrap_or(0.0)),
            Ok(None) => (String::new(), 0.0),
            Err(e) => (format!("error: {e}"), 0.0),
        };
        println!(
            "{{\"said\": {text:?}, \"heard\": {heard:?}, \"confidence\": {conf:.2}, \"audio_s\": {seconds:.2}, \"ms\": {:.0}, \"rtf\": {:.3}}}",
            took * 1000.0,
            took / seconds
        );
    }
    println!("{{\"one_at_a_time_rtf\": {:.3}}}", spent / spoken);
    drop(one);

    let pool = Arc::new(MoonshineRecognizer::load(&dir, workers).unwrap_or_else(|e| panic!("{e}")));
    pool.warm_up().await.unwrap_or_else(|e| panic!("{e}"));
    // A closed loop: one utterance more in flight than there are workers, so every worker is
    // always busy and nothing waits long enough to hit the recognizer's timeout.
    let t = Instant::now();
    let mut in_flight = tokio::task::JoinSet::new();
    let (mut total, mut speech, mut failed) = (0.0, 0.0, 0);
    let jobs: Vec<Vec<i16>> = (0..rounds)
        .flat_map(|_| audio.iter().map(|(_, pcm)| pcm.clone()))
        .collect();
    for pcm in jobs {
        if in_flight.len() > workers && !matches!(in_flight.join_next().await, Some(Ok(Ok(_)))) {
            failed += 1;
        }
        total += pcm.len() as f64 / 8_000.0;
        speech += (pcm.len() - PADDING) as f64 / 8_000.0;
        let pool = pool.clone();
        in_flight.spawn(async move { pool.transcribe(pcm).await });
    }
    while let Some(r) = in_flight.join_next().await {
        if !matches!(r, Ok(Ok(_))) {
            failed += 1;
        }
    }
    let wall = t.elapsed().as_secs_f64();
    println!(
        "{{\"workers\": {workers}, \"utterances\": {}, \"failed\": {failed}, \"audio_s\": {total:.1}, \"speech_s\": {speech:.1}, \"wall_s\": {wall:.1}, \"realtime_streams\": {:.2}, \"realtime_streams_per_core\": {:.2}, \"speaking_callers_per_core\": {:.2}}}",
        rounds * audio.len(),
        total / wall,
        total / wall / workers as f64,
        speech / wall / workers as f64
    );
}
