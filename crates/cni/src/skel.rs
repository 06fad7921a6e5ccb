//! The dispatcher every plugin binary calls: environment and stdin in, JSON and exit status out.
//!
//! Stdout carries exactly one thing: the ADD result, the VERSION answer, or the error object.
//! Anything a plugin wants to log goes to stderr.

use std::io::{IsTerminal, Read, Write};

use serde_json::Value;

use crate::CURRENT_VERSION;
use crate::config::NetConf;
use crate::env::{CniEnv, Command};
use crate::error::CniError;
use crate::result::CniResult;
use crate::version;

/// A CNI plugin's verbs. VERSION is answered by the dispatcher.
pub trait Plugin {
    fn add(&self, env: &CniEnv, conf: &NetConf) -> Result<CniResult, CniError>;
    fn del(&self, env: &CniEnv, conf: &NetConf) -> Result<(), CniError>;
    fn check(&self, env: &CniEnv, conf: &NetConf) -> Result<(), CniError>;
    fn status(&self, conf: &NetConf) -> Result<(), CniError>;
    fn gc(&self, env: &CniEnv, conf: &NetConf) -> Result<(), CniError>;
}

/// Runs one invocation against the process environment, stdin and stdout; returns the exit
/// status for `std::process::exit`.
pub fn run(plugin: &dyn Plugin) -> i32 {
    let env = CniEnv::from_env();
    // stdin is only a hint for VERSION and for failed environments; don't wait on a terminal.
    let stdin_optional = env.as_ref().map_or(true, |e| e.command == Command::Version);
    let mut stdin = Vec::new();
    let (out, code) = if stdin_optional && std::io::stdin().is_terminal() {
        dispatch(plugin, env, &stdin)
    } else if let Err(e) = std::io::stdin().read_to_end(&mut stdin) {
        let err = CniError::io(format!(
            "cannot read the network configuration from stdin: {e}"
        ));
        (render(&err.to_json(CURRENT_VERSION)), 1)
    } else {
        dispatch(plugin, env, &stdin)
    };
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout
        .write_all(out.as_bytes())
        .and_then(|()| stdout.flush())
    {
        eprintln!("cannot write the CNI output to stdout: {e}");
        return 1;
    }
    code
}

/// The whole protocol without I/O: returns what to print on stdout and the exit status.
pub fn dispatch(plugin: &dyn Plugin, env: Result<CniEnv, CniError>, stdin: &[u8]) -> (String, i32) {
    // Errors are written in the config's version when it has a usable one.
    let stdin_version = sniff_version(stdin);
    let fail = |e: CniError| {
        let v = stdin_version.as_deref().unwrap_or(CURRENT_VERSION);
        (render(&e.to_json(v)), 1)
    };

    let env = match env {
        Ok(env) => env,
        Err(e) => return fail(e),
    };
    if env.command == Command::Version {
        return (render(&version::version_json(stdin_version.as_deref())), 0);
    }
    let conf = match NetConf::parse(stdin) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let since = env.command.since_version();
    if !version::at_least(&conf.cni_version, since) {
        return fail(CniError::incompatible_version(format!(
            "network \"{}\": {} is not part of cniVersion {}; it needs cniVersion {since} or later",
            conf.name, env.command, conf.cni_version
        )));
    }

    let outcome = match env.command {
        Command::Add => plugin
            .add(&env, &conf)
            .and_then(|r| r.to_json(&conf.cni_version))
            .map(Some),
        Command::Del => plugin.del(&env, &conf).map(|()| None),
        Command::Check => plugin.check(&env, &conf).map(|()| None),
        Command::Status => plugin.status(&conf).map(|()| None),
        Command::Gc => plugin.gc(&env, &conf).map(|()| None),
        Command::Version => unreachable!("answered above"),
    };
    match outcome {
        Ok(Some(result)) => (render(&result), 0),
        Ok(None) => (String::new(), 0),
        Err(e) => fail(e),
    }
}

/// The config's cniVersion if stdin is JSON with a supported one.
fn sniff_version(stdin: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(stdin).ok()?;
    let version = v.get("cniVersion")?.as_str()?;
    version::is_supported(version).then(|| version.to_string())
}

fn render(v: &Value) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string());
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SUPPORTED_VERSIONS;
    use crate::result::IpConfig;
    use serde_json::json;
    use std::cell::RefCell;

    #[derive(Default)]
    struct Fake {
        calls: RefCell<Vec<&'static str>>,
        fail: Option<CniError>,
    }

    impl Fake {
        fn outcome(&self, verb: &'static str) -> Result<(), CniError> {
            self.calls.borrow_mut().push(verb);
            self.fail.clone().map_or(Ok(()), Err)
        }
    }

    impl Plugin for Fake {
        fn add(&self, _: &CniEnv, _: &NetConf) -> Result<CniResult, CniError> {
            self.outcome("add")?;
            Ok(CniResult {
                ips: vec![IpConfig {
                    address: "198.18.0.5/24".parse().unwrap(),
                    gateway: None,
                    interface: None,
                }],
                ..Default::default()
            })
        }
        fn del(&self, _: &CniEnv, _: &NetConf) -> Result<(), CniError> {
            self.outcome("del")
        }
        fn check(&self, _: &CniEnv, _: &NetConf) -> Result<(), CniError> {
            self.outcome("check")
        }
        fn status(&self, _: &NetConf) -> Result<(), CniError> {
            self.outcome("status")
        }
        fn gc(&self, _: &CniEnv, _: &NetConf) -> Result<(), CniError> {
            self.outcome("gc")
        }
    }

    fn env(cmd: Command) -> Result<CniEnv, CniError> {
        Ok(CniEnv {
            command: cmd,
            container_id: Some("c1".into()),
            netns: Some("/run/netns/c1".into()),
            ifname: Some("eth0".into()),
            args: Vec::new(),
            path: Vec::new(),
        })
    }

    fn conf(version: &str) -> Vec<u8> {
        json!({"cniVersion": version, "name": "net1", "type": "weft"})
            .to_string()
            .into_bytes()
    }

    fn parse(out: &str) -> Value {
        serde_json::from_str(out).unwrap_or_else(|e| panic!("stdout {out:?} is not JSON: {e}"))
    }

    #[test]
    fn version_answers_without_stdin() {
        let p = Fake::default();
        let (out, code) = dispatch(&p, env(Command::Version), b"");
        assert_eq!(code, 0);
        let v = parse(&out);
        assert_eq!(v["cniVersion"], "1.1.0");
        assert_eq!(v["supportedVersions"], json!(SUPPORTED_VERSIONS));
        let (out, _) = dispatch(&p, env(Command::Version), br#"{"cniVersion":"0.4.0"}"#);
        assert_eq!(parse(&out)["cniVersion"], "0.4.0");
        assert!(p.calls.borrow().is_empty());
    }

    #[test]
    fn add_result_in_config_version() {
        for v in SUPPORTED_VERSIONS {
            let p = Fake::default();
            let (out, code) = dispatch(&p, env(Command::Add), &conf(v));
            assert_eq!(code, 0, "{out}");
            let r = parse(&out);
            assert_eq!(r["cniVersion"], *v);
            assert_eq!(r["ips"][0].get("version").is_some(), v.starts_with('0'));
        }
    }

    #[test]
    fn other_commands_print_nothing() {
        for (cmd, verb) in [
            (Command::Del, "del"),
            (Command::Check, "check"),
            (Command::Status, "status"),
            (Command::Gc, "gc"),
        ] {
            let p = Fake::default();
            let (out, code) = dispatch(&p, env(cmd), &conf("1.1.0"));
            assert_eq!((out.as_str(), code), ("", 0), "{cmd}");
            assert_eq!(*p.calls.borrow(), vec![verb]);
        }
    }

    #[test]
    fn unsupported_version_refused() {
        let p = Fake::default();
        let (out, code) = dispatch(&p, env(Command::Add), &conf("0.2.0"));
        assert_eq!(code, 1);
        let e = parse(&out);
        assert_eq!(e["code"], 1);
        assert_eq!(e["cniVersion"], "1.1.0");
        assert!(e["msg"].as_str().unwrap().contains("0.2.0"));
        assert!(p.calls.borrow().is_empty());
    }

    #[test]
    fn commands_newer_than_config_refused() {
        for (cmd, v) in [
            (Command::Check, "0.3.1"),
            (Command::Check, "0.3.0"),
            (Command::Status, "1.0.0"),
            (Command::Gc, "0.4.0"),
        ] {
            let p = Fake::default();
            let (out, code) = dispatch(&p, env(cmd), &conf(v));
            assert_eq!(code, 1);
            let e = parse(&out);
            assert_eq!(e["code"], 1);
            assert_eq!(e["cniVersion"], v);
            let msg = e["msg"].as_str().unwrap();
            assert!(msg.contains(cmd.as_str()) && msg.contains(v), "{msg}");
            assert!(p.calls.borrow().is_empty());
        }
        let p = Fake::default();
        assert_eq!(dispatch(&p, env(Command::Check), &conf("0.4.0")).1, 0);
    }

    #[test]
    fn plugin_error_goes_to_stdout() {
        let p = Fake {
            fail: Some(CniError::try_again("store busy").with_details("lease held")),
            ..Default::default()
        };
        let (out, code) = dispatch(&p, env(Command::Add), &conf("0.4.0"));
        assert_eq!(code, 1);
        assert_eq!(
            parse(&out),
            json!({"cniVersion": "0.4.0", "code": 11, "msg": "store busy", "details": "lease held"})
        );
    }

    #[test]
    fn env_and_config_errors() {
        let p = Fake::default();
        let (out, code) = dispatch(
            &p,
            Err(CniError::invalid_env("CNI_COMMAND is not set")),
            &conf("1.0.0"),
        );
        assert_eq!(code, 1);
        assert_eq!(parse(&out)["code"], 4);
        assert_eq!(parse(&out)["cniVersion"], "1.0.0");

        let (out, code) = dispatch(&p, env(Command::Add), b"{not json");
        assert_eq!(code, 1);
        assert_eq!(parse(&out)["code"], 6);
        assert_eq!(parse(&out)["cniVersion"], "1.1.0");

        let (out, _) = dispatch(
            &p,
            env(Command::Del),
            br#"{"cniVersion":"0.3.1","name":"bad name","type":"weft"}"#,
        );
        assert_eq!(parse(&out)["code"], 7);
        assert_eq!(parse(&out)["cniVersion"], "0.3.1");
        assert!(p.calls.borrow().is_empty());
    }
}
