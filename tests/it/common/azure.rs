//! Azurite, the Azure Blob Storage emulator (installed by `scripts/test-servers.sh`),
//! on 127.0.0.1.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{free_port, installed, repo_file};

pub struct Azurite {
    child: Child,
    pub endpoint: String,
}

impl Azurite {
    pub fn start() -> Self {
        let port = free_port();
        let child = Command::new(installed("npm/node_modules/.bin/azurite-blob"))
            .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
            .args(["--inMemoryPersistence", "--skipApiVersionCheck", "--loose"])
            .arg("--disableTelemetry")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start azurite-blob");
        let azurite = Self {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "azurite did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        azurite
    }

    fn helper(&self, command: &str, container: &str) -> Vec<u8> {
        self.helper_with(command, container, &[])
    }

    fn helper_with(&self, command: &str, container: &str, more: &[&str]) -> Vec<u8> {
        let out = Command::new(installed("venv/bin/python"))
            .arg(repo_file("scripts/azure_inspect.py"))
            .args([&self.endpoint, command, container])
            .args(more)
            .output()
            .expect("run azure_inspect.py");
        assert!(
            out.status.success(),
            "azure_inspect.py {command} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    pub fn create_container(&self, container: &str) {
        self.helper("create", container);
    }

    /// Every blob of `container`: key, size, `metadata`, `sha256`, gunzipped `lines`.
    pub fn inspect(&self, container: &str) -> Vec<Value> {
        serde_json::from_slice(&self.helper("list", container)).expect("azure_inspect.py output")
    }

    /// Copies a blob, as another writer planting the same lines again would.
    pub fn copy(&self, container: &str, from: &str, to: &str) {
        self.helper_with("copy", container, &[from, to]);
    }

    /// The environment a larch needs to use this emulator.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AZURE_STORAGE_USE_EMULATOR".into(), "true".into()),
            ("AZURITE_BLOB_STORAGE_URL".into(), self.endpoint.clone()),
        ]
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
