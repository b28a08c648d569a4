//! Target URLs and their settings, turned into an `object_store` client.
//!
//! `file://DIR` (or a plain path), `s3://BUCKET[/PREFIX]`, `gs://BUCKET[/PREFIX]`,
//! `az://CONTAINER[/PREFIX]`. Each store reads its credentials from the standard
//! places (environment, instance metadata, web identity, service account files) and
//! takes further settings from the config's `[s3]`, `[gcs]` or `[azure]` table,
//! whose keys are the `object_store` option names (`region`, `endpoint`, ...).
//! Nothing here ever prints a setting's value: some of them are secrets.
//!
//! (Over 500 lines with its tests, which take the last 150; the code is one
//! table of stores and their options.)

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::prefix::PrefixStore;
use object_store::{ClientConfigKey, ObjectStore, RetryConfig};

/// What the user configured: the URL, the options of its store, and whether this
/// larch may assume it is the only writer under the prefix.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TargetConfig {
    pub url: String,
    pub s3: BTreeMap<String, String>,
    pub gcs: BTreeMap<String, String>,
    pub azure: BTreeMap<String, String>,
    pub single_writer: bool,
    /// Bytes per second all uploads together may send (cloud targets).
    pub upload_rate_limit: Option<u64>,
    /// A local archive's objects readable by the group (0640 in 0750
    /// directories) instead of larch's user alone (0600 in 0700).
    pub local_group_read: bool,
}

impl TargetConfig {
    /// The modes of a local archive's objects and the directories made for them.
    pub fn modes(&self) -> crate::files::Modes {
        crate::files::Modes::archive(self.local_group_read)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("invalid target {spec:?}: {why}")]
pub struct TargetSpecError {
    pub spec: String,
    pub why: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    LocalDir(PathBuf),
    S3 { bucket: String, prefix: String },
    Gcs { bucket: String, prefix: String },
    Azure { container: String, prefix: String },
}

/// Shown instead of a secret store option's value.
pub const REDACTED: &str = "<redacted>";

/// Words of an option name (split at `_`) that make its value a secret:
/// `secret_access_key`, `session_token`, `sas_token`, `access_key` and
/// `account_key` (Azure), `client_secret`, `service_account_key` (a service
/// account's JSON), `sse_customer_key_base64`, `bearer_token`, `password`, ...
const SECRET_WORDS: &[&str] = &[
    "secret",
    "key",
    "token",
    "password",
    "passwd",
    "credential",
    "credentials",
    "sas",
];

/// Last words of names that only point at or identify a secret: `access_key_id`,
/// `sse_kms_key_id`, `web_identity_token_file`, `sse_bucket_key_enabled`,
/// `container_credentials_relative_uri`, `fabric_token_service_url`.
const NOT_SECRET_LAST_WORDS: &[&str] = &["id", "file", "path", "enabled", "url", "uri"];

/// Whether a store option's value must never be shown, by its name; a value
/// that is a URL with a password in it (a `proxy_url`, say) never is either.
/// Errs on the side of hiding: an unknown name with a secret word is hidden.
pub fn is_secret_option(name: &str, value: &str) -> bool {
    let name = name.to_ascii_lowercase();
    let words: Vec<&str> = name.split(['_', '-', '.']).collect();
    let names_a_secret = words.iter().any(|w| SECRET_WORDS.contains(w))
        && !words
            .last()
            .is_some_and(|last| NOT_SECRET_LAST_WORDS.contains(last));
    names_a_secret || url::Url::parse(value).is_ok_and(|u| u.password().is_some())
}

/// Server-side encryption asked of S3 unless the config says otherwise.
const DEFAULT_S3_ENCRYPTION: &str = "AES256";
/// The server-side encryption an S3 target asks for: the config's
/// `server_side_encryption` (or `sse`), else `AWS_SERVER_SIDE_ENCRYPTION`, else AES256.
pub fn s3_encryption(options: &BTreeMap<String, String>) -> String {
    options
        .get("server_side_encryption")
        .or_else(|| options.get("sse"))
        .cloned()
        .or_else(|| std::env::var("AWS_SERVER_SIDE_ENCRYPTION").ok())
        .unwrap_or_else(|| DEFAULT_S3_ENCRYPTION.to_owned())
}

/// Our own retry loop retries forever; the client's only covers short blips.
const CLIENT_RETRIES: usize = 3;

impl Location {
    pub fn parse(spec: &str) -> Result<Self, TargetSpecError> {
        let err = |why: &str| TargetSpecError {
            spec: spec.to_owned(),
            why: why.to_owned(),
        };
        if spec.is_empty() {
            return Err(err("the target is empty"));
        }
        let Some((scheme, rest)) = spec.split_once("://") else {
            return Ok(Location::LocalDir(PathBuf::from(spec)));
        };
        if scheme == "file" {
            if !rest.starts_with('/') {
                return Err(err(
                    "a file:// URL needs an absolute path, e.g. file:///var/lib/larch/archive",
                ));
            }
            return Ok(Location::LocalDir(PathBuf::from(rest)));
        }
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.contains('@') || bucket.contains(':') {
            return Err(err(
                "credentials and ports do not go in the target URL; use the environment or the config's store table",
            ));
        }
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
        if !bucket_ok {
            return Err(err(
                "the bucket or container name must be 3 to 63 letters, digits, '-', '.' or '_'",
            ));
        }
        let prefix = prefix.trim_end_matches('/');
        let prefix_ok = prefix.is_empty()
            || prefix.split('/').all(|seg| {
                !seg.is_empty()
                    && seg != "."
                    && seg != ".."
                    && seg
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-._=".contains(&b))
            });
        if !prefix_ok {
            return Err(err(
                "the prefix may hold letters, digits, '-', '.', '_', '=' and '/' between non-empty segments",
            ));
        }
        let (bucket, prefix) = (bucket.to_owned(), prefix.to_owned());
        match scheme {
            "s3" | "s3a" => Ok(Location::S3 { bucket, prefix }),
            "gs" | "gcs" => Ok(Location::Gcs { bucket, prefix }),
            "az" | "azure" => Ok(Location::Azure {
                container: bucket,
                prefix,
            }),
            _ => Err(err(
                "the scheme must be file://, s3://, gs:// or az:// (or give a directory path)",
            )),
        }
    }

    /// A description safe to print: never holds credentials.
    pub fn describe(&self) -> String {
        let with_prefix = |scheme: &str, bucket: &str, prefix: &str| {
            if prefix.is_empty() {
                format!("{scheme}://{bucket}")
            } else {
                format!("{scheme}://{bucket}/{prefix}")
            }
        };
        match self {
            Location::LocalDir(p) => format!("directory {}", p.display()),
            Location::S3 { bucket, prefix } => with_prefix("s3", bucket, prefix),
            Location::Gcs { bucket, prefix } => with_prefix("gs", bucket, prefix),
            Location::Azure { container, prefix } => with_prefix("az", container, prefix),
        }
    }
}

fn option_error(store: &str, key: &str, why: impl std::fmt::Display) -> TargetSpecError {
    TargetSpecError {
        spec: format!("[{store}] {key}"),
        why: why.to_string(),
    }
}

fn parse_bool(store: &str, key: &str, value: &str) -> Result<bool, TargetSpecError> {
    match value.trim() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(option_error(store, key, "must be true or false")),
    }
}

fn retry() -> RetryConfig {
    RetryConfig {
        max_retries: CLIENT_RETRIES,
        retry_timeout: Duration::from_secs(60),
        ..RetryConfig::default()
    }
}

/// Builds the client for a cloud location. The local directory is built by the caller.
pub fn build_cloud(
    location: &Location,
    config: &TargetConfig,
) -> Result<Arc<dyn ObjectStore>, TargetSpecError> {
    let (store, prefix): (Arc<dyn ObjectStore>, &str) = match location {
        Location::LocalDir(p) => {
            return Err(TargetSpecError {
                spec: p.display().to_string(),
                why: "a directory is not a cloud store".into(),
            })
        }
        Location::S3 { bucket, prefix } => (Arc::new(build_s3(bucket, &config.s3)?), prefix),
        Location::Gcs { bucket, prefix } => (Arc::new(build_gcs(bucket, &config.gcs)?), prefix),
        Location::Azure { container, prefix } => {
            (Arc::new(build_azure(container, &config.azure)?), prefix)
        }
    };
    if prefix.is_empty() {
        Ok(store)
    } else {
        Ok(Arc::new(PrefixStore::new(store, prefix)))
    }
}

fn build_s3(
    bucket: &str,
    options: &BTreeMap<String, String>,
) -> Result<object_store::aws::AmazonS3, TargetSpecError> {
    const STORE: &str = "s3";
    let mut builder = AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_retry(retry())
        .with_config(AmazonS3ConfigKey::Client(ClientConfigKey::Timeout), "120s")
        .with_config(
            AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout),
            "10s",
        )
        // Large objects are uploaded beside their key, then copied into place
        // only if the key is free: S3's native way to do that.
        .with_config(AmazonS3ConfigKey::CopyIfNotExists, "multipart")
        .with_config(AmazonS3ConfigKey::ConditionalPut, "etag");
    builder = with_profile_keys(builder, options, super::aws_profile::from_env());
    let encryption_key = AmazonS3ConfigKey::from_str("aws_server_side_encryption")
        .map_err(|e| option_error(STORE, "server_side_encryption", e))?;
    let encryption = s3_encryption(options);
    for (key, value) in options {
        match key.as_str() {
            "path_style" => {
                let path_style = parse_bool(STORE, key, value)?;
                builder = builder.with_virtual_hosted_style_request(!path_style);
            }
            "server_side_encryption" | "sse" => {}
            _ => builder = builder.with_config(option_key(STORE, key)?, value),
        }
    }
    match encryption.as_str() {
        "none" => {}
        "AES256" | "aws:kms" | "aws:kms:dsse" => {
            builder = builder.with_config(encryption_key, encryption.as_str());
        }
        _ => {
            return Err(option_error(
                STORE,
                "server_side_encryption",
                "must be AES256, aws:kms, aws:kms:dsse or none",
            ))
        }
    }
    if is_plain_http(builder.get_config_value(&AmazonS3ConfigKey::Endpoint)) {
        builder = builder.with_allow_http(true);
    }
    builder
        .build()
        .map_err(|e| option_error(STORE, "settings", e))
}

/// Fills in keys and region from the AWS shared files when neither the
/// environment nor the config gives them.
fn with_profile_keys(
    mut builder: AmazonS3Builder,
    options: &BTreeMap<String, String>,
    profile: super::aws_profile::ProfileKeys,
) -> AmazonS3Builder {
    let configured = |key: &AmazonS3ConfigKey, names: &[&str]| {
        builder.get_config_value(key).is_some() || names.iter().any(|n| options.contains_key(*n))
    };
    let has_keys = configured(
        &AmazonS3ConfigKey::AccessKeyId,
        &["access_key_id", "aws_access_key_id"],
    );
    let has_region = configured(&AmazonS3ConfigKey::Region, &["region", "aws_region"]);
    if !has_keys {
        if let (Some(id), Some(secret)) = (profile.access_key_id, profile.secret_access_key) {
            builder = builder
                .with_access_key_id(id)
                .with_secret_access_key(secret);
            if let Some(token) = profile.session_token {
                builder = builder.with_token(token);
            }
        }
    }
    if !has_region {
        if let Some(region) = profile.region {
            builder = builder.with_region(region);
        }
    }
    builder
}

/// A store option's key, in `object_store`'s names; unknown names are errors.
fn option_key<K: FromStr>(store: &str, key: &str) -> Result<K, TargetSpecError> {
    K::from_str(key).map_err(|_| {
        option_error(
            store,
            key,
            format!("unknown {store} option; see the README for the options larch takes"),
        )
    })
}

/// An `http://` endpoint (an emulator, a local store) means plain HTTP is intended.
fn is_plain_http(endpoint: Option<String>) -> bool {
    endpoint.is_some_and(|e| e.starts_with("http://"))
}

fn build_gcs(
    bucket: &str,
    options: &BTreeMap<String, String>,
) -> Result<object_store::gcp::GoogleCloudStorage, TargetSpecError> {
    const STORE: &str = "gcs";
    let mut builder = GoogleCloudStorageBuilder::from_env()
        .with_bucket_name(bucket)
        .with_retry(retry())
        .with_config(GoogleConfigKey::Client(ClientConfigKey::Timeout), "120s");
    for (key, value) in options {
        builder = builder.with_config(option_key(STORE, key)?, value);
    }
    if is_plain_http(builder.get_config_value(&GoogleConfigKey::BaseUrl)) {
        builder = builder.with_config(GoogleConfigKey::Client(ClientConfigKey::AllowHttp), "true");
    }
    builder
        .build()
        .map_err(|e| option_error(STORE, "settings", e))
}

fn build_azure(
    container: &str,
    options: &BTreeMap<String, String>,
) -> Result<object_store::azure::MicrosoftAzure, TargetSpecError> {
    const STORE: &str = "azure";
    let mut builder = MicrosoftAzureBuilder::from_env()
        .with_container_name(container)
        .with_retry(retry())
        .with_config(AzureConfigKey::Client(ClientConfigKey::Timeout), "120s");
    for (key, value) in options {
        builder = builder.with_config(option_key(STORE, key)?, value);
    }
    if is_plain_http(builder.get_config_value(&AzureConfigKey::Endpoint)) {
        builder = builder.with_allow_http(true);
    }
    builder
        .build()
        .map_err(|e| option_error(STORE, "settings", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_a_store_a_bucket_and_a_prefix() {
        assert_eq!(
            Location::parse("s3://logs/edge/eu").unwrap(),
            Location::S3 {
                bucket: "logs".into(),
                prefix: "edge/eu".into()
            }
        );
        assert_eq!(
            Location::parse("gs://my-bucket/").unwrap(),
            Location::Gcs {
                bucket: "my-bucket".into(),
                prefix: String::new()
            }
        );
        assert_eq!(
            Location::parse("az://archive").unwrap(),
            Location::Azure {
                container: "archive".into(),
                prefix: String::new()
            }
        );
        assert_eq!(
            Location::parse("file:///var/lib/larch").unwrap(),
            Location::LocalDir("/var/lib/larch".into())
        );
        assert_eq!(
            Location::parse("data/archive").unwrap(),
            Location::LocalDir("data/archive".into())
        );
    }

    #[test]
    fn bad_urls_are_refused_with_the_reason() {
        for (bad, why) in [
            ("ftp://host/x", "scheme"),
            ("s3://ab", "bucket"),
            ("s3://key:secret@bucket", "credentials"),
            ("s3://bucket/../etc", "prefix"),
            ("s3://bucket/a//b", "prefix"),
            ("file://relative", "absolute"),
            ("", "empty"),
        ] {
            let e = Location::parse(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn profile_keys_fill_in_only_what_nothing_else_gave() {
        let profile = super::super::aws_profile::ProfileKeys {
            access_key_id: Some("AKIAPROFILE".into()),
            secret_access_key: Some("secret".into()),
            session_token: None,
            region: Some("eu-west-1".into()),
        };
        let none = BTreeMap::new();
        let b = with_profile_keys(AmazonS3Builder::new(), &none, profile.clone());
        let value = |b: &AmazonS3Builder, k| b.get_config_value(&k);
        assert_eq!(
            value(&b, AmazonS3ConfigKey::AccessKeyId).as_deref(),
            Some("AKIAPROFILE")
        );
        assert_eq!(
            value(&b, AmazonS3ConfigKey::Region).as_deref(),
            Some("eu-west-1")
        );
        let from_env = AmazonS3Builder::new()
            .with_access_key_id("AKIAENV")
            .with_secret_access_key("s")
            .with_region("us-west-2");
        let b = with_profile_keys(from_env, &none, profile.clone());
        assert_eq!(
            value(&b, AmazonS3ConfigKey::AccessKeyId).as_deref(),
            Some("AKIAENV")
        );
        assert_eq!(
            value(&b, AmazonS3ConfigKey::Region).as_deref(),
            Some("us-west-2")
        );
        let in_config: BTreeMap<String, String> = [("region".into(), "ap-south-1".into())].into();
        let b = with_profile_keys(AmazonS3Builder::new(), &in_config, profile);
        assert_eq!(value(&b, AmazonS3ConfigKey::Region), None);
    }

    #[test]
    fn options_holding_secrets_are_known_by_name() {
        for secret in [
            "secret_access_key",
            "aws_secret_access_key",
            "session_token",
            "token",
            "access_key",
            "account_key",
            "azure_storage_master_key",
            "sas_token",
            "sas_key",
            "client_secret",
            "bearer_token",
            "service_account_key",
            "sse_customer_key_base64",
            "encryption_key",
            "fabric_session_token",
            "application_credentials",
            "SECRET_ACCESS_KEY",
        ] {
            assert!(is_secret_option(secret, "x"), "{secret}");
        }
        for plain in [
            "region",
            "endpoint",
            "access_key_id",
            "sse_kms_key_id",
            "sse_bucket_key_enabled",
            "web_identity_token_file",
            "container_credentials_relative_uri",
            "account_name",
            "service_account",
            "skip_signature",
            "proxy_url",
        ] {
            assert!(!is_secret_option(plain, "x"), "{plain}");
        }
        assert!(is_secret_option("proxy_url", "http://me:pw@proxy:3128"));
        assert!(!is_secret_option("endpoint", "http://127.0.0.1:9000"));
    }

    #[test]
    fn unknown_store_options_are_named() {
        let config = TargetConfig {
            url: "s3://bucket".into(),
            s3: [("regoin".to_owned(), "eu-west-1".to_owned())].into(),
            ..TargetConfig::default()
        };
        let location = Location::parse(&config.url).unwrap();
        let e = build_cloud(&location, &config).err().unwrap().to_string();
        assert!(e.contains("[s3] regoin"), "{e}");
        let config = TargetConfig {
            s3: [("sse".to_owned(), "rot13".to_owned())].into(),
            ..config
        };
        let e = build_cloud(&location, &config).err().unwrap().to_string();
        assert!(e.contains("AES256"), "{e}");
    }
}
