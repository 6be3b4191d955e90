//! The verified identity of a request and the rules its values obey: every value goes into an
//! HTTP header unchanged and is read back identically, and no value looks like a list of several
//! to an upstream that splits the header. Token claims, introspection answers and membership
//! stores all go through these rules.

use std::sync::Arc;

/// Longest identity header value.
pub const MAX_HEADER_VALUE: usize = 1024;

/// The verified identity a token carries, in header-safe form.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    /// The configured issuer name (not the `iss` URL).
    pub issuer: Arc<str>,
    pub user_id: Option<Box<str>>,
    /// Shared (`Arc`): many cached identities carry the same tenant, and the token cache lets
    /// them share one string (see `serve::cache`).
    pub tenant_id: Option<Arc<str>>,
    /// In claim-path order, each in token order, without duplicates. Shared like the tenant:
    /// identities with the same role set point at one list.
    pub roles: Arc<[Box<str>]>,
    /// `exp`, seconds since the epoch.
    pub expires_at: f64,
}

impl Identity {
    /// Roles joined with `,` (the `x-user-roles` value); `None` when there are none.
    pub fn roles_header(&self) -> Option<String> {
        (!self.roles.is_empty()).then(|| self.roles.join(","))
    }
}

/// A role that can go into `X-User-Roles`: an upstream may split the roles header on `,` or on
/// spaces, or parse it as a structured field (quotes, `;` parameters, `\` escapes): any of those in
/// one role would show it other roles than the policy judged. Also the rule for a store's roles.
pub fn is_safe_role(role: &str) -> bool {
    header_safe(role) && !role.contains([' ', ',', '"', ';', '\\'])
}

/// A user or tenant id that can go into its header: header-safe, and no `,`, which would make one
/// id look like a list of two to an upstream that splits the header. Also the rule for a store's
/// tenants and subjects.
pub fn is_safe_id(id: &str) -> bool {
    header_safe(id) && !id.contains(',')
}

/// A value that can go into an HTTP header unchanged and be read back identically: printable
/// ASCII, no leading/trailing space (a proxy would trim it), at most 1 KiB, not empty.
pub fn header_safe(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_HEADER_VALUE
        && s.bytes().all(|b| (0x20..0x7f).contains(&b))
        && !s.starts_with(' ')
        && !s.ends_with(' ')
}
