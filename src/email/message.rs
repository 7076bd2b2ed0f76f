//! One message as the outbox hands it over, and its MIME form.
//!
//! Everything that ends up in a header (addresses, subject, id) is flattened
//! to one line here, before lettre sees it: lettre encodes header values, but
//! a value that never contains a line break cannot start a new header whatever
//! an encoder does.

use lettre::Message;
use lettre::message::header::{Header, HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart};

use super::transport::SendError;

/// One message ready to send; `id` is the outbox row id, used as the
/// Message-ID (`<{id}@scimsync>`), as the `.eml` file name and as the HTTP
/// provider's idempotency key, so that a resend of the same row is recognisable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email {
    /// The outbox row id: ASCII letters, digits, `-` and `_`, at most 128 characters.
    pub id: String,
    /// `Name <address>` or a bare address.
    pub from: String,
    /// `Name <address>` or a bare address.
    pub to: String,
    pub subject: String,
    /// The plain-text alternative.
    pub text: String,
    /// The HTML alternative.
    pub html: String,
}

/// The longest outbox id accepted. Resend takes idempotency keys of up to 256
/// characters; file names and Message-IDs are happier well below that.
const MAX_ID_LEN: usize = 128;

/// One line of text: line breaks and every other control character become
/// spaces, then the ends are trimmed. Used for header values and for the
/// single-line fields of the plain-text templates.
pub fn one_line(s: &str) -> String {
    s.chars()
        // U+2028/U+2029 are not control characters, but some clients break lines on them.
        .map(|c| {
            if c.is_control() || c == '\u{2028}' || c == '\u{2029}' {
                ' '
            } else {
                c
            }
        })
        .collect::<String>()
        .trim()
        .to_owned()
}

/// The Message-ID for an outbox id.
pub fn message_id(id: &str) -> String {
    format!("<{id}@scimsync>")
}

/// Checks that `id` can be a file name, the left part of a Message-ID and an
/// idempotency key as it is. Ids are refused rather than cleaned: two ids
/// that clean to the same text would share a file and a key.
pub(crate) fn check_id(id: &str) -> Result<&str, SendError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(id)
    } else {
        Err(SendError::permanent(format!(
            "the message id {:?} is not usable: it must be 1 to {MAX_ID_LEN} ASCII letters, digits, '-' or '_'",
            one_line(id)
        )))
    }
}

/// Parses a From or To value (`role` names it in the error) as one mailbox.
pub(crate) fn mailbox(role: &str, raw: &str) -> Result<Mailbox, SendError> {
    let flat = one_line(raw);
    flat.parse::<Mailbox>()
        .map_err(|e| SendError::permanent(format!("the {role} address {flat:?} is not valid: {e}")))
}

/// `Auto-Submitted: auto-generated` (RFC 3834): tells vacation responders
/// and mailing lists that no person wrote this, so they do not answer the
/// no-reply sender.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AutoSubmitted;

impl Header for AutoSubmitted {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("Auto-Submitted")
    }

    fn parse(_: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(AutoSubmitted)
    }

    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), "auto-generated".to_owned())
    }
}

/// The MIME message: a multipart/alternative of the text and HTML parts,
/// with the Message-ID taken from the outbox id. A bad address or id is a
/// permanent failure: sending the same row again cannot fix it.
pub(crate) fn build_message(email: &Email) -> Result<Message, SendError> {
    let id = check_id(&email.id)?;
    let from = mailbox("sender", &email.from)?;
    let to = mailbox("recipient", &email.to)?;
    Message::builder()
        .from(from)
        .to(to)
        .subject(one_line(&email.subject))
        .message_id(Some(message_id(id)))
        .header(AutoSubmitted)
        .multipart(MultiPart::alternative_plain_html(
            email.text.clone(),
            email.html.clone(),
        ))
        .map_err(|e| SendError::permanent(format!("cannot build the message: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn email() -> Email {
        Email {
            id: "01JABCDEF0123456789XYZ".into(),
            from: "scimsync <no-reply@example.com>".into(),
            to: "Ada Lovelace <ada@example.com>".into(),
            subject: "Welcome".into(),
            text: "Hello\n".into(),
            html: "<p>Hello</p>".into(),
        }
    }

    fn raw(email: &Email) -> String {
        let message = build_message(email).expect("message builds");
        String::from_utf8(message.formatted()).expect("lettre writes ASCII")
    }

    /// The header lines of a formatted message, unfolded, lower-cased.
    fn header_names(raw: &str) -> Vec<String> {
        let head = raw.split("\r\n\r\n").next().unwrap_or_default();
        head.split("\r\n")
            .filter(|l| !l.starts_with(' ') && !l.starts_with('\t'))
            .filter_map(|l| l.split_once(':').map(|(n, _)| n.to_ascii_lowercase()))
            .collect()
    }

    #[test]
    fn message_has_the_outbox_id_as_message_id_and_both_alternatives() {
        let raw = raw(&email());
        assert!(
            raw.contains("Message-ID: <01JABCDEF0123456789XYZ@scimsync>"),
            "{raw}"
        );
        assert!(raw.contains("multipart/alternative"), "{raw}");
        assert!(
            raw.contains("text/plain") && raw.contains("text/html"),
            "{raw}"
        );
        assert!(raw.contains("Auto-Submitted: auto-generated"), "{raw}");
        assert!(raw.contains("Date: "), "{raw}");
    }

    #[test]
    fn line_breaks_in_the_subject_cannot_add_a_bcc_header() {
        let mut e = email();
        e.subject = "Hi\r\nBcc: evil@example.com".into();
        let raw = raw(&e);
        assert!(!header_names(&raw).contains(&"bcc".to_owned()), "{raw}");
        assert!(!raw.to_ascii_lowercase().contains("\r\nbcc:"), "{raw}");
        // Flattened by us, not only encoded by lettre.
        assert!(
            raw.contains("Subject: Hi  Bcc: evil@example.com\r\n"),
            "{raw}"
        );
        let envelope = build_message(&e).expect("builds");
        assert_eq!(envelope.envelope().to().len(), 1);
    }

    #[test]
    fn line_breaks_in_a_display_name_cannot_add_a_bcc_header() {
        let mut e = email();
        e.to = "Eve\r\nBcc: evil@example.com\r\n <eve@example.com>".into();
        e.from = "Ops\nBcc: evil@example.com <ops@example.com>".into();
        match build_message(&e) {
            Ok(message) => {
                let raw = String::from_utf8(message.formatted()).expect("ascii");
                assert!(!header_names(&raw).contains(&"bcc".to_owned()), "{raw}");
                let to: Vec<String> = message
                    .envelope()
                    .to()
                    .iter()
                    .map(ToString::to_string)
                    .collect();
                assert_eq!(to, ["eve@example.com"]);
            }
            // Refusing the address is as good as neutralising it.
            Err(err) => assert!(!err.is_transient(), "{err}"),
        }
    }

    #[test]
    fn line_breaks_after_an_address_make_it_invalid() {
        let mut e = email();
        e.to = "ada@example.com\r\nBcc: evil@example.com".into();
        let err = build_message(&e).expect_err("refused");
        assert!(!err.is_transient());
        assert!(err.reason().contains("recipient address"), "{err}");
    }

    #[test]
    fn invalid_addresses_are_permanent_failures() {
        for bad in ["", "not an address", "ada@@example.com", "<>"] {
            let mut e = email();
            e.to = bad.into();
            let err = build_message(&e).expect_err(bad);
            assert!(!err.is_transient(), "{bad}: {err}");
        }
    }

    #[test]
    fn ids_that_are_not_plain_tokens_are_refused() {
        for bad in [
            "",
            "../etc/passwd",
            "a b",
            "x\r\nBcc: y",
            "é",
            &"x".repeat(129),
        ] {
            assert!(check_id(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["01JABCDEF0123456789XYZ", "0b5e-4c1a_x", &"x".repeat(128)] {
            assert!(check_id(good).is_ok(), "{good:?} refused");
        }
    }

    #[test]
    fn one_line_replaces_every_line_break() {
        assert_eq!(one_line(" a\r\nb\nc\rd\u{2028}e\u{85}f\t "), "a  b c d e f");
    }

    #[test]
    fn non_ascii_names_and_subjects_are_encoded() {
        let mut e = email();
        e.to = "Zoë Ångström <zoe@example.com>".into();
        e.subject = "Willkommen bei Müller & Söhne".into();
        let raw = raw(&e);
        assert!(raw.is_ascii());
        assert!(raw.contains("=?utf-8?"), "{raw}");
    }
}
