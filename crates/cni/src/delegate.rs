//! Running another CNI plugin: IPAM delegation, and driving plugins from tests.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::Value;

use crate::env::{CniEnv, Command};
use crate::error::CniError;
use crate::result::CniResult;

/// Finds `plugin_type` in `dirs` (`CNI_PATH`): the first executable regular file of that name.
pub fn find_plugin(plugin_type: &str, dirs: &[PathBuf]) -> Result<PathBuf, CniError> {
    if plugin_type.is_empty()
        || plugin_type.contains('/')
        || plugin_type == "."
        || plugin_type == ".."
    {
        return Err(CniError::invalid_config(format!(
            "plugin type \"{plugin_type}\" is not a plugin binary name; it must be a file name without '/'"
        )));
    }
    if dirs.is_empty() {
        return Err(CniError::io(format!(
            "cannot find plugin \"{plugin_type}\": CNI_PATH is empty; the runtime must set CNI_PATH to the plugin directories"
        )));
    }
    dirs.iter()
        .map(|d| d.join(plugin_type))
        .find(|p| is_executable(p))
        .ok_or_else(|| {
            let searched: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
            CniError::io(format!(
                "cannot find plugin \"{plugin_type}\" in CNI_PATH {}; install it there or fix CNI_PATH",
                searched.join(":")
            ))
        })
}

#[cfg(unix)]
fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(not(unix))]
fn is_executable(p: &Path) -> bool {
    p.is_file()
}

/// Runs plugin `plugin_type` for `command` with `conf_bytes` on stdin and the `CNI_*` variables
/// from `env` (other `CNI_*` variables of this process are not passed on).
///
/// `Ok(Some(result))` for ADD, `Ok(None)` otherwise. A plugin that fails with an error object
/// yields that error (its code kept, the message prefixed with the plugin name); one that cannot
/// be found or run, or prints no error object, yields code 5 naming the binary.
pub fn exec(
    plugin_type: &str,
    command: Command,
    env: &CniEnv,
    conf_bytes: &[u8],
) -> Result<Option<CniResult>, CniError> {
    let bin = find_plugin(plugin_type, &env.path)?;
    let stdout = run(&bin, command, env, conf_bytes)?;
    if command != Command::Add {
        return Ok(None);
    }
    let value: Value = serde_json::from_slice(&stdout).map_err(|e| {
        CniError::decode(format!(
            "plugin {} printed an ADD result that is not valid JSON: {e}",
            bin.display()
        ))
    })?;
    CniResult::from_json_at(&value, &format!("result of plugin {}", bin.display())).map(Some)
}

/// Runs `bin` and returns its stdout if it exited 0.
fn run(bin: &Path, command: Command, env: &CniEnv, stdin: &[u8]) -> Result<Vec<u8>, CniError> {
    let mut cmd = std::process::Command::new(bin);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("CNI_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("CNI_COMMAND", command.as_str());
    if let Some(id) = &env.container_id {
        cmd.env("CNI_CONTAINERID", id);
    }
    if let Some(ns) = &env.netns {
        cmd.env("CNI_NETNS", ns);
    }
    if let Some(ifname) = &env.ifname {
        cmd.env("CNI_IFNAME", ifname);
    }
    if !env.args.is_empty() {
        cmd.env("CNI_ARGS", env.args_string());
    }
    let path: Vec<String> = env.path.iter().map(|p| p.display().to_string()).collect();
    cmd.env("CNI_PATH", path.join(":"));
    // The delegate's logs go where ours go; its stdout is its answer to us.
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());

    let mut child = cmd
        .spawn()
        .map_err(|e| CniError::io(format!("cannot run plugin {}: {e}", bin.display())))?;
    let mut pipe = child.stdin.take();
    let data = stdin.to_vec();
    // Written from a thread so a plugin that prints before reading cannot deadlock us; a plugin
    // that never reads stdin (broken pipe) is not an error.
    let writer = std::thread::spawn(move || {
        if let Some(p) = pipe.as_mut() {
            let _ = p.write_all(&data);
        }
    });
    let output = child
        .wait_with_output()
        .map_err(|e| CniError::io(format!("cannot wait for plugin {}: {e}", bin.display())))?;
    let _ = writer.join();

    if output.status.success() {
        return Ok(output.stdout);
    }
    if let Some(err) = serde_json::from_slice::<Value>(&output.stdout)
        .ok()
        .as_ref()
        .and_then(CniError::from_json)
    {
        let name = bin.file_name().map_or_else(
            || bin.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        return Err(CniError {
            msg: format!("{name}: {}", err.msg),
            ..err
        });
    }
    let printed = String::from_utf8_lossy(&output.stdout);
    let printed: String = printed.trim().chars().take(200).collect();
    Err(CniError::io(format!(
        "plugin {} failed ({}) {command} without a CNI error on stdout; it printed {printed:?}",
        bin.display(),
        output.status
    )))
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const FAKE: &str = r#"#!/bin/sh
dir=$(dirname "$0")
cat > "$dir/stdin.$CNI_COMMAND"
env | grep '^CNI_' | sort > "$dir/env.$CNI_COMMAND"
case "$CNI_COMMAND" in
ADD) printf '{"cniVersion":"0.4.0","ips":[{"version":"4","address":"198.18.0.9/24","gateway":"198.18.0.1"}]}' ;;
DEL) exit 0 ;;
CHECK) printf '{"cniVersion":"1.1.0","code":11,"msg":"busy","details":"lease held"}'; exit 1 ;;
STATUS) echo garbage; exit 3 ;;
GC) printf 'not json' ;;
esac
"#;

    fn install(dir: &Path, name: &str, body: &str, mode: u32) {
        let p = dir.join(name);
        std::fs::write(&p, body).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    // One test function: spawning from parallel tests while another writes a script can
    // fail with ETXTBSY.
    #[test]
    fn exec_fake_plugin() {
        let empty = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        install(dir.path(), "fake", FAKE, 0o755);
        install(dir.path(), "noexec", FAKE, 0o644);
        let env = CniEnv {
            command: Command::Add,
            container_id: Some("c1".into()),
            netns: Some("/run/netns/c1".into()),
            ifname: Some("eth0".into()),
            args: vec![("K8S_POD_NAME".into(), "web-0".into())],
            path: vec![empty.path().to_path_buf(), dir.path().to_path_buf()],
        };
        let conf = br#"{"cniVersion":"0.4.0","name":"n","type":"fake"}"#;

        let r = exec("fake", Command::Add, &env, conf).unwrap().unwrap();
        assert_eq!(r.ips[0].address.to_string(), "198.18.0.9/24");
        assert_eq!(std::fs::read(dir.path().join("stdin.ADD")).unwrap(), conf);
        let seen = std::fs::read_to_string(dir.path().join("env.ADD")).unwrap();
        for line in [
            "CNI_COMMAND=ADD",
            "CNI_CONTAINERID=c1",
            "CNI_NETNS=/run/netns/c1",
            "CNI_IFNAME=eth0",
            "CNI_ARGS=K8S_POD_NAME=web-0",
        ] {
            assert!(seen.lines().any(|l| l == line), "{line} not in {seen}");
        }

        assert_eq!(exec("fake", Command::Del, &env, conf).unwrap(), None);
        assert!(dir.path().join("stdin.DEL").exists());

        let e = exec("fake", Command::Check, &env, conf).unwrap_err();
        assert_eq!(
            (e.code, e.msg.as_str(), e.details.as_str()),
            (11, "fake: busy", "lease held")
        );

        let e = exec("fake", Command::Status, &env, conf).unwrap_err();
        assert_eq!(e.code, 5);
        assert!(
            e.msg.contains("fake") && e.msg.contains("garbage"),
            "{}",
            e.msg
        );

        // Exit 0 is success for non-ADD commands whatever they print.
        assert_eq!(exec("fake", Command::Gc, &env, conf).unwrap(), None);

        for missing in ["nope", "noexec"] {
            let e = exec(missing, Command::Add, &env, conf).unwrap_err();
            assert_eq!(e.code, 5);
            assert!(e.msg.contains(missing), "{}", e.msg);
        }
        assert_eq!(
            exec("../fake", Command::Add, &env, conf).unwrap_err().code,
            7
        );
        let no_path = CniEnv {
            path: Vec::new(),
            ..env.clone()
        };
        let e = exec("fake", Command::Add, &no_path, conf).unwrap_err();
        assert!(e.code == 5 && e.msg.contains("CNI_PATH"), "{}", e.msg);
    }
}
