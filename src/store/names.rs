//! The part numbers an hour's archive objects have taken, from one listing.
//!
//! Every host of a fleet that archives an account's hour wants the same name,
//! so all but the first need a `.N`. Finding a free one by trying `.1`, `.2`, …
//! in turn cost the k-th host k uploads of its object; one listing of the
//! hour's names tells which are taken instead. The listing starts at the
//! hour's first name: S3, GCS and Azure list in key order and begin there
//! (`start-after`), so it stops at the first name past the hour, a request
//! per 1,000 of the hour's names however full the day's directory is.

use std::collections::BTreeSet;

use futures::StreamExt;
use object_store::path::Path;

use super::errors::classify;
use super::{Target, TargetError};
use crate::hour::ObjectName;

impl Target {
    /// The numbers taken among the names of the hour whose first object is
    /// `first_key` (`…/<account>.<YYYY>-<MM>-<DD>.<HH>00.json.gz`; the first
    /// object counts as 0). A directory with no objects takes none.
    pub async fn numbers_taken(&self, first_key: &str) -> Result<BTreeSet<u32>, TargetError> {
        let bad_key = |e: object_store::path::Error| {
            TargetError::NeedsOperator(format!("bad key {first_key:?}: {e}"))
        };
        let Some((stem, dir)) = first_key
            .strip_suffix(".json.gz")
            .and_then(|stem| Some((stem, stem.rsplit_once('/')?.0)))
        else {
            return Err(TargetError::NeedsOperator(format!(
                "{first_key:?} is not the name of an hour's first archive object"
            )));
        };
        let store = self.store().await?;
        let (dir, offset) = (
            Path::parse(dir).map_err(bad_key)?,
            Path::parse(stem).map_err(bad_key)?,
        );
        // Every name of the hour begins so, and no other name does.
        let of_hour = format!("{stem}.");
        crate::telemetry::upload_request("list");
        let mut listing = store.list_with_offset(Some(&dir), &offset);
        let mut taken = BTreeSet::new();
        let mut seen = 0usize;
        while let Some(item) = listing.next().await {
            seen += 1;
            if seen > 1 && seen % 1000 == 1 {
                // A page holds 1,000 names: this one came with the next request.
                crate::telemetry::upload_request("list");
            }
            let key = match item {
                Ok(meta) => meta.location.to_string(),
                Err(object_store::Error::NotFound { .. }) => break,
                Err(e) => return Err(classify(e)),
            };
            if let Some(name) = key
                .strip_prefix(&of_hour)
                .and_then(|_| ObjectName::parse(&key))
            {
                taken.insert(name.n);
            } else if self.is_cloud() && key > of_hour {
                // Past the hour's names; a local directory lists in no order.
                break;
            }
        }
        Ok(taken)
    }
}
