//! A real SMTP server on loopback for the tests: it speaks the protocol
//! over TCP (RFC 5321: EHLO/HELO, MAIL, RCPT, DATA with dot-unstuffing,
//! RSET, NOOP, QUIT), keeps what it accepts, and can be told to answer the
//! next transactions with a failure.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// One accepted message.
#[derive(Debug, Clone)]
pub struct Received {
    pub from: String,
    pub to: Vec<String>,
    pub data: String,
}

#[derive(Default)]
struct State {
    messages: Vec<Received>,
    /// Replies to give at the end of DATA instead of 250, one per transaction.
    failures: VecDeque<String>,
    transactions: usize,
}

pub struct SmtpSink {
    pub port: u16,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SmtpSink {
    pub async fn start() -> SmtpSink {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(session(socket, shared.clone()));
            }
        });
        SmtpSink { port, state, task }
    }

    /// `SCIMSYNC_MAIL_URL` for this server (plain text on loopback).
    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}?tls=none", self.port)
    }

    /// Answers the next transaction with `reply` (e.g. "451 4.3.0 try later").
    pub fn fail_next(&self, reply: &str) {
        if let Ok(mut s) = self.state.lock() {
            s.failures.push_back(reply.to_owned());
        }
    }

    pub fn messages(&self) -> Vec<Received> {
        self.state
            .lock()
            .map(|s| s.messages.clone())
            .unwrap_or_default()
    }

    /// Transactions that reached the end of DATA, accepted or not.
    pub fn transactions(&self) -> usize {
        self.state.lock().map(|s| s.transactions).unwrap_or(0)
    }

    pub fn messages_to(&self, address: &str) -> Vec<Received> {
        self.messages()
            .into_iter()
            .filter(|m| m.to.iter().any(|t| t.eq_ignore_ascii_case(address)))
            .collect()
    }
}

fn address(arg: &str) -> String {
    let start = arg.find('<').map_or(0, |i| i + 1);
    let end = arg.rfind('>').unwrap_or(arg.len());
    arg.get(start..end).unwrap_or_default().to_owned()
}

async fn session(socket: tokio::net::TcpStream, state: Arc<Mutex<State>>) {
    let (read, mut write) = socket.into_split();
    let mut lines = BufReader::new(read).lines();
    let mut from = String::new();
    let mut to = Vec::new();
    if write
        .write_all(b"220 sink.example.com ESMTP test sink\r\n")
        .await
        .is_err()
    {
        return;
    }
    while let Ok(Some(line)) = lines.next_line().await {
        let upper = line.to_ascii_uppercase();
        let reply = if upper.starts_with("EHLO") {
            "250-sink.example.com\r\n250 8BITMIME".to_owned()
        } else if upper.starts_with("HELO") {
            "250 sink.example.com".to_owned()
        } else if upper.starts_with("MAIL FROM:") {
            from = address(&line[10..]);
            to.clear();
            "250 2.1.0 OK".to_owned()
        } else if upper.starts_with("RCPT TO:") {
            to.push(address(&line[8..]));
            "250 2.1.5 OK".to_owned()
        } else if upper == "DATA" {
            if write
                .write_all(b"354 end with <CRLF>.<CRLF>\r\n")
                .await
                .is_err()
            {
                return;
            }
            let mut data = String::new();
            while let Ok(Some(l)) = lines.next_line().await {
                if l == "." {
                    break;
                }
                let l = l.strip_prefix('.').map_or(l.as_str(), |rest| rest);
                data.push_str(l);
                data.push('\n');
            }
            let mut s = match state.lock() {
                Ok(s) => s,
                Err(_) => return,
            };
            s.transactions += 1;
            match s.failures.pop_front() {
                Some(failure) => failure,
                None => {
                    s.messages.push(Received {
                        from: from.clone(),
                        to: to.clone(),
                        data,
                    });
                    "250 2.0.0 queued as sink".to_owned()
                }
            }
        } else if upper.starts_with("RSET") {
            to.clear();
            "250 2.0.0 OK".to_owned()
        } else if upper.starts_with("NOOP") {
            "250 2.0.0 OK".to_owned()
        } else if upper.starts_with("QUIT") {
            let _ = write.write_all(b"221 2.0.0 bye\r\n").await;
            return;
        } else {
            "502 5.5.2 command not recognized".to_owned()
        };
        if write
            .write_all(format!("{reply}\r\n").as_bytes())
            .await
            .is_err()
        {
            return;
        }
    }
}
