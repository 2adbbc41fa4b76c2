//! After the storm: waits until the system has settled (every process up, every shard queue
//! drained and consumed, every decided id recorded), then checks the ledger against what the
//! clients were told:
//!
//! - every answer against the final records, by what it promises (`scoring`);
//! - the records and holds against each other and the ledger's rules, in the order the
//!   ledger applied them (`replay`);
//! - per account: balance = what the allowed records add up to, held = the holds still open;
//!   the accounts table and the API's `/account` agree;
//! - no record applied before it was accepted, no deadline denial before a deadline could
//!   pass (one clock for decisions);
//! - the server's own auditor (`/debug/conservation`) passes;
//! - each poison message is archived exactly once as a dead letter.
//!
//! The database is read directly with SQL (the ground truth); the HTTP read routes are then
//! compared with it, so a wrong answer there is caught too.

use anyhow::Result;
use rust_decimal::Decimal;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Duration;
use tally_core::{HoldStatus, OutcomeStatus, Reason};
use tokio::time::Instant;

use crate::cluster::{pg_connect, Cluster, RunConfig, DECISION_MARGIN, REQUEST_DEADLINE};
use crate::model::{Http, Kind, Op};
use crate::replay;
use crate::scoring::{self, HoldRow, Ledger, Record};

/// No withdraw_request can be denied for its deadline sooner than this after it was sent:
/// the worker must decide while `deadline − margin` is left, counted from nginx's arrival
/// (`cluster` sets both). Half a second of slack for the clients' own scheduling.
const EARLIEST_DEADLINE: Duration = REQUEST_DEADLINE
    .saturating_sub(DECISION_MARGIN)
    .saturating_sub(Duration::from_millis(500));

/// Everything the clients and the fault injector did.
pub struct Model {
    pub ops: Vec<Op>,
    pub poisons: Vec<String>,
}

/// Failures found (empty = the seed passed).
#[derive(Debug, Default)]
pub struct Verdict {
    pub failures: Vec<String>,
}

impl Verdict {
    fn fail(&mut self, what: impl Into<String>) {
        self.failures.push(what.into());
    }
}

fn dec(text: &str) -> Decimal {
    text.parse().unwrap_or(Decimal::MIN)
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
        .filter(|op| op.answer().decided())
        .map(|op| op.cmd.id.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    loop {
        let last = match settled(cluster, cfg, &expected, &model.poisons).await {
            Ok(None) => return,
            Ok(Some(why)) => why,
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() >= deadline {
            let state = diagnose(cluster, cfg, &expected).await;
            let late = wait_late(cluster, cfg, &expected, &model.poisons).await;
            v.fail(format!(
                "not settled within {timeout:?}: {last}; {late}; the state at the deadline is in {}",
                state.display()
            ));
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// How much longer than the settle bound the checker keeps looking, to tell a late message
/// (a queue that stalled, then recovered) from a lost one.
const LATE_GRACE: Duration = Duration::from_secs(120);

/// After the settle bound: whether the system settles within [`LATE_GRACE`] more, and when.
async fn wait_late(
    cluster: &Cluster,
    cfg: &RunConfig,
    expected: &[String],
    poisons: &[String],
) -> String {
    let began = Instant::now();
    let mut last = String::new();
    while began.elapsed() < LATE_GRACE {
        match settled(cluster, cfg, expected, poisons).await {
            Ok(None) => {
                return format!(
                    "settled {:.1}s later (late, not lost)",
                    began.elapsed().as_secs_f64()
                )
            }
            Ok(Some(why)) => last = why,
            Err(e) => last = format!("{e:#}"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    format!("still not settled {LATE_GRACE:?} later: {last}")
}

/// Writes what an unsettled seed looks like: the answered ids not recorded (and whether they
/// were dead-lettered or seen as conflicts), the shard leases, and every queue and consumer
/// of the seed as RabbitMQ reports them (per queue: ready, unacked, leader, members online;
/// per consumer: active or waiting). Best effort: what cannot be read says why.
async fn diagnose(cluster: &Cluster, cfg: &RunConfig, expected: &[String]) -> std::path::PathBuf {
    let path = cluster.log_dir.join("unsettled.txt");
    let mut out = String::new();
    match missing_ids(&cluster.db_url, expected).await {
        Ok(text) => out.push_str(&text),
        Err(e) => out.push_str(&format!("database: {e:#}\n")),
    }
    let prefix = &cluster.topology.prefix;
    for (what, columns) in [
        (
            "list_queues",
            "name type messages_ready messages_unacknowledged consumers leader members online",
        ),
        (
            "list_consumers",
            "queue_name channel_pid consumer_tag ack_required prefetch_count active activity_status",
        ),
    ] {
        out.push_str(&format!("\n== rabbitmqctl {what} {columns}\n"));
        match cfg.rabbitmqctl(what, columns).await {
            Ok(text) => text
                .lines()
                .filter(|l| l.contains(prefix.as_str()))
                .for_each(|l| out.push_str(&format!("{l}\n"))),
            Err(e) => out.push_str(&format!("{e:#}\n")),
        }
    }
    if let Err(e) = std::fs::write(&path, out) {
        eprintln!("chaos: could not write {}: {e}", path.display());
    }
    path
}

/// The answered ids without a record, with what the database knows of them otherwise.
async fn missing_ids(db_url: &str, expected: &[String]) -> Result<String> {
    let db = pg_connect(db_url).await?;
    let rows = db
        .query(
            "SELECT x.id, \
                    (SELECT count(*) FROM dead_letters d WHERE d.message_id = x.id), \
                    (SELECT count(*) FROM id_conflicts c WHERE c.id = x.id) \
               FROM unnest($1::text[]) AS x(id) \
              WHERE NOT EXISTS (SELECT 1 FROM transactions t WHERE t.id = x.id)",
            &[&expected],
        )
        .await?;
    let mut out = format!("== answered ids with no record ({})\n", rows.len());
    for r in &rows {
        let (id, dead, conflicts): (String, i64, i64) = (r.get(0), r.get(1), r.get(2));
        out.push_str(&format!(
            "{id} dead_letters={dead} id_conflicts={conflicts}\n"
        ));
    }
    out.push_str("\n== shard_leases\n");
    for r in db
        .query(
            "SELECT shard::text, coalesce(owner, '-'), epoch::text, \
                    (expires_at > now())::text FROM shard_leases ORDER BY shard",
            &[],
        )
        .await?
    {
        let cols: Vec<String> = (0..4).map(|i| r.get::<_, String>(i)).collect();
        out.push_str(&format!("{}\n", cols.join(" ")));
    }
    Ok(out)
}

/// Every live worker must get its share of the shards back after the faults. Another worker
/// taking over everything hides a worker that hangs (alive, but neither consuming nor
/// stopping), so this is checked on its own. Lease owners are named `tally-worker-<pid>-…`.
pub async fn workers_own_shards(cluster: &Cluster, timeout: Duration, v: &mut Verdict) {
    let deadline = Instant::now() + timeout;
    loop {
        let owners = lease_owners(&cluster.db_url).await.unwrap_or_default();
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

/// Owners of the shard leases not yet expired.
async fn lease_owners(db_url: &str) -> Result<Vec<String>> {
    let rows = pg_connect(db_url)
        .await?
        .query(
            "SELECT owner FROM shard_leases WHERE owner IS NOT NULL AND expires_at > now()",
            &[],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
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

/// The code whose text a row holds; an unknown text is an error, never a guess.
fn code<T>(what: &str, text: String, parse: fn(&str) -> Option<T>) -> Result<T> {
    parse(&text).ok_or_else(|| anyhow::anyhow!("unknown {what} {text:?} in the ledger"))
}

/// Reads the final records: every transaction and every hold.
async fn load_ledger(db: &tokio_postgres::Client) -> Result<Ledger> {
    let mut ledger = Ledger::default();
    for r in db
        .query(
            "SELECT id, account_id, kind, amount::text, status, reason, hold_id::text, \
                    request_id, seq, balance_after::text FROM transactions",
            &[],
        )
        .await?
    {
        let (amount, after): (String, String) = (r.get(3), r.get(9));
        let reason: Option<String> = r.get(5);
        let rec = Record {
            id: r.get(0),
            account: r.get(1),
            kind: code("kind", r.get(2), Kind::parse)?,
            amount: dec(&amount),
            status: code("status", r.get(4), OutcomeStatus::parse)?,
            reason: reason
                .map(|text| code("reason", text, Reason::parse))
                .transpose()?,
            hold_id: r.get(6),
            request_id: r.get(7),
            seq: r.get(8),
            balance_after: dec(&after),
        };
        ledger.records.insert(rec.id.clone(), rec);
    }
    for r in db
        .query(
            "SELECT id::text, request_id, account_id, amount::text, status, captured_by, \
                    (extract(epoch FROM created_at) * 1000000)::int8 FROM holds",
            &[],
        )
        .await?
    {
        let amount: String = r.get(3);
        ledger.holds.push(HoldRow {
            id: r.get(0),
            request_id: r.get(1),
            account: r.get(2),
            amount: dec(&amount),
            status: code("hold status", r.get(4), HoldStatus::parse)?,
            captured_by: r.get(5),
            created: r.get(6),
        });
    }
    Ok(ledger)
}

/// Compares the ledger with the answers (see `scoring` and `replay`), then the read routes
/// with the ledger.
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

    let db = pg_connect(&cluster.db_url).await?;
    // One snapshot for records, holds and accounts: they are compared with each other.
    db.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await?;
    let ledger = load_ledger(&db).await?;
    let accounts = load_accounts(&db).await?;
    let early = applied_before_accepted(&db).await?;
    db.batch_execute("COMMIT").await?;

    for (what, items) in scoring::score(&model.ops, &ledger) {
        report(v, what, items);
    }
    report(
        v,
        "withdraw_requests denied for the deadline before it could pass",
        scoring::early_deadline_denials(&model.ops, EARLIEST_DEADLINE),
    );
    report(
        v,
        "records applied before they were accepted (clock skew)",
        early,
    );
    let allowed = scoring::allowed(&model.ops, &ledger);
    let (findings, held) = replay::replay(&ledger, &allowed);
    for (what, items) in findings {
        report(v, what, items);
    }
    let mut expected: BTreeMap<String, (Decimal, Decimal)> = BTreeMap::new();
    for (account, balance) in scoring::expected_balances(&ledger, &allowed) {
        expected.entry(account).or_default().0 = balance;
    }
    for (account, held) in held {
        expected.entry(account).or_default().1 = held;
    }
    for op in &model.ops {
        expected.entry(op.cmd.account.clone()).or_default();
    }
    report(
        v,
        "balances or holds differ from the records",
        balances_differ(http, &expected, &accounts).await,
    );
    report(
        v,
        "GET /transactions/{id} disagrees with the table",
        transaction_reads_differ(http, model, &ledger).await,
    );
    auditor(http, v).await?;
    dead_letters(http, model, v).await?;
    Ok(())
}

/// `(balance, held)` of every account in the table.
async fn load_accounts(
    db: &tokio_postgres::Client,
) -> Result<BTreeMap<String, (Decimal, Decimal)>> {
    let mut accounts = BTreeMap::new();
    for r in db
        .query("SELECT id, balance::text, held::text FROM accounts", &[])
        .await?
    {
        let (b, h): (String, String) = (r.get(1), r.get(2));
        accounts.insert(r.get(0), (dec(&b), dec(&h)));
    }
    Ok(accounts)
}

/// One clock for decisions: a record applied before the API accepted it was stamped by a
/// clock that runs behind.
async fn applied_before_accepted(db: &tokio_postgres::Client) -> Result<Vec<String>> {
    Ok(db
        .query(
            "SELECT id, accepted_at::text, applied_at::text FROM transactions \
             WHERE applied_at < accepted_at ORDER BY id",
            &[],
        )
        .await?
        .iter()
        .map(|r| {
            let (id, accepted, applied): (String, String, String) = (r.get(0), r.get(1), r.get(2));
            format!("{id}: accepted {accepted}, applied {applied}")
        })
        .collect())
}

/// The accounts table and the API's `/account` against the expected `(balance, held)`.
async fn balances_differ(
    http: &Http,
    expected: &BTreeMap<String, (Decimal, Decimal)>,
    table: &BTreeMap<String, (Decimal, Decimal)>,
) -> Vec<String> {
    let mut off = Vec::new();
    for (account, &(want_balance, want_held)) in expected {
        let (got_balance, got_held) = table.get(account).copied().unwrap_or_default();
        if got_balance != want_balance || got_held != want_held {
            off.push(format!("{account}: table balance {got_balance} held {got_held}, records say balance {want_balance} held {want_held}"));
        }
        match http.get_json(&format!("/account/{account}")).await {
            Ok((200, body)) => {
                let (b, h, a) = (
                    json_dec(&body["balance"]),
                    json_dec(&body["held"]),
                    json_dec(&body["available"]),
                );
                if b != Some(want_balance)
                    || h != Some(want_held)
                    || a != Some(want_balance - want_held)
                {
                    off.push(format!("{account}: GET /account says {body}, records say balance {want_balance} held {want_held}"));
                }
            }
            Ok((status, body)) => {
                off.push(format!("{account}: GET /account answered {status} {body}"))
            }
            Err(e) => off.push(format!("{account}: GET /account failed: {e}")),
        }
    }
    off
}

/// The read route of single transactions against the table, for every withdraw_request and
/// a sample of the others.
async fn transaction_reads_differ(http: &Http, model: &Model, ledger: &Ledger) -> Vec<String> {
    let mut reads = Vec::new();
    let mut asked = HashSet::new();
    for op in model
        .ops
        .iter()
        .filter(|op| op.cmd.kind == Kind::WithdrawRequest || op.cmd.id.ends_with('0'))
    {
        let Some(rec) = ledger.records.get(&op.cmd.id) else {
            continue;
        };
        if !asked.insert(op.cmd.id.as_str()) {
            continue;
        }
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
    reads
}

/// The server's own conservation auditor must pass.
async fn auditor(http: &Http, v: &mut Verdict) -> Result<()> {
    let (status, body) = http.get_json("/debug/conservation").await?;
    if status == 200 && body["pass"] == Value::Bool(true) {
        return Ok(());
    }
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
    Ok(())
}

/// Each poison message archived exactly once, as `/debug/dead-letters` lists them.
async fn dead_letters(http: &Http, model: &Model, v: &mut Verdict) -> Result<()> {
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
