//! Account IDs: the one piece of outside input that ends up in file names and
//! object keys, so it is validated once, here, and carried as a type after that.

use std::fmt;
use std::sync::Arc;

/// An account ID that matched `[A-Za-z0-9_-]{1,64}` (docs/FORMAT.md §1).
///
/// Shared, not copied: every open part, the compactor's note of it and the
/// per-account counts each hold an account's ID, and with a string of their
/// own apiece those copies were about a sixth of what an open part costs.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AccountId(Arc<str>);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid account ID {0:?}: use 1 to 64 characters of A-Z, a-z, 0-9, '_' or '-'")]
pub struct InvalidAccountId(pub String);

impl AccountId {
    pub const MAX_LEN: usize = 64;

    pub fn parse(raw: &str) -> Result<Self, InvalidAccountId> {
        let valid = !raw.is_empty()
            && raw.len() <= Self::MAX_LEN
            && raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if valid {
            Ok(Self(raw.into()))
        } else {
            Err(InvalidAccountId(raw.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_allowed_alphabet() {
        for ok in ["a", "acme", "Edge_17-eu", &"x".repeat(64)] {
            assert_eq!(AccountId::parse(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn rejects_everything_else() {
        for bad in ["", "a/b", "..", "a.b", "ünï", "a b", "a\0", &"x".repeat(65)] {
            assert!(AccountId::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
