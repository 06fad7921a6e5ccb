//! Namespaces (open, cookie, run_in), sysctls and nftables inside a namespace.

mod common;

use std::path::Path;

use common::TestNs;
use weft_dataplane::{Error, Netlink, Netns, nft, sysctl};

#[test]
fn open_missing_netns_is_enoent_and_named() {
    let err = Netns::open(Path::new("/var/run/netns/weftdp-does-not-exist")).unwrap_err();
    assert_eq!(err.errno(), Some(libc::ENOENT));
    assert!(err.is_not_found());
    assert!(err.to_string().contains("weftdp-does-not-exist"), "{err}");
}

#[test]
fn cookies_differ_between_namespaces_and_are_stable() {
    let a = TestNs::new("ca");
    let b = TestNs::new("cb");
    let ca = a.netns().cookie().unwrap();
    let cb = b.netns().cookie().unwrap();
    let here = Netns::current().unwrap().cookie().unwrap();
    assert_ne!(ca, cb);
    assert_ne!(ca, here);
    assert_ne!(cb, here);
    // Stable: another open of the same namespace, and a socket living in it, agree.
    assert_eq!(a.netns().cookie().unwrap(), ca);
    assert_eq!(a.netlink().netns_cookie().unwrap(), ca);
    assert_eq!(Netlink::new().unwrap().netns_cookie().unwrap(), here);
}

#[test]
fn run_in_enters_and_restores() {
    let ns = TestNs::new("run");
    let target = ns.netns();
    let target_cookie = target.cookie().unwrap();
    let before = Netns::current().unwrap().cookie().unwrap();

    let inside = target
        .run_in(|| Netns::current().unwrap().cookie().unwrap())
        .unwrap();
    assert_eq!(inside, target_cookie);
    assert_eq!(Netns::current().unwrap().cookie().unwrap(), before);

    // Restored after a panic too.
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        target.run_in(|| panic!("boom")).unwrap();
    }));
    assert!(caught.is_err());
    assert_eq!(Netns::current().unwrap().cookie().unwrap(), before);

    // A file that is not a namespace: entering fails, naming it, and the thread stays put.
    let not_ns = Netns::open(Path::new("/proc/self/status")).unwrap();
    let err = not_ns.run_in(|| ()).unwrap_err();
    assert!(err.to_string().contains("/proc/self/status"), "{err}");
    assert_eq!(Netns::current().unwrap().cookie().unwrap(), before);
}

/// Runs `f` inside `ns` on a fresh thread, after checking the thread really is inside `ns`
/// (so a bug can never make the test change the root namespace).
fn inside<T: Send + 'static>(ns: &TestNs, f: impl FnOnce() -> T + Send + 'static) -> T {
    let target = ns.netns();
    let cookie = target.cookie().unwrap();
    std::thread::spawn(move || {
        target
            .run_in(|| {
                assert_eq!(Netns::current().unwrap().cookie().unwrap(), cookie);
                f()
            })
            .unwrap()
    })
    .join()
    .unwrap()
}

#[test]
fn sysctl_set_and_get_inside_a_namespace() {
    let ns = TestNs::new("sys");
    let root_before = sysctl::get("net/ipv4/ip_forward").unwrap();

    let (before, after, again) = inside(&ns, || {
        let before = sysctl::get("net/ipv4/ip_forward").unwrap();
        sysctl::set("net/ipv4/ip_forward", "1").unwrap();
        let after = sysctl::get("net/ipv4/ip_forward").unwrap();
        sysctl::set("net/ipv4/ip_forward", "1").unwrap(); // no change: no write
        sysctl::set("net/ipv6/conf/all/forwarding", "1").unwrap();
        let again = sysctl::get("net/ipv6/conf/all/forwarding").unwrap();
        (before, after, again)
    });
    assert_eq!(before, "0");
    assert_eq!(after, "1");
    assert_eq!(again, "1");
    assert_eq!(sysctl::get("net/ipv4/ip_forward").unwrap(), root_before);
    // A fresh namespace still reads 0: the write stayed in its namespace.
    let other = TestNs::new("sys2");
    assert_eq!(
        inside(&other, || sysctl::get("net/ipv4/ip_forward").unwrap()),
        "0"
    );

    let err = sysctl::get("net/ipv4/weftdp_no_such_key").unwrap_err();
    assert_eq!(err.errno(), Some(libc::ENOENT));
    assert!(
        err.to_string().contains("net/ipv4/weftdp_no_such_key"),
        "{err}"
    );
}

#[test]
fn nft_apply_and_list_inside_a_namespace() {
    let ns = TestNs::new("nft");
    let (listed, missing, bad) = inside(&ns, || {
        nft::apply(
            "table inet weftdp_test {\n\
               chain postrouting { type nat hook postrouting priority srcnat; policy accept;\n\
                 ip saddr 198.18.0.0/16 masquerade\n\
               }\n\
             }\n",
        )
        .unwrap();
        let listed = nft::list_table_json("inet", "weftdp_test").unwrap();
        let missing = nft::list_table_json("inet", "weftdp_absent").unwrap();
        let bad = nft::apply("add rule inet weftdp_test nochain accept").unwrap_err();
        (listed, missing, bad)
    });
    let listed = listed.expect("table exists");
    let items = listed["nftables"].as_array().unwrap();
    assert!(items.iter().any(|i| i["table"]["name"] == "weftdp_test"));
    assert!(items.iter().any(|i| i["chain"]["name"] == "postrouting"));
    assert!(items.iter().any(|i| i["rule"]["chain"] == "postrouting"));
    assert!(missing.is_none());
    assert!(matches!(bad, Error::Nft { .. }), "{bad}");
    assert!(bad.to_string().contains("nochain"), "{bad}");

    // The root namespace did not get the table.
    assert!(
        nft::list_table_json("inet", "weftdp_test")
            .unwrap()
            .is_none()
    );
}
