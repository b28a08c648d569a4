//! Sending lines with known texts, and checking archive objects as the stores
//! report them (JSON from `scripts/*_inspect.py`).

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::{hours_ago, Daemon};

/// Sends `n` lines for `key` into the hour `hours` ago; returns their texts.
pub fn send(d: &Daemon, key: &str, hours: i64, tag: &str, n: usize) -> Vec<String> {
    let texts: Vec<String> = (0..n).map(|i| format!("{tag} line {i}")).collect();
    let lines: Vec<Value> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| json!({"timestamp": hours_ago(hours, 1000 + i as i64), "line": t}))
        .collect();
    let (status, body) = d.ingest_json(key, &json!({ "lines": lines }));
    assert_eq!(status, 200, "{body}");
    texts
}

/// The object name (without `.json.gz`) of `account`'s hour `hours` ago, under `prefix`.
pub fn name_of(prefix: &str, account: &str, hours: i64) -> String {
    let t = chrono::DateTime::from_timestamp_millis(hours_ago(hours, 0)).unwrap();
    format!(
        "{prefix}{}/{account}.{}",
        t.format("year=%Y/month=%m/day=%d"),
        t.format("%Y-%m-%d.%H00")
    )
}

/// Every archived `_line`, with how often it was archived.
pub fn archived_lines(objects: &[Value]) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for o in objects {
        let lines = o["lines"]
            .as_array()
            .unwrap_or_else(|| panic!("{} is not gzip NDJSON", o["key"]));
        for l in lines {
            *seen
                .entry(l["_line"].as_str().unwrap().to_owned())
                .or_insert(0) += 1;
        }
    }
    seen
}

pub fn keys(objects: &[Value]) -> Vec<String> {
    let mut k: Vec<String> = objects
        .iter()
        .map(|o| o["key"].as_str().unwrap().to_owned())
        .filter(|k| !k.contains(".larch-"))
        .collect();
    k.sort();
    k
}

/// Every text in `sent` is archived exactly once, and nothing else is.
pub fn assert_exactly_once(objects: &[Value], sent: &[String]) {
    let archived = archived_lines(objects);
    let twice: Vec<_> = archived.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "archived more than once: {twice:?}");
    for t in sent {
        assert!(archived.contains_key(t), "{t} lost");
    }
    assert_eq!(
        archived.len(),
        sent.len(),
        "lines nobody sent were archived"
    );
}

/// The archive objects among `objects`, without larch's temporary ones.
pub fn archive_only(objects: Vec<Value>) -> Vec<Value> {
    objects
        .into_iter()
        .filter(|o| !o["key"].as_str().unwrap().contains(".larch-"))
        .collect()
}
