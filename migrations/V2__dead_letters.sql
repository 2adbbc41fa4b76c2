-- Dead letters, archived from the broker's dead-letter queue by the workers so operators can
-- list them (GET /debug/dead-letters) and re-publish them after a fix. The broker keeps the
-- at-least-once guarantee; the archive is idempotent by id, so a letter archived twice (crash
-- between insert and ack) still appears once.
CREATE TABLE dead_letters (
    -- sha256 of (origin queue, death time, body): one row per death of one message.
    id             text PRIMARY KEY,
    -- Shard queue the message died in, and the routing key it had there.
    queue          text NOT NULL,
    routing_key    text NOT NULL,
    -- Broker's reason (rejected: the worker found it unappliable; delivery_limit: it crashed
    -- consumers too often) and the decoder's verdict on the body.
    reason         text NOT NULL,
    detail         text NOT NULL,
    message_id     text,
    body           bytea NOT NULL,
    dead_at        timestamptz NOT NULL,
    archived_at    timestamptz NOT NULL DEFAULT now(),
    republished_at timestamptz
);
CREATE INDEX dead_letters_pending ON dead_letters (archived_at) WHERE republished_at IS NULL;
