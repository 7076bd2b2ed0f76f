DROP TABLE outbox;
DROP TABLE provisioning_log;
DROP TABLE team_members;
DROP TABLE teams;
DROP TABLE users;
DROP TABLE scim_tokens;
DROP TABLE organizations;
