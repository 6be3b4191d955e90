//! The PostgreSQL membership store (SPEC §8). Placeholder: answers unavailable until the real
//! store lands (connections, prepared query, cache with single flight, LISTEN/NOTIFY).

use std::sync::Arc;

use tokio::sync::watch;

use super::{Lookup, Unavailable};
use crate::core::config::{MembershipConfig, PostgresConfig};

pub struct PgStore;

impl PgStore {
    /// Start connecting in the background; returns at once.
    pub fn start(
        _pg: &PostgresConfig,
        _settings: &MembershipConfig,
        _stop: watch::Receiver<bool>,
    ) -> Arc<Self> {
        Arc::new(PgStore)
    }

    pub async fn lookup(&self, _issuer: &str, _user: &str) -> Result<Lookup, Unavailable> {
        Err(Unavailable {
            reason: "not connected".to_owned(),
            retry_after_secs: 1,
        })
    }

    pub fn is_ready(&self) -> bool {
        false
    }

    pub fn is_available(&self) -> bool {
        false
    }
}
