//! The `larch` command: a thin layer over the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

use larch::config::{Loaded, LogFormat, Override, Settings, DEFAULT_CONFIG, DEFAULT_LISTEN};

mod readback;
mod status;

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
    /// Check a configuration without starting: the file (unknown keys and bad
    /// values are named with their line), the environment, the flags; with
    /// --check-target also that the target is usable. Exits non-zero on any problem.
    Validate {
        #[command(flatten)]
        config: ConfigArgs,
        /// Also probe the target (as check-target does).
        #[arg(long)]
        check_target: bool,
    },
    /// Print the configuration: the effective one (file, environment and --set
    /// merged; ingestion keys not shown), or with --default every setting, commented.
    Config {
        #[command(flatten)]
        config: ConfigArgs,
        /// Print the fully commented default configuration instead.
        #[arg(long)]
        default: bool,
    },
    /// Check that the archive target is reachable, writable, accepts the
    /// encryption asked for and refuses overwrites. Exits non-zero if uploads could not go ahead.
    CheckTarget {
        #[command(flatten)]
        config: ConfigArgs,
        /// Archive target URL (target.url).
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
        /// Address of the running larch. Default: the one in the configured spool
        /// directory's admin.json, else 127.0.0.1:7280.
        #[arg(long)]
        addr: Option<String>,
        #[command(flatten)]
        config: ConfigArgs,
        /// Print the status as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Where the configuration comes from (see `larch config --default`).
#[derive(clap::Args)]
pub struct ConfigArgs {
    /// TOML config file. Without it: ./larch.toml, else /etc/larch/larch.toml, else the defaults.
    #[arg(long, env = "LARCH_CONFIG")]
    config: Option<PathBuf>,
    /// Any setting as SECTION.KEY=VALUE, e.g. spool.late_window=2h. Repeatable;
    /// wins over the file and LARCH_<SECTION>_<KEY> environment variables.
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    sets: Vec<String>,
}

impl ConfigArgs {
    /// File, environment, then `flags`, then `--set`.
    pub fn load(&self, mut flags: Vec<Override>) -> anyhow::Result<Loaded> {
        for set in &self.sets {
            flags.push(Override::parse_set(set)?);
        }
        let env = Override::from_env(
            std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))),
        );
        Ok(Loaded::load(self.config.as_deref(), env, flags)?)
    }

    pub fn settings(&self, flags: Vec<Override>) -> anyhow::Result<(Loaded, Settings)> {
        let loaded = self.load(flags)?;
        let settings = Settings::resolve(loaded.config.clone())
            .with_context(|| format!("in the configuration ({})", loaded.describe()))?;
        Ok((loaded, settings))
    }
}

#[derive(clap::Args)]
struct RunArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Directory for the spool and the default archive (spool.dir).
    #[arg(long)]
    data: Option<String>,
    /// Address to listen on for ingest (ingest.listen).
    #[arg(long)]
    listen: Option<String>,
    /// Archive target: a directory, file://DIR, s3://BUCKET[/PREFIX], gs://BUCKET[/PREFIX] or az://CONTAINER[/PREFIX] (target.url).
    #[arg(long)]
    target: Option<String>,
    /// How long an hour stays open after it ends, e.g. 6h or 0s (spool.late_window).
    #[arg(long)]
    late_window: Option<String>,
    /// How long a follow-up part stays open after its first line (spool.follow_up_after).
    #[arg(long)]
    follow_up_after: Option<String>,
    /// An ingestion key and its account, KEY=ACCOUNT. Repeatable; replaces the config's keys.
    #[arg(long = "key", value_name = "KEY=ACCOUNT")]
    keys: Vec<String>,
    /// PEM certificate chain for TLS on the ingest listener (ingest.tls_cert).
    #[arg(long)]
    tls_cert: Option<String>,
    /// PEM private key for TLS on the ingest listener (ingest.tls_key).
    #[arg(long)]
    tls_key: Option<String>,
    /// Allow a non-loopback listen address without TLS (ingest.insecure_listen).
    #[arg(long)]
    insecure_listen: bool,
    /// Also serve /metrics, /health and /ready on this address (metrics.listen).
    #[arg(long)]
    metrics_listen: Option<String>,
    /// Bytes per second all uploads together may send, e.g. 1MiB/s (target.upload_rate_limit).
    #[arg(long)]
    upload_rate_limit: Option<String>,
    /// text or json (log.format).
    #[arg(long)]
    log_format: Option<String>,
}

impl RunArgs {
    fn overrides(&self) -> Vec<Override> {
        Override::flags([
            ("--data", "spool.dir", self.data.clone()),
            ("--listen", "ingest.listen", self.listen.clone()),
            ("--target", "target.url", self.target.clone()),
            (
                "--late-window",
                "spool.late_window",
                self.late_window.clone(),
            ),
            (
                "--follow-up-after",
                "spool.follow_up_after",
                self.follow_up_after.clone(),
            ),
            ("--tls-cert", "ingest.tls_cert", self.tls_cert.clone()),
            ("--tls-key", "ingest.tls_key", self.tls_key.clone()),
            (
                "--insecure-listen",
                "ingest.insecure_listen",
                self.insecure_listen.then(|| "true".into()),
            ),
            (
                "--metrics-listen",
                "metrics.listen",
                self.metrics_listen.clone(),
            ),
            (
                "--upload-rate-limit",
                "target.upload_rate_limit",
                self.upload_rate_limit.clone(),
            ),
            ("--log-format", "log.format", self.log_format.clone()),
            (
                "--key",
                "keys",
                (!self.keys.is_empty()).then(|| self.keys.join(" ")),
            ),
        ])
    }
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
    let command = Cli::parse().command;
    if matches!(
        command,
        Command::Run(_) | Command::Drain(_) | Command::Verify(_)
    ) {
        // These may open the spool, and sled creates files of its own there.
        larch::files::private_umask();
    }
    let result = match command {
        Command::Run(args) => run(args),
        Command::Validate {
            config,
            check_target,
        } => validate(config, check_target),
        Command::Config { config, default } => print_config(config, default),
        Command::CheckTarget { config, target } => check_target(config, target),
        Command::Status { addr, config, json } => status::show(addr, &config, json),
        Command::Restore(args) => match readback::restore(args) {
            Ok(0) => Ok(()),
            Ok(code) => return ExitCode::from(code),
            Err(e) => Err(e),
        },
        Command::Verify(args) => readback::verify(args),
        Command::Drain(args) => {
            init_logging("info", LogFormat::Text);
            readback::drain(args)
        }
        Command::Send(args) => {
            init_logging("info", LogFormat::Text);
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

/// `RUST_LOG` if set, else `level`; colours only on a terminal.
fn init_logging(level: &str, format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let overrides = args.overrides();
    let (loaded, settings) = args.config.settings(overrides.clone())?;
    init_logging(&settings.log_level, settings.log_format);
    tracing::info!(
        "larch {} starting; {}",
        env!("CARGO_PKG_VERSION"),
        loaded.describe()
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let clock = larch::clock::from_env().map_err(anyhow::Error::msg)?;
    let config = args.config;
    let reloader: larch::reload::Reloader = Box::new(move || {
        config
            .settings(overrides.clone())
            .map(|(_, settings)| settings)
            .map_err(|e| explain(&e))
    });
    let result = runtime.block_on(larch::daemon::run(
        settings,
        clock,
        shutdown_signal(),
        Some(reloader),
    ));
    // Blocking work still running (a compression) is abandoned; its part resumes on the next start.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    Ok(result?)
}

fn validate(config: ConfigArgs, probe: bool) -> anyhow::Result<()> {
    let (loaded, settings) = config.settings(Vec::new())?;
    println!("{}: valid", loaded.describe());
    println!(
        "  {} ingestion key(s){}, {} rule(s), {} file source(s), target {}",
        settings.keys.len(),
        if settings.demo_key {
            " (the demo key only)"
        } else {
            ""
        },
        settings.rules.len(),
        settings.file_sources.len(),
        settings.target.url
    );
    if let Some(files) = &settings.tls {
        larch::ingest::tls::acceptor(files)?;
        println!("  TLS certificate and key load");
    }
    if probe {
        probe_target(settings)?;
    }
    Ok(())
}

fn print_config(config: ConfigArgs, default: bool) -> anyhow::Result<()> {
    if default {
        print!("{DEFAULT_CONFIG}");
        return Ok(());
    }
    let loaded = config.load(Vec::new())?;
    Settings::resolve(loaded.config.clone())?;
    let mut table = loaded.table.clone();
    larch::config::redact::redact_store_secrets(&mut table);
    println!("# {}", loaded.describe());
    if let Some(toml::Value::Table(keys)) = table.remove("keys") {
        let accounts: std::collections::BTreeSet<_> =
            keys.values().filter_map(|a| a.as_str()).collect();
        println!(
            "# [keys]: {} key(s) for {} (keys not shown)",
            keys.len(),
            accounts.into_iter().collect::<Vec<_>>().join(", ")
        );
    }
    print!(
        "{}",
        toml::to_string(&table).context("cannot print the configuration")?
    );
    Ok(())
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

fn check_target(config: ConfigArgs, target: Option<String>) -> anyhow::Result<()> {
    let flags = Override::flags([("--target", "target.url", target)]);
    probe_target(config.settings(flags)?.1)
}

fn probe_target(settings: Settings) -> anyhow::Result<()> {
    let single_writer = settings.target.single_writer;
    let target = larch::store::Target::new(settings.target)?;
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
        bail!("this store cannot refuse overwrites; set target.single_writer = true if this larch is the only writer under the prefix")
    } else {
        bail!("the target is not usable yet; fix the points marked FAILED")
    }
}
