//! Durations in configuration, read the same way by both services: `humantime`'s forms
//! (`250ms`, `15s`, `1m30s`, `1h`) or a bare number of seconds.

use std::time::Duration;

/// Parses `250ms`, `15s`, `2m`, `1m30s`, `1h` or a bare number of seconds (`15`).
///
/// # Errors
/// When the text is none of those forms.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text
            .parse()
            .map(Duration::from_secs)
            .map_err(|_| format!("`{text}` is too large"));
    }
    humantime::parse_duration(text)
        .map_err(|e| format!("`{text}` is not a duration like 250ms, 15s, 1m30s or 1h: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_forms_and_bare_seconds_parse() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("15"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration(" 0s "), Ok(Duration::ZERO));
    }

    #[test]
    fn nonsense_is_refused() {
        for text in ["", "s", "fast", "-1s", "1x", "99999999999999999999999"] {
            assert!(parse_duration(text).is_err(), "{text}");
        }
    }
}
