//! `weftd`: Weft's node agent. See the `weft_agent` crate.

use clap::Parser;
use weft_agent::agent::{chain, run};
use weft_agent::config::{Config, Flags};

fn main() {
    let flags = Flags::parse();
    let result = Config::load(&flags).and_then(run);
    if let Err(e) = result {
        eprintln!("weftd: error: {}", chain(&e));
        std::process::exit(1);
    }
}
