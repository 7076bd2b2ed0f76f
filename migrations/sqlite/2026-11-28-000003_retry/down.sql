ALTER TABLE provisioning_log DROP COLUMN resolution;
ALTER TABLE provisioning_log DROP COLUMN request;
