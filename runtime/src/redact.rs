//! Redaction of credentials in connection strings, for errors, logs and `Debug` output.
//!
//! [`redact_url`] replaces the password of a `scheme://user:password@host/...` URL (and any
//! `password=` query parameter) with `***`. It errs on the side of hiding too much: when a URL
//! is ambiguous (an unencoded `@` or `/` in the password), more than the password may be
//! hidden, never less.

/// Implements [`Debug`](std::fmt::Debug) for a type `$ty` that holds secrets: it shows only the
/// named fields (ids, addresses, settings, lengths) and marks the rest as left out
/// (`finish_non_exhaustive`), so that no key material, share, token, credential or plaintext
/// it holds can reach a log. `|$s| { "name": value, ... }` binds `$s` to `&self` for the
/// values, which may be any expression (`s.bytes.len()` in place of the bytes).
///
/// For leakless's own crates (the runtime and the leak-test harness); not a stable API.
#[doc(hidden)]
#[macro_export]
macro_rules! debug_fields {
    ($ty:ident, |$s:ident| { $($name:literal: $value:expr),+ $(,)? }) => {
        impl ::std::fmt::Debug for $ty {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                let $s = self;
                f.debug_struct(stringify!($ty))
                    $(.field($name, &$value))+
                    .finish_non_exhaustive()
            }
        }
    };
}

/// What a password is replaced with.
pub const MASK: &str = "***";

/// Query parameters (or libpq `key=value` words) whose value is a secret.
const SECRET_KEYS: &[&str] = &["password", "passwd", "pwd", "pass", "sslpassword", "secret"];

/// `url` with its password replaced by `***`.
///
/// * `postgres://app:s3cret@db:5432/x` becomes `postgres://app:***@db:5432/x`;
/// * a percent-encoded password (`p%40ss`) or one with raw `@`, `:` or `/` is hidden whole;
/// * a URL without a user or password (`postgres://db/x`, `/var/lib/app.db`) comes back
///   unchanged;
/// * secret query parameters (`?password=...`, `&sslpassword=...`) and libpq keyword strings
///   (`host=db password=...`) are masked too.
///
/// ```
/// use leakless::redact::redact_url;
/// assert_eq!(
///     redact_url("mysql://app:p@ss:w0rd@127.0.0.1:3306/shop"),
///     "mysql://app:***@127.0.0.1:3306/shop"
/// );
/// assert_eq!(redact_url("postgres://db.internal/app"), "postgres://db.internal/app");
/// ```
#[must_use]
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = split_scheme(url) else {
        return redact_keywords(url);
    };
    let (authority_and_path, query) = match userinfo_end(rest) {
        Some(at) => {
            let (userinfo, after) = rest.split_at(at);
            let after = after.get(1..).unwrap_or_default();
            let userinfo = match userinfo.split_once(':') {
                Some((user, _password)) => format!("{user}:{MASK}@"),
                None => format!("{userinfo}@"),
            };
            let (host_path, query) = split_query(after);
            (format!("{userinfo}{host_path}"), query)
        }
        None => {
            let (host_path, query) = split_query(rest);
            (host_path.to_owned(), query)
        }
    };
    format!(
        "{scheme}://{authority_and_path}{}",
        redact_query(query.unwrap_or_default())
    )
}

/// The password part of a `scheme://user:password@host` URL as written (still
/// percent-encoded), for scrubbing it out of driver messages. `None` when there is none.
#[cfg_attr(not(feature = "sql-store"), allow(dead_code))]
pub(crate) fn url_password(url: &str) -> Option<&str> {
    let (_, rest) = split_scheme(url)?;
    let at = userinfo_end(rest)?;
    let (_, password) = rest.get(..at)?.split_once(':')?;
    (!password.is_empty()).then_some(password)
}

/// `text` (a driver's error message) with every occurrence of `url`'s password, as written
/// and percent-decoded, and of `url` itself replaced by `***`: for a database driver's message
/// that might echo the connection string.
///
/// ```
/// use leakless::redact::scrub;
/// assert_eq!(
///     scrub("password authentication failed (s3cret)", "postgres://app:s3cret@db/x"),
///     "password authentication failed (***)"
/// );
/// ```
#[must_use]
pub fn scrub(text: &str, url: &str) -> String {
    let mut out = text.to_owned();
    if !url.is_empty() && out.contains(url) {
        out = out.replace(url, &redact_url(url));
    }
    if let Some(password) = url_password(url) {
        let decoded = percent_decode(password);
        for secret in [password, decoded.as_str()] {
            if !secret.is_empty() {
                out = out.replace(secret, MASK);
            }
        }
    }
    out
}

#[cfg_attr(not(feature = "sql-store"), allow(dead_code))]
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0usize;
    while let Some(&b) = bytes.get(i) {
        let hex = bytes
            .get(i.saturating_add(1)..i.saturating_add(3))
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b, hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i = i.saturating_add(3);
            }
            _ => {
                out.push(b);
                i = i.saturating_add(1);
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Splits `scheme://rest` into `scheme` and `rest`, for a syntactically valid scheme.
fn split_scheme(url: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    let mut chars = scheme.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    valid.then_some((scheme, rest))
}

/// The byte offset of the `@` that ends the user info of `rest` (what follows `://`).
///
/// It is the last `@` before the query (`?`/`#`) that follows the first `@`: a password may
/// hold raw `@`, `:`, `/`, `?` or `#`, a host may not hold `@`. A path or query holding an `@`
/// makes this hide too much, never too little.
fn userinfo_end(rest: &str) -> Option<usize> {
    let first_at = rest.find('@')?;
    let tail = rest.get(first_at..)?;
    let end = tail
        .find(['?', '#'])
        .map_or(rest.len(), |i| first_at.saturating_add(i));
    rest.get(..end)?.rfind('@')
}

/// Splits `s` at the first `?` or `#`; the second part keeps its delimiter.
fn split_query(s: &str) -> (&str, Option<&str>) {
    match s.find(['?', '#']) {
        Some(i) => (s.get(..i).unwrap_or(s), s.get(i..)),
        None => (s, None),
    }
}

fn is_secret_key(key: &str) -> bool {
    SECRET_KEYS.iter().any(|k| key.eq_ignore_ascii_case(k))
}

/// Masks secret parameters in `?a=b&password=c#frag`.
fn redact_query(query: &str) -> String {
    let mut out = String::with_capacity(query.len());
    let mut rest = query;
    while let Some(first) = rest.chars().next() {
        out.push(first);
        let body = rest.get(first.len_utf8()..).unwrap_or_default();
        let end = body.find(['&', '#', ';']).unwrap_or(body.len());
        let (param, next) = body.split_at(end);
        match param.split_once('=') {
            Some((key, _)) if first != '#' && is_secret_key(key) => {
                out.push_str(key);
                out.push('=');
                out.push_str(MASK);
            }
            _ => out.push_str(param),
        }
        rest = next;
    }
    out
}

/// Masks secret words of a libpq keyword string (`host=db password=x user=app`).
fn redact_keywords(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while !rest.is_empty() {
        let ws = rest.len() - rest.trim_start().len();
        let (space, word_and_rest) = rest.split_at(ws);
        out.push_str(space);
        let end = word_and_rest
            .find(char::is_whitespace)
            .unwrap_or(word_and_rest.len());
        let (word, next) = word_and_rest.split_at(end);
        match word.split_once('=') {
            Some((key, _)) if is_secret_key(key.trim()) => {
                out.push_str(key);
                out.push('=');
                out.push_str(MASK);
            }
            _ => out.push_str(word),
        }
        rest = next;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Held {
        id: u32,
        bytes: Vec<u8>,
        secret: String,
    }
    crate::debug_fields!(Held, |h| { "id": h.id, "len": h.bytes.len() });

    /// `debug_fields!` shows the listed values only (a length in place of the bytes) and marks
    /// the rest as left out.
    #[test]
    fn debug_fields_shows_the_listed_fields_only() {
        let held = Held {
            id: 7,
            bytes: b"LKSECRET".to_vec(),
            secret: "LKHIDDEN".to_owned(),
        };
        let text = format!("{held:?}");
        assert_eq!(text, "Held { id: 7, len: 8, .. }");
        assert!(!text.contains(&held.secret) && !text.contains("LKSECRET"));
    }

    /// Each URL or keyword string is masked as expected, and its password appears nowhere in
    /// the result: plain; holding `@` and `:`, or `/`, `?` and `#`; percent-encoded; after an
    /// empty user; before an `@` in the query (which must not hide the host); as a query
    /// parameter, in any case; as a keyword.
    #[test]
    fn passwords_are_masked() {
        let cases = [
            // (input, masked, password)
            (
                "postgres://app:s3cret@db:5432/x",
                "postgres://app:***@db:5432/x",
                "s3cret",
            ),
            (
                "mysql://leakless:p@ss:w0rd@127.0.0.1:3306/",
                "mysql://leakless:***@127.0.0.1:3306/",
                "ss:w0rd",
            ),
            (
                "postgres://u:a/b?c#d@host/db",
                "postgres://u:***@host/db",
                "a/b?c#d",
            ),
            (
                "postgresql://app:p%40ss%3Aw%2Frd@db.example:5432/app?sslmode=require",
                "postgresql://app:***@db.example:5432/app?sslmode=require",
                "p%40ss",
            ),
            ("mysql://:hunter2@h/db", "mysql://:***@h/db", "hunter2"),
            (
                "postgres://u:pw@host/db?application_name=a@b",
                "postgres://u:***@host/db?application_name=a@b",
                "pw",
            ),
            (
                "postgres://host/db?user=app&password=s3cret&sslmode=verify-full",
                "postgres://host/db?user=app&password=***&sslmode=verify-full",
                "s3cret",
            ),
            (
                "postgres://host/db?PASSWORD=s3cret#frag",
                "postgres://host/db?PASSWORD=***#frag",
                "s3cret",
            ),
            (
                "host=db user=app password=s3cret dbname=x",
                "host=db user=app password=*** dbname=x",
                "s3cret",
            ),
        ];
        for (input, masked, password) in cases {
            let out = redact_url(input);
            assert_eq!(out, masked);
            assert!(!out.contains(password), "{out}");
        }
    }

    #[test]
    fn url_without_password_is_unchanged() {
        for url in [
            "postgres://postgres@127.0.0.1:5432/postgres",
            "postgres://127.0.0.1:5432/postgres",
            "mysql://db/",
            "sqlite:///var/lib/app.db",
            "/var/lib/app.db",
            "app.db",
        ] {
            assert_eq!(redact_url(url), url);
        }
    }

    #[test]
    fn url_password_finds_the_raw_password() {
        assert_eq!(url_password("mysql://u:p@ss:w@h:1/"), Some("p@ss:w"));
        assert_eq!(url_password("postgres://u@h/db"), None);
        assert_eq!(url_password("postgres://u:@h/db"), None);
        assert_eq!(url_password("app.db"), None);
    }

    #[test]
    fn scrub_removes_raw_and_decoded_passwords() {
        let url = "postgres://app:p%40ss@db/x";
        let msg = format!("failed for {url}: auth p@ss rejected, p%40ss");
        let out = scrub(&msg, url);
        assert!(!out.contains("p@ss"), "{out}");
        assert!(!out.contains("p%40ss"), "{out}");
        assert!(out.contains("postgres://app:***@db/x"), "{out}");
    }
}
