//! The PostgreSQL membership store (SPEC §8) against a real, private PostgreSQL cluster, through
//! the library's `Membership` API: rows from the database, NOTIFY invalidation, ttl without
//! NOTIFY, an outage mid-run (stale within max_stale, unavailable without an entry, recovery), a
//! cold start with the database down, queries that do not prepare, a storm of distinct users
//! against `pool_size`, single flight, and no password in any error text.

use std::sync::Arc;
use std::time::{Duration, Instant};

use citadel_authz::core::config::{MembershipConfig, MembershipSource, PostgresConfig, Secret};
use citadel_authz::sources::membership::{self, Lookup, Membership, Outcome};
use tokio::sync::watch;

use crate::pg::{EXAMPLE_QUERY, EXAMPLE_SCHEMA, PgCluster};
use crate::support::eventually;

/// Memberships in insertion order; every lookup is logged in `lookup_log` (to count queries) and
/// may pause (to make a lookup slow enough to overlap others).
const SCHEMA: &str = r#"
CREATE TABLE memberships (ord serial, issuer text NOT NULL, subject text NOT NULL, tenant text, role text);
CREATE TABLE lookup_log (subject text NOT NULL);
CREATE FUNCTION logged_lookup(i text, s text, pause float8)
  RETURNS TABLE(tenant text, role text) LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO lookup_log VALUES (s);
  PERFORM pg_sleep(pause);
  RETURN QUERY SELECT m.tenant, m.role FROM memberships m WHERE m.issuer = i AND m.subject = s ORDER BY m.ord;
END $$;
"#;

const QUERY: &str = "SELECT tenant, role FROM logged_lookup($1, $2, 0)";
const CHANNEL: &str = "citadel_membership";
const WAIT: Duration = Duration::from_secs(20);

async fn cluster() -> PgCluster {
    let pg = PgCluster::start().await;
    pg.exec(SCHEMA).await;
    pg
}

fn pg_config(url: &str) -> PostgresConfig {
    PostgresConfig {
        url: Secret::new(url),
        url_source: "membership.postgres.url".to_owned(),
        query: QUERY.to_owned(),
        notify_channel: None,
        pool_size: 2,
        connect_timeout: Duration::from_secs(2),
        ca_file: None,
    }
}

fn settings(pg: PostgresConfig) -> MembershipConfig {
    MembershipConfig {
        source: MembershipSource::Postgres(pg),
        issuers: vec![],
        cache_ttl: Duration::from_secs(3600),
        max_stale: Duration::from_secs(300),
        capacity: 1000,
    }
}

/// A running store and the sender of its stop signal (kept alive for the test).
struct Store {
    m: Arc<Membership>,
    _stop: watch::Sender<bool>,
}

fn start(config: &MembershipConfig) -> Store {
    let (tx, rx) = watch::channel(false);
    Store {
        m: Arc::new(Membership::new(config, None, rx)),
        _stop: tx,
    }
}

impl Store {
    async fn ready(&self) {
        let m = &self.m;
        eventually(WAIT, "membership store ready", || async {
            m.is_ready().then_some(())
        })
        .await;
    }

    async fn lookup(&self, user: &str) -> Lookup {
        self.m.lookup("iam", user).await.unwrap()
    }
}

fn pairs(l: &Lookup) -> Vec<(String, Option<String>)> {
    l.memberships
        .rows
        .iter()
        .map(|r| (r.tenant.to_string(), r.role.as_deref().map(str::to_owned)))
        .collect()
}

fn row(tenant: &str, role: Option<&str>) -> (String, Option<String>) {
    (tenant.to_owned(), role.map(str::to_owned))
}

async fn logged(pg: &PgCluster, user: &str) -> i64 {
    pg.scalar(&format!(
        "SELECT count(*) FROM lookup_log WHERE subject = '{user}'"
    ))
    .await
}

/// Until the store's LISTEN connection has run its LISTEN.
async fn listening(pg: &PgCluster) {
    eventually(WAIT, "the store's LISTEN", || async {
        let n = pg
            .scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'citadel-authz-listen' \
                 AND state = 'idle' AND query LIKE 'LISTEN%'",
            )
            .await;
        (n == 1).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_and_tenants_come_from_the_database_and_bad_rows_are_skipped() {
    let pg = cluster().await;
    pg.exec(
        "INSERT INTO memberships (issuer, subject, tenant, role) VALUES
           ('iam', 'alice', 'acme', 'admin'),
           ('iam', 'alice', NULL, 'admin'),
           ('iam', 'alice', 'acme', 'member'),
           ('iam', 'alice', 'bad,tenant', 'admin'),
           ('iam', 'alice', 'globex', NULL),
           ('iam', 'alice', 'acme', 'bad role'),
           ('iam', 'alice', '*', 'support'),
           ('other', 'alice', 'initech', 'admin');",
    )
    .await;
    let store = start(&settings(pg_config(&pg.url())));
    store.ready().await;
    assert!(store.m.is_available());

    let first = store.lookup("alice").await;
    assert_eq!(first.outcome, Outcome::Miss);
    assert_eq!(
        pairs(&first),
        vec![
            row("acme", Some("admin")),
            row("acme", Some("member")),
            row("globex", None),
            row("*", Some("support")),
        ]
    );
    assert_eq!(store.lookup("alice").await.outcome, Outcome::Hit);
    // The issuer is part of the key and of the query.
    let other = store.m.lookup("other", "alice").await.unwrap();
    assert_eq!(pairs(&other), vec![row("initech", Some("admin"))]);

    // A user the store does not know: no memberships, not an error, and cached too.
    let nobody = store.lookup("nobody").await;
    assert!(nobody.memberships.rows.is_empty());
    assert_eq!(nobody.outcome, Outcome::Miss);
    assert_eq!(store.lookup("nobody").await.outcome, Outcome::Hit);
    assert_eq!(logged(&pg, "nobody").await, 1);
    assert_eq!(logged(&pg, "alice").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_drops_one_user_then_every_user() {
    let pg = cluster().await;
    pg.exec(
        "INSERT INTO memberships (issuer, subject, tenant, role) VALUES
           ('iam', 'alice', 'acme', 'admin'), ('iam', 'bob', 'acme', 'admin');",
    )
    .await;
    let mut config = pg_config(&pg.url());
    config.notify_channel = Some(CHANNEL.to_owned());
    let store = start(&settings(config));
    store.ready().await;
    listening(&pg).await;
    // Establishing the LISTEN drops everything once; from here on entries stay.
    eventually(WAIT, "alice and bob cached", || async {
        store.lookup("alice").await;
        store.lookup("bob").await;
        let hits = [store.lookup("alice").await, store.lookup("bob").await];
        hits.iter().all(|l| l.outcome == Outcome::Hit).then_some(())
    })
    .await;

    pg.exec("UPDATE memberships SET role = 'viewer'").await;
    // Cached (ttl 1 h): the change is not seen without a notification.
    let cached = store.lookup("alice").await;
    assert_eq!(
        (cached.outcome, pairs(&cached)),
        (Outcome::Hit, vec![row("acme", Some("admin"))])
    );

    pg.exec(&format!("NOTIFY {CHANNEL}, 'iam alice'")).await;
    eventually(WAIT, "alice's entry dropped by NOTIFY", || async {
        (pairs(&store.lookup("alice").await) == vec![row("acme", Some("viewer"))]).then_some(())
    })
    .await;
    let bob = store.lookup("bob").await;
    assert_eq!(
        (bob.outcome, pairs(&bob)),
        (Outcome::Hit, vec![row("acme", Some("admin"))]),
        "a NOTIFY for alice must leave bob's entry"
    );

    pg.exec(&format!("SELECT pg_notify('{CHANNEL}', '')")).await;
    eventually(WAIT, "every entry dropped by an empty NOTIFY", || async {
        (pairs(&store.lookup("bob").await) == vec![row("acme", Some("viewer"))]).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_is_seen_within_cache_ttl_without_notify() {
    let pg = cluster().await;
    pg.exec("INSERT INTO memberships (issuer, subject, tenant, role) VALUES ('iam', 'alice', 'acme', 'admin')")
        .await;
    let mut config = settings(pg_config(&pg.url()));
    config.cache_ttl = Duration::from_secs(1);
    let store = start(&config);
    store.ready().await;
    let fetched = Instant::now();
    assert_eq!(store.lookup("alice").await.outcome, Outcome::Miss);
    pg.exec("UPDATE memberships SET role = 'viewer'").await;
    let cached = store.lookup("alice").await;
    if fetched.elapsed() < Duration::from_millis(900) {
        assert_eq!(pairs(&cached), vec![row("acme", Some("admin"))]);
    }
    eventually(WAIT, "the change after cache_ttl", || async {
        (pairs(&store.lookup("alice").await) == vec![row("acme", Some("viewer"))]).then_some(())
    })
    .await;
    assert!(
        fetched.elapsed() < Duration::from_millis(2500),
        "seen only after {:?} with cache_ttl 1s",
        fetched.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_down_mid_run_stale_within_max_stale_then_unavailable_then_recovers() {
    let pg = cluster().await;
    pg.exec("INSERT INTO memberships (issuer, subject, tenant, role) VALUES ('iam', 'alice', 'acme', 'admin'), ('iam', 'carol', 'acme', 'member')")
        .await;
    let mut pgc = pg_config(&pg.url());
    pgc.connect_timeout = Duration::from_secs(1);
    let mut config = settings(pgc);
    config.cache_ttl = Duration::from_millis(300);
    config.max_stale = Duration::from_secs(3);
    let store = start(&config);
    store.ready().await;
    store.lookup("alice").await;

    pg.stop();
    let m = &store.m;
    eventually(WAIT, "store unavailable", || async {
        (!m.is_available()).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(350)).await;

    // Cached, past ttl, within max_stale: used, as Stale.
    let stale = store.lookup("alice").await;
    assert_eq!(
        (stale.outcome, pairs(&stale)),
        (Outcome::Stale, vec![row("acme", Some("admin"))])
    );
    // Not cached: unavailable, quickly.
    let t = Instant::now();
    let err = store.m.lookup("iam", "carol").await.unwrap_err();
    assert!(
        t.elapsed() < Duration::from_millis(1200),
        "took {:?}",
        t.elapsed()
    );
    assert_eq!(err.retry_after_secs, 1);
    assert!(err.reason.contains("not connected"), "{}", err.reason);
    assert!(!err.reason.contains(&pg.password), "{}", err.reason);

    // Past max_stale: unavailable for alice too.
    eventually(WAIT, "alice's entry past max_stale", || async {
        m.lookup("iam", "alice").await.is_err().then_some(())
    })
    .await;

    pg.start_again();
    eventually(WAIT, "lookups recover", || async {
        let a = m.lookup("iam", "alice").await.ok()?;
        let c = m.lookup("iam", "carol").await.ok()?;
        Some((pairs(&a), pairs(&c)))
    })
    .await;
    assert!(store.m.is_available());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_start_with_the_database_down_is_not_ready_until_it_comes_up() {
    let pg = cluster().await;
    pg.exec("INSERT INTO memberships (issuer, subject, tenant, role) VALUES ('iam', 'alice', 'acme', 'admin')")
        .await;
    pg.stop();
    let store = start(&settings(pg_config(&pg.url())));
    let t = Instant::now();
    let err = store.m.lookup("iam", "alice").await.unwrap_err();
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "took {:?}",
        t.elapsed()
    );
    assert_eq!(err.retry_after_secs, 1);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!store.m.is_ready());
    assert!(!store.m.is_available());

    pg.start_again();
    store.ready().await;
    let l = store.lookup("alice").await;
    assert_eq!(pairs(&l), vec![row("acme", Some("admin"))]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_that_does_not_prepare_keeps_the_store_not_ready_and_probe_says_why() {
    let pg = cluster().await;
    let cases = [
        (
            "SELECT tenant FROM memberships WHERE issuer = $1 AND subject = $2",
            "returns 1 columns",
        ),
        (
            "SELECT tenant, role FROM no_such_table WHERE issuer = $1 AND subject = $2",
            "does not exist",
        ),
        (
            "SELECT tenant, role FROM memberships WHERE issuer = $1 AND subject = $2 AND ord = $3",
            "takes 3 parameters",
        ),
        (
            "SELECT tenant, ord FROM memberships WHERE issuer = $1 AND subject = $2",
            "must be text",
        ),
        ("SELEC tenant, role", "syntax error"),
    ];
    for (query, want) in cases {
        let mut config = pg_config(&pg.url());
        config.query = query.to_owned();
        let err = membership::probe(&config).await.unwrap_err();
        assert!(err.contains(want), "{query}: {err}");
        assert!(!err.contains(&pg.password), "{err}");
    }
    let good = pg_config(&pg.url());
    let report = membership::probe(&good).await.unwrap();
    assert!(report.contains("tenant text, role text"), "{report}");
    let mut listen = pg_config(&pg.url());
    listen.notify_channel = Some(CHANNEL.to_owned());
    assert!(membership::probe(&listen).await.unwrap().contains("LISTEN"));

    let mut bad = pg_config(&pg.url());
    bad.query = cases[0].0.to_owned();
    let bad = start(&settings(bad));
    let good = start(&settings(good));
    good.ready().await;
    // The good store on the same database got ready; the bad one had as long and more.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!bad.m.is_ready());
    assert!(!bad.m.is_available());
    let err = bad.m.lookup("iam", "alice").await.unwrap_err();
    assert!(err.reason.contains("returns 1 columns"), "{}", err.reason);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_distinct_users_never_opens_more_than_pool_size_connections() {
    const USERS: usize = 10_000;
    let pg = Arc::new(cluster().await);
    let mut config = pg_config(&pg.url());
    config.pool_size = 3;
    config.connect_timeout = Duration::from_secs(30);
    let store = start(&settings(config));
    store.ready().await;

    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (pg, done) = (Arc::clone(&pg), Arc::clone(&done));
        tokio::spawn(async move {
            let mut max = 0;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                max = max.max(pg.connections("citadel-authz").await);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            max
        })
    };
    let lookups: Vec<_> = (0..USERS)
        .map(|i| {
            let m = Arc::clone(&store.m);
            tokio::spawn(async move { m.lookup("iam", &format!("user{i}")).await })
        })
        .collect();
    for l in lookups {
        assert_eq!(l.await.unwrap().unwrap().outcome, Outcome::Miss);
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let max = sampler.await.unwrap();
    assert!((1..=3).contains(&max), "{max} connections for pool_size 3");
    assert_eq!(
        pg.scalar("SELECT count(*) FROM lookup_log").await,
        USERS as i64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_lookups_of_one_user_make_one_query_even_when_the_first_caller_gives_up() {
    let pg = cluster().await;
    pg.exec("INSERT INTO memberships (issuer, subject, tenant, role) VALUES ('iam', 'alice', 'acme', 'admin'), ('iam', 'bob', 'acme', 'admin')")
        .await;
    let mut config = pg_config(&pg.url());
    config.query = "SELECT tenant, role FROM logged_lookup($1, $2, 0.3)".to_owned();
    let store = start(&settings(config));
    store.ready().await;

    let lookups: Vec<_> = (0..50)
        .map(|_| {
            let m = Arc::clone(&store.m);
            tokio::spawn(async move { m.lookup("iam", "alice").await })
        })
        .collect();
    for l in lookups {
        let l = l.await.unwrap().unwrap();
        assert_eq!(pairs(&l), vec![row("acme", Some("admin"))]);
    }
    assert_eq!(logged(&pg, "alice").await, 1);

    // The caller that started bob's lookup is cancelled; the others still get the answer.
    let first = tokio::time::timeout(Duration::from_millis(20), store.m.lookup("iam", "bob")).await;
    assert!(first.is_err());
    let lookups: Vec<_> = (0..10)
        .map(|_| {
            let m = Arc::clone(&store.m);
            tokio::spawn(async move { m.lookup("iam", "bob").await })
        })
        .collect();
    for l in lookups {
        let l = tokio::time::timeout(Duration::from_secs(5), l)
            .await
            .unwrap();
        assert_eq!(
            pairs(&l.unwrap().unwrap()),
            vec![row("acme", Some("admin"))]
        );
    }
    assert_eq!(logged(&pg, "bob").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_password_never_appears_in_error_texts() {
    let pg = cluster().await;
    let wrong = format!("Wrong-{}", pg.password);
    let bad_url = pg_config(&pg.url_with_password(&wrong));

    let err = membership::probe(&bad_url).await.unwrap_err();
    assert!(err.contains("password authentication failed"), "{err}");
    assert!(
        !err.contains(&wrong) && !err.contains(&pg.password),
        "{err}"
    );

    let store = start(&settings(bad_url));
    let reason = eventually(WAIT, "the authentication failure as the reason", || async {
        let e = store.m.lookup("iam", "alice").await.unwrap_err();
        e.reason
            .contains("password authentication failed")
            .then_some(e.reason)
    })
    .await;
    assert!(
        !reason.contains(&wrong) && !reason.contains(&pg.password),
        "{reason}"
    );
    assert!(!store.m.is_ready());

    // Database down: neither the store nor probe say the password.
    let good = start(&settings(pg_config(&pg.url())));
    good.ready().await;
    pg.stop();
    let m = &good.m;
    let reason = eventually(WAIT, "unavailable", || async {
        m.lookup("iam", "carol").await.err().map(|e| e.reason)
    })
    .await;
    assert!(!reason.contains(&pg.password), "{reason}");
    let err = membership::probe(&pg_config(&pg.url())).await.unwrap_err();
    assert!(err.contains("cannot connect"), "{err}");
    assert!(!err.contains(&pg.password), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reestablished_listen_asks_again_for_every_entry() {
    let pg = cluster().await;
    pg.exec("INSERT INTO memberships (issuer, subject, tenant, role) VALUES ('iam', 'alice', 'acme', 'admin')")
        .await;
    let mut config = pg_config(&pg.url());
    config.notify_channel = Some(CHANNEL.to_owned());
    let store = start(&settings(config));
    store.ready().await;
    listening(&pg).await;
    eventually(WAIT, "alice cached", || async {
        store.lookup("alice").await;
        (store.lookup("alice").await.outcome == Outcome::Hit).then_some(())
    })
    .await;

    // An outage: notifications sent meanwhile would be lost, so the entry (ttl 1 h) is asked for
    // again (and, until the store answers, would serve as stale: see the cache unit tests).
    pg.stop();
    pg.start_again();
    listening(&pg).await;
    eventually(
        WAIT,
        "alice asked again after the LISTEN came back",
        || async {
            let l = store.m.lookup("iam", "alice").await.ok()?;
            (l.outcome == Outcome::Miss).then_some(())
        },
    )
    .await;
}

/// A ready store with `pool_size` 1 whose lookup of the user `slow` takes `pause_secs`.
async fn one_connection_with_a_slow_user(
    pg: &PgCluster,
    pause_secs: u32,
    connect_timeout: Duration,
) -> Store {
    let mut config = pg_config(&pg.url());
    config.pool_size = 1;
    config.connect_timeout = connect_timeout;
    config.query = format!(
        "SELECT tenant, role FROM logged_lookup($1, $2, CASE WHEN $2 = 'slow' THEN {pause_secs} ELSE 0 END)"
    );
    let store = start(&settings(config));
    store.ready().await;
    store
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_slower_than_connect_timeout_is_cut_and_its_connection_replaced() {
    let pg = cluster().await;
    let store = one_connection_with_a_slow_user(&pg, 5, Duration::from_millis(500)).await;
    let t = Instant::now();
    let err = store.m.lookup("iam", "slow").await.unwrap_err();
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "took {:?}",
        t.elapsed()
    );
    assert!(err.reason.contains("did not answer"), "{}", err.reason);
    // The one connection was closed and a new one opened: lookups work again.
    let m = &store.m;
    eventually(WAIT, "a fresh connection", || async {
        m.lookup("iam", "quick").await.ok()
    })
    .await;
}

/// Callers queued for the one connection while it is lent learn at once that the store went
/// down with it, instead of waiting out `connect_timeout` for a connection that will not come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_waiting_for_a_connection_learn_at_once_when_the_last_one_dies() {
    let pg = cluster().await;
    let store = one_connection_with_a_slow_user(&pg, 60, Duration::from_secs(15)).await;

    let lookup = |user: &'static str| {
        let m = Arc::clone(&store.m);
        tokio::spawn(async move {
            let t = Instant::now();
            (m.lookup("iam", user).await.map(|_| ()), t.elapsed())
        })
    };
    // The one connection is lent to a query that will not finish before the database stops.
    let slow = lookup("slow");
    eventually(WAIT, "the slow query running", || async {
        let n = pg
            .scalar("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep'")
            .await;
        (n == 1).then_some(())
    })
    .await;
    let waiters: Vec<_> = ["w1", "w2", "w3"].into_iter().map(lookup).collect();
    // Let them queue for the connection.
    tokio::time::sleep(Duration::from_millis(300)).await;

    pg.stop();
    let (r, _) = slow.await.unwrap();
    assert!(r.is_err(), "the lookup on the dying connection failed");
    for w in waiters {
        let (r, took) = w.await.unwrap();
        let err = r.unwrap_err();
        assert!(err.reason.contains("not connected"), "{}", err.reason);
        assert!(took < Duration::from_secs(10), "waited {took:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_schema_triggers_invalidate_on_insert_update_delete_and_truncate() {
    let pg = PgCluster::start().await;
    pg.exec(EXAMPLE_SCHEMA).await;
    pg.exec("INSERT INTO memberships VALUES ('iam', 'alice', 'acme', 'admin'), ('iam', 'bob', 'globex', NULL)")
        .await;
    let mut config = pg_config(&pg.url());
    config.query = EXAMPLE_QUERY.to_owned();
    config.notify_channel = Some(CHANNEL.to_owned());
    assert!(membership::probe(&config).await.is_ok());
    let store = start(&settings(config));
    store.ready().await;
    listening(&pg).await;
    eventually(WAIT, "alice and bob cached", || async {
        store.lookup("alice").await;
        store.lookup("bob").await;
        let hits = [store.lookup("alice").await, store.lookup("bob").await];
        hits.iter().all(|l| l.outcome == Outcome::Hit).then_some(())
    })
    .await;

    let seen = |user: &'static str, want: Vec<(String, Option<String>)>| {
        let store = &store;
        async move {
            eventually(WAIT, &format!("{user}: {want:?}"), || async {
                (pairs(&store.lookup(user).await) == want).then_some(())
            })
            .await;
        }
    };
    pg.exec("UPDATE memberships SET role = 'member' WHERE subject = 'alice'")
        .await;
    seen("alice", vec![row("acme", Some("member"))]).await;
    pg.exec("INSERT INTO memberships VALUES ('iam', 'alice', '*', 'support')")
        .await;
    seen(
        "alice",
        vec![row("*", Some("support")), row("acme", Some("member"))],
    )
    .await;
    pg.exec("DELETE FROM memberships WHERE subject = 'alice' AND tenant = 'acme'")
        .await;
    seen("alice", vec![row("*", Some("support"))]).await;
    assert_eq!(store.lookup("bob").await.outcome, Outcome::Hit);
    pg.exec("TRUNCATE memberships").await;
    seen("bob", vec![]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_that_fails_at_run_time_counts_as_the_store_not_answering() {
    let pg = cluster().await;
    pg.exec(
        "CREATE TABLE failing (subject text, zero int);
         INSERT INTO memberships (issuer, subject, tenant, role) VALUES ('iam', 'alice', 'acme', 'admin');",
    )
    .await;
    let mut config = pg_config(&pg.url());
    config.query = "SELECT tenant, role FROM logged_lookup($1, $2, 0) \
                    WHERE NOT EXISTS (SELECT 1 FROM failing f WHERE f.subject = $2 AND 1 / f.zero = 1)"
        .to_owned();
    let mut config = settings(config);
    config.cache_ttl = Duration::from_millis(200);
    let store = start(&config);
    store.ready().await;
    store.lookup("alice").await;
    pg.exec("INSERT INTO failing VALUES ('alice', 0), ('bob', 0)")
        .await;
    tokio::time::sleep(Duration::from_millis(250)).await;
    // Cached and within max_stale: the old answer, marked Stale.
    let l = store.lookup("alice").await;
    assert_eq!(
        (l.outcome, pairs(&l)),
        (Outcome::Stale, vec![row("acme", Some("admin"))])
    );
    // Not cached: unavailable, with the server's reason.
    let err = store.m.lookup("iam", "bob").await.unwrap_err();
    assert!(err.reason.contains("division by zero"), "{}", err.reason);
    assert!(!err.reason.contains(&pg.password), "{}", err.reason);
    // The connection survives a failed query.
    assert!(store.m.is_available());
    pg.exec("DELETE FROM failing").await;
    assert_eq!(store.lookup("alice").await.outcome, Outcome::Miss);
}

/// The store's own connection says whether it is encrypted: the query answers tenant `tls` or
/// `plain` from `pg_stat_ssl` for its backend.
const TLS_QUERY: &str = "SELECT CASE WHEN ssl THEN 'tls' ELSE 'plain' END AS tenant, NULL::text AS role \
                         FROM pg_stat_ssl WHERE pid = pg_backend_pid() AND $1 IS NOT NULL AND $2 IS NOT NULL";

/// `sslmode=require`: TLS, with the server certificate verified against the CAs in
/// `membership.postgres.ca_file` — a CA that did not sign it is refused (never plain text, never
/// the password in the reason); without `require`, plain text although the server offers TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmode_require_speaks_tls_and_verifies_the_server_certificate() {
    let (pg, ca) = PgCluster::start_tls().await;
    let (_other, other_ca) = PgCluster::start_tls().await;
    let require = format!("{}?sslmode=require", pg.url());
    let config = |url: &str, ca: &std::path::Path| {
        let mut config = pg_config(url);
        config.query = TLS_QUERY.to_owned();
        config.ca_file = Some(ca.to_owned());
        config
    };

    // Trusted CA: TLS.
    let report = membership::probe(&config(&require, &ca)).await.unwrap();
    assert!(report.contains("over TLS"), "{report}");
    let store = start(&settings(config(&require, &ca)));
    store.ready().await;
    assert_eq!(pairs(&store.lookup("alice").await), vec![row("tls", None)]);

    // Another CA: refused, with the certificate named as the reason.
    let untrusted = config(&require, &other_ca);
    let err = membership::probe(&untrusted).await.unwrap_err();
    assert!(err.contains("certificate"), "{err}");
    assert!(!err.contains(&pg.password), "{err}");
    let store = start(&settings(untrusted));
    let e = eventually(WAIT, "the TLS failure as the reason", || async {
        let e = store.m.lookup("iam", "alice").await.unwrap_err();
        e.reason.contains("certificate").then_some(e)
    })
    .await;
    assert!(!e.reason.contains(&pg.password), "{}", e.reason);
    assert!(!store.m.is_ready());

    // Without require: plain text even though the server offers TLS.
    let plain = config(&pg.url(), &other_ca);
    let report = membership::probe(&plain).await.unwrap();
    assert!(report.contains("over plain text"), "{report}");
    let store = start(&settings(plain));
    store.ready().await;
    assert_eq!(
        pairs(&store.lookup("alice").await),
        vec![row("plain", None)]
    );
}
