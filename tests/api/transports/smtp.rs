//! SMTP through lettre to a real server on 127.0.0.1.

use std::time::Duration;

use scimsync::email::{SendError, Transport, hint};

use super::email;
use crate::smtp_sink::{SmtpSink, Stage};

async fn sink_and_transport() -> (SmtpSink, Transport) {
    let sink = SmtpSink::start().await.expect("sink starts");
    let transport = Transport::from_url(&sink.url()).expect("transport");
    (sink, transport)
}

#[tokio::test]
async fn message_arrives_with_envelope_message_id_and_both_parts() {
    let (sink, transport) = sink_and_transport().await;
    let e = email("Ada Lovelace <ada@example.com>");

    let said = transport.send(&e).await.expect("sent");

    assert!(said.starts_with("250 "), "{said}");
    let got = sink.messages();
    assert_eq!(got.len(), 1);
    let m = &got[0];
    assert_eq!(m.mail_from, "no-reply@example.com");
    assert_eq!(m.rcpt_to, ["ada@example.com"]);
    assert_eq!(m.header("Message-ID"), Some(format!("<{}@scimsync>", e.id)));
    assert_eq!(
        m.header("Subject").as_deref(),
        Some("You're invited to join Acme")
    );
    assert!(
        m.header("Content-Type")
            .is_some_and(|c| c.starts_with("multipart/alternative"))
    );
    assert!(m.data.contains("text/plain") && m.data.contains("text/html"));
    assert!(m.data.contains("inv_x"));
}

#[tokio::test]
async fn a_line_starting_with_a_dot_survives_the_trip() {
    let (sink, transport) = sink_and_transport().await;
    let mut e = email("ada@example.com");
    e.text = "first\n.leading dot\n..two dots\n".into();

    transport.send(&e).await.expect("sent");

    let data = &sink.messages()[0].data;
    assert!(
        data.contains("\r\n.leading dot\r\n..two dots\r\n"),
        "{data}"
    );
}

#[tokio::test]
async fn a_4xx_is_transient_and_the_next_attempt_succeeds() {
    let (sink, transport) = sink_and_transport().await;
    sink.script(Stage::RcptTo, "451 4.3.0 try later", 1);
    sink.script(Stage::EndOfData, "452 4.3.1 insufficient storage", 1);
    let e = email("ada@example.com");

    let first = transport.send(&e).await.expect_err("451");
    let second = transport.send(&e).await.expect_err("452");
    let third = transport.send(&e).await;

    assert!(first.is_transient(), "{first}");
    assert!(first.reason().contains("451 4.3.0 try later"), "{first}");
    assert!(
        second.is_transient() && second.reason().contains("452"),
        "{second}"
    );
    assert!(third.is_ok(), "{third:?}");
    assert_eq!(sink.messages().len(), 1);
}

#[tokio::test]
async fn a_5xx_is_permanent_with_the_servers_own_words() {
    let (sink, transport) = sink_and_transport().await;
    sink.script(Stage::RcptTo, "550 5.1.1 no such user here", 1);

    let err = transport
        .send(&email("nobody@example.com"))
        .await
        .expect_err("550");

    assert!(!err.is_transient(), "{err}");
    assert!(
        err.reason().contains("550 5.1.1 no such user here"),
        "{err}"
    );
    assert!(sink.messages().is_empty());
    assert!(hint(&err, &transport).is_some_and(|h| h.contains("does not exist")));
}

#[tokio::test]
async fn a_5xx_after_the_data_is_permanent() {
    let (sink, transport) = sink_and_transport().await;
    sink.script(Stage::EndOfData, "554 5.7.1 message rejected as spam", 1);

    let err = transport
        .send(&email("ada@example.com"))
        .await
        .expect_err("554");

    assert!(!err.is_transient());
    assert!(
        err.reason().contains("554 5.7.1 message rejected as spam"),
        "{err}"
    );
}

#[tokio::test]
async fn connection_refused_is_transient_with_a_hint() {
    let mut sink = SmtpSink::start().await.expect("sink");
    let port = sink.port();
    sink.stop().await;
    let transport = Transport::from_url(&format!("smtps://127.0.0.1:{port}")).expect("transport");

    let err = transport
        .send(&email("ada@example.com"))
        .await
        .expect_err("refused");

    assert!(err.is_transient(), "{err}");
    assert!(
        err.reason()
            .to_ascii_lowercase()
            .contains("connection refused"),
        "{err}"
    );
    let h = hint(&err, &transport).expect("a hint");
    assert!(
        h.contains("listening") && h.contains("587") && h.contains("465"),
        "{h}"
    );
}

#[tokio::test]
async fn implicit_tls_against_a_plain_server_is_transient_and_hints_at_starttls() {
    let sink = SmtpSink::start().await.expect("sink");
    let transport = Transport::from_url(&format!("smtps://{}", sink.addr())).expect("transport");

    let err = transport
        .send(&email("ada@example.com"))
        .await
        .expect_err("no TLS there");

    assert!(err.is_transient(), "{err}");
    let h = hint(&err, &transport).expect("a hint");
    assert!(
        h.contains("STARTTLS") && h.contains("smtp://127.0.0.1:587"),
        "{h}"
    );
    assert!(sink.messages().is_empty());
}

#[tokio::test]
async fn a_restarted_server_gets_the_next_message() {
    let (mut sink, transport) = sink_and_transport().await;
    transport
        .send(&email("a@example.com"))
        .await
        .expect("first");
    sink.stop().await;

    let down = transport
        .send(&email("b@example.com"))
        .await
        .expect_err("down");
    sink.restart().await.expect("restart");
    let up = transport.send(&email("c@example.com")).await;

    assert!(down.is_transient(), "{down}");
    assert!(up.is_ok(), "{up:?}");
    let to: Vec<String> = sink
        .messages()
        .iter()
        .flat_map(|m| m.rcpt_to.clone())
        .collect();
    assert_eq!(to, ["a@example.com", "c@example.com"]);
}

#[tokio::test]
async fn credentials_from_the_url_are_sent_decoded() {
    let sink = SmtpSink::start().await.expect("sink");
    let url = format!("smtp://mailer%40acme:p%40ss+word@{}?tls=none", sink.addr());
    let transport = Transport::from_url(&url).expect("transport");

    transport
        .send(&email("ada@example.com"))
        .await
        .expect("sent");

    let logins = sink.logins();
    assert_eq!(logins.len(), 1);
    assert_eq!(logins[0].user, "mailer@acme");
    assert_eq!(logins[0].password, "p@ss+word");
    assert_eq!(sink.messages()[0].user.as_deref(), Some("mailer@acme"));
}

#[tokio::test]
async fn a_refused_login_is_retried_and_hints_at_the_password() {
    let sink = SmtpSink::start().await.expect("sink");
    sink.script(
        Stage::Auth,
        "535 5.7.8 authentication credentials invalid",
        1,
    );
    let url = format!("smtp://u:wrong@{}?tls=none", sink.addr());
    let transport = Transport::from_url(&url).expect("transport");

    let err = transport
        .send(&email("ada@example.com"))
        .await
        .expect_err("535");

    assert!(
        err.is_transient(),
        "a login problem keeps the message: {err}"
    );
    assert!(err.reason().contains("535 5.7.8"), "{err}");
    assert!(!err.reason().contains("wrong"), "password leaked: {err}");
    let h = hint(&err, &transport).expect("a hint");
    assert!(h.contains("user name or password"), "{h}");
}

#[tokio::test]
async fn a_server_without_starttls_is_refused_when_tls_is_required() {
    let sink = SmtpSink::start().await.expect("sink");
    let transport = Transport::from_url(&format!("smtp://{}", sink.addr())).expect("transport");

    let err = transport
        .send(&email("ada@example.com"))
        .await
        .expect_err("no STARTTLS");

    assert!(err.is_transient(), "{err}");
    assert!(
        sink.messages().is_empty(),
        "nothing may travel in clear text"
    );
    assert!(hint(&err, &transport).is_some_and(|h| h.contains("smtps://")));
}

#[tokio::test]
async fn an_invalid_address_is_permanent_and_nothing_is_sent() {
    let (sink, transport) = sink_and_transport().await;

    let err = transport
        .send(&email("not an address"))
        .await
        .expect_err("invalid");

    assert!(matches!(err, SendError::Permanent { .. }), "{err}");
    assert_eq!(sink.connections(), 0);
}

#[tokio::test]
async fn line_breaks_in_the_subject_add_no_bcc() {
    let (sink, transport) = sink_and_transport().await;
    let mut e = email("ada@example.com");
    e.subject = "Welcome\r\nBcc: evil@example.com".into();

    transport.send(&e).await.expect("sent");

    let m = &sink.wait_for_messages(1, Duration::from_secs(5)).await[0];
    assert_eq!(m.rcpt_to, ["ada@example.com"]);
    assert_eq!(m.header("Bcc"), None);
    assert!(
        !m.data.to_ascii_lowercase().contains("\r\nbcc:"),
        "{}",
        m.data
    );
}

#[tokio::test]
async fn the_sink_speaks_plain_smtp_typed_by_hand() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let sink = SmtpSink::start().await.expect("sink");
    sink.script(Stage::MailFrom, "421 4.3.2 shutting down", 1);
    let stream = tokio::net::TcpStream::connect(sink.addr())
        .await
        .expect("connect");
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let greeting = lines.next_line().await.expect("greeting");
    assert!(greeting.is_some_and(|l| l.starts_with("220")));
    let mut say = async |line: &str| -> String {
        write
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .expect("write");
        lines.next_line().await.expect("read").unwrap_or_default()
    };

    let hello = say("HELO tester").await;
    let dropped = say("MAIL FROM:<a@example.com>").await;

    assert!(hello.starts_with("250"), "{hello}");
    assert!(dropped.starts_with("421"), "{dropped}");

    // A 421 closes the session; a new one works normally.
    let stream = tokio::net::TcpStream::connect(sink.addr())
        .await
        .expect("connect");
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    assert!(
        lines
            .next_line()
            .await
            .expect("greeting")
            .is_some_and(|l| l.starts_with("220"))
    );
    let session = "HELO tester\r\nMAIL FROM:<x@example.com>\r\nRCPT TO:<y@example.com>\r\nRSET\r\nNOOP\r\n\
        MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n\
        Subject: hi\r\n\r\n..dot\r\nbody\r\n.\r\nQUIT\r\n";
    write.write_all(session.as_bytes()).await.expect("write");
    let mut replies = Vec::new();
    while let Ok(Some(line)) = lines.next_line().await {
        replies.push(line);
    }

    let codes: Vec<&str> = replies.iter().map(|l| &l[..3]).collect();
    assert_eq!(
        codes,
        [
            "250", "250", "250", "250", "250", "250", "250", "354", "250", "221"
        ]
    );
    let got = sink.messages();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].mail_from, "a@example.com");
    assert_eq!(got[0].rcpt_to, ["b@example.com"]);
    assert_eq!(got[0].data, "Subject: hi\r\n\r\n.dot\r\nbody\r\n");
}
