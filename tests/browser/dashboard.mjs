// Browser test of the ingest dashboard, run by tests/tests/dashboard.rs against services it started:
// playwright-core drives Debian's chromium (CHROMIUM_BIN), never a downloaded browser. Each check
// prints `ok - <name>`; any failure prints the error, saves a screenshot and exits 1.
//
// Environment: DASH_API (ingest base URL), DASH_KEY_OK / DASH_KEY_LIMIT (customer keys of c_ok,
// 30 calls, and c_limit, 100 calls), DASH_LINK_WARN / DASH_LINK_WARN_2 (signed-link paths for
// c_warn, 85 calls), DASH_KEY_TENANT (a tenant-wide key), DASH_KEY_OTHER_TENANT (c_ok of another
// tenant), DASH_ARTIFACTS (screenshot folder), DASH_BILLING=1 with DASH_STRIPE_URL (billing-sync
// and the Stripe fake run: the next invoice, checkout, portal and cancel are tested),
// DASH_UPDATE_SCREENSHOTS=1 (also copy the screenshots to docs/screenshots/; with
// DASH_UPDATE_SCREENSHOTS_ONLY=emails,... only those). With billing, c_warn's address is
// owner@c-warn.test and customer emails are on: the Emails panel is tested on its session.

import assert from 'node:assert/strict';
import { readFile, mkdir, copyFile, rm } from 'node:fs/promises';
import { createServer } from 'node:http';
import { createRequire } from 'node:module';
import path from 'node:path';
import { chromium } from 'playwright-core';

const need = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(`${k} is not set`);
  return v;
};
const BASE = need('DASH_API').replace(/\/+$/, '');
const KEY_OK = need('DASH_KEY_OK');
const KEY_LIMIT = need('DASH_KEY_LIMIT');
const KEY_TENANT = need('DASH_KEY_TENANT');
const KEY_OTHER_TENANT = need('DASH_KEY_OTHER_TENANT');
const LINK_WARN = need('DASH_LINK_WARN');
const LINK_WARN_2 = need('DASH_LINK_WARN_2');
const BILLING = process.env.DASH_BILLING === '1';
const STRIPE = BILLING ? need('DASH_STRIPE_URL').replace(/\/+$/, '') : '';
const ART = process.env.DASH_ARTIFACTS || '.data/artifacts/dashboard';
const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
// Another site (another origin on this machine) that embeds the compact display.
let embedHtml = '';
const embedServer = createServer((req, res) => {
  res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8' });
  res.end(embedHtml);
});
await new Promise((r) => embedServer.listen(0, '127.0.0.1', r));
const EMBED_ORIGIN = `http://127.0.0.1:${embedServer.address().port}`;
const require = createRequire(import.meta.url);
const AXE = await readFile(require.resolve('axe-core/axe.min.js'), 'utf8');

const num = (t) => Number(String(t).replace(/[^0-9.-]/g, ''));
const round1 = (x) => Math.round(Number(x) * 10) / 10;
const shots = [];
let passed = 0;

function ok(name) {
  passed += 1;
  console.log(`ok - ${name}`);
}

async function api(p, key) {
  const r = await fetch(BASE + p, { headers: key ? { Authorization: `Bearer ${key}` } : {} });
  const body = await r.json().catch(() => null);
  assert.equal(r.status, 200, `GET ${p}: ${r.status} ${JSON.stringify(body)}`);
  return body;
}

/** Polls `fn` until it returns a truthy value; fails after `ms` naming `what`. */
async function until(what, fn, ms = 20000) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}${last ? `: ${last.message}` : ''}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function shot(page, name, opts = {}) {
  await mkdir(ART, { recursive: true });
  const file = path.join(ART, `${name}.png`);
  await page.screenshot({ path: file, ...opts });
  shots.push(file);
  return file;
}

await rm(path.join(ART, 'failure.png'), { force: true });

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  headless: true,
  // Playwright adds --headless and a fresh --user-data-dir of its own per launch.
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});

const allowed = new Set([new URL(BASE).origin, EMBED_ORIGIN]);
// The Stripe fake's hosted pages are visited by navigation only (checkout, portal).
const navigationOnly = BILLING ? new URL(STRIPE).origin : null;
const requests = [];
const problems = [];

/** A fresh context (its own storage): records every request and every page error. */
async function context(opts = {}) {
  const ctx = await browser.newContext({ viewport: { width: 1360, height: 900 }, ...opts });
  ctx.on('request', (r) => requests.push({ url: r.url(), type: r.resourceType() }));
  ctx.on('page', (p) => watch(p));
  return ctx;
}

function watch(page) {
  page.setDefaultTimeout(15000);
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => {
    const t = m.text();
    if (m.type() === 'error' && /Content Security Policy|Refused to/i.test(t)) problems.push(`CSP: ${t}`);
  });
}

async function page(ctx) {
  const p = await ctx.newPage();
  return p;
}

async function signIn(p, key) {
  await p.goto(`${BASE}/dashboard/`);
  await p.getByLabel('API key').fill(key);
  await p.getByRole('button', { name: 'Sign in' }).click();
}

const text = async (p, testid) => (await p.getByTestId(testid).first().textContent()).trim();

/** Asserts that the full and compact displays show `u` (the API's /usage answer). */
async function sameNumbers(p, u) {
  await until('the usage card', async () => num(await text(p, 'used')) === Math.round(u.used));
  assert.equal(num(await text(p, 'limit')), u.limit, 'limit');
  assert.equal(num(await text(p, 'remaining')), Math.round(u.remaining), 'remaining');
  assert.equal(num(await text(p, 'percent')), round1(u.percent), 'percent');
  assert.equal(await text(p, 'plan'), u.plan_name, 'plan name');
  assert.equal(num(await text(p, 'compact-used')), Math.round(u.used), 'compact used');
  assert.equal(num(await text(p, 'compact-limit')), u.limit, 'compact limit');
  const bar = p.getByTestId('usage-bar');
  assert.equal(Number(await bar.getAttribute('aria-valuenow')), Math.round(Math.min(100, (u.used / u.limit) * 100)), 'bar value');
}

async function axe(p, what) {
  await p.evaluate(AXE);
  const violations = await p.evaluate(async () => {
    // eslint-disable-next-line no-undef
    const r = await axe.run(document, { resultTypes: ['violations'] });
    return r.violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.map((n) => n.target.join(' ')).slice(0, 5) }));
  });
  assert.deepEqual(violations, [], `axe violations on ${what}: ${JSON.stringify(violations, null, 2)}`);
}

let current = null; // the page to screenshot when a step fails

/** The PUT of the preferences API through the dashboard's proxy: [status, body]. */
async function putPrefs(token, body) {
  const r = await fetch(`${BASE}/dashboard/billing/v1/email-preferences`, {
    method: 'PUT',
    headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' },
    body: JSON.stringify(body),
  });
  return [r.status, await r.json().catch(() => null)];
}

/** The switches of the Emails panel: kind -> [checked, disabled, state text]. */
async function switches(p) {
  return p.getByTestId('email-kinds').evaluate((ul) =>
    Object.fromEntries(
      [...ul.querySelectorAll('li')].map((li) => {
        const i = li.querySelector('input');
        return [li.dataset.kind, [i.checked, i.disabled, li.querySelector('.email-state').textContent]];
      }),
    ),
  );
}

/**
 * The Emails panel (issue 22) of a dashboard session: every kind with a switch as the API has it
 * (receipts always on), usage warnings turned off, still off after a reload and in the API; a
 * refused change (a receipt turned off behind the page's back) shows the API's error and puts the
 * switch back.
 */
async function emailChoices(p, token) {
  const PREFS = '/dashboard/billing/v1/email-preferences';
  const before = await api(PREFS, token);
  assert.equal(before.customer, 'c_warn');
  assert.equal(before.email, 'owner@c-warn.test', 'the address the admin set');
  await until('the Emails panel', async () => (await p.getByTestId('email-kinds').count()) === 1);
  const shown = await switches(p);
  assert.deepEqual(Object.keys(shown), before.kinds.map((k) => k.kind), 'one switch per kind, in the API order');
  for (const k of before.kinds) {
    assert.equal(shown[k.kind][0], k.subscribed, `${k.kind} as the API has it`);
    assert.equal(shown[k.kind][1], !k.can_unsubscribe, `${k.kind} can be changed unless it is a receipt`);
    assert.equal(await p.getByText(k.label, { exact: true }).count(), 1, `${k.label} is shown`);
  }
  assert.deepEqual(shown.receipt, [true, true, 'Always on'], 'receipts: always on');
  assert.deepEqual(shown.usage_warning, [true, false, 'On'], 'usage warnings start on');
  assert.match(await text(p, 'emails-address'), /owner@c-warn\.test/);
  // Turn usage warnings off with the keyboard-accessible switch (its label is the kind's).
  await p.getByRole('switch', { name: 'Usage warnings' }).click();
  await until('the saved note', async () => (await text(p, 'emails-status')) === 'Saved: Usage warnings off.');
  assert.deepEqual((await switches(p)).usage_warning, [false, false, 'Off']);
  const after = await api(PREFS, token);
  assert.equal(after.kinds.find((k) => k.kind === 'usage_warning').subscribed, false, 'the API has it off');
  assert.ok(after.kinds.filter((k) => k.kind !== 'usage_warning').every((k) => k.subscribed), 'the others unchanged');
  await shot(p, 'emails', { clip: await p.locator('#emails').boundingBox() });
  await axe(p, 'the Emails panel');
  await p.reload();
  await until('the Emails panel after the reload', async () => (await p.getByTestId('email-kinds').count()) === 1);
  assert.deepEqual((await switches(p)).usage_warning, [false, false, 'Off'], 'still off after the reload');
  ok('emails: every kind with a switch as the API has it, receipts always on; usage warnings turned off, off after a reload and in the API');
  // A change the API refuses: the receipt switch enabled behind the page's back and turned off.
  const [status, body] = await putPrefs(token, { preferences: { receipt: false } });
  assert.equal(status, 400, JSON.stringify(body));
  assert.equal(body.error.code, 'cannot_unsubscribe');
  await p.getByTestId('email-toggle-receipt').evaluate((i) => {
    i.disabled = false;
  });
  await p.getByTestId('email-toggle-receipt').click();
  const refused = await until('the refusal', async () => {
    const t = await text(p, 'emails-status');
    return t.includes('could not') && t;
  });
  assert.equal(refused, `Payment receipts could not be turned off: ${body.error.message} [cannot_unsubscribe, HTTP 400]`);
  assert.equal(await p.getByTestId('emails-status').getAttribute('role'), 'alert');
  assert.deepEqual((await switches(p)).receipt, [true, true, 'Always on'], 'the receipt switch is back on');
  const [bad, badBody] = await putPrefs(token, { preferences: { newsletter: false } });
  assert.equal(bad, 400, JSON.stringify(badBody));
  assert.equal(badBody.error.details[0].field, 'preferences');
  ok(`emails: a refused change shows the API's error (${refused}) and puts the switch back`);
}

async function main() {
  // 1. c_ok signs in with its key: every number equals the API's.
  const ctxOk = await context();
  const pOk = (current = await page(ctxOk));
  // The projection extrapolates the period's pace to now, so it moves while the test runs: the
  // page's must lie between the API's before the page loaded and after it was read.
  const uBefore = await api('/usage', KEY_OK);
  await signIn(pOk, KEY_OK);
  const uOk = await api('/usage', KEY_OK);
  await sameNumbers(pOk, uOk);
  assert.equal(await pOk.getByTestId('usage-bar').getAttribute('data-level'), 'ok');
  assert.equal(await pOk.getByTestId('warning').count(), 0, 'no warning below 80 %');
  assert.equal(await pOk.getByTestId('compact-upgrade').count(), 0, 'no compact upgrade below the limit');
  for (const [ep, v] of Object.entries(uOk.by_endpoint)) {
    const row = pOk.locator(`#endpoints tr[data-endpoint="${ep}"]`);
    assert.equal(num(await row.getByTestId('endpoint-calls').textContent()), Math.round(v), `endpoint ${ep}`);
  }
  assert.equal(await pOk.locator('#endpoints tbody tr').count(), Object.keys(uOk.by_endpoint).length);
  const days = await api('/usage/history?days=30', KEY_OK);
  const dayTotal = days.history.reduce((t, d) => t + d.total, 0);
  await until('the history charts', async () => (await pOk.getByTestId('days-total').count()) === 1);
  assert.equal(num(await text(pOk, 'days-total')), dayTotal, 'days total');
  for (const d of days.history.filter((x) => x.total > 0)) {
    const row = pOk.locator(`[data-testid="days-table"] tr[data-key="${d.date}"]`);
    assert.equal(num(await row.getByTestId('bucket-total').textContent()), d.total, `day ${d.date}`);
  }
  const today = new Date().toISOString().slice(0, 10);
  const hours = await api(`/v1/customers/c_ok/history?granularity=hour&group_by=endpoint&from=${today}T00:00:00Z`, KEY_OK);
  const hourTotal = hours.points.filter((x) => x.bucket.startsWith(today)).reduce((t, x) => t + x.quantity, 0);
  assert.equal(num(await text(pOk, 'hours-total')), hourTotal, 'hours total');
  assert.ok(dayTotal > 0 && hourTotal > 0, 'the charts have data');
  const shown = num(await text(pOk, 'projected-used'));
  const uAfter = await api('/usage', KEY_OK);
  const [lo, hi] = [uBefore, uAfter].map((u) => Math.round(u.projection.projected_used)).sort((a, b) => a - b);
  assert.ok(shown >= lo && shown <= hi, `projection ${shown} outside the API's ${lo}..${hi} over the same time`);
  assert.equal(Math.round(num(await text(pOk, 'projected-cost')) * 100), uOk.projection.projected_cost_cents, 'cost');
  assert.ok((await pOk.locator('[data-testid="days-chart"] rect').count()) > 0, 'the day chart draws bars');
  ok('the page shows the numbers the API returns (usage, limit, percent, by endpoint, per day, per hour, projection, cost)');
  if (BILLING) {
    // A free customer: billing-sync's preview says no invoice is coming, and so does the page.
    const pv = await api('/dashboard/billing/v1/customers/c_ok/invoice-preview', KEY_OK);
    assert.equal(pv.upcoming, false, JSON.stringify(pv));
    assert.equal(pv.reason, 'no_subscription');
    await until('the next-invoice note', async () => (await pOk.getByTestId('next-invoice-none').count()) === 1);
    assert.match(await text(pOk, 'next-invoice-none'), /No invoice is coming/);
    assert.equal(await pOk.getByTestId('next-invoice').count(), 0, 'no amount for a free customer');
    ok('next invoice: none for a free customer (as the invoice preview says)');
  }

  // Every request went to the API (or billing-sync); per-customer paths name c_ok only.
  const foreign = requests.filter((r) => !r.url.startsWith('data:') && !allowed.has(new URL(r.url).origin));
  assert.deepEqual(foreign, [], 'requests outside the API');
  const customers = new Set(requests.map((r) => (r.url.match(/\/v1\/customers\/([^/?]+)/) || [])[1]).filter(Boolean));
  assert.deepEqual([...customers], ['c_ok'], 'customer paths');
  ok("no request leaves the API's origins and none names another customer");

  // Sign out: nothing of c_ok is left on the page or in storage.
  await pOk.getByRole('button', { name: 'Sign out' }).click();
  await pOk.getByLabel('API key').waitFor();
  assert.ok(!(await pOk.locator('body').innerText()).includes('c_ok'), 'c_ok gone after sign-out');
  assert.equal(await pOk.evaluate(() => sessionStorage.length), 0);
  await ctxOk.close();

  // 2. c_warn opens a signed link: the session replaces it, the warning shows above 80 %.
  const ctxWarn = await context();
  const pWarn = (current = await page(ctxWarn));
  await pWarn.goto(BASE + LINK_WARN);
  const sessionToken = await until('the session', () => pWarn.evaluate(() => JSON.parse(sessionStorage.getItem('metering.credential') || 'null')?.token));
  assert.ok(sessionToken.startsWith('mds_'), 'a session token, not the link');
  assert.ok(!pWarn.url().includes('link='), 'the link is removed from the address');
  const uWarn = await api('/usage', sessionToken);
  assert.equal(uWarn.customer, 'c_warn');
  await sameNumbers(pWarn, uWarn);
  assert.ok(uWarn.percent > 80 && uWarn.warning, 'c_warn is above 80 %');
  const warning = pWarn.getByTestId('warning');
  await warning.waitFor();
  assert.match(await warning.textContent(), /Approaching your limit/);
  assert.match(await warning.textContent(), new RegExp(`${round1(uWarn.percent)} %`));
  assert.equal(await pWarn.getByTestId('usage-bar').getAttribute('data-level'), 'warn');
  assert.equal(await pWarn.getByTestId('compact').getAttribute('data-level'), 'warn');
  assert.equal(await pWarn.getByTestId('compact-upgrade').count(), 0, 'no compact upgrade below the limit');
  assert.equal(await pWarn.getByTestId('status').textContent(), 'Warning');
  const barColor = await pWarn.locator('[data-testid="usage-bar"] .bar-fill').evaluate((e) => getComputedStyle(e).backgroundColor);
  assert.equal(barColor, 'rgb(180, 83, 9)', 'amber bar');
  await until('the history charts', async () => (await pWarn.getByTestId('days-total').count()) === 1);
  if (BILLING) await until('the next-invoice note', async () => (await pWarn.getByTestId('next-invoice-none').count()) === 1);
  await shot(pWarn, 'full', { fullPage: true });
  // A reload keeps the session (this tab only).
  await pWarn.reload();
  await until('the reloaded page', async () => (await text(pWarn, 'customer')) === 'c_warn');
  ok('over 80 %: warning text, amber bar, signed link exchanged for a session');
  if (BILLING) await emailChoices(pWarn, sessionToken);
  await ctxWarn.close();

  // 3. c_limit at the limit: red, blocked, upgrade prompt in both displays, modal with 4 plans.
  const ctxLimit = await context();
  const pLimit = (current = await page(ctxLimit));
  await signIn(pLimit, KEY_LIMIT);
  const uLimit = await api('/usage', KEY_LIMIT);
  await sameNumbers(pLimit, uLimit);
  assert.ok(uLimit.blocked && uLimit.used >= uLimit.limit, 'c_limit is at the limit');
  assert.match(await pLimit.getByTestId('limit-notice').textContent(), /Limit reached/);
  assert.equal(await pLimit.getByTestId('usage-bar').getAttribute('data-level'), 'limit');
  assert.equal(await pLimit.getByTestId('status').textContent(), 'Blocked');
  const red = await pLimit.locator('[data-testid="usage-bar"] .bar-fill').evaluate((e) => getComputedStyle(e).backgroundColor);
  assert.equal(red, 'rgb(185, 28, 28)', 'red bar');
  assert.ok(await pLimit.getByTestId('compact-upgrade').isVisible(), 'compact upgrade button');
  assert.ok(await pLimit.getByTestId('upgrade').isVisible(), 'card upgrade button');
  await shot(pLimit, 'compact-header', { clip: await pLimit.locator('header.topbar').boundingBox() });
  ok('at the limit: upgrade prompt (notice, red bar, upgrade buttons in the full and compact displays)');

  // Keyboard: Tab reaches the compact upgrade button, Enter opens the modal, Escape closes it.
  await pLimit.locator('body').click({ position: { x: 5, y: 300 } });
  await pLimit.evaluate(() => document.activeElement && document.activeElement.blur());
  let reached = false;
  for (let i = 0; i < 25 && !reached; i++) {
    await pLimit.keyboard.press('Tab');
    reached = await pLimit.evaluate(() => document.activeElement?.dataset.testid === 'compact-upgrade');
  }
  assert.ok(reached, 'Tab reaches the compact upgrade button');
  await pLimit.keyboard.press('Enter');
  const modal = pLimit.getByTestId('upgrade-modal');
  await until('the modal', () => modal.evaluate((d) => d.open));
  assert.ok(await pLimit.evaluate(() => document.getElementById('upgrade').contains(document.activeElement)), 'focus moves into the modal');
  await pLimit.keyboard.press('Escape');
  await until('the modal closes', async () => !(await modal.evaluate((d) => d.open)));
  assert.equal(await pLimit.evaluate(() => document.activeElement?.dataset.testid), 'compact-upgrade', 'focus returns');
  ok('keyboard: Tab, Enter opens the upgrade modal, Escape closes it and focus returns');

  await pLimit.getByTestId('upgrade').click();
  await until('the modal', () => modal.evaluate((d) => d.open));
  const plans = (await api('/v1/plans')).plans;
  assert.equal(await modal.locator('.plans > li').count(), 4, 'four plans');
  for (const pl of plans) {
    const card = modal.getByTestId(`plan-${pl.key}`);
    assert.equal(num(await card.getByTestId('plan-price').textContent()) * 100, pl.price_cents, `${pl.key} price`);
    const lim = await card.getByTestId('plan-limit').textContent();
    assert.ok(pl.limit === null ? /Unlimited/.test(lim) : num(lim) === pl.limit, `${pl.key} limit: ${lim}`);
    const shown = (await card.getByTestId('plan-features').locator('li').allTextContents()).map((t) => t.replace(/^\+/, '').replace(' (new with this plan)', ''));
    assert.deepEqual(shown, pl.features, `${pl.key} features: the catalog's`);
    // What an upgrade unlocks: the plan's features the customer's plan version lacks (its entitlements).
    const owned = new Set(uLimit.features.filter((f) => f.has_access || f.reason === 'limit_reached').map((f) => f.label));
    const unlocked = pl.key === uLimit.plan ? [] : pl.features.filter((f) => !owned.has(f));
    const marked = (await card.getByTestId('unlock').allTextContents()).map((t) => t.replace(/^\+/, '').replace(' (new with this plan)', ''));
    assert.deepEqual(marked, unlocked, `${pl.key} unlocks`);
    if (unlocked.length) assert.equal(await card.getByTestId('plan-unlocks').textContent(), `Unlocks ${unlocked.length} feature${unlocked.length > 1 ? 's' : ''}`);
    else assert.equal(await card.getByTestId('plan-unlocks').count(), 0, `${pl.key} unlocks nothing`);
    assert.equal(await card.getAttribute('aria-current'), pl.key === uLimit.plan ? 'true' : null, `${pl.key} current`);
  }
  // The seed's lists (the default catalog).
  const byKey = Object.fromEntries(plans.map((pl) => [pl.key, pl.features]));
  const seedFree = ['Basic threat analysis', 'Document redaction', 'Report generation'];
  assert.deepEqual(byKey.free, seedFree, 'Free: the seed list');
  assert.deepEqual(byKey.starter, [...seedFree, 'Advanced analysis', 'Priority support', 'Custom reports'], 'Starter: the seed list');
  assert.deepEqual(byKey.professional, [...byKey.starter, 'Analytics', 'Team collaboration', 'API access'], 'Professional: the seed list');
  for (const f of ['Dedicated support', 'Custom SLA']) assert.ok(byKey.enterprise.includes(f), `Enterprise: ${f}`);
  assert.ok(uLimit.plan !== 'free' || (await modal.getByTestId('plan-professional').getByTestId('unlock').allTextContents()).some((t) => t.includes('Analytics')), 'Professional unlocks analytics for a free customer');
  assert.ok(await modal.getByTestId(`choose-${uLimit.plan}`).isDisabled(), 'the current plan cannot be chosen');
  const boxes = await Promise.all(plans.map((pl) => modal.getByTestId(`plan-${pl.key}`).boundingBox()));
  assert.ok(boxes.every((b) => Math.abs(b.y - boxes[0].y) < 2), 'the plans side by side on a wide screen');
  await axe(pLimit, 'the upgrade modal');
  await shot(pLimit, 'modal');
  await pLimit.getByTestId('upgrade-close').click();
  await until('the modal closes', async () => !(await modal.evaluate((d) => d.open)));
  ok('upgrade modal: four plans side by side with price, limit and the catalog\'s features (the seed\'s lists), what each upgrade unlocks marked, current plan highlighted');
  await axe(pLimit, 'the dashboard');
  ok('accessibility: axe-core finds no violation on the page and in the modal');

  // 4. Narrow screen: one column, nothing wider than the viewport.
  const ctxNarrow = await context({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true });
  const pNarrow = (current = await page(ctxNarrow));
  await signIn(pNarrow, KEY_LIMIT);
  await until('the usage card', async () => num(await text(pNarrow, 'used')) === Math.round(uLimit.used));
  await until('the history charts', async () => (await pNarrow.getByTestId('days-total').count()) === 1);
  const overflow = await pNarrow.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `horizontal overflow of ${overflow}px`);
  const [card, hist] = await Promise.all([pNarrow.locator('#usage-card').boundingBox(), pNarrow.locator('#history').boundingBox()]);
  assert.ok(hist.y > card.y + card.height - 1, 'single column');
  await shot(pNarrow, 'narrow', { fullPage: true });
  ok('narrow screen: single column, no horizontal scrolling');
  await ctxNarrow.close();

  // 5. The compact display embedded in another site with <metering-usage>.
  const ctxEmbed = await context();
  const host = (current = await page(ctxEmbed));
  const linkToken = LINK_WARN_2.split('#link=')[1];
  const esc = (s) => s.replace(/[&"<>]/g, (c) => `&#${c.charCodeAt(0)};`);
  const html = `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Embedding demo</title>
<style>body{font:15px system-ui,sans-serif;margin:24px;color:#1f2937}h1{font-size:17px;margin:0 0 16px}
.row{display:flex;align-items:center;gap:16px;margin:10px 0}.row b{width:150px;font-weight:600}</style>
<script src="${esc(BASE)}/dashboard/embed.js" defer></script></head><body>
<h1>Another site embedding the compact display: &lt;metering-usage&gt;</h1>
<div class="row"><b>Within the limit</b><metering-usage id="w-ok" token="${esc(KEY_OK)}"></metering-usage></div>
<div class="row"><b>Above 80 %</b><metering-usage id="w-warn" link="${esc(linkToken)}"></metering-usage></div>
<div class="row"><b>At the limit</b><metering-usage id="w-limit" token="${esc(KEY_LIMIT)}"></metering-usage></div>
<script>window.upgrades=[];document.addEventListener('metering-upgrade',function(e){e.preventDefault();window.upgrades.push(e.detail)});</script>
</body></html>`;
  embedHtml = html;
  await host.goto(`${EMBED_ORIGIN}/app`);
  for (const [id, u] of [['w-ok', uOk], ['w-warn', uWarn], ['w-limit', uLimit]]) {
    const f = host.frameLocator(`#${id} iframe`);
    await until(`the ${id} widget`, async () => num(await f.getByTestId('compact-used').textContent({ timeout: 1000 })) === Math.round(u.used));
    assert.equal(num(await f.getByTestId('compact-limit').textContent()), u.limit);
    assert.equal(await f.getByTestId('compact-upgrade').count(), id === 'w-limit' ? 1 : 0, `${id} upgrade button`);
  }
  await until('the widgets sized to their content', async () => (await host.locator('#w-limit').boundingBox()).height >= 36);
  await host.frameLocator('#w-limit iframe').getByTestId('compact-upgrade').click();
  await until('the metering-upgrade event', () => host.evaluate(() => window.upgrades.length === 1));
  assert.equal(await host.evaluate(() => window.upgrades[0].plan), 'free');
  await shot(host, 'compact', { clip: { x: 0, y: 0, width: 720, height: 230 } });
  ok('embedded compact display: <metering-usage> in another origin shows the numbers, the upgrade event fires');
  await ctxEmbed.close();

  // 6. Sign-in refusals: a tenant-wide key, a wrong key, a used link; another tenant's c_ok.
  const ctxRefuse = await context();
  const pRef = (current = await page(ctxRefuse));
  await signIn(pRef, KEY_TENANT);
  await until('the tenant-key refusal', async () => /customer-scoped/.test(await text(pRef, 'signin-error')));
  await signIn(pRef, 'mk_000000000000000000000000000000000000000000000000');
  await until('the wrong-key refusal', async () => /not valid/.test(await text(pRef, 'signin-error')));
  await pRef.goto(BASE + LINK_WARN);
  await until('the used-link refusal', async () => /already used/.test(await text(pRef, 'signin-error')));
  assert.equal(await pRef.locator('#dashboard').isVisible(), false);
  await signIn(pRef, KEY_OTHER_TENANT);
  const uOther = await api('/usage', KEY_OTHER_TENANT);
  assert.notEqual(uOther.used, uOk.used, 'the other tenant has other usage');
  await sameNumbers(pRef, uOther);
  ok("sign-in refuses tenant-wide keys, wrong keys and used links; another tenant's customer of the same name sees only its own usage");
  await ctxRefuse.close();

  // 7. Checkout: choose Starter, land on the checkout URL, complete it, see the new plan; then
  //    the customer portal and cancel at the period end.
  if (BILLING) {
    const ctxBuy = await context();
    const pBuy = (current = await page(ctxBuy));
    await signIn(pBuy, KEY_LIMIT);
    await until('the usage card', async () => (await text(pBuy, 'plan')) === uLimit.plan_name);
    await pBuy.getByTestId('upgrade').click();
    await pBuy.getByTestId('choose-starter').click();
    await pBuy.waitForURL((u) => u.href.startsWith(`${STRIPE}/`), { timeout: 20000 });
    const checkoutUrl = pBuy.url();
    assert.match(new URL(checkoutUrl).pathname, /^\/checkout\/cs_/, 'a Checkout Session URL');
    ok(`clicking a plan lands on the checkout URL (${new URL(checkoutUrl).pathname})`);
    // The fake completed the checkout on this visit and fired the webhooks; back to the dashboard.
    await pBuy.getByRole('link', { name: /continue/i }).click();
    await pBuy.waitForURL((u) => u.href.startsWith(`${BASE}/dashboard/`));
    await until('the new plan on the page', async () => (await text(pBuy, 'plan')) === 'Starter', 60000);
    const uNew = await api('/usage', KEY_LIMIT);
    assert.equal(uNew.plan, 'starter');
    assert.equal(uNew.limit, 500);
    await sameNumbers(pBuy, uNew);
    assert.equal(await pBuy.getByTestId('usage-bar').getAttribute('data-level'), 'ok');
    assert.equal(await pBuy.getByTestId('compact-upgrade').count(), 0, 'no compact upgrade after the upgrade');
    await until('the confirmation', async () => /now on the Starter plan/.test(await text(pBuy, 'banner')));
    ok('after the checkout completes the page shows the new plan (Starter, 500 calls, confirmation banner)');
    // The next invoice next to the projection: Stripe's preview through billing-sync, line by line.
    const pv = await api('/dashboard/billing/v1/customers/c_limit/invoice-preview', KEY_LIMIT);
    assert.equal(pv.upcoming, true, JSON.stringify(pv));
    assert.equal(pv.amount_due, 2900, 'Starter: $29.00');
    await until('the next invoice on the page', async () => (await pBuy.getByTestId('next-invoice').count()) === 1, 60000);
    assert.equal(Math.round(num(await text(pBuy, 'next-invoice-amount')) * 100), pv.amount_due, 'amount');
    const due = new Date(pv.period_end).toLocaleDateString('en-US', { timeZone: 'UTC', month: 'short', day: 'numeric', year: 'numeric' });
    assert.equal(await text(pBuy, 'next-invoice-date'), due, 'date');
    assert.match(await text(pBuy, 'next-invoice'), new RegExp(`^Next invoice: \\$29\\.00 on ${due}$`));
    const shownLines = await pBuy.getByTestId('invoice-line').evaluateAll((els) => els.map((e) => [e.dataset.kind, e.querySelector('[data-testid="invoice-line-label"]').textContent, e.querySelector('[data-testid="invoice-line-amount"]').textContent]));
    assert.deepEqual(shownLines.map(([k, , a]) => [k, Math.round(num(a) * 100)]), pv.lines.map((l) => [l.kind, l.amount]), 'the lines');
    assert.equal(shownLines[0][1], 'Starter plan');
    const usageLine = pv.lines.find((l) => l.kind === 'usage');
    if (usageLine) assert.match(shownLines.find(([k]) => k === 'usage')[1], new RegExp(`^${usageLine.quantity} `));
    await shot(pBuy, 'upgraded', { fullPage: true });
    ok(`next invoice: ${await text(pBuy, 'next-invoice')} with ${shownLines.length} lines (the invoice preview's)`);

    await pBuy.getByTestId('upgrade').click();
    const m = pBuy.getByTestId('upgrade-modal');
    await until('the modal', () => m.evaluate((d) => d.open));
    assert.equal(await m.getByTestId('plan-starter').getAttribute('aria-current'), 'true', 'Starter is current');
    const clean = (t) => t.replace(/^\+/, '').replace(' (new with this plan)', '');
    const proUnlocks = (await m.getByTestId('plan-professional').getByTestId('unlock').allTextContents()).map(clean);
    assert.deepEqual(proUnlocks, ['Analytics', 'Team collaboration', 'API access'], 'on Starter, Professional unlocks the seed\'s three');
    assert.equal(await m.getByTestId('plan-starter').getByTestId('unlock').count(), 0, 'the current plan unlocks nothing');
    ok('after the checkout the modal shows what Professional unlocks over Starter');
    await m.getByTestId('portal').click();
    await pBuy.waitForURL((u) => u.href.startsWith(`${STRIPE}/portal/`), { timeout: 20000 });
    ok(`customer portal: the link lands on the portal URL (${new URL(pBuy.url()).pathname})`);
    await pBuy.goto(`${BASE}/dashboard/`);
    await until('the dashboard again', async () => (await text(pBuy, 'plan')) === 'Starter');
    await pBuy.getByTestId('upgrade').click();
    await until('the modal', () => m.evaluate((d) => d.open));
    await m.getByTestId('cancel-subscription').click();
    await m.getByTestId('cancel-confirm').click();
    await until('the modal closes', async () => !(await m.evaluate((d) => d.open)));
    await until('the cancel confirmation', async () => /subscription is canceled/.test(await text(pBuy, 'banner')));
    await until('the period-end notice', async () => (await pBuy.getByTestId('cancel-notice').count()) === 1, 60000);
    assert.equal(await text(pBuy, 'plan'), 'Starter', 'the plan stays until the period end');
    ok('cancel: the subscription ends at the period end and the page says so');
    await ctxBuy.close();
  } else {
    console.log('skip - checkout, portal and cancel: DASH_BILLING not set (billing-sync not started)');
  }

  // Over the whole run: the API, the embedding page, and page navigations to the Stripe fake.
  const outside = requests.filter((r) => {
    if (r.url.startsWith('data:')) return false;
    const o = new URL(r.url).origin;
    return !allowed.has(o) && !(o === navigationOnly && r.type === 'document');
  });
  assert.deepEqual(outside, [], 'requests outside the API');
  assert.deepEqual(problems, [], 'page errors or CSP violations');
  ok('no page errors and no CSP violations');
}

let failed = 0;
try {
  await main();
} catch (e) {
  failed = 1;
  console.log(`not ok - ${e.message}`);
  console.error(e.stack);
  if (problems.length) console.error(`page problems: ${problems.join('\n')}`);
  if (current && !current.isClosed()) await shot(current, 'failure', { fullPage: true }).catch(() => {});
} finally {
  await browser.close();
  embedServer.close();
}
if (!failed && process.env.DASH_UPDATE_SCREENSHOTS === '1') {
  const docs = path.resolve('docs/screenshots');
  await mkdir(docs, { recursive: true });
  // `1`: every screenshot; else a comma-separated list of the names to update (`emails`).
  const only = process.env.DASH_UPDATE_SCREENSHOTS_ONLY ? new Set(process.env.DASH_UPDATE_SCREENSHOTS_ONLY.split(',')) : null;
  for (const f of shots) if (!only || only.has(path.basename(f, '.png'))) await copyFile(f, path.join(docs, path.basename(f)));
  console.log(`screenshots copied to ${docs}`);
}
console.log(`screenshots: ${shots.join(' ')}`);
console.log(`browser checks: ${passed} ok${failed ? ', 1 not ok' : ''}`);
process.exit(failed);
