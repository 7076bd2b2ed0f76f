//! Email: the messages people receive (templates), their MIME form
//! (message), and how they travel (transport: SMTP, Resend's HTTP API, or
//! `.eml` files).

pub mod message;
pub mod resend;
pub mod templates;
pub mod transport;

pub use message::Email;
pub use transport::{SendError, SmtpSecurity, Transport, hint};
