DROP INDEX provisioning_log_resource;
CREATE INDEX provisioning_log_resource ON provisioning_log(org_id, resource_id);
DROP INDEX provisioning_log_subject;
DROP INDEX provisioning_log_outcome;
DROP INDEX provisioning_log_applied;
