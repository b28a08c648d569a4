//! The sled key layout. Everything lives in one tree, so that one `Batch` can
//! change blocks, part records and counters atomically:
//!
//! - `B account 0x00 hour part block` → a block of lines (many lines per value)
//! - `P account 0x00 hour part`       → the part's record (its state)
//! - `M name`                         → spool metadata (version, counters)
//! - `Q <original key>`               → a record set aside because it was corrupt
//! - `S source 0x00 dev inode`        → how far a tailed file was read
//! - `C source`                       → the journal cursor a journal source read up to
//!
//! Integers are big-endian (hours with the sign bit flipped) so keys sort by
//! account, then hour, then part, then block: a part's lines come back in the
//! order they were made durable.

use crate::account::AccountId;
use crate::hour::Hour;

pub const BLOCK: u8 = b'B';
pub const PART: u8 = b'P';
pub const META: u8 = b'M';
pub const QUARANTINE: u8 = b'Q';
pub const POSITION: u8 = b'S';
pub const CURSOR: u8 = b'C';

/// One part: the lines of an (account, UTC hour) that share a part number.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PartId {
    pub account: AccountId,
    pub hour: Hour,
    pub seq: u32,
}

impl PartId {
    /// The order parts go in: oldest hour first, then by account and part number.
    pub fn oldest_first(a: &PartId, b: &PartId) -> std::cmp::Ordering {
        (a.hour, &a.account, a.seq).cmp(&(b.hour, &b.account, b.seq))
    }
}

impl std::fmt::Display for PartId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/part {}", self.account, self.hour, self.seq)
    }
}

fn hour_bytes(hour: Hour) -> [u8; 8] {
    ((hour.0 as u64) ^ (1 << 63)).to_be_bytes()
}

fn account_hour(tag: u8, account: &AccountId, hour: Hour) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + account.as_str().len() + 1 + 8 + 4 + 8);
    k.push(tag);
    k.extend_from_slice(account.as_str().as_bytes());
    k.push(0);
    k.extend_from_slice(&hour_bytes(hour));
    k
}

/// Prefix of every part record of an account's hour.
pub fn parts_of_hour(account: &AccountId, hour: Hour) -> Vec<u8> {
    account_hour(PART, account, hour)
}

pub fn part(id: &PartId) -> Vec<u8> {
    let mut k = account_hour(PART, &id.account, id.hour);
    k.extend_from_slice(&id.seq.to_be_bytes());
    k
}

pub fn blocks_of(id: &PartId) -> Vec<u8> {
    let mut k = account_hour(BLOCK, &id.account, id.hour);
    k.extend_from_slice(&id.seq.to_be_bytes());
    k
}

pub fn block(id: &PartId, first_line_seq: u64) -> Vec<u8> {
    let mut k = blocks_of(id);
    k.extend_from_slice(&first_line_seq.to_be_bytes());
    k
}

pub fn meta(name: &str) -> Vec<u8> {
    let mut k = vec![META];
    k.extend_from_slice(name.as_bytes());
    k
}

/// Prefix of every file position of a file source.
pub fn positions_of(source: &str) -> Vec<u8> {
    let mut k = vec![POSITION];
    k.extend_from_slice(source.as_bytes());
    k.push(0);
    k
}

/// Where the journal source `source` keeps its cursor.
pub fn cursor_of(source: &str) -> Vec<u8> {
    let mut k = vec![CURSOR];
    k.extend_from_slice(source.as_bytes());
    k
}

pub fn quarantine(original: &[u8]) -> Vec<u8> {
    let mut k = vec![QUARANTINE];
    k.extend_from_slice(original);
    k
}

/// The first line number a block key of part `id` names ([`block`] read back).
pub fn block_first_line(id: &PartId, key: &[u8]) -> Option<u64> {
    let suffix = key.strip_prefix(blocks_of(id).as_slice())?;
    Some(u64::from_be_bytes(suffix.try_into().ok()?))
}

/// Reads a `P` or `B` key back into the part it belongs to.
pub fn parse_part(key: &[u8]) -> Option<PartId> {
    let body = key.get(1..)?;
    let nul = body.iter().position(|&b| b == 0)?;
    let account = AccountId::parse(std::str::from_utf8(&body[..nul]).ok()?).ok()?;
    let rest = &body[nul + 1..];
    let hour = u64::from_be_bytes(rest.get(..8)?.try_into().ok()?) ^ (1 << 63);
    let seq = u32::from_be_bytes(rest.get(8..12)?.try_into().ok()?);
    Some(PartId {
        account,
        hour: Hour(hour as i64),
        seq,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(acct: &str, hour: i64, seq: u32) -> PartId {
        PartId {
            account: AccountId::parse(acct).unwrap(),
            hour: Hour(hour),
            seq,
        }
    }

    #[test]
    fn keys_parse_back() {
        for p in [id("a", 0, 0), id("acme", -5, 3), id("z_9-", 493_000, 77)] {
            assert_eq!(parse_part(&part(&p)), Some(p.clone()));
            assert_eq!(parse_part(&block(&p, 12)), Some(p));
        }
    }

    #[test]
    fn keys_sort_by_account_hour_part_block() {
        let mut keys = [
            block(&id("b", 1, 0), 0),
            block(&id("a", 2, 0), 0),
            block(&id("a", -1, 0), 9),
            block(&id("a", 1, 1), 0),
            block(&id("a", 1, 0), 300),
            block(&id("a", 1, 0), 2),
        ];
        keys.sort();
        let order: Vec<_> = keys
            .iter()
            .map(|k| {
                let p = parse_part(k).unwrap();
                (p.account.to_string(), p.hour.0, p.seq, k[k.len() - 1])
            })
            .collect();
        assert_eq!(
            order,
            vec![
                ("a".into(), -1, 0, 9),
                ("a".into(), 1, 0, 2),
                ("a".into(), 1, 0, 44),
                ("a".into(), 1, 1, 0),
                ("a".into(), 2, 0, 0),
                ("b".into(), 1, 0, 0),
            ]
        );
    }

    #[test]
    fn an_account_is_not_a_prefix_of_another() {
        // "a" must not select the parts of "ab".
        let a = parts_of_hour(&AccountId::parse("a").unwrap(), Hour(1));
        assert!(!part(&id("ab", 1, 0)).starts_with(&a));
    }
}
