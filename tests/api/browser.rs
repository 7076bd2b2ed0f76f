//! The invitation page in a real headless browser (Chromium through
//! chromedriver's WebDriver protocol): open the link, accept, see the
//! confirmation; a used link shows the "already used" page.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{Backend, eventually, invitation_token, spawn_app};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
pub(crate) const CHROMIUM: &str = "/usr/bin/chromium";
/// WebDriver's key for an element reference (W3C WebDriver §12.1).
pub(crate) const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A chromedriver process, killed when dropped (also used by `admin.rs`).
pub(crate) struct Driver {
    child: Child,
    url: String,
    http: reqwest::Client,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    pub(crate) async fn start() -> Option<Driver> {
        if !std::path::Path::new(CHROMEDRIVER).exists() || !std::path::Path::new(CHROMIUM).exists()
        {
            assert!(
                std::env::var("CI").map_or(true, |v| v != "true"),
                "CI=true but Chromium or chromedriver is missing ({CHROMIUM}, {CHROMEDRIVER}); .ci/run installs them"
            );
            eprintln!("note: browser test skipped: install chromium and chromium-driver to run it");
            return None;
        }
        let port = crate::helpers::free_port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let driver = Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
        };
        eventually("chromedriver answers", || async {
            driver
                .http
                .get(format!("{}/status", driver.url))
                .send()
                .await
                .is_ok()
        })
        .await;
        Some(driver)
    }

    pub(crate) async fn call(
        &self,
        method: reqwest::Method,
        path: String,
        body: Option<Value>,
    ) -> Value {
        let mut req = self.http.request(method, format!("{}{path}", self.url));
        if let Some(body) = body {
            req = req.json(&body);
        }
        let reply: Value = req
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .expect("chromedriver reachable")
            .json()
            .await
            .expect("WebDriver JSON");
        assert!(
            reply["value"].get("error").is_none(),
            "WebDriver error on {path}: {reply}"
        );
        reply["value"].clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invitation_is_accepted_in_a_real_browser() {
    let Some(driver) = Driver::start().await else {
        return;
    };
    let app = spawn_app(Backend::Sqlite).await;
    app.create_user("browser@example.com").await;
    eventually("the welcome email is written", || async {
        !app.mails().is_empty()
    })
    .await;
    let token = invitation_token(&app.mails()[0]).expect("link in the email");
    let link = format!("{}/invitations/{token}", app.base_url());

    let profile = tempfile::tempdir().expect("profile dir");
    let session = driver
        .call(
            reqwest::Method::POST,
            "/session".to_owned(),
            Some(json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": CHROMIUM,
                    "args": [
                        "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                        "--disable-quic", "--no-first-run", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync",
                        format!("--user-data-dir={}", profile.path().display()),
                    ]
                }
            }}})),
        )
        .await;
    let sid = session["sessionId"]
        .as_str()
        .expect("session id")
        .to_owned();
    let go = |url: String| {
        driver.call(
            reqwest::Method::POST,
            format!("/session/{sid}/url"),
            Some(json!({"url": url})),
        )
    };
    let source = || driver.call(reqwest::Method::GET, format!("/session/{sid}/source"), None);

    go(link.clone()).await;
    let page = source().await.as_str().unwrap_or_default().to_owned();
    assert!(
        page.contains("browser@example.com"),
        "invitation page names the person: {page}"
    );
    assert!(page.contains("Acme"), "and the organization");

    let button = driver
        .call(
            reqwest::Method::POST,
            format!("/session/{sid}/element"),
            Some(json!({"using": "css selector", "value": "form button[type=submit]"})),
        )
        .await;
    let element = button[ELEMENT_KEY]
        .as_str()
        .expect("accept button")
        .to_owned();
    driver
        .call(
            reqwest::Method::POST,
            format!("/session/{sid}/element/{element}/click"),
            Some(json!({})),
        )
        .await;
    // The click returns once the form is submitted, not once the answer
    // has loaded; wait for the confirmation page (the invitation page
    // never says "You have joined", so this cannot pass early).
    let mut confirmed = String::new();
    for _ in 0..200 {
        confirmed = source().await.as_str().unwrap_or_default().to_owned();
        if confirmed.contains("You have joined") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        confirmed.contains("You have joined"),
        "confirmation after accepting: {confirmed}"
    );

    go(link).await;
    let used = source().await.as_str().unwrap_or_default().to_owned();
    assert!(used.contains("already used"), "a used link says so: {used}");
    driver
        .call(reqwest::Method::DELETE, format!("/session/{sid}"), None)
        .await;
}
