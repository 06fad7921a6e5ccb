//! Spec versions: which are supported and how they order.

use std::cmp::Ordering;

use serde_json::{Value, json};

use crate::error::CniError;
use crate::{CURRENT_VERSION, SUPPORTED_VERSIONS};

pub fn is_supported(v: &str) -> bool {
    SUPPORTED_VERSIONS.contains(&v)
}

/// Orders versions numerically component by component ("0.10.0" > "0.9.0"); missing components
/// count as 0 and a component's non-digit suffix is ignored, so "1.0" == "1.0.0".
pub fn compare(a: &str, b: &str) -> Ordering {
    let parts = |s: &str| -> Vec<u64> {
        s.trim()
            .trim_start_matches('v')
            .split('.')
            .map(|p| {
                let digits: String = p.chars().take_while(char::is_ascii_digit).collect();
                digits.parse().unwrap_or(0)
            })
            .collect()
    };
    let (pa, pb) = (parts(a), parts(b));
    for i in 0..pa.len().max(pb.len()) {
        let (x, y) = (
            pa.get(i).copied().unwrap_or(0),
            pb.get(i).copied().unwrap_or(0),
        );
        match x.cmp(&y) {
            Ordering::Equal => {}
            other => return other,
        }
    }
    Ordering::Equal
}

/// `a >= b` in spec-version order.
pub fn at_least(a: &str, b: &str) -> bool {
    compare(a, b) != Ordering::Less
}

/// The VERSION command's answer: `{"cniVersion", "supportedVersions"}`.
pub fn version_json(config_version: Option<&str>) -> Value {
    json!({
        "cniVersion": config_version.unwrap_or(CURRENT_VERSION),
        "supportedVersions": SUPPORTED_VERSIONS,
    })
}

/// Code 1 unless `v` is supported; `what` says where the version came from.
pub fn require_supported(v: &str, what: &str) -> Result<(), CniError> {
    if is_supported(v) {
        Ok(())
    } else {
        Err(CniError::incompatible_version(format!(
            "{what} cniVersion \"{v}\" is not supported; use one of {}",
            SUPPORTED_VERSIONS.join(", ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn supported() {
        for v in SUPPORTED_VERSIONS {
            assert!(is_supported(v));
        }
        for v in ["0.1.0", "0.2.0", "1.2.0", "", "1.1"] {
            assert!(!is_supported(v), "{v}");
        }
    }

    #[test]
    fn ordering() {
        assert_eq!(compare("0.3.1", "0.4.0"), Ordering::Less);
        assert_eq!(compare("1.1.0", "1.0.0"), Ordering::Greater);
        assert_eq!(compare("0.10.0", "0.9.0"), Ordering::Greater);
        assert_eq!(compare("1.0", "1.0.0"), Ordering::Equal);
        assert!(at_least("0.4.0", "0.4.0"));
        assert!(!at_least("0.3.1", "0.4.0"));
        let mut sorted = SUPPORTED_VERSIONS.to_vec();
        sorted.reverse();
        sorted.sort_by(|a, b| compare(a, b));
        assert_eq!(sorted, SUPPORTED_VERSIONS);
    }

    #[test]
    fn version_json_defaults_to_current() {
        let v = version_json(None);
        assert_eq!(v["cniVersion"], "1.1.0");
        assert_eq!(v["supportedVersions"].as_array().unwrap().len(), 5);
        assert_eq!(version_json(Some("0.4.0"))["cniVersion"], "0.4.0");
    }

    #[test]
    fn unsupported_names_version_and_list() {
        let e = require_supported("0.2.0", "network config").unwrap_err();
        assert_eq!(e.code, 1);
        assert!(
            e.msg.contains("0.2.0") && e.msg.contains("1.1.0"),
            "{}",
            e.msg
        );
    }
}
