/* <metering-usage> web component: embeds the metering API's compact usage display in any page.
 *
 *   <script src="https://API/dashboard/embed.js" defer></script>
 *   <metering-usage link="mdl_..."></metering-usage>      (a signed link from the admin endpoint)
 *   <metering-usage token="mk_..."></metering-usage>      (or a customer-scoped read key / session)
 *
 * Attributes: `link` or `token`; `api` (the API's base URL; default: where this script came from);
 * `upgrade-href` (where "Upgrade" goes; default: the dashboard's upgrade modal in a new tab);
 * `label` (the iframe's accessible name). Events (bubbling): `metering-usage` (detail: plan, used,
 * limit, warning, blocked) after every refresh, and `metering-upgrade` (cancelable: call
 * preventDefault() to handle the upgrade yourself). The display runs in an iframe served by the
 * API, so the host page needs no CORS and shares no styles or scripts with it. See docs/dashboard.md. */
(function () {
  'use strict';
  if (!window.customElements || customElements.get('metering-usage')) return;
  var script = document.currentScript;
  var defaultBase = script && script.src ? new URL(script.src, location.href).origin : location.origin;

  class MeteringUsage extends HTMLElement {
    static get observedAttributes() {
      return ['link', 'token', 'api'];
    }

    constructor() {
      super();
      this.onMessage = this.onMessage.bind(this);
    }

    connectedCallback() {
      window.addEventListener('message', this.onMessage);
      this.render();
    }

    disconnectedCallback() {
      window.removeEventListener('message', this.onMessage);
    }

    attributeChangedCallback() {
      if (this.isConnected) this.render();
    }

    base() {
      return (this.getAttribute('api') || defaultBase).replace(/\/+$/, '');
    }

    render() {
      var root = this.shadowRoot || this.attachShadow({ mode: 'open' });
      var params = new URLSearchParams();
      if (this.getAttribute('token')) params.set('token', this.getAttribute('token'));
      else if (this.getAttribute('link')) params.set('link', this.getAttribute('link'));
      var style = document.createElement('style');
      style.textContent = ':host{display:inline-block;max-width:100%;vertical-align:middle}' +
        'iframe{display:block;border:0;width:18rem;max-width:100%;height:2.9rem;background:transparent;color-scheme:normal}';
      var frame = document.createElement('iframe');
      frame.title = this.getAttribute('label') || 'API usage';
      frame.setAttribute('loading', 'eager');
      frame.src = this.base() + '/dashboard/compact#' + params.toString();
      this.frame = frame;
      root.replaceChildren(style, frame);
    }

    onMessage(ev) {
      if (!this.frame || ev.source !== this.frame.contentWindow || ev.origin !== new URL(this.base(), location.href).origin) return;
      var d = ev.data || {};
      if (d.type === 'metering-usage:size' && d.height > 0) {
        this.frame.style.height = Math.min(d.height, 400) + 'px';
        if (d.width > 0) this.frame.style.width = Math.min(d.width, 1200) + 'px';
      } else if (d.type === 'metering-usage:usage') {
        this.dispatchEvent(new CustomEvent('metering-usage', { bubbles: true, detail: d }));
      } else if (d.type === 'metering-usage:upgrade') {
        var go = this.dispatchEvent(new CustomEvent('metering-upgrade', { bubbles: true, cancelable: true, detail: d }));
        if (go) window.open(this.getAttribute('upgrade-href') || this.base() + '/dashboard/#upgrade', '_blank', 'noopener');
      }
    }
  }

  customElements.define('metering-usage', MeteringUsage);
})();
