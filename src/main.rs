//! `citadel-authz` binary: parse the CLI, load config, start telemetry, run the library.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use citadel_authz::cli::client;
use citadel_authz::core::config::Config;
use citadel_authz::serve::server;
use citadel_authz::serve::telemetry::{self, LogFormat};
use citadel_authz::{Listeners, Options, dev};

/// jemalloc instead of the system allocator: under glibc's malloc every burst of connections
/// (slow clients, reconnect storms) left its freed buffers as resident memory, in steps that
/// only `malloc_trim` gave back; jemalloc returns unused pages within seconds (dirty decay), so
/// the resident size follows what is live. Measured in BENCHMARKS.md ("Soak").
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "citadel-authz",
    version,
    about = "External authorization for Envoy and forward-auth gateways: JWT against cached JWKS, route policy, identity headers"
)]
struct Cli {
    /// Log format (level from RUST_LOG, default info).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve {
        #[arg(long, env = "CITADEL_AUTHZ_CONFIG")]
        config: PathBuf,
    },
    /// Validate config and policy: print `ok` (exit 0) or every problem (exit 2). Binds nothing.
    /// Warnings (shadowed rules, non-standard methods) are printed and do not fail the check.
    CheckConfig {
        #[arg(long, env = "CITADEL_AUTHZ_CONFIG")]
        config: PathBuf,
        /// Also fetch every issuer's discovery document and JWKS now; any failure exits 2.
        #[arg(long)]
        online: bool,
    },
    /// Zero-setup demo: embedded development issuer, example policy, tokens printed at start.
    Dev {
        /// Use this config (its listeners, issuers and policy) plus the dev issuer.
        #[arg(long)]
        config: Option<PathBuf>,
        /// gRPC listener (without --config; with it, listen.grpc in the file decides).
        #[arg(long, default_value = "127.0.0.1:9191", conflicts_with = "config")]
        grpc: String,
        /// HTTP listener (without --config; with it, listen.http in the file decides).
        #[arg(long, default_value = "127.0.0.1:9192", conflicts_with = "config")]
        http: String,
    },
    /// Send one CheckRequest to a running server, as Envoy would, and print the answer.
    /// Exit 0 on allow, 1 on deny, 2 when no answer came (the cause is printed).
    Check {
        /// gRPC address of the server: host:port or unix:/path/to.sock.
        #[arg(long, default_value = "127.0.0.1:9191")]
        grpc: String,
        #[command(flatten)]
        request: RequestArgs,
    },
    /// Explain one decision step by step: ask a running server's admin listener (`--admin`), or
    /// load a config and decide offline (`--config`; each issuer's JWKS is fetched once, nothing
    /// is bound). Exit 0 on allow, 1 on deny, 2 when it could not be asked.
    Explain {
        /// The admin listener: host:port or unix:/path/to.sock.
        #[arg(long, conflicts_with = "config", required_unless_present = "config")]
        admin: Option<String>,
        /// Decide offline with this config.
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(flatten)]
        request: RequestArgs,
    },
    /// Run a table of expected decisions (CASES.yaml) through the offline decision engine, with
    /// test tokens signed by a throwaway key per issuer; no network. Exit 0 when every case is
    /// as expected, 1 on any miss (a diff each), 2 on a bad cases file or config.
    Test {
        #[arg(long, env = "CITADEL_AUTHZ_CONFIG")]
        config: PathBuf,
        /// The cases file (format: README, Policy tests).
        cases: PathBuf,
    },
}

/// The request `check` and `explain` send, as Envoy would describe it.
#[derive(Debug, clap::Args)]
struct RequestArgs {
    #[arg(long, default_value = "GET")]
    method: String,
    /// Original request path (with query).
    #[arg(long)]
    path: String,
    /// Bearer token to send as `Authorization: Bearer <token>`.
    #[arg(long)]
    token: Option<String>,
    /// Extra request header `name: value` (repeatable).
    #[arg(long = "header", short = 'H')]
    headers: Vec<String>,
    /// A context extension `key=value`, as an Envoy route's `check_settings` sends it
    /// (repeatable), e.g. `--context citadel_rule=admin` to try a per-route rule.
    #[arg(long = "context")]
    context: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // check-config reports everything it finds on stdout/stderr itself; log lines of the fetch
    // code (`--online`) would only repeat its results in another format.
    if !matches!(
        cli.command,
        Command::CheckConfig { .. } | Command::Test { .. } | Command::Explain { .. }
    ) {
        telemetry::init(cli.log_format);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async_main(cli.command))
}

async fn async_main(command: Command) -> ExitCode {
    match command {
        Command::CheckConfig { config, online } => check_config(&config, online).await,
        Command::Serve { config: path } => {
            let config = match Config::load(&path) {
                Ok(c) => c,
                Err(e) => return config_failed(&path, &e),
            };
            let options = Options {
                config_path: Some(path),
                ..Options::default()
            };
            serve(config, move |_, config| Ok((config, options))).await
        }
        Command::Dev { config, grpc, http } => dev_mode(config, grpc, http).await,
        Command::Check { grpc, request } => check(grpc, request).await,
        Command::Explain {
            admin,
            config,
            request:
                RequestArgs {
                    method,
                    path,
                    token,
                    headers,
                    context,
                },
        } => {
            let request = match citadel_authz::cli::explain::request(
                &method,
                &path,
                token.as_deref(),
                &headers,
                &context,
            ) {
                Ok(r) => r,
                Err(e) => return cannot_ask(e),
            };
            explain(admin, config, request).await
        }
        Command::Test { config, cases } => {
            let (code, out) = citadel_authz::cli::policy_test::main(
                &config,
                &cases,
                citadel_authz::serve::authorizer::unix_now(),
            )
            .await;
            print!("{out}");
            ExitCode::from(code)
        }
    }
}

async fn explain(
    admin: Option<String>,
    config: Option<PathBuf>,
    request: citadel_authz::serve::admin::pb::ExplainRequest,
) -> ExitCode {
    use citadel_authz::cli::explain::{Offline, ask, describe};
    let answer = match (admin, config) {
        (Some(addr), _) => match ask(&addr, request).await {
            Ok(a) => a,
            Err(e) => return cannot_ask(e),
        },
        (None, Some(path)) => {
            let config = match Config::load(&path) {
                Ok(c) => c,
                Err(e) => return config_failed(&path, &e),
            };
            let (offline, problems) = match Offline::fetched(config).await {
                Ok(o) => o,
                Err(e) => return cannot_ask(e),
            };
            for p in problems {
                eprintln!("warning: {p}");
            }
            citadel_authz::serve::admin::explain(
                &offline.runtime,
                &request,
                citadel_authz::serve::authorizer::unix_now(),
            )
            .await
        }
        (None, None) => return cannot_ask("give --admin ADDR or --config FILE"),
    };
    print!("{}", describe(&answer));
    if answer.allowed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn config_failed(path: &Path, e: &citadel_authz::ConfigError) -> ExitCode {
    eprintln!("{}: invalid configuration:", path.display());
    for issue in &e.issues {
        eprintln!("  {issue}");
    }
    print_warnings(&e.warnings);
    ExitCode::from(2)
}

fn print_warnings(warnings: &[citadel_authz::core::config::ConfigIssue]) {
    for w in warnings {
        eprintln!("warning: {w}");
    }
}

/// `ok` and 0, or every problem and 2; warnings never change the exit code. `online`: also ask
/// every issuer's IdP and the membership store, one line each, any failure exits 2.
async fn check_config(path: &Path, online: bool) -> ExitCode {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => return config_failed(path, &e),
    };
    print_warnings(&config.warnings);
    if online {
        let mut failed = false;
        let mut probes = citadel_authz::cli::probe::issuers(&config).await;
        probes.extend(citadel_authz::cli::probe::membership(&config).await);
        for probe in probes {
            match probe.result {
                Ok(what) => println!("{}: {what}", probe.label),
                Err(why) => {
                    failed = true;
                    eprintln!("{}: failed: {why}", probe.label);
                }
            }
        }
        if failed {
            return ExitCode::from(2);
        }
    }
    println!("ok");
    ExitCode::SUCCESS
}

/// Bind, let `prepare` adjust config and options to the bound listeners (dev mode adds its
/// issuer there), then run until SIGTERM / Ctrl-C.
async fn serve(
    config: Config,
    prepare: impl FnOnce(&Listeners, Config) -> Result<(Config, Options), String>,
) -> ExitCode {
    let shutdown = shutdown_signal();
    let listeners = match Listeners::bind(&config).await {
        Ok(l) => l,
        Err(e) => return fail(e),
    };
    let (config, options) = match prepare(&listeners, config) {
        Ok(prepared) => prepared,
        Err(e) => return fail(e),
    };
    let running = match server::start(config, listeners, options).await {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    match running.run_until(shutdown).await {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

fn fail(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("citadel-authz: {e}");
    ExitCode::from(1)
}

async fn dev_mode(config: Option<PathBuf>, grpc: String, http: String) -> ExitCode {
    let shutdown = shutdown_signal();
    let base = match &config {
        Some(path) => Config::load(path),
        None => {
            // The example policy needs an issuer to validate; the dev issuer replaces this
            // placeholder once the HTTP port is known.
            let yaml = format!(
                "listen: {{ grpc: {grpc:?}, http: {http:?} }}\nissuers:\n  - name: placeholder\n    issuer: http://127.0.0.1/placeholder\n    jwks_uri: http://127.0.0.1/placeholder\n    audiences: [{}]\npolicy:\n{}",
                dev::DEV_AUDIENCE,
                dev::EXAMPLE_POLICY
                    .lines()
                    .map(|l| format!("  {l}\n"))
                    .collect::<String>()
            );
            Config::from_yaml(&yaml, Path::new("."))
        }
    };
    let mut config_in_force = match base {
        Ok(c) => c,
        Err(e) => return config_failed(config.as_deref().unwrap_or(Path::new("dev")), &e),
    };
    let policy_from = match &config {
        None => "built-in example policy".to_owned(),
        Some(path) => config_in_force
            .policy_file
            .as_deref()
            .unwrap_or(path)
            .display()
            .to_string(),
    };
    match config_in_force.listen.http {
        None => return fail("dev mode serves its JWKS on the HTTP listener: set listen.http"),
        Some(addr) if !dev::reachable_over_loopback(addr) => {
            return fail(format!(
                "dev mode: the HTTP listener {addr} is not reachable over loopback, and /dev/jwks and /dev/token answer loopback clients only (this server fetches its own JWKS there); bind 127.0.0.1, or 0.0.0.0 / [::] to serve forward-auth to other hosts too"
            ));
        }
        Some(_) => {}
    }
    let listeners = match Listeners::bind(&config_in_force).await {
        Ok(l) => l,
        Err(e) => return fail(e),
    };
    let Some(http) = listeners.http_addr() else {
        return fail("dev mode serves its JWKS on the HTTP listener: set listen.http");
    };
    let issuer = match dev::DevIssuer::new(http) {
        Ok(i) => Arc::new(i),
        Err(e) => return fail(e),
    };
    if config.is_none() {
        config_in_force.issuers.clear();
        config_in_force.membership = match dev::example_membership() {
            Ok(m) => Some(m),
            Err(e) => return config_failed(Path::new("dev"), &e),
        };
    }
    config_in_force.issuers.push(issuer.issuer_config());
    // `check --grpc` speaks plaintext TCP: no example for a unix socket or a TLS listener.
    let grpc = listeners
        .grpc_addr()
        .filter(|_| config_in_force.listen.grpc_tls.is_none());
    // No reload in dev mode: a re-read config would not contain the dev issuer.
    let options = Options {
        extra_routes: Some(Arc::clone(&issuer).routes()),
        config_path: None,
    };
    let running = match server::start(config_in_force, listeners, options).await {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    // The banner's outcomes come from the server's own decision core once it holds the dev
    // issuer's keys, so it is printed from a task while the server already runs.
    let authorizer = Arc::clone(&running.authorizer);
    tokio::spawn(async move {
        let invocation = dev::invocation();
        let input = dev::BannerInput {
            dev: &issuer,
            http,
            grpc,
            invocation: &invocation,
            policy_from: &policy_from,
        };
        let text = dev::banner(&input, &authorizer).await;
        // Best effort: a closed stdout (piped into `head`) must not stop the server.
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{text}").and_then(|()| out.flush());
    });
    match running.run_until(shutdown).await {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

async fn check(grpc: String, request: RequestArgs) -> ExitCode {
    let RequestArgs {
        method,
        path,
        token,
        headers,
        context,
    } = request;
    let mut list = Vec::new();
    if let Some(t) = token {
        list.push(("authorization".to_owned(), format!("Bearer {t}")));
    }
    for h in headers {
        match h.split_once(':') {
            Some((k, v)) => list.push((k.trim().to_owned(), v.trim().to_owned())),
            None => return cannot_ask(format!("--header {h:?} is not `name: value`")),
        }
    }
    let mut request = client::check_request(&method, &path, &list);
    for c in context {
        let Some((k, v)) = c.split_once('=') else {
            return cannot_ask(format!("--context {c:?} is not `key=value`"));
        };
        if let Some(attributes) = request.attributes.as_mut() {
            attributes
                .context_extensions
                .insert(k.trim().to_owned(), v.trim().to_owned());
        }
    }
    match client::check(grpc, request).await {
        Ok(resp) => {
            print!("{}", client::describe(&resp));
            if client::is_allowed(&resp) {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => cannot_ask(e),
    }
}

/// A script must tell "denied" from "could not ask": exit 1 is only ever a denial.
fn cannot_ask(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("citadel-authz: {e}");
    ExitCode::from(2)
}

/// SIGTERM or Ctrl-C. The handlers are installed when this is called, not when the future is
/// first polled: a SIGTERM that arrives while the server is still starting must lead to a
/// graceful stop, not to the default action (killed, exit 143).
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).ok();
    let mut int = signal(SignalKind::interrupt()).ok();
    async move {
        let term = async {
            match term.as_mut() {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        let int = async {
            match int.as_mut() {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = term => {}
            _ = int => {}
        }
        tracing::info!("shutdown signal received; finishing in-flight checks");
    }
}
