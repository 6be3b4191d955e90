//! Membership semantics (SPEC §8): what a membership store's answer means for one request.
//!
//! Pure: a lookup result ([`Memberships`]) and a verified [`Identity`] in, the effective identity
//! out. The stores that produce the lookup result live in [`crate::sources::membership`]; the decision
//! ([`crate::serve::authorizer`]) hands the result in, so no I/O happens here.

use std::collections::HashMap;
use std::sync::Arc;

use crate::core::identity::Identity;

/// The tenant that stands for every tenant, in a file or in a query's rows.
pub const ANY_TENANT: &str = "*";

/// One row of a store's answer: membership of `tenant`, with `role` in it (`None`: member
/// without a role, as a file's `acme: []` or a query row whose role is NULL says).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub tenant: Box<str>,
    pub role: Option<Box<str>>,
}

/// What a store knows of one user, rows in the store's order. Empty: a user the store does not
/// know, which has no memberships (not an error).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Memberships {
    pub rows: Vec<Row>,
}

impl Memberships {
    pub fn new(rows: Vec<Row>) -> Self {
        Memberships { rows }
    }

    /// Whether the store lists the user in `tenant` (directly or through `*`).
    pub fn is_member_of(&self, tenant: &str) -> bool {
        self.rows
            .iter()
            .any(|r| &*r.tenant == tenant || &*r.tenant == ANY_TENANT)
    }

    /// The store's roles for the request tenant: rows for it and rows for `*`, in store order.
    /// With no request tenant, only the `*` rows apply (they hold in every tenant).
    pub fn roles_for<'a>(&'a self, tenant: Option<&'a str>) -> impl Iterator<Item = &'a str> + 'a {
        self.rows
            .iter()
            .filter(move |r| &*r.tenant == ANY_TENANT || Some(&*r.tenant) == tenant)
            .filter_map(|r| r.role.as_deref())
    }
}

/// The identity a rule is judged on (SPEC §8), for a non-public rule and a token whose issuer the
/// store covers. `path_tenant` is the rule's `tenant_param` segment when the rule has one.
///
/// - The request tenant T is `path_tenant`, else the token's tenant id (possibly none).
/// - Roles: the token's, then the store's for T (rows for T and for `*`) in store order, duplicates
///   dropped.
/// - With `tenant_param`: when the token's tenant is T or the store lists the user in T (or `*`),
///   the tenant id becomes T, so the rule's tenant check passes and `X-Tenant-ID` is T. Otherwise
///   the token's tenant id stays and the tenant check fails as it would without a store.
pub fn effective(
    identity: &Identity,
    memberships: &Memberships,
    path_tenant: Option<&str>,
) -> Identity {
    let tenant = path_tenant.or(identity.tenant_id.as_deref());
    let mut added: Vec<Box<str>> = Vec::new();
    for role in memberships.roles_for(tenant) {
        if !identity.roles.iter().chain(&added).any(|r| &**r == role) {
            added.push(role.into());
        }
    }
    // Nothing new: the token's (shared) list as it is.
    let roles = if added.is_empty() {
        Arc::clone(&identity.roles)
    } else {
        identity.roles.iter().cloned().chain(added).collect()
    };
    let tenant_id = match path_tenant {
        Some(t) if memberships.is_member_of(t) => Some(t.into()),
        _ => identity.tenant_id.clone(),
    };
    Identity {
        issuer: Arc::clone(&identity.issuer),
        user_id: identity.user_id.clone(),
        tenant_id,
        roles,
        expires_at: identity.expires_at,
    }
}

/// One entry of a memberships file: the issuer name it is limited to (`None`: every issuer)
/// and its rows.
type Entry = (Option<Box<str>>, Memberships);

/// A memberships file, validated: the entries of each subject in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MembershipTable {
    by_subject: HashMap<Box<str>, Vec<Entry>>,
}

impl MembershipTable {
    /// Add one entry (file order is kept per subject).
    pub fn insert(&mut self, subject: &str, issuer: Option<&str>, memberships: Memberships) {
        self.by_subject
            .entry(subject.into())
            .or_default()
            .push((issuer.map(Into::into), memberships));
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.by_subject.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.by_subject.is_empty()
    }

    /// Whether an entry for `subject` limited to `issuer` (or to every issuer) exists already.
    pub fn contains(&self, subject: &str, issuer: Option<&str>) -> bool {
        self.by_subject
            .get(subject)
            .is_some_and(|e| e.iter().any(|(i, _)| i.as_deref() == issuer))
    }

    /// The rows of every entry for `user` that applies to `issuer`, in file order.
    pub fn lookup(&self, issuer: &str, user: &str) -> Memberships {
        let rows = self
            .by_subject
            .get(user)
            .into_iter()
            .flatten()
            .filter(|(i, _)| i.as_deref().is_none_or(|i| i == issuer))
            .flat_map(|(_, m)| m.rows.iter().cloned())
            .collect();
        Memberships { rows }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(tenant: Option<&str>, roles: &[&str]) -> Identity {
        Identity {
            issuer: Arc::from("iam"),
            user_id: Some("alice".into()),
            tenant_id: tenant.map(Into::into),
            roles: roles.iter().map(|r| (*r).into()).collect::<Vec<_>>().into(),
            expires_at: 0.0,
        }
    }

    fn rows(list: &[(&str, Option<&str>)]) -> Memberships {
        Memberships::new(
            list.iter()
                .map(|(t, r)| Row {
                    tenant: (*t).into(),
                    role: r.map(Into::into),
                })
                .collect(),
        )
    }

    fn roles(id: &Identity) -> Vec<&str> {
        id.roles.iter().map(|r| &**r).collect()
    }

    #[test]
    fn roles_are_token_roles_then_store_roles_for_the_tenant_and_star_in_store_order() {
        let m = rows(&[
            ("globex", Some("admin")),
            ("*", Some("support")),
            ("acme", Some("billing")),
            ("globex", Some("member")),
            ("globex", Some("admin")),
        ]);
        let token = identity(Some("acme"), &["member", "support"]);
        let e = effective(&token, &m, Some("globex"));
        assert_eq!(roles(&e), ["member", "support", "admin"]);
        let e = effective(&token, &m, None);
        assert_eq!(roles(&e), ["member", "support", "billing"]);
        let no_tenant = identity(None, &[]);
        assert_eq!(roles(&effective(&no_tenant, &m, None)), ["support"]);
    }

    #[test]
    fn tenant_param_passes_by_token_tenant_or_store_membership() {
        let token = identity(Some("acme"), &[]);
        let m = rows(&[("globex", None)]);
        assert_eq!(
            effective(&token, &m, Some("globex")).tenant_id.as_deref(),
            Some("globex")
        );
        assert_eq!(
            effective(&token, &m, Some("initech")).tenant_id.as_deref(),
            Some("acme")
        );
        assert_eq!(
            effective(&token, &m, Some("acme")).tenant_id.as_deref(),
            Some("acme")
        );
        let star = rows(&[("*", Some("support"))]);
        assert_eq!(
            effective(&token, &star, Some("initech"))
                .tenant_id
                .as_deref(),
            Some("initech")
        );
        // Without tenant_param the token's tenant stays, whatever the store says.
        assert_eq!(
            effective(&token, &m, None).tenant_id.as_deref(),
            Some("acme")
        );
    }

    #[test]
    fn an_unknown_user_keeps_the_token_identity() {
        let token = identity(Some("acme"), &["member"]);
        let e = effective(&token, &Memberships::default(), Some("globex"));
        assert_eq!(e, token);
    }

    #[test]
    fn table_lookup_applies_issuer_limits_in_file_order() {
        let mut t = MembershipTable::default();
        t.insert("alice", Some("iam"), rows(&[("acme", Some("admin"))]));
        t.insert("alice", None, rows(&[("*", Some("support"))]));
        t.insert("alice", Some("partner"), rows(&[("globex", Some("x"))]));
        assert_eq!(
            t.lookup("iam", "alice"),
            rows(&[("acme", Some("admin")), ("*", Some("support"))])
        );
        assert_eq!(t.lookup("other", "alice"), rows(&[("*", Some("support"))]));
        assert_eq!(t.lookup("iam", "bob"), Memberships::default());
        assert!(t.contains("alice", None) && !t.contains("bob", None));
        assert_eq!(t.len(), 3);
    }
}
