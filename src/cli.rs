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
    /// and on first start creates the organization "default" and prints a
    /// token for it.
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
        /// Address that receives failure notifications.
        #[arg(long, value_name = "EMAIL")]
        notify: Option<String>,
    },
    /// List organizations.
    List(Output),
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
    let app = Application::build(settings, role, role == Role::All).await?;
    if role == Role::All
        && let Some(issued) = ops::orgs::bootstrap_default(app.store()).await?
    {
        print_first_start(app.public_url(), &issued.token);
    }
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        trigger.cancel();
    });
    app.run_until(token).await
}

fn print_first_start(public_url: &str, token: &str) {
    println!(
        "\nCreated the organization \"default\" and its first SCIM token. It is shown only now:\n\n    {token}\n\n\
         In Entra ID, set the Tenant URL to {public_url}/scim/v2 and the Secret Token to the value above.\n\
         Try it:\n\n    curl -s -H 'Authorization: Bearer {token}' '{public_url}/scim/v2/Users?filter=userName%20eq%20%22x%22'\n"
    );
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
