//! `[[sources.syslog]]`: where a syslog listener listens and whose lines it
//! takes, checked before anything starts.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use super::listen::{SyslogListener, Transport};
use crate::account::{AccountId, InvalidAccountId};
use crate::ingest::tls::TlsFiles;

/// Bytes of one message kept by default (RFC 5425 asks receivers to take at
/// least 2 KiB; appliances send stack traces).
const DEFAULT_MAX_MESSAGE: usize = 64 * 1024;
/// The most a message may be configured to keep: the ingest API's line,
/// meta and field limits together.
const MAX_MAX_MESSAGE: usize = 1 << 20;

/// One `[[sources.syslog]]` table as written.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyslogSourceConfig {
    pub account: String,
    /// `udp`, `tcp`, or `tls` (TCP with TLS, RFC 5425).
    pub transport: String,
    /// Address and port, like `0.0.0.0:514`.
    pub listen: String,
    /// Bytes kept of one message; the rest is cut (default 65536).
    pub max_message: Option<usize>,
    /// TCP connections at once (default 256).
    pub max_connections: Option<usize>,
    /// A TCP connection that sends nothing this long is closed (default 60s).
    pub idle_timeout: Option<String>,
    /// `tls`: PEM files of the certificate chain and private key.
    pub tls_cert: Option<std::path::PathBuf>,
    pub tls_key: Option<std::path::PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum SyslogConfigError {
    #[error("[[sources.syslog]] number {number}: {source}")]
    Account {
        number: usize,
        source: InvalidAccountId,
    },
    #[error("[[sources.syslog]] number {number}: transport {given:?} is not \"udp\", \"tcp\" or \"tls\"")]
    Transport { number: usize, given: String },
    #[error("[[sources.syslog]] number {number}: listen {given:?} is not an address and port, like \"0.0.0.0:514\"")]
    Listen { number: usize, given: String },
    #[error("[[sources.syslog]] number {number}: {what} {given:?}: {why}")]
    Value {
        number: usize,
        what: &'static str,
        given: String,
        why: String,
    },
    #[error("[[sources.syslog]]: {0} is given twice for one transport")]
    Duplicate(String),
    #[error("[[sources.syslog]] number {number}: transport \"tls\" needs tls_cert and tls_key (PEM files), and only it takes them")]
    Tls { number: usize },
}

impl SyslogListener {
    /// Every configured listener, checked; `max_skew_ms` is the ingest API's.
    pub fn all(
        configs: Vec<SyslogSourceConfig>,
        max_skew_ms: i64,
    ) -> Result<Vec<Self>, SyslogConfigError> {
        let mut listeners: Vec<Self> = Vec::with_capacity(configs.len());
        for (i, c) in configs.into_iter().enumerate() {
            let number = i + 1;
            let account = AccountId::parse(&c.account)
                .map_err(|source| SyslogConfigError::Account { number, source })?;
            let transport = match c.transport.as_str() {
                "udp" => Transport::Udp,
                "tcp" => Transport::Tcp,
                "tls" => Transport::Tls,
                _ => {
                    return Err(SyslogConfigError::Transport {
                        number,
                        given: c.transport,
                    })
                }
            };
            let listen = c
                .listen
                .parse::<SocketAddr>()
                .map_err(|_| SyslogConfigError::Listen {
                    number,
                    given: c.listen.clone(),
                })?;
            let max_message = c.max_message.unwrap_or(DEFAULT_MAX_MESSAGE);
            if max_message == 0 || max_message > MAX_MAX_MESSAGE {
                return Err(SyslogConfigError::Value {
                    number,
                    what: "max_message",
                    given: max_message.to_string(),
                    why: format!("give 1 to {MAX_MAX_MESSAGE} bytes"),
                });
            }
            let max_connections = c.max_connections.unwrap_or(256);
            if max_connections == 0 {
                return Err(SyslogConfigError::Value {
                    number,
                    what: "max_connections",
                    given: "0".into(),
                    why: "no sender could connect; give at least 1".into(),
                });
            }
            let idle_timeout = match c.idle_timeout {
                None => Duration::from_secs(60),
                Some(text) => humantime::parse_duration(&text)
                    .ok()
                    .filter(|d| !d.is_zero())
                    .ok_or_else(|| SyslogConfigError::Value {
                        number,
                        what: "idle_timeout",
                        given: text.clone(),
                        why: "give a duration like 60s".into(),
                    })?,
            };
            let tls = match (transport, c.tls_cert, c.tls_key) {
                (Transport::Tls, Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
                (Transport::Tls, ..) | (_, Some(_), _) | (_, _, Some(_)) => {
                    return Err(SyslogConfigError::Tls { number })
                }
                _ => None,
            };
            let listener = Self {
                account,
                transport,
                tls,
                listen,
                max_message,
                max_connections,
                idle_timeout,
                max_skew_ms,
            };
            // TCP and TLS listeners both take TCP ports.
            let udp = |t: Transport| t == Transport::Udp;
            if listeners
                .iter()
                .any(|l| l.listen == listener.listen && udp(l.transport) == udp(listener.transport))
            {
                return Err(SyslogConfigError::Duplicate(listen.to_string()));
            }
            listeners.push(listener);
        }
        Ok(listeners)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(extra: &str) -> Result<Vec<SyslogListener>, SyslogConfigError> {
        let text =
            format!("account = \"net\"\ntransport = \"tcp\"\nlisten = \"127.0.0.1:5514\"\n{extra}");
        let config: SyslogSourceConfig = toml::from_str(&text).unwrap();
        SyslogListener::all(vec![config], 1000)
    }

    #[test]
    fn a_listener_is_checked_and_each_bad_value_named() {
        let l = &one("").unwrap()[0];
        assert_eq!(
            (
                l.transport,
                l.max_message,
                l.max_connections,
                l.idle_timeout
            ),
            (Transport::Tcp, 65_536, 256, Duration::from_secs(60))
        );
        assert!(one("idle_timeout = \"5s\"\nmax_message = 2048\n").is_ok());
        for (extra, named) in [
            ("max_message = 0", "max_message"),
            ("max_connections = 0", "max_connections"),
            ("idle_timeout = \"soon\"", "idle_timeout"),
        ] {
            let err = one(extra).unwrap_err().to_string();
            assert!(err.contains(named) && err.contains("number 1"), "{err}");
        }
        let bad = |text: &str| {
            let config: SyslogSourceConfig = toml::from_str(text).unwrap();
            SyslogListener::all(vec![config], 0)
                .unwrap_err()
                .to_string()
        };
        let err = bad("account = \"net\"\ntransport = \"relp\"\nlisten = \"127.0.0.1:1\"");
        assert!(err.contains("\"relp\""), "{err}");
        let err = bad("account = \"net\"\ntransport = \"tls\"\nlisten = \"127.0.0.1:1\"");
        assert!(err.contains("tls_cert and tls_key"), "{err}");
        let err = bad(
            "account = \"net\"\ntransport = \"udp\"\nlisten = \"127.0.0.1:1\"\ntls_cert = \"/c\"",
        );
        assert!(err.contains("only it takes them"), "{err}");
        let err = bad("account = \"net\"\ntransport = \"udp\"\nlisten = \"localhost\"");
        assert!(err.contains("\"localhost\""), "{err}");
        let err = bad("account = \"../x\"\ntransport = \"udp\"\nlisten = \"127.0.0.1:1\"");
        assert!(err.contains("[[sources.syslog]] number 1"), "{err}");
        let twice: Vec<SyslogSourceConfig> = (0..2)
            .map(|_| {
                toml::from_str("account = \"a\"\ntransport = \"udp\"\nlisten = \"127.0.0.1:9\"")
                    .unwrap()
            })
            .collect();
        assert!(SyslogListener::all(twice, 0).is_err());
    }
}
