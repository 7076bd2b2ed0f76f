-- Every email value of every user, lower-cased, so that filters on
-- emails.value (Entra ID can match users by work email) run in SQL with an
-- index instead of scanning a tenant.
CREATE TABLE user_emails (
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    org_id TEXT NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    value_key TEXT NOT NULL,
    PRIMARY KEY (user_id, value_key)
);
CREATE INDEX user_emails_org_value ON user_emails(org_id, value_key);
