//! The API key of each credential, shared by every stream that uses it, and what Groove's answers say about it.
//!
//! A stream loads its credential's key from the store when it opens; from then on every call takes the key from
//! here ([`KeyEntry::current`], a read lock and a reference count, no store read). UpdateCredential swaps the
//! key in ([`KeyEntry::replace`]), so open streams use the new key from their next call.
//!
//! Every answer a call with the key gets is evidence ([`Evidence`]). [`REFUSALS_TO_STOP`] refusals (401 or 403)
//! in a row make the credential refused: the refusal is kept here at once and then written to the store, and
//! until it ends no call is made with the key — every record it would have carried is answered failed. It ends
//! when the key is replaced, or when a call made with the same key is accepted after all (a call already in
//! flight, or VerifyCredential).
//!
//! Answers are counted against the key version they were sent with, so an answer to a call made with a key
//! that has since been replaced changes nothing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use crate::delivery::clock::now_ms;
use crate::domain::credential::{status_text, ApiKey, Refusal, StoredKey};
use crate::groove::{CallError, GrooveAnswer};
use crate::store::Store;

/// Refusals (401 or 403) in a row after which a credential counts as refused and its destinations stop
/// calling Groove. More than one, so that a single odd answer does not stop everything; few, so that a wrong
/// key costs a handful of calls rather than a whole stream. Calls already on the wire when the streak
/// completes still finish (at most the destinations' concurrency).
pub const REFUSALS_TO_STOP: u32 = 3;

/// What one answer says about the key it was sent with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Evidence {
    /// 401 or 403: Groove refused the key.
    Refused { status: u16 },
    /// A 2xx, or a 4xx about the request itself (400, 404, 422 …): Groove authenticates a call before it
    /// looks at it, so the key was accepted.
    Accepted,
    /// No answer, a 5xx, 408 or 429: nothing is known about the key.
    Unknown,
}

impl Evidence {
    /// The evidence in one call's result.
    pub fn of(result: &Result<GrooveAnswer, CallError>) -> Evidence {
        match result {
            Ok(answer) => Evidence::of_status(answer.status),
            Err(_) => Evidence::Unknown,
        }
    }

    pub fn of_status(status: u16) -> Evidence {
        match status {
            401 | 403 => Evidence::Refused { status },
            408 | 429 => Evidence::Unknown,
            200..=299 | 400..=499 => Evidence::Accepted,
            _ => Evidence::Unknown,
        }
    }
}

/// A credential's key as calls use it.
#[derive(Debug)]
pub struct KeyState {
    pub key: ApiKey,
    /// See [`crate::domain::credential::Credential::key_version`].
    pub version: u64,
    /// Set while Groove refuses the key: nothing is sent with it.
    pub refusal: Option<Refusal>,
}

/// Every credential's key that a stream has used since the server started.
pub(crate) struct CredentialKeys {
    store: Arc<dyn Store>,
    entries: Mutex<HashMap<String, Arc<KeyEntry>>>,
}

impl CredentialKeys {
    pub fn new(store: Arc<dyn Store>) -> Self {
        CredentialKeys {
            store,
            entries: Mutex::default(),
        }
    }

    /// The entry of a credential whose key was just read from the store. An entry already held keeps its state
    /// unless the store holds a newer key (replaced through another server sharing the store): within one
    /// server, the entry knows at least as much as the store.
    pub fn bind(&self, credential_id: &str, stored: StoredKey) -> Arc<KeyEntry> {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = entries.get(credential_id) {
            entry.adopt(stored);
            return entry.clone();
        }
        let entry = Arc::new(KeyEntry::new(
            credential_id.to_string(),
            stored,
            self.store.clone(),
        ));
        entries.insert(credential_id.to_string(), entry.clone());
        entry
    }

    /// The entry of a credential, if a stream has used it.
    pub fn get(&self, credential_id: &str) -> Option<Arc<KeyEntry>> {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(credential_id)
            .cloned()
    }

    /// The credentials whose keys are held.
    pub fn held(&self) -> Vec<String> {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect()
    }

    /// Forgets a deleted credential. Whoever still holds its entry keeps it.
    pub fn forget(&self, credential_id: &str) {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(credential_id);
    }
}

/// One credential's key, its refusal and the streak of refusals leading to one.
pub(crate) struct KeyEntry {
    credential_id: String,
    store: Arc<dyn Store>,
    current: RwLock<Arc<KeyState>>,
    /// Refusals in a row of the current key version, while it is not refused.
    streak: AtomicU32,
    /// Mirrors `current.refusal.is_some()`, so that the per-call bookkeeping of an accepted key is one load.
    refused: AtomicBool,
    /// Held from a change of the refusal to the end of its store write, so that the writes land in the order the
    /// changes were made.
    writes: tokio::sync::Mutex<()>,
}

impl KeyEntry {
    fn new(credential_id: String, stored: StoredKey, store: Arc<dyn Store>) -> Self {
        KeyEntry {
            credential_id,
            store,
            refused: AtomicBool::new(stored.refusal.is_some()),
            current: RwLock::new(Arc::new(KeyState {
                key: stored.key,
                version: stored.key_version,
                refusal: stored.refusal,
            })),
            streak: AtomicU32::new(0),
            writes: tokio::sync::Mutex::new(()),
        }
    }

    pub fn credential_id(&self) -> &str {
        &self.credential_id
    }

    /// The key to send now, with its version and refusal.
    pub fn current(&self) -> Arc<KeyState> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether Groove refuses the key: one load, for a check on every call.
    pub fn is_refused(&self) -> bool {
        self.refused.load(Ordering::Relaxed)
    }

    /// Replaces the state with `change(current)` when it gives one; all in one step, so a change decided for
    /// one key version can never land on another.
    fn change(&self, change: impl FnOnce(&KeyState) -> Option<KeyState>) -> bool {
        let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
        let Some(next) = change(&current) else {
            return false;
        };
        if next.version != current.version {
            self.streak.store(0, Ordering::Relaxed);
        }
        self.refused
            .store(next.refusal.is_some(), Ordering::Relaxed);
        *current = Arc::new(next);
        true
    }

    /// Takes the store's state if it holds a newer key.
    fn adopt(&self, stored: StoredKey) {
        self.change(|current| {
            (stored.key_version > current.version).then_some(KeyState {
                key: stored.key,
                version: stored.key_version,
                refusal: stored.refusal,
            })
        });
    }

    /// A new key, already stored as `version`: calls use it from now on, and a refusal of the old key ends.
    pub fn replace(&self, key: ApiKey, version: u64) {
        let replaced = self.change(|current| {
            (version > current.version).then_some(KeyState {
                key,
                version,
                refusal: None,
            })
        });
        if replaced {
            tracing::info!(credential = %self.name(), key_version = version, "api key replaced; open streams use it from their next call");
        }
    }

    /// Takes what the answer to a call made with key `version` says about it, for `caller` (a destination's
    /// name, or the RPC that made the call). Refusal number [`REFUSALS_TO_STOP`] in a row makes the credential
    /// refused; an accepted key ends a streak, and a refusal. A change of the refusal is written to the store
    /// before this returns.
    pub async fn observe(&self, version: u64, evidence: Evidence, caller: &str) {
        match evidence {
            Evidence::Unknown => {}
            Evidence::Accepted => {
                // The common case, once per delivered call: nothing to undo.
                if self.streak.load(Ordering::Relaxed) == 0 && !self.refused.load(Ordering::Relaxed)
                {
                    return;
                }
                self.accepted(version).await;
            }
            Evidence::Refused { status } => {
                if self.refused.load(Ordering::Relaxed) {
                    return;
                }
                self.refused_once(version, status, caller).await;
            }
        }
    }

    async fn accepted(&self, version: u64) {
        let _write = self.writes.lock().await;
        let mut ended = false;
        self.change(|current| {
            if current.version != version {
                return None;
            }
            self.streak.store(0, Ordering::Relaxed);
            ended = current.refusal.is_some();
            ended.then(|| KeyState {
                key: current.key.clone(),
                version,
                refusal: None,
            })
        });
        if ended {
            tracing::info!(credential = %self.name(), "groove accepted the api key again; deliveries with it resume");
            self.write_refusal(version, None).await;
        }
    }

    async fn refused_once(&self, version: u64, status: u16, caller: &str) {
        let _write = self.writes.lock().await;
        let mut refusal = None;
        self.change(|current| {
            if current.version != version || current.refusal.is_some() {
                return None;
            }
            let streak = self.streak.fetch_add(1, Ordering::Relaxed) + 1;
            if streak < REFUSALS_TO_STOP {
                return None;
            }
            let made = Refusal {
                http_status: status,
                refuse_time_ms: now_ms(),
                detail: format!(
                    "groove answered {} to {streak} calls in a row, the last for {caller}; destinations using \
                     this credential send nothing and answer their records OUTCOME_FAILED until the key is \
                     replaced with UpdateCredential (or VerifyCredential finds that groove accepts it again)",
                    status_text(status)
                ),
            };
            refusal = Some(made.clone());
            Some(KeyState {
                key: current.key.clone(),
                version,
                refusal: Some(made),
            })
        });
        if let Some(refusal) = refusal {
            tracing::warn!(
                credential = %self.name(),
                http_status = status,
                refusals = REFUSALS_TO_STOP,
                last_for = caller,
                "groove refused the api key several times in a row; destinations using it stop sending"
            );
            self.write_refusal(version, Some(refusal)).await;
        }
    }

    async fn write_refusal(&self, version: u64, refusal: Option<Refusal>) {
        match self
            .store
            .set_credential_refusal(&self.credential_id, version, refusal)
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                tracing::info!(credential = %self.name(), "the key was replaced meanwhile; its refusal is not stored")
            }
            Err(error) => {
                tracing::warn!(%error, credential = %self.name(), "cannot store the refusal of the api key")
            }
        }
    }

    fn name(&self) -> String {
        format!("credentials/{}", self.credential_id)
    }
}

/// A store in `dir` with credential `k1`, and its key entry: for tests of whatever calls with a key.
#[cfg(test)]
pub(crate) async fn test_entry(
    dir: &std::path::Path,
) -> (Arc<dyn Store>, CredentialKeys, Arc<KeyEntry>) {
    tests::entry(dir).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{NewCredential, SecretBox, SqliteStore};

    pub(super) async fn entry(
        dir: &std::path::Path,
    ) -> (Arc<dyn Store>, CredentialKeys, Arc<KeyEntry>) {
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open(dir, SecretBox::generate().unwrap()).expect("open store"));
        store
            .create_credential(NewCredential {
                id: "k1".into(),
                display_name: "k1".into(),
                api_key: ApiKey::new("first-key-0001"),
                now_ms: 1,
            })
            .await
            .unwrap();
        let keys = CredentialKeys::new(store.clone());
        let entry = keys.bind("k1", store.credential_key("k1").await.unwrap());
        (store, keys, entry)
    }

    #[test]
    fn only_401_and_403_refuse_and_only_answers_about_the_request_accept() {
        assert_eq!(Evidence::of_status(401), Evidence::Refused { status: 401 });
        assert_eq!(Evidence::of_status(403), Evidence::Refused { status: 403 });
        for accepted in [200, 201, 204, 400, 404, 422] {
            assert_eq!(
                Evidence::of_status(accepted),
                Evidence::Accepted,
                "{accepted}"
            );
        }
        for unknown in [408, 429, 500, 502, 503, 504, 302] {
            assert_eq!(Evidence::of_status(unknown), Evidence::Unknown, "{unknown}");
        }
    }

    #[tokio::test]
    async fn refusals_in_a_row_refuse_the_key_and_are_stored() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _keys, entry) = entry(dir.path()).await;
        let refused = Evidence::Refused { status: 401 };
        for _ in 1..REFUSALS_TO_STOP {
            entry.observe(1, refused, "destinations/a").await;
        }
        // An accepted key breaks the streak; so the count starts again.
        entry.observe(1, Evidence::Accepted, "destinations/b").await;
        for _ in 1..REFUSALS_TO_STOP {
            entry.observe(1, refused, "destinations/a").await;
            entry.observe(1, Evidence::Unknown, "destinations/a").await;
        }
        assert!(
            entry.current().refusal.is_none(),
            "unknowns neither count nor break the streak"
        );
        entry.observe(1, refused, "destinations/a").await;
        let refusal = entry.current().refusal.clone().expect("refused");
        assert_eq!(refusal.http_status, 401);
        assert!(
            refusal.detail.contains("destinations/a"),
            "{}",
            refusal.detail
        );
        let stored = store.get_credential("k1").await.unwrap();
        assert_eq!(stored.refusal, Some(refusal));
    }

    #[tokio::test]
    async fn answers_about_a_replaced_key_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _keys, entry) = entry(dir.path()).await;
        entry
            .observe(1, Evidence::Refused { status: 403 }, "d")
            .await;
        entry.replace(ApiKey::new("second-key-0002"), 2);
        assert_eq!(entry.current().version, 2);
        assert_eq!(entry.current().key.expose(), "second-key-0002");
        for _ in 0..REFUSALS_TO_STOP * 2 {
            entry
                .observe(1, Evidence::Refused { status: 401 }, "d")
                .await;
        }
        assert!(entry.current().refusal.is_none());
        // The streak of the new key starts from zero.
        for _ in 1..REFUSALS_TO_STOP {
            entry
                .observe(2, Evidence::Refused { status: 401 }, "d")
                .await;
        }
        assert!(entry.current().refusal.is_none());
        // An older key from the store is not taken over the newer one held.
        entry.replace(ApiKey::new("stale"), 1);
        assert_eq!(entry.current().key.expose(), "second-key-0002");
        assert!(store.get_credential("k1").await.unwrap().refusal.is_none());
    }

    #[tokio::test]
    async fn an_accepted_call_with_the_same_key_ends_the_refusal() {
        let dir = tempfile::tempdir().unwrap();
        let (store, keys, entry) = entry(dir.path()).await;
        for _ in 0..REFUSALS_TO_STOP {
            entry
                .observe(1, Evidence::Refused { status: 401 }, "d")
                .await;
        }
        assert!(store.get_credential("k1").await.unwrap().refusal.is_some());
        // A stream opening now finds the same entry, refused.
        let again = keys.bind("k1", store.credential_key("k1").await.unwrap());
        assert!(again.current().refusal.is_some());
        entry
            .observe(1, Evidence::Accepted, "VerifyCredential")
            .await;
        assert!(entry.current().refusal.is_none());
        assert!(store.get_credential("k1").await.unwrap().refusal.is_none());
    }

    #[tokio::test]
    async fn a_refusal_stored_by_an_earlier_run_is_known_to_new_streams() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _keys, entry) = entry(dir.path()).await;
        for _ in 0..REFUSALS_TO_STOP {
            entry
                .observe(1, Evidence::Refused { status: 401 }, "d")
                .await;
        }
        let restarted = CredentialKeys::new(store.clone());
        let fresh = restarted.bind("k1", store.credential_key("k1").await.unwrap());
        assert_eq!(
            fresh.current().refusal.as_ref().map(|r| r.http_status),
            Some(401)
        );
    }
}
