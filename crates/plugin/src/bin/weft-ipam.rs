//! `weft-ipam`: Weft's IPAM as an IPAM-only CNI plugin.
fn main() {
    std::process::exit(weft_cni::skel::run(
        &weft_plugin::ipam_plugin::WeftIpamPlugin,
    ));
}
