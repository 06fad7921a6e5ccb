//! The node record `/weft/v1/nodes/<name>` and its lease.
//!
//! The record lives on a lease of `leaseTtlSeconds`; weftd refreshes the lease (a third of the
//! TTL apart). A stopped weftd leaves the lease to expire (a restart within the TTL re-attaches
//! the record to its new lease and nobody notices); a node whose weftd stops for good disappears
//! from the store when the lease expires and the other agents drop their routes to it.
//! [`Registration::revoke`] removes the record at once (for tools and tests).

use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use weft_store::{Op, Store, StoreError, Txn};

use crate::{AgentError, Result};

pub const SCHEMA: u32 = 1;

pub use weft_ipam::{node_key, nodes_prefix};

/// What a node tells the others about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeRecord {
    pub schema: u32,
    pub name: String,
    /// The node's address on its underlay link: the gateway (host-gw) or VXLAN remote of its
    /// blocks.
    pub underlay_ip: IpAddr,
    /// The underlay subnet (the L2 segment): peers inside it are reached by host-gw in hybrid
    /// mode.
    pub underlay_subnet: IpNet,
    /// The node's global IPv6 address on its underlay link, if any: the IPv6 host-gw next hop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub underlay_ip6: Option<IpAddr>,
    /// The MAC of the node's VXLAN device (None when the node runs host-gw only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vtep_mac: Option<String>,
    /// The next hop the others' VXLAN routes point at (see [`crate::desired`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vtep_ip: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vni: Option<u32>,
    /// The networks whose blocks this node serves.
    pub networks: Vec<String>,
    /// The routing mode the node runs.
    pub mode: String,
}

impl NodeRecord {
    /// The VTEP MAC as bytes, if the record has a valid one.
    pub fn vtep_mac_bytes(&self) -> Option<[u8; 6]> {
        parse_mac(self.vtep_mac.as_deref()?)
    }
}

pub use weft_dataplane::mac_string;

pub use weft_check::model::parse_mac;

/// The node's registration: its record on a lease that [`Registration::heartbeat`] refreshes.
pub struct Registration {
    store: Arc<dyn Store>,
    key: String,
    value: Vec<u8>,
    ttl: i64,
    lease: Mutex<i64>,
}

impl Registration {
    /// Grants a lease and writes the record on it (replacing a record a previous run left).
    pub fn register(store: Arc<dyn Store>, record: &NodeRecord, ttl: i64) -> Result<Registration> {
        let key = node_key(&record.name);
        let value = serde_json::to_vec(record).map_err(|e| AgentError::Record {
            key: key.clone(),
            msg: e.to_string(),
        })?;
        let reg = Registration {
            store,
            key,
            value,
            ttl,
            lease: Mutex::new(0),
        };
        reg.put_on_new_lease()?;
        Ok(reg)
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn lease(&self) -> i64 {
        *self.lease.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn put_on_new_lease(&self) -> Result<()> {
        let lease = self
            .store
            .grant_lease(self.ttl)
            .map_err(|e| AgentError::store(format!("grant a {} s lease", self.ttl), e))?;
        self.put(lease)?;
        *self.lease.lock().unwrap_or_else(|p| p.into_inner()) = lease;
        Ok(())
    }

    fn put(&self, lease: i64) -> Result<()> {
        let txn = Txn {
            compares: vec![],
            ops: vec![Op::PutWithLease {
                key: self.key.clone(),
                value: self.value.clone(),
                lease,
            }],
        };
        self.store
            .commit(&txn)
            .map_err(|e| AgentError::store(format!("write {}", self.key), e))?;
        Ok(())
    }

    /// Refreshes the lease; when it is gone (expired while the store was out of reach) takes a
    /// new one, and writes the record again when it is missing or was changed by someone else.
    pub fn heartbeat(&self) -> Result<()> {
        let lease = self.lease();
        match self.store.keep_alive(lease) {
            Ok(()) => {}
            Err(StoreError::LeaseNotFound(_)) => {
                crate::log!(
                    "lease {lease:#x} of {} is gone: registering again",
                    self.key
                );
                return self.put_on_new_lease();
            }
            Err(e) => return Err(AgentError::store(format!("keep lease {lease:#x} alive"), e)),
        }
        let current = self
            .store
            .get(&self.key)
            .map_err(|e| AgentError::store(format!("read {}", self.key), e))?;
        if current.as_ref().map(|kv| &kv.value) != Some(&self.value) {
            crate::log!("{} is missing or changed: writing it again", self.key);
            self.put(lease)?;
        }
        Ok(())
    }

    /// Ends the lease, which deletes the record.
    pub fn revoke(&self) -> Result<()> {
        let lease = self.lease();
        match self.store.revoke_lease(lease) {
            Ok(()) | Err(StoreError::LeaseNotFound(_)) => Ok(()),
            Err(e) => Err(AgentError::store(format!("revoke lease {lease:#x}"), e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trip() {
        let m = [0x0a, 0x58, 0, 1, 0xfe, 0xff];
        assert_eq!(mac_string(&m), "0a:58:00:01:fe:ff");
        assert_eq!(parse_mac(&mac_string(&m)), Some(m));
        assert_eq!(parse_mac("0a:58:00:01:fe"), None);
        assert_eq!(parse_mac("0a:58:00:01:fe:ff:00"), None);
    }

    #[test]
    fn registration_on_the_embedded_store() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(weft_store::embedded::EmbeddedStore::open(dir.path()).unwrap());
        let rec = NodeRecord {
            schema: SCHEMA,
            name: "n1".into(),
            underlay_ip: "198.51.100.2".parse().unwrap(),
            underlay_subnet: "198.51.100.0/24".parse().unwrap(),
            underlay_ip6: None,
            vtep_mac: Some("0a:58:00:00:00:01".into()),
            vtep_ip: Some("198.51.100.2".parse().unwrap()),
            vni: Some(4096),
            networks: vec!["c".into()],
            mode: "vxlan".into(),
        };
        let reg = Registration::register(store.clone(), &rec, 5).unwrap();
        let kv = store.get(&node_key("n1")).unwrap().unwrap();
        let back: NodeRecord = serde_json::from_slice(&kv.value).unwrap();
        assert_eq!(back, rec);
        // Deleted by hand: the heartbeat writes it again.
        store
            .commit(&Txn {
                compares: vec![],
                ops: vec![Op::Delete {
                    key: node_key("n1"),
                }],
            })
            .unwrap();
        reg.heartbeat().unwrap();
        assert!(store.get(&node_key("n1")).unwrap().is_some());
        reg.revoke().unwrap();
        assert!(store.get(&node_key("n1")).unwrap().is_none());
    }

    #[test]
    fn a_restart_reattaches_the_record_so_the_old_lease_deletes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(weft_store::embedded::EmbeddedStore::open(dir.path()).unwrap());
        let rec = NodeRecord {
            schema: SCHEMA,
            name: "n1".into(),
            underlay_ip: "198.51.100.2".parse().unwrap(),
            underlay_subnet: "198.51.100.0/24".parse().unwrap(),
            underlay_ip6: Some("fd00:51::2".parse().unwrap()),
            vtep_mac: None,
            vtep_ip: None,
            vni: None,
            networks: vec!["c".into()],
            mode: "host-gw".into(),
        };
        // The first run stops without revoking; the second registers on a new lease.
        let old = Registration::register(store.clone(), &rec, 5).unwrap();
        let new = Registration::register(store.clone(), &rec, 5).unwrap();
        assert_ne!(old.lease(), new.lease());
        // The old lease ending (as its expiry would) leaves the record in place.
        old.revoke().unwrap();
        let kv = store.get(&node_key("n1")).unwrap().expect("record kept");
        let back: NodeRecord = serde_json::from_slice(&kv.value).unwrap();
        assert_eq!(back, rec);
        new.revoke().unwrap();
        assert!(store.get(&node_key("n1")).unwrap().is_none());
    }
}
