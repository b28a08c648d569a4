//! What larch reports about itself, built in one place: the spool's counts,
//! what the sync loop last saw, the rules' drops and the room. Served on
//! `/status`, answered to `larch drain`, read by `/metrics`, printed by
//! `larch status`.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::rules::LiveRules;
use crate::spool::{Room, RoomStatus, Spool, SpoolError, SpoolHandle, SpoolSummary};
use crate::sync::{Board, SyncReport};
use crate::telemetry::sources::SourceReport;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Status {
    pub instance: String,
    pub target: String,
    #[serde(flatten)]
    pub spool: SpoolSummary,
    #[serde(flatten)]
    pub sync: SyncReport,
    /// Lines the rules kept out of the spool since start, by rule.
    #[serde(default)]
    pub lines_dropped_by_rule: BTreeMap<String, u64>,
    /// The spool's size and free disk against their limits.
    #[serde(default)]
    pub room: RoomStatus,
    /// What the spool's disk holds, and how long an outage it can ride out.
    #[serde(default)]
    pub outlook: Outlook,
    /// The sources besides HTTP, as each last said of itself.
    #[serde(default)]
    pub sources: Vec<SourceReport>,
}

/// The spool's bytes on disk against the NDJSON they will archive as, and the
/// hours of outage left before the spool refuses lines.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Outlook {
    /// NDJSON bytes the waiting lines make, estimated from their text bytes
    /// and what the lines compressed so far made (none before the first).
    pub ndjson_waiting_bytes: Option<u64>,
    /// The spool's bytes on disk per byte of that NDJSON.
    pub spool_bytes_per_ndjson_byte: Option<f64>,
    /// Hours until the spool reaches `spool.max_size` or `spool.min_free_space`
    /// if nothing were uploaded from now on, at the current intake, with
    /// lines costing the disk what the compressed ones cost. `None` while
    /// nothing comes in (or nothing was compressed yet). It leaves out the
    /// raw blocks still waiting for their piece to fill, and segments kept
    /// for a few of them, so it is an upper bound by about a segment (64
    /// MiB) per part.
    pub outage_hours_left: Option<f64>,
}

impl Outlook {
    pub fn of(spool: &SpoolSummary, room: &RoomStatus) -> Self {
        let ndjson_waiting_bytes = spool
            .compressed
            .ndjson_per_line_byte()
            .map(|ratio| (spool.bytes_waiting as f64 * ratio) as u64);
        let spool_bytes_per_ndjson_byte = ndjson_waiting_bytes
            .filter(|&n| n > 0 && room.spool_bytes > 0)
            .map(|n| room.spool_bytes as f64 / n as f64);
        // The disk an outage takes per second: the intake, compressed as the
        // compactor compresses it (it works while the link is down).
        let disk_per_s = spool
            .compressed
            .gzip_per_line_byte()
            .map(|ratio| room.intake_line_bytes_per_s * ratio)
            .filter(|&rate| rate > 0.0);
        Self {
            ndjson_waiting_bytes,
            spool_bytes_per_ndjson_byte,
            outage_hours_left: disk_per_s.map(|rate| room.room_left_bytes as f64 / rate / 3600.0),
        }
    }
}

/// Builds the [`Status`] of one spool and its sync loop; a running daemon
/// adds its rules and room.
pub struct Reporter {
    pub spool: SpoolHandle,
    pub board: Arc<Board>,
    /// Where the archive goes, as the status names it.
    pub target: String,
    pub running: Option<Running>,
}

/// What only a running daemon has to report.
pub struct Running {
    pub rules: LiveRules,
    pub room: Arc<Room>,
}

impl Reporter {
    /// The status now (reads every part record, off the async runtime).
    pub async fn status(&self) -> Result<Status, SpoolError> {
        let spool = self.spool.run(Spool::summary).await?;
        let (lines_dropped_by_rule, room, sources) = match &self.running {
            Some(r) => (
                r.rules.load().dropped(),
                r.room.status(),
                crate::telemetry::sources::sources(),
            ),
            None => Default::default(),
        };
        Ok(Status {
            instance: self.spool.instance_hex(),
            target: self.target.clone(),
            outlook: Outlook::of(&spool, &room),
            spool,
            sync: self.board.report(),
            lines_dropped_by_rule,
            room,
            sources,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::summary::Compressed;

    #[test]
    fn the_outlook_counts_hours_at_the_compressed_cost_of_the_intake() {
        let mut spool = SpoolSummary {
            bytes_waiting: 1000 << 20,
            ..Default::default()
        };
        let room = RoomStatus {
            spool_bytes: 400 << 20,
            room_left_bytes: 36 << 30,
            intake_line_bytes_per_s: 10.0 * (1 << 20) as f64,
            ..Default::default()
        };
        // Nothing compressed yet: no figure rather than a guess.
        assert_eq!(Outlook::of(&spool, &room), Outlook::default());
        spool.compressed = Compressed {
            members: 10,
            lines: 30_000,
            line_bytes: 8 << 20,
            ndjson_bytes: 16 << 20,
            gzip_bytes: 2 << 20,
        };
        let outlook = Outlook::of(&spool, &room);
        assert_eq!(outlook.ndjson_waiting_bytes, Some(2000 << 20));
        assert_eq!(outlook.spool_bytes_per_ndjson_byte, Some(0.2));
        // 10 MiB/s of text is 2.5 MiB/s on disk: 36 GiB last 14,745.6 s.
        let hours = outlook.outage_hours_left.unwrap();
        assert!(
            (hours - 36.0 * 1024.0 / 2.5 / 3600.0).abs() < 1e-9,
            "{hours}"
        );
        let idle = RoomStatus {
            intake_line_bytes_per_s: 0.0,
            ..room
        };
        assert_eq!(Outlook::of(&spool, &idle).outage_hours_left, None);
    }
}
