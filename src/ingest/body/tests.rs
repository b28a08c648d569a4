//! The ingest parser against the limits table and the timestamp rules.

use super::parse_freely as parse;
use super::*;
use serde_json::{json, Value};

const NOW: EpochMs = 1_764_140_245_123;

fn ctx() -> RequestContext {
    RequestContext {
        received: NOW,
        max_skew_ms: 300_000,
        ..RequestContext::default()
    }
}

fn parse_json(v: Value) -> Result<Vec<Line>, Rejection> {
    parse(v.to_string().as_bytes(), &ctx())
}

fn malformed(r: Result<Vec<Line>, Rejection>) -> String {
    match r {
        Err(Rejection::Malformed(e)) => e.join("; "),
        other => panic!("expected 400, got {other:?}"),
    }
}

#[test]
fn lines_and_ls_are_both_accepted() {
    let a = parse_json(json!({"lines":[{"line":"x","app":"nginx"}]})).unwrap();
    let b = parse_json(json!({"e":"ls","ls":[{"line":"x","app":"nginx"}]})).unwrap();
    assert_eq!(a, b);
    assert_eq!(a[0].app(), Some("nginx"));
    assert_eq!(a[0].ts, NOW);
}

#[test]
fn missing_line_and_bad_json_are_400() {
    assert!(
        malformed(parse_json(json!({"lines":[{"line":"ok"},{"app":"a"}]})))
            .contains("lines[1]: \"line\" is missing")
    );
    assert!(malformed(parse(b"{not json", &ctx())).contains("not valid JSON"));
    assert!(malformed(parse_json(json!({"other":1}))).contains("no \"lines\""));
}

#[test]
fn field_limits_are_enforced() {
    let long = |n| "h".repeat(n);
    assert!(parse_json(
        json!({"lines":[{"line":"x","hostname":long(256),"app":long(512),"level":long(80)}]})
    )
    .is_ok());
    assert!(malformed(parse_json(
        json!({"lines":[{"line":"x","hostname":long(257)}]})
    ))
    .contains("hostname"));
    assert!(malformed(parse_json(json!({"lines":[{"line":"x","app":long(513)}]}))).contains("app"));
    assert!(
        malformed(parse_json(json!({"lines":[{"line":"x","level":long(81)}]}))).contains("level")
    );
    let mut c = ctx();
    c.tags = vec!["ok".into(), long(81)];
    assert!(
        matches!(parse(br#"{"lines":[{"line":"x"}]}"#, &c), Err(Rejection::Malformed(e)) if e[0].contains("tag"))
    );
}

#[test]
fn request_fields_are_checked_and_named() {
    let body = br#"{"lines":[{"line":"x"}]}"#;
    let with = |f: &dyn Fn(&mut RequestContext)| {
        let mut c = ctx();
        f(&mut c);
        parse(body, &c)
    };
    for ip in ["10.1.2.3", "::1", "fe80::1"] {
        assert!(with(&|c| c.ip = Some(ip.into())).is_ok(), "{ip}");
    }
    assert!(malformed(with(&|c| c.ip = Some("10.1.2".into()))).contains("ip parameter"));
    for mac in ["00:1a:2b:3c:4d:5e", "00-1A-2B-3C-4D-5E", "001a.2b3c.4d5e"] {
        assert!(with(&|c| c.mac = Some(mac.into())).is_ok(), "{mac}");
    }
    assert!(malformed(with(&|c| c.mac = Some("00:1a:2b".into()))).contains("mac parameter"));
    let many: Vec<String> = (0..=MAX_TAGS).map(|i| i.to_string()).collect();
    assert!(malformed(with(&|c| c.tags = many.clone())).contains("33 tags"));
    let long = |n| "f".repeat(n);
    assert!(
        parse_json(json!({"lines":[{"line":"x","file":long(MAX_FILE),"env":long(MAX_ENV)}]}))
            .is_ok()
    );
    assert!(malformed(parse_json(
        json!({"lines":[{"line":"x","file":long(MAX_FILE + 1)}]})
    ))
    .contains("file"));
    assert!(malformed(parse_json(
        json!({"lines":[{"line":"x","env":long(MAX_ENV + 1)}]})
    ))
    .contains("env"));
    assert!(malformed(parse_json(
        json!({"lines":[{"line":"x","label":{"k":long(MAX_LABEL)}}]})
    ))
    .contains("label"));
}

#[test]
fn lines_of_a_request_share_one_origin() {
    let mut c = ctx();
    c.tags = vec!["a".into(), "b".into()];
    c.hostname = Some("edge-3".into());
    let lines = parse(
        br#"{"lines":[{"line":"x"},{"line":"y","hostname":"own"},{"line":"z"}]}"#,
        &c,
    )
    .unwrap();
    assert!(Arc::ptr_eq(&lines[0].origin, &lines[2].origin));
    assert_eq!(lines[0].origin.tags, ["a", "b"]);
    assert_eq!(lines[0].host(), Some("edge-3"));
    assert_eq!(lines[1].host(), Some("own"));
    assert_eq!(lines[1].origin.tags, ["a", "b"], "the query's fields stay");
    assert!(
        lines.iter().all(|l| l.own.is_none()),
        "a line's host, app, file and level go to a shared origin"
    );
}

#[test]
fn lines_giving_the_same_app_share_an_origin_up_to_a_limit() {
    let mut lines = Vec::new();
    for i in 0..40 {
        // Two apps in turn, then a new one per line.
        let app = if i < 20 {
            format!("app{}", i % 2)
        } else {
            format!("new{i}")
        };
        lines.push(json!({"line": "x", "app": app, "level": "info"}));
    }
    let lines = parse_json(json!({ "lines": lines })).unwrap();
    assert!(Arc::ptr_eq(&lines[0].origin, &lines[18].origin));
    assert!(Arc::ptr_eq(&lines[1].origin, &lines[19].origin));
    assert!(!Arc::ptr_eq(&lines[0].origin, &lines[1].origin));
    for (i, line) in lines.iter().enumerate() {
        let app = if i < 20 {
            format!("app{}", i % 2)
        } else {
            format!("new{i}")
        };
        assert_eq!(line.app(), Some(app.as_str()), "line {i}");
        assert_eq!(line.level(), Some("info"));
    }
    // Past the limit a line keeps its fields itself, with the query's origin.
    let last = &lines[39];
    assert_eq!(
        last.own.as_deref().and_then(|o| o.app.as_deref()),
        Some("new39")
    );
    assert!(last.origin.app.is_none());
}

#[test]
fn lines_wins_over_ls_and_other_keys_are_skipped() {
    let l = parse(
        br#"{"e":"ls","ls":[{"line":"from ls"}],"lines":[{"line":"from lines"}],"x":{"y":[1]}}"#,
        &ctx(),
    )
    .unwrap();
    assert_eq!(l.len(), 1);
    assert_eq!(l[0].line, "from lines");
}

#[test]
fn deep_meta_and_broken_text_are_refused() {
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let body = format!(r#"{{"lines":[{{"line":"x","meta":{deep}}}]}}"#);
    assert!(malformed(parse(body.as_bytes(), &ctx())).contains("meta nests deeper than 128"));
    let label = format!(r#"{{"lines":[{{"line":"x","label":{{"a":{deep}}}}}]}}"#);
    assert!(malformed(parse(label.as_bytes(), &ctx())).contains("label nests deeper"));
    // Within the limit, and white space gone as if serialized again.
    let fine = r#"{"lines":[{"line":"x","meta":{ "a" : [1, 2.50, "s p\"ace"] }}]}"#;
    assert_eq!(
        parse(fine.as_bytes(), &ctx()).unwrap()[0].meta_json(),
        Some(r#"{"a":[1,2.50,"s p\"ace"]}"#)
    );
    let mut bad = br#"{"lines":[{"line":"x"#.to_vec();
    bad.extend_from_slice(&[0xff, 0xfe]);
    bad.extend_from_slice(br#""}]}"#);
    assert!(malformed(parse(&bad, &ctx())).contains("not valid JSON"));
}

#[test]
fn lines_are_charged_as_they_are_read_and_stop_when_refused() {
    let body = |line: &str| {
        let mut body = String::from(r#"{"lines":["#);
        for _ in 0..100_000 {
            body.push_str(line);
            body.push(',');
        }
        body.pop();
        body.push_str("]}");
        body
    };
    let shortest = body(r#"{"line":"x"}"#);
    let mut asked = Vec::new();
    let lines = super::parse(&Bytes::from(shortest.clone()), &ctx(), &mut |held| {
        asked.push(held);
        Ok(())
    })
    .unwrap()
    .lines;
    // Sized for longer lines, the vector doubles as these come, and is charged so.
    assert!(lines.capacity() < 2 * lines.len(), "{}", lines.capacity());
    let last = *asked.last().unwrap();
    let real = lines.capacity() * std::mem::size_of::<Line>()
        + lines.iter().map(Line::heap_size).sum::<usize>();
    assert_eq!(last, real, "the last charge is what the lines hold");
    assert!(
        asked.len() > 20,
        "charged as they are read: {}",
        asked.len()
    );
    assert!(asked.windows(2).all(|w| w[0] <= w[1]));
    assert!(
        last <= shortest.len() * crate::ingest::budget::PARSED_PER_BYTE,
        "{last} bytes held for a body of {}",
        shortest.len()
    );
    // Lines with fields of their own hold more, and are charged so.
    let with_fields = body(r#"{"line":"x","env":"y"}"#);
    let mut most = 0;
    let _ = super::parse(&Bytes::from(with_fields.clone()), &ctx(), &mut |held| {
        most = most.max(held);
        Ok(())
    });
    assert!(most > with_fields.len() * crate::ingest::budget::PARSED_PER_BYTE);
    // No room: reading stops at once, and says why.
    let mut calls = 0;
    let refused = super::parse(&Bytes::from(shortest), &ctx(), &mut |_| {
        calls += 1;
        if calls > 2 {
            Err(Rejection::Busy)
        } else {
            Ok(())
        }
    });
    assert_eq!(refused.err(), Some(Rejection::Busy));
    assert_eq!(calls, 3);
}

#[test]
fn texts_are_slices_of_the_body_or_of_one_buffer_of_unescaped_texts() {
    let json = Bytes::from(
        r#"{"lines":[{"line":"plain"},{"line":"say \"hi\""},{"line":"\u00e9t\u00e9"},{"line":""},{"line":"été"}]}"#,
    );
    let parsed = super::parse(&json, &ctx(), &mut |_| Ok(())).unwrap();
    let texts: Vec<&str> = parsed.lines.iter().map(|l| &*l.line).collect();
    assert_eq!(texts, ["plain", "say \"hi\"", "été", "", "été"]);
    assert!(parsed.borrows_body);
    let in_body = |i: usize| json.as_ptr_range().contains(&parsed.lines[i].line.as_ptr());
    assert!(
        in_body(0) && in_body(4),
        "texts without escapes are the body's"
    );
    assert!(!in_body(1) && !in_body(2), "unescaped texts are copies");
    // Both copies lie in one buffer, one after the other.
    let (first, second) = (&parsed.lines[1].line, &parsed.lines[2].line);
    assert_eq!(first.as_ptr().wrapping_add(first.len()), second.as_ptr());
}

#[test]
fn a_body_that_is_not_utf8_is_read_as_bytes() {
    // serde_json checks only the strings it reads; one it skips may hold anything.
    let mut json = br#"{"skipped":""#.to_vec();
    json.push(0xff);
    json.extend_from_slice(br#"","lines":[{"line":"plain"},{"line":"say \"hi\""}]}"#);
    let lines = parse(&json, &ctx()).unwrap();
    assert_eq!(lines[0].line, "plain");
    assert_eq!(lines[1].line, "say \"hi\"");
}

#[test]
fn meta_over_32k_is_400_and_under_is_kept() {
    let big = "m".repeat(40 * 1024);
    assert!(
        malformed(parse_json(json!({"lines":[{"line":"x","meta":{"k":big}}]}))).contains("meta")
    );
    let ok = parse_json(json!({"lines":[{"line":"x","meta":{"status":200}}]})).unwrap();
    assert_eq!(ok[0].meta_json(), Some(r#"{"status":200}"#));
}

#[test]
fn meta_as_a_json_string_becomes_an_object() {
    let l = parse_json(
        json!({"lines":[{"line":"x","meta":"{\"a\":1,\"b\":[2]}"},{"line":"y","meta":"plain"}]}),
    )
    .unwrap();
    assert_eq!(l[0].meta_json(), Some(r#"{"a":1,"b":[2]}"#));
    assert_eq!(l[1].meta_json(), Some(r#""plain""#));
}

#[test]
fn long_lines_are_cut_at_a_char_boundary() {
    let text = format!("{}é tail", "a".repeat(MAX_LINE - 1));
    let l = parse_json(json!({"lines":[{"line":text}]})).unwrap();
    assert!(l[0].truncated);
    assert_eq!(l[0].line.len(), MAX_LINE - 1);
    let exact = parse_json(json!({"lines":[{"line":"a".repeat(MAX_LINE)}]})).unwrap();
    assert!(!exact[0].truncated);
}

#[test]
fn escaped_texts_cut_at_the_limit_or_refused_leave_their_neighbours_whole() {
    // Cut and refused texts sit in the same buffer as the next line's: what
    // they give back must not take any of it.
    let long = format!("\"{}é tail", "a".repeat(MAX_LINE - 2));
    let body = json!({"lines":[
        {"line":"before \"a\""},
        {"line":long},
        {"line":"refused \"b\"","timestamp":true},
        {"line":"after \"c\""},
    ]});
    let refused = malformed(parse_json(body));
    assert!(
        refused.contains("lines[2]") && !refused.contains("lines[1]"),
        "{refused}"
    );
    let body = json!({"lines":[
        {"line":"before \"a\""},
        {"line":long},
        {"line":"after \"c\""},
    ]});
    let lines = parse_json(body).unwrap();
    assert_eq!(lines[0].line, "before \"a\"");
    assert!(lines[1].truncated);
    assert_eq!(lines[1].line.len(), MAX_LINE - 1, "cut before the 'é'");
    assert!(lines[1].line.starts_with("\"aaa") && lines[1].line.ends_with('a'));
    assert_eq!(lines[2].line, "after \"c\"");
}

#[test]
fn escaped_texts_across_many_chunks_each_keep_their_own_bytes() {
    // Enough escaped text for several chunks, a text longer than a chunk
    // among them, and refused lines between.
    let mut lines = Vec::new();
    let mut expected = Vec::new();
    for i in 0..2000 {
        let text = if i == 700 {
            format!("\"{}\"", "é".repeat(50_000))
        } else {
            format!("line {i} said \"{}\"", "x".repeat(i % 300))
        };
        if i % 97 == 5 {
            lines.push(json!({"line": text, "timestamp": "later"}));
        } else {
            expected.push(text.clone());
            lines.push(json!({"line": text}));
        }
    }
    let refused = malformed(parse_json(json!({ "lines": lines })));
    assert!(refused.contains("lines[5]"), "{refused}");
    lines.retain(|l| l.get("timestamp").is_none());
    let parsed = parse_json(json!({ "lines": lines })).unwrap();
    assert_eq!(parsed.len(), expected.len());
    for (line, text) in parsed.iter().zip(&expected) {
        let want = crate::line::cut_to(text, MAX_LINE);
        assert_eq!(&*line.line, want);
        assert_eq!(line.truncated, want.len() < text.len());
    }
}

#[test]
fn a_line_object_giving_a_field_twice_is_refused() {
    for body in [
        r#"{"lines":[{"line":"a","line":"b"}]}"#,
        r#"{"lines":[{"line":"a","app":"x","app":"y"}]}"#,
        // A null is a value given, as serde's derive counts it.
        r#"{"lines":[{"line":null,"line":"b"}]}"#,
        r#"{"lines":[{"line":"a","timestamp":null,"timestamp":5}]}"#,
    ] {
        let e = malformed(parse(body.as_bytes(), &ctx()));
        assert!(e.contains("duplicate field"), "{e}");
    }
    // Keys larch does not read may repeat, as any JSON object's may.
    assert!(parse(br#"{"lines":[{"line":"a","x":1,"x":2}]}"#, &ctx()).is_ok());
}

#[test]
fn client_clocks_in_seconds_or_milliseconds() {
    assert_eq!(epoch_ms_by_magnitude(1_764_140_245.0), 1_764_140_245_000);
    assert_eq!(
        epoch_ms_by_magnitude(1_764_140_245_123.0),
        1_764_140_245_123
    );
    assert_eq!(epoch_ms_by_magnitude(1_764_140_245.5), 1_764_140_245_500);
}

#[test]
fn timestamps_seconds_drift_and_skew() {
    let ts = |v: Value, c: &RequestContext| {
        parse(
            json!({"lines":[{"line":"x","timestamp":v}]})
                .to_string()
                .as_bytes(),
            c,
        )
        .unwrap()[0]
            .ts
    };
    let c = ctx();
    assert_eq!(ts(json!(NOW - 5000), &c), NOW - 5000);
    assert_eq!(
        ts(json!((NOW - 5000) / 1000), &c),
        (NOW - 5000) / 1000 * 1000
    );
    // Ahead of the allowed skew: not believed.
    assert_eq!(ts(json!(NOW + 3_600_000), &c), NOW);
    // The client's clock is 10 s slow: its timestamps move forward 10 s.
    let mut drift = ctx();
    drift.client_now = Some(NOW - 10_000);
    assert_eq!(ts(json!(NOW - 60_000), &drift), NOW - 50_000);
    // A number in a string, in seconds or with a fraction, is read as one.
    assert_eq!(ts(json!(format!(" {} ", NOW - 5000)), &c), NOW - 5000);
    assert_eq!(ts(json!((NOW - 5000) as f64 / 1000.0), &c), NOW - 5000);
    assert_eq!(ts(json!(null), &c), NOW);
    // Anything else is the line's problem, named; nested values included.
    for bad in [
        json!("soon"),
        json!(true),
        json!([NOW]),
        json!({"ms": NOW}),
        json!("NaN"),
    ] {
        let refused = malformed(parse_json(
            json!({"lines":[{"line":"x"},{"line":"y","timestamp":bad}]}),
        ));
        assert!(
            refused.contains("lines[1]: \"timestamp\" must be epoch milliseconds"),
            "{bad}: {refused}"
        );
    }
}

#[test]
fn gzip_bodies_are_checked() {
    assert!(matches!(
        gunzip(b"plain text"),
        Err(Rejection::Malformed(_))
    ));
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &vec![b' '; MAX_BODY + 10]).unwrap();
    let bomb = gz.finish().unwrap();
    assert!(matches!(gunzip(&bomb), Err(Rejection::TooLarge(_))));
    let text = vec![b'x'; 3 << 20];
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &text).unwrap();
    let body = gz.finish().unwrap();
    assert_eq!(Gunzip::said_size(&body), text.len());
    assert_eq!(gunzip(&body).unwrap(), text, "read in steps, whole");
}

#[test]
fn gunzipped_text_holds_no_room_beyond_itself() {
    // Lines keep slices of the text until they are stored, and the budget
    // counts its length then: the 1 MiB step it was read into must go.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, br#"{"lines":[{"line":"x"}]}"#).unwrap();
    let text = gunzip(&gz.finish().unwrap()).unwrap();
    assert_eq!(text.capacity(), text.len());
}

#[test]
fn an_absurd_client_clock_is_ignored() {
    for client_now in [i64::MIN, -1, MAX_TS, i64::MAX] {
        let c = RequestContext {
            client_now: Some(client_now),
            ..ctx()
        };
        let lines = parse(br#"{"lines":[{"line":"x","timestamp":1764140000000}]}"#, &c).unwrap();
        assert_eq!(lines[0].ts, 1_764_140_000_000, "now={client_now}");
    }
}
