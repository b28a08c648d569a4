//! Archiving to Azure Blob Storage, against Azurite on 127.0.0.1.

use crate::common;

use std::path::Path;
use std::time::Duration;

use common::azure::Azurite;
use common::objects::{archive_only, assert_exactly_once, keys, name_of, send};
use common::Daemon;
use serde_json::Value;

const CONTAINER: &str = "archive";

fn start(dir: &Path, name: &str, azurite: &Azurite) -> Daemon {
    let config = dir.join("larch.toml");
    std::fs::write(
        &config,
        "[target]\nretry_max_delay = \"1s\"\n[keys]\nk = \"acme\"\nk2 = \"beta\"\n",
    )
    .unwrap();
    Daemon::start_with_env(
        &dir.join(name),
        &[
            "--config",
            config.to_str().unwrap(),
            "--target",
            &format!("az://{CONTAINER}/edge"),
            "--late-window",
            "0s",
        ],
        &azurite.env(),
    )
}

fn archive_objects(azurite: &Azurite) -> Vec<Value> {
    archive_only(azurite.inspect(CONTAINER))
}

#[test]
fn objects_are_named_and_carry_their_owner() {
    let azurite = Azurite::start();
    azurite.create_container(CONTAINER);
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path(), "a", &azurite);
    let mut sent = send(&d, "k", 3, "acme-3h", 5);
    sent.extend(send(&d, "k2", 2, "beta-2h", 4));
    d.wait_drained(Duration::from_secs(60));

    let objects = archive_objects(&azurite);
    let mut expected = vec![
        format!("{}.json.gz", name_of("edge/", "acme", 3)),
        format!("{}.json.gz", name_of("edge/", "beta", 2)),
    ];
    expected.sort();
    assert_eq!(keys(&objects), expected);
    let instance = d.status()["instance"].as_str().unwrap().to_owned();
    for o in &objects {
        let meta = &o["metadata"];
        assert_eq!(meta["larch_sha256"], o["sha256"], "{}", o["key"]);
        assert_eq!(meta["larch_instance"], instance.as_str());
    }
    assert_exactly_once(&objects, &sent);
}

#[test]
fn two_hosts_never_overwrite_each_other_and_a_crash_after_put_makes_no_copy() {
    let azurite = Azurite::start();
    azurite.create_container(CONTAINER);
    let dir = tempfile::tempdir().unwrap();
    let a = start(dir.path(), "a", &azurite);
    let mut b = start(dir.path(), "b", &azurite);
    b.arm_fault("after-put");
    let mut sent = Vec::new();
    sent.extend(send(&a, "k", 2, "a", 10));
    sent.extend(send(&b, "k", 2, "b", 10));
    b.died_at_fault();
    b.start_without_fault();
    a.wait_drained(Duration::from_secs(60));
    b.wait_drained(Duration::from_secs(60));

    let objects = archive_objects(&azurite);
    assert_eq!(objects.len(), 2, "{:?}", keys(&objects));
    assert_exactly_once(&objects, &sent);
    for o in &objects {
        assert_eq!(o["metadata"]["larch_sha256"], o["sha256"], "{}", o["key"]);
    }
    assert!(b.log().contains("object already holds this part"));
}
