//! Organizations: create, list, and the first-start default.

use anyhow::{Context, bail};

use crate::store::{Store, orgs};

/// An organization as listed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct OrgInfo {
    pub slug: String,
    pub name: String,
    pub notify_email: Option<String>,
    pub created_at: String,
}

impl From<orgs::Org> for OrgInfo {
    fn from(o: orgs::Org) -> Self {
        OrgInfo {
            slug: o.slug,
            name: o.name,
            notify_email: o.notify_email,
            created_at: o
                .created_at
                .and_utc()
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        }
    }
}

/// Slugs are short lower-case names used in URLs and commands.
fn check_slug(slug: &str) -> anyhow::Result<()> {
    let ok = !slug.is_empty()
        && slug.len() <= 63
        && slug
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !slug.starts_with('-');
    if !ok {
        bail!(
            "\"{slug}\" is not a valid slug: use 1-63 lower-case letters, digits and dashes, e.g. acme-corp"
        );
    }
    Ok(())
}

pub async fn create(
    store: &Store,
    slug: &str,
    name: Option<&str>,
    notify: Option<&str>,
) -> anyhow::Result<OrgInfo> {
    check_slug(slug)?;
    if let Some(email) = notify
        && !email.contains('@')
    {
        bail!("--notify must be an email address, got \"{email}\"");
    }
    let slug = slug.to_owned();
    let name = name.unwrap_or(&slug).to_owned();
    let notify = notify.map(str::to_owned);
    store
        .run(move |c| -> anyhow::Result<OrgInfo> {
            if orgs::find_by_slug(c, &slug)?.is_some() {
                bail!("an organization \"{slug}\" already exists");
            }
            Ok(orgs::insert(c, &slug, &name, notify.as_deref())?.into())
        })
        .await
        .context("cannot create the organization")
}

pub async fn list(store: &Store) -> anyhow::Result<Vec<OrgInfo>> {
    let rows = store
        .run(|c| orgs::list(c).map_err(crate::store::Error::from))
        .await?;
    Ok(rows.into_iter().map(OrgInfo::from).collect())
}

/// On an empty database, creates the organization `default`; returns
/// whether it did, and so whether this process is to issue its first token.
/// Does nothing otherwise.
pub async fn bootstrap_default(store: &Store) -> anyhow::Result<bool> {
    let count = store
        .run(|c| orgs::count(c).map_err(crate::store::Error::from))
        .await?;
    if count > 0 {
        return Ok(false);
    }
    if let Err(e) = create(store, "default", Some("Default organization"), None).await {
        // Another process starting on the same empty database made it
        // first (its slug is unique), and issues its token.
        let made = store
            .run(|c| orgs::find_by_slug(c, "default").map_err(crate::store::Error::from))
            .await?;
        return if made.is_some() { Ok(false) } else { Err(e) };
    }
    Ok(true)
}

/// Sets (or clears) where an organization's failure digests go.
pub async fn set_notify(store: &Store, slug: &str, email: Option<&str>) -> anyhow::Result<()> {
    if let Some(e) = email
        && !e.contains('@')
    {
        bail!("\"{e}\" is not an email address");
    }
    let slug = slug.to_owned();
    let email = email.map(str::to_owned);
    let found = store
        .run(move |c| {
            orgs::set_notify_email(c, &slug, email.as_deref()).map_err(crate::store::Error::from)
        })
        .await?;
    if !found {
        bail!("no such organization; `scimsync org list` shows them");
    }
    Ok(())
}

/// One organization with its counts, for `org show` and the admin pages.
#[derive(Debug, Clone, serde::Serialize)]
pub struct OrgDetail {
    pub info: OrgInfo,
    pub users: i64,
    pub active_users: i64,
    pub joined_users: i64,
    pub teams: i64,
    pub tokens: usize,
    pub live_tokens: usize,
    pub failures_last_day: i64,
}

pub async fn show(store: &Store, slug: &str) -> anyhow::Result<OrgDetail> {
    let slug = slug.to_owned();
    store
        .run(move |c| -> anyhow::Result<OrgDetail> {
            let Some(org) = orgs::find_by_slug(c, &slug)? else {
                bail!("no organization \"{slug}\"; `scimsync org list` shows them");
            };
            let counts = crate::store::users::counts(c, &org.id)?;
            let teams = crate::store::teams::count(c, &org.id, &Default::default())?;
            let tokens = crate::store::tokens::list_for_org(c, &org.id)?;
            let at = crate::store::now();
            let failures = crate::store::log::count_failures_between(
                c,
                &org.id,
                at - chrono::TimeDelta::days(1),
                at,
            )?;
            Ok(OrgDetail {
                users: counts.0,
                active_users: counts.1,
                joined_users: counts.2,
                teams,
                live_tokens: tokens.iter().filter(|t| t.revoked_at.is_none()).count(),
                tokens: tokens.len(),
                failures_last_day: failures,
                info: org.into(),
            })
        })
        .await
}
