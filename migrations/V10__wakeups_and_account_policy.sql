-- tally schema, version 10: wake-ups by LISTEN/NOTIFY for the settlement job runners and the
-- webhook senders (instead of polling every second / 200 ms), and a withdraw policy per
-- account.

-- ------------------------------------------------------------------------------- wake-ups
-- Notified by triggers rather than by a NOTIFY in each writer's code: every path that makes
-- work appears (the API creating a job, a runner handing one back at shutdown, a batch or the
-- hold sweep scheduling deliveries, an operator's INSERT, a future writer) wakes the runners
-- and senders without having to remember to, and the notification is still part of the
-- writing transaction: PostgreSQL delivers it on commit, never for a rollback, so a listener
-- woken by it always finds the row. The payload is empty: listeners only wake up and claim
-- from the table as before (the table stays the truth; a slow fallback poll remains for a
-- listener that was disconnected when a notification was sent).
--
-- Cost: a committing transaction that notified takes PostgreSQL's notification queue lock,
-- so such commits are serialized among themselves. Jobs are rare. Deliveries are scheduled
-- only for accounts with a webhook, the trigger is per statement (one notification per batch,
-- not per row) and sends nothing when the statement inserted no row.
CREATE FUNCTION tally_notify_settlement_jobs() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('tally_settlement_jobs', '');
    RETURN NULL;
END;
$$;

-- Row level with a WHEN: a job becomes claimable when it is inserted QUEUED or handed back to
-- QUEUED; progress updates of a RUNNING job (every chunk, every heartbeat) notify nothing.
CREATE TRIGGER settlement_jobs_queued
    AFTER INSERT OR UPDATE OF status ON settlement_jobs
    FOR EACH ROW WHEN (NEW.status = 'QUEUED')
    EXECUTE FUNCTION tally_notify_settlement_jobs();

CREATE FUNCTION tally_notify_webhook_deliveries() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM scheduled) THEN
        PERFORM pg_notify('tally_webhook_deliveries', '');
    END IF;
    RETURN NULL;
END;
$$;

-- Per statement, over the inserted rows (a transition table): the batch write inserts all
-- its deliveries in one statement. Retries (a failed attempt's back-off) are UPDATEs and
-- notify nothing: the sender that recorded the failure knows when the retry is due and
-- sleeps until then (tally_store::webhooks::next_due), as for a webhook's delay.
CREATE TRIGGER webhook_deliveries_scheduled
    AFTER INSERT ON webhook_deliveries
    REFERENCING NEW TABLE AS scheduled
    FOR EACH STATEMENT
    EXECUTE FUNCTION tally_notify_webhook_deliveries();

-- --------------------------------------------------------------------- policy per account
-- The account's own withdraw policy (`PUT /account/{id}/policy`), written by the shard's
-- worker like the rest of the row: a policy change is a command of the account's queue, so it
-- applies in order with the account's transactions. NULL: the global ledger.withdraw_policy.
-- overdraft_limit: how far below zero `available` may go under reject_overdraft (0 under
-- always_apply, which has no limit).
ALTER TABLE accounts
    ADD COLUMN withdraw_policy text
        CHECK (withdraw_policy IN ('always_apply', 'reject_overdraft')),
    ADD COLUMN overdraft_limit numeric NOT NULL DEFAULT 0 CHECK (overdraft_limit >= 0),
    ADD COLUMN policy_version bigint NOT NULL DEFAULT 0,
    ADD CONSTRAINT accounts_limit_needs_reject_overdraft
        CHECK (overdraft_limit = 0 OR withdraw_policy = 'reject_overdraft');

-- Every policy change applied, the dedupe guard of policy commands (primary key on the id,
-- as for transactions). A change takes no `seq` (the transactions of an account stay
-- numbered 1, 2, 3… with no gap, which the auditor checks); it records the account's seq
-- when it was applied instead: it governs the transactions with seq > after_seq, until the
-- next change (policy_version orders changes made between the same two transactions).
CREATE TABLE account_policy_changes (
    id              text PRIMARY KEY,
    account_id      text NOT NULL,
    policy_version  bigint NOT NULL,
    after_seq       bigint NOT NULL,
    withdraw_policy text NOT NULL CHECK (withdraw_policy IN ('always_apply', 'reject_overdraft')),
    overdraft_limit numeric NOT NULL CHECK (overdraft_limit >= 0),
    fingerprint     text NOT NULL,
    accepted_at     timestamptz NOT NULL,
    applied_at      timestamptz NOT NULL,
    key_name        text,
    shard           integer NOT NULL,
    UNIQUE (account_id, policy_version)
);
