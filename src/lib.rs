//! larch: a log archiver for edge hosts.
//!
//! A line's path through the crate follows the product:
//!
//! ```text
//! ingest (HTTP) → spool (sled, group commit) → seal (hour closes) → sync (gzip) → target
//! ```
//!
//! - [`ingest`] accepts Mezmo-compatible requests and answers only once lines are durable;
//! - [`spool`] keeps lines on local disk, keyed by account, UTC hour and part;
//! - [`seal`] closes a part once its hour (plus the late window) is over;
//! - [`sync`] turns sealed parts into gzip NDJSON objects and uploads them exactly once;
//! - [`target`] is where objects go (a local directory by default).

pub mod account;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod fault;
pub mod hour;
pub mod ingest;
pub mod line;
pub mod memory;
pub mod pipe;
pub mod rules;
pub mod seal;
pub mod spool;
pub mod status;
pub mod sync;
pub mod tail;
pub mod target;
