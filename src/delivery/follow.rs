//! Keeps the keys that open streams use in step with changes made elsewhere: a credential re-keyed or deleted
//! through another replica (or through this one) is read again from the store when the change is heard.

use std::sync::Arc;

use crate::delivery::keys::CredentialKeys;
use crate::store::{Change, Store, StoreError, Subscription};

/// Runs until the feed is gone: on a credential's change its key is read again, on a resync every key held.
pub(crate) async fn follow_credentials(
    mut changes: Subscription,
    store: Arc<dyn Store>,
    keys: Arc<CredentialKeys>,
) {
    while let Some(change) = changes.next().await {
        match change {
            Change::CredentialChanged { id } => reload(&*store, &keys, &id).await,
            Change::Resync => {
                for id in keys.held() {
                    reload(&*store, &keys, &id).await;
                }
            }
            _ => {}
        }
    }
}

/// Takes the stored key of a credential whose key streams hold, if it is newer; forgets a deleted one.
async fn reload(store: &dyn Store, keys: &CredentialKeys, credential_id: &str) {
    let Some(entry) = keys.get(credential_id) else {
        return;
    };
    match store.credential_key(credential_id).await {
        Ok(stored) => {
            let before = entry.current().version;
            let after = keys.bind(credential_id, stored).current().version;
            if after != before {
                tracing::info!(
                    credential = %format!("credentials/{credential_id}"),
                    key_version = after,
                    "api key changed elsewhere; open streams use it from their next call"
                );
            }
        }
        Err(StoreError::NotFound { .. }) => keys.forget(credential_id),
        Err(error) => tracing::warn!(
            %error,
            credential = %format!("credentials/{credential_id}"),
            "cannot read a changed credential's key; streams keep the key they have"
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::delivery::keys::test_entry;
    use crate::domain::credential::ApiKey;
    use crate::store::{ChangeFeed, CredentialUpdate, LocalChanges};

    /// Waits (up to a generous bound, only reached when the follower is broken) until `done` holds.
    async fn eventually(mut done: impl FnMut() -> bool) {
        tokio::time::timeout(Duration::from_secs(10), async {
            while !done() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the follower never caught up");
    }

    #[tokio::test]
    async fn a_credential_changed_elsewhere_is_read_again_when_heard() {
        let dir = tempfile::tempdir().unwrap();
        let (store, keys, entry) = test_entry(dir.path()).await;
        let keys = Arc::new(keys);
        let feed = LocalChanges::new();
        tokio::spawn(follow_credentials(
            feed.subscribe(),
            store.clone(),
            keys.clone(),
        ));
        // Another replica stores a new key: only the store and the feed know.
        store
            .update_credential(CredentialUpdate {
                id: "k1".into(),
                display_name: None,
                api_key: Some(ApiKey::new("second-key-0002")),
                now_ms: 2,
            })
            .await
            .unwrap();
        assert_eq!(entry.current().version, 1);
        feed.publish(Change::CredentialChanged { id: "k1".into() })
            .await
            .unwrap();
        eventually(|| entry.current().version == 2).await;
        assert_eq!(entry.current().key.expose(), "second-key-0002");

        store.delete_credential("k1").await.unwrap();
        feed.publish(Change::Resync).await.unwrap();
        eventually(|| keys.get("k1").is_none()).await;
    }
}
