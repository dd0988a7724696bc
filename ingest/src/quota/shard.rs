//! One of the view's shards: its customers in one `Vec`, their names in one `String`, a hash table
//! of indexes into the `Vec`; and the interned tenant and meter names.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::RwLock;

use foldhash::fast::RandomState;
use hashbrown::HashTable;
use hashbrown::hash_table::Entry;

use super::customer::Customer;

/// One shard: customers in a `Vec`, their names in one `String`, a hash table of indexes.
#[derive(Debug, Default)]
pub(super) struct Shard {
    pub(super) index: HashTable<u32>,
    pub(super) customers: Vec<Customer>,
    pub(super) names: String,
}

/// The name of customer `i` of a shard.
pub(super) fn name_of<'a>(names: &'a str, customers: &[Customer], i: u32) -> &'a str {
    let i = i as usize;
    let end = customers.get(i + 1).map_or(names.len(), |c| c.at as usize);
    &names[customers[i].at as usize..end]
}

/// Grows by a quarter (not double) when full: the shards' vectors are most of the view.
pub(super) fn reserve_quarter<T>(v: &mut Vec<T>, additional: usize) {
    if v.capacity() - v.len() < additional {
        v.reserve_exact((v.capacity() / 4).max(additional).max(16));
    }
}

impl Shard {
    pub(super) fn find(&self, hash: u64, tenant: u32, customer: &str) -> Option<usize> {
        let Self {
            index,
            customers,
            names,
        } = self;
        index
            .find(hash, |&i| {
                customers[i as usize].tenant == tenant && name_of(names, customers, i) == customer
            })
            .map(|&i| i as usize)
    }

    pub(super) fn get(&self, hash: u64, tenant: u32, customer: &str) -> Option<&Customer> {
        self.find(hash, tenant, customer)
            .map(|i| &self.customers[i])
    }

    pub(super) fn get_mut(
        &mut self,
        hash: u64,
        tenant: u32,
        customer: &str,
    ) -> Option<&mut Customer> {
        self.find(hash, tenant, customer)
            .map(|i| &mut self.customers[i])
    }

    /// The customer, inserted (nothing known yet) when missing.
    pub(super) fn entry(
        &mut self,
        hasher: &RandomState,
        hash: u64,
        tenant: u32,
        customer: &str,
    ) -> &mut Customer {
        let Self {
            index,
            customers,
            names,
        } = self;
        let entry = index.entry(
            hash,
            |&i| customers[i as usize].tenant == tenant && name_of(names, customers, i) == customer,
            |&i| hasher.hash_one((customers[i as usize].tenant, name_of(names, customers, i))),
        );
        let i = match entry {
            Entry::Occupied(e) => *e.get(),
            Entry::Vacant(v) => {
                let i = u32::try_from(customers.len()).expect("at most 2^32 customers per shard");
                let at = u32::try_from(names.len()).expect("at most 4 GiB of names per shard");
                if names.capacity() - names.len() < customer.len() {
                    names.reserve_exact((names.capacity() / 4).max(customer.len()).max(256));
                }
                names.push_str(customer);
                reserve_quarter(customers, 1);
                customers.push(Customer {
                    tenant,
                    at,
                    usage: None,
                    plan: None,
                    extra: None,
                });
                v.insert(i);
                i
            }
        };
        &mut customers[i as usize]
    }
}

/// Tenant and meter names, interned to small ids (one table for both: an id is only compared with
/// ids of the same kind).
#[derive(Debug, Default)]
pub(super) struct Symbols(RwLock<HashMap<Box<str>, u32>>);

impl Symbols {
    pub(super) fn get(&self, name: &str) -> Option<u32> {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .copied()
    }

    pub(super) fn get2(&self, a: &str, b: &str) -> (Option<u32>, Option<u32>) {
        let map = self.0.read().unwrap_or_else(|e| e.into_inner());
        (map.get(a).copied(), map.get(b).copied())
    }

    pub(super) fn intern(&self, name: &str) -> u32 {
        if let Some(id) = self.get(name) {
            return id;
        }
        let mut map = self.0.write().unwrap_or_else(|e| e.into_inner());
        let next = u32::try_from(map.len()).expect("fewer than 2^32 tenant and meter names");
        *map.entry(name.into()).or_insert(next)
    }
}
