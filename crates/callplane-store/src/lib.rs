//! callplane-store
