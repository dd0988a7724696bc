//! Private server processes for fault tests (a durable tansu broker, a ClickHouse server) on free
//! ports with their own data folders under `.data/test-servers/`, so stopping them disturbs no
//! other test. Data folders are removed when the test passes.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::workspace_root;

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn wait_port(port: u16, up: bool, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let open =
            TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200))
                .is_ok();
        if open == up {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "port {port} not {} after {timeout:?}",
        if up { "open" } else { "closed" }
    );
}

fn terminate(child: &mut Child) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn data_dir(name: &str) -> PathBuf {
    let dir = workspace_root().join(".data/test-servers").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("data dir");
    dir
}

/// A tansu broker with sqlite storage (survives restarts).
#[derive(Debug)]
pub struct Broker {
    /// Listening port.
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

/// Path of the tansu binary (`scripts/install.sh` puts it there).
pub fn tansu_bin() -> PathBuf {
    std::env::var_os("TANSU_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default())
                .join(".cache/metering/tansu/bin/tansu")
        })
}

impl Broker {
    /// Starts a durable broker named `name`.
    pub fn start(name: &str) -> Self {
        let mut b = Self {
            port: free_port(),
            dir: data_dir(&format!("tansu-{name}")),
            child: None,
        };
        b.spawn();
        b
    }

    /// `host:port` for clients.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::File::create(self.dir.join("tansu.log")).expect("log");
        let child = Command::new(tansu_bin())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args([
                "--cluster-id",
                "test",
                "--storage-engine",
                "sqlite://tansu.db",
            ])
            .current_dir(&self.dir)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start tansu");
        self.child = Some(child);
        wait_port(self.port, true, Duration::from_secs(20));
    }

    /// Stops the broker (SIGTERM) and waits until its port is closed.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            terminate(&mut c);
        }
        wait_port(self.port, false, Duration::from_secs(10));
    }

    /// Starts it again on the same port and data.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

/// A ClickHouse server with its own config and data.
#[derive(Debug)]
pub struct ClickHouse {
    /// HTTP port.
    pub http_port: u16,
    config: PathBuf,
    dir: PathBuf,
    child: Option<Child>,
}

impl ClickHouse {
    /// Starts a server named `name` (config written by `scripts/servers.sh clickhouse-config`).
    pub fn start(name: &str) -> Self {
        let dir = data_dir(&format!("clickhouse-{name}"));
        let (http, tcp) = (free_port(), free_port());
        let out = Command::new("bash")
            .arg(workspace_root().join("scripts/servers.sh"))
            .args([
                "clickhouse-config",
                &dir.display().to_string(),
                &http.to_string(),
                &tcp.to_string(),
            ])
            .output()
            .expect("clickhouse-config");
        assert!(
            out.status.success(),
            "clickhouse-config: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let config = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim().to_string());
        let mut s = Self {
            http_port: http,
            config,
            dir,
            child: None,
        };
        s.spawn();
        s
    }

    /// Its HTTP URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    fn spawn(&mut self) {
        let child = Command::new("clickhouse-server")
            .arg(format!("--config-file={}", self.config.display()))
            .current_dir(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start clickhouse-server");
        self.child = Some(child);
        wait_port(self.http_port, true, Duration::from_secs(30));
    }

    /// Stops the server (SIGTERM, a clean shutdown) and waits until its port is closed.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            terminate(&mut c);
        }
        wait_port(self.http_port, false, Duration::from_secs(10));
    }

    /// Starts it again with the same data.
    pub fn start_again(&mut self) {
        self.spawn();
    }
}

fn cleanup(dir: &Path) {
    if !std::thread::panicking() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        cleanup(&self.dir);
    }
}

impl Drop for ClickHouse {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            terminate(&mut c);
        }
        cleanup(&self.dir);
    }
}
