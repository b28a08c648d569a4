//! Ingestion keys: each key belongs to exactly one account (docs/FORMAT.md §4).
//! Keys are secrets: they are compared and mapped here and never logged.

use std::collections::HashMap;

use axum::http::HeaderMap;
use base64::Engine;

use crate::account::AccountId;

/// The keys in force, replaced whole when the config is reloaded.
pub type LiveKeys = std::sync::Arc<arc_swap::ArcSwap<Keys>>;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Keys(HashMap<String, AccountId>);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("ingestion key #{0} is empty or holds whitespace, ':' or a control character; use printable characters only")]
    BadKey(usize),
    #[error("ingestion key #{0} is given twice, for accounts {1:?} and {2:?}; a key belongs to exactly one account")]
    Conflict(usize, String, String),
}

impl Keys {
    /// Builds the key table; the position of a bad key is reported, never the key.
    pub fn new(pairs: impl IntoIterator<Item = (String, AccountId)>) -> Result<Self, KeyError> {
        let mut map: HashMap<String, AccountId> = HashMap::new();
        for (i, (key, account)) in pairs.into_iter().enumerate() {
            let n = i + 1;
            if key.is_empty()
                || key
                    .chars()
                    .any(|c| c == ':' || c.is_whitespace() || c.is_control())
            {
                return Err(KeyError::BadKey(n));
            }
            if let Some(existing) = map.get(&key) {
                if existing != &account {
                    return Err(KeyError::Conflict(
                        n,
                        existing.to_string(),
                        account.to_string(),
                    ));
                }
            }
            map.insert(key, account);
        }
        Ok(Self(map))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn account(&self, key: &str) -> Option<&AccountId> {
        self.0.get(key)
    }
}

/// The key a request carries: `Authorization: Basic base64(key:)`, an `apikey`
/// header, or an `apikey` query parameter, in that order.
pub fn key_of(headers: &HeaderMap, query_apikey: Option<&str>) -> Option<String> {
    if let Some(basic) = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Basic ")
                .or_else(|| v.strip_prefix("basic "))
        })
    {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(basic.trim())
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let key = text.split(':').next().unwrap_or_default();
        return (!key.is_empty()).then(|| key.to_owned());
    }
    if let Some(key) = headers.get("apikey").and_then(|v| v.to_str().ok()) {
        return (!key.is_empty()).then(|| key.to_owned());
    }
    query_apikey.filter(|k| !k.is_empty()).map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acct(a: &str) -> AccountId {
        AccountId::parse(a).unwrap()
    }

    #[test]
    fn all_three_forms_are_read() {
        let mut h = HeaderMap::new();
        let basic = base64::engine::general_purpose::STANDARD.encode("k1:");
        h.insert("authorization", format!("Basic {basic}").parse().unwrap());
        assert_eq!(key_of(&h, Some("q")), Some("k1".into()));
        let mut h = HeaderMap::new();
        h.insert("apikey", "k2".parse().unwrap());
        assert_eq!(key_of(&h, Some("q")), Some("k2".into()));
        assert_eq!(key_of(&HeaderMap::new(), Some("k3")), Some("k3".into()));
        assert_eq!(key_of(&HeaderMap::new(), None), None);
    }

    #[test]
    fn one_key_one_account() {
        let keys = Keys::new([("a".into(), acct("x")), ("b".into(), acct("y"))]).unwrap();
        assert_eq!(keys.account("a"), Some(&acct("x")));
        assert_eq!(keys.account("c"), None);
        assert!(matches!(
            Keys::new([("a".into(), acct("x")), ("a".into(), acct("y"))]),
            Err(KeyError::Conflict(2, _, _))
        ));
        assert_eq!(
            Keys::new([("a:b".into(), acct("x"))]).unwrap_err(),
            KeyError::BadKey(1)
        );
    }
}
