//! What a notification says: the webhook body and the email (subject, text, headers).

use lettre::Message as Email;
use lettre::message::Mailbox;
use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use schemas::Catalog;
use schemas::quota::Alert;
use sha2::{Digest, Sha256};

use super::{EMAIL_ALERT_ID_HEADER, EVENT_TYPE};

/// The webhook body: `{"id", "type", "created", "data": <Alert>}` (the same bytes on every attempt).
pub(crate) fn webhook_body(alert: &Alert) -> Vec<u8> {
    let event = serde_json::json!({
        "id": alert.id,
        "type": EVENT_TYPE,
        "created": alert.fired_at.unix_timestamp(),
        "data": alert,
    });
    serde_json::to_vec(&event).unwrap_or_default()
}

fn number(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        format!("{x:.2}")
    }
}

fn display_names<'a>(alert: &'a Alert, catalog: &'a Catalog) -> (&'a str, &'a str) {
    let meter = catalog
        .meter(&alert.meter)
        .map_or(alert.meter.as_str(), |m| m.name.as_str());
    let plan = catalog
        .plan(&alert.plan)
        .map_or(alert.plan.as_str(), |p| p.name.as_str());
    (meter, plan)
}

/// Email subject: `API calls at 80 % of the Free plan limit (customer cust_1)`.
pub(crate) fn email_subject(alert: &Alert, catalog: &Catalog) -> String {
    let (meter, plan) = display_names(alert, catalog);
    format!(
        "{meter} at {} % of the {plan} plan limit (customer {})",
        alert.threshold, alert.customer
    )
}

/// Email text: what was used of which limit in which period.
pub(crate) fn email_text(alert: &Alert, catalog: &Catalog) -> String {
    let (meter, plan) = display_names(alert, catalog);
    let last_day = alert.period_end.previous_day().unwrap_or(alert.period_end);
    let share = if alert.limit == 0 {
        String::new()
    } else {
        format!(" ({} %)", number(alert.used * 100.0 / alert.limit as f64))
    };
    let fired = alert
        .fired_at
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let mut text = format!(
        "Customer {customer} of tenant {tenant} has reached {threshold} % of the\n\
         {plan} plan limit for {meter}.\n\
         \n\
         Used:      {used} of {limit}{share}\n\
         Threshold: {threshold} %\n\
         Plan:      {plan}\n\
         Period:    {start} to {last} (UTC, inclusive)\n\
         Alert id:  {id}\n\
         Fired at:  {fired}\n",
        customer = alert.customer,
        tenant = alert.tenant,
        threshold = alert.threshold,
        used = number(alert.used),
        limit = alert.limit,
        start = alert.period_start,
        last = last_day,
        id = alert.id,
    );
    if alert.threshold >= 100 {
        text.push_str(
            "\nFurther requests are refused until the period ends or the plan changes.\n",
        );
    } else {
        text.push_str("\nRequests are refused once usage reaches 100 % of the limit.\n");
    }
    text
}

/// The notification email for `alert`, with a `Message-ID` derived from the alert id (so a mail
/// system can recognize a duplicate).
pub(crate) fn email_message(
    alert: &Alert,
    catalog: &Catalog,
    from: &str,
    to: &[String],
) -> Result<Email, String> {
    let mut builder = Email::builder()
        .from(from.parse::<Mailbox>().map_err(|e| e.to_string())?)
        .subject(email_subject(alert, catalog))
        .message_id(Some(format!(
            "<{}@metering.alerts>",
            &hex::encode(Sha256::digest(alert.id.as_bytes()))[..32]
        )));
    for address in to {
        builder = builder.to(address.parse::<Mailbox>().map_err(|e| e.to_string())?);
    }
    let mut email = builder
        .header(ContentType::TEXT_PLAIN)
        .body(email_text(alert, catalog))
        .map_err(|e| e.to_string())?;
    email.headers_mut().insert_raw(HeaderValue::new(
        HeaderName::new_from_ascii_str(EMAIL_ALERT_ID_HEADER),
        alert.id.clone(),
    ));
    Ok(email)
}

#[cfg(test)]
mod tests {
    use time::macros::{date, datetime};

    use super::*;

    fn alert(threshold: u8, used: f64) -> Alert {
        Alert {
            id: Alert::make_id(
                "acme",
                "cust_1",
                "api_call",
                date!(2026 - 03 - 01),
                threshold,
            ),
            tenant: "acme".into(),
            customer: "cust_1".into(),
            meter: "api_call".into(),
            threshold,
            used,
            limit: 100,
            plan: "free".into(),
            period_start: date!(2026 - 03 - 01),
            period_end: date!(2026 - 04 - 01),
            fired_at: datetime!(2026-03-10 12:00:00 UTC),
        }
    }

    #[test]
    fn webhook_body_wraps_the_alert() {
        let a = alert(80, 80.0);
        let v: serde_json::Value = serde_json::from_slice(&webhook_body(&a)).expect("json");
        assert_eq!(v["id"], a.id.as_str());
        assert_eq!(v["type"], EVENT_TYPE);
        assert_eq!(v["created"], a.fired_at.unix_timestamp());
        let back: Alert = serde_json::from_value(v["data"].clone()).expect("alert");
        assert_eq!(back, a);
    }

    #[test]
    fn email_reads_well() {
        let catalog = Catalog::default();
        let a = alert(80, 81.0);
        assert_eq!(
            email_subject(&a, &catalog),
            "API calls at 80 % of the Free plan limit (customer cust_1)"
        );
        let text = email_text(&a, &catalog);
        assert!(text.contains("Used:      81 of 100 (81 %)"), "{text}");
        assert!(
            text.contains("Period:    2026-03-01 to 2026-03-31"),
            "{text}"
        );
        let email = email_message(
            &a,
            &catalog,
            "Metering <alerts@example.com>",
            &["ops@acme.test".into(), "cto@acme.test".into()],
        )
        .expect("email");
        let raw = String::from_utf8(email.formatted()).expect("utf-8");
        assert!(
            raw.contains("Subject: API calls at 80 % of the Free plan limit"),
            "{raw}"
        );
        assert!(raw.contains("To: ops@acme.test, cto@acme.test"), "{raw}");
        assert!(
            raw.contains(&format!("{EMAIL_ALERT_ID_HEADER}: {}", a.id)),
            "{raw}"
        );
        let envelope: Vec<String> = email
            .envelope()
            .to()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(envelope, ["ops@acme.test", "cto@acme.test"]);
    }
}
