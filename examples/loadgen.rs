//! gRPC load generator for Envoy's ext_authz `Check` call, for `bench/run.sh`.
//!
//! Two modes:
//! - closed loop (default): `--concurrency` streams, each sending its next check as soon as the
//!   previous answer arrives, spread over `--connections` HTTP/2 connections: maximum throughput;
//! - open loop (`--rate R`): checks are *scheduled* at a fixed rate, independently of answers, and
//!   each latency is measured from its intended send time, so a stalled server shows up in the
//!   percentiles instead of silently lowering the rate (no coordinated omission). A dedicated
//!   pacing thread sleeps, then spins briefly, so the pacer itself adds only a few µs.
//!
//! Requests are built with `citadel_authz::cli::client::check_request`; `--tokens FILE` (one JWT a line)
//! is rotated through, one token per check. `--count N` stops after N checks (closed loop), e.g.
//! to send each of N tokens exactly once. The summary is one JSON line on stdout (latencies in µs);
//! a human-readable one goes to stderr.
//!
//! ```text
//! loadgen --target 127.0.0.1:9191 --duration 10 --concurrency 64 --connections 2 --tokens t.txt
//! loadgen --target 127.0.0.1:9191 --duration 10 --rate 1000 --tokens t.txt
//! ```

use std::error::Error;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use envoy_types::ext_authz::v3::pb::CheckRequest;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use hdrhistogram::Histogram;
use tonic::transport::{Channel, Endpoint};

#[derive(Parser, Debug)]
#[command(about = "ext_authz Check load generator (closed loop, or open loop with --rate)")]
struct Args {
    /// host:port of the ext_authz gRPC server.
    #[arg(long, default_value = "127.0.0.1:9191")]
    target: String,
    /// Open loop: checks per second. Without it: closed loop.
    #[arg(long)]
    rate: Option<f64>,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Unrecorded seconds first (same load).
    #[arg(long, default_value_t = 0.0)]
    warmup: f64,
    /// Closed loop: concurrent streams.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// HTTP/2 connections the streams (or open-loop checks) are spread over.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Closed loop: stop after this many checks (even before --duration ends).
    #[arg(long)]
    count: Option<usize>,
    /// File with one token per line, rotated through; none: no Authorization header.
    #[arg(long)]
    tokens: Option<String>,
    #[arg(long, default_value = "/api/orders/42")]
    path: String,
    #[arg(long, default_value = "GET")]
    method: String,
    /// Per-check timeout in seconds (a timed-out check counts as an error).
    #[arg(long, default_value_t = 5.0)]
    timeout: f64,
}

/// What one phase measured.
struct Tally {
    hist: Histogram<u64>,
    ok: u64,
    denied: u64,
    errors: u64,
}

impl Tally {
    fn new() -> Result<Self, String> {
        Ok(Tally {
            hist: Histogram::new_with_bounds(1, 120_000_000_000, 3).map_err(|e| e.to_string())?,
            ok: 0,
            denied: 0,
            errors: 0,
        })
    }

    fn record(&mut self, latency: Duration, outcome: Outcome) {
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX).max(1);
        self.hist.saturating_record(ns);
        match outcome {
            Outcome::Ok => self.ok += 1,
            Outcome::Denied => self.denied += 1,
            Outcome::Error => self.errors += 1,
        }
    }

    fn merge(&mut self, other: &Tally) -> Result<(), Box<dyn Error>> {
        self.hist.add(&other.hist)?;
        self.ok += other.ok;
        self.denied += other.denied;
        self.errors += other.errors;
        Ok(())
    }
}

#[derive(Clone, Copy)]
enum Outcome {
    Ok,
    Denied,
    Error,
}

/// Everything a check needs, shared by all tasks.
struct Load {
    clients: Vec<AuthorizationClient<Channel>>,
    headers: Vec<Vec<(String, String)>>,
    method: String,
    path: String,
    timeout: Duration,
    next: AtomicUsize,
}

impl Load {
    fn request(&self, i: usize) -> CheckRequest {
        let headers = if self.headers.is_empty() {
            &[][..]
        } else {
            &self.headers[i % self.headers.len()][..]
        };
        citadel_authz::cli::client::check_request(&self.method, &self.path, headers)
    }

    async fn check(&self, i: usize) -> Outcome {
        let mut client = self.clients[i % self.clients.len()].clone();
        let call = client.check(self.request(i));
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(resp)) if resp.get_ref().status.as_ref().is_none_or(|s| s.code == 0) => {
                Outcome::Ok
            }
            Ok(Ok(_)) => Outcome::Denied,
            _ => Outcome::Error,
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn Error>> {
    let args = Args::parse();
    let headers = match &args.tokens {
        None => Vec::new(),
        Some(file) => std::fs::read_to_string(file)?
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|t| vec![("authorization".to_owned(), format!("Bearer {}", t.trim()))])
            .collect(),
    };
    if args.tokens.is_some() && headers.is_empty() {
        return Err("token file is empty".into());
    }
    let mut clients = Vec::new();
    for _ in 0..args.connections.max(1) {
        // One Endpoint::connect = one HTTP/2 connection.
        let channel = Endpoint::from_shared(format!("http://{}", args.target))?
            .tcp_nodelay(true)
            .connect()
            .await?;
        clients.push(AuthorizationClient::new(channel));
    }
    let load = Arc::new(Load {
        clients,
        headers,
        method: args.method.clone(),
        path: args.path.clone(),
        timeout: Duration::from_secs_f64(args.timeout),
        next: AtomicUsize::new(0),
    });

    if args.warmup > 0.0 {
        run_phase(&args, &load, args.warmup, None).await?;
        load.next.store(0, Ordering::SeqCst);
    }
    let started = Instant::now();
    let tally = run_phase(&args, &load, args.duration, args.count).await?;
    let elapsed = started.elapsed().as_secs_f64();
    report(&args, &tally, elapsed);
    Ok(())
}

async fn run_phase(
    args: &Args,
    load: &Arc<Load>,
    seconds: f64,
    count: Option<usize>,
) -> Result<Tally, Box<dyn Error>> {
    match args.rate {
        None => closed_loop(args.concurrency.max(1), load, seconds, count).await,
        Some(rate) => open_loop(rate, load, seconds).await,
    }
}

async fn closed_loop(
    concurrency: usize,
    load: &Arc<Load>,
    seconds: f64,
    count: Option<usize>,
) -> Result<Tally, Box<dyn Error>> {
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let limit = count.unwrap_or(usize::MAX);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let load = Arc::clone(load);
        tasks.spawn(async move {
            let mut tally = Tally::new()?;
            while Instant::now() < deadline {
                let i = load.next.fetch_add(1, Ordering::Relaxed);
                if i >= limit {
                    break;
                }
                let sent = Instant::now();
                let outcome = load.check(i).await;
                tally.record(sent.elapsed(), outcome);
            }
            Ok::<_, String>(tally)
        });
    }
    let mut total = Tally::new()?;
    while let Some(done) = tasks.join_next().await {
        total.merge(&done??)?;
    }
    Ok(total)
}

async fn open_loop(rate: f64, load: &Arc<Load>, seconds: f64) -> Result<Tally, Box<dyn Error>> {
    if !rate.is_finite() || rate <= 0.0 {
        return Err("--rate must be positive".into());
    }
    let tally = Arc::new(Mutex::new(Tally::new()?));
    let in_flight = Arc::new(AtomicU64::new(0));
    let interval = Duration::from_secs_f64(1.0 / rate);
    let total = (seconds * rate).round() as u64;
    let handle = tokio::runtime::Handle::current();
    let start = Instant::now() + Duration::from_millis(5);

    // Pacing thread: wakes at each intended send time and hands the check to the runtime. The
    // latency clock starts at the intended time, not when the check actually left.
    let pacer = {
        let (load, tally, in_flight) =
            (Arc::clone(load), Arc::clone(&tally), Arc::clone(&in_flight));
        std::thread::spawn(move || {
            for i in 0..total {
                let intended = start + interval.mul_f64(i as f64);
                let now = Instant::now();
                if intended > now + Duration::from_micros(150) {
                    std::thread::sleep(intended - now - Duration::from_micros(150));
                }
                while Instant::now() < intended {
                    std::hint::spin_loop();
                }
                let (load, tally, in_flight) = (
                    Arc::clone(&load),
                    Arc::clone(&tally),
                    Arc::clone(&in_flight),
                );
                in_flight.fetch_add(1, Ordering::SeqCst);
                handle.spawn(async move {
                    let outcome = load.check(i as usize).await;
                    let latency = intended.elapsed();
                    if let Ok(mut t) = tally.lock() {
                        t.record(latency, outcome);
                    }
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                });
            }
        })
    };
    // Wait for the pacer without blocking the runtime, then for the checks still in flight
    // (each bounded by the per-check timeout).
    while !pacer.is_finished() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    pacer.join().map_err(|_| "pacing thread failed")?;
    let drain_deadline = Instant::now() + load.timeout + Duration::from_secs(1);
    while in_flight.load(Ordering::SeqCst) > 0 && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut out = Tally::new()?;
    out.merge(&*tally.lock().map_err(|_| "tally lock poisoned")?)?;
    Ok(out)
}

fn report(args: &Args, t: &Tally, elapsed: f64) {
    let n = t.ok + t.denied + t.errors;
    let us = |q: f64| t.hist.value_at_quantile(q) as f64 / 1000.0;
    let mode = if args.rate.is_some() {
        "open"
    } else {
        "closed"
    };
    let rps = n as f64 / elapsed.max(1e-9);
    eprintln!(
        "loadgen {mode} {}: {n} checks in {elapsed:.2}s = {rps:.0}/s, ok {} denied {} errors {}; \
         p50 {:.1}µs p99 {:.1}µs p99.9 {:.1}µs max {:.1}µs",
        args.target,
        t.ok,
        t.denied,
        t.errors,
        us(0.5),
        us(0.99),
        us(0.999),
        t.hist.max() as f64 / 1000.0
    );
    let json = serde_json::json!({
        "mode": mode,
        "target": args.target,
        "rate": args.rate,
        "concurrency": args.concurrency,
        "connections": args.connections,
        "elapsed_s": elapsed,
        "requests": n,
        "ok": t.ok,
        "denied": t.denied,
        "errors": t.errors,
        "rps": rps,
        "p50_us": us(0.5),
        "p90_us": us(0.9),
        "p99_us": us(0.99),
        "p999_us": us(0.999),
        "max_us": t.hist.max() as f64 / 1000.0,
    });
    println!("{json}");
}
