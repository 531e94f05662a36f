//! The change feed between replicas sharing one PostgreSQL database.
//!
//! A change is handed to this process's subscribers at once and sent to the others with `NOTIFY` on
//! [`CHANNEL`], through the pool, after the write it reports has committed. Each replica `LISTEN`s on a
//! connection of its own (named [`LISTENER_NAME`] in `pg_stat_activity`), kept open by a task that reconnects
//! with backoff. Notifications sent while that connection was down are lost, so every time it is (re)connected
//! the subscribers are told [`Change::Resync`] and re-read what they cache. A replica ignores the notifications
//! it sent itself: its subscribers heard those already.

use std::time::Duration;

use deadpool_postgres::Pool;
use futures::future::BoxFuture;
use futures::StreamExt;
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{AsyncMessage, Config, Socket};

use crate::store::changes::{Change, ChangeFeed, LocalChanges, Subscription};
use crate::store::StoreError;

/// The notification channel every replica listens on.
pub const CHANNEL: &str = "groove_destination_changes";
/// `application_name` of the listening connection.
pub const LISTENER_NAME: &str = "groove-destination change listener";
/// Reconnection waits: full jitter, doubling from the first to the last.
const FIRST_RETRY: Duration = Duration::from_millis(100);
const MAX_RETRY: Duration = Duration::from_secs(5);
/// A listening connection that has said nothing for this long is asked something, so a connection the network
/// dropped silently is noticed within about twice this.
const PING_EVERY: Duration = Duration::from_secs(10);

/// What travels in a notification's payload.
#[derive(Serialize, Deserialize)]
struct Notice {
    /// The replica that sent it.
    origin: String,
    change: Change,
}

/// The change feed of one replica on a shared PostgreSQL database.
#[derive(Debug)]
pub struct PgChangeFeed {
    pool: Pool,
    local: std::sync::Arc<LocalChanges>,
    origin: String,
    listening: watch::Receiver<bool>,
    listener: JoinHandle<()>,
}

impl PgChangeFeed {
    /// Starts listening with a connection of its own, made from `config` with `tls` (the same as the pool's),
    /// and publishes through `pool`. `replica_id` tells this replica's notifications from the others'.
    pub fn start<T>(pool: Pool, config: Config, tls: T, replica_id: impl Into<String>) -> Self
    where
        T: MakeTlsConnect<Socket> + Clone + Send + Sync + 'static,
        T::Stream: Send + 'static,
        T::TlsConnect: Send,
        <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
    {
        let origin = replica_id.into();
        let local = std::sync::Arc::new(LocalChanges::new());
        let (connected, listening) = watch::channel(false);
        let listener = tokio::spawn(listen(
            config,
            tls,
            local.clone(),
            origin.clone(),
            connected,
        ));
        PgChangeFeed {
            pool,
            local,
            origin,
            listening,
            listener,
        }
    }

    /// Resolves once the listening connection is up (again, after a drop).
    pub async fn listening(&self) {
        let mut listening = self.listening.clone();
        // The sender lives as long as the listener task, which runs until the feed is dropped.
        let _ = listening.wait_for(|up| *up).await;
    }

    async fn notify(&self, change: Change) -> Result<(), StoreError> {
        let payload = serde_json::to_string(&Notice {
            origin: self.origin.clone(),
            change,
        })
        .map_err(|error| StoreError::internal("cannot encode a change notification", error))?;
        let client = self.pool.get().await.map_err(|error| {
            StoreError::internal(
                "cannot get a database connection to announce a change",
                error,
            )
        })?;
        client
            .execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &payload])
            .await
            .map_err(|error| StoreError::internal("cannot announce a change", error))?;
        Ok(())
    }
}

impl Drop for PgChangeFeed {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

impl ChangeFeed for PgChangeFeed {
    fn publish(&self, change: Change) -> BoxFuture<'_, Result<(), StoreError>> {
        self.local.send(change.clone());
        Box::pin(self.notify(change))
    }

    fn subscribe(&self) -> Subscription {
        self.local.subscribe()
    }
}

/// Keeps a listening connection open for as long as the feed lives.
async fn listen<T>(
    config: Config,
    tls: T,
    local: std::sync::Arc<LocalChanges>,
    origin: String,
    connected: watch::Sender<bool>,
) where
    T: MakeTlsConnect<Socket> + Clone + Send + Sync + 'static,
    T::Stream: Send + 'static,
    T::TlsConnect: Send,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    let mut config = config;
    config.application_name(LISTENER_NAME);
    let mut failures = 0u32;
    loop {
        let dropped = match config.connect(tls.clone()).await {
            Ok((client, connection)) => {
                let heard = serve(&client, connection, &local, &origin, &connected).await;
                connected.send_replace(false);
                if heard.listened {
                    failures = 0;
                }
                heard.error
            }
            Err(error) => error.to_string(),
        };
        failures = failures.saturating_add(1);
        let wait = retry_wait(failures);
        tracing::warn!(
            error = %dropped,
            retry_in_ms = wait.as_millis() as u64,
            "change listener lost its database connection; changes made by other replicas are heard again \
             once it reconnects"
        );
        tokio::time::sleep(wait).await;
    }
}

/// How one listening connection ended.
struct Heard {
    /// Whether `LISTEN` went through.
    listened: bool,
    error: String,
}

/// Listens on one connection until it fails: drives the connection, hands on the notifications, and pings it
/// when it has been quiet.
async fn serve<S, T>(
    client: &tokio_postgres::Client,
    mut connection: tokio_postgres::Connection<S, T>,
    local: &LocalChanges,
    origin: &str,
    connected: &watch::Sender<bool>,
) -> Heard
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
    let statement = format!("LISTEN {CHANNEL}");
    let listen = client.batch_execute(&statement);
    tokio::pin!(listen);
    let mut listened = false;
    let ended = |listened, error: String| Heard { listened, error };
    // The connection is driven while LISTEN runs: its answer comes through it.
    loop {
        tokio::select! {
            result = &mut listen, if !listened => match result {
                Ok(()) => {
                    listened = true;
                    connected.send_replace(true);
                    // Whatever was sent while no connection listened is lost.
                    local.send(Change::Resync);
                }
                Err(error) => return ended(false, error.to_string()),
            },
            message = tokio::time::timeout(PING_EVERY, messages.next()) => match message {
                Ok(Some(Ok(AsyncMessage::Notification(notification)))) => {
                    hand_on(notification.payload(), local, origin);
                }
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(error))) => return ended(listened, error.to_string()),
                Ok(None) => return ended(listened, "connection closed".to_string()),
                Err(_quiet) if listened => {
                    let ping = client.simple_query("SELECT 1");
                    tokio::pin!(ping);
                    // Drive the connection until the ping is answered, still handing on notifications.
                    loop {
                        tokio::select! {
                            answer = &mut ping => {
                                if let Err(error) = answer {
                                    return ended(listened, error.to_string());
                                }
                                break;
                            }
                            message = tokio::time::timeout(PING_EVERY, messages.next()) => match message {
                                Ok(Some(Ok(AsyncMessage::Notification(notification)))) => {
                                    hand_on(notification.payload(), local, origin);
                                }
                                Ok(Some(Ok(_))) => {}
                                Ok(Some(Err(error))) => return ended(listened, error.to_string()),
                                Ok(None) => return ended(listened, "connection closed".to_string()),
                                Err(_) => return ended(listened, "database did not answer a ping".to_string()),
                            },
                        }
                    }
                }
                Err(_quiet) => {}
            },
        }
    }
}

/// Hands another replica's change to this process's subscribers.
fn hand_on(payload: &str, local: &LocalChanges, origin: &str) {
    match serde_json::from_str::<Notice>(payload) {
        Ok(notice) if notice.origin == origin => {}
        Ok(notice) => local.send(notice.change),
        Err(error) => {
            // A newer replica's event this one does not know: what it caches may be stale.
            tracing::warn!(%error, "unreadable change notification; re-reading what is cached");
            local.send(Change::Resync);
        }
    }
}

/// Full jitter under a doubling cap.
fn retry_wait(failures: u32) -> Duration {
    let cap = FIRST_RETRY
        .saturating_mul(1 << failures.saturating_sub(1).min(16))
        .min(MAX_RETRY);
    cap.mul_f64(rand::rng().random_range(0.5..=1.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use deadpool_postgres::{Manager, Pool};
    use test_postgres::TestDatabase;
    use tokio_postgres::NoTls;

    /// Far more than any step here takes; reached only when the feed is broken.
    const GIVE_UP: Duration = Duration::from_secs(30);

    fn pool(config: &Config) -> Pool {
        Pool::builder(Manager::new(config.clone(), NoTls))
            .max_size(2)
            .build()
            .unwrap()
    }

    async fn feed(db: &TestDatabase, replica: &str) -> PgChangeFeed {
        let config: Config = db.url().parse().unwrap();
        let feed = PgChangeFeed::start(pool(&config), config, NoTls, replica);
        tokio::time::timeout(GIVE_UP, feed.listening())
            .await
            .expect("the listener connects");
        feed
    }

    async fn next(subscription: &mut Subscription) -> Change {
        tokio::time::timeout(GIVE_UP, subscription.next())
            .await
            .expect("a change arrives")
            .expect("the feed is open")
    }

    #[tokio::test]
    async fn a_change_published_on_one_replica_is_heard_on_the_other_once() {
        let db = TestDatabase::create().await;
        let a = feed(&db, "replica-a").await;
        let b = feed(&db, "replica-b").await;
        let mut heard_on_a = a.subscribe();
        let mut heard_on_b = b.subscribe();

        let paused = Change::DestinationChanged { id: "d1".into() };
        a.publish(paused.clone()).await.unwrap();
        assert_eq!(next(&mut heard_on_b).await, paused);
        let rekeyed = Change::CredentialChanged { id: "k1".into() };
        b.publish(rekeyed.clone()).await.unwrap();
        assert_eq!(next(&mut heard_on_a).await, paused, "heard locally first");
        // A's own notification came back to it before B's: ignored, so B's is next.
        assert_eq!(next(&mut heard_on_a).await, rekeyed);
        assert_eq!(next(&mut heard_on_b).await, rekeyed);
    }

    #[tokio::test]
    async fn a_dropped_listener_reconnects_and_says_resync() {
        let db = TestDatabase::create().await;
        let a = feed(&db, "replica-a").await;
        let b = feed(&db, "replica-b").await;
        let mut heard_on_b = b.subscribe();
        let admin = test_postgres_client(&db).await;
        let killed = admin
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE application_name = $1 AND datname = current_database()",
                &[&LISTENER_NAME],
            )
            .await
            .unwrap();
        assert_eq!(killed, 2, "both listeners were connected");
        assert_eq!(next(&mut heard_on_b).await, Change::Resync);
        tokio::time::timeout(GIVE_UP, b.listening()).await.unwrap();
        let deleted = Change::DestinationDeleted { id: "d1".into() };
        a.publish(deleted.clone()).await.unwrap();
        assert_eq!(next(&mut heard_on_b).await, deleted);
    }

    async fn test_postgres_client(db: &TestDatabase) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(db.url(), NoTls).await.unwrap();
        tokio::spawn(connection);
        client
    }
}
