//! Bearer tokens: read tokens may GET, admin tokens may do anything. Compared in constant time
//! (per token, over its whole length). `/healthz`, `/readyz` and `/openapi.json` need none.
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

#[derive(Debug, Clone, Default)]
pub struct Tokens {
    pub admin: Vec<String>,
    pub read: Vec<String>,
    /// No authentication at all (`--no-auth`): every request is an admin's.
    pub disabled: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Read,
    Admin,
}

/// Equal without an early exit on the first differing byte.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= x ^ y;
    }
    diff == 0
}

impl Tokens {
    pub fn role(&self, token: &str) -> Option<Role> {
        let t = token.as_bytes();
        // Every token is compared, so the time does not tell which list matched.
        let admin = self
            .admin
            .iter()
            .fold(false, |acc, a| acc | ct_eq(a.as_bytes(), t));
        let read = self
            .read
            .iter()
            .fold(false, |acc, r| acc | ct_eq(r.as_bytes(), t));
        if admin {
            Some(Role::Admin)
        } else if read {
            Some(Role::Read)
        } else {
            None
        }
    }

    /// Tokens from a file: one a line, blank lines and `#` comments skipped.
    pub fn parse_file(text: &str) -> Vec<String> {
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_string)
            .collect()
    }
}

/// Whether `method` only reads.
fn reads(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

pub async fn require_token(
    State(tokens): State<Arc<Tokens>>,
    req: Request,
    next: Next,
) -> Response {
    if tokens.disabled {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        });
    let Some(token) = given else {
        return ApiError::field(
            StatusCode::UNAUTHORIZED,
            "Authorization",
            "no bearer token: send Authorization: Bearer <token> (weftctl: WEFT_TOKEN or --token)",
        )
        .into_response();
    };
    match tokens.role(token) {
        None => ApiError::field(
            StatusCode::UNAUTHORIZED,
            "Authorization",
            "the bearer token is not one of this server's read or admin tokens",
        )
        .into_response(),
        Some(Role::Read) if !reads(req.method()) => ApiError::field(
            StatusCode::FORBIDDEN,
            "Authorization",
            format!(
                "{} {} needs an admin token; this token may only read",
                req.method(),
                req.uri().path()
            ),
        )
        .into_response(),
        Some(_) => next.run(req).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles() {
        let t = Tokens {
            admin: vec!["adm-secret".into()],
            read: vec!["rd".into(), "rd2".into()],
            disabled: false,
        };
        assert_eq!(t.role("adm-secret"), Some(Role::Admin));
        assert_eq!(t.role("rd2"), Some(Role::Read));
        assert_eq!(t.role("adm-secre"), None);
        assert_eq!(t.role("adm-secretx"), None);
        assert_eq!(t.role(""), None);
        assert!(ct_eq(b"", b""));
        assert!(!ct_eq(b"a", b""));
    }
}
