//! Printing an error with its causes, each once.
//!
//! Errors here follow retina's rule: a message never repeats its source; the source is
//! reached through `Error::source`. Where an error is shown or stored as one line (a log
//! field, a clip's failure reason, a health event), [`Chain`] prints the whole chain.

use std::error::Error;
use std::fmt;

/// Displays `error: cause: cause…`.
pub struct Chain<'a>(pub &'a (dyn Error + 'a));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(c) = cause {
            write!(f, ": {c}")?;
            cause = c.source();
        }
        Ok(())
    }
}

/// The error and its causes on one line.
pub fn chain(e: &dyn Error) -> String {
    Chain(e).to_string()
}

#[cfg(test)]
mod tests {
    #[derive(Debug)]
    struct Outer(std::io::Error);
    impl std::fmt::Display for Outer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("opening the ring")
        }
    }
    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn each_cause_once() {
        let e = Outer(std::io::Error::other("disk full"));
        assert_eq!(super::chain(&e), "opening the ring: disk full");
    }
}
