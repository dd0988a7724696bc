// Browser test of the TypeScript package's React entry, run by tests/tests/e2e/client_ts.rs
// against services it started: playwright-core drives Debian's chromium (CHROMIUM_BIN). The page
// is clients/typescript/example (built with esbuild), served here on CP_PORT with /api proxied to
// the ingest and /billing to billing-sync. Each check prints `ok - <name>`; a failure prints the
// error, saves a screenshot and exits 1.
//
// Environment: CP_PORT, CP_API, CP_BILLING, CP_STRIPE (the Stripe fake), CP_KEY_WARN (customer
// key of c_warn, 85 of 100 calls), CP_KEY_LIMIT (c_limit, 100 of 100), CP_ARTIFACTS (screenshot
// folder), CP_UPDATE_SCREENSHOTS=1 (also copy them to docs/screenshots/).

import assert from 'node:assert/strict';
import { mkdir, copyFile, readFile } from 'node:fs/promises';
import { createServer, request as httpRequest } from 'node:http';
import path from 'node:path';
import { chromium } from 'playwright-core';

const need = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(`${k} is not set`);
  return v;
};
const PORT = Number(need('CP_PORT'));
const API = new URL(need('CP_API'));
const BILLING = new URL(need('CP_BILLING'));
const STRIPE = need('CP_STRIPE').replace(/\/+$/, '');
const KEY_WARN = need('CP_KEY_WARN');
const KEY_LIMIT = need('CP_KEY_LIMIT');
const ART = process.env.CP_ARTIFACTS || '.data/artifacts/client-page';
const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
const EXAMPLE = path.resolve('clients/typescript/example');
const BASE = `http://127.0.0.1:${PORT}`;

// The example page's server: static files and two proxies (one origin for the page).
const server = createServer(async (req, res) => {
  const proxy = (target, strip) => {
    const up = httpRequest(
      { host: target.hostname, port: target.port, method: req.method, path: req.url.slice(strip.length) || '/', headers: { ...req.headers, host: target.host } },
      (r) => {
        res.writeHead(r.statusCode, r.headers);
        r.pipe(res);
      },
    );
    up.on('error', () => {
      res.writeHead(502);
      res.end();
    });
    req.pipe(up);
  };
  if (req.url.startsWith('/api/')) return proxy(API, '/api');
  if (req.url.startsWith('/billing/')) return proxy(BILLING, '/billing');
  const file = req.url.startsWith('/dist/main.js') ? 'dist/main.js' : 'index.html';
  const type = file.endsWith('.js') ? 'text/javascript' : 'text/html; charset=utf-8';
  res.writeHead(200, { 'Content-Type': type });
  res.end(await readFile(path.join(EXAMPLE, file)));
});
await new Promise((r) => server.listen(PORT, '127.0.0.1', r));

let passed = 0;
const shots = [];
const problems = [];
let current;
const ok = (name) => {
  passed += 1;
  console.log(`ok - ${name}`);
};
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
async function shot(target, name) {
  await mkdir(ART, { recursive: true });
  const file = path.join(ART, `${name}.png`);
  await target.screenshot({ path: file });
  shots.push(file);
}
async function usage(key) {
  const r = await fetch(`${BASE}/api/usage`, { headers: { Authorization: `Bearer ${key}` } });
  assert.equal(r.status, 200);
  return r.json();
}
const text = async (p, id) => (await p.getByTestId(id).first().textContent()).trim();

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});

async function open(key) {
  const ctx = await browser.newContext({ viewport: { width: 1100, height: 760 } });
  const p = await ctx.newPage();
  p.setDefaultTimeout(15000);
  p.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  await p.goto(`${BASE}/#key=${key}`);
  await until('the first load', async () => (await text(p, 'hook-loading')) === 'false');
  current = p;
  return p;
}

async function main() {
  // 1. 85 of 100: the hook's names, the warning in the full and compact displays.
  const w = await open(KEY_WARN);
  assert.equal(
    await w.getByTestId('hook-keys').textContent(),
    'canMakeRequest,checkUsageBeforeRequest,loading,refreshUsage,subscription,trackApiUsage,usage',
  );
  ok('useUsageTracking() exposes exactly the seed names');
  const uw = await usage(KEY_WARN);
  assert.equal(uw.used, 85);
  assert.equal(await text(w, 'usage-numbers'), '85 / 100');
  assert.equal(await w.getByTestId('usage-full').getAttribute('data-usage-state'), 'warning');
  assert.equal(await w.getByTestId('usage-compact').getAttribute('data-usage-state'), 'warning');
  assert.match(await text(w, 'usage-warning'), /over 85 %/);
  assert.equal(await text(w, 'hook-can'), 'true');
  assert.equal(await text(w, 'hook-subscription'), 'free (none)');
  assert.equal(await w.getByTestId('usage-compact').getByTestId('upgrade-button').count(), 1, 'compact upgrade above 80 %');
  ok('85 of 100: full and compact displays warn, canMakeRequest is true, the subscription is loaded');
  await shot(w, 'clients-warning');
  await shot(w.getByTestId('usage-compact'), 'clients-compact');
  // 2. checkUsageBeforeRequest() then trackApiUsage('analyze'): counted once, shown at once.
  await w.getByTestId('analyze').click();
  await until('the tracked call', async () => (await text(w, 'usage-numbers')) === '86 / 100');
  assert.match(await text(w, 'log'), /analyze tracked \(86 used\)/);
  const uw2 = await usage(KEY_WARN);
  assert.equal(uw2.used, 86);
  await until('the endpoint in the rollup', async () => (await usage(KEY_WARN)).by_endpoint.analyze >= 1);
  await w.getByTestId('refresh').click();
  await until('the refreshed breakdown', async () => /analyze/.test(await text(w, 'usage-endpoints')));
  ok('Analyze: checked, called, tracked once (86 in the API and on the page)');
  await w.context().close();

  // 3. 100 of 100: blocked; checkUsageBeforeRequest() is false, nothing tracked, the modal opens.
  const l = await open(KEY_LIMIT);
  assert.equal(await l.getByTestId('usage-full').getAttribute('data-usage-state'), 'blocked');
  assert.equal(await text(l, 'hook-can'), 'false');
  assert.match(await text(l, 'usage-blocked'), /Limit reached/);
  await shot(l, 'clients-limit');
  await l.getByTestId('analyze').click();
  await l.getByTestId('upgrade-modal').waitFor();
  assert.match(await text(l, 'log'), /refused before the call/);
  assert.equal((await usage(KEY_LIMIT)).used, 100, 'nothing tracked at the limit');
  assert.match(await text(l, 'upgrade-usage'), /Free.*100 of\s+100/);
  for (const plan of ['starter', 'professional', 'enterprise']) assert.equal(await l.getByTestId(`plan-${plan}`).count(), 1, plan);
  assert.equal(await l.getByTestId('plan-free').count(), 0, 'no downgrade offered');
  await shot(l, 'clients-upgrade-modal');
  ok('100 of 100: canMakeRequest false, the call is refused before it is made, UpgradeModal offers the plans above');
  // 4. Choose Starter: Stripe Checkout through /subscription/create, back with the new plan.
  await l.getByTestId('choose-starter').click();
  await l.waitForURL((u) => u.href.startsWith(`${STRIPE}/checkout/cs_`), { timeout: 20000 });
  ok(`choosing Starter opens Stripe Checkout (${new URL(l.url()).pathname})`);
  await l.getByRole('link', { name: /continue/i }).click();
  await l.waitForURL((u) => u.href.startsWith(BASE));
  await until('the new plan', async () => {
    await l.getByTestId('refresh').click();
    return (await text(l, 'usage-numbers')) === '100 / 500';
  }, 60000);
  assert.equal(await text(l, 'usage-plan'), 'Starter');
  assert.equal(await text(l, 'hook-can'), 'true');
  assert.match(await text(l, 'hook-subscription'), /^starter \((active|trialing)\)$/);
  assert.equal(await l.getByTestId('usage-full').getAttribute('data-usage-state'), 'ok');
  assert.equal(await l.getByTestId('usage-compact').getByTestId('upgrade-button').count(), 0, 'no compact upgrade below 80 %');
  await shot(l, 'clients-after-upgrade');
  ok('after the checkout: Starter, 100 of 500, canMakeRequest true');
  // 5. A second checkout is refused with its typed code, shown in the modal.
  await l.getByTestId('usage-full').getByTestId('upgrade-button').click();
  await l.getByTestId('choose-professional').click();
  await until('the refusal', async () => /billing portal/.test(await text(l, 'upgrade-error')));
  await l.getByTestId('upgrade-close').click();
  assert.equal(await l.getByTestId('upgrade-modal').count(), 0);
  ok('a second checkout: subscription_exists is shown as such; the modal closes');
  assert.deepEqual(problems, [], 'page errors');
  ok('no page errors');
}

let failed = 0;
try {
  await main();
} catch (e) {
  failed = 1;
  console.log(`not ok - ${e.message}`);
  console.error(e.stack);
  if (problems.length) console.error(`page problems: ${problems.join('\n')}`);
  if (current && !current.isClosed()) await shot(current, 'failure').catch(() => {});
} finally {
  await browser.close();
  server.close();
}
if (!failed && process.env.CP_UPDATE_SCREENSHOTS === '1') {
  const docs = path.resolve('docs/screenshots');
  await mkdir(docs, { recursive: true });
  for (const f of shots) await copyFile(f, path.join(docs, path.basename(f)));
  console.log(`screenshots copied to ${docs}`);
}
console.log(`browser checks: ${passed} ok${failed ? ', 1 not ok' : ''}`);
process.exit(failed);
