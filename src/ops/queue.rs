//! Queue and outcome figures for `scimsync queue stats`, `/metrics` and
//! (later) the admin pages: the queues' own depth, and the database's
//! record of what was applied, rejected, died, and mailed.

use serde::Serialize;

use crate::jobs::mail::SendMail;
use crate::jobs::queue::Depth;
use crate::jobs::{Queue, ScimChange};
use crate::store::{self, Store, log, now, outbox};

/// Changes by outcome over a window.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Outcomes {
    pub applied: i64,
    pub rejected: i64,
    pub dead: i64,
}

/// The mail outbox now.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MailFigures {
    pub pending: i64,
    pub sending: i64,
    pub sent_total: i64,
    pub sent_last_hour: i64,
    pub failed_total: i64,
    pub cancelled_total: i64,
    pub oldest_owed_secs: Option<i64>,
}

/// Everything `queue stats` shows.
#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    pub queues: Vec<Depth>,
    pub last_5_minutes: Outcomes,
    pub last_hour: Outcomes,
    pub last_day: Outcomes,
    /// Changes applied per minute over the last five minutes.
    pub applied_per_minute: f64,
    pub mail: MailFigures,
}

fn outcomes(rows: Vec<(String, i64)>) -> Outcomes {
    let mut o = Outcomes::default();
    for (outcome, n) in rows {
        match outcome.as_str() {
            "applied" => o.applied += n,
            "rejected" => o.rejected += n,
            "dead" => o.dead += n,
            _ => {}
        }
    }
    o
}

/// Reads the figures. A queue that cannot be read is an error, never zeros.
pub async fn stats(
    store: &Store,
    changes: &Queue<ScimChange>,
    mail: &Queue<SendMail>,
) -> anyhow::Result<Stats> {
    let queues = vec![changes.depth().await?, mail.depth().await?];
    let (five, hour, day, mail) = store
        .run(|c| {
            let at = now();
            let five = outcomes(log::count_by_outcome_since(
                c,
                at - chrono::TimeDelta::minutes(5),
            )?);
            let hour = outcomes(log::count_by_outcome_since(
                c,
                at - chrono::TimeDelta::hours(1),
            )?);
            let day = outcomes(log::count_by_outcome_since(
                c,
                at - chrono::TimeDelta::days(1),
            )?);
            let mut figures = MailFigures::default();
            for (state, n) in outbox::count_by_state(c)? {
                match state.as_str() {
                    "pending" => figures.pending = n,
                    "sending" => figures.sending = n,
                    "sent" => figures.sent_total = n,
                    "failed" => figures.failed_total = n,
                    "cancelled" => figures.cancelled_total = n,
                    _ => {}
                }
            }
            figures.sent_last_hour = outbox::sent_since(c, at - chrono::TimeDelta::hours(1))?;
            figures.oldest_owed_secs =
                outbox::oldest_pending(c)?.map(|t| (at - t).num_seconds().max(0));
            Ok::<_, store::Error>((five, hour, day, figures))
        })
        .await?;
    Ok(Stats {
        queues,
        applied_per_minute: five.applied as f64 / 5.0,
        last_5_minutes: five,
        last_hour: hour,
        last_day: day,
        mail,
    })
}
