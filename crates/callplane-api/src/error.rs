//! The one error shape of the API, `{"error":{"code","message","field"?,"errors"?}}`, and the
//! mapping of store errors and axum's own rejections onto it.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use callplane_store::{FieldError, StoreError};
use serde::Serialize;

/// The stable, machine-readable `code` of an error answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    InvalidJson,
    ValidationFailed,
    InvalidPath,
    InvalidBody,
    Unauthorized,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    Conflict,
    Gone,
    PayloadTooLarge,
    UnsupportedMediaType,
    RangeNotSatisfiable,
    UpgradeRequired,
    RateLimited,
    Busy,
    InternalError,
}

/// An error answered to the client. Client errors carry a stable `code` and, where one field is
/// to blame, its name as the client spelled it (`blocks[0].maxDigits`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
    pub field: Option<String>,
    /// Every problem, for `validation_failed`.
    pub errors: Vec<FieldError>,
    /// Seconds for `Retry-After` (a `429`).
    pub retry_after: Option<u64>,
}

/// Every error answer: `{"error": {…}}` (`Error` in the OpenAPI document).
#[derive(Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Error")]
pub(crate) struct Body<'a> {
    error: Inner<'a>,
}

/// What went wrong.
#[derive(Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "ErrorDetail")]
struct Inner<'a> {
    /// Stable machine-readable code.
    code: ErrorCode,
    message: &'a str,
    /// The field at fault as the client spelled it, e.g. `blocks[0].maxDigits`; absent when
    /// no single field is.
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
    /// Every problem, for `validation_failed`.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    errors: &'a [FieldError],
}

impl ApiError {
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
            errors: Vec::new(),
            retry_after: None,
        }
    }

    /// 429 `rate_limited`: the key is over its request rate; retry after `seconds`.
    pub fn rate_limited(seconds: u64) -> ApiError {
        ApiError {
            retry_after: Some(seconds),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::RateLimited,
                format!("too many requests for this API key; retry in {seconds} s"),
            )
        }
    }

    /// Names the field at fault.
    pub fn with_field(mut self, field: impl Into<String>) -> ApiError {
        self.field = Some(field.into());
        self
    }

    /// The same error, naming `to` where it named `from` (a request's own name for a field a
    /// shared check calls otherwise, such as a transfer's `from` for a leg).
    pub fn field_renamed(self, from: &str, to: &str) -> ApiError {
        if self.field.as_deref() == Some(from) {
            self.with_field(to)
        } else {
            self
        }
    }

    /// 400 `invalid_json`: the body is not JSON, or not the object's shape.
    pub fn invalid_json(message: impl Into<String>, field: Option<String>) -> ApiError {
        ApiError {
            field,
            ..ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidJson, message)
        }
    }

    /// 400 `validation_failed`, naming the first error's field and listing all of them.
    pub fn validation(errors: Vec<FieldError>) -> ApiError {
        let (message, field) = match errors.first() {
            Some(first) if errors.len() == 1 => (first.message.clone(), Some(first.field.clone())),
            Some(first) => (
                format!("{} (and {} more error(s))", first.message, errors.len() - 1),
                Some(first.field.clone()),
            ),
            None => ("invalid request".to_string(), None),
        };
        ApiError {
            field,
            errors,
            ..ApiError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::ValidationFailed,
                message,
            )
        }
    }

    /// 400 `validation_failed` for one field of one object.
    pub fn invalid_field(object: &str, field: &str, message: impl Into<String>) -> ApiError {
        ApiError::validation(vec![FieldError {
            object: object.to_string(),
            field: field.to_string(),
            message: message.into(),
        }])
    }

    /// 401: no key, or one we do not know. Answered with `WWW-Authenticate: Bearer`.
    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, message)
    }

    /// 403: the key's realm may never do this.
    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, ErrorCode::Forbidden, message)
    }

    /// 404: absent, or outside the key's scope (the two are not told apart).
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, message)
    }

    /// 409: the request contradicts what is stored (exists already, still referenced).
    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, ErrorCode::Conflict, message)
    }

    pub fn payload_too_large(limit: usize) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::PayloadTooLarge,
            format!("the request body is larger than {limit} bytes"),
        )
        .with_field("body")
    }

    pub fn unsupported_media_type(expected: &str) -> ApiError {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::UnsupportedMediaType,
            format!("Content-Type must be {expected}"),
        )
    }

    /// 500 without details for the client; the cause goes to the log.
    pub fn internal(context: &str, cause: &dyn std::fmt::Display) -> ApiError {
        tracing::error!(error = %cause, "{context}");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::InternalError,
            "internal error; see the server log",
        )
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::Invalid(errors) => ApiError::validation(errors),
            StoreError::Exists { object } => ApiError::conflict(format!("{object} already exists")),
            StoreError::Refused(message) => ApiError::conflict(message),
            e if e.is_constraint_violation() => {
                // Normally caught by the handlers' own checks first, with a better message.
                ApiError::conflict(format!("refused by a database constraint: {e}"))
            }
            e if e.is_busy() => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::Busy,
                "the database is busy; retry",
            ),
            e => ApiError::internal("store error", &e),
        }
    }
}

impl ApiError {
    /// The `error` object of the answer's body, for replies on the events WebSocket.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(Inner {
            code: self.code,
            message: &self.message,
            field: self.field.as_deref(),
            errors: &self.errors,
        })
        .unwrap_or_default()
    }
}

impl ApiError {
    /// The whole body of an error answer, `{"error": {…}}`, for answers built by hand.
    pub fn body_json(&self) -> serde_json::Value {
        serde_json::json!({ "error": self.to_json() })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Body {
            error: Inner {
                code: self.code,
                message: &self.message,
                field: self.field.as_deref(),
                errors: &self.errors,
            },
        };
        let mut res = (self.status, axum::Json(body)).into_response();
        if let Some(s) = self.retry_after {
            if let Ok(v) = HeaderValue::from_str(&s.to_string()) {
                res.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        if self.status == StatusCode::UPGRADE_REQUIRED {
            res.headers_mut()
                .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            res.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        res
    }
}

/// Axum's path rejections (bad percent-encoding, a segment of the wrong type) in our shape.
impl From<axum::extract::rejection::PathRejection> for ApiError {
    fn from(r: axum::extract::rejection::PathRejection) -> ApiError {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidPath,
            r.body_text(),
        )
    }
}

/// Axum's body rejections: a body over the route's limit is 413, anything else 400.
impl From<axum::extract::rejection::BytesRejection> for ApiError {
    fn from(r: axum::extract::rejection::BytesRejection) -> ApiError {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::PayloadTooLarge,
                r.body_text(),
            )
            .with_field("body")
        } else {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidBody,
                r.body_text(),
            )
            .with_field("body")
        }
    }
}

/// Axum's JSON extractor rejections, for any handler that uses `axum::Json` directly.
impl From<axum::extract::rejection::JsonRejection> for ApiError {
    fn from(r: axum::extract::rejection::JsonRejection) -> ApiError {
        use axum::extract::rejection::JsonRejection as J;
        match r {
            J::MissingJsonContentType(_) => ApiError::unsupported_media_type("application/json"),
            J::BytesRejection(b) => b.into(),
            other => ApiError::invalid_json(other.body_text(), None),
        }
    }
}
