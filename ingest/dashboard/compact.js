// The embeddable compact display: signs in with the `#token=` (customer key or session) or
// `#link=` (signed link, exchanged once) it is framed with, shows used / limit with a mini bar
// (amber, without an upgrade prompt, over the limit of an overage plan),
// refreshes every 30 s, tells the framing page its height, and on "Upgrade" posts a
// `metering-usage:upgrade` message to it (or opens the dashboard when not framed).

import { call, compactDisplay, exchangeLink, h, planTerms, signInMessage, takeHashCredential } from './ui.js';

const CURRENT = 'metering.compact.current';
const REFRESH_MS = 30000;
const root = document.getElementById('compact-root');
const framed = window.parent !== window;

function post(msg) {
  if (framed) window.parent.postMessage(msg, '*');
}

// Tells the framing page the size the display needs (the iframe is resized to it).
function size() {
  const box = root.firstElementChild ? root.firstElementChild.getBoundingClientRect() : { width: 0 };
  post({ type: 'metering-usage:size', height: Math.ceil(document.documentElement.getBoundingClientRect().height), width: Math.ceil(box.width) + 6 });
}
new ResizeObserver(size).observe(root);

async function credential() {
  const { link, token } = takeHashCredential();
  if (token) {
    sessionStorage.setItem(CURRENT, token);
    return token;
  }
  if (link) {
    // Links work once: a re-framed widget reuses the session its link gave.
    const byLink = `metering.compact.link.${link.slice(-32)}`;
    const known = sessionStorage.getItem(byLink);
    if (known) {
      sessionStorage.setItem(CURRENT, known);
      return known;
    }
    const s = await exchangeLink(link);
    sessionStorage.setItem(byLink, s.token);
    sessionStorage.setItem(CURRENT, s.token);
    return s.token;
  }
  return sessionStorage.getItem(CURRENT);
}

function message(text) {
  root.replaceChildren(h('p', { class: 'compact-msg', role: 'alert' }, text));
}

async function show(token) {
  const [u, plans] = await Promise.all([call('', token, '/usage'), call('', null, '/v1/plans').catch(() => null)]);
  // The plan's terms: an overage plan is not blocked at its limit (no upgrade prompt then).
  const full = await call('', token, `/v1/customers/${encodeURIComponent(u.customer)}/usage`).catch(() => null);
  if (full) Object.assign(u, planTerms(full));
  const cur = plans && plans.plans.find((p) => p.key === u.plan);
  const top = u.limit === null || (!!cur && plans.plans.every((p) => p.price_cents <= cur.price_cents));
  root.replaceChildren(
    compactDisplay(u, {
      topPlan: top,
      onUpgrade: () => {
        if (framed) post({ type: 'metering-usage:upgrade', plan: u.plan, used: u.used, limit: u.limit });
        else window.open('/dashboard/#upgrade', '_blank', 'noopener');
      },
    }),
  );
  size();
  post({ type: 'metering-usage:usage', plan: u.plan, used: u.used, limit: u.limit, warning: u.warning, blocked: u.blocked });
}

async function main() {
  let token;
  try {
    token = await credential();
  } catch (e) {
    return message(signInMessage(e));
  }
  if (!token) return message('Not signed in.');
  const tick = async () => {
    try {
      await show(token);
    } catch (e) {
      message(signInMessage(e));
      if (e.status === 401 || e.status === 403 || e.status === 400) return;
    }
    setTimeout(tick, REFRESH_MS);
  };
  tick();
}

main();
