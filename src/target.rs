//! Targets: where archive objects go, through the `object_store` crate.
//!
//! Objects are only ever *created*: a put that would overwrite answers
//! [`Created::AlreadyExists`], and the caller decides whether the object there is
//! its own (a retry after a crash) or another writer's. Errors are sorted into
//! those a retry can fix and those that need an operator.

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use futures::StreamExt;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, WriteMultipart};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;
use tokio::sync::Mutex;

/// Objects up to this size go up in one put; larger ones stream in parts.
const SINGLE_PUT_MAX: u64 = 8 * 1024 * 1024;
const MULTIPART_CHUNK: usize = 8 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// Worth retrying as is: the network, a busy store, a full disk.
    #[error("{0}")]
    Transient(String),
    /// Retrying will not help until someone changes something.
    #[error("{0}")]
    NeedsOperator(String),
}

#[derive(Debug, thiserror::Error)]
#[error("invalid target {spec:?}: {why}")]
pub struct TargetSpecError {
    spec: String,
    why: String,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Created {
    Created,
    AlreadyExists,
}

enum Kind {
    LocalDir(PathBuf),
}

pub struct Target {
    kind: Kind,
    /// Built on first use, so a target that is missing at start-up does not stop ingest.
    store: Mutex<Option<Arc<dyn ObjectStore>>>,
}

impl Target {
    /// Parses a target: a directory path, or a `file://` URL.
    pub fn parse(spec: &str) -> Result<Self, TargetSpecError> {
        let err = |why: &str| TargetSpecError {
            spec: spec.to_owned(),
            why: why.to_owned(),
        };
        let path = if let Some(rest) = spec.strip_prefix("file://") {
            if !rest.starts_with('/') {
                return Err(err(
                    "a file:// URL needs an absolute path, e.g. file:///var/lib/larch/archive",
                ));
            }
            PathBuf::from(rest)
        } else if spec.contains("://") {
            return Err(err(
                "this larch writes to a local directory only; give a path or a file:// URL",
            ));
        } else if spec.is_empty() {
            return Err(err("the target is empty"));
        } else {
            PathBuf::from(spec)
        };
        Ok(Self {
            kind: Kind::LocalDir(path),
            store: Mutex::new(None),
        })
    }

    /// A description safe to print (never holds credentials).
    pub fn describe(&self) -> String {
        match &self.kind {
            Kind::LocalDir(p) => format!("directory {}", p.display()),
        }
    }

    /// The local directory behind the target, if it is one.
    pub fn local_dir(&self) -> Option<&FsPath> {
        match &self.kind {
            Kind::LocalDir(p) => Some(p),
        }
    }

    async fn store(&self) -> Result<Arc<dyn ObjectStore>, TargetError> {
        let mut slot = self.store.lock().await;
        if let Some(store) = slot.as_ref() {
            return Ok(store.clone());
        }
        let store: Arc<dyn ObjectStore> = match &self.kind {
            Kind::LocalDir(dir) => {
                if !dir.is_dir() {
                    return Err(TargetError::NeedsOperator(format!(
                        "the archive directory {} does not exist; create it (or point --target elsewhere) and larch will carry on",
                        dir.display()
                    )));
                }
                Arc::new(LocalFileSystem::new_with_prefix(dir).map_err(classify)?)
            }
        };
        *slot = Some(store.clone());
        Ok(store)
    }

    /// Creates `key` from the file at `source` unless an object is already there.
    pub async fn create(
        &self,
        key: &str,
        source: &FsPath,
        size: u64,
    ) -> Result<Created, TargetError> {
        let store = self.store().await?;
        let location = Path::parse(key).map_err(|e| TargetError::NeedsOperator(e.to_string()))?;
        let result = if size <= SINGLE_PUT_MAX {
            let bytes = tokio::fs::read(source).await.map_err(|e| {
                TargetError::Transient(format!(
                    "cannot read staged object {}: {e}",
                    source.display()
                ))
            })?;
            let options = PutOptions {
                mode: PutMode::Create,
                ..PutOptions::default()
            };
            store
                .put_opts(&location, PutPayload::from(bytes), options)
                .await
                .map(|_| ())
        } else {
            create_large(store.as_ref(), &location, source).await
        };
        match result {
            Ok(()) => Ok(Created::Created),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(Created::AlreadyExists),
            Err(e) => Err(classify(e)),
        }
    }

    /// Whether `key` holds exactly these bytes (same size and SHA-256).
    pub async fn holds(
        &self,
        key: &str,
        size: u64,
        sha256: &[u8; 32],
    ) -> Result<bool, TargetError> {
        let store = self.store().await?;
        let location = Path::parse(key).map_err(|e| TargetError::NeedsOperator(e.to_string()))?;
        let meta = match store.head(&location).await {
            Ok(m) => m,
            Err(object_store::Error::NotFound { .. }) => return Ok(false),
            Err(e) => return Err(classify(e)),
        };
        if meta.size != size {
            return Ok(false);
        }
        let mut stream = store.get(&location).await.map_err(classify)?.into_stream();
        let mut hasher = Sha256::new();
        while let Some(chunk) = stream.next().await {
            hasher.update(chunk.map_err(classify)?);
        }
        Ok(hasher.finalize().as_slice() == sha256)
    }
}

/// Streams a large object into a temporary upload, then links it into place
/// only if nothing is there yet, so readers never see a partial object.
async fn create_large(
    store: &dyn ObjectStore,
    location: &Path,
    source: &FsPath,
) -> object_store::Result<()> {
    let staging = Path::from(format!(
        ".larch-upload/{}.{:016x}",
        location,
        rand::random::<u64>()
    ));
    let mut file =
        tokio::fs::File::open(source)
            .await
            .map_err(|e| object_store::Error::Generic {
                store: "larch",
                source: Box::new(e),
            })?;
    let mut upload = WriteMultipart::new(store.put_multipart(&staging).await?);
    let mut buf = vec![0u8; MULTIPART_CHUNK];
    loop {
        let n = file
            .read(&mut buf)
            .await
            .map_err(|e| object_store::Error::Generic {
                store: "larch",
                source: Box::new(e),
            })?;
        if n == 0 {
            break;
        }
        upload.wait_for_capacity(2).await?;
        upload.write(&buf[..n]);
    }
    upload.finish().await?;
    let linked = store.copy_if_not_exists(&staging, location).await;
    if let Err(e) = store.delete(&staging).await {
        tracing::warn!("could not remove temporary upload {staging}: {e}");
    }
    linked
}

fn classify(e: object_store::Error) -> TargetError {
    use object_store::Error as E;
    let message = e.to_string();
    let needs_operator = match &e {
        E::PermissionDenied { .. }
        | E::Unauthenticated { .. }
        | E::NotSupported { .. }
        | E::NotImplemented { .. } => true,
        E::InvalidPath { .. } | E::UnknownConfigurationKey { .. } => true,
        _ => io_kind(&e).is_some_and(|kind| {
            matches!(
                kind,
                std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem
            )
        }),
    };
    if needs_operator {
        TargetError::NeedsOperator(message)
    } else {
        TargetError::Transient(message)
    }
}

fn io_kind(e: &(dyn std::error::Error + 'static)) -> Option<std::io::ErrorKind> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = current {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        current = err.source();
    }
    None
}
