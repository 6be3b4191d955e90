//! Building a [`Runtime`] from a [`Config`], and hot reload: the config, policy and memberships
//! files are watched (content polled every second, which also follows Kubernetes ConfigMap symlink swaps)
//! and re-read on SIGHUP.
//!
//! A new version is validated whole, then swapped in atomically; checks in flight finish on the
//! version they started with. An invalid version is refused whole: the last good one stays,
//! readiness is unaffected, the problem is logged with its field path and counted. Issuers whose
//! source and timing are unchanged keep their key sets (no refetch storm); changed or new ones get
//! fresh key stores, and the refreshers of removed ones stop. A PostgreSQL membership store whose
//! settings are unchanged is kept likewise (its connections and cache); a memberships file's
//! new version is part of the new config.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::core::config::{Config, IssuerConfig};
use crate::serve::authorizer::{Authorizer, Runtime};
use crate::serve::metrics::Metrics;
use crate::sources::jwks::{IssuerKeys, http_client};
use crate::sources::membership::Membership;

/// How often the files are looked at.
const POLL: Duration = Duration::from_secs(1);

/// Creates key stores (and their background refreshers) for a runtime, reusing those of the
/// previous runtime where nothing changed.
#[derive(Clone)]
pub struct KeyStores {
    metrics: Arc<Metrics>,
    stop: watch::Receiver<bool>,
}

impl KeyStores {
    pub fn new(metrics: Arc<Metrics>, stop: watch::Receiver<bool>) -> Self {
        KeyStores { metrics, stop }
    }

    /// A runtime for `config`; `previous` lends its unchanged key stores.
    pub fn runtime(
        &self,
        config: Config,
        previous: Option<&Runtime>,
    ) -> Result<Runtime, crate::sources::jwks::ClientError> {
        let client = http_client(&config.jwks)?;
        let timing = config.jwks.clone();
        let mut fresh = Vec::new();
        let membership = config.membership.as_ref().map(|m| {
            Arc::new(Membership::new(
                m,
                previous.and_then(|p| p.membership.as_deref()),
                self.stop.clone(),
            ))
        });
        let mut runtime = Runtime::new(
            config,
            Arc::clone(&self.metrics),
            |issuer: &IssuerConfig| {
                let reused = previous.and_then(|p| {
                    p.issuers
                        .iter()
                        .find(|i| {
                            i.config.name == issuer.name && i.keys.same_source(issuer, &timing)
                        })
                        .map(|i| Arc::clone(&i.keys))
                });
                reused.unwrap_or_else(|| {
                    let metrics = Arc::clone(&self.metrics);
                    let keys = Arc::new(IssuerKeys::new(
                        issuer,
                        timing.clone(),
                        client.clone(),
                        Arc::new(move |name: &str, ok: bool| metrics.record_fetch(name, ok)),
                    ));
                    fresh.push(Arc::clone(&keys));
                    keys
                })
            },
            previous,
        );
        runtime.membership = membership;
        for keys in fresh {
            tokio::spawn(IssuerKeys::refresh_loop(
                Arc::downgrade(&keys),
                self.stop.clone(),
            ));
        }
        Ok(runtime)
    }
}

/// Watch `config_path` (and the policy file it names) until `stop`; apply valid changes.
///
/// The SIGHUP handler is installed when this is called, not when the returned future is first
/// polled: the default action of SIGHUP is to end the process, so a SIGHUP that arrives between
/// "ready" and the watcher task's first poll must already find the handler in place.
pub fn watch_files(
    config_path: PathBuf,
    authorizer: Arc<Authorizer>,
    stores: KeyStores,
    mut stop: watch::Receiver<bool>,
) -> impl std::future::Future<Output = ()> {
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; file watching only");
            None
        }
    };
    async move {
        let mut seen = fingerprint(&config_path, &authorizer.runtime().config);
        loop {
            let forced = tokio::select! {
                _ = tokio::time::sleep(POLL) => false,
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
                _ = stop.wait_for(|s| *s) => return,
            };
            let now = fingerprint(&config_path, &authorizer.runtime().config);
            if !forced && now == seen {
                continue;
            }
            reload(
                &config_path,
                &authorizer,
                &stores,
                if forced { "SIGHUP" } else { "file change" },
            );
            // The policy or memberships file may have moved: look at the new one from now on.
            seen = fingerprint(&config_path, &authorizer.runtime().config);
        }
    }
}

/// Re-read and apply the configuration once. Returns whether it was applied.
pub fn reload(
    config_path: &Path,
    authorizer: &Authorizer,
    stores: &KeyStores,
    cause: &str,
) -> bool {
    let current = authorizer.runtime();
    let config = match Config::load(config_path) {
        Ok(c) => c,
        Err(e) => {
            for issue in &e.issues {
                tracing::error!(%cause, field = %issue.path, problem = %issue.message, "configuration reload refused; keeping the last good version");
            }
            authorizer.metrics().record_reload(false);
            return false;
        }
    };
    log_warnings(&config);
    if config.telemetry != current.config.telemetry {
        tracing::warn!("telemetry is not reloadable; restart to apply the new settings");
    }
    if config.listen != current.config.listen {
        tracing::warn!("listen addresses are not reloadable; restart to apply the new ones");
    }
    match stores.runtime(config, Some(&current)) {
        Ok(runtime) => {
            let (rules, issuers) = (runtime.config.policy.len(), runtime.issuers.len());
            authorizer.replace(runtime);
            authorizer.metrics().record_reload(true);
            tracing::info!(%cause, rules, issuers, "configuration reloaded");
            true
        }
        Err(e) => {
            tracing::error!(%cause, error = %e, "configuration reload refused");
            authorizer.metrics().record_reload(false);
            false
        }
    }
}

/// The config's warnings (a rule that can never decide, a non-standard method), as
/// `check-config` prints them: at start and on every applied reload.
pub fn log_warnings(config: &Config) {
    for w in &config.warnings {
        tracing::warn!(field = %w.path, problem = %w.message, "configuration warning");
    }
}

/// Contents of the watched files (hash), to notice any change including a ConfigMap swap: the
/// config file and the policy and memberships files that the config in force names.
fn fingerprint(config_path: &Path, config: &Config) -> [u64; 3] {
    let h = |p: Option<&Path>| {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        p.and_then(|p| std::fs::read(p).ok()).hash(&mut hasher);
        hasher.finish()
    };
    [
        h(Some(config_path)),
        h(config.policy_file.as_deref()),
        h(config.membership.as_ref().and_then(|m| m.file())),
    ]
}
