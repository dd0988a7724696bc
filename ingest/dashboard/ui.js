// Shared code of the usage dashboard (dashboard page and embeddable compact display): the API
// client, the stored credential, number formats, and the renderers of the usage card (with an
// enterprise contract and usage over the limit on an overage plan), the compact display, the
// per-endpoint table and the history charts. DOM is built with h()/s(), never from HTML strings,
// so customer ids and endpoint names cannot inject markup.

const SVG_NS = 'http://www.w3.org/2000/svg';

function build(el, attrs, children) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'text') el.textContent = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

/** An HTML element: h('p', {class: 'x'}, 'text', child). */
export function h(tag, attrs, ...children) {
  return build(document.createElement(tag), attrs, children);
}

/** An SVG element. */
export function s(tag, attrs, ...children) {
  return build(document.createElementNS(SVG_NS, tag), attrs, children);
}

// ---- formats -----------------------------------------------------------------------------------

const intFmt = new Intl.NumberFormat('en-US', { maximumFractionDigits: 0 });
const pctFmt = new Intl.NumberFormat('en-US', { maximumFractionDigits: 1 });

export const fmtInt = (n) => intFmt.format(Math.round(Number(n) || 0));
export const fmtPct = (n) => `${pctFmt.format(Number(n) || 0)} %`;

export function fmtMoney(cents, currency = 'usd', exact = true) {
  const amount = (Number(cents) || 0) / 100;
  const whole = Number.isInteger(amount);
  return new Intl.NumberFormat('en-US', {
    style: 'currency',
    currency: String(currency || 'usd').toUpperCase(),
    minimumFractionDigits: whole && !exact ? 0 : 2,
  }).format(amount);
}

export function fmtDate(iso, opts = { month: 'short', day: 'numeric' }) {
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? '' : d.toLocaleDateString('en-US', { timeZone: 'UTC', ...opts });
}

/** The last moment of a usage period (`period_end` is exclusive). */
export const lastDay = (u) => new Date(new Date(u.period_end).getTime() - 1).toISOString();

/** "1 call", "2 calls". */
export const plural = (n, one, many) => `${fmtInt(n)} ${Math.round(n) === 1 ? one : many}`;

/** `limit` or "Unlimited". */
export const fmtLimit = (limit) => (limit === null || limit === undefined ? 'Unlimited' : fmtInt(limit));

/**
 * ok (green), warn (amber, above the warning threshold), limit (red, at or over the limit: new
 * calls are refused) or over (amber: at or over the limit of a plan that lets usage run over and
 * bills it, `on_limit = "overage"`; nothing is refused).
 */
export function level(u) {
  const atLimit = u.limit !== null && u.limit !== undefined && Number(u.used) >= Number(u.limit);
  if (u.blocked) return 'limit';
  if (atLimit) return u.on_limit === 'overage' ? 'over' : 'limit';
  if (u.warning) return 'warn';
  return 'ok';
}

/** Units over the limit now (0 when within it or unlimited). */
export function overBy(u) {
  if (u.limit === null || u.limit === undefined) return 0;
  return Math.max(0, Number(u.used) - Number(u.limit));
}

/**
 * What the native usage answer (`GET /v1/customers/{c}/usage`) adds to the seed's `/usage`: the
 * plan's terms (price, currency, limit behaviour, cost so far, contract, add-ons) and the first
 * meter's overage and usage cost. Merged into the seed's object the renderers take.
 */
export function planTerms(full) {
  const p = (full && full.plan) || {};
  const m = (full && full.meters && full.meters[0]) || {};
  return {
    on_limit: p.on_limit || 'block',
    price_cents: p.price_cents,
    currency: p.currency || 'usd',
    cost_to_date_cents: p.cost_to_date_cents,
    contract: p.contract || null,
    addons: p.addons || [],
    overage: m.overage,
    usage_cost_cents: m.projection ? m.projection.usage_cost_cents : undefined,
  };
}

/** Bar width in percent (0-100) of a usage summary. */
export function fill(u) {
  if (u.limit === null || u.limit === undefined) return 0;
  if (Number(u.limit) === 0) return 100;
  return Math.max(0, Math.min(100, (Number(u.used) / Number(u.limit)) * 100));
}

// ---- API ---------------------------------------------------------------------------------------

/** An error answer of the API: status, code and message. */
export class ApiError extends Error {
  constructor(status, code, message, field) {
    super(message || `request failed (${status})`);
    this.status = status;
    this.code = code || 'error';
    this.field = field;
  }
}

/** Calls `base + path` with the bearer credential; JSON in, JSON out; errors as ApiError. */
export async function call(base, token, path, { method = 'GET', body } = {}) {
  const headers = { Accept: 'application/json' };
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let r;
  try {
    r = await fetch(base + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (e) {
    throw new ApiError(0, 'network', `cannot reach ${base || 'the API'}: ${e.message}`);
  }
  const text = await r.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    json = null;
  }
  if (!r.ok) {
    const err = (json && json.error) || {};
    const field = err.details && err.details[0] && err.details[0].field;
    throw new ApiError(r.status, err.code, err.message || (typeof json?.message === 'string' ? json.message : text.slice(0, 200)), field);
  }
  return json;
}

/** The sentence shown when a credential cannot open the dashboard. */
export function signInMessage(e) {
  if (e.code === 'invalid_api_key' || e.code === 'missing_api_key') return 'That key is not valid: it is unknown, revoked or expired.';
  if (e.code === 'invalid_link') return 'This sign-in link is not valid. Ask for a new one.';
  if (e.status === 400 && e.field === 'customer')
    return 'That key belongs to a whole tenant. The dashboard needs a customer-scoped key, so that it shows exactly one customer.';
  if (e.code === 'insufficient_scope') return 'That key lacks the read scope.';
  if (e.code === 'customer_forbidden') return 'That key may not read this customer.';
  return e.message;
}

/** Exchanges a signed sign-in link for a session token. */
export async function exchangeLink(link) {
  return call('', null, '/dashboard/session', { method: 'POST', body: { link } });
}

// ---- stored credential (this tab only) ----------------------------------------------------------

const CREDENTIAL = 'metering.credential';

export function loadCredential() {
  try {
    return JSON.parse(sessionStorage.getItem(CREDENTIAL) || 'null');
  } catch {
    return null;
  }
}

export function storeCredential(cred) {
  if (cred) sessionStorage.setItem(CREDENTIAL, JSON.stringify(cred));
  else sessionStorage.removeItem(CREDENTIAL);
}

/** Reads `#link=` / `#token=` from the address and removes it from the address bar and history. */
export function takeHashCredential() {
  const params = new URLSearchParams(location.hash.slice(1));
  const link = params.get('link');
  const token = params.get('token');
  if (link || token) {
    params.delete('link');
    params.delete('token');
    const rest = params.toString();
    history.replaceState(null, '', location.pathname + location.search + (rest ? `#${rest}` : ''));
  }
  return { link, token, rest: params };
}

// ---- usage renderers ---------------------------------------------------------------------------

const LEVEL_TEXT = { ok: 'within limit', warn: 'approaching limit', limit: 'limit reached', over: 'over the limit, billed as overage' };
const STATUS_TEXT = { ok: 'OK', warn: 'Warning', limit: 'Blocked', over: 'Overage' };
const LONG_DATE = { month: 'short', day: 'numeric', year: 'numeric' };

/** A progress bar (role=progressbar) for a usage summary. */
export function bar(u, { mini = false, label = 'API calls used' } = {}) {
  const pct = fill(u);
  const lim = u.limit === null || u.limit === undefined;
  const text = lim
    ? `${fmtInt(u.used)} calls, unlimited plan`
    : `${fmtInt(u.used)} of ${fmtInt(u.limit)} calls (${fmtPct(u.percent)}), ${LEVEL_TEXT[level(u)]}`;
  const inner = h('div', { class: 'bar-fill' });
  inner.style.width = `${lim ? 0 : Math.max(pct, u.used > 0 ? 1.5 : 0)}%`;
  return h(
    'div',
    {
      class: mini ? 'bar mini' : 'bar',
      role: 'progressbar',
      'aria-label': label,
      'aria-valuemin': 0,
      'aria-valuemax': 100,
      'aria-valuenow': Math.round(pct),
      'aria-valuetext': text,
      'data-testid': mini ? 'compact-bar' : 'usage-bar',
      'data-level': level(u),
    },
    inner,
  );
}

/** The warning or limit sentence of a usage summary, or null. */
export function notice(u) {
  const l = level(u);
  const resets = fmtDate(u.period_end);
  if (l === 'limit')
    return h(
      'p',
      { class: 'notice limit', role: 'alert', 'data-testid': 'limit-notice' },
      h('strong', {}, 'Limit reached. '),
      `You have used all ${fmtInt(u.limit)} calls of your ${u.plan_name || u.plan} plan, so new calls are refused until ${resets}. `,
      u.contract ? 'Your contract sets this limit: contact sales or your administrator to raise it.' : 'Upgrade to continue now.',
    );
  if (l === 'over')
    return h(
      'p',
      { class: 'notice warn', role: 'status', 'data-testid': 'overage-notice' },
      h('strong', {}, 'Over your limit: usage runs over and is billed. '),
      'You have used ',
      h('span', { 'data-testid': 'over-by' }, fmtInt(overBy(u))),
      ` calls more than the ${fmtInt(u.limit)} your ${u.plan_name || u.plan} plan includes. Calls keep working; each one over the limit is billed by your plan's usage price`,
      u.overage === undefined || u.overage === null ? '.' : [' (the next call makes ', h('span', { 'data-testid': 'overage-next' }, fmtInt(u.overage)), ' over).'],
    );
  if (l === 'warn')
    return h(
      'p',
      { class: 'notice warn', role: 'status', 'data-testid': 'warning' },
      h('strong', {}, 'Approaching your limit. '),
      `You have used ${fmtPct(u.percent)} of your ${fmtInt(u.limit)} monthly calls (${fmtInt(u.remaining)} left until ${resets}). Upgrade to avoid interruptions.`,
    );
  return null;
}

/** The enterprise contract of a usage summary: its id, dates, and the plan's name and price. */
export function contractBlock(u) {
  const c = u.contract;
  if (!c) return null;
  // `ends_at` is exclusive: the contract's last day is the one before.
  const until = c.ends_at ? `until ${fmtDate(new Date(new Date(c.ends_at).getTime() - 1).toISOString(), LONG_DATE)}` : 'open-ended';
  return h(
    'div',
    { class: 'contract', 'data-testid': 'contract' },
    h('p', { class: 'contract-title' }, h('strong', {}, 'Enterprise contract '), h('span', { class: 'contract-id', 'data-testid': 'contract-id' }, c.id)),
    h(
      'p',
      {},
      h('span', { 'data-testid': 'contract-plan' }, u.plan_name || u.plan),
      ' · ',
      h('span', { 'data-testid': 'contract-price' }, fmtMoney(u.price_cents, u.currency)),
      ' / month',
    ),
    h('p', { 'data-testid': 'contract-term' }, `From ${fmtDate(c.starts_at, LONG_DATE)}, ${until}`),
    h('p', { class: 'hint' }, 'Your contract sets your price, limits and features. To change them, contact sales or your administrator.'),
  );
}

/** The upgrade modal's only card for a contract customer: the contract's plan and whom to ask. */
export function contractPlan(u) {
  return h(
    'li',
    { class: 'plan current contract-plan', 'aria-current': 'true', 'data-testid': 'plan-contract' },
    h('span', { class: 'tag current-tag' }, 'Your contract'),
    h('h3', {}, u.plan_name),
    h('p', { class: 'price' }, h('span', { class: 'amount', 'data-testid': 'plan-price' }, fmtMoney(u.price_cents, u.currency, false)), h('span', { class: 'per' }, ' / month')),
    h('p', { class: 'plan-limit', 'data-testid': 'plan-limit' }, u.limit === null ? 'Unlimited API calls' : `${fmtInt(u.limit)} API calls / month`),
    h(
      'p',
      { class: 'notice info', 'data-testid': 'contract-note' },
      `Your plan is set by your enterprise contract ${u.contract.id}, so the catalog's plans are not offered here. To change your plan, price or limits, contact sales or your administrator.`,
    ),
  );
}

/** The full usage display: card with used / limit, color-coded bar, warning text, actions. */
export function usageCard(u, { onUpgrade, onPortal, topPlan = false, billing = false } = {}) {
  const l = level(u);
  const unlimited = u.limit === null || u.limit === undefined;
  const over = l === 'over';
  const days = Math.max(0, Math.ceil((new Date(u.period_end) - Date.now()) / 86400000));
  return h(
    'div',
    { class: 'usage-card', 'data-level': l },
    h(
      'div',
      { class: 'card-head' },
      h('h2', { id: 'usage-title' }, 'API calls this period'),
      h('span', { class: 'plan-badge', 'data-testid': 'plan' }, u.plan_name || u.plan || ''),
    ),
    h('p', { class: 'period' }, `${fmtDate(u.period_start)} – ${fmtDate(lastDay(u))} · resets ${fmtDate(u.period_end)}, in ${days} ${days === 1 ? 'day' : 'days'}`),
    h(
      'p',
      { class: 'big' },
      h('span', { 'data-testid': 'used' }, fmtInt(u.used)),
      h('span', { class: 'of' }, ' / '),
      h('span', { 'data-testid': 'limit' }, fmtLimit(u.limit)),
      h('span', { class: 'unit' }, ' calls'),
    ),
    bar(u),
    h(
      'dl',
      { class: 'stats' },
      h('div', {}, h('dt', {}, 'Used'), h('dd', { 'data-testid': 'percent' }, unlimited ? '—' : fmtPct(u.percent))),
      over
        ? h('div', {}, h('dt', {}, 'Over the limit'), h('dd', { 'data-testid': 'over-limit' }, fmtInt(overBy(u))))
        : h('div', {}, h('dt', {}, 'Remaining'), h('dd', { 'data-testid': 'remaining' }, unlimited ? 'Unlimited' : fmtInt(u.remaining))),
      h('div', {}, h('dt', {}, 'Status'), h('dd', { 'data-testid': 'status' }, STATUS_TEXT[l])),
    ),
    contractBlock(u),
    notice(u),
    u.cancel_at_period_end
      ? h('p', { class: 'notice info', 'data-testid': 'cancel-notice' }, `Your ${u.plan_name} subscription ends on ${fmtDate(u.period_end)}; you then move to the free plan.`)
      : null,
    h(
      'div',
      { class: 'actions' },
      topPlan && !u.contract
        ? null
        : h(
            'button',
            { type: 'button', class: l === 'ok' || l === 'over' || u.contract ? 'btn secondary' : 'btn primary', 'data-testid': 'upgrade', onclick: onUpgrade, 'aria-haspopup': 'dialog' },
            u.contract ? 'Change plan' : 'Upgrade plan',
          ),
      billing && u.plan !== 'free' ? h('button', { type: 'button', class: 'btn ghost', onclick: onPortal }, 'Manage billing') : null,
    ),
  );
}

/** The compact display: inline used / limit, mini bar, upgrade button when at or over the limit. */
export function compactDisplay(u, { onUpgrade, topPlan = false } = {}) {
  const l = level(u);
  return h(
    'div',
    { class: 'compact', 'data-level': l, 'data-testid': 'compact' },
    h('span', { class: 'compact-label' }, 'API calls'),
    h(
      'span',
      { class: 'compact-nums' },
      h('span', { 'data-testid': 'compact-used' }, fmtInt(u.used)),
      '/',
      h('span', { 'data-testid': 'compact-limit' }, fmtLimit(u.limit)),
    ),
    bar(u, { mini: true }),
    l === 'limit' && !topPlan
      ? h('button', { type: 'button', class: 'btn primary small', 'data-testid': 'compact-upgrade', onclick: onUpgrade, 'aria-haspopup': 'dialog' }, 'Upgrade')
      : null,
  );
}

// ---- endpoints and charts ----------------------------------------------------------------------

// Okabe-Ito based palette: distinguishable with the common colour-vision deficiencies.
const PALETTE = ['#0072b2', '#d55e00', '#009e73', '#cc79a7', '#56b4e9', '#e69f00', '#6b7280', '#8c564b'];
const colors = new Map();

/** A stable colour per endpoint name (in order of first appearance). */
export function color(endpoint) {
  if (!colors.has(endpoint)) colors.set(endpoint, PALETTE[colors.size % PALETTE.length]);
  return colors.get(endpoint);
}

/** Display name of an endpoint (the empty dimension is "other"). */
export const epName = (e) => (e ? e : 'other');

/** Per-endpoint table of the period's usage. */
export function endpointTable(byEndpoint, total) {
  const rows = Object.entries(byEndpoint || {}).sort((a, b) => b[1] - a[1]);
  const sum = rows.reduce((t, [, v]) => t + v, 0) || 1;
  if (rows.length === 0) return h('p', { class: 'empty' }, 'No calls recorded in this period yet.');
  return h(
    'table',
    { class: 'endpoints' },
    h('caption', { class: 'sr-only' }, 'Calls by endpoint this period'),
    h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'Endpoint'), h('th', { scope: 'col', class: 'num' }, 'Calls'), h('th', { scope: 'col' }, h('span', { class: 'sr-only' }, 'Share')))),
    h(
      'tbody',
      {},
      rows.map(([ep, v]) => {
        const share = h('div', { class: 'share-fill' });
        share.style.width = `${(v / sum) * 100}%`;
        share.style.background = color(ep);
        return h(
          'tr',
          { 'data-endpoint': ep },
          h('th', { scope: 'row' }, swatch(ep), epName(ep)),
          h('td', { class: 'num', 'data-testid': 'endpoint-calls' }, fmtInt(v)),
          h('td', { class: 'share' }, h('div', { class: 'share-track', 'aria-hidden': 'true' }, share), h('span', { class: 'share-pct' }, fmtPct((v / sum) * 100))),
        );
      }),
    ),
    total !== undefined
      ? h('tfoot', {}, h('tr', {}, h('th', { scope: 'row' }, 'Total'), h('td', { class: 'num', 'data-testid': 'endpoint-total' }, fmtInt(total)), h('td', {})))
      : null,
  );
}

/** Whole-number axis ticks from 0 covering `v`: a step of 1, 2 or 5 × 10^k, at most 5 steps. */
function ticks(v) {
  const top = Math.max(v, 4);
  for (let p = 1; ; p *= 10) {
    for (const m of [1, 2, 5]) {
      const step = m * p;
      if (Math.ceil(top / step) <= 5) return Array.from({ length: Math.ceil(top / step) + 1 }, (_, i) => i * step);
    }
  }
}

/**
 * A stacked bar chart drawn as inline SVG, with a data table for screen readers and keyboard
 * users. `buckets`: [{key, label, short, values: {endpoint: n}}]; `endpoints`: stacking order.
 */
export function stackedChart({ id, title, buckets, endpoints, every = 1, unit = 'calls' }) {
  // Narrow screens get a narrower drawing (larger text once scaled) and fewer labels.
  const narrow = window.innerWidth < 600;
  const W = narrow ? 360 : 640;
  if (narrow) every *= 2;
  const H = 220;
  const pad = { l: 44, r: 24, t: 10, b: 26 };
  const totals = buckets.map((b) => endpoints.reduce((t, e) => t + (b.values[e] || 0), 0));
  const grand = totals.reduce((a, b) => a + b, 0);
  const marks = ticks(Math.max(0, ...totals));
  const max = marks[marks.length - 1];
  const iw = W - pad.l - pad.r;
  const ih = H - pad.t - pad.b;
  const step = iw / Math.max(1, buckets.length);
  const bw = Math.max(2, step * 0.7);
  const y = (v) => pad.t + ih - (v / max) * ih;
  const grid = marks.map((v) =>
    s('g', { class: 'grid' }, s('line', { x1: pad.l, x2: W - pad.r, y1: y(v), y2: y(v) }), s('text', { x: pad.l - 6, y: y(v) + 4, 'text-anchor': 'end' }, fmtInt(v))),
  );
  const bars = buckets.map((b, i) => {
    let acc = 0;
    const x = pad.l + i * step + (step - bw) / 2;
    const parts = endpoints
      .filter((e) => b.values[e])
      .map((e) => {
        const v = b.values[e];
        const r = s('rect', { x: x.toFixed(1), y: y(acc + v).toFixed(1), width: bw.toFixed(1), height: Math.max(0.5, (v / max) * ih).toFixed(1), fill: color(e) });
        acc += v;
        return r;
      });
    const detail = endpoints.filter((e) => b.values[e]).map((e) => `${epName(e)} ${fmtInt(b.values[e])}`).join(', ');
    return s('g', { class: 'col', 'data-key': b.key }, s('title', {}, `${b.label}: ${fmtInt(totals[i])} ${unit}${detail ? ` (${detail})` : ''}`), parts);
  });
  const labels = buckets.map((b, i) =>
    i % every === 0 || i === buckets.length - 1 ? s('text', { class: 'xlabel', x: (pad.l + i * step + step / 2).toFixed(1), y: H - 8, 'text-anchor': 'middle' }, b.short) : null,
  );
  const peak = Math.max(0, ...totals);
  const peakAt = buckets[totals.indexOf(peak)];
  const summary = `${title}: ${plural(grand, unit.replace(/s$/, ''), unit)} in total${peak > 0 ? `, most on ${peakAt.label} (${fmtInt(peak)})` : ''}.`;
  const svg = s(
    'svg',
    { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-labelledby': `${id}-desc`, class: 'chart', 'data-testid': `${id}-chart`, focusable: 'false' },
    s('title', { id: `${id}-desc` }, summary),
    grid,
    bars,
    labels,
  );
  const table = h(
    'table',
    { class: 'data-table', id: `${id}-table`, 'data-testid': `${id}-table`, hidden: true },
    h('caption', {}, title),
    h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'When'), endpoints.map((e) => h('th', { scope: 'col', class: 'num' }, epName(e))), h('th', { scope: 'col', class: 'num' }, 'Total'))),
    h(
      'tbody',
      {},
      buckets.map((b, i) =>
        h('tr', { 'data-key': b.key }, h('th', { scope: 'row' }, b.label), endpoints.map((e) => h('td', { class: 'num' }, fmtInt(b.values[e] || 0))), h('td', { class: 'num', 'data-testid': 'bucket-total' }, fmtInt(totals[i]))),
      ),
    ),
    h('tfoot', {}, h('tr', {}, h('th', { scope: 'row' }, 'Total'), endpoints.map(() => h('td', {})), h('td', { class: 'num', 'data-testid': `${id}-total` }, fmtInt(grand)))),
  );
  const toggle = h(
    'button',
    {
      type: 'button',
      class: 'btn link small',
      'aria-expanded': 'false',
      'aria-controls': `${id}-table`,
      onclick: (ev) => {
        const open = table.hidden;
        table.hidden = !open;
        ev.currentTarget.setAttribute('aria-expanded', String(open));
        ev.currentTarget.textContent = open ? 'Hide table' : 'Show as table';
      },
    },
    'Show as table',
  );
  return h('figure', { class: 'chart-fig', 'data-total': grand }, h('div', { class: 'chart-head' }, h('figcaption', { id: `${id}-title` }, title, h('span', { class: 'chart-total' }, ` · ${plural(grand, unit.replace(/s$/, ''), unit)}`)), toggle), svg, table);
}

/** Legend of endpoint colours. */
export function legend(endpoints) {
  return h(
    'ul',
    { class: 'legend', 'aria-label': 'Endpoints' },
    endpoints.map((e) => h('li', {}, swatch(e), epName(e))),
  );
}

/** A colour square of an endpoint (styled through the CSSOM: the CSP allows no style attribute). */
export function swatch(endpoint) {
  const sw = h('span', { class: 'swatch', 'aria-hidden': 'true' });
  sw.style.background = color(endpoint);
  return sw;
}
