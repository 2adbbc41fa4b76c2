-- Balance webhooks (issue 7). One registration per account; the API writes it, the worker
-- reads it. Registering does not require the account to exist yet.
CREATE TABLE webhooks (
    account_id text PRIMARY KEY,
    url        text NOT NULL,
    -- HMAC-SHA256 key of the X-Tally-Signature header; never returned by the API.
    secret     text NOT NULL,
    delay_ms   integer NOT NULL DEFAULT 0 CHECK (delay_ms BETWEEN 0 AND 86400000),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- One row per balance change of a hooked account, inserted by the worker inside the batch
-- transaction that made the change: a delivery exists iff its change committed. The row is a
-- snapshot of the account at that change (not a reference to `accounts`, which moves on); the
-- body is rendered from it at each attempt. URL and secret are read from `webhooks` at send
-- time, so a rotated secret or moved URL applies to what is still pending.
--   pending    → due at `due_at`; a sender holds it while `locked_until` is in the future
--                (a lease: a sender that dies leaves it to expire and another one sends —
--                at-least-once, receivers dedupe on the delivery id).
--   sent       → the receiver answered 2xx.
--   superseded → a newer change of the account arrived before it was sent; never sent.
--   failed     → out of attempts (or the webhook was deleted); `last_error` says why.
CREATE TABLE webhook_deliveries (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id    text NOT NULL,
    balance       numeric NOT NULL,
    available     numeric NOT NULL,
    version       bigint NOT NULL,
    changed_at    timestamptz NOT NULL,
    status        text NOT NULL DEFAULT 'pending'
                  CHECK (status IN ('pending', 'sent', 'superseded', 'failed')),
    -- Attempts that got an answer or an error (a sender killed mid-send does not count).
    attempts      integer NOT NULL DEFAULT 0,
    due_at        timestamptz NOT NULL,
    locked_until  timestamptz,
    -- Which claim holds the lease: a sender whose lease expired and was re-claimed cannot
    -- overwrite the newer claim's outcome.
    claim         uuid,
    last_status   integer,
    last_error    text,
    created_at    timestamptz NOT NULL,
    finished_at   timestamptz
);

-- The senders' poll: due pending rows. Partial, so it stays as small as the backlog however
-- many deliveries were ever made.
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (due_at) WHERE status = 'pending';
-- The batch's supersede step looks up an account's pending rows.
CREATE INDEX webhook_deliveries_pending_account ON webhook_deliveries (account_id)
    WHERE status = 'pending';
