//! The build's HTTP server: serves this build's files (the answer file, the build key) on
//! 127.0.0.1, which a QEMU user-network guest reaches as 10.0.2.2, under an unguessable path
//! prefix, and logs every request so the build can tell whether the installer fetched its
//! answer file.

use anyhow::{Context, Result};
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use rand::Rng;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// The address of the host as a QEMU user-network guest sees it.
pub const GUEST_HOST_IP: &str = "10.0.2.2";

/// One logged request.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Request {
    /// Requested file name (after the prefix), or the whole path if the prefix was wrong.
    pub path: String,
    /// Status answered.
    pub status: u16,
    /// Seconds after the server started.
    pub at_s: f64,
}

struct Shared {
    files: BTreeMap<String, Vec<u8>>,
    log: Vec<Request>,
    started: std::time::Instant,
}

impl Shared {
    fn record(&mut self, path: String, status: StatusCode) {
        let at_s = self.started.elapsed().as_secs_f64();
        self.log.push(Request {
            path,
            status: status.as_u16(),
            at_s,
        });
    }
}

/// A running server; stops when dropped.
pub struct FileServer {
    port: u16,
    prefix: String,
    shared: Arc<Mutex<Shared>>,
    _runtime: tokio::runtime::Runtime,
}

impl FileServer {
    /// Starts serving `files` (name → contents) on a free port of 127.0.0.1.
    pub fn start(files: BTreeMap<String, Vec<u8>>) -> Result<FileServer> {
        let prefix: String = rand::thread_rng()
            .sample_iter(rand::distributions::Alphanumeric)
            .take(24)
            .map(char::from)
            .collect();
        let shared = Arc::new(Mutex::new(Shared {
            files,
            log: Vec::new(),
            started: std::time::Instant::now(),
        }));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .context("cannot start the HTTP server's runtime")?;
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .context("cannot bind the HTTP server to 127.0.0.1")?;
        let port = listener.local_addr()?.port();
        let app = Router::new()
            .route(&format!("/{prefix}/:name"), get(serve))
            .fallback(not_found)
            .with_state(Arc::clone(&shared));
        runtime.spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(FileServer {
            port,
            prefix,
            shared,
            _runtime: runtime,
        })
    }

    /// The port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The base URL as the guest sees it, without a trailing slash.
    pub fn guest_url(&self) -> String {
        format!("http://{GUEST_HOST_IP}:{}/{}", self.port, self.prefix)
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Request> {
        self.shared.lock().unwrap().log.clone()
    }

    /// The first successful request for `name`, if it was served.
    pub fn first_fetch(&self, name: &str) -> Option<Request> {
        self.requests()
            .into_iter()
            .find(|r| r.path == name && r.status == 200)
    }
}

async fn serve(
    State(shared): State<Arc<Mutex<Shared>>>,
    UrlPath(name): UrlPath<String>,
) -> impl IntoResponse {
    let mut s = shared.lock().unwrap();
    let body = s.files.get(&name).cloned();
    let status = if body.is_some() {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    };
    tracing::info!(file = %name, status = status.as_u16(), "http request");
    s.record(name, status);
    (status, body.unwrap_or_default())
}

async fn not_found(
    State(shared): State<Arc<Mutex<Shared>>>,
    uri: axum::http::Uri,
) -> impl IntoResponse {
    tracing::warn!(path = %uri.path(), "http request outside this build's prefix");
    shared
        .lock()
        .unwrap()
        .record(uri.path().to_string(), StatusCode::NOT_FOUND);
    StatusCode::NOT_FOUND
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The base URL on the host.
    fn host_url(server: &FileServer) -> String {
        format!("http://127.0.0.1:{}/{}", server.port, server.prefix)
    }

    #[test]
    fn serves_files_under_the_prefix_only_and_logs_requests() {
        let mut files = BTreeMap::new();
        files.insert("preseed.cfg".to_string(), b"d-i x string y\n".to_vec());
        let server = FileServer::start(files).unwrap();
        assert!(server.first_fetch("preseed.cfg").is_none());
        let body = ureq::get(&format!("{}/preseed.cfg", host_url(&server)))
            .call()
            .unwrap()
            .into_string()
            .unwrap();
        assert_eq!(body, "d-i x string y\n");
        let first = server.first_fetch("preseed.cfg").unwrap();
        assert!(first.at_s > 0.0 && first.at_s < 60.0, "{first:?}");
        let guess = ureq::get(&format!("http://127.0.0.1:{}/preseed.cfg", server.port())).call();
        assert!(matches!(guess, Err(ureq::Error::Status(404, _))));
        let missing = ureq::get(&format!("{}/other", host_url(&server))).call();
        assert!(matches!(missing, Err(ureq::Error::Status(404, _))));
        assert_eq!(server.requests().len(), 3);
        assert!(server.guest_url().starts_with("http://10.0.2.2:"));
    }
}
