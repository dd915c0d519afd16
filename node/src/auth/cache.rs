//! Verified tokens: a bounded cache of successful verifications, so a client that sends the
//! same bearer token on every request pays for one signature check, not one per request.
//!
//! - The key is the SHA-256 of the token; the raw token is never stored.
//! - The value is the [`Principal`] the verification established, with the token's `exp` and
//!   `nbf`. Every hit re-checks both against the clock (with the same leeway and the same
//!   comparisons as `jsonwebtoken`), so a cached token is refused as soon as it expires.
//! - An entry lives until the token's `exp` (plus leeway) or [`CACHE_MAX_TTL`] after it was
//!   verified, whichever is first, and only while the verifying keys are unchanged: each
//!   entry records the [`Authenticator`](super::Authenticator)'s key generation, which moves
//!   when an OIDC JWKS refresh changes the key set. The cache belongs to one authenticator;
//!   a node that restarts with a new `auth` section or a rotated token key starts empty.
//! - Only successes are cached: an invalid token cannot take a slot. The size is bounded in
//!   bytes ([`CACHE_MAX_BYTES`]; an entry weighs [`ENTRY_OVERHEAD`] plus its subject, which a
//!   token may make long) and `moka` evicts by its TinyLFU policy, which keeps frequently
//!   used tokens when the cache is full.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use super::{AuthError, Principal};

/// Most memory the cache's entries may take: about 25 000 tokens with short subjects.
pub const CACHE_MAX_BYTES: u64 = 4 * 1024 * 1024;

/// What an entry weighs besides its subject: the key, the entry, `moka`'s bookkeeping.
pub const ENTRY_OVERHEAD: u32 = 160;

/// Longest time a verification is reused, even for a token that expires later.
pub const CACHE_MAX_TTL: Duration = Duration::from_secs(300);

/// Wall-clock time in seconds since the Unix epoch, the unit of `exp` and `nbf`.
pub trait Clock: Send + Sync {
    fn now(&self) -> u64;
}

/// The system clock (what `jsonwebtoken` uses too).
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }
}

/// What a successful verification established.
#[derive(Clone, Debug)]
pub(crate) struct Verified {
    pub principal: Principal,
    /// `None` when the token's `exp` is not an integer: such a token is not cached.
    pub exp: Option<u64>,
    pub nbf: Option<u64>,
}

/// SHA-256 of a token.
pub type TokenHash = [u8; 32];

pub fn token_hash(token: &str) -> TokenHash {
    Sha256::digest(token.as_bytes()).into()
}

#[derive(Debug)]
struct Entry {
    principal: Principal,
    exp: u64,
    nbf: Option<u64>,
    /// Clock time of the verification.
    verified_at: u64,
    /// The authenticator's key generation when the verification started.
    generation: u64,
    /// How long `moka` keeps the entry (the checks above decide whether it is used).
    ttl: Duration,
}

struct EntryExpiry;

impl moka::Expiry<TokenHash, Arc<Entry>> for EntryExpiry {
    fn expire_after_create(&self, _: &TokenHash, e: &Arc<Entry>, _: Instant) -> Option<Duration> {
        Some(e.ttl)
    }

    fn expire_after_update(
        &self,
        _: &TokenHash,
        e: &Arc<Entry>,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(e.ttl)
    }
}

/// What the cache knows about a token.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// Verified earlier and still valid.
    Hit(Principal),
    /// Verified earlier, but its `exp` has passed (or its `nbf` is ahead): refused without
    /// checking the signature again (both claims are covered by the signature).
    Refused(AuthError),
    /// Verify it.
    Miss,
}

/// Counters, for tests and diagnostics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Lookups answered from the cache (accepted or refused).
    pub hits: u64,
    /// Lookups that needed a verification.
    pub misses: u64,
}

pub(crate) struct VerifiedCache {
    entries: moka::sync::Cache<TokenHash, Arc<Entry>>,
    clock: Arc<dyn Clock>,
    leeway: u64,
    max_ttl: u64,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl std::fmt::Debug for VerifiedCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifiedCache")
            .field("entries", &self.entries.entry_count())
            .finish_non_exhaustive()
    }
}

impl VerifiedCache {
    /// `max_bytes` bounds the sum of the entries' weights.
    pub fn new(max_bytes: u64, max_ttl: Duration, leeway: u64, clock: Arc<dyn Clock>) -> Self {
        Self {
            entries: moka::sync::Cache::builder()
                .max_capacity(max_bytes)
                .weigher(|_: &TokenHash, e: &Arc<Entry>| {
                    u32::try_from(e.principal.sub.len())
                        .unwrap_or(u32::MAX)
                        .saturating_add(ENTRY_OVERHEAD)
                })
                .expire_after(EntryExpiry)
                .build(),
            clock,
            leeway,
            max_ttl: max_ttl.as_secs(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    pub fn lookup(&self, key: &TokenHash, generation: u64) -> Lookup {
        let Some(e) = self.entries.get(key) else {
            self.misses.fetch_add(1, Ordering::Relaxed);
            return Lookup::Miss;
        };
        let now = self.clock.now();
        let stale = e.generation != generation
            || now < e.verified_at
            || now >= e.verified_at.saturating_add(self.max_ttl);
        if stale {
            self.entries.invalidate(key);
            self.misses.fetch_add(1, Ordering::Relaxed);
            return Lookup::Miss;
        }
        self.hits.fetch_add(1, Ordering::Relaxed);
        // The same comparisons as `jsonwebtoken::validation::validate`.
        if e.exp.saturating_add(self.leeway) < now {
            self.entries.invalidate(key);
            return Lookup::Refused(AuthError::Expired);
        }
        if e.nbf
            .is_some_and(|nbf| nbf > now.saturating_add(self.leeway))
        {
            return Lookup::Refused(AuthError::NotYetValid);
        }
        Lookup::Hit(e.principal.clone())
    }

    /// Remembers a successful verification that started at key generation `generation`.
    pub fn insert(&self, key: TokenHash, v: &Verified, generation: u64) {
        let Some(exp) = v.exp else {
            return;
        };
        let now = self.clock.now();
        let left = exp
            .saturating_add(self.leeway)
            .saturating_sub(now)
            .min(self.max_ttl);
        if left == 0 {
            return;
        }
        self.entries.insert(
            key,
            Arc::new(Entry {
                principal: v.principal.clone(),
                exp,
                nbf: v.nbf,
                verified_at: now,
                generation,
                ttl: Duration::from_secs(left),
            }),
        );
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
        }
    }

    /// Entries held, after `moka`'s pending evictions have run.
    #[cfg(test)]
    pub fn len(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.entry_count()
    }

    #[cfg(test)]
    pub fn weight(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.weighted_size()
    }

    #[cfg(test)]
    pub fn keys(&self) -> Vec<TokenHash> {
        self.entries.iter().map(|(k, _)| *k).collect()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::auth::Role;

    /// A clock the test moves by hand.
    #[derive(Debug, Default)]
    pub(crate) struct ManualClock(pub AtomicU64);

    impl ManualClock {
        pub fn at(t: u64) -> Arc<Self> {
            Arc::new(Self(AtomicU64::new(t)))
        }
        pub fn set(&self, t: u64) {
            self.0.store(t, Ordering::SeqCst);
        }
    }

    impl Clock for ManualClock {
        fn now(&self) -> u64 {
            self.0.load(Ordering::SeqCst)
        }
    }

    fn verified(sub: &str, exp: u64, nbf: Option<u64>) -> Verified {
        Verified {
            principal: Principal {
                sub: sub.into(),
                role: Role::Viewer,
                source: "local",
            },
            exp: Some(exp),
            nbf,
        }
    }

    const T0: u64 = 1_800_000_000;
    /// Room for 100 entries with short subjects.
    const BYTES_100: u64 = 100 * (ENTRY_OVERHEAD as u64 + 16);

    #[test]
    fn hit_until_exp_plus_leeway_then_refused() {
        let clock = ManualClock::at(T0);
        let c = VerifiedCache::new(BYTES_100, CACHE_MAX_TTL, 5, clock.clone());
        let k = token_hash("a.b.c");
        assert_eq!(c.lookup(&k, 0), Lookup::Miss);
        let v = verified("alice", T0 + 60, Some(T0));
        c.insert(k, &v, 0);
        assert_eq!(c.lookup(&k, 0), Lookup::Hit(v.principal.clone()));
        // jsonwebtoken accepts exp + leeway == now, refuses one second later.
        clock.set(T0 + 65);
        assert_eq!(c.lookup(&k, 0), Lookup::Hit(v.principal.clone()));
        clock.set(T0 + 66);
        assert_eq!(c.lookup(&k, 0), Lookup::Refused(AuthError::Expired));
        // An expired entry is dropped.
        assert_eq!(c.lookup(&k, 0), Lookup::Miss);
        assert_eq!(c.stats(), CacheStats { hits: 3, misses: 2 });
    }

    #[test]
    fn nbf_is_rechecked() {
        let clock = ManualClock::at(T0);
        let c = VerifiedCache::new(BYTES_100, CACHE_MAX_TTL, 5, clock.clone());
        let k = token_hash("a.b.c");
        c.insert(k, &verified("alice", T0 + 60, Some(T0 + 5)), 0);
        assert!(matches!(c.lookup(&k, 0), Lookup::Hit(_)));
        // A clock that steps back stops trusting the entry altogether.
        clock.set(T0 - 1);
        assert_eq!(c.lookup(&k, 0), Lookup::Miss);
        // An entry whose nbf is ahead of now + leeway (only possible if clocks disagree).
        clock.set(T0);
        c.insert(k, &verified("alice", T0 + 60, Some(T0 + 6)), 0);
        assert_eq!(c.lookup(&k, 0), Lookup::Refused(AuthError::NotYetValid));
    }

    #[test]
    fn max_ttl_and_generation_force_a_new_verification() {
        let clock = ManualClock::at(T0);
        let c = VerifiedCache::new(BYTES_100, Duration::from_secs(300), 0, clock.clone());
        let k = token_hash("a.b.c");
        c.insert(k, &verified("alice", T0 + 3600, None), 7);
        clock.set(T0 + 299);
        assert!(matches!(c.lookup(&k, 7), Lookup::Hit(_)));
        clock.set(T0 + 300);
        assert_eq!(c.lookup(&k, 7), Lookup::Miss);
        c.insert(k, &verified("alice", T0 + 3600, None), 7);
        assert!(matches!(c.lookup(&k, 7), Lookup::Hit(_)));
        // The keys changed since: verify again.
        assert_eq!(c.lookup(&k, 8), Lookup::Miss);
        assert_eq!(c.lookup(&k, 7), Lookup::Miss, "a stale entry is dropped");
    }

    #[test]
    fn tokens_without_usable_exp_or_already_expired_are_not_kept() {
        let clock = ManualClock::at(T0);
        let c = VerifiedCache::new(BYTES_100, CACHE_MAX_TTL, 0, clock.clone());
        let k = token_hash("a.b.c");
        let mut v = verified("alice", T0 + 60, None);
        v.exp = None;
        c.insert(k, &v, 0);
        assert_eq!(c.lookup(&k, 0), Lookup::Miss);
        c.insert(k, &verified("alice", T0, None), 0);
        assert_eq!(c.lookup(&k, 0), Lookup::Miss);
    }

    #[test]
    fn bounded_and_keyed_by_hash() {
        // Room for 16 entries with 32-byte subjects.
        let max = 16 * (ENTRY_OVERHEAD as u64 + 32);
        let c = VerifiedCache::new(max, CACHE_MAX_TTL, 0, ManualClock::at(T0));
        let tokens: Vec<String> = (0..500).map(|i| format!("header.claims-{i}.sig")).collect();
        for (i, t) in tokens.iter().enumerate() {
            c.insert(
                token_hash(t),
                &verified(&format!("{i:032}"), T0 + 60, None),
                0,
            );
        }
        let n = c.len();
        assert!((1..=16).contains(&n), "{n} entries");
        let hashes: Vec<TokenHash> = tokens.iter().map(|t| token_hash(t)).collect();
        for k in c.keys() {
            assert!(hashes.contains(&k), "every key is a token's SHA-256");
        }
        assert_eq!(
            token_hash("x"),
            <[u8; 32]>::from(Sha256::digest(b"x")),
            "the key is SHA-256"
        );

        // Long subjects count for their length: two 1000-byte subjects fill the same room.
        let c = VerifiedCache::new(max, CACHE_MAX_TTL, 0, ManualClock::at(T0));
        for i in 0..100 {
            let t = format!("long-{i}");
            c.insert(
                token_hash(&t),
                &verified(&"x".repeat(1000), T0 + 60, None),
                0,
            );
        }
        let n = c.len();
        assert!((1..=2).contains(&n), "{n} entries");
        assert!(c.weight() <= max, "{}", c.weight());
    }
}
