//! The admin API, through which `larch drain` and `larch verify` work with a
//! running daemon (whose spool they cannot open: sled locks it).
//!
//! Routes live on the ingest listener under `/admin/`, answer loopback peers
//! only, and need the bearer token the daemon writes at start-up to
//! `<data>/admin.json` (mode 0600, with the address it listens on): whoever may
//! read the data directory may drive the daemon, nobody else.
//!
//! - `POST /admin/drain`: seals every open part now, wakes the sync loop, and
//!   answers the status (`larch drain` calls it until the spool is empty);
//! - `GET /admin/ledger`: the spool's ledger of uploaded objects.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::rules::LiveRules;
use crate::spool::{LedgerEntry, Spool};
use crate::status::{Board, Status};

pub const ADMIN_FILE: &str = "admin.json";

/// What a client needs to reach the daemon of a data directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdminFile {
    pub addr: String,
    pub token: String,
}

impl AdminFile {
    /// Removes the file at a clean shutdown.
    pub fn remove(data: &Path) {
        let _ = std::fs::remove_file(data.join(ADMIN_FILE));
    }

    /// A fresh token for `addr`, written (replacing any older file) readable by its owner only.
    pub fn create(data: &Path, addr: SocketAddr) -> std::io::Result<Self> {
        let file = Self {
            addr: addr.to_string(),
            token: crate::target::hex(&rand::random::<[u8; 32]>()),
        };
        let path = data.join(ADMIN_FILE);
        let temp = data.join(format!("{ADMIN_FILE}.tmp"));
        let _ = std::fs::remove_file(&temp);
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut out = options.open(&temp)?;
        out.write_all(&serde_json::to_vec(&file).map_err(std::io::Error::other)?)?;
        out.sync_all()?;
        std::fs::rename(&temp, &path)?;
        Ok(file)
    }

    /// The data directory's admin file, if a daemon ever started there.
    pub fn read(data: &Path) -> Result<Option<Self>, AdminError> {
        let path = data.join(ADMIN_FILE);
        let text = match std::fs::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(AdminError::File { path, source }),
        };
        serde_json::from_slice(&text)
            .map(Some)
            .map_err(|e| AdminError::File {
                path,
                source: std::io::Error::other(e),
            })
    }
}

/// The daemon side.
pub struct Admin {
    pub token: String,
    pub spool: Arc<Spool>,
    pub board: Arc<Board>,
    pub rules: LiveRules,
    /// Wakes the sync loop.
    pub sealed: Arc<Notify>,
    pub room: Arc<crate::spool::Room>,
}

/// The ledger as the daemon hands it out.
#[derive(Debug, Serialize, Deserialize)]
pub struct LedgerReply {
    pub instance: String,
    pub entries: Vec<LedgerEntry>,
}

pub fn router(admin: Arc<Admin>) -> Router {
    Router::new()
        .route("/admin/drain", post(drain))
        .route("/admin/ledger", get(ledger))
        .route("/admin/ping", get(ping))
        .route_layer(axum::middleware::from_fn_with_state(
            admin.clone(),
            authorize,
        ))
        .with_state(admin)
}

fn refuse(status: StatusCode, why: &str) -> Response {
    (
        status,
        Json(serde_json::json!({"status": "not ok", "errors": [why]})),
    )
        .into_response()
}

/// Lets through only loopback requests that carry the token.
async fn authorize(
    State(admin): State<Arc<Admin>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match refusal(&admin, peer, request.headers()) {
        Some(refused) => refused,
        None => next.run(request).await,
    }
}

/// Why a request may not use the admin API, if it may not.
fn refusal(admin: &Admin, peer: SocketAddr, headers: &HeaderMap) -> Option<Response> {
    if !peer.ip().is_loopback() {
        return Some(refuse(
            StatusCode::FORBIDDEN,
            "the admin API answers loopback clients only",
        ));
    }
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    // Compared in full whatever the first difference, so timing tells nothing.
    let matches = given.is_some_and(|g| {
        g.len() == admin.token.len()
            && g.bytes()
                .zip(admin.token.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    });
    if matches {
        None
    } else {
        Some(refuse(
            StatusCode::UNAUTHORIZED,
            "wrong or missing admin token; larch drain and larch verify read it from the data directory's admin.json",
        ))
    }
}

async fn ping(State(admin): State<Arc<Admin>>) -> Response {
    Json(serde_json::json!({"instance": admin.spool.instance_hex()})).into_response()
}

/// Runs spool work off the async runtime; a failure is answered with `failed`.
async fn on_spool<T: Send + 'static>(
    admin: &Admin,
    failed: StatusCode,
    work: impl FnOnce(&Spool) -> Result<T, crate::spool::SpoolError> + Send + 'static,
) -> Result<T, Box<Response>> {
    let spool = admin.spool.clone();
    match tokio::task::spawn_blocking(move || work(&spool)).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(Box::new(refuse(failed, &e.to_string()))),
        Err(e) => Err(Box::new(refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            &e.to_string(),
        ))),
    }
}

async fn drain(State(admin): State<Arc<Admin>>) -> Response {
    let sealed_then_counted = on_spool(&admin, StatusCode::SERVICE_UNAVAILABLE, |spool| {
        for part in spool.seal_all()? {
            tracing::info!(part = %part, "sealed for a drain");
        }
        spool.summary()
    })
    .await;
    match sealed_then_counted {
        Ok(summary) => {
            admin.sealed.notify_one();
            Json(
                admin
                    .board
                    .running(summary, &admin.rules.load(), admin.room.status()),
            )
            .into_response()
        }
        Err(refused) => *refused,
    }
}

async fn ledger(State(admin): State<Arc<Admin>>) -> Response {
    match on_spool(&admin, StatusCode::INTERNAL_SERVER_ERROR, Spool::ledger).await {
        Ok(entries) => Json(LedgerReply {
            instance: admin.spool.instance_hex(),
            entries,
        })
        .into_response(),
        Err(refused) => *refused,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot read {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the larch at {addr} refused the admin request ({status}): {body}")]
    Refused {
        addr: String,
        status: u16,
        body: String,
    },
    #[error("the larch at {addr} stopped answering: {why}")]
    Lost { addr: String, why: String },
}

/// The client side, used by `larch drain` and `larch verify`.
pub struct AdminClient {
    file: AdminFile,
    agent: ureq::Agent,
}

impl AdminClient {
    /// The daemon of `data`, if one is running and answering: `None` if none
    /// ever started there or the one that did no longer listens (it stopped or
    /// was killed).
    pub fn connect(data: &Path) -> Result<Option<Self>, AdminError> {
        let Some(file) = AdminFile::read(data)? else {
            return Ok(None);
        };
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(120)))
            .build()
            .into();
        let client = Self { file, agent };
        // A daemon that was killed leaves its file behind; something else may
        // listen on its address now. Only the token's owner answers this.
        match client.call::<serde_json::Value>(false, "/admin/ping") {
            Ok(_) => Ok(Some(client)),
            Err(_) => Ok(None),
        }
    }

    pub fn addr(&self) -> &str {
        &self.file.addr
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.file.addr)
    }

    fn call<T: serde::de::DeserializeOwned>(
        &self,
        post: bool,
        path: &str,
    ) -> Result<T, AdminError> {
        let auth = format!("Bearer {}", self.file.token);
        let lost = |why: String| AdminError::Lost {
            addr: self.file.addr.clone(),
            why,
        };
        let response = if post {
            self.agent
                .post(self.url(path))
                .header("Authorization", &auth)
                .send_empty()
        } else {
            self.agent
                .get(self.url(path))
                .header("Authorization", &auth)
                .call()
        };
        let mut response = response.map_err(|e| lost(e.to_string()))?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(1 << 30)
            .read_to_string()
            .map_err(|e| lost(e.to_string()))?;
        if status != 200 {
            return Err(AdminError::Refused {
                addr: self.file.addr.clone(),
                status,
                body,
            });
        }
        serde_json::from_str(&body).map_err(|e| lost(format!("unexpected reply: {e}")))
    }

    /// Seals everything open now and returns the status after it.
    pub fn drain(&self) -> Result<Status, AdminError> {
        self.call(true, "/admin/drain")
    }

    pub fn ledger(&self) -> Result<LedgerReply, AdminError> {
        self.call(false, "/admin/ledger")
    }
}
