//! Changes one writer makes that every holder of a copy must hear of at once: a destination paused, edited or
//! deleted, a credential re-keyed or deleted, a credential's calls throttled by Groove.
//!
//! Events name what changed, never its new contents (and never a key): whoever caches something reads it
//! again from the store. A feed may lose events (a subscriber too slow, a database connection that dropped);
//! it then says [`Change::Resync`] and subscribers re-read everything they cache. Readers that must not miss a
//! change keep a slow poll as well.
//!
//! [`LocalChanges`] is the feed of one process (the SQLite default). The PostgreSQL one
//! (`store/postgres/changes.rs`) carries events between replicas with `NOTIFY` and `LISTEN`.

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::store::StoreError;

/// Events buffered per subscriber; one that falls further behind gets [`Change::Resync`].
const LOCAL_CAPACITY: usize = 1024;

/// One change, named by id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Change {
    /// A destination was updated (its state, configuration or credential may differ).
    DestinationChanged { id: String },
    /// A destination was deleted.
    DestinationDeleted { id: String },
    /// A credential's key or display name changed, or it was deleted.
    CredentialChanged { id: String },
    /// Groove refused a call of the credential for its rate: nobody calls with it until `until_unix_ms`.
    CredentialThrottled { id: String, until_unix_ms: i64 },
    /// Events may have been lost: re-read everything cached. Never published, only received.
    Resync,
}

/// Where changes are published and heard. Cheap to share behind an `Arc`.
pub trait ChangeFeed: Send + Sync + std::fmt::Debug {
    /// Tells every subscriber (in this process and, for a shared store, in every replica). Called after the
    /// write it reports has committed, so a subscriber that reads the store on hearing it sees the write.
    fn publish(&self, change: Change) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Hears every change published from now on.
    fn subscribe(&self) -> Subscription;
}

/// What one subscriber hears.
#[derive(Debug)]
pub struct Subscription {
    receiver: broadcast::Receiver<Change>,
}

impl Subscription {
    pub fn new(receiver: broadcast::Receiver<Change>) -> Self {
        Subscription { receiver }
    }

    /// A subscription to nothing: [`Subscription::next`] says the feed is gone.
    pub fn closed() -> Self {
        let (_, receiver) = broadcast::channel(1);
        Subscription { receiver }
    }

    /// The next change; [`Change::Resync`] when this subscriber fell behind and missed some. `None` once the
    /// feed is gone.
    pub async fn next(&mut self) -> Option<Change> {
        match self.receiver.recv().await {
            Ok(change) => Some(change),
            Err(broadcast::error::RecvError::Lagged(_)) => Some(Change::Resync),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

/// The changes of one process: a broadcast channel.
#[derive(Debug)]
pub struct LocalChanges {
    sender: broadcast::Sender<Change>,
}

impl LocalChanges {
    pub fn new() -> Self {
        LocalChanges {
            sender: broadcast::Sender::new(LOCAL_CAPACITY),
        }
    }

    /// Hands `change` to this process's subscribers; having none is fine.
    pub fn send(&self, change: Change) {
        let _ = self.sender.send(change);
    }
}

impl Default for LocalChanges {
    fn default() -> Self {
        Self::new()
    }
}

impl ChangeFeed for LocalChanges {
    fn publish(&self, change: Change) -> BoxFuture<'_, Result<(), StoreError>> {
        self.send(change);
        Box::pin(async { Ok(()) })
    }

    fn subscribe(&self) -> Subscription {
        Subscription::new(self.sender.subscribe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn subscribers_hear_what_is_published_after_they_subscribed() {
        let feed = LocalChanges::new();
        feed.publish(Change::DestinationChanged { id: "early".into() })
            .await
            .unwrap();
        let mut first = feed.subscribe();
        let mut second = feed.subscribe();
        let change = Change::CredentialChanged { id: "k1".into() };
        feed.publish(change.clone()).await.unwrap();
        assert_eq!(first.next().await, Some(change.clone()));
        assert_eq!(second.next().await, Some(change));
    }

    #[tokio::test]
    async fn a_subscriber_that_falls_behind_is_told_to_resync() {
        let feed = LocalChanges::new();
        let mut slow = feed.subscribe();
        for n in 0..=LOCAL_CAPACITY {
            feed.send(Change::DestinationChanged { id: n.to_string() });
        }
        assert_eq!(slow.next().await, Some(Change::Resync));
    }

    #[test]
    fn events_travel_as_json_naming_only_ids() {
        let change = Change::CredentialThrottled {
            id: "k1".into(),
            until_unix_ms: 1_700_000_000_000,
        };
        let text = serde_json::to_string(&change).unwrap();
        assert_eq!(
            text,
            r#"{"kind":"credential_throttled","id":"k1","until_unix_ms":1700000000000}"#
        );
        assert_eq!(serde_json::from_str::<Change>(&text).unwrap(), change);
    }
}
