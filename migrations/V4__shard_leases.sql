-- Shard ownership by lease (issue: workers share shards). One row per shard, created when the
-- shard count is recorded. `epoch` grows by one at every change of owner and is the fencing
-- token: every batch transaction locks its shard's row (FOR SHARE) and checks owner and epoch,
-- so a worker that lost its lease (paused, partitioned) can never commit again, and a
-- takeover waits for a batch in progress to commit.
CREATE TABLE shard_leases (
    shard      integer PRIMARY KEY,
    owner      text,
    epoch      bigint NOT NULL DEFAULT 0,
    expires_at timestamptz NOT NULL DEFAULT '-infinity'
);

-- Live workers, by heartbeat: each worker aims at ceil(K / live workers) shards.
CREATE TABLE workers (
    id           text PRIMARY KEY,
    heartbeat_at timestamptz NOT NULL
);
