//! A private PostgreSQL cluster for one test: `initdb` into a temp dir, a free port on 127.0.0.1,
//! the unix socket in the temp dir, a role `citadel` with a password owning a database `policy`,
//! stopped (`pg_ctl stop -m immediate`) when dropped. Stop and start it mid-test to play an outage.
//!
//! PostgreSQL refuses to run as root: as root the commands run as the `postgres` user (which the
//! Debian package creates) and the temp dir belongs to it. Binaries come from the newest
//! `/usr/lib/postgresql/<version>/bin`, or `CITADEL_TEST_PG_BIN`.
//!
//! [`EXAMPLE_SCHEMA`] and [`EXAMPLE_QUERY`] are the README's example (table, query, NOTIFY
//! triggers), for tests that want a realistic store.

#![allow(dead_code)]

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio_postgres::{Client, NoTls};

/// The schema, query and NOTIFY triggers the README shows (keep them in step): a change to a
/// user's rows notifies that user, TRUNCATE notifies everyone.
pub const EXAMPLE_SCHEMA: &str = r#"
CREATE TABLE memberships (
  issuer  text NOT NULL,   -- the issuer's name in the config (issuers[].name)
  subject text NOT NULL,   -- the token's user id
  tenant  text NOT NULL,   -- a tenant id, or '*' for every tenant
  role    text             -- NULL: member of the tenant without a role
);
CREATE INDEX memberships_user ON memberships (issuer, subject);

CREATE FUNCTION memberships_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP IN ('UPDATE', 'DELETE') THEN
    PERFORM pg_notify('citadel_membership', OLD.issuer || ' ' || OLD.subject);
  END IF;
  IF TG_OP IN ('INSERT', 'UPDATE') THEN
    PERFORM pg_notify('citadel_membership', NEW.issuer || ' ' || NEW.subject);
  END IF;
  RETURN NULL;
END $$;
CREATE TRIGGER memberships_notify AFTER INSERT OR UPDATE OR DELETE ON memberships
  FOR EACH ROW EXECUTE FUNCTION memberships_notify();

CREATE FUNCTION memberships_notify_all() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('citadel_membership', '');
  RETURN NULL;
END $$;
CREATE TRIGGER memberships_truncate AFTER TRUNCATE ON memberships
  FOR EACH STATEMENT EXECUTE FUNCTION memberships_notify_all();
"#;

pub const EXAMPLE_QUERY: &str =
    "SELECT tenant, role FROM memberships WHERE issuer = $1 AND subject = $2 ORDER BY tenant, role";

pub const ROLE: &str = "citadel";
pub const DATABASE: &str = "policy";

pub struct PgCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
    pub password: String,
    running: AtomicBool,
}

/// The newest installed PostgreSQL's bin directory.
pub fn pg_bin() -> PathBuf {
    if let Ok(dir) = std::env::var("CITADEL_TEST_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect(
            "PostgreSQL is not installed (/usr/lib/postgresql); run scripts/install-test-deps.sh",
        )
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found
        .pop()
        .expect("no /usr/lib/postgresql/<version>/bin/initdb; run scripts/install-test-deps.sh")
        .1
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(1)
        == 0
}

fn id_of(flag: &str) -> u32 {
    let out = Command::new("id")
        .args([flag, "postgres"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "no `postgres` user (the Debian package creates it)"
    );
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

fn random_hex() -> String {
    format!("{:016x}", RandomState::new().hash_one(std::process::id()))
}

impl PgCluster {
    /// A running cluster with the role and database created.
    pub async fn start() -> PgCluster {
        Self::start_with(None).await
    }

    /// A running cluster that also speaks TLS (`ssl = on`) with a server certificate for
    /// 127.0.0.1 from a fresh CA; the CA's PEM file is returned with it.
    pub async fn start_tls() -> (PgCluster, PathBuf) {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "citadel test database CA");
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
        let mut leaf = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
        leaf.distinguished_name
            .push(DnType::CommonName, "127.0.0.1");
        let key = KeyPair::generate().unwrap();
        let cert = leaf.signed_by(&key, &ca).unwrap();
        let cluster = Self::start_with(Some((cert.pem(), key.serialize_pem()))).await;
        let ca_file = cluster.dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();
        (cluster, ca_file)
    }

    async fn start_with(tls: Option<(String, String)>) -> PgCluster {
        let dir = tempfile::Builder::new()
            .prefix("citadel-pg")
            .tempdir()
            .unwrap();
        if is_root() {
            std::os::unix::fs::chown(dir.path(), Some(id_of("-u")), Some(id_of("-g"))).unwrap();
        }
        let cluster = PgCluster {
            dir,
            bin: pg_bin(),
            port: crate::support::free_port(),
            password: format!("pw-{}", random_hex()),
            running: AtomicBool::new(false),
        };
        let data = cluster.data();
        let out = cluster.run(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ],
        );
        assert!(out.status.success(), "initdb failed: {}", text(&out));
        let sock = cluster.socket_dir();
        cluster.run("mkdir", &["-p", sock.to_str().unwrap()]);
        // Small and fast. No fsync (the OS keeps what a killed server wrote), but commits stay
        // synchronous: `stop()` kills the server, and an asynchronous commit would be lost.
        let conf = format!(
            "\nport = {}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             fsync = off\nshared_buffers = 16MB\n\
             max_connections = 60\nlog_min_messages = warning\n",
            cluster.port,
            sock.display()
        );
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .unwrap();
        std::io::Write::write_all(&mut file, conf.as_bytes()).unwrap();
        if let Some((cert, key)) = tls {
            // The server insists that its key is the server user's and private.
            for (name, pem, mode) in [("server.crt", cert, 0o644), ("server.key", key, 0o600)] {
                let path = data.join(name);
                std::fs::write(&path, pem).unwrap();
                std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(mode))
                    .unwrap();
                if is_root() {
                    std::os::unix::fs::chown(&path, Some(id_of("-u")), Some(id_of("-g"))).unwrap();
                }
            }
            std::io::Write::write_all(
                &mut file,
                b"ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n",
            )
            .unwrap();
        }
        cluster.watchdog();
        // `free_port` only found a port that was free a moment ago: a parallel test (Envoy, an
        // IdP, another cluster) can take it first. Then start on another one (the last `port`
        // line of postgresql.conf wins); any other failure fails at once.
        let mut cluster = cluster;
        let mut attempts = 0;
        while let Err(failure) = cluster.try_start() {
            attempts += 1;
            assert!(
                attempts < 5 && failure.contains("could not bind"),
                "{failure}"
            );
            cluster.port = crate::support::free_port();
            std::io::Write::write_all(&mut file, format!("\nport = {}\n", cluster.port).as_bytes())
                .unwrap();
        }
        let admin = cluster.superuser("postgres").await;
        // Two statements: CREATE DATABASE cannot run inside the implicit transaction of a batch.
        admin
            .batch_execute(&format!(
                "CREATE ROLE {ROLE} LOGIN PASSWORD '{}'",
                cluster.password
            ))
            .await
            .unwrap();
        admin
            .batch_execute(&format!("CREATE DATABASE {DATABASE} OWNER {ROLE}"))
            .await
            .unwrap();
        cluster
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn socket_dir(&self) -> PathBuf {
        self.dir.path().join("sock")
    }

    /// Run a PostgreSQL binary (or a plain command) as the cluster's owner.
    fn run(&self, program: &str, args: &[&str]) -> Output {
        let exe = if program == "mkdir" {
            PathBuf::from("mkdir")
        } else {
            self.bin.join(program)
        };
        let mut cmd = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        };
        cmd.args(args).current_dir(self.dir.path());
        cmd.output().unwrap()
    }

    /// The connection string the store uses: TCP on loopback, role `citadel` with its password.
    pub fn url(&self) -> String {
        self.url_with_password(&self.password)
    }

    pub fn url_with_password(&self, password: &str) -> String {
        format!(
            "postgres://{ROLE}:{password}@127.0.0.1:{}/{DATABASE}",
            self.port
        )
    }

    /// A test killed on timeout runs no `Drop`, and the postmaster lives in a session of its own:
    /// a detached shell stops the cluster and removes its directory once this process is gone.
    fn watchdog(&self) {
        let pg_ctl = self.bin.join("pg_ctl");
        let as_owner = if is_root() {
            "runuser -u postgres -- "
        } else {
            ""
        };
        let script = format!(
            "while [ -d /proc/{pid} ]; do sleep 1; done; {as_owner}'{ctl}' -D '{data}' -m immediate stop; rm -rf '{dir}'",
            pid = std::process::id(),
            ctl = pg_ctl.display(),
            data = self.data().display(),
            dir = self.dir.path().display(),
        );
        let _ = Command::new("setsid")
            .args(["sh", "-c", &script])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
    }

    /// `pg_ctl start -w`: the cluster (again), on the same port.
    pub fn start_again(&self) {
        if let Err(failure) = self.try_start() {
            panic!("{failure}");
        }
    }

    fn try_start(&self) -> Result<(), String> {
        let data = self.data();
        let log = self.dir.path().join("server.log");
        let out = self.run(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
        if !out.status.success() {
            return Err(format!(
                "pg_ctl start failed: {}\n{}",
                text(&out),
                std::fs::read_to_string(&log).unwrap_or_default()
            ));
        }
        self.running.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// `pg_ctl stop -m immediate`: every connection is cut at once, as in a crash.
    pub fn stop(&self) {
        if !self.running.swap(false, Ordering::SeqCst) {
            return;
        }
        let data = self.data();
        let out = self.run(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
        assert!(out.status.success(), "pg_ctl stop failed: {}", text(&out));
    }

    /// A superuser connection on the unix socket to `database` (trust auth there).
    pub async fn superuser(&self, database: &str) -> Client {
        self.connect_socket("postgres", database).await
    }

    /// The `citadel` role on the unix socket, in `policy`: the tables it creates are its own.
    pub async fn owner(&self) -> Client {
        self.connect_socket(ROLE, DATABASE).await
    }

    async fn connect_socket(&self, user: &str, database: &str) -> Client {
        let mut config = tokio_postgres::Config::new();
        config
            .host_path(self.socket_dir())
            .port(self.port)
            .user(user)
            .dbname(database)
            .application_name("citadel-test")
            .connect_timeout(Duration::from_secs(10));
        let (client, connection) = config.connect(NoTls).await.unwrap();
        tokio::spawn(async move {
            let _ = connection.await;
        });
        client
    }

    /// Run SQL statements as the owner of `policy`.
    pub async fn exec(&self, sql: &str) {
        self.owner()
            .await
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    }

    /// A single bigint from SQL run as superuser in `policy` (e.g. a count).
    pub async fn scalar(&self, sql: &str) -> i64 {
        let client = self.superuser(DATABASE).await;
        client.query_one(sql, &[]).await.unwrap().get(0)
    }

    /// Connections of the role `citadel` with `application_name` = `app` now.
    pub async fn connections(&self, app: &str) -> i64 {
        let client = self.superuser(DATABASE).await;
        client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = $1 AND application_name = $2",
                &[&ROLE, &app],
            )
            .await
            .unwrap()
            .get(0)
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if self.running.swap(false, Ordering::SeqCst) {
            let data = self.data();
            let _ = self.run(
                "pg_ctl",
                &["-D", data.to_str().unwrap_or(""), "-m", "immediate", "stop"],
            );
        }
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
