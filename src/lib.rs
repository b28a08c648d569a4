//! larch: a log archiver for edge hosts.
//!
//! A line's path through the crate follows the product; the spool and the
//! store, which the stages stand on, import none of them:
//!
//! ```text
//! ingest (HTTP) / tail / pipe → intake → rules → spool (commit, seal, room) → sync (gzip) → store
//!                                                                 restore, verify ← store
//! ```
//!
//! - [`ingest`] accepts Mezmo-compatible requests and answers only once lines
//!   are durable; [`tail`] and [`pipe`] are the other ways in; every source
//!   hands its lines to an [`intake`], whose [`rules`] decide what is kept;
//! - [`spool`] keeps lines on local disk, keyed by account, UTC hour and part,
//!   seals parts when their time is up, watches its room, and remembers what it
//!   uploaded (the ledger);
//! - [`sync`] turns sealed parts into gzip NDJSON objects and uploads them exactly once;
//! - [`store`] is where objects go (a local directory by default, S3, GCS, Azure);
//! - [`restore`] reads archives back and [`verify`] checks them against the ledger;
//! - [`status`] builds the daemon's status, [`ops`] serves it with the metrics,
//!   [`admin`] lets local tools drive a running daemon, [`daemon`] wires the
//!   stages together, [`drain`] empties a spool, [`reload`] applies SIGHUP;
//! - leaves: [`line`](mod@line), [`hour`], [`account`], [`clock`], [`files`] (modes and
//!   durable directories), [`gzip`] (the members objects are made of), [`telemetry`] (metrics), [`units`], [`fault`], [`memory`].
//!
//! The formats and the invariants are in `docs/FORMAT.md` and `docs/DESIGN.md`.

pub mod account;
pub mod admin;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod drain;
pub mod fault;
pub mod files;
pub mod gzip;
pub mod hour;
pub mod ingest;
pub mod intake;
pub mod journald;
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
pub mod syslog;
pub mod tail;
pub mod telemetry;
pub mod units;
pub mod verify;
