//! Targets: where archive objects go, through the `object_store` crate: a local
//! directory, S3 and S3-compatible stores, Google Cloud Storage, Azure Blob.
//!
//! Objects are only ever *created*: a put that would overwrite answers
//! [`Created::AlreadyExists`], and the caller decides whether the object there is
//! its own (a retry after a crash) or another writer's. Every cloud object
//! carries metadata naming the part it holds and its checksum, so that check is
//! one HEAD request. Before the first upload the store is probed once for
//! create-only writes (see `probe`); a store without them is used only in
//! single-writer mode, which the user must choose.

mod aws_profile;
mod errors;
mod local;
mod names;
pub mod probe;
pub mod rate;
pub mod read;
pub mod spec;

use std::collections::HashMap;
use std::path::Path as FsPath;
use std::sync::Arc;

use futures::StreamExt;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    Attribute, Attributes, GetOptions, ObjectStore, ObjectStoreExt, PutMode, PutMultipartOptions,
    PutOptions, PutPayload, WriteMultipart,
};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;
use tokio::sync::Mutex;

use errors::classify;
pub use errors::TargetError;
pub use spec::{Location, TargetConfig, TargetSpecError};

/// Objects up to this size go up in one put; larger ones stream in parts to a
/// temporary key and are then copied into place only if the key is free.
const SINGLE_PUT_MAX: u64 = 8 * 1024 * 1024;
const MULTIPART_CHUNK: usize = 8 * 1024 * 1024;
/// Where large objects are assembled before they are linked into place.
const UPLOAD_AREA: &str = ".larch-upload";
/// Temporary uploads kept for parts whose name was taken, at most.
const MAX_PARKED: usize = 8;

/// Metadata keys on every cloud object (`x-amz-meta-…` on S3).
pub const META_INSTANCE: &str = "larch_instance";
pub const META_PART: &str = "larch_part";
pub const META_SHA256: &str = "larch_sha256";
pub const META_LINES: &str = "larch_lines";

#[derive(Debug, PartialEq, Eq)]
pub enum Created {
    Created,
    AlreadyExists,
}

/// Who wrote an object and what it must hold.
#[derive(Debug, Clone)]
pub struct Ownership {
    /// The spool instance ID, hex.
    pub instance: String,
    /// `account/hour/part N`.
    pub part: String,
    pub sha256: [u8; 32],
    pub lines: u64,
}

impl Ownership {
    fn attributes(&self) -> Attributes {
        let mut a = Attributes::new();
        a.insert(
            Attribute::Metadata(META_INSTANCE.into()),
            self.instance.clone().into(),
        );
        a.insert(
            Attribute::Metadata(META_PART.into()),
            self.part.clone().into(),
        );
        a.insert(
            Attribute::Metadata(META_SHA256.into()),
            hex::encode(self.sha256).into(),
        );
        a.insert(
            Attribute::Metadata(META_LINES.into()),
            self.lines.to_string().into(),
        );
        // The object *is* a gzip file. A Content-Encoding of gzip would make
        // HTTP clients unzip it on download and hand readers plain NDJSON.
        a.insert(Attribute::ContentType, "application/gzip".into());
        a
    }
}

/// What the store can do, found by the probe.
#[derive(Debug, Clone, Copy)]
struct Capabilities {
    conditional_create: bool,
}

pub struct Target {
    location: Location,
    config: TargetConfig,
    /// Built on first use, so a target that is missing at start-up does not stop ingest.
    store: Mutex<Option<Arc<dyn ObjectStore>>>,
    capabilities: Mutex<Option<Capabilities>>,
    rate: Option<rate::UploadRate>,
    /// Temporary uploads of large objects whose name another writer took
    /// first, by the SHA-256 of their bytes: the next name is tried with a
    /// copy in the store, not by sending the bytes again.
    parked: parking_lot::Mutex<HashMap<[u8; 32], Path>>,
}

impl Target {
    /// Checks the URL and the store's settings; connects nothing yet.
    pub fn new(config: TargetConfig) -> Result<Self, TargetSpecError> {
        let location = Location::parse(&config.url)?;
        if !matches!(location, Location::LocalDir(_)) {
            // Build once now so that bad settings stop start-up, not the first upload.
            spec::build_cloud(&location, &config)?;
        }
        Ok(Self {
            rate: config.upload_rate_limit.map(rate::UploadRate::new),
            location,
            config,
            store: Mutex::new(None),
            capabilities: Mutex::new(None),
            parked: parking_lot::Mutex::new(HashMap::new()),
        })
    }

    /// A target from a URL alone, with default settings.
    pub fn parse(url: &str) -> Result<Self, TargetSpecError> {
        Self::new(TargetConfig {
            url: url.to_owned(),
            ..TargetConfig::default()
        })
    }

    /// A description safe to print (never holds credentials).
    pub fn describe(&self) -> String {
        let mut d = self.location.describe();
        if self.config.single_writer {
            d.push_str(" (single-writer mode)");
        }
        if let (Some(rate), false) = (&self.rate, matches!(self.location, Location::LocalDir(_))) {
            d.push_str(&format!(
                ", uploads limited to {}/s",
                crate::units::mib(rate.bytes_per_second())
            ));
        }
        d
    }

    pub fn single_writer(&self) -> bool {
        self.config.single_writer
    }

    /// The local directory behind the target, if it is one.
    pub fn local_dir(&self) -> Option<&FsPath> {
        match &self.location {
            Location::LocalDir(p) => Some(p),
            _ => None,
        }
    }

    fn is_cloud(&self) -> bool {
        !matches!(self.location, Location::LocalDir(_))
    }

    async fn store(&self) -> Result<Arc<dyn ObjectStore>, TargetError> {
        let mut slot = self.store.lock().await;
        if let Some(store) = slot.as_ref() {
            return Ok(store.clone());
        }
        let store: Arc<dyn ObjectStore> = match &self.location {
            Location::LocalDir(dir) => {
                if !dir.is_dir() {
                    return Err(TargetError::NeedsOperator(format!(
                        "the archive directory {} does not exist; create it (or point --target elsewhere) and larch will carry on",
                        dir.display()
                    )));
                }
                Arc::new(LocalFileSystem::new_with_prefix(dir).map_err(classify)?)
            }
            cloud => spec::build_cloud(cloud, &self.config)
                .map_err(|e| TargetError::NeedsOperator(e.to_string()))?,
        };
        *slot = Some(store.clone());
        Ok(store)
    }

    /// Runs the compatibility probe against the store and reports each point.
    /// A report without problems also settles what uploads may rely on, so the
    /// first upload after the daemon's start-up check does not probe again
    /// (three requests per start a fleet of thousands would pay twice).
    pub async fn probe(&self) -> Result<probe::Report, TargetError> {
        let store = self.store().await?;
        // Held through the probe: an upload starting meanwhile waits for its
        // answer rather than probing a second time.
        let mut slot = self.capabilities.lock().await;
        let report = probe::run(store.as_ref(), &self.location, &self.config).await;
        if self.is_cloud() && report.problem().is_ok() && slot.is_none() {
            let found = Capabilities {
                conditional_create: report.conditional_create.passed(),
            };
            // Unusable capabilities stay unsettled: the upload asks again
            // and says what to do.
            if let Ok(caps) = self.settle(found) {
                *slot = Some(caps);
            }
        }
        Ok(report)
    }

    /// Probes the store once per process before the first upload.
    async fn capabilities(&self, store: &dyn ObjectStore) -> Result<Capabilities, TargetError> {
        let mut slot = self.capabilities.lock().await;
        if let Some(caps) = *slot {
            return Ok(caps);
        }
        let caps = if self.is_cloud() {
            let report = probe::run(store, &self.location, &self.config).await;
            report.problem()?;
            Capabilities {
                conditional_create: report.conditional_create.passed(),
            }
        } else {
            Capabilities {
                conditional_create: true,
            }
        };
        let caps = self.settle(caps)?;
        *slot = Some(caps);
        Ok(caps)
    }

    /// Whether uploads may go ahead with what the store can do: without
    /// create-only writes only in single-writer mode, which is logged.
    fn settle(&self, caps: Capabilities) -> Result<Capabilities, TargetError> {
        if !caps.conditional_create && !self.config.single_writer {
            return Err(TargetError::NeedsOperator(format!(
                "{} does not support create-only writes, so two writers could overwrite each other's objects. If this larch is the only one writing under this prefix, set target.single_writer = true in the config",
                self.location.describe()
            )));
        }
        if !caps.conditional_create {
            tracing::warn!(target = %self.location.describe(), "single-writer mode: the store cannot refuse overwrites, so larch checks for an existing object before each write; no other writer may use this prefix");
        }
        Ok(caps)
    }

    /// Creates `key` from the file at `source` unless an object is already there.
    /// `untried`: the caller chose `key` and never tried it, so an object found
    /// there is another writer's, and a large upload is kept for the next name.
    pub async fn create(
        &self,
        key: &str,
        source: &FsPath,
        size: u64,
        owner: &Ownership,
        untried: bool,
    ) -> Result<Created, TargetError> {
        let store = self.store().await?;
        let location = Path::parse(key).map_err(|e| TargetError::NeedsOperator(e.to_string()))?;
        if let Location::LocalDir(root) = &self.location {
            let (root, key, source) = (root.clone(), location.to_string(), source.to_owned());
            let modes = self.config.modes();
            return tokio::task::spawn_blocking(move || local::create(&root, &key, &source, modes))
                .await
                .map_err(|e| TargetError::Transient(format!("local write task failed: {e}")))?;
        }
        let caps = self.capabilities(store.as_ref()).await?;
        if !caps.conditional_create && exists(store.as_ref(), &location).await? {
            return Ok(Created::AlreadyExists);
        }
        let attributes = owner.attributes();
        let mode = if caps.conditional_create {
            PutMode::Create
        } else {
            PutMode::Overwrite
        };
        let result = if size <= SINGLE_PUT_MAX {
            crate::telemetry::upload_request("put");
            let bytes = tokio::fs::read(source).await.map_err(|e| {
                TargetError::Transient(format!(
                    "cannot read staged object {}: {e}",
                    source.display()
                ))
            })?;
            if let Some(rate) = &self.rate {
                rate.take(bytes.len() as u64).await;
            }
            crate::telemetry::sent_to_store(bytes.len());
            let options = PutOptions {
                mode,
                attributes,
                ..PutOptions::default()
            };
            store
                .put_opts(&location, PutPayload::from(bytes), options)
                .await
                .map(|_| ())
        } else {
            let parked = self.parked.lock().remove(&owner.sha256);
            let may_park =
                untried && caps.conditional_create && self.parked.lock().len() < MAX_PARKED;
            let (result, park) = create_large(
                store.as_ref(),
                &location,
                source,
                attributes,
                caps.conditional_create,
                self.rate.as_ref(),
                parked,
                may_park,
            )
            .await;
            if let Some(staging) = park {
                self.parked.lock().insert(owner.sha256, staging);
            }
            result
        };
        match result {
            Ok(()) => Ok(Created::Created),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(Created::AlreadyExists),
            Err(e @ object_store::Error::Precondition { .. }) => {
                tracing::debug!("create of {key} refused: {e}");
                Ok(Created::AlreadyExists)
            }
            Err(e) => Err(classify(e)),
        }
    }

    /// Whether `key` holds exactly these bytes (same size and SHA-256). Cloud
    /// objects answer from their metadata; others (and large objects, whose
    /// server-side copy drops metadata) are read back and hashed.
    pub async fn holds(
        &self,
        key: &str,
        size: u64,
        sha256: &[u8; 32],
    ) -> Result<bool, TargetError> {
        let store = self.store().await?;
        let location = Path::parse(key).map_err(|e| TargetError::NeedsOperator(e.to_string()))?;
        let head = GetOptions {
            head: true,
            ..GetOptions::default()
        };
        crate::telemetry::upload_request("head");
        let found = match store.get_opts(&location, head).await {
            Ok(found) => found,
            Err(object_store::Error::NotFound { .. }) => return Ok(false),
            Err(e) => return Err(classify(e)),
        };
        if found.meta.size != size {
            return Ok(false);
        }
        if let Some(recorded) = found
            .attributes
            .get(&Attribute::Metadata(META_SHA256.into()))
        {
            return Ok(recorded.as_ref() == hex::encode(sha256));
        }
        crate::telemetry::upload_request("get");
        let mut stream = store.get(&location).await.map_err(classify)?.into_stream();
        let mut hasher = Sha256::new();
        while let Some(chunk) = stream.next().await {
            hasher.update(chunk.map_err(classify)?);
        }
        Ok(hasher.finalize().as_slice() == sha256)
    }
}

async fn exists(store: &dyn ObjectStore, location: &Path) -> Result<bool, TargetError> {
    crate::telemetry::upload_request("head");
    match store.head(location).await {
        Ok(_) => Ok(true),
        Err(object_store::Error::NotFound { .. }) => Ok(false),
        Err(e) => Err(classify(e)),
    }
}

/// Streams a large object into a temporary upload, then links it into place
/// only if nothing is there yet, so readers never see a partial object. A
/// temporary upload `parked` from an earlier attempt with the same bytes is
/// linked without sending them again. If the name is taken and `may_park`,
/// the temporary upload is kept and returned, for the next name.
#[allow(clippy::too_many_arguments)]
async fn create_large(
    store: &dyn ObjectStore,
    location: &Path,
    source: &FsPath,
    attributes: Attributes,
    conditional: bool,
    rate: Option<&rate::UploadRate>,
    parked: Option<Path>,
    may_park: bool,
) -> (object_store::Result<()>, Option<Path>) {
    if let Some(staging) = parked {
        crate::telemetry::upload_request("copy");
        match link(store, &staging, location, conditional, may_park).await {
            // Gone (a lifecycle rule, another cleaner): upload afresh.
            (Err(object_store::Error::NotFound { .. }), _) => {}
            done => return done,
        }
    }
    crate::telemetry::upload_request("put");
    let staging = Path::from(format!(
        "{UPLOAD_AREA}/{}.{:016x}",
        location,
        rand::random::<u64>()
    ));
    if let Err(e) = upload_large(store, &staging, source, attributes, rate).await {
        return (Err(e), None);
    }
    link(store, &staging, location, conditional, may_park).await
}

/// Sends the file at `source` to `staging` in parts.
async fn upload_large(
    store: &dyn ObjectStore,
    staging: &Path,
    source: &FsPath,
    attributes: Attributes,
    rate: Option<&rate::UploadRate>,
) -> object_store::Result<()> {
    let io = |e: std::io::Error| object_store::Error::Generic {
        store: "larch",
        source: Box::new(e),
    };
    let mut file = tokio::fs::File::open(source).await.map_err(io)?;
    let options = PutMultipartOptions {
        attributes,
        ..PutMultipartOptions::default()
    };
    let mut upload = WriteMultipart::new(store.put_multipart_opts(staging, options).await?);
    let mut buf = vec![0u8; MULTIPART_CHUNK];
    // Under a rate limit, small reads keep the bytes flowing evenly.
    let read_size = if rate.is_some() { 64 * 1024 } else { buf.len() };
    loop {
        let n = file.read(&mut buf[..read_size]).await.map_err(io)?;
        if n == 0 {
            break;
        }
        if let Some(rate) = rate {
            rate.take(n as u64).await;
        }
        upload.wait_for_capacity(2).await?;
        upload.write(&buf[..n]);
        crate::telemetry::sent_to_store(n);
    }
    upload.finish().await?;
    Ok(())
}

/// Copies `staging` to `location` (only if free when `conditional`), then
/// removes it, unless the name was taken and `may_park`: then it is returned.
async fn link(
    store: &dyn ObjectStore,
    staging: &Path,
    location: &Path,
    conditional: bool,
    may_park: bool,
) -> (object_store::Result<()>, Option<Path>) {
    let linked = if conditional {
        store.copy_if_not_exists(staging, location).await
    } else {
        store.copy(staging, location).await
    };
    let taken = matches!(
        linked,
        Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. })
    );
    if taken && may_park {
        return (linked, Some(staging.clone()));
    }
    if !matches!(linked, Err(object_store::Error::NotFound { .. })) {
        if let Err(e) = store.delete(staging).await {
            tracing::warn!("could not remove temporary upload {staging}: {e}");
        }
    }
    (linked, None)
}
