//! The fake's in-memory Stripe account: objects, meter events, events to deliver, faults, logs.

use std::collections::{BTreeMap, HashMap};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::objects::{self, CheckoutSession, Meter, MeterEvent, Price, Recurring, Subscription};

/// Oldest accepted meter event, in seconds before now (Stripe: 35 days).
pub const METER_EVENT_MAX_AGE: i64 = 35 * 86_400;
/// Furthest accepted meter event in the future (Stripe: 5 minutes).
pub const METER_EVENT_MAX_FUTURE: i64 = 300;
/// A month, as the fake's billing period.
pub const PERIOD_SECS: i64 = 30 * 86_400;

/// A Stripe-shaped error: HTTP status and body.
#[derive(Debug, Clone)]
pub struct ApiErr {
    /// HTTP status.
    pub status: u16,
    /// `{"error": {...}}`.
    pub body: Value,
}

impl ApiErr {
    /// 400 `invalid_request_error`.
    pub fn invalid(code: &str, message: impl Into<String>, param: Option<&str>) -> Self {
        Self {
            status: 400,
            body: objects::error("invalid_request_error", Some(code), &message.into(), param),
        }
    }

    /// 404 `resource_missing`.
    pub fn missing(what: &str, id: &str, param: Option<&str>) -> Self {
        Self {
            status: 404,
            body: objects::error(
                "invalid_request_error",
                Some("resource_missing"),
                &format!("No such {what}: '{id}'"),
                param,
            ),
        }
    }

    /// 400 `parameter_missing`.
    pub fn param_missing(param: &str) -> Self {
        Self::invalid(
            "parameter_missing",
            format!("Missing required param: {param}."),
            Some(param),
        )
    }
}

/// Result of an API operation.
pub type ApiResult = Result<Value, ApiErr>;

/// An injected fault on the API (`POST /_fake/faults`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Fault {
    /// `status` (answer `status` without doing anything), `timeout` (do the work, then answer
    /// after `ms`), `delay` (wait `ms`, then do the work and answer).
    pub kind: String,
    /// HTTP status of a `status` fault (429, 500, 503, ...).
    #[serde(default)]
    pub status: Option<u16>,
    /// Milliseconds of a `timeout` or `delay` fault.
    #[serde(default)]
    pub ms: Option<u64>,
    /// API path prefix it applies to (`/v1/billing/meter_events`); all paths when absent.
    #[serde(default)]
    pub path: Option<String>,
    /// How many requests it affects; unlimited (until cleared) when absent.
    #[serde(default)]
    pub count: Option<u32>,
}

/// One API request, as logged.
#[derive(Debug, Clone, Serialize)]
pub struct RequestLog {
    /// Method.
    pub method: String,
    /// Path.
    pub path: String,
    /// Answer status.
    pub status: u16,
    /// Idempotency key sent.
    pub idempotency_key: Option<String>,
    /// Whether the answer was replayed from the idempotency cache.
    pub replayed: bool,
    /// When it arrived (unix ms, real time).
    pub at_ms: u128,
}

/// One webhook delivery attempt.
#[derive(Debug, Clone, Serialize)]
pub struct Delivery {
    /// Event id.
    pub event_id: String,
    /// Event type.
    pub event_type: String,
    /// HTTP status (0 = no answer).
    pub status: u16,
    /// Attempt number.
    pub attempt: u32,
}

/// A cached answer for an idempotency key.
#[derive(Debug, Clone)]
pub struct Cached {
    /// Method, path and parameters of the first request.
    pub fingerprint: String,
    /// Status.
    pub status: u16,
    /// Body.
    pub body: Value,
}

/// The account.
#[derive(Debug, Default)]
pub struct State {
    /// Seconds added to the real clock (`POST /_fake/clock/advance`).
    pub offset: i64,
    seq: u64,
    /// Customers by id.
    pub customers: BTreeMap<String, Value>,
    /// Products by id.
    pub products: BTreeMap<String, Value>,
    /// Prices by id.
    pub prices: BTreeMap<String, Price>,
    /// Meters by id.
    pub meters: BTreeMap<String, Meter>,
    /// Accepted meter events in arrival order.
    pub meter_events: Vec<MeterEvent>,
    /// Identifier → index into `meter_events`.
    pub identifiers: HashMap<String, usize>,
    /// Subscriptions by id.
    pub subscriptions: BTreeMap<String, Subscription>,
    /// Creation order of subscriptions (lists are newest first).
    pub subscription_order: Vec<String>,
    /// Checkout Sessions by id.
    pub sessions: BTreeMap<String, CheckoutSession>,
    /// Portal sessions by id.
    pub portal_sessions: BTreeMap<String, Value>,
    /// Invoices by id.
    pub invoices: BTreeMap<String, Value>,
    /// Every event, in creation order.
    pub events: Vec<Value>,
    /// Idempotency cache.
    pub idempotency: HashMap<String, Cached>,
    /// Active faults, applied first to last.
    pub faults: Vec<Fault>,
    /// Request log.
    pub requests: Vec<RequestLog>,
    /// Delivery log.
    pub deliveries: Vec<Delivery>,
    /// Meter event calls in flight per (customer, event name), and the most seen at once.
    pub in_flight: HashMap<String, u32>,
    /// The most meter event calls seen in flight for one (customer, event name).
    pub max_in_flight: u32,
}

/// Real unix time in seconds.
pub fn real_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn str_param<'a>(p: &'a Value, key: &str) -> Option<&'a str> {
    p.get(key).and_then(Value::as_str).filter(|s| !s.is_empty())
}

fn req_str<'a>(p: &'a Value, key: &str) -> Result<&'a str, ApiErr> {
    str_param(p, key).ok_or_else(|| ApiErr::param_missing(key))
}

fn int_param(p: &Value, key: &str) -> Result<Option<i64>, ApiErr> {
    match str_param(p, key) {
        None => Ok(None),
        Some(s) => s.parse().map(Some).map_err(|_| {
            ApiErr::invalid(
                "parameter_invalid_integer",
                format!("Invalid integer: {s}"),
                Some(key),
            )
        }),
    }
}

fn bool_param(p: &Value, key: &str) -> Result<Option<bool>, ApiErr> {
    match str_param(p, key) {
        None => Ok(None),
        Some("true") => Ok(Some(true)),
        Some("false") => Ok(Some(false)),
        Some(s) => Err(ApiErr::invalid(
            "parameter_invalid_boolean",
            format!("Invalid boolean: {s}"),
            Some(key),
        )),
    }
}

fn metadata(p: &Value, key: &str) -> Value {
    match p.get(key) {
        Some(Value::Object(m)) => Value::Object(m.clone()),
        _ => json!({}),
    }
}

/// `limit` and `starting_after` applied to `items` (already newest first).
fn page(items: Vec<Value>, params: &Value, url: &str) -> ApiResult {
    let limit = int_param(params, "limit")?.unwrap_or(10);
    if !(1..=100).contains(&limit) {
        return Err(ApiErr::invalid(
            "parameter_invalid_integer",
            "limit must be between 1 and 100",
            Some("limit"),
        ));
    }
    let start = match str_param(params, "starting_after") {
        Some(after) => items
            .iter()
            .position(|v| v["id"] == after)
            .map(|i| i + 1)
            .ok_or_else(|| ApiErr::missing("object", after, Some("starting_after")))?,
        None => 0,
    };
    let rest: Vec<Value> = items.into_iter().skip(start).collect();
    let has_more = rest.len() > limit as usize;
    Ok(objects::list(
        rest.into_iter().take(limit as usize).collect(),
        has_more,
        url,
    ))
}

impl State {
    /// The fake's clock (real time plus the offset).
    pub fn now(&self) -> i64 {
        real_now() + self.offset
    }

    /// A fresh id with `prefix`.
    pub fn id(&mut self, prefix: &str) -> String {
        self.seq += 1;
        let random = uuid::Uuid::new_v4().simple().to_string();
        format!("{prefix}_{:06}{}", self.seq, &random[..14])
    }

    fn push_event(&mut self, kind: &str, object: Value, previous: Option<Value>) -> Value {
        let id = self.id("evt");
        let event = objects::event(&id, kind, self.now(), object, previous);
        self.events.push(event.clone());
        event
    }

    // --- customers, products, prices, meters -------------------------------------------------

    /// `POST /v1/customers`.
    pub fn create_customer(&mut self, p: &Value) -> ApiResult {
        let id = self.id("cus");
        let c = objects::customer(
            &id,
            self.now(),
            str_param(p, "email"),
            str_param(p, "name"),
            &metadata(p, "metadata"),
        );
        self.customers.insert(id, c.clone());
        Ok(c)
    }

    /// `GET /v1/customers/{id}`.
    pub fn customer(&self, id: &str) -> ApiResult {
        self.customers
            .get(id)
            .cloned()
            .ok_or_else(|| ApiErr::missing("customer", id, Some("id")))
    }

    /// `GET /v1/customers`.
    pub fn list_customers(&self, p: &Value) -> ApiResult {
        let email = str_param(p, "email");
        let mut items: Vec<Value> = self
            .customers
            .values()
            .filter(|c| email.is_none_or(|e| c["email"] == e))
            .cloned()
            .collect();
        items.sort_by(|a, b| {
            b["created"]
                .as_i64()
                .cmp(&a["created"].as_i64())
                .then(b["id"].as_str().cmp(&a["id"].as_str()))
        });
        page(items, p, "/v1/customers")
    }

    /// `POST /v1/products`.
    pub fn create_product(&mut self, p: &Value) -> ApiResult {
        let name = req_str(p, "name")?;
        let id = match str_param(p, "id") {
            Some(id) if self.products.contains_key(id) => {
                return Err(ApiErr::invalid(
                    "resource_already_exists",
                    format!("Product already exists: {id}"),
                    Some("id"),
                ));
            }
            Some(id) => id.to_string(),
            None => self.id("prod"),
        };
        let product = objects::product(&id, name, self.now(), &metadata(p, "metadata"));
        self.products.insert(id, product.clone());
        Ok(product)
    }

    /// `GET /v1/products/{id}`.
    pub fn product(&self, id: &str) -> ApiResult {
        self.products
            .get(id)
            .cloned()
            .ok_or_else(|| ApiErr::missing("product", id, Some("id")))
    }

    /// `POST /v1/prices`.
    pub fn create_price(&mut self, p: &Value) -> ApiResult {
        let currency = req_str(p, "currency")?.to_lowercase();
        let product = match (str_param(p, "product"), p.get("product_data")) {
            (Some(id), _) => {
                self.product(id)
                    .map_err(|_| ApiErr::missing("product", id, Some("product")))?;
                id.to_string()
            }
            (None, Some(data)) => {
                let created = self.create_product(data)?;
                created["id"].as_str().unwrap_or_default().to_string()
            }
            (None, None) => return Err(ApiErr::param_missing("product")),
        };
        let unit_amount = int_param(p, "unit_amount")?.unwrap_or(0);
        let recurring = match p.get("recurring") {
            Some(r) => {
                let interval = req_str(r, "interval")
                    .map_err(|_| ApiErr::param_missing("recurring[interval]"))?;
                if !["day", "week", "month", "year"].contains(&interval) {
                    return Err(ApiErr::invalid(
                        "parameter_invalid_string",
                        format!("Invalid recurring[interval]: {interval}"),
                        Some("recurring[interval]"),
                    ));
                }
                let usage_type = str_param(r, "usage_type").unwrap_or("licensed").to_string();
                let meter = str_param(r, "meter").map(String::from);
                if let Some(m) = &meter {
                    if !self.meters.contains_key(m) {
                        return Err(ApiErr::missing(
                            "billing meter",
                            m,
                            Some("recurring[meter]"),
                        ));
                    }
                    if usage_type != "metered" {
                        return Err(ApiErr::invalid(
                            "parameter_invalid_string",
                            "recurring[meter] requires recurring[usage_type]=metered",
                            Some("recurring[usage_type]"),
                        ));
                    }
                }
                Some(Recurring {
                    interval: interval.into(),
                    interval_count: int_param(r, "interval_count")?.unwrap_or(1).max(1) as u64,
                    usage_type,
                    meter,
                })
            }
            None => None,
        };
        let price = Price {
            id: self.id("price"),
            product,
            unit_amount,
            currency,
            recurring,
            lookup_key: str_param(p, "lookup_key").map(String::from),
            nickname: str_param(p, "nickname").map(String::from),
            metadata: metadata(p, "metadata"),
            created: self.now(),
        };
        let json = price.json();
        self.prices.insert(price.id.clone(), price);
        Ok(json)
    }

    /// `GET /v1/prices/{id}`.
    pub fn price(&self, id: &str) -> ApiResult {
        self.prices
            .get(id)
            .map(Price::json)
            .ok_or_else(|| ApiErr::missing("price", id, Some("price")))
    }

    /// `GET /v1/prices`.
    pub fn list_prices(&self, p: &Value) -> ApiResult {
        let mut items: Vec<&Price> = self.prices.values().collect();
        items.sort_by(|a, b| b.created.cmp(&a.created).then(b.id.cmp(&a.id)));
        page(
            items.into_iter().map(Price::json).collect(),
            p,
            "/v1/prices",
        )
    }

    /// `POST /v1/billing/meters`.
    pub fn create_meter(&mut self, p: &Value) -> ApiResult {
        let display_name = req_str(p, "display_name")?.to_string();
        let event_name = req_str(p, "event_name")?.to_string();
        let formula = p
            .get("default_aggregation")
            .and_then(|d| str_param(d, "formula"))
            .ok_or_else(|| ApiErr::param_missing("default_aggregation[formula]"))?
            .to_string();
        if !["sum", "count", "last"].contains(&formula.as_str()) {
            return Err(ApiErr::invalid(
                "parameter_invalid_string",
                format!("Invalid default_aggregation[formula]: {formula}"),
                Some("default_aggregation[formula]"),
            ));
        }
        if self
            .meters
            .values()
            .any(|m| m.event_name == event_name && m.status == "active")
        {
            return Err(ApiErr::invalid(
                "resource_already_exists",
                format!("An active meter with event_name '{event_name}' already exists."),
                Some("event_name"),
            ));
        }
        let meter = Meter {
            id: self.id("mtr"),
            display_name,
            event_name,
            formula,
            customer_key: p
                .get("customer_mapping")
                .and_then(|c| str_param(c, "event_payload_key"))
                .unwrap_or("stripe_customer_id")
                .into(),
            value_key: p
                .get("value_settings")
                .and_then(|c| str_param(c, "event_payload_key"))
                .unwrap_or("value")
                .into(),
            status: "active".into(),
            created: self.now(),
        };
        let json = meter.json();
        self.meters.insert(meter.id.clone(), meter);
        Ok(json)
    }

    /// `GET /v1/billing/meters/{id}`.
    pub fn meter(&self, id: &str) -> ApiResult {
        self.meters
            .get(id)
            .map(Meter::json)
            .ok_or_else(|| ApiErr::missing("billing meter", id, Some("id")))
    }

    /// `GET /v1/billing/meters`.
    pub fn list_meters(&self, p: &Value) -> ApiResult {
        let status = str_param(p, "status");
        let mut items: Vec<&Meter> = self
            .meters
            .values()
            .filter(|m| status.is_none_or(|s| m.status == s))
            .collect();
        items.sort_by(|a, b| b.created.cmp(&a.created).then(b.id.cmp(&a.id)));
        page(
            items.into_iter().map(Meter::json).collect(),
            p,
            "/v1/billing/meters",
        )
    }

    // --- meter events -------------------------------------------------------------------------

    /// The in-flight key of a meter event request.
    pub fn meter_event_key(p: &Value) -> String {
        let customer = p
            .get("payload")
            .and_then(|x| str_param(x, "stripe_customer_id"))
            .unwrap_or("");
        format!("{customer}/{}", str_param(p, "event_name").unwrap_or(""))
    }

    /// `POST /v1/billing/meter_events`: identifier dedup, the 35-day window, the meter's keys.
    pub fn create_meter_event(&mut self, p: &Value) -> ApiResult {
        let event_name = req_str(p, "event_name")?.to_string();
        let payload = match p.get("payload") {
            Some(Value::Object(m)) => m.clone(),
            _ => return Err(ApiErr::param_missing("payload")),
        };
        let meter = self
            .meters
            .values()
            .find(|m| m.event_name == event_name && m.status == "active")
            .cloned()
            .ok_or_else(|| {
                ApiErr::invalid(
                    "resource_missing",
                    format!("No active meter was found with event_name '{event_name}'."),
                    Some("event_name"),
                )
            })?;
        let customer = payload
            .get(&meter.customer_key)
            .and_then(Value::as_str)
            .ok_or_else(|| ApiErr::param_missing(&format!("payload[{}]", meter.customer_key)))?
            .to_string();
        if !self.customers.contains_key(&customer) {
            return Err(ApiErr::missing(
                "customer",
                &customer,
                Some(&format!("payload[{}]", meter.customer_key)),
            ));
        }
        let raw = payload
            .get(&meter.value_key)
            .and_then(Value::as_str)
            .ok_or_else(|| ApiErr::param_missing(&format!("payload[{}]", meter.value_key)))?;
        let value: f64 = raw
            .parse()
            .ok()
            .filter(|v: &f64| v.is_finite())
            .ok_or_else(|| {
                ApiErr::invalid(
                    "parameter_invalid_string",
                    format!("payload[{}] must be a number, got '{raw}'", meter.value_key),
                    Some(&format!("payload[{}]", meter.value_key)),
                )
            })?;
        let now = self.now();
        let timestamp = int_param(p, "timestamp")?.unwrap_or(now);
        if timestamp < now - METER_EVENT_MAX_AGE {
            return Err(ApiErr::invalid(
                "timestamp_too_far_in_past",
                "The timestamp must be within the past 35 calendar days.",
                Some("timestamp"),
            ));
        }
        if timestamp > now + METER_EVENT_MAX_FUTURE {
            return Err(ApiErr::invalid(
                "timestamp_in_future",
                "The timestamp must not be more than 5 minutes in the future.",
                Some("timestamp"),
            ));
        }
        let identifier = match str_param(p, "identifier") {
            Some(i) => i.to_string(),
            None => self.id("mev"),
        };
        if let Some(&i) = self.identifiers.get(&identifier)
            && self.meter_events[i].created > now - METER_EVENT_MAX_AGE
        {
            return Err(ApiErr::invalid(
                "resource_already_exists",
                format!("A meter event with identifier '{identifier}' already exists."),
                Some("identifier"),
            ));
        }
        let event = MeterEvent {
            event_name,
            identifier: identifier.clone(),
            payload,
            customer,
            value,
            timestamp,
            created: now,
        };
        let json = event.json();
        self.identifiers.insert(identifier, self.meter_events.len());
        self.meter_events.push(event);
        Ok(json)
    }

    /// `GET /v1/billing/meters/{id}/event_summaries`.
    pub fn event_summaries(&mut self, meter_id: &str, p: &Value) -> ApiResult {
        let meter = self
            .meters
            .get(meter_id)
            .cloned()
            .ok_or_else(|| ApiErr::missing("billing meter", meter_id, Some("id")))?;
        let customer = req_str(p, "customer")?.to_string();
        let start =
            int_param(p, "start_time")?.ok_or_else(|| ApiErr::param_missing("start_time"))?;
        let end = int_param(p, "end_time")?.ok_or_else(|| ApiErr::param_missing("end_time"))?;
        if end <= start {
            return Err(ApiErr::invalid(
                "parameter_invalid_integer",
                "end_time must be after start_time",
                Some("end_time"),
            ));
        }
        let window = match str_param(p, "value_grouping_window") {
            None => end - start,
            Some("hour") => 3_600,
            Some("day") => 86_400,
            Some(w) => {
                return Err(ApiErr::invalid(
                    "parameter_invalid_string",
                    format!("Invalid value_grouping_window: {w}"),
                    Some("value_grouping_window"),
                ));
            }
        };
        if window != end - start && (start % window != 0 || end % window != 0) {
            return Err(ApiErr::invalid(
                "parameter_invalid_integer",
                "start_time and end_time must align with the value_grouping_window",
                Some("start_time"),
            ));
        }
        let mut buckets: BTreeMap<i64, (f64, u64)> = BTreeMap::new();
        let mut b = start;
        while b < end {
            buckets.insert(b, (0.0, 0));
            b += window;
        }
        for e in self
            .meter_events
            .iter()
            .filter(|e| e.event_name == meter.event_name && e.customer == customer)
            .filter(|e| e.timestamp >= start && e.timestamp < end)
        {
            let bucket = start + (e.timestamp - start) / window * window;
            let entry = buckets.entry(bucket).or_insert((0.0, 0));
            match meter.formula.as_str() {
                "count" => entry.0 += 1.0,
                "last" => entry.0 = e.value,
                _ => entry.0 += e.value,
            }
            entry.1 += 1;
        }
        // Stripe lists summaries newest first.
        let items: Vec<Value> = buckets
            .into_iter()
            .rev()
            .map(|(s, (v, _))| {
                let id = format!(
                    "mtrusg_{}_{}_{s}",
                    &meter.id[4..],
                    customer.trim_start_matches("cus_")
                );
                objects::summary(&id, &meter.id, s, (s + window).min(end), v)
            })
            .collect();
        page(
            items,
            p,
            &format!("/v1/billing/meters/{meter_id}/event_summaries"),
        )
    }

    // --- subscriptions ------------------------------------------------------------------------

    fn new_subscription(
        &mut self,
        customer: &str,
        price_id: &str,
        quantity: u64,
        metadata: Value,
    ) -> Result<Subscription, ApiErr> {
        if !self.customers.contains_key(customer) {
            return Err(ApiErr::missing("customer", customer, Some("customer")));
        }
        let price = self
            .prices
            .get(price_id)
            .cloned()
            .ok_or_else(|| ApiErr::missing("price", price_id, Some("items[0][price]")))?;
        if price.recurring.is_none() {
            return Err(ApiErr::invalid(
                "parameter_invalid_string",
                format!("The price {price_id} is not recurring."),
                Some("items[0][price]"),
            ));
        }
        let now = self.now();
        Ok(Subscription {
            id: self.id("sub"),
            item_id: self.id("si"),
            customer: customer.into(),
            price,
            quantity,
            status: "active".into(),
            created: now,
            period_start: now,
            period_end: now + PERIOD_SECS,
            cancel_at_period_end: false,
            canceled_at: None,
            ended_at: None,
            metadata,
            latest_invoice: None,
            fail_next_payment: false,
        })
    }

    /// Stores a new subscription and emits `customer.subscription.created`, the first invoice and
    /// `invoice.paid`. Returns the events.
    fn start_subscription(&mut self, mut sub: Subscription, reason: &str) -> Vec<Value> {
        let invoice_id = self.id("in");
        let invoice = objects::invoice(
            &invoice_id,
            &sub,
            sub.created,
            sub.period_start,
            sub.period_end,
            true,
            1,
            reason,
        );
        sub.latest_invoice = Some(invoice_id.clone());
        self.invoices.insert(invoice_id, invoice.clone());
        let created = self.push_event("customer.subscription.created", sub.json(), None);
        let paid = self.push_event("invoice.paid", invoice, None);
        self.subscription_order.push(sub.id.clone());
        self.subscriptions.insert(sub.id.clone(), sub);
        vec![created, paid]
    }

    /// `POST /v1/subscriptions`.
    pub fn create_subscription(&mut self, p: &Value) -> Result<(Value, Vec<Value>), ApiErr> {
        let customer = req_str(p, "customer")?.to_string();
        let item = p
            .get("items")
            .and_then(|i| i.get(0))
            .ok_or_else(|| ApiErr::param_missing("items"))?;
        let price = req_str(item, "price").map_err(|_| ApiErr::param_missing("items[0][price]"))?;
        let quantity = int_param(item, "quantity")?.unwrap_or(1).max(1) as u64;
        let sub = self.new_subscription(&customer, price, quantity, metadata(p, "metadata"))?;
        let json = sub.json();
        let events = self.start_subscription(sub, "subscription_create");
        let json = self
            .subscriptions
            .get(json["id"].as_str().unwrap_or_default())
            .map(Subscription::json)
            .unwrap_or(json);
        Ok((json, events))
    }

    /// `GET /v1/subscriptions/{id}`.
    pub fn subscription(&self, id: &str) -> ApiResult {
        self.subscriptions
            .get(id)
            .map(Subscription::json)
            .ok_or_else(|| ApiErr::missing("subscription", id, Some("id")))
    }

    /// `GET /v1/subscriptions`: by default every status but `canceled`; `status=all` for all.
    pub fn list_subscriptions(&self, p: &Value) -> ApiResult {
        let customer = str_param(p, "customer");
        let status = str_param(p, "status");
        let price = str_param(p, "price");
        let items: Vec<Value> = self
            .subscription_order
            .iter()
            .rev()
            .filter_map(|id| self.subscriptions.get(id))
            .filter(|s| customer.is_none_or(|c| s.customer == c))
            .filter(|s| price.is_none_or(|x| s.price.id == x))
            .filter(|s| match status {
                None => s.status != "canceled",
                Some("all") => true,
                Some(x) => s.status == x,
            })
            .map(Subscription::json)
            .collect();
        page(items, p, "/v1/subscriptions")
    }

    fn previous(before: &Value, after: &Value) -> Value {
        let mut prev = Map::new();
        if let (Value::Object(b), Value::Object(a)) = (before, after) {
            for (k, v) in b {
                if a.get(k) != Some(v) {
                    prev.insert(k.clone(), v.clone());
                }
            }
        }
        Value::Object(prev)
    }

    /// Applies `change` to a subscription and emits `customer.subscription.updated` (or
    /// `deleted` when it ended) with the previous attributes.
    pub fn change_subscription(
        &mut self,
        id: &str,
        change: impl FnOnce(&mut Subscription, i64),
    ) -> Result<(Value, Vec<Value>), ApiErr> {
        let now = self.now();
        let sub = self
            .subscriptions
            .get_mut(id)
            .ok_or_else(|| ApiErr::missing("subscription", id, Some("id")))?;
        let before = sub.json();
        change(sub, now);
        let after = sub.json();
        let ended = sub.is_terminal() && before["status"] != after["status"];
        if before == after {
            return Ok((after, Vec::new()));
        }
        let prev = Self::previous(&before, &after);
        let event = if ended {
            self.push_event("customer.subscription.deleted", after.clone(), None)
        } else {
            self.push_event("customer.subscription.updated", after.clone(), Some(prev))
        };
        Ok((after, vec![event]))
    }

    /// `POST /v1/subscriptions/{id}`: `cancel_at_period_end`, `metadata`, `items[0][price]`.
    pub fn update_subscription(
        &mut self,
        id: &str,
        p: &Value,
    ) -> Result<(Value, Vec<Value>), ApiErr> {
        let cancel = bool_param(p, "cancel_at_period_end")?;
        let meta = p.get("metadata").cloned();
        let new_price = match p
            .get("items")
            .and_then(|i| i.get(0))
            .and_then(|i| str_param(i, "price"))
        {
            Some(pid) => Some(
                self.prices
                    .get(pid)
                    .cloned()
                    .ok_or_else(|| ApiErr::missing("price", pid, Some("items[0][price]")))?,
            ),
            None => None,
        };
        if self
            .subscriptions
            .get(id)
            .is_some_and(Subscription::is_terminal)
        {
            return Err(ApiErr::invalid(
                "resource_missing",
                "A canceled subscription can only update its cancellation_details and metadata.",
                None,
            ));
        }
        self.change_subscription(id, |s, now| {
            if let Some(c) = cancel {
                s.cancel_at_period_end = c;
                s.canceled_at = c.then_some(now);
            }
            if let (Some(Value::Object(m)), Value::Object(existing)) = (meta, &mut s.metadata) {
                for (k, v) in m {
                    existing.insert(k, v);
                }
            }
            if let Some(price) = new_price {
                s.price = price;
            }
        })
    }

    /// `DELETE /v1/subscriptions/{id}`: ends it now.
    pub fn cancel_subscription(&mut self, id: &str) -> Result<(Value, Vec<Value>), ApiErr> {
        if self
            .subscriptions
            .get(id)
            .is_some_and(Subscription::is_terminal)
        {
            return Err(ApiErr::invalid(
                "resource_missing",
                format!("No such subscription: '{id}' (it is already canceled)"),
                Some("id"),
            ));
        }
        self.change_subscription(id, |s, now| {
            s.status = "canceled".into();
            s.canceled_at = Some(now);
            s.ended_at = Some(now);
        })
    }

    /// A payment attempt on a subscription's invoice: paid or failed. Emits `invoice.paid` or
    /// `invoice.payment_failed`, and the subscription's status change.
    pub fn invoice_outcome(
        &mut self,
        id: &str,
        paid: bool,
        reason: &str,
    ) -> Result<Vec<Value>, ApiErr> {
        let sub = self
            .subscriptions
            .get(id)
            .cloned()
            .ok_or_else(|| ApiErr::missing("subscription", id, Some("id")))?;
        let now = self.now();
        let invoice_id = self.id("in");
        let attempts = if paid { 1 } else { 2 };
        let invoice = objects::invoice(
            &invoice_id,
            &sub,
            now,
            sub.period_start,
            sub.period_end,
            paid,
            attempts,
            reason,
        );
        self.invoices.insert(invoice_id.clone(), invoice.clone());
        let kind = if paid {
            "invoice.paid"
        } else {
            "invoice.payment_failed"
        };
        let mut events = vec![self.push_event(kind, invoice, None)];
        let (_, more) = self.change_subscription(id, |s, _| {
            s.latest_invoice = Some(invoice_id);
            if paid && matches!(s.status.as_str(), "past_due" | "unpaid" | "incomplete") {
                s.status = "active".into();
            } else if !paid && s.status == "active" {
                s.status = "past_due".into();
            }
        })?;
        events.extend(more);
        Ok(events)
    }

    /// Moves the clock and runs what falls due: subscriptions at their period end renew (paid, or
    /// failed when `fail_next_payment`) or end (`cancel_at_period_end`).
    pub fn advance(&mut self, seconds: i64) -> Vec<Value> {
        self.offset += seconds;
        let now = self.now();
        let mut events = Vec::new();
        let ids: Vec<String> = self.subscription_order.clone();
        for id in ids {
            while let Some(sub) = self.subscriptions.get(&id).cloned() {
                if sub.is_terminal() || sub.period_end > now {
                    break;
                }
                if sub.cancel_at_period_end {
                    if let Ok((_, e)) = self.change_subscription(&id, |s, _| {
                        s.status = "canceled".into();
                        s.ended_at = Some(s.period_end);
                    }) {
                        events.extend(e);
                    }
                    break;
                }
                let fail = sub.fail_next_payment;
                if let Ok((_, e)) = self.change_subscription(&id, |s, _| {
                    s.period_start = s.period_end;
                    s.period_end += PERIOD_SECS;
                    s.fail_next_payment = false;
                }) {
                    events.extend(e);
                }
                if let Ok(e) = self.invoice_outcome(&id, !fail, "subscription_cycle") {
                    events.extend(e);
                }
            }
        }
        events
    }

    // --- checkout and portal ------------------------------------------------------------------

    /// `POST /v1/checkout/sessions` (subscription mode).
    pub fn create_checkout_session(&mut self, p: &Value, base_url: &str) -> ApiResult {
        let mode = req_str(p, "mode")?;
        if mode != "subscription" {
            return Err(ApiErr::invalid(
                "parameter_invalid_string",
                format!("The fake completes only subscription-mode sessions, not '{mode}'."),
                Some("mode"),
            ));
        }
        let items = p
            .get("line_items")
            .and_then(Value::as_array)
            .filter(|a| !a.is_empty())
            .ok_or_else(|| ApiErr::param_missing("line_items"))?;
        let mut line_items = Vec::new();
        let mut amount = 0;
        let mut currency = "usd".to_string();
        for (i, item) in items.iter().enumerate() {
            let pid = str_param(item, "price")
                .ok_or_else(|| ApiErr::param_missing(&format!("line_items[{i}][price]")))?;
            let price = self.prices.get(pid).ok_or_else(|| {
                ApiErr::missing("price", pid, Some(&format!("line_items[{i}][price]")))
            })?;
            let quantity = int_param(item, "quantity")?.map(|q| q.max(1) as u64);
            let metered = price
                .recurring
                .as_ref()
                .is_some_and(|r| r.usage_type == "metered");
            if metered && quantity.is_some() {
                return Err(ApiErr::invalid(
                    "parameter_invalid_integer",
                    "Quantity should not be specified where usage_type is `metered`.",
                    Some(&format!("line_items[{i}][quantity]")),
                ));
            }
            if !metered && quantity.is_none() {
                return Err(ApiErr::param_missing(&format!("line_items[{i}][quantity]")));
            }
            amount += price.unit_amount * quantity.unwrap_or(0) as i64;
            currency.clone_from(&price.currency);
            line_items.push((pid.to_string(), quantity));
        }
        let customer = match str_param(p, "customer") {
            Some(c) => {
                self.customer(c)
                    .map_err(|_| ApiErr::missing("customer", c, Some("customer")))?;
                c.to_string()
            }
            None => {
                let created =
                    self.create_customer(&json!({"email": str_param(p, "customer_email")}))?;
                created["id"].as_str().unwrap_or_default().to_string()
            }
        };
        let id = format!("cs_test_{}", &self.id("x")[2..]);
        let session = CheckoutSession {
            url: format!("{base_url}/checkout/{id}"),
            id: id.clone(),
            customer,
            line_items,
            mode: mode.into(),
            success_url: str_param(p, "success_url").map(String::from),
            cancel_url: str_param(p, "cancel_url").map(String::from),
            client_reference_id: str_param(p, "client_reference_id").map(String::from),
            metadata: metadata(p, "metadata"),
            subscription_metadata: p
                .get("subscription_data")
                .map(|d| metadata(d, "metadata"))
                .unwrap_or_else(|| json!({})),
            status: "open".into(),
            subscription: None,
            invoice: None,
            amount_total: amount,
            currency,
            created: self.now(),
        };
        let json = session.json();
        self.sessions.insert(id, session);
        Ok(json)
    }

    /// `GET /v1/checkout/sessions/{id}`.
    pub fn checkout_session(&self, id: &str) -> ApiResult {
        self.sessions
            .get(id)
            .map(CheckoutSession::json)
            .ok_or_else(|| ApiErr::missing("checkout.session", id, Some("session")))
    }

    /// The customer pays on the hosted page: the subscription starts and the session completes.
    /// Visiting a completed session again changes nothing.
    pub fn complete_checkout(&mut self, id: &str) -> Result<(CheckoutSession, Vec<Value>), ApiErr> {
        let session = self
            .sessions
            .get(id)
            .cloned()
            .ok_or_else(|| ApiErr::missing("checkout.session", id, None))?;
        if session.status != "open" {
            return Ok((session, Vec::new()));
        }
        let (price, quantity) = session.line_items[0].clone();
        let sub = self.new_subscription(
            &session.customer,
            &price,
            quantity.unwrap_or(1),
            session.subscription_metadata.clone(),
        )?;
        let sub_id = sub.id.clone();
        let mut events = self.start_subscription(sub, "subscription_create");
        let invoice = self
            .subscriptions
            .get(&sub_id)
            .and_then(|s| s.latest_invoice.clone());
        let done = {
            let s = self
                .sessions
                .get_mut(id)
                .ok_or_else(|| ApiErr::missing("checkout.session", id, None))?;
            s.status = "complete".into();
            s.subscription = Some(sub_id);
            s.invoice = invoice;
            s.clone()
        };
        // Stripe sends checkout.session.completed after the subscription exists.
        let completed = self.push_event("checkout.session.completed", done.json(), None);
        events.insert(0, completed);
        Ok((done, events))
    }

    /// `POST /v1/billing_portal/sessions`.
    pub fn create_portal_session(&mut self, p: &Value, base_url: &str) -> ApiResult {
        let customer = req_str(p, "customer")?;
        self.customer(customer)
            .map_err(|_| ApiErr::missing("customer", customer, Some("customer")))?;
        let id = self.id("bps");
        let session = objects::portal_session(
            &id,
            customer,
            self.now(),
            str_param(p, "return_url"),
            &format!("{base_url}/portal/{id}"),
        );
        self.portal_sessions.insert(id, session.clone());
        Ok(session)
    }

    /// The fault that applies to a request on `path`, consuming one use of it.
    pub fn take_fault(&mut self, path: &str) -> Option<Fault> {
        let i = self
            .faults
            .iter()
            .position(|f| f.path.as_deref().is_none_or(|p| path.starts_with(p)))?;
        let fault = self.faults[i].clone();
        if let Some(n) = self.faults[i].count.as_mut() {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.faults.remove(i);
            }
        }
        Some(fault)
    }

    /// The most requests on `path_prefix` that arrived within any one second.
    pub fn max_per_second(&self, path_prefix: &str) -> usize {
        let mut times: Vec<u128> = self
            .requests
            .iter()
            .filter(|r| r.path.starts_with(path_prefix))
            .map(|r| r.at_ms)
            .collect();
        times.sort_unstable();
        let mut best = 0;
        let mut start = 0;
        for end in 0..times.len() {
            while times[end] - times[start] >= 1000 {
                start += 1;
            }
            best = best.max(end - start + 1);
        }
        best
    }
}
