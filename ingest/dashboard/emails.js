// The dashboard's "Emails" panel (issue 22): the customer's choices of the emails billing-sync
// sends it (usage warnings, receipts, renewal reminders, failed payments, plan changes,
// cancellations), one switch per kind, read and saved through billing-sync's
// /v1/email-preferences (forwarded by the API under /dashboard/billing). Receipts are always on.
// A failed save puts the switch back and says exactly what was refused (message, field, code,
// HTTP status).

import { h } from './ui.js';

/** What each kind is, in a sentence (the API gives the label). */
const ABOUT = {
  usage_warning: 'When your usage reaches 75 %, 90 % and 100 % of your plan’s limit.',
  receipt: 'A receipt for every payment, with a link to the invoice. Required, cannot be turned off.',
  renewal_reminder: 'A few days before your subscription renews.',
  payment_failed: 'When a payment fails: the grace period and what happens next.',
  plan_changed: 'When your plan changes.',
  cancelled: 'When your subscription is cancelled or ends.',
};

/** The text of a failed request: the API's message, the field, the code and the HTTP status. */
export function describeError(e) {
  if (e.status === 0) return `Billing is not reachable: ${e.message}.`;
  const field = e.field ? ` (field \`${e.field}\`)` : '';
  return `${e.message}${field} [${e.code}, HTTP ${e.status}]`;
}

/**
 * Mounts the panel into `el` (a <section>), using `billing(path, opts)` to call billing-sync.
 * Returns `{ load }`; `load()` (re)reads the choices.
 */
export function emailsPanel(el, billing) {
  const state = { prefs: null, saving: new Set(), status: null };
  const title = () => h('h2', { id: 'emails-title' }, 'Emails');

  function statusLine() {
    if (!state.status) return h('p', { class: 'emails-status', role: 'status', 'data-testid': 'emails-status' });
    return h('p', { class: `emails-status ${state.status.kind}`, role: state.status.kind === 'error' ? 'alert' : 'status', 'data-testid': 'emails-status' }, state.status.text);
  }

  function row(k) {
    const id = `email-${k.kind}`;
    const about = `${id}-about`;
    const busy = state.saving.has(k.kind);
    return h(
      'li',
      { class: 'email-kind', 'data-kind': k.kind, 'data-testid': `email-kind-${k.kind}` },
      h(
        'div',
        { class: 'email-text' },
        h('label', { for: id, class: 'email-label' }, k.label),
        h('p', { id: about, class: 'hint' }, ABOUT[k.kind] || ''),
      ),
      h(
        'div',
        { class: 'email-switch' },
        h('input', {
          type: 'checkbox',
          role: 'switch',
          id,
          class: 'switch',
          checked: k.subscribed,
          disabled: !k.can_unsubscribe || busy,
          'aria-describedby': about,
          'data-testid': `email-toggle-${k.kind}`,
          onchange: (ev) => save(k, ev.currentTarget.checked),
        }),
        h('span', { class: 'email-state', 'data-testid': `email-state-${k.kind}`, 'aria-hidden': 'true' }, !k.can_unsubscribe ? 'Always on' : busy ? 'Saving…' : k.subscribed ? 'On' : 'Off'),
      ),
    );
  }

  function render() {
    const p = state.prefs;
    const address = p.email
      ? h('p', { class: 'muted', 'data-testid': 'emails-address' }, 'Emails go to ', h('strong', {}, p.email), '.')
      : h('p', { class: 'muted', 'data-testid': 'emails-address' }, 'No email address is on file yet: your administrator or your payment details set one.');
    el.replaceChildren(
      h('div', { class: 'card-head' }, title()),
      address,
      h('ul', { class: 'email-kinds', 'aria-labelledby': 'emails-title', 'data-testid': 'email-kinds' }, ...p.kinds.map(row)),
      statusLine(),
    );
  }

  function message(text) {
    el.replaceChildren(h('div', { class: 'card-head' }, title()), h('p', { class: 'muted', 'data-testid': 'emails-note' }, text));
  }

  async function load() {
    el.hidden = false;
    try {
      state.prefs = await billing('/v1/email-preferences');
    } catch (e) {
      if (e.code === 'emails_disabled') return message('Emails to customers are not turned on for this service.');
      if (e.code === 'billing_unavailable') return message('Billing is not configured, so no emails are sent.');
      return message(`Your email choices could not be loaded: ${describeError(e)}`);
    }
    render();
  }

  async function save(k, on) {
    state.saving.add(k.kind);
    state.status = null;
    render();
    try {
      state.prefs = await billing('/v1/email-preferences', { method: 'PUT', body: { preferences: { [k.kind]: on } } });
      const now = state.prefs.kinds.find((x) => x.kind === k.kind);
      state.status = { kind: 'ok', text: `Saved: ${k.label} ${now && now.subscribed ? 'on' : 'off'}.` };
    } catch (e) {
      // The switch shows what is stored: the choice before the refused change.
      state.status = { kind: 'error', text: `${k.label} could not be turned ${on ? 'on' : 'off'}: ${describeError(e)}` };
    } finally {
      state.saving.delete(k.kind);
    }
    render();
    const again = el.querySelector(`[data-testid="email-toggle-${k.kind}"]`);
    if (again) again.focus();
  }

  return { load };
}
