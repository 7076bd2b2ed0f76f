//! What a run measured: every request's latency and outcome per operation,
//! turned into percentiles and rates, and the report printed at the end.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::cpu::CpuUse;

/// The kinds of request Entra ID sends, in the order a cycle sends them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Op {
    TestConnection,
    FilterUser,
    CreateUser,
    FilterGroup,
    CreateGroup,
    AddMembers,
    PatchUser,
    Deactivate,
    RemoveMembers,
}

impl Op {
    pub const ALL: [Op; 9] = [
        Op::TestConnection,
        Op::FilterUser,
        Op::CreateUser,
        Op::FilterGroup,
        Op::CreateGroup,
        Op::AddMembers,
        Op::PatchUser,
        Op::Deactivate,
        Op::RemoveMembers,
    ];

    /// The name used in the report.
    pub fn name(self) -> &'static str {
        match self {
            Op::TestConnection => "test-connection",
            Op::FilterUser => "filter-user",
            Op::CreateUser => "create-user",
            Op::FilterGroup => "filter-group",
            Op::CreateGroup => "create-group",
            Op::AddMembers => "add-members",
            Op::PatchUser => "patch-user",
            Op::Deactivate => "deactivate",
            Op::RemoveMembers => "remove-members",
        }
    }

    /// Whether the request changes something (and so is queued and
    /// committed before it is answered).
    pub fn is_write(self) -> bool {
        !matches!(self, Op::TestConnection | Op::FilterUser | Op::FilterGroup)
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// How one request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Answered as expected.
    Ok,
    /// Answered with this unexpected status.
    Status(u16),
    /// Answered 2xx, but not with what a SCIM server must send (no id,
    /// no totalResults).
    BadBody,
    /// No answer: the connection failed or timed out.
    Transport(&'static str),
}

impl Outcome {
    /// The key under which the report counts this failure.
    fn key(&self) -> String {
        match self {
            Outcome::Ok => "ok".to_owned(),
            Outcome::Status(s) => s.to_string(),
            Outcome::BadBody => "bad-body".to_owned(),
            Outcome::Transport(what) => (*what).to_owned(),
        }
    }
}

/// What was measured for one operation.
#[derive(Debug, Default)]
struct Samples {
    /// Latency of every answered request, in microseconds; sorted only at
    /// the end. Exact percentiles, 4 bytes a request: fine for millions.
    latencies_us: Vec<u32>,
    /// Failures by status code or transport error.
    errors: BTreeMap<String, u64>,
    /// 429 answers that were waited out and retried.
    throttled: u64,
    /// When the first request started and the last one ended, since the
    /// run's start.
    first_start: Option<Duration>,
    last_end: Option<Duration>,
}

impl Samples {
    /// One finished request: see [`Recorder::record`].
    fn add(&mut self, begin: Duration, end: Duration, latency: Option<u32>, outcome: &Outcome) {
        if let Some(us) = latency {
            self.latencies_us.push(us);
        }
        if *outcome != Outcome::Ok {
            *self.errors.entry(outcome.key()).or_default() += 1;
        }
        self.first_start = Some(self.first_start.map_or(begin, |f| f.min(begin)));
        self.last_end = Some(self.last_end.map_or(end, |l| l.max(end)));
    }

    fn new_set() -> Vec<Samples> {
        Op::ALL.iter().map(|_| Samples::default()).collect()
    }
}

/// Per-operation results of a set of samples, operations never sent left
/// out.
fn reports(taken: Vec<Samples>) -> Vec<OpReport> {
    Op::ALL
        .iter()
        .zip(taken)
        .filter(|(_, s)| s.first_start.is_some() || s.throttled > 0)
        .map(|(op, s)| OpReport::from_samples(*op, s))
        .collect()
}

/// Collects measurements from all concurrent requests of a run.
#[derive(Debug)]
pub struct Recorder {
    start: Instant,
    samples: Mutex<Vec<Samples>>,
    /// A second copy of what is recorded while a sweep level runs
    /// ([`Recorder::begin_level`]), so that each level has its own figures.
    level: Mutex<Option<Vec<Samples>>>,
    /// Operations finished, failed, and expected in all (for progress).
    done: AtomicU64,
    failed: AtomicU64,
    total: AtomicU64,
    /// Index into [`Phase::ALL`], for progress lines.
    phase: AtomicUsize,
}

/// The parts of a run, for progress lines and timings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    TestConnection,
    Users,
    Groups,
    Members,
    Incremental,
    Mail,
}

impl Phase {
    const ALL: [Phase; 6] = [
        Phase::TestConnection,
        Phase::Users,
        Phase::Groups,
        Phase::Members,
        Phase::Incremental,
        Phase::Mail,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Phase::TestConnection => "test connection",
            Phase::Users => "users",
            Phase::Groups => "groups",
            Phase::Members => "members",
            Phase::Incremental => "incremental cycle",
            Phase::Mail => "waiting for welcome emails",
        }
    }
}

/// Progress counters at one moment.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub done: u64,
    pub failed: u64,
    pub total: u64,
    pub phase: Phase,
    pub elapsed: Duration,
}

impl Recorder {
    /// Starts the run's clock; `total` is how many operations are planned.
    pub fn new(total: u64) -> Recorder {
        Recorder {
            start: Instant::now(),
            samples: Mutex::new(Samples::new_set()),
            level: Mutex::new(None),
            done: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            total: AtomicU64::new(total),
            phase: AtomicUsize::new(0),
        }
    }

    /// Time since the run started.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    pub fn set_phase(&self, phase: Phase) {
        let index = Phase::ALL.iter().position(|p| *p == phase).unwrap_or(0);
        self.phase.store(index, Ordering::Relaxed);
    }

    /// `n` planned operations will not be sent (a user that already
    /// existed needs no create; a member whose user failed is not added).
    pub fn unplanned(&self, n: u64) {
        self.total.fetch_sub(n, Ordering::Relaxed);
    }

    /// Records a finished request that started at `started`. `answered`
    /// is false when no HTTP answer came, so there is no latency to count.
    pub fn record(&self, op: Op, started: Instant, answered: bool, outcome: &Outcome) {
        let end = self.start.elapsed();
        let begin = started.saturating_duration_since(self.start);
        let latency =
            answered.then(|| u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX));
        if let Ok(mut all) = self.samples.lock()
            && let Some(s) = all.get_mut(op.index())
        {
            s.add(begin, end, latency, outcome);
        }
        if let Ok(mut level) = self.level.lock()
            && let Some(s) = level.as_mut().and_then(|all| all.get_mut(op.index()))
        {
            s.add(begin, end, latency, outcome);
        }
        self.done.fetch_add(1, Ordering::Relaxed);
        if *outcome != Outcome::Ok {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records a 429 that will be retried.
    pub fn throttled(&self, op: Op) {
        if let Ok(mut all) = self.samples.lock()
            && let Some(s) = all.get_mut(op.index())
        {
            s.throttled += 1;
        }
        if let Ok(mut level) = self.level.lock()
            && let Some(s) = level.as_mut().and_then(|all| all.get_mut(op.index()))
        {
            s.throttled += 1;
        }
    }

    /// Starts a sweep level: from now until [`Recorder::end_level`], every
    /// request is also recorded in the level's own figures.
    pub fn begin_level(&self) {
        if let Ok(mut level) = self.level.lock() {
            *level = Some(Samples::new_set());
        }
    }

    /// The level's per-operation results (times since the run's start, as
    /// in the run's own results); stops recording a level.
    pub fn end_level(&self) -> Vec<OpReport> {
        let taken = match self.level.lock() {
            Ok(mut level) => level.take(),
            Err(_) => None,
        };
        taken.map(reports).unwrap_or_default()
    }

    pub fn progress(&self) -> Progress {
        Progress {
            done: self.done.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            total: self.total.load(Ordering::Relaxed),
            phase: Phase::ALL
                .get(self.phase.load(Ordering::Relaxed))
                .copied()
                .unwrap_or(Phase::TestConnection),
            elapsed: self.elapsed(),
        }
    }

    /// Per-operation results; the recorder keeps nothing afterwards.
    pub fn finish(&self) -> Vec<OpReport> {
        let taken = match self.samples.lock() {
            Ok(mut all) => std::mem::take(&mut *all),
            Err(_) => Vec::new(),
        };
        reports(taken)
    }
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Latency {
    pub p50: u32,
    pub p95: u32,
    pub p99: u32,
    pub max: u32,
}

impl Latency {
    /// Exact nearest-rank percentiles; sorts `us` in place. None when empty.
    pub fn of(us: &mut [u32]) -> Option<Latency> {
        us.sort_unstable();
        Some(Latency {
            p50: nearest_rank(us, 0.50)?,
            p95: nearest_rank(us, 0.95)?,
            p99: nearest_rank(us, 0.99)?,
            max: *us.last()?,
        })
    }
}

/// The nearest-rank `q` quantile (0 ≤ q ≤ 1) of sorted values: the smallest
/// value with at least q of all values at or below it; the minimum for
/// q = 0. None when empty.
pub fn nearest_rank(sorted: &[u32], q: f64) -> Option<u32> {
    let rank = (q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.max(1) - 1).copied()
}

/// One point of a latency distribution: the `q` quantile is `us`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quantile {
    pub q: f64,
    pub us: u32,
}

/// The deepest quantile a [`distribution`] reaches: 99.9 %.
pub const DISTRIBUTION_DEPTH: f64 = 0.999;
/// Points of a [`distribution`].
const DISTRIBUTION_POINTS: usize = 150;

/// Quantiles every [`distribution`] holds exactly, whatever its spacing:
/// the ones the reports name, and the deepest.
const DISTRIBUTION_MARKS: [f64; 5] = [0.5, 0.9, 0.95, 0.99, DISTRIBUTION_DEPTH];

/// A latency distribution for a percentile plot: nearest-rank quantiles
/// (the same rule as [`Latency`]) from 0 to 99.9 %, evenly spaced in
/// log10(1/(1-q)) so that the tail gets as many points as the body, plus
/// [`DISTRIBUTION_MARKS`]. Empty when there are no samples.
pub fn distribution(sorted: &[u32]) -> Vec<Quantile> {
    let depth = -(1.0 - DISTRIBUTION_DEPTH).log10();
    let mut qs: Vec<f64> = (0..DISTRIBUTION_POINTS)
        .map(|k| 1.0 - 10f64.powf(-depth * k as f64 / DISTRIBUTION_POINTS as f64))
        .filter(|q| DISTRIBUTION_MARKS.iter().all(|m| (m - q).abs() > 1e-9))
        .chain(DISTRIBUTION_MARKS)
        .collect();
    qs.sort_by(f64::total_cmp);
    qs.into_iter()
        .filter_map(|q| nearest_rank(sorted, q).map(|us| Quantile { q, us }))
        .collect()
}

/// The results for one operation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OpReport {
    pub operation: &'static str,
    /// Requests finished (answered or not), retries of a 429 not counted.
    pub count: u64,
    /// Of those, answered as expected.
    pub ok: u64,
    /// Requests finished per second, between the first one's start and the
    /// last one's end.
    pub requests_per_sec: Option<f64>,
    /// Over every answered request, in microseconds.
    pub latency_us: Option<Latency>,
    /// Failures by HTTP status, or `connect`/`timeout`/`transport` when
    /// there was no answer, or `bad-body`.
    pub errors: BTreeMap<String, u64>,
    /// 429 answers waited out (Retry-After) and retried.
    pub throttled: u64,
    /// When the last request of this kind was answered, seconds since the
    /// run's start.
    pub last_end_secs: Option<f64>,
    #[serde(skip)]
    pub write: bool,
    /// The latency distribution, for charts (see [`distribution`]).
    #[serde(skip)]
    pub distribution: Vec<Quantile>,
}

impl OpReport {
    fn from_samples(op: Op, mut s: Samples) -> OpReport {
        let failed: u64 = s.errors.values().sum();
        let no_answer: u64 = s
            .errors
            .iter()
            .filter(|(k, _)| !k.chars().all(|c| c.is_ascii_digit()) && k.as_str() != "bad-body")
            .map(|(_, n)| n)
            .sum();
        let count = s.latencies_us.len() as u64 + no_answer;
        let span = match (s.first_start, s.last_end) {
            (Some(a), Some(b)) => b.saturating_sub(a).as_secs_f64(),
            _ => 0.0,
        };
        OpReport {
            operation: op.name(),
            count,
            ok: count.saturating_sub(failed),
            requests_per_sec: (span > 0.0).then(|| count as f64 / span),
            latency_us: Latency::of(&mut s.latencies_us),
            distribution: distribution(&s.latencies_us),
            errors: s.errors,
            throttled: s.throttled,
            last_end_secs: s.last_end.map(|d| d.as_secs_f64()),
            write: op.is_write(),
        }
    }

    pub fn failed(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// How long a part of the run took.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PhaseTime {
    pub phase: &'static str,
    pub secs: f64,
}

impl PhaseTime {
    pub fn new(phase: Phase, took: Duration) -> PhaseTime {
        PhaseTime {
            phase: phase.name(),
            secs: took.as_secs_f64(),
        }
    }
}

/// What was sent: the generated tenant and how.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Setup {
    pub url: String,
    pub seed: u64,
    pub users: usize,
    pub groups: usize,
    pub memberships: usize,
    pub member_batch: usize,
    pub incremental: usize,
    /// Requests in flight: the last level of a sweep (at which groups and
    /// the incremental cycle run), or the only one.
    pub concurrency: usize,
    /// With a sweep: every level's concurrency, in the order run.
    #[serde(skip_serializing_if = "not_a_sweep")]
    pub concurrency_sweep: Vec<usize>,
}

fn not_a_sweep<T>(levels: &[T]) -> bool {
    levels.len() < 2
}

/// The user phase at one concurrency: each user looked up by userName,
/// then created.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Level {
    pub concurrency: usize,
    /// The level's users are `first_user..first_user + users` of the plan
    /// (`user<i>-<seed>@example.com`), none shared with another level.
    pub first_user: usize,
    pub users: usize,
    /// From the level's first request to its last answer.
    pub secs: f64,
    /// Users created (or found already there) per second of the level.
    pub users_per_sec: Option<f64>,
    pub filter_user: Option<OpReport>,
    pub create_user: Option<OpReport>,
    /// CPU used from the level's first request to its last answer.
    pub cpu: Option<CpuUse>,
}

impl Level {
    /// Assembles a level from what the recorder measured during it
    /// ([`Recorder::end_level`]); `provisioned` users were created or found.
    pub fn new(
        concurrency: usize,
        users: std::ops::Range<usize>,
        provisioned: usize,
        took: Duration,
        operations: Vec<OpReport>,
        cpu: Option<CpuUse>,
    ) -> Level {
        let secs = took.as_secs_f64();
        let find = |name: &str| operations.iter().find(|o| o.operation == name).cloned();
        Level {
            concurrency,
            first_user: users.start,
            users: users.len(),
            secs,
            users_per_sec: (secs > 0.0 && provisioned > 0).then(|| provisioned as f64 / secs),
            filter_user: find(Op::FilterUser.name()),
            create_user: find(Op::CreateUser.name()),
            cpu,
        }
    }

    /// create-user requests per second.
    pub fn creates_per_sec(&self) -> Option<f64> {
        self.create_user.as_ref()?.requests_per_sec
    }
}

/// Welcome emails found in the mail directory.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MailReport {
    pub dir: String,
    /// Users created active and not deactivated since: each is owed one.
    pub expected: usize,
    pub found: usize,
    /// When the last expected email was written (its file's mtime),
    /// seconds since the run's start; None until all were found.
    pub all_written_secs: Option<f64>,
    /// How long it waited after the last request.
    pub waited_secs: f64,
}

/// Memory of one server process, from /proc/PID/status.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemoryReport {
    pub pid: u32,
    /// Highest VmRSS seen, sampled every 200 ms during the run.
    pub peak_rss_kb: Option<u64>,
    /// VmHWM at the last sample: the kernel's peak over the process's life.
    pub hwm_kb: Option<u64>,
    pub samples: u64,
    /// Why it could not be read, if it could not.
    pub error: Option<String>,
}

/// Everything a run measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub setup: Setup,
    pub operations: Vec<OpReport>,
    pub requests: u64,
    pub failed: u64,
    pub throttled: u64,
    /// Users and groups the filter found already there (not created).
    pub existing_users: usize,
    pub existing_groups: usize,
    /// Planned requests not sent because something they need failed
    /// (a member whose user was not created, a batch of a group that was not).
    pub skipped: usize,
    pub phases: Vec<PhaseTime>,
    /// From the start until the last request was answered.
    pub requests_secs: f64,
    /// The whole run, including the wait for welcome emails.
    pub wall_secs: f64,
    /// When the last write was answered 2xx (the service answers only
    /// after the commit), seconds since the start; None if any write failed.
    pub applied_secs: Option<f64>,
    pub mail: Option<MailReport>,
    pub memory: Vec<MemoryReport>,
    /// CPU used by the user phase (every level of a sweep, and the waits
    /// for welcome emails between levels), by the machine and by each
    /// `--pid`, in all and a user.
    pub user_cpu: Option<CpuUse>,
    /// The user phase per concurrency level; in the JSON only with a sweep
    /// (several levels).
    #[serde(skip_serializing_if = "not_a_sweep")]
    pub sweep: Vec<Level>,
    /// Chart files written (--chart-dir).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub charts: Vec<String>,
    /// Why the charts could not be written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chart_error: Option<String>,
}

impl Report {
    /// Assembles the report from the operations' results and the rest.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        setup: Setup,
        operations: Vec<OpReport>,
        existing: (usize, usize),
        skipped: usize,
        phases: Vec<PhaseTime>,
        requests_took: Duration,
        wall: Duration,
        mail: Option<MailReport>,
        memory: Vec<MemoryReport>,
    ) -> Report {
        let requests = operations.iter().map(|o| o.count).sum();
        let failed = operations.iter().map(OpReport::failed).sum();
        let throttled = operations.iter().map(|o| o.throttled).sum();
        let writes_ok = operations
            .iter()
            .filter(|o| o.write)
            .all(|o| o.failed() == 0);
        let applied_secs = if writes_ok && skipped == 0 {
            operations
                .iter()
                .filter(|o| o.write)
                .filter_map(|o| o.last_end_secs)
                .reduce(f64::max)
        } else {
            None
        };
        Report {
            setup,
            operations,
            requests,
            failed,
            throttled,
            existing_users: existing.0,
            existing_groups: existing.1,
            skipped,
            phases,
            requests_secs: requests_took.as_secs_f64(),
            wall_secs: wall.as_secs_f64(),
            applied_secs,
            mail,
            memory,
            user_cpu: None,
            sweep: Vec::new(),
            charts: Vec::new(),
            chart_error: None,
        }
    }

    /// What went wrong, one sentence each; empty when the run passed.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.failed > 0 {
            out.push(format!(
                "{} of {} requests failed",
                self.failed, self.requests
            ));
        }
        if self.skipped > 0 {
            out.push(format!(
                "{} planned requests were skipped because what they needed failed",
                self.skipped
            ));
        }
        if let Some(m) = &self.mail
            && m.found < m.expected
        {
            out.push(format!(
                "{} of {} welcome emails did not arrive in {} within {:.0} s",
                m.expected - m.found,
                m.expected,
                m.dir,
                m.waited_secs
            ));
        }
        if let Some(e) = &self.chart_error {
            out.push(format!("the charts were not written: {e}"));
        }
        out
    }

    /// The human summary.
    pub fn render(&self) -> String {
        let s = &self.setup;
        let mut out = String::new();
        let concurrency = if not_a_sweep(&s.concurrency_sweep) {
            s.concurrency.to_string()
        } else {
            format!(
                "sweep {} (users phase once per level; groups and incremental at {})",
                join(&s.concurrency_sweep),
                s.concurrency
            )
        };
        let _ = writeln!(
            out,
            "scimsync load against {}: {} users, {} groups ({} memberships, {} per PATCH), \
             incremental cycle of {}, concurrency {}, seed {}",
            s.url,
            s.users,
            s.groups,
            s.memberships,
            s.member_batch,
            s.incremental,
            concurrency,
            s.seed
        );
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{:<16} {:>8} {:>9} {:>8} {:>8} {:>8} {:>8}  ERRORS",
            "OPERATION", "COUNT", "REQ/S", "P50 ms", "P95 ms", "P99 ms", "MAX ms"
        );
        let ms = |us: u32| format!("{:.2}", f64::from(us) / 1000.0);
        for o in &self.operations {
            let (p50, p95, p99, max) = o.latency_us.map_or_else(
                || ("-".into(), "-".into(), "-".into(), "-".into()),
                |l| (ms(l.p50), ms(l.p95), ms(l.p99), ms(l.max)),
            );
            let _ = writeln!(
                out,
                "{:<16} {:>8} {:>9} {:>8} {:>8} {:>8} {:>8}  {}",
                o.operation,
                o.count,
                o.requests_per_sec
                    .map_or_else(|| "-".to_owned(), |r| format!("{r:.1}")),
                p50,
                p95,
                p99,
                max,
                errors_text(&o.errors, o.throttled)
            );
        }
        let _ = writeln!(
            out,
            "{:<16} {:>8} {:>9}",
            "all",
            self.requests,
            if self.requests_secs > 0.0 {
                format!("{:.1}", self.requests as f64 / self.requests_secs)
            } else {
                "-".to_owned()
            }
        );
        if !not_a_sweep(&self.sweep) {
            let _ = writeln!(out);
            out.push_str(&self.render_sweep());
        }
        let _ = writeln!(out);
        let phases: Vec<String> = self
            .phases
            .iter()
            .map(|p| format!("{} {:.2} s", p.phase, p.secs))
            .collect();
        let _ = writeln!(out, "phases           {}", phases.join(", "));
        let _ = writeln!(
            out,
            "wall time        {:.2} s ({:.2} s until the last answer)",
            self.wall_secs, self.requests_secs
        );
        let _ = writeln!(
            out,
            "all applied      {}",
            match self.applied_secs {
                Some(t) => format!("{t:.2} s after the start (every write answered 2xx)"),
                None => "no: some writes failed or were skipped".to_owned(),
            }
        );
        if self.existing_users + self.existing_groups > 0 {
            let _ = writeln!(
                out,
                "already there    {} users, {} groups (found by the filter, not created; \
                 another --seed gives new ones)",
                self.existing_users, self.existing_groups
            );
        }
        if self.throttled > 0 {
            let _ = writeln!(
                out,
                "throttled        {} answers were 429; each was retried after its Retry-After",
                self.throttled
            );
        }
        if let Some(m) = &self.mail {
            let _ = writeln!(
                out,
                "welcome emails   {}/{} in {}{}",
                m.found,
                m.expected,
                m.dir,
                match m.all_written_secs {
                    Some(t) => format!(", the last written {t:.2} s after the start"),
                    None => format!(", still missing after waiting {:.0} s", m.waited_secs),
                }
            );
        }
        for m in &self.memory {
            let mb = |kb: Option<u64>| {
                kb.map_or_else(
                    || "-".to_owned(),
                    |kb| format!("{:.1} MB", kb as f64 / 1024.0),
                )
            };
            match &m.error {
                Some(e) if m.samples == 0 => {
                    let _ = writeln!(out, "memory pid {:<6} not readable: {e}", m.pid);
                }
                _ => {
                    let _ = writeln!(
                        out,
                        "memory pid {:<6} peak RSS {} during the run ({} samples), VmHWM {}{}",
                        m.pid,
                        mb(m.peak_rss_kb),
                        m.samples,
                        mb(m.hwm_kb),
                        m.error
                            .as_deref()
                            .map(|e| format!(" (then: {e})"))
                            .unwrap_or_default()
                    );
                }
            }
        }
        if let Some(cpu) = &self.user_cpu {
            let _ = writeln!(out, "cpu (user phase) {}", cpu.describe());
        }
        if !self.charts.is_empty() {
            let _ = writeln!(out, "charts           {}", self.charts.join(", "));
        }
        let problems = self.problems();
        if problems.is_empty() {
            let _ = writeln!(out, "result           ok");
        } else {
            let _ = writeln!(out, "result           FAILED: {}", problems.join("; "));
        }
        out
    }
}

impl Report {
    /// The sweep table: one row per level.
    fn render_sweep(&self) -> String {
        let mut out = String::new();
        let users: Vec<usize> = self.sweep.iter().map(|l| l.users).collect();
        let per_level = match users.first() {
            Some(&n) if users.iter().all(|&u| u == n) => n.to_string(),
            _ => join(&users),
        };
        let _ = writeln!(
            out,
            "sweep: the user phase at each concurrency, on {per_level} new users each \
             (C create-user, F filter-user; ms; CPU/USER: CPU-ms of the whole machine a user)"
        );
        let _ = writeln!(
            out,
            "{:>5} {:>7} {:>8} {:>8} {:>9} {:>8}  {:>7} {:>7} {:>7} {:>8}  {:>7} {:>7} {:>7} {:>8}  ERRORS",
            "CONC",
            "USERS",
            "SECS",
            "USERS/S",
            "CREATE/S",
            "CPU/USER",
            "C P50",
            "C P95",
            "C P99",
            "C MAX",
            "F P50",
            "F P95",
            "F P99",
            "F MAX"
        );
        let rate = |r: Option<f64>| r.map_or_else(|| "-".to_owned(), |r| format!("{r:.1}"));
        let ms = |o: &Option<OpReport>| -> [String; 4] {
            match o.as_ref().and_then(|o| o.latency_us) {
                Some(l) => {
                    [l.p50, l.p95, l.p99, l.max].map(|us| format!("{:.2}", f64::from(us) / 1000.0))
                }
                None => ["-", "-", "-", "-"].map(str::to_owned),
            }
        };
        for l in &self.sweep {
            let [c50, c95, c99, cmax] = ms(&l.create_user);
            let [f50, f95, f99, fmax] = ms(&l.filter_user);
            let errors: Vec<String> = [("create", &l.create_user), ("filter", &l.filter_user)]
                .into_iter()
                .filter_map(|(name, o)| {
                    let o = o.as_ref()?;
                    (o.failed() + o.throttled > 0)
                        .then(|| format!("{name} {}", errors_text(&o.errors, o.throttled)))
                })
                .collect();
            let _ = writeln!(
                out,
                "{:>5} {:>7} {:>8.2} {:>8} {:>9} {:>8}  {:>7} {:>7} {:>7} {:>8}  {:>7} {:>7} {:>7} {:>8}  {}",
                l.concurrency,
                l.users,
                l.secs,
                rate(l.users_per_sec),
                rate(l.creates_per_sec()),
                l.cpu
                    .as_ref()
                    .and_then(|c| c.per_user.as_ref())
                    .map_or_else(|| "-".to_owned(), |p| format!("{:.2}", p.machine_ms)),
                c50,
                c95,
                c99,
                cmax,
                f50,
                f95,
                f99,
                fmax,
                if errors.is_empty() {
                    "-".to_owned()
                } else {
                    errors.join("; ")
                }
            );
        }
        out
    }
}

/// `1,2,4`.
fn join<T: ToString>(values: &[T]) -> String {
    values
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn errors_text(errors: &BTreeMap<String, u64>, throttled: u64) -> String {
    let mut parts: Vec<String> = errors.iter().map(|(k, n)| format!("{k}×{n}")).collect();
    if throttled > 0 {
        parts.push(format!("(429×{throttled} retried)"));
    }
    if parts.is_empty() {
        "-".to_owned()
    } else {
        parts.join(" ")
    }
}

/// One progress line: done/total, rate since the last line, errors.
pub fn progress_line(now: &Progress, before: Option<&Progress>) -> String {
    let rate = before.map_or_else(
        || now.done as f64 / now.elapsed.as_secs_f64().max(1e-3),
        |b| {
            let secs = now
                .elapsed
                .saturating_sub(b.elapsed)
                .as_secs_f64()
                .max(1e-3);
            now.done.saturating_sub(b.done) as f64 / secs
        },
    );
    format!(
        "load {:>7.1}s  {}: {}/{} requests, {:.0} req/s, {} errors",
        now.elapsed.as_secs_f64(),
        now.phase.name(),
        now.done,
        now.total,
        rate,
        now.failed
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_exact_nearest_rank() {
        let mut v: Vec<u32> = (1..=100).rev().collect();
        assert_eq!(
            Latency::of(&mut v),
            Some(Latency {
                p50: 50,
                p95: 95,
                p99: 99,
                max: 100
            })
        );
        let mut one = vec![7];
        assert_eq!(
            Latency::of(&mut one),
            Some(Latency {
                p50: 7,
                p95: 7,
                p99: 7,
                max: 7
            })
        );
        let mut few = vec![10, 30, 20, 40];
        let l = Latency::of(&mut few).unwrap();
        assert_eq!((l.p50, l.p95, l.p99, l.max), (20, 40, 40, 40));
        assert_eq!(Latency::of(&mut []), None);
    }

    #[test]
    fn a_long_tail_shows_in_p99_not_p50() {
        let mut v = vec![1000u32; 990];
        v.extend([50_000u32; 10]);
        let l = Latency::of(&mut v).unwrap();
        assert_eq!((l.p50, l.p95, l.p99, l.max), (1000, 1000, 1000, 50_000));
        v.push(50_000);
        let l = Latency::of(&mut v).unwrap();
        assert_eq!(l.p99, 50_000);
    }

    fn recorded() -> Recorder {
        let r = Recorder::new(10);
        let t = Instant::now();
        r.record(Op::CreateUser, t, true, &Outcome::Ok);
        r.record(Op::CreateUser, t, true, &Outcome::Status(409));
        r.record(Op::CreateUser, t, false, &Outcome::Transport("connect"));
        r.record(Op::FilterUser, t, true, &Outcome::Ok);
        r.throttled(Op::FilterUser);
        r
    }

    #[test]
    fn recorder_counts_outcomes_per_operation() {
        let r = recorded();
        let p = r.progress();
        assert_eq!((p.done, p.failed, p.total), (4, 2, 10));
        let ops = r.finish();
        let names: Vec<_> = ops.iter().map(|o| o.operation).collect();
        assert_eq!(names, ["filter-user", "create-user"]);
        let create = &ops[1];
        assert_eq!((create.count, create.ok, create.failed()), (3, 1, 2));
        assert_eq!(create.errors.get("409"), Some(&1));
        assert_eq!(create.errors.get("connect"), Some(&1));
        assert_eq!(ops[0].throttled, 1);
        assert!(create.latency_us.is_some());
    }

    fn setup() -> Setup {
        Setup {
            url: "http://127.0.0.1:1/scim/v2".into(),
            seed: 4,
            users: 3,
            groups: 1,
            memberships: 2,
            member_batch: 50,
            incremental: 0,
            concurrency: 2,
            concurrency_sweep: vec![2],
        }
    }

    /// A report of `operations` alone: no phases, mail or memory, 1 s.
    fn bare_report(setup: Setup, operations: Vec<OpReport>) -> Report {
        Report::new(
            setup,
            operations,
            (0, 0),
            0,
            vec![],
            Duration::from_secs(1),
            Duration::from_secs(1),
            None,
            vec![],
        )
    }

    #[test]
    fn failed_writes_mean_not_all_applied_and_a_failed_run() {
        let report = bare_report(setup(), recorded().finish());
        assert_eq!(
            (report.requests, report.failed, report.throttled),
            (4, 2, 1)
        );
        assert_eq!(report.applied_secs, None);
        assert_eq!(report.problems(), ["2 of 4 requests failed"]);
        let text = report.render();
        assert!(text.contains("409×1 connect×1"), "{text}");
        assert!(text.contains("(429×1 retried)"), "{text}");
        assert!(text.contains("FAILED: 2 of 4 requests failed"), "{text}");
    }

    #[test]
    fn a_clean_run_reports_when_everything_was_applied() {
        let r = Recorder::new(2);
        let t = Instant::now();
        r.record(Op::FilterUser, t, true, &Outcome::Ok);
        r.record(Op::CreateUser, t, true, &Outcome::Ok);
        let report = Report::new(
            setup(),
            r.finish(),
            (0, 0),
            0,
            vec![PhaseTime::new(Phase::Users, Duration::from_millis(1500))],
            Duration::from_secs(2),
            Duration::from_secs(2),
            Some(MailReport {
                dir: "data/mail".into(),
                expected: 1,
                found: 1,
                all_written_secs: Some(1.75),
                waited_secs: 0.1,
            }),
            vec![MemoryReport {
                pid: 42,
                peak_rss_kb: Some(20480),
                hwm_kb: Some(30720),
                samples: 10,
                error: None,
            }],
        );
        assert!(report.applied_secs.is_some());
        assert!(report.problems().is_empty());
        let text = report.render();
        assert!(text.contains("users 1.50 s"), "{text}");
        assert!(text.contains("welcome emails   1/1 in data/mail, the last written 1.75 s"));
        assert!(text.contains("peak RSS 20.0 MB during the run (10 samples), VmHWM 30.0 MB"));
        assert!(text.contains("result           ok"));
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["operations"][1]["operation"], "create-user");
        assert!(json["operations"][1].get("write").is_none());
        assert_eq!(json["mail"]["found"], 1);
    }

    #[test]
    fn missing_mail_fails_the_run() {
        let report = Report::new(
            setup(),
            vec![],
            (0, 0),
            0,
            vec![],
            Duration::from_secs(1),
            Duration::from_secs(1),
            Some(MailReport {
                dir: "m".into(),
                expected: 5,
                found: 3,
                all_written_secs: None,
                waited_secs: 60.0,
            }),
            vec![],
        );
        assert_eq!(
            report.problems(),
            ["2 of 5 welcome emails did not arrive in m within 60 s"]
        );
        assert!(report.render().contains("still missing after waiting 60 s"));
    }

    #[test]
    fn a_level_records_only_what_happened_during_it() {
        let r = Recorder::new(10);
        let t = Instant::now();
        r.record(Op::TestConnection, t, true, &Outcome::Ok);
        r.begin_level();
        r.record(Op::FilterUser, t, true, &Outcome::Ok);
        r.record(Op::CreateUser, t, true, &Outcome::Status(500));
        r.throttled(Op::CreateUser);
        let first = r.end_level();
        r.begin_level();
        r.record(Op::FilterUser, t, true, &Outcome::Ok);
        let second = r.end_level();
        r.record(Op::CreateGroup, t, true, &Outcome::Ok);
        assert!(r.end_level().is_empty());

        let names = |ops: &[OpReport]| ops.iter().map(|o| o.operation).collect::<Vec<_>>();
        assert_eq!(names(&first), ["filter-user", "create-user"]);
        assert_eq!(first[1].errors.get("500"), Some(&1));
        assert_eq!(first[1].throttled, 1);
        assert_eq!(names(&second), ["filter-user"]);
        let all = r.finish();
        assert_eq!(
            names(&all),
            [
                "test-connection",
                "filter-user",
                "create-user",
                "create-group"
            ]
        );
        assert_eq!(all[1].count, 2);

        let level = Level::new(4, 10..12, 2, Duration::from_millis(500), first, None);
        assert_eq!((level.first_user, level.users), (10, 2));
        assert_eq!(level.users_per_sec, Some(4.0));
        assert_eq!(level.create_user.map(|o| o.count), Some(1));
        let idle = Level::new(4, 0..0, 0, Duration::ZERO, vec![], None);
        assert_eq!((idle.users_per_sec, idle.creates_per_sec()), (None, None));
    }

    #[test]
    fn distribution_follows_the_nearest_rank_rule_into_the_tail() {
        let sorted: Vec<u32> = (1..=1000).collect();
        let d = distribution(&sorted);
        assert_eq!(d.first(), Some(&Quantile { q: 0.0, us: 1 }));
        assert_eq!(d.last(), Some(&Quantile { q: 0.999, us: 999 }));
        assert!(d.windows(2).all(|w| w[0].q < w[1].q && w[0].us <= w[1].us));
        // Evenly spaced in log10(1/(1-q)): as many points above p90 as
        // below it, and a third of them above p99.
        let above = |q: f64| d.iter().filter(|p| p.q > q + 1e-12).count();
        assert_eq!(above(0.9), 100 + 1);
        assert_eq!(above(0.99), 50);
        assert!(distribution(&[]).is_empty());
        let l = Latency::of(&mut sorted.clone()).unwrap();
        let at = |q: f64| d.iter().find(|p| (p.q - q).abs() < 1e-9).map(|p| p.us);
        assert_eq!(at(0.5), Some(l.p50));
        assert_eq!(at(0.99), Some(l.p99));
    }

    #[test]
    fn a_sweep_shows_one_row_per_level_and_a_json_array() {
        let r = Recorder::new(4);
        let t = Instant::now();
        let mut levels = Vec::new();
        for (c, range) in [(1, 0..1), (8, 1..2)] {
            r.begin_level();
            r.record(Op::FilterUser, t, true, &Outcome::Ok);
            r.record(Op::CreateUser, t, true, &Outcome::Ok);
            levels.push(Level::new(
                c,
                range,
                1,
                Duration::from_millis(250),
                r.end_level(),
                None,
            ));
        }
        let mut sweep = bare_report(
            Setup {
                users: 2,
                concurrency: 8,
                concurrency_sweep: vec![1, 8],
                ..setup()
            },
            r.finish(),
        );
        let used = CpuUse {
            secs: 0.25,
            cores: 2,
            machine_busy_ms: 1.57,
            machine_busy_share: Some(0.5),
            processes: vec![super::super::cpu::ProcessCpu {
                pid: 9,
                cpu_ms: Some(0.5),
            }],
            per_user: None,
        }
        .for_users(1);
        levels[0].cpu = Some(used.clone());
        sweep.user_cpu = Some(used);
        sweep.sweep = levels;
        sweep.charts = vec!["c/throughput.svg".into(), "c/latency.svg".into()];
        let text = sweep.render();
        assert!(
            text.contains(
                "cpu (user phase) machine 1.57 ms a user (2 cores, 50 % busy), pid 9 0.50 ms"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "concurrency sweep 1,8 (users phase once per level; groups and incremental at 8)"
            ),
            "{text}"
        );
        assert!(
            text.contains("sweep: the user phase at each concurrency, on 1 new users each"),
            "{text}"
        );
        let rows: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("    1 ") || l.starts_with("    8 "))
            .collect();
        assert_eq!(rows.len(), 2, "{text}");
        assert!(rows[0].contains("4.0"), "{}", rows[0]);
        assert!(rows[0].contains(" 1.57 "), "{}", rows[0]);
        assert!(rows[1].contains(" - "), "{}", rows[1]);
        assert!(text.contains("charts           c/throughput.svg, c/latency.svg"));
        let json = serde_json::to_value(&sweep).unwrap();
        assert_eq!(
            json["setup"]["concurrency_sweep"],
            serde_json::json!([1, 8])
        );
        assert_eq!(json["sweep"][1]["concurrency"], 8);
        assert_eq!(json["sweep"][0]["cpu"]["per_user"]["machine_ms"], 1.57);
        assert_eq!(json["user_cpu"]["processes"][0]["pid"], 9);
        assert_eq!(json["sweep"][1]["first_user"], 1);
        assert_eq!(json["sweep"][0]["create_user"]["count"], 1);
        assert!(json["sweep"][0]["create_user"]["latency_us"]["p99"].is_u64());
        assert!(
            json["sweep"][0]["create_user"]
                .get("distribution")
                .is_none()
        );

        // One level: the report as it always was.
        sweep.sweep.truncate(1);
        sweep.setup.concurrency_sweep = vec![8];
        sweep.charts.clear();
        let json = serde_json::to_value(&sweep).unwrap();
        for key in ["sweep", "charts", "chart_error"] {
            assert!(json.get(key).is_none(), "{key}");
        }
        assert!(json["setup"].get("concurrency_sweep").is_none());
        let text = sweep.render();
        assert!(!text.contains("sweep"), "{text}");
        assert!(text.contains("concurrency 8, seed 4"), "{text}");

        sweep.chart_error = Some("cannot write c/latency.svg".into());
        assert_eq!(
            sweep.problems(),
            ["the charts were not written: cannot write c/latency.svg"]
        );
    }

    #[test]
    fn progress_line_uses_the_rate_since_the_last_line() {
        let a = Progress {
            done: 100,
            failed: 0,
            total: 1000,
            phase: Phase::Users,
            elapsed: Duration::from_secs(1),
        };
        let b = Progress {
            done: 400,
            failed: 2,
            elapsed: Duration::from_secs(2),
            ..a
        };
        assert_eq!(
            progress_line(&b, Some(&a)),
            "load     2.0s  users: 400/1000 requests, 300 req/s, 2 errors"
        );
        assert!(progress_line(&a, None).contains("100 req/s"));
    }
}
