//! larch's integration tests, in one binary: each module is one suite,
//! `common` their shared rig (the daemon as a child process, the test
//! servers, archive readers). One binary links the library once.
//!
//! One suite: `cargo test --release --test it crash::`; the torture suites
//! run from `scripts/torture.sh`.

mod admin;
mod agent;
mod archive;
mod azure;
mod common;
mod crash;
mod hostile;
mod ingest_api;
mod journald;
mod lifecycle;
mod otlp;
mod power;
mod quota;
mod readback;
mod rules;
mod s3;
mod send;
mod syslog;
mod tail;
mod torture;
