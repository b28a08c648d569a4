//! `larch restore`, `larch verify` and `larch drain`: reading archives back,
//! checking them against the ledger, and emptying a spool into them.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};

use larch::account::AccountId;
use larch::admin::AdminClient;
use larch::config::{Override, Settings};
use larch::drain::Drained;
use larch::restore::{parse_time, Filter, Restore};
use larch::status::Status;
use larch::store::Target;
use larch::verify::{Ledger, Verdict};

/// Exit status of a restore that finished but had to skip objects.
pub const SKIPPED_EXIT: u8 = 3;

/// Where the data and the archive are: the config (file, environment), then the flags.
#[derive(clap::Args)]
pub struct Place {
    #[command(flatten)]
    config: crate::ConfigArgs,
    /// Directory of the spool (spool.dir).
    #[arg(long)]
    data: Option<String>,
    /// Archive target URL (target.url).
    #[arg(long)]
    target: Option<String>,
}

impl Place {
    fn settings(&self) -> anyhow::Result<Settings> {
        let flags = Override::flags([
            ("--data", "spool.dir", self.data.clone()),
            ("--target", "target.url", self.target.clone()),
        ]);
        Ok(self.config.settings(flags)?.1)
    }
}

#[derive(clap::Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    place: Place,
    /// The account whose lines to restore.
    #[arg(long)]
    account: String,
    /// Lines at or after this time: RFC 3339, a date, or a time ago like 2h.
    #[arg(long)]
    since: Option<String>,
    /// Lines before this time (same forms as --since).
    #[arg(long)]
    until: Option<String>,
    /// Only lines from this host (repeatable: any of them).
    #[arg(long = "host")]
    hosts: Vec<String>,
    /// Only lines of this app (repeatable).
    #[arg(long = "app")]
    apps: Vec<String>,
    /// Only lines of this level, in any case (repeatable).
    #[arg(long = "level")]
    levels: Vec<String>,
    /// Only lines whose text matches this regex.
    #[arg(long)]
    grep: Option<String>,
    /// Write the lines to this file instead of standard output.
    #[arg(long, short)]
    output: Option<PathBuf>,
    /// Objects downloaded and decompressed at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
}

/// The target to read, refused at once if it is a directory that does not exist.
fn target_to_read(settings: &Settings) -> anyhow::Result<Arc<Target>> {
    let target = Target::new(settings.target.clone())?;
    if let Some(dir) = target.local_dir() {
        if !dir.is_dir() {
            bail!(
                "the archive directory {} does not exist; point --target (or --data, or --config) at the archive to read",
                dir.display()
            );
        }
    }
    Ok(Arc::new(target))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Returns the exit status: 0, or [`SKIPPED_EXIT`] when objects were skipped.
pub fn restore(args: RestoreArgs) -> anyhow::Result<u8> {
    let settings = args.place.settings()?;
    let now = now_ms();
    let filter = Filter {
        since: args
            .since
            .as_deref()
            .map(|t| parse_time("--since", t, now))
            .transpose()?,
        until: args
            .until
            .as_deref()
            .map(|t| parse_time("--until", t, now))
            .transpose()?,
        hosts: args.hosts,
        apps: args.apps,
        levels: args.levels,
        grep: args.grep.as_deref().map(Filter::grep).transpose()?,
    };
    filter.check_range()?;
    let progress = std::io::stderr().is_terminal();
    let restore = Restore {
        account: AccountId::parse(&args.account)?,
        key_prefix: settings.key_prefix_pattern.clone(),
        filter,
        concurrency: args.concurrency,
        progress,
    };
    let target = target_to_read(&settings)?;
    let mut out: Box<dyn Write> = match &args.output {
        Some(path) => Box::new(std::io::BufWriter::new(
            // Restored lines are archived lines: private, as the archive is.
            larch::files::create_private(path)
                .with_context(|| format!("cannot create {}", path.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let report = runtime()?.block_on(async {
        let selected = larch::restore::select(&target, &restore, now).await?;
        larch::restore::restore(target.clone(), &restore, selected, &mut out).await
    })?;
    drop(out);
    if progress {
        eprintln!(
            "restored {} lines from {} objects ({} read, {} duplicate lines dropped)",
            report.lines_written,
            report.objects,
            indicatif::HumanBytes(report.bytes),
            report.duplicates
        );
    }
    if report.skipped.is_empty() {
        return Ok(0);
    }
    eprintln!(
        "larch: {} object(s) could not be read and were skipped (named above); everything else was restored",
        report.skipped.len()
    );
    Ok(SKIPPED_EXIT)
}

#[derive(clap::Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    place: Place,
    /// Check only uploads of hours from this time on (RFC 3339, a date, or a time ago like 2d).
    #[arg(long)]
    since: Option<String>,
    /// Objects read at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
}

/// The ledger, from the running daemon if there is one, else from the spool itself.
fn load_ledger(settings: &Settings) -> anyhow::Result<Ledger> {
    if let Some(client) = AdminClient::connect(&settings.data_dir)? {
        let reply = client.ledger()?;
        return Ok(Ledger {
            instance: reply.instance,
            entries: reply.entries,
        });
    }
    let spool = open_stopped_spool(settings)?;
    Ok(Ledger {
        instance: spool.instance_hex(),
        entries: spool.ledger()?,
    })
}

fn spool_must_exist(settings: &Settings) -> anyhow::Result<()> {
    if !settings.data_dir.join("spool").is_dir() {
        bail!(
            "there is no spool in {}; give the data directory larch runs with (--data or --config)",
            settings.data_dir.display()
        );
    }
    Ok(())
}

/// Said when the spool will not open: a larch may hold it without answering.
fn no_daemon_answered(settings: &Settings) -> String {
    format!(
        "no running larch answered for {} (its admin.json is missing or stale), and the spool could not be opened directly; if a larch runs on it, restart that larch so it writes a fresh admin.json",
        settings.data_dir.display()
    )
}

fn open_stopped_spool(settings: &Settings) -> anyhow::Result<larch::spool::Spool> {
    spool_must_exist(settings)?;
    let clock = larch::clock::from_env().map_err(anyhow::Error::msg)?;
    larch::spool::Spool::open(
        &settings.data_dir,
        clock,
        settings.seal,
        settings.cache_bytes,
    )
    .with_context(|| no_daemon_answered(settings))
}

pub fn verify(args: VerifyArgs) -> anyhow::Result<()> {
    let settings = args.place.settings()?;
    let mut ledger = load_ledger(&settings)?;
    if let Some(since) = &args.since {
        let since = parse_time("--since", since, now_ms())?;
        let first_hour = larch::hour::Hour::of(since).0;
        ledger.entries.retain(|e| e.hour >= first_hour);
    }
    let target = target_to_read(&settings)?;
    println!(
        "checking {} objects of instance {} in {}",
        ledger.entries.len(),
        ledger.instance,
        target.describe()
    );
    let rows = runtime()?.block_on(larch::verify::verify(
        target.clone(),
        &ledger,
        args.concurrency,
    ));
    let width = rows.iter().map(|r| r.key.len()).max().unwrap_or(3).max(3);
    println!(
        "{:<9}  {:<width$}  {:>9}  {:>12}  note",
        "result", "key", "lines", "bytes"
    );
    let number = |n: Option<u64>| n.map_or_else(|| "-".to_owned(), |n| n.to_string());
    for row in &rows {
        let line = format!(
            "{:<9}  {:<width$}  {:>9}  {:>12}  {}",
            row.verdict.label(),
            row.key,
            number(row.lines),
            number(row.size),
            row.verdict.note()
        );
        println!("{}", line.trim_end());
    }
    let bad = rows.iter().filter(|r| r.verdict != Verdict::Ok).count();
    let ok = rows.len() - bad;
    if bad > 0 {
        bail!(
            "{bad} of {} objects do not match the ledger ({ok} ok); see the table",
            rows.len()
        );
    }
    println!("all {ok} objects match the ledger");
    Ok(())
}

#[derive(clap::Args)]
pub struct DrainArgs {
    #[command(flatten)]
    place: Place,
    /// Give up after this long (e.g. 10m) and report what is left. Without it, wait until done.
    #[arg(long)]
    timeout: Option<humantime::Duration>,
}

fn describe_left(status: &Status) -> String {
    let s = &status.spool;
    let mut text = format!(
        "{} lines in {} open, {} sealed, {} uploading and {} uploaded parts (oldest hour {})",
        s.lines_waiting,
        s.parts_open,
        s.parts_sealed,
        s.parts_uploading,
        s.parts_uploaded,
        s.oldest_waiting_hour.as_deref().unwrap_or("-")
    );
    if let Some(paused) = &status.sync.sync_paused {
        text.push_str(&format!("; uploads are paused: {paused}"));
    } else if let Some(error) = &status.sync.last_error {
        text.push_str(&format!("; last upload error: {error}"));
    }
    text
}

pub fn drain(args: DrainArgs) -> anyhow::Result<()> {
    let settings = args.place.settings()?;
    let timeout: Option<Duration> = args.timeout.map(Into::into);
    let terminal = std::io::stderr().is_terminal();
    let bar = if terminal {
        indicatif::ProgressBar::new_spinner()
    } else {
        indicatif::ProgressBar::hidden()
    };
    let progress = |status: &Status| {
        bar.set_message(format!(
            "waiting for {} lines in {} parts",
            status.spool.lines_waiting,
            status.spool.parts_open
                + status.spool.parts_sealed
                + status.spool.parts_uploading
                + status.spool.parts_uploaded
        ));
        bar.tick();
    };
    let (drained, how) = match AdminClient::connect(&settings.data_dir)? {
        Some(client) => (
            larch::drain::through_daemon(&client, timeout, progress)?,
            format!("through the larch running at {}", client.addr()),
        ),
        None => {
            spool_must_exist(&settings)?;
            let clock = larch::clock::from_env().map_err(anyhow::Error::msg)?;
            let drained = runtime()?
                .block_on(larch::drain::stopped_daemon(
                    &settings, clock, timeout, progress,
                ))
                .with_context(|| no_daemon_answered(&settings))?;
            (drained, "with larch stopped".to_owned())
        }
    };
    bar.finish_and_clear();
    match drained {
        Drained::Empty => {
            println!(
                "drained {how}: the spool in {} is empty, everything is in {}",
                settings.data_dir.display(),
                Target::new(settings.target)?.describe()
            );
            Ok(())
        }
        Drained::TimedOut(status) => bail!(
            "drain gave up after {}: {} are still in the spool; nothing was dropped. Run larch drain again to finish.",
            humantime::format_duration(timeout.unwrap_or_default()),
            describe_left(&status)
        ),
    }
}
