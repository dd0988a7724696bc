//! The local broker's quirks (tansu 0.6) and the consumers' workarounds for them, used by the
//! aggregator's consumer and by the notifier's; `broker_quirks = "none"` turns them all off.
//!
//! - `rewind`: resume a little before the stored or committed offset (a fetch from inside a
//!   record batch is answered with the next batch).
//! - `rejoin`: rejoin the group after owning no partition for a while (a rebalance can leave a
//!   live member without partitions).
//! - [`gaps`]: read a partition again after a fetch that skipped messages.

pub mod gaps;
pub(crate) mod rejoin;
pub(crate) mod rewind;

use std::time::Duration;

use self::gaps::{Gaps, MAX_REREADS};
use self::rejoin::IdleRejoin;
use crate::config::{BrokerQuirks, Config};

/// Messages the notifier re-reads on assignment: alerts are produced one record per batch, so a
/// short rewind covers a retried batch.
const NOTIFIER_REWIND: i64 = 100;

/// The workarounds one consumer applies, as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Workarounds {
    /// Messages re-read before the resume offset on assignment (see `rewind`).
    pub(crate) rewind: i64,
    /// Rejoin after owning no partition this long; zero = never (see `rejoin`).
    rejoin_idle: Duration,
    /// Times a partition is read again from one gap before the gap is accepted (see [`gaps`]).
    gap_rereads: u32,
}

impl Workarounds {
    /// No workaround (a Kafka deployment).
    const NONE: Self = Self {
        rewind: 0,
        rejoin_idle: Duration::ZERO,
        gap_rereads: 0,
    };

    /// The aggregator's consumer: `resume_rewind`, `rejoin_idle_secs` and the gap re-reads.
    pub(crate) fn aggregator(config: &Config) -> Self {
        match config.broker_quirks {
            BrokerQuirks::Tansu => Self {
                rewind: config.resume_rewind,
                rejoin_idle: Duration::from_secs(config.rejoin_idle_secs),
                gap_rereads: MAX_REREADS,
            },
            BrokerQuirks::None => Self::NONE,
        }
    }

    /// The notifier's consumer: a short rewind and the gap re-reads (it never rejoins).
    pub(crate) fn notifier(config: &Config) -> Self {
        match config.broker_quirks {
            BrokerQuirks::Tansu => Self {
                rewind: NOTIFIER_REWIND,
                rejoin_idle: Duration::ZERO,
                gap_rereads: MAX_REREADS,
            },
            BrokerQuirks::None => Self::NONE,
        }
    }

    /// The gap check, with these re-reads.
    pub(crate) fn gaps(&self) -> Gaps {
        Gaps::with_rereads(self.gap_rereads)
    }

    /// The idle rejoin, with this idle time.
    pub(crate) fn idle_rejoin(&self) -> IdleRejoin {
        IdleRejoin::new(self.rejoin_idle)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use rdkafka::Offset;

    use super::gaps::Verdict;
    use super::rewind::resume_at;
    use super::*;

    /// What a consumer with `w` does: where it resumes a partition whose stored offset is 50,000,
    /// whether it ever rejoins, and what it does with a message after a gap.
    fn behaviour(w: Workarounds) -> (Offset, bool, Verdict) {
        let mut gaps = w.gaps();
        let t = Instant::now();
        assert_eq!(gaps.observe("e", 0, 10, t), Verdict::Take);
        (
            resume_at(50_001, w.rewind),
            w.idle_rejoin().is_enabled(),
            gaps.observe("e", 0, 12, t),
        )
    }

    #[test]
    fn by_default_the_local_brokers_workarounds_are_on() {
        let config = Config::default();
        assert_eq!(config.broker_quirks, BrokerQuirks::Tansu);
        assert_eq!(
            behaviour(Workarounds::aggregator(&config)),
            (Offset::Offset(40_001), true, Verdict::Reread(11))
        );
        assert_eq!(
            behaviour(Workarounds::notifier(&config)),
            (Offset::Offset(49_901), false, Verdict::Reread(11))
        );
    }

    #[test]
    fn broker_quirks_none_turns_each_workaround_off() {
        // The fine-grained settings keep their (non-zero) defaults: the switch wins over them.
        let config = Config {
            broker_quirks: BrokerQuirks::None,
            ..Config::default()
        };
        assert!(config.resume_rewind > 0 && config.rejoin_idle_secs > 0);
        let off = (
            Offset::Offset(50_001),
            false,
            Verdict::TakeAfterGap { from: 11 },
        );
        assert_eq!(
            behaviour(Workarounds::aggregator(&config)),
            off,
            "aggregator"
        );
        assert_eq!(behaviour(Workarounds::notifier(&config)), off, "notifier");
    }

    #[test]
    fn with_the_local_broker_the_fine_grained_settings_count() {
        let config = Config {
            resume_rewind: 7,
            rejoin_idle_secs: 0,
            ..Config::default()
        };
        assert_eq!(
            behaviour(Workarounds::aggregator(&config)),
            (Offset::Offset(49_994), false, Verdict::Reread(11))
        );
    }
}
