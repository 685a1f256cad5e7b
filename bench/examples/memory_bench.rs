//! The memory benchmark without building the binary, and with the number of timed stores
//! (`slowcat bench memory` has the rest):
//! `cargo run --release -p slowcat-bench --example memory_bench -- [sizes...] [--runs N] [--injections N] [--stores N] [--dir PATH]`

use slowcat_bench::memory::{BenchOptions, run};

fn main() -> anyhow::Result<()> {
    let mut opts = BenchOptions::default();
    let mut sizes = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--runs" => opts.runs = args.next().unwrap_or_default().parse()?,
            "--injections" => opts.injections = args.next().unwrap_or_default().parse()?,
            "--stores" => opts.stores = args.next().unwrap_or_default().parse()?,
            "--dir" => opts.dir = args.next().map(Into::into),
            n => sizes.push(n.replace('_', "").parse()?),
        }
    }
    if !sizes.is_empty() {
        opts.sizes = sizes;
    }
    run(&opts, &mut std::io::stdout())
}
