//! Customers, products, prices and meters: create, retrieve, list, and the catalog's seed.

use serde_json::{Value, json};

use super::State;
use super::params::{int_param, metadata, page, req_str, str_param};
use crate::error::{ApiErr, ApiResult};
use crate::objects::{self, Meter, Price, Recurring};

/// Seconds before a new customer shows in search results.
pub(crate) const SEARCH_LAG: i64 = 60;

impl State {
    /// `POST /v1/customers`.
    pub(crate) fn create_customer(&mut self, p: &Value) -> ApiResult {
        let id = self.id("cus");
        let mut c = objects::customer(
            &id,
            self.now(),
            str_param(p, "email"),
            str_param(p, "name"),
            &metadata(p, "metadata"),
        );
        if let Some(clock) = str_param(p, "test_clock") {
            if !self.test_clocks.contains_key(clock) {
                return Err(ApiErr::missing(
                    "test_helpers.test_clock",
                    clock,
                    Some("test_clock"),
                ));
            }
            c["test_clock"] = json!(clock);
        }
        self.customers.insert(id, c.clone());
        Ok(c)
    }

    /// `GET /v1/customers/search`: `metadata['key']:'value'` clauses joined by ` AND ` (the part of
    /// Stripe's query language billing-sync uses). Search is eventually consistent: "Don't use
    /// search in read-after-write flows ... data is searchable in less than a minute"
    /// (<https://docs.stripe.com/search#data-freshness>); customers younger than
    /// [`SEARCH_LAG`] seconds are not found yet.
    pub(crate) fn search_customers(&self, p: &Value) -> ApiResult {
        let query = req_str(p, "query")?;
        let mut clauses = Vec::new();
        for clause in query.split(" AND ") {
            let parsed = clause
                .trim()
                .strip_prefix("metadata['")
                .and_then(|r| r.split_once("']:'"))
                .and_then(|(k, v)| v.strip_suffix('\'').map(|v| (k.to_string(), v.to_string())));
            match parsed {
                Some(kv) => clauses.push(kv),
                None => {
                    return Err(ApiErr::invalid(
                        "parameter_invalid_string",
                        format!("The fake searches by metadata['key']:'value' only, not: {clause}"),
                        Some("query"),
                    ));
                }
            }
        }
        let visible = self.now() - SEARCH_LAG;
        let data: Vec<Value> = self
            .customers
            .values()
            .filter(|c| c["created"].as_i64().is_some_and(|t| t <= visible))
            .filter(|c| clauses.iter().all(|(k, v)| c["metadata"][k] == v.as_str()))
            .cloned()
            .collect();
        Ok(serde_json::json!({
            "object": "search_result", "data": data, "has_more": false, "next_page": null,
            "url": "/v1/customers/search",
        }))
    }

    /// `DELETE /v1/customers/{id}`: "Permanently deletes a customer. It cannot be undone. Also
    /// immediately cancels any active subscriptions on the customer."
    /// (<https://docs.stripe.com/api/customers/delete>).
    pub(crate) fn delete_customer(&mut self, id: &str) -> Result<(Value, Vec<Value>), ApiErr> {
        if self.customers.remove(id).is_none() {
            return Err(ApiErr::missing("customer", id, Some("id")));
        }
        let live: Vec<String> = self
            .subscriptions
            .values()
            .filter(|s| s.customer == id && !s.is_terminal())
            .map(|s| s.id.clone())
            .collect();
        let mut events = Vec::new();
        for sub in live {
            events.extend(self.cancel_subscription(&sub)?.1);
        }
        Ok((
            json!({"id": id, "object": "customer", "deleted": true}),
            events,
        ))
    }

    /// `POST /v1/prices/{id}` and `POST /v1/products/{id}`: `active=false` archives (neither can be
    /// deleted once used); other updates are not modelled.
    pub(crate) fn set_active(&mut self, kind: &str, id: &str, p: &Value) -> ApiResult {
        let active = super::params::bool_param(p, "active")?;
        match kind {
            "prices" => {
                let price = self
                    .prices
                    .get_mut(id)
                    .ok_or_else(|| ApiErr::missing("price", id, Some("id")))?;
                if let Some(a) = active {
                    price.active = a;
                }
                Ok(price.json())
            }
            _ => {
                let product = self
                    .products
                    .get_mut(id)
                    .ok_or_else(|| ApiErr::missing("product", id, Some("id")))?;
                if let Some(a) = active {
                    product["active"] = json!(a);
                }
                Ok(product.clone())
            }
        }
    }

    /// `POST /v1/billing/meters/{id}/deactivate`: meters cannot be deleted; a deactivated one
    /// takes no more events.
    pub(crate) fn deactivate_meter(&mut self, id: &str) -> ApiResult {
        let meter = self
            .meters
            .get_mut(id)
            .ok_or_else(|| ApiErr::missing("billing meter", id, Some("id")))?;
        meter.status = "inactive".into();
        Ok(meter.json())
    }

    /// `GET /v1/customers/{id}`.
    pub(crate) fn customer(&self, id: &str) -> ApiResult {
        self.customers
            .get(id)
            .cloned()
            .ok_or_else(|| ApiErr::missing("customer", id, Some("id")))
    }

    /// `GET /v1/customers`.
    pub(crate) fn list_customers(&self, p: &Value) -> ApiResult {
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
    pub(crate) fn create_product(&mut self, p: &Value) -> ApiResult {
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
    pub(crate) fn product(&self, id: &str) -> ApiResult {
        self.products
            .get(id)
            .cloned()
            .ok_or_else(|| ApiErr::missing("product", id, Some("id")))
    }

    /// `POST /v1/prices`.
    pub(crate) fn create_price(&mut self, p: &Value) -> ApiResult {
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
            active: true,
            tiers: tiers(p)?,
        };
        let json = price.json();
        self.prices.insert(price.id.clone(), price);
        Ok(json)
    }

    /// `GET /v1/prices/{id}`.
    pub(crate) fn price(&self, id: &str) -> ApiResult {
        self.prices
            .get(id)
            .map(Price::json)
            .ok_or_else(|| ApiErr::missing("price", id, Some("price")))
    }

    /// `GET /v1/prices`.
    pub(crate) fn list_prices(&self, p: &Value) -> ApiResult {
        let mut items: Vec<&Price> = self.prices.values().collect();
        items.sort_by(|a, b| b.created.cmp(&a.created).then(b.id.cmp(&a.id)));
        page(
            items.into_iter().map(Price::json).collect(),
            p,
            "/v1/prices",
        )
    }

    /// `POST /v1/billing/meters`.
    pub(crate) fn create_meter(&mut self, p: &Value) -> ApiResult {
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
    pub(crate) fn meter(&self, id: &str) -> ApiResult {
        self.meters
            .get(id)
            .map(Meter::json)
            .ok_or_else(|| ApiErr::missing("billing meter", id, Some("id")))
    }

    /// `GET /v1/billing/meters`.
    pub(crate) fn list_meters(&self, p: &Value) -> ApiResult {
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
}

/// The tiers of `POST /v1/prices` with `billing_scheme=tiered`
/// (<https://docs.stripe.com/api/prices/create#create_price-tiers>): `tiers_mode` `volume` or
/// `graduated`, at least one tier, each with `up_to` (a whole number, strictly increasing, or `inf`
/// for the last one, which must be `inf`) and `unit_amount` and/or `flat_amount`.
fn tiers(p: &Value) -> Result<Option<(String, Vec<objects::Tier>)>, ApiErr> {
    if str_param(p, "billing_scheme") != Some("tiered") {
        if p.get("tiers").is_some() || p.get("tiers_mode").is_some() {
            return Err(ApiErr::invalid(
                "parameter_invalid_string",
                "tiers and tiers_mode require billing_scheme=tiered.",
                Some("billing_scheme"),
            ));
        }
        return Ok(None);
    }
    let mode = req_str(p, "tiers_mode")?;
    if !["volume", "graduated"].contains(&mode) {
        return Err(ApiErr::invalid(
            "parameter_invalid_string",
            format!("Invalid tiers_mode: must be one of graduated or volume, not {mode}"),
            Some("tiers_mode"),
        ));
    }
    let given = p
        .get("tiers")
        .and_then(Value::as_array)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiErr::param_missing("tiers"))?;
    let mut out = Vec::new();
    let mut last: Option<u64> = None;
    for (i, t) in given.iter().enumerate() {
        let name = format!("tiers[{i}][up_to]");
        let up_to = match str_param(t, "up_to") {
            Some("inf") => None,
            Some(v) => Some(v.parse::<u64>().map_err(|_| {
                ApiErr::invalid(
                    "parameter_invalid_integer",
                    format!("Invalid {name}: must be a whole number or inf"),
                    Some(&name),
                )
            })?),
            None => return Err(ApiErr::param_missing(&name)),
        };
        if out.iter().any(|x: &objects::Tier| x.up_to.is_none()) {
            return Err(ApiErr::invalid(
                "parameter_invalid_integer",
                "Only the last tier may have up_to=inf.",
                Some(&name),
            ));
        }
        if let (Some(prev), Some(u)) = (last, up_to)
            && u <= prev
        {
            return Err(ApiErr::invalid(
                "parameter_invalid_integer",
                format!("Tiers must be in increasing order of up_to: {u} after {prev}."),
                Some(&name),
            ));
        }
        last = up_to.or(last);
        let unit = int_param(t, "unit_amount")?;
        let flat = int_param(t, "flat_amount")?;
        if unit.is_none() && flat.is_none() {
            return Err(ApiErr::param_missing(&format!("tiers[{i}][unit_amount]")));
        }
        out.push(objects::Tier {
            up_to,
            unit_amount: unit.unwrap_or(0),
            flat_amount: flat.unwrap_or(0),
        });
    }
    if out.last().is_some_and(|t| t.up_to.is_some()) {
        return Err(ApiErr::invalid(
            "parameter_invalid_integer",
            "The last tier must have up_to=inf.",
            Some(&format!("tiers[{}][up_to]", out.len() - 1)),
        ));
    }
    Ok(Some((mode.to_string(), out)))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::objects::{Price, Tier};

    fn price(mode: &str, tiers: Vec<Tier>) -> Price {
        Price {
            id: "price_t".into(),
            product: "prod_t".into(),
            unit_amount: 0,
            currency: "usd".into(),
            recurring: None,
            lookup_key: None,
            nickname: None,
            metadata: json!({}),
            created: 0,
            active: true,
            tiers: Some((mode.into(), tiers)),
        }
    }

    fn tier(up_to: Option<u64>, unit_amount: i64, flat_amount: i64) -> Tier {
        Tier {
            up_to,
            unit_amount,
            flat_amount,
        }
    }

    #[test]
    fn volume_and_graduated_tiers_price_as_stripe_documents() {
        // Stripe's examples: 1-5 units $7 each, 6-10 $6.50, 11+ $6 (in cents).
        let tiers = vec![
            tier(Some(5), 700, 0),
            tier(Some(10), 650, 0),
            tier(None, 600, 0),
        ];
        let volume = price("volume", tiers.clone());
        assert_eq!(volume.charge(0), 0);
        assert_eq!(volume.charge(5), 3_500);
        assert_eq!(volume.charge(6), 3_900);
        assert_eq!(volume.charge(11), 6_600);
        let graduated = price("graduated", tiers);
        assert_eq!(graduated.charge(5), 3_500);
        assert_eq!(graduated.charge(6), 3_500 + 650);
        assert_eq!(graduated.charge(11), 3_500 + 3_250 + 600);
        // Flat amounts: once per tier reached (graduated), the total's tier's (volume).
        let flat = vec![tier(Some(100), 0, 1_000), tier(None, 5, 2_000)];
        assert_eq!(
            price("graduated", flat.clone()).charge(150),
            1_000 + 2_000 + 250
        );
        assert_eq!(price("volume", flat).charge(150), 2_000 + 750);
    }

    #[test]
    fn tiers_out_of_order_or_without_inf_are_refused() {
        let p = |tiers: Value| json!({"billing_scheme": "tiered", "tiers_mode": "graduated", "tiers": tiers});
        let bad = [
            json!([{"up_to": "10", "unit_amount": "5"}, {"up_to": "5", "unit_amount": "4"}, {"up_to": "inf", "unit_amount": "3"}]),
            json!([{"up_to": "10", "unit_amount": "5"}]),
            json!([{"up_to": "inf", "unit_amount": "5"}, {"up_to": "inf", "unit_amount": "4"}]),
            json!([{"up_to": "inf"}]),
        ];
        for b in bad {
            assert!(tiers(&p(b.clone())).is_err(), "{b}");
        }
        let ok = tiers(&p(
            json!([{"up_to": "10", "unit_amount": "5"}, {"up_to": "inf", "flat_amount": "100"}]),
        ))
        .expect("valid")
        .expect("tiered");
        assert_eq!(ok.1.len(), 2);
        assert_eq!(tiers(&json!({"unit_amount": "5"})).expect("per unit"), None);
    }
}
