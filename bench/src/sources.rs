//! Load for the sources besides the Mezmo API, the figures beside the HTTP
//! ones in `scripts/bench.sh`:
//!
//! - `syslog`: connections sending octet-counted RFC 5424 messages over TCP as
//!   fast as they go, as rsyslog forwards them (syslog has no acknowledgement:
//!   the script counts what larch stored);
//! - `journal-export`: entries in the journal export format, for
//!   `systemd-journal-remote` to write the journal larch then reads;
//! - OTLP bodies for `load --otlp`: one `ExportLogsServiceRequest` in protobuf.

use std::io::{BufWriter, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use serde_json::json;

#[derive(clap::Args)]
pub struct SyslogPlan {
    /// A larch TCP syslog listener.
    #[arg(long)]
    to: SocketAddr,
    #[arg(long, default_value_t = 4)]
    connections: usize,
    #[arg(long, default_value = "10s")]
    duration: humantime::Duration,
    #[arg(long, default_value_t = 300)]
    line_bytes: usize,
}

/// Sends for the plan's duration; prints how many messages went out.
pub fn syslog(plan: SyslogPlan) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    for c in 0..plan.connections {
        let (stop, sent) = (stop.clone(), sent.clone());
        let (to, line_bytes) = (plan.to, plan.line_bytes);
        threads.push(std::thread::spawn(move || -> std::io::Result<()> {
            let mut out = BufWriter::with_capacity(256 * 1024, TcpStream::connect(to)?);
            // Messages are made before the clock starts, then cycled.
            let frames: Vec<Vec<u8>> = (0..1000u64)
                .map(|i| {
                    let text = crate::log_line(c as u64 * 1_000_000 + i, line_bytes);
                    let message = format!("<14>1 - bench-host app {c} - - {text}");
                    format!("{} {message}", message.len()).into_bytes()
                })
                .collect();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for frame in &frames {
                    out.write_all(frame)?;
                }
                n += frames.len() as u64;
            }
            out.flush()?;
            sent.fetch_add(n, Ordering::Relaxed);
            Ok(())
        }));
    }
    let start = Instant::now();
    std::thread::sleep(*plan.duration);
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        if let Ok(Err(e)) = t.join() {
            anyhow::bail!("cannot send syslog to {}: {e}", plan.to);
        }
    }
    let report = json!({
        "sent": sent.load(Ordering::Relaxed),
        "seconds": start.elapsed().as_secs_f64(),
    });
    println!("{report}");
    Ok(())
}

#[derive(clap::Args)]
pub struct JournalPlan {
    #[arg(long, default_value_t = 100_000)]
    entries: u64,
    #[arg(long, default_value_t = 300)]
    line_bytes: usize,
}

/// Writes the entries in the journal export format to standard output, a
/// microsecond apart, ending now.
pub fn journal_export(plan: JournalPlan) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let mut out = BufWriter::with_capacity(1 << 20, stdout.lock());
    let now_us = chrono::Utc::now().timestamp_micros();
    for i in 0..plan.entries {
        let at = now_us - (plan.entries - i) as i64;
        write!(
            out,
            "__REALTIME_TIMESTAMP={at}\n__MONOTONIC_TIMESTAMP={}\n_BOOT_ID=0123456789abcdef0123456789abcdef\n\
             MESSAGE={}\nPRIORITY=6\n_HOSTNAME=bench-host\nSYSLOG_IDENTIFIER=app\n_SYSTEMD_UNIT=app.service\n\
             _PID=4242\n_UID=1000\n_COMM=app\n_TRANSPORT=stdout\n\n",
            i + 1,
            crate::log_line(i, plan.line_bytes)
        )?;
    }
    out.flush()?;
    Ok(())
}

/// One OTLP request of `records` records of about `line_bytes` each, from
/// `first` on, in protobuf.
pub fn otlp_body(first: u64, records: usize, line_bytes: usize, ts_ms: i64) -> Vec<u8> {
    let text = |s: String| {
        Some(AnyValue {
            value: Some(any_value::Value::StringValue(s)),
        })
    };
    let attribute = |key: &str, value: String| KeyValue {
        key: key.into(),
        value: text(value),
        ..Default::default()
    };
    let log_records = (0..records as u64)
        .map(|i| LogRecord {
            time_unix_nano: ts_ms as u64 * 1_000_000,
            severity_number: 9,
            severity_text: "INFO".into(),
            body: text(crate::log_line(first + i, line_bytes)),
            attributes: vec![attribute("http.route", "/api/orders".into())],
            ..Default::default()
        })
        .collect();
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![
                    attribute("service.name", "bench".into()),
                    attribute("host.name", "bench-host".into()),
                ],
                ..Default::default()
            }),
            scope_logs: vec![ScopeLogs {
                log_records,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}
