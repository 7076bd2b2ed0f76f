//! Operations shared by the CLI and (later) the admin pages; plain data in and out.

pub mod admin;
pub mod orgs;
pub mod queue;
pub mod tokens;
