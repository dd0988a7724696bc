// Shared helpers of the dashboard browser scripts (used by dashboard_plans.mjs): Debian's chromium
// through playwright-core, contexts that record every request and page error, `ok - ` steps,
// screenshots (copied to docs/screenshots/ with DASH_UPDATE_SCREENSHOTS=1), polling, axe-core,
// and the API's answers to compare the page with.

import assert from 'node:assert/strict';
import { copyFile, mkdir, readFile, rm } from 'node:fs/promises';
import { createRequire } from 'node:module';
import path from 'node:path';
import { chromium } from 'playwright-core';

/** The environment variable `k`, or an error naming it. */
export function need(k) {
  const v = process.env[k];
  if (!v) throw new Error(`${k} is not set`);
  return v;
}

/** The number in a text ("$1,200.00" → 1200, "2,010 calls" → 2010). */
export const num = (t) => Number(String(t).replace(/[^0-9.-]/g, ''));

/** Money as the dashboard writes it to the cent (en-US, the currency's symbol, two decimals). */
export const money = (cents, currency = 'usd') =>
  new Intl.NumberFormat('en-US', { style: 'currency', currency: currency.toUpperCase(), minimumFractionDigits: 2 }).format(cents / 100);

/** A date as the dashboard writes it ("Jan 5, 2026", UTC). */
export const longDate = (iso) => new Date(iso).toLocaleDateString('en-US', { timeZone: 'UTC', month: 'short', day: 'numeric', year: 'numeric' });

/** Polls `fn` until it returns a truthy value; fails after `ms` naming `what`. */
export async function until(what, fn, ms = 20000) {
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

/**
 * The harness of one script against the API at `base`: `origins` are the other origins pages may
 * request, `navigationOnly` one they may only navigate to (the Stripe fake's hosted pages).
 */
export async function harness({ base, art, navigationOnly = null, origins = [] }) {
  const require = createRequire(import.meta.url);
  const AXE = await readFile(require.resolve('axe-core/axe.min.js'), 'utf8');
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM_BIN || '/usr/bin/chromium',
    headless: true,
    // Playwright adds --headless and a fresh --user-data-dir of its own per launch.
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  await rm(path.join(art, 'failure.png'), { force: true });
  const allowed = new Set([new URL(base).origin, ...origins]);
  const t = { browser, requests: [], problems: [], shots: [], passed: 0, current: null };

  t.ok = (name) => {
    t.passed += 1;
    console.log(`ok - ${name}`);
  };

  t.shot = async (page, name, opts = {}) => {
    await mkdir(art, { recursive: true });
    const file = path.join(art, `${name}.png`);
    await page.screenshot({ path: file, ...opts });
    t.shots.push(file);
    return file;
  };

  /** A screenshot of one element (a card), scrolled into view. */
  t.shotOf = async (locator, name) => {
    await mkdir(art, { recursive: true });
    const file = path.join(art, `${name}.png`);
    await locator.screenshot({ path: file });
    t.shots.push(file);
    return file;
  };

  /** A fresh context (its own storage) and a page in it, the one screenshotted on a failure. */
  t.page = async (opts = {}) => {
    const ctx = await browser.newContext({ viewport: { width: 1360, height: 900 }, ...opts });
    ctx.on('request', (r) => t.requests.push({ url: r.url(), type: r.resourceType() }));
    const p = await ctx.newPage();
    p.setDefaultTimeout(15000);
    p.on('pageerror', (e) => t.problems.push(`page error: ${e.message}`));
    p.on('console', (m) => {
      if (m.type() === 'error' && /Content Security Policy|Refused to/i.test(m.text())) t.problems.push(`CSP: ${m.text()}`);
    });
    t.current = p;
    return p;
  };

  /** GET `p` of the API with `key`: the JSON answer (200 required). */
  t.api = async (p, key) => {
    const [status, body] = await t.call('GET', p, key);
    assert.equal(status, 200, `GET ${p}: ${status} ${JSON.stringify(body)}`);
    return body;
  };

  /** `method` `p` of the API with `key` and a JSON body: [status, JSON answer]. */
  t.call = async (method, p, key, body) => {
    const headers = key ? { Authorization: `Bearer ${key}` } : {};
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    const r = await fetch(base + p, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    return [r.status, await r.json().catch(() => null)];
  };

  t.signIn = async (p, key) => {
    await p.goto(`${base}/dashboard/`);
    await p.getByLabel('API key').fill(key);
    await p.getByRole('button', { name: 'Sign in' }).click();
  };

  t.text = async (p, testid) => (await p.getByTestId(testid).first().textContent()).trim();

  t.axe = async (p, what) => {
    await p.evaluate(AXE);
    const violations = await p.evaluate(async () => {
      // eslint-disable-next-line no-undef
      const r = await axe.run(document, { resultTypes: ['violations'] });
      return r.violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.map((n) => n.target.join(' ')).slice(0, 5) }));
    });
    assert.deepEqual(violations, [], `axe violations on ${what}: ${JSON.stringify(violations, null, 2)}`);
  };

  /** Every request went to the API's origins (and navigations to `navigationOnly`); no page error. */
  t.checkRequests = () => {
    const navOrigin = navigationOnly && new URL(navigationOnly).origin;
    const outside = t.requests.filter((r) => {
      if (r.url.startsWith('data:')) return false;
      const o = new URL(r.url).origin;
      return !allowed.has(o) && !(o === navOrigin && r.type === 'document');
    });
    assert.deepEqual(outside, [], 'requests outside the API');
    assert.deepEqual(t.problems, [], 'page errors or CSP violations');
  };

  /**
   * Runs `main`, then prints the outcome and exits: on a failure the error and a screenshot of the
   * current page; with DASH_UPDATE_SCREENSHOTS=1 and success, copies the screenshots named in
   * `docs` to docs/screenshots/.
   */
  t.run = async (main, docs = []) => {
    let failed = 0;
    try {
      await main();
    } catch (e) {
      failed = 1;
      console.log(`not ok - ${e.message}`);
      console.error(e.stack);
      if (t.problems.length) console.error(`page problems: ${t.problems.join('\n')}`);
      if (t.current && !t.current.isClosed()) await t.shot(t.current, 'failure', { fullPage: true }).catch(() => {});
    } finally {
      await browser.close();
    }
    if (!failed && process.env.DASH_UPDATE_SCREENSHOTS === '1') {
      const dir = path.resolve('docs/screenshots');
      await mkdir(dir, { recursive: true });
      for (const f of t.shots) if (docs.includes(path.basename(f, '.png'))) await copyFile(f, path.join(dir, path.basename(f)));
      console.log(`screenshots copied to ${dir}`);
    }
    console.log(`screenshots: ${t.shots.join(' ')}`);
    console.log(`browser checks: ${t.passed} ok${failed ? ', 1 not ok' : ''}`);
    process.exit(failed);
  };

  return t;
}
