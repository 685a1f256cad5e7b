//! `slowcat bench turn` without building the binary:
//! `cargo test --release -p slowcat-bench --test turn -- --ignored --nocapture`.

use std::path::PathBuf;

fn models_dir() -> PathBuf {
    std::env::var_os("SLOWCAT_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models"))
}

#[test]
#[ignore = "a benchmark: prints figures (fails only when the model is missing or does not run)"]
fn smart_turn() {
    slowcat_bench::turn::bench(&models_dir()).unwrap();
}
