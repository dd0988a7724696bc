// The package's example React page (the seed application's shape): a header with the compact
// UsageDisplay, the full display, an "Analyze" action that runs checkUsageBeforeRequest() before
// and trackApiUsage('analyze') after its call, and the UpgradeModal opened at the limit or by the
// upgrade buttons. The page's server proxies /api to the ingest and /billing to billing-sync (one
// origin, no CORS). The key comes from the URL fragment: `#key=...` (a demo; an application
// would use a session).

import { StrictMode, useState } from 'react';
import { createRoot } from 'react-dom/client';

import { MeteringClient, MeteringError } from '../src/index.js';
import { UpgradeModal, UsageDisplay, UsageTrackingProvider, useUsageTracking } from '../src/react.js';

const params = new URLSearchParams(location.hash.slice(1));
// Kept for the tab, so the page still has it when Stripe Checkout sends the customer back.
if (params.get('key')) sessionStorage.setItem('metering-key', params.get('key') ?? '');
const client = new MeteringClient({ baseUrl: '/api', billingUrl: '/billing', apiKey: () => sessionStorage.getItem('metering-key') ?? '' });

function Analyzer({ openUpgrade }: { openUpgrade: () => void }) {
  const tracking = useUsageTracking();
  const { usage, subscription, loading, canMakeRequest, checkUsageBeforeRequest, trackApiUsage, refreshUsage } = tracking;
  const [log, setLog] = useState<string[]>([]);
  const analyze = async () => {
    if (!(await checkUsageBeforeRequest())) {
      setLog((l) => [...l, 'refused before the call: limit reached']);
      return;
    }
    // The service's own call would go here; on success it is tracked.
    try {
      const t = await trackApiUsage('analyze');
      setLog((l) => [...l, `analyze tracked (${t.usage.used} used)`]);
    } catch (e) {
      setLog((l) => [...l, `not tracked: ${e instanceof MeteringError ? e.code : String(e)}`]);
      if (e instanceof MeteringError && e.code === 'limit_reached') openUpgrade();
    }
  };
  return (
    <main style={{ padding: 24, display: 'grid', gap: 16, maxWidth: 720 }}>
      <p data-testid="hook-state">
        loading: <span data-testid="hook-loading">{String(loading)}</span> · canMakeRequest:{' '}
        <span data-testid="hook-can">{String(canMakeRequest)}</span> · subscription:{' '}
        <span data-testid="hook-subscription">{subscription ? `${subscription.plan} (${subscription.status})` : 'none'}</span>
      </p>
      <UsageDisplay onUpgradeClick={openUpgrade} />
      <div style={{ display: 'flex', gap: 8 }}>
        <button type="button" onClick={() => void analyze()} data-testid="analyze">Analyze a sample</button>
        <button type="button" onClick={() => void refreshUsage()} data-testid="refresh">Refresh</button>
      </div>
      <ol data-testid="log">{log.map((l, i) => <li key={i}>{l}</li>)}</ol>
      <span hidden data-testid="hook-used">{usage?.used ?? ''}</span>
      <span hidden data-testid="hook-keys">{Object.keys(tracking).sort().join(',')}</span>
    </main>
  );
}

function Page() {
  const [open, setOpen] = useState(false);
  return (
    <UsageTrackingProvider client={client} onLimitReached={() => setOpen(true)}>
      <Shell open={open} setOpen={setOpen} />
    </UsageTrackingProvider>
  );
}

function Shell({ open, setOpen }: { open: boolean; setOpen: (v: boolean) => void }) {
  const { usage } = useUsageTracking();
  return (
    <>
      <header style={{ display: 'flex', justifyContent: 'space-between', alignItems: 'center', padding: '12px 24px', borderBottom: '1px solid #ddd', font: '16px system-ui, sans-serif' }}>
        <strong>Threat Analysis API</strong>
        <div style={{ width: 300 }}><UsageDisplay compact onUpgradeClick={() => setOpen(true)} /></div>
      </header>
      <Analyzer openUpgrade={() => setOpen(true)} />
      <UpgradeModal isOpen={open} onClose={() => setOpen(false)} currentPlan={usage?.plan} usage={usage} />
    </>
  );
}

const root = document.getElementById('root');
if (root) createRoot(root).render(<StrictMode><Page /></StrictMode>);
