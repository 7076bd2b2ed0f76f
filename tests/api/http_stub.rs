//! A tiny HTTP/1.1 server for tests of the HTTP mail transport, written on
//! `tokio::net::TcpListener`.
//!
//! Each request gets the next scripted reply (status, headers, body), or
//! the default reply when none is left; every request is recorded (method,
//! path, headers, body). One request per connection, answered with
//! `Connection: close`, so a client never reuses a socket the stub is about
//! to close. Bodies must come with `Content-Length` (reqwest's `.json()`
//! sends one); chunked requests are answered 411.
//!
//! Self-contained (tokio, serde_json and std) so any test binary can include
//! it with `#[path = "…/http_stub.rs"] mod http_stub;`.

// Each test binary uses a different part of this helper.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// One scripted answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    /// A reply with a JSON body (`body` is sent as written, valid or not).
    pub fn json(status: u16, body: &str) -> Reply {
        Reply {
            status,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: body.to_owned(),
        }
    }

    /// A reply with a plain-text body.
    pub fn text(status: u16, body: &str) -> Reply {
        Reply {
            status,
            headers: vec![("Content-Type".into(), "text/plain".into())],
            body: body.to_owned(),
        }
    }

    /// Adds a header, e.g. `Retry-After`.
    pub fn with_header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }
}

/// One request the stub received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The request target as sent, e.g. `/emails`.
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    /// The first header called `name`, compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON, or `Null` when it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

struct State {
    replies: VecDeque<Reply>,
    default: Reply,
    requests: Vec<Request>,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The server; stops when dropped.
pub struct HttpStub {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
}

/// Largest request head read; the stub answers 431 past it.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Largest request body read; the stub answers 413 past it.
const MAX_BODY_BYTES: usize = 10 * 1024 * 1024;

impl HttpStub {
    /// Starts on 127.0.0.1 with a port chosen by the system. Until scripted,
    /// every request is answered `200 {"id": "00000000-0000-4000-8000-000000000000"}`,
    /// the shape of Resend's success answer.
    pub async fn start() -> std::io::Result<HttpStub> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State {
            replies: VecDeque::new(),
            default: Reply::json(200, r#"{"id":"00000000-0000-4000-8000-000000000000"}"#),
            requests: Vec::new(),
        }));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(handle(stream, shared.clone()));
            }
        });
        Ok(HttpStub { addr, state, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Answers the next request that has no earlier scripted reply with `reply`.
    pub fn push(&self, reply: Reply) {
        lock(&self.state).replies.push_back(reply);
    }

    /// The answer once the scripted replies are used up.
    pub fn set_default(&self, reply: Reply) {
        lock(&self.state).default = reply;
    }

    /// The requests received so far, oldest first.
    pub fn requests(&self) -> Vec<Request> {
        lock(&self.state).requests.clone()
    }
}

impl Drop for HttpStub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Stub",
    }
}

async fn handle(mut stream: TcpStream, state: Arc<Mutex<State>>) {
    // Errors only end this connection; the test sees the effect on its client.
    let reply = match read_request(&mut stream).await {
        Ok(Ok(request)) => {
            let mut st = lock(&state);
            st.requests.push(request);
            let default = st.default.clone();
            st.replies.pop_front().unwrap_or(default)
        }
        Ok(Err(refusal)) => refusal,
        Err(_) => return,
    };
    let _ = write_reply(&mut stream, &reply).await;
}

/// Reads one request; Ok(Err(reply)) when it cannot be taken.
async fn read_request(stream: &mut TcpStream) -> std::io::Result<Result<Request, Reply>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > MAX_HEAD_BYTES {
            return Ok(Err(Reply::text(431, "request head too large")));
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap_or_default().split_whitespace();
    let method = request_line.next().unwrap_or_default().to_owned();
    let path = request_line.next().unwrap_or_default().to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    if header("transfer-encoding").is_some() {
        return Ok(Err(Reply::text(411, "send a Content-Length")));
    }
    let length: usize = match header("content-length").map(|v| v.parse()) {
        None => 0,
        Some(Ok(n)) if n <= MAX_BODY_BYTES => n,
        Some(Ok(_)) => return Ok(Err(Reply::text(413, "body too large"))),
        Some(Err(_)) => return Ok(Err(Reply::text(400, "bad Content-Length"))),
    };
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(length);
    Ok(Ok(Request {
        method,
        path,
        headers,
        body,
    }))
}

async fn write_reply(stream: &mut TcpStream, reply: &Reply) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Length: {}\r\nConnection: close\r\n",
        reply.status,
        reason_phrase(reply.status),
        reply.body.len()
    );
    for (name, value) in &reply.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(reply.body.as_bytes()).await?;
    stream.flush().await?;
    stream.shutdown().await
}
