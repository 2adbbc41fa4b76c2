-- Delivered and superseded webhook deliveries are pruned after webhooks.retention_hours
-- (tally_store::webhooks::prune, run by the workers' senders). This partial index lets each
-- prune find the oldest finished rows without reading the whole table; failed rows are kept
-- for the operator and pending ones are still to be sent.
CREATE INDEX webhook_deliveries_finished ON webhook_deliveries (finished_at)
    WHERE status IN ('sent', 'superseded');
