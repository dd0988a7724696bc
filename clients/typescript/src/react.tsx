// React entry: useUsageTracking() with the seed application's names and meanings, UsageDisplay
// (full and compact) and UpgradeModal (Stripe Checkout through billing-sync's /subscription/create).
// React is a peer dependency; the core client (./index) needs none.

import { createContext, useCallback, useContext, useEffect, useMemo, useRef, useState } from 'react';
import type { ReactNode } from 'react';

import { MeteringClient } from './client.js';
import { LimitReachedError, MeteringError } from './errors.js';
import type { PlanOffer, SeedUsage, SubscriptionStatus, Tracked } from './types.js';

/** What useUsageTracking() returns: exactly the seed's seven names. */
export interface UsageTracking {
  /** The customer's usage (`GET /usage`), `null` until loaded. */
  usage: SeedUsage | null;
  /** The subscription (`GET /subscription/status`), `null` without billing-sync or until loaded. */
  subscription: SubscriptionStatus | null;
  /** `true` while the first load (or a refresh) runs. */
  loading: boolean;
  /** Whether one more call fits the plan: loaded and not at the limit (unlimited: always). */
  canMakeRequest: boolean;
  /** Before an API call: refreshes the usage and answers whether the call may be made; at the
   *  limit answers `false` (and calls the provider's `onLimitReached`, e.g. to open UpgradeModal). */
  checkUsageBeforeRequest: () => Promise<boolean>;
  /** After a successful call: records one call of `endpoint` (`POST /usage/track`) and updates
   *  `usage`; rejects with LimitReachedError (usage updated) when the limit was reached meanwhile. */
  trackApiUsage: (endpoint: string, opts?: { quantity?: number; id?: string }) => Promise<Tracked>;
  /** Reloads usage and subscription. */
  refreshUsage: () => Promise<void>;
}

export interface UsageTrackingOptions {
  client: MeteringClient;
  /** Called when checkUsageBeforeRequest() or trackApiUsage() finds the limit reached. */
  onLimitReached?: (usage: SeedUsage) => void;
  /** Called with every error of a load (typed MeteringError). */
  onError?: (error: MeteringError) => void;
}

interface Ctx extends UsageTracking {
  client: MeteringClient | null;
  error: MeteringError | null;
}

const UsageContext = createContext<Ctx | null>(null);

const asMeteringError = (e: unknown): MeteringError =>
  e instanceof MeteringError ? e : new MeteringError(0, { code: 'network_error', message: String(e) });

function useUsageState(opts: UsageTrackingOptions | null): Ctx {
  const client = opts?.client ?? null;
  const [usage, setUsage] = useState<SeedUsage | null>(null);
  const [subscription, setSubscription] = useState<SubscriptionStatus | null>(null);
  const [loading, setLoading] = useState<boolean>(client !== null);
  const [error, setError] = useState<MeteringError | null>(null);
  const optsRef = useRef(opts);
  optsRef.current = opts;

  const fail = useCallback((e: unknown) => {
    const err = asMeteringError(e);
    setError(err);
    optsRef.current?.onError?.(err);
    return err;
  }, []);

  const loadUsage = useCallback(async (): Promise<SeedUsage | null> => {
    if (!client) return null;
    try {
      const u = await client.seedUsage();
      setUsage(u);
      setError(null);
      return u;
    } catch (e) {
      fail(e);
      return null;
    }
  }, [client, fail]);

  const refreshUsage = useCallback(async () => {
    if (!client) return;
    setLoading(true);
    const sub = client.billingUrl
      ? client.subscriptionStatus().then(setSubscription, (e) => void fail(e))
      : Promise.resolve();
    await Promise.all([loadUsage(), sub]);
    setLoading(false);
  }, [client, loadUsage, fail]);

  useEffect(() => {
    void refreshUsage();
  }, [refreshUsage]);

  const checkUsageBeforeRequest = useCallback(async () => {
    const u = await loadUsage();
    if (!u) return false;
    if (u.blocked) optsRef.current?.onLimitReached?.(u);
    return !u.blocked;
  }, [loadUsage]);

  const trackApiUsage = useCallback(
    async (endpoint: string, o: { quantity?: number; id?: string } = {}) => {
      if (!client) throw new MeteringError(0, { code: 'invalid_request', message: 'no client' });
      try {
        const t = await client.track({ endpoint, ...o });
        setUsage((prev) => (prev ? { ...prev, ...t.usage, by_endpoint: bump(prev.by_endpoint, endpoint, o.quantity ?? 1) } : prev));
        if (t.usage.blocked) void loadUsage();
        return t;
      } catch (e) {
        if (e instanceof LimitReachedError) {
          const u = await loadUsage();
          if (u) optsRef.current?.onLimitReached?.(u);
        } else {
          fail(e);
        }
        throw e;
      }
    },
    [client, loadUsage, fail],
  );

  const canMakeRequest = usage !== null && !usage.blocked;
  return useMemo(
    () => ({ client, error, usage, subscription, loading, canMakeRequest, checkUsageBeforeRequest, trackApiUsage, refreshUsage }),
    [client, error, usage, subscription, loading, canMakeRequest, checkUsageBeforeRequest, trackApiUsage, refreshUsage],
  );
}

function bump(m: Record<string, number>, k: string, n: number): Record<string, number> {
  return { ...m, [k]: (m[k] ?? 0) + n };
}

/** Holds one customer's usage for every useUsageTracking(), UsageDisplay and UpgradeModal below. */
export function UsageTrackingProvider(props: UsageTrackingOptions & { children?: ReactNode }) {
  const { children, ...opts } = props;
  const value = useUsageState(opts);
  return <UsageContext.Provider value={value}>{children}</UsageContext.Provider>;
}

/** The seed's hook: inside a UsageTrackingProvider, or standalone with `{ client }`. */
export function useUsageTracking(opts?: UsageTrackingOptions): UsageTracking {
  const ctx = useContext(UsageContext);
  const own = useUsageState(ctx ? null : opts ?? null);
  const v = ctx ?? own;
  if (!ctx && !opts) throw new Error('useUsageTracking() needs a <UsageTrackingProvider> or { client }');
  const { usage, subscription, loading, canMakeRequest, checkUsageBeforeRequest, trackApiUsage, refreshUsage } = v;
  return { usage, subscription, loading, canMakeRequest, checkUsageBeforeRequest, trackApiUsage, refreshUsage };
}

function useCtx(): Ctx {
  const ctx = useContext(UsageContext);
  if (!ctx) throw new Error('UsageDisplay and UpgradeModal need a <UsageTrackingProvider>');
  return ctx;
}

const fmt = (n: number) => n.toLocaleString('en-US', { maximumFractionDigits: 1 });

export interface UsageDisplayProps {
  /** One line (bar and numbers) instead of the full card. */
  compact?: boolean;
  /** Shown as an "Upgrade" button when set (near or at the limit in compact mode, always in full). */
  onUpgradeClick?: () => void;
  className?: string;
}

/** The customer's usage: plan, used of limit, a bar, the 80 % warning, the block at 100 %. */
export function UsageDisplay({ compact = false, onUpgradeClick, className }: UsageDisplayProps) {
  const { usage, loading, error } = useCtx();
  if (!usage) {
    return (
      <div className={className} data-usage-state={error ? 'error' : 'loading'} role="status">
        {error ? `Usage unavailable (${error.code})` : loading ? 'Loading usage…' : ''}
      </div>
    );
  }
  const pct = usage.percent ?? 0;
  const state = usage.blocked ? 'blocked' : usage.warning ? 'warning' : 'ok';
  const limit = usage.limit === null ? 'unlimited' : fmt(usage.limit);
  const color = state === 'blocked' ? '#c62828' : state === 'warning' ? '#ef6c00' : '#2e7d32';
  const bar = (
    <div
      role="progressbar"
      aria-label="API calls used"
      aria-valuemin={0}
      aria-valuemax={100}
      aria-valuenow={Math.round(Math.min(pct, 100))}
      style={{ background: '#e0e0e0', borderRadius: 4, height: compact ? 6 : 10, overflow: 'hidden', flex: compact ? '1 1 80px' : undefined }}
    >
      <div style={{ width: `${Math.min(pct, 100)}%`, background: color, height: '100%' }} />
    </div>
  );
  const upgrade = onUpgradeClick ? (
    <button type="button" onClick={onUpgradeClick} data-testid="upgrade-button">
      Upgrade
    </button>
  ) : null;
  if (compact) {
    return (
      <div className={className} data-usage-state={state} data-testid="usage-compact"
        style={{ display: 'flex', gap: 8, alignItems: 'center', font: '14px system-ui, sans-serif' }}>
        <span data-testid="usage-numbers">{fmt(usage.used)} / {limit}</span>
        {bar}
        {state !== 'ok' && upgrade}
      </div>
    );
  }
  const endpoints = Object.entries(usage.by_endpoint).sort((a, b) => b[1] - a[1]);
  return (
    <section className={className} data-usage-state={state} data-testid="usage-full" aria-label="API usage"
      style={{ font: '14px system-ui, sans-serif', border: '1px solid #ddd', borderRadius: 8, padding: 16, maxWidth: 420 }}>
      <h3 style={{ margin: '0 0 8px' }}>
        <span data-testid="usage-plan">{usage.plan_name ?? usage.plan ?? 'Unknown'}</span> plan
      </h3>
      <p style={{ margin: '0 0 8px' }}>
        <strong data-testid="usage-numbers">{fmt(usage.used)} / {limit}</strong> API calls this period
        {usage.percent !== null && <span data-testid="usage-percent"> ({fmt(pct)} %)</span>}
      </p>
      {bar}
      {state === 'warning' && <p role="alert" style={{ color }} data-testid="usage-warning">You have used over {fmt(pct)} % of your plan.</p>}
      {state === 'blocked' && <p role="alert" style={{ color }} data-testid="usage-blocked">Limit reached: calls are refused until you upgrade or the period ends.</p>}
      {endpoints.length > 0 && (
        <ul data-testid="usage-endpoints" style={{ paddingLeft: 18 }}>
          {endpoints.map(([k, n]) => <li key={k}>{k}: {fmt(n)}</li>)}
        </ul>
      )}
      <p style={{ color: '#666', margin: '8px 0' }}>Resets {usage.period_end.slice(0, 10)}</p>
      {upgrade}
    </section>
  );
}

export interface UpgradeModalProps {
  isOpen: boolean;
  onClose: () => void;
  /** The current plan key (from `usage.plan` or `subscription.plan`). */
  currentPlan: string | null | undefined;
  usage: SeedUsage | null;
  /** Where to go with the Checkout URL (default: `window.location.assign`). */
  onCheckout?: (url: string) => void;
}

/** The plans above the current one; choosing one opens Stripe Checkout (`/subscription/create`). */
export function UpgradeModal({ isOpen, onClose, currentPlan, usage, onCheckout }: UpgradeModalProps) {
  const { client } = useCtx();
  const [plans, setPlans] = useState<PlanOffer[] | null>(null);
  const [busy, setBusy] = useState<string | null>(null);
  const [error, setError] = useState<MeteringError | null>(null);
  useEffect(() => {
    if (!isOpen || !client || plans) return;
    client.plans().then((p) => setPlans(p.plans), (e) => setError(asMeteringError(e)));
  }, [isOpen, client, plans]);
  if (!isOpen) return null;
  const current = plans?.find((p) => p.key === currentPlan);
  const offers = (plans ?? []).filter((p) => p.key !== currentPlan && p.price_cents > (current?.price_cents ?? 0));
  const choose = async (plan: string) => {
    if (!client) return;
    setBusy(plan);
    setError(null);
    try {
      const c = await client.createCheckout(plan);
      (onCheckout ?? ((u: string) => window.location.assign(u)))(c.url);
    } catch (e) {
      setError(asMeteringError(e));
    } finally {
      setBusy(null);
    }
  };
  return (
    <div data-testid="upgrade-modal" role="dialog" aria-modal="true" aria-labelledby="upgrade-title"
      onKeyDown={(e) => e.key === 'Escape' && onClose()}
      style={{ position: 'fixed', inset: 0, background: 'rgba(0,0,0,.4)', display: 'flex', alignItems: 'center', justifyContent: 'center', font: '14px system-ui, sans-serif' }}>
      <div style={{ background: '#fff', borderRadius: 8, padding: 24, minWidth: 320, maxWidth: 560 }}>
        <h2 id="upgrade-title" style={{ marginTop: 0 }}>Upgrade your plan</h2>
        {usage && (
          <p data-testid="upgrade-usage">
            You are on <strong>{current?.name ?? currentPlan ?? 'your plan'}</strong> and used {fmt(usage.used)} of{' '}
            {usage.limit === null ? 'unlimited' : fmt(usage.limit)} calls.
          </p>
        )}
        {!plans && !error && <p role="status">Loading plans…</p>}
        <ul style={{ listStyle: 'none', padding: 0, display: 'grid', gap: 8 }}>
          {offers.map((p) => (
            <li key={p.key} data-testid={`plan-${p.key}`} style={{ border: '1px solid #ddd', borderRadius: 6, padding: 12 }}>
              <strong>{p.name}</strong> — ${(p.price_cents / 100).toFixed(2)}/month,{' '}
              {p.limit === null ? 'unlimited' : fmt(p.limit)} calls
              {p.features.length > 0 && <div style={{ color: '#555' }}>{p.features.join(' · ')}</div>}
              <div>
                <button type="button" disabled={busy !== null} onClick={() => void choose(p.key)} data-testid={`choose-${p.key}`}>
                  {busy === p.key ? 'Opening checkout…' : `Choose ${p.name}`}
                </button>
              </div>
            </li>
          ))}
        </ul>
        {error && <p role="alert" data-testid="upgrade-error" style={{ color: '#c62828' }}>{error.code === 'subscription_exists' ? 'You already have a subscription: change plans in the billing portal.' : `Could not start checkout (${error.code}).`}</p>}
        <button type="button" onClick={onClose} data-testid="upgrade-close">Close</button>
      </div>
    </div>
  );
}

export { MeteringClient, MeteringError, LimitReachedError };
