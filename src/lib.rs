//! larch: a log archiver for edge hosts.
//!
//! A line's path through the crate follows the product:
//!
//! ```text
//! ingest (HTTP, files, pipe) → rules → spool (sled, group commit) → seal (hour closes)
//!     → sync (gzip) → target → ledger                      restore ← target
//! ```
//!
//! - [`ingest`] accepts Mezmo-compatible requests and answers only once lines are durable;
//!   [`tail`] and [`pipe`] are the other ways in, [`rules`] what is kept;
//! - [`spool`] keeps lines on local disk, keyed by account, UTC hour and part, and
//!   remembers what it uploaded (the ledger);
//! - [`seal`] closes a part once its hour (plus the late window) is over;
//! - [`sync`] turns sealed parts into gzip NDJSON objects and uploads them exactly once;
//! - [`store`] is where objects go (a local directory by default);
//! - [`restore`] reads archives back, [`verify`] checks them against the ledger, and
//!   [`drain`] empties a spool into the target, with a running daemon through [`admin`];
//! - [`files`] keeps what larch writes private (file and directory modes).

pub mod account;
pub mod admin;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod drain;
pub mod fault;
pub mod files;
pub mod hour;
pub mod ingest;
pub mod intake;
pub mod line;
pub mod memory;
pub mod ops;
pub mod pipe;
pub mod reload;
pub mod restore;
pub mod rules;
pub mod spool;
pub mod status;
pub mod store;
pub mod sync;
pub mod tail;
pub mod telemetry;
pub mod units;
pub mod verify;
