//! Faults injected for real: processes killed with SIGKILL in the middle of
//! a stream of changes. What must hold: every change answered 2xx is in the
//! database exactly once; the rest either apply later or were answered
//! with an error. Each test prints its figures (RELIABILITY.md quotes them).

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use scimsync::startup::Role;
use tokio::sync::Mutex;

use crate::helpers::{Backend, eventually, spawn_with, test_env, user_body};

/// A child process killed (SIGKILL) when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn scimsync(args: &[&str], env: &[(&str, String)], dir: &std::path::Path) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_scimsync"));
    cmd.args(args)
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    Proc(cmd.spawn().expect("scimsync starts"))
}

/// The token a first start leaves in the data directory under `dir`
/// (standard output is not a terminal here, so it is not printed).
async fn first_token(dir: &std::path::Path) -> String {
    let file = dir.join("data").join("first-scim-token");
    // Complete once it ends with its newline.
    let written = || std::fs::read_to_string(&file).unwrap_or_default();
    eventually("the first token is written", || async {
        written().ends_with('\n')
    })
    .await;
    written().trim_end().to_owned()
}

/// Sends creates `{prefix}{i}@example.com` until `n` of them are
/// acknowledged: after an outage, the service takes writes again.
async fn acknowledged_again(app: &crate::helpers::TestApp, prefix: &str, n: usize) {
    let acknowledged = std::sync::atomic::AtomicUsize::new(0);
    eventually("writes are acknowledged again", || async {
        let i = acknowledged.load(std::sync::atomic::Ordering::SeqCst);
        let name = format!("{prefix}{i}@example.com");
        if app.post("/Users", user_body(&name)).await.status == StatusCode::CREATED {
            acknowledged.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        acknowledged.load(std::sync::atomic::Ordering::SeqCst) >= n
    })
    .await;
}

/// Outcome of one request of the stream.
#[derive(Debug, Default)]
struct Tally {
    acknowledged: Vec<String>,
    /// 409 on a retry after the connection was cut: the cut attempt had
    /// committed, so the user exists (checked like an acknowledged one).
    applied_before_cut: Vec<String>,
    refused: Vec<String>,
    unexpected: Vec<String>,
}

/// Sends `n` user creates, `concurrency` at a time, recording the outcome of each.
async fn stream(
    client: reqwest::Client,
    url: String,
    token: String,
    prefix: &'static str,
    n: usize,
    tally: Arc<Mutex<Tally>>,
) {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let (client, url, token, tally, next) = (
            client.clone(),
            url.clone(),
            token.clone(),
            tally.clone(),
            next.clone(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if i >= n {
                    return;
                }
                let name = format!("{prefix}{i}@example.com");
                // Like Entra ID, send again when the connection fails.
                let mut cut = false;
                let mut outcome = None;
                for _ in 0..150 {
                    let sent = client
                        .post(format!("{url}/Users"))
                        .bearer_auth(&token)
                        .timeout(Duration::from_secs(40))
                        .body(user_body(&name).to_string())
                        .send()
                        .await;
                    match sent {
                        Ok(r) => {
                            outcome = Some(r.status());
                            break;
                        }
                        Err(_) => {
                            cut = true;
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                }
                let mut t = tally.lock().await;
                match outcome {
                    Some(StatusCode::CREATED) => t.acknowledged.push(name),
                    Some(StatusCode::CONFLICT) if cut => t.applied_before_cut.push(name),
                    Some(StatusCode::SERVICE_UNAVAILABLE) => t.refused.push(name),
                    other => t.unexpected.push(format!("{name}: {other:?}")),
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// Which of `names` exist, and whether any exists twice.
async fn present(app: &crate::helpers::TestApp, names: &[String]) -> (HashSet<String>, usize) {
    let mut found = HashSet::new();
    let mut duplicates = 0;
    for name in names {
        let reply = app
            .get(&format!(
                "/Users?filter=userName%20eq%20%22{}%22",
                name.replace('@', "%40")
            ))
            .await;
        match reply.body["totalResults"].as_i64() {
            Some(1) => {
                found.insert(name.clone());
            }
            Some(0) => {}
            _ => duplicates += 1,
        }
    }
    (found, duplicates)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_killed_mid_stream_loses_no_acknowledged_change() {
    if !crate::helpers::postgres_redis_enabled() {
        return;
    }
    let mut env = test_env(Backend::PostgresRedis);
    env.settings.server.request_deadline_secs = 10;
    let app = spawn_with(env, Role::Web).await;
    let worker_env = vec![
        ("DATABASE_URL", app.settings.database.url.clone()),
        ("REDIS_URL", app.settings.queue.url.clone()),
        ("SCIMSYNC_QUEUE__NAME", app.settings.queue.name.clone()),
        ("SCIMSYNC_QUEUE__POLL_INTERVAL_MS", "50".to_owned()),
    ];
    let dir = tempfile::tempdir().expect("dir");
    let first = scimsync(&["work"], &worker_env, dir.path());
    let tally = Arc::new(Mutex::new(Tally::default()));
    let n = 120;
    let sender = tokio::spawn(stream(
        app.client.clone(),
        app.scim.clone(),
        app.token.clone(),
        "killed",
        n,
        tally.clone(),
    ));
    eventually("a third of the stream is acknowledged", || async {
        tally.lock().await.acknowledged.len() >= n / 3
    })
    .await;
    drop(first); // SIGKILL, mid-stream
    let _second = scimsync(&["work"], &worker_env, dir.path());
    sender.await.expect("stream");
    let t = tally.lock().await;
    assert!(t.unexpected.is_empty(), "{:?}", t.unexpected);
    let (acked, dup) = present(&app, &t.acknowledged).await;
    assert_eq!(dup, 0, "no change applied twice");
    assert_eq!(
        acked.len(),
        t.acknowledged.len(),
        "every acknowledged change is there"
    );
    // Changes the killed worker held return to the queue and apply later.
    let refused = t.refused.clone();
    eventually("the killed worker's changes apply", || async {
        present(&app, &refused).await.0.len() == refused.len()
    })
    .await;
    let late = refused.len();
    println!(
        "faults/worker SIGKILL (PostgreSQL + Redis): sent {n}, acknowledged {}, answered 503 {}, applied later {late}, lost 0, duplicated 0",
        t.acknowledged.len(),
        t.refused.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_run_killed_mid_stream_loses_no_acknowledged_change() {
    let dir = tempfile::tempdir().expect("dir");
    let port = crate::helpers::free_port();
    let env = vec![("PORT", port.to_string())];
    let first = scimsync(&["run"], &env, dir.path());
    let token = first_token(dir.path()).await;
    let url = format!("http://127.0.0.1:{port}/scim/v2");
    let client = reqwest::Client::new();
    eventually("the service answers", || async {
        client
            .get(format!("http://127.0.0.1:{port}/healthz"))
            .send()
            .await
            .is_ok()
    })
    .await;
    let tally = Arc::new(Mutex::new(Tally::default()));
    let n = 150;
    let sender = tokio::spawn(stream(
        client.clone(),
        url.clone(),
        token.clone(),
        "crash",
        n,
        tally.clone(),
    ));
    eventually("a third of the stream is acknowledged", || async {
        tally.lock().await.acknowledged.len() >= n / 3
    })
    .await;
    drop(first); // SIGKILL the whole embedded service
    let _second = scimsync(&["run"], &env, dir.path());
    eventually("the restarted service answers", || async {
        client
            .get(format!("http://127.0.0.1:{port}/healthz"))
            .send()
            .await
            .is_ok()
    })
    .await;
    sender.await.expect("stream");
    let t = tally.lock().await;
    assert!(t.unexpected.is_empty(), "{:?}", t.unexpected);
    let mut found = 0;
    for name in t.acknowledged.iter().chain(&t.applied_before_cut) {
        let reply = client
            .get(format!(
                "{url}/Users?filter=userName%20eq%20%22{}%22",
                name.replace('@', "%40")
            ))
            .bearer_auth(&token)
            .send()
            .await
            .expect("query");
        let body: serde_json::Value = reply.json().await.expect("json");
        assert_eq!(
            body["totalResults"], 1,
            "{name} was acknowledged, so it must be there exactly once"
        );
        found += 1;
    }
    println!(
        "faults/embedded SIGKILL (SQLite): sent {n}, acknowledged {}, applied before a cut connection (409 on resend) {}, answered 503 {}, present exactly once {found}, lost 0, duplicated 0",
        t.acknowledged.len(),
        t.applied_before_cut.len(),
        t.refused.len()
    );
}

/// A private redis-server on its own port, so restarting it disturbs no
/// other test.
struct PrivateRedis {
    port: u16,
    dir: tempfile::TempDir,
    proc: Option<Proc>,
}

impl PrivateRedis {
    fn start() -> Option<PrivateRedis> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .ok()?
            .port();
        let mut redis = PrivateRedis {
            port,
            dir: tempfile::tempdir().ok()?,
            proc: None,
        };
        redis.up().then_some(redis)
    }

    fn up(&mut self) -> bool {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .current_dir(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        match child {
            Ok(c) => {
                self.proc = Some(Proc(c));
                for _ in 0..100 {
                    if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                        return true;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                false
            }
            Err(_) => false,
        }
    }

    fn down(&mut self) {
        self.proc = None;
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_is_ridden_out_and_acknowledged_changes_stay() {
    if !crate::helpers::postgres_redis_enabled() {
        return;
    }
    let Some(mut redis) = PrivateRedis::start() else {
        panic!("redis-server could not be started for the restart test");
    };
    let mut env = test_env(Backend::PostgresRedis);
    env.settings.queue.url = redis.url();
    env.settings.server.request_deadline_secs = 5;
    let app = spawn_with(env, Role::All).await;
    for i in 0..10 {
        app.create_user(&format!("before{i}@example.com")).await;
    }
    redis.down();
    // While Redis is gone, writes are refused with 503 and Retry-After,
    // never acknowledged, never a 500.
    let during = app.post("/Users", user_body("during@example.com")).await;
    assert_eq!(
        during.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{:?}",
        during.body
    );
    assert!(during.header("retry-after").is_some());
    assert!(redis.up(), "redis restarts");
    // The workers reconnect by themselves.
    acknowledged_again(&app, "after", 5).await;
    let names: Vec<String> = (0..10)
        .map(|i| format!("before{i}@example.com"))
        .chain((0..5).map(|i| format!("after{i}@example.com")))
        .collect();
    let (found, dup) = present(&app, &names).await;
    assert_eq!((found.len(), dup), (15, 0));
    println!(
        "faults/Redis restart (PostgreSQL + Redis): acknowledged before 10, during the outage 0 (503), after 5; lost 0, duplicated 0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_outage_backs_off_and_delivers_once() {
    let mut sink = crate::smtp_sink::SmtpSink::start().await.expect("sink");
    let mut env = test_env(Backend::Sqlite);
    env.settings.mail.url = sink.url();
    let app = spawn_with(env, Role::All).await;
    sink.stop().await;
    app.create_user("patient@example.com").await;
    let org = app.org_id().await;
    let attempts = || {
        let org = org.clone();
        let store = app.store.clone();
        async move {
            store
                .run(move |c| {
                    scimsync::store::outbox::for_org(c, &org).map_err(scimsync::store::Error::from)
                })
                .await
                .expect("outbox")
                .into_iter()
                .find(|r| r.kind == "welcome")
                .map(|r| (r.attempts, r.state))
        }
    };
    // Claiming counts an attempt before it is made: wait until one is
    // back to pending, i.e. has failed, before the server returns.
    eventually("a send fails while the server is down", || async {
        attempts()
            .await
            .is_some_and(|(n, state)| n >= 1 && state == "pending")
    })
    .await;
    sink.restart().await.expect("restart");
    eventually("the welcome is delivered", || async {
        sink.messages().len() == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sink.messages().len(), 1, "delivered once");
    let (n, state) = attempts().await.expect("row");
    assert_eq!(state, "sent");
    assert!(n >= 2, "at least one failed attempt, then success: {n}");
    println!("faults/SMTP outage (SQLite): attempts {n}, delivered 1, duplicated 0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_work_and_exits_cleanly() {
    let dir = tempfile::tempdir().expect("dir");
    let port = crate::helpers::free_port();
    let mut service = scimsync(&["run"], &[("PORT", port.to_string())], dir.path());
    let token = first_token(dir.path()).await;
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/scim/v2/Users");
    eventually("the service answers", || async {
        client
            .get(format!("http://127.0.0.1:{port}/healthz"))
            .send()
            .await
            .is_ok()
    })
    .await;
    // Writes in flight when the signal arrives still get their answers.
    let mut in_flight = Vec::new();
    for i in 0..10 {
        let (client, url, token) = (client.clone(), url.clone(), token.clone());
        in_flight.push(tokio::spawn(async move {
            client
                .post(url)
                .bearer_auth(token)
                .body(user_body(&format!("term{i}@example.com")).to_string())
                .send()
                .await
                .map(|r| r.status())
        }));
    }
    let pid = service.0.id().to_string();
    let signalled = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(signalled.success());
    let mut answered = 0;
    for t in in_flight {
        // Sent before the signal: answered; sent after: refused at connect.
        if let Ok(status) = t.await.expect("task") {
            assert_eq!(
                status,
                StatusCode::CREATED,
                "workers outlive the web server's in-flight requests"
            );
            answered += 1;
        }
    }
    let started = std::time::Instant::now();
    let exit = tokio::task::spawn_blocking(move || {
        let status = service.0.wait();
        (service, status)
    })
    .await
    .expect("wait");
    let status = exit.1.expect("exit status");
    assert!(status.success(), "clean exit on SIGTERM: {status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(35),
        "within the grace period"
    );
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "no longer accepting"
    );
    println!(
        "faults/SIGTERM (SQLite): in flight 10, answered {answered}, exited cleanly in {:?}",
        started.elapsed()
    );
}

/// A PostgreSQL cluster of the test's own, so stopping it disturbs no
/// other test. PostgreSQL refuses to run as root: it runs as `postgres`.
struct PrivatePostgres {
    dir: tempfile::TempDir,
    port: u16,
    bin: std::path::PathBuf,
}

impl PrivatePostgres {
    fn start() -> Option<PrivatePostgres> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(Result::ok)
            .map(|e| e.path().join("bin"))
            .find(|p| p.join("initdb").exists())?;
        let dir = tempfile::tempdir().ok()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .ok()?
            .port();
        Command::new("chown")
            .arg("postgres")
            .arg(dir.path())
            .status()
            .ok()?;
        let pg = PrivatePostgres { dir, port, bin };
        let data = pg.dir.path().join("data");
        let ok = pg
            .as_postgres(&[
                pg.bin.join("initdb").to_str()?,
                "-D",
                data.to_str()?,
                "-A",
                "trust",
                "-U",
                "postgres",
            ])
            .success();
        (ok && pg.up()).then_some(pg)
    }

    fn as_postgres(&self, args: &[&str]) -> std::process::ExitStatus {
        Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap_or_else(|e| panic!("runuser: {e}"))
    }

    fn pg_ctl(&self, action: &[&str]) -> bool {
        let data = self.dir.path().join("data");
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("log");
        let mut args = vec![
            self.bin.join("pg_ctl").to_string_lossy().into_owned(),
            "-D".into(),
            data.to_string_lossy().into_owned(),
            "-o".into(),
            opts,
            "-l".into(),
            log.to_string_lossy().into_owned(),
            "-w".into(),
        ];
        args.extend(action.iter().map(|a| (*a).to_owned()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        self.as_postgres(&refs).success()
    }

    fn up(&self) -> bool {
        self.pg_ctl(&["start"])
    }

    fn down(&self) -> bool {
        self.pg_ctl(&["-m", "immediate", "stop"])
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        self.down();
    }
}

/// A private PostgreSQL cluster, and test storage on it with Redis; None
/// when the PostgreSQL + Redis suite is not enabled.
fn on_private_postgres() -> Option<(PrivatePostgres, crate::helpers::TestEnv)> {
    if !crate::helpers::postgres_redis_enabled() {
        return None;
    }
    let Some(pg) = PrivatePostgres::start() else {
        panic!("a private PostgreSQL cluster could not be started (initdb/pg_ctl as postgres)");
    };
    let mut env = test_env(Backend::PostgresRedis);
    env.settings.database.url = pg.url();
    Some((pg, env))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_answers_503_and_changes_resume() {
    let Some((pg, mut env)) = on_private_postgres() else {
        return;
    };
    env.settings.database.connect_timeout_secs = 2;
    env.settings.server.request_deadline_secs = 5;
    let app = spawn_with(env, Role::All).await;
    for i in 0..5 {
        app.create_user(&format!("pgbefore{i}@example.com")).await;
    }
    assert!(pg.down(), "PostgreSQL stops");
    let started = std::time::Instant::now();
    let during = app.post("/Users", user_body("pgduring@example.com")).await;
    assert_eq!(
        during.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{:?}",
        during.body
    );
    assert!(during.header("retry-after").is_some());
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "answered, not hung"
    );
    assert!(pg.up(), "PostgreSQL starts again");
    acknowledged_again(&app, "pgafter", 5).await;
    let names: Vec<String> = (0..5)
        .map(|i| format!("pgbefore{i}@example.com"))
        .chain((0..5).map(|i| format!("pgafter{i}@example.com")))
        .collect();
    let (found, dup) = present(&app, &names).await;
    assert_eq!((found.len(), dup), (10, 0));
    println!(
        "faults/PostgreSQL outage: acknowledged before 5, during 0 (503 in {:?}), after 5; lost 0, duplicated 0",
        started.elapsed()
    );
}

/// The last delivery of a change fails while PostgreSQL is down, so the
/// change cannot even be recorded dead then. It must still end up in the
/// provisioning log once the database is back: the queue's dead set is no
/// place an operator looks, and `queue retry` works from the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_dying_in_a_postgres_outage_is_recorded_dead_once_it_is_back() {
    let Some((pg, mut env)) = on_private_postgres() else {
        return;
    };
    env.settings.database.connect_timeout_secs = 1;
    env.settings.server.request_deadline_secs = 1;
    env.settings.queue.max_deliveries = 1;
    env.settings.retry.max_elapsed_ms = 300;
    env.settings.retry.max_interval_ms = 200;
    // Web only, so the change waits in the queue until PostgreSQL is down.
    let app = spawn_with(env, Role::Web).await;
    let queued = app.post("/Users", user_body("outage@example.com")).await;
    assert_eq!(queued.status, StatusCode::SERVICE_UNAVAILABLE);
    let worker = scimsync::startup::Application::build(app.settings.clone(), Role::Worker, false)
        .await
        .expect("worker builds");
    assert!(pg.down(), "PostgreSQL stops");
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(worker.run_until(stop.clone()));
    // Its one delivery fails and spends its retries in the outage.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(pg.up(), "PostgreSQL starts again");
    let org = app.org_id().await;
    eventually("the dead change is in the provisioning log", || {
        let (store, org) = (app.store.clone(), org.clone());
        async move {
            store
                .run(move |c| {
                    scimsync::store::log::recent(c, &org, 5).map_err(scimsync::store::Error::from)
                })
                .await
                .is_ok_and(|rows| {
                    rows.iter().any(|r| {
                        r.outcome == "dead" && r.subject.as_deref() == Some("outage@example.com")
                    })
                })
        }
    })
    .await;
    stop.cancel();
}
