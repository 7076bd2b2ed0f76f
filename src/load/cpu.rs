//! CPU time spent while a phase of the simulation ran: by the whole
//! machine (`/proc/stat`) and by each `--pid` (`/proc/PID/stat`).
//!
//! On a machine shared by the service, its database, its queue and the
//! simulator, the CPU a user costs bounds the throughput more plainly
//! than any latency: with C cores and T CPU-ms a user, no run on that
//! machine creates more than 1000·C / T users a second. Dividing the CPU a
//! pgbench transaction costs (`bench/pgbench` prints it) by the CPU a user
//! costs gives the highest ratio to pgbench that the same code could reach
//! with every core busy.

use std::time::Instant;

use serde::Serialize;

/// The kernel reports times in /proc in clock ticks of `USER_HZ`, which
/// is 100 on every Linux architecture this project builds for (x86_64 and
/// aarch64; `sysconf(_SC_CLK_TCK)` returns it, see proc(5)).
const MS_PER_TICK: f64 = 10.0;

/// What /proc says at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    at: Instant,
    /// Busy and all ticks of every core together; None off Linux.
    machine: Option<MachineTicks>,
    /// utime + stime of each pid, in ticks; None when it cannot be read.
    processes: Vec<(u32, Option<u64>)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct MachineTicks {
    busy: u64,
    all: u64,
    cores: usize,
}

impl Snapshot {
    /// Reads the machine's and `pids`' CPU times now.
    pub fn take(pids: &[u32]) -> Snapshot {
        let machine = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|text| parse_machine(&text));
        let processes = pids
            .iter()
            .map(|&pid| {
                let ticks = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .ok()
                    .and_then(|text| parse_process(&text));
                (pid, ticks)
            })
            .collect();
        Snapshot {
            at: Instant::now(),
            machine,
            processes,
        }
    }

    /// The CPU used from `self` until `later`; None when /proc could not
    /// be read (not Linux).
    pub fn until(&self, later: &Snapshot) -> Option<CpuUse> {
        let (before, after) = (self.machine?, later.machine?);
        let busy = after.busy.saturating_sub(before.busy);
        let all = after.all.saturating_sub(before.all);
        let processes = self
            .processes
            .iter()
            .map(|&(pid, ticks)| {
                let end = later
                    .processes
                    .iter()
                    .find(|(p, _)| *p == pid)
                    .and_then(|(_, t)| *t);
                ProcessCpu {
                    pid,
                    cpu_ms: ticks
                        .zip(end)
                        .map(|(a, b)| b.saturating_sub(a) as f64 * MS_PER_TICK),
                }
            })
            .collect();
        Some(CpuUse {
            secs: later.at.saturating_duration_since(self.at).as_secs_f64(),
            cores: after.cores,
            machine_busy_ms: busy as f64 * MS_PER_TICK,
            machine_busy_share: (all > 0).then(|| busy as f64 / all as f64),
            processes,
            per_user: None,
        })
    }
}

/// CPU used during a phase.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CpuUse {
    pub secs: f64,
    pub cores: usize,
    /// CPU-ms every process of the machine used, the simulator included.
    pub machine_busy_ms: f64,
    /// Of the machine's cores over the phase, the share that was busy.
    pub machine_busy_share: Option<f64>,
    pub processes: Vec<ProcessCpu>,
    /// The same, divided by the users the phase created or found.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_user: Option<PerUser>,
}

/// CPU-ms of one `--pid` during a phase; None when it could not be read.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProcessCpu {
    pub pid: u32,
    pub cpu_ms: Option<f64>,
}

/// CPU-ms a user.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PerUser {
    pub machine_ms: f64,
    pub processes: Vec<ProcessCpu>,
}

impl CpuUse {
    /// Adds the cost a user, for a phase that provisioned `users`.
    pub fn for_users(mut self, users: usize) -> CpuUse {
        if users > 0 {
            let n = users as f64;
            self.per_user = Some(PerUser {
                machine_ms: self.machine_busy_ms / n,
                processes: self
                    .processes
                    .iter()
                    .map(|p| ProcessCpu {
                        pid: p.pid,
                        cpu_ms: p.cpu_ms.map(|ms| ms / n),
                    })
                    .collect(),
            });
        }
        self
    }

    /// One line for the human summary, e.g. `machine 1.57 ms a user (2
    /// cores, 81 % busy); pid 12 0.34 ms, pid 13 0.37 ms`.
    pub fn describe(&self) -> String {
        let busy = self
            .machine_busy_share
            .map(|s| format!(", {:.0} % busy", s * 100.0))
            .unwrap_or_default();
        let ms = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2} ms"));
        match &self.per_user {
            Some(per) => {
                let mut line = format!(
                    "machine {:.2} ms a user ({} cores{busy})",
                    per.machine_ms, self.cores
                );
                for p in &per.processes {
                    line.push_str(&format!(", pid {} {}", p.pid, ms(p.cpu_ms)));
                }
                line
            }
            None => format!(
                "machine {:.0} ms in {:.2} s ({} cores{busy})",
                self.machine_busy_ms, self.secs, self.cores
            ),
        }
    }
}

/// The first line of /proc/stat: `cpu user nice system idle iowait irq
/// softirq steal guest guest_nice`, all cores together. Guest time is
/// counted in user time already.
fn parse_machine(text: &str) -> Option<MachineTicks> {
    let mut lines = text.lines();
    let first = lines.next()?;
    let mut fields = first.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let ticks: Vec<u64> = fields
        .take(8)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    let [user, nice, system, idle, iowait, irq, softirq, steal] = ticks[..] else {
        return None;
    };
    let busy = user + nice + system + irq + softirq + steal;
    let cores = lines
        .take_while(|l| l.starts_with("cpu"))
        .filter(|l| l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .count();
    Some(MachineTicks {
        busy,
        all: busy + idle + iowait,
        cores,
    })
}

/// utime + stime (fields 14 and 15) of /proc/PID/stat. The command name
/// (field 2) is in parentheses and may hold spaces and parentheses itself,
/// so the fields are counted from the last `)`.
fn parse_process(text: &str) -> Option<u64> {
    let (_, rest) = text.rsplit_once(')')?;
    // rest starts with field 3 (the state).
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_ticks_count_busy_time_and_cores() {
        let text = "cpu  100 5 50 1000 20 3 2 1 0 0\n\
                    cpu0 50 2 25 500 10 1 1 0 0 0\n\
                    cpu1 50 3 25 500 10 2 1 1 0 0\n\
                    intr 12345\nctxt 999\n";
        assert_eq!(
            parse_machine(text),
            Some(MachineTicks {
                busy: 100 + 5 + 50 + 3 + 2 + 1,
                all: 161 + 1000 + 20,
                cores: 2
            })
        );
        assert_eq!(parse_machine("intr 1\n"), None);
        assert_eq!(parse_machine("cpu 1 2 3\n"), None, "too few fields");
    }

    #[test]
    fn process_ticks_are_read_after_the_command_name() {
        // A command name with a space and a parenthesis in it.
        let text = "4242 (tokio rt) x) S 1 4242 4242 0 -1 4194560 500 0 0 0 \
                    731 264 0 0 20 0 9 0 12345 100000 5000 18446744073709551615\n";
        assert_eq!(parse_process(text), Some(731 + 264));
        assert_eq!(parse_process("4242 (short) S 1 2"), None);
    }

    #[test]
    fn use_per_user_divides_every_figure() {
        let before = Snapshot {
            at: Instant::now(),
            machine: Some(MachineTicks {
                busy: 1_000,
                all: 4_000,
                cores: 2,
            }),
            processes: vec![(7, Some(100)), (8, None)],
        };
        let after = Snapshot {
            at: before.at + std::time::Duration::from_secs(2),
            machine: Some(MachineTicks {
                busy: 1_300,
                all: 4_400,
                cores: 2,
            }),
            processes: vec![(7, Some(150)), (8, Some(20))],
        };
        let used = before.until(&after).expect("both read").for_users(1_000);
        assert_eq!(used.machine_busy_ms, 3_000.0);
        assert_eq!(used.machine_busy_share, Some(0.75));
        assert_eq!(used.secs, 2.0);
        let per = used.per_user.clone().expect("users");
        assert_eq!(per.machine_ms, 3.0);
        assert_eq!(per.processes[0].cpu_ms, Some(0.5));
        assert_eq!(per.processes[1].cpu_ms, None, "unreadable at the start");
        assert_eq!(
            used.describe(),
            "machine 3.00 ms a user (2 cores, 75 % busy), pid 7 0.50 ms, pid 8 -"
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn reads_this_process_as_it_works() {
        let pid = std::process::id();
        let start = Snapshot::take(&[pid]);
        assert!(start.machine.is_some_and(|m| m.cores >= 1 && m.busy > 0));
        // Work until the kernel has counted at least one tick of it.
        let give_up = Instant::now() + std::time::Duration::from_secs(10);
        let mut spun = 0u64;
        let used = loop {
            for i in 0..1_000_000u64 {
                spun = spun.wrapping_add(std::hint::black_box(i));
            }
            let used = start.until(&Snapshot::take(&[pid])).expect("linux");
            if used.processes[0].cpu_ms.is_some_and(|ms| ms > 0.0) || Instant::now() > give_up {
                break used;
            }
        };
        std::hint::black_box(spun);
        assert!(
            used.processes[0].cpu_ms.is_some_and(|ms| ms >= MS_PER_TICK),
            "{used:?}"
        );
    }
}
