//! Templates in files (`mailer/templates/`, replaceable one by one from `templates_dir`), rendered
//! with minijinja: `<kind>.txt` (its first line `Subject: …`) and `<kind>.html` (extending
//! `layout.html`, HTML auto-escaped), with the tenant's branding, the links and the email's data;
//! and the sample data of each kind for the preview.

use std::path::Path;

use minijinja::Environment;
use serde_json::{Value, json};

use crate::config::Branding;
use crate::{Error, Kind, Result};

/// The built-in templates, by file name.
const BUILT_IN: &[(&str, &str)] = &[
    ("layout.html", include_str!("../templates/layout.html")),
    (
        "usage_warning.html",
        include_str!("../templates/usage_warning.html"),
    ),
    (
        "usage_warning.txt",
        include_str!("../templates/usage_warning.txt"),
    ),
    ("receipt.html", include_str!("../templates/receipt.html")),
    ("receipt.txt", include_str!("../templates/receipt.txt")),
    (
        "renewal_reminder.html",
        include_str!("../templates/renewal_reminder.html"),
    ),
    (
        "renewal_reminder.txt",
        include_str!("../templates/renewal_reminder.txt"),
    ),
    (
        "payment_failed.html",
        include_str!("../templates/payment_failed.html"),
    ),
    (
        "payment_failed.txt",
        include_str!("../templates/payment_failed.txt"),
    ),
    (
        "plan_changed.html",
        include_str!("../templates/plan_changed.html"),
    ),
    (
        "plan_changed.txt",
        include_str!("../templates/plan_changed.txt"),
    ),
    (
        "cancelled.html",
        include_str!("../templates/cancelled.html"),
    ),
    ("cancelled.txt", include_str!("../templates/cancelled.txt")),
];

/// A rendered email.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// Subject line.
    pub subject: String,
    /// Plain-text part.
    pub text: String,
    /// HTML part.
    pub html: String,
}

/// The links an email carries.
#[derive(Debug, Clone, Default)]
pub struct Links {
    /// This kind's unsubscribe link (none for receipts).
    pub unsubscribe: Option<String>,
    /// The customer's preference page.
    pub preferences: String,
}

/// The loaded templates.
#[derive(Debug)]
pub struct Templates {
    env: Environment<'static>,
}

impl Templates {
    /// The built-in templates, each replaced by the file of the same name in `dir` when there is
    /// one. Every template is parsed now: a broken file fails the start, not a send.
    pub fn load(dir: Option<&Path>) -> Result<Self> {
        let mut env = Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Chainable);
        for (name, built_in) in BUILT_IN {
            let own = match dir {
                Some(d) if d.join(name).is_file() => Some(std::fs::read_to_string(d.join(name))?),
                _ => None,
            };
            match own {
                Some(text) => env.add_template_owned(name.to_string(), text)?,
                None => env.add_template(name, built_in)?,
            }
        }
        Ok(Self { env })
    }

    /// Renders `kind` for (tenant, customer) with `data`.
    pub fn render(
        &self,
        kind: Kind,
        customer: &str,
        branding: &Branding,
        links: &Links,
        data: &Value,
    ) -> Result<Rendered> {
        let ctx = json!({
            "customer": customer,
            "brand": {
                "sender_name": branding.sender_name,
                "color": branding.brand_color,
                "product": branding.product_name,
            },
            "unsubscribe_url": links.unsubscribe,
            "preferences_url": links.preferences,
            "kind_label": kind.label(),
            "d": data,
        });
        let text = self
            .env
            .get_template(&format!("{kind}.txt"))?
            .render(&ctx)?;
        let (subject, text) = match text.split_once('\n') {
            Some((first, rest)) if first.starts_with("Subject:") => (
                first.trim_start_matches("Subject:").trim().to_string(),
                rest.trim_start_matches('\n').to_string(),
            ),
            _ => {
                return Err(Error::Message(format!(
                    "{kind}.txt must start with a `Subject:` line"
                )));
            }
        };
        let html = self
            .env
            .get_template(&format!("{kind}.html"))?
            .render(&ctx)?;
        Ok(Rendered {
            subject,
            text,
            html,
        })
    }
}

/// Sample data of each kind, as the services queue it (for the preview and the tests).
pub fn sample(kind: Kind) -> Value {
    let period = json!({"start": "2026-12-01", "end": "2026-12-31"});
    match kind {
        Kind::UsageWarning => json!({
            "meter": "API calls", "threshold": 90, "used": "450", "limit": "500",
            "plan": "Starter", "period": period, "blocked": false,
        }),
        Kind::Receipt => json!({
            "amount": "29.00", "currency": "USD", "invoice": "in_sample", "number": "A1B2-0001",
            "plan": "Starter", "period": period, "usage": [{"meter": "API calls", "used": "312"}],
            "invoice_url": "https://invoice.stripe.com/i/sample",
        }),
        Kind::RenewalReminder => json!({
            "plan": "Starter", "renews_on": "2026-12-31", "days": 3, "amount": "29.00",
            "currency": "USD", "period": period,
        }),
        Kind::PaymentFailed => json!({
            "plan": "Starter", "amount": "29.00", "currency": "USD", "invoice": "in_sample",
            "grace_until": "2026-12-04 10:00 UTC", "fallback_plan": "Free",
            "fallback_limit": "100", "next_attempt": "2026-12-02 10:00 UTC",
        }),
        Kind::PlanChanged => json!({
            "old_plan": "Starter", "new_plan": "Professional", "new_limit": "5,000",
            "effective": "2026-12-10",
        }),
        Kind::Cancelled => json!({
            "plan": "Starter", "at_period_end": true, "ends_on": "2026-12-31",
            "fallback_plan": "Free", "fallback_limit": "100",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_renders_its_sample_with_branding_and_links() {
        let t = Templates::load(None).expect("templates");
        let b = Branding {
            sender_name: "Acme Billing".into(),
            brand_color: "#ff5500".into(),
            product_name: "Acme".into(),
            reply_to: None,
        };
        for kind in Kind::ALL {
            let links = Links {
                unsubscribe: kind
                    .can_unsubscribe()
                    .then(|| "https://x/emails/unsubscribe?sig=1".into()),
                preferences: "https://x/emails/preferences?sig=2".into(),
            };
            let r = t
                .render(kind, "cust_1", &b, &links, &sample(kind))
                .expect("render");
            assert!(
                !r.subject.is_empty() && !r.subject.contains('{'),
                "{kind}: {r:?}"
            );
            assert!(r.html.contains("#ff5500"), "{kind}: brand colour");
            assert!(r.html.contains("preferences"), "{kind}: {}", r.html);
            assert!(r.text.contains("emails/preferences"), "{kind}");
            assert_eq!(
                r.text.contains("emails/unsubscribe"),
                kind.can_unsubscribe(),
                "{kind}"
            );
            assert!(!r.text.contains("{{") && !r.html.contains("{{"), "{kind}");
        }
    }

    #[test]
    fn html_is_escaped() {
        let t = Templates::load(None).expect("templates");
        let mut d = sample(Kind::PlanChanged);
        d["new_plan"] = json!("<script>x</script>");
        let r = t
            .render(
                Kind::PlanChanged,
                "c",
                &Branding::default(),
                &Links::default(),
                &d,
            )
            .expect("render");
        assert!(!r.html.contains("<script>"), "{}", r.html);
    }
}
