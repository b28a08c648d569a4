//! Reading a target back, for `larch restore` and `larch verify`: listing keys
//! under a prefix, asking after one object, and reading one as a blocking
//! stream, so it can be gunzipped without holding it whole in memory.

use std::io;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{Attribute, GetOptions, ObjectStoreExt};
use tokio::sync::mpsc;
use tokio_util::io::{StreamReader, SyncIoBridge};

use super::errors::classify;
use super::{Target, TargetError, META_INSTANCE, META_SHA256};
use crate::clock::EpochMs;

/// Chunks of an object read ahead of the reader.
const READ_AHEAD: usize = 4;

/// An object as a listing shows it.
#[derive(Debug, Clone)]
pub struct Listed {
    pub key: String,
    pub size: u64,
    pub last_modified_ms: EpochMs,
}

/// An object as a HEAD request shows it.
#[derive(Debug, Clone)]
pub struct Head {
    pub size: u64,
    pub last_modified_ms: EpochMs,
    /// The `larch_instance` metadata, where the store keeps metadata.
    pub instance: Option<String>,
    /// The `larch_sha256` metadata, hex.
    pub sha256: Option<String>,
}

fn path(key: &str) -> Result<Path, TargetError> {
    Path::parse(key).map_err(|e| TargetError::NeedsOperator(format!("bad key {key:?}: {e}")))
}

/// The path a listing of `prefix` (a whole segment, `/` at its end or not)
/// starts from; none for the whole store.
fn under(prefix: &str) -> Result<Option<Path>, TargetError> {
    if prefix.is_empty() {
        Ok(None)
    } else {
        path(prefix.trim_end_matches('/')).map(Some)
    }
}

impl Target {
    /// Every object under `prefix` (a whole path segment, e.g.
    /// `year=2026/month=11/day=26`; empty for everything). A prefix with no
    /// objects is an empty list, not an error.
    pub async fn list(&self, prefix: &str) -> Result<Vec<Listed>, TargetError> {
        let store = self.store().await?;
        let prefix = under(prefix)?;
        let mut listing = store.list(prefix.as_ref());
        let mut out = Vec::new();
        while let Some(item) = listing.next().await {
            match item {
                Ok(meta) => out.push(Listed {
                    key: meta.location.to_string(),
                    size: meta.size,
                    last_modified_ms: meta.last_modified.timestamp_millis(),
                }),
                Err(object_store::Error::NotFound { .. }) => break,
                Err(e) => return Err(classify(e)),
            }
        }
        Ok(out)
    }

    /// The names of the segments directly under `prefix` that hold objects
    /// (`edge/` holding `edge/shop-17/…` gives `shop-17`): the hosts of a
    /// `{host}` key prefix. A prefix with nothing under it gives none.
    pub async fn segments_under(&self, prefix: &str) -> Result<Vec<String>, TargetError> {
        let store = self.store().await?;
        let prefix = under(prefix)?;
        match store.list_with_delimiter(prefix.as_ref()).await {
            Ok(listing) => Ok(listing
                .common_prefixes
                .iter()
                .filter_map(|p| p.filename().map(str::to_owned))
                .collect()),
            Err(object_store::Error::NotFound { .. }) => Ok(Vec::new()),
            Err(e) => Err(classify(e)),
        }
    }

    /// The object at `key`, or `None` if there is none.
    pub async fn head(&self, key: &str) -> Result<Option<Head>, TargetError> {
        let store = self.store().await?;
        let options = GetOptions {
            head: true,
            ..GetOptions::default()
        };
        let found = match store.get_opts(&path(key)?, options).await {
            Ok(found) => found,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(classify(e)),
        };
        let meta = |name: &str| {
            found
                .attributes
                .get(&Attribute::Metadata(name.to_owned().into()))
                .map(|v| v.as_ref().to_owned())
        };
        Ok(Some(Head {
            size: found.meta.size,
            last_modified_ms: found.meta.last_modified.timestamp_millis(),
            instance: meta(META_INSTANCE),
            sha256: meta(META_SHA256),
        }))
    }

    /// The object at `key` as a blocking reader: chunks are fetched by a task on
    /// the current runtime, a few ahead, so read it from a blocking thread.
    pub async fn open(&self, key: &str) -> Result<ObjectReader, TargetError> {
        let store = self.store().await?;
        let found = store.get(&path(key)?).await.map_err(|e| match e {
            object_store::Error::NotFound { .. } => {
                TargetError::NeedsOperator(format!("{key} does not exist"))
            }
            e => classify(e),
        })?;
        let (tx, rx) = mpsc::channel(READ_AHEAD);
        let mut stream = found.into_stream();
        tokio::spawn(async move {
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| io::Error::other(classify(e).to_string()));
                let failed = chunk.is_err();
                if tx.send(chunk).await.is_err() || failed {
                    return;
                }
            }
        });
        let chunks = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|chunk| (chunk, rx))
        });
        Ok(SyncIoBridge::new(StreamReader::new(chunks.boxed())))
    }
}

/// A downloading object, read as `std::io::Read` (from a blocking thread).
pub type ObjectReader = SyncIoBridge<StreamReader<BoxStream<'static, io::Result<Bytes>>, Bytes>>;
