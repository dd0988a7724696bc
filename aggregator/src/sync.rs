//! The crate's mutex lock: a mutex whose holder panicked is locked all the same.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, also when a panicking holder poisoned it.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
