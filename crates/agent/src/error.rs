//! Errors of the agent, each naming what it was doing and on which object.

use std::path::PathBuf;

pub type Result<T, E = AgentError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("config {path}: {msg}")]
    Config { path: PathBuf, msg: String },
    #[error("invalid setting {field}: {msg}")]
    Invalid { field: &'static str, msg: String },
    #[error("store {what}: {source}")]
    Store {
        what: String,
        #[source]
        source: weft_store::StoreError,
    },
    #[error("store record {key}: {msg}")]
    Record { key: String, msg: String },
    #[error("kernel: {0}")]
    Dataplane(#[from] weft_dataplane::Error),
    #[error("underlay: {0}")]
    Underlay(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl AgentError {
    pub fn store(what: impl Into<String>, source: weft_store::StoreError) -> AgentError {
        AgentError::Store {
            what: what.into(),
            source,
        }
    }
}
