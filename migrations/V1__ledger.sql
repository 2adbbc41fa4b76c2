-- tally ledger schema, version 1.
-- Money is numeric everywhere (never float). Every ledger row is written by the single worker
-- that owns the account's shard, inside the batch transaction that also records the
-- transaction id: dedupe and effect commit together or not at all.

-- Facts fixed when the system is first started; today only the shard count (K). Changing K
-- would move accounts between shards and break per-account ordering, so processes refuse to
-- start when their configured K differs from the recorded one.
CREATE TABLE ledger_meta (
    key   text PRIMARY KEY,
    value text NOT NULL
);

-- One row per account, created on first use. held = sum of open holds (invariant 2);
-- version counts applied changes and numbers each account's history (seq below).
CREATE TABLE accounts (
    id         text PRIMARY KEY,
    user_id    text,
    balance    numeric NOT NULL DEFAULT 0,
    held       numeric NOT NULL DEFAULT 0 CHECK (held >= 0),
    version    bigint  NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Every command the worker decided, applied or not. The primary key on id is the dedupe
-- guard (invariant 3: at most one effect per id). fingerprint identifies the payload so a
-- reused id with another payload is detected. seq/balance_after give the per-account order
-- and running balance of the history.
CREATE TABLE transactions (
    id            text PRIMARY KEY,
    account_id    text NOT NULL,
    kind          text NOT NULL CHECK (kind IN ('deposit', 'withdraw', 'withdraw_request')),
    amount        numeric NOT NULL CHECK (amount > 0),
    status        text NOT NULL CHECK (status IN ('applied', 'rejected', 'approved', 'denied')),
    reason        text,
    hold_id       uuid,
    request_id    text,
    fingerprint   text NOT NULL,
    seq           bigint NOT NULL,
    balance_after numeric NOT NULL,
    occurred_at   timestamptz NOT NULL,
    accepted_at   timestamptz NOT NULL,
    applied_at    timestamptz NOT NULL,
    shard         integer NOT NULL
);
CREATE INDEX transactions_account_history ON transactions (account_id, seq DESC);

-- Funds promised to an approved withdraw_request. Open holds count against `available` until
-- a withdraw captures them or they expire.
CREATE TABLE holds (
    id          uuid PRIMARY KEY,
    account_id  text NOT NULL,
    request_id  text NOT NULL UNIQUE,
    amount      numeric NOT NULL CHECK (amount > 0),
    -- released: the API answered "deadline_exceeded" although the worker approved (void).
    status      text NOT NULL CHECK (status IN ('open', 'captured', 'expired', 'released')),
    shard       integer NOT NULL,
    created_at  timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL,
    closed_at   timestamptz,
    -- The withdraw that captured the hold.
    captured_by text
);
-- The worker looks up open holds per account (capture, oldest first) and per shard (sweep).
CREATE INDEX holds_open_by_account ON holds (account_id, created_at) WHERE status = 'open';
CREATE INDEX holds_open_by_expiry ON holds (shard, expires_at) WHERE status = 'open';
