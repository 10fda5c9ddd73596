//! STREAM: a call's audio to a customer's WebSocket server and the server's audio back, in the
//! Twilio Media Streams message format, so bot frameworks written for it work unchanged.
//!
//! We send `connected`, `start` (stream and call ids, custom parameters, the media format),
//! `media` (base64 μ-law 8 kHz, 20 ms per message, per track), `dtmf`, `mark` (when audio the
//! server marked has been played) and `stop`. The server sends `media` (played to the caller in
//! order), `mark`, `clear` (stops its queued audio at once: barge-in) and — as our extension —
//! `stop`, which ends the stream like closing the socket does.
//!
//! One task per stream owns the socket. The call's media leg gives it a copy of every frame
//! (a bounded tap: a slow server loses frames, the call never waits) and plays what it sends;
//! the call task forwards digits and the ends of plays (for marks) and hears how it ended.

use crate::blocks::StreamTrack;
use crate::flow::{Input, StreamEnd};
use base64::Engine as _;
use callplane_media::{MediaHandle, TapFrame, Track};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tracing::{debug, info, warn};

/// How long connecting (TCP, TLS, the WebSocket handshake) may take.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Frames the tap holds for a server that reads slowly (2 s per track).
const TAP_FRAMES: usize = 200;
/// Largest message accepted from the server (a `media` message of a few seconds).
const MAX_MESSAGE: usize = 1 << 20;
/// The socket's read buffer: a 20 ms `media` message is about 500 bytes.
const READ_BUFFER: usize = 8 * 1024;

/// What the call task tells a running stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamControl {
    /// The caller pressed a key.
    Dtmf(char),
    /// A play ended (the media leg's `PlayFinished`).
    Played(u64),
    /// End the stream now (interrupt, hang-up): the server gets `stop`.
    Stop,
}

/// Everything one stream needs.
pub struct StreamJob {
    /// The flow's id for the block, reported back in `Input::StreamEnded`.
    pub id: u64,
    pub url: String,
    pub track: StreamTrack,
    pub parameters: BTreeMap<String, String>,
    pub timeout: Duration,
    /// Our call id (Twilio's `callSid`).
    pub call_id: String,
    /// The tenant (Twilio's `accountSid`).
    pub account: String,
    pub media: MediaHandle,
    pub inputs: mpsc::UnboundedSender<Input>,
    pub control: mpsc::UnboundedReceiver<StreamControl>,
}

/// `MZ` and 32 hex digits, as Twilio's stream ids look.
fn stream_sid() -> String {
    format!("MZ{}", uuid::Uuid::new_v4().simple())
}

/// Per-connection message numbering and the id every message carries.
struct Outgoing {
    sid: String,
    seq: u64,
}

impl Outgoing {
    fn next(&mut self, mut msg: Value) -> Message {
        self.seq += 1;
        if let Some(o) = msg.as_object_mut() {
            o.insert("sequenceNumber".into(), json!(self.seq.to_string()));
            o.insert("streamSid".into(), json!(self.sid));
        }
        Message::text(msg.to_string())
    }
}

/// Runs the stream to its end and reports it to the flow.
pub async fn run(job: StreamJob) {
    let id = job.id;
    let inputs = job.inputs.clone();
    let result = stream(job).await;
    if let Err(why) = &result {
        warn!(stream = id, error = %why, "STREAM failed");
    }
    let _ = inputs.send(Input::StreamEnded { id, result });
}

/// A client WebSocket to a customer's or an engine's server (STREAM bots, speech recognizers):
/// connecting (TCP, TLS, the handshake) takes at most [`CONNECT_TIMEOUT`].
pub(crate) async fn connect(
    url: &str,
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    String,
> {
    let connect = tokio_tungstenite::connect_async_with_config(
        url,
        Some(
            // tungstenite zero-fills its whole read buffer before every read (128 KiB by
            // default): at 50 messages a second per stream that was most of the CPU.
            tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
                .read_buffer_size(READ_BUFFER)
                .max_message_size(Some(MAX_MESSAGE))
                .max_frame_size(Some(MAX_MESSAGE)),
        ),
        true,
    );
    let (ws, _) = tokio::time::timeout(CONNECT_TIMEOUT, connect)
        .await
        .map_err(|_| format!("no connection to {url} within {CONNECT_TIMEOUT:?}"))?
        .map_err(|e| format!("cannot connect to {url}: {e}"))?;
    Ok(ws)
}

async fn stream(mut job: StreamJob) -> Result<StreamEnd, String> {
    let ws = connect(&job.url).await?;
    let (mut tx, mut rx) = ws.split();
    let sid = stream_sid();
    info!(call = %job.call_id, stream = %sid, url = %job.url, "STREAM connected");
    let mut out = Outgoing {
        sid: sid.clone(),
        seq: 0,
    };
    let tracks: Vec<&str> = match job.track {
        StreamTrack::Inbound => vec!["inbound"],
        StreamTrack::Outbound => vec!["outbound"],
        StreamTrack::Both => vec!["inbound", "outbound"],
    };
    let hello = [
        Message::text(
            json!({"event": "connected", "protocol": "Call", "version": "1.0.0"}).to_string(),
        ),
        out.next(json!({
            "event": "start",
            "start": {
                "streamSid": sid,
                "accountSid": job.account,
                "callSid": job.call_id,
                "tracks": tracks,
                "customParameters": job.parameters,
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            },
        })),
    ];
    for m in hello {
        tx.send(m).await.map_err(|e| format!("cannot send: {e}"))?;
    }
    let (tap_tx, mut tap) = mpsc::channel::<TapFrame>(TAP_FRAMES * 2);
    job.media.tap(Some(tap_tx));
    let deadline = tokio::time::Instant::now() + job.timeout;
    let b64 = base64::engine::general_purpose::STANDARD;
    // Per track: chunks sent (each 20 ms), so `timestamp` is the track's media time in ms.
    let mut chunks = [0u64; 2];
    // Plays we queued for the server and not finished, and its marks waiting for them.
    let mut queued: HashSet<u64> = HashSet::new();
    let mut last_play: Option<u64> = None;
    let mut marks: VecDeque<(u64, String)> = VecDeque::new();
    let mut payload = Vec::with_capacity(320);
    let end = loop {
        tokio::select! {
            frame = tap.recv() => {
                let Some(frame) = frame else { continue };
                if !job.track.wants(frame.track) {
                    continue;
                }
                let k = usize::from(frame.track == Track::Outbound);
                payload.resize(frame.samples.len(), 0);
                let n = callplane_media::g711::encode_ulaw(&frame.samples, &mut payload);
                let msg = out.next(json!({
                    "event": "media",
                    "media": {
                        "track": if k == 0 { "inbound" } else { "outbound" },
                        "chunk": (chunks[k] + 1).to_string(),
                        "timestamp": (chunks[k] * 20).to_string(),
                        "payload": b64.encode(&payload[..n]),
                    },
                }));
                chunks[k] += 1;
                if tx.send(msg).await.is_err() {
                    break StreamEnd::Closed;
                }
            }
            msg = rx.next() => {
                let text = match msg {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Binary(_) | Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                    Some(Ok(Message::Close(_))) | None => break StreamEnd::Closed,
                    Some(Err(e)) => {
                        debug!(stream = %sid, error = %e, "STREAM socket error");
                        break StreamEnd::Closed;
                    }
                };
                let Ok(v) = serde_json::from_str::<Value>(text.as_str()) else {
                    debug!(stream = %sid, "STREAM: a message that is not JSON, ignored");
                    continue;
                };
                match v["event"].as_str() {
                    Some("media") => {
                        let Some(p) = v["media"]["payload"].as_str() else { continue };
                        let Ok(bytes) = b64.decode(p) else {
                            debug!(stream = %sid, "STREAM: media payload is not base64, ignored");
                            continue;
                        };
                        if bytes.is_empty() {
                            continue;
                        }
                        let mut pcm = vec![0i16; bytes.len()];
                        let n = callplane_media::g711::decode_ulaw(&bytes, &mut pcm);
                        pcm.truncate(n);
                        let play = job.media.play(pcm.into());
                        queued.insert(play);
                        last_play = Some(play);
                    }
                    Some("mark") => {
                        let name = v["mark"]["name"].as_str().unwrap_or_default().to_owned();
                        match last_play.filter(|p| queued.contains(p)) {
                            Some(p) => marks.push_back((p, name)),
                            None => {
                                let m = out.next(json!({"event": "mark", "mark": {"name": name}}));
                                if tx.send(m).await.is_err() {
                                    break StreamEnd::Closed;
                                }
                            }
                        }
                    }
                    Some("clear") => job.media.stop_play(),
                    Some("stop") => break StreamEnd::Stopped,
                    _ => {}
                }
            }
            ctl = job.control.recv() => match ctl {
                Some(StreamControl::Dtmf(d)) => {
                    let m = out.next(json!({"event": "dtmf", "dtmf": {"track": "inbound_track", "digit": d.to_string()}}));
                    if tx.send(m).await.is_err() {
                        break StreamEnd::Closed;
                    }
                }
                Some(StreamControl::Played(p)) => {
                    if !queued.remove(&p) {
                        continue;
                    }
                    // Marks are answered in order once the audio before them is done.
                    let mut failed = false;
                    while marks.front().is_some_and(|(id, _)| !queued.contains(id)) {
                        let Some((_, name)) = marks.pop_front() else { break };
                        let m = out.next(json!({"event": "mark", "mark": {"name": name}}));
                        failed |= tx.send(m).await.is_err();
                    }
                    if failed {
                        break StreamEnd::Closed;
                    }
                }
                Some(StreamControl::Stop) | None => {
                    job.media.stop_play();
                    break StreamEnd::Stopped;
                }
            },
            _ = tokio::time::sleep_until(deadline) => break StreamEnd::Timeout,
        }
    };
    job.media.tap(None);
    if end != StreamEnd::Closed {
        let _ = tx
            .send(out.next(json!({"event": "stop", "stop": {"accountSid": job.account, "callSid": job.call_id}})))
            .await;
        let _ = tx.close().await;
    }
    info!(call = %job.call_id, stream = %sid, end = end.as_str(), "STREAM ended");
    Ok(end)
}
