-- The database's own ceiling for scimsync's write: one transaction that
-- inserts a user, its provisioning_log row and its outbox row, the
-- transaction issue 7 of the project defines as "one applied user create".
-- (pgbench reads a colon as a variable, so JSON literals spell it '#'.)
-- Run by bench/pgbench against a database migrated by `scimsync migrate`
-- with one organization whose id is passed as -D org=ID.
\set n random(1, 1000000000)
BEGIN;
INSERT INTO users (id, org_id, user_name, user_name_key, external_id, display_name,
    display_name_key, email, active, resource, version, created_at, updated_at)
VALUES (gen_random_uuid()::text, :org, 'u' || :client_id || '-' || :n || '@example.com',
    'u' || :client_id || '-' || :n || '@example.com', 'ext-' || :client_id || '-' || :n,
    'Bench User', 'bench user', 'u' || :client_id || '-' || :n || '@example.com', true,
    translate('{"schemas"#["urn#ietf#params#scim#schemas#core#2.0#User"],"userName"#"bench@example.com","active"#true}', '#', chr(58)),
    1, now(), now())
ON CONFLICT DO NOTHING;
INSERT INTO provisioning_log (change_id, org_id, operation, resource_type, resource_id,
    subject, outcome, status, response, attempts, received_at, applied_at, duration_ms)
VALUES (gen_random_uuid()::text, :org, 'create', 'User', gen_random_uuid()::text,
    'bench@example.com', 'applied', 201, translate('{"id"#"x"}', '#', chr(58)), 1, now(), now(), 1);
INSERT INTO outbox (id, org_id, kind, change_id, recipient, payload, state, attempts,
    next_attempt_at, created_at)
VALUES (gen_random_uuid()::text, :org, 'welcome', NULL, 'bench@example.com', '{}',
    'pending', 0, now(), now());
COMMIT;
