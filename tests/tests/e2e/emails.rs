//! Customer emails (issue 22) end to end against the real broker, ClickHouse, the project's SMTP
//! sink and the Stripe fake: each kind reaches the customer (a usage warning from the
//! aggregator's alert, a receipt, a payment failure, a plan change, a cancellation, a renewal
//! reminder), branded and with the right headers; the preview, the outbox and its listing.

use std::time::Duration;

use platform::principal::Scope;
use rdkafka::producer::{FutureProducer, FutureRecord};
use reqwest::Method;
use schemas::quota::{Alert, Period};
use serde_json::{Value, json};
use tests::billing::{BillingSync, Fake, billing_config};
use tests::emails::{mailer_config, outbox_dir, start_billing_mailer};
use tests::smtp::{Received, SmtpSink};
use tests::{TestEnv, wait_until};
use time::OffsetDateTime;

const APP: &[Scope] = &[Scope::Ingest, Scope::Read];
const WAIT: Duration = Duration::from_secs(30);

/// Decodes quoted-printable soft breaks and `=XX` escapes (the HTML part's long lines).
pub(crate) fn unqp(s: &str) -> String {
    let s = s.replace("=\r\n", "").replace("=\n", "");
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'='
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The message of `kind` to the sink, waiting for it.
pub(crate) async fn message_of(sink: &SmtpSink, kind: &str) -> Received {
    wait_until(WAIT, &format!("a {kind} email"), || async {
        sink.messages()
            .into_iter()
            .find(|m| m.header("X-Metering-Email-Kind").as_deref() == Some(kind))
    })
    .await
}

/// Produces an alert to the alerts topic as the aggregator does.
pub(crate) async fn produce_alert(env: &TestEnv, customer: &str, threshold: u8, used: f64) {
    let now = OffsetDateTime::now_utc();
    let period = Period::containing(None, now);
    let alert = Alert {
        id: Alert::make_id("acme", customer, "api_call", period.start, threshold),
        tenant: "acme".into(),
        customer: customer.into(),
        meter: "api_call".into(),
        threshold,
        used,
        limit: 100,
        plan: "free".into(),
        period_start: period.start,
        period_end: period.end,
        fired_at: now,
    };
    let producer: FutureProducer = schemas::kafka::client_config(&env.kafka)
        .set("acks", "all")
        .create()
        .expect("producer");
    let payload = serde_json::to_string(&alert).expect("alert JSON");
    producer
        .send(
            FutureRecord::to(&env.topics.alerts)
                .key(&alert.id)
                .payload(&payload),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("produce the alert");
}

pub(crate) async fn call(
    http: &reqwest::Client,
    sync: &BillingSync,
    method: Method,
    path: &str,
    key: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = http
        .request(method, format!("{}{path}", sync.running.url))
        .bearer_auth(key);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Checkout of `plan` for the customer of `key`, until the subscription is active; its id.
pub(crate) async fn subscribe(
    http: &reqwest::Client,
    sync: &BillingSync,
    key: &str,
    plan: &str,
) -> String {
    let (s, v) = call(
        http,
        sync,
        Method::POST,
        "/subscription/create",
        key,
        Some(json!({"plan": plan})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let url = v["url"].as_str().expect("checkout url");
    assert_eq!(http.get(url).send().await.expect("visit").status(), 200);
    wait_until(WAIT, "subscription active", || async {
        let (_, v) = call(http, sync, Method::GET, "/subscription/status", key, None).await;
        (v["status"] == "active" && v["plan"] == plan).then(|| {
            v["subscription_id"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_kind_reaches_the_customer_over_smtp_branded_with_the_right_headers() {
    let env = TestEnv::new("emails_kinds").await;
    let fake = Fake::start().await;
    let sink = SmtpSink::start().await;
    let mut emails = mailer_config(Some(&sink), outbox_dir(&env.name));
    // A fresh subscription renews in about 30 days: due for a reminder 40 days ahead.
    emails.renewal_reminder_days = 40;
    let (sync, mailer) = start_billing_mailer(&fake, billing_config(&env, &fake), emails).await;
    let mut agg = env.aggregator_config();
    agg.customer_emails.enabled = true;
    let (aggregator, _) = env.start_aggregator_with(agg).await;
    let http = reqwest::Client::new();
    let admin = env.key("acme", &[Scope::Admin], None).await;
    let key = env.key("acme", APP, Some("cust_mail")).await;
    let (s, v) = call(
        &http,
        &sync,
        Method::PUT,
        "/admin/customers/cust_mail/email",
        &admin,
        Some(json!({"email": "owner@customer.test"})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let (s, _) = call(
        &http,
        &sync,
        Method::PUT,
        "/admin/customers/cust_mail/email",
        &admin,
        Some(json!({"email": "not an address"})),
    )
    .await;
    assert_eq!(s, 400);

    // Receipt: the checkout's first invoice is paid.
    let sub = subscribe(&http, &sync, &key, "starter").await;
    let receipt = message_of(&sink, "receipt").await;
    assert_eq!(receipt.to, vec!["owner@customer.test".to_string()]);
    assert_eq!(receipt.from, "billing@metering.test");
    assert_eq!(
        receipt.header("From").as_deref(),
        Some("\"Acme Billing\" <billing@metering.test>")
    );
    assert_eq!(
        receipt.header("Reply-To").as_deref(),
        Some("support@acme.test")
    );
    let subject = receipt.header("Subject").unwrap_or_default();
    assert!(
        subject.contains("29.00 USD") && subject.contains("Starter"),
        "{subject}"
    );
    assert!(
        receipt.header("List-Unsubscribe").is_none(),
        "receipts cannot be turned off"
    );
    let body = unqp(&receipt.body());
    assert!(
        body.contains("multipart/alternative")
            || receipt
                .header("Content-Type")
                .unwrap_or_default()
                .contains("multipart/alternative")
    );
    assert!(body.contains("Plan:    Starter"), "{body}");
    assert!(body.contains("#ff5500"), "brand colour in the HTML part");
    assert!(body.contains("Receipts are always sent"), "{body}");

    // Usage warning: an alert at 90 % is mailed; 80 % is not one of the customer's thresholds.
    produce_alert(&env, "cust_mail", 80, 80.0).await;
    produce_alert(&env, "cust_mail", 90, 90.0).await;
    let warning = message_of(&sink, "usage_warning").await;
    let subject = warning.header("Subject").unwrap_or_default();
    assert!(subject.contains("90 %"), "{subject}");
    let unsubscribe = warning.header("List-Unsubscribe").unwrap_or_default();
    assert!(
        unsubscribe.starts_with('<') && unsubscribe.contains("/emails/unsubscribe?"),
        "{unsubscribe}"
    );
    assert_eq!(
        warning.header("List-Unsubscribe-Post").as_deref(),
        Some("List-Unsubscribe=One-Click")
    );
    assert!(unqp(&warning.body()).contains("you have used 90 of the 100 API calls"));

    // Renewal reminder.
    let (s, v) = call(
        &http,
        &sync,
        Method::POST,
        "/admin/emails/reminders",
        &admin,
        None,
    )
    .await;
    assert_eq!((s, v["queued"].clone()), (200, json!(1)), "{v}");
    let reminder = message_of(&sink, "renewal_reminder").await;
    assert!(
        reminder
            .header("Subject")
            .unwrap_or_default()
            .contains("renews on")
    );

    // Plan changed (the portal's price change).
    let professional = fake
        .prices
        .iter()
        .find(|(k, _)| k == "STRIPE_PRICE_ID_PROFESSIONAL")
        .map(|(_, v)| v.clone())
        .expect("professional price");
    fake.post(
        &format!("/_fake/subscriptions/{sub}/update"),
        json!({"price": professional}),
    )
    .await;
    let changed = message_of(&sink, "plan_changed").await;
    assert_eq!(
        changed.header("Subject").as_deref(),
        Some("Your plan is now Professional")
    );
    assert!(unqp(&changed.body()).contains("from Starter to Professional"));

    // Cancelled at the period end, through the API.
    let (s, v) = call(
        &http,
        &sync,
        Method::POST,
        "/subscription/cancel",
        &key,
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let cancelled = message_of(&sink, "cancelled").await;
    assert!(
        cancelled
            .header("Subject")
            .unwrap_or_default()
            .contains("ends on")
    );

    // Payment failed (on the renewal): the grace period and what happens next.
    fake.post(
        &format!("/_fake/subscriptions/{sub}/payment_failed"),
        json!({}),
    )
    .await;
    let failed = message_of(&sink, "payment_failed").await;
    let text = unqp(&failed.body());
    assert!(
        text.contains("stays active until") && text.contains("Free plan (100 calls a month)"),
        "{text}"
    );

    // One each, the 80 % alert none; the metrics count them.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let kinds: Vec<String> = sink
        .messages()
        .iter()
        .filter_map(|m| m.header("X-Metering-Email-Kind"))
        .collect();
    let mut sorted = kinds.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        [
            "cancelled",
            "payment_failed",
            "plan_changed",
            "receipt",
            "renewal_reminder",
            "usage_warning"
        ],
        "{kinds:?}"
    );
    let metrics = http
        .get(format!("{}/metrics", sync.running.url))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .unwrap_or_default();
    assert!(
        metrics.contains("customer_emails_total{kind=\"receipt\",outcome=\"sent\"} 1"),
        "{metrics}"
    );
    assert!(metrics.trim_end().ends_with("# EOF"), "one exposition");
    assert_eq!(mailer.metrics().get("usage_warning", "sent"), 1);

    aggregator.stop().await;
    sync.running.stop().await;
    fake.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_preview_renders_each_kind_and_without_smtp_emails_go_to_the_outbox() {
    let env = TestEnv::new("emails_outbox").await;
    let fake = Fake::start().await;
    let dir = outbox_dir(&env.name);
    let (sync, mailer) = start_billing_mailer(
        &fake,
        billing_config(&env, &fake),
        mailer_config(None, dir.clone()),
    )
    .await;
    let http = reqwest::Client::new();
    let admin = env.key("acme", &[Scope::Admin], None).await;
    let base = sync.running.url.clone();
    let get = |path: String| {
        let (http, admin, base) = (http.clone(), admin.clone(), base.clone());
        async move {
            let r = http
                .get(format!("{base}{path}"))
                .bearer_auth(&admin)
                .send()
                .await
                .expect("GET");
            (r.status().as_u16(), r.text().await.unwrap_or_default())
        }
    };
    for kind in mailer::Kind::ALL {
        let (s, html) = get(format!("/admin/emails/preview/{kind}")).await;
        assert_eq!(s, 200, "{kind}: {html}");
        assert!(
            html.contains("<html") && html.contains("#ff5500"),
            "{kind}: {html}"
        );
        let (s, text) = get(format!("/admin/emails/preview/{kind}?format=text")).await;
        assert_eq!(s, 200);
        assert!(text.starts_with("Subject: "), "{kind}: {text}");
    }
    let (s, _) = get("/admin/emails/preview/newsletter".into()).await;
    assert_eq!(s, 404);
    let r = http
        .get(format!("{}/admin/emails/preview/receipt", sync.running.url))
        .send()
        .await
        .expect("GET");
    assert_eq!(r.status(), 401, "the preview needs an admin key");

    // Without SMTP the email is a file in the outbox, listed by the admin API and the CLI.
    mailer
        .ledger()
        .set_contact("acme", "cust_box", "admin", "box@customer.test")
        .await
        .expect("contact");
    let email = mailer::Email {
        tenant: "acme".into(),
        customer: "cust_box".into(),
        kind: mailer::Kind::RenewalReminder,
        scope: "sub_x:1".into(),
        recipient: String::new(),
        data: mailer::render::sample(mailer::Kind::RenewalReminder),
    };
    mailer.enqueue(&email).await.expect("enqueue");
    let files = wait_until(WAIT, "an .eml file", || async {
        let l = mailer::outbox::list(&dir).ok()?;
        (!l.is_empty()).then_some(l)
    })
    .await;
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].to, "box@customer.test");
    assert_eq!(files[0].kind, "renewal_reminder");
    // The `sent` row follows the file.
    let v: Value = wait_until(WAIT, "the sent row", || async {
        let (s, listing) = get("/admin/emails".into()).await;
        assert_eq!(s, 200);
        let v: Value = serde_json::from_str(&listing).expect("JSON");
        v["emails"]
            .as_array()
            .is_some_and(|e| e.iter().any(|r| r["status"] == "sent"))
            .then_some(v)
    })
    .await;
    assert_eq!(v["smtp"], json!(false));
    assert_eq!(v["outbox"].as_array().map(Vec::len), Some(1), "{v}");
    assert!(
        v["emails"]
            .as_array()
            .is_some_and(|e| e.iter().any(|r| r["status"] == "sent"
                && r["reason"]
                    .as_str()
                    .is_some_and(|x| x.starts_with("outbox: ")))),
        "{v}"
    );
    let out = std::process::Command::new(tests::binary("outbox"))
        .arg(&dir)
        .output()
        .expect("run outbox");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("1 email(s)") && text.contains("box@customer.test"),
        "{text}"
    );
    assert_eq!(mailer.metrics().get("renewal_reminder", "outbox"), 1);

    // The ledger's row struct matches the table.
    let columns: Vec<(String, String)> = env
        .ch()
        .query("SELECT name, type FROM system.columns WHERE database = currentDatabase() AND table = 'email_ledger'")
        .fetch_all()
        .await
        .expect("columns");
    let expected: Vec<(String, String)> = mailer::ledger::LEDGER_COLUMNS
        .iter()
        .map(|(n, t)| (n.to_string(), t.to_string()))
        .collect();
    assert_eq!(columns, expected);

    sync.running.stop().await;
    fake.stop().await;
}
