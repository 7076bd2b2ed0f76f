-- Everything scimsync's worker writes to apply one SCIM user create on
-- PostgreSQL (src/store/unnest.rs), as it writes it: one statement outside
-- a transaction, the user (its unique index is the userName check), its
-- email key, the invitation and the outbox row in WITH items, then the
-- provisioning_log row (its primary key is the idempotency check). The
-- worker binds each column as an array of the batch's rows; pgbench sends
-- one row. The gap between this and pgbench-create-user.sql is the cost
-- of the extra rows and indexes, not of round trips.
\set n random(1, 1000000000000000)
WITH users_written AS (
    INSERT INTO users (id, org_id, user_name, user_name_key, external_id, display_name,
        display_name_key, email, active, resource, version, created_at, updated_at)
    VALUES ('u' || :client_id || '-' || :n, :org, 'u' || :client_id || '-' || :n || '@example.com',
        'u' || :client_id || '-' || :n || '@example.com', 'ext-' || :client_id || '-' || :n,
        'Bench User', 'bench user', 'u' || :client_id || '-' || :n || '@example.com', true,
        translate('{"schemas"#["urn#ietf#params#scim#schemas#core#2.0#User"],"userName"#"bench@example.com","active"#true}', '#', chr(58)),
        1, now(), now())
), user_emails_written AS (
    INSERT INTO user_emails (user_id, org_id, value_key)
    VALUES ('u' || :client_id || '-' || :n, :org, 'u' || :client_id || '-' || :n || '@example.com')
), invitations_written AS (
    INSERT INTO invitations (id, org_id, user_id, token_hash, email, created_at, expires_at)
    VALUES (gen_random_uuid()::text, :org, 'u' || :client_id || '-' || :n, md5(random()::text) || md5(random()::text),
        'bench@example.com', now(), now() + interval '7 days')
), outbox_written AS (
    INSERT INTO outbox (id, org_id, kind, change_id, recipient, payload, state, attempts,
        next_attempt_at, created_at)
    VALUES (gen_random_uuid()::text, :org, 'welcome', 'c' || :client_id || '-' || :n, 'bench@example.com', '{}',
        'pending', 0, now(), now())
)
INSERT INTO provisioning_log (change_id, org_id, operation, resource_type, resource_id,
    subject, outcome, status, response, attempts, received_at, applied_at, duration_ms)
VALUES ('c' || :client_id || '-' || :n, :org, 'create', 'User', 'u' || :client_id || '-' || :n,
    'bench@example.com', 'applied', 201, translate('{"id"#"x"}', '#', chr(58)), 1, now(), now(), 1);
