//! The `larch` command: a thin layer over the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

use larch::config::{FileConfig, Overrides, Settings, DEFAULT_LISTEN};
use larch::status::Status;

mod readback;

#[derive(Parser)]
#[command(name = "larch", version, about = "A log archiver for edge hosts")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: accept lines, spool them, seal hours, archive them.
    Run(RunArgs),
    /// Check that the archive target is reachable, writable, accepts the
    /// encryption asked for and refuses overwrites. Exits non-zero if uploads could not go ahead.
    CheckTarget {
        /// TOML config file (its target and store settings are used).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Archive target URL, overriding the config's.
        #[arg(long)]
        target: Option<String>,
    },
    /// Send lines from standard input to a running larch, e.g. `myapp | larch send
    /// --account acme --key KEY`. Exits non-zero unless every line was acknowledged.
    Send(SendArgs),
    /// Read archived lines back from a target, filtered, deduplicated by line ID,
    /// as NDJSON in time order per hour. Exits 3 if an object had to be skipped.
    Restore(readback::RestoreArgs),
    /// Check the target against the spool's ledger of uploads: every object there,
    /// same size and checksum, readable, right line count. Exits non-zero on any mismatch.
    Verify(readback::VerifyArgs),
    /// Seal every open part now and upload everything; exits 0 once the spool is
    /// empty. Works with larch running (through its admin API) or stopped.
    Drain(readback::DrainArgs),
    /// Ask a running larch what it holds and what it is doing.
    Status {
        /// Address of the running larch.
        #[arg(long, default_value = DEFAULT_LISTEN)]
        addr: String,
        /// Print the status as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// TOML config file (see README). Flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Directory for the spool (and the default archive).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Address to listen on for ingest.
    #[arg(long)]
    listen: Option<String>,
    /// Archive target: a directory, file://DIR, s3://BUCKET[/PREFIX], gs://BUCKET[/PREFIX] or az://CONTAINER[/PREFIX].
    #[arg(long)]
    target: Option<String>,
    /// How long an hour stays open after it ends, e.g. 6h or 0s.
    #[arg(long)]
    late_window: Option<String>,
    /// How long a follow-up part stays open after its first line.
    #[arg(long)]
    follow_up_after: Option<String>,
    /// An ingestion key and its account, KEY=ACCOUNT. Repeatable; replaces the config's keys.
    #[arg(long = "key", value_name = "KEY=ACCOUNT")]
    keys: Vec<String>,
}

#[derive(clap::Args)]
struct SendArgs {
    /// The account the lines belong to; larch refuses them if the key is another account's.
    #[arg(long)]
    account: String,
    /// The ingestion key.
    #[arg(long, env = "LARCH_KEY", hide_env_values = true)]
    key: String,
    /// Address of the running larch.
    #[arg(long, default_value = DEFAULT_LISTEN)]
    addr: String,
    /// Application name stamped on every line.
    #[arg(long)]
    app: Option<String>,
    /// Host name stamped on every line.
    #[arg(long)]
    host: Option<String>,
    /// Log level stamped on every line.
    #[arg(long)]
    level: Option<String>,
    /// Longest a line waits before its batch is sent.
    #[arg(long, default_value = "1s")]
    linger: humantime::Duration,
    /// How long a batch is retried while larch cannot take it before giving up.
    #[arg(long, default_value = "30s")]
    retry_for: humantime::Duration,
}

fn main() -> ExitCode {
    larch::memory::limit_allocator_arenas();
    let result = match Cli::parse().command {
        Command::Run(args) => {
            init_logging();
            run(args)
        }
        Command::CheckTarget { config, target } => check_target(config, target),
        Command::Status { addr, json } => status(&addr, json),
        Command::Restore(args) => match readback::restore(args) {
            Ok(0) => Ok(()),
            Ok(code) => return ExitCode::from(code),
            Err(e) => Err(e),
        },
        Command::Verify(args) => readback::verify(args),
        Command::Drain(args) => {
            init_logging();
            readback::drain(args)
        }
        Command::Send(args) => {
            init_logging();
            send(args)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("larch: {}", explain(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, each cause only if the message does not already say it.
fn explain(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let part = cause.to_string();
        if !text.contains(&part) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&part);
        }
    }
    text
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let file = match &args.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    let settings = Settings::resolve(
        file,
        Overrides {
            data: args.data,
            listen: args.listen,
            target: args.target,
            late_window: args.late_window,
            follow_up_after: args.follow_up_after,
            keys: args.keys,
        },
    )?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let clock = larch::clock::from_env().map_err(anyhow::Error::msg)?;
    let result = runtime.block_on(larch::daemon::run(settings, clock, shutdown_signal()));
    // Blocking work still running (a compression) is abandoned; its part resumes on the next start.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    Ok(result?)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

fn send(args: SendArgs) -> anyhow::Result<()> {
    let options = larch::pipe::SendOptions {
        addr: args.addr,
        key: args.key,
        account: args.account,
        app: args.app,
        host: args.host,
        level: args.level,
        linger: *args.linger,
        retry_for: *args.retry_for,
    };
    larch::pipe::send(std::io::stdin(), &options)?;
    Ok(())
}

fn check_target(config: Option<PathBuf>, target: Option<String>) -> anyhow::Result<()> {
    let file = match &config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    let settings = Settings::resolve(
        file,
        Overrides {
            target,
            ..Overrides::default()
        },
    )?;
    let single_writer = settings.target.single_writer;
    let target = larch::target::Target::new(settings.target)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let report = runtime.block_on(target.probe())?;
    println!("{report}");
    if report.usable(single_writer) {
        if !report.conditional_create.passed() {
            println!("verdict             usable in single-writer mode only");
        } else {
            println!("verdict             ready");
        }
        Ok(())
    } else if report.problem().is_ok() {
        bail!("this store cannot refuse overwrites; set single_writer = true if this larch is the only writer under the prefix")
    } else {
        bail!("the target is not usable yet; fix the points marked FAILED")
    }
}

fn status(addr: &str, json: bool) -> anyhow::Result<()> {
    let url = format!("http://{addr}/status");
    let mut response = ureq::get(&url)
        .call()
        .with_context(|| format!("cannot reach larch at {addr}; is `larch run` running there? (use --addr to point elsewhere)"))?;
    let text = response
        .body_mut()
        .read_to_string()
        .context("cannot read the status reply")?;
    let status: Status =
        serde_json::from_str(&text).with_context(|| format!("unexpected status reply: {text}"))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
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
        status.objects_uploaded,
        status.bytes_uploaded,
        status.input_bytes_uploaded,
        status.upload_failures
    );
    println!("quarantined      {} records", s.records_quarantined);
    let room = &status.room;
    let mib = larch::spool::room::mib;
    println!(
        "room             spool {} (limit {}), disk {} free (floor {})",
        mib(room.spool_bytes),
        room.spool_max_bytes.map_or("none".to_owned(), mib),
        mib(room.disk_free_bytes),
        mib(room.min_free_bytes)
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
    for (rule, lines) in &status.lines_dropped_by_rule {
        println!("dropped by rule  {lines} lines: {rule}");
    }
    if let Some(p) = &status.sync_paused {
        println!("SYNC PAUSED      {p}");
    }
    println!(
        "last error       {}",
        status.last_error.as_deref().unwrap_or("-")
    );
    if status.sync_paused.is_some() {
        bail!("uploads are paused; see above");
    }
    Ok(())
}
