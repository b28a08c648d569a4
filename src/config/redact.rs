//! What of the configuration may be shown. Ingestion keys (the names in
//! `[keys]`) and the secret options of the store tables (`[s3]`, `[gcs]`,
//! `[azure]`: secret access keys, session and SAS tokens, account keys,
//! service account keys, client secrets) never appear in `larch config` or in
//! an error: a config error names the line and column and the problem, never
//! the text of the line, and drops from the problem whatever it quotes that
//! could be a secret.

use super::file::STORE_SECTIONS;
use crate::store::spec::{is_secret_option, REDACTED};

/// Sections whose keys or values are secrets: ingestion keys, store options.
fn is_secret_section(section: &str) -> bool {
    section == "keys" || STORE_SECTIONS.contains(&section)
}

/// Stands where a quoted part of an error message was left out.
const LEFT_OUT: &str = "…";

/// The store tables of `table` with their secret options' values replaced by
/// [`REDACTED`]. (`[keys]` is for the caller to summarise.)
pub fn redact_store_secrets(table: &mut toml::Table) {
    for section in STORE_SECTIONS {
        let Some(toml::Value::Table(options)) = table.get_mut(*section) else {
            continue;
        };
        for (name, value) in options.iter_mut() {
            let text = match &*value {
                toml::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            if is_secret_option(name, &text) {
                *value = toml::Value::String(REDACTED.into());
            }
        }
    }
}

/// A TOML error in the file `text`, as `line L, column C: problem`. The
/// problem keeps what it quotes only where that cannot be a secret.
pub fn parse_error(text: &str, error: &toml::de::Error) -> String {
    let Some(span) = error.span() else {
        return safe_message(error.message(), false);
    };
    let before = &text.as_bytes()[..span.start.min(text.len())];
    let line = before.iter().filter(|b| **b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |at| at + 1);
    let column = String::from_utf8_lossy(&before[line_start..])
        .chars()
        .count()
        + 1;
    let secret = section_at(text, line).is_some_and(|s| is_secret_section(&s));
    format!(
        "line {line}, column {column}: {}",
        safe_message(error.message(), secret)
    )
}

/// Merges an error's lines into one and leaves out what it quotes (between
/// backticks or double quotes) that may be a secret: everything in a secret
/// section, else whatever does not read like a setting's name. Quoted
/// punctuation (`expected '"'`) stays.
pub fn safe_message(message: &str, secret_section: bool) -> String {
    let message = message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    let mut out = String::with_capacity(message.len());
    let mut rest = message.as_str();
    while let Some(open) = rest.find(['`', '"']) {
        let quote = rest[open..].chars().next().unwrap_or('`');
        let after = &rest[open + 1..];
        let Some(close) = after.find(quote) else {
            break;
        };
        let quoted = &after[..close];
        out.push_str(&rest[..open]);
        let harmless = !quoted.chars().any(char::is_alphanumeric);
        // Outside the secret sections only a name can be a secret put in the
        // wrong place (`unknown field`); values there are no secrets.
        let shown = harmless
            || (!secret_section
                && (quote == '"' || reads_like_a_name(quoted) || is_number(quoted)));
        if shown {
            out.push(quote);
            out.push_str(quoted);
            out.push(quote);
        } else {
            out.push_str(LEFT_OUT);
        }
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    out
}

/// A setting's or section's name (`late_windw`, `s3`), not a key someone put in the wrong place.
fn reads_like_a_name(text: &str) -> bool {
    text == "s3"
        || (!text.is_empty()
            && text.len() <= 40
            && text.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
}

fn is_number(text: &str) -> bool {
    text.parse::<f64>().is_ok()
}

/// The top-level section that line `line` (from 1) of `text` belongs to: the
/// last table header at or before it, or the first key of the line itself
/// when it is one of the secret sections given inline (`s3 = { … }`).
fn section_at(text: &str, line: usize) -> Option<String> {
    let lines: Vec<&str> = text.lines().take(line).collect();
    let first_key = |l: &str| -> String {
        l.split(['.', '=', '[', ']'])
            .map(|k| k.trim().trim_matches(['"', '\'']).to_owned())
            .find(|k| !k.is_empty())
            .unwrap_or_default()
    };
    if let Some(this) = lines.last() {
        let key = first_key(this);
        if !this.trim_start().starts_with('[') && is_secret_section(&key) {
            return Some(key);
        }
    }
    lines
        .iter()
        .rev()
        .find(|l| l.trim_start().starts_with('['))
        .map(|header| first_key(header))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_of(text: &str) -> String {
        let e = toml::from_str::<crate::config::FileConfig>(text).unwrap_err();
        parse_error(text, &e)
    }

    #[test]
    fn errors_name_line_and_column_but_quote_no_secret() {
        let e = error_of("[spool]\n\nlate_windw = \"1h\"\n");
        assert!(
            e.starts_with("line 3, column 1: unknown field `late_windw`, expected one of `dir`"),
            "{e}"
        );
        let e = error_of("[target]\nretry_max_delay = \"soon\"\n");
        assert!(
            e.contains("line 2") && e.contains("\"soon\" is not a duration"),
            "{e}"
        );

        let e = error_of("[s3]\nsecret_access_key = hunter2hunter2\n");
        assert!(e.starts_with("line 2, column 21: "), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        let e = error_of("[keys]\n\"Sk-Live-1\" = \"a\"\n\"Sk-Live-1\" = \"b\"\n");
        assert!(e.starts_with("line 3, column 1: duplicate key …"), "{e}");
        let e = error_of("[spool]\nlate_window = 12\n");
        assert!(e.contains("invalid type: integer `12`"), "{e}");
        let e = error_of("[keys]\nkeyname = 7\n");
        assert!(e.starts_with("line 2") && !e.contains("keyname"), "{e}");
        // A key that lost its [keys] header is not echoed as an unknown field.
        let e = error_of("[spool]\n\"Sk-Live-1\" = \"acme\"\n");
        assert!(e.contains("unknown field …, expected one of `dir`"), "{e}");
        let e = error_of("azure = { access_key = \"c2VjcmV0\" x }\n");
        assert!(e.starts_with("line 1") && !e.contains("c2VjcmV0"), "{e}");
    }

    #[test]
    fn store_secrets_are_redacted_and_the_rest_shown() {
        let mut table: toml::Table = toml::from_str(
            "[s3]\nregion = \"eu-west-1\"\nsecret_access_key = \"s\"\n\
             [azure]\nsas_token = \"t\"\naccount_name = \"a\"\n[spool]\ndir = \"d\"\n",
        )
        .unwrap();
        redact_store_secrets(&mut table);
        assert_eq!(table["s3"]["region"].as_str(), Some("eu-west-1"));
        assert_eq!(table["s3"]["secret_access_key"].as_str(), Some(REDACTED));
        assert_eq!(table["azure"]["sas_token"].as_str(), Some(REDACTED));
        assert_eq!(table["azure"]["account_name"].as_str(), Some("a"));
        assert_eq!(table["spool"]["dir"].as_str(), Some("d"));
    }
}
