//! The identifier rule shared by tenants, meter keys and endpoints: 1 to `max` bytes of
//! `[A-Za-z0-9_.-]`.

/// Whether `s` is 1..=max of `[A-Za-z0-9_.-]`.
pub fn is_token(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}
