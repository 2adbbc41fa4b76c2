//! The batch's store side against a real PostgreSQL: what `batch::write` commits is what the
//! next `batch::load` maps back to the ledger's types; a record another writer committed
//! since `load` makes the write fail as a conflict, with nothing of it kept; the hold sweep
//! releases expired holds.

use chrono::{DateTime, Duration, Utc};
use rust_decimal::Decimal;
use tally_core::command::NewTransaction;
use tally_core::ledger::{decide, Decision, Rules, WithdrawPolicy};
use tally_core::{Envelope, Kind, OutcomeStatus};
use tally_store::leases::{self, Lease};
use tally_store::{batch, Pool, StoreError};
use tally_testkit::fresh_database;

const RULES: Rules = Rules {
    withdraw_policy: WithdrawPolicy::RejectOverdraft,
    hold_ttl: Duration::minutes(15),
};

fn dec(s: &str) -> Decimal {
    Decimal::from_str_exact(s).expect("decimal literal")
}

fn command(id: &str, kind: Kind, account: &str, amount: &str) -> Envelope {
    let tx = NewTransaction {
        id: id.into(),
        kind,
        account_id: account.into(),
        amount: dec(amount),
        occurred_at: None,
        request_id: None,
        user_id: None,
        client_id: None,
        key_name: None,
    };
    Envelope::new(&tx, Utc::now())
}

async fn shard_leases(pool: &Pool, n: u16) -> Vec<Lease> {
    leases::init(pool, n).await.expect("lease rows");
    leases::acquire(
        pool,
        "store-test",
        i64::from(n),
        std::time::Duration::from_secs(3600),
    )
    .await
    .expect("acquire")
}

fn accounts_of(envelopes: &[Envelope]) -> Vec<&str> {
    let mut accounts: Vec<&str> = envelopes.iter().map(|e| e.account_id.as_str()).collect();
    accounts.sort_unstable();
    accounts.dedup();
    accounts
}

/// Fence, load and decide `envelopes` in `tx`; returns the decision and the batch's time.
async fn decided(
    tx: &deadpool_postgres::Transaction<'_>,
    lease: &Lease,
    envelopes: &[Envelope],
) -> (Decision, DateTime<Utc>) {
    let now = leases::fence(tx, &[lease]).await.expect("fence");
    let ids: Vec<&str> = envelopes.iter().map(|e| e.id.as_str()).collect();
    let snapshot = batch::load(tx, &ids, &accounts_of(envelopes), &[])
        .await
        .expect("load");
    (decide(envelopes, snapshot, now, &RULES), now)
}

/// One whole batch: decided and written in one transaction, committed.
async fn commit_batch(pool: &Pool, lease: &Lease, envelopes: &[Envelope]) -> Vec<OutcomeStatus> {
    let mut client = pool.get().await.expect("connection");
    let tx = client.transaction().await.expect("begin");
    let (decision, now) = decided(&tx, lease, envelopes).await;
    batch::write(&tx, |_| lease.shard, now, &decision.effects, &[])
        .await
        .expect("write");
    tx.commit().await.expect("commit");
    decision.outcomes.iter().map(|o| o.status).collect()
}

#[tokio::test]
async fn what_a_batch_writes_is_what_the_next_load_reads_back() {
    let db = fresh_database().await;
    let pool = db.pool(2);
    let lease = shard_leases(&pool, 1).await.remove(0);
    let batch_one = [
        command("d1", Kind::Deposit, "acc", "100.25"),
        command("r1", Kind::WithdrawRequest, "acc", "30"),
        command("w1", Kind::Withdraw, "acc", "500"),
    ];
    assert_eq!(
        commit_batch(&pool, &lease, &batch_one).await,
        [
            OutcomeStatus::Applied,
            OutcomeStatus::Approved,
            OutcomeStatus::Rejected
        ]
    );

    let mut client = pool.get().await.expect("connection");
    let tx = client.transaction().await.expect("begin");
    let snapshot = batch::load(&tx, &["d1", "r1", "w1", "unknown"], &["acc"], &[])
        .await
        .expect("load");
    let account = &snapshot.accounts["acc"];
    assert_eq!((account.balance, account.held), (dec("100.25"), dec("30")));
    assert_eq!(account.version, 3, "one version per recorded command");
    assert_eq!(snapshot.recorded.len(), 3, "the unknown id is not recorded");
    let request = &snapshot.recorded["r1"];
    assert_eq!(
        (request.kind, request.status),
        (Kind::WithdrawRequest, OutcomeStatus::Approved)
    );
    assert_eq!(snapshot.recorded["w1"].status, OutcomeStatus::Rejected);
    assert!(
        snapshot.recorded["w1"].reason.is_some(),
        "a rejection keeps its reason"
    );
    let [hold] = snapshot.holds.as_slice() else {
        panic!("one open hold expected: {:?}", snapshot.holds)
    };
    assert_eq!((hold.request_id.as_str(), hold.amount), ("r1", dec("30")));
    assert_eq!(request.hold_id, Some(hold.id));

    // The same commands again: every one is a duplicate answered as first decided.
    drop(tx);
    assert_eq!(
        commit_batch(&pool, &lease, &batch_one).await,
        [
            OutcomeStatus::Applied,
            OutcomeStatus::Approved,
            OutcomeStatus::Rejected
        ]
    );
    let check = pool.get().await.expect("connection");
    let rows: i64 = check
        .query_one("SELECT count(*) FROM transactions", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(rows, 3, "a redelivered batch records nothing new");
}

#[tokio::test]
async fn an_id_another_writer_recorded_since_load_fails_the_write_and_keeps_nothing() {
    let db = fresh_database().await;
    let pool = db.pool(3);
    let leases = shard_leases(&pool, 2).await;
    // One id used on two accounts of two shards at once: both batches load it as new.
    let on_a = [command("same-id", Kind::Deposit, "acc-a", "10")];
    let on_b = [command("same-id", Kind::Deposit, "acc-b", "10")];

    let mut first_client = pool.get().await.expect("connection");
    let first = first_client.transaction().await.expect("begin");
    let (first_decision, first_now) = decided(&first, &leases[0], &on_a).await;
    let mut second_client = pool.get().await.expect("connection");
    let second = second_client.transaction().await.expect("begin");
    let (second_decision, second_now) = decided(&second, &leases[1], &on_b).await;

    batch::write(&first, |_| 0, first_now, &first_decision.effects, &[])
        .await
        .expect("the first writer records it");
    first.commit().await.expect("commit");
    let result = batch::write(&second, |_| 1, second_now, &second_decision.effects, &[]).await;
    assert!(matches!(result, Err(StoreError::Conflict)), "{result:?}");
    assert!(
        StoreError::Conflict.is_retryable(),
        "the caller retries and sees a duplicate"
    );
    drop(second);

    let check = pool.get().await.expect("connection");
    let accounts: Vec<String> = check
        .query("SELECT id FROM accounts ORDER BY id", &[])
        .await
        .expect("accounts")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        accounts,
        ["acc-a"],
        "the failed batch left no account behind"
    );
}

#[tokio::test]
async fn the_sweep_expires_holds_past_their_ttl_and_releases_their_amounts() {
    let db = fresh_database().await;
    let pool = db.pool(2);
    let lease = shard_leases(&pool, 1).await.remove(0);
    let placed = [
        command("d1", Kind::Deposit, "acc", "50"),
        command("r1", Kind::WithdrawRequest, "acc", "20"),
    ];
    commit_batch(&pool, &lease, &placed).await;

    let mut client = pool.get().await.expect("connection");
    let sweep_at = |minutes: i64| Utc::now() + Duration::minutes(minutes);
    let tx = client.transaction().await.expect("begin");
    let early = batch::expire_holds(&tx, 0, sweep_at(1))
        .await
        .expect("sweep");
    assert_eq!(early.accounts, 0, "a hold within its TTL stays");
    let late = batch::expire_holds(&tx, 0, sweep_at(16))
        .await
        .expect("sweep");
    assert_eq!(late.accounts, 1);
    assert_eq!(
        batch::expire_holds(&tx, 1, sweep_at(16))
            .await
            .expect("sweep")
            .accounts,
        0,
        "another shard's sweep touches nothing of this one"
    );
    tx.commit().await.expect("commit");

    let row = client
        .query_one(
            "SELECT a.held, h.status FROM accounts a JOIN holds h ON h.account_id = a.id",
            &[],
        )
        .await
        .expect("account and hold");
    assert_eq!(row.get::<_, Decimal>(0), Decimal::ZERO);
    assert_eq!(row.get::<_, String>(1), "expired");
}
