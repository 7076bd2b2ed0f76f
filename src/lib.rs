//! scimsync: a SCIM 2.0 provisioning target for Microsoft Entra ID.

/// The command line and what each command does.
pub mod cli;
/// Settings from defaults, an environment file and environment variables.
pub mod config;
/// Email: templates, transports (SMTP, HTTP API, files).
pub mod email;
/// HTTP: SCIM endpoints, auth, discovery, health.
pub mod http;
/// Jobs: the change job, queue backends, workers, retries, reply wake-up.
pub mod jobs;
/// `scimsync load`: an Entra ID provisioning-cycle simulator and its report.
pub mod load;
/// Operations shared by the CLI and admin pages: organizations, tokens.
pub mod ops;
/// Applying a change to the store in one transaction.
pub mod reconcile;
/// SCIM protocol alone: schemas, filters, PATCH, errors, rendering. No I/O.
pub mod scim;
/// Building and running the application.
pub mod startup;
/// The database: schema, queries, migrations, pools for both backends.
pub mod store;
/// Logging setup.
pub mod telemetry;
