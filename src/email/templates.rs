//! The messages people receive, each as a subject, a plain-text part and
//! an HTML part. Every value that came from Entra ID or an operator is
//! escaped in HTML and flattened to one line where a line is expected.

/// What a welcome invitation says.
#[derive(Debug)]
pub struct Welcome<'a> {
    pub org_name: &'a str,
    pub person_name: Option<&'a str>,
    pub email: &'a str,
    pub link: &'a str,
    /// When the link stops working, for people ("3 December 2026, 14:00 UTC").
    pub expires: &'a str,
    /// Who to write to with questions.
    pub contact: Option<&'a str>,
}

/// One failed change in a digest.
#[derive(Debug)]
pub struct FailureLine<'a> {
    pub at: &'a str,
    pub operation: &'a str,
    pub resource: &'a str,
    pub subject: Option<&'a str>,
    pub status: i32,
    /// `rejected` or `dead`
    pub outcome: &'a str,
    pub reason: &'a str,
    pub change_id: &'a str,
}

/// What a failure digest says.
#[derive(Debug)]
pub struct Digest<'a> {
    pub org_name: &'a str,
    pub since: &'a str,
    pub failures: &'a [FailureLine<'a>],
    /// Failures beyond the listed ones.
    pub omitted: usize,
    pub retry_hint: &'a str,
}

/// Escapes text for HTML element content and attribute values.
pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
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

/// One line of text: line breaks and other control characters become
/// spaces, so a value cannot start a new header or a new paragraph.
pub fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_owned()
}

const STYLE: &str =
    "font-family:Segoe UI,Helvetica,Arial,sans-serif;font-size:15px;line-height:1.5;color:#1d2330";

fn html_page(body: &str) -> String {
    format!(
        "<!doctype html><html><body style=\"{STYLE}\"><div style=\"max-width:560px;margin:0 auto;padding:16px\">{body}</div></body></html>"
    )
}

pub fn welcome(w: &Welcome<'_>) -> (String, String, String) {
    let org = one_line(w.org_name);
    let greeting = match w.person_name.map(one_line).filter(|n| !n.is_empty()) {
        Some(name) => format!("Hello {name},"),
        None => "Hello,".to_owned(),
    };
    let subject = format!("You're invited to join {org}");
    let contact_text = match w.contact.map(one_line) {
        Some(c) if !c.is_empty() => format!("Questions? Write to {c}."),
        _ => "Questions? Ask your IT administrator.".to_owned(),
    };
    let text = format!(
        "{greeting}\n\n\
         {org} has given you access with the address {email}. To join, open this link and accept the invitation:\n\n\
         {link}\n\n\
         The link works once and expires on {expires}. If you did not expect this invitation, you can ignore it.\n\n\
         {contact_text}\n",
        email = one_line(w.email),
        link = one_line(w.link),
        expires = one_line(w.expires),
    );
    let html = html_page(&format!(
        "<p>{greeting}</p>\
         <p><strong>{org}</strong> has given you access with the address <strong>{email}</strong>. To join, accept the invitation:</p>\
         <p><a href=\"{link}\" style=\"display:inline-block;background:#2356d8;color:#ffffff;padding:10px 18px;border-radius:6px;text-decoration:none\">Accept the invitation</a></p>\
         <p style=\"font-size:13px;color:#5b6475\">Or open this link: {link}<br>It works once and expires on {expires}. If you did not expect this invitation, you can ignore it.</p>\
         <p>{contact}</p>",
        greeting = html_escape(&greeting),
        org = html_escape(&org),
        email = html_escape(&one_line(w.email)),
        link = html_escape(&one_line(w.link)),
        expires = html_escape(&one_line(w.expires)),
        contact = html_escape(&contact_text),
    ));
    (subject, text, html)
}

pub fn digest(d: &Digest<'_>) -> (String, String, String) {
    let org = one_line(d.org_name);
    let total = d.failures.len() + d.omitted;
    let noun = if total == 1 { "change" } else { "changes" };
    let subject = format!("{total} provisioning {noun} failed for {org}");
    let mut text = format!(
        "{total} {noun} from Microsoft Entra ID could not be applied to {org} since {since}.\n\n",
        since = one_line(d.since)
    );
    let mut rows = String::new();
    for f in d.failures {
        let who = f.subject.map(one_line).unwrap_or_default();
        // Mail failures carry no HTTP status.
        let status = if f.status == 0 {
            String::new()
        } else {
            f.status.to_string()
        };
        text.push_str(&format!(
            "- {at}  {op} {res} {who}: {status} {outcome}: {reason} (change {id})\n",
            at = one_line(f.at),
            op = one_line(f.operation),
            res = one_line(f.resource),
            outcome = one_line(f.outcome),
            reason = one_line(f.reason),
            id = one_line(f.change_id),
        ));
        rows.push_str(&format!(
            "<tr><td>{at}</td><td>{op}</td><td>{res}<br><strong>{who}</strong></td><td>{status} {outcome}</td><td>{reason}</td><td><code>{id}</code></td></tr>",
            at = html_escape(&one_line(f.at)),
            op = html_escape(&one_line(f.operation)),
            res = html_escape(&one_line(f.resource)),
            who = html_escape(&who),
            outcome = html_escape(&one_line(f.outcome)),
            reason = html_escape(&one_line(f.reason)),
            id = html_escape(&one_line(f.change_id)),
        ));
    }
    let more = if d.omitted > 0 {
        format!("... and {} more, in the provisioning log.\n", d.omitted)
    } else {
        String::new()
    };
    text.push_str(&more);
    text.push_str(&format!("\nWhat to do: {}\n", one_line(d.retry_hint)));
    let html = html_page(&format!(
        "<p>{total} {noun} from Microsoft Entra ID could not be applied to <strong>{org}</strong> since {since}.</p>\
         <table cellpadding=\"6\" style=\"border-collapse:collapse;font-size:13px\" border=\"1\">\
         <tr><th>Time</th><th>Operation</th><th>Resource</th><th>Answer</th><th>Reason</th><th>Change</th></tr>{rows}</table>\
         <p>{more}</p><p><strong>What to do:</strong> {hint}</p>",
        org = html_escape(&org),
        since = html_escape(&one_line(d.since)),
        more = html_escape(more.trim()),
        hint = html_escape(&one_line(d.retry_hint)),
    ));
    (subject, text, html)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample<'a>(name: &'a str, org: &'a str) -> Welcome<'a> {
        Welcome {
            org_name: org,
            person_name: Some(name),
            email: "ada@example.com",
            link: "https://scim.example.com/invitations/inv_x",
            expires: "1 December 2026, 12:00 UTC",
            contact: Some("it@example.com"),
        }
    }

    #[test]
    fn welcome_names_the_org_the_link_and_the_contact() {
        let (subject, text, html) = welcome(&sample("Ada", "Acme"));
        assert_eq!(subject, "You're invited to join Acme");
        assert!(text.contains("https://scim.example.com/invitations/inv_x"));
        assert!(text.contains("it@example.com"));
        assert!(html.contains("href=\"https://scim.example.com/invitations/inv_x\""));
    }

    #[test]
    fn markup_in_names_is_escaped_in_html() {
        let (_, _, html) = welcome(&sample("<script>alert(1)</script>", "A&B <b>"));
        assert!(!html.contains("<script>"));
        assert!(html.contains("&lt;script&gt;"));
        assert!(html.contains("A&amp;B &lt;b&gt;"));
    }

    #[test]
    fn line_breaks_cannot_reach_the_subject_or_a_new_line() {
        let (subject, text, _) = welcome(&sample(
            "Eve\r\nBcc: x@example.com",
            "Acme\r\nBcc: y@example.com",
        ));
        assert!(!subject.contains('\n') && !subject.contains('\r'));
        assert!(!text.contains("\nBcc:"));
    }

    #[test]
    fn digest_lists_failures_and_counts_the_rest() {
        let lines = [FailureLine {
            at: "2026-11-28 10:00:00 UTC",
            operation: "create",
            resource: "User u1",
            subject: Some("dup@example.com"),
            status: 409,
            outcome: "rejected",
            reason: "userName taken",
            change_id: "01ABC",
        }];
        let (subject, text, html) = digest(&Digest {
            org_name: "Acme",
            since: "2026-11-28 09:45 UTC",
            failures: &lines,
            omitted: 4,
            retry_hint: "fix it",
        });
        assert_eq!(subject, "5 provisioning changes failed for Acme");
        assert!(text.contains("dup@example.com") && text.contains("409") && text.contains("01ABC"));
        assert!(text.contains("4 more"));
        assert!(html.contains("dup@example.com"));
    }
}
