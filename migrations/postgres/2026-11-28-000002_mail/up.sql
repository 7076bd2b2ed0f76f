-- Welcome invitations, the joined state of users, the failure-digest
-- watermark of each organization, and the outbox lease that marks a mail
-- as being sent.

CREATE TABLE invitations (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    -- SHA-256 of the single-use token, hex; the link carries the token.
    token_hash TEXT NOT NULL UNIQUE,
    email TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL,
    expires_at TIMESTAMP NOT NULL,
    used_at TIMESTAMP,
    revoked_at TIMESTAMP
);
CREATE INDEX invitations_user ON invitations(user_id);

-- When the person accepted an invitation; NULL until then.
ALTER TABLE users ADD COLUMN joined_at TIMESTAMP;

-- Failures logged up to this time have been reported in a digest.
ALTER TABLE organizations ADD COLUMN digest_through TIMESTAMP;

-- While a worker sends a row (state 'sending'), the time after which the
-- reconciler may take it back, should that worker have died.
ALTER TABLE outbox ADD COLUMN locked_until TIMESTAMP;
CREATE INDEX outbox_org_kind ON outbox(org_id, kind);
