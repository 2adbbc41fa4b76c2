//! Users: ownership by first use (`userId` on a transaction) and by explicit link, a user's
//! accounts and total, the 422 for a transaction naming another user, and the largest expense
//! over a user's accounts; the user's accounts are paged like every other list.

use serde_json::{json, Value};
use std::time::Duration;

use crate::helpers::{eventually, Options, TestApp};

fn tx(id: &str, kind: &str, amount: Value, account: &str, user: &str) -> Value {
    json!({"id": id, "type": kind, "amount": amount, "accountId": account, "userId": user})
}

async fn put(app: &TestApp, path: &str) -> (u16, Value) {
    let response = app
        .client
        .put(format!("{}{path}", app.address))
        .send()
        .await
        .expect("PUT");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn wait_recorded(app: &TestApp, id: &str) {
    eventually(Duration::from_secs(10), || async {
        (app.get(&format!("/transactions/{id}")).await.0 == 200).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_user_owns_the_accounts_first_used_with_their_id_and_sees_the_total() {
    let app = TestApp::spawn().await;
    for (id, kind, amount, account) in [
        ("u1", "deposit", json!(100), "alice-b"),
        ("u2", "deposit", json!(20.5), "alice-a"),
        ("u3", "withdraw", json!(0.25), "alice-a"),
    ] {
        let (status, body) = app.post_json(&tx(id, kind, amount, account, "alice")).await;
        assert_eq!(status, 200, "{body}");
    }
    // A withdraw_request's hold shows in `available`, not in `balance`.
    let (status, body) = app
        .post_json(&tx("u4", "withdraw_request", json!(30), "alice-b", "alice"))
        .await;
    assert_eq!(status, 201, "{body}");
    wait_recorded(&app, "u3").await;

    let (status, user) = app.get("/users/alice").await;
    assert_eq!(status, 200, "{user}");
    assert_eq!(
        user,
        json!({
            "userId": "alice",
            "total": 120.25,
            "accounts": [
                {"accountId": "alice-a", "balance": 20.25, "available": 20.25},
                {"accountId": "alice-b", "balance": 100, "available": 70}
            ],
            "nextCursor": null
        })
    );
}

#[tokio::test]
async fn unknown_user_is_404_and_bad_user_id_is_400() {
    let app = TestApp::spawn_with(Options {
        worker: false,
        ..Options::default()
    })
    .await;
    let (status, body) = app.get("/users/nobody").await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "user_not_found");
    let (status, body) = app.get("/users/bad%20id").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["field"], "userId");
    let (status, body) = put(&app, "/users/bob/accounts/x%20y").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["field"], "accountId");
}

#[tokio::test]
async fn linking_is_idempotent_and_refuses_an_account_owned_by_another_user() {
    let app = TestApp::spawn().await;

    // An account not used yet can be linked; it shows with zeros.
    let (status, first) = put(&app, "/users/bob/accounts/bob-1").await;
    assert_eq!(status, 201, "{first}");
    assert_eq!(first["userId"], "bob");
    assert_eq!(first["accountId"], "bob-1");
    let (status, again) = put(&app, "/users/bob/accounts/bob-1").await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(
        again["linkedAt"], first["linkedAt"],
        "the same link, not a new one"
    );
    let user = app.get_ok("/users/bob").await;
    assert_eq!(
        user,
        json!({"userId": "bob", "total": 0,
               "accounts": [{"accountId": "bob-1", "balance": 0, "available": 0}],
               "nextCursor": null})
    );

    // Linked to bob: carol can neither link it nor post for it with her id.
    let (status, body) = put(&app, "/users/carol/accounts/bob-1").await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "account_owned_by_another_user");
    let (status, body) = app
        .post_json(&tx("c1", "deposit", json!(5), "bob-1", "carol"))
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "account_owned_by_another_user");

    // Owned by its first transaction: the same refusals.
    let (status, _) = app
        .post_json(&tx("d1", "deposit", json!(7), "dave-1", "dave"))
        .await;
    assert_eq!(status, 200);
    wait_recorded(&app, "d1").await;
    let (status, body) = put(&app, "/users/carol/accounts/dave-1").await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "account_owned_by_another_user");
    let (status, body) = app
        .post_json(&tx("c2", "withdraw", json!(7), "dave-1", "carol"))
        .await;
    assert_eq!(status, 422, "{body}");
    // The owner may link it explicitly (idempotently) and keeps posting; no userId is fine too.
    assert_eq!(put(&app, "/users/dave/accounts/dave-1").await.0, 201);
    assert_eq!(put(&app, "/users/dave/accounts/dave-1").await.0, 200);
    assert_eq!(
        app.post_json(&tx("d2", "deposit", json!(1), "dave-1", "dave"))
            .await
            .0,
        200
    );
    assert_eq!(
        app.post_json(&json!({"id": "d3", "type": "deposit", "amount": 1, "accountId": "dave-1"}))
            .await
            .0,
        200
    );
    app.wait_balance("dave-1", "9").await;

    // Nothing of the refused requests reached the ledger, and carol owns nothing.
    assert_eq!(app.get("/transactions/c1").await.0, 404);
    assert_eq!(app.get("/transactions/c2").await.0, 404);
    assert_eq!(app.get("/users/carol").await.0, 404);
    let dave = app.get_ok("/users/dave").await;
    assert_eq!(dave["total"], json!(9));
}

#[tokio::test]
async fn user_largest_expense_spans_the_users_accounts_only() {
    let app = TestApp::spawn().await;
    let at = |day: u32| format!("2024-07-{day:02}T12:00:00Z");
    let bodies = [
        json!({"id": "x1", "type": "deposit", "amount": 500, "accountId": "erin-1",
               "userId": "erin", "timestamp": at(1)}),
        json!({"id": "x2", "type": "withdraw", "amount": 60, "accountId": "erin-1",
               "userId": "erin", "timestamp": at(2)}),
        json!({"id": "x3", "type": "withdraw", "amount": 90, "accountId": "erin-2",
               "userId": "erin", "timestamp": at(3)}),
        json!({"id": "x4", "type": "withdraw", "amount": 90, "accountId": "erin-1",
               "userId": "erin", "timestamp": at(4)}),
        // Someone else's bigger expense never counts.
        json!({"id": "x5", "type": "withdraw", "amount": 999, "accountId": "frank-1",
               "userId": "frank", "timestamp": at(3)}),
    ];
    for body in &bodies {
        assert_eq!(app.post_json(body).await.0, 200);
    }
    for id in ["x1", "x2", "x3", "x4", "x5"] {
        wait_recorded(&app, id).await;
    }
    // An account linked explicitly counts too.
    assert_eq!(put(&app, "/users/erin/accounts/erin-3").await.0, 201);

    let range = "from=2024-07-01T00:00:00Z&to=2024-07-31T00:00:00Z";
    let (status, body) = app
        .get(&format!("/users/erin/largest-expense?{range}"))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id"], "x3", "90 twice: the earlier one");
    assert_eq!(body["accountId"], "erin-2");
    assert_eq!(body["amount"], json!(90));

    let body = app
        .get_ok("/users/erin/largest-expense?from=2024-07-04T00:00:00Z&to=2024-07-05T00:00:00Z")
        .await;
    assert_eq!(body["id"], "x4");

    let (status, body) = app
        .get("/users/erin/largest-expense?from=2024-07-01T00:00:00Z&to=2024-07-01T23:00:00Z")
        .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "expense_not_found");
    let (status, body) = app
        .get(&format!("/users/nobody/largest-expense?{range}"))
        .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "user_not_found");
    let (status, body) = app
        .get("/users/erin/largest-expense?from=2024-07-31T00:00:00Z&to=2024-07-01T00:00:00Z")
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_range");
    let (status, body) = app
        .get("/users/erin/largest-expense?from=last-week&to=2024-07-01T00:00:00Z")
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["field"], "from");
}

/// Gives `user` the accounts `{user}-000` … by explicit link and funds each with `balance`
/// (rows written directly: this is about reading many accounts, not about the write path).
async fn owns_funded_accounts(app: &TestApp, user: &str, count: i32, balance: &str) {
    let client = app.pool.get().await.unwrap();
    client
        .execute(
            "INSERT INTO account_owners (account_id, user_id) \
             SELECT $1::text || '-' || lpad(i::text, 3, '0'), $1 FROM generate_series(0, $2::int4 - 1) i",
            &[&user, &count],
        )
        .await
        .unwrap();
    client
        .execute(
            "INSERT INTO accounts (id, balance) \
             SELECT account_id, $2::text::numeric FROM account_owners WHERE user_id = $1",
            &[&user, &balance],
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn a_users_accounts_are_paged_by_id_and_the_total_covers_every_page() {
    let app = TestApp::spawn_with(Options {
        worker: false,
        ..Options::default()
    })
    .await;
    owns_funded_accounts(&app, "gina", 120, "1.25").await;

    // Without `limit`, a bounded first page (50), not all 120 accounts.
    let (status, first) = app.get("/users/gina").await;
    assert_eq!(status, 200, "{first}");
    let accounts = first["accounts"].as_array().unwrap();
    assert_eq!(accounts.len(), 50, "{first}");
    assert_eq!(accounts[0]["accountId"], "gina-000");
    assert_eq!(accounts[49]["accountId"], "gina-049");
    assert_eq!(
        first["total"],
        json!(150),
        "the total is over all 120 accounts"
    );
    assert_eq!(first["nextCursor"], "gina-049");

    // Following `nextCursor` with `limit` visits every account once, in id order.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            None => "/users/gina?limit=7".to_string(),
            Some(c) => format!("/users/gina?limit=7&cursor={c}"),
        };
        let (status, page) = app.get(&path).await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(page["total"], json!(150));
        let items = page["accounts"].as_array().unwrap();
        assert!(items.len() <= 7, "{page}");
        seen.extend(
            items
                .iter()
                .map(|a| a["accountId"].as_str().unwrap().to_string()),
        );
        match page["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    let expected: Vec<String> = (0..120).map(|i| format!("gina-{i:03}")).collect();
    assert_eq!(seen, expected);

    // The largest page is 1000; bad values are 400s naming the parameter.
    for (query, code, field) in [
        ("limit=0", "invalid_limit", "limit"),
        ("limit=1001", "invalid_limit", "limit"),
        ("limit=ten", "invalid_limit", "limit"),
        ("cursor=bad%20id", "invalid_cursor", "cursor"),
    ] {
        let (status, body) = app.get(&format!("/users/gina?{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["error"]["code"], code, "{query}: {body}");
        assert_eq!(body["error"]["field"], field, "{query}: {body}");
    }
    let (status, page) = app.get("/users/gina?limit=1000").await;
    assert_eq!(status, 200);
    assert_eq!(page["accounts"].as_array().unwrap().len(), 120);
    assert_eq!(page["nextCursor"], Value::Null);
    // Past the last account: an empty page of a user who exists; a user without accounts
    // is still a 404.
    let (status, page) = app.get("/users/gina?cursor=gina-119").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["accounts"], json!([]));
    assert_eq!(page["total"], json!(150));
    assert_eq!(app.get("/users/nobody?limit=5").await.0, 404);
}
