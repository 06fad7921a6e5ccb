//! `weft`: the CNI plugin. The runtime execs it with CNI_* variables and the config on stdin.
fn main() {
    std::process::exit(weft_cni::skel::run(&weft_plugin::WeftPlugin));
}
