// The public API's request and answer bodies, field for field as the services send them
// (docs/api.md; the Rust `client` crate's `types` module is the same list). The node tests decode
// real answers against these field lists, so a renamed or added field fails them.

/** One field problem of a refused request. */
export interface FieldError { index: number; field: string; code: string; reason: string }

/** The body of every error answer: `{"error": {...}}`. */
export interface ErrorDetail { code: string; message: string; request_id?: string; details?: FieldError[] }
export interface ErrorBody { error: ErrorDetail }

/** A CloudEvents 1.0 usage event for `POST /v1/events`. */
export interface UsageEvent {
  id: string;
  type: string;
  subject: string;
  specversion?: '1.0';
  source?: string;
  time?: string;
  data?: Record<string, unknown>;
  tenant?: string;
}
export interface Accepted { accepted: number }

export interface QuotaAnswer {
  customer: string; meter: string; allowed: boolean; used: number;
  limit: number | null; remaining: number | null; percent: number | null; warning: boolean;
  period_start: string; period_end: string; plan: string; status: string;
  reason?: 'limit_reached' | 'unknown_customer';
  /** On a plan that lets usage run over: the units over the limit after this call (billed). */
  overage?: number;
}
export interface CheckItem {
  customer: string; meter?: string; quantity?: number; endpoint?: string; id?: string;
  data?: Record<string, unknown>;
  /** A feature the call needs: refused with `feature_not_in_plan` without it. */
  feature?: string;
}
/** The cheapest plan that has a missing feature. */
export interface UpgradeHint { plan: string; name: string; price_cents: number; currency: string; version: string }
/** What the customer's plan version grants of one feature. */
export interface Entitlement {
  feature: string; name: string; kind: 'boolean' | 'metered' | 'config'; has_access: boolean;
  label: string | null; value?: string; meter?: string; limit?: number | null; used?: number;
  remaining?: number | null; reason?: string; upgrade?: UpgradeHint;
}
export interface EntitlementsAnswer {
  customer: string; plan: string; plan_name: string; plan_version: string; current_version: string;
  status: string; entitlements: Entitlement[];
}
export interface Migrated {
  customer: string; plan: string; from_version: string | null; to_version: string; migrated: boolean;
  event_id?: string; quota: QuotaAnswer[];
}
export interface PlanMigrated {
  plan: string; to_version: string; dry_run: boolean;
  migrated: { customer: string; from_version: string | null }[]; unchanged: number;
}
export interface CheckRequest { track?: boolean; checks: CheckItem[] }
export interface CheckResult extends QuotaAnswer { tracked: boolean; event_id?: string; feature?: string; upgrade?: UpgradeHint }
export interface CheckResponse { results: CheckResult[] }

export interface Projection {
  projected_used: number; projected_percent: number | null; projected_cost_cents: number;
  /** What this meter's usage so far costs by the plan's usage price (cents). */
  usage_cost_cents: number;
  currency: string; recommended_plan: string | null;
}
/** An enterprise contract in effect. */
export interface ContractSummary { id: string; starts_at: string; ends_at: string | null }
/** Extra quantity of one meter. */
export interface AddonGrant { meter: string; quantity: number }
/** A bought add-on that counts now. */
export interface AddonSummary {
  purchase: string; addon: string; name: string; billing: 'one_time' | 'recurring'; quantity: number;
  grant?: AddonGrant; features?: string[]; config?: Record<string, string>;
  bought_at: string; expires_at: string | null;
}
export interface PlanSummary {
  key: string | null; name: string | null; price_cents: number | null; currency: string | null;
  status: string; cancel_at_period_end: boolean;
  /** `block` (refused at the limit) or `overage` (usage runs over, billed). */
  on_limit: 'block' | 'overage';
  /** The period so far: price plus usage priced by the usage prices (cents). */
  cost_to_date_cents: number;
  contract: ContractSummary | null;
  addons: AddonSummary[];
}
/** An add-on of the catalog as the customer sees it. */
export interface OfferedAddon {
  key: string; name: string; price_cents: number; currency: string; billing: 'one_time' | 'recurring';
  grant: AddonGrant | null; features: string[]; config: Record<string, string>; max_quantity: number;
  purchasable: boolean; reason: 'addon_not_in_plan' | 'addon_active' | 'addon_not_purchasable' | null;
}
export interface AddonList { customer: string; plan: string; available: OfferedAddon[]; bought: AddonSummary[] }
export interface AddonCheckout { url: string; session_id: string; addon: string; quantity: number; stripe_customer_id: string }
export interface MeterUsage extends QuotaAnswer { by_endpoint: Record<string, number>; projection: Projection }
export interface UsageBody {
  customer: string; known: boolean; plan: PlanSummary; period_start: string; period_end: string;
  warn_percent: number; meters: MeterUsage[];
}
export interface HistoryQuery {
  from?: string; to?: string; granularity?: 'hour' | 'day' | 'month'; group_by?: 'endpoint'; meter?: string;
}
export interface Point { bucket: string; endpoint?: string; events: number; quantity: number }
export interface HistoryBody { customer: string; granularity: string; from: string; to: string; points: Point[] }

export interface PlanRequest {
  plan: string; status?: string; period_start?: string; period_end?: string;
  cancel_at_period_end?: boolean; id?: string;
}
export interface LimitRequest { limit: number | null; id?: string }
export interface GrantRequest { meter?: string; quantity: number; expires_at?: string; id?: string }
export interface ChangeAccepted { event_id: string; quota: QuotaAnswer[] }

export interface PlanOffer {
  key: string; name: string; price_cents: number; currency: string; limit: number | null;
  features: string[]; default: boolean;
  /** The current version's id (subscribers keep theirs until migrated). */
  version: string;
  on_limit: 'block' | 'overage';
}
export interface PlansBody {
  meter: { key: string; name: string }; warn_percent: number; default_plan: string; plans: PlanOffer[];
}
export interface DashboardLink { customer: string; link: string; path: string; url: string | null; expires_at: string }

/** `GET /usage`: the seed application's flat usage summary. */
export interface SeedUsage {
  customer: string; plan: string | null; plan_name: string | null; status: string;
  cancel_at_period_end: boolean; used: number; limit: number | null; remaining: number | null;
  percent: number | null; warning: boolean; blocked: boolean; period_start: string; period_end: string;
  by_endpoint: Record<string, number>; projection: Projection; features: Entitlement[];
}
export interface TrackRequest { endpoint: string; quantity?: number; id?: string }
export interface TrackUsage {
  customer: string; plan: string; used: number; limit: number | null; remaining: number | null;
  percent: number | null; warning: boolean; blocked: boolean; period_start: string; period_end: string;
}
export interface Tracked { tracked: true; endpoint: string; event_id: string | null; usage: TrackUsage }
export interface DayUsage { date: string; total: number; by_endpoint: Record<string, number> }
export interface SeedHistory { customer: string; days: number; history: DayUsage[] }

/** billing-sync's `GET /subscription/status`. */
export interface SubscriptionStatus {
  customer: string; plan: string; subscribed_plan?: string; status: string;
  subscription_id: string | null; stripe_customer_id: string | null;
  current_period_start: string | null; current_period_end: string | null;
  cancel_at_period_end: boolean; payment_failed_at: string | null; downgraded: boolean;
}
export interface Checkout {
  url: string; session_id: string; plan: string; stripe_customer_id: string;
  /** The enterprise contract bought, when one is in effect. */
  contract?: string;
}
export interface Portal { url: string; stripe_customer_id: string }
export interface Cancelled {
  subscription_id: string; status: string; cancel_at_period_end: boolean;
  current_period_end: string | null; canceled_now: boolean;
}
export interface PreviewLine {
  kind: 'plan' | 'usage' | 'other'; description: string | null; price: string | null; plan?: string;
  meter?: string; quantity: number | null; amount: number; period_start: string; period_end: string;
}
export interface InvoicePreview {
  customer: string; upcoming: boolean; reason?: string; message?: string; plan: string;
  subscription_id: string | null; currency: string | null; amount_due: number | null;
  subtotal: number | null; total: number | null; period_start: string | null; period_end: string | null;
  next_payment_attempt: string | null; lines: PreviewLine[];
}
