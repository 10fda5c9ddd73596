//! callplane-api
