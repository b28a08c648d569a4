//! Claims: one reader or rewriter of a part's records at a time.
//!
//! Staging reads a part's records in key order while the compactor may be
//! swapping blocks of that part for a member. sled's iterators are not
//! snapshots, so a stager reading past a swap could miss the member and the
//! blocks it replaced alike. Whoever walks or rewrites a part's records holds
//! its claim: staging waits for one (a member's swap takes milliseconds), the
//! compactor skips a part that is claimed and comes back later.

use std::collections::HashSet;

use parking_lot::{Condvar, Mutex};

use super::PartId;

#[derive(Default)]
pub struct Claims {
    held: Mutex<HashSet<PartId>>,
    freed: Condvar,
}

/// A part's records are its holder's to walk and rewrite until this drops.
pub struct Claim<'a> {
    claims: &'a Claims,
    id: PartId,
}

impl Claims {
    /// Waits until no one else holds `id`.
    pub fn wait_for(&self, id: &PartId) -> Claim<'_> {
        let mut held = self.held.lock();
        while held.contains(id) {
            self.freed.wait(&mut held);
        }
        held.insert(id.clone());
        Claim {
            claims: self,
            id: id.clone(),
        }
    }

    /// `None` while someone else holds `id`.
    pub fn try_take(&self, id: &PartId) -> Option<Claim<'_>> {
        let mut held = self.held.lock();
        held.insert(id.clone()).then(|| Claim {
            claims: self,
            id: id.clone(),
        })
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.claims.held.lock().remove(&self.id);
        self.claims.freed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::account::AccountId;
    use crate::hour::Hour;

    #[test]
    fn a_claimed_part_waits_for_its_holder() {
        let claims = Claims::default();
        let id = PartId {
            account: AccountId::parse("acme").unwrap(),
            hour: Hour(1),
            seq: 0,
        };
        let held = claims.try_take(&id).unwrap();
        assert!(claims.try_take(&id).is_none());
        let waited = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                let _claim = claims.wait_for(&id);
                waited.store(true, std::sync::atomic::Ordering::SeqCst);
            });
            std::thread::sleep(std::time::Duration::from_millis(50));
            assert!(!waited.load(std::sync::atomic::Ordering::SeqCst));
            drop(held);
        });
        assert!(waited.load(std::sync::atomic::Ordering::SeqCst));
        assert!(claims.try_take(&id).is_some());
    }
}
