DROP INDEX outbox_org_kind;
ALTER TABLE outbox DROP COLUMN locked_until;
ALTER TABLE organizations DROP COLUMN digest_through;
ALTER TABLE users DROP COLUMN joined_at;
DROP TABLE invitations;
