//! callplane-sip
