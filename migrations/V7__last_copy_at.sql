-- The latest copy of an approved withdraw_request the worker answered "approved" to. A client
-- that got 503 outcome_unknown retries with the same id; the retry's copy of an approved
-- request is answered "approved" (201). A void sent by the earlier attempt may still reach the
-- queue after that (delayed in the network, or republished from the dead letters): it must
-- not deny an approval a later attempt answered. A void denies an approval only if it is not
-- older than this copy (its `acceptedAt`, the time of the attempt that sent it). NULL: the
-- copy that decided the record (`accepted_at`). Nullable without a default: no table rewrite.
ALTER TABLE transactions ADD COLUMN last_copy_at timestamptz;
