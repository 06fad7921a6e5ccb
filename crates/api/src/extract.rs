//! Request bodies: JSON only (415 otherwise), at most the configured size (413), decoded with
//! the path of the offending field in the error (400 for bad JSON, 422 for a wrong field).
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::extract::{FromRequest, Request};
use axum::http::{StatusCode, header};
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

pub struct JsonBody<T>(pub T);

static MAX_BODY: AtomicUsize = AtomicUsize::new(crate::DEFAULT_MAX_BODY);

/// Sets the largest body accepted (the server's `--max-body-bytes`).
pub fn set_max_body(n: usize) {
    MAX_BODY.store(n.max(1), Ordering::Relaxed);
}

/// A body over the limit is still read (and dropped) up to this many times the limit, so the
/// 413 reaches a client that writes its whole body before reading; past that the connection
/// is closed.
const DRAIN_FACTOR: usize = 16;

fn too_large(max: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the body is larger than this server accepts ({max} bytes, --max-body-bytes)"),
    )
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, ApiError> {
        let ct = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        let mime = ct.split(';').next().unwrap_or("").trim().to_string();
        if !(mime == "application/json" || mime.ends_with("+json")) {
            return Err(ApiError::field(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Content-Type",
                format!(
                    "the body must be JSON: send Content-Type: application/json (got {:?})",
                    if ct.is_empty() { "nothing" } else { &ct }
                ),
            ));
        }
        let max = MAX_BODY.load(Ordering::Relaxed);
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|n| n > max.saturating_mul(DRAIN_FACTOR)) {
            return Err(too_large(max));
        }
        let mut body = req.into_body();
        let mut bytes = Vec::new();
        let mut seen = 0usize;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                ApiError::new(StatusCode::BAD_REQUEST, format!("reading the body: {e}"))
            })?;
            if let Ok(data) = frame.into_data() {
                seen = seen.saturating_add(data.len());
                if seen > max.saturating_mul(DRAIN_FACTOR) {
                    break;
                }
                if seen <= max {
                    bytes.extend_from_slice(&data);
                }
            }
        }
        if seen > max {
            return Err(too_large(max));
        }
        decode(&bytes).map(JsonBody)
    }
}

/// Decodes `bytes`: 400 when they are not one JSON value, 422 naming the field that does
/// not fit `T`.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let v: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad("body", format!("the body is not valid JSON: {e}")))?;
    serde_path_to_error::deserialize(v).map_err(
        |e: serde_path_to_error::Error<serde_json::Error>| {
            let path = e.path().to_string();
            let field = if path == "." || path.is_empty() {
                "body".to_string()
            } else {
                path
            };
            ApiError::invalid(field.clone(), format!("{field}: {}", e.into_inner()))
        },
    )
}
