//! Static keys and region from the AWS shared files (`~/.aws/credentials`,
//! `~/.aws/config`), which `object_store`'s builder does not read.
//!
//! Used, as in the AWS SDKs, after the environment and before web identity,
//! container and instance credentials: only when no key is in the environment.
//! The profile is `AWS_PROFILE` (default `default`); the files are
//! `AWS_SHARED_CREDENTIALS_FILE` and `AWS_CONFIG_FILE` if set.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ProfileKeys {
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
    pub region: Option<String>,
}

/// The sections of an INI file: name → key → value.
fn parse_ini(text: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut sections: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut current: Option<String> = None;
    for raw in text.lines() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = Some(name.trim().to_owned());
            continue;
        }
        if let (Some(section), Some((key, value))) = (&current, line.split_once('=')) {
            sections
                .entry(section.clone())
                .or_default()
                .insert(key.trim().to_owned(), value.trim().to_owned());
        }
    }
    sections
}

/// Reads `profile` from the two files; missing files or keys give `None`s.
pub fn read(credentials: &Path, config: &Path, profile: &str) -> ProfileKeys {
    let read = |p: &Path| parse_ini(&std::fs::read_to_string(p).unwrap_or_default());
    let creds = read(credentials);
    let conf = read(config);
    let creds = creds.get(profile);
    let conf_section = if profile == "default" {
        "default".to_owned()
    } else {
        format!("profile {profile}")
    };
    let conf = conf.get(&conf_section);
    let get = |section: Option<&BTreeMap<String, String>>, key: &str| {
        section
            .and_then(|s| s.get(key))
            .filter(|v| !v.is_empty())
            .cloned()
    };
    ProfileKeys {
        access_key_id: get(creds, "aws_access_key_id").or_else(|| get(conf, "aws_access_key_id")),
        secret_access_key: get(creds, "aws_secret_access_key")
            .or_else(|| get(conf, "aws_secret_access_key")),
        session_token: get(creds, "aws_session_token").or_else(|| get(conf, "aws_session_token")),
        region: get(conf, "region"),
    }
}

/// The files and profile the environment points at.
pub fn from_env() -> ProfileKeys {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let Some(home) = var("HOME").map(PathBuf::from) else {
        return ProfileKeys::default();
    };
    let credentials = var("AWS_SHARED_CREDENTIALS_FILE")
        .map(PathBuf::from)
        .unwrap_or_else(|| home.join(".aws/credentials"));
    let config = var("AWS_CONFIG_FILE")
        .map(PathBuf::from)
        .unwrap_or_else(|| home.join(".aws/config"));
    let profile = var("AWS_PROFILE").unwrap_or_else(|| "default".to_owned());
    read(&credentials, &config, &profile)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_come_from_the_named_profile_and_region_from_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let credentials = dir.path().join("credentials");
        let config = dir.path().join("config");
        std::fs::write(
            &credentials,
            "[default]\naws_access_key_id = AKIADEFAULT\naws_secret_access_key = s1\n\n\
             # a comment\n[edge]\naws_access_key_id=AKIAEDGE\naws_secret_access_key=s2\naws_session_token = t2\n",
        )
        .unwrap();
        std::fs::write(
            &config,
            "[default]\nregion = us-east-1\n[profile edge]\nregion = eu-west-1\n",
        )
        .unwrap();
        assert_eq!(
            read(&credentials, &config, "edge"),
            ProfileKeys {
                access_key_id: Some("AKIAEDGE".into()),
                secret_access_key: Some("s2".into()),
                session_token: Some("t2".into()),
                region: Some("eu-west-1".into()),
            }
        );
        let default = read(&credentials, &config, "default");
        assert_eq!(default.access_key_id.as_deref(), Some("AKIADEFAULT"));
        assert_eq!(default.region.as_deref(), Some("us-east-1"));
        assert_eq!(
            read(&credentials, &config, "missing"),
            ProfileKeys::default()
        );
        assert_eq!(
            read(&dir.path().join("none"), &config, "edge").access_key_id,
            None
        );
    }
}
