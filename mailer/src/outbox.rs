//! The local outbox: with no SMTP relay configured each email is written to `outbox_dir` as one
//! `.eml` file (RFC 5322, openable in any mail client), and listed by the admin API and the
//! `outbox` CLI.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::Result;

/// One file of the outbox.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct OutboxEntry {
    /// File path.
    pub path: String,
    /// `To` header.
    pub to: String,
    /// `Subject` header (as encoded).
    pub subject: String,
    /// `Date` header.
    pub date: String,
    /// `X-Metering-Email-Kind` header.
    pub kind: String,
}

/// Writes `bytes` as `<dir>/<unix secs>-<kind>-<key hash>.eml` (written to a temporary name,
/// then renamed, so a reader never sees half a file). Returns the path.
pub fn write(dir: &Path, kind: &str, message_id: &str, bytes: &[u8]) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let id: String = message_id
        .trim_start_matches('<')
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .take(16)
        .collect();
    let secs = time::OffsetDateTime::now_utc().unix_timestamp();
    let path = dir.join(format!("{secs}-{kind}-{id}.eml"));
    let tmp = dir.join(format!(".{secs}-{kind}-{id}.tmp"));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

fn header(text: &str, name: &str) -> String {
    let head = text.split("\r\n\r\n").next().unwrap_or_default();
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
    value.unwrap_or_default()
}

/// The outbox's files, newest first.
pub fn list(dir: &Path) -> Result<Vec<OutboxEntry>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e.into()),
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "eml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        out.push(OutboxEntry {
            path: path.display().to_string(),
            to: header(&text, "To"),
            subject: header(&text, "Subject"),
            date: header(&text, "Date"),
            kind: header(&text, crate::message::KIND_HEADER),
        });
    }
    out.sort_by(|a, b| b.path.cmp(&a.path));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_files_are_listed_with_their_headers() {
        let dir = std::env::temp_dir().join(format!("outbox-test-{}", uuid::Uuid::new_v4()));
        let mail =
            b"To: a@b.test\r\nSubject: Hello\r\nX-Metering-Email-Kind: receipt\r\n\r\nbody\r\n";
        let p = write(&dir, "receipt", "<abc123@x>", mail).expect("write");
        assert!(p.exists());
        let l = list(&dir).expect("list");
        assert_eq!(l.len(), 1);
        assert_eq!(
            (l[0].to.as_str(), l[0].subject.as_str(), l[0].kind.as_str()),
            ("a@b.test", "Hello", "receipt")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
