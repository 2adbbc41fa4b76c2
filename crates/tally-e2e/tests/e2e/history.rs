//! An account's history (keyset pages on `seq`, `page=` compatibility, filters) and its
//! largest expense, through the real API and PostgreSQL. Large histories are written straight
//! into the tables, consistently with the ledger's invariants (gapless `seq`, running balance,
//! account row), so the worker continues them as if it had written them.

use chrono::{DateTime, Duration as ChronoDuration, TimeZone, Utc};
use rust_decimal::Decimal;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use crate::helpers::{eventually, Options, TestApp};

/// A transaction to write directly into the ledger tables.
#[derive(Debug, Clone)]
pub struct Seeded {
    pub id: String,
    pub account: String,
    pub kind: &'static str,
    pub amount: Decimal,
    /// Used as occurred_at, accepted_at and applied_at.
    pub at: DateTime<Utc>,
}

/// Writes `rows` (applied, in this order per account) as the worker would have: seq and
/// balance_after continue each account's history, and the account rows follow.
pub async fn insert_applied(app: &TestApp, rows: &[Seeded]) {
    let mut client = app.pool.get().await.unwrap();
    let tx = client.transaction().await.unwrap();
    let mut state: BTreeMap<String, (Decimal, i64)> = BTreeMap::new();
    for r in rows {
        if !state.contains_key(&r.account) {
            let row = tx
                .query_opt(
                    "SELECT balance, version FROM accounts WHERE id = $1",
                    &[&r.account],
                )
                .await
                .unwrap();
            let current = row.map_or((Decimal::ZERO, 0), |row| (row.get(0), row.get(1)));
            state.insert(r.account.clone(), current);
        }
    }
    let (mut ids, mut accounts, mut kinds, mut amounts, mut seqs, mut afters, mut ats, mut shards) = (
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
    );
    for r in rows {
        let (balance, version) = state.get_mut(&r.account).unwrap();
        *version += 1;
        *balance += if r.kind == "deposit" {
            r.amount
        } else {
            -r.amount
        };
        ids.push(r.id.clone());
        accounts.push(r.account.clone());
        kinds.push(r.kind.to_string());
        amounts.push(r.amount);
        seqs.push(*version);
        afters.push(*balance);
        ats.push(r.at);
        shards.push(i32::from(app.topology.shard_of(&r.account)));
    }
    tx.execute(
        "INSERT INTO transactions (id, account_id, kind, amount, status, fingerprint, seq, \
             balance_after, occurred_at, accepted_at, applied_at, shard) \
         SELECT u.id, u.account_id, u.kind, u.amount, 'applied', 'seeded', u.seq, u.after, \
                u.at, u.at, u.at, u.shard \
         FROM unnest($1::text[], $2::text[], $3::text[], $4::numeric[], $5::int8[], \
                     $6::numeric[], $7::timestamptz[], $8::int4[]) \
              AS u(id, account_id, kind, amount, seq, after, at, shard)",
        &[
            &ids, &accounts, &kinds, &amounts, &seqs, &afters, &ats, &shards,
        ],
    )
    .await
    .unwrap();
    for (account, (balance, version)) in &state {
        tx.execute(
            "INSERT INTO accounts (id, balance, version) VALUES ($1, $2, $3) \
             ON CONFLICT (id) DO UPDATE SET balance = $2, version = $3, updated_at = now()",
            &[account, balance, version],
        )
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
}

fn tx(id: &str, kind: &str, amount: Value, account: &str, at: &str) -> Value {
    json!({"id": id, "type": kind, "amount": amount, "accountId": account, "timestamp": at})
}

/// Posts and waits until every transaction is recorded.
async fn post_all(app: &TestApp, bodies: &[Value]) {
    for body in bodies {
        let (status, answer) = app.post_json(body).await;
        assert_eq!(status, 200, "{answer}");
    }
    for body in bodies {
        let id = body["id"].as_str().unwrap();
        eventually(Duration::from_secs(10), || async {
            (app.get(&format!("/transactions/{id}")).await.0 == 200).then_some(())
        })
        .await;
    }
}

fn ids(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn empty_history_is_an_empty_page_not_an_error() {
    let app = TestApp::spawn_with(Options {
        worker: false,
        ..Options::default()
    })
    .await;
    let (status, body) = app.get("/account/nobody/transactions").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"items": [], "nextCursor": null}));
    let (status, body) = app.get("/account/nobody/transactions?page=3").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"items": [], "nextCursor": null}));
}

#[tokio::test]
async fn history_is_newest_first_with_running_balance_filters_and_pages() {
    let app = TestApp::spawn().await;
    let a = "hist";
    post_all(
        &app,
        &[
            tx("h1", "deposit", json!(100), a, "2024-03-01T10:00:00Z"),
            tx("h2", "withdraw", json!(30.5), a, "2024-03-02T10:00:00Z"),
            tx("h3", "deposit", json!("0.25"), a, "2024-03-03T10:00:00Z"),
            tx("h4", "withdraw", json!(80), a, "2024-03-04T10:00:00Z"),
        ],
    )
    .await;

    let (status, page) = app.get(&format!("/account/{a}/transactions")).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(ids(&page), ["h4", "h3", "h2", "h1"]);
    assert_eq!(page["nextCursor"], Value::Null);
    let after: Vec<&Value> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| &i["balanceAfter"])
        .collect();
    assert_eq!(
        after,
        [&json!(-10.25), &json!(69.75), &json!(69.5), &json!(100)]
    );
    assert_eq!(page["items"][0]["type"], "withdraw");
    assert_eq!(page["items"][0]["seq"], 4);

    // Keyset: two per page, then the rest.
    let first = app
        .get_ok(&format!("/account/{a}/transactions?limit=2"))
        .await;
    assert_eq!(ids(&first), ["h4", "h3"]);
    let cursor = first["nextCursor"]
        .as_str()
        .expect("a next cursor")
        .to_string();
    let second = app
        .get_ok(&format!(
            "/account/{a}/transactions?limit=2&cursor={cursor}"
        ))
        .await;
    assert_eq!(ids(&second), ["h2", "h1"]);
    assert_eq!(
        second["nextCursor"],
        Value::Null,
        "exactly two left: no third page"
    );

    // Filters: type, and an inclusive occurredAt range (with an offset written unencoded).
    let deposits = app
        .get_ok(&format!("/account/{a}/transactions?type=deposit"))
        .await;
    assert_eq!(ids(&deposits), ["h3", "h1"]);
    let ranged = app
        .get_ok(&format!(
            "/account/{a}/transactions?from=2024-03-02T12:00:00%2B02:00&to=2024-03-03T10:00:00Z"
        ))
        .await;
    assert_eq!(ids(&ranged), ["h3", "h2"]);
    let (status, unencoded) = app
        .get(&format!(
            "/account/{a}/transactions?from=2024-03-02T12:00:00+02:00&type=withdraw"
        ))
        .await;
    assert_eq!(status, 200, "{unencoded}");
    assert_eq!(ids(&unencoded), ["h4", "h2"]);

    // page=N: 10 per page by default; `limit` sets the page size.
    let p1 = app
        .get_ok(&format!("/account/{a}/transactions?page=1"))
        .await;
    assert_eq!(ids(&p1), ["h4", "h3", "h2", "h1"]);
    let p2 = app
        .get_ok(&format!("/account/{a}/transactions?page=2&limit=3"))
        .await;
    assert_eq!(ids(&p2), ["h1"]);
}

#[tokio::test]
async fn page_mode_serves_ten_per_page_by_default() {
    let app = TestApp::spawn_with(Options {
        worker: false,
        ..Options::default()
    })
    .await;
    let t0 = Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap();
    let rows: Vec<Seeded> = (1..=25)
        .map(|i| Seeded {
            id: format!("p{i}"),
            account: "paged".into(),
            kind: "deposit",
            amount: Decimal::ONE,
            at: t0 + ChronoDuration::minutes(i),
        })
        .collect();
    insert_applied(&app, &rows).await;
    let mut pages: Vec<Vec<String>> = Vec::new();
    for n in 1..=4 {
        let (status, page) = app
            .get(&format!("/account/paged/transactions?page={n}"))
            .await;
        assert_eq!(status, 200, "{page}");
        pages.push(ids(&page));
    }
    assert_eq!(pages[0].len(), 10);
    assert_eq!(pages[0][0], "p25");
    assert_eq!(pages[1][0], "p15");
    assert_eq!(pages[2], ["p5", "p4", "p3", "p2", "p1"]);
    assert!(pages[3].is_empty());
}

#[tokio::test]
async fn bad_history_parameters_are_400_naming_the_parameter() {
    let app = TestApp::spawn_with(Options {
        worker: false,
        ..Options::default()
    })
    .await;
    let cases = [
        ("limit=0", "invalid_limit", "limit"),
        ("limit=1001", "invalid_limit", "limit"),
        ("limit=ten", "invalid_limit", "limit"),
        ("cursor=abc", "invalid_cursor", "cursor"),
        ("cursor=0", "invalid_cursor", "cursor"),
        ("page=0", "invalid_page", "page"),
        ("page=1&cursor=5", "invalid_page", "page"),
        ("type=refund", "invalid_type", "type"),
        ("from=yesterday", "invalid_timestamp", "from"),
        ("to=2024-13-01T00:00:00Z", "invalid_timestamp", "to"),
        (
            "from=2024-02-01T00:00:00Z&to=2024-01-01T00:00:00Z",
            "invalid_range",
            "from",
        ),
    ];
    for (query, code, field) in cases {
        let (status, body) = app.get(&format!("/account/acc/transactions?{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["error"]["code"], code, "{query}: {body}");
        assert_eq!(body["error"]["field"], field, "{query}: {body}");
    }
    let (status, body) = app.get("/account/a%20b/transactions").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["field"], "accountId");
    // The largest limit is accepted.
    assert_eq!(app.get("/account/acc/transactions?limit=1000").await.0, 200);
}

/// 2,500 rows paged with the cursor while new transactions keep arriving on the account:
/// every seeded row is seen exactly once, in order, whatever arrives meanwhile.
#[tokio::test]
async fn cursor_round_trip_over_2500_items_has_no_gaps_or_repeats_while_new_ones_arrive() {
    let app = TestApp::spawn().await;
    let a = "busy";
    let t0 = Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap();
    let rows: Vec<Seeded> = (1..=2500)
        .map(|i| Seeded {
            id: format!("old-{i}"),
            account: a.into(),
            kind: if i % 4 == 0 { "withdraw" } else { "deposit" },
            amount: Decimal::new(i64::from(i % 97) + 1, 2),
            at: t0 + ChronoDuration::seconds(i64::from(i)),
        })
        .collect();
    insert_applied(&app, &rows).await;

    let mut seen: Vec<(i64, String, Value)> = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            None => format!("/account/{a}/transactions?limit=100"),
            Some(c) => format!("/account/{a}/transactions?limit=100&cursor={c}"),
        };
        let (status, page) = app.get(&path).await;
        assert_eq!(status, 200, "{page}");
        for item in page["items"].as_array().unwrap() {
            seen.push((
                item["seq"].as_i64().unwrap(),
                item["id"].as_str().unwrap().to_string(),
                item["balanceAfter"].clone(),
            ));
        }
        pages += 1;
        // A new transaction lands on the account between two page reads.
        let id = format!("new-{pages}");
        let (status, _) = app
            .post_json(&json!({"id": id, "type": "deposit", "amount": 1, "accountId": a}))
            .await;
        assert_eq!(status, 200);
        eventually(Duration::from_secs(10), || async {
            (app.get(&format!("/transactions/{id}")).await.0 == 200).then_some(())
        })
        .await;
        match page["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }

    // Newest first, one step at a time down to 1: no gap, no repeat.
    let top = seen[0].0;
    let seqs: Vec<i64> = seen.iter().map(|s| s.0).collect();
    assert_eq!(seqs, (1..=top).rev().collect::<Vec<_>>());
    let unique: HashSet<&String> = seen.iter().map(|s| &s.1).collect();
    assert_eq!(unique.len(), seen.len(), "an id was served twice");
    for i in 1..=2500 {
        assert!(
            unique.contains(&format!("old-{i}")),
            "old-{i} was never served"
        );
    }
    // The running balance of the oldest row is its own amount (a first deposit of 0.02).
    assert_eq!(seen.last().unwrap().2, json!(0.02));
    assert!(pages >= 25);
    assert!(
        app.count("SELECT count(*) FROM transactions WHERE account_id = 'busy' AND seq > 2500")
            .await
            >= 25,
        "new transactions did arrive while paging"
    );
}

#[tokio::test]
async fn account_largest_expense_picks_the_biggest_applied_withdraw_in_the_period() {
    let app = TestApp::spawn().await;
    let a = "spender";
    post_all(
        &app,
        &[
            // The largest movement is a deposit: never an expense.
            tx("e1", "deposit", json!(1000), a, "2024-05-01T00:00:00Z"),
            tx("e2", "withdraw", json!(40), a, "2024-05-02T00:00:00Z"),
            tx("e3", "withdraw", json!(75.5), a, "2024-05-03T00:00:00Z"),
            // Same amount later: the earlier one wins the tie.
            tx("e4", "withdraw", json!(75.5), a, "2024-05-04T00:00:00Z"),
            // Larger, but outside the period.
            tx("e5", "withdraw", json!(500), a, "2024-06-01T00:00:00Z"),
        ],
    )
    .await;

    let (status, body) = app
        .get(&format!(
            "/account/{a}/largest-expense?from=2024-05-01T00:00:00Z&to=2024-05-31T23:59:59Z"
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id"], "e3");
    assert_eq!(body["amount"], json!(75.5));
    assert_eq!(body["type"], "withdraw");
    assert_eq!(body["status"], "applied");

    // Bounds are inclusive.
    let body = app
        .get_ok(&format!(
            "/account/{a}/largest-expense?from=2024-05-04T00:00:00Z&to=2024-06-01T00:00:00Z"
        ))
        .await;
    assert_eq!(body["id"], "e5");

    // A period with only a deposit, and an account never used: 404 with a JSON error.
    let (status, body) = app
        .get(&format!(
            "/account/{a}/largest-expense?from=2024-05-01T00:00:00Z&to=2024-05-01T12:00:00Z"
        ))
        .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "expense_not_found");
    let (status, body) = app
        .get("/account/ghost/largest-expense?from=2024-01-01T00:00:00Z&to=2025-01-01T00:00:00Z")
        .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "expense_not_found");
}

#[tokio::test]
async fn largest_expense_needs_a_valid_ordered_period() {
    let app = TestApp::spawn_with(Options {
        worker: false,
        ..Options::default()
    })
    .await;
    let cases = [
        ("", "missing_field", "from"),
        ("from=2024-01-01T00:00:00Z", "missing_field", "to"),
        ("to=2024-01-01T00:00:00Z", "missing_field", "from"),
        (
            "from=2024-01-01&to=2024-02-01T00:00:00Z",
            "invalid_timestamp",
            "from",
        ),
        (
            "from=2024-01-01T00:00:00Z&to=soon",
            "invalid_timestamp",
            "to",
        ),
        (
            "from=2024-02-01T00:00:00Z&to=2024-01-01T00:00:00Z",
            "invalid_range",
            "from",
        ),
    ];
    for (query, code, field) in cases {
        let (status, body) = app
            .get(&format!("/account/acc/largest-expense?{query}"))
            .await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["error"]["code"], code, "{query}: {body}");
        assert_eq!(body["error"]["field"], field, "{query}: {body}");
    }
    // from = to is a valid (one-instant) period.
    let (status, body) = app
        .get("/account/acc/largest-expense?from=2024-01-01T00:00:00Z&to=2024-01-01T00:00:00Z")
        .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "expense_not_found");
}
