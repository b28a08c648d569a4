//! `larch status`: a running larch's status, as a table or as JSON.

use anyhow::{bail, Context};

use larch::config::DEFAULT_LISTEN;
use larch::status::Status;

use crate::ConfigArgs;

/// The status of the larch at `addr`, else of the configured spool
/// directory's larch (through its admin.json, once it has proven that it is
/// that larch), else of the one at the default address.
pub fn show(addr: Option<String>, config: &ConfigArgs, json: bool) -> anyhow::Result<()> {
    let local = match &addr {
        Some(_) => None,
        None => match config.settings(Vec::new()) {
            Ok((_, settings)) => larch::admin::AdminClient::proven(&settings.data_dir)?,
            Err(_) => None,
        },
    };
    let status = match local {
        Some(client) => client.status()?,
        None => status_at(addr.as_deref().unwrap_or(DEFAULT_LISTEN))?,
    };
    print_status(&status, json)
}

fn status_at(addr: &str) -> anyhow::Result<Status> {
    let url = format!("http://{addr}/status");
    let mut response = ureq::get(&url)
        .call()
        .with_context(|| format!("cannot reach larch at {addr}; is `larch run` running there? (use --addr to point elsewhere)"))?;
    let text = response
        .body_mut()
        .read_to_string()
        .context("cannot read the status reply")?;
    serde_json::from_str(&text).with_context(|| format!("unexpected status reply: {text}"))
}

fn print_status(status: &Status, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(status)?);
        return Ok(());
    }
    let s = &status.spool;
    println!("instance         {}", status.instance);
    println!("target           {}", status.target);
    println!(
        "parts            {} open, {} sealed, {} uploading, {} uploaded",
        s.parts_open, s.parts_sealed, s.parts_uploading, s.parts_uploaded
    );
    println!(
        "waiting          {} lines, {} bytes",
        s.lines_waiting, s.bytes_waiting
    );
    println!(
        "oldest waiting   {}",
        s.oldest_waiting_hour.as_deref().unwrap_or("-")
    );
    println!(
        "uploaded         {} objects, {} bytes ({} before gzip; {} failed attempts)",
        status.sync.objects_uploaded,
        status.sync.bytes_uploaded,
        status.sync.input_bytes_uploaded,
        status.sync.upload_failures
    );
    println!("quarantined      {} records", s.records_quarantined);
    let room = &status.room;
    let mib = larch::units::mib;
    println!(
        "room             spool {} (limit {}), disk {} free (floor {})",
        mib(room.spool_bytes),
        room.spool_max_bytes.map_or("none".to_owned(), mib),
        mib(room.disk_free_bytes),
        mib(room.min_free_bytes)
    );
    let outlook = &status.outlook;
    match (
        outlook.ndjson_waiting_bytes,
        outlook.spool_bytes_per_ndjson_byte,
    ) {
        (Some(ndjson), Some(ratio)) => println!(
            "spool on disk    {} for about {} of NDJSON ({ratio:.2} bytes per byte)",
            mib(room.spool_bytes),
            mib(ndjson)
        ),
        _ => println!("spool on disk    {}", mib(room.spool_bytes)),
    }
    println!(
        "outage room      {} at {}/s of line text",
        outlook
            .outage_hours_left
            .map_or("-".to_owned(), |h| format!("{h:.1} hours")),
        mib(room.intake_line_bytes_per_s as u64)
    );
    if !room.reserve_held {
        println!("reserve          released (the disk filled); held again once there is room");
    }
    if let Some(why) = &room.refusing {
        println!("REFUSING LINES   {why}");
    }
    if !room.throttled_accounts.is_empty() {
        println!(
            "throttled        {} (over their share while space is short)",
            room.throttled_accounts.join(", ")
        );
    }
    for source in &status.sources {
        let last = source
            .last_stored_ms
            .map_or("nothing stored yet".to_owned(), |ms| {
                format!("last at {}", larch::clock::rfc3339(ms))
            });
        println!(
            "source           {} {} -> {}: {} lines, {last}{}",
            source.kind,
            source.name,
            source.account,
            source.lines,
            source
                .problem
                .as_deref()
                .map_or(String::new(), |p| format!("; {p}"))
        );
    }
    for (rule, lines) in &status.lines_dropped_by_rule {
        println!("dropped by rule  {lines} lines: {rule}");
    }
    if let Some(p) = &status.sync.sync_paused {
        println!("SYNC PAUSED      {p}");
    }
    println!(
        "last error       {}",
        status.sync.last_error.as_deref().unwrap_or("-")
    );
    if status.sync.sync_paused.is_some() {
        bail!("uploads are paused; see above");
    }
    Ok(())
}
