//! Failed-INVITE limits: what keeps a flood of INVITEs that fail (an unknown number, no or
//! wrong credentials, a malformed request) from holding memory without bound.
//!
//! Every INVITE answered with a failure keeps its server transaction until the caller ACKs,
//! or for Timer H (32 s) if it never does, as scanners don't: about 30 KB each (the
//! transaction's and the dialog's channels, the request, the task). Two limits bound that:
//!
//! - **per source**: each source address may have `per_source` INVITEs fail per
//!   [`WINDOW`] (a token bucket: that many at once, refilled evenly over the window); a
//!   successful authentication gives the token of its challenge back, so a phone that
//!   authenticates every call never runs out.
//! - **held**: at most `held` failed INVITE transactions are kept at once for sources that
//!   failed recently, and twice that for all sources (see [`FailedInvites::over_limit`]).
//!
//! Over either limit, an INVITE that *would fail* is dropped before any dialog or answer is
//! made (its transaction is freed at once; a UDP sender retransmits into the same drop), while
//! INVITEs that would succeed — to a known number, with valid credentials — go on as usual. A
//! dropped INVITE is not a call: it leaves no CDR, only the `dropped` count (a metric) and a
//! log line per interval. Sans-IO: the caller passes the time.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The window of the per-source limit.
pub const WINDOW: Duration = Duration::from_secs(10);

/// Sources remembered at most; past that, those with a full bucket are forgotten.
const MAX_SOURCES: usize = 100_000;

/// Final answers to an INVITE that count as a failure of the caller's making (a wrong
/// number, a refused or malformed request), not of the callee's (busy, no answer).
pub fn counts_as_failure(status: u16) -> bool {
    matches!(status, 400 | 401 | 403 | 404 | 407 | 410 | 484 | 485 | 604)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Failed INVITEs per source per [`WINDOW`]; 0 turns the per-source limit off.
    pub per_source: u32,
    /// Failed INVITE transactions held at once; 0 turns the cap off.
    pub held: usize,
}

struct Bucket {
    tokens: f64,
    at: Instant,
    /// Until when the source counts as failing: it failed or was dropped within the last
    /// [`WINDOW`], and has not authenticated since. (Its bucket says too little: a slow
    /// flood, or one that is being dropped, keeps it full.)
    failing_until: Option<Instant>,
}

impl Bucket {
    fn failing(&self, now: Instant) -> bool {
        self.failing_until.is_some_and(|t| now < t)
    }
}

/// The limits' state; one per SIP server, behind a mutex.
pub struct FailedInvites {
    limits: Limits,
    sources: HashMap<IpAddr, Bucket>,
    held: Arc<AtomicUsize>,
    dropped: u64,
    /// Drops not yet logged, and when the last log line was.
    unlogged: u64,
    logged_at: Option<Instant>,
}

/// Drops are logged at most once per this, with their count.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// One failed INVITE transaction counted against the `held` cap until dropped.
#[derive(Debug)]
pub struct Held(Arc<AtomicUsize>);

impl Drop for Held {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl FailedInvites {
    pub fn new(limits: Limits) -> FailedInvites {
        FailedInvites {
            limits,
            sources: HashMap::new(),
            held: Arc::new(AtomicUsize::new(0)),
            dropped: 0,
            unlogged: 0,
            logged_at: None,
        }
    }

    fn tokens(&self, source: IpAddr, now: Instant) -> f64 {
        let cap = f64::from(self.limits.per_source);
        match self.sources.get(&source) {
            None => cap,
            Some(b) => Self::refilled(b, now, cap),
        }
    }

    fn refilled(b: &Bucket, now: Instant, cap: f64) -> f64 {
        let refill = now.duration_since(b.at).as_secs_f64() / WINDOW.as_secs_f64() * cap;
        (b.tokens + refill).min(cap)
    }

    /// Whether `source` failed or was dropped within the last [`WINDOW`] (see `Bucket`).
    fn failing(&self, source: IpAddr, now: Instant) -> bool {
        self.sources.get(&source).is_some_and(|b| b.failing(now))
    }

    /// Whether an INVITE from `source` that would fail is to be dropped now.
    ///
    /// At the `held` cap, only sources that failed or were dropped in the last [`WINDOW`]
    /// (and have not authenticated since) are dropped, so a phone whose every call starts
    /// with a challenge it then answers keeps being challenged during a flood from elsewhere;
    /// at twice the cap every source is (many forged sources failing once each). With the per-source limit off, sources are not
    /// told apart and the cap applies to all.
    pub fn over_limit(&self, source: IpAddr, now: Instant) -> bool {
        let cap = self.limits.held;
        let held = self.held();
        if self.limits.per_source == 0 {
            return cap > 0 && held >= cap;
        }
        self.tokens(source, now) < 1.0
            || (cap > 0
                && (held >= cap.saturating_mul(2) || (held >= cap && self.failing(source, now))))
    }

    /// Marks `source` as failing for a [`WINDOW`] and takes `cost` tokens from its bucket
    /// (1 for an answered failure, 0 for a drop). When the table is full, the sources with
    /// nothing to remember (a full bucket, not failing) are forgotten first.
    fn mark_failing(&mut self, source: IpAddr, now: Instant, cost: f64) {
        if self.limits.per_source == 0 {
            return;
        }
        let cap = f64::from(self.limits.per_source);
        let tokens = self.tokens(source, now);
        if self.sources.len() >= MAX_SOURCES && !self.sources.contains_key(&source) {
            self.sources
                .retain(|_, b| Self::refilled(b, now, cap) < cap || b.failing(now));
        }
        self.sources.insert(
            source,
            Bucket {
                tokens: (tokens - cost).max(0.0),
                at: now,
                failing_until: Some(now + WINDOW),
            },
        );
    }

    /// An INVITE from `source` is answered with a failure: takes a token and returns the
    /// guard to keep for as long as its transaction lives.
    pub fn record_failure(&mut self, source: IpAddr, now: Instant) -> Held {
        self.mark_failing(source, now, 1.0);
        self.held.fetch_add(1, Ordering::Relaxed);
        Held(self.held.clone())
    }

    /// A request from `source` authenticated: the token its challenge took is given back.
    pub fn record_success(&mut self, source: IpAddr, now: Instant) {
        let cap = f64::from(self.limits.per_source);
        if let Some(b) = self.sources.get_mut(&source) {
            let tokens = (Self::refilled(b, now, cap) + 1.0).min(cap);
            b.tokens = tokens;
            b.at = now;
            b.failing_until = None;
            if tokens >= cap {
                self.sources.remove(&source);
            }
        }
    }

    /// An INVITE that would have failed was dropped. Returns the number of drops to log now
    /// (this one and those since the last line), at most once per [`LOG_INTERVAL`].
    pub fn record_drop(&mut self, source: IpAddr, now: Instant) -> Option<u64> {
        self.mark_failing(source, now, 0.0);
        self.dropped += 1;
        self.unlogged += 1;
        if self
            .logged_at
            .is_some_and(|at| now.duration_since(at) < LOG_INTERVAL)
        {
            return None;
        }
        self.logged_at = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }

    /// INVITEs dropped since start.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Failed INVITE transactions held now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// Sources with a partly used bucket (for tests and metrics).
    pub fn tracked_sources(&self) -> usize {
        self.sources.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, n])
    }

    #[test]
    fn a_source_may_fail_its_burst_then_one_per_refill() {
        let mut f = FailedInvites::new(Limits {
            per_source: 5,
            held: 0,
        });
        let t0 = Instant::now();
        let mut held = Vec::new();
        for _ in 0..5 {
            assert!(!f.over_limit(ip(1), t0));
            held.push(f.record_failure(ip(1), t0));
        }
        assert!(f.over_limit(ip(1), t0));
        // Another source is not affected.
        assert!(!f.over_limit(ip(2), t0));
        // 5 per 10 s: one token back after 2 s.
        assert!(f.over_limit(ip(1), t0 + Duration::from_millis(1900)));
        assert!(!f.over_limit(ip(1), t0 + Duration::from_millis(2000)));
        held.push(f.record_failure(ip(1), t0 + Duration::from_secs(2)));
        assert!(f.over_limit(ip(1), t0 + Duration::from_secs(2)));
        // A full window later the whole burst is back.
        let later = t0 + Duration::from_secs(12);
        for _ in 0..5 {
            assert!(!f.over_limit(ip(1), later));
            held.push(f.record_failure(ip(1), later));
        }
        assert!(f.over_limit(ip(1), later));
    }

    #[test]
    fn the_held_cap_counts_live_transactions_only() {
        let mut f = FailedInvites::new(Limits {
            per_source: 0,
            held: 3,
        });
        let t0 = Instant::now();
        let a = f.record_failure(ip(1), t0);
        let b = f.record_failure(ip(2), t0);
        assert!(!f.over_limit(ip(3), t0));
        let c = f.record_failure(ip(3), t0);
        assert_eq!(f.held(), 3);
        assert!(f.over_limit(ip(4), t0));
        drop(b);
        assert_eq!(f.held(), 2);
        assert!(!f.over_limit(ip(4), t0));
        drop((a, c));
        assert_eq!(f.held(), 0);
        // per_source 0: no source is ever tracked.
        assert_eq!(f.tracked_sources(), 0);
    }

    #[test]
    fn at_the_cap_only_failing_sources_are_dropped_until_twice_the_cap() {
        let mut f = FailedInvites::new(Limits {
            per_source: 10,
            held: 4,
        });
        let t0 = Instant::now();
        let mut held: Vec<_> = (0..4).map(|_| f.record_failure(ip(1), t0)).collect();
        // The flooding source is stopped at the cap; a source with no recent failure is not.
        assert!(f.over_limit(ip(1), t0));
        assert!(!f.over_limit(ip(2), t0));
        held.push(f.record_failure(ip(2), t0));
        assert!(
            f.over_limit(ip(2), t0),
            "failed once, now it counts as failing"
        );
        // Forged sources failing once each fill up to twice the cap, then all are dropped.
        for n in 3..6 {
            assert!(!f.over_limit(ip(n), t0));
            held.push(f.record_failure(ip(n), t0));
        }
        assert_eq!(f.held(), 8);
        assert!(f.over_limit(ip(100), t0));
        // A window later the flooding source's bucket is full again: fresh, below 2x…
        held.truncate(6);
        assert!(!f.over_limit(ip(1), t0 + WINDOW));
        // …unless it was dropped meanwhile: a flood that goes on stays a failing source.
        assert!(f.over_limit(ip(2), t0));
        f.record_drop(ip(2), t0 + WINDOW / 2);
        assert!(f.over_limit(ip(2), t0 + WINDOW));
        assert!(!f.over_limit(ip(2), t0 + WINDOW + WINDOW / 2));
    }

    #[test]
    fn a_slow_flood_whose_bucket_stays_full_still_counts_as_failing_at_the_cap() {
        let mut f = FailedInvites::new(Limits {
            per_source: 10,
            held: 2,
        });
        let t0 = Instant::now();
        let _a = f.record_failure(ip(1), t0);
        let _b = f.record_failure(ip(2), t0);
        // One failure per 2 s refills faster than it drains (1 token/s): the bucket is full,
        // yet the source failed within the window and is stopped at the cap.
        let t = t0 + Duration::from_secs(2);
        assert!(f.tokens(ip(1), t) >= 10.0);
        assert!(f.over_limit(ip(1), t));
        // Authenticating clears it: a phone challenged call after call is not failing.
        f.record_success(ip(2), t);
        assert!(!f.over_limit(ip(2), t));
    }

    #[test]
    fn authenticating_gives_the_challenge_token_back() {
        let mut f = FailedInvites::new(Limits {
            per_source: 2,
            held: 0,
        });
        let t0 = Instant::now();
        // A phone: challenged, then authenticated, call after call.
        for _ in 0..100 {
            let _h = f.record_failure(ip(1), t0);
            f.record_success(ip(1), t0);
            assert!(!f.over_limit(ip(1), t0));
        }
        assert_eq!(f.tracked_sources(), 0);
    }

    #[test]
    fn off_means_never_over() {
        let mut f = FailedInvites::new(Limits {
            per_source: 0,
            held: 0,
        });
        let t0 = Instant::now();
        let held: Vec<_> = (0..10_000).map(|_| f.record_failure(ip(1), t0)).collect();
        assert!(!f.over_limit(ip(1), t0));
        assert_eq!(f.held(), held.len());
    }

    #[test]
    fn drops_are_logged_once_per_interval_with_their_count() {
        let mut f = FailedInvites::new(Limits {
            per_source: 1,
            held: 0,
        });
        let t0 = Instant::now();
        assert_eq!(f.record_drop(ip(1), t0), Some(1));
        for i in 1..1000 {
            assert_eq!(f.record_drop(ip(1), t0 + Duration::from_millis(i)), None);
        }
        assert_eq!(f.record_drop(ip(1), t0 + LOG_INTERVAL), Some(1000));
        assert_eq!(f.dropped(), 1001);
    }

    #[test]
    fn statuses_that_count() {
        for s in [400, 403, 404, 407, 484, 604] {
            assert!(counts_as_failure(s), "{s}");
        }
        for s in [200, 486, 480, 487, 500, 503, 603] {
            assert!(!counts_as_failure(s), "{s}");
        }
    }
}
