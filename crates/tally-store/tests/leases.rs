//! Shard leases against a real PostgreSQL: who may take a shard, what the epoch fence lets
//! commit, and that a takeover never lands in the middle of the owner's batch.

use std::time::Duration;
use tally_store::leases::{self, Lease};
use tally_store::{Pool, StoreError};
use tally_testkit::{eventually, fresh_database};

const LONG: Duration = Duration::from_secs(3600);

/// Runs the fence in a transaction of its own and commits: what a batch of `lease` would see.
async fn fence_result(pool: &Pool, lease: &Lease) -> Result<(), StoreError> {
    let mut client = pool.get().await.expect("connection");
    let tx = client.transaction().await.expect("begin");
    leases::fence(&tx, &[lease]).await?;
    tx.commit().await.expect("commit");
    Ok(())
}

/// Makes every lease of `shard` expired now (what a silent owner's lease becomes after its TTL).
async fn expire(pool: &Pool, shard: u16) {
    let client = pool.get().await.expect("connection");
    client
        .execute(
            "UPDATE shard_leases SET expires_at = now() - interval '1 second' WHERE shard = $1",
            &[&i32::from(shard)],
        )
        .await
        .expect("expire");
}

fn shards(leases: &[Lease]) -> Vec<u16> {
    leases.iter().map(|l| l.shard).collect()
}

#[tokio::test]
async fn acquire_takes_the_lowest_free_shards_and_nobody_else_gets_them_while_held() {
    let db = fresh_database().await;
    let pool = db.pool(2);
    leases::init(&pool, 4).await.expect("init");
    leases::init(&pool, 4).await.expect("init is idempotent");

    let a = leases::acquire(&pool, "a", 3, LONG).await.expect("acquire");
    assert_eq!(shards(&a), [0, 1, 2]);
    assert!(a.iter().all(|l| l.epoch == 1 && l.owner == "a"), "{a:?}");
    let b = leases::acquire(&pool, "b", 3, LONG).await.expect("acquire");
    assert_eq!(shards(&b), [3], "only the free shard");
    assert!(leases::acquire(&pool, "c", 1, LONG)
        .await
        .expect("acquire")
        .is_empty());
    assert!(leases::acquire(&pool, "c", 0, LONG)
        .await
        .expect("acquire")
        .is_empty());

    let owners = leases::owners(&pool).await.expect("owners");
    let named: Vec<Option<&str>> = owners.iter().map(|(_, o, _)| o.as_deref()).collect();
    assert_eq!(named, [Some("a"), Some("a"), Some("a"), Some("b")]);
}

#[tokio::test]
async fn after_a_takeover_only_the_new_epoch_passes_the_fence() {
    let db = fresh_database().await;
    let pool = db.pool(2);
    leases::init(&pool, 1).await.expect("init");
    let old = leases::acquire(&pool, "a", 1, LONG)
        .await
        .expect("acquire")
        .remove(0);
    fence_result(&pool, &old)
        .await
        .expect("the owner passes its fence");

    expire(&pool, 0).await;
    assert!(
        matches!(
            fence_result(&pool, &old).await,
            Err(StoreError::Fenced { shard: 0 })
        ),
        "an expired lease no longer passes, even before anyone takes the shard"
    );
    let new = leases::acquire(&pool, "b", 1, LONG)
        .await
        .expect("acquire")
        .remove(0);
    assert_eq!(new.epoch, old.epoch + 1);
    fence_result(&pool, &new)
        .await
        .expect("the new owner passes");
    // The old owner cannot commit, and renewing does not give the shard back to it.
    assert!(matches!(
        fence_result(&pool, &old).await,
        Err(StoreError::Fenced { .. })
    ));
    assert!(leases::renew(&pool, "a", &[0], LONG)
        .await
        .expect("renew")
        .is_empty());
    // A release under the old epoch changes nothing.
    leases::release(&pool, &old).await.expect("release");
    fence_result(&pool, &new).await.expect("still the owner");
}

#[tokio::test]
async fn a_lease_that_expires_during_its_owners_batch_is_taken_only_after_that_batch_ends() {
    let db = fresh_database().await;
    let pool = db.pool(3);
    leases::init(&pool, 1).await.expect("init");
    let owner = leases::acquire(&pool, "a", 1, Duration::from_secs(5))
        .await
        .expect("acquire")
        .remove(0);

    // The owner's batch: fenced, still open when the lease runs out.
    let mut client = pool.get().await.expect("connection");
    let batch = client.transaction().await.expect("begin");
    leases::fence(&batch, &[&owner])
        .await
        .expect("fence while the lease is valid");
    let probe = pool.get().await.expect("connection");
    eventually(Duration::from_secs(15), || async {
        let row = probe
            .query_one(
                "SELECT expires_at <= now() FROM shard_leases WHERE shard = 0",
                &[],
            )
            .await
            .expect("read lease");
        row.get::<_, bool>(0).then_some(())
    })
    .await;
    assert!(
        leases::acquire(&pool, "b", 1, LONG)
            .await
            .expect("acquire")
            .is_empty(),
        "the row the batch holds is skipped, not taken under it"
    );

    batch.commit().await.expect("the owner's batch commits");
    let taken = leases::acquire(&pool, "b", 1, LONG).await.expect("acquire");
    assert_eq!(shards(&taken), [0], "free once the batch ended");
    assert!(matches!(
        fence_result(&pool, &owner).await,
        Err(StoreError::Fenced { .. })
    ));
}

#[tokio::test]
async fn renew_extends_only_the_shards_a_worker_still_runs_and_release_frees_at_once() {
    let db = fresh_database().await;
    let pool = db.pool(2);
    leases::init(&pool, 2).await.expect("init");
    let held = leases::acquire(&pool, "a", 2, Duration::from_secs(30))
        .await
        .expect("acquire");
    assert_eq!(shards(&held), [0, 1]);

    // Shard 1's consumer stopped (its release failed): it is not renewed, and it expires.
    let renewed = leases::renew(&pool, "a", &[0], LONG).await.expect("renew");
    assert_eq!(renewed, vec![held[0].clone()], "same epoch after a renewal");
    expire(&pool, 1).await;
    assert_eq!(
        shards(&leases::acquire(&pool, "b", 2, LONG).await.expect("acquire")),
        [1]
    );

    // A release frees the shard for the next worker at once, without waiting for the TTL.
    leases::release(&pool, &held[0]).await.expect("release");
    let next = leases::acquire(&pool, "c", 1, LONG).await.expect("acquire");
    assert_eq!(shards(&next), [0]);
    assert_eq!(next[0].epoch, held[0].epoch + 1);
}

#[tokio::test]
async fn heartbeats_count_live_workers_and_forget_silent_and_leaving_ones() {
    let db = fresh_database().await;
    let pool = db.pool(2);
    let ttl = Duration::from_secs(60);
    assert_eq!(leases::heartbeat(&pool, "a", ttl).await.expect("beat"), 1);
    assert_eq!(leases::heartbeat(&pool, "b", ttl).await.expect("beat"), 2);
    assert_eq!(leases::heartbeat(&pool, "c", ttl).await.expect("beat"), 3);

    leases::leave(&pool, "c").await.expect("leave");
    let client = pool.get().await.expect("connection");
    client
        .execute(
            "UPDATE workers SET heartbeat_at = now() - interval '2 minutes' WHERE id = 'a'",
            &[],
        )
        .await
        .expect("silence a");
    assert_eq!(
        leases::heartbeat(&pool, "b", ttl).await.expect("beat"),
        1,
        "a fell silent for longer than the TTL and c left"
    );
}

#[tokio::test]
async fn renewing_a_lease_neither_waits_for_nor_blocks_the_owners_batches() {
    let db = fresh_database().await;
    let pool = db.pool(3);
    leases::init(&pool, 1).await.expect("init");
    let lease = leases::acquire(&pool, "a", 1, LONG)
        .await
        .expect("acquire")
        .remove(0);

    let mut client = pool.get().await.expect("connection");
    let batch = client.transaction().await.expect("begin");
    leases::fence(&batch, &[&lease]).await.expect("fence");
    // The owner's lease tick while that batch is open: it must not queue behind the batch
    // (nor would the owner's next batches then queue behind the tick).
    let renewed = tokio::time::timeout(
        Duration::from_secs(10),
        leases::renew(&pool, "a", &[0], LONG),
    )
    .await
    .expect("the renewal waited for the open batch")
    .expect("renew");
    assert_eq!(renewed, vec![lease.clone()]);
    let next = tokio::time::timeout(Duration::from_secs(10), fence_result(&pool, &lease))
        .await
        .expect("a second batch waited");
    next.expect("a second batch of the owner passes the fence");
    batch.commit().await.expect("commit");
}
