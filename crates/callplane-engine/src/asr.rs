//! Speech recognition for COLLECT_SPEECH: a sans-IO voice activity detector that finds where
//! the caller starts and stops speaking, a [`SpeechRecognizer`] trait, and the streaming
//! provider that speaks the Vosk/Kaldi WebSocket protocol (`vosk-server` and the engines that
//! copy it): `{"config":{"sample_rate":8000}}`, binary 16-bit PCM, `{"eof":1}`, answered by
//! `{"partial":…}` messages and a final `{"text":…,"result":[{"word","conf"}…]}`.
//!
//! One listen task per block try: it taps the caller's audio, waits up to the block's
//! `timeout` for speech to start, streams the utterance (with 300 ms before its start) to the
//! recognizer until 800 ms of silence (or 15 s), and reports the text to the flow.

use crate::flow::{Input, Recognized};
use callplane_media::{MediaHandle, TapFrame, Track};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tracing::{debug, info, warn};

/// Frames (20 ms) of sound above the threshold that start speech.
const START_FRAMES: u32 = 3;
/// Frames of silence after speech that end it (800 ms).
const END_FRAMES: u32 = 40;
/// Longest utterance streamed (15 s): then it is cut and recognised as it is.
const MAX_UTTERANCE_FRAMES: u32 = 750;
/// Audio kept from before the start of speech (300 ms), so its first sound is not lost.
const PRE_ROLL_FRAMES: usize = 15;
/// RMS level (of 32768) above which a frame counts as sound: about −42 dBFS, above line noise
/// and comfort noise, below any voice.
const SPEECH_RMS: f64 = 260.0;
/// How long the recognizer may take for its final answer after the end of speech.
const FINAL_TIMEOUT: Duration = Duration::from_secs(5);

/// What the detector saw in a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VadEvent {
    /// Still waiting for speech, or still speaking.
    None,
    /// Speech has begun (with this frame and the few before it).
    Started,
    /// Speech has ended (enough silence, or the utterance hit its length limit).
    Ended,
}

/// An energy voice activity detector over 20 ms frames: speech starts after
/// [`START_FRAMES`] loud frames in a row and ends after [`END_FRAMES`] quiet ones.
#[derive(Debug, Default)]
pub struct Vad {
    loud_run: u32,
    quiet_run: u32,
    speaking: bool,
    frames_in_speech: u32,
    ended: bool,
}

impl Vad {
    /// Feeds one frame.
    pub fn frame(&mut self, samples: &[i16]) -> VadEvent {
        if self.ended || samples.is_empty() {
            return VadEvent::None;
        }
        let rms = (samples.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>()
            / samples.len() as f64)
            .sqrt();
        let loud = rms >= SPEECH_RMS;
        if !self.speaking {
            self.loud_run = if loud { self.loud_run + 1 } else { 0 };
            if self.loud_run >= START_FRAMES {
                self.speaking = true;
                self.frames_in_speech = self.loud_run;
                return VadEvent::Started;
            }
            return VadEvent::None;
        }
        self.frames_in_speech += 1;
        self.quiet_run = if loud { 0 } else { self.quiet_run + 1 };
        if self.quiet_run >= END_FRAMES || self.frames_in_speech >= MAX_UTTERANCE_FRAMES {
            self.ended = true;
            return VadEvent::Ended;
        }
        VadEvent::None
    }

    pub fn is_speaking(&self) -> bool {
        self.speaking && !self.ended
    }
}

/// The audio of one utterance, 8 kHz 16-bit frames, ending when the sender is dropped.
pub type Utterance = mpsc::Receiver<Vec<i16>>;

/// A future a recognizer returns.
pub type RecognizeFuture = Pin<Box<dyn Future<Output = Result<Option<Recognized>, String>> + Send>>;

/// A speech-to-text engine: recognises one utterance in `language` (`de-DE`).
pub trait SpeechRecognizer: Send + Sync + std::fmt::Debug {
    /// A short name for logs (`vosk`).
    fn name(&self) -> &'static str;
    /// Recognises the utterance; `Ok(None)` when nothing intelligible was said.
    fn recognize(&self, language: &str, audio: Utterance) -> RecognizeFuture;
}

/// A recognizer speaking the Vosk/Kaldi WebSocket protocol at `url` (`ws://host:2700`).
#[derive(Debug, Clone)]
pub struct VoskRecognizer {
    pub url: String,
}

impl SpeechRecognizer for VoskRecognizer {
    fn name(&self) -> &'static str {
        "vosk"
    }

    fn recognize(&self, language: &str, mut audio: Utterance) -> RecognizeFuture {
        let url = self.url.clone();
        let language = language.to_owned();
        Box::pin(async move {
            let ws = crate::stream::connect(&url).await?;
            let (mut tx, mut rx) = ws.split();
            // The language rides along for servers that host several models; Vosk ignores it.
            let config = serde_json::json!({"config": {"sample_rate": 8000, "language": language}});
            tx.send(Message::text(config.to_string()))
                .await
                .map_err(|e| format!("sending to the recognizer: {e}"))?;
            let mut bytes = Vec::with_capacity(320);
            // Partial results are read (and dropped) while sending, so the server never blocks.
            loop {
                tokio::select! {
                    frame = audio.recv() => match frame {
                        Some(frame) => {
                            bytes.clear();
                            for s in frame {
                                bytes.extend_from_slice(&s.to_le_bytes());
                            }
                            tx.send(Message::binary(bytes.clone()))
                                .await
                                .map_err(|e| format!("sending to the recognizer: {e}"))?;
                        }
                        None => break,
                    },
                    msg = rx.next() => match msg {
                        Some(Ok(_)) => {}
                        _ => return Err("the recognizer closed the connection".to_owned()),
                    },
                }
            }
            tx.send(Message::text("{\"eof\":1}"))
                .await
                .map_err(|e| format!("sending to the recognizer: {e}"))?;
            let deadline = tokio::time::Instant::now() + FINAL_TIMEOUT;
            loop {
                let msg = tokio::time::timeout_at(deadline, rx.next())
                    .await
                    .map_err(|_| format!("no final result within {FINAL_TIMEOUT:?}"))?;
                let text = match msg {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(_)) => continue,
                    _ => return Err("the recognizer closed without a result".to_owned()),
                };
                let Ok(v) = serde_json::from_str::<Value>(text.as_str()) else {
                    continue;
                };
                if v.get("partial").is_some() {
                    continue;
                }
                let Some(text) = v["text"].as_str() else {
                    continue;
                };
                let _ = tx.close().await;
                let text = text.trim().to_owned();
                if text.is_empty() {
                    return Ok(None);
                }
                let confs: Vec<f64> = v["result"]
                    .as_array()
                    .map(|words| words.iter().filter_map(|w| w["conf"].as_f64()).collect())
                    .unwrap_or_default();
                let confidence = if confs.is_empty() {
                    None
                } else {
                    Some(confs.iter().sum::<f64>() / confs.len() as f64)
                };
                return Ok(Some(Recognized { text, confidence }));
            }
        })
    }
}

/// One try of a COLLECT_SPEECH block.
pub struct ListenJob {
    /// The flow's id, reported back in `Input::SpeechResult`.
    pub id: u64,
    pub language: String,
    /// How long to wait for speech to start.
    pub timeout: Duration,
    pub recognizer: Arc<dyn SpeechRecognizer>,
    pub media: MediaHandle,
    pub inputs: mpsc::UnboundedSender<Input>,
    /// Dropped or sent to: stop listening (the result is then not reported).
    pub stop: mpsc::UnboundedReceiver<()>,
}

/// Listens for one utterance and reports what was said: `Ok(None)` for silence until the
/// timeout, an error when the recognizer failed.
pub async fn listen(mut job: ListenJob) {
    let (tap_tx, mut tap) = mpsc::channel::<TapFrame>(200);
    job.media.tap(Some(tap_tx));
    let deadline = tokio::time::Instant::now() + job.timeout;
    let mut vad = Vad::default();
    let mut pre_roll: VecDeque<Vec<i16>> = VecDeque::with_capacity(PRE_ROLL_FRAMES);
    let mut sender: Option<mpsc::Sender<Vec<i16>>> = None;
    let mut recognition: Option<tokio::task::JoinHandle<Result<Option<Recognized>, String>>> = None;
    let result = loop {
        tokio::select! {
            frame = tap.recv() => {
                let Some(frame) = frame else { break Err("the call's audio ended".to_owned()) };
                if frame.track != Track::Inbound {
                    continue;
                }
                match vad.frame(&frame.samples) {
                    VadEvent::Started => {
                        debug!(listen = job.id, "speech started");
                        let _ = job.inputs.send(Input::SpeechStarted { id: job.id });
                        let (tx, rx) = mpsc::channel(MAX_UTTERANCE_FRAMES as usize + PRE_ROLL_FRAMES);
                        for f in pre_roll.drain(..) {
                            let _ = tx.try_send(f);
                        }
                        let _ = tx.try_send(frame.samples);
                        sender = Some(tx);
                        let recognizer = job.recognizer.clone();
                        let language = job.language.clone();
                        recognition = Some(tokio::spawn(async move {
                            recognizer.recognize(&language, rx).await
                        }));
                    }
                    VadEvent::Ended => {
                        debug!(listen = job.id, "speech ended");
                        if let Some(tx) = &sender {
                            let _ = tx.try_send(frame.samples);
                        }
                        drop(sender.take()); // the end of the utterance
                        let Some(r) = recognition.take() else { break Ok(None) };
                        job.media.tap(None);
                        break tokio::select! {
                            r = r => r.unwrap_or_else(|e| Err(e.to_string())),
                            _ = job.stop.recv() => return,
                        };
                    }
                    VadEvent::None if vad.is_speaking() => {
                        if let Some(tx) = &sender {
                            let _ = tx.try_send(frame.samples);
                        }
                    }
                    VadEvent::None => {
                        if pre_roll.len() == PRE_ROLL_FRAMES {
                            pre_roll.pop_front();
                        }
                        pre_roll.push_back(frame.samples);
                    }
                }
            }
            _ = tokio::time::sleep_until(deadline), if !vad.is_speaking() => break Ok(None),
            _ = job.stop.recv() => {
                job.media.tap(None);
                return;
            }
        }
    };
    job.media.tap(None);
    match &result {
        Ok(Some(r)) => {
            info!(listen = job.id, text = %r.text, confidence = ?r.confidence, "speech recognised")
        }
        Ok(None) => info!(listen = job.id, "no speech"),
        Err(e) => warn!(listen = job.id, error = %e, "speech recognition failed"),
    }
    let _ = job.inputs.send(Input::SpeechResult { id: job.id, result });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(amplitude: f64) -> Vec<i16> {
        (0..160)
            .map(|n| (amplitude * (n as f64 * 0.3).sin()) as i16)
            .collect()
    }

    #[test]
    fn vad_finds_start_and_end_of_speech() {
        let mut v = Vad::default();
        let quiet = tone(100.0);
        let loud = tone(3000.0);
        for _ in 0..50 {
            assert_eq!(v.frame(&quiet), VadEvent::None);
        }
        // Two loud frames (a click) are not speech; the run restarts.
        assert_eq!(v.frame(&loud), VadEvent::None);
        assert_eq!(v.frame(&loud), VadEvent::None);
        assert_eq!(v.frame(&quiet), VadEvent::None);
        assert_eq!(v.frame(&loud), VadEvent::None);
        assert_eq!(v.frame(&loud), VadEvent::None);
        assert_eq!(v.frame(&loud), VadEvent::Started);
        assert!(v.is_speaking());
        // A pause shorter than 800 ms inside speech does not end it.
        for _ in 0..30 {
            assert_eq!(v.frame(&quiet), VadEvent::None);
        }
        assert_eq!(v.frame(&loud), VadEvent::None);
        for _ in 0..39 {
            assert_eq!(v.frame(&quiet), VadEvent::None);
        }
        assert_eq!(v.frame(&quiet), VadEvent::Ended);
        assert!(!v.is_speaking());
        assert_eq!(v.frame(&loud), VadEvent::None, "one utterance per detector");
    }

    #[test]
    fn vad_cuts_endless_speech() {
        let mut v = Vad::default();
        let loud = tone(3000.0);
        let mut ended_at = None;
        for i in 0..1000 {
            if v.frame(&loud) == VadEvent::Ended {
                ended_at = Some(i);
                break;
            }
        }
        assert_eq!(ended_at, Some(MAX_UTTERANCE_FRAMES as usize - 1));
    }
}
