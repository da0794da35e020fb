//! Redaction: URLs and connection strings printed without their secrets,
//! and secrets scrubbed from free text (error messages that quote a URL).
//! One module, so the configuration's printout, the logs, the database
//! errors and the stored delivery errors redact the same way.

/// Query parameters whose values are shown: connection settings that are
/// never credentials. Every other query value is redacted.
const SHOWN_PARAMS: &[&str] = &[
    "sslmode",
    "connect_timeout",
    "application_name",
    "target_session_attrs",
    "keepalives",
    "keepalives_idle",
    "channel_binding",
    "load_balance_hosts",
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
];

/// Secrets shorter than this are not scrubbed from free text by
/// [`scrub`] (replacing every `1` in a message helps nobody); URLs are
/// still printed redacted whatever their length.
pub const MIN_SCRUB_BYTES: usize = 4;

/// A URL (postgres, http, nats) or a key=value connection string with its
/// secrets replaced by `***`: the password of the userinfo (a userinfo
/// without `:` is a token in a non-postgres URL, and redacted whole), every
/// query value but known connection settings (`sslmode`, ...), the
/// fragment, and `password=` of the key=value form. The one redaction used
/// for printing the configuration, logs and stored delivery errors.
pub fn redact_url(url: &str) -> String {
    url_parts(url).0
}

/// The secrets [`redact_url`] removes from `url`, each also
/// percent-decoded when that differs: what [`scrub`] looks for in text
/// (an error message that quotes the URL).
pub fn url_secrets(url: &str) -> Vec<String> {
    let mut out = Vec::new();
    for s in url_parts(url).1 {
        if let Some(d) = percent_decode(&s)
            && d != s
        {
            out.push(d);
        }
        out.push(s);
    }
    out
}

/// `text` with every occurrence of each secret (at least
/// [`MIN_SCRUB_BYTES`] bytes) replaced by `***`, longest first.
pub fn scrub(text: &str, secrets: &[String]) -> String {
    let mut sorted: Vec<&String> = secrets
        .iter()
        .filter(|s| s.len() >= MIN_SCRUB_BYTES)
        .collect();
    sorted.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let mut out = text.to_string();
    for s in sorted {
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), "***");
        }
    }
    out
}

/// (the redacted URL, the secrets taken out of it).
fn url_parts(url: &str) -> (String, Vec<String>) {
    let mut secrets = Vec::new();
    let Some(scheme_end) = url.find("://") else {
        let shown = keyword_tokens(url)
            .into_iter()
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) if k.eq_ignore_ascii_case("password") => {
                    secrets.push(v.trim_matches('\'').to_string());
                    format!("{k}=***")
                }
                _ => kv.to_string(),
            })
            .collect::<Vec<_>>()
            .join(" ");
        return (shown, secrets);
    };
    let (head, rest) = url.split_at(scheme_end + 3);
    let postgres = head.starts_with("postgres");
    let (rest, fragment) = match rest.split_once('#') {
        Some((r, f)) => (r, Some(f)),
        None => (rest, None),
    };
    let auth_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(auth_end);
    let mut out = head.to_string();
    match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            match userinfo.split_once(':') {
                Some((user, password)) => {
                    secrets.push(password.to_string());
                    out.push_str(&format!("{user}:***"));
                }
                None if postgres => out.push_str(userinfo),
                None => {
                    secrets.push(userinfo.to_string());
                    out.push_str("***");
                }
            }
            out.push_str(&authority[at..]);
        }
        None => out.push_str(authority),
    }
    out.push_str(&redact_params(tail, &mut secrets));
    if let Some(f) = fragment {
        secrets.push(f.to_string());
        out.push_str("#***");
    }
    secrets.retain(|s| !s.is_empty());
    (out, secrets)
}

/// The `key=value` tokens of a keyword connection string; a single-quoted
/// value may hold spaces (`password='a b'`).
fn keyword_tokens(text: &str) -> Vec<&str> {
    let mut tokens = Vec::new();
    let (mut start, mut quoted, mut escaped) = (None, false, false);
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '\'' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => {
                if let Some(s) = start.take() {
                    tokens.push(&text[s..i]);
                }
                continue;
            }
            _ => {}
        }
        start.get_or_insert(i);
    }
    if let Some(s) = start {
        tokens.push(&text[s..]);
    }
    tokens
}

fn redact_params(tail: &str, secrets: &mut Vec<String>) -> String {
    let Some((path, query)) = tail.split_once('?') else {
        return tail.to_string();
    };
    let query = query
        .split('&')
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if !SHOWN_PARAMS.iter().any(|p| k.eq_ignore_ascii_case(p)) => {
                secrets.push(v.to_string());
                format!("{k}=***")
            }
            _ => kv.to_string(),
        })
        .collect::<Vec<_>>()
        .join("&");
    format!("{path}?{query}")
}

/// `%XX` decoded (and `+` kept); `None` when not valid UTF-8 afterwards.
pub fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted() {
        assert_eq!(
            redact_url("postgres://u:hunter2@h:5432/db?sslmode=disable&password=x"),
            "postgres://u:***@h:5432/db?sslmode=disable&password=***"
        );
        assert_eq!(redact_url("postgres://h/db"), "postgres://h/db");
        assert_eq!(
            redact_url("host=h password=hunter2 user=u"),
            "host=h password=*** user=u"
        );
        assert_eq!(
            redact_url("host=h password='hunter2 with\\' spaces' user=u"),
            "host=h password=*** user=u"
        );
    }
}
