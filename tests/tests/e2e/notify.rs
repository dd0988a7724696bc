//! Alert notifications against the real broker and ClickHouse: alerts produced to the alerts topic reach a signed webhook and an SMTP sink exactly once per channel, retries follow the status codes, and every attempt is in the delivery log.
//! Webhooks are checked as a Standard Webhooks receiver checks them, with a verifier written here
//! from the specification (not the aggregator's), and with the deprecated `Metering-Signature`.

use std::collections::BTreeMap;
use std::time::Duration;

use aggregator::config::{NotifyConfig, SmtpConfig, TenantTargets};
use aggregator::metrics::{ChannelLabels, Metrics};
use aggregator::notify::{self, EMAIL_ALERT_ID_HEADER, EVENT_ID_HEADER, SIGNATURE_HEADER};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use schemas::quota::{Alert, Period};
use schemas::rows::AlertDeliveryRow;
use tests::smtp::SmtpSink;
use tests::webhook::WebhookReceiver;
use tests::{TestEnv, wait_until};
use time::OffsetDateTime;

const SECRET: &str = "whsec_acme_test";
const FROM: &str = "Metering <alerts@metering.test>";
const WAIT: Duration = Duration::from_secs(30);
const TOLERANCE: Duration = Duration::from_secs(300);

/// A Standard Webhooks receiver's check, written from the specification
/// (<https://www.standardwebhooks.com/>, "Verifying webhook authenticity"), independent of the
/// aggregator's code: the key is the base64 after `whsec_`; the signed content is
/// `"{webhook-id}.{webhook-timestamp}.{body}"`; `webhook-signature` is a space-separated list of
/// `v1,<base64 HMAC-SHA256>`, one of which must match; the timestamp must be within 5 minutes.
fn standard_webhooks_verify(
    whsec: &str,
    r: &tests::webhook::Request,
    body: &[u8],
) -> Result<(), String> {
    use base64::Engine;
    use hmac::Mac;
    let b64 = base64::engine::general_purpose::STANDARD;
    let key = whsec
        .strip_prefix("whsec_")
        .ok_or("no whsec_ prefix")
        .and_then(|k| b64.decode(k).map_err(|_| "the secret is not base64"))?;
    let id = r.header("webhook-id").ok_or("no webhook-id")?;
    let ts = r
        .header("webhook-timestamp")
        .ok_or("no webhook-timestamp")?;
    let sigs = r
        .header("webhook-signature")
        .ok_or("no webhook-signature")?;
    let t: i64 = ts.parse().map_err(|_| "the timestamp is not an integer")?;
    if (OffsetDateTime::now_utc().unix_timestamp() - t).abs() > 5 * 60 {
        return Err(format!("timestamp {t} is outside the tolerance"));
    }
    let mut content = format!("{id}.{ts}.").into_bytes();
    content.extend_from_slice(body);
    for sig in sigs.split(' ') {
        let Some(("v1", value)) = sig.split_once(',') else {
            continue;
        };
        let Ok(value) = b64.decode(value) else {
            continue;
        };
        let mut mac =
            hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).map_err(|e| e.to_string())?;
        mac.update(&content);
        if mac.verify_slice(&value).is_ok() {
            return Ok(());
        }
    }
    Err(format!("no v1 signature of {sigs:?} matches"))
}

/// The `whsec_` form of a secret that is not one (`whsec_` and the base64 of its bytes), as an
/// operator gives it to a receiver's library.
fn whsec_of_raw(secret: &str) -> String {
    use base64::Engine;
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(secret.as_bytes())
    )
}

// ---------------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------------

/// An alert of the current period for `acme`/`customer`.
fn alert(customer: &str, threshold: u8, used: f64) -> Alert {
    let now = OffsetDateTime::now_utc();
    let period = Period::containing(None, now);
    Alert {
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
    }
}

/// Produces `alert` to the alerts topic as the aggregator does (key = alert id).
async fn produce(env: &TestEnv, alert: &Alert) {
    let producer: FutureProducer = schemas::kafka::client_config(&env.kafka)
        .set("acks", "all")
        .create()
        .expect("producer");
    let payload = serde_json::to_string(alert).expect("alert JSON");
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

fn targets(webhook_url: Option<String>, email_to: &[&str]) -> TenantTargets {
    TenantTargets {
        webhook_url,
        webhook_secret: SECRET.into(),
        email_to: email_to.iter().map(|s| s.to_string()).collect(),
    }
}

/// Aggregator config with notifications for the given tenants and fast retries.
fn config(
    env: &TestEnv,
    group: &str,
    tenants: BTreeMap<String, TenantTargets>,
    smtp: Option<SmtpConfig>,
    max_attempts: u32,
) -> aggregator::Config {
    aggregator::Config {
        group_id: group.into(),
        notify: NotifyConfig {
            enabled: true,
            tenants,
            smtp,
            max_attempts,
            initial_backoff_ms: 100,
            max_backoff_ms: 400,
            request_timeout_ms: 2_000,
        },
        ..env.aggregator_config()
    }
}

async fn deliveries(env: &TestEnv) -> Vec<AlertDeliveryRow> {
    env.ch()
        .query("SELECT ?fields FROM alert_deliveries ORDER BY alert_id, channel, attempt")
        .fetch_all()
        .await
        .expect("read alert_deliveries")
}

/// `(channel, attempt, status, http_status)` of the log rows of one alert, by channel and attempt.
async fn attempts_of(env: &TestEnv, alert_id: &str) -> Vec<(String, u32, String, u16)> {
    deliveries(env)
        .await
        .into_iter()
        .filter(|r| r.alert_id == alert_id)
        .map(|r| (r.channel, r.attempt, r.status, r.http_status))
        .collect()
}

fn row(channel: &str, attempt: u32, status: &str, code: u16) -> (String, u32, String, u16) {
    (channel.into(), attempt, status.into(), code)
}

/// `(attempts, delivered, failed)` counters of a channel.
fn counters(m: &Metrics, channel: &str) -> (u64, u64, u64) {
    let l = ChannelLabels {
        channel: channel.into(),
    };
    (
        m.notification_attempts.get_or_create(&l).get(),
        m.notifications_delivered.get_or_create(&l).get(),
        m.notifications_failed.get_or_create(&l).get(),
    )
}

/// Reads the committed offset of the notifier's group (`{group}-notify`) on the alerts topic.
struct CommitReader {
    consumer: BaseConsumer,
    topic: String,
}

impl CommitReader {
    fn new(env: &TestEnv, group: &str) -> Self {
        let consumer: BaseConsumer = schemas::kafka::client_config(&env.kafka)
            .set("group.id", format!("{group}-notify"))
            .set("enable.auto.commit", "false")
            .create()
            .expect("offset reader");
        Self {
            consumer,
            topic: env.topics.alerts.clone(),
        }
    }

    /// The committed offset of partition 0 (the alerts topic has one), -1 when none.
    fn committed(&self) -> i64 {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.topic, 0);
        let got = tokio::task::block_in_place(|| {
            self.consumer.committed_offsets(tpl, Duration::from_secs(5))
        });
        got.ok()
            .and_then(|t| {
                t.find_partition(&self.topic, 0).map(|p| match p.offset() {
                    Offset::Offset(o) => o,
                    _ => -1,
                })
            })
            .unwrap_or(-1)
    }

    /// Waits until the committed offset reaches `offset`, and checks it did not pass it.
    async fn wait_for(&self, offset: i64) {
        wait_until(
            WAIT,
            &format!("the notifier to commit offset {offset}"),
            || async { (self.committed() >= offset).then_some(()) },
        )
        .await;
        assert_eq!(self.committed(), offset, "committed offset");
    }
}

/// A local port nothing listens on.
async fn closed_port() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    l.local_addr().expect("addr").port()
}

// ---------------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_alert_reaches_the_signed_webhook_and_the_mailbox_and_is_logged() {
    let env = TestEnv::new("notify_basic").await;
    let hook = WebhookReceiver::start().await;
    let other_hook = WebhookReceiver::start().await;
    let sink = SmtpSink::start().await;
    let tenants = BTreeMap::from([
        (
            "acme".to_string(),
            targets(Some(hook.url()), &["ops@acme.test", "billing@acme.test"]),
        ),
        (
            "globex".to_string(),
            targets(Some(other_hook.url()), &["ops@globex.test"]),
        ),
    ]);
    let cfg = config(&env, &env.group, tenants, Some(sink.smtp_config(FROM)), 5);
    let (agg, metrics) = env.start_aggregator_with(cfg).await;
    let a = alert("cust_1", 80, 80.0);
    produce(&env, &a).await;

    wait_until(WAIT, "2 delivered rows in the log", || async {
        let rows = deliveries(&env).await;
        (rows.iter().filter(|r| r.status == "delivered").count() == 2).then_some(())
    })
    .await;

    // The webhook: one signed POST with the alert.
    let requests = hook.requests();
    assert_eq!(requests.len(), 1, "webhook requests: {requests:?}");
    let r = &requests[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, "/hooks/metering");
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header(EVENT_ID_HEADER), Some(a.id.as_str()));
    let signature = r.header(SIGNATURE_HEADER).expect("signature header");
    let now = OffsetDateTime::now_utc().unix_timestamp();
    assert!(
        notify::verify(signature, SECRET, &r.body, TOLERANCE, now),
        "signature {signature} does not verify"
    );
    assert!(!notify::verify(
        signature,
        "whsec_other",
        &r.body,
        TOLERANCE,
        now
    ));
    // The same request as Standard Webhooks (the configured secret is not `whsec_<base64>`, so
    // its bytes are the key) with the alert id as `webhook-id`.
    assert_eq!(r.header("webhook-id"), Some(a.id.as_str()));
    standard_webhooks_verify(&whsec_of_raw(SECRET), r, &r.body).expect("Standard Webhooks");
    assert!(standard_webhooks_verify(&whsec_of_raw("whsec_other"), r, &r.body).is_err());
    let body = r.json();
    assert_eq!(body["id"], a.id.as_str());
    assert_eq!(body["type"], "usage.threshold_reached");
    assert_eq!(body["created"], a.fired_at.unix_timestamp());
    let data: Alert = serde_json::from_value(body["data"].clone()).expect("data is an Alert");
    assert_eq!(data, a);
    assert!(
        other_hook.requests().is_empty(),
        "another tenant's webhook was called"
    );

    // The email: one message to both recipients.
    let mail = sink.messages();
    assert_eq!(mail.len(), 1, "messages: {mail:?}");
    let m = &mail[0];
    assert_eq!(m.from, "alerts@metering.test");
    assert_eq!(m.to, ["ops@acme.test", "billing@acme.test"]);
    let subject = m.header("Subject").expect("subject");
    assert_eq!(
        subject,
        "API calls at 80 % of the Free plan limit (customer cust_1)"
    );
    assert_eq!(
        m.header("To").as_deref(),
        Some("ops@acme.test, billing@acme.test")
    );
    assert_eq!(
        m.header(EMAIL_ALERT_ID_HEADER).as_deref(),
        Some(a.id.as_str())
    );
    let text = m.body();
    assert!(text.contains("Used:      80 of 100 (80 %)"), "{text}");
    assert!(
        text.contains(&format!("Period:    {} to ", a.period_start)),
        "{text}"
    );

    // The log: one delivered attempt per channel.
    let rows = deliveries(&env).await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    let email = &rows[0];
    let webhook = &rows[1];
    assert_eq!(
        (
            email.channel.as_str(),
            email.target.as_str(),
            email.attempt,
            email.status.as_str(),
            email.http_status,
            email.error.as_str()
        ),
        (
            "email",
            "ops@acme.test,billing@acme.test",
            1,
            "delivered",
            250,
            ""
        )
    );
    assert_eq!(
        (
            webhook.channel.as_str(),
            webhook.target.as_str(),
            webhook.attempt,
            webhook.status.as_str(),
            webhook.http_status,
            webhook.error.as_str()
        ),
        ("webhook", hook.url().as_str(), 1, "delivered", 200, "")
    );
    for r in &rows {
        assert_eq!(
            (r.alert_id.as_str(), r.tenant.as_str(), r.customer.as_str()),
            (a.id.as_str(), "acme", "cust_1")
        );
        assert!((r.at - OffsetDateTime::now_utc()).abs() < time::Duration::minutes(5));
    }
    assert_eq!(counters(&metrics, "webhook"), (1, 1, 0));
    assert_eq!(counters(&metrics, "email"), (1, 1, 0));
    CommitReader::new(&env, &env.group).wait_for(1).await;
    agg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_republished_or_replayed_alert_is_delivered_once_per_channel() {
    let env = TestEnv::new("notify_once").await;
    let hook = WebhookReceiver::start().await;
    let sink = SmtpSink::start().await;
    let tenants = BTreeMap::from([(
        "acme".to_string(),
        targets(Some(hook.url()), &["ops@acme.test"]),
    )]);
    let smtp = Some(sink.smtp_config(FROM));
    let a = alert("cust_2", 90, 93.0);

    // Published twice (a producer retry, or the aggregator re-deriving it after a restart).
    produce(&env, &a).await;
    produce(&env, &a).await;
    let cfg = config(&env, &env.group, tenants.clone(), smtp.clone(), 5);
    let (agg, metrics) = env.start_aggregator_with(cfg.clone()).await;
    let reader = CommitReader::new(&env, &env.group);
    reader.wait_for(2).await;
    assert_eq!(
        hook.requests().len(),
        1,
        "webhook requests after two copies"
    );
    assert_eq!(sink.messages().len(), 1, "emails after two copies");
    assert_eq!(counters(&metrics, "webhook"), (1, 1, 0));
    assert_eq!(counters(&metrics, "email"), (1, 1, 0));
    agg.stop().await;

    // Restarted: a third copy arrives; it resumes after the committed offset and skips it too.
    produce(&env, &a).await;
    let (agg, metrics) = env.start_aggregator_with(cfg).await;
    reader.wait_for(3).await;
    assert_eq!(counters(&metrics, "webhook"), (0, 0, 0));
    assert_eq!(counters(&metrics, "email"), (0, 0, 0));
    agg.stop().await;

    // Offsets lost (a new group replays the topic from the start): the log still prevents resends.
    let replay_group = format!("{}_replay", env.group);
    let cfg = config(&env, &replay_group, tenants, smtp, 5);
    let (agg, metrics) = env.start_aggregator_with(cfg).await;
    CommitReader::new(&env, &replay_group).wait_for(3).await;
    agg.stop().await;

    assert_eq!(counters(&metrics, "webhook"), (0, 0, 0));
    assert_eq!(counters(&metrics, "email"), (0, 0, 0));
    assert_eq!(hook.requests().len(), 1, "webhook requests after replay");
    assert_eq!(sink.messages().len(), 1, "emails after replay");
    assert_eq!(sink.transactions(), 1, "SMTP transactions after replay");
    assert_eq!(
        attempts_of(&env, &a.id).await,
        vec![
            row("email", 1, "delivered", 250),
            row("webhook", 1, "delivered", 200)
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn webhook_retries_5xx_with_backoff_and_gives_up_on_a_400() {
    let env = TestEnv::new("notify_retry").await;
    let hook = WebhookReceiver::start().await;
    hook.script(&[500, 500, 200, 400]);
    let tenants = BTreeMap::from([("acme".to_string(), targets(Some(hook.url()), &[]))]);
    let cfg = config(&env, &env.group, tenants, None, 5);
    let (agg, metrics) = env.start_aggregator_with(cfg).await;
    let retried = alert("cust_3", 75, 75.0);
    let refused = alert("cust_4", 100, 100.0);
    produce(&env, &retried).await;
    produce(&env, &refused).await;

    // Both alerts are done (delivered, permanently failed) before their offsets are committed.
    CommitReader::new(&env, &env.group).wait_for(2).await;

    let requests = hook.requests();
    let ids: Vec<&str> = requests
        .iter()
        .map(|r| r.header(EVENT_ID_HEADER).unwrap_or_default())
        .collect();
    assert_eq!(
        ids,
        [
            retried.id.as_str(),
            retried.id.as_str(),
            retried.id.as_str(),
            refused.id.as_str()
        ],
        "exactly 3 attempts for the 500, 500, 200 alert and 1 for the 400 one"
    );
    let answered: Vec<u16> = requests.iter().map(|r| r.answered).collect();
    assert_eq!(answered, [500, 500, 200, 400]);
    // Same body on every attempt, each validly signed; exponential backoff between attempts.
    let now = OffsetDateTime::now_utc().unix_timestamp();
    for r in &requests[..3] {
        assert_eq!(
            r.body, requests[0].body,
            "the body changed between attempts"
        );
        let sig = r.header(SIGNATURE_HEADER).expect("signature");
        assert!(notify::verify(sig, SECRET, &r.body, TOLERANCE, now));
    }
    let gap1 = requests[1].at - requests[0].at;
    let gap2 = requests[2].at - requests[1].at;
    assert!(
        gap1 >= Duration::from_millis(50),
        "first retry after {gap1:?}"
    );
    assert!(
        gap2 >= Duration::from_millis(100),
        "second retry after {gap2:?}"
    );

    assert_eq!(
        attempts_of(&env, &retried.id).await,
        vec![
            row("webhook", 1, "retrying", 500),
            row("webhook", 2, "retrying", 500),
            row("webhook", 3, "delivered", 200),
        ]
    );
    assert_eq!(
        attempts_of(&env, &refused.id).await,
        vec![row("webhook", 1, "failed", 400)]
    );
    let rows = deliveries(&env).await;
    for r in &rows {
        match r.status.as_str() {
            "delivered" => assert_eq!(r.error, ""),
            _ => assert!(
                r.error.contains(&r.http_status.to_string()),
                "error text {:?} for status {}",
                r.error,
                r.http_status
            ),
        }
    }
    assert_eq!(counters(&metrics, "webhook"), (4, 1, 1));
    assert_eq!(counters(&metrics, "email"), (0, 0, 0));
    agg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unreachable_webhooks_use_up_their_attempts_and_smtp_4xx_is_retried_5xx_is_not() {
    let env = TestEnv::new("notify_fail").await;
    let sink = SmtpSink::start().await;
    // First alert: 451 then accepted; second alert: 550 (permanent).
    sink.script_data_replies(&[
        "451 4.3.0 try again later",
        "250 2.0.0 queued",
        "550 5.1.1 no such user",
    ]);
    let dead_url = format!("http://127.0.0.1:{}/hook", closed_port().await);
    let tenants = BTreeMap::from([(
        "acme".to_string(),
        targets(Some(dead_url.clone()), &["ops@acme.test"]),
    )]);
    let cfg = config(&env, &env.group, tenants, Some(sink.smtp_config(FROM)), 3);
    let (agg, metrics) = env.start_aggregator_with(cfg).await;
    let first = alert("cust_5", 80, 85.0);
    let second = alert("cust_5", 90, 91.0);
    produce(&env, &first).await;
    produce(&env, &second).await;
    CommitReader::new(&env, &env.group).wait_for(2).await;

    assert_eq!(
        attempts_of(&env, &first.id).await,
        vec![
            row("email", 1, "retrying", 451),
            row("email", 2, "delivered", 250),
            row("webhook", 1, "retrying", 0),
            row("webhook", 2, "retrying", 0),
            row("webhook", 3, "failed", 0),
        ]
    );
    assert_eq!(
        attempts_of(&env, &second.id).await,
        vec![
            row("email", 1, "failed", 550),
            row("webhook", 1, "retrying", 0),
            row("webhook", 2, "retrying", 0),
            row("webhook", 3, "failed", 0),
        ]
    );
    for r in deliveries(&env).await {
        if r.channel == "webhook" {
            assert_eq!(r.target, dead_url);
            assert!(!r.error.is_empty(), "a connection error is described");
        }
    }
    let mail = sink.messages();
    assert_eq!(mail.len(), 1, "only the retried email was accepted");
    assert_eq!(
        mail[0].header(EMAIL_ALERT_ID_HEADER).as_deref(),
        Some(first.id.as_str())
    );
    assert_eq!(sink.transactions(), 3);
    assert_eq!(counters(&metrics, "webhook"), (6, 0, 2));
    assert_eq!(counters(&metrics, "email"), (3, 1, 1));
    agg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shutdown_during_retries_commits_nothing_and_the_restart_resumes_the_attempts() {
    let env = TestEnv::new("notify_resume").await;
    let hook = WebhookReceiver::start().await;
    hook.script(&[503]);
    let tenants = BTreeMap::from([("acme".to_string(), targets(Some(hook.url()), &[]))]);
    let mut cfg = config(&env, &env.group, tenants, None, 5);
    // Long enough that the shutdown comes during the backoff.
    cfg.notify.initial_backoff_ms = 60_000;
    cfg.notify.max_backoff_ms = 60_000;
    let (agg, _) = env.start_aggregator_with(cfg.clone()).await;
    let a = alert("cust_6", 100, 104.0);
    produce(&env, &a).await;
    wait_until(WAIT, "the first attempt in the log", || async {
        (!attempts_of(&env, &a.id).await.is_empty()).then_some(())
    })
    .await;
    agg.stop().await;
    let reader = CommitReader::new(&env, &env.group);
    assert_eq!(reader.committed(), -1, "an undelivered alert was committed");
    assert_eq!(hook.requests().len(), 1);

    cfg.notify.initial_backoff_ms = 100;
    cfg.notify.max_backoff_ms = 400;
    let (agg, metrics) = env.start_aggregator_with(cfg).await;
    reader.wait_for(1).await;
    agg.stop().await;
    assert_eq!(
        attempts_of(&env, &a.id).await,
        vec![
            row("webhook", 1, "retrying", 503),
            row("webhook", 2, "delivered", 200)
        ]
    );
    assert_eq!(hook.requests().len(), 2);
    assert_eq!(counters(&metrics, "webhook"), (1, 1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn webhooks_are_standard_webhooks_with_one_id_across_retries_and_a_tampered_body_fails() {
    let env = TestEnv::new("notify_standard").await;
    let hook = WebhookReceiver::start().await;
    hook.script(&[503, 200]);
    // A secret in the specification's form: `whsec_` and the base64 of random bytes.
    let whsec = {
        use base64::Engine;
        let key: [u8; 24] = rand::random();
        format!(
            "whsec_{}",
            base64::engine::general_purpose::STANDARD.encode(key)
        )
    };
    let mut t = targets(Some(hook.url()), &[]);
    t.webhook_secret = whsec.clone().into();
    let tenants = BTreeMap::from([("acme".to_string(), t)]);
    let cfg = config(&env, &env.group, tenants, None, 5);
    let (agg, _metrics) = env.start_aggregator_with(cfg).await;
    let a = alert("cust_std", 90, 90.0);
    produce(&env, &a).await;
    CommitReader::new(&env, &env.group).wait_for(1).await;

    let requests = hook.requests();
    let answered: Vec<u16> = requests.iter().map(|r| r.answered).collect();
    assert_eq!(answered, [503, 200], "one retry after the 503");
    for r in &requests {
        // The id is the alert's on every attempt (receivers deduplicate by it).
        assert_eq!(r.header("webhook-id"), Some(a.id.as_str()));
        standard_webhooks_verify(&whsec, r, &r.body).expect("a valid Standard Webhooks request");
        // A receiver refuses a tampered body, a changed id and another secret.
        let mut tampered = r.body.clone();
        let i = tampered.len() / 2;
        tampered[i] ^= 0x01;
        assert!(standard_webhooks_verify(&whsec, r, &tampered).is_err());
        let mut other_id = r.clone();
        other_id
            .headers
            .insert("webhook-id".into(), format!("{}x", a.id));
        assert!(standard_webhooks_verify(&whsec, &other_id, &r.body).is_err());
        assert!(standard_webhooks_verify(&whsec_of_raw("other"), r, &r.body).is_err());
        // The deprecated header is still sent for one release, keyed with the secret as it is.
        let legacy = r.header(SIGNATURE_HEADER).expect("Metering-Signature");
        let now = OffsetDateTime::now_utc().unix_timestamp();
        assert!(notify::verify(legacy, &whsec, &r.body, TOLERANCE, now));
        assert_eq!(r.header(EVENT_ID_HEADER), Some(a.id.as_str()));
    }
    assert_eq!(requests[0].body, requests[1].body, "the same message");
    agg.stop().await;
}

#[test]
#[allow(clippy::result_large_err)] // figment::Jail's closure returns figment's own (large) error
fn notify_config_loads_from_toml_and_environment_variables() {
    use secrecy::ExposeSecret;
    figment::Jail::expect_with(|jail| {
        jail.create_file(
            "aggregator.toml",
            r#"
                [notify]
                max_attempts = 4
                [notify.smtp]
                host = "127.0.0.1"
                port = 2525
                from = "Metering <alerts@metering.test>"
                tls = false
                [notify.tenants.acme]
                webhook_url = "https://hooks.acme.test/metering"
                webhook_secret = "from-file"
            "#,
        )?;
        jail.set_env(
            "AGGREGATOR_NOTIFY__TENANTS__ACME__WEBHOOK_SECRET",
            "from-env",
        );
        jail.set_env(
            "AGGREGATOR_NOTIFY__TENANTS__ACME__EMAIL_TO",
            r#"["ops@acme.test", "cto@acme.test"]"#,
        );
        jail.set_env("AGGREGATOR_NOTIFY__INITIAL_BACKOFF_MS", "250");
        let config = aggregator::Config::load(Some(std::path::Path::new("aggregator.toml")))
            .expect("config loads");
        let n = &config.notify;
        assert!(n.enabled);
        assert_eq!((n.max_attempts, n.initial_backoff_ms), (4, 250));
        let acme = &n.tenants["acme"];
        assert_eq!(acme.webhook_secret.expose_secret(), "from-env");
        assert_eq!(acme.email_to, ["ops@acme.test", "cto@acme.test"]);
        let smtp = n.smtp.as_ref().expect("smtp");
        assert_eq!(
            (smtp.host.as_str(), smtp.port, smtp.tls),
            ("127.0.0.1", 2525, false)
        );

        // Invalid targets are refused at load.
        jail.set_env(
            "AGGREGATOR_NOTIFY__TENANTS__ACME__EMAIL_TO",
            r#"["not an address"]"#,
        );
        let err = aggregator::Config::load(Some(std::path::Path::new("aggregator.toml")))
            .expect_err("a bad recipient is refused");
        assert!(err.to_string().contains("email_to"), "{err}");
        jail.set_env("AGGREGATOR_NOTIFY__TENANTS__ACME__EMAIL_TO", "[]");
        jail.set_env("AGGREGATOR_NOTIFY__TENANTS__ACME__WEBHOOK_URL", "ftp://x");
        let err = aggregator::Config::load(Some(std::path::Path::new("aggregator.toml")))
            .expect_err("a non-http webhook is refused");
        assert!(err.to_string().contains("webhook_url"), "{err}");
        Ok(())
    });
}
