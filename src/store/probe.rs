//! The store compatibility probe: is the target reachable, writable, does it
//! accept the encryption larch asks for, and can it refuse to overwrite?
//!
//! It writes one small object under `.larch-probe/`, tries to create it a second
//! time (which must be refused), and deletes it. Run before the first upload and
//! by `larch check-target`.

use std::fmt;

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use super::errors::{classify, http_status, TargetError};
use super::spec::{s3_encryption, Location, TargetConfig};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    Passed(String),
    Failed(String),
    NotChecked(String),
}

impl Check {
    pub fn passed(&self) -> bool {
        matches!(self, Check::Passed(_))
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Check::Passed(s) => write!(f, "ok       {s}"),
            Check::Failed(s) => write!(f, "FAILED   {s}"),
            Check::NotChecked(s) => write!(f, "-        {s}"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Report {
    pub target: String,
    pub reachable: Check,
    pub writable: Check,
    pub encryption: Check,
    pub conditional_create: Check,
    /// Set when the failure is one a retry may fix (the store was down or busy).
    transient: Option<TargetError>,
}

impl Report {
    /// The reason uploads cannot start yet, if any. Conditional create is judged
    /// by the caller, which knows whether single-writer mode was chosen.
    pub fn problem(&self) -> Result<(), TargetError> {
        if let Some(t) = &self.transient {
            return Err(t.clone());
        }
        for check in [&self.reachable, &self.writable, &self.encryption] {
            if let Check::Failed(why) = check {
                return Err(TargetError::NeedsOperator(format!(
                    "{}: {why}",
                    self.target
                )));
            }
        }
        Ok(())
    }

    /// Whether uploads can go ahead, given the single-writer choice.
    pub fn usable(&self, single_writer: bool) -> bool {
        self.problem().is_ok() && (self.conditional_create.passed() || single_writer)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "target              {}", self.target)?;
        writeln!(f, "reachable           {}", self.reachable)?;
        writeln!(f, "writable            {}", self.writable)?;
        writeln!(f, "encryption          {}", self.encryption)?;
        write!(f, "conditional create  {}", self.conditional_create)
    }
}

fn encryption_asked(location: &Location, config: &TargetConfig) -> Option<String> {
    match location {
        Location::S3 { .. } => Some(s3_encryption(&config.s3)).filter(|e| e != "none"),
        _ => None,
    }
}

pub async fn run(store: &dyn ObjectStore, location: &Location, config: &TargetConfig) -> Report {
    let asked = encryption_asked(location, config);
    let mut report = Report {
        target: location.describe(),
        reachable: Check::NotChecked("not tried".into()),
        writable: Check::NotChecked("not tried".into()),
        encryption: match (&asked, location) {
            (None, Location::S3 { .. }) => {
                Check::NotChecked("none asked (server_side_encryption = \"none\")".into())
            }
            (None, Location::LocalDir(_)) => {
                Check::NotChecked("a local directory: use disk encryption".into())
            }
            (None, _) => Check::NotChecked("the store encrypts every object at rest".into()),
            (Some(_), _) => Check::NotChecked("not tried".into()),
        },
        conditional_create: Check::NotChecked("not tried".into()),
        transient: None,
    };
    let key = Path::from(format!(".larch-probe/{:016x}", rand::random::<u64>()));
    let create = PutOptions {
        mode: PutMode::Create,
        ..PutOptions::default()
    };
    let mut first = store
        .put_opts(
            &key,
            PutPayload::from_static(b"larch probe\n"),
            create.clone(),
        )
        .await;
    let mut create_switched_off = false;
    if let Err(object_store::Error::NotImplemented { .. }) = first {
        // The client is set not to send create-only writes: check the rest with a plain put.
        create_switched_off = true;
        report.conditional_create = Check::Failed(
            "the store's client is set not to send create-only writes (conditional_put)".into(),
        );
        first = store
            .put(&key, PutPayload::from_static(b"larch probe\n"))
            .await;
    }
    match first {
        Ok(_) => {
            report.reachable = Check::Passed("answered".into());
            report.writable = Check::Passed("created a test object".into());
            if let Some(asked) = &asked {
                report.encryption =
                    Check::Passed(format!("accepted x-amz-server-side-encryption: {asked}"));
            }
        }
        Err(e) => {
            let status = http_status(&e);
            let error = classify(e);
            match (&error, status) {
                (TargetError::Unreachable(msg), _) | (TargetError::Transient(msg), None) => {
                    report.reachable = Check::Failed(msg.clone());
                    report.transient = Some(error.clone());
                }
                (TargetError::Transient(msg), Some(_)) => {
                    report.reachable = Check::Passed("answered".into());
                    report.writable = Check::Failed(msg.clone());
                    report.transient = Some(error.clone());
                }
                (TargetError::NeedsOperator(msg), Some(400 | 501)) if asked.is_some() => {
                    report.reachable = Check::Passed("answered".into());
                    report.encryption = Check::Failed(format!(
                        "the store refused the encryption header; set [s3] server_side_encryption to one it supports, or to \"none\" to store unencrypted: {msg}"
                    ));
                }
                (TargetError::NeedsOperator(msg), _) => {
                    report.reachable = Check::Passed("answered".into());
                    report.writable = Check::Failed(msg.clone());
                }
            }
            return report;
        }
    }
    if create_switched_off {
        if let Err(e) = store.delete(&key).await {
            tracing::warn!("could not delete the probe object {key}: {e}");
        }
        return report;
    }
    report.conditional_create = match store
        .put_opts(&key, PutPayload::from_static(b"larch probe\n"), create)
        .await
    {
        Err(object_store::Error::AlreadyExists { .. })
        | Err(object_store::Error::Precondition { .. }) => {
            Check::Passed("a second create of the same key was refused".into())
        }
        Ok(_) => Check::Failed(
            "the store overwrote an existing object on a create-only write (If-None-Match: * ignored)"
                .into(),
        ),
        Err(object_store::Error::NotImplemented { .. } | object_store::Error::NotSupported { .. }) => {
            Check::Failed("the store does not support create-only writes".into())
        }
        Err(e) => {
            let error = classify(e);
            if !error.needs_operator() {
                report.transient = Some(error.clone());
            }
            Check::Failed(error.to_string())
        }
    };
    if let Err(e) = store.delete(&key).await {
        tracing::warn!("could not delete the probe object {key}: {e}");
    }
    report
}
