//! API keys kept in the key store rather than in the configuration: made and
//! revoked at run time (`POST /admin/keys/<tenant>`, `DELETE
//! /admin/keys/<sha256>` on the admin listener), each one a key of a
//! configured tenant (`[[keys]]`), whose limits, models, routes and metrics
//! it shares. Only digests are stored.
//!
//! In the embedded store they are a table of its redb file, read at start
//! and changed by this process alone. In Redis they are one hash
//! (`gantry:keys`, digest → tenant) with a version counter bumped on every
//! change; each replica looks at the version every [`FOLLOW_EVERY`], so a
//! key made or revoked on one replica is honoured or refused on all within a
//! second.

use super::budget::BudgetStore;
use super::shared::SharedStore;
use super::Tenants;
use std::sync::Arc;
use std::time::Duration;

/// How often a replica checks the shared store for changed keys.
pub const FOLLOW_EVERY: Duration = Duration::from_millis(500);

/// Where run-time keys are kept.
#[derive(Clone)]
pub enum KeyRing {
    /// The embedded store's file.
    Embedded(Arc<BudgetStore>),
    /// The shared Redis.
    Shared(Arc<SharedStore>),
}

/// A stored key: its digest and its tenant's name.
pub type StoredKey = ([u8; 32], String);

impl KeyRing {
    /// Keep `digest` as a key of `tenant`.
    pub async fn add(&self, digest: [u8; 32], tenant: &str) -> anyhow::Result<()> {
        match self {
            KeyRing::Embedded(store) => {
                let (store, tenant) = (store.clone(), tenant.to_string());
                tokio::task::spawn_blocking(move || store.add_key(&digest, &tenant)).await?
            }
            KeyRing::Shared(store) => store.add_key(&digest, tenant).await,
        }
    }

    /// Forget `digest`; whether it was kept.
    pub async fn remove(&self, digest: [u8; 32]) -> anyhow::Result<bool> {
        match self {
            KeyRing::Embedded(store) => {
                let store = store.clone();
                tokio::task::spawn_blocking(move || store.remove_key(&digest)).await?
            }
            KeyRing::Shared(store) => store.remove_key(&digest).await,
        }
    }

    /// Every stored key.
    pub async fn list(&self) -> anyhow::Result<Vec<StoredKey>> {
        match self {
            KeyRing::Embedded(store) => {
                let store = store.clone();
                tokio::task::spawn_blocking(move || store.keys()).await?
            }
            KeyRing::Shared(store) => store.keys().await,
        }
    }

    /// Give `tenants` the stored keys of the shared store whenever a replica
    /// changes them (looked at every [`FOLLOW_EVERY`]), on `runtime`.
    pub fn follow(&self, tenants: &Arc<Tenants>, runtime: &tokio::runtime::Handle) {
        let KeyRing::Shared(store) = self else { return };
        let (store, tenants) = (store.clone(), Arc::downgrade(tenants));
        runtime.spawn(async move {
            let mut seen = None;
            loop {
                let Some(t) = tenants.upgrade() else { return };
                let version = store.keys_version().await;
                if version.is_some() && version != seen {
                    match store.keys().await {
                        Ok(keys) => {
                            t.set_stored(keys);
                            seen = version;
                        }
                        Err(e) => tracing::warn!(error = %e, "cannot read the stored API keys"),
                    }
                }
                drop(t);
                tokio::time::sleep(FOLLOW_EVERY).await;
            }
        });
    }
}

/// 64 lower-case hex digits.
pub fn hex(digest: &[u8; 32]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The digest `hex` spells, if it is 64 hex digits.
pub use gantry_config::file::parse_sha256 as parse_hex;
