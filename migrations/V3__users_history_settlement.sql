-- tally schema, version 3: account ownership (users), the indexes behind history and largest
-- expense reads, and settlement jobs with their results.

-- ---------------------------------------------------------------------------------- users
-- Explicit links made by `PUT /users/{userId}/accounts/{accountId}`. Ownership is metadata,
-- not ledger state, so the API writes it here itself, never into `accounts`: the shard worker
-- writes account rows with absolute values under its shard lock, and a write from the API
-- there would race the next batch. The owner of an account is
-- COALESCE(account_owners.user_id, accounts.user_id): an explicit link, else the `userId` the
-- first transaction of the account carried (the worker keeps the first one). The link route
-- only inserts when the account has no other owner, so both agree; in the one race left (a
-- link committed while a first transaction with another userId was still queued) the explicit
-- link wins. A link may precede the account's first transaction (the account reads as zeros).
-- There are no user rows: a user exists while they own at least one account.
CREATE TABLE account_owners (
    account_id text PRIMARY KEY,
    user_id    text NOT NULL,
    linked_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX account_owners_by_user ON account_owners (user_id);
-- Accounts owned through their first transaction. Partial: most accounts may have no owner.
-- It does not cost the worker its HOT updates: user_id never changes once set, and HOT only
-- needs the indexed columns unchanged (balance, held and version are not indexed).
CREATE INDEX accounts_by_user ON accounts (user_id) WHERE user_id IS NOT NULL;

-- ---------------------------------------------------------------------------------- reads
-- Largest expense of an account (or of each account of a user) in [from, to] on occurred_at.
-- (account_id, occurred_at) rather than (account_id, amount DESC): the cost of the query is
-- then bounded by the account's expenses inside the range, whatever the range; walking by
-- amount would have to skip every larger expense outside a narrow range first. Partial on
-- applied withdraws (the only rows the query wants), which also keeps it small.
CREATE INDEX transactions_expenses ON transactions (account_id, occurred_at)
    WHERE kind = 'withdraw' AND status = 'applied';
-- History (`GET /account/{id}/transactions`) needs nothing new: transactions_account_history
-- (account_id, seq DESC) serves its keyset pages; type/from/to are filters on those rows.

-- ----------------------------------------------------------------------------- settlement
-- Settlement days are UTC days of applied_at (when the ledger applied the money: the posting
-- date), not of occurred_at (the client's timestamp, which may be back-dated): a day that is
-- over never changes afterwards, so a settlement file once produced stays true.
-- Jobs aggregate one chunk of days at a time with a range on applied_at; without this index
-- every chunk would scan the whole table. A B-tree rather than BRIN: rows are inserted
-- roughly in applied_at order by the worker, but bulk loads (seed, import of old data) need
-- not be, and a BRIN index degrades to a full scan when they are not. Appending at the right
-- edge of the tree is cheap for the write path.
CREATE INDEX transactions_applied_at ON transactions (applied_at);

-- One row per settlement job. The API inserts (QUEUED) and requests cancellation; workers
-- claim with FOR UPDATE SKIP LOCKED, run it chunk by chunk and record progress.
--   QUEUED → RUNNING → COMPLETED | FAILED | CANCELLED; RUNNING → QUEUED on a graceful
--   worker shutdown (handed back, no attempt counted).
-- A RUNNING job whose heartbeat is older than the stale limit lost its worker: another worker
-- resumes it from `processed` (the work is idempotent), or marks it FAILED with the reason
-- once it has lost `max_attempts` workers. So no job stays RUNNING forever.
CREATE TABLE settlement_jobs (
    id               uuid PRIMARY KEY,
    status           text NOT NULL DEFAULT 'QUEUED'
                     CHECK (status IN ('QUEUED', 'RUNNING', 'COMPLETED', 'FAILED', 'CANCELLED')),
    from_day         date NOT NULL,
    to_day           date NOT NULL,
    -- Days of [from_day, to_day] done, from the start: the resume point is from_day + processed.
    processed        bigint NOT NULL DEFAULT 0,
    total            bigint NOT NULL,
    error            text,
    cancel_requested boolean NOT NULL DEFAULT false,
    -- Times a worker claimed it (a graceful hand-back gives the attempt back).
    attempts         integer NOT NULL DEFAULT 0,
    -- Fencing token of the current claim: every write of the runner checks it, so a worker
    -- that lost the job (stalled past the stale limit) can no longer record anything.
    claim            uuid,
    runner           text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    heartbeat_at     timestamptz,
    finished_at      timestamptz,
    CHECK (from_day <= to_day),
    CHECK (processed BETWEEN 0 AND total)
);
-- Claims look at open jobs only, oldest first.
CREATE INDEX settlement_jobs_open ON settlement_jobs (created_at)
    WHERE status IN ('QUEUED', 'RUNNING');

-- Per account per UTC day of applied_at: applied deposits, applied withdraws, net
-- (deposits − withdraws) and how many. Upserted, so re-running a range rewrites the same
-- rows. The primary key is (day, account_id) — the same uniqueness as (account_id, day) — in
-- this order so a chunk's upsert writes one contiguous stretch of the index (one day) instead
-- of one leaf page per account, and the CSV download reads a day range in order without a sort.
-- job_id/computed_at: the job that last changed the row (a re-run that finds the same
-- numbers does not rewrite it).
CREATE TABLE settlements (
    day         date NOT NULL,
    account_id  text NOT NULL,
    deposits    numeric NOT NULL,
    withdraws   numeric NOT NULL,
    net         numeric NOT NULL,
    count       bigint NOT NULL,
    job_id      uuid NOT NULL,
    computed_at timestamptz NOT NULL,
    PRIMARY KEY (day, account_id)
);
