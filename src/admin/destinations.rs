//! Destinations as the admin RPCs change them. Every write is a compare-and-swap on the stored revision, so two
//! writers never overwrite each other unseen, and is announced on the change feed once stored, so open streams
//! of every replica hear of it at once.

use std::sync::Arc;

use thiserror::Error;
use url::Url;

use crate::delivery::now_ms;
use crate::domain::config_validation::validate_config;
use crate::domain::destination::{
    Destination, DestinationConfig, DestinationState, LifecycleError,
};
use crate::domain::validation::Violations;
use crate::store::{Change, ChangeFeed, Store, StoreError};

/// How often a state change is tried when concurrent writes keep getting there first.
const STATE_CHANGE_ATTEMPTS: usize = 3;

/// Why an admin change was refused.
#[derive(Debug, Error)]
pub enum AdminError {
    /// A change named bad input; violations are named as the change named them.
    #[error("{0}")]
    Invalid(Violations),
    /// The configuration breaks a domain rule; violations are named from `config`.
    #[error("{0}")]
    InvalidConfig(Violations),
    /// The lifecycle does not allow the move.
    #[error(transparent)]
    Lifecycle(#[from] LifecycleError),
    /// The caller's etag is not the stored revision.
    #[error("destination {name} changed since etag {etag}; read it again")]
    Changed { name: String, etag: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A destination to create, translated and checked: its configuration passed [`DestinationAdmin::validate`]
/// (together with the rest of the request, so every problem was reported at once).
#[derive(Debug)]
pub struct NewDestination {
    pub id: String,
    pub display_name: String,
    pub credential_id: String,
    pub config: DestinationConfig,
}

/// Creates, updates, moves and deletes destinations in the store.
#[derive(Clone)]
pub struct DestinationAdmin {
    store: Arc<dyn Store>,
    groove_base_url: Url,
    changes: Arc<dyn ChangeFeed>,
}

impl DestinationAdmin {
    pub fn new(store: Arc<dyn Store>, groove_base_url: Url, changes: Arc<dyn ChangeFeed>) -> Self {
        DestinationAdmin {
            store,
            groove_base_url,
            changes,
        }
    }

    /// Tells every replica of a change already stored. A lost announcement delays, never loses, its effect:
    /// open streams also poll their destination's state.
    async fn announce(&self, change: Change) {
        if let Err(error) = self.changes.publish(change).await {
            tracing::warn!(%error, "cannot announce a destination change to other replicas");
        }
    }

    async fn announce_changed(&self, destination: &Destination) {
        self.announce(Change::DestinationChanged {
            id: destination.id.clone(),
        })
        .await;
    }

    /// Checks a configuration against the domain rules and the configured Groove base URL.
    pub fn validate(&self, config: &DestinationConfig) -> Result<(), Violations> {
        validate_config(config, &self.groove_base_url).map(drop)
    }

    /// Saves a new destination: inactive until activated, at revision 1.
    pub async fn create(&self, new: NewDestination) -> Result<Destination, AdminError> {
        let now = now_ms();
        let destination = Destination {
            id: new.id,
            display_name: new.display_name,
            credential_id: new.credential_id,
            state: DestinationState::Inactive,
            config: new.config,
            create_time_ms: now,
            update_time_ms: now,
            revision: 1,
        };
        Ok(self.store.create_destination(destination).await?)
    }

    /// Applies `change` to the stored destination and saves the result as the next revision, if the stored
    /// one is still `expected_revision` (when given; `etag` is how the caller wrote it, for the error).
    /// `change` reports bad input as violations; the changed configuration is then checked as a whole.
    pub async fn update(
        &self,
        name: &str,
        id: &str,
        expected: Option<(u64, &str)>,
        change: impl FnOnce(&mut Destination) -> Result<(), Violations>,
    ) -> Result<Destination, AdminError> {
        let current = self.store.get_destination(id).await?;
        if let Some((revision, etag)) = expected {
            if revision != current.revision {
                return Err(AdminError::Changed {
                    name: name.to_string(),
                    etag: etag.to_string(),
                });
            }
        }
        let mut updated = current.clone();
        change(&mut updated).map_err(AdminError::Invalid)?;
        self.validate(&updated.config)
            .map_err(AdminError::InvalidConfig)?;
        updated.revision = current.revision + 1;
        updated.update_time_ms = now_ms();
        let stored = self
            .store
            .update_destination(updated, current.revision)
            .await?;
        self.announce_changed(&stored).await;
        Ok(stored)
    }

    /// Moves a destination to `target` as its lifecycle allows; a destination already there is returned as it
    /// is. A concurrent write that changed the revision meanwhile makes it read again and retry.
    pub async fn change_state(
        &self,
        name: &str,
        id: &str,
        target: DestinationState,
    ) -> Result<Destination, AdminError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let current = self.store.get_destination(id).await?;
            let Some(state) = current.state.transition(name, target)? else {
                return Ok(current);
            };
            let changed = Destination {
                state,
                revision: current.revision + 1,
                update_time_ms: now_ms(),
                ..current.clone()
            };
            match self
                .store
                .update_destination(changed, current.revision)
                .await
            {
                Err(StoreError::RevisionMismatch { .. }) if attempt < STATE_CHANGE_ATTEMPTS => {}
                result => {
                    let stored = result?;
                    self.announce_changed(&stored).await;
                    return Ok(stored);
                }
            }
        }
    }

    /// Deletes a destination; with `expected_revision`, only if it is still at that revision.
    pub async fn delete(&self, id: &str, expected_revision: Option<u64>) -> Result<(), AdminError> {
        self.store.delete_destination(id, expected_revision).await?;
        self.announce(Change::DestinationDeleted { id: id.to_string() })
            .await;
        Ok(())
    }
}
