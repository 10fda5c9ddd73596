//! callplane-media
