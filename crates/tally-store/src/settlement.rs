//! Settlement jobs and their results: per account per UTC day of `applied_at`, the applied
//! deposits, withdraws, net and count, upserted into `settlements`.
//!
//! The API creates jobs ([`create_bounded`]: at most a configured number waiting) and requests
//! cancellation ([`cancel`]); worker processes run them ([`claim`], then [`chunk`] after
//! [`chunk`]). Invariants:
//! - **Idempotent results**: a chunk recomputes whole days from the ledger and writes them
//!   (inserted the first time, upserted after, under a per-day lock), so running a range twice,
//!   concurrently or not, or resuming after a crash, gives the same rows.
//! - **Bounded memory**: PostgreSQL aggregates (`INSERT … SELECT … GROUP BY`) and formats the
//!   CSV (`COPY … TO STDOUT`); no row of the range ever enters a tally process.
//! - **Progress is a prefix**: chunks may compute concurrently, but commit in day order, each
//!   with its progress; `processed` days from `from` are done, exactly.
//! - **Never stuck RUNNING**: a runner heartbeats; a RUNNING job whose heartbeat is older than
//!   the stale limit is claimed again (resumed from `processed`) or, after `max_attempts`
//!   claims, marked FAILED with the reason ([`fail_abandoned`]).
//! - **Fencing**: every runner write names the claim token it got from [`claim`]; a runner that
//!   lost its job (stalled past the stale limit, or its job was cancelled) writes nothing more.

use chrono::{DateTime, NaiveDate, NaiveTime, Utc};
use deadpool_postgres::{Object, Pool};
use std::time::Duration;
use tokio_postgres::{CopyOutStream, Row};
use uuid::Uuid;

use crate::StoreError;

/// How long a RUNNING job may go without a heartbeat before it counts as abandoned (the
/// runner's default, and what `POST /jobs/{id}/cancel` uses to cancel an abandoned job at
/// once).
pub const STALE_AFTER: Duration = Duration::from_secs(15);

/// The true state of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStatus {
    Queued,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "QUEUED",
            JobStatus::Running => "RUNNING",
            JobStatus::Completed => "COMPLETED",
            JobStatus::Failed => "FAILED",
            JobStatus::Cancelled => "CANCELLED",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "QUEUED" => JobStatus::Queued,
            "RUNNING" => JobStatus::Running,
            "COMPLETED" => JobStatus::Completed,
            "FAILED" => JobStatus::Failed,
            "CANCELLED" => JobStatus::Cancelled,
            _ => return None,
        })
    }

    /// COMPLETED, FAILED or CANCELLED: nothing will change the job any more.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobStatus::Completed | JobStatus::Failed | JobStatus::Cancelled
        )
    }
}

/// A settlement job as recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub id: Uuid,
    pub status: JobStatus,
    /// Inclusive range of UTC days.
    pub from: NaiveDate,
    pub to: NaiveDate,
    /// Days done, counted from `from`; the job resumes at `from + processed`.
    pub processed: i64,
    /// Days in the range.
    pub total: i64,
    pub error: Option<String>,
    pub cancel_requested: bool,
    /// Claims so far (a graceful hand-back does not count).
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

const JOB_COLUMNS: &str = "j.id, j.status, j.from_day, j.to_day, j.processed, j.total, j.error, \
     j.cancel_requested, j.attempts, j.created_at, j.started_at, j.finished_at";

impl Job {
    fn from_row(r: &Row) -> Self {
        let status: String = r.get(1);
        Self {
            id: r.get(0),
            // The CHECK constraint allows nothing else.
            status: JobStatus::parse(&status).unwrap_or(JobStatus::Failed),
            from: r.get(2),
            to: r.get(3),
            processed: r.get(4),
            total: r.get(5),
            error: r.get(6),
            cancel_requested: r.get(7),
            attempts: r.get(8),
            created_at: r.get(9),
            started_at: r.get(10),
            finished_at: r.get(11),
        }
    }
}

fn seconds(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn day_start(day: NaiveDate) -> DateTime<Utc> {
    day.and_time(NaiveTime::MIN).and_utc()
}

/// The day after `day` (callers validate ranges, so the end of the calendar is never hit).
fn next_day(day: NaiveDate) -> NaiveDate {
    day.succ_opt().unwrap_or(day)
}

/// Queues a job for the days `[from, to]` (callers check `from <= to`), however many are
/// waiting: for tools that own the database (the benchmark); the API uses [`create_bounded`].
pub async fn create(pool: &Pool, from: NaiveDate, to: NaiveDate) -> Result<Job, StoreError> {
    let client = pool.get().await?;
    let total = (to - from).num_days() + 1;
    let row = client
        .query_one(
            &format!(
                "INSERT INTO settlement_jobs AS j (id, from_day, to_day, total) \
                 VALUES ($1, $2, $3, $4) RETURNING {JOB_COLUMNS}"
            ),
            &[&Uuid::new_v4(), &from, &to, &total],
        )
        .await?;
    Ok(Job::from_row(&row))
}

/// Serializes [`create_bounded`] ("tq" in ASCII: the namespace of this two-key advisory lock),
/// so that two requests cannot both count the last free place of the queue.
const LOCK_QUEUE: &str = "SELECT pg_advisory_xact_lock(29809, 0)";

/// Queues a job for the days `[from, to]` (callers check `from <= to`) unless `max_queued`
/// jobs are already waiting (QUEUED): `None` then, and nothing is written.
pub async fn create_bounded(
    pool: &Pool,
    from: NaiveDate,
    to: NaiveDate,
    max_queued: u32,
) -> Result<Option<Job>, StoreError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    tx.execute(LOCK_QUEUE, &[]).await?;
    // The partial index of open jobs serves this count: as small as the queue, never the
    // whole history of jobs.
    let queued: i64 = tx
        .query_one(
            "SELECT count(*) FROM settlement_jobs WHERE status = 'QUEUED'",
            &[],
        )
        .await?
        .get(0);
    if queued >= i64::from(max_queued) {
        return Ok(None);
    }
    let total = (to - from).num_days() + 1;
    let row = tx
        .query_one(
            &format!(
                "INSERT INTO settlement_jobs AS j (id, from_day, to_day, total) \
                 VALUES ($1, $2, $3, $4) RETURNING {JOB_COLUMNS}"
            ),
            &[&Uuid::new_v4(), &from, &to, &total],
        )
        .await?;
    tx.commit().await?;
    Ok(Some(Job::from_row(&row)))
}

/// The job, if it exists.
pub async fn get(pool: &Pool, id: Uuid) -> Result<Option<Job>, StoreError> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(&format!(
            "SELECT {JOB_COLUMNS} FROM settlement_jobs j WHERE j.id = $1"
        ))
        .await?;
    Ok(client
        .query_opt(&stmt, &[&id])
        .await?
        .as_ref()
        .map(Job::from_row))
}

/// Requests cancellation. A QUEUED job is CANCELLED at once, and so is a RUNNING one whose
/// runner stopped heartbeating more than `stale_after` ago (nobody would see the request);
/// a live RUNNING job is flagged and its runner stops at its next chunk boundary. A final job
/// is returned unchanged. `None`: no such job.
pub async fn cancel(
    pool: &Pool,
    id: Uuid,
    stale_after: Duration,
) -> Result<Option<Job>, StoreError> {
    let client = pool.get().await?;
    let now_final = "(j.status = 'QUEUED' OR j.heartbeat_at < now() - make_interval(secs => $2))";
    // SET expressions see the row before the update, so every CASE tests the same thing.
    let updated = client
        .query_opt(
            &format!(
                "UPDATE settlement_jobs j SET cancel_requested = true, \
                     status = CASE WHEN {now_final} THEN 'CANCELLED' ELSE j.status END, \
                     finished_at = CASE WHEN {now_final} THEN now() ELSE j.finished_at END, \
                     claim = CASE WHEN {now_final} THEN NULL ELSE j.claim END \
                 WHERE j.id = $1 AND j.status IN ('QUEUED', 'RUNNING') \
                 RETURNING {JOB_COLUMNS}"
            ),
            &[&id, &seconds(stale_after)],
        )
        .await?;
    match updated {
        Some(row) => Ok(Some(Job::from_row(&row))),
        None => get(pool, id).await,
    }
}

/// A job a runner holds, with the fencing token of its claim.
#[derive(Debug, Clone, PartialEq)]
pub struct Claim {
    pub job: Job,
    pub token: Uuid,
}

/// Ends abandoned jobs that may not be retried: RUNNING without a heartbeat for
/// `stale_after` and either already claimed `max_attempts` times (FAILED, with the reason) or
/// asked to cancel (CANCELLED). Returns how many.
pub async fn fail_abandoned(
    pool: &Pool,
    stale_after: Duration,
    max_attempts: i32,
) -> Result<u64, StoreError> {
    let client = pool.get().await?;
    Ok(client
        .execute(
            "UPDATE settlement_jobs SET \
                 status = CASE WHEN cancel_requested THEN 'CANCELLED' ELSE 'FAILED' END, \
                 error = CASE WHEN cancel_requested THEN error ELSE format( \
                     'abandoned: the worker running it stopped heartbeating (last: %s), \
                      %s time(s) in a row; stopped after %s of %s days. The days done are \
                      kept; queue the range again to finish it', \
                     runner, attempts, processed, total) END, \
                 finished_at = now(), claim = NULL \
             WHERE status = 'RUNNING' AND heartbeat_at < now() - make_interval(secs => $1) \
               AND (attempts >= $2 OR cancel_requested)",
            &[&seconds(stale_after), &max_attempts],
        )
        .await?)
}

/// Claims the oldest QUEUED job, or an abandoned RUNNING one (no heartbeat for `stale_after`,
/// fewer than `max_attempts` claims) to resume it. `runner` names the claimer for operators.
pub async fn claim(
    pool: &Pool,
    runner: &str,
    stale_after: Duration,
    max_attempts: i32,
) -> Result<Option<Claim>, StoreError> {
    let client = pool.get().await?;
    let token = Uuid::new_v4();
    // SKIP LOCKED: concurrent runners take different jobs instead of queueing on one row.
    let row = client
        .query_opt(
            &format!(
                "UPDATE settlement_jobs j SET status = 'RUNNING', claim = $1, runner = $2, \
                     attempts = j.attempts + 1, started_at = COALESCE(j.started_at, now()), \
                     heartbeat_at = now() \
                 FROM (SELECT id FROM settlement_jobs \
                       WHERE status = 'QUEUED' \
                          OR (status = 'RUNNING' \
                              AND heartbeat_at < now() - make_interval(secs => $3) \
                              AND attempts < $4) \
                       ORDER BY created_at, id LIMIT 1 FOR UPDATE SKIP LOCKED) c \
                 WHERE j.id = c.id RETURNING {JOB_COLUMNS}"
            ),
            &[&token, &runner, &seconds(stale_after), &max_attempts],
        )
        .await?;
    Ok(row.map(|r| Claim {
        job: Job::from_row(&r),
        token,
    }))
}

/// Records that the runner holding `claim` is alive. `false`: it no longer holds the job.
pub async fn heartbeat(pool: &Pool, claim: &Claim) -> Result<bool, StoreError> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(
            "UPDATE settlement_jobs SET heartbeat_at = now() \
             WHERE id = $1 AND claim = $2 AND status = 'RUNNING'",
        )
        .await?;
    Ok(client
        .execute(&stmt, &[&claim.job.id, &claim.token])
        .await?
        == 1)
}

/// What one [`chunk`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The chunk is committed; `processed` days are done in all.
    Progressed {
        processed: i64,
        cancel_requested: bool,
    },
    /// The last chunk is committed and the job is COMPLETED.
    Completed,
    /// The claim is gone (the job was reclaimed or cancelled): nothing was written.
    Lost,
    /// The chunk before this one did not commit, so this one did not either (progress is a
    /// prefix of the range: a later day is never recorded as done before an earlier one).
    Abandoned,
}

/// The first UTC day in `[$1, $2)` with an applied transaction: empty days are skipped in
/// one index probe instead of one chunk each, so a long, sparse range costs nothing extra.
const FIRST_BUSY_DAY: &str = "SELECT (min(applied_at) AT TIME ZONE 'UTC')::date FROM transactions \
     WHERE status = 'applied' AND applied_at >= $1 AND applied_at < $2";

/// The first day in `[from, to]` with applied transactions, if any.
pub async fn next_busy_day(
    pool: &Pool,
    from: NaiveDate,
    to: NaiveDate,
) -> Result<Option<NaiveDate>, StoreError> {
    let client = pool.get().await?;
    let stmt = client.prepare_cached(FIRST_BUSY_DAY).await?;
    let busy: Option<NaiveDate> = client
        .query_one(&stmt, &[&day_start(from), &day_start(next_day(to))])
        .await?
        .get(0);
    Ok(busy.map(|day| day.max(from)))
}

/// The settlement rows of the days in `[$1, $2)`, computed from the ledger. `net` is taken
/// from the two sums rather than summed a third time.
const DAYS: &str = "SELECT day, account_id, trim_scale(d), trim_scale(w), trim_scale(d - w), c, \
            $3::uuid, now() \
     FROM (SELECT (applied_at AT TIME ZONE 'UTC')::date AS day, account_id, \
                  COALESCE(sum(amount) FILTER (WHERE kind = 'deposit'), 0) AS d, \
                  COALESCE(sum(amount) FILTER (WHERE kind = 'withdraw'), 0) AS w, \
                  count(*) AS c \
           FROM transactions \
           WHERE status = 'applied' AND applied_at >= $1 AND applied_at < $2 \
           GROUP BY 1, 2) sums";

const INSERT_COLUMNS: &str =
    "INSERT INTO settlements AS s (day, account_id, deposits, withdraws, net, count, job_id, \
         computed_at)";

/// Days settled for the first time: a plain insert, a third cheaper than the upsert (no
/// speculative insertion), and the common case (the daily file, a first run over a range).
fn insert_days() -> String {
    format!("{INSERT_COLUMNS} {DAYS}")
}

/// Days settled before: an upsert. A row whose numbers did not change is not rewritten (a
/// re-run leaves no dead tuples and keeps the job that last changed the row).
fn upsert_days() -> String {
    format!(
        "{INSERT_COLUMNS} {DAYS} \
         ON CONFLICT (day, account_id) DO UPDATE SET deposits = EXCLUDED.deposits, \
             withdraws = EXCLUDED.withdraws, net = EXCLUDED.net, count = EXCLUDED.count, \
             job_id = EXCLUDED.job_id, computed_at = EXCLUDED.computed_at \
         WHERE (s.deposits, s.withdraws, s.count) \
               IS DISTINCT FROM (EXCLUDED.deposits, EXCLUDED.withdraws, EXCLUDED.count)"
    )
}

/// Serializes the chunks of every job on the same days ("ts" in ASCII: the namespace of the
/// two-key advisory locks, the second key being the day's number). Under it, the choice
/// between [`insert_days`] and [`upsert_days`] cannot be invalidated by another job settling
/// the same day meanwhile. Locks are taken in day order (generate_series is ascending), so two
/// chunks never deadlock on them.
const LOCK_DAYS: &str = "SELECT pg_advisory_xact_lock(29811, ($1::date - DATE '1970-01-01') + i) \
     FROM generate_series(0, $2::date - $1::date) AS i";

/// One chunk of a job, in one transaction: recompute the days `days` (inclusive; `None` for
/// none: the closing chunk of a range whose rest is empty), then — only once `previous`
/// resolves `true`, i.e. the chunk before it committed — record `processed` days as done
/// (COMPLETED when that is all of them) and commit. Chunks may therefore compute
/// concurrently on several connections while they commit strictly in order, so a crash
/// anywhere leaves a committed prefix of the range and a `processed` that matches it.
///
/// The progress update is fenced by the claim token: a runner that lost its job rolls its
/// chunk back ([`Step::Lost`]). Dropping the future mid-way rolls the chunk back too.
pub async fn chunk<F>(
    pool: &Pool,
    claim: &Claim,
    days: Option<(NaiveDate, NaiveDate)>,
    processed: i64,
    previous: Option<F>,
) -> Result<Step, StoreError>
where
    F: std::future::Future<Output = bool>,
{
    let job = &claim.job;
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    if let Some((first, last)) = days {
        // Room to group a day's accounts in a hash table instead of sorting them: the sort
        // was a fifth of a chunk's time. Past it PostgreSQL spills to disk: slower, not wrong.
        tx.batch_execute("SET LOCAL work_mem = '64MB'").await?;
        tx.execute(LOCK_DAYS, &[&first, &last]).await?;
        let settled: bool = tx
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM settlements WHERE day BETWEEN $1 AND $2)",
                &[&first, &last],
            )
            .await?
            .get(0);
        let statement = if settled {
            upsert_days()
        } else {
            insert_days()
        };
        tx.execute(
            statement.as_str(),
            &[&day_start(first), &day_start(next_day(last)), &job.id],
        )
        .await?;
    }
    if let Some(previous) = previous {
        if !previous.await {
            // Dropping the transaction rolls the chunk back.
            return Ok(Step::Abandoned);
        }
    }
    let done = processed >= job.total;
    let fenced = tx
        .query_opt(
            "UPDATE settlement_jobs SET processed = $3, heartbeat_at = now(), \
                 status = CASE WHEN $4 THEN 'COMPLETED' ELSE status END, \
                 finished_at = CASE WHEN $4 THEN now() ELSE finished_at END, \
                 claim = CASE WHEN $4 THEN NULL ELSE claim END \
             WHERE id = $1 AND claim = $2 AND status = 'RUNNING' \
             RETURNING cancel_requested",
            &[&job.id, &claim.token, &processed, &done],
        )
        .await?;
    let Some(row) = fenced else {
        return Ok(Step::Lost);
    };
    tx.commit().await?;
    Ok(if done {
        Step::Completed
    } else {
        Step::Progressed {
            processed,
            cancel_requested: row.get(0),
        }
    })
}

/// Ends the job held by `claim` as FAILED (with `error`) or CANCELLED. `false`: the claim was
/// already gone.
pub async fn finish(
    pool: &Pool,
    claim: &Claim,
    status: JobStatus,
    error: Option<&str>,
) -> Result<bool, StoreError> {
    let client = pool.get().await?;
    Ok(client
        .execute(
            "UPDATE settlement_jobs SET status = $3, error = $4, finished_at = now(), \
                 claim = NULL \
             WHERE id = $1 AND claim = $2 AND status = 'RUNNING'",
            &[&claim.job.id, &claim.token, &status.as_str(), &error],
        )
        .await?
        == 1)
}

/// Hands the job back on a graceful shutdown: QUEUED again (any worker resumes it at once,
/// without waiting for the stale limit) and the attempt is not counted; CANCELLED instead if
/// cancellation was requested meanwhile.
pub async fn release(pool: &Pool, claim: &Claim) -> Result<bool, StoreError> {
    let client = pool.get().await?;
    Ok(client
        .execute(
            "UPDATE settlement_jobs SET \
                 status = CASE WHEN cancel_requested THEN 'CANCELLED' ELSE 'QUEUED' END, \
                 finished_at = CASE WHEN cancel_requested THEN now() END, \
                 attempts = attempts - 1, claim = NULL, runner = NULL, heartbeat_at = NULL \
             WHERE id = $1 AND claim = $2 AND status = 'RUNNING'",
            &[&claim.job.id, &claim.token],
        )
        .await?
        == 1)
}

/// Streams the job's range of `settlements` as CSV with a header
/// (`account_id,day,deposits,withdraws,net,count`), ordered by day then account — the
/// primary key's order, so PostgreSQL reads it straight from the index without sorting.
/// PostgreSQL formats the CSV; the caller forwards the chunks and keeps the returned
/// connection until the stream ends.
pub async fn csv(pool: &Pool, job: &Job) -> Result<(Object, CopyOutStream), StoreError> {
    let client = pool.get().await?;
    // COPY takes no parameters; the only values spliced in are dates printed by chrono as
    // YYYY-MM-DD, never client text.
    let statement = format!(
        "COPY (SELECT account_id, day, deposits, withdraws, net, count FROM settlements \
               WHERE day BETWEEN '{}'::date AND '{}'::date ORDER BY day, account_id) \
         TO STDOUT WITH (FORMAT csv, HEADER)",
        job.from.format("%Y-%m-%d"),
        job.to.format("%Y-%m-%d"),
    );
    let stream = client.copy_out(statement.as_str()).await?;
    Ok((client, stream))
}
