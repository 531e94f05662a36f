//! Behaviour of the SQLite store through the `Store` trait, as the server sees it (`Arc<dyn Store>`).

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use rusqlite::Connection;

use super::*;
use crate::domain::credential::Refusal;
use crate::domain::destination::{DestinationConfig, DestinationState};
use crate::store::{CredentialUpdate, DEFAULT_PAGE_SIZE, SECRET_KEY_FILE};

const KEY: &str = "groove-secret-api-key-0123456789";

pub(super) fn open(dir: &Path) -> Arc<dyn Store> {
    let secrets = SecretBox::load_or_create(dir).expect("secret key");
    Arc::new(SqliteStore::open(dir, secrets).expect("open store"))
}

pub(super) fn new_credential(id: &str) -> NewCredential {
    NewCredential {
        id: id.to_string(),
        display_name: format!("Credential {id}"),
        api_key: ApiKey::new(format!("{KEY}-{id}")),
        now_ms: 1_000,
    }
}

pub(super) fn destination(id: &str, credential_id: &str) -> Destination {
    let config = DestinationConfig {
        exclude_attributes: vec!["customer.email".to_string()],
        response_webhook: Some("https://hooks.example/groove".to_string()),
        ..DestinationConfig::default()
    };
    Destination {
        id: id.to_string(),
        display_name: format!("Destination {id}"),
        credential_id: credential_id.to_string(),
        state: DestinationState::Inactive,
        config,
        create_time_ms: 2_000,
        update_time_ms: 2_000,
        revision: 1,
    }
}

/// A side connection for poking at the file directly, as an attacker or a damaged disk would.
pub(super) fn raw(dir: &Path) -> Connection {
    let conn = Connection::open(dir.join(DATABASE_FILE)).unwrap();
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .unwrap();
    conn
}

async fn all_destination_ids(store: &dyn Store, page_size: u32) -> (Vec<String>, usize) {
    let mut ids = Vec::new();
    let mut pages = 0;
    let mut request = Some(PageRequest::first(page_size));
    while let Some(current) = request {
        let page = store.list_destinations(current).await.unwrap();
        pages += 1;
        ids.extend(page.items.iter().map(|d| d.id.clone()));
        request = PageRequest::next(page_size, &page);
    }
    (ids, pages)
}

#[tokio::test]
async fn credential_crud() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());

    let created = store
        .create_credential(new_credential("main"))
        .await
        .unwrap();
    assert_eq!(created.id, "main");
    assert_eq!(created.api_key_hint, "****main");
    assert_eq!(created.create_time_ms, 1_000);
    assert_eq!(store.get_credential("main").await.unwrap(), created);
    assert_eq!(
        store.credential_api_key("main").await.unwrap().expose(),
        format!("{KEY}-main")
    );

    store.delete_credential("main").await.unwrap();
    let err = store.get_credential("main").await.unwrap_err();
    assert_eq!(err.to_string(), "credential credentials/main not found");
    assert!(matches!(
        store.credential_api_key("main").await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.delete_credential("main").await,
        Err(StoreError::NotFound { .. })
    ));
}

fn update(id: &str) -> CredentialUpdate {
    CredentialUpdate {
        id: id.to_string(),
        display_name: None,
        api_key: None,
        now_ms: 5_000,
    }
}

fn refusal(status: u16) -> Refusal {
    Refusal {
        http_status: status,
        refuse_time_ms: 4_000,
        detail: format!("groove answered {status} to 3 calls in a row"),
    }
}

#[tokio::test]
async fn credential_updates_change_only_the_fields_given() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let created = store
        .create_credential(new_credential("main"))
        .await
        .unwrap();
    assert_eq!((created.key_version, created.refusal.clone()), (1, None));

    let renamed = store
        .update_credential(CredentialUpdate {
            display_name: Some("Support key".into()),
            ..update("main")
        })
        .await
        .unwrap();
    assert_eq!(renamed.display_name, "Support key");
    assert_eq!(renamed.update_time_ms, 5_000);
    assert_eq!(
        (renamed.key_version, renamed.api_key_hint.as_str()),
        (1, "****main"),
        "the key is kept"
    );
    assert_eq!(
        store.credential_api_key("main").await.unwrap().expose(),
        format!("{KEY}-main")
    );

    let rekeyed = store
        .update_credential(CredentialUpdate {
            api_key: Some(ApiKey::new("a-brand-new-key-9876")),
            now_ms: 6_000,
            ..update("main")
        })
        .await
        .unwrap();
    assert_eq!(rekeyed.display_name, "Support key", "the name is kept");
    assert_eq!(rekeyed.api_key_hint, "****9876");
    assert_eq!(rekeyed.key_version, 2);
    assert_eq!(rekeyed.update_time_ms, 6_000);
    assert_eq!(rekeyed.create_time_ms, 1_000);
    assert_eq!(store.get_credential("main").await.unwrap(), rekeyed);
    let stored = store.credential_key("main").await.unwrap();
    assert_eq!(stored.key.expose(), "a-brand-new-key-9876");
    assert_eq!(stored.key_version, 2);

    let both = store
        .update_credential(CredentialUpdate {
            display_name: Some("Both".into()),
            api_key: Some(ApiKey::new("third-key-aaaa")),
            ..update("main")
        })
        .await
        .unwrap();
    assert_eq!((both.display_name.as_str(), both.key_version), ("Both", 3));

    let missing = store
        .update_credential(CredentialUpdate {
            display_name: Some("x".into()),
            ..update("nope")
        })
        .await
        .unwrap_err();
    assert_eq!(missing.to_string(), "credential credentials/nope not found");
    assert!(matches!(
        store.credential_key("nope").await,
        Err(StoreError::NotFound { .. })
    ));
}

#[tokio::test]
async fn a_refusal_is_stored_against_its_key_version_and_ends_with_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store
        .create_credential(new_credential("main"))
        .await
        .unwrap();

    assert!(store
        .set_credential_refusal("main", 1, Some(refusal(401)))
        .await
        .unwrap());
    let refused = store.get_credential("main").await.unwrap();
    assert_eq!(refused.refusal, Some(refusal(401)));
    assert_eq!(
        refused.update_time_ms, 1_000,
        "a refusal is not a user's change"
    );
    assert_eq!(
        store.credential_key("main").await.unwrap().refusal,
        Some(refusal(401))
    );
    // Listings show it too.
    let listed = store
        .list_credentials(PageRequest::first(10))
        .await
        .unwrap();
    assert_eq!(listed.items[0].refusal, Some(refusal(401)));

    // A refusal seen with another key version is not written.
    assert!(!store
        .set_credential_refusal("main", 2, Some(refusal(403)))
        .await
        .unwrap());
    assert_eq!(
        store.get_credential("main").await.unwrap().refusal,
        Some(refusal(401))
    );

    // Renaming keeps it; a new key ends it, and the old key's refusals no longer land.
    let renamed = store
        .update_credential(CredentialUpdate {
            display_name: Some("renamed".into()),
            ..update("main")
        })
        .await
        .unwrap();
    assert_eq!(renamed.refusal, Some(refusal(401)));
    let rekeyed = store
        .update_credential(CredentialUpdate {
            api_key: Some(ApiKey::new("the-right-key-0000")),
            ..update("main")
        })
        .await
        .unwrap();
    assert_eq!((rekeyed.key_version, rekeyed.refusal), (2, None));
    assert!(!store
        .set_credential_refusal("main", 1, Some(refusal(401)))
        .await
        .unwrap());
    assert_eq!(store.get_credential("main").await.unwrap().refusal, None);

    // Cleared by a call that succeeded with the same key.
    assert!(store
        .set_credential_refusal("main", 2, Some(refusal(403)))
        .await
        .unwrap());
    assert!(store.set_credential_refusal("main", 2, None).await.unwrap());
    assert_eq!(store.get_credential("main").await.unwrap().refusal, None);

    assert!(matches!(
        store.set_credential_refusal("nope", 1, None).await,
        Err(StoreError::NotFound { .. })
    ));
}

#[tokio::test]
async fn a_refusal_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        store
            .create_credential(new_credential("main"))
            .await
            .unwrap();
        store
            .set_credential_refusal("main", 1, Some(refusal(401)))
            .await
            .unwrap();
    }
    let store = open(dir.path());
    assert_eq!(
        store.get_credential("main").await.unwrap().refusal,
        Some(refusal(401))
    );
}

#[tokio::test]
async fn destination_crud() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store
        .create_credential(new_credential("main"))
        .await
        .unwrap();
    store
        .create_credential(new_credential("other"))
        .await
        .unwrap();

    let created = store
        .create_destination(destination("42", "main"))
        .await
        .unwrap();
    assert_eq!(store.get_destination("42").await.unwrap(), created);

    let mut changed = created.clone();
    changed.display_name = "Renamed".to_string();
    changed.credential_id = "other".to_string();
    changed.state = DestinationState::Active;
    changed.config.batching.enabled = true;
    changed.revision = 2;
    changed.update_time_ms = 3_000;
    changed.create_time_ms = 999_999; // ignored: creation time is immutable
    let updated = store.update_destination(changed.clone(), 1).await.unwrap();
    assert_eq!(updated.create_time_ms, 2_000);
    assert_eq!(updated.display_name, "Renamed");
    assert_eq!(store.get_destination("42").await.unwrap(), updated);

    store.delete_destination("42", Some(2)).await.unwrap();
    let err = store.get_destination("42").await.unwrap_err();
    assert_eq!(err.to_string(), "destination destinations/42 not found");
    assert!(matches!(
        store.delete_destination("42", None).await,
        Err(StoreError::NotFound { .. })
    ));
    changed.revision = 3;
    assert!(matches!(
        store.update_destination(changed, 2).await,
        Err(StoreError::NotFound { .. })
    ));
}

#[tokio::test]
async fn duplicate_ids_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store
        .create_credential(new_credential("main"))
        .await
        .unwrap();
    let err = store
        .create_credential(new_credential("main"))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "credential credentials/main already exists"
    );

    store
        .create_destination(destination("a", "main"))
        .await
        .unwrap();
    let err = store
        .create_destination(destination("a", "main"))
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "destination destinations/a already exists");
}

#[tokio::test]
async fn destinations_need_an_existing_credential() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let err = store
        .create_destination(destination("a", "ghost"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::CredentialNotFound { id } if id == "ghost"),
        "{err:?}"
    );

    store
        .create_credential(new_credential("main"))
        .await
        .unwrap();
    let created = store
        .create_destination(destination("a", "main"))
        .await
        .unwrap();
    let mut moved = created.clone();
    moved.credential_id = "ghost".to_string();
    moved.revision = 2;
    assert!(matches!(
        store.update_destination(moved, 1).await,
        Err(StoreError::CredentialNotFound { .. })
    ));
    assert_eq!(store.get_destination("a").await.unwrap(), created);
}

#[tokio::test]
async fn credential_in_use_cannot_be_deleted_until_released() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store
        .create_credential(new_credential("main"))
        .await
        .unwrap();
    store
        .create_destination(destination("b", "main"))
        .await
        .unwrap();
    store
        .create_destination(destination("a", "main"))
        .await
        .unwrap();

    let err = store.delete_credential("main").await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "credential credentials/main is used by destinations/a, destinations/b"
    );
    assert!(store.get_credential("main").await.is_ok());

    store.delete_destination("a", None).await.unwrap();
    store.delete_destination("b", None).await.unwrap();
    store.delete_credential("main").await.unwrap();
}

#[tokio::test]
async fn stale_revisions_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store
        .create_credential(new_credential("main"))
        .await
        .unwrap();
    let v1 = store
        .create_destination(destination("a", "main"))
        .await
        .unwrap();

    let mut first = v1.clone();
    first.display_name = "first writer".to_string();
    first.revision = 2;
    store.update_destination(first, 1).await.unwrap();

    // A second writer that also read revision 1 loses.
    let mut second = v1.clone();
    second.display_name = "second writer".to_string();
    second.revision = 2;
    let err = store.update_destination(second, 1).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::RevisionMismatch {
                expected: 1,
                actual: 2,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        store.get_destination("a").await.unwrap().display_name,
        "first writer"
    );

    let err = store.delete_destination("a", Some(1)).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "destination destinations/a has changed: expected revision 1, found 2"
    );
    assert!(store.get_destination("a").await.is_ok());

    // An update must move the revision forward, or two versions would share an etag.
    let mut same = v1;
    same.revision = 2;
    assert!(matches!(
        store.update_destination(same, 2).await,
        Err(StoreError::Internal { .. })
    ));
}

#[tokio::test]
async fn concurrent_compare_and_swap_has_exactly_one_winner() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store
        .create_credential(new_credential("main"))
        .await
        .unwrap();
    let v1 = store
        .create_destination(destination("a", "main"))
        .await
        .unwrap();
    let attempts: Vec<_> = (0..20)
        .map(|i| {
            let store = Arc::clone(&store);
            let mut update = v1.clone();
            update.display_name = format!("writer {i}");
            update.revision = 2;
            tokio::spawn(async move { store.update_destination(update, 1).await })
        })
        .collect();
    let mut winners = 0;
    for attempt in attempts {
        match attempt.await.unwrap() {
            Ok(_) => winners += 1,
            Err(StoreError::RevisionMismatch { .. }) => {}
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(winners, 1);
}

#[tokio::test]
async fn listings_page_through_everything_in_id_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store
        .create_credential(new_credential("main"))
        .await
        .unwrap();
    let mut expected = BTreeSet::new();
    for i in 0..7 {
        let id = format!("d{}", (i * 5) % 7); // inserted out of order
        store
            .create_destination(destination(&id, "main"))
            .await
            .unwrap();
        expected.insert(id);
    }
    let expected: Vec<String> = expected.into_iter().collect();

    let (ids, pages) = all_destination_ids(store.as_ref(), 3).await;
    assert_eq!(ids, expected);
    assert_eq!(pages, 3);
    // An exact multiple of the page size ends without a trailing empty page.
    let (ids, pages) = all_destination_ids(store.as_ref(), 7).await;
    assert_eq!((ids.len(), pages), (7, 1));
    // 0 means the default size.
    let (_, pages) = all_destination_ids(store.as_ref(), 0).await;
    assert_eq!(pages, 1);

    for id in ["c", "a", "b"] {
        store.create_credential(new_credential(id)).await.unwrap();
    }
    let first = store.list_credentials(PageRequest::first(2)).await.unwrap();
    let names: Vec<_> = first.items.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    let rest = store
        .list_credentials(PageRequest::next(2, &first).unwrap())
        .await
        .unwrap();
    let names: Vec<_> = rest.items.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(names, ["c", "main"]);
    assert_eq!(rest.next_page_token, None);

    let bad = PageRequest {
        page_size: 2,
        after: Some("not a token!".to_string()),
    };
    assert!(matches!(
        store.list_credentials(bad).await,
        Err(StoreError::InvalidPageToken)
    ));
}

#[tokio::test]
async fn default_page_size_applies_to_large_listings() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    for i in 0..(DEFAULT_PAGE_SIZE + 1) {
        store
            .create_credential(new_credential(&format!("c{i:03}")))
            .await
            .unwrap();
    }
    let page = store
        .list_credentials(PageRequest::default())
        .await
        .unwrap();
    assert_eq!(page.items.len(), DEFAULT_PAGE_SIZE as usize);
    assert!(page.next_page_token.is_some());
}

#[tokio::test]
async fn data_survives_reopen_with_the_same_key_file() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join(SECRET_KEY_FILE);
    let (credential, destination_v1) = {
        let store = open(dir.path());
        let credential = store
            .create_credential(new_credential("main"))
            .await
            .unwrap();
        let created = store
            .create_destination(destination("a", "main"))
            .await
            .unwrap();
        (credential, created)
    };
    let key_before = std::fs::read(&key_file).unwrap();

    let store = open(dir.path());
    assert_eq!(std::fs::read(&key_file).unwrap(), key_before);
    assert_eq!(store.get_credential("main").await.unwrap(), credential);
    assert_eq!(store.get_destination("a").await.unwrap(), destination_v1);
    assert_eq!(
        store.credential_api_key("main").await.unwrap().expose(),
        format!("{KEY}-main")
    );
}

#[tokio::test]
async fn a_different_secret_key_is_refused_at_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        store
            .create_credential(new_credential("main"))
            .await
            .unwrap();
    }
    let err = SqliteStore::open(dir.path(), SecretBox::generate().unwrap()).unwrap_err();
    assert!(matches!(err, StoreError::SecretKey { .. }), "{err:?}");
    assert!(err.to_string().contains("1 credential(s)"), "{err}");

    // With no credentials there is nothing the old key protects, so a new one is adopted.
    {
        let store = open(dir.path());
        store.delete_credential("main").await.unwrap();
    }
    let adopted = SecretBox::generate().unwrap();
    let store = SqliteStore::open(dir.path(), adopted).unwrap();
    store
        .create_credential(new_credential("new"))
        .await
        .unwrap();
    assert!(store.credential_api_key("new").await.is_ok());
}

#[tokio::test]
async fn damaged_ciphertext_is_a_decrypt_error_not_garbage() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store
        .create_credential(new_credential("main"))
        .await
        .unwrap();
    let conn = raw(dir.path());
    let mut sealed: Vec<u8> = conn
        .query_row(
            "SELECT api_key_sealed FROM credentials WHERE id = 'main'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    sealed[20] ^= 0x01;
    conn.execute(
        "UPDATE credentials SET api_key_sealed = ?1 WHERE id = 'main'",
        [&sealed],
    )
    .unwrap();
    let err = store.credential_api_key("main").await.unwrap_err();
    assert!(matches!(&err, StoreError::Decrypt { credential_id } if credential_id == "main"));
    assert!(!err.to_string().contains(KEY), "{err}");
}

#[tokio::test]
async fn ciphertext_is_bound_to_its_credential_id() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store
        .create_credential(new_credential("victim"))
        .await
        .unwrap();
    store
        .create_credential(new_credential("attacker"))
        .await
        .unwrap();
    raw(dir.path())
        .execute(
            "UPDATE credentials
             SET api_key_sealed = (SELECT api_key_sealed FROM credentials WHERE id = 'victim')
             WHERE id = 'attacker'",
            [],
        )
        .unwrap();
    assert!(matches!(
        store.credential_api_key("attacker").await,
        Err(StoreError::Decrypt { .. })
    ));
    assert!(store.credential_api_key("victim").await.is_ok());
}

#[tokio::test]
async fn api_keys_never_reach_the_disk_in_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    for id in ["one", "two"] {
        store.create_credential(new_credential(id)).await.unwrap();
    }
    // A replaced key is sealed like a created one.
    store
        .update_credential(CredentialUpdate {
            api_key: Some(ApiKey::new(format!("{KEY}-rotated"))),
            ..update("two")
        })
        .await
        .unwrap();
    assert!(store.credential_api_key("one").await.is_ok());
    // Checked while the store is open: the WAL file then still holds the freshly written pages.
    let mut files = 0;
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().and_then(|n| n.to_str()) == Some(SECRET_KEY_FILE) {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        files += 1;
        assert!(
            !bytes
                .windows(KEY.len())
                .any(|window| window == KEY.as_bytes()),
            "plaintext key found in {}",
            path.display()
        );
    }
    assert!(
        files >= 2,
        "expected the database and its WAL, saw {files} file(s)"
    );
}

#[tokio::test]
async fn errors_never_show_the_api_key() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store
        .create_credential(new_credential("main"))
        .await
        .unwrap();
    let err = store
        .create_credential(new_credential("main"))
        .await
        .unwrap_err();
    assert!(!format!("{err} {err:?}").contains(KEY));
}

#[tokio::test]
async fn corrupt_rows_are_reported_not_misread() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store
        .create_credential(new_credential("main"))
        .await
        .unwrap();
    store
        .create_destination(destination("a", "main"))
        .await
        .unwrap();
    raw(dir.path())
        .execute(
            "UPDATE destinations SET state = 'exploded' WHERE id = 'a'",
            [],
        )
        .unwrap();
    let err = store.get_destination("a").await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "stored destination destinations/a is corrupt: unknown state \"exploded\""
    );
}

#[tokio::test]
async fn database_file_lives_in_the_data_dir_in_wal_mode() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("not-yet-there");
    let store = SqliteStore::open(&data_dir, SecretBox::generate().unwrap()).unwrap();
    assert_eq!(store.path(), data_dir.join(DATABASE_FILE));
    let conn = raw(&data_dir);
    let mode: String = conn
        .pragma_query_value(None, "journal_mode", |row| row.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let version: u32 = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .unwrap();
    assert_eq!(version, migrations::SCHEMA_VERSION);
}

#[cfg(unix)]
#[tokio::test]
async fn database_and_its_side_files_are_private_and_loose_ones_are_tightened() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o7777;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let database = data_dir.join(DATABASE_FILE);
    let wal = side_file(&database, "-wal");
    let shm = side_file(&database, "-shm");
    {
        let store = open(&data_dir);
        store
            .create_credential(new_credential("main"))
            .await
            .unwrap();
        assert_eq!(mode(&data_dir), 0o700);
        // SQLite made the side files itself, with the database's mode.
        for path in [&database, &wal, &shm] {
            assert_eq!(mode(path), 0o600, "{}", path.display());
        }
    }
    // What an older version left: a 0644 database, and side files of a process that died.
    let loose = std::fs::Permissions::from_mode(0o644);
    std::fs::set_permissions(&database, loose.clone()).unwrap();
    for path in [&wal, &shm] {
        if !path.exists() {
            std::fs::write(path, b"").unwrap();
        }
        std::fs::set_permissions(path, loose.clone()).unwrap();
    }
    let store = open(&data_dir);
    for path in [&database, &wal, &shm] {
        assert_eq!(mode(path), 0o600, "{}", path.display());
    }
    assert_eq!(store.get_credential("main").await.unwrap().id, "main");
}
