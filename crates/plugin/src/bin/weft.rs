//! `weft`: the CNI plugin. The runtime execs it with CNI_* variables and the config on stdin.
fn main() {
    // Each verb is timed and reported to the node's weftd (see `weft_plugin::report`).
    std::process::exit(weft_cni::skel::run(&weft_plugin::report::Reporting(
        weft_plugin::WeftPlugin,
    )));
}
