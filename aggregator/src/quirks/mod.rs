//! The local broker's quirks (tansu 0.6) and the consumers' workarounds for them, used by the
//! aggregator's consumer and by the notifier's.
//!
//! - [`rewind`]: resume a little before the stored or committed offset (a fetch from inside a
//!   record batch is answered with the next batch).
//! - [`rejoin`]: rejoin the group after owning no partition for a while (a rebalance can leave a
//!   live member without partitions).
//! - [`gaps`]: read a partition again after a fetch that skipped messages.

pub mod gaps;
pub(crate) mod rejoin;
pub(crate) mod rewind;
