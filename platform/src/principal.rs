//! Who a request is: the tenant, the customer a key may be restricted to, and the key's scopes.

use serde::{Deserialize, Serialize};

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Send usage events.
    Ingest,
    /// Read usage and quota.
    Read,
    /// Manage keys, plans and tenants' customers.
    Admin,
}

impl Scope {
    /// The scope's name as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ingest => "ingest",
            Self::Read => "read",
            Self::Admin => "admin",
        }
    }

    /// Parses a stored scope name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ingest" => Some(Self::Ingest),
            "read" => Some(Self::Read),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }
}

/// A key's tenant, optional customer restriction and scopes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    /// Tenant the key belongs to.
    pub tenant: String,
    /// Customer the key is restricted to.
    pub customer: Option<String>,
    /// Granted scopes.
    pub scopes: Vec<Scope>,
}

impl KeyInfo {
    /// Whether the key has `scope` (admin implies every scope).
    pub fn allows(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope) || self.scopes.contains(&Scope::Admin)
    }
}
