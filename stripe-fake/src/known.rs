//! The parameters each modelled endpoint takes, from Stripe's API reference
//! (<https://docs.stripe.com/api>): any other top-level parameter is refused as Stripe refuses it, a
//! 400 `parameter_unknown` "Received unknown parameter: …" naming it
//! (<https://docs.stripe.com/error-codes#parameter-unknown>). Nested keys are not checked.

use serde_json::Value;

const CUSTOMER: &[&str] = &[
    "address",
    "balance",
    "cash_balance",
    "description",
    "email",
    "expand",
    "invoice_prefix",
    "invoice_settings",
    "metadata",
    "name",
    "next_invoice_sequence",
    "payment_method",
    "phone",
    "preferred_locales",
    "shipping",
    "source",
    "tax",
    "tax_exempt",
    "tax_id_data",
    "test_clock",
    "validate",
];
const PRODUCT: &[&str] = &[
    "active",
    "default_price_data",
    "description",
    "expand",
    "id",
    "images",
    "marketing_features",
    "metadata",
    "name",
    "package_dimensions",
    "shippable",
    "statement_descriptor",
    "tax_code",
    "type",
    "unit_label",
    "url",
];
const PRODUCT_UPDATE: &[&str] = &[
    "active",
    "default_price",
    "description",
    "expand",
    "images",
    "marketing_features",
    "metadata",
    "name",
    "package_dimensions",
    "shippable",
    "statement_descriptor",
    "tax_code",
    "unit_label",
    "url",
];
const PRICE: &[&str] = &[
    "active",
    "billing_scheme",
    "currency",
    "currency_options",
    "custom_unit_amount",
    "expand",
    "lookup_key",
    "metadata",
    "nickname",
    "product",
    "product_data",
    "recurring",
    "tax_behavior",
    "tiers",
    "tiers_mode",
    "transfer_lookup_key",
    "transform_quantity",
    "unit_amount",
    "unit_amount_decimal",
];
const PRICE_UPDATE: &[&str] = &[
    "active",
    "currency_options",
    "expand",
    "lookup_key",
    "metadata",
    "nickname",
    "tax_behavior",
    "transfer_lookup_key",
];
const METER: &[&str] = &[
    "customer_mapping",
    "default_aggregation",
    "display_name",
    "event_name",
    "event_time_window",
    "expand",
    "value_settings",
];
const METER_EVENT: &[&str] = &["event_name", "expand", "identifier", "payload", "timestamp"];
const METER_EVENT_ADJUSTMENT: &[&str] = &["cancel", "event_name", "expand", "type"];
const SUBSCRIPTION: &[&str] = &[
    "add_invoice_items",
    "application_fee_percent",
    "automatic_tax",
    "backdate_start_date",
    "billing_cycle_anchor",
    "billing_cycle_anchor_config",
    "billing_mode",
    "billing_thresholds",
    "cancel_at",
    "cancel_at_period_end",
    "collection_method",
    "currency",
    "customer",
    "days_until_due",
    "default_payment_method",
    "default_source",
    "default_tax_rates",
    "description",
    "discounts",
    "expand",
    "invoice_settings",
    "items",
    "metadata",
    "off_session",
    "on_behalf_of",
    "payment_behavior",
    "payment_settings",
    "pending_invoice_item_interval",
    "proration_behavior",
    "transfer_data",
    "trial_end",
    "trial_from_plan",
    "trial_period_days",
    "trial_settings",
];
const SUBSCRIPTION_UPDATE: &[&str] = &[
    "add_invoice_items",
    "application_fee_percent",
    "automatic_tax",
    "billing_cycle_anchor",
    "billing_thresholds",
    "cancel_at",
    "cancel_at_period_end",
    "cancellation_details",
    "collection_method",
    "days_until_due",
    "default_payment_method",
    "default_source",
    "default_tax_rates",
    "description",
    "discounts",
    "expand",
    "invoice_settings",
    "items",
    "metadata",
    "off_session",
    "on_behalf_of",
    "pause_collection",
    "payment_behavior",
    "payment_settings",
    "pending_invoice_item_interval",
    "proration_behavior",
    "proration_date",
    "transfer_data",
    "trial_end",
    "trial_from_plan",
    "trial_settings",
];
const SUBSCRIPTION_CANCEL: &[&str] = &["cancellation_details", "expand", "invoice_now", "prorate"];
const CHECKOUT_SESSION: &[&str] = &[
    "adaptive_pricing",
    "after_expiration",
    "allow_promotion_codes",
    "automatic_tax",
    "billing_address_collection",
    "branding_settings",
    "cancel_url",
    "client_reference_id",
    "consent_collection",
    "currency",
    "custom_fields",
    "custom_text",
    "customer",
    "customer_creation",
    "customer_email",
    "customer_update",
    "discounts",
    "excluded_payment_method_types",
    "expand",
    "expires_at",
    "invoice_creation",
    "line_items",
    "locale",
    "metadata",
    "mode",
    "name_collection",
    "optional_items",
    "origin_context",
    "payment_intent_data",
    "payment_method_collection",
    "payment_method_configuration",
    "payment_method_data",
    "payment_method_options",
    "payment_method_types",
    "permissions",
    "phone_number_collection",
    "redirect_on_completion",
    "return_url",
    "saved_payment_method_options",
    "setup_intent_data",
    "shipping_address_collection",
    "shipping_options",
    "submit_type",
    "subscription_data",
    "success_url",
    "tax_id_collection",
    "ui_mode",
    "wallet_options",
];
const PORTAL_SESSION: &[&str] = &[
    "configuration",
    "customer",
    "expand",
    "flow_data",
    "locale",
    "on_behalf_of",
    "return_url",
];
const REFUND: &[&str] = &[
    "amount",
    "charge",
    "currency",
    "customer",
    "expand",
    "instructions_email",
    "metadata",
    "origin",
    "payment_intent",
    "reason",
    "refund_application_fee",
    "reverse_transfer",
];
const INVOICE_PREVIEW: &[&str] = &[
    "automatic_tax",
    "currency",
    "customer",
    "customer_details",
    "discounts",
    "expand",
    "invoice_items",
    "issuer",
    "on_behalf_of",
    "preview_mode",
    "schedule",
    "schedule_details",
    "subscription",
    "subscription_details",
];
const TEST_CLOCK: &[&str] = &["expand", "frozen_time", "name"];
const TEST_CLOCK_ADVANCE: &[&str] = &["expand", "frozen_time"];
const SUMMARIES: &[&str] = &[
    "customer",
    "end_time",
    "ending_before",
    "expand",
    "limit",
    "start_time",
    "starting_after",
    "value_grouping_window",
];

/// The parameters `method` on `segments` takes, when the fake checks them.
fn known(method: &str, segments: &[&str]) -> Option<&'static [&'static str]> {
    Some(match (method, segments) {
        ("POST", ["customers"]) => CUSTOMER,
        ("POST", ["products"]) => PRODUCT,
        ("POST", ["products", _]) => PRODUCT_UPDATE,
        ("POST", ["prices"]) => PRICE,
        ("POST", ["prices", _]) => PRICE_UPDATE,
        ("POST", ["billing", "meters"]) => METER,
        ("POST", ["billing", "meter_events"]) => METER_EVENT,
        ("POST", ["billing", "meter_event_adjustments"]) => METER_EVENT_ADJUSTMENT,
        ("POST", ["subscriptions"]) => SUBSCRIPTION,
        ("POST", ["subscriptions", _]) => SUBSCRIPTION_UPDATE,
        ("DELETE", ["subscriptions", _]) => SUBSCRIPTION_CANCEL,
        ("POST", ["checkout", "sessions"]) => CHECKOUT_SESSION,
        ("POST", ["billing_portal", "sessions"]) => PORTAL_SESSION,
        ("POST", ["refunds"]) => REFUND,
        ("POST", ["invoices", "create_preview"]) => INVOICE_PREVIEW,
        ("POST", ["test_helpers", "test_clocks"]) => TEST_CLOCK,
        ("POST", ["test_helpers", "test_clocks", _, "advance"]) => TEST_CLOCK_ADVANCE,
        ("GET", ["billing", "meters", _, "event_summaries"]) => SUMMARIES,
        _ => return None,
    })
}

/// The first parameter of `params` that `method` on `segments` does not take.
pub(crate) fn unknown(method: &str, segments: &[&str], params: &Value) -> Option<String> {
    let allowed = known(method, segments)?;
    params
        .as_object()?
        .keys()
        .find(|k| !allowed.contains(&k.as_str()))
        .cloned()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn unknown_top_level_parameters_are_named() {
        let p = json!({"event_name": "x", "payload": {"value": "1"}, "colour": "red"});
        assert_eq!(
            unknown("POST", &["billing", "meter_events"], &p).as_deref(),
            Some("colour")
        );
        let ok = json!({"event_name": "x", "payload": {"anything": "1"}});
        assert_eq!(unknown("POST", &["billing", "meter_events"], &ok), None);
        // Endpoints the fake does not check take anything.
        assert_eq!(unknown("GET", &["customers"], &p), None);
    }
}
