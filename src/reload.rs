//! `SIGHUP`: re-reads the configuration and applies what can change while
//! lines flow: ingestion keys, rules and sources (files, syslog, journal). Everything else is
//! compared with what is running and named if it changed, since it takes a
//! restart. A configuration that does not load leaves the running one in
//! force, and so does one that would leave no ingestion key: falling back to
//! the public demo key on a reload would open the door to anyone.
//!
//! Keys and rules are swapped whole between two requests (a request sees the
//! old set or the new, never a mix). File sources whose configuration changed
//! are stopped, which stores what they read, and started again from there, so
//! no line of a file is skipped or read twice; journal sources likewise start
//! again from their stored cursor.

use std::sync::Arc;

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::ingest::LiveKeys;
use crate::intake::Intake;
use crate::journald::Journals;
use crate::syslog::listen::Listeners as SyslogListeners;
use crate::tail::{self, Tails};

/// Loads the configuration again, from the same file, environment and flags.
pub type Reloader = Box<dyn Fn() -> Result<Settings, String> + Send + Sync>;

/// What a reload may replace.
pub struct Reloadable {
    pub keys: LiveKeys,
    /// Its rules are the ones a reload replaces.
    pub intake: Intake,
    pub tails: Mutex<Option<Tails>>,
    pub syslog: Mutex<Option<SyslogListeners>>,
    pub journals: Mutex<Option<Journals>>,
    /// What stops the daemon's background work, syslog listeners included.
    pub stop: CancellationToken,
    /// The settings in force.
    pub current: Mutex<Settings>,
}

impl Reloadable {
    /// Applies `new`; returns a line saying what changed, or why nothing was.
    pub fn apply(&self, new: Settings) -> Result<String, String> {
        let mut current = self.current.lock();
        if new.demo_key && !current.demo_key {
            return Err(format!(
                "it configures no ingestion keys ([keys], LARCH_KEYS or --key), and larch does not fall back to the public demo key {:?} on a reload; the {} running key(s) stay. Put the keys back, or restart larch to run on the demo key (on a loopback listener only).",
                crate::config::DEMO_KEY,
                current.keys.len()
            ));
        }
        let mut applied = Vec::new();
        if new.keys != current.keys {
            self.keys.store(Arc::new(new.keys.clone()));
            applied.push(format!("{} ingestion key(s)", new.keys.len()));
        }
        if !new.rules.same_as(&current.rules) {
            new.rules.carry_counts_from(&self.intake.rules.load());
            self.intake.rules.store(new.rules.clone());
            applied.push(format!("{} rule(s)", new.rules.len()));
        }
        if new.file_sources != current.file_sources {
            let mut tails = self.tails.lock();
            if let Some(running) = tails.take() {
                running.stop();
            }
            match tail::start(new.file_sources.clone(), self.intake.clone()) {
                Ok(started) => {
                    *tails = Some(started);
                    applied.push(format!("{} file source(s)", new.file_sources.len()));
                }
                Err(e) => {
                    tracing::error!("cannot start the file sources again: {e}; restart larch");
                }
            }
        }
        let mut syslog_sources = current.syslog_sources.clone();
        if new.syslog_sources != current.syslog_sources {
            // Runs on a blocking thread (the reloader's): it may wait for the
            // old listeners to free their ports before the new ones bind.
            let runtime = tokio::runtime::Handle::current();
            let mut running = self.syslog.lock();
            if let Some(old) = running.take() {
                runtime.block_on(old.stop());
            }
            let start = |sources| {
                runtime.block_on(SyslogListeners::start(sources, &self.intake, &self.stop))
            };
            match start(&new.syslog_sources) {
                Ok(started) => {
                    *running = Some(started);
                    syslog_sources = new.syslog_sources.clone();
                    applied.push(format!("{} syslog listener(s)", new.syslog_sources.len()));
                }
                Err(e) => {
                    tracing::error!("{e}; the syslog listeners in force before stay");
                    match start(&current.syslog_sources) {
                        Ok(started) => *running = Some(started),
                        Err(e) => tracing::error!("{e}; restart larch"),
                    }
                }
            }
        }
        let mut journal_sources = current.journal_sources.clone();
        if new.journal_sources != current.journal_sources {
            let mut running = self.journals.lock();
            if let Some(old) = running.take() {
                old.stop();
            }
            match Journals::start(&new.journal_sources, &self.intake) {
                Ok(started) => {
                    *running = Some(started);
                    journal_sources = new.journal_sources.clone();
                    applied.push(format!("{} journal source(s)", new.journal_sources.len()));
                }
                Err(e) => {
                    tracing::error!("{e}; the journal sources in force before stay");
                    match Journals::start(&current.journal_sources, &self.intake) {
                        Ok(started) => *running = Some(started),
                        Err(e) => tracing::error!("{e}; restart larch"),
                    }
                }
            }
        }
        let restart = needs_restart(&current, &new);
        if !restart.is_empty() {
            tracing::warn!(
                "changed settings that take effect only after a restart: {}",
                restart.join(", ")
            );
        }
        let kept = Settings {
            keys: new.keys,
            demo_key: new.demo_key,
            rules: new.rules,
            file_sources: new.file_sources,
            syslog_sources,
            journal_sources,
            ..current.clone()
        };
        *current = kept;
        Ok(if applied.is_empty() {
            "no change to keys, rules or sources".into()
        } else {
            format!("now in force: {}", applied.join(", "))
        })
    }
}

/// The settings that differ between `old` and `new` and cannot change while running.
fn needs_restart(old: &Settings, new: &Settings) -> Vec<&'static str> {
    let changed = [
        ("spool.dir", old.data_dir != new.data_dir),
        ("spool.late_window / follow_up_after", old.seal != new.seal),
        ("spool.cache_size", old.cache_bytes != new.cache_bytes),
        ("spool.max_size / min_free_space", old.room != new.room),
        ("ingest.listen", old.listen != new.listen),
        ("ingest.tls_*", old.tls != new.tls),
        ("ingest.max_clock_skew", old.max_skew_ms != new.max_skew_ms),
        (
            "ingest.max_connections / header_timeout / idle_timeout / body_timeout",
            old.listen_limits != new.listen_limits,
        ),
        (
            "ingest.max_request_memory",
            old.max_request_memory != new.max_request_memory,
        ),
        ("metrics.listen", old.metrics_listen != new.metrics_listen),
        (
            "target (url, store options, single_writer, upload_rate_limit, local_group_read)",
            old.target != new.target,
        ),
        ("target.key_prefix", old.key_prefix != new.key_prefix),
        ("target.fleet_size", old.fleet_size != new.fleet_size),
        ("target.gzip_level", old.gzip_level != new.gzip_level),
        (
            "target.retry_max_delay",
            old.retry_max_delay != new.retry_max_delay,
        ),
        ("target.ledger_keep", old.ledger_keep != new.ledger_keep),
        (
            "log.*",
            (&old.log_level, old.log_format) != (&new.log_level, new.log_format),
        ),
    ];
    changed
        .into_iter()
        .filter(|(_, differs)| *differs)
        .map(|(name, _)| name)
        .collect()
}

/// Waits for SIGHUP and reloads, until `stopped` turns true.
pub async fn on_hangup(reloadable: Arc<Reloadable>, reloader: Reloader, stop: CancellationToken) {
    let reloader = Arc::new(reloader);
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("cannot listen for SIGHUP, so the config cannot be reloaded: {e}");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = hangups.recv() => {}
                _ = stop.cancelled() => return,
            }
            tracing::info!("SIGHUP: reloading the configuration");
            let (reloadable, reloader) = (reloadable.clone(), reloader.clone());
            let outcome =
                tokio::task::spawn_blocking(move || reloader().and_then(|s| reloadable.apply(s)))
                    .await;
            match outcome {
                Ok(Ok(what)) => tracing::info!("configuration reloaded; {what}"),
                Ok(Err(e)) => tracing::error!(
                    "configuration not reloaded, the running one stays in force: {e}"
                ),
                Err(e) => tracing::error!("configuration reload failed: {e}"),
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (reloadable, reloader, stop.cancelled().await);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FileConfig;

    fn settings(toml_text: &str) -> Settings {
        Settings::resolve(toml::from_str::<FileConfig>(toml_text).unwrap()).unwrap()
    }

    #[test]
    fn only_settings_a_reload_cannot_apply_are_named_as_needing_a_restart() {
        let old = settings("[keys]\nk = \"acme\"\n");
        let new = settings(
            "[keys]\nk2 = \"beta\"\n[spool]\nlate_window = \"1h\"\n\
             [target]\ngzip_level = 9\nupload_rate_limit = \"1MiB/s\"\nlocal_group_read = true\n",
        );
        assert_eq!(
            needs_restart(&old, &new),
            [
                "spool.late_window / follow_up_after",
                "target (url, store options, single_writer, upload_rate_limit, local_group_read)",
                "target.gzip_level",
            ]
        );
        assert!(needs_restart(&old, &settings("[keys]\nk3 = \"x\"\n")).is_empty());
        let limits = settings(
            "[keys]\nk = \"acme\"\n[ingest]\nidle_timeout = \"5s\"\nmax_request_memory = \"1GiB\"\n",
        );
        assert_eq!(
            needs_restart(&old, &limits),
            [
                "ingest.max_connections / header_timeout / idle_timeout / body_timeout",
                "ingest.max_request_memory",
            ]
        );
    }
}
