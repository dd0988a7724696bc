//! The quota benchmark's load generator: a minimal keep-alive HTTP/1.1 (or Redis) client per
//! connection, closed loop or on a fixed schedule (open loop), with latency percentiles.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::SECONDS;

#[derive(Debug, Clone, Copy)]
pub(crate) struct Load {
    pub(crate) requests: u64,
    pub(crate) per_sec: f64,
    pub(crate) p50_us: f64,
    pub(crate) p99_us: f64,
    pub(crate) p999_us: f64,
    /// CPU time of the serving process per request (µs): the ingest, or redis-server.
    pub(crate) server_cpu_us: f64,
    /// CPU time of this process (the load generator) per request (µs).
    pub(crate) generator_cpu_us: f64,
}

pub(crate) fn pct(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// What one connection of the load generator asks, again and again.
#[derive(Debug, Clone)]
pub(crate) enum Target {
    /// `GET url` with a bearer key over a keep-alive HTTP/1.1 connection; 200 expected.
    Http { url: String, key: String },
    /// `GET key` of a Redis counter over one RESP connection; an integer reply expected.
    Redis { addr: String, key: String },
}

/// When one connection sends its requests.
pub(crate) struct Schedule {
    /// `None`: the next request as soon as the reply is read (closed loop, like wrk). Otherwise
    /// one request per interval whatever the replies do (open loop, like wrk2).
    interval: Option<Duration>,
    /// When the next request is due (open loop).
    due: Instant,
    /// When the last reply was read.
    replied: Instant,
}

impl Schedule {
    fn new(pace: Option<(Instant, Duration)>) -> Self {
        let now = Instant::now();
        Self {
            interval: pace.map(|(_, interval)| interval),
            due: pace.map_or(now, |(first, _)| first),
            replied: now,
        }
    }

    /// Waits until the next request is due and returns the instant its latency counts from. In
    /// the open loop that is its due time when the previous reply came back after it (the wait was
    /// the server's, so it counts: no coordinated omission), and otherwise when it is sent (a timer
    /// waking late is the generator's delay, not the server's).
    async fn start(&mut self) -> Instant {
        let Some(interval) = self.interval else {
            return Instant::now();
        };
        let due = self.due;
        self.due += interval;
        if self.replied > due {
            return due;
        }
        tokio::time::sleep_until(due.into()).await;
        Instant::now()
    }

    /// The reply was read: the latency of a request counted from `from`, in nanoseconds.
    fn replied(&mut self, from: Instant) -> u64 {
        self.replied = Instant::now();
        (self.replied - from).as_nanos() as u64
    }
}

/// One connection's loop until `stop`, on `pace` (first request, interval) or closed-loop:
/// latencies in nanoseconds.
pub(crate) async fn connection(
    target: Target,
    stop: Arc<AtomicBool>,
    pace: Option<(Instant, Duration)>,
) -> Vec<u64> {
    let mut lat = Vec::with_capacity(200_000);
    let mut schedule = Schedule::new(pace);
    match target {
        Target::Http { url, key } => {
            // A minimal keep-alive HTTP/1.1 client (one request in flight, like wrk): the request
            // bytes are built once, the reply is read to its Content-Length. The same loop drives
            // every HTTP target, so the generator's own cost is equal for the check and its baseline.
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let rest = url.strip_prefix("http://").expect("http url");
            let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let request = format!(
                "GET {path} HTTP/1.1\r\nhost: {host}\r\nauthorization: Bearer {key}\r\n\r\n"
            );
            let mut stream = tokio::net::TcpStream::connect(host).await.expect("connect");
            stream.set_nodelay(true).expect("nodelay");
            let mut buf = vec![0u8; 16 * 1024];
            while !stop.load(Ordering::Relaxed) {
                let t = schedule.start().await;
                stream.write_all(request.as_bytes()).await.expect("send");
                let mut filled = 0;
                let (head_end, body_len) = loop {
                    let n = stream.read(&mut buf[filled..]).await.expect("reply");
                    assert!(n > 0, "{url}: connection closed");
                    filled += n;
                    if let Some(end) = buf[..filled].windows(4).position(|w| w == b"\r\n\r\n") {
                        break (end + 4, reply_head(&buf[..end], &url));
                    }
                    assert!(filled < buf.len(), "{url}: reply head too long");
                };
                assert!(head_end + body_len <= buf.len(), "{url}: body too long");
                while filled < head_end + body_len {
                    let n = stream.read(&mut buf[filled..]).await.expect("body");
                    assert!(n > 0, "{url}: connection closed in the body");
                    filled += n;
                }
                assert_eq!(filled, head_end + body_len, "{url}: unexpected bytes");
                lat.push(schedule.replied(t));
            }
        }
        Target::Redis { addr, key } => {
            use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
            let stream = tokio::net::TcpStream::connect(&addr).await.expect("redis");
            stream.set_nodelay(true).expect("nodelay");
            let mut stream = BufReader::new(stream);
            let command = format!("*2\r\n$3\r\nGET\r\n${}\r\n{key}\r\n", key.len());
            let mut line = String::new();
            while !stop.load(Ordering::Relaxed) {
                let t = schedule.start().await;
                stream
                    .get_mut()
                    .write_all(command.as_bytes())
                    .await
                    .expect("send");
                // A bulk string: "$n" then the value.
                line.clear();
                stream.read_line(&mut line).await.expect("reply");
                assert!(
                    line.starts_with('$') && !line.starts_with("$-1"),
                    "redis: {line}"
                );
                line.clear();
                stream.read_line(&mut line).await.expect("value");
                let _: u64 = line.trim().parse().expect("counter");
                lat.push(schedule.replied(t));
            }
        }
    }
    lat
}

/// Checks an HTTP/1.1 reply head (status line and headers, without the blank line) for status 200
/// and returns its Content-Length.
pub(crate) fn reply_head(head: &[u8], url: &str) -> usize {
    let head = std::str::from_utf8(head).expect("reply head is text");
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default();
    assert!(status.starts_with("HTTP/1.1 200 "), "{url}: {status}");
    lines
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().expect("content-length"))
        })
        .unwrap_or_else(|| panic!("{url}: no content-length in {head}"))
}

/// Runs `connections` connections against `target` for SECONDS: each as fast as its replies come
/// back, or, with a `rate` (requests per second over all connections), on a fixed schedule with
/// the connections' first requests spread over one interval.
pub(crate) async fn load(target: &Target, connections: usize, rate: Option<f64>) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let tasks: Vec<_> = (0..connections)
        .map(|c| {
            let pace = rate.map(|rate| {
                let interval = Duration::from_secs_f64(connections as f64 / rate);
                (
                    start + interval.mul_f64(c as f64 / connections as f64),
                    interval,
                )
            });
            tokio::spawn(connection(target.clone(), stop.clone(), pace))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(SECONDS)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("load task"));
    }
    let secs = start.elapsed().as_secs_f64();
    all.sort_unstable();
    Load {
        requests: all.len() as u64,
        per_sec: all.len() as f64 / secs,
        p50_us: pct(&all, 0.50) as f64 / 1000.0,
        p99_us: pct(&all, 0.99) as f64 / 1000.0,
        p999_us: pct(&all, 0.999) as f64 / 1000.0,
        server_cpu_us: 0.0,
        generator_cpu_us: 0.0,
    }
}
