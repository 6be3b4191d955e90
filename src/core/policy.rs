//! Route policy: rules compiled once at load, the canonical form of a request path, and the
//! per-request authorization of a verified identity against the matched rule.
//!
//! Pure: no I/O, no clock, no allocation beyond the decoded path. The first rule whose method and
//! path match decides; a request no rule matches is denied. Paths that could be read two ways by
//! two components (`//`, `..`, `%2F`, `;`, control bytes, invalid UTF-8) are refused, never matched
//! in some other form.

use std::collections::HashSet;
use std::sync::Arc;

use serde::Deserialize;

use crate::core::identity::Identity;
use crate::core::yaml::ConfigIssue;

/// A rule as written in YAML.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub name: String,
    pub paths: Vec<String>,
    #[serde(default)]
    pub methods: Option<Vec<String>>,
    #[serde(default)]
    pub public: bool,
    #[serde(default)]
    pub roles_any: Vec<String>,
    #[serde(default)]
    pub roles_all: Vec<String>,
    #[serde(default)]
    pub tenant_param: Option<String>,
    #[serde(default)]
    pub issuers: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(Box<str>),
    /// `{name}` or `*`: exactly one segment.
    One,
    /// `**`: zero or more segments, only last.
    Rest,
}

#[derive(Debug, Clone)]
struct Pattern {
    segments: Vec<Segment>,
    /// Index of the segment captured as the tenant, when the rule has `tenant_param`.
    tenant_at: Option<usize>,
}

/// A compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub name: Arc<str>,
    patterns: Vec<Pattern>,
    /// Upper-case; `None` = every method.
    methods: Option<Vec<Box<str>>>,
    pub public: bool,
    roles_any: Vec<Box<str>>,
    roles_all: Vec<Box<str>>,
    has_tenant_param: bool,
    issuers: Option<Vec<Box<str>>>,
    /// The rule as written (path parameters spelled `{name}`), for tools that show the policy.
    source: RawRule,
}

/// The compiled policy: rules in order.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    rules: Vec<Rule>,
    /// Every pattern of every rule in one segment trie, so finding the first match costs about
    /// the depth of the path, not the number of rules.
    trie: Node,
}

/// A trie node: patterns continue through literal children or the one-segment wildcard child;
/// `end` lists patterns that end here, `rest` those ending here with `**`.
#[derive(Debug, Clone, Default)]
struct Node {
    literal: std::collections::HashMap<Box<str>, Node>,
    one: Option<Box<Node>>,
    /// (rule index, pattern index) pairs.
    end: Vec<(usize, usize)>,
    rest: Vec<(usize, usize)>,
}

impl Node {
    fn insert(&mut self, segments: &[Segment], at: (usize, usize)) {
        match segments.split_first() {
            None => self.end.push(at),
            Some((Segment::Rest, _)) => self.rest.push(at),
            Some((Segment::One, tail)) => {
                self.one.get_or_insert_with(Box::default).insert(tail, at)
            }
            Some((Segment::Literal(lit), tail)) => self
                .literal
                .entry(lit.clone())
                .or_default()
                .insert(tail, at),
        }
    }

    /// The lowest (rule, pattern) whose pattern matches `path` and whose rule admits `method`.
    fn best(
        &self,
        path: &[String],
        rules: &[Rule],
        method: &str,
        best: &mut Option<(usize, usize)>,
    ) {
        let mut consider = |list: &[(usize, usize)]| {
            for &(r, p) in list {
                if best.is_some_and(|b| b <= (r, p)) {
                    // Lists are in (rule, pattern) order: nothing later in this list can win.
                    break;
                }
                if rules[r].admits(method) {
                    *best = Some((r, p));
                    break;
                }
            }
        };
        consider(&self.rest);
        match path.split_first() {
            None => consider(&self.end),
            Some((first, tail)) => {
                if let Some(child) = self.literal.get(first.as_str()) {
                    child.best(tail, rules, method, best);
                }
                if let Some(child) = &self.one {
                    child.best(tail, rules, method, best);
                }
            }
        }
    }
}

/// The rule that matched a request, and the tenant its path names (when the rule has `tenant_param`).
#[derive(Debug, Clone, Copy)]
pub struct RuleMatch<'p, 'r> {
    pub rule: &'p Rule,
    pub tenant: Option<&'r str>,
}

/// Why a valid identity is not allowed through the matched rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyDenial {
    #[error("token lacks a role this route requires")]
    InsufficientScope,
    #[error("token's tenant does not match the tenant in the path")]
    TenantMismatch,
    #[error("token's issuer is not accepted on this route")]
    IssuerNotAllowed,
}

/// Why a request path is refused before any rule is looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path must start with /")]
    NotAbsolute,
    #[error("path has an empty segment")]
    EmptySegment,
    #[error("path has a . or .. segment")]
    DotSegment,
    #[error("path has an encoded / or \\")]
    EncodedSlash,
    #[error("path has a backslash")]
    Backslash,
    #[error("path has a ;")]
    Semicolon,
    #[error("path has a control character")]
    Control,
    #[error("path has invalid percent-encoding")]
    BadPercent,
    #[error("path is not UTF-8 once decoded")]
    NotUtf8,
    #[error("path is percent-encoded twice (decoded, it still holds %XX)")]
    DoubleEncoded,
}

/// A request path in the one form rules are matched against: decoded once, split into segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanonicalPath {
    segments: Vec<String>,
}

impl CanonicalPath {
    pub fn segments(&self) -> &[String] {
        &self.segments
    }

    /// `/a/b`, each segment percent-encoded where it must be, so that the string canonicalises
    /// back to exactly these segments (a decoded `%3F` is a `?` in a segment, not a query; a
    /// literal `%` stays one). Found by the `path` fuzz target: the plain join was not a fixed
    /// point.
    pub fn to_path_string(&self) -> String {
        if self.segments.is_empty() {
            return "/".to_owned();
        }
        let mut s = String::new();
        for seg in &self.segments {
            s.push('/');
            s.extend(percent_encoding::utf8_percent_encode(seg, SEGMENT_ESCAPES));
        }
        s
    }
}

/// What a segment's string form escapes: controls and space, what would end or split the path
/// (`?`, `#`, `/`), what canonicalisation refuses raw (`\\`, `;`), `%` itself, and the characters
/// RFC 3986 does not allow in a path segment. Non-ASCII is always escaped (as UTF-8).
const SEGMENT_ESCAPES: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b';')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'[')
    .add(b'\\')
    .add(b']')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}');

/// Turn the request target (path, maybe with `?query` / `#fragment`) into its canonical form, or
/// refuse it (SPEC §3).
pub fn canonicalize(target: &str) -> Result<CanonicalPath, PathError> {
    let end = target.find(['?', '#']).unwrap_or(target.len());
    let raw = &target[..end];
    let Some(rest) = raw.strip_prefix('/') else {
        return Err(PathError::NotAbsolute);
    };
    // One trailing slash is ignored; `/` itself is the empty path.
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() {
        return Ok(CanonicalPath {
            segments: Vec::new(),
        });
    }
    let mut segments = Vec::with_capacity(8);
    for raw_seg in rest.split('/') {
        if raw_seg.is_empty() {
            return Err(PathError::EmptySegment);
        }
        let seg = decode_segment(raw_seg)?;
        if seg == "." || seg == ".." {
            return Err(PathError::DotSegment);
        }
        segments.push(seg);
    }
    Ok(CanonicalPath { segments })
}

fn decode_segment(raw: &str) -> Result<String, PathError> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let hi = bytes.get(i + 1).copied().and_then(hex);
                let lo = bytes.get(i + 2).copied().and_then(hex);
                let (Some(hi), Some(lo)) = (hi, lo) else {
                    return Err(PathError::BadPercent);
                };
                let d = hi << 4 | lo;
                match d {
                    b'/' | b'\\' => return Err(PathError::EncodedSlash),
                    b';' => return Err(PathError::Semicolon),
                    _ => {}
                }
                out.push(d);
                i += 3;
            }
            b'\\' => return Err(PathError::Backslash),
            b';' => return Err(PathError::Semicolon),
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    // Decoded once, the path must not still hold an escape: a component that decodes again (or
    // that an attacker expects to) would see `%2e%2e` become `..` after our check.
    if out
        .windows(3)
        .any(|w| w[0] == b'%' && hex(w[1]).is_some() && hex(w[2]).is_some())
    {
        return Err(PathError::DoubleEncoded);
    }
    let s = String::from_utf8(out).map_err(|_| PathError::NotUtf8)?;
    if s.chars().any(char::is_control) {
        return Err(PathError::Control);
    }
    Ok(s)
}

/// Whether `method` may be matched at all: an upper-case HTTP token (`GET`, `DELETE`, `PURGE`,
/// `M-SEARCH`). Anything else (`delete`, `Get`, empty, with spaces) is refused, never matched: an
/// upstream framework that upper-cases methods would run a `DELETE` for `delete`, which a
/// `DELETE`-only rule never judged, while a rule without `methods` would have let it through.
pub fn is_upper_case_method(method: &str) -> bool {
    !method.is_empty()
        && method
            .bytes()
            .all(|b| is_token_char(b) && !b.is_ascii_lowercase())
}

/// An RFC 9110 `tchar`: what a method or an auth-scheme name is made of.
pub fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

impl Policy {
    /// Compile rules; every problem is reported with its path (`rules[2].tenant_param`).
    pub fn compile(raw: Vec<RawRule>, issuer_names: &[String]) -> Result<Self, Vec<ConfigIssue>> {
        let mut issues = Vec::new();
        let mut push = |path: String, message: String| issues.push(ConfigIssue { path, message });
        let mut names = HashSet::new();
        let mut rules = Vec::with_capacity(raw.len());

        for (i, r) in raw.into_iter().enumerate() {
            let at = format!("rules[{i}]");
            if r.name.is_empty() {
                push(format!("{at}.name"), "must not be empty".into());
            } else if !names.insert(r.name.clone()) {
                push(
                    format!("{at}.name"),
                    format!("duplicate rule name {:?}", r.name),
                );
            }
            if r.paths.is_empty() {
                push(
                    format!("{at}.paths"),
                    "at least one path pattern is required".into(),
                );
            }
            let mut patterns = Vec::with_capacity(r.paths.len());
            let paths: Vec<String> = r
                .paths
                .iter()
                .map(|p| {
                    p.replace(crate::core::yaml::PARAM_OPEN, "{")
                        .replace(crate::core::yaml::PARAM_CLOSE, "}")
                })
                .collect();
            for (j, p) in paths.iter().enumerate() {
                match compile_pattern(p, r.tenant_param.as_deref()) {
                    Ok(pattern) => {
                        if r.tenant_param.is_some() && pattern.tenant_at.is_none() {
                            push(
                                format!("{at}.tenant_param"),
                                format!(
                                    "{:?} is not a {{param}} of path {p:?}",
                                    r.tenant_param.as_deref().unwrap_or_default()
                                ),
                            );
                        }
                        patterns.push(pattern);
                    }
                    Err(msg) => push(format!("{at}.paths[{j}]"), msg),
                }
            }
            let methods = r.methods.as_ref().map(|ms| {
                if ms.is_empty() {
                    push(
                        format!("{at}.methods"),
                        "must not be empty (omit it for every method)".into(),
                    );
                }
                ms.iter()
                    .enumerate()
                    .map(|(j, m)| {
                        if m.is_empty() || !m.bytes().all(|b| b.is_ascii_alphabetic()) {
                            push(
                                format!("{at}.methods[{j}]"),
                                format!("{m:?} is not an HTTP method"),
                            );
                        }
                        m.to_ascii_uppercase().into_boxed_str()
                    })
                    .collect::<Vec<_>>()
            });
            if r.public
                && (!r.roles_any.is_empty()
                    || !r.roles_all.is_empty()
                    || r.tenant_param.is_some()
                    || r.issuers.is_some())
            {
                push(
                    format!("{at}.public"),
                    "a public rule cannot also require roles, a tenant or issuers".into(),
                );
            }
            for (field, roles) in [("roles_any", &r.roles_any), ("roles_all", &r.roles_all)] {
                for (j, role) in roles.iter().enumerate() {
                    // The characters a token's role may not hold (they would break the roles
                    // header as a list), so that no rule asks for a role no token can carry.
                    if role.is_empty()
                        || role.contains([',', '"', ';', '\\'])
                        || !role.bytes().all(|b| (0x21..0x7f).contains(&b))
                    {
                        push(
                            format!("{at}.{field}[{j}]"),
                            format!(
                                "{role:?} is not a role name (printable ASCII, none of space , \" ; \\)"
                            ),
                        );
                    }
                }
            }
            if let Some(list) = &r.issuers {
                if list.is_empty() {
                    push(
                        format!("{at}.issuers"),
                        "must not be empty (omit it for every issuer)".into(),
                    );
                }
                for (j, name) in list.iter().enumerate() {
                    if !issuer_names.contains(name) {
                        push(
                            format!("{at}.issuers[{j}]"),
                            format!("{name:?} is not the name of a configured issuer"),
                        );
                    }
                }
            }
            rules.push(Rule {
                name: Arc::from(r.name.as_str()),
                patterns,
                methods,
                public: r.public,
                roles_any: boxed(&r.roles_any),
                roles_all: boxed(&r.roles_all),
                has_tenant_param: r.tenant_param.is_some(),
                issuers: r.issuers.as_deref().map(boxed),
                source: RawRule { paths, ..r },
            });
        }
        if issues.is_empty() {
            let mut trie = Node::default();
            for (r, rule) in rules.iter().enumerate() {
                for (p, pattern) in rule.patterns.iter().enumerate() {
                    trie.insert(&pattern.segments, (r, p));
                }
            }
            Ok(Policy { rules, trie })
        } else {
            Err(issues)
        }
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The first rule matching method and path.
    pub fn find<'p, 'r>(
        &'p self,
        method: &str,
        path: &'r CanonicalPath,
    ) -> Option<RuleMatch<'p, 'r>> {
        let mut best = None;
        self.trie
            .best(&path.segments, &self.rules, method, &mut best);
        let (r, p) = best?;
        let rule = &self.rules[r];
        Some(RuleMatch {
            rule,
            tenant: rule.patterns[p]
                .tenant_at
                .map(|i| path.segments[i].as_str()),
        })
    }

    /// The rule called `name`, chosen by the gateway instead of by matching (SPEC §10: Envoy's
    /// `context_extensions: {citadel_rule: NAME}`): it decides whatever the method and path. Its
    /// tenant is the `tenant_param` segment of the first of its patterns that the path matches;
    /// none when no pattern matches, so a tenant rule then refuses — it cannot tell which tenant
    /// is asked for. `None` when no rule has that name.
    pub fn named<'p, 'r>(
        &'p self,
        name: &str,
        path: &'r CanonicalPath,
    ) -> Option<RuleMatch<'p, 'r>> {
        let rule = self.rules.iter().find(|r| &*r.name == name)?;
        let tenant = rule
            .patterns
            .iter()
            .find(|p| p.matches(&path.segments))
            .and_then(|p| p.tenant_at)
            .map(|i| path.segments[i].as_str());
        Some(RuleMatch { rule, tenant })
    }

    /// The same answer as [`Policy::find`] by trying every rule in order (the definition the
    /// trie must agree with; tests compare them).
    #[cfg(test)]
    fn find_linear<'p, 'r>(
        &'p self,
        method: &str,
        path: &'r CanonicalPath,
    ) -> Option<RuleMatch<'p, 'r>> {
        self.rules
            .iter()
            .filter(|rule| rule.admits(method))
            .find_map(|rule| {
                rule.patterns.iter().find_map(|p| {
                    p.matches(&path.segments).then(|| RuleMatch {
                        rule,
                        tenant: p.tenant_at.map(|i| path.segments[i].as_str()),
                    })
                })
            })
    }
}

impl Policy {
    /// The rules in order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }
}

impl Rule {
    /// The rule as written, e.g. for the dev banner: showing compiled patterns would lose the
    /// parameter names.
    pub fn source(&self) -> &RawRule {
        &self.source
    }

    fn admits(&self, method: &str) -> bool {
        self.methods
            .as_ref()
            .is_none_or(|methods| methods.iter().any(|m| &**m == method))
    }
}

fn boxed(list: &[String]) -> Vec<Box<str>> {
    list.iter().map(|s| s.as_str().into()).collect()
}

impl Pattern {
    fn matches(&self, path: &[String]) -> bool {
        let mut i = 0;
        for seg in &self.segments {
            match seg {
                Segment::Rest => return true,
                Segment::One => {
                    if i >= path.len() {
                        return false;
                    }
                }
                Segment::Literal(lit) => {
                    if path.get(i).map(String::as_str) != Some(&**lit) {
                        return false;
                    }
                }
            }
            i += 1;
        }
        i == path.len()
    }
}

fn compile_pattern(pattern: &str, tenant_param: Option<&str>) -> Result<Pattern, String> {
    let Some(rest) = pattern.strip_prefix('/') else {
        return Err(format!("{pattern:?} must start with /"));
    };
    let mut segments = Vec::new();
    let mut tenant_at = None;
    let mut params = HashSet::new();
    if !rest.is_empty() {
        let parts: Vec<&str> = rest.split('/').collect();
        for (i, part) in parts.iter().enumerate() {
            let seg = match *part {
                "" => {
                    return Err(format!(
                        "{pattern:?} has an empty segment (// or a trailing /)"
                    ));
                }
                "**" if i + 1 == parts.len() => Segment::Rest,
                "**" => {
                    return Err(format!(
                        "{pattern:?}: ** is only allowed as the last segment"
                    ));
                }
                "*" => Segment::One,
                "." | ".." => return Err(format!("{pattern:?} has a . or .. segment")),
                p if p.starts_with('{') && p.ends_with('}') => {
                    let name = &p[1..p.len() - 1];
                    if name.is_empty()
                        || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                    {
                        return Err(format!("{pattern:?}: {p} is not a {{name}} parameter"));
                    }
                    if !params.insert(name) {
                        return Err(format!("{pattern:?}: parameter {p} appears twice"));
                    }
                    if Some(name) == tenant_param {
                        tenant_at = Some(i);
                    }
                    Segment::One
                }
                p => {
                    if p.chars().any(|c| {
                        c.is_control()
                            || matches!(c, '{' | '}' | '*' | '\\' | ';' | '%' | '?' | '#')
                    }) {
                        return Err(format!(
                            "{pattern:?}: segment {p:?} may not contain {{ }} * \\ ; % ? # or control characters (write literals decoded)"
                        ));
                    }
                    Segment::Literal(p.into())
                }
            };
            segments.push(seg);
        }
    }
    Ok(Pattern {
        segments,
        tenant_at,
    })
}

/// Whether the rule's `issuers` (if any) include the identity's issuer.
pub fn issuer_allowed(rule: &Rule, identity: &Identity) -> bool {
    rule.issuers
        .as_ref()
        .is_none_or(|issuers| issuers.iter().any(|i| **i == *identity.issuer))
}

/// Decide whether a verified identity may pass the matched (non-public) rule.
/// Order: issuer, then tenant, then roles — a request for the wrong tenant is `forbidden` even when
/// roles are also missing, since no extra scope would fix it.
pub fn authorize(m: &RuleMatch<'_, '_>, identity: &Identity) -> Result<(), PolicyDenial> {
    let rule = m.rule;
    if !issuer_allowed(rule, identity) {
        return Err(PolicyDenial::IssuerNotAllowed);
    }
    if rule.has_tenant_param {
        match (m.tenant, identity.tenant_id.as_deref()) {
            (Some(want), Some(have)) if want == have => {}
            _ => return Err(PolicyDenial::TenantMismatch),
        }
    }
    let has = |role: &str| identity.roles.iter().any(|r| &**r == role);
    if !rule.roles_all.iter().all(|r| has(r)) {
        return Err(PolicyDenial::InsufficientScope);
    }
    if !rule.roles_any.is_empty() && !rule.roles_any.iter().any(|r| has(r)) {
        return Err(PolicyDenial::InsufficientScope);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy(yaml: &str) -> Policy {
        let raw: Vec<RawRule> = crate::core::yaml::parse_yaml(yaml, "").unwrap();
        Policy::compile(raw, &["iam".to_owned(), "partner".to_owned()]).unwrap()
    }

    fn spec_policy() -> Policy {
        policy(
            r#"
- name: health
  paths: [/healthz]
  methods: [GET]
  public: true
- name: orders-read
  paths: [/api/orders/**]
  methods: [GET, HEAD]
  roles_any: [reader, "orders:write"]
- name: tenant-data
  paths: [/api/tenants/{tenant}/**]
  tenant_param: tenant
  roles_any: [member, admin]
- name: admin
  paths: [/api/admin/**]
  roles_all: [admin]
  issuers: [iam]
- name: me
  paths: [/api/me]
- name: star
  paths: [/files/*/meta, /]
"#,
        )
    }

    fn rule_for(p: &Policy, method: &str, target: &str) -> Option<String> {
        let path = canonicalize(target).unwrap();
        p.find(method, &path).map(|m| m.rule.name.to_string())
    }

    #[test]
    fn the_string_form_of_a_canonical_path_canonicalises_to_the_same_segments() {
        for target in [
            "/api/orders/x%252/2",
            "/a%3Fb/c",
            "/a%23b",
            "/%E2%82%AC/x%20y",
            "/100%25",
            "/a:b@c/~x",
        ] {
            let c = canonicalize(target).unwrap();
            let again = canonicalize(&c.to_path_string()).unwrap();
            assert_eq!(
                again.segments(),
                c.segments(),
                "{target} → {}",
                c.to_path_string()
            );
        }
        assert_eq!(canonicalize("/a%3Fb").unwrap().to_path_string(), "/a%3Fb");
    }

    #[test]
    fn a_rule_chosen_by_name_decides_whatever_the_path_with_its_tenant_when_a_pattern_matches() {
        let p = spec_policy();
        let path = |t: &str| canonicalize(t).unwrap();
        let acme = path("/api/tenants/acme/x");
        let m = p.named("tenant-data", &acme).unwrap();
        assert_eq!((&*m.rule.name, m.tenant), ("tenant-data", Some("acme")));
        let other = path("/somewhere/else");
        let m = p.named("tenant-data", &other).unwrap();
        assert_eq!(m.tenant, None);
        assert_eq!(&*p.named("admin", &other).unwrap().rule.name, "admin");
        assert!(p.named("nope", &other).is_none());
    }

    #[test]
    fn patterns_and_precedence() {
        let p = spec_policy();
        let cases: &[(&str, &str, Option<&str>)] = &[
            ("GET", "/healthz", Some("health")),
            ("POST", "/healthz", None),
            ("GET", "/healthz/", Some("health")),
            ("GET", "/healthz?probe=1", Some("health")),
            ("GET", "/api/orders", Some("orders-read")),
            ("GET", "/api/orders/", Some("orders-read")),
            ("GET", "/api/orders/1/items/2", Some("orders-read")),
            ("HEAD", "/api/orders/1", Some("orders-read")),
            ("DELETE", "/api/orders/1", None),
            ("get", "/api/orders/1", None),
            ("GET", "/api/ordersX", None),
            ("GET", "/API/orders", None),
            ("PUT", "/api/tenants/acme/x", Some("tenant-data")),
            ("PUT", "/api/tenants/acme", Some("tenant-data")),
            ("PUT", "/api/tenants", None),
            ("GET", "/api/admin", Some("admin")),
            ("GET", "/api/me", Some("me")),
            ("GET", "/api/me/x", None),
            ("GET", "/files/a/meta", Some("star")),
            ("GET", "/files/meta", None),
            ("GET", "/files/a/b/meta", None),
            ("GET", "/", Some("star")),
            ("GET", "/api/%6De", Some("me")),
            ("GET", "/nothing", None),
        ];
        for (method, target, want) in cases {
            assert_eq!(
                rule_for(&p, method, target).as_deref(),
                *want,
                "{method} {target}"
            );
        }
    }

    #[test]
    fn only_upper_case_method_tokens_are_matched() {
        for ok in ["GET", "DELETE", "PURGE", "M-SEARCH", "BREW2", "X_Y"] {
            assert!(is_upper_case_method(ok), "{ok:?}");
        }
        for bad in [
            "", "delete", "Get", "gET", "GE T", " GET", "GET ", "GET\t", "GE\u{0}T", "GÉT",
            "GET/1", "GET,POST", "(GET)",
        ] {
            assert!(!is_upper_case_method(bad), "{bad:?}");
        }
    }

    #[test]
    fn the_first_matching_pattern_of_a_rule_names_the_tenant() {
        let p = policy("- {name: t, paths: [\"/{t}/acme\", \"/x/{t}\"], tenant_param: t}\n");
        let path = canonicalize("/x/acme").unwrap();
        assert_eq!(p.find("GET", &path).unwrap().tenant, Some("x"));
        assert_eq!(p.find_linear("GET", &path).unwrap().tenant, Some("x"));
    }

    #[test]
    fn first_match_wins() {
        let p = policy("- {name: a, paths: [/x/**], public: true}\n- {name: b, paths: [/x/y]}\n");
        assert_eq!(rule_for(&p, "GET", "/x/y").as_deref(), Some("a"));
    }

    #[test]
    fn canonical_path_refusals() {
        let cases: &[(&str, PathError)] = &[
            ("api/me", PathError::NotAbsolute),
            ("", PathError::NotAbsolute),
            ("*", PathError::NotAbsolute),
            ("//api/me", PathError::EmptySegment),
            ("/api//me", PathError::EmptySegment),
            ("/api/me//", PathError::EmptySegment),
            ("/api/./me", PathError::DotSegment),
            ("/api/../admin", PathError::DotSegment),
            ("/api/%2E%2E/admin", PathError::DotSegment),
            ("/api/%2e/admin", PathError::DotSegment),
            ("/api/.%2E/admin", PathError::DotSegment),
            ("/api%2Fadmin", PathError::EncodedSlash),
            ("/api%2fadmin", PathError::EncodedSlash),
            ("/api%5Cadmin", PathError::EncodedSlash),
            ("/api\\admin", PathError::Backslash),
            ("/api;x=1/me", PathError::Semicolon),
            ("/api%3Bx/me", PathError::Semicolon),
            ("/api/me%00", PathError::Control),
            ("/api/me%0A", PathError::Control),
            ("/api/me%7F", PathError::Control),
            ("/api/me\t", PathError::Control),
            ("/api/me%C2%85", PathError::Control),
            ("/api/me%", PathError::BadPercent),
            ("/api/me%4", PathError::BadPercent),
            ("/api/me%zz", PathError::BadPercent),
            ("/api/%C0%AE%C0%AE/admin", PathError::NotUtf8),
            ("/api/%FF", PathError::NotUtf8),
            ("/api/public/%252e%252e/admin", PathError::DoubleEncoded),
            ("/api/%25%32%65%25%32%65/admin", PathError::DoubleEncoded),
            ("/files/%2525", PathError::DoubleEncoded),
            ("/a%252Fb", PathError::DoubleEncoded),
            ("/a%25410", PathError::DoubleEncoded),
            ("/a/%25Ff", PathError::DoubleEncoded),
        ];
        for (target, want) in cases {
            assert_eq!(canonicalize(target), Err(*want), "{target:?}");
        }
    }

    #[test]
    fn canonical_path_accepts_and_decodes_once() {
        assert_eq!(canonicalize("/").unwrap().segments(), &[] as &[String]);
        assert_eq!(
            canonicalize("/?a=/../").unwrap().segments(),
            &[] as &[String]
        );
        assert_eq!(canonicalize("/a%20b/c").unwrap().segments(), &["a b", "c"]);
        // A lone %25 is a literal %, also next to text that is not two hex digits.
        assert_eq!(
            canonicalize("/files/100%25").unwrap().segments(),
            &["files", "100%"]
        );
        assert_eq!(
            canonicalize("/a%25zz/%25%25").unwrap().segments(),
            &["a%zz", "%%"]
        );
        assert_eq!(canonicalize("/a%25A").unwrap().segments(), &["a%A"]);
        assert_eq!(canonicalize("/caf%C3%A9").unwrap().segments(), &["café"]);
        assert_eq!(canonicalize("/a/...").unwrap().segments(), &["a", "..."]);
        assert_eq!(canonicalize("/a#frag/../x").unwrap().to_path_string(), "/a");
    }

    #[test]
    fn compile_errors_name_their_field() {
        let cases: &[(&str, &str)] = &[
            ("- {name: a, paths: [api]}", "rules[0].paths[0]"),
            ("- {name: a, paths: ['/a/**/b']}", "rules[0].paths[0]"),
            ("- {name: a, paths: ['/a//b']}", "rules[0].paths[0]"),
            ("- {name: a, paths: ['/a/']}", "rules[0].paths[0]"),
            ("- {name: a, paths: ['/{x}/{x}']}", "rules[0].paths[0]"),
            ("- {name: a, paths: ['/a%2F']}", "rules[0].paths[0]"),
            ("- {name: a, paths: []}", "rules[0].paths"),
            (
                "- {name: a, paths: [/a]}\n- {name: a, paths: [/b]}",
                "rules[1].name",
            ),
            (
                "- {name: a, paths: ['/t/{t}'], tenant_param: x}",
                "rules[0].tenant_param",
            ),
            (
                "- {name: a, paths: ['/t/{t}', /u], tenant_param: t}",
                "rules[0].tenant_param",
            ),
            (
                "- {name: a, paths: [/a], issuers: [nobody]}",
                "rules[0].issuers[0]",
            ),
            (
                "- {name: a, paths: [/a], public: true, roles_any: [x]}",
                "rules[0].public",
            ),
            ("- {name: a, paths: [/a], methods: []}", "rules[0].methods"),
            (
                "- {name: a, paths: [/a], methods: ['G T']}",
                "rules[0].methods[0]",
            ),
            (
                "- {name: a, paths: [/a], roles_all: ['a,b']}",
                "rules[0].roles_all[0]",
            ),
            (
                "- {name: a, paths: [/a], roles_any: [ok, 'a;b']}",
                "rules[0].roles_any[1]",
            ),
            (
                "- {name: a, paths: [/a], roles_any: ['a\"b']}",
                "rules[0].roles_any[0]",
            ),
        ];
        for (yaml, path) in cases {
            let raw: Vec<RawRule> = crate::core::yaml::parse_yaml(yaml, "").unwrap();
            let errs = Policy::compile(raw, &["iam".to_owned()]).unwrap_err();
            assert_eq!(errs[0].path, *path, "{yaml}: {errs:?}");
        }
    }

    fn identity(issuer: &str, tenant: Option<&str>, roles: &[&str]) -> Identity {
        Identity {
            issuer: Arc::from(issuer),
            user_id: Some("u".into()),
            tenant_id: tenant.map(Into::into),
            roles: roles.iter().map(|r| (*r).into()).collect::<Vec<_>>().into(),
            expires_at: 0.0,
        }
    }

    #[test]
    fn authorize_table() {
        let p = spec_policy();
        let check = |target: &str, id: &Identity| {
            let path = canonicalize(target).unwrap();
            let m = p.find("GET", &path).unwrap();
            authorize(&m, id)
        };
        use PolicyDenial::*;
        let cases: Vec<(&str, Identity, Result<(), PolicyDenial>)> = vec![
            ("/api/me", identity("iam", None, &[]), Ok(())),
            ("/api/orders/1", identity("iam", None, &["reader"]), Ok(())),
            (
                "/api/orders/1",
                identity("iam", None, &["orders:write"]),
                Ok(()),
            ),
            (
                "/api/orders/1",
                identity("iam", None, &["writer"]),
                Err(InsufficientScope),
            ),
            (
                "/api/orders/1",
                identity("iam", None, &[]),
                Err(InsufficientScope),
            ),
            (
                "/api/tenants/acme/x",
                identity("iam", Some("acme"), &["member"]),
                Ok(()),
            ),
            (
                "/api/tenants/acme/x",
                identity("iam", Some("globex"), &["member"]),
                Err(TenantMismatch),
            ),
            (
                "/api/tenants/acme/x",
                identity("iam", None, &["member"]),
                Err(TenantMismatch),
            ),
            (
                "/api/tenants/acme/x",
                identity("iam", Some("globex"), &[]),
                Err(TenantMismatch),
            ),
            (
                "/api/tenants/acme/x",
                identity("iam", Some("acme"), &[]),
                Err(InsufficientScope),
            ),
            (
                "/api/tenants/ACME/x",
                identity("iam", Some("acme"), &["admin"]),
                Err(TenantMismatch),
            ),
            ("/api/admin/x", identity("iam", None, &["admin"]), Ok(())),
            (
                "/api/admin/x",
                identity("partner", None, &["admin"]),
                Err(IssuerNotAllowed),
            ),
            (
                "/api/admin/x",
                identity("iam", None, &["reader"]),
                Err(InsufficientScope),
            ),
        ];
        for (target, id, want) in cases {
            assert_eq!(check(target, &id), want, "{target} {id:?}");
        }
    }

    proptest! {
        #[test]
        fn trie_agrees_with_trying_every_rule_in_order(
            segs in proptest::collection::vec("(a|b|api|orders|x|acme)", 0..5),
            method in "(GET|POST|DELETE)",
        ) {
            let p = policy(
                r#"
- {name: r0, paths: ["/api/{t}/x"], methods: [POST], tenant_param: t}
- {name: r0b, paths: ["/{t}/acme", "/x/{t}"], methods: [POST], tenant_param: t}
- {name: r1, paths: [/api/orders/**], methods: [GET]}
- {name: r2, paths: ["/a/*/b", /b/**]}
- {name: r3, paths: [/api/**], methods: [DELETE]}
- {name: r4, paths: ["/{t}/orders", "/{t}"], tenant_param: t}
- {name: r5, paths: ["/*/b/**", /]}
- {name: r6, paths: [/**], methods: [GET]}
"#,
            );
            let target = format!("/{}", segs.join("/"));
            let path = canonicalize(&target).unwrap();
            let trie = p.find(&method, &path).map(|m| (m.rule.name.to_string(), m.tenant.map(str::to_owned)));
            let linear = p.find_linear(&method, &path).map(|m| (m.rule.name.to_string(), m.tenant.map(str::to_owned)));
            prop_assert_eq!(trie, linear, "{} {}", method, target);
        }

        #[test]
        fn canonicalize_never_panics(s in "\\PC{0,64}") {
            let _ = canonicalize(&s);
        }

        #[test]
        fn canonical_segments_are_clean(s in "(/[a-zA-Z0-9%./;\\\\]{0,6}){1,6}") {
            if let Ok(p) = canonicalize(&s) {
                for seg in p.segments() {
                    prop_assert!(!seg.is_empty());
                    prop_assert!(seg != "." && seg != "..");
                    prop_assert!(!seg.contains('/') && !seg.contains('\\') && !seg.contains(';'));
                    // Decoded once and no more: nothing in a segment would decode again.
                    let b = seg.as_bytes();
                    prop_assert!(!b.windows(3).any(|w| w[0] == b'%' && hex(w[1]).is_some() && hex(w[2]).is_some()), "{:?}", seg);
                }
            }
        }

        #[test]
        fn a_percent_that_decodes_to_an_escape_is_refused(
            prefix in "[a-z]{0,4}",
            hi in "[0-9a-fA-F]",
            lo in "[0-9a-fA-F]",
            encode in proptest::collection::vec(any::<bool>(), 2),
            suffix in "[a-z]{0,4}",
        ) {
            // `%25` then two hex digits, each written as itself or percent-encoded (`%32%65`).
            let enc = |c: &str, yes: bool| if yes { format!("%{:02X}", c.as_bytes()[0]) } else { c.to_owned() };
            let target = format!("/x/{prefix}%25{}{}{suffix}", enc(&hi, encode[0]), enc(&lo, encode[1]));
            prop_assert_eq!(canonicalize(&target), Err(PathError::DoubleEncoded), "{}", target);
        }

        #[test]
        fn unmatched_is_never_allowed(seg in "[a-z]{1,8}") {
            // Deny wins: a path outside every rule never finds a rule.
            let p = spec_policy();
            let target = format!("/zz{seg}");
            prop_assert!(p.find("GET", &canonicalize(&target).unwrap()).is_none());
        }
    }
}
