//! Group commit against a real PostgreSQL: the batches of several shards in one transaction
//! write every row for its own shard, and a group that fails never costs another shard its
//! batch — a lost lease or a command that can never be applied fails only its own batch.

mod common;

use chrono::{Duration, Utc};
use common::{dec, envelope, fresh_database};
use tally_core::ledger::{Rules, WithdrawPolicy};
use tally_core::{Command, Kind, OutcomeStatus};
use tally_store::leases::{self, Lease};
use tally_store::{Pool, StoreError};
use tally_worker::apply::{apply_group, ShardBatch};
use tally_worker::commit::{commit, Committer};

fn rules() -> Rules {
    Rules {
        withdraw_policy: WithdrawPolicy::AlwaysApply,
        hold_ttl: Duration::minutes(15),
    }
}

/// Leases on shards 0 and 1 for one worker.
async fn two_leases(pool: &Pool) -> (Lease, Lease) {
    leases::init(pool, 2).await.expect("lease rows");
    let mut owned = leases::acquire(pool, "test-worker", 2, std::time::Duration::from_secs(3600))
        .await
        .expect("acquire");
    let second = owned.pop().expect("shard 1");
    let first = owned.pop().expect("shard 0");
    (first, second)
}

/// Shard 0's and shard 1's batches, in that order.
fn pair<'a>(
    (zero, a): (&'a Lease, &'a [Command]),
    (one, b): (&'a Lease, &'a [Command]),
) -> [ShardBatch<'a>; 2] {
    [
        ShardBatch {
            lease: zero,
            commands: a,
        },
        ShardBatch {
            lease: one,
            commands: b,
        },
    ]
}

fn deposit(id: &str, account: &str, amount: &str) -> Command {
    Command::from(envelope(
        id,
        Kind::Deposit,
        account,
        dec(amount),
        Utc::now(),
    ))
}

fn request(id: &str, account: &str, amount: &str) -> Command {
    Command::from(envelope(
        id,
        Kind::WithdrawRequest,
        account,
        dec(amount),
        Utc::now(),
    ))
}

async fn balance(pool: &Pool, account: &str) -> Option<String> {
    let client = pool.get().await.expect("connection");
    client
        .query_opt(
            "SELECT balance::text FROM accounts WHERE id = $1",
            &[&account],
        )
        .await
        .expect("balance")
        .map(|r| r.get(0))
}

async fn shard_of(pool: &Pool, sql: &str, id: &str) -> i32 {
    let client = pool.get().await.expect("connection");
    client
        .query_one(sql, &[&id])
        .await
        .unwrap_or_else(|e| panic!("{sql} {id}: {e}"))
        .get(0)
}

#[tokio::test]
async fn the_batches_of_two_shards_commit_together_and_each_row_carries_its_own_shard() {
    let db = fresh_database().await;
    let pool = db.pool(2);
    let (zero, one) = two_leases(&pool).await;
    let a = [deposit("a1", "alice", "10"), request("a2", "alice", "4")];
    let b = [deposit("b1", "bob", "7"), request("b2", "bob", "3")];
    let batches = pair((&zero, &a), (&one, &b));
    let outcomes = apply_group(&pool, &batches, &rules())
        .await
        .expect("the group commits");

    let statuses: Vec<Vec<OutcomeStatus>> = outcomes
        .iter()
        .map(|o| o.iter().flatten().map(|o| o.status).collect())
        .collect();
    use OutcomeStatus::{Applied, Approved};
    assert_eq!(statuses, [[Applied, Approved], [Applied, Approved]]);
    assert_eq!(balance(&pool, "alice").await.as_deref(), Some("10"));
    assert_eq!(balance(&pool, "bob").await.as_deref(), Some("7"));
    let record = "SELECT shard FROM transactions WHERE id = $1";
    let hold = "SELECT shard FROM holds WHERE request_id = $1";
    assert_eq!(shard_of(&pool, record, "a1").await, 0);
    assert_eq!(shard_of(&pool, hold, "a2").await, 0);
    assert_eq!(shard_of(&pool, record, "b1").await, 1);
    assert_eq!(shard_of(&pool, hold, "b2").await, 1);
}

#[tokio::test]
async fn a_lost_lease_fails_only_the_batch_of_its_shard() {
    let db = fresh_database().await;
    let pool = db.pool(2);
    let (zero, one) = two_leases(&pool).await;
    // Another worker took shard 1: the lease in hand is of an older epoch.
    let stale = Lease {
        epoch: one.epoch - 1,
        ..one.clone()
    };
    let (a, b) = ([deposit("a1", "alice", "10")], [deposit("b1", "bob", "7")]);
    let batches = pair((&zero, &a), (&stale, &b));
    // Alone in one transaction, the group cannot commit at all.
    let together = apply_group(&pool, &batches, &rules()).await;
    assert!(
        matches!(together, Err(StoreError::Fenced { shard: 1 })),
        "{together:?}"
    );

    let results = commit(&pool, &batches, &rules()).await;
    assert!(results[0].is_ok(), "{:?}", results[0]);
    assert!(
        matches!(results[1], Err(StoreError::Fenced { shard: 1 })),
        "{:?}",
        results[1]
    );
    assert_eq!(balance(&pool, "alice").await.as_deref(), Some("10"));
    assert_eq!(
        balance(&pool, "bob").await,
        None,
        "the fenced batch wrote nothing"
    );
}

#[tokio::test]
async fn a_command_that_can_never_be_applied_fails_only_the_batch_it_is_in() {
    let db = fresh_database().await;
    let pool = db.pool(2);
    let (zero, one) = two_leases(&pool).await;
    // A record this build cannot read (a newer writer's reason): its redelivery cannot be
    // decided, which is a permanent error of its batch.
    let first = [deposit("b0", "bob", "1")];
    commit(
        &pool,
        &[ShardBatch {
            lease: &one,
            commands: &first,
        }],
        &rules(),
    )
    .await
    .pop()
    .expect("one result")
    .expect("b0 commits");
    let client = pool.get().await.expect("connection");
    client
        .execute(
            "UPDATE transactions SET reason = 'from_the_future' WHERE id = 'b0'",
            &[],
        )
        .await
        .expect("edit");

    let (a, b) = (
        [deposit("a1", "alice", "10")],
        [deposit("b1", "bob", "7"), deposit("b0", "bob", "1")],
    );
    let batches = pair((&zero, &a), (&one, &b));
    let results = commit(&pool, &batches, &rules()).await;
    assert!(results[0].is_ok(), "{:?}", results[0]);
    assert!(
        matches!(results[1], Err(StoreError::UnknownCode { .. })),
        "{:?}",
        results[1]
    );
    assert_eq!(balance(&pool, "alice").await.as_deref(), Some("10"));
    assert_eq!(balance(&pool, "bob").await.as_deref(), Some("1"));
}

#[tokio::test]
async fn shard_loops_sharing_a_committer_each_get_their_own_outcomes() {
    let db = fresh_database().await;
    let pool = db.pool(2);
    let (zero, one) = two_leases(&pool).await;
    let committer = Committer::spawn(pool.clone(), rules());
    // Two shard loops, each with one batch in hand at a time, as the worker runs them.
    let shard_loop = |lease: &'static Lease, account: &'static str| {
        let committer = committer.clone();
        tokio::spawn(async move {
            // Nine small batches (grouped when both are ready), then a backlogged shard's
            // large one (committed alone).
            for (i, size) in [1, 1, 1, 1, 1, 1, 1, 1, 1, 150].into_iter().enumerate() {
                let commands: std::sync::Arc<[Command]> = (0..size)
                    .map(|j| deposit(&format!("{account}{i}.{j}"), account, "1"))
                    .collect();
                let outcomes = committer.apply(lease, &commands).await.expect("applied");
                assert_eq!(outcomes.len(), size, "{account}{i}");
                for outcome in &outcomes {
                    let status = outcome.as_ref().map(|o| o.status);
                    assert_eq!(status, Some(OutcomeStatus::Applied), "{account}{i}");
                }
            }
        })
    };
    let (zero, one): (&'static Lease, &'static Lease) =
        (Box::leak(Box::new(zero)), Box::leak(Box::new(one)));
    let (a, b) = (shard_loop(zero, "alice"), shard_loop(one, "bob"));
    a.await.expect("loop of shard 0");
    b.await.expect("loop of shard 1");
    assert_eq!(balance(&pool, "alice").await.as_deref(), Some("159"));
    assert_eq!(balance(&pool, "bob").await.as_deref(), Some("159"));
}
