//! Repair orders for this node (`/weft/v1/repairs/<node>/<id>`, written by `weftctl check
//! --repair` through weft-check): each is re-verified against the store and the kernel, then
//! carried out (or found moot), and its key is deleted once the report after it is written.
//! Every action is safe to run twice: deleting what is already gone is success.

use std::sync::Arc;
use std::sync::mpsc::Sender;
use std::time::Duration;

use weft_check::{
    AliasRef, NodeAction, NodeInfo, RepairOrder, link_local_of, parse_mac, repairs_prefix,
};
use weft_ipam::{Allocation, NetworkRecord};
use weft_store::{Store, StoreError};

use weft_dataplane::{FdbEntry, Netlink};

use crate::report::Context;
use crate::{AgentError, Result, log};

fn list<T: serde::de::DeserializeOwned>(
    store: &dyn Store,
    prefix: &str,
) -> Result<Vec<(String, T)>> {
    let kvs = store
        .list(prefix)
        .map_err(|e| AgentError::store(format!("list {prefix}"), e))?;
    Ok(kvs
        .into_iter()
        .filter_map(|kv| serde_json::from_slice(&kv.value).ok().map(|v| (kv.key, v)))
        .collect())
}

/// Carries out every pending order; the keys of those finished (done or moot).
pub(crate) fn carry_out(ctx: &Context) -> Result<Vec<String>> {
    let orders: Vec<(String, RepairOrder)> =
        list(ctx.store.as_ref(), &repairs_prefix(&ctx.cfg.node))?;
    let mut finished = Vec::new();
    for (key, o) in orders {
        match execute(ctx, &o.action) {
            Ok(what) => {
                log!("repair order {}: {what}", o.id);
                finished.push(key);
            }
            Err(e) => log!(
                "repair order {} ({:?}): {}",
                o.id,
                o.action,
                crate::agent::chain(&e)
            ),
        }
    }
    Ok(finished)
}

fn execute(ctx: &Context, action: &NodeAction) -> Result<String> {
    let store = ctx.store.as_ref();
    match action {
        NodeAction::DeleteLink { name, alias } => {
            let mut nl = weft_dataplane::Netlink::new()?;
            let Some(link) = nl.link_by_name(name)? else {
                return Ok(format!("{name} is already gone"));
            };
            if link.alias.as_deref() != Some(alias.as_str()) {
                return Ok(format!("{name} is now another interface: kept"));
            }
            let Some(a) = AliasRef::parse(alias) else {
                return Ok(format!("{name}: alias {alias} names no attachment: kept"));
            };
            let key = weft_ipam::handle_key(&a.network, &a.handle());
            if store
                .get(&key)
                .map_err(|e| AgentError::store(format!("read {key}"), e))?
                .is_some()
            {
                return Ok(format!("{name}: {key} exists again: kept"));
            }
            match nl.delete_link(link.index) {
                Ok(()) => Ok(format!("deleted {name} ({alias})")),
                Err(e) if e.is_not_found() => Ok(format!("{name} is already gone")),
                Err(e) => Err(e.into()),
            }
        }
        NodeAction::DeleteRoute { dst, gateway, dev } => {
            if gateway.is_none() {
                // A pod route: kept while an allocation of this node holds the address.
                let held = list::<Allocation>(store, &format!("{}/handles/", weft_ipam::KEY_ROOT))?
                    .into_iter()
                    .any(|(_, a)| {
                        a.node == ctx.cfg.node && a.addresses.iter().any(|x| x.addr() == dst.addr())
                    });
                if held {
                    return Ok(format!(
                        "route {dst}: an allocation of this node holds it again: kept"
                    ));
                }
            }
            let mut nl = weft_dataplane::Netlink::new()?;
            let oif = if dev.is_empty() {
                None
            } else {
                match nl.link_by_name(dev)? {
                    Some(l) => Some(l.index),
                    None => return Ok(format!("route {dst} dev {dev}: the device is gone")),
                }
            };
            let mut r = weft_dataplane::Route::new(*dst);
            r.gateway = *gateway;
            r.oif = oif;
            match nl.delete_route(&r) {
                Ok(()) => Ok(format!("deleted route {}", r.describe())),
                Err(e) if e.is_not_found() => Ok(format!("route {dst} is already gone")),
                Err(e) => Err(e.into()),
            }
        }
        NodeAction::DeleteFdb { mac, dst } => {
            let nodes = list::<NodeInfo>(store, &weft_ipam::nodes_prefix())?;
            if nodes.iter().any(|(_, n)| {
                n.vtep_mac.as_deref().map(str::to_ascii_lowercase) == Some(mac.to_ascii_lowercase())
                    && n.underlay_ip == *dst
            }) {
                return Ok(format!("fdb {mac} dst {dst} is a node's again: kept"));
            }
            let Some(m) = parse_mac(mac) else {
                return Ok(format!("fdb {mac}: not a MAC"));
            };
            let Some(vx) = vxlan_index(ctx)? else {
                return Ok("no VXLAN device: nothing to delete".into());
            };
            Netlink::new()?.delete_fdb(vx, &FdbEntry { mac: m, dst: *dst })?;
            Ok(format!("deleted fdb {mac} dst {dst}"))
        }
        NodeAction::DeleteNeighbour { ip } => {
            let nodes = list::<NodeInfo>(store, &weft_ipam::nodes_prefix())?;
            let used = nodes.iter().any(|(_, n)| {
                n.name != ctx.cfg.node
                    && (n.vtep_ip == Some(*ip)
                        || n.vtep_mac
                            .as_deref()
                            .and_then(parse_mac)
                            .map(|m| link_local_of(&m))
                            == Some(*ip))
            });
            if used {
                return Ok(format!("neighbour {ip} is a node's VTEP again: kept"));
            }
            let Some(vx) = vxlan_index(ctx)? else {
                return Ok("no VXLAN device: nothing to delete".into());
            };
            Netlink::new()?.delete_neighbour(vx, *ip)?;
            Ok(format!("deleted neighbour {ip}"))
        }
        NodeAction::DeleteNftElement { set, element } => {
            if !["pods4", "pods6", "masq4", "masq6"].contains(&set.as_str()) {
                return Ok(format!("set {set} is not one of Weft's: kept"));
            }
            let networks = list::<NetworkRecord>(store, &weft_ipam::networks_prefix())?;
            if networks.iter().any(|(_, n)| {
                n.spec
                    .pools
                    .iter()
                    .any(|p| p.subnet.trunc() == element.trunc())
            }) {
                return Ok(format!("{element} is a network's pool again: kept"));
            }
            let have = weft_dataplane::masquerade::read()?;
            let present = if set.starts_with("pods") {
                have.pods.contains(element)
            } else {
                have.masq.contains(element)
            };
            if !present {
                return Ok(format!("{element} is no longer in {set}"));
            }
            weft_dataplane::nft::apply(&format!(
                "delete element inet weft {set} {{ {element} }}\n"
            ))?;
            Ok(format!("deleted {element} from set {set}"))
        }
        NodeAction::Resync => {
            (ctx.resync)();
            if ctx.wait_pass(Duration::from_secs(5)) {
                Ok("reconciled".into())
            } else {
                Err(AgentError::Underlay(
                    "asked for a reconcile pass: none finished within 5 s (the order stays and is retried; see this weftd's log for why its passes fail or hang)".into(),
                ))
            }
        }
    }
}

fn vxlan_index(ctx: &Context) -> Result<Option<u32>> {
    let mut nl = weft_dataplane::Netlink::new()?;
    Ok(nl.link_by_name(&ctx.cfg.vxlan_device)?.map(|l| l.index))
}

/// Watches this node's repair orders; pokes the report thread on each change.
pub(crate) fn spawn_watch(store: Arc<dyn Store>, node: &str, poke: Sender<()>) -> Result<()> {
    let prefix = repairs_prefix(node);
    std::thread::Builder::new()
        .name("repairs".into())
        .spawn(move || {
            let mut watcher = None;
            loop {
                let w = match watcher.as_mut() {
                    Some(w) => w,
                    None => match store.watch(&prefix, 0) {
                        Ok(w) => {
                            if poke.send(()).is_err() {
                                return;
                            }
                            watcher.insert(w)
                        }
                        Err(_) => {
                            std::thread::sleep(Duration::from_millis(500));
                            continue;
                        }
                    },
                };
                match w.next_timeout(Duration::from_millis(500)) {
                    Ok(Some(_)) => {
                        if poke.send(()).is_err() {
                            return;
                        }
                    }
                    Ok(None) => {}
                    Err(StoreError::Compacted(_)) => watcher = None,
                    Err(_) => std::thread::sleep(Duration::from_millis(500)),
                }
            }
        })
        .map(|_| ())
        .map_err(|e| AgentError::Io {
            what: "start thread repairs".into(),
            source: e,
        })
}
