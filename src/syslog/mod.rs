//! Syslog as a source: what network gear, appliances and older daemons send.
//!
//! This module owns turning a syslog byte stream into archived lines:
//! `frame` cuts a TCP stream into messages as RFC 6587 allows (octet
//! counting or newlines, told apart per message), `message` maps one message
//! (RFC 5424 or RFC 3164) onto the line schema. Syslog has no
//! acknowledgement: a sender cannot know which messages were stored, so
//! nothing here can promise more than "every message that reached larch".

pub mod config;
pub mod frame;
pub mod listen;
pub mod message;

pub use config::{SyslogConfigError, SyslogSourceConfig};
pub use listen::{SyslogListener, Transport};
