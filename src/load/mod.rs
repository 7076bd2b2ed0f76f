//! `scimsync load`: replays Microsoft Entra ID's provisioning traffic
//! against a SCIM endpoint and reports throughput, latency, errors, how long
//! until everything was applied and mailed, and the server's memory.
//!
//! The run follows Entra's cycle (docs/entra.md §1–2): Test Connection; each user
//! looked up by userName, then created; each group looked up by displayName
//! (without members), then created; members added in batches; then an
//! incremental cycle of attribute updates, deactivations and member
//! removals. Requests run with bounded concurrency from one task: the
//! simulator stays light next to the server it measures on the same cores.
//!
//! With several concurrency levels the user phase is a sweep: it runs once
//! per level, each level on users of its own, and the report gets a row per
//! level; [`chart`] draws throughput and latency against concurrency.

pub mod chart;
pub mod client;
pub mod cpu;
pub mod data;
pub mod mail;
pub mod memory;
pub mod scaling;
pub mod stats;

use std::collections::HashSet;
use std::io::IsTerminal;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use futures::stream::{self, StreamExt};
use tokio_util::sync::{CancellationToken, DropGuard};

use client::{Client, Found};
use data::{Change, Plan, Spec};
use stats::{Level, Op, Outcome, Phase, PhaseTime, Recorder};

pub use stats::Report;

/// A SCIM bearer token: its Debug output never shows it, and nothing in
/// this module prints or logs it.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value, for the Authorization header only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl std::str::FromStr for Secret {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() {
            return Err("the token is empty".to_owned());
        }
        Ok(Secret::new(s))
    }
}

/// Whether progress lines go to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressLines {
    /// Every second on a terminal, every 5 s otherwise.
    Auto,
    Off,
}

/// One run: where, what, how hard, and what else to watch.
#[derive(Debug, Clone)]
pub struct Options {
    /// The SCIM base URL; every request goes below it.
    pub url: url::Url,
    pub token: Secret,
    /// The tenant to generate; with a sweep, `users` is per level.
    pub spec: Spec,
    /// Members per add-members PATCH.
    pub member_batch: usize,
    /// Requests in flight at once. Several values make a sweep: the user
    /// phase runs once per value, in this order, each on `spec.users` users
    /// of its own; groups, members and the incremental cycle then run once,
    /// at the last value, over all of them.
    pub concurrency: Vec<usize>,
    /// The service's file-transport mail directory: wait for every welcome
    /// email there.
    pub mail_dir: Option<PathBuf>,
    /// How long to wait for the welcome emails after the last request.
    pub mail_timeout: Duration,
    /// Server processes whose memory to sample.
    pub pids: Vec<u32>,
    pub progress: ProgressLines,
    /// Where to write the charts (see [`chart`]); created if missing.
    pub chart_dir: Option<PathBuf>,
}

/// How often server memory is sampled.
const MEMORY_SAMPLE_EVERY: Duration = Duration::from_millis(200);

/// How one user or group ended up.
#[derive(Debug, Clone)]
enum Provisioned {
    Created(String),
    /// The lookup found it; Entra would match it instead of creating it.
    Existing(String),
    Failed,
}

impl Provisioned {
    fn id(&self) -> Option<&str> {
        match self {
            Provisioned::Created(id) | Provisioned::Existing(id) => Some(id),
            Provisioned::Failed => None,
        }
    }
}

/// Runs the whole simulation and returns what it measured. Fails early,
/// with the reason, when Test Connection does not pass; failures after
/// that are counted in the report instead.
pub async fn run(options: Options) -> anyhow::Result<Report> {
    let levels = options.concurrency.clone();
    let Some(&width) = levels.last() else {
        anyhow::bail!("--concurrency needs at least one value");
    };
    if levels.contains(&0) {
        anyhow::bail!("--concurrency must be at least 1");
    }
    if levels.iter().collect::<HashSet<_>>().len() < levels.len() {
        anyhow::bail!("--concurrency: each level once, got {levels:?}");
    }
    if options.member_batch == 0 {
        anyhow::bail!("--member-batch must be at least 1");
    }
    let per_level = options.spec.users;
    let Some(all_users) = per_level.checked_mul(levels.len()) else {
        anyhow::bail!("--users × the number of --concurrency levels is too large");
    };
    if let Some(dir) = &options.chart_dir {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create --chart-dir {}", dir.display()))?;
    }
    let plan = Plan::generate(Spec {
        users: all_users,
        ..options.spec
    });
    let batch = options.member_batch;
    let batches: usize = plan
        .groups
        .iter()
        .map(|g| g.members.len().div_ceil(batch))
        .sum();
    let planned = 1 + 2 * plan.users.len() + 2 * plan.groups.len() + batches + plan.changes.len();
    let recorder = Arc::new(Recorder::new(planned as u64));
    let started_at = SystemTime::now();
    let client = Client::new(&options.url, options.token.clone(), recorder.clone())?;
    let memory = memory::Sampler::start(&options.pids, MEMORY_SAMPLE_EVERY);
    let progress = progress_lines(recorder.clone(), options.progress);
    let mut phases = Vec::new();
    let mut skipped = 0usize;
    let mut skip = |n: usize| {
        skipped += n;
        recorder.unplanned(n as u64);
    };

    // Test Connection: nothing else makes sense if it fails.
    let phase = Instant::now();
    recorder.set_phase(Phase::TestConnection);
    match client.test_connection().await {
        Outcome::Ok => {}
        Outcome::Status(s @ (401 | 403)) => anyhow::bail!(
            "Test Connection was refused with {s}: check --token (or SCIMSYNC_LOAD_TOKEN); \
             `scimsync token create ORG` issues one"
        ),
        Outcome::Status(s) => anyhow::bail!(
            "Test Connection was answered {s} instead of 200 with an empty list: \
             is {} the SCIM base URL (…/scim/v2)?",
            options.url
        ),
        Outcome::BadBody => anyhow::bail!(
            "Test Connection was answered 2xx but not with an empty ListResponse: \
             is {} a SCIM endpoint?",
            options.url
        ),
        Outcome::Transport(_) => anyhow::bail!(
            "Test Connection got no answer from {}: is the service running there?",
            options.url
        ),
    }
    phases.push(PhaseTime::new(Phase::TestConnection, phase.elapsed()));

    // Users: look up, then create what is missing; once per level of a
    // sweep, each level on users of its own.
    let phase = Instant::now();
    let phase_cpu = cpu::Snapshot::take(&options.pids);
    recorder.set_phase(Phase::Users);
    let mut users = vec![Provisioned::Failed; plan.users.len()];
    let mut existing_users = 0;
    let mut sweep = Vec::with_capacity(levels.len());
    for (&level_width, range) in levels.iter().zip(level_users(per_level, levels.len())) {
        if levels.len() > 1 && options.progress != ProgressLines::Off {
            eprintln!(
                "load: concurrency {level_width}, users {}..{}",
                range.start, range.end
            );
        }
        let level = Instant::now();
        let level_cpu = cpu::Snapshot::take(&options.pids);
        recorder.begin_level();
        let mut results = stream::iter(
            plan.users
                .iter()
                .enumerate()
                .skip(range.start)
                .take(range.len()),
        )
        .map(|(i, user)| {
            let client = &client;
            async move {
                let got = match client.find_user(user).await {
                    Found::Missing => client
                        .create_user(user)
                        .await
                        .map_or(Provisioned::Failed, Provisioned::Created),
                    Found::Existing(id) => Provisioned::Existing(id),
                    Found::Failed => Provisioned::Failed,
                };
                (i, got)
            }
        })
        .buffer_unordered(level_width);
        let mut provisioned = 0;
        while let Some((i, got)) = results.next().await {
            // No create after a lookup that found it, or that failed.
            match got {
                Provisioned::Created(_) => provisioned += 1,
                Provisioned::Existing(_) => {
                    provisioned += 1;
                    existing_users += 1;
                    recorder.unplanned(1);
                }
                Provisioned::Failed => skip(1),
            }
            if let Some(slot) = users.get_mut(i) {
                *slot = got;
            }
        }
        drop(results);
        let level_secs = level.elapsed();
        let level_cpu = level_cpu
            .until(&cpu::Snapshot::take(&options.pids))
            .map(|used| used.for_users(provisioned));
        // The next level starts once this one's welcome emails are out, so
        // that sending them does not weigh on the next level's figures.
        if levels.len() > 1
            && let Some(dir) = &options.mail_dir
        {
            let planned = plan.users.get(range.clone()).unwrap_or_default();
            let got = users.get(range.clone()).unwrap_or_default();
            let expected: HashSet<String> = planned
                .iter()
                .zip(got)
                .filter(|(_, p)| matches!(p, Provisioned::Created(_)))
                .map(|(u, _)| u.user_name.to_ascii_lowercase())
                .collect();
            mail::wait_for_welcomes(dir.clone(), expected, started_at, options.mail_timeout).await;
        }
        sweep.push(Level::new(
            level_width,
            range,
            provisioned,
            level_secs,
            recorder.end_level(),
            level_cpu,
        ));
    }
    let provisioned_users = users.iter().filter(|u| u.id().is_some()).count();
    let user_cpu = phase_cpu
        .until(&cpu::Snapshot::take(&options.pids))
        .map(|used| used.for_users(provisioned_users));
    phases.push(PhaseTime::new(Phase::Users, phase.elapsed()));

    // Groups: look up without members, then create what is missing.
    let phase = Instant::now();
    recorder.set_phase(Phase::Groups);
    let mut groups = vec![Provisioned::Failed; plan.groups.len()];
    let mut results = stream::iter(plan.groups.iter().enumerate())
        .map(|(i, group)| {
            let client = &client;
            async move {
                let got = match client.find_group(group).await {
                    Found::Missing => client
                        .create_group(group)
                        .await
                        .map_or(Provisioned::Failed, Provisioned::Created),
                    Found::Existing(id) => Provisioned::Existing(id),
                    Found::Failed => Provisioned::Failed,
                };
                (i, got)
            }
        })
        .buffer_unordered(width);
    let mut existing_groups = 0;
    while let Some((i, got)) = results.next().await {
        match got {
            Provisioned::Created(_) => {}
            Provisioned::Existing(_) => {
                existing_groups += 1;
                recorder.unplanned(1);
            }
            Provisioned::Failed => skip(1),
        }
        if let Some(slot) = groups.get_mut(i) {
            *slot = got;
        }
    }
    drop(results);
    phases.push(PhaseTime::new(Phase::Groups, phase.elapsed()));

    // Members, in batches; round-robin over the groups, so that one
    // group's batches are spread out in time as Entra's per-group work is.
    let phase = Instant::now();
    recorder.set_phase(Phase::Members);
    let mut patches: Vec<(&str, serde_json::Value)> = Vec::with_capacity(batches);
    let rounds = plan
        .groups
        .iter()
        .map(|g| g.members.len().div_ceil(batch))
        .max()
        .unwrap_or(0);
    for round in 0..rounds {
        for (group, provisioned) in plan.groups.iter().zip(&groups) {
            let Some(chunk) = group.members.chunks(batch).nth(round) else {
                continue;
            };
            let ids: Vec<&str> = chunk
                .iter()
                .filter_map(|&u| users.get(u).and_then(Provisioned::id))
                .collect();
            match provisioned.id() {
                Some(group_id) if !ids.is_empty() => {
                    patches.push((group_id, data::add_members_body(ids)));
                }
                _ => skip(1),
            }
        }
    }
    stream::iter(&patches)
        .map(|(group_id, body)| client.patch(Op::AddMembers, "Groups", group_id, body))
        .buffer_unordered(width)
        .for_each(|_| async {})
        .await;
    drop(patches);
    phases.push(PhaseTime::new(Phase::Members, phase.elapsed()));

    // The incremental cycle, its changes in the plan's shuffled order.
    let phase = Instant::now();
    recorder.set_phase(Phase::Incremental);
    let user_id = |u: usize| users.get(u).and_then(Provisioned::id);
    let mut changes: Vec<(Op, &str, &str, serde_json::Value)> =
        Vec::with_capacity(plan.changes.len());
    for change in &plan.changes {
        let request = match change {
            Change::UpdateUser {
                user,
                given_name,
                family_name,
                department,
            } => user_id(*user).map(|id| {
                (
                    Op::PatchUser,
                    "Users",
                    id,
                    data::update_user_body(given_name, family_name, department),
                )
            }),
            Change::Deactivate { user } => {
                user_id(*user).map(|id| (Op::Deactivate, "Users", id, data::deactivate_body()))
            }
            Change::RemoveMember { group, user } => groups
                .get(*group)
                .and_then(Provisioned::id)
                .zip(user_id(*user))
                .map(|(group_id, member)| {
                    (
                        Op::RemoveMembers,
                        "Groups",
                        group_id,
                        data::remove_member_body(member),
                    )
                }),
        };
        match request {
            Some(r) => changes.push(r),
            None => skip(1),
        }
    }
    stream::iter(&changes)
        .map(|(op, collection, id, body)| client.patch(*op, collection, id, body))
        .buffer_unordered(width)
        .for_each(|_| async {})
        .await;
    drop(changes);
    phases.push(PhaseTime::new(Phase::Incremental, phase.elapsed()));
    let requests_done = recorder.elapsed();

    // Welcome emails: owed to every user created active and not
    // deactivated since (a deactivation may cancel one not yet sent).
    let mail = match &options.mail_dir {
        Some(dir) => {
            let phase = Instant::now();
            recorder.set_phase(Phase::Mail);
            let deactivated = plan.deactivated();
            let expected: HashSet<String> = plan
                .users
                .iter()
                .zip(&users)
                .enumerate()
                .filter(|(i, (_, p))| {
                    matches!(p, Provisioned::Created(_)) && !deactivated.contains(i)
                })
                .map(|(_, (u, _))| u.user_name.to_ascii_lowercase())
                .collect();
            let report =
                mail::wait_for_welcomes(dir.clone(), expected, started_at, options.mail_timeout)
                    .await;
            phases.push(PhaseTime::new(Phase::Mail, phase.elapsed()));
            Some(report)
        }
        None => None,
    };

    drop(progress);
    let memory = memory.stop().await;
    let spec = plan.spec;
    let mut report = Report::new(
        stats::Setup {
            url: options.url.to_string(),
            seed: spec.seed,
            users: plan.users.len(),
            groups: plan.groups.len(),
            memberships: plan.memberships(),
            member_batch: batch,
            incremental: plan.changes.len(),
            concurrency: width,
            concurrency_sweep: levels,
        },
        recorder.finish(),
        (existing_users, existing_groups),
        skipped,
        phases,
        requests_done,
        recorder.elapsed(),
        mail,
        memory,
    );
    report.sweep = sweep;
    report.user_cpu = user_cpu;
    if let Some(dir) = &options.chart_dir {
        // A chart that cannot be written fails the run but keeps its report.
        let date = chrono::DateTime::<chrono::Utc>::from(started_at);
        match chart::write(dir, &report, date) {
            Ok(paths) => {
                report.charts = paths.iter().map(|p| p.display().to_string()).collect();
            }
            Err(e) => report.chart_error = Some(format!("{e:#}")),
        }
    }
    Ok(report)
}

/// The users of each level of a sweep: level k gets the plan's users
/// `k·n..(k+1)·n`, so that no two levels share a userName or externalId
/// and a one-level run sends exactly the users it always has.
pub fn level_users(per_level: usize, levels: usize) -> Vec<Range<usize>> {
    (0..levels)
        .map(|k| k * per_level..(k + 1) * per_level)
        .collect()
}

/// Prints a progress line to stderr at an interval until the guard drops.
fn progress_lines(recorder: Arc<Recorder>, mode: ProgressLines) -> Option<DropGuard> {
    let every = match mode {
        ProgressLines::Off => return None,
        ProgressLines::Auto if std::io::stderr().is_terminal() => Duration::from_secs(1),
        ProgressLines::Auto => Duration::from_secs(5),
    };
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut last = None;
        loop {
            tokio::select! {
                () = stopped.cancelled() => break,
                _ = tick.tick() => {}
            }
            let now = recorder.progress();
            eprintln!("{}", stats::progress_line(&now, last.as_ref()));
            last = Some(now);
        }
    });
    Some(stop.drop_guard())
}

/// `scimsync load`: runs, prints the report (a table, or JSON with
/// `--json`), and fails when any request failed or any welcome email is
/// missing.
pub async fn command(args: crate::cli::LoadArgs) -> anyhow::Result<()> {
    let seed = args
        .seed
        .unwrap_or_else(|| rand::random_range(1..1_000_000u64));
    let options = Options {
        url: args.url,
        token: args.token,
        spec: Spec {
            users: args.users,
            groups: args.groups,
            members_per_group: args.members_per_group,
            incremental: args.incremental,
            seed,
        },
        member_batch: args.member_batch,
        concurrency: args.concurrency,
        mail_dir: args.mail_dir,
        mail_timeout: Duration::from_secs(args.mail_timeout),
        pids: args.pids,
        progress: ProgressLines::Auto,
        chart_dir: args.chart_dir,
    };
    if args.seed.is_none() {
        eprintln!("load: seed {seed} (pass --seed {seed} to send the same data again)");
    }
    let report = run(options).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render());
    }
    let problems = report.problems();
    if !problems.is_empty() {
        anyhow::bail!("{}", problems.join("; "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweep_levels_get_users_of_their_own() {
        let ranges = level_users(50, 4);
        assert_eq!(ranges, [0..50, 50..100, 100..150, 150..200]);
        for pair in ranges.windows(2) {
            assert_eq!(pair[0].end, pair[1].start, "{pair:?}");
        }
        // The plan behind them: no userName or externalId in two levels,
        // the first level the users of a one-level run, all from the seed.
        let spec = Spec {
            users: 200,
            groups: 0,
            members_per_group: 0,
            incremental: 0,
            seed: 11,
        };
        let plan = Plan::generate(spec);
        let mut names = HashSet::new();
        let mut external = HashSet::new();
        for range in &ranges {
            for user in &plan.users[range.clone()] {
                assert!(names.insert(user.user_name.clone()), "{}", user.user_name);
                assert!(external.insert(user.external_id.clone()));
            }
        }
        assert_eq!(names.len(), 200);
        let one = Plan::generate(Spec { users: 50, ..spec });
        assert_eq!(one.users[..], plan.users[..50]);
        assert_eq!(plan.users[150].user_name, "user150-11@example.com");
        assert_eq!(Plan::generate(spec), plan);
        assert!(level_users(0, 3).iter().all(|r| r.is_empty()));
    }

    fn options(concurrency: Vec<usize>) -> Options {
        Options {
            url: "http://127.0.0.1:9/scim/v2".parse().expect("url"),
            token: Secret::new("t"),
            spec: Spec {
                users: 1,
                groups: 0,
                members_per_group: 0,
                incremental: 0,
                seed: 1,
            },
            member_batch: 1,
            concurrency,
            mail_dir: None,
            mail_timeout: Duration::from_secs(1),
            pids: vec![],
            progress: ProgressLines::Off,
            chart_dir: None,
        }
    }

    #[tokio::test]
    async fn bad_concurrency_lists_are_refused_before_any_request() {
        for (levels, says) in [
            (vec![], "at least one value"),
            (vec![1, 0], "at least 1"),
            (vec![2, 4, 2], "each level once"),
        ] {
            let error = run(options(levels)).await.expect_err("refused");
            assert!(error.to_string().contains(says), "{error}");
        }
    }
}
