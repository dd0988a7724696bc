// The dashboard's "Add-ons" card (issue 20): what the customer bought (what each gives, until when)
// and what it may buy, from billing-sync's /subscription/addons (forwarded by the API under
// /dashboard/billing); Buy starts a Stripe Checkout for {addon, quantity} and sends the browser
// there, and back on the dashboard the purchase shows once the webhook made it count (the
// ingest's /usage lists it). A refused purchase says the API's message, field, code and status.

import { ApiError, fmtDate, fmtInt, fmtMoney, h } from './ui.js';
import { describeError } from './emails.js';

/** sessionStorage key of a checkout of an add-on waiting for its webhook. */
export const ADDON_PENDING = 'metering.addon-checkout';
const GIVE_UP_MS = 120000;
const LONG_DATE = { month: 'short', day: 'numeric', year: 'numeric' };

/** Why an add-on cannot be bought, in words (the API's `reason`). */
export function reasonText(reason, planName) {
  if (reason === 'addon_not_in_plan') return `Not available on your ${planName} plan.`;
  if (reason === 'addon_active') return 'You have it already: it renews every month until cancelled.';
  if (reason === 'addon_not_purchasable') return 'Not on sale right now: no price is set up for it.';
  return `Not available (${reason}).`;
}

function readPending() {
  try {
    return JSON.parse(sessionStorage.getItem(ADDON_PENDING) || 'null');
  } catch {
    return null;
  }
}

/**
 * Mounts the card into `el` (a <section>). `billing(path, opts)` calls billing-sync, `banner(text,
 * kind)` tells the page's status line, `plans` is `GET /v1/plans` (the meter's name), `usage` the
 * page's usage summary. Returns `{ load, usage(u), checkPending(u) }`.
 */
export function addonsPanel(el, { billing, banner, plans, usage }) {
  const state = { list: null, status: null, qty: {}, usage };
  const title = () => h('h2', { id: 'addons-title' }, 'Add-ons');

  const meterName = (key) => (plans && plans.meter && plans.meter.key === key ? plans.meter.name : key);
  const featureName = (key) => {
    const f = ((state.usage && state.usage.features) || []).find((x) => x.feature === key);
    return f ? f.name : key;
  };
  const planName = () => (state.usage && state.usage.plan_name) || (state.list && state.list.plan) || 'current';

  /** What an add-on gives: "+2,000 API calls", "Analytics", "Support: dedicated". */
  function gives(grant, features, config) {
    const parts = [];
    if (grant) parts.push(`+${fmtInt(grant.quantity)} ${meterName(grant.meter)}`);
    for (const f of features || []) parts.push(featureName(f));
    for (const [k, v] of Object.entries(config || {})) parts.push(`${featureName(k)}: ${v}`);
    return parts.join(', ');
  }

  function statusLine() {
    const s = state.status;
    if (!s) return h('p', { class: 'addons-status', role: 'status', 'data-testid': 'addons-status' });
    return h('p', { class: `addons-status ${s.kind}`, role: s.kind === 'error' ? 'alert' : 'status', 'data-testid': 'addons-status' }, s.text);
  }

  function boughtRow(b) {
    const until =
      b.billing === 'recurring' || !b.expires_at
        ? 'monthly, until cancelled'
        : `until ${fmtDate(new Date(new Date(b.expires_at).getTime() - 1).toISOString(), LONG_DATE)}`;
    return h(
      'li',
      { class: 'addon bought', 'data-testid': 'addon-bought', 'data-addon': b.addon, 'data-purchase': b.purchase },
      h(
        'div',
        { class: 'addon-text' },
        h('p', { class: 'addon-name' }, h('span', { 'data-testid': 'addon-bought-name' }, b.name), b.quantity > 1 ? h('span', { 'data-testid': 'addon-bought-quantity' }, ` × ${fmtInt(b.quantity)}`) : null),
        h('p', { class: 'hint' }, h('span', { 'data-testid': 'addon-bought-gives' }, gives(b.grant, b.features, b.config)), ' · bought ', fmtDate(b.bought_at, LONG_DATE)),
      ),
      h('span', { class: 'addon-until', 'data-testid': 'addon-bought-until' }, until),
    );
  }

  function total(a) {
    const q = state.qty[a.key] || 1;
    return q > 1 ? `${fmtInt(q)} × ${fmtMoney(a.price_cents, a.currency)} = ${fmtMoney(a.price_cents * q, a.currency)}` : '';
  }

  function offerRow(a) {
    const priceId = `addon-price-${a.key}`;
    state.qty[a.key] = Math.min(state.qty[a.key] || 1, a.max_quantity);
    const each = a.billing === 'recurring' ? `${fmtMoney(a.price_cents, a.currency)} / month` : `${fmtMoney(a.price_cents, a.currency)}${a.max_quantity > 1 ? ' each' : ''}, paid once`;
    const picker =
      a.purchasable && a.billing === 'one_time' && a.max_quantity > 1
        ? h(
            'span',
            { class: 'addon-qty' },
            h('label', { for: `addon-qty-${a.key}` }, 'Quantity'),
            h(
              'select',
              {
                id: `addon-qty-${a.key}`,
                'data-testid': `addon-qty-${a.key}`,
                onchange: (ev) => {
                  state.qty[a.key] = Number(ev.currentTarget.value);
                  el.querySelector(`[data-testid="addon-total-${a.key}"]`).textContent = total(a);
                },
              },
              Array.from({ length: a.max_quantity }, (_, i) => h('option', { value: i + 1, selected: (state.qty[a.key] || 1) === i + 1 }, String(i + 1))),
            ),
          )
        : null;
    return h(
      'li',
      { class: 'addon', 'data-testid': `addon-${a.key}`, 'data-purchasable': String(a.purchasable) },
      h(
        'div',
        { class: 'addon-text' },
        h('p', { class: 'addon-name' }, a.name),
        h('p', { class: 'hint', id: priceId }, h('span', { 'data-testid': `addon-price-${a.key}` }, each), ' · ', h('span', { 'data-testid': `addon-gives-${a.key}` }, gives(a.grant, a.features, a.config)), a.billing === 'one_time' ? ', this billing period' : ''),
        a.purchasable ? null : h('p', { class: 'addon-reason', 'data-testid': `addon-reason-${a.key}` }, reasonText(a.reason, planName())),
      ),
      a.purchasable
        ? h(
            'div',
            { class: 'addon-buy' },
            picker,
            h('span', { class: 'addon-total', 'data-testid': `addon-total-${a.key}`, 'aria-live': 'polite' }, total(a)),
            h('button', { type: 'button', class: 'btn primary small', 'aria-describedby': priceId, 'data-testid': `addon-buy-${a.key}`, onclick: (ev) => buy(a, ev.currentTarget) }, `Buy ${a.name}`),
          )
        : null,
    );
  }

  function render() {
    const l = state.list;
    el.replaceChildren(
      h('div', { class: 'card-head' }, title()),
      h('h3', { id: 'addons-bought-title' }, 'Bought'),
      l.bought.length
        ? h('ul', { class: 'addons', 'aria-labelledby': 'addons-bought-title', 'data-testid': 'addons-bought' }, ...l.bought.map(boughtRow))
        : h('p', { class: 'muted', 'data-testid': 'addons-none' }, 'No add-ons bought yet.'),
      h('h3', { id: 'addons-available-title' }, 'Available'),
      h('ul', { class: 'addons', 'aria-labelledby': 'addons-available-title', 'data-testid': 'addons-available' }, ...l.available.map(offerRow)),
      statusLine(),
    );
  }

  function message(text) {
    el.replaceChildren(h('div', { class: 'card-head' }, title()), h('p', { class: 'muted', 'data-testid': 'addons-note' }, text));
  }

  /** (Re)reads the add-ons; `expect`: a purchase to wait for (billing-sync may see it a moment later). */
  async function load({ expect = null, tries = 10 } = {}) {
    el.hidden = false;
    try {
      state.list = await billing('/subscription/addons');
    } catch (e) {
      if (e.code === 'billing_unavailable') return message('Billing is not configured, so no add-ons are sold.');
      return message(`Your add-ons could not be loaded: ${describeError(e)}`);
    }
    if (expect && tries > 0 && !state.list.bought.some((b) => b.purchase === expect)) {
      setTimeout(() => load({ expect, tries: tries - 1 }), 1500);
    }
    const focused = el.contains(document.activeElement) && document.activeElement.dataset.testid;
    render();
    const again = focused && el.querySelector(`[data-testid="${focused}"]`);
    if (again) again.focus();
  }

  async function buy(a, btn) {
    const quantity = a.billing === 'one_time' ? state.qty[a.key] || 1 : 1;
    const old = btn.textContent;
    btn.disabled = true;
    btn.textContent = 'Opening checkout…';
    state.status = null;
    try {
      // billing-sync's success URL brings the customer back here (?checkout=success).
      const r = await billing('/subscription/addons', { method: 'POST', body: { addon: a.key, quantity } });
      const url = r && r.url;
      if (!url) throw new ApiError(502, 'bad_response', 'billing returned no checkout address');
      const known = [...((state.usage && state.usage.addons) || []), ...state.list.bought].map((b) => b.purchase);
      sessionStorage.setItem(ADDON_PENDING, JSON.stringify({ addon: a.key, name: a.name, quantity, known, at: Date.now() }));
      location.assign(url);
    } catch (e) {
      state.status = { kind: 'error', text: `${a.name} could not be bought: ${describeError(e)}` };
      render();
      const again = el.querySelector(`[data-testid="addon-buy-${a.key}"]`);
      if (again) again.focus();
      btn.textContent = old;
    }
  }

  /** After a checkout: the purchase shows once the ingest counts it (Stripe webhook → billing-sync → /usage). */
  function checkPending(u) {
    const p = readPending();
    if (!p || !u) return;
    const what = `${p.quantity > 1 ? `${fmtInt(p.quantity)} × ` : ''}${p.name}`;
    const found = (u.addons || []).find((b) => b.addon === p.addon && !p.known.includes(b.purchase));
    if (found) {
      sessionStorage.removeItem(ADDON_PENDING);
      banner(`Payment confirmed: ${what} added.`, 'success');
      load({ expect: found.purchase });
    } else if (Date.now() - p.at > GIVE_UP_MS) {
      sessionStorage.removeItem(ADDON_PENDING);
      banner(`Your payment for ${what} is not confirmed yet. It shows here as soon as it is; check again in a few minutes.`, 'warn');
    } else {
      banner(`Confirming your payment… ${what} shows here as soon as it is confirmed.`, 'info');
    }
  }

  return {
    load,
    checkPending,
    usage(u) {
      state.usage = u;
    },
  };
}
