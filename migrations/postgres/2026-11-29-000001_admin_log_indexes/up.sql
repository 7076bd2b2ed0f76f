-- Indexes for the admin pages and the figures of `queue stats`, so they
-- stay fast on a large provisioning log:
-- time windows across organizations (counts by outcome, activity per
-- organization, the unfiltered log newest first), covered by the index;
CREATE INDEX provisioning_log_applied ON provisioning_log(applied_at, outcome, org_id);
-- the newest failures, an outcome filter, and unresolved dead changes;
CREATE INDEX provisioning_log_outcome ON provisioning_log(outcome, applied_at);
-- a user's entries by userName or by id, newest first (the resource
-- index gains applied_at: it serves everything the old one did).
CREATE INDEX provisioning_log_subject ON provisioning_log(org_id, subject, applied_at);
DROP INDEX provisioning_log_resource;
CREATE INDEX provisioning_log_resource ON provisioning_log(org_id, resource_id, applied_at);
