//! Repairs: re-verified, each safe to run twice.
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use weft_ipam::{Allocation, BlockRecord, Ipam, Reservation, block_key, handle_key, ip_offset};
use weft_store::{Store, StoreError, transact};

use crate::analyse::{Snapshot, analyse, attachment_gone, in_pools};
use crate::model::{
    GoneMarker, NodeAction, NodeReport, ORDER_SCHEMA, RepairOrder, gone_key, repair_key, report_key,
};
use crate::{CheckError, CheckOptions, Finding, FindingKind, RepairAction, RepairOutcome};

fn outcome(f: &Finding, status: &str, message: String) -> RepairOutcome {
    RepairOutcome {
        finding: f.clone(),
        status: status.into(),
        message,
    }
}

/// Repairs the given findings (re-verifying each against the store first), waiting up to
/// [`crate::REPAIR_WAIT`] for the nodes' orders.
pub fn repair(
    store: &dyn Store,
    findings: &[Finding],
    opts: &CheckOptions,
) -> Result<Vec<RepairOutcome>, CheckError> {
    repair_waiting(store, findings, opts, crate::REPAIR_WAIT)
}

/// [`repair`], waiting up to `wait` for the nodes to carry out their orders.
///
/// Order: store-side repairs of allocations first (leaks, duplicates), then blocks of gone
/// nodes (whose allocations may just have been released), reservations, and last the orders
/// for nodes, which it then waits for. Orders left for nodes that are gone are deleted.
pub fn repair_waiting(
    store: &dyn Store,
    findings: &[Finding],
    opts: &CheckOptions,
    wait: Duration,
) -> Result<Vec<RepairOutcome>, CheckError> {
    let snap = Snapshot::load(store)?;
    let now = weft_ipam::now();
    let current = analyse(&snap, opts, now);
    let rank = |f: &Finding| match f.kind {
        FindingKind::Duplicate => 0,
        FindingKind::Leak => 1,
        FindingKind::StaleBlock => 2,
        FindingKind::ReservationOutsidePool => 3,
        FindingKind::Orphan | FindingKind::MissingRoute => 4,
    };
    // Orders for nodes that are gone will never be carried out.
    for (node, keys) in &snap.orders {
        if snap.absent(node) {
            for key in keys {
                delete_key(store, key)?;
            }
        }
    }
    // Markers: a node back (or with nothing left) is forgotten; a gone node the findings name
    // is marked (once).
    for node in snap.gone.keys() {
        let named = current
            .findings
            .iter()
            .any(|f| f.node.as_deref() == Some(node.as_str()));
        if !snap.absent(node) || !named {
            delete_key(store, &gone_key(node))?;
        }
    }
    // Gone markers left after this run: deleted at the end when nothing names their node.
    let mut marked: BTreeSet<String> = snap
        .gone
        .keys()
        .filter(|n| snap.absent(n))
        .cloned()
        .collect();
    for f in findings {
        if let Some(node) = &f.node
            && !snap.nodes.is_empty()
            && snap.absent(node)
            && !snap.gone.contains_key(node)
        {
            let marker = GoneMarker {
                schema: 1,
                node: node.clone(),
                since: now,
            };
            put_if_absent(store, &gone_key(node), &marker)?;
            marked.insert(node.clone());
        }
    }
    let mut order: Vec<&Finding> = findings.iter().collect();
    order.sort_by_key(|f| rank(f));
    let mut out = Vec::new();
    let mut queued: Vec<(usize, String)> = Vec::new();
    // Orders that follow a store repair (a released leak's host routes): waited for too.
    let mut follow_ups: Vec<String> = Vec::new();
    for f in order {
        let Some(now_f) = current.findings.iter().find(|c| c.same_subject(f)) else {
            out.push(outcome(
                f,
                "skipped",
                "no longer found: nothing to do".into(),
            ));
            continue;
        };
        let Some(action) = now_f.action.clone() else {
            out.push(outcome(
                f,
                "skipped",
                format!("no automatic repair: {}", now_f.repair),
            ));
            continue;
        };
        let r = match &action {
            RepairAction::Node { node, order } => {
                let key = write_order(store, node, order.clone(), now_f.detail.clone(), now)?;
                queued.push((out.len(), key));
                Ok(("queued", format!("order written for weftd on {node}")))
            }
            other => {
                let r = store_repair(store, other, opts, now);
                // A released attachment's host routes (an underlay pod's /32 via the node's
                // shim; a veth's route goes with the veth) would be the next check's orphans:
                // the node's weftd removes them now, re-verifying that no allocation holds
                // the address.
                if let (
                    Ok(("done", msg)),
                    RepairAction::ReleaseHandle {
                        network, handle, ..
                    },
                ) = (&r, other)
                    && let Some(a) = snap.handles.get(network).and_then(|h| h.get(handle))
                    && let Some(report) = snap.reports.get(&a.node)
                {
                    let mut extra = Vec::new();
                    for rt in report.routes.iter().filter(|rt| {
                        rt.gateway.is_none()
                            && rt.dst.prefix_len() == rt.dst.max_prefix_len()
                            && a.addresses.iter().any(|x| x.addr() == rt.dst.addr())
                    }) {
                        let action = NodeAction::DeleteRoute {
                            dst: rt.dst,
                            gateway: None,
                            dev: rt.dev.clone(),
                        };
                        let reason = format!("host route of {handle}, released as a leak");
                        follow_ups.push(write_order(store, &a.node, action, reason, now)?);
                        extra.push(format!("{} dev {}", rt.dst, rt.dev));
                    }
                    if !extra.is_empty() {
                        let msg = format!(
                            "{msg}; order written for weftd on {} to remove its host route {}",
                            a.node,
                            extra.join(", ")
                        );
                        Ok(("done", msg))
                    } else {
                        r
                    }
                } else {
                    r
                }
            }
        };
        match r {
            Ok((status, msg)) => out.push(outcome(f, status, msg)),
            Err(e) => out.push(outcome(f, "failed", e.to_string())),
        }
    }
    // A gone node that nothing names any more (its allocations and blocks released) loses
    // its marker now: left behind, it would date a later absence of the node from this one
    // and let the next repair release at once what the grace period should protect.
    if !marked.is_empty() {
        let after = analyse(&Snapshot::load(store)?, opts, weft_ipam::now());
        for node in marked {
            let named = after
                .findings
                .iter()
                .any(|f| f.node.as_deref() == Some(node.as_str()));
            if !named {
                delete_key(store, &gone_key(&node))?;
            }
        }
    }
    // Wait (bounded) for the nodes to carry their orders out.
    let end = Instant::now() + wait;
    loop {
        let mut pending = 0;
        for (i, key) in &queued {
            if out[*i].status != "queued" {
                continue;
            }
            if store.get(key)?.is_none() {
                out[*i].status = "done".into();
                out[*i].message = "carried out by the node's weftd".into();
            } else {
                pending += 1;
            }
        }
        for key in &follow_ups {
            if store.get(key)?.is_some() {
                pending += 1;
            }
        }
        if pending == 0 || Instant::now() >= end {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for (i, _) in &queued {
        if out[*i].status == "queued" {
            out[*i].message = format!(
                "{}; not carried out within {} s (is its weftd running?): it stays queued",
                out[*i].message,
                wait.as_secs()
            );
        }
    }
    Ok(out)
}

type Done = (&'static str, String);

fn delete_key(store: &dyn Store, key: &str) -> Result<(), CheckError> {
    store.commit(&weft_store::Txn {
        compares: vec![],
        ops: vec![weft_store::Op::Delete { key: key.into() }],
    })?;
    Ok(())
}

/// Writes `value` at `key` unless something is there already.
fn put_if_absent<T: serde::Serialize>(
    store: &dyn Store,
    key: &str,
    value: &T,
) -> Result<(), CheckError> {
    let value = serde_json::to_vec(value).map_err(|e| CheckError::Other(e.to_string()))?;
    transact(store, |tx| {
        if tx.get(key)?.is_none() {
            tx.put(key, value.clone());
        }
        Ok::<_, StoreError>(())
    })?;
    Ok(())
}

/// Writes the order for `node`'s weftd to carry out `action` (unless the same order is
/// already queued); returns its key.
fn write_order(
    store: &dyn Store,
    node: &str,
    action: NodeAction,
    reason: String,
    now: u64,
) -> Result<String, CheckError> {
    let key = repair_key(node, &action.id());
    let order = RepairOrder {
        schema: ORDER_SCHEMA,
        id: action.id(),
        node: node.to_string(),
        action,
        reason,
        created_at: now,
    };
    put_if_absent(store, &key, &order)?;
    Ok(key)
}

/// How long `node` has been marked gone (None: not marked).
fn gone_for(tx: &mut weft_store::Tx<'_>, node: &str, now: u64) -> Result<Option<u64>, StoreError> {
    Ok(tx
        .get_json::<GoneMarker>(&gone_key(node))?
        .map(|g| now.saturating_sub(g.since)))
}

fn store_repair(
    store: &dyn Store,
    action: &RepairAction,
    opts: &CheckOptions,
    now: u64,
) -> Result<Done, CheckError> {
    match action {
        RepairAction::ReleaseHandle {
            network,
            handle,
            created_at,
        } => {
            let grace = opts.grace_seconds;
            let released = Ipam::new(store).release_handle_if(network, handle, &mut |tx, a| {
                if a.created_at != *created_at || now.saturating_sub(a.created_at) < grace {
                    return Ok(false);
                }
                // Re-read the node's report and record inside the transaction.
                let report: Option<NodeReport> = tx.get_json(&report_key(&a.node))?;
                let registered = tx.get(&weft_ipam::node_key(&a.node))?.is_some();
                Ok(match report {
                    Some(r) => attachment_gone(&r, network, handle, a),
                    None => !registered && gone_for(tx, &a.node, now)? >= Some(grace),
                })
            });
            match released.map_err(|e| CheckError::Other(e.to_string()))? {
                Some(a) => Ok((
                    "done",
                    format!(
                        "released {}",
                        a.addresses
                            .iter()
                            .map(|x| x.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )),
                None => Ok((
                    "skipped",
                    "changed, live, or its node not gone for the grace period yet when re-checked: kept"
                        .into(),
                )),
            }
        }
        RepairAction::FreeBlockEntry {
            network,
            block,
            address,
            owner,
        } => {
            let key = block_key(network, block);
            let did = transact(store, |tx| {
                let Some(mut b) = tx.get_json::<BlockRecord>(&key)? else {
                    return Ok::<_, StoreError>(false);
                };
                let off = ip_offset(b.cidr.network(), *address) as u32;
                if b.allocations.get(&off) != Some(owner) {
                    return Ok(false);
                }
                let still_unknown = if weft_ipam::is_attachment(owner) {
                    tx.get(&handle_key(network, owner))?.is_none()
                } else if let Some(k) = owner.strip_prefix("reserved:") {
                    tx.get(&weft_ipam::fixed::reservation_key(network, k))?
                        .is_none()
                } else if let Some(p) = owner.strip_prefix("pool:") {
                    tx.get(&weft_ipam::fixed::pool_key(network, p))?.is_none()
                } else {
                    false
                };
                if !still_unknown {
                    return Ok(false);
                }
                b.release(off, now);
                tx.put_json(&key, &b);
                Ok(true)
            })?;
            Ok(if did {
                ("done", format!("freed {address} in {block}"))
            } else {
                ("skipped", "changed when re-checked: kept".into())
            })
        }
        RepairAction::DropDuplicate {
            network,
            handle,
            address,
        } => {
            let hkey = handle_key(network, handle);
            let did = transact(store, |tx| {
                let Some(mut a) = tx.get_json::<Allocation>(&hkey)? else {
                    return Ok::<_, StoreError>(None);
                };
                let blocks = tx.list_json::<BlockRecord>(&weft_ipam::blocks_prefix(network))?;
                let owner = blocks
                    .iter()
                    .find(|(_, b)| b.cidr.contains(address))
                    .and_then(|(_, b)| {
                        b.allocations
                            .get(&(ip_offset(b.cidr.network(), *address) as u32))
                            .cloned()
                    });
                match owner {
                    Some(o) if o != *handle => {}
                    _ => return Ok(None),
                }
                a.addresses.retain(|x| x.addr() != *address);
                if a.addresses.is_empty() {
                    tx.delete(&hkey);
                    Ok(Some("deleted the record"))
                } else {
                    tx.put_json(&hkey, &a);
                    Ok(Some("rewrote the record without it"))
                }
            })?;
            Ok(match did {
                Some(what) => ("done", format!("{address} taken out of {handle}: {what}")),
                None => ("skipped", "changed when re-checked: kept".into()),
            })
        }
        RepairAction::DeleteBlock { network, block } => {
            let key = block_key(network, block);
            let did = transact(store, |tx| {
                let Some(b) = tx.get_json::<BlockRecord>(&key)? else {
                    return Ok::<_, StoreError>(false);
                };
                if !b.allocations.is_empty() || !b.cooling.is_empty() {
                    return Ok(false);
                }
                // Still overlapping another block?
                let overlaps = tx
                    .list_json::<BlockRecord>(&weft_ipam::blocks_prefix(network))?
                    .into_iter()
                    .any(|(k, o)| {
                        k != key
                            && (o.cidr.contains(&b.cidr.network())
                                || b.cidr.contains(&o.cidr.network()))
                    });
                if overlaps {
                    tx.delete(&key);
                }
                Ok(overlaps)
            })?;
            Ok(if did {
                ("done", format!("deleted block record {block}"))
            } else {
                ("skipped", "changed when re-checked: kept".into())
            })
        }
        RepairAction::ReleaseBlock {
            network,
            block,
            node,
        } => {
            let key = block_key(network, block);
            let cooldown = transact(store, |tx| {
                Ok::<_, StoreError>(
                    tx.get_json::<weft_ipam::NetworkRecord>(&weft_ipam::network_key(network))?
                        .map_or(0, |r| r.spec.cooldown_seconds),
                )
            })?;
            let did = transact(store, |tx| {
                let Some(mut b) = tx.get_json::<BlockRecord>(&key)? else {
                    return Ok::<_, StoreError>(Err("the block is gone".to_string()));
                };
                if b.node.as_deref() != Some(node.as_str()) {
                    return Ok(Err("the block changed hands".into()));
                }
                if tx.get(&weft_ipam::node_key(node))?.is_some()
                    || tx.get(&report_key(node))?.is_some()
                {
                    return Ok(Err(format!("node {node} is back")));
                }
                let gone = gone_for(tx, node, now)?;
                if gone < Some(opts.grace_seconds) {
                    return Ok(Err(format!(
                        "node {node} is gone for {} s only: its block is released once it has been gone for {} s",
                        gone.unwrap_or(0),
                        opts.grace_seconds
                    )));
                }
                let mut of_node = 0;
                for owner in b.allocations.values() {
                    if weft_ipam::is_attachment(owner)
                        && let Some(a) = tx.get_json::<Allocation>(&handle_key(network, owner))?
                        && a.node == *node
                    {
                        of_node += 1;
                    }
                }
                if of_node > 0 {
                    return Ok(Err(format!(
                        "{of_node} allocations of {node} are still in it: release them first (repair their leaks)"
                    )));
                }
                let cooling = b.cooling.values().any(|t| t.saturating_add(cooldown) > now);
                if b.allocations.is_empty() && !cooling {
                    tx.delete(&key);
                    Ok(Ok("deleted the empty block"))
                } else {
                    b.node = None;
                    tx.put_json(&key, &b);
                    Ok(Ok(
                        "dropped the node's claim (the block keeps its addresses)",
                    ))
                }
            })?;
            Ok(match did {
                Ok(m) => ("done", m.into()),
                Err(m) => ("skipped", m),
            })
        }
        RepairAction::DropReservation { network, key } => {
            let rkey = weft_ipam::fixed::reservation_key(network, key);
            let did = transact(store, |tx| {
                let Some(r) = tx.get_json::<Reservation>(&rkey)? else {
                    return Ok::<_, StoreError>(false);
                };
                if r.holder.is_some() {
                    return Ok(false);
                }
                let spec = tx
                    .get_json::<weft_ipam::NetworkRecord>(&weft_ipam::network_key(network))?
                    .map(|n| n.spec);
                // The same test as the finding's (exclusions included): a reservation found
                // outside its pools is dropped, not skipped as "changed" on every run.
                let outside = r
                    .addresses
                    .iter()
                    .any(|a| !in_pools(spec.as_ref(), a.addr()));
                if !outside {
                    return Ok(false);
                }
                // Free what the reservation keeps inside the pools.
                let owner = weft_ipam::fixed::reserved_owner(key);
                let mut changed: BTreeMap<String, BlockRecord> = BTreeMap::new();
                for (bkey, mut b) in
                    tx.list_json::<BlockRecord>(&weft_ipam::blocks_prefix(network))?
                {
                    let mut dirty = false;
                    for a in &r.addresses {
                        if b.cidr.contains(&a.addr()) {
                            let off = ip_offset(b.cidr.network(), a.addr()) as u32;
                            if b.allocations.get(&off) == Some(&owner) {
                                b.release(off, now);
                                dirty = true;
                            }
                        }
                    }
                    if dirty {
                        changed.insert(bkey, b);
                    }
                }
                for (k, b) in &changed {
                    tx.put_json(k, b);
                }
                tx.delete(&rkey);
                Ok(true)
            })?;
            Ok(if did {
                ("done", format!("deleted reservation {key}"))
            } else {
                ("skipped", "changed when re-checked: kept".into())
            })
        }
        RepairAction::Node { .. } => Ok(("skipped", "not a store repair".into())),
    }
}
