//! URLs as they may appear in logs, errors, metrics and `check-config` output: credentials that a
//! URL can carry (userinfo, query, fragment) removed.

/// A URL as it may appear in logs, errors and metrics: without userinfo (`user:pass@`), query
/// and fragment, which may carry credentials (`?api_key=`). For JWKS, discovery and
/// introspection URLs alike. A string that does not parse as a URL is cut the same way by hand.
pub fn redact_url(url: &str) -> String {
    // Nothing to remove: keep the text exactly as configured (the parser would normalise it).
    if !url.contains(['@', '?', '#']) {
        return url.to_owned();
    }
    if let Ok(mut parsed) = url::Url::parse(url)
        && parsed.has_host()
    {
        // Cannot fail on a URL with a host.
        let _ = parsed.set_username("");
        let _ = parsed.set_password(None);
        parsed.set_query(None);
        parsed.set_fragment(None);
        return parsed.into();
    }
    let end = url.find(['?', '#']).unwrap_or(url.len());
    let url = &url[..end];
    let (scheme, rest) = match url.find("://") {
        Some(i) => url.split_at(i + 3),
        None => ("", url),
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let rest = match rest[..authority_end].rfind('@') {
        Some(at) => &rest[at + 1..],
        None => rest,
    };
    format!("{scheme}{rest}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_url_drops_userinfo_query_and_fragment() {
        assert_eq!(
            redact_url("https://u:p@iam.example.com:8443/jwks?api_key=x#f"),
            "https://iam.example.com:8443/jwks"
        );
        assert_eq!(
            redact_url("https://iam.example.com/jwks"),
            "https://iam.example.com/jwks"
        );
        // Not a URL the parser takes: cut by hand the same way.
        assert_eq!(redact_url("u:p@host/jwks?k=v"), "host/jwks");
        assert_eq!(redact_url("ht tp://u:p@h/x?k"), "ht tp://h/x");
        assert_eq!(redact_url("ftp://u:p@[::1/x?k"), "ftp://[::1/x");
    }
}
