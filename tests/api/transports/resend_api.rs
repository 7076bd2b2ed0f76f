//! Resend's HTTP API, against a local stub that answers as Resend documents.

use std::time::Duration;

use scimsync::email::{SendError, Transport, hint};

use super::email;
use crate::http_stub::{HttpStub, Reply};

async fn stub_and_transport() -> (HttpStub, Transport) {
    let stub = HttpStub::start().await.expect("stub starts");
    let url = format!("resend+http://re_test_key@{}", stub.addr());
    let transport = Transport::from_url(&url).expect("transport");
    (stub, transport)
}

#[tokio::test]
async fn a_200_returns_resends_id_and_the_request_follows_the_docs() {
    let (stub, transport) = stub_and_transport().await;
    stub.push(Reply::json(
        200,
        r#"{"id":"49a3999c-0ce1-4ea6-ab68-afcd6dc2e794"}"#,
    ));
    let e = email("Ada <ada@example.com>");

    let said = transport.send(&e).await.expect("sent");

    assert_eq!(said, "Resend email id 49a3999c-0ce1-4ea6-ab68-afcd6dc2e794");
    let requests = stub.requests();
    assert_eq!(requests.len(), 1);
    let r = &requests[0];
    assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/emails"));
    assert_eq!(r.header("authorization"), Some("Bearer re_test_key"));
    assert_eq!(r.header("idempotency-key"), Some(e.id.as_str()));
    assert!(
        r.header("user-agent")
            .is_some_and(|ua| ua.starts_with("scimsync/"))
    );
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("application/json"))
    );
    let body = r.json();
    assert_eq!(body["from"], "scimsync <no-reply@example.com>");
    assert_eq!(body["to"], "ada@example.com");
    assert_eq!(body["subject"], e.subject);
    assert_eq!(body["text"], e.text);
    assert_eq!(body["html"], e.html);
    assert_eq!(body["headers"]["X-Entity-Ref-ID"], e.id);
}

#[tokio::test]
async fn a_422_is_permanent_with_resends_message() {
    let (stub, transport) = stub_and_transport().await;
    stub.push(Reply::json(
        422,
        r#"{"statusCode":422,"message":"Invalid `from` field. The email address needs to follow the `email@example.com` or `Name <email@example.com>` format.","name":"validation_error"}"#,
    ));

    let err = transport
        .send(&email("ada@example.com"))
        .await
        .expect_err("422");

    assert!(!err.is_transient(), "{err}");
    assert!(
        err.reason()
            .contains("422 validation_error: Invalid `from` field."),
        "{err}"
    );
    assert!(hint(&err, &transport).is_some_and(|h| h.contains("mail.from")));
}

#[tokio::test]
async fn a_429_is_transient_and_carries_retry_after() {
    let (stub, transport) = stub_and_transport().await;
    let limited = r#"{"statusCode":429,"message":"Too many requests. Please limit the number of requests per second.","name":"rate_limit_exceeded"}"#;
    stub.push(Reply::json(429, limited).with_header("retry-after", "7"));
    let in_a_minute = (chrono::Utc::now() + chrono::TimeDelta::seconds(60))
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string();
    stub.push(Reply::json(429, limited).with_header("Retry-After", &in_a_minute));

    let seconds = transport
        .send(&email("ada@example.com"))
        .await
        .expect_err("429");
    let date = transport
        .send(&email("ada@example.com"))
        .await
        .expect_err("429");

    match seconds {
        SendError::Transient {
            reason,
            retry_after,
        } => {
            assert_eq!(retry_after, Some(Duration::from_secs(7)));
            assert!(reason.contains("rate_limit_exceeded"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    match date {
        SendError::Transient {
            retry_after: Some(wait),
            ..
        } => {
            assert!(
                wait > Duration::from_secs(50) && wait <= Duration::from_secs(60),
                "{wait:?}"
            )
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_500_is_transient() {
    let (stub, transport) = stub_and_transport().await;
    stub.push(Reply::json(
        500,
        r#"{"statusCode":500,"message":"An unexpected error occurred.","name":"application_error"}"#,
    ));

    let err = transport
        .send(&email("ada@example.com"))
        .await
        .expect_err("500");

    assert!(err.is_transient(), "{err}");
    assert!(err.reason().contains("500 application_error"), "{err}");
    assert!(matches!(
        err,
        SendError::Transient {
            retry_after: None,
            ..
        }
    ));
}

#[tokio::test]
async fn a_malformed_2xx_is_retried_with_the_same_idempotency_key() {
    let (stub, transport) = stub_and_transport().await;
    stub.push(Reply::text(200, "<html>OK</html>"));
    let e = email("ada@example.com");

    let first = transport.send(&e).await.expect_err("malformed");
    let second = transport
        .send(&e)
        .await
        .expect("the retry gets the documented answer");

    assert!(first.is_transient(), "{first}");
    assert!(first.reason().contains("<html>OK</html>"), "{first}");
    assert!(second.starts_with("Resend email id "));
    let keys: Vec<Option<String>> = stub
        .requests()
        .iter()
        .map(|r| r.header("Idempotency-Key").map(str::to_owned))
        .collect();
    assert_eq!(keys, [Some(e.id.clone()), Some(e.id.clone())]);
}

#[tokio::test]
async fn a_refused_key_is_kept_for_a_retry_and_hints_at_the_key() {
    let (stub, transport) = stub_and_transport().await;
    stub.push(Reply::json(
        401,
        r#"{"statusCode":401,"message":"Missing API key in the authorization header.","name":"missing_api_key"}"#,
    ));

    let err = transport
        .send(&email("ada@example.com"))
        .await
        .expect_err("401");

    assert!(
        err.is_transient(),
        "the key's problem, not the message's: {err}"
    );
    assert!(!err.reason().contains("re_test_key"), "key leaked: {err}");
    assert!(hint(&err, &transport).is_some_and(|h| h.contains("API key")));
}

#[tokio::test]
async fn connection_refused_is_transient_with_a_hint() {
    let closed = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        l.local_addr().expect("addr")
    };
    let transport =
        Transport::from_url(&format!("resend+http://re_k@{closed}")).expect("transport");

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
    assert!(hint(&err, &transport).is_some_and(|h| h.contains("resend://")));
}

#[tokio::test]
async fn an_invalid_address_is_permanent_and_nothing_is_sent() {
    let (stub, transport) = stub_and_transport().await;

    let err = transport
        .send(&email("ada@@example.com"))
        .await
        .expect_err("invalid");

    assert!(!err.is_transient());
    assert!(stub.requests().is_empty());
}
