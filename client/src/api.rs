//! [`Client`]: one typed method per route of the public API (the ingest's native and seed
//! routes, billing-sync's subscription routes); every error answer becomes [`Error::Api`] with
//! its typed code.

use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, RequestBuilder, StatusCode};
use serde::de::DeserializeOwned;

use crate::error::{Error, ErrorCode, Result};
use crate::types::*;

/// The header naming the customer for a tenant-wide key on the seed and subscription routes.
pub const CUSTOMER_HEADER: &str = "x-customer-id";

/// Settings of a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The ingest's base URL (`http://127.0.0.1:8080`).
    pub base_url: String,
    /// billing-sync's base URL (`http://127.0.0.1:8090`), for the subscription routes.
    pub billing_url: Option<String>,
    /// The API key (`Authorization: Bearer`).
    pub api_key: String,
    /// Per-request timeout.
    pub timeout: Duration,
    /// The customer the seed and subscription routes act for (for a tenant-wide key).
    pub customer: Option<String>,
}

impl ClientConfig {
    /// Settings with a 5 s timeout and no billing URL.
    pub fn new(base_url: impl Into<String>, api_key: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            billing_url: None,
            api_key: api_key.into(),
            timeout: Duration::from_secs(5),
            customer: None,
        }
    }
}

/// A client of the metering API. Cheap to clone (one connection pool).
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: Arc<str>,
    billing: Option<Arc<str>>,
    key: Arc<str>,
    customer: Option<Arc<str>>,
}

fn trim(url: &str) -> Arc<str> {
    url.trim_end_matches('/').into()
}

impl Client {
    /// A client of the ingest at `base_url` with `api_key`.
    pub fn new(base_url: impl Into<String>, api_key: impl Into<String>) -> Result<Self> {
        Self::with_config(ClientConfig::new(base_url, api_key))
    }

    /// A client with every setting.
    pub fn with_config(config: ClientConfig) -> Result<Self> {
        if !config.base_url.starts_with("http://") && !config.base_url.starts_with("https://") {
            return Err(Error::Config(format!(
                "base URL {:?} is not http(s)",
                config.base_url
            )));
        }
        if config.api_key.is_empty() {
            return Err(Error::Config("empty API key".into()));
        }
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .pool_max_idle_per_host(64)
            .build()?;
        Ok(Self {
            http,
            base: trim(&config.base_url),
            billing: config.billing_url.as_deref().map(trim),
            key: config.api_key.into(),
            customer: config.customer.map(Into::into),
        })
    }

    /// The same client acting for `customer` on the seed and subscription routes.
    pub fn for_customer(&self, customer: impl Into<String>) -> Self {
        Self {
            customer: Some(customer.into().into()),
            ..self.clone()
        }
    }

    /// The same client with billing-sync at `url`.
    pub fn with_billing(&self, url: &str) -> Self {
        Self {
            billing: Some(trim(url)),
            ..self.clone()
        }
    }

    /// The ingest's base URL.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn request(&self, method: Method, base: &str, path: &str) -> RequestBuilder {
        let mut r = self
            .http
            .request(method, format!("{base}{path}"))
            .bearer_auth(&*self.key);
        if let Some(c) = &self.customer {
            r = r.header(CUSTOMER_HEADER, &**c);
        }
        r
    }

    fn ingest(&self, method: Method, path: &str) -> RequestBuilder {
        self.request(method, &self.base, path)
    }

    fn billing(&self, method: Method, path: &str) -> Result<RequestBuilder> {
        let base = self
            .billing
            .as_deref()
            .ok_or_else(|| Error::Config("no billing-sync URL configured".into()))?;
        Ok(self.request(method, base, path))
    }

    // ---- events and quotas ----

    /// `POST /v1/events`: one event or up to 1,000; `Ok` only once the broker has every event.
    pub async fn send_events(&self, events: &[IncomingEvent]) -> Result<Accepted> {
        send(self.ingest(Method::POST, "/v1/events").json(events)).await
    }

    /// `GET /v1/customers/{c}/quota`: may `customer` use `quantity` more of `meter`?
    pub async fn quota(
        &self,
        customer: &str,
        meter: Option<&str>,
        quantity: Option<f64>,
    ) -> Result<QuotaAnswer> {
        let mut q: Vec<(&str, String)> = Vec::new();
        if let Some(m) = meter {
            q.push(("meter", m.into()));
        }
        if let Some(n) = quantity {
            q.push(("quantity", n.to_string()));
        }
        let path = format!("/v1/customers/{}/quota", seg(customer));
        send(self.ingest(Method::GET, &path).query(&q)).await
    }

    /// `POST /v1/check`: many checks; with `track`, check-and-track in one round trip.
    pub async fn check(&self, request: &CheckRequest) -> Result<CheckResponse> {
        send(self.ingest(Method::POST, "/v1/check").json(request)).await
    }

    /// `GET /v1/customers/{c}/usage`.
    pub async fn usage(&self, customer: &str) -> Result<UsageBody> {
        let path = format!("/v1/customers/{}/usage", seg(customer));
        send(self.ingest(Method::GET, &path)).await
    }

    /// `GET /v1/customers/{c}/history`.
    pub async fn history(&self, customer: &str, query: &HistoryQuery) -> Result<HistoryBody> {
        let path = format!("/v1/customers/{}/history", seg(customer));
        send(self.ingest(Method::GET, &path).query(query)).await
    }

    /// `GET /v1/customers/{c}/entitlements`: what the plan version grants of every feature.
    pub async fn entitlements(&self, customer: &str) -> Result<EntitlementsAnswer> {
        let path = format!("/v1/customers/{}/entitlements", seg(customer));
        send(self.ingest(Method::GET, &path)).await
    }

    /// `GET /v1/customers/{c}/entitlements/{feature}`.
    pub async fn entitlement(&self, customer: &str, feature: &str) -> Result<Entitlement> {
        let path = format!(
            "/v1/customers/{}/entitlements/{}",
            seg(customer),
            seg(feature)
        );
        send(self.ingest(Method::GET, &path)).await
    }

    /// `POST /v1/customers/{c}/plan/migrate` (admin): to the plan's current version.
    pub async fn migrate_customer(&self, customer: &str, id: Option<&str>) -> Result<Migrated> {
        let path = format!("/v1/customers/{}/plan/migrate", seg(customer));
        let body = match id {
            Some(id) => serde_json::json!({ "id": id }),
            None => serde_json::json!({}),
        };
        send(self.ingest(Method::POST, &path).json(&body)).await
    }

    /// `POST /v1/plans/{plan}/migrate` (admin): every subscriber to the current version.
    pub async fn migrate_plan(
        &self,
        plan: &str,
        request: &MigratePlanRequest,
    ) -> Result<PlanMigrated> {
        let path = format!("/v1/plans/{}/migrate", seg(plan));
        send(self.ingest(Method::POST, &path).json(request)).await
    }

    /// `GET /v1/plans` (needs no key, but sends it).
    pub async fn plans(&self) -> Result<PlansBody> {
        send(self.ingest(Method::GET, "/v1/plans")).await
    }

    // ---- admin ----

    /// `POST /v1/customers/{c}/plan` (admin).
    pub async fn set_plan(&self, customer: &str, request: &PlanRequest) -> Result<ChangeAccepted> {
        let path = format!("/v1/customers/{}/plan", seg(customer));
        send(self.ingest(Method::POST, &path).json(request)).await
    }

    /// `PUT /v1/customers/{c}/limits/{meter}` (admin).
    pub async fn set_limit(
        &self,
        customer: &str,
        meter: &str,
        request: &LimitRequest,
    ) -> Result<ChangeAccepted> {
        let path = format!("/v1/customers/{}/limits/{}", seg(customer), seg(meter));
        send(self.ingest(Method::PUT, &path).json(request)).await
    }

    /// `DELETE /v1/customers/{c}/limits/{meter}` (admin).
    pub async fn delete_limit(&self, customer: &str, meter: &str) -> Result<ChangeAccepted> {
        let path = format!("/v1/customers/{}/limits/{}", seg(customer), seg(meter));
        send(self.ingest(Method::DELETE, &path)).await
    }

    /// `POST /v1/customers/{c}/grants` (admin).
    pub async fn grant(&self, customer: &str, request: &GrantRequest) -> Result<ChangeAccepted> {
        let path = format!("/v1/customers/{}/grants", seg(customer));
        send(self.ingest(Method::POST, &path).json(request)).await
    }

    /// `POST /v1/customers/{c}/dashboard-link` (admin): a signed sign-in link.
    pub async fn dashboard_link(
        &self,
        customer: &str,
        ttl_secs: Option<i64>,
    ) -> Result<DashboardLink> {
        let path = format!("/v1/customers/{}/dashboard-link", seg(customer));
        let body = serde_json::json!({ "ttl_secs": ttl_secs });
        let body = if ttl_secs.is_some() {
            body
        } else {
            serde_json::json!({})
        };
        send(self.ingest(Method::POST, &path).json(&body)).await
    }

    // ---- the seed application's API ----

    /// `GET /usage`: the flat usage summary.
    pub async fn seed_usage(&self) -> Result<SeedUsage> {
        send(self.ingest(Method::GET, "/usage")).await
    }

    /// `POST /usage/track`: check-and-track one call; at the limit [`Error::Api`] with
    /// [`ErrorCode::LimitReached`] (the usage is in [`LimitReached`] when decoded from the body).
    pub async fn track(&self, request: &TrackRequest) -> Result<Tracked> {
        send(self.ingest(Method::POST, "/usage/track").json(request)).await
    }

    /// `GET /usage/history?days=`.
    pub async fn seed_history(&self, days: Option<u32>) -> Result<SeedHistory> {
        let q: Vec<(&str, u32)> = days.map(|d| ("days", d)).into_iter().collect();
        send(self.ingest(Method::GET, "/usage/history").query(&q)).await
    }

    // ---- billing-sync ----

    /// `GET /subscription/status`.
    pub async fn subscription_status(&self) -> Result<SubscriptionStatus> {
        send(self.billing(Method::GET, "/subscription/status")?).await
    }

    /// `POST /subscription/create`: a Stripe Checkout Session for `plan`; send the customer to
    /// its `url`.
    pub async fn create_checkout(&self, plan: &str) -> Result<Checkout> {
        let body = CreateRequest { plan: plan.into() };
        send(
            self.billing(Method::POST, "/subscription/create")?
                .json(&body),
        )
        .await
    }

    /// `GET /subscription/portal`.
    pub async fn portal(&self) -> Result<Portal> {
        send(self.billing(Method::GET, "/subscription/portal")?).await
    }

    /// `POST /subscription/cancel`.
    pub async fn cancel(&self, immediately: bool) -> Result<Cancelled> {
        let body = CancelRequest { immediately };
        send(
            self.billing(Method::POST, "/subscription/cancel")?
                .json(&body),
        )
        .await
    }

    /// `GET /subscription/addons`: the add-ons the customer may buy, and its bought ones.
    pub async fn addons(&self) -> Result<AddonList> {
        send(self.billing(Method::GET, "/subscription/addons")?).await
    }

    /// `POST /subscription/addons`: a Stripe Checkout Session for `quantity` × `addon`; send the
    /// customer to its `url`.
    pub async fn buy_addon(&self, addon: &str, quantity: u32) -> Result<AddonCheckout> {
        let body = serde_json::json!({"addon": addon, "quantity": quantity});
        send(
            self.billing(Method::POST, "/subscription/addons")?
                .json(&body),
        )
        .await
    }

    /// `GET /v1/customers/{c}/invoice-preview` (billing-sync).
    pub async fn invoice_preview(&self, customer: &str) -> Result<InvoicePreview> {
        let path = format!("/v1/customers/{}/invoice-preview", seg(customer));
        send(self.billing(Method::GET, &path)?).await
    }
}

/// A path segment, percent-encoded.
fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Sends and decodes a 2xx as `T`, anything else as [`Error::Api`].
pub(crate) async fn send<T: DeserializeOwned>(request: RequestBuilder) -> Result<T> {
    let response = request.send().await?;
    let status = response.status();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let bytes = response.bytes().await?;
    if status.is_success() {
        return serde_json::from_slice(&bytes).map_err(|e| Error::Decode {
            status: status.as_u16(),
            message: e.to_string(),
        });
    }
    Err(api_error(status, &bytes, retry_after))
}

/// The typed error of an error answer; a body without `error.code` (a proxy's HTML page) is a
/// [`Error::Decode`] that still carries the status.
pub(crate) fn api_error(status: StatusCode, body: &[u8], retry_after: Option<u64>) -> Error {
    #[derive(serde::Deserialize)]
    struct AnyError {
        error: schemas::api::ErrorDetail,
    }
    match serde_json::from_slice::<AnyError>(body) {
        Ok(e) => Error::Api {
            status: status.as_u16(),
            code: ErrorCode::parse(&e.error.code),
            detail: Box::new(e.error),
            retry_after,
        },
        Err(_) => Error::Decode {
            status: status.as_u16(),
            message: format!(
                "no error body: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            ),
        },
    }
}
