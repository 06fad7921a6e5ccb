//! Request bodies: JSON only (415 otherwise), at most the configured size (413), decoded with
//! the path of the offending field in the error (400 for bad JSON, 422 for a wrong field).
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;

use crate::error::ApiError;

pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
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
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            let status = e.status();
            if status == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    status,
                    "the body is larger than this server accepts (--max-body-bytes)",
                )
            } else {
                ApiError::new(StatusCode::BAD_REQUEST, format!("reading the body: {e}"))
            }
        })?;
        decode(&bytes).map(JsonBody)
    }
}

/// Decodes `bytes`, naming the field that does not fit.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let v: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let syntax = inner.is_syntax() || inner.is_eof() || inner.is_io();
        let field = if path == "." || path.is_empty() {
            "body".to_string()
        } else {
            path
        };
        if syntax {
            ApiError::bad("body", format!("the body is not valid JSON: {inner}"))
        } else {
            ApiError::invalid(field.clone(), format!("{field}: {inner}"))
        }
    })?;
    de.end()
        .map_err(|e| ApiError::bad("body", format!("the body has data after the JSON value: {e}")))?;
    Ok(v)
}
