//! Callplane's call engine: the block vocabulary and its validator, the routing-plan
//! interpreter (`flow`, sans-IO), the Call actor that drives legs and media (`call`), prompts,
//! and the `Engine` that accepts inbound calls.

pub mod askurl;
pub mod asr;
pub mod blocks;
pub mod call;
pub mod callstate;
pub mod conference;
pub mod dial;
pub mod engine;
pub mod events;
pub mod flow;
pub mod hangup;
pub mod leg;
pub mod moonshine;
pub mod prompts;
pub mod registry;
pub mod stream;
pub mod tts;
pub mod variables;
pub mod webhook;

pub use engine::{Engine, EngineConfig};
