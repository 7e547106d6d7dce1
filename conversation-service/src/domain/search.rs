//! SearchMessages' query text and the excerpt of each hit.

use crate::error::{Error, Result};

/// Longest search query, in characters (after trimming).
const QUERY_CHARS: usize = 200;
/// Longest excerpt of a hit, in characters of text (highlighted or not).
pub const SNIPPET_CHARS: usize = 200;
/// Where `ts_headline` starts and stops a highlight. Taken out of the body before the
/// excerpt is made (`store::search`), so they can only come from `ts_headline`.
pub const HIGHLIGHT_START: char = '\u{1}';
pub const HIGHLIGHT_STOP: char = '\u{2}';

/// The words to find, as the caller wrote them (trimmed). PostgreSQL reads it
/// (`websearch_to_tsquery`, which accepts any text); whether it holds a word to look for is
/// only known there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchQuery(pub String);

impl SearchQuery {
    pub fn parse(field: &'static str, text: &str) -> Result<Self> {
        let text = text.trim();
        if text.is_empty() {
            return Err(Error::invalid(field, "is required"));
        }
        if text.chars().count() > QUERY_CHARS {
            return Err(Error::invalid(
                field,
                format!("must be at most {QUERY_CHARS} characters"),
            ));
        }
        if text.chars().any(char::is_control) {
            return Err(Error::invalid(field, "must not contain control characters"));
        }
        Ok(Self(text.to_owned()))
    }
}

/// A piece of an excerpt: its text and whether it is a matched word.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnippetPart {
    pub text: String,
    pub highlighted: bool,
}

/// Splits `ts_headline`'s output at its highlight marks, keeping at most
/// [`SNIPPET_CHARS`] characters (a single "word" may be thousands of characters long);
/// a cut excerpt ends with "…".
pub fn snippet_parts(headline: &str) -> Vec<SnippetPart> {
    let mut parts: Vec<SnippetPart> = Vec::new();
    let mut current = String::new();
    let mut highlighted = false;
    let mut kept = 0;
    let mut cut = false;
    for c in headline.chars() {
        if c == HIGHLIGHT_START || c == HIGHLIGHT_STOP {
            push_part(&mut parts, &mut current, highlighted);
            highlighted = c == HIGHLIGHT_START;
            continue;
        }
        if kept == SNIPPET_CHARS {
            cut = true;
            break;
        }
        current.push(c);
        kept += 1;
    }
    push_part(&mut parts, &mut current, highlighted);
    if cut {
        parts.push(SnippetPart {
            text: "…".into(),
            highlighted: false,
        });
    }
    parts
}

fn push_part(parts: &mut Vec<SnippetPart>, text: &mut String, highlighted: bool) {
    if text.is_empty() {
        return;
    }
    let text = std::mem::take(text);
    match parts.last_mut() {
        Some(last) if last.highlighted == highlighted => last.text.push_str(&text),
        _ => parts.push(SnippetPart { text, highlighted }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries() {
        assert!(SearchQuery::parse("q", "").is_err());
        assert!(SearchQuery::parse("q", " \t ").is_err());
        assert!(SearchQuery::parse("q", &"x".repeat(201)).is_err());
        assert!(SearchQuery::parse("q", "a\u{0}b").is_err());
        assert_eq!(
            SearchQuery::parse("q", "  leaking boiler ").ok(),
            Some(SearchQuery("leaking boiler".into()))
        );
    }

    fn render(parts: &[SnippetPart]) -> String {
        parts
            .iter()
            .map(|p| {
                if p.highlighted {
                    format!("[{}]", p.text)
                } else {
                    p.text.clone()
                }
            })
            .collect()
    }

    #[test]
    fn snippets_split_at_the_marks_and_stay_short() {
        let parts = snippet_parts("the \u{1}boiler\u{2} is \u{1}fixed\u{2}");
        assert_eq!(render(&parts), "the [boiler] is [fixed]");
        assert_eq!(parts.len(), 4);
        // Adjacent highlights merge.
        let parts = snippet_parts("\u{1}big\u{2}\u{1}deal\u{2}");
        assert_eq!(render(&parts), "[bigdeal]");

        let long = format!("\u{1}{}\u{2} after", "x".repeat(500));
        let parts = snippet_parts(&long);
        assert_eq!(render(&parts), format!("[{}]…", "x".repeat(SNIPPET_CHARS)));
        assert!(snippet_parts("").is_empty());
    }
}
