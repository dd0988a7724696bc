//! Customer emails (issue 22): once per key across two billing-sync instances sending at the same
//! time and across a restart (the same webhook redelivered to each), retries on SMTP 4xx and a
//! dead letter with the reason on 5xx (and an admin retry of dead letters), and the signed unsubscribe link (a tampered one refused,
//! receipts never turned off) with the customer's choices in the preference API.

use std::collections::BTreeMap;
use std::time::Duration;

use mailer::{Email, Kind, Mailer};
use platform::principal::Scope;
use reqwest::Method;
use serde_json::{Value, json};
use tests::billing::{Fake, billing_config};
use tests::emails::{mailer_config, outbox_dir, start_billing_mailer};
use tests::smtp::SmtpSink;
use tests::{TestEnv, wait_until};
use tokio_util::sync::CancellationToken;

use crate::emails::{call, message_of, subscribe};

const APP: &[Scope] = &[Scope::Ingest, Scope::Read];

fn warning(customer: &str, scope: &str) -> Email {
    Email {
        tenant: "acme".into(),
        customer: customer.into(),
        kind: Kind::UsageWarning,
        scope: scope.into(),
        recipient: format!("{customer}@customer.test"),
        data: mailer::render::sample(Kind::UsageWarning),
    }
}

/// Messages per `X-Metering-Email-Key`.
fn per_key(sink: &SmtpSink) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for m in sink.messages() {
        *out.entry(m.header("X-Metering-Email-Key").unwrap_or_default())
            .or_insert(0) += 1;
    }
    out
}

async fn ledger_statuses(env: &TestEnv, key: &str) -> Vec<(String, u32, u16, String)> {
    env.ch()
        .query("SELECT status, attempt, code, reason FROM email_ledger WHERE key = ? AND status != 'queued' AND status != 'claimed' ORDER BY claimed_ns, attempt")
        .bind(key)
        .fetch_all()
        .await
        .expect("email_ledger")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_email_is_sent_once_by_two_instances_and_after_a_restart() {
    let env = TestEnv::new("emails_once").await;
    let fake = Fake::start().await;
    let sink = SmtpSink::start().await;
    let config = || mailer_config(Some(&sink), outbox_dir(&env.name));
    let (a, mailer_a) = start_billing_mailer(&fake, billing_config(&env, &fake), config()).await;
    let (b, mailer_b) = start_billing_mailer(&fake, billing_config(&env, &fake), config()).await;
    let http = reqwest::Client::new();
    let admin = env.key("acme", &[Scope::Admin], None).await;
    let key = env.key("acme", APP, Some("cust_once")).await;
    call(
        &http,
        &a,
        Method::PUT,
        "/admin/customers/cust_once/email",
        &admin,
        Some(json!({"email": "once@customer.test"})),
    )
    .await;

    // Both instances queue the same 20 emails, each twice, while both dispatchers run.
    let emails: Vec<Email> = (0..20)
        .map(|i| warning("cust_many", &format!("api_call:2026-12-01:{i}")))
        .collect();
    let (qa, qb) = tokio::join!(
        async {
            for e in &emails {
                mailer_a.enqueue(e).await.expect("enqueue a");
            }
        },
        async {
            for e in emails.iter().rev() {
                mailer_b.enqueue(e).await.expect("enqueue b");
            }
        },
    );
    let ((), ()) = (qa, qb);
    for e in &emails {
        mailer_a.enqueue(e).await.expect("again");
    }
    wait_until(Duration::from_secs(30), "20 warnings", || async {
        (per_key(&sink).len() >= 20).then_some(())
    })
    .await;

    // The checkout's receipt; its invoice.paid is then delivered again to the other instance.
    subscribe(&http, &a, &key, "starter").await;
    message_of(&sink, "receipt").await;
    let paid = fake.events_of("invoice.paid").await;
    let paid_id = paid[0]["id"].as_str().expect("event id").to_string();
    fake.deliver_to(&b.webhook_url()).await;
    let v = fake
        .post(
            &format!("/_fake/events/{paid_id}/deliver"),
            json!({"signature": "valid"}),
        )
        .await;
    assert_eq!(v["status"], json!(200), "{v}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let counts = per_key(&sink);
    assert_eq!(counts.len(), 21, "{counts:?}");
    assert!(
        counts.values().all(|n| *n == 1),
        "each key once: {counts:?}"
    );
    let sent: u64 = [&mailer_a, &mailer_b]
        .iter()
        .map(|m| m.metrics().get("usage_warning", "sent"))
        .sum();
    assert_eq!(sent, 20, "sent once between the two");

    // Restart: both stop, a new instance starts; the same event and emails again send nothing.
    a.running.stop().await;
    b.running.stop().await;
    let (c, mailer_c) = start_billing_mailer(&fake, billing_config(&env, &fake), config()).await;
    let v = fake
        .post(
            &format!("/_fake/events/{paid_id}/deliver"),
            json!({"signature": "valid"}),
        )
        .await;
    assert_eq!(v["status"], json!(200), "{v}");
    for e in &emails {
        mailer_c.enqueue(e).await.expect("enqueue c");
    }
    let s = mailer_c
        .dispatch_once(&CancellationToken::new())
        .await
        .expect("dispatch");
    assert_eq!((s.sent, s.dead), (0, 0), "{s:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        sink.messages().len(),
        21,
        "nothing sent again after the restart"
    );
    assert_eq!(mailer_c.metrics().get("receipt", "sent"), 0);

    c.running.stop().await;
    fake.stop().await;
}

/// A mailer of its own (no dispatcher running) on `env`'s ClickHouse, sending to `sink`.
fn own_mailer(env: &TestEnv, sink: &SmtpSink, owner: &str) -> Mailer {
    let mut c = mailer_config(Some(sink), outbox_dir(&env.name));
    c.claim_settle_ms = 100;
    Mailer::new(c, env.ch(), owner.into()).expect("mailer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn smtp_4xx_is_retried_with_backoff_and_5xx_is_a_dead_letter_with_the_reason_retried_on_demand()
 {
    let env = TestEnv::new("emails_retry").await;
    let sink = SmtpSink::start().await;
    let mailer = own_mailer(&env, &sink, "retry-test");
    let cancel = CancellationToken::new();

    // 451 twice, then accepted: sent at attempt 3 (max_attempts = 3).
    sink.script_data_replies(&["451 4.3.0 try again later", "451 4.3.0 try again later"]);
    let e = warning("cust_retry", "a");
    mailer.enqueue(&e).await.expect("enqueue");
    let s = mailer.dispatch_once(&cancel).await.expect("dispatch");
    assert_eq!(s.sent, 1, "{s:?}");
    assert_eq!(sink.messages().len(), 1);
    let rows = ledger_statuses(&env, &e.key()).await;
    let shape: Vec<(&str, u32, u16)> = rows
        .iter()
        .map(|(s, a, c, _)| (s.as_str(), *a, *c))
        .collect();
    assert_eq!(
        shape,
        [("retrying", 1, 451), ("retrying", 2, 451), ("sent", 3, 250)],
        "{rows:?}"
    );
    assert_eq!(mailer.metrics().get("usage_warning", "retried"), 2);

    // 550: a dead letter at once, with the relay's reason; not tried again.
    sink.script_data_replies(&["550 5.1.1 no such mailbox"]);
    let dead = warning("cust_dead", "b");
    mailer.enqueue(&dead).await.expect("enqueue");
    let s = mailer.dispatch_once(&cancel).await.expect("dispatch");
    assert_eq!(s.dead, 1, "{s:?}");
    let rows = ledger_statuses(&env, &dead.key()).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!((rows[0].0.as_str(), rows[0].2), ("dead", 550));
    assert!(rows[0].3.contains("no such mailbox"), "{rows:?}");
    // 4xx on every attempt: a dead letter after max_attempts.
    sink.script_data_replies(&["452 4.2.2 mailbox full"; 3]);
    let full = warning("cust_full", "c");
    mailer.enqueue(&full).await.expect("enqueue");
    let s = mailer.dispatch_once(&cancel).await.expect("dispatch");
    assert_eq!(s.dead, 1, "{s:?}");
    let rows = ledger_statuses(&env, &full.key()).await;
    let last = rows.last().expect("final row");
    assert!(
        last.0 == "dead" && last.3.starts_with("gave up after 3 attempts"),
        "{rows:?}"
    );
    assert_eq!(mailer.metrics().get("usage_warning", "dead"), 2);
    // Done keys are not looked at again.
    let s = mailer.dispatch_once(&cancel).await.expect("dispatch");
    assert_eq!(s, mailer::Summary::default());
    assert_eq!(sink.transactions(), 1 + 2 + 1 + 3);

    // A retry of dead letters (POST /admin/emails/retry): the named one is queued again and sent;
    // a sent email, another tenant's key and an unknown key are refused with the reason.
    let r = mailer
        .retry_dead(
            "acme",
            &[
                dead.key(),
                e.key(),
                dead.key().replacen("acme:", "globex:", 1),
                "acme:nobody:usage_warning:x".into(),
            ],
        )
        .await
        .expect("retry");
    assert_eq!(r.requeued, [dead.key()], "{r:?}");
    let reasons: Vec<&str> = r.refused.iter().map(|x| x.reason.as_str()).collect();
    assert_eq!(
        reasons,
        [
            "not a dead letter: it was sent or skipped",
            "no such email",
            "no such email"
        ],
        "{r:?}"
    );
    let s = mailer.dispatch_once(&cancel).await.expect("dispatch");
    assert_eq!((s.sent, s.dead), (1, 0), "{s:?}");
    let rows = ledger_statuses(&env, &dead.key()).await;
    let shape: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(shape, ["dead", "requeued", "sent"], "{rows:?}");
    // Without keys: every dead letter of the tenant (now only the 4xx one), sent once.
    let r = mailer.retry_dead("acme", &[]).await.expect("retry all");
    assert_eq!(r.requeued, [full.key()], "{r:?}");
    let s = mailer.dispatch_once(&cancel).await.expect("dispatch");
    assert_eq!(s.sent, 1, "{s:?}");
    let s = mailer.dispatch_once(&cancel).await.expect("dispatch");
    assert_eq!(s, mailer::Summary::default());
    let r = mailer.retry_dead("acme", &[]).await.expect("retry none");
    assert!(r.requeued.is_empty() && r.refused.is_empty(), "{r:?}");
    let per = per_key(&sink);
    assert_eq!((per[&dead.key()], per[&full.key()]), (1, 1), "{per:?}");
    assert_eq!(sink.transactions(), 1 + 2 + 1 + 3 + 1 + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_unsubscribe_link_turns_a_kind_off_and_a_tampered_link_is_refused() {
    let env = TestEnv::new("emails_unsub").await;
    let fake = Fake::start().await;
    let sink = SmtpSink::start().await;
    let (sync, mailer) = start_billing_mailer(
        &fake,
        billing_config(&env, &fake),
        mailer_config(Some(&sink), outbox_dir(&env.name)),
    )
    .await;
    let http = reqwest::Client::new();
    // Keys made now are loaded by the time they are used (billing-sync reloads them every second).
    let key = env.key("acme", APP, Some("cust_u")).await;
    let other = env.key("acme", APP, Some("cust_other")).await;
    mailer
        .enqueue(&warning("cust_u", "api_call:1:75"))
        .await
        .expect("enqueue");
    let msg = message_of(&sink, "usage_warning").await;
    let header = msg.header("List-Unsubscribe").unwrap_or_default();
    let link = header.trim_matches(['<', '>']);
    let path = &link[link.find("/emails/unsubscribe").expect("path")..];
    let url = format!("{}{path}", sync.running.url);
    // The plain-text part carries the same link.
    assert!(
        crate::emails::unqp(&msg.body()).contains(path),
        "{}",
        msg.body()
    );

    // Tampered: another customer, another kind, a changed signature; each refused with 403.
    let tampered = [
        url.replace("customer=cust_u", "customer=cust_v"),
        url.replace("kind=usage_warning", "kind=renewal_reminder"),
        {
            let (head, sig) = url.split_once("sig=").expect("sig");
            let flipped: String = sig.chars().rev().collect();
            format!("{head}sig={flipped}")
        },
    ];
    for t in &tampered {
        for method in [Method::GET, Method::POST] {
            let r = http
                .request(method.clone(), t)
                .send()
                .await
                .expect("request");
            assert_eq!(r.status(), 403, "{method} {t}");
        }
    }
    // The page asks; the POST (a mail client's one-click) turns warnings off.
    let page = http.get(&url).send().await.expect("GET");
    assert_eq!(page.status(), 200);
    assert!(
        page.text()
            .await
            .unwrap_or_default()
            .contains("<form method=\"post\"")
    );
    let r = http
        .post(&url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("List-Unsubscribe=One-Click")
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status(), 200);
    // The next warning is skipped; a receipt still goes out.
    mailer
        .enqueue(&warning("cust_u", "api_call:1:90"))
        .await
        .expect("enqueue");
    let mut receipt = warning("cust_u", "in_1");
    receipt.kind = Kind::Receipt;
    receipt.data = mailer::render::sample(Kind::Receipt);
    mailer.enqueue(&receipt).await.expect("enqueue");
    message_of(&sink, "receipt").await;
    wait_until(Duration::from_secs(10), "the warning skipped", || async {
        (mailer.metrics().get("usage_warning", "skipped") == 1).then_some(())
    })
    .await;
    assert_eq!(sink.messages().len(), 2);
    let rows = ledger_statuses(&env, &warning("cust_u", "api_call:1:90").key()).await;
    assert_eq!(
        (rows[0].0.as_str(), rows[0].3.as_str()),
        ("skipped", "unsubscribed")
    );

    // A correctly signed link for receipts cannot turn them off.
    let receipt_link =
        mailer
            .signer()
            .unsubscribe_url(&sync.running.url, "acme", "cust_u", Kind::Receipt);
    let r = http.post(&receipt_link).send().await.expect("POST");
    assert_eq!(r.status(), 400);

    // The customer's choices: the signed preference page and the API for the dashboard.
    let prefs_url = mailer
        .signer()
        .preferences_url(&sync.running.url, "acme", "cust_u");
    let page = http
        .get(&prefs_url)
        .send()
        .await
        .expect("GET")
        .text()
        .await
        .unwrap_or_default();
    assert!(
        page.contains("name=\"usage_warning\">")
            && page.contains("name=\"receipt\" checked disabled"),
        "{page}"
    );
    let bad = prefs_url.replace("customer=cust_u", "customer=cust_x");
    assert_eq!(http.get(&bad).send().await.expect("GET").status(), 403);
    let (s, v) = call(
        &http,
        &sync,
        Method::GET,
        "/v1/email-preferences",
        &key,
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let on: BTreeMap<String, bool> = v["kinds"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|k| {
                    (
                        k["kind"].as_str().unwrap_or_default().to_string(),
                        k["subscribed"] == Value::Bool(true),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(on.get("usage_warning"), Some(&false), "{v}");
    assert_eq!(on.get("receipt"), Some(&true), "{v}");
    let (s, _) = call(
        &http,
        &sync,
        Method::PUT,
        "/v1/email-preferences",
        &key,
        Some(json!({"preferences": {"receipt": false}})),
    )
    .await;
    assert_eq!(s, 400);
    let (s, v) = call(
        &http,
        &sync,
        Method::PUT,
        "/v1/email-preferences",
        &key,
        Some(json!({"preferences": {"usage_warning": true, "renewal_reminder": false}})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let (s, _) = call(
        &http,
        &sync,
        Method::GET,
        "/v1/email-preferences?customer=cust_u",
        &other,
        None,
    )
    .await;
    assert_eq!(s, 403, "a customer key sees only its own choices");

    sync.running.stop().await;
    fake.stop().await;
}
