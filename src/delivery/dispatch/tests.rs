use super::*;

fn unit(id: &str, key: &str) -> DeliveryUnit {
    DeliveryUnit {
        record_ids: vec![id.to_string()],
        records: Vec::new(),
        calls: Vec::new(),
        ordering_key: Some(key.to_string()),
        repeatable: true,
    }
}

async fn queued(room: &Arc<Semaphore>, id: &str, key: &str) -> Queued {
    (room.clone().acquire_owned().await.unwrap(), unit(id, key))
}

fn id(queued: Option<Queued>) -> Option<String> {
    queued.map(|(_, unit)| unit.record_ids[0].clone())
}

#[tokio::test]
async fn a_key_goes_at_once_when_free_and_its_later_units_follow_in_order() {
    let room = Arc::new(Semaphore::new(10));
    let chains = Chains::default();
    assert_eq!(
        id(chains.wait_or_go("t/1".into(), queued(&room, "a1", "t/1").await)),
        Some("a1".into())
    );
    assert_eq!(
        id(chains.wait_or_go("t/2".into(), queued(&room, "b1", "t/2").await)),
        Some("b1".into())
    );
    for later in ["a2", "a3"] {
        assert_eq!(
            id(chains.wait_or_go("t/1".into(), queued(&room, later, "t/1").await)),
            None
        );
    }
    assert_eq!(room.available_permits(), 8, "waiting units hold their room");
    assert_eq!(id(chains.next("t/1")), Some("a2".into()));
    assert_eq!(id(chains.next("t/2")), None, "t/2 is free again");
    assert_eq!(
        id(chains.wait_or_go("t/2".into(), queued(&room, "b2", "t/2").await)),
        Some("b2".into())
    );
    assert_eq!(id(chains.next("t/1")), Some("a3".into()));
    assert_eq!(id(chains.next("t/1")), None);
    assert_eq!(
        id(chains.wait_or_go("t/1".into(), queued(&room, "a4", "t/1").await)),
        Some("a4".into())
    );
}
