//! Fuzzing the ingest parser (`fuzz_` tests also run in a debug build, with
//! overflow checks; `PROPTEST_CASES` sets how many inputs each tries).

use super::parse_freely as parse;
use super::*;
use proptest::prelude::*;
use serde_json::{json, Value};

const NOW: EpochMs = 1_764_140_245_123;

/// What every accepted line must satisfy, whatever came in.
fn check(lines: &[Line], ctx: &RequestContext) {
    for l in lines {
        assert!(l.line.len() <= MAX_LINE, "line of {} bytes", l.line.len());
        assert!((0..MAX_TS).contains(&l.ts), "ts {}", l.ts);
        assert!(
            l.ts <= ctx
                .received
                .saturating_add(ctx.max_skew_ms)
                .max(ctx.received),
            "ts {} ahead of the allowed skew",
            l.ts
        );
        assert!(l.meta_json().is_none_or(|m| m.len() <= MAX_META));
        assert!(l.app().is_none_or(|a| a.chars().count() <= MAX_APP));
    }
}

fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        prop_oneof![
            Just(1e300),
            Just(-1e300),
            Just(1.5e11),
            Just(9.99e14),
            Just(2.6e14)
        ]
        .prop_map(|f| json!(f)),
        ".{0,40}".prop_map(Value::from),
        "[0-9]{1,20}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map(".{0,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A line object whose known fields hold anything at all.
fn any_line() -> impl Strategy<Value = Value> {
    const FIELDS: [&str; 9] = [
        "line",
        "timestamp",
        "app",
        "level",
        "file",
        "env",
        "hostname",
        "meta",
        "label",
    ];
    prop::collection::vec((prop::sample::select(&FIELDS[..]), any_json()), 0..8).prop_map(|pairs| {
        Value::Object(pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
    })
}

fn any_ctx() -> impl Strategy<Value = RequestContext> {
    (
        prop::option::of(prop_oneof![
            any::<i64>(),
            Just(i64::MIN),
            Just(i64::MAX),
            0..MAX_TS
        ]),
        prop::option::of(".{0,300}"),
        prop::collection::vec(".{0,90}", 0..3),
        0..MAX_TS,
        prop_oneof![Just(0i64), Just(300_000), any::<i64>()],
    )
        .prop_map(
            |(client_now, hostname, tags, received, max_skew_ms)| RequestContext {
                hostname,
                client_now,
                tags,
                received,
                max_skew_ms,
                ..RequestContext::default()
            },
        )
}

proptest! {
    #[test]
    fn fuzz_ingest_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512), gzip: bool) {
        let ctx = RequestContext { received: NOW, max_skew_ms: 300_000, ..RequestContext::default() };
        let json = if gzip { gunzip(&bytes) } else { Ok(bytes) };
        if let Ok(json) = json {
            if let Ok(lines) = parse(&json, &ctx) {
                check(&lines, &ctx);
            }
        }
    }

    #[test]
    fn fuzz_ingest_bodies_give_valid_lines_or_a_named_error(
        lines in prop::collection::vec(any_line(), 0..6),
        ls: bool,
        ctx in any_ctx(),
    ) {
        let body = if ls { json!({"e": "ls", "ls": lines}) } else { json!({"lines": lines}) };
        match parse(body.to_string().as_bytes(), &ctx) {
            Ok(lines) => check(&lines, &ctx),
            Err(Rejection::Malformed(errors)) => {
                prop_assert!(!errors.is_empty() && errors.len() <= MAX_ERRORS);
                prop_assert!(errors.iter().all(|e| !e.is_empty()));
            }
            Err(Rejection::TooLarge(_) | Rejection::Busy) => {}
        }
    }
}
