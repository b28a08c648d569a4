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
//! - `GET /admin/ledger`: the spool's ledger of uploaded objects;
//! - `GET /admin/hello?nonce=N` (no token): HMAC-SHA256(token, a fixed context and N) as proof
//!   that the daemon holds the token.
//!
//! A daemon that was killed leaves its admin.json behind, and whatever
//! listens on its address later would be handed the token and believed. So a
//! client sends the token (or trusts an answer) only after the address has
//! proven, through `hello`, that it knows the token: a fresh random nonce each
//! time, so a recorded proof is worth nothing. (A pid in the file would not
//! do: pids are reused, and a live pid says nothing about who holds the port.)

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use tokio::sync::Notify;

use crate::ingest::not_ok;
use crate::spool::{LedgerEntry, Spool, SpoolError, SpoolHandle};
use crate::status::{Reporter, Status};

pub const ADMIN_FILE: &str = "admin.json";

/// Mixed into every proof, so that it proves this and nothing else.
const PROOF_CONTEXT: &[u8] = b"larch admin proof v1\n";
/// How long a client waits for a proof: a daemon answers at once.
const PROOF_TIMEOUT: Duration = Duration::from_secs(10);

/// HMAC-SHA256(token, context + nonce), in hex: what only the token's holder can answer.
fn proof(token: &str, nonce: &str) -> String {
    // HMAC takes a key of any length: this cannot fail.
    let mut mac = Hmac::<Sha256>::new_from_slice(token.as_bytes())
        .expect("HMAC-SHA256 takes keys of any length");
    mac.update(PROOF_CONTEXT);
    mac.update(nonce.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// A nonce worth answering: 32 to 128 hex digits.
fn good_nonce(nonce: &str) -> bool {
    (32..=128).contains(&nonce.len()) && nonce.bytes().all(|b| b.is_ascii_hexdigit())
}

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
            token: hex::encode(rand::random::<[u8; 32]>()),
        };
        let path = data.join(ADMIN_FILE);
        let temp = data.join(format!("{ADMIN_FILE}.tmp"));
        let _ = std::fs::remove_file(&temp);
        let mut out = crate::files::private_options()
            .write(true)
            .create_new(true)
            .open(&temp)?;
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
    pub spool: SpoolHandle,
    pub reporter: Arc<Reporter>,
    /// Wakes the sync loop.
    pub sealed: Arc<Notify>,
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
        .route_layer(axum::middleware::from_fn_with_state(
            admin.clone(),
            authorize,
        ))
        .route("/admin/hello", get(hello))
        .route_layer(axum::middleware::from_fn(loopback_only))
        .with_state(admin)
}

fn refuse(status: StatusCode, why: &str) -> Response {
    not_ok(status, vec![why.to_owned()])
}

/// Lets through only loopback requests.
async fn loopback_only(
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if peer.ip().is_loopback() {
        next.run(request).await
    } else {
        refuse(
            StatusCode::FORBIDDEN,
            "the admin API answers loopback clients only",
        )
    }
}

/// Lets through only requests that carry the token.
async fn authorize(
    State(admin): State<Arc<Admin>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if carries_token(&admin, request.headers()) {
        next.run(request).await
    } else {
        refuse(
            StatusCode::UNAUTHORIZED,
            "wrong or missing admin token; larch drain and larch verify read it from the data directory's admin.json",
        )
    }
}

fn carries_token(admin: &Admin, headers: &HeaderMap) -> bool {
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    // Constant time, so the time taken tells nothing about the token.
    given.is_some_and(|g| bool::from(g.as_bytes().ct_eq(admin.token.as_bytes())))
}

#[derive(Debug, Deserialize)]
struct HelloQuery {
    nonce: String,
}

/// The answer to `hello`.
#[derive(Debug, Serialize, Deserialize)]
struct Hello {
    proof: String,
}

async fn hello(State(admin): State<Arc<Admin>>, Query(query): Query<HelloQuery>) -> Response {
    if !good_nonce(&query.nonce) {
        return refuse(
            StatusCode::BAD_REQUEST,
            "the nonce must be 32 to 128 hex digits",
        );
    }
    Json(Hello {
        proof: proof(&admin.token, &query.nonce),
    })
    .into_response()
}

async fn drain(State(admin): State<Arc<Admin>>) -> Response {
    let sealed = admin
        .spool
        .run(|spool| {
            for part in spool.seal_all()? {
                tracing::info!(part = %part, "sealed for a drain");
            }
            Ok::<_, SpoolError>(())
        })
        .await;
    if let Err(e) = sealed {
        return refuse(StatusCode::SERVICE_UNAVAILABLE, &e.to_string());
    }
    admin.sealed.notify_one();
    match admin.reporter.status().await {
        Ok(status) => Json(status).into_response(),
        Err(e) => refuse(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

async fn ledger(State(admin): State<Arc<Admin>>) -> Response {
    match admin.spool.run(Spool::ledger).await {
        Ok(entries) => Json(LedgerReply {
            instance: admin.spool.instance_hex(),
            entries,
        })
        .into_response(),
        Err(e) => refuse(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
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
    #[error("no larch daemon answers at {addr} (is {} stale? a larch that was killed leaves it behind): {why}. Start larch on this data directory, or use --addr for one that runs elsewhere.", file.display())]
    Stale {
        addr: String,
        file: PathBuf,
        why: String,
    },
}

/// The client side, used by `larch status`, `larch drain` and `larch verify`.
/// One exists only once its address has proven that it holds the token.
pub struct AdminClient {
    file: AdminFile,
    agent: ureq::Agent,
}

impl AdminClient {
    /// The daemon of `data`, if one is running and answering: `None` if none
    /// ever started there or the one that did no longer answers (it stopped or
    /// was killed).
    pub fn connect(data: &Path) -> Result<Option<Self>, AdminError> {
        match Self::proven(data) {
            Err(AdminError::Stale { .. }) => Ok(None),
            other => other,
        }
    }

    /// The daemon of `data`: `None` if no admin.json is there, an
    /// [`AdminError::Stale`] if nothing at its address proves that it holds
    /// the token. The token is sent nowhere before that proof.
    pub fn proven(data: &Path) -> Result<Option<Self>, AdminError> {
        let Some(file) = AdminFile::read(data)? else {
            return Ok(None);
        };
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(120)))
            .build()
            .into();
        let client = Self { file, agent };
        client.check_proof(data)?;
        Ok(Some(client))
    }

    /// Asks the address for HMAC(token, a fresh nonce) and checks it; the
    /// request carries no token. A larch too busy to answer is not stale.
    fn check_proof(&self, data: &Path) -> Result<(), AdminError> {
        let stale = |why: String| AdminError::Stale {
            addr: self.file.addr.clone(),
            file: data.join(ADMIN_FILE),
            why,
        };
        let nonce = hex::encode(rand::random::<[u8; 32]>());
        let mut response = self
            .agent
            .get(format!("{}?nonce={nonce}", self.url("/admin/hello")))
            .config()
            .timeout_global(Some(PROOF_TIMEOUT))
            .build()
            .call()
            .map_err(|e| stale(format!("nothing answers there ({e})")))?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(64 * 1024)
            .read_to_string()
            .map_err(|e| stale(format!("its answer could not be read ({e})")))?;
        if status == 503 {
            // Every connection slot of its listener is busy with a request.
            return Err(AdminError::Lost {
                addr: self.file.addr.clone(),
                why: "it is at its connection limit (ingest.max_connections); try again shortly"
                    .into(),
            });
        }
        if status != 200 {
            return Err(stale(format!("what answers there is not a larch of this version (it answered {status} to the proof request)")));
        }
        let hello: Hello = serde_json::from_str(&body)
            .map_err(|_| stale("what answers there is not a larch: it gave no proof".to_owned()))?;
        let expected = proof(&self.file.token, &nonce);
        if bool::from(expected.as_bytes().ct_eq(hello.proof.as_bytes())) {
            Ok(())
        } else {
            Err(stale(
                "what answers there does not hold the token (its proof is wrong)".into(),
            ))
        }
    }

    pub fn addr(&self) -> &str {
        &self.file.addr
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.file.addr)
    }

    /// A request to the proven daemon, with the token.
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

    /// What `/status` says.
    pub fn status(&self) -> Result<Status, AdminError> {
        self.call(false, "/status")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proof_depends_on_the_token_and_the_nonce() {
        let nonce = "00112233445566778899aabbccddeeff";
        let p = proof("token-a", nonce);
        assert_eq!(p.len(), 64);
        assert_eq!(p.clone(), proof("token-a", nonce));
        assert_ne!(p.clone(), proof("token-b", nonce));
        assert_ne!(p, proof("token-a", &nonce.replace('0', "1")));
        assert!(good_nonce(nonce));
        assert!(!good_nonce("abc"));
        assert!(!good_nonce(&"g".repeat(32)));
    }
}
