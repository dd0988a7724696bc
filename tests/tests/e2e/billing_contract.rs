//! The Stripe fake's contract: every response it gives (objects, lists, errors) and every webhook it
//! sends decodes through async-stripe's typed structs — the client's own decoding for responses,
//! `stripe_webhook::Webhook::construct_event` (signature included) for webhooks — so the fake cannot
//! drift from Stripe's shapes. Also: Idempotency-Key replay, injected faults, identifier dedup, the
//! 35-day window, summaries, checkout completion (a plan price and a metered price), the invoice
//! preview (`stripe_shared::Invoice`) and the renewal invoice it foretells, and the clock.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use serde_json::{Value, json};
use stripe::{Client, ClientBuilder, RequestStrategy, StripeError, StripeRequest};
use stripe_billing::billing_meter::{
    CreateBillingMeter, CreateBillingMeterDefaultAggregation,
    CreateBillingMeterDefaultAggregationFormula, ListBillingMeter, RetrieveBillingMeter,
};
use stripe_billing::billing_meter_event::CreateBillingMeterEvent;
use stripe_billing::billing_meter_event_summary::{
    ListIdBillingMeterEventSummary, ListIdBillingMeterEventSummaryValueGroupingWindow,
};
use stripe_billing::billing_portal_session::CreateBillingPortalSession;
use stripe_billing::invoice::{CreatePreviewInvoice, RetrieveInvoice};
use stripe_billing::subscription::{
    CancelSubscription, CreateSubscription, CreateSubscriptionItems, ListSubscription,
    ListSubscriptionStatus, RetrieveSubscription, UpdateSubscription,
};
use stripe_checkout::checkout_session::{
    CreateCheckoutSession, CreateCheckoutSessionLineItems, CreateCheckoutSessionSubscriptionData,
    RetrieveCheckoutSession,
};
use stripe_core::customer::{CreateCustomer, ListCustomer, RetrieveCustomer};
use stripe_fake::{FakeConfig, FakeStripe};
use stripe_product::price::{
    CreatePrice, CreatePriceRecurring, CreatePriceRecurringInterval, CreatePriceRecurringUsageType,
    ListPrice, RetrievePrice,
};
use stripe_product::product::{CreateProduct, RetrieveProduct};
use stripe_shared::{ApiErrorsType, CheckoutSessionMode, InvoiceStatus, SubscriptionStatus};
use stripe_webhook::{EventObject, Webhook};
use tests::wait_until;
use tests::webhook::WebhookReceiver;
use tokio_util::sync::CancellationToken;

const SECRET: &str = "whsec_contract";

struct Fake {
    url: String,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Fake {
    async fn start(webhook_url: Option<String>) -> Self {
        let fake = FakeStripe::bind(FakeConfig {
            api_key: Some("sk_test_contract".into()),
            webhook_url,
            webhook_secret: SECRET.into(),
            ..FakeConfig::default()
        })
        .await
        .expect("bind the fake");
        let url = fake.url();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(fake.run(cancel.clone()));
        Self { url, cancel, task }
    }

    fn client(&self) -> Client {
        ClientBuilder::new("sk_test_contract")
            .url(format!("{}/", self.url))
            .timeout(Duration::from_secs(5))
            .build()
            .expect("client")
    }

    async fn admin(&self, path: &str, body: Value) -> Value {
        let r = reqwest::Client::new()
            .post(format!("{}{path}", self.url))
            .json(&body)
            .send()
            .await
            .expect("admin call");
        assert!(r.status().is_success(), "{path}: {}", r.status());
        r.json().await.unwrap_or(Value::Null)
    }

    async fn get(&self, path: &str) -> Value {
        reqwest::get(format!("{}{path}", self.url))
            .await
            .expect("admin get")
            .json()
            .await
            .expect("admin JSON")
    }

    async fn stop(self) {
        self.cancel.cancel();
        let _ = self.task.await;
    }
}

/// The Stripe error of a failed call (panics on success or a non-Stripe error: a body the client
/// could not decode as a Stripe error shows up as `JSONDeserialize`).
fn stripe_err<T: std::fmt::Debug>(r: Result<T, StripeError>) -> (stripe_shared::ApiErrors, u16) {
    match r {
        Err(StripeError::Stripe(e, status)) => (*e, status),
        other => panic!("expected a Stripe error, got {other:?}"),
    }
}

fn code(e: &stripe_shared::ApiErrors) -> String {
    e.code
        .as_ref()
        .map(|c| c.as_str().to_string())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fake_response_and_webhook_decodes_through_async_stripe() {
    let hooks = WebhookReceiver::start().await;
    let fake = Fake::start(Some(hooks.url())).await;
    let client = fake.client();

    // Customers.
    let customer = CreateCustomer::new()
        .email("ada@example.com")
        .name("Ada")
        .metadata(HashMap::from([("tenant".to_string(), "acme".to_string())]))
        .send(&client)
        .await
        .expect("create customer");
    assert!(customer.id.as_str().starts_with("cus_"));
    assert_eq!(customer.email.as_deref(), Some("ada@example.com"));
    match RetrieveCustomer::new(customer.id.clone())
        .send(&client)
        .await
        .expect("retrieve customer")
    {
        stripe_core::customer::RetrieveCustomerReturned::Customer(c) => {
            assert_eq!(c.id, customer.id)
        }
        other => panic!("expected a customer, got {other:?}"),
    }
    let listed = ListCustomer::new()
        .send(&client)
        .await
        .expect("list customers");
    assert_eq!(listed.data.len(), 1);
    let (e, status) = stripe_err(RetrieveCustomer::new("cus_missing").send(&client).await);
    assert_eq!(
        (status, e.type_.clone(), code(&e)),
        (
            404,
            ApiErrorsType::InvalidRequestError,
            "resource_missing".into()
        )
    );

    // Products, meters, prices (licensed and metered).
    let product = CreateProduct::new("Starter")
        .send(&client)
        .await
        .expect("create product");
    RetrieveProduct::new(product.id.clone())
        .send(&client)
        .await
        .expect("retrieve product");
    let meter = CreateBillingMeter::new(
        CreateBillingMeterDefaultAggregation::new(CreateBillingMeterDefaultAggregationFormula::Sum),
        "API calls",
        "api_call",
    )
    .send(&client)
    .await
    .expect("create meter");
    assert_eq!(meter.event_name, "api_call");
    RetrieveBillingMeter::new(meter.id.clone())
        .send(&client)
        .await
        .expect("retrieve meter");
    assert_eq!(
        ListBillingMeter::new()
            .send(&client)
            .await
            .expect("list meters")
            .data
            .len(),
        1
    );
    let price = CreatePrice::new(stripe_types::Currency::USD)
        .product(product.id.as_str())
        .unit_amount(2900)
        .recurring(CreatePriceRecurring::new(
            CreatePriceRecurringInterval::Month,
        ))
        .send(&client)
        .await
        .expect("create price");
    let mut metered = CreatePriceRecurring::new(CreatePriceRecurringInterval::Month);
    metered.usage_type = Some(CreatePriceRecurringUsageType::Metered);
    metered.meter = Some(meter.id.as_str().to_string());
    let metered_price = CreatePrice::new(stripe_types::Currency::USD)
        .product(product.id.as_str())
        .unit_amount(1)
        .recurring(metered)
        .send(&client)
        .await
        .expect("create metered price");
    assert_eq!(
        metered_price
            .recurring
            .as_ref()
            .and_then(|r| r.meter.clone())
            .as_deref(),
        Some(meter.id.as_str())
    );
    RetrievePrice::new(price.id.clone())
        .send(&client)
        .await
        .expect("retrieve price");
    assert_eq!(
        ListPrice::new()
            .send(&client)
            .await
            .expect("list prices")
            .data
            .len(),
        2
    );

    // Meter events: identifier dedup, the window, Stripe-shaped errors; summaries per hour.
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let hour = now - now % 3600 - 3600;
    let payload = |v: &str| {
        HashMap::from([
            (
                "stripe_customer_id".to_string(),
                customer.id.as_str().to_string(),
            ),
            ("value".to_string(), v.to_string()),
        ])
    };
    let ev = CreateBillingMeterEvent::new("api_call", payload("7"))
        .identifier("acme:c1:api_call:1")
        .timestamp(hour)
        .send(&client)
        .await
        .expect("meter event");
    assert_eq!(
        (ev.identifier.as_str(), ev.timestamp),
        ("acme:c1:api_call:1", hour)
    );
    CreateBillingMeterEvent::new("api_call", payload("5"))
        .identifier("acme:c1:api_call:2")
        .timestamp(hour + 60)
        .send(&client)
        .await
        .expect("second meter event");
    let (e, status) = stripe_err(
        CreateBillingMeterEvent::new("api_call", payload("7"))
            .identifier("acme:c1:api_call:1")
            .timestamp(hour)
            .send(&client)
            .await,
    );
    // Stripe's duplicate: a 400 `invalid_request_error` without a code, named by its message.
    assert_eq!(
        (status, e.type_, e.code.clone(), e.message.as_deref()),
        (
            400,
            ApiErrorsType::InvalidRequestError,
            None,
            Some("An event already exists with identifier acme:c1:api_call:1.")
        )
    );
    let (e, status) = stripe_err(
        CreateBillingMeterEvent::new("api_call", payload("1"))
            .timestamp(now - 36 * 86_400)
            .send(&client)
            .await,
    );
    assert_eq!(
        (status, code(&e).as_str(), e.param.as_deref()),
        (400, "timestamp_too_far_in_past", Some("timestamp"))
    );
    let (e, _) = stripe_err(
        CreateBillingMeterEvent::new("no_such_meter", payload("1"))
            .send(&client)
            .await,
    );
    assert_eq!(code(&e), "resource_missing");
    let summaries = ListIdBillingMeterEventSummary::new(
        meter.id.clone(),
        customer.id.as_str(),
        hour - 3600,
        hour + 3600,
    )
    .send(&client)
    .await;
    let (e, _) = stripe_err(summaries);
    assert_eq!(
        e.param.as_deref(),
        Some("end_time"),
        "end before start is refused"
    );
    let summaries = ListIdBillingMeterEventSummary::new(
        meter.id.clone(),
        customer.id.as_str(),
        hour + 7200,
        hour - 3600,
    )
    .value_grouping_window(ListIdBillingMeterEventSummaryValueGroupingWindow::Hour)
    .send(&client)
    .await
    .expect("summaries");
    let by_hour: Vec<(i64, f64)> = summaries
        .data
        .iter()
        .map(|s| (s.start_time, s.aggregated_value))
        .collect();
    assert_eq!(
        by_hour,
        vec![(hour + 3600, 0.0), (hour, 12.0), (hour - 3600, 0.0)]
    );

    // Checkout in subscription mode: visiting the URL completes it and starts the subscription,
    // with one item per line item (the plan's price, then the metered price without a quantity).
    let mut item = CreateCheckoutSessionLineItems::new();
    item.price = Some(price.id.as_str().to_string());
    item.quantity = Some(1);
    let mut usage_item = CreateCheckoutSessionLineItems::new();
    usage_item.price = Some(metered_price.id.as_str().to_string());
    let mut sub_data = CreateCheckoutSessionSubscriptionData::new();
    sub_data.metadata = Some(HashMap::from([("tenant".to_string(), "acme".to_string())]));
    let session = CreateCheckoutSession::new()
        .mode(CheckoutSessionMode::Subscription)
        .customer(customer.id.as_str())
        .line_items(vec![item, usage_item])
        .subscription_data(sub_data)
        .success_url("http://127.0.0.1:9/done")
        .client_reference_id("acme/c1")
        .send(&client)
        .await
        .expect("create checkout session");
    let url = session.url.clone().expect("session url");
    let page = reqwest::get(&url).await.expect("visit checkout");
    assert_eq!(page.status(), 200);
    let done = RetrieveCheckoutSession::new(session.id.clone())
        .send(&client)
        .await
        .expect("retrieve session");
    let sub_id = match done.subscription {
        Some(stripe_types::Expandable::Id(id)) => id,
        other => panic!("completed session has no subscription: {other:?}"),
    };
    let sub = RetrieveSubscription::new(sub_id.clone())
        .send(&client)
        .await
        .expect("retrieve subscription");
    assert_eq!(sub.status, SubscriptionStatus::Active);
    assert_eq!(sub.metadata.get("tenant").map(String::as_str), Some("acme"));
    let item = &sub.items.data[0];
    assert_eq!(item.price.id, price.id);
    assert!(item.current_period_end > item.current_period_start);
    assert_eq!(sub.items.data.len(), 2);
    assert_eq!(sub.items.data[1].price.id, metered_price.id);
    assert_eq!(
        sub.items.data[1].quantity, None,
        "a metered item has no quantity"
    );

    // The invoice preview (https://docs.stripe.com/api/invoices/create_preview): the renewal at
    // the period end, the plan's price for the next period and the period's metered usage.
    let used = CreateBillingMeterEvent::new("api_call", payload("3"))
        .identifier("acme:c1:api_call:in-period")
        .send(&client)
        .await
        .expect("meter event in the period");
    assert!(used.timestamp >= item.current_period_start);
    let preview = CreatePreviewInvoice::new()
        .customer(customer.id.as_str())
        .subscription(sub_id.as_str())
        .send(&client)
        .await
        .expect("preview decodes as stripe_shared::Invoice");
    let preview_id = preview.id.as_ref().map(|i| i.as_str().to_string());
    assert!(
        preview_id
            .as_deref()
            .is_some_and(|i| i.starts_with("upcoming_in")),
        "{preview_id:?}"
    );
    assert_eq!(preview.status, Some(InvoiceStatus::Draft));
    assert_eq!(
        (preview.period_start, preview.period_end),
        (item.current_period_start, item.current_period_end)
    );
    assert_eq!(
        preview.next_payment_attempt,
        Some(item.current_period_end + 3_600)
    );
    // (price, quantity, amount, service period start, end) of each line.
    type Lines = Vec<(Option<String>, Option<u64>, i64, i64, i64)>;
    let lines: Lines = preview
        .lines
        .data
        .iter()
        .map(|l| {
            let price = l
                .pricing
                .as_ref()
                .and_then(|p| p.price_details.as_ref())
                .map(|d| d.price.id().as_str().to_string());
            (price, l.quantity, l.amount, l.period.start, l.period.end)
        })
        .collect();
    let (start, end) = (item.current_period_start, item.current_period_end);
    assert_eq!(
        lines,
        vec![
            (
                Some(price.id.as_str().to_string()),
                Some(1),
                2900,
                end,
                end + 30 * 86_400
            ),
            (
                Some(metered_price.id.as_str().to_string()),
                Some(3),
                3,
                start,
                end
            ),
        ]
    );
    assert_eq!(
        (preview.amount_due, preview.subtotal, preview.total),
        (2903, 2903, 2903)
    );
    let (e, status) = stripe_err(
        CreatePreviewInvoice::new()
            .customer(customer.id.as_str())
            .send(&client)
            .await,
    );
    assert_eq!(
        (status, code(&e).as_str(), e.param.as_deref()),
        (400, "parameter_missing", Some("subscription")),
        "a customer alone no longer previews (API 2025-03-31)"
    );
    let (e, status) = stripe_err(
        CreatePreviewInvoice::new()
            .subscription("sub_missing")
            .send(&client)
            .await,
    );
    assert_eq!((status, code(&e).as_str()), (404, "resource_missing"));

    // Subscriptions: list, update, create, cancel.
    let list = ListSubscription::new()
        .customer(customer.id.as_str())
        .send(&client)
        .await
        .expect("list subscriptions");
    assert_eq!(list.data.len(), 1);
    let updated = UpdateSubscription::new(sub_id.clone())
        .cancel_at_period_end(true)
        .send(&client)
        .await
        .expect("update");
    assert!(updated.cancel_at_period_end);
    assert_eq!(
        updated.cancel_at,
        Some(updated.items.data[0].current_period_end)
    );
    let (e, status) = stripe_err(
        CreatePreviewInvoice::new()
            .subscription(sub_id.as_str())
            .send(&client)
            .await,
    );
    assert_eq!(
        (status, code(&e).as_str()),
        (400, "invoice_upcoming_none"),
        "no renewal for a subscription that ends at the period end"
    );
    let mut items = CreateSubscriptionItems::new();
    items.price = Some(price.id.as_str().to_string());
    let second = CreateSubscription::new()
        .customer(customer.id.as_str())
        .items(vec![items])
        .send(&client)
        .await
        .expect("create subscription");
    let canceled = CancelSubscription::new(second.id.clone())
        .send(&client)
        .await
        .expect("cancel");
    assert_eq!(canceled.status, SubscriptionStatus::Canceled);
    assert!(canceled.ended_at.is_some());
    let active = ListSubscription::new()
        .send(&client)
        .await
        .expect("list active")
        .data
        .len();
    let all = ListSubscription::new()
        .status(ListSubscriptionStatus::All)
        .send(&client)
        .await
        .expect("list all")
        .data
        .len();
    assert_eq!((active, all), (1, 2));

    // Portal.
    let portal = CreateBillingPortalSession::new()
        .customer(customer.id.as_str())
        .return_url("http://127.0.0.1:9/back")
        .send(&client)
        .await
        .expect("portal session");
    assert_eq!(
        reqwest::get(&portal.url)
            .await
            .expect("visit portal")
            .status(),
        200
    );

    // Idempotency-Key replay: the same key and parameters give the same object; other
    // parameters with that key are an idempotency error.
    let key = stripe::IdempotencyKey::new("contract-key-1").expect("key");
    let first = CreateCustomer::new()
        .email("grace@example.com")
        .customize()
        .request_strategy(RequestStrategy::Idempotent(key.clone()))
        .send(&client)
        .await
        .expect("idempotent create");
    let replay = CreateCustomer::new()
        .email("grace@example.com")
        .customize()
        .request_strategy(RequestStrategy::Idempotent(key.clone()))
        .send(&client)
        .await
        .expect("replayed create");
    assert_eq!(first.id, replay.id);
    let (e, status) = stripe_err(
        CreateCustomer::new()
            .email("other@example.com")
            .customize()
            .request_strategy(RequestStrategy::Idempotent(key))
            .send(&client)
            .await,
    );
    assert_eq!((status, e.type_), (400, ApiErrorsType::IdempotencyError));

    // Injected faults: 429 and 500 in Stripe's shape, and a timeout.
    fake.admin(
        "/_fake/faults",
        json!({"kind": "status", "status": 429, "count": 1, "path": "/v1/customers"}),
    )
    .await;
    let (e, status) = stripe_err(ListCustomer::new().send(&client).await);
    assert_eq!((status, code(&e).as_str()), (429, "rate_limit"));
    fake.admin(
        "/_fake/faults",
        json!({"kind": "status", "status": 500, "count": 1}),
    )
    .await;
    let (e, status) = stripe_err(ListCustomer::new().send(&client).await);
    assert_eq!((status, e.type_), (500, ApiErrorsType::ApiError));
    fake.admin(
        "/_fake/faults",
        json!({"kind": "timeout", "ms": 1500, "count": 1}),
    )
    .await;
    let r = ListCustomer::new()
        .customize()
        .timeout(Duration::from_millis(300))
        .send(&client)
        .await;
    assert!(matches!(r, Err(StripeError::Timeout)), "{r:?}");
    ListCustomer::new()
        .send(&client)
        .await
        .expect("no fault left");
    let unauthorized = ClientBuilder::new("sk_wrong")
        .url(format!("{}/", fake.url))
        .build()
        .expect("client");
    let (_, status) = stripe_err(ListCustomer::new().send(&unauthorized).await);
    assert_eq!(status, 401);

    // Events the admin side causes: payment failure and recovery, renewal, period-end cancel.
    fake.admin(
        &format!("/_fake/subscriptions/{sub_id}/payment_failed"),
        json!({}),
    )
    .await;
    fake.admin(
        &format!("/_fake/subscriptions/{sub_id}/invoice_paid"),
        json!({}),
    )
    .await;
    fake.admin(
        &format!("/_fake/subscriptions/{sub_id}/update"),
        json!({"cancel_at_period_end": false}),
    )
    .await;
    fake.admin("/_fake/clock/advance", json!({"seconds": 31 * 86_400}))
        .await;
    let renewed = RetrieveSubscription::new(sub_id.clone())
        .send(&client)
        .await
        .expect("renewed");
    assert_eq!(renewed.status, SubscriptionStatus::Active);
    assert!(renewed.items.data[0].current_period_start > item.current_period_start);
    // The renewal invoice is the one the preview showed.
    let latest = match &renewed.latest_invoice {
        Some(stripe_types::Expandable::Id(Some(id))) => id.clone(),
        other => panic!("renewed subscription without an invoice: {other:?}"),
    };
    let invoice = RetrieveInvoice::new(latest)
        .send(&client)
        .await
        .expect("renewal invoice decodes");
    assert_eq!(invoice.status, Some(InvoiceStatus::Paid));
    assert_eq!(
        (invoice.amount_due, invoice.period_start, invoice.period_end),
        (preview.amount_due, preview.period_start, preview.period_end)
    );
    let billed: Vec<(Option<u64>, i64)> = invoice
        .lines
        .data
        .iter()
        .map(|l| (l.quantity, l.amount))
        .collect();
    assert_eq!(billed, vec![(Some(1), 2900), (Some(3), 3)]);
    fake.admin(
        &format!("/_fake/subscriptions/{sub_id}/update"),
        json!({"cancel_at_period_end": true}),
    )
    .await;
    fake.admin("/_fake/clock/advance", json!({"seconds": 31 * 86_400}))
        .await;
    let ended = RetrieveSubscription::new(sub_id.clone())
        .send(&client)
        .await
        .expect("ended");
    assert_eq!(ended.status, SubscriptionStatus::Canceled);

    // Every webhook was delivered, signed, and decodes through the typed event objects.
    let events = fake.get("/_fake/events").await;
    let events = events.as_array().expect("events").clone();
    wait_until(Duration::from_secs(20), "every event delivered", || async {
        (hooks.requests().len() >= events.len()).then_some(())
    })
    .await;
    let mut seen = BTreeSet::new();
    for req in hooks.requests() {
        let body = String::from_utf8(req.body.clone()).expect("UTF-8 body");
        let sig = req.header("stripe-signature").expect("signed");
        let event = Webhook::construct_event(&body, sig, SECRET)
            .unwrap_or_else(|e| panic!("webhook does not decode: {e}\n{body}"));
        let kind = event.type_.as_str().to_string();
        let ok = match (&event.data.object, kind.as_str()) {
            (EventObject::CheckoutSessionCompleted(s), _) => s.subscription.is_some(),
            (EventObject::CustomerSubscriptionCreated(s), _)
            | (EventObject::CustomerSubscriptionUpdated(s), _)
            | (EventObject::CustomerSubscriptionDeleted(s), _) => !s.items.data.is_empty(),
            (EventObject::InvoicePaid(i), _) | (EventObject::InvoicePaymentFailed(i), _) => i
                .parent
                .as_ref()
                .and_then(|p| p.subscription_details.as_ref())
                .is_some(),
            _ => false,
        };
        assert!(ok, "{kind}: unexpected or incomplete object\n{body}");
        // Tampering is detected.
        assert!(
            Webhook::construct_event(
                &body.replace("\"livemode\":false", "\"livemode\":true"),
                sig,
                SECRET
            )
            .is_err()
        );
        seen.insert(kind);
    }
    let expected: BTreeSet<String> = [
        "checkout.session.completed",
        "customer.subscription.created",
        "customer.subscription.updated",
        "customer.subscription.deleted",
        "invoice.paid",
        "invoice.payment_failed",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(seen, expected);
    // The admin event list decodes too (base event shape, any type).
    for e in &events {
        let text = e.to_string();
        miniserde::json::from_str::<stripe_shared::Event>(&text)
            .unwrap_or_else(|_| panic!("event does not decode: {text}"));
    }
    fake.stop().await;
}
