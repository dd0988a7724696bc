//! The dedup index: a 128-bit fingerprint of the (tenant, customer, id) of every event stored from
//! each owned events partition within the dedup window, in memory, so that a batch's duplicates
//! are found without asking ClickHouse.
//!
//! ClickHouse stays the record: the index of a partition is loaded from `events_raw` the first
//! time a batch of that partition is written after an assignment or a failed flush (everything is
//! forgotten then, because a write may have landed although its answer was lost), and entries are
//! added only after ClickHouse acknowledged their insert. A partition's events all go to the one
//! owner of the partition, so no other writer can add ids behind the index's back while it is
//! owned.
//!
//! Why not a lookup in ClickHouse per batch (the earlier design): a sorted table answers a batch
//! of B random ids by reading about one granule (8,192 ids) per id and per part, up to the whole
//! index. With 50M ids in 35 daily partitions (82 parts) a 10-id batch took 0.2 s and a 1,000-id
//! batch 1.4 s, so a tenant sending 100 events/s could not be kept up with once its window filled.
//! Here a look-up costs one hash and one probe, whatever the window holds; the price is memory
//! (about 20 bytes per id of the window, see [`DedupIndex::bytes`]) and a load per assignment.
//!
//! An entry is one `u128`: the fingerprint's upper 104 bits and the arrival hour (24 bits, hours
//! since 1970) in the lower ones. Two different keys collide with probability about n²/2¹⁰⁵ for n
//! ids of one partition (10⁻⁹ for 300 billion ids).

use std::collections::HashMap;

use hashbrown::HashTable;
use hashbrown::hash_table::Entry;
use twox_hash::XxHash3_128;

/// Bits of an entry holding the arrival hour.
const HOUR_BITS: u32 = 24;
/// The arrival hour of an entry.
const HOUR_MASK: u128 = (1 << HOUR_BITS) - 1;

/// The fingerprint of an event's dedup key, (tenant, customer, id), as text or as the bytes of the
/// text. Each part is preceded by its length, so no two different keys are the same bytes.
pub fn fingerprint(
    tenant: impl AsRef<[u8]>,
    customer: impl AsRef<[u8]>,
    id: impl AsRef<[u8]>,
) -> u128 {
    let (tenant, customer, id) = (tenant.as_ref(), customer.as_ref(), id.as_ref());
    let mut stack = [0u8; 256];
    let len = 12 + tenant.len() + customer.len() + id.len();
    let mut heap = Vec::new();
    let buf: &mut [u8] = if len <= stack.len() {
        &mut stack[..len]
    } else {
        heap.resize(len, 0);
        &mut heap
    };
    let mut at = 0;
    for part in [tenant, customer, id] {
        buf[at..at + 4].copy_from_slice(&(part.len() as u32).to_le_bytes());
        at += 4;
        buf[at..at + part.len()].copy_from_slice(part);
        at += part.len();
    }
    XxHash3_128::oneshot(buf) & !HOUR_MASK
}

/// The arrival hour of a Unix time in seconds (0 before 1970).
pub fn hour_of(unix_seconds: i64) -> u32 {
    (unix_seconds.max(0) / 3600).min(HOUR_MASK as i64) as u32
}

fn table_hash(entry: &u128) -> u64 {
    (entry >> 64) as u64
}

fn same_key(a: u128, b: u128) -> bool {
    (a ^ b) & !HOUR_MASK == 0
}

/// The stored ids of one partition.
#[derive(Debug, Default)]
pub struct PartitionIds {
    table: HashTable<u128>,
}

impl PartitionIds {
    /// Room for `n` ids.
    pub fn with_capacity(n: usize) -> Self {
        Self {
            table: HashTable::with_capacity(n),
        }
    }

    /// Records `fingerprint` as stored at `hour` (the later hour wins if it is there already).
    pub fn insert(&mut self, fingerprint: u128, hour: u32) {
        let entry = fingerprint & !HOUR_MASK | u128::from(hour);
        // One probe for both cases (at millions of ids the table is mostly cache misses).
        match self
            .table
            .entry(table_hash(&entry), |e| same_key(*e, entry), table_hash)
        {
            Entry::Occupied(mut o) => {
                if (*o.get() & HOUR_MASK) < u128::from(hour) {
                    *o.get_mut() = entry;
                }
            }
            Entry::Vacant(v) => {
                v.insert(entry);
            }
        }
    }

    /// Whether `fingerprint` was stored at `since_hour` or later.
    pub fn contains(&self, fingerprint: u128, since_hour: u32) -> bool {
        self.table
            .find(table_hash(&fingerprint), |e| same_key(*e, fingerprint))
            .is_some_and(|e| (*e & HOUR_MASK) >= u128::from(since_hour))
    }

    /// Ids held.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether no id is held.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
}

/// The stored ids of every loaded partition of the events topic.
#[derive(Debug, Default)]
pub struct DedupIndex {
    partitions: HashMap<u32, PartitionIds, foldhash::fast::RandomState>,
    /// Entries older than this hour were dropped.
    expired_before: u32,
}

impl DedupIndex {
    /// The loaded ids of `partition`, if it is loaded.
    pub fn partition(&self, partition: u32) -> Option<&PartitionIds> {
        self.partitions.get(&partition)
    }

    /// The loaded ids of `partition`, for adding what a write stored.
    pub fn partition_mut(&mut self, partition: u32) -> Option<&mut PartitionIds> {
        self.partitions.get_mut(&partition)
    }

    /// Puts a partition's ids, as loaded from ClickHouse.
    pub fn load(&mut self, partition: u32, ids: PartitionIds) {
        self.partitions.insert(partition, ids);
    }

    /// Forgets every partition: each is loaded again before its next write.
    pub fn forget(&mut self) {
        self.partitions.clear();
    }

    /// Drops entries that arrived before `hour` (at most once an hour does any work).
    pub fn expire(&mut self, hour: u32) {
        if hour <= self.expired_before {
            return;
        }
        self.expired_before = hour;
        for ids in self.partitions.values_mut() {
            ids.table.retain(|e| (*e & HOUR_MASK) >= u128::from(hour));
        }
    }

    /// Ids held, over all partitions.
    pub fn len(&self) -> usize {
        self.partitions.values().map(PartitionIds::len).sum()
    }

    /// Whether no id is held.
    pub fn is_empty(&self) -> bool {
        self.partitions.values().all(PartitionIds::is_empty)
    }

    /// Heap bytes of the tables (16 per slot plus one control byte; slots are at most 7/8 full).
    pub fn bytes(&self) -> usize {
        self.partitions
            .values()
            .map(|p| p.table.allocation_size())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_differ_by_any_part_and_by_where_the_parts_split() {
        let a = fingerprint("t", "c", "id-1");
        assert_eq!(a, fingerprint("t", "c", "id-1"));
        assert_ne!(a, fingerprint("t", "c", "id-2"));
        assert_ne!(a, fingerprint("t", "c2", "id-1"));
        assert_ne!(a, fingerprint("t2", "c", "id-1"));
        assert_ne!(fingerprint("ab", "c", "x"), fingerprint("a", "bc", "x"));
        let long = "x".repeat(300);
        assert_eq!(fingerprint("t", &long, "1"), fingerprint("t", &long, "1"));
        assert_ne!(fingerprint("t", &long, "1"), fingerprint("t", &long, "2"));
        assert_eq!(a & HOUR_MASK, 0);
    }

    #[test]
    fn an_id_is_found_within_its_window_and_not_before_it() {
        let mut ids = PartitionIds::default();
        let f = fingerprint("t", "c", "e");
        ids.insert(f, 1000);
        assert!(ids.contains(f, 1000));
        assert!(ids.contains(f, 900));
        assert!(!ids.contains(f, 1001), "stored before the window");
        assert!(!ids.contains(fingerprint("t", "c", "other"), 0));
        // Stored again later (after its window): the later hour counts.
        ids.insert(f, 2000);
        assert!(ids.contains(f, 1500));
        ids.insert(f, 1200);
        assert!(
            ids.contains(f, 1500),
            "an earlier hour does not replace a later one"
        );
        assert_eq!(ids.len(), 1);
    }

    #[test]
    fn expiry_drops_old_entries_only_and_forget_drops_partitions() {
        let mut index = DedupIndex::default();
        let mut p = PartitionIds::with_capacity(4);
        let (old, new) = (fingerprint("t", "c", "old"), fingerprint("t", "c", "new"));
        p.insert(old, 10);
        p.insert(new, 20);
        index.load(3, p);
        assert_eq!(index.len(), 2);
        index.expire(15);
        let p = index.partition(3).expect("loaded");
        assert!(!p.contains(old, 0));
        assert!(p.contains(new, 0));
        assert!(index.partition(4).is_none());
        assert!(index.bytes() >= 17);
        index.forget();
        assert!(index.partition(3).is_none());
        assert!(index.is_empty());
    }
}
