//! Credentials and destinations through the `Store` trait, as the server sees it (`Arc<dyn Store>`).

use std::collections::BTreeSet;
use std::sync::Arc;

use super::*;
use crate::domain::credential::Refusal;
use crate::domain::destination::{DestinationConfig, DestinationState};
use crate::store::{CredentialUpdate, DEFAULT_PAGE_SIZE};

pub(in crate::store) const KEY: &str = "groove-secret-api-key-0123456789";

pub(in crate::store) fn new_credential(id: &str) -> NewCredential {
    NewCredential {
        id: id.to_string(),
        display_name: format!("Credential {id}"),
        api_key: ApiKey::new(format!("{KEY}-{id}")),
        now_ms: 1_000,
    }
}

pub(in crate::store) fn destination(id: &str, credential_id: &str) -> Destination {
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

pub(super) async fn credential_crud(h: Harness) {
    let store = h.store();

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

pub(in crate::store) fn update(id: &str) -> CredentialUpdate {
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

pub(super) async fn credential_updates_change_only_the_fields_given(h: Harness) {
    let store = h.store();
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

pub(super) async fn a_refusal_is_stored_against_its_key_version_and_ends_with_the_key(h: Harness) {
    let store = h.store();
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

pub(super) async fn a_refusal_survives_a_restart(h: Harness) {
    {
        let store = h.store();
        store
            .create_credential(new_credential("main"))
            .await
            .unwrap();
        store
            .set_credential_refusal("main", 1, Some(refusal(401)))
            .await
            .unwrap();
    }
    let store = h.reopen().await;
    assert_eq!(
        store.get_credential("main").await.unwrap().refusal,
        Some(refusal(401))
    );
}

pub(super) async fn destination_crud(h: Harness) {
    let store = h.store();
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

pub(super) async fn duplicate_ids_are_refused(h: Harness) {
    let store = h.store();
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

pub(super) async fn destinations_need_an_existing_credential(h: Harness) {
    let store = h.store();
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

pub(super) async fn credential_in_use_cannot_be_deleted_until_released(h: Harness) {
    let store = h.store();
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

pub(super) async fn stale_revisions_are_refused(h: Harness) {
    let store = h.store();
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

pub(super) async fn concurrent_compare_and_swap_has_exactly_one_winner(h: Harness) {
    let store = h.store();
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

pub(super) async fn listings_page_through_everything_in_id_order(h: Harness) {
    let store = h.store();
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

pub(super) async fn default_page_size_applies_to_large_listings(h: Harness) {
    let store = h.store();
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

pub(super) async fn errors_never_show_the_api_key(h: Harness) {
    let store = h.store();
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
