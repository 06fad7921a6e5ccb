//! tc: a clsact qdisc and direct-action BPF filters on a device's ingress, for the fast-path
//! programs of [`crate::bpf`].
//!
//! Each program name has a fixed filter priority and handle (derived from the name), so
//! attaching a program again replaces the filter instead of stacking a second one.

use std::os::fd::{AsFd, AsRawFd};

use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::tc::{
    TcAttribute, TcBpfFlags, TcFilterBpf, TcFilterBpfOption, TcHandle, TcMessage, TcOption,
};

use super::{Netlink, Request};
use crate::bpf::Program;
use crate::{Error, Result};

/// `ETH_P_ALL` in network order, as `tcm_info`'s low half wants it.
const ETH_P_ALL_BE: u32 = (libc::ETH_P_ALL as u16).to_be() as u32;
/// The clsact qdisc's handle (`TC_H_CLSACT` major, minor 0).
const CLSACT_HANDLE: TcHandle = TcHandle {
    major: 0xffff,
    minor: 0,
};
/// The ingress hook of clsact (`TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_INGRESS)`).
const INGRESS_PARENT: TcHandle = TcHandle {
    major: 0xffff,
    minor: TcHandle::MIN_INGRESS,
};
/// Weft's filters take priorities 0x5700 to 0x57ff (lower runs first; tc's automatic
/// priorities start at 0xc000, so Weft's run before filters added without one).
const PRIORITY_BASE: u32 = 0x5700;

/// A BPF filter found on an ingress hook.
struct BpfFilter {
    name: String,
    priority: u32,
    handle: TcHandle,
}

/// Fixed (priority, handle) of the filter for program `name`: FNV-1a of the name.
fn filter_slot(name: &str) -> (u32, TcHandle) {
    let h = name.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ b as u32).wrapping_mul(0x0100_0193)
    });
    (PRIORITY_BASE + (h & 0xff), TcHandle::from(h.max(1)))
}

impl Netlink {
    /// Attaches `prog` to the ingress of link `index`: a clsact qdisc (kept if there is one) and
    /// a direct-action bpf filter named after the program, for every protocol. A filter of the
    /// same name is replaced.
    pub fn attach_ingress(&mut self, index: u32, prog: &Program) -> Result<()> {
        let ifindex = to_ifindex(index)?;
        let mut qdisc = TcMessage::with_index(ifindex);
        qdisc.header.handle = CLSACT_HANDLE;
        qdisc.header.parent = TcHandle::CLSACT;
        qdisc.attributes.push(TcAttribute::Kind("clsact".into()));

        let (priority, handle) = filter_slot(prog.name());
        let mut filter = TcMessage::with_index(ifindex);
        filter.header.handle = handle;
        filter.header.parent = INGRESS_PARENT;
        filter.header.info = (priority << 16) | ETH_P_ALL_BE;
        filter
            .attributes
            .push(TcAttribute::Kind(TcFilterBpf::KIND.into()));
        filter.attributes.push(TcAttribute::Options(vec![
            TcOption::Bpf(TcFilterBpfOption::ProgFd(prog.as_fd().as_raw_fd() as u32)),
            TcOption::Bpf(TcFilterBpfOption::ProgName(prog.name().to_string())),
            TcOption::Bpf(TcFilterBpfOption::Flags(TcBpfFlags::DirectAction)),
        ]));
        self.batch_requests(vec![
            Request::new(
                format!("add clsact qdisc on link {index}"),
                RouteNetlinkMessage::NewQueueDiscipline(qdisc),
                NLM_F_CREATE | NLM_F_EXCL,
            )
            .tolerate(&[libc::EEXIST]),
            Request::new(
                format!(
                    "attach BPF program {} to ingress of link {index}",
                    prog.name()
                ),
                RouteNetlinkMessage::NewTrafficFilter(filter),
                NLM_F_CREATE | NLM_F_REPLACE,
            ),
        ])
    }

    /// Names of the bpf filters on the ingress of link `index`, in the kernel's order (by
    /// priority). Empty when the link has no clsact qdisc.
    pub fn ingress_programs(&mut self, index: u32) -> Result<Vec<String>> {
        Ok(self
            .ingress_bpf_filters(index)?
            .into_iter()
            .map(|f| f.name)
            .collect())
    }

    /// Removes the bpf filter called `name` from the ingress of link `index`; false when there
    /// was none. The clsact qdisc stays.
    pub fn detach_ingress(&mut self, index: u32, name: &str) -> Result<bool> {
        let Some(found) = self
            .ingress_bpf_filters(index)?
            .into_iter()
            .find(|f| f.name == name)
        else {
            return Ok(false);
        };
        let mut msg = TcMessage::with_index(to_ifindex(index)?);
        msg.header.handle = found.handle;
        msg.header.parent = INGRESS_PARENT;
        msg.header.info = (found.priority << 16) | ETH_P_ALL_BE;
        msg.attributes
            .push(TcAttribute::Kind(TcFilterBpf::KIND.into()));
        let reply = self.request(
            Request::new(
                format!("detach BPF filter {name} from ingress of link {index}"),
                RouteNetlinkMessage::DelTrafficFilter(msg),
                0,
            )
            .tolerate(&[libc::ENOENT]),
        )?;
        Ok(reply.errno == 0)
    }

    fn ingress_bpf_filters(&mut self, index: u32) -> Result<Vec<BpfFilter>> {
        let mut msg = TcMessage::with_index(to_ifindex(index)?);
        msg.header.parent = INGRESS_PARENT;
        let reply = self.request(
            Request::new(
                format!("list ingress filters of link {index}"),
                RouteNetlinkMessage::GetTrafficFilter(msg),
                NLM_F_DUMP,
            )
            // No clsact qdisc: nothing attached.
            .tolerate(&[libc::EINVAL, libc::ENOENT]),
        )?;
        let mut out = Vec::new();
        for m in reply.msgs {
            let RouteNetlinkMessage::NewTrafficFilter(m) = m else {
                continue;
            };
            if !m
                .attributes
                .iter()
                .any(|a| matches!(a, TcAttribute::Kind(k) if k == TcFilterBpf::KIND))
            {
                continue;
            }
            let name = m.attributes.iter().find_map(|a| match a {
                TcAttribute::Options(opts) => opts.iter().find_map(|o| match o {
                    TcOption::Bpf(TcFilterBpfOption::ProgName(n)) => Some(n.clone()),
                    _ => None,
                }),
                _ => None,
            });
            if let Some(name) = name {
                out.push(BpfFilter {
                    name,
                    priority: m.header.info >> 16,
                    handle: m.header.handle,
                });
            }
        }
        Ok(out)
    }

    /// Runs `reqs` as one batch; the first failure is the error.
    fn batch_requests(&mut self, reqs: Vec<Request>) -> Result<()> {
        self.execute(reqs, false).map(|_| ())
    }
}

fn to_ifindex(index: u32) -> Result<i32> {
    i32::try_from(index)
        .ok()
        .filter(|&i| i > 0)
        .ok_or_else(|| Error::Invalid(format!("link index {index} is not a valid ifindex")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bpf::FastPath;

    #[test]
    fn filter_slots_are_fixed_and_distinct_for_weft_programs() {
        let a = filter_slot(FastPath::TO_PODS);
        let b = filter_slot(FastPath::FROM_POD);
        assert_eq!(a, filter_slot(FastPath::TO_PODS));
        assert_ne!(a, b);
        for (prio, handle) in [a, b] {
            assert!((PRIORITY_BASE..PRIORITY_BASE + 0x100).contains(&prio));
            assert_ne!(u32::from(handle), 0);
        }
        assert_eq!(ETH_P_ALL_BE, 0x0300);
    }
}
