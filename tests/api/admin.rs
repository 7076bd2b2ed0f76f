//! The admin pages: off without a password, a login for every page, CSRF
//! tokens on every form, escaped Entra ID data, and in a real browser: log
//! in, see a dead change, retry it, see it applied.

use reqwest::StatusCode;
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use scimsync::startup::{Application, Role};
use scimsync::store::{self, log};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::helpers::{Backend, TestApp, eventually, spawn_with, test_env, user_body};
use crate::on_both_backends;

on_both_backends!(
    admin_pages_are_off_without_a_password,
    every_admin_page_needs_a_login,
    wrong_password_is_refused_without_a_session,
    guessing_is_held_to_ten_wrong_passwords_a_minute,
    forms_without_the_csrf_token_change_nothing,
    dead_change_retried_from_its_page_is_applied,
    entra_data_is_shown_escaped_in_lookup_and_log,
);

const PASSWORD: &str = "correct horse battery staple";

/// A web process with the admin pages on, sharing the test app's database
/// and queue (the test app's workers apply what it queues).
struct AdminSite {
    url: String,
    /// Follows no redirects, so tests see each 303.
    http: reqwest::Client,
    stop: CancellationToken,
}

impl Drop for AdminSite {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl AdminSite {
    async fn start(app: &TestApp) -> AdminSite {
        let mut settings = app.settings.clone();
        settings.admin.password = PASSWORD.to_owned();
        settings.server.port = 0;
        settings.server.public_url = String::new();
        let web = Application::build(settings, Role::Web, false)
            .await
            .expect("admin web process builds");
        let url = web.public_url().to_owned();
        let stop = CancellationToken::new();
        tokio::spawn(web.run_until(stop.clone()));
        AdminSite {
            url,
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("client"),
            stop,
        }
    }

    async fn get(&self, path: &str, cookie: Option<&str>) -> reqwest::Response {
        let mut req = self.http.get(format!("{}{path}", self.url));
        if let Some(c) = cookie {
            req = req.header(COOKIE, c);
        }
        req.send().await.expect("admin page answers")
    }

    async fn post(
        &self,
        path: &str,
        cookie: Option<&str>,
        form: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut req = self.http.post(format!("{}{path}", self.url)).form(form);
        if let Some(c) = cookie {
            req = req.header(COOKIE, c);
        }
        req.send().await.expect("admin form answers")
    }

    /// Logs in; returns the `Cookie` header value to send.
    async fn login(&self) -> String {
        let reply = self
            .post(
                "/admin/login",
                None,
                &[("password", PASSWORD), ("next", "/admin")],
            )
            .await;
        assert_eq!(reply.status(), StatusCode::SEE_OTHER);
        let set = reply
            .headers()
            .get(SET_COOKIE)
            .and_then(|v| v.to_str().ok())
            .expect("a session cookie")
            .to_owned();
        set.split(';').next().expect("name=value").to_owned()
    }

    /// A page's HTML, asserting 200.
    async fn page(&self, path: &str, cookie: &str) -> String {
        let reply = self.get(path, Some(cookie)).await;
        assert_eq!(reply.status(), StatusCode::OK, "{path}");
        reply.text().await.expect("html")
    }

    /// The CSRF token in a page's forms.
    async fn csrf(&self, cookie: &str) -> String {
        let html = self.page("/admin", cookie).await;
        let at = html
            .find("name=\"csrf\" value=\"")
            .expect("a form with a CSRF token")
            + "name=\"csrf\" value=\"".len();
        html[at..].chars().take_while(|c| *c != '"').collect()
    }
}

fn location(reply: &reqwest::Response) -> String {
    reply
        .headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

async fn admin_pages_are_off_without_a_password(app: TestApp) {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    for path in [
        "/admin",
        "/admin/",
        "/admin/login",
        "/admin/log",
        "/admin/orgs",
    ] {
        let reply = http
            .get(format!("{}{path}", app.base_url()))
            .send()
            .await
            .expect("answer");
        assert_eq!(reply.status(), StatusCode::NOT_FOUND, "{path}");
    }
    let reply = http
        .post(format!("{}/admin/login", app.base_url()))
        .form(&[("password", "")])
        .send()
        .await
        .expect("answer");
    assert_eq!(reply.status(), StatusCode::NOT_FOUND);
}

async fn every_admin_page_needs_a_login(app: TestApp) {
    let site = AdminSite::start(&app).await;
    for path in [
        "/admin",
        "/admin/log?outcome=dead",
        "/admin/changes/01JABCDEFGHJKMNPQRSTVWXYZ0",
        "/admin/orgs",
        "/admin/orgs/acme",
        "/admin/users?q=someone",
    ] {
        let reply = site.get(path, None).await;
        assert_eq!(reply.status(), StatusCode::SEE_OTHER, "{path}");
        let to = location(&reply);
        let back = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("next", path)
            .finish();
        assert_eq!(to, format!("/admin/login?{back}"), "{path}");
        // A made-up session is no session.
        let reply = site
            .get(path, Some(&format!("scimsync_admin={}", "ab".repeat(32))))
            .await;
        assert_eq!(
            reply.status(),
            StatusCode::SEE_OTHER,
            "{path} with a forged cookie"
        );
    }
    let reply = site.post("/admin/retry-dead", None, &[("csrf", "x")]).await;
    assert_eq!(reply.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&reply), "/admin/login");
    // A typed trailing slash leads to the overview, not to a 404.
    let reply = site.get("/admin/", None).await;
    assert_eq!(reply.status(), StatusCode::PERMANENT_REDIRECT);
    assert_eq!(location(&reply), "/admin");

    let reply = site
        .post(
            "/admin/login",
            None,
            &[("password", PASSWORD), ("next", "/admin/orgs")],
        )
        .await;
    assert_eq!(reply.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        location(&reply),
        "/admin/orgs",
        "back to the page asked for"
    );
    let set = reply
        .headers()
        .get(SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .expect("cookie")
        .to_owned();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/admin"] {
        assert!(set.contains(attribute), "{set}");
    }
    assert!(!set.contains("Secure"), "plain http test server: {set}");
    let cookie = set.split(';').next().expect("pair").to_owned();
    let id = cookie.trim_start_matches("scimsync_admin=");
    assert_eq!(id.len(), 64, "256 random bits, hex");

    let overview = site.page("/admin", &cookie).await;
    assert!(overview.contains("Overview"), "{overview}");
    assert!(
        overview.contains("reachable"),
        "health is shown: {overview}"
    );
    assert!(!overview.contains(PASSWORD));
    let orgs = site.page("/admin/orgs", &cookie).await;
    assert!(orgs.contains("acme"), "{orgs}");
    assert!(!orgs.contains(&app.token), "token values are never listed");

    // A login elsewhere does not let a redirect leave the admin pages.
    let reply = site
        .post(
            "/admin/login",
            None,
            &[("password", PASSWORD), ("next", "https://evil.example/")],
        )
        .await;
    assert_eq!(location(&reply), "/admin");

    let csrf = site.csrf(&cookie).await;
    let out = site
        .post("/admin/logout", Some(&cookie), &[("csrf", &csrf)])
        .await;
    assert_eq!(out.status(), StatusCode::SEE_OTHER);
    let after = site.get("/admin", Some(&cookie)).await;
    assert_eq!(after.status(), StatusCode::SEE_OTHER, "the session ended");
}

async fn guessing_is_held_to_ten_wrong_passwords_a_minute(app: TestApp) {
    let site = AdminSite::start(&app).await;
    let guesses = (0..10).map(|i| {
        let site = &site;
        async move {
            let guess = format!("guess number {i}");
            site.post(
                "/admin/login",
                None,
                &[("password", guess.as_str()), ("next", "/admin")],
            )
            .await
            .status()
        }
    });
    for status in futures::future::join_all(guesses).await {
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    // Even the right password is not read now: a guess could be it.
    let held = site
        .post(
            "/admin/login",
            None,
            &[("password", PASSWORD), ("next", "/admin")],
        )
        .await;
    assert_eq!(held.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(held.headers().get(SET_COOKIE).is_none());
    assert_eq!(
        held.headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("60")
    );
    assert!(
        held.text()
            .await
            .expect("html")
            .contains("Too many wrong passwords")
    );
}

async fn wrong_password_is_refused_without_a_session(app: TestApp) {
    let site = AdminSite::start(&app).await;
    for wrong in ["", "correct horse battery", "CORRECT HORSE BATTERY STAPLE"] {
        let reply = site
            .post(
                "/admin/login",
                None,
                &[("password", wrong), ("next", "/admin")],
            )
            .await;
        assert_eq!(reply.status(), StatusCode::UNAUTHORIZED, "{wrong:?}");
        assert!(
            reply.headers().get(SET_COOKIE).is_none(),
            "no session for {wrong:?}"
        );
        let html = reply.text().await.expect("html");
        assert!(html.contains("Wrong password."), "{html}");
        assert!(html.contains("type=\"password\""), "the form again");
    }
    let form = site.get("/admin/login", None).await;
    assert_eq!(form.status(), StatusCode::OK);
}

/// A dead change as the worker records it, with its request kept for a
/// retry: a user create that would apply now.
async fn record_dead_change(app: &TestApp, user_name: &str) -> String {
    let org = app.org_id().await;
    crate::helpers::record_dead(app, &org, user_name, crate::helpers::user_create(user_name)).await
}

async fn change(app: &TestApp, id: &str) -> log::LogRow {
    let id = id.to_owned();
    app.store
        .run(move |c| log::find(c, &id).map_err(store::Error::from))
        .await
        .expect("query")
        .expect("change in the log")
}

async fn forms_without_the_csrf_token_change_nothing(app: TestApp) {
    let site = AdminSite::start(&app).await;
    let cookie = site.login().await;
    let csrf = site.csrf(&cookie).await;
    assert_eq!(csrf.len(), 64);
    let dead = record_dead_change(&app, "csrf@example.com").await;
    let token_id = scimsync::ops::tokens::list(&app.store, &app.org_slug)
        .await
        .expect("tokens")[0]
        .id
        .clone();
    let forms: Vec<(String, Vec<(&str, &str)>)> = vec![
        (format!("/admin/changes/{dead}/retry"), vec![]),
        (
            format!("/admin/changes/{dead}/discard"),
            vec![("reason", "testing")],
        ),
        ("/admin/retry-dead".into(), vec![]),
        (format!("/admin/orgs/acme/tokens/{token_id}/revoke"), vec![]),
        ("/admin/orgs/acme/tokens".into(), vec![("label", "sneaky")]),
        ("/admin/orgs".into(), vec![("slug", "sneaky")]),
        ("/admin/logout".into(), vec![]),
    ];
    let wrong = "0".repeat(64);
    for (path, fields) in &forms {
        for token in [None, Some(wrong.as_str()), Some(""), Some(&csrf[..63])] {
            let mut form = fields.clone();
            if let Some(t) = token {
                form.push(("csrf", t));
            }
            let reply = site.post(path, Some(&cookie), &form).await;
            assert_eq!(
                reply.status(),
                StatusCode::FORBIDDEN,
                "{path} with {token:?}"
            );
        }
    }
    // Nothing changed: the change is still dead and unresolved, the token
    // still works, no organization or token was added, the session lives.
    let row = change(&app, &dead).await;
    assert_eq!((row.outcome.as_str(), row.resolution), ("dead", None));
    assert_eq!(app.get("/Users").await.status, StatusCode::OK);
    let orgs = scimsync::ops::orgs::list(&app.store).await.expect("orgs");
    assert_eq!(orgs.len(), 1);
    let tokens = scimsync::ops::tokens::list(&app.store, "acme")
        .await
        .expect("tokens");
    assert_eq!(tokens.len(), 1);
    site.page("/admin", &cookie).await;

    // With the token, the same forms work.
    let reply = site
        .post(
            &format!("/admin/orgs/acme/tokens/{token_id}/revoke"),
            Some(&cookie),
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(reply.status(), StatusCode::SEE_OTHER);
    assert_eq!(app.get("/Users").await.status, StatusCode::UNAUTHORIZED);
    let page = site.page("/admin/orgs/acme", &cookie).await;
    assert!(page.contains("was revoked"), "{page}");

    let reply = site
        .post(
            "/admin/orgs/acme/tokens",
            Some(&cookie),
            &[("csrf", &csrf), ("label", "Entra prod")],
        )
        .await;
    assert_eq!(reply.status(), StatusCode::CREATED);
    let html = reply.text().await.expect("html");
    let at = html.find("scimsync_").expect("the new token, shown once");
    let token: String = html[at..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    let works = app
        .call_with_token(reqwest::Method::GET, "/Users", None, Some(&token))
        .await;
    assert_eq!(works.status, StatusCode::OK);
    let page = site.page("/admin/orgs/acme", &cookie).await;
    assert!(page.contains("Entra prod"), "{page}");
    assert!(!page.contains(&token), "listed without its value");

    let reply = site
        .post(
            &format!("/admin/changes/{dead}/discard"),
            Some(&cookie),
            &[("csrf", &csrf), ("reason", "user left")],
        )
        .await;
    assert_eq!(reply.status(), StatusCode::SEE_OTHER);
    let row = change(&app, &dead).await;
    assert_eq!(row.resolution.as_deref(), Some("discarded: user left"));
}

async fn dead_change_retried_from_its_page_is_applied(app: TestApp) {
    let site = AdminSite::start(&app).await;
    let cookie = site.login().await;
    let dead = record_dead_change(&app, "lazarus@example.com").await;
    let overview = site.page("/admin", &cookie).await;
    assert!(overview.contains("Retry all dead (1)"), "{overview}");
    assert!(overview.contains(&dead), "listed among recent failures");
    let detail = site.page(&format!("/admin/changes/{dead}"), &cookie).await;
    assert!(detail.contains("no such table: users"), "{detail}");
    assert!(detail.contains("lazarus@example.com"));
    assert!(
        detail.contains(&format!("/admin/changes/{dead}/retry")),
        "a Retry button"
    );

    let csrf = site.csrf(&cookie).await;
    let reply = site
        .post(
            &format!("/admin/changes/{dead}/retry"),
            Some(&cookie),
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(reply.status(), StatusCode::SEE_OTHER);
    let to = location(&reply);
    let new = to.trim_start_matches("/admin/changes/").to_owned();
    assert_ne!(new, dead);
    let old = change(&app, &dead).await;
    assert_eq!(old.resolution, Some(format!("retried as {new}")));
    eventually("the retried change is applied", || async {
        let id = new.clone();
        app.store
            .run(move |c| log::find(c, &id).map_err(store::Error::from))
            .await
            .ok()
            .flatten()
            .is_some_and(|row| row.outcome == "applied")
    })
    .await;
    let page = site.page(&to, &cookie).await;
    assert!(page.contains("badge applied"), "{page}");
    assert!(
        page.contains(&format!("queued again as {new}")),
        "the flash message"
    );
    let listed = app
        .get("/Users?filter=userName%20eq%20%22lazarus%40example.com%22")
        .await;
    assert_eq!(listed.body["totalResults"], 1);
    // Retrying twice is refused, and says why.
    let again = site
        .post(
            &format!("/admin/changes/{dead}/retry"),
            Some(&cookie),
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(location(&again), format!("/admin/changes/{dead}"));
    let page = site.page(&location(&again), &cookie).await;
    assert!(page.contains("already dealt with"), "{page}");

    // Retry-all, after its count on the overview.
    let second = record_dead_change(&app, "phoenix@example.com").await;
    let overview = site.page("/admin", &cookie).await;
    assert!(overview.contains("Retry all dead (1)"), "{overview}");
    let reply = site
        .post("/admin/retry-dead", Some(&cookie), &[("csrf", &csrf)])
        .await;
    assert_eq!(reply.status(), StatusCode::SEE_OTHER);
    let overview = site.page("/admin", &cookie).await;
    assert!(
        overview.contains("1 of 1 dead change(s) were queued again"),
        "{overview}"
    );
    assert!(change(&app, &second).await.resolution.is_some());
}

async fn entra_data_is_shown_escaped_in_lookup_and_log(app: TestApp) {
    let site = AdminSite::start(&app).await;
    let cookie = site.login().await;
    let mut body = user_body("mallory@example.com");
    body["displayName"] = json!("<script>alert('pwned')</script>");
    body["externalId"] = json!("ext-\"><img src=x onerror=alert(1)>");
    let created = app.post("/Users", body).await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    app.create_group("<b>Team</b> <script>x()</script>", &[])
        .await;
    // A rejected change whose reason repeats what Entra sent.
    let dup = app
        .post("/Users", user_body("<i>dup</i>@example.com"))
        .await;
    assert_eq!(dup.status, StatusCode::CREATED);
    let dup = app
        .post("/Users", user_body("<i>dup</i>@example.com"))
        .await;
    assert_eq!(dup.status, StatusCode::CONFLICT);

    let lookup = site
        .page("/admin/users?q=MALLORY%40example.com", &cookie)
        .await;
    assert!(
        lookup.contains("mallory@example.com"),
        "found in any case: {lookup}"
    );
    assert!(
        lookup.contains("&lt;script&gt;alert(&#39;pwned&#39;)&lt;/script&gt;"),
        "{lookup}"
    );
    assert!(
        lookup.contains("&lt;img src=x onerror=alert(1)&gt;"),
        "{lookup}"
    );
    let by_external = site
        .page(
            &format!(
                "/admin/users?org=acme&q={}",
                url_encode("ext-\"><img src=x onerror=alert(1)>")
            ),
            &cookie,
        )
        .await;
    assert!(
        by_external.contains("mallory@example.com"),
        "found by externalId"
    );

    let log = site.page("/admin/log", &cookie).await;
    assert!(
        log.contains("&lt;b&gt;Team&lt;/b&gt; &lt;script&gt;x()&lt;/script&gt;"),
        "{log}"
    );
    assert!(log.contains("&lt;i&gt;dup&lt;/i&gt;@example.com"), "{log}");
    let failed = site.page("/admin/log?outcome=failed", &cookie).await;
    assert!(failed.contains("badge rejected"), "{failed}");
    for html in [&lookup, &by_external, &log, &failed] {
        assert!(!html.contains("<script>"), "raw script tag");
        assert!(!html.contains("<img"), "raw img tag");
        assert!(!html.contains("<b>Team"), "raw b tag");
        assert!(!html.contains("<i>dup"), "raw i tag");
    }
}

fn url_encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_pages_follow_older_links_without_gaps() {
    let app = crate::helpers::spawn_app(Backend::Sqlite).await;
    let site = AdminSite::start(&app).await;
    let cookie = site.login().await;
    for i in 0..7 {
        app.create_user(&format!("page{i}@example.com")).await;
    }
    let mut seen = Vec::new();
    let mut path = "/admin/log?org=acme&limit=3".to_owned();
    loop {
        let html = site.page(&path, &cookie).await;
        let mut on_page: Vec<(usize, usize)> = (0..7)
            .filter_map(|i| html.find(&format!("page{i}@example.com")).map(|at| (at, i)))
            .collect();
        on_page.sort();
        assert!(on_page.len() <= 3, "a page holds at most its limit");
        seen.extend(on_page.into_iter().map(|(_, i)| i));
        let Some(at) = html.find("\">Older »") else {
            break;
        };
        let start = html[..at].rfind("href=\"").expect("link") + "href=\"".len();
        path = html[start..at].replace("&amp;", "&");
    }
    assert_eq!(seen, vec![6, 5, 4, 3, 2, 1, 0], "newest first, each once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_retries_a_dead_change_in_a_real_browser() {
    use crate::browser::Driver;
    use diesel::RunQueryDsl;
    use reqwest::Method;

    let Some(driver) = Driver::start().await else {
        return;
    };
    let mut env = test_env(Backend::Sqlite);
    env.settings.admin.password = PASSWORD.to_owned();
    let app = spawn_with(env, Role::All).await;
    for name in ["ada", "grace", "edsger", "barbara", "donald"] {
        app.create_user(&format!("{name}@example.com")).await;
    }
    app.create_group("Platform", &[]).await;
    let dup = app.post("/Users", user_body("ada@example.com")).await;
    assert_eq!(dup.status, StatusCode::CONFLICT);
    // A change that cannot be applied: the users table is gone while it runs.
    app.store
        .run(|c| {
            diesel::sql_query("ALTER TABLE users RENAME TO users_gone").execute(c)?;
            Ok::<_, store::Error>(())
        })
        .await
        .expect("rename");
    let reply = app.post("/Users", user_body("alan@example.com")).await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    app.store
        .run(|c| {
            diesel::sql_query("ALTER TABLE users_gone RENAME TO users").execute(c)?;
            Ok::<_, store::Error>(())
        })
        .await
        .expect("rename back");

    let profile = tempfile::tempdir().expect("profile dir");
    let browser = Browser::open(&driver, &profile).await;
    let sid = browser.sid.clone();

    // Log in: the overview sends the browser to the login form first.
    browser.go(format!("{}/admin", app.base_url())).await;
    assert!(
        browser.source().await.contains("Admin password"),
        "the login form"
    );
    let field = browser.find("input[name=password]").await;
    driver
        .call(
            Method::POST,
            format!("/session/{sid}/element/{field}/value"),
            Some(json!({"text": PASSWORD})),
        )
        .await;
    browser
        .click(browser.find("form button[type=submit]").await)
        .await;
    let overview = browser.wait_for("Dead changes waiting").await;
    assert!(overview.contains("Retry all dead (1)"), "{overview}");

    // The dead change, from the recent failures, and its Retry button.
    browser
        .click(browser.find("table a[href^='/admin/changes/']").await)
        .await;
    let detail = browser.wait_for("Deal with this dead change").await;
    assert!(detail.contains("badge dead"), "{detail}");
    assert!(detail.contains("alan@example.com"), "{detail}");
    browser
        .click(browser.find("form[action$='/retry'] button").await)
        .await;
    let mut page = browser.wait_for("was queued again as").await;
    let url = driver
        .call(Method::GET, format!("/session/{sid}/url"), None)
        .await
        .as_str()
        .expect("url")
        .to_owned();
    let new = url.rsplit('/').next().expect("new change id").to_owned();
    for _ in 0..100 {
        if page.contains("badge applied") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        browser.go(url.clone()).await;
        page = browser.source().await;
    }
    assert!(
        page.contains("badge applied"),
        "the retried change applied: {page}"
    );
    assert!(page.contains("HTTP 201"), "{page}");
    let row = change(&app, &new).await;
    assert_eq!(row.outcome, "applied");

    // And in the log, newest first.
    browser.go(format!("{}/admin/log", app.base_url())).await;
    let log = browser.source().await;
    let first_row = log.split("<tr>").nth(2).unwrap_or_default();
    assert!(first_row.contains(&new), "{first_row}");
    assert!(first_row.contains("badge applied"), "{first_row}");

    browser.go(format!("{}/admin", app.base_url())).await;
    let overview = browser.source().await;
    assert!(overview.contains("retried as"), "{overview}");
    let png = driver
        .call(Method::GET, format!("/session/{sid}/screenshot"), None)
        .await;
    let png = base64_decode(png.as_str().expect("base64 PNG"));
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
    std::fs::create_dir_all(&docs).expect("docs dir");
    std::fs::write(docs.join("admin-overview.png"), &png).expect("screenshot written");
    driver
        .call(Method::DELETE, format!("/session/{sid}"), None)
        .await;
}

/// One WebDriver session in headless Chromium.
struct Browser<'a> {
    driver: &'a crate::browser::Driver,
    sid: String,
}

impl<'a> Browser<'a> {
    async fn open(driver: &'a crate::browser::Driver, profile: &tempfile::TempDir) -> Browser<'a> {
        use reqwest::Method;
        let session = driver
            .call(
                Method::POST,
                "/session".to_owned(),
                Some(json!({"capabilities": {"alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {
                        "binary": crate::browser::CHROMIUM,
                        "args": [
                            "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                            "--disable-quic", "--no-first-run", "--disable-background-networking",
                            "--disable-component-update", "--disable-sync", "--hide-scrollbars",
                            "--force-device-scale-factor=1",
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
        // Tall enough that the overview's screenshot shows every section.
        driver
            .call(
                Method::POST,
                format!("/session/{sid}/window/rect"),
                Some(json!({"width": 1360, "height": 1500})),
            )
            .await;
        Browser { driver, sid }
    }

    async fn go(&self, url: String) {
        self.driver
            .call(
                reqwest::Method::POST,
                format!("/session/{}/url", self.sid),
                Some(json!({"url": url})),
            )
            .await;
    }

    async fn source(&self) -> String {
        self.driver
            .call(
                reqwest::Method::GET,
                format!("/session/{}/source", self.sid),
                None,
            )
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The page's source once it contains `text` (a click that submits a
    /// form may return before the next page is there).
    async fn wait_for(&self, text: &str) -> String {
        let mut page = String::new();
        for _ in 0..200 {
            page = self.source().await;
            if page.contains(text) {
                return page;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("no \"{text}\" within 10 s: {page}");
    }

    async fn find(&self, css: &str) -> String {
        let found = self
            .driver
            .call(
                reqwest::Method::POST,
                format!("/session/{}/element", self.sid),
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        found[crate::browser::ELEMENT_KEY]
            .as_str()
            .expect(css)
            .to_owned()
    }

    async fn click(&self, element: String) {
        self.driver
            .call(
                reqwest::Method::POST,
                format!("/session/{}/element/{element}/click", self.sid),
                Some(json!({})),
            )
            .await;
    }
}

/// Standard base64, as WebDriver sends screenshots.
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let clean: Vec<u8> = text
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
        .collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for chunk in clean.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= u32::from(value(*c)) << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    out
}

/// The admin pages on a large provisioning log: 100,000 entries over two
/// days in three organizations. A measurement rather than a check (timings
/// vary with the machine), so it runs only when asked:
/// `cargo test --test api admin_pages_on_a_large_log -- --ignored --nocapture`
/// (with the PostgreSQL variables set, on PostgreSQL + Redis as well).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run with --ignored --nocapture"]
async fn admin_pages_on_a_large_log() {
    let mut backends = vec![Backend::Sqlite];
    if crate::helpers::postgres_redis_enabled() {
        backends.push(Backend::PostgresRedis);
    }
    for backend in backends {
        let app = crate::helpers::spawn_with(test_env(backend), Role::All).await;
        let site = AdminSite::start(&app).await;
        let cookie = site.login().await;
        let mut orgs = vec![app.org_id().await];
        for slug in ["beta", "gamma"] {
            app.other_org_token(slug).await;
            let slug = slug.to_owned();
            let id = app
                .store
                .run(move |c| {
                    scimsync::store::orgs::find_by_slug(c, &slug).map_err(store::Error::from)
                })
                .await
                .expect("query")
                .expect("org")
                .id;
            orgs.push(id);
        }
        let started = std::time::Instant::now();
        let now = store::now();
        let response = json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
            "userName": "x@example.com", "active": true, "name": {"givenName": "X", "familyName": "Y"},
            "emails": [{"value": "x@example.com", "type": "work", "primary": true}],
            "meta": {"resourceType": "User", "location": "http://127.0.0.1/scim/v2/Users/1"}})
        .to_string();
        let orgs_for_insert = orgs.clone();
        app.store
            .run(move |c| {
                use diesel::{Connection, RunQueryDsl};
                c.transaction::<_, store::Error, _>(|c| {
                    for chunk in 0..100 {
                        let rows: Vec<log::LogRow> = (0..1000)
                            .map(|j| {
                                let i = chunk * 1000 + j;
                                let outcome = match i % 50 {
                                    0 => "rejected",
                                    1 if i % 1000 == 1 => "dead",
                                    _ => "applied",
                                };
                                let at = now - chrono::TimeDelta::seconds(i as i64 * 2);
                                log::LogRow {
                                    change_id: ulid::Ulid::new().to_string(),
                                    org_id: orgs_for_insert[(i % 3) as usize].clone(),
                                    operation: "create".into(),
                                    resource_type: "User".into(),
                                    resource_id: Some(uuid::Uuid::new_v4().to_string()),
                                    subject: Some(format!("user{i}@example.com")),
                                    outcome: outcome.into(),
                                    status: if outcome == "applied" { 201 } else { 409 },
                                    response: Some(response.clone()),
                                    error: (outcome != "applied").then(|| "taken".to_owned()),
                                    attempts: 1,
                                    received_at: at,
                                    applied_at: at,
                                    duration_ms: 3,
                                    request: None,
                                    resolution: None,
                                }
                            })
                            .collect();
                        // Batch inserts exist per backend, not on the multi-connection.
                        let insert =
                            diesel::insert_into(scimsync::store::schema::provisioning_log::table)
                                .values(&rows);
                        match c {
                            scimsync::store::Conn::Pg(c) => insert.execute(c)?,
                            scimsync::store::Conn::Sqlite(c) => insert.execute(c)?,
                        };
                    }
                    Ok(())
                })
            })
            .await
            .expect("100,000 log rows");
        eprintln!(
            "{backend:?}: 100,000 rows inserted in {:?}",
            started.elapsed()
        );
        for path in [
            "/admin",
            "/admin/log",
            "/admin/log?org=acme",
            "/admin/log?outcome=dead",
            "/admin/log?outcome=failed",
            "/admin/log?org=beta&outcome=rejected&since=1d",
            "/admin/log?user=user99999%40example.com",
            "/admin/log?org=acme&user=user99999%40example.com",
            "/admin/log?org=gamma&limit=500",
            "/admin/users?q=nobody%40example.com",
            "/admin/orgs",
        ] {
            site.page(path, &cookie).await;
            let t = std::time::Instant::now();
            site.page(path, &cookie).await;
            let took = t.elapsed();
            eprintln!("{backend:?}: {path}: {took:?}");
            assert!(
                took < std::time::Duration::from_secs(2),
                "{path} took {took:?}"
            );
        }
        let older = site.page("/admin/log?org=acme", &cookie).await;
        assert!(older.contains("Older »"));
    }
}
