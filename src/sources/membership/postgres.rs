//! The PostgreSQL membership store (SPEC §8): the operator's query, `$1` issuer name and `$2` user
//! id → rows of (tenant, role), asked over at most `pool_size` connections.
//!
//! - Each connection is kept by a *slot* task: connect (bounded by `connect_timeout`), prepare the
//!   query (it must take 2 text parameters and return 2 text columns), offer the connection to
//!   lookups, and reconnect with backoff (100 ms doubling to 5 s) when it is lost. A lookup takes
//!   an idle connection; no lookup ever opens one, so a storm of distinct users queues on the
//!   `pool_size` connections instead of opening more.
//! - A lookup is bounded: no connection up → unavailable at once; waiting for a free connection
//!   and the query itself each at most `connect_timeout` (a query that times out closes its
//!   connection, which may be stuck on a dead network path).
//! - The answers go through [`super::cache`] (ttl, max_stale, single flight).
//! - With `notify_channel`, one more connection `LISTEN`s: `'<issuer name> <user id>'` drops that
//!   entry, `''` drops all; every time the listen is (re-)established every entry is expired
//!   (asked again, and used as stale while the store cannot answer), since notifications may
//!   have been missed while it was down.
//!
//! - `sslmode=require` in the connection string: TLS with rustls, the server certificate verified
//!   ([`tls`]); any other mode connects in plain text.
//!
//! The connection string holds a password: it is never logged, and every error text taken from
//! the driver goes through [`Scrub`] before it reaches a log line or an [`Unavailable`].

mod tls;

use std::fmt::Write as _;
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore, watch};
use tokio_postgres::types::{FromSql, Type};
use tokio_postgres::{AsyncMessage, Client, Statement};
use tokio_stream::StreamExt;

use self::tls::Tls;
use super::cache::Cache;
use super::{Lookup, Unavailable};
use crate::core::config::{MembershipConfig, PostgresConfig};
use crate::core::identity::{is_safe_id, is_safe_role};
use crate::core::tenancy::{Memberships, Row};

/// Rows read for one user at most; more are ignored (and logged once). Dropping rows can only
/// take roles or memberships away, never grant one.
const MAX_ROWS: usize = 1024;
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// The listening connection is checked this often: a dead path would otherwise go unnoticed and
/// notifications be missed silently.
const LISTEN_PING: Duration = Duration::from_secs(30);
const APP_NAME: &str = "citadel-authz";
const APP_NAME_LISTEN: &str = "citadel-authz-listen";

pub struct PgStore {
    shared: Arc<Shared>,
    /// Dropped with the store: the background tasks see the channel close and end.
    _alive: watch::Sender<bool>,
}

struct Shared {
    cache: Arc<Cache>,
    pool: Pool,
    /// Some connection has prepared the query (SPEC §8: ready once the store has answered).
    ready: AtomicBool,
    connect_timeout: Duration,
    scrub: Scrub,
    /// The last connection or prepare error (scrubbed), to log it once rather than per retry and
    /// to tell a lookup why the store is down.
    last_error: Mutex<Option<String>>,
    logged: Logged,
}

/// Row problems are logged once per store, not once per lookup.
#[derive(Default)]
struct Logged {
    null_tenant: AtomicBool,
    unsafe_tenant: AtomicBool,
    unsafe_role: AtomicBool,
    too_many_rows: AtomicBool,
}

fn once(flag: &AtomicBool) -> bool {
    !flag.swap(true, Ordering::Relaxed)
}

impl PgStore {
    /// Start connecting in the background; returns at once. The tasks end when `stop` turns true
    /// or the store is dropped. Outside a tokio runtime nothing starts and the store stays not
    /// ready (logged).
    pub fn start(
        pg: &PostgresConfig,
        settings: &MembershipConfig,
        stop: watch::Receiver<bool>,
    ) -> Arc<Self> {
        let (alive, own) = watch::channel(false);
        let shared = Arc::new(Shared {
            cache: Arc::new(Cache::new(
                settings.capacity,
                settings.cache_ttl,
                settings.max_stale,
            )),
            pool: Pool::new(),
            ready: AtomicBool::new(false),
            connect_timeout: pg.connect_timeout,
            scrub: Scrub::new(pg),
            last_error: Mutex::new(None),
            logged: Logged::default(),
        });
        let store = Arc::new(PgStore {
            shared: Arc::clone(&shared),
            _alive: alive,
        });
        let config = match connect_config(pg, APP_NAME) {
            Ok(c) => Arc::new(c),
            Err(e) => {
                tracing::error!(source = %pg.url_source, "membership store: {e}");
                shared.note_error(e);
                return store;
            }
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::error!("membership store: started outside a tokio runtime; not connecting");
            return store;
        };
        let stop = Stop { outer: stop, own };
        tracing::info!(
            pool_size = pg.pool_size,
            listen = pg.notify_channel.as_deref().unwrap_or("-"),
            "membership store: connecting to PostgreSQL"
        );
        let query: Arc<str> = pg.query.as_str().into();
        for slot in 0..pg.pool_size {
            runtime.spawn(run_slot(
                Arc::clone(&shared),
                Arc::clone(&config),
                Arc::clone(&query),
                slot,
                stop.clone(),
            ));
        }
        if let Some(channel) = &pg.notify_channel {
            let mut listen_config = (*config).clone();
            if listen_config.0.get_application_name() == Some(APP_NAME) {
                listen_config.0.application_name(APP_NAME_LISTEN);
            }
            runtime.spawn(run_listener(
                Arc::clone(&shared),
                listen_config,
                channel.clone(),
                stop,
            ));
        }
        store
    }

    pub async fn lookup(&self, issuer: &str, user: &str) -> Result<Lookup, Unavailable> {
        self.shared
            .cache
            .lookup(issuer, user, || {
                let shared = Arc::clone(&self.shared);
                let (issuer, user) = (issuer.to_owned(), user.to_owned());
                async move { shared.fetch(&issuer, &user).await }
            })
            .await
    }

    /// The query has prepared on some connection at least once.
    pub fn is_ready(&self) -> bool {
        self.shared.ready.load(Ordering::Relaxed)
    }

    /// A connection with the prepared query is up now.
    pub fn is_available(&self) -> bool {
        self.shared.pool.up.load(Ordering::Relaxed) > 0
    }

    /// Why the store last failed to connect or prepare (no secrets), for status output.
    pub fn last_error(&self) -> Option<String> {
        self.shared
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Shared {
    /// Remember `error`; true when it differs from the last one (so it is worth a log line).
    fn note_error(&self, error: String) -> bool {
        let mut last = self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let new = last.as_deref() != Some(error.as_str());
        *last = Some(error);
        new
    }

    fn unavailable(&self, reason: String) -> Unavailable {
        Unavailable {
            reason,
            retry_after_secs: 1,
        }
    }

    async fn fetch(&self, issuer: &str, user: &str) -> Result<Memberships, Unavailable> {
        let t = self.connect_timeout;
        let lease = match self.pool.acquire(t).await {
            Ok(c) => c,
            Err(Acquire::Down) => {
                let why = self
                    .last_error
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone();
                let mut reason = "not connected to the membership database".to_owned();
                if let Some(why) = why {
                    let _ = write!(reason, " (last error: {why})");
                }
                return Err(self.unavailable(reason));
            }
            Err(Acquire::Busy) => {
                return Err(self.unavailable(format!(
                    "no membership database connection became free within {}",
                    humantime::format_duration(t)
                )));
            }
        };
        let Some(c) = lease.conn.as_ref() else {
            return Err(self.unavailable("no membership database connection".to_owned()));
        };
        match tokio::time::timeout(t, self.query(c, issuer, user)).await {
            Ok(Ok(m)) => Ok(m),
            Ok(Err(e)) => {
                let reason = format!("the membership query failed: {}", self.scrub.error(&e));
                tracing::warn!(issuer, user, "{reason}");
                Err(self.unavailable(reason))
            }
            Err(_) => {
                lease.kill();
                let reason = format!(
                    "the membership query did not answer within {}",
                    humantime::format_duration(t)
                );
                tracing::warn!(issuer, user, "{reason}; closing that connection");
                Err(self.unavailable(reason))
            }
        }
    }

    async fn query(
        &self,
        conn: &Conn,
        issuer: &str,
        user: &str,
    ) -> Result<Memberships, tokio_postgres::Error> {
        let stream = conn
            .client
            .query_raw(&conn.statement, [issuer, user])
            .await?;
        let mut stream = std::pin::pin!(stream);
        let mut rows = Vec::new();
        while let Some(row) = stream.next().await {
            let row = row?;
            if rows.len() == MAX_ROWS {
                if once(&self.logged.too_many_rows) {
                    tracing::warn!(
                        issuer,
                        user,
                        "membership query returned more than {MAX_ROWS} rows; the rest are ignored (logged once)"
                    );
                }
                break;
            }
            let tenant: Option<&str> = row.try_get(0)?;
            let role: Option<&str> = row.try_get(1)?;
            let Some(tenant) = tenant else {
                if once(&self.logged.null_tenant) {
                    tracing::warn!(
                        issuer,
                        user,
                        "membership row with a NULL tenant skipped (logged once)"
                    );
                }
                continue;
            };
            if !is_safe_id(tenant) {
                if once(&self.logged.unsafe_tenant) {
                    tracing::warn!(issuer, user, tenant = ?tenant, "membership row skipped: the tenant is not a header-safe id (logged once)");
                }
                continue;
            }
            if let Some(role) = role
                && !is_safe_role(role)
            {
                if once(&self.logged.unsafe_role) {
                    tracing::warn!(issuer, user, role = ?role, "membership row skipped: the role is not a header-safe role name (logged once)");
                }
                continue;
            }
            rows.push(Row {
                tenant: tenant.into(),
                role: role.map(Into::into),
            });
        }
        Ok(Memberships::new(rows))
    }
}

// --- connections ---------------------------------------------------------------------------

/// The driver's config for `pg`, with our connect timeout and an application name (so the
/// operator sees us in `pg_stat_activity`) unless the connection string names one, and the TLS
/// its sslmode asks for.
fn connect_config(pg: &PostgresConfig, app: &str) -> Result<Dial, String> {
    let mut config: tokio_postgres::Config = pg.url.expose().parse().map_err(|_| {
        format!(
            "{} is not a PostgreSQL connection string (the value is not shown)",
            pg.url_source
        )
    })?;
    let tls = Tls::for_config(&mut config, pg.ca_file.as_deref())
        .map_err(|e| format!("{}: {e}", pg.url_source))?;
    config.connect_timeout(pg.connect_timeout);
    if config.get_application_name().is_none() {
        config.application_name(app);
    }
    Ok((config, tls))
}

type Connection = tokio_postgres::Connection<tokio_postgres::Socket, tls::Stream>;

/// What a connection is made with: the driver's config and the TLS to use.
type Dial = (tokio_postgres::Config, Tls);

/// Connect within `timeout` (TCP connect, startup and authentication together).
async fn connect(
    (config, tls): &Dial,
    timeout: Duration,
    scrub: &Scrub,
) -> Result<(Client, Connection), String> {
    match tokio::time::timeout(timeout, config.connect(tls.clone())).await {
        Ok(Ok(pair)) => Ok(pair),
        Ok(Err(e)) => Err(scrub.error(&e)),
        Err(_) => Err(format!(
            "connecting took longer than connect_timeout ({})",
            humantime::format_duration(timeout)
        )),
    }
}

/// Prepare `query` as the store uses it: `$1`, `$2` text; two text columns.
async fn prepare(client: &Client, query: &str, scrub: &Scrub) -> Result<Statement, String> {
    let statement = client
        .prepare_typed(query, &[Type::TEXT, Type::TEXT])
        .await
        .map_err(|e| format!("the query does not prepare: {}", scrub.error(&e)))?;
    let params = statement.params().len();
    if params != 2 {
        return Err(format!(
            "the query takes {params} parameters; it must take exactly 2 ($1 issuer name, $2 user id)"
        ));
    }
    let columns = statement.columns();
    if columns.len() != 2 {
        let names: Vec<&str> = columns.iter().map(|c| c.name()).collect();
        return Err(format!(
            "the query returns {} columns ({}); it must return exactly 2: tenant, role",
            columns.len(),
            names.join(", ")
        ));
    }
    for (i, column) in columns.iter().enumerate() {
        if !<&str as FromSql>::accepts(column.type_()) {
            return Err(format!(
                "column {} ({}) of the query has type {}; it must be text (cast it: {}::text)",
                i + 1,
                column.name(),
                column.type_(),
                column.name()
            ));
        }
    }
    Ok(statement)
}

/// Keeps one pool connection: connect, prepare, lend, reconnect with backoff.
async fn run_slot(
    shared: Arc<Shared>,
    config: Arc<Dial>,
    query: Arc<str>,
    slot: usize,
    mut stop: Stop,
) {
    let mut backoff = BACKOFF_FIRST;
    loop {
        let attempt = tokio::select! {
            a = connect(&config, shared.connect_timeout, &shared.scrub) => a,
            () = stop.wait() => return,
        };
        match attempt {
            Ok((client, connection)) => {
                let mut connection = std::pin::pin!(connection);
                // The connection must be driven while the statement is prepared.
                let prepared = tokio::select! {
                    p = prepare(&client, &query, &shared.scrub) => p,
                    r = &mut connection => Err(match r {
                        Ok(()) => "the connection closed while preparing the query".to_owned(),
                        Err(e) => shared.scrub.error(&e),
                    }),
                    () = stop.wait() => return,
                };
                match prepared {
                    Ok(statement) => {
                        backoff = BACKOFF_FIRST;
                        let kill = Arc::new(Notify::new());
                        if !shared.ready.swap(true, Ordering::Relaxed) {
                            tracing::info!("membership store: ready (query prepared)");
                        }
                        if shared.pool.up.fetch_add(1, Ordering::Relaxed) == 0 {
                            tracing::info!(slot, "membership store: connected");
                            *shared
                                .last_error
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner) = None;
                        }
                        shared.pool.release(Conn {
                            client,
                            statement,
                            kill: Arc::clone(&kill),
                        });
                        let ended = tokio::select! {
                            r = &mut connection => match r {
                                Ok(()) => "the server closed the connection".to_owned(),
                                Err(e) => shared.scrub.error(&e),
                            },
                            () = kill.notified() => "closed after a query timed out".to_owned(),
                            () = stop.wait() => {
                                shared.pool.up.fetch_sub(1, Ordering::Relaxed);
                                return;
                            }
                        };
                        let left = shared.pool.up.fetch_sub(1, Ordering::Relaxed) - 1;
                        // A lent connection that died returns no permit: wake one waiter so
                        // that, if this was the last connection, it sees Down now instead of
                        // waiting out its timeout (it passes the wake on, see `acquire`).
                        shared.pool.permits.add_permits(1);
                        shared.note_error(ended.clone());
                        if left == 0 {
                            tracing::warn!(slot, "membership store: database unreachable: {ended}");
                        } else {
                            tracing::debug!(slot, "membership store connection lost: {ended}");
                        }
                    }
                    Err(e) => {
                        if shared.note_error(e.clone()) {
                            tracing::error!(query = %query, "membership store not ready: {e}");
                        } else {
                            tracing::debug!(slot, "membership store: {e}");
                        }
                        drop(client);
                    }
                }
            }
            Err(e) => {
                if shared.note_error(e.clone()) {
                    tracing::warn!("membership store: cannot connect: {e}");
                } else {
                    tracing::debug!(slot, "membership store: cannot connect: {e}");
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = stop.wait() => return,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

struct Conn {
    client: Client,
    statement: Statement,
    /// Tells the slot to drop the connection (a query on it timed out).
    kill: Arc<Notify>,
}

/// The idle connections; `permits` counts them (plus wake-ups, see [`Pool::acquire`]), so
/// waiting for one is a fair queue.
struct Pool {
    idle: Mutex<Vec<Conn>>,
    permits: Semaphore,
    /// Connections up (idle or lent).
    up: AtomicUsize,
}

enum Acquire {
    /// No connection is up.
    Down,
    /// None became free in time.
    Busy,
}

impl Pool {
    fn new() -> Self {
        Pool {
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(0),
            up: AtomicUsize::new(0),
        }
    }

    fn release(&self, conn: Conn) {
        if conn.client.is_closed() {
            return;
        }
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(conn);
        self.permits.add_permits(1);
    }

    /// A permit may be a wake-up with no connection behind it (a slot lost its connection, or
    /// the idle one popped had died): the loop then looks again. Spare permits only cost a
    /// turn of the loop; a missing one would leave a waiter asleep until its timeout.
    async fn acquire(&self, timeout: Duration) -> Result<Lease<'_>, Acquire> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut woken = false;
        loop {
            if self.up.load(Ordering::Relaxed) == 0 {
                if woken {
                    // Other callers may be waiting on the permits too: wake the next one, so
                    // every waiter learns that the store is down, not just the first.
                    self.permits.add_permits(1);
                }
                return Err(Acquire::Down);
            }
            let permit = tokio::time::timeout_at(deadline, self.permits.acquire())
                .await
                .map_err(|_| Acquire::Busy)?
                .map_err(|_| Acquire::Down)?;
            permit.forget();
            woken = true;
            let conn = self
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop();
            match conn {
                // A connection that died while idle: its slot is reconnecting; drop it.
                Some(c) if c.client.is_closed() => continue,
                Some(c) => {
                    return Ok(Lease {
                        pool: self,
                        conn: Some(c),
                    });
                }
                None => continue,
            }
        }
    }
}

/// A lent connection, returned to the pool when dropped (unless it died meanwhile).
struct Lease<'a> {
    pool: &'a Pool,
    conn: Option<Conn>,
}

impl Lease<'_> {
    fn kill(mut self) {
        if let Some(c) = self.conn.take() {
            c.kill.notify_one();
        }
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.conn.take() {
            self.pool.release(c);
        }
    }
}

// --- LISTEN / NOTIFY ---------------------------------------------------------------------

async fn run_listener(shared: Arc<Shared>, config: Dial, channel: String, mut stop: Stop) {
    let mut backoff = BACKOFF_FIRST;
    loop {
        // Set once the LISTEN has run: only losing a working listen is worth a warning, not
        // every failed attempt during an outage (the pool's slots report those).
        let mut established = false;
        let ended = tokio::select! {
            e = listen(&shared, &config, &channel, &mut established, &mut backoff) => e,
            () = stop.wait() => return,
        };
        if established {
            tracing::warn!(channel = %channel, "membership store: LISTEN connection lost: {ended}; reconnecting");
        } else {
            tracing::debug!(channel = %channel, "membership store: cannot LISTEN: {ended}");
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = stop.wait() => return,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// One listening connection, until it ends (the reason is returned).
async fn listen(
    shared: &Shared,
    config: &Dial,
    channel: &str,
    established: &mut bool,
    backoff: &mut Duration,
) -> String {
    let (client, mut connection) =
        match connect(config, shared.connect_timeout, &shared.scrub).await {
            Ok(pair) => pair,
            Err(e) => return e,
        };
    let driver = async {
        loop {
            match poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) if n.channel() == channel => {
                    invalidate(&shared.cache, n.payload());
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return shared.scrub.error(&e),
                None => return "the server closed the connection".to_owned(),
            }
        }
    };
    let mut driver = std::pin::pin!(driver);
    // The channel was validated as an identifier; quoted so that its case is kept.
    let sql = format!("LISTEN \"{channel}\"");
    tokio::select! {
        r = client.batch_execute(&sql) => if let Err(e) = r {
            return format!("LISTEN failed: {}", shared.scrub.error(&e));
        },
        e = &mut driver => return e,
    }
    // Notifications sent while we were not listening are lost: ask the store again for every
    // cached user (stale entries still serve while it cannot answer).
    shared.cache.expire_all();
    *backoff = BACKOFF_FIRST;
    *established = true;
    tracing::info!(channel, "membership store: listening for invalidations");
    loop {
        tokio::select! {
            e = &mut driver => return e,
            () = tokio::time::sleep(LISTEN_PING) => {
                let ping = tokio::time::timeout(shared.connect_timeout, client.batch_execute(""));
                match tokio::select! { p = ping => p, e = &mut driver => return e } {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return shared.scrub.error(&e),
                    Err(_) => return "the listening connection did not answer a ping".to_owned(),
                }
            }
        }
    }
}

/// Apply one notification: `'<issuer name> <user id>'` drops that entry, `''` all of them. An
/// unexpected payload drops all too: dropping is always safe, keeping may not be.
fn invalidate(cache: &Cache, payload: &str) {
    match parse_payload(payload) {
        Some((issuer, user)) => {
            tracing::debug!(issuer, user, "membership store: invalidated by NOTIFY");
            cache.invalidate(issuer, user);
        }
        None => {
            if !payload.is_empty() {
                tracing::warn!(
                    payload = ?payload,
                    "membership store: NOTIFY payload is not '<issuer name> <user id>'; dropping every cached entry"
                );
            } else {
                tracing::debug!("membership store: every entry invalidated by NOTIFY");
            }
            cache.invalidate_all();
        }
    }
}

/// Issuer names have no spaces (config), so the first space separates; the user id may hold
/// spaces inside.
fn parse_payload(payload: &str) -> Option<(&str, &str)> {
    let (issuer, user) = payload.split_once(' ')?;
    (!issuer.is_empty() && !user.is_empty()).then_some((issuer, user))
}

// --- check-config --online ---------------------------------------------------------------

/// Connect once, prepare the query and say what was found (or why not). Never the URL.
pub async fn probe(pg: &PostgresConfig) -> Result<String, String> {
    let scrub = Scrub::new(pg);
    let dial = connect_config(pg, APP_NAME)?;
    let over = if dial.1.is_on() { "TLS" } else { "plain text" };
    let (client, connection) = connect(&dial, pg.connect_timeout, &scrub)
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    let mut connection = std::pin::pin!(connection);
    let work = async {
        let statement = prepare(&client, &pg.query, &scrub).await?;
        let version = match client.query_one("SHOW server_version", &[]).await {
            Ok(row) => row.try_get::<_, String>(0).unwrap_or_default(),
            Err(e) => return Err(scrub.error(&e)),
        };
        let columns: Vec<String> = statement
            .columns()
            .iter()
            .map(|c| format!("{} {}", c.name(), c.type_()))
            .collect();
        let mut report = format!(
            "connected to PostgreSQL {version} over {over}; the query takes ($1 text, $2 text) and returns ({})",
            columns.join(", ")
        );
        if let Some(channel) = &pg.notify_channel {
            client
                .batch_execute(&format!("LISTEN \"{channel}\"; UNLISTEN \"{channel}\""))
                .await
                .map_err(|e| format!("LISTEN {channel} failed: {}", scrub.error(&e)))?;
            let _ = write!(report, "; LISTEN {channel} works");
        }
        Ok(report)
    };
    let timeout = pg.connect_timeout;
    tokio::select! {
        r = tokio::time::timeout(timeout, work) => r.unwrap_or_else(|_| Err(format!(
            "the database did not answer within {}", humantime::format_duration(timeout)))),
        r = &mut connection => Err(match r {
            Ok(()) => "the server closed the connection".to_owned(),
            Err(e) => scrub.error(&e),
        }),
    }
}

// --- stopping --------------------------------------------------------------------------------

#[derive(Clone)]
struct Stop {
    /// The server's stop signal; a dropped sender means "no outside stop".
    outer: watch::Receiver<bool>,
    /// Closes when the store is dropped.
    own: watch::Receiver<bool>,
}

impl Stop {
    async fn wait(&mut self) {
        let outer = async {
            if self.outer.wait_for(|v| *v).await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        let own = async {
            let _ = self.own.wait_for(|v| *v).await;
        };
        tokio::select! {
            () = outer => {}
            () = own => {}
        }
    }
}

// --- secrets ---------------------------------------------------------------------------------

/// Removes the connection string and its password from a driver message. The driver's own
/// messages do not quote them today; this keeps it so if one ever does (a server message may
/// quote what the client sent).
struct Scrub {
    needles: Vec<String>,
}

impl Scrub {
    fn new(pg: &PostgresConfig) -> Self {
        let raw = pg.url.expose();
        let mut needles = vec![raw.to_owned()];
        if let Ok(config) = raw.parse::<tokio_postgres::Config>()
            && let Some(password) = config.get_password()
        {
            needles.push(String::from_utf8_lossy(password).into_owned());
        }
        if let Ok(url) = url::Url::parse(raw)
            && let Some(password) = url.password()
        {
            needles.push(password.to_owned());
        }
        needles.retain(|n| !n.is_empty());
        // Longest first, so that the URL goes whole before its password is looked for.
        needles.sort_by_key(|n| std::cmp::Reverse(n.len()));
        needles.dedup();
        Scrub { needles }
    }

    fn text(&self, mut text: String) -> String {
        for needle in &self.needles {
            if text.contains(needle.as_str()) {
                text = text.replace(needle.as_str(), "<redacted>");
            }
        }
        text
    }

    /// A driver error as text: its kind, then the server's message (with detail and hint) or the
    /// chain of causes, scrubbed.
    fn error(&self, e: &tokio_postgres::Error) -> String {
        let mut text = String::new();
        if let Some(db) = e.as_db_error() {
            let _ = write!(
                text,
                "{} {}: {}",
                db.severity(),
                db.code().code(),
                db.message()
            );
            if let Some(detail) = db.detail() {
                let _ = write!(text, " (detail: {detail})");
            }
            if let Some(hint) = db.hint() {
                let _ = write!(text, " (hint: {hint})");
            }
        } else {
            let _ = write!(text, "{e}");
            let mut cause = std::error::Error::source(e);
            while let Some(c) = cause {
                let _ = write!(text, ": {c}");
                cause = c.source();
            }
        }
        self.text(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::config::Secret;

    fn pg(url: &str) -> PostgresConfig {
        PostgresConfig {
            url: Secret::new(url),
            url_source: "membership.postgres.url".to_owned(),
            query: "SELECT 1".to_owned(),
            notify_channel: None,
            pool_size: 1,
            connect_timeout: Duration::from_secs(1),
            ca_file: None,
        }
    }

    #[test]
    fn payloads() {
        assert_eq!(parse_payload("iam alice"), Some(("iam", "alice")));
        assert_eq!(
            parse_payload("iam Alice Smith"),
            Some(("iam", "Alice Smith"))
        );
        assert_eq!(parse_payload(""), None);
        assert_eq!(parse_payload("alice"), None);
        assert_eq!(parse_payload(" alice"), None);
        assert_eq!(parse_payload("iam "), None);
    }

    #[test]
    fn scrub_removes_the_url_and_both_password_forms() {
        let s = Scrub::new(&pg("postgres://app:s%40cret-pw@127.0.0.1:5432/db"));
        let out = s.text(
            "a postgres://app:s%40cret-pw@127.0.0.1:5432/db b s@cret-pw c s%40cret-pw".to_owned(),
        );
        assert_eq!(out, "a <redacted> b <redacted> c <redacted>");
        let kv = Scrub::new(&pg("host=127.0.0.1 user=app password=kv-secret-1"));
        assert!(
            !kv.text("got kv-secret-1".to_owned())
                .contains("kv-secret-1")
        );
    }

    #[test]
    fn only_sslmode_require_means_tls_and_prefer_becomes_plain_text() {
        use tokio_postgres::config::SslMode;
        for (url, on) in [
            ("postgres://u:p@127.0.0.1/db?sslmode=prefer", false),
            ("postgres://u:p@127.0.0.1/db", false),
            ("postgres://u:p@127.0.0.1/db?sslmode=disable", false),
        ] {
            let (config, tls) = connect_config(&pg(url), APP_NAME).unwrap();
            assert_eq!(
                (config.get_ssl_mode(), tls.is_on()),
                (SslMode::Disable, on),
                "{url}"
            );
        }
        // With require, TLS is on (or, on a machine without any CA, a clear error).
        match connect_config(
            &pg("postgres://u:pw-y@127.0.0.1/db?sslmode=require"),
            APP_NAME,
        ) {
            Ok((config, tls)) => {
                assert_eq!(config.get_ssl_mode(), SslMode::Require);
                assert!(tls.is_on());
            }
            Err(e) => assert!(e.contains("no trusted CA") && !e.contains("pw-y"), "{e}"),
        }
    }

    #[test]
    fn config_errors_do_not_show_the_value() {
        let e = connect_config(&pg("postgres://u:pw-x@[bad"), APP_NAME).unwrap_err();
        assert!(!e.contains("pw-x"), "{e}");
        assert!(e.contains("membership.postgres.url"), "{e}");
    }
}
