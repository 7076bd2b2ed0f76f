//! The transports against real servers on this machine: lettre to an SMTP
//! sink, reqwest to an HTTP stub standing in for Resend, and `.eml` files.

mod file;
mod resend_api;
mod smtp;

use scimsync::email::Email;

/// A message as the outbox would hand it over, with a fresh id.
pub fn email(to: &str) -> Email {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Email {
        id: format!("01JTEST{}X{n}", std::process::id()),
        from: "scimsync <no-reply@example.com>".into(),
        to: to.into(),
        subject: "You're invited to join Acme".into(),
        text: "Hello Ada,\n\nOpen https://scim.example.com/invitations/inv_x to accept.\n".into(),
        html: "<p>Hello Ada,</p><p><a href=\"https://scim.example.com/invitations/inv_x\">Accept</a></p>".into(),
    }
}
