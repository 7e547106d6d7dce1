//! Attachments by reference: the service keeps `{uri, content_type, size, ...}`, never
//! the bytes (the caller uploads them to object storage). What is accepted is
//! configuration ([`AttachmentRules`]); a refusal names the attachment and its field
//! (`attachments[2].uri`).

use chat_proto::v1;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Most attachments one message may carry.
pub const MAX_ATTACHMENTS: usize = 10;
const MAX_URI_CHARS: usize = 2048;
const MAX_FILE_NAME_CHARS: usize = 255;
const MAX_CONTENT_TYPE_CHARS: usize = 127;

/// One stored reference, as the `messages.attachments` jsonb array holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub uri: String,
    pub content_type: String,
    pub size_bytes: i64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sha256: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub file_name: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub width: i32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub height: i32,
}

#[allow(
    clippy::trivially_copy_pass_by_ref,
    reason = "serde's skip_serializing_if"
)]
fn is_zero(value: &i32) -> bool {
    *value == 0
}

/// What attachments this deployment accepts.
#[derive(Debug, Clone, Default)]
pub struct AttachmentRules {
    /// A URI must start with one of these (each an https prefix); empty: attachments
    /// are refused.
    pub uri_prefixes: Vec<String>,
    /// Allowed content types, lowercase; an entry `image/*` allows every image type.
    pub content_types: Vec<String>,
    pub max_bytes: i64,
}

impl AttachmentRules {
    /// Parses a request's attachments (at most [`MAX_ATTACHMENTS`]).
    pub fn parse(&self, list: &[v1::Attachment]) -> Result<Vec<Attachment>> {
        if list.len() > MAX_ATTACHMENTS {
            return Err(Error::invalid(
                "attachments",
                format!("at most {MAX_ATTACHMENTS} attachments per message"),
            ));
        }
        if !list.is_empty() && self.uri_prefixes.is_empty() {
            return Err(Error::invalid(
                "attachments",
                "attachments are not accepted by this deployment (ATTACHMENT_URI_PREFIXES)",
            ));
        }
        list.iter()
            .enumerate()
            .map(|(index, proto)| {
                self.parse_one(proto)
                    .map_err(|(field, d)| invalid(index, field, d))
            })
            .collect()
    }

    fn parse_one(&self, proto: &v1::Attachment) -> Result<Attachment, (&'static str, String)> {
        let uri = proto.uri.as_str();
        if uri.is_empty() {
            return Err(("uri", "is required".into()));
        }
        if uri.chars().count() > MAX_URI_CHARS
            || uri.chars().any(|c| c.is_control() || c.is_whitespace())
        {
            return Err((
                "uri",
                format!(
                    "must be at most {MAX_URI_CHARS} characters without spaces or control characters"
                ),
            ));
        }
        if !uri.starts_with("https://") {
            return Err(("uri", "must be an https URI".into()));
        }
        if !self
            .uri_prefixes
            .iter()
            .any(|prefix| uri.starts_with(prefix.as_str()))
        {
            return Err(("uri", "must start with one of the allowed prefixes".into()));
        }
        let content_type = proto.content_type.trim().to_ascii_lowercase();
        if content_type.is_empty() {
            return Err(("content_type", "is required".into()));
        }
        if content_type.len() > MAX_CONTENT_TYPE_CHARS || !self.allows(&content_type) {
            return Err(("content_type", "is not an allowed content type".into()));
        }
        if proto.size_bytes <= 0 || proto.size_bytes > self.max_bytes {
            return Err((
                "size_bytes",
                format!("must be 1 to {} bytes", self.max_bytes),
            ));
        }
        if !proto.sha256.is_empty()
            && (proto.sha256.len() != 64
                || !proto
                    .sha256
                    .bytes()
                    .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        {
            return Err(("sha256", "must be 64 lowercase hex digits".into()));
        }
        if proto.file_name.chars().count() > MAX_FILE_NAME_CHARS
            || proto.file_name.chars().any(char::is_control)
        {
            return Err((
                "file_name",
                format!("must be at most {MAX_FILE_NAME_CHARS} printable characters"),
            ));
        }
        if proto.width < 0 {
            return Err(("width", "must not be negative".into()));
        }
        if proto.height < 0 {
            return Err(("height", "must not be negative".into()));
        }
        Ok(Attachment {
            uri: proto.uri.clone(),
            content_type,
            size_bytes: proto.size_bytes,
            sha256: proto.sha256.clone(),
            file_name: proto.file_name.clone(),
            width: proto.width,
            height: proto.height,
        })
    }

    fn allows(&self, content_type: &str) -> bool {
        self.content_types.iter().any(|allowed| {
            allowed == content_type
                || allowed
                    .strip_suffix("/*")
                    .is_some_and(|family| content_type.split('/').next() == Some(family))
        })
    }
}

fn invalid(index: usize, field: &'static str, description: String) -> Error {
    Error::InvalidAttachment {
        index,
        field,
        description,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Makes one field of an attachment bad.
    type Spoil = fn(&mut v1::Attachment);

    fn rules() -> AttachmentRules {
        AttachmentRules {
            uri_prefixes: vec!["https://files.example/".into()],
            content_types: vec!["image/*".into(), "application/pdf".into()],
            max_bytes: 1000,
        }
    }

    fn good() -> v1::Attachment {
        v1::Attachment {
            uri: "https://files.example/a.png".into(),
            content_type: "image/png".into(),
            size_bytes: 10,
            ..Default::default()
        }
    }

    fn field_of(list: &[v1::Attachment]) -> String {
        match rules().parse(list) {
            Err(Error::InvalidAttachment { index, field, .. }) => {
                format!("attachments[{index}].{field}")
            }
            Err(Error::InvalidArgument { field, .. }) => field.to_owned(),
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn each_refusal_names_the_attachment_and_its_field() {
        assert!(rules().parse(&[good(), good()]).is_ok());
        let cases: [(Spoil, &str); 8] = [
            (|a| a.uri = "http://files.example/a".into(), "uri"),
            (|a| a.uri = "https://evil.example/a".into(), "uri"),
            (|a| a.uri = "https://files.example/a b".into(), "uri"),
            (
                |a| a.content_type = "application/x-msdownload".into(),
                "content_type",
            ),
            (|a| a.size_bytes = 1001, "size_bytes"),
            (|a| a.size_bytes = 0, "size_bytes"),
            (|a| a.sha256 = "XYZ".into(), "sha256"),
            (|a| a.width = -1, "width"),
        ];
        for (spoil, field) in cases {
            let mut bad = good();
            spoil(&mut bad);
            assert_eq!(
                field_of(&[good(), good(), bad]),
                format!("attachments[2].{field}")
            );
        }
        assert_eq!(field_of(&vec![good(); 11]), "attachments");
        let none = AttachmentRules {
            uri_prefixes: Vec::new(),
            ..rules()
        };
        assert!(none.parse(&[good()]).is_err());
        assert!(none.parse(&[]).is_ok());
    }

    #[test]
    fn a_family_entry_allows_its_subtypes_only() {
        let r = rules();
        assert!(r.allows("image/webp"));
        assert!(r.allows("application/pdf"));
        assert!(!r.allows("imagex/png"));
        assert!(!r.allows("text/plain"));
    }
}
