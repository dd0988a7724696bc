//! A TCP proxy in front of ClickHouse that loses answers on demand: it forwards every byte, except
//! that once armed it swallows the answer to the next request naming a given marker and closes that
//! connection. The server has done the work by then (an insert has landed) but the client never
//! hears of it, which is the ambiguous failure a writer must survive.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The running proxy.
#[derive(Debug)]
pub struct LosingProxy {
    /// `http://127.0.0.1:port`, to use as the ClickHouse URL.
    pub url: String,
    armed: Arc<AtomicUsize>,
    lost: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl LosingProxy {
    /// Starts a proxy to `upstream` (`host:port`) that, while armed, loses the answer to requests
    /// whose bytes contain any of `markers`.
    pub async fn start(upstream: &str, markers: &[&str]) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr: SocketAddr = listener.local_addr().expect("proxy address");
        let armed = Arc::new(AtomicUsize::new(0));
        let lost = Arc::new(AtomicUsize::new(0));
        let markers: Arc<Vec<Vec<u8>>> =
            Arc::new(markers.iter().map(|m| m.as_bytes().to_vec()).collect());
        let upstream = upstream.to_string();
        let (a, l) = (armed.clone(), lost.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                tokio::spawn(relay(client, server, markers.clone(), a.clone(), l.clone()));
            }
        });
        Self {
            url: format!("http://{addr}"),
            armed,
            lost,
            task,
        }
    }

    /// Loses the answers to the next `n` matching requests.
    pub fn arm(&self, n: usize) {
        self.armed.store(n, Ordering::SeqCst);
    }

    /// Answers lost so far.
    pub fn lost(&self) -> usize {
        self.lost.load(Ordering::SeqCst)
    }
}

impl Drop for LosingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies both ways; a matching request while armed marks the connection, and the server's answer
/// to it is dropped together with the connection.
async fn relay(
    client: TcpStream,
    server: TcpStream,
    markers: Arc<Vec<Vec<u8>>>,
    armed: Arc<AtomicUsize>,
    lost: Arc<AtomicUsize>,
) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let marked = Arc::new(AtomicBool::new(false));
    let flag = marked.clone();
    let upstream = tokio::spawn(async move {
        let longest = markers.iter().map(Vec::len).max().unwrap_or(0);
        let mut window: Vec<u8> = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match client_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            // Look for a marker across read boundaries (the last bytes of the previous read too).
            window.extend_from_slice(&buf[..n]);
            let hit = markers
                .iter()
                .any(|m| window.windows(m.len()).any(|w| w == m.as_slice()));
            if hit
                && armed
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |a| a.checked_sub(1))
                    .is_ok()
            {
                flag.store(true, Ordering::SeqCst);
            }
            if hit {
                window.clear();
            } else {
                let keep = window.len().saturating_sub(longest);
                window.drain(..keep);
            }
            if server_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    });
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match server_read.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // HTTP/1.1 without pipelining: what comes back after a marked request is its answer.
        if marked.load(Ordering::SeqCst) {
            lost.fetch_add(1, Ordering::SeqCst);
            break;
        }
        if client_write.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    upstream.abort();
    // Dropping both halves closes the client's connection without an answer.
}
