//! The rules of the contract's free-form fields. conversation-service enforces them, and
//! token-service checks the same values before it queues a call, so a queued call can
//! never be refused for its content later; one copy keeps the two in step.
//!
//! Each rule returns the normalised value, or a description of what is wrong for the
//! caller's INVALID_ARGUMENT (the field name is the caller's to add).

/// Longest provider or customer id.
pub const MAX_ID_LEN: usize = 128;
/// Longest display name, in characters.
pub const MAX_NAME_CHARS: usize = 200;
/// Longest message body, in characters.
pub const MAX_BODY_CHARS: usize = 4000;

/// What every text field must be: PostgreSQL's `text` cannot hold NUL (0x00), so no
/// field may carry one (other rules may be stricter).
///
/// # Errors
/// When it holds a NUL character.
pub fn text(text: &str) -> Result<&str, &'static str> {
    if text.contains('\0') {
        return Err("must not contain NUL characters");
    }
    Ok(text)
}

/// A message body: 1 to 4000 characters, not only whitespace, no NUL. Newlines, tabs and
/// every other character are kept as sent.
///
/// # Errors
/// What is wrong with it.
pub fn body(body: &str) -> Result<String, &'static str> {
    text(body)?;
    if body.trim().is_empty() {
        return Err("must not be empty");
    }
    if body.chars().count() > MAX_BODY_CHARS {
        return Err("must be at most 4000 characters");
    }
    Ok(body.to_owned())
}

/// A provider's or customer's id as the marketplace knows it: 1 to 128 of
/// `A-Z a-z 0-9 - _ . : @` (it appears in link paths, so nothing that needs escaping).
///
/// # Errors
/// What is wrong with it.
pub fn external_id(text: &str) -> Result<String, &'static str> {
    if text.is_empty() {
        return Err("is required");
    }
    if text.len() > MAX_ID_LEN {
        return Err("must be at most 128 characters");
    }
    if !text
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.:@".contains(&b))
    {
        return Err("may contain only letters, digits and - _ . : @");
    }
    Ok(text.to_owned())
}

/// A display name: trimmed, at most 200 characters, no control characters. Empty clears.
///
/// # Errors
/// What is wrong with it.
pub fn name(text: &str) -> Result<String, &'static str> {
    let text = text.trim();
    if text.chars().count() > MAX_NAME_CHARS || text.chars().any(char::is_control) {
        return Err("must be at most 200 characters without control characters");
    }
    Ok(text.to_owned())
}

/// An email address in the shape `local@domain.tld` (at most 254 characters), trimmed.
/// Empty clears it. Deliverability is the caller's business.
///
/// # Errors
/// What is wrong with it.
pub fn email(text: &str) -> Result<String, &'static str> {
    const BAD: &str = "must be an email address like name@example.com";
    let text = text.trim();
    if text.is_empty() {
        return Ok(String::new());
    }
    if text.len() > 254 || text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(BAD);
    }
    let (local, domain) = text.rsplit_once('@').ok_or(BAD)?;
    let domain_ok = domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains("..");
    if local.is_empty() || local.len() > 64 || local.contains('@') || !domain_ok {
        return Err(BAD);
    }
    Ok(text.to_owned())
}

/// A phone number in E.164 shape: `+` and 7 to 15 digits, or 7 to 15 digits. Spaces,
/// dashes, dots and parentheses are dropped. Empty clears it.
///
/// # Errors
/// What is wrong with it.
pub fn phone(text: &str) -> Result<String, &'static str> {
    let cleaned: String = text
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '.' | '(' | ')'))
        .collect();
    if cleaned.is_empty() {
        return Ok(cleaned);
    }
    let digits = cleaned.strip_prefix('+').unwrap_or(&cleaned);
    if !(7..=15).contains(&digits.len()) || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err("must be a phone number of 7 to 15 digits, optionally starting with +");
    }
    Ok(cleaned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn external_ids() {
        assert!(external_id("prov-1.a:b@c_d").is_ok());
        for bad in ["", "a b", "a/b", &"x".repeat(129)] {
            assert!(external_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn emails() {
        assert_eq!(email(" a@b.co ").as_deref(), Ok("a@b.co"));
        assert_eq!(email("").as_deref(), Ok(""));
        for bad in [
            "a", "a@b", "@b.co", "a@.co", "a@b.co.", "a b@c.de", "a@@b.co",
        ] {
            assert!(email(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn phones() {
        assert_eq!(phone("+49 (30) 123-4567").as_deref(), Ok("+49301234567"));
        for bad in ["12345", "+12a4567890", "1234567890123456", "++1234567"] {
            assert!(phone(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bodies_refuse_nul_and_keep_newlines_and_tabs() {
        assert_eq!(body("a\n\tb").as_deref(), Ok("a\n\tb"));
        assert!(body("hello\u{0}world").is_err());
        assert!(body(" \n").is_err());
        assert!(body(&"é".repeat(4000)).is_ok());
        assert!(body(&"é".repeat(4001)).is_err());
    }

    #[test]
    fn every_rule_refuses_nul() {
        let nul = "a\u{0}b";
        assert!(text(nul).is_err());
        assert!(external_id(nul).is_err());
        assert!(name(nul).is_err());
        assert!(email("a\u{0}@b.co").is_err());
        assert!(phone("+1234567\u{0}8").is_err());
    }

    #[test]
    fn names() {
        assert_eq!(name("  Ada ").as_deref(), Ok("Ada"));
        assert!(name("a\u{7}b").is_err());
        assert!(name(&"é".repeat(201)).is_err());
    }
}
