//! Email: the messages (templates) and how they travel (transports).

pub mod templates;
pub mod transport;

pub use transport::{Email, SendError, Transport, hint};
