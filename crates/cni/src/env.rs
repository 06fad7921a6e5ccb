//! The `CNI_*` environment variables, validated per command.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::error::CniError;

/// The verb in `CNI_COMMAND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Gc,
    Version,
}

impl Command {
    pub const ALL: [Command; 6] = [
        Command::Add,
        Command::Del,
        Command::Check,
        Command::Status,
        Command::Gc,
        Command::Version,
    ];

    /// The spelling in `CNI_COMMAND`.
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Status => "STATUS",
            Command::Gc => "GC",
            Command::Version => "VERSION",
        }
    }

    /// The first spec version that has this command.
    pub fn since_version(self) -> &'static str {
        match self {
            Command::Add | Command::Del | Command::Version => "0.3.0",
            Command::Check => "0.4.0",
            Command::Status | Command::Gc => "1.1.0",
        }
    }

    fn needs_container_id(self) -> bool {
        matches!(self, Command::Add | Command::Del | Command::Check)
    }
    fn needs_netns(self) -> bool {
        matches!(self, Command::Add | Command::Check)
    }
    fn needs_ifname(self) -> bool {
        matches!(self, Command::Add | Command::Del | Command::Check)
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Command {
    type Err = CniError;
    fn from_str(s: &str) -> Result<Self, CniError> {
        Command::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| {
                CniError::invalid_env(format!(
                    "CNI_COMMAND \"{s}\" is not a CNI command; set CNI_COMMAND to one of ADD, DEL, CHECK, STATUS, GC, VERSION"
                ))
            })
    }
}

/// The invocation's environment, validated for its command.
///
/// Variables a command does not need are kept as given (empty counts as absent) and not validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniEnv {
    pub command: Command,
    pub container_id: Option<String>,
    pub netns: Option<PathBuf>,
    pub ifname: Option<String>,
    /// `CNI_ARGS` as ordered key/value pairs.
    pub args: Vec<(String, String)>,
    /// `CNI_PATH`: where to look for plugin binaries.
    pub path: Vec<PathBuf>,
}

impl CniEnv {
    /// Reads the process environment.
    pub fn from_env() -> Result<CniEnv, CniError> {
        Self::from_lookup(|k| std::env::var_os(k).map(|v| v.to_string_lossy().into_owned()))
    }

    /// Reads the variables through `get`, so tests need not touch the process environment.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<CniEnv, CniError> {
        let get = |k: &str| get(k).filter(|v| !v.is_empty());
        let command: Command = get("CNI_COMMAND")
            .ok_or_else(|| {
                CniError::invalid_env(
                    "CNI_COMMAND is not set; the runtime must set CNI_COMMAND to one of ADD, DEL, CHECK, STATUS, GC, VERSION",
                )
            })?
            .parse()?;

        let container_id = get("CNI_CONTAINERID");
        let netns = get("CNI_NETNS");
        let ifname = get("CNI_IFNAME");

        let missing: Vec<&str> = [
            (
                command.needs_container_id(),
                "CNI_CONTAINERID",
                &container_id,
            ),
            (command.needs_netns(), "CNI_NETNS", &netns),
            (command.needs_ifname(), "CNI_IFNAME", &ifname),
        ]
        .into_iter()
        .filter(|(needed, _, value)| *needed && value.is_none())
        .map(|(_, name, _)| name)
        .collect();
        if !missing.is_empty() {
            return Err(CniError::invalid_env(format!(
                "{command} needs environment variable(s) {} but they are not set or empty; the runtime must set them",
                missing.join(", ")
            )));
        }

        if command.needs_container_id()
            && let Some(id) = &container_id
        {
            validate_container_id(id)?;
        }
        if command.needs_netns()
            && let Some(ns) = &netns
            && !ns.starts_with('/')
        {
            return Err(CniError::invalid_env(format!(
                "CNI_NETNS \"{ns}\" is not an absolute path; set CNI_NETNS to the network namespace path, e.g. /run/netns/<name>"
            )));
        }
        if command.needs_ifname()
            && let Some(name) = &ifname
        {
            validate_ifname(name)?;
        }

        let args = match get("CNI_ARGS") {
            Some(raw) => parse_args(&raw)?,
            None => Vec::new(),
        };
        let path = get("CNI_PATH")
            .map(|p| {
                p.split(':')
                    .filter(|d| !d.is_empty())
                    .map(PathBuf::from)
                    .collect()
            })
            .unwrap_or_default();

        Ok(CniEnv {
            command,
            container_id,
            netns: netns.map(PathBuf::from),
            ifname,
            args,
            path,
        })
    }

    /// The value of `key` in `CNI_ARGS` (the first if repeated).
    pub fn arg(&self, key: &str) -> Option<&str> {
        self.args
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn require_container_id(&self) -> Result<&str, CniError> {
        self.container_id.as_deref().ok_or_else(|| {
            CniError::invalid_env(format!(
                "{}: CNI_CONTAINERID is not set; the runtime must set it",
                self.command
            ))
        })
    }

    pub fn require_netns(&self) -> Result<&Path, CniError> {
        self.netns.as_deref().ok_or_else(|| {
            CniError::invalid_env(format!(
                "{}: CNI_NETNS is not set; the runtime must set it to the network namespace path",
                self.command
            ))
        })
    }

    pub fn require_ifname(&self) -> Result<&str, CniError> {
        self.ifname.as_deref().ok_or_else(|| {
            CniError::invalid_env(format!(
                "{}: CNI_IFNAME is not set; the runtime must set it to the interface name to create, e.g. eth0",
                self.command
            ))
        })
    }

    /// The `CNI_ARGS` string for these args (`K=V;K2=V2`), empty if none.
    pub fn args_string(&self) -> String {
        self.args
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(";")
    }
}

/// The spec: non-empty, only alphanumerics, '-', '_' and '.'.
pub fn validate_container_id(id: &str) -> Result<(), CniError> {
    if let Some(bad) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(CniError::invalid_env(format!(
            "CNI_CONTAINERID \"{id}\" contains {bad:?}; a container ID may contain only letters, digits, '-', '_' and '.'"
        )));
    }
    if id.is_empty() {
        return Err(CniError::invalid_env(
            "CNI_CONTAINERID \"\" is empty; the runtime must set it to the container ID",
        ));
    }
    Ok(())
}

/// Linux interface names: 1 to 15 bytes, no '/', ':' or whitespace, not "." or "..".
pub fn validate_ifname(name: &str) -> Result<(), CniError> {
    let problem = if name.is_empty() {
        Some("is empty".to_string())
    } else if name.len() > 15 {
        Some(format!("is {} bytes long, the limit is 15", name.len()))
    } else if name == "." || name == ".." {
        Some("is reserved".to_string())
    } else {
        name.chars()
            .find(|c| *c == '/' || *c == ':' || c.is_whitespace())
            .map(|c| format!("contains {c:?}"))
    };
    match problem {
        None => Ok(()),
        Some(p) => Err(CniError::invalid_env(format!(
            "CNI_IFNAME \"{name}\" {p}; set CNI_IFNAME to a Linux interface name of at most 15 bytes without '/', ':' or whitespace, e.g. eth0"
        ))),
    }
}

/// `K=V;K2=V2`; empty segments (a trailing ';') are skipped, a value may contain '='.
pub fn parse_args(raw: &str) -> Result<Vec<(String, String)>, CniError> {
    raw.split(';')
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(CniError::invalid_env(format!(
                "CNI_ARGS \"{raw}\": pair \"{pair}\" is not KEY=VALUE; write CNI_ARGS as KEY=VALUE pairs separated by ';'"
            ))),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup(vars: &[(&str, &str)]) -> Result<CniEnv, CniError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        CniEnv::from_lookup(|k| map.get(k).cloned())
    }

    const ADD_OK: &[(&str, &str)] = &[
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "abc-123_x.y"),
        ("CNI_NETNS", "/run/netns/blue"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin::/usr/lib/cni"),
        ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=web-0;X=a=b;"),
    ];

    fn with(
        base: &[(&'static str, &'static str)],
        set: &[(&'static str, &'static str)],
    ) -> Vec<(&'static str, &'static str)> {
        let mut v: Vec<_> = base
            .iter()
            .filter(|(k, _)| !set.iter().any(|(s, _)| s == k))
            .copied()
            .collect();
        v.extend(set.iter().filter(|(_, val)| *val != "<unset>").copied());
        v
    }

    #[test]
    fn add_parses() {
        let env = lookup(ADD_OK).unwrap();
        assert_eq!(env.command, Command::Add);
        assert_eq!(env.require_container_id().unwrap(), "abc-123_x.y");
        assert_eq!(env.require_netns().unwrap(), Path::new("/run/netns/blue"));
        assert_eq!(env.require_ifname().unwrap(), "eth0");
        assert_eq!(
            env.path,
            vec![PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")]
        );
        assert_eq!(env.arg("K8S_POD_NAME"), Some("web-0"));
        assert_eq!(env.arg("X"), Some("a=b"));
        assert_eq!(env.arg("nope"), None);
        assert_eq!(
            env.args_string(),
            "IgnoreUnknown=1;K8S_POD_NAME=web-0;X=a=b"
        );
    }

    #[test]
    fn del_without_netns_is_fine() {
        let env = lookup(&with(ADD_OK, &[("CNI_COMMAND", "DEL"), ("CNI_NETNS", "")])).unwrap();
        assert_eq!(env.netns, None);
        assert!(env.require_netns().is_err());
    }

    #[test]
    fn commands_without_requirements() {
        for cmd in ["STATUS", "GC", "VERSION"] {
            let env = lookup(&[("CNI_COMMAND", cmd)]).unwrap();
            assert_eq!(env.command.as_str(), cmd);
            assert!(env.container_id.is_none() && env.args.is_empty() && env.path.is_empty());
        }
        // Variables a command does not need are not validated.
        let env = lookup(&[
            ("CNI_COMMAND", "GC"),
            ("CNI_IFNAME", "way-too-long-interface"),
        ])
        .unwrap();
        assert_eq!(env.ifname.as_deref(), Some("way-too-long-interface"));
    }

    #[test]
    fn bad_env_table() {
        // (variables, variable the message must name, value the message must name)
        type Case = (
            Vec<(&'static str, &'static str)>,
            &'static str,
            &'static str,
        );
        let cases: Vec<Case> = vec![
            (
                with(ADD_OK, &[("CNI_COMMAND", "<unset>")]),
                "CNI_COMMAND",
                "not set",
            ),
            (
                with(ADD_OK, &[("CNI_COMMAND", "")]),
                "CNI_COMMAND",
                "not set",
            ),
            (
                with(ADD_OK, &[("CNI_COMMAND", "add")]),
                "CNI_COMMAND",
                "\"add\"",
            ),
            (
                with(ADD_OK, &[("CNI_COMMAND", "DELETE")]),
                "CNI_COMMAND",
                "\"DELETE\"",
            ),
            (
                with(ADD_OK, &[("CNI_CONTAINERID", "<unset>")]),
                "CNI_CONTAINERID",
                "not set",
            ),
            (
                with(ADD_OK, &[("CNI_CONTAINERID", "a/b")]),
                "CNI_CONTAINERID",
                "\"a/b\"",
            ),
            (
                with(ADD_OK, &[("CNI_CONTAINERID", "a b")]),
                "CNI_CONTAINERID",
                "\"a b\"",
            ),
            (
                with(ADD_OK, &[("CNI_CONTAINERID", "héllo")]),
                "CNI_CONTAINERID",
                "\"héllo\"",
            ),
            (
                with(ADD_OK, &[("CNI_NETNS", "<unset>")]),
                "CNI_NETNS",
                "not set",
            ),
            (
                with(ADD_OK, &[("CNI_NETNS", "run/netns/x")]),
                "CNI_NETNS",
                "\"run/netns/x\"",
            ),
            (
                with(ADD_OK, &[("CNI_IFNAME", "<unset>")]),
                "CNI_IFNAME",
                "not set",
            ),
            (
                with(ADD_OK, &[("CNI_IFNAME", "eth0123456789abc")]),
                "CNI_IFNAME",
                "\"eth0123456789abc\"",
            ),
            (
                with(ADD_OK, &[("CNI_IFNAME", "eth/0")]),
                "CNI_IFNAME",
                "\"eth/0\"",
            ),
            (
                with(ADD_OK, &[("CNI_IFNAME", "eth:0")]),
                "CNI_IFNAME",
                "\"eth:0\"",
            ),
            (
                with(ADD_OK, &[("CNI_IFNAME", "eth 0")]),
                "CNI_IFNAME",
                "\"eth 0\"",
            ),
            (with(ADD_OK, &[("CNI_IFNAME", ".")]), "CNI_IFNAME", "\".\""),
            (
                with(ADD_OK, &[("CNI_IFNAME", "..")]),
                "CNI_IFNAME",
                "\"..\"",
            ),
            (with(ADD_OK, &[("CNI_ARGS", "A=1;B")]), "CNI_ARGS", "\"B\""),
            (with(ADD_OK, &[("CNI_ARGS", "=1")]), "CNI_ARGS", "\"=1\""),
            (
                with(ADD_OK, &[("CNI_COMMAND", "CHECK"), ("CNI_NETNS", "")]),
                "CNI_NETNS",
                "not set",
            ),
            (
                with(ADD_OK, &[("CNI_COMMAND", "DEL"), ("CNI_IFNAME", "")]),
                "CNI_IFNAME",
                "not set",
            ),
            (
                with(
                    ADD_OK,
                    &[("CNI_COMMAND", "DEL"), ("CNI_CONTAINERID", "x;y")],
                ),
                "CNI_CONTAINERID",
                "\"x;y\"",
            ),
        ];
        assert!(cases.len() >= 15);
        for (vars, var, value) in cases {
            let err = lookup(&vars).expect_err(&format!("{vars:?} should fail"));
            assert_eq!(err.code, crate::error::code::INVALID_ENV, "{vars:?}");
            assert!(
                err.msg.contains(var),
                "{:?}: message {:?} lacks {var}",
                vars,
                err.msg
            );
            assert!(
                err.msg.contains(value),
                "{:?}: message {:?} lacks {value}",
                vars,
                err.msg
            );
        }
    }

    #[test]
    fn missing_lists_all_variables() {
        let err = lookup(&[("CNI_COMMAND", "ADD")]).unwrap_err();
        for v in ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"] {
            assert!(err.msg.contains(v), "{}", err.msg);
        }
    }

    #[test]
    fn ifname_limits() {
        assert!(validate_ifname("a").is_ok());
        assert!(validate_ifname("abcdefghijklmno").is_ok());
        assert!(validate_ifname("abcdefghijklmnop").is_err());
        assert!(validate_ifname("eth\t0").is_err());
        assert!(validate_ifname("").is_err());
        assert!(validate_container_id("").is_err());
    }
}
