//! callplane-engine
