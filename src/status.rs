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
        let (lines_dropped_by_rule, room) = match &self.running {
            Some(r) => (r.rules.load().dropped(), r.room.status()),
            None => Default::default(),
        };
        Ok(Status {
            instance: self.spool.instance_hex(),
            target: self.target.clone(),
            spool,
            sync: self.board.report(),
            lines_dropped_by_rule,
            room,
        })
    }
}
