//! slowcat's runtime: the command line, config.toml loading and validation, building the
//! processor graph and running it on tokio, shutdown, per-turn metrics and benchmarks.

pub mod app;
pub mod ask;
pub mod bench;
pub mod cli;
pub mod config;
pub mod metrics;
