//! The message itself: a multipart/alternative email (plain text and HTML) with the tenant's
//! sender name and reply-to, a `Message-ID` from the once-only key, and `List-Unsubscribe` /
//! `List-Unsubscribe-Post` (RFC 2369, RFC 8058 one-click) for the kinds that can be turned off.

use lettre::Message;
use lettre::message::header::{HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart};

use crate::config::Branding;
use crate::render::Rendered;
use crate::{Error, Result};

/// Header naming the once-only key of the email.
pub const KEY_HEADER: &str = "X-Metering-Email-Key";
/// Header naming the kind.
pub const KIND_HEADER: &str = "X-Metering-Email-Kind";

/// What goes into the headers besides the rendered parts.
#[derive(Debug, Clone)]
pub struct Envelope<'a> {
    /// The configured sender (`Name <addr>`).
    pub from: &'a str,
    /// The recipient.
    pub to: &'a str,
    /// The tenant's look (sender name, reply-to).
    pub branding: &'a Branding,
    /// The `Message-ID`.
    pub message_id: &'a str,
    /// The once-only key.
    pub key: &'a str,
    /// The kind's name.
    pub kind: &'a str,
    /// The unsubscribe link (none: no `List-Unsubscribe`).
    pub unsubscribe: Option<&'a str>,
}

/// The sender: the configured address under the tenant's sender name when it has one.
pub fn sender(from: &str, branding: &Branding) -> Result<Mailbox> {
    let mut mailbox: Mailbox = from
        .parse()
        .map_err(|e| Error::Message(format!("from {from:?}: {e}")))?;
    if !branding.sender_name.is_empty() {
        mailbox.name = Some(branding.sender_name.clone());
    }
    Ok(mailbox)
}

/// Builds the message.
pub fn build(env: &Envelope<'_>, rendered: &Rendered) -> Result<Message> {
    let bad = |what: &str, e: &dyn std::fmt::Display| Error::Message(format!("{what}: {e}"));
    let to: Mailbox = env.to.parse().map_err(|e| bad("to", &e))?;
    let mut builder = Message::builder()
        .from(sender(env.from, env.branding)?)
        .to(to)
        .subject(rendered.subject.clone())
        .message_id(Some(env.message_id.to_string()));
    if let Some(r) = &env.branding.reply_to {
        builder = builder.reply_to(r.parse().map_err(|e| bad("reply_to", &e))?);
    }
    let mut message = builder
        .multipart(MultiPart::alternative_plain_html(
            rendered.text.clone(),
            rendered.html.clone(),
        ))
        .map_err(|e| bad("message", &e))?;
    let headers = message.headers_mut();
    headers.insert_raw(HeaderValue::new(
        HeaderName::new_from_ascii_str(KEY_HEADER),
        env.key.to_string(),
    ));
    headers.insert_raw(HeaderValue::new(
        HeaderName::new_from_ascii_str(KIND_HEADER),
        env.kind.to_string(),
    ));
    if let Some(url) = env.unsubscribe {
        headers.insert_raw(HeaderValue::new(
            HeaderName::new_from_ascii_str("List-Unsubscribe"),
            format!("<{url}>"),
        ));
        headers.insert_raw(HeaderValue::new(
            HeaderName::new_from_ascii_str("List-Unsubscribe-Post"),
            "List-Unsubscribe=One-Click".into(),
        ));
    }
    Ok(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_carry_branding_key_and_unsubscribe() {
        let branding = Branding {
            sender_name: "Acme Billing".into(),
            reply_to: Some("help@acme.test".into()),
            ..Branding::default()
        };
        let r = Rendered {
            subject: "Hi".into(),
            text: "text".into(),
            html: "<p>html</p>".into(),
        };
        let env = Envelope {
            from: "Metering <billing@metering.test>",
            to: "cust@example.test",
            branding: &branding,
            message_id: "<abc@metering.test>",
            key: "acme:c:usage_warning:x",
            kind: "usage_warning",
            unsubscribe: Some("http://h/emails/unsubscribe?sig=1"),
        };
        let m = build(&env, &r).expect("message");
        let text = String::from_utf8(m.formatted()).expect("utf8");
        assert!(
            text.contains("From: \"Acme Billing\" <billing@metering.test>"),
            "{text}"
        );
        assert!(text.contains("Reply-To: help@acme.test"), "{text}");
        assert!(
            text.contains("List-Unsubscribe: <http://h/emails/unsubscribe?sig=1>"),
            "{text}"
        );
        assert!(text.contains("List-Unsubscribe-Post: List-Unsubscribe=One-Click"));
        assert!(text.contains("multipart/alternative"));
        let receipt = build(
            &Envelope {
                unsubscribe: None,
                ..env
            },
            &r,
        )
        .expect("message");
        let text = String::from_utf8(receipt.formatted()).expect("utf8");
        assert!(!text.contains("List-Unsubscribe"), "{text}");
    }
}
