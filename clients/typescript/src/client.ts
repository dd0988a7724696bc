// MeteringClient: one method per route of the public API (the ingest's native and seed routes,
// billing-sync's subscription routes), over the platform's `fetch` and nothing else.

import { LimitReachedError, MeteringError } from './errors.js';
import type * as T from './types.js';

export interface MeteringClientOptions {
  /** The ingest, e.g. `http://127.0.0.1:8080`. */
  baseUrl: string;
  /** billing-sync, e.g. `http://127.0.0.1:8090` (the subscription routes). */
  billingUrl?: string;
  /** An API key or a dashboard session token (`mds_…`); a function is called per request. */
  apiKey: string | (() => string);
  /** For a tenant-wide key: the customer the seed and subscription routes act for. */
  customer?: string;
  /** Per-request timeout (default 10 s). */
  timeoutMs?: number;
  /** A `fetch` to use instead of the global one. */
  fetch?: typeof fetch;
}

type Query = Record<string, string | number | boolean | undefined>;

const seg = (s: string) => encodeURIComponent(s);

export class MeteringClient {
  readonly baseUrl: string;
  readonly billingUrl?: string;
  private readonly opts: MeteringClientOptions;

  constructor(opts: MeteringClientOptions) {
    if (!/^https?:\/\//.test(opts.baseUrl) && !opts.baseUrl.startsWith('/') && opts.baseUrl !== '') {
      throw new TypeError(`baseUrl ${JSON.stringify(opts.baseUrl)} is not http(s)`);
    }
    this.opts = opts;
    this.baseUrl = opts.baseUrl.replace(/\/+$/, '');
    this.billingUrl = opts.billingUrl?.replace(/\/+$/, '');
  }

  /** The same client acting for `customer` (seed and subscription routes). */
  forCustomer(customer: string): MeteringClient {
    return new MeteringClient({ ...this.opts, customer });
  }

  // ---- events and quotas ----
  /** `POST /v1/events`: resolves only once the broker has every event (202). */
  sendEvents(events: T.UsageEvent | T.UsageEvent[]): Promise<T.Accepted> {
    return this.call('POST', this.baseUrl, '/v1/events', { body: events });
  }
  /** `GET /v1/customers/{c}/quota`. */
  quota(customer: string, q: { meter?: string; quantity?: number } = {}): Promise<T.QuotaAnswer> {
    return this.call('GET', this.baseUrl, `/v1/customers/${seg(customer)}/quota`, { query: q });
  }
  /** `POST /v1/check` (with `track: true`: check-and-track). */
  check(request: T.CheckRequest): Promise<T.CheckResponse> {
    return this.call('POST', this.baseUrl, '/v1/check', { body: request });
  }
  /** `GET /v1/customers/{c}/usage`. */
  usage(customer: string): Promise<T.UsageBody> {
    return this.call('GET', this.baseUrl, `/v1/customers/${seg(customer)}/usage`);
  }
  /** `GET /v1/customers/{c}/history`. */
  history(customer: string, q: T.HistoryQuery = {}): Promise<T.HistoryBody> {
    return this.call('GET', this.baseUrl, `/v1/customers/${seg(customer)}/history`, { query: { ...q } });
  }
  /** `GET /v1/customers/{c}/entitlements`. */
  entitlements(customer: string): Promise<T.EntitlementsAnswer> {
    return this.call('GET', this.baseUrl, `/v1/customers/${seg(customer)}/entitlements`);
  }
  /** `GET /v1/customers/{c}/entitlements/{feature}`. */
  entitlement(customer: string, feature: string): Promise<T.Entitlement> {
    return this.call('GET', this.baseUrl, `/v1/customers/${seg(customer)}/entitlements/${seg(feature)}`);
  }
  /** `GET /v1/plans` (public). */
  plans(): Promise<T.PlansBody> {
    return this.call('GET', this.baseUrl, '/v1/plans', { auth: false });
  }

  // ---- admin ----
  setPlan(customer: string, r: T.PlanRequest): Promise<T.ChangeAccepted> {
    return this.call('POST', this.baseUrl, `/v1/customers/${seg(customer)}/plan`, { body: r });
  }
  setLimit(customer: string, meter: string, r: T.LimitRequest): Promise<T.ChangeAccepted> {
    return this.call('PUT', this.baseUrl, `/v1/customers/${seg(customer)}/limits/${seg(meter)}`, { body: r });
  }
  deleteLimit(customer: string, meter: string): Promise<T.ChangeAccepted> {
    return this.call('DELETE', this.baseUrl, `/v1/customers/${seg(customer)}/limits/${seg(meter)}`);
  }
  grant(customer: string, r: T.GrantRequest): Promise<T.ChangeAccepted> {
    return this.call('POST', this.baseUrl, `/v1/customers/${seg(customer)}/grants`, { body: r });
  }
  migrateCustomer(customer: string, id?: string): Promise<T.Migrated> {
    return this.call('POST', this.baseUrl, `/v1/customers/${seg(customer)}/plan/migrate`, { body: id ? { id } : {} });
  }
  migratePlan(plan: string, r: { from_version?: string; dry_run?: boolean } = {}): Promise<T.PlanMigrated> {
    return this.call('POST', this.baseUrl, `/v1/plans/${seg(plan)}/migrate`, { body: r });
  }
  dashboardLink(customer: string, ttlSecs?: number): Promise<T.DashboardLink> {
    const body = ttlSecs === undefined ? {} : { ttl_secs: ttlSecs };
    return this.call('POST', this.baseUrl, `/v1/customers/${seg(customer)}/dashboard-link`, { body });
  }

  // ---- the seed application's API ----
  /** `GET /usage`. */
  seedUsage(): Promise<T.SeedUsage> {
    return this.call('GET', this.baseUrl, '/usage');
  }
  /** `POST /usage/track`: check-and-track one call; LimitReachedError at the limit. */
  track(r: T.TrackRequest | string): Promise<T.Tracked> {
    const body = typeof r === 'string' ? { endpoint: r } : r;
    return this.call('POST', this.baseUrl, '/usage/track', { body });
  }
  /** `GET /usage/history?days=`. */
  seedHistory(days?: number): Promise<T.SeedHistory> {
    return this.call('GET', this.baseUrl, '/usage/history', { query: { days } });
  }

  // ---- billing-sync ----
  subscriptionStatus(): Promise<T.SubscriptionStatus> {
    return this.call('GET', this.billing(), '/subscription/status');
  }
  /** `POST /subscription/create`: a Stripe Checkout Session; send the customer to its `url`. */
  createCheckout(plan: string): Promise<T.Checkout> {
    return this.call('POST', this.billing(), '/subscription/create', { body: { plan } });
  }
  portal(): Promise<T.Portal> {
    return this.call('GET', this.billing(), '/subscription/portal');
  }
  cancel(immediately = false): Promise<T.Cancelled> {
    return this.call('POST', this.billing(), '/subscription/cancel', { body: { immediately } });
  }
  /** `GET /subscription/addons`: the add-ons the customer may buy, and its bought ones. */
  addons(): Promise<T.AddonList> {
    return this.call('GET', this.billing(), '/subscription/addons');
  }
  /** `POST /subscription/addons`: a Checkout Session for an add-on; send the customer to its `url`. */
  buyAddon(addon: string, quantity = 1): Promise<T.AddonCheckout> {
    return this.call('POST', this.billing(), '/subscription/addons', { body: { addon, quantity } });
  }
  invoicePreview(customer: string): Promise<T.InvoicePreview> {
    return this.call('GET', this.billing(), `/v1/customers/${seg(customer)}/invoice-preview`);
  }

  private billing(): string {
    if (this.billingUrl === undefined) {
      throw new MeteringError(0, { code: 'invalid_request', message: 'no billingUrl configured' });
    }
    return this.billingUrl;
  }

  private async call<R>(
    method: string,
    base: string,
    path: string,
    o: { body?: unknown; query?: Query; auth?: boolean } = {},
  ): Promise<R> {
    const qs = Object.entries(o.query ?? {})
      .filter(([, v]) => v !== undefined)
      .map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(String(v))}`)
      .join('&');
    const headers: Record<string, string> = { Accept: 'application/json' };
    if (o.auth !== false) {
      const key = typeof this.opts.apiKey === 'function' ? this.opts.apiKey() : this.opts.apiKey;
      headers.Authorization = `Bearer ${key}`;
    }
    if (this.opts.customer) headers['X-Customer-Id'] = this.opts.customer;
    if (o.body !== undefined) headers['Content-Type'] = 'application/json';
    const f = this.opts.fetch ?? globalThis.fetch;
    const timeout = this.opts.timeoutMs ?? 10_000;
    let res: Response;
    try {
      res = await f(`${base}${path}${qs ? `?${qs}` : ''}`, {
        method,
        headers,
        body: o.body === undefined ? undefined : JSON.stringify(o.body),
        signal: AbortSignal.timeout(timeout),
      });
    } catch (e) {
      const timedOut = e instanceof DOMException && (e.name === 'TimeoutError' || e.name === 'AbortError');
      throw new MeteringError(0, {
        code: timedOut ? 'timeout' : 'network_error',
        message: `${method} ${path}: ${e instanceof Error ? e.message : String(e)}`,
      });
    }
    const text = await res.text();
    let body: unknown = undefined;
    try {
      body = text ? JSON.parse(text) : undefined;
    } catch {
      body = undefined;
    }
    if (res.ok) {
      if (body === undefined) {
        throw new MeteringError(res.status, { code: 'unexpected_response', message: `${method} ${path}: no JSON body` });
      }
      return body as R;
    }
    const detail = (body as { error?: T.ErrorDetail } | undefined)?.error;
    if (!detail || typeof detail.code !== 'string') {
      throw new MeteringError(res.status, {
        code: 'unexpected_response',
        message: `${method} ${path}: ${res.status} without an error body`,
      });
    }
    const ra = Number(res.headers.get('Retry-After'));
    if (detail.code === 'limit_reached') {
      throw new LimitReachedError(res.status, detail, (body as { usage?: T.TrackUsage }).usage);
    }
    throw new MeteringError(res.status, detail, Number.isFinite(ra) && ra > 0 ? ra : undefined);
  }
}
