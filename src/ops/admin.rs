//! What the admin pages show besides queue figures and organizations:
//! health, activity per organization, the provisioning log page by page,
//! one change, and user lookup. Plain data; the pages only render it.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, bail};
use chrono::{NaiveDateTime, TimeDelta};

use crate::jobs::{Queue, ScimChange};
use crate::store::admin::{self as queries, LogFilter, OutcomeFilter};
use crate::store::log::LogRow;
use crate::store::teams::{TeamQuery, TeamRow};
use crate::store::users::{UserQuery, UserRow};
use crate::store::{self, Conn, Order, Store, now, orgs, teams, users};

/// Whether the database and the queue answer: the checks of `/readyz`.
#[derive(Debug, Clone)]
pub struct Health {
    /// `None` when it answered, else why not.
    pub database: Option<String>,
    pub queue: Option<String>,
}

pub async fn health(store: &Store, queue: &Queue<ScimChange>) -> Health {
    let limit = Duration::from_secs(3);
    let database = match tokio::time::timeout(limit, store.ping()).await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some("no answer within 3 s".to_owned()),
    };
    let queue = match tokio::time::timeout(limit, queue.ping()).await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(format!("{e:#}")),
        Err(_) => Some("no answer within 3 s".to_owned()),
    };
    Health { database, queue }
}

/// One organization's provisioning over the last minutes.
#[derive(Debug, Clone, Default)]
pub struct OrgActivity {
    pub slug: String,
    pub name: String,
    pub applied_5m: i64,
    pub failed_5m: i64,
    /// Changes applied per minute over the last five minutes.
    pub per_minute: f64,
    pub applied_hour: i64,
    pub failed_hour: i64,
    /// When its newest change was logged.
    pub last_at: Option<NaiveDateTime>,
    /// Its users now.
    pub users: i64,
}

/// Organizations with changes in the last hour, busiest first.
///
/// There is no time-left estimate: scimsync cannot know how many changes
/// Entra ID will still send in a cycle, so any figure would be invented.
pub async fn activity(store: &Store) -> anyhow::Result<Vec<OrgActivity>> {
    store
        .run(|c| {
            let at = now();
            let hour = queries::activity_since(c, at - TimeDelta::hours(1))?;
            let five = queries::activity_since(c, at - TimeDelta::minutes(5))?;
            let mut by_org: HashMap<String, OrgActivity> = HashMap::new();
            for row in hour {
                let a = by_org.entry(row.org_id).or_default();
                if row.outcome == "applied" {
                    a.applied_hour += row.count;
                } else {
                    a.failed_hour += row.count;
                }
                a.last_at = a.last_at.max(row.last_at);
            }
            for row in five {
                let a = by_org.entry(row.org_id).or_default();
                if row.outcome == "applied" {
                    a.applied_5m += row.count;
                } else {
                    a.failed_5m += row.count;
                }
            }
            let mut out = Vec::with_capacity(by_org.len());
            for (org_id, mut a) in by_org {
                if let Some(org) = orgs::find(c, &org_id)? {
                    a.slug = org.slug;
                    a.name = org.name;
                }
                a.users = users::count(c, &org_id, &UserQuery::default())?;
                a.per_minute = a.applied_5m as f64 / 5.0;
                out.push(a);
            }
            out.sort_by(|a, b| {
                (b.applied_5m, b.applied_hour, &a.slug).cmp(&(
                    a.applied_5m,
                    a.applied_hour,
                    &b.slug,
                ))
            });
            Ok::<_, store::Error>(out)
        })
        .await
        .context("cannot read the provisioning activity")
}

/// A log entry with its organization's slug.
#[derive(Debug, Clone)]
pub struct Entry {
    pub org: String,
    pub row: LogRow,
}

fn slugs(c: &mut Conn) -> Result<HashMap<String, String>, store::Error> {
    Ok(orgs::list(c)?.into_iter().map(|o| (o.id, o.slug)).collect())
}

fn entries(c: &mut Conn, rows: Vec<LogRow>) -> Result<Vec<Entry>, store::Error> {
    let slugs = slugs(c)?;
    Ok(rows
        .into_iter()
        .map(|row| Entry {
            org: slugs.get(&row.org_id).cloned().unwrap_or_default(),
            row,
        })
        .collect())
}

/// The newest rejected or dead changes across organizations.
pub async fn recent_failures(store: &Store, limit: i64) -> anyhow::Result<Vec<Entry>> {
    store
        .run(move |c| {
            let rows = queries::recent_failures(c, limit)?;
            entries(c, rows)
        })
        .await
        .context("cannot read recent failures")
}

/// How many dead changes `queue retry --dead` would retry now.
pub async fn dead_count(store: &Store) -> anyhow::Result<i64> {
    store
        .run(|c| queries::count_unresolved_dead(c, None).map_err(store::Error::from))
        .await
        .context("cannot count dead changes")
}

/// What the log page asks for.
#[derive(Debug, Clone, Default)]
pub struct LogSearch {
    /// An organization's slug.
    pub org: Option<String>,
    /// A userName or displayName as logged, or a resource id.
    pub user: Option<String>,
    /// `applied`, `rejected`, `dead`, or `failed` (rejected or dead).
    pub outcome: Option<String>,
    pub since: Option<NaiveDateTime>,
    /// Where the page starts: the last entry of the previous one.
    pub before: Option<(NaiveDateTime, String)>,
    pub limit: i64,
}

/// One page of the log, and where the next (older) one starts.
#[derive(Debug, Clone)]
pub struct LogPage {
    pub entries: Vec<Entry>,
    pub older: Option<(NaiveDateTime, String)>,
}

pub async fn log_page(store: &Store, search: LogSearch) -> anyhow::Result<LogPage> {
    let outcome = match search.outcome.as_deref() {
        None => None,
        Some("failed") => Some(OutcomeFilter::Failed),
        Some(o @ ("applied" | "rejected" | "dead")) => Some(OutcomeFilter::Is(o.to_owned())),
        Some(other) => bail!("unknown outcome \"{other}\": use applied, rejected, dead or failed"),
    };
    let limit = search.limit.clamp(1, 500);
    store
        .run(move |c| -> anyhow::Result<LogPage> {
            let org_id = match &search.org {
                Some(slug) => match orgs::find_by_slug(c, slug)? {
                    Some(org) => Some(org.id),
                    None => bail!("no organization \"{slug}\""),
                },
                None => None,
            };
            let filter = LogFilter {
                org_id,
                outcome,
                user: search.user,
                since: search.since,
                before: search.before,
            };
            // One more than shown tells whether there is an older page.
            let mut rows = queries::log_page(c, &filter, limit + 1)?;
            let more = rows.len() as i64 > limit;
            rows.truncate(usize::try_from(limit).unwrap_or(0));
            let older = more
                .then(|| rows.last().map(|r| (r.applied_at, r.change_id.clone())))
                .flatten();
            Ok(LogPage {
                entries: entries(c, rows)?,
                older,
            })
        })
        .await
}

/// One change from the log, if it is there (a queued change is not yet).
pub async fn change(store: &Store, change_id: &str) -> anyhow::Result<Option<Entry>> {
    let id = change_id.to_owned();
    store
        .run(move |c| {
            let Some(row) = crate::store::log::find(c, &id)? else {
                return Ok(None);
            };
            Ok::<_, store::Error>(entries(c, vec![row])?.pop())
        })
        .await
        .context("cannot read the change")
}

/// A user found by lookup, with what an operator asks about them.
#[derive(Debug, Clone)]
pub struct UserFound {
    pub org: String,
    pub user: UserRow,
    /// The user as a SCIM GET returns it.
    pub scim: serde_json::Value,
    pub teams: Vec<TeamRow>,
    pub log: Vec<LogRow>,
}

/// Users of one organization (or of each) whose id, userName (in any
/// case), externalId or email is `q`; `base_url` is `<public_url>/scim/v2`.
pub async fn find_users(
    store: &Store,
    org: Option<&str>,
    q: &str,
    base_url: &str,
) -> anyhow::Result<Vec<UserFound>> {
    let q = q.trim().to_owned();
    if q.is_empty() {
        return Ok(Vec::new());
    }
    let org = org.map(str::to_owned);
    let base = base_url.to_owned();
    store
        .run(move |c| -> anyhow::Result<Vec<UserFound>> {
            let scope = match &org {
                Some(slug) => match orgs::find_by_slug(c, slug)? {
                    Some(o) => vec![o],
                    None => bail!("no organization \"{slug}\""),
                },
                None => orgs::list(c)?,
            };
            let key = q.to_lowercase();
            let lookups = [
                UserQuery {
                    id: Some(q.clone()),
                    ..Default::default()
                },
                UserQuery {
                    user_name_key: Some(key.clone()),
                    ..Default::default()
                },
                UserQuery {
                    external_id: Some(q.clone()),
                    ..Default::default()
                },
                UserQuery {
                    email_key: Some(key.clone()),
                    ..Default::default()
                },
            ];
            let mut found = Vec::new();
            for o in scope {
                let mut seen = std::collections::HashSet::new();
                for lookup in &lookups {
                    for user in users::page(c, &o.id, lookup, Order::default(), 0, 20)? {
                        if !seen.insert(user.id.clone()) {
                            continue;
                        }
                        let member_of = TeamQuery {
                            member_id: Some(user.id.clone()),
                            ..Default::default()
                        };
                        let teams = teams::page(c, &o.id, &member_of, Order::default(), 0, 200)?;
                        let log = queries::user_log(c, &o.id, &user.id, &user.user_name, 20)?;
                        let scim = crate::reconcile::apply::render_user(&user, &base)?;
                        found.push(UserFound {
                            org: o.slug.clone(),
                            user,
                            scim,
                            teams,
                            log,
                        });
                    }
                }
            }
            Ok(found)
        })
        .await
}

/// Reads a "since" as an age back from `at` (`30s`, `15m`, `2h`, `7d`) or a
/// UTC time (`2026-11-28`, `2026-11-28 09:30`, RFC 3339).
pub fn parse_since(text: &str, at: NaiveDateTime) -> anyhow::Result<NaiveDateTime> {
    let text = text.trim();
    let hint = || {
        anyhow::anyhow!(
            "\"{text}\" is neither an age (30s, 15m, 2h, 7d) nor a UTC time (2026-11-28 09:30)"
        )
    };
    if let Some(unit) = text.chars().last().filter(|c| "smhd".contains(*c))
        && let Ok(n) = text[..text.len() - 1].parse::<i64>()
    {
        let age = match unit {
            's' => TimeDelta::try_seconds(n),
            'm' => TimeDelta::try_minutes(n),
            'h' => TimeDelta::try_hours(n),
            _ => TimeDelta::try_days(n),
        }
        .ok_or_else(hint)?;
        return at.checked_sub_signed(age).ok_or_else(hint);
    }
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(t.naive_utc());
    }
    for format in [
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%dT%H:%M",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(text, format) {
            return Ok(t);
        }
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(d.and_time(chrono::NaiveTime::MIN));
    }
    Err(hint())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at() -> NaiveDateTime {
        NaiveDateTime::parse_from_str("2026-11-28 12:00:00", "%Y-%m-%d %H:%M:%S").expect("time")
    }

    #[test]
    fn since_takes_ages_and_utc_times() {
        let t = |s| parse_since(s, at()).expect(s).to_string();
        assert_eq!(t("15m"), "2026-11-28 11:45:00");
        assert_eq!(t("2h"), "2026-11-28 10:00:00");
        assert_eq!(t("1d"), "2026-11-27 12:00:00");
        assert_eq!(t("2026-11-01"), "2026-11-01 00:00:00");
        assert_eq!(t("2026-11-01 08:30"), "2026-11-01 08:30:00");
        assert_eq!(t("2026-11-01T08:30:00+01:00"), "2026-11-01 07:30:00");
    }

    #[test]
    fn since_refuses_anything_else_with_examples() {
        let err = parse_since("yesterday", at())
            .expect_err("refused")
            .to_string();
        assert!(err.contains("15m"), "{err}");
        assert!(parse_since("99999999999999d", at()).is_err());
    }
}
