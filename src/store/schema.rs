//! The one schema of both backends; `tests/api/schema.rs` checks each
//! migration set against it.

diesel::table! {
    organizations (id) {
        id -> Text,
        slug -> Text,
        name -> Text,
        notify_email -> Nullable<Text>,
        created_at -> Timestamp,
        digest_through -> Nullable<Timestamp>,
    }
}

diesel::table! {
    scim_tokens (id) {
        id -> Text,
        org_id -> Text,
        token_hash -> Text,
        label -> Text,
        created_at -> Timestamp,
        last_used_at -> Nullable<Timestamp>,
        revoked_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    users (id) {
        id -> Text,
        org_id -> Text,
        user_name -> Text,
        user_name_key -> Text,
        external_id -> Nullable<Text>,
        display_name -> Nullable<Text>,
        display_name_key -> Nullable<Text>,
        email -> Nullable<Text>,
        active -> Bool,
        resource -> Text,
        version -> BigInt,
        created_at -> Timestamp,
        updated_at -> Timestamp,
        joined_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    teams (id) {
        id -> Text,
        org_id -> Text,
        display_name -> Text,
        display_name_key -> Text,
        external_id -> Nullable<Text>,
        resource -> Text,
        version -> BigInt,
        created_at -> Timestamp,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    team_members (team_id, user_id) {
        team_id -> Text,
        user_id -> Text,
        org_id -> Text,
        created_at -> Timestamp,
    }
}

diesel::table! {
    provisioning_log (change_id) {
        change_id -> Text,
        org_id -> Text,
        operation -> Text,
        resource_type -> Text,
        resource_id -> Nullable<Text>,
        subject -> Nullable<Text>,
        outcome -> Text,
        status -> Integer,
        response -> Nullable<Text>,
        error -> Nullable<Text>,
        attempts -> Integer,
        received_at -> Timestamp,
        applied_at -> Timestamp,
        duration_ms -> BigInt,
        request -> Nullable<Text>,
        resolution -> Nullable<Text>,
    }
}

diesel::table! {
    outbox (id) {
        id -> Text,
        org_id -> Text,
        kind -> Text,
        change_id -> Nullable<Text>,
        recipient -> Text,
        payload -> Text,
        state -> Text,
        attempts -> Integer,
        last_error -> Nullable<Text>,
        next_attempt_at -> Timestamp,
        sent_at -> Nullable<Timestamp>,
        created_at -> Timestamp,
        locked_until -> Nullable<Timestamp>,
    }
}

diesel::table! {
    invitations (id) {
        id -> Text,
        org_id -> Text,
        user_id -> Text,
        token_hash -> Text,
        email -> Text,
        created_at -> Timestamp,
        expires_at -> Timestamp,
        used_at -> Nullable<Timestamp>,
        revoked_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    user_emails (user_id, value_key) {
        user_id -> Text,
        org_id -> Text,
        value_key -> Text,
    }
}

diesel::joinable!(scim_tokens -> organizations (org_id));
diesel::joinable!(user_emails -> users (user_id));
diesel::joinable!(users -> organizations (org_id));
diesel::joinable!(teams -> organizations (org_id));
diesel::joinable!(team_members -> teams (team_id));
diesel::joinable!(team_members -> users (user_id));
diesel::joinable!(provisioning_log -> organizations (org_id));
diesel::joinable!(outbox -> organizations (org_id));
diesel::joinable!(invitations -> users (user_id));

diesel::allow_tables_to_appear_in_same_query!(
    organizations,
    scim_tokens,
    users,
    teams,
    team_members,
    provisioning_log,
    outbox,
    invitations,
    user_emails,
);
