//! `weft-api`: see the library docs and docs/api.md.
use clap::Parser;

fn main() {
    let flags = weft_api::server::Flags::parse();
    if let Err(e) = weft_api::server::run(flags) {
        eprintln!("weft-api: {e}");
        std::process::exit(1);
    }
}
