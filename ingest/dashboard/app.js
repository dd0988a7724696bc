// The usage dashboard page: signs in (customer-scoped key, or a signed link exchanged for a
// session), shows the full and compact usage displays (an enterprise contract, usage over the
// limit of an overage plan), the projection with the cost so far and next to it the next invoice
// (billing-sync's invoice preview), the history charts and the per-endpoint table from the ingest
// API, the Add-ons card (addons.js) and the Emails panel (emails.js), and runs the upgrade modal
// against billing-sync (checkout, customer portal, cancel; none for a contract customer).
// Every credential stays in this tab's sessionStorage.

import {
  ApiError, call, color, compactDisplay, endpointTable, exchangeLink, fmtDate, fmtInt, fmtLimit, fmtMoney,
  contractPlan, fmtPct, h, lastDay, legend, level, loadCredential, planTerms, signInMessage, stackedChart, storeCredential,
  takeHashCredential, usageCard,
} from './ui.js';
import { emailsPanel } from './emails.js';
import { ADDON_PENDING, addonsPanel } from './addons.js';

const $ = (id) => document.getElementById(id);
const PENDING = 'metering.checkout';
const REFRESH_MS = 15000;
const PENDING_POLL_MS = 2000;
const PENDING_GIVE_UP_MS = 120000;
// The invoice preview asks Stripe: at most once a minute (and when the plan changes).
const PREVIEW_MS = 60000;

const app = { cred: null, config: { billing: false }, plans: null, usage: null, opener: null, timer: null, historyAt: 0, preview: null, previewAt: 0, previewPlan: null, addons: null };

const api = (path, opts) => call('', app.cred && app.cred.token, path, opts);
// billing-sync's endpoints, forwarded by the API under /dashboard/billing (one origin, no CORS).
const billing = (path, opts) => call('/dashboard/billing', app.cred && app.cred.token, path, opts);

function show(id, on = true) {
  $(id).hidden = !on;
}

function banner(text, kind = 'info') {
  const b = $('banner');
  b.textContent = text;
  b.dataset.kind = kind;
  b.hidden = !text;
}

function showSignIn(message) {
  clearTimeout(app.timer);
  app.cred = null;
  show('loading', false);
  show('dashboard', false);
  show('account', false);
  show('compact-slot', false);
  show('signin');
  const err = $('signin-error');
  err.textContent = message || '';
  err.hidden = !message;
  $('apikey').value = '';
  $('apikey').focus();
}

function signOut() {
  storeCredential(null);
  sessionStorage.removeItem(PENDING);
  sessionStorage.removeItem(ADDON_PENDING);
  // A full reload: nothing of this customer stays in memory or in the DOM.
  location.replace('/dashboard/');
}

// ---- rendering ---------------------------------------------------------------------------------

function currentPlan() {
  return (app.plans && app.plans.plans.find((p) => p.key === app.usage.plan)) || null;
}

/** The seed's `/usage` with the plan's terms of the native usage answer merged in (planTerms). */
async function loadUsage() {
  const u = await api('/usage');
  try {
    Object.assign(u, planTerms(await api(`/v1/customers/${encodeURIComponent(u.customer)}/usage`)));
  } catch {
    // The seed's fields alone: no contract, cost so far or overage shown.
  }
  return u;
}

function isTopPlan() {
  const u = app.usage;
  if (u.limit === null || u.limit === undefined) return true;
  const cur = currentPlan();
  return !!cur && app.plans.plans.every((p) => p.price_cents <= cur.price_cents);
}

function projectionCard(u) {
  const p = u.projection || {};
  const plans = (app.plans && app.plans.plans) || [];
  const rec = p.recommended_plan && plans.find((x) => x.key === p.recommended_plan);
  const cur = currentPlan();
  const row = (label, value, testid) => h('div', {}, h('dt', {}, label), h('dd', { 'data-testid': testid }, value));
  const pct = p.projected_percent === null || p.projected_percent === undefined ? null : h('span', { class: 'muted' }, ` (${fmtPct(p.projected_percent)} of your limit)`);
  // The price /usage gives (the customer's plan version or contract), else the catalog's.
  const price = u.price_cents ?? (cur && cur.price_cents);
  const currency = u.price_cents === undefined ? cur && cur.currency : u.currency;
  const overage = u.on_limit === 'overage';
  const l = level(u);
  let note;
  if (u.contract) note = 'Your contract sets your limit and price.';
  else if (l === 'over') note = 'Calls over your limit are billed by your plan\'s usage price; a bigger plan may cost less.';
  else if (l === 'limit') note = 'Your limit is reached; an upgrade takes effect at once.';
  else if (overage && p.projected_percent > 100) note = 'At this pace you go over your limit; the calls over it are billed.';
  else note = 'At this pace you stay within your plan.';
  return [
    h('h2', { id: 'projection-title' }, 'Projection to the period end'),
    h(
      'dl',
      { class: 'kv' },
      row(`Calls by ${fmtDate(lastDay(u))}`, [h('span', { 'data-testid': 'projected-used' }, fmtInt(p.projected_used)), pct]),
      row('Cost this period', fmtMoney(p.projected_cost_cents, p.currency), 'projected-cost'),
      overage && u.cost_to_date_cents !== undefined ? row('Cost so far', fmtMoney(u.cost_to_date_cents, u.currency), 'cost-to-date') : null,
      overage && u.usage_cost_cents !== undefined ? row('Usage billed so far', fmtMoney(u.usage_cost_cents, u.currency), 'usage-cost') : null,
      price !== undefined && price !== null && u.plan_name
        ? row('Plan', `${u.plan_name}${u.contract ? ' (contract)' : ''} · ${fmtMoney(price, currency, false)} / month`, 'plan-price')
        : null,
    ),
    rec && !u.contract
      ? h(
          'div',
          { class: 'notice warn', 'data-testid': 'recommendation' },
          h('p', {}, `At this pace you will need about ${fmtInt(p.projected_used)} calls this period. `, h('strong', {}, rec.name), ` (${fmtLimit(rec.limit)} calls for ${fmtMoney(rec.price_cents, rec.currency, false)} / month) covers it.`),
          h('button', { type: 'button', class: 'btn secondary small', onclick: openUpgrade, 'aria-haspopup': 'dialog', 'data-testid': 'see-recommended' }, `See ${rec.name}`),
        )
      : h('p', { class: 'muted', 'data-testid': 'projection-note' }, note),
  ];
}

// ---- next invoice (billing-sync's invoice preview) ----------------------------------------------

function lineLabel(l) {
  const plans = (app.plans && app.plans.plans) || [];
  if (l.kind === 'plan') {
    const plan = plans.find((p) => p.key === l.plan);
    return `${plan ? plan.name : l.plan} plan${l.quantity > 1 ? ` × ${fmtInt(l.quantity)}` : ''}`;
  }
  if (l.kind === 'usage') {
    const meter = (app.plans && app.plans.meter && app.plans.meter.name) || l.meter;
    return `${fmtInt(l.quantity)} ${meter} used`;
  }
  return l.description || l.price || 'Other';
}

function invoiceNodes(p) {
  if (!p) return [h('p', { class: 'muted' }, 'Loading the next invoice…')];
  if (p.error) return [h('p', { class: 'muted', 'data-testid': 'next-invoice-error' }, `The next invoice could not be loaded: ${p.error}`)];
  if (!p.upcoming) {
    const why = p.reason === 'ends_at_period_end' ? 'your subscription ends at the period end.' : 'there is nothing to pay on your plan.';
    return [h('p', { class: 'muted', 'data-testid': 'next-invoice-none' }, `No invoice is coming: ${why}`)];
  }
  return [
    h(
      'p',
      { class: 'next-invoice', 'data-testid': 'next-invoice' },
      'Next invoice: ',
      h('strong', { 'data-testid': 'next-invoice-amount' }, fmtMoney(p.amount_due, p.currency)),
      ' on ',
      h('span', { 'data-testid': 'next-invoice-date' }, fmtDate(p.period_end, { month: 'short', day: 'numeric', year: 'numeric' })),
    ),
    h(
      'ul',
      { class: 'invoice-lines', 'data-testid': 'invoice-lines', 'aria-label': 'Lines of the next invoice' },
      ...p.lines.map((l) =>
        h(
          'li',
          { 'data-kind': l.kind, 'data-testid': 'invoice-line' },
          h('span', { 'data-testid': 'invoice-line-label' }, lineLabel(l)),
          h('span', { class: 'amount', 'data-testid': 'invoice-line-amount' }, fmtMoney(l.amount, p.currency)),
        ),
      ),
    ),
  ];
}

function invoiceSection() {
  if (!app.config.billing) return null;
  return h('div', { id: 'invoice-preview', class: 'invoice-preview', 'aria-live': 'polite' }, h('h3', {}, 'Next invoice'), ...invoiceNodes(app.preview));
}

/** billing-sync's preview of the next invoice (Stripe's), into the projection card. */
async function loadPreview(force = false) {
  if (!app.config.billing || !app.usage) return;
  if (!force && app.preview && Date.now() - app.previewAt < PREVIEW_MS && app.previewPlan === app.usage.plan) return;
  app.previewAt = Date.now();
  app.previewPlan = app.usage.plan;
  try {
    app.preview = await billing(`/v1/customers/${encodeURIComponent(app.usage.customer)}/invoice-preview`);
  } catch (e) {
    // Shown in the card; never a sign-out (billing-sync may not take dashboard sessions).
    app.preview = { error: e.message };
  }
  const slot = $('invoice-preview');
  if (slot) slot.replaceChildren(h('h3', {}, 'Next invoice'), ...invoiceNodes(app.preview));
}

function render() {
  // Re-rendering replaces the cards: keep the keyboard focus on the same control.
  const focused = document.activeElement && document.activeElement.closest('#compact-slot, #usage-card, #projection, #endpoints') && document.activeElement.dataset.testid;
  const u = app.usage;
  const top = isTopPlan();
  const hasBilling = !!app.config.billing;
  $('who').textContent = u.customer;
  $('compact-slot').replaceChildren(compactDisplay(u, { onUpgrade: openUpgrade, topPlan: top }));
  $('usage-card').replaceChildren(usageCard(u, { onUpgrade: openUpgrade, onPortal: portal, topPlan: top, billing: hasBilling }));
  $('projection').replaceChildren(...projectionCard(u).filter(Boolean), ...[invoiceSection()].filter(Boolean));
  if (app.addons) app.addons.usage(u);
  const total = Object.values(u.by_endpoint || {}).reduce((a, b) => a + b, 0);
  $('endpoints').replaceChildren(h('h2', { id: 'endpoints-title' }, 'Calls by endpoint this period'), endpointTable(u.by_endpoint, total));
  show('loading', false);
  show('signin', false);
  show('account');
  show('compact-slot');
  show('dashboard');
  if (focused) {
    const again = document.querySelector(`[data-testid="${focused}"]`);
    if (again) again.focus();
  }
}

// ---- history -----------------------------------------------------------------------------------

const pad2 = (n) => String(n).padStart(2, '0');

async function loadHistory() {
  const u = app.usage;
  const today = new Date().toISOString().slice(0, 10);
  const c = encodeURIComponent(u.customer);
  const from = encodeURIComponent(`${today}T00:00:00Z`);
  const [days, hours] = await Promise.all([
    api('/usage/history?days=30'),
    api(`/v1/customers/${c}/history?granularity=hour&group_by=endpoint&from=${from}`),
  ]);
  const dayBuckets = days.history.map((d) => ({
    key: d.date,
    label: fmtDate(`${d.date}T00:00:00Z`, { weekday: 'short', month: 'short', day: 'numeric' }),
    short: fmtDate(`${d.date}T00:00:00Z`),
    values: d.by_endpoint || {},
  }));
  const hourBuckets = Array.from({ length: 24 }, (_, i) => ({ key: `${today}T${pad2(i)}`, label: `${pad2(i)}:00–${pad2(i + 1)}:00 UTC`, short: pad2(i), values: {} }));
  for (const p of hours.points) {
    const b = hourBuckets[new Date(p.bucket).getUTCHours()];
    const ep = p.endpoint || '';
    if (b && p.bucket.slice(0, 10) === today) b.values[ep] = (b.values[ep] || 0) + p.quantity;
  }
  const totals = new Map();
  for (const b of [...dayBuckets, ...hourBuckets]) for (const [e, v] of Object.entries(b.values)) totals.set(e, (totals.get(e) || 0) + v);
  const endpoints = [...totals.keys()].sort((a, b) => totals.get(b) - totals.get(a) || a.localeCompare(b));
  endpoints.forEach(color);
  $('history').replaceChildren(
    h('div', { class: 'card-head' }, h('h2', { id: 'history-title' }, 'History'), endpoints.length ? legend(endpoints) : null),
    h(
      'div',
      { class: 'charts' },
      stackedChart({ id: 'days', title: `Calls per day, last ${days.days} days`, buckets: dayBuckets, endpoints, every: 5 }),
      stackedChart({ id: 'hours', title: 'Calls per hour today (UTC)', buckets: hourBuckets, endpoints, every: 3 }),
    ),
  );
  app.historyAt = Date.now();
}

// ---- data flow ---------------------------------------------------------------------------------

async function refresh({ history = false } = {}) {
  app.usage = await loadUsage();
  render();
  await loadPreview();
  if (history || Date.now() - app.historyAt > 60000) {
    await loadHistory().catch((e) => {
      $('history').replaceChildren(h('h2', { id: 'history-title' }, 'History'), h('p', { class: 'notice limit', role: 'alert' }, `The history could not be loaded: ${e.message}`));
    });
  }
  checkPending();
}

function schedule(ms = REFRESH_MS) {
  clearTimeout(app.timer);
  app.timer = setTimeout(async () => {
    if (document.visibilityState === 'visible') {
      try {
        await refresh();
      } catch (e) {
        if (e.status === 401) return showSignIn('Your session has ended. Sign in again.');
      }
    }
    schedule(pendingAny() ? PENDING_POLL_MS : REFRESH_MS);
  }, ms);
}

/** Whether a checkout (of a plan or an add-on) waits for its webhook: the page polls faster. */
const pendingAny = () => !!(sessionStorage.getItem(PENDING) || sessionStorage.getItem(ADDON_PENDING));

/** After a checkout: waits for the new plan to arrive (Stripe webhook → billing-sync → quota). */
function checkPending() {
  if (app.addons) app.addons.checkPending(app.usage);
  let pending = null;
  try {
    pending = JSON.parse(sessionStorage.getItem(PENDING) || 'null');
  } catch {
    pending = null;
  }
  if (!pending) return;
  const to = app.plans && app.plans.plans.find((p) => p.key === pending.to);
  if (app.usage.plan === pending.to) {
    sessionStorage.removeItem(PENDING);
    banner(`Payment confirmed: you are now on the ${to ? to.name : pending.to} plan.`, 'success');
  } else if (Date.now() - pending.at > PENDING_GIVE_UP_MS) {
    sessionStorage.removeItem(PENDING);
    banner('Your payment is not confirmed yet. Your plan changes here as soon as it is; check again in a few minutes.', 'warn');
  } else {
    banner(`Confirming your payment… your ${to ? to.name : pending.to} plan appears here as soon as it is confirmed.`, 'info');
  }
}

async function start(cred, { openModal = false } = {}) {
  app.cred = cred;
  show('loading');
  try {
    const [usage, plans] = await Promise.all([loadUsage(), call('', null, '/v1/plans')]);
    app.usage = usage;
    app.plans = plans;
  } catch (e) {
    if ([400, 401, 403].includes(e.status)) {
      storeCredential(null);
      return showSignIn(signInMessage(e));
    }
    show('loading', false);
    return banner(`The dashboard could not load: ${e.message}`, 'error');
  }
  // The Add-ons card (billing-sync's add-ons), when billing is configured.
  if (app.config.billing) {
    app.addons = addonsPanel($('addons'), { billing, banner, plans: app.plans, usage: app.usage });
    app.addons.load();
  }
  render();
  checkPending();
  $('main').focus({ preventScroll: true });
  if (openModal) openUpgrade();
  loadPreview(true).catch(() => {});
  // The customer's email choices (billing-sync's), when billing is configured.
  if (app.config.billing) emailsPanel($('emails'), billing).load();
  await loadHistory().catch((e) => banner(`The history could not be loaded: ${e.message}`, 'error'));
  schedule(pendingAny() ? PENDING_POLL_MS : REFRESH_MS);
}

// ---- upgrade modal -----------------------------------------------------------------------------

/** The labels of what the customer's plan version includes now (from `/usage`'s features). */
function ownedLabels() {
  const features = (app.usage && app.usage.features) || [];
  return new Set(features.filter((f) => f.has_access || f.reason === 'limit_reached').map((f) => f.label).filter(Boolean));
}

/** What a plan includes that the customer's plan does not: the features it unlocks. */
function unlocks(p, owned) {
  return p.key === app.usage.plan ? [] : p.features.filter((f) => !owned.has(f));
}

/** The modal of a contract customer: its contract instead of the catalog's plans, and whom to ask. */
function renderContract() {
  const u = app.usage;
  const c = u.contract;
  $('upgrade-title').textContent = 'Your plan';
  $('upgrade-desc').textContent = `You are on the ${u.plan_name} plan under enterprise contract ${c.id}: ${fmtInt(u.used)} of ${fmtLimit(u.limit)} calls used this period.`;
  $('plans').replaceChildren(contractPlan(u));
  $('portal').hidden = true;
  $('cancel-sub').hidden = true;
}

function renderPlans() {
  const u = app.usage;
  if (u.contract) return renderContract();
  $('upgrade-title').textContent = 'Choose your plan';
  const owned = ownedLabels();
  const cur = currentPlan();
  const curPrice = cur ? cur.price_cents : 0;
  const rec = u.projection && u.projection.recommended_plan;
  const hasBilling = !!app.config.billing;
  $('upgrade-desc').textContent = `You are on the ${u.plan_name} plan: ${fmtInt(u.used)} of ${fmtLimit(u.limit)} calls used this period. Paid plans renew monthly; change or cancel any time.`;
  $('plans').replaceChildren(
    ...app.plans.plans.map((p) => {
      const isCur = p.key === u.plan;
      let label;
      let action = null;
      if (isCur) label = 'Your current plan';
      else if (!hasBilling) label = 'Billing unavailable';
      else if (p.price_cents === 0) {
        label = `Switch to ${p.name}`;
        action = () => askCancel();
      } else if (curPrice > 0) {
        // A live subscription changes plans in Stripe's customer portal.
        label = `Switch to ${p.name} in the portal`;
        action = () => portal();
      } else {
        label = `Upgrade to ${p.name}`;
        action = (ev) => choose(p, ev.currentTarget);
      }
      const priceId = `price-${p.key}`;
      return h(
        'li',
        { class: `plan${isCur ? ' current' : ''}${p.key === rec && !isCur ? ' recommended' : ''}`, 'data-plan': p.key, 'aria-current': isCur ? 'true' : null, 'data-testid': `plan-${p.key}` },
        isCur ? h('span', { class: 'tag current-tag' }, 'Current plan') : p.key === rec ? h('span', { class: 'tag rec-tag' }, 'Recommended') : null,
        h('h3', {}, p.name),
        h('p', { class: 'price', id: priceId }, h('span', { class: 'amount', 'data-testid': 'plan-price' }, fmtMoney(p.price_cents, p.currency, false)), h('span', { class: 'per' }, ' / month')),
        h('p', { class: 'plan-limit', 'data-testid': 'plan-limit' }, p.limit === null ? 'Unlimited API calls' : `${fmtInt(p.limit)} API calls / month`),
        p.on_limit === 'overage' && p.limit !== null ? h('p', { class: 'hint', 'data-testid': 'plan-overage' }, 'Calls over the limit are billed, never refused') : null,
        featureList(p, unlocks(p, owned)),
        h(
          'button',
          {
            type: 'button',
            class: isCur ? 'btn secondary' : p.price_cents > curPrice ? 'btn primary' : 'btn secondary',
            disabled: !action,
            'aria-describedby': priceId,
            'data-testid': `choose-${p.key}`,
            onclick: action,
          },
          label,
        ),
      );
    }),
  );
  const paid = !!cur && cur.price_cents > 0;
  $('portal').hidden = !hasBilling || !paid;
  $('cancel-sub').hidden = !hasBilling || !paid || !!u.cancel_at_period_end;
}

/** A plan's features, the ones an upgrade to it unlocks marked, and how many it unlocks. */
function featureList(p, unlocked) {
  const items = p.features.map((f) =>
    unlocked.includes(f)
      ? h('li', { class: 'unlock', 'data-testid': 'unlock' }, h('span', { class: 'unlock-mark', 'aria-hidden': 'true' }, '+'), f, h('span', { class: 'sr-only' }, ' (new with this plan)'))
      : h('li', {}, f),
  );
  const n = unlocked.length;
  return h(
    'div',
    { class: 'plan-features' },
    n ? h('p', { class: 'unlocks', 'data-testid': 'plan-unlocks' }, `Unlocks ${n} feature${n > 1 ? 's' : ''}`) : null,
    h('ul', { class: 'features', 'data-testid': 'plan-features' }, items),
  );
}

function openUpgrade() {
  const d = $('upgrade');
  if (d.open) return;
  app.opener = document.activeElement;
  $('upgrade-error').hidden = true;
  $('cancel-confirm').hidden = true;
  renderPlans();
  d.showModal();
  const first = d.querySelector('.plans button:not([disabled])') || $('upgrade-close');
  first.focus();
}

function closeUpgrade() {
  $('upgrade').close();
}

function upgradeError(e) {
  const el = $('upgrade-error');
  el.textContent = e.status === 0 ? `Billing is not reachable right now: ${e.message}` : `That did not work: ${e.message}`;
  el.hidden = false;
}

async function choose(plan, btn) {
  const old = btn.textContent;
  btn.disabled = true;
  btn.textContent = 'Opening checkout…';
  $('upgrade-error').hidden = true;
  try {
    // billing-sync's configured success URL brings the customer back here (?checkout=success).
    const r = await billing('/subscription/create', { method: 'POST', body: { plan: plan.key } });
    const url = r && (r.url || r.checkout_url);
    if (!url) throw new ApiError(502, 'bad_response', 'billing returned no checkout address');
    sessionStorage.setItem(PENDING, JSON.stringify({ from: app.usage.plan, to: plan.key, at: Date.now() }));
    location.assign(url);
  } catch (e) {
    btn.disabled = false;
    btn.textContent = old;
    upgradeError(e);
  }
}

async function portal() {
  try {
    const r = await billing('/subscription/portal');
    const url = r && (r.url || r.portal_url);
    if (!url) throw new ApiError(502, 'bad_response', 'billing returned no portal address');
    location.assign(url);
  } catch (e) {
    if ($('upgrade').open) upgradeError(e);
    else banner(`The customer portal could not be opened: ${e.message}`, 'error');
  }
}

function askCancel() {
  const u = app.usage;
  $('cancel-text').textContent = `Cancel your ${u.plan_name} subscription? It stays active until ${fmtDate(u.period_end, { month: 'long', day: 'numeric', year: 'numeric' })}, then you move to the free plan.`;
  $('cancel-confirm').hidden = false;
  $('cancel-yes').focus();
}

async function cancelSubscription() {
  const btn = $('cancel-yes');
  btn.disabled = true;
  try {
    await billing('/subscription/cancel', { method: 'POST', body: {} });
    closeUpgrade();
    banner(`Your subscription is canceled; it stays active until ${fmtDate(app.usage.period_end, { month: 'long', day: 'numeric' })}.`, 'success');
    app.previewAt = 0;
    await refresh().catch(() => {});
  } catch (e) {
    upgradeError(e);
  } finally {
    btn.disabled = false;
  }
}

// ---- wiring ------------------------------------------------------------------------------------

function wire() {
  $('signin-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const token = $('apikey').value.trim();
    if (!token) return showSignIn('Enter your API key.');
    const cred = { token, kind: 'key' };
    storeCredential(cred);
    start(cred);
  });
  $('signout').addEventListener('click', signOut);
  $('upgrade-x').addEventListener('click', closeUpgrade);
  $('upgrade-close').addEventListener('click', closeUpgrade);
  $('portal').addEventListener('click', portal);
  $('cancel-sub').addEventListener('click', askCancel);
  $('cancel-yes').addEventListener('click', cancelSubscription);
  $('cancel-no').addEventListener('click', () => {
    $('cancel-confirm').hidden = true;
    $('cancel-sub').focus();
  });
  $('upgrade').addEventListener('close', () => {
    if (app.opener && app.opener.isConnected) app.opener.focus();
    else {
      const again = document.querySelector('[data-testid="upgrade"], [data-testid="compact-upgrade"]');
      if (again) again.focus();
    }
  });
  // A click on the backdrop closes the modal.
  $('upgrade').addEventListener('click', (ev) => {
    if (ev.target === ev.currentTarget) closeUpgrade();
  });
  // A sign-in link opened in a tab that shows the dashboard already: start over with it.
  window.addEventListener('hashchange', () => {
    if (/[#&](link|token)=/.test(location.hash)) location.reload();
  });
  document.addEventListener('visibilitychange', () => {
    if (document.visibilityState === 'visible' && app.usage) schedule(0);
  });
}

async function boot() {
  wire();
  try {
    app.config = await call('', null, '/dashboard/config.json');
  } catch {
    app.config = { billing: false };
  }
  const { link, token, rest } = takeHashCredential();
  const query = new URLSearchParams(location.search);
  if (query.has('checkout')) {
    if (query.get('checkout') === 'cancel') {
      sessionStorage.removeItem(PENDING);
      sessionStorage.removeItem(ADDON_PENDING);
      banner('Checkout canceled: nothing was bought.', 'info');
    }
    history.replaceState(null, '', location.pathname + location.hash);
  }
  if (link) {
    try {
      const s = await exchangeLink(link);
      storeCredential({ token: s.token, kind: 'session', customer: s.customer, expires_at: s.expires_at });
    } catch (e) {
      storeCredential(null);
      return showSignIn(e.code === 'link_expired' || e.code === 'link_used' ? e.message.replace(/^./, (c) => c.toUpperCase()) + '.' : signInMessage(e));
    }
  } else if (token) {
    storeCredential({ token, kind: 'key' });
  }
  const cred = loadCredential();
  if (!cred) return showSignIn();
  await start(cred, { openModal: rest.has('upgrade') });
}

boot();
