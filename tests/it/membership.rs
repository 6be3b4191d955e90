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

// ---------------------------------------------------------------------------------------------
// PostgreSQL, through the server (the store on its own: `membership_pg`).

use crate::envoy::{assert_denial, envoy_for, upstream_saw};
use crate::pg::{EXAMPLE_QUERY, EXAMPLE_SCHEMA, PgCluster};

/// A server for issuer `iam` whose memberships come from `pg` (`extra`: more `membership:` or
/// `membership.postgres:` lines, indented as given).
async fn pg_server(
    jwks: &JwksServer,
    pg: &PgCluster,
    postgres_extra: &str,
    extra: &str,
) -> InProcess {
    let yaml = format!(
        "{}membership:\n  postgres:\n    url: {url}\n    query: {EXAMPLE_QUERY}\n    connect_timeout: 500ms\n{postgres_extra}{extra}",
        config_yaml(jwks, "  refresh_min: 30s"),
        url = pg.url(),
    );
    InProcess::start(&yaml).await
}

async fn grant(pg: &PgCluster, sub: &str, tenant: &str, role: &str) {
    pg.exec(&format!(
        "INSERT INTO memberships VALUES ('iam', '{sub}', '{tenant}', '{role}')"
    ))
    .await;
}

/// Roles and tenants from PostgreSQL over gRPC, forward-auth and real Envoy; a revocation in the
/// database takes effect at once through NOTIFY although the token stays in the verified-token
/// cache (cache_ttl is an hour: only the notification can explain it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_memberships_through_every_adapter_and_notify_revokes_at_once() {
    let pg = PgCluster::start().await;
    pg.exec(EXAMPLE_SCHEMA).await;
    grant(&pg, "alice", "globex", "admin").await;
    let k = key(Algorithm::ES256, "k1");
    let jwks = JwksServer::start(&[&k]).await;
    let server = pg_server(
        &jwks,
        &pg,
        "    notify_channel: citadel_membership\n",
        "  cache_ttl: 1h\n",
    )
    .await;
    server.wait_ready().await;
    let alice = k.mint(&claims(&jwks.issuer(), "alice", "acme", &["member"]));

    let r = server.check_token("/api/tenants/globex/x", &alice).await;
    assert_eq!(status_of(&r), 200, "{r:?}");
    assert_eq!(header_of(&r, "x-tenant-id").as_deref(), Some("globex"));
    assert_eq!(
        header_of(&r, "x-user-roles").as_deref(),
        Some("member,admin")
    );

    let fa = reqwest::Client::new()
        .get(format!("http://{}/api/iam/check-access", server.http))
        .header("x-forwarded-method", "GET")
        .header("x-forwarded-uri", "/api/tenants/globex/x")
        .header("authorization", format!("Bearer {alice}"))
        .send()
        .await
        .unwrap();
    assert_eq!(fa.status(), 200);
    assert_eq!(fa.headers()["x-user-roles"], "member,admin");

    let (envoy, _upstream) = envoy_for(&server).await;
    let reply = envoy.get_with("/api/tenants/globex/reports", &alice).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(upstream_saw(&reply, "x-tenant-id"), ["globex"]);
    assert_eq!(upstream_saw(&reply, "x-user-roles"), ["member,admin"]);

    // Revoked in the database: the trigger's NOTIFY drops alice's entry.
    let revoked = std::time::Instant::now();
    pg.exec("DELETE FROM memberships WHERE subject = 'alice'")
        .await;
    server
        .wait_status("/api/tenants/globex/x", &alice, 403)
        .await;
    assert!(
        revoked.elapsed() < Duration::from_secs(5),
        "{:?}",
        revoked.elapsed()
    );
    let reply = envoy.get_with("/api/tenants/globex/reports", &alice).await;
    assert_denial(&reply, 403, None, "forbidden");
    // Granted again: seen at once too.
    grant(&pg, "alice", "globex", "member").await;
    server
        .wait_status("/api/tenants/globex/x", &alice, 200)
        .await;

    let metrics = server.metrics().await;
    for outcome in ["hit", "miss"] {
        assert!(
            sample(
                &metrics,
                "citadel_authz_membership_lookups_total",
                &[r#"source="postgres""#, &format!("outcome=\"{outcome}\"")]
            ) >= 1.0,
            "{outcome}: {metrics}"
        );
    }
    assert_eq!(
        sample(
            &metrics,
            "citadel_authz_membership_store_available",
            &[r#"source="postgres""#]
        ),
        1.0
    );
    server.stop().await;
}

/// Without a notification channel, a change is seen within cache_ttl.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_notify_a_change_is_seen_within_cache_ttl() {
    let pg = PgCluster::start().await;
    pg.exec(EXAMPLE_SCHEMA).await;
    let k = key(Algorithm::ES256, "k1");
    let jwks = JwksServer::start(&[&k]).await;
    let server = pg_server(&jwks, &pg, "", "  cache_ttl: 1s\n").await;
    server.wait_ready().await;
    let alice = k.mint(&claims(&jwks.issuer(), "alice", "acme", &["member"]));
    assert_eq!(
        status_of(&server.check_token("/api/tenants/globex/x", &alice).await),
        403
    );
    // The "no memberships" answer is cached too: still 403 right after the grant…
    grant(&pg, "alice", "globex", "member").await;
    let granted = std::time::Instant::now();
    assert_eq!(
        status_of(&server.check_token("/api/tenants/globex/x", &alice).await),
        403,
        "the negative answer is reused within cache_ttl"
    );
    // …and the grant is seen once it has expired.
    server
        .wait_status("/api/tenants/globex/x", &alice, 200)
        .await;
    assert!(
        granted.elapsed() >= Duration::from_millis(500),
        "{:?}",
        granted.elapsed()
    );
    assert!(
        granted.elapsed() < Duration::from_secs(4),
        "{:?}",
        granted.elapsed()
    );
    server.stop().await;
}

/// The database stops mid-run: a cached user keeps working (stale, within max_stale), an uncached
/// one gets 503 temporarily_unavailable with Retry-After — through Envoy too — and never an allow
/// or a 403; when the database is back, lookups recover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_down_cached_users_keep_working_uncached_get_503() {
    let pg = PgCluster::start().await;
    pg.exec(EXAMPLE_SCHEMA).await;
    grant(&pg, "alice", "globex", "admin").await;
    grant(&pg, "bob", "globex", "member").await;
    let k = key(Algorithm::ES256, "k1");
    let jwks = JwksServer::start(&[&k]).await;
    let server = pg_server(&jwks, &pg, "", "  cache_ttl: 1s\n  max_stale: 5m\n").await;
    server.wait_ready().await;
    let (envoy, _upstream) = envoy_for(&server).await;
    let alice = k.mint(&claims(&jwks.issuer(), "alice", "acme", &["member"]));
    let bob = k.mint(&claims(&jwks.issuer(), "bob", "acme", &["member"]));
    assert_eq!(
        status_of(&server.check_token("/api/tenants/globex/x", &alice).await),
        200
    );

    pg.stop();
    tokio::time::sleep(Duration::from_millis(1200)).await; // past cache_ttl
    let r = server.check_token("/api/tenants/globex/x", &alice).await;
    assert_eq!(status_of(&r), 200, "stale within max_stale: {r:?}");
    assert_eq!(
        header_of(&r, "x-user-roles").as_deref(),
        Some("member,admin")
    );
    let started = std::time::Instant::now();
    let r = server.check_token("/api/tenants/globex/x", &bob).await;
    assert_eq!(status_of(&r), 503, "{r:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "bounded: {:?}",
        started.elapsed()
    );
    assert_eq!(body_of(&r)["error"], "temporarily_unavailable");
    assert!(header_of(&r, "retry-after").is_some(), "{r:?}");
    // A route that needs no lookup (bob's own tenant needs one too: every non-public rule
    // looks up), and a public one, are unaffected.
    let reply = envoy.get("/healthz", &[]).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let reply = envoy.get_with("/api/tenants/globex/reports", &bob).await;
    assert_eq!(reply.status, 503, "{reply:?}");
    assert!(reply.header("retry-after").is_some(), "{reply:?}");
    assert!(!reply.reached_upstream());
    let metrics = server.metrics().await;
    assert_eq!(
        sample(
            &metrics,
            "citadel_authz_membership_store_available",
            &[r#"source="postgres""#]
        ),
        0.0,
        "{metrics}"
    );
    for outcome in ["stale", "error"] {
        assert!(
            sample(
                &metrics,
                "citadel_authz_membership_lookups_total",
                &[&format!("outcome=\"{outcome}\"")]
            ) >= 1.0,
            "{outcome}: {metrics}"
        );
    }
    // Stale answers keep the server ready: the database answered once.
    server.wait_ready().await;

    pg.start_again();
    server.wait_status("/api/tenants/globex/x", &bob, 200).await;
    server.stop().await;
}

/// Cold start with the database down: not ready (and 503 for checks) until the store has
/// answered once, then ready without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_start_with_the_database_down_is_not_ready_until_it_answers() {
    let pg = PgCluster::start().await;
    pg.exec(EXAMPLE_SCHEMA).await;
    grant(&pg, "alice", "globex", "admin").await;
    pg.stop();
    let k = key(Algorithm::ES256, "k1");
    let jwks = JwksServer::start(&[&k]).await;
    let server = pg_server(&jwks, &pg, "", "").await;
    let alice = k.mint(&claims(&jwks.issuer(), "alice", "acme", &["member"]));
    let readyz = format!("http://{}/readyz", server.http);
    // Keys load quickly; readiness waits for the store.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = reqwest::get(&readyz).await.unwrap();
    assert_eq!(r.status(), 503);
    let body: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert!(
        body["reason"]
            .as_str()
            .unwrap()
            .contains("membership store"),
        "{body}"
    );
    assert_eq!(
        status_of(&server.check_token("/api/tenants/globex/x", &alice).await),
        503
    );
    // gRPC health (what Envoy's health checks and Kubernetes gRPC probes ask) says the same.
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let health = HealthClient::new(channel);
    let serving = || {
        let mut h = health.clone();
        async move {
            h.check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map(|r| r.into_inner().status)
            .unwrap_or(-1)
        }
    };
    assert_eq!(serving().await, ServingStatus::NotServing as i32);
    pg.start_again();
    server.wait_ready().await;
    eventually(Duration::from_secs(5), "gRPC health SERVING", || async {
        (serving().await == ServingStatus::Serving as i32).then_some(())
    })
    .await;
    assert_eq!(
        status_of(&server.check_token("/api/tenants/globex/x", &alice).await),
        200
    );
    server.stop().await;
}

/// `check-config --online --config CFG` with the database URL in `CITADEL_TEST_DATABASE_URL`:
/// exit code and everything printed.
fn check_config_online(cfg: &Path, url: &str) -> (Option<i32>, String) {
    let out = std::process::Command::new(authz_bin())
        .args(["check-config", "--online", "--config"])
        .arg(cfg)
        .env("CITADEL_TEST_DATABASE_URL", url)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), text)
}

/// A query that does not prepare keeps the server not ready, and `check-config --online` says
/// why — without the database password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_that_does_not_prepare_keeps_the_server_not_ready_and_check_config_says_why() {
    let pg = PgCluster::start().await;
    pg.exec(EXAMPLE_SCHEMA).await;
    let k = key(Algorithm::ES256, "k1");
    let jwks = JwksServer::start(&[&k]).await;
    let bad_query = "SELECT tenant, role FROM no_such_table WHERE issuer = $1 AND subject = $2";
    let with_url = |url_line: &str, query: &str| {
        format!(
            "{}membership:\n  postgres:\n    {url_line}\n    query: {query}\n",
            config_yaml(&jwks, "  refresh_min: 30s"),
        )
    };
    let server = InProcess::start(&with_url(&format!("url: {}", pg.url()), bad_query)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = reqwest::get(format!("http://{}/readyz", server.http))
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    server.stop().await;

    let yaml = with_url("url_env: CITADEL_TEST_DATABASE_URL", bad_query);
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("citadel-authz.yaml");
    std::fs::write(&cfg, &yaml).unwrap();
    let (code, text) = check_config_online(&cfg, &pg.url());
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("membership.postgres"), "{text}");
    assert!(text.contains("no_such_table"), "{text}");
    assert!(!text.contains(&pg.password), "{text}");

    // The example query prepares: the store is reported with its columns.
    let good = yaml.replace(bad_query, EXAMPLE_QUERY);
    std::fs::write(&cfg, good).unwrap();
    let (code, text) = check_config_online(&cfg, &pg.url());
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains(
            "membership.postgres (membership.postgres.url_env (CITADEL_TEST_DATABASE_URL))"
        ),
        "{text}"
    );
    assert!(!text.contains(&pg.password), "{text}");
}
