-- Organizations (tenants), their SCIM tokens, the users and teams Entra ID
-- provisions into them, the log of every change, and the mail outbox.
-- Types are the ones both backends share (TEXT ids and JSON, BIGINT, BOOLEAN,
-- TIMESTAMP in UTC) so that one schema.rs serves both.

CREATE TABLE organizations (
    id TEXT PRIMARY KEY,
    slug TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    notify_email TEXT,
    created_at TIMESTAMP NOT NULL
);

CREATE TABLE scim_tokens (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    -- SHA-256 of the token, hex; the token itself is never stored.
    token_hash TEXT NOT NULL UNIQUE,
    label TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL,
    last_used_at TIMESTAMP,
    revoked_at TIMESTAMP
);
CREATE INDEX scim_tokens_org ON scim_tokens(org_id);

CREATE TABLE users (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    user_name TEXT NOT NULL,
    -- Lower-cased userName: uniqueness and filters are case-insensitive (RFC 7643 caseExact=false).
    user_name_key TEXT NOT NULL,
    external_id TEXT,
    display_name TEXT,
    display_name_key TEXT,
    -- The deliverable address the product invites (primary, else work email, else userName).
    email TEXT,
    active BOOLEAN NOT NULL,
    -- The SCIM resource exactly as sent (without id and meta), as JSON.
    resource TEXT NOT NULL,
    version BIGINT NOT NULL,
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL
);
CREATE UNIQUE INDEX users_org_user_name ON users(org_id, user_name_key);
CREATE INDEX users_org_external_id ON users(org_id, external_id);
CREATE INDEX users_org_display_name ON users(org_id, display_name_key);
CREATE INDEX users_org_created ON users(org_id, created_at, id);

CREATE TABLE teams (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    display_name TEXT NOT NULL,
    -- Lower-cased displayName: teams are named by it, so it is unique per organization.
    display_name_key TEXT NOT NULL,
    external_id TEXT,
    resource TEXT NOT NULL,
    version BIGINT NOT NULL,
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL
);
CREATE UNIQUE INDEX teams_org_display_name ON teams(org_id, display_name_key);
CREATE INDEX teams_org_external_id ON teams(org_id, external_id);
CREATE INDEX teams_org_created ON teams(org_id, created_at, id);

-- One row per membership, so that concurrent PATCHes of one group each insert
-- or delete their own rows instead of rewriting a shared list.
CREATE TABLE team_members (
    team_id TEXT NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    org_id TEXT NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    created_at TIMESTAMP NOT NULL,
    PRIMARY KEY (team_id, user_id)
);
CREATE INDEX team_members_user ON team_members(user_id);

-- The committed outcome of every change: what Entra ID is answered with, and
-- the idempotency record that makes a redelivered change a no-op.
CREATE TABLE provisioning_log (
    change_id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    operation TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    resource_id TEXT,
    -- userName or displayName, for people reading the log.
    subject TEXT,
    -- applied | rejected | dead
    outcome TEXT NOT NULL,
    status INTEGER NOT NULL,
    -- The response body (JSON) sent to the client, if any.
    response TEXT,
    error TEXT,
    attempts INTEGER NOT NULL,
    received_at TIMESTAMP NOT NULL,
    applied_at TIMESTAMP NOT NULL,
    duration_ms BIGINT NOT NULL
);
CREATE INDEX provisioning_log_org_applied ON provisioning_log(org_id, applied_at);
CREATE INDEX provisioning_log_resource ON provisioning_log(org_id, resource_id);

-- Mail owed: written in the same transaction as the change that owes it.
CREATE TABLE outbox (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    change_id TEXT,
    recipient TEXT NOT NULL,
    payload TEXT NOT NULL,
    -- pending | sent | failed
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    last_error TEXT,
    next_attempt_at TIMESTAMP NOT NULL,
    sent_at TIMESTAMP,
    created_at TIMESTAMP NOT NULL
);
CREATE INDEX outbox_state_next ON outbox(state, next_attempt_at);
