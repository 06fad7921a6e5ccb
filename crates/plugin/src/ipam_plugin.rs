//! `weft-ipam`: Weft's IPAM as an IPAM-only CNI plugin, for the reference `bridge`, `macvlan`
//! and any other plugin that delegates its IPAM.
use weft_cni::config::NetConf;
use weft_cni::result::IpConfig;
use weft_cni::skel::Plugin;
use weft_cni::{CniEnv, CniError, CniResult};
use weft_ipam::Ipam;

use crate::config::{IpamConfig, parse_ipam_plugin};
use crate::{codes, ipam_error, ipam_request, node_lock, open_store};

/// Ready when the store opens and every family has a free address for this node.
pub fn status_of(ipam: &IpamConfig) -> Result<(), CniError> {
    let store = open_store(ipam).map_err(|e| CniError::not_available(e.msg))?;
    let free = Ipam::new(&*store)
        .free_per_family(&ipam.spec, &ipam.node)
        .map_err(|e| CniError::not_available(format!("the IPAM store is not usable: {e}")))?;
    for (family, n) in free {
        if n == 0 {
            return Err(CniError::not_available(format!(
                "network \"{}\": no free IPv{family} address left for node {}; add a pool or release addresses",
                ipam.spec.name, ipam.node
            )));
        }
    }
    Ok(())
}

pub struct WeftIpamPlugin;

impl Plugin for WeftIpamPlugin {
    fn add(&self, env: &CniEnv, conf: &NetConf) -> Result<CniResult, CniError> {
        let ipam = parse_ipam_plugin(conf)?;
        let req = ipam_request(env, conf, &ipam)?;
        let _node = node_lock(&ipam)?;
        let store = open_store(&ipam)?;
        let got = Ipam::new(&*store)
            .allocate(&ipam.spec, &req)
            .map_err(ipam_error)?;
        Ok(CniResult {
            cni_version: conf.cni_version.clone(),
            ips: got
                .addresses
                .iter()
                .map(|a| IpConfig {
                    address: a.address,
                    gateway: a.gateway,
                    interface: None,
                })
                .collect(),
            routes: ipam.routes.clone(),
            dns: conf.dns.clone().unwrap_or_default(),
            ..Default::default()
        })
    }

    fn del(&self, env: &CniEnv, conf: &NetConf) -> Result<(), CniError> {
        let ipam = parse_ipam_plugin(conf)?;
        let _node = node_lock(&ipam)?;
        let store = open_store(&ipam)?;
        Ipam::new(&*store)
            .release(
                &conf.name,
                env.require_container_id()?,
                env.require_ifname()?,
            )
            .map_err(ipam_error)?;
        Ok(())
    }

    fn check(&self, env: &CniEnv, conf: &NetConf) -> Result<(), CniError> {
        let ipam = parse_ipam_plugin(conf)?;
        let store = open_store(&ipam)?;
        let (cid, ifname) = (env.require_container_id()?, env.require_ifname()?);
        match Ipam::new(&*store)
            .get(&conf.name, cid, ifname)
            .map_err(ipam_error)?
        {
            Some(_) => Ok(()),
            None => Err(CniError::new(
                codes::DRIFT,
                format!(
                    "network \"{}\": no allocation is recorded for {cid}:{ifname}",
                    conf.name
                ),
            )),
        }
    }

    fn status(&self, conf: &NetConf) -> Result<(), CniError> {
        status_of(&parse_ipam_plugin(conf)?)
    }

    fn gc(&self, _env: &CniEnv, conf: &NetConf) -> Result<(), CniError> {
        let ipam = parse_ipam_plugin(conf)?;
        let valid = conf.valid_attachments()?;
        let pairs: Vec<(String, String)> = valid
            .into_iter()
            .map(|v| (v.container_id, v.ifname))
            .collect();
        let _node = node_lock(&ipam)?;
        let store = open_store(&ipam)?;
        Ipam::new(&*store)
            .gc(&conf.name, &ipam.node, &pairs)
            .map_err(ipam_error)?;
        Ok(())
    }
}
