//! A client of the events WebSocket (`GET /v1/events`), on tungstenite's blocking API.

use super::Server;
use serde_json::Value;
use std::net::TcpStream;
use std::time::{Duration, Instant};
use tungstenite::{Message, WebSocket};

pub type Ws = WebSocket<TcpStream>;

/// A WebSocket client on `/v1/events` (the key as `?token=`), after its `hello`.
pub fn connect(server: &Server, query: &str) -> (Ws, Value) {
    let stream = TcpStream::connect(("127.0.0.1", server.http_port())).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let url = format!("ws://127.0.0.1:{}/v1/events?{query}", server.http_port());
    let (mut ws, resp) = tungstenite::client(url.as_str(), stream)
        .unwrap_or_else(|e| panic!("WebSocket handshake: {e}\n{}", server.log_tail()));
    assert_eq!(resp.status().as_u16(), 101);
    let hello = next_json(&mut ws).expect("hello");
    (ws, hello)
}

/// The next text frame as JSON; `None` on timeout or close.
pub fn next_json(ws: &mut Ws) -> Option<Value> {
    loop {
        match ws.read() {
            Ok(Message::Text(t)) => return serde_json::from_str(t.as_str()).ok(),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => continue,
        }
    }
}

pub fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into())).expect("send");
}

pub fn subscribe(ws: &mut Ws, v: Value) {
    send(ws, v);
    let r = next_json(ws).expect("subscribed");
    assert_eq!(r["type"], "subscribed", "{r}");
}

/// Events of `call_id` read until its `call.finished`.
pub fn events_until_finished(ws: &mut Ws, call_id: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let Some(v) = next_json(ws) else { break };
        if v["callId"] == call_id {
            let done = v["type"] == "call.finished";
            out.push(v);
            if done {
                break;
            }
        }
    }
    out
}

pub fn types(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["type"].as_str().unwrap_or("?").to_string())
        .collect()
}
