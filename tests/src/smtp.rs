//! A tiny SMTP sink for tests: speaks enough SMTP on 127.0.0.1:<free port> to accept mail, and records each message.
//!
//! Commands: EHLO/HELO, MAIL FROM, RCPT TO, DATA (dot-terminated, dot-unstuffed), RSET, NOOP, QUIT;
//! anything else gets `502`. The reply to the end of DATA can be scripted (`451 ...` to make the
//! sender retry, `550 ...` to refuse for good); a message is recorded only when it is accepted.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// One accepted message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// `MAIL FROM` address.
    pub from: String,
    /// `RCPT TO` addresses, in order.
    pub to: Vec<String>,
    /// The message as sent after DATA (headers and body, CRLF line ends, dots unstuffed).
    pub data: String,
}

impl Received {
    /// The value of header `name` (case-insensitive, folded lines joined), if present.
    pub fn header(&self, name: &str) -> Option<String> {
        let head = self.data.split("\r\n\r\n").next().unwrap_or_default();
        let mut value: Option<String> = None;
        for line in head.split("\r\n") {
            if line.starts_with([' ', '\t']) {
                if let Some(v) = value.as_mut() {
                    v.push(' ');
                    v.push_str(line.trim());
                }
                continue;
            }
            if value.is_some() {
                break;
            }
            if let Some((n, v)) = line.split_once(':')
                && n.trim().eq_ignore_ascii_case(name)
            {
                value = Some(v.trim().to_string());
            }
        }
        value
    }

    /// The body (after the blank line), CRLF turned into LF.
    pub fn body(&self) -> String {
        self.data
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.replace("\r\n", "\n"))
            .unwrap_or_default()
    }
}

#[derive(Debug, Default)]
struct State {
    messages: Vec<Received>,
    data_replies: VecDeque<String>,
    transactions: usize,
    connections: usize,
}

/// The running sink; stops when dropped.
#[derive(Debug)]
pub struct SmtpSink {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

impl SmtpSink {
    /// Listens on 127.0.0.1 on a free port.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the SMTP sink");
        let addr = listener.local_addr().expect("SMTP sink address");
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                lock(&shared).connections += 1;
                let s = shared.clone();
                tokio::spawn(async move {
                    if let Err(e) = session(stream, s).await {
                        tracing::debug!(error = %e, "SMTP sink session ended");
                    }
                });
            }
        });
        Self { addr, state, task }
    }

    /// Host of the sink.
    pub fn host(&self) -> String {
        self.addr.ip().to_string()
    }

    /// Port of the sink.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The accepted messages so far.
    pub fn messages(&self) -> Vec<Received> {
        lock(&self.state).messages.clone()
    }

    /// Completed DATA transactions, accepted or refused.
    pub fn transactions(&self) -> usize {
        lock(&self.state).transactions
    }

    /// TCP connections accepted.
    pub fn connections(&self) -> usize {
        lock(&self.state).connections
    }

    /// Replies to give at the end of the next DATA transactions, in order (e.g. `"451 4.3.0 busy"`);
    /// after them every message is accepted with `250`.
    pub fn script_data_replies(&self, replies: &[&str]) {
        lock(&self.state)
            .data_replies
            .extend(replies.iter().map(|r| r.to_string()));
    }

    /// An SMTP config for the aggregator that sends here in plain text.
    pub fn smtp_config(&self, from: &str) -> aggregator::config::SmtpConfig {
        aggregator::config::SmtpConfig {
            host: self.host(),
            port: self.port(),
            from: from.into(),
            username: None,
            password: Default::default(),
            tls: false,
        }
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The address inside `<...>` of a `MAIL FROM:` / `RCPT TO:` argument.
fn path_of(arg: &str) -> String {
    match (arg.find('<'), arg.find('>')) {
        (Some(a), Some(b)) if a < b => arg[a + 1..b].to_string(),
        _ => arg
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string(),
    }
}

async fn session(stream: TcpStream, state: Arc<Mutex<State>>) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    write.write_all(b"220 smtp-sink ESMTP ready\r\n").await?;
    let mut from: Option<String> = None;
    let mut to: Vec<String> = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let command = line.trim_end_matches(['\r', '\n']);
        let upper = command.to_ascii_uppercase();
        let reply: String = if upper.starts_with("EHLO") {
            from = None;
            to.clear();
            "250-smtp-sink greets you\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n".into()
        } else if upper.starts_with("HELO") {
            from = None;
            to.clear();
            "250 smtp-sink\r\n".into()
        } else if upper.starts_with("MAIL FROM:") {
            from = Some(path_of(&command[10..]));
            to.clear();
            "250 2.1.0 OK\r\n".into()
        } else if upper.starts_with("RCPT TO:") {
            if from.is_none() {
                "503 5.5.1 MAIL first\r\n".into()
            } else {
                to.push(path_of(&command[8..]));
                "250 2.1.5 OK\r\n".into()
            }
        } else if upper == "DATA" {
            if from.is_none() || to.is_empty() {
                "503 5.5.1 MAIL and RCPT first\r\n".into()
            } else {
                write
                    .write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                    .await?;
                let mut data = String::new();
                loop {
                    line.clear();
                    if reader.read_line(&mut line).await? == 0 {
                        return Ok(()); // cut off mid-message: nothing recorded
                    }
                    let l = line.trim_end_matches(['\r', '\n']);
                    if l == "." {
                        break;
                    }
                    data.push_str(l.strip_prefix('.').unwrap_or(l));
                    data.push_str("\r\n");
                }
                let mut s = lock(&state);
                s.transactions += 1;
                let scripted = s.data_replies.pop_front();
                let reply = scripted.unwrap_or_else(|| "250 2.0.0 queued".into());
                if reply.starts_with('2') {
                    s.messages.push(Received {
                        from: from.take().unwrap_or_default(),
                        to: std::mem::take(&mut to),
                        data,
                    });
                } else {
                    from = None;
                    to.clear();
                }
                format!("{reply}\r\n")
            }
        } else if upper == "RSET" {
            from = None;
            to.clear();
            "250 2.0.0 OK\r\n".into()
        } else if upper.starts_with("NOOP") {
            "250 2.0.0 OK\r\n".into()
        } else if upper == "QUIT" {
            write.write_all(b"221 2.0.0 Bye\r\n").await?;
            return Ok(());
        } else {
            "502 5.5.2 command not implemented\r\n".into()
        };
        write.write_all(reply.as_bytes()).await?;
    }
}
