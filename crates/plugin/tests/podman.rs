//! End to end: podman 4.3 with its CNI backend runs containers on a weft network.
//!
//! Everything podman touches stays private: the test writes containers.conf, storage.conf, the
//! conflist and a busybox rootfs into a temp dir, and runs one bash script under
//! `unshare -m -p -f --mount-proc --kill-child` (a private mount namespace, where the hybrid cgroup
//! mount is removed and /run, /var/lib, /var/tmp and /dev/shm are fresh tmpfs, and a private PID
//! namespace, so every process podman starts dies with the script), entered into a node network
//! namespace with nsenter, so podman's host side is the node. The script prints KEY=VALUE lines
//! the test asserts on. Needs root, podman, crun, conmon and busybox-static.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use common::*;
use serde_json::json;

const NETWORK: &str = "weftnet";
const SUBNET_PREFIX: &str = "198.18.8.";
const STATIC_IP: &str = "198.18.8.77";

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// A rootfs holding /bin/busybox and its applet links.
fn rootfs(dir: &Path) {
    for d in ["bin", "etc", "proc", "sys", "dev", "tmp", "run", "root"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", dir.join("bin/busybox"))
        .expect("copy /bin/busybox (install busybox-static)");
    let list = run(&["/bin/busybox", "--list"]);
    for applet in list
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && *a != "busybox")
    {
        let _ = std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet));
    }
    write(&dir.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n");
    write(&dir.join("etc/group"), "root:x:0:\n");
}

/// Processes (other than this one) whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    let mut out = vec![];
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmd).contains(needle) {
            out.push(pid);
        }
    }
    out
}

#[test]
fn podman_cni_backend() {
    require_root();
    for tool in ["/usr/bin/podman", "/usr/bin/crun", "/bin/busybox"] {
        assert!(
            Path::new(tool).exists(),
            "{tool} missing: install podman crun busybox-static"
        );
    }
    let node = Node::new("pd");
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let ts = t.display().to_string();
    let data = node.data_dir();

    std::fs::create_dir_all(t.join("net")).unwrap();
    let conflist = json!({
        "cniVersion": "1.0.0",
        "name": NETWORK,
        "plugins": [{
            "type": "weft",
            "mode": "bridge",
            "bridge": "weftpod0",
            "capabilities": {"ips": true},
            "ipam": {
                "pools": [{"subnet": format!("{SUBNET_PREFIX}0/24")}],
                "dataDir": data,
                "node": "node-1"
            }
        }]
    });
    write(
        &t.join("net/weftnet.conflist"),
        &serde_json::to_string_pretty(&conflist).unwrap(),
    );
    write(
        &t.join("containers.conf"),
        &format!(
            r#"[containers]
cgroups = "disabled"
log_driver = "k8s-file"
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[network]
network_backend = "cni"
cni_plugin_dirs = ["{bin}", "{refs}"]
network_config_dir = "{ts}/net"
default_network = "{NETWORK}"

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "crun"
"#,
            bin = bin_dir().display(),
            refs = REFERENCE_PLUGINS,
        ),
    );
    write(
        &t.join("storage.conf"),
        &format!(
            "[storage]\ndriver = \"vfs\"\ngraphroot = \"{ts}/storage/graph\"\nrunroot = \"{ts}/storage/run\"\n"
        ),
    );
    rootfs(&t.join("rootfs"));

    let handles = format!("{data}/store/kv/weft/v1/handles/{NETWORK}");
    let script = format!(
        r#"set -u
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export CONTAINERS_CONF={ts}/containers.conf CONTAINERS_STORAGE_CONF={ts}/storage.conf
# Private mounts only (this is a private mount namespace).
if mountpoint -q /sys/fs/cgroup/unified; then umount /sys/fs/cgroup/unified || exit 90; fi
for m in /run /var/lib /var/tmp /dev/shm; do mount -t tmpfs tmpfs $m || exit 91; done
mkdir -p /var/lib/cni /run/netns
cleanup() {{ podman rm -f -a -t 0 >&2 2>&1; }}
trap cleanup EXIT
R="--rootfs {ts}/rootfs"
for c in c1 c2; do
  podman run -d --name $c --cap-add NET_RAW --network {NETWORK} $R sleep 600 >&2 || echo "RUNFAIL_$c=1"
done
podman run -d --name c3 --cap-add NET_RAW --network {NETWORK} --ip {STATIC_IP} $R sleep 600 >&2 || echo "RUNFAIL_c3=1"
for c in c1 c2 c3; do
  echo "IP_$c=$(podman inspect -f '{{{{.NetworkSettings.Networks.{NETWORK}.IPAddress}}}}' $c)"
done
echo "ADDR_c3=$(podman exec c3 ip -o -4 addr show dev eth0 | tr '\n' ' ')"
A1=$(podman inspect -f '{{{{.NetworkSettings.Networks.{NETWORK}.IPAddress}}}}' c1)
A2=$(podman inspect -f '{{{{.NetworkSettings.Networks.{NETWORK}.IPAddress}}}}' c2)
if podman exec c1 ping -c 1 -W 2 "$A2" >&2; then echo PING_c1_c2=ok; else echo PING_c1_c2=fail; fi
if podman exec c3 ping -c 1 -W 2 "$A1" >&2; then echo PING_c3_c1=ok; else echo PING_c3_c1=fail; fi
echo "HANDLES_UP=$(ls {handles} 2>&1 | tr '\n' ' ')"
podman rm -f -t 0 c1 c2 c3 >&2; echo "RM=$?"
echo "HANDLES_DOWN=$(ls {handles} 2>/dev/null | tr '\n' ' ')"
echo "LEFT=$(podman ps -a -q | wc -l)"
"#
    );
    write(&t.join("script.sh"), &script);

    let out = Command::new("timeout")
        .args([
            "120",
            "unshare",
            "-m",
            "-p",
            "-f",
            "--mount-proc",
            "--kill-child",
            "--propagation",
            "private",
            "--",
        ])
        .arg("nsenter")
        .arg(format!("--net={}", node.ns.path().display()))
        .args(["--", "bash"])
        .arg(t.join("script.sh"))
        .output()
        .expect("run unshare");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let leftovers = processes_mentioning(&ts);
    for pid in &leftovers {
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    }
    let ctx = format!(
        "script status {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status.code()
    );
    assert!(
        leftovers.is_empty(),
        "processes left behind (killed now): {leftovers:?}\n{ctx}"
    );
    let kv: HashMap<&str, &str> = stdout
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k, v.trim()))
        .collect();
    let get = |k: &str| {
        kv.get(k)
            .copied()
            .unwrap_or_else(|| panic!("script printed no {k}\n{ctx}"))
    };

    assert!(
        !kv.keys().any(|k| k.starts_with("RUNFAIL")),
        "podman run failed\n{ctx}"
    );
    let (a1, a2, a3) = (get("IP_c1"), get("IP_c2"), get("IP_c3"));
    for a in [a1, a2] {
        assert!(
            a.starts_with(SUBNET_PREFIX) && a != format!("{SUBNET_PREFIX}1"),
            "podman inspect shows {a:?}, not a pod address of the pool\n{ctx}"
        );
    }
    assert_ne!(a1, a2, "two containers share an address\n{ctx}");
    assert_eq!(
        a3, STATIC_IP,
        "podman run --ip {STATIC_IP} did not get it\n{ctx}"
    );
    assert!(
        get("ADDR_c3").contains(&format!("{STATIC_IP}/24")),
        "c3's eth0 lacks {STATIC_IP}/24\n{ctx}"
    );
    assert_eq!(get("PING_c1_c2"), "ok", "c1 cannot ping c2\n{ctx}");
    assert_eq!(get("PING_c3_c1"), "ok", "c3 cannot ping c1\n{ctx}");
    assert_eq!(
        get("HANDLES_UP").split_whitespace().count(),
        3,
        "three allocations expected while running\n{ctx}"
    );
    assert_eq!(get("RM"), "0", "{ctx}");
    assert_eq!(
        get("HANDLES_DOWN"),
        "",
        "podman rm -f left allocations (its DEL failed? see stderr)\n{ctx}"
    );
    assert_eq!(get("LEFT"), "0", "{ctx}");
    assert_eq!(handle_files(&data, NETWORK), Vec::<String>::new());
    assert_eq!(
        weft_links(&node.ns),
        Vec::<String>::new(),
        "weft veths left in the node after podman rm\n{ctx}"
    );
}
