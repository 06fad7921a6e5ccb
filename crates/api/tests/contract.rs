//! The API's contract: the OpenAPI document is well-formed and lists exactly the routes the
//! server answers; tokens are required (401) and read tokens cannot write (403); malformed,
//! mistyped, oversized and randomly mutated bodies get a 4xx, never a 5xx, and the server keeps
//! answering.
mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::*;
use serde_json::{Value, json};
use weft_store::testing::{EtcdServer, Rng, seed};

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

fn fill(path: &str) -> String {
    path.replace("{name}", "cluster")
        .replace("{key}", "prod%2Fdb%2F0")
        .replace("{pool}", "web")
        .replace("{ip}", "198.18.0.10")
}

/// Every `$ref` in `v`.
fn refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if k == "$ref"
                    && let Some(s) = x.as_str()
                {
                    out.push(s.to_string());
                }
                refs(x, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
        _ => {}
    }
}

/// (path, method) of every operation in the document.
fn operations(doc: &Value) -> Vec<(String, String)> {
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for m in METHODS {
            if item.get(m).is_some() {
                ops.push((path.clone(), m.to_string()));
            }
        }
    }
    ops
}

fn validate_document(doc: &Value) {
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "OpenAPI 3.1: {}",
        doc["openapi"]
    );
    assert_eq!(doc["info"]["title"], "weft-api");
    assert!(!doc["info"]["version"].as_str().unwrap().is_empty());
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    assert!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"]
            .as_str()
            .unwrap()
            .eq_ignore_ascii_case("bearer")
    );
    let mut ids = BTreeSet::new();
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 15, "{} paths", paths.len());
    for (path, item) in paths {
        assert!(path.starts_with('/'), "{path}");
        let params: BTreeSet<String> = path
            .split('/')
            .filter(|s| s.starts_with('{') && s.ends_with('}'))
            .map(|s| s[1..s.len() - 1].to_string())
            .collect();
        let item = item.as_object().unwrap();
        assert!(!item.is_empty(), "{path} has operations");
        for (method, op) in item {
            assert!(
                METHODS.contains(&method.as_str()),
                "{path}: method {method}"
            );
            let id = op["operationId"].as_str().expect("operationId");
            assert!(ids.insert(id.to_string()), "operationId {id} unique");
            let responses = op["responses"].as_object().expect("responses");
            assert!(!responses.is_empty(), "{method} {path} has responses");
            for code in responses.keys() {
                assert!(
                    code == "default" || (code.len() == 3 && code.parse::<u16>().is_ok()),
                    "{method} {path}: response {code}"
                );
            }
            let declared: BTreeSet<String> = op["parameters"]
                .as_array()
                .map(|ps| {
                    ps.iter()
                        .filter(|p| p["in"] == "path")
                        .map(|p| {
                            assert_eq!(p["required"], true, "{method} {path}: {p}");
                            p["name"].as_str().unwrap().to_string()
                        })
                        .collect()
                })
                .unwrap_or_default();
            assert_eq!(declared, params, "{method} {path}: path parameters");
            if let Some(sec) = op.get("security") {
                for s in sec.as_array().unwrap() {
                    for k in s.as_object().unwrap().keys() {
                        assert_eq!(k, "bearer", "{method} {path}");
                    }
                }
            }
            if ["post", "put", "patch"].contains(&method.as_str()) && path != "/v1/check/repair" {
                assert!(
                    op["requestBody"]["content"]["application/json"].is_object(),
                    "{method} {path} documents its JSON body"
                );
            }
        }
    }
    let mut all = Vec::new();
    refs(doc, &mut all);
    assert!(!all.is_empty());
    for r in all {
        let name = r
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("$ref {r} points into components.schemas"));
        assert!(schemas.contains_key(name), "$ref {r} resolves");
    }
}

#[test]
fn openapi_document_is_valid_and_matches_the_router() {
    let etcd = EtcdServer::start();
    let api = Api::start(&etcd, &[]);
    let (s, doc, ct) = api.call("GET", "/openapi.json", None, None);
    assert_eq!(s, 200, "served without a token");
    assert!(ct.starts_with("application/json"), "{ct}");
    validate_document(&doc);
    // The binary's --print-openapi prints the same document.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weft-api"))
        .arg("--print-openapi")
        .output()
        .unwrap();
    assert!(out.status.success());
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed, doc);

    // Every documented operation is served; every other method on those paths is 405.
    let ops = operations(&doc);
    let by_path: BTreeMap<String, BTreeSet<String>> =
        ops.iter().fold(BTreeMap::new(), |mut m, (p, x)| {
            m.entry(p.clone()).or_default().insert(x.clone());
            m
        });
    for (path, methods) in &by_path {
        let url = fill(path);
        for m in METHODS {
            let body = (m != "get" && m != "delete").then_some(("application/json", &b"{}"[..]));
            let (s, v, _) = api.call(&m.to_uppercase(), &url, Some(ADMIN), body);
            if methods.contains(m) {
                assert_ne!(s, 405, "{m} {url} is documented but not routed: {v}");
                let fallback = v["error"]
                    .as_str()
                    .is_some_and(|e| e.starts_with("no such resource"));
                assert!(!fallback, "{m} {url} is documented but not routed: {v}");
                assert!(s < 500, "{m} {url}: {s} {v}");
            } else {
                assert_eq!(s, 405, "{m} {url} is routed but not documented: {v}");
            }
        }
    }
    // Paths the document does not have are not served.
    for path in [
        "/",
        "/v1",
        "/v1/ips",
        "/v1/blocks",
        "/v1/networks/cluster/blocks",
        "/v1/nodes/node-1/blocks",
        "/v1/networks/cluster/usage/x",
        "/swagger-ui",
        "/docs",
        "/v2/networks",
    ] {
        for m in METHODS {
            let (s, v, _) = api.call(&m.to_uppercase(), path, Some(ADMIN), None);
            assert_eq!(
                s, 404,
                "{m} {path} is not in the document but answered: {v}"
            );
            assert!(
                v["error"].as_str().unwrap().starts_with("no such resource"),
                "{m} {path}: {v}"
            );
        }
    }
}

#[test]
fn tokens_are_required_and_read_tokens_cannot_write() {
    let etcd = EtcdServer::start();
    let api = Api::start(&etcd, &[]);
    let (_, doc, _) = api.call("GET", "/openapi.json", None, None);
    for (path, m) in operations(&doc) {
        let url = fill(&path);
        let open = ["/healthz", "/readyz", "/openapi.json"].contains(&path.as_str());
        let body = (m != "get" && m != "delete").then_some(("application/json", &b"{}"[..]));
        let method = m.to_uppercase();
        let (s, v, _) = api.call(&method, &url, None, body);
        if open {
            assert_eq!(s, 200, "{method} {url} needs no token: {v}");
            continue;
        }
        assert_eq!(s, 401, "{method} {url} without a token: {v}");
        assert_eq!(v["field"], "Authorization", "{v}");
        let (s, v, _) = api.call(&method, &url, Some("not-a-token-of-this-server"), body);
        assert_eq!(s, 401, "{method} {url} with a wrong token: {v}");
        let (s, v, _) = api.call(&method, &url, Some(READ), body);
        if m == "get" {
            assert!(
                s != 401 && s != 403,
                "{method} {url} with the read token: {s} {v}"
            );
        } else {
            assert_eq!(s, 403, "{method} {url} with the read token: {v}");
            assert!(v["error"].as_str().unwrap().contains("admin"), "{v}");
        }
    }
    // Schemes other than Bearer are not accepted.
    let (s, _, _) = api.call("GET", "/v1/networks", Some(""), None);
    assert_eq!(s, 401);
    // Nothing was written by the refused requests.
    assert_eq!(api.ok("/v1/networks"), json!([]));
}

/// The write endpoints and a valid body for each (the network `cluster` exists).
fn writes() -> Vec<(&'static str, &'static str, Value)> {
    vec![
        (
            "POST",
            "/v1/networks",
            json!({"name": "n1", "pools": [{"subnet": "198.19.0.0/24", "gateway": "198.19.0.1", "exclude": ["198.19.0.128/28"]}], "cooldownSeconds": 3}),
        ),
        (
            "PUT",
            "/v1/networks/n2",
            json!({"pools": [{"subnet": "198.19.1.0/24", "rangeStart": "198.19.1.10", "rangeEnd": "198.19.1.20"}], "blockPrefixV4": 28}),
        ),
        (
            "PATCH",
            "/v1/networks/cluster",
            json!({"cooldownSeconds": 1, "strictAffinity": false}),
        ),
        (
            "POST",
            "/v1/networks/cluster/reservations",
            json!({"key": "prod/db/0", "addresses": ["198.18.0.10", "fd00:18::10"], "policy": "workload", "workload": "prod/db", "ordinal": 0}),
        ),
        (
            "POST",
            "/v1/networks/cluster/pools",
            json!({"name": "web", "addresses": ["198.18.0.20", "198.18.0.21"]}),
        ),
        (
            "POST",
            "/v1/check/repair",
            json!({"yes": false, "graceSeconds": 5}),
        ),
    ]
}

fn random_value(rng: &mut Rng, depth: u32) -> Value {
    match rng.below(if depth > 3 { 6 } else { 8 }) {
        0 => Value::Null,
        1 => json!(rng.chance(50)),
        2 => json!(rng.next_u64() as i64),
        3 => json!(-(rng.below(1000) as i64)),
        4 => json!((rng.next_u64() as f64) / 7.0),
        5 => {
            let pick = [
                "",
                "198.18.0.300",
                "198.18.0.0/33",
                "::/0",
                "0.0.0.0/0",
                "fd00::1",
                "198.18.0.5",
                "../../etc",
                "a/b/c",
                "é\u{0}\u{7}\u{202e}",
                "prod/db/0",
                "never",
                "workload",
            ];
            if rng.chance(70) {
                json!(pick[rng.below(pick.len() as u64) as usize])
            } else {
                let n = rng.below(300);
                json!(
                    (0..n)
                        .map(|i| char::from(b'a' + (i % 26) as u8))
                        .collect::<String>()
                )
            }
        }
        6 => Value::Array(
            (0..rng.below(4))
                .map(|_| random_value(rng, depth + 1))
                .collect(),
        ),
        _ => {
            let keys = [
                "name",
                "pools",
                "subnet",
                "addresses",
                "key",
                "policy",
                "yes",
                "cooldownSeconds",
                "blockPrefixV4",
                "extra",
            ];
            let mut m = serde_json::Map::new();
            for _ in 0..rng.below(4) {
                m.insert(
                    keys[rng.below(keys.len() as u64) as usize].to_string(),
                    random_value(rng, depth + 1),
                );
            }
            Value::Object(m)
        }
    }
}

/// Replaces a random node of `v` with a random value.
fn mutate(rng: &mut Rng, v: &mut Value) {
    match v {
        Value::Object(m) if !m.is_empty() && rng.chance(70) => {
            let keys: Vec<String> = m.keys().cloned().collect();
            let k = &keys[rng.below(keys.len() as u64) as usize];
            if rng.chance(15) {
                m.remove(k);
            } else {
                mutate(rng, m.get_mut(k).unwrap());
            }
        }
        Value::Array(a) if !a.is_empty() && rng.chance(70) => {
            let i = rng.below(a.len() as u64) as usize;
            mutate(rng, &mut a[i]);
        }
        _ => *v = random_value(rng, 0),
    }
}

fn mutated_bytes(rng: &mut Rng, valid: &Value) -> Vec<u8> {
    let mut v = valid.clone();
    match rng.below(10) {
        // Structural mutations, still JSON.
        0..=5 => {
            for _ in 0..=rng.below(3) {
                mutate(rng, &mut v);
            }
            serde_json::to_vec(&v).unwrap()
        }
        // Byte-level damage.
        6 | 7 => {
            let mut b = serde_json::to_vec(&v).unwrap();
            for _ in 0..=rng.below(4) {
                if b.is_empty() {
                    break;
                }
                let i = rng.below(b.len() as u64) as usize;
                match rng.below(3) {
                    0 => b[i] = rng.next_u64() as u8,
                    1 => {
                        b.truncate(i);
                    }
                    _ => b.insert(i, b"{}[],:\"\\"[rng.below(8) as usize]),
                }
            }
            b
        }
        // Deep nesting.
        8 => {
            let n = 10 + rng.below(5000) as usize;
            let mut s = "[".repeat(n);
            s.push_str(&"]".repeat(n));
            s.into_bytes()
        }
        // Random bytes.
        _ => (0..rng.below(200)).map(|_| rng.next_u64() as u8).collect(),
    }
}

#[test]
fn bad_bodies_get_4xx_never_5xx() {
    let etcd = EtcdServer::start();
    let mut api = Api::start(&etcd, &[]);
    let (s, v) = api.send(
        "POST",
        "/v1/networks",
        &json!({"name": "cluster", "pools": [{"subnet": "198.18.0.0/24"}, {"subnet": "fd00:18::/120"}]}),
    );
    assert_eq!(s, 201, "{v}");

    for (method, path, valid) in writes() {
        // Wrong or missing content type: 415 naming the header.
        let bytes = serde_json::to_vec(&valid).unwrap();
        let (s, v, _) = api.call(method, path, Some(ADMIN), Some(("text/plain", &bytes)));
        assert_eq!(s, 415, "{method} {path}: {v}");
        assert_eq!(v["field"], "Content-Type");
        let (s, _, _) = api.call(method, path, Some(ADMIN), Some(("", &bytes)));
        assert_eq!(s, 415, "{method} {path} without a content type");
        // Empty, not JSON, trailing data: 400.
        for bad in [&b""[..], b"{", b"not json", b"{} {}", b"\xff\xfe"] {
            let (s, v, _) = api.call(method, path, Some(ADMIN), Some(("application/json", bad)));
            assert_eq!(s, 400, "{method} {path} {bad:?}: {v}");
            assert_eq!(v["field"], "body");
        }
        // Oversized: 413 (the default limit is 1 MiB).
        let mut big = b"{\"name\": \"".to_vec();
        big.extend(std::iter::repeat_n(b'x', 2 << 20));
        big.extend(b"\"}");
        let (s, v, _) = api.call(method, path, Some(ADMIN), Some(("application/json", &big)));
        assert_eq!(s, 413, "{method} {path}: {v}");
        // Unknown fields are named.
        if let Value::Object(mut m) = valid.clone() {
            m.insert("colour".into(), json!("blue"));
            let (s, v) = api.send(method, path, &Value::Object(m));
            assert_eq!(s, 422, "{method} {path}: {v}");
            assert!(v["field"].as_str().unwrap().contains("colour"), "{v}");
        }
    }

    // Random mutations of valid bodies on every write endpoint.
    let seed = seed();
    eprintln!("WEFT_SEED={seed}");
    let mut rng = Rng::new(seed);
    let rounds: u64 = std::env::var("WEFT_FUZZ_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(250);
    let mut by_status: BTreeMap<u16, u32> = BTreeMap::new();
    for (method, path, valid) in writes() {
        for i in 0..rounds {
            let body = mutated_bytes(&mut rng, &valid);
            let (s, v, _) = api.call(method, path, Some(ADMIN), Some(("application/json", &body)));
            *by_status.entry(s).or_default() += 1;
            assert!(
                s < 500,
                "{method} {path} round {i} (WEFT_SEED={seed}): {s} {v}\nbody: {}",
                String::from_utf8_lossy(&body)
            );
        }
        assert_eq!(
            api.get("/healthz").0,
            200,
            "still answering after {method} {path}"
        );
    }
    // Random path parameters on the read and delete endpoints.
    for _ in 0..rounds {
        let seg = match rng.below(5) {
            0 => "%00".to_string(),
            1 => "..".to_string(),
            2 => "%2e%2e%2Fx".to_string(),
            3 => "x".repeat(rng.below(400) as usize + 1),
            _ => (0..rng.below(20))
                .map(|_| format!("%{:02X}", rng.below(256)))
                .collect(),
        };
        for p in [
            format!("/v1/networks/{seg}"),
            format!("/v1/networks/{seg}/usage"),
            format!("/v1/networks/cluster/reservations/{seg}"),
            format!("/v1/networks/cluster/pools/{seg}"),
            format!("/v1/ips/{seg}"),
            format!("/v1/nodes/{seg}"),
            format!("/v1/allocations?node={seg}&network={seg}"),
        ] {
            for m in ["GET", "DELETE"] {
                let (s, v, _) = api.call(m, &p, Some(ADMIN), None);
                assert!(s < 500, "{m} {p} (WEFT_SEED={seed}): {s} {v}");
            }
        }
    }
    eprintln!("statuses: {by_status:?}");
    assert!(
        by_status.keys().any(|s| (200..300).contains(s)),
        "some mutated bodies are still valid: {by_status:?}"
    );
    assert!(
        by_status.contains_key(&400) && by_status.contains_key(&422),
        "{by_status:?}"
    );
    assert_eq!(api.ok("/readyz")["status"], "ready");
    assert!(api.child.try_wait().unwrap().is_none(), "weft-api is alive");
}
