//! SCIM 2.0 protocol layer (RFC 7643 / RFC 7644) as Microsoft Entra ID
//! speaks it: schemas, filters, PATCH, resource validation and errors.
//! Pure functions over `serde_json::Value`; no I/O.

// Parsers here face untrusted input from the network and must never panic.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        clippy::string_slice,
        clippy::unreachable,
        clippy::todo,
        clippy::unimplemented
    )
)]

pub mod body;
pub mod error;
pub mod filter;
pub mod patch;
pub mod render;
pub mod resource;
pub mod schema;

pub use schema::ResourceKind;
