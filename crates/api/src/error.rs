//! Errors as HTTP answers: `{"error": "...", "field": "..."}` with a 4xx status for anything
//! the client can fix, 503 naming the store when it cannot be reached, 500 only for a corrupt
//! record or a bug.
use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use weft_ipam::IpamError;
use weft_ipam::query::EditError;
use weft_store::StoreError;

use crate::types::ErrorBody;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub error: String,
    pub field: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, error: impl Into<String>) -> Self {
        ApiError {
            status,
            error: error.into(),
            field: None,
        }
    }
    pub fn field(status: StatusCode, field: impl Into<String>, error: impl Into<String>) -> Self {
        ApiError {
            status,
            error: error.into(),
            field: Some(field.into()),
        }
    }
    pub fn bad(field: impl Into<String>, error: impl Into<String>) -> Self {
        Self::field(StatusCode::BAD_REQUEST, field, error)
    }
    pub fn invalid(field: impl Into<String>, error: impl Into<String>) -> Self {
        Self::field(StatusCode::UNPROCESSABLE_ENTITY, field, error)
    }
    pub fn not_found(error: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, error)
    }
    pub fn conflict(error: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, error)
    }
    pub fn internal(error: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, error)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (
            self.status,
            Json(ErrorBody {
                error: self.error,
                field: self.field,
            }),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        r
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match &e {
            StoreError::Unavailable(_) | StoreError::Io { .. } | StoreError::Conflict(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
            }
            StoreError::InvalidKey { .. } | StoreError::Refused { .. } => {
                ApiError::new(StatusCode::BAD_REQUEST, e.to_string())
            }
            _ => ApiError::internal(e.to_string()),
        }
    }
}

/// The request field an IPAM error is about (from the request body's names).
fn ipam_field(e: &IpamError) -> Option<String> {
    match e {
        IpamError::InvalidSpec { field, .. } => Some(field.clone()),
        IpamError::Overlap { .. } => Some("pools".into()),
        IpamError::OutsideRange { .. }
        | IpamError::InUse { .. }
        | IpamError::AlreadyReserved { .. }
        | IpamError::PoolAddressTaken { .. }
        | IpamError::TooManyRequested { .. } => Some("addresses".into()),
        IpamError::FixedConflict { .. } => Some("key".into()),
        _ => None,
    }
}

impl From<IpamError> for ApiError {
    fn from(e: IpamError) -> Self {
        let field = ipam_field(&e);
        let status = match e {
            IpamError::Store(s) => return s.into(),
            IpamError::InvalidSpec { .. }
            | IpamError::OutsideRange { .. }
            | IpamError::TooManyRequested { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            _ => StatusCode::CONFLICT,
        };
        ApiError {
            status,
            error: e.to_string(),
            field,
        }
    }
}

impl From<EditError> for ApiError {
    fn from(e: EditError) -> Self {
        match e {
            EditError::Ipam(i) => i.into(),
            EditError::NotFound(_) => ApiError::not_found(e.to_string()),
            EditError::Exists(_) => ApiError::field(StatusCode::CONFLICT, "name", e.to_string()),
            EditError::InUse { ref field, .. } => {
                ApiError::field(StatusCode::CONFLICT, field.clone(), e.to_string())
            }
            EditError::Live { .. } => ApiError::conflict(e.to_string()),
        }
    }
}

impl From<weft_check::CheckError> for ApiError {
    fn from(e: weft_check::CheckError) -> Self {
        match e {
            weft_check::CheckError::Store(s) => s.into(),
            weft_check::CheckError::Other(m) => ApiError::internal(format!("check: {m}")),
        }
    }
}
