//! A webhook receiver for tests: an HTTP server on 127.0.0.1:<free port> that records every request and answers with a scripted sequence of statuses.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use tokio::task::JoinHandle;

/// One request as received.
#[derive(Debug, Clone)]
pub struct Request {
    /// HTTP method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Headers, names lowercased (the last value wins).
    pub headers: BTreeMap<String, String>,
    /// Raw body.
    pub body: Vec<u8>,
    /// The status it was answered with.
    pub answered: u16,
    /// When it arrived.
    pub at: tokio::time::Instant,
}

impl Request {
    /// A header by name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("webhook body is JSON")
    }
}

#[derive(Debug, Default)]
struct Inner {
    requests: Vec<Request>,
    script: VecDeque<u16>,
}

type Shared = Arc<Mutex<Inner>>;

fn lock(state: &Mutex<Inner>) -> std::sync::MutexGuard<'_, Inner> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// The running receiver; stops when dropped.
#[derive(Debug)]
pub struct WebhookReceiver {
    addr: SocketAddr,
    state: Shared,
    task: JoinHandle<()>,
}

impl WebhookReceiver {
    /// Listens on 127.0.0.1 on a free port; answers 200 unless scripted otherwise.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the webhook receiver");
        let addr = listener.local_addr().expect("webhook receiver address");
        let state: Shared = Arc::default();
        let router = Router::new().fallback(record).with_state(state.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Self { addr, state, task }
    }

    /// The URL to configure (`http://127.0.0.1:PORT/hooks/metering`).
    pub fn url(&self) -> String {
        format!("http://{}/hooks/metering", self.addr)
    }

    /// Statuses to answer the next requests with, in order; 200 after them.
    pub fn script(&self, statuses: &[u16]) {
        lock(&self.state).script.extend(statuses.iter().copied());
    }

    /// The requests so far.
    pub fn requests(&self) -> Vec<Request> {
        lock(&self.state).requests.clone()
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn record(
    State(state): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, &'static str) {
    let mut s = lock(&state);
    let answered = s.script.pop_front().unwrap_or(200);
    s.requests.push(Request {
        method: method.to_string(),
        path: uri
            .path_and_query()
            .map_or_else(|| uri.path().to_string(), ToString::to_string),
        headers: headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_ascii_lowercase(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: body.to_vec(),
        answered,
        at: tokio::time::Instant::now(),
    });
    let status = StatusCode::from_u16(answered).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        if status.is_success() {
            "ok"
        } else {
            "scripted failure"
        },
    )
}
