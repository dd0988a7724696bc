// Browser test of the dashboard's plans as products (issue 20), run by tests/tests/e2e/dashboard_plans.rs
// against services it started on a catalog where Starter lets usage run over its limit: an overage
// customer over its limit (no block; units over and the cost so far as the API says), a contract
// customer (the contract on the plan card, no catalog plan offered), and a Starter customer who
// buys a call pack ×2 through the Add-ons card and the Stripe fake's Checkout.
//
// Environment: DASH_API (ingest base URL), DASH_STRIPE_URL (the Stripe fake), DASH_KEY_OVERAGE
// (key of the customer over its overage plan's limit), DASH_KEY_CONTRACT (key of the contract
// customer, read + ingest), DASH_LINK_ADDON (signed-link path of the Starter customer who buys the
// pack), DASH_ADDON (the pack's key), DASH_ARTIFACTS (screenshot folder), DASH_UPDATE_SCREENSHOTS=1
// (copy overage.png, contract.png and addons.png to docs/screenshots/).

import assert from 'node:assert/strict';
import { harness, longDate, money, need, num, until } from './lib.mjs';

const BASE = need('DASH_API').replace(/\/+$/, '');
const STRIPE = need('DASH_STRIPE_URL').replace(/\/+$/, '');
const KEY_OVERAGE = need('DASH_KEY_OVERAGE');
const KEY_CONTRACT = need('DASH_KEY_CONTRACT');
const LINK_ADDON = need('DASH_LINK_ADDON');
const ADDON = need('DASH_ADDON');
const t = await harness({ base: BASE, art: process.env.DASH_ARTIFACTS || '.data/artifacts/dashboard_plans', navigationOnly: STRIPE });
const { api, call, ok, shot, text } = t;

const int = (n) => new Intl.NumberFormat('en-US', { maximumFractionDigits: 0 }).format(n);
const dollars = (cents) => Math.round(num(cents) * 100);
const ADDONS = '/dashboard/billing/subscription/addons';
// The API's reasons, and what the page must say for each.
const REASONS = {
  addon_not_in_plan: (plan) => new RegExp(`^Not available on your ${plan} plan\\.$`),
  addon_active: () => /already/,
  addon_not_purchasable: () => /no price/,
};

/** The seed's and the native usage answers of `key`'s customer. */
async function usageOf(key) {
  const seed = await api('/usage', key);
  return [seed, await api(`/v1/customers/${encodeURIComponent(seed.customer)}/usage`, key)];
}

/** 1. Over the limit of an overage plan: no block; units over, the cost so far and the projection as the API says. */
async function overage() {
  const p = await t.page();
  const [, before] = await usageOf(KEY_OVERAGE);
  await t.signIn(p, KEY_OVERAGE);
  const [seed, full] = await usageOf(KEY_OVERAGE);
  const m = full.meters[0];
  assert.equal(full.plan.on_limit, 'overage', 'the customer is on an overage plan');
  assert.ok(m.allowed && !seed.blocked && m.used > m.limit && m.overage > 0, `over the limit, not blocked: ${JSON.stringify(m)}`);
  await until('the usage card', async () => num(await text(p, 'used')) === m.used);
  assert.equal(num(await text(p, 'limit')), m.limit, 'limit');
  assert.equal(await text(p, 'plan'), full.plan.name, 'plan');
  assert.equal(await p.getByTestId('usage-bar').getAttribute('data-level'), 'over');
  assert.equal(await p.getByTestId('compact').getAttribute('data-level'), 'over');
  assert.equal(await text(p, 'status'), 'Overage', 'status: not blocked');
  assert.equal(await p.getByTestId('limit-notice').count(), 0, 'no limit notice');
  assert.equal(await p.getByTestId('compact-upgrade').count(), 0, 'no upgrade prompt in the compact display');
  const page = await p.locator('#dashboard').innerText();
  assert.doesNotMatch(page, /Blocked|Limit reached|refused|Upgrade to continue/, 'nothing says blocked');
  assert.match(await text(p, 'overage-notice'), /usage runs over and is billed/);
  assert.equal(num(await text(p, 'over-limit')), m.used - m.limit, 'units over the limit');
  assert.equal(num(await text(p, 'over-by')), m.used - m.limit, 'units over the limit, in the notice');
  assert.equal(num(await text(p, 'overage-next')), m.overage, "the API's overage after one more call");
  await until('the cost so far', async () => (await p.getByTestId('cost-to-date').count()) === 1);
  assert.ok(full.plan.cost_to_date_cents > full.plan.price_cents, 'the cost so far includes usage');
  const cost = await text(p, 'cost-to-date');
  assert.equal(cost, money(full.plan.cost_to_date_cents, full.plan.currency), 'cost so far, to the cent');
  assert.equal(await text(p, 'usage-cost'), money(m.projection.usage_cost_cents, full.plan.currency), 'usage billed so far');
  // The projection moves with the clock: the page's lies between the API's before and after.
  const shown = dollars(await text(p, 'projected-cost'));
  const [, after] = await usageOf(KEY_OVERAGE);
  const [lo, hi] = [before, after].map((u) => u.meters[0].projection.projected_cost_cents).sort((a, b) => a - b);
  assert.ok(shown >= lo && shown <= hi, `projected cost ${shown} outside the API's ${lo}..${hi}`);
  // Next to it, the next invoice (the usage was reported to Stripe's meter): Stripe's preview bills
  // the cost so far.
  const pv = await api(`/dashboard/billing/v1/customers/${encodeURIComponent(seed.customer)}/invoice-preview`, KEY_OVERAGE);
  assert.equal(pv.total, full.plan.cost_to_date_cents, `the preview bills the cost so far: ${JSON.stringify(pv)}`);
  await until('the next invoice', async () => (await p.getByTestId('next-invoice-amount').count()) === 1);
  assert.equal(await text(p, 'next-invoice-amount'), money(pv.amount_due, pv.currency), 'next invoice');
  await t.axe(p, 'the overage page');
  await shot(p, 'overage', { fullPage: true });
  // The modal says which plans bill usage over their limit (the catalog's limit behaviour).
  await p.getByTestId('upgrade').click();
  const modal = p.getByTestId('upgrade-modal');
  await until('the modal', () => modal.evaluate((d) => d.open));
  const plans = (await api('/v1/plans')).plans;
  assert.ok(plans.some((pl) => pl.on_limit === 'overage'), 'the catalog has an overage plan');
  for (const pl of plans) {
    const billed = pl.on_limit === 'overage' && pl.limit !== null;
    assert.equal(await modal.getByTestId(`plan-${pl.key}`).getByTestId('plan-overage').count(), billed ? 1 : 0, `${pl.key}: ${pl.on_limit}`);
  }
  await t.axe(p, 'the modal of an overage customer');
  await p.keyboard.press('Escape');
  await until('the modal closes', async () => !(await modal.evaluate((d) => d.open)));
  ok(`overage: ${m.used} of ${m.limit} calls not blocked, ${m.used - m.limit} over (next call ${m.overage}), cost so far ${cost} as /usage and the next invoice say`);
  await p.context().close();
}

/** 2. A contract customer: the contract on the plan card, and no catalog plan in the upgrade modal. */
async function contract() {
  const p = await t.page();
  await t.signIn(p, KEY_CONTRACT);
  const [, full] = await usageOf(KEY_CONTRACT);
  const c = full.plan.contract;
  assert.ok(c && c.id, `a contract in effect: ${JSON.stringify(full.plan)}`);
  const catalog = (await api('/v1/plans')).plans;
  const listed = catalog.find((x) => x.key === full.plan.key);
  assert.notEqual(listed.price_cents, full.plan.price_cents, "the contract's price is not the catalog's");
  await until('the contract on the plan card', async () => (await p.getByTestId('contract').count()) === 1);
  assert.equal(await text(p, 'contract-id'), c.id);
  assert.equal(await text(p, 'contract-plan'), full.plan.name);
  assert.equal(await text(p, 'contract-price'), money(full.plan.price_cents, full.plan.currency), "the contract's price");
  const until_ = c.ends_at ? `until ${longDate(Date.parse(c.ends_at) - 1)}` : 'open-ended';
  assert.equal(await text(p, 'contract-term'), `From ${longDate(c.starts_at)}, ${until_}`);
  assert.equal(num(await text(p, 'limit')), full.meters[0].limit, "the contract's limit");
  assert.equal(await text(p, 'plan'), full.plan.name);
  assert.equal(num(await text(p, 'plan-price')) * 100, full.plan.price_cents, 'the projection card names the contract price');
  await shot(p, 'contract', { fullPage: true });
  ok(`contract: ${c.id} (${full.plan.name}, ${money(full.plan.price_cents)}, from ${longDate(c.starts_at)}, ${until_}) on the plan card`);

  const opener = p.getByTestId('upgrade');
  await opener.click();
  const modal = p.getByTestId('upgrade-modal');
  await until('the modal', () => modal.evaluate((d) => d.open));
  assert.equal(await modal.locator('[data-testid^="choose-"]').count(), 0, 'no plan to choose');
  assert.equal(await modal.locator('.plans button').count(), 0, 'no button on the plans');
  for (const pl of catalog) assert.equal(await modal.getByTestId(`plan-${pl.key}`).count(), 0, `${pl.key} not offered`);
  const note = await text(p, 'contract-note');
  assert.ok(note.includes(c.id) && /contact sales or your administrator/.test(note), note);
  assert.equal(num(await modal.getByTestId('plan-price').textContent()) * 100, full.plan.price_cents);
  assert.equal(await modal.getByTestId('portal').isVisible(), false, 'no portal link');
  assert.equal(await modal.getByTestId('cancel-subscription').isVisible(), false, 'no cancel');
  // What the page does not offer, the API refuses.
  const other = catalog.find((x) => x.key !== full.plan.key && x.price_cents > 0);
  const [status, body] = await call('POST', '/dashboard/billing/subscription/create', KEY_CONTRACT, { plan: other.key });
  assert.equal(status, 409, JSON.stringify(body));
  assert.equal(body.error.code, 'contract_in_effect');
  await t.axe(p, 'the contract modal');
  await shot(p, 'contract-modal');
  await p.keyboard.press('Escape');
  await until('the modal closes', async () => !(await modal.evaluate((d) => d.open)));
  assert.equal(await p.evaluate(() => document.activeElement?.dataset.testid), 'upgrade', 'focus returns');
  ok(`contract: the modal offers no catalog plan (checkout of ${other.key} is refused: contract_in_effect) and says whom to ask`);

  // Not purchasable add-ons say why, in words.
  const list = await api(ADDONS, KEY_CONTRACT);
  const refused = list.available.filter((a) => !a.purchasable);
  assert.ok(refused.length > 0, 'some add-on is not for the contract');
  await until('the add-ons', async () => (await p.getByTestId('addons-available').count()) === 1);
  for (const a of refused) {
    assert.match(await text(p, `addon-reason-${a.key}`), REASONS[a.reason](full.plan.name), `${a.key}: ${a.reason}`);
    assert.equal(await p.getByTestId(`addon-buy-${a.key}`).count(), 0, `${a.key}: no Buy`);
  }
  ok(`add-ons: not purchasable ones say why (${refused.map((a) => a.reason).join(', ')})`);
  await p.context().close();
}

/** 3. A Starter customer buys the pack ×2 through the Add-ons card; the page then shows it and the raised limit. */
async function addons() {
  const p = await t.page();
  await p.goto(BASE + LINK_ADDON);
  const token = await until('the session', () => p.evaluate(() => JSON.parse(sessionStorage.getItem('metering.credential') || 'null')?.token));
  const [seed0] = await usageOf(token);
  const list0 = await api(ADDONS, token);
  const meter = (await api('/v1/plans')).meter;
  assert.equal(list0.bought.length, 0, 'nothing bought yet');
  await until('the add-ons', async () => (await p.getByTestId('addons-available').count()) === 1);
  assert.equal(await p.getByTestId('addons-none').count(), 1);
  for (const a of list0.available) {
    const row = p.getByTestId(`addon-${a.key}`);
    assert.equal(await row.getAttribute('data-purchasable'), String(a.purchasable), a.key);
    const each = a.billing === 'recurring' ? `${money(a.price_cents, a.currency)} / month` : `${money(a.price_cents, a.currency)}${a.max_quantity > 1 ? ' each' : ''}, paid once`;
    assert.equal(await text(p, `addon-price-${a.key}`), each, `${a.key} price`);
    if (a.grant) assert.ok((await text(p, `addon-gives-${a.key}`)).startsWith(`+${int(a.grant.quantity)} ${meter.name}`), `${a.key} gives`);
    assert.equal(await p.getByTestId(`addon-buy-${a.key}`).count(), a.purchasable ? 1 : 0, `${a.key} Buy`);
  }
  const pack = list0.available.find((a) => a.key === ADDON);
  assert.ok(pack && pack.purchasable && pack.billing === 'one_time' && pack.max_quantity >= 2, JSON.stringify(pack));
  const select = p.getByTestId(`addon-qty-${pack.key}`);
  assert.equal(await select.locator('option').count(), pack.max_quantity, 'a quantity up to max_quantity');

  // A refused purchase (a quantity over the maximum, added behind the page's back) shows the API's error.
  const [bad, badBody] = await call('POST', ADDONS, token, { addon: pack.key, quantity: pack.max_quantity + 1 });
  assert.equal(bad, 400, JSON.stringify(badBody));
  await select.evaluate((s, q) => s.append(Object.assign(document.createElement('option'), { value: String(q), textContent: String(q) })), pack.max_quantity + 1);
  await select.selectOption(String(pack.max_quantity + 1));
  await p.getByTestId(`addon-buy-${pack.key}`).click();
  const error = await until('the refusal', async () => {
    const s = await text(p, 'addons-status');
    return s.includes('could not') && s;
  });
  assert.equal(error, `${pack.name} could not be bought: ${badBody.error.message} (field \`${badBody.error.details[0].field}\`) [${badBody.error.code}, HTTP 400]`);
  assert.equal(await p.getByTestId('addons-status').getAttribute('role'), 'alert');
  assert.ok(p.url().startsWith(`${BASE}/dashboard/`), 'still on the dashboard');
  ok(`add-ons: a refused purchase shows the API's error (${error})`);

  // With the keyboard: Tab to the quantity, choose 2, Tab to Buy, Enter.
  await p.getByTestId(`addon-qty-${pack.key}`).selectOption('1');
  await p.evaluate(() => document.activeElement && document.activeElement.blur());
  let reached = false;
  for (let i = 0; i < 60 && !reached; i++) {
    await p.keyboard.press('Tab');
    reached = await p.evaluate((id) => document.activeElement?.dataset.testid === id, `addon-qty-${pack.key}`);
  }
  assert.ok(reached, 'Tab reaches the quantity');
  await p.keyboard.press('ArrowDown');
  await until('quantity 2', async () => (await select.inputValue()) === '2');
  assert.equal(await text(p, `addon-total-${pack.key}`), `2 × ${money(pack.price_cents, pack.currency)} = ${money(2 * pack.price_cents, pack.currency)}`);
  await p.keyboard.press('Tab');
  assert.equal(await p.evaluate(() => document.activeElement?.dataset.testid), `addon-buy-${pack.key}`, 'Tab reaches Buy');
  await p.keyboard.press('Enter');
  await p.waitForURL((u) => u.href.startsWith(`${STRIPE}/checkout/`), { timeout: 20000 });
  ok(`add-ons: Buy (quantity 2, with the keyboard) lands on the Checkout URL (${new URL(p.url()).pathname})`);

  // The fake completed the Checkout on this visit; back to the dashboard, the pack shows once it counts.
  await p.getByRole('link', { name: /continue/i }).click();
  await p.waitForURL((u) => u.href.startsWith(`${BASE}/dashboard/`));
  await until('the confirmation', async () => (await text(p, 'banner')) === `Payment confirmed: 2 × ${pack.name} added.`, 60000);
  await until('the bought pack on the card', async () => (await p.getByTestId('addon-bought').count()) === 1, 30000);
  const list1 = await api(ADDONS, token);
  const b = list1.bought.find((x) => x.addon === pack.key);
  assert.ok(b && b.quantity === 2, JSON.stringify(list1.bought));
  assert.equal(b.grant.quantity, 2 * pack.grant.quantity, 'two packs');
  const row = p.locator(`[data-testid="addon-bought"][data-purchase="${b.purchase}"]`);
  assert.equal(await row.getByTestId('addon-bought-name').textContent(), b.name);
  assert.equal(await row.getByTestId('addon-bought-quantity').textContent(), ' × 2');
  assert.equal(await row.getByTestId('addon-bought-gives').textContent(), `+${int(b.grant.quantity)} ${meter.name}`);
  assert.equal(await row.getByTestId('addon-bought-until').textContent(), `until ${longDate(Date.parse(b.expires_at) - 1)}`);
  const [seed1] = await usageOf(token);
  assert.equal(seed1.limit, seed0.limit + b.grant.quantity, 'the API raised the limit by the grant');
  await until('the raised limit on the page', async () => num(await text(p, 'limit')) === seed1.limit);
  assert.equal(num(await text(p, 'compact-limit')), seed1.limit);
  await t.axe(p, 'the Add-ons card');
  await t.shotOf(p.locator('#addons'), 'addons');
  ok(`add-ons: after the Checkout the card shows ${b.name} × 2 (${int(b.grant.quantity)} calls until ${longDate(Date.parse(b.expires_at) - 1)}) and the limit is ${int(seed1.limit)} (was ${int(seed0.limit)})`);
  await p.context().close();
}

await t.run(async () => {
  await overage();
  await contract();
  await addons();
  t.checkRequests();
  ok('no request left the API (but navigations to the Stripe fake), no page errors and no CSP violations');
}, ['overage', 'contract', 'addons']);
