//! After the storm: waits until the system has settled (every process up, every shard queue
//! drained and consumed, every answered id recorded), then checks the ledger against what the
//! clients were told.
//!
//! The model's promises, checked here:
//! - every id answered 200 is recorded once as `applied`; 201 as `approved` with the same
//!   hold; 402 as `denied` with no open or captured hold; no id has a definitive answer
//!   missing, and no recorded id was never sent;
//! - a repeat of an answered id (later or concurrent) got the same outcome;
//! - per account: balance = Σ accepted deposits − Σ accepted withdraws; held = Σ approved
//!   requests not captured by an accepted withdraw naming them; the API's `/account` agrees;
//! - the server's own auditor (`/debug/conservation`) passes;
//! - each poison message is archived exactly once as a dead letter.
//!
//! The database is read directly with SQL (the ground truth); the HTTP read routes are then
//! compared with it, so a wrong answer there is caught too.

use anyhow::Result;
use rust_decimal::Decimal;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;
use tokio::time::Instant;

use crate::cluster::{pg_connect, Cluster, RunConfig};
use crate::model::{money, Answer, Http, Kind, Op, Repeat};

/// Everything the clients and the fault injector did.
pub struct Model {
    pub ops: Vec<Op>,
    pub repeats: Vec<Repeat>,
    pub poisons: Vec<String>,
}

/// Failures found (empty = the seed passed) and notes worth printing.
#[derive(Debug, Default)]
pub struct Verdict {
    pub failures: Vec<String>,
    pub notes: Vec<String>,
}

impl Verdict {
    fn fail(&mut self, what: impl Into<String>) {
        self.failures.push(what.into());
    }
}

fn dec(text: &str) -> Decimal {
    text.parse().unwrap_or(Decimal::MIN)
}

fn cents(c: i64) -> Decimal {
    dec(&money(c))
}

/// A JSON number or string as a decimal (the API prints exact decimal text).
fn json_dec(v: &Value) -> Option<Decimal> {
    match v {
        Value::Number(n) => n.to_string().parse().ok(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// Waits until processes are up, queues drained and every answered id recorded.
pub async fn settle(
    cluster: &mut Cluster,
    cfg: &RunConfig,
    model: &Model,
    timeout: Duration,
    v: &mut Verdict,
) {
    // A process that died by itself is a finding; restart it so the rest can still be checked.
    if !cluster.check_processes() {
        for p in cluster.apis.iter_mut().chain(cluster.workers.iter_mut()) {
            if !p.is_running() {
                p.mark("restart after an exit nobody asked for");
                if let Err(e) = p.spawn() {
                    v.fail(format!("could not restart {}: {e:#}", p.name));
                }
            }
        }
    }
    let deadline = Instant::now() + timeout;
    for i in 0..cluster.apis.len() {
        if let Err(e) = cluster.wait_api(i, "/health/ready", timeout).await {
            v.fail(format!("after the faults: {e:#}"));
        }
    }
    if let Err(e) = cluster
        .wait_consumers(cfg, deadline.saturating_duration_since(Instant::now()))
        .await
    {
        v.fail(format!("after the faults: {e:#}"));
    }
    let expected: Vec<String> = model
        .ops
        .iter()
        .filter(|op| op.answer.definitive())
        .map(|op| op.cmd.id.clone())
        .collect();
    loop {
        let last = match settled(cluster, cfg, &expected, &model.poisons).await {
            Ok(None) => return,
            Ok(Some(why)) => why,
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() >= deadline {
            v.fail(format!("not settled within {timeout:?}: {last}"));
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Every live worker must get its share of the shards back after the faults. Another worker
/// taking over everything hides a worker that hangs (alive, but neither consuming nor
/// stopping), so this is checked on its own. Lease owners are named `tally-worker-<pid>-…`.
pub async fn workers_own_shards(cluster: &Cluster, timeout: Duration, v: &mut Verdict) {
    let deadline = Instant::now() + timeout;
    loop {
        let owners: Vec<String> = match pg_connect(&cluster.db_url).await {
            Ok(db) => match db
                .query(
                    "SELECT owner FROM shard_leases WHERE owner IS NOT NULL AND expires_at > now()",
                    &[],
                )
                .await
            {
                Ok(rows) => rows.iter().map(|r| r.get(0)).collect(),
                Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => {
                    v.notes
                        .push("no shard_leases table: worker shares not checked".into());
                    return;
                }
                Err(_) => Vec::new(),
            },
            Err(_) => Vec::new(),
        };
        let idle: Vec<String> = cluster
            .workers
            .iter()
            .filter_map(|w| w.pid().map(|pid| (w, format!("tally-worker-{pid}-"))))
            .filter(|(_, tag)| !owners.iter().any(|o| o.starts_with(tag.as_str())))
            .map(|(w, _)| w.name.clone())
            .collect();
        if idle.is_empty() {
            return;
        }
        if Instant::now() >= deadline {
            v.fail(format!(
                "{} alive but owning no shard {timeout:?} after the faults (hung?); owners: {owners:?}",
                idle.join(", ")
            ));
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// None when settled, else what is still pending.
async fn settled(
    cluster: &Cluster,
    cfg: &RunConfig,
    expected: &[String],
    poisons: &[String],
) -> Result<Option<String>> {
    let mut pending = Vec::new();
    for (queue, ready, _) in cluster.queue_stats(cfg).await? {
        if ready > 0 {
            pending.push(format!("{queue} has {ready} ready"));
        }
    }
    let db = pg_connect(&cluster.db_url).await?;
    let recorded: i64 = db
        .query_one(
            "SELECT count(*) FROM transactions WHERE id = ANY($1)",
            &[&expected],
        )
        .await?
        .get(0);
    if recorded < expected.len() as i64 {
        pending.push(format!(
            "{} of {} answered ids recorded",
            recorded,
            expected.len()
        ));
    }
    let dead: i64 = db
        .query_one(
            "SELECT count(DISTINCT message_id) FROM dead_letters WHERE message_id = ANY($1)",
            &[&poisons],
        )
        .await?
        .get(0);
    if dead < poisons.len() as i64 {
        pending.push(format!(
            "{dead} of {} poison messages archived",
            poisons.len()
        ));
    }
    Ok((!pending.is_empty()).then(|| pending.join("; ")))
}

struct TxRow {
    account: String,
    kind: String,
    amount: Decimal,
    status: String,
    hold_id: Option<String>,
    request_id: Option<String>,
}

struct HoldRow {
    id: String,
    status: String,
    captured_by: Option<String>,
}

/// Lists at most a few offenders in the message, all in the report file.
fn listed(what: &str, items: &[String]) -> String {
    const SHOWN: usize = 5;
    let more = items.len().saturating_sub(SHOWN);
    let mut s = format!(
        "{what} ({}): {}",
        items.len(),
        items[..items.len().min(SHOWN)].join("; ")
    );
    if more > 0 {
        s.push_str(&format!("; … {more} more in report.txt"));
    }
    s
}

/// Compares the ledger with the model.
pub async fn verify(
    cluster: &Cluster,
    http: &Http,
    model: &Model,
    v: &mut Verdict,
    details: &mut Vec<String>,
) -> Result<()> {
    let mut report = |v: &mut Verdict, what: &str, items: Vec<String>| {
        if !items.is_empty() {
            v.fail(listed(what, &items));
            details.push(format!("{what}:"));
            details.extend(items.into_iter().map(|i| format!("  {i}")));
        }
    };

    // Answers that are findings by themselves.
    let undetermined: Vec<String> = model
        .ops
        .iter()
        .filter(|op| !op.answer.definitive())
        .map(|op| {
            format!(
                "{} {} {} sent at +{:.1}s: {} after {} attempts",
                op.cmd.id,
                op.cmd.kind.as_str(),
                money(op.cmd.cents),
                op.sent.as_secs_f64(),
                op.answer.short(),
                op.attempts
            )
        })
        .collect();
    report(v, "commands without a definitive answer", undetermined);
    let changed: Vec<String> = model
        .repeats
        .iter()
        .filter(|r| r.first.definitive() && !r.first.same_outcome(&r.again))
        .map(|r| {
            format!(
                "{}{}: first {} [{}], again {} [{}]",
                r.id,
                if r.concurrent { " (concurrent)" } else { "" },
                r.first.short(),
                r.trails.0,
                r.again.short(),
                r.trails.1
            )
        })
        .collect();
    report(v, "same id and payload, different outcome", changed);

    let db = pg_connect(&cluster.db_url).await?;
    let mut txs: HashMap<String, TxRow> = HashMap::new();
    for r in db
        .query("SELECT id, account_id, kind, amount::text, status, hold_id::text, request_id FROM transactions", &[])
        .await?
    {
        let amount: String = r.get(3);
        txs.insert(r.get(0), TxRow {
            account: r.get(1),
            kind: r.get(2),
            amount: dec(&amount),
            status: r.get(4),
            hold_id: r.get(5),
            request_id: r.get(6),
        });
    }
    let mut holds: HashMap<String, HoldRow> = HashMap::new();
    for r in db
        .query(
            "SELECT request_id, id::text, status, captured_by FROM holds",
            &[],
        )
        .await?
    {
        holds.insert(
            r.get(0),
            HoldRow {
                id: r.get(1),
                status: r.get(2),
                captured_by: r.get(3),
            },
        );
    }
    let mut accounts: BTreeMap<String, (Decimal, Decimal)> = BTreeMap::new();
    for r in db
        .query("SELECT id, balance::text, held::text FROM accounts", &[])
        .await?
    {
        let (b, h): (String, String) = (r.get(1), r.get(2));
        accounts.insert(r.get(0), (dec(&b), dec(&h)));
    }

    // The model's expectations, per account.
    let mut balance: BTreeMap<String, Decimal> = BTreeMap::new();
    let mut held: BTreeMap<String, Decimal> = BTreeMap::new();
    let captured: HashMap<&str, &str> = model
        .ops
        .iter()
        .filter(|op| op.answer == Answer::Accepted)
        .filter_map(|op| {
            op.cmd
                .request_id
                .as_deref()
                .map(|r| (r, op.cmd.id.as_str()))
        })
        .collect();
    let mut wrong = Vec::new();
    let mut sent: HashSet<&str> = HashSet::new();
    for op in &model.ops {
        let cmd = &op.cmd;
        sent.insert(&cmd.id);
        balance.entry(cmd.account.clone()).or_default();
        held.entry(cmd.account.clone()).or_default();
        let rec = txs.get(&cmd.id);
        let mut bad = |why: String| {
            wrong.push(format!(
                "{} ({} {} on {}; answered {} [{}]): {why}",
                cmd.id,
                cmd.kind.as_str(),
                money(cmd.cents),
                cmd.account,
                op.answer.short(),
                op.trail
            ))
        };
        if let Some(rec) = rec {
            if rec.account != cmd.account
                || rec.kind != cmd.kind.as_str()
                || rec.amount != cents(cmd.cents)
                || rec.request_id != cmd.request_id
            {
                bad(format!(
                    "recorded as {} {} on {} (request {:?})",
                    rec.kind, rec.amount, rec.account, rec.request_id
                ));
            }
        }
        match (&op.answer, rec) {
            (Answer::Accepted, None)
            | (Answer::Approved { .. }, None)
            | (Answer::Denied { .. }, None) => bad("not recorded".into()),
            (Answer::Accepted, Some(rec)) => {
                if rec.status != "applied" {
                    bad(format!("recorded {}", rec.status));
                }
                let amount = cents(cmd.cents);
                match cmd.kind {
                    Kind::Deposit => *balance.entry(cmd.account.clone()).or_default() += amount,
                    _ => *balance.entry(cmd.account.clone()).or_default() -= amount,
                }
                if let Some(request) = &cmd.request_id {
                    match holds.get(request) {
                        Some(h)
                            if h.status == "captured"
                                && h.captured_by.as_deref() == Some(cmd.id.as_str()) =>
                        {
                            if rec.hold_id.as_deref() != Some(h.id.as_str()) {
                                bad(format!(
                                    "captured hold {} but records hold {:?}",
                                    h.id, rec.hold_id
                                ));
                            }
                        }
                        Some(h) => bad(format!(
                            "hold of {request} is {} (captured by {:?})",
                            h.status, h.captured_by
                        )),
                        None => bad(format!("no hold for {request}")),
                    }
                }
            }
            (Answer::Approved { hold_id }, Some(rec)) => {
                if rec.status != "approved" || rec.hold_id.as_deref() != Some(hold_id.as_str()) {
                    bad(format!(
                        "recorded {} with hold {:?}",
                        rec.status, rec.hold_id
                    ));
                }
                let want = if captured.contains_key(cmd.id.as_str()) {
                    "captured"
                } else {
                    "open"
                };
                match holds.get(&cmd.id) {
                    Some(h) if h.id == *hold_id && h.status == want => {}
                    Some(h) => bad(format!(
                        "hold {} is {}, expected {hold_id} {want}",
                        h.id, h.status
                    )),
                    None => bad("no hold row".into()),
                }
                if want == "open" {
                    *held.entry(cmd.account.clone()).or_default() += cents(cmd.cents);
                }
            }
            (Answer::Denied { .. }, Some(rec)) => {
                if rec.status != "denied" {
                    bad(format!(
                        "recorded {} with hold {:?}",
                        rec.status, rec.hold_id
                    ));
                }
                if let Some(h) = holds.get(&cmd.id) {
                    if h.status == "open" || h.status == "captured" {
                        bad(format!("has a hold {} that is {}", h.id, h.status));
                    }
                }
            }
            (_, Some(rec)) => bad(format!("no definitive answer but recorded {}", rec.status)),
            (_, None) => {}
        }
    }
    report(v, "ledger disagrees with the answers", wrong);
    let unknown: Vec<String> = txs
        .keys()
        .filter(|id| !sent.contains(id.as_str()))
        .cloned()
        .collect();
    report(v, "recorded ids nobody sent", unknown);

    // Balances and holds: the table and the API's read route, against the model.
    let mut off = Vec::new();
    for (account, want_balance) in &balance {
        let want_held = held.get(account).copied().unwrap_or_default();
        let (got_balance, got_held) = accounts.get(account).copied().unwrap_or_default();
        if got_balance != *want_balance || got_held != want_held {
            off.push(format!("{account}: table balance {got_balance} held {got_held}, model balance {want_balance} held {want_held}"));
        }
        match http.get_json(&format!("/account/{account}")).await {
            Ok((200, body)) => {
                let (b, h, a) = (
                    json_dec(&body["balance"]),
                    json_dec(&body["held"]),
                    json_dec(&body["available"]),
                );
                if b != Some(*want_balance)
                    || h != Some(want_held)
                    || a != Some(*want_balance - want_held)
                {
                    off.push(format!("{account}: GET /account says {body}, model balance {want_balance} held {want_held}"));
                }
            }
            Ok((status, body)) => {
                off.push(format!("{account}: GET /account answered {status} {body}"))
            }
            Err(e) => off.push(format!("{account}: GET /account failed: {e}")),
        }
    }
    report(v, "balances or holds differ from the model", off);

    // The read route of single transactions, for every decided request and a sample of others.
    let mut reads = Vec::new();
    for op in model
        .ops
        .iter()
        .filter(|op| op.cmd.kind == Kind::WithdrawRequest || op.cmd.id.ends_with('0'))
    {
        let Some(rec) = txs.get(&op.cmd.id) else {
            continue;
        };
        match http.get_json(&format!("/transactions/{}", op.cmd.id)).await {
            Ok((200, body)) => {
                let hold = body
                    .get("holdId")
                    .and_then(Value::as_str)
                    .map(str::to_string);
                if body["status"].as_str() != Some(rec.status.as_str()) || hold != rec.hold_id {
                    reads.push(format!(
                        "{}: GET says {body}, table says {} {:?}",
                        op.cmd.id, rec.status, rec.hold_id
                    ));
                }
            }
            Ok((status, body)) => reads.push(format!(
                "{}: GET /transactions answered {status} {body}",
                op.cmd.id
            )),
            Err(e) => reads.push(format!("{}: GET /transactions failed: {e}", op.cmd.id)),
        }
    }
    report(v, "GET /transactions/{id} disagrees with the table", reads);

    auditor(http, &db, v).await?;
    dead_letters(http, &db, model, v).await?;
    Ok(())
}

/// The server's own conservation auditor must pass; SQL stand-in while the route is missing.
async fn auditor(http: &Http, db: &tokio_postgres::Client, v: &mut Verdict) -> Result<()> {
    match http.get_json("/debug/conservation").await? {
        (200, body) if body["pass"] == Value::Bool(true) => {}
        (404, _) => {
            v.notes
                .push("GET /debug/conservation missing: invariants checked with SQL".into());
            let broken: i64 = db
                .query_one(
                    "SELECT count(*) FROM accounts a \
                     LEFT JOIN (SELECT account_id, sum(CASE kind WHEN 'deposit' THEN amount ELSE -amount END) AS net \
                                FROM transactions WHERE status = 'applied' GROUP BY account_id) t ON t.account_id = a.id \
                     LEFT JOIN (SELECT account_id, sum(amount) AS open FROM holds WHERE status = 'open' GROUP BY account_id) h \
                            ON h.account_id = a.id \
                     WHERE a.balance <> COALESCE(t.net, 0) OR a.held <> COALESCE(h.open, 0)",
                    &[],
                )
                .await?
                .get(0);
            if broken > 0 {
                v.fail(format!(
                    "{broken} accounts break conservation (SQL stand-in for the auditor)"
                ));
            }
        }
        (status, body) => {
            let failed: Vec<String> = body["checks"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|c| c["pass"] != Value::Bool(true))
                .map(|c| format!("{} {}", c["name"], c["offending"]))
                .collect();
            v.fail(format!(
                "auditor: /debug/conservation answered {status}: {}",
                if failed.is_empty() {
                    body.to_string()
                } else {
                    failed.join("; ")
                }
            ));
        }
    }
    Ok(())
}

/// Each poison message archived exactly once, through the route when it exists.
async fn dead_letters(
    http: &Http,
    db: &tokio_postgres::Client,
    model: &Model,
    v: &mut Verdict,
) -> Result<()> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut total = 0;
    match http.get_json("/debug/dead-letters?limit=1000").await? {
        (200, Value::Array(letters)) => {
            total = letters.len();
            for l in letters {
                if let Some(id) = l["messageId"].as_str() {
                    *seen.entry(id.to_string()).or_default() += 1;
                }
            }
        }
        (404, _) => {
            v.notes
                .push("GET /debug/dead-letters missing: dead letters read with SQL".into());
            for r in db.query("SELECT message_id FROM dead_letters", &[]).await? {
                total += 1;
                if let Some(id) = r.get::<_, Option<String>>(0) {
                    *seen.entry(id).or_default() += 1;
                }
            }
        }
        (status, body) => v.fail(format!("/debug/dead-letters answered {status}: {body}")),
    }
    for id in &model.poisons {
        match seen.get(id).copied().unwrap_or(0) {
            1 => {}
            n => v.fail(format!(
                "poison message {id} appears {n} times in the dead letters (expected once)"
            )),
        }
    }
    if total != model.poisons.len() {
        v.fail(format!(
            "{total} dead letters, but only {} poison messages were sent: {seen:?}",
            model.poisons.len()
        ));
    }
    Ok(())
}
