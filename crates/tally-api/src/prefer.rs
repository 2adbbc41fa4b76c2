//! The `Prefer` request header (RFC 7240) as far as tally honours it: the `wait` preference,
//! read-your-writes on request (`POST /transaction` waits for the decision of a deposit or
//! withdraw; `GET /account/{id}?minSeq=` waits at most that long). Parsing is lenient the way
//! the RFC asks: several `Prefer` headers and comma-separated preferences, any case for the
//! name, spaces around `=`, a quoted value, parameters after `;` ignored, and a preference
//! this code does not understand (or a `wait` whose value is not delta-seconds) ignored rather
//! than refused. Only the first `wait` counts (RFC 7240 §2).

use actix_web::http::header::HeaderMap;
use std::time::Duration;

/// The header a response carries when it honoured a preference (RFC 7240 §3).
pub const PREFERENCE_APPLIED: &str = "preference-applied";

/// The `wait` preference of `headers` in seconds, if one with a valid value was sent: the
/// first `wait` preference found, a non-negative integer (delta-seconds). Any other value
/// makes it absent.
pub fn wait(headers: &HeaderMap) -> Option<u64> {
    headers
        .get_all("prefer")
        .filter_map(|value| value.to_str().ok())
        .flat_map(preferences)
        .find(|(name, _)| name.eq_ignore_ascii_case("wait"))
        .and_then(|(_, value)| delta_seconds(value?))
}

/// How long to wait for what `headers` asks, capped at `cap`: `None` when no valid `wait`
/// was sent, it is 0, or waiting is off (`cap` zero).
pub fn wait_capped(headers: &HeaderMap, cap: Duration) -> Option<Duration> {
    let asked = Duration::from_secs(wait(headers)?);
    let wait = asked.min(cap);
    (!wait.is_zero()).then_some(wait)
}

/// `1*DIGIT`, with a bound no client needs (a longer number is not a valid wait here).
fn delta_seconds(value: &str) -> Option<u64> {
    let digits = value.trim();
    if digits.is_empty() || digits.len() > 9 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The preferences of one header value: `(name, value)` of each comma-separated element,
/// parameters (after `;`) dropped. Commas and semicolons inside a quoted value do not split.
fn preferences(header: &str) -> impl Iterator<Item = (&str, Option<&str>)> {
    split_unquoted(header, ',')
        .into_iter()
        .filter_map(|element| {
            let head = split_unquoted(element, ';').into_iter().next()?;
            let (name, value) = match head.split_once('=') {
                Some((name, value)) => (name.trim(), Some(unquote(value.trim()))),
                None => (head.trim(), None),
            };
            (!name.is_empty()).then_some((name, value))
        })
}

/// `"…"` without its quotes (escapes are not needed for the values read here).
fn unquote(value: &str) -> &str {
    value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value)
}

/// `text` split at each `separator` outside double quotes.
fn split_unquoted(text: &str, separator: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == separator && !quoted => {
                parts.push(&text[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::{HeaderName, HeaderValue};

    fn headers(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(
                HeaderName::from_static("prefer"),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        headers
    }

    #[test]
    fn the_wait_preference_is_found_however_it_is_written() {
        for (values, expected) in [
            (&["wait=5"][..], Some(5)),
            (&["WAIT=5"], Some(5)),
            (&["Wait = 7"], Some(7)),
            (&["wait=\"3\""], Some(3)),
            (&["respond-async, wait=10"], Some(10)),
            (&["return=minimal;foo=\"a,b\", wait=2;x=y"], Some(2)),
            (&["handling=lenient", "wait=4"], Some(4)),
            (&["  ,, wait=1 ,"], Some(1)),
            (&["wait=0"], Some(0)),
            // Only the first `wait` counts, even when a later one is valid.
            (&["wait=3, wait=9"], Some(3)),
            (&["wait=abc, wait=9"], None),
        ] {
            assert_eq!(wait(&headers(values)), expected, "{values:?}");
        }
    }

    #[test]
    fn invalid_or_absent_waits_are_ignored() {
        for values in [
            &[][..],
            &["respond-async"],
            &["wait"],
            &["wait="],
            &["wait=-1"],
            &["wait=1.5"],
            &["wait=5s"],
            &["wait=99999999999999999999"],
            &["waiting=5"],
            &["x-wait=5"],
        ] {
            assert_eq!(wait(&headers(values)), None, "{values:?}");
        }
    }

    #[test]
    fn the_wait_is_capped_and_zero_means_no_wait() {
        let cap = Duration::from_secs(5);
        assert_eq!(
            wait_capped(&headers(&["wait=2"]), cap),
            Some(Duration::from_secs(2))
        );
        assert_eq!(wait_capped(&headers(&["wait=60"]), cap), Some(cap));
        assert_eq!(wait_capped(&headers(&["wait=0"]), cap), None);
        assert_eq!(wait_capped(&headers(&["wait=2"]), Duration::ZERO), None);
        assert_eq!(wait_capped(&headers(&[]), cap), None);
    }
}
