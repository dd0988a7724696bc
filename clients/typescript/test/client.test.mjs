// The TypeScript client against the real stack (node's built-in test runner). Run by the e2e test
// `client_ts::the_typescript_client_passes_its_node_tests_against_the_real_stack`, which starts the
// ingest, the aggregator, billing-sync and the Stripe fake and passes:
// METER_API, METER_BILLING, METER_KEY (tenant key: ingest, read, admin),
// METER_CUSTOMER_KEY (customer-scoped key of `ts_seed`: read, ingest).

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { LimitReachedError, MeteringClient, MeteringError, VERSION } from '../dist/index.js';

const need = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(`${k} is not set`);
  return v;
};
const API = need('METER_API');
const BILLING = need('METER_BILLING');
const tenant = new MeteringClient({ baseUrl: API, billingUrl: BILLING, apiKey: need('METER_KEY') });
const seed = new MeteringClient({ baseUrl: API, billingUrl: BILLING, apiKey: need('METER_CUSTOMER_KEY') });
const run = `${process.pid}`;

/** The answer has exactly these fields (optional ones may be absent): the types cannot drift. */
function fields(obj, required, optional = []) {
  const keys = Object.keys(obj).sort();
  for (const k of required) assert.ok(keys.includes(k), `missing field ${k} in ${JSON.stringify(obj)}`);
  for (const k of keys) assert.ok(required.includes(k) || optional.includes(k), `unknown field ${k} in ${JSON.stringify(obj)}`);
}
const QUOTA = ['customer', 'meter', 'allowed', 'used', 'limit', 'remaining', 'percent', 'warning', 'period_start', 'period_end', 'plan', 'status'];
const TRACK_USAGE = ['customer', 'plan', 'used', 'limit', 'remaining', 'percent', 'warning', 'blocked', 'period_start', 'period_end'];

async function eventually(what, f, ms = 30_000) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

test('the package is versioned', () => {
  assert.match(VERSION, /^\d+\.\d+\.\d+$/);
});

test('plans: the public catalog', async () => {
  const p = await tenant.plans();
  fields(p, ['meter', 'warn_percent', 'default_plan', 'plans']);
  assert.deepEqual(p.plans.map((x) => [x.key, x.limit]), [['free', 100], ['starter', 500], ['professional', 5000], ['enterprise', null]]);
  fields(p.plans[0], ['key', 'name', 'price_cents', 'currency', 'limit', 'features', 'default', 'version', 'on_limit']);
});

test('events: accepted once the broker has them; invalid ones are typed errors with every field', async () => {
  const events = [0, 1, 2].map((i) => ({ id: `ts-${run}-${i}`, type: 'api_call', subject: 'ts_events', data: { endpoint: 'analyze' } }));
  assert.deepEqual(await tenant.sendEvents(events), { accepted: 3 });
  // The same ids again count once.
  assert.deepEqual(await tenant.sendEvents(events), { accepted: 3 });
  await eventually('the quota view counted 3', async () => (await tenant.quota('ts_events')).used === 3);
  const bad = await tenant.sendEvents([{ id: 'x', type: 'no_such_meter', subject: '' }]).catch((e) => e);
  assert.ok(bad instanceof MeteringError, String(bad));
  assert.equal(bad.status, 400);
  assert.equal(bad.code, 'invalid_events');
  assert.ok(bad.details.some((d) => d.field === 'subject'), JSON.stringify(bad.details));
  assert.ok(bad.details.every((d) => d.index === 0));
  assert.ok(bad.requestId, 'the request id is kept');
  const empty = await tenant.sendEvents([]).catch((e) => e);
  assert.equal(empty.code, 'empty_batch');
});

test('auth errors are typed codes, not bare statuses', async () => {
  const wrong = new MeteringClient({ baseUrl: API, apiKey: 'mk_wrong' });
  const e = await wrong.quota('x').catch((x) => x);
  assert.ok(e instanceof MeteringError);
  assert.deepEqual([e.status, e.code], [401, 'invalid_api_key']);
  const forbidden = await seed.quota('someone_else').catch((x) => x);
  assert.deepEqual([forbidden.status, forbidden.code], [403, 'customer_forbidden']);
  const down = new MeteringClient({ baseUrl: 'http://127.0.0.1:9', apiKey: 'k', timeoutMs: 2000 });
  const d = await down.plans().catch((x) => x);
  assert.ok(d instanceof MeteringError);
  assert.equal(d.code, 'network_error');
  assert.equal(d.retryable, true);
});

test('quota, check and check-and-track', async () => {
  const q = await tenant.quota('ts_check', { quantity: 1 });
  fields(q, QUOTA, ['reason', 'overage']);
  assert.deepEqual([q.allowed, q.used, q.limit, q.plan], [true, 0, 100, 'free']);
  const r = await tenant.check({ track: true, checks: [{ customer: 'ts_check', endpoint: 'redact', id: `chk-${run}` }] });
  fields(r.results[0], [...QUOTA, 'tracked', 'event_id'], ['reason']);
  assert.deepEqual([r.results[0].tracked, r.results[0].event_id, r.results[0].used], [true, `chk-${run}`, 1]);
  const again = await tenant.check({ track: true, checks: [{ customer: 'ts_check', endpoint: 'redact', id: `chk-${run}` }] });
  assert.equal(again.results[0].used, 1, 'a retry with the same id counts once');
  const bad = await tenant.check({ checks: [] }).catch((e) => e);
  assert.equal(bad.code, 'invalid_request');
});

test('admin: limits, grants, plans; then the seed API at the limit is a LimitReachedError', async () => {
  const lim = await tenant.setLimit('ts_seed', 'api_call', { limit: 3 });
  fields(lim, ['event_id', 'quota']);
  assert.equal(lim.quota[0].limit, 3);
  for (let i = 0; i < 3; i += 1) {
    const t = await seed.track({ endpoint: 'analyze', id: `seed-${run}-${i}` });
    fields(t, ['tracked', 'endpoint', 'event_id', 'usage']);
    fields(t.usage, TRACK_USAGE);
    assert.equal(t.usage.used, i + 1);
  }
  const e = await seed.track('analyze').catch((x) => x);
  assert.ok(e instanceof LimitReachedError, String(e));
  assert.deepEqual([e.status, e.code], [429, 'limit_reached']);
  assert.equal(e.usage.used, 3);
  assert.equal(e.usage.blocked, true);
  const u = await seed.seedUsage();
  fields(u, ['customer', 'plan', 'plan_name', 'status', 'cancel_at_period_end', 'used', 'limit', 'remaining', 'percent', 'warning', 'blocked', 'period_start', 'period_end', 'by_endpoint', 'projection', 'features']);
  assert.deepEqual([u.used, u.limit, u.blocked, u.warning], [3, 3, true, true]);
  assert.ok(u.features.length > 0);
  fields(u.projection, ['projected_used', 'projected_percent', 'projected_cost_cents', 'usage_cost_cents', 'currency', 'recommended_plan']);
  const g = await tenant.grant('ts_seed', { quantity: 2, id: `grant-${run}` });
  assert.equal(g.quota[0].remaining, 2);
  assert.equal((await seed.track('redact')).usage.used, 4);
  assert.equal((await tenant.deleteLimit('ts_seed', 'api_call')).quota[0].limit, 102);
  const p = await tenant.setPlan('ts_plan', { plan: 'starter', id: `plan-${run}` });
  assert.deepEqual([p.quota[0].plan, p.quota[0].limit], ['starter', 500]);
  const unknown = await tenant.setPlan('ts_plan', { plan: 'platinum' }).catch((x) => x);
  assert.ok(unknown instanceof MeteringError);
  assert.equal(unknown.status, 400);
});

test('entitlements, a check that needs a feature, plan migrations', async () => {
  const e = await tenant.entitlements('ts_ent');
  fields(e, ['customer', 'plan', 'plan_name', 'plan_version', 'current_version', 'status', 'entitlements']);
  const missing = e.entitlements.find((x) => !x.has_access);
  assert.ok(missing, 'the free plan lacks a feature');
  fields(missing, ['feature', 'name', 'kind', 'has_access', 'label'], ['value', 'meter', 'limit', 'used', 'remaining', 'reason', 'upgrade']);
  const one = await tenant.entitlement('ts_ent', missing.feature);
  assert.equal(one.feature, missing.feature);
  const unknown = await tenant.entitlement('ts_ent', 'no_such_feature').catch((x) => x);
  assert.ok(unknown instanceof MeteringError);
  assert.equal(unknown.code, 'unknown_feature');
  const c = await tenant.check({ checks: [{ customer: 'ts_ent', feature: missing.feature }] });
  assert.equal(c.results[0].allowed, false);
  fields(c.results[0].upgrade, ['plan', 'name', 'price_cents', 'currency', 'version']);
  const m = await tenant.migrateCustomer('ts_ent');
  fields(m, ['customer', 'plan', 'from_version', 'to_version', 'migrated', 'quota'], ['event_id']);
  const pm = await tenant.migratePlan('free', { dry_run: true });
  fields(pm, ['plan', 'to_version', 'dry_run', 'migrated', 'unchanged']);
});

test('usage and history from ClickHouse', async () => {
  const u = await eventually('the daily rollup has ts_events', async () => {
    const b = await tenant.usage('ts_events');
    return b.meters[0].by_endpoint.analyze === 3 ? b : null;
  });
  fields(u, ['customer', 'known', 'plan', 'period_start', 'period_end', 'warn_percent', 'meters']);
  fields(u.plan, ['key', 'name', 'price_cents', 'currency', 'status', 'cancel_at_period_end', 'on_limit', 'cost_to_date_cents', 'contract', 'addons']);
  fields(u.meters[0], [...QUOTA, 'by_endpoint', 'projection'], ['reason']);
  const h = await tenant.history('ts_events', { granularity: 'day', group_by: 'endpoint' });
  fields(h, ['customer', 'granularity', 'from', 'to', 'points']);
  assert.equal(h.points.reduce((s, p) => s + p.quantity, 0), 3);
  fields(h.points[0], ['bucket', 'endpoint', 'events', 'quantity']);
  const bad = await tenant.history('ts_events', { granularity: 'week' }).catch((x) => x);
  assert.equal(bad.code, 'invalid_request');
  const sh = await seed.seedHistory(7);
  fields(sh, ['customer', 'days', 'history']);
  assert.equal(sh.history.length, 7);
  fields(sh.history[0], ['date', 'total', 'by_endpoint']);
});

test('billing-sync: status, checkout, portal, cancel, invoice preview', async () => {
  const s = await seed.subscriptionStatus();
  fields(s, ['customer', 'plan', 'status', 'subscription_id', 'stripe_customer_id', 'current_period_start', 'current_period_end', 'cancel_at_period_end', 'payment_failed_at', 'downgraded'], ['subscribed_plan']);
  assert.deepEqual([s.customer, s.status], ['ts_seed', 'none']);
  const c = await seed.createCheckout('starter');
  fields(c, ['url', 'session_id', 'plan', 'stripe_customer_id']);
  assert.match(c.session_id, /^cs_/);
  const bad = await seed.createCheckout('platinum').catch((x) => x);
  assert.ok(bad instanceof MeteringError);
  assert.equal(bad.status, 400);
  const p = await seed.portal();
  fields(p, ['url', 'stripe_customer_id']);
  const none = await seed.cancel().catch((x) => x);
  assert.ok(none instanceof MeteringError, String(none));
  assert.equal(none.code, 'no_subscription');
  const pv = await seed.invoicePreview('ts_seed');
  assert.deepEqual([pv.upcoming, pv.reason], [false, 'no_subscription']);
  const noBilling = new MeteringClient({ baseUrl: API, apiKey: 'k' });
  assert.throws(() => noBilling.portal(), MeteringError);
});
