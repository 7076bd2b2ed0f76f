//! The command line: `scimsync <command>`; doc comments here are the `--help`.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::{DatabaseUrl, QueueUrl, Settings, redact_url};
use crate::ops;
use crate::startup::{Application, Role};
use crate::store::Store;

/// scimsync: a SCIM 2.0 provisioning target for Microsoft Entra ID.
///
/// With no configuration it runs embedded: data and queue in SQLite under
/// ./data. Set DATABASE_URL=postgres://… and REDIS_URL=redis://… to run
/// web and worker processes at scale.
#[derive(Debug, Parser)]
#[command(name = "scimsync", version, propagate_version = true)]
pub struct Cli {
    /// Directory holding <SCIMSYNC_ENV>.toml (default: ./config).
    #[arg(long, global = true, env = "SCIMSYNC_CONFIG_DIR", value_name = "DIR")]
    pub config_dir: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the web server and workers in one process. Applies migrations,
    /// and on first start creates the organization "default" and a token
    /// for it: printed on a terminal, otherwise written to the file
    /// <data_dir>/first-scim-token, whose path is printed.
    Run,
    /// Run the SCIM web server only (scale out behind a load balancer).
    Serve,
    /// Run queue workers only (as many processes as you like).
    Work,
    /// Apply database migrations, then exit.
    Migrate,
    /// Manage organizations (tenants).
    #[command(subcommand)]
    Org(OrgCommand),
    /// Manage SCIM bearer tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Check mail delivery.
    #[command(subcommand)]
    Mail(MailCommand),
    /// See what the queues hold and how changes are going.
    #[command(subcommand)]
    Queue(QueueCommand),
    /// Show the provisioning log, newest first.
    Log(LogArgs),
    /// Check configuration, database, migrations, queue and mail transport,
    /// and say what is wrong.
    Doctor,
    /// Replay Microsoft Entra ID's provisioning traffic against a running
    /// service and report throughput, latency, errors and memory.
    ///
    /// The initial cycle comes first, in Entra's request shapes: Test
    /// Connection; each user looked up by userName, then created; each group
    /// looked up by displayName (without members), then created; members
    /// added in batches. Then an incremental cycle: attribute updates,
    /// deactivations (active "False") and member removals. Data follows from
    /// --seed, so a run can be sent again exactly.
    ///
    /// Reports per operation the count, requests/s, latency p50/p95/p99/max
    /// and errors by status; when every change had been applied (the service
    /// answers a write only after its commit); with --mail-dir, when the last
    /// welcome email was written; the CPU time the user phase cost the
    /// machine, in all and a user; with --pid, the peak memory and CPU time
    /// of those processes. Exits non-zero when any request was not answered 2xx or
    /// any welcome email is missing.
    ///
    /// With --concurrency 1,2,4,…, the user phase runs once per level on
    /// fresh users (with --mail-dir, once the previous level's welcome
    /// emails are written) and the report has a row per level; --chart-dir writes
    /// throughput.svg (creates/s and POST latency against concurrency) and
    /// latency.svg (the latency distribution at the highest level).
    ///
    /// Example, against `scimsync run` on this machine:
    ///
    ///   SCIMSYNC_LOAD_TOKEN=<token> scimsync load --users 2000 --mail-dir data/mail --pid <server pid>
    Load(LoadArgs),
    BenchScaling(crate::load::scaling::ScalingArgs),
}

/// The sizes, target and measurements of `scimsync load`.
#[derive(Debug, Args)]
pub struct LoadArgs {
    /// SCIM base URL of the service, as entered as Entra's Tenant URL.
    /// Every request goes below it.
    #[arg(
        long,
        value_name = "URL",
        default_value = "http://127.0.0.1:8080/scim/v2"
    )]
    pub url: url::Url,
    /// SCIM bearer token of the organization to fill (never printed).
    #[arg(
        long,
        env = "SCIMSYNC_LOAD_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: crate::load::Secret,
    /// Users to provision.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub users: usize,
    /// Groups to provision (each becomes a team).
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub groups: usize,
    /// Average members per group (each group gets between half and one and
    /// a half times this).
    #[arg(long, value_name = "N", default_value_t = 50)]
    pub members_per_group: usize,
    /// Members added per PATCH, as Entra adds them in batches.
    #[arg(long, value_name = "N", default_value_t = 50)]
    pub member_batch: usize,
    /// Requests in flight at once. A comma-separated list (e.g.
    /// 1,2,4,8,16,32; each value once) makes a sweep: the user phase
    /// (lookup by userName, then create) runs once per value, in the order
    /// given, each on --users users of its own (the numbering of
    /// user<i>-<seed>@example.com goes on from the value before); groups,
    /// members and the incremental cycle then run once, at the last value,
    /// over all of them. The report adds one row per value (a "sweep" array
    /// with --json).
    #[arg(
        long,
        value_name = "N[,N…]",
        value_delimiter = ',',
        default_value = "16"
    )]
    pub concurrency: Vec<usize>,
    /// Seed of the generated data (userNames user<i>-<seed>@example.com);
    /// random when omitted, and printed so the run can be repeated.
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// Changes in the incremental cycle: about half attribute updates, a
    /// quarter deactivations, a quarter member removals.
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub incremental: usize,
    /// Print the report as one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// The service's mail directory (file transport, e.g. ./data/mail):
    /// also wait until every welcome email is there, and report when.
    #[arg(long, value_name = "DIR")]
    pub mail_dir: Option<PathBuf>,
    /// With --mail-dir: how long to wait for welcome emails after the last
    /// request before reporting them missing.
    #[arg(long, value_name = "SECS", default_value_t = 600)]
    pub mail_timeout: u64,
    /// A server process whose peak memory to sample every 200 ms from
    /// /proc/PID/status, and whose CPU time the user phase used to report
    /// from /proc/PID/stat (repeat for several). The machine's CPU time is
    /// reported without it.
    #[arg(long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,
    /// Write two SVG charts to this directory (created if missing):
    /// throughput.svg, create-user requests/s and create p50/p99 latency
    /// against concurrency (one point per --concurrency value), and
    /// latency.svg, the create-user and filter-user latency percentiles up
    /// to p99.9 at the highest concurrency.
    #[arg(long, value_name = "DIR")]
    pub chart_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// Pending, running and dead jobs per queue, live workers, outcomes of
    /// the last 5 minutes / hour / day, and the mail outbox.
    Stats(Output),
    /// List changes by outcome, newest first.
    List {
        /// applied, rejected or dead (dead: only those not yet retried or
        /// discarded; `scimsync log --outcome dead` shows them all).
        #[arg(long, default_value = "dead", value_parser = ["applied", "rejected", "dead"])]
        state: String,
        /// Only this organization (slug).
        #[arg(long)]
        org: Option<String>,
        /// How many changes to show.
        #[arg(long, default_value_t = 50)]
        limit: i64,
        #[command(flatten)]
        output: Output,
    },
    /// Show one change: what was asked, what happened, how often it was tried.
    Show {
        /// The change id (as in `queue list` or `scimsync log`).
        id: String,
        #[command(flatten)]
        output: Output,
    },
    /// Retry a dead change, or with --dead every dead change (of --org).
    Retry {
        /// The change id; omit with --dead.
        #[arg(required_unless_present = "dead", conflicts_with = "dead")]
        id: Option<String>,
        /// Retry every unresolved dead change.
        #[arg(long)]
        dead: bool,
        /// With --dead: only this organization (slug).
        #[arg(long, requires = "dead")]
        org: Option<String>,
        /// Only show (with --dead: count) what would be retried.
        #[arg(long)]
        dry_run: bool,
    },
    /// Mark a dead change as dealt with, without retrying it.
    Discard {
        /// The change id (as `queue list` shows it).
        id: String,
        /// Why (kept in the provisioning log).
        #[arg(long)]
        reason: String,
    },
}

#[derive(Debug, Args)]
pub struct LogArgs {
    /// Only this organization (slug).
    #[arg(long)]
    pub org: Option<String>,
    /// Only changes to this userName / displayName or resource id.
    #[arg(long)]
    pub user: Option<String>,
    /// Only this outcome: applied, rejected or dead.
    #[arg(long, value_parser = ["applied", "rejected", "dead"])]
    pub outcome: Option<String>,
    /// Only entries newer than this: an age (30s, 15m, 2h, 7d) or a UTC
    /// time (2026-11-28 09:30).
    #[arg(long, value_name = "AGE|TIME")]
    pub since: Option<String>,
    /// How many entries to show.
    #[arg(long, default_value_t = 50)]
    pub limit: i64,
    /// Keep printing new entries as they are logged.
    #[arg(long, short)]
    pub follow: bool,
    #[command(flatten)]
    pub output: Output,
}

#[derive(Debug, Subcommand)]
pub enum MailCommand {
    /// Send a test message through the configured transport
    /// (SCIMSYNC_MAIL_URL) and print what the server answered.
    Test {
        /// Where to send it.
        address: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum OrgCommand {
    /// Create an organization.
    Create {
        /// Short name used in commands, e.g. acme-corp.
        slug: String,
        /// Display name (default: the slug).
        #[arg(long)]
        name: Option<String>,
        /// Address that receives the organization's failure digests.
        #[arg(long, value_name = "EMAIL")]
        notify: Option<String>,
    },
    /// List organizations.
    List(Output),
    /// Show one organization: tokens, users, teams, recent failures.
    Show {
        /// The organization's slug.
        slug: String,
        #[command(flatten)]
        output: Output,
    },
    /// Set or clear where an organization's failure digests go.
    Notify {
        /// The organization's slug.
        slug: String,
        /// The new address; omit with --clear.
        #[arg(required_unless_present = "clear")]
        email: Option<String>,
        /// Stop sending this organization's digests (the operator address, if configured, still gets them).
        #[arg(long, conflicts_with = "email")]
        clear: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Issue a token for an organization; it is printed once, alone on the
    /// last line of the output, and stored only as a hash.
    Create {
        /// The organization's slug.
        org: String,
        /// What the token is for, e.g. "Entra ID production".
        #[arg(long, default_value = "SCIM token")]
        label: String,
    },
    /// List an organization's tokens (never their values).
    List {
        /// The organization's slug.
        org: String,
        #[command(flatten)]
        output: Output,
    },
    /// Revoke a token by id; it is refused from the next request on.
    Revoke {
        /// The token id shown by `token list`.
        id: String,
    },
}

#[derive(Debug, Args)]
pub struct Output {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down: finishing in-flight requests and changes");
}

fn describe_backends(settings: &Settings) -> anyhow::Result<String> {
    let db = match settings.database_url()? {
        DatabaseUrl::Postgres(url) => format!("PostgreSQL {}", redact_url(&url)),
        DatabaseUrl::Sqlite(path) => format!("SQLite {}", path.display()),
    };
    let queue = match settings.queue_url()? {
        QueueUrl::Redis(url) => format!("Redis {}", redact_url(&url)),
        QueueUrl::Sqlite(path) => format!("SQLite queue {}", path.display()),
    };
    Ok(format!("database: {db}; queue: {queue}"))
}

async fn serve(settings: Settings, role: Role) -> anyhow::Result<()> {
    tracing::info!("{}", describe_backends(&settings)?);
    let data_dir = settings.paths.data_dir.clone();
    let app = Application::build(settings, role, role == Role::All).await?;
    if role == Role::All && ops::orgs::bootstrap_default(app.store()).await? {
        issue_first_token(app.store(), app.public_url(), &data_dir).await?;
    }
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        trigger.cancel();
    });
    app.run_until(token).await
}

/// Where a first start that has no terminal leaves the token, in the data
/// directory.
const FIRST_TOKEN_FILE: &str = "first-scim-token";

/// Issues the organization "default" its first token and shows it once. On
/// a terminal it is printed. Anywhere else standard output is likely a log
/// stream (a platform's, a file, a pipe) that others read and that is
/// kept, so the token goes to a file only this user may read, and only
/// that file's path is printed.
///
/// The file is written before the token is stored: a token that could not
/// be written anywhere would be live in the database and known to nobody.
/// If the file cannot be written, no token is issued and the error says how
/// to issue one; the service runs on without it.
async fn issue_first_token(
    store: &Store,
    public_url: &str,
    data_dir: &std::path::Path,
) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    const LABEL: &str = "first token";
    if std::io::stdout().is_terminal() {
        let token = ops::tokens::create(store, "default", LABEL).await?.token;
        print_out(&format!(
            "\nCreated the organization \"default\" and its first SCIM token. It is shown only now:\n\n    {token}\n\n\
             In Entra ID, set the Tenant URL to {public_url}/scim/v2 and the Secret Token to the value above.\n\
             Try it:\n\n    curl -s -H 'Authorization: Bearer {token}' '{public_url}/scim/v2/Users?filter=userName%20eq%20%22x%22'\n"
        ));
        return Ok(());
    }
    let path = data_dir.join(FIRST_TOKEN_FILE);
    let shown = std::path::absolute(&path).unwrap_or_else(|_| path.clone());
    let token = ops::tokens::generate_token();
    if let Err(e) = write_private_file(&path, &token) {
        tracing::error!(
            path = %shown.display(),
            error = %e,
            "created the organization \"default\" but issued it no SCIM token: the first token could not be \
             written to its file, and it is never printed where standard output is not a terminal; \
             issue one with `scimsync token create default`, which prints it once"
        );
        return Ok(());
    }
    if let Err(e) = ops::tokens::create_from(store, "default", LABEL, token).await {
        // The file would hold a token that does not work.
        let _ = std::fs::remove_file(&path);
        return Err(e.context(
            "cannot store the first SCIM token of the organization \"default\"; \
             issue one with `scimsync token create default`",
        ));
    }
    print_out(&format!(
        "\nCreated the organization \"default\" and its first SCIM token. Standard output is not a terminal, \
         so the token is not shown here; it is in the file\n\n    {}\n\n\
         which only this user may read. Read it, set it as the Secret Token in Entra ID with the Tenant URL \
         {public_url}/scim/v2, then delete the file.\n",
        shown.display()
    ));
    Ok(())
}

/// Writes `secret` to a new file that only its owner may read or write
/// (0600 on unix). Refuses to overwrite: an existing file may be another
/// start's token, still unread.
fn write_private_file(path: &std::path::Path, secret: &str) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    let written = writeln!(file, "{secret}").and_then(|()| file.sync_all());
    if written.is_err() {
        // Ours, and holding part of a secret that will not be issued.
        let _ = std::fs::remove_file(path);
    }
    written
}

/// Prints without `println!`: a server must not die because whoever
/// started it closed its standard output.
fn print_out(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}

fn open_store(settings: &Settings) -> anyhow::Result<Store> {
    Store::open(
        &settings.database_url()?,
        2,
        std::time::Duration::from_secs(settings.database.connect_timeout_secs),
    )
}

/// Runs a command to completion.
pub async fn dispatch(command: Command, settings: Settings) -> anyhow::Result<()> {
    match command {
        Command::Load(args) => crate::load::command(args).await,
        Command::BenchScaling(args) => crate::load::scaling::command(args, settings).await,
        Command::Run => serve(settings, Role::All).await,
        Command::Serve => serve(settings, Role::Web).await,
        Command::Work => serve(settings, Role::Worker).await,
        Command::Migrate => {
            let store = open_store(&settings)?;
            let applied = store.migrate().await?;
            if applied.is_empty() {
                println!("database is up to date");
            }
            for name in applied {
                println!("applied {name}");
            }
            Ok(())
        }
        Command::Org(cmd) => {
            let store = open_store(&settings)?;
            store
                .migrate()
                .await
                .context("cannot migrate the database")?;
            match cmd {
                OrgCommand::Create { slug, name, notify } => {
                    let org = ops::orgs::create(&store, &slug, name.as_deref(), notify.as_deref())
                        .await?;
                    println!("created organization {} ({})", org.slug, org.name);
                    println!("next: scimsync token create {}", org.slug);
                    Ok(())
                }
                OrgCommand::Notify { slug, email, clear } => {
                    let email = if clear { None } else { email };
                    ops::orgs::set_notify(&store, &slug, email.as_deref()).await?;
                    match email {
                        Some(e) => println!("failure digests of {slug} now go to {e}"),
                        None => println!(
                            "failure digests of {slug} are no longer sent to the organization"
                        ),
                    }
                    Ok(())
                }
                OrgCommand::Show { slug, output } => {
                    let org = ops::orgs::show(&store, &slug).await?;
                    let tokens = ops::tokens::list(&store, &slug).await?;
                    if output.json {
                        let mut json = serde_json::to_value(&org)?;
                        json["token_list"] = serde_json::to_value(&tokens)?;
                        println!("{}", serde_json::to_string_pretty(&json)?);
                    } else {
                        println!("organization  {} ({})", org.info.slug, org.info.name);
                        println!("created       {}", org.info.created_at);
                        println!(
                            "notify        {}",
                            org.info.notify_email.as_deref().unwrap_or("(none)")
                        );
                        println!(
                            "users         {} ({} active, {} joined)",
                            org.users, org.active_users, org.joined_users
                        );
                        println!("teams         {}", org.teams);
                        println!("failures 24h  {}", org.failures_last_day);
                        println!("tokens        {} live of {}", org.live_tokens, org.tokens);
                        for t in &tokens {
                            println!(
                                "    {:<14} {:<28} created {}, last used {}{}",
                                t.id,
                                t.label,
                                t.created_at,
                                t.last_used_at.as_deref().unwrap_or("never"),
                                t.revoked_at
                                    .as_deref()
                                    .map(|r| format!(", revoked {r}"))
                                    .unwrap_or_default()
                            );
                        }
                    }
                    Ok(())
                }
                OrgCommand::List(out) => {
                    let orgs = ops::orgs::list(&store).await?;
                    if out.json {
                        println!("{}", serde_json::to_string_pretty(&orgs)?);
                    } else {
                        println!("{:<24} {:<32} {:<28} CREATED", "SLUG", "NAME", "NOTIFY");
                        for o in orgs {
                            println!(
                                "{:<24} {:<32} {:<28} {}",
                                o.slug,
                                o.name,
                                o.notify_email.as_deref().unwrap_or("-"),
                                o.created_at
                            );
                        }
                    }
                    Ok(())
                }
            }
        }
        Command::Queue(cmd) => queue_command(&settings, cmd).await,
        Command::Log(args) => show_log(&settings, args, false).await,
        Command::Doctor => doctor(&settings).await,
        Command::Mail(MailCommand::Test { address }) => {
            let transport = crate::email::Transport::from_url(&settings.mail_url())?;
            println!("sending through {}", transport.describe());
            let email = crate::email::Email {
                id: ulid::Ulid::new().to_string(),
                from: settings.mail.from.clone(),
                to: address.clone(),
                subject: "scimsync test message".into(),
                text: "This is a test message from scimsync. If you can read it, mail delivery works.\n".into(),
                html: "<p>This is a test message from scimsync. If you can read it, mail delivery works.</p>".into(),
            };
            match transport.send(&email).await {
                Ok(said) => {
                    println!("sent to {address}; the server said: {said}");
                    Ok(())
                }
                Err(e) => {
                    eprintln!("not sent: {}", e.reason());
                    if let Some(hint) = crate::email::hint(&e, &transport) {
                        eprintln!("hint: {hint}");
                    }
                    anyhow::bail!("the test message was not sent")
                }
            }
        }
        Command::Token(cmd) => {
            let store = open_store(&settings)?;
            store
                .migrate()
                .await
                .context("cannot migrate the database")?;
            match cmd {
                TokenCommand::Create { org, label } => {
                    let issued = ops::tokens::create(&store, &org, &label).await?;
                    println!(
                        "token {} for {} ({}); store it now, it is not shown again:",
                        issued.info.id, issued.info.org, issued.info.label
                    );
                    println!("{}", issued.token);
                    Ok(())
                }
                TokenCommand::List { org, output } => {
                    let tokens = ops::tokens::list(&store, &org).await?;
                    if output.json {
                        println!("{}", serde_json::to_string_pretty(&tokens)?);
                    } else {
                        println!(
                            "{:<14} {:<28} {:<22} {:<22} REVOKED",
                            "ID", "LABEL", "CREATED", "LAST USED"
                        );
                        for t in tokens {
                            println!(
                                "{:<14} {:<28} {:<22} {:<22} {}",
                                t.id,
                                t.label,
                                t.created_at,
                                t.last_used_at.as_deref().unwrap_or("never"),
                                t.revoked_at.as_deref().unwrap_or("-")
                            );
                        }
                    }
                    Ok(())
                }
                TokenCommand::Revoke { id } => {
                    ops::tokens::revoke(&store, &id).await?;
                    println!("revoked token {id}");
                    Ok(())
                }
            }
        }
    }
}

fn print_stats(stats: &ops::queue::Stats) {
    let age = |s: Option<i64>| s.map_or_else(|| "-".to_owned(), |s| format!("{s}s"));
    println!(
        "{:<28} {:>8} {:>8} {:>6} {:>12} WORKERS",
        "QUEUE", "PENDING", "RUNNING", "DEAD", "OLDEST DUE"
    );
    for q in &stats.queues {
        println!(
            "{:<28} {:>8} {:>8} {:>6} {:>12} {}",
            q.queue,
            q.pending,
            q.running,
            q.dead,
            age(q.oldest_due_secs),
            q.workers.len()
        );
        for w in &q.workers {
            let up = w.up_secs.map(|s| format!("up {s}s, ")).unwrap_or_default();
            println!(
                "    worker {} ({up}heartbeat {}s ago)",
                w.name, w.seen_secs_ago
            );
        }
    }
    println!();
    println!(
        "{:<16} {:>9} {:>9} {:>6}",
        "CHANGES", "APPLIED", "REJECTED", "DEAD"
    );
    for (label, o) in [
        ("last 5 minutes", &stats.last_5_minutes),
        ("last hour", &stats.last_hour),
        ("last day", &stats.last_day),
    ] {
        println!(
            "{label:<16} {:>9} {:>9} {:>6}",
            o.applied, o.rejected, o.dead
        );
    }
    println!(
        "throughput       {:.1} changes/minute (last 5 minutes)",
        stats.applied_per_minute
    );
    let m = &stats.mail;
    println!();
    println!(
        "mail outbox      {} pending, {} sending, {} sent ({} in the last hour), {} failed, {} cancelled; oldest owed {}",
        m.pending,
        m.sending,
        m.sent_total,
        m.sent_last_hour,
        m.failed_total,
        m.cancelled_total,
        age(m.oldest_owed_secs)
    );
}

/// Prints the log; `unresolved` leaves out dead changes already retried
/// or discarded (`queue list --state dead` lists what still needs a look).
async fn show_log(settings: &Settings, args: LogArgs, unresolved: bool) -> anyhow::Result<()> {
    let store = open_store(settings)?;
    let mut query = crate::store::log::LogQuery {
        outcome: args.outcome.clone(),
        subject: args.user.clone(),
        unresolved,
        ..Default::default()
    };
    if let Some(slug) = &args.org {
        let slug = slug.clone();
        let org = store
            .run(move |c| {
                crate::store::orgs::find_by_slug(c, &slug).map_err(crate::store::Error::from)
            })
            .await?
            .ok_or_else(|| {
                anyhow::anyhow!("no such organization; `scimsync org list` shows them")
            })?;
        query.org_id = Some(org.id);
    }
    if let Some(since) = &args.since {
        query.since = Some(ops::admin::parse_since(since, crate::store::now())?);
    }
    let mut printed_header = false;
    let mut follow = Follow::default();
    loop {
        let q = query.clone();
        let limit = args.limit;
        let mut rows = if follow.started {
            let from = follow.rescan_from();
            store
                .run(move |c| {
                    let mut rows = Vec::new();
                    let mut at = (from, String::new());
                    loop {
                        let page = crate::store::log::search_after(c, &q, (at.0, &at.1), 1000)?;
                        let full = page.len() == 1000;
                        if let Some(last) = page.last() {
                            at = (last.applied_at, last.change_id.clone());
                        }
                        rows.extend(page);
                        if !full {
                            break;
                        }
                    }
                    Ok::<_, crate::store::Error>(rows)
                })
                .await?
        } else {
            store
                .run(move |c| {
                    crate::store::log::search(c, &q, limit).map_err(crate::store::Error::from)
                })
                .await?
        };
        // Newest first, as documented; following reads like `tail -f`
        // instead, oldest first so new entries come below.
        if args.follow {
            if !follow.started {
                rows.reverse();
                follow.started = true;
            }
            rows.retain(|row| follow.first_sight(row));
            // Nothing yet: watch from now on.
            follow.newest.get_or_insert_with(crate::store::now);
        }
        for row in &rows {
            if args.output.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "change_id": row.change_id, "at": row.applied_at.and_utc().to_rfc3339(),
                        "org_id": row.org_id, "operation": row.operation, "resource_type": row.resource_type,
                        "resource_id": row.resource_id, "subject": row.subject, "outcome": row.outcome,
                        "status": row.status, "error": row.error, "attempts": row.attempts,
                        "duration_ms": row.duration_ms, "resolution": row.resolution,
                    })
                );
            } else {
                if !printed_header {
                    println!(
                        "{:<20} {:<8} {:<7} {:<32} {:<9} {:>4} {:>4} CHANGE / ERROR",
                        "TIME (UTC)", "OP", "TYPE", "SUBJECT", "OUTCOME", "HTTP", "TRY"
                    );
                    printed_header = true;
                }
                println!(
                    "{:<20} {:<8} {:<7} {:<32} {:<9} {:>4} {:>4} {}{}",
                    row.applied_at.format("%Y-%m-%d %H:%M:%S"),
                    row.operation,
                    row.resource_type,
                    row.subject
                        .as_deref()
                        .or(row.resource_id.as_deref())
                        .unwrap_or("-"),
                    row.outcome,
                    row.status,
                    row.attempts,
                    row.change_id,
                    row.error
                        .as_deref()
                        .map(|e| format!("  {e}"))
                        .unwrap_or_default()
                );
            }
        }
        if !args.follow {
            if rows.is_empty() && !args.output.json {
                println!("no matching entries");
            }
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// What `scimsync log --follow` has printed. A change's time is taken
/// when it is applied, before its commit, so a slower transaction can
/// commit an entry older than one already printed; each poll therefore
/// reads again from a while before the newest entry printed and skips
/// the change ids it has seen.
#[derive(Default)]
struct Follow {
    started: bool,
    /// Change ids printed within the look-back, with their times.
    seen: std::collections::HashMap<String, chrono::NaiveDateTime>,
    newest: Option<chrono::NaiveDateTime>,
}

impl Follow {
    /// How far back each poll reads: far longer than any transaction.
    const LOOK_BACK: chrono::TimeDelta = chrono::TimeDelta::seconds(60);

    /// Where the next poll starts reading.
    fn rescan_from(&self) -> chrono::NaiveDateTime {
        self.newest
            .map_or(chrono::NaiveDateTime::MIN, |n| n - Self::LOOK_BACK)
    }

    /// Whether `row` is new to the output; remembers it.
    fn first_sight(&mut self, row: &crate::store::log::LogRow) -> bool {
        if self.seen.contains_key(&row.change_id) {
            return false;
        }
        self.seen.insert(row.change_id.clone(), row.applied_at);
        if self.newest.is_none_or(|n| row.applied_at > n) {
            self.newest = Some(row.applied_at);
            let horizon = row.applied_at - Self::LOOK_BACK * 2;
            self.seen.retain(|_, at| *at >= horizon);
        }
        true
    }
}

/// The doctor's verdict on the queue's workers: alive means a heartbeat
/// within [`crate::jobs::queue::WorkerSeen::ALIVE_WITHIN_SECS`], since a worker that was
/// killed stays registered.
fn check_workers(workers: &[crate::jobs::queue::WorkerSeen]) -> bool {
    let alive = workers.iter().filter(|w| w.alive()).count();
    let message = match (alive, workers.iter().map(|w| w.seen_secs_ago).min()) {
        (0, None) => {
            "reachable, but no worker is registered: start `scimsync work` (or `scimsync run`)"
                .to_owned()
        }
        (0, Some(last)) => format!(
            "reachable, but no worker is alive: {} registered, the last heartbeat {last}s ago; start `scimsync work` (or `scimsync run`)",
            workers.len()
        ),
        (alive, _) => format!(
            "reachable, {alive} worker(s) alive{}",
            match workers.len() - alive {
                0 => String::new(),
                gone => format!(" ({gone} more registered without a recent heartbeat)"),
            }
        ),
    };
    check(alive > 0, "queue", &message)
}

/// One line of `doctor` output.
fn check(ok: bool, what: &str, detail: &str) -> bool {
    println!("{} {what}: {detail}", if ok { "ok  " } else { "FAIL" });
    ok
}

/// Something that works today but will hurt; does not fail the check.
fn warn(what: &str, detail: &str) {
    println!("warn {what}: {detail}");
}

async fn doctor(settings: &Settings) -> anyhow::Result<()> {
    let mut healthy = true;
    healthy &= check(true, "configuration", &describe_backends(settings)?);
    let store = open_store(settings)?;
    match store.ping().await {
        Ok(()) => {
            check(true, "database", "reachable");
            if let Ok(true) = store.autovacuum_off().await {
                warn(
                    "database statistics",
                    "PostgreSQL's autovacuum is off, so tables never get statistics and lookups \
                     slow down as tenants grow; turn it on (autovacuum = on) or run ANALYZE regularly",
                );
            }
            match store.pending_migrations().await {
                Ok(p) if p.is_empty() => {
                    check(true, "migrations", "all applied");
                }
                Ok(p) => {
                    healthy &= check(
                        false,
                        "migrations",
                        &format!(
                            "{} pending ({}); run `scimsync migrate`",
                            p.len(),
                            p.join(", ")
                        ),
                    );
                }
                Err(e) => healthy &= check(false, "migrations", &format!("{e:#}")),
            }
        }
        Err(e) => {
            // libpq's messages span lines; one line per check keeps the list readable.
            let cause = e
                .to_string()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            let hint = if cause.contains("does not exist") {
                "create it (e.g. `createdb NAME`) or correct the name in DATABASE_URL"
            } else {
                "is it running, and is DATABASE_URL right?"
            };
            healthy &= check(false, "database", &format!("{cause}; {hint}"))
        }
    }
    match crate::jobs::Queue::<crate::jobs::ScimChange>::connect_once(
        &settings.queue_url()?,
        &settings.queue.name,
    )
    .await
    {
        Ok(q) => match q.ping().await {
            Ok(()) => {
                let workers = q.depth().await.map(|d| d.workers).unwrap_or_default();
                healthy &= check_workers(&workers);
            }
            Err(e) => healthy &= check(false, "queue", &format!("{e:#}")),
        },
        Err(e) => healthy &= check(false, "queue", &format!("{e:#}")),
    }
    match crate::email::Transport::from_url(&settings.mail_url()) {
        Ok(t) => {
            check(
                true,
                "mail transport",
                &format!(
                    "{} (send a real message with `scimsync mail test ADDRESS`)",
                    t.describe()
                ),
            );
        }
        Err(e) => healthy &= check(false, "mail transport", &format!("{e:#}")),
    }
    let admin = &settings.admin;
    if !admin.enabled() {
        check(
            true,
            "admin pages",
            "off (set [admin] password or SCIMSYNC_ADMIN__PASSWORD to turn them on)",
        );
    } else if admin.password.chars().count() < crate::http::admin::auth::MIN_PASSWORD_CHARS {
        healthy &= check(
            false,
            "admin pages",
            &format!(
                "off: the admin password is shorter than {} characters; choose a longer one",
                crate::http::admin::auth::MIN_PASSWORD_CHARS
            ),
        );
    } else {
        check(
            true,
            "admin pages",
            &format!("on at {}/admin", settings.public_url()),
        );
    }
    if healthy {
        println!("everything looks right");
        Ok(())
    } else {
        anyhow::bail!("doctor found problems (marked FAIL above)")
    }
}

async fn org_id_of(store: &Store, slug: &str) -> anyhow::Result<String> {
    let slug = slug.to_owned();
    Ok(store
        .run(move |c| crate::store::orgs::find_by_slug(c, &slug).map_err(crate::store::Error::from))
        .await?
        .ok_or_else(|| anyhow::anyhow!("no such organization; `scimsync org list` shows them"))?
        .id)
}

fn print_change(row: &crate::store::log::LogRow) {
    println!("change      {}", row.change_id);
    println!(
        "operation   {} {} {}",
        row.operation,
        row.resource_type,
        row.resource_id.as_deref().unwrap_or("-")
    );
    println!("subject     {}", row.subject.as_deref().unwrap_or("-"));
    println!("outcome     {} (HTTP {})", row.outcome, row.status);
    println!("attempts    {}", row.attempts);
    println!("received    {}", row.received_at.and_utc().to_rfc3339());
    println!(
        "finished    {} ({} ms)",
        row.applied_at.and_utc().to_rfc3339(),
        row.duration_ms
    );
    if let Some(e) = &row.error {
        println!("error       {e}");
    }
    if let Some(r) = &row.resolution {
        println!("resolution  {r}");
    }
    if let Some(req) = &row.request {
        println!("request     {req}");
    }
    if let Some(resp) = &row.response {
        println!("answer      {resp}");
    }
}

async fn queue_command(settings: &Settings, cmd: QueueCommand) -> anyhow::Result<()> {
    let store = open_store(settings)?;
    match cmd {
        QueueCommand::Stats(out) => {
            let changes: crate::jobs::Queue<crate::jobs::ScimChange> =
                crate::jobs::Queue::connect(&settings.queue_url()?, &settings.queue.name).await?;
            let mail = changes.sibling(&format!("{}-mail", settings.queue.name));
            let stats = ops::queue::stats(&store, &changes, &mail).await?;
            if out.json {
                println!("{}", serde_json::to_string_pretty(&stats)?);
            } else {
                print_stats(&stats);
            }
            Ok(())
        }
        QueueCommand::List {
            state,
            org,
            limit,
            output,
        } => {
            let unresolved = state == "dead";
            show_log(
                settings,
                LogArgs {
                    org: org.clone(),
                    user: None,
                    outcome: Some(state),
                    since: None,
                    limit,
                    follow: false,
                    output,
                },
                unresolved,
            )
            .await
        }
        QueueCommand::Show { id, output } => {
            let key = id.clone();
            let row = store
                .run(move |c| crate::store::log::find(c, &key).map_err(crate::store::Error::from))
                .await?
                .ok_or_else(|| anyhow::anyhow!("no change {id} in the provisioning log"))?;
            if output.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "change_id": row.change_id, "operation": row.operation,
                        "resource_type": row.resource_type, "resource_id": row.resource_id,
                        "subject": row.subject, "outcome": row.outcome, "status": row.status,
                        "attempts": row.attempts, "error": row.error, "resolution": row.resolution,
                        "received_at": row.received_at.and_utc().to_rfc3339(),
                        "finished_at": row.applied_at.and_utc().to_rfc3339(),
                        "duration_ms": row.duration_ms,
                        "request": row.request.as_deref().and_then(|r| serde_json::from_str::<serde_json::Value>(r).ok()),
                        "answer": row.response.as_deref().and_then(|r| serde_json::from_str::<serde_json::Value>(r).ok()),
                    })
                );
            } else {
                print_change(&row);
            }
            Ok(())
        }
        QueueCommand::Retry {
            id,
            dead,
            org,
            dry_run,
        } => {
            let queue: crate::jobs::Queue<crate::jobs::ScimChange> =
                crate::jobs::Queue::connect(&settings.queue_url()?, &settings.queue.name).await?;
            let max = settings.queue.max_deliveries;
            if dead {
                let org_id = match &org {
                    Some(slug) => Some(org_id_of(&store, slug).await?),
                    None => None,
                };
                let report = ops::queue::retry_dead(&store, &queue, org_id, dry_run, max).await?;
                if dry_run {
                    println!("{} dead change(s) would be retried", report.dead);
                    return Ok(());
                }
                for (old, new) in &report.retried {
                    println!("retried {old} as {new}");
                }
                for e in &report.errors {
                    eprintln!("not retried: {e}");
                }
                println!(
                    "{} of {} dead change(s) retried",
                    report.retried.len(),
                    report.dead
                );
                if !report.errors.is_empty() {
                    anyhow::bail!("{} change(s) could not be retried", report.errors.len());
                }
                return Ok(());
            }
            let id = id.unwrap_or_default();
            if dry_run {
                let row = ops::queue::retryable(&store, &id).await?;
                println!(
                    "would retry {id} ({} {} {})",
                    row.operation,
                    row.resource_type,
                    row.subject.as_deref().unwrap_or("-")
                );
                return Ok(());
            }
            let new = ops::queue::retry(&store, &queue, &id, max).await?;
            println!("retried {id} as {new}; follow it with `scimsync queue show {new}`");
            Ok(())
        }
        QueueCommand::Discard { id, reason } => {
            ops::queue::discard(&store, &id, &reason).await?;
            println!("discarded {id}");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Follow, check_workers};
    use crate::jobs::queue::WorkerSeen;
    use crate::store::log::LogRow;

    #[test]
    fn doctor_counts_only_workers_with_a_recent_heartbeat() {
        let seen = |secs| WorkerSeen::new(format!("work-host-1-{secs}"), secs);
        assert!(!check_workers(&[]), "none registered");
        assert!(
            !check_workers(&[seen(3600), seen(21)]),
            "registered, all gone quiet"
        );
        assert!(check_workers(&[seen(3600), seen(4)]), "one alive");
    }

    fn entry(id: &str, secs: i64) -> LogRow {
        let at = chrono::DateTime::from_timestamp(1_800_000_000 + secs, 0)
            .expect("time")
            .naive_utc();
        LogRow::applied_at(id, at)
    }

    #[test]
    fn following_prints_each_entry_once_even_when_an_older_one_commits_late() {
        let mut follow = Follow::default();
        assert!(follow.first_sight(&entry("a", 0)));
        assert!(follow.first_sight(&entry("b", 10)));
        // The next poll reads again from a minute before the newest entry.
        assert_eq!(
            follow.rescan_from(),
            entry("b", 10).applied_at - Follow::LOOK_BACK
        );
        // It sees a and b again, and c: applied before b, committed after.
        assert!(!follow.first_sight(&entry("a", 0)));
        assert!(follow.first_sight(&entry("c", 5)));
        assert!(!follow.first_sight(&entry("b", 10)));
        // Entries far behind the newest are forgotten, not kept forever.
        assert!(follow.first_sight(&entry("d", 1_000)));
        assert!(!follow.seen.contains_key("a"));
        assert!(follow.seen.contains_key("d"));
    }
}
