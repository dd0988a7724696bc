//! Enterprise contracts: an admin sets a customer's own price (a Stripe price created for it, or
//! an existing one), limits, features, usage prices and time span; billing-sync checks it against
//! the catalog and the customer's other contracts and produces it on `subscription.events`, where
//! the quota view, the history and checkout read it back.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use schemas::contract::Contract;
use schemas::entitlements::FeatureKind;
use schemas::plan_version::PlanTerms;
use schemas::pricing::{OnLimit, UsagePrice};
use schemas::quota::{Change, PlanState};
use serde::{Deserialize, Serialize};
use stripe_product::price::{CreatePrice, CreatePriceProductData, CreatePriceRecurring};
use stripe_product::price::{CreatePriceRecurringInterval, RetrievePrice};
use time::OffsetDateTime;
use utoipa::ToSchema;

use super::Billing;
use super::observed::short_hash;
use crate::Result;

/// What an admin asks for (`PUT /admin/customers/{customer}/contract`).
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ContractSpec {
    /// Contract id (1-64 of `[A-Za-z0-9_.-]`); the same id again replaces the contract. Default:
    /// one derived from the customer and the start.
    #[serde(default)]
    pub id: Option<String>,
    /// The catalog plan it is sold as (its name, and the plan Stripe's subscription maps to).
    pub plan: String,
    /// The contract's price per month in cents: billing-sync creates a Stripe price for it.
    #[serde(default)]
    pub price_cents: Option<u64>,
    /// Or an existing Stripe price (`price_...`) the customer pays.
    #[serde(default)]
    pub stripe_price: Option<String>,
    /// ISO currency of `price_cents` (default: the plan's).
    #[serde(default)]
    pub currency: Option<String>,
    /// Limit per meter; absent: the plan's limits. A meter without an entry is unlimited.
    #[serde(default)]
    pub limits: Option<BTreeMap<String, u64>>,
    /// Boolean features (keys, or `*`); absent: the plan's.
    #[serde(default)]
    pub features: Option<Vec<String>>,
    /// Config feature values; absent: the plan's.
    #[serde(default)]
    pub config: Option<BTreeMap<String, String>>,
    /// `block` or `overage`; absent: the plan's.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub on_limit: Option<OnLimit>,
    /// Usage prices per meter; absent: the plan's.
    #[serde(default)]
    pub usage_prices: Option<BTreeMap<String, UsagePrice>>,
    /// The Stripe metered price (with the same tiers) of each usage price, per meter.
    #[serde(default)]
    pub stripe_usage_prices: BTreeMap<String, String>,
    /// Start (RFC 3339); default now.
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub starts_at: Option<OffsetDateTime>,
    /// End, exclusive (RFC 3339); absent: open-ended.
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub ends_at: Option<OffsetDateTime>,
}

/// Why a contract is refused: a 400 (or 404) naming the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Machine-readable code (`unknown_feature`, `overlapping_contract`, `tiers_out_of_order`...).
    pub code: &'static str,
    /// The field (`features[2]`, `usage_prices.api_call.tiers`).
    pub field: String,
    /// Why.
    pub message: String,
}

fn refuse<T>(
    code: &'static str,
    field: impl Into<String>,
    message: impl Into<String>,
) -> Result<T, Refusal> {
    Err(Refusal {
        code,
        field: field.into(),
        message: message.into(),
    })
}

impl Billing {
    /// The customer's plan state folded from the stored `subscription.events` (contracts included).
    pub async fn plan_state(&self, tenant: &str, customer: &str) -> Result<PlanState> {
        let key = [(tenant.to_string(), customer.to_string())];
        let mut states =
            schemas::quota_store::plans(self.store.client(), &self.catalog, Some(&key)).await?;
        Ok(states
            .remove(&key[0])
            .unwrap_or_else(|| PlanState::initial(tenant, customer, &self.catalog)))
    }

    /// The contract in effect now, if any.
    pub async fn contract_of(&self, tenant: &str, customer: &str) -> Result<Option<Contract>> {
        let now = OffsetDateTime::now_utc();
        Ok(self
            .plan_state(tenant, customer)
            .await?
            .contract_at(now)
            .cloned())
    }

    /// Checks `spec`, creates its Stripe price when it gives `price_cents`, and produces the
    /// contract. The answer is the contract as stored, or why it is refused.
    pub async fn set_contract(
        &self,
        tenant: &str,
        customer: &str,
        spec: &ContractSpec,
    ) -> Result<Result<Contract, Refusal>> {
        let now = OffsetDateTime::now_utc();
        let starts_at = spec.starts_at.unwrap_or(now);
        // Checked without Stripe first; an existing price's amount is read from Stripe after.
        let mut terms = match contract_terms(&self.catalog, spec, spec.price_cents.unwrap_or(0)) {
            Ok(t) => t,
            Err(r) => return Ok(Err(r)),
        };
        if let Some(price) = &spec.stripe_price {
            let found = self
                .stripe
                .send("retrieve_price", &RetrievePrice::new(price.as_str()), None)
                .await;
            let found = match found {
                Ok(p) => p,
                Err(e)
                    if e.stripe_code()
                        .is_some_and(|(c, _)| c == "resource_missing") =>
                {
                    return Ok(refuse(
                        "unknown_price",
                        "stripe_price",
                        format!("Stripe has no price {price:?}"),
                    ));
                }
                Err(e) => return Err(e),
            };
            let cents = found
                .unit_amount
                .and_then(|a| u64::try_from(a).ok())
                .unwrap_or(0);
            terms = match contract_terms(&self.catalog, spec, cents) {
                Ok(t) => t,
                Err(r) => return Ok(Err(r)),
            };
        }
        let id = spec.id.clone().unwrap_or_else(|| {
            format!(
                "ct_{}",
                &short_hash(&format!("{tenant}/{customer}/{starts_at}"))[..12]
            )
        });
        if !schemas::token::is_token(&id, 64) {
            return Ok(refuse(
                "invalid_request",
                "id",
                format!("{id:?} must be 1-64 of [A-Za-z0-9_.-]"),
            ));
        }
        if let Some(end) = spec.ends_at
            && end <= starts_at
        {
            return Ok(refuse(
                "invalid_request",
                "ends_at",
                "ends_at must be after starts_at",
            ));
        }
        let mut contract = Contract {
            id: id.clone(),
            terms: Arc::new(terms),
            stripe_price: spec.stripe_price.clone(),
            stripe_usage_prices: spec.stripe_usage_prices.clone(),
            starts_at,
            ends_at: spec.ends_at,
        };
        let _guard = self.lock(tenant, customer).await;
        let state = self.plan_state(tenant, customer).await?;
        if let Some(other) = state
            .contracts
            .iter()
            .find(|c| c.id != id && c.overlaps(&contract))
        {
            return Ok(refuse(
                "overlapping_contract",
                "starts_at",
                format!(
                    "the customer's contract {} runs from {} to {}; contracts may not overlap",
                    other.id,
                    other.starts_at,
                    other
                        .ends_at
                        .map_or_else(|| "open end".to_string(), |e| e.to_string())
                ),
            ));
        }
        if let Some(cents) = spec.price_cents {
            contract.stripe_price = Some(
                self.contract_price(tenant, customer, &contract, cents)
                    .await?,
            );
        }
        let body = serde_json::to_string(&contract).unwrap_or_default();
        let event_id = format!("contract:{id}:{}", short_hash(&body));
        self.produce(
            tenant,
            customer,
            event_id,
            "admin",
            Change::Contract {
                contract: contract.clone(),
            },
        )
        .await?;
        self.until_stored(tenant, customer, |s| s.contracts.contains(&contract))
            .await?;
        Ok(Ok(contract))
    }

    /// Ends contract `id` now (a contract not started yet is removed).
    pub async fn end_contract(
        &self,
        tenant: &str,
        customer: &str,
        id: &str,
    ) -> Result<Result<Contract, Refusal>> {
        let now = OffsetDateTime::now_utc();
        let _guard = self.lock(tenant, customer).await;
        let state = self.plan_state(tenant, customer).await?;
        let Some(mut contract) = state.contracts.iter().find(|c| c.id == id).cloned() else {
            return Ok(refuse(
                "contract_not_found",
                "id",
                format!("the customer has no contract {id:?}"),
            ));
        };
        if contract.ends_at.is_some_and(|e| e <= now) {
            return Ok(refuse(
                "contract_ended",
                "id",
                format!("contract {id:?} has ended already"),
            ));
        }
        contract.ends_at = Some(now);
        let change = Change::ContractEnded {
            id: id.into(),
            at: now,
        };
        self.produce(
            tenant,
            customer,
            format!("contract_end:{id}"),
            "admin",
            change,
        )
        .await?;
        self.until_stored(tenant, customer, |s| {
            s.contracts
                .iter()
                .all(|c| c.id != id || c.ends_at.is_some_and(|e| e <= now))
        })
        .await?;
        Ok(Ok(contract))
    }

    /// Waits (up to 10 s) until the stored log shows what was produced, so that the admin's next
    /// request (a checkout, another contract) reads it: checkout and the overlap check read the
    /// contracts from ClickHouse, which the aggregator writes after the broker acknowledged.
    async fn until_stored(
        &self,
        tenant: &str,
        customer: &str,
        done: impl Fn(&PlanState) -> bool,
    ) -> Result<()> {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            if done(&self.plan_state(tenant, customer).await?) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(tenant, customer, "contract change not stored within 10 s");
                return Ok(());
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// Creates the contract's monthly Stripe price (its own product), keyed so that a retry of the
    /// same contract and amount gets the same price.
    async fn contract_price(
        &self,
        tenant: &str,
        customer: &str,
        contract: &Contract,
        cents: u64,
    ) -> Result<String> {
        let currency = contract
            .terms
            .currency
            .parse::<stripe_types::Currency>()
            .unwrap_or(stripe_types::Currency::USD);
        let meta = HashMap::from([
            ("tenant".to_string(), tenant.to_string()),
            ("customer".to_string(), customer.to_string()),
            ("contract".to_string(), contract.id.clone()),
        ]);
        let mut product = CreatePriceProductData::new(format!(
            "{} contract {} ({customer})",
            contract.terms.name, contract.id
        ));
        product.metadata = Some(meta.clone());
        let request = CreatePrice::new(currency)
            .unit_amount(i64::try_from(cents).unwrap_or(i64::MAX))
            .recurring(CreatePriceRecurring::new(
                CreatePriceRecurringInterval::Month,
            ))
            .product_data(product)
            .metadata(meta);
        let key = format!("contract_price:{tenant}/{customer}/{}/{cents}", contract.id);
        let price = self
            .stripe
            .send("create_price", &request, Some(&key))
            .await?;
        Ok(price.id.as_str().to_string())
    }
}

/// The contract's terms: the plan's, with what `spec` sets instead, checked against the catalog.
/// `price_cents` is the contract's flat price (`spec.price_cents`, or the existing Stripe price's).
pub fn contract_terms(
    catalog: &schemas::Catalog,
    spec: &ContractSpec,
    price_cents: u64,
) -> Result<PlanTerms, Refusal> {
    let Some(plan) = catalog.plan(&spec.plan) else {
        let known: Vec<&str> = catalog.plans.iter().map(|p| p.key.as_str()).collect();
        return refuse(
            "unknown_plan",
            "plan",
            format!("unknown plan {:?}; known: {known:?}", spec.plan),
        );
    };
    let base = plan.terms();
    match (spec.price_cents, &spec.stripe_price) {
        (Some(_), Some(_)) => {
            return refuse(
                "invalid_request",
                "price_cents",
                "give price_cents or stripe_price, not both",
            );
        }
        (None, None) => {
            return refuse(
                "invalid_request",
                "price_cents",
                "a contract needs its price: price_cents (a Stripe price is created) or stripe_price",
            );
        }
        (None, Some(p)) if !p.starts_with("price_") => {
            return refuse(
                "invalid_request",
                "stripe_price",
                format!("{p:?} is not a Stripe price id (price_...)"),
            );
        }
        _ => {}
    }
    let currency = spec
        .currency
        .clone()
        .unwrap_or_else(|| base.currency.clone())
        .to_lowercase();
    if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_lowercase()) {
        return refuse(
            "invalid_request",
            "currency",
            format!("{currency:?} is not an ISO currency code"),
        );
    }
    let limits = spec.limits.clone().unwrap_or_else(|| base.limits.clone());
    if let Some(m) = limits.keys().find(|m| catalog.meter(m).is_none()) {
        return refuse(
            "unknown_meter",
            format!("limits.{m}"),
            format!("unknown meter {m:?}"),
        );
    }
    let features = match &spec.features {
        None => base.features.clone(),
        Some(list) => {
            let mut out = Vec::new();
            for (i, key) in list.iter().enumerate() {
                if key == schemas::catalog::ALL_FEATURES {
                    out.extend(
                        catalog
                            .features
                            .iter()
                            .filter(|f| f.kind == FeatureKind::Boolean)
                            .map(|f| f.key.clone()),
                    );
                    continue;
                }
                match catalog.feature(key).map(|f| f.kind) {
                    Some(FeatureKind::Boolean) => out.push(key.clone()),
                    Some(_) => {
                        return refuse(
                            "invalid_request",
                            format!("features[{i}]"),
                            format!(
                                "{key:?} is not a boolean feature: metered features take limits, config features config"
                            ),
                        );
                    }
                    None => {
                        return refuse(
                            "unknown_feature",
                            format!("features[{i}]"),
                            format!("unknown feature {key:?}"),
                        );
                    }
                }
            }
            out
        }
    };
    let config = spec.config.clone().unwrap_or_else(|| base.config.clone());
    for (key, value) in &config {
        let Some(f) = catalog
            .feature(key)
            .filter(|f| f.kind == FeatureKind::Config)
        else {
            return refuse(
                "unknown_feature",
                format!("config.{key}"),
                format!("{key:?} is not a config feature"),
            );
        };
        if !f.values.iter().any(|v| &v.value == value) {
            let known: Vec<&str> = f.values.iter().map(|v| v.value.as_str()).collect();
            return refuse(
                "invalid_request",
                format!("config.{key}"),
                format!("{value:?} is not one of {known:?}"),
            );
        }
    }
    let usage_prices = spec
        .usage_prices
        .clone()
        .unwrap_or_else(|| base.usage_prices.clone());
    for (meter, price) in &usage_prices {
        let field = format!("usage_prices.{meter}");
        if catalog.meter(meter).is_none() {
            return refuse("unknown_meter", field, format!("unknown meter {meter:?}"));
        }
        if let Err(e) = price.validate(&field) {
            let message = e.to_string();
            let code = if message.contains("out of order") {
                "tiers_out_of_order"
            } else {
                "invalid_tiers"
            };
            return refuse(code, format!("{field}.tiers"), message);
        }
        if spec.usage_prices.is_some() && !spec.stripe_usage_prices.contains_key(meter) {
            return refuse(
                "invalid_request",
                format!("stripe_usage_prices.{meter}"),
                "a contract's usage price needs its Stripe metered price with the same tiers",
            );
        }
    }
    if let Some(m) = spec
        .stripe_usage_prices
        .keys()
        .find(|m| !usage_prices.contains_key(*m))
    {
        return refuse(
            "invalid_request",
            format!("stripe_usage_prices.{m}"),
            format!("meter {m:?} has no usage price in the contract"),
        );
    }
    let on_limit = spec.on_limit.unwrap_or(base.on_limit);
    if on_limit == OnLimit::Overage
        && let Some(m) = limits.keys().find(|m| !usage_prices.contains_key(*m))
    {
        return refuse(
            "invalid_request",
            "on_limit",
            format!(
                "overage needs a usage price for the limited meter {m:?}, or the units over the limit would be free"
            ),
        );
    }
    Ok(PlanTerms::new(
        &plan.key,
        &plan.name,
        price_cents,
        &currency,
        limits,
        features,
        config,
    )
    .with_usage(on_limit, usage_prices))
}
