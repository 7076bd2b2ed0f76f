//! Waiting for welcome emails in the service's file-transport directory
//! (`.eml` files, one per message), and telling when the last one was
//! written.

use std::collections::HashSet;
use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use super::stats::MailReport;

/// How often the directory is listed again while mail is still missing.
const POLL: Duration = Duration::from_millis(250);
/// Headers are at the top; this much is enough to find `To:`.
const HEAD_BYTES: u64 = 16 * 1024;

/// What has been seen of the directory so far.
#[derive(Debug)]
struct Scan {
    /// File names already read (ours or not), so each is read once.
    seen: HashSet<OsString>,
    /// Lower-cased addresses still owed a message.
    missing: HashSet<String>,
    /// The newest modification time among the messages found.
    latest: Option<SystemTime>,
}

impl Scan {
    /// Reads the `.eml` files not read before.
    fn pass(&mut self, dir: &Path) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            // Not there yet: the service creates it with the first message.
            return;
        };
        for entry in entries.filter_map(Result::ok) {
            let name = entry.file_name();
            if self.seen.contains(&name) || Path::new(&name).extension().is_none_or(|e| e != "eml")
            {
                continue;
            }
            let Ok(head) = read_head(&entry.path()) else {
                continue;
            };
            self.seen.insert(name);
            let mut ours = false;
            for address in recipients(&head) {
                ours |= self.missing.remove(&address);
            }
            if ours && let Ok(modified) = entry.metadata().and_then(|m| m.modified()) {
                self.latest = Some(self.latest.map_or(modified, |l| l.max(modified)));
            }
        }
    }
}

fn read_head(path: &Path) -> std::io::Result<String> {
    let mut head = Vec::new();
    std::fs::File::open(path)?
        .take(HEAD_BYTES)
        .read_to_end(&mut head)?;
    Ok(String::from_utf8_lossy(&head).into_owned())
}

/// The lower-cased addresses in a message's `To:` header (folded lines
/// joined; `Name <addr>` or a bare `addr`).
fn recipients(message: &str) -> Vec<String> {
    let mut value: Option<String> = None;
    for line in message.lines() {
        if line.is_empty() {
            break;
        }
        match &mut value {
            Some(v) if line.starts_with([' ', '\t']) => v.push_str(line),
            Some(_) => break,
            None => {
                if let Some((name, rest)) = line.split_once(':')
                    && name.eq_ignore_ascii_case("to")
                {
                    value = Some(rest.to_owned());
                }
            }
        }
    }
    value
        .unwrap_or_default()
        .split(',')
        .filter_map(|part| {
            let part = part.trim();
            let address = match (part.rfind('<'), part.rfind('>')) {
                (Some(a), Some(b)) if a < b => part.get(a + 1..b)?,
                _ => part,
            };
            (!address.is_empty()).then(|| address.trim().to_ascii_lowercase())
        })
        .collect()
}

/// Waits until every address in `expected` has a message in `dir`, or
/// `timeout` has passed. Times are measured from `run_started`.
pub async fn wait_for_welcomes(
    dir: PathBuf,
    expected: HashSet<String>,
    run_started: SystemTime,
    timeout: Duration,
) -> MailReport {
    let waiting = Instant::now();
    let owed = expected.len();
    let mut scan = Scan {
        seen: HashSet::new(),
        missing: expected
            .into_iter()
            .map(|a| a.to_ascii_lowercase())
            .collect(),
        latest: None,
    };
    loop {
        let d = dir.clone();
        // Listing tens of thousands of files is blocking work.
        scan = match tokio::task::spawn_blocking(move || {
            scan.pass(&d);
            scan
        })
        .await
        {
            Ok(s) => s,
            Err(_) => break MailReport::failed(&dir, owed, waiting),
        };
        if scan.missing.is_empty() || waiting.elapsed() >= timeout {
            let all_written_secs = scan.missing.is_empty().then(|| {
                scan.latest
                    .and_then(|l| l.duration_since(run_started).ok())
                    .unwrap_or_default()
                    .as_secs_f64()
            });
            break MailReport {
                dir: dir.display().to_string(),
                expected: owed,
                found: owed - scan.missing.len(),
                all_written_secs,
                waited_secs: waiting.elapsed().as_secs_f64(),
            };
        }
        tokio::time::sleep(POLL).await;
    }
}

impl MailReport {
    /// The scan itself died (a panic in the blocking task): nothing found.
    fn failed(dir: &Path, expected: usize, waiting: Instant) -> MailReport {
        MailReport {
            dir: dir.display().to_string(),
            expected,
            found: 0,
            all_written_secs: None,
            waited_secs: waiting.elapsed().as_secs_f64(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipients_come_from_the_to_header_only() {
        let message = "From: scimsync <noreply@example.com>\r\n\
                       To: \"Ada Lovelace\" <Ada@Example.com>,\r\n\
                       \tbob@example.com\r\n\
                       Subject: You're invited\r\n\
                       \r\n\
                       To: body@example.com\r\n";
        assert_eq!(recipients(message), ["ada@example.com", "bob@example.com"]);
        assert!(recipients("Subject: x\r\n\r\nTo: a@b\r\n").is_empty());
        assert_eq!(recipients("to: =?utf-8?b?w6k=?= <u@x.io>\n\n"), ["u@x.io"]);
    }

    #[tokio::test]
    async fn waits_for_the_expected_messages_and_ignores_others() {
        let dir = tempfile::tempdir().unwrap();
        let started = SystemTime::now();
        let write = |name: &str, to: &str| {
            std::fs::write(
                dir.path().join(name),
                format!("To: {to}\r\nSubject: hi\r\n\r\nbody"),
            )
            .unwrap();
        };
        write("1.eml", "User <a@example.com>");
        write("2.eml", "admin@example.com");
        write(".3.tmp", "b@example.com");
        let expected: HashSet<String> = ["a@example.com".into(), "B@example.com".into()].into();
        let report = wait_for_welcomes(
            dir.path().to_path_buf(),
            expected.clone(),
            started,
            Duration::ZERO,
        )
        .await;
        assert_eq!((report.expected, report.found), (2, 1));
        assert_eq!(report.all_written_secs, None);

        write("3.eml", "b@example.com");
        let report = wait_for_welcomes(
            dir.path().to_path_buf(),
            expected,
            started,
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(report.found, 2);
        assert!(report.all_written_secs.is_some());
    }
}
