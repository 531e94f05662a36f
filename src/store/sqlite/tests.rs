//! What only the SQLite store has: its file, the key file next to it, and what a damaged or tampered file reads
//! as. Behaviour of the `Store` trait itself is tested for every backend in `store::conformance`.

use std::path::Path;
use std::sync::Arc;

use rusqlite::Connection;

use super::*;
use crate::store::conformance::crud::{destination, new_credential, update, KEY};
use crate::store::SECRET_KEY_FILE;

pub(super) fn open(dir: &Path) -> Arc<dyn Store> {
    let secrets = SecretBox::load_or_create(dir).expect("secret key");
    Arc::new(SqliteStore::open(dir, secrets).expect("open store"))
}

/// A side connection for poking at the file directly, as an attacker or a damaged disk would.
pub(super) fn raw(dir: &Path) -> Connection {
    let conn = Connection::open(dir.join(DATABASE_FILE)).unwrap();
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .unwrap();
    conn
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
