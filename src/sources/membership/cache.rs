//! The membership cache of a database store (SPEC §8): bounded, fresh for `cache_ttl`, usable up
//! to `max_stale` past it only when the store cannot answer, negative answers ("no rows") cached
//! like any other, and one lookup in flight per (issuer, user) shared by every concurrent caller.
//!
//! A lookup that has to ask the store runs as its own task (a *flight*): a caller that is cancelled
//! or panics does not cancel it, and the waiters learn the answer through a `watch` channel whose
//! sender is dropped if the flight itself dies, so nobody waits on a flight that will never answer.
//! Invalidation (NOTIFY) bumps a generation; a flight that started under an older generation still
//! answers its waiters but does not store its answer, which may predate the change.
//! Notifications possibly missed (the listening connection re-established) *expire* every entry
//! instead: each is asked for again, but still serves as stale while the store cannot answer —
//! the store is usually just back from the outage that broke the listen, and its query
//! connections may not be.
//!
//! No I/O of its own: the store hands in the fetch.

use std::collections::HashMap;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use quick_cache::Equivalent;
use tokio::sync::watch;
use tokio::time::Instant;

use super::{Lookup, Outcome, Unavailable};
use crate::core::tenancy::Memberships;

type Key = (Box<str>, Box<str>);

/// A borrowed key, so that a hit allocates nothing. Hashes exactly as the owned tuple does.
struct KeyRef<'a>(&'a str, &'a str);

impl Hash for KeyRef<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Same as `(Box<str>, Box<str>)`: the fields in order.
        self.0.hash(state);
        self.1.hash(state);
    }
}

impl Equivalent<Key> for KeyRef<'_> {
    fn equivalent(&self, key: &Key) -> bool {
        *key.0 == *self.0 && *key.1 == *self.1
    }
}

#[derive(Clone)]
struct Entry {
    memberships: Arc<Memberships>,
    /// When the fetch that produced it started: the data is at least this old.
    fetched: Instant,
    /// [`Cache::expiries`] when it was stored.
    expiries: u64,
}

type Answer = Result<Arc<Memberships>, Unavailable>;

/// How long a check with a usable stale entry waits for the store before using that entry. Well
/// under Envoy's default ext_authz timeout (200 ms); a healthy store answers in a few ms.
const STALE_WAIT: Duration = Duration::from_millis(100);

pub(crate) struct Cache {
    /// `None`: capacity 0, nothing is kept (single flight still applies).
    entries: Option<quick_cache::sync::Cache<Key, Entry>>,
    flights: Mutex<HashMap<Key, watch::Receiver<Option<Answer>>>>,
    /// Bumped by every invalidation; held while a flight stores its answer, so that a store and an
    /// invalidation cannot interleave.
    generation: Mutex<u64>,
    ttl: Duration,
    max_stale: Duration,
    /// Bumped by [`Cache::expire_all`]: an entry stored under an older value is not fresh. An
    /// atomic, not a lock: every lookup reads it.
    expiries: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The data under these locks stays consistent even if a holder panicked (plain inserts).
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

enum Joined {
    Hit(Arc<Memberships>),
    Wait(watch::Receiver<Option<Answer>>),
}

impl Cache {
    pub(crate) fn new(capacity: u64, ttl: Duration, max_stale: Duration) -> Self {
        let entries = (capacity > 0).then(|| {
            quick_cache::sync::Cache::new(usize::try_from(capacity).unwrap_or(usize::MAX))
        });
        Cache {
            entries,
            flights: Mutex::new(HashMap::new()),
            generation: Mutex::new(0),
            ttl,
            max_stale,
            expiries: AtomicU64::new(0),
        }
    }

    fn get(&self, issuer: &str, user: &str) -> Option<Entry> {
        self.entries.as_ref()?.get(&KeyRef(issuer, user))
    }

    fn fresh(&self, entry: &Entry, now: Instant) -> bool {
        now < entry.fetched + self.ttl && entry.expiries == self.expiries.load(Ordering::Acquire)
    }

    /// Whether `entry` may still serve as stale: within `max_stale` past its ttl.
    fn usable(&self, entry: &Entry) -> bool {
        Instant::now() < entry.fetched + self.ttl + self.max_stale
    }

    /// The current entry as a stale answer, if it is still usable.
    fn stale(&self, issuer: &str, user: &str) -> Option<Lookup> {
        let entry = self.get(issuer, user).filter(|e| self.usable(e))?;
        Some(Lookup {
            memberships: entry.memberships,
            outcome: Outcome::Stale,
        })
    }

    /// The memberships of `user` for `issuer`: from a fresh entry, else from the store through a
    /// flight (`start` makes its fetch; it is called only when this caller starts the flight),
    /// else, when the store cannot answer (or not within [`STALE_WAIT`]), from an entry within
    /// `max_stale` past its ttl.
    pub(crate) async fn lookup<S, F>(
        self: &Arc<Self>,
        issuer: &str,
        user: &str,
        start: S,
    ) -> Result<Lookup, Unavailable>
    where
        S: FnOnce() -> F,
        F: Future<Output = Result<Memberships, Unavailable>> + Send + 'static,
    {
        let cached = self.get(issuer, user);
        if let Some(entry) = &cached
            && self.fresh(entry, Instant::now())
        {
            return Ok(hit(Arc::clone(&entry.memberships)));
        }
        let mut rx = match self.join_or_start(issuer, user, start) {
            Joined::Hit(m) => return Ok(hit(m)),
            Joined::Wait(rx) => rx,
        };
        let mut wait = std::pin::pin!(async move {
            match rx.wait_for(Option::is_some).await {
                Ok(v) => v.clone(),
                Err(_) => None,
            }
        });
        // With an entry that could serve as stale, a store slower than STALE_WAIT counts as one
        // that cannot answer: the check must not outlast the gateway's own timeout waiting for a
        // database that is going down. The flight goes on and stores its answer when it lands.
        let answer = if cached.is_some_and(|e| self.usable(&e)) {
            match tokio::time::timeout(STALE_WAIT, &mut wait).await {
                Ok(answer) => answer,
                // Read again: a NOTIFY while we waited removed what we saw.
                Err(_) => match self.stale(issuer, user) {
                    Some(lookup) => return Ok(lookup),
                    None => wait.await,
                },
            }
        } else {
            wait.await
        };
        let error = match answer {
            Some(Ok(memberships)) => {
                return Ok(Lookup {
                    memberships,
                    outcome: Outcome::Miss,
                });
            }
            Some(Err(e)) => e,
            None => Unavailable {
                reason: "the membership lookup was abandoned".to_owned(),
                retry_after_secs: 1,
            },
        };
        // Read again: an invalidation while the flight ran must not be undone by a stale answer.
        self.stale(issuer, user).ok_or(error)
    }

    fn join_or_start<S, F>(self: &Arc<Self>, issuer: &str, user: &str, start: S) -> Joined
    where
        S: FnOnce() -> F,
        F: Future<Output = Result<Memberships, Unavailable>> + Send + 'static,
    {
        let key: Key = (issuer.into(), user.into());
        let mut flights = lock(&self.flights);
        if let Some(rx) = flights.get(&key) {
            return Joined::Wait(rx.clone());
        }
        // A flight may have stored its answer and left between our first look and this lock.
        if let Some(entry) = self.get(issuer, user)
            && self.fresh(&entry, Instant::now())
        {
            return Joined::Hit(entry.memberships);
        }
        let (tx, rx) = watch::channel(None);
        flights.insert(key.clone(), rx.clone());
        drop(flights);

        let generation = *lock(&self.generation);
        let fetch = start();
        let cache = Arc::clone(self);
        tokio::spawn(async move {
            // Leaves the flight map however this task ends (answer, panic, runtime shutdown).
            let landed = Landed {
                cache: Arc::clone(&cache),
                key: Some(key),
            };
            let fetched = Instant::now();
            let answer = fetch.await.map(Arc::new);
            if let Ok(memberships) = &answer {
                cache.store(&landed, memberships, fetched, generation);
            }
            drop(landed);
            tx.send_replace(Some(answer));
        });
        Joined::Wait(rx)
    }

    fn store(
        &self,
        landed: &Landed,
        memberships: &Arc<Memberships>,
        fetched: Instant,
        started: u64,
    ) {
        let (Some(entries), Some(key)) = (&self.entries, &landed.key) else {
            return;
        };
        let current = lock(&self.generation);
        if *current == started {
            entries.insert(
                key.clone(),
                Entry {
                    memberships: Arc::clone(memberships),
                    fetched,
                    // Stored under the generation lock, which expire_all also takes: the
                    // count cannot move under us.
                    expiries: self.expiries.load(Ordering::Acquire),
                },
            );
        }
    }

    /// Drop the entry of `user` for `issuer` (a NOTIFY naming them).
    pub(crate) fn invalidate(&self, issuer: &str, user: &str) {
        let mut generation = lock(&self.generation);
        *generation = generation.wrapping_add(1);
        if let Some(entries) = &self.entries {
            entries.remove(&KeyRef(issuer, user));
        }
    }

    /// Drop every entry (an empty NOTIFY).
    pub(crate) fn invalidate_all(&self) {
        let mut generation = lock(&self.generation);
        *generation = generation.wrapping_add(1);
        if let Some(entries) = &self.entries {
            entries.clear();
        }
    }

    /// Make every entry stale (a listening connection re-established: notifications may have
    /// been missed). The next lookup of each asks the store; while the store cannot answer, the
    /// entry serves as stale within `max_stale` past its ttl, as it would have without the
    /// outage of the listen. Flights already running do not store their answers.
    pub(crate) fn expire_all(&self) {
        let mut generation = lock(&self.generation);
        *generation = generation.wrapping_add(1);
        // Under the generation lock, so no flight stores between the two bumps.
        self.expiries.fetch_add(1, Ordering::AcqRel);
    }

    /// Lookups in flight now.
    #[cfg(test)]
    fn flights(&self) -> usize {
        lock(&self.flights).len()
    }
}

fn hit(memberships: Arc<Memberships>) -> Lookup {
    Lookup {
        memberships,
        outcome: Outcome::Hit,
    }
}

/// Removes a flight from the map when dropped.
struct Landed {
    cache: Arc<Cache>,
    key: Option<Key>,
}

impl Drop for Landed {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            lock(&self.cache.flights).remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::core::tenancy::Row;

    fn rows(tenant: &str) -> Memberships {
        Memberships::new(vec![Row {
            tenant: tenant.into(),
            role: Some("admin".into()),
        }])
    }

    fn down() -> Unavailable {
        Unavailable {
            reason: "down".to_owned(),
            retry_after_secs: 1,
        }
    }

    type Script = Arc<Mutex<Result<Memberships, Unavailable>>>;

    /// A cache (capacity 10, `ttl`, max_stale 60 s) holding alice and bob in `acme`, one fetch each.
    async fn primed(ttl: Duration) -> (Arc<Cache>, Script, Arc<AtomicUsize>) {
        let cache = Arc::new(Cache::new(10, ttl, Duration::from_secs(60)));
        let script: Script = Arc::new(Mutex::new(Ok(rows("acme"))));
        let calls = Arc::new(AtomicUsize::new(0));
        for user in ["alice", "bob"] {
            cache
                .lookup("iam", user, || fetcher(&script, &calls, Duration::ZERO))
                .await
                .unwrap();
        }
        (cache, script, calls)
    }

    /// A fetch that answers what `script` holds and counts its calls.
    fn fetcher(
        script: &Script,
        calls: &Arc<AtomicUsize>,
        delay: Duration,
    ) -> impl Future<Output = Result<Memberships, Unavailable>> + Send + 'static {
        let script = Arc::clone(script);
        let calls = Arc::clone(calls);
        async move {
            calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(delay).await;
            lock(&script).clone()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn fresh_then_miss_then_stale_within_max_stale_only() {
        let cache = Arc::new(Cache::new(
            10,
            Duration::from_secs(30),
            Duration::from_secs(60),
        ));
        let script: Script = Arc::new(Mutex::new(Ok(rows("acme"))));
        let calls = Arc::new(AtomicUsize::new(0));
        let d = Duration::ZERO;
        let first = cache
            .lookup("iam", "alice", || fetcher(&script, &calls, d))
            .await;
        assert_eq!(first.unwrap().outcome, Outcome::Miss);
        let second = cache
            .lookup("iam", "alice", || fetcher(&script, &calls, d))
            .await;
        assert_eq!(second.unwrap().outcome, Outcome::Hit);
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        // Past ttl, store answers: asked again.
        tokio::time::advance(Duration::from_secs(31)).await;
        *lock(&script) = Ok(rows("globex"));
        let l = cache
            .lookup("iam", "alice", || fetcher(&script, &calls, d))
            .await
            .unwrap();
        assert_eq!(
            (l.outcome, &*l.memberships),
            (Outcome::Miss, &rows("globex"))
        );

        // Past ttl, store down: the old entry, as Stale, until max_stale past ttl.
        *lock(&script) = Err(down());
        tokio::time::advance(Duration::from_secs(31)).await;
        let l = cache
            .lookup("iam", "alice", || fetcher(&script, &calls, d))
            .await
            .unwrap();
        assert_eq!(
            (l.outcome, &*l.memberships),
            (Outcome::Stale, &rows("globex"))
        );
        tokio::time::advance(Duration::from_secs(60)).await;
        let e = cache
            .lookup("iam", "alice", || fetcher(&script, &calls, d))
            .await;
        assert_eq!(e.unwrap_err(), down());
    }

    #[tokio::test(start_paused = true)]
    async fn fresh_entry_is_not_stale_when_down_and_no_entry_means_unavailable() {
        let cache = Arc::new(Cache::new(
            10,
            Duration::from_secs(30),
            Duration::from_secs(60),
        ));
        let script: Script = Arc::new(Mutex::new(Err(down())));
        let calls = Arc::new(AtomicUsize::new(0));
        let e = cache
            .lookup("iam", "bob", || fetcher(&script, &calls, Duration::ZERO))
            .await;
        assert_eq!(e.unwrap_err(), down());
        // The failure is not cached: the next lookup asks again.
        let _ = cache
            .lookup("iam", "bob", || fetcher(&script, &calls, Duration::ZERO))
            .await;
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn negative_answers_are_cached() {
        let cache = Arc::new(Cache::new(10, Duration::from_secs(30), Duration::ZERO));
        let script: Script = Arc::new(Mutex::new(Ok(Memberships::default())));
        let calls = Arc::new(AtomicUsize::new(0));
        for _ in 0..3 {
            let l = cache.lookup("iam", "nobody", || fetcher(&script, &calls, Duration::ZERO));
            assert!(l.await.unwrap().memberships.rows.is_empty());
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn capacity_zero_keeps_nothing() {
        let cache = Arc::new(Cache::new(
            0,
            Duration::from_secs(30),
            Duration::from_secs(60),
        ));
        let script: Script = Arc::new(Mutex::new(Ok(rows("acme"))));
        let calls = Arc::new(AtomicUsize::new(0));
        for _ in 0..3 {
            let l = cache.lookup("iam", "alice", || fetcher(&script, &calls, Duration::ZERO));
            assert_eq!(l.await.unwrap().outcome, Outcome::Miss);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_share_one_flight_and_a_cancelled_caller_does_not_wedge_them() {
        let cache = Arc::new(Cache::new(10, Duration::from_secs(30), Duration::ZERO));
        let script: Script = Arc::new(Mutex::new(Ok(rows("acme"))));
        let calls = Arc::new(AtomicUsize::new(0));
        let slow = Duration::from_secs(1);
        // The caller that starts the flight gives up at once.
        let leader = cache.lookup("iam", "alice", || fetcher(&script, &calls, slow));
        assert!(
            tokio::time::timeout(Duration::from_millis(1), leader)
                .await
                .is_err()
        );
        let mut waiters = Vec::new();
        for _ in 0..20 {
            let cache = Arc::clone(&cache);
            let (script, calls) = (Arc::clone(&script), Arc::clone(&calls));
            waiters.push(tokio::spawn(async move {
                cache
                    .lookup("iam", "alice", || fetcher(&script, &calls, slow))
                    .await
            }));
        }
        for w in waiters {
            assert_eq!(&*w.await.unwrap().unwrap().memberships, &rows("acme"));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(cache.flights(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_flight_releases_its_waiters() {
        let cache = Arc::new(Cache::new(10, Duration::from_secs(30), Duration::ZERO));
        let e = cache
            .lookup("iam", "alice", || async {
                tokio::time::sleep(Duration::from_millis(10)).await;
                panic!("fetch blew up")
            })
            .await;
        assert!(e.unwrap_err().reason.contains("abandoned"));
        assert_eq!(cache.flights(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn invalidation_drops_entries_and_discards_an_answer_fetched_before_it() {
        let cache = Arc::new(Cache::new(
            10,
            Duration::from_secs(30),
            Duration::from_secs(60),
        ));
        let script: Script = Arc::new(Mutex::new(Ok(rows("acme"))));
        let calls = Arc::new(AtomicUsize::new(0));
        let z = Duration::ZERO;
        cache
            .lookup("iam", "alice", || fetcher(&script, &calls, z))
            .await
            .unwrap();
        cache
            .lookup("iam", "bob", || fetcher(&script, &calls, z))
            .await
            .unwrap();
        cache.invalidate("iam", "alice");
        let a = cache
            .lookup("iam", "alice", || fetcher(&script, &calls, z))
            .await
            .unwrap();
        let b = cache
            .lookup("iam", "bob", || fetcher(&script, &calls, z))
            .await
            .unwrap();
        assert_eq!((a.outcome, b.outcome), (Outcome::Miss, Outcome::Hit));

        // An invalidated user has no stale entry to fall back on while the store is down.
        *lock(&script) = Err(down());
        cache.invalidate_all();
        assert!(
            cache
                .lookup("iam", "bob", || fetcher(&script, &calls, z))
                .await
                .is_err()
        );

        // A flight in progress when the invalidation arrives answers, but is not kept.
        *lock(&script) = Ok(rows("old"));
        let slow = Duration::from_secs(1);
        let c2 = Arc::clone(&cache);
        let (s2, k2) = (Arc::clone(&script), Arc::clone(&calls));
        let pending =
            tokio::spawn(
                async move { c2.lookup("iam", "carol", || fetcher(&s2, &k2, slow)).await },
            );
        tokio::time::advance(Duration::from_millis(100)).await;
        cache.invalidate("iam", "carol");
        assert_eq!(&*pending.await.unwrap().unwrap().memberships, &rows("old"));
        let again = cache
            .lookup("iam", "carol", || fetcher(&script, &calls, z))
            .await
            .unwrap();
        assert_eq!(again.outcome, Outcome::Miss);
    }

    #[tokio::test(start_paused = true)]
    async fn a_store_slower_than_stale_wait_is_answered_from_the_stale_entry() {
        let (cache, script, calls) = primed(Duration::from_secs(30)).await;
        let z = Duration::ZERO;
        tokio::time::advance(Duration::from_secs(31)).await;
        // A store answering within STALE_WAIT is waited for: the change is seen.
        *lock(&script) = Ok(rows("globex"));
        let quick = STALE_WAIT / 2;
        let a = cache
            .lookup("iam", "alice", || fetcher(&script, &calls, quick))
            .await
            .unwrap();
        assert_eq!(
            (a.outcome, &*a.memberships),
            (Outcome::Miss, &rows("globex"))
        );
        // One slower than that: the stale entry after STALE_WAIT, not after the store's 10 s.
        let slow = Duration::from_secs(10);
        let began = Instant::now();
        let b = cache
            .lookup("iam", "bob", || fetcher(&script, &calls, slow))
            .await
            .unwrap();
        assert_eq!(
            (b.outcome, &*b.memberships),
            (Outcome::Stale, &rows("acme"))
        );
        assert_eq!(began.elapsed(), STALE_WAIT);
        // The flight went on and its answer is kept.
        tokio::time::sleep(slow).await;
        let b = cache
            .lookup("iam", "bob", || fetcher(&script, &calls, z))
            .await
            .unwrap();
        assert_eq!(
            (b.outcome, &*b.memberships),
            (Outcome::Hit, &rows("globex"))
        );
        assert_eq!(calls.load(Ordering::SeqCst), 4);
        // A NOTIFY while a check waits: nothing stale is left to serve, it waits for the store.
        tokio::time::advance(Duration::from_secs(31)).await;
        let pending = {
            let (cache, script, calls) =
                (Arc::clone(&cache), Arc::clone(&script), Arc::clone(&calls));
            tokio::spawn(async move {
                cache
                    .lookup("iam", "bob", || fetcher(&script, &calls, slow))
                    .await
            })
        };
        tokio::time::advance(STALE_WAIT / 2).await;
        cache.invalidate("iam", "bob");
        let b = pending.await.unwrap().unwrap();
        assert_eq!(b.outcome, Outcome::Miss);
    }

    #[tokio::test(start_paused = true)]
    async fn expired_entries_are_asked_again_and_serve_as_stale_while_the_store_is_down() {
        let (cache, script, calls) = primed(Duration::from_secs(3600)).await;
        let z = Duration::ZERO;
        // The listen came back: both are asked again (ttl 1 h notwithstanding) …
        cache.expire_all();
        *lock(&script) = Ok(rows("globex"));
        let a = cache
            .lookup("iam", "alice", || fetcher(&script, &calls, z))
            .await
            .unwrap();
        assert_eq!(
            (a.outcome, &*a.memberships),
            (Outcome::Miss, &rows("globex"))
        );
        let a = cache
            .lookup("iam", "alice", || fetcher(&script, &calls, z))
            .await
            .unwrap();
        assert_eq!(
            a.outcome,
            Outcome::Hit,
            "the answer after the expiry is fresh"
        );
        // … and one the store cannot answer yet is served as stale, not refused.
        *lock(&script) = Err(down());
        let b = cache
            .lookup("iam", "bob", || fetcher(&script, &calls, z))
            .await
            .unwrap();
        assert_eq!(
            (b.outcome, &*b.memberships),
            (Outcome::Stale, &rows("acme"))
        );
        assert_eq!(calls.load(Ordering::SeqCst), 4);

        // A flight running when the expiry comes answers, but is not kept as fresh.
        *lock(&script) = Ok(rows("old"));
        let c2 = Arc::clone(&cache);
        let (s2, k2) = (Arc::clone(&script), Arc::clone(&calls));
        let slow = Duration::from_secs(1);
        let pending =
            tokio::spawn(
                async move { c2.lookup("iam", "carol", || fetcher(&s2, &k2, slow)).await },
            );
        tokio::time::advance(Duration::from_millis(100)).await;
        cache.expire_all();
        assert_eq!(&*pending.await.unwrap().unwrap().memberships, &rows("old"));
        let again = cache
            .lookup("iam", "carol", || fetcher(&script, &calls, z))
            .await
            .unwrap();
        assert_eq!(again.outcome, Outcome::Miss);
    }

    #[test]
    fn borrowed_and_owned_keys_hash_alike() {
        use std::hash::BuildHasher;
        let s = std::collections::hash_map::RandomState::new();
        let owned: Key = ("iam".into(), "alice".into());
        assert_eq!(s.hash_one(&owned), s.hash_one(KeyRef("iam", "alice")));
        assert!(KeyRef("iam", "alice").equivalent(&owned));
        assert!(!KeyRef("iama", "lice").equivalent(&owned));
    }
}
