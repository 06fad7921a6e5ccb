//! The leak sweep: frees allocations whose attachment is gone when DEL never came (a node
//! crash, a runtime that lost state), and never one that is live.
//!
//! An allocation is freed only when all of these hold:
//! 1. it is older than the grace period (an ADD in progress is never a leak);
//! 2. `is_live` said "not live" on two sweeps at least the grace period apart, for this same
//!    allocation (same handle and creation time: a handle re-created in between starts over);
//! 3. inside the releasing transaction, the record is re-read unchanged and `is_live` is asked
//!    once more, just before the release commits.
use std::collections::BTreeMap;

use weft_store::transact;

use crate::{Allocation, Ipam, Result, handles_prefix, release_handle};

#[derive(Debug, Default)]
pub struct LeakSweeper {
    pub grace_secs: u64,
    /// (handle, created_at) -> (first seen not live, times seen not live).
    suspects: BTreeMap<(String, u64), (u64, u32)>,
}

impl LeakSweeper {
    pub fn new(grace_secs: u64) -> Self {
        LeakSweeper {
            grace_secs,
            suspects: BTreeMap::new(),
        }
    }

    /// One sweep of `node`'s allocations on `network`; returns what it freed.
    pub fn sweep(
        &mut self,
        ipam: &Ipam<'_>,
        network: &str,
        node: &str,
        is_live: &dyn Fn(&Allocation) -> bool,
    ) -> Result<Vec<Allocation>> {
        let now = (ipam.clock)();
        let mine: Vec<Allocation> = ipam
            .allocations(network)?
            .into_iter()
            .filter(|a| a.node == node)
            .collect();
        let present: std::collections::BTreeSet<(String, u64)> = mine
            .iter()
            .map(|a| (a.handle.clone(), a.created_at))
            .collect();
        self.suspects.retain(|k, _| present.contains(k));
        let mut freed = Vec::new();
        for a in mine {
            let id = (a.handle.clone(), a.created_at);
            if is_live(&a) {
                self.suspects.remove(&id);
                continue;
            }
            let (first, seen) = *self
                .suspects
                .entry(id.clone())
                .and_modify(|(_, n)| *n += 1)
                .or_insert((now, 1));
            let old_enough = now.saturating_sub(a.created_at) >= self.grace_secs;
            if seen < 2 || now.saturating_sub(first) < self.grace_secs || !old_enough {
                continue;
            }
            let released = transact(ipam.store, |tx| {
                let key = format!("{}{}", handles_prefix(network), a.handle);
                match tx.get_json::<Allocation>(&key)? {
                    Some(current) if current.created_at == a.created_at && !is_live(&current) => {
                        release_handle(tx, network, &a.handle, now)
                    }
                    _ => Ok(None),
                }
            })?;
            if let Some(r) = released {
                self.suspects.remove(&id);
                freed.push(r);
            }
        }
        Ok(freed)
    }
}
