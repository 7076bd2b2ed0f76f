//! Peak memory of the server processes, sampled from /proc/PID/status.

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::stats::MemoryReport;

/// Samples a set of processes until stopped.
#[derive(Debug)]
pub struct Sampler {
    stop: CancellationToken,
    task: JoinHandle<Vec<MemoryReport>>,
    /// Ends the sampling task when the sampler is dropped unstopped (a run
    /// that gave up early).
    _guard: DropGuard,
}

impl Sampler {
    /// Starts sampling `pids` every `every`, beginning now.
    pub fn start(pids: &[u32], every: Duration) -> Sampler {
        let stop = CancellationToken::new();
        let mut reports: Vec<MemoryReport> = pids
            .iter()
            .map(|&pid| MemoryReport {
                pid,
                peak_rss_kb: None,
                hwm_kb: None,
                samples: 0,
                error: None,
            })
            .collect();
        let cancelled = stop.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    () = cancelled.cancelled() => break,
                    _ = tick.tick() => {}
                }
                for r in &mut reports {
                    if r.error.is_some() {
                        continue;
                    }
                    let path = format!("/proc/{}/status", r.pid);
                    match tokio::fs::read_to_string(&path).await {
                        Ok(text) => {
                            let (rss, hwm) = parse_status(&text);
                            r.samples += 1;
                            r.peak_rss_kb = r.peak_rss_kb.max(rss);
                            r.hwm_kb = hwm.or(r.hwm_kb);
                        }
                        Err(e) => r.error = Some(format!("cannot read {path}: {e}")),
                    }
                }
            }
            reports
        });
        Sampler {
            _guard: stop.clone().drop_guard(),
            stop,
            task,
        }
    }

    /// Stops sampling and returns what was seen.
    pub async fn stop(self) -> Vec<MemoryReport> {
        self.stop.cancel();
        self.task.await.unwrap_or_default()
    }
}

/// VmRSS and VmHWM, in kB, from the text of /proc/PID/status.
fn parse_status(text: &str) -> (Option<u64>, Option<u64>) {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_rss_and_high_water_mark_in_kb() {
        let text =
            "Name:\tscimsync\nVmPeak:\t  900000 kB\nVmHWM:\t   51234 kB\nVmRSS:\t   40960 kB\n";
        assert_eq!(parse_status(text), (Some(40960), Some(51234)));
        assert_eq!(parse_status("Name:\tkthreadd\n"), (None, None));
    }

    #[tokio::test]
    async fn samples_this_process_and_reports_a_missing_one() {
        let sampler = Sampler::start(&[std::process::id(), u32::MAX], Duration::from_millis(10));
        tokio::time::sleep(Duration::from_millis(50)).await;
        let reports = sampler.stop().await;
        assert!(reports[0].samples >= 1);
        assert!(reports[0].peak_rss_kb.unwrap_or(0) > 0);
        assert!(reports[1].error.is_some());
    }
}
