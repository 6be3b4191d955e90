//! The membership store from a file (SPEC §8), end to end in the server: roles and tenants from
//! the store as well as from the token, through gRPC and forward-auth; `membership.issuers`;
//! file reload (good versions apply within seconds, bad ones are refused whole and counted);
//! metrics. The PostgreSQL source has its own tests (`membership_pg`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use jsonwebtoken::Algorithm;

use crate::support::*;

/// alice's token says tenant `acme` with role `member`; the store also makes her `admin` in
/// `globex` and `support` everywhere. carol (issuer `partner` only) is a member of `initech`.
const MEMBERS: &str = r#"
members:
  - subject: alice
    tenants:
      globex: [admin]
      "*": [support]
  - subject: carol
    issuer: partner
    tenants:
      initech: []
"#;

const POLICY_RULES: &str = r#"
  rules:
    - name: tenant-data
      paths: [/api/tenants/{tenant}/**]
      tenant_param: tenant
      roles_any: [member, admin]
    - name: tenant-admin
      paths: [/api/admin/{tenant}/**]
      tenant_param: tenant
      roles_all: [admin]
    - name: support
      paths: [/api/support/**]
      roles_all: [support]
    - name: me
      paths: [/api/me]
"#;

fn write_config(dir: &Path, jwks: &JwksServer, membership_extra: &str) -> PathBuf {
    let cfg = dir.join("citadel-authz.yaml");
    std::fs::write(
        &cfg,
        format!(
            r#"
listen: {{ grpc: 127.0.0.1:0, http: 127.0.0.1:0 }}
issuers:
  - name: iam
    issuer: {iss}
    jwks_uri: {uri}
    audiences: [api]
  - name: partner
    issuer: {iss}/partner
    jwks_uri: {uri}
    audiences: [api]
jwks: {{ refresh_min: 30s }}
membership:
  file: memberships.yaml
{membership_extra}
policy:
{POLICY_RULES}
"#,
            iss = jwks.issuer(),
            uri = jwks.jwks_uri(),
        ),
    )
    .unwrap();
    std::fs::write(dir.join("memberships.yaml"), MEMBERS).unwrap();
    cfg
}

struct Fixture {
    server: InProcess,
    key: citadel_authz::core::signer::SigningKey,
    jwks: JwksServer,
    dir: tempfile::TempDir,
}

impl Fixture {
    async fn start(membership_extra: &str) -> Fixture {
        let key = key(Algorithm::ES256, "k1");
        let jwks = JwksServer::start(&[&key]).await;
        let dir = tempfile::tempdir().unwrap();
        let cfg = write_config(dir.path(), &jwks, membership_extra);
        let server = InProcess::start_file(&cfg).await;
        server.wait_ready().await;
        Fixture {
            server,
            key,
            jwks,
            dir,
        }
    }

    fn token(&self, sub: &str, tenant: &str, roles: &[&str]) -> String {
        self.key
            .mint(&claims(&self.jwks.issuer(), sub, tenant, roles))
    }

    fn alice(&self) -> String {
        self.token("alice", "acme", &["member"])
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_roles_and_tenants_join_the_token_over_grpc() {
    let f = Fixture::start("").await;
    let alice = f.alice();

    // Her own tenant: the token's role, then the store's roles for acme and `*`.
    let r = f.server.check_token("/api/tenants/acme/x", &alice).await;
    assert_eq!(status_of(&r), 200, "{r:?}");
    assert_eq!(header_of(&r, "x-tenant-id").as_deref(), Some("acme"));
    assert_eq!(
        header_of(&r, "x-user-roles").as_deref(),
        Some("member,support")
    );

    // globex: the token says acme, the store lists her there: allowed, the tenant header is the
    // path tenant, and her roles there include the store's admin.
    let r = f.server.check_token("/api/tenants/globex/x", &alice).await;
    assert_eq!(status_of(&r), 200, "{r:?}");
    assert_eq!(header_of(&r, "x-tenant-id").as_deref(), Some("globex"));
    assert_eq!(header_of(&r, "x-user-id").as_deref(), Some("alice"));
    assert_eq!(
        header_of(&r, "x-user-roles").as_deref(),
        Some("member,admin,support")
    );
    let r = f.server.check_token("/api/admin/globex/x", &alice).await;
    assert_eq!(status_of(&r), 200, "admin in globex from the store: {r:?}");

    // `*` makes her a member of every tenant, with its roles only: support, not admin.
    let r = f.server.check_token("/api/tenants/initech/x", &alice).await;
    assert_eq!(status_of(&r), 200, "{r:?}");
    assert_eq!(header_of(&r, "x-tenant-id").as_deref(), Some("initech"));
    let r = f.server.check_token("/api/admin/initech/x", &alice).await;
    assert_eq!(status_of(&r), 403, "{r:?}");
    assert_eq!(body_of(&r)["error"], "insufficient_scope");
    // Without tenant_param: the token's tenant (acme) and the `*` roles.
    let r = f.server.check_token("/api/support/tickets", &alice).await;
    assert_eq!(status_of(&r), 200, "{r:?}");
    assert_eq!(header_of(&r, "x-tenant-id").as_deref(), Some("acme"));

    // A user the store does not know keeps exactly the token's identity.
    let bob = f.token("bob", "acme", &["member"]);
    let r = f.server.check_token("/api/tenants/globex/x", &bob).await;
    assert_eq!(status_of(&r), 403, "{r:?}");
    assert_eq!(body_of(&r)["error"], "forbidden");
    let r = f.server.check_token("/api/tenants/acme/x", &bob).await;
    assert_eq!(header_of(&r, "x-user-roles").as_deref(), Some("member"));
    assert_eq!(
        status_of(&f.server.check_token("/api/support/x", &bob).await),
        403
    );

    // An entry limited to issuer `partner` does not apply to `iam` tokens.
    let carol = f.token("carol", "acme", &["member"]);
    let r = f.server.check_token("/api/tenants/initech/x", &carol).await;
    assert_eq!(status_of(&r), 403, "{r:?}");

    let metrics = f.server.metrics().await;
    assert!(
        sample(
            &metrics,
            "citadel_authz_membership_lookups_total",
            &[r#"source="file""#, r#"outcome="hit""#]
        ) >= 9.0,
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            "citadel_authz_membership_store_available",
            &[r#"source="file""#]
        ),
        1.0
    );
    f.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_issuers_limits_lookups() {
    let f = Fixture::start("  issuers: [partner]").await;
    let alice = f.alice();
    let r = f.server.check_token("/api/tenants/globex/x", &alice).await;
    assert_eq!(status_of(&r), 403, "iam is not looked up: {r:?}");
    let r = f.server.check_token("/api/tenants/acme/x", &alice).await;
    assert_eq!(header_of(&r, "x-user-roles").as_deref(), Some("member"));
    assert_eq!(
        sample(
            &f.server.metrics().await,
            "citadel_authz_membership_lookups_total",
            &[]
        ),
        0.0
    );
    f.server.stop().await;
}

/// Forward-auth gets the same decision and headers (nginx/Caddy copy them from this answer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_membership_through_forward_auth() {
    let f = Fixture::start("").await;
    let client = reqwest::Client::new();
    let ask = |path: &'static str, token: String| {
        client
            .get(format!("http://{}/api/iam/check-access", f.server.http))
            .header("x-forwarded-method", "GET")
            .header("x-forwarded-uri", path)
            .header("authorization", format!("Bearer {token}"))
            .send()
    };
    let r = ask("/api/tenants/globex/orders", f.alice()).await.unwrap();
    assert_eq!(r.status(), 200);
    let h = |name: &str| {
        r.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    assert_eq!(h("x-tenant-id").as_deref(), Some("globex"));
    assert_eq!(h("x-user-roles").as_deref(), Some("member,admin,support"));
    let bob = f.token("bob", "acme", &["member"]);
    let r = ask("/api/tenants/globex/orders", bob).await.unwrap();
    assert_eq!(r.status(), 403);
    f.server.stop().await;
}

/// A new memberships file applies within seconds (a revoked membership included, even for a token
/// the verified-token cache holds); an invalid one is refused whole, counted, the last good kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_reload_applies_good_versions_and_refuses_bad_ones_whole() {
    let f = Fixture::start("").await;
    let alice = f.alice();
    let path = f.dir.path().join("memberships.yaml");
    assert_eq!(
        status_of(&f.server.check_token("/api/tenants/globex/x", &alice).await),
        200
    );

    // Revoked: alice leaves globex (and loses `*`).
    std::fs::write(
        &path,
        "members:\n  - subject: alice\n    tenants:\n      umbrella: [admin]\n",
    )
    .unwrap();
    f.server
        .wait_status("/api/tenants/globex/x", &alice, 403)
        .await;
    assert_eq!(
        status_of(&f.server.check_token("/api/admin/umbrella/x", &alice).await),
        200
    );

    // Invalid: a role with a comma would read as two roles upstream. Refused whole.
    std::fs::write(
        &path,
        "members:\n  - subject: alice\n    tenants:\n      globex: [\"admin,root\"]\n",
    )
    .unwrap();
    let s = &f.server;
    eventually(Duration::from_secs(10), "failed reload counted", || async {
        (sample(
            &s.metrics().await,
            "citadel_authz_config_reloads_total",
            &[r#"outcome="error""#],
        ) >= 1.0)
            .then_some(())
    })
    .await;
    assert_eq!(
        status_of(&f.server.check_token("/api/tenants/globex/x", &alice).await),
        403,
        "the last good version stays"
    );
    assert_eq!(
        status_of(&f.server.check_token("/api/admin/umbrella/x", &alice).await),
        200
    );
    f.server.wait_ready().await;
    f.server.stop().await;
}

#[test]
fn check_config_names_the_field_of_a_bad_memberships_file() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("citadel-authz.yaml");
    std::fs::write(
        &cfg,
        "issuers:\n  - name: iam\n    issuer: https://iam.example.com\n    jwks_uri: https://iam.example.com/jwks\n    audiences: [api]\nmembership:\n  file: members.yaml\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("members.yaml"),
        "members:\n  - subject: alice\n    issuer: nobody\n    tenants:\n      acme: [\"a b\"]\n  - tenants: {}\n",
    )
    .unwrap();
    let out = std::process::Command::new(authz_bin())
        .args(["check-config", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    for want in [
        "members.yaml: members[0].issuer",
        "members.yaml: members[0].tenants.acme[0]",
        "members.yaml: members[1].subject",
    ] {
        assert!(text.contains(want), "{want} in {text}");
    }
}
