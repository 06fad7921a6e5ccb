//! Malformed input, one table: every case runs the real binary (`weft`, some `weft-ipam`) in a
//! fresh node namespace with fresh pod namespaces, and asserts that it fails with the contract's
//! error code (docs/plugin-contract.md), that the message names the field or variable and the bad
//! value, and that nothing is left behind: links, addresses and routes in the node and the pods,
//! allocation records and block entries in the store are exactly as before the call (and for
//! failures that come before any kernel work, the node holds no bridge at all).
mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{Netns, Node, PluginOutput, bin_dir, cni_path};
use serde_json::{Value, json};

/// A node and three pods; the failing call goes into `pods[0]`.
struct Ctx {
    node: Node,
    pods: [Netns; 3],
}

const NET: &str = "badnet";
const BRIDGES: &[&str] = &["wb0", "wb1"];
const MISSING_NETNS: &str = "/run/netns/wt-does-not-exist-4242";

impl Ctx {
    fn new() -> Ctx {
        Ctx {
            node: Node::new("bn"),
            pods: [Netns::new("bp"), Netns::new("bp"), Netns::new("bp")],
        }
    }

    fn data_dir(&self) -> String {
        self.node.data_dir()
    }

    /// Runs `bin` in the node namespace: the default environment is an ADD of container "cbad"
    /// into pods[0] as eth0; `env` overrides (None removes a variable).
    fn run(&self, bin: &str, env: &[(&str, Option<String>)], stdin: &[u8]) -> PluginOutput {
        let mut vars: Vec<(String, String)> = vec![
            ("CNI_COMMAND".into(), "ADD".into()),
            ("CNI_CONTAINERID".into(), "cbad".into()),
            (
                "CNI_NETNS".into(),
                self.pods[0].path().display().to_string(),
            ),
            ("CNI_IFNAME".into(), "eth0".into()),
            ("CNI_PATH".into(), cni_path()),
        ];
        for (k, v) in env {
            vars.retain(|(kk, _)| kk != k);
            if let Some(v) = v {
                vars.push((k.to_string(), v.clone()));
            }
        }
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.node.ns.path().display()))
            .arg("--")
            .arg(bin_dir().join(bin));
        c.env_clear().env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
        for (k, v) in &vars {
            c.env(k, v);
        }
        c.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().expect("spawn plugin");
        // The plugin may fail before reading stdin: a broken pipe is fine.
        let _ = child.stdin.take().unwrap().write_all(stdin);
        let out = child.wait_with_output().unwrap();
        PluginOutput {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// A setup ADD that must work: container `cid` into `pods[pod]` as `ifname`.
    fn add_ok(&self, pod: usize, cid: &str, ifname: &str, config: &Value, args: Option<&str>) {
        let mut env = vec![
            ("CNI_CONTAINERID", Some(cid.to_string())),
            (
                "CNI_NETNS",
                Some(self.pods[pod].path().display().to_string()),
            ),
            ("CNI_IFNAME", Some(ifname.to_string())),
        ];
        if let Some(a) = args {
            env.push(("CNI_ARGS", Some(a.to_string())));
        }
        let bin = if config["type"] == "weft" {
            "weft"
        } else {
            "weft-ipam"
        };
        let out = self.run(bin, &env, config.to_string().as_bytes());
        assert_eq!(
            out.code, 0,
            "setup ADD {cid} failed: stdout {} stderr {}",
            out.stdout, out.stderr
        );
    }
}

/// The network every `weft` case starts from: bridge mode, dual-stack.
fn base(c: &Ctx) -> Value {
    json!({
        "cniVersion": "1.1.0",
        "name": NET,
        "type": "weft",
        "mode": "bridge",
        "bridge": "wb0",
        "mtu": 1500,
        "ipam": {
            "pools": [{"subnet": "198.18.0.0/24"}, {"subnet": "fd00:18::/64"}],
            "dataDir": c.data_dir(),
            "node": "n1",
        },
    })
}

/// The `weft-ipam` configuration: the IPAM section of a network another plugin wires.
fn ipam_base(c: &Ctx) -> Value {
    json!({
        "cniVersion": "1.1.0",
        "name": "ipamnet",
        "type": "bridge",
        "bridge": "ignored0",
        "ipam": {
            "type": "weft-ipam",
            "pools": [{"subnet": "198.18.3.0/24"}],
            "dataDir": c.data_dir(),
            "node": "n1",
        },
    })
}

fn with(mut v: Value, f: impl FnOnce(&mut Value)) -> Value {
    f(&mut v);
    v
}

fn bytes(v: Value) -> Vec<u8> {
    v.to_string().into_bytes()
}

fn remove(v: &mut Value, key: &str) {
    v.as_object_mut().unwrap().remove(key);
}

/// A routed network of one IPv4 /30: two pod addresses (.1, .2), no gateway taken from the pool.
fn routed30(c: &Ctx) -> Value {
    with(base(c), |v| {
        v["name"] = json!("tinynet");
        v["mode"] = json!("routed");
        v["ipam"]["pools"] = json!([{"subnet": "198.18.2.0/30"}]);
    })
}

type Env = &'static [(&'static str, Option<&'static str>)];

struct Case {
    name: &'static str,
    bin: &'static str,
    stdin: fn(&Ctx) -> Vec<u8>,
    env: Env,
    code: u64,
    /// Strings the message must contain: the field or variable, and the bad value.
    msg: &'static [&'static str],
    setup: Option<fn(&Ctx)>,
    /// Fails before any kernel work: the node must hold no bridge, no link but lo.
    pre_kernel: bool,
}

const fn case(
    name: &'static str,
    stdin: fn(&Ctx) -> Vec<u8>,
    env: Env,
    code: u64,
    msg: &'static [&'static str],
) -> Case {
    Case {
        name,
        bin: "weft",
        stdin,
        env,
        code,
        msg,
        setup: None,
        pre_kernel: true,
    }
}

const fn ipam_case(
    name: &'static str,
    stdin: fn(&Ctx) -> Vec<u8>,
    env: Env,
    code: u64,
    msg: &'static [&'static str],
) -> Case {
    Case {
        bin: "weft-ipam",
        ..case(name, stdin, env, code, msg)
    }
}

const fn stateful(
    name: &'static str,
    setup: fn(&Ctx),
    stdin: fn(&Ctx) -> Vec<u8>,
    env: Env,
    code: u64,
    msg: &'static [&'static str],
) -> Case {
    Case {
        setup: Some(setup),
        pre_kernel: false,
        ..case(name, stdin, env, code, msg)
    }
}

const NONE: Env = &[];

fn cases() -> Vec<Case> {
    vec![
        // stdin
        case(
            "broken JSON",
            |_| br#"{"cniVersion": "1.1.0", "name": "#.to_vec(),
            NONE,
            6,
            &["JSON"],
        ),
        case("empty stdin", |_| Vec::new(), NONE, 6, &["stdin"]),
        case(
            "stdin not UTF-8",
            |_| b"\xff\xfe\x00{".to_vec(),
            NONE,
            6,
            &["JSON"],
        ),
        case(
            "JSON array, not an object",
            |_| b"[1, 2, 3]".to_vec(),
            NONE,
            7,
            &["object"],
        ),
        case(
            "JSON string, not an object",
            |_| br#""weft""#.to_vec(),
            NONE,
            7,
            &["object", "weft"],
        ),
        case(
            "missing cniVersion",
            |c| bytes(with(base(c), |v| remove(v, "cniVersion"))),
            NONE,
            7,
            &["cniVersion"],
        ),
        case(
            "missing name",
            |c| bytes(with(base(c), |v| remove(v, "name"))),
            NONE,
            7,
            &["name"],
        ),
        case(
            "missing type",
            |c| bytes(with(base(c), |v| remove(v, "type"))),
            NONE,
            7,
            &["type"],
        ),
        case(
            "unsupported cniVersion 9.9.9",
            |c| bytes(with(base(c), |v| v["cniVersion"] = json!("9.9.9"))),
            NONE,
            1,
            &["cniVersion", "9.9.9"],
        ),
        case(
            "network name with '/'",
            |c| bytes(with(base(c), |v| v["name"] = json!("bad/name"))),
            NONE,
            7,
            &["name", "bad/name"],
        ),
        // the weft configuration
        case(
            "unknown mode",
            |c| bytes(with(base(c), |v| v["mode"] = json!("tunnel"))),
            NONE,
            7,
            &["mode", "tunnel"],
        ),
        case(
            "mode of the wrong type",
            |c| bytes(with(base(c), |v| v["mode"] = json!(3))),
            NONE,
            7,
            &["mode", "3"],
        ),
        case(
            "unknown top-level key",
            |c| bytes(with(base(c), |v| v["colour"] = json!("blue"))),
            NONE,
            2,
            &["colour", "blue"],
        ),
        case(
            "unknown ipam key",
            |c| bytes(with(base(c), |v| v["ipam"]["poolz"] = json!([]))),
            NONE,
            2,
            &["poolz"],
        ),
        case(
            "unknown pool key",
            |c| {
                bytes(with(base(c), |v| {
                    v["ipam"]["pools"][0]["gw"] = json!("198.18.0.1")
                }))
            },
            NONE,
            2,
            &["gw", "198.18.0.1"],
        ),
        case(
            "invalid CIDR /33",
            |c| {
                bytes(with(base(c), |v| {
                    v["ipam"]["pools"][0]["subnet"] = json!("198.18.0.0/33")
                }))
            },
            NONE,
            7,
            &["subnet", "198.18.0.0/33"],
        ),
        case(
            "invalid CIDR not-a-cidr",
            |c| {
                bytes(with(base(c), |v| {
                    v["ipam"]["pools"][1]["subnet"] = json!("not-a-cidr")
                }))
            },
            NONE,
            7,
            &["subnet", "not-a-cidr"],
        ),
        case(
            "subnet with host bits",
            |c| {
                bytes(with(base(c), |v| {
                    v["ipam"]["pools"][0]["subnet"] = json!("198.18.0.5/24")
                }))
            },
            NONE,
            7,
            &["subnet", "198.18.0.5/24"],
        ),
        case(
            "overlapping pools",
            |c| {
                bytes(with(
                    base(c),
                    |v| {
                        v["ipam"]["pools"] =
                            json!([{"subnet": "198.18.0.0/24"}, {"subnet": "198.18.0.128/25"}])
                    },
                ))
            },
            NONE,
            7,
            &["198.18.0.128/25", "198.18.0.0/24"],
        ),
        case(
            "gateway outside the subnet",
            |c| {
                bytes(with(base(c), |v| {
                    v["ipam"]["pools"][0]["gateway"] = json!("198.19.0.1")
                }))
            },
            NONE,
            7,
            &["gateway", "198.19.0.1"],
        ),
        case(
            "gateway of the other family",
            |c| {
                bytes(with(base(c), |v| {
                    v["ipam"]["pools"][0]["gateway"] = json!("fd00:18::1")
                }))
            },
            NONE,
            7,
            &["gateway", "fd00:18::1"],
        ),
        case(
            "rangeStart after rangeEnd",
            |c| {
                bytes(with(base(c), |v| {
                    v["ipam"]["pools"][0]["rangeStart"] = json!("198.18.0.200");
                    v["ipam"]["pools"][0]["rangeEnd"] = json!("198.18.0.100");
                }))
            },
            NONE,
            7,
            &["rangeStart", "198.18.0.200"],
        ),
        case(
            "exclude outside the subnet",
            |c| {
                bytes(with(base(c), |v| {
                    v["ipam"]["pools"][0]["exclude"] = json!(["198.19.0.0/30"])
                }))
            },
            NONE,
            7,
            &["exclude", "198.19.0.0/30"],
        ),
        case(
            "ipam pools empty",
            |c| bytes(with(base(c), |v| v["ipam"]["pools"] = json!([]))),
            NONE,
            7,
            &["pools", "[]"],
        ),
        case(
            "MTU 10",
            |c| bytes(with(base(c), |v| v["mtu"] = json!(10))),
            NONE,
            7,
            &["mtu", "10"],
        ),
        case(
            "MTU as a string",
            |c| bytes(with(base(c), |v| v["mtu"] = json!("1500"))),
            NONE,
            7,
            &["mtu", "1500"],
        ),
        case(
            "masquerade not a boolean",
            |c| bytes(with(base(c), |v| v["masquerade"] = json!("yes"))),
            NONE,
            7,
            &["masquerade", "yes"],
        ),
        case(
            "bridge name of 16 bytes",
            |c| bytes(with(base(c), |v| v["bridge"] = json!("weftbridge012345"))),
            NONE,
            7,
            &["bridge", "weftbridge012345"],
        ),
        case(
            "relative dataDir",
            |c| {
                bytes(with(base(c), |v| {
                    v["ipam"]["dataDir"] = json!("var/lib/weft")
                }))
            },
            NONE,
            7,
            &["dataDir", "var/lib/weft"],
        ),
        case(
            "negative cooldownSeconds",
            |c| bytes(with(base(c), |v| v["ipam"]["cooldownSeconds"] = json!(-1))),
            NONE,
            7,
            &["cooldownSeconds", "-1"],
        ),
        // the environment
        case(
            "missing CNI_COMMAND",
            base_bytes,
            &[("CNI_COMMAND", None)],
            4,
            &["CNI_COMMAND"],
        ),
        case(
            "unknown CNI_COMMAND",
            base_bytes,
            &[("CNI_COMMAND", Some("ATTACH"))],
            4,
            &["CNI_COMMAND", "ATTACH"],
        ),
        case(
            "missing CNI_CONTAINERID",
            base_bytes,
            &[("CNI_CONTAINERID", None)],
            4,
            &["CNI_CONTAINERID"],
        ),
        case(
            "container ID with '/'",
            base_bytes,
            &[("CNI_CONTAINERID", Some("abc/../def"))],
            4,
            &["CNI_CONTAINERID", "abc/../def"],
        ),
        case(
            "container ID with a space",
            base_bytes,
            &[("CNI_CONTAINERID", Some("abc def"))],
            4,
            &["CNI_CONTAINERID", "abc def"],
        ),
        case(
            "missing CNI_NETNS on ADD",
            base_bytes,
            &[("CNI_NETNS", None)],
            4,
            &["CNI_NETNS"],
        ),
        case(
            "CNI_NETNS that does not exist",
            base_bytes,
            &[("CNI_NETNS", Some(MISSING_NETNS))],
            3,
            &["CNI_NETNS", MISSING_NETNS],
        ),
        case(
            "CNI_IFNAME of 16 bytes",
            base_bytes,
            &[("CNI_IFNAME", Some("eth0123456789abc"))],
            4,
            &["CNI_IFNAME", "eth0123456789abc"],
        ),
        case(
            "CNI_IFNAME with '/'",
            base_bytes,
            &[("CNI_IFNAME", Some("et/h0"))],
            4,
            &["CNI_IFNAME", "et/h0"],
        ),
        case(
            "CNI_ARGS malformed",
            base_bytes,
            &[("CNI_ARGS", Some("IP"))],
            4,
            &["CNI_ARGS", "IP"],
        ),
        case(
            "requested IPv4 outside the pool",
            base_bytes,
            &[("CNI_ARGS", Some("IP=198.19.0.7"))],
            7,
            &["198.19.0.7"],
        ),
        case(
            "requested IPv6 outside the pool",
            base_bytes,
            &[("CNI_ARGS", Some("IP=198.18.0.7,fd01::7"))],
            7,
            &["fd01::7"],
        ),
        case(
            "requested address not an IP",
            base_bytes,
            &[("CNI_ARGS", Some("IP=198.18.0.x"))],
            4,
            &["IP", "198.18.0.x"],
        ),
        case(
            "runtimeConfig.ips outside the pool",
            |c| {
                bytes(with(base(c), |v| {
                    v["capabilities"] = json!({"ips": true});
                    v["runtimeConfig"] = json!({"ips": ["198.19.0.9/24"]});
                }))
            },
            NONE,
            7,
            &["198.19.0.9"],
        ),
        case(
            "CHECK on cniVersion 0.3.1",
            |c| bytes(with(base(c), |v| v["cniVersion"] = json!("0.3.1"))),
            &[("CNI_COMMAND", Some("CHECK"))],
            1,
            &["CHECK", "0.3.1"],
        ),
        case(
            "GC on cniVersion 1.0.0",
            |c| bytes(with(base(c), |v| v["cniVersion"] = json!("1.0.0"))),
            &[("CNI_COMMAND", Some("GC"))],
            1,
            &["GC", "1.0.0"],
        ),
        case(
            "STATUS on cniVersion 0.4.0",
            |c| bytes(with(base(c), |v| v["cniVersion"] = json!("0.4.0"))),
            &[("CNI_COMMAND", Some("STATUS"))],
            1,
            &["STATUS", "0.4.0"],
        ),
        // the store and the kernel
        stateful(
            "requested IP already in use",
            |c| c.add_ok(1, "cfirst", "eth0", &base(c), Some("IP=198.18.0.7")),
            base_bytes,
            &[("CNI_ARGS", Some("IP=198.18.0.7"))],
            100,
            &["198.18.0.7"],
        ),
        stateful(
            "network stored with another subnet",
            |c| c.add_ok(1, "cfirst", "eth0", &base(c), None),
            |c| {
                bytes(with(base(c), |v| {
                    v["ipam"]["pools"][0]["subnet"] = json!("198.18.1.0/24")
                }))
            },
            NONE,
            7,
            &["198.18.1.0/24", "198.18.0.0/24"],
        ),
        stateful(
            "two networks with overlapping pools",
            |c| {
                let a = with(base(c), |v| v["name"] = json!("neta"));
                c.add_ok(1, "cfirst", "eth0", &a, None)
            },
            |c| {
                bytes(with(base(c), |v| {
                    v["name"] = json!("netb");
                    v["bridge"] = json!("wb1");
                    v["ipam"]["pools"] = json!([{"subnet": "198.18.0.0/25"}]);
                }))
            },
            NONE,
            7,
            &["198.18.0.0/25", "neta"],
        ),
        stateful(
            "exhausted pool (/30, third ADD)",
            |c| {
                c.add_ok(1, "cone", "eth0", &routed30(c), None);
                c.add_ok(2, "ctwo", "eth0", &routed30(c), None);
            },
            |c| bytes(routed30(c)),
            NONE,
            101,
            &["198.18.2.0/30"],
        ),
        stateful(
            "interface already exists in the pod",
            |c| c.add_ok(0, "cfirst", "eth0", &base(c), None),
            base_bytes,
            NONE,
            102,
            &["eth0"],
        ),
        Case {
            pre_kernel: false,
            ..case(
                "interface named lo (exists in every pod)",
                base_bytes,
                &[("CNI_IFNAME", Some("lo"))],
                102,
                &["lo"],
            )
        },
        // weft-ipam
        ipam_case(
            "weft-ipam: broken JSON",
            |_| b"{\"ipam\": [".to_vec(),
            NONE,
            6,
            &["JSON"],
        ),
        ipam_case(
            "weft-ipam: unknown ipam key",
            |c| bytes(with(ipam_base(c), |v| v["ipam"]["colour"] = json!("blue"))),
            NONE,
            2,
            &["colour", "blue"],
        ),
        ipam_case(
            "weft-ipam: invalid CIDR",
            |c| {
                bytes(with(ipam_base(c), |v| {
                    v["ipam"]["pools"][0]["subnet"] = json!("198.18.3.0/33")
                }))
            },
            NONE,
            7,
            &["subnet", "198.18.3.0/33"],
        ),
        ipam_case(
            "weft-ipam: pools empty",
            |c| bytes(with(ipam_base(c), |v| v["ipam"]["pools"] = json!([]))),
            NONE,
            7,
            &["pools", "[]"],
        ),
        ipam_case(
            "weft-ipam: bad route",
            |c| {
                bytes(with(ipam_base(c), |v| {
                    v["ipam"]["routes"] = json!([{"dst": "0.0.0.0/99"}])
                }))
            },
            NONE,
            7,
            &["routes", "0.0.0.0/99"],
        ),
        ipam_case(
            "weft-ipam: missing CNI_CONTAINERID",
            ipam_bytes,
            &[("CNI_CONTAINERID", None)],
            4,
            &["CNI_CONTAINERID"],
        ),
        ipam_case(
            "weft-ipam: requested IP outside the pool",
            ipam_bytes,
            &[("CNI_ARGS", Some("IP=198.19.3.9"))],
            7,
            &["198.19.3.9"],
        ),
        ipam_case(
            "weft-ipam: unsupported cniVersion",
            |c| bytes(with(ipam_base(c), |v| v["cniVersion"] = json!("9.9.9"))),
            NONE,
            1,
            &["9.9.9"],
        ),
        Case {
            bin: "weft-ipam",
            ..stateful(
                "weft-ipam: exhausted pool (/30, third ADD)",
                |c| {
                    let v = with(ipam_base(c), |v| {
                        v["ipam"]["pools"] = json!([{"subnet": "198.18.4.0/30"}])
                    });
                    c.add_ok(1, "cone", "eth0", &v, None);
                    c.add_ok(2, "ctwo", "eth0", &v, None);
                },
                |c| {
                    bytes(with(ipam_base(c), |v| {
                        v["ipam"]["pools"] = json!([{"subnet": "198.18.4.0/30"}])
                    }))
                },
                NONE,
                101,
                &["198.18.4.0/30"],
            )
        },
        Case {
            bin: "weft-ipam",
            ..stateful(
                "weft-ipam: requested IP already in use",
                |c| c.add_ok(1, "cfirst", "eth0", &ipam_base(c), Some("IP=198.18.3.9")),
                ipam_bytes,
                &[("CNI_ARGS", Some("IP=198.18.3.9"))],
                100,
                &["198.18.3.9"],
            )
        },
    ]
}

fn base_bytes(c: &Ctx) -> Vec<u8> {
    bytes(base(c))
}

fn ipam_bytes(c: &Ctx) -> Vec<u8> {
    bytes(ipam_base(c))
}

/// What a failed call may not change: kernel objects of node and pods, the store's owners.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    kernel: BTreeSet<String>,
    handles: BTreeSet<String>,
    allocations: BTreeSet<String>,
}

fn kernel_objects(ns: &Netns, who: &str, out: &mut BTreeSet<String>) {
    for l in ns.ip_json(&["-d", "link", "show"]).as_array().unwrap() {
        out.insert(format!(
            "{who} link {} kind={} master={}",
            l["ifname"].as_str().unwrap(),
            l["linkinfo"]["info_kind"].as_str().unwrap_or("-"),
            l["master"].as_str().unwrap_or("-"),
        ));
    }
    for l in ns.ip_json(&["addr", "show"]).as_array().unwrap() {
        for a in l["addr_info"].as_array().unwrap() {
            if a["scope"] != "link" {
                out.insert(format!(
                    "{who} addr {} {}/{}",
                    l["ifname"].as_str().unwrap(),
                    a["local"].as_str().unwrap(),
                    a["prefixlen"]
                ));
            }
        }
    }
    for fam in ["-4", "-6"] {
        for r in ns.ip_json(&[fam, "route", "show"]).as_array().unwrap() {
            let dst = r["dst"].as_str().unwrap_or("?");
            if dst.starts_with("fe80") || dst.starts_with("ff00") {
                continue;
            }
            out.insert(format!(
                "{who} route {dst} via {} dev {}",
                r["gateway"].as_str().unwrap_or("-"),
                r["dev"].as_str().unwrap_or("-")
            ));
        }
    }
}

fn snapshot(c: &Ctx) -> Snapshot {
    let mut kernel = BTreeSet::new();
    kernel_objects(&c.node.ns, "node", &mut kernel);
    for (i, p) in c.pods.iter().enumerate() {
        kernel_objects(p, &format!("pod{i}"), &mut kernel);
    }
    let dd = c.data_dir();
    let handles = common::store_files(&dd, "handles").into_iter().collect();
    let mut allocations = BTreeSet::new();
    for (key, block) in common::store_records(&dd, "blocks") {
        if let Some(a) = block["allocations"].as_object() {
            for (off, h) in a {
                allocations.insert(format!("{key} {off} {h}"));
            }
        }
    }
    Snapshot {
        kernel,
        handles,
        allocations,
    }
}

fn diff(before: &BTreeSet<String>, after: &BTreeSet<String>) -> String {
    let gone: Vec<_> = before.difference(after).collect();
    let new: Vec<_> = after.difference(before).collect();
    format!("gone {gone:?}, new {new:?}")
}

/// Runs one case; `Err` says what went wrong.
fn run_case(case: &Case) -> Result<String, String> {
    let c = Ctx::new();
    if let Some(setup) = case.setup {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| setup(&c)))
            .map_err(|e| format!("setup failed: {}", panic_text(&e)))?;
    }
    let before = snapshot(&c);
    let env: Vec<(&str, Option<String>)> = case
        .env
        .iter()
        .map(|(k, v)| (*k, v.map(str::to_string)))
        .collect();
    let stdin = (case.stdin)(&c);
    let out = c.run(case.bin, &env, &stdin);
    let after = snapshot(&c);
    let mut problems = Vec::new();
    if out.code == 0 {
        problems.push(format!("exit status 0 (stdout {})", out.stdout.trim()));
    }
    let got: Option<Value> = serde_json::from_str(&out.stdout).ok();
    let mut summary = format!("exit {} stdout {}", out.code, out.stdout.trim());
    match &got {
        None => problems.push(format!(
            "stdout is not JSON: {:?} (stderr {:?})",
            out.stdout, out.stderr
        )),
        Some(err) => {
            let code = err["code"].as_u64();
            let msg = err["msg"].as_str().unwrap_or("");
            summary = format!("code {code:?} msg {msg:?}");
            if code != Some(case.code) {
                problems.push(format!("code {code:?}, expected {}", case.code));
            }
            if err["cniVersion"].as_str().is_none() {
                problems.push("the error has no cniVersion".into());
            }
            let missing: Vec<&&str> = case.msg.iter().filter(|n| !msg.contains(**n)).collect();
            if !missing.is_empty() {
                problems.push(format!("msg does not name {missing:?}"));
            }
        }
    }
    if before.kernel != after.kernel {
        problems.push(format!(
            "kernel state changed: {}",
            diff(&before.kernel, &after.kernel)
        ));
    }
    if before.handles != after.handles {
        problems.push(format!(
            "allocation records changed: {}",
            diff(&before.handles, &after.handles)
        ));
    }
    if before.allocations != after.allocations {
        problems.push(format!(
            "block allocations changed: {}",
            diff(&before.allocations, &after.allocations)
        ));
    }
    if case.pre_kernel {
        let links = c.node.ns.links();
        if links != ["lo"] {
            problems.push(format!("node links after a pre-kernel failure: {links:?}"));
        }
        for (i, p) in c.pods.iter().enumerate() {
            if p.links() != ["lo"] {
                problems.push(format!("pod{i} links: {:?}", p.links()));
            }
        }
    }
    for b in BRIDGES {
        if case.pre_kernel && c.node.ns.links().iter().any(|l| l == b) {
            problems.push(format!("bridge {b} created"));
        }
    }
    if problems.is_empty() {
        Ok(summary)
    } else {
        Err(format!("{} -- {summary}", problems.join("; ")))
    }
}

fn panic_text(e: &Box<dyn std::any::Any + Send>) -> String {
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panic".into())
}

#[test]
fn malformed_inputs_fail_cleanly() {
    let t = std::time::Instant::now();
    let table = cases();
    assert!(table.len() >= 25);
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<(usize, Result<String, String>)>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(case) = table.get(i) else { break };
                    let r =
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_case(case)))
                            .unwrap_or_else(|e| Err(format!("panicked: {}", panic_text(&e))));
                    results.lock().unwrap().push((i, r));
                }
            });
        }
    });
    let mut results = results.into_inner().unwrap();
    results.sort_by_key(|(i, _)| *i);
    let mut failed = 0;
    for (i, r) in &results {
        let c = &table[*i];
        match r {
            Ok(s) => eprintln!("ok    [{}] {} (expect {}): {s}", c.bin, c.name, c.code),
            Err(e) => {
                failed += 1;
                eprintln!("FAIL  [{}] {} (expect {}): {e}", c.bin, c.name, c.code);
            }
        }
    }
    eprintln!(
        "{} cases, {failed} failed, in {:?}",
        results.len(),
        t.elapsed()
    );
    assert_eq!(
        failed,
        0,
        "{failed} of {} bad-input cases failed (see above)",
        results.len()
    );
}
