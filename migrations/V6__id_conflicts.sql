-- Conflicting reuses of a transaction id (issue 11 item 7). While a command is still queued,
-- the API cannot see it recorded, so a second command with the same id and another payload
-- is answered 200 too; the worker then finds the id recorded with another fingerprint and
-- does nothing for it. This table makes that visible: one row per (id, fingerprint), written
-- by the worker in the batch transaction that detected it, so a redelivery of the same
-- conflicting command adds nothing. GET /transactions/{id} lists them next to the record.
CREATE TABLE id_conflicts (
    id          text NOT NULL,
    -- The conflicting payload's fingerprint (never the recorded one's).
    fingerprint text NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('deposit', 'withdraw', 'withdraw_request')),
    account_id  text NOT NULL,
    amount      numeric NOT NULL CHECK (amount > 0),
    -- When the API accepted the conflicting command, and when the worker found it (the
    -- batch's time, the database's clock).
    accepted_at timestamptz NOT NULL,
    detected_at timestamptz NOT NULL,
    PRIMARY KEY (id, fingerprint)
);
