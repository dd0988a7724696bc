//! Building and running billing-sync: migrations, topics, keys, Stripe client, producer, HTTP
//! server, the work group membership (when `work.enabled`), background jobs (key refresh,
//! reconciliation, grace periods, usage report and usage reconciliation), and a graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use platform::keys::KeyStore;
use platform::producer::EventProducer;
use platform::sessions::Signer;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::Result;
use crate::billing::Billing;
use crate::config::Config;
use crate::http::{AppState, router};
use crate::metrics::Metrics;
use crate::ownership::{Member, Ownership};
use crate::plans::Plans;
use crate::store::Store;
use crate::stripe_api::StripeApi;

/// A built billing-sync, bound to its port, not yet serving.
#[derive(Debug)]
pub struct App {
    listener: TcpListener,
    billing: Arc<Billing>,
    keys: KeyStore,
    /// The work group membership (`work.enabled`).
    member: Option<Member>,
    /// Customer emails (always built: the preview works with `emails.enabled` off).
    emails: Arc<mailer::Mailer>,
}

/// Runs `job` every `every` until `cancel` fires (first run after one interval).
fn every<F, Fut>(
    tasks: &mut JoinSet<()>,
    cancel: &CancellationToken,
    name: &'static str,
    every: Duration,
    mut job: F,
) where
    F: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send,
{
    let cancel = cancel.clone();
    tasks.spawn(async move {
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                () = tokio::time::sleep(every) => {
                    let run = job();
                    tokio::select! {
                        () = cancel.cancelled() => break,
                        r = run => if let Err(e) = r { crate::usage::log_error(name, &e) },
                    }
                }
            }
        }
    });
}

impl App {
    /// Validates the config, applies migrations (if configured), creates topics, loads keys,
    /// resolves plan prices and binds the listener.
    pub async fn build(config: Config) -> Result<Self> {
        config.validate()?;
        config.check_secrets()?;
        let catalog = Arc::new(schemas::Catalog::load(config.catalog.as_deref())?);
        let plans = Plans::from_env(&catalog, &config.stripe.prices)?;
        if plans.all().is_empty() {
            tracing::warn!(
                "no plan has a Stripe price: /subscription/create will refuse every plan"
            );
        }
        if let Some(p) = &config.payment_failure.downgrade_to
            && catalog.plan(p).is_none()
        {
            return Err(crate::Error::Config(format!(
                "payment_failure.downgrade_to {p:?} is not a plan"
            )));
        }
        if config.clickhouse.migrate {
            schemas::migrate::run(&config.clickhouse).await?;
        }
        if config.kafka.create_topics {
            schemas::kafka::ensure_topics(&config.kafka, &config.topics).await?;
            if config.work.enabled {
                schemas::kafka::ensure_topic(
                    &config.kafka,
                    &config.topics.work,
                    config.work.partitions,
                )
                .await?;
            }
        }
        let ownership = if config.work.enabled {
            // The topic's count decides, so that instances configured differently still agree.
            let n = crate::ownership::partition_count(&config).await?;
            if n != config.work.partitions {
                tracing::warn!(
                    topic = %config.topics.work,
                    partitions = n,
                    configured = config.work.partitions,
                    "the work topic's partition count differs from work.partitions; the topic's is used"
                );
            }
            Ownership::split(n, Duration::from_millis(config.work.takeover_delay_ms))
        } else {
            Ownership::everything()
        };
        let mut keys = KeyStore::new(config.clickhouse.client()).with_limits(&config.limits);
        if !secrecy::ExposeSecret::expose_secret(&config.dashboard_secret).is_empty() {
            keys = keys.with_sessions(Arc::new(Signer::new(&config.dashboard_secret)));
        }
        keys.refresh().await?;
        let producer = EventProducer::new(
            &config.kafka,
            config.topics.clone(),
            Duration::from_millis(config.produce_timeout_ms),
        )?;
        let metrics = Arc::new(Metrics::default());
        let stripe = StripeApi::new(&config.stripe, metrics.clone())?;
        let listener = TcpListener::bind(config.listen).await?;
        let store = Store::new(config.clickhouse.client());
        let emails = Arc::new(
            mailer::Mailer::new(
                config.emails.clone(),
                config.clickhouse.client(),
                format!("billing-sync-{}", uuid::Uuid::new_v4().simple()),
            )
            .map_err(crate::emails::mail_err)?,
        );
        let member = if config.work.enabled {
            Some(Member::new(&config, ownership.clone(), metrics.clone())?)
        } else {
            None
        };
        let billing = Arc::new(
            Billing::new(
                Arc::new(config),
                catalog,
                plans,
                store,
                stripe,
                producer,
                metrics,
            )
            .with_ownership(ownership),
        );
        // What Stripe bills must be what the catalog says (the projection and the dashboard use
        // the catalog): a price that differs refuses the start; Stripe unreachable does not.
        match billing.price_differences().await {
            Ok(d) if d.is_empty() => {}
            Ok(d) => {
                return Err(crate::Error::Config(format!(
                    "Stripe prices differ from the catalog: {}",
                    d.join("; ")
                )));
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not check the Stripe prices against the catalog");
            }
        }
        Ok(Self {
            listener,
            billing,
            keys,
            member,
            emails,
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| self.billing.config.listen)
    }

    /// The services (tests read metrics and run jobs through it).
    pub fn billing(&self) -> Arc<Billing> {
        self.billing.clone()
    }

    /// The customer emails' mailer (tests run dispatch rounds and read its metrics through it).
    pub fn mailer(&self) -> Arc<mailer::Mailer> {
        self.emails.clone()
    }

    /// Serves and runs the background jobs until `cancel` fires, then drains within the grace period.
    pub async fn run(self, cancel: CancellationToken) -> Result<()> {
        let billing = self.billing;
        let config = billing.config.clone();
        let grace = Duration::from_secs(config.shutdown_grace_secs);
        let mut tasks = JoinSet::new();
        if let Some(member) = self.member {
            // Leaves the group when `cancel` fires: the other instances take its customers over.
            let c = cancel.clone();
            tasks.spawn(async move {
                if let Err(e) = member.run(c).await {
                    tracing::error!(error = %e, "the work group membership ended; this instance bills nothing");
                }
            });
        }
        {
            let keys = self.keys.clone();
            every(
                &mut tasks,
                &cancel,
                "key_refresh",
                Duration::from_secs(config.key_refresh_secs),
                move || {
                    let keys = keys.clone();
                    async move { keys.refresh().await.map(|_| ()).map_err(Into::into) }
                },
            );
        }
        if config.reconcile.enabled {
            let b = billing.clone();
            every(
                &mut tasks,
                &cancel,
                "reconcile",
                Duration::from_secs(config.reconcile.interval_secs),
                move || {
                    let b = b.clone();
                    async move { b.reconcile().await.map(|_| ()) }
                },
            );
        }
        {
            let b = billing.clone();
            every(
                &mut tasks,
                &cancel,
                "grace",
                Duration::from_secs(config.payment_failure.check_interval_secs),
                move || {
                    let b = b.clone();
                    async move { b.check_grace().await.map(|_| ()) }
                },
            );
        }
        if config.usage.enabled {
            let (b, c) = (billing.clone(), cancel.clone());
            every(
                &mut tasks,
                &cancel,
                "usage_report",
                Duration::from_secs(config.usage.interval_secs),
                move || {
                    let (b, c) = (b.clone(), c.clone());
                    async move { crate::usage::report(b, c).await.map(|_| ()) }
                },
            );
        }
        if config.usage.reconcile_enabled {
            let b = billing.clone();
            every(
                &mut tasks,
                &cancel,
                "usage_reconcile",
                Duration::from_secs(config.usage.reconcile_interval_secs),
                move || {
                    let b = b.clone();
                    async move { crate::usage::reconcile(&b, None, None).await.map(|_| ()) }
                },
            );
        }
        if config.emails.enabled {
            crate::reminders::start(&mut tasks, &cancel, &billing, &self.emails);
        }
        tracing::info!(addr = %self.listener.local_addr()?, "billing-sync listening");
        let state = AppState {
            billing: billing.clone(),
            keys: self.keys,
            cancel: cancel.clone(),
            emails: Some(self.emails.clone()),
        };
        let shutdown = cancel.clone();
        axum::serve(self.listener, router(state))
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await?;
        cancel.cancel();
        billing.producer.flush(grace).await;
        let _ =
            tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
        tracing::info!("billing-sync stopped");
        Ok(())
    }
}
