//! Small general-purpose processors.

use async_trait::async_trait;
use serde::Deserialize;

use crate::processor::{BoxProcessor, BuildContext, Processor};
use crate::registry::{BuildError, Settings};

/// Settings of `passthrough`: none.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PassthroughSettings {}

impl Settings for PassthroughSettings {
    const TYPE: &'static str = "passthrough";
    const ABOUT: &'static str = "forwards every frame unchanged (for tests and benchmarks)";

    fn build(self, _ctx: &BuildContext, _: crate::registry::Passed) -> Result<BoxProcessor, BuildError> {
        Ok(Box::new(Passthrough))
    }
}

/// Forwards every frame unchanged: it accepts none, so the runtime forwards them all.
#[derive(Debug, Default)]
pub struct Passthrough;

#[async_trait]
impl Processor for Passthrough {}
