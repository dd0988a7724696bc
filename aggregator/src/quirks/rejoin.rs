//! Rejoining the group after owning no partition for a while: tansu (the local broker) can complete
//! a rebalance that gives every partition to a member that has just died and never rebalance again
//! when its session expires, leaving the live member idle.

use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};

use crate::metrics::{Metrics, ReasonLabels};

/// Since when a member has owned no partition, and after how long it rejoins.
#[derive(Debug)]
pub(crate) struct IdleRejoin {
    after: Duration,
    idle_since: Option<Instant>,
}

impl IdleRejoin {
    /// Rejoins after owning no partition for `after`; zero = never.
    pub(crate) fn new(after: Duration) -> Self {
        Self {
            after,
            idle_since: None,
        }
    }

    /// Whether it ever rejoins.
    pub(crate) fn is_enabled(&self) -> bool {
        !self.after.is_zero()
    }

    /// Whether to rejoin now, given whether the member owns a partition at `now`; the idle time so
    /// far when it is due (the clock then starts again).
    fn due(&mut self, owns_any: bool, now: Instant) -> Option<Duration> {
        if !self.is_enabled() || owns_any {
            self.idle_since = None;
            return None;
        }
        let idle = now.saturating_duration_since(*self.idle_since.get_or_insert(now));
        if idle < self.after {
            return None;
        }
        self.idle_since = None;
        Some(idle)
    }

    /// Leaves and subscribes to `topics` again when `consumer` has owned no partition (`owns_any`
    /// is false) for the set time.
    pub(crate) fn check<C: ConsumerContext + 'static>(
        &mut self,
        owns_any: bool,
        consumer: &StreamConsumer<C>,
        topics: &[&str],
        metrics: &Metrics,
    ) {
        let Some(idle) = self.due(owns_any, Instant::now()) else {
            return;
        };
        tracing::warn!(
            idle_secs = idle.as_secs(),
            "no partitions assigned; rejoining the group"
        );
        metrics
            .rebalances
            .get_or_create(&ReasonLabels {
                reason: "rejoin_idle".into(),
            })
            .inc();
        consumer.unsubscribe();
        if let Err(e) = consumer.subscribe(topics) {
            tracing::error!(error = %e, "subscribing again failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_member_rejoins_after_the_set_time_and_an_owning_one_never() {
        let t = Instant::now();
        let after = Duration::from_secs(20);
        let mut r = IdleRejoin::new(after);
        assert!(r.is_enabled());
        assert_eq!(r.due(false, t), None, "idle from now on");
        assert_eq!(r.due(false, t + after / 2), None);
        assert_eq!(r.due(false, t + after), Some(after));
        // The clock starts again after a rejoin, and owning a partition resets it.
        assert_eq!(r.due(false, t + after + after / 2), None);
        assert_eq!(r.due(true, t + 3 * after), None);
        assert_eq!(r.due(false, t + 3 * after), None);
        assert_eq!(r.due(false, t + 4 * after), Some(after));
    }

    #[test]
    fn zero_means_never() {
        let t = Instant::now();
        let mut r = IdleRejoin::new(Duration::ZERO);
        assert!(!r.is_enabled());
        for later in [0, 1, 3_600] {
            assert_eq!(r.due(false, t + Duration::from_secs(later)), None);
        }
    }
}
