//! Showing an error with its causes, where an error reaches the user (an error frame, a log line,
//! a build failure): the typed errors keep each cause as their `source`, not in their own text.

use std::error::Error;
use std::fmt;

/// Displays an error and its sources joined by ": ", as anyhow's `{:#}` does, so the message
/// keeps the cause that says what to do.
pub struct ErrorChain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read the voice config voice.json")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn the_chain_shows_every_cause_once() {
        let e = Outer(std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"));
        assert_eq!(ErrorChain(&e).to_string(), "cannot read the voice config voice.json: no such file");
    }
}
