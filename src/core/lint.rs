//! Policy lints for `check-config`: what is valid but almost certainly not meant.
//!
//! Pure: works on the rules as written (after they compiled), no I/O. A warning never changes
//! whether a config loads. Every check here is conservative — it speaks only when it is certain
//! (a rule reported as shadowed can never be chosen by path matching) — since a false warning
//! teaches people to ignore them all.

use crate::core::policy::RawRule;
use crate::core::yaml::{ConfigIssue, PARAM_CLOSE, PARAM_OPEN};

/// Methods defined by RFC 9110 and RFC 5789 (PATCH). Others (`PURGE`, WebDAV's `PROPFIND`) are
/// allowed but warned about: more often a typo than a method the gateway really forwards.
pub const STANDARD_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// A rule's method must be an upper-case HTTP token: requests are matched case-sensitively and a
/// request method that is not upper case is refused before any rule is looked at, so `get` in a
/// rule could never match anything.
pub fn check_method(method: &str) -> Result<(), String> {
    let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if method.is_empty() || !method.bytes().all(tchar) {
        return Err(format!(
            "{method:?} is not an HTTP method (an upper-case token like GET or PURGE)"
        ));
    }
    if method.bytes().any(|b| b.is_ascii_lowercase()) {
        return Err(format!(
            "{method:?} is not upper case: methods are matched exactly and a lower-case request method is refused, so this could never match (write {:?})",
            method.to_ascii_uppercase()
        ));
    }
    Ok(())
}

/// Warnings for compiled rules: `index[k]` is the position in the file of `rules[k]`, `prefix`
/// goes before each path (`policy.` or `policy.yaml: `).
pub fn policy_warnings(index: &[usize], rules: &[RawRule], prefix: &str) -> Vec<ConfigIssue> {
    let mut out = Vec::new();
    let at = |k: usize| format!("{prefix}rules[{}]", index.get(k).copied().unwrap_or(k));
    for (k, rule) in rules.iter().enumerate() {
        for (j, m) in rule.methods.iter().flatten().enumerate() {
            if check_method(m).is_ok() && !STANDARD_METHODS.contains(&m.as_str()) {
                out.push(ConfigIssue {
                    path: format!("{}.methods[{j}]", at(k)),
                    message: format!(
                        "{m:?} is not a standard HTTP method ({}); fine if your gateway really forwards it",
                        STANDARD_METHODS.join(" ")
                    ),
                });
            }
        }
        if let Some(by) = shadowed_by(rules, k) {
            let names: Vec<String> = by.iter().map(|&e| format!("{:?}", rules[e].name)).collect();
            out.push(ConfigIssue {
                path: at(k),
                message: format!(
                    "rule {:?} is never matched: every method and path it matches is decided first by rule {}",
                    rule.name,
                    names.join(", ")
                ),
            });
        }
    }
    out
}

/// The earlier rules that together take every request rule `k` could match, or `None` when
/// some request could reach it. Each of `k`'s patterns must be covered by one pattern of one
/// earlier rule that admits every method `k` admits.
fn shadowed_by(rules: &[RawRule], k: usize) -> Option<Vec<usize>> {
    let rule = &rules[k];
    let mut by = Vec::new();
    for path in &rule.paths {
        let pattern = segments(path);
        let earlier = rules[..k].iter().enumerate().find(|(_, e)| {
            admits_all(e, rule) && e.paths.iter().any(|p| covers(&segments(p), &pattern))
        })?;
        if !by.contains(&earlier.0) {
            by.push(earlier.0);
        }
    }
    (!by.is_empty()).then_some(by)
}

/// Whether `earlier` admits every method `later` does.
fn admits_all(earlier: &RawRule, later: &RawRule) -> bool {
    match (&earlier.methods, &later.methods) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(e), Some(l)) => l.iter().all(|m| e.contains(m)),
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Seg<'a> {
    Literal(&'a str),
    /// `*` or `{name}`: exactly one segment.
    One,
    /// `**`: zero or more segments (only last).
    Rest,
}

fn segments(pattern: &str) -> Vec<Seg<'_>> {
    let rest = pattern.strip_prefix('/').unwrap_or(pattern);
    if rest.is_empty() {
        return Vec::new();
    }
    rest.split('/')
        .map(|s| match s {
            "**" => Seg::Rest,
            "*" => Seg::One,
            s if (s.starts_with('{') && s.ends_with('}'))
                || (s.starts_with(PARAM_OPEN) && s.ends_with(PARAM_CLOSE)) =>
            {
                Seg::One
            }
            s => Seg::Literal(s),
        })
        .collect()
}

/// Whether every path `b` matches is matched by `a`.
fn covers(a: &[Seg<'_>], b: &[Seg<'_>]) -> bool {
    match (a.split_first(), b.split_first()) {
        (Some((Seg::Rest, _)), _) => true,
        (None, None) => true,
        (None, Some(_)) | (Some(_), None) => false,
        // `b`'s `**` also matches longer paths than any non-`**` segment of `a` can.
        (Some(_), Some((Seg::Rest, _))) => false,
        (Some((Seg::One, a_tail)), Some((_, b_tail))) => covers(a_tail, b_tail),
        (Some((Seg::Literal(x), a_tail)), Some((Seg::Literal(y), b_tail))) => {
            x == y && covers(a_tail, b_tail)
        }
        (Some((Seg::Literal(_), _)), Some((Seg::One, _))) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(name: &str, paths: &[&str], methods: Option<&[&str]>) -> RawRule {
        RawRule {
            name: name.to_owned(),
            paths: paths.iter().map(|p| (*p).to_owned()).collect(),
            methods: methods.map(|ms| ms.iter().map(|m| (*m).to_owned()).collect()),
            public: false,
            roles_any: Vec::new(),
            roles_all: Vec::new(),
            tenant_param: None,
            issuers: None,
        }
    }

    fn warned(rules: &[RawRule]) -> Vec<String> {
        let index: Vec<usize> = (0..rules.len()).collect();
        policy_warnings(&index, rules, "policy.")
            .into_iter()
            .map(|w| w.path)
            .collect()
    }

    #[test]
    fn pattern_cover_table() {
        let cases: &[(&str, &str, bool)] = &[
            ("/api/**", "/api/orders", true),
            ("/api/**", "/api", true),
            ("/api/**", "/api/**", true),
            ("/api/**", "/api/{id}/x/**", true),
            ("/**", "/", true),
            ("/api/*", "/api/{id}", true),
            ("/api/{x}", "/api/orders", true),
            ("/api/orders", "/api/orders", true),
            ("/api/*", "/api/**", false),
            ("/api/*", "/api", false),
            ("/api/orders", "/api/{id}", false),
            ("/api/orders", "/api/orders/x", false),
            ("/api/orders/**", "/api/**", false),
            ("/api/x/**", "/api/y/**", false),
            ("/", "/x", false),
            ("/a/*/c", "/a/b/c", true),
        ];
        for (a, b, want) in cases {
            assert_eq!(covers(&segments(a), &segments(b)), *want, "{a} covers {b}");
        }
    }

    #[test]
    fn shadowed_rules_are_warned_only_when_certain() {
        let rules = [
            rule("all-api", &["/api/**"], Some(&["GET", "HEAD"])),
            rule("orders", &["/api/orders/**"], Some(&["GET"])),
            rule("writes", &["/api/orders/**"], Some(&["POST"])),
            rule("any-method", &["/api/me"], None),
            rule("health", &["/healthz"], None),
            rule("health-get", &["/healthz", "/api/x"], Some(&["GET"])),
            rule("partly", &["/healthz", "/other"], Some(&["GET"])),
        ];
        assert_eq!(
            warned(&rules),
            vec!["policy.rules[1]", "policy.rules[5]"],
            "GET-only orders under a GET+HEAD /api/**, and health-get under health + all-api"
        );
        let w = policy_warnings(&[0, 1], &rules[..2], "p.yaml: ");
        assert!(w[0].message.contains("\"all-api\""), "{w:?}");
    }

    #[test]
    fn warnings_keep_the_file_index() {
        let rules = [rule("a", &["/x/**"], None), rule("b", &["/x/y"], None)];
        let w = policy_warnings(&[0, 3], &rules, "policy.yaml: ");
        assert_eq!(w[0].path, "policy.yaml: rules[3]");
    }

    #[test]
    fn methods() {
        assert!(check_method("GET").is_ok());
        assert!(check_method("PURGE").is_ok());
        assert!(check_method("M-SEARCH").is_ok());
        for bad in ["get", "Get", "", "GE T", "GET\n"] {
            assert!(check_method(bad).is_err(), "{bad:?}");
        }
        let rules = [rule("p", &["/x"], Some(&["GET", "PURGE"]))];
        assert_eq!(warned(&rules), vec!["policy.rules[0].methods[1]"]);
    }
}
