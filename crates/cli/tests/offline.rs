//! weftctl without an API: usage errors, completions, an unreachable server, a bad config, a
//! bad manifest, each with its documented exit code. (Against a real weft-api: the weft-api
//! crate's tests `cli.rs`, `tls.rs` and `weftd_nodes.rs`.)
use std::process::{Command, Output};

fn weftctl(args: &[&str], env: &[(&str, &str)]) -> Output {
    let dir = std::env::temp_dir();
    let mut c = Command::new(env!("CARGO_BIN_EXE_weftctl"));
    c.args(args).env_clear().env("HOME", &dir);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn exit_codes_without_an_api() {
    // Usage errors: 2.
    assert_eq!(code(&weftctl(&["get"], &[])), 2);
    assert_eq!(code(&weftctl(&["get", "gadgets"], &[])), 2);
    assert_eq!(
        code(&weftctl(&["check", "--yes"], &[])),
        2,
        "--yes needs --repair"
    );
    let o = weftctl(&["get", "networks"], &[("WEFT_API_URL", "ftp://x")]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("http://"), "{}", stderr(&o));
    let o = weftctl(&["get", "pools"], &[]);
    assert_eq!(code(&o), 2, "pools need --network: {}", stderr(&o));
    // A config file that does not parse: 2, naming the file.
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.yaml");
    std::fs::write(&cfg, "server: http://127.0.0.1:9\nsurprise: 1\n").unwrap();
    let o = weftctl(
        &["get", "networks"],
        &[("WEFTCTL_CONFIG", cfg.to_str().unwrap())],
    );
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("surprise"), "{}", stderr(&o));
    // A manifest without kind: 2, naming the document and the field.
    let m = dir.path().join("m.yaml");
    std::fs::write(&m, "metadata: {name: x}\n").unwrap();
    let o = weftctl(&["create", "-f", m.to_str().unwrap()], &[]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("document 1: kind"), "{}", stderr(&o));
    // Nothing listening: 1, naming the address.
    let o = weftctl(
        &["get", "networks"],
        &[("WEFT_API_URL", "http://127.0.0.1:9")],
    );
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert!(stderr(&o).contains("127.0.0.1:9"), "{}", stderr(&o));
    // Help and completions: 0.
    assert_eq!(code(&weftctl(&["--help"], &[])), 0);
    for sh in ["bash", "zsh", "fish"] {
        let o = weftctl(&["completion", sh], &[]);
        assert_eq!(code(&o), 0);
        assert!(String::from_utf8_lossy(&o.stdout).contains("describe"));
    }
}
