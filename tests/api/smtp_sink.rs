//! A real SMTP server for tests, on 127.0.0.1 over TCP, written on tokio.
//!
//! It speaks enough of RFC 5321 for lettre and for hand-typed sessions:
//! EHLO/HELO, AUTH PLAIN and LOGIN (any user and password are accepted and
//! recorded), MAIL FROM, RCPT TO, DATA with dot-unstuffing, RSET, NOOP and
//! QUIT. No TLS: point clients at it with `smtp://127.0.0.1:PORT?tls=none`.
//!
//! It records each accepted message (envelope and raw data) and can be
//! scripted to answer the next N arrivals at a stage with a given reply,
//! e.g. `451 4.3.0 try later` at RCPT TO or `550 5.1.1 no such user` after
//! the data. It can be stopped (the port then refuses connections, and open
//! sessions are cut) and started again on the same port.
//!
//! Self-contained (tokio and std only) so any test binary can include it
//! with `#[path = "…/smtp_sink.rs"] mod smtp_sink;`.

// Each test binary uses a different part of this helper.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// Where in a session a scripted reply replaces the normal one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The greeting on connect (a 4xx/5xx greeting is followed by a close).
    Connect,
    /// The answer to EHLO or HELO.
    Hello,
    /// The answer to a complete AUTH exchange (e.g. `535 5.7.8 bad credentials`).
    Auth,
    /// The answer to MAIL FROM.
    MailFrom,
    /// The answer to RCPT TO.
    RcptTo,
    /// The answer to the DATA command, instead of `354`.
    Data,
    /// The answer after the final `.`, instead of `250`: the message is not kept.
    EndOfData,
}

/// One message the sink accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The EHLO/HELO argument.
    pub hello: String,
    /// The user of a successful AUTH, if any.
    pub user: Option<String>,
    /// The MAIL FROM path, without angle brackets.
    pub mail_from: String,
    /// The accepted RCPT TO paths, without angle brackets.
    pub rcpt_to: Vec<String>,
    /// The message as transmitted after dot-unstuffing, CRLF line ends kept,
    /// without the final `.` line.
    pub data: String,
}

impl Received {
    /// A header's value, unfolded, from the top-level header block.
    pub fn header(&self, name: &str) -> Option<String> {
        let head = self.data.split("\r\n\r\n").next().unwrap_or_default();
        let mut found: Option<String> = None;
        for line in head.split("\r\n") {
            if line.starts_with(' ') || line.starts_with('\t') {
                if let Some(v) = found.as_mut() {
                    v.push(' ');
                    v.push_str(line.trim());
                }
                continue;
            }
            if found.is_some() {
                break;
            }
            if let Some((n, v)) = line.split_once(':')
                && n.eq_ignore_ascii_case(name)
            {
                found = Some(v.trim().to_owned());
            }
        }
        found
    }
}

/// A login the sink saw (any is accepted unless `Stage::Auth` is scripted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Login {
    pub mechanism: String,
    pub user: String,
    pub password: String,
}

struct Rule {
    stage: Stage,
    reply: String,
    remaining: usize,
}

#[derive(Default)]
struct State {
    received: Vec<Received>,
    logins: Vec<Login>,
    commands: Vec<String>,
    rules: Vec<Rule>,
    connections: usize,
}

/// The scripted reply for `stage`, consuming one use of it.
fn scripted(state: &Mutex<State>, stage: Stage) -> Option<String> {
    let mut s = lock(state);
    let rule = s
        .rules
        .iter_mut()
        .find(|r| r.stage == stage && r.remaining > 0)?;
    rule.remaining -= 1;
    Some(rule.reply.clone())
}

/// Locks the state; a test that panicked while holding it leaves it usable.
fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

struct Running {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// The SMTP server; stops when dropped.
pub struct SmtpSink {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    running: Option<Running>,
}

/// Biggest message kept; past it the sink answers 552, as real servers do.
const MAX_MESSAGE_BYTES: usize = 10 * 1024 * 1024;
/// Longest command line read (RFC 5321 allows 512 octets; leave room).
const MAX_LINE_BYTES: usize = 8 * 1024;

impl SmtpSink {
    /// Starts on 127.0.0.1 with a port chosen by the system.
    pub async fn start() -> std::io::Result<SmtpSink> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State::default()));
        let running = Some(serve(listener, state.clone()));
        Ok(SmtpSink {
            addr,
            state,
            running,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `smtp://127.0.0.1:PORT?tls=none`, for `Transport::from_url`.
    pub fn url(&self) -> String {
        format!("smtp://{}?tls=none", self.addr)
    }

    /// Answers the next `times` arrivals at `stage` with `reply` (a full
    /// reply line such as `451 4.3.0 try later`). Rules for one stage are
    /// used in the order they were added.
    pub fn script(&self, stage: Stage, reply: &str, times: usize) {
        lock(&self.state).rules.push(Rule {
            stage,
            reply: reply.to_owned(),
            remaining: times,
        });
    }

    /// The messages accepted so far, oldest first.
    pub fn messages(&self) -> Vec<Received> {
        lock(&self.state).received.clone()
    }

    /// The logins seen so far.
    pub fn logins(&self) -> Vec<Login> {
        lock(&self.state).logins.clone()
    }

    /// Every command line received (AUTH payloads included), oldest first.
    pub fn commands(&self) -> Vec<String> {
        lock(&self.state).commands.clone()
    }

    /// How many connections were accepted since the start.
    pub fn connections(&self) -> usize {
        lock(&self.state).connections
    }

    /// Waits until at least `n` messages arrived, or `within` passed;
    /// returns what arrived either way.
    pub async fn wait_for_messages(&self, n: usize, within: Duration) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let got = self.messages();
            if got.len() >= n || tokio::time::Instant::now() >= deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops listening and cuts every open session. Connections to the port
    /// are refused until [`SmtpSink::restart`].
    pub async fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            let _ = running.stop.send(true);
            let _ = running.task.await;
        }
    }

    /// Listens again on the same port, keeping what was recorded and scripted.
    pub async fn restart(&mut self) -> std::io::Result<()> {
        self.stop().await;
        // tokio sets SO_REUSEADDR on listeners, so the port is free again at
        // once even with the old sessions in TIME_WAIT.
        let listener = TcpListener::bind(self.addr).await?;
        self.running = Some(serve(listener, self.state.clone()));
        Ok(())
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            let _ = running.stop.send(true);
            running.task.abort();
        }
    }
}

fn serve(listener: TcpListener, state: Arc<Mutex<State>>) -> Running {
    let (stop, mut stopped) = watch::channel(false);
    let task = tokio::spawn(async move {
        let mut sessions = JoinSet::new();
        loop {
            tokio::select! {
                _ = stopped.changed() => break,
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    lock(&state).connections += 1;
                    sessions.spawn(session(stream, state.clone()));
                }
                // Reap finished sessions so the set does not grow.
                Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            }
        }
        drop(listener);
        // Aborting drops each session's socket, which closes it.
        sessions.shutdown().await;
    });
    Running { stop, task }
}

/// Reads one line (up to `max` bytes, LF-terminated); None at end of stream.
async fn read_line<R: AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
    max: usize,
) -> std::io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    loop {
        let buf = reader.fill_buf().await?;
        if buf.is_empty() {
            return Ok((!line.is_empty()).then_some(line));
        }
        let (take, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        line.extend_from_slice(&buf[..take]);
        reader.consume(take);
        if done || line.len() > max {
            return Ok(Some(line));
        }
    }
}

fn trim_eol(line: &[u8]) -> String {
    let end = line
        .iter()
        .rposition(|&b| b != b'\r' && b != b'\n')
        .map_or(0, |i| i + 1);
    String::from_utf8_lossy(&line[..end]).into_owned()
}

/// The path inside `<…>` after `FROM:` or `TO:`, parameters dropped.
fn path_of(arg: &str) -> String {
    let after = arg.split_once(':').map_or(arg, |(_, rest)| rest).trim();
    match (after.find('<'), after.find('>')) {
        (Some(a), Some(b)) if a < b => after[a + 1..b].to_owned(),
        _ => after
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned(),
    }
}

/// Decodes standard base64 (padding optional); None if malformed.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        match c {
            b'A'..=b'Z' => Some(u32::from(c - b'A')),
            b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
            b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    };
    let clean: Vec<u8> = s.trim().bytes().filter(|&b| b != b'=').collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for chunk in clean.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= value(c)? << (18 - 6 * i);
        }
        let bytes = acc.to_be_bytes();
        match chunk.len() {
            4 => out.extend_from_slice(&bytes[1..4]),
            3 => out.extend_from_slice(&bytes[1..3]),
            2 => out.push(bytes[1]),
            _ => return None,
        }
    }
    Some(out)
}

/// `authzid \0 authcid \0 password` → (user, password).
fn plain_credentials(b64: &str) -> Option<(String, String)> {
    let raw = base64_decode(b64)?;
    let mut parts = raw.split(|&b| b == 0);
    let _authzid = parts.next()?;
    let user = String::from_utf8_lossy(parts.next()?).into_owned();
    let password = String::from_utf8_lossy(parts.next()?).into_owned();
    Some((user, password))
}

struct Session {
    hello: String,
    user: Option<String>,
    mail_from: Option<String>,
    rcpt_to: Vec<String>,
}

impl Session {
    fn reset(&mut self) {
        self.mail_from = None;
        self.rcpt_to.clear();
    }
}

async fn session(stream: TcpStream, state: Arc<Mutex<State>>) {
    // Errors only end the session; the test sees the effect on its client.
    let _ = run_session(stream, &state).await;
}

/// Writes one reply (possibly several lines joined by CRLF).
async fn say(write: &mut OwnedWriteHalf, text: &str) -> std::io::Result<()> {
    write.write_all(format!("{text}\r\n").as_bytes()).await
}

/// Writes an intermediate reply and reads the client's next line; None
/// when the client went away.
async fn ask(
    write: &mut OwnedWriteHalf,
    reader: &mut BufReader<OwnedReadHalf>,
    prompt: &str,
) -> std::io::Result<Option<String>> {
    say(write, prompt).await?;
    Ok(read_line(reader, MAX_LINE_BYTES)
        .await?
        .map(|l| trim_eol(&l)))
}

async fn run_session(stream: TcpStream, state: &Mutex<State>) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut s = Session {
        hello: String::new(),
        user: None,
        mail_from: None,
        rcpt_to: Vec::new(),
    };

    let greeting = scripted(state, Stage::Connect)
        .unwrap_or_else(|| "220 scimsync-sink ESMTP ready".to_owned());
    say(&mut write, &greeting).await?;
    if !greeting.starts_with('2') {
        return Ok(());
    }

    loop {
        let Some(raw) = read_line(&mut reader, MAX_LINE_BYTES).await? else {
            return Ok(());
        };
        if raw.len() > MAX_LINE_BYTES {
            say(&mut write, "500 5.5.6 line too long").await?;
            continue;
        }
        let line = trim_eol(&raw);
        lock(state).commands.push(line.clone());
        let (verb, arg) = match line.split_once(' ') {
            Some((v, a)) => (v.to_ascii_uppercase(), a.trim().to_owned()),
            None => (line.to_ascii_uppercase(), String::new()),
        };
        let answer = match verb.as_str() {
            "EHLO" | "HELO" => {
                s.hello = arg;
                s.reset();
                let normal = if verb == "EHLO" {
                    "250-scimsync-sink greets you\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n\
                     250-ENHANCEDSTATUSCODES\r\n250-AUTH PLAIN LOGIN\r\n250 SIZE 10485760"
                } else {
                    "250 scimsync-sink greets you"
                };
                scripted(state, Stage::Hello).unwrap_or_else(|| normal.to_owned())
            }
            "AUTH" => auth(&mut write, &mut reader, state, &mut s, &arg).await?,
            "MAIL" if s.mail_from.is_some() => "503 5.5.1 MAIL already given".to_owned(),
            "MAIL" => scripted(state, Stage::MailFrom).unwrap_or_else(|| {
                s.mail_from = Some(path_of(&arg));
                "250 2.1.0 sender ok".to_owned()
            }),
            "RCPT" if s.mail_from.is_none() => "503 5.5.1 need MAIL first".to_owned(),
            "RCPT" => scripted(state, Stage::RcptTo).unwrap_or_else(|| {
                s.rcpt_to.push(path_of(&arg));
                "250 2.1.5 recipient ok".to_owned()
            }),
            "DATA" if s.rcpt_to.is_empty() => "503 5.5.1 need RCPT first".to_owned(),
            "DATA" => match scripted(state, Stage::Data) {
                Some(r) => {
                    s.reset();
                    r
                }
                None => {
                    let Some(answer) = data(&mut write, &mut reader, state, &mut s).await? else {
                        return Ok(());
                    };
                    answer
                }
            },
            "RSET" => {
                s.reset();
                "250 2.0.0 ok".to_owned()
            }
            "NOOP" => "250 2.0.0 ok".to_owned(),
            "QUIT" => "221 2.0.0 bye".to_owned(),
            "STARTTLS" => "454 4.7.0 TLS not available".to_owned(),
            _ => "502 5.5.2 command not recognized".to_owned(),
        };
        say(&mut write, &answer).await?;
        // After QUIT, and after a 421 (RFC 5321 §3.8), the server closes.
        if verb == "QUIT" || answer.starts_with("421") {
            return Ok(());
        }
    }
}

/// Runs an AUTH exchange and returns the final answer.
async fn auth(
    write: &mut OwnedWriteHalf,
    reader: &mut BufReader<OwnedReadHalf>,
    state: &Mutex<State>,
    s: &mut Session,
    arg: &str,
) -> std::io::Result<String> {
    let mut words = arg.split_whitespace();
    let mechanism = words.next().unwrap_or_default().to_ascii_uppercase();
    let initial = words.next().map(str::to_owned);
    let credentials = match mechanism.as_str() {
        "PLAIN" => {
            let payload = match initial {
                Some(p) => Some(p),
                None => ask(write, reader, "334 ").await?,
            };
            payload.as_deref().and_then(plain_credentials)
        }
        "LOGIN" => {
            let user = match initial {
                Some(u) => Some(u),
                // "Username:" in base64.
                None => ask(write, reader, "334 VXNlcm5hbWU6").await?,
            };
            // "Password:" in base64.
            let password = ask(write, reader, "334 UGFzc3dvcmQ6").await?;
            let decode = |v: Option<String>| {
                v.as_deref()
                    .and_then(base64_decode)
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
            };
            decode(user).zip(decode(password))
        }
        _ => return Ok("504 5.5.4 unrecognized authentication type".to_owned()),
    };
    let Some((user, password)) = credentials else {
        return Ok("501 5.5.2 cannot decode the credentials".to_owned());
    };
    lock(state).logins.push(Login {
        mechanism,
        user: user.clone(),
        password,
    });
    Ok(scripted(state, Stage::Auth).unwrap_or_else(|| {
        s.user = Some(user);
        "235 2.7.0 authentication successful".to_owned()
    }))
}

/// Reads the message after DATA and returns the final answer; None when the
/// client went away mid-message.
async fn data(
    write: &mut OwnedWriteHalf,
    reader: &mut BufReader<OwnedReadHalf>,
    state: &Mutex<State>,
    s: &mut Session,
) -> std::io::Result<Option<String>> {
    say(write, "354 end data with <CR><LF>.<CR><LF>").await?;
    let mut data = Vec::new();
    let mut too_big = false;
    loop {
        let Some(line) = read_line(reader, MAX_MESSAGE_BYTES).await? else {
            return Ok(None);
        };
        if line == b".\r\n" || line == b".\n" {
            break;
        }
        // Dot-unstuffing (RFC 5321 §4.5.2).
        let line = line.strip_prefix(b".").unwrap_or(&line);
        if data.len() + line.len() > MAX_MESSAGE_BYTES {
            too_big = true;
        } else {
            data.extend_from_slice(line);
        }
    }
    let mail_from = s.mail_from.take().unwrap_or_default();
    let rcpt_to = std::mem::take(&mut s.rcpt_to);
    if too_big {
        return Ok(Some("552 5.3.4 message too big".to_owned()));
    }
    if let Some(r) = scripted(state, Stage::EndOfData) {
        return Ok(Some(r));
    }
    let mut st = lock(state);
    st.received.push(Received {
        hello: s.hello.clone(),
        user: s.user.clone(),
        mail_from,
        rcpt_to,
        data: String::from_utf8_lossy(&data).into_owned(),
    });
    Ok(Some(format!(
        "250 2.0.0 ok: queued as SINK{}",
        st.received.len()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_the_auth_payloads() {
        assert_eq!(
            base64_decode("VXNlcm5hbWU6").as_deref(),
            Some(&b"Username:"[..])
        );
        assert_eq!(
            plain_credentials("AHVzZXIAcGFzcw=="),
            Some(("user".to_owned(), "pass".to_owned()))
        );
        assert_eq!(base64_decode("!!"), None);
    }

    #[test]
    fn paths_lose_brackets_and_parameters() {
        assert_eq!(
            path_of("FROM:<a@example.com> BODY=8BITMIME"),
            "a@example.com"
        );
        assert_eq!(path_of("TO: <b@example.com>"), "b@example.com");
        assert_eq!(path_of("FROM:<>"), "");
    }
}
