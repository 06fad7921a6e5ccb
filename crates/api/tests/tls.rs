//! weft-api over TLS (a CA and a server certificate made by `openssl` for this test): the API and
//! weftctl with `--ca-cert` work; plain HTTP to the TLS port and an untrusting client do not.
mod common;

use std::process::Command;

use common::*;
use weft_store::testing::EtcdServer;

#[test]
fn serves_https_with_the_given_certificate() {
    let etcd = EtcdServer::start();
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    let (ca, ca_key, cert, key, csr, ext) = (
        p("ca.pem"),
        p("ca-key.pem"),
        p("cert.pem"),
        p("key.pem"),
        p("req.csr"),
        p("ext.cnf"),
    );
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    for args in [
        // A CA, and a server certificate it signs.
        [
            &["req", "-x509"][..],
            &ec[..],
            &[
                "-days",
                "1",
                "-subj",
                "/CN=weft-test-ca",
                "-keyout",
                &ca_key,
                "-out",
                &ca,
            ][..],
        ]
        .concat(),
        [
            &["req"][..],
            &ec[..],
            &["-subj", "/CN=weft-api-test", "-keyout", &key, "-out", &csr][..],
        ]
        .concat(),
        vec![
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            &ext,
            "-out",
            &cert,
        ],
    ] {
        let out = Command::new("openssl")
            .args(&args)
            .output()
            .expect("openssl (Debian's openssl package) makes the test certificates");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (cert, key, ca) = (
        std::path::PathBuf::from(cert),
        std::path::PathBuf::from(key),
        std::path::PathBuf::from(ca),
    );
    let api = Api::start_with(
        &["--etcd", &etcd.endpoint()],
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
        "https",
        Some(&ca),
    );
    assert!(api.log_text().contains("https://"), "{}", api.log_text());
    assert_eq!(api.ok("/readyz")["status"], "ready");
    let (s, v) = api.send(
        "POST",
        "/v1/networks",
        &serde_json::json!({"name": "tls", "pools": [{"subnet": "198.18.4.0/24"}]}),
    );
    assert_eq!(s, 201, "{v}");
    let (s, _, _) = api.call("GET", "/v1/networks", None, None);
    assert_eq!(s, 401, "TLS does not replace the token");

    // weftctl trusting the certificate.
    let o = api.weftctl(
        &["get", "networks", "-o", "json"],
        &[("WEFT_CA_CERT", ca.to_str().unwrap())],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["name"], "tls");
    // Not trusting it: an error naming the API, exit 1.
    let o = api.weftctl(&["get", "networks"], &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    // Plain HTTP to the TLS port gets no answer.
    let plain = api.url.replace("https://", "http://");
    let r = agent(None).get(format!("{plain}/healthz")).call();
    assert!(
        r.as_ref().map_or(true, |r| r.status().as_u16() != 200),
        "plain HTTP must not be served on the TLS port"
    );
    assert_eq!(
        api.ok("/healthz")["status"],
        "ok",
        "still serving after that"
    );
}
