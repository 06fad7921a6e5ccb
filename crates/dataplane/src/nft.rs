//! nftables through the `nft` binary: one process per call, in the calling thread's network
//! namespace (the child inherits it), so the caller picks the namespace.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::{Error, Result};

const NFT: &str = "nft";

/// Applies a script (`nft -f -`): plain nft syntax, or JSON (`{"nftables": [...]}`), which nft
/// detects itself. The script is one transaction: all of it applies or none.
pub fn apply(script: &str) -> Result<()> {
    let op = "nft -f -";
    let mut child = Command::new(NFT)
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::io(format!("{op}: start {NFT}"), e))?;
    let write = child
        .stdin
        .take()
        .map(|mut stdin| stdin.write_all(script.as_bytes()));
    let out = child
        .wait_with_output()
        .map_err(|e| Error::io(format!("{op}: wait for {NFT}"), e))?;
    if !out.status.success() {
        return Err(Error::Nft {
            op: op.to_string(),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    if let Some(Err(e)) = write {
        return Err(Error::io(format!("{op}: write script to {NFT}"), e));
    }
    Ok(())
}

/// `nft -j list table <family> <table>` as JSON; None when the table does not exist.
pub fn list_table_json(family: &str, table: &str) -> Result<Option<serde_json::Value>> {
    let op = format!("nft -j list table {family} {table}");
    let out = Command::new(NFT)
        .args(["-j", "list", "table", family, table])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::io(format!("{op}: start {NFT}"), e))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if stderr.contains("No such file or directory") {
            return Ok(None);
        }
        return Err(Error::Nft {
            op,
            status: out.status.to_string(),
            stderr,
        });
    }
    serde_json::from_slice(&out.stdout)
        .map(Some)
        .map_err(|e| Error::Decode {
            op,
            msg: format!("nft printed invalid JSON: {e}"),
        })
}
