//! Building and running the application: web, workers, or both.

use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::email::Transport;
use crate::http::{self, AppState};
use crate::jobs::mail::{MailState, SendMail, SentMarks};
use crate::jobs::queue::Backend;
use crate::jobs::reply::{Announcer, Replies, relay_from_redis};
use crate::jobs::worker::{self, WorkerState};
use crate::jobs::{Queue, ScimChange};
use crate::reconcile::periodic;
use crate::store::Store;

/// How long a stopping process's workers wait for the web server to answer
/// its in-flight requests before their own grace period (25 s) begins.
const WEB_DRAIN: std::time::Duration = std::time::Duration::from_secs(3);

/// Which parts this process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The SCIM API only (`scimsync serve`).
    Web,
    /// Workers only (`scimsync work`).
    Worker,
    /// Both in one process (`scimsync run`).
    All,
}

impl Role {
    fn web(self) -> bool {
        matches!(self, Role::Web | Role::All)
    }
    fn worker(self) -> bool {
        matches!(self, Role::Worker | Role::All)
    }
}

/// A built application, bound to its port, not yet serving.
pub struct Application {
    role: Role,
    listener: Option<TcpListener>,
    port: u16,
    public_url: String,
    store: Store,
    queue: Queue<ScimChange>,
    mail: Queue<SendMail>,
    transport: Arc<Transport>,
    replies: Arc<Replies>,
    settings: Arc<Settings>,
}

impl Application {
    /// Opens the database and queue, applies migrations when `migrate` is
    /// set (else refuses to start on a database that lacks them), and binds
    /// the port when the role serves HTTP.
    pub async fn build(settings: Settings, role: Role, migrate: bool) -> anyhow::Result<Self> {
        let store = Store::open(
            &settings.database_url()?,
            settings.database.pool_size,
            std::time::Duration::from_secs(settings.database.connect_timeout_secs),
        )?;
        if migrate {
            let applied = store
                .migrate()
                .await
                .context("cannot migrate the database")?;
            for name in applied {
                tracing::info!(migration = %name, "migration applied");
            }
        } else {
            let pending = store
                .pending_migrations()
                .await
                .context("cannot read the database's migrations (is DATABASE_URL right and the database up?)")?;
            if !pending.is_empty() {
                anyhow::bail!(
                    "the database lacks {} migration(s) ({}); run `scimsync migrate` first",
                    pending.len(),
                    pending.join(", ")
                );
            }
        }
        let queue: Queue<ScimChange> =
            Queue::connect(&settings.queue_url()?, &settings.queue.name).await?;
        let mail = queue.sibling(&format!("{}-mail", settings.queue.name));
        let transport = Arc::new(
            Transport::from_url(&settings.mail_url())
                .context("invalid mail configuration (SCIMSYNC_MAIL_URL)")?,
        );
        let (listener, port) = if role.web() {
            let addr = format!("{}:{}", settings.server.host, settings.server.port);
            let listener = TcpListener::bind(&addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (port in use? set PORT)"))?;
            let port = listener.local_addr()?.port();
            (Some(listener), port)
        } else {
            (None, settings.server.port)
        };
        let mut settings = settings;
        if settings.server.public_url.trim().is_empty() {
            settings.server.port = port;
        }
        let public_url = settings.public_url();
        Ok(Application {
            role,
            listener,
            port,
            public_url,
            store,
            queue,
            mail,
            transport,
            replies: Replies::new(),
            settings: Arc::new(settings),
        })
    }

    /// The port the HTTP server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The base URL clients use, e.g. `http://127.0.0.1:8080`.
    pub fn public_url(&self) -> &str {
        &self.public_url
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn queue(&self) -> &Queue<ScimChange> {
        &self.queue
    }

    pub fn mail_queue(&self) -> &Queue<SendMail> {
        &self.mail
    }

    pub fn transport(&self) -> &Arc<Transport> {
        &self.transport
    }

    /// What the mail workers use; also lets tests deliver directly.
    pub fn mail_state(&self) -> Arc<MailState> {
        Arc::new(MailState {
            store: self.store.clone(),
            settings: self.settings.clone(),
            transport: self.transport.clone(),
            public_url: self.public_url.clone(),
            orgs: Default::default(),
            sent: SentMarks::start(self.store.clone()),
        })
    }

    /// Serves until `shutdown` is cancelled, then stops accepting, lets
    /// in-flight requests and changes finish, and returns.
    pub async fn run_until(mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut tasks = tokio::task::JoinSet::new();
        if self.role.worker() {
            let relays = [
                tokio::spawn(self.queue.clone().relay_pushes()),
                tokio::spawn(self.mail.clone().relay_pushes()),
            ];
            let token = shutdown.clone();
            tokio::spawn(async move {
                token.cancelled().await;
                for relay in relays {
                    relay.abort();
                }
            });
            tokio::spawn(periodic::run(
                self.store.clone(),
                self.mail.clone(),
                self.settings.clone(),
                shutdown.clone(),
            ));
        }
        if let (true, Backend::Redis { client, .. }) = (self.role.web(), &*self.queue.backend) {
            let relay = tokio::spawn(relay_from_redis(client.clone(), self.replies.clone()));
            let token = shutdown.clone();
            tokio::spawn(async move {
                token.cancelled().await;
                relay.abort();
            });
        }
        // Workers stop only after the web server has answered its in-flight
        // requests (or WEB_DRAIN has passed), so those requests get their
        // changes' real outcomes.
        let web_done = CancellationToken::new();
        if let Some(listener) = self.listener.take() {
            let state = AppState::new(crate::http::Shared {
                store: self.store.clone(),
                queue: self.queue.clone(),
                mail: self.mail.clone(),
                limiter: Arc::new(crate::http::ratelimit::RateLimiter::new(
                    self.settings.server.rate_limit_per_second,
                    self.settings.server.rate_limit_burst,
                )),
                tokens: Arc::new(crate::http::auth::TokenLookups::start(self.store.clone())),
                user_names: Arc::new(crate::http::lookups::UserNameLookups::start(
                    self.store.clone(),
                )),
                figures: Arc::default(),
                replies: self.replies.clone(),
                settings: self.settings.clone(),
                base_url: format!("{}/scim/v2", self.public_url),
                admin: crate::http::admin::AdminState::from_settings(&self.settings),
            });
            let app = http::router(state);
            let token = shutdown.clone();
            let done = web_done.clone();
            tracing::info!(url = %self.public_url, "listening");
            tasks.spawn(async move {
                let served = axum::serve(listener, app)
                    .with_graceful_shutdown(async move { token.cancelled().await })
                    .await
                    .context("HTTP server failed");
                done.cancel();
                served
            });
        } else {
            web_done.cancel();
        }
        if self.role.worker() {
            let announcer = match &*self.queue.backend {
                Backend::Redis { conn, .. } => Announcer::Redis {
                    local: self.replies.clone(),
                    publisher: crate::jobs::reply::Publisher::start(conn.clone()),
                },
                Backend::Sqlite(_) => Announcer::Local(self.replies.clone()),
            };
            let mail_state = self.mail_state();
            let state = Arc::new(WorkerState {
                store: self.store.clone(),
                applier: crate::reconcile::Applier::start(self.store.clone(), &self.settings),
                settings: self.settings.clone(),
                announcer,
                mail: self.mail.clone(),
                mailer: mail_state.clone(),
                senders: Arc::new(tokio::sync::Semaphore::new(
                    self.settings.mail.concurrency.max(1),
                )),
            });
            let queue = self.queue.clone();
            let token = shutdown.clone();
            let web = web_done.clone();
            tracing::info!(
                concurrency = self.settings.queue.concurrency,
                "workers started"
            );
            tasks.spawn(async move {
                worker::run(queue, state, mail_state, async move {
                    token.cancelled().await;
                    // Requests waiting for their changes are normally
                    // answered within milliseconds; if the web server is
                    // still draining after WEB_DRAIN (changes that cannot
                    // apply, waiting out their deadline), the workers'
                    // grace starts anyway, so the whole stop stays within
                    // the 30 s platforms allow after SIGTERM.
                    let _ = tokio::time::timeout(WEB_DRAIN, web.cancelled()).await;
                })
                .await
            });
        }
        let mut result = Ok(());
        while let Some(joined) = tasks.join_next().await {
            let outcome = joined.context("a service task panicked").and_then(|r| r);
            if let Err(e) = outcome {
                // One part failing stops the others: a half-running process
                // would look healthy while doing nothing.
                shutdown.cancel();
                if result.is_ok() {
                    result = Err(e);
                }
            }
        }
        result
    }
}
