//! Where every source hands its lines over: the rules decide what is kept,
//! the clock stamps what comes in, and the spool's committer makes it durable
//! before anything is acknowledged. HTTP, tailed files and every other source
//! take one [`Intake`], so none of them lists these again.

use crate::clock::SharedClock;
use crate::rules::LiveRules;
use crate::spool::{Committer, SpoolHandle};

#[derive(Clone)]
pub struct Intake {
    pub committer: Committer,
    pub rules: LiveRules,
    pub clock: SharedClock,
    /// For what a source keeps in the spool besides lines (file positions).
    pub spool: SpoolHandle,
}
