//! The Stripe fake's one-time purchases and refunds through async-stripe's typed structs: a
//! `payment`-mode Checkout Session for the seeded `price_addon_calls_1000` × 3 completed on the
//! hosted page (a payment intent, a charge, `payment_intent.succeeded`, `charge.succeeded`,
//! `checkout.session.completed`), a partial refund then the rest (`refund.created`,
//! `charge.refunded`), Stripe's refusals (over-refund, double refund, unknown id, a recurring price
//! in payment mode), Idempotency-Key replay of a refund, and every webhook verified and decoded
//! through `stripe_webhook::Webhook::construct_event`.

use std::collections::HashMap;
use std::time::Duration;

use stripe::{Client, ClientBuilder, IdempotencyKey, RequestStrategy, StripeError, StripeRequest};
use stripe_checkout::checkout_session::{
    CreateCheckoutSession, CreateCheckoutSessionLineItems, CreateCheckoutSessionPaymentIntentData,
    RetrieveCheckoutSession,
};
use stripe_core::customer::CreateCustomer;
use stripe_core::refund::{CreateRefund, CreateRefundReason, ListRefund, RetrieveRefund};
use stripe_shared::{
    ApiErrorsType, ChargeStatus, CheckoutSessionMode, CheckoutSessionPaymentStatus,
    CheckoutSessionStatus, PaymentIntentStatus,
};
use stripe_types::Expandable;
use stripe_webhook::{EventObject, Webhook};
use tests::billing::{Fake, STRIPE_KEY, WEBHOOK_SECRET};
use tests::wait_until;
use tests::webhook::WebhookReceiver;

const PACK: &str = "price_addon_calls_1000";

fn client(fake: &Fake) -> Client {
    ClientBuilder::new(STRIPE_KEY)
        .url(format!("{}/", fake.url))
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client")
}

/// `GET {path}` on the fake's API, decoded as `T` through async-stripe's own (miniserde) decoding.
async fn get_typed<T: miniserde::Deserialize>(fake: &Fake, path: &str) -> T {
    let text = reqwest::Client::new()
        .get(format!("{}{path}", fake.url))
        .bearer_auth(STRIPE_KEY)
        .send()
        .await
        .expect("fake API")
        .text()
        .await
        .expect("body");
    miniserde::json::from_str(&text).unwrap_or_else(|_| {
        panic!(
            "{path} does not decode as {}: {text}",
            std::any::type_name::<T>()
        )
    })
}

/// The Stripe error of a failed call and its HTTP status.
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

fn line(price: &str, quantity: u64) -> CreateCheckoutSessionLineItems {
    let mut item = CreateCheckoutSessionLineItems::new();
    item.price = Some(price.to_string());
    item.quantity = Some(quantity);
    item
}

fn meta(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stripe_payments_one_time_purchase_and_refunds_decode_through_async_stripe() {
    let hooks = WebhookReceiver::start().await;
    let fake = Fake::start().await;
    fake.deliver_to(&hooks.url()).await;
    let c = client(&fake);
    // The seed: the add-ons' prices under their env names, one-time and monthly.
    for (env, price) in [
        ("STRIPE_PRICE_ID_ADDON_CALLS_1000", PACK),
        ("STRIPE_PRICE_ID_ADDON_ANALYTICS", "price_addon_analytics"),
    ] {
        assert!(
            fake.prices.iter().any(|(e, p)| e == env && p == price),
            "{env}: {:?}",
            fake.prices
        );
    }
    let pack: stripe_shared::Price = get_typed(&fake, &format!("/v1/prices/{PACK}")).await;
    assert_eq!(pack.type_, stripe_shared::PriceType::OneTime);
    assert!(pack.recurring.is_none());
    assert_eq!(pack.unit_amount, Some(1_900));
    assert_eq!(pack.lookup_key.as_deref(), Some("addon_calls_1000"));
    let analytics: stripe_shared::Price =
        get_typed(&fake, "/v1/prices/price_addon_analytics").await;
    assert_eq!(analytics.type_, stripe_shared::PriceType::Recurring);

    let customer = CreateCustomer::new()
        .email("buyer@example.com")
        .send(&c)
        .await
        .expect("customer");
    let purchase = meta(&[
        ("tenant", "acme"),
        ("addon", "calls_1000"),
        ("quantity", "3"),
    ]);
    let mut pi_data = CreateCheckoutSessionPaymentIntentData::new();
    pi_data.metadata = Some(purchase.clone());
    let session = CreateCheckoutSession::new()
        .mode(CheckoutSessionMode::Payment)
        .customer(customer.id.as_str())
        .line_items(vec![line(PACK, 3)])
        .payment_intent_data(pi_data)
        .metadata(purchase.clone())
        .success_url("http://127.0.0.1:9/done")
        .send(&c)
        .await
        .expect("payment-mode session");
    assert_eq!(session.mode, CheckoutSessionMode::Payment);
    assert_eq!(session.status, Some(CheckoutSessionStatus::Open));
    assert_eq!(session.payment_status, CheckoutSessionPaymentStatus::Unpaid);
    assert!(
        session.payment_intent.is_none(),
        "no payment intent before paying"
    );
    assert_eq!(session.amount_total, Some(5_700));
    assert_eq!(session.amount_subtotal, Some(5_700));
    assert_eq!(
        session.customer.as_ref().map(|c| c.id().to_string()),
        Some(customer.id.to_string())
    );

    // Paying on the hosted page.
    let url = session.url.clone().expect("session url");
    let page = reqwest::get(&url).await.expect("visit checkout");
    assert_eq!(page.status(), 200);
    let done = RetrieveCheckoutSession::new(session.id.clone())
        .send(&c)
        .await
        .expect("retrieve session");
    assert_eq!(done.status, Some(CheckoutSessionStatus::Complete));
    assert_eq!(done.payment_status, CheckoutSessionPaymentStatus::Paid);
    assert!(done.subscription.is_none());
    let pi_id = match &done.payment_intent {
        Some(Expandable::Id(id)) => id.to_string(),
        other => panic!("completed session has no payment intent: {other:?}"),
    };
    assert!(pi_id.starts_with("pi_"), "{pi_id}");
    // A second visit changes nothing.
    assert_eq!(reqwest::get(&url).await.expect("again").status(), 200);

    let pi: stripe_shared::PaymentIntent =
        get_typed(&fake, &format!("/v1/payment_intents/{pi_id}")).await;
    assert_eq!(pi.status, PaymentIntentStatus::Succeeded);
    assert_eq!((pi.amount, pi.amount_received), (5_700, 5_700));
    assert_eq!(pi.currency, stripe_types::Currency::USD);
    assert_eq!(pi.metadata, purchase);
    assert_eq!(
        pi.customer.as_ref().map(|c| c.id().to_string()),
        Some(customer.id.to_string())
    );
    let ch_id = pi
        .latest_charge
        .as_ref()
        .expect("latest charge")
        .id()
        .to_string();
    let charge: stripe_shared::Charge = get_typed(&fake, &format!("/v1/charges/{ch_id}")).await;
    assert_eq!(
        (
            charge.amount,
            charge.amount_captured,
            charge.amount_refunded
        ),
        (5_700, 5_700, 0)
    );
    assert!(charge.captured && charge.paid && !charge.refunded);
    assert_eq!(charge.status, ChargeStatus::Succeeded);
    assert_eq!(
        charge.payment_intent.as_ref().map(|p| p.id().to_string()),
        Some(pi_id.clone())
    );
    assert_eq!(
        charge.billing_details.email.as_deref(),
        Some("buyer@example.com")
    );
    let charges: stripe_types::List<stripe_shared::Charge> =
        get_typed(&fake, &format!("/v1/charges?payment_intent={pi_id}")).await;
    assert_eq!(charges.data.len(), 1);
    assert_eq!(charges.data[0].id.as_str(), ch_id);

    // A partial refund by payment intent, replayed under its Idempotency-Key.
    let key = IdempotencyKey::new("refund-part-1").expect("key");
    let partial = || {
        CreateRefund::new()
            .payment_intent(pi_id.as_str())
            .amount(1_900)
            .reason(CreateRefundReason::RequestedByCustomer)
            .metadata(meta(&[("why", "one pack back")]))
            .customize()
            .request_strategy(RequestStrategy::Idempotent(key.clone()))
            .send(&c)
    };
    let first = partial().await.expect("partial refund");
    assert_eq!(first.amount, 1_900);
    assert_eq!(first.status.as_deref(), Some("succeeded"));
    assert_eq!(
        first.charge.as_ref().map(|c| c.id().to_string()),
        Some(ch_id.clone())
    );
    assert_eq!(
        first.payment_intent.as_ref().map(|p| p.id().to_string()),
        Some(pi_id.clone())
    );
    assert_eq!(
        first
            .metadata
            .as_ref()
            .and_then(|m| m.get("why"))
            .map(String::as_str),
        Some("one pack back")
    );
    assert_eq!(partial().await.expect("replay").id, first.id);
    let charge: stripe_shared::Charge = get_typed(&fake, &format!("/v1/charges/{ch_id}")).await;
    assert_eq!(
        charge.amount_refunded, 1_900,
        "the replay refunded nothing more"
    );
    assert!(!charge.refunded);

    // More than is left: refused with Stripe's message, nothing refunded.
    let (e, status) = stripe_err(
        CreateRefund::new()
            .charge(ch_id.as_str())
            .amount(3_801)
            .send(&c)
            .await,
    );
    assert_eq!((status, code(&e).as_str()), (400, "amount_too_large"));
    assert_eq!(e.type_, ApiErrorsType::InvalidRequestError);
    assert_eq!(e.param.as_deref(), Some("amount"));
    assert_eq!(
        e.message.as_deref(),
        Some("Refund amount ($38.01) is greater than unrefunded amount on charge ($38.00)")
    );

    // The rest (no amount: what is left), by charge.
    let rest = CreateRefund::new()
        .charge(ch_id.as_str())
        .send(&c)
        .await
        .expect("refund the rest");
    assert_eq!(rest.amount, 3_800);
    let charge: stripe_shared::Charge = get_typed(&fake, &format!("/v1/charges/{ch_id}")).await;
    assert_eq!(charge.amount_refunded, 5_700);
    assert!(charge.refunded);
    let again = RetrieveRefund::new(rest.id.clone())
        .send(&c)
        .await
        .expect("retrieve refund");
    assert_eq!((again.id.clone(), again.amount), (rest.id.clone(), 3_800));
    let listed = ListRefund::new()
        .payment_intent(pi_id.as_str())
        .send(&c)
        .await
        .expect("list refunds");
    let ids: Vec<String> = listed.data.iter().map(|r| r.id.to_string()).collect();
    assert_eq!(
        ids,
        vec![rest.id.to_string(), first.id.to_string()],
        "newest first"
    );

    // A fully refunded charge, an unknown payment intent.
    let (e, status) = stripe_err(
        CreateRefund::new()
            .payment_intent(pi_id.as_str())
            .send(&c)
            .await,
    );
    assert_eq!(
        (status, code(&e).as_str()),
        (400, "charge_already_refunded")
    );
    let (e, status) = stripe_err(CreateRefund::new().payment_intent("pi_nope").send(&c).await);
    assert_eq!((status, code(&e).as_str()), (404, "resource_missing"));
    assert_eq!(e.param.as_deref(), Some("payment_intent"));
    let (e, status) = stripe_err(CreateRefund::new().charge("ch_nope").send(&c).await);
    assert_eq!((status, code(&e).as_str()), (404, "resource_missing"));
    assert_eq!(e.param.as_deref(), Some("charge"));

    // A recurring price in payment mode is refused as Stripe refuses it.
    let (e, status) = stripe_err(
        CreateCheckoutSession::new()
            .mode(CheckoutSessionMode::Payment)
            .customer(customer.id.as_str())
            .line_items(vec![line(PACK, 1), line("price_addon_analytics", 1)])
            .success_url("http://127.0.0.1:9/done")
            .send(&c)
            .await,
    );
    assert_eq!(status, 400);
    assert_eq!(e.type_, ApiErrorsType::InvalidRequestError);
    assert_eq!(e.param.as_deref(), Some("line_items[1][price]"));
    assert!(
        e.message
            .as_deref()
            .unwrap_or_default()
            .contains("passed a recurring price"),
        "{e:?}"
    );

    // Every event, in order, verified and decoded as the typed event objects.
    let events = fake.events().await;
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(
        kinds,
        vec![
            "payment_intent.succeeded",
            "charge.succeeded",
            "checkout.session.completed",
            "refund.created",
            "charge.refunded",
            "refund.created",
            "charge.refunded",
        ]
    );
    for e in &events {
        let text = e.to_string();
        miniserde::json::from_str::<stripe_shared::Event>(&text)
            .unwrap_or_else(|_| panic!("event does not decode: {text}"));
    }
    wait_until(Duration::from_secs(20), "every event delivered", || async {
        (hooks.requests().len() >= events.len()).then_some(())
    })
    .await;
    let mut refunded_flags = Vec::new();
    let mut delivered = Vec::new();
    for req in hooks.requests() {
        let body = String::from_utf8(req.body.clone()).expect("UTF-8 body");
        let sig = req.header("stripe-signature").expect("signed");
        let event = Webhook::construct_event(&body, sig, WEBHOOK_SECRET)
            .unwrap_or_else(|e| panic!("webhook does not decode: {e}\n{body}"));
        let kind = event.type_.as_str().to_string();
        match &event.data.object {
            EventObject::PaymentIntentSucceeded(p) => {
                assert_eq!((p.id.as_str(), p.amount), (pi_id.as_str(), 5_700));
                assert_eq!(p.metadata, purchase);
            }
            EventObject::ChargeSucceeded(ch) => {
                assert_eq!(
                    (ch.id.as_str(), ch.amount, ch.refunded),
                    (ch_id.as_str(), 5_700, false)
                );
            }
            EventObject::CheckoutSessionCompleted(s) => {
                assert_eq!(s.mode, CheckoutSessionMode::Payment);
                assert_eq!(s.payment_status, CheckoutSessionPaymentStatus::Paid);
                assert_eq!(
                    s.payment_intent.as_ref().map(|p| p.id().to_string()),
                    Some(pi_id.clone())
                );
                assert_eq!(s.metadata.as_ref(), Some(&purchase));
            }
            EventObject::RefundCreated(r) => {
                assert_eq!(
                    r.charge.as_ref().map(|c| c.id().to_string()),
                    Some(ch_id.clone())
                );
            }
            EventObject::ChargeRefunded(ch) => {
                assert_eq!(ch.id.as_str(), ch_id);
                assert!(
                    ch.customer.is_some() && ch.payment_intent.is_some(),
                    "billing-sync finds the owner and the purchase: {body}"
                );
                refunded_flags.push((ch.amount_refunded, ch.refunded));
            }
            _ => panic!("{kind}: unexpected event object\n{body}"),
        }
        delivered.push(kind);
    }
    assert_eq!(delivered, kinds, "delivered in order, once each");
    assert_eq!(refunded_flags, vec![(1_900, false), (5_700, true)]);
    fake.stop().await;
}
