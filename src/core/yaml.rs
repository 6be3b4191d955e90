//! What every YAML file reader shares (config, policy, memberships): a problem with the path of
//! the field it concerns, and the shielding of `{param}` path segments from YAML's flow syntax.

use std::fmt;

/// One problem in a config or policy file, with the path of the field it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// `issuers[0].audiences`, or `policy.yaml: rules[2].tenant_param` for a policy file.
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Stand-ins for `{` and `}` of a path parameter while YAML is parsed (Unicode private use).
pub const PARAM_OPEN: char = '\u{E000}';
pub const PARAM_CLOSE: char = '\u{E001}';

/// SPEC §3 writes `paths: [/api/tenants/{tenant}/**]`; strict YAML reads `{` inside a flow list as
/// the start of a mapping and refuses it. So that the documented form works as written, a
/// `{name}` right after a `/` is swapped for private-use stand-ins before parsing and swapped
/// back when patterns compile ([`crate::core::policy`]).
pub fn shield_path_params(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.contains("/{") {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("/{") {
        out.push_str(&rest[..=i]);
        let after = &rest[i + 2..];
        let name_len = after
            .bytes()
            .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
            .count();
        if name_len > 0 && after.as_bytes().get(name_len) == Some(&b'}') {
            out.push(PARAM_OPEN);
            out.push_str(&after[..name_len]);
            out.push(PARAM_CLOSE);
            rest = &after[name_len + 1..];
        } else {
            out.push('{');
            rest = after;
        }
    }
    out.push_str(rest);
    std::borrow::Cow::Owned(out)
}

/// Parse YAML into `T`, reporting the failing field's path (`issuers[0].leeway`). Stops at the
/// first problem: for tests that want a typed value from a snippet; config files go through
/// `config`'s field-by-field reader.
#[cfg(test)]
pub(crate) fn parse_yaml<T: serde::de::DeserializeOwned>(
    text: &str,
    prefix: &str,
) -> Result<T, ConfigIssue> {
    let text = shield_path_params(text);
    let de = serde_yaml_ng::Deserializer::from_str(&text);
    serde_path_to_error::deserialize(de).map_err(|err| {
        let path = err.path().to_string();
        let path = if path == "." { String::new() } else { path };
        let inner = err.into_inner().to_string();
        ConfigIssue {
            path: format!("{prefix}{path}"),
            message: inner,
        }
    })
}
