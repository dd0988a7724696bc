//! `outbox [DIR]`: lists the emails in the local outbox (default `.data/outbox`), newest first;
//! `outbox show FILE` prints one's plain-text part.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("show") {
        let Some(file) = args.get(1) else {
            eprintln!("usage: outbox show FILE");
            return ExitCode::from(2);
        };
        return match std::fs::read_to_string(file) {
            Ok(text) => {
                println!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{file}: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let dir = args
        .first()
        .map_or_else(|| PathBuf::from(".data/outbox"), PathBuf::from);
    match mailer::outbox::list(&dir) {
        Ok(entries) if entries.is_empty() => {
            println!("{}: no emails", dir.display());
            ExitCode::SUCCESS
        }
        Ok(entries) => {
            println!("{} email(s) in {}:", entries.len(), dir.display());
            for e in entries {
                println!("{}  {:<17} to {:<28} {}", e.date, e.kind, e.to, e.subject);
                println!("    {}", e.path);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{}: {e}", dir.display());
            ExitCode::FAILURE
        }
    }
}
