//! Reading request bodies: the content type, the size limit (a route's `DefaultBodyLimit`),
//! and JSON turned into the model structs with serde's message and the field it names.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderMap};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::ApiError;

/// Largest JSON body accepted (a routing plan with many blocks is a few kB).
pub const JSON_BODY_LIMIT: usize = 1024 * 1024;
/// Largest announcement upload (about 10 minutes of 16 kHz 16-bit mono).
pub const WAV_BODY_LIMIT: usize = 20 * 1024 * 1024;

/// The media type without parameters, lowercased; `None` when the header is absent or not text.
pub(crate) fn media_type(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    Some(
        v.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase(),
    )
}

fn is_json(media: &str) -> bool {
    media == "application/json" || (media.starts_with("application/") && media.ends_with("+json"))
}

/// A JSON body parsed into a `Value` (syntax checked, shape not yet).
#[derive(Debug)]
pub struct JsonBody(pub Value);

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match media_type(req.headers()) {
            Some(m) if is_json(&m) => {}
            _ => return Err(ApiError::unsupported_media_type("application/json")),
        }
        let bytes = Bytes::from_request(req, state).await?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::invalid_json(format!("the body is not valid JSON: {e}"), None))
    }
}

/// A JSON body that may be left out: an empty body (whatever its content type) is `None`,
/// anything else must be JSON as for [`JsonBody`]. For commands whose fields are all optional.
#[derive(Debug)]
pub struct OptionalJsonBody(pub Option<Value>);

impl<S: Send + Sync> FromRequest<S> for OptionalJsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let media = media_type(req.headers());
        let bytes = Bytes::from_request(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJsonBody(None));
        }
        match media {
            Some(m) if is_json(&m) => {}
            _ => return Err(ApiError::unsupported_media_type("application/json")),
        }
        serde_json::from_slice(&bytes)
            .map(|v| OptionalJsonBody(Some(v)))
            .map_err(|e| ApiError::invalid_json(format!("the body is not valid JSON: {e}"), None))
    }
}

/// A raw body of at most the route's limit, for uploads.
pub struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        Ok(RawBody(Bytes::from_request(req, state).await?))
    }
}

/// The body as a JSON object, or 400 when it is another JSON value.
pub(crate) fn object(v: Value) -> Result<serde_json::Map<String, Value>, ApiError> {
    match v {
        Value::Object(m) => Ok(m),
        other => Err(ApiError::invalid_json(
            format!("the body must be a JSON object, got {}", kind(&other)),
            None,
        )),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Deserializes a parsed body into `T`, mapping serde's error to `invalid_json` with the field
/// it is about: the path to the value of the wrong type, or the name in
/// "unknown field `x`" / "missing field `x`".
pub fn decode<T: DeserializeOwned>(v: Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let message = e.inner().to_string();
        ApiError::invalid_json(message.clone(), field_of(&path, &message))
    })
}

/// The field a serde error is about; see [`decode`].
pub(crate) fn field_of(path: &str, message: &str) -> Option<String> {
    let named = ["unknown field `", "missing field `"]
        .iter()
        .find_map(|p| message.strip_prefix(p))
        .and_then(|rest| rest.split('`').next())
        .filter(|n| !n.is_empty());
    let path = (path != "." && !path.is_empty()).then_some(path);
    match (path, named) {
        (Some(p), Some(n)) if p == n || p.ends_with(&format!(".{n}")) => Some(p.to_string()),
        (Some(p), Some(n)) => Some(format!("{p}.{n}")),
        (None, Some(n)) => Some(n.to_string()),
        (Some(p), None) => Some(p.to_string()),
        (None, None) => None,
    }
}
