//! The messages people receive, each as a subject, a plain-text part and an
//! HTML part that say the same thing.
//!
//! Every value here may come from Microsoft Entra ID or an operator: in the
//! HTML part it is escaped, and wherever one line is expected (the subject,
//! a name, a table cell) line breaks become spaces, so a value can neither
//! add markup nor start a paragraph of its own. The HTML uses inline styles
//! only and loads nothing, and reads the same in a client that drops styles.

use super::message::one_line;

/// What a welcome invitation says.
#[derive(Debug, Clone, Copy)]
pub struct Welcome<'a> {
    /// The organization that invites (the tenant's display name).
    pub org_name: &'a str,
    /// How to greet the person (given name, else display name).
    pub person_name: Option<&'a str>,
    /// The address the invitation was sent to.
    pub email: &'a str,
    /// The single-use link that accepts the invitation.
    pub link: &'a str,
    /// When the link stops working, for people ("3 December 2026, 14:00 UTC").
    pub expires: &'a str,
    /// Who to write to with questions; without it the email says to ask the organization.
    pub contact: Option<&'a str>,
}

/// One failed change in a digest, as the provisioning log recorded it.
#[derive(Debug, Clone, Copy)]
pub struct FailureLine<'a> {
    /// When the change was recorded, for people.
    pub at: &'a str,
    /// `create`, `replace`, `patch`, `delete`.
    pub operation: &'a str,
    /// The resource type and id, e.g. `User 2819c223`.
    pub resource: &'a str,
    /// userName or displayName, when the change named one.
    pub subject: Option<&'a str>,
    /// The HTTP status answered (or recorded) for the change.
    pub status: i32,
    /// `rejected` (refused with a SCIM error) or `dead` (not applied after every retry).
    pub outcome: &'a str,
    /// Why, in the words of the error.
    pub reason: &'a str,
    /// The id to look the change up by, and to retry it with.
    pub change_id: &'a str,
}

/// What a failure digest says.
#[derive(Debug, Clone, Copy)]
pub struct Digest<'a> {
    pub org_name: &'a str,
    /// The start of the period the digest covers, for people.
    pub since: &'a str,
    /// The failures listed one by one.
    pub failures: &'a [FailureLine<'a>],
    /// Failures beyond the listed ones, counted but not listed.
    pub omitted: usize,
    /// What an admin can do, e.g. "Run `scimsync queue retry <change id>`, or
    /// use Retry on the admin page's provisioning log."
    pub retry_hint: &'a str,
}

/// A reason longer than this is cut in the digest; the provisioning log keeps it whole.
const MAX_REASON_CHARS: usize = 300;

/// Escapes text for HTML element content and for quoted attribute values.
pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + s.len() / 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// One line, escaped for HTML.
fn cell(s: &str) -> String {
    html_escape(&one_line(s))
}

/// One line, cut at `max` characters with an ellipsis.
fn clipped(s: &str, max: usize) -> String {
    let flat = one_line(s);
    match flat.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", flat[..at].trim_end()),
        None => flat,
    }
}

const FONT: &str = "font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif";
const MUTED: &str = "color:#5b6475;font-size:13px";

/// Wraps body markup in a minimal document; the width and font come from
/// inline styles, so a client that strips `<style>` blocks still shows them.
fn page(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{title}</title>\n</head>\n\
         <body style=\"margin:0;padding:0;background:#ffffff\">\n\
         <div style=\"{FONT};font-size:15px;line-height:1.5;color:#1d2330;max-width:640px;margin:0 auto;padding:24px 16px\">\n\
         {body}\n</div>\n</body>\n</html>\n"
    )
}

/// Subject, plain text and HTML of a welcome invitation.
pub fn welcome(w: &Welcome<'_>) -> (String, String, String) {
    let org = one_line(w.org_name);
    let email = one_line(w.email);
    let link = one_line(w.link);
    let expires = one_line(w.expires);
    let name = w.person_name.map(one_line).filter(|n| !n.is_empty());
    let contact = w.contact.map(one_line).filter(|c| !c.is_empty());

    let subject = format!("You're invited to join {org}");

    let greeting = match &name {
        Some(n) => format!("Hello {n},"),
        None => "Hello,".to_owned(),
    };
    let questions = match &contact {
        Some(c) => format!("Questions? Write to {c}."),
        None => format!("Questions? Ask the people who manage accounts at {org}."),
    };
    let text = format!(
        "{greeting}\n\
         \n\
         {org} has invited you to join, using your address {email}.\n\
         \n\
         To accept, open this link and confirm on the page that opens:\n\
         \n\
         {link}\n\
         \n\
         The link works once and expires on {expires}.\n\
         \n\
         {questions}\n\
         \n\
         If you did not expect this invitation, you can ignore this email: \
         nothing happens until the invitation is accepted.\n"
    );

    let greeting_html = match &name {
        Some(n) => format!("Hello {},", html_escape(n)),
        None => "Hello,".to_owned(),
    };
    let questions_html = match &contact {
        Some(c) => format!("Questions? Write to {}.", html_escape(c)),
        None => format!(
            "Questions? Ask the people who manage accounts at {}.",
            html_escape(&org)
        ),
    };
    let (org_h, email_h, link_h, expires_h) = (
        html_escape(&org),
        html_escape(&email),
        html_escape(&link),
        html_escape(&expires),
    );
    let body = format!(
        "<p style=\"margin:0 0 16px\">{greeting_html}</p>\n\
         <p style=\"margin:0 0 16px\"><strong>{org_h}</strong> has invited you to join, using your address <strong>{email_h}</strong>.</p>\n\
         <p style=\"margin:0 0 24px\"><a href=\"{link_h}\" style=\"display:inline-block;background:#2356d8;color:#ffffff;padding:12px 20px;border-radius:6px;text-decoration:none;font-weight:600\">Accept the invitation</a></p>\n\
         <p style=\"margin:0 0 16px;{MUTED}\">If the button does not work, open this link:<br>\
         <a href=\"{link_h}\" style=\"color:#2356d8;word-break:break-all\">{link_h}</a></p>\n\
         <p style=\"margin:0 0 16px\">The link works once and expires on <strong>{expires_h}</strong>.</p>\n\
         <p style=\"margin:0 0 16px\">{questions_html}</p>\n\
         <p style=\"margin:24px 0 0;{MUTED}\">If you did not expect this invitation, you can ignore this email: nothing happens until the invitation is accepted.</p>"
    );
    let html = page(&html_escape(&subject), &body);
    (subject, text, html)
}

/// Subject, plain text and HTML of a failure digest for admins.
pub fn digest(d: &Digest<'_>) -> (String, String, String) {
    let org = one_line(d.org_name);
    let since = one_line(d.since);
    let total = d.failures.len() + d.omitted;
    let changes = if total == 1 { "change" } else { "changes" };
    let subject = format!("{total} provisioning {changes} failed for {org}");
    let intro = format!(
        "{total} {changes} that Microsoft Entra ID sent for {org} could not be applied since {since}."
    );
    let legend_rejected = "rejected: scimsync refused the change and told Entra ID why; fix the data or the attribute mapping.";
    let legend_dead = "dead: the change could not be applied after every retry, usually because the database or queue was unavailable.";
    let more = (d.omitted > 0).then(|| {
        format!(
            "…and {} more, not listed here; the provisioning log has them all.",
            d.omitted
        )
    });
    let retry = one_line(d.retry_hint);

    let mut text = format!("{intro}\n\n");
    for f in d.failures {
        let who = f
            .subject
            .map(one_line)
            .filter(|s| !s.is_empty())
            .map(|s| format!(" ({s})"))
            .unwrap_or_default();
        text.push_str(&format!(
            "- {at}  {op} {res}{who}\n  {status} {outcome}: {reason}\n  change id: {id}\n\n",
            at = one_line(f.at),
            op = one_line(f.operation),
            res = one_line(f.resource),
            status = f.status,
            outcome = one_line(f.outcome),
            reason = clipped(f.reason, MAX_REASON_CHARS),
            id = one_line(f.change_id),
        ));
    }
    if let Some(more) = &more {
        text.push_str(&format!("{more}\n\n"));
    }
    text.push_str(&format!(
        "How to retry: {retry}\n\nWhat the outcomes mean:\n  {legend_rejected}\n  {legend_dead}\n"
    ));

    let th = "text-align:left;padding:6px 8px;border-bottom:2px solid #c9ced8";
    let td = "vertical-align:top;padding:6px 8px;border-bottom:1px solid #e3e6eb";
    let mut rows = String::new();
    for f in d.failures {
        let who = f
            .subject
            .map(one_line)
            .filter(|s| !s.is_empty())
            .map(|s| format!("<br><strong>{}</strong>", html_escape(&s)))
            .unwrap_or_default();
        rows.push_str(&format!(
            "<tr><td style=\"{td};white-space:nowrap\">{at}</td>\
             <td style=\"{td}\">{op} {res}{who}</td>\
             <td style=\"{td};white-space:nowrap\">{status} {outcome}</td>\
             <td style=\"{td}\">{reason}</td>\
             <td style=\"{td}\"><code>{id}</code></td></tr>\n",
            at = cell(f.at),
            op = cell(f.operation),
            res = cell(f.resource),
            status = f.status,
            outcome = cell(f.outcome),
            reason = html_escape(&clipped(f.reason, MAX_REASON_CHARS)),
            id = cell(f.change_id),
        ));
    }
    let more_html = more
        .as_deref()
        .map(|m| format!("<p style=\"margin:0 0 16px\">{}</p>\n", html_escape(m)))
        .unwrap_or_default();
    let body = format!(
        "<p style=\"margin:0 0 16px\">{intro}</p>\n\
         <table cellpadding=\"6\" cellspacing=\"0\" border=\"1\" style=\"border-collapse:collapse;border:1px solid #e3e6eb;font-size:13px;margin:0 0 16px;width:100%\">\n\
         <tr><th style=\"{th}\">Time</th><th style=\"{th}\">Change</th><th style=\"{th}\">Answer</th><th style=\"{th}\">Reason</th><th style=\"{th}\">Change id</th></tr>\n\
         {rows}</table>\n\
         {more_html}\
         <p style=\"margin:0 0 16px\"><strong>How to retry:</strong> {retry}</p>\n\
         <p style=\"margin:0;{MUTED}\">What the outcomes mean:<br>{legend_rejected}<br>{legend_dead}</p>",
        intro = html_escape(&intro),
        retry = html_escape(&retry),
        legend_rejected = html_escape(legend_rejected),
        legend_dead = html_escape(legend_dead),
    );
    let html = page(&html_escape(&subject), &body);
    (subject, text, html)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invite<'a>(name: Option<&'a str>, org: &'a str) -> Welcome<'a> {
        Welcome {
            org_name: org,
            person_name: name,
            email: "ada@example.com",
            link: "https://scim.example.com/invitations/inv_abc",
            expires: "1 December 2026, 12:00 UTC",
            contact: Some("it@example.com"),
        }
    }

    fn failure<'a>(subject: Option<&'a str>, reason: &'a str) -> FailureLine<'a> {
        FailureLine {
            at: "2026-11-28 10:00 UTC",
            operation: "create",
            resource: "User 2819c223",
            subject,
            status: 409,
            outcome: "rejected",
            reason,
            change_id: "01JCHANGE",
        }
    }

    #[test]
    fn welcome_names_the_org_the_link_the_expiry_and_the_contact() {
        let (subject, text, html) = welcome(&invite(Some("Ada"), "Acme"));
        assert_eq!(subject, "You're invited to join Acme");
        for part in [&text, &html] {
            assert!(part.contains("Acme"));
            assert!(part.contains("https://scim.example.com/invitations/inv_abc"));
            assert!(part.contains("1 December 2026, 12:00 UTC"));
            assert!(part.contains("it@example.com"));
            assert!(part.contains("Ada"));
        }
        assert!(text.contains("\n\nhttps://scim.example.com/invitations/inv_abc\n\n"));
        assert!(html.contains("href=\"https://scim.example.com/invitations/inv_abc\""));
        assert!(html.contains("Accept the invitation"));
    }

    #[test]
    fn welcome_without_name_or_contact_still_reads_well() {
        let mut w = invite(None, "Acme");
        w.contact = None;
        let (_, text, html) = welcome(&w);
        assert!(text.starts_with("Hello,\n"));
        assert!(text.contains("Ask the people who manage accounts at Acme"));
        assert!(html.contains("Hello,</p>"));
    }

    #[test]
    fn markup_from_entra_is_escaped_in_html() {
        let mut w = invite(Some("<script>alert(1)</script>"), "A&B <b>Corp</b>");
        w.email = "\"><img src=x onerror=alert(1)>@example.com";
        w.link = "https://x.example/\"onmouseover=\"alert(1)";
        let (_, _, html) = welcome(&w);
        assert!(!html.contains("<script>"), "{html}");
        assert!(!html.contains("<b>Corp"), "{html}");
        assert!(!html.contains("<img"), "{html}");
        assert!(!html.contains("\"onmouseover"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(html.contains("A&amp;B &lt;b&gt;Corp&lt;/b&gt;"));
    }

    #[test]
    fn html_loads_nothing_from_outside() {
        let (_, _, html) = welcome(&invite(Some("Ada"), "Acme"));
        let (_, _, digest_html) = digest(&Digest {
            org_name: "Acme",
            since: "09:45 UTC",
            failures: &[failure(None, "x")],
            omitted: 0,
            retry_hint: "retry",
        });
        for h in [html, digest_html] {
            assert!(!h.contains("<img") && !h.contains("<link") && !h.contains("<script"));
            assert!(!h.contains("<style") && !h.contains("url("));
        }
    }

    #[test]
    fn line_breaks_cannot_reach_the_subject_or_start_new_lines() {
        let (subject, text, _) = welcome(&invite(
            Some("Eve\r\nBcc: x@example.com"),
            "Acme\r\nBcc: y@example.com",
        ));
        assert!(
            !subject.contains('\n') && !subject.contains('\r'),
            "{subject:?}"
        );
        assert!(!text.contains("\nBcc:") && !text.contains('\r'), "{text:?}");
        assert!(text.contains("Hello Eve  Bcc: x@example.com,"), "{text:?}");
    }

    #[test]
    fn html_escape_covers_the_five_special_characters() {
        assert_eq!(
            html_escape("<a href=\"x\">&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(html_escape("plain é"), "plain é");
    }

    #[test]
    fn digest_counts_lists_and_tells_how_to_retry() {
        let lines = [
            failure(Some("dup@example.com"), "userName is already taken"),
            FailureLine {
                outcome: "dead",
                status: 503,
                subject: None,
                change_id: "01JOTHER",
                ..failure(None, "database unavailable")
            },
        ];
        let (subject, text, html) = digest(&Digest {
            org_name: "Acme",
            since: "2026-11-28 09:45 UTC",
            failures: &lines,
            omitted: 3,
            retry_hint: "Run `scimsync queue retry <change id>`.",
        });
        assert_eq!(subject, "5 provisioning changes failed for Acme");
        for part in [&text, &html] {
            assert!(part.contains("since 2026-11-28 09:45 UTC"));
            assert!(part.contains("dup@example.com"));
            assert!(part.contains("409 rejected") && part.contains("503 dead"));
            assert!(part.contains("userName is already taken"));
            assert!(part.contains("01JCHANGE") && part.contains("01JOTHER"));
            assert!(part.contains("3 more"));
            assert!(part.contains("scimsync queue retry"));
        }
    }

    #[test]
    fn digest_of_one_failure_says_change() {
        let lines = [failure(None, "bad")];
        let (subject, text, _) = digest(&Digest {
            org_name: "Acme",
            since: "today",
            failures: &lines,
            omitted: 0,
            retry_hint: "retry",
        });
        assert_eq!(subject, "1 provisioning change failed for Acme");
        assert!(!text.contains("more, not listed"));
    }

    #[test]
    fn digest_escapes_values_and_keeps_each_on_its_line() {
        let lines = [FailureLine {
            resource: "User <x>",
            ..failure(
                Some("<b>eve</b>\r\nInjected line"),
                "value \"<script>\" rejected\nsecond line",
            )
        }];
        let (subject, text, html) = digest(&Digest {
            org_name: "Acme\nBcc: z@example.com",
            since: "today",
            failures: &lines,
            omitted: 0,
            retry_hint: "<a href=x>retry</a>",
        });
        assert!(!subject.contains('\n'));
        assert!(
            !html.contains("<b>eve") && !html.contains("<script>") && !html.contains("<a href=x>")
        );
        assert!(html.contains("&lt;b&gt;eve&lt;/b&gt;"));
        assert!(
            !text.contains("\nInjected line") && !text.contains("\nsecond line"),
            "{text}"
        );
        assert!(!text.contains("\nBcc:"));
    }

    #[test]
    fn long_reasons_are_cut() {
        let long = "x".repeat(1000);
        let lines = [failure(None, &long)];
        let (_, text, _) = digest(&Digest {
            org_name: "Acme",
            since: "today",
            failures: &lines,
            omitted: 0,
            retry_hint: "retry",
        });
        assert!(text.contains(&format!("{}…", "x".repeat(MAX_REASON_CHARS))));
        assert!(!text.contains(&"x".repeat(MAX_REASON_CHARS + 1)));
    }
}
