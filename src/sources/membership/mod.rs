//! Membership stores (SPEC §8): the roles and tenants of a user that come from the policy
//! database rather than from the token, looked up by issuer name and user id.
//!
//! Two sources behind one [`Membership`]: the memberships file (read with the config, so a new
//! version arrives, validated whole, with a config reload; lookups are in memory and never fail)
//! and PostgreSQL ([`postgres`]: a small connection set, a bounded cache with single flight and
//! stale use while the database is down, `LISTEN` for invalidation). What a lookup returns is
//! plain data ([`Memberships`]); what it means for the request is decided in [`crate::core::tenancy`].

mod cache;
pub mod postgres;

use std::sync::Arc;

use tokio::sync::watch;

use crate::core::config::{MembershipConfig, MembershipSource, PostgresConfig};
use crate::core::tenancy::{MembershipTable, Memberships};

/// How a lookup was answered (a metrics label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// From the cache (or the in-memory file).
    Hit,
    /// Asked the store.
    Miss,
    /// The store is unreachable; a cached entry past its ttl but within max_stale was used.
    Stale,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::Miss => "miss",
            Outcome::Stale => "stale",
        }
    }
}

/// A lookup's answer.
#[derive(Debug, Clone)]
pub struct Lookup {
    pub memberships: Arc<Memberships>,
    pub outcome: Outcome,
}

/// The store could not answer and no usable cached entry exists: the check is 503 (SPEC §8).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("membership store unavailable: {reason}")]
pub struct Unavailable {
    /// Why, without secrets (the connection string is never part of it).
    pub reason: String,
    pub retry_after_secs: u64,
}

/// The membership source in force, with the settings that apply to every source.
pub struct Membership {
    config: MembershipConfig,
    store: Store,
}

enum Store {
    File(Arc<MembershipTable>),
    Postgres(Arc<postgres::PgStore>),
}

impl Membership {
    /// The store for `config`. A PostgreSQL store of `previous` with the same settings is kept
    /// (its connections and cache survive a reload that does not concern it); otherwise a new
    /// one starts connecting in the background, stopping when `stop` turns true or when it is
    /// dropped.
    pub fn new(
        config: &MembershipConfig,
        previous: Option<&Membership>,
        stop: watch::Receiver<bool>,
    ) -> Self {
        let store = match &config.source {
            MembershipSource::File { table, .. } => Store::File(Arc::clone(table)),
            MembershipSource::Postgres(pg) => {
                let reused = previous.and_then(|p| match &p.store {
                    Store::Postgres(s) if p.config == *config => Some(Arc::clone(s)),
                    _ => None,
                });
                Store::Postgres(
                    reused.unwrap_or_else(|| postgres::PgStore::start(pg, config, stop)),
                )
            }
        };
        Membership {
            config: config.clone(),
            store,
        }
    }

    /// Whether tokens of the issuer named `issuer` are looked up (`membership.issuers`).
    pub fn covers(&self, issuer: &str) -> bool {
        self.config.covers(issuer)
    }

    /// `file` or `postgres` (a metrics label).
    pub fn source(&self) -> &'static str {
        match self.store {
            Store::File(_) => "file",
            Store::Postgres(_) => "postgres",
        }
    }

    /// The memberships of `user` for tokens of `issuer`.
    pub async fn lookup(&self, issuer: &str, user: &str) -> Result<Lookup, Unavailable> {
        match &self.store {
            Store::File(table) => Ok(Lookup {
                memberships: Arc::new(table.lookup(issuer, user)),
                outcome: Outcome::Hit,
            }),
            Store::Postgres(store) => store.lookup(issuer, user).await,
        }
    }

    /// Ready once the store has answered (prepared its query) at least once; a file always is.
    pub fn is_ready(&self) -> bool {
        match &self.store {
            Store::File(_) => true,
            Store::Postgres(store) => store.is_ready(),
        }
    }

    /// Whether the store answers now (a file always does): the availability gauge.
    pub fn is_available(&self) -> bool {
        match &self.store {
            Store::File(_) => true,
            Store::Postgres(store) => store.is_available(),
        }
    }
}

/// `check-config --online` for a PostgreSQL store: connect once, prepare the query, and say what
/// was found or why not (never the connection string or its password).
pub async fn probe(pg: &PostgresConfig) -> Result<String, String> {
    postgres::probe(pg).await
}
