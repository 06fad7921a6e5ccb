//! The CNI error object and the spec's well-known error codes.

use std::fmt;

use serde_json::{Map, Value, json};

/// The spec's well-known error codes. Codes 1-99 are reserved by the spec; plugins use 100+.
pub mod code {
    /// The config's cniVersion is not one this plugin supports.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// A field in the network configuration is not supported; the message names key and value.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// The container is unknown or does not exist; the runtime need not clean up.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// A required `CNI_*` environment variable is missing or invalid.
    pub const INVALID_ENV: u32 = 4;
    /// I/O failure, e.g. reading stdin or running a delegated plugin.
    pub const IO_FAILURE: u32 = 5;
    /// Content could not be decoded (JSON syntax, wrong types).
    pub const DECODE_FAILURE: u32 = 6;
    /// The network configuration is invalid.
    pub const INVALID_CONFIG: u32 = 7;
    /// A transient condition; the runtime should retry later.
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS: the plugin cannot serve ADD now.
    pub const PLUGIN_NOT_AVAILABLE: u32 = 50;
    /// STATUS: ADD works but connectivity is limited.
    pub const LIMITED_CONNECTIVITY: u32 = 51;
}

/// Shorthand for results whose error is a [`CniError`].
pub type Result<T, E = CniError> = std::result::Result<T, E>;

/// The error a plugin reports to the runtime: printed as JSON on stdout, exit status 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    pub fn incompatible_version(msg: impl Into<String>) -> Self {
        Self::new(code::INCOMPATIBLE_VERSION, msg)
    }
    pub fn unsupported_field(msg: impl Into<String>) -> Self {
        Self::new(code::UNSUPPORTED_FIELD, msg)
    }
    pub fn unknown_container(msg: impl Into<String>) -> Self {
        Self::new(code::UNKNOWN_CONTAINER, msg)
    }
    pub fn invalid_env(msg: impl Into<String>) -> Self {
        Self::new(code::INVALID_ENV, msg)
    }
    pub fn io(msg: impl Into<String>) -> Self {
        Self::new(code::IO_FAILURE, msg)
    }
    pub fn decode(msg: impl Into<String>) -> Self {
        Self::new(code::DECODE_FAILURE, msg)
    }
    pub fn invalid_config(msg: impl Into<String>) -> Self {
        Self::new(code::INVALID_CONFIG, msg)
    }
    pub fn try_again(msg: impl Into<String>) -> Self {
        Self::new(code::TRY_AGAIN_LATER, msg)
    }
    pub fn not_available(msg: impl Into<String>) -> Self {
        Self::new(code::PLUGIN_NOT_AVAILABLE, msg)
    }
    pub fn limited_connectivity(msg: impl Into<String>) -> Self {
        Self::new(code::LIMITED_CONNECTIVITY, msg)
    }

    /// The spec's error object: `{"cniVersion", "code", "msg", "details"?}`.
    pub fn to_json(&self, cni_version: &str) -> Value {
        let mut obj = Map::new();
        obj.insert("cniVersion".into(), json!(cni_version));
        obj.insert("code".into(), json!(self.code));
        obj.insert("msg".into(), json!(self.msg));
        if !self.details.is_empty() {
            obj.insert("details".into(), json!(self.details));
        }
        Value::Object(obj)
    }

    /// Reads an error object another plugin printed. `None` if `v` is not one (no numeric `code`).
    pub fn from_json(v: &Value) -> Option<CniError> {
        let code = u32::try_from(v.get("code")?.as_u64()?).ok()?;
        let text = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        Some(CniError {
            code,
            msg: text("msg"),
            details: text("details"),
        })
    }
}

impl fmt::Display for CniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.msg)?;
        if !self.details.is_empty() {
            write!(f, ": {}", self.details)?;
        }
        Ok(())
    }
}

impl std::error::Error for CniError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn to_json_omits_empty_details() {
        let e = CniError::invalid_config("bad");
        assert_eq!(
            e.to_json("1.1.0"),
            json!({"cniVersion": "1.1.0", "code": 7, "msg": "bad"})
        );
        let e = e.with_details("why");
        assert_eq!(e.to_json("0.4.0")["details"], "why");
        assert_eq!(e.to_string(), "bad: why");
    }

    #[test]
    fn from_json_round_trips() {
        let e = CniError::try_again("busy").with_details("store locked");
        assert_eq!(CniError::from_json(&e.to_json("1.0.0")), Some(e));
        assert_eq!(CniError::from_json(&json!({"msg": "no code"})), None);
    }

    #[test]
    fn constructors_use_spec_codes() {
        assert_eq!(CniError::incompatible_version("").code, 1);
        assert_eq!(CniError::unsupported_field("").code, 2);
        assert_eq!(CniError::unknown_container("").code, 3);
        assert_eq!(CniError::invalid_env("").code, 4);
        assert_eq!(CniError::io("").code, 5);
        assert_eq!(CniError::decode("").code, 6);
        assert_eq!(CniError::invalid_config("").code, 7);
        assert_eq!(CniError::try_again("").code, 11);
        assert_eq!(CniError::not_available("").code, 50);
        assert_eq!(CniError::limited_connectivity("").code, 51);
    }
}
