mod auth;
mod delivery;
mod groups;
mod helpers;
mod protocol;
mod schema_drift;
mod users;
