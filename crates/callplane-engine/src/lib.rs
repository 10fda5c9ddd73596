//! Callplane's call engine: the block vocabulary and its validator, the routing-plan
//! interpreter (`flow`, sans-IO), the Call actor that drives legs and media (`call`), prompts,
//! and the `Engine` that accepts inbound calls.

pub mod blocks;
pub mod call;
pub mod engine;
pub mod flow;
pub mod hangup;
pub mod prompts;
pub mod variables;

pub use engine::{Engine, EngineConfig};
