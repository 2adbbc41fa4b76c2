//! Policy per account (`PUT/GET /account/{id}/policy`): the change travels the account's shard
//! queue, so each withdraw is judged by the policy in force at its place in the account's
//! order — checked by replaying the account's history by `seq` with the recorded changes.

use rust_decimal::Decimal;
use serde_json::{json, Value};
use std::time::Duration;
use tally_testkit::{client_with_key, eventually};

use crate::helpers::TestApp;

async fn put_policy(
    app: &TestApp,
    client: &reqwest::Client,
    account: &str,
    body: &Value,
    key: Option<&str>,
) -> (u16, Value) {
    let mut request = client
        .put(format!("{}/account/{account}/policy", app.address))
        .json(body);
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    let response = request.send().await.expect("PUT policy");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn dec(v: &Value) -> Decimal {
    let text = match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    Decimal::from_str_exact(&text).expect("decimal")
}

fn withdraw(account: &str, id: String) -> Value {
    json!({"id": id, "type": "withdraw", "amount": "10", "accountId": account})
}

/// Replays the account's records in `seq` order, switching policy when the recorded changes
/// say (a change with `after_seq` = s governs seq s+1 on), and checks each withdraw's outcome
/// and every `balance_after`. Returns the seq after which the last change applied.
async fn replay(app: &TestApp, account: &str) -> Vec<i64> {
    let client = app.pool.get().await.expect("db");
    let changes = client
        .query(
            "SELECT after_seq, withdraw_policy, overdraft_limit FROM account_policy_changes \
             WHERE account_id = $1 ORDER BY policy_version",
            &[&account],
        )
        .await
        .expect("changes");
    let records = client
        .query(
            "SELECT seq, id, kind, amount, status, balance_after FROM transactions \
             WHERE account_id = $1 ORDER BY seq",
            &[&account],
        )
        .await
        .expect("records");
    let mut policy = ("always_apply".to_string(), Decimal::ZERO);
    let mut next_change = 0;
    let mut balance = Decimal::ZERO;
    for (i, r) in records.iter().enumerate() {
        let seq: i64 = r.get(0);
        assert_eq!(seq, i as i64 + 1, "gapless seq");
        while next_change < changes.len() && changes[next_change].get::<_, i64>(0) < seq {
            let c = &changes[next_change];
            policy = (c.get(1), c.get(2));
            next_change += 1;
        }
        let (id, kind, amount, status): (String, String, Decimal, String) =
            (r.get(1), r.get(2), r.get(3), r.get(4));
        let expected = match kind.as_str() {
            "deposit" => {
                balance += amount;
                "applied"
            }
            "withdraw" if policy.0 == "reject_overdraft" && balance + policy.1 < amount => {
                "rejected"
            }
            "withdraw" => {
                balance -= amount;
                "applied"
            }
            other => panic!("unexpected kind {other}"),
        };
        assert_eq!(
            status, expected,
            "{id} (seq {seq}, {kind} {amount}) under {policy:?} at balance {balance}"
        );
        assert_eq!(r.get::<_, Decimal>(5), balance, "balance_after of {id}");
    }
    changes.iter().map(|c| c.get(0)).collect()
}

#[tokio::test]
async fn withdraws_around_a_policy_change_follow_the_policy_in_force_at_their_place_in_the_queue() {
    let app = TestApp::spawn().await;
    let account = "pol-1";
    app.post_accepted(
        &json!({"id": "d-1", "type": "deposit", "amount": "50", "accountId": account}),
    )
    .await;
    app.wait_balance(account, "50").await;

    // Twenty withdraws in flight while the policy is set (their order against it is the
    // queue's), then twenty more posted after the PUT's 202: those are surely behind it.
    let before: Vec<_> = (0..20)
        .map(|i| app.spawn_post_json(&withdraw(account, format!("w-a{i}"))))
        .collect();
    let (status, accepted) = put_policy(
        &app,
        &app.client,
        account,
        &json!({"withdrawPolicy": "reject_overdraft", "overdraftLimit": "20"}),
        None,
    )
    .await;
    assert_eq!(status, 202, "{accepted}");
    assert_eq!(accepted["withdrawPolicy"], "reject_overdraft");
    let after: Vec<_> = (0..20)
        .map(|i| app.spawn_post_json(&withdraw(account, format!("w-b{i}"))))
        .collect();
    for task in before.into_iter().chain(after) {
        let (status, body) = task.await.expect("post");
        assert_eq!(status, 200, "{body}");
    }
    eventually(Duration::from_secs(30), || async {
        let recorded = app
            .count("SELECT count(*) FROM transactions WHERE account_id = 'pol-1'")
            .await;
        (recorded == 41).then_some(())
    })
    .await;

    let changes = replay(&app, account).await;
    assert_eq!(changes.len(), 1, "one policy change recorded");
    // Every withdraw posted after the 202 comes after the change in the account's order.
    let client = app.pool.get().await.expect("db");
    let first_after: i64 = client
        .query_one(
            "SELECT min(seq) FROM transactions WHERE account_id = 'pol-1' AND id LIKE 'w-b%'",
            &[],
        )
        .await
        .expect("seq")
        .get(0);
    assert!(
        first_after > changes[0],
        "{first_after} after {}",
        changes[0]
    );
    let policy = app.get_ok(&format!("/account/{account}/policy")).await;
    assert_eq!(policy["source"], "account", "{policy}");
    assert_eq!(policy["withdrawPolicy"], "reject_overdraft");
    assert_eq!(dec(&policy["overdraftLimit"]), Decimal::from(20));
    assert_eq!(policy["afterSeq"], json!(changes[0]));
}

#[tokio::test]
async fn policy_bodies_are_validated_and_the_put_needs_an_admin_key() {
    let app = TestApp::spawn().await;
    let account = "pol-2";
    let default = app.get_ok(&format!("/account/{account}/policy")).await;
    assert_eq!(default["source"], "default", "{default}");
    assert_eq!(default["withdrawPolicy"], "always_apply");

    for (body, status, code) in [
        (json!({}), 400, "missing_field"),
        (
            json!({"withdrawPolicy": "sometimes"}),
            400,
            "invalid_policy",
        ),
        (json!({"withdrawPolicy": 3}), 400, "invalid_policy"),
        (
            json!({"withdrawPolicy": "reject_overdraft", "overdraftLimit": "abc"}),
            400,
            "invalid_amount",
        ),
        (
            json!({"withdrawPolicy": "reject_overdraft", "overdraftLimit": -1}),
            422,
            "invalid_policy",
        ),
        (
            json!({"withdrawPolicy": "always_apply", "overdraftLimit": 5}),
            422,
            "invalid_policy",
        ),
    ] {
        let (got, answer) = put_policy(&app, &app.client, account, &body, None).await;
        assert_eq!(
            (got, answer["error"]["code"].as_str()),
            (status, Some(code)),
            "{body}: {answer}"
        );
    }
    let read_write = client_with_key(&app.keys.read_write);
    let (got, _) = put_policy(
        &app,
        &read_write,
        account,
        &json!({"withdrawPolicy": "reject_overdraft"}),
        None,
    )
    .await;
    assert_eq!(got, 403, "a transactions:write key cannot change a policy");

    // A keyed PUT, applied; the same key with another body is id_reused.
    let body = json!({"withdrawPolicy": "reject_overdraft", "overdraftLimit": 5});
    let (got, _) = put_policy(&app, &app.client, account, &body, Some("pk-1")).await;
    assert_eq!(got, 202);
    eventually(Duration::from_secs(15), || async {
        let p = app.get_ok(&format!("/account/{account}/policy")).await;
        (p["source"] == "account").then_some(())
    })
    .await;
    let (got, _) = put_policy(&app, &app.client, account, &body, Some("pk-1")).await;
    assert_eq!(got, 202, "a retry is accepted again");
    let (got, answer) = put_policy(
        &app,
        &app.client,
        account,
        &json!({"withdrawPolicy": "always_apply"}),
        Some("pk-1"),
    )
    .await;
    assert_eq!(
        (got, answer["error"]["code"].as_str()),
        (422, Some("id_reused"))
    );
    // Nothing but the one change was ever applied (the retry was deduplicated), and the
    // debug dump shows the account's policy.
    eventually(Duration::from_secs(15), || async {
        // Wait for the retry's copy to be consumed: the queue is the shard's, so a deposit
        // posted now is applied after it.
        let (s, _) = app
            .post_json(
                &json!({"id": "d-2", "type": "deposit", "amount": "1", "accountId": account}),
            )
            .await;
        (s == 200).then_some(())
    })
    .await;
    app.wait_balance(account, "1").await;
    assert_eq!(
        app.count("SELECT count(*) FROM account_policy_changes WHERE account_id = 'pol-2'")
            .await,
        1
    );
    let dump = app.get_ok("/debug/accounts").await;
    let row = dump
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["accountId"] == account))
        .cloned()
        .unwrap_or_default();
    assert_eq!(row["withdrawPolicy"], "reject_overdraft", "{dump}");
    assert_eq!(row["policyVersion"], 1, "{dump}");
}
